//! The mailbox: how enqueuers, cancellers and sweepers tell the dispatcher
//! about a slot. A bounded multi-producer, single-consumer ring of `u64`
//! notices with a sequence stamp per cell (after Dmitry Vyukov's bounded
//! queue).
//!
//! ```text
//! tail:      next position to reserve (fetch_add by producers)
//! head:      next position to read (the dispatcher's own, in the scheduler)
//! cell[p % capacity].stamp:
//!     p              free for the producer of position p
//!     p + 1          holds the notice of position p
//! ```
//!
//! A producer reserves position `p` with one `fetch_add` on `tail`, writes
//! the notice and publishes it by storing the stamp `p + 1` (Release). The
//! dispatcher reads position `head` when its stamp is `head + 1`, then frees
//! the cell for the next lap by storing the stamp `head + capacity`. A
//! reserved cell whose notice is not written yet stops the dispatcher; the
//! producer asks for a dispatcher pass after writing, so the notice is read
//! by that pass.
//!
//! # Why a producer never waits
//!
//! Each slot has at most two notices per use (its arrival, and one
//! retirement), and is reused only after both were read (its `SCHED` and
//! `NOTICE` bits, see `slot.rs`). With `capacity >= 2 * slots`, among any
//! `capacity + 1` consecutive positions some slot has notices of two
//! different uses; the later use began after every notice of the earlier one
//! was read, in particular the one at the oldest of these positions, and the
//! reads are in position order. So when position `p` is reserved, position
//! `p - capacity` has been read and its cell freed, and that is visible to
//! the producer of `p` through the chain of `fetch_add`s on `tail`.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::sync::{AtomicU64, Ordering, spin_hint};

struct Cell {
    stamp: AtomicU64,
    notice: AtomicU64,
}

/// Its tail is not padded: the queue keeps it on one cache line with the
/// other words every slow-path operation writes.
pub(super) struct Mailbox {
    tail: AtomicU64,
    cells: Box<[Cell]>,
    mask: u64,
}

/// What a notice says about a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Notice {
    /// The slot was just enqueued: link it into the scheduler.
    Arrival(usize),
    /// The slot left `WAITING` without the dispatcher (cancelled or timed
    /// out): unlink it if it is linked, and drop its `NOTICE` bit.
    Retire(usize),
}

const RETIRE: u64 = 1 << 63;

impl Notice {
    const fn encode(self) -> u64 {
        match self {
            Notice::Arrival(i) => i as u64,
            Notice::Retire(i) => i as u64 | RETIRE,
        }
    }
    const fn decode(word: u64) -> Notice {
        if word & RETIRE == 0 {
            Notice::Arrival(word as usize)
        } else {
            Notice::Retire((word & !RETIRE) as usize)
        }
    }
}

impl Mailbox {
    /// A mailbox for `slots` slots: room for two notices per slot.
    pub(super) fn for_slots(slots: usize) -> Self {
        let capacity = (2 * slots).next_power_of_two();
        let cells: Vec<Cell> = (0..capacity)
            .map(|i| Cell {
                stamp: AtomicU64::new(i as u64),
                notice: AtomicU64::new(0),
            })
            .collect();
        Mailbox {
            tail: AtomicU64::new(0),
            cells: cells.into_boxed_slice(),
            mask: capacity as u64 - 1,
        }
    }

    /// Posts a notice. Never waits (see the module documentation); the
    /// caller then asks for a dispatcher pass.
    #[inline]
    pub(super) fn push(&self, notice: Notice) {
        // ordering: AcqRel; the chain of reservations carries the
        // dispatcher's frees of earlier laps to later producers (see the
        // module documentation).
        let pos = self.tail.fetch_add(1, Ordering::AcqRel);
        let cell = &self.cells[(pos & self.mask) as usize];
        // ordering: Acquire, pairs with the Release of the dispatcher's
        // free of this cell: our writes come after its read of the last lap.
        let mut stamp = cell.stamp.load(Ordering::Acquire);
        // The capacity bound makes the cell free already, so the loop below
        // never runs; a debug build says so loudly instead of spinning.
        debug_assert_eq!(stamp, pos, "mailbox cell not free: capacity bound broken");
        while stamp != pos {
            spin_hint();
            // ordering: Acquire, as above.
            stamp = cell.stamp.load(Ordering::Acquire);
        }
        // ordering: Relaxed; published by the Release store of the stamp.
        cell.notice.store(notice.encode(), Ordering::Relaxed);
        // ordering: Release, pairs with the Acquire in `pop`.
        cell.stamp.store(pos + 1, Ordering::Release);
    }

    /// Reads the notice at `*head` if it is written, and moves `head` on.
    /// Only the dispatcher calls this, with its own `head`.
    #[inline]
    pub(super) fn pop(&self, head: &mut u64) -> Option<Notice> {
        let pos = *head;
        let cell = &self.cells[(pos & self.mask) as usize];
        // ordering: Acquire, pairs with the Release of the producer's stamp:
        // we see the notice and whatever the producer did before posting it.
        if cell.stamp.load(Ordering::Acquire) != pos + 1 {
            return None;
        }
        // ordering: Relaxed; ordered by the Acquire above.
        let notice = Notice::decode(cell.notice.load(Ordering::Relaxed));
        // ordering: Release, pairs with the Acquire of the producer that
        // reuses the cell a lap later.
        cell.stamp.store(pos + self.mask + 1, Ordering::Release);
        *head = pos + 1;
        Some(notice)
    }
}

#[cfg(all(test, not(tenlives_loom)))]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_in_order_across_laps() {
        let m = Mailbox::for_slots(2);
        let mut head = 0;
        for lap in 0..5 {
            m.push(Notice::Arrival(lap));
            m.push(Notice::Retire(lap + 1));
            m.push(Notice::Arrival(3));
            assert_eq!(m.pop(&mut head), Some(Notice::Arrival(lap)));
            assert_eq!(m.pop(&mut head), Some(Notice::Retire(lap + 1)));
            assert_eq!(m.pop(&mut head), Some(Notice::Arrival(3)));
            assert_eq!(m.pop(&mut head), None);
        }
        assert_eq!(head, 15);
    }
}
