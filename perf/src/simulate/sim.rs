//! Running a [`Scenario`] under virtual time, with a breaker or without one.
//!
//! Requests arrive at fixed intervals. A request the breaker admits becomes a
//! call in flight until the dependency's answer (or the client's timeout)
//! completes it; calls in flight wait in a min-heap ordered by completion
//! time, so many can overlap, as they would in a real service. Before each
//! arrival every call that completed by then reports its outcome to the
//! breaker, at its own completion instant, on a [`ManualClock`]. A rejected
//! request fails at once and never reaches the dependency.
//!
//! Breaker transitions are detected by comparing the breaker's state before
//! and after each admission and each report.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Duration;

use tenlives_engine::ConfigError;
use tenlives_engine::breaker::{BreakerState, CircuitBreaker, Outcome, Permit, Snapshot};
use tenlives_engine::time::{Clock, ManualClock, Timestamp};

use super::scenario::{BreakerSettings, Scenario};

/// How a request ended for the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// The dependency answered successfully.
    Succeeded,
    /// The dependency answered with an error, or the client timed out.
    Failed,
    /// The breaker rejected the request without calling the dependency.
    Rejected,
}

/// One request of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// The phase the request was sent in.
    pub phase: usize,
    /// How it ended.
    pub fate: Fate,
    /// How long the client waited for the result.
    pub latency: Duration,
}

/// Which rule opened a closed breaker, with the figures that broke it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TripRule {
    /// `run` calls in a row failed.
    Consecutive {
        /// Length of the run of failures.
        run: u32,
    },
    /// `failures` of the `calls` in the window failed.
    FailureRate {
        /// Failed calls in the window.
        failures: u64,
        /// All calls in the window.
        calls: u64,
    },
    /// `slow` of the `calls` in the window were slow.
    SlowRate {
        /// Slow calls in the window.
        slow: u64,
        /// All calls in the window.
        calls: u64,
    },
    /// None of the rules above explains it (should not happen).
    Unexplained,
}

/// What a transition meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A closed breaker opened.
    Tripped {
        /// Why.
        rule: TripRule,
        /// How long it will reject calls.
        open_for: Duration,
    },
    /// The open period ended; probes may pass.
    Probing {
        /// How many probes the test uses.
        probes: u32,
    },
    /// The probes' verdict: the dependency has not recovered.
    Reopened {
        /// Probes that reported.
        reported: u32,
        /// Of those, failures.
        failed: u32,
        /// Probes that succeeded, but slowly.
        slow: u32,
        /// How long it will reject calls this time.
        open_for: Duration,
        /// Trips since the breaker last closed.
        trips: u32,
    },
    /// The probes' verdict: the dependency has recovered.
    Closed {
        /// Probes that reported.
        reported: u32,
        /// Of those, successes.
        succeeded: u32,
    },
    /// Anything else (should not happen in the demo).
    Other,
}

/// A change of breaker state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// When it happened.
    pub at: Timestamp,
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
    /// What it meant.
    pub cause: Cause,
}

/// Time the breaker spent in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateTimes {
    /// Closed.
    pub closed: Duration,
    /// Open.
    pub open: Duration,
    /// Half-open.
    pub half_open: Duration,
    /// Any other state (none in the demo).
    pub other: Duration,
}

impl StateTimes {
    fn add(&mut self, state: BreakerState, d: Duration) {
        let slot = match state {
            BreakerState::Closed => &mut self.closed,
            BreakerState::Open => &mut self.open,
            BreakerState::HalfOpen => &mut self.half_open,
            _ => &mut self.other,
        };
        *slot += d;
    }
}

/// Everything a run produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunResult {
    /// One record per request, in order of arrival.
    pub records: Vec<RequestRecord>,
    /// Breaker transitions in order (empty without a breaker).
    pub transitions: Vec<Transition>,
    /// Time per breaker state (`None` without a breaker).
    pub state_times: Option<StateTimes>,
    /// The most calls in flight on the dependency at once.
    pub peak_in_flight: usize,
    /// When the run ended: the later of the scenario's end and the last
    /// completion.
    pub end: Timestamp,
}

/// A call in flight on the dependency.
struct InFlight<'b> {
    done_at: Timestamp,
    seq: u64,
    outcome: Outcome,
    slow: bool,
    /// The breaker's permit, if there is a breaker.
    permit: Option<Permit<'b>>,
}

impl PartialEq for InFlight<'_> {
    fn eq(&self, other: &Self) -> bool {
        (self.done_at, self.seq) == (other.done_at, other.seq)
    }
}
impl Eq for InFlight<'_> {}
impl PartialOrd for InFlight<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight<'_> {
    /// Reversed, so that `BinaryHeap` pops the earliest completion first
    /// (ties in order of arrival).
    fn cmp(&self, other: &Self) -> Ordering {
        (other.done_at, other.seq).cmp(&(self.done_at, self.seq))
    }
}

/// Outcomes of the probes of the current half-open period.
#[derive(Clone, Copy, Debug, Default)]
struct ProbeTally {
    generation: u32,
    succeeded: u32,
    failed: u32,
    /// Successful but slow probes.
    slow: u32,
}

/// Watches the breaker's state and narrates its changes.
struct Tracker<'b> {
    breaker: &'b CircuitBreaker,
    settings: &'b BreakerSettings,
    state: BreakerState,
    since: Timestamp,
    times: StateTimes,
    transitions: Vec<Transition>,
    tally: ProbeTally,
}

impl<'b> Tracker<'b> {
    fn new(breaker: &'b CircuitBreaker, settings: &'b BreakerSettings) -> Self {
        Tracker {
            breaker,
            settings,
            state: breaker.state(),
            since: Timestamp::ZERO,
            times: StateTimes::default(),
            transitions: Vec::new(),
            tally: ProbeTally::default(),
        }
    }

    fn change(&mut self, now: Timestamp, to: BreakerState, cause: Cause) {
        self.times
            .add(self.state, now.saturating_duration_since(self.since));
        self.transitions.push(Transition {
            at: now,
            from: self.state,
            to,
            cause,
        });
        self.state = to;
        self.since = now;
    }

    /// After an admission attempt at `now`.
    fn after_acquire(&mut self, now: Timestamp) {
        let after = self.breaker.snapshot(now);
        if after.state == self.state {
            return;
        }
        let cause = if (self.state, after.state) == (BreakerState::Open, BreakerState::HalfOpen) {
            self.tally = ProbeTally {
                generation: after.generation,
                ..ProbeTally::default()
            };
            Cause::Probing {
                probes: self.breaker.config().half_open_probes(),
            }
        } else {
            Cause::Other
        };
        self.change(now, after.state, cause);
    }

    /// After the report of a call that completed at `now`. `before` is the
    /// snapshot taken just before the report; `probe` the generation of the
    /// permit if it was a probe.
    fn after_record(
        &mut self,
        now: Timestamp,
        before: &Snapshot,
        failed: bool,
        slow: bool,
        probe: Option<u32>,
    ) {
        if probe.is_some_and(|g| g == self.tally.generation && before.generation == g) {
            if failed {
                self.tally.failed += 1;
            } else {
                self.tally.succeeded += 1;
            }
            // Only slow successes: a failure is reason enough on its own.
            self.tally.slow += u32::from(slow && !failed);
        }
        let after = self.breaker.snapshot(now);
        if after.state == self.state {
            return;
        }
        let open_for = after.retry_after.unwrap_or_default();
        let reported = self.tally.succeeded + self.tally.failed;
        let cause = match (self.state, after.state) {
            (BreakerState::Closed, BreakerState::Open) => Cause::Tripped {
                rule: self.trip_rule(before, failed, slow),
                open_for,
            },
            (BreakerState::HalfOpen, BreakerState::Open) => Cause::Reopened {
                reported,
                failed: self.tally.failed,
                slow: self.tally.slow,
                open_for,
                trips: after.trips,
            },
            (BreakerState::HalfOpen, BreakerState::Closed) => Cause::Closed {
                reported,
                succeeded: self.tally.succeeded,
            },
            _ => Cause::Other,
        };
        self.change(now, after.state, cause);
    }

    /// Which rule the call that just reported broke: the window as it was
    /// before the report, plus that call.
    fn trip_rule(&self, before: &Snapshot, failed: bool, slow: bool) -> TripRule {
        let s = self.settings;
        let run = before.consecutive_failures + 1;
        if failed && run >= s.consecutive_failures {
            return TripRule::Consecutive { run };
        }
        let calls = before.window.calls + 1;
        let failures = before.window.failures + u64::from(failed);
        let slow_calls = before.window.slow + u64::from(slow);
        let at_least = |part: u64, pct: f64| part as f64 * 100.0 >= calls as f64 * pct;
        if calls >= u64::from(s.minimum_calls) {
            if at_least(failures, s.failure_rate_pct) {
                return TripRule::FailureRate { failures, calls };
            }
            if at_least(slow_calls, s.slow_rate_pct) {
                return TripRule::SlowRate {
                    slow: slow_calls,
                    calls,
                };
            }
        }
        TripRule::Unexplained
    }

    fn finish(mut self, end: Timestamp) -> (Vec<Transition>, StateTimes) {
        self.times
            .add(self.state, end.saturating_duration_since(self.since));
        (self.transitions, self.times)
    }
}

/// Runs `scenario` once: through a breaker built from `settings`, or
/// straight to the dependency when `settings` is `None`.
pub fn simulate(
    scenario: &Scenario,
    settings: Option<&BreakerSettings>,
) -> Result<RunResult, ConfigError> {
    Ok(match settings {
        Some(s) => run(scenario, Some((&s.build()?, s))),
        None => run(scenario, None),
    })
}

fn run(scenario: &Scenario, guard: Option<(&CircuitBreaker, &BreakerSettings)>) -> RunResult {
    let clock = ManualClock::new();
    let mut tracker = guard.map(|(b, s)| Tracker::new(b, s));
    let mut in_flight: BinaryHeap<InFlight<'_>> = BinaryHeap::new();
    let total = scenario.requests();
    let mut records = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut peak_in_flight = 0;

    let complete = |call: InFlight<'_>, tracker: &mut Option<Tracker<'_>>| {
        clock.advance_to(call.done_at);
        let now = clock.now();
        if let (Some(permit), Some(t)) = (call.permit, tracker.as_mut()) {
            let before = t.breaker.snapshot(now);
            let probe = permit.is_probe().then(|| permit.generation());
            permit.record(call.outcome, now);
            let failed = call.outcome == Outcome::Failure;
            t.after_record(now, &before, failed, call.slow, probe);
        }
    };

    for i in 0..total {
        let arrival = scenario.arrival(i);
        while in_flight.peek().is_some_and(|c| c.done_at <= arrival) {
            if let Some(call) = in_flight.pop() {
                complete(call, &mut tracker);
            }
        }
        clock.advance_to(arrival);
        let now = clock.now();
        let phase = scenario.phase_at(now);
        let response = scenario.response(i, phase);

        let permit = match tracker.as_mut() {
            None => None,
            Some(t) => {
                let admitted = t.breaker.try_acquire(now);
                t.after_acquire(now);
                match admitted {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        records.push(RequestRecord {
                            phase,
                            fate: Fate::Rejected,
                            latency: Duration::ZERO,
                        });
                        continue;
                    }
                }
            }
        };
        records.push(RequestRecord {
            phase,
            fate: if response.ok {
                Fate::Succeeded
            } else {
                Fate::Failed
            },
            latency: response.latency,
        });
        in_flight.push(InFlight {
            done_at: now.saturating_add(response.latency),
            seq: i,
            outcome: if response.ok {
                Outcome::Success
            } else {
                Outcome::Failure
            },
            slow: guard.is_some_and(|(_, s)| s.is_slow(response.latency)),
            permit,
        });
        peak_in_flight = peak_in_flight.max(in_flight.len());
    }
    while let Some(call) = in_flight.pop() {
        complete(call, &mut tracker);
    }

    let scenario_end =
        Timestamp::from_nanos(u64::try_from(scenario.duration.as_nanos()).unwrap_or(u64::MAX));
    let end = clock.now().max(scenario_end);
    let (transitions, state_times) = match tracker {
        Some(t) => {
            let (tr, times) = t.finish(end);
            (tr, Some(times))
        }
        None => (Vec::new(), None),
    };
    RunResult {
        records,
        transitions,
        state_times,
        peak_in_flight,
        end,
    }
}
