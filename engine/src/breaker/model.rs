//! The sequential reference model of the breaker.
//!
//! Same rules as [`CircuitBreaker`](super::CircuitBreaker), written with plain
//! integers and `&mut self`: no atomics, no stripes, no tags. The property
//! tests run both side by side on the same operations and require the same
//! states, rejections and retry-after times; simulations can use it directly.
//!
//! Where the atomic breaker lets two generations or two stripes share a slot
//! word and sorts them out with tags, the model keeps the full epoch and
//! generation of each bucket and compares them exactly. Its count window is
//! a plain queue of the last `n` outcomes: push the newest, drop the oldest
//! beyond `n`, empty it at every transition.

use core::time::Duration;

use super::config::{BreakerConfig, MAX_BUCKETS, MAX_WINDOW_CALLS, Verdict, WindowKind};
use super::word::MAX_TRIPS;
use super::{BreakerState, Outcome, RejectReason, Rejected, WindowCounts};
use crate::time::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed {
        run: u32,
    },
    Open {
        until: u64,
        trips: u32,
        /// Whether scouts were configured when it opened.
        scouts: bool,
    },
    HalfOpen {
        trips: u32,
        admitted: u32,
        succeeded: u32,
        failed: u32,
        slow: u32,
    },
    ForcedOpen,
    Disabled,
    MetricsOnly,
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    epoch: u64,
    generation: u32,
    counts: WindowCounts,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Closed,
    Probe,
    Scout,
    Metrics,
    Passthrough,
}

/// A permit issued by the [`BreakerModel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelPermit {
    generation: u32,
    kind: Kind,
    admitted_at: u64,
}

impl ModelPermit {
    /// The generation it was granted in.
    pub fn generation(&self) -> u32 {
        self.generation
    }
    /// Whether it is a half-open probe.
    pub fn is_probe(&self) -> bool {
        matches!(self.kind, Kind::Probe | Kind::Scout)
    }
}

/// The last `n` outcomes `(failed, slow)`, oldest first: a queue in a fixed
/// array (the engine has no allocator).
#[derive(Clone, Debug)]
struct LastCalls {
    outcomes: [(bool, bool); MAX_WINDOW_CALLS as usize],
    oldest: usize,
    len: usize,
}

impl LastCalls {
    fn push(&mut self, n: usize, outcome: (bool, bool)) {
        if self.len == n {
            self.oldest = (self.oldest + 1) % self.outcomes.len();
            self.len -= 1;
        }
        let at = (self.oldest + self.len) % self.outcomes.len();
        self.outcomes[at] = outcome;
        self.len += 1;
    }

    fn counts(&self) -> WindowCounts {
        let mut c = WindowCounts {
            calls: self.len as u64,
            ..WindowCounts::default()
        };
        for i in 0..self.len {
            let (failed, slow) = self.outcomes[(self.oldest + i) % self.outcomes.len()];
            c.failures += u64::from(failed);
            c.slow += u64::from(slow);
        }
        c
    }
}

/// The breaker as a plain sequential state machine.
#[derive(Clone, Debug)]
pub struct BreakerModel {
    config: BreakerConfig,
    state: State,
    generation: u32,
    /// Time windows: buckets tagged with their epoch and generation.
    buckets: [Bucket; MAX_BUCKETS],
    /// Count windows: the last calls of this generation.
    last: LastCalls,
    /// Scouts admitted and not yet reported or released, any generation.
    scouts_out: u32,
}

impl BreakerModel {
    /// A closed model breaker.
    pub fn new(config: BreakerConfig) -> Self {
        BreakerModel {
            config,
            state: State::Closed { run: 0 },
            generation: 0,
            buckets: [Bucket::default(); MAX_BUCKETS],
            last: LastCalls {
                outcomes: [(false, false); MAX_WINDOW_CALLS as usize],
                oldest: 0,
                len: 0,
            },
            scouts_out: 0,
        }
    }

    /// The state.
    pub fn state(&self) -> BreakerState {
        match self.state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
            State::ForcedOpen => BreakerState::ForcedOpen,
            State::Disabled => BreakerState::Disabled,
            State::MetricsOnly => BreakerState::MetricsOnly,
        }
    }

    /// The generation.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    fn go(&mut self, state: State) {
        self.state = state;
        self.generation = self.generation.wrapping_add(1);
        self.last.len = 0;
    }

    fn epoch(&self, now: u64) -> u64 {
        match self.config.window.kind {
            WindowKind::Time { bucket } => now / bucket.get(),
            WindowKind::Count { .. } => 0,
        }
    }

    /// Whether a call would be admitted at `now`, without admitting it.
    pub fn would_admit(&self, now: Timestamp) -> Result<(), Rejected> {
        self.clone().try_acquire(now).map(|_| ())
    }

    /// Admission at `now`.
    pub fn try_acquire(&mut self, now: Timestamp) -> Result<ModelPermit, Rejected> {
        let now = now.as_nanos();
        let kind = match self.state {
            State::Closed { .. } => Kind::Closed,
            State::Disabled => Kind::Passthrough,
            State::MetricsOnly => Kind::Metrics,
            State::ForcedOpen => {
                return Err(Rejected {
                    reason: RejectReason::ForcedOpen,
                    retry_after: None,
                });
            }
            State::Open {
                until,
                trips,
                scouts,
            } => {
                if now < until {
                    let left = Some(Duration::from_nanos(until - now));
                    return Err(Rejected {
                        reason: RejectReason::Open,
                        retry_after: left,
                    });
                }
                if let Some(every) = self.config.probe_every_ns.filter(|_| scouts) {
                    // A scout: the breaker stays open, the next one waits,
                    // twice as long for each scout still out (at most
                    // `MAX_SCOUT_DOUBLINGS` times).
                    let out = self.scouts_out.min(super::MAX_SCOUT_DOUBLINGS);
                    let next = now.saturating_add(every.saturating_mul(1 << out));
                    if next <= until {
                        // At `Timestamp::MAX`: the last deadline is taken.
                        return Err(Rejected {
                            reason: RejectReason::Open,
                            retry_after: Some(Duration::ZERO),
                        });
                    }
                    let until = next;
                    self.state = State::Open {
                        until,
                        trips,
                        scouts,
                    };
                    self.scouts_out += 1;
                    return Ok(ModelPermit {
                        generation: self.generation,
                        kind: Kind::Scout,
                        admitted_at: now,
                    });
                }
                self.go(State::HalfOpen {
                    trips,
                    admitted: 1,
                    succeeded: 0,
                    failed: 0,
                    slow: 0,
                });
                Kind::Probe
            }
            State::HalfOpen {
                ref mut admitted, ..
            } => {
                if *admitted >= self.config.probes {
                    return Err(Rejected {
                        reason: RejectReason::HalfOpenFull,
                        retry_after: None,
                    });
                }
                *admitted += 1;
                Kind::Probe
            }
        };
        Ok(ModelPermit {
            generation: self.generation,
            kind,
            admitted_at: now,
        })
    }

    /// Reports an outcome; the call took from its admission to `now`.
    pub fn record(&mut self, permit: ModelPermit, outcome: Outcome, now: Timestamp) {
        let elapsed = now.as_nanos().saturating_sub(permit.admitted_at);
        self.record_elapsed(permit, outcome, Duration::from_nanos(elapsed), now);
    }

    /// Reports an outcome of a call that took `elapsed`.
    pub fn record_elapsed(
        &mut self,
        permit: ModelPermit,
        outcome: Outcome,
        elapsed: Duration,
        now: Timestamp,
    ) {
        let now = now.as_nanos();
        let failed = match outcome {
            Outcome::Success => false,
            Outcome::Failure => true,
            Outcome::Ignored => return self.release(permit),
        };
        if permit.kind == Kind::Scout {
            self.scouts_out = self.scouts_out.saturating_sub(1);
        }
        if permit.generation != self.generation {
            return;
        }
        let slow = self
            .config
            .is_slow(|| crate::time::saturating_nanos(elapsed));
        match (permit.kind, self.state) {
            (Kind::Closed, State::Closed { run }) => {
                let epoch = self.epoch(now);
                if self.config.has_rate_rule() {
                    self.count(epoch, failed, slow);
                }
                let run = if failed { run.saturating_add(1) } else { 0 };
                self.state = State::Closed { run };
                if failed || slow {
                    let c = self.window_counts(epoch);
                    let by_rate = self.config.rate_tripped(c.calls, c.failures, c.slow);
                    let by_run = self
                        .config
                        .consecutive_failures
                        .is_some_and(|limit| run >= limit);
                    if by_rate || by_run {
                        self.trip(1, now);
                    }
                }
            }
            (Kind::Metrics, State::MetricsOnly) => {
                let epoch = self.epoch(now);
                self.count(epoch, failed, slow);
            }
            (
                Kind::Probe,
                State::HalfOpen {
                    trips,
                    admitted,
                    succeeded,
                    failed: f,
                    slow: s,
                },
            ) => {
                let (succeeded, f, s) = (
                    succeeded + u32::from(!failed),
                    f + u32::from(failed),
                    s + u32::from(slow),
                );
                self.state = State::HalfOpen {
                    trips,
                    admitted,
                    succeeded,
                    failed: f,
                    slow: s,
                };
                match self.config.probe_verdict(succeeded, f, s, failed) {
                    Verdict::Pending => {}
                    Verdict::Close => self.go(State::Closed { run: 0 }),
                    Verdict::Reopen => self.trip((trips + 1).min(MAX_TRIPS), now),
                }
            }
            (Kind::Scout, State::Open { trips, .. }) if !failed => {
                match self.config.probe_verdict(1, 0, u32::from(slow), false) {
                    Verdict::Close => self.go(State::Closed { run: 0 }),
                    Verdict::Pending => self.go(State::HalfOpen {
                        trips,
                        admitted: 0,
                        succeeded: 0,
                        failed: 0,
                        slow: 0,
                    }),
                    Verdict::Reopen => {}
                }
            }
            _ => {}
        }
    }

    fn trip(&mut self, trips: u32, now: u64) {
        let until = now.saturating_add(self.config.open_ns_for(trips));
        let scouts = self.config.probe_every_ns.is_some();
        self.go(State::Open {
            until,
            trips,
            scouts,
        });
    }

    /// Gives a permit back unreported.
    pub fn release(&mut self, permit: ModelPermit) {
        if permit.kind == Kind::Scout {
            self.scouts_out = self.scouts_out.saturating_sub(1);
        }
        if permit.kind != Kind::Probe || permit.generation != self.generation {
            return;
        }
        if let State::HalfOpen {
            ref mut admitted, ..
        } = self.state
        {
            *admitted = admitted.saturating_sub(1);
        }
    }

    fn count(&mut self, epoch: u64, failed: bool, slow: bool) {
        if let WindowKind::Count { calls } = self.config.window.kind {
            self.last.push(calls as usize, (failed, slow));
            return;
        }
        let n = u64::from(self.config.window.buckets);
        let generation = self.generation;
        let b = &mut self.buckets[(epoch % n) as usize];
        if b.epoch != epoch || b.generation != generation {
            *b = Bucket {
                epoch,
                generation,
                counts: WindowCounts::default(),
            };
        }
        b.counts.calls += 1;
        b.counts.failures += u64::from(failed);
        b.counts.slow += u64::from(slow);
    }

    fn window_counts(&self, newest: u64) -> WindowCounts {
        if let WindowKind::Count { .. } = self.config.window.kind {
            return self.last.counts();
        }
        let n = u64::from(self.config.window.buckets);
        let mut total = WindowCounts::default();
        for back in 0..n {
            let Some(epoch) = newest.checked_sub(back) else {
                break;
            };
            let b = &self.buckets[(epoch % n) as usize];
            if b.epoch == epoch && b.generation == self.generation {
                total.calls += b.counts.calls;
                total.failures += b.counts.failures;
                total.slow += b.counts.slow;
            }
        }
        total
    }

    /// The window's totals at `now` (closed and metrics-only states).
    pub fn window(&self, now: Timestamp) -> WindowCounts {
        match self.state {
            State::Closed { .. } | State::MetricsOnly => {
                self.window_counts(self.epoch(now.as_nanos()))
            }
            _ => WindowCounts::default(),
        }
    }

    /// Holds the breaker open.
    pub fn force_open(&mut self) {
        self.go(State::ForcedOpen);
    }
    /// Lets everything through unmeasured.
    pub fn disable(&mut self) {
        self.go(State::Disabled);
    }
    /// Measures but never trips.
    pub fn metrics_only(&mut self) {
        self.go(State::MetricsOnly);
    }
    /// Closes with an empty window.
    pub fn reset(&mut self) {
        self.go(State::Closed { run: 0 });
    }
}
