//! The dispatcher: the role that runs passes over the scheduler, and what a
//! pass does (see "The dispatcher" in the module documentation).

use super::mailbox::Notice;
use super::scheduler::Scheduler;
use super::slot::{GRANTED, NOTICE, OWN, SCHED, SHED_FULL, SHED_OLDEST, SHED_PRIORITY, Word};
use super::{AdmissionQueue, Callbacks, Overload, PermitSource, Rejected};
use crate::events::EventSink;
use crate::sync::{AtomicU64, Ordering, fence};
use crate::time::Timestamp;

/// Resets the dispatcher role when dropped, which happens only if a pass
/// unwinds (the holder forgets it on its way out): a panic of the permit
/// source (a waker's or the sink's panic is held back by [`Callbacks`]).
/// Every step of a pass that calls them leaves the scheduler and the slots
/// consistent first, so what is lost is only the requests counted then:
/// their notices and permits stay where they are, for the next pass (any
/// enqueue, release, sweep or [`dispatch`](AdmissionQueue::dispatch)).
struct ReleaseRoleOnUnwind<'a>(&'a AtomicU64);

impl Drop for ReleaseRoleOnUnwind<'_> {
    fn drop(&mut self) {
        // ordering: Release, as the holder's own `fetch_sub`.
        self.0.store(0, Ordering::Release);
    }
}

impl<P: PermitSource, S: EventSink> AdmissionQueue<P, S> {
    /// Asks for a dispatcher pass: runs it (and any asked for meanwhile) if
    /// the role is free, else leaves it to the holder.
    /// A waker's panic in that pass reaches the caller once the pass is
    /// over and the role given up.
    pub(super) fn request_pass(&self) {
        let mut calls = Callbacks::new();
        self.request_pass_waking(&mut calls);
        calls.finish();
    }

    /// [`request_pass`](Self::request_pass), a waker's or sink's panic left in
    /// `calls`.
    pub(super) fn request_pass_waking(&self, calls: &mut Callbacks) {
        // ordering: AcqRel. Release: the holder that counts this request
        // sees what we published before it. Acquire: if we become the
        // holder, we see the scheduler as the last holder left it.
        if self.control.ctl.fetch_add(1, Ordering::AcqRel) == 0 {
            self.hold(1, None, calls);
        }
    }

    /// Runs passes until no request is left, the first with `permit` in
    /// hand. Called only by the thread that moved `ctl` from 0 to
    /// `requests`. Wakers and the sink are called through `calls`, which keeps the first
    /// panic of one for the caller to raise after the role is given up.
    pub(super) fn hold(
        &self,
        mut requests: u64,
        mut permit: Option<P::Permit>,
        calls: &mut Callbacks,
    ) {
        // If the source (user code, called in `pass`) panics, give up the
        // role rather than keep it forever: later requests then run passes
        // again.
        let guard = ReleaseRoleOnUnwind(&self.control.ctl);
        loop {
            // SAFETY: `ctl` is nonzero from the increment that made us the
            // holder until the `fetch_sub` that brings it back to 0, and
            // only the thread whose increment found 0 calls `hold`, so no
            // other thread is inside this cell. A re-entrant call (a waker
            // that releases a permit) finds `ctl` nonzero and does not come
            // here.
            unsafe { self.sched.with_mut(|s| self.pass(s, permit.take(), calls)) };
            // ordering: AcqRel. Release: the next holder sees the scheduler
            // as we leave it. Acquire: the requests that came meanwhile, and
            // what their requesters published, are visible to our next pass.
            let before = self.control.ctl.fetch_sub(requests, Ordering::AcqRel);
            if before == requests {
                core::mem::forget(guard);
                return;
            }
            requests = before - requests;
        }
    }

    /// One dispatcher pass: read the mailbox, grant `permit` and what the
    /// source has, shed beyond capacity.
    fn pass(&self, s: &mut Scheduler, permit: Option<P::Permit>, calls: &mut Callbacks) {
        while let Some(notice) = self.control.mailbox.pop(&mut s.mail_head) {
            match notice {
                Notice::Arrival(index) => self.arrived(s, index),
                Notice::Retire(index) => self.retired(s, index),
            }
        }
        self.grant(s, permit, calls);
        self.shed(s, calls);
    }

    fn arrived(&self, s: &mut Scheduler, index: usize) {
        let slot = &self.slots[index];
        // ordering: Acquire, pairs with the Release of the owner or sweeper
        // that decided it already (then we drop it).
        if Word(slot.word.load(Ordering::Acquire)).is_waiting() {
            // ordering: Relaxed; the mailbox's Acquire made it visible.
            let class = slot.class.load(Ordering::Relaxed) as usize;
            s.push(index, class);
        } else {
            self.uncount();
            self.drop_sched(index);
        }
    }

    fn retired(&self, s: &mut Scheduler, index: usize) {
        let mut bits = NOTICE;
        if s.is_linked(index) {
            s.remove(index);
            self.uncount();
            bits |= SCHED;
        }
        if self.slots[index].release_refs(bits) {
            self.control.free.push(index);
        }
    }

    /// A slot leaves the waiter count: the dispatcher took it out of the
    /// scheduler (or found it decided on arrival).
    fn uncount(&self) {
        // ordering: Relaxed; the count only has to include every waiter the
        // dispatcher may still grant (see `release`), and this one is past.
        // A verdict published after this (with Release) carries it to the
        // owner.
        self.control.queued.fetch_sub(1, Ordering::Relaxed);
    }

    /// The dispatcher is done with `index`: nothing of it touches the slot
    /// any more.
    fn drop_sched(&self, index: usize) {
        if self.slots[index].release_refs(SCHED) {
            self.control.free.push(index);
        }
    }

    /// Grants `spare` (a permit released straight to the dispatcher) and
    /// then permits from the source to waiters, in scheduling order, while
    /// both last. The scheduler is asked for a waiter only with a permit in
    /// hand, so its cursor moves only when something is granted.
    fn grant(&self, s: &mut Scheduler, mut spare: Option<P::Permit>, calls: &mut Callbacks) {
        let mut fenced = false;
        while s.len() > 0 {
            let permit = match spare.take() {
                Some(permit) => Some(permit),
                None => {
                    if !fenced {
                        // ordering: SeqCst fence, pairs with the fence in
                        // `release` (see "The dispatcher"): a permit given
                        // back by a releaser that did not see our waiters
                        // is visible to the `try_take` below.
                        fence(Ordering::SeqCst);
                        fenced = true;
                    }
                    self.source.try_take()
                }
            };
            let Some(mut permit) = permit else {
                return;
            };
            loop {
                let Some(index) = s.pick() else {
                    // Everyone linked had been cancelled or timed out.
                    self.source.give_back(permit);
                    return;
                };
                // Granted or dead, it waits no more: uncount it before the
                // owner can see its verdict (and, say, enqueue again).
                self.uncount();
                match self.hand_over(index, permit) {
                    Ok(()) => {
                        s.served(index);
                        // The slot's bookkeeping is done before its waker
                        // runs: a waker that panics leaves nothing behind.
                        let waker = self.slots[index].waker.take_to_wake();
                        self.drop_sched(index);
                        calls.wake(waker);
                        break;
                    }
                    Err(back) => {
                        // Cancelled or timed out meanwhile: next one.
                        permit = back;
                        s.remove(index);
                        self.drop_sched(index);
                    }
                }
            }
        }
        // Nobody is linked: a permit released to us goes back to the source.
        if let Some(permit) = spare {
            self.source.give_back(permit);
        }
    }

    /// Puts `permit` in the slot and moves it to `GRANTED`, or hands the
    /// permit back if the slot was decided by someone else first.
    fn hand_over(&self, index: usize, permit: P::Permit) -> Result<(), P::Permit> {
        let slot = &self.slots[index];
        // ordering: Relaxed; the compare-and-swap below decides.
        let word = Word(slot.word.load(Ordering::Relaxed));
        if !word.is_waiting() {
            return Err(permit);
        }
        // SAFETY: the owner touches the permit cell only after it sees
        // GRANTED, which only our compare-and-swap below can set; the slot
        // is linked, so no other dispatcher use of it is live.
        unsafe { slot.permit.with_mut(|cell| *cell = Some(permit)) };
        // ordering: Release on success, pairs with the owner's Acquire load
        // of GRANTED: it finds the permit in the cell. Relaxed on failure.
        match slot.word.compare_exchange(
            word.0,
            word.decided(GRANTED, OWN | SCHED).0,
            Ordering::Release,
            Ordering::Relaxed,
        ) {
            Ok(_) => Ok(()),
            Err(_) => {
                // SAFETY: not GRANTED, so the cell is still ours alone.
                match unsafe { slot.permit.with_mut(Option::take) } {
                    Some(permit) => Err(permit),
                    None => unreachable!("the permit was put there just above"),
                }
            }
        }
    }

    /// Sheds waiters by the overload policy until the queue is within its
    /// capacity.
    fn shed(&self, s: &mut Scheduler, calls: &mut Callbacks) {
        let policy = self.config.overload_policy();
        let (phase, reason) = match policy {
            Overload::ShedNewest => (SHED_FULL, Rejected::QueueFull),
            Overload::ShedOldest => (SHED_OLDEST, Rejected::ShedOldest),
            Overload::ShedLowestPriority => (SHED_PRIORITY, Rejected::ShedLowPriority),
        };
        while s.len() > self.config.capacity() as usize {
            let Some(index) = s.victim(policy) else {
                return;
            };
            s.remove(index);
            self.uncount();
            let slot = &self.slots[index];
            // ordering: Relaxed; the compare-and-swap below decides.
            let word = Word(slot.word.load(Ordering::Relaxed));
            // ordering: Release on success, pairs with the owner's Acquire
            // load of the verdict. A failure means it was cancelled or timed
            // out meanwhile: removing it was enough.
            if word.is_waiting()
                && slot
                    .word
                    .compare_exchange(
                        word.0,
                        word.decided(phase, OWN | SCHED).0,
                        Ordering::Release,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                // ordering: Relaxed; written before WAITING was published.
                let class = slot.class.load(Ordering::Relaxed) as u16;
                // Bookkeeping first, user code (sink, waker) last.
                let waker = slot.waker.take_to_wake();
                self.drop_sched(index);
                calls.run(|| self.report(class, reason, Timestamp::ZERO));
                calls.wake(waker);
            } else {
                self.drop_sched(index);
            }
        }
    }
}
