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

/// The harness. A module of its own because `criterion_group!` makes a `pub`
/// function it cannot document; here it is not exported, so it needs no doc.
mod harness {
    use super::*;

    criterion_group! {
        name = benches;
        config = support::config();
        targets = single_flight_alone, single_flight_shared, cache_hit
    }
}
criterion_main!(harness::benches);
