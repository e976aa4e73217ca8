//! The memo of a throttle window's closed buckets.
//!
//! A throttle judges every admission by its whole window: with the default
//! 12 buckets over 8 stripes that is 96 slots to add up, about 1 100
//! instructions, where the window's older buckets change no more once their
//! time has passed. So the sum of every bucket but the two newest is kept
//! here, for the epoch it was made at, and an admission adds up only the two
//! newest buckets (16 slots) to it. The bucket before the current one stays
//! live because a request that read its end time just before a bucket
//! boundary records into the older bucket just after it; a record made more
//! than a whole bucket after its end time was read lands in a bucket this
//! memo has already summed, and is missed by the admissions of that bucket
//! (the next bucket's memo counts it again while it is in the window).
//!
//! # Protocol: a sequence lock over the epoch
//!
//! ```text
//! seq:    +---------------------------------------+---------+
//!         |  epoch + 1  (63 bits)                 | writing |
//!         +---------------------------------------+---------+
//! calls, failures: the sums, valid when seq = (epoch + 1) << 1
//! ```
//!
//! `seq == 0`: nothing remembered. A writer claims the memo with a
//! compare-and-swap from an even `seq` of an older epoch to its own epoch
//! with the writing bit, stores the two sums, then stores its even `seq`
//! (release). A reader loads `seq` (acquire), the sums, then `seq` again
//! after an acquire fence: the sums are the writer's of that `seq` when both
//! loads read the same even value, else the reader adds up the buckets
//! itself. Writers only move the epoch forward: a time that goes back reads
//! no memo (and makes none), so it is slower, never wrong. Every failure
//! falls back to adding up the buckets, so the memo changes how fast an
//! admission is, never what it decides (up to the late record above).

use crate::breaker::WindowCounts;
use crate::sync::{AtomicU64, Ordering, fence};

/// The closed buckets' sums, for one epoch. See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct ClosedSum {
    seq: AtomicU64,
    calls: AtomicU64,
    failures: AtomicU64,
}

/// `seq` when the sums of `epoch` are in place; `None` for an epoch too
/// large to encode (such a window is never remembered).
#[inline]
fn ready(epoch: u64) -> Option<u64> {
    epoch.checked_add(1)?.checked_mul(2)
}

impl ClosedSum {
    /// The remembered sums of `epoch`, if they are in place.
    #[inline]
    pub(crate) fn get(&self, epoch: u64) -> Option<WindowCounts> {
        let want = ready(epoch)?;
        // ordering: Acquire, pairs with the writer's Release store of `seq`:
        // the sums it stored before are visible below.
        if self.seq.load(Ordering::Acquire) != want {
            return None;
        }
        // ordering: Relaxed; the fence below orders them before the second
        // load of `seq`.
        let calls = self.calls.load(Ordering::Relaxed);
        let failures = self.failures.load(Ordering::Relaxed);
        // ordering: Acquire fence; if a sum above came from a later writer,
        // that writer's Release fence (after its claim) synchronises with
        // this one, and the load below sees its claim, not `want`.
        fence(Ordering::Acquire);
        // ordering: Relaxed; ordered after the sums by the fence.
        if self.seq.load(Ordering::Relaxed) != want {
            return None;
        }
        Some(WindowCounts {
            calls,
            failures,
            slow: 0,
        })
    }

    /// Remembers `sums` as the closed buckets' sums of `epoch`, unless a
    /// writer holds the memo or it already holds `epoch` or a later one.
    /// Once a bucket: out of line.
    #[cold]
    pub(crate) fn put(&self, epoch: u64, sums: WindowCounts) {
        let Some(want) = ready(epoch) else {
            return;
        };
        // ordering: Relaxed; the compare-and-swap below decides.
        let seq = self.seq.load(Ordering::Relaxed);
        if seq & 1 == 1 || seq >= want {
            return;
        }
        // ordering: Acquire on success, pairs with the Release store of
        // `seq` by the writer before: its stores of the sums happen before
        // ours, so ours come after them in the sums' modification order (with
        // Relaxed, the loom model `loom_throttle` found the older writer's
        // sums left in place under the newer epoch). Relaxed on failure:
        // nothing is written then. The Release fence below orders the
        // sums' stores after the claim for readers.
        if self
            .seq
            .compare_exchange(seq, want | 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        // ordering: Release fence; a reader whose fenced loads see one of
        // the stores below then sees the claim in its second `seq` load.
        fence(Ordering::Release);
        // ordering: Relaxed; published by the Release store of `seq`.
        self.calls.store(sums.calls, Ordering::Relaxed);
        self.failures.store(sums.failures, Ordering::Relaxed);
        // ordering: Release, pairs with the reader's Acquire load of `seq`.
        self.seq.store(want, Ordering::Release);
    }

    /// Forgets what is remembered (the window was rewritten under it).
    pub(crate) fn clear(&self) {
        // ordering: SeqCst; a restore, not the request path.
        self.seq.store(0, Ordering::SeqCst);
    }
}

#[cfg(all(test, not(tenlives_loom)))]
mod tests {
    use super::*;

    fn sums(calls: u64, failures: u64) -> WindowCounts {
        WindowCounts {
            calls,
            failures,
            slow: 0,
        }
    }

    #[test]
    fn remembers_one_epoch_and_only_moves_forward() {
        let memo = ClosedSum::default();
        assert_eq!(memo.get(0), None);
        memo.put(5, sums(10, 3));
        assert_eq!(memo.get(5), Some(sums(10, 3)));
        assert_eq!(memo.get(4), None);
        assert_eq!(memo.get(6), None);
        // An older epoch (time went back) does not replace it...
        memo.put(4, sums(1, 1));
        assert_eq!(memo.get(5), Some(sums(10, 3)));
        // ...nor does the same epoch again; a later one does.
        memo.put(5, sums(2, 2));
        assert_eq!(memo.get(5), Some(sums(10, 3)));
        memo.put(7, sums(20, 0));
        assert_eq!(memo.get(7), Some(sums(20, 0)));
        assert_eq!(memo.get(5), None);
        memo.clear();
        assert_eq!(memo.get(7), None);
    }

    #[test]
    fn epochs_at_the_end_of_time_are_never_remembered() {
        let memo = ClosedSum::default();
        for epoch in [u64::MAX, u64::MAX / 2, u64::MAX / 2 + 1] {
            memo.put(epoch, sums(1, 0));
            assert_eq!(memo.get(epoch), None, "{epoch}");
        }
        let last = u64::MAX / 2 - 1;
        memo.put(last, sums(1, 0));
        assert_eq!(memo.get(last), Some(sums(1, 0)));
    }

    #[test]
    fn a_claimed_memo_reads_as_empty_and_refuses_writers() {
        let memo = ClosedSum::default();
        memo.put(3, sums(4, 1));
        // A writer of epoch 9 that claimed the memo and has not finished.
        memo.seq.store(ready(9).unwrap() | 1, Ordering::SeqCst);
        assert_eq!(memo.get(3), None);
        assert_eq!(memo.get(9), None);
        memo.put(10, sums(5, 5));
        assert_eq!(memo.get(10), None, "a second writer went in");
    }
}
