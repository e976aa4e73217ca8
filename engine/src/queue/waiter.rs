//! The caller's side: a queued [`Waiter`], the [`Acquire`] future built on
//! it, and the [`QueuePermit`] both hand out.

use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};

use super::config::Rejected;
use super::slot::{
    CANCELLED, FREE, GRANTED, NOTICE, SCHED, SHED_FULL, SHED_OLDEST, SHED_PRIORITY, TIMED_OUT,
    WAITING, Word,
};
use super::{AdmissionQueue, PermitSource};
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

/// A caller waiting in an [`AdmissionQueue`], from
/// [`AdmissionQueue::enqueue`].
///
/// Poll it with [`poll_permit`](Self::poll_permit). Dropping it before it
/// completes gives up its place; if a permit was granted to it meanwhile,
/// the permit goes to the next waiter (or back to the source).
pub struct Waiter<'q, P: PermitSource, S: EventSink = NoSink> {
    queue: &'q AdmissionQueue<P, S>,
    index: usize,
    generation: u32,
    class: u16,
    deadline: Timestamp,
    /// The identity (data and vtable addresses) of the waker in the slot,
    /// as `Waker::will_wake` compares them: a poll with the same waker
    /// skips registering it again.
    registered: (usize, usize),
    /// The slot is no longer ours: a verdict was returned.
    done: bool,
}

fn identity(waker: &Waker) -> (usize, usize) {
    (
        waker.data() as usize,
        core::ptr::from_ref(waker.vtable()) as usize,
    )
}

impl<P: PermitSource, S: EventSink> fmt::Debug for Waiter<'_, P, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiter")
            .field("class", &self.class)
            .field("deadline", &self.deadline)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<'q, P: PermitSource, S: EventSink> Waiter<'q, P, S> {
    pub(super) fn new(
        queue: &'q AdmissionQueue<P, S>,
        index: usize,
        generation: u32,
        class: u16,
        deadline: Timestamp,
        waker: &Waker,
    ) -> Self {
        Waiter {
            queue,
            index,
            generation,
            class,
            deadline,
            registered: identity(waker),
            done: false,
        }
    }

    /// The class it waits in.
    pub fn class(&self) -> u16 {
        self.class
    }

    /// Its deadline.
    pub fn deadline(&self) -> Timestamp {
        self.deadline
    }

    /// Whether it has completed (returned `Ready`).
    pub fn is_done(&self) -> bool {
        self.done
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
        assert!(!self.done, "Waiter polled after it completed");
        if let Some(verdict) = self.verdict() {
            return Poll::Ready(verdict);
        }
        if now >= self.deadline {
            return Poll::Ready(self.time_out(now));
        }
        let waker = identity(cx.waker());
        if waker == self.registered {
            // The slot holds this task's waker already: whoever decides the
            // slot will wake it.
            return Poll::Pending;
        }
        self.queue.slots[self.index].waker.register(cx.waker());
        self.registered = waker;
        // Read again: a decision that raced the registration is visible now
        // (see `WakerCell`).
        match self.verdict() {
            Some(verdict) => Poll::Ready(verdict),
            None => Poll::Pending,
        }
    }

    /// The verdict, if the slot was decided; then the slot is released.
    pub(super) fn verdict(&mut self) -> Option<Result<QueuePermit<'q, P, S>, Rejected>> {
        let slot = &self.queue.slots[self.index];
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
                    Some(permit) => Ok(QueuePermit::new(self.queue, permit)),
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
        self.done = true;
        if slot.release_refs(super::slot::OWN) {
            self.queue.control.free.push(self.index);
        }
        Some(verdict)
    }

    /// Times out a waiting slot ourselves, or returns the verdict someone
    /// else reached first.
    fn time_out(&mut self, now: Timestamp) -> Result<QueuePermit<'q, P, S>, Rejected> {
        if self.leave(TIMED_OUT) {
            self.queue.report(self.class, Rejected::TimedOut, now);
            Err(Rejected::TimedOut)
        } else {
            match self.verdict() {
                Some(verdict) => verdict,
                None => unreachable!("a slot that left WAITING has a verdict"),
            }
        }
    }

    /// Moves our slot from `WAITING` to `phase` (cancelled or timed out),
    /// giving up `OWN` and posting a retirement notice. `false` if it was
    /// decided by someone else first.
    fn leave(&mut self, phase: u64) -> bool {
        let slot = &self.queue.slots[self.index];
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
        self.done = true;
        // The slot cannot be reused before the notice below is read, so its
        // waker cell is still ours to clear.
        slot.waker.clear();
        self.queue.retire(self.index);
        true
    }
}

impl<P: PermitSource, S: EventSink> Drop for Waiter<'_, P, S> {
    fn drop(&mut self) {
        if self.done || self.leave(CANCELLED) {
            return;
        }
        // Decided before we could cancel: release what we were given.
        if let Some(Ok(permit)) = self.verdict() {
            drop(permit);
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
                    match this.queue.enqueue(this.class, this.deadline, cx.waker()) {
                        Err(rejected) => Poll::Ready(Err(rejected)),
                        // `enqueue` stored the waker; its pass may have
                        // decided the waiter already.
                        Ok(mut waiter) => match waiter.verdict() {
                            Some(verdict) => Poll::Ready(verdict),
                            None => {
                                this.state = State::Waiting(waiter);
                                Poll::Pending
                            }
                        },
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
