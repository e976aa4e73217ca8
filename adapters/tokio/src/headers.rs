//! Rate-limit response headers from a limiter's state, and the wait an
//! upstream asks for (feature `http`).
//!
//! Emitting, for a server protecting itself with a [`RateLimiter`]
//! (the IETF draft *RateLimit header fields for HTTP*,
//! draft-ietf-httpapi-ratelimit-headers, structured-field form):
//!
//! - [`insert_rate_limit`] writes `RateLimit-Policy: "<name>";q=<rate>;w=<period
//!   in seconds>` and `RateLimit: "<name>";r=<tokens available now>;t=<seconds
//!   until the burst is whole again>`, from the limiter's quota and its
//!   state at `now` (seconds rounded up, so a client that waits `t` finds the
//!   quota restored);
//! - [`insert_retry_after`] writes `Retry-After: <seconds>` for a rejection
//!   that knows when to retry ([`TenlivesError::retry_after`]), rounded up,
//!   at least 1.
//!
//! [`RateLimitHeadersLayer`] writes the first two on every response of the
//! service it wraps, from the limiter's state when the response is ready.
//!
//! Reading, for a client: [`upstream_retry_after`] is the wait a `429` or
//! `503` answer asks for in `Retry-After` (delta-seconds, or an HTTP-date:
//! the time from now until then, zero for a date past) or a gRPC answer in
//! `grpc-retry-pushback-ms`; a
//! [`RetryLayer`](crate::RetryLayer) whose classifier is a
//! [`HonourRetryAfter`] waits at least that (capped) before retrying.
//!
//! ```
//! use std::time::Duration;
//! use tenlives_engine::rate::{Quota, RateLimiter};
//! use tenlives_engine::time::Timestamp;
//! use tenlives_tokio::headers::insert_rate_limit;
//!
//! let limiter = RateLimiter::new(Quota::per_minute(60).unwrap().with_burst(10).unwrap());
//! let now = Timestamp::from_nanos(1_000_000_000_000);
//! for _ in 0..4 {
//!     limiter.check(now).unwrap();
//! }
//! let mut headers = http::HeaderMap::new();
//! insert_rate_limit(&mut headers, "api", &limiter, now);
//! assert_eq!(headers["ratelimit-policy"], "\"api\";q=60;w=60");
//! // 6 tokens left; 4 more come one a second.
//! assert_eq!(headers["ratelimit"], "\"api\";r=6;t=4");
//! ```

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use pin_project_lite::pin_project;
use tenlives_engine::events::{EventSink, NoSink};
use tenlives_engine::rate::RateLimiter;
use tenlives_engine::time::{Clock, Timestamp};
use tower_layer::Layer;
use tower_service::Service;

use crate::clock::TokioClock;
use crate::error::TenlivesError;
use crate::retry::ShouldRetry;
use crate::span::{CallSpan, call_span};

/// `RateLimit`.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `RateLimit-Policy`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// gRPC's server pushback, in milliseconds.
pub const GRPC_RETRY_PUSHBACK_MS: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// Whole seconds of `d`, rounded up.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A small stack buffer for header values: no allocation but the
/// `HeaderValue`'s own.
struct Buf {
    bytes: [u8; 128],
    len: usize,
}

impl std::fmt::Write for Buf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let slot = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn value(args: std::fmt::Arguments<'_>) -> Option<HeaderValue> {
    let mut buf = Buf {
        bytes: [0; 128],
        len: 0,
    };
    buf.write_fmt(args).ok()?;
    HeaderValue::from_bytes(&buf.bytes[..buf.len]).ok()
}

/// Writes `RateLimit-Policy` and `RateLimit` for `limiter` at `now`, the
/// policy named `name` (a structured-field string: printable ASCII without
/// `"` or `\`; another name writes nothing).
pub fn insert_rate_limit<S: EventSink>(
    headers: &mut HeaderMap,
    name: &str,
    limiter: &RateLimiter<S>,
    now: Timestamp,
) {
    if !name
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        return;
    }
    let quota = limiter.quota();
    let remaining = limiter.available(now);
    let full = limiter
        .earliest(quota.burst(), now)
        .map_or(Duration::ZERO, |at| at.saturating_duration_since(now));
    let policy = value(format_args!(
        "\"{name}\";q={};w={}",
        quota.rate(),
        ceil_secs(quota.period())
    ));
    let state = value(format_args!(
        "\"{name}\";r={remaining};t={}",
        ceil_secs(full)
    ));
    if let (Some(policy), Some(state)) = (policy, state) {
        headers.insert(RATELIMIT_POLICY, policy);
        headers.insert(RATELIMIT, state);
    }
}

/// Writes `Retry-After` (seconds, rounded up, at least 1) for an error that
/// knows when to retry; returns whether it did.
pub fn insert_retry_after<E>(headers: &mut HeaderMap, error: &TenlivesError<E>) -> bool {
    let Some(after) = error.retry_after() else {
        return false;
    };
    headers.insert(RETRY_AFTER, HeaderValue::from(ceil_secs(after).max(1)));
    true
}

/// The wait an upstream's answer asks for: `Retry-After` on a `429` or
/// `503`, in delta-seconds or as an HTTP-date (the time from now until
/// then; zero for a date already past), or `grpc-retry-pushback-ms` on any
/// answer (a negative pushback, gRPC's "do not retry", is returned as `None`
/// like a missing one). Malformed values count as absent.
pub fn upstream_retry_after(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    upstream_retry_after_at(status, headers, SystemTime::now())
}

/// [`upstream_retry_after`] with the wall-clock time an HTTP-date is
/// measured from given.
pub fn upstream_retry_after_at(
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
) -> Option<Duration> {
    let text = |name: &HeaderName| -> Option<&str> {
        std::str::from_utf8(headers.get(name)?.as_bytes())
            .ok()
            .map(str::trim)
    };
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) && let Some(value) = text(&RETRY_AFTER)
    {
        if let Ok(secs) = value.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(at) = httpdate::parse_http_date(value) {
            return Some(at.duration_since(now).unwrap_or(Duration::ZERO));
        }
    }
    text(&GRPC_RETRY_PUSHBACK_MS)?
        .parse::<u64>()
        .ok()
        .map(Duration::from_millis)
}

/// A layer writing `RateLimit-Policy` and `RateLimit` (see
/// [`insert_rate_limit`]) on every response of the service it wraps, from
/// `limiter`'s state when the response is ready, read on the tokio clock.
/// It decides nothing: put the limiter itself in front
/// ([`RateLimitLayer`](crate::RateLimitLayer) or a stack stage) and answer
/// its rejections with a `429` carrying [`insert_retry_after`] and
/// [`insert_rate_limit`].
///
/// A request costs one reference-count increment and, for the two header
/// values, the allocations `HeaderValue` makes (it owns its bytes).
///
/// ```
/// use std::sync::Arc;
/// use tenlives_engine::rate::{Quota, RateLimiter};
/// use tenlives_tokio::headers::RateLimitHeadersLayer;
/// use tower::{service_fn, Layer, Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Arc::new(RateLimiter::new(Quota::per_second(100).unwrap()));
/// let mut svc = RateLimitHeadersLayer::new("api", Arc::clone(&limiter)).layer(service_fn(
///     |_: ()| async { Ok::<_, std::convert::Infallible>(http::Response::new(())) },
/// ));
/// let response = svc.ready().await.unwrap().call(()).await.unwrap();
/// assert_eq!(response.headers()["ratelimit-policy"], "\"api\";q=100;w=1");
/// assert_eq!(response.headers()["ratelimit"], "\"api\";r=100;t=0");
/// # }
/// ```
#[derive(Debug)]
pub struct RateLimitHeadersLayer<Snk: EventSink = NoSink> {
    shared: Arc<HeadersShared<Snk>>,
}

impl<Snk: EventSink> Clone for RateLimitHeadersLayer<Snk> {
    fn clone(&self) -> Self {
        RateLimitHeadersLayer {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// What every service and response future of one layer share.
#[derive(Debug)]
struct HeadersShared<Snk: EventSink> {
    name: Box<str>,
    limiter: Arc<RateLimiter<Snk>>,
    clock: TokioClock,
}

impl<Snk: EventSink> RateLimitHeadersLayer<Snk> {
    /// Headers for `limiter`, the policy named `name` (a structured-field
    /// string: printable ASCII without `"` or `\`; with another name the
    /// layer writes nothing).
    pub fn new(name: impl Into<Box<str>>, limiter: Arc<RateLimiter<Snk>>) -> Self {
        RateLimitHeadersLayer {
            shared: Arc::new(HeadersShared {
                name: name.into(),
                limiter,
                clock: TokioClock::new(),
            }),
        }
    }
}

impl<S, Snk: EventSink> Layer<S> for RateLimitHeadersLayer<Snk> {
    type Service = RateLimitHeaders<S, Snk>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitHeaders {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// A service whose responses carry the rate-limit headers. Made by
/// [`RateLimitHeadersLayer`].
#[derive(Debug)]
pub struct RateLimitHeaders<S, Snk: EventSink = NoSink> {
    inner: S,
    shared: Arc<HeadersShared<Snk>>,
}

impl<S: Clone, Snk: EventSink> Clone for RateLimitHeaders<S, Snk> {
    fn clone(&self) -> Self {
        RateLimitHeaders {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, Req, B, Snk> Service<Req> for RateLimitHeaders<S, Snk>
where
    S: Service<Req, Response = http::Response<B>>,
    Snk: EventSink,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = RateLimitHeadersFuture<S::Future, Snk>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let span = call_span!("tenlives.rate_limit_headers", "rate_limit_headers");
        RateLimitHeadersFuture {
            inner: span.in_scope(|| self.inner.call(req)),
            shared: Arc::clone(&self.shared),
            span,
        }
    }
}

pin_project! {
    /// The response future of [`RateLimitHeaders`].
    #[must_use = "futures do nothing unless polled"]
    pub struct RateLimitHeadersFuture<F, Snk: EventSink> {
        #[pin]
        inner: F,
        shared: Arc<HeadersShared<Snk>>,
        span: CallSpan,
    }
}

impl<F, B, E, Snk> Future for RateLimitHeadersFuture<F, Snk>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    Snk: EventSink,
{
    type Output = Result<http::Response<B>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let mut result = std::task::ready!(this.inner.poll(cx));
        this.span.ended(&result);
        if let Ok(response) = &mut result {
            let shared = &**this.shared;
            insert_rate_limit(
                response.headers_mut(),
                &shared.name,
                &shared.limiter,
                shared.clock.now(),
            );
        }
        Poll::Ready(result)
    }
}

/// A retry classifier for HTTP responses that also honours the wait the
/// upstream asks for ([`upstream_retry_after`]), capped at `cap`: a
/// [`RetryLayer`](crate::RetryLayer) using it waits at least that long
/// before the retry (and the retry is still one withdrawal from its
/// budget). `C` decides what is retried.
#[derive(Clone, Copy, Debug)]
pub struct HonourRetryAfter<C> {
    classify: C,
    cap: Duration,
}

impl<C> HonourRetryAfter<C> {
    /// Retries what `classify` says, waiting at least what the upstream
    /// asked, at most `cap`.
    pub fn new(classify: C, cap: Duration) -> Self {
        HonourRetryAfter { classify, cap }
    }
}

impl<B, E, C> ShouldRetry<http::Response<B>, E> for HonourRetryAfter<C>
where
    C: ShouldRetry<http::Response<B>, E>,
{
    #[inline]
    fn should_retry(&self, result: &Result<http::Response<B>, E>) -> bool {
        self.classify.should_retry(result)
    }

    #[inline]
    fn server_wait(&self, result: &Result<http::Response<B>, E>) -> Option<Duration> {
        let response = result.as_ref().ok()?;
        upstream_retry_after(response.status(), response.headers()).map(|w| w.min(self.cap))
    }
}

#[cfg(test)]
mod tests {
    use tenlives_engine::rate::Quota;

    use super::*;
    use crate::error::{Rejection, RejectionReason};

    const NOW: Timestamp = Timestamp::from_nanos(1_000_000_000_000);

    #[test]
    fn a_fresh_limiter_is_whole() {
        let limiter = RateLimiter::new(Quota::per_second(10).unwrap());
        let mut h = HeaderMap::new();
        insert_rate_limit(&mut h, "x", &limiter, NOW);
        assert_eq!(h[&RATELIMIT_POLICY], "\"x\";q=10;w=1");
        assert_eq!(h[&RATELIMIT], "\"x\";r=10;t=0");
    }

    /// Emptied: nothing left, and the burst is whole again after the
    /// burst's worth of emission intervals (rounded up to a second).
    #[test]
    fn an_empty_limiter_says_when_it_is_whole() {
        let limiter = RateLimiter::new(Quota::per_minute(2).unwrap().with_burst(3).unwrap());
        for _ in 0..3 {
            limiter.check(NOW).unwrap();
        }
        let mut h = HeaderMap::new();
        insert_rate_limit(&mut h, "x", &limiter, NOW);
        assert_eq!(h[&RATELIMIT], "\"x\";r=0;t=90");
        // 0.5 s later: t rounds up.
        let later = NOW.saturating_add(Duration::from_millis(500));
        insert_rate_limit(&mut h, "x", &limiter, later);
        assert_eq!(h[&RATELIMIT], "\"x\";r=0;t=90");
    }

    #[test]
    fn a_name_that_is_not_a_string_writes_nothing() {
        let limiter = RateLimiter::new(Quota::per_second(10).unwrap());
        let mut h = HeaderMap::new();
        insert_rate_limit(&mut h, "a\"b", &limiter, NOW);
        insert_rate_limit(&mut h, "é", &limiter, NOW);
        assert!(h.is_empty());
    }

    #[test]
    fn retry_after_rounds_up_and_needs_a_time() {
        let mut h = HeaderMap::new();
        let timed = TenlivesError::<()>::Rejected(Rejection::new(
            RejectionReason::RateLimited,
            Some(Duration::from_millis(1500)),
        ));
        assert!(insert_retry_after(&mut h, &timed));
        assert_eq!(h[&RETRY_AFTER], "2");
        let soon = TenlivesError::<()>::Rejected(Rejection::new(
            RejectionReason::RateLimited,
            Some(Duration::from_nanos(1)),
        ));
        insert_retry_after(&mut h, &soon);
        assert_eq!(h[&RETRY_AFTER], "1");
        let mut empty = HeaderMap::new();
        assert!(!insert_retry_after(
            &mut empty,
            &TenlivesError::<()>::Inner(())
        ));
        assert!(empty.is_empty());
    }

    #[test]
    fn the_upstreams_wait_is_read() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(
            upstream_retry_after(StatusCode::TOO_MANY_REQUESTS, &h),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            upstream_retry_after(StatusCode::SERVICE_UNAVAILABLE, &h),
            Some(Duration::from_secs(7))
        );
        assert_eq!(upstream_retry_after(StatusCode::OK, &h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(
            upstream_retry_after(StatusCode::TOO_MANY_REQUESTS, &h),
            None
        );
        h.insert(GRPC_RETRY_PUSHBACK_MS, HeaderValue::from_static("250"));
        assert_eq!(
            upstream_retry_after(StatusCode::OK, &h),
            Some(Duration::from_millis(250))
        );
        h.insert(GRPC_RETRY_PUSHBACK_MS, HeaderValue::from_static("-1"));
        assert_eq!(upstream_retry_after(StatusCode::OK, &h), None);
    }

    /// The layer writes the limiter's state as it is when each response is
    /// ready (on the tokio clock), and nothing on an error.
    #[tokio::test(start_paused = true)]
    async fn the_layer_writes_the_state_at_each_response() {
        use tower::{ServiceExt, service_fn};

        let limiter = Arc::new(RateLimiter::new(
            Quota::per_minute(2).unwrap().with_burst(3).unwrap(),
        ));
        let clock = TokioClock::new();
        let layer = RateLimitHeadersLayer::new("api", Arc::clone(&limiter));
        let mut svc = layer.layer(service_fn(|fail: bool| async move {
            if fail {
                Err("upstream failed")
            } else {
                Ok(http::Response::new(()))
            }
        }));
        limiter.check(clock.now()).unwrap();
        let first = svc.ready().await.unwrap().call(false).await.unwrap();
        assert_eq!(first.headers()[&RATELIMIT_POLICY], "\"api\";q=2;w=60");
        // One token of 3 spent: whole again one interval (30 s) later.
        assert_eq!(first.headers()[&RATELIMIT], "\"api\";r=2;t=30");
        limiter.check(clock.now()).unwrap();
        tokio::time::advance(Duration::from_secs(10)).await;
        let second = svc.ready().await.unwrap().call(false).await.unwrap();
        assert_eq!(second.headers()[&RATELIMIT], "\"api\";r=1;t=50");
        assert_eq!(
            svc.ready().await.unwrap().call(true).await.unwrap_err(),
            "upstream failed"
        );
    }

    /// An HTTP-date is the time from now until then; a date past is no wait;
    /// on a `200` it is not read.
    #[test]
    fn an_http_date_is_the_time_until_it() {
        let date = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        let mut h = HeaderMap::new();
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        let before = date - Duration::from_secs(90);
        assert_eq!(
            upstream_retry_after_at(StatusCode::TOO_MANY_REQUESTS, &h, before),
            Some(Duration::from_secs(90))
        );
        let after = date + Duration::from_secs(5);
        assert_eq!(
            upstream_retry_after_at(StatusCode::SERVICE_UNAVAILABLE, &h, after),
            Some(Duration::ZERO)
        );
        assert_eq!(upstream_retry_after_at(StatusCode::OK, &h, before), None);
    }
}
