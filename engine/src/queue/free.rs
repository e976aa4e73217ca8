//! The free stack: slot indices not in use, as a lock-free (Treiber) stack
//! with a tagged head.
//!
//! ```text
//! head:    [ tag : 32 | index + 1 : 32 ]     index + 1 == 0: empty
//! next[i]: index + 1 of the slot below i, or 0
//! ```
//!
//! Each successful push or pop bumps `tag`, so a pop that read `head` and
//! `next[i]` before other threads popped `i`, popped or pushed others and
//! pushed `i` again fails its compare-and-swap instead of installing a stale
//! `next` (the ABA problem), unless exactly a multiple of 2^32 pushes and
//! pops happened in between.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::sync::{AtomicU64, Ordering};

const INDEX_MASK: u64 = 0xFFFF_FFFF;
const TAG_ONE: u64 = 1 << 32;

/// Its head is not padded: the queue keeps it on one cache line with the
/// other words every slow-path operation writes.
pub(crate) struct FreeStack {
    head: AtomicU64,
    next: Box<[AtomicU64]>,
}

impl FreeStack {
    /// A stack holding every index of `0..len`, 0 on top. `len < 2^32 - 1`.
    pub(crate) fn full(len: usize) -> Self {
        let next: Vec<AtomicU64> = (0..len)
            .map(|i| AtomicU64::new(if i + 1 < len { i as u64 + 2 } else { 0 }))
            .collect();
        FreeStack {
            head: AtomicU64::new(u64::from(len > 0)),
            next: next.into_boxed_slice(),
        }
    }

    /// Takes an index, or `None` if every slot is in use.
    #[inline]
    pub(crate) fn pop(&self) -> Option<usize> {
        // ordering: Acquire, pairs with the Release of the push that put the
        // top index there: we see its `next` and everything its pusher did
        // to the slot.
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            let top = (head & INDEX_MASK) as usize;
            if top == 0 {
                return None;
            }
            // ordering: Relaxed; the Acquire above made the pusher's store
            // visible, and a later store means `head` changed, which the
            // compare-and-swap below catches.
            let below = self.next[top - 1].load(Ordering::Relaxed);
            let new = (head & !INDEX_MASK).wrapping_add(TAG_ONE) | below;
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

    /// Gives `index` back.
    #[inline]
    pub(crate) fn push(&self, index: usize) {
        // ordering: Relaxed; the compare-and-swap below decides.
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // ordering: Relaxed; published by the Release below.
            self.next[index].store(head & INDEX_MASK, Ordering::Relaxed);
            let new = (head & !INDEX_MASK).wrapping_add(TAG_ONE) | (index as u64 + 1);
            // ordering: Release on success, pairs with the Acquire of the pop
            // that takes `index`: it sees `next` and the slot as we left it.
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
