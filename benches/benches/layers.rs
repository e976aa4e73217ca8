//! The tower layers around a service that does nothing: tenlives beside
//! tower's own layers and tower-resilience 0.13.
//!
//! What is measured, per request: `ready().await` then `call(i).await` on a
//! service whose response future is ready at once (`Noop`), in a loop inside
//! one `block_on` of a current-thread tokio runtime (the clock is tokio's
//! real one, not paused); the driver is `support/tower_driver.rs`, shared
//! with the ninelives comparison. The bare service is the floor; each figure
//! minus the floor is what the layer adds to a request. `2_threads`: two
//! threads, each with its own runtime and its own clone of one service,
//! reported as nanoseconds per request per thread.
//!
//! - `layers/stack`: the whole stack, outermost to innermost timeout (1 s),
//!   retry (exponential backoff, 3 retries, a retry budget), circuit breaker
//!   (failure rate over a time window) and concurrency limit (1000), never
//!   tripped, never full, never retrying. Subjects: tenlives' `StackLayer`
//!   (one layer, one future); the same four tenlives layers stacked one on
//!   another (`tenlives_layers`); tower-resilience's `TimeLimiter`, `Retry`,
//!   `CircuitBreaker` and `Bulkhead` stacked the same way; and `bare`. On 1
//!   thread and on 2 threads sharing one stack (each thread with its own
//!   runtime and its own clone of the service; reported as nanoseconds per
//!   request per thread, as in the other benches).
//! - `layers/concurrency_limit`: tenlives `ConcurrencyLimitLayer` (rejects
//!   when full), tower's `ConcurrencyLimit` (waits in `poll_ready`),
//!   tower-resilience's `Bulkhead`. Limit 1000, never reached. 1 and 2 threads.
//! - `layers/timeout`: tenlives `TimeoutLayer`, tower's `Timeout`,
//!   tower-resilience's `TimeLimiter`, 1 s, never reached, on 1 and 2
//!   threads. tenlives makes its
//!   `Sleep` only when the call returns `Pending`, so around `Noop` it only
//!   reads the clock; `timeout_pending_once` measures the same layers around
//!   a service that returns `Pending` once first, which makes and registers
//!   every layer's timer.
//! - `layers/pending_once`: the stack around a service that returns
//!   `Pending` once before answering, so that every request arms its
//!   timeout: tenlives' `StackLayer` with a timeout (1 s) and a concurrency
//!   limit (1000), whose timeout takes an entry of the stack's timer wheel;
//!   tower's `Timeout` and `ConcurrencyLimit` stacked the same way, whose
//!   timeout makes and registers a tokio `Sleep`; and `bare`. 1 and 2
//!   threads.
//! - `layers/breaker`: tenlives `CircuitBreakerLayer`, tower-resilience's
//!   `CircuitBreaker`, closed, every call a success, on 1 and 2 threads.
//! - `layers/retry`: tenlives `RetryLayer`, tower-resilience's `Retry`, no
//!   call failing (the cost of being ready to retry), on 1 and 2 threads.
//! - `layers/rate_limit`: tenlives `RateLimitLayer` (GCRA, rejects when
//!   over), tower-resilience's `RateLimiter` (fixed window, no wait) and
//!   tower's `RateLimit` (fixed window, waits in `poll_ready`; not `Clone`,
//!   so 1 thread only), at a rate never reached (10^9 per second).
//!
//! ninelives 0.2, the other peer named in the design, is not here: it pins
//! tokio to `~1.48`, which would move the whole workspace's tokio back. It is
//! timed with this driver in `benches/ninelives-peer`, a cargo workspace of
//! its own.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::rate::RateLimiter;
use tenlives_engine::retry::{Backoff, RetryBudget, RetryBudgetConfig};
use tenlives_tokio::{
    CircuitBreakerLayer, ConcurrencyLimitLayer, RateLimitLayer, RetryLayer, RetryPolicy,
    StackLayer, TimeoutLayer,
};
use tower::{Layer, Service, ServiceBuilder};

#[path = "support/pending_once.rs"]
mod pending_once;
mod support;
use pending_once::PendingOnce;
#[path = "support/tower_driver.rs"]
mod tower_driver;
use tower_driver::{Noop, both, one_thread};

#[path = "support/tower_peers.rs"]
mod peer;
use peer::{LIMIT, RATE, TIMEOUT};

fn breaker() -> CircuitBreaker {
    CircuitBreaker::new(BreakerConfig::default())
}

fn backoff() -> Backoff {
    Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(2))
        .expect("a valid backoff")
        .with_max_retries(3)
}

fn retry_policy() -> RetryPolicy {
    RetryPolicy::new(backoff(), RetryBudget::new(RetryBudgetConfig::default()))
}

/// tenlives' combined stack around `inner`.
fn tenlives_stack<S>(inner: S) -> impl Service<u64, Error = impl std::fmt::Debug> + Clone + Send
where
    S: Service<u64, Response = u64, Error = std::convert::Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    StackLayer::builder()
        .timeout(TIMEOUT)
        .retry(retry_policy())
        .circuit_breaker(breaker())
        .concurrency_limit(Bulkhead::new(LIMIT).expect("a valid limit"))
        .build()
        .layer(inner)
}

/// The four tenlives layers, one on another.
fn tenlives_layers<S>(inner: S) -> impl Service<u64> + Clone + Send
where
    S: Service<u64, Response = u64, Error = std::convert::Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    ServiceBuilder::new()
        .layer(TimeoutLayer::new(TIMEOUT))
        .layer(RetryLayer::new(retry_policy()))
        .layer(CircuitBreakerLayer::new(breaker()))
        .layer(ConcurrencyLimitLayer::new(
            Bulkhead::new(LIMIT).expect("a valid limit"),
        ))
        .service(inner)
}

fn bench_stack(c: &mut Criterion) {
    let mut group = c.benchmark_group("layers/stack");
    both(&mut group, "bare", || Noop);
    both(&mut group, "tenlives_stack", || tenlives_stack(Noop));
    both(&mut group, "tenlives_layers", || tenlives_layers(Noop));
    both(&mut group, "tower_resilience", || peer::stack(Noop));
    group.finish();
}

fn bench_concurrency_limit(c: &mut Criterion) {
    let mut group = c.benchmark_group("layers/concurrency_limit");
    both(&mut group, "tenlives", || {
        ConcurrencyLimitLayer::new(Bulkhead::new(LIMIT).expect("a valid limit")).layer(Noop)
    });
    both(&mut group, "tower", || {
        tower::limit::ConcurrencyLimitLayer::new(LIMIT as usize).layer(Noop)
    });
    both(&mut group, "tower_resilience", || {
        peer::bulkhead().layer(Noop)
    });
    group.finish();
}

fn bench_timeout(c: &mut Criterion) {
    let mut group = c.benchmark_group("layers/timeout");
    both(&mut group, "tenlives", || {
        TimeoutLayer::new(TIMEOUT).layer(Noop)
    });
    both(&mut group, "tower", || {
        tower::timeout::TimeoutLayer::new(TIMEOUT).layer(Noop)
    });
    both(&mut group, "tower_resilience", || {
        peer::timeout().layer(Noop)
    });
    one_thread(&mut group, "bare_pending_once", || PendingOnce);
    one_thread(&mut group, "tenlives_pending_once", || {
        TimeoutLayer::new(TIMEOUT).layer(PendingOnce)
    });
    one_thread(&mut group, "tower_pending_once", || {
        tower::timeout::TimeoutLayer::new(TIMEOUT).layer(PendingOnce)
    });
    one_thread(&mut group, "tower_resilience_pending_once", || {
        peer::timeout().layer(PendingOnce)
    });
    group.finish();
}

fn bench_pending_once(c: &mut Criterion) {
    let mut group = c.benchmark_group("layers/pending_once");
    both(&mut group, "bare", || PendingOnce);
    both(&mut group, "tenlives_stack", || {
        StackLayer::builder()
            .timeout(TIMEOUT)
            .concurrency_limit(Bulkhead::new(LIMIT).expect("a valid limit"))
            .build()
            .layer(PendingOnce)
    });
    both(&mut group, "tower_timeout_limit", || {
        ServiceBuilder::new()
            .timeout(TIMEOUT)
            .concurrency_limit(LIMIT as usize)
            .service(PendingOnce)
    });
    group.finish();
}

fn bench_breaker(c: &mut Criterion) {
    let mut group = c.benchmark_group("layers/breaker");
    both(&mut group, "tenlives", || {
        CircuitBreakerLayer::new(breaker()).layer(Noop)
    });
    both(&mut group, "tower_resilience", || {
        peer::breaker().layer(Noop)
    });
    group.finish();
}

fn bench_retry(c: &mut Criterion) {
    let mut group = c.benchmark_group("layers/retry");
    both(&mut group, "tenlives", || {
        RetryLayer::new(retry_policy()).layer(Noop)
    });
    both(&mut group, "tower_resilience", || {
        peer::retry::<std::convert::Infallible>().layer(Noop)
    });
    group.finish();
}

fn bench_rate_limit(c: &mut Criterion) {
    let mut group = c.benchmark_group("layers/rate_limit");
    both(&mut group, "tenlives", || {
        RateLimitLayer::new(RateLimiter::new(peer::tenlives_quota())).layer(Noop)
    });
    both(&mut group, "tower_resilience", || {
        peer::rate_limit().layer(Noop)
    });
    one_thread(&mut group, "tower", || {
        tower::limit::RateLimitLayer::new(u64::from(RATE), Duration::from_secs(1)).layer(Noop)
    });
    group.finish();
}

/// The harness. A module of its own because `criterion_group!` makes a `pub`
/// function it cannot document; here it is not exported, so it needs no doc.
mod harness {
    use super::*;

    criterion_group! {
        name = benches;
        config = support::config();
        targets = bench_stack, bench_concurrency_limit, bench_timeout, bench_pending_once,
            bench_breaker, bench_retry, bench_rate_limit
    }
}
criterion_main!(harness::benches);
