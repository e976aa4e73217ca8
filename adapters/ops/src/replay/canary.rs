//! Canary promotion: a candidate configuration takes a share of the
//! traffic; guardrails over its windows promote it into the registry's
//! live configuration or roll it back.
//!
//! [`Canary`] holds two arms, each a [`Candidate`]: the *baseline* (the
//! registry's configuration in force when the canary starts) and the
//! *candidate* (the new configuration). Every request goes to one arm: the
//! candidate's share is `share` percent, taken by a request counter (of
//! every 100 consecutive requests, the first `share` go to the candidate).
//! The candidate arm's requests are counted in windows of
//! [`Guardrails::window`]: requests, refusals, failures among the admitted,
//! and a latency histogram (p99 to within 25 %, rounded up).
//!
//! At the end of each window (noticed by the first request or
//! [`Canary::tick`] after it):
//!
//! - fewer than `min_requests` requests: the window is *quiet*, it neither
//!   counts nor breaks the run of good windows;
//! - a failure rate above `max_error_rate`, a refusal rate above
//!   `max_rejection_rate` or a p99 above `max_p99`: **rollback** at once,
//!   the candidate's share drops to 0, the registry is not touched;
//! - else a good window; after `windows` good windows in a row:
//!   **promotion**, [`Registry::apply`] makes the candidate the
//!   configuration in force (live, keeping every registry policy's state)
//!   and the candidate's share becomes 100.
//!
//! Time to rollback: a breach is acted on when its window closes, at most
//! one `window` after the window began, as long as a request or a `tick`
//! comes at least once a window (a layer in front of live traffic sees
//! requests; call `tick` from a timer when traffic may stop).
//!
//! Every step is audited: a [`CanaryEvent`] in [`Canary::events`], an
//! event in the registry's ring ([`events::CANARY_WINDOW`],
//! [`events::CANARY_PROMOTED`], [`events::CANARY_ROLLED_BACK`]) and an
//! `INFO` `tracing` record (target `tenlives::audit`).
//!
//! [`Registry::apply`]: crate::Registry::apply
//! [`events::CANARY_WINDOW`]: crate::events::CANARY_WINDOW
//! [`events::CANARY_PROMOTED`]: crate::events::CANARY_PROMOTED
//! [`events::CANARY_ROLLED_BACK`]: crate::events::CANARY_ROLLED_BACK

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tenlives_engine::breaker::Outcome;
use tenlives_engine::time::{Clock, Timestamp};
use tenlives_tokio::TokioClock;
use tower_layer::Layer;
use tower_service::Service;

use super::{Candidate, CandidateError, Stage, Tag, Token};
use crate::{ConfigSet, Registry, events};

/// When a canary's candidate arm is good enough.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Guardrails {
    /// The length of a window.
    pub window: Duration,
    /// Good windows in a row needed to promote.
    pub windows: u32,
    /// Requests a window needs to be judged at all.
    pub min_requests: u64,
    /// The highest share of admitted candidate requests that may fail, in
    /// `[0, 1]`.
    pub max_error_rate: f64,
    /// The highest share of candidate requests it may refuse, in `[0, 1]`.
    pub max_rejection_rate: f64,
    /// The highest p99 latency of admitted candidate requests.
    pub max_p99: Duration,
}

impl Guardrails {
    fn check(&self) -> Result<(), CandidateError> {
        let fail = |m: &str| Err(CandidateError(format!("guardrails: {m}")));
        if self.window.is_zero() || self.windows == 0 {
            return fail("`window` and `windows` must be above zero");
        }
        for (name, r) in [
            ("max_error_rate", self.max_error_rate),
            ("max_rejection_rate", self.max_rejection_rate),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return fail(&format!("`{name}` must be in [0, 1], not {r}"));
            }
        }
        Ok(())
    }
}

/// Which arm a request went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arm {
    /// The configuration in force when the canary started.
    Baseline,
    /// The new configuration.
    Candidate,
}

/// Where a canary stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The candidate takes its share; windows are being judged.
    Running,
    /// The candidate is the registry's configuration and takes every
    /// request.
    Promoted,
    /// The candidate takes no request; the registry kept its configuration.
    RolledBack,
}

/// The candidate arm's figures over one window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowStats {
    /// Requests routed to the candidate.
    pub requests: u64,
    /// Of those, refused by it.
    pub rejected: u64,
    /// Admitted requests that completed.
    pub completed: u64,
    /// Of those, failures.
    pub failed: u64,
    /// The p99 latency of the completed ones (the upper edge of its
    /// histogram bucket), if any completed.
    pub p99: Option<Duration>,
}

/// The guardrail a window broke.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Breach {
    /// Failures over completed requests.
    ErrorRate(f64),
    /// Refusals over requests.
    RejectionRate(f64),
    /// The p99 latency.
    P99(Duration),
}

/// A step of a canary.
#[derive(Clone, Debug, PartialEq)]
pub enum CanaryStep {
    /// The canary started with this share, in percent.
    Started {
        /// The candidate's share.
        share: u32,
    },
    /// A window had too few requests to judge.
    Quiet(WindowStats),
    /// A window kept within every guardrail; `good` in a row so far.
    Passed {
        /// The window's figures.
        stats: WindowStats,
        /// Good windows in a row, this one included.
        good: u32,
    },
    /// A window broke a guardrail: the candidate was rolled back.
    RolledBack {
        /// The window's figures.
        stats: WindowStats,
        /// What it broke.
        breach: Breach,
    },
    /// The candidate was applied to the registry.
    Promoted {
        /// Registry instances whose configuration changed.
        changed: Vec<String>,
    },
}

/// A step and when it happened.
#[derive(Clone, Debug, PartialEq)]
pub struct CanaryEvent {
    /// When, on the canary's clock.
    pub at: Timestamp,
    /// What.
    pub step: CanaryStep,
}

/// Latency histogram: 4 buckets per power of two of microseconds.
const BUCKETS: usize = 252;

fn bucket_of(micros: u64) -> usize {
    if micros < 4 {
        return micros as usize;
    }
    let e = 63 - micros.leading_zeros() as usize;
    let sub = ((micros >> (e - 2)) & 3) as usize;
    4 + (e - 2) * 4 + sub
}

/// The exclusive upper edge of bucket `i`, in microseconds.
fn upper_of(i: usize) -> u64 {
    if i < 4 {
        return i as u64 + 1;
    }
    let e = (i - 4) / 4 + 2;
    let sub = ((i - 4) % 4) as u64;
    u64::try_from(u128::from(5 + sub) << (e - 2)).unwrap_or(u64::MAX)
}

struct ArmStats {
    requests: AtomicU64,
    rejected: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

impl ArmStats {
    fn new() -> Self {
        ArmStats {
            requests: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Takes the window's figures, leaving zero.
    fn take(&self) -> WindowStats {
        // ordering: Relaxed; counters. A request counted during the swap
        // lands in this window or the next, either is fine.
        let take = |a: &AtomicU64| a.swap(0, Ordering::Relaxed);
        let counts: [u64; BUCKETS] = std::array::from_fn(|i| take(&self.latency[i]));
        let total: u64 = counts.iter().sum();
        let p99 = (total > 0).then(|| {
            let rank = total - total / 100;
            let mut seen = 0;
            let mut edge = u64::MAX;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    edge = upper_of(i);
                    break;
                }
            }
            Duration::from_micros(edge)
        });
        WindowStats {
            requests: take(&self.requests),
            rejected: take(&self.rejected),
            completed: take(&self.completed),
            failed: take(&self.failed),
            p99,
        }
    }
}

/// Whether a window ending at `end` (nanoseconds) has ended by `now`. A
/// window whose end saturated at the clock's end never ends: a clock stuck
/// at `Timestamp::MAX` would otherwise close one window per request.
fn ended(end: u64, now: Timestamp) -> bool {
    end != u64::MAX && now.as_nanos() >= end
}

fn bump(a: &AtomicU64) {
    // ordering: Relaxed; a counter, nothing is published through it.
    a.fetch_add(1, Ordering::Relaxed);
}

const RUNNING: u8 = 0;
const PROMOTED: u8 = 1;
const ROLLED_BACK: u8 = 2;

struct Control {
    good: u32,
    events: Vec<CanaryEvent>,
}

/// A canary: see the [module documentation](self).
pub struct Canary {
    registry: Registry,
    baseline: Candidate,
    candidate: Candidate,
    config: ConfigSet,
    guard: Guardrails,
    share: AtomicU32,
    seq: AtomicU64,
    phase: AtomicU8,
    window_end: AtomicU64,
    stats: ArmStats,
    control: Mutex<Control>,
}

impl fmt::Debug for Canary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Canary")
            .field("phase", &self.phase())
            .field("share", &self.share())
            .finish_non_exhaustive()
    }
}

impl Canary {
    /// A canary of `candidate` for the policies of instance `instance`,
    /// beside the configuration `registry` has in force, taking `share`
    /// percent of the requests (capped at 100), its first window starting
    /// at `now`.
    ///
    /// # Errors
    ///
    /// A configuration with nothing for `instance`, or guardrails out of
    /// range.
    pub fn new(
        registry: &Registry,
        instance: &str,
        candidate: ConfigSet,
        share: u32,
        guard: Guardrails,
        now: Timestamp,
    ) -> Result<Self, CandidateError> {
        guard.check()?;
        let baseline = Candidate::from_config(&registry.config(), instance)?;
        let arm = Candidate::from_config(&candidate, instance)?;
        let share = share.min(100);
        let canary = Canary {
            registry: registry.clone(),
            baseline,
            candidate: arm,
            config: candidate,
            guard,
            share: AtomicU32::new(share),
            seq: AtomicU64::new(0),
            phase: AtomicU8::new(RUNNING),
            window_end: AtomicU64::new(now.saturating_add(guard.window).as_nanos()),
            stats: ArmStats::new(),
            control: Mutex::new(Control {
                good: 0,
                events: Vec::new(),
            }),
        };
        let mut control = canary.lock();
        canary.audit(&mut control, now, CanaryStep::Started { share });
        drop(control);
        Ok(canary)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where it stands.
    pub fn phase(&self) -> Phase {
        // ordering: Acquire; pairs with the Release store in `close`, so a
        // reader that sees the end sees the share set with it.
        match self.phase.load(Ordering::Acquire) {
            RUNNING => Phase::Running,
            PROMOTED => Phase::Promoted,
            _ => Phase::RolledBack,
        }
    }

    /// The candidate's share of requests now, in percent.
    pub fn share(&self) -> u32 {
        // ordering: Relaxed; a routing hint, read alone.
        self.share.load(Ordering::Relaxed)
    }

    /// Every step so far, oldest first.
    pub fn events(&self) -> Vec<CanaryEvent> {
        self.lock().events.clone()
    }

    /// The arm's policies.
    pub fn arm(&self, arm: Arm) -> &Candidate {
        match arm {
            Arm::Baseline => &self.baseline,
            Arm::Candidate => &self.candidate,
        }
    }

    /// Closes the window if it ended by `now`, judging it.
    pub fn tick(&self, now: Timestamp) {
        // ordering: Relaxed; a hint checked again under the lock.
        if !ended(self.window_end.load(Ordering::Relaxed), now) || self.phase() != Phase::Running {
            return;
        }
        let Ok(mut control) = self.control.try_lock() else {
            // Another request is closing it.
            return;
        };
        self.close(&mut control, now);
    }

    fn close(&self, control: &mut Control, now: Timestamp) {
        // ordering: Relaxed; the window end is only written under the lock
        // held here.
        if !ended(self.window_end.load(Ordering::Relaxed), now) || self.phase() != Phase::Running {
            return;
        }
        let stats = self.stats.take();
        // ordering: Relaxed; as above.
        self.window_end.store(
            now.saturating_add(self.guard.window).as_nanos(),
            Ordering::Relaxed,
        );
        if stats.requests < self.guard.min_requests {
            self.audit(control, now, CanaryStep::Quiet(stats));
            return;
        }
        let ratio = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
        let error_rate = ratio(stats.failed, stats.completed);
        let rejection_rate = ratio(stats.rejected, stats.requests);
        let breach = if error_rate > self.guard.max_error_rate {
            Some(Breach::ErrorRate(error_rate))
        } else if rejection_rate > self.guard.max_rejection_rate {
            Some(Breach::RejectionRate(rejection_rate))
        } else {
            stats
                .p99
                .filter(|p| *p > self.guard.max_p99)
                .map(Breach::P99)
        };
        if let Some(breach) = breach {
            // ordering: Relaxed for the share (a routing hint); Release for
            // the phase, pairing with the Acquire in `phase`.
            self.share.store(0, Ordering::Relaxed);
            self.phase.store(ROLLED_BACK, Ordering::Release);
            self.audit(control, now, CanaryStep::RolledBack { stats, breach });
            return;
        }
        control.good += 1;
        let good = control.good;
        self.audit(control, now, CanaryStep::Passed { stats, good });
        if good >= self.guard.windows {
            let report = self.registry.apply(self.config.clone());
            // ordering: as for the rollback.
            self.share.store(100, Ordering::Relaxed);
            self.phase.store(PROMOTED, Ordering::Release);
            self.audit(
                control,
                now,
                CanaryStep::Promoted {
                    changed: report.changed,
                },
            );
        }
    }

    fn audit(&self, control: &mut Control, at: Timestamp, step: CanaryStep) {
        let (kind, payload, action) = match &step {
            CanaryStep::Started { share } => (
                events::CANARY_WINDOW,
                [0, u64::from(*share)],
                "canary started",
            ),
            CanaryStep::Quiet(s) => (
                events::CANARY_WINDOW,
                [1, s.requests],
                "canary window quiet",
            ),
            CanaryStep::Passed { good, .. } => (
                events::CANARY_WINDOW,
                [2, u64::from(*good)],
                "canary window passed",
            ),
            CanaryStep::RolledBack { stats, .. } => (
                events::CANARY_ROLLED_BACK,
                [stats.requests, stats.failed],
                "canary rolled back",
            ),
            CanaryStep::Promoted { changed } => (
                events::CANARY_PROMOTED,
                [changed.len() as u64, 0],
                "canary promoted",
            ),
        };
        self.registry.emit(kind, payload);
        tracing::info!(target: "tenlives::audit", who = "canary", action, at_ns = at.as_nanos(), step = ?step, "canary step");
        control.events.push(CanaryEvent { at, step });
    }

    /// Picks the arm of the request arriving at `now` (closing the window
    /// first if it ended).
    pub fn route(&self, now: Timestamp) -> Arm {
        self.tick(now);
        // ordering: Relaxed; only the counter's own sequence matters.
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        if seq % 100 < u64::from(self.share()) {
            Arm::Candidate
        } else {
            Arm::Baseline
        }
    }

    /// Admits a request on `arm` at `now`, counting the candidate arm's.
    ///
    /// # Errors
    ///
    /// The arm's refusing stage.
    pub fn admit(&self, arm: Arm, now: Timestamp, retry: bool) -> Result<Token, Stage> {
        let verdict = self.arm(arm).admit(now, retry);
        if arm == Arm::Candidate && self.phase() == Phase::Running {
            bump(&self.stats.requests);
            if verdict.is_err() {
                bump(&self.stats.rejected);
            }
        }
        verdict
    }

    /// The request admitted on `arm` ended at `now` after `latency` with
    /// `outcome`.
    pub fn complete(
        &self,
        arm: Arm,
        token: Token,
        outcome: Outcome,
        latency: Duration,
        now: Timestamp,
    ) {
        self.arm(arm).complete(token, outcome, now);
        if arm == Arm::Candidate && self.phase() == Phase::Running && outcome != Outcome::Ignored {
            bump(&self.stats.completed);
            if outcome == Outcome::Failure {
                bump(&self.stats.failed);
            }
            let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            bump(&self.stats.latency[bucket_of(micros)]);
        }
    }

    /// The request admitted on `arm` ended without an outcome.
    pub fn release(&self, arm: Arm, token: Token) {
        self.arm(arm).release(token);
    }
}

/// Why a [`CanaryService`] call failed.
#[derive(Debug, PartialEq, Eq)]
pub enum CanaryError<E> {
    /// The arm the request went to refused it.
    Refused {
        /// The arm.
        arm: Arm,
        /// The refusing stage.
        stage: Stage,
    },
    /// The wrapped service failed.
    Inner(E),
}

impl<E: fmt::Display> fmt::Display for CanaryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CanaryError::Refused { arm, stage } => {
                write!(f, "refused by the {} of the {arm:?} arm", stage.name())
            }
            CanaryError::Inner(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for CanaryError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CanaryError::Inner(e) => Some(e),
            CanaryError::Refused { .. } => None,
        }
    }
}

/// Puts a [`Canary`]'s two arms in front of a service: each request is
/// admitted by the arm it is routed to, the wrapped service's result is
/// classified (`Ok` a success, `Err` a failure, or by the function given)
/// and reported to that arm. The layer replaces the live policy layer for
/// the canary's instance while the canary runs.
#[derive(Clone)]
pub struct CanaryLayer<T, C> {
    canary: Arc<Canary>,
    clock: TokioClock,
    tag: T,
    classify: C,
}

impl<T, C> fmt::Debug for CanaryLayer<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CanaryLayer")
            .field("canary", &self.canary)
            .finish_non_exhaustive()
    }
}

impl<T, C> CanaryLayer<T, C> {
    /// A layer routing through `canary`, reading `clock` (the one `canary`
    /// was started on).
    pub fn new(canary: Arc<Canary>, clock: TokioClock, tag: T, classify: C) -> Self {
        CanaryLayer {
            canary,
            clock,
            tag,
            classify,
        }
    }
}

impl<S, T: Clone, C: Clone> Layer<S> for CanaryLayer<T, C> {
    type Service = CanaryService<S, T, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CanaryService {
            inner,
            canary: self.canary.clone(),
            clock: self.clock,
            tag: self.tag.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// The service of a [`CanaryLayer`].
#[derive(Clone)]
pub struct CanaryService<S, T, C> {
    inner: S,
    canary: Arc<Canary>,
    clock: TokioClock,
    tag: T,
    classify: C,
}

impl<S, T, C> fmt::Debug for CanaryService<S, T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CanaryService").finish_non_exhaustive()
    }
}

impl<S, T, C, Req> Service<Req> for CanaryService<S, T, C>
where
    S: Service<Req>,
    T: Fn(&Req) -> Tag,
    C: Fn(&Result<S::Response, S::Error>) -> Outcome + Clone,
{
    type Response = S::Response;
    type Error = CanaryError<S::Error>;
    type Future = CanaryFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(CanaryError::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let now = self.clock.now();
        let arm = self.canary.route(now);
        let retry = (self.tag)(&req).retry;
        match self.canary.admit(arm, now, retry) {
            Ok(token) => {
                // Held before the call: if `call` panics, the arm's permits
                // go back as it unwinds.
                let held = HeldArm {
                    canary: self.canary.clone(),
                    arm,
                    token: Some(token),
                    started: now,
                    clock: self.clock,
                };
                CanaryFuture {
                    inner: Some(self.inner.call(req)),
                    held: Some(held),
                    refused: None,
                    classify: self.classify.clone(),
                }
            }
            Err(stage) => CanaryFuture {
                inner: None,
                held: None,
                refused: Some((arm, stage)),
                classify: self.classify.clone(),
            },
        }
    }
}

/// An admitted request's token: released on drop when not completed (a
/// cancelled request, or a panic in the service or the classifier).
struct HeldArm {
    canary: Arc<Canary>,
    arm: Arm,
    token: Option<Token>,
    started: Timestamp,
    clock: TokioClock,
}

impl Drop for HeldArm {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            self.canary.release(self.arm, token);
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of a [`CanaryService`].
    pub struct CanaryFuture<F, C> {
        #[pin]
        inner: Option<F>,
        held: Option<HeldArm>,
        refused: Option<(Arm, Stage)>,
        classify: C,
    }
}

impl<F, C> fmt::Debug for CanaryFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CanaryFuture").finish_non_exhaustive()
    }
}

impl<F, C, Res, E> Future for CanaryFuture<F, C>
where
    F: Future<Output = Result<Res, E>>,
    C: Fn(&Result<Res, E>) -> Outcome,
{
    type Output = Result<Res, CanaryError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let (arm, stage) = this
                .refused
                .take()
                .expect("a refused future is polled once");
            return Poll::Ready(Err(CanaryError::Refused { arm, stage }));
        };
        let result = std::task::ready!(inner.poll(cx));
        if let Some(mut held) = this.held.take() {
            // A panicking classifier unwinds from here: `held` is dropped
            // and hands the token back uncounted.
            let outcome = (this.classify)(&result);
            if let Some(token) = held.token.take() {
                let now = held.clock.now();
                let latency = now.saturating_duration_since(held.started);
                held.canary.complete(held.arm, token, outcome, latency, now);
            }
        }
        Poll::Ready(result.map_err(CanaryError::Inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_latency_and_their_edges_bound_it() {
        for v in (0..20_000u64).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let i = bucket_of(v);
            assert!(i < BUCKETS, "{v}");
            assert!(upper_of(i) > v || upper_of(i) == u64::MAX, "{v} in {i}");
            if i > 0 {
                assert!(upper_of(i - 1) <= v, "{v} in {i}");
            }
            // Within 25 %.
            if v >= 4 {
                assert!(upper_of(i) as f64 <= v as f64 * 1.25 + 1.0, "{v}");
            }
        }
    }
}
