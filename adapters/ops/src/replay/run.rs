//! Replaying a [`Trace`] against a [`Candidate`] in virtual time.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use tenlives_engine::breaker::{BreakerState, Outcome};
use tenlives_engine::time::{ManualClock, Timestamp};

use super::candidate::{Candidate, Stage, Token};
use super::trace::{Trace, TraceOutcome};

/// What the candidate did with one request of the trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Admitted.
    Admitted,
    /// Refused by this stage.
    Rejected(Stage),
}

/// A change of the candidate breaker's state during a replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// When, in nanoseconds since the trace's origin.
    pub at_ns: u64,
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
}

/// One bucket of a replay's time series.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Requests that arrived in it.
    pub arrived: u64,
    /// Of those, admitted by the candidate.
    pub admitted: u64,
    /// Of those, refused by the candidate.
    pub rejected: u64,
    /// Admitted requests that failed (the failures the candidate let
    /// through).
    pub failed: u64,
    /// Requests the live policy shed (from the trace).
    pub live_shed: u64,
}

/// The result of a replay: counts, every decision, the breaker's
/// transitions and a time series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replay {
    /// The candidate's stages, in order.
    pub stages: Vec<Stage>,
    /// Whether each key had its own rate limiter.
    pub rate_per_key: bool,
    /// The decision on each record of the trace, in trace order.
    pub decisions: Vec<Decision>,
    /// Admitted requests by how they ended.
    pub succeeded: u64,
    /// Admitted requests that failed.
    pub failed: u64,
    /// Admitted requests that were neither (`ign`).
    pub ignored: u64,
    /// Admitted requests the live policy had shed: their outcome is
    /// unknown, they report nothing and hold their permits for no time.
    pub unknown: u64,
    /// Refusals by stage, indexed like [`Stage::ALL`].
    pub rejected: [u64; 5],
    /// The candidate breaker's changes of state.
    pub transitions: Vec<Transition>,
    /// The length of a bucket of `series`, in nanoseconds.
    pub bucket_ns: u64,
    /// Per-bucket counts from the trace's origin.
    pub series: Vec<Bucket>,
    /// Requests the recorder dropped (the trace is incomplete by this many).
    pub dropped: u64,
}

impl Replay {
    /// Requests admitted.
    pub fn admitted(&self) -> u64 {
        self.succeeded + self.failed + self.ignored + self.unknown
    }

    /// Requests refused.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }

    /// When the breaker first opened, in nanoseconds, if it did.
    pub fn first_open_ns(&self) -> Option<u64> {
        self.transitions
            .iter()
            .find(|t| t.to == BreakerState::Open)
            .map(|t| t.at_ns)
    }

    /// The report as text: the same trace and configuration give the same
    /// bytes.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "stages: {}",
            self.stages
                .iter()
                .map(|s| match s {
                    Stage::RateLimit if self.rate_per_key => "rate_limiter (per key)",
                    s => s.name(),
                })
                .collect::<Vec<_>>()
                .join(" > ")
        );
        let _ = writeln!(out, "requests: {}", self.decisions.len());
        if self.dropped > 0 {
            let _ = writeln!(out, "dropped by the recorder: {}", self.dropped);
        }
        let _ = writeln!(
            out,
            "admitted: {} (succeeded {}, failed {}, ignored {}, unknown {})",
            self.admitted(),
            self.succeeded,
            self.failed,
            self.ignored,
            self.unknown
        );
        let _ = writeln!(out, "rejected: {}", self.rejected_total());
        for s in Stage::ALL {
            if self.rejected[s.index()] > 0 {
                let _ = writeln!(out, "  by {}: {}", s.name(), self.rejected[s.index()]);
            }
        }
        let _ = writeln!(out, "breaker transitions: {}", self.transitions.len());
        for t in &self.transitions {
            let _ = writeln!(out, "  {} {:?} -> {:?}", format_ns(t.at_ns), t.from, t.to);
        }
        out
    }
}

/// The most buckets a replay's series holds: a trace longer than this many
/// buckets gets wider buckets (the smallest multiple of the asked length
/// that fits).
pub const MAX_BUCKETS: usize = 100_000;

/// Nanoseconds as seconds with millisecond precision: `12.345s`.
pub fn format_ns(ns: u64) -> String {
    format!(
        "{}.{:03}s",
        ns / 1_000_000_000,
        ns % 1_000_000_000 / 1_000_000
    )
}

struct Pending {
    token: Token,
    outcome: Outcome,
}

fn outcome_of(o: TraceOutcome) -> Option<Outcome> {
    match o {
        TraceOutcome::Ok => Some(Outcome::Success),
        TraceOutcome::Err => Some(Outcome::Failure),
        TraceOutcome::Ignored => Some(Outcome::Ignored),
        TraceOutcome::Shed => None,
    }
}

/// Replays `trace` against `candidate` in virtual time (a
/// [`ManualClock`] moved to each arrival and each completion), with
/// `bucket_ns` long buckets in the series (widened to a multiple of it when
/// the trace spans more than [`MAX_BUCKETS`] of them).
///
/// Rules: requests arrive at their recorded instant (with their key, for a
/// candidate whose rate limit is [per key](Candidate::rate_per_key)); an admitted request
/// completes at arrival plus its recorded latency with its recorded
/// outcome; completions due at or before an arrival are reported first
/// (in order of completion time, then arrival); a request the live policy
/// shed (`shed`) and the candidate admits has no known outcome: its permits
/// are handed back at once, reporting nothing. Nothing here reads a real
/// clock, iterates a hash map or draws an unseeded random number, so the
/// result depends on the trace and the configuration only.
pub fn replay(trace: &Trace, candidate: &Candidate, bucket_ns: u64) -> Replay {
    // Buckets wide enough that the series holds at most MAX_BUCKETS: a
    // bucket a nanosecond over a trace of years would be terabytes.
    let span = trace.records.last().map_or(0, |r| r.at_ns);
    let least = span / MAX_BUCKETS as u64 + 1;
    let bucket_ns = bucket_ns.max(1);
    let bucket_ns = bucket_ns.saturating_mul(least.div_ceil(bucket_ns));
    let mut run = Run {
        candidate,
        clock: ManualClock::new(),
        pending: BTreeMap::new(),
        state: candidate.breaker_state(),
        out: Replay {
            stages: candidate.stages(),
            rate_per_key: candidate.is_rate_per_key(),
            decisions: Vec::with_capacity(trace.records.len()),
            succeeded: 0,
            failed: 0,
            ignored: 0,
            unknown: 0,
            rejected: [0; 5],
            transitions: Vec::new(),
            bucket_ns,
            series: Vec::new(),
            dropped: trace.dropped,
        },
    };
    for (seq, r) in trace.records.iter().enumerate() {
        run.complete_until(r.at_ns);
        let now = run.clock.advance_to(Timestamp::from_nanos(r.at_ns));
        let slot = usize::try_from(r.at_ns / bucket_ns).unwrap_or(usize::MAX);
        let out = &mut run.out;
        if out.series.len() <= slot {
            out.series.resize(slot + 1, Bucket::default());
        }
        let bucket = &mut out.series[slot];
        bucket.arrived += 1;
        if r.outcome == TraceOutcome::Shed {
            bucket.live_shed += 1;
        }
        let decision = match candidate.admit_key(now, r.key, r.retry) {
            Ok(token) => {
                bucket.admitted += 1;
                match outcome_of(r.outcome) {
                    Some(outcome) => {
                        match outcome {
                            Outcome::Success => out.succeeded += 1,
                            Outcome::Failure => {
                                out.failed += 1;
                                bucket.failed += 1;
                            }
                            Outcome::Ignored => out.ignored += 1,
                        }
                        let end = r.at_ns.saturating_add(r.latency_ns);
                        run.pending
                            .insert((end, seq as u64), Pending { token, outcome });
                    }
                    None => {
                        out.unknown += 1;
                        candidate.release(token);
                    }
                }
                Decision::Admitted
            }
            Err(stage) => {
                bucket.rejected += 1;
                out.rejected[stage.index()] += 1;
                Decision::Rejected(stage)
            }
        };
        run.out.decisions.push(decision);
        run.watch(now);
    }
    run.complete_until(u64::MAX);
    run.out
}

struct Run<'a> {
    candidate: &'a Candidate,
    clock: ManualClock,
    pending: BTreeMap<(u64, u64), Pending>,
    state: Option<BreakerState>,
    out: Replay,
}

impl Run<'_> {
    /// Records a change of the breaker's state at `now`, if there was one.
    fn watch(&mut self, now: Timestamp) {
        let next = self.candidate.breaker_state();
        if let (Some(from), Some(to)) = (self.state, next)
            && from != to
        {
            self.out.transitions.push(Transition {
                at_ns: now.as_nanos(),
                from,
                to,
            });
        }
        self.state = next;
    }

    /// Reports every call that completed at or before `until`.
    fn complete_until(&mut self, until: u64) {
        while let Some(entry) = self.pending.first_entry() {
            let (end, _) = *entry.key();
            if end > until {
                break;
            }
            let p = entry.remove();
            let now = self.clock.advance_to(Timestamp::from_nanos(end));
            self.candidate.complete(p.token, p.outcome, now);
            self.watch(now);
        }
    }
}
