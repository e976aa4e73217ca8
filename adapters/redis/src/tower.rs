//! Tower layers for the fleet-wide limits: [`FleetRateLimitLayer`] wraps a
//! service so that each call first asks a shared [`FleetRateLimiter`], and
//! [`FleetConcurrencyLimitLayer`] so that each call holds a permit of a
//! shared [`FleetSemaphore`] until its response future completes or is
//! dropped. A refused call fails at once with a typed rejection
//! ([`FleetRejected`], [`SemaphoreRejected`]) carrying the reason and a
//! `retry_after`, and never reaches the inner service.
//!
//! The decision is [`FleetRateLimiter::try_acquire`] (never waits, never
//! touches the network), and the response future is the named
//! [`FleetResponseFuture`], an enum over the inner future and the ready
//! rejection: no allocation and no boxed future per request (tested in
//! `tests/no_alloc.rs`).

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};
use core::time::Duration;
use std::sync::Arc;

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::limiter::{FleetRateLimiter, Refused};
use crate::semaphore::{FleetSemaphore, OwnedFleetPermit, SemaphoreRefused};

/// A call refused by the fleet-wide rate limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FleetRejected {
    /// Why: the fleet's quota in use, the process's share, or Redis
    /// unreachable and the failure policy refusing.
    pub reason: Refused,
    /// When trying again may help (an HTTP server's `Retry-After`): the
    /// engine limiter's own wait for [`Refused::ShareLimited`] and
    /// [`Refused::Fallback`]; the refresh interval — when the next lease
    /// may arrive — for [`Refused::QuotaExhausted`] and
    /// [`Refused::FailClosed`].
    pub retry_after: Duration,
}

impl core::fmt::Display for FleetRejected {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}; retry after {:?}", self.reason, self.retry_after)
    }
}

impl std::error::Error for FleetRejected {}

/// A call refused by the fleet-wide concurrency limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SemaphoreRejected {
    /// Why: the leased permits in use, or Redis unreachable and the failure
    /// policy refusing.
    pub reason: SemaphoreRefused,
    /// When trying again may help: the refresh interval, when the claim is
    /// next renewed (a permit released in this process may come sooner).
    pub retry_after: Duration,
}

impl core::fmt::Display for SemaphoreRejected {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}; retry after {:?}", self.reason, self.retry_after)
    }
}

impl std::error::Error for SemaphoreRejected {}

/// The error of a [`FleetRateLimit`] (`R` = [`FleetRejected`]) or
/// [`FleetConcurrencyLimit`] (`R` = [`SemaphoreRejected`]) service: the
/// limit refused, or the inner service failed.
#[derive(Debug, PartialEq, Eq)]
pub enum FleetLimitError<E, R = FleetRejected> {
    /// The fleet-wide limit refused the call; the inner service was not
    /// called.
    Rejected(R),
    /// The inner service's own error.
    Inner(E),
}

impl<E, R> FleetLimitError<E, R> {
    /// The rejection, if the limit refused.
    pub fn rejected(&self) -> Option<&R> {
        match self {
            FleetLimitError::Rejected(r) => Some(r),
            FleetLimitError::Inner(_) => None,
        }
    }
}

impl<E: core::fmt::Display, R: core::fmt::Display> core::fmt::Display for FleetLimitError<E, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FleetLimitError::Rejected(r) => r.fmt(f),
            FleetLimitError::Inner(e) => e.fmt(f),
        }
    }
}

impl<E, R> std::error::Error for FleetLimitError<E, R>
where
    E: std::error::Error + 'static,
    R: std::error::Error + 'static,
{
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FleetLimitError::Rejected(r) => Some(r),
            FleetLimitError::Inner(e) => Some(e),
        }
    }
}

/// Applies a shared [`FleetRateLimiter`] to every call of the wrapped
/// service. Cloning the layer or its services shares the limiter.
#[derive(Clone, Debug)]
pub struct FleetRateLimitLayer {
    limiter: Arc<FleetRateLimiter>,
}

impl FleetRateLimitLayer {
    /// A layer deciding every call with `limiter`.
    pub fn new(limiter: Arc<FleetRateLimiter>) -> Self {
        FleetRateLimitLayer { limiter }
    }
}

impl<S> Layer<S> for FleetRateLimitLayer {
    type Service = FleetRateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FleetRateLimit {
            inner,
            limiter: Arc::clone(&self.limiter),
        }
    }
}

/// A service behind the fleet-wide rate limit (see [`FleetRateLimitLayer`]).
#[derive(Clone, Debug)]
pub struct FleetRateLimit<S> {
    inner: S,
    limiter: Arc<FleetRateLimiter>,
}

impl<S> FleetRateLimit<S> {
    /// The limiter deciding this service's calls.
    pub fn limiter(&self) -> &Arc<FleetRateLimiter> {
        &self.limiter
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, Req> Service<Req> for FleetRateLimit<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = FleetLimitError<S::Error>;
    type Future = FleetResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the inner service's: the limit is decided per call,
        // at the moment the call is made, so that a token is never held
        // between readiness and a call that may never come.
        self.inner.poll_ready(cx).map_err(FleetLimitError::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.limiter.try_acquire() {
            Ok(_) => FleetResponseFuture::admitted(self.inner.call(req)),
            Err(reason) => FleetResponseFuture::rejected(FleetRejected {
                reason,
                retry_after: self.limiter.retry_after(&reason),
            }),
        }
    }
}

pin_project! {
    /// The response future of [`FleetRateLimit`]: the inner service's
    /// future for an admitted call, or a rejection ready at once.
    #[derive(Debug)]
    pub struct FleetResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = Projected]
    #[derive(Debug)]
    enum State<F> {
        Admitted { #[pin] future: F },
        Rejected { rejection: FleetRejected },
    }
}

impl<F> FleetResponseFuture<F> {
    fn admitted(future: F) -> Self {
        FleetResponseFuture {
            state: State::Admitted { future },
        }
    }

    fn rejected(rejection: FleetRejected) -> Self {
        FleetResponseFuture {
            state: State::Rejected { rejection },
        }
    }
}

impl<F, T, E> Future for FleetResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, FleetLimitError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            Projected::Admitted { future } => future.poll(cx).map_err(FleetLimitError::Inner),
            // The rejection is `Copy`: a poll after completion gets it again.
            Projected::Rejected { rejection } => {
                Poll::Ready(Err(FleetLimitError::Rejected(*rejection)))
            }
        }
    }
}

/// Holds a permit of a shared [`FleetSemaphore`] for every call of the
/// wrapped service, from the call until its response future completes (or
/// is dropped). Cloning the layer or its services shares the semaphore.
#[derive(Clone, Debug)]
pub struct FleetConcurrencyLimitLayer {
    semaphore: Arc<FleetSemaphore>,
}

impl FleetConcurrencyLimitLayer {
    /// A layer taking a permit of `semaphore` for every call.
    pub fn new(semaphore: Arc<FleetSemaphore>) -> Self {
        FleetConcurrencyLimitLayer { semaphore }
    }
}

impl<S> Layer<S> for FleetConcurrencyLimitLayer {
    type Service = FleetConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FleetConcurrencyLimit {
            inner,
            semaphore: Arc::clone(&self.semaphore),
        }
    }
}

/// A service behind the fleet-wide concurrency limit (see
/// [`FleetConcurrencyLimitLayer`]).
#[derive(Clone, Debug)]
pub struct FleetConcurrencyLimit<S> {
    inner: S,
    semaphore: Arc<FleetSemaphore>,
}

impl<S> FleetConcurrencyLimit<S> {
    /// The semaphore deciding this service's calls.
    pub fn semaphore(&self) -> &Arc<FleetSemaphore> {
        &self.semaphore
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, Req> Service<Req> for FleetConcurrencyLimit<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = FleetLimitError<S::Error, SemaphoreRejected>;
    type Future = FleetConcurrencyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // As for the rate limit: the permit is taken in `call`, never held
        // between readiness and a call that may never come.
        self.inner.poll_ready(cx).map_err(FleetLimitError::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.semaphore.try_acquire_owned() {
            // The permit is owned before the inner service runs: if its
            // `call` panics, the permit is dropped (released) on the way out.
            Ok(permit) => FleetConcurrencyFuture {
                state: ConcState::Admitted {
                    future: self.inner.call(req),
                    permit: Some(permit),
                },
            },
            Err(reason) => FleetConcurrencyFuture {
                state: ConcState::Rejected {
                    rejection: SemaphoreRejected {
                        reason,
                        retry_after: self.semaphore.retry_after(),
                    },
                },
            },
        }
    }
}

pin_project! {
    /// The response future of [`FleetConcurrencyLimit`]: the inner
    /// service's future holding its permit (released when it completes or
    /// is dropped), or a rejection ready at once.
    #[derive(Debug)]
    pub struct FleetConcurrencyFuture<F> {
        #[pin]
        state: ConcState<F>,
    }
}

pin_project! {
    #[project = ConcProjected]
    #[derive(Debug)]
    enum ConcState<F> {
        Admitted { #[pin] future: F, permit: Option<OwnedFleetPermit> },
        Rejected { rejection: SemaphoreRejected },
    }
}

impl<F, T, E> Future for FleetConcurrencyFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, FleetLimitError<E, SemaphoreRejected>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            ConcProjected::Admitted { future, permit } => {
                let out = core::task::ready!(future.poll(cx));
                // Released as soon as the call is done.
                drop(permit.take());
                Poll::Ready(out.map_err(FleetLimitError::Inner))
            }
            ConcProjected::Rejected { rejection } => {
                Poll::Ready(Err(FleetLimitError::Rejected(*rejection)))
            }
        }
    }
}
