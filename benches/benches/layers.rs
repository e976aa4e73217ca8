//! The tower layers around a service that waits, as a service's calls do:
//! tenlives beside tower's own layers and tower-resilience 0.13.
//!
//! What is measured, per request: `ready().await` then `call(i).await`, in a
//! loop inside one `block_on` of a current-thread tokio runtime (tokio's
//! real clock, not paused, so every tenlives layer reads its default clock,
//! the TSC, and tower's and tower-resilience's layers read theirs); the
//! driver is `support/tower_driver.rs`, shared with the ninelives
//! comparison. `2_threads`: two threads, each with its own runtime and its
//! own clone of one service, reported as nanoseconds per request per thread.
//!
//! Headline rows wrap `PendingOnce` (`support/pending_once.rs`): its call
//! returns `Pending` once, waking its task, then answers, so every request
//! goes through a real wake of the runtime, holds its permits across a poll
//! and arms every timeout's timer (a tokio `Sleep` for tower and
//! tower-resilience, an entry of the layer's timer wheel for tenlives).
//! Secondary rows, named `..._always_ready`, wrap `Noop`, whose response is
//! ready at once (no timer is armed, no wake). `bare` / `bare_always_ready`
//! are the floors: each figure minus its floor is what the layers add.
//!
//! - `layers/stack`: outermost to innermost timeout (1 s), retry
//!   (exponential backoff, 3 retries, a retry budget), circuit breaker
//!   (failure rate over a time window) and concurrency limit (1000), never
//!   tripped, never full, never retrying. Subjects: tenlives' `StackLayer`
//!   (one layer, one future); the same four tenlives layers stacked one on
//!   another (`tenlives_layers`); tower-resilience's `TimeLimiter`, `Retry`,
//!   `CircuitBreaker` and `Bulkhead` stacked the same way; tenlives'
//!   `StackLayer` made static (`StackLayer::into_static`: requests touch no
//!   reference count, `tenlives_stack_static`) and also with its concurrency
//!   limit split over per-core shards (`tenlives_stack_sharded_static`,
//!   `tenlives_engine::sharded`), pending once only; tower's `Timeout`
//!   and `ConcurrencyLimit` alone (`tower_timeout_limit`), and tenlives'
//!   `StackLayer` with only those two stages (`tenlives_stack_timeout_limit`).
//! - `layers/concurrency_limit`: tenlives `ConcurrencyLimitLayer` (rejects
//!   when full), tower's `ConcurrencyLimit` (waits in `poll_ready`),
//!   tower-resilience's `Bulkhead`. Limit 1000, never reached.
//! - `layers/timeout`: tenlives `TimeoutLayer`, tower's `Timeout`,
//!   tower-resilience's `TimeLimiter`, 1 s, never reached.
//! - `layers/breaker`: tenlives `CircuitBreakerLayer` (default breaker: a
//!   failure rate over a time window), tower-resilience's `CircuitBreaker`,
//!   closed, every call a success.
//! - `layers/retry`: tenlives `RetryLayer`, tower-resilience's `Retry`, no
//!   call failing (the cost of being ready to retry).
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
use tenlives_engine::sharded::ShardedBulkhead;
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

/// The subjects of one group: `add(group, name, make)` registers a row;
/// each subject is given once around `PendingOnce` (the headline) and once
/// around `Noop` (`<name>_always_ready`).
macro_rules! rows {
    ($group:expr, $add:ident, $name:expr, |$inner:ident| $make:expr) => {{
        $add($group, $name, || {
            let $inner = PendingOnce;
            $make
        });
        $add($group, &format!("{}_always_ready", $name), || {
            let $inner = Noop;
            $make
        });
    }};
}

fn bench_stack(c: &mut Criterion) {
    let mut group = c.benchmark_group("layers/stack");
    let g = &mut group;
    both(g, "bare", || PendingOnce);
    both(g, "bare_always_ready", || Noop);
    rows!(g, both, "tenlives_stack", |inner| tenlives_stack(inner));
    both(g, "tenlives_stack_static", || {
        StackLayer::builder()
            .timeout(TIMEOUT)
            .retry(retry_policy())
            .circuit_breaker(breaker())
            .concurrency_limit(Bulkhead::new(LIMIT).expect("a valid limit"))
            .build()
            .into_static()
            .layer(PendingOnce)
    });
    both(g, "tenlives_stack_sharded_static", || {
        StackLayer::builder()
            .timeout(TIMEOUT)
            .retry(retry_policy())
            .circuit_breaker(breaker())
            .sharded_concurrency_limit(ShardedBulkhead::new(LIMIT).expect("a valid limit"))
            .build()
            .into_static()
            .layer(PendingOnce)
    });
    rows!(g, both, "tenlives_layers", |inner| tenlives_layers(inner));
    rows!(g, both, "tower_resilience", |inner| peer::stack(inner));
    rows!(g, both, "tenlives_stack_timeout_limit", |inner| {
        StackLayer::builder()
            .timeout(TIMEOUT)
            .concurrency_limit(Bulkhead::new(LIMIT).expect("a valid limit"))
            .build()
            .layer(inner)
    });
    rows!(g, both, "tower_timeout_limit", |inner| {
        ServiceBuilder::new()
            .timeout(TIMEOUT)
            .concurrency_limit(LIMIT as usize)
            .service(inner)
    });
    group.finish();
}

fn bench_concurrency_limit(c: &mut Criterion) {
    let mut group = c.benchmark_group("layers/concurrency_limit");
    let g = &mut group;
    rows!(g, both, "tenlives", |inner| {
        ConcurrencyLimitLayer::new(Bulkhead::new(LIMIT).expect("a valid limit")).layer(inner)
    });
    rows!(g, both, "tower", |inner| {
        tower::limit::ConcurrencyLimitLayer::new(LIMIT as usize).layer(inner)
    });
    rows!(g, both, "tower_resilience", |inner| peer::bulkhead()
        .layer(inner));
    group.finish();
}

fn bench_timeout(c: &mut Criterion) {
    let mut group = c.benchmark_group("layers/timeout");
    let g = &mut group;
    rows!(g, both, "tenlives", |inner| TimeoutLayer::new(TIMEOUT)
        .layer(inner));
    rows!(g, both, "tower", |inner| {
        tower::timeout::TimeoutLayer::new(TIMEOUT).layer(inner)
    });
    rows!(g, both, "tower_resilience", |inner| peer::timeout()
        .layer(inner));
    group.finish();
}

fn bench_breaker(c: &mut Criterion) {
    let mut group = c.benchmark_group("layers/breaker");
    let g = &mut group;
    rows!(g, both, "tenlives", |inner| {
        CircuitBreakerLayer::new(breaker()).layer(inner)
    });
    rows!(g, both, "tower_resilience", |inner| peer::breaker()
        .layer(inner));
    group.finish();
}

fn bench_retry(c: &mut Criterion) {
    let mut group = c.benchmark_group("layers/retry");
    let g = &mut group;
    rows!(g, both, "tenlives", |inner| {
        RetryLayer::new(retry_policy()).layer(inner)
    });
    rows!(g, both, "tower_resilience", |inner| {
        peer::retry::<std::convert::Infallible>().layer(inner)
    });
    group.finish();
}

fn bench_rate_limit(c: &mut Criterion) {
    let mut group = c.benchmark_group("layers/rate_limit");
    let g = &mut group;
    rows!(g, both, "tenlives", |inner| {
        RateLimitLayer::new(RateLimiter::new(peer::tenlives_quota())).layer(inner)
    });
    rows!(g, both, "tower_resilience", |inner| peer::rate_limit()
        .layer(inner));
    rows!(g, one_thread, "tower", |inner| {
        tower::limit::RateLimitLayer::new(u64::from(RATE), Duration::from_secs(1)).layer(inner)
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
        targets = bench_stack, bench_concurrency_limit, bench_timeout, bench_breaker,
            bench_retry, bench_rate_limit
    }
}
criterion_main!(harness::benches);
