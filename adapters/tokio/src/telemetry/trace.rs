//! The `tracing` side: one `tracing` event per engine event, target
//! [`TARGET`], at a level that says how much an operator cares.
//!
//! | engine event | level |
//! |---|---|
//! | breaker opened | `WARN` |
//! | other breaker transitions, limit changes | `INFO` |
//! | rejections, grants, releases, other kinds | `DEBUG` |
//! | events lost | `WARN` |

use tenlives_engine::breaker::BreakerState;
use tenlives_engine::events::Event;
use tracing::{debug, info, warn};

use super::decode::{Decoded, KNOWN_KINDS, Rejection, kind_index, state_label, trip_label};

/// The `tracing` target of every event the drain emits.
pub const TARGET: &str = "tenlives";

/// Who emitted an event, for the log fields.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Who<'a> {
    pub(crate) policy: &'a str,
    pub(crate) policy_kind: &'static str,
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Emits the `tracing` event for one engine event. `from` is the breaker
/// state the drain last saw for this source (used for forced transitions,
/// whose payload names only the new state).
pub(crate) fn emit(who: Who<'_>, event: &Event, decoded: &Decoded, from: Option<BreakerState>) {
    let Who {
        policy,
        policy_kind,
    } = who;
    let source = event.source;
    let time_ns = event.time.as_nanos();
    let kind = kind_index(event.kind).map_or("other", |i| KNOWN_KINDS[i].1);
    match *decoded {
        Decoded::BreakerOpened {
            reason,
            trips,
            open_for,
        } => {
            let from = if reason == Some(tenlives_engine::breaker::TripReason::FailedTest) {
                "half_open"
            } else {
                "closed"
            };
            warn!(target: TARGET, policy, policy_kind, source, time_ns, kind, from, to = "open",
                reason = trip_label(reason), trips, open_for_ms = millis(open_for),
                "circuit breaker opened");
        }
        Decoded::BreakerHalfOpened { trips, probes } => {
            info!(target: TARGET, policy, policy_kind, source, time_ns, kind, from = "open",
                to = "half_open", trips, probes, "circuit breaker half-open: probing");
        }
        Decoded::BreakerClosed {
            probes_succeeded,
            probes_failed,
        } => {
            info!(target: TARGET, policy, policy_kind, source, time_ns, kind, from = "half_open",
                to = "closed", probes_succeeded, probes_failed, "circuit breaker closed");
        }
        Decoded::BreakerForced { to } => {
            let from = from.map_or("unknown", state_label);
            let to = to.map_or("unknown", state_label);
            info!(target: TARGET, policy, policy_kind, source, time_ns, kind, from, to,
                "circuit breaker state set by an operator");
        }
        Decoded::BreakerRejected { retry_after, .. } => {
            let reason = Rejection::of(decoded).map_or("unknown", Rejection::label);
            let retry_after_ms = retry_after.map(millis);
            debug!(target: TARGET, policy, policy_kind, source, time_ns, kind, reason,
                retry_after_ms, "circuit breaker rejected a call");
        }
        Decoded::BulkheadRejected {
            asked,
            in_flight,
            limit,
        } => {
            let reason = Rejection::of(decoded).map_or("unknown", Rejection::label);
            debug!(target: TARGET, policy, policy_kind, source, time_ns, kind, reason,
                permits = asked, in_flight, limit, "bulkhead refused a call");
        }
        Decoded::BulkheadLimitChanged { old, new } => {
            info!(target: TARGET, policy, policy_kind, source, time_ns, kind, old_limit = old,
                new_limit = new, "concurrency limit changed");
        }
        Decoded::BulkheadAcquired { permits, in_flight } => {
            debug!(target: TARGET, policy, policy_kind, source, time_ns, kind, permits, in_flight,
                "bulkhead permits granted");
        }
        Decoded::BulkheadReleased { permits, in_flight } => {
            debug!(target: TARGET, policy, policy_kind, source, time_ns, kind, permits, in_flight,
                "bulkhead permits released");
        }
        Decoded::RetryBudgetExhausted {
            withdrawals,
            deposits,
        } => {
            debug!(target: TARGET, policy, policy_kind, source, time_ns, kind,
                reason = "retry_budget_exhausted", withdrawals, deposits,
                "retry budget refused a retry");
        }
        Decoded::Throttled {
            probability_ppm,
            requests,
        } => {
            debug!(target: TARGET, policy, policy_kind, source, time_ns, kind, reason = "throttled",
                probability_ppm, requests, "throttle rejected a request locally");
        }
        Decoded::Other => {
            let [payload0, payload1] = event.payload;
            debug!(target: TARGET, policy, policy_kind, source, time_ns, kind,
                code = event.kind.0, payload0, payload1, "event");
        }
    }
}

/// Reports events lost in one drain pass.
pub(crate) fn lost(lost: u64, lost_total: u64) {
    warn!(target: TARGET, lost, lost_total,
        "telemetry events lost: the ring overflowed before the drain read them");
}
