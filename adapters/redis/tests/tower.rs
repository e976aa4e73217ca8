//! The tower layer against a real `redis-server`: admitted calls reach the
//! inner service, refused ones fail at once with a typed rejection carrying
//! the reason and a `retry_after`, and the inner service's errors pass
//! through.

mod common;

use std::future::{Future, Ready, ready};
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

/// A request to [`Gate`].
enum Req {
    /// Pending forever.
    Hold,
    /// Ready with this value.
    Done(u32),
    /// Ready with an error.
    Fail,
    /// `call` panics.
    Panic,
}

/// A future ready with its value, or pending forever.
struct MaybeReady(Option<Result<u32, &'static str>>);

impl std::future::Future for MaybeReady {
    type Output = Result<u32, &'static str>;

    fn poll(mut self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        match self.0.take() {
            Some(out) => Poll::Ready(out),
            None => Poll::Pending,
        }
    }
}

/// Counts its calls; answers as the request says.
struct Gate(Arc<AtomicU64>);

impl Service<Req> for Gate {
    type Response = u32;
    type Error = &'static str;
    type Future = MaybeReady;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> MaybeReady {
        self.0.fetch_add(1, Ordering::Relaxed);
        MaybeReady(match req {
            Req::Hold => None,
            Req::Done(v) => Some(Ok(v)),
            Req::Fail => Some(Err("failed")),
            Req::Panic => panic!("the inner service panics"),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_layer_holds_a_permit_per_call_until_it_ends() {
    use std::pin::pin;
    use tenlives_redis::{FleetConcurrencyLimitLayer, FleetSemaphore, SemaphoreConfig};

    let server = RedisServer::start();
    let interval = Duration::from_millis(10);
    let config = SemaphoreConfig::new("tower-sem", 2)
        .refresh_interval(interval)
        .ttl(Duration::from_millis(500));
    let sem = Arc::new(
        FleetSemaphore::start(config, server.client())
            .await
            .unwrap(),
    );
    let calls = Arc::new(AtomicU64::new(0));
    let mut svc = FleetConcurrencyLimitLayer::new(Arc::clone(&sem)).layer(Gate(Arc::clone(&calls)));

    // Calls that never end, until two hold the fleet's two permits (the
    // refusals are the demand that grows the claim).
    let mut held = Vec::new();
    let mut refused = 0u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while held.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "never got 2 permits");
        let fut = svc.call(Req::Hold);
        // A held call's future is pending; a refused one is ready.
        let mut fut = Box::pin(fut);
        match std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
            Poll::Pending => held.push(fut),
            Poll::Ready(Err(FleetLimitError::Rejected(r))) => {
                assert_eq!(r.retry_after, interval);
                refused += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Poll::Ready(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(sem.stats().in_use, 2);
    // Only the admitted calls reached the inner service.
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    // The fleet's limit is in use: refused at once, the inner service not
    // called.
    match svc.call(Req::Done(1)).await {
        Err(FleetLimitError::Rejected(r)) => {
            assert_eq!(r.reason, tenlives_redis::SemaphoreRefused::Full, "{r}");
            assert_eq!(r.retry_after, interval);
        }
        other => panic!("admitted beyond the limit: {other:?}"),
    }
    assert_eq!(calls.load(Ordering::Relaxed), 2);

    // Dropping a call mid-flight gives its permit back.
    held.pop();
    assert_eq!(sem.stats().in_use, 1);
    // A call that completes gives it back as soon as it is done, before
    // its future is dropped.
    {
        let mut fut = pin!(svc.call(Req::Done(7)));
        assert_eq!(sem.stats().in_use, 2);
        let out = std::future::poll_fn(|cx| fut.as_mut().poll(cx)).await;
        assert_eq!(out, Ok(7));
        assert_eq!(sem.stats().in_use, 1);
    }
    // The inner service's error passes through, and its permit comes back.
    assert_eq!(
        svc.call(Req::Fail).await,
        Err(FleetLimitError::Inner("failed"))
    );
    assert_eq!(sem.stats().in_use, 1);
    // The inner service's `call` panicking: the permit taken for it comes
    // back on the way out.
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(svc.call(Req::Panic));
    }));
    assert!(panicked.is_err());
    assert_eq!(sem.stats().in_use, 1);
    drop(held);
    assert_eq!(sem.stats().in_use, 0);
    eprintln!("refused {refused} calls while the claim grew");
}
