//! Nothing here allocates per call: a counting global allocator (counting
//! per thread, so that tests running in parallel do not see each other's
//! allocations) sees zero allocations across guarded futures over every
//! policy (admitted, rejected, completed, cancelled), waiting for a permit
//! on a `ManualTimer` once its sleeper list has grown, and emitting into a
//! `WakingSink` and polling its `EventStream` (ready, and pending with the
//! waker registered and then woken).

mod common;

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use common::*;
use futures::StreamExt;
use tenlives_engine::events::{Event, EventKind, EventRing, EventSink, Received};
use tenlives_engine::time::{Clock, ManualClock, Timestamp};
use tenlives_futures::{ManualTimer, WakingSink, acquire, guard, limit};

use tenlives_test_support::{CountingAllocator, allocations_during};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Polls `fut` with a noop waker until it completes (it wakes itself).
fn run<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    for _ in 0..100 {
        if let Poll::Ready(out) = poll_once(fut.as_mut()) {
            return out;
        }
    }
    panic!("did not complete in 100 polls");
}

/// Every policy: a completed call of each outcome, a rejected one, and one
/// dropped mid-flight.
fn guarded_calls(clock: &ManualClock, round: u32) {
    let b = breaker();
    let bh = bulkhead(1);
    let a = adaptive(clock);
    let t = throttle();
    for result in [Ok(1), Err("boom"), Ok(0)] {
        assert!(run(guard(&b, clock, classify, Steps::new(2, result))).is_ok());
        assert!(run(guard(&a, clock, classify, Steps::new(2, result))).is_ok());
        assert!(run(guard(&t, clock, classify, Steps::new(2, result))).is_ok());
        assert!(run(limit(&bh, Steps::new(2, result))).is_ok());
    }
    b.force_open(clock.now());
    assert!(run(guard(&b, clock, classify, Steps::new(0, Ok(1)))).is_err());
    {
        // Dropped after its first poll, holding the permit.
        let mut cancelled = pin!(limit(&bh, Steps::new(5, round)));
        assert!(poll_once(cancelled.as_mut()).is_pending());
        assert!(run(limit(&bh, Steps::new(0, round))).is_err(), "full");
    }
    assert_eq!((bh.in_flight(), a.in_flight()), (0, 0));
}

#[test]
fn guarded_futures_never_allocate() {
    let clock = ManualClock::new();
    // Warm up: the engine's first use of a thread's stripe touches a
    // thread-local.
    guarded_calls(&clock, 0);
    let allocations = allocations_during(|| {
        for round in 1..200 {
            guarded_calls(&clock, round);
        }
    });
    assert_eq!(allocations, 0, "guarded futures allocated");
}

#[test]
fn waiting_on_a_warm_manual_timer_never_allocates() {
    let timer = ManualTimer::new();
    let bh = bulkhead(1);
    let wait_out = |deadline: Timestamp| {
        let held = bh.try_acquire().unwrap();
        let mut waiter = pin!(acquire(&bh, &timer, deadline));
        for _ in 0..100 {
            if let Poll::Ready(r) = poll_once(waiter.as_mut()) {
                assert!(r.is_err(), "timed out");
                return;
            }
            timer.advance_to_next();
        }
        drop(held);
        panic!("did not time out");
    };
    wait_out(at_ms(20)); // grows the sleeper list to its one entry
    let allocations = allocations_during(|| {
        for i in 1..100 {
            wait_out(timer.now().saturating_add(ms(i)));
        }
    });
    assert_eq!(allocations, 0, "waiting allocated");
}

#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn emitting_and_polling_the_stream_never_allocate() {
    let sink = WakingSink::new(EventRing::with_capacity(64).unwrap());
    let mut stream = sink.stream().unwrap();
    let counter = Arc::new(CountingWaker::default());
    let waker = Waker::from(counter.clone());
    let mut cx = Context::from_waker(&waker);
    let allocations = allocations_during(|| {
        for i in 0..10_000u64 {
            // Pending: registers (clones the waker: a reference count).
            assert!(stream.poll_next_unpin(&mut cx).is_pending());
            let e = Event::new(EventKind::USER, 1, Timestamp::from_nanos(i), [i, 0]);
            sink.emit(e); // wakes (and drops) the registered clone
            sink.emit(e); // nobody registered
            assert_eq!(
                stream.poll_next_unpin(&mut cx),
                Poll::Ready(Some(Received::Event(e)))
            );
            assert!(stream.poll_next_unpin(&mut cx).is_ready());
        }
        for i in 0..200 {
            sink.emit(Event::new(EventKind::USER, 1, Timestamp::ZERO, [i, 0]));
        }
        assert_eq!(
            stream.poll_next_unpin(&mut cx),
            Poll::Ready(Some(Received::Lost(136)))
        );
    });
    assert_eq!(allocations, 0, "the stream allocated");
    assert_eq!(counter.0.load(Ordering::Relaxed), 10_000);
}
