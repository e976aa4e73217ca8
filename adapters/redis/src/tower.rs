//! A tower layer for the fleet-wide rate limit: [`FleetRateLimitLayer`]
//! wraps a service so that each call first asks a shared
//! [`FleetRateLimiter`]; a refused call fails at once with a typed
//! [`FleetRejected`] carrying the reason and a `retry_after`, and never
//! reaches the inner service.
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

/// The error of a [`FleetRateLimit`] service: the limit refused, or the
/// inner service failed.
#[derive(Debug, PartialEq, Eq)]
pub enum FleetLimitError<E> {
    /// The fleet-wide rate limit refused the call; the inner service was
    /// not called.
    Rejected(FleetRejected),
    /// The inner service's own error.
    Inner(E),
}

impl<E> FleetLimitError<E> {
    /// The rejection, if the limit refused.
    pub fn rejected(&self) -> Option<&FleetRejected> {
        match self {
            FleetLimitError::Rejected(r) => Some(r),
            FleetLimitError::Inner(_) => None,
        }
    }
}

impl<E: core::fmt::Display> core::fmt::Display for FleetLimitError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FleetLimitError::Rejected(r) => r.fmt(f),
            FleetLimitError::Inner(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for FleetLimitError<E> {
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
