//! loom models of the keyed table's free list
//! (`engine/src/rate/keyed/free.rs`), guarantee L8 (docs/guarantees.md):
//! with pops only while pinned and every push of a popped entry deferred
//! through the epoch, the list hands each entry to one owner at a time,
//! loses none, and its length is exact — without an ABA tag.
//!
//! Under `--cfg tenlives_loom` the engine's epoch never runs deferred work
//! (engine/src/sync.rs), so these models drive the list itself with a model
//! of the one promise of crossbeam-epoch the list relies on: a function
//! deferred while some threads are pinned runs only after each of them has
//! unpinned. Each thread's pin counter is odd while it is pinned; pinning
//! is a store then a `SeqCst` fence, and a defer a `SeqCst` fence then a
//! look at every counter, as in crossbeam (its own loom tests check that it
//! keeps this promise). A thread runs its deferred pushes after it unpinned
//! if every thread it saw pinned has moved on by then, as crossbeam runs
//! deferred functions at a later pin or flush; the model's main thread runs
//! the others once every thread has finished. (Waiting for the grace period
//! in a spin loop instead makes the three-thread model too large for loom.)
//!
//! Preemption bound 3 (`LOOM_MAX_PREEMPTIONS` overrides it). The seeded bug:
//! a push that does not wait for the grace period (what a hand-back by an
//! immediate push would be) lets a stalled pop install a stale link and an
//! entry is lost: `an_immediate_push_loses_an_entry` expects that failure.
//! Checked by hand as well: a push whose compare-and-swap is `Relaxed`
//! instead of `Release` (the pop may read a stale link) fails the two other
//! models, as "entries lost: the list holds [true, true, false]" and "more
//! entries than made".
#![cfg(tenlives_loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use loom::thread;
use tenlives_engine::rate::FreeList;
use tenlives_loom_tests::model;

/// The model of the epoch for `N` threads.
struct Epoch<const N: usize> {
    /// Per thread: pins plus unpins (odd: pinned).
    pins: [AtomicUsize; N],
}

impl<const N: usize> Epoch<N> {
    fn new() -> Self {
        Epoch {
            pins: std::array::from_fn(|_| AtomicUsize::new(0)),
        }
    }

    fn pin(&self, me: usize) {
        // ordering: as crossbeam's pin: the store, then a SeqCst fence
        // before any load of the structure.
        self.pins[me].fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    fn unpin(&self, me: usize) {
        // ordering: Release, as crossbeam's unpin: what the thread read
        // while pinned comes before a deferred function that waited for it.
        self.pins[me].fetch_add(1, Ordering::Release);
    }

    /// A defer: which threads are pinned now (their counters).
    fn defer(&self) -> [usize; N] {
        // ordering: a SeqCst fence then the loads, as crossbeam's epoch
        // advance.
        fence(Ordering::SeqCst);
        std::array::from_fn(|u| self.pins[u].load(Ordering::Relaxed))
    }

    /// Whether the grace period of a defer that saw `pinned` is over:
    /// every thread pinned then has unpinned since.
    fn over(&self, pinned: &[usize; N]) -> bool {
        pinned.iter().enumerate().all(|(u, &seen)| {
            // ordering: Acquire pairs with the unpin's Release.
            seen % 2 == 0 || self.pins[u].load(Ordering::Acquire) != seen
        })
    }
}

/// Pushes deferred by a thread: the entries, and the pin counters its defer
/// saw.
struct Deferred<const N: usize> {
    pinned: [usize; N],
    taken: Vec<u32>,
}

/// The list and who holds each entry.
struct Table<const N: usize> {
    list: FreeList,
    held: Vec<AtomicBool>,
    epoch: Epoch<N>,
}

impl<const N: usize> Table<N> {
    fn new(entries: u32) -> Self {
        Table {
            list: FreeList::full(entries),
            held: (0..entries).map(|_| AtomicBool::new(false)).collect(),
            epoch: Epoch::new(),
        }
    }

    /// Pinned as thread `me`: takes up to `n` entries.
    fn take(&self, n: usize) -> Vec<u32> {
        let mut taken = vec![];
        for _ in 0..n {
            // SAFETY: the caller is pinned (`run` pins around `take`).
            if let Some(i) = unsafe { self.list.pop() } {
                // ordering: Relaxed; the swaps of one flag are totally
                // ordered, which is all the check needs.
                let twice = self.held[i as usize].swap(true, Ordering::Relaxed);
                assert!(!twice, "entry {i} handed out twice");
                taken.push(i);
            }
        }
        taken
    }

    /// Thread `me` pins, takes up to `n` entries, defers giving them back
    /// (rotated by one: a push order unlike the pops'), unpins, and gives
    /// them back if the grace period is over; else returns them with the
    /// defer's view, for the main thread. With `grace` false it gives them
    /// back at once.
    fn run(&self, me: usize, n: usize, grace: bool) -> Option<Deferred<N>> {
        self.epoch.pin(me);
        let mut taken = self.take(n);
        let len = self.list.len();
        assert!(len <= self.held.len(), "a length of {len}");
        for &i in &taken {
            // ordering: Relaxed, as in `take`.
            self.held[i as usize].store(false, Ordering::Relaxed);
        }
        if !grace {
            if !taken.is_empty() {
                taken.rotate_left(1);
            }
            for &i in &taken {
                // SAFETY: none: this is the seeded bug, a push that does not
                // wait for the grace period.
                unsafe { self.list.push(i) };
            }
            self.epoch.unpin(me);
            return None;
        }
        let pinned = self.epoch.defer();
        self.epoch.unpin(me);
        if !taken.is_empty() {
            taken.rotate_left(1);
        }
        let deferred = Deferred { pinned, taken };
        if self.epoch.over(&deferred.pinned) {
            self.give_back(deferred);
            return None;
        }
        Some(deferred)
    }

    /// Runs deferred pushes whose grace period is over.
    fn give_back(&self, deferred: Deferred<N>) {
        for i in deferred.taken {
            // SAFETY: popped while pinned, and deferred after that pop: every
            // thread pinned then has unpinned since (`over`, or every thread
            // has finished).
            unsafe { self.list.push(i) };
        }
    }

    /// Alone with the list: it holds every entry once, and says so.
    fn check_whole(&self) {
        let entries = self.held.len();
        assert_eq!(self.list.len(), entries, "the length after the threads");
        let mut seen = vec![false; entries];
        for _ in 0..entries {
            // SAFETY: the threads have finished: nobody else uses the list.
            match unsafe { self.list.pop() } {
                Some(i) => {
                    assert!(!seen[i as usize], "entry {i} twice on the list");
                    seen[i as usize] = true;
                }
                None => panic!("entries lost: the list holds {seen:?}"),
            }
        }
        // SAFETY: as above.
        assert_eq!(unsafe { self.list.pop() }, None, "more entries than made");
    }
}

/// Thread A takes one entry; thread B takes all three and gives them back
/// in another order (0 → 2 → 1 on the list where A read 0 → 1): the ABA
/// that a tagless stack fears. With every push deferred, A's stalled
/// compare-and-swap cannot see the list back at what it read.
fn a_stalled_pop_and_a_reshuffle(grace: bool) {
    model(3, move || {
        let t = Arc::new(Table::<2>::new(3));
        let a = {
            let t = t.clone();
            thread::spawn(move || t.run(0, 1, grace))
        };
        let b = t.run(1, 3, grace);
        let a = a.join().unwrap();
        for d in a.into_iter().chain(b) {
            t.give_back(d);
        }
        t.check_whole();
    });
}

/// L8: the reshuffle under a stalled pop loses nothing.
#[test]
fn a_stalled_pop_never_installs_a_stale_link() {
    a_stalled_pop_and_a_reshuffle(true);
}

/// The seeded bug: the same with pushes that do not wait for the grace
/// period. loom finds the interleaving where A's pop installs the stale
/// link and entry 2 falls off the list.
#[test]
#[should_panic(expected = "entries lost")]
fn an_immediate_push_loses_an_entry() {
    a_stalled_pop_and_a_reshuffle(false);
}

/// L8: three threads take and give back two entries (the list runs empty),
/// each entry held by one thread at a time, and the list ends whole.
#[test]
fn three_threads_share_two_entries_one_owner_at_a_time() {
    model(3, || {
        let t = Arc::new(Table::<3>::new(2));
        let others: Vec<_> = (1..3)
            .map(|me| {
                let t = t.clone();
                thread::spawn(move || t.run(me, 1, true))
            })
            .collect();
        let mut deferred: Vec<_> = t.run(0, 1, true).into_iter().collect();
        for o in others {
            deferred.extend(o.join().unwrap());
        }
        for d in deferred {
            t.give_back(d);
        }
        t.check_whole();
    });
}
