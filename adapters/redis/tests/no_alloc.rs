//! The request path allocates nothing, on every path it takes: a token of a
//! valid lease, the fleet's quota exhausted, the process's share refusing,
//! and with Redis gone the last lease, the local degraded limiter admitting
//! and refusing (each reported into an event ring and counted), fail open
//! and fail closed. A counting global allocator (per thread, as in
//! `adapters/tokio/tests/no_alloc.rs`) watches the test's thread, which
//! makes the requests; the background tasks run on the runtime's workers.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tenlives_engine::events::EventRing;
use tenlives_engine::rate::Quota;
use tenlives_redis::{Admitted, FailurePolicy, FleetConfig, FleetRateLimiter, Refused};
use tenlives_test_support::{CountingAllocator, allocations_during};

use common::RedisServer;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// What a decision was, without its payload.
fn outcome(r: Result<Admitted, Refused>) -> &'static str {
    match r {
        Ok(Admitted::Lease) => "lease",
        Ok(Admitted::LastLease) => "last lease",
        Ok(Admitted::Fallback) => "fallback",
        Ok(Admitted::FailOpen) => "fail open",
        Err(Refused::QuotaExhausted) => "exhausted",
        Err(Refused::ShareLimited(_)) => "share",
        Err(Refused::Fallback(_)) => "fallback refused",
        Err(Refused::FailClosed) => "fail closed",
    }
}

/// Makes `n` requests, noting each outcome, and returns how many
/// allocations they made. The outcomes go into a set prepared beforehand
/// with room for all of them, so noting one allocates nothing.
fn requests(limiter: &FleetRateLimiter, n: usize, seen: &mut HashSet<&'static str>) -> usize {
    allocations_during(|| {
        for _ in 0..n {
            seen.insert(outcome(limiter.try_acquire()));
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_path_allocates() {
    let mut server = RedisServer::start();
    let ring = Arc::new(EventRing::with_capacity(1 << 10).unwrap());
    // 1 000 a second, burst 200; this process may hold and spend half.
    let quota = Quota::per_second(1_000).unwrap().with_burst(200).unwrap();
    let config = |name: &str, policy| {
        FleetConfig::new(name, quota)
            .policy(policy)
            .max_share(0.5)
            .initial_lease(100)
            .expected_instances(4)
            .refresh_interval(Duration::from_millis(20))
            .lease_duration(Duration::from_millis(100))
            .redis_timeout(Duration::from_millis(50))
            .events(Arc::clone(&ring), 1)
    };
    let degraded = FleetRateLimiter::start(config("d", FailurePolicy::Degraded), server.client())
        .await
        .unwrap();
    let open = FleetRateLimiter::start(config("o", FailurePolicy::FailOpen), server.client())
        .await
        .unwrap();
    let closed = FleetRateLimiter::start(config("c", FailurePolicy::FailClosed), server.client())
        .await
        .unwrap();
    let mut seen = HashSet::with_capacity(64);

    // Redis up: lease tokens, then the share's burst (100) or the lease
    // runs out.
    assert_eq!(requests(&degraded, 5_000, &mut seen), 0);
    assert!(seen.contains("lease"), "{seen:?}");
    assert!(
        seen.contains("exhausted") || seen.contains("share"),
        "{seen:?}"
    );

    // Let a refresh top the lease up again, then take Redis away: the
    // degraded limiter has a last lease to spend past its expiry.
    let deadline = Instant::now() + Duration::from_secs(2);
    while degraded.stats().lease_tokens == 0 {
        assert!(Instant::now() < deadline, "no top-up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    let deadline = Instant::now() + Duration::from_secs(3);
    while [&degraded, &open, &closed]
        .iter()
        .any(|l| l.stats().redis_available)
    {
        assert!(Instant::now() < deadline, "Redis loss never noticed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Let the refreshes refill nothing; then spend past the leases'
    // expiry.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(requests(&degraded, 5_000, &mut seen), 0);
    assert_eq!(requests(&open, 1_000, &mut seen), 0);
    assert_eq!(requests(&closed, 1_000, &mut seen), 0);
    for path in [
        "last lease",
        "fallback",
        "fallback refused",
        "fail open",
        "fail closed",
    ] {
        assert!(seen.contains(path), "{path} not taken: {seen:?}");
    }
    assert!(degraded.stats().degraded_admitted > 0);
    assert!(ring.emitted() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_semaphore_path_allocates() {
    use tenlives_redis::{FleetPermit, FleetSemaphore, SemaphoreConfig, SemaphoreRefused};

    let mut server = RedisServer::start();
    let ring = Arc::new(EventRing::with_capacity(1 << 10).unwrap());
    let config = |name: &str, policy| {
        SemaphoreConfig::new(name, 8)
            .policy(policy)
            .expected_instances(4)
            .refresh_interval(Duration::from_millis(20))
            .ttl(Duration::from_millis(100))
            .redis_timeout(Duration::from_millis(50))
            .events(Arc::clone(&ring), 2)
    };
    let degraded = FleetSemaphore::start(config("d", FailurePolicy::Degraded), server.client())
        .await
        .unwrap();
    let open = FleetSemaphore::start(config("o", FailurePolicy::FailOpen), server.client())
        .await
        .unwrap();
    let closed = FleetSemaphore::start(config("c", FailurePolicy::FailClosed), server.client())
        .await
        .unwrap();
    let mut seen = HashSet::with_capacity(64);
    // Takes and releases `n` permits, holding up to three at once so that
    // the refusal paths are taken too.
    fn run(sem: &FleetSemaphore, n: usize, seen: &mut HashSet<&'static str>) -> usize {
        allocations_during(|| {
            let mut held: [Option<FleetPermit<'_>>; 3] = [None, None, None];
            for i in 0..n {
                let r = sem.try_acquire();
                seen.insert(match &r {
                    Ok(FleetPermit::Leased(_)) => "leased",
                    Ok(FleetPermit::Fallback(_)) => "fallback",
                    Ok(FleetPermit::FailOpen) => "fail open",
                    Err(SemaphoreRefused::Full) => "full",
                    Err(SemaphoreRefused::Fallback) => "fallback refused",
                    Err(SemaphoreRefused::FailClosed) => "fail closed",
                });
                held[i % 3] = r.ok();
            }
        })
    }
    assert_eq!(run(&degraded, 3_000, &mut seen), 0);
    assert!(seen.contains("leased") && seen.contains("full"), "{seen:?}");
    server.kill();
    let deadline = Instant::now() + Duration::from_secs(3);
    while [&degraded, &open, &closed]
        .iter()
        .any(|s| s.stats().redis_available)
    {
        assert!(Instant::now() < deadline, "Redis loss never noticed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(run(&degraded, 3_000, &mut seen), 0);
    assert_eq!(run(&open, 1_000, &mut seen), 0);
    assert_eq!(run(&closed, 1_000, &mut seen), 0);
    for path in ["fallback", "fallback refused", "fail open", "fail closed"] {
        assert!(seen.contains(path), "{path} not taken: {seen:?}");
    }
}

/// The tower layer's call path: deciding, calling the inner service and
/// polling the named response future allocate nothing, admitted or
/// rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_layer_call_allocates() {
    use std::future::{Future, Ready, ready};
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};
    use tenlives_redis::{FleetLimitError, FleetRateLimitLayer};
    use tower_layer::Layer;
    use tower_service::Service;

    struct Inner;
    impl Service<u64> for Inner {
        type Response = u64;
        type Error = ();
        type Future = Ready<Result<u64, ()>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: u64) -> Self::Future {
            ready(Ok(req))
        }
    }

    let server = RedisServer::start();
    let quota = Quota::per_second(1_000).unwrap().with_burst(200).unwrap();
    let config = FleetConfig::new("layer", quota)
        .max_share(0.5)
        .initial_lease(100)
        .refresh_interval(Duration::from_millis(20))
        .lease_duration(Duration::from_millis(500));
    let limiter = Arc::new(
        FleetRateLimiter::start(config, server.client())
            .await
            .unwrap(),
    );
    let mut svc = FleetRateLimitLayer::new(limiter).layer(Inner);
    let mut cx = Context::from_waker(Waker::noop());
    let (mut admitted, mut rejected) = (0u64, 0u64);
    let allocations = allocations_during(|| {
        for i in 0..5_000u64 {
            assert!(svc.poll_ready(&mut cx).is_ready());
            let fut = pin!(svc.call(i));
            match fut.poll(&mut cx) {
                Poll::Ready(Ok(v)) => {
                    assert_eq!(v, i);
                    admitted += 1;
                }
                Poll::Ready(Err(FleetLimitError::Rejected(r))) => {
                    assert!(r.retry_after > Duration::ZERO);
                    rejected += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    assert_eq!(allocations, 0);
    assert!(admitted > 0 && rejected > 0, "{admitted} / {rejected}");

    // The concurrency layer: a call holds an owned permit (a reference
    // count, not an allocation) until its future completes or is dropped.
    use tenlives_redis::{FleetConcurrencyLimitLayer, FleetSemaphore, SemaphoreConfig};
    let config = SemaphoreConfig::new("layer-sem", 4)
        .refresh_interval(Duration::from_millis(10))
        .ttl(Duration::from_millis(500));
    let sem = Arc::new(
        FleetSemaphore::start(config, server.client())
            .await
            .unwrap(),
    );
    // Let the claim grow to the limit first (refusals are the demand).
    let deadline = Instant::now() + Duration::from_secs(3);
    while sem.stats().leased < 4 {
        assert!(Instant::now() < deadline, "the claim never grew");
        let held: Vec<_> = (0..4).filter_map(|_| sem.try_acquire().ok()).collect();
        tokio::time::sleep(Duration::from_millis(5)).await;
        drop(held);
    }
    let mut svc = FleetConcurrencyLimitLayer::new(sem).layer(Inner);
    let (mut admitted, mut rejected) = (0u64, 0u64);
    let allocations = allocations_during(|| {
        for i in 0..3_000u64 {
            assert!(svc.poll_ready(&mut cx).is_ready());
            // Five calls made at once against a claim of 4 (the fifth
            // refused), then all polled to completion and dropped.
            let mut a = pin!(svc.call(i));
            let mut b = pin!(svc.call(i));
            let mut c = pin!(svc.call(i));
            let mut d = pin!(svc.call(i));
            let mut e = pin!(svc.call(i));
            for fut in [a.as_mut(), b.as_mut(), c.as_mut(), d.as_mut(), e.as_mut()] {
                match fut.poll(&mut cx) {
                    Poll::Ready(Ok(_)) => admitted += 1,
                    Poll::Ready(Err(FleetLimitError::Rejected(_))) => rejected += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    });
    assert_eq!(allocations, 0);
    assert!(admitted > 0 && rejected > 0, "{admitted} / {rejected}");
}

/// A keyed decision's outcome, without its payload.
fn keyed_outcome(
    r: Result<tenlives_redis::KeyedAdmitted, tenlives_redis::KeyedRefused>,
) -> &'static str {
    use tenlives_redis::{KeyedAdmitted, KeyedRefused};
    match r {
        Ok(KeyedAdmitted::Fleet(a)) => outcome(Ok(a)),
        Err(KeyedRefused::Fleet(r)) => outcome(Err(r)),
        Ok(KeyedAdmitted::NewKey) => "new key",
        Err(KeyedRefused::NewKey(_)) => "new key refused",
        Err(KeyedRefused::Backlog) => "backlog",
        Err(KeyedRefused::TableFull) => "table full",
    }
}

/// Resident keys (their leases, the fleet quota exhausted, the per-key
/// share refusing; then, Redis gone, the last lease and the per-key
/// fallback admitting and refusing) allocate nothing: `String` keys whose
/// lease and engine entries are resident are compared, never cloned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_resident_key_path_allocates() {
    use tenlives_redis::{KeyedFleetConfig, KeyedFleetLimiter};

    let mut server = RedisServer::start();
    let quota = Quota::per_second(1_000).unwrap().with_burst(200).unwrap();
    let config = KeyedFleetConfig::new(
        FleetConfig::new("keyed", quota)
            .max_share(0.5)
            .initial_lease(100)
            .expected_instances(4)
            .refresh_interval(Duration::from_millis(20))
            .lease_duration(Duration::from_millis(100))
            .redis_timeout(Duration::from_millis(50)),
        64,
    )
    // Resident throughout, idle or not.
    .idle_after(Duration::from_secs(60));
    let limiter = KeyedFleetLimiter::<String>::start(config, server.client())
        .await
        .unwrap();
    let keys: Vec<String> = (0..4).map(|i| format!("user-{i}")).collect();
    // Make them resident (a new key's request clones it into the queue).
    for k in &keys {
        let _ = limiter.try_acquire(k);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while keys.iter().any(|k| limiter.lease_of(k).unwrap_or(0) == 0) {
        assert!(Instant::now() < deadline, "keys never resident");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut seen = HashSet::with_capacity(64);
    let run = |n: usize, seen: &mut HashSet<&'static str>| {
        allocations_during(|| {
            for i in 0..n {
                seen.insert(keyed_outcome(limiter.try_acquire(&keys[i % 4])));
            }
        })
    };
    assert_eq!(run(4_000, &mut seen), 0);
    assert!(seen.contains("lease"), "{seen:?}");
    assert!(
        seen.contains("exhausted") || seen.contains("share"),
        "{seen:?}"
    );
    // Top-ups, then Redis gone: last leases, then the per-key fallback.
    let deadline = Instant::now() + Duration::from_secs(2);
    while limiter.stats().lease_tokens == 0 {
        assert!(Instant::now() < deadline, "no top-up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    let deadline = Instant::now() + Duration::from_secs(3);
    while limiter.stats().redis_available {
        assert!(Instant::now() < deadline, "Redis loss never noticed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(run(4_000, &mut seen), 0);
    for path in ["last lease", "fallback", "fallback refused"] {
        assert!(seen.contains(path), "{path} not taken: {seen:?}");
    }
}

/// A call through the keyed layer, with a key that costs no allocation to
/// take from the request (`u64`), allocates nothing once the key is
/// resident, admitted or rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_keyed_layer_call_allocates() {
    use std::future::{Future, Ready, ready};
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};
    use tenlives_redis::{
        FleetLimitError, KeyedFleetConfig, KeyedFleetLimiter, KeyedFleetRateLimitLayer,
    };
    use tower_layer::Layer;
    use tower_service::Service;

    struct Inner;
    impl Service<(u64, u64)> for Inner {
        type Response = u64;
        type Error = ();
        type Future = Ready<Result<u64, ()>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: (u64, u64)) -> Self::Future {
            ready(Ok(req.1))
        }
    }

    let server = RedisServer::start();
    let quota = Quota::per_second(1_000).unwrap().with_burst(200).unwrap();
    let config = KeyedFleetConfig::new(
        FleetConfig::new("klayer", quota)
            .max_share(0.5)
            .initial_lease(100)
            .refresh_interval(Duration::from_millis(20))
            .lease_duration(Duration::from_millis(500)),
        16,
    )
    .idle_after(Duration::from_secs(60));
    let limiter = Arc::new(
        KeyedFleetLimiter::<u64>::start(config, server.client())
            .await
            .unwrap(),
    );
    for user in 0..3 {
        let _ = limiter.try_acquire(&user);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while (0..3).any(|u| limiter.lease_of(&u).unwrap_or(0) == 0) {
        assert!(Instant::now() < deadline, "keys never resident");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut svc = KeyedFleetRateLimitLayer::new(limiter, |req: &(u64, u64)| req.0).layer(Inner);
    let mut cx = Context::from_waker(Waker::noop());
    let (mut admitted, mut rejected) = (0u64, 0u64);
    let allocations = allocations_during(|| {
        for i in 0..3_000u64 {
            assert!(svc.poll_ready(&mut cx).is_ready());
            let fut = pin!(svc.call((i % 3, i)));
            match fut.poll(&mut cx) {
                Poll::Ready(Ok(v)) => {
                    assert_eq!(v, i);
                    admitted += 1;
                }
                Poll::Ready(Err(FleetLimitError::Rejected(r))) => {
                    assert!(r.retry_after > Duration::ZERO);
                    rejected += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    assert_eq!(allocations, 0);
    assert!(admitted > 0 && rejected > 0, "{admitted} / {rejected}");
}
