//! Fallbacks as a tower layer: for chosen failures, a value or another
//! service answers instead, told why.
//!
//! [`FallbackLayer`] calls the wrapped service; when its error is one the
//! layer's [`FallbackWhen`] selects — a rejection by a policy, a timeout, a
//! failure of the service, any mix ([`On`] for a [`TenlivesError`], or any
//! closure over the error) — it answers with the fallback instead, which is
//! given the error itself as the reason:
//!
//! - [`FallbackValue`]: a function of the reason, answered at once;
//! - [`FallbackService`]: another service, called with the request and the
//!   reason (a clone of the request is kept for it at `call`, and a clone of
//!   the fallback service is polled ready before it is called, on the
//!   fallback path only).
//!
//! Errors not selected, and successes, pass through unchanged. Put the layer
//! outermost, around a [`StackLayer`](crate::StackLayer) or the separate
//! layers, so that it sees their rejections and timeouts.
//!
//! ```
//! use std::time::Duration;
//! use tenlives_tokio::fallback::{FallbackLayer, FallbackValue, On};
//! use tenlives_tokio::{TenlivesError, TimeoutLayer};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let slow = service_fn(|_: ()| async {
//!     tokio::time::sleep(Duration::from_secs(5)).await;
//!     Ok::<_, std::io::Error>("fresh")
//! });
//! let fallback = FallbackLayer::new(
//!     On::timeouts().and_rejections(),
//!     FallbackValue::new(|reason: TenlivesError<std::io::Error>| {
//!         assert!(reason.is_timeout());
//!         Ok("cached")
//!     }),
//! );
//! let mut svc = fallback.layer(TimeoutLayer::new(Duration::from_millis(100)).layer(slow));
//! assert_eq!(svc.ready().await.unwrap().call(()).await.unwrap(), "cached");
//! assert_eq!(fallback.taken(), 1);
//! # }
//! ```

use std::fmt;
use std::future::{Future, Ready};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::TenlivesError;
use crate::span::{CallSpan, call_span};

/// Which errors the fallback answers for.
///
/// Implemented by [`On`] (for a [`TenlivesError`]) and by every closure
/// `Fn(&Err) -> bool`.
pub trait FallbackWhen<Err> {
    /// Whether the fallback answers instead of returning `error`.
    fn selects(&self, error: &Err) -> bool;

    /// What kind of failure `error` is, for the `reason` of the layer's
    /// `tracing` span (feature `tracing`) when the fallback answers for it:
    /// [`On`] says `rejected`, `timed_out`, `injected` or `failure`; the
    /// default, `failure`.
    fn reason(&self, error: &Err) -> &'static str {
        let _ = error;
        "failure"
    }
}

impl<Err, F: Fn(&Err) -> bool> FallbackWhen<Err> for F {
    #[inline]
    fn selects(&self, error: &Err) -> bool {
        self(error)
    }
}

/// A choice among the kinds of [`TenlivesError`]: rejections by a policy,
/// timeouts, failures of the wrapped service (`Inner`, all or those a
/// function selects), injected faults.
#[derive(Clone, Copy)]
pub struct On<E = ()> {
    rejections: bool,
    timeouts: bool,
    injected: bool,
    failures: Option<fn(&E) -> bool>,
}

impl<E> fmt::Debug for On<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("On")
            .field("rejections", &self.rejections)
            .field("timeouts", &self.timeouts)
            .field("injected", &self.injected)
            .field("failures", &self.failures.is_some())
            .finish()
    }
}

impl<E> On<E> {
    const NONE: Self = On {
        rejections: false,
        timeouts: false,
        injected: false,
        failures: None,
    };
    /// Rejections by a policy (nothing was sent).
    pub fn rejections() -> Self {
        Self::NONE.and_rejections()
    }
    /// Timeouts.
    pub fn timeouts() -> Self {
        Self::NONE.and_timeouts()
    }
    /// Failures of the wrapped service that `classify` selects (`|_| true`
    /// for all).
    pub fn failures(classify: fn(&E) -> bool) -> Self {
        Self::NONE.and_failures(classify)
    }
    /// Also rejections.
    #[must_use]
    pub fn and_rejections(mut self) -> Self {
        self.rejections = true;
        self
    }
    /// Also timeouts.
    #[must_use]
    pub fn and_timeouts(mut self) -> Self {
        self.timeouts = true;
        self
    }
    /// Also injected faults.
    #[must_use]
    pub fn and_injected(mut self) -> Self {
        self.injected = true;
        self
    }
    /// Also the failures of the wrapped service that `classify` selects.
    #[must_use]
    pub fn and_failures(mut self, classify: fn(&E) -> bool) -> Self {
        self.failures = Some(classify);
        self
    }
}

impl<E> FallbackWhen<TenlivesError<E>> for On<E> {
    #[inline]
    fn selects(&self, error: &TenlivesError<E>) -> bool {
        match error {
            TenlivesError::Rejected(_) => self.rejections,
            TenlivesError::TimedOut { .. } => self.timeouts,
            TenlivesError::Injected(_) => self.injected,
            TenlivesError::Inner(e) => self.failures.is_some_and(|f| f(e)),
        }
    }

    fn reason(&self, error: &TenlivesError<E>) -> &'static str {
        match error {
            TenlivesError::Rejected(_) => "rejected",
            TenlivesError::TimedOut { .. } => "timed_out",
            TenlivesError::Injected(_) => "injected",
            TenlivesError::Inner(_) => "failure",
        }
    }
}

/// What answers instead: [`FallbackValue`] or [`FallbackService`].
pub trait Fallback<Req, Res, Err> {
    /// What is kept from the request at `call` for the fallback.
    type Kept;
    /// The fallback's answer.
    type Future: Future<Output = Result<Res, Err>>;
    /// Keeps what the fallback will need of `request`.
    fn keep(&self, request: &Req) -> Self::Kept;
    /// The answer for a request whose call failed with `reason`.
    fn fallback(&self, kept: Self::Kept, reason: Err) -> Self::Future;
}

/// A fallback value: a function of the reason, answered at once.
#[derive(Clone, Copy, Debug)]
pub struct FallbackValue<F>(F);

impl<F> FallbackValue<F> {
    /// Answers `value(reason)`.
    pub fn new(value: F) -> Self {
        FallbackValue(value)
    }
}

impl<Req, Res, Err, F> Fallback<Req, Res, Err> for FallbackValue<F>
where
    F: Fn(Err) -> Result<Res, Err>,
{
    type Kept = ();
    type Future = Ready<Result<Res, Err>>;
    #[inline]
    fn keep(&self, _request: &Req) {}
    #[inline]
    fn fallback(&self, (): (), reason: Err) -> Self::Future {
        std::future::ready((self.0)(reason))
    }
}

/// A fallback service, called with `(request, reason)`. A clone of it is
/// polled ready, then called, for each fallback.
#[derive(Clone, Debug)]
pub struct FallbackService<S>(S);

impl<S> FallbackService<S> {
    /// Calls `service` for a fallback.
    pub fn new(service: S) -> Self {
        FallbackService(service)
    }
}

impl<Req, Res, Err, S> Fallback<Req, Res, Err> for FallbackService<S>
where
    S: Service<(Req, Err), Response = Res, Error = Err> + Clone,
    Req: Clone,
{
    type Kept = Req;
    type Future = ServiceFallbackFuture<S, Req, Err>;
    #[inline]
    fn keep(&self, request: &Req) -> Req {
        request.clone()
    }
    fn fallback(&self, kept: Req, reason: Err) -> Self::Future {
        ServiceFallbackFuture {
            state: ServiceFallbackState::Readying {
                service: self.0.clone(),
                call: Some((kept, reason)),
            },
        }
    }
}

pin_project! {
    #[project = ServiceFallbackProj]
    enum ServiceFallbackState<S: Service<(Req, Err)>, Req, Err> {
        Readying { service: S, call: Option<(Req, Err)> },
        Calling { #[pin] future: S::Future },
    }
}

pin_project! {
    /// The answer of a [`FallbackService`]: its clone polled ready, then
    /// its call.
    #[must_use = "futures do nothing unless polled"]
    pub struct ServiceFallbackFuture<S: Service<(Req, Err)>, Req, Err> {
        #[pin]
        state: ServiceFallbackState<S, Req, Err>,
    }
}

impl<S: Service<(Req, Err)>, Req, Err> fmt::Debug for ServiceFallbackFuture<S, Req, Err> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceFallbackFuture")
            .finish_non_exhaustive()
    }
}

impl<S, Req, Err> Future for ServiceFallbackFuture<S, Req, Err>
where
    S: Service<(Req, Err), Error = Err>,
{
    type Output = Result<S::Response, Err>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                ServiceFallbackProj::Readying { service, call } => {
                    std::task::ready!(service.poll_ready(cx))?;
                    let Some(request) = call.take() else {
                        // Polled after it failed to call: stay pending.
                        return Poll::Pending;
                    };
                    let future = service.call(request);
                    this.state.set(ServiceFallbackState::Calling { future });
                }
                ServiceFallbackProj::Calling { future } => return future.poll(cx),
            }
        }
    }
}

struct Shared<W, F> {
    when: W,
    fallback: F,
    taken: AtomicU64,
}

/// A tower [`Layer`] answering chosen failures with a fallback. See the
/// [module documentation](self).
pub struct FallbackLayer<W, F> {
    shared: Arc<Shared<W, F>>,
}

impl<W, F> Clone for FallbackLayer<W, F> {
    fn clone(&self) -> Self {
        FallbackLayer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<W, F> fmt::Debug for FallbackLayer<W, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("taken", &self.taken())
            .finish_non_exhaustive()
    }
}

impl<W, F> FallbackLayer<W, F> {
    /// Answers the errors `when` selects with `fallback`.
    pub fn new(when: W, fallback: F) -> Self {
        FallbackLayer {
            shared: Arc::new(Shared {
                when,
                fallback,
                taken: AtomicU64::new(0),
            }),
        }
    }

    /// How many requests the fallback answered (or began to answer) so far.
    pub fn taken(&self) -> u64 {
        // ordering: Relaxed; a statistic.
        self.shared.taken.load(Ordering::Relaxed)
    }
}

impl<S, W, F> Layer<S> for FallbackLayer<W, F> {
    type Service = WithFallback<S, W, F>;

    fn layer(&self, inner: S) -> Self::Service {
        WithFallback {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// A service whose chosen failures a fallback answers. Made by
/// [`FallbackLayer`]; its response and error are the wrapped service's.
pub struct WithFallback<S, W, F> {
    inner: S,
    shared: Arc<Shared<W, F>>,
}

impl<S: Clone, W, F> Clone for WithFallback<S, W, F> {
    fn clone(&self) -> Self {
        WithFallback {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, W, F> fmt::Debug for WithFallback<S, W, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithFallback")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, Req, W, F> Service<Req> for WithFallback<S, W, F>
where
    S: Service<Req>,
    W: FallbackWhen<S::Error>,
    F: Fallback<Req, S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = FallbackFuture<S::Future, Req, W, F, S::Response, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let span = call_span!("tenlives.fallback", "fallback");
        let kept = self.shared.fallback.keep(&req);
        let future = span.in_scope(|| self.inner.call(req));
        FallbackFuture {
            state: State::Primary {
                future,
                kept: Some(kept),
            },
            shared: Arc::clone(&self.shared),
            span,
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<P, K, G> {
        Primary { #[pin] future: P, kept: Option<K> },
        Fallback { #[pin] future: G },
    }
}

pin_project! {
    /// The response future of a [`FallbackLayer`]'s service: the call, then
    /// (for a chosen failure) the fallback's answer.
    #[must_use = "futures do nothing unless polled"]
    pub struct FallbackFuture<P, Req, W, F: Fallback<Req, Res, Err>, Res, Err> {
        #[pin]
        state: State<P, F::Kept, F::Future>,
        shared: Arc<Shared<W, F>>,
        span: CallSpan,
    }
}

impl<P, Req, W, F: Fallback<Req, Res, Err>, Res, Err> fmt::Debug
    for FallbackFuture<P, Req, W, F, Res, Err>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackFuture").finish_non_exhaustive()
    }
}

impl<P, Req, W, F, Res, Err> Future for FallbackFuture<P, Req, W, F, Res, Err>
where
    P: Future<Output = Result<Res, Err>>,
    W: FallbackWhen<Err>,
    F: Fallback<Req, Res, Err>,
{
    type Output = Result<Res, Err>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let span = &*this.span;
        let _entered = span.enter();
        loop {
            match this.state.as_mut().project() {
                StateProj::Primary { future, kept } => {
                    let error = match std::task::ready!(future.poll(cx)) {
                        Ok(response) => {
                            span.decided("primary");
                            span.outcome("ok");
                            return Poll::Ready(Ok(response));
                        }
                        Err(error) => error,
                    };
                    let shared = &**this.shared;
                    if !shared.when.selects(&error) {
                        span.decided("primary");
                        span.outcome("error");
                        return Poll::Ready(Err(error));
                    }
                    let Some(kept) = kept.take() else {
                        // Only after the primary answered twice: a bug of
                        // the wrapped future; pass its error on.
                        return Poll::Ready(Err(error));
                    };
                    // ordering: Relaxed; a statistic.
                    shared.taken.fetch_add(1, Ordering::Relaxed);
                    span.decided("fallback");
                    span.reason(shared.when.reason(&error));
                    let future = shared.fallback.fallback(kept, error);
                    this.state.set(State::Fallback { future });
                }
                StateProj::Fallback { future } => {
                    let result = std::task::ready!(future.poll(cx));
                    span.ended(&result);
                    return Poll::Ready(result);
                }
            }
        }
    }
}
