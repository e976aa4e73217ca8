//! The keyed rate limiter's state snapshot: the booking of every key whose
//! tokens are still in use (see [`crate::snapshot`] for the frame and the
//! clock rule, `docs/snapshots.md` for the layout). Feature `std`, like the
//! keyed limiter; the snapshot goes into a `Vec` because its size depends
//! on the keys.
//!
//! # Payload, version 1 (little-endian)
//!
//! | size | field |
//! |---|---|
//! | 4 | `n`, entries |
//! | per entry: 4 + len | the key, as the caller's encoder wrote it, after its length |
//! | per entry: 24 | its booking, as the direct limiter's snapshot holds it |
//!
//! A key whose bucket is full at the snapshot is left out: it is exactly
//! like a key never seen. Restoring follows the direct limiter's rules for
//! each key (exact under the same quota on a clock far enough from its
//! origin, else re-expressed in whole tokens of the quota in force).

use alloc::vec::Vec;
use core::hash::{BuildHasher, Hash};

use alloc::sync::Arc;

use super::word::Word;
use super::{Found, Inner, Inserted, KeyedRateLimiter, RECLAIM_ROUNDS, Table, reclaim_now};
use crate::events::EventSink;
use crate::rate::limiter::{BOOKING_LEN, Booking, quota_fingerprint};
use crate::snapshot::Header;
use crate::snapshot::{self, HEADER_LEN, Kind, SnapshotError, TRAILER_LEN, WallTime};
use crate::sync::{Ordering, epoch};
use crate::time::Timestamp;

const VERSION: u8 = 1;

/// What a restore did with the snapshot's keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyedRestore {
    /// Keys whose booking was restored.
    pub restored: usize,
    /// Keys the table had no room for (a smaller capacity than the
    /// snapshot's, or too many keys in one bucket): they start fresh.
    pub no_room: usize,
    /// Keys whose booking had run out by the restore (time down): nothing
    /// to restore.
    pub expired: usize,
}

impl<K, H, S> KeyedRateLimiter<K, H, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    H: BuildHasher + Send + Sync + 'static,
    S: EventSink + Send + Sync + 'static,
{
    /// Writes the booking of every key still using tokens at `now`
    /// (wall-clock time `wall`) to `out` (cleared first) as a snapshot,
    /// each key written by `encode` (append its bytes to the `Vec`), and
    /// returns the number of keys saved. Other threads may use the limiter
    /// meanwhile: each key's booking is read at one instant.
    ///
    /// ```
    /// use tenlives_engine::rate::{KeyedConfig, KeyedRateLimiter, Quota};
    /// use tenlives_engine::snapshot::WallTime;
    /// use tenlives_engine::time::Timestamp;
    ///
    /// let config = KeyedConfig::new(Quota::per_second(2)?, 100)?;
    /// let limiter = KeyedRateLimiter::new(config);
    /// let t = Timestamp::from_nanos(9_000_000_000);
    /// limiter.check_key(&"alice".to_string(), t)?;
    /// limiter.check_key(&"alice".to_string(), t)?;
    ///
    /// let mut bytes = Vec::new();
    /// let saved = limiter.save_state(&mut bytes, t, WallTime::UNIX_EPOCH, |k: &String, out| {
    ///     out.extend_from_slice(k.as_bytes())
    /// })?;
    /// assert_eq!(saved, 1);
    ///
    /// let restarted = KeyedRateLimiter::new(config);
    /// let report = restarted.restore_state(&bytes, Timestamp::ZERO, WallTime::UNIX_EPOCH, |b| {
    ///     String::from_utf8(b.to_vec()).ok()
    /// })?;
    /// assert_eq!(report.restored, 1);
    /// assert!(restarted.check_key(&"alice".to_string(), Timestamp::ZERO).is_err());
    /// assert!(restarted.check_key(&"bob".to_string(), Timestamp::ZERO).is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`SnapshotError::Malformed`] when there are more than `u32::MAX`
    /// keys or a key's encoding is longer than `u32::MAX` bytes.
    pub fn save_state(
        &self,
        out: &mut Vec<u8>,
        now: Timestamp,
        wall: WallTime,
        mut encode: impl FnMut(&K, &mut Vec<u8>),
    ) -> Result<usize, SnapshotError> {
        on_table!(self, inner => inner.save_state(out, now, wall, &mut encode))
    }

    /// Restores a snapshot that [`save_state`](Self::save_state) wrote, at
    /// `now` and wall-clock time `wall`, each key read back by `decode`
    /// (`None` refuses the snapshot). A key already in the table takes the
    /// saved booking, or a full bucket if the snapshot does not hold it (as
    /// a key never seen). Restore a limiter before other threads use it.
    ///
    /// # Errors
    ///
    /// A typed [`SnapshotError`], the table unchanged: damaged, cut, of
    /// another kind or version, or a key `decode` refused
    /// ([`SnapshotError::Malformed`]). A quota changed across the restart
    /// is not an error: each booking is converted (see the module
    /// documentation).
    pub fn restore_state(
        &self,
        bytes: &[u8],
        now: Timestamp,
        wall: WallTime,
        mut decode: impl FnMut(&[u8]) -> Option<K>,
    ) -> Result<KeyedRestore, SnapshotError> {
        let (header, mut r) = snapshot::open(bytes, Kind::KeyedRateLimiter, VERSION)?;
        let count = r.u32()? as usize;
        // Every entry takes at least 28 bytes: a count beyond what the
        // payload holds is refused before anything is allocated for it.
        if count > bytes.len() / (4 + BOOKING_LEN) {
            return Err(SnapshotError::Malformed);
        }
        let mut saved = Vec::with_capacity(count);
        for _ in 0..count {
            let len = r.u32()? as usize;
            let key = decode(r.take(len)?).ok_or(SnapshotError::Malformed)?;
            let booking = Booking::read(&mut r)?;
            saved.push((key, booking));
        }
        r.finish()?;
        Ok(on_table!(self, inner => inner.restore(&saved, &header, now, wall)))
    }
}

impl<K, H, S, W> Inner<K, H, S, W>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    H: BuildHasher + Send + Sync + 'static,
    S: EventSink + Send + Sync + 'static,
    W: Word,
{
    fn save_state(
        &self,
        out: &mut Vec<u8>,
        now: Timestamp,
        wall: WallTime,
        encode: &mut impl FnMut(&K, &mut Vec<u8>),
    ) -> Result<usize, SnapshotError> {
        let inner = self;
        let mut body = Vec::new();
        let mut count = 0usize;
        let mut key_bytes = Vec::new();
        let _guard = epoch::pin();
        let mut malformed = false;
        let (_, origin) = inner.time_peek(now);
        for b in 0..inner.heads.len() {
            inner.walk(b, |entry| {
                if malformed {
                    return;
                }
                let state = W::load(&entry.state);
                if state == W::DEAD {
                    return;
                }
                let wide = W::to_wide(&inner.quota, state, now.as_nanos(), origin);
                let booking = Booking::of(&inner.quota, wide, now);
                if booking.is_full() {
                    return;
                }
                key_bytes.clear();
                // SAFETY: a linked entry's key is initialised and written
                // again only after an epoch grace period; we are pinned and
                // reached it from a head read while pinned (as in `find`).
                unsafe {
                    entry
                        .key
                        .with(|k| encode(k.assume_init_ref(), &mut key_bytes))
                };
                let Ok(len) = u32::try_from(key_bytes.len()) else {
                    malformed = true;
                    return;
                };
                body.extend_from_slice(&len.to_le_bytes());
                body.extend_from_slice(&key_bytes);
                body.extend_from_slice(&booking.to_bytes());
                count += 1;
            });
        }
        if malformed {
            return Err(SnapshotError::Malformed);
        }
        let count32 = u32::try_from(count).map_err(|_| SnapshotError::Malformed)?;
        out.clear();
        out.resize(HEADER_LEN + 4 + body.len() + TRAILER_LEN, 0);
        let fingerprint = quota_fingerprint(&inner.quota);
        snapshot::write_frame(
            out,
            Kind::KeyedRateLimiter,
            VERSION,
            fingerprint,
            wall,
            |w| {
                w.u32(count32);
                w.bytes(&body);
            },
        )?;
        Ok(count)
    }

    /// Restores the keys read from a snapshot (see
    /// [`KeyedRateLimiter::restore_state`]).
    fn restore(
        self: &Arc<Self>,
        saved: &[(K, Booking)],
        header: &Header,
        now: Timestamp,
        wall: WallTime,
    ) -> KeyedRestore {
        let inner = &**self;
        // Keys the snapshot does not hold had a full bucket when it was
        // taken: so they have here.
        self.refill_all();
        let same = header.fingerprint == quota_fingerprint(&inner.quota);
        let (t, origin) = inner.time(now);
        let mut report = KeyedRestore::default();
        for (key, booking) in saved {
            let state = booking.restored(&inner.quota, same, header.taken_at, now, wall);
            if Booking::of(&inner.quota, state, now).is_full() {
                report.expired += 1;
                continue;
            }
            if self.put(key, W::of_wide(&inner.quota, state, origin), t) {
                report.restored += 1;
            } else {
                report.no_room += 1;
            }
        }
        report
    }

    /// Gives every key in the table a full bucket (the state of a key never
    /// seen, which the sweep may then evict).
    fn refill_all(&self) {
        let _guard = epoch::pin();
        for b in 0..self.heads.len() {
            self.walk(b, |entry| {
                // A dead entry is being evicted: it stays dead.
                let mut current = W::load(&entry.state);
                while current != W::DEAD && current != W::FRESH {
                    match W::swap_weak(&entry.state, current, W::FRESH) {
                        Ok(()) => break,
                        Err(actual) => current = actual,
                    }
                }
            });
        }
    }

    /// Sets `key`'s state, inserting it if absent; false if there is no
    /// room for it.
    fn put(self: &Arc<Self>, key: &K, state: W::Raw, t: u64) -> bool {
        let inner = &**self;
        let hash = inner.hasher.hash_one(key);
        let mut guard = epoch::pin();
        let mut rounds = 0;
        loop {
            match self.find(key, hash) {
                Some(Found {
                    entry,
                    state: current,
                }) => {
                    // A lost race (a request charged it, or the sweep
                    // evicted it) decides again.
                    if W::swap(&entry.state, current, state).is_ok() {
                        return true;
                    }
                }
                None => match self.insert(key, hash, state, t, &guard) {
                    Inserted::Yes => return true,
                    Inserted::AlreadyThere => {}
                    // As `check_key_n`: let evicted entries' grace period
                    // pass a few times before giving up.
                    // ordering: Relaxed; a hint, see `retired`.
                    Inserted::NoRoom
                        if rounds < RECLAIM_ROUNDS && inner.retired.load(Ordering::Relaxed) > 0 =>
                    {
                        drop(guard);
                        reclaim_now();
                        guard = epoch::pin();
                        rounds += 1;
                    }
                    Inserted::NoRoom => return false,
                },
            }
        }
    }
}
