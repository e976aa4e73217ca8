//! The tower layer against a real `redis-server`: admitted calls reach the
//! inner service, refused ones fail at once with a typed rejection carrying
//! the reason and a `retry_after`, and the inner service's errors pass
//! through.

mod common;

use std::future::{Ready, ready};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tenlives_engine::rate::Quota;
use tenlives_redis::{
    FleetConfig, FleetLimitError, FleetRateLimitLayer, FleetRateLimiter, Refused,
};
use tower_layer::Layer;
use tower_service::Service;

use common::RedisServer;

/// Counts its calls; fails the requests that are odd numbers.
#[derive(Clone)]
struct Echo(Arc<AtomicU64>);

impl Service<u32> for Echo {
    type Response = u32;
    type Error = &'static str;
    type Future = Ready<Result<u32, &'static str>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u32) -> Self::Future {
        self.0.fetch_add(1, Ordering::Relaxed);
        ready(if req.is_multiple_of(2) {
            Ok(req)
        } else {
            Err("odd")
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_admits_the_lease_and_rejects_with_retry_after() {
    let server = RedisServer::start();
    // 60 a minute, burst 8, one lease of all 8; the process may spend the
    // whole rate, so the lease is what bounds it.
    let quota = Quota::per_minute(60).unwrap().with_burst(8).unwrap();
    let interval = Duration::from_millis(50);
    let config = FleetConfig::new("tower", quota)
        .max_share(1.0)
        .initial_lease(8)
        .refresh_interval(interval)
        .lease_duration(Duration::from_secs(5));
    let limiter = Arc::new(
        FleetRateLimiter::start(config, server.client())
            .await
            .unwrap(),
    );
    let calls = Arc::new(AtomicU64::new(0));
    let mut svc = FleetRateLimitLayer::new(Arc::clone(&limiter)).layer(Echo(Arc::clone(&calls)));

    let mut ok = 0;
    let mut inner_err = 0;
    let mut rejected = Vec::new();
    for i in 0..20u32 {
        std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
        match svc.call(i).await {
            Ok(v) => {
                assert_eq!(v, i);
                ok += 1;
            }
            Err(FleetLimitError::Inner(e)) => {
                assert_eq!(e, "odd");
                inner_err += 1;
            }
            Err(FleetLimitError::Rejected(r)) => rejected.push(r),
        }
    }
    // The lease (8 tokens, at most one more refilled during the test) and
    // nothing else reached the inner service.
    let reached = calls.load(Ordering::Relaxed);
    assert_eq!(reached, ok + inner_err);
    assert!(
        (8..=9).contains(&reached),
        "{reached} calls reached the service"
    );
    assert_eq!(reached + rejected.len() as u64, 20);
    assert_eq!(limiter.stats().spent, reached);
    for r in &rejected {
        assert_eq!(r.reason, Refused::QuotaExhausted, "{r}");
        assert_eq!(r.retry_after, interval);
    }
    let shown = FleetLimitError::<&str>::Rejected(rejected[0]).to_string();
    assert!(
        shown.contains("quota exhausted") && shown.contains("50ms"),
        "{shown}"
    );
    drop(svc);
    Arc::try_unwrap(limiter).unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_refusal_carries_the_engine_limiters_wait() {
    let server = RedisServer::start();
    // 10 a second, burst 10; this process may hold a lease of 5 but spend
    // only ceil(0.5 · 10) = 5 a second: after 5 the share limiter refuses,
    // with a wait of about one token (200 ms).
    let quota = Quota::per_second(10).unwrap().with_burst(10).unwrap();
    let config = FleetConfig::new("share", quota)
        .max_share(0.5)
        .initial_lease(5)
        .refresh_interval(Duration::from_millis(20))
        .lease_duration(Duration::from_secs(5));
    let limiter = Arc::new(
        FleetRateLimiter::start(config, server.client())
            .await
            .unwrap(),
    );
    // Let the refresh top the lease up past what the share lets through.
    let calls = Arc::new(AtomicU64::new(0));
    let mut svc = FleetRateLimitLayer::new(Arc::clone(&limiter)).layer(Echo(calls));
    let mut share = None;
    for _ in 0..200 {
        match svc.call(0).await {
            Err(FleetLimitError::Rejected(r)) if matches!(r.reason, Refused::ShareLimited(_)) => {
                share = Some(r);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
    let r = share.expect("the share limiter never refused");
    assert!(
        r.retry_after > Duration::ZERO && r.retry_after <= Duration::from_millis(200),
        "{r}"
    );
    assert_eq!(r.retry_after, limiter.retry_after(&r.reason));
}
