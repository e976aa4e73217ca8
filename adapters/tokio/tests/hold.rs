//! The stack's hold for the breaker's answer
//! (`StackBuilder::hold_for_breaker`), on tokio's paused clock: a request
//! the breaker refuses while a scout is coming waits for the scout's
//! outcome, and is admitted when it closes the breaker, refused when it
//! fails, refused at the hold's bound; a held request dropped, or a scout
//! whose service panics, leaves nothing behind; the cap bounds how many wait.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tenlives_engine::breaker::{
    BreakerConfig, BreakerConfigBuilder, BreakerState, CircuitBreaker, RejectReason,
};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::retry::{Backoff, RetryBudget, RetryBudgetConfig};
use tenlives_engine::time::Clock;
use tenlives_tokio::{RejectionReason, RetryPolicy, Stack, StackLayer, TenlivesError};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// What the upstream does with the next calls.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Fails at once.
    Down,
    /// Succeeds after this long.
    Up(Duration),
    /// Fails after this long.
    FailAfter(Duration),
    /// Answers after a minute.
    Stall,
    /// The call's future panics when first polled.
    Panic,
}

#[derive(Clone)]
struct Upstream {
    mode: Arc<Mutex<Mode>>,
    calls: Arc<AtomicU32>,
}

impl Upstream {
    fn new(mode: Mode) -> Self {
        Upstream {
            mode: Arc::new(Mutex::new(mode)),
            calls: Arc::new(AtomicU32::new(0)),
        }
    }
    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }
    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

type Answer = Pin<Box<dyn Future<Output = Result<u32, &'static str>> + Send>>;

impl Service<u32> for Upstream {
    type Response = u32;
    type Error = &'static str;
    type Future = Answer;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, x: u32) -> Answer {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mode = *self.mode.lock().unwrap();
        Box::pin(async move {
            match mode {
                Mode::Down => Err("down"),
                Mode::Up(after) => {
                    tokio::time::sleep(after).await;
                    Ok(x)
                }
                Mode::FailAfter(after) => {
                    tokio::time::sleep(after).await;
                    Err("failed")
                }
                Mode::Stall => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok(x)
                }
                Mode::Panic => panic!("the upstream's call panicked"),
            }
        })
    }
}

fn never(_: &Result<u32, TenlivesError<&'static str>>) -> bool {
    false
}

type Never = fn(&Result<u32, TenlivesError<&'static str>>) -> bool;
type Svc = Stack<
    Upstream,
    tenlives_tokio::DefaultClassifier,
    RetryPolicy<Never>,
    (
        Option<CircuitBreaker>,
        Option<tenlives_engine::rate::RateLimiter>,
        Option<Bulkhead>,
    ),
>;

/// A breaker that opens at the first failure for 100 ms and then scouts
/// every 50 ms (the probes of its half-open state left to the caller).
fn scouting_config() -> BreakerConfigBuilder {
    BreakerConfig::builder()
        .without_failure_rate()
        .consecutive_failures(1)
        .open_duration(ms(100))
        .probe_every(ms(50))
}

/// The scouting breaker whose one probe (a scout's success) closes it.
fn scouting_breaker() -> CircuitBreaker {
    CircuitBreaker::new(scouting_config().half_open_probes(1).build().unwrap())
}

/// A retry policy on `backoff` with the default budget.
fn retry_on(backoff: Backoff) -> RetryPolicy {
    RetryPolicy::new(backoff, RetryBudget::new(RetryBudgetConfig::default()))
}

/// One retry, `after` the first attempt.
fn one_retry_after(after: Duration) -> Backoff {
    Backoff::constant(after).unwrap().with_max_retries(1)
}

/// The retry stage of the holding stacks: it keeps the request's clones
/// (the hold needs them) but never retries.
fn never_retrying() -> RetryPolicy<Never> {
    retry_on(one_retry_after(ms(10))).retry_if(never as Never)
}

/// A stack with the scouting breaker, a concurrency limit of 8, a timeout
/// of 1 s, no retries, holding refusals up to `hold` (at most `cap` at
/// once).
fn stack(upstream: &Upstream, hold: Duration, cap: usize) -> Svc {
    StackLayer::builder()
        .timeout(Duration::from_secs(1))
        .retry(never_retrying())
        .hold_for_breaker(hold, cap)
        .unwrap()
        .circuit_breaker(scouting_breaker())
        .concurrency_limit(Bulkhead::new(8).unwrap())
        .build()
        .layer(upstream.clone())
}

/// Opens the breaker with a failed call; returns when it opened.
async fn trip(svc: &mut Svc, upstream: &Upstream) -> Instant {
    upstream.set(Mode::Down);
    let err = svc.ready().await.unwrap().call(0).await.unwrap_err();
    assert_eq!(err.inner(), Some(&"down"));
    assert_eq!(breaker(svc).state(), BreakerState::Open);
    Instant::now()
}

fn breaker(svc: &Svc) -> &CircuitBreaker {
    svc.policies().breaker().unwrap()
}

type Call = tokio::task::JoinHandle<(Result<u32, TenlivesError<&'static str>>, Duration)>;

/// Sends a request on a task of its own; it answers with its latency.
fn send(svc: &Svc, x: u32) -> Call {
    let mut svc = svc.clone();
    tokio::spawn(async move {
        let start = Instant::now();
        let result = svc.ready().await.unwrap().call(x).await;
        (result, start.elapsed())
    })
}

fn assert_breaker_refusal(result: &Result<u32, TenlivesError<&'static str>>) {
    match result {
        Err(TenlivesError::Rejected(r)) => assert!(
            matches!(
                r.reason(),
                RejectionReason::CircuitBreaker(RejectReason::Open)
            ),
            "{r:?}"
        ),
        other => panic!("expected the breaker's refusal, got {other:?}"),
    }
}

/// Nothing is left: no held request, no probe counted, no permit.
fn assert_clean(svc: &Svc) {
    let p = svc.policies();
    assert_eq!(p.held(), 0, "held requests left");
    assert_eq!(p.probes_in_flight(), 0, "probes left in flight");
    assert_eq!(p.limit().unwrap().in_flight(), 0, "permits left");
}

#[tokio::test(start_paused = true)]
async fn a_held_request_is_admitted_when_the_scout_succeeds() {
    let upstream = Upstream::new(Mode::Down);
    let mut svc = stack(&upstream, ms(200), 8);
    let opened = trip(&mut svc, &upstream).await;
    tokio::time::sleep_until(opened + ms(100)).await;
    // The scout: its success arrives 30 ms later.
    upstream.set(Mode::Up(ms(30)));
    let scout = send(&svc, 1);
    tokio::time::sleep(ms(5)).await;
    assert_eq!(svc.policies().probes_in_flight(), 1);
    // Refused (the scout's slot is taken, the next is due in 45 ms), held.
    upstream.set(Mode::Up(ms(1)));
    let held = send(&svc, 2);
    tokio::time::sleep(ms(1)).await;
    assert_eq!(svc.policies().held(), 1);
    let (result, _) = scout.await.unwrap();
    assert_eq!(result.unwrap(), 1);
    assert_eq!(breaker(&svc).state(), BreakerState::Closed);
    let (result, took) = held.await.unwrap();
    assert_eq!(
        result.unwrap(),
        2,
        "admitted once the scout closed the breaker"
    );
    // Held from 5 ms to the scout's answer at 30 ms, then its own call of
    // 1 ms: the answer woke it, not the next scout's time (45 ms).
    assert!(took >= ms(25) && took <= ms(28), "took {took:?}");
    assert_eq!(upstream.calls(), 3, "the trip, the scout, the held request");
    assert_clean(&svc);
}

#[tokio::test(start_paused = true)]
async fn a_held_request_is_refused_when_the_scout_fails() {
    let upstream = Upstream::new(Mode::Down);
    let mut svc = stack(&upstream, ms(200), 8);
    let opened = trip(&mut svc, &upstream).await;
    tokio::time::sleep_until(opened + ms(100)).await;
    upstream.set(Mode::FailAfter(ms(30)));
    let scout = send(&svc, 1);
    tokio::time::sleep(ms(5)).await;
    let held = send(&svc, 2);
    let (result, _) = scout.await.unwrap();
    assert_eq!(result.unwrap_err().inner(), Some(&"failed"));
    let (result, took) = held.await.unwrap();
    assert_breaker_refusal(&result);
    // Refused at the scout's answer (25 ms into the hold), not at its bound.
    assert!(took >= ms(25) && took <= ms(26), "took {took:?}");
    assert_eq!(upstream.calls(), 2, "a held request is not an extra call");
    assert_eq!(breaker(&svc).state(), BreakerState::Open);
    assert_clean(&svc);
}

#[tokio::test(start_paused = true)]
async fn a_held_request_is_refused_at_the_hold_bound() {
    let upstream = Upstream::new(Mode::Down);
    let mut svc = stack(&upstream, ms(30), 8);
    let opened = trip(&mut svc, &upstream).await;
    tokio::time::sleep_until(opened + ms(100)).await;
    // A scout that hangs: no answer before the hold's end.
    upstream.set(Mode::Stall);
    let scout = send(&svc, 1);
    tokio::time::sleep(ms(5)).await;
    let held = send(&svc, 2);
    let (result, took) = held.await.unwrap();
    assert_breaker_refusal(&result);
    // The next scout is due in 45 ms, after the bound: held 30 ms (one
    // tick of the wheel at most beyond).
    assert!(took >= ms(30) && took <= ms(31), "took {took:?}");
    assert_eq!(svc.policies().held(), 0);
    assert_eq!(upstream.calls(), 2);
    scout.abort();
    let _ = scout.await;
    assert_clean(&svc);
}

#[tokio::test(start_paused = true)]
async fn the_hold_never_outlasts_the_timeout() {
    let upstream = Upstream::new(Mode::Down);
    let breaker = CircuitBreaker::new(scouting_config().build().unwrap());
    let mut svc: Svc = StackLayer::builder()
        .timeout(ms(20))
        .retry(never_retrying())
        .hold_for_breaker(ms(500), 8)
        .unwrap()
        .circuit_breaker(breaker)
        .concurrency_limit(Bulkhead::new(8).unwrap())
        .build()
        .layer(upstream.clone());
    let opened = trip(&mut svc, &upstream).await;
    tokio::time::sleep_until(opened + ms(100)).await;
    upstream.set(Mode::Stall);
    let scout = send(&svc, 1);
    tokio::time::sleep(ms(1)).await;
    let (result, took) = send(&svc, 2).await.unwrap();
    // The scout is in flight but the request's 20 ms end first: refused
    // by the breaker at its deadline, as it would have been at once.
    assert_breaker_refusal(&result);
    assert!(took >= ms(19) && took <= ms(21), "took {took:?}");
    let _ = scout.await;
    assert_clean(&svc);
}

#[tokio::test(start_paused = true)]
async fn a_refusal_with_no_answer_coming_is_not_held() {
    let upstream = Upstream::new(Mode::Down);
    let mut svc = stack(&upstream, ms(30), 8);
    trip(&mut svc, &upstream).await;
    // Open for 100 ms, no scout in flight: nothing is due within 30 ms.
    let (result, took) = send(&svc, 1).await.unwrap();
    assert_breaker_refusal(&result);
    assert_eq!(took, Duration::ZERO);
    // 80 ms on, the first scout is due within the hold: held until then,
    // when it becomes the scout itself.
    tokio::time::sleep(ms(80)).await;
    upstream.set(Mode::Up(ms(1)));
    let (result, took) = send(&svc, 2).await.unwrap();
    assert_eq!(result.unwrap(), 2);
    assert!(took >= ms(20) && took <= ms(22), "took {took:?}");
    assert_eq!(breaker(&svc).state(), BreakerState::Closed);
    assert_clean(&svc);
}

#[tokio::test(start_paused = true)]
async fn a_held_request_dropped_leaves_no_waiter_nor_permit() {
    let upstream = Upstream::new(Mode::Down);
    let mut svc = stack(&upstream, ms(200), 8);
    let opened = trip(&mut svc, &upstream).await;
    tokio::time::sleep_until(opened + ms(100)).await;
    upstream.set(Mode::Up(ms(30)));
    let scout = send(&svc, 1);
    tokio::time::sleep(ms(5)).await;
    let held = send(&svc, 2);
    tokio::time::sleep(ms(1)).await;
    assert_eq!(svc.policies().held(), 1);
    held.abort();
    assert!(held.await.unwrap_err().is_cancelled());
    assert_eq!(svc.policies().held(), 0, "the slot came back on drop");
    assert_eq!(scout.await.unwrap().0.unwrap(), 1);
    assert_eq!(upstream.calls(), 2, "the dropped request was never sent");
    assert_clean(&svc);
    // The slot is free for the next hold.
    assert!(svc.policies().hold().is_some_and(|(_, cap)| cap == 8));
}

#[tokio::test(start_paused = true)]
async fn a_scout_whose_service_panics_wakes_nobody_and_leaves_nothing() {
    let upstream = Upstream::new(Mode::Down);
    let mut svc = stack(&upstream, ms(200), 8);
    let opened = trip(&mut svc, &upstream).await;
    tokio::time::sleep_until(opened + ms(100)).await;
    upstream.set(Mode::Panic);
    let scout = send(&svc, 1);
    // The scout panicked on its first poll: its task is gone, its permit
    // released unreported, the breaker still open.
    assert!(scout.await.unwrap_err().is_panic());
    assert_eq!(svc.policies().probes_in_flight(), 0);
    assert_eq!(breaker(&svc).state(), BreakerState::Open);
    upstream.set(Mode::Up(ms(1)));
    let held = send(&svc, 2);
    // The next scout is due 50 ms after the first: the held request goes
    // as that scout, and its success closes the breaker.
    let (result, took) = held.await.unwrap();
    assert_eq!(result.unwrap(), 2);
    assert!(took >= ms(50) && took <= ms(52), "took {took:?}");
    assert_eq!(breaker(&svc).state(), BreakerState::Closed);
    assert_clean(&svc);
}

#[tokio::test(start_paused = true)]
async fn the_cap_refuses_beyond_it_at_once() {
    let upstream = Upstream::new(Mode::Down);
    let mut svc = stack(&upstream, ms(200), 2);
    let opened = trip(&mut svc, &upstream).await;
    tokio::time::sleep_until(opened + ms(100)).await;
    upstream.set(Mode::Up(ms(30)));
    let scout = send(&svc, 1);
    tokio::time::sleep(ms(5)).await;
    upstream.set(Mode::Up(ms(1)));
    let held = [send(&svc, 2), send(&svc, 3)];
    tokio::time::sleep(ms(1)).await;
    assert_eq!(svc.policies().held(), 2);
    let (result, took) = send(&svc, 4).await.unwrap();
    assert_breaker_refusal(&result);
    assert_eq!(took, Duration::ZERO, "beyond the cap: refused at once");
    assert_eq!(scout.await.unwrap().0.unwrap(), 1);
    for (x, call) in (2..).zip(held) {
        assert_eq!(call.await.unwrap().0.unwrap(), x);
    }
    assert_clean(&svc);
}

#[test]
fn the_settings_are_checked() {
    let builder = || StackLayer::builder().retry(retry_on(Backoff::constant(ms(10)).unwrap()));
    assert!(builder().hold_for_breaker(Duration::ZERO, 8).is_err());
    assert!(builder().hold_for_breaker(ms(10), 0).is_err());
    assert!(
        builder()
            .hold_for_breaker(ms(10), tenlives_tokio::MAX_HOLD_CAP + 1)
            .is_err()
    );
    let layer = builder()
        .hold_for_breaker(ms(10), tenlives_tokio::MAX_HOLD_CAP)
        .unwrap()
        .build();
    assert_eq!(
        layer.policies().hold(),
        Some((ms(10), tenlives_tokio::MAX_HOLD_CAP))
    );
    assert_eq!(StackLayer::builder().build().policies().hold(), None);
}

fn refusals(result: &Result<u32, TenlivesError<&'static str>>) -> bool {
    matches!(result, Err(TenlivesError::Rejected(_)))
}

/// A refusal that is not held (the concurrency limit's) leaves the request
/// free to hold a later one: its retry, refused by a breaker that opened
/// meanwhile, is held until the scout is due, goes as the scout, and
/// succeeds.
#[tokio::test(start_paused = true)]
async fn a_refusal_not_held_leaves_a_later_attempt_free_to_hold() {
    let upstream = Upstream::new(Mode::Up(ms(50)));
    let retry = retry_on(one_retry_after(ms(5))).retry_if(refusals as Never);
    let svc: Svc = StackLayer::builder()
        .timeout(Duration::from_secs(1))
        .retry(retry)
        .hold_for_breaker(ms(200), 8)
        .unwrap()
        .circuit_breaker(scouting_breaker())
        .concurrency_limit(Bulkhead::new(1).unwrap())
        .build()
        .layer(upstream.clone());
    // The one permit is taken for 50 ms.
    let busy = send(&svc, 1);
    tokio::time::sleep(ms(1)).await;
    let late = send(&svc, 2);
    tokio::time::sleep(ms(1)).await;
    // Refused by the limit (not held), the request waits 5 ms to retry;
    // meanwhile the breaker opens for 100 ms.
    let now = svc.policies().clock().now();
    breaker(&svc).try_acquire(now).unwrap().failure(now);
    assert_eq!(breaker(&svc).state(), BreakerState::Open);
    let (result, took) = late.await.unwrap();
    // The retry, refused by the breaker, was held until the first scout
    // was due (100 ms after the trip) and went as that scout.
    assert_eq!(result.unwrap(), 2);
    assert!(took >= ms(151) && took <= ms(153), "took {took:?}");
    assert_eq!(busy.await.unwrap().0.unwrap(), 1);
    assert_eq!(breaker(&svc).state(), BreakerState::Closed);
    assert_clean(&svc);
}
