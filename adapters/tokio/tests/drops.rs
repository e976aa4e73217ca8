//! B5 and K3 through the tower layers: a response future dropped mid-flight
//! (polled once, then dropped before completion) or unwound by a panicking
//! backend gives back every permit, probe slot and in-flight count, for every
//! layer and for the combined stack.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::time::Duration;

use common::{Backend, Call, poll_once, ready_call};
use tenlives_engine::adaptive::{AdaptiveLimiter, Aimd, WindowConfig};
use tenlives_engine::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::rate::{Quota, RateLimiter};
use tenlives_engine::retry::{Backoff, RetryBudget, RetryBudgetConfig};
use tenlives_engine::throttle::{Throttle, ThrottleConfig};
use tenlives_engine::time::{Clock, Timestamp};
use tenlives_tokio::fault::{FaultConfig, FaultLayer};
use tenlives_tokio::{
    AdaptiveLimitLayer, CircuitBreakerLayer, ConcurrencyLimitLayer, RetryLayer, RetryPolicy,
    StackLayer, ThrottleLayer, TimeoutLayer, TokioClock,
};
use tower::{Layer, Service, ServiceExt};

/// A breaker that is half-open with its one probe slot free: the next call
/// takes the slot.
fn half_open_breaker() -> CircuitBreaker {
    let breaker = CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(1))
            .half_open_probes(1)
            .build()
            .unwrap(),
    );
    breaker
        .try_acquire(Timestamp::ZERO)
        .unwrap()
        .failure(Timestamp::ZERO);
    assert_eq!(breaker.state(), BreakerState::Open);
    breaker
}

fn probes_admitted(b: &CircuitBreaker) -> u32 {
    b.snapshot(Timestamp::from_nanos(u64::MAX / 2))
        .probes_admitted
}

fn adaptive() -> AdaptiveLimiter<Aimd> {
    let aimd = Aimd::builder().limits(1, 4, 10).build().unwrap();
    AdaptiveLimiter::new(
        aimd,
        WindowConfig::new(Duration::from_millis(100), 1).unwrap(),
        Timestamp::ZERO,
    )
}

/// Polls the call once (it must be pending), checks `held` says something
/// is held, drops the call, and checks `held` says nothing is.
fn drop_mid_flight<S>(svc: &mut S, call: Call, held: impl Fn() -> u32)
where
    S: Service<Call>,
    S::Error: std::fmt::Debug,
{
    {
        let mut fut = pin!(ready_call(svc, call));
        assert!(poll_once(fut.as_mut()).is_pending());
        assert_eq!(held(), 1, "held while in flight");
    }
    assert_eq!(held(), 0, "given back on drop");
}

/// Polls a call whose backend panics, catching the panic, then drops it.
fn panic_mid_flight<S>(svc: &mut S, held: impl Fn() -> u32)
where
    S: Service<Call>,
    S::Error: std::fmt::Debug,
{
    {
        let mut fut = pin!(ready_call(svc, Call::Panic));
        assert_eq!(held(), 1, "held once called");
        let polled = catch_unwind(AssertUnwindSafe(|| poll_once(fut.as_mut())));
        assert!(polled.is_err(), "the backend panicked");
    }
    assert_eq!(held(), 0, "given back once the unwound future is dropped");
}

#[tokio::test(start_paused = true)]
async fn breaker_probe_slot_is_freed_on_drop_and_panic() {
    let layer = CircuitBreakerLayer::new(half_open_breaker());
    let mut svc = layer.layer(Backend::new());
    tokio::time::advance(Duration::from_secs(1)).await;
    let breaker = layer.policy();
    drop_mid_flight(&mut svc, Call::Forever, || probes_admitted(breaker));
    panic_mid_flight(&mut svc, || probes_admitted(breaker));
    assert_eq!(
        breaker.state(),
        BreakerState::HalfOpen,
        "a dropped probe decides nothing"
    );
    // The slot is free: a probe passes and closes the breaker.
    svc.ready().await.unwrap().call(Call::Ok(1)).await.unwrap();
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn bulkhead_permit_is_freed_on_drop_and_panic() {
    let layer = ConcurrencyLimitLayer::new(Bulkhead::new(1).unwrap());
    let mut svc = layer.layer(Backend::new());
    drop_mid_flight(&mut svc, Call::Forever, || layer.policy().in_flight());
    panic_mid_flight(&mut svc, || layer.policy().in_flight());
}

#[tokio::test(start_paused = true)]
async fn adaptive_permit_is_freed_without_a_sample() {
    let layer = AdaptiveLimitLayer::new(adaptive());
    let mut svc = layer.layer(Backend::new());
    drop_mid_flight(&mut svc, Call::SlowMs(50), || layer.policy().in_flight());
    panic_mid_flight(&mut svc, || layer.policy().in_flight());
    assert_eq!(
        layer.policy().pending_samples(),
        0,
        "no sample from a dropped call"
    );
}

#[tokio::test(start_paused = true)]
async fn throttle_counts_nothing_for_a_dropped_call() {
    let layer = ThrottleLayer::new(Throttle::new(ThrottleConfig::builder().build().unwrap()));
    let mut svc = layer.layer(Backend::new());
    let now = tenlives_tokio::TokioClock::new().now();
    let counted = || u32::try_from(layer.throttle().counts(now).0).unwrap();
    {
        let mut fut = pin!(ready_call(&mut svc, Call::Forever));
        assert!(poll_once(fut.as_mut()).is_pending());
    }
    {
        let mut fut = pin!(ready_call(&mut svc, Call::Panic));
        assert!(catch_unwind(AssertUnwindSafe(|| poll_once(fut.as_mut()))).is_err());
    }
    assert_eq!(counted(), 0);
    svc.ready().await.unwrap().call(Call::Ok(1)).await.unwrap();
    assert_eq!(counted(), 1);
}

#[tokio::test(start_paused = true)]
async fn timeout_and_fault_futures_drop_their_sleeps_and_calls() {
    // Nothing to count but the backend's calls and the timer: dropping a
    // pending timeout (its sleep registered) or a delayed fault must not
    // leave a timer that fires into a dropped future.
    let mut timeout = TimeoutLayer::new(Duration::from_millis(10)).layer(Backend::new());
    {
        let mut fut = pin!(ready_call(&mut timeout, Call::Forever));
        assert!(poll_once(fut.as_mut()).is_pending());
    }
    let faults = FaultConfig::builder()
        .latency(1.0, Duration::from_millis(10))
        .build()
        .unwrap();
    let backend = Backend::new();
    let mut faulty = FaultLayer::new(faults).layer(backend.clone());
    {
        let mut fut = pin!(ready_call(&mut faulty, Call::Panic));
        assert!(
            poll_once(fut.as_mut()).is_pending(),
            "still in the injected delay"
        );
    }
    tokio::time::advance(Duration::from_millis(20)).await;
    assert_eq!(
        backend.calls(),
        1,
        "called, but never polled: the panic never ran"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_future_drops_cleanly_while_waiting_to_retry() {
    let backoff = Backoff::constant(Duration::from_millis(10))
        .unwrap()
        .with_max_retries(3);
    let budget = RetryBudget::new(RetryBudgetConfig::default());
    let layer = RetryLayer::new(RetryPolicy::new(backoff, budget));
    let backend = Backend::new();
    let mut svc = layer.layer(backend.clone());
    {
        let mut fut = pin!(ready_call(&mut svc, Call::Fail));
        assert!(
            poll_once(fut.as_mut()).is_pending(),
            "waiting out the backoff"
        );
    }
    tokio::time::advance(Duration::from_millis(50)).await;
    assert_eq!(backend.calls(), 1, "no retry after the drop");
    // The retry was never sent, so it spent nothing: the budget counts one
    // deposit and no withdrawal (docs/guarantees.md H1).
    let counts = layer.policy().budget().counts(TokioClock::new().now());
    assert_eq!((counts.deposits, counts.withdrawals), (1, 0));
}

fn stack_layer()
-> StackLayer<tenlives_tokio::DefaultClassifier, RetryPolicy, tenlives_tokio::DefaultAdmission> {
    StackLayer::builder()
        .timeout(Duration::from_secs(1))
        .retry(RetryPolicy::new(
            Backoff::constant(Duration::from_millis(10))
                .unwrap()
                .with_max_retries(3),
            RetryBudget::new(RetryBudgetConfig::default()),
        ))
        .circuit_breaker(CircuitBreaker::new(
            BreakerConfig::builder()
                .without_failure_rate()
                .consecutive_failures(1)
                .open_duration(Duration::from_secs(1))
                .half_open_probes(1)
                .build()
                .unwrap(),
        ))
        .rate_limit(RateLimiter::new(Quota::per_second(1_000_000).unwrap()))
        .concurrency_limit(Bulkhead::new(2).unwrap())
        .build()
}

#[tokio::test(start_paused = true)]
async fn stack_gives_everything_back_on_drop_and_panic() {
    let layer = stack_layer();
    let mut svc = layer.layer(Backend::new());
    let p = layer.policies();
    let in_flight = || p.limit().unwrap().in_flight();
    drop_mid_flight(&mut svc, Call::Forever, in_flight);
    panic_mid_flight(&mut svc, in_flight);
    assert_eq!(
        p.breaker().unwrap().state(),
        BreakerState::Closed,
        "nothing was reported"
    );

    // Half-open: the probe slot comes back too.
    p.breaker()
        .unwrap()
        .try_acquire(p.clock().now())
        .unwrap()
        .failure(p.clock().now());
    tokio::time::advance(Duration::from_secs(1)).await;
    let breaker = p.breaker().unwrap();
    let held = || in_flight() + probes_admitted(breaker);
    {
        let mut fut = pin!(ready_call(&mut svc, Call::Forever));
        assert!(poll_once(fut.as_mut()).is_pending());
        assert_eq!(held(), 2, "a permit and the probe slot");
    }
    assert_eq!(held(), 0);
    // Dropped while waiting to retry: nothing is held between attempts.
    {
        let mut fut = pin!(ready_call(&mut svc, Call::SlowFailMs(5)));
        assert!(poll_once(fut.as_mut()).is_pending());
        tokio::time::advance(Duration::from_millis(5)).await;
        assert!(
            poll_once(fut.as_mut()).is_pending(),
            "failed, waiting to retry"
        );
        assert_eq!(in_flight(), 0);
    }
    assert_eq!(in_flight(), 0);
    // No retry of the stack was sent: none was withdrawn.
    let counts = p.retry().budget().counts(p.clock().now());
    assert_eq!(counts.withdrawals, 0, "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn a_task_that_panics_in_the_stack_releases_everything() {
    let layer = stack_layer();
    let svc = layer.layer(Backend::new());
    let task = tokio::spawn(async move {
        let mut svc = svc;
        svc.ready().await.unwrap().call(Call::Panic).await
    });
    let joined = task.await;
    assert!(joined.is_err_and(|e| e.is_panic()));
    assert_eq!(layer.policies().limit().unwrap().in_flight(), 0);
    assert_eq!(
        layer.policies().breaker().unwrap().state(),
        BreakerState::Closed
    );
}
