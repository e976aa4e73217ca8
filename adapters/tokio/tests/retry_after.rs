//! The retry layer and the stack's retry stage honour an upstream's
//! `Retry-After` / gRPC pushback (feature `http`, paused clock): the retry
//! waits at least what the server asked, capped, and is still one
//! withdrawal from the budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::{Response, StatusCode};
use tenlives_engine::retry::{Backoff, RetryBudget, RetryBudgetConfig};
use tenlives_engine::time::Clock;
use tenlives_tokio::headers::HonourRetryAfter;
use tenlives_tokio::{RetryLayer, RetryPolicy, StackLayer, TokioClock};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};

type Res = Result<Response<()>, std::io::Error>;

fn retry_busy(r: &Res) -> bool {
    r.as_ref().is_ok_and(|r| {
        matches!(
            r.status(),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        )
    })
}

/// Which layer retries.
#[derive(Clone, Copy, Debug)]
enum Retrier {
    Layer,
    Stack,
}

/// The first answer is `status` with `header: value`; the next is 200.
async fn first_retry_after(
    status: StatusCode,
    header: &'static str,
    value: &'static str,
    cap: Duration,
) -> (Duration, u64) {
    let layer = first_retry_after_through(Retrier::Layer, status, header, value, cap).await;
    let stack = first_retry_after_through(Retrier::Stack, status, header, value, cap).await;
    assert_eq!(
        layer, stack,
        "the stack's retry stage waits as the layer does"
    );
    layer
}

async fn first_retry_after_through(
    retrier: Retrier,
    status: StatusCode,
    header: &'static str,
    value: &'static str,
    cap: Duration,
) -> (Duration, u64) {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    let upstream = service_fn(move |()| {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        async move {
            let mut b = Response::builder();
            if n == 0 {
                b = b.status(status).header(header, value);
            }
            Ok::<_, std::io::Error>(b.body(()).unwrap())
        }
    });
    let policy = RetryPolicy::new(
        Backoff::constant(Duration::from_millis(10))
            .unwrap()
            .with_max_retries(2),
        RetryBudget::new(RetryBudgetConfig::default()),
    );
    let start = Instant::now();
    let now = || TokioClock::new().now();
    let withdrawals = match retrier {
        Retrier::Layer => {
            let layer = RetryLayer::new(
                policy.retry_if(HonourRetryAfter::new(retry_busy as fn(&Res) -> bool, cap)),
            );
            let mut svc = layer.layer(upstream);
            let answer = svc.ready().await.unwrap().call(()).await.unwrap();
            assert_eq!(answer.status(), StatusCode::OK);
            layer.policy().budget().counts(now()).withdrawals
        }
        Retrier::Stack => {
            type StackRes = Result<Response<()>, tenlives_tokio::TenlivesError<std::io::Error>>;
            let busy = |r: &StackRes| {
                r.as_ref().is_ok_and(|r| {
                    matches!(
                        r.status(),
                        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                    )
                })
            };
            let layer = StackLayer::builder()
                .retry(policy.retry_if(HonourRetryAfter::new(busy, cap)))
                .build();
            let mut svc = layer.layer(upstream);
            let answer = svc.ready().await.unwrap().call(()).await.unwrap();
            assert_eq!(answer.status(), StatusCode::OK);
            layer.policies().retry().budget().counts(now()).withdrawals
        }
    };
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    (start.elapsed(), withdrawals)
}

#[tokio::test(start_paused = true)]
async fn the_retry_waits_what_the_server_asked_capped() {
    let cap = Duration::from_secs(5);
    // 429 asking 2 s: waited 2 s, not the 10 ms backoff.
    assert_eq!(
        first_retry_after(StatusCode::TOO_MANY_REQUESTS, "retry-after", "2", cap).await,
        (Duration::from_secs(2), 1)
    );
    // 503 asking 60 s: capped at 5 s.
    assert_eq!(
        first_retry_after(StatusCode::SERVICE_UNAVAILABLE, "retry-after", "60", cap).await,
        (cap, 1)
    );
    // gRPC pushback of 300 ms on a 503.
    assert_eq!(
        first_retry_after(
            StatusCode::SERVICE_UNAVAILABLE,
            "grpc-retry-pushback-ms",
            "300",
            cap
        )
        .await,
        (Duration::from_millis(300), 1)
    );
    // Asking less than the backoff: the backoff.
    assert_eq!(
        first_retry_after(StatusCode::TOO_MANY_REQUESTS, "retry-after", "0", cap).await,
        (Duration::from_millis(10), 1)
    );
    // A malformed value: the backoff.
    assert_eq!(
        first_retry_after(StatusCode::TOO_MANY_REQUESTS, "retry-after", "soon", cap).await,
        (Duration::from_millis(10), 1)
    );
}
