//! What the single-flight, ejection and cache layers allocate per request,
//! counted by a counting global allocator (per thread) while the test thread
//! polls requests by hand:
//!
//! - single flight: exactly one allocation per flight (its `Arc`) when
//!   nobody waits, plus one for the flight's waker slots when followers
//!   wait (three followers fit the first growth); nothing per follower;
//! - ejection: nothing per request;
//! - a cache hit on a `u64` response: nothing from the layer; moka's
//!   maintenance, which it runs on the calling thread about every 128 reads,
//!   allocates (measured: 50 allocations in 6400 hits);
//! - idempotency keys: a replay from the store of a `u64` response allocates
//!   nothing; a request without a key, its single flight's `Arc`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tenlives_engine::breaker::BreakerConfig;
use tenlives_test_support::{CountingAllocator, allocations_during};
use tenlives_tokio::{CoalesceLayer, EjectionConfig, OutlierDetector};
use tower::{Layer, Service};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Answers `Pending` once (waking itself), then the request.
#[derive(Clone, Copy)]
struct PendingOnce;

struct Later(u64, bool);

impl Future for Later {
    type Output = Result<u64, ()>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.1 {
            Poll::Ready(Ok(self.0))
        } else {
            self.1 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

impl Service<u64> for PendingOnce {
    type Response = u64;
    type Error = ();
    type Future = Later;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: u64) -> Later {
        Later(req, false)
    }
}

fn poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

fn ready<S: Service<u64>>(svc: &mut S) {
    let Poll::Ready(Ok(())) = svc.poll_ready(&mut Context::from_waker(Waker::noop())) else {
        panic!("always ready")
    };
}

#[test]
fn single_flight_allocates_one_arc_per_flight_and_nothing_per_follower() {
    const ROUNDS: u64 = 1000;
    let mut svc = CoalesceLayer::new(|r: &u64| *r).layer(PendingOnce);
    let lone = |svc: &mut _| {
        for i in 0..ROUNDS {
            ready(svc);
            let mut f = Service::call(svc, i % 50);
            assert!(poll(&mut f).is_pending());
            assert_eq!(poll(&mut f), Poll::Ready(Ok(i % 50)));
        }
    };
    lone(&mut svc); // the table's shards grow to their size
    assert_eq!(allocations_during(|| lone(&mut svc)), ROUNDS as usize);

    let shared = |svc: &mut _| {
        for i in 0..ROUNDS {
            ready(svc);
            let mut leader = Service::call(svc, i);
            let mut followers = [(); 3].map(|()| {
                ready(svc);
                Service::call(svc, i)
            });
            assert!(poll(&mut leader).is_pending());
            for f in &mut followers {
                assert!(poll(f).is_pending());
            }
            assert_eq!(poll(&mut leader), Poll::Ready(Ok(i)));
            for f in &mut followers {
                assert_eq!(poll(f), Poll::Ready(Ok(i)));
            }
        }
    };
    shared(&mut svc);
    assert_eq!(allocations_during(|| shared(&mut svc)), 2 * ROUNDS as usize);
}

#[test]
fn an_ejectable_endpoint_allocates_nothing_per_request() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let detector = OutlierDetector::new(
        EjectionConfig::new(
            BreakerConfig::builder()
                .without_failure_rate()
                .consecutive_failures(5)
                .build()
                .unwrap(),
            50,
            8,
        )
        .unwrap(),
    );
    let mut a = detector.endpoint(0u8, PendingOnce);
    let _b = detector.endpoint(1u8, PendingOnce);
    let run = |a: &mut tenlives_tokio::Ejectable<PendingOnce>| {
        for i in 0..1000 {
            ready(a);
            let mut call = a.call(i);
            let mut call = Pin::new(&mut call);
            assert!(
                call.as_mut()
                    .poll(&mut Context::from_waker(Waker::noop()))
                    .is_pending()
            );
            assert!(
                call.as_mut()
                    .poll(&mut Context::from_waker(Waker::noop()))
                    .is_ready()
            );
        }
    };
    run(&mut a);
    assert_eq!(allocations_during(|| run(&mut a)), 0);
}

#[cfg(feature = "cache")]
#[test]
fn a_cache_hit_allocates_nothing_but_mokas_maintenance() {
    use std::time::Duration;
    use tenlives_tokio::cache::ResponseCache;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let cache = ResponseCache::<u64, u64>::builder(Duration::from_secs(600), 1 << 20).build();
    let mut svc = cache
        .layer(|r: &u64| Some(*r), |_: &u64, _: &u64| Vec::new())
        .layer(PendingOnce);
    let round = |svc: &mut _| {
        for i in 0..64u64 {
            ready(svc);
            let mut f = Box::pin(Service::call(svc, i));
            while poll(&mut f).is_pending() {}
        }
    };
    round(&mut svc); // 64 misses: stored
    cache.run_pending_tasks();
    let hits = || {
        for _ in 0..100 {
            for i in 0..64u64 {
                ready(&mut svc);
                let mut f = Service::call(&mut svc, i);
                let mut f = Pin::new(&mut f);
                assert_eq!(
                    f.as_mut().poll(&mut Context::from_waker(Waker::noop())),
                    Poll::Ready(Ok(i))
                );
            }
        }
    };
    let n = allocations_during(hits);
    assert_eq!(cache.stats().hits, 6400);
    // The layer allocates nothing on a hit; moka drains its read log on the
    // calling thread every 128 reads or so, and that maintenance allocates
    // (50 times in 6400 hits when measured).
    assert!(n <= 6400 / 100, "{n} allocations in 6400 hits");
}

#[test]
fn an_idempotency_replay_allocates_nothing_and_a_keyless_request_one_flight() {
    use std::time::Duration;
    use tenlives_tokio::{IdempotencyConfig, IdempotencyLayer, TokioClock};
    const KEYS: u64 = 50;
    // 50 keys at most: a key never evicted, the store at its size after the
    // first round; a new key after expiry replaces its entry.
    let config = IdempotencyConfig::new(Duration::from_secs(3600), 64, 64).clock(TokioClock::tsc());
    let mut svc = IdempotencyLayer::new(|r: &u64| Some(*r), config).layer(PendingOnce);
    for k in 0..KEYS {
        ready(&mut svc);
        let mut f = Service::call(&mut svc, k);
        assert!(poll(&mut f).is_pending());
        assert_eq!(poll(&mut f), Poll::Ready(Ok(k)));
    }
    let replays = |svc: &mut _| {
        for i in 0..1000 {
            ready(svc);
            let mut f = Service::call(svc, i % KEYS);
            assert_eq!(poll(&mut f), Poll::Ready(Ok(i % KEYS)));
        }
    };
    replays(&mut svc);
    assert_eq!(allocations_during(|| replays(&mut svc)), 0);
    assert_eq!(svc.stats().executed, KEYS);
    // Requests without a key go through the single flight alone: its `Arc`.
    let mut svc = IdempotencyLayer::new(
        |_: &u64| None::<u64>,
        IdempotencyConfig::new(Duration::from_secs(3600), 64, 64).clock(TokioClock::tsc()),
    )
    .layer(PendingOnce);
    let keyless = |svc: &mut _| {
        for i in 0..1000 {
            ready(svc);
            let mut f = Service::call(svc, i);
            assert!(poll(&mut f).is_pending());
            assert_eq!(poll(&mut f), Poll::Ready(Ok(i)));
        }
    };
    keyless(&mut svc);
    assert_eq!(allocations_during(|| keyless(&mut svc)), 1000);
}
