//! A waker that panics when the queue wakes it (a grant, a shed, a sweep)
//! must not leak a slot, a permit or a pending pass: the panic reaches the
//! caller only once the queue is consistent, every other waiter of that pass
//! is still served, and afterwards nothing is in flight and the next
//! acquisition succeeds (guarantee Q9 in `docs/guarantees.md`).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::queue::{
    AdmissionQueue, Overload, QueueConfig, QueuePermit, Rejected, Waiter,
};
use tenlives_engine::time::Timestamp;

type Queue = AdmissionQueue<Bulkhead>;

/// A waker whose `wake` panics.
struct Panics;

impl Wake for Panics {
    fn wake(self: Arc<Self>) {
        panic!("this waker panics");
    }
}

fn panicking() -> Waker {
    Waker::from(Arc::new(Panics))
}

fn poll<'q>(
    w: &mut Waiter<'q, Bulkhead>,
    now: Timestamp,
) -> Poll<Result<QueuePermit<'q, Bulkhead>, Rejected>> {
    w.poll_permit(&mut Context::from_waker(Waker::noop()), now)
}

/// The panic payload's message.
fn message(r: std::thread::Result<()>) -> String {
    let payload = r.expect_err("the waker's panic reaches the caller");
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Nothing is in flight, nobody waits, and a permit can be taken at once.
fn assert_idle(q: &Queue) {
    assert_eq!(q.source().in_flight(), 0, "no permit leaked");
    assert_eq!(q.waiting(), 0, "no waiter left counted");
    let permit = q.try_acquire().expect("the next acquisition succeeds");
    drop(permit);
    assert_eq!(q.source().in_flight(), 0);
}

/// The grant reaches the waiter whose waker panicked, and its slot is freed
/// once it reads it: more rounds than there are slots (two per unit of
/// capacity) all succeed. Failed before the fix on the third round:
/// `enqueue` returned `Err(QueueFull)`, the two slots of the first rounds
/// still held by the dispatcher.
#[test]
fn a_grant_whose_wake_panics_still_reaches_the_waiter_and_frees_the_slot() {
    let q = AdmissionQueue::new(Bulkhead::new(1).unwrap(), QueueConfig::fifo(1).unwrap());
    for round in 0..5 {
        let held = q.try_acquire().expect("free");
        let mut w = q
            .enqueue(0, Timestamp::MAX, &panicking())
            .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        // (Not polled: a poll would replace the panicking waker.) The release hands the permit to `w`; its wake panics in our drop.
        let m = message(catch_unwind(AssertUnwindSafe(|| drop(held))));
        assert!(m.contains("this waker panics"), "{m}");
        let Poll::Ready(Ok(permit)) = poll(&mut w, Timestamp::ZERO) else {
            panic!("round {round}: the grant is in the slot");
        };
        assert_eq!(q.source().in_flight(), 1);
        drop(permit);
        assert_idle(&q);
    }
}

/// The pass goes on after a waker panics: the waiter behind it is granted
/// in the same pass. Failed before the fix: the second waiter stayed
/// `Pending` with a permit free in the bulkhead.
#[test]
fn the_pass_serves_the_other_waiters_after_a_wake_panics() {
    let q = AdmissionQueue::new(Bulkhead::new(1).unwrap(), QueueConfig::fifo(2).unwrap());
    for _round in 0..5 {
        q.source().set_limit(1).unwrap();
        let held = q.try_acquire().expect("free");
        let mut first = q.enqueue(0, Timestamp::MAX, &panicking()).unwrap();
        let mut second = q.enqueue(0, Timestamp::MAX, Waker::noop()).unwrap();
        q.source().set_limit(3).unwrap();
        let m = message(catch_unwind(AssertUnwindSafe(|| q.dispatch())));
        assert!(m.contains("this waker panics"), "{m}");
        let Poll::Ready(Ok(a)) = poll(&mut first, Timestamp::ZERO) else {
            panic!("the first waiter was granted");
        };
        let Poll::Ready(Ok(b)) = poll(&mut second, Timestamp::ZERO) else {
            panic!("the second waiter was granted in the same pass");
        };
        assert_eq!(q.source().in_flight(), 3);
        drop((a, b, held));
        assert_idle(&q);
    }
}

/// A shed whose wake panics during an enqueue: the newcomer's waiter exists
/// before the panic reaches the enqueuer, and unwinding gives its place up.
/// Failed before the fix: the newcomer's slot was orphaned (queued, no
/// waiter to poll or drop it), so the released permit went to it and
/// stayed in flight for ever (`in_flight` 1, `waiting` 1).
#[test]
fn a_shed_whose_wake_panics_during_enqueue_orphans_nothing() {
    let config = QueueConfig::fifo(1).unwrap().overload(Overload::ShedOldest);
    let q = AdmissionQueue::new(Bulkhead::new(1).unwrap(), config);
    for _round in 0..3 {
        let held = q.try_acquire().expect("free");
        let mut oldest = q.enqueue(0, Timestamp::MAX, &panicking()).unwrap();
        let m = message(catch_unwind(AssertUnwindSafe(|| {
            let _newcomer = q.enqueue(0, Timestamp::MAX, Waker::noop());
        })));
        assert!(m.contains("this waker panics"), "{m}");
        assert!(matches!(
            poll(&mut oldest, Timestamp::ZERO),
            Poll::Ready(Err(Rejected::ShedOldest))
        ));
        drop(held);
        assert_idle(&q);
    }
}

/// The same shed through the `Acquire` future, whose first poll makes its
/// waiter in the future itself before the pass runs: the panic reaches the
/// poll, and the newcomer is a waiter like any other. Dropped, it gives its
/// place up; kept and polled again, it is granted the released permit.
#[test]
fn an_acquire_whose_first_pass_panics_is_a_waiter_dropped_or_kept() {
    use std::future::Future;
    use std::pin::pin;

    let config = QueueConfig::fifo(1).unwrap().overload(Overload::ShedOldest);
    let q = AdmissionQueue::new(Bulkhead::new(1).unwrap(), config);
    let clock = tenlives_engine::time::ManualClock::new();
    let mut cx = Context::from_waker(Waker::noop());
    for keep in [false, true, false, true] {
        let held = q.try_acquire().expect("free");
        let mut oldest = q.enqueue(0, Timestamp::MAX, &panicking()).unwrap();
        let mut newcomer = Box::pin(q.acquire(0, Timestamp::MAX, &clock));
        let m = message(catch_unwind(AssertUnwindSafe(|| {
            let _ = newcomer
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()));
        })));
        assert!(m.contains("this waker panics"), "{m}");
        assert!(matches!(
            poll(&mut oldest, Timestamp::ZERO),
            Poll::Ready(Err(Rejected::ShedOldest))
        ));
        assert_eq!(q.waiting(), 1, "the newcomer waits");
        if keep {
            assert!(newcomer.as_mut().poll(&mut cx).is_pending());
            drop(held);
            let Poll::Ready(Ok(permit)) = newcomer.as_mut().poll(&mut cx) else {
                panic!("granted the released permit");
            };
            drop(permit);
        } else {
            drop(newcomer);
            assert_eq!(q.waiting(), 0, "dropping the future gave its place up");
            drop(held);
        }
        assert_idle(&q);
        // A fresh future after it goes through as usual.
        let Poll::Ready(Ok(permit)) = pin!(q.acquire(0, Timestamp::MAX, &clock)).poll(&mut cx)
        else {
            panic!("a free permit");
        };
        drop(permit);
    }
}

/// A sweep whose wake panics: the timed-out waiter is retired all the same
/// (its notice posted, the pass run). Failed before the fix: `waiting()`
/// stayed 1 and `try_acquire` answered `Busy` with the bulkhead empty.
#[test]
fn a_sweep_whose_wake_panics_retires_the_waiter() {
    let q = AdmissionQueue::new(Bulkhead::new(1).unwrap(), QueueConfig::fifo(2).unwrap());
    for round in 0..5 {
        let held = q.try_acquire().expect("free");
        let deadline = Timestamp::from_nanos(10);
        let mut w = q.enqueue(0, deadline, &panicking()).unwrap();
        let mut other = q
            .enqueue(0, deadline, Waker::noop())
            .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        let m = message(catch_unwind(AssertUnwindSafe(|| {
            q.expire(deadline);
        })));
        assert!(m.contains("this waker panics"), "{m}");
        assert_eq!(q.waiting(), 0, "both retired by the sweep's pass");
        // Polled before the deadline: only the sweep can have timed it out.
        assert!(matches!(
            poll(&mut w, Timestamp::ZERO),
            Poll::Ready(Err(Rejected::TimedOut))
        ));
        assert!(
            matches!(
                poll(&mut other, Timestamp::ZERO),
                Poll::Ready(Err(Rejected::TimedOut))
            ),
            "the sweep went on after the panic"
        );
        drop(held);
        assert_idle(&q);
    }
}

/// A waiter timing out by itself runs the pass its retirement asks for,
/// which grants a waiter whose wake panics: the panic reaches the poll, and
/// the timed-out waiter is finished all the same (dropping it does not give
/// its slot back twice).
#[test]
fn a_panic_in_the_pass_of_a_timeout_leaves_the_waiter_finished() {
    let q = AdmissionQueue::new(Bulkhead::new(1).unwrap(), QueueConfig::fifo(2).unwrap());
    q.source().set_limit(1).unwrap();
    let held = q.try_acquire().expect("free");
    let deadline = Timestamp::from_nanos(10);
    let mut leaving = q.enqueue(0, deadline, Waker::noop()).unwrap();
    let mut panics = q.enqueue(0, Timestamp::MAX, &panicking()).unwrap();
    // A permit appears behind the queue's back; the next pass grants it.
    q.source().set_limit(2).unwrap();
    let m = message(catch_unwind(AssertUnwindSafe(|| {
        let _ = poll(&mut leaving, deadline);
    })));
    assert!(m.contains("this waker panics"), "{m}");
    drop(leaving);
    let Poll::Ready(Ok(permit)) = poll(&mut panics, Timestamp::ZERO) else {
        panic!("granted by the timeout's pass");
    };
    drop((permit, held));
    assert_idle(&q);
    // Every slot is usable again.
    for _ in 0..4 {
        let held = q.try_acquire().expect("free");
        let mut w = q.enqueue(0, Timestamp::MAX, Waker::noop()).unwrap();
        let mut v = q.enqueue(0, Timestamp::MAX, Waker::noop()).unwrap();
        drop(held);
        let Poll::Ready(Ok(p)) = poll(&mut w, Timestamp::ZERO) else {
            panic!()
        };
        drop(p);
        let Poll::Ready(Ok(p)) = poll(&mut v, Timestamp::ZERO) else {
            panic!()
        };
        drop(p);
    }
    assert_idle(&q);
}

/// An event sink that panics on every event.
struct PanickingSink;

impl tenlives_engine::events::EventSink for PanickingSink {
    fn emit(&self, _: tenlives_engine::events::Event) {
        panic!("this sink panics");
    }
}

/// The sink is user code too: a sweep whose `QUEUE_REJECTED` event panics
/// still retires every waiter it timed out, then raises the panic.
#[test]
fn a_sweep_whose_sink_panics_retires_every_waiter() {
    let q = AdmissionQueue::with_sink(
        Bulkhead::new(1).unwrap(),
        QueueConfig::fifo(2).unwrap(),
        PanickingSink,
        7,
    );
    for _round in 0..5 {
        let held = q.try_acquire().expect("free");
        let deadline = Timestamp::from_nanos(10);
        let mut a = q.enqueue(0, deadline, Waker::noop()).unwrap();
        let mut b = q.enqueue(0, deadline, Waker::noop()).unwrap();
        let m = message(catch_unwind(AssertUnwindSafe(|| {
            q.expire(deadline);
        })));
        assert!(m.contains("this sink panics"), "{m}");
        assert_eq!(q.waiting(), 0);
        let cx = &mut Context::from_waker(Waker::noop());
        assert!(matches!(
            a.poll_permit(cx, Timestamp::ZERO),
            Poll::Ready(Err(Rejected::TimedOut))
        ));
        assert!(matches!(
            b.poll_permit(cx, Timestamp::ZERO),
            Poll::Ready(Err(Rejected::TimedOut))
        ));
        drop(held);
        assert_eq!(q.source().in_flight(), 0);
        drop(q.try_acquire().expect("the next acquisition succeeds"));
    }
}
