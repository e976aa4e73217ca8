//! The caller's side: a queued [`Waiter`], the [`Acquire`] future built on
//! it, and the [`QueuePermit`] both hand out; and their owned forms,
//! [`OwnedWaiter`] and [`OwnedQueuePermit`], which hold the queue through an
//! `Arc` instead of a borrow (for futures that must be `'static`, such as a
//! tower response future).
//!
//! Both forms run one protocol, the [`Ticket`]'s: they differ only in how
//! they reach the queue.

use alloc::sync::Arc;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};

use super::config::Rejected;
use super::slot::{
    CANCELLED, FREE, GRANTED, NOTICE, OWN, SCHED, SHED_FULL, SHED_OLDEST, SHED_PRIORITY, TIMED_OUT,
    WAITING, Word,
};
use super::{AdmissionQueue, Callbacks, PermitSource};
use crate::events::{EventSink, NoSink};
use crate::sync::Ordering;
use crate::time::{Clock, Timestamp};

/// Permission to run while holding one permit of the queue's source.
///
/// Dropping it gives the permit back — to the next waiter if there is one —
/// when the call ends, and equally when the future holding it is cancelled
/// or the thread holding it panics.
#[must_use = "dropping a permit releases it at once"]
pub struct QueuePermit<'q, P: PermitSource, S: EventSink = NoSink> {
    queue: &'q AdmissionQueue<P, S>,
    /// `Some` until dropped.
    permit: Option<P::Permit>,
}

impl<'q, P: PermitSource, S: EventSink> QueuePermit<'q, P, S> {
    pub(super) fn new(queue: &'q AdmissionQueue<P, S>, permit: P::Permit) -> Self {
        QueuePermit {
            queue,
            permit: Some(permit),
        }
    }
}

impl<P: PermitSource, S: EventSink> fmt::Debug for QueuePermit<'_, P, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuePermit").finish_non_exhaustive()
    }
}

impl<P: PermitSource, S: EventSink> Drop for QueuePermit<'_, P, S> {
    #[inline]
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.queue.release(permit);
        }
    }
}

/// A [`QueuePermit`] that owns a reference count of its queue instead of
/// borrowing it, from [`AdmissionQueue::try_acquire_owned`] or an
/// [`OwnedWaiter`]. It can live in a `'static` future or move to another
/// task.
///
/// Dropping it gives the permit back exactly as dropping a `QueuePermit`
/// does — to the next waiter if there is one — and then drops its `Arc`.
#[must_use = "dropping a permit releases it at once"]
pub struct OwnedQueuePermit<P: PermitSource, S: EventSink = NoSink> {
    queue: Arc<AdmissionQueue<P, S>>,
    /// `Some` until dropped.
    permit: Option<P::Permit>,
}

impl<P: PermitSource, S: EventSink> OwnedQueuePermit<P, S> {
    pub(super) fn new(queue: Arc<AdmissionQueue<P, S>>, permit: P::Permit) -> Self {
        OwnedQueuePermit {
            queue,
            permit: Some(permit),
        }
    }

    /// The queue the permit goes back to.
    pub fn queue(&self) -> &Arc<AdmissionQueue<P, S>> {
        &self.queue
    }
}

impl<P: PermitSource, S: EventSink> fmt::Debug for OwnedQueuePermit<P, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedQueuePermit").finish_non_exhaustive()
    }
}

impl<P: PermitSource, S: EventSink> Drop for OwnedQueuePermit<P, S> {
    #[inline]
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.queue.release(permit);
        }
    }
}

/// A queued caller's claim on its slot: which slot, which use of it, and
/// the waker last stored there. It does not name its queue; the waiter
/// types pass it in, so that the borrowed [`Waiter`] and the
/// [`OwnedWaiter`] run one protocol.
///
/// Contract: once the ticket is `finished` (a verdict was read, or the
/// owner took the slot out of `WAITING` itself) it must not be polled
/// again; an unfinished ticket must be cancelled before it is dropped (the
/// waiters do both by looking at `finished`). `finished` is set before
/// anything that may run user code (the pass a retirement asks for, a
/// release), so a panic there leaves a ticket whose drop does nothing twice.
pub(super) struct Ticket {
    index: usize,
    generation: u64,
    class: u16,
    deadline: Timestamp,
    /// The slot is no longer ours: see the contract above.
    finished: bool,
    /// The identity (data and vtable addresses) of the waker in the slot,
    /// as `Waker::will_wake` compares them: a poll with the same waker
    /// skips registering it again.
    registered: (usize, usize),
}

fn identity(waker: &Waker) -> (usize, usize) {
    (
        waker.data() as usize,
        core::ptr::from_ref(waker.vtable()) as usize,
    )
}

impl Ticket {
    /// The ticket of slot `index`, just published as `WAITING` in
    /// `generation` with `waker` in its cell.
    pub(super) fn new(
        index: usize,
        generation: u64,
        class: u16,
        deadline: Timestamp,
        waker: &Waker,
    ) -> Self {
        Ticket {
            index,
            generation,
            class,
            deadline,
            finished: false,
            registered: identity(waker),
        }
    }

    /// See [`Waiter::poll_permit`].
    fn poll<P: PermitSource, S: EventSink>(
        &mut self,
        queue: &AdmissionQueue<P, S>,
        cx: &mut Context<'_>,
        now: Timestamp,
    ) -> Poll<Result<P::Permit, Rejected>> {
        if let Some(verdict) = self.verdict(queue) {
            return Poll::Ready(verdict);
        }
        if now >= self.deadline {
            return Poll::Ready(self.time_out(queue, now));
        }
        let waker = identity(cx.waker());
        if waker == self.registered {
            // The slot holds this task's waker already: whoever decides the
            // slot will wake it.
            return Poll::Pending;
        }
        queue.slots[self.index].waker.register(cx.waker());
        self.registered = waker;
        // Read again: a decision that raced the registration is visible now
        // (see `WakerCell`).
        match self.verdict(queue) {
            Some(verdict) => Poll::Ready(verdict),
            None => Poll::Pending,
        }
    }

    /// The verdict, if the slot was decided; then the slot is released.
    fn verdict<P: PermitSource, S: EventSink>(
        &mut self,
        queue: &AdmissionQueue<P, S>,
    ) -> Option<Result<P::Permit, Rejected>> {
        let slot = &queue.slots[self.index];
        // ordering: Acquire, pairs with the Release of the deciding
        // compare-and-swap: GRANTED comes with the permit in the cell.
        let word = Word(slot.word.load(Ordering::Acquire));
        let verdict = match word.phase() {
            WAITING => return None,
            GRANTED => {
                // SAFETY: we saw GRANTED with Acquire: the dispatcher's write
                // of the cell happened before, and it never touches the cell
                // again; nobody else does while we hold OWN.
                match unsafe { slot.permit.with_mut(Option::take) } {
                    Some(permit) => Ok(permit),
                    None => unreachable!("a granted slot holds its permit"),
                }
            }
            TIMED_OUT => Err(Rejected::TimedOut),
            SHED_FULL => Err(Rejected::QueueFull),
            SHED_OLDEST => Err(Rejected::ShedOldest),
            SHED_PRIORITY => Err(Rejected::ShedLowPriority),
            FREE | CANCELLED => unreachable!("only the owner frees or cancels its slot"),
            _ => unreachable!("three phase bits, eight phases"),
        };
        // The waker cell needs no clearing: whoever decided the slot wakes
        // it, which takes the waker out (or leaves it to a racing
        // registration, which takes it out itself).
        self.finished = true;
        if slot.release_refs(OWN) {
            queue.control.free.push(self.index);
        }
        Some(verdict)
    }

    /// Times out a waiting slot ourselves, or returns the verdict someone
    /// else reached first.
    fn time_out<P: PermitSource, S: EventSink>(
        &mut self,
        queue: &AdmissionQueue<P, S>,
        now: Timestamp,
    ) -> Result<P::Permit, Rejected> {
        if self.leave(queue, TIMED_OUT) {
            let mut calls = Callbacks::new();
            queue.retire(self.index, &mut calls);
            calls.run(|| queue.report(self.class, Rejected::TimedOut, now));
            calls.finish();
            Err(Rejected::TimedOut)
        } else {
            match self.verdict(queue) {
                Some(verdict) => verdict,
                None => unreachable!("a slot that left WAITING has a verdict"),
            }
        }
    }

    /// Moves our slot from `WAITING` to `phase` (cancelled or timed out),
    /// giving up `OWN`; the caller then posts the retirement notice with
    /// [`AdmissionQueue::retire`] (which runs user code: wakers, in the
    /// pass it asks for). `false` if it was decided by someone else first.
    fn leave<P: PermitSource, S: EventSink>(
        &mut self,
        queue: &AdmissionQueue<P, S>,
        phase: u64,
    ) -> bool {
        let slot = &queue.slots[self.index];
        let waiting = Word::waiting(self.generation);
        // ordering: AcqRel on success: our waker clear and the notice come
        // after it; Acquire on failure, pairs with the decider's Release: we
        // then read its verdict.
        if slot
            .word
            .compare_exchange(
                waiting.0,
                waiting.decided(phase, SCHED | NOTICE).0,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return false;
        }
        self.finished = true;
        // The slot cannot be reused before the caller's notice is read, so
        // its waker cell is still ours to clear.
        slot.waker.clear();
        true
    }

    /// Gives up the ticket if it is unfinished: cancels the slot, or, if
    /// it was decided first, reads the verdict and passes a granted permit
    /// on.
    fn cancel<P: PermitSource, S: EventSink>(&mut self, queue: &AdmissionQueue<P, S>) {
        if self.finished {
            return;
        }
        if self.leave(queue, CANCELLED) {
            let mut calls = Callbacks::new();
            queue.retire(self.index, &mut calls);
            calls.finish();
            return;
        }
        // Decided before we could cancel: release what we were given.
        if let Some(Ok(permit)) = self.verdict(queue) {
            queue.release(permit);
        }
    }
}

/// A caller waiting in an [`AdmissionQueue`], from
/// [`AdmissionQueue::enqueue`].
///
/// Poll it with [`poll_permit`](Self::poll_permit). Dropping it before it
/// completes gives up its place; if a permit was granted to it meanwhile,
/// the permit goes to the next waiter (or back to the source).
pub struct Waiter<'q, P: PermitSource, S: EventSink = NoSink> {
    queue: &'q AdmissionQueue<P, S>,
    ticket: Ticket,
}

impl<P: PermitSource, S: EventSink> fmt::Debug for Waiter<'_, P, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiter")
            .field("class", &self.ticket.class)
            .field("deadline", &self.ticket.deadline)
            .field("done", &self.ticket.finished)
            .finish_non_exhaustive()
    }
}

impl<'q, P: PermitSource, S: EventSink> Waiter<'q, P, S> {
    pub(super) fn new(queue: &'q AdmissionQueue<P, S>, ticket: Ticket) -> Self {
        Waiter { queue, ticket }
    }

    /// The class it waits in.
    pub fn class(&self) -> u16 {
        self.ticket.class
    }

    /// Its deadline.
    pub fn deadline(&self) -> Timestamp {
        self.ticket.deadline
    }

    /// Whether it has completed (returned `Ready`, or panicked in a poll
    /// after its slot was no longer its own).
    pub fn is_done(&self) -> bool {
        self.ticket.finished
    }

    /// `Ready` with the permit, or with why there is none; `Pending` (with
    /// `cx`'s waker registered, replacing the one given before) while it
    /// waits. A waiter still waiting at or after its deadline times out here.
    ///
    /// # Panics
    ///
    /// If called again after it returned `Ready`.
    pub fn poll_permit(
        &mut self,
        cx: &mut Context<'_>,
        now: Timestamp,
    ) -> Poll<Result<QueuePermit<'q, P, S>, Rejected>> {
        assert!(!self.ticket.finished, "Waiter polled after it completed");
        let poll = self.ticket.poll(self.queue, cx, now);
        poll.map(|verdict| verdict.map(|permit| QueuePermit::new(self.queue, permit)))
    }

    /// The verdict, if the slot was decided; then the slot is released.
    pub(super) fn verdict(&mut self) -> Option<Result<QueuePermit<'q, P, S>, Rejected>> {
        let verdict = self.ticket.verdict(self.queue)?;
        Some(verdict.map(|permit| QueuePermit::new(self.queue, permit)))
    }
}

impl<P: PermitSource, S: EventSink> Drop for Waiter<'_, P, S> {
    fn drop(&mut self) {
        self.ticket.cancel(self.queue);
    }
}

/// A [`Waiter`] that owns a reference count of its queue instead of
/// borrowing it, from [`AdmissionQueue::enqueue_owned`]. It can live in a
/// `'static` future, such as a tower response future.
///
/// It runs the same protocol as a [`Waiter`] (the same code): poll it with
/// [`poll_permit`](Self::poll_permit); dropping it before it completes gives
/// up its place, or passes on a permit granted meanwhile. It holds one `Arc`
/// of the queue, which a grant moves into the [`OwnedQueuePermit`] and any
/// other verdict drops: a wait that ends in a permit costs one reference
/// count in all.
pub struct OwnedWaiter<P: PermitSource, S: EventSink = NoSink> {
    /// `Some` while waiting; taken when a verdict is returned.
    queue: Option<Arc<AdmissionQueue<P, S>>>,
    ticket: Ticket,
}

impl<P: PermitSource, S: EventSink> fmt::Debug for OwnedWaiter<P, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedWaiter")
            .field("class", &self.ticket.class)
            .field("deadline", &self.ticket.deadline)
            .field("done", &self.is_done())
            .finish_non_exhaustive()
    }
}

impl<P: PermitSource, S: EventSink> OwnedWaiter<P, S> {
    pub(super) fn new(queue: Arc<AdmissionQueue<P, S>>, ticket: Ticket) -> Self {
        OwnedWaiter {
            queue: Some(queue),
            ticket,
        }
    }

    /// The class it waits in.
    pub fn class(&self) -> u16 {
        self.ticket.class
    }

    /// Its deadline.
    pub fn deadline(&self) -> Timestamp {
        self.ticket.deadline
    }

    /// Whether it has completed (returned `Ready`). A completed waiter no
    /// longer holds its queue.
    pub fn is_done(&self) -> bool {
        self.queue.is_none()
    }

    /// As [`Waiter::poll_permit`]: `Ready` with the permit, or with why
    /// there is none; `Pending` (with `cx`'s waker registered) while it
    /// waits; a poll at or after the deadline times out.
    ///
    /// # Panics
    ///
    /// If called again after it returned `Ready`.
    pub fn poll_permit(
        &mut self,
        cx: &mut Context<'_>,
        now: Timestamp,
    ) -> Poll<Result<OwnedQueuePermit<P, S>, Rejected>> {
        let Some(queue) = self.queue.as_deref().filter(|_| !self.ticket.finished) else {
            panic!("OwnedWaiter polled after it completed");
        };
        let verdict = core::task::ready!(self.ticket.poll(queue, cx, now));
        let queue = self.queue.take();
        Poll::Ready(match (verdict, queue) {
            (Ok(permit), Some(queue)) => Ok(OwnedQueuePermit::new(queue, permit)),
            (Err(rejected), _) => Err(rejected),
            (Ok(_), None) => unreachable!("checked at the top"),
        })
    }
}

impl<P: PermitSource, S: EventSink> Drop for OwnedWaiter<P, S> {
    fn drop(&mut self) {
        if let Some(queue) = self.queue.take() {
            self.ticket.cancel(&queue);
        }
    }
}

/// The future of [`AdmissionQueue::acquire`]: a permit, or why there is
/// none.
///
/// Its first poll takes a free permit if nobody waits, and otherwise queues
/// (or is refused at once). Each poll reads `clock`; a poll at or after the
/// deadline times out. Nothing wakes it at the deadline by itself: use a
/// timer, or [`AdmissionQueue::expire`] (see the
/// [module documentation](super#deadlines)).
///
/// # Panics
///
/// If polled again after it completed.
#[must_use = "futures do nothing unless polled"]
pub struct Acquire<'q, P: PermitSource, S: EventSink, C: Clock> {
    queue: &'q AdmissionQueue<P, S>,
    clock: C,
    class: u16,
    deadline: Timestamp,
    state: State<'q, P, S>,
}

enum State<'q, P: PermitSource, S: EventSink> {
    Start,
    Waiting(Waiter<'q, P, S>),
    Done,
}

impl<'q, P: PermitSource, S: EventSink, C: Clock> Acquire<'q, P, S, C> {
    pub(super) fn new(
        queue: &'q AdmissionQueue<P, S>,
        class: u16,
        deadline: Timestamp,
        clock: C,
    ) -> Self {
        Acquire {
            queue,
            clock,
            class,
            deadline,
            state: State::Start,
        }
    }
}

impl<P: PermitSource, S: EventSink, C: Clock> fmt::Debug for Acquire<'_, P, S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Start => "start",
            State::Waiting(_) => "waiting",
            State::Done => "done",
        };
        f.debug_struct("Acquire")
            .field("class", &self.class)
            .field("deadline", &self.deadline)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<'q, P: PermitSource, S: EventSink, C: Clock + Unpin> Future for Acquire<'q, P, S, C> {
    type Output = Result<QueuePermit<'q, P, S>, Rejected>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let now = this.clock.now();
        let poll = match &mut this.state {
            State::Waiting(waiter) => waiter.poll_permit(cx, now),
            State::Done => panic!("Acquire polled after it completed"),
            State::Start => {
                if let Ok(permit) = this.queue.try_acquire() {
                    Poll::Ready(Ok(permit))
                } else if now >= this.deadline {
                    this.queue.report(this.class, Rejected::TimedOut, now);
                    Poll::Ready(Err(Rejected::TimedOut))
                } else {
                    match this
                        .queue
                        .enqueue_ticket(this.class, this.deadline, cx.waker())
                    {
                        Err(rejected) => Poll::Ready(Err(rejected)),
                        // `enqueue`, with the waiter made in the future's
                        // state, where it stays: it exists before the pass
                        // runs (a waker that panics in the pass unwinds
                        // through this future, whose drop gives the place
                        // up), and the pass's verdict is read in place
                        // rather than from a copy of the waiter on the
                        // stack (copies of it just written stalled this
                        // poll on store forwarding).
                        Ok(ticket) => {
                            this.state = State::Waiting(Waiter::new(this.queue, ticket));
                            this.queue.request_pass();
                            match &mut this.state {
                                State::Waiting(waiter) => match waiter.verdict() {
                                    Some(verdict) => Poll::Ready(verdict),
                                    None => Poll::Pending,
                                },
                                _ => unreachable!("the waiter was just stored"),
                            }
                        }
                    }
                }
            }
        };
        if poll.is_ready() {
            this.state = State::Done;
        }
        poll
    }
}
