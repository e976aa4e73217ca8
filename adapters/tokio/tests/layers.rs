//! What each layer does, under tokio's paused clock: the breaker opens and
//! rejects with a retry time, limits reject when full and free on
//! completion, the timeout fires, retries back off and stop when the budget
//! is spent, fault injection keeps its rates and its seed, and the combined
//! stack does all of it in one service.

mod common;

use std::time::Duration;

use common::{Backend, Call, poll_once, ready_call};
use tenlives_engine::adaptive::{AdaptiveLimiter, Aimd, WindowConfig};
use tenlives_engine::breaker::{
    BreakerConfig, BreakerState, CircuitBreaker, Outcome, RejectReason,
};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::rate::{Quota, RateLimiter};
use tenlives_engine::retry::{Backoff, RetryBudget, RetryBudgetConfig};
use tenlives_engine::throttle::{Throttle, ThrottleConfig};
use tenlives_engine::time::Clock;
use tenlives_tokio::fault::{FaultConfig, FaultLayer};
use tenlives_tokio::{
    AdaptiveLimitLayer, AdmissionLayer, CircuitBreakerLayer, ConcurrencyLimitLayer, InjectedFault,
    RejectionReason, RetryLayer, RetryPolicy, StackLayer, TenlivesError, ThrottleLayer,
    TimeoutLayer, TokioClock,
};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn consecutive_breaker(failures: u32, open: Duration) -> CircuitBreaker {
    CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(failures)
            .open_duration(open)
            .half_open_probes(1)
            .build()
            .unwrap(),
    )
}

fn budget(ratio: f64, min_per_second: u32) -> RetryBudget {
    RetryBudget::new(
        RetryBudgetConfig::builder()
            .ratio(ratio)
            .min_per_second(min_per_second)
            .build()
            .unwrap(),
    )
}

// ----------------------------------------------------------------------------
// Circuit breaker

#[tokio::test(start_paused = true)]
async fn breaker_opens_after_failures_and_rejects_with_retry_after() {
    let layer = CircuitBreakerLayer::new(consecutive_breaker(3, Duration::from_secs(10)));
    let backend = Backend::new();
    let mut svc = layer.layer(backend.clone());
    for _ in 0..3 {
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(Call::Fail)
            .await
            .unwrap_err();
        assert!(matches!(err, TenlivesError::Inner("failed")));
    }
    assert_eq!(layer.policy().state(), BreakerState::Open);

    tokio::time::advance(Duration::from_secs(4)).await;
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(Call::Ok(1))
        .await
        .unwrap_err();
    let rejection = *err.rejection().expect("a rejection");
    assert_eq!(
        rejection.reason(),
        RejectionReason::CircuitBreaker(RejectReason::Open)
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(6)));
    assert_eq!(
        backend.calls(),
        3,
        "a rejected call never reaches the backend"
    );

    // After the open period one probe passes; its success closes the breaker.
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(
        svc.ready().await.unwrap().call(Call::Ok(7)).await.unwrap(),
        7
    );
    assert_eq!(layer.policy().state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn breaker_times_calls_on_the_tokio_clock() {
    let breaker = CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .slow_calls(100.0, ms(500))
            .minimum_calls(2)
            .count_window(2)
            .build()
            .unwrap(),
    );
    let layer = CircuitBreakerLayer::new(breaker);
    let mut svc = layer.layer(Backend::new());
    // Fast successes say nothing; two calls of 600 ms (virtual) trip it.
    svc.ready()
        .await
        .unwrap()
        .call(Call::SlowMs(100))
        .await
        .unwrap();
    assert_eq!(layer.policy().state(), BreakerState::Closed);
    svc.ready()
        .await
        .unwrap()
        .call(Call::SlowMs(600))
        .await
        .unwrap();
    svc.ready()
        .await
        .unwrap()
        .call(Call::SlowMs(600))
        .await
        .unwrap();
    assert_eq!(layer.policy().state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn the_classifier_decides_what_a_failure_is() {
    // Errors are ignored, and `Ok(500)` is a failure.
    let classify = |r: &Result<u32, &'static str>| match r {
        Ok(500) => Outcome::Failure,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Ignored,
    };
    let layer = AdmissionLayer::with_classifier(
        consecutive_breaker(2, Duration::from_secs(1)),
        classify,
        TokioClock::new(),
    );
    let mut svc = layer.layer(Backend::new());
    for _ in 0..5 {
        let _ = svc.ready().await.unwrap().call(Call::Fail).await;
    }
    assert_eq!(layer.policy().state(), BreakerState::Closed);
    for _ in 0..2 {
        svc.ready()
            .await
            .unwrap()
            .call(Call::Ok(500))
            .await
            .unwrap();
    }
    assert_eq!(layer.policy().state(), BreakerState::Open);
}

// ----------------------------------------------------------------------------
// Concurrency limits

#[tokio::test(start_paused = true)]
async fn bulkhead_rejects_when_full_and_frees_on_completion() {
    let layer = ConcurrencyLimitLayer::new(Bulkhead::new(2).unwrap());
    let backend = Backend::new();
    let mut svc = layer.layer(backend.clone());
    let a = svc.ready().await.unwrap().call(Call::SlowMs(100));
    let b = svc.ready().await.unwrap().call(Call::SlowMs(200));
    assert_eq!(layer.policy().in_flight(), 2);
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(Call::Ok(1))
        .await
        .unwrap_err();
    assert!(matches!(
        err.rejection().map(|r| r.reason()),
        Some(RejectionReason::ConcurrencyLimit {
            in_flight: 2,
            limit: 2
        })
    ));
    assert_eq!(
        err.retry_after(),
        None,
        "a full limit frees up on completion, not at a time"
    );
    assert_eq!(backend.calls(), 2);

    a.await.unwrap();
    assert_eq!(layer.policy().in_flight(), 1);
    assert_eq!(
        svc.ready().await.unwrap().call(Call::Ok(3)).await.unwrap(),
        3
    );
    b.await.unwrap();
    assert_eq!(layer.policy().in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn clones_and_services_of_one_layer_share_the_limit() {
    let layer = ConcurrencyLimitLayer::new(Bulkhead::new(1).unwrap());
    let mut first = layer.layer(Backend::new());
    let mut clone = first.clone();
    let mut other = layer.layer(Backend::new());
    let held = first.ready().await.unwrap().call(Call::SlowMs(10));
    assert!(
        clone
            .ready()
            .await
            .unwrap()
            .call(Call::Ok(1))
            .await
            .unwrap_err()
            .is_rejected()
    );
    assert!(
        other
            .ready()
            .await
            .unwrap()
            .call(Call::Ok(1))
            .await
            .unwrap_err()
            .is_rejected()
    );
    held.await.unwrap();
    assert_eq!(clone.policy().in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn adaptive_limit_learns_from_latency_and_failures() {
    let aimd = Aimd::builder()
        .limits(1, 10, 100)
        .latency_threshold(ms(50))
        .backoff(0.5)
        .build()
        .unwrap();
    let clock = TokioClock::new();
    let limiter = AdaptiveLimiter::new(aimd, WindowConfig::new(ms(100), 1).unwrap(), clock.now());
    let layer =
        AdaptiveLimitLayer::with_classifier(limiter, tenlives_tokio::DefaultClassifier, clock);
    let mut svc = layer.layer(Backend::new());

    // Slow calls (200 ms > the 50 ms threshold) halve the limit once a window closes.
    svc.ready()
        .await
        .unwrap()
        .call(Call::SlowMs(200))
        .await
        .unwrap();
    assert_eq!(layer.policy().limit(), 5);
    // Failures are drops: halved again at the next window's close.
    tokio::time::advance(ms(150)).await;
    let _ = svc.ready().await.unwrap().call(Call::Fail).await;
    assert_eq!(layer.policy().limit(), 2);
    assert_eq!(layer.policy().in_flight(), 0);
}

// ----------------------------------------------------------------------------
// Throttle

#[tokio::test(start_paused = true)]
async fn throttle_spares_a_refusing_backend_and_counts_answers() {
    let throttle = Throttle::new(
        ThrottleConfig::builder()
            .k(2.0)
            .minimum_requests(10)
            .seed(3)
            .build()
            .unwrap(),
    );
    let layer = ThrottleLayer::new(throttle);
    let backend = Backend::new();
    let mut svc = layer.layer(backend.clone());
    let clock = TokioClock::new();
    for _ in 0..10 {
        svc.ready().await.unwrap().call(Call::Ok(1)).await.unwrap();
    }
    assert_eq!(layer.throttle().counts(clock.now()), (10, 10));
    let mut local = 0;
    for _ in 0..300 {
        if let Err(e) = svc.ready().await.unwrap().call(Call::Fail).await {
            local += usize::from(e.is_rejected());
        }
    }
    assert!(
        local > 150,
        "most of 300 refused requests are kept local: {local}"
    );
    assert_eq!(backend.calls(), 10 + 300 - local);
    let (requests, accepts) = layer.throttle().counts(clock.now());
    assert_eq!((requests, accepts), (310, 10));
}

// ----------------------------------------------------------------------------
// Timeout

#[tokio::test(start_paused = true)]
async fn timeout_fires_and_fast_calls_pass() {
    let mut svc = TimeoutLayer::new(ms(100)).layer(Backend::new());
    let started = Instant::now();
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(Call::SlowMs(1000))
        .await
        .unwrap_err();
    assert!(matches!(err, TenlivesError::TimedOut { after } if after == ms(100)));
    assert_eq!(started.elapsed(), ms(100));
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(Call::SlowMs(99))
            .await
            .unwrap(),
        0
    );
    assert!(matches!(
        svc.ready().await.unwrap().call(Call::Fail).await,
        Err(TenlivesError::Inner("failed"))
    ));
    // A timeout too long for tokio's instants waits "forever", without panicking.
    let mut forever = TimeoutLayer::new(Duration::MAX).layer(Backend::new());
    let mut call = std::pin::pin!(ready_call(&mut forever, Call::Forever));
    assert!(poll_once(call.as_mut()).is_pending());
    tokio::time::advance(Duration::from_secs(86_400)).await;
    assert!(poll_once(call.as_mut()).is_pending());
}

// ----------------------------------------------------------------------------
// Retry

#[tokio::test(start_paused = true)]
async fn retry_backs_off_between_attempts() {
    let backoff = Backoff::exponential(ms(10), 2.0, ms(1000))
        .unwrap()
        .with_max_retries(5);
    let backend = Backend::new();
    let mut svc =
        RetryLayer::new(RetryPolicy::new(backoff, budget(1.0, 100))).layer(backend.clone());
    let started = Instant::now();
    assert_eq!(
        svc.ready().await.unwrap().call(Call::FailFirst(3)).await,
        Ok(3)
    );
    assert_eq!(backend.calls(), 4);
    assert_eq!(started.elapsed(), ms(10 + 20 + 40));
}

#[tokio::test(start_paused = true)]
async fn retry_stops_at_the_end_of_the_schedule() {
    let backoff = Backoff::constant(ms(5)).unwrap().with_max_retries(2);
    let backend = Backend::new();
    let mut svc =
        RetryLayer::new(RetryPolicy::new(backoff, budget(1.0, 100))).layer(backend.clone());
    assert_eq!(
        svc.ready().await.unwrap().call(Call::Fail).await,
        Err("failed")
    );
    assert_eq!(backend.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn retry_stops_when_the_budget_is_spent() {
    // No ratio; a reserve of 10 retries in the 10 s window.
    let backoff = Backoff::constant(ms(1)).unwrap().with_max_retries(1000);
    let layer = RetryLayer::new(RetryPolicy::new(backoff, budget(0.0, 1)));
    let backend = Backend::new();
    let mut svc = layer.layer(backend.clone());
    assert!(svc.ready().await.unwrap().call(Call::Fail).await.is_err());
    assert_eq!(
        backend.calls(),
        11,
        "one attempt and the 10 retries the budget allows"
    );
    assert!(svc.ready().await.unwrap().call(Call::Fail).await.is_err());
    assert_eq!(backend.calls(), 12, "no budget left: no retry");
    let counts = layer.policy().budget().counts(TokioClock::new().now());
    assert_eq!((counts.deposits, counts.withdrawals), (2, 10));
}

/// The withdrawal is taken when the retry is sent: two requests fail
/// together and both wait out the backoff with one retry left in the
/// budget; the first to send it takes it, the other is refused then and
/// ends with its last result, and the budget counts exactly the retry sent.
#[tokio::test(start_paused = true)]
async fn retry_withdraws_when_it_sends_and_a_refusal_returns_the_last_result() {
    let backoff = Backoff::constant(ms(10)).unwrap().with_max_retries(5);
    // No ratio; a reserve of 1 retry in a 1 s window.
    let config = RetryBudgetConfig::builder()
        .ratio(0.0)
        .min_per_second(1)
        .window(Duration::from_secs(1), 1)
        .build()
        .unwrap();
    let layer = RetryLayer::new(RetryPolicy::new(backoff, RetryBudget::new(config)));
    let backend = Backend::new();
    let (mut a, mut b) = (layer.layer(backend.clone()), layer.layer(backend.clone()));
    let first = a.ready().await.unwrap().call(Call::SlowFailMs(5));
    let second = b.ready().await.unwrap().call(Call::SlowFailMs(5));
    let mut first = std::pin::pin!(first);
    let mut second = std::pin::pin!(second);
    assert!(poll_once(first.as_mut()).is_pending());
    assert!(poll_once(second.as_mut()).is_pending());
    tokio::time::advance(ms(6)).await;
    assert!(poll_once(first.as_mut()).is_pending(), "waiting to retry");
    assert!(poll_once(second.as_mut()).is_pending(), "waiting to retry");
    let now = TokioClock::new().now();
    let counts = layer.policy().budget().counts(now);
    assert_eq!(
        (counts.deposits, counts.withdrawals),
        (2, 0),
        "nothing withdrawn while waiting"
    );
    let (x, y) = tokio::join!(first, second);
    assert_eq!((x, y), (Err("failed slowly"), Err("failed slowly")));
    assert_eq!(backend.calls(), 3, "two first attempts and one retry");
    let counts = layer.policy().budget().counts(TokioClock::new().now());
    assert_eq!((counts.deposits, counts.withdrawals), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn retry_asks_the_classifier_and_polls_ready_before_each_retry() {
    let backoff = Backoff::constant(ms(1)).unwrap().with_max_retries(3);
    let policy = RetryPolicy::new(backoff, budget(1.0, 100))
        .retry_if(|r: &Result<u32, &'static str>| *r == Err("not yet"));
    let backend = Backend::new();
    let mut svc = RetryLayer::new(policy).layer(backend.clone());
    // `Backend` panics if a clone is called without its own poll_ready.
    assert_eq!(
        svc.ready().await.unwrap().call(Call::FailFirst(2)).await,
        Ok(2)
    );
    assert_eq!(backend.calls(), 3);
    assert_eq!(backend.readies.load(std::sync::atomic::Ordering::SeqCst), 3);
    // "failed" is not retryable.
    assert_eq!(
        svc.ready().await.unwrap().call(Call::Fail).await,
        Err("failed")
    );
    assert_eq!(backend.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn retry_jitter_is_seeded() {
    async fn total_wait(seed: u64) -> Duration {
        let backoff = Backoff::full_jitter(ms(100), 2.0, ms(10_000))
            .unwrap()
            .with_max_retries(4);
        let policy = RetryPolicy::new(backoff, budget(1.0, 100)).with_seed(seed);
        let mut svc = RetryLayer::new(policy).layer(Backend::new());
        let started = Instant::now();
        let _ = svc.ready().await.unwrap().call(Call::Fail).await;
        started.elapsed()
    }
    let a = total_wait(1).await;
    assert_eq!(a, total_wait(1).await);
    assert_ne!(a, total_wait(2).await);
}

// ----------------------------------------------------------------------------
// Fault injection

#[tokio::test(start_paused = true)]
async fn fault_rates_hold_and_a_seed_replays_them() {
    async fn run(seed: u64) -> (Vec<char>, usize) {
        let config = FaultConfig::builder()
            .error(0.1)
            .connection_drop(0.2)
            .hang(0.05)
            .seed(seed)
            .build()
            .unwrap();
        let backend = Backend::new();
        let mut svc = FaultLayer::new(config).layer(backend.clone());
        let mut seen = Vec::new();
        for _ in 0..10_000 {
            let mut call = std::pin::pin!(ready_call(&mut svc, Call::Ok(1)));
            seen.push(match poll_once(call.as_mut()) {
                std::task::Poll::Pending => 'h',
                std::task::Poll::Ready(Ok(_)) => '.',
                std::task::Poll::Ready(Err(TenlivesError::Injected(InjectedFault::Error))) => 'e',
                std::task::Poll::Ready(Err(TenlivesError::Injected(
                    InjectedFault::ConnectionDropped,
                ))) => 'd',
                std::task::Poll::Ready(Err(other)) => panic!("unexpected {other:?}"),
            });
        }
        (seen, backend.calls())
    }
    let (seen, calls) = run(42).await;
    let count = |c| seen.iter().filter(|&&s| s == c).count();
    // Binomial counts over 10 000 requests, within 5 standard deviations.
    assert!((850..=1150).contains(&count('e')), "errors: {}", count('e'));
    assert!((1800..=2200).contains(&count('d')), "drops: {}", count('d'));
    assert!((390..=610).contains(&count('h')), "hangs: {}", count('h'));
    assert_eq!(
        calls,
        count('.') + count('d'),
        "a dropped connection reaches the backend; an error or a hang does not"
    );
    assert_eq!(run(42).await.0, seen, "same seed, same faults");
    assert_ne!(run(43).await.0, seen, "another seed, other faults");
}

#[tokio::test(start_paused = true)]
async fn fault_latency_delays_the_call_and_errors_can_be_the_services_own() {
    let config = FaultConfig::builder()
        .latency(1.0, ms(250))
        .error(1.0)
        .build()
        .unwrap();
    let layer = FaultLayer::with_errors(config, |fault: InjectedFault| match fault {
        InjectedFault::Error => "injected",
        _ => "dropped",
    });
    let mut svc = layer.layer(Backend::new());
    let started = Instant::now();
    assert_eq!(
        svc.ready().await.unwrap().call(Call::Ok(1)).await,
        Err("injected")
    );
    assert_eq!(started.elapsed(), ms(250));
}

// ----------------------------------------------------------------------------
// The combined stack

fn full_stack(
    timeout: Duration,
    breaker: CircuitBreaker,
    limit: u32,
    backoff: Backoff,
    budget: RetryBudget,
) -> StackLayer<tenlives_tokio::DefaultClassifier, RetryPolicy, tenlives_tokio::DefaultAdmission> {
    StackLayer::builder()
        .timeout(timeout)
        .retry(RetryPolicy::new(backoff, budget))
        .circuit_breaker(breaker)
        .concurrency_limit(Bulkhead::new(limit).unwrap())
        .build()
}

#[tokio::test(start_paused = true)]
async fn stack_retries_through_the_breaker_and_the_limit() {
    let layer = full_stack(
        Duration::from_secs(5),
        consecutive_breaker(10, Duration::from_secs(1)),
        4,
        Backoff::constant(ms(10)).unwrap().with_max_retries(3),
        budget(1.0, 100),
    );
    let backend = Backend::new();
    let mut svc = layer.layer(backend.clone());
    let started = Instant::now();
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(Call::FailFirst(2))
            .await
            .unwrap(),
        2
    );
    assert_eq!(started.elapsed(), ms(20));
    assert_eq!(backend.calls(), 3);
    let p = layer.policies();
    assert_eq!(p.limit().unwrap().in_flight(), 0);
    // Two failures then a success: the run of failures was reset.
    assert_eq!(
        p.breaker()
            .unwrap()
            .snapshot(p.clock().now())
            .consecutive_failures,
        0
    );
}

/// The stack's retry stage withdraws when the retry is sent, like
/// `RetryLayer`: of two requests waiting out their backoff with one retry
/// left in the budget, one sends it and the other ends with its last result.
#[tokio::test(start_paused = true)]
async fn stack_retry_withdraws_when_it_sends() {
    let config = RetryBudgetConfig::builder()
        .ratio(0.0)
        .min_per_second(1)
        .window(Duration::from_secs(1), 1)
        .build()
        .unwrap();
    let layer = full_stack(
        Duration::from_secs(5),
        consecutive_breaker(10, Duration::from_secs(1)),
        4,
        Backoff::constant(ms(10)).unwrap().with_max_retries(5),
        RetryBudget::new(config),
    );
    let backend = Backend::new();
    let (mut a, mut b) = (layer.layer(backend.clone()), layer.layer(backend.clone()));
    let first = a.ready().await.unwrap().call(Call::SlowFailMs(5));
    let second = b.ready().await.unwrap().call(Call::SlowFailMs(5));
    let mut first = std::pin::pin!(first);
    let mut second = std::pin::pin!(second);
    assert!(poll_once(first.as_mut()).is_pending());
    assert!(poll_once(second.as_mut()).is_pending());
    tokio::time::advance(ms(6)).await;
    assert!(poll_once(first.as_mut()).is_pending(), "waiting to retry");
    assert!(poll_once(second.as_mut()).is_pending(), "waiting to retry");
    let p = layer.policies();
    let counts = p.retry().budget().counts(p.clock().now());
    assert_eq!(
        (counts.deposits, counts.withdrawals),
        (2, 0),
        "nothing withdrawn while waiting"
    );
    let (x, y) = tokio::join!(first, second);
    assert!(
        matches!(x, Err(TenlivesError::Inner("failed slowly"))),
        "{x:?}"
    );
    assert!(
        matches!(y, Err(TenlivesError::Inner("failed slowly"))),
        "{y:?}"
    );
    assert_eq!(backend.calls(), 3, "two first attempts and one retry");
    let counts = p.retry().budget().counts(p.clock().now());
    assert_eq!((counts.deposits, counts.withdrawals), (2, 1));
    assert_eq!(p.limit().unwrap().in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn stack_timeout_counts_as_a_failure_and_frees_the_permit() {
    let layer = full_stack(
        ms(100),
        consecutive_breaker(2, Duration::from_secs(30)),
        4,
        Backoff::constant(ms(10)).unwrap().with_max_retries(0),
        budget(1.0, 100),
    );
    let mut svc = layer.layer(Backend::new());
    for _ in 0..2 {
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(Call::SlowMs(1000))
            .await
            .unwrap_err();
        assert!(err.is_timeout());
        assert_eq!(layer.policies().limit().unwrap().in_flight(), 0);
    }
    assert_eq!(
        layer.policies().breaker().unwrap().state(),
        BreakerState::Open
    );
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(Call::Ok(1))
        .await
        .unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
}

#[tokio::test(start_paused = true)]
async fn stack_deadline_covers_every_attempt_and_backoff() {
    // Attempts fail after 30 ms, retries wait 10 ms: attempts at 0, 40 and
    // 80 ms; the third is cut at the 100 ms deadline.
    let layer = full_stack(
        ms(100),
        consecutive_breaker(10, Duration::from_secs(1)),
        4,
        Backoff::constant(ms(10)).unwrap().with_max_retries(5),
        budget(1.0, 100),
    );
    let backend = Backend::new();
    let mut svc = layer.layer(backend.clone());
    let started = Instant::now();
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(Call::SlowFailMs(30))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(started.elapsed(), ms(100));
    assert_eq!(backend.calls(), 3);
    let p = layer.policies();
    assert_eq!(p.limit().unwrap().in_flight(), 0);
    assert_eq!(
        p.breaker()
            .unwrap()
            .snapshot(p.clock().now())
            .consecutive_failures,
        3,
        "two failed attempts and the timed-out one"
    );
}

#[tokio::test(start_paused = true)]
async fn stack_timeout_is_a_drop_for_an_adaptive_limit() {
    let aimd = Aimd::builder()
        .limits(1, 8, 100)
        .latency_threshold(Duration::from_secs(10))
        .backoff(0.5)
        .build()
        .unwrap();
    let clock = TokioClock::new();
    let limiter = AdaptiveLimiter::new(aimd, WindowConfig::new(ms(50), 1).unwrap(), clock.now());
    let layer = StackLayer::builder()
        .timeout(ms(100))
        .adaptive_limit(limiter)
        .clock(clock)
        .build();
    let mut svc = layer.layer(Backend::new());
    assert!(
        svc.ready()
            .await
            .unwrap()
            .call(Call::Forever)
            .await
            .unwrap_err()
            .is_timeout()
    );
    let limiter = layer.policies().limit().unwrap();
    assert_eq!(
        limiter.limit(),
        4,
        "the timed-out call was reported dropped"
    );
    assert_eq!(limiter.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn stack_retry_waits_out_a_rejection_and_gives_up_before_the_deadline() {
    // The breaker opens on the first failure for 300 ms; the backoff is 10 ms.
    let layer = full_stack(
        Duration::from_secs(1),
        consecutive_breaker(1, ms(300)),
        4,
        Backoff::constant(ms(10)).unwrap().with_max_retries(5),
        budget(1.0, 100),
    );
    let backend = Backend::new();
    let mut svc = layer.layer(backend.clone());
    let started = Instant::now();
    // Fails once (opening the breaker), then the retry waits the 300 ms the
    // rejection asked for instead of 10 ms, and the probe succeeds.
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(Call::FailFirst(1))
            .await
            .unwrap(),
        1
    );
    assert_eq!(started.elapsed(), ms(300));
    assert_eq!(backend.calls(), 2);

    // With a 100 ms deadline, waiting out the rejection is pointless: the
    // rejection comes back at once, saying when to retry, and no more budget
    // is spent.
    let layer = full_stack(
        ms(100),
        consecutive_breaker(1, ms(300)),
        4,
        Backoff::constant(ms(10)).unwrap().with_max_retries(5),
        budget(1.0, 100),
    );
    let mut svc = layer.layer(Backend::new());
    let started = Instant::now();
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(Call::Fail)
        .await
        .unwrap_err();
    assert!(err.is_rejected(), "{err:?}");
    assert_eq!(err.retry_after(), Some(ms(290)));
    assert_eq!(
        started.elapsed(),
        ms(10),
        "one backoff, then the rejection's wait is too long"
    );
    let counts = layer
        .policies()
        .retry()
        .budget()
        .counts(layer.policies().clock().now());
    assert_eq!(counts.withdrawals, 1);
}

#[tokio::test(start_paused = true)]
async fn stack_rate_limit_sits_between_the_breaker_and_the_limit() {
    let clock = TokioClock::new();
    let layer = StackLayer::builder()
        .circuit_breaker(consecutive_breaker(1, Duration::from_secs(10)))
        .rate_limit(RateLimiter::new(
            Quota::per_second(2).unwrap().with_burst(2).unwrap(),
        ))
        .concurrency_limit(Bulkhead::new(4).unwrap())
        .clock(clock)
        .build();
    let backend = Backend::new();
    let mut svc = layer.layer(backend.clone());
    for n in 0..2 {
        assert_eq!(
            svc.ready().await.unwrap().call(Call::Ok(n)).await.unwrap(),
            n
        );
    }
    // The burst is spent: the rate limit refuses, saying when the next
    // token is due, and the limit behind it gave no permit.
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(Call::Ok(3))
        .await
        .unwrap_err();
    assert_eq!(
        err.rejection().map(|r| r.reason()),
        Some(RejectionReason::RateLimited)
    );
    assert_eq!(err.retry_after(), Some(ms(500)));
    let p = layer.policies();
    assert_eq!(p.limit().unwrap().in_flight(), 0);
    assert_eq!(backend.calls(), 2);

    // A token later, a failure opens the breaker; once the burst has come
    // back, the open breaker refuses before the rate limit spends a token.
    tokio::time::advance(ms(500)).await;
    assert!(svc.ready().await.unwrap().call(Call::Fail).await.is_err());
    assert_eq!(p.breaker().unwrap().state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(1)).await;
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(Call::Ok(4))
        .await
        .unwrap_err();
    assert_eq!(
        err.rejection().map(|r| r.reason()),
        Some(RejectionReason::CircuitBreaker(RejectReason::Open))
    );
    assert_eq!(
        p.rate_limit().unwrap().available(clock.now()),
        2,
        "the refused request spent no token"
    );
    assert_eq!(p.limit().unwrap().in_flight(), 0);
    assert_eq!(backend.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn stack_retry_is_admitted_by_the_rate_limit_at_its_own_time() {
    // One token a second: the first attempt spends it and fails; the retry
    // 10 ms later is refused until the next token, waits that out, and is
    // admitted at 1 s (judged at the time it is made, not at the start).
    let layer = StackLayer::builder()
        .retry(RetryPolicy::new(
            Backoff::constant(ms(10)).unwrap().with_max_retries(3),
            budget(1.0, 100),
        ))
        .rate_limit(RateLimiter::new(Quota::per_second(1).unwrap()))
        .build();
    let backend = Backend::new();
    let mut svc = layer.layer(backend.clone());
    let started = Instant::now();
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(Call::FailFirst(1))
            .await
            .unwrap(),
        1
    );
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert_eq!(backend.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn stack_without_retry_takes_requests_that_cannot_be_cloned() {
    struct Unclonable(u32);
    let layer = StackLayer::builder()
        .timeout(Duration::from_secs(1))
        .concurrency_limit(Bulkhead::new(1).unwrap())
        .build();
    let mut svc = layer.layer(tower::service_fn(|req: Unclonable| async move {
        Ok::<_, std::convert::Infallible>(req.0)
    }));
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(Unclonable(9))
            .await
            .unwrap(),
        9
    );
}

#[tokio::test(start_paused = true)]
async fn an_empty_stack_passes_everything_through() {
    let layer = StackLayer::builder().build();
    let mut svc = layer.layer(Backend::new());
    assert_eq!(
        svc.ready().await.unwrap().call(Call::Ok(5)).await.unwrap(),
        5
    );
    assert!(matches!(
        svc.ready().await.unwrap().call(Call::Fail).await,
        Err(TenlivesError::Inner("failed"))
    ));
}
