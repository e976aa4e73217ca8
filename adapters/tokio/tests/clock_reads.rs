//! How often a request reads the clock: at most once for admission and once
//! at completion where a policy needs the time, and not at all where no
//! decision needs it. Each layer here reads a counting clock
//! (`TokioClock::from_source`); the inner service returns `Pending` once
//! before it answers, so that a timeout is armed.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::queue::{AdmissionQueue, QueueConfig};
use tenlives_engine::rate::{Quota, RateLimiter};
use tenlives_engine::time::{Clock, Timestamp, TscClock};
use tenlives_tokio::{AdmissionQueueLayer, StackBuilder, StackLayer, TokioClock};
use tower::{Layer, Service, ServiceExt};

/// A real clock that counts its readings.
struct Counting {
    inner: TscClock,
    reads: AtomicU64,
}

impl Clock for Counting {
    fn now(&self) -> Timestamp {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.now()
    }
}

fn counting() -> (&'static Counting, TokioClock) {
    let clock: &'static Counting = Box::leak(Box::new(Counting {
        inner: TscClock::new(),
        reads: AtomicU64::new(0),
    }));
    (clock, TokioClock::from_source(clock))
}

impl Counting {
    fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

/// Answers after one `Pending`.
#[derive(Clone, Copy)]
struct PendingOnce;

struct Answer(bool);

impl Future for Answer {
    type Output = Result<u32, &'static str>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.0 {
            return Poll::Ready(Ok(1));
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Service<u32> for PendingOnce {
    type Response = u32;
    type Error = &'static str;
    type Future = Answer;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: u32) -> Answer {
        Answer(false)
    }
}

/// Clock readings per request over `n` requests through `svc`.
async fn reads_per_request<S>(clock: &Counting, svc: &mut S, n: u64) -> f64
where
    S: Service<u32>,
    S::Error: std::fmt::Debug,
{
    let before = clock.reads();
    for _ in 0..n {
        svc.ready().await.unwrap().call(0).await.unwrap();
    }
    (clock.reads() - before) as f64 / n as f64
}

/// Clock readings per request over 100 requests through a stack on a
/// counting clock, with the policies `policies` adds.
async fn stack_reads(policies: impl FnOnce(StackBuilder) -> StackBuilder) -> f64 {
    let (clock, source) = counting();
    let mut svc = policies(StackLayer::builder().clock(source))
        .build()
        .layer(PendingOnce);
    reads_per_request(clock, &mut svc, 100).await
}

fn count_breaker() -> CircuitBreaker {
    CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(5)
            .build()
            .unwrap(),
    )
}

#[tokio::test(flavor = "current_thread")]
async fn a_stack_reads_the_clock_only_where_a_decision_needs_it() {
    // Nothing that needs the time: no reading at all.
    let reads = stack_reads(|b| b.concurrency_limit(Bulkhead::new(8).unwrap())).await;
    assert_eq!(reads, 0.0);

    // A timeout (armed: the call is pending once), a breaker on
    // consecutive failures and a bulkhead: one reading, at the call.
    let reads = stack_reads(|b| {
        b.timeout(Duration::from_secs(5))
            .circuit_breaker(count_breaker())
            .concurrency_limit(Bulkhead::new(8).unwrap())
    })
    .await;
    assert_eq!(reads, 1.0);

    // A rate limit needs the time to admit, not at the end: one reading.
    let reads = stack_reads(|b| {
        b.timeout(Duration::from_secs(5))
            .rate_limit(RateLimiter::new(Quota::per_second(1_000_000).unwrap()))
    })
    .await;
    assert_eq!(reads, 1.0);

    // A breaker on a failure rate over a time window (the default) counts
    // each call in the bucket of its end: a second reading.
    let reads = stack_reads(|b| {
        b.timeout(Duration::from_secs(5))
            .circuit_breaker(CircuitBreaker::new(BreakerConfig::default()))
    })
    .await;
    assert_eq!(reads, 2.0);

    // A slow-call rule judges the call's length: a second reading at its end.
    let slow = CircuitBreaker::new(
        BreakerConfig::builder()
            .slow_calls(50.0, Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    let reads = stack_reads(|b| b.timeout(Duration::from_secs(5)).circuit_breaker(slow)).await;
    assert_eq!(reads, 2.0);
}

fn retry_policy() -> tenlives_tokio::RetryPolicy {
    use tenlives_engine::retry::{Backoff, RetryBudget, RetryBudgetConfig};
    tenlives_tokio::RetryPolicy::new(
        Backoff::exponential(Duration::from_millis(10), 2.0, Duration::from_secs(1))
            .unwrap()
            .with_max_retries(3),
        RetryBudget::new(RetryBudgetConfig::default()),
    )
}

/// The full stack, every stage on (timeout armed, retry with a budget,
/// breaker, rate limit, concurrency limit): one reading per request, shared
/// by the budget's deposit, the deadline, the rate limit and the breaker;
/// two with the default breaker, which counts each call at its end.
#[tokio::test(flavor = "current_thread")]
async fn the_full_stack_reads_the_clock_once_per_request() {
    let full = |breaker: CircuitBreaker| {
        move |b: StackBuilder| {
            b.timeout(Duration::from_secs(5))
                .retry(retry_policy())
                .circuit_breaker(breaker)
                .rate_limit(RateLimiter::new(Quota::per_second(1_000_000).unwrap()))
                .concurrency_limit(Bulkhead::new(8).unwrap())
        }
    };
    let (clock, source) = counting();
    let mut svc = full(count_breaker())(StackLayer::builder().clock(source))
        .build()
        .layer(PendingOnce);
    assert_eq!(reads_per_request(clock, &mut svc, 100).await, 1.0);

    let (clock, source) = counting();
    let mut svc =
        full(CircuitBreaker::new(BreakerConfig::default()))(StackLayer::builder().clock(source))
            .build()
            .layer(PendingOnce);
    assert_eq!(reads_per_request(clock, &mut svc, 100).await, 2.0);
}

/// The stand-alone timeout and retry layers read the clock once per request
/// each (the deadline; the budget's deposit), armed timer or not.
#[tokio::test(flavor = "current_thread")]
async fn the_timeout_and_retry_layers_read_the_clock_once() {
    let (clock, source) = counting();
    let mut svc =
        tenlives_tokio::TimeoutLayer::with_clock(Duration::from_secs(5), source).layer(PendingOnce);
    assert_eq!(reads_per_request(clock, &mut svc, 100).await, 1.0);

    let (clock, source) = counting();
    let mut svc = tenlives_tokio::RetryLayer::with_clock(retry_policy(), source).layer(PendingOnce);
    assert_eq!(reads_per_request(clock, &mut svc, 100).await, 1.0);
}

/// A breaker layer alone around `PendingOnce`, on a counting clock.
fn breaker_layer(
    breaker: CircuitBreaker,
) -> (
    &'static Counting,
    impl Service<u32, Response = u32, Error = tenlives_tokio::TenlivesError<&'static str>>,
) {
    let (clock, source) = counting();
    let layer = tenlives_tokio::CircuitBreakerLayer::with_classifier(
        breaker,
        tenlives_tokio::DefaultClassifier,
        source,
    );
    (clock, layer.layer(PendingOnce))
}

/// Clock readings per request through a breaker layer alone.
async fn breaker_layer_reads(breaker: CircuitBreaker, n: u64) -> f64 {
    let (clock, mut svc) = breaker_layer(breaker);
    reads_per_request(clock, &mut svc, n).await
}

#[tokio::test(flavor = "current_thread")]
async fn a_breaker_layer_reads_the_clock_only_where_a_rule_needs_it() {
    // Closed, consecutive failures only: a success needs no time, and
    // neither does the admission.
    assert_eq!(breaker_layer_reads(count_breaker(), 100).await, 0.0);
    // A failure rate over a time window: the end time finds the bucket.
    let default = CircuitBreaker::new(BreakerConfig::default());
    assert_eq!(breaker_layer_reads(default, 100).await, 1.0);
    // A slow-call rule measures the call: at admission and at the end.
    let slow = CircuitBreaker::new(
        BreakerConfig::builder()
            .slow_calls(50.0, Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    assert_eq!(breaker_layer_reads(slow, 100).await, 2.0);
    // Open: the admission reads the time to know whether the open period
    // is over (and refuses; nothing is read at an end that never comes).
    let open = count_breaker();
    open.force_open(Timestamp::ZERO);
    let (clock, mut svc) = breaker_layer(open);
    let before = clock.reads(); // the layer's clock reads once when made
    for _ in 0..10 {
        let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
        assert!(err.is_rejected());
    }
    assert_eq!(clock.reads() - before, 10);
}

#[tokio::test(flavor = "current_thread")]
async fn the_queue_layer_reads_the_clock_only_for_a_request_that_waits() {
    let (clock, source) = counting();
    let layer = AdmissionQueueLayer::new(
        AdmissionQueue::new(Bulkhead::new(1).unwrap(), QueueConfig::fifo(4).unwrap()),
        Duration::from_secs(5),
    )
    .with_clock(source);
    // Granted at once: no reading.
    let mut svc = layer.layer(PendingOnce);
    assert_eq!(reads_per_request(clock, &mut svc, 100).await, 0.0);

    // One request holds the permit, a second waits: one reading, for the
    // second's deadline.
    let before = clock.reads();
    let first = svc.ready().await.unwrap().call(0);
    let second = svc.ready().await.unwrap().call(0);
    let (a, b) = tokio::join!(first, second);
    assert!(a.is_ok() && b.is_ok());
    assert_eq!(clock.reads() - before, 1);
}

#[test]
fn a_policy_behind_a_reference_or_an_arc_needs_the_time_as_the_policy_does() {
    use tenlives_engine::breaker::Outcome;
    use tenlives_tokio::Admission;
    fn needs<A: Admission>(a: &A) -> (bool, bool) {
        let (token, _) = a.admit_with(|| Timestamp::ZERO).expect("closed");
        let needs = (
            a.needs_time_to_complete(&token, Outcome::Success),
            a.needs_time_to_complete(&token, Outcome::Failure),
        );
        a.release(token);
        needs
    }
    let breaker = count_breaker();
    assert_eq!(needs(&breaker), (false, true));
    assert_eq!(needs(&&breaker), (false, true));
    assert_eq!(needs(&std::sync::Arc::new(count_breaker())), (false, true));
}

/// Clock readings per request over `n` requests through `svc`, whatever
/// they answer (refusals included).
async fn reads_per_answer<S>(clock: &Counting, svc: &mut S, n: u64) -> f64
where
    S: Service<u32>,
    S::Error: std::fmt::Debug,
{
    let before = clock.reads();
    for _ in 0..n {
        let _ = svc.ready().await.unwrap().call(0).await;
    }
    (clock.reads() - before) as f64 / n as f64
}

/// A stack with the policies `policies` adds, on a counting clock.
fn stack_on(
    policies: impl FnOnce(StackBuilder) -> StackBuilder,
) -> (&'static Counting, tenlives_tokio::Stack<PendingOnce>) {
    let (clock, source) = counting();
    let svc = policies(StackLayer::builder().clock(source))
        .build()
        .layer(PendingOnce);
    (clock, svc)
}

/// A stack without a timeout or retries reads the clock at admission only
/// where a stage decides with the time, once however many do; with a
/// timeout, once (the deadline's reading serves the stages).
#[tokio::test(flavor = "current_thread")]
async fn a_stack_reads_the_clock_at_admission_only_where_a_stage_decides_with_it() {
    let bulkhead = || Bulkhead::new(8).unwrap();
    let rate = || RateLimiter::new(Quota::per_second(1_000_000).unwrap());
    // A closed breaker on consecutive failures and a limit: no reading.
    let (clock, mut svc) = stack_on(|b| {
        b.circuit_breaker(count_breaker())
            .concurrency_limit(bulkhead())
    });
    assert_eq!(reads_per_answer(clock, &mut svc, 100).await, 0.0);

    // The same breaker open (for an hour): one reading, its refusal.
    let open = CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(3600))
            .build()
            .unwrap(),
    );
    let (clock, mut svc) = stack_on(|b| b.circuit_breaker(open).concurrency_limit(bulkhead()));
    let breaker = svc.policies().breaker().unwrap();
    let now = svc.policies().clock().now();
    breaker.try_acquire(now).unwrap().failure(now);
    let refused = svc.ready().await.unwrap().call(0).await.unwrap_err();
    assert!(refused.is_rejected());
    assert_eq!(reads_per_answer(clock, &mut svc, 100).await, 1.0);

    // A rate limit behind the closed breaker: one reading, the limit's.
    let (clock, mut svc) = stack_on(|b| {
        b.circuit_breaker(count_breaker())
            .rate_limit(rate())
            .concurrency_limit(bulkhead())
    });
    assert_eq!(reads_per_answer(clock, &mut svc, 100).await, 1.0);

    // A slow-call rule and a rate limit both decide with the time: one
    // reading shared at admission, one at the end for the call's length.
    let slow = CircuitBreaker::new(
        BreakerConfig::builder()
            .slow_calls(50.0, Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    let (clock, mut svc) = stack_on(|b| b.circuit_breaker(slow).rate_limit(rate()));
    assert_eq!(reads_per_answer(clock, &mut svc, 100).await, 2.0);

    // With a timeout: the deadline's reading, and no other.
    let (clock, mut svc) = stack_on(|b| {
        b.timeout(Duration::from_secs(5))
            .circuit_breaker(count_breaker())
            .rate_limit(rate())
            .concurrency_limit(bulkhead())
    });
    assert_eq!(reads_per_answer(clock, &mut svc, 100).await, 1.0);
}

/// A chain of stages behind one admission layer shares one reading.
#[tokio::test(flavor = "current_thread")]
async fn a_chain_reads_the_clock_once_and_only_where_a_stage_decides_with_it() {
    use tenlives_tokio::{AdmissionLayer, DefaultClassifier};
    let (clock, source) = counting();
    let layer = AdmissionLayer::with_classifier(
        (count_breaker(), Bulkhead::new(8).unwrap()),
        DefaultClassifier,
        source,
    );
    let mut svc = layer.layer(PendingOnce);
    assert_eq!(reads_per_answer(clock, &mut svc, 100).await, 0.0);

    let (clock, source) = counting();
    let slow = CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .slow_calls(50.0, Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    let layer = AdmissionLayer::with_classifier(
        (
            slow,
            RateLimiter::new(Quota::per_second(1_000_000).unwrap()),
            Bulkhead::new(8).unwrap(),
        ),
        DefaultClassifier,
        source,
    );
    let mut svc = layer.layer(PendingOnce);
    // Admission: one reading for the breaker and the rate limit; the end:
    // one for the slow-call rule.
    assert_eq!(reads_per_answer(clock, &mut svc, 100).await, 2.0);
}
