//! Deadline propagation for HTTP requests (feature `http`): the caller's
//! remaining time bounds the call, work that cannot finish in it is refused
//! at once, and what remains is passed on.
//!
//! [`DeadlineLayer`] reads, at `call`, how long the caller has left, from
//! the first of:
//!
//! 1. a [`RemainingBudget`] extension of the request (set by an outer
//!    layer, or by this one on the way in);
//! 2. the `grpc-timeout` header (gRPC's format: at most 8 digits and a unit,
//!    `H`, `M`, `S`, `m`, `u` or `n`);
//! 3. a header of your choice holding milliseconds
//!    ([`DeadlineLayer::header_ms`], e.g. `x-request-timeout-ms`).
//!
//! A malformed value counts as absent. The budget is that time, bounded by
//! the layer's own maximum ([`DeadlineLayer::max`]), if any. Then:
//!
//! - a budget below [`DeadlineLayer::min`] is refused at once with
//!   [`RejectionReason::DeadlineTooShort`], without calling the service:
//!   work that cannot finish in time is not started;
//! - the request goes on with the budget written back (the extension, the
//!   `grpc-timeout` header and the chosen header), so that the layers and
//!   the upstream below see what is left;
//! - the call fails with [`TenlivesError::TimedOut`] when the budget runs
//!   out (an entry of a shared timer wheel, set only once the call returns
//!   `Pending`), and the call in flight is dropped.
//!
//! A request with no deadline and a layer with no maximum passes through
//! untouched and untimed.
//!
//! ```
//! use std::time::Duration;
//! use tenlives_tokio::deadline::{DeadlineLayer, RemainingBudget};
//! use tenlives_tokio::TenlivesError;
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let layer = DeadlineLayer::new().max(Duration::from_secs(2)).min(Duration::from_millis(5));
//! let mut svc = layer.layer(service_fn(|req: http::Request<()>| async move {
//!     // What the upstream call would be given:
//!     let left = req.extensions().get::<RemainingBudget>().unwrap().0;
//!     tokio::time::sleep(Duration::from_millis(300)).await;
//!     Ok::<_, std::io::Error>((left, req.headers()["grpc-timeout"].clone()))
//! }));
//! // The caller has 500 ms: the call gets them, and says so downstream.
//! let req = http::Request::builder().header("grpc-timeout", "500m").body(()).unwrap();
//! let (left, header) = svc.ready().await.unwrap().call(req).await.unwrap();
//! assert_eq!((left, header.to_str().unwrap()), (Duration::from_millis(500), "500000u"));
//! // The caller has 200 ms: the call takes 300, it times out at 200.
//! let req = http::Request::builder().header("grpc-timeout", "200m").body(()).unwrap();
//! let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
//! assert!(matches!(err, TenlivesError::TimedOut { after } if after == Duration::from_millis(200)));
//! // The caller has 1 ms: refused at once.
//! let req = http::Request::builder().header("grpc-timeout", "1m").body(()).unwrap();
//! assert!(svc.ready().await.unwrap().call(req).await.unwrap_err().is_rejected());
//! # }
//! ```
//!
//! Writing the headers makes a `HeaderValue` (the `http` crate keeps header
//! values on the heap): a request whose budget is forwarded allocates that;
//! reading allocates nothing.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use pin_project_lite::pin_project;
use tenlives_engine::time::{Clock, Timestamp};
use tenlives_engine::timer::TimerEntry;
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

use crate::clock::TokioClock;
use crate::error::{Rejection, RejectionReason, TenlivesError};
use crate::span::{CallSpan, call_span};
use crate::wheel::Timers;

/// The time a request has left, as a request extension: read first by
/// [`DeadlineLayer`], and written by it for the layers below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemainingBudget(pub Duration);

/// The gRPC deadline header.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits and a unit.
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Writes `d` as a `grpc-timeout` value into `buf`: the finest unit whose
/// count fits in 8 digits, rounded down (the receiver is never given more
/// than is left). Returns the bytes written.
pub fn format_grpc_timeout(d: Duration, buf: &mut [u8; 9]) -> &[u8] {
    const MAX: u128 = 99_999_999;
    let nanos = d.as_nanos();
    let (n, unit) = [
        (1u128, b'n'),
        (1_000, b'u'),
        (1_000_000, b'm'),
        (1_000_000_000, b'S'),
        (60_000_000_000, b'M'),
        (3_600_000_000_000, b'H'),
    ]
    .into_iter()
    .map(|(per, unit)| (nanos / per, unit))
    .find(|(n, _)| *n <= MAX)
    .unwrap_or((MAX, b'H'));
    let mut digits = [0u8; 8];
    let mut len = 0;
    let mut rest = n;
    loop {
        digits[len] = b'0' + (rest % 10) as u8;
        len += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[i] = digits[len - 1 - i];
    }
    buf[len] = unit;
    &buf[..=len]
}

/// A tower [`Layer`] propagating deadlines. See the [module
/// documentation](self).
#[derive(Clone)]
pub struct DeadlineLayer {
    max: Option<Duration>,
    min: Duration,
    header_ms: Option<HeaderName>,
    clock: TokioClock,
    timers: Timers,
}

impl fmt::Debug for DeadlineLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineLayer")
            .field("max", &self.max)
            .field("min", &self.min)
            .field("header_ms", &self.header_ms)
            .finish_non_exhaustive()
    }
}

impl Default for DeadlineLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl DeadlineLayer {
    /// No maximum, no minimum, `grpc-timeout` and the extension only, on a
    /// [`TokioClock`] made now.
    pub fn new() -> Self {
        let clock = TokioClock::new();
        DeadlineLayer {
            max: None,
            min: Duration::ZERO,
            header_ms: None,
            clock,
            timers: Timers::with_defaults(clock),
        }
    }

    /// Calls take at most `max`, whatever the caller has left.
    #[must_use]
    pub fn max(mut self, max: Duration) -> Self {
        self.max = Some(max);
        self
    }

    /// Requests with less than `min` left are refused at once.
    #[must_use]
    pub fn min(mut self, min: Duration) -> Self {
        self.min = min;
        self
    }

    /// Also reads (after the extension and `grpc-timeout`) and writes the
    /// budget as milliseconds in `header`.
    #[must_use]
    pub fn header_ms(mut self, header: HeaderName) -> Self {
        self.header_ms = Some(header);
        self
    }

    /// Times on `clock`, with a timer wheel of its own on it.
    #[must_use]
    pub fn with_clock(mut self, clock: TokioClock) -> Self {
        self.clock = clock;
        self.timers = Timers::with_defaults(clock);
        self
    }

    /// Sets its timers on `timers` (say, a stack's) instead of a wheel of
    /// its own (after [`with_clock`](Self::with_clock), which makes one).
    #[must_use]
    pub fn with_timers(mut self, timers: Timers) -> Self {
        self.timers = timers;
        self
    }

    /// What the caller has left, read from `req` as the module says.
    pub fn remaining<B>(&self, req: &http::Request<B>) -> Option<Duration> {
        if let Some(RemainingBudget(d)) = req.extensions().get::<RemainingBudget>() {
            return Some(*d);
        }
        if let Some(d) = req
            .headers()
            .get(&GRPC_TIMEOUT)
            .and_then(|v| parse_grpc_timeout(v.as_bytes()))
        {
            return Some(d);
        }
        let value = req.headers().get(self.header_ms.as_ref()?)?;
        let ms = std::str::from_utf8(value.as_bytes())
            .ok()?
            .parse::<u64>()
            .ok()?;
        Some(Duration::from_millis(ms))
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service whose calls keep the caller's deadline. Made by
/// [`DeadlineLayer`].
#[derive(Clone, Debug)]
pub struct DeadlineService<S> {
    inner: S,
    layer: DeadlineLayer,
}

impl<S, B> Service<http::Request<B>> for DeadlineService<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = TenlivesError<S::Error>;
    type Future = DeadlineFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(TenlivesError::Inner)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let span = call_span!("tenlives.deadline", "deadline");
        let layer = &self.layer;
        let budget = match (layer.remaining(&req), layer.max) {
            (Some(left), Some(max)) => Some(left.min(max)),
            (left, max) => left.or(max),
        };
        let Some(budget) = budget else {
            span.admitted();
            let inner = span.in_scope(|| self.inner.call(req));
            return DeadlineFuture::untimed(inner, span);
        };
        span.budget(budget);
        if budget < layer.min {
            let rejection = Rejection::new(
                RejectionReason::DeadlineTooShort {
                    remaining: budget,
                    needed: layer.min,
                },
                None,
            );
            span.rejected(&rejection);
            return DeadlineFuture::refused(rejection, span);
        }
        span.admitted();
        req.extensions_mut().insert(RemainingBudget(budget));
        let mut buf = [0u8; 9];
        if let Ok(value) = HeaderValue::from_bytes(format_grpc_timeout(budget, &mut buf)) {
            req.headers_mut().insert(GRPC_TIMEOUT, value);
        }
        if let Some(name) = &layer.header_ms {
            req.headers_mut().insert(
                name.clone(),
                HeaderValue::from(u64::try_from(budget.as_millis()).unwrap_or(u64::MAX)),
            );
        }
        let at = layer.clock.now().saturating_add(budget);
        let timers = Some(layer.timers.clone());
        let inner = span.in_scope(|| self.inner.call(req));
        DeadlineFuture {
            inner: Some(inner),
            fallback: None,
            alarm: Alarm {
                timers,
                entry: None,
            },
            at,
            budget,
            refused: None,
            span,
        }
    }
}

/// The request's wheel entry, given back on drop.
struct Alarm {
    timers: Option<Timers>,
    entry: Option<TimerEntry>,
}

impl Drop for Alarm {
    fn drop(&mut self) {
        if let (Some(entry), Some(timers)) = (self.entry.take(), &self.timers) {
            timers.cancel(entry);
        }
    }
}

pin_project! {
    /// The response future of [`DeadlineService`]: the call and its
    /// deadline, or a refusal.
    #[must_use = "futures do nothing unless polled"]
    pub struct DeadlineFuture<F> {
        #[pin]
        inner: Option<F>,
        #[pin]
        fallback: Option<Sleep>,
        alarm: Alarm,
        at: Timestamp,
        budget: Duration,
        refused: Option<Rejection>,
        span: CallSpan,
    }
}

impl<F> fmt::Debug for DeadlineFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineFuture")
            .field("budget", &self.budget)
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

impl<F> DeadlineFuture<F> {
    fn untimed(inner: F, span: CallSpan) -> Self {
        DeadlineFuture {
            inner: Some(inner),
            fallback: None,
            alarm: Alarm {
                timers: None,
                entry: None,
            },
            at: Timestamp::MAX,
            budget: Duration::MAX,
            refused: None,
            span,
        }
    }

    fn refused(rejection: Rejection, span: CallSpan) -> Self {
        DeadlineFuture {
            inner: None,
            fallback: None,
            alarm: Alarm {
                timers: None,
                entry: None,
            },
            at: Timestamp::ZERO,
            budget: Duration::ZERO,
            refused: Some(rejection),
            span,
        }
    }
}

impl<F, Res, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<Res, E>>,
{
    type Output = Result<Res, TenlivesError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return crate::error::take_rejection(this.refused);
        };
        if let Poll::Ready(result) = inner.poll(cx) {
            this.span.ended(&result);
            this.inner.set(None);
            if let (Some(timers), Some(_)) = (&this.alarm.timers, &this.alarm.entry) {
                timers.clear(&mut this.alarm.entry, this.fallback);
            }
            return Poll::Ready(result.map_err(TenlivesError::Inner));
        }
        let alarm = this.alarm;
        let Some(timers) = alarm.timers.as_ref() else {
            return Poll::Pending;
        };
        if alarm.entry.is_none() && this.fallback.is_none() {
            timers.set(&mut alarm.entry, this.fallback.as_mut(), *this.at, cx);
        }
        std::task::ready!(timers.poll(&mut alarm.entry, this.fallback.as_mut(), cx));
        // The deadline passed: drop the call in flight, give the entry back.
        this.inner.set(None);
        timers.clear(&mut alarm.entry, this.fallback);
        *this.refused = None;
        this.span.outcome("timed_out");
        Poll::Ready(Err(TenlivesError::TimedOut {
            after: *this.budget,
        }))
    }
}
