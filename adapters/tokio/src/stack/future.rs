//! The stack's response future: one state machine for timeout, retry and
//! admission.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tenlives_engine::breaker::Outcome;
use tenlives_engine::retry::BackoffIter;
use tenlives_engine::time::Timestamp;
use tenlives_engine::timer::TimerEntry;
use tokio::time::Sleep;
use tower_service::Service;

use super::Policies;
use super::handle::Handle;
use super::hold::{Hold, Holds};
use crate::admission::Admission;
use crate::classify::Classify;
use crate::error::{Rejection, RejectionReason, TenlivesError};
use crate::retry::{RetryClones, RetryStage};
use crate::span::CallSpan;
use tenlives_engine::breaker::RejectReason;

/// What a request needs for its next attempts.
pub(crate) struct Retrying<S, Req> {
    service: S,
    request: Req,
    /// `Req::clone`: the bound lives with the retry stage, so that a stack
    /// without retries takes requests that cannot be cloned.
    clone_request: fn(&Req) -> Req,
    schedule: Option<BackoffIter>,
    /// Attempts made, the first included (for the call's span).
    attempts: u32,
}

impl<S, Req> Retrying<S, Req> {
    pub(crate) fn new((service, request, clone_request): RetryClones<S, Req>) -> Self {
        Retrying {
            service,
            request,
            clone_request,
            schedule: None,
            attempts: 1,
        }
    }
}

/// The request's share of the stack: its handle on the policies (one
/// `Arc` clone, or none for a static stack), the admission
/// token of the attempt in flight, and the request's entry in the stack's
/// timer wheel. Dropping it gives the entry back and releases the token
/// unreported.
pub(crate) struct Held<K, R, A: Admission> {
    policies: Handle<Policies<K, R, A>>,
    token: Option<A::Token>,
    admitted_at: Timestamp,
    /// The wheel entry of the future's one timer, once set.
    alarm: Option<TimerEntry>,
    /// The token in flight is a breaker's probe or scout, counted in the
    /// stack's [`Holds`] (only when the stack holds).
    probe: bool,
    /// The request's hold for the breaker's answer, while it holds.
    hold: Option<Hold>,
    /// The request has held once (it holds at most once).
    held_once: bool,
}

impl<K, R, A: Admission> Held<K, R, A> {
    pub(crate) fn new(policies: Handle<Policies<K, R, A>>, now: Timestamp) -> Self {
        Held {
            policies,
            token: None,
            admitted_at: now,
            alarm: None,
            probe: false,
            hold: None,
            held_once: false,
        }
    }

    /// Keeps the token of an attempt admitted at `now`.
    #[inline]
    pub(crate) fn hold(&mut self, token: A::Token, now: Timestamp) {
        if let Some(holds) = self.policies.holds.as_ref()
            && self.policies.admission.is_probe(&token)
        {
            holds.probe_sent();
            self.probe = true;
        }
        self.token = Some(token);
        self.admitted_at = now;
    }

    /// The probe in flight (if the token was one) reported its outcome.
    #[inline]
    fn probe_answered(&mut self) {
        if std::mem::take(&mut self.probe)
            && let Some(holds) = self.policies.holds.as_ref()
        {
            holds.probe_answered();
        }
    }

    /// Whether a breaker refusal `rejection` may be held for the breaker's
    /// answer, given the bound `until`: `Some(due)` with when that answer
    /// is due (`None`: a probe of this stack is in flight, time unknown),
    /// `None` to refuse at once.
    fn answer_due(
        holds: &Holds,
        rejection: &Rejection,
        now: Timestamp,
        until: Timestamp,
    ) -> Option<Option<Timestamp>> {
        if now >= until {
            return None;
        }
        match rejection.reason() {
            RejectionReason::CircuitBreaker(RejectReason::Open | RejectReason::HalfOpenFull) => {}
            _ => return None,
        }
        // A zero retry-after is a breaker with no deadline left to scout
        // at (time at its end): nothing is due.
        if let Some(after) = rejection.retry_after().filter(|d| !d.is_zero()) {
            let due = now.saturating_add(after);
            if due < until {
                return Some(Some(due));
            }
        }
        (holds.probes_in_flight() > 0).then_some(None)
    }

    /// The first attempt to hold this request after `rejection`: takes a
    /// slot if the breaker's answer is coming within the hold's bound (and
    /// the request's `deadline`) and a slot is free.
    fn start_hold(&mut self, rejection: &Rejection, deadline: Option<&Deadline>) -> bool {
        let p = &*self.policies;
        let Some(holds) = p.holds.as_ref() else {
            return false;
        };
        if self.held_once {
            return false;
        }
        let now = p.now_if(true);
        let mut until = now.saturating_add(holds.max_wait);
        if let Some(d) = deadline {
            until = until.min(d.at);
        }
        let Some(due) = Self::answer_due(holds, rejection, now, until) else {
            return false;
        };
        let Some(slot) = holds.claim() else {
            return false;
        };
        self.held_once = true;
        self.hold = Some(Hold {
            slot,
            seen: None,
            answered: false,
            until,
            due,
        });
        true
    }

    /// A held request was refused again at `now`: hold on (the breaker has
    /// not answered yet, an answer is still due within the bound) or not.
    fn resume_hold(&mut self, rejection: &Rejection, now: Timestamp) -> bool {
        let (Some(holds), Some(hold)) = (self.policies.holds.as_ref(), self.hold.as_mut()) else {
            return false;
        };
        if hold.answered {
            return false;
        }
        match Self::answer_due(holds, rejection, now, hold.until) {
            Some(due) => {
                hold.due = due;
                true
            }
            None => false,
        }
    }

    /// Gives the hold's slot back.
    fn end_hold(&mut self) {
        if let (Some(hold), Some(holds)) = (self.hold.take(), self.policies.holds.as_ref()) {
            holds.release(hold.slot);
        }
    }

    /// The attempt ended with `result`: classify it, report it, and return it
    /// as the stack's result with the time of the reading (if one was made).
    /// The outcome is decided before the token leaves `self`, so a panicking
    /// classifier still releases it on drop.
    #[inline]
    fn complete<Res, E>(
        &mut self,
        result: Result<Res, E>,
    ) -> (Result<Res, TenlivesError<E>>, Option<Timestamp>, Outcome)
    where
        K: Classify<Res, E>,
    {
        let p = &*self.policies;
        let outcome = p.classifier.classify(&result);
        let needs_time = p.time_at_end
            && self
                .token
                .as_ref()
                .is_some_and(|token| p.admission.needs_time_to_complete(token, outcome));
        let now = p.now_if(needs_time);
        if let Some(token) = self.token.take() {
            p.admission.complete(token, outcome, self.admitted_at, now);
            self.probe_answered();
        }
        let now = needs_time.then_some(now);
        (result.map_err(TenlivesError::Inner), now, outcome)
    }

    /// The timeout fired with an attempt in flight: it failed (a breaker
    /// counts a failure, an adaptive limit a drop). The clock is read
    /// while the token is still in `self`, so a clock that panics leaves
    /// it to the drop, which releases it.
    fn timed_out(&mut self) {
        let p = &*self.policies;
        let Some(token) = self.token.as_ref() else {
            return;
        };
        let needs_time =
            p.time_at_end && p.admission.needs_time_to_complete(token, Outcome::Failure);
        let now = p.now_if(needs_time);
        if let Some(token) = self.token.take() {
            p.admission
                .complete(token, Outcome::Failure, self.admitted_at, now);
            self.probe_answered();
        }
    }
}

impl<K, R, A: Admission> Held<K, R, A> {
    /// Gives the timer's wheel entry back (the request has its result, or
    /// is dropped).
    fn disarm(&mut self) {
        if let (Some(entry), Some(timers)) = (self.alarm.take(), self.policies.timers.as_ref()) {
            timers.cancel(entry);
        }
        self.end_hold();
    }
}

impl<K, R, A: Admission> Drop for Held<K, R, A> {
    fn drop(&mut self) {
        self.disarm();
        if let Some(token) = self.token.take() {
            self.policies.admission.release(token);
        }
        // A probe released unreported, or one whose report panicked: the
        // breaker heard nothing, so nobody is woken.
        if std::mem::take(&mut self.probe)
            && let Some(holds) = self.policies.holds.as_ref()
        {
            holds.probe_dropped();
        }
    }
}

pin_project! {
    /// Where the request is.
    #[project = PhaseProj]
    pub(crate) enum Phase<F> {
        /// An attempt is in flight.
        Calling { #[pin] future: F },
        /// An attempt was rejected before it reached the service.
        Rejected { rejection: Option<Rejection> },
        /// Waiting out a backoff delay (on the future's timer).
        Waiting,
        /// The breaker refused; held for its next answer (a probe's or a
        /// scout's outcome), its next scout's time or the hold's bound.
        Holding,
        /// The delay is over (or, `held`, the held request is to try
        /// admission again); waiting for the clone of the service to be
        /// ready.
        Readying { held: bool },
        /// The result was returned.
        Done,
    }
}

/// When the request times out, on the stack's clock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    at: Timestamp,
    after: Duration,
}

impl Deadline {
    /// The deadline `after` from `start` (saturating).
    pub(crate) fn new(start: Timestamp, after: Duration) -> Self {
        Deadline {
            at: start.saturating_add(after),
            after,
        }
    }
}

/// What the future's one timer is set for. A backoff wait always ends before
/// the deadline (a retry that would not is not made), so one timer serves
/// both: the deadline while an attempt is in flight or the service is
/// becoming ready, the end of the delay while waiting to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alarm {
    /// Not made yet.
    Unset,
    /// Set for the deadline.
    Deadline,
    /// Set for the end of a backoff delay.
    Backoff,
    /// Set for a held request's next look at the breaker.
    Hold,
}

pin_project! {
    /// The response future of a [`Stack`](super::Stack): the attempt in flight,
    /// one timer (made only once the request returns `Pending`, for the
    /// deadline or a backoff delay), what later attempts need, and the
    /// request's admission token. Dropping it drops the attempt, then
    /// releases the token.
    #[must_use = "futures do nothing unless polled"]
    pub struct StackFuture<S: Service<Req>, Req, K, R, A: Admission> {
        // Declared first: dropped before the token is released.
        #[pin]
        phase: Phase<S::Future>,
        #[pin]
        timer: Option<Sleep>,
        alarm: Alarm,
        deadline: Option<Deadline>,
        retry: Option<Retrying<S, Req>>,
        // The result of the attempt before a backoff wait, returned if the
        // budget refuses the retry when it is sent.
        last: Option<Result<S::Response, TenlivesError<S::Error>>>,
        held: Held<K, R, A>,
        span: CallSpan,
    }
}

impl<S: Service<Req>, Req, K, R, A: Admission> StackFuture<S, Req, K, R, A> {
    pub(crate) fn new(
        phase: Phase<S::Future>,
        deadline: Option<Deadline>,
        retry: Option<Retrying<S, Req>>,
        held: Held<K, R, A>,
        span: CallSpan,
    ) -> Self {
        StackFuture {
            phase,
            timer: None,
            alarm: Alarm::Unset,
            deadline,
            retry,
            last: None,
            held,
            span,
        }
    }
}

/// Sets the future's timer for `at`, for `alarm`: an entry in the stack's
/// wheel, or a tokio `Sleep` if the wheel is full.
fn set_timer<K, R, A: Admission>(
    held: &mut Held<K, R, A>,
    timer: Pin<&mut Option<Sleep>>,
    current: &mut Alarm,
    alarm: Alarm,
    at: Timestamp,
    cx: &mut Context<'_>,
) {
    let Some(timers) = held.policies.timers.as_ref() else {
        unreachable!("a stack with a timeout or retries has a timer wheel")
    };
    timers.set(&mut held.alarm, timer, at, cx);
    *current = alarm;
}

/// Polls the timer: `Ready` once the time it is set for has passed.
fn poll_timer<K, R, A: Admission>(
    held: &mut Held<K, R, A>,
    timer: Pin<&mut Option<Sleep>>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    match held.policies.timers.as_ref() {
        Some(timers) => timers.poll(&mut held.alarm, timer, cx),
        // Only polled once set.
        None => Poll::Pending,
    }
}

impl<S: Service<Req>, Req, K, R, A: Admission> fmt::Debug for StackFuture<S, Req, K, R, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match self.phase {
            Phase::Calling { .. } => "calling",
            Phase::Rejected { .. } => "rejected",
            Phase::Waiting => "waiting",
            Phase::Holding => "holding",
            Phase::Readying { .. } => "readying",
            Phase::Done => "done",
        };
        f.debug_struct("StackFuture")
            .field("phase", &phase)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl<S, Req, K, R, A> Future for StackFuture<S, Req, K, R, A>
where
    S: Service<Req>,
    K: Classify<S::Response, S::Error>,
    R: RetryStage<S, Req>,
    A: Admission,
{
    type Output = Result<S::Response, TenlivesError<S::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let span = &*this.span;
        let _entered = span.enter();
        loop {
            // Each arm either goes on to the next phase, stops at `Pending`
            // (then the deadline is checked), or ends an attempt.
            let (result, now) = match this.phase.as_mut().project() {
                PhaseProj::Calling { future } => match future.poll(cx) {
                    Poll::Ready(result) => {
                        let (result, now, outcome) = this.held.complete(result);
                        span.classified(outcome);
                        (result, now)
                    }
                    Poll::Pending => break,
                },
                PhaseProj::Rejected { rejection } => match rejection.take() {
                    Some(rejection) => {
                        // A refusal of the breaker, held for its answer
                        // (only a stack that holds, and keeps the request's
                        // clones, does).
                        if this.retry.is_some()
                            && this.held.start_hold(&rejection, this.deadline.as_ref())
                        {
                            this.phase.set(Phase::Holding);
                            continue;
                        }
                        (Err(TenlivesError::Rejected(rejection)), None)
                    }
                    None => break,
                },
                PhaseProj::Waiting => {
                    if poll_timer(this.held, this.timer.as_mut(), cx).is_pending() {
                        // The deadline is later than the end of the delay.
                        return Poll::Pending;
                    }
                    this.phase.set(Phase::Readying { held: false });
                    continue;
                }
                PhaseProj::Holding => {
                    let held = &mut *this.held;
                    let (Some(holds), Some(hold)) =
                        (held.policies.holds.as_ref(), held.hold.as_mut())
                    else {
                        // Only a request with a hold goes through `Holding`.
                        this.phase.set(Phase::Done);
                        return Poll::Pending;
                    };
                    let seen = holds.register(hold.slot, cx.waker());
                    let look_again = match hold.seen {
                        // Registered: look once more, in case the answer
                        // came between the refusal and the registration.
                        None => {
                            hold.seen = Some(seen);
                            true
                        }
                        Some(before) if before != seen => {
                            hold.answered = true;
                            true
                        }
                        Some(_) => false,
                    };
                    if !look_again {
                        let at = hold.due.map_or(hold.until, |due| due.min(hold.until));
                        if *this.alarm != Alarm::Hold {
                            set_timer(held, this.timer.as_mut(), this.alarm, Alarm::Hold, at, cx);
                        }
                        if poll_timer(held, this.timer.as_mut(), cx).is_pending() {
                            // The hold ends before the deadline.
                            return Poll::Pending;
                        }
                        // Fired: set again for the next hold, if any.
                        *this.alarm = Alarm::Unset;
                    }
                    this.phase.set(Phase::Readying { held: true });
                    continue;
                }
                PhaseProj::Readying { held } => {
                    let held = *held;
                    let Some(retrying) = this.retry.as_mut() else {
                        // Only a retry goes through `Readying`.
                        this.phase.set(Phase::Done);
                        return Poll::Pending;
                    };
                    match retrying.service.poll_ready(cx) {
                        Poll::Pending => break,
                        Poll::Ready(Err(e)) => {
                            this.phase.set(Phase::Done);
                            this.held.disarm();
                            return Poll::Ready(Err(TenlivesError::Inner(e)));
                        }
                        Poll::Ready(Ok(())) if held => {
                            // A held request tries admission again: the
                            // same attempt, no retry and no withdrawal.
                            let p = &*this.held.policies;
                            let now = p.now_if(true);
                            match p.admission.admit(now) {
                                Ok(token) => {
                                    span.admitted();
                                    this.held.end_hold();
                                    this.held.hold(token, now);
                                    let request = (retrying.clone_request)(&retrying.request);
                                    let future = retrying.service.call(request);
                                    this.phase.set(Phase::Calling { future });
                                }
                                Err(rejection) => {
                                    if this.held.resume_hold(&rejection, now) {
                                        this.phase.set(Phase::Holding);
                                    } else {
                                        span.rejected(&rejection);
                                        this.held.end_hold();
                                        this.phase.set(Phase::Rejected {
                                            rejection: Some(rejection),
                                        });
                                    }
                                }
                            }
                            continue;
                        }
                        Poll::Ready(Ok(())) => {
                            let p = &*this.held.policies;
                            // The retry is about to be sent: it withdraws
                            // now, not when it was decided, so a request
                            // dropped during its backoff spends nothing.
                            let now = p.now_if(true);
                            if !p.retry.withdraw(now) {
                                // Refused: the request ends with the result
                                // it would have retried.
                                this.phase.set(Phase::Done);
                                this.held.disarm();
                                if let Some(result) = this.last.take() {
                                    return Poll::Ready(result);
                                }
                                // Only a retry goes through `Readying`, and
                                // only with a result kept.
                                return Poll::Pending;
                            }
                            *this.last = None;
                            retrying.attempts = retrying.attempts.saturating_add(1);
                            span.attempts(retrying.attempts);
                            match p.admission.admit(now) {
                                Ok(token) => {
                                    span.admitted();
                                    this.held.hold(token, now);
                                    let request = (retrying.clone_request)(&retrying.request);
                                    let future = retrying.service.call(request);
                                    this.phase.set(Phase::Calling { future });
                                }
                                Err(rejection) => {
                                    span.rejected(&rejection);
                                    this.phase.set(Phase::Rejected {
                                        rejection: Some(rejection),
                                    });
                                }
                            }
                            continue;
                        }
                    }
                }
                // Polled after completion: the caller's bug; stay pending.
                PhaseProj::Done => return Poll::Pending,
            };
            // An attempt ended. Another one, or the result?
            if let Some(retrying) = this.retry.as_mut() {
                let p = &*this.held.policies;
                if p.retry.should_retry(&result)
                    && let Some(delay) = p.retry.next_delay(&mut retrying.schedule)
                {
                    // Retrying sooner than a policy said it would admit, or
                    // than the upstream asked, is waste: wait at least that.
                    let delay = match result.as_ref().err().and_then(TenlivesError::retry_after) {
                        Some(after) => delay.max(after),
                        None => delay,
                    };
                    let delay = match p.retry.server_wait(&result) {
                        Some(wait) => delay.max(wait),
                        None => delay,
                    };
                    let now = now.unwrap_or_else(|| p.now_if(true));
                    let wake_at = now.saturating_add(delay);
                    // An attempt that could only start after the deadline
                    // would time out unsent: return this result instead.
                    let in_time = this.deadline.as_ref().is_none_or(|d| wake_at < d.at);
                    if in_time {
                        // The withdrawal is taken when the retry is sent
                        // (`Readying`); the result is kept for a refusal.
                        set_timer(
                            this.held,
                            this.timer.as_mut(),
                            this.alarm,
                            Alarm::Backoff,
                            wake_at,
                            cx,
                        );
                        *this.last = Some(result);
                        this.phase.set(Phase::Waiting);
                        continue;
                    }
                }
            }
            this.phase.set(Phase::Done);
            this.held.disarm();
            return Poll::Ready(result);
        }
        // An attempt, or the service's readiness, is pending: has the
        // deadline passed?
        let Some(deadline) = this.deadline.as_ref() else {
            return Poll::Pending;
        };
        if *this.alarm != Alarm::Deadline {
            set_timer(
                this.held,
                this.timer.as_mut(),
                this.alarm,
                Alarm::Deadline,
                deadline.at,
                cx,
            );
        }
        if poll_timer(this.held, this.timer.as_mut(), cx).is_ready() {
            span.outcome("timed_out");
            this.held.timed_out();
            this.held.disarm();
            this.phase.set(Phase::Done);
            return Poll::Ready(Err(TenlivesError::TimedOut {
                after: deadline.after,
            }));
        }
        Poll::Pending
    }
}
