//! The direct (single-key) rate limiter.

use core::fmt;
use core::time::Duration;

use crossbeam_utils::CachePadded;

use crate::events::{Event, EventKind, EventSink, NoSink};
use crate::sync::{AtomicU64, Ordering};
use crate::time::Timestamp;

use super::error::{InsufficientCapacity, RateLimitError, RateLimited};
use super::gcra::{self, Grant, Refusal};
use super::quota::Quota;

/// A GCRA rate limiter over one atomic word. See the
/// [module documentation](super).
///
/// All methods take `&self`; share it by reference, in an `Arc` or in a
/// `static`. It never allocates, never blocks, never reads a clock.
pub struct RateLimiter<S: EventSink = NoSink> {
    booked: CachePadded<AtomicU64>,
    quota: Quota,
    sink: S,
    source: u32,
}

impl RateLimiter {
    /// A limiter enforcing `quota`, emitting no events.
    pub fn new(quota: Quota) -> Self {
        RateLimiter::with_sink(quota, NoSink, 0)
    }
}

impl<S: EventSink> fmt::Debug for RateLimiter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("quota", &self.quota)
            .field("booked", &self.booked.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A booking of tokens, made by [`RateLimiter::reserve_n`]: the tokens are
/// taken; [`cancel`](Self::cancel) gives them back, [`commit`](Self::commit)
/// (or dropping it) keeps them spent.
#[must_use = "a reservation keeps its tokens unless cancelled; act at `ready_at`"]
#[derive(Debug)]
pub struct Reservation<'a, S: EventSink = NoSink> {
    limiter: &'a RateLimiter<S>,
    tokens: u64,
    ready_at: Timestamp,
}

impl<S: EventSink> Reservation<'_, S> {
    /// When the reserved tokens have all appeared: the caller should act no
    /// earlier. At or before the `now` of the reservation when they were
    /// available at once.
    pub fn ready_at(&self) -> Timestamp {
        self.ready_at
    }

    /// How long to wait from `now` before acting.
    pub fn delay_from(&self, now: Timestamp) -> Duration {
        self.ready_at.saturating_duration_since(now)
    }

    /// How many tokens it holds.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Keeps the tokens spent (the same as dropping the reservation).
    pub fn commit(self) {}

    /// Gives the tokens back. Never makes more than the burst available,
    /// however long ago the reservation was made.
    pub fn cancel(self) {
        gcra::refund(&self.limiter.booked, self.tokens);
    }
}

impl<S: EventSink> RateLimiter<S> {
    /// A limiter enforcing `quota` that reports refusals to `sink`, tagged
    /// with `source` (see `docs/events.md`).
    pub fn with_sink(quota: Quota, sink: S, source: u32) -> Self {
        RateLimiter {
            booked: CachePadded::new(AtomicU64::new(0)),
            quota,
            sink,
            source,
        }
    }

    /// The quota in force.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// The sink events go to.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    #[inline(always)]
    fn grid_now(&self, now: Timestamp) -> u64 {
        self.quota.grid().tokens_at(now.as_nanos())
    }

    /// Takes one token, or says when one will be available.
    #[inline]
    pub fn check(&self, now: Timestamp) -> Result<(), RateLimited> {
        let g = self.grid_now(now);
        match gcra::acquire(&self.booked, &self.quota, g, g, 1) {
            Ok(_) => Ok(()),
            Err(refusal) => Err(self.refused(refusal, 1, now).expect_limited()),
        }
    }

    /// Takes `n` tokens at once, all or none.
    ///
    /// # Errors
    ///
    /// [`RateLimitError::Limited`] when they are not all available yet (with
    /// the time they will be), and [`RateLimitError::Insufficient`] when `n`
    /// exceeds the burst and the quota does not allow debt, so that a caller
    /// never waits for what cannot come.
    #[inline]
    pub fn check_n(&self, n: u32, now: Timestamp) -> Result<(), RateLimitError> {
        let g = self.grid_now(now);
        match gcra::acquire(&self.booked, &self.quota, g, g, u64::from(n)) {
            Ok(_) => Ok(()),
            Err(refusal) => Err(self.refused(refusal, n, now)),
        }
    }

    /// Whether `n` tokens are available now, without taking them.
    ///
    /// # Errors
    ///
    /// As [`check_n`](Self::check_n).
    pub fn peek_n(&self, n: u32, now: Timestamp) -> Result<(), RateLimitError> {
        let g = self.grid_now(now);
        // ordering: Relaxed; a peek is a snapshot that may be stale the moment
        // it is returned.
        let booked = self.booked.load(Ordering::Relaxed);
        match gcra::decide(&self.quota, booked, g, g, u64::from(n)) {
            Ok(_) => Ok(()),
            Err(refusal) => Err(self.describe(refusal, n, now)),
        }
    }

    /// The earliest instant at which `n` tokens will be available if nobody
    /// else takes any: `now` when they are available now. For an async wait,
    /// or a `Retry-After`.
    ///
    /// # Errors
    ///
    /// [`InsufficientCapacity`] when `n` exceeds the burst and the quota does
    /// not allow debt: no wait would be long enough.
    pub fn earliest(&self, n: u32, now: Timestamp) -> Result<Timestamp, InsufficientCapacity> {
        let g = self.grid_now(now);
        // ordering: Relaxed, as in `peek_n`.
        let booked = self.booked.load(Ordering::Relaxed);
        match gcra::decide(&self.quota, booked, g, u64::MAX, u64::from(n)) {
            Ok(grant) => Ok(self.ready_time(grant.ready, g, now)),
            Err(_) => Err(self.insufficient(n)),
        }
    }

    /// Books `n` tokens that will all have appeared within `max_wait` of
    /// `now`, and returns a [`Reservation`] that says when to act. With a
    /// `max_wait` of zero it grants only tokens available now, like
    /// [`check_n`](Self::check_n), but the booking can still be cancelled.
    ///
    /// # Errors
    ///
    /// As [`check_n`](Self::check_n); a [`RateLimited`] error's time is when
    /// the tokens would be ready, later than `now + max_wait`.
    pub fn reserve_n(
        &self,
        n: u32,
        now: Timestamp,
        max_wait: Duration,
    ) -> Result<Reservation<'_, S>, RateLimitError> {
        let g = self.grid_now(now);
        let horizon = self.grid_now(now.saturating_add(max_wait));
        match gcra::acquire(&self.booked, &self.quota, g, horizon, u64::from(n)) {
            Ok(grant) => Ok(self.reservation(grant, n, g, now)),
            Err(refusal) => Err(self.refused(refusal, n, now)),
        }
    }

    fn reservation(&self, grant: Grant, n: u32, g: u64, now: Timestamp) -> Reservation<'_, S> {
        Reservation {
            limiter: self,
            tokens: u64::from(n),
            ready_at: self.ready_time(grant.ready, g, now),
        }
    }

    #[inline]
    fn ready_time(&self, ready: u64, g: u64, now: Timestamp) -> Timestamp {
        if ready <= g {
            now
        } else {
            Timestamp::from_nanos(self.quota.grid().time_of(ready))
        }
    }

    /// Tokens that could be taken now (at most the burst).
    pub fn available(&self, now: Timestamp) -> u64 {
        let g = self.grid_now(now);
        // ordering: Relaxed, as in `peek_n`.
        let booked = self.booked.load(Ordering::Relaxed);
        (g + self.quota.burst_tokens()).saturating_sub(booked.max(g))
    }

    /// Replaces the quota, carrying the limiter's state over: the time the
    /// tokens already handed out still occupy is kept (so a change never
    /// hands out a free burst), capped at one full new burst (so a smaller
    /// burst or a slower rate never locks callers out for longer than it
    /// takes to refill under the new quota).
    ///
    /// It takes `&mut self`: changing the quota of a limiter in use by other
    /// threads goes through the live-configuration cell.
    pub fn set_quota(&mut self, quota: Quota, now: Timestamp) {
        // ordering: Relaxed; `&mut self` excludes every other access.
        let booked = self.booked.load(Ordering::Relaxed);
        let converted = convert(&self.quota, &quota, booked, now);
        self.booked.store(converted, Ordering::Relaxed);
        self.quota = quota;
    }

    /// Gives back `n` tokens taken earlier by [`check_n`](Self::check_n) (for
    /// example when the work they paid for did not happen). Never makes more
    /// than the burst available.
    pub fn refund(&self, n: u32) {
        gcra::refund(&self.booked, u64::from(n));
    }

    #[cold]
    #[inline(never)]
    fn refused(&self, refusal: Refusal, n: u32, now: Timestamp) -> RateLimitError {
        let err = self.describe(refusal, n, now);
        if self.sink.enabled() {
            let wait = err.retry_after().map_or(u64::MAX, |d| d.as_nanos() as u64);
            self.sink.emit(Event::new(
                EventKind::RATE_LIMITED,
                self.source,
                now,
                [u64::from(n), wait],
            ));
        }
        err
    }

    fn describe(&self, refusal: Refusal, n: u32, now: Timestamp) -> RateLimitError {
        match refusal {
            Refusal::NotYet { ready } => RateLimitError::Limited(RateLimited::new(
                now,
                Timestamp::from_nanos(self.quota.grid().time_of(ready)),
            )),
            Refusal::Insufficient => RateLimitError::Insufficient(self.insufficient(n)),
        }
    }

    fn insufficient(&self, n: u32) -> InsufficientCapacity {
        InsufficientCapacity {
            requested: n,
            burst: self.quota.burst(),
        }
    }
}

/// Carries a booking over from quota `old` to quota `new` at `now`: the
/// outstanding time (how far `booked` runs ahead of the grid) is kept,
/// rounded up to whole new tokens, and capped at the new burst unless the new
/// quota allows debt.
pub(crate) fn convert(old: &Quota, new: &Quota, booked: u64, now: Timestamp) -> u64 {
    let x = now.as_nanos();
    let g_old = old.grid().tokens_at(x);
    let g_new = new.grid().tokens_at(x);
    if booked <= g_old {
        return g_new;
    }
    // The outstanding booking ends at time_of(booked) under the old grid.
    let end = old.grid().time_of(booked);
    let ahead_ns = end.saturating_sub(x);
    // Whole new tokens needed to cover it: ceil(ahead * a / c).
    let grid = new.grid();
    let ahead = (ahead_ns as u128 * grid.a as u128).div_ceil(grid.c as u128);
    let mut ahead = u64::try_from(ahead).unwrap_or(u64::MAX);
    if !new.allows_debt() {
        ahead = ahead.min(new.burst_tokens());
    }
    g_new.saturating_add(ahead)
}

impl RateLimitError {
    #[inline]
    fn expect_limited(self) -> RateLimited {
        match self {
            RateLimitError::Limited(l) => l,
            // One token never exceeds a burst of at least one, and a direct
            // limiter has no table.
            _ => unreachable!("a burst is at least one token"),
        }
    }
}
