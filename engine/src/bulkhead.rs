//! A bulkhead: a fixed (but adjustable) limit on concurrent calls.
//!
//! A [`Bulkhead`] hands out up to `limit` permits at once. A call takes one
//! permit (or several) before it starts and gives it back when it ends; when
//! the permits are gone, new calls are refused at once, with no waiting. The
//! limit can be raised or lowered while calls are in flight: lowering it never
//! revokes a permit already held, it only stops new grants until enough of the
//! calls in flight have finished.
//!
//! ```
//! use tenlives_engine::bulkhead::Bulkhead;
//!
//! let bulkhead = Bulkhead::new(2)?;
//! let a = bulkhead.try_acquire().expect("a permit is free");
//! let b = bulkhead.try_acquire().expect("a permit is free");
//! assert!(bulkhead.try_acquire().is_err(), "two calls in flight: full");
//!
//! drop(a); // the call ended (or was cancelled, or panicked)
//! let c = bulkhead.try_acquire().expect("a permit was given back");
//!
//! // Lowering the limit revokes nothing; it only stops new grants.
//! bulkhead.set_limit(1)?;
//! assert_eq!(bulkhead.in_flight(), 2);
//! drop(b);
//! assert!(bulkhead.try_acquire().is_err(), "still 1 in flight, limit 1");
//! drop(c);
//! assert!(bulkhead.try_acquire().is_ok());
//! # Ok::<(), tenlives_engine::ConfigError>(())
//! ```
//!
//! # The state word
//!
//! The whole bulkhead is one `AtomicU64` on its own cache line:
//!
//! ```text
//!  63                          32 31                           0
//! +------------------------------+------------------------------+
//! |          in_flight           |            limit             |
//! +------------------------------+------------------------------+
//! ```
//!
//! | field     | bits   | meaning                                              |
//! |-----------|--------|------------------------------------------------------|
//! | limit     | 0..32  | the limit in force, at least 1                       |
//! | in_flight | 32..64 | permits granted and not yet released                 |
//!
//! | operation         | atomic step                                               |
//! |-------------------|-----------------------------------------------------------|
//! | grant `n`         | one successful compare-and-swap `(f, L) -> (f + n, L)`, only if `f + n <= L` |
//! | refusal           | none: the load (or the failed compare-and-swap) that saw `f + n > L` |
//! | release `n`       | one `fetch_sub(n << 32)`                                  |
//! | `set_limit(L')`   | one successful compare-and-swap `(f, L) -> (f, L')`        |
//!
//! So an uncontended acquire + release is one load and two read-modify-writes.
//! Because `in_flight` and `limit` live in one word, every grant is decided
//! against the limit in force at the instant of the grant (guarantee K2 in
//! `docs/guarantees.md`), and `set_limit` never races with a half-finished
//! acquisition.
//!
//! `in_flight` sits in the high half so that no carry or borrow of it can
//! ever reach the limit: a release handed to the wrong bulkhead (a bug in the
//! caller, caught by a debug assertion) wraps `in_flight` to a huge value,
//! which refuses everything, instead of corrupting the limit.
//!
//! ## Why a compare-and-swap and not `fetch_add` then undo
//!
//! The alternative acquire is wait-free: `fetch_add(1 << 32)`, and if the
//! value before shows the bulkhead full, `fetch_sub` it back. It was measured
//! beside this one (the `design_fetch_add_undo` rows of
//! `benches/benches/bulkhead.rs`, numbers in `docs/limits.md`): no cheaper
//! on one thread, about a third cheaper per operation on two threads
//! hammering one bulkhead, because it never loses a race and never loads the
//! line before writing it. It was not taken, because:
//!
//! - it refuses calls that should pass: while a refused caller has not yet
//!   undone its increment, `in_flight` counts a permit nobody holds, and
//!   another caller can be refused although a permit was free during its
//!   whole call. Under a storm of refused callers (the overload a bulkhead
//!   exists for), their pending increments can keep the word at the limit
//!   while no permit is held, refusing everyone: throughput collapses. With
//!   the compare-and-swap a refusal always means the bulkhead was full at the
//!   instant of the refusal, and a release is always usable by the next caller;
//! - [`in_flight`](Bulkhead::in_flight) would read above the permits held
//!   (and above the limit) while undos are pending; here it is exact;
//! - a refusal would write the shared line twice, exactly when refusals are
//!   most of the traffic; here a refusal is one load and writes nothing.

use core::fmt;

use crossbeam_utils::CachePadded;

use crate::error::ConfigError;
use crate::events::{Event, EventKind, EventSink, NoSink};
use crate::sync::{AtomicU64, Ordering};
use crate::time::Timestamp;

const LIMIT_MASK: u64 = 0xFFFF_FFFF;
const IN_FLIGHT_SHIFT: u32 = 32;

/// The packed state word, decoded. See the [module documentation](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Word(u64);

/// Why the pure decision refused a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// `in_flight + n > limit`.
    Full,
    /// `n > limit`: no amount of waiting would let it through at this limit.
    ExceedsLimit,
}

impl Word {
    #[inline]
    const fn new(in_flight: u32, limit: u32) -> Self {
        Word(((in_flight as u64) << IN_FLIGHT_SHIFT) | limit as u64)
    }
    #[inline]
    const fn limit(self) -> u32 {
        (self.0 & LIMIT_MASK) as u32
    }
    #[inline]
    const fn in_flight(self) -> u32 {
        (self.0 >> IN_FLIGHT_SHIFT) as u32
    }
    /// The pure decision: the word after granting `n` permits, or why not.
    /// `n` is at least 1.
    #[inline]
    const fn grant(self, n: u32) -> Result<Word, Refusal> {
        let (in_flight, limit) = (self.in_flight() as u64, self.limit() as u64);
        if in_flight + n as u64 <= limit {
            // No overflow: the sum is at most `limit`, which fits in 32 bits.
            Ok(Word(self.0 + ((n as u64) << IN_FLIGHT_SHIFT)))
        } else if n as u64 > limit {
            Err(Refusal::ExceedsLimit)
        } else {
            Err(Refusal::Full)
        }
    }
    /// The same in-flight count under a new limit.
    #[inline]
    const fn with_limit(self, limit: u32) -> Self {
        Word((self.0 & !LIMIT_MASK) | limit as u64)
    }
}

/// A refused [`Bulkhead::try_acquire`]: the permits were all taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BulkheadFull {
    in_flight: u32,
    limit: u32,
}

impl BulkheadFull {
    /// A refusal that saw `in_flight` permits held under `limit` (the
    /// sharded limit's, added over its shards).
    pub(crate) fn new(in_flight: u32, limit: u32) -> Self {
        BulkheadFull { in_flight, limit }
    }

    /// Permits in flight at the instant of the refusal.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }
    /// The limit in force at the instant of the refusal.
    pub fn limit(&self) -> u32 {
        self.limit
    }
}

impl fmt::Display for BulkheadFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bulkhead is full: {} of {} permits in flight",
            self.in_flight, self.limit
        )
    }
}

#[cfg(feature = "std")]
impl std::error::Error for BulkheadFull {}

/// A refused [`Bulkhead::try_acquire_many`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AcquireManyError {
    /// Not enough permits are free now; they may be later.
    Full(BulkheadFull),
    /// Zero permits were asked for.
    Zero,
    /// More permits were asked for than the limit in force: they could never
    /// all be free at once at this limit, so waiting for them would never end.
    ExceedsLimit {
        /// Permits asked for.
        requested: u32,
        /// The limit in force at the instant of the refusal.
        limit: u32,
    },
}

impl fmt::Display for AcquireManyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcquireManyError::Full(full) => full.fmt(f),
            AcquireManyError::Zero => f.write_str("asked the bulkhead for zero permits"),
            AcquireManyError::ExceedsLimit { requested, limit } => write!(
                f,
                "asked the bulkhead for {requested} permits, more than its limit of {limit}"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for AcquireManyError {}

/// The low-level permit, for adapters that keep the bulkhead behind their own
/// handle (an `Arc` inside a tower future, say).
///
/// It holds no reference to the bulkhead, so it must be handed back to
/// [`Bulkhead::release`] of the bulkhead that issued it; dropping it instead
/// leaks its permits for good. Prefer [`BulkheadPermit`], which releases on
/// drop.
#[must_use = "a raw permit must be handed back to `Bulkhead::release`, or its permits leak"]
#[derive(Debug, PartialEq, Eq)]
pub struct RawBulkheadPermit {
    permits: u32,
}

impl RawBulkheadPermit {
    /// How many permits it holds (at least 1).
    pub fn permits(&self) -> u32 {
        self.permits
    }
}

/// Permission to run while holding `permits()` of a [`Bulkhead`]'s permits.
///
/// Dropping it gives the permits back: when the call ends, and equally when
/// the future holding it is cancelled or the thread holding it panics.
#[must_use = "dropping a permit releases it at once"]
pub struct BulkheadPermit<'a, S: EventSink = NoSink> {
    bulkhead: &'a Bulkhead<S>,
    permits: u32,
}

impl<S: EventSink> BulkheadPermit<'_, S> {
    /// How many permits it holds (at least 1).
    pub fn permits(&self) -> u32 {
        self.permits
    }

    /// Gives up the release on drop, returning the low-level token that must
    /// be handed to [`Bulkhead::release`].
    pub fn into_raw(self) -> RawBulkheadPermit {
        let raw = RawBulkheadPermit {
            permits: self.permits,
        };
        core::mem::forget(self);
        raw
    }
}

impl<S: EventSink> fmt::Debug for BulkheadPermit<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadPermit")
            .field("permits", &self.permits)
            .finish_non_exhaustive()
    }
}

impl<S: EventSink> Drop for BulkheadPermit<'_, S> {
    #[inline]
    fn drop(&mut self) {
        self.bulkhead.release_n(self.permits);
    }
}

/// A point-in-time view of a bulkhead. Both fields come from one atomic load,
/// so they are consistent with each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Snapshot {
    /// Permits granted and not yet released. Above `limit` only after the
    /// limit was lowered below the permits then held.
    pub in_flight: u32,
    /// The limit in force.
    pub limit: u32,
}

impl Snapshot {
    /// Permits that could be granted now: `limit - in_flight`, or 0.
    pub fn available(&self) -> u32 {
        self.limit.saturating_sub(self.in_flight)
    }
}

/// A limit on concurrent calls. See the [module documentation](self).
///
/// All methods take `&self`; share it by reference, in an `Arc` or in a
/// `static`. It never allocates, never blocks, never reads a clock.
pub struct Bulkhead<S: EventSink = NoSink> {
    /// The packed state word; see the module documentation.
    state: CachePadded<AtomicU64>,
    sink: S,
    source: u32,
}

impl Bulkhead {
    /// A bulkhead granting at most `limit` permits at once, emitting no
    /// events. A `limit` of zero is refused with [`ConfigError::Zero`].
    pub fn new(limit: u32) -> Result<Self, ConfigError> {
        Bulkhead::with_sink(limit, NoSink, 0)
    }
}

impl<S: EventSink> fmt::Debug for Bulkhead<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("snapshot", &self.snapshot())
            .finish_non_exhaustive()
    }
}

fn check_limit(limit: u32) -> Result<(), ConfigError> {
    if limit == 0 {
        Err(ConfigError::Zero { field: "limit" })
    } else {
        Ok(())
    }
}

impl<S: EventSink> Bulkhead<S> {
    /// A bulkhead granting at most `limit` permits at once that reports
    /// refusals and limit changes to `sink`, tagged with `source` (see
    /// `docs/events.md`).
    ///
    /// The bulkhead takes no time, so its events carry
    /// [`Timestamp::ZERO`]: a consumer that needs a time stamps them when it
    /// reads them.
    pub fn with_sink(limit: u32, sink: S, source: u32) -> Result<Self, ConfigError> {
        check_limit(limit)?;
        Ok(Bulkhead {
            state: CachePadded::new(AtomicU64::new(Word::new(0, limit).0)),
            sink,
            source,
        })
    }

    /// The sink events go to.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// The source id its events carry (given to [`with_sink`](Self::with_sink)).
    pub fn source_id(&self) -> u32 {
        self.source
    }

    /// The source id its events carry.
    pub(crate) fn source(&self) -> u32 {
        self.source
    }

    #[inline]
    fn load(&self) -> Word {
        // ordering: Relaxed; the word is the bulkhead's only data, and every
        // decision taken from it is confirmed by a compare-and-swap.
        Word(self.state.load(Ordering::Relaxed))
    }

    /// Takes one permit, or says the bulkhead is full. Never waits.
    #[inline]
    pub fn try_acquire(&self) -> Result<BulkheadPermit<'_, S>, BulkheadFull> {
        match self.acquire(1) {
            Ok(()) => Ok(BulkheadPermit {
                bulkhead: self,
                permits: 1,
            }),
            Err((_, w)) => Err(BulkheadFull {
                in_flight: w.in_flight(),
                limit: w.limit(),
            }),
        }
    }

    /// Takes `n` permits at once (all or none). Never waits.
    ///
    /// `n == 0` is refused with [`AcquireManyError::Zero`], and `n` above the
    /// limit in force with [`AcquireManyError::ExceedsLimit`], so that a
    /// caller that would wait for `Full` to clear never waits for what cannot
    /// come at this limit.
    #[inline]
    pub fn try_acquire_many(&self, n: u32) -> Result<BulkheadPermit<'_, S>, AcquireManyError> {
        self.try_acquire_many_raw(n).map(|raw| BulkheadPermit {
            bulkhead: self,
            permits: raw.into_permits(),
        })
    }

    /// Like [`try_acquire`](Self::try_acquire), but returns the low-level
    /// token that does not borrow the bulkhead.
    #[inline]
    pub fn try_acquire_raw(&self) -> Result<RawBulkheadPermit, BulkheadFull> {
        self.try_acquire().map(BulkheadPermit::into_raw)
    }

    /// Like [`try_acquire_many`](Self::try_acquire_many), but returns the
    /// low-level token that does not borrow the bulkhead.
    #[inline]
    pub fn try_acquire_many_raw(&self, n: u32) -> Result<RawBulkheadPermit, AcquireManyError> {
        if n == 0 {
            return Err(AcquireManyError::Zero);
        }
        match self.acquire(n) {
            Ok(()) => Ok(RawBulkheadPermit { permits: n }),
            Err((Refusal::Full, w)) => Err(AcquireManyError::Full(BulkheadFull {
                in_flight: w.in_flight(),
                limit: w.limit(),
            })),
            Err((Refusal::ExceedsLimit, w)) => Err(AcquireManyError::ExceedsLimit {
                requested: n,
                limit: w.limit(),
            }),
        }
    }

    /// Grants `n >= 1` permits, or returns why not and the word that said so.
    #[inline]
    fn acquire(&self, n: u32) -> Result<(), (Refusal, Word)> {
        let mut current = self.load();
        loop {
            let new = match current.grant(n) {
                Ok(new) => new,
                Err(why) => {
                    self.refused(n, current);
                    return Err((why, current));
                }
            };
            // ordering: Acquire on success, pairs with the Release of the
            // `fetch_sub` that freed the permit, so that a permit hands over
            // whatever its previous holder wrote (the bulkhead works as a
            // semaphore guarding data). Relaxed on failure: we only re-decide
            // from the returned word.
            match self.state.compare_exchange_weak(
                current.0,
                new.0,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    if self.sink.enabled() {
                        let in_flight = u64::from(new.in_flight());
                        self.emit(EventKind::BULKHEAD_ACQUIRED, [u64::from(n), in_flight]);
                    }
                    return Ok(());
                }
                Err(actual) => current = Word(actual),
            }
        }
    }

    #[inline]
    fn refused(&self, n: u32, seen: Word) {
        if self.sink.enabled() {
            self.emit(EventKind::BULKHEAD_REJECTED, [u64::from(n), seen.0]);
        }
    }

    #[inline]
    fn emit(&self, kind: EventKind, payload: [u64; 2]) {
        if self.sink.enabled() {
            self.sink
                .emit(Event::new(kind, self.source, Timestamp::ZERO, payload));
        }
    }

    /// Gives back the permits of a raw token from this bulkhead.
    ///
    /// Handing it a token from another bulkhead is a bug: a debug build
    /// panics when that would take the in-flight count below zero; a release
    /// build leaves this bulkhead refusing everything (never granting more
    /// than its limit).
    #[inline]
    pub fn release(&self, permit: RawBulkheadPermit) {
        self.release_n(permit.into_permits());
    }

    #[inline]
    fn release_n(&self, n: u32) {
        // ordering: Release, pairs with the Acquire of the grant that takes
        // the permit next (see `acquire`).
        let before = Word(
            self.state
                .fetch_sub(u64::from(n) << IN_FLIGHT_SHIFT, Ordering::Release),
        );
        debug_assert!(
            before.in_flight() >= n,
            "released {n} permits with {} in flight: a permit from another bulkhead?",
            before.in_flight()
        );
        if self.sink.enabled() {
            let in_flight = u64::from(before.in_flight().wrapping_sub(n));
            self.emit(EventKind::BULKHEAD_RELEASED, [u64::from(n), in_flight]);
        }
    }

    /// Changes the limit, returning the previous one. A `limit` of zero is
    /// refused with [`ConfigError::Zero`].
    ///
    /// Permits already held stay held: lowering the limit below the permits
    /// in flight only stops new grants until enough of them are released.
    /// Raising it lets new grants through at once.
    pub fn set_limit(&self, limit: u32) -> Result<u32, ConfigError> {
        check_limit(limit)?;
        let mut current = self.load();
        loop {
            // ordering: Relaxed; the limit is part of the word every grant
            // decides on with a compare-and-swap, so the modification order
            // of the word alone orders limit changes and grants.
            match self.state.compare_exchange_weak(
                current.0,
                current.with_limit(limit).0,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => current = Word(actual),
            }
        }
        let old = current.limit();
        if old != limit {
            self.emit(
                EventKind::BULKHEAD_LIMIT_CHANGED,
                [u64::from(old), u64::from(limit)],
            );
        }
        Ok(old)
    }

    /// Permits granted and not yet released.
    pub fn in_flight(&self) -> u32 {
        self.load().in_flight()
    }

    /// The limit in force.
    pub fn limit(&self) -> u32 {
        self.load().limit()
    }

    /// Permits that could be granted now.
    pub fn available(&self) -> u32 {
        self.snapshot().available()
    }

    /// The in-flight count and the limit, read together.
    pub fn snapshot(&self) -> Snapshot {
        let w = self.load();
        Snapshot {
            in_flight: w.in_flight(),
            limit: w.limit(),
        }
    }
}

impl RawBulkheadPermit {
    #[inline]
    fn into_permits(self) -> u32 {
        self.permits
    }
}

#[cfg(all(test, not(tenlives_loom)))]
mod tests {
    use super::*;

    #[test]
    fn word_round_trips_and_decides() {
        let w = Word::new(u32::MAX, u32::MAX);
        assert_eq!((w.in_flight(), w.limit()), (u32::MAX, u32::MAX));
        let w = Word::new(2, 3);
        assert_eq!(w.grant(1), Ok(Word::new(3, 3)));
        assert_eq!(w.grant(2), Err(Refusal::Full));
        assert_eq!(w.grant(4), Err(Refusal::ExceedsLimit));
        assert_eq!(w.with_limit(1), Word::new(2, 1));
        assert_eq!(Word::new(2, 1).grant(1), Err(Refusal::Full));
        let full = Word::new(u32::MAX - 1, u32::MAX);
        assert_eq!(full.grant(1), Ok(Word::new(u32::MAX, u32::MAX)));
        assert_eq!(full.grant(2), Err(Refusal::Full));
    }

    #[test]
    fn zero_limits_are_refused() {
        assert_eq!(
            Bulkhead::new(0).err(),
            Some(ConfigError::Zero { field: "limit" })
        );
        let b = Bulkhead::new(1).unwrap();
        assert_eq!(b.set_limit(0), Err(ConfigError::Zero { field: "limit" }));
        assert_eq!(b.limit(), 1);
    }

    #[test]
    fn many_permits_all_or_nothing() {
        let b = Bulkhead::new(5).unwrap();
        assert_eq!(b.try_acquire_many(0).unwrap_err(), AcquireManyError::Zero);
        assert_eq!(
            b.try_acquire_many(6).unwrap_err(),
            AcquireManyError::ExceedsLimit {
                requested: 6,
                limit: 5
            }
        );
        let three = b.try_acquire_many(3).unwrap();
        assert_eq!(three.permits(), 3);
        let err = b.try_acquire_many(3).unwrap_err();
        assert_eq!(
            err,
            AcquireManyError::Full(BulkheadFull {
                in_flight: 3,
                limit: 5
            })
        );
        assert_eq!(b.in_flight(), 3, "a refusal takes nothing");
        let two = b.try_acquire_many(2).unwrap();
        assert_eq!(b.available(), 0);
        drop(three);
        drop(two);
        assert_eq!(b.in_flight(), 0);
    }

    #[test]
    fn raw_permits_round_trip() {
        let b = Bulkhead::new(2).unwrap();
        let raw = b.try_acquire_raw().unwrap();
        let many = b.try_acquire().unwrap().into_raw();
        assert_eq!((raw.permits(), many.permits()), (1, 1));
        assert_eq!(b.in_flight(), 2, "into_raw does not release");
        assert!(b.try_acquire_raw().is_err());
        b.release(raw);
        b.release(many);
        assert_eq!(b.in_flight(), 0);
    }

    #[test]
    fn lowering_the_limit_revokes_nothing() {
        let b = Bulkhead::new(4).unwrap();
        let held: [_; 4] = core::array::from_fn(|_| b.try_acquire().unwrap());
        assert_eq!(b.set_limit(2), Ok(4));
        assert_eq!(
            b.snapshot(),
            Snapshot {
                in_flight: 4,
                limit: 2
            }
        );
        assert_eq!(b.available(), 0);
        let [p0, p1, p2, p3] = held;
        drop(p0);
        drop(p1);
        assert!(b.try_acquire().is_err(), "2 in flight at limit 2");
        drop(p2);
        let again = b.try_acquire().unwrap();
        assert!(b.try_acquire().is_err());
        assert_eq!(b.set_limit(3), Ok(2));
        let more = b.try_acquire().unwrap();
        drop((again, more, p3));
        assert_eq!(b.in_flight(), 0);
    }

    #[test]
    fn errors_display() {
        let full = BulkheadFull {
            in_flight: 3,
            limit: 3,
        };
        assert_eq!(
            std::format!("{full}"),
            "bulkhead is full: 3 of 3 permits in flight"
        );
        assert_eq!(
            std::format!(
                "{}",
                AcquireManyError::ExceedsLimit {
                    requested: 9,
                    limit: 4
                }
            ),
            "asked the bulkhead for 9 permits, more than its limit of 4"
        );
    }
}
