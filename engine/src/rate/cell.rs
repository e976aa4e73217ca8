//! A direct limiter's state cell, in one of two widths chosen by its quota.
//!
//! # Why two
//!
//! A 128-bit compare-and-swap (`cmpxchg16b` on x86_64) costs several times
//! a 64-bit one: the rate bench's floor rows put a load and a
//! compare-and-swap of a 128-bit word at 11-14 ns against 3.5 ns for a
//! 64-bit word (`floor_cas_128` and `floor_cas` in `benches/benches/rate.rs`,
//! figures in `docs/performance.md`). The
//! 128-bit state of [`gcra`](super::gcra) is what makes any fractional
//! emission interval exact; a quota whose interval is a whole number of
//! nanoseconds (`a = 1`: 10 a second, 100 a minute, 1 000 an hour, every
//! rate that divides its period in nanoseconds) needs no fraction, and its
//! theoretical arrival time fits a 64-bit word:
//!
//! A quota whose interval is a small fraction (`a <= 16`: 3, 7, 30 or 300
//! a second, 7 a minute) fits one too, counted in units of `1 / a` ns: the
//! wide decision's own arithmetic (it multiplies every time by `a`), with
//! `(TAT - origin)·a` below `2^63`:
//!
//! | width | chosen when | bits |
//! |---|---|---|
//! | narrow (`AtomicU64`) | `a = 1` and `b·T < 2^62` ns | 63 `SEALED`, 0..63 `TAT` in ns |
//! | scaled (`AtomicU64` and its origin) | `1 < a <= 16` and `b·T·a < 2^62` | 63 `SEALED`, 0..63 `(TAT - origin)·a` |
//! | wide (`AtomicU128`) | otherwise | as in [`gcra`](super::gcra): `reset`, `SEALED`, `k` |
//!
//! A narrow or scaled decision is the same definition in 64-bit integers:
//! every grant, refusal, earliest time and available count equals the wide
//! decision's for the same `TAT`, with two departures, both documented in
//! `docs/rate-limiter.md` and checked by the model test:
//!
//! - **The end of time.** `(TAT - origin)·a` must stay below `2^63` (292
//!   years after the timestamps' zero for a narrow cell, whose origin is
//!   zero; `292 / a` years, 18 at the least, after a scaled cell's
//!   [`Origin`], `2^50` ns before its first use, so that timestamps from
//!   any zero, such as the Unix epoch, are far from its end). A grant that
//!   would book past it is refused with an earliest time of
//!   [`Timestamp::MAX`](crate::time::Timestamp::MAX) ("never"), where the
//!   wide state would grant: such a limiter fails closed that far in.
//! - **A refund's floor.** A refund moves `TAT` back by `n·T`; the wide
//!   state stops at the instant of the last full bucket (it counts tokens
//!   since then), the 64-bit cells at zero. Any `TAT` at or before `now` is
//!   a full bucket, so the two differ only for a caller whose time then
//!   goes back before that instant.
//!
//! A scaled `TAT` is not always `reset + k·T` for whole nanoseconds `reset`
//! (after a refund below the last full bucket, or within `T·a` ns of the
//! origin); where no such split exists, its wide form (for a quota change
//! or a description) rounds `TAT` up to the next nanosecond: later by less
//! than one, never earlier.
//!
//! Both cells keep the [`SEALED`] protocol of live quota changes: a seal is
//! a `fetch_or` of the bit, the state under it is final, and a cell made
//! for a new era holds a `PENDING` value (every bit set, so it reads as
//! sealed) until the state is carried over into it. A change may cross
//! widths: the state carried over is converted through the wide form.

use crate::sync::{AtomicU64, AtomicU128, Ordering, spin_hint};

use super::gcra::{self, Refusal, SEALED, State};
use super::quota::Quota;

/// Bit 63 of a narrow cell: the quota was replaced (as [`SEALED`]).
const NARROW_SEALED: u64 = 1 << 63;

/// The latest `TAT` a narrow cell holds, in ns (`TAT·a` for a scaled one).
pub(crate) const NARROW_MAX: u64 = NARROW_SEALED - 1;

/// The largest `a` a scaled cell takes: its end of time, `2^63 / a` ns
/// after its [`Origin`], is then at least `2^59` ns (18 years) away.
pub(crate) const MAX_SCALE: u64 = 16;

/// A direct limiter's state cell (see the module documentation).
pub(crate) enum Cell {
    /// The 128-bit state of [`gcra`](super::gcra).
    Wide(AtomicU128),
    /// `TAT` in whole nanoseconds (`a = 1`), bit 63 `SEALED`.
    Narrow(AtomicU64),
    /// `(TAT - origin)·a` (`1 < a <= MAX_SCALE`), bit 63 `SEALED`. Only
    /// where 64-bit atomics are native ([`Native`]; elsewhere never made,
    /// on purpose).
    #[cfg_attr(not(target_has_atomic = "64"), allow(dead_code))]
    Scaled(Scaled, Native),
}

/// A scaled cell: its word, `(TAT - origin)·a`, and the origin.
pub(crate) struct Scaled {
    pub(crate) word: AtomicU64,
    pub(crate) origin: Origin,
}

/// How far before its first `now` a scaled state's [`Origin`] is put:
/// times up to that far back (a clock going back, a caller's older
/// timestamp) are still decided exactly; earlier ones as at the origin.
/// `2^50` ns, 13 days: a clock that starts at zero keeps the origin at zero
/// for its first 13 days, and the end of time moves by a 700th at most.
pub(crate) const ORIGIN_SLACK: u64 = 1 << 50;

/// Where a scaled state's time starts. A scaled word counts `TAT·a` in 63
/// bits, which at `a = 16` end `2^59` ns (18 years) after their zero; a
/// caller's timestamps may start anywhere (nanoseconds since the Unix epoch
/// are past `2^63 / a` for every `a >= 6`), so the word counts from an
/// origin instead: [`ORIGIN_SLACK`] before the first `now` it is used at,
/// unset until then. Once set it never changes, and every thread obtains
/// the same value: a reader that finds it unset sets it with a
/// compare-and-swap, which returns the value set first.
pub(crate) struct Origin(AtomicU64);

impl Origin {
    const UNSET: u64 = u64::MAX;

    /// The origin a state first used at `now` takes.
    const fn for_first_use(now: u64) -> u64 {
        now.saturating_sub(ORIGIN_SLACK)
    }

    /// An origin the first use sets.
    pub(crate) fn unset() -> Self {
        Origin(AtomicU64::new(Self::UNSET))
    }

    /// The origin for a state first used at `now`.
    pub(crate) fn before(now: u64) -> Self {
        Origin(AtomicU64::new(Self::for_first_use(now)))
    }

    /// The origin, set for `now` if this is the first use.
    #[inline(always)]
    pub(crate) fn at(&self, now: u64) -> u64 {
        // ordering: Relaxed; the value is the only data, and a stale
        // "unset" goes through the compare-and-swap, which reads the latest.
        let origin = self.0.load(Ordering::Relaxed);
        if origin != Self::UNSET {
            origin
        } else {
            self.set(now)
        }
    }

    #[cold]
    #[inline(never)]
    fn set(&self, now: u64) -> u64 {
        let origin = Self::for_first_use(now);
        // ordering: Relaxed, as in `at`.
        match self
            .0
            .compare_exchange(Self::UNSET, origin, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => origin,
            Err(set) => set,
        }
    }

    /// The origin for a look at `now` that takes nothing: the origin if
    /// set, else the one a decision at `now` would set, without setting it
    /// (so that asking about a far time, `available(Timestamp::MAX)` say,
    /// does not move the origin the first decision will set). The caller
    /// loads the word first, with Acquire: a word written by a decision
    /// (Release) brings the origin set before it; a word still zero is a
    /// full bucket whatever the origin.
    #[inline]
    pub(crate) fn peek(&self, now: u64) -> u64 {
        self.get().unwrap_or(Self::for_first_use(now))
    }

    /// The origin if set (a state whose origin is unset was never used,
    /// and is a full bucket at any time; a stale "unset" is possible, so
    /// a decision goes on with [`at`](Self::at)).
    #[inline(always)]
    pub(crate) fn get(&self) -> Option<u64> {
        // ordering: Relaxed; a snapshot for display.
        let origin = self.0.load(Ordering::Relaxed);
        (origin != Self::UNSET).then_some(origin)
    }
}

/// What a scaled cell needs of its target: `()` where 64-bit atomics are
/// native. Where they are emulated (a lock around every access, as on
/// 32-bit microcontrollers) a 64-bit word saves little over the 128-bit
/// one, and the scaled cell's code is not worth a firmware's flash: there
/// the type has no value, so no scaled cell exists and the compiler drops
/// every branch for one.
#[cfg(target_has_atomic = "64")]
pub(crate) type Native = ();
#[cfg(not(target_has_atomic = "64"))]
pub(crate) type Native = core::convert::Infallible;

/// Whether `quota`'s state fits a narrow cell (`TAT` in whole ns).
#[cfg(feature = "std")]
#[inline]
pub(super) fn fits_narrow(quota: &Quota) -> bool {
    quota.a() == 1 && fits_64(quota)
}

/// Whether `quota`'s state fits a 64-bit cell, narrow or scaled (scaled
/// only where 64-bit atomics are native, see [`Native`]).
#[inline]
pub(super) fn fits_64(quota: &Quota) -> bool {
    let most = if cfg!(target_has_atomic = "64") {
        MAX_SCALE
    } else {
        1
    };
    quota.a() <= most && quota.burst_c() < 1 << 62
}

/// A narrow cell's `TAT` for the wide `state`, cut at [`NARROW_MAX`].
pub(crate) fn narrow_of(quota: &Quota, state: State) -> u64 {
    let tat = gcra::tat(quota, state);
    u64::try_from(tat).map_or(NARROW_MAX, |t| t.min(NARROW_MAX))
}

/// A 64-bit word's `(TAT - origin)·a` for the wide `state`: zero for a
/// `TAT` before the origin (a full bucket at any time from it on), cut at
/// [`NARROW_MAX`].
pub(crate) fn narrow_from(quota: &Quota, state: State, origin: u64) -> u64 {
    let tat = gcra::tat(quota, state).saturating_sub(u128::from(origin) * u128::from(quota.a()));
    u64::try_from(tat).map_or(NARROW_MAX, |t| t.min(NARROW_MAX))
}

/// [`wide_of`] for a word counted from `origin`: the wide form in
/// nanoseconds from the timestamps' zero.
pub(crate) fn wide_from(quota: &Quota, tat: u64, now: u64, origin: u64) -> State {
    let state = wide_of(quota, tat, now.saturating_sub(origin));
    gcra::pack(
        gcra::reset_of(state).saturating_add(origin),
        gcra::tokens_of(state),
    )
}

/// The wide form of a 64-bit cell's `tat` (`TAT·a`) for decisions at
/// `now`: `(reset, k)` with `reset·a + k·c = tat` and `reset <= now` where
/// `tat` allows it (whole tokens booked since an instant not after `now`,
/// as a wide state made at `now` would hold), else the latest such `reset`
/// after `now`; where no whole `reset` exists (a scaled `tat` only), `TAT`
/// rounded up to the next nanosecond.
pub(crate) fn wide_of(quota: &Quota, tat: u64, now: u64) -> State {
    let (a, c) = (quota.a(), quota.c());
    let t = u128::from(now) * u128::from(a);
    // Tokens booked since `now`, rounded up: the fewest `k` that keeps
    // `reset` at or before `now`.
    let fewest = u64::try_from((u128::from(tat).saturating_sub(t)).div_ceil(u128::from(c)))
        .unwrap_or(u64::MAX);
    // `reset·a = tat - k·c` needs `k·c ≡ tat (mod a)`: one `k` in `0..a`
    // (`a` and `c` are coprime), and every `k` that differs from it by a
    // multiple of `a`.
    let residue = (0..a)
        .find(|k| (k * (c % a)) % a == tat % a)
        .expect("a and c are coprime");
    let most = tat / c;
    if most < residue {
        // No whole `reset`: `TAT` rounded up.
        return gcra::pack(tat.div_ceil(a), 0);
    }
    // The fewest `k >= fewest` of the residue's class, else the most that
    // `tat` holds.
    let k = match fewest.checked_add((residue + a - fewest % a) % a) {
        Some(k) if k <= most => k,
        _ => most - (most - residue) % a,
    };
    gcra::pack((tat - k * c) / a, k)
}

/// A narrow decision: [`gcra::decide`] for a quota that [`fits_narrow`],
/// on `TAT` in ns: the new `TAT` and the grant's ready time, or the
/// refusal; `None` when `tat` is sealed (or pending).
///
/// The seal needs no test of its own on the way to a grant: a sealed
/// `tat` has bit 63 set, so `max(TAT, t) + n·T` passes [`NARROW_MAX`] and
/// lands on the end-of-time branch, which tells the two apart.
#[inline(always)]
pub(super) fn decide_narrow(
    quota: &Quota,
    tat: u64,
    now: u64,
    horizon: u64,
    n: u64,
) -> Option<Result<(u64, u64), Refusal>> {
    let c = quota.c();
    // Below 2^62: checked when the cell was made narrow.
    let burst_c = quota.burst_c() as u64;
    // `booked <= 2^63`, so `start + booked` wraps only when `start` has
    // bit 63 set, which the test below catches with `next`'s.
    let (cost, booked) = if n <= quota.burst_tokens() {
        (n * c, n * c)
    } else if quota.allows_debt() {
        (burst_c, n.saturating_mul(c).min(NARROW_SEALED))
    } else if tat & NARROW_SEALED != 0 {
        return None;
    } else {
        return Some(Err(Refusal::Insufficient));
    };
    let start = tat.max(now);
    let next = start.wrapping_add(booked);
    if (start | next) > NARROW_MAX {
        if tat & NARROW_SEALED != 0 {
            return None;
        }
        return Some(Err(Refusal::NotYet { ready: u64::MAX }));
    }
    // Conforms by `horizon` iff max(TAT, t) + cost·T - b·T <= horizon. No
    // overflow: `cost <= booked`, so `start + cost <= next`.
    let ready = (start + cost).saturating_sub(burst_c);
    if ready > horizon {
        return Some(Err(Refusal::NotYet { ready }));
    }
    Some(Ok((next, ready.max(now))))
}

/// [`Cell::acquire`] on a narrow cell.
#[inline(always)]
pub(crate) fn acquire_narrow(
    cell: &AtomicU64,
    quota: &Quota,
    now: u64,
    horizon: u64,
    n: u64,
) -> Option<Result<u64, Refusal>> {
    // ordering: Relaxed loads, as in `gcra::acquire`: a seal is a
    // read-modify-write of the same word. Release on success: a scaled
    // cell's word is counted from its origin, which this thread set or
    // read before; a reader that takes nothing loads the word with Acquire
    // and then the origin, and so finds the origin the word was written
    // with (see `Origin::peek`). Free on x86 (every compare-and-swap is).
    let mut tat = cell.load(Ordering::Relaxed);
    loop {
        let (next, ready) = match decide_narrow(quota, tat, now, horizon, n)? {
            Ok(grant) => grant,
            Err(refusal) => return Some(Err(refusal)),
        };
        match cell.compare_exchange_weak(tat, next, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return Some(Ok(ready)),
            Err(actual) => {
                tat = actual;
                spin_hint();
            }
        }
    }
}

/// [`Cell::acquire`] on a scaled cell: the narrow decision on times
/// multiplied by `a` (saturating: a time past the cell's end is refused as
/// "never"), its ready time divided back, rounded up as the wide decision
/// rounds it.
#[inline(always)]
pub(crate) fn acquire_scaled(
    cell: &Scaled,
    quota: &Quota,
    now: u64,
    horizon: u64,
    n: u64,
) -> Option<Result<u64, Refusal>> {
    let (a, origin) = (quota.a(), cell.origin.at(now));
    let t = scale(a, origin, now);
    let decision = acquire_narrow(&cell.word, quota, t, scale(a, origin, horizon), n)?;
    Some(unscale(a, origin, t, now, decision))
}

/// A time in a scaled word's units: `(time - origin)·a`, saturating (a
/// time before the origin is the origin; one past the word's end is
/// refused as "never").
#[inline(always)]
pub(crate) fn scale(a: u64, origin: u64, time: u64) -> u64 {
    time.saturating_sub(origin).saturating_mul(a)
}

/// A decision taken at `t`, `now` in a scaled word's units, in ns again:
/// a ready time of `t` or earlier is `now`, a later one rounded up; a
/// refusal as [`unscale_refusal`].
#[inline(always)]
fn unscale(
    a: u64,
    origin: u64,
    t: u64,
    now: u64,
    decision: Result<u64, Refusal>,
) -> Result<u64, Refusal> {
    match decision {
        Ok(ready) => Ok(if ready <= t {
            now
        } else {
            origin.saturating_add(ready.div_ceil(a))
        }),
        Err(refusal) => Err(unscale_refusal(a, origin, refusal)),
    }
}

/// A scaled refusal in ns, rounded up (its "never" stays "never").
#[inline]
pub(crate) fn unscale_refusal(a: u64, origin: u64, refusal: Refusal) -> Refusal {
    match refusal {
        Refusal::NotYet { ready } if ready != u64::MAX => Refusal::NotYet {
            ready: ready.div_ceil(a),
        },
        other => other,
    }
    .later_by(origin)
}

/// [`Cell::acquire`] on a wide cell. Inlined, so that a caller's constants
/// (one token, a horizon of now) fold into the 128-bit decision; the
/// direct limiter's checks keep it out of their inlined narrow path by
/// calling it from a function of its own (`RateLimiter::check`), which
/// costs less than an out-of-line decision here that cannot fold them
/// (`docs/performance.md`, "The GCRA check on a 64-bit cell").
#[inline]
fn acquire_wide(
    cell: &AtomicU128,
    quota: &Quota,
    now: u64,
    horizon: u64,
    n: u64,
) -> Option<Result<u64, Refusal>> {
    gcra::acquire(cell, quota, now, horizon, n).map(|r| r.map(|grant| grant.ready))
}

impl Cell {
    /// A cell for `quota` with a full bucket, never used.
    pub(crate) fn fresh(quota: &Quota) -> Self {
        Cell::of_width(quota, narrow_of(quota, 0), 0, Origin::unset)
    }

    /// A cell for `quota` holding the wide `state`, first used at `now`.
    #[cfg_attr(feature = "std", allow(dead_code))]
    pub(crate) fn new(quota: &Quota, state: State, now: u64) -> Self {
        if !fits_64(quota) {
            Cell::Wide(AtomicU128::new(state))
        } else if quota.a() == 1 {
            Cell::Narrow(AtomicU64::new(narrow_of(quota, state)))
        } else {
            let origin = Origin::before(now);
            let word = narrow_from(quota, state, origin.at(now));
            Cell::new_scaled(word, origin)
        }
    }

    /// A scaled cell holding `word`, counted from `origin`.
    #[cfg(target_has_atomic = "64")]
    fn new_scaled(word: u64, origin: Origin) -> Self {
        Cell::Scaled(
            Scaled {
                word: AtomicU64::new(word),
                origin,
            },
            (),
        )
    }

    /// No scaled cell where 64-bit atomics are emulated: [`fits_64`] takes
    /// no fraction there.
    #[cfg(not(target_has_atomic = "64"))]
    fn new_scaled(_: u64, _: Origin) -> Self {
        unreachable!("no scaled cell without native 64-bit atomics")
    }

    /// A cell of `quota`'s width holding `word` if it is 64 bits wide
    /// (counted from `origin` if scaled), `state` if it is 128.
    fn of_width(quota: &Quota, word: u64, state: State, origin: impl FnOnce() -> Origin) -> Self {
        if !fits_64(quota) {
            Cell::Wide(AtomicU128::new(state))
        } else if quota.a() == 1 {
            Cell::Narrow(AtomicU64::new(word))
        } else {
            Cell::new_scaled(word, origin())
        }
    }

    /// A new era's cell for `quota`, made at `since`, pending until
    /// [`settle`](Self::settle).
    #[cfg(feature = "std")]
    pub(crate) fn pending(quota: &Quota, since: u64) -> Self {
        Cell::of_width(quota, u64::MAX, State::MAX, || Origin::before(since))
    }

    /// Applies a decision for `n` tokens at `now` (conforming by `horizon`)
    /// with one compare-and-swap per attempt: the grant's ready time, or the
    /// refusal that took effect; `None` when the cell is sealed.
    #[inline(always)]
    pub(crate) fn acquire(
        &self,
        quota: &Quota,
        now: u64,
        horizon: u64,
        n: u64,
    ) -> Option<Result<u64, Refusal>> {
        match self {
            Cell::Narrow(cell) => acquire_narrow(cell, quota, now, horizon, n),
            Cell::Scaled(cell, _) => acquire_scaled(cell, quota, now, horizon, n),
            Cell::Wide(cell) => acquire_wide(cell, quota, now, horizon, n),
        }
    }

    /// The word of a narrow cell, `None` for a wide one.
    #[cfg(target_has_atomic = "64")]
    #[inline(always)]
    pub(crate) fn narrow(&self) -> Option<&AtomicU64> {
        match self {
            Cell::Narrow(cell) => Some(cell),
            Cell::Scaled(..) | Cell::Wide(_) => None,
        }
    }

    /// The word of a scaled cell, `None` for any other.
    #[cfg(target_has_atomic = "64")]
    #[inline(always)]
    pub(crate) fn scaled(&self) -> Option<&Scaled> {
        match self {
            Cell::Scaled(cell, _) => Some(cell),
            Cell::Narrow(_) | Cell::Wide(_) => None,
        }
    }

    /// The state in wide form for decisions at `now` that take nothing;
    /// `None` when sealed.
    #[inline]
    pub(crate) fn peek(&self, quota: &Quota, now: u64) -> Option<State> {
        // ordering: Relaxed; a peek is a snapshot that may be stale the
        // moment it is returned.
        match self {
            Cell::Narrow(cell) => {
                let tat = cell.load(Ordering::Relaxed);
                (tat & NARROW_SEALED == 0).then(|| wide_of(quota, tat, now))
            }
            Cell::Scaled(cell, _) => {
                // ordering: Acquire, see `Origin::peek`.
                let tat = cell.word.load(Ordering::Acquire);
                (tat & NARROW_SEALED == 0)
                    .then(|| wide_from(quota, tat, now, cell.origin.peek(now)))
            }
            Cell::Wide(cell) => {
                let state = cell.load(Ordering::Relaxed);
                (state & SEALED == 0).then_some(state)
            }
        }
    }

    /// The decision [`acquire`](Self::acquire) would take, without taking
    /// anything; `None` when sealed.
    #[inline]
    pub(crate) fn decide(
        &self,
        quota: &Quota,
        now: u64,
        horizon: u64,
        n: u64,
    ) -> Option<Result<u64, Refusal>> {
        match self {
            Cell::Narrow(cell) => {
                // ordering: Relaxed, as in `peek`.
                let tat = cell.load(Ordering::Relaxed);
                decide_narrow(quota, tat, now, horizon, n).map(|r| r.map(|(_, ready)| ready))
            }
            Cell::Scaled(cell, _) => {
                // ordering: Acquire, see `Origin::peek`.
                let tat = cell.word.load(Ordering::Acquire);
                let (a, origin) = (quota.a(), cell.origin.peek(now));
                let t = scale(a, origin, now);
                let decision = decide_narrow(quota, tat, t, scale(a, origin, horizon), n)?;
                Some(unscale(a, origin, t, now, decision.map(|(_, ready)| ready)))
            }
            Cell::Wide(_) => {
                let state = self.peek(quota, now)?;
                Some(gcra::decide(quota, state, now, horizon, n).map(|grant| grant.ready))
            }
        }
    }

    /// Tokens that [`acquire`](Self::acquire) would grant at `now`, one
    /// request at a time (at most the burst); `None` when sealed.
    pub(crate) fn available(&self, quota: &Quota, now: u64) -> Option<u64> {
        let (tat, t) = match self {
            // ordering: Relaxed, as in `peek`.
            Cell::Narrow(cell) => (cell.load(Ordering::Relaxed), now),
            Cell::Scaled(cell, _) => {
                // ordering: Acquire, see `Origin::peek`.
                let tat = cell.word.load(Ordering::Acquire);
                (tat, scale(quota.a(), cell.origin.peek(now), now))
            }
            Cell::Wide(_) => return Some(gcra::available(quota, self.peek(quota, now)?, now)),
        };
        if tat & NARROW_SEALED != 0 {
            return None;
        }
        let tokens = gcra::available_at(quota, u128::from(tat), u128::from(t));
        // Only the tokens whose grant keeps `TAT` at or below the end of a
        // 64-bit cell's time.
        Some(tokens.min(NARROW_MAX.saturating_sub(tat.max(t)) / quota.c()))
    }

    /// `(reset, booked since)` for display (a 64-bit cell shows its `TAT`,
    /// rounded up to whole ns, as the reset, nothing booked since); `None`
    /// when sealed (or still pending): a sealed cell stays sealed, and an
    /// unsealed answer is a state read before the seal.
    pub(crate) fn describe(&self, quota: &Quota) -> Option<(u64, u64)> {
        // ordering: Relaxed; a snapshot for display.
        match self {
            Cell::Narrow(cell) => {
                let tat = cell.load(Ordering::Relaxed);
                (tat & NARROW_SEALED == 0).then_some((tat, 0))
            }
            Cell::Scaled(cell, _) => {
                // ordering: Acquire, see `Origin::peek`.
                let tat = cell.word.load(Ordering::Acquire);
                // An unset origin: never used, a full bucket (its word 0).
                let origin = cell.origin.get().unwrap_or(0);
                (tat & NARROW_SEALED == 0)
                    .then(|| (origin.saturating_add(tat.div_ceil(quota.a())), 0))
            }
            Cell::Wide(cell) => {
                let state = cell.load(Ordering::Relaxed);
                (state & SEALED == 0).then(|| (gcra::reset_of(state), gcra::tokens_of(state)))
            }
        }
    }

    /// Gives back `n` tokens: `TAT` goes back `n·T` (see the module
    /// documentation for the floor). `None` when sealed.
    #[inline]
    pub(crate) fn refund(&self, quota: &Quota, n: u64) -> Option<()> {
        match self {
            // ordering: Relaxed, as in `gcra::refund`.
            // `n·T` is `n·c` in a scaled cell's units too.
            Cell::Narrow(cell) | Cell::Scaled(Scaled { word: cell, .. }, _) => cell
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                    (tat & NARROW_SEALED == 0)
                        .then(|| tat.saturating_sub(n.saturating_mul(quota.c())))
                })
                .ok()
                .map(drop),
            Cell::Wide(cell) => gcra::refund(cell, n),
        }
    }

    /// Seals the cell and returns its final state in wide form for `now`
    /// (`quota` is the quota it was made for).
    #[cfg(feature = "std")]
    pub(crate) fn seal(&self, quota: &Quota, now: u64) -> State {
        // ordering: Release, as the seal in `limiter.rs` documents: a
        // thread that finds the cell sealed (and fences Acquire) finds the
        // link made before it.
        match self {
            Cell::Narrow(cell) => {
                let tat = cell.fetch_or(NARROW_SEALED, Ordering::Release) & !NARROW_SEALED;
                wide_of(quota, tat, now)
            }
            Cell::Scaled(cell, _) => {
                let tat = cell.word.fetch_or(NARROW_SEALED, Ordering::Release) & !NARROW_SEALED;
                wide_from(quota, tat, now, cell.origin.at(now))
            }
            Cell::Wide(cell) => cell.fetch_or(SEALED, Ordering::Release) & !SEALED,
        }
    }

    /// Sets a pending cell, made at `since`, to `state` (wide form, for
    /// `quota`); a no-op when another helper already did.
    #[cfg(feature = "std")]
    pub(crate) fn settle(&self, quota: &Quota, state: State, since: u64) {
        // ordering: Relaxed; the publication of the era orders it for
        // readers (see `limiter.rs`).
        let (cell, word) = match self {
            Cell::Narrow(cell) => (cell, narrow_of(quota, state)),
            Cell::Scaled(cell, _) => (&cell.word, narrow_from(quota, state, cell.origin.at(since))),
            Cell::Wide(cell) => {
                let _ =
                    cell.compare_exchange(State::MAX, state, Ordering::Relaxed, Ordering::Relaxed);
                return;
            }
        };
        let _ = cell.compare_exchange(u64::MAX, word, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Replaces the state with `state` (wide form, for `quota`, restored at
    /// `now`) unless the cell is sealed (`None`).
    pub(crate) fn replace(&self, quota: &Quota, state: State, now: u64) -> Option<()> {
        // ordering: Relaxed, as every access to the cell.
        let (cell, new) = match self {
            Cell::Narrow(cell) => (cell, narrow_of(quota, state)),
            Cell::Scaled(cell, _) => (&cell.word, narrow_from(quota, state, cell.origin.at(now))),
            Cell::Wide(cell) => {
                return cell
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |current| {
                        (current & SEALED == 0).then_some(state)
                    })
                    .ok()
                    .map(drop);
            }
        };
        // ordering: Release on success, as a decision's (`acquire_narrow`).
        cell.fetch_update(Ordering::Release, Ordering::Relaxed, |tat| {
            (tat & NARROW_SEALED == 0).then_some(new)
        })
        .ok()
        .map(drop)
    }

    /// Whether this is a narrow cell.
    #[cfg(test)]
    pub(crate) fn is_narrow(&self) -> bool {
        matches!(self, Cell::Narrow(_))
    }

    /// Whether this is a 128-bit cell.
    #[cfg(test)]
    pub(crate) fn is_wide(&self) -> bool {
        matches!(self, Cell::Wide(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::time::Duration;

    const MS: u64 = 1_000_000;

    /// The narrow and scaled decisions equal the wide one, state for state,
    /// over a run of grants, refusals, horizons and refunds.
    #[test]
    fn a_narrow_cell_decides_as_the_wide_state_does() {
        for (quota, narrow) in [
            (Quota::per_second(10).unwrap().with_burst(3).unwrap(), true),
            (Quota::new(7, Duration::from_millis(7)).unwrap(), true),
            (
                Quota::per_second(4)
                    .unwrap()
                    .with_burst(2)
                    .unwrap()
                    .with_debt(),
                true,
            ),
            // Scaled: a = 3, 7, 9 and 16 (the largest that fits).
            (Quota::per_second(30).unwrap().with_burst(4).unwrap(), false),
            (Quota::per_second(7).unwrap(), false),
            (Quota::per_second(90).unwrap().with_burst(5).unwrap(), false),
            (
                Quota::new(16, Duration::from_nanos(999_999_999))
                    .unwrap()
                    .with_burst(3)
                    .unwrap()
                    .with_debt(),
                false,
            ),
        ] {
            // From a clock's first second, and from nanoseconds since the
            // Unix epoch (past `2^63 / a` for every `a >= 6`: a scaled
            // cell counts from its first use).
            for start in [1_000 * MS, UNIX] {
                let cell = Cell::fresh(&quota);
                assert_eq!(cell.is_narrow(), narrow, "{quota:?}");
                assert!(!cell.is_wide(), "{quota:?}");
                decide_as_the_wide_state(&quota, &cell, start);
            }
        }
    }

    /// 2025-12-06 in nanoseconds since the Unix epoch.
    const UNIX: u64 = 1_765_000_000_000_000_000;

    /// Runs `narrow` (a 64-bit cell) beside a wide state from `(0, 0)`,
    /// the first request at `start`.
    fn decide_as_the_wide_state(quota: &Quota, narrow: &Cell, start: u64) {
        let quota = *quota;
        {
            let wide = AtomicU128::new(0);
            let mut now = start;
            for step in 0..if cfg!(miri) { 40 } else { 400u64 } {
                let n = 1 + step % 4;
                let horizon = now + (step % 3) * 50 * MS;
                let a = narrow.acquire(&quota, now, horizon, n).unwrap();
                let b = gcra::acquire(&wide, &quota, now, horizon, n)
                    .unwrap()
                    .map(|g| g.ready);
                assert_eq!(a, b, "{quota:?} step {step} at {now}");
                assert_eq!(
                    narrow.decide(&quota, now + 3, horizon + 3, n),
                    Some(
                        gcra::decide(
                            &quota,
                            wide.load(Ordering::Relaxed),
                            now + 3,
                            horizon + 3,
                            n
                        )
                        .map(|g| g.ready)
                    ),
                    "{quota:?} step {step} at {now}"
                );
                if step % 7 == 0 {
                    narrow.refund(&quota, 1).unwrap();
                    gcra::refund(&wide, 1).unwrap();
                }
                let state = wide.load(Ordering::Relaxed);
                for t in [now, now + 37 * MS, now + 37 * MS + 1] {
                    assert_eq!(
                        narrow.available(&quota, t),
                        Some(gcra::available(&quota, state, t))
                    );
                    let peeked = narrow.peek(&quota, t).unwrap();
                    assert_eq!(gcra::tat(&quota, peeked), gcra::tat(&quota, state));
                    assert_eq!(
                        gcra::available(&quota, peeked, t),
                        gcra::available(&quota, state, t)
                    );
                    assert_eq!(
                        gcra::ahead(&quota, peeked, t),
                        gcra::ahead(&quota, state, t)
                    );
                }
                now += (step % 5) * 30 * MS + step % 3;
            }
        }
    }

    #[test]
    fn finer_fractions_or_huge_intervals_stay_wide() {
        // a = 17: past the scaled cell's largest.
        assert!(Cell::fresh(&Quota::per_second(17).unwrap()).is_wide());
        assert!(!Cell::fresh(&Quota::per_second(3).unwrap()).is_wide());
        // A burst of 2^32 - 1 tokens an hour apart: b·T beyond 2^62 ns.
        let long = Quota::per_hour(1).unwrap().with_burst(u32::MAX).unwrap();
        assert!(Cell::fresh(&long).is_wide());
        // The same with a = 3: b·T·a beyond 2^62.
        let long = Quota::new(3, Duration::from_secs(3_601))
            .unwrap()
            .with_burst(u32::MAX)
            .unwrap();
        assert_eq!(long.a(), 3);
        assert!(Cell::fresh(&long).is_wide());
    }

    #[test]
    fn a_scaled_cell_fails_closed_at_its_end_of_time() {
        // T = 10^8 / 3 ns: `(TAT - origin)·3` ends at NARROW_MAX, the origin
        // `ORIGIN_SLACK` before the first use (or zero).
        let quota = Quota::per_second(30).unwrap().with_burst(2).unwrap();
        for first in [0, ORIGIN_SLACK + 5, UNIX] {
            let cell = Cell::fresh(&quota);
            assert_eq!(cell.acquire(&quota, first, first, 1), Some(Ok(first)));
            let origin = first.saturating_sub(ORIGIN_SLACK);
            let end = origin + NARROW_MAX / 3;
            // The last instant a whole burst fits: granted, at that instant.
            let last = end - 66_666_667;
            assert_eq!(cell.available(&quota, last), Some(2));
            assert_eq!(cell.acquire(&quota, last, last, 1), Some(Ok(last)));
            assert_eq!(cell.acquire(&quota, last, last, 1), Some(Ok(last)));
            // Past the end, and where `(t - origin)·a` saturates.
            let saturated = origin.saturating_add(u64::MAX / 3 + 1);
            for t in [last, end, end + 1, saturated, u64::MAX] {
                assert_eq!(cell.available(&quota, t), Some(0), "{t}");
                assert_eq!(
                    cell.acquire(&quota, t, t, 1),
                    Some(Err(Refusal::NotYet { ready: u64::MAX })),
                    "{t}"
                );
            }
        }
        // A fresh cell first used anywhere, however late, counts from
        // there: a whole burst.
        for t in [NARROW_MAX / 3, UNIX, u64::MAX] {
            let fresh = Cell::fresh(&quota);
            assert_eq!(fresh.available(&quota, t), Some(2), "{t}");
            assert_eq!(fresh.decide(&quota, t, t, 1), Some(Ok(t)));
            assert_eq!(fresh.acquire(&quota, t, t, 2), Some(Ok(t)));
            assert!(matches!(
                fresh.acquire(&quota, t, t, 1),
                Some(Err(Refusal::NotYet { ready })) if ready > t || ready == u64::MAX
            ));
        }
        // `horizon` saturating is exact: a wait to the end of the clock.
        let fresh = Cell::fresh(&quota);
        let t = 1_000 * MS;
        for _ in 0..2 {
            assert_eq!(fresh.acquire(&quota, t, u64::MAX, 1), Some(Ok(t)));
        }
        assert_eq!(
            fresh.acquire(&quota, t, u64::MAX, 1),
            Some(Ok(t + 33_333_334))
        );
    }

    #[test]
    fn a_narrow_cell_fails_closed_at_the_end_of_time() {
        let quota = Quota::per_second(10).unwrap().with_burst(2).unwrap();
        let cell = Cell::fresh(&quota);
        // The last instant a whole burst fits: exact to the end.
        let last = NARROW_MAX - 200 * MS;
        assert_eq!(cell.available(&quota, last), Some(2));
        assert_eq!(cell.acquire(&quota, last, last, 1), Some(Ok(last)));
        assert_eq!(cell.acquire(&quota, last, last, 1), Some(Ok(last)));
        // `TAT` is at the end: another token would pass it, so "never".
        for t in [last, last + 100 * MS, NARROW_MAX, u64::MAX] {
            assert_eq!(cell.available(&quota, t), Some(0));
            assert_eq!(
                cell.decide(&quota, t, t, 1),
                Some(Err(Refusal::NotYet { ready: u64::MAX }))
            );
            assert_eq!(
                cell.acquire(&quota, t, t, 1),
                Some(Err(Refusal::NotYet { ready: u64::MAX }))
            );
        }
        // A fresh cell at the end of time: one token fits at NARROW_MAX - T.
        let fresh = Cell::fresh(&quota);
        assert_eq!(fresh.available(&quota, NARROW_MAX - 150 * MS), Some(1));
        assert_eq!(fresh.available(&quota, u64::MAX), Some(0));
    }

    #[test]
    fn the_wide_form_of_a_narrow_state_is_exact_and_reset_not_after_now() {
        let quota = Quota::per_second(10).unwrap().with_burst(5).unwrap();
        for (tat, now) in [
            (1_250 * MS, 1_000 * MS),
            (1_000 * MS, 1_000 * MS),
            (50 * MS, 0),
            (3, 7),
        ] {
            let state = wide_of(&quota, tat, now);
            let (reset, k) = (gcra::reset_of(state), gcra::tokens_of(state));
            assert_eq!(
                u128::from(reset) + u128::from(k) * 100 * u128::from(MS),
                u128::from(tat)
            );
            assert!(reset <= now || k == tat / (100 * MS), "{tat} {now}");
            assert_eq!(narrow_of(&quota, state), tat);
        }
    }

    #[test]
    fn the_wide_form_of_a_scaled_state_is_exact_where_a_split_exists() {
        // T = 10^9 / 7 ns: `TAT·7 = reset·7 + k·10^9`.
        let quota = Quota::per_second(7).unwrap().with_burst(5).unwrap();
        let c = 1_000_000_000;
        for reset in [0, 1, 999, 5 * c, 5 * c + 3] {
            for k in 0..12 {
                let tat = reset * 7 + k * c;
                for now in [0, reset, reset + 1, reset + 2 * c, tat / 7, tat / 7 + 1] {
                    let state = wide_of(&quota, tat, now);
                    let (r, j) = (gcra::reset_of(state), gcra::tokens_of(state));
                    assert_eq!(gcra::tat(&quota, state), u128::from(tat), "{tat} {now}");
                    // `reset` at or before `now` where a split allows it;
                    // else the latest `reset` after it.
                    if r > now {
                        assert!(
                            (j + 1..=tat / c).all(|more| (tat - more * c) % 7 != 0),
                            "{tat} {now}: ({r}, {j})"
                        );
                    }
                    assert_eq!(narrow_of(&quota, state), tat);
                }
            }
        }
        // No split: `2·10^9 + 5 - k·10^9` is a multiple of 7 only for
        // `k ≡ 4 (mod 7)`, and `tat` holds two intervals. Rounded up to the
        // next nanosecond.
        let tat = 2 * c + 5;
        let state = wide_of(&quota, tat, 0);
        assert_eq!(state, gcra::pack(tat.div_ceil(7), 0));
        assert!(gcra::tat(&quota, state) >= u128::from(tat));
        assert!(gcra::tat(&quota, state) < u128::from(tat) + 7);
    }
}
