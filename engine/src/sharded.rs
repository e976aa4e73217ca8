//! A sharded concurrency limit: the limit split over per-core shards, so
//! that threads on different cores take and give back permits without
//! writing one shared word.
//!
//! A [`Bulkhead`] is one atomic word: every acquisition and every release on
//! every thread writes it, and on two threads that line bounces between the
//! cores on each request. A [`ShardedBulkhead`] of limit `L` is `n =
//! min(L, STRIPES)` bulkheads whose limits add up to `L` (each
//! `L / n`, the first `L % n` one more), each on its own cache line. A
//! thread acquires from its own shard (the stripe it was given, see
//! `stripe.rs`) and, when that one is full, from the others in turn; the
//! permit remembers its shard and goes back to it.
//!
//! ```
//! use tenlives_engine::sharded::ShardedBulkhead;
//!
//! let limit = ShardedBulkhead::new(4)?;
//! let permits: Vec<_> = (0..4).map(|_| limit.try_acquire().expect("below the limit")).collect();
//! assert!(limit.try_acquire().is_err(), "four held: full");
//! assert_eq!(limit.in_flight(), 4);
//! drop(permits);
//! assert_eq!(limit.in_flight(), 0);
//! # Ok::<(), tenlives_engine::ConfigError>(())
//! ```
//!
//! # Precision
//!
//! - **Never over the limit**: at most `L` permits are held at any instant,
//!   exactly as with a [`Bulkhead`] (each shard never holds more than its
//!   share, and the shares add up to `L`).
//! - **Refusals**: a call is refused only after it found every shard full,
//!   each at the moment it looked at it. With no permit released during
//!   that scan, a refusal therefore means all `L` permits were held. A
//!   permit released in a shard the scan had already passed is missed: a
//!   refusal can happen while up to `n - 1` permits (one per shard already
//!   looked at and released since) are free. A [`Bulkhead`] refuses only
//!   when its one word says full.
//! - **Cost of a refusal**: up to `n` shard loads (8 cache lines at most),
//!   against one for a [`Bulkhead`]. An admitted call below its shard's
//!   share costs what a [`Bulkhead`]'s does, on a line only its own core
//!   writes (until more threads than shards, or a full shard, make two
//!   cores share one).
//!
//! The limit is fixed at construction; [`in_flight`](ShardedBulkhead::in_flight)
//! adds the shards' counts one after another, so under concurrent calls it
//! is a sum of readings from slightly different instants (each exact).

use core::fmt;

use crate::ConfigError;
use crate::bulkhead::{Bulkhead, BulkheadFull, BulkheadPermit, RawBulkheadPermit};
use crate::stripe::{self, STRIPES};

/// A concurrency limit split over per-core shards. See the
/// [module documentation](self).
pub struct ShardedBulkhead {
    /// The shards in use are the first `used`; the others are never touched.
    shards: [Bulkhead; STRIPES],
    used: usize,
    limit: u32,
}

impl fmt::Debug for ShardedBulkhead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardedBulkhead")
            .field("limit", &self.limit)
            .field("shards", &self.used)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// A permit of a [`ShardedBulkhead`] that holds no reference to it: hand it
/// back to [`ShardedBulkhead::release`] of the limit that issued it, or its
/// permit leaks. Prefer [`ShardedPermit`], which releases on drop.
#[must_use = "a raw permit must be handed back to `ShardedBulkhead::release`, or it leaks"]
#[derive(Debug, PartialEq, Eq)]
pub struct RawShardedPermit {
    shard: usize,
    permit: RawBulkheadPermit,
}

impl RawShardedPermit {
    /// The shard it was taken from (for tests and diagnostics).
    pub fn shard(&self) -> usize {
        self.shard
    }
}

/// Permission to run while holding one permit of a [`ShardedBulkhead`];
/// dropping it gives the permit back to its shard.
#[derive(Debug)]
pub struct ShardedPermit<'a> {
    permit: BulkheadPermit<'a>,
}

impl ShardedPermit<'_> {
    /// How many permits it holds: one.
    pub fn permits(&self) -> u32 {
        self.permit.permits()
    }
}

impl ShardedBulkhead {
    /// A limit of `limit` concurrent permits over `min(limit, STRIPES)`
    /// shards (8 with `std`). A `limit` of zero is refused with
    /// [`ConfigError::Zero`].
    pub fn new(limit: u32) -> Result<Self, ConfigError> {
        if limit == 0 {
            return Err(ConfigError::Zero { field: "limit" });
        }
        // STRIPES is 8 (2 under loom): it fits.
        let stripes = STRIPES as u32;
        let used = limit.min(stripes);
        let (share, extra) = (limit / used, limit % used);
        let mut shards: [Option<Bulkhead>; STRIPES] = Default::default();
        for (i, slot) in shards.iter_mut().enumerate() {
            let i = i as u32;
            // An unused shard gets a limit of 1; it is never reached.
            let own = if i < used {
                share + u32::from(i < extra)
            } else {
                1
            };
            *slot = Some(Bulkhead::new(own)?);
        }
        Ok(ShardedBulkhead {
            shards: shards.map(|s| match s {
                Some(b) => b,
                None => unreachable!("every shard was made above"),
            }),
            used: used as usize,
            limit,
        })
    }

    /// The limit: at most this many permits are held at once.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// How many shards the limit is split over.
    pub fn shards(&self) -> usize {
        self.used
    }

    /// Permits held now: the shards' counts, added one after another.
    pub fn in_flight(&self) -> u32 {
        self.shards[..self.used]
            .iter()
            .map(Bulkhead::in_flight)
            .sum()
    }

    /// One permit, or [`BulkheadFull`] (its counts: the permits seen held
    /// while scanning, and the limit) when every shard was full.
    #[inline]
    pub fn try_acquire(&self) -> Result<ShardedPermit<'_>, BulkheadFull> {
        self.pick(Bulkhead::try_acquire)
            .map(|(_, permit)| ShardedPermit { permit })
    }

    /// One permit as a raw token, for adapters that keep it apart from the
    /// limit; see [`try_acquire`](Self::try_acquire).
    #[inline]
    pub fn try_acquire_raw(&self) -> Result<RawShardedPermit, BulkheadFull> {
        self.pick(Bulkhead::try_acquire_raw)
            .map(|(shard, permit)| RawShardedPermit { shard, permit })
    }

    /// `take` from this thread's shard, or else from the others in turn.
    #[inline]
    fn pick<'a, T>(
        &'a self,
        take: impl Fn(&'a Bulkhead) -> Result<T, BulkheadFull>,
    ) -> Result<(usize, T), BulkheadFull> {
        let home = stripe::current() % self.used;
        match take(&self.shards[home]) {
            Ok(permit) => Ok((home, permit)),
            Err(full) => self.steal(home, full.in_flight(), take),
        }
    }

    /// The home shard was full: the others, in turn.
    #[cold]
    fn steal<'a, T>(
        &'a self,
        home: usize,
        mut seen: u32,
        take: impl Fn(&'a Bulkhead) -> Result<T, BulkheadFull>,
    ) -> Result<(usize, T), BulkheadFull> {
        for step in 1..self.used {
            let shard = (home + step) % self.used;
            match take(&self.shards[shard]) {
                Ok(permit) => return Ok((shard, permit)),
                Err(full) => seen = seen.saturating_add(full.in_flight()),
            }
        }
        Err(BulkheadFull::new(seen, self.limit))
    }

    /// Gives a raw permit back to its shard. A permit of another limit is a
    /// bug, caught as [`Bulkhead::release`] catches it.
    #[inline]
    pub fn release(&self, permit: RawShardedPermit) {
        self.shards[permit.shard].release(permit.permit);
    }
}

#[cfg(all(test, not(tenlives_loom)))]
mod tests {
    use alloc::vec::Vec;

    use super::*;

    #[test]
    fn the_limit_is_split_into_shares_that_add_up_to_it() {
        for limit in [1, 2, 3, 7, 8, 9, 10, 1000, u32::MAX] {
            let s = ShardedBulkhead::new(limit).unwrap();
            assert_eq!(s.shards(), (limit as usize).min(STRIPES));
            let shares: u64 = s.shards[..s.used]
                .iter()
                .map(|b| u64::from(b.limit()))
                .sum();
            assert_eq!(shares, u64::from(limit), "limit {limit}");
            let (lo, hi) = s.shards[..s.used]
                .iter()
                .fold((u32::MAX, 0), |(lo, hi), b| {
                    (lo.min(b.limit()), hi.max(b.limit()))
                });
            assert!(hi - lo <= 1, "shares differ by at most one: {lo}..{hi}");
        }
        assert_eq!(
            ShardedBulkhead::new(0).unwrap_err(),
            ConfigError::Zero { field: "limit" }
        );
    }

    /// One thread takes every permit: its own shard first, then the others;
    /// the next is refused; each goes back to its own shard.
    #[test]
    fn one_thread_reaches_the_whole_limit_by_stealing() {
        let s = ShardedBulkhead::new(20).unwrap();
        let held: Vec<_> = (0..20).map(|_| s.try_acquire_raw().unwrap()).collect();
        assert_eq!(s.in_flight(), 20);
        let full = s.try_acquire_raw().unwrap_err();
        assert_eq!((full.in_flight(), full.limit()), (20, 20));
        let mut per_shard = [0u32; STRIPES];
        for p in &held {
            per_shard[p.shard()] += 1;
        }
        for (i, b) in s.shards[..s.used].iter().enumerate() {
            assert_eq!(per_shard[i], b.limit(), "shard {i} full");
        }
        for p in held {
            s.release(p);
        }
        assert_eq!(s.in_flight(), 0);
        let guard = s.try_acquire().unwrap();
        assert_eq!(guard.permits(), 1);
        assert_eq!(s.in_flight(), 1);
        drop(guard);
        assert_eq!(s.in_flight(), 0);
    }
}
