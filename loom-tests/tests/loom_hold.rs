//! loom model of the tokio adapter's hold for the breaker's answer
//! (adapters/tokio/src/stack/hold.rs, `Holds`).
//!
//! The file below is the adapter's own: it is compiled here through
//! `#[path]`, and with `--cfg tenlives_loom` its cfg shim takes the atomics,
//! the fence and the waker cells (`loom::future::AtomicWaker`) from loom.
//! The threads play the stack's parts as adapters/tokio/src/stack/future.rs
//! does: a refused request `claim`s a slot, then in its `Holding` phase
//! `register`s its waker and compares the answer count with the one it saw
//! at its first registration (after which it looks at the breaker once
//! more); a probe's outcome is `probe_answered`; a request that stops
//! holding `release`s its slot. The breaker's answer is a flag the probe
//! sets before reporting (`closed`).
//!
//! HB4 (docs/guarantees.md): the wake-up is never lost (a held request
//! whose look found the breaker still refusing is woken by the answer, or
//! sees the count move: else `block_on` never returns and loom reports a
//! deadlock), one answer wakes each slot at most once, a request that sees
//! the count move sees the breaker's answer made before it, and a wake in
//! flight for a slot given back and taken again reaches at most the new
//! owner, once. HB2: a slot has one owner at a time (loom checks every
//! access to each slot's cell) and the count of held requests is exact
//! once they are given back. Preemption bound 3 (2 for the model with
//! three threads besides the main one); every model also passes with
//! `LOOM_MAX_PREEMPTIONS=5` (six minutes for the file).
//!
//! Each seeded bug fails a model: the waiter's fence weakened to `Release`,
//! or the notifier's removed, fails the three wake models as loom's
//! "deadlock" (the held request asleep, the probe done); the answer
//! count's bump made `Relaxed` fails them as "saw the count move but not
//! the answer"; the slot's release made `Relaxed` fails the three claim
//! models as "Causality violation: Concurrent write accesses to
//! `UnsafeCell`".
#![cfg(tenlives_loom)]

#[allow(dead_code)]
#[path = "../../adapters/tokio/src/stack/hold.rs"]
mod hold;

use std::future::poll_fn;
use std::task::{Poll, Wake, Waker};
use std::time::Duration;

use hold::Holds;
use loom::cell::UnsafeCell;
use loom::future::block_on;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::thread;
use tenlives_loom_tests::model;

const WAIT: Duration = Duration::from_secs(1);

/// A waker that counts its wakes and passes them on to `block_on`'s.
struct Counted {
    inner: Waker,
    wakes: Arc<AtomicUsize>,
}

impl Wake for Counted {
    fn wake(self: std::sync::Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        self.inner.wake_by_ref();
    }
}

/// The stack's `Holding` phase for a request holding `slot`, until the
/// breaker answered: registers (the first registration takes the count to
/// compare with and looks at the breaker once more), then waits for the
/// count to move. Returns whether the breaker had closed when the request
/// tried admission again.
fn hold_until_answered(
    holds: &Holds,
    slot: usize,
    closed: &AtomicBool,
    wakes: &Arc<AtomicUsize>,
) -> bool {
    let mut baseline = None;
    block_on(poll_fn(|cx| {
        let waker = Waker::from(std::sync::Arc::new(Counted {
            inner: cx.waker().clone(),
            wakes: wakes.clone(),
        }));
        loop {
            let seen = holds.register(slot, &waker);
            match baseline {
                None => {
                    baseline = Some(seen);
                    // Looks again: the answer may have come before the
                    // registration.
                    if closed.load(Ordering::Relaxed) {
                        return Poll::Ready(true);
                    }
                }
                Some(before) if before != seen => {
                    // The count moved: the breaker answered, and the
                    // answer made before the count moved is seen.
                    let admitted = closed.load(Ordering::Relaxed);
                    assert!(admitted, "saw the count move but not the answer");
                    return Poll::Ready(admitted);
                }
                Some(_) => return Poll::Pending,
            }
        }
    }))
}

/// A probe through the stack reports the breaker's answer: the breaker
/// closes (a transition made before the report), then the stack wakes the
/// held requests.
fn answer(holds: &Holds, closed: &AtomicBool) {
    // ordering: Relaxed; the report's bump of the count must carry it.
    closed.store(true, Ordering::Relaxed);
    holds.probe_answered();
}

/// HB4: a request refused while a probe is out takes a slot and holds; the
/// probe answers concurrently. The request is admitted (woken, or seeing
/// the answer at its registration), woken at most once, and leaves nothing.
#[test]
fn a_held_request_never_misses_the_answer() {
    model(3, || {
        let holds = Arc::new(Holds::new(WAIT, 1));
        let closed = Arc::new(AtomicBool::new(false));
        holds.probe_sent();
        let wakes = Arc::new(AtomicUsize::new(0));
        let waiter = {
            let (holds, closed, wakes) = (holds.clone(), closed.clone(), wakes.clone());
            thread::spawn(move || {
                let slot = holds.claim().expect("a free slot");
                let admitted = hold_until_answered(&holds, slot, &closed, &wakes);
                holds.release(slot);
                admitted
            })
        };
        let probe = {
            let (holds, closed) = (holds.clone(), closed.clone());
            thread::spawn(move || answer(&holds, &closed))
        };
        assert!(waiter.join().unwrap(), "admitted once the breaker closed");
        probe.join().unwrap();
        let woken = wakes.load(Ordering::SeqCst);
        assert!(woken <= 1, "woken {woken} times by one answer");
        assert_eq!(holds.held(), 0);
        assert_eq!(holds.probes_in_flight(), 0);
    });
}

/// HB4: a slot given back and taken again while the answer's wake is in
/// flight. The first request registers and gives its slot back (admitted
/// or dropped); the next request, on the same thread, takes the same slot
/// and holds. The wake reaches the old waker or the new one, once in all:
/// the new owner at most polls once more, and is never left asleep.
#[test]
fn a_wake_racing_a_slot_handed_on_is_not_lost() {
    model(3, || {
        let holds = Arc::new(Holds::new(WAIT, 1));
        let closed = Arc::new(AtomicBool::new(false));
        holds.probe_sent();
        let (old, new) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let requests = {
            let (holds, closed, old, new) =
                (holds.clone(), closed.clone(), old.clone(), new.clone());
            thread::spawn(move || {
                let slot = holds.claim().expect("a free slot");
                let waker = Waker::from(std::sync::Arc::new(Counted {
                    inner: Waker::noop().clone(),
                    wakes: old,
                }));
                holds.register(slot, &waker);
                holds.release(slot);
                let again = holds.claim().expect("the slot given back");
                assert_eq!(again, slot);
                let admitted = hold_until_answered(&holds, again, &closed, &new);
                holds.release(again);
                admitted
            })
        };
        let probe = {
            let (holds, closed) = (holds.clone(), closed.clone());
            thread::spawn(move || answer(&holds, &closed))
        };
        assert!(requests.join().unwrap(), "the new owner was admitted");
        probe.join().unwrap();
        let (old, new) = (old.load(Ordering::SeqCst), new.load(Ordering::SeqCst));
        assert!(old + new <= 1, "one answer woke {old} old and {new} new");
        assert_eq!(holds.held(), 0);
    });
}

/// HB4, with the slot handed between two threads: the old owner registers
/// and gives its slot back while the next request spins for it (the only
/// one) and then holds, and the answer comes concurrently.
#[test]
fn a_slot_handed_to_another_request_mid_wake_loses_nothing() {
    model(2, || {
        let holds = Arc::new(Holds::new(WAIT, 1));
        let closed = Arc::new(AtomicBool::new(false));
        holds.probe_sent();
        let slot = holds.claim().expect("a free slot");
        let (old, new) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let first = {
            let (holds, old) = (holds.clone(), old.clone());
            thread::spawn(move || {
                let waker = Waker::from(std::sync::Arc::new(Counted {
                    inner: Waker::noop().clone(),
                    wakes: old,
                }));
                holds.register(slot, &waker);
                holds.release(slot);
            })
        };
        let next = {
            let (holds, closed, new) = (holds.clone(), closed.clone(), new.clone());
            thread::spawn(move || {
                let slot = loop {
                    match holds.claim() {
                        Some(slot) => break slot,
                        None => thread::yield_now(),
                    }
                };
                let admitted = hold_until_answered(&holds, slot, &closed, &new);
                holds.release(slot);
                admitted
            })
        };
        let probe = {
            let (holds, closed) = (holds.clone(), closed.clone());
            thread::spawn(move || answer(&holds, &closed))
        };
        first.join().unwrap();
        assert!(next.join().unwrap(), "the new owner was admitted");
        probe.join().unwrap();
        let (old, new) = (old.load(Ordering::SeqCst), new.load(Ordering::SeqCst));
        assert!(old + new <= 1, "one answer woke {old} old and {new} new");
        assert_eq!(holds.held(), 0);
    });
}

/// HB2: two requests race for the free slots of a hold of `cap` with
/// `taken` slots already held. Each slot has one owner at a time (each
/// owner writes and reads back its mark in the slot's cell, and loom checks
/// the cell's accesses are ordered), no slot past `cap` is handed out, and
/// the held count is exact once both gave theirs back.
fn two_claimers(cap: usize, taken: usize) {
    model(3, move || {
        let holds = Arc::new(Holds::new(WAIT, cap));
        for _ in 0..taken {
            holds.claim().expect("a free slot");
        }
        let cells: Arc<Vec<UnsafeCell<usize>>> =
            Arc::new((0..cap).map(|_| UnsafeCell::new(0)).collect());
        let claimer = |id: usize| {
            let (holds, cells) = (holds.clone(), cells.clone());
            thread::spawn(move || {
                let slot = holds.claim()?;
                assert!(slot < cap, "slot {slot} past the cap {cap}");
                // SAFETY: the slot's owner is the only one to touch its
                // cell; loom reports two unordered accesses.
                cells[slot].with_mut(|mark| unsafe {
                    assert_eq!(*mark, 0, "slot {slot} already owned");
                    *mark = id;
                });
                assert!(holds.held() > taken, "its own slot is counted");
                // SAFETY: as above.
                cells[slot].with_mut(|mark| unsafe {
                    assert_eq!(*mark, id, "slot {slot} taken meanwhile");
                    *mark = 0;
                });
                holds.release(slot);
                Some(slot)
            })
        };
        let (a, b) = (claimer(1), claimer(2));
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        let free = cap - taken;
        if free >= 2 {
            assert!(a.is_some() && b.is_some(), "both had a free slot");
        }
        assert!(a.is_some() || b.is_some(), "one slot was free");
        assert_eq!(holds.held(), taken, "every slot given back");
    });
}

#[test]
fn two_requests_race_for_one_slot() {
    two_claimers(1, 0);
}

#[test]
fn two_requests_race_for_two_slots() {
    two_claimers(2, 0);
}

/// The last free slot is in the second occupancy word (cap 65, 64 held).
#[test]
fn two_requests_race_for_the_last_slot_of_the_second_word() {
    two_claimers(65, 64);
}
