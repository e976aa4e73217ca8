//! What one drive of the load generator measured, per front: plain data,
//! which the report, the plots, the JSON summary and the SLI checks read.

use std::time::Duration;

use tenlives_engine::breaker::BreakerState;

use super::procfs::ProcSample;
use super::record::{Bucket, Group, Percentiles, Recorder, Tally};
use super::timeline::PhaseKind;

/// A breaker transition, read from the event ring.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transition {
    /// Seconds since the start of the run.
    pub at_secs: f64,
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
    /// For an opening: how long the breaker stays open.
    pub open_for: Option<Duration>,
}

/// What the adaptive concurrency limit did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitReport {
    /// The limit at the end.
    pub current: u32,
    /// Lowest limit set during the drive.
    pub lowest: u32,
    /// Highest limit set during the drive.
    pub highest: u32,
    /// How many times it changed.
    pub changes: u64,
}

/// Counts and latencies of one group of requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupSummary {
    /// Counts.
    pub tally: Tally,
    /// Latency of every answer.
    pub all: Percentiles,
    /// Latency of the successes.
    pub ok: Percentiles,
}

impl GroupSummary {
    /// The summary of a recorder's group.
    pub fn of(g: &Group) -> GroupSummary {
        GroupSummary {
            tally: g.tally,
            all: Percentiles::of(&g.all),
            ok: Percentiles::of(&g.ok),
        }
    }
}

/// One front's drive.
#[derive(Clone, Debug, PartialEq)]
pub struct FrontRun {
    /// `protected` or `unprotected`.
    pub name: &'static str,
    /// Whether the tenlives stack is in front of its upstream.
    pub protected: bool,
    /// Every request.
    pub total: GroupSummary,
    /// Requests by the kind of phase they were sent in (kinds with none left
    /// out), in [`PhaseKind::ALL`] order.
    pub by_kind: Vec<(PhaseKind, GroupSummary)>,
    /// Time buckets.
    pub series: Vec<Bucket>,
    /// Breaker transitions (protected front).
    pub transitions: Vec<Transition>,
    /// Events the ring overwrote before they were read.
    pub lost_events: u64,
    /// The adaptive limit (protected front).
    pub limit: Option<LimitReport>,
    /// The breaker's state at the end (protected front).
    pub breaker_end: Option<BreakerState>,
    /// Most requests in flight at once.
    pub peak_in_flight: u64,
    /// Calls the upstream received from this front during the drive.
    pub upstream_calls: u64,
    /// Calls the front sent its upstream while the script had it down or
    /// in an outage (received, or refused while its listener was closed).
    pub upstream_calls_while_down: u64,
}

impl FrontRun {
    /// A front's run from its recorder and what the watcher saw.
    pub fn from_recorder(name: &'static str, protected: bool, r: &Recorder) -> FrontRun {
        let by_kind = PhaseKind::ALL
            .iter()
            .zip(&r.by_kind)
            .filter(|(_, g)| g.tally.offered > 0)
            .map(|(&k, g)| (k, GroupSummary::of(g)))
            .collect();
        FrontRun {
            name,
            protected,
            total: GroupSummary::of(&r.total),
            by_kind,
            series: r.series.clone(),
            transitions: Vec::new(),
            lost_events: 0,
            limit: None,
            breaker_end: None,
            peak_in_flight: r.series.iter().map(|b| b.peak_in_flight).max().unwrap_or(0),
            upstream_calls: 0,
            upstream_calls_while_down: 0,
        }
    }

    /// Intervals `(from, to, state)` in seconds during which the breaker
    /// was not closed, from the transitions, the last one running to `end`.
    pub fn breaker_intervals(&self, end: f64) -> Vec<(f64, f64, BreakerState)> {
        let mut out = Vec::new();
        for (i, t) in self.transitions.iter().enumerate() {
            if t.to == BreakerState::Closed {
                continue;
            }
            let until = self.transitions.get(i + 1).map_or(end, |n| n.at_secs);
            out.push((t.at_secs, until.max(t.at_secs), t.to));
        }
        out
    }
}

/// One drive: every front driven, and the process samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Drive {
    /// Seconds since the start of the run when the drive began.
    pub started_secs: f64,
    /// Length of the load plan.
    pub length: Duration,
    /// Requests per second (the plan's first segment).
    pub rate: u32,
    /// The fronts, protected first.
    pub fronts: Vec<FrontRun>,
    /// RSS and open descriptors over time (when sampled).
    pub process: Vec<ProcSample>,
    /// Upstream restarts the script made during the drive.
    pub restarts: u64,
}

impl Drive {
    /// The protected front's run, if it was driven.
    pub fn protected(&self) -> Option<&FrontRun> {
        self.fronts.iter().find(|f| f.protected)
    }

    /// The unprotected front's run, if it was driven.
    pub fn unprotected(&self) -> Option<&FrontRun> {
        self.fronts.iter().find(|f| !f.protected)
    }
}

/// Made-up runs for the tests of the report, the plots and the checks.
#[cfg(test)]
pub mod fixtures {
    use std::time::Duration;

    use tenlives_engine::breaker::BreakerState;

    use super::{Drive, FrontRun, GroupSummary, LimitReport, Transition};
    use crate::http::record::{Bucket, Outcome, Percentiles, Tally};
    use crate::http::timeline::PhaseKind;

    /// A front that saw `ok` successes, `rejected` rejections, one timeout
    /// and one shed, in one healthy bucket; the protected one's breaker
    /// opened at 1.5 s, half-opened at 3.5 s and closed at 3.6 s.
    pub fn front(name: &'static str, protected: bool, ok: u64, rejected: u64) -> FrontRun {
        let mut tally = Tally {
            offered: ok + rejected + 2,
            sent: ok + rejected + 2,
            ..Tally::default()
        };
        for _ in 0..ok {
            tally.record(Outcome::Succeeded);
        }
        for _ in 0..rejected {
            tally.record(Outcome::Rejected);
        }
        tally.record(Outcome::FailedTimeout);
        tally.record(Outcome::ShedLimit);
        tally.good = if protected { ok } else { ok / 2 };
        let p = Percentiles {
            count: tally.sent,
            p50: Duration::from_millis(15),
            p99: Duration::from_millis(if protected { 40 } else { 2000 }),
            p999: Duration::from_millis(2100),
            max: Duration::from_millis(2500),
        };
        let g = GroupSummary {
            tally,
            all: p,
            ok: p,
        };
        FrontRun {
            name,
            protected,
            total: g,
            by_kind: vec![(PhaseKind::Healthy, g)],
            series: vec![Bucket {
                end_secs: 1.0,
                tally,
                latency: p,
                in_flight: 0,
                peak_in_flight: 3,
                breaker: None,
                limit: None,
            }],
            transitions: if protected {
                vec![
                    Transition {
                        at_secs: 1.5,
                        from: BreakerState::Closed,
                        to: BreakerState::Open,
                        open_for: Some(Duration::from_secs(2)),
                    },
                    Transition {
                        at_secs: 3.5,
                        from: BreakerState::Open,
                        to: BreakerState::HalfOpen,
                        open_for: None,
                    },
                    Transition {
                        at_secs: 3.6,
                        from: BreakerState::HalfOpen,
                        to: BreakerState::Closed,
                        open_for: None,
                    },
                ]
            } else {
                Vec::new()
            },
            lost_events: 0,
            limit: protected.then_some(LimitReport {
                current: 30,
                lowest: 4,
                highest: 33,
                changes: 12,
            }),
            breaker_end: protected.then_some(BreakerState::Closed),
            peak_in_flight: if protected { 5 } else { 50 },
            upstream_calls: if protected { 90 } else { 110 },
            upstream_calls_while_down: if protected { 5 } else { 30 },
        }
    }

    /// A 10 s drive at 10 requests per second of a [`front`] protected (80
    /// successes, 20 rejections) and one unprotected (100 successes).
    pub fn drive() -> Drive {
        Drive {
            started_secs: 0.0,
            length: Duration::from_secs(10),
            rate: 10,
            fronts: vec![
                front("protected", true, 80, 20),
                front("unprotected", false, 100, 0),
            ],
            process: Vec::new(),
            restarts: 0,
        }
    }
}
