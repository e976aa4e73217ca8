//! Hedged requests as a tower layer: a second attempt after a delay, the
//! first success wins, and hedges draw on the same budget as retries.
//!
//! [`HedgeLayer`] sends a request; if no answer has come after the hedge
//! delay, it sends the same request again (a *hedge*) to a clone of the
//! service, keeping both in flight, and so on up to `K` attempts (`K = 2`
//! unless [`HedgeLayer::with_max_attempts`] says otherwise). The first
//! attempt to succeed wins: the others are dropped (cancelled) before the
//! answer is returned. A failure does not end the request while another
//! attempt is in flight; once none is, the last failure is returned — at
//! once, without waiting to hedge: hedging is for slowness, retrying (a
//! [`RetryLayer`] around this one) for failure.
//!
//! - **Delay**: fixed ([`HedgeDelay::fixed`]), or a quantile of recent
//!   latencies ([`HedgeDelay::quantile`]) kept by the engine's lock-free
//!   [`LatencyTracker`] (read in one load per request) and clamped to a
//!   range, with a fixed delay until enough latencies were seen.
//! - **Idempotency** is the caller's declaration: a predicate on the
//!   request. A request it refuses is sent once and never hedged (nor
//!   cloned).
//! - **One budget for hedges and retries** ([`AttemptBudget`]): every hedge
//!   withdraws from a [`RetryBudget`], the same one a retry layer or a
//!   [`StackLayer`]'s retry stage withdraws from, so under
//!   failure hedges and retries together stay within the budget's share of
//!   the traffic and cannot multiply the load. A hedge is withdrawn at the
//!   moment it is sent — after the service clone is ready, with no await
//!   between the withdrawal and the call — so every withdrawal is one call
//!   downstream: attempts sent = deposits + withdrawals, exactly
//!   (`tests/hedge.rs` checks it as a property). A refused hedge is not
//!   sent, and the request sends no other.
//! - **Timers**: the hedge delay is an entry of a shared timer wheel
//!   ([`Timers`]), set only when the first attempt returns `Pending`; no
//!   tokio `Sleep` per request (unless the wheel is full), and a request
//!   allocates nothing beyond the clones of the service and of the request
//!   that a hedge needs, taken at `call` for an idempotent request (none
//!   with `K = 1`).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tenlives_engine::retry::{RetryBudget, RetryBudgetConfig};
//! use tenlives_tokio::hedge::{HedgeDelay, HedgeLayer, HedgePolicy};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let budget = Arc::new(RetryBudget::new(RetryBudgetConfig::default()));
//! let policy = HedgePolicy::new(HedgeDelay::fixed(Duration::from_millis(50)), budget, |_: &u32| true);
//! let layer = HedgeLayer::new(policy);
//! // The first attempt takes a second; the hedge, sent after 50 ms, 10 ms.
//! let sent = Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let counter = Arc::clone(&sent);
//! let mut svc = layer.layer(service_fn(move |x: u32| {
//!     let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
//!     async move {
//!         let took = if n == 0 { 1000 } else { 10 };
//!         tokio::time::sleep(Duration::from_millis(took)).await;
//!         Ok::<_, std::io::Error>((x, n))
//!     }
//! }));
//! let started = tokio::time::Instant::now();
//! assert_eq!(svc.ready().await.unwrap().call(7).await.unwrap(), (7, 1)); // the hedge won
//! assert!(started.elapsed() < Duration::from_millis(70));
//! let stats = layer.stats();
//! assert_eq!((stats.requests, stats.hedges, stats.wins), (1, 1, 1));
//! # }
//! ```
//!
//! # Panics
//!
//! A request that is hedged sleeps on the timer wheel, whose driver task
//! needs a tokio runtime with the time driver enabled.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tenlives_engine::events::EventSink;
use tenlives_engine::latency::LatencyTracker;
use tenlives_engine::retry::RetryBudget;
use tenlives_engine::time::{Clock, Timestamp};
use tenlives_engine::timer::TimerEntry;
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

use crate::clock::TokioClock;
use crate::retry::{RetryLayer, RetryPolicy};
use crate::span::{CallSpan, call_span};
use crate::stack::StackLayer;
use crate::wheel::Timers;

/// Where a hedge's budget comes from: one [`RetryBudget`] shared with the
/// retries, so that hedges and retries together stay within it.
///
/// - `Arc<RetryBudget>`: the hedge layer owns the accounting: it deposits
///   once per request and withdraws per hedge. Give the same `Arc` to
///   several hedge layers to share it.
/// - [`RetryLayer`] or a [`StackLayer`] with a retry stage: the hedges
///   withdraw from that layer's budget, and the retry layer, put *around*
///   the hedge layer, deposits once per request (the hedge layer deposits
///   nothing, so a retried request is counted once, and every attempt it
///   sends — retry or hedge — is one withdrawal).
pub trait AttemptBudget {
    /// A request starts at `now` (a no-op where another layer deposits).
    fn deposit(&self, now: Timestamp);
    /// Whether one more attempt is affordable at `now` (and spends it).
    fn try_withdraw(&self, now: Timestamp) -> bool;
}

impl<Snk: EventSink> AttemptBudget for Arc<RetryBudget<Snk>> {
    #[inline]
    fn deposit(&self, now: Timestamp) {
        RetryBudget::deposit(self, now);
    }
    #[inline]
    fn try_withdraw(&self, now: Timestamp) -> bool {
        RetryBudget::try_withdraw(self, now)
    }
}

impl<C, Snk: EventSink> AttemptBudget for RetryLayer<C, Snk> {
    #[inline]
    fn deposit(&self, _now: Timestamp) {}
    #[inline]
    fn try_withdraw(&self, now: Timestamp) -> bool {
        self.policy().budget().try_withdraw(now)
    }
}

impl<K, C, Snk: EventSink, A> AttemptBudget for StackLayer<K, RetryPolicy<C, Snk>, A> {
    #[inline]
    fn deposit(&self, _now: Timestamp) {}
    #[inline]
    fn try_withdraw(&self, now: Timestamp) -> bool {
        self.policies().retry().budget().try_withdraw(now)
    }
}

/// Whether an attempt's result is a success, which ends the request.
///
/// Implemented by [`OnOk`] and by every closure `Fn(&Result<Res, E>) -> bool`.
pub trait HedgeSuccess<Res, E> {
    /// Whether `result` wins the race.
    fn is_success(&self, result: &Result<Res, E>) -> bool;
}

/// `Ok` wins; an `Err` waits for the other attempts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OnOk;

impl<Res, E> HedgeSuccess<Res, E> for OnOk {
    #[inline]
    fn is_success(&self, result: &Result<Res, E>) -> bool {
        result.is_ok()
    }
}

impl<Res, E, F: Fn(&Result<Res, E>) -> bool> HedgeSuccess<Res, E> for F {
    #[inline]
    fn is_success(&self, result: &Result<Res, E>) -> bool {
        self(result)
    }
}

/// How long after an attempt the next hedge is sent.
#[derive(Debug)]
pub struct HedgeDelay {
    /// The delay while no quantile is known (or always, for a fixed delay).
    fixed: Duration,
    /// The quantile tracker and the range its delay is clamped to.
    tracked: Option<(LatencyTracker, Duration, Duration)>,
}

impl HedgeDelay {
    /// Always `delay`.
    pub fn fixed(delay: Duration) -> Self {
        HedgeDelay {
            fixed: delay,
            tracked: None,
        }
    }

    /// The quantile `tracker` keeps of the requests' latencies (from `call`
    /// to the winning answer), clamped to `[min, max]`; `initial` until the
    /// tracker knows one.
    pub fn quantile(
        tracker: LatencyTracker,
        initial: Duration,
        min: Duration,
        max: Duration,
    ) -> Self {
        HedgeDelay {
            fixed: initial,
            tracked: Some((tracker, min, max.max(min))),
        }
    }

    /// The delay for a request starting now: one load for a quantile.
    #[inline]
    pub fn current(&self) -> Duration {
        match &self.tracked {
            None => self.fixed,
            Some((tracker, min, max)) => match tracker.current() {
                Some(q) => q.clamp(*min, *max),
                None => self.fixed,
            },
        }
    }

    /// The tracker of a quantile delay.
    pub fn tracker(&self) -> Option<&LatencyTracker> {
        self.tracked.as_ref().map(|(t, _, _)| t)
    }
}

/// What a [`HedgeLayer`] counted since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HedgeStats {
    /// Requests called.
    pub requests: u64,
    /// Hedges sent (each one withdrawal from the budget).
    pub hedges: u64,
    /// Hedges the budget refused (not sent).
    pub refused: u64,
    /// Requests answered by a hedge rather than by their first attempt.
    pub wins: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    hedges: AtomicU64,
    refused: AtomicU64,
    wins: AtomicU64,
}

/// How requests are hedged: the delay, the budget, which requests may be
/// sent twice, and what counts as a success. Given to [`HedgeLayer::new`].
pub struct HedgePolicy<B, I, P = OnOk> {
    delay: HedgeDelay,
    budget: B,
    idempotent: I,
    success: P,
    clock: TokioClock,
    timers: Option<Timers>,
}

impl<B, I, P> fmt::Debug for HedgePolicy<B, I, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgePolicy")
            .field("delay", &self.delay)
            .finish_non_exhaustive()
    }
}

impl<B: AttemptBudget, I> HedgePolicy<B, I, OnOk> {
    /// Hedges requests that `idempotent` accepts after `delay`, each hedge
    /// paid from `budget`; `Ok` wins. On a [`TokioClock`] made now and a
    /// timer wheel of its own (see [`with_timers`](Self::with_timers)).
    pub fn new(delay: HedgeDelay, budget: B, idempotent: I) -> Self {
        HedgePolicy {
            delay,
            budget,
            idempotent,
            success: OnOk,
            clock: TokioClock::new(),
            timers: None,
        }
    }
}

impl<B, I, P> HedgePolicy<B, I, P> {
    /// The same policy, ending the request on the first result `success`
    /// accepts (see [`HedgeSuccess`]).
    pub fn success_if<P2>(self, success: P2) -> HedgePolicy<B, I, P2> {
        HedgePolicy {
            delay: self.delay,
            budget: self.budget,
            idempotent: self.idempotent,
            success,
            clock: self.clock,
            timers: self.timers,
        }
    }

    /// Times the delays on `clock`.
    #[must_use]
    pub fn with_clock(mut self, clock: TokioClock) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the hedge delays on `timers` (say, the wheel of the
    /// [`StackLayer`] around this layer:
    /// [`Policies::timers`](crate::Policies::timers)) instead of a wheel of
    /// its own.
    #[must_use]
    pub fn with_timers(mut self, timers: Timers) -> Self {
        self.timers = Some(timers);
        self
    }
}

struct Shared<B, I, P> {
    delay: HedgeDelay,
    budget: B,
    idempotent: I,
    success: P,
    clock: TokioClock,
    timers: Timers,
    counters: Counters,
}

/// A tower [`Layer`] that hedges slow requests. See the
/// [module documentation](self). `K` is the most attempts a request sends
/// (its first and `K - 1` hedges).
pub struct HedgeLayer<B, I, P = OnOk, const K: usize = 2> {
    shared: Arc<Shared<B, I, P>>,
}

impl<B, I, P, const K: usize> Clone for HedgeLayer<B, I, P, K> {
    fn clone(&self) -> Self {
        HedgeLayer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<B, I, P, const K: usize> fmt::Debug for HedgeLayer<B, I, P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeLayer")
            .field("max_attempts", &K)
            .field("delay", &self.shared.delay)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<B, I, P> HedgeLayer<B, I, P, 2> {
    /// Hedges as `policy` says, one hedge at most per request.
    pub fn new(policy: HedgePolicy<B, I, P>) -> Self {
        let timers = match policy.timers {
            Some(timers) => timers,
            None => Timers::with_defaults(policy.clock),
        };
        HedgeLayer {
            shared: Arc::new(Shared {
                delay: policy.delay,
                budget: policy.budget,
                idempotent: policy.idempotent,
                success: policy.success,
                clock: policy.clock,
                timers,
                counters: Counters::default(),
            }),
        }
    }
}

impl<B, I, P, const K: usize> HedgeLayer<B, I, P, K> {
    /// The same layer sending at most `K2` attempts per request: the first
    /// and `K2 - 1` hedges, each `delay` after the one before. `K2 = 1`
    /// never hedges. Call it before making services: it shares the policy
    /// and counters with `self`.
    pub fn with_max_attempts<const K2: usize>(self) -> HedgeLayer<B, I, P, K2> {
        const { assert!(K2 >= 1, "a request sends at least one attempt") };
        HedgeLayer {
            shared: self.shared,
        }
    }

    /// What the layer counted so far.
    pub fn stats(&self) -> HedgeStats {
        self.shared.counters.snapshot()
    }

    /// The hedge delay (e.g. to read its tracker).
    pub fn delay(&self) -> &HedgeDelay {
        &self.shared.delay
    }

    /// The budget hedges draw on.
    pub fn budget(&self) -> &B {
        &self.shared.budget
    }
}

impl Counters {
    fn snapshot(&self) -> HedgeStats {
        // ordering: Relaxed; statistics, each read on its own.
        HedgeStats {
            requests: self.requests.load(Ordering::Relaxed),
            hedges: self.hedges.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            wins: self.wins.load(Ordering::Relaxed),
        }
    }
}

impl<S, B, I, P, const K: usize> Layer<S> for HedgeLayer<B, I, P, K> {
    type Service = Hedge<S, B, I, P, K>;

    fn layer(&self, inner: S) -> Self::Service {
        Hedge {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// A service whose slow requests are hedged. Made by [`HedgeLayer`].
///
/// Its error is the wrapped service's own.
pub struct Hedge<S, B, I, P = OnOk, const K: usize = 2> {
    inner: S,
    shared: Arc<Shared<B, I, P>>,
}

impl<S: Clone, B, I, P, const K: usize> Clone for Hedge<S, B, I, P, K> {
    fn clone(&self) -> Self {
        Hedge {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, B, I, P, const K: usize> fmt::Debug for Hedge<S, B, I, P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hedge")
            .field("inner", &self.inner)
            .field("max_attempts", &K)
            .finish_non_exhaustive()
    }
}

impl<S, Req, B, I, P, const K: usize> Service<Req> for Hedge<S, B, I, P, K>
where
    S: Service<Req> + Clone,
    Req: Clone,
    B: AttemptBudget,
    I: Fn(&Req) -> bool,
    P: HedgeSuccess<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = HedgeFuture<S, Req, B, I, P, K>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let span = call_span!("tenlives.hedge", "hedge");
        let shared = &*self.shared;
        let hedged = K > 1 && (shared.idempotent)(&req);
        // The clones first: one that panics leaves no deposit without a call.
        let spare = hedged.then(|| (self.inner.clone(), req.clone()));
        let now = shared.clock.now();
        shared.budget.deposit(now);
        // ordering: Relaxed; a statistic.
        shared.counters.requests.fetch_add(1, Ordering::Relaxed);
        let first = span.in_scope(|| self.inner.call(req));
        let mut attempts: [Option<S::Future>; K] = std::array::from_fn(|_| None);
        attempts[0] = Some(first);
        let delay = shared.delay.current();
        HedgeFuture {
            attempts,
            fallback: None,
            held: Held {
                shared: Arc::clone(&self.shared),
                alarm: None,
            },
            spare,
            started: now,
            delay,
            next: match (hedged, delay.is_zero()) {
                (false, _) => Next::Never,
                // No delay: the hedge goes with the first poll.
                (true, true) => Next::Readying,
                (true, false) => Next::Wait(now.saturating_add(delay)),
            },
            sent: 1,
            in_flight: 1,
            failure: None,
            span,
        }
    }
}

/// What the request does next about hedging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// Send a hedge at this time (the wheel entry is set on the first poll
    /// that finds every attempt pending).
    Wait(Timestamp),
    /// The delay is over: waiting for the service clone to be ready.
    Readying,
    /// No more hedges: not idempotent, `K` sent, refused, or the clone
    /// failed to get ready.
    Never,
}

/// The request's share of the layer and its wheel entry, given back on drop
/// (the request answered, cancelled, or unwound by a panic).
struct Held<B, I, P> {
    shared: Arc<Shared<B, I, P>>,
    alarm: Option<TimerEntry>,
}

impl<B, I, P> Drop for Held<B, I, P> {
    fn drop(&mut self) {
        if let Some(entry) = self.alarm.take() {
            self.shared.timers.cancel(entry);
        }
    }
}

/// The response future of [`Hedge`]: the attempts in flight (at most `K`),
/// the hedge timer, and the clones of the service and of the request for
/// the hedges.
#[must_use = "futures do nothing unless polled"]
pub struct HedgeFuture<S: Service<Req>, Req, B, I, P, const K: usize> {
    /// Structurally pinned: attempt `i` is the `i`-th sent; a slot is only
    /// ever set in place (to `Some` when sent, to `None` when it ended or
    /// lost), never moved out.
    attempts: [Option<S::Future>; K],
    /// Structurally pinned: the tokio `Sleep` of a hedge delay when the
    /// wheel was full.
    fallback: Option<Sleep>,
    held: Held<B, I, P>,
    spare: Option<(S, Req)>,
    started: Timestamp,
    delay: Duration,
    next: Next,
    sent: usize,
    in_flight: usize,
    failure: Option<Result<S::Response, S::Error>>,
    span: CallSpan,
}

impl<S: Service<Req>, Req, B, I, P, const K: usize> fmt::Debug for HedgeFuture<S, Req, B, I, P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeFuture")
            .field("sent", &self.sent)
            .field("in_flight", &self.in_flight)
            .field("next", &self.next)
            .field("delay", &self.delay)
            .finish_non_exhaustive()
    }
}

impl<S, Req, B, I, P, const K: usize> Future for HedgeFuture<S, Req, B, I, P, K>
where
    S: Service<Req>,
    Req: Clone,
    B: AttemptBudget,
    P: HedgeSuccess<S::Response, S::Error>,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `attempts` and `fallback` are structurally pinned: they
        // are only reached below through `Pin::new_unchecked` and changed
        // with `Pin::set` (dropping in place), never moved, and `Drop` is
        // implemented by `Held` only, which touches neither. Every other
        // field is never pinned and may be moved freely.
        let this = unsafe { self.get_unchecked_mut() };
        // Exited before `finish`, which needs the whole future.
        let entered = this.span.enter();
        loop {
            for i in 0..this.sent.min(K) {
                // SAFETY: see above; slot `i` of the pinned array.
                let mut slot = unsafe { Pin::new_unchecked(&mut this.attempts[i]) };
                let Some(attempt) = slot.as_mut().as_pin_mut() else {
                    continue;
                };
                let Poll::Ready(result) = attempt.poll(cx) else {
                    continue;
                };
                slot.set(None);
                this.in_flight -= 1;
                if this.held.shared.success.is_success(&result) {
                    drop(entered);
                    this.finish(i);
                    this.span.ended(&result);
                    return Poll::Ready(result);
                }
                this.failure = Some(result);
            }
            if this.in_flight == 0 {
                drop(entered);
                this.finish(usize::MAX);
                if let Some(failure) = this.failure.take() {
                    this.span.ended(&failure);
                    return Poll::Ready(failure);
                }
                // Polled after completion: the caller's bug; stay pending.
                return Poll::Pending;
            }
            // SAFETY: see above.
            let mut fallback = unsafe { Pin::new_unchecked(&mut this.fallback) };
            let shared = &*this.held.shared;
            match this.next {
                Next::Never => return Poll::Pending,
                Next::Wait(at) => {
                    if this.held.alarm.is_none() && fallback.is_none() {
                        shared
                            .timers
                            .set(&mut this.held.alarm, fallback.as_mut(), at, cx);
                    }
                    std::task::ready!(shared.timers.poll(
                        &mut this.held.alarm,
                        fallback.as_mut(),
                        cx
                    ));
                    shared.timers.clear(&mut this.held.alarm, fallback);
                    this.next = Next::Readying;
                }
                Next::Readying => {
                    let Some((service, request)) = this.spare.as_mut() else {
                        this.next = Next::Never;
                        continue;
                    };
                    match std::task::ready!(service.poll_ready(cx)) {
                        Err(_) => {
                            // The clone cannot take a hedge; the attempts in
                            // flight go on.
                            this.next = Next::Never;
                            this.spare = None;
                        }
                        Ok(()) => {
                            let now = shared.clock.now();
                            if !shared.budget.try_withdraw(now) {
                                // ordering: Relaxed; a statistic.
                                shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                                this.next = Next::Never;
                                this.spare = None;
                                continue;
                            }
                            // ordering: Relaxed; a statistic. Counted before
                            // the call, so a `call` that panics is counted as
                            // the withdrawal it spent.
                            shared.counters.hedges.fetch_add(1, Ordering::Relaxed);
                            // Withdrawn: the call follows with no await between.
                            let future = this.span.in_scope(|| service.call(request.clone()));
                            let i = this.sent;
                            // SAFETY: see above; slot `i` is `None` (never sent).
                            unsafe { Pin::new_unchecked(&mut this.attempts[i]) }.set(Some(future));
                            this.sent += 1;
                            this.in_flight += 1;
                            if this.sent < K {
                                this.next = Next::Wait(now.saturating_add(this.delay));
                            } else {
                                this.next = Next::Never;
                                this.spare = None;
                            }
                        }
                    }
                }
            }
        }
    }
}

impl<S: Service<Req>, Req, B, I, P, const K: usize> HedgeFuture<S, Req, B, I, P, K> {
    /// The request has its answer from attempt `winner` (`usize::MAX`: a
    /// failure, no winner): cancel the others, give the timer back, and
    /// record the latency of a success.
    fn finish(&mut self, winner: usize) {
        for i in 0..K {
            // SAFETY: as in `poll`: dropped in place.
            unsafe { Pin::new_unchecked(&mut self.attempts[i]) }.set(None);
        }
        self.in_flight = 0;
        self.next = Next::Never;
        self.spare = None;
        // SAFETY: as in `poll`.
        let fallback = unsafe { Pin::new_unchecked(&mut self.fallback) };
        let shared = &*self.held.shared;
        shared.timers.clear(&mut self.held.alarm, fallback);
        self.span.decided(if self.sent > 1 {
            "hedged"
        } else {
            "not_hedged"
        });
        self.span
            .attempts(u32::try_from(self.sent).unwrap_or(u32::MAX));
        if winner == usize::MAX {
            return;
        }
        if winner > 0 {
            // ordering: Relaxed; a statistic.
            shared.counters.wins.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(tracker) = shared.delay.tracker() {
            tracker.record(shared.clock.now().saturating_duration_since(self.started));
        }
    }
}
