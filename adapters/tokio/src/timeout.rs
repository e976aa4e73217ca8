//! A timeout as a tower layer, on tokio's timer.
//!
//! [`TimeoutLayer`] fails a call with [`TenlivesError::TimedOut`] when its
//! response has not arrived within the configured time from `call`; the
//! wrapped call is then dropped (cancelled). The deadline is taken in `call`
//! from a [`TokioClock`] (the TSC, or tokio's clock when it is paused: one
//! reading of 10-15 ns instead of `Instant::now`'s 32-40 ns), and the
//! `tokio::time::Sleep` that enforces it is made only when the
//! wrapped call first returns `Pending`: a call that completes on its first
//! poll never touches the timer. The sleep lives inside the named response
//! future; nothing is boxed.
//!
//! ```
//! use std::time::Duration;
//! use tenlives_tokio::{TenlivesError, TimeoutLayer};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let mut svc = TimeoutLayer::new(Duration::from_millis(100)).layer(service_fn(|_: ()| async {
//!     tokio::time::sleep(Duration::from_secs(5)).await; // far too slow
//!     Ok::<_, std::io::Error>(())
//! }));
//! let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
//! assert!(matches!(err, TenlivesError::TimedOut { after } if after == Duration::from_millis(100)));
//! # }
//! ```
//!
//! # Panics
//!
//! A call that does not complete on its first poll needs a tokio runtime with
//! the time driver enabled, like any `tokio::time::sleep`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tenlives_engine::time::Clock;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::clock::TokioClock;
use crate::error::TenlivesError;
use crate::span::{CallSpan, call_span};

/// A tower [`Layer`] that bounds how long a call may take. See the
/// [module documentation](self).
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    after: Duration,
    clock: TokioClock,
}

impl TimeoutLayer {
    /// Calls fail with [`TenlivesError::TimedOut`] after `after`, timed on a
    /// [`TokioClock`] made now.
    pub fn new(after: Duration) -> Self {
        Self::with_clock(after, TokioClock::new())
    }

    /// Calls fail with [`TenlivesError::TimedOut`] after `after`, timed on
    /// `clock`.
    pub fn with_clock(after: Duration, clock: TokioClock) -> Self {
        TimeoutLayer { after, clock }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            after: self.after,
            clock: self.clock,
        }
    }
}

/// A service whose calls time out. Made by [`TimeoutLayer`].
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    after: Duration,
    clock: TokioClock,
}

impl<S> Timeout<S> {
    /// `inner`, whose calls fail after `after` (timed on a [`TokioClock`]
    /// made now).
    pub fn new(inner: S, after: Duration) -> Self {
        Timeout {
            inner,
            after,
            clock: TokioClock::new(),
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, Req> Service<Req> for Timeout<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = TenlivesError<S::Error>;
    type Future = TimeoutFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(TenlivesError::Inner)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let span = call_span!("tenlives.timeout", "timeout");
        let inner = span.in_scope(|| self.inner.call(req));
        TimeoutFuture {
            inner,
            sleep: None,
            deadline: Deadline::new(self.clock.instant_at(self.clock.now()), self.after),
            span,
        }
    }
}

/// When a call times out, and the timeout it came from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    pub(crate) at: Instant,
    pub(crate) after: Duration,
}

/// About 30 years: how far a deadline that would overflow tokio's `Instant`
/// is put instead (the same bound tokio uses for "never").
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

impl Deadline {
    /// The deadline `after` from `start`, saturating far in the future.
    pub(crate) fn new(start: Instant, after: Duration) -> Self {
        let at = start
            .checked_add(after)
            .unwrap_or_else(|| start + FAR_FUTURE);
        Deadline { at, after }
    }

    /// Polls the deadline's sleep, making it on first use. `Ready` when the
    /// deadline has passed.
    #[inline]
    pub(crate) fn poll(
        &self,
        mut sleep: Pin<&mut Option<Sleep>>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        if sleep.is_none() {
            sleep.set(Some(tokio::time::sleep_until(self.at)));
        }
        match sleep.as_pin_mut() {
            Some(sleep) => sleep.poll(cx),
            // Set just above.
            None => Poll::Pending,
        }
    }
}

pin_project! {
    /// The response future of [`Timeout`]: the wrapped call, and the sleep
    /// that ends it (made only once the call returns `Pending`).
    #[must_use = "futures do nothing unless polled"]
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        deadline: Deadline,
        span: CallSpan,
    }
}

impl<F: fmt::Debug> fmt::Debug for TimeoutFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutFuture")
            .field("inner", &self.inner)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl<F, Res, E> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<Res, E>>,
{
    type Output = Result<Res, TenlivesError<E>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            this.span.ended(&result);
            return Poll::Ready(result.map_err(TenlivesError::Inner));
        }
        std::task::ready!(this.deadline.poll(this.sleep, cx));
        this.span.outcome("timed_out");
        Poll::Ready(Err(TenlivesError::TimedOut {
            after: this.deadline.after,
        }))
    }
}
