//! What an event's payload words mean, decoded once for both outputs (logs
//! and metrics). The schema is `docs/events.md`.

use std::time::Duration;

use tenlives_engine::breaker::{BreakerState, TripReason};
use tenlives_engine::events::{Event, EventKind};

/// An event's payload, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    BreakerOpened {
        reason: Option<TripReason>,
        trips: u32,
        open_for: Duration,
    },
    BreakerHalfOpened {
        trips: u64,
        probes: u64,
    },
    BreakerClosed {
        probes_succeeded: u64,
        probes_failed: u64,
    },
    BreakerForced {
        to: Option<BreakerState>,
    },
    BreakerRejected {
        reason: Option<BreakerRejection>,
        retry_after: Option<Duration>,
    },
    BulkheadRejected {
        asked: u64,
        in_flight: u32,
        limit: u32,
    },
    BulkheadLimitChanged {
        old: u64,
        new: u64,
    },
    BulkheadAcquired {
        permits: u64,
        in_flight: u64,
    },
    BulkheadReleased {
        permits: u64,
        in_flight: u64,
    },
    RetryBudgetExhausted {
        withdrawals: u64,
        deposits: u64,
    },
    Throttled {
        probability_ppm: u64,
        requests: u64,
    },
    Other,
}

/// `RejectReason` as carried in `BREAKER_REJECTED` (the engine offers only
/// the encoding direction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BreakerRejection {
    Open,
    ForcedOpen,
    HalfOpenFull,
}

impl Decoded {
    pub(crate) fn of(event: &Event) -> Decoded {
        let [p0, p1] = event.payload;
        match event.kind {
            EventKind::BREAKER_OPENED => Decoded::BreakerOpened {
                reason: TripReason::from_code(p0),
                trips: (p0 >> 32) as u32,
                open_for: Duration::from_nanos(p1),
            },
            EventKind::BREAKER_HALF_OPENED => Decoded::BreakerHalfOpened {
                trips: p0,
                probes: p1,
            },
            EventKind::BREAKER_CLOSED => Decoded::BreakerClosed {
                probes_succeeded: p0,
                probes_failed: p1,
            },
            EventKind::BREAKER_FORCED => Decoded::BreakerForced {
                to: state_from_code(p0),
            },
            EventKind::BREAKER_REJECTED => Decoded::BreakerRejected {
                reason: match p0 {
                    1 => Some(BreakerRejection::Open),
                    2 => Some(BreakerRejection::ForcedOpen),
                    3 => Some(BreakerRejection::HalfOpenFull),
                    _ => None,
                },
                retry_after: (p1 != u64::MAX).then(|| Duration::from_nanos(p1)),
            },
            EventKind::BULKHEAD_REJECTED => Decoded::BulkheadRejected {
                asked: p0,
                in_flight: (p1 >> 32) as u32,
                limit: p1 as u32,
            },
            EventKind::BULKHEAD_LIMIT_CHANGED => Decoded::BulkheadLimitChanged { old: p0, new: p1 },
            EventKind::BULKHEAD_ACQUIRED => Decoded::BulkheadAcquired {
                permits: p0,
                in_flight: p1,
            },
            EventKind::BULKHEAD_RELEASED => Decoded::BulkheadReleased {
                permits: p0,
                in_flight: p1,
            },
            EventKind::RETRY_BUDGET_EXHAUSTED => Decoded::RetryBudgetExhausted {
                withdrawals: p0,
                deposits: p1,
            },
            EventKind::THROTTLED => Decoded::Throttled {
                probability_ppm: p0,
                requests: p1,
            },
            _ => Decoded::Other,
        }
    }
}

/// The state a `BreakerState::code` names.
pub(crate) fn state_from_code(code: u64) -> Option<BreakerState> {
    Some(match code {
        0 => BreakerState::Closed,
        1 => BreakerState::Open,
        2 => BreakerState::HalfOpen,
        3 => BreakerState::ForcedOpen,
        4 => BreakerState::Disabled,
        5 => BreakerState::MetricsOnly,
        _ => return None,
    })
}

/// A state's name in labels and log fields (`snake_case`).
pub(crate) fn state_label(state: BreakerState) -> &'static str {
    match state {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half_open",
        BreakerState::ForcedOpen => "forced_open",
        BreakerState::Disabled => "disabled",
        BreakerState::MetricsOnly => "metrics_only",
    }
}

/// A trip reason's name in labels and log fields.
pub(crate) fn trip_label(reason: Option<TripReason>) -> &'static str {
    match reason {
        Some(TripReason::ConsecutiveFailures) => "consecutive_failures",
        Some(TripReason::FailureRate) => "failure_rate",
        Some(TripReason::SlowCallRate) => "slow_call_rate",
        Some(TripReason::FailedTest) => "failed_test",
        // A reason this version does not know (`TripReason` may grow).
        Some(_) => "other",
        None => "unknown",
    }
}

/// The tenlives event kinds this module knows, in the order of
/// [`kind_index`], with their label names.
pub(crate) const KNOWN_KINDS: [(EventKind, &str); 17] = [
    (EventKind::BREAKER_OPENED, "breaker_opened"),
    (EventKind::BREAKER_HALF_OPENED, "breaker_half_opened"),
    (EventKind::BREAKER_CLOSED, "breaker_closed"),
    (EventKind::BREAKER_FORCED, "breaker_forced"),
    (EventKind::BREAKER_REJECTED, "breaker_rejected"),
    (EventKind::BULKHEAD_REJECTED, "bulkhead_rejected"),
    (EventKind::BULKHEAD_LIMIT_CHANGED, "bulkhead_limit_changed"),
    (EventKind::BULKHEAD_ACQUIRED, "bulkhead_acquired"),
    (EventKind::BULKHEAD_RELEASED, "bulkhead_released"),
    (EventKind::RETRY_BUDGET_EXHAUSTED, "retry_budget_exhausted"),
    (EventKind::THROTTLED, "throttled"),
    (EventKind::RATE_LIMITED, "rate_limited"),
    (EventKind::KEYED_TABLE_FULL, "keyed_table_full"),
    (EventKind::CONFIG_CHANGED, "config_changed"),
    (EventKind::QUEUE_REJECTED, "queue_rejected"),
    (crate::outcome::CALL_SUCCEEDED, "call_succeeded"),
    (crate::outcome::CALL_FAILED, "call_failed"),
];

/// The position of a known kind in [`KNOWN_KINDS`].
#[inline]
pub(crate) fn kind_index(kind: EventKind) -> Option<usize> {
    Some(match kind {
        EventKind::BREAKER_OPENED => 0,
        EventKind::BREAKER_HALF_OPENED => 1,
        EventKind::BREAKER_CLOSED => 2,
        EventKind::BREAKER_FORCED => 3,
        EventKind::BREAKER_REJECTED => 4,
        EventKind::BULKHEAD_REJECTED => 5,
        EventKind::BULKHEAD_LIMIT_CHANGED => 6,
        EventKind::BULKHEAD_ACQUIRED => 7,
        EventKind::BULKHEAD_RELEASED => 8,
        EventKind::RETRY_BUDGET_EXHAUSTED => 9,
        EventKind::THROTTLED => 10,
        EventKind::RATE_LIMITED => 11,
        EventKind::KEYED_TABLE_FULL => 12,
        EventKind::CONFIG_CHANGED => 13,
        EventKind::QUEUE_REJECTED => 14,
        crate::outcome::CALL_SUCCEEDED => 15,
        crate::outcome::CALL_FAILED => 16,
        _ => return None,
    })
}

/// Why a call was refused, as the `reason` label of `tenlives_rejections_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rejection {
    BreakerOpen,
    BreakerForcedOpen,
    BreakerHalfOpenFull,
    BulkheadFull,
    BulkheadOverLimit,
    RetryBudgetExhausted,
    Throttled,
}

impl Rejection {
    pub(crate) const ALL: [Rejection; 7] = [
        Rejection::BreakerOpen,
        Rejection::BreakerForcedOpen,
        Rejection::BreakerHalfOpenFull,
        Rejection::BulkheadFull,
        Rejection::BulkheadOverLimit,
        Rejection::RetryBudgetExhausted,
        Rejection::Throttled,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Rejection::BreakerOpen => "breaker_open",
            Rejection::BreakerForcedOpen => "breaker_forced_open",
            Rejection::BreakerHalfOpenFull => "breaker_half_open_full",
            Rejection::BulkheadFull => "bulkhead_full",
            Rejection::BulkheadOverLimit => "bulkhead_over_limit",
            Rejection::RetryBudgetExhausted => "retry_budget_exhausted",
            Rejection::Throttled => "throttled",
        }
    }

    /// The rejection an event reports, if it reports one.
    pub(crate) fn of(decoded: &Decoded) -> Option<Rejection> {
        Some(match *decoded {
            Decoded::BreakerRejected { reason, .. } => match reason? {
                BreakerRejection::Open => Rejection::BreakerOpen,
                BreakerRejection::ForcedOpen => Rejection::BreakerForcedOpen,
                BreakerRejection::HalfOpenFull => Rejection::BreakerHalfOpenFull,
            },
            // Asking for more than the limit can never succeed; asking for
            // what the limit allows failed only because the bulkhead was full.
            Decoded::BulkheadRejected { asked, limit, .. } if asked > u64::from(limit) => {
                Rejection::BulkheadOverLimit
            }
            Decoded::BulkheadRejected { .. } => Rejection::BulkheadFull,
            Decoded::RetryBudgetExhausted { .. } => Rejection::RetryBudgetExhausted,
            Decoded::Throttled { .. } => Rejection::Throttled,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use tenlives_engine::time::Timestamp;

    use super::*;

    #[test]
    fn known_kinds_and_their_indices_agree() {
        for (i, (kind, _)) in KNOWN_KINDS.iter().enumerate() {
            assert_eq!(kind_index(*kind), Some(i));
        }
        assert_eq!(kind_index(EventKind::USER), None);
        assert_eq!(kind_index(EventKind(6)), None);
    }

    #[test]
    fn state_codes_round_trip() {
        for state in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
            BreakerState::ForcedOpen,
            BreakerState::Disabled,
            BreakerState::MetricsOnly,
        ] {
            assert_eq!(state_from_code(state.code()), Some(state));
        }
        assert_eq!(state_from_code(6), None);
    }

    #[test]
    fn bulkhead_rejections_tell_full_from_over_limit() {
        let word = (3u64 << 32) | 4; // 3 in flight, limit 4
        let at = |asked| {
            let e = Event::new(
                EventKind::BULKHEAD_REJECTED,
                0,
                Timestamp::ZERO,
                [asked, word],
            );
            Rejection::of(&Decoded::of(&e))
        };
        assert_eq!(at(2), Some(Rejection::BulkheadFull));
        assert_eq!(at(4), Some(Rejection::BulkheadFull));
        assert_eq!(at(5), Some(Rejection::BulkheadOverLimit));
    }
}
