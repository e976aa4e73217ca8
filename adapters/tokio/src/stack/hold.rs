//! Holding a request the breaker refused for the breaker's next answer
//! ([`StackBuilder::hold_for_breaker`](super::StackBuilder::hold_for_breaker)).
//!
//! A fixed array of `cap` waiter slots, made once when the stack is built:
//! a held request takes a free slot (one compare-and-swap of an occupancy
//! word), registers its waker there, and gives the slot back when it stops
//! holding or is dropped. When a probe or a scout admitted through the stack
//! reports its outcome, the stack bumps the answer count and wakes every
//! occupied slot; a held request that sees the count move tries admission
//! again. Nothing is allocated and no lock is taken per request; a request
//! that finds every slot taken is refused at once, as without the option.
//!
//! # Waking without a lost wake-up
//!
//! | waiter (held request)                  | notifier (a probe's outcome)        |
//! |----------------------------------------|-------------------------------------|
//! | set its occupancy bit (AcqRel CAS)     | `answers += 1` (SeqCst RMW)         |
//! | register its waker in its slot         | `fence(SeqCst)`                     |
//! | `fence(SeqCst)`                        | load the occupancy words            |
//! | load `answers`                         | wake the slot of every set bit      |
//!
//! Either the waiter's load sees the new count (and it tries again at
//! once), or, the two fences ordered the other way, the notifier's loads
//! see the waiter's bit and its registered waker, and the wake reaches it.
//! A wake that reaches a slot given back and taken again meanwhile only
//! makes its new owner poll once more.

use std::fmt;
use std::task::Waker;
use std::time::Duration;

// The atomics and the waker cells come from loom under `--cfg tenlives_loom`:
// loom-tests/tests/loom_hold.rs compiles this very file (through `#[path]`)
// and checks the table above on it. Nothing else here names their origin.
#[cfg(not(tenlives_loom))]
use atomic_waker::AtomicWaker;
#[cfg(tenlives_loom)]
use loom::future::AtomicWaker;
#[cfg(tenlives_loom)]
use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
#[cfg(not(tenlives_loom))]
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use tenlives_engine::ConfigError;

/// Stores `waker` in `cell` (`atomic_waker` and loom name it differently).
#[cfg(not(tenlives_loom))]
fn put_waker(cell: &AtomicWaker, waker: &Waker) {
    cell.register(waker);
}
#[cfg(tenlives_loom)]
fn put_waker(cell: &AtomicWaker, waker: &Waker) {
    cell.register_by_ref(waker);
}

/// Takes the waker out of `cell`, if any.
#[cfg(not(tenlives_loom))]
fn take_waker(cell: &AtomicWaker) -> Option<Waker> {
    cell.take()
}
#[cfg(tenlives_loom)]
fn take_waker(cell: &AtomicWaker) -> Option<Waker> {
    cell.take_waker()
}

/// The most requests one stack holds at once.
pub const MAX_HOLD_CAP: usize = 4096;

/// The hold's settings and its waiter slots, shared by a stack's requests.
pub(crate) struct Holds {
    /// The longest a request is held (also bounded by its deadline).
    pub(crate) max_wait: Duration,
    /// Occupancy, one bit per slot (1: taken).
    bits: Box<[AtomicU64]>,
    wakers: Box<[AtomicWaker]>,
    /// Answers of probes and scouts sent through the stack, ever (wraps).
    answers: AtomicU64,
    /// Probes and scouts admitted through the stack and not yet ended.
    probes: AtomicU32,
}

impl fmt::Debug for Holds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Holds")
            .field("max_wait", &self.max_wait)
            .field("cap", &self.cap())
            .field("held", &self.held())
            .field("probes_in_flight", &self.probes_in_flight())
            .finish()
    }
}

impl Holds {
    /// Validates the settings: a wait of more than zero, a cap of 1 to
    /// [`MAX_HOLD_CAP`].
    pub(crate) fn check(max_wait: Duration, cap: usize) -> Result<(), ConfigError> {
        if max_wait.is_zero() {
            return Err(ConfigError::ZeroDuration {
                field: "hold max_wait",
            });
        }
        if cap == 0 {
            return Err(ConfigError::Zero { field: "hold cap" });
        }
        if cap > MAX_HOLD_CAP {
            return Err(ConfigError::TooLarge {
                field: "hold cap",
                value: cap as u64,
                max: MAX_HOLD_CAP as u64,
            });
        }
        Ok(())
    }

    /// `cap` slots (checked by [`check`](Self::check)).
    pub(crate) fn new(max_wait: Duration, cap: usize) -> Self {
        let words = cap.div_ceil(64);
        // The bits past `cap` in the last word are set for good: never free.
        let padding = if cap.is_multiple_of(64) {
            0
        } else {
            !0u64 << (cap % 64)
        };
        Holds {
            max_wait,
            bits: (0..words)
                .map(|w| AtomicU64::new(if w + 1 == words { padding } else { 0 }))
                .collect(),
            wakers: (0..cap).map(|_| AtomicWaker::new()).collect(),
            answers: AtomicU64::new(0),
            probes: AtomicU32::new(0),
        }
    }

    /// How many requests may be held at once.
    pub(crate) fn cap(&self) -> usize {
        self.wakers.len()
    }

    /// Requests held now (a statistic: it reads every word).
    pub(crate) fn held(&self) -> usize {
        let taken: u32 = self
            .bits
            .iter()
            // ordering: Relaxed; a statistic.
            .map(|w| w.load(Ordering::Relaxed).count_ones())
            .sum();
        let padding = self.bits.len() * 64 - self.cap();
        taken as usize - padding
    }

    /// Probes and scouts admitted through the stack, not yet ended.
    pub(crate) fn probes_in_flight(&self) -> u32 {
        // ordering: Relaxed; a hint for whether an answer is coming.
        self.probes.load(Ordering::Relaxed)
    }

    /// Takes a free slot, if any.
    pub(crate) fn claim(&self) -> Option<usize> {
        for (w, word) in self.bits.iter().enumerate() {
            // ordering: Relaxed; the compare-and-swap decides.
            let mut cur = word.load(Ordering::Relaxed);
            while cur != u64::MAX {
                let bit = (!cur).trailing_zeros();
                // ordering: AcqRel; Acquire sees the previous owner's
                // release of the slot (its waker taken), Release is not
                // needed by the notifier (its fence orders the load).
                match word.compare_exchange_weak(
                    cur,
                    cur | (1 << bit),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Some(w * 64 + bit as usize),
                    Err(actual) => cur = actual,
                }
            }
        }
        None
    }

    /// Registers `waker` in `slot` and returns the answer count to compare
    /// with (see the module's table).
    pub(crate) fn register(&self, slot: usize, waker: &Waker) -> u64 {
        put_waker(&self.wakers[slot], waker);
        // ordering: SeqCst fence, pairs with the notifier's: see the table.
        fence(Ordering::SeqCst);
        // ordering: Acquire, pairs with the notifier's bump: a request that
        // sees the answer sees the breaker's transition made before it.
        self.answers.load(Ordering::Acquire)
    }

    /// Gives `slot` back.
    pub(crate) fn release(&self, slot: usize) {
        drop(take_waker(&self.wakers[slot]));
        // ordering: Release, pairs with the next claimer's Acquire.
        self.bits[slot / 64].fetch_and(!(1 << (slot % 64)), Ordering::Release);
    }

    /// A probe or a scout was admitted.
    pub(crate) fn probe_sent(&self) {
        // ordering: Relaxed; a count read as a hint.
        self.probes.fetch_add(1, Ordering::Relaxed);
    }

    /// A probe or a scout ended unreported (cancelled, or its caller
    /// panicked): the breaker heard nothing, so nobody is woken.
    pub(crate) fn probe_dropped(&self) {
        // ordering: Relaxed; as `probe_sent`.
        self.probes.fetch_sub(1, Ordering::Relaxed);
    }

    /// A probe or a scout reported its outcome to the breaker: wake every
    /// held request to try again.
    pub(crate) fn probe_answered(&self) {
        self.probe_dropped();
        // ordering: SeqCst; see the module's table.
        self.answers.fetch_add(1, Ordering::SeqCst);
        // ordering: SeqCst fence, pairs with the waiters'.
        fence(Ordering::SeqCst);
        let padding_from = self.cap();
        for (w, word) in self.bits.iter().enumerate() {
            // ordering: Relaxed; the fence above orders it.
            let mut taken = word.load(Ordering::Relaxed);
            while taken != 0 {
                let bit = taken.trailing_zeros() as usize;
                taken &= taken - 1;
                let slot = w * 64 + bit;
                if slot >= padding_from {
                    break;
                }
                self.wakers[slot].wake();
            }
        }
    }
}

/// A request's hold: its slot, the answer count it waits to see move, and
/// its bounds.
#[derive(Debug)]
pub(crate) struct Hold {
    pub(crate) slot: usize,
    /// The answer count seen when the slot was registered (`None` until the
    /// first registration).
    pub(crate) seen: Option<u64>,
    /// The count moved since: the breaker answered.
    pub(crate) answered: bool,
    /// The hold ends here (the hold's bound or the deadline, the earlier).
    pub(crate) until: tenlives_engine::time::Timestamp,
    /// When the breaker's next answer is due (a scout or a probe), if known.
    pub(crate) due: Option<tenlives_engine::time::Timestamp>,
}
