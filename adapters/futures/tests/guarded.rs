//! Guarded futures over every policy, under two executors
//! (`futures::executor` and tokio's current-thread runtime): outcomes reach
//! the policy, admission happens on the first poll, and a future dropped at
//! any await point, or whose inner future panics at any poll, holds nothing
//! afterwards.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::task::Poll;

use common::*;
use futures::executor::block_on;
use tenlives_engine::breaker::{BreakerState, RejectReason};
use tenlives_engine::time::{Clock, ManualClock};
use tenlives_futures::{Admission, guard, limit};

/// Await points of the inner future in the cancellation and panic tests.
const AWAITS: u32 = 3;

/// The checks of `outcomes_reach_each_policy`, as one future any executor
/// can run.
async fn outcomes_reach_each_policy() {
    let clock = ManualClock::new();

    // Breaker: success and failure are counted in its window, "ignored" is
    // not; two failures in a row open it; then calls are rejected unrun.
    let b = breaker();
    assert_eq!(
        guard(&b, &clock, classify, Steps::new(2, Ok(1))).await,
        Ok(Ok(1))
    );
    assert_eq!(
        guard(&b, &clock, classify, Steps::new(1, Ok(0))).await,
        Ok(Ok(0))
    );
    let w = b.snapshot(clock.now()).window;
    assert_eq!((w.calls, w.failures), (1, 0));
    for _ in 0..2 {
        let r = guard(&b, &clock, classify, Steps::new(1, Err("boom"))).await;
        assert_eq!(r, Ok(Err("boom")));
    }
    assert_eq!(b.state(), BreakerState::Open);
    let mut ran = false;
    let r = guard(&b, &clock, classify, async {
        ran = true;
        Ok(1)
    })
    .await;
    assert_eq!(r.unwrap_err().reason(), RejectReason::Open);
    assert!(!ran, "a rejected call never runs");

    // Bulkhead: the permit is held while the inner future runs; a second
    // call while it runs is rejected at once.
    let bh = bulkhead(1);
    let inside = limit(&bh, async {
        let held = bh.in_flight();
        Steps::new(2, held).await
    })
    .await;
    assert_eq!((inside, bh.in_flight()), (Ok(1), 0));
    let (first, second) =
        futures::join!(limit(&bh, Steps::new(3, 1)), limit(&bh, Steps::new(0, 2)));
    assert_eq!(first, Ok(1));
    let full = second.unwrap_err();
    assert_eq!((full.in_flight(), full.limit()), (1, 1));
    assert_eq!(bh.in_flight(), 0);

    // Adaptive limiter: success and failure are samples, "ignored" is not.
    let a = adaptive(&clock);
    for (result, samples) in [(Ok(1), 1), (Err("timeout"), 2), (Ok(0), 2)] {
        let r = guard(&a, &clock, classify, Steps::new(1, result)).await;
        assert_eq!(r, Ok(result));
        assert_eq!((a.pending_samples(), a.in_flight()), (samples, 0));
    }

    // Throttle: success is an accepted request, failure a refused one,
    // "ignored" is not counted.
    let t = throttle();
    for (result, counts) in [(Ok(1), (1, 1)), (Err("503"), (2, 1)), (Ok(0), (2, 1))] {
        let r = guard(&t, &clock, classify, Steps::new(1, result)).await;
        assert_eq!(r, Ok(result));
        assert_eq!(t.counts(clock.now()), counts);
    }
}

#[test]
fn outcomes_reach_each_policy_on_futures_executor() {
    block_on(outcomes_reach_each_policy());
}

#[tokio::test(flavor = "current_thread")]
async fn outcomes_reach_each_policy_on_tokio() {
    outcomes_reach_each_policy().await;
}

#[test]
fn admission_happens_on_the_first_poll_not_at_creation() {
    let bh = bulkhead(1);
    let first = limit(&bh, Steps::new(1, 1));
    let second = limit(&bh, Steps::new(1, 2));
    assert_eq!(bh.in_flight(), 0, "made, not polled: nothing held");
    // The one polled first gets the permit, whichever was made first.
    let mut second = pin!(second);
    assert!(poll_once(second.as_mut()).is_pending());
    assert_eq!(bh.in_flight(), 1);
    assert!(block_on(first).is_err());
    assert_eq!(block_on(second), Ok(2));
    assert_eq!(bh.in_flight(), 0);
}

/// Polls a guarded future over `policy` `polls` times (fewer if it
/// completes), checks that `held` says `held_while_running` meanwhile, drops
/// it, and checks that
/// `held` is back to zero and that `recorded` moved by one if it completed
/// (and `records` says the policy records completions), else not at all.
fn drop_after<P: Admission>(
    policy: &P,
    clock: &ManualClock,
    polls: u32,
    held: impl Fn() -> u32,
    held_while_running: u32,
    records: bool,
    recorded: impl Fn() -> u64,
) {
    let before = recorded();
    let mut fut = Box::pin(guard(policy, clock, classify, Steps::new(AWAITS, Ok(1))));
    let mut completed = false;
    for i in 0..polls {
        match poll_once(fut.as_mut()) {
            Poll::Ready(r) => {
                assert!(r.is_ok(), "admitted");
                completed = true;
                break;
            }
            Poll::Pending => assert_eq!(held(), held_while_running, "poll {i}: running"),
        }
    }
    drop(fut);
    assert_eq!(held(), 0, "dropped after {polls} polls: the permit is back");
    if completed && records {
        assert_eq!(recorded(), before + 1, "completed: recorded once");
    } else {
        assert_eq!(
            recorded(),
            before,
            "dropped after {polls} polls: nothing recorded"
        );
    }
}

#[test]
fn a_future_dropped_at_any_await_point_holds_nothing() {
    for polls in 0..=AWAITS + 1 {
        let clock = ManualClock::new();

        let b = half_open_breaker(&clock);
        drop_after(
            &b,
            &clock,
            polls,
            || b.snapshot(clock.now()).probes_admitted,
            1,
            true,
            || u64::from(b.state() == BreakerState::Closed),
        );

        let bh = bulkhead(2);
        drop_after(&bh, &clock, polls, || bh.in_flight(), 1, false, || 0);

        let a = adaptive(&clock);
        drop_after(
            &a,
            &clock,
            polls,
            || a.in_flight(),
            1,
            true,
            || a.pending_samples(),
        );

        let t = throttle();
        drop_after(&t, &clock, polls, || 0, 0, true, || t.counts(clock.now()).0);
    }
}

/// Runs a guarded future over `policy` whose inner future panics at poll
/// `at`, and checks that the panic came through and `held` is back to zero.
fn panic_at<P: Admission>(policy: &P, clock: &ManualClock, at: u32, held: impl Fn() -> u32) {
    let inner = Steps::new(AWAITS, Ok(1)).panicking_at(at);
    let result = catch_unwind(AssertUnwindSafe(|| {
        block_on(guard(policy, clock, classify, inner))
    }));
    assert!(result.is_err(), "the panic propagates");
    assert_eq!(held(), 0, "panicked at poll {at}: the permit is back");
}

#[test]
fn a_panic_at_any_poll_releases_the_permit() {
    for at in 0..=AWAITS {
        let clock = ManualClock::new();
        let b = half_open_breaker(&clock);
        panic_at(&b, &clock, at, || b.snapshot(clock.now()).probes_admitted);
        assert_eq!(b.state(), BreakerState::HalfOpen, "a panic is no outcome");

        let bh = bulkhead(1);
        panic_at(&bh, &clock, at, || bh.in_flight());

        let a = adaptive(&clock);
        panic_at(&a, &clock, at, || a.in_flight());
        assert_eq!(a.pending_samples(), 0);

        let t = throttle();
        panic_at(&t, &clock, at, || 0);
        assert_eq!(t.counts(clock.now()), (0, 0));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_panicking_tokio_task_releases_the_permit() {
    let bh: &'static _ = Box::leak(Box::new(bulkhead(1)));
    for at in 0..=AWAITS {
        let task = tokio::spawn(limit(bh, Steps::new(AWAITS, 1).panicking_at(at)));
        let joined = task.await;
        assert!(joined.unwrap_err().is_panic());
        assert_eq!(bh.in_flight(), 0);
    }
    // An aborted task is a cancellation: its permit comes back too.
    let task = tokio::spawn(limit(bh, std::future::pending::<()>()));
    tokio::task::yield_now().await;
    assert_eq!(bh.in_flight(), 1, "the task runs and holds the permit");
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(bh.in_flight(), 0);
}

/// A clock that counts its readings.
struct Counting {
    inner: ManualClock,
    reads: std::cell::Cell<u32>,
}

impl Clock for Counting {
    fn now(&self) -> tenlives_engine::time::Timestamp {
        self.reads.set(self.reads.get() + 1);
        self.inner.now()
    }
}

#[test]
fn a_guarded_breaker_reads_the_clock_only_where_a_rule_needs_it() {
    use core::time::Duration;
    use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker};
    let clock = Counting {
        inner: ManualClock::new(),
        reads: std::cell::Cell::new(0),
    };
    let reads_for = |b: &CircuitBreaker, result: Result<u32, &'static str>| {
        let before = clock.reads.get();
        let _ = block_on(guard(b, &clock, classify, Steps::new(1, result)));
        clock.reads.get() - before
    };
    // Consecutive failures alone: a success reads nothing; a failure reads
    // its end (it may open the breaker); an open breaker reads at admission.
    let consecutive = CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .build()
            .unwrap(),
    );
    assert_eq!(reads_for(&consecutive, Ok(1)), 0);
    assert_eq!(reads_for(&consecutive, Err("boom")), 1);
    assert_eq!(consecutive.state(), BreakerState::Open);
    assert_eq!(reads_for(&consecutive, Ok(1)), 1);
    // A time window finds a success's bucket by its end; a slow-call rule
    // also measures from the admission.
    let window = CircuitBreaker::new(BreakerConfig::default());
    assert_eq!(reads_for(&window, Ok(1)), 1);
    let slow = CircuitBreaker::new(
        BreakerConfig::builder()
            .slow_calls(50.0, Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    assert_eq!(reads_for(&slow, Ok(1)), 2);
}

/// A clock on `inner` whose reading number `panic_at` (from its making)
/// panics.
struct Faulty {
    inner: ManualClock,
    reads: std::cell::Cell<u32>,
    panic_at: std::cell::Cell<u32>,
}

impl Faulty {
    fn new() -> Self {
        Faulty {
            inner: ManualClock::new(),
            reads: std::cell::Cell::new(0),
            panic_at: std::cell::Cell::new(u32::MAX),
        }
    }
}

impl Clock for Faulty {
    fn now(&self) -> tenlives_engine::time::Timestamp {
        let n = self.reads.get();
        self.reads.set(n + 1);
        if n == self.panic_at.get() {
            panic!("the clock panicked");
        }
        self.inner.now()
    }
}

/// For a guarded call over the policy `make` builds (on the clock it is
/// given) that ends with `result` after one `Pending`: counts the clock
/// readings of a run without a panic, then, for each of them, a run where
/// that reading panics. The panic reaches the caller, and the policy is
/// left (`state`: what it holds and what it recorded) as if the call had
/// never been made, for a reading at admission, or as if it had been
/// cancelled after its admission, for a reading at its end; a call made
/// a second later with a sound clock is admitted and completes.
fn each_reading_panics<P: Admission>(
    name: &str,
    make: impl Fn(&ManualClock) -> P,
    state: impl Fn(&P, &ManualClock) -> String,
    result: Result<u32, &'static str>,
) {
    let clock = Faulty::new();
    let p = make(&clock.inner);
    let before = clock.reads.get();
    let mut fut = Box::pin(guard(&p, &clock, classify, Steps::new(1, result)));
    assert!(poll_once(fut.as_mut()).is_pending());
    let at_admission = clock.reads.get() - before;
    assert!(block_on(fut).is_ok());
    let reads = clock.reads.get() - before;
    assert!(reads > 0, "{name}: no reading to make panic");
    for n in 0..reads {
        // The twin: untouched, or its call admitted and dropped.
        let sound = ManualClock::new();
        let twin = make(&sound);
        if n >= at_admission {
            let mut fut = Box::pin(guard(&twin, &sound, classify, Steps::new(1, result)));
            assert!(poll_once(fut.as_mut()).is_pending());
        }
        let expected = state(&twin, &sound);
        let clock = Faulty::new();
        let p = make(&clock.inner);
        clock.panic_at.set(clock.reads.get() + n);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            block_on(guard(&p, &clock, classify, Steps::new(1, result)))
        }));
        let what = format!("{name} {result:?}, reading {n} of {reads} panicking");
        let Err(payload) = caught else {
            panic!("{what}: the panic did not reach the caller")
        };
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"the clock panicked"));
        assert_eq!(state(&p, &clock.inner), expected, "{what}");
        clock.panic_at.set(u32::MAX);
        // (Past a scouting breaker's next scout.)
        clock.inner.advance(core::time::Duration::from_secs(1));
        let again = block_on(guard(&p, &clock, classify, Steps::new(1, Ok(1))));
        assert!(matches!(again, Ok(Ok(1))), "{what}: admitted afterwards");
    }
}

#[test]
fn a_panicking_clock_leaves_every_policy_as_it_was() {
    use core::time::Duration;
    use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker};
    let breaker_state = |b: &CircuitBreaker, clock: &ManualClock| {
        format!("{:?} {}", b.snapshot(clock.now()), b.scouts_in_flight())
    };
    let scouting = |clock: &ManualClock| {
        let b = CircuitBreaker::new(
            BreakerConfig::builder()
                .without_failure_rate()
                .consecutive_failures(1)
                .open_duration(Duration::from_secs(1))
                .half_open_probes(1)
                .probe_every(Duration::from_millis(100))
                .build()
                .unwrap(),
        );
        b.try_acquire(clock.now()).unwrap().failure(clock.now());
        clock.advance(Duration::from_secs(1));
        b
    };
    let slow = |_: &ManualClock| {
        CircuitBreaker::new(
            BreakerConfig::builder()
                .without_failure_rate()
                .slow_calls(50.0, Duration::from_secs(1))
                .build()
                .unwrap(),
        )
    };
    for result in [Ok(1), Err("boom")] {
        // The probe of a half-open breaker: its slot comes back.
        each_reading_panics("half-open", half_open_breaker, breaker_state, result);
        // The scout of an open one: no longer counted.
        each_reading_panics("scouting", scouting, breaker_state, result);
        // A closed breaker timing its calls: nothing counted.
        each_reading_panics("slow rule", slow, breaker_state, result);
        each_reading_panics(
            "adaptive",
            adaptive,
            |a, _| format!("{} {}", a.in_flight(), a.pending_samples()),
            result,
        );
        each_reading_panics(
            "throttle",
            |_| throttle(),
            |t, clock| format!("{:?}", t.counts(clock.now())),
            result,
        );
    }
}
