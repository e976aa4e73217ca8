//! Admission: the policies that decide, per request, whether it may go in,
//! and hear how it went.
//!
//! A circuit breaker, a fixed concurrency limit and an adaptive one all work
//! the same way: admit (or reject) a request when it is called, hold a token
//! while it runs, and on completion report the classified outcome and the
//! latency. The [`Admission`] trait says exactly that, and one tower wrapper,
//! [`AdmissionLayer`] / [`AdmissionService`] / [`AdmissionFuture`], serves
//! every such policy; the per-policy names ([`CircuitBreakerLayer`],
//! [`ConcurrencyLimitLayer`], [`AdaptiveLimitLayer`], ...) are aliases of it.
//! The combined [`StackLayer`](crate::StackLayer) takes its admission stages
//! through the same trait, so a new policy (a rate limiter, say) joins every
//! layer by implementing it once.
//!
//! # The `poll_ready` / `call` contract
//!
//! Admission happens in `call`, never in `poll_ready`: `poll_ready` only
//! forwards to the wrapped service. So a service that was polled ready and
//! then dropped, or cloned, holds no permit; and a rejection is an error
//! future (resolving at once, without calling the wrapped service, which
//! stays ready for the next call), carrying the reason and `retry_after`. This
//! is tower's own choice for shedding load (`LoadShed`), and the only one that
//! can say *when* to retry. The price: a wrapped service that is slow to
//! become ready is waited for even when the policy would reject.
//!
//! # Drop and panic
//!
//! From the moment `admit` returns it, the token has an owner that releases
//! it on drop: a holder built before the wrapped service's `call` runs, which
//! then moves into the response future. So the token is released without a
//! report (a breaker counts the call as nothing and frees its probe slot, a
//! limit gives its permit back without a latency sample), and the panic, if
//! there is one, goes on to the caller, when:
//!
//! - the wrapped service's `call` panics: while unwinding out of `call`;
//! - the response future is dropped before the call completes (cancelled,
//!   timed out by an outer layer, or unwound by a panic of the wrapped
//!   service's future): when it is dropped;
//! - the classifier panics: it runs before the token leaves the future, so
//!   the token is released when the future is dropped;
//! - an admission stage of a pair (`(A, B)`, triples, a stage of the user's)
//!   panics in `admit` or `complete`: the stages before it are released
//!   while unwinding;
//! - the clock panics (a clock of the user's, see
//!   [`TokioClock::from_source`]): at admission it is read before the
//!   stage that reads it takes anything, and the stages before it are
//!   released; at the end it is read while the holder still owns the
//!   token.
//!
//! [`CircuitBreakerLayer`]: crate::CircuitBreakerLayer
//! [`ConcurrencyLimitLayer`]: crate::ConcurrencyLimitLayer
//! [`AdaptiveLimitLayer`]: crate::AdaptiveLimitLayer

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tenlives_engine::breaker::Outcome;
use tenlives_engine::time::{Clock, Timestamp};
use tower_layer::Layer;
use tower_service::Service;

use crate::classify::{Classify, DefaultClassifier};
use crate::clock::TokioClock;
use crate::error::{Rejection, TenlivesError, take_rejection};
use crate::span::{CallSpan, call_span};

/// A policy that admits or rejects each request and hears how it went.
///
/// Implemented for the engine's `CircuitBreaker`, `Bulkhead` and
/// `AdaptiveLimiter` and `RateLimiter` (with any event sink), for `Option<A>`
/// (`None` admits everything), for pairs `(A, B)` (admitted by `A` then `B`;
/// if `B` rejects, `A`'s token is released), for triples `(A, B, C)` (the
/// chain `(A, (B, C))`) and for references and `Arc`s to any of them.
///
/// Contract: every token `admit` returns is handed back exactly once, to
/// `complete` or to `release`, on the policy that issued it. The tower
/// wrappers of this crate guarantee that, including on cancellation and on a
/// panic in the wrapped service, the classifier, or another stage's `admit`
/// or `complete`. None of the methods may block or allocate; `release` must
/// not panic (it runs in destructors, often while unwinding, where a second
/// panic aborts).
pub trait Admission {
    /// What an admitted request holds until it ends.
    type Token;

    /// Whether an admitted request holds anything: `false` promises that
    /// `complete` and `release` do nothing, so the wrappers drop the token at
    /// once and keep no reference to the policy (no `Arc` clone, no outcome
    /// classified). A rate limiter, which spends its tokens on admission, is
    /// the example. Default: `true`.
    const HOLDS: bool = true;

    /// The policy's name in the `policy` field of a call's `tracing` span
    /// (feature `tracing`, see [`span`](crate::span)). Default:
    /// `"admission"`.
    const NAME: &'static str = "admission";

    /// Whether `admit` uses its time argument (and, unless
    /// [`needs_time_at_end`](Self::needs_time_at_end) says otherwise,
    /// `complete` its). When no stage of a service needs the time, the
    /// service reads no clock.
    fn needs_time(&self) -> bool;

    /// Whether `complete` uses its time arguments (the admission time and
    /// `now`). Default: [`needs_time`](Self::needs_time).
    #[inline]
    fn needs_time_at_end(&self) -> bool {
        self.needs_time()
    }

    /// Whether `complete` of `token` with `outcome` uses `now`: when it
    /// says `false`, the wrappers skip the clock reading and pass any `now`.
    /// Only asked when [`needs_time_at_end`](Self::needs_time_at_end) is
    /// `true`. Default: `true` (a circuit breaker says `false` for a
    /// success that no rule times, see
    /// [`CircuitBreaker::record_needs_time`](tenlives_engine::breaker::CircuitBreaker::record_needs_time)).
    #[inline]
    fn needs_time_to_complete(&self, token: &Self::Token, outcome: Outcome) -> bool {
        let _ = (token, outcome);
        true
    }

    /// Whether `token` is a circuit breaker's probe or scout: a call whose
    /// outcome the breaker waits for to decide whether to close. A stack
    /// that holds refused requests for the breaker's answer
    /// ([`StackBuilder::hold_for_breaker`](crate::StackBuilder::hold_for_breaker))
    /// wakes them when such a call ends. Default: `false`.
    #[inline]
    fn is_probe(&self, token: &Self::Token) -> bool {
        let _ = token;
        false
    }

    /// Admits a request at `now`, or says why not.
    ///
    /// # Errors
    ///
    /// A [`Rejection`] naming the policy, the reason and, if known, when to
    /// retry.
    fn admit(&self, now: Timestamp) -> Result<Self::Token, Rejection>;

    /// Admits a request, reading the time through `now` only if the
    /// decision needs it, and says when it was admitted: the time read, or
    /// `None` when none was. [`AdmissionLayer`]'s services and the
    /// [`StackLayer`](crate::StackLayer)'s first attempt admit through it.
    /// Default: reads the time when [`needs_time`](Self::needs_time) (or
    /// [`needs_time_at_end`](Self::needs_time_at_end): `complete` is given
    /// the admission time) says so, then [`admit`](Self::admit). A policy
    /// whose need depends on its state overrides it (a closed circuit
    /// breaker without a slow-call rule reads nothing, see
    /// [`CircuitBreaker::try_acquire_raw_with`](tenlives_engine::breaker::CircuitBreaker::try_acquire_raw_with)),
    /// and so do the chains (pairs and triples): their stages share one
    /// reading, made by the first stage that needs it, so a chain reads
    /// at most once, and not at all when no stage decides with the time.
    /// An override that returns `None` promises that
    /// [`complete`](Self::complete) ignores its `admitted_at`. If `now`
    /// panics, nothing is held: an override calls it before it takes
    /// anything, or (a chain) releases what earlier stages took.
    ///
    /// # Errors
    ///
    /// As [`admit`](Self::admit).
    #[inline]
    fn admit_with(
        &self,
        now: impl FnOnce() -> Timestamp,
    ) -> Result<(Self::Token, Option<Timestamp>), Rejection> {
        let now = (self.needs_time() || self.needs_time_at_end()).then(now);
        self.admit(now.unwrap_or(Timestamp::ZERO))
            .map(|token| (token, now))
    }

    /// The request admitted at `admitted_at` ended at `now` with `outcome`.
    fn complete(
        &self,
        token: Self::Token,
        outcome: Outcome,
        admitted_at: Timestamp,
        now: Timestamp,
    );

    /// The request ended without an outcome (it was cancelled, or it
    /// panicked): give the token back, reporting nothing.
    fn release(&self, token: Self::Token);
}

impl<A: Admission> Admission for Option<A> {
    type Token = Option<A::Token>;
    const HOLDS: bool = A::HOLDS;
    const NAME: &'static str = A::NAME;

    #[inline]
    fn needs_time(&self) -> bool {
        self.as_ref().is_some_and(A::needs_time)
    }

    #[inline]
    fn needs_time_at_end(&self) -> bool {
        self.as_ref().is_some_and(A::needs_time_at_end)
    }

    #[inline]
    fn needs_time_to_complete(&self, token: &Self::Token, outcome: Outcome) -> bool {
        match (self, token) {
            (Some(a), Some(token)) => {
                a.needs_time_at_end() && a.needs_time_to_complete(token, outcome)
            }
            _ => false,
        }
    }

    #[inline]
    fn is_probe(&self, token: &Self::Token) -> bool {
        match (self, token) {
            (Some(a), Some(token)) => a.is_probe(token),
            _ => false,
        }
    }

    #[inline]
    fn admit(&self, now: Timestamp) -> Result<Self::Token, Rejection> {
        match self {
            Some(a) => a.admit(now).map(Some),
            None => Ok(None),
        }
    }

    #[inline]
    fn admit_with(
        &self,
        now: impl FnOnce() -> Timestamp,
    ) -> Result<(Self::Token, Option<Timestamp>), Rejection> {
        match self {
            Some(a) => a.admit_with(now).map(|(token, at)| (Some(token), at)),
            None => Ok((None, None)),
        }
    }

    #[inline]
    fn complete(
        &self,
        token: Self::Token,
        outcome: Outcome,
        admitted_at: Timestamp,
        now: Timestamp,
    ) {
        if let (Some(a), Some(token)) = (self, token) {
            a.complete(token, outcome, admitted_at, now);
        }
    }

    #[inline]
    fn release(&self, token: Self::Token) {
        if let (Some(a), Some(token)) = (self, token) {
            a.release(token);
        }
    }
}

impl<A: Admission, B: Admission> Admission for (A, B) {
    type Token = (A::Token, B::Token);
    const HOLDS: bool = A::HOLDS || B::HOLDS;
    const NAME: &'static str = "chain";

    #[inline]
    fn needs_time(&self) -> bool {
        self.0.needs_time() || self.1.needs_time()
    }

    #[inline]
    fn needs_time_at_end(&self) -> bool {
        self.0.needs_time_at_end() || self.1.needs_time_at_end()
    }

    /// `B` admits only if `A` did; if `B` rejects, or panics (a stage of
    /// the user's), `A`'s token is released.
    #[inline]
    fn needs_time_to_complete(&self, token: &Self::Token, outcome: Outcome) -> bool {
        (self.0.needs_time_at_end() && self.0.needs_time_to_complete(&token.0, outcome))
            || (self.1.needs_time_at_end() && self.1.needs_time_to_complete(&token.1, outcome))
    }

    #[inline]
    fn is_probe(&self, (a, b): &Self::Token) -> bool {
        self.0.is_probe(a) || self.1.is_probe(b)
    }

    #[inline]
    fn admit(&self, now: Timestamp) -> Result<Self::Token, Rejection> {
        let a = Releasing::new(&self.0, self.0.admit(now)?);
        let b = self.1.admit(now)?;
        Ok((a.keep(), b))
    }

    /// Both stages read through one lazy clock: at most one reading, made
    /// by the first stage whose decision needs it. If `B` rejects, or
    /// the reading panics in `B`, `A`'s token is released. Says the
    /// admission time if either stage does.
    #[inline]
    fn admit_with(
        &self,
        now: impl FnOnce() -> Timestamp,
    ) -> Result<(Self::Token, Option<Timestamp>), Rejection> {
        let mut clock = Lazy::new(now);
        let (a, at_a) = self.0.admit_with(|| clock.read())?;
        let a = Releasing::new(&self.0, a);
        let (b, at_b) = self.1.admit_with(|| clock.read())?;
        Ok(((a.keep(), b), at_a.or(at_b)))
    }

    /// Inner stage first: it ended first. If it panics, `A`'s token is
    /// released.
    #[inline]
    fn complete(
        &self,
        (a, b): Self::Token,
        outcome: Outcome,
        admitted_at: Timestamp,
        now: Timestamp,
    ) {
        let a = Releasing::new(&self.0, a);
        self.1.complete(b, outcome, admitted_at, now);
        self.0.complete(a.keep(), outcome, admitted_at, now);
    }

    #[inline]
    fn release(&self, (a, b): Self::Token) {
        let a = Releasing::new(&self.0, a);
        self.1.release(b);
        drop(a);
    }
}

/// A clock read at most once: the first [`read`](Lazy::read) calls it,
/// later ones return that reading. The stages of a chain share one, so a
/// chain reads the time once however many of its stages decide with it,
/// and never when none does. On the stack, no allocation.
struct Lazy<F> {
    clock: Option<F>,
    reading: Option<Timestamp>,
}

impl<F: FnOnce() -> Timestamp> Lazy<F> {
    #[inline]
    fn new(clock: F) -> Self {
        Lazy {
            clock: Some(clock),
            reading: None,
        }
    }

    #[inline]
    fn read(&mut self) -> Timestamp {
        if let Some(t) = self.reading {
            return t;
        }
        // The clock is taken only here, and a reading follows unless it
        // panics, which unwinds out of the chain: never read twice.
        let Some(clock) = self.clock.take() else {
            unreachable!("a lazy clock is read once")
        };
        let t = clock();
        self.reading = Some(t);
        t
    }
}

/// A token of `policy` that goes back to it on drop unless [`kept`]: it owns
/// a stage's token while another stage's code runs, so that a panic there
/// releases it.
///
/// [`kept`]: Releasing::keep
struct Releasing<'a, A: Admission> {
    policy: &'a A,
    token: Option<A::Token>,
}

impl<'a, A: Admission> Releasing<'a, A> {
    #[inline]
    fn new(policy: &'a A, token: A::Token) -> Self {
        Releasing {
            policy,
            token: Some(token),
        }
    }

    /// The token, no longer released on drop.
    #[inline]
    fn keep(mut self) -> A::Token {
        let Some(token) = self.token.take() else {
            unreachable!("a token is kept or released once")
        };
        token
    }
}

impl<A: Admission> Drop for Releasing<'_, A> {
    #[inline]
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            self.policy.release(token);
        }
    }
}

/// `Admission` for a pointer to a policy (`&A`, `Arc<A>`): every method
/// handed to the policy, so that the pointer admits exactly as the policy.
/// One list for both: the reference once missed `needs_time_to_complete`,
/// and read the clock at the end of every call its breaker did not need.
macro_rules! delegate_admission {
    ($(#[$doc:meta])* $pointer:ty) => {
        $(#[$doc])*
        impl<A: Admission + ?Sized> Admission for $pointer {
            type Token = A::Token;
            const HOLDS: bool = A::HOLDS;
            const NAME: &'static str = A::NAME;

            #[inline]
            fn needs_time(&self) -> bool {
                (**self).needs_time()
            }

            #[inline]
            fn needs_time_at_end(&self) -> bool {
                (**self).needs_time_at_end()
            }

            #[inline]
            fn needs_time_to_complete(&self, token: &Self::Token, outcome: Outcome) -> bool {
                (**self).needs_time_to_complete(token, outcome)
            }

            #[inline]
            fn is_probe(&self, token: &Self::Token) -> bool {
                (**self).is_probe(token)
            }

            #[inline]
            fn admit(&self, now: Timestamp) -> Result<Self::Token, Rejection> {
                (**self).admit(now)
            }

            #[inline]
            fn admit_with(
                &self,
                now: impl FnOnce() -> Timestamp,
            ) -> Result<(Self::Token, Option<Timestamp>), Rejection> {
                (**self).admit_with(now)
            }

            #[inline]
            fn complete(
                &self,
                token: Self::Token,
                outcome: Outcome,
                admitted_at: Timestamp,
                now: Timestamp,
            ) {
                (**self).complete(token, outcome, admitted_at, now);
            }

            #[inline]
            fn release(&self, token: Self::Token) {
                (**self).release(token);
            }
        }
    };
}

delegate_admission!(&A);
delegate_admission!(
    /// A policy shared behind an `Arc` (as a registry of named policies hands
    /// them out) admits as the policy itself.
    Arc<A>
);

/// A triple is the chain `(A, (B, C))`: admitted left to right, a rejection
/// releasing what came before, completed right to left (see the pair).
impl<A: Admission, B: Admission, C: Admission> Admission for (A, B, C) {
    type Token = (A::Token, (B::Token, C::Token));
    const HOLDS: bool = A::HOLDS || B::HOLDS || C::HOLDS;
    const NAME: &'static str = "chain";

    #[inline]
    fn needs_time(&self) -> bool {
        chain(self).needs_time()
    }

    #[inline]
    fn needs_time_at_end(&self) -> bool {
        chain(self).needs_time_at_end()
    }

    #[inline]
    fn needs_time_to_complete(&self, token: &Self::Token, outcome: Outcome) -> bool {
        let (a, (b, c)) = token;
        (self.0.needs_time_at_end() && self.0.needs_time_to_complete(a, outcome))
            || (self.1.needs_time_at_end() && self.1.needs_time_to_complete(b, outcome))
            || (self.2.needs_time_at_end() && self.2.needs_time_to_complete(c, outcome))
    }

    #[inline]
    fn is_probe(&self, (a, (b, c)): &Self::Token) -> bool {
        self.0.is_probe(a) || self.1.is_probe(b) || self.2.is_probe(c)
    }

    #[inline]
    fn admit(&self, now: Timestamp) -> Result<Self::Token, Rejection> {
        chain(self).admit(now)
    }

    /// One reading at most, shared by the three stages (see the pair).
    #[inline]
    fn admit_with(
        &self,
        now: impl FnOnce() -> Timestamp,
    ) -> Result<(Self::Token, Option<Timestamp>), Rejection> {
        chain(self).admit_with(now)
    }

    #[inline]
    fn complete(
        &self,
        token: Self::Token,
        outcome: Outcome,
        admitted_at: Timestamp,
        now: Timestamp,
    ) {
        chain(self).complete(token, outcome, admitted_at, now);
    }

    #[inline]
    fn release(&self, token: Self::Token) {
        chain(self).release(token);
    }
}

/// A triple seen as nested pairs.
#[inline]
fn chain<A, B, C>((a, b, c): &(A, B, C)) -> (&A, (&B, &C)) {
    (a, (b, c))
}

/// What every service made by one [`AdmissionLayer`] shares.
#[derive(Debug)]
struct Shared<A, K> {
    policy: A,
    classifier: K,
    clock: TokioClock,
    /// Whether `call` reads the clock: to admit, or to time the call.
    time_at_call: bool,
    /// Whether the end of a call reads the clock.
    time_at_end: bool,
}

/// A tower [`Layer`] that puts an [`Admission`] policy in front of a service.
///
/// Every service made by one layer value (and every clone of those) shares
/// one policy, behind one `Arc`: build one layer per dependency. The policy is
/// reachable with [`policy`](Self::policy), e.g. to read a breaker's state
/// for metrics.
///
/// ```
/// use std::time::Duration;
/// use tenlives_engine::bulkhead::Bulkhead;
/// use tenlives_tokio::{ConcurrencyLimitLayer, RejectionReason, TenlivesError};
/// use tower::{service_fn, Layer, Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let layer = ConcurrencyLimitLayer::new(Bulkhead::new(1)?);
/// let mut svc = layer.layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x * 2) }));
///
/// let first = svc.ready().await?.call(1); // admitted, not yet polled
/// let second = svc.ready().await?.call(2).await; // the one permit is taken
/// assert!(matches!(
///     second,
///     Err(TenlivesError::Rejected(r)) if matches!(r.reason(), RejectionReason::ConcurrencyLimit { .. })
/// ));
/// assert_eq!(first.await?, 2); // completing gives the permit back
/// assert_eq!(layer.policy().in_flight(), 0);
/// # Ok(())
/// # }
/// ```
pub struct AdmissionLayer<A, K = DefaultClassifier> {
    shared: Arc<Shared<A, K>>,
}

impl<A, K> Clone for AdmissionLayer<A, K> {
    fn clone(&self) -> Self {
        AdmissionLayer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<A: fmt::Debug, K> fmt::Debug for AdmissionLayer<A, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionLayer")
            .field("policy", &self.shared.policy)
            .finish_non_exhaustive()
    }
}

impl<A: Admission> AdmissionLayer<A> {
    /// A layer admitting through `policy`, counting `Ok` as success and `Err`
    /// as failure, timing calls on a [`TokioClock`] made now.
    pub fn new(policy: A) -> Self {
        Self::with_classifier(policy, DefaultClassifier, TokioClock::new())
    }
}

impl<A: Admission, K> AdmissionLayer<A, K> {
    /// A layer admitting through `policy`, judging outcomes with
    /// `classifier` (see [`Classify`]) and timing calls on `clock`.
    pub fn with_classifier(policy: A, classifier: K, clock: TokioClock) -> Self {
        let time_at_end = A::HOLDS && policy.needs_time_at_end();
        let time_at_call = policy.needs_time() || time_at_end;
        AdmissionLayer {
            shared: Arc::new(Shared {
                policy,
                classifier,
                clock,
                time_at_call,
                time_at_end,
            }),
        }
    }

    /// The policy, shared by every service this layer made.
    pub fn policy(&self) -> &A {
        &self.shared.policy
    }
}

impl<S, A, K> Layer<S> for AdmissionLayer<A, K> {
    type Service = AdmissionService<S, A, K>;

    fn layer(&self, inner: S) -> Self::Service {
        AdmissionService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// A service behind an [`Admission`] policy. Made by [`AdmissionLayer`].
///
/// Errors are [`TenlivesError<S::Error>`]: `Rejected` when the policy
/// refused, `Inner` when the wrapped service failed.
pub struct AdmissionService<S, A, K = DefaultClassifier> {
    inner: S,
    shared: Arc<Shared<A, K>>,
}

impl<S: Clone, A, K> Clone for AdmissionService<S, A, K> {
    fn clone(&self) -> Self {
        AdmissionService {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, A: fmt::Debug, K> fmt::Debug for AdmissionService<S, A, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionService")
            .field("inner", &self.inner)
            .field("policy", &self.shared.policy)
            .finish_non_exhaustive()
    }
}

impl<S, A, K> AdmissionService<S, A, K> {
    /// The policy, shared with every clone of this service.
    pub fn policy(&self) -> &A {
        &self.shared.policy
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, Req, A, K> Service<Req> for AdmissionService<S, A, K>
where
    S: Service<Req>,
    A: Admission,
    K: Classify<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = TenlivesError<S::Error>;
    type Future = AdmissionFuture<S::Future, A, K>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(TenlivesError::Inner)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &self.shared;
        // The policy reads the clock only if its decision needs it; a call
        // timed at its end without an admission time is one whose policy
        // ignores it (`Admission::admit_with`).
        let admitted = if shared.time_at_call {
            shared.policy.admit_with(|| shared.clock.now())
        } else {
            shared
                .policy
                .admit(Timestamp::ZERO)
                .map(|token| (token, None))
        };
        let held = match admitted {
            // Nothing to hold: the call runs unaccompanied.
            Ok(_) if !A::HOLDS => None,
            // The holder owns the token before the wrapped service's `call`
            // runs: a panic there unwinds through `held`, which releases it.
            Ok((token, at)) => Some(Held::new(
                Arc::clone(shared),
                token,
                at.unwrap_or(Timestamp::ZERO),
            )),
            Err(rejection) => {
                let span = call_span!("tenlives.admission", A::NAME);
                span.rejected(&rejection);
                return AdmissionFuture {
                    inner: None,
                    rejection: Some(rejection),
                    held: None,
                    span,
                };
            }
        };
        let span = call_span!("tenlives.admission", A::NAME);
        span.admitted();
        let inner = span.in_scope(|| self.inner.call(req));
        AdmissionFuture {
            inner: Some(inner),
            rejection: None,
            held,
            span,
        }
    }
}

/// A token, and the policy it goes back to. Releases on drop whatever was not
/// completed.
struct Held<A: Admission, K> {
    shared: Arc<Shared<A, K>>,
    token: Option<A::Token>,
    admitted_at: Timestamp,
}

impl<A: Admission, K> Held<A, K> {
    /// Holds `token`, admitted at `admitted_at`, from now on.
    #[inline]
    fn new(shared: Arc<Shared<A, K>>, token: A::Token, admitted_at: Timestamp) -> Self {
        Held {
            shared,
            token: Some(token),
            admitted_at,
        }
    }

    /// Reports how the call went. The outcome is decided before the token
    /// leaves `self`, so a panicking classifier still releases it on drop.
    #[inline]
    fn complete<Res, E>(&mut self, result: &Result<Res, E>) -> Outcome
    where
        K: Classify<Res, E>,
    {
        let shared = &*self.shared;
        let outcome = shared.classifier.classify(result);
        let needs_time = shared.time_at_end
            && self
                .token
                .as_ref()
                .is_some_and(|token| shared.policy.needs_time_to_complete(token, outcome));
        let now = if needs_time {
            shared.clock.now()
        } else {
            Timestamp::ZERO
        };
        if let Some(token) = self.token.take() {
            shared
                .policy
                .complete(token, outcome, self.admitted_at, now);
        }
        outcome
    }
}

impl<A: Admission, K> Drop for Held<A, K> {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            self.shared.policy.release(token);
        }
    }
}

pin_project! {
    /// The response future of an [`AdmissionService`]: the wrapped call, and
    /// the admission token it holds until it ends. Dropping it releases the
    /// token.
    #[must_use = "futures do nothing unless polled"]
    pub struct AdmissionFuture<F, A: Admission, K> {
        #[pin]
        inner: Option<F>,
        rejection: Option<Rejection>,
        held: Option<Held<A, K>>,
        span: CallSpan,
    }
}

impl<F: fmt::Debug, A: Admission, K> fmt::Debug for AdmissionFuture<F, A, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionFuture")
            .field("inner", &self.inner)
            .field("rejection", &self.rejection)
            .field("admitted", &self.held.is_some())
            .finish()
    }
}

impl<F, Res, E, A, K> Future for AdmissionFuture<F, A, K>
where
    F: Future<Output = Result<Res, E>>,
    A: Admission,
    K: Classify<Res, E>,
{
    type Output = Result<Res, TenlivesError<E>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return take_rejection(this.rejection);
        };
        // A panic here unwinds through this future; dropping it releases.
        let result = std::task::ready!(this.span.in_scope(|| inner.poll(cx)));
        this.inner.set(None);
        match this.held.as_mut() {
            Some(held) => this.span.classified(held.complete(&result)),
            None => this.span.ended(&result),
        }
        // The token is gone; drop the Arc now rather than with the future.
        *this.held = None;
        Poll::Ready(result.map_err(TenlivesError::Inner))
    }
}
