//! The combined stack: timeout, retry, circuit breaker and concurrency limit
//! in one layer, one service and one response future.
//!
//! Outermost to innermost:
//!
//! 1. **timeout**: the whole request, retries and backoff included, must end
//!    within it, or it fails with [`TenlivesError::TimedOut`];
//! 2. **retry**: a [`RetryPolicy`] (schedule, budget, classifier);
//! 3. **admission**: the circuit breaker, then the rate limit, then the
//!    concurrency limit (fixed or adaptive), each optional, through the
//!    [`Admission`] trait;
//! 4. the wrapped service.
//!
//! Every stage is optional; the builder says which are on. All of them share
//! one `Arc` of [`Policies`] (policies, classifier and clock): every service
//! the layer makes and every clone of those share it, and each request
//! clones that `Arc` once, allocates nothing (beyond what the wrapped service
//! and the request's own `Clone` do) and boxes nothing. A stack that lives as
//! long as the process can skip the clone: [`StackLayer::into_static`] leaks
//! the policies and its requests reach them by a plain reference, writing no
//! shared count. On two threads, its concurrency limit can also be split over
//! per-core shards ([`StackBuilder::sharded_concurrency_limit`]). The clock (a
//! [`TokioClock`]: the TSC, or tokio's clock when it is paused) is read at
//! most once when a request is called: always with a timeout (the
//! deadline) or retries (the budget's deposit), else only if an admission
//! stage decides with the time ([`Admission::admit_with`]: an open breaker,
//! a slow-call rule, a rate limit, an adaptive limit; a closed breaker on
//! consecutive failures and a fixed limit read none). Where a stage judges
//! the attempt by its end time (a slow-call rule, a time-based window, a
//! failure that opens a breaker, an adaptive limit) it is read once more
//! when the attempt ends (and when a retry is admitted); each reading is
//! shared by every stage that needs it, and a stack with no stage that
//! needs the time reads no clock at all (`tests/clock_reads.rs` counts the
//! readings). One
//! timer, set only when the request first returns `Pending`, serves both the
//! deadline and the backoff waits: an entry in the stack's shared timer
//! wheel ([`Timers`]: a few atomic operations, no tokio `Sleep` and no
//! timer-driver lock per request; deadlines rounded up to 1 ms by default),
//! or a tokio `Sleep` when every entry is taken (counted by
//! [`Timers::fallbacks`]). Dropping the future, or a panic unwinding
//! through it, gives the entry back.
//!
//! Being one future rather than four nested ones, the stack does a little
//! more than separate layers could:
//!
//! - a timeout reports the call in flight as a failure to the breaker and as
//!   a drop to an adaptive limit (separate layers can only cancel it, which
//!   reports nothing);
//! - a retry waits at least the `retry_after` of a rejection, and gives up at
//!   once (returning the last result) when the next attempt would start after
//!   the timeout's deadline, instead of spending the budget on it; a retry
//!   withdraws from the budget when it is sent (after its backoff and the
//!   service's readiness, just before admission), so a request dropped
//!   during the backoff spends nothing, and a retry refused then ends the
//!   request with the result it would have retried;
//! - one error level: [`TenlivesError<E>`] with `E` the wrapped service's error.
//!
//! ```
//! use std::time::Duration;
//! use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker};
//! use tenlives_engine::bulkhead::Bulkhead;
//! use tenlives_engine::retry::{Backoff, RetryBudget, RetryBudgetConfig};
//! use tenlives_tokio::{RetryPolicy, StackLayer};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tenlives_engine::ConfigError> {
//! let layer = StackLayer::builder()
//!     .timeout(Duration::from_secs(2))
//!     .retry(RetryPolicy::new(
//!         Backoff::exponential(Duration::from_millis(50), 2.0, Duration::from_secs(1))?.with_max_retries(2),
//!         RetryBudget::new(RetryBudgetConfig::default()),
//!     ))
//!     .circuit_breaker(CircuitBreaker::new(BreakerConfig::builder().consecutive_failures(5).build()?))
//!     .concurrency_limit(Bulkhead::new(64)?)
//!     .build();
//! let mut svc = layer.layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x + 1) }));
//! assert_eq!(svc.ready().await.unwrap().call(41).await.unwrap(), 42);
//! assert_eq!(layer.policies().limit().unwrap().in_flight(), 0);
//! # Ok(())
//! # }
//! ```
//!
//! # Panics
//!
//! A request that does not complete on its first poll under a timeout, and
//! every retry, sleep on tokio's timer (through the wheel's driver task):
//! they need a tokio runtime with the time driver enabled.

mod future;
mod handle;
mod hold;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tenlives_engine::ConfigError;
use tenlives_engine::adaptive::{AdaptiveLimiter, LimitAlgorithm};
use tenlives_engine::breaker::CircuitBreaker;
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::events::EventSink;
use tenlives_engine::rate::RateLimiter;
use tenlives_engine::sharded::ShardedBulkhead;
use tenlives_engine::time::{Clock, Timestamp};
use tenlives_engine::timer::TimerWheel;
use tower_layer::Layer;
use tower_service::Service;

pub use future::StackFuture;
pub use hold::MAX_HOLD_CAP;

use crate::admission::Admission;
use crate::classify::{Classify, DefaultClassifier};
use crate::clock::TokioClock;
use crate::error::TenlivesError;
use crate::retry::{NoRetry, RetryPolicy, RetryStage};
use crate::span::call_span;
use crate::wheel::{self, Timers};
use future::{Deadline, Held, Phase, Retrying};
use handle::Handle;
use hold::Holds;

/// The admission stages the builder assembles: an optional breaker, then an
/// optional rate limit, then an optional concurrency limit.
pub type DefaultAdmission<B = CircuitBreaker, Rl = RateLimiter, L = Bulkhead> =
    (Option<B>, Option<Rl>, Option<L>);

/// Everything a stack's services share, behind one `Arc`: the policies, the
/// classifier and the clock. Reach it with [`StackLayer::policies`] or
/// [`Stack::policies`], e.g. to read a breaker's state for metrics.
pub struct Policies<K = DefaultClassifier, R = NoRetry, A = DefaultAdmission> {
    pub(crate) admission: A,
    pub(crate) classifier: K,
    pub(crate) retry: R,
    pub(crate) timeout: Option<Duration>,
    pub(crate) clock: TokioClock,
    /// The timer wheel of the timeout and the backoff waits (none without
    /// either).
    pub(crate) timers: Option<Timers>,
    /// Whether `call` reads the clock before admission: a timeout (its
    /// deadline) or a retry budget (its deposit) needs it. Without either,
    /// the admission stages read it only if their decision needs it
    /// (`Admission::admit_with`).
    pub(crate) time_at_call: bool,
    /// Whether an admission stage may read the clock to admit, or is given
    /// the admission time at the end.
    pub(crate) time_at_admit: bool,
    /// Whether the end of an attempt reads the clock: an admission stage
    /// needs it.
    pub(crate) time_at_end: bool,
    /// Holding breaker refusals for the breaker's answer, if on.
    pub(crate) holds: Option<Holds>,
}

impl<K, R: fmt::Debug, A: fmt::Debug> fmt::Debug for Policies<K, R, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policies")
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}

impl<K, R, A> Policies<K, R, A> {
    /// The admission stages.
    pub fn admission(&self) -> &A {
        &self.admission
    }
    /// The outcome classifier.
    pub fn classifier(&self) -> &K {
        &self.classifier
    }
    /// The retry stage.
    pub fn retry(&self) -> &R {
        &self.retry
    }
    /// The timeout, if there is one.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
    /// The clock every stage reads.
    pub fn clock(&self) -> &TokioClock {
        &self.clock
    }
    /// The timer wheel that the timeout and the backoff waits use, if the
    /// stack has either (e.g. to read [`Timers::fallbacks`]).
    pub fn timers(&self) -> Option<&Timers> {
        self.timers.as_ref()
    }
    /// The hold for the breaker's answer, if on
    /// ([`StackBuilder::hold_for_breaker`]): `(max_wait, cap)`.
    pub fn hold(&self) -> Option<(Duration, usize)> {
        self.holds.as_ref().map(|h| (h.max_wait, h.cap()))
    }
    /// Requests held for the breaker's answer now (reads every occupancy
    /// word: for metrics and tests, not the request path).
    pub fn held(&self) -> usize {
        self.holds.as_ref().map_or(0, Holds::held)
    }
    /// Probes and scouts of the breaker admitted through this stack and
    /// not ended yet (counted only when the stack holds).
    pub fn probes_in_flight(&self) -> u32 {
        self.holds.as_ref().map_or(0, Holds::probes_in_flight)
    }
    #[inline]
    pub(crate) fn now_if(&self, needed: bool) -> Timestamp {
        if needed {
            self.clock.now()
        } else {
            Timestamp::ZERO
        }
    }
}

impl<K, R, B, Rl, L> Policies<K, R, DefaultAdmission<B, Rl, L>> {
    /// The circuit breaker, if the stack has one.
    pub fn breaker(&self) -> Option<&B> {
        self.admission.0.as_ref()
    }
    /// The rate limit, if the stack has one.
    pub fn rate_limit(&self) -> Option<&Rl> {
        self.admission.1.as_ref()
    }
    /// The concurrency limit, if the stack has one.
    pub fn limit(&self) -> Option<&L> {
        self.admission.2.as_ref()
    }
}

/// Chooses the stages of a [`StackLayer`]. Made by [`StackLayer::builder`];
/// every stage starts off.
#[must_use = "a builder does nothing until `build` is called"]
pub struct StackBuilder<K = DefaultClassifier, R = NoRetry, A = DefaultAdmission> {
    admission: A,
    classifier: K,
    retry: R,
    retry_on: bool,
    timeout: Option<Duration>,
    clock: Option<TokioClock>,
    wheel: (usize, Duration),
    hold: Option<(Duration, usize)>,
}

impl<K, R: fmt::Debug, A: fmt::Debug> fmt::Debug for StackBuilder<K, R, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackBuilder")
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}

impl<K, R, A> StackBuilder<K, R, A> {
    /// The whole request (every attempt and backoff wait) must end within
    /// `after`.
    pub fn timeout(mut self, after: Duration) -> Self {
        self.timeout = Some(after);
        self
    }

    /// Retries as `policy` says. The stack then needs `Clone` requests and a
    /// `Clone` wrapped service. The policy's classifier sees the stack's
    /// result, `Result<Response, TenlivesError<E>>`, rejections included.
    pub fn retry<C, Snk: EventSink>(
        self,
        policy: RetryPolicy<C, Snk>,
    ) -> StackBuilder<K, RetryPolicy<C, Snk>, A> {
        StackBuilder {
            admission: self.admission,
            classifier: self.classifier,
            retry: policy,
            retry_on: true,
            timeout: self.timeout,
            clock: self.clock,
            wheel: self.wheel,
            hold: self.hold,
        }
    }

    /// Judges outcomes with `classifier` (see [`Classify`]), which sees the
    /// wrapped service's own result. Default: [`DefaultClassifier`].
    pub fn classify<K2>(self, classifier: K2) -> StackBuilder<K2, R, A> {
        StackBuilder {
            admission: self.admission,
            classifier,
            retry: self.retry,
            retry_on: self.retry_on,
            timeout: self.timeout,
            clock: self.clock,
            wheel: self.wheel,
            hold: self.hold,
        }
    }

    /// Reads time from `clock` (default: a [`TokioClock`] made by `build`).
    pub fn clock(mut self, clock: TokioClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The timer wheel that the timeout and the backoff waits use: room for
    /// `capacity` timers at once (requests beyond it sleep on a tokio
    /// `Sleep` each, counted by [`Timers::fallbacks`]), deadlines rounded
    /// up to `resolution`. Default: [`wheel::DEFAULT_CAPACITY`] (1024) and
    /// [`wheel::DEFAULT_RESOLUTION`] (1 ms). See [`Timers`].
    ///
    /// # Errors
    ///
    /// A zero or too large capacity, a zero resolution.
    pub fn timer_wheel(
        mut self,
        capacity: usize,
        resolution: Duration,
    ) -> Result<Self, ConfigError> {
        // Validated now, made by `build` on the stack's clock.
        drop(TimerWheel::new(capacity, resolution)?);
        self.wheel = (capacity, resolution);
        Ok(self)
    }

    /// Replaces the admission stages with `admission`: any [`Admission`],
    /// e.g. a chain `(my_stage, (Some(breaker), None, Some(bulkhead)))` with
    /// a stage of your own in front.
    pub fn admission<A2: Admission>(self, admission: A2) -> StackBuilder<K, R, A2> {
        self.map_admission(|_| admission)
    }

    fn map_admission<A2>(self, f: impl FnOnce(A) -> A2) -> StackBuilder<K, R, A2> {
        StackBuilder {
            admission: f(self.admission),
            classifier: self.classifier,
            retry: self.retry,
            retry_on: self.retry_on,
            timeout: self.timeout,
            clock: self.clock,
            wheel: self.wheel,
            hold: self.hold,
        }
    }

    /// The layer.
    pub fn build(self) -> StackLayer<K, R, A>
    where
        A: Admission,
    {
        let time_at_end = self.admission.needs_time_at_end();
        let time_at_admit = time_at_end || self.admission.needs_time();
        let time_at_call = self.retry_on || self.timeout.is_some();
        let clock = self.clock.unwrap_or_default();
        let timers = (self.retry_on || self.timeout.is_some()).then(|| {
            let (capacity, resolution) = self.wheel;
            match Timers::new(capacity, resolution, clock) {
                Ok(timers) => timers,
                Err(_) => unreachable!("checked by `timer_wheel`"),
            }
        });
        StackLayer {
            policies: Handle::new(Arc::new(Policies {
                admission: self.admission,
                classifier: self.classifier,
                retry: self.retry,
                timeout: self.timeout,
                clock,
                timers,
                time_at_call,
                time_at_admit,
                time_at_end,
                holds: self.hold.map(|(max_wait, cap)| Holds::new(max_wait, cap)),
            })),
        }
    }
}

impl<K, C, Snk: EventSink, A> StackBuilder<K, RetryPolicy<C, Snk>, A> {
    /// Holds a request that the circuit breaker refuses, while an answer of
    /// the breaker is coming, instead of refusing it at once: for at most
    /// `max_wait` (and never past the request's timeout), at most `cap`
    /// requests at once. Off by default.
    ///
    /// A refusal is held when the breaker is open and its next scout (or
    /// half-open probe) is due within the hold, or when a probe or scout
    /// sent through this stack is in flight. A held request tries admission
    /// again, through every admission stage, when such a probe reports its
    /// outcome (a scout that succeeds closes the breaker: the held requests
    /// are admitted), when the next scout is due (it may be the scout), and
    /// at the end of the hold. It is refused, with the breaker's rejection
    /// as without the option, when the breaker answered and still refuses
    /// (the scout failed), when no answer is due within what is left of the
    /// hold, or at its end. A request holds at most once; a refusal that
    /// finds `cap` requests held is refused at once.
    ///
    /// Cost: nothing on an admitted request, beyond a check of whether its
    /// permit is a probe; a held request takes one of `cap` slots made when
    /// the stack is built (a compare-and-swap), its waker registered there,
    /// and one entry of the stack's timer wheel. Nothing is allocated or
    /// locked per request. Held requests use the clones of the service and
    /// request that the retry stage keeps, so the option needs one.
    ///
    /// # Errors
    ///
    /// A zero `max_wait` or `cap`, or a `cap` above [`MAX_HOLD_CAP`].
    pub fn hold_for_breaker(mut self, max_wait: Duration, cap: usize) -> Result<Self, ConfigError> {
        Holds::check(max_wait, cap)?;
        self.hold = Some((max_wait, cap));
        Ok(self)
    }
}

impl<K, R, B, Rl, L> StackBuilder<K, R, DefaultAdmission<B, Rl, L>> {
    /// Admits requests through `breaker` (first of the admission stages: an
    /// open breaker spends no rate-limit token).
    pub fn circuit_breaker<Snk: EventSink>(
        self,
        breaker: CircuitBreaker<Snk>,
    ) -> StackBuilder<K, R, DefaultAdmission<CircuitBreaker<Snk>, Rl, L>> {
        self.map_admission(|(_, rate, limit)| (Some(breaker), rate, limit))
    }

    /// Admits at most `limiter`'s quota of attempts (after the breaker,
    /// before the concurrency limit). Each attempt, retries included, spends
    /// a token; a rejection says when the next token is due.
    pub fn rate_limit<Snk: EventSink>(
        self,
        limiter: RateLimiter<Snk>,
    ) -> StackBuilder<K, R, DefaultAdmission<B, RateLimiter<Snk>, L>> {
        self.map_admission(|(breaker, _, limit)| (breaker, Some(limiter), limit))
    }

    /// Limits concurrent calls with `bulkhead` (rejecting when it is full).
    pub fn concurrency_limit<Snk: EventSink>(
        self,
        bulkhead: Bulkhead<Snk>,
    ) -> StackBuilder<K, R, DefaultAdmission<B, Rl, Bulkhead<Snk>>> {
        self.map_admission(|(breaker, rate, _)| (breaker, rate, Some(bulkhead)))
    }

    /// Limits concurrent calls with `limit`, split over per-core shards:
    /// threads on different cores admit without writing one shared word,
    /// at the price of refusals that can miss permits released during the
    /// refusing call's scan (see [`tenlives_engine::sharded`]).
    pub fn sharded_concurrency_limit(
        self,
        limit: ShardedBulkhead,
    ) -> StackBuilder<K, R, DefaultAdmission<B, Rl, ShardedBulkhead>> {
        self.map_admission(|(breaker, rate, _)| (breaker, rate, Some(limit)))
    }

    /// Limits concurrent calls with `limiter`, whose limit follows the
    /// latency of the calls (see [`AdaptiveLimitLayer`](crate::AdaptiveLimitLayer)).
    pub fn adaptive_limit<Al: LimitAlgorithm, Snk: EventSink>(
        self,
        limiter: AdaptiveLimiter<Al, Snk>,
    ) -> StackBuilder<K, R, DefaultAdmission<B, Rl, AdaptiveLimiter<Al, Snk>>> {
        self.map_admission(|(breaker, rate, _)| (breaker, rate, Some(limiter)))
    }
}

/// One tower [`Layer`] for the whole stack. See the [module documentation](self).
pub struct StackLayer<K = DefaultClassifier, R = NoRetry, A = DefaultAdmission> {
    policies: Handle<Policies<K, R, A>>,
}

impl StackLayer {
    /// A builder with every stage off.
    pub fn builder() -> StackBuilder {
        StackBuilder {
            admission: (None, None, None),
            classifier: DefaultClassifier,
            retry: NoRetry,
            retry_on: false,
            timeout: None,
            clock: None,
            wheel: (wheel::DEFAULT_CAPACITY, wheel::DEFAULT_RESOLUTION),
            hold: None,
        }
    }
}

impl<K, R, A> StackLayer<K, R, A> {
    /// What every service of this layer shares.
    pub fn policies(&self) -> &Policies<K, R, A> {
        &self.policies
    }

    /// This layer, for a stack that lives as long as the process: its
    /// policies are never freed (their memory and the timer wheel's driver
    /// stay for good, even once every layer, service and request is
    /// dropped), and in exchange the layer, its services and their requests
    /// reach them without a reference count: no shared count is written per
    /// request (an `Arc` clone and drop are two atomic read-modify-writes of
    /// one line, which two threads admitting at once pass back and forth).
    /// Layers cloned before keep counting; clones made after do not.
    pub fn into_static(self) -> Self {
        StackLayer {
            policies: self.policies.into_static(),
        }
    }

    /// Whether requests through this layer's services touch a shared
    /// reference count (false after [`into_static`](Self::into_static)).
    pub fn is_counted(&self) -> bool {
        self.policies.is_counted()
    }
}

impl<K, R, A> Clone for StackLayer<K, R, A> {
    fn clone(&self) -> Self {
        StackLayer {
            policies: self.policies.clone(),
        }
    }
}

impl<K, R: fmt::Debug, A: fmt::Debug> fmt::Debug for StackLayer<K, R, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackLayer")
            .field("policies", &self.policies)
            .finish()
    }
}

impl<S, K, R, A> Layer<S> for StackLayer<K, R, A> {
    type Service = Stack<S, K, R, A>;

    fn layer(&self, inner: S) -> Self::Service {
        Stack {
            inner,
            policies: self.policies.clone(),
        }
    }
}

/// A service behind the whole stack. Made by [`StackLayer`].
pub struct Stack<S, K = DefaultClassifier, R = NoRetry, A = DefaultAdmission> {
    inner: S,
    policies: Handle<Policies<K, R, A>>,
}

impl<S, K, R, A> Stack<S, K, R, A> {
    /// What this service shares with its clones and its layer.
    pub fn policies(&self) -> &Policies<K, R, A> {
        &self.policies
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone, K, R, A> Clone for Stack<S, K, R, A> {
    fn clone(&self) -> Self {
        Stack {
            inner: self.inner.clone(),
            policies: self.policies.clone(),
        }
    }
}

impl<S: fmt::Debug, K, R: fmt::Debug, A: fmt::Debug> fmt::Debug for Stack<S, K, R, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stack")
            .field("inner", &self.inner)
            .field("policies", &self.policies)
            .finish()
    }
}

impl<S, Req, K, R, A> Service<Req> for Stack<S, K, R, A>
where
    S: Service<Req>,
    K: Classify<S::Response, S::Error>,
    R: RetryStage<S, Req>,
    A: Admission,
{
    type Response = S::Response;
    type Error = TenlivesError<S::Error>;
    type Future = StackFuture<S, Req, K, R, A>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(TenlivesError::Inner)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let p = &*self.policies;
        // A deadline or a retry budget needs the time of the call; else the
        // admission stages read it, once between them, only if their
        // decision needs it (a closed breaker without a slow-call rule and
        // a fixed limit read none).
        let mut read = p.time_at_call.then(|| p.clock.now());
        let start = read.unwrap_or(Timestamp::ZERO);
        p.retry.deposit(start);
        // The clones wait in the future for retries, and the clone of the
        // service is polled ready before each; the first attempt goes to the
        // service that was polled ready.
        let retry = p.retry.prepare(&self.inner, &req).map(Retrying::new);
        let deadline = p.timeout.map(|after| Deadline::new(start, after));
        let mut held = Held::new(self.policies.clone(), start);
        let span = call_span!("tenlives.stack", "stack");
        if retry.is_some() {
            span.attempts(1);
        }
        let admitted = if p.time_at_admit {
            p.admission
                .admit_with(|| *read.get_or_insert_with(|| p.clock.now()))
        } else {
            p.admission
                .admit(Timestamp::ZERO)
                .map(|token| (token, None))
        };
        let phase = match admitted {
            Ok((token, _)) => {
                // The reading shared by every stage, if one was made.
                held.hold(token, read.unwrap_or(Timestamp::ZERO));
                span.admitted();
                let _entered = span.enter();
                Phase::Calling {
                    future: self.inner.call(req),
                }
            }
            Err(rejection) => {
                span.rejected(&rejection);
                Phase::Rejected {
                    rejection: Some(rejection),
                }
            }
        };
        StackFuture::new(phase, deadline, retry, held, span)
    }
}

/// A builder default that keeps `StackLayer::builder()` free of type
/// annotations; breakers and limits with event sinks come through the
/// builder's methods.
impl Default for StackBuilder {
    fn default() -> Self {
        StackLayer::builder()
    }
}
