//! The free stack: slot indices not in use, as a lock-free (Treiber) stack
//! with a tagged head.
//!
//! ```text
//!  63                                   22 21                  0
//! +---------------------------------------+--------------------+
//! |                 tag                   |     index + 1      |
//! +---------------------------------------+--------------------+
//! index + 1 == 0: empty
//! next[i]: index + 1 of the slot below i, or 0
//! ```
//!
//! | field     | bits    | meaning                                                 |
//! |-----------|---------|---------------------------------------------------------|
//! | index + 1 | 0..=21  | the top slot, plus one; a queue has at most `2 * MAX_CAPACITY = 2^21` slots, so `index + 1 <= 2^21` fits |
//! | tag       | 22..=63 | 42 bits, bumped (wrapping) by every successful push and pop |
//!
//! Each successful push or pop bumps `tag`, so a pop that read `head` and
//! `next[i]` before other threads popped `i`, popped or pushed others and
//! pushed `i` again fails its compare-and-swap instead of installing a stale
//! `next` (the ABA problem), unless exactly a multiple of 2^42 pushes and
//! pops happened in between: at a generous 10^8 stack operations a second,
//! a pop stalled between its load and its compare-and-swap for over 12
//! hours. (With the 32-bit tag this file had before, 43 seconds: a
//! descheduled thread on an overloaded machine.)
//!
//! Under `cfg(tenlives_loom)` the tag is 2 bits, so that loom models wrap
//! it: `loom-tests/tests/loom_admission_queue.rs` shows a pop stalled over
//! 3 operations is refused, and one stalled over exactly 4 (one full wrap)
//! is fooled, which is what the width buys.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::sync::{AtomicU64, Ordering};

/// Bits of `index + 1`.
const INDEX_BITS: u32 = 22;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
/// The most indices a stack holds (`index + 1` must stay below the mask).
pub(crate) const MAX_FREE_LEN: usize = INDEX_MASK as usize - 1;
/// Bits of the tag: every bit above the index (2 under loom, to wrap it).
#[cfg(not(tenlives_loom))]
const TAG_BITS: u32 = 64 - INDEX_BITS;
#[cfg(tenlives_loom)]
const TAG_BITS: u32 = 2;
const TAG_ONE: u64 = 1 << INDEX_BITS;
const TAG_MASK: u64 = (u64::MAX >> (64 - TAG_BITS)) << INDEX_BITS;

// Every slot index of the largest queue fits the index field.
const _: () = assert!(2 * (super::MAX_CAPACITY as u64) < (1 << INDEX_BITS));

/// `head`'s tag bumped by one (wrapping within its bits), over `top`
/// (an `index + 1`).
#[inline]
const fn bumped(head: u64, top: u64) -> u64 {
    ((head & TAG_MASK).wrapping_add(TAG_ONE) & TAG_MASK) | top
}

/// Its head is not padded: the queue keeps it on one cache line with the
/// other words every slow-path operation writes.
pub(crate) struct FreeStack {
    head: AtomicU64,
    next: Box<[AtomicU64]>,
}

impl FreeStack {
    /// A stack holding every index of `0..len`, 0 on top; `len` at most
    /// [`MAX_FREE_LEN`].
    pub(crate) fn full(len: usize) -> Self {
        assert!((len as u64) < INDEX_MASK, "free stack of {len} slots");
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
            let new = bumped(head, below);
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
            let new = bumped(head, index as u64 + 1);
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

#[cfg(all(test, not(tenlives_loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_tag_wraps_within_its_bits_and_keeps_the_index() {
        let top = INDEX_MASK; // the largest index + 1
        let full_tag = TAG_MASK | top;
        assert_eq!(bumped(full_tag, top), top, "the tag wraps to 0");
        assert_eq!(bumped(top, 5), TAG_ONE | 5);
        assert_eq!(TAG_MASK & INDEX_MASK, 0);
        assert_eq!(TAG_MASK | INDEX_MASK, u64::MAX, "every bit is used");
    }

    #[test]
    fn pops_and_pushes_in_lifo_order() {
        let stack = FreeStack::full(3);
        assert_eq!(stack.pop(), Some(0));
        assert_eq!(stack.pop(), Some(1));
        stack.push(0);
        assert_eq!(stack.pop(), Some(0));
        assert_eq!(stack.pop(), Some(2));
        assert_eq!(stack.pop(), None);
    }
}
