//! Retries as a tower layer: a backoff schedule, a retry budget, and a
//! classifier that says what is worth retrying.
//!
//! [`RetryLayer`] calls the wrapped service; when the result is one the
//! policy's classifier ([`ShouldRetry`]) says is retryable, it waits the next
//! delay of the [`Backoff`] schedule and calls again, until
//! the result is not retryable, the schedule ends (`with_max_retries`), or the
//! [`RetryBudget`] refuses: every request deposits into the budget once, every
//! retry withdraws, so retries stay a bounded share of the traffic and cannot
//! multiply the load on a struggling dependency.
//!
//! The withdrawal is taken when the retry is sent: after the backoff wait and
//! the service's readiness, with no await between it and the call. A request
//! dropped during the wait has spent nothing, so calls downstream are exactly
//! deposits plus withdrawals; a retry the budget refuses at that moment is not
//! sent, and the request ends with the result it would have retried (kept in
//! the response future during the wait).
//!
//! Each retry respects tower's contract: the response future holds a clone of
//! the wrapped service and drives its `poll_ready` before each new call (the
//! first attempt goes to the service that `poll_ready` was called on). The
//! request must be `Clone`: each attempt sends a clone of it.
//!
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tenlives_engine::retry::{Backoff, RetryBudget, RetryBudgetConfig};
//! use tenlives_tokio::{RetryLayer, RetryPolicy};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tenlives_engine::ConfigError> {
//! let backoff = Backoff::exponential(Duration::from_millis(10), 2.0, Duration::from_secs(1))?.with_max_retries(3);
//! let policy = RetryPolicy::new(backoff, RetryBudget::new(RetryBudgetConfig::default()));
//! let calls = Arc::new(AtomicU32::new(0));
//! let counter = Arc::clone(&calls);
//! let flaky = service_fn(move |_: ()| {
//!     let n = counter.fetch_add(1, Ordering::Relaxed);
//!     async move { if n < 2 { Err("try again") } else { Ok(n) } }
//! });
//! let mut svc = RetryLayer::new(policy).layer(flaky);
//! let started = tokio::time::Instant::now();
//! assert_eq!(svc.ready().await.unwrap().call(()).await, Ok(2));
//! assert_eq!(calls.load(Ordering::Relaxed), 3);
//! assert_eq!(started.elapsed(), Duration::from_millis(10 + 20)); // the two backoff delays
//! # Ok(())
//! # }
//! ```
//!
//! A backoff wait is an entry of the layer's timer wheel ([`Timers`],
//! shared by every service the layer makes; delays rounded up to its tick, 1
//! ms by default), not a tokio `Sleep` of its own: a tokio `Sleep` only when
//! every entry is taken, counted by [`Timers::fallbacks`]. The entry is
//! given back when the wait ends, and when the future is dropped or unwound
//! by a panic.
//!
//! # Panics
//!
//! A retry waits on the wheel, whose driver task sleeps on tokio's timer: it
//! needs a tokio runtime with the time driver enabled.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tenlives_engine::events::{EventSink, NoSink};
use tenlives_engine::retry::{Backoff, BackoffIter, RetryBudget};
use tenlives_engine::time::{Clock, Timestamp};
use tenlives_engine::timer::TimerEntry;
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

use crate::clock::TokioClock;
use crate::error::TenlivesError;
use crate::span::{CallSpan, call_span};
use crate::wheel::Timers;

/// The SplitMix64 increment, to spread per-request jitter seeds.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// Decides whether a result is worth another attempt.
///
/// Implemented by [`RetryOnErr`] and by every closure
/// `Fn(&Result<Res, E>) -> bool`. Only retry what is safe to send twice: a
/// rejection by a tenlives policy never reached the dependency, but a timeout
/// or a connection error may have.
pub trait ShouldRetry<Res, E> {
    /// Whether `result` should be retried.
    fn should_retry(&self, result: &Result<Res, E>) -> bool;

    /// How long the server asked to wait before a retry of `result` (say,
    /// a `429`'s `Retry-After`): the retry waits at least that. `None` (the
    /// default): the backoff's delay alone. See
    /// `headers::HonourRetryAfter` (feature `http`).
    #[inline]
    fn server_wait(&self, result: &Result<Res, E>) -> Option<Duration> {
        let _ = result;
        None
    }
}

/// Retries every error, and nothing else.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryOnErr;

impl<Res, E> ShouldRetry<Res, E> for RetryOnErr {
    #[inline]
    fn should_retry(&self, result: &Result<Res, E>) -> bool {
        result.is_err()
    }
}

impl<Res, E, F> ShouldRetry<Res, E> for F
where
    F: Fn(&Result<Res, E>) -> bool,
{
    #[inline]
    fn should_retry(&self, result: &Result<Res, E>) -> bool {
        self(result)
    }
}

/// Where a policy's budget lives: in the policy, or shared with other
/// policies (a registry's named budget).
#[allow(
    clippy::large_enum_variant,
    reason = "an owned budget stays inline, as before: no pointer to chase per request"
)]
enum BudgetHolder<Snk: EventSink> {
    Owned(RetryBudget<Snk>),
    Shared(Arc<RetryBudget<Snk>>),
}

impl<Snk: EventSink> BudgetHolder<Snk> {
    #[inline]
    fn get(&self) -> &RetryBudget<Snk> {
        match self {
            BudgetHolder::Owned(budget) => budget,
            BudgetHolder::Shared(budget) => budget,
        }
    }
}

/// How requests are retried: the schedule, the budget and the classifier.
///
/// One policy is shared by every service made by one layer (behind one
/// `Arc`), so the budget counts all their traffic.
pub struct RetryPolicy<C = RetryOnErr, Snk: EventSink = NoSink> {
    backoff: Backoff,
    budget: BudgetHolder<Snk>,
    should_retry: C,
    seed: u64,
    /// Requests that retried so far: spreads the jitter seeds.
    retried: AtomicU64,
}

impl<C, Snk: EventSink> fmt::Debug for RetryPolicy<C, Snk> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("backoff", &self.backoff)
            .field("budget", self.budget.get())
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl<Snk: EventSink> RetryPolicy<RetryOnErr, Snk> {
    /// Retries every error, waiting as `backoff` says, while `budget` allows.
    /// Jitter seed 0.
    pub fn new(backoff: Backoff, budget: RetryBudget<Snk>) -> Self {
        Self::holding(backoff, BudgetHolder::Owned(budget))
    }

    /// Retries every error, waiting as `backoff` says, while the shared
    /// `budget` allows: every policy (and hedge layer) given the same `Arc`
    /// deposits into and withdraws from one budget, so their retries
    /// together stay within its ratio — a named budget of a registry
    /// shared by several stacks. Jitter seed 0.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use tenlives_engine::retry::{Backoff, RetryBudget, RetryBudgetConfig};
    /// use tenlives_tokio::RetryPolicy;
    ///
    /// let budget = Arc::new(RetryBudget::new(RetryBudgetConfig::default()));
    /// let backoff = Backoff::constant(Duration::from_millis(10)).unwrap();
    /// let reads = RetryPolicy::shared(backoff.clone(), Arc::clone(&budget));
    /// let writes = RetryPolicy::shared(backoff, Arc::clone(&budget));
    /// assert!(std::ptr::eq(reads.budget(), writes.budget()));
    /// ```
    pub fn shared(backoff: Backoff, budget: Arc<RetryBudget<Snk>>) -> Self {
        Self::holding(backoff, BudgetHolder::Shared(budget))
    }

    fn holding(backoff: Backoff, budget: BudgetHolder<Snk>) -> Self {
        RetryPolicy {
            backoff,
            budget,
            should_retry: RetryOnErr,
            seed: 0,
            retried: AtomicU64::new(0),
        }
    }
}

impl<C, Snk: EventSink> RetryPolicy<C, Snk> {
    /// The same policy, retrying what `should_retry` says (see [`ShouldRetry`]).
    pub fn retry_if<C2>(self, should_retry: C2) -> RetryPolicy<C2, Snk> {
        RetryPolicy {
            backoff: self.backoff,
            budget: self.budget,
            should_retry,
            seed: self.seed,
            retried: self.retried,
        }
    }

    /// The same policy with jitter seeded by `seed`: the `n`-th request to
    /// retry draws its delays from `seed` and `n`, so a run that retries the
    /// same requests in the same order waits the same delays.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The backoff schedule.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// The retry budget (the shared one, for a policy made by
    /// [`RetryPolicy::shared`]).
    pub fn budget(&self) -> &RetryBudget<Snk> {
        self.budget.get()
    }

    /// The classifier.
    pub fn classifier(&self) -> &C {
        &self.should_retry
    }

    /// A request starts: it counts toward what retries may spend.
    #[inline]
    pub(crate) fn deposit(&self, now: Timestamp) {
        self.budget.get().deposit(now);
    }

    /// The delay before the next retry of a request whose schedule is
    /// `schedule` (made on the first retry), or `None` when the schedule ended.
    #[inline]
    pub(crate) fn next_delay(&self, schedule: &mut Option<BackoffIter>) -> Option<Duration> {
        schedule
            .get_or_insert_with(|| {
                // ordering: Relaxed; the counter only spreads seeds.
                let n = self.retried.fetch_add(1, Ordering::Relaxed);
                self.backoff
                    .iter(self.seed.wrapping_add(n.wrapping_mul(GAMMA)))
            })
            .next()
    }

    /// Whether the budget affords one more retry at `now` (and spends it).
    #[inline]
    pub(crate) fn withdraw(&self, now: Timestamp) -> bool {
        self.budget.get().try_withdraw(now)
    }
}

/// What a retrying request keeps for its later attempts: a clone of the
/// service, the request, and the function that clones the request for each
/// attempt.
pub type RetryClones<S, Req> = (S, Req, fn(&Req) -> Req);

/// The retry stage of a [`StackLayer`](crate::StackLayer): [`NoRetry`], or a
/// [`RetryPolicy`] (which needs `S: Clone` and `Req: Clone`).
///
/// Implemented by this crate only; it lets a stack without retries take
/// requests and services that cannot be cloned.
pub trait RetryStage<S: Service<Req>, Req> {
    /// A clone of the service and of the request for later attempts, with
    /// the function that clones the request for each of them; `None` when
    /// this stage never retries.
    fn prepare(&self, service: &S, request: &Req) -> Option<RetryClones<S, Req>>;
    /// Whether `result` is worth another attempt.
    fn should_retry(&self, result: &Result<S::Response, TenlivesError<S::Error>>) -> bool;
    /// A request starts at `now`.
    fn deposit(&self, now: Timestamp);
    /// The next delay of a request's schedule, if any.
    fn next_delay(&self, schedule: &mut Option<BackoffIter>) -> Option<Duration>;
    /// The least wait before retrying after `result` that the upstream
    /// asked for ([`ShouldRetry::server_wait`]), if any.
    fn server_wait(
        &self,
        result: &Result<S::Response, TenlivesError<S::Error>>,
    ) -> Option<Duration>;
    /// Whether the budget affords a retry at `now` (and spends it).
    fn withdraw(&self, now: Timestamp) -> bool;
}

/// No retries: the default retry stage of a [`StackLayer`](crate::StackLayer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoRetry;

impl<S: Service<Req>, Req> RetryStage<S, Req> for NoRetry {
    #[inline]
    fn prepare(&self, _service: &S, _request: &Req) -> Option<RetryClones<S, Req>> {
        None
    }
    #[inline]
    fn should_retry(&self, _result: &Result<S::Response, TenlivesError<S::Error>>) -> bool {
        false
    }
    #[inline]
    fn deposit(&self, _now: Timestamp) {}
    #[inline]
    fn next_delay(&self, _schedule: &mut Option<BackoffIter>) -> Option<Duration> {
        None
    }
    #[inline]
    fn server_wait(
        &self,
        _result: &Result<S::Response, TenlivesError<S::Error>>,
    ) -> Option<Duration> {
        None
    }
    #[inline]
    fn withdraw(&self, _now: Timestamp) -> bool {
        false
    }
}

impl<S, Req, C, Snk> RetryStage<S, Req> for RetryPolicy<C, Snk>
where
    S: Service<Req> + Clone,
    Req: Clone,
    C: ShouldRetry<S::Response, TenlivesError<S::Error>>,
    Snk: EventSink,
{
    #[inline]
    fn prepare(&self, service: &S, request: &Req) -> Option<RetryClones<S, Req>> {
        Some((service.clone(), request.clone(), Req::clone))
    }
    #[inline]
    fn should_retry(&self, result: &Result<S::Response, TenlivesError<S::Error>>) -> bool {
        self.should_retry.should_retry(result)
    }
    #[inline]
    fn deposit(&self, now: Timestamp) {
        RetryPolicy::deposit(self, now);
    }
    #[inline]
    fn next_delay(&self, schedule: &mut Option<BackoffIter>) -> Option<Duration> {
        RetryPolicy::next_delay(self, schedule)
    }
    #[inline]
    fn server_wait(
        &self,
        result: &Result<S::Response, TenlivesError<S::Error>>,
    ) -> Option<Duration> {
        self.should_retry.server_wait(result)
    }
    #[inline]
    fn withdraw(&self, now: Timestamp) -> bool {
        RetryPolicy::withdraw(self, now)
    }
}

struct Shared<C, Snk: EventSink> {
    policy: RetryPolicy<C, Snk>,
    clock: TokioClock,
    /// The backoff waits' wheel.
    timers: Timers,
}

/// A tower [`Layer`] that retries failed calls. See the
/// [module documentation](self).
pub struct RetryLayer<C = RetryOnErr, Snk: EventSink = NoSink> {
    shared: Arc<Shared<C, Snk>>,
}

impl<C, Snk: EventSink> Clone for RetryLayer<C, Snk> {
    fn clone(&self) -> Self {
        RetryLayer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C, Snk: EventSink> fmt::Debug for RetryLayer<C, Snk> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("policy", &self.shared.policy)
            .finish()
    }
}

impl<C, Snk: EventSink> RetryLayer<C, Snk> {
    /// Retries as `policy` says, timed on a [`TokioClock`] made now (with a
    /// timer wheel of the default size on it).
    pub fn new(policy: RetryPolicy<C, Snk>) -> Self {
        Self::with_clock(policy, TokioClock::new())
    }

    /// Retries as `policy` says, timed on `clock` (with a timer wheel of the
    /// default size on it).
    pub fn with_clock(policy: RetryPolicy<C, Snk>, clock: TokioClock) -> Self {
        Self::with_timers(policy, Timers::with_defaults(clock))
    }

    /// Retries as `policy` says, waiting on `timers` (e.g. a wheel of
    /// another size, or one shared with other layers) and timed on its
    /// clock.
    pub fn with_timers(policy: RetryPolicy<C, Snk>, timers: Timers) -> Self {
        RetryLayer {
            shared: Arc::new(Shared {
                policy,
                clock: timers.clock(),
                timers,
            }),
        }
    }

    /// The timer wheel of the backoff waits (e.g. to read
    /// [`Timers::fallbacks`]).
    pub fn timers(&self) -> &Timers {
        &self.shared.timers
    }

    /// The policy, shared by every service this layer made.
    pub fn policy(&self) -> &RetryPolicy<C, Snk> {
        &self.shared.policy
    }
}

impl<S, C, Snk: EventSink> Layer<S> for RetryLayer<C, Snk> {
    type Service = Retry<S, C, Snk>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// A service whose failed calls are retried. Made by [`RetryLayer`].
///
/// Its error is the wrapped service's own: after the last attempt, its result
/// is returned as it is.
pub struct Retry<S, C = RetryOnErr, Snk: EventSink = NoSink> {
    inner: S,
    shared: Arc<Shared<C, Snk>>,
}

impl<S: Clone, C, Snk: EventSink> Clone for Retry<S, C, Snk> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, C, Snk: EventSink> fmt::Debug for Retry<S, C, Snk> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("policy", &self.shared.policy)
            .finish()
    }
}

impl<S, C, Snk: EventSink> Retry<S, C, Snk> {
    /// The policy, shared with every clone of this service.
    pub fn policy(&self) -> &RetryPolicy<C, Snk> {
        &self.shared.policy
    }
}

impl<S, Req, C, Snk> Service<Req> for Retry<S, C, Snk>
where
    S: Service<Req> + Clone,
    Req: Clone,
    C: ShouldRetry<S::Response, S::Error>,
    Snk: EventSink,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RetryFuture<S, Req, C, Snk>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &self.shared;
        shared.policy.deposit(shared.clock.now());
        // The clone waits in the future, and is polled ready before each
        // retry; the first attempt goes to the service that was polled ready.
        let service = self.inner.clone();
        let span = call_span!("tenlives.retry", "retry");
        span.attempts(1);
        let first = span.in_scope(|| self.inner.call(req.clone()));
        RetryFuture {
            state: Attempt::Calling { future: first },
            fallback: None,
            service,
            request: req,
            schedule: None,
            last: None,
            held: Held {
                shared: Arc::clone(shared),
                alarm: None,
            },
            attempts: 1,
            span,
        }
    }
}

pin_project! {
    /// Where a retrying request is.
    #[project = AttemptProj]
    pub(crate) enum Attempt<F> {
        /// An attempt is in flight.
        Calling { #[pin] future: F },
        /// Waiting out a backoff delay (on the future's timer).
        Waiting,
        /// The delay is over; waiting for the service to be ready.
        Readying,
        /// The result was returned.
        Done,
    }
}

/// The request's share of the layer, and its entry in the layer's timer
/// wheel while it waits to retry, given back on drop.
struct Held<C, Snk: EventSink> {
    shared: Arc<Shared<C, Snk>>,
    alarm: Option<TimerEntry>,
}

impl<C, Snk: EventSink> Drop for Held<C, Snk> {
    fn drop(&mut self) {
        if let Some(entry) = self.alarm.take() {
            self.shared.timers.cancel(entry);
        }
    }
}

pin_project! {
    /// The response future of [`Retry`]: the attempt in flight (or the
    /// backoff wait), a clone of the service and of the request for the next
    /// attempt, and the request's backoff schedule.
    #[must_use = "futures do nothing unless polled"]
    pub struct RetryFuture<S: Service<Req>, Req, C, Snk: EventSink> {
        #[pin]
        state: Attempt<S::Future>,
        // The backoff wait's tokio sleep, only when the wheel is full.
        #[pin]
        fallback: Option<Sleep>,
        service: S,
        request: Req,
        schedule: Option<BackoffIter>,
        // The result of the attempt before the backoff wait, returned if
        // the budget refuses the retry when it is sent.
        last: Option<Result<S::Response, S::Error>>,
        held: Held<C, Snk>,
        // Attempts made, the first included (for the call's span).
        attempts: u32,
        span: CallSpan,
    }
}

impl<S: Service<Req>, Req, C, Snk: EventSink> fmt::Debug for RetryFuture<S, Req, C, Snk> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryFuture")
            .field("schedule", &self.schedule)
            .finish_non_exhaustive()
    }
}

impl<S, Req, C, Snk> Future for RetryFuture<S, Req, C, Snk>
where
    S: Service<Req>,
    Req: Clone,
    C: ShouldRetry<S::Response, S::Error>,
    Snk: EventSink,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        loop {
            match this.state.as_mut().project() {
                AttemptProj::Calling { future } => {
                    let result = std::task::ready!(future.poll(cx));
                    let held = &mut *this.held;
                    let shared = &*held.shared;
                    if shared.policy.should_retry.should_retry(&result)
                        && let Some(delay) = shared.policy.next_delay(this.schedule)
                    {
                        // At least what the server asked for.
                        let delay = match shared.policy.should_retry.server_wait(&result) {
                            Some(wait) => delay.max(wait),
                            None => delay,
                        };
                        // The withdrawal waits for the retry to be sent
                        // (`Readying`): a request dropped during the backoff
                        // spends nothing. The result is kept to be returned
                        // if the budget refuses then.
                        let wake_at = shared.clock.now().saturating_add(delay);
                        shared
                            .timers
                            .set(&mut held.alarm, this.fallback.as_mut(), wake_at, cx);
                        *this.last = Some(result);
                        this.state.set(Attempt::Waiting);
                        continue;
                    }
                    this.state.set(Attempt::Done);
                    this.span.ended(&result);
                    return Poll::Ready(result);
                }
                AttemptProj::Waiting => {
                    let held = &mut *this.held;
                    let timers = &held.shared.timers;
                    std::task::ready!(timers.poll(&mut held.alarm, this.fallback.as_mut(), cx));
                    // The wait is over: the entry goes back now.
                    timers.clear(&mut held.alarm, this.fallback.as_mut());
                    this.state.set(Attempt::Readying);
                }
                AttemptProj::Readying => match std::task::ready!(this.service.poll_ready(cx)) {
                    Ok(()) => {
                        let shared = &*this.held.shared;
                        if !shared.policy.withdraw(shared.clock.now()) {
                            // Refused at the moment of sending: the request
                            // ends with the result it would have retried.
                            this.state.set(Attempt::Done);
                            let result = this.last.take().expect("a retry follows a result");
                            this.span.ended(&result);
                            return Poll::Ready(result);
                        }
                        *this.last = None;
                        *this.attempts = this.attempts.saturating_add(1);
                        this.span.attempts(*this.attempts);
                        let future = this.service.call(this.request.clone());
                        this.state.set(Attempt::Calling { future });
                    }
                    Err(e) => {
                        this.state.set(Attempt::Done);
                        this.span.outcome("error");
                        return Poll::Ready(Err(e));
                    }
                },
                // Polled after completion: the caller's bug; stay pending.
                AttemptProj::Done => return Poll::Pending,
            }
        }
    }
}
