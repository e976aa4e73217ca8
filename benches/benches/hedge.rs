//! The hedging layer around a service that does nothing: tenlives'
//! `HedgeLayer` beside tower's `Hedge` (tower 0.5, feature `hedge`).
//!
//! What is measured, per request, with the driver of `layers.rs`
//! (`support/tower_driver.rs`: `ready().await` then `call(i).await` in a
//! loop inside one `block_on` of a current-thread runtime, tokio's real
//! clock; `2_threads`: two threads, each with its own runtime and clone of
//! one service, nanoseconds per request per thread):
//!
//! - `hedge/at_once`: a service whose response future is ready at once
//!   (`Noop`): the cost of being ready to hedge — the clones of the service
//!   and the request, the deposit in the budget (tenlives), the latency
//!   bookkeeping (both: tenlives a `LatencyTracker`, one `fetch_add` per
//!   answer; tower a locked hdrhistogram). No hedge is ever sent.
//! - `hedge/pending_once`: a service that returns `Pending` once before
//!   answering: every request arms its hedge delay (tenlives: an entry of
//!   the shared timer wheel; tower: a tokio `Sleep`), which never fires.
//!
//! Both hedge at the 90th percentile of recent latencies (tenlives after 10
//! samples, refreshed every 100; tower with 10 data points and a 1 s
//! rotation period), one hedge at most. `bare` is the floor. tower's
//! `Hedge` is not `Clone`, so it runs on 1 thread only.
//! `tower_resilience`: tower-resilience 0.13's `HedgeLayer` (feature
//! `hedge`) with a fixed 10 ms delay (it has no percentile delay; 10 ms is
//! where tenlives' delay starts), at most 2 attempts, as its builder's
//! documentation sets it; its response future is boxed.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tenlives_engine::latency::LatencyTracker;
use tenlives_engine::retry::{RetryBudget, RetryBudgetConfig};
use tenlives_tokio::hedge::{HedgeDelay, HedgeLayer, HedgePolicy};
use tower::Layer;
use tower::hedge::{Hedge, Policy};

#[path = "support/pending_once.rs"]
mod pending_once;
mod support;
use pending_once::PendingOnce;
#[path = "support/tower_driver.rs"]
mod tower_driver;
use tower_driver::{Noop, both, one_thread};

/// Every request may be hedged.
#[derive(Clone, Copy, Debug)]
struct Always;

impl Policy<u64> for Always {
    fn clone_request(&self, req: &u64) -> Option<u64> {
        Some(*req)
    }
    fn can_retry(&self, _req: &u64) -> bool {
        true
    }
}

type Idempotent = fn(&u64) -> bool;

fn tenlives() -> HedgeLayer<std::sync::Arc<RetryBudget>, Idempotent> {
    let tracker = LatencyTracker::new(0.9, 100, 10).expect("valid");
    let delay = HedgeDelay::quantile(
        tracker,
        Duration::from_millis(10),
        Duration::from_millis(1),
        Duration::from_secs(1),
    );
    let budget = std::sync::Arc::new(RetryBudget::new(RetryBudgetConfig::default()));
    HedgeLayer::new(HedgePolicy::new(
        delay,
        budget,
        (|_: &u64| true) as Idempotent,
    ))
}

fn tower_hedge<S>(inner: S) -> Hedge<S, Always>
where
    S: tower::Service<u64> + Clone,
    S::Error: Into<tower::BoxError>,
{
    Hedge::new(inner, Always, 10, 0.9, Duration::from_secs(1))
}

fn tower_resilience_hedge() -> tower_resilience::hedge::HedgeLayer {
    tower_resilience::hedge::HedgeLayer::builder()
        .delay(Duration::from_millis(10))
        .max_hedged_attempts(2)
        .build()
}

fn bench_hedge(c: &mut Criterion) {
    let mut group = c.benchmark_group("hedge");
    both(&mut group, "at_once/bare", || Noop);
    both(&mut group, "at_once/tenlives", || tenlives().layer(Noop));
    one_thread(&mut group, "at_once/tower", || tower_hedge(Noop));
    both(&mut group, "at_once/tower_resilience", || {
        tower_resilience_hedge().layer(Noop)
    });
    both(&mut group, "pending_once/bare", || PendingOnce);
    both(&mut group, "pending_once/tenlives", || {
        tenlives().layer(PendingOnce)
    });
    one_thread(&mut group, "pending_once/tower", || {
        tower_hedge(PendingOnce)
    });
    both(&mut group, "pending_once/tower_resilience", || {
        tower_resilience_hedge().layer(PendingOnce)
    });
    group.finish();
}

/// The harness, in a module of its own: `criterion_group!` makes a `pub`
/// function it cannot document.
mod harness {
    use super::*;

    criterion_group! {
        name = benches;
        config = support::config();
        targets = bench_hedge
    }
}
criterion_main!(harness::benches);
