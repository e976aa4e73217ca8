//! A timeout as a tower layer, on a shared timer wheel.
//!
//! [`TimeoutLayer`] fails a call with [`TenlivesError::TimedOut`] when its
//! response has not arrived within the configured time from `call`; the
//! wrapped call is then dropped (cancelled). The deadline is taken in `call`
//! from a [`TokioClock`] (the TSC, or tokio's clock when it is paused: one
//! reading of 10-15 ns instead of `Instant::now`'s 32-40 ns). The timer
//! that enforces it is set only when the wrapped call first returns
//! `Pending` (a call that completes on its first poll never touches it),
//! as an entry of the layer's [`Timers`] wheel, shared by every service the
//! layer makes: a few atomic operations and no tokio `Sleep` or timer-driver
//! lock per request, deadlines rounded up to the wheel's tick (1 ms by
//! default, [`TimeoutLayer::timer_wheel`] takes another). When every entry
//! is taken, a request sleeps on a tokio `Sleep` of its own, counted by
//! [`Timers::fallbacks`]. The entry is given back when the call ends, and
//! when the future is dropped or unwound by a panic; nothing is boxed.
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
//! the time driver enabled, like any `tokio::time::sleep` (the wheel's driver
//! task sleeps on tokio's timer).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tenlives_engine::ConfigError;
use tenlives_engine::time::{Clock, Timestamp};
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

use crate::clock::TokioClock;
use crate::error::TenlivesError;
use crate::span::{CallSpan, call_span};
use crate::wheel::{OwnedAlarm, Timers};

/// A tower [`Layer`] that bounds how long a call may take. See the
/// [module documentation](self).
///
/// Clones share the timer wheel.
#[derive(Clone, Debug)]
pub struct TimeoutLayer {
    after: Duration,
    clock: TokioClock,
    timers: Timers,
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
        TimeoutLayer {
            after,
            clock,
            timers: Timers::with_defaults(clock),
        }
    }

    /// The timer wheel of this layer's services: room for `capacity` timers
    /// at once (requests beyond it sleep on a tokio `Sleep` each, counted by
    /// [`Timers::fallbacks`]), deadlines rounded up to `resolution`. Default:
    /// [`DEFAULT_CAPACITY`](crate::wheel::DEFAULT_CAPACITY) (1024) and [`DEFAULT_RESOLUTION`](crate::wheel::DEFAULT_RESOLUTION)
    /// (1 ms). Services made before keep the wheel they were made with.
    ///
    /// # Errors
    ///
    /// A zero or too large capacity, a zero resolution.
    pub fn timer_wheel(self, capacity: usize, resolution: Duration) -> Result<Self, ConfigError> {
        Ok(TimeoutLayer {
            timers: Timers::new(capacity, resolution, self.clock)?,
            ..self
        })
    }

    /// The timer wheel this layer's services share (e.g. to read
    /// [`Timers::fallbacks`]).
    pub fn timers(&self) -> &Timers {
        &self.timers
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            after: self.after,
            clock: self.clock,
            timers: self.timers.clone(),
        }
    }
}

/// A service whose calls time out. Made by [`TimeoutLayer`].
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    after: Duration,
    clock: TokioClock,
    timers: Timers,
}

impl<S> Timeout<S> {
    /// `inner`, whose calls fail after `after` (timed on a [`TokioClock`]
    /// made now, on a timer wheel of its own).
    pub fn new(inner: S, after: Duration) -> Self {
        TimeoutLayer::new(after).layer(inner)
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The timer wheel this service's calls use.
    pub fn timers(&self) -> &Timers {
        &self.timers
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
            fallback: None,
            alarm: OwnedAlarm::new(self.timers.clone()),
            at: self.clock.now().saturating_add(self.after),
            after: self.after,
            span,
        }
    }
}

pin_project! {
    /// The response future of [`Timeout`]: the wrapped call, and the timer
    /// that ends it (a wheel entry, set only once the call returns
    /// `Pending`; a tokio `Sleep` if the wheel is full). Dropping it gives
    /// the entry back.
    #[must_use = "futures do nothing unless polled"]
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        fallback: Option<Sleep>,
        alarm: OwnedAlarm,
        at: Timestamp,
        after: Duration,
        span: CallSpan,
    }
}

impl<F: fmt::Debug> fmt::Debug for TimeoutFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutFuture")
            .field("inner", &self.inner)
            .field("at", &self.at)
            .field("after", &self.after)
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
        let mut this = self.project();
        let _entered = this.span.enter();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            // The entry goes back now, not when the caller drops the future.
            this.alarm.clear(this.fallback);
            this.span.ended(&result);
            return Poll::Ready(result.map_err(TenlivesError::Inner));
        }
        if !this.alarm.is_set(&this.fallback) {
            this.alarm.set(this.fallback.as_mut(), *this.at, cx);
        }
        std::task::ready!(this.alarm.poll(this.fallback.as_mut(), cx));
        this.alarm.clear(this.fallback);
        this.span.outcome("timed_out");
        Poll::Ready(Err(TenlivesError::TimedOut { after: *this.after }))
    }
}
