//! A request through any tenlives layer, or through the whole stack,
//! allocates nothing: a counting global allocator (counting per thread, as in
//! `engine/tests/no_alloc.rs`) sees zero allocations while a current-thread
//! runtime drives thousands of requests through each layer around services
//! that allocate nothing themselves. The requests take every path: admitted
//! and rejected, completing at once and after a `Pending` (so the timeout's
//! sleep is made and registered), failing and retried after a backoff sleep,
//! delayed, failed and dropped by fault injection.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use tenlives_engine::adaptive::{AdaptiveLimiter, Aimd, WindowConfig};
use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::queue::{AdmissionQueue, Overload, QueueConfig};
use tenlives_engine::rate::{Quota, RateLimiter};
use tenlives_engine::retry::{Backoff, RetryBudget, RetryBudgetConfig};
use tenlives_engine::throttle::{Throttle, ThrottleConfig};
use tenlives_engine::time::Timestamp;
use tenlives_tokio::fault::{FaultConfig, FaultLayer};
use tenlives_tokio::{
    AdaptiveLimitLayer, AdmissionQueueLayer, CircuitBreakerLayer, ConcurrencyLimitLayer,
    RetryLayer, RetryPolicy, StackLayer, ThrottleLayer, TimeoutLayer,
};
use tower::{Layer, Service, ServiceExt};

use std::cell::Cell;

use tenlives_test_support::{CountingAllocator, allocations};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// What the test services do with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Answer at once.
    Ready,
    /// Return `Pending` once (waking at once), then answer.
    PendingOnce,
    /// Fail every other call (so a retry of a failed call succeeds).
    FailEveryOther,
}

/// A service that allocates nothing. Clones share the call counter (an `Rc`,
/// whose clone does not allocate).
#[derive(Clone)]
struct Quiet {
    mode: Mode,
    calls: Rc<Cell<u64>>,
}

impl Quiet {
    fn new(mode: Mode) -> Self {
        Quiet {
            mode,
            calls: Rc::new(Cell::new(0)),
        }
    }
}

/// The answer, after `pending` returns of `Pending`.
struct Answer {
    pending: u8,
    result: Result<u64, &'static str>,
}

impl Future for Answer {
    type Output = Result<u64, &'static str>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.pending > 0 {
            self.pending -= 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(self.result)
    }
}

impl Service<u64> for Quiet {
    type Response = u64;
    type Error = &'static str;
    type Future = Answer;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Answer {
        let n = self.calls.get();
        self.calls.set(n + 1);
        match self.mode {
            Mode::Ready => Answer {
                pending: 0,
                result: Ok(req),
            },
            Mode::PendingOnce => Answer {
                pending: 1,
                result: Ok(req),
            },
            Mode::FailEveryOther => Answer {
                pending: 0,
                result: if n.is_multiple_of(2) {
                    Err("even")
                } else {
                    Ok(req)
                },
            },
        }
    }
}

/// Allocations made while `requests` requests go through `svc` one after
/// another, after 50 warm-up requests (the first uses of a thread's stripe
/// and of the timer wheel may allocate once).
async fn allocations_for<S>(svc: &mut S, requests: u64) -> usize
where
    S: Service<u64>,
{
    for i in 0..50 {
        let _ = svc.ready().await.ok().expect("ready").call(i).await;
    }
    let before = allocations();
    for i in 0..requests {
        let ready = svc.ready().await;
        let _ = std::hint::black_box(ready.ok().expect("ready").call(i).await);
    }
    allocations() - before
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

fn breaker() -> CircuitBreaker {
    CircuitBreaker::new(
        BreakerConfig::builder()
            .failure_rate(50.0)
            .minimum_calls(10)
            .open_duration(Duration::from_millis(5))
            .build()
            .unwrap(),
    )
}

fn retry_policy() -> RetryPolicy {
    RetryPolicy::new(
        Backoff::decorrelated_jitter(Duration::from_millis(1), Duration::from_millis(10))
            .unwrap()
            .with_max_retries(3),
        RetryBudget::new(RetryBudgetConfig::default()),
    )
}

fn full_stack()
-> StackLayer<tenlives_tokio::DefaultClassifier, RetryPolicy, tenlives_tokio::DefaultAdmission> {
    StackLayer::builder()
        .timeout(Duration::from_secs(1))
        .retry(retry_policy())
        .circuit_breaker(breaker())
        .rate_limit(RateLimiter::new(Quota::per_second(1_000_000).unwrap()))
        .concurrency_limit(Bulkhead::new(100).unwrap())
        .build()
}

#[test]
fn every_layer_and_the_stack_allocate_nothing_per_request() {
    runtime().block_on(async {
        const N: u64 = 2_000;
        let mut results = Vec::new();

        for mode in [Mode::Ready, Mode::PendingOnce, Mode::FailEveryOther] {
            // Each layer gets its own service (and counter) so that modes don't mix.
            let mut breaker = CircuitBreakerLayer::new(breaker()).layer(Quiet::new(mode));
            results.push(("breaker", mode, allocations_for(&mut breaker, N).await));

            let mut bulkhead =
                ConcurrencyLimitLayer::new(Bulkhead::new(4).unwrap()).layer(Quiet::new(mode));
            results.push(("bulkhead", mode, allocations_for(&mut bulkhead, N).await));

            let aimd = Aimd::builder().build().unwrap();
            let window = WindowConfig::new(Duration::from_micros(1), 1).unwrap();
            let mut adaptive =
                AdaptiveLimitLayer::new(AdaptiveLimiter::new(aimd, window, Timestamp::ZERO))
                    .layer(Quiet::new(mode));
            results.push(("adaptive", mode, allocations_for(&mut adaptive, N).await));

            let throttle = Throttle::new(
                ThrottleConfig::builder()
                    .minimum_requests(5)
                    .build()
                    .unwrap(),
            );
            let mut throttled = ThrottleLayer::new(throttle).layer(Quiet::new(mode));
            results.push(("throttle", mode, allocations_for(&mut throttled, N).await));

            let mut timeout = TimeoutLayer::new(Duration::from_secs(1)).layer(Quiet::new(mode));
            results.push(("timeout", mode, allocations_for(&mut timeout, N).await));

            let mut retry = RetryLayer::new(retry_policy()).layer(Quiet::new(mode));
            results.push(("retry", mode, allocations_for(&mut retry, N).await));

            let faults = FaultConfig::builder()
                .latency(0.3, Duration::from_millis(1))
                .error(0.1)
                .connection_drop(0.1)
                .seed(5)
                .build()
                .unwrap();
            let mut faulty = FaultLayer::new(faults).layer(Quiet::new(mode));
            results.push(("fault", mode, allocations_for(&mut faulty, N).await));

            let mut stack = full_stack().layer(Quiet::new(mode));
            results.push(("stack", mode, allocations_for(&mut stack, N).await));
        }

        let allocating: Vec<_> = results.iter().filter(|r| r.2 != 0).collect();
        assert!(
            allocating.is_empty(),
            "allocations per {N} requests: {allocating:?}"
        );
    });
}

#[test]
fn rejections_allocate_nothing() {
    runtime().block_on(async {
        // A bulkhead of one with a call held open rejects every request.
        let layer = ConcurrencyLimitLayer::new(Bulkhead::new(1).unwrap());
        let mut svc = layer.layer(Quiet::new(Mode::Ready));
        let mut held = layer.layer(Quiet::new(Mode::Ready));
        let _open = held.ready().await.ok().unwrap().call(0);
        assert_eq!(allocations_for(&mut svc, 2_000).await, 0);

        // A breaker forced open in the stack rejects; the retries sleep on
        // the timer until the budget is spent.
        let stack = full_stack();
        let p = stack.policies();
        p.breaker().unwrap().force_open(Timestamp::ZERO);
        let mut svc = stack.layer(Quiet::new(Mode::Ready));
        assert_eq!(allocations_for(&mut svc, 2_000).await, 0);
    });
}

/// The admission-queue layer: requests granted at once (through
/// `allocations_for`), and rounds of concurrent requests around one permit
/// in which one runs while others wait for it (woken through their slots,
/// with their deadline timers made and registered), are shed, time out, or
/// are dropped after their grant. Neither path allocates.
#[test]
fn the_admission_queue_layer_allocates_nothing_per_request() {
    runtime().block_on(async {
        const N: u64 = 2_000;
        let queue_layer = |overload| {
            let config = QueueConfig::fifo(1).unwrap().overload(overload);
            AdmissionQueueLayer::new(
                AdmissionQueue::new(Bulkhead::new(1).unwrap(), config),
                Duration::from_millis(5),
            )
        };
        for mode in [Mode::Ready, Mode::PendingOnce] {
            let mut svc = queue_layer(Overload::ShedNewest).layer(Quiet::new(mode));
            assert_eq!(allocations_for(&mut svc, N).await, 0, "{mode:?}");
        }

        let layer = queue_layer(Overload::ShedOldest);
        let mut svc = layer.layer(Quiet::new(Mode::PendingOnce));
        for i in 0..50 {
            waiting_round(&mut svc, i).await;
        }
        let before = allocations();
        for i in 0..N {
            waiting_round(&mut svc, i).await;
        }
        assert_eq!(allocations() - before, 0);
        assert_eq!(layer.queue().source().in_flight(), 0);
        assert_eq!(layer.queue().waiting(), 0);
    });
}

/// Polls `fut` once with the task's waker.
async fn poll_here<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
    let mut fut = Some(fut);
    std::future::poll_fn(|cx| Poll::Ready(fut.take().map(|f| f.poll(cx))))
        .await
        .unwrap_or(Poll::Pending)
}

/// One round through an admission-queue layer of one permit and room for
/// one waiter, shedding the oldest (see the test above).
async fn waiting_round<S>(svc: &mut S, i: u64)
where
    S: Service<u64>,
    S::Error: std::fmt::Debug,
{
    // Granted at once, then waiting and shed by a newcomer, which waits and
    // is granted when the first completes.
    let first = svc.ready().await.expect("ready").call(i);
    let mut shed = std::pin::pin!(svc.ready().await.expect("ready").call(i));
    assert!(poll_here(shed.as_mut()).await.is_pending());
    let third = svc.ready().await.expect("ready").call(i);
    let (a, b, c) = tokio::join!(first, shed, third);
    assert!(a.is_ok() && b.is_err() && c.is_ok());

    let held = svc.ready().await.expect("ready").call(i);
    let mut waits = std::pin::pin!(svc.ready().await.expect("ready").call(i));
    assert!(poll_here(waits.as_mut()).await.is_pending());
    if i.is_multiple_of(2) {
        // `held` never runs: dropping it hands the permit to `waits`, which
        // is dropped after its grant and before it looks.
        drop(held);
    } else {
        // `held` keeps its permit: `waits` times out on its timer.
        assert!(waits.await.is_err());
        drop(held);
    }
}

/// The hedging layer: a request that arms the hedge delay on the timer
/// wheel and one that sends its hedge at once (zero delay), whose loser is
/// dropped, on a fixed delay and on a latency quantile, allocate nothing
/// (the service and the request clone without allocating).
#[test]
fn the_hedge_layer_allocates_nothing_per_request() {
    use std::sync::Arc;

    use tenlives_engine::latency::LatencyTracker;
    use tenlives_tokio::hedge::{HedgeDelay, HedgeLayer, HedgePolicy};

    runtime().block_on(async {
        const N: u64 = 2_000;
        let mut results = Vec::new();
        for mode in [Mode::Ready, Mode::PendingOnce, Mode::FailEveryOther] {
            for delay_ms in [0, 1] {
                let budget = Arc::new(RetryBudget::new(RetryBudgetConfig::default()));
                let fixed = HedgeDelay::fixed(Duration::from_millis(delay_ms));
                let layer = HedgeLayer::new(HedgePolicy::new(fixed, budget, |_: &u64| true));
                let mut svc = layer.layer(Quiet::new(mode));
                results.push(("fixed", mode, delay_ms, allocations_for(&mut svc, N).await));

                let budget = Arc::new(RetryBudget::new(RetryBudgetConfig::default()));
                let tracker = LatencyTracker::new(0.9, 100, 10).unwrap();
                let d = Duration::from_millis(delay_ms);
                let quantile = HedgeDelay::quantile(tracker, d, d, d);
                let layer = HedgeLayer::new(HedgePolicy::new(quantile, budget, |_: &u64| true))
                    .with_max_attempts::<3>();
                let mut svc = layer.layer(Quiet::new(mode));
                results.push((
                    "quantile",
                    mode,
                    delay_ms,
                    allocations_for(&mut svc, N).await,
                ));
                if delay_ms == 0 && mode == Mode::PendingOnce {
                    assert!(layer.stats().hedges > 0, "hedges were sent");
                }
            }
        }
        let allocating: Vec<_> = results.iter().filter(|r| r.3 != 0).collect();
        assert!(
            allocating.is_empty(),
            "allocations per {N} requests: {allocating:?}"
        );
    });
}

/// The fallback layer, answering with a value or with another service for
/// every failure, and passing successes: nothing allocated.
#[test]
fn the_fallback_layer_allocates_nothing_per_request() {
    use tenlives_tokio::fallback::{FallbackLayer, FallbackService, FallbackValue};

    runtime().block_on(async {
        const N: u64 = 2_000;
        let mut results = Vec::new();
        for mode in [Mode::Ready, Mode::PendingOnce, Mode::FailEveryOther] {
            let value = FallbackLayer::new(
                |_: &&'static str| true,
                FallbackValue::new(|_: &'static str| Ok::<u64, &'static str>(0)),
            );
            let mut svc = value.layer(Quiet::new(mode));
            results.push(("value", mode, allocations_for(&mut svc, N).await));

            let other =
                tower::util::MapRequest::new(Quiet::new(mode), |(req, _): (u64, &'static str)| req);
            let service = FallbackLayer::new(|_: &&'static str| true, FallbackService::new(other));
            let mut svc = service.layer(Quiet::new(mode));
            results.push(("service", mode, allocations_for(&mut svc, N).await));
            if mode == Mode::FailEveryOther {
                assert!(value.taken() > 0 && service.taken() > 0);
            }
        }
        let allocating: Vec<_> = results.iter().filter(|r| r.2 != 0).collect();
        assert!(
            allocating.is_empty(),
            "allocations per {N} requests: {allocating:?}"
        );
    });
}

/// A service that fails or succeeds as its switch says, after one
/// `Pending` (so that a scout is in flight while another request holds).
#[derive(Clone)]
struct Switch {
    fail: Rc<Cell<bool>>,
}

impl Service<u64> for Switch {
    type Response = u64;
    type Error = &'static str;
    type Future = Answer;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Answer {
        Answer {
            pending: 1,
            result: if self.fail.get() {
                Err("down")
            } else {
                Ok(req)
            },
        }
    }
}

/// The stack's hold for the breaker's answer: rounds in which the breaker
/// opens, a scout goes, and a request refused meanwhile is held (its slot
/// taken, its waker registered, its wheel entry set) until the scout's
/// answer admits it (a success) or refuses it (a failure), or is dropped
/// while held. None of it allocates.
#[test]
fn the_stacks_hold_allocates_nothing_per_request() {
    runtime().block_on(async {
        let breaker = CircuitBreaker::new(
            BreakerConfig::builder()
                .without_failure_rate()
                .consecutive_failures(1)
                .open_duration(Duration::from_millis(5))
                .probe_every(Duration::from_millis(5))
                .half_open_probes(1)
                .build()
                .unwrap(),
        );
        let layer = StackLayer::builder()
            .timeout(Duration::from_secs(1))
            .retry(retry_policy().retry_if(|_: &Result<u64, _>| false))
            .hold_for_breaker(Duration::from_millis(50), 4)
            .unwrap()
            .circuit_breaker(breaker)
            .concurrency_limit(Bulkhead::new(8).unwrap())
            .build();
        let fail = Rc::new(Cell::new(true));
        let mut svc = layer.layer(Switch { fail: fail.clone() });
        let mut round = async |i: u64| {
            // Opens the breaker.
            fail.set(true);
            assert!(svc.ready().await.ok().unwrap().call(i).await.is_err());
            tokio::time::sleep(Duration::from_millis(5)).await;
            // The scout (admitted in `call`), then a request refused and held.
            fail.set(i % 3 == 1);
            let scout = svc.ready().await.ok().unwrap().call(i);
            let mut held = std::pin::pin!(Some(svc.ready().await.ok().unwrap().call(i)));
            let first = poll_here(held.as_mut().as_pin_mut().unwrap()).await;
            assert!(first.is_pending());
            assert_eq!(layer.policies().held(), 1);
            if i % 3 == 2 {
                held.set(None);
                assert_eq!(layer.policies().held(), 0, "the slot came back on drop");
                assert!(scout.await.is_ok());
            } else {
                let held = held.as_pin_mut().unwrap();
                let (a, b) = tokio::join!(scout, held);
                assert_eq!(a.is_ok(), i.is_multiple_of(3));
                assert_eq!(
                    b.is_ok(),
                    i.is_multiple_of(3),
                    "admitted after a success only"
                );
            }
            assert_eq!(layer.policies().held(), 0);
        };
        for i in 0..30 {
            round(i).await;
        }
        let before = allocations();
        for i in 0..300 {
            round(i).await;
        }
        assert_eq!(allocations() - before, 0);
        assert_eq!(layer.policies().probes_in_flight(), 0);
    });
}
