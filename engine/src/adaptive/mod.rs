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
//!
//! # Sharing between threads
//!
//! The algorithm runs on whichever thread closes a window, and a new one
//! given to [`set_algorithm`](AdaptiveLimiter::set_algorithm) is handed
//! over to that thread through a mailbox: a limiter is `Sync` only if its
//! algorithm is `Send`.
//!
//! ```
//! use tenlives_engine::adaptive::{AdaptiveLimiter, Aimd};
//! fn assert_sync<T: Sync>() {}
//! assert_sync::<AdaptiveLimiter<Aimd>>();
//! ```
//!
//! An algorithm that keeps an `Rc` cannot be shared:
//!
//! ```compile_fail,E0277
//! use std::rc::Rc;
//! use tenlives_engine::adaptive::{AdaptiveLimiter, LimitAlgorithm, WindowSample};
//!
//! struct Local(Rc<u32>);
//! impl LimitAlgorithm for Local {
//!     fn initial_limit(&self) -> u32 { *self.0 }
//!     fn update(&mut self, limit: u32, _: &WindowSample) -> u32 { limit }
//! }
//! fn assert_sync<T: Sync>() {}
//! assert_sync::<AdaptiveLimiter<Local>>();
//! ```

mod algorithm;
mod sampler;
mod snapshot;

use core::fmt;
use core::time::Duration;

pub use algorithm::{
    Aimd, AimdBuilder, Gradient, GradientBuilder, LimitAlgorithm, MEASUREMENT_WORDS, WindowSample,
};
pub use snapshot::ADAPTIVE_SNAPSHOT_MAX;

use crate::bulkhead::{Bulkhead, BulkheadFull, RawBulkheadPermit};
use crate::error::ConfigError;
use crate::events::{Event, EventKind, EventSink, NoSink};
#[cfg(feature = "alloc")]
use crate::live::Mailbox;
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
    /// Touched only by the holder of the sampler's harvesting flag.
    window: ExclusiveCell<WindowConfig>,
    /// Changes waiting for the harvesting flag.
    #[cfg(feature = "alloc")]
    changes: Changes<A>,
}

/// Settings given at run time, applied by the next holder of the flag.
#[cfg(feature = "alloc")]
struct Changes<A> {
    algorithm: Mailbox<A>,
    window: Mailbox<WindowConfig>,
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
            window: ExclusiveCell::new(window),
            #[cfg(feature = "alloc")]
            changes: Changes {
                algorithm: Mailbox::new(),
                window: Mailbox::new(),
            },
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

    /// Gives the limiter new algorithm settings at run time. They take
    /// effect at once, or — when another thread is closing a window at that
    /// instant — when the next window closes. The algorithm decides what it
    /// keeps ([`LimitAlgorithm::reconfigure`]: the engine's algorithms keep
    /// their measurements and move the limit into the new bounds); permits
    /// in flight stay held, and the samples of the current window are judged
    /// by the new settings. A later change replaces one not yet applied.
    /// Emits [`EventKind::CONFIG_CHANGED`](crate::events::EventKind::CONFIG_CHANGED)
    /// through the bulkhead's sink, payload `[17, 1]`, when applied (and
    /// [`BULKHEAD_LIMIT_CHANGED`](crate::events::EventKind::BULKHEAD_LIMIT_CHANGED)
    /// if the limit moved). Bad settings never get here: the algorithm's
    /// builder refuses them with a typed error.
    ///
    /// ```
    /// use core::time::Duration;
    /// use tenlives_engine::adaptive::{AdaptiveLimiter, Aimd, WindowConfig};
    /// use tenlives_engine::time::Timestamp;
    ///
    /// let aimd = |initial, max| Aimd::builder().limits(1, initial, max).build();
    /// let window = WindowConfig::new(Duration::from_millis(100), 1)?;
    /// let limiter = AdaptiveLimiter::new(aimd(50, 100)?, window, Timestamp::ZERO);
    /// assert_eq!(limiter.limit(), 50);
    /// // The limit goes on from where it is, moved into the new bounds (the
    /// // new initial limit is for new limiters only).
    /// limiter.set_algorithm(aimd(10, 20)?, Timestamp::ZERO);
    /// assert_eq!(limiter.limit(), 20);
    /// assert!(aimd(10, 0).is_err(), "refused by the builder");
    /// # Ok::<(), tenlives_engine::ConfigError>(())
    /// ```
    #[cfg(feature = "alloc")]
    pub fn set_algorithm(&self, algorithm: A, now: Timestamp) {
        self.changes.algorithm.put(algorithm);
        self.try_apply(now);
    }

    /// Gives the limiter a new window configuration at run time, applied
    /// like [`set_algorithm`](Self::set_algorithm)'s: the window being
    /// collected keeps its samples and now ends one new length after the
    /// change. Emits `CONFIG_CHANGED` with payload `[17, 2]` when applied.
    #[cfg(feature = "alloc")]
    pub fn set_window(&self, window: WindowConfig, now: Timestamp) {
        self.changes.window.put(window);
        self.try_apply(now);
    }

    #[cfg(feature = "alloc")]
    fn try_apply(&self, now: Timestamp) {
        if self.sampler.try_begin() {
            // SAFETY: this thread holds the harvesting flag.
            let moved_end = unsafe { self.apply_pending(now) };
            self.sampler.end(moved_end);
        }
    }

    /// Applies the changes waiting in the mailboxes; returns the new end of
    /// the current window if it moved.
    ///
    /// # Safety
    ///
    /// The caller holds the sampler's harvesting flag.
    #[cfg(feature = "alloc")]
    unsafe fn apply_pending(&self, now: Timestamp) -> Option<u64> {
        let (algorithm, window) = (self.changes.algorithm.take(), self.changes.window.take());
        // SAFETY: passed on from the caller.
        unsafe { self.apply(algorithm, window, now) }
    }

    /// Without `alloc` there is nothing waiting.
    ///
    /// # Safety
    ///
    /// None needed; kept `unsafe` like the `alloc` version.
    #[cfg(not(feature = "alloc"))]
    unsafe fn apply_pending(&self, _now: Timestamp) -> Option<u64> {
        None
    }

    /// Gives the limiter new algorithm settings (without `alloc`: through
    /// `&mut self`), as the `alloc` version describes.
    #[cfg(not(feature = "alloc"))]
    pub fn set_algorithm(&mut self, algorithm: A, now: Timestamp) {
        // SAFETY: `&mut self`: no other thread can hold the flag.
        let moved_end = unsafe { self.apply(Some(algorithm), None, now) };
        self.sampler.end(moved_end);
    }

    /// Gives the limiter a new window configuration (without `alloc`:
    /// through `&mut self`), as the `alloc` version describes.
    #[cfg(not(feature = "alloc"))]
    pub fn set_window(&mut self, window: WindowConfig, now: Timestamp) {
        // SAFETY: `&mut self`: no other thread can hold the flag.
        let moved_end = unsafe { self.apply(None, Some(window), now) };
        self.sampler.end(moved_end);
    }

    /// # Safety
    ///
    /// The caller holds the sampler's harvesting flag (or `&mut self`).
    unsafe fn apply(
        &self,
        algorithm: Option<A>,
        window: Option<WindowConfig>,
        now: Timestamp,
    ) -> Option<u64> {
        if let Some(new) = algorithm {
            let limit = self.bulkhead.limit();
            // SAFETY: passed on from the caller: nobody else holds the flag.
            let next = unsafe { self.algorithm.with_mut(|a| a.reconfigure(new, limit)) }.max(1);
            if next != limit {
                let _ = self.bulkhead.set_limit(next);
            }
            self.changed(now, 1);
        }
        let window = window?;
        // SAFETY: as above.
        unsafe { self.window.with_mut(|w| *w = window) };
        self.changed(now, 2);
        Some(now.as_nanos().saturating_add(window.length_ns))
    }

    fn changed(&self, now: Timestamp, what: u64) {
        let sink = self.bulkhead.sink();
        if sink.enabled() {
            let family = u64::from(EventKind::BULKHEAD_LIMIT_CHANGED.0);
            let event = Event::new(
                EventKind::CONFIG_CHANGED,
                self.bulkhead.source(),
                now,
                [family, what],
            );
            sink.emit(event);
        }
    }

    #[cold]
    fn close_window(&self, now: Timestamp) {
        let now_ns = now.as_nanos();
        if !self.sampler.try_begin() {
            return; // someone else is closing it; keep going
        }
        // SAFETY: this thread holds the harvesting flag.
        let moved_end = unsafe { self.apply_pending(now) };
        if !self.sampler.due(now_ns) {
            // Closed by someone else between our check and the flag.
            self.sampler.end(moved_end);
            return;
        }
        // SAFETY: this thread holds the harvesting flag.
        let window = unsafe { self.window.with(|w| *w) };
        let next_end = Some(now_ns.saturating_add(window.length_ns));
        if self.sampler.pending() < window.min_samples {
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
