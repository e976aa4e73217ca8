//! A bounded, fair admission queue in front of a permit source.
//!
//! An [`AdmissionQueue`] sits in front of anything that hands out permits
//! without waiting (a [`Bulkhead`] is the usual one; see [`PermitSource`]).
//! A caller either gets a permit at once or waits in the queue, with a
//! [`Waker`] and a deadline, and is woken when its turn comes, when it is
//! shed to make room, or when a sweep finds its deadline passed. Waiting
//! needs no runtime: [`Acquire`] is a plain [`Future`]
//! over `core::task`, and the engine still reads no clock (the future asks
//! the [`Clock`] it is given; [`AdmissionQueue::expire`] takes `now`).
//!
//! ```
//! use core::pin::pin;
//! use core::future::Future;
//! use core::task::{Context, Poll, Waker};
//! use tenlives_engine::bulkhead::Bulkhead;
//! use tenlives_engine::queue::{AdmissionQueue, QueueConfig};
//! use tenlives_engine::time::{ManualClock, Timestamp};
//!
//! let queue = AdmissionQueue::new(Bulkhead::new(1)?, QueueConfig::fifo(16)?);
//! let clock = ManualClock::new();
//! let mut cx = Context::from_waker(Waker::noop());
//!
//! let first = queue.try_acquire().expect("the permit is free: no queueing");
//! let mut second = pin!(queue.acquire(0, Timestamp::MAX, &clock));
//! assert!(second.as_mut().poll(&mut cx).is_pending(), "queued behind `first`");
//! assert_eq!(queue.waiting(), 1);
//!
//! drop(first); // the permit goes straight to the waiter, not back to the bulkhead
//! let Poll::Ready(Ok(permit)) = second.as_mut().poll(&mut cx) else { panic!() };
//! assert_eq!(queue.source().in_flight(), 1);
//! drop(permit);
//! assert_eq!(queue.source().in_flight(), 0);
//! # Ok::<(), tenlives_engine::ConfigError>(())
//! ```
//!
//! # Strategies
//!
//! Waiters belong to a class (a tenant, a priority class; 0 for FIFO). The
//! queue keeps one FIFO list per class, and when a permit is free the
//! dispatcher picks the class to serve by **deficit round robin**: a cursor
//! visits the classes that have waiters in index order, cyclically; on each
//! visit a class of weight `w` gets up to `w` grants (its *deficit*), one per
//! free permit, before the cursor moves on; a class whose list empties loses
//! what is left of its deficit. The three configurations of [`QueueConfig`]
//! are this one rule:
//!
//! - [`QueueConfig::fifo`]: one class: grants in order of arrival.
//! - [`QueueConfig::round_robin`]: `n` classes of weight 1: one grant per
//!   class with waiters, in turn.
//! - [`QueueConfig::weighted`]: under saturation (every class always has
//!   waiters) each round grants exactly `w` to each class, so class `c`
//!   gets `w_c / sum(w)` of the grants.
//!
//! "Arrival" is the order in which the dispatcher reads the enqueuers'
//! notices: for two calls to [`enqueue`](AdmissionQueue::enqueue) of which
//! one returned before the other began, the order of the calls.
//!
//! # No starvation
//!
//! A waiter of class `c` (weight `w_c`) that joins behind `p` waiters of its
//! class is granted by the `ceil((p + 1) / w_c) * sum(w)`-th grant the queue
//! makes after it joined, counting its own
//! ([`QueueConfig::grant_bound`]), unless it is shed or its deadline passes
//! first: it needs `ceil((p + 1) / w_c)` visits of its class, and before
//! each the other classes get at most `sum(w) - w_c` grants. Since `p` is
//! below the capacity `C`, no waiter waits more than
//! `ceil(C / w_c) * sum(w)` grants. In time: if the source frees a permit at
//! least every `t`, within that many `t`. The fairness simulation in
//! `engine/tests/queue_fairness.rs` checks both the shares and this bound.
//!
//! # Overload
//!
//! The queue holds at most `capacity` waiters. When an arrival overflows it,
//! the dispatcher sheds one waiter by the configured [`Overload`] policy —
//! the newcomer, the oldest waiter, or the newest waiter of the
//! lowest-priority class — and wakes it in the same dispatcher pass that
//! linked the newcomer: a shed caller learns why at once, never after a
//! permit or a deadline. Under [`Overload::ShedNewest`] an arrival that
//! finds the queue full is refused before it even takes a slot. Waiters are
//! kept in `2 * capacity` preallocated slots; a slot stays in use until its
//! owner has read the verdict (or dropped its waiter), so a caller that
//! finds all slots in use — `capacity` waiters plus `capacity` unread
//! verdicts — is refused with [`Rejected::QueueFull`] whatever the policy.
//!
//! # Deadlines
//!
//! The engine owns no timer. A deadline is checked when the owner polls
//! with the current time ([`Waiter::poll_permit`], or [`Acquire`], which
//! reads its clock at each poll), and by [`AdmissionQueue::expire`], a sweep
//! over every slot that times out, wakes and removes every waiter whose
//! deadline is at or before `now`. An adapter either arms a timer for the
//! waiter's deadline that wakes its task, or calls `expire` periodically. A
//! waiter may be granted after its deadline if nobody looked in between; it
//! then simply has its permit.
//!
//! # The dispatcher
//!
//! Everything that reorders waiters runs in a *dispatcher pass*, and one
//! thread at a time holds the dispatcher role. The role is a counter of
//! requested passes, `ctl`, not a lock:
//!
//! 1. Whoever has something for the dispatcher (an enqueuer, a releaser that
//!    saw waiters, a canceller, a sweeper) first publishes it (a notice in
//!    the mailbox, a permit given back), then `ctl.fetch_add(1)`.
//! 2. If the value before was 0, it now holds the role. Otherwise it
//!    returns at once: the holder will run a pass for it.
//! 3. The holder loops: with `n` the requests it knows of, it runs a pass
//!    (read every notice, grant while there are permits, shed beyond
//!    capacity), then `ctl.fetch_sub(n)`. If the value before was exactly
//!    `n`, nobody asked meanwhile and the counter is back to 0: the role is
//!    released. Otherwise the difference is the requests that came during
//!    the pass, and it runs another.
//!
//! So no thread ever waits for the role: a request is either served by the
//! current holder (whose `fetch_sub` sees it) or makes its requester the
//! holder. The holder may run several passes in a row while others keep
//! asking; each pass does work bounded by the notices and permits there are.
//! If a pass unwinds (a waker panicked), the role is given up on the way.
//!
//! A releaser that sees waiters and finds the role free takes it with a
//! compare-and-swap from 0 to 1 and hands its permit straight to the next
//! waiter; otherwise the permit goes back to the source and, if anyone
//! waits, a pass is requested that takes it from there. Either way, a
//! permit that no waiter can use ends in the source.
//!
//! A release racing an enqueue never strands a waiter. A releaser that gives
//! its permit back to the source then issues a `SeqCst` fence, and only then
//! loads the number of queued waiters, asking for a pass if it is not zero.
//! An enqueuer counts itself queued before asking for a pass, and a pass
//! issues a `SeqCst` fence before it first tries the source. Of the two
//! fences, one comes first: if it is the releaser's, the pass sees the
//! permit given back; if it is the pass's, the releaser sees the waiter and
//! asks for a pass, which sees the permit.
//!
//! A permit handed to a waiter travels in the waiter's slot: the dispatcher
//! puts it in the slot's permit cell, then moves the slot from `WAITING` to
//! `GRANTED` with one compare-and-swap. A waiter that is cancelled or times
//! out moves it from `WAITING` with the same compare-and-swap, so exactly one
//! of them wins. If the cancellation won, the dispatcher takes the permit
//! back and offers it to the next waiter (or gives it back to the source);
//! if the grant won, dropping the waiter releases the permit through the
//! queue, to the next waiter. `docs/admission-queue.md` has the slot's state
//! machine and the mailbox and free-stack protocols.
//!
//! # Cost
//!
//! - [`try_acquire`](AdmissionQueue::try_acquire) (and the first poll of
//!   [`Acquire`]) when nobody waits: one load of the waiter count, then the
//!   source's own acquire. The queue's slots, mailbox and dispatcher are not
//!   touched.
//! - Dropping a [`QueuePermit`] when nobody waits: the source's release, a
//!   `SeqCst` fence and one load.
//! - Enqueueing, granting, cancelling and sweeping take no lock and allocate
//!   nothing; all storage is allocated when the queue is built. A wait
//!   that ends in a hand-over (enqueue, the releaser's pass, the waiter's
//!   poll that takes the permit) is a dozen read-modify-writes, all on the
//!   queue's control line and the waiter's slot, and one `SeqCst` fence.
//!
//! # Owned waiters and permits
//!
//! [`Waiter`], [`Acquire`] and [`QueuePermit`] borrow the queue. For a
//! queue in an `Arc`, [`enqueue_owned`](AdmissionQueue::enqueue_owned) and
//! [`try_acquire_owned`](AdmissionQueue::try_acquire_owned) hand out an
//! [`OwnedWaiter`] and an [`OwnedQueuePermit`] that hold a clone of the
//! `Arc` instead, for futures that must be `'static` (a tower response
//! future, a spawned task). They run the same code as the borrowed forms;
//! a wait clones the `Arc` once, and a grant moves that clone from the
//! waiter into the permit.
//!
//! The guarantees (Q1–Q8) and the tests that check each are in
//! `docs/guarantees.md`; the design and measurements in
//! `docs/admission-queue.md`.

mod config;
mod dispatch;
mod free;
mod mailbox;
mod scheduler;
mod slot;
mod waiter;

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::task::Waker;

use crossbeam_utils::CachePadded;

pub use config::{Busy, MAX_CAPACITY, MAX_CLASSES, Overload, QueueConfig, Rejected};
pub use waiter::{Acquire, OwnedQueuePermit, OwnedWaiter, QueuePermit, Waiter};

use crate::bulkhead::{Bulkhead, RawBulkheadPermit};
use crate::events::{Event, EventKind, EventSink, NoSink};
use crate::sync::{AtomicU64, ExclusiveCell, Ordering, fence};
use crate::time::{Clock, Timestamp};
pub(crate) use free::{FreeStack, MAX_FREE_LEN};
use mailbox::{Mailbox, Notice};
use scheduler::Scheduler;
pub(crate) use slot::WakerCell;
use slot::{NOTICE, OWN, REFS, SCHED, Slot, TIMED_OUT, Word};
use waiter::Ticket;

/// Something that hands out permits without waiting: what an
/// [`AdmissionQueue`] stands in front of.
///
/// The queue brackets its calls with `SeqCst` fences (see "The dispatcher"
/// in the [module documentation](self)), so `try_take` must decide from the
/// source's atomic state at the time of the call: a permit given back before
/// the call (by happens-before or by those fences) must be found.
pub trait PermitSource {
    /// What one permit carries (for a [`Bulkhead`], its raw permit).
    type Permit;

    /// Takes one permit if one is free now. Never waits.
    fn try_take(&self) -> Option<Self::Permit>;

    /// Gives back a permit taken from this source.
    fn give_back(&self, permit: Self::Permit);
}

/// A bulkhead's permits. With an event sink, the bulkhead also reports the
/// dispatcher's `try_take`s that find it full as rejections.
impl<S: EventSink> PermitSource for Bulkhead<S> {
    type Permit = RawBulkheadPermit;

    #[inline]
    fn try_take(&self) -> Option<RawBulkheadPermit> {
        self.try_acquire_raw().ok()
    }

    #[inline]
    fn give_back(&self, permit: RawBulkheadPermit) {
        self.release(permit);
    }
}

impl<T: PermitSource + ?Sized> PermitSource for &T {
    type Permit = T::Permit;

    #[inline]
    fn try_take(&self) -> Option<T::Permit> {
        (**self).try_take()
    }

    #[inline]
    fn give_back(&self, permit: T::Permit) {
        (**self).give_back(permit);
    }
}

impl<T: PermitSource + ?Sized> PermitSource for Arc<T> {
    type Permit = T::Permit;

    #[inline]
    fn try_take(&self) -> Option<T::Permit> {
        (**self).try_take()
    }

    #[inline]
    fn give_back(&self, permit: T::Permit) {
        (**self).give_back(permit);
    }
}

/// A bounded, fair queue of callers waiting for permits of a
/// [`PermitSource`]. See the [module documentation](self).
///
/// All methods take `&self`; share it by reference or in an `Arc`. All its
/// storage is allocated in [`new`](Self::new).
pub struct AdmissionQueue<P: PermitSource, S: EventSink = NoSink> {
    /// The words every enqueue and every dispatcher pass write.
    control: CachePadded<Control>,
    source: P,
    /// Padded: two waiters' slots never share a cache line, so that a
    /// waiter polling its slot does not slow down the grant of its
    /// neighbour.
    slots: Box<[CachePadded<Slot<P::Permit>>]>,
    /// Touched only by the holder of the dispatcher role.
    sched: ExclusiveCell<Scheduler>,
    config: QueueConfig,
    sink: S,
    source_id: u32,
}

// SAFETY: the parts that are not `Sync` by themselves are the cells. The
// scheduler's cell is touched only by the holder of the dispatcher role,
// which `ctl` gives to one thread at a time (taken by the `fetch_add` that
// found 0 with Acquire, left by the `fetch_sub` with Release). Each slot's
// permit and waker cells are touched only by the party their state word or
// waker state names (see `slot.rs`), with Release/Acquire hand-overs.
// Permits move between threads inside the cells, hence `P::Permit: Send`.
unsafe impl<P, S> Sync for AdmissionQueue<P, S>
where
    P: PermitSource + Sync,
    P::Permit: Send,
    S: EventSink + Sync,
{
}

/// The queue's shared words, on one cache line of their own: an enqueue
/// writes all four, a dispatcher pass most, so keeping them together costs
/// one line transfer between cores where four lines would cost four. The
/// fast path only reads `queued`, which no one writes while nobody waits.
struct Control {
    /// Dispatcher passes requested and not yet run; nonzero while a thread
    /// holds the dispatcher role. See "The dispatcher".
    ctl: AtomicU64,
    /// Slots the dispatcher still counts as waiting: an upper bound on the
    /// waiters, exact whenever the dispatcher is idle.
    queued: AtomicU64,
    free: FreeStack,
    mailbox: Mailbox,
}

impl<P: PermitSource> AdmissionQueue<P> {
    /// A queue in front of `source`, emitting no events.
    pub fn new(source: P, config: QueueConfig) -> Self {
        AdmissionQueue::with_sink(source, config, NoSink, 0)
    }
}

impl<P: PermitSource, S: EventSink> fmt::Debug for AdmissionQueue<P, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionQueue")
            .field("waiting", &self.waiting())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<P: PermitSource, S: EventSink> AdmissionQueue<P, S> {
    /// A queue in front of `source` that reports every refusal, shed and
    /// timeout to `sink` as a [`EventKind::QUEUE_REJECTED`] event tagged with
    /// `source_id`.
    pub fn with_sink(source: P, config: QueueConfig, sink: S, source_id: u32) -> Self {
        let slots = 2 * config.capacity() as usize;
        let storage: Vec<CachePadded<Slot<P::Permit>>> =
            (0..slots).map(|_| CachePadded::new(Slot::new())).collect();
        AdmissionQueue {
            control: CachePadded::new(Control {
                ctl: AtomicU64::new(0),
                queued: AtomicU64::new(0),
                free: FreeStack::full(slots),
                mailbox: Mailbox::for_slots(slots),
            }),
            source,
            slots: storage.into_boxed_slice(),
            sched: ExclusiveCell::new(Scheduler::new(slots, config.weights())),
            config,
            sink,
            source_id,
        }
    }

    /// The permit source.
    pub fn source(&self) -> &P {
        &self.source
    }

    /// The configuration.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// The sink events go to.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// Callers waiting for a permit. Exact when no dispatcher pass is
    /// running; during one it may still count waiters just granted, shed,
    /// cancelled or timed out.
    pub fn waiting(&self) -> u32 {
        // ordering: Relaxed; a report.
        self.control.queued.load(Ordering::Relaxed) as u32
    }

    /// Takes a permit if one is free and nobody is waiting. Never waits and
    /// never touches the queue beyond one load of its waiter count.
    ///
    /// # Errors
    ///
    /// [`Busy`] if callers are waiting (they go first) or the source has no
    /// permit free.
    #[inline]
    pub fn try_acquire(&self) -> Result<QueuePermit<'_, P, S>, Busy> {
        self.take_free()
            .map(|permit| QueuePermit::new(self, permit))
    }

    /// As [`try_acquire`](Self::try_acquire), for a queue in an `Arc`: the
    /// permit holds a clone of the `Arc` (made only when a permit is
    /// granted), so it can live in a `'static` future.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tenlives_engine::bulkhead::Bulkhead;
    /// use tenlives_engine::queue::{AdmissionQueue, QueueConfig};
    ///
    /// let queue = Arc::new(AdmissionQueue::new(Bulkhead::new(1)?, QueueConfig::fifo(8)?));
    /// let permit = queue.try_acquire_owned().expect("free");
    /// assert!(queue.try_acquire_owned().is_err());
    /// std::thread::spawn(move || drop(permit)).join().unwrap();
    /// assert_eq!(queue.source().in_flight(), 0);
    /// assert_eq!(Arc::strong_count(&queue), 1);
    /// # Ok::<(), tenlives_engine::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](Self::try_acquire).
    #[inline]
    pub fn try_acquire_owned(self: &Arc<Self>) -> Result<OwnedQueuePermit<P, S>, Busy> {
        self.take_free()
            .map(|permit| OwnedQueuePermit::new(Arc::clone(self), permit))
    }

    /// The fast path of `try_acquire`: a permit from the source if nobody
    /// waits.
    #[inline]
    fn take_free(&self) -> Result<P::Permit, Busy> {
        // ordering: Relaxed; a stale count only decides whether this caller
        // goes before waiters it raced with, never whether a permit is
        // lost: the source's own atomics decide the grant.
        let waiting = self.control.queued.load(Ordering::Relaxed);
        if waiting == 0
            && let Some(permit) = self.source.try_take()
        {
            return Ok(permit);
        }
        Err(Busy {
            waiting: waiting as u32,
        })
    }

    /// A future that takes a permit at once if one is free and nobody
    /// waits, and otherwise waits in `class` until it is granted one, shed,
    /// or `deadline` passes (by `clock`, read at each poll, or by an
    /// [`expire`](Self::expire) sweep). Dropping it gives up its place, or
    /// passes on a permit granted meanwhile.
    pub fn acquire<C: Clock>(
        &self,
        class: u16,
        deadline: Timestamp,
        clock: C,
    ) -> Acquire<'_, P, S, C> {
        Acquire::new(self, class, deadline, clock)
    }

    /// Queues a waiter in `class`, to be woken through `waker` when it is
    /// decided. Never takes a free permit directly: call
    /// [`try_acquire`](Self::try_acquire) first (as [`Acquire`] does). The
    /// dispatcher pass this call asks for may already decide the waiter
    /// (grant it a free permit, or shed it); poll it to find out.
    ///
    /// # Errors
    ///
    /// [`Rejected::UnknownClass`] for a class the configuration does not
    /// have; [`Rejected::QueueFull`] when the queue is full under
    /// [`Overload::ShedNewest`], or every slot is in use.
    pub fn enqueue(
        &self,
        class: u16,
        deadline: Timestamp,
        waker: &Waker,
    ) -> Result<Waiter<'_, P, S>, Rejected> {
        let ticket = self.enqueue_ticket(class, deadline, waker)?;
        // The waiter exists before the pass runs: if a waker panics in it,
        // unwinding drops the waiter, which gives its place up.
        let waiter = Waiter::new(self, ticket);
        self.request_pass();
        Ok(waiter)
    }

    /// As [`enqueue`](Self::enqueue), for a queue in an `Arc`: the waiter
    /// holds a clone of the `Arc` (made only when it is queued), so it can
    /// live in a `'static` future; a grant moves that clone into the
    /// [`OwnedQueuePermit`]. The protocol is the one a [`Waiter`] follows.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::task::{Context, Poll, Waker};
    /// use tenlives_engine::bulkhead::Bulkhead;
    /// use tenlives_engine::queue::{AdmissionQueue, QueueConfig};
    /// use tenlives_engine::time::Timestamp;
    ///
    /// let queue = Arc::new(AdmissionQueue::new(Bulkhead::new(1)?, QueueConfig::fifo(8)?));
    /// let mut cx = Context::from_waker(Waker::noop());
    /// let first = queue.try_acquire_owned().expect("free");
    /// let mut waiter = queue.enqueue_owned(0, Timestamp::MAX, cx.waker()).expect("room");
    /// assert!(waiter.poll_permit(&mut cx, Timestamp::ZERO).is_pending());
    /// drop(first); // handed to the waiter
    /// let Poll::Ready(Ok(second)) = waiter.poll_permit(&mut cx, Timestamp::ZERO) else { panic!() };
    /// assert_eq!(Arc::strong_count(&queue), 2, "the waiter's clone moved into the permit");
    /// drop((waiter, second));
    /// assert_eq!(Arc::strong_count(&queue), 1);
    /// assert_eq!(queue.source().in_flight(), 0);
    /// # Ok::<(), tenlives_engine::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`enqueue`](Self::enqueue).
    pub fn enqueue_owned(
        self: &Arc<Self>,
        class: u16,
        deadline: Timestamp,
        waker: &Waker,
    ) -> Result<OwnedWaiter<P, S>, Rejected> {
        let ticket = self.enqueue_ticket(class, deadline, waker)?;
        // As in `enqueue`: the waiter first, then the pass.
        let waiter = OwnedWaiter::new(Arc::clone(self), ticket);
        self.request_pass();
        Ok(waiter)
    }

    /// The enqueue protocol, for either kind of waiter, up to the pass the
    /// caller requests once it holds the waiter.
    ///
    /// Inlined into each caller, so that the ticket is written straight
    /// into the waiter that keeps it: returned through the stack, its
    /// 48 bytes were copied with loads wider than the stores that had just
    /// written them, which stalled the first poll of an [`Acquire`] on store
    /// forwarding (a fifth of that poll's time).
    #[inline(always)]
    fn enqueue_ticket(
        &self,
        class: u16,
        deadline: Timestamp,
        waker: &Waker,
    ) -> Result<Ticket, Rejected> {
        let classes = self.config.classes();
        if class >= classes {
            return Err(Rejected::UnknownClass { class, classes });
        }
        // ordering: Relaxed; an early, approximate refusal: the dispatcher
        // enforces the capacity exactly.
        if self.config.overload_policy() == Overload::ShedNewest
            && self.control.queued.load(Ordering::Relaxed) >= u64::from(self.config.capacity())
        {
            self.report(class, Rejected::QueueFull, Timestamp::ZERO);
            return Err(Rejected::QueueFull);
        }
        let Some(index) = self.control.free.pop() else {
            self.report(class, Rejected::QueueFull, Timestamp::ZERO);
            return Err(Rejected::QueueFull);
        };
        let slot = &self.slots[index];
        // ordering: Relaxed; the pop's Acquire made the last user's word
        // visible, and nobody else writes it while the slot is free.
        let last = Word(slot.word.load(Ordering::Relaxed));
        // A slot off the free stack has no reference bit left. Were the
        // stack's tag ever fooled (see `free.rs`), this stops the queue
        // instead of handing one slot to two waiters.
        assert_eq!(
            last.0 & REFS,
            0,
            "admission queue: slot {index} came off the free stack while in use"
        );
        let generation = last.generation().wrapping_add(1);
        // ordering: Relaxed; published by the Release store of WAITING.
        slot.deadline.store(deadline.as_nanos(), Ordering::Relaxed);
        slot.class.store(u64::from(class), Ordering::Relaxed);
        // SAFETY: the slot came off the free stack, so no other party can
        // reach its cells until the WAITING store below publishes it.
        unsafe { slot.waker.set_exclusive(waker) };
        // ordering: Release, pairs with the Acquire load of whoever decides
        // the slot: it sees the deadline, the class and the waker.
        slot.word
            .store(Word::waiting(generation).0, Ordering::Release);
        // ordering: Relaxed; ordered before the dispatcher's fence by the
        // request below (see "The dispatcher").
        self.control.queued.fetch_add(1, Ordering::Relaxed);
        self.control.mailbox.push(Notice::Arrival(index));
        Ok(Ticket::new(index, generation, class, deadline, waker))
    }

    /// Times out every waiter whose deadline is at or before `now`: each is
    /// woken and learns [`Rejected::TimedOut`]. Returns how many. A sweep
    /// over all `2 * capacity` slots; no lock, no allocation.
    pub fn expire(&self, now: Timestamp) -> u32 {
        let mut expired = 0;
        let mut calls = Callbacks::new();
        for (index, slot) in self.slots.iter().enumerate() {
            // ordering: Acquire, pairs with the enqueuer's Release store of
            // WAITING: the deadline read below is this waiter's (if the slot
            // is reused meanwhile, the compare-and-swap fails).
            let word = Word(slot.word.load(Ordering::Acquire));
            if !word.is_waiting() || slot.deadline.load(Ordering::Relaxed) > now.as_nanos() {
                continue;
            }
            let timed_out = word.decided(TIMED_OUT, OWN | SCHED | NOTICE);
            // ordering: AcqRel on success (Release: the owner's Acquire load
            // of TIMED_OUT is ordered after it); Relaxed on failure: someone
            // else decided, nothing to do.
            if slot
                .word
                .compare_exchange(word.0, timed_out.0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                // ordering: Relaxed; written before WAITING was published.
                let class = slot.class.load(Ordering::Relaxed) as u16;
                // Bookkeeping first (the notice holds the slot until the
                // dispatcher reads it), user code (sink, waker) last.
                let waker = slot.waker.take_to_wake();
                self.control.mailbox.push(Notice::Retire(index));
                expired += 1;
                calls.run(|| self.report(class, Rejected::TimedOut, now));
                calls.wake(waker);
            }
        }
        if expired > 0 {
            self.request_pass_waking(&mut calls);
        }
        calls.finish();
        expired
    }

    /// Runs (or asks the running dispatcher for) a pass: grants waiters
    /// whatever permits the source has free. Call it after giving the source
    /// more permits behind the queue's back — raising a bulkhead's limit,
    /// say — since the queue only looks at the source when its own permits
    /// are released or waiters come and go.
    pub fn dispatch(&self) {
        self.request_pass();
    }

    /// Gives a permit back: to the next waiter if there is one, else to the
    /// source.
    ///
    /// With waiters queued and the dispatcher idle, the releaser takes the
    /// dispatcher role itself and hands its permit straight to the next
    /// waiter, without the round trip through the source. Otherwise the
    /// permit goes back to the source first, and then, if anyone waits, a
    /// pass is requested (which takes it from the source again).
    #[inline]
    fn release(&self, permit: P::Permit) {
        // ordering: Relaxed; only chooses the path, both are correct.
        // Acquire on the role: as in `request_pass`.
        if self.control.queued.load(Ordering::Relaxed) != 0
            && self
                .control
                .ctl
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let mut calls = Callbacks::new();
            self.hold(1, Some(permit), &mut calls);
            calls.finish();
            return;
        }
        self.source.give_back(permit);
        // ordering: SeqCst fence, pairs with the fence a pass issues before
        // it first tries the source: either this load sees the count of a
        // racing enqueuer, or that enqueuer's pass sees the permit we gave
        // back.
        fence(Ordering::SeqCst);
        // ordering: Relaxed; the fence above orders it.
        if self.control.queued.load(Ordering::Relaxed) != 0 {
            self.request_pass();
        }
    }

    /// Posts that `index` left `WAITING` without the dispatcher, and asks
    /// for the pass that reads it.
    fn retire(&self, index: usize, calls: &mut Callbacks) {
        self.control.mailbox.push(Notice::Retire(index));
        self.request_pass_waking(calls);
    }

    /// Emits a `QUEUE_REJECTED` event.
    #[inline]
    fn report(&self, class: u16, why: Rejected, time: Timestamp) {
        if self.sink.enabled() {
            self.sink.emit(Event::new(
                EventKind::QUEUE_REJECTED,
                self.source_id,
                time,
                [u64::from(class), why.code()],
            ));
        }
    }
}

/// The user code a queue operation calls for other callers — their wakers,
/// and the event sink — and the first panic it raised.
///
/// A waker or a sink is user code, and the queue calls it on behalf of
/// other callers (a grant, a shed, a sweep), in the middle of a dispatcher
/// pass or a sweep. Every such call comes after the queue's bookkeeping of
/// that waiter, and with `std` a panic is caught here so that the pass or
/// the sweep runs to its end — every other waiter it decides is still
/// served, woken and reported — and is raised again by
/// [`finish`](Self::finish), once the dispatcher role is given up: the
/// panic reaches the caller of the operation (a release, an enqueue, a
/// sweep, a poll that timed out) with the queue consistent. Later panics of
/// the same operation are dropped, and so is the first one if the thread is
/// already unwinding (a waiter or permit dropped by a panic elsewhere),
/// since a second panic would abort. Without `std` there is no catching: a
/// panic unwinds out of the pass, which has finished that waiter's
/// bookkeeping, and the role is given up on the way (the rest of the pass
/// waits for the next request).
pub(crate) struct Callbacks {
    #[cfg(feature = "std")]
    caught: Option<Box<dyn core::any::Any + Send + 'static>>,
}

impl Callbacks {
    pub(crate) fn new() -> Self {
        Callbacks {
            #[cfg(feature = "std")]
            caught: None,
        }
    }

    /// Wakes `waker`, if any, keeping its panic.
    #[inline]
    pub(crate) fn wake(&mut self, waker: Option<Waker>) {
        if let Some(waker) = waker {
            self.run(|| waker.wake());
        }
    }

    /// Runs `f` (user code), keeping its panic.
    #[inline]
    pub(crate) fn run(&mut self, f: impl FnOnce()) {
        #[cfg(feature = "std")]
        {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            if let Err(panic) = ran
                && self.caught.is_none()
            {
                self.caught = Some(panic);
            }
        }
        #[cfg(not(feature = "std"))]
        f();
    }

    /// Raises the panic kept, if any (unless the thread is unwinding
    /// already). Called once the queue is consistent and the role given up.
    #[inline]
    pub(crate) fn finish(self) {
        #[cfg(feature = "std")]
        if let Some(panic) = self.caught
            && !std::thread::panicking()
        {
            std::panic::resume_unwind(panic);
        }
    }
}
