//! Heap allocations per request of the subjects of `layers.rs`, printed as
//! JSON lines in the format of `benches/benches/allocs.rs`:
//!
//! ```text
//! {"id":"ninelives_peer/stack/ninelives","ops":10000,"allocations":...,"per_op":...}
//! ```
//!
//! Each service is driven [`WARM_UP`] requests first, then [`OPS`] requests
//! counted, on one thread, with a counting global allocator
//! (`tenlives_test_support::CountingAllocator`, which counts this thread's
//! allocations and reallocations).
//!
//! `cargo bench --manifest-path benches/ninelives-peer/Cargo.toml --bench allocs`

use tenlives_test_support::{CountingAllocator, allocations_during};
use tokio::runtime::Runtime;
use tower::Service;

#[path = "../../benches/support/tower_driver.rs"]
mod tower_driver;
use tower_driver::{Noop, drive, runtime};
mod stacks;
use stacks::*;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Requests counted per service.
const OPS: u64 = 10_000;

/// Requests before counting.
const WARM_UP: u64 = 100;

/// Counts the allocations of [`OPS`] requests through `svc` on `rt`; prints
/// the JSON line of `id`.
fn count<S: Service<u64>>(rt: &Runtime, id: &str, mut svc: S) {
    rt.block_on(drive(&mut svc, WARM_UP));
    let allocations = allocations_during(|| rt.block_on(drive(&mut svc, OPS)));
    let per_op = allocations as f64 / OPS as f64;
    println!(r#"{{"id":"{id}","ops":{OPS},"allocations":{allocations},"per_op":{per_op}}}"#);
}

fn main() {
    let rt = runtime();
    let _in_runtime = rt.enter();
    count(&rt, "ninelives_peer/stack/bare", Noop);
    count(
        &rt,
        "ninelives_peer/stack/tenlives_stack",
        tenlives_stack(Noop),
    );
    count(&rt, "ninelives_peer/stack/ninelives", ninelives_stack(Noop));
    let each = "ninelives_peer/concurrency_limit";
    count(
        &rt,
        &format!("{each}/tenlives"),
        tenlives_concurrency_limit(Noop),
    );
    count(
        &rt,
        &format!("{each}/ninelives"),
        ninelives_concurrency_limit(Noop),
    );
    count(
        &rt,
        "ninelives_peer/timeout/tenlives",
        tenlives_timeout(Noop),
    );
    count(
        &rt,
        "ninelives_peer/timeout/ninelives",
        ninelives_timeout_layer(Noop),
    );
    count(
        &rt,
        "ninelives_peer/breaker/tenlives",
        tenlives_breaker_layer(Noop),
    );
    count(
        &rt,
        "ninelives_peer/breaker/ninelives",
        ninelives_breaker_layer(Noop),
    );
    count(&rt, "ninelives_peer/retry/tenlives", tenlives_retry(Noop));
    count(
        &rt,
        "ninelives_peer/retry/ninelives",
        ninelives_retry_layer(Noop),
    );
}
