//! The retry budget's state snapshot (see [`crate::snapshot`] for the frame
//! and the clock rule, `docs/snapshots.md` for the layout).
//!
//! # Payload, version 1 (little-endian)
//!
//! | size | field |
//! |---|---|
//! | 8 | nanoseconds into the head bucket at the snapshot |
//! | 1 | `m`, buckets saved (the window's, at most [`MAX_BUCKETS`]) |
//! | 8m | per bucket, newest (the head) first: deposits, withdrawals (u32 each) |
//!
//! The fingerprint covers the window's layout (length and buckets) only: a
//! snapshot restores into a budget with another ratio or reserve, which
//! judges the same window (as [`RetryBudget::set_config`] does); another
//! layout is [`SnapshotError::ConfigMismatch`].
//!
//! Buckets keep their age as in the breaker's time window: the bucket that
//! was `i` buckets old goes `i + ⌊(offset + down) / bucket⌋` buckets before
//! the restore's head bucket; those past the window are dropped.

use super::{Bucket, MAX_BUCKETS, RetryBudget, View};
use crate::events::EventSink;
use crate::retry::BudgetCounts;
use crate::snapshot::{self, HEADER_LEN, Kind, SnapshotError, TRAILER_LEN, WallTime};
use crate::sync::Ordering;
use crate::time::Timestamp;

const VERSION: u8 = 1;

/// The most bytes a retry budget's snapshot takes (frame included).
pub const BUDGET_SNAPSHOT_MAX: usize = HEADER_LEN + 8 + 1 + 8 * MAX_BUCKETS as usize + TRAILER_LEN;

fn fingerprint(view: &View<'_>) -> u64 {
    snapshot::fingerprint_of(&(view.config.window(), view.config.buckets()))
}

impl<S: EventSink> RetryBudget<S> {
    /// Writes the budget's window at `now` (wall-clock time `wall`) into
    /// `buf` as a snapshot; returns its length (at most
    /// [`BUDGET_SNAPSHOT_MAX`]).
    ///
    /// # Errors
    ///
    /// [`SnapshotError::BufferTooSmall`], with the size needed.
    ///
    /// ```
    /// use tenlives_engine::retry::{RetryBudget, RetryBudgetConfig, BUDGET_SNAPSHOT_MAX};
    /// use tenlives_engine::snapshot::WallTime;
    /// use tenlives_engine::time::Timestamp;
    ///
    /// let config = RetryBudgetConfig::builder().ratio(0.1).min_per_second(0).build()?;
    /// let budget = RetryBudget::new(config);
    /// let t = Timestamp::from_nanos(42_000_000_000);
    /// for _ in 0..100 { budget.deposit(t); }
    /// for _ in 0..8 { assert!(budget.try_withdraw(t)); }
    /// let mut buf = [0u8; BUDGET_SNAPSHOT_MAX];
    /// let n = budget.save_state(&mut buf, t, WallTime::UNIX_EPOCH)?;
    ///
    /// let restarted = RetryBudget::new(config);
    /// restarted.restore_state(&buf[..n], Timestamp::ZERO, WallTime::UNIX_EPOCH)?;
    /// assert_eq!(restarted.remaining(Timestamp::ZERO), 2, "not a full budget again");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save_state(
        &self,
        buf: &mut [u8],
        now: Timestamp,
        wall: WallTime,
    ) -> Result<usize, SnapshotError> {
        self.with_view(|v| {
            let (head, epoch) = v.open_head(v.config.epoch(now));
            let bucket = v.config.bucket.get();
            let offset = now.as_nanos().saturating_sub(epoch.saturating_mul(bucket));
            let offset = offset.min(bucket - 1);
            let buckets = v.config.buckets;
            snapshot::write_frame(
                buf,
                Kind::RetryBudget,
                VERSION,
                fingerprint(&v),
                wall,
                |w| {
                    w.u64(offset);
                    w.u8(buckets as u8);
                    w.u32(head.deposits());
                    w.u32(head.withdrawals());
                    for back in 1..buckets {
                        // ordering: Relaxed; the Acquire load of the open head
                        // in `open_head` made the slots of its window visible.
                        let b = Bucket(v.slot(epoch.wrapping_sub(back)).load(Ordering::Relaxed));
                        w.u32(b.deposits());
                        w.u32(b.withdrawals());
                    }
                },
            )
        })
    }

    /// Restores a snapshot that [`save_state`](Self::save_state) wrote, at
    /// `now` and wall-clock time `wall` (buckets aged by the wall-clock
    /// time between). Restore a budget before other threads use it.
    ///
    /// # Errors
    ///
    /// A typed [`SnapshotError`], the budget unchanged: damaged, cut, of
    /// another kind or version, or of another window layout.
    pub fn restore_state(
        &self,
        bytes: &[u8],
        now: Timestamp,
        wall: WallTime,
    ) -> Result<(), SnapshotError> {
        let (header, mut r) = snapshot::open(bytes, Kind::RetryBudget, VERSION)?;
        self.with_view(|v| {
            snapshot::same_config(&header, fingerprint(&v))?;
            let buckets = v.config.buckets;
            let bucket = v.config.bucket.get();
            let offset = r.u64()?;
            let used = u64::from(r.u8()?);
            if offset >= bucket || used != buckets {
                return Err(SnapshotError::Malformed);
            }
            let mut saved = [BudgetCounts::default(); MAX_BUCKETS as usize];
            for b in &mut saved[..used as usize] {
                let (d, w) = (r.u32()?, r.u32()?);
                if d > super::BUCKET_CAP || w > super::BUCKET_CAP {
                    return Err(SnapshotError::Malformed);
                }
                *b = BudgetCounts {
                    deposits: d.into(),
                    withdrawals: w.into(),
                };
            }
            r.finish()?;
            let shift = offset.saturating_add(wall.nanos_since(header.taken_at)) / bucket;
            let epoch = v.config.epoch(now);
            // The bucket `age` buckets before the head, after the shift.
            let at = |age: u64| {
                age.checked_sub(shift)
                    .and_then(|i| saved.get(i as usize))
                    .copied()
                    .unwrap_or_default()
            };
            let word =
                |e: u64, c: BudgetCounts| Bucket::new(e, c.deposits as u32, c.withdrawals as u32);
            for back in 1..buckets {
                let e = epoch.wrapping_sub(back);
                // ordering: Relaxed; the Release store of the head below
                // publishes the slots with it.
                v.slot(e).store(word(e, at(back)).0, Ordering::Relaxed);
            }
            // ordering: Relaxed, published by the head store below.
            v.words.core.epoch.store(epoch, Ordering::Relaxed);
            // ordering: Release, pairs with the Acquire head load of every
            // call (`open_head`), which then sees the slots and epoch.
            v.words
                .core
                .head
                .store(word(epoch, at(0)).0, Ordering::Release);
            Ok(())
        })
    }
}
