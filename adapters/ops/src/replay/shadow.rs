//! Shadow evaluation: a candidate configuration beside the live one, on
//! live traffic, deciding nothing.
//!
//! [`ShadowLayer`] goes outside the live stack. For each request it asks
//! the [`Candidate`] what it would do (one clock reading and the
//! candidate's own admission: no allocation, no lock), calls the live
//! service whatever the answer, and when the live result comes back
//! classifies it (`shed` when the live stack refused, else the call's
//! outcome) and compares:
//!
//! - the candidate refused, the live stack admitted: *would reject but
//!   admitted* (also counted by the refusing stage);
//! - the candidate admitted, the live stack shed: *would admit but
//!   rejected* (the candidate hands its permits back: the outcome the
//!   dependency would have given is unknown);
//! - both admitted: the candidate hears the outcome, as the live stack did;
//! - after each request, if a live breaker state is given and the candidate
//!   has a breaker: *breaker state differs* when the two states differ, and
//!   a `tracing` event (target `tenlives::shadow`) each time they start or
//!   stop differing.
//!
//! The response is the live service's, untouched. A panic in the
//! classifier or the tag function is caught and counted; the candidate's
//! permits go back; the live result is returned as it came. A cancelled
//! request hands the candidate's permits back and counts nothing.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tenlives_engine::breaker::{BreakerState, Outcome};
use tenlives_engine::time::Clock;
use tenlives_tokio::TokioClock;
use tower_layer::Layer;
use tower_service::Service;

use super::{Candidate, Stage, Tag, Token, TraceOutcome};

/// The disagreement counters of a [`ShadowLayer`].
#[derive(Debug, Default)]
pub struct ShadowStats {
    requests: AtomicU64,
    agreed: AtomicU64,
    would_reject_but_admitted: AtomicU64,
    would_reject_by_stage: [AtomicU64; 5],
    would_admit_but_rejected: AtomicU64,
    breaker_state_differs: AtomicU64,
    differing: AtomicBool,
    panics: AtomicU64,
}

/// A copy of a [`ShadowStats`]' counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowCounts {
    /// Requests that completed through the layer.
    pub requests: u64,
    /// Of those, where the candidate decided as the live stack did.
    pub agreed: u64,
    /// The candidate would have refused a request the live stack admitted.
    pub would_reject_but_admitted: u64,
    /// The same, by the candidate's refusing stage (indexed like
    /// [`Stage::ALL`]).
    pub would_reject_by_stage: [u64; 5],
    /// The candidate would have admitted a request the live stack refused.
    pub would_admit_but_rejected: u64,
    /// Requests after which the candidate's breaker state differed from
    /// the live breaker's.
    pub breaker_state_differs: u64,
    /// Panics caught in the tag function or the classifier.
    pub panics: u64,
}

impl ShadowStats {
    /// The counters now.
    pub fn counts(&self) -> ShadowCounts {
        // ordering: Relaxed; independent counters, read for display.
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ShadowCounts {
            requests: load(&self.requests),
            agreed: load(&self.agreed),
            would_reject_but_admitted: load(&self.would_reject_but_admitted),
            would_reject_by_stage: std::array::from_fn(|i| load(&self.would_reject_by_stage[i])),
            would_admit_but_rejected: load(&self.would_admit_but_rejected),
            breaker_state_differs: load(&self.breaker_state_differs),
            panics: load(&self.panics),
        }
    }

    fn bump(a: &AtomicU64) {
        // ordering: Relaxed; a counter, nothing is published through it.
        a.fetch_add(1, Ordering::Relaxed);
    }
}

type LiveState = Arc<dyn Fn() -> BreakerState + Send + Sync>;

struct Shared {
    candidate: Candidate,
    stats: Arc<ShadowStats>,
    live_breaker: OnceLock<LiveState>,
    clock: TokioClock,
}

impl Shared {
    fn compare_breakers(&self) {
        let (Some(live), Some(shadow)) = (self.live_breaker.get(), self.candidate.breaker_state())
        else {
            return;
        };
        let live = live();
        let differs = live != shadow;
        if differs {
            ShadowStats::bump(&self.stats.breaker_state_differs);
        }
        // ordering: Relaxed; only decides whether to log a change, a lost
        // race logs it twice or not at all, never affects a decision.
        if self.stats.differing.swap(differs, Ordering::Relaxed) != differs {
            tracing::info!(
                target: "tenlives::shadow",
                differs,
                live = ?live,
                candidate = ?shadow,
                "shadow breaker state {}",
                if differs { "differs from the live one" } else { "agrees with the live one again" }
            );
        }
    }
}

/// Runs a [`Candidate`] beside the wrapped (live) service: see the
/// [module documentation](self).
#[derive(Clone)]
pub struct ShadowLayer<T, C> {
    shared: Arc<Shared>,
    tag: T,
    classify: C,
}

impl<T, C> std::fmt::Debug for ShadowLayer<T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowLayer")
            .field("candidate", &self.shared.candidate)
            .finish_non_exhaustive()
    }
}

impl<T, C> ShadowLayer<T, C> {
    /// A layer evaluating `candidate`; `tag` says whether a request is a
    /// retry (its key is not used), `classify` how the live result reads
    /// ([`stack_outcome`](crate::replay::stack_outcome) for a tenlives
    /// stack's).
    pub fn new(candidate: Candidate, tag: T, classify: C) -> Self {
        ShadowLayer {
            shared: Arc::new(Shared {
                candidate,
                stats: Arc::new(ShadowStats::default()),
                live_breaker: OnceLock::new(),
                clock: TokioClock::new(),
            }),
            tag,
            classify,
        }
    }

    /// Compares the candidate's breaker with the live one, whose state
    /// `state` reads (for a registry breaker: `move || breaker.state()`).
    /// Shared with every clone of the layer and its services; the first
    /// function given stays.
    #[must_use]
    pub fn compare_breaker(self, state: impl Fn() -> BreakerState + Send + Sync + 'static) -> Self {
        let _first_stays = self.shared.live_breaker.set(Arc::new(state));
        self
    }

    /// The counters, shared with every service of this layer.
    pub fn stats(&self) -> Arc<ShadowStats> {
        self.shared.stats.clone()
    }

    /// The candidate, to read its state.
    pub fn candidate(&self) -> &Candidate {
        &self.shared.candidate
    }
}

impl<S, T: Clone, C: Clone> Layer<S> for ShadowLayer<T, C> {
    type Service = ShadowService<S, T, C>;

    fn layer(&self, inner: S) -> Self::Service {
        ShadowService {
            inner,
            shared: self.shared.clone(),
            tag: self.tag.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// The service of a [`ShadowLayer`].
#[derive(Clone)]
pub struct ShadowService<S, T, C> {
    inner: S,
    shared: Arc<Shared>,
    tag: T,
    classify: C,
}

impl<S: std::fmt::Debug, T, C> std::fmt::Debug for ShadowService<S, T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, T, C, Req> Service<Req> for ShadowService<S, T, C>
where
    S: Service<Req>,
    T: Fn(&Req) -> Tag,
    C: Fn(&Result<S::Response, S::Error>) -> TraceOutcome + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ShadowFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let verdict = match catch_unwind(AssertUnwindSafe(|| (self.tag)(&req))) {
            Ok(tag) => {
                let now = self.shared.clock.now();
                Some(self.shared.candidate.admit(now, tag.retry))
            }
            Err(_) => {
                ShadowStats::bump(&self.shared.stats.panics);
                None
            }
        };
        let judged = verdict.is_some();
        let (token, refused) = match verdict {
            Some(Ok(token)) => (Some(token), None),
            Some(Err(stage)) => (None, Some(stage)),
            None => (None, None),
        };
        // Held before the live call: if `call` panics, the candidate's
        // permits go back as it unwinds.
        let held = Held {
            shared: self.shared.clone(),
            token,
            refused,
            judged,
        };
        ShadowFuture {
            inner: self.inner.call(req),
            held,
            classify: self.classify.clone(),
        }
    }
}

/// The candidate's side of one request: released on drop if not completed.
struct Held {
    shared: Arc<Shared>,
    token: Option<Token>,
    refused: Option<Stage>,
    /// Whether the candidate decided (not when the tag function panicked).
    judged: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            self.shared.candidate.release(token);
        }
    }
}

impl Held {
    fn finish(&mut self, live: Result<TraceOutcome, ()>) {
        let shared = &*self.shared;
        let stats = &shared.stats;
        let Ok(live) = live else {
            ShadowStats::bump(&stats.panics);
            if let Some(token) = self.token.take() {
                shared.candidate.release(token);
            }
            return;
        };
        if !self.judged {
            return;
        }
        ShadowStats::bump(&stats.requests);
        let live_admitted = live != TraceOutcome::Shed;
        match (self.token.take(), self.refused) {
            (Some(token), _) if !live_admitted => {
                ShadowStats::bump(&stats.would_admit_but_rejected);
                shared.candidate.release(token);
            }
            (Some(token), _) => {
                ShadowStats::bump(&stats.agreed);
                let outcome = match live {
                    TraceOutcome::Ok => Outcome::Success,
                    TraceOutcome::Err => Outcome::Failure,
                    _ => Outcome::Ignored,
                };
                shared
                    .candidate
                    .complete(token, outcome, shared.clock.now());
            }
            (None, Some(stage)) if live_admitted => {
                ShadowStats::bump(&stats.would_reject_but_admitted);
                ShadowStats::bump(&stats.would_reject_by_stage[stage.index()]);
            }
            (None, _) => ShadowStats::bump(&stats.agreed),
        }
        shared.compare_breakers();
    }
}

pin_project_lite::pin_project! {
    /// The response future of a [`ShadowService`]: the live future, and the
    /// candidate's permits.
    pub struct ShadowFuture<F, C> {
        #[pin]
        inner: F,
        held: Held,
        classify: C,
    }
}

impl<F, C> std::fmt::Debug for ShadowFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowFuture").finish_non_exhaustive()
    }
}

impl<F, C, Res, E> Future for ShadowFuture<F, C>
where
    F: Future<Output = Result<Res, E>>,
    C: Fn(&Result<Res, E>) -> TraceOutcome,
{
    type Output = Result<Res, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let classify = &*this.classify;
        let live = catch_unwind(AssertUnwindSafe(|| classify(&result))).map_err(|_| ());
        this.held.finish(live);
        Poll::Ready(result)
    }
}
