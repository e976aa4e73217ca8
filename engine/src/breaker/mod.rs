//! A lock-free circuit breaker.
//!
//! A breaker watches the outcomes of calls to a dependency and, when the
//! dependency looks unhealthy, rejects calls for a while instead of letting
//! them pile onto it; then it lets a few probe calls through to test whether
//! the dependency recovered.
//!
//! ```
//! use core::time::Duration;
//! use tenlives_engine::breaker::{BreakerConfig, BreakerState, CircuitBreaker, RejectReason};
//! use tenlives_engine::time::{Clock, ManualClock};
//!
//! let breaker = CircuitBreaker::new(
//!     BreakerConfig::builder()
//!         .without_failure_rate()
//!         .consecutive_failures(3)
//!         .open_duration(Duration::from_secs(10))
//!         .half_open_probes(1)
//!         .build()?,
//! );
//! let clock = ManualClock::new();
//!
//! // Three failures in a row open the breaker...
//! for _ in 0..3 {
//!     let permit = breaker.try_acquire(clock.now()).expect("closed");
//!     permit.failure(clock.now());
//! }
//! assert_eq!(breaker.state(), BreakerState::Open);
//!
//! // ...which then rejects calls, saying why and for how long.
//! clock.advance(Duration::from_secs(4));
//! let rejected = breaker.try_acquire(clock.now()).unwrap_err();
//! assert_eq!(rejected.reason(), RejectReason::Open);
//! assert_eq!(rejected.retry_after(), Some(Duration::from_secs(6)));
//!
//! // Once the open duration is over, one probe is let through; its success
//! // closes the breaker.
//! clock.advance(Duration::from_secs(6));
//! let probe = breaker.try_acquire(clock.now()).expect("probe");
//! assert!(probe.is_probe());
//! probe.success(clock.now());
//! assert_eq!(breaker.state(), BreakerState::Closed);
//! # Ok::<(), tenlives_engine::ConfigError>(())
//! ```
//!
//! The protocol of the state word is documented in `word.rs`, and the
//! invariants in `docs/guarantees.md`.
//!
//! # Changing the configuration
//!
//! [`CircuitBreaker::set_config`] and [`CircuitBreaker::update_config`] take
//! a new configuration while other threads use the breaker (through `&self`
//! with the `std` feature, `&mut self` without). What each piece of state
//! means afterwards:
//!
//! | state | after the change |
//! |---|---|
//! | the state (closed, open, ...), generation and trip count | kept |
//! | an open breaker's deadline | kept: it was set when the breaker opened; the next trip uses the new durations |
//! | the consecutive-failure run | kept, judged against the new limit at the next failure |
//! | a half-open test | judged with the new probe count; probes already admitted count towards it |
//! | scouts (`probe_every`) turned on, off or changed | decided when the breaker opens: an open period that began with scouts scouts at the new interval (or, with scouts now off, ends in the half-open test); one that began without them ends in the half-open test; a scout already out still ends its open period if it succeeds |
//! | the window, same layout (kind, size, buckets) | kept: the new thresholds judge the same counts at the next failure |
//! | the window, new layout | a new window; the old window's newest calls that fit it are carried over (into a time window's current bucket: the old buckets that overlap its span, or all of an old count window; into a count window: as many of the newest calls as it holds, in their order, an old time window's buckets oldest first), so a rate is not forgotten |
//!
//! Calls that report while a layout change is being made may be counted in
//! the old window only (at most the reports in flight at that instant).
//! Each change emits [`EventKind::CONFIG_CHANGED`] with payload `[1, calls
//! carried into a new window, or u64::MAX when the window was kept]`.
//! Until the first change a call pays one load more than a breaker that
//! cannot change; after it, calls that read the configuration pin the epoch
//! (see [`config_cell`](crate::config_cell)).

pub(crate) mod config;
mod model;
mod ring;
pub(crate) mod snapshot;
pub(crate) mod window;
mod word;

use core::fmt;
use core::time::Duration;

use crossbeam_utils::CachePadded;

pub use config::{
    BreakerConfig, BreakerConfigBuilder, MAX_BUCKETS, MAX_CONSECUTIVE_FAILURES, MAX_PROBES,
    MAX_WINDOW_CALLS, WindowSpec,
};
pub use model::{BreakerModel, ModelPermit};
pub use snapshot::BREAKER_SNAPSHOT_MAX;
pub use window::WindowCounts;

use config::Verdict;
use window::{CallWindow, Recorded};
use word::{
    KIND_CLOSED, KIND_DISABLED, KIND_FORCED_OPEN, KIND_HALF_OPEN, KIND_METRICS_ONLY, KIND_OPEN,
    KIND_OPENING, KIND_SCOUTING, MAX_TRIPS, ProbeWord, StateWord, is_newer,
};

use crate::events::{Event, EventKind, EventSink, NoSink};
use crate::live::Layered;
use crate::sync::{AtomicU64, Ordering, spin_hint};
use crate::time::Timestamp;

/// The observable state of a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls pass and are measured.
    Closed,
    /// Calls are rejected until the open duration ends.
    Open,
    /// A limited number of probe calls pass; their outcomes decide.
    HalfOpen,
    /// Held open by an explicit call; rejects until told otherwise.
    ForcedOpen,
    /// Lets every call through and measures nothing.
    Disabled,
    /// Lets every call through and measures it, but never trips.
    MetricsOnly,
}

impl BreakerState {
    fn from_kind(kind: u64) -> Self {
        match kind {
            KIND_CLOSED => BreakerState::Closed,
            KIND_OPENING | KIND_OPEN | KIND_SCOUTING => BreakerState::Open,
            KIND_HALF_OPEN => BreakerState::HalfOpen,
            KIND_FORCED_OPEN => BreakerState::ForcedOpen,
            KIND_DISABLED => BreakerState::Disabled,
            _ => BreakerState::MetricsOnly,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
            BreakerState::ForcedOpen => "forced open",
            BreakerState::Disabled => "disabled",
            BreakerState::MetricsOnly => "metrics only",
        })
    }
}

/// How a call ended, as the caller's classifier sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The dependency did its job.
    Success,
    /// The dependency failed in a way that counts against its health.
    Failure,
    /// The call says nothing about the dependency's health (for example a
    /// client error); it is not counted, and a probe slot it held is freed.
    Ignored,
}

/// Why a call was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// The breaker tripped and is waiting out its open duration.
    Open,
    /// An operator forced the breaker open.
    ForcedOpen,
    /// The breaker is testing the dependency and all probe slots are taken.
    HalfOpenFull,
}

/// A rejected admission: why, and when trying again makes sense.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rejected {
    reason: RejectReason,
    retry_after: Option<Duration>,
}

impl Rejected {
    /// Why the call was rejected.
    pub fn reason(&self) -> RejectReason {
        self.reason
    }

    /// How long until the breaker may admit calls again: the rest of the open
    /// duration when [`RejectReason::Open`]; `None` when unknown (forced open,
    /// or half-open waiting for probes to report).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            RejectReason::Open => f.write_str("circuit breaker is open")?,
            RejectReason::ForcedOpen => f.write_str("circuit breaker is forced open")?,
            RejectReason::HalfOpenFull => {
                f.write_str("circuit breaker is half-open and all probe slots are taken")?
            }
        }
        if let Some(d) = self.retry_after {
            write!(f, "; retry after {d:?}")?;
        }
        Ok(())
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Rejected {}

/// Four bytes wide, as wide as the `u32` beside it in [`RawPermit`]: a
/// one-byte kind is stored as one byte and then, moved with its padding,
/// read back as four, which the CPU cannot forward from the byte store (a
/// stall per admission in the layers, found by profiling; about 8 ns of
/// the breaker layer's time, `docs/performance.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
enum PermitKind {
    /// Admitted while closed: measured, may trip.
    Closed,
    /// A half-open probe: holds a probe slot.
    Probe,
    /// A scout of an open breaker (`probe_every`): holds nothing; its
    /// success ends the open period.
    Scout,
    /// Admitted while metrics-only: measured, never trips.
    Metrics,
    /// Admitted while disabled: not measured.
    Passthrough,
}

/// The low-level admission token, for adapters that keep the breaker behind
/// their own handle.
///
/// It holds no reference to the breaker, so it must be handed back to
/// [`CircuitBreaker::record`] or [`CircuitBreaker::release`] of the breaker
/// that issued it; dropping it instead leaks a half-open probe slot. Prefer
/// [`Permit`], which does this on drop.
#[must_use = "a raw permit must be recorded or released, or a probe slot leaks"]
#[derive(Debug, PartialEq, Eq)]
pub struct RawPermit {
    generation: u32,
    kind: PermitKind,
    admitted_at: Timestamp,
}

impl RawPermit {
    /// The breaker generation the permit was granted in.
    pub fn generation(&self) -> u32 {
        self.generation
    }
    /// Whether this is a half-open probe.
    pub fn is_probe(&self) -> bool {
        matches!(self.kind, PermitKind::Probe | PermitKind::Scout)
    }
    /// When the call was admitted (the `now` given to the admission);
    /// [`Timestamp::MAX`] when it was admitted through
    /// [`CircuitBreaker::try_acquire_raw_with`] without reading the time.
    pub fn admitted_at(&self) -> Timestamp {
        self.admitted_at
    }
}

/// Permission to make one call, stamped with the breaker's generation.
///
/// Report how the call went with [`record`](Permit::record) (or
/// [`success`](Permit::success) / [`failure`](Permit::failure)). Dropping the
/// permit without reporting — the call was cancelled, or panicked — counts as
/// neither success nor failure and frees its half-open slot if it held one.
#[must_use = "dropping a permit unreported counts the call as neither success nor failure"]
pub struct Permit<'a, S: EventSink = NoSink> {
    breaker: &'a CircuitBreaker<S>,
    raw: Option<RawPermit>,
}

impl<S: EventSink> Permit<'_, S> {
    /// Reports the call's outcome; `now` is when it completed.
    pub fn record(mut self, outcome: Outcome, now: Timestamp) {
        if let Some(raw) = self.raw.take() {
            self.breaker.record(raw, outcome, now);
        }
    }
    /// Reports the call's outcome, reading when it completed through `now`
    /// only if the record needs it (see
    /// [`CircuitBreaker::record_needs_time`]): with
    /// [`CircuitBreaker::try_acquire_with`], a success through a closed
    /// breaker on consecutive failures reads no clock at all.
    ///
    /// The permit stays in `self` while `now` runs: should the clock
    /// panic, unwinding drops it, which releases it unreported like any
    /// permit of a call that panicked (a half-open probe's slot is freed,
    /// a scout no longer counts as out).
    pub fn record_with(mut self, outcome: Outcome, now: impl FnOnce() -> Timestamp) {
        let Some(raw) = self.raw.as_ref() else {
            return;
        };
        let now = if self.breaker.record_needs_time(raw, outcome) {
            now()
        } else {
            Timestamp::ZERO
        };
        if let Some(raw) = self.raw.take() {
            self.breaker.record(raw, outcome, now);
        }
    }
    /// Reports the call's outcome with its duration as the caller measured
    /// it: the slow-call rule judges `elapsed` instead of the time from the
    /// admission to `now` (which is when the call completed).
    ///
    /// ```
    /// use core::time::Duration;
    /// use tenlives_engine::breaker::{BreakerConfig, BreakerState, CircuitBreaker, Outcome};
    /// use tenlives_engine::time::Timestamp;
    ///
    /// let breaker = CircuitBreaker::new(
    ///     BreakerConfig::builder()
    ///         .without_failure_rate()
    ///         .slow_calls(50.0, Duration::from_millis(100))
    ///         .count_window(2)
    ///         .build()?,
    /// );
    /// let now = Timestamp::ZERO; // the breaker's clock does not move here
    /// let timed = |elapsed| {
    ///     let permit = breaker.try_acquire(now).expect("closed");
    ///     permit.record_elapsed(Outcome::Success, elapsed, now);
    /// };
    /// timed(Duration::from_millis(20));
    /// timed(Duration::from_millis(250)); // 1 slow call in 2: 50 %
    /// assert_eq!(breaker.state(), BreakerState::Open);
    /// # Ok::<(), tenlives_engine::ConfigError>(())
    /// ```
    pub fn record_elapsed(mut self, outcome: Outcome, elapsed: Duration, now: Timestamp) {
        if let Some(raw) = self.raw.take() {
            self.breaker.record_elapsed(raw, outcome, elapsed, now);
        }
    }
    /// Reports a success.
    pub fn success(self, now: Timestamp) {
        self.record(Outcome::Success, now);
    }
    /// Reports a failure.
    pub fn failure(self, now: Timestamp) {
        self.record(Outcome::Failure, now);
    }
    /// Whether this is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.raw.as_ref().is_some_and(RawPermit::is_probe)
    }
    /// The breaker generation the permit was granted in.
    pub fn generation(&self) -> u32 {
        self.raw.as_ref().map_or(0, RawPermit::generation)
    }
    /// Gives up the automatic release, returning the low-level token.
    pub fn into_raw(mut self) -> RawPermit {
        match self.raw.take() {
            Some(raw) => raw,
            // `raw` is only taken by methods that consume `self`.
            None => unreachable!("permit already consumed"),
        }
    }
}

impl<S: EventSink> fmt::Debug for Permit<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("raw", &self.raw)
            .finish_non_exhaustive()
    }
}

impl<S: EventSink> Drop for Permit<'_, S> {
    fn drop(&mut self) {
        if let Some(raw) = self.raw.take() {
            self.breaker.release(raw);
        }
    }
}

/// A point-in-time view of a breaker, for metrics and dashboards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The state.
    pub state: BreakerState,
    /// The generation (bumped by every transition).
    pub generation: u32,
    /// Calls, failures and slow calls in the current window: in the closed
    /// state when the breaker has a rate rule (a consecutive-failures-only
    /// breaker keeps no window, to keep its success path a single load), and
    /// in the metrics-only state; zero otherwise.
    pub window: WindowCounts,
    /// Consecutive failures so far (closed state).
    pub consecutive_failures: u32,
    /// Probes admitted and not released (half-open state): those that
    /// reported plus those still in flight.
    pub probes_admitted: u32,
    /// Probes that reported an outcome (half-open state).
    pub probes_reported: u32,
    /// Trips since the breaker last closed.
    pub trips: u32,
    /// How long until an open breaker admits a probe.
    pub retry_after: Option<Duration>,
}

/// The words that change on transitions, on their own cache line.
struct Core {
    /// The packed state word; see `word.rs` for its layout and protocol.
    state: AtomicU64,
    /// When the current open period ends (nanoseconds); meaningful in `Open`.
    open_until: AtomicU64,
    /// Outcomes of the current half-open probes; see `word.rs`.
    probes: AtomicU64,
    /// Scout permits admitted and not yet reported or released, of any
    /// generation: each further one doubles the interval before the next
    /// scout (see `scout`).
    /// (A 64-bit word like the others: the engine's 32-bit atomics are
    /// for `std` builds only.)
    scouts: AtomicU64,
}

/// The most doublings of the scout interval for scouts still out: with
/// two or more unanswered, the next waits four intervals. (Eight, tried
/// in `tenlives-perf goodput`, sent as few calls to a stalled upstream
/// and saw the end of a latency spike 0.1 s later; see `docs/breaker.md`.)
pub const MAX_SCOUT_DOUBLINGS: u32 = 2;

/// A lock-free circuit breaker. See the [module documentation](self).
///
/// All methods take `&self`; share it between threads by reference, in an
/// `Arc`, or in a `static`. It never allocates, never blocks and never reads
/// a clock: every time-dependent method takes `now`.
pub struct CircuitBreaker<S: EventSink = NoSink> {
    core: CachePadded<Core>,
    /// The configuration and the window laid out for it.
    era: Layered<BreakerConfig, CallWindow>,
    sink: S,
    source: u32,
}

impl<S: EventSink> fmt::Debug for CircuitBreaker<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .field("config", &self.config())
            .finish()
    }
}

impl CircuitBreaker {
    /// A closed breaker that emits no events.
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreaker::with_sink(config, NoSink, 0)
    }
}

/// Why a breaker opened: the low byte of the first payload word of an
/// [`EventKind::BREAKER_OPENED`] event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum TripReason {
    /// The consecutive-failures rule.
    ConsecutiveFailures = 1,
    /// The failure-rate rule.
    FailureRate = 2,
    /// The slow-call-rate rule.
    SlowCallRate = 3,
    /// The half-open test failed.
    FailedTest = 4,
}

impl TripReason {
    /// The reason in the low byte of an event payload word, if it is one.
    pub fn from_code(code: u64) -> Option<Self> {
        match code & 0xff {
            1 => Some(TripReason::ConsecutiveFailures),
            2 => Some(TripReason::FailureRate),
            3 => Some(TripReason::SlowCallRate),
            4 => Some(TripReason::FailedTest),
            _ => None,
        }
    }
}

impl BreakerState {
    /// The code of this state in [`EventKind::BREAKER_FORCED`] events.
    pub fn code(self) -> u64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
            BreakerState::ForcedOpen => 3,
            BreakerState::Disabled => 4,
            BreakerState::MetricsOnly => 5,
        }
    }
}

impl RejectReason {
    /// The code of this reason in [`EventKind::BREAKER_REJECTED`] events.
    pub fn code(self) -> u64 {
        match self {
            RejectReason::Open => 1,
            RejectReason::ForcedOpen => 2,
            RejectReason::HalfOpenFull => 3,
        }
    }
}

impl<S: EventSink> CircuitBreaker<S> {
    /// A closed breaker that reports transitions and rejections to `sink`,
    /// tagged with `source` (an id of your choosing; see `docs/events.md`).
    pub fn with_sink(config: BreakerConfig, sink: S, source: u32) -> Self {
        let window = CallWindow::new(&config.window);
        CircuitBreaker {
            core: CachePadded::new(Core {
                state: AtomicU64::new(StateWord::new(KIND_CLOSED, 0, 0, 0).0),
                open_until: AtomicU64::new(0),
                probes: AtomicU64::new(ProbeWord::fresh(0).0),
                scouts: AtomicU64::new(0),
            }),
            era: Layered::new(config, window),
            sink,
            source,
        }
    }

    /// The sink events go to.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// The source id its events carry (given to [`with_sink`](Self::with_sink)).
    pub fn source_id(&self) -> u32 {
        self.source
    }

    #[inline]
    fn emit(&self, kind: EventKind, now: Timestamp, payload: [u64; 2]) {
        if self.sink.enabled() {
            self.sink.emit(Event::new(kind, self.source, now, payload));
        }
    }

    #[inline]
    fn reject(
        &self,
        reason: RejectReason,
        retry_after: Option<Duration>,
        now: Timestamp,
    ) -> Rejected {
        if self.sink.enabled() {
            let retry = retry_after.map_or(u64::MAX, crate::time::saturating_nanos);
            self.emit(EventKind::BREAKER_REJECTED, now, [reason.code(), retry]);
        }
        Rejected {
            reason,
            retry_after,
        }
    }

    /// The configuration in force (a copy: another thread may change it).
    pub fn config(&self) -> BreakerConfig {
        self.with_era(|cfg, _| cfg.clone())
    }

    /// Takes `config` in place of the configuration in force, at `now`,
    /// keeping the breaker's state (see [the module
    /// documentation](self#changing-the-configuration) for what each part
    /// of it means afterwards).
    ///
    /// ```
    /// use core::time::Duration;
    /// use tenlives_engine::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
    /// use tenlives_engine::time::Timestamp;
    ///
    /// let breaker = CircuitBreaker::new(
    ///     BreakerConfig::builder().without_failure_rate().consecutive_failures(5).build()?,
    /// );
    /// let now = Timestamp::from_nanos(1_000);
    /// for _ in 0..3 {
    ///     breaker.try_acquire(now).expect("closed").failure(now);
    /// }
    /// // Three failures in a row so far: a limit of 3 trips at the next one.
    /// breaker.set_config(
    ///     BreakerConfig::builder().without_failure_rate().consecutive_failures(3).build()?,
    ///     now,
    /// );
    /// assert_eq!(breaker.state(), BreakerState::Closed);
    /// breaker.try_acquire(now).expect("closed").failure(now);
    /// assert_eq!(breaker.state(), BreakerState::Open);
    ///
    /// // A bad change is refused with the builder's error; the old
    /// // configuration stays in force.
    /// let refused = breaker.update_config(
    ///     |old| old.to_builder().half_open_probes(0).build(),
    ///     now,
    /// );
    /// assert!(refused.is_err());
    /// assert_eq!(breaker.config().consecutive_failures(), Some(3));
    /// # let _ = Duration::ZERO;
    /// # Ok::<(), tenlives_engine::ConfigError>(())
    /// ```
    #[cfg(feature = "std")]
    pub fn set_config(&self, config: BreakerConfig, now: Timestamp) {
        let done: Result<(), core::convert::Infallible> =
            self.update_config(|_| Ok(config.clone()), now);
        let Ok(()) = done;
    }

    /// Replaces the configuration with what `f` makes of the one in force
    /// (`f` may run again if another change came first), keeping the
    /// breaker's state like [`set_config`](Self::set_config).
    ///
    /// # Errors
    ///
    /// The error `f` returns (a builder's [`ConfigError`](crate::ConfigError),
    /// for example); the configuration in force stays.
    #[cfg(feature = "std")]
    pub fn update_config<E>(
        &self,
        f: impl FnMut(&BreakerConfig) -> Result<BreakerConfig, E>,
        now: Timestamp,
    ) -> Result<(), E> {
        let carried = self.era.update(f, self.relayout(now))?;
        self.emit(EventKind::CONFIG_CHANGED, now, [1, carried]);
        Ok(())
    }

    /// Takes `config` in place of the configuration in force, at `now`,
    /// keeping the breaker's state (see [the module
    /// documentation](self#changing-the-configuration)). Without `std` there
    /// is no epoch collector, so a change needs `&mut self`.
    #[cfg(not(feature = "std"))]
    pub fn set_config(&mut self, config: BreakerConfig, now: Timestamp) {
        let relayout = self.relayout(now);
        let carried = self.era.set(config, relayout);
        self.emit(EventKind::CONFIG_CHANGED, now, [1, carried]);
    }

    /// Replaces the configuration with what `f` makes of the one in force,
    /// like [`set_config`](Self::set_config).
    ///
    /// # Errors
    ///
    /// The error `f` returns; the configuration in force stays.
    #[cfg(not(feature = "std"))]
    pub fn update_config<E>(
        &mut self,
        f: impl FnOnce(&BreakerConfig) -> Result<BreakerConfig, E>,
        now: Timestamp,
    ) -> Result<(), E> {
        let config = f(&self.config())?;
        self.set_config(config, now);
        Ok(())
    }

    /// What a configuration change does to the window: nothing when its
    /// layout stays; else a new window, into which the current generation's
    /// calls that fit are carried (with their number).
    fn relayout(
        &self,
        now: Timestamp,
    ) -> impl FnMut(&BreakerConfig, &CallWindow, &BreakerConfig) -> Option<(CallWindow, u64)> + use<S>
    {
        let generation = self.load().generation();
        move |old, window, new| {
            if new.window.spec == old.window.spec {
                return None;
            }
            let (fresh, counts) = window.carried(&new.window, generation, now);
            Some((fresh, counts.calls))
        }
    }

    /// Runs `f` on the configuration in force and the window it counts in.
    #[inline(always)]
    fn with_era<R>(&self, f: impl FnOnce(&BreakerConfig, &CallWindow) -> R) -> R {
        self.era.with(f)
    }

    #[inline]
    fn load(&self) -> StateWord {
        // ordering: Acquire, pairs with the Release of the Opening -> Open
        // exchange so that a reader of `Open` sees its `open_until`.
        StateWord(self.core.state.load(Ordering::Acquire))
    }

    #[inline]
    fn exchange(&self, current: StateWord, new: StateWord) -> Result<(), StateWord> {
        // ordering: AcqRel on success (publishes what was written before a
        // transition, sees what the previous one published); Acquire on failure
        // because the caller re-decides from the returned word.
        self.core
            .state
            .compare_exchange(current.0, new.0, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(StateWord)
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        BreakerState::from_kind(self.load().kind())
    }

    /// The current generation.
    pub fn generation(&self) -> u32 {
        self.load().generation()
    }

    /// Scouts admitted and not yet reported or released (of any open
    /// period): each one still out doubles the interval before the next
    /// scout, up to [`MAX_SCOUT_DOUBLINGS`] times. One load.
    pub fn scouts_in_flight(&self) -> u32 {
        // ordering: Relaxed; a count read as a hint.
        let out = self.core.scouts.load(Ordering::Relaxed);
        u32::try_from(out).unwrap_or(u32::MAX)
    }

    /// The wait before the next scout, for an interval of `every`
    /// nanoseconds: doubled for each scout still out, at most
    /// [`MAX_SCOUT_DOUBLINGS`] times, saturating.
    #[inline]
    fn scout_wait(&self, every: u64) -> u64 {
        // ordering: Relaxed; see `scouts_in_flight`.
        let out = self.core.scouts.load(Ordering::Relaxed);
        // At most `MAX_SCOUT_DOUBLINGS` (2): the cast cannot truncate.
        let out = out.min(u64::from(MAX_SCOUT_DOUBLINGS)) as u32;
        if every.leading_zeros() >= out {
            every << out
        } else {
            u64::MAX
        }
    }

    /// A scout permit ended (reported or released): one fewer out. Every
    /// scout permit ends exactly once, on the breaker that issued it (the
    /// `RawPermit` contract), so the count never goes below zero; a permit
    /// handed to another breaker would leave it off, which costs at most
    /// the longest wait ([`MAX_SCOUT_DOUBLINGS`]) between scouts.
    #[cold]
    #[inline(never)]
    fn scout_ended(&self) {
        // ordering: Relaxed; a count read as a hint, no other memory is
        // published through it. (A plain decrement: a saturating loop cost
        // the thumbv7em breaker 200 bytes.)
        self.core.scouts.fetch_sub(1, Ordering::Relaxed);
    }

    /// Asks to make a call at `now`. The returned [`Permit`] reports the
    /// outcome (or releases on drop).
    #[inline]
    pub fn try_acquire(&self, now: Timestamp) -> Result<Permit<'_, S>, Rejected> {
        self.try_acquire_raw(now).map(|raw| Permit {
            breaker: self,
            raw: Some(raw),
        })
    }

    /// Whether [`try_acquire`](Self::try_acquire) at `now` would admit a
    /// call, without admitting one: the same `Ok` or the same [`Rejected`]
    /// (reason and retry-after) that it would return at this instant, but
    /// nothing changes — no transition (an open breaker whose time is up
    /// stays open until a real admission), no half-open probe taken, no
    /// event. Another thread may change the answer right after.
    ///
    /// ```
    /// use core::time::Duration;
    /// use tenlives_engine::breaker::{BreakerConfig, BreakerState, CircuitBreaker, RejectReason};
    /// use tenlives_engine::time::Timestamp;
    ///
    /// let breaker = CircuitBreaker::new(
    ///     BreakerConfig::builder()
    ///         .without_failure_rate()
    ///         .consecutive_failures(1)
    ///         .open_duration(Duration::from_secs(1))
    ///         .half_open_probes(1)
    ///         .build()?,
    /// );
    /// let t0 = Timestamp::ZERO;
    /// breaker.try_acquire(t0).expect("closed").failure(t0);
    /// let rejected = breaker.would_admit(t0).unwrap_err();
    /// assert_eq!(rejected.reason(), RejectReason::Open);
    ///
    /// // Time is up: a probe would be admitted, but asking takes none.
    /// let t1 = t0.saturating_add(Duration::from_secs(1));
    /// assert!(breaker.would_admit(t1).is_ok());
    /// assert!(breaker.would_admit(t1).is_ok());
    /// assert_eq!(breaker.state(), BreakerState::Open);
    /// let probe = breaker.try_acquire(t1).expect("the probe");
    /// assert_eq!(breaker.would_admit(t1).unwrap_err().reason(), RejectReason::HalfOpenFull);
    /// # drop(probe);
    /// # Ok::<(), tenlives_engine::ConfigError>(())
    /// ```
    pub fn would_admit(&self, now: Timestamp) -> Result<(), Rejected> {
        let s = self.load();
        let (reason, retry_after) = match s.kind() {
            KIND_CLOSED | KIND_DISABLED | KIND_METRICS_ONLY => return Ok(()),
            KIND_FORCED_OPEN => (RejectReason::ForcedOpen, None),
            KIND_OPENING => {
                let full = self.with_era(|cfg, _| cfg.open_ns_for(s.trips()));
                (RejectReason::Open, Some(Duration::from_nanos(full)))
            }
            KIND_OPEN | KIND_SCOUTING => {
                // ordering: Relaxed; see `try_acquire_raw`.
                let until = self.core.open_until.load(Ordering::Relaxed);
                if now.as_nanos() >= until {
                    let every = if s.kind() == KIND_SCOUTING {
                        self.with_era(|cfg, _| cfg.probe_every_ns)
                            .map(|e| self.scout_wait(e))
                    } else {
                        None
                    };
                    if every.is_some_and(|e| now.as_nanos().saturating_add(e) <= until) {
                        // See `scout`: the last deadline is taken.
                        (RejectReason::Open, Some(Duration::ZERO))
                    } else {
                        return Ok(());
                    }
                } else {
                    let left = Duration::from_nanos(until - now.as_nanos());
                    (RejectReason::Open, Some(left))
                }
            }
            _ => {
                // KIND_HALF_OPEN
                if s.payload() < self.with_era(|cfg, _| cfg.probes) {
                    return Ok(());
                }
                (RejectReason::HalfOpenFull, None)
            }
        };
        Err(Rejected {
            reason,
            retry_after,
        })
    }

    /// Like [`try_acquire`](Self::try_acquire), but returns the low-level
    /// token that does not borrow the breaker.
    // Always inlined: with a real sink the rejection branches grow, and an
    // out-of-line call returning the permit through memory cost the closed
    // success path 9 ns (a store-forwarding stall) in the events bench.
    #[inline(always)]
    pub fn try_acquire_raw(&self, now: Timestamp) -> Result<RawPermit, Rejected> {
        self.acquire_from(self.load(), now)
    }

    /// [`try_acquire_raw`](Self::try_acquire_raw) from the state word `s`
    /// just loaded.
    #[inline(always)]
    fn acquire_from(&self, mut s: StateWord, now: Timestamp) -> Result<RawPermit, Rejected> {
        loop {
            let kind = match s.kind() {
                KIND_CLOSED => PermitKind::Closed,
                KIND_DISABLED => PermitKind::Passthrough,
                KIND_METRICS_ONLY => PermitKind::Metrics,
                KIND_FORCED_OPEN => return Err(self.reject(RejectReason::ForcedOpen, None, now)),
                KIND_OPENING => {
                    let full = self.with_era(|cfg, _| cfg.open_ns_for(s.trips()));
                    let full = Some(Duration::from_nanos(full));
                    return Err(self.reject(RejectReason::Open, full, now));
                }
                KIND_OPEN => {
                    // ordering: Relaxed; the Acquire load of `Open` made the
                    // tripping thread's store visible.
                    let until = self.core.open_until.load(Ordering::Relaxed);
                    if now.as_nanos() < until {
                        let left = Duration::from_nanos(until - now.as_nanos());
                        return Err(self.reject(RejectReason::Open, Some(left), now));
                    }
                    // Scouts are decided when the breaker opens (a payload
                    // of 1): reading the configuration here instead cost
                    // every admission, closed and forced open too, 3 to 13
                    // instructions in callgrind, in registers spilled.
                    let half_open = s.next(KIND_HALF_OPEN, s.trips(), 1);
                    match self.exchange(s, half_open) {
                        Ok(()) => {
                            let probes = self.with_era(|cfg, _| u64::from(cfg.probes));
                            self.emit(
                                EventKind::BREAKER_HALF_OPENED,
                                now,
                                [u64::from(s.trips()), probes],
                            );
                            return Ok(self.permit(half_open, PermitKind::Probe, now));
                        }
                        Err(actual) => {
                            s = actual;
                            continue;
                        }
                    }
                }
                _ => {
                    // KIND_HALF_OPEN, or KIND_SCOUTING (checked here rather
                    // than in an arm of its own: either way of reading it
                    // first cost every admission instructions in callgrind)
                    if s.kind() == KIND_SCOUTING {
                        return self.admit_scouting(now);
                    }
                    let admitted = s.payload();
                    if admitted >= self.with_era(|cfg, _| cfg.probes) {
                        return Err(self.reject(RejectReason::HalfOpenFull, None, now));
                    }
                    match self.exchange(s, s.with_payload(admitted + 1)) {
                        Ok(()) => return Ok(self.permit(s, PermitKind::Probe, now)),
                        Err(actual) => {
                            s = actual;
                            spin_hint();
                            continue;
                        }
                    }
                }
            };
            return Ok(self.permit(s, kind, now));
        }
    }

    /// Like [`try_acquire`](Self::try_acquire), reading the time through
    /// `now` only where the decision needs it, at most once: a closed (or
    /// metrics-only) breaker without a slow-call rule and a disabled one
    /// admit without it; an open, half-open or forced-open breaker reads
    /// it (its open period, its events). With a clock read costing more
    /// than the decision (`docs/clocks-and-timers.md`), this is how a
    /// caller holding a clock should ask.
    ///
    /// A permit admitted without reading the time has
    /// [`Timestamp::MAX`] as its [`admitted_at`](RawPermit::admitted_at);
    /// should the configuration gain a slow-call rule before its outcome
    /// is recorded, the call does not count as slow (its duration is
    /// unknown).
    ///
    /// ```
    /// use core::cell::Cell;
    /// use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker};
    /// use tenlives_engine::time::Timestamp;
    ///
    /// let breaker = CircuitBreaker::new(
    ///     BreakerConfig::builder()
    ///         .without_failure_rate()
    ///         .consecutive_failures(5)
    ///         .build()?,
    /// );
    /// let reads = Cell::new(0);
    /// let clock = || {
    ///     reads.set(reads.get() + 1);
    ///     Timestamp::ZERO
    /// };
    /// let permit = breaker.try_acquire_with(clock).expect("closed");
    /// assert_eq!(reads.get(), 0); // closed, no slow-call rule: no reading
    /// # drop(permit);
    /// # Ok::<(), tenlives_engine::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](Self::try_acquire).
    #[inline]
    pub fn try_acquire_with(
        &self,
        now: impl FnOnce() -> Timestamp,
    ) -> Result<Permit<'_, S>, Rejected> {
        self.try_acquire_raw_with(now).map(|raw| Permit {
            breaker: self,
            raw: Some(raw),
        })
    }

    /// [`try_acquire_with`](Self::try_acquire_with) returning the
    /// low-level token, as [`try_acquire_raw`](Self::try_acquire_raw).
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](Self::try_acquire).
    #[inline(always)]
    pub fn try_acquire_raw_with(
        &self,
        now: impl FnOnce() -> Timestamp,
    ) -> Result<RawPermit, Rejected> {
        let s = self.load();
        let kind = match s.kind() {
            KIND_CLOSED => PermitKind::Closed,
            KIND_METRICS_ONLY => PermitKind::Metrics,
            KIND_DISABLED => PermitKind::Passthrough,
            // Open, opening, half-open, scouting or forced open: the
            // decision (or its event) needs the time. (This match costs
            // those refusals 7 instructions in callgrind, 72 -> 79 on the
            // forced-open row; a bit-set test instead cost them 5 and the
            // closed admissions 6 more: the closed path is the hot one.)
            _ => return self.acquire_from(s, now()),
        };
        // The same permit `try_acquire_raw` gives in these states (they take
        // no transition), with the admission time only where a slow-call
        // rule will measure the call from it.
        let timed =
            kind != PermitKind::Passthrough && self.with_era(|cfg, _| cfg.slow_rate_ppm.is_some());
        let at = if timed { now() } else { Timestamp::MAX };
        Ok(self.permit(s, kind, at))
    }

    #[inline]
    fn permit(&self, s: StateWord, kind: PermitKind, now: Timestamp) -> RawPermit {
        RawPermit {
            generation: s.generation(),
            kind,
            admitted_at: now,
        }
    }

    /// Reports the outcome of the call `permit` admitted; `now` is when it
    /// completed. A permit from an older generation changes nothing.
    #[inline]
    pub fn record(&self, permit: RawPermit, outcome: Outcome, now: Timestamp) {
        let admitted = permit.admitted_at.as_nanos();
        self.record_timed(permit, outcome, now, || {
            now.as_nanos().saturating_sub(admitted)
        });
    }

    /// Like [`record`](Self::record), with the call's duration as the caller
    /// measured it: the slow-call rule judges `elapsed` instead of `now`
    /// minus the admission time. See [`Permit::record_elapsed`].
    #[inline]
    pub fn record_elapsed(
        &self,
        permit: RawPermit,
        outcome: Outcome,
        elapsed: Duration,
        now: Timestamp,
    ) {
        self.record_timed(permit, outcome, now, || {
            crate::time::saturating_nanos(elapsed)
        });
    }

    /// `elapsed` gives the call's duration in nanoseconds; it is called only
    /// when a slow-call rule needs it (computed eagerly, it cost the
    /// consecutive-failures breaker's success 8 instructions in callgrind).
    #[inline]
    fn record_timed(
        &self,
        permit: RawPermit,
        outcome: Outcome,
        now: Timestamp,
        elapsed: impl FnOnce() -> u64,
    ) {
        let failed = match outcome {
            Outcome::Success => false,
            Outcome::Failure => true,
            Outcome::Ignored => return self.release(permit),
        };
        if permit.kind == PermitKind::Passthrough {
            return;
        }
        self.with_era(|cfg, window| {
            let slow = cfg.is_slow(elapsed);
            match permit.kind {
                PermitKind::Closed => {
                    self.record_closed(cfg, window, permit.generation, failed, slow, now);
                }
                // One arm for both: a sixth arm here cost the closed
                // success path instructions in callgrind.
                PermitKind::Probe | PermitKind::Scout => {
                    let scout = permit.kind == PermitKind::Scout;
                    self.record_probe(cfg, permit.generation, scout, failed, slow, now);
                }
                PermitKind::Metrics => {
                    if self.load().generation() == permit.generation {
                        window.record(permit.generation, now, failed, slow);
                    }
                }
                PermitKind::Passthrough => {}
            }
        });
    }

    /// Whether [`record`](Self::record) of `outcome` for `permit` reads its
    /// `now`, so that an adapter can skip the clock when it would not: a
    /// success of a call admitted closed reads it only for a slow-call rule
    /// or a time-based rate window; a failure (which may open the breaker,
    /// from `now`), a probe's or a metrics-only call's outcome always do; an
    /// ignored outcome and a disabled breaker's permit never do. When this
    /// says `false`, `record` may be given any `now`.
    #[inline]
    pub fn record_needs_time(&self, permit: &RawPermit, outcome: Outcome) -> bool {
        match (outcome, permit.kind) {
            (Outcome::Ignored, _) | (_, PermitKind::Passthrough) => false,
            (Outcome::Success, PermitKind::Closed) => {
                self.with_era(|cfg, _| cfg.success_needs_time())
            }
            _ => true,
        }
    }

    /// Gives a permit back unreported: it counts as neither success nor
    /// failure, and frees its half-open probe slot.
    pub fn release(&self, permit: RawPermit) {
        if permit.kind != PermitKind::Probe {
            if permit.kind == PermitKind::Scout {
                self.scout_ended();
            }
            return;
        }
        let mut s = self.load();
        while s.generation() == permit.generation && s.kind() == KIND_HALF_OPEN && s.payload() > 0 {
            match self.exchange(s, s.with_payload(s.payload() - 1)) {
                Ok(()) => return,
                Err(actual) => s = actual,
            }
        }
    }

    #[inline]
    fn record_closed(
        &self,
        cfg: &BreakerConfig,
        window: &CallWindow,
        generation: u32,
        failed: bool,
        slow: bool,
        now: Timestamp,
    ) {
        let s = self.load();
        if s.generation() != generation {
            return; // late: the breaker moved on since this call was admitted
        }
        // Only the rate rules need the window (and its bucket arithmetic).
        let pos = cfg
            .has_rate_rule()
            .then(|| window.record(generation, now, failed, slow));
        if !failed && !slow {
            if cfg.consecutive_failures.is_some() && s.payload() != 0 {
                self.reset_consecutive(generation);
            }
            return;
        }
        self.judge_closed(cfg, window, generation, failed, pos, now);
    }

    /// A success ends a run of failures. Only writes when there is a run.
    #[inline]
    fn reset_consecutive(&self, generation: u32) {
        let mut s = self.load();
        while s.generation() == generation && s.kind() == KIND_CLOSED && s.payload() != 0 {
            match self.exchange(s, s.with_payload(0)) {
                Ok(()) => return,
                Err(actual) => s = actual,
            }
        }
    }

    /// After a failure or a slow call: does a rule now say open?
    #[cold]
    fn judge_closed(
        &self,
        cfg: &BreakerConfig,
        window: &CallWindow,
        generation: u32,
        failed: bool,
        pos: Option<Recorded>,
        now: Timestamp,
    ) {
        let mut s = self.load();
        if s.generation() != generation || s.kind() != KIND_CLOSED {
            return;
        }
        let rate_trip = pos
            .and_then(|pos| window.judged(generation, pos))
            .and_then(|c| cfg.rate_trip(c.calls, c.failures, c.slow));
        while s.generation() == generation && s.kind() == KIND_CLOSED {
            let run = if failed {
                s.payload().saturating_add(1)
            } else {
                0
            };
            let run_trip = cfg.consecutive_failures.is_some_and(|limit| run >= limit);
            let reason = if run_trip {
                Some(TripReason::ConsecutiveFailures)
            } else {
                rate_trip
            };
            let new = if reason.is_some() {
                s.next(KIND_OPENING, 1, 0)
            } else if run != s.payload() {
                s.with_payload(run)
            } else {
                return;
            };
            match self.exchange(s, new) {
                Ok(()) => {
                    if let Some(reason) = reason {
                        self.finish_opening(cfg, new, now, reason);
                    }
                    return;
                }
                Err(actual) => s = actual,
            }
        }
    }

    /// Second step of a trip: publish the deadline, then `Opening -> Open`.
    fn finish_opening(
        &self,
        cfg: &BreakerConfig,
        opening: StateWord,
        now: Timestamp,
        reason: TripReason,
    ) {
        let open_ns = cfg.open_ns_for(opening.trips());
        let until = now.as_nanos().saturating_add(open_ns);
        // ordering: Release; published to admissions by the Release of the
        // exchange below, and to a scout's compare-exchange (Acquire) that
        // reads it directly, which must then see at least this generation
        // (see `scout`).
        self.core.open_until.store(until, Ordering::Release);
        // Whether this open period scouts is decided now, in its kind.
        let kind = if cfg.probe_every_ns.is_some() {
            KIND_SCOUTING
        } else {
            KIND_OPEN
        };
        let open = StateWord::new(kind, opening.trips(), 0, opening.generation());
        // A failure means an operator moved the breaker meanwhile; theirs wins.
        let _ = self.exchange(opening, open);
        let what = reason as u64 | (u64::from(opening.trips()) << 32);
        self.emit(EventKind::BREAKER_OPENED, now, [what, open_ns]);
    }

    /// An open period with scouts is over at `now` (word `s`, deadline
    /// `until`): a scout, or, when the configuration no longer has scouts
    /// (changed since the breaker opened), the `Open -> HalfOpen`
    /// transition that takes the first probe. When that transition loses a
    /// race, the admission starts over from the word it finds.
    #[cold]
    #[inline(never)]
    fn admit_scouting(&self, now: Timestamp) -> Result<RawPermit, Rejected> {
        // Loaded again here, not passed: one value fewer live across the
        // call kept the forced-open rejection at its instruction count.
        let s = self.load();
        if s.kind() != KIND_SCOUTING {
            return self.try_acquire_again(now);
        }
        // ordering: Relaxed; the Acquire load of the open word made the
        // tripping thread's store visible.
        let until = self.core.open_until.load(Ordering::Relaxed);
        if now.as_nanos() < until {
            let left = Duration::from_nanos(until - now.as_nanos());
            return Err(self.reject(RejectReason::Open, Some(left), now));
        }
        if let Some(every) = self.with_era(|cfg, _| cfg.probe_every_ns) {
            return self.scout(s, until, every, now);
        }
        let half_open = s.next(KIND_HALF_OPEN, s.trips(), 1);
        if self.exchange(s, half_open).is_err() {
            return self.try_acquire_again(now);
        }
        let probes = self.with_era(|cfg, _| u64::from(cfg.probes));
        self.emit(
            EventKind::BREAKER_HALF_OPENED,
            now,
            [u64::from(s.trips()), probes],
        );
        Ok(self.permit(half_open, PermitKind::Probe, now))
    }

    /// `try_acquire_raw` from the start, out of line: the scouting path's
    /// way back when the word moved on. One call site for both of its
    /// returns, so a firmware carries one more copy of the admission, not
    /// two (`benches/size-gate.py`: 18 476 bytes with two).
    #[cold]
    #[inline(never)]
    fn try_acquire_again(&self, now: Timestamp) -> Result<RawPermit, Rejected> {
        self.try_acquire_raw(now)
    }

    /// An open breaker whose deadline `until` has passed, with scouts every
    /// `every` nanoseconds: the first admission to move the deadline on takes
    /// the scout; the breaker stays open.
    #[inline]
    fn scout(
        &self,
        s: StateWord,
        until: u64,
        every: u64,
        now: Timestamp,
    ) -> Result<RawPermit, Rejected> {
        // Each scout still out doubles the wait for the next one: a stalled
        // dependency, whose scouts hang until their timeout, receives fewer;
        // one that refuses at once (its scouts answer before the next is
        // due) still gets one per interval.
        let every = self.scout_wait(every);
        let next = now.as_nanos().saturating_add(every);
        if next <= until {
            // Time has reached `Timestamp::MAX` and a scout already took the
            // last deadline: no interval is left for another.
            return Err(self.reject(RejectReason::Open, Some(Duration::ZERO), now));
        }
        // ordering: AcqRel; Release publishes the new deadline to the next
        // scout's compare-exchange, Acquire synchronises with whoever wrote
        // `until` (a trip's Release store or an earlier scout), so that the
        // confirmation below sees that writer's generation or a later one.
        // Acquire on failure: the deadline read is another scout's.
        if let Err(taken) =
            self.core
                .open_until
                .compare_exchange(until, next, Ordering::AcqRel, Ordering::Acquire)
        {
            let left = Duration::from_nanos(taken.saturating_sub(now.as_nanos()));
            return Err(self.reject(RejectReason::Open, Some(left), now));
        }
        // The deadline moved was this generation's only if the breaker is
        // still open in it: a word never comes back once its generation
        // passed, so the same word now means open throughout, and every
        // writer of a later generation's deadline would have changed it
        // first. A same-value exchange makes this the admission's
        // linearisation point. If it fails, the slot taken belonged to a
        // later period (or to none): that period's next scout comes one
        // interval later, and this call is refused.
        match self.exchange(s, s) {
            Ok(()) => {
                // ordering: Relaxed; see `scouts_in_flight`.
                self.core.scouts.fetch_add(1, Ordering::Relaxed);
                Ok(self.permit(s, PermitKind::Scout, now))
            }
            Err(_) => Err(self.reject(RejectReason::Open, Some(Duration::from_nanos(every)), now)),
        }
    }

    /// A scout of `generation` succeeded: if the breaker is still open in
    /// it, the open period ends, closing the breaker when one probe is the
    /// whole test and half-opening it otherwise. A slow success that the
    /// test would fail counts as a failed scout: nothing.
    #[cold]
    fn record_scout(&self, cfg: &BreakerConfig, generation: u32, slow: bool, now: Timestamp) {
        let close = match cfg.probe_verdict(1, 0, u32::from(slow), false) {
            Verdict::Close => true,
            Verdict::Pending => false,
            Verdict::Reopen => return,
        };
        let s = self.load();
        if s.generation() != generation || s.kind() != KIND_SCOUTING {
            return;
        }
        let new = if close {
            s.next(KIND_CLOSED, 0, 0)
        } else {
            s.next(KIND_HALF_OPEN, s.trips(), 0)
        };
        // Within an open generation only this transition (or an operator's)
        // changes the word, so one attempt decides.
        if self.exchange(s, new).is_ok() {
            if close {
                self.emit(EventKind::BREAKER_CLOSED, now, [1, 0]);
            } else {
                self.emit(
                    EventKind::BREAKER_HALF_OPENED,
                    now,
                    [u64::from(s.trips()), u64::from(cfg.probes)],
                );
            }
        }
    }

    #[cold]
    fn record_probe(
        &self,
        cfg: &BreakerConfig,
        generation: u32,
        scout: bool,
        failed: bool,
        slow: bool,
        now: Timestamp,
    ) {
        if scout {
            self.scout_ended();
            if !failed {
                self.record_scout(cfg, generation, slow, now);
            }
            return;
        }
        // ordering: AcqRel/Acquire like the state word: the reporter that
        // completes the test must see every earlier report.
        let mut w = ProbeWord(self.core.probes.load(Ordering::Acquire));
        let report = loop {
            if is_newer(w.generation(), generation) {
                return; // a later half-open period: this probe is late
            }
            let base = if w.generation() == generation {
                w
            } else {
                ProbeWord::fresh(generation)
            };
            let new = base.add(failed, slow);
            match self.core.probes.compare_exchange_weak(
                w.0,
                new.0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break new,
                Err(actual) => {
                    w = ProbeWord(actual);
                    spin_hint();
                }
            }
        };
        let verdict = cfg.probe_verdict(report.succeeded(), report.failed(), report.slow(), failed);
        if verdict == Verdict::Pending {
            return;
        }
        let mut s = self.load();
        while s.generation() == generation && s.kind() == KIND_HALF_OPEN {
            let new = match verdict {
                Verdict::Close => s.next(KIND_CLOSED, 0, 0),
                _ => s.next(KIND_OPENING, (s.trips() + 1).min(MAX_TRIPS), 0),
            };
            match self.exchange(s, new) {
                Ok(()) => {
                    if new.kind() == KIND_OPENING {
                        self.finish_opening(cfg, new, now, TripReason::FailedTest);
                    } else {
                        let (ok, bad) = (report.succeeded().into(), report.failed().into());
                        self.emit(EventKind::BREAKER_CLOSED, now, [ok, bad]);
                    }
                    return;
                }
                Err(actual) => s = actual,
            }
        }
    }

    fn force(&self, kind: u64, now: Timestamp) {
        let mut s = self.load();
        loop {
            match self.exchange(s, s.next(kind, 0, 0)) {
                Ok(()) => break,
                Err(actual) => s = actual,
            }
        }
        self.emit(
            EventKind::BREAKER_FORCED,
            now,
            [BreakerState::from_kind(kind).code(), 0],
        );
    }

    /// Holds the breaker open (rejecting with [`RejectReason::ForcedOpen`])
    /// until another explicit call. `now` only timestamps the event.
    pub fn force_open(&self, now: Timestamp) {
        self.force(KIND_FORCED_OPEN, now);
    }

    /// Lets every call through without measuring, until another explicit call.
    pub fn disable(&self, now: Timestamp) {
        self.force(KIND_DISABLED, now);
    }

    /// Lets every call through and measures it, never tripping, until another
    /// explicit call.
    pub fn metrics_only(&self, now: Timestamp) {
        self.force(KIND_METRICS_ONLY, now);
    }

    /// Closes the breaker with an empty window and no trip history.
    pub fn reset(&self, now: Timestamp) {
        self.force(KIND_CLOSED, now);
    }

    fn probe_reports(&self, generation: u32) -> u32 {
        // ordering: Acquire, like the reporters' exchange.
        let w = ProbeWord(self.core.probes.load(Ordering::Acquire));
        if w.generation() == generation {
            w.succeeded() + w.failed()
        } else {
            0
        }
    }

    /// A point-in-time view for metrics. Reads every stripe: not for the
    /// request path.
    pub fn snapshot(&self, now: Timestamp) -> Snapshot {
        let s = self.load();
        let kind = s.kind();
        let (window, opening_ns) = self.with_era(|cfg, window| {
            let counts = if kind == KIND_CLOSED || kind == KIND_METRICS_ONLY {
                window.latest(s.generation(), now)
            } else {
                WindowCounts::default()
            };
            (counts, cfg.open_ns_for(s.trips()))
        });
        let retry_after = match kind {
            KIND_OPENING => Some(opening_ns),
            // ordering: Relaxed; see `try_acquire_raw`.
            KIND_OPEN | KIND_SCOUTING => Some(
                self.core
                    .open_until
                    .load(Ordering::Relaxed)
                    .saturating_sub(now.as_nanos()),
            ),
            _ => None,
        };
        Snapshot {
            state: BreakerState::from_kind(kind),
            generation: s.generation(),
            window,
            consecutive_failures: if kind == KIND_CLOSED { s.payload() } else { 0 },
            probes_admitted: if kind == KIND_HALF_OPEN {
                s.payload()
            } else {
                0
            },
            probes_reported: if kind == KIND_HALF_OPEN {
                self.probe_reports(s.generation())
            } else {
                0
            },
            trips: s.trips(),
            retry_after: retry_after.map(Duration::from_nanos),
        }
    }
}

#[cfg(all(test, not(tenlives_loom)))]
mod tests;
