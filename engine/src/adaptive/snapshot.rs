//! The adaptive limiter's state snapshot (see [`crate::snapshot`] for the
//! frame and the clock rule, `docs/snapshots.md` for the layout).
//!
//! # Payload, version 1 (little-endian)
//!
//! | size | field |
//! |---|---|
//! | 4 | the limit in force |
//! | 8 | nanoseconds left of the current sampling window |
//! | 1 | `n`, words of the algorithm's measurements ([`LimitAlgorithm::save_measurements`]) |
//! | 8n | the measurements |
//!
//! No configuration check (fingerprint 0): a limit and the algorithm's
//! measurements mean the same under other settings; the algorithm judges
//! the measurements ([`LimitAlgorithm::restore_measurements`] may refuse
//! them, [`Gradient`](super::Gradient) moves its estimate into its
//! bounds), and the restored limit is moved into the algorithm's bounds at
//! its next window. The samples of the window being collected are not
//! saved: the restored window starts empty and ends when the saved one
//! would have (clock rule).

use super::algorithm::MEASUREMENT_WORDS;
use super::{AdaptiveLimiter, LimitAlgorithm};
use crate::events::EventSink;
use crate::snapshot::{self, HEADER_LEN, Kind, SnapshotError, TRAILER_LEN, WallTime};
use crate::time::Timestamp;

const VERSION: u8 = 1;

/// The most bytes an adaptive limiter's snapshot takes (frame included).
pub const ADAPTIVE_SNAPSHOT_MAX: usize =
    HEADER_LEN + 4 + 8 + 1 + 8 * MEASUREMENT_WORDS + TRAILER_LEN;

impl<A: LimitAlgorithm, S: EventSink> AdaptiveLimiter<A, S> {
    /// Writes the limit, the algorithm's measurements and the time left of
    /// the sampling window at `now` (wall-clock time `wall`) into `buf` as
    /// a snapshot; returns its length (at most [`ADAPTIVE_SNAPSHOT_MAX`]).
    ///
    /// # Errors
    ///
    /// [`SnapshotError::BufferTooSmall`], with the size needed;
    /// [`SnapshotError::Busy`] when another thread is closing a window at
    /// that instant (it never waits for it: try again).
    pub fn save_state(
        &self,
        buf: &mut [u8],
        now: Timestamp,
        wall: WallTime,
    ) -> Result<usize, SnapshotError> {
        if !self.sampler.try_begin() {
            return Err(SnapshotError::Busy);
        }
        let mut words = [0u64; MEASUREMENT_WORDS];
        // SAFETY: this thread holds the sampler's harvesting flag, the only
        // licence to touch the algorithm.
        let used = unsafe { self.algorithm.with(|a| a.save_measurements(&mut words)) };
        let left = snapshot::remaining(self.sampler.window_end(), now);
        self.sampler.end(None);
        let used = used.min(MEASUREMENT_WORDS);
        snapshot::write_frame(buf, Kind::AdaptiveLimiter, VERSION, 0, wall, |w| {
            w.u32(self.bulkhead.limit());
            w.u64(left);
            w.u8(used as u8);
            for word in &words[..used] {
                w.u64(*word);
            }
        })
    }

    /// Restores a snapshot that [`save_state`](Self::save_state) wrote, at
    /// `now` and wall-clock time `wall`. Restore a limiter before other
    /// threads use it.
    ///
    /// # Errors
    ///
    /// A typed [`SnapshotError`], the limiter unchanged: damaged, cut, of
    /// another kind or version, measurements the algorithm refuses
    /// ([`SnapshotError::Malformed`]), or [`SnapshotError::Busy`].
    pub fn restore_state(
        &self,
        bytes: &[u8],
        now: Timestamp,
        wall: WallTime,
    ) -> Result<(), SnapshotError> {
        let (header, mut r) = snapshot::open(bytes, Kind::AdaptiveLimiter, VERSION)?;
        let limit = r.u32()?;
        let left = r.u64()?;
        let used = usize::from(r.u8()?);
        if limit == 0 || used > MEASUREMENT_WORDS {
            return Err(SnapshotError::Malformed);
        }
        let mut words = [0u64; MEASUREMENT_WORDS];
        for word in &mut words[..used] {
            *word = r.u64()?;
        }
        r.finish()?;
        if !self.sampler.try_begin() {
            return Err(SnapshotError::Busy);
        }
        // SAFETY: this thread holds the sampler's harvesting flag.
        let taken = unsafe {
            self.algorithm
                .with_mut(|a| a.restore_measurements(&words[..used]))
        };
        if !taken {
            self.sampler.end(None);
            return Err(SnapshotError::Malformed);
        }
        // Samples this limiter collected before the restore are not the
        // snapshot's: dropped, so that its next window judges only what
        // comes after.
        let _ = self.sampler.harvest();
        // A limit of zero was refused above; set_limit refuses nothing else.
        let _ = self.bulkhead.set_limit(limit);
        let end = snapshot::restored_deadline(left, header.taken_at, now, wall);
        self.sampler.end(Some(end));
        Ok(())
    }
}
