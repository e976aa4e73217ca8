//! The direct (single-key) rate limiter, and its quota changes at run time.
//!
//! # Live quota changes
//!
//! The state cell holds `(reset, k)`, a theoretical arrival time counted in
//! tokens of one quota (see [`gcra`](super::gcra)), so a decision must
//! combine the quota with a state made against that same quota. The limiter
//! therefore keeps them together, as *eras*: an era is a quota and the state
//! cell against it. The first era lives inside the
//! limiter; [`RateLimiter::set_quota`] (feature `std`) starts a new one on
//! the heap:
//!
//! | step | atomic action | who |
//! |---|---|---|
//! | link | compare-and-swap the current era's `next` from null to the new era (whose cell is `PENDING`) | the writer; a second writer that finds `next` taken helps finish that change and retries on the newer era |
//! | seal | `fetch_or(SEALED)` on the current era's cell: it never changes again, and its state (the other bits) is final | anyone who meets the link or the seal: the writer, other writers, checks |
//! | convert | compare-and-swap the new era's cell from `PENDING` to `convert(old quota, new quota, state, now of the change)` | the same; every helper computes the same value, the first one stores it |
//! | publish | compare-and-swap the limiter's `current` pointer from the old era to the new one | the same; the winner retires the old era (if on the heap) to the epoch collector |
//!
//! A check loads `current` (null: the first era) and decides with that
//! era's quota on that era's cell. A compare-and-swap on a sealed cell fails,
//! so every grant against the old quota is ordered before the seal and is
//! part of the state the new era converts; a check that meets `SEALED`
//! helps the change to its end and decides again on the new era. Nobody ever
//! waits for another thread: a change half done by a preempted writer is
//! finished by whoever needs it.
//!
//! Cost: while the first era is in force, a check decides on the first
//! era's cell without reading `current`: its `SEALED` bit says whether a
//! change replaced it (on the 64-bit cell the bit costs no test of its own:
//! a sealed `TAT` fails the end-of-time comparison). Once a change has
//! happened, each call finds the first cell sealed, then pins the epoch (crossbeam-epoch; see
//! [`config_cell`](crate::config_cell) for what a pin costs) to read the era
//! safely.
//!
//! The tokens booked since the last full bucket are kept below `2^63` (bit
//! 63 is `SEALED`): a grant that would book more is refused. It binds only
//! after 292 years of saturation at 10^9 tokens a second without a single
//! moment of full bucket.

use core::fmt;
use core::time::Duration;

use crossbeam_utils::CachePadded;

#[cfg(feature = "std")]
use alloc::boxed::Box;

use crate::events::{Event, EventKind, EventSink, NoSink};
#[cfg(feature = "std")]
use crate::sync::Ordering;
#[cfg(feature = "std")]
use crate::sync::{AtomicPtr, epoch, fence};
use crate::time::Timestamp;

use super::cell::Cell;
use super::error::{InsufficientCapacity, RateLimitError, RateLimited};
use super::gcra::{self, Refusal};
use super::quota::Quota;

mod snapshot;
pub use snapshot::RATE_SNAPSHOT_MAX;
#[cfg(feature = "std")]
pub(in crate::rate) use snapshot::{BOOKING_LEN, Booking, fingerprint as quota_fingerprint};

/// A GCRA rate limiter over one atomic cell (64 bits when the quota's
/// emission interval is a whole number of nanoseconds or a fraction `c / a`
/// ns with `a <= 16`, else 128). See the
/// [module documentation](super).
///
/// All methods take `&self`; share it by reference, in an `Arc` or in a
/// `static`. It never allocates (except one era per quota change), never
/// blocks, never reads a clock.
pub struct RateLimiter<S: EventSink = NoSink> {
    head: CachePadded<Head>,
    /// The quota of the first era (the one the limiter was built with).
    quota: Quota,
    sink: S,
    source: u32,
}

/// What every call reads first, on one cache line.
struct Head {
    /// The first era's state (see [`cell`](super::cell)), `SEALED` with the
    /// final state once a change replaced it.
    state: Cell,
    /// The era in force; null while it is the first one.
    #[cfg(feature = "std")]
    current: AtomicPtr<Era>,
    /// The era replacing the first one, once a change linked it.
    #[cfg(feature = "std")]
    first_next: AtomicPtr<Era>,
}

/// A quota and the state cell against it (see the module documentation).
#[cfg(feature = "std")]
struct Era {
    quota: Quota,
    /// Pending, then a state against `quota`, then `SEALED` with the final
    /// state (see [`cell`](super::cell)).
    state: Cell,
    /// The era replacing this one, once a change linked it.
    next: AtomicPtr<Era>,
    /// The `now` of the change that made this era: the instant the state
    /// carried over is converted at.
    since: Timestamp,
}

/// One era, borrowed: the first (inline) or one on the heap.
#[derive(Clone, Copy)]
struct View<'a> {
    quota: &'a Quota,
    cell: &'a Cell,
    #[cfg(feature = "std")]
    next: &'a AtomicPtr<Era>,
    /// Null for the first era.
    #[cfg(feature = "std")]
    ptr: *mut Era,
}

impl RateLimiter {
    /// A limiter enforcing `quota`, emitting no events.
    pub fn new(quota: Quota) -> Self {
        RateLimiter::with_sink(quota, NoSink, 0)
    }
}

impl<S: EventSink> fmt::Debug for RateLimiter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (quota, (reset, booked_since)) =
            self.with_era(|era| Some((*era.quota, era.cell.describe(era.quota)?)));
        f.debug_struct("RateLimiter")
            .field("quota", &quota)
            .field("reset", &reset)
            .field("booked_since", &booked_since)
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
    /// however long ago the reservation was made. After a quota change the
    /// tokens given back are tokens of the quota in force.
    pub fn cancel(self) {
        self.limiter.give_back(self.tokens);
    }
}

impl<S: EventSink> RateLimiter<S> {
    /// A limiter enforcing `quota` that reports refusals and quota changes
    /// to `sink`, tagged with `source` (see `docs/events.md`).
    pub fn with_sink(quota: Quota, sink: S, source: u32) -> Self {
        RateLimiter {
            head: CachePadded::new(Head {
                state: Cell::fresh(&quota),
                #[cfg(feature = "std")]
                current: AtomicPtr::new(core::ptr::null_mut()),
                #[cfg(feature = "std")]
                first_next: AtomicPtr::new(core::ptr::null_mut()),
            }),
            quota,
            sink,
            source,
        }
    }

    /// The quota in force.
    pub fn quota(&self) -> Quota {
        self.with_era(|era| era.cell.describe(era.quota).map(|_| *era.quota))
    }

    /// The sink events go to.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// The first era.
    #[inline(always)]
    fn first(&self) -> View<'_> {
        View {
            quota: &self.quota,
            cell: &self.head.state,
            #[cfg(feature = "std")]
            next: &self.head.first_next,
            #[cfg(feature = "std")]
            ptr: core::ptr::null_mut(),
        }
    }

    /// Runs `f` on the era in force until it returns `Some` (it returns
    /// `None` when it met a sealed cell: the era was replaced under it).
    ///
    /// The first era is tried first, without reading `current`: once a
    /// change has replaced it, its cell is sealed for good (the seal comes
    /// before the publication), so `f` finds it sealed and the call goes on
    /// to the era in force; before that, deciding on it is deciding on the
    /// era in force.
    #[inline(always)]
    fn with_era<R>(&self, mut f: impl FnMut(View<'_>) -> Option<R>) -> R {
        if let Some(r) = f(self.first()) {
            return r;
        }
        #[cfg(feature = "std")]
        {
            self.with_live_era(f)
        }
        #[cfg(not(feature = "std"))]
        {
            unreachable!("only a live quota change (feature std) seals a cell")
        }
    }

    /// [`with_era`](Self::with_era) once a quota change has happened: pins
    /// the epoch so that the era read cannot be freed under us.
    #[cfg(feature = "std")]
    #[inline(never)]
    fn with_live_era<R>(&self, mut f: impl FnMut(View<'_>) -> Option<R>) -> R {
        let guard = epoch::pin();
        loop {
            let era = self.current(&guard);
            if let Some(r) = f(era) {
                return r;
            }
            self.advance(era, &guard);
        }
    }

    /// The era in force, valid while `_guard` pins this thread.
    #[cfg(feature = "std")]
    fn current<'g>(&'g self, _guard: &'g epoch::Guard) -> View<'g> {
        // ordering: Acquire, as in `with_era`.
        let ptr = self.head.current.load(Ordering::Acquire);
        if ptr.is_null() {
            return self.first();
        }
        // SAFETY: a heap era is freed only through the epoch collector,
        // after `advance` unlinked it from `current`; we loaded it from
        // `current` while pinned, so it outlives `_guard`. Its fields other
        // than the atomics are written before it is linked (Release) and
        // never after.
        let era = unsafe { &*ptr };
        View {
            quota: &era.quota,
            cell: &era.state,
            next: &era.next,
            ptr,
        }
    }

    /// Finishes the change that replaces `era` (linked in `era.next`):
    /// seal, convert, publish. Any thread may run it, any number of times;
    /// the first to do each step does it, the others find it done.
    #[cfg(feature = "std")]
    fn advance(&self, era: View<'_>, guard: &epoch::Guard) {
        // ordering: our caller saw `era`'s cell sealed with a Relaxed load
        // or compare-and-swap (or linked the next era itself); this fence
        // makes that read synchronise with the Release seal, so that the
        // link made before the seal is visible below.
        fence(Ordering::Acquire);
        // ordering: Acquire, pairs with the AcqRel link in `set_quota`, so
        // that the next era's quota and `since` are visible.
        let next_ptr = era.next.load(Ordering::Acquire);
        debug_assert!(!next_ptr.is_null(), "a sealed era has a successor");
        // SAFETY: the next era is linked before the old one is sealed and
        // is freed only after it has been current and then unlinked, which
        // happens after this thread pinned `guard` (it has not been current
        // yet, or is current now).
        let next = unsafe { &*next_ptr };
        // ordering: Release, pairs with the Acquire fence above in a thread
        // that finds the cell sealed: it must find the link too. Against
        // grants the seal needs nothing more than the cell's modification
        // order: a compare-and-swap from an unsealed value fails after it.
        let since = next.since.as_nanos();
        let state = era.cell.seal(era.quota, since);
        let converted = gcra::convert(era.quota, &next.quota, state, since);
        // The publication below orders it for readers.
        next.state.settle(&next.quota, converted, since);
        // ordering: AcqRel on success: Release publishes the converted cell
        // (and the era) to readers that Acquire `current`; Acquire on
        // failure is not needed, we read nothing from it.
        if self
            .head
            .current
            .compare_exchange(era.ptr, next_ptr, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
            && !era.ptr.is_null()
        {
            retire(era.ptr, guard);
        }
    }

    /// Takes `n` tokens at `t` that conform by `horizon`, from the era in
    /// force: the grant's ready time, or the refusal and the quota that
    /// refused. The first era's cell inline (the hot path: no closure, no
    /// pointer read), the others out of line (see [`with_era`](Self::with_era)).
    #[inline(always)]
    fn take(&self, t: u64, horizon: u64, n: u64) -> Result<u64, (Refusal, Quota)> {
        match self.head.state.acquire(&self.quota, t, horizon, n) {
            Some(Ok(ready)) => Ok(ready),
            Some(Err(refusal)) => Err((refusal, self.quota)),
            None => self.take_live(t, horizon, n),
        }
    }

    /// [`take`](Self::take) once the first era is sealed.
    #[inline(never)]
    fn take_live(&self, t: u64, horizon: u64, n: u64) -> Result<u64, (Refusal, Quota)> {
        #[cfg(feature = "std")]
        {
            self.with_live_era(|era| {
                Some(
                    era.cell
                        .acquire(era.quota, t, horizon, n)?
                        .map_err(|refusal| (refusal, *era.quota)),
                )
            })
        }
        #[cfg(not(feature = "std"))]
        {
            let _ = (t, horizon, n);
            unreachable!("only a live quota change (feature std) seals a cell")
        }
    }

    /// Takes one token, or says when one will be available.
    #[inline(always)]
    pub fn check(&self, now: Timestamp) -> Result<(), RateLimited> {
        // The narrow cell's path alone is inlined: with the wide path
        // beside it, the caller saved and restored six registers for the
        // wide decision's sake, a sixth of a narrow check's instructions.
        // The rest (a wide cell, a sealed one) is one call away, the code
        // it always was. Where 64-bit atomics are emulated (32-bit
        // microcontrollers) a narrow cell saves no instructions worth the
        // code its second copy takes, and the check stays one piece.
        #[cfg(target_has_atomic = "64")]
        if let Some(cell) = self.head.state.narrow() {
            let t = now.as_nanos();
            match super::cell::acquire_narrow(cell, &self.quota, t, t, 1) {
                Some(Ok(_)) => return Ok(()),
                Some(Err(refusal)) => return Err(self.refused_one(&self.quota, refusal, now)),
                None => {}
            }
        }
        self.check_out_of_line(now)
    }

    /// [`check`](Self::check) on a scaled cell; the wide or sealed one a
    /// call further (where 64-bit atomics are emulated, every cell, all
    /// inlined).
    #[cfg_attr(target_has_atomic = "64", inline(never))]
    #[cfg_attr(not(target_has_atomic = "64"), inline(always))]
    fn check_out_of_line(&self, now: Timestamp) -> Result<(), RateLimited> {
        // The scaled cell in a function of its own, away from the 128-bit
        // decision's registers (as the narrow one in `check`).
        #[cfg(target_has_atomic = "64")]
        if let Some(cell) = self.head.state.scaled() {
            let t = now.as_nanos();
            match super::cell::acquire_scaled(cell, &self.quota, t, t, 1) {
                Some(Ok(_)) => return Ok(()),
                Some(Err(refusal)) => return Err(self.refused_one(&self.quota, refusal, now)),
                None => {}
            }
        }
        self.check_wide(now)
    }

    /// [`check`](Self::check) on a wide cell, or on a sealed one.
    #[cfg_attr(target_has_atomic = "64", inline(never))]
    #[cfg_attr(not(target_has_atomic = "64"), inline(always))]
    fn check_wide(&self, now: Timestamp) -> Result<(), RateLimited> {
        let t = now.as_nanos();
        match self.take(t, t, 1) {
            Ok(_) => Ok(()),
            Err((refusal, quota)) => Err(self.refused_one(&quota, refusal, now)),
        }
    }

    /// A refusal of one token, out of line so that [`check`](Self::check)
    /// inlines as a few instructions around one compare-and-swap.
    #[inline(never)]
    fn refused_one(&self, quota: &Quota, refusal: Refusal, now: Timestamp) -> RateLimited {
        self.refused(quota, refusal, 1, now).expect_limited()
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
        // As in `check`: the narrow path inline, the rest a call away.
        #[cfg(target_has_atomic = "64")]
        if let Some(cell) = self.head.state.narrow() {
            let t = now.as_nanos();
            match super::cell::acquire_narrow(cell, &self.quota, t, t, u64::from(n)) {
                Some(Ok(_)) => return Ok(()),
                Some(Err(refusal)) => return Err(self.refused(&self.quota, refusal, n, now)),
                None => {}
            }
        }
        self.check_n_out_of_line(n, now)
    }

    /// [`check_n`](Self::check_n) on a wide cell, or on a sealed one (as
    /// `check_out_of_line`).
    #[cfg_attr(target_has_atomic = "64", inline(never))]
    #[cfg_attr(not(target_has_atomic = "64"), inline(always))]
    fn check_n_out_of_line(&self, n: u32, now: Timestamp) -> Result<(), RateLimitError> {
        #[cfg(target_has_atomic = "64")]
        if let Some(cell) = self.head.state.scaled() {
            let t = now.as_nanos();
            match super::cell::acquire_scaled(cell, &self.quota, t, t, u64::from(n)) {
                Some(Ok(_)) => return Ok(()),
                Some(Err(refusal)) => return Err(self.refused(&self.quota, refusal, n, now)),
                None => {}
            }
        }
        self.check_n_wide(n, now)
    }

    /// [`check_n`](Self::check_n) on a wide cell, or on a sealed one.
    #[cfg_attr(target_has_atomic = "64", inline(never))]
    #[cfg_attr(not(target_has_atomic = "64"), inline(always))]
    fn check_n_wide(&self, n: u32, now: Timestamp) -> Result<(), RateLimitError> {
        let t = now.as_nanos();
        match self.take(t, t, u64::from(n)) {
            Ok(_) => Ok(()),
            Err((refusal, quota)) => Err(self.refused(&quota, refusal, n, now)),
        }
    }

    /// Whether `n` tokens are available now, without taking them.
    ///
    /// # Errors
    ///
    /// As [`check_n`](Self::check_n).
    pub fn peek_n(&self, n: u32, now: Timestamp) -> Result<(), RateLimitError> {
        let t = now.as_nanos();
        self.with_era(|era| {
            Some(match era.cell.decide(era.quota, t, t, u64::from(n))? {
                Ok(_) => Ok(()),
                Err(refusal) => Err(refusal.into_error(era.quota, n, now)),
            })
        })
    }

    /// The earliest instant at which `n` tokens will be available if nobody
    /// else takes any: `now` when they are available now (saturating at
    /// [`Timestamp::MAX`]). For an async wait, or a `Retry-After`.
    ///
    /// # Errors
    ///
    /// [`InsufficientCapacity`] when `n` exceeds the burst and the quota does
    /// not allow debt: no wait would be long enough.
    pub fn earliest(&self, n: u32, now: Timestamp) -> Result<Timestamp, InsufficientCapacity> {
        let t = now.as_nanos();
        self.with_era(|era| {
            Some(
                match era.cell.decide(era.quota, t, u64::MAX, u64::from(n))? {
                    Ok(ready) => Ok(Timestamp::from_nanos(ready)),
                    Err(Refusal::NotYet { ready }) => Ok(Timestamp::from_nanos(ready)),
                    Err(Refusal::Insufficient) => Err(gcra::insufficient(era.quota, n)),
                },
            )
        })
    }

    /// Books `n` tokens for a request that conforms within `max_wait` of
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
        let t = now.as_nanos();
        let horizon = now.saturating_add(max_wait).as_nanos();
        let ready_at = match self.take(t, horizon, u64::from(n)) {
            Ok(ready) => Timestamp::from_nanos(ready),
            Err((refusal, quota)) => return Err(self.refused(&quota, refusal, n, now)),
        };
        Ok(Reservation {
            limiter: self,
            tokens: u64::from(n),
            ready_at,
        })
    }

    /// Tokens that could be taken now (at most the burst).
    pub fn available(&self, now: Timestamp) -> u64 {
        let t = now.as_nanos();
        self.with_era(|era| era.cell.available(era.quota, t))
    }

    /// Replaces the quota while other threads use the limiter, carrying its
    /// state over. A quota with the same rate and period (only the burst or
    /// debt mode change) keeps the theoretical arrival time exactly. Another
    /// keeps the time the tokens already handed out still occupy (`TAT -
    /// now`, rounded up to a nanosecond), re-expressed in whole tokens of the
    /// new quota (rounded up, so a change never hands out a free burst). Both
    /// are capped at one full new burst
    /// unless the new quota allows debt (so a smaller burst or a slower rate
    /// never locks callers out for longer than it takes to refill under the
    /// new quota).
    ///
    /// Every decision is taken whole under one quota: a grant against the
    /// old quota that lands before the change is part of the state carried
    /// over, one that comes after is decided again under the new quota. A
    /// quota is validated when it is built ([`Quota::new`],
    /// [`Quota::with_burst`] return a [`ConfigError`](crate::ConfigError)),
    /// so there is nothing left to refuse here.
    ///
    /// It allocates the new era (one `Box`, about 100 bytes); the old one is
    /// freed through the epoch collector once no call can still read it.
    /// Concurrent changes are applied one after the other, each finishing
    /// (or helping to finish) the one before. Emits
    /// [`EventKind::CONFIG_CHANGED`] (payload `[56, tokens still booked ahead
    /// under the new quota]`). Feature `std`; without it, changing the quota
    /// needs `&mut self`.
    #[cfg(feature = "std")]
    pub fn set_quota(&self, quota: Quota, now: Timestamp) {
        let new = Box::into_raw(Box::new(Era {
            quota,
            state: Cell::pending(&quota, now.as_nanos()),
            next: AtomicPtr::new(core::ptr::null_mut()),
            since: now,
        }));
        let guard = epoch::pin();
        loop {
            let era = self.current(&guard);
            // ordering: AcqRel on success: Release publishes the new era's
            // fields to helpers that Acquire `next`. Relaxed on failure: we
            // only go and help the change that came first.
            let linked = era
                .next
                .compare_exchange(
                    core::ptr::null_mut(),
                    new,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok();
            self.advance(era, &guard);
            if linked {
                break;
            }
        }
        if self.sink.enabled() {
            // SAFETY: `new` was linked and published above; it can only be
            // retired after a later change unlinks it, after we pinned.
            let era = unsafe { &*new };
            let t = now.as_nanos();
            let ahead = era
                .state
                .peek(&era.quota, t)
                .map_or(0, |state| gcra::ahead(&era.quota, state, t));
            self.sink.emit(Event::new(
                EventKind::CONFIG_CHANGED,
                self.source,
                now,
                [u64::from(EventKind::RATE_LIMITED.0), ahead],
            ));
        }
    }

    /// Replaces the quota, carrying the state over as described under
    /// `set_quota` with feature `std`. Without `std` there is no epoch
    /// collector to free replaced quotas, so a change needs exclusive access.
    #[cfg(not(feature = "std"))]
    pub fn set_quota(&mut self, quota: Quota, now: Timestamp) {
        let t = now.as_nanos();
        let state = self
            .head
            .state
            .peek(&self.quota, t)
            .expect("only a live quota change (feature std) seals a cell");
        let converted = gcra::convert(&self.quota, &quota, state, t);
        self.head.state = Cell::new(&quota, converted, t);
        self.quota = quota;
        if self.sink.enabled() {
            let ahead = gcra::ahead(&quota, converted, now.as_nanos());
            self.sink.emit(Event::new(
                EventKind::CONFIG_CHANGED,
                self.source,
                now,
                [u64::from(EventKind::RATE_LIMITED.0), ahead],
            ));
        }
    }

    /// Gives back `n` tokens taken earlier by [`check_n`](Self::check_n) (for
    /// example when the work they paid for did not happen). Never makes more
    /// than the burst available.
    pub fn refund(&self, n: u32) {
        self.give_back(u64::from(n));
    }

    fn give_back(&self, n: u64) {
        self.with_era(|era| era.cell.refund(era.quota, n));
    }

    /// A refusal, described (inline: refusals are the common case of a
    /// limiter that sheds load) and reported to the sink (out of line).
    #[inline]
    fn refused(&self, quota: &Quota, refusal: Refusal, n: u32, now: Timestamp) -> RateLimitError {
        let err = refusal.into_error(quota, n, now);
        if self.sink.enabled() {
            self.report_refusal(err, n, now);
        }
        err
    }

    #[cold]
    #[inline(never)]
    fn report_refusal(&self, err: RateLimitError, n: u32, now: Timestamp) {
        let wait = err.retry_after().map_or(u64::MAX, |d| d.as_nanos() as u64);
        self.sink.emit(Event::new(
            EventKind::RATE_LIMITED,
            self.source,
            now,
            [u64::from(n), wait],
        ));
    }
}

/// Hands a replaced era to the epoch collector.
#[cfg(feature = "std")]
fn retire(ptr: *mut Era, guard: &epoch::Guard) {
    /// The era's address, sent to the thread that frees it.
    struct Retired(*mut Era);
    // SAFETY: an `Era` is a `Quota` (plain data) and atomics: it may be
    // dropped on any thread.
    unsafe impl Send for Retired {}
    let retired = Retired(ptr);
    guard.defer(move || {
        let retired = retired;
        // SAFETY: the era was unlinked from `current` before this was
        // deferred, so nobody pinned after that can reach it; the collector
        // runs this only after every thread pinned before has unpinned. It
        // came from `Box::into_raw` and is freed once (only the thread whose
        // publication unlinked it retires it).
        drop(unsafe { Box::from_raw(retired.0) });
    });
}

#[cfg(feature = "std")]
impl<S: EventSink> Drop for RateLimiter<S> {
    fn drop(&mut self) {
        // `&mut self`: nobody reads the limiter; retired eras are with the
        // collector already. Free the era in force and any linked after it
        // (a change always finishes before `set_quota` returns, so there is
        // none, unless a writer panicked half-way).
        // ordering: Relaxed; `&mut self` excludes every other access.
        let mut ptr = self.head.current.load(Ordering::Relaxed);
        if ptr.is_null() {
            ptr = self.head.first_next.load(Ordering::Relaxed);
        }
        while !ptr.is_null() {
            // SAFETY: `ptr` came from `Box::into_raw`, is reachable from the
            // limiter only, and is not retired (only unlinked eras are).
            let era = unsafe { Box::from_raw(ptr) };
            ptr = era.next.load(Ordering::Relaxed);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ns: u64) -> Timestamp {
        Timestamp::from_nanos(ns)
    }

    /// GCRA spaces admissions by the emission interval from the previous
    /// admission, not from a grid anchored at the clock's origin.
    #[test]
    fn one_per_second_does_not_admit_at_0_999_and_1_000() {
        let l = RateLimiter::new(Quota::per_second(1).unwrap().with_burst(1).unwrap());
        assert!(l.check(at(999_000_000)).is_ok());
        let refused = l.check(at(1_000_000_000)).unwrap_err();
        assert_eq!(refused.earliest(), at(1_999_000_000));
        assert_eq!(refused.retry_after(), Some(Duration::from_millis(999)));
        assert!(l.check(at(1_998_999_999)).is_err());
        assert!(l.check(at(1_999_000_000)).is_ok());
    }

    #[test]
    fn a_request_half_an_interval_after_an_admission_is_refused() {
        let q = Quota::new(1, Duration::from_nanos(1_000))
            .unwrap()
            .with_burst(1)
            .unwrap();
        let l = RateLimiter::new(q);
        assert!(l.check(at(1_500)).is_ok());
        let refused = l.check(at(2_000)).unwrap_err();
        assert_eq!(refused.retry_after(), Some(Duration::from_nanos(500)));
        assert!(l.check(at(2_500)).is_ok());
    }

    /// A limiter on the 128-bit state at the end of time: no overflow, and
    /// a fresh limiter hands out its whole burst.
    #[test]
    fn the_end_of_time_is_handled() {
        for quota in [
            Quota::new(17, Duration::from_nanos(19)).unwrap(),
            Quota::per_second(17).unwrap(),
            Quota::new(u32::MAX, Duration::from_nanos(u64::from(u32::MAX) + 1)).unwrap(),
        ] {
            assert!(RateLimiter::new(quota).head.state.is_wide(), "{quota:?}");
            let q = quota.with_burst(5).unwrap();
            let l = RateLimiter::new(q);
            assert_eq!(l.available(Timestamp::MAX), 5, "{q:?}");
            for _ in 0..5 {
                l.check(Timestamp::MAX).unwrap();
            }
            assert!(l.check(Timestamp::MAX).is_err());
            assert_eq!(l.available(Timestamp::MAX), 0);
            let l = RateLimiter::new(q);
            l.check_n(5, Timestamp::MAX).unwrap();
            let l = RateLimiter::new(q);
            let r = l.reserve_n(5, Timestamp::MAX, Duration::MAX).unwrap();
            assert_eq!(r.ready_at(), Timestamp::MAX);
            assert_eq!(l.earliest(1, Timestamp::MAX).unwrap(), Timestamp::MAX);
            r.cancel();
            assert_eq!(l.available(Timestamp::MAX), 5);
        }
    }

    /// A limiter on a 64-bit state (an interval of whole or sixteenths of
    /// nanoseconds at the finest) is exact until `(TAT - origin)·a` would
    /// pass 2^63 (the origin zero here: first used at zero), then refuses
    /// everything as "never" and says nothing is available (the documented
    /// departure).
    #[test]
    fn a_narrow_limiter_fails_closed_at_the_end_of_time() {
        for quota in [
            Quota::new(1, Duration::from_nanos(1)).unwrap(),
            Quota::per_second(1).unwrap(),
            Quota::new(u32::MAX, Duration::from_nanos(u64::from(u32::MAX))).unwrap(),
            // Scaled: a = 2, 3 and 16.
            Quota::new(2, Duration::from_nanos(3)).unwrap(),
            Quota::per_second(30).unwrap(),
            Quota::new(16, Duration::from_nanos(999_999_999)).unwrap(),
        ] {
            let q = quota.with_burst(5).unwrap();
            let l = RateLimiter::new(q);
            assert!(!l.head.state.is_wide(), "{q:?}");
            assert_eq!(l.head.state.is_narrow(), q.a() == 1, "{q:?}");
            l.check(Timestamp::ZERO).unwrap();
            let t = q.c().div_ceil(q.a());
            let last = at(((1 << 63) - 1 - 5 * q.c()) / q.a());
            assert_eq!(l.available(last), 5, "{q:?}");
            l.check_n(5, last).unwrap();
            // `TAT` is at the end: another token would pass it, "never".
            for now in [last, at(last.as_nanos() + t), at(1 << 63), Timestamp::MAX] {
                assert_eq!(l.available(now), 0, "{q:?}");
                assert_eq!(l.check(now).unwrap_err().earliest(), Timestamp::MAX);
                assert_eq!(l.earliest(1, now).unwrap(), Timestamp::MAX);
                assert!(l.reserve_n(1, now, Duration::MAX).is_err());
                assert!(l.peek_n(1, now).is_err());
            }
            let fresh = RateLimiter::new(q);
            if q.a() == 1 {
                assert_eq!(fresh.available(Timestamp::MAX), 0);
                assert!(fresh.check(Timestamp::MAX).is_err());
            } else {
                // A scaled cell counts from its first use, wherever that is.
                assert_eq!(fresh.available(Timestamp::MAX), 5);
                fresh.check_n(5, Timestamp::MAX).unwrap();
                assert!(fresh.check(Timestamp::MAX).is_err());
            }
        }
    }

    /// Asking a fresh scaled limiter about a far time (taking nothing) does
    /// not set its origin there: decisions at ordinary times after it are
    /// exact (had the origin been set at `Timestamp::MAX`, every time
    /// before it would be decided as at the origin, and the limiter would
    /// refuse forever once its burst was spent).
    #[test]
    fn a_look_that_takes_nothing_leaves_the_origin_to_the_first_decision() {
        const UNIX: u64 = 1_765_000_000_000_000_000;
        let q = Quota::per_second(7).unwrap().with_burst(3).unwrap();
        let l = RateLimiter::new(q);
        assert_eq!(l.available(Timestamp::MAX), 3);
        l.peek_n(3, Timestamp::MAX).unwrap();
        assert_eq!(l.earliest(3, Timestamp::MAX).unwrap(), Timestamp::MAX);
        assert_eq!(l.quota(), q);
        let now = at(UNIX);
        l.check_n(3, now).unwrap();
        let next = at(UNIX + 142_857_143);
        assert_eq!(l.check(now).unwrap_err().earliest(), next);
        l.check(next).unwrap();
    }

    /// Timestamps in nanoseconds since the Unix epoch (2025-12-06, past
    /// `2^63 / a` for every `a >= 6`): every cell decides as the 128-bit
    /// one would, a scaled one counting from its first use.
    #[test]
    fn timestamps_from_the_unix_epoch_are_decided_exactly() {
        const UNIX: u64 = 1_765_000_000_000_000_000;
        for quota in [
            Quota::per_second(10).unwrap(),
            Quota::per_second(7).unwrap(),
            Quota::per_second(30).unwrap(),
            Quota::per_minute(7).unwrap(),
            Quota::new(16, Duration::from_nanos(999_999_999)).unwrap(),
            Quota::per_second(17).unwrap(),
        ] {
            let q = quota.with_burst(3).unwrap();
            let l = RateLimiter::new(q);
            let now = at(UNIX);
            l.check_n(3, now).unwrap();
            let refused = l.check(now).unwrap_err();
            // The next token comes one interval after the burst's first,
            // rounded up to the nanosecond.
            let next = at(UNIX + q.c().div_ceil(q.a()));
            assert_eq!(refused.earliest(), next, "{q:?}");
            assert_eq!(l.earliest(1, now).unwrap(), next, "{q:?}");
            assert!(l.check(at(next.as_nanos() - 1)).is_err(), "{q:?}");
            l.check(next).unwrap();
            assert_eq!(l.available(at(UNIX + 10 * q.c())), 3, "{q:?}");
        }
    }

    /// Every time-taking method at the ends of time and with time going
    /// backwards: no panic, never more than the burst.
    #[test]
    fn time_going_backwards_grants_no_more_than_the_burst() {
        for quota in [
            Quota::new(1, Duration::from_nanos(1)).unwrap(),
            Quota::per_second(3).unwrap(),
            Quota::per_second(17).unwrap(),
            Quota::per_hour(7).unwrap().with_debt(),
        ] {
            let q = quota.with_burst(4).unwrap();
            let l = RateLimiter::new(q);
            let times = [
                Timestamp::MAX,
                Timestamp::ZERO,
                at(u64::MAX / 2),
                at(5),
                Timestamp::MAX,
                at(u64::MAX - 1),
            ];
            for (i, &t) in times.iter().enumerate() {
                let _ = l.check(t);
                let _ = l.check_n(2, t);
                let _ = l.peek_n(1, t);
                let _ = l.earliest(9, t);
                assert!(l.available(t) <= 4);
                if let Ok(r) = l.reserve_n(1, t, Duration::MAX) {
                    assert!(r.ready_at() >= t);
                    r.cancel();
                }
                l.refund(1);
                #[cfg(feature = "std")]
                l.set_quota(
                    if i % 2 == 0 {
                        q
                    } else {
                        q.with_burst(2).unwrap()
                    },
                    t,
                );
                #[cfg(not(feature = "std"))]
                let _ = i;
                assert!(l.available(t) <= 4);
            }
            // A burst drained at the end of time: a request stamped any
            // earlier finds the arrival time ahead of it, and is refused.
            // (A 64-bit cell's end is the last instant its burst fits.)
            let l = RateLimiter::new(q);
            let end = if l.head.state.is_wide() {
                Timestamp::MAX
            } else {
                at(((1 << 63) - 1 - 4 * q.c()) / q.a())
            };
            l.check_n(4, end).unwrap();
            for t in [Timestamp::ZERO, at(u64::MAX / 2), at(u64::MAX - 1)] {
                assert!(l.check(t).is_err(), "{q:?} at {t:?}");
                assert_eq!(l.available(t), 0);
            }
            // Time going back by less than the burst's worth: the tokens
            // left are the burst minus what is still ahead, never more.
            let l = RateLimiter::new(q);
            l.check_n(2, at(1_000_000_000_000)).unwrap();
            assert!(l.available(at(1_000_000_000_000 - 1)) <= 2);
        }
    }
}
