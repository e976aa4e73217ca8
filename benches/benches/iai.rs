//! Instruction counts of tenlives' hot operations beside its peers, under
//! callgrind (iai-callgrind library benchmarks), for the regression gate
//! `benches/iai-gate.py`.
//!
//! Each benchmark is one operation, once. Its subject is built and warmed up
//! in a setup function (whose instructions are not counted): a few operations
//! at the start time, so that the measured one takes the same path as in a
//! long run (a window's bucket already open, a ring or queue already wrapped
//! and overwriting). The subject is passed in boxed and handed back, so that
//! neither a copy of it nor its drop is counted either. What remains is the
//! operation, a `black_box` on its time argument, and a few instructions of
//! call and return.
//!
//! Rows whose operation takes a time measure it the way the adapters call it:
//! the time is read from the adapters' default clock, the process's
//! `TscClock` (quanta's TSC, clamped), once per operation, inside the
//! counted region; governor's rows likewise read its default clock (quanta's
//! `Clock`), failsafe its own `Instant::now()`. The rows ending in
//! `_no_clock_read` (tenlives, given `now` for free: a `black_box` of a
//! constant) and `_fake_clock` (governor on its `FakeRelativeClock`, one
//! relaxed load) are the secondary rows: what the decisions alone cost.
//! Under callgrind the TSC read is counted as valgrind emulates `rdtsc`
//! (a few instructions) plus quanta's scaling and the clamp.
//!
//! Benchmarks named `tenlives_*` are gated: the gate fails when one of their
//! counts rises more than 5 % above `benches/iai-baselines.json`. The others
//! are peers and a floor, reported for the ratios only:
//!
//! - `tenlives_breaker_time_window`: a closed breaker with the default
//!   configuration (a failure rate over a time window): admitted with
//!   `try_acquire_raw_with(clock)` (no reading: closed, no slow-call rule)
//!   and recorded a success at its end (one reading: the window's bucket).
//!   Its `_no_clock_read` twin: `try_acquire(now)` + `Permit::success(now)`.
//! - `tenlives_breaker_consecutive`: the same with the consecutive-failures
//!   rule alone (no reading at all).
//! - `tenlives_breaker_rejection`: `try_acquire_raw_with(clock)` refused by a
//!   force-opened breaker (one reading).
//! - `tenlives_bulkhead`: `Bulkhead::try_acquire()` + drop of the permit, limit
//!   1000.
//! - `tenlives_event_push`: `EventRing::push` into a full ring of 1024.
//! - `tenlives_lane_push`: `LaneRing::push` into a full laned ring of 2 lanes
//!   of 512 (the thread's own lane free, as with one producer per lane).
//! - `tenlives_lane_producer_push`: `LaneProducer::push` into the same ring,
//!   through a producer that owns the thread's lane.
//! - `tenlives_throttle`: `Throttle::try_admit(now)` +
//!   `ThrottleTicket::accepted(now)`, default configuration.
//! - `tenlives_retry_budget`: `RetryBudget::deposit(now)` +
//!   `try_withdraw(now)`, default configuration.
//! - `tenlives_rate_check`: `RateLimiter::check(now)`, admitted (10^9 tokens
//!   a second, a burst of 2^32 - 1).
//! - `tenlives_rate_check_n`: `RateLimiter::check_n(8, now)`, admitted, same
//!   quota.
//! - `tenlives_rate_check_uneven_no_clock_read`: `RateLimiter::check(now)`,
//!   admitted, at 999 999 937 tokens a second (an interval that is not a
//!   whole number of nanoseconds, so the 128-bit state; the rows above run
//!   on the 64-bit one). No peer row: governor has no such path.
//! - `tenlives_rate_check_fractional_no_clock_read`: the same at
//!   750 000 000 tokens a second (an interval of 4/3 ns: the scaled 64-bit
//!   state, `TAT·3`).
//! - `tenlives_keyed_check_1k`: `KeyedRateLimiter::check_key(&key, now)` for
//!   a `u64` key present in a full table of 1 000 keys (capacity 1 000),
//!   same quota per key. Both keyed tables hash with foldhash under a fixed
//!   seed, so that the key's place in its bucket, and with it the count, is
//!   the same on every run.
//! - `tenlives_keyed_check_1k_fractional_no_clock_read`,
//!   `tenlives_keyed_check_1k_uneven_no_clock_read`: the same at 750 000 000
//!   and at 999 999 937 tokens a second per key (a table of scaled 64-bit
//!   words and one of 128-bit states).
//! - each tenlives row above that takes a time has a `_no_clock_read` twin.
//! - `failsafe_breaker_default`, `failsafe_breaker_consecutive`: failsafe 1.3's
//!   `call(|| Ok(()))` with its default configuration and with its
//!   consecutive-failures policy (it reads its own clock).
//! - `tokio_semaphore`: `Semaphore::try_acquire()` + drop, 1000 permits.
//! - `crossbeam_array_queue_force_push`: `ArrayQueue::force_push` of the same
//!   event into a full queue of 1024.
//! - `governor_direct_check`, `governor_check_n`: governor 0.10's
//!   `RateLimiter::check()` and `check_n(8)` with the same quota, on its
//!   default clock (quanta's); `..._fake_clock`: on its `FakeRelativeClock`
//!   (its cheapest clock, one relaxed load: the peer of a `now` passed in).
//! - `governor_keyed_check_1k`: governor's dashmap-keyed `check_key(&key)`
//!   for a key present among 1 000, on its default clock, with the hasher
//!   tenlives uses (foldhash, same fixed seed), so that the hash function is
//!   not what is compared; `..._fake_clock`: on `FakeRelativeClock`.
//! - `floor_fetch_add`: one `fetch_add(1, Relaxed)` on an `AtomicU64`.
//! - `tenlives_layer_concurrency_limit`: one request through
//!   `ConcurrencyLimitLayer` (limit 1000) over a service whose future is
//!   ready at once: `call` + one poll to the answer + drop of the future.
//!   Built with the benches' feature `tracing` (tenlives-tokio's spans on,
//!   no subscriber installed) the bench runs this row alone, and
//!   `python3 benches/iai-gate.py --features tracing` gates it against its
//!   own baseline, `tenlives_layer_concurrency_limit [tracing]`: the spans'
//!   cost with nobody listening is bounded too (`docs/telemetry.md` has
//!   both counts).

// With `tracing` the bench runs the layer rows only: the engine rows and
// the peers' setups are compiled but not registered.
#![cfg_attr(feature = "tracing", allow(dead_code, unused_imports))]

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use failsafe::CircuitBreaker as _;
use failsafe::failure_policy::FailurePolicy;
use governor::clock::{DefaultClock, FakeRelativeClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use iai_callgrind::main;
use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker, Outcome};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::events::{
    Event, EventKind, EventRing, LaneProducer, LaneRing, LaneSlot, NoSink, Slot,
};
use tenlives_engine::rate::{KeyedConfig, KeyedRateLimiter, Quota, RateLimiter};
use tenlives_engine::retry::{RetryBudget, RetryBudgetConfig};
use tenlives_engine::throttle::{Throttle, ThrottleConfig};
use tenlives_engine::time::{Clock, Timestamp, TscClock};
use tokio::sync::Semaphore;

/// Where the timestamps start: an hour after the clock's origin, as a
/// monotonic clock of a running process would read. Setups warm up at this
/// time; the measured operation runs 1 ns later.
const START_NS: u64 = 3_600_000_000_000;

/// How many operations a setup runs before the measured one.
const WARM_UP: u64 = 8;

/// How many events the ring and the queue hold.
const CAPACITY: usize = 1024;

/// An event ring on the heap, as an application would make one.
type Ring = EventRing<Box<[Slot]>>;

/// A laned event ring on the heap.
type Lanes = LaneRing<Box<[LaneSlot]>>;

/// The admitting quota: tokens a second.
const RATE: u32 = 1_000_000_000;

/// The admitting quota: the burst.
const BURST: u32 = u32::MAX;

/// Tokens per `check_n`.
const N: u32 = 8;

/// Keys in the keyed tables.
const KEYS: u64 = 1_000;

/// The key the keyed benchmarks check: present, in the middle of the table.
const KEY: u64 = 500;

/// The keyed tables' hash seed: fixed, so that counts do not depend on it.
const HASH_SEED: u64 = 0x7e41_1fe5;

/// The keyed tables' hasher.
type Hasher = foldhash::fast::FixedState;

/// tenlives' keyed limiter with the fixed-seed hasher.
type Keyed = KeyedRateLimiter<u64, Hasher>;

/// governor's middleware on its fake clock.
type FakeMiddleware = NoOpMiddleware<<FakeRelativeClock as governor::clock::Clock>::Instant>;

/// governor's direct limiter on its fake clock.
type GovernorDirect =
    governor::RateLimiter<NotKeyed, InMemoryState, FakeRelativeClock, FakeMiddleware>;

/// governor's dashmap-keyed limiter on its fake clock, hashing with foldhash.
type GovernorKeyed =
    governor::RateLimiter<u64, DashMapStateStore<u64, Hasher>, FakeRelativeClock, FakeMiddleware>;

/// The service under the layer benchmarks: answers at once.
#[derive(Clone, Copy)]
struct Ready;

impl tower::Service<u64> for Ready {
    type Response = u64;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<u64, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        std::future::ready(Ok(req))
    }
}

/// The concurrency limit layer over [`Ready`].
type LimitedService = tenlives_tokio::ConcurrencyLimitService<Ready>;

/// Calls `svc` once and polls the answer out, as the layer benchmarks
/// measure it.
#[inline(always)]
fn layer_call<S: tower::Service<u64>>(svc: &mut S) {
    use std::future::Future;
    let mut future = std::pin::pin!(svc.call(black_box(1)));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let _ = black_box(future.as_mut().poll(&mut cx).is_ready());
}

/// A concurrency-limited [`Ready`], warmed up.
fn limited_service() -> Box<LimitedService> {
    use tower::Layer;
    let bulkhead = Bulkhead::new(1000).expect("a valid limit");
    let mut svc = tenlives_tokio::ConcurrencyLimitLayer::new(bulkhead).layer(Ready);
    for _ in 0..WARM_UP {
        layer_call(&mut svc);
    }
    Box::new(svc)
}

/// governor's middleware on its default clock.
type DefaultMiddleware = NoOpMiddleware<<DefaultClock as governor::clock::Clock>::Instant>;

/// governor's direct limiter on its default clock.
type GovernorDirectDefault =
    governor::RateLimiter<NotKeyed, InMemoryState, DefaultClock, DefaultMiddleware>;

/// governor's dashmap-keyed limiter on its default clock, with foldhash.
type GovernorKeyedDefault =
    governor::RateLimiter<u64, DashMapStateStore<u64, Hasher>, DefaultClock, DefaultMiddleware>;

/// A subject with the clock the adapters read by default, made before the
/// subject's warm-up (so the warm-up's times are on it).
struct Timed<T> {
    subject: T,
    clock: TscClock,
}

impl<T> Timed<T> {
    /// The time of the measured operation: one reading, an hour in (a
    /// process that has run for a while, as the `_no_clock_read` rows'
    /// constant says: windows and buckets then have a past to roll over).
    #[inline(always)]
    fn now(&self) -> Timestamp {
        Timestamp::from_nanos(START_NS + self.clock.now().as_nanos())
    }
}

/// `warm` run at a new clock's time, then boxed with it.
fn timed<T>(warm: impl FnOnce(Timestamp) -> T) -> Box<Timed<T>> {
    let clock = TscClock::new();
    let start = Timestamp::from_nanos(START_NS + clock.now().as_nanos());
    let subject = warm(start);
    Box::new(Timed { subject, clock })
}

/// The time of the measured operation, hidden from the optimiser.
#[inline(always)]
fn now() -> Timestamp {
    Timestamp::from_nanos(black_box(START_NS + 1))
}

/// The event written by the ring and the queue.
#[inline(always)]
fn event() -> Event {
    Event::new(
        EventKind::USER,
        1,
        Timestamp::from_nanos(black_box(START_NS)),
        [0, 0],
    )
}

/// A closed breaker's call that succeeds, as the benchmarks measure it.
#[inline(always)]
fn breaker_success(b: &CircuitBreaker, now: Timestamp) {
    let permit = b.try_acquire(now).expect("a closed breaker admits");
    permit.success(now);
}

/// A closed breaker's call that succeeds, as the adapters make it: the
/// clock read at admission only where the decision needs it
/// (`try_acquire_raw_with`: not for a closed breaker without a slow-call
/// rule), and at the end only where the outcome needs the time
/// (`record_needs_time`).
#[inline(always)]
fn breaker_success_timed(t: &Timed<CircuitBreaker>) {
    let b = &t.subject;
    let permit = b
        .try_acquire_raw_with(|| t.now())
        .expect("a closed breaker admits");
    let end = if b.record_needs_time(&permit, Outcome::Success) {
        t.now()
    } else {
        Timestamp::ZERO
    };
    b.record(permit, Outcome::Success, end);
}

/// `b` warmed up with successful calls at `start`.
fn warm_breaker(b: CircuitBreaker, start: Timestamp) -> CircuitBreaker {
    for _ in 0..WARM_UP {
        breaker_success(&b, start);
    }
    b
}

/// The default configuration (failure rate, time window).
fn time_window() -> CircuitBreaker {
    CircuitBreaker::new(BreakerConfig::default())
}

/// The consecutive-failures rule alone.
fn consecutive() -> CircuitBreaker {
    CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(5)
            .open_duration(Duration::from_secs(60))
            .build()
            .expect("valid config"),
    )
}

/// A closed breaker, default configuration, warmed up at the start time.
fn breaker_time_window() -> Box<CircuitBreaker> {
    Box::new(warm_breaker(time_window(), Timestamp::from_nanos(START_NS)))
}

/// The same on the TSC.
fn breaker_time_window_timed() -> Box<Timed<CircuitBreaker>> {
    timed(|start| warm_breaker(time_window(), start))
}

/// A closed breaker, consecutive-failures rule alone.
fn breaker_consecutive() -> Box<CircuitBreaker> {
    Box::new(warm_breaker(consecutive(), Timestamp::from_nanos(START_NS)))
}

/// The same on the TSC.
fn breaker_consecutive_timed() -> Box<Timed<CircuitBreaker>> {
    timed(|start| warm_breaker(consecutive(), start))
}

/// A force-opened breaker that has already refused a few calls at `start`.
fn forced_open(start: Timestamp) -> CircuitBreaker {
    let b = CircuitBreaker::new(BreakerConfig::default());
    b.force_open(Timestamp::ZERO);
    for _ in 0..WARM_UP {
        assert!(
            b.try_acquire(start).is_err(),
            "a forced-open breaker refuses"
        );
    }
    b
}

/// A force-opened breaker, warmed up at the start time.
fn breaker_forced_open() -> Box<CircuitBreaker> {
    Box::new(forced_open(Timestamp::from_nanos(START_NS)))
}

/// The same on the TSC.
fn breaker_forced_open_timed() -> Box<Timed<CircuitBreaker>> {
    timed(forced_open)
}

/// A bulkhead of 1000 permits, a few taken and given back.
fn bulkhead() -> Box<Bulkhead> {
    let b = Bulkhead::new(1000).expect("valid limit");
    for _ in 0..WARM_UP {
        drop(b.try_acquire().expect("free permits"));
    }
    Box::new(b)
}

/// A ring of 1024 that has wrapped: every push overwrites.
fn event_ring() -> Box<Ring> {
    let ring = EventRing::with_capacity(CAPACITY).expect("valid capacity");
    for _ in 0..=CAPACITY {
        ring.push(event());
    }
    Box::new(ring)
}

/// A laned ring of 2 lanes of 512 whose lane (this thread's) has wrapped.
fn lane_ring() -> Box<Lanes> {
    let ring = LaneRing::new(2, CAPACITY / 2).expect("valid lanes");
    for _ in 0..=CAPACITY {
        ring.push(event());
    }
    Box::new(ring)
}

/// A producer owning a lane of a ring as `lane_ring`'s, wrapped; the ring
/// is leaked so that the producer can borrow it for as long as it runs.
fn lane_producer() -> LaneProducer<'static, Box<[LaneSlot]>> {
    let ring: &'static Lanes = Box::leak(lane_ring());
    let producer = ring.producer().expect("every lane is free");
    for _ in 0..=CAPACITY {
        producer.push(event());
    }
    producer
}

/// A throttle, default configuration, that has accepted a few requests at
/// `start`.
fn warm_throttle(start: Timestamp) -> Throttle {
    let t = Throttle::new(ThrottleConfig::builder().build().expect("valid config"));
    for _ in 0..WARM_UP {
        t.try_admit(start).expect("admitted").accepted(start);
    }
    t
}

/// A warmed-up throttle at the start time.
fn throttle() -> Box<Throttle> {
    Box::new(warm_throttle(Timestamp::from_nanos(START_NS)))
}

/// The same on the TSC.
fn throttle_timed() -> Box<Timed<Throttle>> {
    timed(warm_throttle)
}

/// A retry budget, default configuration, with a few deposits and
/// withdrawals at `start`.
fn warm_retry_budget(start: Timestamp) -> RetryBudget {
    let r = RetryBudget::new(RetryBudgetConfig::default());
    for _ in 0..WARM_UP {
        r.deposit(start);
        r.try_withdraw(start);
    }
    r
}

/// A warmed-up retry budget at the start time.
fn retry_budget() -> Box<RetryBudget> {
    Box::new(warm_retry_budget(Timestamp::from_nanos(START_NS)))
}

/// The same on the TSC.
fn retry_budget_timed() -> Box<Timed<RetryBudget>> {
    timed(warm_retry_budget)
}

/// failsafe's successful call on a closed breaker.
fn failsafe_success<P: FailurePolicy>(f: &failsafe::StateMachine<P, ()>) {
    let result = f.call(|| Ok::<(), ()>(()));
    assert!(result.is_ok(), "a closed breaker admits");
}

/// failsafe with its default configuration, warmed up.
fn failsafe_default() -> Box<impl failsafe::CircuitBreaker> {
    let f = failsafe::Config::new().build();
    for _ in 0..WARM_UP {
        failsafe_success(&f);
    }
    Box::new(f)
}

/// failsafe with its consecutive-failures policy, warmed up.
fn failsafe_consecutive() -> Box<impl failsafe::CircuitBreaker> {
    let f = failsafe::Config::new()
        .failure_policy(failsafe::failure_policy::consecutive_failures(
            5,
            failsafe::backoff::constant(Duration::from_secs(60)),
        ))
        .build();
    for _ in 0..WARM_UP {
        failsafe_success(&f);
    }
    Box::new(f)
}

/// tokio's semaphore with 1000 permits, a few taken and given back.
fn semaphore() -> Box<Semaphore> {
    let s = Semaphore::new(1000);
    for _ in 0..WARM_UP {
        drop(s.try_acquire().expect("free permits"));
    }
    Box::new(s)
}

/// crossbeam's queue of 1024, full: every `force_push` overwrites.
fn array_queue() -> Box<ArrayQueue<Event>> {
    let q = ArrayQueue::new(CAPACITY);
    for _ in 0..=CAPACITY {
        q.force_push(event());
    }
    Box::new(q)
}

/// The admitting quota, for tenlives.
fn admitting() -> Quota {
    admitting_at(RATE)
}

/// The admitting burst at `rate` tokens a second.
fn admitting_at(rate: u32) -> Quota {
    Quota::per_second(rate)
        .and_then(|q| q.with_burst(BURST))
        .expect("valid quota")
}

/// The admitting quota, for governor.
fn governor_admitting() -> governor::Quota {
    let nonzero = |n| std::num::NonZeroU32::new(n).expect("non-zero");
    governor::Quota::per_second(nonzero(RATE)).allow_burst(nonzero(BURST))
}

/// A direct limiter that has admitted a few requests at `start`.
fn warm_rate_limiter(start: Timestamp) -> RateLimiter {
    warm(RateLimiter::new(admitting()), start)
}

fn warm(r: RateLimiter, start: Timestamp) -> RateLimiter {
    for _ in 0..WARM_UP {
        r.check(start).expect("admitted");
    }
    r
}

/// A warmed-up direct limiter on the 128-bit state: the admitting burst at
/// a rate that does not divide a second.
fn rate_limiter_uneven() -> Box<RateLimiter> {
    rate_limiter_at(999_999_937)
}

/// The same on the scaled 64-bit state: an interval of 4/3 ns.
fn rate_limiter_fractional() -> Box<RateLimiter> {
    rate_limiter_at(750_000_000)
}

/// A warmed-up direct limiter at `rate` tokens a second, the admitting
/// burst.
fn rate_limiter_at(rate: u32) -> Box<RateLimiter> {
    Box::new(warm(
        RateLimiter::new(admitting_at(rate)),
        Timestamp::from_nanos(START_NS),
    ))
}

/// A warmed-up direct limiter at the start time.
fn rate_limiter() -> Box<RateLimiter> {
    Box::new(warm_rate_limiter(Timestamp::from_nanos(START_NS)))
}

/// The same on the TSC.
fn rate_limiter_timed() -> Box<Timed<RateLimiter>> {
    timed(warm_rate_limiter)
}

/// The keyed limiter of [`keyed_limiter`], filled and warmed up at `start`.
fn warm_keyed(start: Timestamp) -> Keyed {
    warm_keyed_at(admitting(), start)
}

/// A keyed limiter at `quota`, filled and warmed up at `start`.
fn warm_keyed_at(quota: Quota, start: Timestamp) -> Keyed {
    let capacity = usize::try_from(KEYS).expect("fits");
    let k = KeyedRateLimiter::with_hasher_and_sink(
        KeyedConfig::new(quota, capacity).expect("valid config"),
        Hasher::with_seed(HASH_SEED),
        NoSink,
        0,
    );
    for key in 0..KEYS {
        k.check_key(&key, start).expect("admitted");
    }
    for _ in 0..WARM_UP {
        k.check_key(&KEY, start).expect("admitted");
    }
    assert_eq!(k.in_use(), capacity, "every key is tracked");
    k
}

/// A keyed limiter holding [`KEYS`] keys, [`KEY`] checked a few more times.
fn keyed_limiter() -> Box<Keyed> {
    Box::new(warm_keyed(Timestamp::from_nanos(START_NS)))
}

/// The same at 750 000 000 tokens a second: scaled 64-bit words.
fn keyed_limiter_fractional() -> Box<Keyed> {
    keyed_limiter_at(750_000_000)
}

/// The same at 999 999 937 tokens a second: 128-bit states.
fn keyed_limiter_uneven() -> Box<Keyed> {
    keyed_limiter_at(999_999_937)
}

/// A keyed limiter at `rate` tokens a second, the admitting burst.
fn keyed_limiter_at(rate: u32) -> Box<Keyed> {
    Box::new(warm_keyed_at(
        admitting_at(rate),
        Timestamp::from_nanos(START_NS),
    ))
}

/// The same on the TSC.
fn keyed_limiter_timed() -> Box<Timed<Keyed>> {
    timed(warm_keyed)
}

/// governor's direct limiter on its fake clock, a few requests admitted.
fn governor_direct() -> Box<GovernorDirect> {
    let g = governor::RateLimiter::direct_with_clock(
        governor_admitting(),
        FakeRelativeClock::default(),
    );
    for _ in 0..WARM_UP {
        g.check().expect("admitted");
    }
    Box::new(g)
}

/// governor's keyed limiter holding [`KEYS`] keys, [`KEY`] checked a few
/// more times.
fn governor_keyed() -> Box<GovernorKeyed> {
    let g = governor::RateLimiter::dashmap_with_clock_and_hasher(
        governor_admitting(),
        FakeRelativeClock::default(),
        Hasher::with_seed(HASH_SEED),
    );
    for key in 0..KEYS {
        g.check_key(&key).expect("admitted");
    }
    for _ in 0..WARM_UP {
        g.check_key(&KEY).expect("admitted");
    }
    assert_eq!(g.len(), usize::try_from(KEYS).expect("fits"));
    Box::new(g)
}

/// governor's direct limiter on its default clock, a few requests admitted.
fn governor_direct_default() -> Box<GovernorDirectDefault> {
    let g = governor::RateLimiter::direct(governor_admitting());
    for _ in 0..WARM_UP {
        g.check().expect("admitted");
    }
    Box::new(g)
}

/// governor's keyed limiter on its default clock, [`KEYS`] keys, [`KEY`]
/// checked a few more times.
fn governor_keyed_default() -> Box<GovernorKeyedDefault> {
    let g = governor::RateLimiter::dashmap_with_hasher(
        governor_admitting(),
        Hasher::with_seed(HASH_SEED),
    );
    for key in 0..KEYS {
        g.check_key(&key).expect("admitted");
    }
    for _ in 0..WARM_UP {
        g.check_key(&KEY).expect("admitted");
    }
    assert_eq!(g.len(), usize::try_from(KEYS).expect("fits"));
    Box::new(g)
}

/// The floor's counter.
fn counter() -> Box<AtomicU64> {
    Box::new(AtomicU64::new(0))
}

/// The benchmarks. A module of their own because the iai-callgrind macros
/// make `pub` items they cannot document; here they are not exported, so
/// they need no doc.
mod harness {
    use iai_callgrind::{library_benchmark, library_benchmark_group};

    use super::*;

    #[library_benchmark]
    #[bench::op(setup = breaker_time_window)]
    fn tenlives_breaker_time_window_no_clock_read(b: Box<CircuitBreaker>) -> Box<CircuitBreaker> {
        breaker_success(&b, now());
        b
    }

    #[library_benchmark]
    #[bench::op(setup = breaker_consecutive)]
    fn tenlives_breaker_consecutive_no_clock_read(b: Box<CircuitBreaker>) -> Box<CircuitBreaker> {
        breaker_success(&b, now());
        b
    }

    #[library_benchmark]
    #[bench::op(setup = breaker_forced_open)]
    fn tenlives_breaker_rejection_no_clock_read(b: Box<CircuitBreaker>) -> Box<CircuitBreaker> {
        black_box(b.try_acquire(now()).err());
        b
    }

    #[library_benchmark]
    #[bench::op(setup = bulkhead)]
    fn tenlives_bulkhead(b: Box<Bulkhead>) -> Box<Bulkhead> {
        drop(black_box(b.try_acquire().expect("free permits")));
        b
    }

    #[library_benchmark]
    #[bench::op(setup = event_ring)]
    fn tenlives_event_push(ring: Box<Ring>) -> Box<Ring> {
        ring.push(event());
        ring
    }

    #[library_benchmark]
    #[bench::op(setup = lane_ring)]
    fn tenlives_lane_push(ring: Box<Lanes>) -> Box<Lanes> {
        ring.push(event());
        ring
    }

    #[library_benchmark]
    #[bench::op(setup = lane_producer)]
    fn tenlives_lane_producer_push(
        producer: LaneProducer<'static, Box<[LaneSlot]>>,
    ) -> LaneProducer<'static, Box<[LaneSlot]>> {
        producer.push(event());
        producer
    }

    #[library_benchmark]
    #[bench::op(setup = throttle)]
    fn tenlives_throttle_no_clock_read(t: Box<Throttle>) -> Box<Throttle> {
        let now = now();
        t.try_admit(now).expect("admitted").accepted(now);
        t
    }

    #[library_benchmark]
    #[bench::op(setup = retry_budget)]
    fn tenlives_retry_budget_no_clock_read(r: Box<RetryBudget>) -> Box<RetryBudget> {
        let now = now();
        r.deposit(now);
        black_box(r.try_withdraw(now));
        r
    }

    #[library_benchmark]
    #[bench::op(setup = rate_limiter)]
    fn tenlives_rate_check_no_clock_read(r: Box<RateLimiter>) -> Box<RateLimiter> {
        black_box(r.check(now())).expect("admitted");
        r
    }

    #[library_benchmark]
    #[bench::op(setup = rate_limiter_uneven)]
    fn tenlives_rate_check_uneven_no_clock_read(r: Box<RateLimiter>) -> Box<RateLimiter> {
        black_box(r.check(now())).expect("admitted");
        r
    }

    #[library_benchmark]
    #[bench::op(setup = rate_limiter_fractional)]
    fn tenlives_rate_check_fractional_no_clock_read(r: Box<RateLimiter>) -> Box<RateLimiter> {
        black_box(r.check(now())).expect("admitted");
        r
    }

    #[library_benchmark]
    #[bench::op(setup = rate_limiter)]
    fn tenlives_rate_check_n_no_clock_read(r: Box<RateLimiter>) -> Box<RateLimiter> {
        black_box(r.check_n(black_box(N), now())).expect("admitted");
        r
    }

    #[library_benchmark]
    #[bench::op(setup = keyed_limiter)]
    fn tenlives_keyed_check_1k_no_clock_read(k: Box<Keyed>) -> Box<Keyed> {
        black_box(k.check_key(&black_box(KEY), now())).expect("admitted");
        k
    }

    #[library_benchmark]
    #[bench::op(setup = keyed_limiter_fractional)]
    fn tenlives_keyed_check_1k_fractional_no_clock_read(k: Box<Keyed>) -> Box<Keyed> {
        black_box(k.check_key(&black_box(KEY), now())).expect("admitted");
        k
    }

    #[library_benchmark]
    #[bench::op(setup = keyed_limiter_uneven)]
    fn tenlives_keyed_check_1k_uneven_no_clock_read(k: Box<Keyed>) -> Box<Keyed> {
        black_box(k.check_key(&black_box(KEY), now())).expect("admitted");
        k
    }

    #[library_benchmark]
    #[bench::op(setup = governor_direct)]
    fn governor_direct_check_fake_clock(g: Box<GovernorDirect>) -> Box<GovernorDirect> {
        black_box(g.check()).expect("admitted");
        g
    }

    #[library_benchmark]
    #[bench::op(setup = governor_direct)]
    fn governor_check_n_fake_clock(g: Box<GovernorDirect>) -> Box<GovernorDirect> {
        let n = std::num::NonZeroU32::new(black_box(N)).expect("non-zero");
        black_box(g.check_n(n))
            .expect("within the burst")
            .expect("admitted");
        g
    }

    #[library_benchmark]
    #[bench::op(setup = governor_keyed)]
    fn governor_keyed_check_1k_fake_clock(g: Box<GovernorKeyed>) -> Box<GovernorKeyed> {
        black_box(g.check_key(&black_box(KEY))).expect("admitted");
        g
    }

    #[library_benchmark]
    #[bench::op(setup = failsafe_default)]
    fn failsafe_breaker_default<F: failsafe::CircuitBreaker>(f: Box<F>) -> Box<F> {
        assert!(
            f.call(|| Ok::<(), ()>(())).is_ok(),
            "a closed breaker admits"
        );
        f
    }

    #[library_benchmark]
    #[bench::op(setup = failsafe_consecutive)]
    fn failsafe_breaker_consecutive<F: failsafe::CircuitBreaker>(f: Box<F>) -> Box<F> {
        assert!(
            f.call(|| Ok::<(), ()>(())).is_ok(),
            "a closed breaker admits"
        );
        f
    }

    #[library_benchmark]
    #[bench::op(setup = semaphore)]
    fn tokio_semaphore(s: Box<Semaphore>) -> Box<Semaphore> {
        drop(black_box(s.try_acquire().expect("free permits")));
        s
    }

    #[library_benchmark]
    #[bench::op(setup = array_queue)]
    fn crossbeam_array_queue_force_push(q: Box<ArrayQueue<Event>>) -> Box<ArrayQueue<Event>> {
        black_box(q.force_push(event()));
        q
    }

    #[library_benchmark]
    #[bench::op(setup = limited_service)]
    fn tenlives_layer_concurrency_limit(mut s: Box<LimitedService>) -> Box<LimitedService> {
        layer_call(&mut *s);
        s
    }

    #[library_benchmark]
    #[bench::op(setup = counter)]
    fn floor_fetch_add(c: Box<AtomicU64>) -> Box<AtomicU64> {
        black_box(c.fetch_add(1, Ordering::Relaxed));
        c
    }

    #[library_benchmark]
    #[bench::op(setup = breaker_time_window_timed)]
    fn tenlives_breaker_time_window(b: Box<Timed<CircuitBreaker>>) -> Box<Timed<CircuitBreaker>> {
        breaker_success_timed(&b);
        b
    }

    #[library_benchmark]
    #[bench::op(setup = breaker_consecutive_timed)]
    fn tenlives_breaker_consecutive(b: Box<Timed<CircuitBreaker>>) -> Box<Timed<CircuitBreaker>> {
        breaker_success_timed(&b);
        b
    }

    #[library_benchmark]
    #[bench::op(setup = breaker_forced_open_timed)]
    fn tenlives_breaker_rejection(b: Box<Timed<CircuitBreaker>>) -> Box<Timed<CircuitBreaker>> {
        black_box(b.subject.try_acquire_raw_with(|| b.now()).err());
        b
    }

    #[library_benchmark]
    #[bench::op(setup = throttle_timed)]
    fn tenlives_throttle(t: Box<Timed<Throttle>>) -> Box<Timed<Throttle>> {
        let now = t.now();
        t.subject.try_admit(now).expect("admitted").accepted(now);
        t
    }

    #[library_benchmark]
    #[bench::op(setup = retry_budget_timed)]
    fn tenlives_retry_budget(r: Box<Timed<RetryBudget>>) -> Box<Timed<RetryBudget>> {
        let now = r.now();
        r.subject.deposit(now);
        black_box(r.subject.try_withdraw(now));
        r
    }

    #[library_benchmark]
    #[bench::op(setup = rate_limiter_timed)]
    fn tenlives_rate_check(r: Box<Timed<RateLimiter>>) -> Box<Timed<RateLimiter>> {
        black_box(r.subject.check(r.now())).expect("admitted");
        r
    }

    #[library_benchmark]
    #[bench::op(setup = rate_limiter_timed)]
    fn tenlives_rate_check_n(r: Box<Timed<RateLimiter>>) -> Box<Timed<RateLimiter>> {
        black_box(r.subject.check_n(black_box(N), r.now())).expect("admitted");
        r
    }

    #[library_benchmark]
    #[bench::op(setup = keyed_limiter_timed)]
    fn tenlives_keyed_check_1k(k: Box<Timed<Keyed>>) -> Box<Timed<Keyed>> {
        black_box(k.subject.check_key(&black_box(KEY), k.now())).expect("admitted");
        k
    }

    #[library_benchmark]
    #[bench::op(setup = governor_direct_default)]
    fn governor_direct_check(g: Box<GovernorDirectDefault>) -> Box<GovernorDirectDefault> {
        black_box(g.check()).expect("admitted");
        g
    }

    #[library_benchmark]
    #[bench::op(setup = governor_direct_default)]
    fn governor_check_n(g: Box<GovernorDirectDefault>) -> Box<GovernorDirectDefault> {
        let n = std::num::NonZeroU32::new(black_box(N)).expect("non-zero");
        black_box(g.check_n(n))
            .expect("within the burst")
            .expect("admitted");
        g
    }

    #[library_benchmark]
    #[bench::op(setup = governor_keyed_default)]
    fn governor_keyed_check_1k(g: Box<GovernorKeyedDefault>) -> Box<GovernorKeyedDefault> {
        black_box(g.check_key(&black_box(KEY))).expect("admitted");
        g
    }

    library_benchmark_group!(
        name = tenlives;
        benchmarks =
            tenlives_breaker_time_window,
            tenlives_breaker_time_window_no_clock_read,
            tenlives_breaker_consecutive,
            tenlives_breaker_consecutive_no_clock_read,
            tenlives_breaker_rejection,
            tenlives_breaker_rejection_no_clock_read,
            tenlives_bulkhead,
            tenlives_event_push,
            tenlives_lane_push,
            tenlives_lane_producer_push,
            tenlives_throttle,
            tenlives_throttle_no_clock_read,
            tenlives_retry_budget,
            tenlives_retry_budget_no_clock_read,
            tenlives_rate_check,
            tenlives_rate_check_no_clock_read,
            tenlives_rate_check_uneven_no_clock_read,
            tenlives_rate_check_fractional_no_clock_read,
            tenlives_rate_check_n,
            tenlives_rate_check_n_no_clock_read,
            tenlives_keyed_check_1k,
            tenlives_keyed_check_1k_no_clock_read,
            tenlives_keyed_check_1k_fractional_no_clock_read,
            tenlives_keyed_check_1k_uneven_no_clock_read
    );

    // The tower layer rows: also run alone, built with the feature
    // `tracing` (`python3 benches/iai-gate.py --features tracing`).
    library_benchmark_group!(
        name = layers;
        benchmarks = tenlives_layer_concurrency_limit
    );

    library_benchmark_group!(
        name = peers;
        benchmarks =
            failsafe_breaker_default,
            failsafe_breaker_consecutive,
            tokio_semaphore,
            crossbeam_array_queue_force_push,
            governor_direct_check,
            governor_direct_check_fake_clock,
            governor_check_n,
            governor_check_n_fake_clock,
            governor_keyed_check_1k,
            governor_keyed_check_1k_fake_clock,
            floor_fetch_add
    );
}

use harness::{layers, peers, tenlives};
#[cfg(not(feature = "tracing"))]
main!(library_benchmark_groups = tenlives, layers, peers);
// With the layers' spans compiled in, only the layer rows: the engine rows
// do not change with the feature, and the gate counts these against their
// own `[tracing]` baselines.
#[cfg(feature = "tracing")]
main!(library_benchmark_groups = layers);
