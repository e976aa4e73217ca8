//! loom models of the admission queue (engine/src/queue/): its dispatcher
//! role, mailbox, free stack, slot state words and waker cells.
//!
//! Q1 (docs/guarantees.md): no permit is lost or duplicated: at the end of
//! every model the bulkhead is back to 0 in flight. Q2: exactly one of
//! {grant, cancellation, timeout} decides a waiter, and the queue wakes a
//! waiter at most once (each waiter's waker counts its wakes). Q3: a release
//! racing an enqueue never leaves the waiter asleep while a permit is free.
//! Q6: an arrival that overflows the queue sheds in the pass that links it.
//! loom also checks every access to the cells (scheduler, permit, waker) for
//! exclusivity: a protocol that let two parties in at once fails as a
//! causality violation.
//!
//! Every model explores up to 4 preemptions per execution (the whole file
//! runs in a few seconds), except the four tag models at the end, which
//! need one.
//!
//! The ABA tags are shrunk under `cfg(tenlives_loom)`: the free stack's tag
//! and each slot's generation are 2 bits wide instead of 42 and 58, so they
//! wrap inside every model that runs four stack operations or reuses a slot
//! four times, and the models above check the protocol with wrapping tags.
//! The four tag models show what the width buys: a stalled party is refused
//! after 3 intervening operations (`2^2 - 1`) and fooled after exactly 4 (a
//! full wrap, `should_panic`); at full width the same takes `2^42` stack
//! operations or `2^58` reuses of one slot within one stall.
//!
//! The queue's waiters and permits borrow it, and loom threads need
//! `'static` values, so each model leaks its queue for the run and reclaims
//! it once every thread has joined and every waiter and permit is gone. The
//! owned forms (`OwnedWaiter`, `OwnedQueuePermit`) run the same protocol
//! code; their model keeps the queue in an `Arc` and also checks Q8: the
//! waiter's `Arc` moves into its permit or is dropped with its verdict, so
//! the count is back to one at the end.
#![cfg(tenlives_loom)]

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::thread;
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::queue::{AdmissionQueue, Overload, QueueConfig, Rejected};
use tenlives_engine::time::{ManualClock, Timestamp};
use tenlives_loom_tests::model;

type Queue = AdmissionQueue<Bulkhead>;

/// A queue the model's threads can borrow for `'static`.
fn leak(limit: u32, config: QueueConfig) -> &'static Queue {
    Box::leak(Box::new(AdmissionQueue::new(
        Bulkhead::new(limit).unwrap(),
        config,
    )))
}

/// Drops a queue from `leak`.
///
/// # Safety
///
/// Every borrow of it has ended: the threads that used it have joined, and
/// every waiter, future and permit from it has been dropped.
unsafe fn reclaim(queue: &'static Queue) {
    // SAFETY: `queue` came from `Box::leak` in `leak`, and the caller
    // promises that nothing borrows it any more.
    drop(unsafe { Box::from_raw(std::ptr::from_ref(queue).cast_mut()) });
}

/// A waker that counts its wakes.
struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counting() -> (Arc<Count>, Waker) {
    let count = Arc::new(Count(AtomicUsize::new(0)));
    (count.clone(), Waker::from(count))
}

fn wakes(count: &Count) -> usize {
    count.0.load(Ordering::SeqCst)
}

/// Q1, Q2: a permit released while its only waiter is being cancelled goes
/// to exactly one party: the waiter (whose drop then passes it on, back to
/// the bulkhead) or the bulkhead. The waiter is woken at most once, and the
/// queue is reusable afterwards.
#[test]
fn a_release_racing_a_cancellation_hands_the_permit_to_one_party() {
    model(4, || {
        let q = leak(1, QueueConfig::fifo(1).unwrap());
        let permit = q.try_acquire().unwrap();
        let (count, waker) = counting();
        let waiter = q.enqueue(0, Timestamp::MAX, &waker).unwrap();
        let release = thread::spawn(move || drop(permit));
        let cancel = thread::spawn(move || drop(waiter));
        release.join().unwrap();
        cancel.join().unwrap();
        assert!(wakes(&count) <= 1, "woken {} times", wakes(&count));
        assert_eq!(q.source().in_flight(), 0, "the permit came back");
        assert_eq!(q.waiting(), 0);
        // The slot and the dispatcher were left in order.
        let again = q.try_acquire().unwrap();
        drop(again);
        // SAFETY: both threads joined; the permits and the waiter are dropped.
        unsafe { reclaim(q) };
    });
}

/// Q2: a slot is reused only when every party is done with it. The owner
/// takes its permit and enqueues again (getting the same slot back) while
/// the dispatcher that granted it may still be waking it: the new
/// waiter's waker must not be touched by that wake (loom checks the waker
/// cell's accesses), and each waiter is woken at most once.
#[test]
fn a_slot_is_reused_only_after_its_grant_is_delivered() {
    model(4, || {
        let q = leak(1, QueueConfig::fifo(1).unwrap());
        let permit = q.try_acquire().unwrap();
        let (count, waker) = counting();
        let mut w = q.enqueue(0, Timestamp::MAX, &waker).unwrap();
        let release = thread::spawn(move || drop(permit));
        let owner = thread::spawn(move || {
            let mut cx = Context::from_waker(Waker::noop());
            let granted = loop {
                match w.poll_permit(&mut cx, Timestamp::ZERO) {
                    Poll::Ready(Ok(p)) => break p,
                    Poll::Ready(Err(e)) => panic!("refused: {e}"),
                    Poll::Pending => thread::yield_now(),
                }
            };
            let (again, waker_again) = counting();
            let next = q.enqueue(0, Timestamp::MAX, &waker_again).unwrap();
            drop(granted); // hands the permit to `next`
            drop(next); // cancels, or passes the permit back
            assert!(wakes(&again) <= 1);
        });
        release.join().unwrap();
        owner.join().unwrap();
        assert!(wakes(&count) <= 1);
        assert_eq!(q.source().in_flight(), 0);
        assert_eq!(q.waiting(), 0);
        // SAFETY: both threads joined; every waiter and permit is dropped.
        unsafe { reclaim(q) };
    });
}

/// Q3: a release racing an enqueue (through the `Acquire` future, which
/// tries the fast path first) never strands the caller: once the release has
/// returned, the caller's next poll has the permit.
#[test]
fn a_release_racing_an_enqueue_never_strands_the_waiter() {
    model(4, || {
        let q = leak(1, QueueConfig::fifo(1).unwrap());
        let clock: &'static ManualClock = Box::leak(Box::new(ManualClock::new()));
        let permit = q.try_acquire().unwrap();
        let released = Arc::new(AtomicBool::new(false));
        let release = {
            let released = released.clone();
            thread::spawn(move || {
                drop(permit);
                released.store(true, Ordering::SeqCst);
            })
        };
        let caller = thread::spawn(move || {
            let (count, waker) = counting();
            let mut cx = Context::from_waker(&waker);
            let mut fut = pin!(q.acquire(0, Timestamp::MAX, clock));
            let first = fut.as_mut().poll(&mut cx);
            let permit = match first {
                Poll::Ready(Ok(p)) => p,
                Poll::Ready(Err(e)) => panic!("refused: {e}"),
                Poll::Pending => {
                    while !released.load(Ordering::SeqCst) {
                        thread::yield_now();
                    }
                    match fut.as_mut().poll(&mut cx) {
                        Poll::Ready(Ok(p)) => p,
                        other => panic!("stranded after the release returned: {other:?}"),
                    }
                }
            };
            drop(permit);
            assert!(wakes(&count) <= 1);
        });
        release.join().unwrap();
        caller.join().unwrap();
        assert_eq!(q.source().in_flight(), 0);
        assert_eq!(q.waiting(), 0);
        // SAFETY: both threads joined; every future and permit is dropped.
        unsafe {
            reclaim(q);
            drop(Box::from_raw(std::ptr::from_ref(clock).cast_mut()));
        }
    });
}

/// Q1, Q2: two permits released at once by two threads reach the two
/// waiters, one each, each woken exactly once; nothing is lost.
#[test]
fn two_releases_reach_two_waiters_once_each() {
    model(4, || {
        let q = leak(2, QueueConfig::round_robin(2, 2).unwrap());
        let a = q.try_acquire().unwrap();
        let b = q.try_acquire().unwrap();
        let (count0, waker0) = counting();
        let (count1, waker1) = counting();
        let mut w0 = q.enqueue(0, Timestamp::MAX, &waker0).unwrap();
        let mut w1 = q.enqueue(1, Timestamp::MAX, &waker1).unwrap();
        let ta = thread::spawn(move || drop(a));
        let tb = thread::spawn(move || drop(b));
        ta.join().unwrap();
        tb.join().unwrap();
        assert_eq!((wakes(&count0), wakes(&count1)), (1, 1));
        let mut cx = Context::from_waker(Waker::noop());
        let Poll::Ready(Ok(p0)) = w0.poll_permit(&mut cx, Timestamp::ZERO) else {
            panic!("w0 granted")
        };
        let Poll::Ready(Ok(p1)) = w1.poll_permit(&mut cx, Timestamp::ZERO) else {
            panic!("w1 granted")
        };
        assert_eq!(q.source().in_flight(), 2);
        drop((p0, p1, w0, w1));
        assert_eq!(q.source().in_flight(), 0);
        // SAFETY: both threads joined; every waiter and permit is dropped.
        unsafe { reclaim(q) };
    });
}

/// Q1, Q2: a sweep racing a release: the waiter either times out (and the
/// permit goes back to the bulkhead) or is granted; it is woken exactly
/// once either way.
#[test]
fn a_sweep_racing_a_release_decides_the_waiter_once() {
    model(4, || {
        let q = leak(1, QueueConfig::fifo(1).unwrap());
        let permit = q.try_acquire().unwrap();
        let (count, waker) = counting();
        let deadline = Timestamp::from_nanos(10);
        let mut w = q.enqueue(0, deadline, &waker).unwrap();
        let release = thread::spawn(move || drop(permit));
        let sweep = thread::spawn(move || q.expire(deadline));
        release.join().unwrap();
        let expired = sweep.join().unwrap();
        assert_eq!(wakes(&count), 1);
        let mut cx = Context::from_waker(Waker::noop());
        match w.poll_permit(&mut cx, Timestamp::ZERO) {
            Poll::Ready(Ok(p)) => {
                assert_eq!(expired, 0);
                drop(p);
            }
            Poll::Ready(Err(Rejected::TimedOut)) => assert_eq!(expired, 1),
            other => panic!("undecided: {other:?}"),
        }
        drop(w);
        assert_eq!(q.source().in_flight(), 0);
        assert_eq!(q.waiting(), 0);
        // SAFETY: both threads joined; the waiter and the permit are dropped.
        unsafe { reclaim(q) };
    });
}

/// Q1, Q2, Q6: an arrival that overflows a queue of one (shedding the
/// oldest) races the release of the only permit. Exactly one of the two
/// waiters gets the permit; the other is shed; each is woken at most once.
#[test]
fn an_overflowing_arrival_racing_a_release_sheds_or_grants_each_once() {
    model(4, || {
        let config = QueueConfig::fifo(1).unwrap().overload(Overload::ShedOldest);
        let q = leak(1, config);
        let permit = q.try_acquire().unwrap();
        let (count_old, waker_old) = counting();
        let mut old = q.enqueue(0, Timestamp::MAX, &waker_old).unwrap();
        let release = thread::spawn(move || drop(permit));
        let arrive = thread::spawn(move || {
            let (count_new, waker_new) = counting();
            let waiter = q.enqueue(0, Timestamp::MAX, &waker_new).unwrap();
            (waiter, count_new)
        });
        release.join().unwrap();
        let (mut new, count_new) = arrive.join().unwrap();
        let mut cx = Context::from_waker(Waker::noop());
        let old_got = old.poll_permit(&mut cx, Timestamp::ZERO);
        let new_got = new.poll_permit(&mut cx, Timestamp::ZERO);
        let granted = [&old_got, &new_got]
            .iter()
            .filter(|p| matches!(p, Poll::Ready(Ok(_))))
            .count();
        assert_eq!(granted, 1, "old {old_got:?}, new {new_got:?}");
        assert!(
            matches!(old_got, Poll::Ready(_)),
            "the old waiter was decided"
        );
        assert!(wakes(&count_old) <= 1 && wakes(&count_new) <= 1);
        drop((old_got, new_got, old, new));
        assert_eq!(q.source().in_flight(), 0);
        assert_eq!(q.waiting(), 0);
        // SAFETY: both threads joined; every waiter and permit is dropped.
        unsafe { reclaim(q) };
    });
}

/// Q1, Q2, Q8: the owned forms on two threads. A permit held by one thread
/// is released while the owner of an `OwnedWaiter` polls it once on another
/// thread and then takes its permit (and drops it) or gives up its place.
/// The permit reaches exactly one party, the waiter is woken at most once,
/// and every `Arc` clone the waiter and the permits took is gone at the end.
#[test]
fn an_owned_waiter_racing_a_release_conserves_permits_and_the_arc() {
    model(4, || {
        let q = Arc::new(AdmissionQueue::new(
            Bulkhead::new(1).unwrap(),
            QueueConfig::fifo(1).unwrap(),
        ));
        let permit = q.try_acquire_owned().unwrap();
        let (count, waker) = counting();
        let mut waiter = q.enqueue_owned(0, Timestamp::MAX, &waker).unwrap();
        let release = thread::spawn(move || drop(permit));
        let owner = thread::spawn(move || {
            let mut cx = Context::from_waker(&waker);
            match waiter.poll_permit(&mut cx, Timestamp::ZERO) {
                Poll::Ready(Ok(granted)) => drop(granted),
                Poll::Ready(Err(e)) => panic!("refused: {e}"),
                // Cancels, or passes on a permit granted meanwhile.
                Poll::Pending => drop(waiter),
            }
        });
        release.join().unwrap();
        owner.join().unwrap();
        assert!(wakes(&count) <= 1, "woken {} times", wakes(&count));
        assert_eq!(q.source().in_flight(), 0, "the permit came back");
        assert_eq!(q.waiting(), 0);
        assert_eq!(Arc::strong_count(&q), 1, "no clone of the queue left");
        drop(q.try_acquire_owned().unwrap());
    });
}

/// The free stack's tag (2 bits under loom). A waiter `w0` holds slot 0;
/// thread A enqueues (a pop that reads the top, slot 1, and the slot below
/// it, 2); meanwhile thread B enqueues `w1` (slot 1) and `w2` (slot 2), and
/// then runs `frees` of: give up `w0` (push 0), give up `w1` (push 1). With
/// A stalled before its compare-and-swap, the top is slot 1 again with the
/// tag bumped by `2 + frees`: after 3 operations A's compare-and-swap fails
/// and it reads the stack again; after 4 the tag has wrapped, A's swap
/// succeeds and installs its stale "below" (slot 2, still `w2`'s) as the
/// new top, and the next enqueue takes a slot in use (caught by the
/// queue's check of the slot's reference bits). Returns once the queue was
/// checked.
fn free_stack_stall(frees: usize) {
    model(1, move || {
        let q = leak(1, QueueConfig::fifo(4).unwrap());
        let held = q.try_acquire().unwrap();
        let w0 = q.enqueue(0, Timestamp::MAX, Waker::noop()).unwrap();
        let a = thread::spawn(move || q.enqueue(0, Timestamp::MAX, Waker::noop()).unwrap());
        let b = thread::spawn(move || {
            let w1 = q.enqueue(0, Timestamp::MAX, Waker::noop()).unwrap();
            let w2 = q.enqueue(0, Timestamp::MAX, Waker::noop()).unwrap();
            match frees {
                1 => {
                    drop(w1);
                    (Some(w0), w2)
                }
                2 => {
                    drop(w0);
                    drop(w1);
                    (None, w2)
                }
                _ => unreachable!(),
            }
        });
        let waiter_a = a.join().unwrap();
        let (w0, w2) = b.join().unwrap();
        // Every waiter alive holds a slot of its own: taking the rest of
        // the slots must find each free.
        let more: Vec<_> = (0..2)
            .map(|_| q.enqueue(0, Timestamp::MAX, Waker::noop()))
            .collect();
        drop((more, waiter_a, w0, w2, held));
        assert_eq!(q.source().in_flight(), 0);
        assert_eq!(q.waiting(), 0);
        // SAFETY: both threads joined; every waiter and permit is dropped.
        unsafe { reclaim(q) };
    });
}

/// 3 stack operations during a stalled pop (2 pops, 1 push): the tag
/// differs, the pop retries, every slot has one owner.
#[test]
fn a_pop_stalled_over_three_operations_is_refused_by_the_tag() {
    free_stack_stall(1);
}

/// 4 stack operations (2 pops, 2 pushes) wrap the 2-bit tag: the stalled
/// pop is fooled. The full-width tag needs `2^42` operations.
#[test]
#[should_panic(expected = "came off the free stack while in use")]
fn a_pop_stalled_over_a_full_wrap_of_the_tag_is_fooled() {
    free_stack_stall(2);
}

/// The slot generation (2 bits under loom). A waiter with deadline 10
/// holds slot 0; thread A sweeps at time 10 (it loads the slot's word and
/// deadline, then compare-and-swaps the word to `TIMED_OUT`); meanwhile
/// thread B gives that waiter up and reuses the slot `reuses` times, the
/// last waiter (deadline `MAX`) kept. With A stalled before its swap, the
/// last use's word differs from the one A loaded only by its generation:
/// after 3 reuses the swap fails; after 4 the generation has wrapped, the
/// swap succeeds, and a waiter whose deadline is `MAX` is timed out.
fn sweep_stall(reuses: usize) {
    model(1, move || {
        // Room for every waiter B makes: a reuse is never refused while a
        // pass the sweeper runs has not yet counted B's cancellations out
        // (in such a schedule the slot B takes is another one, and the
        // schedule shows nothing).
        let q = leak(1, QueueConfig::fifo(8).unwrap());
        let held = q.try_acquire().unwrap();
        let deadline = Timestamp::from_nanos(10);
        let first = q.enqueue(0, deadline, Waker::noop()).unwrap();
        let sweeper = thread::spawn(move || q.expire(deadline));
        let owner = thread::spawn(move || {
            // The sweeper may time `first` out before we give it up.
            drop(first);
            for _ in 1..reuses {
                drop(q.enqueue(0, Timestamp::MAX, Waker::noop()).unwrap());
            }
            q.enqueue(0, Timestamp::MAX, Waker::noop()).unwrap()
        });
        sweeper.join().unwrap();
        let mut last = owner.join().unwrap();
        // Whatever the sweep did, it was before its deadline of MAX.
        let mut cx = Context::from_waker(Waker::noop());
        let verdict = last.poll_permit(&mut cx, Timestamp::ZERO);
        assert!(
            verdict.is_pending(),
            "a waiter was timed out before its deadline: {verdict:?}"
        );
        drop((last, held));
        assert_eq!(q.source().in_flight(), 0);
        // SAFETY: both threads joined; every waiter and permit is dropped.
        unsafe { reclaim(q) };
    });
}

/// 3 reuses of the slot during a stalled sweep: the generation differs,
/// the sweep's swap fails, the new waiter keeps waiting.
#[test]
fn a_sweep_stalled_over_three_reuses_is_refused_by_the_generation() {
    sweep_stall(3);
}

/// 4 reuses wrap the 2-bit generation: the stalled sweep times out a
/// waiter whose deadline has not passed. The full-width generation needs
/// `2^58` reuses.
#[test]
#[should_panic(expected = "a waiter was timed out before its deadline")]
fn a_sweep_stalled_over_a_full_wrap_of_the_generation_is_fooled() {
    sweep_stall(4);
}
