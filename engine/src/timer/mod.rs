//! A shared, lock-free timer wheel: many deadlines, one sleeping driver.
//!
//! A request that must not outlive a deadline takes an entry of a fixed
//! array ([`TimerWheel::register`]), polls it with its waker
//! ([`TimerWheel::poll`]) and gives it back when it is done
//! ([`TimerWheel::cancel`]). One driver (in the tokio adapter: one task per
//! wheel) sleeps until the earliest deadline, then calls
//! [`TimerWheel::expire`], which fires every entry that is due and wakes its
//! owner. Nothing is allocated after [`TimerWheel::new`], no lock is taken,
//! and the runtime's own timer sees one sleep per wheel instead of one per
//! request.
//!
//! # Resolution
//!
//! Deadlines are kept in ticks of `resolution` (1 ms in the adapters):
//! a deadline is rounded *up* to the next tick, and `expire(now)` fires what
//! is due at `now` rounded *down*. An entry therefore never fires before its
//! deadline, and fires at most one tick after it plus however late the
//! driver runs.
//!
//! # The entry's state word
//!
//! ```text
//!  63                                     8 7     4    3      2    1    0
//! +----------------------------------------+-------+--------+-----+-------+
//! |               generation                | unused | DRIVER | OWN | phase |
//! +----------------------------------------+-------+--------+-----+-------+
//! ```
//!
//! | field      | meaning                                                          |
//! |------------|------------------------------------------------------------------|
//! | phase      | `FREE` (on the free stack, or just taken), `ARMED` (waiting for its deadline), `FIRED` (the deadline passed; the owner was woken) |
//! | `OWN`      | the owner (who registered it) still holds the entry              |
//! | `DRIVER`   | an expirer that fired the entry is still waking its owner       |
//! | generation | bumped at each registration, so that an expirer's compare-and-swap from an earlier use of the entry fails |
//!
//! | transition                              | by                          | atomic step |
//! |-----------------------------------------|-----------------------------|-------------|
//! | `FREE` → `ARMED`, `+OWN`, generation + 1 | the registrant (the entry is its own, popped from the free stack) | one store (Release) |
//! | `ARMED`, `OWN` → `FIRED`, `OWN + DRIVER` | an expirer, once the deadline is due | compare-and-swap from the exact word |
//! | `ARMED`, `OWN` → `FREE`                 | the owner, cancelling       | compare-and-swap from the exact word |
//! | clear `DRIVER`                          | the expirer, after the wake | `fetch_and` |
//! | clear `OWN` (`FIRED`)                   | the owner, giving it back   | `fetch_and` |
//!
//! Whoever clears the last of `OWN` and `DRIVER` (or the owner that
//! cancelled an armed entry) pushes the index back on the free stack. So an
//! entry is never reused while its owner or an expirer can still touch it,
//! and a stale expirer (one that read the entry before it was given back and
//! taken again) fails its compare-and-swap on the generation: it neither
//! fires nor wakes the new owner. The deadline lives in its own word,
//! written by the registrant before its Release store of the state word and
//! read by expirers after an Acquire load of it; a deadline read from a
//! later use than the state word it was read with only leads to a
//! compare-and-swap that fails.
//!
//! # Stripes
//!
//! The entries are split into up to eight stripes (a power of two, at most
//! one per entry), each a contiguous run of entries with its own free stack,
//! scan bound and `next_due` word on a cache line of its own. A thread
//! registers in its own stripe (`stripe.rs`: one per thread, round-robin)
//! and takes an entry of the next stripes in turn only when its own is
//! empty, so the wheel is full only when every entry is taken. An entry goes
//! back to the stripe it came from. Threads on different cores therefore
//! write different lines when they register and cancel: with one free stack
//! and one `next_due` word for the whole wheel, every request wrote both
//! shared words, and on two threads those three read-modify-writes per
//! request were most of a request's cost through the stack
//! (`docs/performance.md`, "The timer wheel on two threads").
//!
//! # When the driver must wake: `next_due`
//!
//! Each stripe's `next_due` holds the earliest tick the driver must run
//! `expire` at for that stripe's entries (`u64::MAX`: none); the wheel's
//! [`next_due`](TimerWheel::next_due) is the minimum over the stripes. A
//! registrant lowers its stripe's word with `fetch_min` after arming its
//! entry, and is told to wake the driver when it lowered it. `expire`, for
//! each stripe, first swaps the word to `u64::MAX`, then scans the stripe,
//! then lowers the word with `fetch_min` to the earliest deadline still
//! armed there. Every one of these is a read-modify-write (AcqRel) of the
//! one word, so they are totally ordered: a registration ordered before an
//! expirer's swap is seen by its scan (the swap reads its write or a later
//! one); one ordered after it finds a value the expirer has not yet lowered
//! to cover it, lowers it, and wakes the driver if it lowered it. No
//! deadline is left without a driver wake-up at or before it.
//!
//! A registration lower than its stripe's word but not lower than another
//! stripe's still asks for a wake-up the driver did not need (it wakes,
//! reads the minimum again and sleeps for the same instant); that happens
//! at most once per stripe after each expiry has emptied it. Telling exactly
//! would mean reading the other stripes' words, which other cores write.
//!
//! The scan visits each stripe's entries below its `high`, the highest
//! index ever taken there plus one (the free stack hands out low indices
//! first, so `high` follows the peak number of concurrent timers, not the
//! capacity).
//!
//! The waker cell is the admission queue's (`queue/slot.rs`): a wake that
//! races a registration leaves the cell to the owner, which reads the state
//! word again after registering and sees `FIRED`.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use core::task::{Poll, Waker};
use core::time::Duration;

use crossbeam_utils::CachePadded;

use crate::error::ConfigError;
use crate::queue::{Callbacks, FreeStack, MAX_FREE_LEN, WakerCell};
use crate::stripe::{self, STRIPES};
use crate::sync::{AtomicU64, Ordering};
use crate::time::{Timestamp, checked_nanos};

/// The phase bits.
const PHASE_MASK: u64 = 0b11;
/// On the free stack, or taken and not yet armed.
const FREE: u64 = 0;
/// Waiting for its deadline.
const ARMED: u64 = 1;
/// Its deadline passed; an expirer fired it.
const FIRED: u64 = 2;
/// The owner still holds the entry.
const OWN: u64 = 1 << 2;
/// An expirer is still waking the owner.
const DRIVER: u64 = 1 << 3;
const GEN_SHIFT: u32 = 8;
/// The generation's width: 56 bits, wrapping (after 2^56 uses of one entry).
const GEN_MASK: u64 = u64::MAX >> GEN_SHIFT;

/// No tick: nothing to wait for.
const NONE: u64 = u64::MAX;

/// The largest capacity a wheel takes (the free stack's index width:
/// `2^22 - 2`).
pub const MAX_CAPACITY: usize = MAX_FREE_LEN;

#[inline]
fn phase(word: u64) -> u64 {
    word & PHASE_MASK
}

#[inline]
fn generation(word: u64) -> u64 {
    word >> GEN_SHIFT
}

#[inline]
fn word(generation: u64, phase: u64, refs: u64) -> u64 {
    (generation << GEN_SHIFT) | refs | phase
}

/// One timer.
struct Entry {
    /// See the bit table at the top of the module.
    state: AtomicU64,
    /// The deadline, in ticks, of the current use.
    deadline: AtomicU64,
    waker: WakerCell,
}

/// A registered timer: which entry, and which use of it. Give it back with
/// [`TimerWheel::cancel`] (fired or not) exactly once; an entry that is
/// never given back stays taken.
#[must_use = "an entry that is not cancelled stays taken"]
pub struct TimerEntry {
    /// The entry, in the wheel's array.
    index: u32,
    /// The stripe it was taken from, and goes back to.
    stripe: u32,
    generation: u64,
    /// The identity (data and vtable addresses) of the waker last stored, so
    /// that a poll with the same waker does not store it again.
    registered: (usize, usize),
}

impl fmt::Debug for TimerEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerEntry")
            .field("index", &self.index)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

fn identity(waker: &Waker) -> (usize, usize) {
    (
        waker.data() as usize,
        core::ptr::from_ref(waker.vtable()) as usize,
    )
}

/// What [`TimerWheel::register`] did.
#[derive(Debug)]
pub struct Registered {
    /// The timer.
    pub entry: TimerEntry,
    /// Its deadline is earlier than any other armed in its stripe, so
    /// perhaps earlier than what the driver waits for: wake the driver so
    /// that it sleeps until [`TimerWheel::next_due`] instead. (When another
    /// stripe holds an earlier deadline the wake-up was not needed; see
    /// the module documentation.)
    pub wake_driver: bool,
}

/// Every entry is taken: [`TimerWheel::register`] could not arm a timer.
/// The caller falls back to a timer of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WheelFull;

impl fmt::Display for WheelFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("every entry of the timer wheel is taken")
    }
}

#[cfg(feature = "std")]
impl std::error::Error for WheelFull {}

/// What one [`TimerWheel::expire`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expired {
    /// Entries it fired (and whose owners it woke).
    pub fired: usize,
    /// When the driver must run `expire` next: the earliest deadline still
    /// armed, on the tick grid; `None` when nothing is armed.
    pub next: Option<Timestamp>,
}

/// A fixed set of timers shared by many requests and one driver. See the
/// [module documentation](self).
///
/// ```
/// use core::task::{Poll, Waker};
/// use core::time::Duration;
/// use tenlives_engine::time::Timestamp;
/// use tenlives_engine::timer::TimerWheel;
///
/// let wheel = TimerWheel::new(64, Duration::from_millis(1)).unwrap();
/// let waker = Waker::noop();
/// let reg = wheel.register(Timestamp::from_nanos(5_000_000), waker).unwrap();
/// assert!(reg.wake_driver); // the first deadline: the driver must wake for it
/// let mut entry = reg.entry;
/// assert_eq!(wheel.next_due(), Some(Timestamp::from_nanos(5_000_000)));
///
/// assert_eq!(wheel.expire(Timestamp::from_nanos(4_999_999)).fired, 0);
/// assert!(wheel.poll(&mut entry, waker).is_pending());
/// assert_eq!(wheel.expire(Timestamp::from_nanos(5_000_000)).fired, 1);
/// assert!(wheel.poll(&mut entry, waker).is_ready());
/// wheel.cancel(entry); // fired or not, the entry goes back
/// ```
pub struct TimerWheel {
    entries: Box<[Entry]>,
    /// A power of two of them, each over its own run of `entries`.
    stripes: Box<[CachePadded<Stripe>]>,
    /// Nanoseconds per tick.
    resolution: u64,
}

/// A run of entries with its own free stack, scan bound and `next_due`
/// word, written mostly by the thread whose stripe it is (see the module
/// documentation).
struct Stripe {
    /// The index of its first entry in the wheel's array.
    start: usize,
    /// Its entries not in use, numbered from `start`.
    free: FreeStack,
    /// One past the highest of its indices (from `start`) ever taken: the
    /// scan's bound. Only grows.
    high: AtomicU64,
    /// The earliest tick `expire` must run at for its entries, or `NONE`
    /// (see the module documentation).
    next_due: AtomicU64,
}

// SAFETY: the only non-`Sync` part is each entry's waker cell, which is
// touched only by the party its state names (the owner while registering or
// clearing, an expirer while waking; see `WakerCell`) or by the owner alone
// while the entry is off the free stack and not armed, with Release/Acquire
// hand-overs between them. Wakers are `Send + Sync`.
unsafe impl Sync for TimerWheel {}

impl fmt::Debug for TimerWheel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerWheel")
            .field("capacity", &self.entries.len())
            .field("resolution", &Duration::from_nanos(self.resolution))
            .finish_non_exhaustive()
    }
}

impl TimerWheel {
    /// A wheel of `capacity` timers on ticks of `resolution`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero capacity,
    /// [`ConfigError::ZeroDuration`] for a resolution under a nanosecond,
    /// [`ConfigError::TooLarge`] for a capacity above [`MAX_CAPACITY`],
    /// [`ConfigError::DurationOverflow`] for a resolution past `u64`
    /// nanoseconds.
    pub fn new(capacity: usize, resolution: Duration) -> Result<Self, ConfigError> {
        if capacity == 0 {
            return Err(ConfigError::Zero { field: "capacity" });
        }
        if capacity > MAX_CAPACITY {
            return Err(ConfigError::TooLarge {
                field: "capacity",
                value: capacity as u64,
                max: MAX_CAPACITY as u64,
            });
        }
        let resolution = checked_nanos("resolution", resolution)?;
        if resolution == 0 {
            return Err(ConfigError::ZeroDuration {
                field: "resolution",
            });
        }
        let entries: Vec<Entry> = (0..capacity)
            .map(|_| Entry {
                state: AtomicU64::new(word(0, FREE, 0)),
                deadline: AtomicU64::new(NONE),
                waker: WakerCell::new(),
            })
            .collect();
        // The largest power of two of stripes that gives each an entry; the
        // first `capacity % count` take one entry more than the rest.
        let count = if capacity >= STRIPES {
            STRIPES
        } else {
            1 << capacity.ilog2()
        };
        let mut start = 0;
        let stripes: Vec<CachePadded<Stripe>> = (0..count)
            .map(|s| {
                let len = capacity / count + usize::from(s < capacity % count);
                let stripe = Stripe {
                    start,
                    free: FreeStack::full(len),
                    high: AtomicU64::new(0),
                    next_due: AtomicU64::new(NONE),
                };
                start += len;
                CachePadded::new(stripe)
            })
            .collect();
        Ok(TimerWheel {
            entries: entries.into_boxed_slice(),
            stripes: stripes.into_boxed_slice(),
            resolution,
        })
    }

    /// How many timers it holds.
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// The length of a tick.
    pub fn resolution(&self) -> Duration {
        Duration::from_nanos(self.resolution)
    }

    /// The tick a deadline fires at: rounded up.
    #[inline]
    fn tick_of(&self, deadline: Timestamp) -> u64 {
        deadline.as_nanos().div_ceil(self.resolution)
    }

    /// The instant a tick begins (saturating).
    #[inline]
    fn instant_of(&self, tick: u64) -> Timestamp {
        Timestamp::from_nanos(tick.saturating_mul(self.resolution))
    }

    /// Arms a timer for `deadline` that wakes `waker` when it fires.
    ///
    /// # Errors
    ///
    /// [`WheelFull`] when every entry is taken.
    pub fn register(&self, deadline: Timestamp, waker: &Waker) -> Result<Registered, WheelFull> {
        let (stripe_index, local) = self.take()?;
        let stripe = &self.stripes[stripe_index];
        let index = stripe.start + local;
        let entry = &self.entries[index];
        let tick = self.tick_of(deadline);
        // ordering: Relaxed; the entry is ours (popped with Acquire, after
        // its last user's Release push), nobody else writes its state now.
        let generation = (generation(entry.state.load(Ordering::Relaxed)) + 1) & GEN_MASK;
        // SAFETY: the entry is ours alone: it left the free stack to us, and
        // it is not armed, so no expirer touches its waker cell.
        unsafe { entry.waker.set_exclusive(waker) };
        // ordering: Relaxed; published by the Release store below.
        entry.deadline.store(tick, Ordering::Relaxed);
        // ordering: Release, pairs with the expirers' Acquire loads: an
        // expirer that sees ARMED sees the deadline and the waker.
        entry
            .state
            .store(word(generation, ARMED, OWN), Ordering::Release);
        let bound = local as u64 + 1;
        // ordering: Relaxed for the check; the fetch_max is published to
        // expirers by our AcqRel fetch_min on `next_due` below.
        if stripe.high.load(Ordering::Relaxed) < bound {
            stripe.high.fetch_max(bound, Ordering::Relaxed);
        }
        // ordering: AcqRel, one of the read-modify-writes on the stripe's
        // `next_due` that the module documentation orders: an expirer whose
        // swap reads this write or a later one sees our entry and `high`.
        let before = stripe.next_due.fetch_min(tick, Ordering::AcqRel);
        Ok(Registered {
            entry: TimerEntry {
                index: index as u32,
                stripe: stripe_index as u32,
                generation,
                registered: identity(waker),
            },
            wake_driver: tick < before,
        })
    }

    /// Takes a free entry: from this thread's stripe, or else from the next
    /// stripes in turn. Returns the stripe and the entry's index in it.
    #[inline]
    fn take(&self) -> Result<(usize, usize), WheelFull> {
        let mask = self.stripes.len() - 1;
        let home = stripe::current() & mask;
        if let Some(local) = self.stripes[home].free.pop() {
            return Ok((home, local));
        }
        (1..self.stripes.len())
            .map(|i| (home + i) & mask)
            .find_map(|s| self.stripes[s].free.pop().map(|local| (s, local)))
            .ok_or(WheelFull)
    }

    /// `Ready` once the timer has fired; otherwise `Pending`, with `waker`
    /// stored to be woken when it fires (replacing the one stored before).
    pub fn poll(&self, entry: &mut TimerEntry, waker: &Waker) -> Poll<()> {
        let cell = &self.entries[entry.index as usize];
        if self.fired(entry) {
            return Poll::Ready(());
        }
        let id = identity(waker);
        if id == entry.registered {
            // The cell holds this task's waker already.
            return Poll::Pending;
        }
        cell.waker.register(waker);
        entry.registered = id;
        // Read again: a firing that raced the registration left the cell to
        // us and woke nothing; its FIRED is visible now (see `WakerCell`).
        if self.fired(entry) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Whether the timer has fired.
    pub fn fired(&self, entry: &TimerEntry) -> bool {
        // ordering: Acquire, pairs with the expirer's Release in its firing
        // compare-and-swap (and in the waker cell's wake).
        let s = self.entries[entry.index as usize]
            .state
            .load(Ordering::Acquire);
        debug_assert_eq!(generation(s), entry.generation, "the owner's entry");
        phase(s) == FIRED
    }

    /// Gives the timer back, whether it fired or not: a timer not yet fired
    /// never will; the entry returns to the free stack once no expirer can
    /// touch it.
    pub fn cancel(&self, entry: TimerEntry) {
        let index = entry.index as usize;
        let cell = &self.entries[index];
        let armed = word(entry.generation, ARMED, OWN);
        // ordering: AcqRel on success: the cell's clearing and the push come
        // after it; Acquire on failure, pairs with the expirer's firing
        // compare-and-swap (Release).
        match cell.state.compare_exchange(
            armed,
            word(entry.generation, FREE, 0),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                // SAFETY: no expirer fired this use (our compare-and-swap
                // from ARMED succeeded), so none is waking it or ever will
                // (its compare-and-swap needs ARMED); the owner is us, and
                // the entry is not on the free stack yet.
                unsafe { cell.waker.clear_exclusive() };
                self.give_back(entry.stripe as usize, index);
            }
            Err(_) => {
                // Fired. Empty the cell (a wake still inside it keeps it and
                // takes the waker itself), then give up our reference.
                cell.waker.clear();
                // ordering: AcqRel. Release: our use of the entry happens
                // before its reuse. Acquire: if we are last, we see the
                // expirer's use.
                let before = cell.state.fetch_and(!OWN, Ordering::AcqRel);
                if before & DRIVER == 0 {
                    self.give_back(entry.stripe as usize, index);
                }
            }
        }
    }

    /// Returns entry `index` to stripe `stripe`'s free stack.
    #[inline]
    fn give_back(&self, stripe: usize, index: usize) {
        let stripe = &self.stripes[stripe];
        stripe.free.push(index - stripe.start);
    }

    /// The earliest deadline armed (on the tick grid), as far as the last
    /// registrations and expiry know; `None` if none.
    pub fn next_due(&self) -> Option<Timestamp> {
        let tick = self
            .stripes
            .iter()
            // ordering: Acquire, pairs with the registrants' AcqRel fetch_min.
            .map(|stripe| stripe.next_due.load(Ordering::Acquire))
            .min()
            .unwrap_or(NONE);
        (tick != NONE).then(|| self.instant_of(tick))
    }

    /// Fires every armed timer whose deadline is due at `now`, waking its
    /// owner, and says when to run again.
    pub fn expire(&self, now: Timestamp) -> Expired {
        let now_tick = now.as_nanos() / self.resolution;
        let mut next = NONE;
        let mut fired = 0;
        let mut callbacks = Callbacks::new();
        for stripe in self.stripes.iter() {
            next = next.min(self.expire_stripe(stripe, now_tick, &mut fired, &mut callbacks));
        }
        // A waker's panic, held (with `std`) until the wheel is consistent.
        callbacks.finish();
        Expired {
            fired,
            next: (next != NONE).then(|| self.instant_of(next)),
        }
    }

    /// One stripe's part of [`expire`](Self::expire): fires what is due at
    /// `now_tick` (counting it in `fired`, its wakers into `callbacks`) and
    /// returns the stripe's `next_due` after the pass.
    fn expire_stripe(
        &self,
        stripe: &Stripe,
        now_tick: u64,
        fired: &mut usize,
        callbacks: &mut Callbacks,
    ) -> u64 {
        // ordering: AcqRel, see the module documentation: every registration
        // in this stripe before this swap is visible to the scan below.
        stripe.next_due.swap(NONE, Ordering::AcqRel);
        // ordering: Relaxed; made visible by the swap's Acquire (a
        // registrant raises `high` before its fetch_min on `next_due`).
        let high = stripe.high.load(Ordering::Relaxed) as usize;
        let mut earliest = NONE;
        for local in 0..high {
            let cell = &self.entries[stripe.start + local];
            // ordering: Acquire, pairs with the registrant's Release store:
            // seeing ARMED, we see its deadline and waker.
            let s = cell.state.load(Ordering::Acquire);
            if phase(s) != ARMED {
                continue;
            }
            // ordering: Relaxed; ordered by the Acquire above. A deadline of
            // a later use only leads to a compare-and-swap that fails.
            let tick = cell.deadline.load(Ordering::Relaxed);
            if tick > now_tick {
                earliest = earliest.min(tick);
                continue;
            }
            let firing = word(generation(s), FIRED, OWN | DRIVER);
            // ordering: AcqRel on success: Release publishes FIRED to the
            // owner's Acquire loads; Acquire sees the owner's waker. Relaxed
            // on failure: the owner cancelled, nothing of it is read.
            if cell
                .state
                .compare_exchange(s, firing, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            // The waker is taken while DRIVER keeps the entry ours, and
            // woken last: a waker that panics (user code) finds the entry's
            // bookkeeping done, and the rest of the pass still runs.
            let waker = cell.waker.take_to_wake();
            *fired += 1;
            // ordering: AcqRel, as the owner's clearing of OWN.
            let before = cell.state.fetch_and(!DRIVER, Ordering::AcqRel);
            if before & OWN == 0 {
                stripe.free.push(local);
            }
            callbacks.wake(waker);
        }
        // ordering: AcqRel, see the module documentation.
        let before = stripe.next_due.fetch_min(earliest, Ordering::AcqRel);
        earliest.min(before)
    }
}

#[cfg(all(test, not(tenlives_loom)))]
mod tests;
