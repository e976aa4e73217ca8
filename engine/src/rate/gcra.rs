//! The decision: a pure function of (booked, now, cost, quota), and the one
//! compare-and-swap loop that applies it to a state word.
//!
//! The state word holds `booked`: the index on the token grid (see
//! [`quota`](super::quota)) up to which tokens have been handed out. It plays
//! the part of GCRA's theoretical arrival time, measured in tokens instead of
//! nanoseconds. With `g` the number of tokens that have appeared by now and
//! `b` the burst, `min(b, g + b - booked)` tokens are available: a fresh
//! limiter (`booked = 0`) starts with a full burst, and a `booked` at or
//! below `g` means the bucket is full.

use crate::sync::{AtomicU64, Ordering, spin_hint};

use super::error::{InsufficientCapacity, RateLimitError, RateLimited};
use super::quota::Quota;
use crate::time::Timestamp;

/// Why a request for tokens was not granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not enough tokens yet; they will be by grid index `ready`.
    NotYet { ready: u64 },
    /// More tokens than the burst, and the quota allows no debt.
    Insufficient,
}

impl Refusal {
    /// The error a caller sees for this refusal of `n` tokens at `now`.
    #[inline]
    pub(crate) fn into_error(self, quota: &Quota, n: u32, now: Timestamp) -> RateLimitError {
        match self {
            Refusal::NotYet { ready } => RateLimitError::Limited(RateLimited::new(
                now,
                Timestamp::from_nanos(quota.grid().time_of(ready)),
            )),
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
    /// The new value of the state word.
    pub(crate) booked: u64,
    /// The grid index by which the granted tokens have all appeared; at or
    /// below `g` when they are available now.
    pub(crate) ready: u64,
}

/// Decides a request for `n` tokens at grid position `g` (tokens appeared by
/// now), allowing the tokens to become ready as late as grid position
/// `horizon >= g` (equal to `g` when the caller will not wait).
///
/// A request larger than the burst is refused unless the quota allows debt;
/// then it needs a full bucket and books all `n` tokens, pushing later
/// requests out.
#[inline(always)]
pub(crate) fn decide(
    quota: &Quota,
    booked: u64,
    g: u64,
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
    let start = if booked > g { booked } else { g };
    let needed = start.saturating_add(cost);
    let ready = needed.saturating_sub(burst);
    if ready <= horizon {
        Ok(Grant {
            booked: start.saturating_add(n),
            ready,
        })
    } else {
        Err(Refusal::NotYet { ready })
    }
}

/// Bit 63 of a direct limiter's booking word: its quota was replaced (see
/// `limiter.rs`, live quota changes); the booking in bits 0..63 was (or is
/// being) carried over to the next quota, and the word never changes again.
pub(crate) const SEALED: u64 = 1 << 63;

/// The largest booking a direct limiter's word holds: a grant that would
/// book beyond it is refused, so that no booking is ever mistaken for a
/// seal.
pub(crate) const MAX_BOOKED: u64 = SEALED - 1;

/// Applies [`decide`] to `word` with one compare-and-swap per attempt, and
/// returns the grant (or refusal) that took effect; `None` when the word is
/// [`SEALED`] (the caller decides again under the quota that replaced it).
#[inline(always)]
pub(crate) fn acquire(
    word: &AtomicU64,
    quota: &Quota,
    g: u64,
    horizon: u64,
    n: u64,
) -> Option<Result<Grant, Refusal>> {
    // ordering: Relaxed throughout. The word is the limiter's only mutable
    // state and every decision is confirmed by the compare-and-swap on it;
    // the limiter publishes no other memory through it, so it needs no
    // happens-before edges. A seal is a read-modify-write of the same word,
    // so a compare-and-swap from an unsealed value cannot succeed after it.
    let mut booked = word.load(Ordering::Relaxed);
    loop {
        if booked & SEALED != 0 {
            return None;
        }
        let grant = match decide(quota, booked, g, horizon, n) {
            Ok(grant) if grant.booked <= MAX_BOOKED => grant,
            Ok(_) => return Some(Err(Refusal::NotYet { ready: u64::MAX })),
            Err(refusal) => return Some(Err(refusal)),
        };
        match word.compare_exchange_weak(booked, grant.booked, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => return Some(Ok(grant)),
            Err(actual) => {
                booked = actual;
                spin_hint();
            }
        }
    }
}

/// Gives back `n` tokens booked earlier. Never makes more than the burst
/// available: a `booked` below `g` already means a full bucket, so lowering
/// it further grants nothing extra. `None` when the word is [`SEALED`].
#[inline]
pub(crate) fn refund(word: &AtomicU64, n: u64) -> Option<()> {
    // ordering: Relaxed, as in `acquire`. A read-modify-write cannot lose a
    // concurrent booking, and it leaves a sealed word alone.
    word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |booked| {
        (booked & SEALED == 0).then(|| booked.saturating_sub(n))
    })
    .ok()
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(burst: u32) -> Quota {
        Quota::per_second(10).unwrap().with_burst(burst).unwrap()
    }

    #[test]
    fn a_full_bucket_grants_the_burst_and_no_more() {
        let q = quota(3);
        let mut booked = 0;
        for _ in 0..3 {
            booked = decide(&q, booked, 100, 100, 1).unwrap().booked;
        }
        assert_eq!(booked, 103);
        assert_eq!(
            decide(&q, booked, 100, 100, 1),
            Err(Refusal::NotYet { ready: 101 })
        );
        assert!(decide(&q, booked, 101, 101, 1).is_ok());
    }

    #[test]
    fn oversized_requests_need_debt_mode() {
        assert_eq!(decide(&quota(3), 0, 5, 5, 4), Err(Refusal::Insufficient));
        let q = quota(3).with_debt();
        let g = decide(&q, 0, 5, 5, 10).unwrap();
        assert_eq!(g.booked, 15);
        // The debt is paid off before the next token: it needs g = 13.
        assert_eq!(
            decide(&q, g.booked, 5, 5, 1),
            Err(Refusal::NotYet { ready: 13 })
        );
    }

    #[test]
    fn a_horizon_lets_a_request_book_future_tokens() {
        let q = quota(2);
        let g = decide(&q, 12, 10, 13, 2).unwrap();
        assert_eq!(
            g,
            Grant {
                booked: 14,
                ready: 12
            }
        );
        assert!(decide(&q, 14, 10, 11, 1).is_err());
    }
}
