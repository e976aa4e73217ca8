//! The subjects: tenlives' layers and ninelives' equivalents, configured as
//! `benches/benches/layers.rs` configures tenlives and tower-resilience.
//! Included with `#[path]` by `layers.rs` and `allocs.rs`.
#![allow(
    dead_code,
    reason = "each bench file that includes this uses a part of it"
)]

use std::convert::Infallible;
use std::time::Duration;

use ninelives::{Backoff, CircuitBreakerConfig, Jitter, ResilienceError, RetryPolicy};
use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::retry::{RetryBudget, RetryBudgetConfig};
use tenlives_tokio::{
    CircuitBreakerLayer, ConcurrencyLimitLayer, RetryLayer, RetryPolicy as TenlivesRetry,
    StackLayer, TimeoutLayer,
};
use tower::{Layer, Service, ServiceBuilder};

/// The limit of every concurrency limit: never reached.
pub const LIMIT: u32 = 1000;
/// Every timeout: never reached.
pub const TIMEOUT: Duration = Duration::from_secs(1);

/// An inner service as the benches use it.
pub trait Inner:
    Service<u64, Response = u64, Error = Infallible, Future: Send + 'static> + Clone + Send + 'static
{
}

impl<S> Inner for S where
    S: Service<u64, Response = u64, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + 'static
{
}

fn tenlives_retry_policy() -> TenlivesRetry {
    let backoff = tenlives_engine::retry::Backoff::exponential(
        Duration::from_millis(100),
        2.0,
        Duration::from_secs(2),
    )
    .expect("a valid backoff")
    .with_max_retries(3);
    TenlivesRetry::new(backoff, RetryBudget::new(RetryBudgetConfig::default()))
}

fn tenlives_breaker() -> CircuitBreaker {
    CircuitBreaker::new(BreakerConfig::default())
}

fn tenlives_bulkhead() -> Bulkhead {
    Bulkhead::new(LIMIT).expect("a valid limit")
}

/// tenlives' combined stack: timeout (1 s), retry (exponential backoff, 3
/// retries, a retry budget), circuit breaker (default: failure rate over a
/// time window), concurrency limit (1000).
pub fn tenlives_stack(inner: impl Inner) -> impl Service<u64> + Clone + Send {
    StackLayer::builder()
        .timeout(TIMEOUT)
        .retry(tenlives_retry_policy())
        .circuit_breaker(tenlives_breaker())
        .concurrency_limit(tenlives_bulkhead())
        .build()
        .layer(inner)
}

/// tenlives' concurrency limit alone.
pub fn tenlives_concurrency_limit(inner: impl Inner) -> impl Service<u64> + Clone + Send {
    ConcurrencyLimitLayer::new(tenlives_bulkhead()).layer(inner)
}

/// tenlives' timeout alone.
pub fn tenlives_timeout(inner: impl Inner) -> impl Service<u64> + Clone + Send {
    TimeoutLayer::new(TIMEOUT).layer(inner)
}

/// tenlives' circuit breaker alone.
pub fn tenlives_breaker_layer(inner: impl Inner) -> impl Service<u64> + Clone + Send {
    CircuitBreakerLayer::new(tenlives_breaker()).layer(inner)
}

/// tenlives' retry alone.
pub fn tenlives_retry(inner: impl Inner) -> impl Service<u64> + Clone + Send {
    RetryLayer::new(tenlives_retry_policy()).layer(inner)
}

/// ninelives' retry: 4 attempts (3 retries), exponential backoff from
/// 100 ms, no jitter, every error retried.
fn ninelives_retry<E: std::error::Error + Send + Sync + 'static>() -> ninelives::RetryLayer<E> {
    RetryPolicy::<E>::builder()
        .max_attempts(4)
        .backoff(Backoff::exponential(Duration::from_millis(100)))
        .with_jitter(Jitter::None)
        .build()
        .expect("a valid retry policy")
        .into_layer()
}

/// ninelives' breaker: it counts consecutive failures (5 here), with 60 s
/// open and one half-open probe; it has no failure-rate window.
fn ninelives_breaker() -> ninelives::CircuitBreakerLayer {
    let config = CircuitBreakerConfig::new(5, Duration::from_secs(60), 1).expect("a valid config");
    ninelives::CircuitBreakerLayer::new(config).expect("a valid breaker")
}

fn ninelives_bulkhead() -> ninelives::BulkheadLayer {
    ninelives::BulkheadLayer::new(LIMIT as usize).expect("a valid bulkhead")
}

fn ninelives_timeout() -> ninelives::TimeoutLayer {
    ninelives::TimeoutLayer::new(TIMEOUT).expect("a valid timeout")
}

/// ninelives' layers stacked as tenlives' stack: timeout, retry, circuit
/// breaker, bulkhead.
pub fn ninelives_stack(inner: impl Inner) -> impl Service<u64> + Clone + Send {
    type BreakerError = ResilienceError<ResilienceError<Infallible>>;
    ServiceBuilder::new()
        .layer(ninelives_timeout())
        .layer(ninelives_retry::<BreakerError>())
        .layer(ninelives_breaker())
        .layer(ninelives_bulkhead())
        .service(inner)
}

/// ninelives' bulkhead alone.
pub fn ninelives_concurrency_limit(inner: impl Inner) -> impl Service<u64> + Clone + Send {
    ninelives_bulkhead().layer(inner)
}

/// ninelives' timeout alone.
pub fn ninelives_timeout_layer(inner: impl Inner) -> impl Service<u64> + Clone + Send {
    ninelives_timeout().layer(inner)
}

/// ninelives' circuit breaker alone.
pub fn ninelives_breaker_layer(inner: impl Inner) -> impl Service<u64> + Clone + Send {
    ninelives_breaker().layer(inner)
}

/// ninelives' retry alone.
pub fn ninelives_retry_layer(inner: impl Inner) -> impl Service<u64> + Clone + Send {
    ninelives_retry::<Infallible>().layer(inner)
}
