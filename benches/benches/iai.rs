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
//! - `failsafe_breaker_default`, `failsafe_breaker_consecutive`: failsafe 1.3's
//!   `call(|| Ok(()))` with its default configuration and with its
//!   consecutive-failures policy (it reads its own clock).
//! - `tokio_semaphore`: `Semaphore::try_acquire()` + drop, 1000 permits.
//! - `crossbeam_array_queue_force_push`: `ArrayQueue::force_push` of the same
//!   event into a full queue of 1024.
//! - `floor_fetch_add`: one `fetch_add(1, Relaxed)` on an `AtomicU64`.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use failsafe::CircuitBreaker as _;
use failsafe::failure_policy::FailurePolicy;
use iai_callgrind::main;
use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::events::{Event, EventKind, EventRing, Slot};
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
            tenlives_retry_budget
    );

    library_benchmark_group!(
        name = peers;
        benchmarks =
            failsafe_breaker_default,
            failsafe_breaker_consecutive,
            tokio_semaphore,
            crossbeam_array_queue_force_push,
            floor_fetch_add
    );
}

use harness::{peers, tenlives};
main!(library_benchmark_groups = tenlives, peers);
