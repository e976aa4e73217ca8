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
use crate::admission::Admission;
use crate::classify::Classify;
use crate::error::{Rejection, TenlivesError};
use crate::retry::{RetryClones, RetryStage};
use crate::span::CallSpan;

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
}

impl<K, R, A: Admission> Held<K, R, A> {
    pub(crate) fn new(policies: Handle<Policies<K, R, A>>, now: Timestamp) -> Self {
        Held {
            policies,
            token: None,
            admitted_at: now,
            alarm: None,
        }
    }

    /// Keeps the token of an attempt admitted at `now`.
    #[inline]
    pub(crate) fn hold(&mut self, token: A::Token, now: Timestamp) {
        self.token = Some(token);
        self.admitted_at = now;
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
        }
        let now = needs_time.then_some(now);
        (result.map_err(TenlivesError::Inner), now, outcome)
    }

    /// The timeout fired with an attempt in flight: it failed (a breaker
    /// counts a failure, an adaptive limit a drop).
    fn timed_out(&mut self) {
        let p = &*self.policies;
        if let Some(token) = self.token.take() {
            let needs_time =
                p.time_at_end && p.admission.needs_time_to_complete(&token, Outcome::Failure);
            let now = p.now_if(needs_time);
            p.admission
                .complete(token, Outcome::Failure, self.admitted_at, now);
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
    }
}

impl<K, R, A: Admission> Drop for Held<K, R, A> {
    fn drop(&mut self) {
        self.disarm();
        if let Some(token) = self.token.take() {
            self.policies.admission.release(token);
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
        /// The delay is over; waiting for the clone of the service to be ready.
        Readying,
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
            Phase::Readying => "readying",
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
                    Some(rejection) => (Err(TenlivesError::Rejected(rejection)), None),
                    None => break,
                },
                PhaseProj::Waiting => {
                    if poll_timer(this.held, this.timer.as_mut(), cx).is_pending() {
                        // The deadline is later than the end of the delay.
                        return Poll::Pending;
                    }
                    this.phase.set(Phase::Readying);
                    continue;
                }
                PhaseProj::Readying => {
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
