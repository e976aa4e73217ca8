//! loom models of the timer wheel (engine/src/timer/): its entry state
//! words, free stack, waker cells and the `next_due` word.
//!
//! W1 (docs/guarantees.md): a timer is woken at most once, only by an
//! expiry at or after its deadline, and never once it was cancelled. W2: a
//! timer that fired is never lost: its owner is woken, or sees it fired when
//! it polls. W3: a stale expiry (one that read an entry before it was given
//! back and taken again) never fires or wakes the entry's new use. W4: every
//! entry comes back to the free stack once its owner and any expirer are
//! done with it. W5: a registration racing an expiry is never left without
//! a driver wake-up at or before its deadline. W8: the wheel is full only
//! when every entry is taken: a thread whose stripe is empty takes another
//! stripe's entry, which goes back to that stripe. loom also checks every
//! access to the waker cells for exclusivity.
//!
//! Under loom the wheel has two stripes (`STRIPES` is 2 under
//! `cfg(tenlives_loom)`), and a thread's stripe is a hash of its loom id: the
//! models below that take more entries than one stripe holds take from both.
//!
//! Every model explores up to 4 preemptions per execution (3 for the
//! three-thread models).
#![cfg(tenlives_loom)]

use std::sync::Arc;
use std::task::{Wake, Waker};
use std::time::Duration;

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use tenlives_engine::time::Timestamp;
use tenlives_engine::timer::TimerWheel;
use tenlives_loom_tests::model;

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

fn wheel(capacity: usize) -> Arc<TimerWheel> {
    Arc::new(TimerWheel::new(capacity, Duration::from_nanos(1)).unwrap())
}

fn at(nanos: u64) -> Timestamp {
    Timestamp::from_nanos(nanos)
}

/// W4: every entry is free: exactly `capacity` registrations succeed.
fn assert_all_free(wheel: &TimerWheel) {
    let mut taken = Vec::new();
    for _ in 0..wheel.capacity() {
        taken.push(
            wheel
                .register(Timestamp::MAX, Waker::noop())
                .expect("a free entry")
                .entry,
        );
    }
    assert!(
        wheel.register(Timestamp::MAX, Waker::noop()).is_err(),
        "an entry too many"
    );
    for entry in taken {
        wheel.cancel(entry);
    }
}

/// W1, W4: a cancellation racing the expiry that would fire the timer:
/// woken at most once, and the entry comes back whichever wins.
#[test]
fn a_cancel_racing_expiry_wakes_at_most_once_and_frees_the_entry() {
    model(4, || {
        let w = wheel(1);
        let (count, waker) = counting();
        let entry = w.register(at(5), &waker).unwrap().entry;
        let expirer = {
            let w = Arc::clone(&w);
            thread::spawn(move || w.expire(at(10)).fired)
        };
        w.cancel(entry);
        let fired = expirer.join().unwrap();
        assert!(fired <= 1);
        assert!(
            wakes(&count) <= fired,
            "woken {} times, fired {fired}",
            wakes(&count)
        );
        assert_all_free(&w);
    });
}

/// W2: an owner polling (and so re-registering its waker) while the expiry
/// fires: if its last poll said `Pending`, it was woken.
#[test]
fn a_poll_racing_expiry_never_loses_the_wake() {
    model(4, || {
        let w = wheel(1);
        let (first, registered) = counting();
        let mut entry = w.register(at(5), &registered).unwrap().entry;
        let expirer = {
            let w = Arc::clone(&w);
            thread::spawn(move || w.expire(at(5)).fired)
        };
        // The task moved: a new waker.
        let (second, moved) = counting();
        let ready = w.poll(&mut entry, &moved).is_ready();
        assert_eq!(expirer.join().unwrap(), 1);
        if !ready {
            assert_eq!(wakes(&second), 1, "pending, and never woken");
        }
        assert!(wakes(&first) + wakes(&second) <= 1);
        assert!(w.poll(&mut entry, &moved).is_ready());
        w.cancel(entry);
        assert_all_free(&w);
    });
}

/// W3, W4: the owner gives a due entry back and takes it again for a later
/// deadline while an expiry that may have read the first use runs: the new
/// use is neither fired nor woken.
#[test]
fn a_stale_expiry_never_touches_a_reused_entry() {
    model(4, || {
        let w = wheel(1);
        let (old, old_waker) = counting();
        let entry = w.register(at(5), &old_waker).unwrap().entry;
        let expirer = {
            let w = Arc::clone(&w);
            thread::spawn(move || {
                w.expire(at(10));
            })
        };
        w.cancel(entry);
        // The entry may still be held by the expirer: retry until it is back.
        let (new, new_waker) = counting();
        let mut again = loop {
            match w.register(at(100), &new_waker) {
                Ok(reg) => break reg.entry,
                Err(_) => thread::yield_now(),
            }
        };
        expirer.join().unwrap();
        assert!(
            w.poll(&mut again, &new_waker).is_pending(),
            "fired before its deadline"
        );
        assert_eq!(wakes(&new), 0, "a stale expiry woke the new use");
        assert!(wakes(&old) <= 1);
        w.cancel(again);
        assert_all_free(&w);
    });
}

/// W5: a registration racing an expiry's scan is covered: the driver is
/// told to wake, or the expiry's `next` is at or before the deadline; and
/// the word ends at the deadline.
#[test]
fn a_registration_racing_expiry_is_never_lost() {
    model(4, || {
        let w = wheel(2);
        // Another timer armed for later, so the driver is sleeping for it.
        let later = w.register(at(50), Waker::noop()).unwrap();
        assert!(later.wake_driver);
        let expirer = {
            let w = Arc::clone(&w);
            thread::spawn(move || w.expire(at(0)).next)
        };
        let reg = w.register(at(5), Waker::noop()).unwrap();
        let next = expirer.join().unwrap();
        assert!(
            reg.wake_driver || next.is_some_and(|t| t <= at(5)),
            "deadline 5 uncovered: wake {}, next {next:?}",
            reg.wake_driver
        );
        assert_eq!(w.next_due(), Some(at(5)));
        w.cancel(reg.entry);
        w.cancel(later.entry);
        assert_all_free(&w);
    });
}

/// W1, W3, W4: two owners take turns with one entry (each registers,
/// cancels and registers again) while an expiry fires what is due: nobody
/// is woken twice, a use is woken only if due, and the entry comes back.
#[test]
fn two_owners_and_an_expiry_share_one_entry() {
    model(3, || {
        let w = wheel(1);
        let owner = |deadline: u64| {
            let w = Arc::clone(&w);
            thread::spawn(move || {
                let mut counts = Vec::new();
                for _ in 0..2 {
                    let (count, waker) = counting();
                    if let Ok(reg) = w.register(at(deadline), &waker) {
                        w.cancel(reg.entry);
                        counts.push(count);
                    }
                }
                counts
            })
        };
        let due = owner(5);
        let not_due = owner(100);
        w.expire(at(10));
        for count in due.join().unwrap() {
            assert!(wakes(&count) <= 1);
        }
        for count in not_due.join().unwrap() {
            assert_eq!(wakes(&count), 0, "woken before its deadline");
        }
        assert_all_free(&w);
    });
}

/// W5 across stripes: two registrations (each in its own stripe, or one in
/// the other's when its own is taken) racing an expiry are each covered:
/// the registrant is told to wake the driver, or the expiry's `next` is at
/// or before its deadline, or an earlier registration is covered; and the
/// wheel's `next_due` ends at the earliest deadline.
#[test]
fn registrations_in_two_stripes_racing_expiry_are_never_lost() {
    model(3, || {
        // Three entries in two stripes (two and one): the main thread's
        // `later` and the two registrants take every one.
        let w = wheel(3);
        let later = w.register(at(50), Waker::noop()).unwrap();
        let registrant = |deadline: u64| {
            let w = Arc::clone(&w);
            thread::spawn(move || {
                let reg = w
                    .register(at(deadline), Waker::noop())
                    .expect("a free entry");
                (reg.wake_driver, reg.entry)
            })
        };
        let first = registrant(5);
        let second = registrant(7);
        let next = w.expire(at(0)).next;
        let (first_wake, first) = first.join().unwrap();
        let (second_wake, second) = second.join().unwrap();
        let covered = |wake: bool, deadline: u64| wake || next.is_some_and(|t| t <= at(deadline));
        let first_covered = covered(first_wake, 5);
        assert!(
            first_covered,
            "deadline 5 uncovered: wake {first_wake}, next {next:?}"
        );
        assert!(
            covered(second_wake, 7) || first_covered,
            "deadline 7 uncovered: wake {second_wake}, next {next:?}"
        );
        assert_eq!(w.next_due(), Some(at(5)));
        w.cancel(first);
        w.cancel(second);
        w.cancel(later.entry);
        assert_all_free(&w);
    });
}

/// W8, W4: two owners, each registering and cancelling twice on a wheel of
/// one entry per stripe, never find it full (they hold two at most),
/// whichever stripes they start from, and every entry ends in its own
/// stripe's free stack.
#[test]
fn an_owner_whose_stripe_is_empty_takes_another_and_gives_it_back() {
    model(3, || {
        let w = wheel(2);
        let owner = |deadline: u64| {
            let w = Arc::clone(&w);
            thread::spawn(move || {
                for _ in 0..2 {
                    let reg = w
                        .register(at(deadline), Waker::noop())
                        .expect("a free entry");
                    w.cancel(reg.entry);
                }
            })
        };
        let a = owner(5);
        let b = owner(7);
        a.join().unwrap();
        b.join().unwrap();
        assert_all_free(&w);
    });
}
