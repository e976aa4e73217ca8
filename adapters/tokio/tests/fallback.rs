//! The fallback layer: which failures it answers, what it is told, the
//! fallback service's readiness, and what is left after a drop or a panic
//! at each await (paused clock).

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use common::{Backend, Call, poll_once};
use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_tokio::fallback::{FallbackLayer, FallbackService, FallbackValue, On};
use tenlives_tokio::{AdmissionLayer, StackLayer, TenlivesError, TimeoutLayer};
use tower::{Layer, Service, ServiceExt, service_fn};

type Error = TenlivesError<&'static str>;

/// The value fallback: 1000 + a code for the reason.
fn by_reason(reason: Error) -> Result<u32, Error> {
    Ok(match reason {
        TenlivesError::Rejected(_) => 1001,
        TenlivesError::TimedOut { .. } => 1002,
        TenlivesError::Inner(_) => 1003,
        TenlivesError::Injected(_) => 1004,
        _ => 1000,
    })
}

/// A rejection by an open breaker is answered by the value, which reads
/// the rejection (and its `retry_after`); a timeout too; a failure of the
/// service only where selected; successes pass.
#[tokio::test(start_paused = true)]
async fn chosen_failures_get_the_fallback_with_their_reason() {
    let breaker = CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(30))
            .build()
            .unwrap(),
    );
    let seen_retry_after = Arc::new(std::sync::Mutex::new(None));
    let seen = Arc::clone(&seen_retry_after);
    let fallback = FallbackLayer::new(
        On::rejections().and_timeouts(),
        FallbackValue::new(move |reason: Error| {
            if let TenlivesError::Rejected(r) = &reason {
                *seen.lock().unwrap() = Some(r.retry_after());
            }
            by_reason(reason)
        }),
    );
    let backend = Backend::new();
    // The stack's errors are one level: TenlivesError<E>.
    let stack = StackLayer::builder()
        .timeout(Duration::from_millis(100))
        .circuit_breaker(breaker)
        .build();
    let mut svc = fallback.layer(stack.layer(backend.clone()));
    // A success passes.
    assert_eq!(
        svc.ready().await.unwrap().call(Call::Ok(7)).await.ok(),
        Some(7)
    );
    // A failure not selected passes (and opens the breaker).
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(Call::Fail)
        .await
        .unwrap_err();
    assert!(matches!(err, TenlivesError::Inner("failed")), "{err:?}");
    assert_eq!(fallback.taken(), 0);
    // Rejected: the fallback answers, told the breaker's retry_after.
    assert_eq!(
        svc.ready().await.unwrap().call(Call::Ok(7)).await.ok(),
        Some(1001)
    );
    assert_eq!(
        *seen_retry_after.lock().unwrap(),
        Some(Some(Duration::from_secs(30)))
    );
    assert_eq!(backend.calls(), 2, "a rejection sends nothing");
    tokio::time::advance(Duration::from_secs(31)).await;
    // Timed out (the half-open probe): the fallback answers at the timeout.
    let start = tokio::time::Instant::now();
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(Call::SlowMs(5_000))
            .await
            .ok(),
        Some(1002)
    );
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(fallback.taken(), 2);
}

/// `On::failures` selects the wrapped service's failures by a function.
#[tokio::test(start_paused = true)]
async fn failures_are_selected_by_their_classifier() {
    let fallback = FallbackLayer::new(
        On::<&'static str>::failures(|e| *e == "failed"),
        FallbackValue::new(by_reason),
    );
    let mut svc = fallback.layer(TimeoutLayer::new(Duration::from_secs(1)).layer(Backend::new()));
    assert_eq!(
        svc.ready().await.unwrap().call(Call::Fail).await.ok(),
        Some(1003)
    );
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(Call::SlowFailMs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, TenlivesError::Inner("failed slowly")));
}

/// A fallback service is called with the request and the reason, after
/// its clone was polled ready (the backend checks the contract); its error
/// is returned as it is.
#[tokio::test(start_paused = true)]
async fn a_fallback_service_gets_the_request_and_the_reason() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let other =
        tower::util::MapRequest::new(Backend::new(), move |(req, reason): (Call, Error)| {
            counter.fetch_add(1, Ordering::SeqCst);
            assert!(reason.is_timeout());
            match req {
                Call::SlowMs(ms) => Call::Ok(u32::try_from(ms).unwrap()),
                _ => Call::Fail,
            }
        });
    let other = tower::util::MapErr::new(other, TenlivesError::Inner);
    let fallback = FallbackLayer::new(On::timeouts(), FallbackService::new(other));
    let mut svc =
        fallback.layer(TimeoutLayer::new(Duration::from_millis(10)).layer(Backend::new()));
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(Call::SlowMs(500))
            .await
            .ok(),
        Some(500)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        svc.ready().await.unwrap().call(Call::Ok(3)).await.ok(),
        Some(3)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no fallback for a success");
}

/// A fallback service that takes a while to be ready is waited for.
#[tokio::test(start_paused = true)]
async fn a_fallback_service_is_polled_ready_first() {
    #[derive(Clone)]
    struct Late(usize);
    impl Service<((), Error)> for Late {
        type Response = u32;
        type Error = Error;
        type Future = std::future::Ready<Result<u32, Error>>;
        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
            if self.0 > 0 {
                self.0 -= 1;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: ((), Error)) -> Self::Future {
            assert_eq!(self.0, 0, "called before ready");
            std::future::ready(Ok(9))
        }
    }
    let fallback = FallbackLayer::new(On::rejections(), FallbackService::new(Late(3)));
    let mut svc = fallback.layer(service_fn(|()| async {
        Err::<u32, Error>(TenlivesError::Rejected(tenlives_tokio::Rejection::new(
            tenlives_tokio::RejectionReason::ConcurrencyLimit {
                in_flight: 1,
                limit: 1,
            },
            None,
        )))
    }));
    assert_eq!(svc.ready().await.unwrap().call(()).await.ok(), Some(9));
}

/// Dropped while the call is in flight, or while the fallback is: the
/// permit of the concurrency limit inside comes back; a panic in the
/// selector or in the fallback value reaches the caller and leaves the
/// permit back too.
#[tokio::test(start_paused = true)]
async fn drops_and_panics_leave_nothing_held() {
    let limit = Arc::new(Bulkhead::new(1).unwrap());
    let inner = |limit: &Arc<Bulkhead>| {
        TimeoutLayer::new(Duration::from_millis(10))
            .layer(AdmissionLayer::new(Arc::clone(limit)).layer(Backend::new()))
    };
    // Dropped in flight.
    let fallback = FallbackLayer::new(On::timeouts(), FallbackValue::new(by_reason_nested));
    let mut svc = fallback.layer(inner(&limit));
    {
        let mut fut = pin!(svc.ready().await.unwrap().call(Call::Forever));
        assert!(poll_once(fut.as_mut()).is_pending());
        assert_eq!(limit.in_flight(), 1);
    }
    assert_eq!(limit.in_flight(), 0);
    // Dropped while the fallback service is not ready yet.
    let pending_fallback = FallbackService::new(tower::util::service_fn(
        |_: (Call, TenlivesError<TenlivesError<&'static str>>)| {
            std::future::pending::<Result<u32, _>>()
        },
    ));
    let fallback2 = FallbackLayer::new(
        |e: &TenlivesError<TenlivesError<&'static str>>| e.is_timeout(),
        pending_fallback,
    );
    let mut svc2 = fallback2.layer(inner(&limit));
    {
        let mut fut = pin!(svc2.ready().await.unwrap().call(Call::Forever));
        assert!(poll_once(fut.as_mut()).is_pending());
        past_the_timeout().await;
        assert!(poll_once(fut.as_mut()).is_pending(), "in the fallback");
        assert_eq!(fallback2.taken(), 1);
        assert_eq!(limit.in_flight(), 0, "the call's permit went with the call");
    }
    // A selector that panics; a value that panics.
    let panicking_when = FallbackLayer::new(
        |_: &TenlivesError<TenlivesError<&'static str>>| -> bool {
            panic!("the selector panicked")
        },
        FallbackValue::new(by_reason_nested),
    );
    let panicking_value = FallbackLayer::new(
        On::timeouts(),
        FallbackValue::new(
            |_: TenlivesError<TenlivesError<&'static str>>| -> Result<u32, _> {
                panic!("the fallback panicked")
            },
        ),
    );
    let mut a = panicking_when.layer(inner(&limit));
    let mut b = panicking_value.layer(inner(&limit));
    let fa = a.ready().await.unwrap().call(Call::Fail);
    assert!(catch_unwind(AssertUnwindSafe(|| poll_once(pin!(fa)))).is_err());
    assert_eq!(limit.in_flight(), 0);
    let mut fb = Box::pin(b.ready().await.unwrap().call(Call::Forever));
    assert!(poll_once(fb.as_mut()).is_pending());
    past_the_timeout().await;
    assert!(catch_unwind(AssertUnwindSafe(|| poll_once(fb.as_mut()))).is_err());
    drop(fb);
    assert_eq!(limit.in_flight(), 0);
}

/// Moves the paused clock past the 10 ms timeout. The timeout waits on the
/// layer's timer wheel, whose driver task expires the entry when this task
/// yields.
async fn past_the_timeout() {
    tokio::time::advance(Duration::from_millis(11)).await;
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
}

type Nested = TenlivesError<TenlivesError<&'static str>>;

/// `by_reason` one error level up (a timeout around a concurrency limit).
fn by_reason_nested(reason: Nested) -> Result<u32, Nested> {
    Ok(match reason {
        TenlivesError::TimedOut { .. } => 2002,
        _ => 2000,
    })
}
