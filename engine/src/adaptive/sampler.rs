//! Lock-free collection of round-trip-time samples, in windows.
//!
//! Every completed call adds its sample to its thread's stripe (two
//! read-modify-writes on a line other cores rarely touch). When a window's
//! time is up, the first caller to notice takes the `harvesting` flag —
//! others do not wait for it, they just keep recording — flips the window
//! `epoch`, and drains the stripes of the old epoch with `swap(0)`.
//!
//! # Double buffer and conservation
//!
//! Each stripe has two accumulators; a sample goes to `acc[epoch & 1]`. A
//! recorder that loaded the old epoch just before the flip adds to the old
//! accumulator, possibly after the harvester drained it: that sample is then
//! harvested with the next window of the same parity, two windows later. No
//! sample is lost or counted twice (A2 in docs/guarantees.md).

use crossbeam_utils::CachePadded;

use crate::stripe::{self, STRIPES};
use crate::sync::{AtomicU64, Ordering};

/// `counts` word: completed calls in bits 0..32, dropped calls in bits 32..64.
const DROPPED_ONE: u64 = 1 << 32;
const COMPLETED_MASK: u64 = u32::MAX as u64;

#[derive(Default)]
struct Acc {
    counts: AtomicU64,
    rtt_sum_ns: AtomicU64,
}

/// Totals drained from one window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) completed: u64,
    pub(crate) dropped: u64,
    pub(crate) rtt_sum_ns: u64,
}

pub(crate) struct Sampler {
    stripes: [CachePadded<[Acc; 2]>; STRIPES],
    /// Window number; its parity picks the accumulator.
    epoch: CachePadded<AtomicU64>,
    /// When the current window ends, in ns (read on every record).
    window_end: AtomicU64,
    /// 1 while a thread harvests; nobody waits on it.
    harvesting: AtomicU64,
}

impl Sampler {
    pub(crate) fn new(first_window_end: u64) -> Self {
        Sampler {
            stripes: core::array::from_fn(|_| CachePadded::new([Acc::default(), Acc::default()])),
            epoch: CachePadded::new(AtomicU64::new(0)),
            window_end: AtomicU64::new(first_window_end),
            harvesting: AtomicU64::new(0),
        }
    }

    /// Adds one sample: a round-trip time, or a drop.
    #[inline]
    pub(crate) fn record(&self, rtt_ns: Option<u64>) {
        // ordering: Acquire, pairs with the Release flip in `harvest`; only
        // picks a buffer, any value is safe (see the module docs).
        let parity = (self.epoch.load(Ordering::Acquire) & 1) as usize;
        let acc = &self.stripes[stripe::current()][parity];
        // ordering: Relaxed; the harvester drains with swaps, which see every
        // add before them in the word's modification order.
        match rtt_ns {
            Some(rtt) => {
                acc.counts.fetch_add(1, Ordering::Relaxed);
                acc.rtt_sum_ns.fetch_add(rtt, Ordering::Relaxed);
            }
            None => {
                acc.counts.fetch_add(DROPPED_ONE, Ordering::Relaxed);
            }
        }
    }

    /// Whether the window's time is up at `now`.
    #[inline]
    pub(crate) fn due(&self, now: u64) -> bool {
        // ordering: Relaxed; a stale value only delays or repeats the check,
        // which `harvest` makes again under the flag.
        now >= self.window_end.load(Ordering::Relaxed)
    }

    /// When the current window ends, in ns (for a snapshot).
    pub(crate) fn window_end(&self) -> u64 {
        // ordering: Relaxed, as in `due`; a snapshot holds the flag.
        self.window_end.load(Ordering::Relaxed)
    }

    /// Takes the harvesting flag if nobody holds it.
    pub(crate) fn try_begin(&self) -> bool {
        // ordering: Acquire, pairs with the Release in `end`: the new holder
        // sees everything the previous one wrote (the algorithm's state).
        self.harvesting
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Releases the harvesting flag; the next window ends at `next_end`
    /// (or where it ended before, if `None`).
    pub(crate) fn end(&self, next_end: Option<u64>) {
        if let Some(end) = next_end {
            // ordering: Relaxed; read by `due`, which tolerates staleness.
            self.window_end.store(end, Ordering::Relaxed);
        }
        // ordering: Release, pairs with the Acquire in `try_begin`.
        self.harvesting.store(0, Ordering::Release);
    }

    /// Calls recorded in the current window so far (completed + dropped).
    /// Call only while holding the flag.
    pub(crate) fn pending(&self) -> u64 {
        // ordering: Relaxed (holder only; Acquire on the epoch it set itself).
        let parity = (self.epoch.load(Ordering::Relaxed) & 1) as usize;
        self.stripes
            .iter()
            .map(|s| {
                let c = s[parity].counts.load(Ordering::Relaxed);
                (c & COMPLETED_MASK) + (c >> 32)
            })
            .sum()
    }

    /// Calls recorded in both buffers and not harvested yet.
    pub(crate) fn pending_all(&self) -> u64 {
        self.stripes
            .iter()
            .flat_map(|s| s.iter())
            .map(|acc| {
                // ordering: Acquire, pairs with nothing in particular: a report.
                let c = acc.counts.load(Ordering::Acquire);
                (c & COMPLETED_MASK) + (c >> 32)
            })
            .sum()
    }

    /// Closes the current window and drains it. Call only while holding the
    /// flag.
    pub(crate) fn harvest(&self) -> Totals {
        // ordering: Relaxed load (only the flag holder writes the epoch);
        // Release store so that recorders that see the new epoch also see
        // that the old buffer is being drained (not needed for conservation,
        // which the swaps give, but it keeps the buffers' use in order).
        let epoch = self.epoch.load(Ordering::Relaxed);
        self.epoch.store(epoch + 1, Ordering::Release);
        let parity = (epoch & 1) as usize;
        let mut t = Totals::default();
        for s in &self.stripes {
            // ordering: AcqRel swaps: take every add that came before.
            let c = s[parity].counts.swap(0, Ordering::AcqRel);
            t.completed += c & COMPLETED_MASK;
            t.dropped += c >> 32;
            t.rtt_sum_ns = t
                .rtt_sum_ns
                .saturating_add(s[parity].rtt_sum_ns.swap(0, Ordering::AcqRel));
        }
        t
    }
}
