//! `tracing` spans around every call through a layer (cargo feature
//! `tracing`).
//!
//! With the feature on, each layer's `call` opens a span (target
//! [`TARGET`], level `DEBUG`) that the response future
//! enters whenever it is polled, so what the wrapped service logs is inside
//! it, and records on it:
//!
//! | field | when | value |
//! |---|---|---|
//! | `policy` | always | the layer's policy: `circuit_breaker`, `concurrency_limit`, `adaptive_limit`, `rate_limit`, `keyed_rate_limit`, `admission_queue`, `throttle`, `timeout`, `retry`, `fault`, `stack`, `hedge`, `fallback`, `deadline`, `coalesce`, `idempotency`, `cache`, `eject`, `rate_limit_headers`, or the [`Admission::NAME`](crate::Admission::NAME) of a policy of your own |
//! | `decision` | once the policy decided | `admitted` or `rejected`; for the fault layer, what it does: `pass`, `error`, `hang`, `drop_connection`; hedge: `hedged` or `not_hedged`; fallback: `primary` or `fallback`; coalesce: `led` or `joined`; idempotency: `led`, `joined`, `replayed` or `unkeyed`; cache: `hit`, `miss` or `bypass`; eject: `admitted`, `ejected` or `untracked` |
//! | `reason` | rejected | the [`RejectionReason`](crate::RejectionReason), as `Debug`; for a fallback taken, the kind of failure it answered (`FallbackWhen::reason`) |
//! | `retry_after_ms` | rejected, when the policy knows | when to retry |
//! | `wait_ms` | the admission queue, after a wait | how long the request waited |
//! | `attempts` | retry, stack with retry, hedge | attempts made |
//! | `budget_ms` | deadline, when the call has one | the time the call is given |
//! | `outcome` | the call ended | `success`, `failure` or `ignored` where the layer classifies outcomes (breaker, limits, throttle, stack, eject), `ok` or `error` elsewhere, `timed_out` for a timeout or a deadline |
//!
//! A span that closes with no `outcome` and a `decision` of `admitted` is a
//! call that was cancelled (its future dropped).
//!
//! Spans are named `tenlives.<layer>` (`tenlives.admission`,
//! `tenlives.queue`, `tenlives.keyed_rate_limit`, `tenlives.throttle`,
//! `tenlives.timeout`, `tenlives.retry`, `tenlives.fault`, `tenlives.stack`,
//! `tenlives.hedge`, `tenlives.fallback`, `tenlives.deadline`,
//! `tenlives.coalesce`, `tenlives.idempotency`, `tenlives.cache`,
//! `tenlives.eject`, `tenlives.rate_limit_headers`).
//!
//! Cost: without the feature, [`CallSpan`] is a zero-sized type whose
//! methods are empty, and the layers compile to what they were. With the
//! feature and no subscriber interested (none installed, or one filtering
//! `DEBUG` spans of target `tenlives` out), opening a span is a load and a
//! compare of tracing's global level, and every record or enter is one test
//! of an empty span: `docs/telemetry.md` gives the instruction counts.

#[cfg(feature = "tracing")]
use std::mem::ManuallyDrop;
#[cfg(feature = "tracing")]
use std::time::Duration;

#[cfg(feature = "tracing")]
use tenlives_engine::breaker::Outcome;

#[cfg(feature = "tracing")]
use crate::error::Rejection;

/// The target of every span the layers open.
pub const TARGET: &str = "tenlives";

/// Opens a layer's span: `call_span!("tenlives.timeout", "timeout")`.
#[cfg(feature = "tracing")]
macro_rules! call_span {
    ($name:literal, $policy:expr) => {{
        /// Opens the span: out of line, so that the layer's own code stays
        /// as small as it was when nobody listens.
        #[cold]
        #[inline(never)]
        fn open(policy: &'static str) -> $crate::span::CallSpan {
            $crate::span::CallSpan::from_span(::tracing::span!(
                target: "tenlives",
                ::tracing::Level::DEBUG,
                $name,
                policy,
                decision = ::tracing::field::Empty,
                reason = ::tracing::field::Empty,
                retry_after_ms = ::tracing::field::Empty,
                wait_ms = ::tracing::field::Empty,
                attempts = ::tracing::field::Empty,
                budget_ms = ::tracing::field::Empty,
                outcome = ::tracing::field::Empty,
            ))
        }
        // The level test first: with nobody listening at `DEBUG`, that load
        // and compare is all a call pays.
        if ::tracing::level_enabled!(::tracing::Level::DEBUG) {
            open($policy)
        } else {
            $crate::span::CallSpan::OFF
        }
    }};
}

/// Without the feature: nothing.
#[cfg(not(feature = "tracing"))]
macro_rules! call_span {
    ($name:literal, $policy:expr) => {
        $crate::span::CallSpan::OFF
    };
}

pub(crate) use call_span;

/// The span of one call through a layer: a `tracing::Span` with the
/// feature `tracing`, nothing (zero-sized) without it. Held by every
/// layer's response future.
#[cfg(feature = "tracing")]
#[derive(Debug)]
pub struct CallSpan {
    /// `None` when nobody listens (then only the tag is written). Dropped
    /// by `CallSpan`'s own `Drop`, out of line.
    span: Option<ManuallyDrop<tracing::Span>>,
}

#[cfg(feature = "tracing")]
impl Drop for CallSpan {
    #[inline(always)]
    fn drop(&mut self) {
        if let Some(span) = &mut self.span {
            close(span);
        }
    }
}

/// Drops (closes) an enabled span.
#[cfg(feature = "tracing")]
#[cold]
#[inline(never)]
fn close(span: &mut ManuallyDrop<tracing::Span>) {
    // SAFETY: called once, from `CallSpan::drop`, which never touches the
    // span again.
    unsafe { ManuallyDrop::drop(span) }
}

/// The span of one call through a layer: a `tracing::Span` with the
/// feature `tracing`, nothing (zero-sized) without it. Held by every
/// layer's response future.
#[cfg(not(feature = "tracing"))]
#[derive(Debug)]
pub struct CallSpan;

/// When a wait started, kept only when a span records it.
#[cfg(feature = "tracing")]
pub(crate) type WaitStart = Option<tokio::time::Instant>;
/// Nothing to keep.
#[cfg(not(feature = "tracing"))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct WaitStart;

/// A guard keeping a [`CallSpan`] entered while a response future is polled.
#[cfg(feature = "tracing")]
pub(crate) type Entered<'a> = Option<tracing::span::Entered<'a>>;
/// Nothing to exit: zero-sized, and not `Copy`, so that a layer may end it
/// early with `drop` as it would the real guard.
#[cfg(not(feature = "tracing"))]
pub(crate) struct Entered<'a>(core::marker::PhantomData<&'a ()>);

#[cfg(not(feature = "tracing"))]
impl Drop for Entered<'_> {
    #[inline(always)]
    fn drop(&mut self) {}
}

#[cfg(not(feature = "tracing"))]
impl CallSpan {
    /// The span of a build without the feature.
    pub(crate) const OFF: CallSpan = CallSpan;

    #[inline(always)]
    pub(crate) fn enter(&self) -> Entered<'_> {
        Entered(core::marker::PhantomData)
    }

    #[inline(always)]
    pub(crate) fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        f()
    }

    #[inline(always)]
    pub(crate) fn admitted(&self) {}

    #[inline(always)]
    pub(crate) fn decided(&self, _decision: &'static str) {}

    #[inline(always)]
    pub(crate) fn rejected(&self, _rejection: &crate::error::Rejection) {}

    #[inline(always)]
    pub(crate) fn refused(&self, _decision: &'static str, _rejection: &crate::error::Rejection) {}

    #[inline(always)]
    pub(crate) fn reason(&self, _reason: &'static str) {}

    #[inline(always)]
    pub(crate) fn classified(&self, _outcome: tenlives_engine::breaker::Outcome) {}

    #[inline(always)]
    pub(crate) fn ended<T, E>(&self, _result: &Result<T, E>) {}

    #[inline(always)]
    pub(crate) fn outcome(&self, _outcome: &'static str) {}

    #[inline(always)]
    pub(crate) fn attempts(&self, _attempts: u32) {}

    #[cfg(feature = "http")]
    #[inline(always)]
    pub(crate) fn budget(&self, _budget: std::time::Duration) {}

    #[inline(always)]
    pub(crate) fn wait_start(&self) -> WaitStart {
        WaitStart
    }

    #[inline(always)]
    pub(crate) fn waited(&self, _start: WaitStart) {}
}

#[cfg(feature = "tracing")]
impl CallSpan {
    /// No span: nobody listens.
    pub(crate) const OFF: CallSpan = CallSpan { span: None };

    /// Wraps a span made by `call_span!`; a span no subscriber wanted is
    /// not kept.
    #[inline]
    pub(crate) fn from_span(span: tracing::Span) -> Self {
        if span.is_disabled() {
            return CallSpan::OFF;
        }
        CallSpan {
            span: Some(ManuallyDrop::new(span)),
        }
    }

    /// Enters the span for one poll.
    #[inline(always)]
    pub(crate) fn enter(&self) -> Entered<'_> {
        match &self.span {
            Some(span) => enter(span),
            None => None,
        }
    }

    /// Runs `f` (the wrapped service's `call`) inside the span.
    #[inline(always)]
    pub(crate) fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.span {
            Some(span) => {
                let _entered = enter(span);
                f()
            }
            None => f(),
        }
    }

    /// The policy admitted the call.
    #[inline(always)]
    pub(crate) fn admitted(&self) {
        self.decided("admitted");
    }

    /// A decision: `admitted`, or what a fault layer does to the call.
    #[inline(always)]
    pub(crate) fn decided(&self, decision: &'static str) {
        if let Some(span) = &self.span {
            record_str(span, "decision", decision);
        }
    }

    /// The policy refused the call.
    #[inline(always)]
    pub(crate) fn rejected(&self, rejection: &Rejection) {
        self.refused("rejected", rejection);
    }

    /// The policy refused the call, as `decision` (`ejected`, say).
    #[inline(always)]
    pub(crate) fn refused(&self, decision: &'static str, rejection: &Rejection) {
        if let Some(span) = &self.span {
            record_rejection(span, decision, rejection);
        }
    }

    /// Why a fallback answered: what kind of failure it answered for.
    #[inline(always)]
    pub(crate) fn reason(&self, reason: &'static str) {
        if let Some(span) = &self.span {
            record_str(span, "reason", reason);
        }
    }

    /// The call ended, classified as `outcome`.
    #[inline(always)]
    pub(crate) fn classified(&self, outcome: Outcome) {
        if let Some(span) = &self.span {
            record_str(span, "outcome", outcome_label(outcome));
        }
    }

    /// The call ended with `result`, not classified.
    #[inline(always)]
    pub(crate) fn ended<T, E>(&self, result: &Result<T, E>) {
        if let Some(span) = &self.span {
            let outcome = if result.is_ok() { "ok" } else { "error" };
            record_str(span, "outcome", outcome);
        }
    }

    /// The call ended as `outcome` (`timed_out`, say).
    #[inline(always)]
    pub(crate) fn outcome(&self, outcome: &'static str) {
        if let Some(span) = &self.span {
            record_str(span, "outcome", outcome);
        }
    }

    /// The attempts a retrying layer has made so far.
    #[inline(always)]
    pub(crate) fn attempts(&self, attempts: u32) {
        if let Some(span) = &self.span {
            record_u64(span, "attempts", u64::from(attempts));
        }
    }

    /// The time a deadline layer gives the call.
    #[cfg(feature = "http")]
    #[inline(always)]
    pub(crate) fn budget(&self, budget: Duration) {
        if let Some(span) = &self.span {
            record_u64(span, "budget_ms", millis(budget));
        }
    }

    /// When a wait starts (in an admission queue): `Some(now)` if the span
    /// will record it, for [`waited`](Self::waited).
    #[inline(always)]
    pub(crate) fn wait_start(&self) -> WaitStart {
        self.span.as_ref().map(|_| tokio::time::Instant::now())
    }

    /// The wait that started at `start` is over (granted, shed or timed
    /// out): records `wait_ms`.
    #[inline(always)]
    pub(crate) fn waited(&self, start: WaitStart) {
        if let (Some(span), Some(since)) = (&self.span, start) {
            record_u64(span, "wait_ms", millis(since.elapsed()));
        }
    }
}

// The work done only when a subscriber listens, out of line (see
// `call_span!`).

#[cfg(feature = "tracing")]
#[cold]
#[inline(never)]
fn enter(span: &tracing::Span) -> Entered<'_> {
    Some(span.enter())
}

#[cfg(feature = "tracing")]
#[cold]
#[inline(never)]
fn record_str(span: &tracing::Span, field: &'static str, value: &'static str) {
    span.record(field, value);
}

#[cfg(feature = "tracing")]
#[cold]
#[inline(never)]
fn record_u64(span: &tracing::Span, field: &'static str, value: u64) {
    span.record(field, value);
}

#[cfg(feature = "tracing")]
#[cold]
#[inline(never)]
fn record_rejection(span: &tracing::Span, decision: &'static str, rejection: &Rejection) {
    span.record("decision", decision);
    span.record("reason", tracing::field::debug(rejection.reason()));
    if let Some(after) = rejection.retry_after() {
        span.record("retry_after_ms", millis(after));
    }
}

#[cfg(feature = "tracing")]
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(feature = "tracing")]
fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Success => "success",
        Outcome::Failure => "failure",
        Outcome::Ignored => "ignored",
    }
}

// Without the feature, a call's span costs no byte in any response future.
#[cfg(not(feature = "tracing"))]
const _: () = assert!(core::mem::size_of::<CallSpan>() == 0);
#[cfg(not(feature = "tracing"))]
const _: () = assert!(core::mem::size_of::<Entered<'static>>() == 0);
