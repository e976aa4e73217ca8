//! The permit matrix: every permit-holding policy of a guarded future (and
//! of `acquire`), times every way a guarded call can end other than by
//! completing (a panic in the inner future on the poll that admits it or on
//! a later one, a panic in the classifier, a drop before the first poll or
//! mid-flight, a timeout on the manual timer, a waiter cancelled while it
//! waits for capacity), leaves nothing held: no bulkhead or adaptive permit,
//! no half-open probe slot. After each case nothing was recorded and the
//! next guarded call is admitted.
//!
//! Each row is a [`Row`] (a policy made fresh for every case, with what it
//! holds and what it recorded); each column a [`Case`]; [`matrix`] runs a
//! row's cases.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::task::Poll;

use common::*;
use futures::executor::block_on;
use futures::future::{Either, select};
use tenlives_engine::adaptive::{AdaptiveLimiter, Aimd};
use tenlives_engine::breaker::{BreakerState, CircuitBreaker, Outcome};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::time::Timestamp;
use tenlives_futures::{Admission, ManualTimer, Timer, TryAdmit, acquire, guard};

/// The answer the classifier panics on.
const CLASSIFIER_PANICS: u32 = 666;

/// [`classify`], except that it panics on `Ok(CLASSIFIER_PANICS)`.
fn classify_or_panic(result: &Result<u32, &'static str>) -> Outcome {
    if *result == Ok(CLASSIFIER_PANICS) {
        panic!("the classifier panicked");
    }
    classify(result)
}

/// One way a guarded call ends without completing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    /// The inner future panics in the poll that admits it (the first): the
    /// earliest user code that runs with the permit held.
    PanicOnAdmission,
    /// The inner future panics in a later poll, after a `Pending`.
    PanicLater,
    /// The guarded future is dropped before its first poll.
    DropBeforePoll,
    /// The guarded future is dropped after a `Pending`.
    DropMidFlight,
    /// A sleep on the manual timer wins a race with the call, which is
    /// dropped.
    TimedOut,
    /// The call answers `Ok(CLASSIFIER_PANICS)` and the classifier panics.
    PanicInClassifier,
    /// The policy is full and an `acquire` waiting for it is dropped, then
    /// the call that held the capacity ends.
    CancelledWhileWaiting,
}

use Case::*;

/// Every column.
const ALL: &[Case] = &[
    PanicOnAdmission,
    PanicLater,
    DropBeforePoll,
    DropMidFlight,
    TimedOut,
    PanicInClassifier,
    CancelledWhileWaiting,
];

/// A closed breaker makes nobody wait: every column but the waiting one.
const NEVER_FULL: &[Case] = &[
    PanicOnAdmission,
    PanicLater,
    DropBeforePoll,
    DropMidFlight,
    TimedOut,
    PanicInClassifier,
];

/// A row of the matrix: a policy, and how to read it.
struct Row<P> {
    policy: P,
    /// What the policy holds now: permits in flight, probe slots taken.
    held: fn(&P, &ManualTimer) -> u32,
    /// What `held` reads while one call runs.
    one_call: u32,
    /// How many outcomes the policy has recorded.
    recorded: fn(&P, &ManualTimer) -> u64,
}

/// Runs `cases` on fresh rows from `make`: each case, then the checks that
/// nothing is held, nothing recorded, and that the next guarded call is
/// admitted and completes.
fn matrix<P: Admission + TryAdmit>(name: &str, make: fn(&ManualTimer) -> Row<P>, cases: &[Case]) {
    for &case in cases {
        let timer = ManualTimer::new();
        let row = make(&timer);
        let held = || (row.held)(&row.policy, &timer);
        let recorded = || (row.recorded)(&row.policy, &timer);
        assert_eq!((held(), recorded()), (0, 0), "{name}/{case:?}: a fresh row");
        run(case, &row, &timer, &held);
        assert_eq!(held(), 0, "{name}/{case:?}: everything given back");
        assert_eq!(recorded(), 0, "{name}/{case:?}: nothing recorded");
        let next = block_on(guard(
            &row.policy,
            timer.clock(),
            classify,
            Steps::new(1, Ok(1)),
        ));
        assert!(
            matches!(next, Ok(Ok(1))),
            "{name}/{case:?}: the next call is admitted"
        );
        assert_eq!(held(), 0, "{name}/{case:?}: and gives back what it took");
    }
}

/// A guarded call over `row`'s policy, of `inner`.
type Call<'a, P> = tenlives_futures::Guarded<
    'a,
    P,
    Steps<Result<u32, &'static str>>,
    &'a tenlives_engine::time::ManualClock,
    fn(&Result<u32, &'static str>) -> Outcome,
>;

fn call<'a, P: Admission>(
    row: &'a Row<P>,
    timer: &'a ManualTimer,
    inner: Steps<Result<u32, &'static str>>,
) -> Call<'a, P> {
    let classify: fn(&Result<u32, &'static str>) -> Outcome = classify_or_panic;
    guard(&row.policy, timer.clock(), classify, inner)
}

/// A call that never ends.
fn never() -> Steps<Result<u32, &'static str>> {
    Steps::new(u32::MAX, Ok(1))
}

/// Polls `fut` once, expecting it to panic.
fn poll_panics<F: Future + ?Sized>(fut: Pin<&mut F>, what: &str) {
    let unwound = catch_unwind(AssertUnwindSafe(|| poll_once(fut)));
    assert!(unwound.is_err(), "{what} panicked through the poll");
}

/// One case on a fresh `row`.
fn run<P: Admission + TryAdmit>(
    case: Case,
    row: &Row<P>,
    timer: &ManualTimer,
    held: &dyn Fn() -> u32,
) {
    let one = row.one_call;
    match case {
        PanicOnAdmission => {
            let fut = pin!(call(row, timer, Steps::new(1, Ok(1)).panicking_at(0)));
            poll_panics(fut, "the inner future");
        }
        PanicLater => {
            let mut fut = pin!(call(row, timer, Steps::new(2, Ok(1)).panicking_at(1)));
            assert!(poll_once(fut.as_mut()).is_pending());
            assert_eq!(held(), one, "held while running");
            poll_panics(fut, "the inner future");
        }
        DropBeforePoll => {
            drop(call(row, timer, Steps::new(1, Ok(1))));
        }
        DropMidFlight => {
            let mut fut = pin!(call(row, timer, never()));
            assert!(poll_once(fut.as_mut()).is_pending());
            assert_eq!(held(), one, "held while running");
        }
        TimedOut => {
            let deadline = timer.now().saturating_add(ms(10));
            let running = Box::pin(call(row, timer, never()));
            let mut race = select(running, Box::pin(timer.sleep_until(deadline)));
            assert!(poll_once(Pin::new(&mut race)).is_pending());
            assert_eq!(held(), one, "held while running");
            timer.advance(ms(10));
            let Poll::Ready(Either::Right(((), unfinished))) = poll_once(Pin::new(&mut race))
            else {
                panic!("the sleep won the race");
            };
            assert_eq!(held(), one, "held until the loser is dropped");
            drop(unfinished);
            assert_eq!(held(), 0, "given back when the loser is dropped");
        }
        PanicInClassifier => {
            let mut fut = pin!(call(row, timer, Steps::new(0, Ok(CLASSIFIER_PANICS))));
            poll_panics(fut.as_mut(), "the classifier");
            assert_eq!(held(), 0, "given back at once, not when dropped");
            assert!(poll_once(fut).is_pending(), "done: polled again, pending");
        }
        CancelledWhileWaiting => {
            let mut running = pin!(call(row, timer, never()));
            assert!(poll_once(running.as_mut()).is_pending());
            {
                let mut waiter = pin!(acquire(&row.policy, timer, Timestamp::MAX));
                assert!(poll_once(waiter.as_mut()).is_pending(), "full: waits");
                timer.advance_to_next();
                assert!(poll_once(waiter.as_mut()).is_pending(), "still full");
                assert_eq!(timer.sleepers(), 1, "sleeping on the timer");
            }
            assert_eq!(timer.sleepers(), 0, "the waiter's sleep is gone");
            assert_eq!(held(), one, "the waiter took nothing");
        }
    }
}

fn probes_taken(b: &CircuitBreaker, timer: &ManualTimer) -> u32 {
    b.snapshot(timer.now()).probes_admitted
}

fn breaker_closed(_: &ManualTimer) -> Row<CircuitBreaker> {
    Row {
        policy: breaker(),
        // A closed breaker holds nothing countable; what it recorded shows a
        // call that was not given back as one that was counted.
        held: |_, _| 0,
        one_call: 0,
        recorded: |b, t| b.snapshot(t.now()).window.calls,
    }
}

fn breaker_half_open(timer: &ManualTimer) -> Row<CircuitBreaker> {
    Row {
        policy: half_open_breaker(timer.clock()),
        held: probes_taken,
        one_call: 1,
        // A probe reported closes the breaker, or opens it a second time.
        recorded: |b, t| {
            let s = b.snapshot(t.now());
            let decided = match s.state {
                BreakerState::Closed => true,
                BreakerState::Open => s.trips > 1,
                _ => false,
            };
            u64::from(s.probes_reported) + u64::from(decided)
        },
    }
}

fn concurrency_limit(_: &ManualTimer) -> Row<Bulkhead> {
    Row {
        policy: bulkhead(1),
        held: |b, _| b.in_flight(),
        one_call: 1,
        recorded: |_, _| 0,
    }
}

/// A limit of one permit: the next call is admitted only if it came back.
fn adaptive_limit(timer: &ManualTimer) -> Row<AdaptiveLimiter<Aimd>> {
    let aimd = Aimd::builder().limits(1, 1, 10).build().unwrap();
    let window = tenlives_engine::adaptive::WindowConfig::new(ms(3_600_000), 1).unwrap();
    Row {
        policy: AdaptiveLimiter::new(aimd, window, timer.now()),
        held: |a, _| a.in_flight(),
        one_call: 1,
        recorded: |a, _| a.pending_samples(),
    }
}

#[test]
fn breaker_closed_gives_everything_back() {
    matrix("breaker closed", breaker_closed, NEVER_FULL);
}

#[test]
fn breaker_half_open_gives_its_probe_slot_back() {
    matrix("breaker half-open", breaker_half_open, ALL);
}

#[test]
fn concurrency_limit_gives_its_permit_back() {
    matrix("concurrency limit", concurrency_limit, ALL);
}

#[test]
fn adaptive_limit_gives_its_permit_back() {
    matrix("adaptive limit", adaptive_limit, ALL);
}
