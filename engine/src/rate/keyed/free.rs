//! The keyed table's free list: the numbers of the arena entries not in use,
//! as a lock-free (Treiber) stack linked through an array of numbers, with
//! its length in its head word and no ABA tag.
//!
//! ```text
//!  63                           32 31                            0
//! +-------------------------------+-------------------------------+
//! |            length             |           top + 1             |
//! +-------------------------------+-------------------------------+
//! top + 1 == 0: empty
//! next[i]: the number plus one of the entry below i, or 0
//! ```
//!
//! | field   | bits   | meaning                                                    |
//! |---------|--------|------------------------------------------------------------|
//! | top + 1 | 0..32  | the entry on top, its number plus one (`0`: empty); a table has at most 2^30 entries |
//! | length  | 32..64 | how many entries the list holds, exactly: every push adds one and every pop takes one in the same compare-and-swap that moves the top |
//!
//! # Why no tag
//!
//! A Treiber stack's pop reads the head (`i` on top), then `next[i]`, then
//! swaps the head from what it read to `next[i]`. If, between its read and
//! its compare-and-swap, `i` is popped, the list changes below it and `i` is
//! pushed back, the head is again what the pop read (the length too, if as
//! many entries came back as went) and the pop installs a stale `next[i]`:
//! an entry in use goes back on the list, or free entries are lost (the ABA
//! problem). Tags make the head differ; here instead the protocol makes
//! that sequence impossible, by the contract of crossbeam-epoch:
//!
//! 1. [`pop`](FreeList::pop) is called only by a thread pinned for the
//!    whole call (an insert is pinned from its lookup to its publish).
//! 2. [`push`](FreeList::push) of an entry taken by a pop runs only from a
//!    function deferred through crossbeam-epoch (`guard.defer`), deferred
//!    after that pop: an evicted entry's reclaim (deferred by the sweeper
//!    after it unlinked the entry, which the inserter's pop and publish
//!    preceded) and an insert's hand-back of an entry it took and did not
//!    publish (deferred by the inserter after its pop). Pushes at
//!    construction run before any pop.
//!
//! Take a pop by thread A that read `i` on top, and suppose `i` is popped
//! (by B) after A's read and pushed back before A's compare-and-swap. A was
//! pinned before its read, so before B's pop, and the push's defer comes
//! after B's pop: A was pinned when the push was deferred and had not
//! unpinned (it is still before its compare-and-swap). crossbeam-epoch runs
//! a deferred function only once every thread pinned when it was deferred
//! has unpinned, so the push runs after A's compare-and-swap: a
//! contradiction. (This is the ordinary use of epoch reclamation: the pop
//! unlinks `i`, the deferred push is its reuse, and a thread that read `i`
//! while pinned keeps it from reuse until it unpins. crossbeam's `SeqCst`
//! fences at pin and at each epoch advance order A's pin before the
//! collector's look at A, since A's read of the head came before B's pop in
//! the head's modification order.) So the head A compares against names
//! `i` only if `i` never left the list in between, and `next[i]`, written
//! only by a push of `i`, is what A read: its compare-and-swap installs the
//! right entry, and the length it computed is exact.
//!
//! What it costs: an entry an insert took and handed back (a lost race to
//! publish the same key, a panicking `K::clone` or `K::eq`) is reusable
//! only after a grace period, like an evicted one; it counts in the table's
//! `retired` hint, so a new key that finds the list empty waits for it as
//! for evicted entries (`reclaim_now`) rather than being refused at once.
//! Each hand-back is one deferred function in the thread's epoch bag, as
//! each eviction already is.
//!
//! The loom model `loom-tests/tests/loom_free_list.rs` checks the protocol
//! with a model of the epoch's grace periods, and that an immediate push
//! (no grace period) loses an entry.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// The low half of the head: the top entry's number plus one.
const TOP: u64 = u32::MAX as u64;
/// One in the head's length field.
const ONE: u64 = 1 << 32;

/// The free entries of a keyed table (see the module documentation).
pub struct FreeList {
    head: AtomicU64,
    /// `next[i]`: the entry below `i` on the list, its number plus one.
    /// Written only by a push of `i`, before the compare-and-swap that
    /// publishes it.
    next: Box<[AtomicU32]>,
}

impl FreeList {
    /// A list holding every entry of `0..len`, 0 on top (so entries are
    /// handed out in order at first); `len` at most 2^31.
    pub fn full(len: u32) -> Self {
        assert!(len <= 1 << 31, "free list of {len} entries");
        let next: Vec<AtomicU32> = (0..len)
            .map(|i| AtomicU32::new(if i + 1 < len { i + 2 } else { 0 }))
            .collect();
        FreeList {
            head: AtomicU64::new((u64::from(len) * ONE) | u64::from(len > 0)),
            next: next.into_boxed_slice(),
        }
    }

    /// How many entries the list holds (exact at the instant of the load).
    #[inline]
    pub fn len(&self) -> usize {
        // ordering: Relaxed; a count, it publishes nothing.
        (self.head.load(Ordering::Relaxed) >> 32) as usize
    }

    /// Whether the list is empty (at the instant of the load).
    #[cfg(tenlives_loom)]
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes an entry, or `None` if the list is empty.
    ///
    /// # Safety
    ///
    /// The caller is pinned in crossbeam-epoch for the whole call (rule 1 of
    /// the module documentation): the pushes' contract rests on it, and
    /// with it the entry returned is the caller's alone.
    #[inline]
    pub unsafe fn pop(&self) -> Option<u32> {
        // ordering: Acquire pairs with the Release of the push that put the
        // top entry there (pops in between are read-modify-writes, so they
        // continue its release sequence): we read the `next` it wrote and
        // see the entry as its pusher left it.
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            let top = (head & TOP) as u32;
            if top == 0 {
                return None;
            }
            // ordering: Relaxed; the Acquire above made the pusher's store
            // visible, and no later store to it can happen before our
            // compare-and-swap (the module documentation's argument).
            let below = self.next[top as usize - 1].load(Ordering::Relaxed);
            // The length is at least one: the list holds `top`.
            let new = ((head & !TOP) - ONE) | u64::from(below);
            // ordering: Acquire on both outcomes, as for the first load.
            match self
                .head
                .compare_exchange_weak(head, new, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => return Some(top - 1),
                Err(actual) => head = actual,
            }
        }
    }

    /// Gives entry `index` back.
    ///
    /// # Safety
    ///
    /// `index` was taken by [`pop`](Self::pop) and is not on the list, and
    /// no pop that could have read it on top is still running: this push
    /// runs from a function deferred through crossbeam-epoch after that pop
    /// (rule 2 of the module documentation), or no other thread is using
    /// the list.
    #[inline]
    pub unsafe fn push(&self, index: u32) {
        // ordering: Relaxed; the compare-and-swap below decides.
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // ordering: Relaxed; published by the Release below. Nobody
            // reads it meanwhile: `index` is not on the list, and a pop
            // that read it on top earlier has finished (the contract).
            self.next[index as usize].store((head & TOP) as u32, Ordering::Relaxed);
            let new = ((head & !TOP) + ONE) | (u64::from(index) + 1);
            // ordering: Release on success, pairs with the Acquire of the pop
            // that takes `index`: it reads `next` and sees the entry as we
            // left it.
            match self
                .head
                .compare_exchange_weak(head, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => head = actual,
            }
        }
    }
}

#[cfg(all(test, not(tenlives_loom)))]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    #[test]
    fn pops_in_order_then_last_in_first_out() {
        let list = FreeList::full(3);
        assert_eq!(list.len(), 3);
        // SAFETY: for every pop and push here: one thread, nothing else
        // uses the list, and every push gives back an entry popped before.
        unsafe {
            assert_eq!(list.pop(), Some(0));
            assert_eq!(list.pop(), Some(1));
            list.push(0);
            assert_eq!(list.len(), 2);
            assert_eq!(list.pop(), Some(0));
            assert_eq!(list.pop(), Some(2));
            assert_eq!(list.pop(), None);
            assert_eq!(list.len(), 0);
        }
        assert_eq!(FreeList::full(0).len(), 0);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Pop,
        /// Push back the held entry at this position (modulo how many are
        /// held), if any.
        Push(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![Just(Op::Pop), any::<usize>().prop_map(Op::Push)]
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: if cfg!(miri) { 8 } else { 256 },
            // No regression file: Miri's isolation has no file system.
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// L8: from one thread the list is a stack: every pop, push and
        /// length agrees with a `Vec` used as one (entries given back in
        /// any order), and entries are never handed out twice.
        #[test]
        fn the_list_matches_a_sequential_stack(
            len in 0u32..12,
            ops in proptest::collection::vec(op(), 0..64),
        ) {
            let list = FreeList::full(len);
            let mut model: Vec<u32> = (0..len).rev().collect();
            let mut held = vec![];
            for op in ops {
                match op {
                    Op::Pop => {
                        // SAFETY: one thread; see the first test.
                        let got = unsafe { list.pop() };
                        prop_assert_eq!(got, model.pop());
                        if let Some(i) = got {
                            prop_assert!(!held.contains(&i), "entry {} handed out twice", i);
                            held.push(i);
                        }
                    }
                    Op::Push(at) if !held.is_empty() => {
                        let i = held.swap_remove(at % held.len());
                        // SAFETY: one thread; `i` was popped and is held.
                        unsafe { list.push(i) };
                        model.push(i);
                    }
                    Op::Push(_) => {}
                }
                prop_assert_eq!(list.len(), model.len());
            }
        }
    }
}
