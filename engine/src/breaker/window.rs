//! The striped sliding window of call outcomes.
//!
//! The window is a ring of `buckets` buckets. Each bucket exists once per
//! stripe ([`crate::stripe`]): a thread writes only its own stripe's copy, so
//! the success path of a closed breaker never writes a cache line that every
//! core writes. Readers (the failure path, snapshots) add up all stripes.
//!
//! # Bucket epochs and tags
//!
//! Calls fall into *epochs*: for a time window `epoch = now / bucket_length`;
//! for a count window it is the shared bucket counter `count_epoch`, moved on
//! by whoever sees the current bucket full. The slot of epoch `e` is
//! `e % buckets`. A slot word is
//!
//! ```text
//! +----------------+----------------+
//! |  tag (32 bits) | count (32 bits)|
//! +----------------+----------------+
//! ```
//!
//! with `tag = low32(e) + generation * 2 * buckets` (wrapping). The shift
//! moves every tag of a new breaker generation two whole windows away from the
//! old generation's tags: a window read by generation `g + 1` ending at epoch
//! `E` (or at `E - 1`, see [`StripedWindow::latest`]) covers tags above any that
//! generation `g` wrote up to epoch `E + buckets - 1`. So a close (or any
//! transition) starts from an empty window without clearing anything, and a
//! late record from an older generation lands in a tag the readers ignore.
//! A writer that finds an older tag resets the slot to `(its tag, 1)`; one
//! that finds a newer tag drops its record (it is late); readers count a slot
//! only if its tag is one of the window's current tags.
//!
//! Limits: a slot that nobody touched for 2^32 epochs (49 days of 1 ms
//! buckets) can alias a current tag; a stripe's bucket counts up to 2^32 - 1
//! calls and then saturates.
//!
//! # Orderings
//!
//! All slot operations are `SeqCst`. Two threads that each record a failure
//! and then add up the window must not both miss the other's record (the
//! store-buffering shape), or a rate that crossed its threshold would trip
//! nobody. On x86-64 a `SeqCst` read-modify-write or load costs the same as a
//! `Relaxed` one.

use crossbeam_utils::CachePadded;

use super::config::{MAX_BUCKETS, Window as WindowConfig, WindowKind};
use super::word::is_newer;
use crate::stripe::{self, STRIPES};
use crate::sync::{AtomicU64, Ordering, spin_hint};
use crate::time::Timestamp;

const COUNT_MASK: u64 = u32::MAX as u64;

/// One bucket of one stripe.
#[derive(Default)]
struct Slot {
    /// Calls that reported success or failure.
    calls: AtomicU64,
    /// Of those, failures.
    failures: AtomicU64,
    /// Of those, slow calls (successful or not).
    slow: AtomicU64,
}

#[derive(Default)]
struct Stripe {
    slots: [Slot; MAX_BUCKETS],
}

/// Totals over the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowCounts {
    /// Calls that reported success or failure.
    pub calls: u64,
    /// Calls that failed.
    pub failures: u64,
    /// Calls at or above the slow-call duration.
    pub slow: u64,
}

/// Where a record landed: the epoch it is counted in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Position {
    epoch: u64,
}

pub(crate) struct StripedWindow {
    stripes: [CachePadded<Stripe>; STRIPES],
    /// Count windows only: the current bucket epoch. Read on every record,
    /// written once per filled bucket.
    count_epoch: CachePadded<AtomicU64>,
}

impl StripedWindow {
    pub(crate) fn new() -> Self {
        StripedWindow {
            stripes: core::array::from_fn(|_| CachePadded::new(Stripe::default())),
            count_epoch: CachePadded::new(AtomicU64::new(0)),
        }
    }

    /// The current epoch for a record at `now`.
    #[inline]
    pub(crate) fn position(&self, cfg: &WindowConfig, now: Timestamp) -> Position {
        let epoch = match cfg.kind {
            WindowKind::Time { bucket } => now.as_nanos() / bucket,
            // ordering: SeqCst, like every window access (see the module docs).
            WindowKind::Count { .. } => self.count_epoch.load(Ordering::SeqCst),
        };
        Position { epoch }
    }

    #[inline]
    fn tag(cfg: &WindowConfig, generation: u32, epoch: u64) -> u32 {
        (epoch as u32).wrapping_add(generation.wrapping_mul(2 * cfg.buckets))
    }

    #[inline]
    fn slot_index(cfg: &WindowConfig, epoch: u64) -> usize {
        (epoch % cfg.buckets_divisor) as usize
    }

    /// Counts one call into this thread's stripe at `pos`.
    #[inline]
    pub(crate) fn record(
        &self,
        cfg: &WindowConfig,
        generation: u32,
        pos: Position,
        failed: bool,
        slow: bool,
    ) {
        let tag = Self::tag(cfg, generation, pos.epoch);
        let slot = &self.stripes[stripe::current()].slots[Self::slot_index(cfg, pos.epoch)];
        let Some(calls) = bump(&slot.calls, tag) else {
            return;
        };
        if failed {
            bump(&slot.failures, tag);
        }
        if slow {
            bump(&slot.slow, tag);
        }
        if let WindowKind::Count { bucket_calls } = cfg.kind
            && u64::from(calls) >= bucket_calls
        {
            self.advance_count_epoch(pos.epoch);
        }
    }

    fn advance_count_epoch(&self, from: u64) {
        // ordering: SeqCst, like every window access. A failed exchange means
        // someone else moved the bucket on already.
        let _ =
            self.count_epoch
                .compare_exchange(from, from + 1, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Totals over the latest window at `now`, for reports. A count window
    /// whose newest bucket is still empty reports the window ending at the
    /// bucket before, so that right after a bucket fills it shows the last
    /// full `calls` calls rather than one bucket fewer.
    pub(crate) fn latest(
        &self,
        cfg: &WindowConfig,
        generation: u32,
        now: Timestamp,
    ) -> WindowCounts {
        let pos = self.position(cfg, now);
        let (total, newest) = self.sum_with_newest(cfg, generation, pos);
        match cfg.kind {
            WindowKind::Count { .. } if newest == 0 && pos.epoch > 0 => {
                self.sum_with_newest(
                    cfg,
                    generation,
                    Position {
                        epoch: pos.epoch - 1,
                    },
                )
                .0
            }
            _ => total,
        }
    }

    /// Totals over the window that ends at `pos` for `generation`. For a
    /// count window whose newest bucket is full across all stripes, this also
    /// moves the bucket counter on.
    pub(crate) fn sum(&self, cfg: &WindowConfig, generation: u32, pos: Position) -> WindowCounts {
        self.sum_with_newest(cfg, generation, pos).0
    }

    fn sum_with_newest(
        &self,
        cfg: &WindowConfig,
        generation: u32,
        pos: Position,
    ) -> (WindowCounts, u64) {
        let mut total = WindowCounts::default();
        let mut newest_calls = 0;
        for back in 0..u64::from(cfg.buckets) {
            let Some(epoch) = pos.epoch.checked_sub(back) else {
                break;
            };
            let bucket = self.bucket(cfg, generation, epoch);
            total.add(bucket);
            if back == 0 {
                newest_calls = bucket.calls;
            }
        }
        if let WindowKind::Count { bucket_calls } = cfg.kind
            && newest_calls >= bucket_calls
        {
            self.advance_count_epoch(pos.epoch);
        }
        (total, newest_calls)
    }
}

impl StripedWindow {
    /// The counts of one bucket, over all stripes.
    #[inline]
    fn bucket(&self, cfg: &WindowConfig, generation: u32, epoch: u64) -> WindowCounts {
        let tag = Self::tag(cfg, generation, epoch);
        let index = Self::slot_index(cfg, epoch);
        let mut total = WindowCounts::default();
        for stripe in &self.stripes {
            let slot = &stripe.slots[index];
            let calls = read(&slot.calls, tag);
            if calls == 0 {
                continue;
            }
            total.add(WindowCounts {
                calls,
                failures: read(&slot.failures, tag),
                slow: read(&slot.slow, tag),
            });
        }
        total
    }

    /// Carries the calls of this window (layout `old`, `generation`, at
    /// `now`) that fit a window of layout `new` into `into`, a window no
    /// other thread uses yet, as one bucket: its bucket at `now`. Fitting
    /// means, for a new time window, the buckets that overlap its span
    /// (`now` minus its length to `now`; a count window's buckets carry no
    /// times, so all of them); for a new count window, as many of the newest
    /// calls as it holds, the failures and slow calls of a bucket taken in
    /// part in proportion. Returns what was carried.
    pub(crate) fn carry_into(
        &self,
        old: &WindowConfig,
        into: &StripedWindow,
        new: &WindowConfig,
        generation: u32,
        now: Timestamp,
    ) -> WindowCounts {
        let head = self.position(old, now).epoch;
        let mut carried = WindowCounts::default();
        for back in 0..u64::from(old.buckets) {
            let Some(epoch) = head.checked_sub(back) else {
                break;
            };
            let mut bucket = self.bucket(old, generation, epoch);
            match (new.kind, old.kind) {
                (WindowKind::Time { bucket: length }, WindowKind::Time { bucket: old_length }) => {
                    let span = length.get().saturating_mul(u64::from(new.buckets));
                    let bucket_end = (epoch + 1).saturating_mul(old_length.get());
                    if bucket_end <= now.as_nanos().saturating_sub(span) {
                        break;
                    }
                }
                (WindowKind::Time { .. }, WindowKind::Count { .. }) => {}
                (WindowKind::Count { bucket_calls }, _) => {
                    let room =
                        (bucket_calls * u64::from(new.buckets)).saturating_sub(carried.calls);
                    if room == 0 {
                        break;
                    }
                    if bucket.calls > room {
                        bucket = WindowCounts {
                            calls: room,
                            failures: bucket.failures * room / bucket.calls,
                            slow: bucket.slow * room / bucket.calls,
                        };
                    }
                }
            }
            carried.add(bucket);
        }
        let pos = into.position(new, now);
        let tag = Self::tag(new, generation, pos.epoch);
        let slot = &into.stripes[0].slots[Self::slot_index(new, pos.epoch)];
        for (word, count) in [
            (&slot.calls, carried.calls),
            (&slot.failures, carried.failures),
            (&slot.slow, carried.slow),
        ] {
            let count = count.min(COUNT_MASK);
            // ordering: SeqCst, like every window access; nobody else can
            // see `into` yet.
            word.store((u64::from(tag) << 32) | count, Ordering::SeqCst);
        }
        carried
    }
}

impl WindowCounts {
    fn add(&mut self, other: WindowCounts) {
        self.calls += other.calls;
        self.failures += other.failures;
        self.slow += other.slow;
    }
}

/// Adds one to the slot word if its tag is `tag`, restarts it at one if its
/// tag is older, and leaves it if its tag is newer (a late record). Returns
/// the stripe's new count for the bucket, or `None` for a late record.
#[inline]
fn bump(word: &AtomicU64, tag: u32) -> Option<u32> {
    // ordering: SeqCst, see the module docs.
    let mut current = word.load(Ordering::SeqCst);
    loop {
        let current_tag = (current >> 32) as u32;
        let next = if current_tag == tag {
            let count = (current & COUNT_MASK) as u32;
            (current & !COUNT_MASK) | u64::from(count.saturating_add(1))
        } else if is_newer(current_tag, tag) {
            return None;
        } else {
            (u64::from(tag) << 32) | 1
        };
        match word.compare_exchange_weak(current, next, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return Some((next & COUNT_MASK) as u32),
            Err(actual) => {
                current = actual;
                spin_hint();
            }
        }
    }
}

/// The slot's count if its tag is `tag`, else zero.
#[inline]
fn read(word: &AtomicU64, tag: u32) -> u64 {
    // ordering: SeqCst, see the module docs.
    let w = word.load(Ordering::SeqCst);
    if (w >> 32) as u32 == tag {
        w & COUNT_MASK
    } else {
        0
    }
}
