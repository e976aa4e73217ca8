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
//! Benchmarks named `tenlives_*` are gated: the gate fails when one of their
//! counts rises more than 5 % above `benches/iai-baselines.json`. The others
//! are peers and a floor, reported for the ratios only:
//!
//! - `tenlives_breaker_time_window`: a closed breaker with the default
//!   configuration (a failure rate over a time window): `try_acquire(now)` +
//!   `Permit::success(now)`.
//! - `tenlives_breaker_consecutive`: the same with the consecutive-failures
//!   rule alone.
//! - `tenlives_breaker_rejection`: `try_acquire(now)` refused by a
//!   force-opened breaker.
//! - `tenlives_bulkhead`: `Bulkhead::try_acquire()` + drop of the permit, limit
//!   1000.
//! - `tenlives_event_push`: `EventRing::push` into a full ring of 1024.
//! - `tenlives_throttle`: `Throttle::try_admit(now)` +
//!   `ThrottleTicket::accepted(now)`, default configuration.
//! - `tenlives_retry_budget`: `RetryBudget::deposit(now)` +
//!   `try_withdraw(now)`, default configuration.
//! - `tenlives_rate_check`: `RateLimiter::check(now)`, admitted (10^9 tokens
//!   a second, a burst of 2^32 - 1).
//! - `tenlives_rate_check_n`: `RateLimiter::check_n(8, now)`, admitted, same
//!   quota.
//! - `tenlives_keyed_check_1k`: `KeyedRateLimiter::check_key(&key, now)` for
//!   a `u64` key present in a full table of 1 000 keys (capacity 1 000),
//!   same quota per key. Both keyed tables hash with foldhash under a fixed
//!   seed, so that the key's place in its bucket, and with it the count, is
//!   the same on every run.
//! - `failsafe_breaker_default`, `failsafe_breaker_consecutive`: failsafe 1.3's
//!   `call(|| Ok(()))` with its default configuration and with its
//!   consecutive-failures policy (it reads its own clock).
//! - `tokio_semaphore`: `Semaphore::try_acquire()` + drop, 1000 permits.
//! - `crossbeam_array_queue_force_push`: `ArrayQueue::force_push` of the same
//!   event into a full queue of 1024.
//! - `governor_direct_check`, `governor_check_n`: governor 0.10's
//!   `RateLimiter::check()` and `check_n(8)` with the same quota, on its
//!   `FakeRelativeClock` (its cheapest clock, one relaxed load: the peer of
//!   a `now` passed in).
//! - `governor_keyed_check_1k`: governor's dashmap-keyed `check_key(&key)`
//!   for a key present among 1 000, on `FakeRelativeClock` and with the
//!   hasher tenlives uses (foldhash, same fixed seed), so that neither clock
//!   nor hash function is what is compared.
//! - `floor_fetch_add`: one `fetch_add(1, Relaxed)` on an `AtomicU64`.
//! - `tenlives_layer_concurrency_limit`: one request through
//!   `ConcurrencyLimitLayer` (limit 1000) over a service whose future is
//!   ready at once: `call` + one poll to the answer + drop of the future.
//!   Built with the benches' feature `tracing` (tenlives-tokio's spans on,
//!   no subscriber installed) it is gated against the same baseline as
//!   without: the spans' cost with nobody listening must stay under the
//!   gate's 5 % (`docs/telemetry.md` has both counts).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use failsafe::CircuitBreaker as _;
use failsafe::failure_policy::FailurePolicy;
use governor::clock::FakeRelativeClock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use iai_callgrind::main;
use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::events::{Event, EventKind, EventRing, NoSink, Slot};
use tenlives_engine::rate::{KeyedConfig, KeyedRateLimiter, Quota, RateLimiter};
use tenlives_engine::retry::{RetryBudget, RetryBudgetConfig};
use tenlives_engine::throttle::{Throttle, ThrottleConfig};
use tenlives_engine::time::Timestamp;
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

/// `b` warmed up with successful calls at the start time.
fn warm_breaker(b: CircuitBreaker) -> Box<CircuitBreaker> {
    let start = Timestamp::from_nanos(START_NS);
    for _ in 0..WARM_UP {
        breaker_success(&b, start);
    }
    Box::new(b)
}

/// A closed breaker, default configuration (failure rate, time window).
fn breaker_time_window() -> Box<CircuitBreaker> {
    warm_breaker(CircuitBreaker::new(BreakerConfig::default()))
}

/// A closed breaker, consecutive-failures rule alone.
fn breaker_consecutive() -> Box<CircuitBreaker> {
    warm_breaker(CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(5)
            .open_duration(Duration::from_secs(60))
            .build()
            .expect("valid config"),
    ))
}

/// A force-opened breaker that has already refused a few calls.
fn breaker_forced_open() -> Box<CircuitBreaker> {
    let b = CircuitBreaker::new(BreakerConfig::default());
    b.force_open(Timestamp::ZERO);
    let start = Timestamp::from_nanos(START_NS);
    for _ in 0..WARM_UP {
        assert!(
            b.try_acquire(start).is_err(),
            "a forced-open breaker refuses"
        );
    }
    Box::new(b)
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

/// A throttle, default configuration, that has accepted a few requests.
fn throttle() -> Box<Throttle> {
    let t = Throttle::new(ThrottleConfig::builder().build().expect("valid config"));
    let start = Timestamp::from_nanos(START_NS);
    for _ in 0..WARM_UP {
        t.try_admit(start).expect("admitted").accepted(start);
    }
    Box::new(t)
}

/// A retry budget, default configuration, with a few deposits and
/// withdrawals.
fn retry_budget() -> Box<RetryBudget> {
    let r = RetryBudget::new(RetryBudgetConfig::default());
    let start = Timestamp::from_nanos(START_NS);
    for _ in 0..WARM_UP {
        r.deposit(start);
        r.try_withdraw(start);
    }
    Box::new(r)
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
    Quota::per_second(RATE)
        .and_then(|q| q.with_burst(BURST))
        .expect("valid quota")
}

/// The admitting quota, for governor.
fn governor_admitting() -> governor::Quota {
    let nonzero = |n| std::num::NonZeroU32::new(n).expect("non-zero");
    governor::Quota::per_second(nonzero(RATE)).allow_burst(nonzero(BURST))
}

/// A direct limiter that has admitted a few requests.
fn rate_limiter() -> Box<RateLimiter> {
    let r = RateLimiter::new(admitting());
    let start = Timestamp::from_nanos(START_NS);
    for _ in 0..WARM_UP {
        r.check(start).expect("admitted");
    }
    Box::new(r)
}

/// A keyed limiter holding [`KEYS`] keys, [`KEY`] checked a few more times.
fn keyed_limiter() -> Box<Keyed> {
    let capacity = usize::try_from(KEYS).expect("fits");
    let k = KeyedRateLimiter::with_hasher_and_sink(
        KeyedConfig::new(admitting(), capacity).expect("valid config"),
        Hasher::with_seed(HASH_SEED),
        NoSink,
        0,
    );
    let start = Timestamp::from_nanos(START_NS);
    for key in 0..KEYS {
        k.check_key(&key, start).expect("admitted");
    }
    for _ in 0..WARM_UP {
        k.check_key(&KEY, start).expect("admitted");
    }
    assert_eq!(k.in_use(), capacity, "every key is tracked");
    Box::new(k)
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
    fn tenlives_breaker_time_window(b: Box<CircuitBreaker>) -> Box<CircuitBreaker> {
        breaker_success(&b, now());
        b
    }

    #[library_benchmark]
    #[bench::op(setup = breaker_consecutive)]
    fn tenlives_breaker_consecutive(b: Box<CircuitBreaker>) -> Box<CircuitBreaker> {
        breaker_success(&b, now());
        b
    }

    #[library_benchmark]
    #[bench::op(setup = breaker_forced_open)]
    fn tenlives_breaker_rejection(b: Box<CircuitBreaker>) -> Box<CircuitBreaker> {
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
    #[bench::op(setup = throttle)]
    fn tenlives_throttle(t: Box<Throttle>) -> Box<Throttle> {
        let now = now();
        t.try_admit(now).expect("admitted").accepted(now);
        t
    }

    #[library_benchmark]
    #[bench::op(setup = retry_budget)]
    fn tenlives_retry_budget(r: Box<RetryBudget>) -> Box<RetryBudget> {
        let now = now();
        r.deposit(now);
        black_box(r.try_withdraw(now));
        r
    }

    #[library_benchmark]
    #[bench::op(setup = rate_limiter)]
    fn tenlives_rate_check(r: Box<RateLimiter>) -> Box<RateLimiter> {
        black_box(r.check(now())).expect("admitted");
        r
    }

    #[library_benchmark]
    #[bench::op(setup = rate_limiter)]
    fn tenlives_rate_check_n(r: Box<RateLimiter>) -> Box<RateLimiter> {
        black_box(r.check_n(black_box(N), now())).expect("admitted");
        r
    }

    #[library_benchmark]
    #[bench::op(setup = keyed_limiter)]
    fn tenlives_keyed_check_1k(k: Box<Keyed>) -> Box<Keyed> {
        black_box(k.check_key(&black_box(KEY), now())).expect("admitted");
        k
    }

    #[library_benchmark]
    #[bench::op(setup = governor_direct)]
    fn governor_direct_check(g: Box<GovernorDirect>) -> Box<GovernorDirect> {
        black_box(g.check()).expect("admitted");
        g
    }

    #[library_benchmark]
    #[bench::op(setup = governor_direct)]
    fn governor_check_n(g: Box<GovernorDirect>) -> Box<GovernorDirect> {
        let n = std::num::NonZeroU32::new(black_box(N)).expect("non-zero");
        black_box(g.check_n(n))
            .expect("within the burst")
            .expect("admitted");
        g
    }

    #[library_benchmark]
    #[bench::op(setup = governor_keyed)]
    fn governor_keyed_check_1k(g: Box<GovernorKeyed>) -> Box<GovernorKeyed> {
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

    library_benchmark_group!(
        name = tenlives;
        benchmarks =
            tenlives_breaker_time_window,
            tenlives_breaker_consecutive,
            tenlives_breaker_rejection,
            tenlives_bulkhead,
            tenlives_event_push,
            tenlives_throttle,
            tenlives_retry_budget,
            tenlives_rate_check,
            tenlives_rate_check_n,
            tenlives_keyed_check_1k,
            tenlives_layer_concurrency_limit
    );

    library_benchmark_group!(
        name = peers;
        benchmarks =
            failsafe_breaker_default,
            failsafe_breaker_consecutive,
            tokio_semaphore,
            crossbeam_array_queue_force_push,
            governor_direct_check,
            governor_check_n,
            governor_keyed_check_1k,
            floor_fetch_add
    );
}

use harness::{peers, tenlives};
main!(library_benchmark_groups = tenlives, peers);
