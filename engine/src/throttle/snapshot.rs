//! The throttle's state snapshot (see [`crate::snapshot`] for the frame and
//! the clock rule, `docs/snapshots.md` for the layout).
//!
//! # Payload, version 1 (little-endian)
//!
//! | size | field |
//! |---|---|
//! | 8 | the random stream's state (so a restored throttle draws what the original would) |
//! | 8 + 1 + 12m | the window as the breaker's time window saves it: offset into the bucket of `now`, `m`, then per bucket newest first requests, requests not accepted, 0 |
//!
//! The fingerprint covers the whole configuration; another one is
//! [`SnapshotError::ConfigMismatch`].

use super::Throttle;
use crate::breaker::MAX_BUCKETS;
use crate::breaker::snapshot::{read_time_window, restore_time_window, write_time_window};
use crate::events::EventSink;
use crate::snapshot::{self, HEADER_LEN, Kind, SnapshotError, TRAILER_LEN, WallTime};
use crate::sync::Ordering;
use crate::time::Timestamp;

const VERSION: u8 = 1;

/// The most bytes a throttle's snapshot takes (frame included).
pub const THROTTLE_SNAPSHOT_MAX: usize = HEADER_LEN + 8 + 8 + 1 + 12 * MAX_BUCKETS + TRAILER_LEN;

impl<S: EventSink> Throttle<S> {
    /// Writes the throttle's window and random stream at `now` (wall-clock
    /// time `wall`) into `buf` as a snapshot; returns its length (at most
    /// [`THROTTLE_SNAPSHOT_MAX`]).
    ///
    /// # Errors
    ///
    /// [`SnapshotError::BufferTooSmall`], with the size needed.
    pub fn save_state(
        &self,
        buf: &mut [u8],
        now: Timestamp,
        wall: WallTime,
    ) -> Result<usize, SnapshotError> {
        self.era.with(|config, window| {
            let fingerprint = snapshot::fingerprint_of(config);
            snapshot::write_frame(buf, Kind::Throttle, VERSION, fingerprint, wall, |w| {
                // ordering: Relaxed; the state only feeds the random stream.
                w.u64(self.rng.load(Ordering::Relaxed));
                write_time_window(w, window, 0, now);
            })
        })
    }

    /// Restores a snapshot that [`save_state`](Self::save_state) wrote, at
    /// `now` and wall-clock time `wall` (buckets aged by the wall-clock time
    /// between). Restore a throttle before other threads use it.
    ///
    /// # Errors
    ///
    /// A typed [`SnapshotError`], the throttle unchanged: damaged, cut, of
    /// another kind or version, or of another configuration.
    pub fn restore_state(
        &self,
        bytes: &[u8],
        now: Timestamp,
        wall: WallTime,
    ) -> Result<(), SnapshotError> {
        let (header, mut r) = snapshot::open(bytes, Kind::Throttle, VERSION)?;
        self.era.with(|config, window| {
            snapshot::same_config(&header, snapshot::fingerprint_of(config))?;
            let rng = r.u64()?;
            let saved = read_time_window(&mut r)?;
            if !saved.fits(window) {
                return Err(SnapshotError::Malformed);
            }
            r.finish()?;
            window.clear();
            restore_time_window(window, &saved, 0, header.taken_at, now, wall);
            // The closed buckets were rewritten under the memo.
            window.forget_closed();
            // ordering: Relaxed; the state only feeds the random stream.
            self.rng.store(rng, Ordering::Relaxed);
            Ok(())
        })
    }
}
