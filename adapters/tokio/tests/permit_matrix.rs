//! The permit matrix: every permit-holding tower layer, times every way a
//! call can end other than by completing (a panic in the wrapped service's
//! `call`, in its future, in the classifier; a future dropped before its
//! first poll or mid-flight; a timeout; a request cancelled while it waits
//! for capacity), leaves nothing held: no bulkhead permit, no half-open probe
//! slot, no queued waiter. After each case the policy has recorded nothing
//! (except the stack's own timeout, which counts as a failure) and the next
//! call is admitted.
//!
//! Each row is a fixture (a layer built fresh for every case, with what it
//! holds and what it recorded); each column a [`Case`]; [`matrix`] runs a
//! row's cases. The classifier of every layer panics on one answer,
//! [`CLASSIFIER_PANICS`], so the same layers serve every column.

mod common;

use std::fmt::Debug;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use common::{Backend, Call, poll_once, ready_call};
use tenlives_engine::adaptive::{AdaptiveLimiter, Aimd, WindowConfig};
use tenlives_engine::breaker::{BreakerConfig, BreakerState, CircuitBreaker, Outcome};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::queue::{AdmissionQueue, QueueConfig};
use tenlives_engine::rate::RateLimiter;
use tenlives_engine::retry::{Backoff, RetryBudget, RetryBudgetConfig};
use tenlives_engine::time::{Clock, Timestamp};
use tenlives_tokio::{
    AdaptiveLimitLayer, Admission, AdmissionLayer, AdmissionQueueLayer, CircuitBreakerLayer,
    ConcurrencyLimitLayer, DefaultAdmission, NoRetry, Rejection, RetryPolicy, StackLayer,
    TenlivesError, TimeoutLayer, TokioClock,
};
use tower::{Layer, Service, ServiceExt};

/// How long a breaker stays open; the driver lets this much time pass
/// after building a fixture, so a breaker opened then is half-open.
const OPEN: Duration = Duration::from_secs(1);
/// The timeout of the stack and of the `TimeoutLayer` put around the others.
const TIMEOUT: Duration = Duration::from_millis(10);
/// The delay before the one retry of the retrying stack.
const BACKOFF: Duration = Duration::from_millis(1);

/// Moves paused time past a retry's backoff and lets the stack's timer wheel
/// fire it: the wait is an entry of the shared wheel, whose deadlines fire
/// up to one tick (1 ms by default) after they are due, once its driver
/// task has run.
async fn past_the_backoff() {
    tokio::time::advance(BACKOFF + Duration::from_millis(1)).await;
    tokio::task::yield_now().await;
}
/// How long a request waits in the admission queue at most.
const MAX_WAIT: Duration = Duration::from_millis(100);
/// The answer the classifier panics on.
const CLASSIFIER_PANICS: u32 = 666;
/// The answer the retrying stack's retry classifier panics on.
const RETRY_CLASSIFIER_PANICS: u32 = 667;

type Classifier = fn(&Result<u32, &'static str>) -> Outcome;

/// `Ok` is a success and `Err` a failure, except for `Ok(CLASSIFIER_PANICS)`.
fn classify(result: &Result<u32, &'static str>) -> Outcome {
    match result {
        Ok(CLASSIFIER_PANICS) => panic!("the classifier panicked"),
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    }
}

const CLASSIFY: Classifier = classify;

type RetryClassifier = fn(&Result<u32, TenlivesError<&'static str>>) -> bool;

const RETRY_OR_PANIC: RetryClassifier = retry_or_panic;

/// Retries every error, and panics on `Ok(RETRY_CLASSIFIER_PANICS)`.
fn retry_or_panic(result: &Result<u32, TenlivesError<&'static str>>) -> bool {
    match result {
        Ok(RETRY_CLASSIFIER_PANICS) => panic!("the retry classifier panicked"),
        Ok(_) => false,
        Err(_) => true,
    }
}

/// One way a call ends without completing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    /// The wrapped service's `call` panics: no future is ever made.
    PanicInCall,
    /// (Admission queue.) The request waits, is granted a permit, and the
    /// wrapped service's `call`, made in the response future's poll, panics.
    PanicInCallAfterWait,
    /// The wrapped service's future panics when polled.
    PanicInPoll,
    /// The response future is dropped before its first poll.
    DropBeforePoll,
    /// The response future is dropped after a `Pending`.
    DropMidFlight,
    /// The call never answers and times out: under the stack's own timeout,
    /// or under a `TimeoutLayer` around the layer.
    TimedOut,
    /// The call answers `Ok(CLASSIFIER_PANICS)` and the classifier panics.
    PanicInClassifier,
    /// (Admission queue.) A request waiting for a permit is dropped.
    CancelledWhileWaiting,
    /// (Stack with retries.) The first attempt fails; the wrapped service's
    /// `call` for the retry, made in the response future's poll, panics.
    PanicInRetriedCall,
    /// (Stack with retries.) The call answers `Ok(RETRY_CLASSIFIER_PANICS)`,
    /// a success to the outcome classifier, and the retry classifier panics.
    PanicInRetryClassifier,
}

use Case::*;

/// The columns of the layers that classify outcomes.
const CLASSIFYING: &[Case] = &[
    PanicInCall,
    PanicInPoll,
    DropBeforePoll,
    DropMidFlight,
    TimedOut,
    PanicInClassifier,
];

/// The columns of a stack that retries: the classifying ones, a panic in
/// the retry's `call` and one in the retry classifier.
const RETRYING: &[Case] = &[
    PanicInCall,
    PanicInPoll,
    DropBeforePoll,
    DropMidFlight,
    TimedOut,
    PanicInClassifier,
    PanicInRetriedCall,
    PanicInRetryClassifier,
];

/// The columns of the admission queue, which has no classifier but waits.
const QUEUEING: &[Case] = &[
    PanicInCall,
    PanicInCallAfterWait,
    PanicInPoll,
    DropBeforePoll,
    DropMidFlight,
    TimedOut,
    CancelledWhileWaiting,
];

/// A row of the matrix: a layer, and how to read its policies.
struct Fixture<L> {
    layer: L,
    /// What the policies hold now: permits in flight, probe slots taken,
    /// requests queued.
    held: fn(&L) -> u32,
    /// What `held` reads while one call is in flight.
    one_call: u32,
    /// How many outcomes the policies have recorded.
    recorded: fn(&L) -> u32,
    /// The layer times out itself (the stack), and reports a timeout as a
    /// failure; otherwise a `TimeoutLayer` around it cancels the call.
    own_timeout: bool,
}

/// Runs `cases` on fresh fixtures from `make`: each case, then the checks
/// that nothing is held, that nothing (or, for the stack's timeout, one
/// failure) was recorded, and that the next call is admitted and completes.
async fn matrix<L>(row: &str, make: fn(TokioClock) -> Fixture<L>, cases: &[Case])
where
    L: Layer<Backend>,
    L::Service: Service<Call, Response = u32, Error = TenlivesError<&'static str>>,
{
    for &case in cases {
        let fixture = make(TokioClock::new());
        tokio::time::advance(OPEN).await;
        let held = || (fixture.held)(&fixture.layer);
        let recorded = || (fixture.recorded)(&fixture.layer);
        assert_eq!((held(), recorded()), (0, 0), "{row}/{case:?}: a fresh row");
        let mut svc = fixture.layer.layer(Backend::new());
        run(case, &mut svc, &fixture, &held).await;
        assert_eq!(held(), 0, "{row}/{case:?}: everything given back");
        // The stack's timeout is a failure; a retried call's first attempt
        // failed; the retry classifier runs once the attempt was reported.
        // Nothing else ended with an outcome.
        let reported = (case == TimedOut && fixture.own_timeout)
            || matches!(case, PanicInRetriedCall | PanicInRetryClassifier);
        assert_eq!(
            recorded(),
            u32::from(reported),
            "{row}/{case:?}: outcomes recorded"
        );
        // A breaker that the stack's timeout reopened half-opens again.
        tokio::time::advance(OPEN).await;
        let next = svc.ready().await.unwrap().call(Call::Ok(1)).await;
        assert!(
            matches!(next, Ok(1)),
            "{row}/{case:?}: the next call is admitted, got {next:?}"
        );
        assert_eq!(held(), 0, "{row}/{case:?}: and gives back what it took");
    }
}

/// Polls `fut` once, expecting it to panic.
fn poll_panics<F: Future>(fut: std::pin::Pin<&mut F>, what: &str) {
    let unwound = catch_unwind(AssertUnwindSafe(|| poll_once(fut)));
    assert!(unwound.is_err(), "{what} panicked through the poll");
}

/// Calls `svc` with `call` and polls the response future once, expecting
/// it to wait (`Pending`) while `held` reads `expect`.
fn pending_call<S: Service<Call>>(
    svc: &mut S,
    call: Call,
    held: &dyn Fn() -> u32,
    expect: u32,
) -> std::pin::Pin<Box<S::Future>>
where
    S::Error: Debug,
{
    let mut fut = Box::pin(ready_call(svc, call));
    assert!(poll_once(fut.as_mut()).is_pending(), "{call:?} is pending");
    assert_eq!(held(), expect, "{call:?}: held while pending");
    fut
}

/// One case on `svc`, made by `fixture`'s layer.
async fn run<L, S>(case: Case, svc: &mut S, fixture: &Fixture<L>, held: &dyn Fn() -> u32)
where
    L: Layer<Backend>,
    L::Service: Service<Call, Response = u32, Error = TenlivesError<&'static str>>,
    S: Service<Call, Response = u32, Error = TenlivesError<&'static str>>,
{
    let one = fixture.one_call;
    match case {
        PanicInCall => {
            let unwound = catch_unwind(AssertUnwindSafe(|| {
                ready_call(svc, Call::PanicBeforeFuture)
            }));
            assert!(unwound.is_err(), "the backend's call panicked through");
        }
        PanicInCallAfterWait => {
            let first = pending_call(svc, Call::Forever, held, one);
            let mut second = pin!(ready_call(svc, Call::PanicBeforeFuture));
            assert!(
                poll_once(second.as_mut()).is_pending(),
                "waits for the permit"
            );
            assert_eq!(held(), one + 1, "one in flight, one waiting");
            drop(first);
            assert_eq!(held(), one, "the permit went to the waiter");
            poll_panics(second, "the backend's call, once granted,");
        }
        PanicInPoll => {
            let mut fut = pin!(ready_call(svc, Call::Panic));
            assert_eq!(held(), one, "held once called");
            poll_panics(fut.as_mut(), "the backend's future");
        }
        DropBeforePoll => {
            let fut = ready_call(svc, Call::Forever);
            assert_eq!(held(), one, "held once called");
            drop(fut);
        }
        DropMidFlight => drop(pending_call(svc, Call::Forever, held, one)),
        TimedOut if fixture.own_timeout => {
            let result = ready_call(svc, Call::Forever).await;
            assert!(matches!(result, Err(TenlivesError::TimedOut { .. })));
        }
        TimedOut => {
            let mut timed = TimeoutLayer::new(TIMEOUT).layer(fixture.layer.layer(Backend::new()));
            let result = ready_call(&mut timed, Call::Forever).await;
            assert!(matches!(result, Err(TenlivesError::TimedOut { .. })));
        }
        PanicInClassifier => {
            let mut fut = pin!(ready_call(svc, Call::Ok(CLASSIFIER_PANICS)));
            poll_panics(fut.as_mut(), "the classifier");
        }
        PanicInRetriedCall => {
            let mut fut = pin!(ready_call(svc, Call::FailThenPanic));
            assert!(poll_once(fut.as_mut()).is_pending(), "waits to retry");
            assert_eq!(held(), 0, "nothing held between attempts");
            past_the_backoff().await;
            poll_panics(fut, "the backend's call, retried,");
        }
        PanicInRetryClassifier => {
            let mut fut = pin!(ready_call(svc, Call::Ok(RETRY_CLASSIFIER_PANICS)));
            poll_panics(fut.as_mut(), "the retry classifier");
        }
        CancelledWhileWaiting => {
            let first = pending_call(svc, Call::Forever, held, one);
            drop(pending_call(svc, Call::Ok(1), held, one + 1));
            assert_eq!(held(), one, "the waiter gave up its place");
            drop(first);
        }
    }
}

/// A breaker with a failure-rate rule over a count window (so that the
/// closed state counts calls, whatever the time), tripping on one failure, open for [`OPEN`], then
/// one probe.
fn breaker() -> CircuitBreaker {
    CircuitBreaker::new(
        BreakerConfig::builder()
            .count_window(100)
            .consecutive_failures(1)
            .open_duration(OPEN)
            .half_open_probes(1)
            .build()
            .unwrap(),
    )
}

/// [`breaker`], opened at `clock`'s now: half-open [`OPEN`] later.
fn opened_breaker(clock: TokioClock) -> CircuitBreaker {
    let b = breaker();
    b.try_acquire(clock.now()).unwrap().failure(clock.now());
    assert_eq!(b.state(), BreakerState::Open);
    b
}

/// Outcomes a breaker opened once has heard since: probes reported, or one
/// that decided the half-open state (a success closes the breaker, a failure
/// opens it a second time).
fn probe_reports(b: &CircuitBreaker) -> u32 {
    let s = b.snapshot(Timestamp::from_nanos(u64::MAX / 2));
    let decided = match s.state {
        BreakerState::Closed => true,
        BreakerState::Open => s.trips > 1,
        _ => false,
    };
    s.probes_reported + u32::from(decided)
}

fn probes_taken(b: &CircuitBreaker) -> u32 {
    b.snapshot(Timestamp::from_nanos(u64::MAX / 2))
        .probes_admitted
}

/// A limit of one permit: the next call is admitted only if it came back.
fn adaptive(clock: TokioClock) -> AdaptiveLimiter<Aimd> {
    let aimd = Aimd::builder().limits(1, 1, 10).build().unwrap();
    // A window far longer than any test: samples stay pending, countable.
    let window = WindowConfig::new(Duration::from_secs(3600), 1).unwrap();
    AdaptiveLimiter::new(aimd, window, clock.now())
}

fn breaker_closed(clock: TokioClock) -> Fixture<CircuitBreakerLayer<Classifier>> {
    Fixture {
        layer: CircuitBreakerLayer::with_classifier(breaker(), CLASSIFY, clock),
        // A closed breaker holds nothing countable; what it recorded shows
        // a call that was not given back as one that was counted.
        held: |_| 0,
        one_call: 0,
        recorded: |l| u32::try_from(l.policy().snapshot(Timestamp::ZERO).window.calls).unwrap(),
        own_timeout: false,
    }
}

fn breaker_half_open(clock: TokioClock) -> Fixture<CircuitBreakerLayer<Classifier>> {
    Fixture {
        layer: CircuitBreakerLayer::with_classifier(opened_breaker(clock), CLASSIFY, clock),
        held: |l| probes_taken(l.policy()),
        one_call: 1,
        recorded: |l| probe_reports(l.policy()),
        own_timeout: false,
    }
}

fn concurrency_limit(clock: TokioClock) -> Fixture<ConcurrencyLimitLayer<Classifier>> {
    Fixture {
        layer: ConcurrencyLimitLayer::with_classifier(Bulkhead::new(1).unwrap(), CLASSIFY, clock),
        held: |l| l.policy().in_flight(),
        one_call: 1,
        recorded: |_| 0,
        own_timeout: false,
    }
}

fn adaptive_limit(clock: TokioClock) -> Fixture<AdaptiveLimitLayer<Aimd, Classifier>> {
    Fixture {
        layer: AdaptiveLimitLayer::with_classifier(adaptive(clock), CLASSIFY, clock),
        held: |l| l.policy().in_flight(),
        one_call: 1,
        recorded: |l| u32::try_from(l.policy().pending_samples()).unwrap(),
        own_timeout: false,
    }
}

fn admission_queue(clock: TokioClock) -> Fixture<AdmissionQueueLayer<Bulkhead>> {
    let queue = AdmissionQueue::new(Bulkhead::new(1).unwrap(), QueueConfig::fifo(4).unwrap());
    Fixture {
        layer: AdmissionQueueLayer::new(queue, MAX_WAIT).with_clock(clock),
        held: |l| l.queue().source().in_flight() + l.queue().waiting(),
        one_call: 1,
        recorded: |_| 0,
        own_timeout: false,
    }
}

type HalfOpenStack = StackLayer<Classifier, NoRetry, DefaultAdmission>;

/// A timeout, a half-open breaker and a limit of one.
fn stack(clock: TokioClock) -> Fixture<HalfOpenStack> {
    Fixture {
        layer: StackLayer::builder()
            .timeout(TIMEOUT)
            .circuit_breaker(opened_breaker(clock))
            .concurrency_limit(Bulkhead::new(1).unwrap())
            .classify(CLASSIFY)
            .clock(clock)
            .build(),
        held: |l| {
            let p = l.policies();
            p.limit().unwrap().in_flight() + probes_taken(p.breaker().unwrap())
        },
        one_call: 2,
        recorded: |l| probe_reports(l.policies().breaker().unwrap()),
        own_timeout: true,
    }
}

type RetryingStack = StackLayer<
    Classifier,
    RetryPolicy<RetryClassifier>,
    DefaultAdmission<CircuitBreaker, RateLimiter, AdaptiveLimiter<Aimd>>,
>;

/// A timeout, one retry, a closed breaker that no test trips and an
/// adaptive limit of one.
fn retrying_stack(clock: TokioClock) -> Fixture<RetryingStack> {
    let tolerant = BreakerConfig::builder().count_window(100).build();
    let backoff = Backoff::constant(BACKOFF).unwrap().with_max_retries(1);
    Fixture {
        layer: StackLayer::builder()
            .timeout(TIMEOUT)
            .retry(
                RetryPolicy::new(backoff, RetryBudget::new(RetryBudgetConfig::default()))
                    .retry_if(RETRY_OR_PANIC),
            )
            .circuit_breaker(CircuitBreaker::new(tolerant.unwrap()))
            .adaptive_limit(adaptive(clock))
            .classify(CLASSIFY)
            .clock(clock)
            .build(),
        held: |l| l.policies().limit().unwrap().in_flight(),
        one_call: 1,
        recorded: |l| {
            let window = l
                .policies()
                .breaker()
                .unwrap()
                .snapshot(Timestamp::ZERO)
                .window;
            u32::try_from(window.calls).unwrap()
        },
        own_timeout: true,
    }
}

#[tokio::test(start_paused = true)]
async fn breaker_closed_gives_everything_back() {
    matrix("breaker closed", breaker_closed, CLASSIFYING).await;
}

#[tokio::test(start_paused = true)]
async fn breaker_half_open_gives_its_probe_slot_back() {
    matrix("breaker half-open", breaker_half_open, CLASSIFYING).await;
}

#[tokio::test(start_paused = true)]
async fn concurrency_limit_gives_its_permit_back() {
    matrix("concurrency limit", concurrency_limit, CLASSIFYING).await;
}

#[tokio::test(start_paused = true)]
async fn adaptive_limit_gives_its_permit_back() {
    matrix("adaptive limit", adaptive_limit, CLASSIFYING).await;
}

#[tokio::test(start_paused = true)]
async fn admission_queue_gives_its_permit_and_place_back() {
    matrix("admission queue", admission_queue, QUEUEING).await;
}

#[tokio::test(start_paused = true)]
async fn stack_gives_its_permit_and_probe_slot_back() {
    matrix("stack", stack, CLASSIFYING).await;
}

/// Where a [`Tripwire`] panics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Trip {
    Nowhere,
    Admit,
    Complete,
}

/// A user's admission stage that panics in `admit` or `complete` when told
/// to, put after a bulkhead: the bulkhead's permit must come back.
#[derive(Clone, Debug, Default)]
struct Tripwire(Arc<AtomicU8>);

impl Tripwire {
    fn set(&self, trip: Trip) {
        self.0.store(trip as u8, Ordering::SeqCst);
    }

    fn check(&self, here: Trip) {
        if self.0.load(Ordering::SeqCst) == here as u8 {
            panic!("the admission stage panicked in {here:?}");
        }
    }
}

impl Admission for Tripwire {
    type Token = ();

    fn needs_time(&self) -> bool {
        false
    }

    fn admit(&self, _now: Timestamp) -> Result<(), Rejection> {
        self.check(Trip::Admit);
        Ok(())
    }

    fn complete(&self, (): (), _outcome: Outcome, _admitted_at: Timestamp, _now: Timestamp) {
        self.check(Trip::Complete);
    }

    fn release(&self, (): ()) {}
}

/// A call through `svc` while `tripwire` panics in `admit`, then one while
/// it panics in `complete`: each time the panic comes through and the
/// bulkhead before the stage reads zero in flight; then a call completes.
async fn a_panicking_stage<S>(svc: &mut S, tripwire: &Tripwire, in_flight: impl Fn() -> u32)
where
    S: Service<Call, Response = u32, Error = TenlivesError<&'static str>>,
{
    tripwire.set(Trip::Admit);
    let unwound = catch_unwind(AssertUnwindSafe(|| ready_call(svc, Call::Ok(1))));
    assert!(unwound.is_err(), "admit panicked through `call`");
    assert_eq!(in_flight(), 0, "a panic in a later stage's admit");

    tripwire.set(Trip::Complete);
    poll_panics(pin!(ready_call(svc, Call::Ok(1))), "the stage's complete");
    assert_eq!(in_flight(), 0, "a panic in a later stage's complete");

    tripwire.set(Trip::Nowhere);
    let next = svc.ready().await.unwrap().call(Call::Ok(1)).await;
    assert!(matches!(next, Ok(1)), "the next call is admitted: {next:?}");
    assert_eq!(in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_admission_stage_releases_the_stages_before_it() {
    let tripwire = Tripwire::default();
    let layer = AdmissionLayer::new((Bulkhead::new(1).unwrap(), tripwire.clone()));
    let mut svc = layer.layer(Backend::new());
    a_panicking_stage(&mut svc, &tripwire, || layer.policy().0.in_flight()).await;

    let stack = StackLayer::builder()
        .admission((Bulkhead::new(1).unwrap(), tripwire.clone()))
        .build();
    let mut svc = stack.layer(Backend::new());
    a_panicking_stage(&mut svc, &tripwire, || {
        stack.policies().admission().0.in_flight()
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn retrying_stack_gives_its_permit_back() {
    matrix("retrying stack", retrying_stack, RETRYING).await;
}

/// A wrapped service whose `Clone` panics once armed.
#[derive(Debug)]
struct CloneBomb {
    armed: Arc<AtomicBool>,
    inner: Backend,
}

impl Clone for CloneBomb {
    fn clone(&self) -> Self {
        assert!(
            !self.armed.load(Ordering::SeqCst),
            "the wrapped service's clone panicked"
        );
        CloneBomb {
            armed: Arc::clone(&self.armed),
            inner: self.inner.clone(),
        }
    }
}

impl Service<Call> for CloneBomb {
    type Response = u32;
    type Error = &'static str;
    type Future = common::Reply;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        self.inner.call(call)
    }
}

#[tokio::test(start_paused = true)]
async fn a_service_clone_panicking_in_the_queue_gives_up_the_place() {
    let fixture = admission_queue(TokioClock::new());
    let held = || (fixture.held)(&fixture.layer);
    let armed = Arc::new(AtomicBool::new(false));
    let mut svc = fixture.layer.layer(CloneBomb {
        armed: Arc::clone(&armed),
        inner: Backend::new(),
    });
    let first = pending_call(&mut svc, Call::Forever, &held, 1);
    // Full: the next request is queued, then the service is cloned for it.
    armed.store(true, Ordering::SeqCst);
    let unwound = catch_unwind(AssertUnwindSafe(|| ready_call(&mut svc, Call::Ok(1))));
    assert!(unwound.is_err(), "the clone panicked through `call`");
    assert_eq!(held(), 1, "the queued place was given up");
    drop(first);
    assert_eq!(held(), 0);
    armed.store(false, Ordering::SeqCst);
    let next = svc.ready().await.unwrap().call(Call::Ok(1)).await;
    assert!(matches!(next, Ok(1)), "the next call is admitted: {next:?}");
}

/// A request whose second `Clone` panics: the stack clones a request once
/// when it is called (to keep for retries) and once per retry.
#[derive(Debug)]
struct Request(Arc<AtomicU8>);

impl Clone for Request {
    fn clone(&self) -> Self {
        let earlier = self.0.fetch_add(1, Ordering::SeqCst);
        assert_ne!(earlier, 1, "the request's clone for a retry panicked");
        Request(Arc::clone(&self.0))
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_clone_panicking_before_a_retry_gives_the_permit_back() {
    let backoff = Backoff::constant(BACKOFF).unwrap().with_max_retries(1);
    let layer = StackLayer::builder()
        .retry(RetryPolicy::new(
            backoff,
            RetryBudget::new(RetryBudgetConfig::default()),
        ))
        .concurrency_limit(Bulkhead::new(1).unwrap())
        .build();
    let in_flight = || layer.policies().limit().unwrap().in_flight();
    let mut svc = layer.layer(tower::service_fn(|_: Request| async {
        Err::<u32, &'static str>("failed")
    }));
    let clones = Arc::new(AtomicU8::new(0));
    {
        let mut fut = pin!(ready_call(&mut svc, Request(Arc::clone(&clones))));
        assert!(
            poll_once(fut.as_mut()).is_pending(),
            "failed, waits to retry"
        );
        assert_eq!(in_flight(), 0, "nothing held between attempts");
        past_the_backoff().await;
        poll_panics(fut.as_mut(), "the request's clone for the retry");
        assert_eq!(clones.load(Ordering::SeqCst), 2, "it was the retry's clone");
        assert_eq!(in_flight(), 1, "the retry's permit is in its holder");
    }
    assert_eq!(in_flight(), 0, "given back when the future is dropped");
    clones.store(5, Ordering::SeqCst);
    let next = svc.ready().await.unwrap().call(Request(clones)).await;
    assert!(
        matches!(next, Err(TenlivesError::Inner("failed"))),
        "admitted: {next:?}"
    );
}
