//! The hedging layer on tokio's paused clock: when hedges are sent, which
//! answer wins, that losers are cancelled, that hedges and retries share one
//! budget with exact accounting (a property over random scenarios, with
//! random cancellations), and that no timer entry or attempt outlives a
//! request dropped or unwound at any await.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use proptest::prelude::*;
use tenlives_engine::latency::LatencyTracker;
use tenlives_engine::retry::{Backoff, RetryBudget, RetryBudgetConfig};
use tenlives_engine::time::Clock;
use tenlives_tokio::hedge::{HedgeDelay, HedgeLayer, HedgePolicy};
use tenlives_tokio::{RetryLayer, RetryPolicy, Timers, TokioClock};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// What call `n` does: answer after `ms`, successfully or not; panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    Answer { ms: u64, ok: bool },
    Panic,
    PanicInCall,
}

type Script = Arc<dyn Fn(usize) -> Plan + Send + Sync>;

/// A service whose `n`-th call follows `script(n)`; it counts its calls and
/// its futures alive, and checks that every value is polled ready before
/// it is called (a clone must be readied itself). `ready_after` calls
/// to a clone's `poll_ready` return `Pending` first (for hedges waiting on
/// readiness).
struct Scripted {
    script: Script,
    calls: Arc<AtomicUsize>,
    alive: Arc<AtomicUsize>,
    /// Hedge clones answer `Pending` this many times to `poll_ready`.
    ready_after: usize,
    pending_left: usize,
    ready: bool,
    /// Cloning panics while set.
    clone_panics: Arc<std::sync::atomic::AtomicBool>,
}

impl Scripted {
    fn new(script: impl Fn(usize) -> Plan + Send + Sync + 'static) -> Self {
        Scripted {
            script: Arc::new(script),
            calls: Arc::new(AtomicUsize::new(0)),
            alive: Arc::new(AtomicUsize::new(0)),
            ready_after: 0,
            pending_left: 0,
            ready: false,
            clone_panics: Arc::default(),
        }
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn alive(&self) -> usize {
        self.alive.load(Ordering::SeqCst)
    }
}

/// A clone shares the script and counters but not the readiness: it must
/// be polled ready itself, `ready_after` times.
impl Clone for Scripted {
    fn clone(&self) -> Self {
        assert!(
            !self.clone_panics.load(Ordering::SeqCst),
            "the clone panicked"
        );
        Scripted {
            script: Arc::clone(&self.script),
            calls: Arc::clone(&self.calls),
            alive: Arc::clone(&self.alive),
            ready_after: self.ready_after,
            pending_left: self.ready_after,
            ready: false,
            clone_panics: Arc::clone(&self.clone_panics),
        }
    }
}

struct Attempt {
    sleep: Pin<Box<tokio::time::Sleep>>,
    plan: Plan,
    n: usize,
    alive: Arc<AtomicUsize>,
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.alive.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Future for Attempt {
    type Output = Result<usize, usize>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.plan {
            Plan::Panic => panic!("the attempt panicked"),
            Plan::PanicInCall => unreachable!(),
            Plan::Answer { ok, .. } => {
                std::task::ready!(self.sleep.as_mut().poll(cx));
                Poll::Ready(if ok { Ok(self.n) } else { Err(self.n) })
            }
        }
    }
}

impl Service<u32> for Scripted {
    type Response = usize;
    type Error = usize;
    type Future = Attempt;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), usize>> {
        if self.pending_left > 0 {
            self.pending_left -= 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: u32) -> Attempt {
        assert!(self.ready, "called without being polled ready");
        self.ready = false;
        self.pending_left = self.ready_after;
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let plan = (self.script)(n);
        let ms = match plan {
            Plan::Answer { ms, .. } => ms,
            Plan::Panic => 0,
            Plan::PanicInCall => panic!("the service's call panicked"),
        };
        self.alive.fetch_add(1, Ordering::SeqCst);
        Attempt {
            sleep: Box::pin(tokio::time::sleep(Duration::from_millis(ms))),
            plan,
            n,
            alive: Arc::clone(&self.alive),
        }
    }
}

fn ok(ms: u64) -> Plan {
    Plan::Answer { ms, ok: true }
}
fn fail(ms: u64) -> Plan {
    Plan::Answer { ms, ok: false }
}

fn budget() -> Arc<RetryBudget> {
    Arc::new(RetryBudget::new(RetryBudgetConfig::default()))
}

/// No reserve, no ratio: every hedge is refused.
fn empty_budget() -> Arc<RetryBudget> {
    Arc::new(RetryBudget::new(
        RetryBudgetConfig::builder()
            .ratio(0.0)
            .min_per_second(0)
            .build()
            .unwrap(),
    ))
}

/// A hedge layer on its own budget, hedging every request.
type Layer0 = HedgeLayer<Arc<RetryBudget>, fn(&u32) -> bool>;

const DELAY: Duration = Duration::from_millis(50);
/// The wheel's tick: a hedge goes at most this late.
const TICK: Duration = Duration::from_millis(1);

fn fixed_layer(budget: Arc<RetryBudget>) -> Layer0 {
    HedgeLayer::new(HedgePolicy::new(
        HedgeDelay::fixed(DELAY),
        budget,
        (|_: &u32| true) as fn(&u32) -> bool,
    ))
}

/// A slow first attempt is hedged after the delay (within a tick); the
/// hedge wins; the first attempt is dropped before the answer returns.
#[tokio::test(start_paused = true)]
async fn a_slow_call_is_hedged_and_the_loser_cancelled() {
    let backend = Scripted::new(|n| if n == 0 { ok(1000) } else { ok(10) });
    let layer = fixed_layer(budget());
    let mut svc = layer.layer(backend.clone());
    let start = Instant::now();
    let got = svc.ready().await.unwrap().call(1).await;
    assert_eq!(got, Ok(1));
    let took = start.elapsed();
    assert!(took >= DELAY + Duration::from_millis(10), "{took:?}");
    assert!(took <= DELAY + TICK + Duration::from_millis(10), "{took:?}");
    assert_eq!(backend.calls(), 2);
    assert_eq!(backend.alive(), 0, "the slow first attempt was cancelled");
    let stats = layer.stats();
    assert_eq!(
        (stats.requests, stats.hedges, stats.wins, stats.refused),
        (1, 1, 1, 0)
    );
    let counts = layer.budget().counts(TokioClock::new().now());
    assert_eq!((counts.deposits, counts.withdrawals), (1, 1));
}

/// An answer before the delay sends no hedge and spends nothing.
#[tokio::test(start_paused = true)]
async fn a_fast_call_is_not_hedged() {
    let backend = Scripted::new(|_| ok(49));
    let layer = fixed_layer(budget());
    let mut svc = layer.layer(backend.clone());
    assert_eq!(svc.ready().await.unwrap().call(1).await, Ok(0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(backend.calls(), 1);
    assert_eq!(layer.stats().hedges, 0);
    assert_eq!(
        layer.budget().counts(TokioClock::new().now()).withdrawals,
        0
    );
}

/// A request the predicate calls non-idempotent is sent once, however slow.
#[tokio::test(start_paused = true)]
async fn a_non_idempotent_request_is_never_hedged() {
    let backend = Scripted::new(|_| ok(1000));
    let layer = HedgeLayer::new(HedgePolicy::new(
        HedgeDelay::fixed(DELAY),
        budget(),
        |req: &u32| *req != 13,
    ));
    let mut svc = layer.layer(backend.clone());
    assert_eq!(svc.ready().await.unwrap().call(13).await, Ok(0));
    assert_eq!(backend.calls(), 1);
    assert_eq!(
        svc.ready().await.unwrap().call(14).await,
        Ok(1),
        "the hedge won"
    );
    assert_eq!(backend.calls(), 3);
}

/// A failure with nothing else in flight ends the request at once: no
/// hedge is sent for it (retrying is the retry layer's job).
#[tokio::test(start_paused = true)]
async fn a_lone_failure_ends_the_request_at_once() {
    let backend = Scripted::new(|_| fail(20));
    let layer = fixed_layer(budget());
    let mut svc = layer.layer(backend.clone());
    let start = Instant::now();
    assert_eq!(svc.ready().await.unwrap().call(1).await, Err(0));
    assert_eq!(start.elapsed(), Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(backend.calls(), 1);
}

/// A failure while a hedge is in flight waits for it; the hedge's success
/// wins; when every attempt fails, the last failure is returned.
#[tokio::test(start_paused = true)]
async fn a_failure_waits_for_the_attempts_in_flight() {
    let backend = Scripted::new(|n| match n {
        0 => fail(80),  // fails after the hedge was sent
        1 => ok(100),   // the hedge: sent at 50, answers at 150
        2 => fail(60),  // second request: both fail, the hedge last
        _ => fail(100), //
    });
    let layer = fixed_layer(budget());
    let mut svc = layer.layer(backend.clone());
    let start = Instant::now();
    assert_eq!(svc.ready().await.unwrap().call(1).await, Ok(1));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(150) && took <= Duration::from_millis(151),
        "{took:?}"
    );
    assert_eq!(svc.ready().await.unwrap().call(1).await, Err(3));
    assert_eq!(backend.alive(), 0);
}

/// With `K = 3`, hedges go one delay apart, and no more than two.
#[tokio::test(start_paused = true)]
async fn k_attempts_one_delay_apart() {
    let sent_at = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = Arc::clone(&sent_at);
    let origin = Instant::now();
    let backend = Scripted::new(move |n| {
        record.lock().unwrap().push(origin.elapsed());
        if n == 2 { ok(30) } else { ok(10_000) }
    });
    let layer = fixed_layer(budget()).with_max_attempts::<3>();
    let mut svc = layer.layer(backend.clone());
    assert_eq!(svc.ready().await.unwrap().call(1).await, Ok(2));
    let at = sent_at.lock().unwrap().clone();
    assert_eq!(at.len(), 3);
    assert_eq!(at[0], Duration::ZERO);
    assert!(at[1] >= DELAY && at[1] <= DELAY + TICK, "{at:?}");
    assert!(
        at[2] >= at[1] + DELAY && at[2] <= at[1] + DELAY + TICK,
        "{at:?}"
    );
    assert_eq!(backend.alive(), 0, "both losers cancelled");
    assert_eq!(layer.stats().hedges, 2);
}

/// An empty budget refuses the hedge: it is not sent, and counted.
#[tokio::test(start_paused = true)]
async fn a_refused_hedge_is_not_sent() {
    let backend = Scripted::new(|_| ok(200));
    let layer = fixed_layer(empty_budget()).with_max_attempts::<4>();
    let mut svc = layer.layer(backend.clone());
    let start = Instant::now();
    assert_eq!(svc.ready().await.unwrap().call(1).await, Ok(0));
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert_eq!(backend.calls(), 1);
    let stats = layer.stats();
    assert_eq!(
        (stats.hedges, stats.refused),
        (0, 1),
        "one refusal ends the hedging"
    );
}

/// A clone that takes a while to be ready delays the hedge, which is
/// withdrawn only once it can be sent.
#[tokio::test(start_paused = true)]
async fn a_hedge_waits_for_the_clone_to_be_ready() {
    let mut backend = Scripted::new(|n| if n == 0 { ok(1000) } else { ok(10) });
    backend.ready_after = 3;
    let layer = fixed_layer(budget());
    let mut svc = layer.layer(backend.clone());
    assert_eq!(svc.ready().await.unwrap().call(1).await, Ok(1));
    let counts = layer.budget().counts(TokioClock::new().now());
    assert_eq!((counts.deposits, counts.withdrawals), (1, 1));
}

/// A quantile delay: after 100 answers of 100 ms, the hedge goes at the
/// 90th percentile's bucket bound (100 ms rounded up to its bucket, at most
/// 12.5 % more), not at the initial delay.
#[tokio::test(start_paused = true)]
async fn a_quantile_delay_follows_the_latency() {
    let backend = Scripted::new(|n| {
        if n < 100 {
            ok(100)
        } else if n == 100 {
            ok(10_000)
        } else {
            ok(1)
        }
    });
    let tracker = LatencyTracker::new(0.9, 50, 20).unwrap();
    let delay = HedgeDelay::quantile(
        tracker,
        Duration::from_secs(1),
        Duration::from_millis(5),
        Duration::from_secs(2),
    );
    let layer = HedgeLayer::new(HedgePolicy::new(delay, budget(), |_: &u32| true));
    let mut svc = layer.layer(backend.clone());
    assert_eq!(
        layer.delay().current(),
        Duration::from_secs(1),
        "the initial delay"
    );
    for _ in 0..100 {
        svc.ready().await.unwrap().call(1).await.unwrap();
    }
    let d = layer.delay().current();
    assert!(
        d >= Duration::from_millis(100) && d <= Duration::from_micros(112_500),
        "{d:?}"
    );
    let start = Instant::now();
    assert_eq!(svc.ready().await.unwrap().call(1).await, Ok(101));
    let took = start.elapsed();
    assert!(
        took >= d + Duration::from_millis(1) && took <= d + TICK + Duration::from_millis(1),
        "{took:?} for {d:?}"
    );
}

/// Retries and hedges on one budget: the retry layer around the hedge
/// layer deposits once per request; every retry and every hedge is one
/// withdrawal; calls downstream = deposits + withdrawals.
#[tokio::test(start_paused = true)]
async fn retries_and_hedges_share_the_retry_layers_budget() {
    // Every attempt is slow and fails: each request retries and hedges.
    let backend = Scripted::new(|_| fail(80));
    let retry = RetryLayer::new(RetryPolicy::new(
        Backoff::constant(Duration::from_millis(10))
            .unwrap()
            .with_max_retries(3),
        RetryBudget::new(
            RetryBudgetConfig::builder()
                .ratio(0.5)
                .min_per_second(0)
                .build()
                .unwrap(),
        ),
    ));
    let hedge = HedgeLayer::new(HedgePolicy::new(
        HedgeDelay::fixed(DELAY),
        retry.clone(),
        |_: &u32| true,
    ));
    let mut svc = retry.layer(hedge.layer(backend.clone()));
    for _ in 0..20 {
        assert!(svc.ready().await.unwrap().call(1).await.is_err());
    }
    let counts = retry.policy().budget().counts(TokioClock::new().now());
    assert_eq!(counts.deposits, 20);
    assert_eq!(backend.calls() as u64, counts.deposits + counts.withdrawals);
    assert!(
        counts.withdrawals <= 10,
        "{counts:?}: at most half the requests"
    );
    assert!(hedge.stats().hedges > 0 && hedge.stats().refused > 0);
}

/// Polls `fut` once with a no-op waker.
fn poll_once<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

/// Lets the paused clock move by `d` and the wheel's driver run.
async fn pass(d: Duration) {
    tokio::time::advance(d).await;
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
}

/// A layer on a wheel of one entry, so that an entry not given back shows
/// as a fallback to a tokio sleep on the next request.
fn one_entry_layer(budget: Arc<RetryBudget>) -> (Layer0, Timers) {
    let clock = TokioClock::new();
    let timers = Timers::new(1, TICK, clock).unwrap();
    let layer = HedgeLayer::new(
        HedgePolicy::new(
            HedgeDelay::fixed(DELAY),
            budget,
            (|_: &u32| true) as fn(&u32) -> bool,
        )
        .with_clock(clock)
        .with_timers(timers.clone()),
    );
    (layer, timers)
}

/// After a case: no attempt alive, the wheel's entry free (the next request
/// takes it, not a fallback), withdrawals = hedges sent = calls - requests.
async fn nothing_held(backend: &Scripted, layer: &Layer0, timers: &Timers) {
    assert_eq!(backend.alive(), 0, "an attempt outlived its request");
    let counts = layer.budget().counts(TokioClock::new().now());
    let stats = layer.stats();
    assert_eq!(counts.withdrawals, stats.hedges);
    assert_eq!(backend.calls() as u64, counts.deposits + counts.withdrawals);
    let before = timers.fallbacks();
    let mut probe = layer.layer(Scripted::new(|_| ok(1000)));
    let mut fut = pin!(probe.ready().await.unwrap().call(1));
    assert!(poll_once(fut.as_mut()).is_pending());
    assert_eq!(
        timers.fallbacks(),
        before,
        "the wheel's entry was not given back"
    );
}

/// Drop at every await: before the first poll, waiting for the delay,
/// waiting for the clone to be ready, with two attempts in flight.
#[tokio::test(start_paused = true)]
async fn dropped_at_every_await_holds_nothing() {
    for stage in 0..4 {
        let backend = Scripted::new(|_| ok(10_000));
        // The service the layer wraps: ready at once; at stage 2 its clones
        // (the hedge's) never are.
        let mut wrapped = backend.clone();
        if stage == 2 {
            wrapped.ready_after = usize::MAX;
        }
        let (layer, timers) = one_entry_layer(budget());
        let mut svc = layer.layer(wrapped);
        {
            let mut fut = pin!(svc.ready().await.unwrap().call(1));
            if stage >= 1 {
                assert!(poll_once(fut.as_mut()).is_pending());
            }
            if stage >= 2 {
                pass(DELAY + TICK).await;
                assert!(poll_once(fut.as_mut()).is_pending());
            }
            let expect = if stage == 3 { 2 } else { 1 };
            assert_eq!(backend.calls(), expect, "stage {stage}");
        }
        nothing_held(&backend, &layer, &timers).await;
    }
}

/// A panic in the first attempt, in the hedge, in the service's `call` of
/// the hedge, and in the success predicate: it reaches the caller, and
/// nothing is held after.
#[tokio::test(start_paused = true)]
async fn a_panic_at_every_step_holds_nothing() {
    let plans: [fn(usize) -> Plan; 3] = [
        |_| Plan::Panic,
        |n| if n == 0 { ok(10_000) } else { Plan::Panic },
        |n| {
            if n == 0 {
                ok(10_000)
            } else {
                Plan::PanicInCall
            }
        },
    ];
    for plan in plans {
        let backend = Scripted::new(plan);
        let (layer, timers) = one_entry_layer(budget());
        let mut svc = layer.layer(backend.clone());
        let fut = svc.ready().await.unwrap().call(1);
        let mut fut = Box::pin(fut);
        let first = catch_unwind(AssertUnwindSafe(|| poll_once(fut.as_mut())));
        if first.is_ok() {
            pass(DELAY + TICK).await;
            assert!(catch_unwind(AssertUnwindSafe(|| poll_once(fut.as_mut()))).is_err());
        }
        drop(fut);
        nothing_held(&backend, &layer, &timers).await;
    }
    // The success predicate panics on the hedge's answer.
    let backend = Scripted::new(|n| if n == 0 { ok(10_000) } else { ok(1) });
    let clock = TokioClock::new();
    let timers = Timers::new(1, TICK, clock).unwrap();
    let layer = HedgeLayer::new(
        HedgePolicy::new(HedgeDelay::fixed(DELAY), budget(), |_: &u32| true)
            .success_if(|r: &Result<usize, usize>| *r != Ok(1) || panic!("the predicate panicked"))
            .with_timers(timers.clone()),
    );
    let mut svc = layer.layer(backend.clone());
    let mut fut = Box::pin(svc.ready().await.unwrap().call(1));
    assert!(poll_once(fut.as_mut()).is_pending());
    pass(DELAY + TICK).await;
    assert!(poll_once(fut.as_mut()).is_pending(), "the hedge was sent");
    pass(Duration::from_millis(2)).await;
    assert!(catch_unwind(AssertUnwindSafe(|| poll_once(fut.as_mut()))).is_err());
    drop(fut);
    assert_eq!(backend.alive(), 0);
    let counts = layer.budget().counts(clock.now());
    assert_eq!((counts.deposits, counts.withdrawals), (1, 1));
}

/// A service clone that panics in `call` (taken for the hedge) leaves
/// nothing deposited and nothing called; so does a panicking idempotency
/// predicate.
#[tokio::test(start_paused = true)]
async fn a_panic_before_the_first_call_deposits_nothing() {
    let backend = Scripted::new(|_| ok(1));
    let (layer, timers) = one_entry_layer(budget());
    let mut svc = layer.layer(backend.clone());
    svc.ready().await.unwrap();
    backend.clone_panics.store(true, Ordering::SeqCst);
    assert!(catch_unwind(AssertUnwindSafe(|| drop(svc.call(1)))).is_err());
    backend.clone_panics.store(false, Ordering::SeqCst);
    assert_eq!(backend.calls(), 0);
    assert_eq!(layer.budget().counts(TokioClock::new().now()).deposits, 0);
    nothing_held(&backend, &layer, &timers).await;

    let layer = HedgeLayer::new(HedgePolicy::new(
        HedgeDelay::fixed(DELAY),
        budget(),
        |_: &u32| -> bool { panic!("the predicate panicked") },
    ));
    let mut svc = layer.layer(backend.clone());
    svc.ready().await.unwrap();
    assert!(catch_unwind(AssertUnwindSafe(|| drop(svc.call(1)))).is_err());
    assert_eq!(backend.calls(), 0);
    assert_eq!(layer.budget().counts(TokioClock::new().now()).deposits, 0);
}

/// One scenario of the conservation property: requests with scripted
/// attempt latencies and outcomes, some dropped after a while.
#[derive(Clone, Debug)]
struct Scenario {
    /// Per attempt: (latency in ms, success).
    attempts: Vec<(u64, bool)>,
    /// Per request: dropped after this many ms (None: run to the end).
    drops: Vec<Option<u64>>,
    delay_ms: u64,
    ratio_pct: u32,
    reserve: u32,
    retries: usize,
    /// The retry layer's backoff delay (long ones make drops during it
    /// likely).
    backoff_ms: u64,
    k3: bool,
    /// The retry layer around the hedge layer, sharing its budget; else the
    /// hedge layer alone on a budget of its own.
    with_retry: bool,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop::collection::vec((0u64..200, prop::bool::weighted(0.6)), 1..64),
        prop::collection::vec(prop::option::weighted(0.2, 0u64..300), 1..24),
        1u64..100,
        0u32..=100,
        0u32..3,
        (0usize..3, 1u64..100),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                attempts,
                drops,
                delay_ms,
                ratio_pct,
                reserve,
                (retries, backoff_ms),
                k3,
                with_retry,
            )| {
                Scenario {
                    attempts,
                    drops,
                    delay_ms,
                    ratio_pct,
                    reserve,
                    retries,
                    backoff_ms,
                    k3,
                    with_retry,
                }
            },
        )
}

/// Runs a scenario: the retry layer around the hedge layer, on one budget
/// whose window holds the whole run. Returns (calls, deposits, withdrawals,
/// requests, bound), where the bound is what the budget may grant.
fn run(s: &Scenario) -> (u64, u64, u64, u64, u64, usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let plans = s.attempts.clone();
        let backend = Scripted::new(move |n| {
            let (ms, ok) = plans[n % plans.len()];
            Plan::Answer { ms, ok }
        });
        let config = RetryBudgetConfig::builder()
            .ratio(f64::from(s.ratio_pct) / 100.0)
            .min_per_second(s.reserve)
            .window(Duration::from_secs(3600), 1)
            .build()
            .unwrap();
        let retry = RetryLayer::new(RetryPolicy::new(
            Backoff::constant(Duration::from_millis(s.backoff_ms))
                .unwrap()
                .with_max_retries(s.retries as u32),
            RetryBudget::new(config),
        ));
        let own = Arc::new(RetryBudget::new(config));
        let delay = || HedgeDelay::fixed(Duration::from_millis(s.delay_ms));
        let shared = HedgeLayer::new(HedgePolicy::new(delay(), retry.clone(), |_: &u32| true));
        let alone = HedgeLayer::new(HedgePolicy::new(delay(), Arc::clone(&own), |_: &u32| true));
        let mut tasks = Vec::new();
        let (k3, with_retry) = (s.k3, s.with_retry);
        for drop_after in s.drops.iter().copied() {
            let backend = backend.clone();
            let retry = retry.clone();
            let (shared, alone) = (shared.clone(), alone.clone());
            tasks.push(tokio::spawn(async move {
                let call = async move {
                    let _ = match (with_retry, k3) {
                        (true, true) => {
                            let hedge = shared.with_max_attempts::<3>();
                            retry.layer(hedge.layer(backend)).oneshot(1).await
                        }
                        (true, false) => retry.layer(shared.layer(backend)).oneshot(1).await,
                        (false, true) => {
                            let hedge = alone.with_max_attempts::<3>();
                            hedge.layer(backend).oneshot(1).await
                        }
                        (false, false) => alone.layer(backend).oneshot(1).await,
                    };
                };
                match drop_after {
                    None => call.await,
                    Some(ms) => {
                        let _ = tokio::time::timeout(Duration::from_millis(ms), call).await;
                    }
                }
            }));
            tokio::time::sleep(Duration::from_millis(7)).await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        let now = TokioClock::new().now();
        let counts = if with_retry {
            retry.policy().budget().counts(now)
        } else {
            own.counts(now)
        };
        let bound = counts.deposits * u64::from(s.ratio_pct) / 100 + u64::from(s.reserve) * 3600;
        (
            backend.calls() as u64,
            counts.deposits,
            counts.withdrawals,
            s.drops.len() as u64,
            bound,
            backend.alive(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Conservation: every call downstream is a deposit (a request) or a
    /// withdrawal (a retry or a hedge), whatever the latencies and
    /// outcomes, and — for the hedge layer on its own budget — whatever the
    /// cancellations; withdrawals stay within what the budget grants; no
    /// attempt outlives its request. Exact in every case, requests dropped
    /// during the retry layer's backoff included: the retry layer withdraws
    /// when it sends the retry, not when it decides to wait for it.
    #[test]
    fn hedges_and_retries_conserve_the_budget(s in scenario()) {
        let (calls, deposits, withdrawals, requests, bound, alive) = run(&s);
        prop_assert_eq!(deposits, requests);
        prop_assert_eq!(calls, deposits + withdrawals);
        prop_assert!(withdrawals <= bound, "{} > {}", withdrawals, bound);
        prop_assert_eq!(alive, 0);
    }
}
