//! Waiting for capacity: `acquire` under virtual time (`ManualTimer` on
//! `futures::executor::LocalPool`) and under tokio's paused clock
//! (`TokioTimer` on the current-thread runtime), and with a real clock
//! (`AsyncIoTimer`). Every waiting rule of `docs/futures.md`, and
//! cancellation at every await point.

mod common;

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use common::*;
use futures::executor::{LocalPool, block_on};
use futures::task::LocalSpawnExt;
use tenlives_engine::breaker::BreakerState;
use tenlives_engine::bulkhead::{AcquireManyError, Bulkhead};
use tenlives_engine::retry::Backoff;
use tenlives_engine::time::{Clock, ManualClock, Timestamp};
use tenlives_futures::{
    AcquireError, AsyncIoTimer, ManualTimer, ManyPermits, NotYet, Timer, TokioTimer, TryAdmit,
    acquire, acquire_with,
};

/// A permit held for 30 ms is released; a waiter with a 100 ms deadline
/// takes it at its first attempt after that: attempts at 0, 1, 3, 7, 15 and
/// 31 ms (the default backoff: 1 ms, doubling). Returns when it got it.
async fn waiter_takes_a_released_permit<T: Timer>(timer: &T) -> Timestamp {
    let bh = bulkhead(1);
    let start = timer.clock().now();
    let holder = async {
        let permit = bh.try_acquire().unwrap();
        timer.sleep_until(start.saturating_add(ms(30))).await;
        drop(permit);
    };
    let waiter = async {
        let permit = acquire(&bh, timer, start.saturating_add(ms(100))).await;
        assert!(permit.is_ok());
        timer.clock().now()
    };
    let ((), got_at) = futures::join!(holder, waiter);
    assert_eq!(bh.in_flight(), 0);
    Timestamp::from_nanos(got_at.as_nanos() - start.as_nanos())
}

/// A permit that is never released: the waiter times out exactly at its
/// deadline (its last attempt). Returns when it gave up.
async fn waiter_times_out_at_the_deadline<T: Timer>(timer: &T) -> Timestamp {
    let bh = bulkhead(1);
    let _held = bh.try_acquire().unwrap();
    let start = timer.clock().now();
    let r = acquire(&bh, timer, start.saturating_add(ms(10))).await;
    assert_eq!(r.unwrap_err(), AcquireError::TimedOut { retry_at: None });
    Timestamp::from_nanos(timer.clock().now().as_nanos() - start.as_nanos())
}

/// Runs `f(&timer)` on a `LocalPool` under virtual time.
fn on_local_pool<R: 'static>(f: impl AsyncFnOnce(&ManualTimer) -> R + 'static) -> R {
    let timer = std::rc::Rc::new(ManualTimer::new());
    let out = std::rc::Rc::new(Cell::new(None));
    let mut pool = LocalPool::new();
    let (t, o) = (timer.clone(), out.clone());
    pool.spawner()
        .spawn_local(async move { o.set(Some(f(&t).await)) })
        .unwrap();
    run_virtual(&mut pool, &timer, 1_000);
    assert_eq!(timer.sleepers(), 0, "nobody left sleeping");
    out.take().expect("the task finished")
}

#[test]
fn released_permit_on_local_pool_with_virtual_time() {
    let got_at = on_local_pool(async |t: &ManualTimer| waiter_takes_a_released_permit(t).await);
    assert_eq!(got_at, at_ms(31));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn released_permit_on_tokio_with_its_paused_clock() {
    let got_at = waiter_takes_a_released_permit(&TokioTimer::new()).await;
    assert_eq!(got_at, at_ms(31));
}

#[test]
fn timeout_on_local_pool_with_virtual_time() {
    let gave_up_at =
        on_local_pool(async |t: &ManualTimer| waiter_times_out_at_the_deadline(t).await);
    assert_eq!(gave_up_at, at_ms(10));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn timeout_on_tokio_with_its_paused_clock() {
    let gave_up_at = waiter_times_out_at_the_deadline(&TokioTimer::new()).await;
    assert_eq!(gave_up_at, at_ms(10));
}

#[test]
fn timeout_with_a_real_clock_on_async_io() {
    // Real time: only the lower bound is checked (a slow machine is late,
    // never early).
    let timer = AsyncIoTimer::new();
    let bh = bulkhead(1);
    let _held = bh.try_acquire().unwrap();
    let deadline = timer.clock().now().saturating_add(ms(20));
    let r = async_io::block_on(acquire(&bh, &timer, deadline));
    assert_eq!(r.unwrap_err(), AcquireError::TimedOut { retry_at: None });
    assert!(timer.clock().now() >= deadline);
}

/// A pacer that admits one call every `interval` and knows when the next
/// one is due: the shape of a rate limiter. It logs every attempt.
struct Paced {
    next: Cell<Timestamp>,
    interval: Duration,
    attempts: RefCell<Vec<Timestamp>>,
}

impl Paced {
    fn new(interval: Duration) -> Self {
        Paced {
            next: Cell::new(Timestamp::ZERO),
            interval,
            attempts: RefCell::new(Vec::new()),
        }
    }
}

impl TryAdmit for Paced {
    type Permit<'a> = Timestamp;
    type Refused = Infallible;

    fn poll_admit(&self, now: Timestamp) -> Result<Timestamp, NotYet<Infallible>> {
        self.attempts.borrow_mut().push(now);
        if now >= self.next.get() {
            self.next.set(now.saturating_add(self.interval));
            Ok(now)
        } else {
            Err(NotYet::At(self.next.get()))
        }
    }
}

#[test]
fn a_policy_that_knows_when_is_retried_exactly_then() {
    let pacer = Paced::new(ms(10));
    let got = on_local_pool({
        let pacer: &'static Paced = Box::leak(Box::new(pacer));
        async move |t: &ManualTimer| {
            let deadline = at_ms(25);
            let r = futures::join!(
                acquire(pacer, t, deadline),
                acquire(pacer, t, deadline),
                acquire(pacer, t, deadline),
                acquire(pacer, t, deadline),
            );
            (r, pacer.attempts.borrow().clone())
        }
    });
    let ((a, b, c, d), attempts) = got;
    assert_eq!((a, b, c), (Ok(at_ms(0)), Ok(at_ms(10)), Ok(at_ms(20))));
    // The fourth is told "at 30 ms" at 20 ms, past its deadline: it gives up
    // at once, with the instant it was told.
    assert_eq!(
        d,
        Err(AcquireError::TimedOut {
            retry_at: Some(at_ms(30))
        })
    );
    // No backoff polling: every attempt is at an instant the pacer named.
    let expected = [0, 0, 0, 0, 10, 10, 10, 20, 20].map(at_ms);
    assert_eq!(attempts, expected);
}

#[test]
fn an_open_breaker_is_waited_out_exactly() {
    let timer = ManualTimer::new();
    let b = breaker();
    for _ in 0..2 {
        b.try_acquire(timer.now()).unwrap().failure(timer.now());
    }
    assert_eq!(b.state(), BreakerState::Open);

    // Deadline before the open period ends: it fails at once, unslept.
    let r = block_on(acquire(&b, &timer, at_ms(4_000)));
    assert_eq!(
        r.unwrap_err(),
        AcquireError::TimedOut {
            retry_at: Some(at_ms(5_000))
        }
    );
    assert_eq!(timer.now(), Timestamp::ZERO);

    // Deadline after it: one sleep, until exactly 5 s, then a probe.
    let mut waiter = pin!(acquire(&b, &timer, at_ms(10_000)));
    assert!(poll_once(waiter.as_mut()).is_pending());
    assert_eq!(timer.next_deadline(), Some(at_ms(5_000)));
    assert_eq!(timer.advance_to_next(), Some(at_ms(5_000)));
    match poll_once(waiter.as_mut()) {
        Poll::Ready(Ok(probe)) => {
            assert!(probe.is_probe());
            probe.success(timer.now());
        }
        other => panic!("expected a probe, got {other:?}"),
    }
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn what_waiting_cannot_fix_is_refused_at_once() {
    let timer = ManualTimer::new();
    let bh = bulkhead(4);
    let five = ManyPermits::new(&bh, 5);
    let r = block_on(acquire(&five, &timer, Timestamp::MAX));
    assert_eq!(
        r.unwrap_err(),
        AcquireError::Refused(AcquireManyError::ExceedsLimit {
            requested: 5,
            limit: 4
        })
    );
    let zero = ManyPermits::new(&bh, 0);
    let r = block_on(acquire(&zero, &timer, Timestamp::MAX));
    assert_eq!(
        r.unwrap_err(),
        AcquireError::Refused(AcquireManyError::Zero)
    );
    assert_eq!((timer.now(), timer.sleepers()), (Timestamp::ZERO, 0));

    // Three of four while two are held: waits until two are released.
    let held = bh.try_acquire_many(2).unwrap();
    let three = ManyPermits::new(&bh, 3);
    let mut waiter = pin!(acquire(&three, &timer, Timestamp::MAX));
    assert!(poll_once(waiter.as_mut()).is_pending());
    drop(held);
    timer.advance_to_next();
    match poll_once(waiter.as_mut()) {
        Poll::Ready(Ok(permit)) => assert_eq!((permit.permits(), bh.in_flight()), (3, 3)),
        other => panic!("expected three permits, got {other:?}"),
    }
    assert_eq!(bh.in_flight(), 0);
}

#[test]
fn a_finite_schedule_gives_up_when_it_runs_out() {
    let timer = ManualTimer::new();
    let bh = bulkhead(1);
    let _held = bh.try_acquire().unwrap();
    let backoff = Backoff::constant(ms(1)).unwrap().with_max_retries(2);
    let mut waiter = pin!(acquire_with(&bh, &timer, Timestamp::MAX, backoff.iter(0)));
    let mut rounds = 0;
    let r = loop {
        if let Poll::Ready(r) = poll_once(waiter.as_mut()) {
            break r;
        }
        timer.advance_to_next().expect("sleeping");
        rounds += 1;
        assert!(rounds <= 2, "two retries at most");
    };
    assert_eq!(r.unwrap_err(), AcquireError::RetriesExhausted);
    assert_eq!(timer.now(), at_ms(2), "attempts at 0, 1 and 2 ms");
}

#[test]
fn a_jittered_schedule_keeps_its_delays_in_bounds() {
    let timer = ManualTimer::new();
    let bh = bulkhead(1);
    let _held = bh.try_acquire().unwrap();
    let backoff = Backoff::decorrelated_jitter(ms(2), ms(8)).unwrap();
    for seed in 0..20 {
        let start = timer.now();
        let deadline = start.saturating_add(ms(200));
        let mut waiter = pin!(acquire_with(&bh, &timer, deadline, backoff.iter(seed)));
        let mut last = start;
        let r = loop {
            if let Poll::Ready(r) = poll_once(waiter.as_mut()) {
                break r;
            }
            let next = timer.advance_to_next().expect("sleeping");
            let step = next.saturating_duration_since(last);
            assert!(
                (ms(2)..=ms(8)).contains(&step) || next == deadline,
                "seed {seed}: a step of {step:?}"
            );
            last = next;
        };
        assert_eq!(r.unwrap_err(), AcquireError::TimedOut { retry_at: None });
        assert_eq!(timer.now(), deadline);
    }
}

#[test]
fn a_deadline_already_past_means_one_attempt() {
    let timer = ManualTimer::starting_at(at_ms(50));
    let bh = bulkhead(1);
    assert!(block_on(acquire(&bh, &timer, at_ms(10))).is_ok());
    let _held = bh.try_acquire().unwrap();
    let r = block_on(acquire(&bh, &timer, at_ms(10)));
    assert_eq!(r.unwrap_err(), AcquireError::TimedOut { retry_at: None });
    assert_eq!((timer.now(), timer.sleepers()), (at_ms(50), 0));
}

#[test]
fn the_adaptive_limiter_can_be_waited_on() {
    let timer = ManualTimer::new();
    let a = adaptive(&ManualClock::new());
    let held: Vec<_> = (0..4)
        .map(|_| a.try_acquire(timer.now()).unwrap())
        .collect();
    let mut waiter = pin!(acquire(&a, &timer, at_ms(100)));
    assert!(poll_once(waiter.as_mut()).is_pending());
    drop(held);
    timer.advance_to_next();
    match poll_once(waiter.as_mut()) {
        Poll::Ready(Ok(permit)) => permit.success(timer.now()),
        other => panic!("expected a permit, got {other:?}"),
    }
    assert_eq!((a.in_flight(), a.pending_samples()), (0, 1));
}

#[test]
fn a_waiter_dropped_at_any_await_point_leaves_nothing() {
    // Attempts at 0, 1, 3, 7, 15 ms, then the deadline (20 ms): drop it
    // before its first poll, and after each of its sleeps.
    for sleeps in 0..=6 {
        let timer = ManualTimer::new();
        let bh = bulkhead(1);
        let held = bh.try_acquire().unwrap();
        let mut waiter = Box::pin(acquire(&bh, &timer, at_ms(20)));
        let mut done = false;
        for i in 0..sleeps {
            match poll_once(waiter.as_mut()) {
                Poll::Pending => {
                    assert_eq!(timer.sleepers(), 1, "sleep {i}: one sleeper");
                    timer.advance_to_next();
                }
                Poll::Ready(r) => {
                    assert!(r.is_err());
                    done = true;
                    break;
                }
            }
        }
        assert_eq!(done, sleeps == 6, "it gives up after its sixth attempt");
        drop(waiter);
        assert_eq!(timer.sleepers(), 0, "dropped after {sleeps} sleeps");
        assert_eq!(bh.in_flight(), 1, "only the permit held outside");
        drop(held);
        assert_eq!(bh.in_flight(), 0);
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_tokio_waiter_cancelled_by_a_timeout_leaves_nothing() {
    let timer = TokioTimer::new();
    let bh: &'static Bulkhead = Box::leak(Box::new(bulkhead(1)));
    let held = bh.try_acquire().unwrap();
    // tokio's own timeout drops the waiter mid-sleep.
    let r = tokio::time::timeout(ms(5), acquire(bh, &timer, Timestamp::MAX)).await;
    assert!(r.is_err(), "tokio's timeout fired first");
    drop(held);
    assert_eq!(bh.in_flight(), 0);
    assert!(block_on(acquire(bh, &timer, Timestamp::ZERO)).is_ok());
}

/// A manual timer whose clock's reading number `panic_at` (counted from
/// its making) panics.
struct FaultyTimer {
    inner: ManualTimer,
    reads: Cell<u32>,
    panic_at: Cell<u32>,
}

impl FaultyTimer {
    fn new(panic_at: u32) -> Self {
        FaultyTimer {
            inner: ManualTimer::new(),
            reads: Cell::new(0),
            panic_at: Cell::new(panic_at),
        }
    }
}

impl Clock for FaultyTimer {
    fn now(&self) -> Timestamp {
        let n = self.reads.get();
        self.reads.set(n + 1);
        if n == self.panic_at.get() {
            panic!("the clock panicked");
        }
        self.inner.now()
    }
}

impl Timer for FaultyTimer {
    type Clock = Self;
    type Sleep<'a> = tenlives_futures::ManualSleep<'a>;
    fn clock(&self) -> &Self {
        self
    }
    fn sleep_until(&self, deadline: Timestamp) -> Self::Sleep<'_> {
        self.inner.sleep_until(deadline)
    }
}

/// Polls `waiter` (advancing `timer` between polls) until it is ready or
/// panics; returns whether it panicked (with the clock's panic).
fn drive_until_panic<F: std::future::Future + Unpin>(waiter: &mut F, timer: &FaultyTimer) -> bool {
    loop {
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            poll_once(std::pin::Pin::new(&mut *waiter))
        }));
        match polled {
            Err(payload) => {
                assert_eq!(payload.downcast_ref::<&str>(), Some(&"the clock panicked"));
                return true;
            }
            Ok(Poll::Ready(_)) => return false,
            Ok(Poll::Pending) => {
                timer.inner.advance_to_next().expect("the waiter sleeps");
            }
        }
    }
}

#[test]
fn a_waiter_whose_clock_panics_at_any_attempt_leaves_nothing() {
    // Attempts at 0, 1, 3, 7, 15 ms and the deadline (20 ms): each reads
    // the clock once; make each reading panic in turn.
    for n in 0..6 {
        let timer = FaultyTimer::new(n);
        let bh = bulkhead(1);
        let held = bh.try_acquire().unwrap();
        let mut waiter = Box::pin(acquire(&bh, &timer, at_ms(20)));
        assert!(drive_until_panic(&mut waiter, &timer), "reading {n}");
        drop(waiter);
        assert_eq!(timer.inner.sleepers(), 0, "reading {n}: a sleep left");
        assert_eq!(
            bh.in_flight(),
            1,
            "reading {n}: only the permit held outside"
        );
        drop(held);
        // Afterwards a waiter takes the free permit at its first attempt.
        let permit = block_on(acquire(&bh, &timer, at_ms(100))).unwrap();
        assert_eq!(bh.in_flight(), 1);
        drop(permit);
        assert_eq!(bh.in_flight(), 0);
    }
}

#[test]
fn a_breaker_waiter_whose_clock_panics_takes_no_probe() {
    // Open until 5 s: an attempt at 0 (refused, told when), one at 5 s
    // (the probe). A panic at the second leaves the breaker open, its
    // probe untaken.
    for n in 0..2 {
        let timer = FaultyTimer::new(u32::MAX);
        let b = breaker();
        for _ in 0..2 {
            b.try_acquire(timer.inner.now())
                .unwrap()
                .failure(timer.inner.now());
        }
        timer.panic_at.set(timer.reads.get() + n);
        let mut waiter = Box::pin(acquire(&b, &timer, at_ms(10_000)));
        assert!(drive_until_panic(&mut waiter, &timer), "reading {n}");
        drop(waiter);
        assert_eq!(timer.inner.sleepers(), 0);
        let s = b.snapshot(timer.inner.now());
        assert_eq!(
            (s.state, s.probes_admitted),
            (BreakerState::Open, 0),
            "reading {n}"
        );
        timer.panic_at.set(u32::MAX);
        timer.inner.advance_to(at_ms(5_000));
        let probe = block_on(acquire(&b, &timer, at_ms(10_000))).unwrap();
        assert!(probe.is_probe());
        probe.success(timer.inner.now());
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
