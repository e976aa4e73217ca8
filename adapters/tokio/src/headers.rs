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
//! Reading, for a client: [`upstream_retry_after`] is the wait a `429` or
//! `503` answer asks for in `Retry-After` (delta-seconds; an HTTP-date is not
//! read) or a gRPC answer in `grpc-retry-pushback-ms`; a
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
use std::time::Duration;

use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use tenlives_engine::events::EventSink;
use tenlives_engine::rate::RateLimiter;
use tenlives_engine::time::Timestamp;

use crate::error::TenlivesError;
use crate::retry::ShouldRetry;

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

/// The wait an upstream's answer asks for: `Retry-After` in delta-seconds
/// on a `429` or `503`, or `grpc-retry-pushback-ms` on any answer (a
/// negative pushback, gRPC's "do not retry", is returned as `None` like a
/// missing one). Malformed values count as absent.
pub fn upstream_retry_after(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &HeaderName| -> Option<u64> {
        std::str::from_utf8(headers.get(name)?.as_bytes())
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) && let Some(secs) = number(&RETRY_AFTER)
    {
        return Some(Duration::from_secs(secs));
    }
    number(&GRPC_RETRY_PUSHBACK_MS).map(Duration::from_millis)
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
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
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
}
