//! ninelives 0.2 beside tenlives' tower layers, with the driver of
//! `benches/benches/layers.rs` (`support/tower_driver.rs`): `ready().await`
//! then `call(i).await` on a service that answers at once, in a loop inside
//! one `block_on` of a current-thread tokio runtime, on 1 thread and on 2
//! threads (each with its own runtime and its own clone of one service;
//! nanoseconds per request per thread).
//!
//! Everything here is built on ninelives' tokio (`~1.48`), tenlives included,
//! so the two are compared on one tokio; `bare` is the floor.
//!
//! - `ninelives_peer/stack`: timeout (1 s), retry (3 retries, exponential
//!   backoff from 100 ms), circuit breaker, concurrency limit (1000), never
//!   tripped, never full, never retrying. tenlives' `StackLayer` with its
//!   default breaker (failure rate over a time window) and a retry budget;
//!   ninelives' `TimeoutLayer`, `RetryLayer` (no jitter),
//!   `CircuitBreakerLayer` (consecutive failures: ninelives has no rate
//!   window) and `BulkheadLayer`, stacked in that order with tower's
//!   `ServiceBuilder`.
//! - `ninelives_peer/{concurrency_limit,timeout,breaker,retry}`: each layer
//!   alone, configured as in the stack.
//!
//! `cargo bench --manifest-path benches/ninelives-peer/Cargo.toml --bench layers`

use criterion::{Criterion, criterion_group, criterion_main};

#[path = "../../benches/support/mod.rs"]
mod support;
#[path = "../../benches/support/tower_driver.rs"]
mod tower_driver;
use tower_driver::{Noop, both};
mod stacks;
use stacks::*;

fn bench_stack(c: &mut Criterion) {
    let mut group = c.benchmark_group("ninelives_peer/stack");
    both(&mut group, "bare", || Noop);
    both(&mut group, "tenlives_stack", || tenlives_stack(Noop));
    both(&mut group, "ninelives", || ninelives_stack(Noop));
    group.finish();
}

fn bench_each_layer(c: &mut Criterion) {
    let mut group = c.benchmark_group("ninelives_peer/concurrency_limit");
    both(&mut group, "tenlives", || tenlives_concurrency_limit(Noop));
    both(&mut group, "ninelives", || {
        ninelives_concurrency_limit(Noop)
    });
    group.finish();

    let mut group = c.benchmark_group("ninelives_peer/timeout");
    both(&mut group, "tenlives", || tenlives_timeout(Noop));
    both(&mut group, "ninelives", || ninelives_timeout_layer(Noop));
    group.finish();

    let mut group = c.benchmark_group("ninelives_peer/breaker");
    both(&mut group, "tenlives", || tenlives_breaker_layer(Noop));
    both(&mut group, "ninelives", || ninelives_breaker_layer(Noop));
    group.finish();

    let mut group = c.benchmark_group("ninelives_peer/retry");
    both(&mut group, "tenlives", || tenlives_retry(Noop));
    both(&mut group, "ninelives", || ninelives_retry_layer(Noop));
    group.finish();
}

/// The harness. A module of its own because `criterion_group!` makes a `pub`
/// function it cannot document; here it is not exported, so it needs no doc.
mod harness {
    use super::*;

    criterion_group! {
        name = benches;
        config = support::config();
        targets = bench_stack, bench_each_layer
    }
}
criterion_main!(harness::benches);
