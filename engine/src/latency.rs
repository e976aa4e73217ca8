//! A lock-free latency percentile: a log-bucketed histogram of atomics and a
//! cached quantile that one load reads.
//!
//! [`LatencyTracker`] records durations into 496 buckets — exact below 8 ns,
//! then 8 buckets per power of two, so a bucket spans at most 1/8 of its
//! lower bound (12.5 %) — with one `fetch_add`. Every `refresh_every`
//! recordings, the recording that completes the batch scans the buckets,
//! stores the quantile asked for (the upper bound of the bucket holding it:
//! never below the true quantile of what was recorded, at most 12.5 % above
//! it) in one word, and halves every bucket, so that older samples weigh
//! half as much after each batch and the quantile follows the latency as it
//! moves. [`current`](LatencyTracker::current) is one load of that word:
//! what a hedging layer reads per request to decide when to send a hedge.
//!
//! ```
//! use core::time::Duration;
//! use tenlives_engine::latency::LatencyTracker;
//!
//! // The 90th percentile, refreshed every 100 recordings once 20 were seen.
//! let p90 = LatencyTracker::new(0.9, 100, 20)?;
//! assert_eq!(p90.current(), None); // nothing measured yet
//! for ms in 1..=100 {
//!     p90.record(Duration::from_millis(ms));
//! }
//! let q = p90.current().unwrap();
//! assert!(q >= Duration::from_millis(90) && q <= Duration::from_millis(90) * 9 / 8);
//! # Ok::<(), tenlives_engine::ConfigError>(())
//! ```
//!
//! # Concurrency
//!
//! Recording is a relaxed `fetch_add` on a bucket and one on the batch
//! counter; the refresh is made by whichever thread's recording completes a
//! batch, without a lock. A refresh reads the buckets while others record,
//! so the quantile it stores is that of some mixture of the samples around
//! that moment (each bucket read once, none torn); the halving is a
//! compare-and-swap per bucket, so a sample recorded during it is never
//! lost (it may be halved with the others, or not). Two refreshes overlap
//! only if a whole batch is recorded while one scans; they then halve twice.
//! The tracker is a statistic that steers when to hedge: approximate by
//! design, never unbounded, never blocking.

use core::fmt;
use core::time::Duration;

use crate::error::ConfigError;
use crate::sync::{AtomicU64, Ordering};

/// Sub-buckets per power of two (a power of two itself).
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// Buckets: values below `SUB` exactly, then `SUB` per power of two up to
/// 2^64.
pub const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;
/// The cached word when no quantile is known yet.
const NONE: u64 = u64::MAX;

/// The bucket of a duration of `nanos` nanoseconds.
#[inline]
const fn bucket_of(nanos: u64) -> usize {
    if nanos < SUB as u64 {
        return nanos as usize;
    }
    // The position of the highest set bit: at least SUB_BITS here.
    let e = 63 - nanos.leading_zeros();
    let sub = (nanos >> (e - SUB_BITS)) as usize & (SUB - 1);
    (e - SUB_BITS + 1) as usize * SUB + sub
}

/// The largest duration (in nanoseconds) that falls in bucket `i`.
#[inline]
const fn upper_bound(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let e = (i / SUB) as u32 + SUB_BITS - 1;
    let sub = (i % SUB) as u64;
    let width = 1u64 << (e - SUB_BITS);
    // low = (SUB + sub) << (e - SUB_BITS); the top bucket's high end is u64::MAX.
    let low = (SUB as u64 + sub) << (e - SUB_BITS);
    low + (width - 1)
}

/// A quantile of recent latencies, tracked lock-free. See the
/// [module documentation](self).
pub struct LatencyTracker {
    buckets: [AtomicU64; BUCKETS],
    /// Recordings so far (wrapping): every `refresh_every`-th refreshes.
    recorded: AtomicU64,
    /// The quantile in nanoseconds, or `NONE`.
    cached: AtomicU64,
    quantile_ppm: u64,
    refresh_every: u64,
    min_samples: u64,
}

impl fmt::Debug for LatencyTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatencyTracker")
            .field("quantile_ppm", &self.quantile_ppm)
            .field("refresh_every", &self.refresh_every)
            .field("min_samples", &self.min_samples)
            .field("current", &self.current())
            .finish_non_exhaustive()
    }
}

impl LatencyTracker {
    /// Tracks the `quantile` (in `(0, 1]`, e.g. `0.95`) of the recorded
    /// durations, refreshed every `refresh_every` recordings once the
    /// histogram holds at least `min_samples` (weighted) samples.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidFraction`] for a quantile outside `(0, 1]` or
    /// not a number; [`ConfigError::Zero`] for a zero `refresh_every`;
    /// [`ConfigError::TooLarge`] for `min_samples` above `refresh_every`
    /// (the halving keeps the weighted count below twice a batch).
    pub fn new(quantile: f64, refresh_every: u32, min_samples: u32) -> Result<Self, ConfigError> {
        if !(quantile > 0.0 && quantile <= 1.0) {
            return Err(ConfigError::InvalidFraction {
                field: "quantile",
                value: quantile,
            });
        }
        if refresh_every == 0 {
            return Err(ConfigError::Zero {
                field: "refresh_every",
            });
        }
        // The halving keeps the weighted count below 2 * refresh_every; at
        // most one batch makes sure the first refresh can already decide.
        if min_samples > refresh_every {
            return Err(ConfigError::TooLarge {
                field: "min_samples",
                value: u64::from(min_samples),
                max: u64::from(refresh_every),
            });
        }
        // In (0, 1e6]: at least 1 part per million once rounded up.
        let ppm = libm_ceil(quantile * 1_000_000.0).clamp(1.0, 1_000_000.0) as u64;
        Ok(LatencyTracker {
            buckets: core::array::from_fn(|_| AtomicU64::new(0)),
            recorded: AtomicU64::new(0),
            cached: AtomicU64::new(NONE),
            quantile_ppm: ppm,
            refresh_every: u64::from(refresh_every),
            min_samples: u64::from(min_samples),
        })
    }

    /// Records one duration; refreshes the quantile when this recording
    /// completes a batch.
    #[inline]
    pub fn record(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        // ordering: Relaxed; a statistic, read by the refresh's scan only.
        self.buckets[bucket_of(nanos)].fetch_add(1, Ordering::Relaxed);
        // ordering: Relaxed; only decides which recording refreshes.
        let n = self
            .recorded
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        if n.is_multiple_of(self.refresh_every) {
            self.refresh();
        }
    }

    /// The quantile as of the last refresh, or `None` before one found
    /// enough samples. One load.
    #[inline]
    pub fn current(&self) -> Option<Duration> {
        // ordering: Relaxed; the word is a value on its own, publishing nothing.
        match self.cached.load(Ordering::Relaxed) {
            NONE => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// Scans the histogram: stores the quantile (if at least `min_samples`
    /// are held) and halves every bucket. Called by [`record`](Self::record)
    /// every `refresh_every` recordings; callable on its own (say, from a
    /// periodic task).
    pub fn refresh(&self) {
        let mut counts = [0u64; BUCKETS];
        let mut total = 0u64;
        for (count, bucket) in counts.iter_mut().zip(&self.buckets) {
            // ordering: Relaxed; see the module's Concurrency section.
            *count = bucket.load(Ordering::Relaxed);
            total = total.saturating_add(*count);
        }
        if total > 0 && total >= self.min_samples {
            // The rank of the quantile, rounded up: at least 1.
            let rank = mul_div_ceil(total, self.quantile_ppm, 1_000_000).max(1);
            let mut seen = 0u64;
            for (i, count) in counts.iter().enumerate() {
                seen = seen.saturating_add(*count);
                if seen >= rank {
                    // ordering: Relaxed; see `current`.
                    self.cached
                        .store(upper_bound(i).min(NONE - 1), Ordering::Relaxed);
                    break;
                }
            }
        }
        for bucket in &self.buckets {
            // ordering: Relaxed; a compare-and-swap loop, so a concurrent
            // increment is kept (halved or not), never lost.
            let _ = bucket.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                (c != 0).then_some(c / 2)
            });
        }
    }

    /// The quantile asked for, in parts per million.
    pub fn quantile_ppm(&self) -> u64 {
        self.quantile_ppm
    }
}

/// `ceil(a * b / c)` without overflow for the tracker's operands.
fn mul_div_ceil(a: u64, b: u64, c: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    u64::try_from(p.div_ceil(u128::from(c))).unwrap_or(u64::MAX)
}

/// `f64::ceil` without `std` (the engine is `no_std`): exact for the
/// quantile's range, `[0, 1e6]`.
fn libm_ceil(x: f64) -> f64 {
    let t = x as u64 as f64;
    if t < x { t + 1.0 } else { t }
}

#[cfg(all(test, not(tenlives_loom)))]
mod tests {
    use super::*;

    /// Every value lands in a bucket whose bounds hold it, bucket bounds
    /// tile the range without gaps, and a bucket is at most 1/8 of its low.
    #[test]
    fn buckets_tile_the_range() {
        let mut low = 0u64;
        for i in 0..BUCKETS {
            let high = upper_bound(i);
            assert!(high >= low, "bucket {i}");
            assert_eq!(bucket_of(low), i);
            assert_eq!(bucket_of(high), i);
            if low >= SUB as u64 {
                assert!(high - low < low / 8 + 1, "bucket {i} too wide");
            }
            if i + 1 < BUCKETS {
                low = high + 1;
            } else {
                assert_eq!(high, u64::MAX);
            }
        }
    }

    #[test]
    fn the_quantile_is_the_bucket_bound_at_its_rank() {
        let t = LatencyTracker::new(0.5, 1000, 1).unwrap();
        for n in [10u64, 20, 30, 40] {
            t.record(Duration::from_nanos(n));
        }
        t.refresh();
        // The rank-2 sample is 20, in the bucket [20, 21].
        assert_eq!(t.current(), Some(Duration::from_nanos(21)));
    }

    #[test]
    fn no_quantile_before_min_samples() {
        let t = LatencyTracker::new(0.99, 4, 4).unwrap();
        for _ in 0..3 {
            t.record(Duration::from_millis(5));
        }
        assert_eq!(t.current(), None, "no batch completed yet");
        let early = LatencyTracker::new(0.99, 4, 4).unwrap();
        for _ in 0..3 {
            early.record(Duration::from_millis(5));
        }
        early.refresh();
        assert_eq!(early.current(), None, "3 samples < 4");
        t.record(Duration::from_millis(5));
        let q = t.current().unwrap();
        assert!(q >= Duration::from_millis(5) && q <= Duration::from_millis(5) * 9 / 8);
    }

    /// The halving lets the quantile follow a shift in latency.
    #[test]
    fn the_quantile_follows_a_shift() {
        let t = LatencyTracker::new(0.9, 100, 10).unwrap();
        for _ in 0..1000 {
            t.record(Duration::from_millis(10));
        }
        assert!(t.current().unwrap() < Duration::from_millis(12));
        for _ in 0..1000 {
            t.record(Duration::from_millis(100));
        }
        let q = t.current().unwrap();
        assert!(
            q >= Duration::from_millis(100) && q < Duration::from_millis(113),
            "{q:?}"
        );
    }

    #[test]
    fn extremes_are_kept() {
        let t = LatencyTracker::new(1.0, 2, 1).unwrap();
        t.record(Duration::MAX);
        t.record(Duration::ZERO);
        assert_eq!(t.current(), Some(Duration::from_nanos(u64::MAX - 1)));
        assert!(LatencyTracker::new(0.0, 1, 1).is_err());
        assert!(LatencyTracker::new(f64::NAN, 1, 1).is_err());
        assert!(LatencyTracker::new(1.5, 1, 1).is_err());
        assert!(LatencyTracker::new(0.5, 0, 1).is_err());
        assert!(LatencyTracker::new(0.5, 4, 5).is_err());
    }
}
