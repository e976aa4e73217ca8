//! The owned forms of the admission queue's caller side (`OwnedWaiter`,
//! `OwnedQueuePermit`, from a queue in an `Arc`): the same protocol as the
//! borrowed forms (Q1, Q2, Q6), Q8 (one `Arc` clone per wait, moved from the
//! waiter into the permit, dropped with any other verdict), and Q7 for the
//! owned paths (no allocation: a counting allocator in this binary).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::queue::{
    AdmissionQueue, Overload, OwnedQueuePermit, OwnedWaiter, QueueConfig, Rejected,
};
use tenlives_engine::time::Timestamp;
use tenlives_test_support::{CountingAllocator, allocations_during};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

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

fn queue(limit: u32, config: QueueConfig) -> Arc<Queue> {
    Arc::new(AdmissionQueue::new(Bulkhead::new(limit).unwrap(), config))
}

fn poll(w: &mut OwnedWaiter<Bulkhead>) -> Poll<Result<OwnedQueuePermit<Bulkhead>, Rejected>> {
    w.poll_permit(&mut Context::from_waker(Waker::noop()), Timestamp::ZERO)
}

fn granted(w: &mut OwnedWaiter<Bulkhead>) -> OwnedQueuePermit<Bulkhead> {
    match poll(w) {
        Poll::Ready(Ok(p)) => p,
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn rejected(w: &mut OwnedWaiter<Bulkhead>) -> Rejected {
    match poll(w) {
        Poll::Ready(Err(r)) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn a_grant_moves_the_waiters_arc_into_the_permit() {
    let q = queue(1, QueueConfig::fifo(4).unwrap());
    let held = q.try_acquire_owned().unwrap();
    assert_eq!(Arc::strong_count(&q), 2, "the permit's clone");
    assert!(q.try_acquire_owned().is_err());
    assert_eq!(Arc::strong_count(&q), 2, "a refusal clones nothing");
    let (count, waker) = counting();
    let mut w = q.enqueue_owned(0, Timestamp::MAX, &waker).unwrap();
    assert_eq!(Arc::strong_count(&q), 3);
    assert!(
        w.poll_permit(&mut Context::from_waker(&waker), Timestamp::ZERO)
            .is_pending()
    );
    drop(held);
    assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken through its slot");
    assert_eq!(
        Arc::strong_count(&q),
        2,
        "the released permit's clone is gone"
    );
    let p = granted(&mut w);
    assert!(w.is_done());
    assert_eq!(Arc::strong_count(&q), 2, "moved, not cloned");
    assert!(Arc::ptr_eq(p.queue(), &q));
    drop(w);
    assert_eq!(q.source().in_flight(), 1);
    drop(p);
    assert_eq!(Arc::strong_count(&q), 1);
    assert_eq!(q.source().in_flight(), 0);
}

#[test]
fn borrowed_and_owned_waiters_share_one_fifo_order() {
    let q = queue(1, QueueConfig::fifo(8).unwrap());
    let held = q.try_acquire().unwrap();
    let mut owned_first = q.enqueue_owned(0, Timestamp::MAX, Waker::noop()).unwrap();
    let mut borrowed = q.enqueue(0, Timestamp::MAX, Waker::noop()).unwrap();
    let mut owned_last = q.enqueue_owned(0, Timestamp::MAX, Waker::noop()).unwrap();
    let mut cx = Context::from_waker(Waker::noop());
    drop(held);
    let p = granted(&mut owned_first);
    assert!(borrowed.poll_permit(&mut cx, Timestamp::ZERO).is_pending());
    assert!(poll(&mut owned_last).is_pending());
    drop(p);
    let Poll::Ready(Ok(p)) = borrowed.poll_permit(&mut cx, Timestamp::ZERO) else {
        panic!("the borrowed waiter is next")
    };
    assert!(poll(&mut owned_last).is_pending());
    drop(p);
    let p = granted(&mut owned_last);
    drop((p, owned_first, borrowed, owned_last));
    assert_eq!(q.source().in_flight(), 0);
    assert_eq!(Arc::strong_count(&q), 1);
}

#[test]
fn a_dropped_owned_waiter_gives_up_its_place_and_its_arc() {
    let q = queue(1, QueueConfig::fifo(4).unwrap());
    let held = q.try_acquire_owned().unwrap();
    let cancelled = q.enqueue_owned(0, Timestamp::MAX, Waker::noop()).unwrap();
    let mut next = q.enqueue_owned(0, Timestamp::MAX, Waker::noop()).unwrap();
    drop(cancelled);
    assert_eq!(Arc::strong_count(&q), 3, "held and next");
    drop(held);
    let p = granted(&mut next);
    drop((p, next));
    assert_eq!(q.source().in_flight(), 0);
    assert_eq!(q.waiting(), 0);
    assert_eq!(Arc::strong_count(&q), 1);
}

#[test]
fn an_owned_waiter_dropped_after_its_grant_passes_the_permit_on() {
    let q = queue(1, QueueConfig::fifo(4).unwrap());
    let held = q.try_acquire_owned().unwrap();
    let granted_unread = q.enqueue_owned(0, Timestamp::MAX, Waker::noop()).unwrap();
    let mut next = q.enqueue_owned(0, Timestamp::MAX, Waker::noop()).unwrap();
    drop(held); // granted to `granted_unread`, which never looks
    assert!(poll(&mut next).is_pending());
    drop(granted_unread);
    let p = granted(&mut next);
    assert_eq!(q.source().in_flight(), 1);
    drop((p, next));
    assert_eq!(q.source().in_flight(), 0);
    assert_eq!(Arc::strong_count(&q), 1);
}

#[test]
fn refusals_sheds_and_timeouts_drop_the_arc_with_the_verdict() {
    let config = QueueConfig::fifo(1).unwrap().overload(Overload::ShedOldest);
    let q = queue(1, config);
    let held = q.try_acquire_owned().unwrap();
    let mut oldest = q.enqueue_owned(0, Timestamp::MAX, Waker::noop()).unwrap();
    let deadline = Timestamp::from_nanos(100);
    let mut newer = q.enqueue_owned(0, deadline, Waker::noop()).unwrap();
    assert_eq!(rejected(&mut oldest), Rejected::ShedOldest);
    assert!(oldest.is_done());
    assert_eq!(Arc::strong_count(&q), 3, "held and newer");
    let mut cx = Context::from_waker(Waker::noop());
    assert!(
        newer
            .poll_permit(&mut cx, Timestamp::from_nanos(99))
            .is_pending()
    );
    assert!(matches!(
        newer.poll_permit(&mut cx, deadline),
        Poll::Ready(Err(Rejected::TimedOut))
    ));
    assert_eq!(Arc::strong_count(&q), 2);
    assert!(matches!(
        q.enqueue_owned(3, Timestamp::MAX, Waker::noop()),
        Err(Rejected::UnknownClass {
            class: 3,
            classes: 1
        })
    ));
    assert_eq!(Arc::strong_count(&q), 2, "a refused enqueue clones nothing");
    drop((held, oldest, newer));
    assert_eq!(q.source().in_flight(), 0);
    assert_eq!(Arc::strong_count(&q), 1);
}

#[test]
#[should_panic(expected = "OwnedWaiter polled after it completed")]
fn polling_a_completed_owned_waiter_panics() {
    let q = queue(1, QueueConfig::fifo(1).unwrap());
    let held = q.try_acquire_owned().unwrap();
    let mut w = q.enqueue_owned(0, Timestamp::MAX, Waker::noop()).unwrap();
    drop(held);
    let _permit = granted(&mut w);
    let _ = poll(&mut w);
}

/// The owned forms are `Send + 'static`: a waiter moves to another thread,
/// waits there (parked on its waker), and gets the permit released here.
#[test]
fn an_owned_waiter_waits_on_another_thread() {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let q = queue(1, QueueConfig::fifo(2).unwrap());
    let held = q.try_acquire_owned().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter_queue = Arc::clone(&q);
    let thread = std::thread::spawn(move || {
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut w = waiter_queue
            .enqueue_owned(0, Timestamp::MAX, &waker)
            .unwrap();
        drop(waiter_queue);
        assert!(w.poll_permit(&mut cx, Timestamp::ZERO).is_pending());
        tx.send(()).unwrap();
        // Bounded: the permit is released right after the message; each
        // park returns at the latest on the wake that announces it (or
        // spuriously, and then the loop polls again).
        for _ in 0..1_000_000 {
            if let Poll::Ready(verdict) = w.poll_permit(&mut cx, Timestamp::ZERO) {
                return verdict.map(drop).is_ok();
            }
            std::thread::park();
        }
        false
    });
    rx.recv().unwrap();
    drop(held);
    assert!(thread.join().unwrap(), "granted on the other thread");
    assert_eq!(q.source().in_flight(), 0);
    assert_eq!(Arc::strong_count(&q), 1);
}

/// Q7 for the owned paths: fast-path acquisitions, enqueues, hand-overs,
/// cancellations before and after a grant, sheds and timeouts allocate
/// nothing (an `Arc` clone is a reference count).
#[test]
fn the_owned_paths_never_allocate() {
    let config = QueueConfig::fifo(2).unwrap().overload(Overload::ShedOldest);
    let q = queue(1, config);
    let allocated = allocations_during(|| {
        let mut cx = Context::from_waker(Waker::noop());
        for i in 0..2_000u64 {
            let held = q.try_acquire_owned().expect("free at the start of a round");
            let mut a = q.enqueue_owned(0, Timestamp::MAX, Waker::noop()).unwrap();
            let b = q.enqueue_owned(0, Timestamp::MAX, Waker::noop()).unwrap();
            let mut c = q
                .enqueue_owned(0, Timestamp::from_nanos(10), Waker::noop())
                .unwrap();
            // `a` was shed to make room for `c`.
            assert!(matches!(
                a.poll_permit(&mut cx, Timestamp::ZERO),
                Poll::Ready(Err(Rejected::ShedOldest))
            ));
            drop(held); // granted to `b`
            if i % 2 == 0 {
                drop(b); // after its grant: passes the permit to `c`
                let Poll::Ready(Ok(p)) = c.poll_permit(&mut cx, Timestamp::ZERO) else {
                    panic!("c is granted");
                };
                drop(p);
            } else {
                // `c` times out at its deadline; `b`'s permit goes back.
                assert!(matches!(
                    c.poll_permit(&mut cx, Timestamp::from_nanos(10)),
                    Poll::Ready(Err(Rejected::TimedOut))
                ));
                drop(b);
            }
            drop((a, c));
        }
    });
    assert_eq!(allocated, 0);
    assert_eq!(q.source().in_flight(), 0);
    assert_eq!(Arc::strong_count(&q), 1);
}
