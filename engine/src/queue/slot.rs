//! A waiter's slot: its state word, its deadline and class, the cell a
//! granted permit travels in, and its waker cell.
//!
//! # The state word
//!
//! ```text
//!  63                                6    5      4       3    2     0
//! +-----------------------------------+--------+-------+-----+-------+
//! |            generation             | NOTICE | SCHED | OWN | phase |
//! +-----------------------------------+--------+-------+-----+-------+
//! ```
//!
//! | field      | meaning                                                        |
//! |------------|----------------------------------------------------------------|
//! | phase      | `FREE`, `WAITING`, or a verdict: `GRANTED`, `CANCELLED`, `TIMED_OUT`, `SHED_*` |
//! | `OWN`      | the owner (a [`Waiter`](super::Waiter)) still needs the slot   |
//! | `SCHED`    | the dispatcher still needs it: an arrival notice is in the mailbox, the slot is linked in the scheduler, or a grant or shed is being delivered |
//! | `NOTICE`   | a retirement notice for the slot is in the mailbox (or about to be) |
//! | generation | bits 6..=63 (58 bits; 2 under `cfg(tenlives_loom)`), bumped (wrapping) at each allocation, so that a stale compare-and-swap (a sweeper that loaded the word of an earlier use of the slot) fails |
//!
//! Who can hold a stale word: not the owner (its slot is not reused while
//! it holds `OWN`) and not the dispatcher (while it holds `SCHED`), only a
//! sweeper ([`AdmissionQueue::expire`](super::AdmissionQueue::expire)),
//! which reads every slot's word without holding a reference bit. Its
//! compare-and-swap succeeds on a later use only if the generation came
//! back to the same value: `2^58` reuses of one slot during one sweep's
//! load-to-swap window, which no machine reaches.
//!
//! The three reference bits make the slot's lifetime: whoever clears the
//! last of them pushes the slot back on the free stack. A slot is therefore
//! never reused while a notice for it is still in the mailbox or while any
//! party may still touch its cells.
//!
//! | transition                                   | by                  | atomic step |
//! |----------------------------------------------|---------------------|-------------|
//! | `FREE` → `WAITING`, `OWN + SCHED`            | the enqueuer (the slot is its own) | one store (Release) |
//! | `WAITING` → `GRANTED`                        | the dispatcher      | compare-and-swap |
//! | `WAITING` → `SHED_*`                         | the dispatcher      | compare-and-swap |
//! | `WAITING` → `TIMED_OUT`, `+ NOTICE`          | a sweeper (`expire`) | compare-and-swap |
//! | `WAITING` → `TIMED_OUT`, `- OWN + NOTICE`    | the owner, past its deadline | compare-and-swap |
//! | `WAITING` → `CANCELLED`, `- OWN + NOTICE`    | the owner, dropped  | compare-and-swap |
//! | clear `OWN` / `SCHED` / `NOTICE`             | owner / dispatcher / dispatcher | `fetch_and`, or a store by the last holder |
//!
//! Every move out of `WAITING` is one compare-and-swap from the exact word
//! `(generation, WAITING, OWN + SCHED)`, so exactly one party decides a
//! waiter's fate, and only that party wakes it (if it is not the owner
//! itself).

use core::task::Waker;

use crate::sync::{AtomicU64, ExclusiveCell, Ordering};

/// The phase bits.
pub(super) const PHASE_MASK: u64 = 0b111;
/// In the free stack.
pub(super) const FREE: u64 = 0;
/// Queued, waiting for a permit.
pub(super) const WAITING: u64 = 1;
/// A permit is in the slot's permit cell, for the owner to take.
pub(super) const GRANTED: u64 = 2;
/// The owner gave up (dropped its waiter).
pub(super) const CANCELLED: u64 = 3;
/// The deadline passed first.
pub(super) const TIMED_OUT: u64 = 4;
/// Refused because the queue was full (the newest is shed).
pub(super) const SHED_FULL: u64 = 5;
/// Shed as the oldest waiter when a newer one overflowed the queue.
pub(super) const SHED_OLDEST: u64 = 6;
/// Shed as the lowest-priority waiter when the queue overflowed.
pub(super) const SHED_PRIORITY: u64 = 7;

/// The owner still needs the slot.
pub(super) const OWN: u64 = 1 << 3;
/// The dispatcher still needs the slot.
pub(super) const SCHED: u64 = 1 << 4;
/// A retirement notice is pending.
pub(super) const NOTICE: u64 = 1 << 5;
/// All reference bits.
pub(super) const REFS: u64 = OWN | SCHED | NOTICE;

const GEN_SHIFT: u32 = 6;
/// The generation's bits, once shifted down: 58 (2 under loom).
#[cfg(not(tenlives_loom))]
const GEN_MASK: u64 = u64::MAX >> GEN_SHIFT;
#[cfg(tenlives_loom)]
const GEN_MASK: u64 = 0b11;

/// The state word, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Word(pub(super) u64);

impl Word {
    /// A freshly enqueued waiter of generation `generation` (taken modulo
    /// the generation's width).
    #[inline]
    pub(super) const fn waiting(generation: u64) -> Word {
        Word(((generation & GEN_MASK) << GEN_SHIFT) | OWN | SCHED | WAITING)
    }
    #[inline]
    pub(super) const fn generation(self) -> u64 {
        (self.0 >> GEN_SHIFT) & GEN_MASK
    }
    #[inline]
    pub(super) const fn phase(self) -> u64 {
        self.0 & PHASE_MASK
    }
    #[inline]
    pub(super) const fn is_waiting(self) -> bool {
        self.phase() == WAITING
    }
    /// The same generation in phase `phase`, with reference bits `refs`.
    #[inline]
    pub(super) const fn decided(self, phase: u64, refs: u64) -> Word {
        Word((self.0 & !(PHASE_MASK | REFS)) | phase | refs)
    }
}

/// One waiter's storage. `T` is the permit source's permit.
pub(super) struct Slot<T> {
    /// See the module documentation.
    pub(super) word: AtomicU64,
    /// The waiter's deadline in nanoseconds; written by the enqueuer before
    /// the `WAITING` store, read by sweepers after loading `WAITING`.
    pub(super) deadline: AtomicU64,
    /// The waiter's class; written like `deadline`, read by the dispatcher.
    pub(super) class: AtomicU64,
    /// The permit on its way from the dispatcher to the owner. Written by the
    /// dispatcher while the slot is `WAITING` (before its compare-and-swap to
    /// `GRANTED`), taken by the owner once it has seen `GRANTED`.
    pub(super) permit: ExclusiveCell<Option<T>>,
    /// Who to wake when the slot is decided by someone other than its owner.
    pub(super) waker: WakerCell,
}

impl<T> Slot<T> {
    pub(super) fn new() -> Self {
        Slot {
            word: AtomicU64::new(FREE),
            deadline: AtomicU64::new(0),
            class: AtomicU64::new(0),
            permit: ExclusiveCell::new(None),
            waker: WakerCell::new(),
        }
    }

    /// Clears `bits` of the reference bits; returns whether they were the
    /// last ones (the caller must then free the slot).
    ///
    /// Reference bits are only ever cleared once the slot has left
    /// `WAITING` (nothing sets them again before the slot is reused), so a
    /// party that sees only its own bits left is the last one, and nobody
    /// else writes the word: a plain store then does, saving the
    /// read-modify-write.
    #[inline]
    pub(super) fn release_refs(&self, bits: u64) -> bool {
        // ordering: Acquire, pairs with the Release of the other parties'
        // clears: if we are the last, we see what they did before we free.
        let current = self.word.load(Ordering::Acquire);
        debug_assert_eq!(current & bits, bits, "reference bits cleared twice");
        if current & REFS == bits {
            // ordering: Release; the free stack's push (Release) publishes
            // the slot to its next user anyway.
            self.word.store(current & !bits, Ordering::Release);
            return true;
        }
        // ordering: AcqRel. Release: everything this party did with the slot
        // happens before the slot is reused. Acquire: the party that clears
        // the last bit (and frees the slot) sees what the others did.
        let before = self.word.fetch_and(!bits, Ordering::AcqRel);
        before & REFS == bits
    }
}

/// The waker cell's state: nobody inside it.
const IDLE: u64 = 0;
/// The owner is storing or clearing a waker.
const REGISTERING: u64 = 0b01;
/// The decider is taking the waker out to wake it.
const WAKING: u64 = 0b10;

/// A cell holding the owner's [`Waker`], shared between the owner (who
/// stores and replaces it) and whoever decides the slot (who takes it out and
/// wakes it), without a lock.
///
/// | `state`                 | who may touch `waker`                                |
/// |-------------------------|------------------------------------------------------|
/// | `IDLE`                  | nobody                                               |
/// | `REGISTERING`           | the owner                                            |
/// | `WAKING`                | the waker                                            |
/// | `REGISTERING + WAKING`  | the owner; the waker left the cell to it             |
///
/// Unlike the usual atomic waker, a registration that races a wake does not
/// wake anything: the owner always reads the slot's phase again after
/// registering, and the decision that the wake announces happened before it,
/// so the owner sees it. That keeps the rule "a waiter is woken at most once
/// by the queue" exact.
pub(crate) struct WakerCell {
    state: AtomicU64,
    waker: ExclusiveCell<Option<Waker>>,
}

impl WakerCell {
    pub(crate) fn new() -> Self {
        WakerCell {
            state: AtomicU64::new(IDLE),
            waker: ExclusiveCell::new(None),
        }
    }

    /// Stores `waker` in a cell nobody else can reach.
    ///
    /// # Safety
    ///
    /// The caller owns the slot exclusively (it just took it from the free
    /// stack), so no `register`, `clear` or `wake` can run on this cell.
    pub(crate) unsafe fn set_exclusive(&self, waker: &Waker) {
        // SAFETY: exclusive by the caller's contract.
        unsafe { self.waker.with_mut(|w| set(w, waker)) };
    }

    /// Drops the stored waker from a cell nobody else can reach.
    ///
    /// # Safety
    ///
    /// No `register`, `clear` or `wake` can run on this cell now (the
    /// caller's protocol keeps every other party out), and none is half done.
    pub(crate) unsafe fn clear_exclusive(&self) {
        // SAFETY: exclusive by the caller's contract.
        let old = unsafe { self.waker.with_mut(Option::take) };
        drop(old);
    }

    /// Stores `waker` (if it would not wake the same task as the one
    /// stored). A wake racing this call leaves the cell to it and wakes
    /// nothing; the caller must read the slot's phase after this returns.
    pub(crate) fn register(&self, waker: &Waker) {
        if self.enter() {
            // SAFETY: REGISTERING keeps `wake` out of the cell (see the table).
            unsafe { self.waker.with_mut(|w| set(w, waker)) };
            self.leave();
        }
    }

    /// Drops the stored waker (the owner is done with the slot).
    pub(crate) fn clear(&self) {
        if self.enter() {
            // SAFETY: REGISTERING keeps `wake` out of the cell.
            let old = unsafe { self.waker.with_mut(Option::take) };
            self.leave();
            drop(old);
        }
    }

    /// Takes the waker out for the decider to wake, unless the owner is
    /// registering (then the owner will see the decision by itself, and
    /// `None` is returned). The caller finishes its bookkeeping of the slot
    /// first and wakes last (through [`Callbacks`](super::Callbacks)), so that a
    /// waker that panics leaves nothing half done.
    pub(crate) fn take_to_wake(&self) -> Option<Waker> {
        // ordering: AcqRel. Release: the decision made before this call is
        // visible to an owner whose `enter` fails on WAKING. Acquire: we see
        // the waker the owner stored before its Release in `leave`.
        if self.state.fetch_or(WAKING, Ordering::AcqRel) == IDLE {
            // SAFETY: we moved the state from IDLE to WAKING: the cell is ours.
            let waker = unsafe { self.waker.with_mut(Option::take) };
            // A plain store: while WAKING is set (and REGISTERING is not),
            // nobody else changes the state (`enter` fails, and `leave` only
            // follows a successful `enter`).
            // ordering: Release, pairs with the Acquire of the owner's next
            // `enter`: our take happens before its access.
            self.state.store(IDLE, Ordering::Release);
            waker
        } else {
            None
        }
    }

    /// Takes the cell for the owner: `false` if a wake is in progress (then
    /// the owner must not touch it, and need not).
    fn enter(&self) -> bool {
        // ordering: Acquire on both outcomes, pairs with the Release of the
        // last writer: on success we see the cell as it was left; on failure
        // (WAKING) we see the decision the wake announces.
        self.state
            .compare_exchange(IDLE, REGISTERING, Ordering::Acquire, Ordering::Acquire)
            .is_ok()
    }

    /// Gives the cell back after `enter`.
    fn leave(&self) {
        // ordering: AcqRel on success (Release: a later `wake` sees what we
        // stored); Acquire on failure, pairs with the `wake` that set WAKING
        // meanwhile: the decision it announces is visible to our caller.
        if self
            .state
            .compare_exchange(REGISTERING, IDLE, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // A wake came while we held the cell and left it to us: it
            // woke nothing. Our caller re-reads the phase and sees the
            // decision; the waker we stored will not be needed.
            // SAFETY: the state is REGISTERING + WAKING: the cell is still ours.
            let stale = unsafe { self.waker.with_mut(Option::take) };
            // ordering: Release, pairs with the Acquire of the next `enter`.
            self.state.store(IDLE, Ordering::Release);
            drop(stale);
        }
    }
}

fn set(cell: &mut Option<Waker>, waker: &Waker) {
    match cell {
        Some(old) if old.will_wake(waker) => {}
        _ => *cell = Some(waker.clone()),
    }
}
