//! The admission queue's behaviour, one rule at a time, single-threaded:
//! the fast path (Q7), hand-over and cancellation (Q1, Q2), overload
//! policies (Q6), deadlines, configuration errors and events.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use tenlives_engine::ConfigError;
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::events::{EventKind, EventRing, Received};
use tenlives_engine::queue::{
    AdmissionQueue, MAX_CAPACITY, Overload, QueueConfig, QueuePermit, Rejected, Waiter,
};
use tenlives_engine::time::{ManualClock, Timestamp};

type Queue = AdmissionQueue<Bulkhead>;

/// A waker that counts its wakes.
#[derive(Default)]
struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counting() -> (Arc<Count>, Waker) {
    let count = Arc::new(Count::default());
    (count.clone(), Waker::from(count))
}

fn wakes(count: &Count) -> usize {
    count.0.load(Ordering::SeqCst)
}

fn queue(limit: u32, config: QueueConfig) -> Queue {
    AdmissionQueue::new(Bulkhead::new(limit).unwrap(), config)
}

fn enqueue<'q>(q: &'q Queue, class: u16) -> Waiter<'q, Bulkhead> {
    q.enqueue(class, Timestamp::MAX, Waker::noop()).unwrap()
}

fn poll<'q>(w: &mut Waiter<'q, Bulkhead>) -> Poll<Result<QueuePermit<'q, Bulkhead>, Rejected>> {
    w.poll_permit(&mut Context::from_waker(Waker::noop()), Timestamp::ZERO)
}

fn granted<'q>(w: &mut Waiter<'q, Bulkhead>) -> QueuePermit<'q, Bulkhead> {
    match poll(w) {
        Poll::Ready(Ok(p)) => p,
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn rejected(w: &mut Waiter<'_, Bulkhead>) -> Rejected {
    match poll(w) {
        Poll::Ready(Err(r)) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn the_fast_path_takes_free_permits_and_never_queues() {
    let q = queue(2, QueueConfig::fifo(4).unwrap());
    let a = q.try_acquire().unwrap();
    let b = q.try_acquire().unwrap();
    let busy = q.try_acquire().unwrap_err();
    assert_eq!(busy.waiting(), 0, "the source is out of permits");
    assert_eq!(q.waiting(), 0);
    drop((a, b));
    assert_eq!(q.source().in_flight(), 0);
}

#[test]
fn waiters_go_before_newcomers_even_when_the_source_has_room() {
    let q = queue(1, QueueConfig::fifo(4).unwrap());
    let held = q.try_acquire().unwrap();
    let mut w = enqueue(&q, 0);
    // Room appears behind the queue's back: newcomers still may not jump.
    q.source().set_limit(2).unwrap();
    assert_eq!(q.try_acquire().unwrap_err().waiting(), 1);
    assert!(poll(&mut w).is_pending());
    q.dispatch();
    let p = granted(&mut w);
    assert_eq!(q.waiting(), 0);
    drop((held, p));
    assert_eq!(q.source().in_flight(), 0);
}

#[test]
fn fifo_hands_each_release_to_the_next_waiter() {
    let q = queue(1, QueueConfig::fifo(8).unwrap());
    let held = q.try_acquire().unwrap();
    let mut ws: Vec<_> = (0..3).map(|_| enqueue(&q, 0)).collect();
    assert_eq!(q.waiting(), 3);
    assert!(ws.iter_mut().all(|w| poll(w).is_pending()));
    drop(held);
    assert_eq!(
        q.source().in_flight(),
        1,
        "handed over, never returned in between"
    );
    let p0 = granted(&mut ws[0]);
    assert!(poll(&mut ws[1]).is_pending());
    drop(p0);
    let p1 = granted(&mut ws[1]);
    drop(p1);
    let p2 = granted(&mut ws[2]);
    drop(p2);
    assert_eq!(q.source().in_flight(), 0);
    assert_eq!(q.waiting(), 0);
}

#[test]
fn a_cancelled_waiter_is_skipped() {
    let q = queue(1, QueueConfig::fifo(8).unwrap());
    let held = q.try_acquire().unwrap();
    let a = enqueue(&q, 0);
    let mut b = enqueue(&q, 0);
    drop(a);
    assert_eq!(q.waiting(), 1);
    drop(held);
    let p = granted(&mut b);
    drop(p);
    assert_eq!(q.source().in_flight(), 0);
}

#[test]
fn a_waiter_dropped_after_its_grant_passes_the_permit_on() {
    let q = queue(1, QueueConfig::fifo(8).unwrap());
    let held = q.try_acquire().unwrap();
    let (count_a, waker_a) = counting();
    let a = q.enqueue(0, Timestamp::MAX, &waker_a).unwrap();
    let (count_b, waker_b) = counting();
    let mut b = q.enqueue(0, Timestamp::MAX, &waker_b).unwrap();
    drop(held);
    assert_eq!((wakes(&count_a), wakes(&count_b)), (1, 0));
    drop(a); // granted but never polled: the permit goes to b
    assert_eq!((wakes(&count_a), wakes(&count_b)), (1, 1));
    let p = granted(&mut b);
    assert_eq!(q.source().in_flight(), 1);
    drop(p);
    assert_eq!(q.source().in_flight(), 0);
}

#[test]
fn a_repoll_replaces_the_waker() {
    let q = queue(1, QueueConfig::fifo(2).unwrap());
    let held = q.try_acquire().unwrap();
    let (first, waker_first) = counting();
    let (second, waker_second) = counting();
    let mut w = q.enqueue(0, Timestamp::MAX, &waker_first).unwrap();
    let mut cx = Context::from_waker(&waker_second);
    assert!(w.poll_permit(&mut cx, Timestamp::ZERO).is_pending());
    drop(held);
    assert_eq!((wakes(&first), wakes(&second)), (0, 1));
    let Poll::Ready(Ok(p)) = w.poll_permit(&mut cx, Timestamp::ZERO) else {
        panic!("granted")
    };
    drop(p);
}

#[test]
fn shed_newest_refuses_the_newcomer_at_once() {
    let q = queue(1, QueueConfig::fifo(2).unwrap());
    let held = q.try_acquire().unwrap();
    let _a = enqueue(&q, 0);
    let _b = enqueue(&q, 0);
    assert_eq!(
        q.enqueue(0, Timestamp::MAX, Waker::noop()).unwrap_err(),
        Rejected::QueueFull
    );
    assert_eq!(q.waiting(), 2);
    drop(held);
}

#[test]
fn shed_oldest_wakes_the_oldest_in_the_newcomers_pass() {
    let config = QueueConfig::round_robin(2, 2)
        .unwrap()
        .overload(Overload::ShedOldest);
    let q = queue(1, config);
    let held = q.try_acquire().unwrap();
    let (oldest, waker) = counting();
    let mut a = q.enqueue(1, Timestamp::MAX, &waker).unwrap();
    let mut b = enqueue(&q, 0);
    let mut c = enqueue(&q, 1);
    assert_eq!(wakes(&oldest), 1, "woken by the pass that linked c");
    assert_eq!(rejected(&mut a), Rejected::ShedOldest);
    assert_eq!(q.waiting(), 2);
    drop(held);
    let pb = granted(&mut b);
    assert!(poll(&mut c).is_pending());
    drop(pb);
    drop(granted(&mut c));
    assert_eq!(q.source().in_flight(), 0);
}

#[test]
fn shed_lowest_priority_sheds_the_lightest_class_even_the_newcomer() {
    let config = QueueConfig::weighted(2, &[1, 4])
        .unwrap()
        .overload(Overload::ShedLowestPriority);
    let q = queue(1, config);
    let held = q.try_acquire().unwrap();
    let mut heavy1 = enqueue(&q, 1);
    let mut heavy2 = enqueue(&q, 1);
    // A light newcomer to a queue full of heavy waiters is itself shed.
    let mut light = enqueue(&q, 0);
    assert_eq!(rejected(&mut light), Rejected::ShedLowPriority);
    assert_eq!(q.waiting(), 2);
    drop(held);
    let p = granted(&mut heavy1);
    // One heavy waiter left; a light one joins, then another heavy one
    // overflows: the light one goes, though it is not the newest.
    let mut light = enqueue(&q, 0);
    let mut heavy3 = enqueue(&q, 1);
    assert_eq!(rejected(&mut light), Rejected::ShedLowPriority);
    assert!(poll(&mut heavy2).is_pending());
    assert!(poll(&mut heavy3).is_pending());
    drop(p);
    drop(granted(&mut heavy2));
    drop(granted(&mut heavy3));
    assert_eq!(q.source().in_flight(), 0);
}

#[test]
fn deadlines_time_out_on_poll_and_by_sweep() {
    let q = queue(1, QueueConfig::fifo(4).unwrap());
    let held = q.try_acquire().unwrap();
    let t = Timestamp::from_nanos;
    let mut by_poll = q.enqueue(0, t(100), Waker::noop()).unwrap();
    let (count, waker) = counting();
    let mut by_sweep = q.enqueue(0, t(200), &waker).unwrap();
    let mut later = q.enqueue(0, t(300), Waker::noop()).unwrap();
    let mut cx = Context::from_waker(Waker::noop());
    assert!(by_poll.poll_permit(&mut cx, t(99)).is_pending());
    assert!(matches!(
        by_poll.poll_permit(&mut cx, t(100)),
        Poll::Ready(Err(Rejected::TimedOut))
    ));
    assert_eq!(q.expire(t(250)), 1);
    assert_eq!(wakes(&count), 1);
    assert!(matches!(
        by_sweep.poll_permit(&mut cx, t(250)),
        Poll::Ready(Err(Rejected::TimedOut))
    ));
    assert_eq!(q.waiting(), 1);
    drop(held);
    // Granted before anyone looked at its deadline: it keeps the permit.
    assert!(matches!(
        later.poll_permit(&mut cx, t(400)),
        Poll::Ready(Ok(_))
    ));
    assert_eq!(q.expire(t(1000)), 0);
    assert_eq!(q.source().in_flight(), 0);
}

#[test]
#[should_panic(expected = "polled after it completed")]
fn a_waiter_polled_after_completion_panics() {
    let q = queue(1, QueueConfig::fifo(4).unwrap());
    let mut w = enqueue(&q, 0);
    drop(granted(&mut w));
    let _ = poll(&mut w);
}

#[test]
fn the_acquire_future_takes_queues_and_times_out() {
    let q = queue(1, QueueConfig::fifo(4).unwrap());
    let clock = ManualClock::new();
    let mut cx = Context::from_waker(Waker::noop());
    let mut first = pin!(q.acquire(0, Timestamp::MAX, &clock));
    let Poll::Ready(Ok(held)) = first.as_mut().poll(&mut cx) else {
        panic!("a free permit")
    };
    let deadline = Timestamp::from_nanos(1_000);
    let mut waits = pin!(q.acquire(0, deadline, &clock));
    assert!(waits.as_mut().poll(&mut cx).is_pending());
    clock.advance_to(deadline);
    assert!(matches!(
        waits.as_mut().poll(&mut cx),
        Poll::Ready(Err(Rejected::TimedOut))
    ));
    // A deadline already past at the first poll, with no permit free.
    let mut late = pin!(q.acquire(0, deadline, &clock));
    assert!(matches!(
        late.as_mut().poll(&mut cx),
        Poll::Ready(Err(Rejected::TimedOut))
    ));
    assert_eq!(q.waiting(), 0);
    drop(held);
    // Unknown classes are refused when the future would queue.
    let _held = q.try_acquire().unwrap();
    let mut unknown = pin!(q.acquire(3, Timestamp::MAX, &clock));
    assert!(matches!(
        unknown.as_mut().poll(&mut cx),
        Poll::Ready(Err(Rejected::UnknownClass {
            class: 3,
            classes: 1
        }))
    ));
}

#[test]
fn dropping_a_waiting_future_gives_up_its_place() {
    let q = queue(1, QueueConfig::fifo(4).unwrap());
    let clock = ManualClock::new();
    let mut cx = Context::from_waker(Waker::noop());
    let held = q.try_acquire().unwrap();
    {
        let mut f = pin!(q.acquire(0, Timestamp::MAX, &clock));
        assert!(f.as_mut().poll(&mut cx).is_pending());
        assert_eq!(q.waiting(), 1);
    }
    assert_eq!(q.waiting(), 0);
    drop(held);
    assert_eq!(q.source().in_flight(), 0);
}

#[test]
fn every_slot_in_use_refuses_whatever_the_policy() {
    let config = QueueConfig::fifo(1).unwrap().overload(Overload::ShedOldest);
    let q = queue(1, config);
    let held = q.try_acquire().unwrap();
    let mut a = enqueue(&q, 0);
    let mut b = enqueue(&q, 0); // sheds a, whose verdict is unread
    assert_eq!(
        q.enqueue(0, Timestamp::MAX, Waker::noop()).unwrap_err(),
        Rejected::QueueFull,
        "two slots: one waiter, one unread verdict"
    );
    assert_eq!(rejected(&mut a), Rejected::ShedOldest);
    let mut c = enqueue(&q, 0); // a's slot is free again; sheds b
    assert_eq!(rejected(&mut b), Rejected::ShedOldest);
    drop(held);
    drop(granted(&mut c));
}

#[test]
fn configuration_errors_are_typed() {
    assert_eq!(
        QueueConfig::fifo(0),
        Err(ConfigError::Zero { field: "capacity" })
    );
    assert_eq!(
        QueueConfig::fifo(MAX_CAPACITY + 1),
        Err(ConfigError::TooLarge {
            field: "capacity",
            value: u64::from(MAX_CAPACITY) + 1,
            max: u64::from(MAX_CAPACITY)
        })
    );
    assert_eq!(
        QueueConfig::round_robin(4, 0),
        Err(ConfigError::Zero { field: "classes" })
    );
    assert_eq!(
        QueueConfig::round_robin(4, 65),
        Err(ConfigError::TooLarge {
            field: "classes",
            value: 65,
            max: 64
        })
    );
    assert_eq!(
        QueueConfig::weighted(4, &[]),
        Err(ConfigError::Zero { field: "classes" })
    );
    assert_eq!(
        QueueConfig::weighted(4, &[2, 0]),
        Err(ConfigError::Zero { field: "weight" })
    );
    let q = queue(1, QueueConfig::round_robin(4, 2).unwrap());
    assert_eq!(
        q.enqueue(2, Timestamp::MAX, Waker::noop()).unwrap_err(),
        Rejected::UnknownClass {
            class: 2,
            classes: 2
        }
    );
    assert_eq!(
        Rejected::UnknownClass {
            class: 2,
            classes: 2
        }
        .to_string(),
        "class 2 does not exist; the admission queue has 2"
    );
}

#[test]
fn refusals_sheds_and_timeouts_are_reported() {
    let ring = EventRing::with_capacity(16).unwrap();
    let mut events = ring.consumer();
    let q = AdmissionQueue::with_sink(
        Bulkhead::new(1).unwrap(),
        QueueConfig::round_robin(1, 3).unwrap(),
        &ring,
        9,
    );
    let held = q.try_acquire().unwrap();
    let _w = q
        .enqueue(2, Timestamp::from_nanos(5), Waker::noop())
        .unwrap();
    assert!(q.enqueue(1, Timestamp::MAX, Waker::noop()).is_err());
    assert_eq!(q.expire(Timestamp::from_nanos(7)), 1);
    let mut seen = Vec::new();
    while let Some(Received::Event(e)) = events.try_recv() {
        assert_eq!((e.kind, e.source), (EventKind::QUEUE_REJECTED, 9));
        seen.push((e.payload, e.time.as_nanos()));
    }
    assert_eq!(seen, [([1, 1], 0), ([2, 4], 7)]);
    drop(held);
}

/// A waker that panics when woken unwinds through the release that granted
/// its waiter; the dispatcher role is given up, so the queue keeps working
/// (the panicking waiter's slot stays in use).
#[test]
fn a_panicking_waker_does_not_stop_the_queue() {
    struct Boom;
    impl Wake for Boom {
        fn wake(self: Arc<Self>) {
            panic!("waker panicked");
        }
    }
    let q = queue(1, QueueConfig::fifo(4).unwrap());
    let held = q.try_acquire().unwrap();
    let mut first = q
        .enqueue(0, Timestamp::MAX, &Waker::from(Arc::new(Boom)))
        .unwrap();
    let mut second = enqueue(&q, 0);
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(held)));
    assert!(unwound.is_err());
    let p = granted(&mut first);
    assert!(poll(&mut second).is_pending());
    drop(p);
    drop(granted(&mut second));
    assert_eq!(q.source().in_flight(), 0);
    assert_eq!(q.waiting(), 0);
}
