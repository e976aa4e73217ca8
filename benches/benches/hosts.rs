//! Calls across hosts: single flight and the response cache, beside
//! tower-resilience 0.13's `coalesce` and `cache` layers.
//!
//! The driver is `support/tower_driver.rs` (`ready().await` then
//! `call(i).await` in a loop inside one `block_on` of a current-thread tokio
//! runtime); `bare` is the service without a layer.
//!
//! - `hosts/single_flight_alone`: every request alone on its key (key = the
//!   request number), around `Noop`: the cost of a flight that nobody joins
//!   (tenlives: the key, a table shard's lock, one `Arc` for the flight;
//!   tower-resilience: a mutex-guarded map and a broadcast channel).
//! - `hosts/single_flight_shared_64`: 64 requests on one key made before any
//!   is polled, around a service that returns `Pending` once, then all polled
//!   to completion; one upstream call serves the 64. Reported per request.
//!   Every subject's futures are boxed the same way (to hold 64 of them), so
//!   the difference is the layers'.
//! - `hosts/cache_hit`: a warm cache of 64 keys, every request a hit:
//!   tenlives' `CacheLayer` (moka, TTL 60 s, a byte budget) and
//!   tower-resilience's `Cache` (LRU, 1024 entries, TTL 60 s); on 1 thread,
//!   and on 2 threads sharing one cache (per request per thread).
//! - `hosts/fallback`: `passthrough`, around a service answering every
//!   call at once with a success (the fallback never used); `answered`, around a service whose
//!   every call fails at once, every request answered by a fallback value:
//!   tenlives' `FallbackLayer` with `FallbackValue` and tower-resilience's
//!   `FallbackLayer::value` (its response future is boxed).
//! - `hosts/outlier`: a request through one healthy endpoint of two that an
//!   outlier detector watches (eject after 5 consecutive failures, at most
//!   50 % ejected): tenlives' `OutlierDetector::endpoint` (an engine breaker
//!   per endpoint) and tower-resilience's `OutlierDetectionLayer`; around
//!   `Noop` and around a service pending once.

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tenlives_tokio::CoalesceLayer;
use tenlives_tokio::cache::ResponseCache;
use tower::{Layer, Service};

#[path = "support/pending_once.rs"]
mod pending_once;
mod support;
use pending_once::PendingOnce;
#[path = "support/tower_driver.rs"]
mod tower_driver;
use tower_driver::{Noop, runtime, time_on, two_threads};

fn single_flight_alone(c: &mut Criterion) {
    let mut g = c.benchmark_group("hosts/single_flight_alone");
    let rt = runtime();
    g.bench_function("bare", |b| {
        b.iter_custom(|iters| time_on(&rt, &mut Noop, iters))
    });
    g.bench_function("tenlives", |b| {
        let mut svc = CoalesceLayer::new(|r: &u64| *r).layer(Noop);
        b.iter_custom(|iters| time_on(&rt, &mut svc, iters))
    });
    g.bench_function("tower_resilience", |b| {
        let mut svc = tower_resilience::coalesce::CoalesceLayer::new(|r: &u64| *r).layer(Noop);
        b.iter_custom(|iters| time_on(&rt, &mut svc, iters))
    });
    g.finish();
}

const SHARED: usize = 64;

/// `rounds` batches of [`SHARED`] requests on one key, each batch made first
/// and then polled to completion; the time per request.
fn batches<S>(svc: &mut S, rounds: u64) -> Duration
where
    S: Service<u64>,
    S::Future: 'static,
{
    let mut cx = Context::from_waker(Waker::noop());
    let mut futures: Vec<Pin<Box<S::Future>>> = Vec::with_capacity(SHARED);
    let mut done = [false; SHARED];
    let began = Instant::now();
    for round in 0..rounds {
        for _ in 0..SHARED {
            let ready = std::future::poll_fn(|cx| svc.poll_ready(cx));
            let mut ready = std::pin::pin!(ready);
            let Poll::Ready(Ok(())) = ready.as_mut().poll(&mut cx) else {
                panic!("the service is always ready")
            };
            futures.push(Box::pin(svc.call(black_box(round))));
        }
        done.fill(false);
        let mut left = SHARED;
        while left > 0 {
            for (f, d) in futures.iter_mut().zip(done.iter_mut()) {
                if !*d && let Poll::Ready(r) = f.as_mut().poll(&mut cx) {
                    assert!(r.is_ok());
                    *d = true;
                    left -= 1;
                }
            }
        }
        futures.clear();
    }
    began.elapsed() / SHARED as u32
}

fn single_flight_shared(c: &mut Criterion) {
    let mut g = c.benchmark_group("hosts/single_flight_shared_64");
    let rt = runtime();
    let _guard = rt.enter();
    g.bench_function("bare", |b| {
        b.iter_custom(|iters| batches(&mut PendingOnce, iters))
    });
    g.bench_function("tenlives", |b| {
        let mut svc = CoalesceLayer::new(|r: &u64| *r).layer(PendingOnce);
        b.iter_custom(|iters| batches(&mut svc, iters))
    });
    g.bench_function("tower_resilience", |b| {
        let mut svc =
            tower_resilience::coalesce::CoalesceLayer::new(|r: &u64| *r).layer(PendingOnce);
        b.iter_custom(|iters| rt.block_on(async { batches(&mut svc, iters) }))
    });
    g.finish();
}

/// `Noop` answering `i % 64`: 64 distinct keys, all cached after the first
/// round.
#[derive(Clone, Copy)]
struct Mod64<S>(S);

impl<S: Service<u64>> Service<u64> for Mod64<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }
    fn call(&mut self, req: u64) -> S::Future {
        self.0.call(req % 64)
    }
}

fn cache_hit(c: &mut Criterion) {
    let mut g = c.benchmark_group("hosts/cache_hit");
    let rt = runtime();
    g.bench_function("bare", |b| {
        b.iter_custom(|iters| time_on(&rt, &mut Mod64(Noop), iters))
    });
    g.bench_function("tenlives", |b| {
        let _guard = rt.enter();
        let cache = ResponseCache::<u64, u64>::builder(Duration::from_secs(60), 1 << 20).build();
        let mut svc = Mod64(
            cache
                .layer(|r: &u64| Some(*r), |_: &u64, _: &u64| Vec::new())
                .layer(Noop),
        );
        time_on(&rt, &mut svc, 64);
        b.iter_custom(|iters| time_on(&rt, &mut svc, iters));
        assert_eq!(
            cache.stats().misses,
            64,
            "every request after the first round is a hit"
        );
    });
    g.bench_function("tower_resilience", |b| {
        let layer = tower_resilience::cache::CacheLayer::builder()
            .max_size(1024)
            .ttl(Duration::from_secs(60))
            .key_extractor(|r: &u64| *r)
            .build()
            .expect("a valid cache configuration");
        let mut svc = Mod64(layer.layer(Noop));
        time_on(&rt, &mut svc, 64);
        b.iter_custom(|iters| time_on(&rt, &mut svc, iters))
    });
    // Two threads sharing one warm cache (each with its own runtime and its
    // own clone of the service), per request per thread.
    g.bench_function("tenlives/2_threads", |b| {
        let _guard = rt.enter();
        let cache = ResponseCache::<u64, u64>::builder(Duration::from_secs(60), 1 << 20).build();
        let mut svc = Mod64(
            cache
                .layer(|r: &u64| Some(*r), |_: &u64, _: &u64| Vec::new())
                .layer(Noop),
        );
        time_on(&rt, &mut svc, 64);
        b.iter_custom(|iters| two_threads(&svc, iters));
        assert_eq!(cache.stats().misses, 64);
    });
    g.bench_function("tower_resilience/2_threads", |b| {
        let layer = tower_resilience::cache::CacheLayer::builder()
            .max_size(1024)
            .ttl(Duration::from_secs(60))
            .key_extractor(|r: &u64| *r)
            .build()
            .expect("a valid cache configuration");
        let mut svc = Mod64(layer.layer(Noop));
        time_on(&rt, &mut svc, 64);
        b.iter_custom(|iters| two_threads(&svc, iters))
    });
    g.finish();
}

/// A service answering at once: every call fails (`Upstream(true)`) or
/// every call succeeds (`Upstream(false)`), with the same error type.
#[derive(Clone, Copy, Debug)]
struct Upstream(bool);

/// [`Upstream`]'s error.
#[derive(Clone, Copy, Debug)]
struct Refused;

impl Service<u64> for Upstream {
    type Response = u64;
    type Error = Refused;
    type Future = std::future::Ready<Result<u64, Refused>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Refused>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        std::future::ready(if self.0 { Err(Refused) } else { Ok(req) })
    }
}

fn fallback(c: &mut Criterion) {
    use tenlives_tokio::fallback::{FallbackLayer, FallbackValue};
    let mut g = c.benchmark_group("hosts/fallback");
    let rt = runtime();
    let tenlives = || {
        FallbackLayer::new(
            |_: &Refused| true,
            FallbackValue::new(|_: Refused| Ok::<u64, Refused>(0)),
        )
    };
    let peer = || tower_resilience::fallback::FallbackLayer::<u64, u64, Refused>::value(0);
    g.bench_function("passthrough/bare", |b| {
        b.iter_custom(|iters| time_on(&rt, &mut Upstream(false), iters))
    });
    g.bench_function("passthrough/tenlives", |b| {
        let mut svc = tenlives().layer(Upstream(false));
        b.iter_custom(|iters| time_on(&rt, &mut svc, iters))
    });
    g.bench_function("passthrough/tower_resilience", |b| {
        let mut svc = peer().layer(Upstream(false));
        b.iter_custom(|iters| time_on(&rt, &mut svc, iters))
    });
    g.bench_function("answered/tenlives", |b| {
        let mut svc = tenlives().layer(Upstream(true));
        b.iter_custom(|iters| time_on(&rt, &mut svc, iters))
    });
    g.bench_function("answered/tower_resilience", |b| {
        let mut svc = peer().layer(Upstream(true));
        b.iter_custom(|iters| time_on(&rt, &mut svc, iters))
    });
    g.finish();
}

fn outlier(c: &mut Criterion) {
    use tenlives_engine::breaker::BreakerConfig;
    use tenlives_tokio::{EjectionConfig, OutlierDetector};
    let mut g = c.benchmark_group("hosts/outlier");
    let rt = runtime();
    let _guard = rt.enter();
    let tenlives = || {
        OutlierDetector::new(
            EjectionConfig::new(
                BreakerConfig::builder()
                    .without_failure_rate()
                    .consecutive_failures(5)
                    .build()
                    .expect("a valid breaker"),
                50,
                8,
            )
            .expect("a valid ejection configuration"),
        )
    };
    let peer = || {
        let detector = tower_resilience::outlier::OutlierDetector::new()
            .max_ejection_percent(50)
            .base_ejection_duration(Duration::from_secs(30));
        detector.register("a", 5);
        detector.register("b", 5);
        tower_resilience::outlier::OutlierDetectionLayer::builder()
            .detector(detector)
            .instance_name("a")
            .build()
            .expect("a valid outlier layer")
    };
    outlier_rows(&mut g, &rt, "at_once", Noop, &tenlives, &peer);
    outlier_rows(&mut g, &rt, "pending_once", PendingOnce, &tenlives, &peer);
    g.finish();
}

/// The rows of `hosts/outlier` around `inner`: bare, through a tenlives
/// endpoint (one of two the detector watches), through tower-resilience's
/// layer.
fn outlier_rows<S, P>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    form: &str,
    inner: S,
    tenlives: &dyn Fn() -> tenlives_tokio::OutlierDetector<u8>,
    peer: &dyn Fn() -> P,
) where
    S: Service<u64> + Clone,
    P: Layer<S>,
    P::Service: Service<u64>,
{
    g.bench_function(format!("{form}/bare"), |b| {
        let mut svc = inner.clone();
        b.iter_custom(|iters| time_on(rt, &mut svc, iters))
    });
    g.bench_function(format!("{form}/tenlives"), |b| {
        let detector = tenlives();
        let mut svc = detector.endpoint(0u8, inner.clone());
        let _other = detector.endpoint(1u8, inner.clone());
        b.iter_custom(|iters| time_on(rt, &mut svc, iters))
    });
    g.bench_function(format!("{form}/tower_resilience"), |b| {
        let mut svc = peer().layer(inner.clone());
        b.iter_custom(|iters| time_on(rt, &mut svc, iters))
    });
}

/// The harness. A module of its own because `criterion_group!` makes a `pub`
/// function it cannot document; here it is not exported, so it needs no doc.
mod harness {
    use super::*;

    criterion_group! {
        name = benches;
        config = support::config();
        targets = single_flight_alone, single_flight_shared, cache_hit, fallback, outlier
    }
}
criterion_main!(harness::benches);
