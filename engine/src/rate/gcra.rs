//! The decision: a pure function of (state, now, cost, quota), and the one
//! compare-and-swap loop that applies it to a state cell.
//!
//! # The state
//!
//! GCRA keeps the theoretical arrival time `TAT`: a request for `n` tokens
//! at `t` is admitted iff `max(TAT, t) + n·T - t <= b·T` (`T` the emission
//! interval, `b` the burst), and then `TAT := max(TAT, t) + n·T`. `T = c / a`
//! ns is a fraction (see [`quota`](super::quota)), so `TAT` is not a whole
//! number of nanoseconds. But it always has the form
//!
//! ```text
//! TAT = reset + k·T
//! ```
//!
//! with `reset` the (whole) nanosecond of the last request that found
//! `TAT <= t` (it sets `TAT := t + n·T`: `reset = t`, `k = n`) and `k` the
//! tokens booked since (every other admission adds its `n` to `k`). So the
//! state is two integers, held in one 128-bit cell:
//!
//! | bits | field |
//! |---|---|
//! | 64..128 | `reset`, nanoseconds |
//! | 63 | `SEALED` (direct limiter: its quota was replaced) |
//! | 0..63 | `k`, tokens booked since `reset` (below `2^63`) |
//!
//! and every comparison is exact in 128-bit integers, multiplied by `a`:
//! `TAT·a = reset·a + k·c`, `t·a`, `b·T·a = b·c`. With `a < 2^32`,
//! `c < 2^64` and `k < 2^63`, no sum below exceeds `2^128`.
//!
//! A fresh limiter is `(0, 0)`: `TAT = 0`, a full bucket at any `t`.

use crate::sync::{AtomicU128, Ordering, spin_hint};

use super::error::{InsufficientCapacity, RateLimitError, RateLimited};
use super::quota::Quota;
use crate::time::Timestamp;

/// A limiter's state: `reset << 64 | k` (see the module documentation).
pub(crate) type State = u128;

/// Bit 63 of a direct limiter's state: its quota was replaced (see
/// `limiter.rs`, live quota changes); the state in the other bits was (or is
/// being) carried over to the next quota, and the cell never changes again.
pub(crate) const SEALED: State = 1 << 63;

/// The most tokens a state books since its reset: a grant that would book
/// more is refused, so that no state is ever mistaken for a seal. It binds
/// only after `2^63` tokens without a single moment of full bucket (292
/// years at one token a nanosecond).
pub(crate) const MAX_TOKENS: u64 = (1 << 63) - 1;

/// `reset` and `k` in one state.
#[inline(always)]
pub(crate) const fn pack(reset: u64, k: u64) -> State {
    (reset as u128) << 64 | k as u128
}

/// `reset` of a state.
#[inline(always)]
pub(crate) const fn reset_of(state: State) -> u64 {
    (state >> 64) as u64
}

/// `k` of a state (with the `SEALED` bit, if set).
#[inline(always)]
pub(crate) const fn tokens_of(state: State) -> u64 {
    state as u64
}

/// `TAT·a`: the theoretical arrival time in units of `1 / a` ns. `state`
/// is not sealed (callers check first).
#[inline(always)]
pub(crate) fn tat(quota: &Quota, state: State) -> u128 {
    debug_assert!(
        state & SEALED == 0,
        "a sealed or dead state is not decided on"
    );
    let k = tokens_of(state);
    u128::from(k) * u128::from(quota.c()) + u128::from(reset_of(state)) * u128::from(quota.a())
}

/// `ceil(x / a)` in nanoseconds, saturating at `u64::MAX`. Out of line: a
/// 128-bit division that only refusals and reservations need, kept out of
/// the body of a check so that the check inlines whole.
#[inline(never)]
fn to_nanos(quota: &Quota, x: u128) -> u64 {
    let a = u128::from(quota.a());
    let ns = if a == 1 { x } else { x.div_ceil(a) };
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// Why a request for tokens was not granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not enough tokens yet; the request would conform at `ready` ns
    /// (rounded up, saturating).
    NotYet { ready: u64 },
    /// More tokens than the burst, and the quota allows no debt.
    Insufficient,
}

impl Refusal {
    /// The refusal with its ready time `origin` ns later (a refusal in a
    /// scaled table's time, in the caller's); "never" stays "never".
    #[inline]
    pub(crate) fn later_by(self, origin: u64) -> Self {
        match self {
            Refusal::NotYet { ready } if ready != u64::MAX => Refusal::NotYet {
                ready: ready.saturating_add(origin),
            },
            other => other,
        }
    }

    /// The error a caller sees for this refusal of `n` tokens at `now`.
    #[inline]
    pub(crate) fn into_error(self, quota: &Quota, n: u32, now: Timestamp) -> RateLimitError {
        match self {
            Refusal::NotYet { ready } => {
                RateLimitError::Limited(RateLimited::new(now, Timestamp::from_nanos(ready)))
            }
            Refusal::Insufficient => RateLimitError::Insufficient(insufficient(quota, n)),
        }
    }
}

/// A request for `n` tokens, more than `quota`'s burst.
pub(crate) fn insufficient(quota: &Quota, n: u32) -> InsufficientCapacity {
    InsufficientCapacity {
        requested: n,
        burst: quota.burst(),
    }
}

/// Outcome of one decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Grant {
    /// The new state.
    pub(crate) state: State,
    /// When the request conforms, in ns: `now` when the tokens are
    /// available now, else `max(TAT, now) + n·T - b·T` rounded up.
    pub(crate) ready: u64,
}

/// Decides a request for `n` tokens at `now` (ns), allowing the request to
/// conform as late as `horizon >= now` (equal to `now` when the caller will
/// not wait).
///
/// A request larger than the burst is refused unless the quota allows debt;
/// then it is decided as a request for the burst (it needs a full bucket)
/// and books all `n` tokens, pushing later requests out.
#[inline(always)]
pub(crate) fn decide(
    quota: &Quota,
    state: State,
    now: u64,
    horizon: u64,
    n: u64,
) -> Result<Grant, Refusal> {
    let burst = quota.burst_tokens();
    let cost = if n <= burst {
        n
    } else if quota.allows_debt() {
        burst
    } else {
        return Err(Refusal::Insufficient);
    };
    let a = u128::from(quota.a());
    let t = u128::from(now) * a;
    let tat = tat(quota, state);
    if tat <= t {
        // A full bucket: `max(TAT, t) = t`, and `cost <= b`.
        return Ok(Grant {
            state: pack(now, n),
            ready: now,
        });
    }
    // Conforms by `horizon` iff max(TAT, t) + cost·T - b·T <= horizon; all
    // times a.
    let end = tat + u128::from(cost) * u128::from(quota.c());
    if end > u128::from(horizon) * a + quota.burst_c() {
        return Err(Refusal::NotYet {
            ready: to_nanos(quota, end - quota.burst_c()),
        });
    }
    let k = tokens_of(state) + n;
    if k > MAX_TOKENS {
        return Err(Refusal::NotYet { ready: u64::MAX });
    }
    Ok(Grant {
        state: pack(reset_of(state), k),
        ready: if end <= t + quota.burst_c() {
            now
        } else {
            to_nanos(quota, end - quota.burst_c())
        },
    })
}

/// Whether the bucket is full at `now`: `TAT <= now`, the state of a limiter
/// that has never been used.
#[cfg(feature = "std")]
#[inline]
pub(crate) fn is_full(quota: &Quota, state: State, now: u64) -> bool {
    tat(quota, state) <= u128::from(now) * u128::from(quota.a())
}

/// Tokens that could be taken at `now`: `min(b, floor((now + b·T - max(TAT,
/// now)) / T))`.
pub(crate) fn available(quota: &Quota, state: State, now: u64) -> u64 {
    available_at(
        quota,
        tat(quota, state),
        u128::from(now) * u128::from(quota.a()),
    )
}

/// [`available`] for `TAT·a = tat` at `t = now·a`.
pub(crate) fn available_at(quota: &Quota, tat: u128, t: u128) -> u64 {
    if tat <= t {
        return quota.burst_tokens();
    }
    // Below `b·c`, so the quotient is below `b`.
    ((t + quota.burst_c()).saturating_sub(tat) / u128::from(quota.c())) as u64
}

/// Tokens booked beyond `now`: `ceil((TAT - now) / T)`, 0 when the bucket is
/// full (saturating).
pub(crate) fn ahead(quota: &Quota, state: State, now: u64) -> u64 {
    let t = u128::from(now) * u128::from(quota.a());
    let over = tat(quota, state).saturating_sub(t);
    u64::try_from(over.div_ceil(u128::from(quota.c()))).unwrap_or(u64::MAX)
}

/// Carries a state over from quota `old` to quota `new` at `now`.
///
/// With the same emission interval (only the burst or debt mode changes),
/// `TAT` is kept exactly (the state does not change), unless it runs more
/// than the new burst ahead of `now` without debt: then it is cut to
/// `now + b·T`, that is `(now, b)`.
///
/// Otherwise the time still booked ahead (`TAT - now`, rounded up to whole
/// nanoseconds) is re-expressed in whole tokens of `new` (rounded up),
/// capped at the new burst unless `new` allows debt: `(now, k)`.
pub(crate) fn convert(old: &Quota, new: &Quota, state: State, now: u64) -> State {
    let t = u128::from(now) * u128::from(old.a());
    if old.a() == new.a() && old.c() == new.c() {
        if new.allows_debt() || tat(old, state) <= t + new.burst_c() {
            return state;
        }
        return pack(now, new.burst_tokens());
    }
    let over = tat(old, state).saturating_sub(t);
    if over == 0 {
        return pack(now, 0);
    }
    // Below 2^95 keeps the product below 2^127; beyond it (debt reaching
    // 10^12 years ahead) the tokens saturate anyway.
    let ahead_ns = over.div_ceil(u128::from(old.a())).min(1 << 95);
    let k = (ahead_ns * u128::from(new.a())).div_ceil(u128::from(new.c()));
    let mut k = u64::try_from(k).unwrap_or(u64::MAX).min(MAX_TOKENS);
    if !new.allows_debt() {
        k = k.min(new.burst_tokens());
    }
    pack(now, k)
}

/// Applies [`decide`] to `cell` with one compare-and-swap per attempt, and
/// returns the grant (or refusal) that took effect; `None` when the cell is
/// [`SEALED`] (the caller decides again under the quota that replaced it).
#[inline(always)]
pub(crate) fn acquire(
    cell: &AtomicU128,
    quota: &Quota,
    now: u64,
    horizon: u64,
    n: u64,
) -> Option<Result<Grant, Refusal>> {
    // ordering: Relaxed throughout. The cell is the limiter's only mutable
    // state and every decision is confirmed by the compare-and-swap on it;
    // the limiter publishes no other memory through it, so it needs no
    // happens-before edges. A seal is a read-modify-write of the same cell,
    // so a compare-and-swap from an unsealed value cannot succeed after it.
    let mut state = cell.load(Ordering::Relaxed);
    loop {
        if state & SEALED != 0 {
            return None;
        }
        let grant = match decide(quota, state, now, horizon, n) {
            Ok(grant) => grant,
            Err(refusal) => return Some(Err(refusal)),
        };
        match cell.compare_exchange_weak(state, grant.state, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some(Ok(grant)),
            Err(actual) => {
                state = actual;
                spin_hint();
            }
        }
    }
}

/// Gives back `n` tokens booked earlier: `TAT := TAT - n·T`, but not below
/// `reset` (the instant of the last full bucket). Never makes more than the
/// burst available: a `TAT` at or below `now` already means a full bucket.
/// `None` when the cell is [`SEALED`].
#[inline]
pub(crate) fn refund(cell: &AtomicU128, n: u64) -> Option<()> {
    // ordering: Relaxed, as in `acquire`. A read-modify-write cannot lose a
    // concurrent booking, and it leaves a sealed cell alone.
    cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |state| {
        (state & SEALED == 0).then(|| pack(reset_of(state), tokens_of(state).saturating_sub(n)))
    })
    .ok()
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::time::Duration;

    /// 10 a second: `T` = 100 ms.
    fn quota(burst: u32) -> Quota {
        Quota::per_second(10).unwrap().with_burst(burst).unwrap()
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn a_full_bucket_grants_the_burst_and_no_more() {
        let q = quota(3);
        let mut state = 0;
        for _ in 0..3 {
            state = decide(&q, state, 1_000 * MS, 1_000 * MS, 1).unwrap().state;
        }
        assert_eq!(state, pack(1_000 * MS, 3));
        assert_eq!(
            decide(&q, state, 1_000 * MS, 1_000 * MS, 1),
            Err(Refusal::NotYet { ready: 1_100 * MS })
        );
        assert!(decide(&q, state, 1_100 * MS, 1_100 * MS, 1).is_ok());
        assert!(decide(&q, state, 1_100 * MS - 1, 1_100 * MS - 1, 1).is_err());
    }

    #[test]
    fn oversized_requests_need_debt_mode() {
        assert_eq!(
            decide(&quota(3), 0, 5 * MS, 5 * MS, 4),
            Err(Refusal::Insufficient)
        );
        let q = quota(3).with_debt();
        let g = decide(&q, 0, 5 * MS, 5 * MS, 10).unwrap();
        assert_eq!(g.state, pack(5 * MS, 10));
        // The debt is paid off before the next token: TAT = 1 005 ms, and
        // one token needs TAT + T - 3T <= t.
        assert_eq!(
            decide(&q, g.state, 5 * MS, 5 * MS, 1),
            Err(Refusal::NotYet { ready: 805 * MS })
        );
    }

    #[test]
    fn a_horizon_lets_a_request_book_future_tokens() {
        let q = quota(2);
        // TAT = 1 200 ms at t = 1 000 ms: the bucket is empty.
        let state = pack(1_000 * MS, 2);
        let g = decide(&q, state, 1_000 * MS, 1_200 * MS, 2).unwrap();
        assert_eq!(
            g,
            Grant {
                state: pack(1_000 * MS, 4),
                ready: 1_200 * MS
            }
        );
        assert!(decide(&q, state, 1_000 * MS, 1_199 * MS, 2).is_err());
    }

    #[test]
    fn a_fractional_interval_is_exact() {
        // 3 a second: T = 333 333 333.3 ns. The burst taken at 0, the
        // bucket never refills (TAT stays ahead of every request), so token
        // i after it conforms at exactly i·T, rounded up.
        let q = Quota::per_second(3).unwrap().with_burst(2).unwrap();
        let mut state = decide(&q, 0, 0, 0, 2).unwrap().state;
        // A million tokens natively; under Miri a thousand (time only).
        let tokens: u64 = if cfg!(miri) { 1_000 } else { 1_000_000 };
        for i in 1..=tokens {
            let due = (i * 1_000_000_000).div_ceil(3);
            assert_eq!(
                decide(&q, state, due - 1, due - 1, 1),
                Err(Refusal::NotYet { ready: due })
            );
            state = decide(&q, state, due, due, 1).unwrap().state;
        }
        assert_eq!(state, pack(0, tokens + 2));
    }

    #[test]
    fn conversion_rounds_the_time_ahead_up_to_whole_new_tokens() {
        let old = quota(4);
        // TAT = 1 250 ms at 1 000 ms: 250 ms ahead.
        let state = pack(1_050 * MS, 2);
        let new = Quota::new(1, Duration::from_millis(200))
            .unwrap()
            .with_burst(5)
            .unwrap();
        assert_eq!(convert(&old, &new, state, 1_000 * MS), pack(1_000 * MS, 2));
        // Capped at the new burst without debt.
        let small = new.with_burst(1).unwrap();
        assert_eq!(
            convert(&old, &small, state, 1_000 * MS),
            pack(1_000 * MS, 1)
        );
        // A full bucket carries nothing over.
        assert_eq!(convert(&old, &new, state, 2_000 * MS), pack(2_000 * MS, 0));
        // The same interval keeps TAT exactly, cut at the new burst.
        let same = old.with_burst(3).unwrap();
        assert_eq!(convert(&old, &same, state, 1_000 * MS), state);
        let one = old.with_burst(1).unwrap();
        assert_eq!(convert(&old, &one, state, 1_000 * MS), pack(1_000 * MS, 1));
        assert_eq!(convert(&old, &one.with_debt(), state, 1_000 * MS), state);
    }
}
