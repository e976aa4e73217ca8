//! The futures form and the stack stage against a real `redis-server`.
//!
//! The futures form is driven by `futures::executor::block_on` on a plain
//! thread, with async-io's timer: no tokio on the request side (the limiters
//! were started, and refresh, on the test's tokio runtime).

mod common;

use std::sync::Arc;
use std::time::Duration;

use tenlives_engine::breaker::Outcome;
use tenlives_engine::rate::Quota;
use tenlives_engine::time::{Clock, MonotonicClock};
use tenlives_futures::{AsyncIoTimer, Timer, acquire, guard};
use tenlives_redis::{
    Admitted, FleetConfig, FleetRateLimiter, FleetSemaphore, KeyedAdmitted, KeyedFleetConfig,
    KeyedFleetLimiter, KeyedRefused, Refused, SemaphoreConfig,
};
use tenlives_tokio::{RejectionReason, StackLayer, TenlivesError};
use tower::{Layer, Service, ServiceExt, service_fn};

use common::{RedisServer, wait_for};

fn ok<T>(_: &T) -> Outcome {
    Outcome::Success
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_futures_spend_the_lease_on_a_foreign_executor() {
    let server = RedisServer::start();
    // 60 a minute: nothing refills during the test; a lease of 5.
    let quota = Quota::per_minute(60).unwrap().with_burst(10).unwrap();
    let config = FleetConfig::new("fut", quota)
        .initial_lease(5)
        .refresh_interval(Duration::from_millis(50));
    let limiter = Arc::new(
        FleetRateLimiter::start(config, server.client())
            .await
            .unwrap(),
    );
    let l = Arc::clone(&limiter);
    let results = std::thread::spawn(move || {
        let clock = MonotonicClock::new();
        (0..7)
            .map(|i| futures::executor::block_on(guard(&*l, clock, ok, async move { i })))
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    // The first five run (the lease), the sixth and seventh are refused at
    // once (the next lease is not there before the refresh).
    for (i, r) in results.iter().enumerate() {
        if i < 5 {
            assert_eq!(*r, Ok(i), "call {i}");
        } else {
            assert_eq!(*r, Err(Refused::QuotaExhausted), "call {i}");
        }
    }
    // Waiting instead: `acquire` on async-io's timer retries after the
    // limiter's retry_after (the refresh interval) until the next lease.
    let l = Arc::clone(&limiter);
    let waited = std::thread::spawn(move || {
        let timer = AsyncIoTimer::new();
        let deadline = timer.clock().now().saturating_add(Duration::from_secs(3));
        futures::executor::block_on(acquire(&*l, &timer, deadline))
    })
    .join()
    .unwrap();
    assert_eq!(waited, Ok(Admitted::Lease));
    Arc::into_inner(limiter).unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_and_a_fleet_permit_guard_futures_too() {
    let server = RedisServer::start();
    let quota = Quota::per_minute(60).unwrap().with_burst(10).unwrap();
    let keyed = Arc::new(
        KeyedFleetLimiter::<String>::start(
            KeyedFleetConfig::new(
                FleetConfig::new("futk", quota)
                    .expected_instances(5)
                    .refresh_interval(Duration::from_millis(20)),
                8,
            ),
            server.client(),
        )
        .await
        .unwrap(),
    );
    let semaphore = Arc::new(
        FleetSemaphore::start(
            SemaphoreConfig::new("futs", 1).refresh_interval(Duration::from_millis(20)),
            server.client(),
        )
        .await
        .unwrap(),
    );
    let (k, s) = (Arc::clone(&keyed), Arc::clone(&semaphore));
    std::thread::spawn(move || {
        let clock = MonotonicClock::new();
        let alice = "alice".to_owned();
        // A new key: its allowance is burst / 5 = 2.
        let key = k.for_key(&alice);
        let run = || futures::executor::block_on(guard(&key, clock, ok, async { 1 }));
        assert_eq!(run(), Ok(1));
        assert_eq!(run(), Ok(1));
        assert!(matches!(run(), Err(KeyedRefused::NewKey(_))));
        // The semaphore's permit is held while the future runs: a second
        // guarded call polled inside the first is refused at its first poll.
        let outer = guard(&*s, clock, ok, async {
            let inner = guard(&*s, clock, ok, async { 2 }).await;
            (s.stats().in_use, inner.is_err())
        });
        assert_eq!(futures::executor::block_on(outer), Ok((1, true)));
        // ... and given back when it completes.
        assert_eq!(
            futures::executor::block_on(guard(&*s, clock, ok, async { 3 })),
            Ok(3)
        );
    })
    .join()
    .unwrap();
    assert_eq!(semaphore.stats().in_use, 0);
    let alice = "alice".to_owned();
    assert!(
        wait_for(Duration::from_secs(2), || keyed
            .lease_of(&alice)
            .unwrap_or(0)
            > 0)
        .await
    );
    assert_eq!(
        keyed.for_key(&alice).try_acquire(),
        Ok(KeyedAdmitted::Fleet(Admitted::Lease))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_limits_are_stages_of_the_stack() {
    let server = RedisServer::start();
    let quota = Quota::per_minute(60).unwrap().with_burst(10).unwrap();
    let rate = Arc::new(
        FleetRateLimiter::start(
            FleetConfig::new("stack", quota)
                .initial_lease(3)
                .refresh_interval(Duration::from_millis(200)),
            server.client(),
        )
        .await
        .unwrap(),
    );
    let permits = Arc::new(
        FleetSemaphore::start(
            SemaphoreConfig::new("stack", 1).refresh_interval(Duration::from_millis(200)),
            server.client(),
        )
        .await
        .unwrap(),
    );
    // The fleet rate limit in front, then the fleet concurrency limit.
    let layer = StackLayer::builder()
        .admission((Arc::clone(&rate), Arc::clone(&permits)))
        .build();
    let (release, gate) = tokio::sync::watch::channel(false);
    let mut svc = layer.layer(service_fn(move |x: u32| {
        let mut gate = gate.clone();
        async move {
            if x == 0 {
                // Held until released: keeps the only fleet permit.
                let _ = gate.wait_for(|open| *open).await;
            }
            Ok::<_, std::io::Error>(x)
        }
    }));
    let held = tokio::spawn(svc.ready().await.unwrap().call(0));
    assert!(wait_for(Duration::from_secs(2), || permits.stats().in_use == 1).await);
    // The rate limit admits (token 2 of 3), the concurrency limit refuses:
    // the token is spent, the permit was never taken.
    let refused = svc.ready().await.unwrap().call(1).await.unwrap_err();
    match &refused {
        TenlivesError::Rejected(r) => {
            assert!(
                matches!(r.reason(), RejectionReason::ConcurrencyLimit { .. }),
                "{r:?}"
            );
            assert_eq!(r.retry_after(), Some(Duration::from_millis(200)));
        }
        other => panic!("{other:?}"),
    }
    release.send(true).unwrap();
    assert_eq!(held.await.unwrap().unwrap(), 0);
    assert_eq!(permits.stats().in_use, 0);
    // Token 3 of 3 goes through; the fourth is refused by the fleet quota,
    // with the refresh interval as retry_after.
    assert_eq!(svc.ready().await.unwrap().call(2).await.unwrap(), 2);
    let refused = svc.ready().await.unwrap().call(3).await.unwrap_err();
    match &refused {
        TenlivesError::Rejected(r) => {
            assert_eq!(r.reason(), RejectionReason::RateLimited);
            assert_eq!(r.retry_after(), Some(Duration::from_millis(200)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rate.stats().spent, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keyed_layer_limits_each_key_taken_from_the_request() {
    use tenlives_redis::{FleetLimitError, KeyedFleetRateLimitLayer};

    let server = RedisServer::start();
    let quota = Quota::per_minute(60).unwrap().with_burst(6).unwrap();
    let keyed = Arc::new(
        KeyedFleetLimiter::<u64>::start(
            KeyedFleetConfig::new(
                FleetConfig::new("layer", quota)
                    .expected_instances(3)
                    .refresh_interval(Duration::from_millis(20)),
                8,
            ),
            server.client(),
        )
        .await
        .unwrap(),
    );
    // The request is (user, payload); the key is the user.
    let layer = KeyedFleetRateLimitLayer::new(Arc::clone(&keyed), |req: &(u64, u32)| req.0);
    let mut svc = layer.layer(service_fn(|(_, x): (u64, u32)| async move {
        Ok::<_, std::io::Error>(x)
    }));
    // A new user's allowance: burst 6 / 3 = 2, then refused with the
    // allowance's wait; another user has an allowance of its own.
    assert_eq!(svc.ready().await.unwrap().call((1, 10)).await.unwrap(), 10);
    assert_eq!(svc.ready().await.unwrap().call((1, 11)).await.unwrap(), 11);
    match svc.ready().await.unwrap().call((1, 12)).await {
        Err(FleetLimitError::Rejected(r)) => {
            assert!(matches!(r.reason, KeyedRefused::NewKey(_)), "{r:?}");
            assert!(r.retry_after > Duration::ZERO);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(svc.ready().await.unwrap().call((2, 20)).await.unwrap(), 20);
    // User 1's lease arrives (its 2 admissions charged first): then the
    // lease decides.
    assert!(
        wait_for(Duration::from_secs(2), || keyed.lease_of(&1).unwrap_or(0)
            > 0)
        .await
    );
    assert_eq!(svc.ready().await.unwrap().call((1, 13)).await.unwrap(), 13);
}

/// A program with no tokio of its own: the limiter is started on a small
/// tokio runtime kept on the side (its one worker runs the refresh), and the
/// requests run on `futures`' executor on the program's own thread.
#[test]
fn a_program_without_tokio_keeps_a_side_runtime_for_the_refresh() {
    let server = RedisServer::start();
    let side = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let quota = Quota::per_minute(60).unwrap().with_burst(10).unwrap();
    let keyed = side
        .block_on(KeyedFleetLimiter::<String>::start(
            KeyedFleetConfig::new(
                FleetConfig::new("side", quota)
                    .expected_instances(5)
                    .refresh_interval(Duration::from_millis(20)),
                8,
            ),
            server.client(),
        ))
        .unwrap();
    let clock = MonotonicClock::new();
    let key = "k".to_owned();
    let run = || futures::executor::block_on(guard(&keyed.for_key(&key), clock, ok, async { 1 }));
    assert_eq!(run(), Ok(1));
    // The side runtime's worker installs the key and fetches its lease.
    let started = std::time::Instant::now();
    while keyed.lease_of(&key).unwrap_or(0) == 0 {
        assert!(started.elapsed() < Duration::from_secs(2), "no lease");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(run(), Ok(1));
    assert_eq!(keyed.stats().charged, 1);
    side.block_on(keyed.shutdown());
}
