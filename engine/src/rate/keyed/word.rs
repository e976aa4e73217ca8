//! A keyed table's state words, in the width the table's quota allows.
//!
//! The quota of a keyed limiter is fixed, so the whole table takes one
//! width, chosen as the direct limiter's cell is (see
//! [`cell`](super::super::cell)): a quota whose emission interval is a whole
//! number of nanoseconds (and `b·T < 2^62` ns) keeps each key's `TAT` in a
//! 64-bit word, [`Narrow`]; one whose interval is a small fraction `c / a`
//! ns (`a <= 16`, where 64-bit atomics are native) keeps `TAT·a` in one,
//! [`Scaled`]; any other keeps the exact 128-bit `(reset, k)` state,
//! [`Wide`]. The table's code is written once over [`Word`] and compiled
//! for all three; a request picks the table's width with one branch.
//!
//! Every width keeps the table's two marks: `0` is a full bucket (a key
//! never seen), and [`Word::DEAD`] an entry being evicted, which no
//! decision accepts. A 64-bit word's dead mark has bit 63 set, like a
//! direct limiter's sealed cell, so its decision refuses it with no test of
//! its own; its two departures from the wide state (an end of time 292
//! years in, `292 / a` years after the table's origin for a scaled word; a
//! refund's floor at zero, at the origin) are those of the direct
//! limiter's 64-bit cells. A scaled table counts its time from one origin
//! for all its keys ([`cell::Origin`]), set by its first request.

use crate::sync::{AtomicU64, AtomicU128, Ordering};

use super::super::cell::{self, NARROW_MAX};
use super::super::gcra::{self, Refusal, State};
use super::super::quota::Quota;

/// One width of a keyed table's state words (see the module
/// documentation).
pub(crate) trait Word: 'static {
    /// The atomic word an entry holds.
    type Cell: Send + Sync;
    /// Its value.
    type Raw: Copy + Eq + core::fmt::Debug;
    /// An entry being evicted; never a state a decision accepts.
    const DEAD: Self::Raw;
    /// A full bucket: the state of a key never seen.
    const FRESH: Self::Raw;
    /// Whether the word counts time from the table's origin (a scaled
    /// word, see [`cell::Origin`]); the others count from the timestamps'
    /// zero. The `now` every method below takes is in the table's time:
    /// nanoseconds since the origin for a relative word, else as given.
    const RELATIVE: bool;

    /// A new cell holding `raw`.
    fn cell(raw: Self::Raw) -> Self::Cell;
    /// The cell's value (ordering: Relaxed; a state cell publishes no other
    /// memory).
    fn load(cell: &Self::Cell) -> Self::Raw;
    /// Sets the cell of an entry nobody else can reach yet (Relaxed).
    fn store(cell: &Self::Cell, raw: Self::Raw);
    /// A weak compare-and-swap (Relaxed), the actual value on failure.
    fn swap_weak(cell: &Self::Cell, current: Self::Raw, new: Self::Raw) -> Result<(), Self::Raw>;
    /// A strong compare-and-swap (Relaxed), the actual value on failure.
    fn swap(cell: &Self::Cell, current: Self::Raw, new: Self::Raw) -> Result<(), Self::Raw>;
    /// The state after granting `n` tokens at `now` (the table's time)
    /// without waiting, or the refusal (its ready time in the table's
    /// time); `None` for [`DEAD`](Self::DEAD).
    fn decide(
        quota: &Quota,
        raw: Self::Raw,
        now: u64,
        n: u64,
    ) -> Option<Result<Self::Raw, Refusal>>;
    /// Whether the bucket is full at `now` (`TAT <= now`): the key decides
    /// exactly as a key never seen, so it may be evicted.
    fn is_full(quota: &Quota, raw: Self::Raw, now: u64) -> bool;
    /// The state after giving back `n` tokens (not [`DEAD`](Self::DEAD)).
    fn refund(quota: &Quota, raw: Self::Raw, n: u64) -> Self::Raw;
    /// The wide form of `raw` for decisions at `now`, both in ns from the
    /// timestamps' zero, for a table whose origin is `origin` (snapshots).
    fn to_wide(quota: &Quota, raw: Self::Raw, now: u64, origin: u64) -> State;
    /// The word holding the wide `state` (in ns from the timestamps' zero)
    /// in a table whose origin is `origin` (restores).
    fn of_wide(quota: &Quota, state: State, origin: u64) -> Self::Raw;
}

/// `TAT·a` in an `AtomicU64`, in whole nanoseconds when `SCALED` is false
/// (`a = 1`); `DEAD` is every bit set.
pub(crate) enum Word64<const SCALED: bool> {}

/// `TAT` in whole nanoseconds.
pub(crate) type Narrow = Word64<false>;

/// `TAT·a`, for `1 < a <= 16`.
pub(crate) type Scaled = Word64<true>;

/// The 128-bit `(reset, k)` state of [`gcra`] in an `AtomicU128`.
pub(crate) enum Wide {}

impl<const SCALED: bool> Word for Word64<SCALED> {
    type Cell = AtomicU64;
    type Raw = u64;
    const DEAD: u64 = u64::MAX;
    const FRESH: u64 = 0;
    const RELATIVE: bool = SCALED;

    #[inline]
    fn cell(raw: u64) -> AtomicU64 {
        AtomicU64::new(raw)
    }

    #[inline(always)]
    fn load(cell: &AtomicU64) -> u64 {
        // ordering: Relaxed, as in `gcra::acquire`.
        cell.load(Ordering::Relaxed)
    }

    fn store(cell: &AtomicU64, raw: u64) {
        // ordering: Relaxed; published by the head's Release.
        cell.store(raw, Ordering::Relaxed);
    }

    #[inline(always)]
    fn swap_weak(cell: &AtomicU64, current: u64, new: u64) -> Result<(), u64> {
        // ordering: Relaxed, as in `gcra::acquire`.
        cell.compare_exchange_weak(current, new, Ordering::Relaxed, Ordering::Relaxed)
            .map(drop)
    }

    fn swap(cell: &AtomicU64, current: u64, new: u64) -> Result<(), u64> {
        // ordering: Relaxed, as in `gcra::acquire`.
        cell.compare_exchange(current, new, Ordering::Relaxed, Ordering::Relaxed)
            .map(drop)
    }

    #[inline(always)]
    fn decide(quota: &Quota, tat: u64, now: u64, n: u64) -> Option<Result<u64, Refusal>> {
        // `DEAD` has bit 63 set: the narrow decision's sealed case.
        if SCALED {
            // In units of `1 / a` ns, as the direct limiter's scaled cell.
            let a = quota.a();
            let t = now.saturating_mul(a);
            cell::decide_narrow(quota, tat, t, t, n).map(|r| {
                r.map(|(next, _)| next)
                    .map_err(|e| cell::unscale_refusal(a, 0, e))
            })
        } else {
            cell::decide_narrow(quota, tat, now, now, n).map(|r| r.map(|(next, _)| next))
        }
    }

    #[inline]
    fn is_full(quota: &Quota, tat: u64, now: u64) -> bool {
        if SCALED {
            tat <= now.saturating_mul(quota.a())
        } else {
            tat <= now
        }
    }

    fn refund(quota: &Quota, tat: u64, n: u64) -> u64 {
        tat.saturating_sub(n.saturating_mul(quota.c()))
    }

    fn to_wide(quota: &Quota, tat: u64, now: u64, origin: u64) -> State {
        if SCALED {
            cell::wide_from(quota, tat.min(NARROW_MAX), now, origin)
        } else {
            cell::wide_of(quota, tat.min(NARROW_MAX), now)
        }
    }

    fn of_wide(quota: &Quota, state: State, origin: u64) -> u64 {
        if SCALED {
            cell::narrow_from(quota, state, origin)
        } else {
            cell::narrow_of(quota, state)
        }
    }
}

impl Word for Wide {
    type Cell = AtomicU128;
    type Raw = State;
    /// Never a valid state: its token count is above `gcra::MAX_TOKENS`.
    const DEAD: State = State::MAX;
    const FRESH: State = 0;
    const RELATIVE: bool = false;

    fn cell(raw: State) -> AtomicU128 {
        AtomicU128::new(raw)
    }

    #[inline(always)]
    fn load(cell: &AtomicU128) -> State {
        // ordering: Relaxed, as in `gcra::acquire`.
        cell.load(Ordering::Relaxed)
    }

    fn store(cell: &AtomicU128, raw: State) {
        // ordering: Relaxed; published by the head's Release.
        cell.store(raw, Ordering::Relaxed);
    }

    #[inline(always)]
    fn swap_weak(cell: &AtomicU128, current: State, new: State) -> Result<(), State> {
        // ordering: Relaxed, as in `gcra::acquire`.
        cell.compare_exchange_weak(current, new, Ordering::Relaxed, Ordering::Relaxed)
            .map(drop)
    }

    fn swap(cell: &AtomicU128, current: State, new: State) -> Result<(), State> {
        // ordering: Relaxed, as in `gcra::acquire`.
        cell.compare_exchange(current, new, Ordering::Relaxed, Ordering::Relaxed)
            .map(drop)
    }

    #[inline(always)]
    fn decide(quota: &Quota, state: State, now: u64, n: u64) -> Option<Result<State, Refusal>> {
        if state == Self::DEAD {
            return None;
        }
        Some(gcra::decide(quota, state, now, now, n).map(|grant| grant.state))
    }

    #[inline]
    fn is_full(quota: &Quota, state: State, now: u64) -> bool {
        gcra::is_full(quota, state, now)
    }

    fn refund(_: &Quota, state: State, n: u64) -> State {
        gcra::pack(
            gcra::reset_of(state),
            gcra::tokens_of(state).saturating_sub(n),
        )
    }

    fn to_wide(_: &Quota, state: State, _: u64, _: u64) -> State {
        state
    }

    fn of_wide(_: &Quota, state: State, _: u64) -> State {
        state
    }
}
