//! A user's clock (`TokioClock::from_source`) that panics on its Nth
//! reading, behind the breaker layer and behind the stack (breaker,
//! concurrency limit, retry, timeout, the hold for the breaker's answer).
//! For every reading a scenario makes, a run where that reading panics:
//! the panic reaches the caller (the request's task ends with it), and
//! afterwards nothing is left behind: no permit of the concurrency limit,
//! no breaker probe slot or scout, no hold slot, no timer-wheel entry
//! (a wheel with room for exactly the requests checked afterwards, which
//! must not fall back to a tokio `Sleep`); requests sent afterwards are
//! admitted and answered. On tokio's paused clock, so every run reads the
//! clock at the same points as the run without a panic.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tenlives_engine::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::rate::RateLimiter;
use tenlives_engine::retry::{Backoff, RetryBudget, RetryBudgetConfig};
use tenlives_engine::time::{Clock, Timestamp};
use tenlives_tokio::{
    AdmissionLayer, DefaultClassifier, RetryPolicy, Stack, StackLayer, TenlivesError, TokioClock,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const PANIC: &str = "the clock panicked";

/// Tokio's clock (paused in these tests), counting its readings; the
/// reading numbered `panic_at` (counted from the clock's making) panics.
struct Faulty {
    origin: Instant,
    reads: AtomicU64,
    panic_at: AtomicU64,
}

impl Clock for Faulty {
    fn now(&self) -> Timestamp {
        // ordering: Relaxed; one test thread reads the clock.
        let n = self.reads.fetch_add(1, Ordering::Relaxed);
        if n == self.panic_at.load(Ordering::Relaxed) {
            panic!("{PANIC}");
        }
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap();
        Timestamp::from_nanos(nanos)
    }
}

impl Faulty {
    fn new() -> (&'static Faulty, TokioClock) {
        let clock: &'static Faulty = Box::leak(Box::new(Faulty {
            origin: Instant::now(),
            reads: AtomicU64::new(0),
            panic_at: AtomicU64::new(u64::MAX),
        }));
        (clock, TokioClock::from_source(clock))
    }
    fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
    /// The `n`th reading from now on (0: the next) panics.
    fn arm(&self, n: u64) {
        self.panic_at.store(self.reads() + n, Ordering::Relaxed);
    }
    fn disarm(&self) {
        self.panic_at.store(u64::MAX, Ordering::Relaxed);
    }
}

/// What the upstream does with a call.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Succeeds after this long.
    Up(Duration),
    /// Fails after this long.
    FailAfter(Duration),
}

/// Answers each call as the next scripted mode says, then as `Up(5 ms)`.
#[derive(Clone)]
struct Upstream {
    script: Arc<Mutex<VecDeque<Mode>>>,
    calls: Arc<AtomicU32>,
}

impl Upstream {
    fn new() -> Self {
        Upstream {
            script: Arc::new(Mutex::new(VecDeque::new())),
            calls: Arc::new(AtomicU32::new(0)),
        }
    }
    fn script(&self, modes: &[Mode]) {
        let mut script = self.script.lock().unwrap();
        script.clear();
        script.extend(modes.iter().copied());
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
        let mode = self.script.lock().unwrap().pop_front();
        Box::pin(async move {
            match mode.unwrap_or(Mode::Up(ms(5))) {
                Mode::Up(after) => {
                    tokio::time::sleep(after).await;
                    Ok(x)
                }
                Mode::FailAfter(after) => {
                    tokio::time::sleep(after).await;
                    Err("failed")
                }
            }
        })
    }
}

type Outcome = Result<u32, TenlivesError<&'static str>>;

/// Whether a request's task panicked with the clock's panic (any other
/// panic fails the test).
async fn panicked(task: JoinHandle<Outcome>) -> bool {
    match task.await {
        Ok(_) => false,
        Err(e) => {
            let payload = e.into_panic();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied());
            assert_eq!(message, Some(PANIC));
            true
        }
    }
}

/// Sends a request through a clone of `svc` on a task of its own.
fn send<S>(svc: &S, x: u32) -> JoinHandle<Outcome>
where
    S: Service<u32, Response = u32, Error = TenlivesError<&'static str>> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut svc = svc.clone();
    tokio::spawn(async move { svc.ready().await.unwrap().call(x).await })
}

// ---------------------------------------------------------------------------
// The stack.

type Svc = Stack<
    Upstream,
    DefaultClassifier,
    RetryPolicy,
    (
        Option<CircuitBreaker>,
        Option<RateLimiter>,
        Option<Bulkhead>,
    ),
>;

/// A stack on a faulty clock: timeout 1 s, up to two retries 10 ms apart,
/// `breaker`, a concurrency limit of 2, a timer wheel of 2 entries,
/// holding breaker refusals up to 200 ms when `hold`.
struct Case {
    clock: &'static Faulty,
    upstream: Upstream,
    svc: Svc,
}

fn case(breaker: CircuitBreaker, timeout: Duration, hold: bool) -> Case {
    let (clock, source) = Faulty::new();
    let upstream = Upstream::new();
    let retry = RetryPolicy::new(
        Backoff::constant(ms(10)).unwrap().with_max_retries(2),
        RetryBudget::new(RetryBudgetConfig::default()),
    );
    let mut builder = StackLayer::builder()
        .clock(source)
        .timer_wheel(2, ms(1))
        .unwrap()
        .timeout(timeout)
        .retry(retry);
    if hold {
        builder = builder.hold_for_breaker(ms(200), 4).unwrap();
    }
    let svc = builder
        .circuit_breaker(breaker)
        .concurrency_limit(Bulkhead::new(2).unwrap())
        .build()
        .layer(upstream.clone());
    Case {
        clock,
        upstream,
        svc,
    }
}

fn consecutive(n: u32) -> CircuitBreaker {
    CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(n)
            .open_duration(ms(100))
            .half_open_probes(1)
            .build()
            .unwrap(),
    )
}

fn scouting() -> CircuitBreaker {
    CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .open_duration(ms(100))
            .probe_every(ms(50))
            .half_open_probes(1)
            .build()
            .unwrap(),
    )
}

/// Nothing is held: no permit, no probe slot or scout, no hold slot; and
/// two requests at once, each arming a timer, take the wheel's two entries
/// (no fallback) and are answered.
async fn assert_clean(case: &Case, what: &str) {
    let p = case.svc.policies();
    let breaker = p.breaker().unwrap();
    assert_eq!(p.limit().unwrap().in_flight(), 0, "{what}: permits left");
    assert_eq!(p.held(), 0, "{what}: held requests left");
    assert_eq!(p.probes_in_flight(), 0, "{what}: probes counted");
    assert_eq!(breaker.scouts_in_flight(), 0, "{what}: scouts left");
    let s = breaker.snapshot(case.clock.now());
    assert_eq!(
        s.probes_admitted, s.probes_reported,
        "{what}: probe slots left"
    );
    // Whatever state the run left the breaker in, it admits again once a
    // probe succeeds.
    breaker.reset(case.clock.now());
    let timers = p.timers().unwrap();
    let fallbacks = timers.fallbacks();
    case.upstream.script(&[]);
    let (a, b) = (send(&case.svc, 1), send(&case.svc, 2));
    assert_eq!(a.await.unwrap().unwrap(), 1, "{what}");
    assert_eq!(b.await.unwrap().unwrap(), 2, "{what}");
    assert_eq!(
        timers.fallbacks(),
        fallbacks,
        "{what}: a wheel entry leaked"
    );
    assert_eq!(p.limit().unwrap().in_flight(), 0);
}

/// A scenario: prepares a fresh case (untimed by the count), then sends
/// the requests under test and returns their tasks.
struct Scenario {
    name: &'static str,
    make: fn() -> Case,
    prepare: fn(&Case) -> Pin<Box<dyn Future<Output = ()> + '_>>,
    run: fn(&Case) -> Vec<JoinHandle<Outcome>>,
}

/// Runs `s` once without a panic to count its readings, then once per
/// reading with that reading panicking; checks each run leaves nothing.
async fn every_reading_panics(s: &Scenario) {
    let case = (s.make)();
    (s.prepare)(&case).await;
    let before = case.clock.reads();
    for task in (s.run)(&case) {
        assert!(!panicked(task).await);
    }
    let reads = case.clock.reads() - before;
    assert!(reads > 0, "{}: no reading to make panic", s.name);
    assert_clean(&case, s.name).await;
    for n in 0..reads {
        let case = (s.make)();
        (s.prepare)(&case).await;
        case.clock.arm(n);
        let mut any = false;
        for task in (s.run)(&case) {
            any |= panicked(task).await;
        }
        case.clock.disarm();
        let what = format!("{}, reading {n} of {reads} panicking", s.name);
        assert!(any, "{what}: nothing panicked");
        assert_clean(&case, &what).await;
    }
}

/// Trips `case`'s breaker with a failed request.
fn trip(case: &Case) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(async move {
        case.upstream.script(&[Mode::FailAfter(ms(1)); 3]);
        let _ = send(&case.svc, 0).await.unwrap();
        let breaker = case.svc.policies().breaker().unwrap();
        assert_eq!(breaker.state(), BreakerState::Open);
        case.upstream.script(&[]);
    })
}

fn nothing(_: &Case) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(async {})
}

#[tokio::test(start_paused = true)]
async fn a_retried_request_leaves_nothing_whichever_reading_panics() {
    // Fails twice (each failure timed for the breaker), then succeeds.
    every_reading_panics(&Scenario {
        name: "retried",
        make: || case(consecutive(5), Duration::from_secs(1), false),
        prepare: nothing,
        run: |case| {
            case.upstream
                .script(&[Mode::FailAfter(ms(3)), Mode::FailAfter(ms(3))]);
            vec![send(&case.svc, 1)]
        },
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_request_leaves_nothing_whichever_reading_panics() {
    // The attempt outlives the timeout: the stack reports it to the
    // breaker as a failure, reading the clock for it.
    every_reading_panics(&Scenario {
        name: "timed out",
        make: || case(consecutive(5), ms(50), false),
        prepare: nothing,
        run: |case| {
            case.upstream.script(&[Mode::Up(ms(500))]);
            vec![send(&case.svc, 1)]
        },
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_probe_leaves_nothing_whichever_reading_panics() {
    // Open, then time for a probe: the request is the probe (its outcome
    // timed), a second one is refused (half-open, full) and retried.
    every_reading_panics(&Scenario {
        name: "probe",
        make: || case(consecutive(1), Duration::from_secs(1), false),
        prepare: |case| {
            Box::pin(async move {
                trip(case).await;
                tokio::time::sleep(ms(100)).await;
            })
        },
        run: |case| {
            case.upstream.script(&[Mode::Up(ms(20))]);
            vec![send(&case.svc, 1), send(&case.svc, 2)]
        },
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_held_request_leaves_nothing_whichever_reading_panics() {
    // A scout, and a request that the breaker refuses while the scout is
    // out: held for its answer, then admitted.
    every_reading_panics(&Scenario {
        name: "held",
        make: || case(scouting(), Duration::from_secs(1), true),
        prepare: |case| {
            Box::pin(async move {
                trip(case).await;
                tokio::time::sleep(ms(100)).await;
            })
        },
        run: |case| {
            case.upstream.script(&[Mode::Up(ms(30))]);
            let scout = send(&case.svc, 1);
            vec![scout, send(&case.svc, 2)]
        },
    })
    .await;
}

// ---------------------------------------------------------------------------
// The breaker layer, alone and chained with a concurrency limit.

fn slow_rule() -> CircuitBreaker {
    CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .slow_calls(50.0, ms(100))
            .count_window(4)
            .minimum_calls(4)
            .build()
            .unwrap(),
    )
}

/// Through a layer admitting with `policy` (a breaker, possibly chained
/// with a concurrency limit): trips the breaker when `trip` (then waits
/// out its open period) and sends two requests that fail after 5 ms, once
/// without a panic to count the readings, then once per reading with that
/// reading panicking; after each run, no probe slot and no permit is held
/// and a request is answered.
async fn layer_readings<A>(
    policy: fn() -> A,
    breaker: fn(&A) -> &CircuitBreaker,
    bulkhead: fn(&A) -> Option<&Bulkhead>,
    trip: bool,
    name: &str,
) where
    A: tenlives_tokio::Admission + Send + Sync + 'static,
    A::Token: Send,
{
    let mut reads = None;
    let mut n = 0;
    while reads.is_none_or(|r| n < r) {
        let (clock, source) = Faulty::new();
        let upstream = Upstream::new();
        let layer = AdmissionLayer::with_classifier(policy(), DefaultClassifier, source);
        let svc = layer.layer(upstream.clone());
        let b = breaker(layer.policy());
        if trip {
            upstream.script(&[Mode::FailAfter(ms(1))]);
            let _ = send(&svc, 0).await.unwrap();
            assert_eq!(b.state(), BreakerState::Open);
            tokio::time::sleep(ms(100)).await;
        }
        upstream.script(&[Mode::FailAfter(ms(5)), Mode::FailAfter(ms(5))]);
        let before = clock.reads();
        if reads.is_some() {
            clock.arm(n);
        }
        let mut any = false;
        for task in [send(&svc, 1), send(&svc, 2)] {
            any |= panicked(task).await;
        }
        clock.disarm();
        let made = clock.reads() - before;
        let what = format!("{name}, reading {n} panicking");
        let s = b.snapshot(clock.now());
        assert_eq!(
            s.probes_admitted, s.probes_reported,
            "{what}: probe slots left"
        );
        if let Some(limit) = bulkhead(layer.policy()) {
            assert_eq!(limit.in_flight(), 0, "{what}: permits left");
        }
        b.reset(clock.now());
        upstream.script(&[]);
        assert_eq!(send(&svc, 3).await.unwrap().unwrap(), 3, "{what}");
        match reads {
            None => {
                assert!(!any);
                assert!(made > 0, "{name}: no reading to make panic");
                reads = Some(made);
            }
            Some(_) => {
                assert!(any, "{what}: nothing panicked");
                n += 1;
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_breaker_layer_leaves_nothing_whichever_reading_panics() {
    // Half-open: a probe (read at admission, its failure at its end) and
    // a refusal (read at admission).
    layer_readings(|| consecutive(1), |b| b, |_| None, true, "half-open").await;
    // Closed with a slow-call rule: both admitted and timed.
    layer_readings(slow_rule, |b| b, |_| None, false, "slow rule").await;
}

#[tokio::test(start_paused = true)]
async fn a_breaker_chained_with_a_limit_leaves_nothing_whichever_reading_panics() {
    fn chain() -> (CircuitBreaker, Bulkhead) {
        (consecutive(1), Bulkhead::new(2).unwrap())
    }
    layer_readings(chain, |p| &p.0, |p| Some(&p.1), true, "half-open, chained").await;
    fn slow_chain() -> (CircuitBreaker, Bulkhead) {
        (slow_rule(), Bulkhead::new(2).unwrap())
    }
    layer_readings(
        slow_chain,
        |p| &p.0,
        |p| Some(&p.1),
        false,
        "slow rule, chained",
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_chain_whose_later_stage_reads_a_panicking_clock_releases_the_earlier_ones() {
    // The limit admits without the time, the rate limit reads it (the one
    // reading the chain makes): a panic there gives the limit's permit back.
    use tenlives_engine::rate::Quota;
    let (clock, source) = Faulty::new();
    let upstream = Upstream::new();
    let layer = AdmissionLayer::with_classifier(
        (
            Bulkhead::new(1).unwrap(),
            RateLimiter::new(Quota::per_second(1_000).unwrap()),
        ),
        DefaultClassifier,
        source,
    );
    let svc = layer.layer(upstream.clone());
    clock.arm(0);
    assert!(panicked(send(&svc, 1)).await);
    clock.disarm();
    assert_eq!(layer.policy().0.in_flight(), 0, "the limit's permit leaked");
    assert_eq!(send(&svc, 2).await.unwrap().unwrap(), 2);
    assert_eq!(layer.policy().0.in_flight(), 0);
}
