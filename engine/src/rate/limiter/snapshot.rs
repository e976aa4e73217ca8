//! The rate limiter's state snapshot: its booking (see [`crate::snapshot`]
//! for the frame and the clock rule, `docs/snapshots.md` for the layout).
//!
//! # Payload, version 1 (little-endian)
//!
//! | size | field |
//! |---|---|
//! | 8 | `ahead`: nanoseconds the theoretical arrival time `TAT` was past `now` (rounded up; 0 for a full bucket) |
//! | 8 | `back`: `now - reset` in nanoseconds, `u64::MAX` when `reset` was after `now` |
//! | 8 | `k`: tokens booked since `reset` |
//!
//! `(back, k)` is the exact state relative to `now` (`TAT = now - back +
//! k·T`); `ahead` is the same booking in whole nanoseconds, which any quota
//! can read.
//!
//! # Restoring
//!
//! The booking shrinks by the wall-clock time the process was down (the
//! clock rule), so a restored limiter never hands out a burst the original
//! had not earned back. Under the same quota (same fingerprint) and when
//! the restoring clock is far enough from its origin (`now' >= back +
//! down`), the state is restored exactly: `reset' = now' - down - back`,
//! `k' = k`. Otherwise (a quota changed across the restart, or a young
//! clock) the booking left, `ahead - down`, is re-expressed in whole tokens
//! of the quota in force, rounded up (at most one token's time more than
//! exact), and, when the quota changed and allows no debt, capped at its
//! burst: the rule of [`RateLimiter::set_quota`].

use crate::events::EventSink;
use crate::rate::gcra::{MAX_TOKENS, State, pack, reset_of, tokens_of};
use crate::rate::quota::Quota;
use crate::snapshot::{
    self, HEADER_LEN, Header, Kind, Reader, SnapshotError, TRAILER_LEN, WallTime, Writer,
};
use crate::time::Timestamp;

use super::RateLimiter;

const VERSION: u8 = 1;

/// Bytes of a booking in a payload.
pub(in crate::rate) const BOOKING_LEN: usize = 24;

/// The most bytes a rate limiter's snapshot takes (frame included).
pub const RATE_SNAPSHOT_MAX: usize = HEADER_LEN + BOOKING_LEN + TRAILER_LEN;

/// A state's booking relative to `now`, as a payload stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::rate) struct Booking {
    ahead: u64,
    back: u64,
    k: u64,
}

impl Booking {
    /// The booking of `state` (not sealed) under `quota` at `now`.
    pub(in crate::rate) fn of(quota: &Quota, state: State, now: Timestamp) -> Self {
        let now = now.as_nanos();
        let reset = reset_of(state);
        Booking {
            ahead: ahead_ns(quota, state, now),
            back: now.checked_sub(reset).unwrap_or(u64::MAX),
            k: tokens_of(state),
        }
    }

    /// Whether nothing is booked past the snapshot (a full bucket).
    #[cfg(feature = "std")]
    pub(in crate::rate) fn is_full(&self) -> bool {
        self.ahead == 0
    }

    /// The booking as a payload holds it.
    pub(in crate::rate) fn to_bytes(self) -> [u8; BOOKING_LEN] {
        let mut b = [0u8; BOOKING_LEN];
        b[..8].copy_from_slice(&self.ahead.to_le_bytes());
        b[8..16].copy_from_slice(&self.back.to_le_bytes());
        b[16..].copy_from_slice(&self.k.to_le_bytes());
        b
    }

    pub(in crate::rate) fn write(&self, w: &mut Writer<'_>) {
        w.bytes(&self.to_bytes());
    }

    pub(in crate::rate) fn read(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
        let b = Booking {
            ahead: r.u64()?,
            back: r.u64()?,
            k: r.u64()?,
        };
        if b.k > MAX_TOKENS {
            return Err(SnapshotError::Malformed);
        }
        Ok(b)
    }

    /// The state to restore under `quota` at `now` (wall time `wall`) for a
    /// booking saved at `taken_at`; `same_quota` when the snapshot's quota
    /// is the one in force. See the module documentation.
    pub(in crate::rate) fn restored(
        &self,
        quota: &Quota,
        same_quota: bool,
        taken_at: WallTime,
        now: Timestamp,
        wall: WallTime,
    ) -> State {
        let down = wall.nanos_since(taken_at);
        let now = now.as_nanos();
        let left = self.ahead.saturating_sub(down);
        if left == 0 {
            return pack(now, 0);
        }
        if same_quota
            && self.back != u64::MAX
            && let Some(reset) = now.checked_sub(down).and_then(|t| t.checked_sub(self.back))
        {
            return pack(reset, self.k);
        }
        let k = (u128::from(left) * u128::from(quota.a())).div_ceil(u128::from(quota.c()));
        let mut k = u64::try_from(k).unwrap_or(u64::MAX).min(MAX_TOKENS);
        if !same_quota && !quota.allows_debt() {
            k = k.min(quota.burst_tokens());
        }
        pack(now, k)
    }
}

/// `TAT - now` in whole nanoseconds, rounded up; 0 for a full bucket.
/// (`TAT·a = k·c + reset·a`, as in `gcra.rs`.)
fn ahead_ns(quota: &Quota, state: State, now: u64) -> u64 {
    let (a, c) = (u128::from(quota.a()), u128::from(quota.c()));
    let tat = u128::from(tokens_of(state)) * c + u128::from(reset_of(state)) * a;
    let over = tat.saturating_sub(u128::from(now) * a);
    u64::try_from(over.div_ceil(a)).unwrap_or(u64::MAX)
}

/// The fingerprint of a quota in a snapshot.
pub(in crate::rate) fn fingerprint(quota: &Quota) -> u64 {
    snapshot::fingerprint_of(quota)
}

/// Opens a rate limiter's frame.
fn open(bytes: &[u8]) -> Result<(Header, Booking), SnapshotError> {
    let (header, mut r) = snapshot::open(bytes, Kind::RateLimiter, VERSION)?;
    let booking = Booking::read(&mut r)?;
    r.finish()?;
    Ok((header, booking))
}

impl<S: EventSink> RateLimiter<S> {
    /// Writes the limiter's booking at `now` (wall-clock time `wall`) into
    /// `buf` as a snapshot; returns its length (at most
    /// [`RATE_SNAPSHOT_MAX`]). Reservations not yet cancelled count as
    /// booked.
    ///
    /// # Errors
    ///
    /// [`SnapshotError::BufferTooSmall`], with the size needed.
    ///
    /// ```
    /// use tenlives_engine::rate::{Quota, RateLimiter, RATE_SNAPSHOT_MAX};
    /// use tenlives_engine::snapshot::WallTime;
    /// use tenlives_engine::time::Timestamp;
    ///
    /// let quota = Quota::per_second(10)?; // a burst of 10
    /// let limiter = RateLimiter::new(quota);
    /// let t = Timestamp::from_nanos(3_000_000_000);
    /// while limiter.check(t).is_ok() {} // the burst is spent
    ///
    /// let mut buf = [0u8; RATE_SNAPSHOT_MAX];
    /// let wall = WallTime::from_unix_nanos(1_700_000_000_000_000_000);
    /// let n = limiter.save_state(&mut buf, t, wall)?;
    ///
    /// // Restarted 0.5 s later, on a clock with another origin: 5 tokens
    /// // came back, not a fresh burst of 10.
    /// let restarted = RateLimiter::new(quota);
    /// let wall = WallTime::from_unix_nanos(wall.as_unix_nanos() + 500_000_000);
    /// restarted.restore_state(&buf[..n], Timestamp::ZERO, wall)?;
    /// assert_eq!(restarted.available(Timestamp::ZERO), 5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save_state(
        &self,
        buf: &mut [u8],
        now: Timestamp,
        wall: WallTime,
    ) -> Result<usize, SnapshotError> {
        let t = now.as_nanos();
        let (quota, state) = self.with_era(|era| Some((*era.quota, era.cell.peek(era.quota, t)?)));
        let booking = Booking::of(&quota, state, now);
        snapshot::write_frame(
            buf,
            Kind::RateLimiter,
            VERSION,
            fingerprint(&quota),
            wall,
            |w| {
                booking.write(w);
            },
        )
    }

    /// Restores a snapshot that [`save_state`](Self::save_state) wrote, at
    /// `now` and wall-clock time `wall`: the booking, less the wall-clock
    /// time between the two (see the module documentation of
    /// `rate::limiter::snapshot` in `docs/snapshots.md` for when it is
    /// exact). A snapshot taken under another quota is converted, as
    /// [`set_quota`](Self::set_quota) converts. Restore a limiter before
    /// other threads use it: a decision made during the restore is
    /// overwritten.
    ///
    /// # Errors
    ///
    /// A typed [`SnapshotError`] (damaged, cut, of another kind or
    /// version), the limiter unchanged.
    pub fn restore_state(
        &self,
        bytes: &[u8],
        now: Timestamp,
        wall: WallTime,
    ) -> Result<(), SnapshotError> {
        let (header, booking) = open(bytes)?;
        self.with_era(|era| {
            let same = header.fingerprint == fingerprint(era.quota);
            let new = booking.restored(era.quota, same, header.taken_at, now, wall);
            era.cell.replace(era.quota, new, now.as_nanos())
        });
        Ok(())
    }
}
