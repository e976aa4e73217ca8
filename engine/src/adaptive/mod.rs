//! Adaptive concurrency limits: a [`Bulkhead`] whose limit follows the
//! round-trip times of the calls it admits.
//!
//! Each permit reports, when its call completes, either its round-trip time
//! (`success`) or that the call was dropped (timed out, or refused by the
//! dependency). Samples are collected lock-free per window; when a window's
//! time is up, one caller — whoever notices first — closes it, feeds the
//! [`WindowSample`] to the [`LimitAlgorithm`] and applies the new limit to the
//! bulkhead. Nobody waits for that: other callers keep acquiring and
//! reporting meanwhile.
//!
//! Two algorithms come with the engine: [`Aimd`] (additive increase,
//! multiplicative decrease) and [`Gradient`] (long-term vs short-term RTT, in
//! the spirit of Netflix's Gradient2). `docs/adaptive.md` shows both
//! converging in a simulation.
//!
//! ```
//! use core::time::Duration;
//! use tenlives_engine::adaptive::{AdaptiveLimiter, Aimd, WindowConfig};
//! use tenlives_engine::time::Timestamp;
//!
//! let aimd = Aimd::builder().limits(1, 10, 100).latency_threshold(Duration::from_millis(50)).build()?;
//! let window = WindowConfig::new(Duration::from_millis(100), 1)?;
//! let limiter = AdaptiveLimiter::new(aimd, window, Timestamp::ZERO);
//! assert_eq!(limiter.limit(), 10);
//!
//! // Ten calls of 20 ms each, all in flight together...
//! let t = |ms: u64| Timestamp::from_nanos(ms * 1_000_000);
//! let permits: Vec<_> = (0..10).map(|_| limiter.try_acquire(t(100)).unwrap()).collect();
//! assert!(limiter.try_acquire(t(100)).is_err(), "the limit is reached");
//! for p in permits {
//!     p.success(t(120)); // 20 ms, reported after the first 100 ms window ended
//! }
//! // ...fully used, fast: the first report after 100 ms closed the window,
//! // and the algorithm grew the limit by one.
//! assert_eq!(limiter.limit(), 11);
//! # Ok::<(), tenlives_engine::ConfigError>(())
//! ```

mod algorithm;
mod sampler;

use core::fmt;
use core::time::Duration;

pub use algorithm::{Aimd, AimdBuilder, Gradient, GradientBuilder, LimitAlgorithm, WindowSample};

use crate::bulkhead::{Bulkhead, BulkheadFull, RawBulkheadPermit};
use crate::error::ConfigError;
use crate::events::{EventSink, NoSink};
use crate::sync::ExclusiveCell;
use crate::time::{Timestamp, checked_nanos};
use sampler::Sampler;

/// How samples are grouped into windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowConfig {
    length_ns: u64,
    min_samples: u64,
}

impl WindowConfig {
    /// Windows of `length`; a window that ends with fewer than
    /// `min_samples` reports is extended instead of judged.
    pub fn new(length: Duration, min_samples: u32) -> Result<Self, ConfigError> {
        let length_ns = checked_nanos("window length", length)?;
        if length_ns == 0 {
            return Err(ConfigError::ZeroDuration {
                field: "window length",
            });
        }
        if min_samples == 0 {
            return Err(ConfigError::Zero {
                field: "min_samples",
            });
        }
        Ok(WindowConfig {
            length_ns,
            min_samples: min_samples.into(),
        })
    }
}

/// A concurrency limit that adapts to measured latency. See the
/// [module documentation](self).
pub struct AdaptiveLimiter<A, S: EventSink = NoSink> {
    bulkhead: Bulkhead<S>,
    sampler: Sampler,
    /// Touched only by the holder of the sampler's harvesting flag.
    algorithm: ExclusiveCell<A>,
    window: WindowConfig,
}

// SAFETY: the only non-`Sync` part is `algorithm`'s cell, which is accessed
// exclusively by the thread holding the sampler's harvesting flag (taken with
// Acquire, released with Release), so sharing the limiter between threads
// never gives two threads the algorithm at once. `A: Send` lets it move
// between those threads.
unsafe impl<A: Send, S: EventSink + Sync> Sync for AdaptiveLimiter<A, S> {}

impl<A, S: EventSink> fmt::Debug for AdaptiveLimiter<A, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimiter")
            .field("limit", &self.bulkhead.limit())
            .field("in_flight", &self.bulkhead.in_flight())
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl<A: LimitAlgorithm> AdaptiveLimiter<A> {
    /// A limiter starting at the algorithm's initial limit, whose first
    /// window starts at `now`.
    pub fn new(algorithm: A, window: WindowConfig, now: Timestamp) -> Self {
        let bulkhead = match Bulkhead::new(algorithm.initial_limit().max(1)) {
            Ok(b) => b,
            // A bulkhead refuses only a zero limit.
            Err(_) => unreachable!("the limit is at least 1"),
        };
        Self::from_parts(algorithm, window, now, bulkhead)
    }
}

impl<A: LimitAlgorithm, S: EventSink> AdaptiveLimiter<A, S> {
    /// A limiter over a bulkhead of your own (for example one with an event
    /// sink); its limit is set to the algorithm's initial limit.
    pub fn from_parts(
        algorithm: A,
        window: WindowConfig,
        now: Timestamp,
        bulkhead: Bulkhead<S>,
    ) -> Self {
        let _ = bulkhead.set_limit(algorithm.initial_limit().max(1));
        AdaptiveLimiter {
            bulkhead,
            sampler: Sampler::new(now.as_nanos().saturating_add(window.length_ns)),
            algorithm: ExclusiveCell::new(algorithm),
            window,
        }
    }

    /// The limit in force.
    pub fn limit(&self) -> u32 {
        self.bulkhead.limit()
    }

    /// Calls admitted and not yet reported or dropped.
    pub fn in_flight(&self) -> u32 {
        self.bulkhead.in_flight()
    }

    /// Samples recorded but not yet handed to the algorithm (for tests and
    /// reports; reads every stripe).
    pub fn pending_samples(&self) -> u64 {
        self.sampler.pending_all()
    }

    /// The bulkhead underneath.
    pub fn bulkhead(&self) -> &Bulkhead<S> {
        &self.bulkhead
    }

    /// Admits a call at `now` if the limit allows.
    #[inline]
    pub fn try_acquire(&self, now: Timestamp) -> Result<AdaptivePermit<'_, A, S>, BulkheadFull> {
        let raw = self.bulkhead.try_acquire_raw()?;
        Ok(AdaptivePermit {
            limiter: self,
            raw: Some(raw),
            admitted_at: now,
        })
    }

    /// Reports a call's end for a raw permit (see [`AdaptivePermit`] for the
    /// safe form): `Some(admitted_at)`-relative round-trip time on success,
    /// `None` for a drop; `now` is when it ended.
    #[inline]
    pub fn complete_raw(&self, permit: RawBulkheadPermit, rtt_ns: Option<u64>, now: Timestamp) {
        self.sampler.record(rtt_ns);
        self.bulkhead.release(permit);
        if self.sampler.due(now.as_nanos()) {
            self.close_window(now);
        }
    }

    #[cold]
    fn close_window(&self, now: Timestamp) {
        let now_ns = now.as_nanos();
        if !self.sampler.try_begin() {
            return; // someone else is closing it; keep going
        }
        if !self.sampler.due(now_ns) {
            // Closed by someone else between our check and the flag.
            self.sampler.end(None);
            return;
        }
        let next_end = Some(now_ns.saturating_add(self.window.length_ns));
        if self.sampler.pending() < self.window.min_samples {
            self.sampler.end(next_end); // too few samples to judge: extend
            return;
        }
        let totals = self.sampler.harvest();
        let sample = WindowSample {
            completed: totals.completed,
            dropped: totals.dropped,
            mean_rtt_ns: totals.rtt_sum_ns.checked_div(totals.completed).unwrap_or(0),
            in_flight: self.bulkhead.in_flight(),
        };
        let limit = self.bulkhead.limit();
        // SAFETY: we hold the sampler's harvesting flag (try_begin succeeded
        // and `end` has not been called yet), the only licence to touch the
        // algorithm.
        let next = unsafe { self.algorithm.with_mut(|a| a.update(limit, &sample)) };
        if next != limit {
            // A zero limit is refused and the old one kept.
            let _ = self.bulkhead.set_limit(next);
        }
        self.sampler.end(next_end);
    }
}

/// Permission for one call from an [`AdaptiveLimiter`].
///
/// Report how it ended with [`success`](Self::success) (its round-trip
/// time feeds the limit) or [`dropped`](Self::dropped) (a timeout or a
/// refusal: a congestion signal). Dropping the permit unreported (the call was
/// cancelled, or panicked) releases it without a sample.
#[must_use = "dropping a permit unreported releases it without a sample"]
pub struct AdaptivePermit<'a, A: LimitAlgorithm, S: EventSink = NoSink> {
    limiter: &'a AdaptiveLimiter<A, S>,
    raw: Option<RawBulkheadPermit>,
    admitted_at: Timestamp,
}

impl<A: LimitAlgorithm, S: EventSink> AdaptivePermit<'_, A, S> {
    /// Gives up the automatic release, returning the bulkhead's low-level
    /// token: report it with [`AdaptiveLimiter::complete_raw`] (or release
    /// it on the bulkhead).
    pub fn into_raw(mut self) -> RawBulkheadPermit {
        match self.raw.take() {
            Some(raw) => raw,
            // `raw` is only taken by methods that consume `self`.
            None => unreachable!("permit already consumed"),
        }
    }

    /// The call succeeded at `now`; its round-trip time is `now` minus the
    /// admission time.
    pub fn success(mut self, now: Timestamp) {
        if let Some(raw) = self.raw.take() {
            let rtt = now.as_nanos().saturating_sub(self.admitted_at.as_nanos());
            self.limiter.complete_raw(raw, Some(rtt), now);
        }
    }

    /// The call was dropped (timed out, or refused by the dependency) at `now`.
    pub fn dropped(mut self, now: Timestamp) {
        if let Some(raw) = self.raw.take() {
            self.limiter.complete_raw(raw, None, now);
        }
    }

    /// When the call was admitted.
    pub fn admitted_at(&self) -> Timestamp {
        self.admitted_at
    }
}

impl<A: LimitAlgorithm, S: EventSink> fmt::Debug for AdaptivePermit<'_, A, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptivePermit")
            .field("admitted_at", &self.admitted_at)
            .finish_non_exhaustive()
    }
}

impl<A: LimitAlgorithm, S: EventSink> Drop for AdaptivePermit<'_, A, S> {
    fn drop(&mut self) {
        if let Some(raw) = self.raw.take() {
            self.limiter.bulkhead.release(raw);
        }
    }
}
