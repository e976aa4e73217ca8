//! The settings of the tower layer benches (every limit, timeout and rate
//! far from being reached) and tower-resilience's layers configured with
//! them, shared by `layers.rs` (time) and `allocs.rs` (allocations) so that
//! both measure the same subjects.
//!
//! Included with `#[path]`; each includer uses a part of it.
#![allow(
    dead_code,
    reason = "each bench file that includes this uses a part of it"
)]

use std::convert::Infallible;
use std::time::Duration;

use tower::{Service, ServiceBuilder};
use tower_resilience::bulkhead::{BulkheadLayer, BulkheadServiceError};
use tower_resilience::circuitbreaker::{
    CircuitBreakerError, CircuitBreakerLayer, DefaultClassifier,
};
use tower_resilience::ratelimiter::RateLimiterLayer;
use tower_resilience::retry::RetryLayer;
use tower_resilience::timelimiter::{FixedTimeout, TimeLimiterLayer};

/// The limit of every concurrency limit: never reached.
pub const LIMIT: u32 = 1000;
/// Every timeout: never reached.
pub const TIMEOUT: Duration = Duration::from_secs(1);
/// Every rate limit, per second: never reached.
pub const RATE: u32 = 1_000_000_000;

/// tenlives' quota for [`RATE`], with a burst of a second's worth so that
/// two threads reading the clock at slightly different times never run it
/// dry.
pub fn tenlives_quota() -> tenlives_engine::rate::Quota {
    tenlives_engine::rate::Quota::per_second(RATE)
        .and_then(|q| q.with_burst(RATE))
        .expect("a valid quota")
}

/// tower-resilience's bulkhead of [`LIMIT`].
pub fn bulkhead() -> BulkheadLayer {
    BulkheadLayer::builder()
        .max_concurrent_calls(LIMIT as usize)
        .build()
        .expect("a valid bulkhead")
}

/// tower-resilience's breaker, like tenlives' default: a failure rate over
/// a window.
pub fn breaker() -> CircuitBreakerLayer<DefaultClassifier> {
    CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .expect("a valid breaker")
}

/// tower-resilience's rate limiter at [`RATE`], refusing at once.
pub fn rate_limit() -> RateLimiterLayer {
    RateLimiterLayer::builder()
        .limit_for_period(RATE as usize)
        .refresh_period(Duration::from_secs(1))
        .timeout_duration(Duration::ZERO)
        .build()
        .expect("a valid rate limiter")
}

/// tower-resilience's time limiter of [`TIMEOUT`].
pub fn timeout() -> TimeLimiterLayer<FixedTimeout> {
    TimeLimiterLayer::builder()
        .timeout_duration(TIMEOUT)
        .build()
}

/// tower-resilience's retry: 3 retries, exponential backoff.
pub fn retry<E>() -> RetryLayer<u64, u64, E> {
    RetryLayer::<u64, u64, E>::builder()
        .max_attempts(4)
        .exponential_backoff(Duration::from_millis(100))
        .build()
}

/// Timeout, retry, breaker, bulkhead, around `inner`.
pub fn stack<S>(inner: S) -> impl Service<u64> + Clone + Send
where
    S: Service<u64, Response = u64, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    ServiceBuilder::new()
        .layer(timeout())
        .layer(retry::<CircuitBreakerError<BulkheadServiceError<Infallible>>>())
        .layer(breaker())
        .layer(bulkhead())
        .service(inner)
}
