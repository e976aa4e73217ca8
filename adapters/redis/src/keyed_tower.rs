//! A tower layer for keyed fleet quotas: [`KeyedFleetRateLimitLayer`] takes
//! a key from each request (a user, an API key) with a function of the
//! caller's, and asks a shared [`KeyedFleetLimiter`] for that key before the
//! call reaches the wrapped service. A refused call fails at once with
//! [`FleetLimitError::Rejected`]`(`[`KeyedFleetRejected`]`)`, carrying the
//! reason and a `retry_after`, and never reaches the inner service.
//!
//! As with [`FleetRateLimitLayer`](crate::FleetRateLimitLayer), readiness
//! is the inner service's, the decision is made in `call`, and the response
//! future is a named enum ([`KeyedFleetResponseFuture`]): no boxed future.
//! The key function runs once per call; for a resident key the decision
//! allocates nothing, so a key type whose construction does not allocate
//! (`u64`, `Arc<str>` cloned from the request) keeps the whole call free of
//! allocation.

use core::fmt;
use core::future::Future;
use core::hash::Hash;
use core::pin::Pin;
use core::task::{Context, Poll};
use core::time::Duration;
use std::sync::Arc;

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::keyed::{KeyedFleetLimiter, KeyedRefused};
use crate::tower::FleetLimitError;

/// A call refused by a keyed fleet quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyedFleetRejected {
    /// Why (see [`KeyedRefused`]).
    pub reason: KeyedRefused,
    /// When trying again may help: [`KeyedFleetLimiter::retry_after`].
    pub retry_after: Duration,
}

impl fmt::Display for KeyedFleetRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; retry after {:?}", self.reason, self.retry_after)
    }
}

impl std::error::Error for KeyedFleetRejected {}

/// Applies a shared [`KeyedFleetLimiter`] to every call of the wrapped
/// service, for the key `key_of` takes from the request. Cloning the layer
/// or its services shares the limiter.
pub struct KeyedFleetRateLimitLayer<K, F> {
    limiter: Arc<KeyedFleetLimiter<K>>,
    key_of: F,
}

impl<K, F: Clone> Clone for KeyedFleetRateLimitLayer<K, F> {
    fn clone(&self) -> Self {
        KeyedFleetRateLimitLayer {
            limiter: Arc::clone(&self.limiter),
            key_of: self.key_of.clone(),
        }
    }
}

impl<K, F> fmt::Debug for KeyedFleetRateLimitLayer<K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedFleetRateLimitLayer")
            .finish_non_exhaustive()
    }
}

impl<K, F> KeyedFleetRateLimitLayer<K, F> {
    /// A layer deciding every call with `limiter`, for the key `key_of`
    /// returns for the request.
    pub fn new(limiter: Arc<KeyedFleetLimiter<K>>, key_of: F) -> Self {
        KeyedFleetRateLimitLayer { limiter, key_of }
    }
}

impl<S, K, F: Clone> Layer<S> for KeyedFleetRateLimitLayer<K, F> {
    type Service = KeyedFleetRateLimit<S, K, F>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedFleetRateLimit {
            inner,
            limiter: Arc::clone(&self.limiter),
            key_of: self.key_of.clone(),
        }
    }
}

/// A service behind a keyed fleet quota (see [`KeyedFleetRateLimitLayer`]).
pub struct KeyedFleetRateLimit<S, K, F> {
    inner: S,
    limiter: Arc<KeyedFleetLimiter<K>>,
    key_of: F,
}

impl<S: Clone, K, F: Clone> Clone for KeyedFleetRateLimit<S, K, F> {
    fn clone(&self) -> Self {
        KeyedFleetRateLimit {
            inner: self.inner.clone(),
            limiter: Arc::clone(&self.limiter),
            key_of: self.key_of.clone(),
        }
    }
}

impl<S: fmt::Debug, K, F> fmt::Debug for KeyedFleetRateLimit<S, K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedFleetRateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, K, F> KeyedFleetRateLimit<S, K, F> {
    /// The limiter deciding this service's calls.
    pub fn limiter(&self) -> &Arc<KeyedFleetLimiter<K>> {
        &self.limiter
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, K, F, Req> Service<Req> for KeyedFleetRateLimit<S, K, F>
where
    S: Service<Req>,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    F: Fn(&Req) -> K,
{
    type Response = S::Response;
    type Error = FleetLimitError<S::Error, KeyedFleetRejected>;
    type Future = KeyedFleetResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the inner service's: the limit is decided per call.
        self.inner.poll_ready(cx).map_err(FleetLimitError::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = (self.key_of)(&req);
        match self.limiter.try_acquire(&key) {
            Ok(_) => KeyedFleetResponseFuture {
                state: State::Admitted {
                    future: self.inner.call(req),
                },
            },
            Err(reason) => KeyedFleetResponseFuture {
                state: State::Rejected {
                    rejection: KeyedFleetRejected {
                        reason,
                        retry_after: self.limiter.retry_after(&reason),
                    },
                },
            },
        }
    }
}

pin_project! {
    /// The response future of [`KeyedFleetRateLimit`]: the inner service's
    /// future for an admitted call, or a rejection ready at once.
    #[derive(Debug)]
    pub struct KeyedFleetResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = Projected]
    #[derive(Debug)]
    enum State<F> {
        Admitted { #[pin] future: F },
        Rejected { rejection: KeyedFleetRejected },
    }
}

impl<F, T, E> Future for KeyedFleetResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, FleetLimitError<E, KeyedFleetRejected>>;

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
