//! The rate-limit layers on tokio's paused clock: the direct layer and the
//! keyed layer refuse past the burst with the time of the next token, let
//! requests through again once it is due, and never reach the inner service
//! when they refuse.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tenlives_engine::rate::{KeyedConfig, KeyedRateLimiter, Quota, RateLimiter, WhenFull};
use tenlives_tokio::{KeyedRateLimitLayer, RateLimitLayer, RejectionReason, TenlivesError};
use tower::{Layer, Service, ServiceExt, service_fn};

fn counting() -> (
    Arc<AtomicUsize>,
    impl Service<u32, Response = u32, Error = std::io::Error> + Clone,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let svc = service_fn(move |x: u32| {
        seen.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, std::io::Error>(x) }
    });
    (calls, svc)
}

#[tokio::test(start_paused = true)]
async fn direct_layer_refuses_past_the_burst_and_recovers() {
    let limiter = RateLimiter::new(Quota::per_second(10).unwrap().with_burst(2).unwrap());
    let (calls, inner) = counting();
    let mut svc = RateLimitLayer::new(limiter).layer(inner);
    for i in 0..2 {
        assert_eq!(svc.ready().await.unwrap().call(i).await.unwrap(), i);
    }
    let refused = svc.ready().await.unwrap().call(9).await.unwrap_err();
    assert!(
        matches!(&refused, TenlivesError::Rejected(r) if r.reason() == RejectionReason::RateLimited)
    );
    assert_eq!(refused.retry_after(), Some(Duration::from_millis(100)));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "a refused request never reaches the service"
    );

    tokio::time::advance(Duration::from_millis(100)).await;
    assert_eq!(svc.ready().await.unwrap().call(3).await.unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn keyed_layer_limits_each_key_and_reports_a_full_table() {
    let quota = Quota::per_second(1).unwrap();
    let limiter = KeyedRateLimiter::new(
        KeyedConfig::new(quota, 1)
            .unwrap()
            .when_full(WhenFull::Reject),
    );
    let (calls, inner) = counting();
    let layer = KeyedRateLimitLayer::new(limiter, |x: &u32| *x % 10);
    let mut svc = layer.layer(inner);
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 1);
    let limited = svc.ready().await.unwrap().call(11).await.unwrap_err();
    assert_eq!(limited.retry_after(), Some(Duration::from_secs(1)));
    // Key 2 is new and the only entry holds key 1, whose token is in use.
    let full = svc.ready().await.unwrap().call(2).await.unwrap_err();
    assert!(
        matches!(&full, TenlivesError::Rejected(r) if r.reason() == RejectionReason::RateLimitTableFull)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Once key 1 has refilled it is evictable, and key 2 gets its entry.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(svc.ready().await.unwrap().call(2).await.unwrap(), 2);
    assert_eq!(layer.limiter().in_use(), 1);
}
