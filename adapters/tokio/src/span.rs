//! `tracing` spans around every call through a layer (cargo feature
//! `tracing`).
//!
//! With the feature on, each layer's `call` opens a span (target
//! [`TARGET`](crate::span::TARGET), level `DEBUG`) that the response future
//! enters whenever it is polled, so what the wrapped service logs is inside
//! it, and records on it:
//!
//! | field | when | value |
//! |---|---|---|
//! | `policy` | always | the layer's policy: `circuit_breaker`, `concurrency_limit`, `adaptive_limit`, `rate_limit`, `keyed_rate_limit`, `admission_queue`, `throttle`, `timeout`, `retry`, `fault`, `stack`, or the [`Admission::NAME`](crate::Admission::NAME) of a policy of your own |
//! | `decision` | once the policy decided | `admitted` or `rejected`; for the fault layer, what it does: `pass`, `error`, `hang`, `drop_connection` |
//! | `reason` | rejected | the [`RejectionReason`](crate::RejectionReason), as `Debug` |
//! | `retry_after_ms` | rejected, when the policy knows | when to retry |
//! | `wait_ms` | the admission queue, after a wait | how long the request waited |
//! | `attempts` | retry, stack with retry | attempts made |
//! | `outcome` | the call ended | `success`, `failure` or `ignored` where the layer classifies outcomes (breaker, limits, throttle, stack), `ok` or `error` elsewhere, `timed_out` for a timeout |
//!
//! A span that closes with no `outcome` and a `decision` of `admitted` is a
//! call that was cancelled (its future dropped).
//!
//! Spans are named `tenlives.<layer>` (`tenlives.admission`,
//! `tenlives.queue`, `tenlives.keyed_rate_limit`, `tenlives.throttle`,
//! `tenlives.timeout`, `tenlives.retry`, `tenlives.fault`, `tenlives.stack`).
//!
//! Cost: without the feature, [`CallSpan`] is a zero-sized type whose
//! methods are empty, and the layers compile to what they were. With the
//! feature and no subscriber interested (none installed, or one filtering
//! `DEBUG` spans of target `tenlives` out), opening a span is a load and a
//! compare of tracing's global level, and every record or enter is one test
//! of an empty span: `docs/telemetry.md` gives the instruction counts.

#[cfg(feature = "tracing")]
use std::sync::atomic::{AtomicU32, Ordering};
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
    ($name:literal, $policy:expr) => {
        $crate::span::CallSpan::from_span(::tracing::span!(
            target: "tenlives",
            ::tracing::Level::DEBUG,
            $name,
            policy = $policy,
            decision = ::tracing::field::Empty,
            reason = ::tracing::field::Empty,
            retry_after_ms = ::tracing::field::Empty,
            wait_ms = ::tracing::field::Empty,
            attempts = ::tracing::field::Empty,
            outcome = ::tracing::field::Empty,
        ))
    };
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
    span: tracing::Span,
    /// When the request started to wait in a queue (only when the span is
    /// enabled).
    waiting_since: Option<tokio::time::Instant>,
    /// Attempts made (a retrying layer; only when the span is enabled).
    attempts: AtomicU32,
}

/// The span of one call through a layer: a `tracing::Span` with the
/// feature `tracing`, nothing (zero-sized) without it. Held by every
/// layer's response future.
#[cfg(not(feature = "tracing"))]
#[derive(Debug)]
pub struct CallSpan;

/// A guard keeping a [`CallSpan`] entered while a response future is polled.
#[cfg(feature = "tracing")]
pub(crate) type Entered<'a> = Option<tracing::span::Entered<'a>>;
/// Nothing to exit.
#[cfg(not(feature = "tracing"))]
pub(crate) type Entered<'a> = core::marker::PhantomData<&'a ()>;

#[cfg(not(feature = "tracing"))]
impl CallSpan {
    /// The span of a build without the feature.
    pub(crate) const OFF: CallSpan = CallSpan;

    #[inline(always)]
    pub(crate) fn enter(&self) -> Entered<'_> {
        core::marker::PhantomData
    }

    #[inline(always)]
    pub(crate) fn admitted(&self) {}

    #[inline(always)]
    pub(crate) fn decided(&self, _decision: &'static str) {}

    #[inline(always)]
    pub(crate) fn rejected(&self, _rejection: &crate::error::Rejection) {}

    #[inline(always)]
    pub(crate) fn classified(&self, _outcome: tenlives_engine::breaker::Outcome) {}

    #[inline(always)]
    pub(crate) fn ended<T, E>(&self, _result: &Result<T, E>) {}

    #[inline(always)]
    pub(crate) fn outcome(&self, _outcome: &'static str) {}

    #[inline(always)]
    pub(crate) fn attempt(&self) {}

    #[inline(always)]
    pub(crate) fn start_waiting(&mut self) {}

    #[inline(always)]
    pub(crate) fn stop_waiting(&self) {}
}

#[cfg(feature = "tracing")]
impl CallSpan {
    /// Wraps a span made by `call_span!`.
    #[inline]
    pub(crate) fn from_span(span: tracing::Span) -> Self {
        CallSpan {
            span,
            waiting_since: None,
            attempts: AtomicU32::new(0),
        }
    }

    /// Whether a subscriber wants this span: every record below is skipped
    /// when not.
    #[inline]
    fn on(&self) -> bool {
        !self.span.is_disabled()
    }

    /// Enters the span for one poll.
    #[inline]
    pub(crate) fn enter(&self) -> Entered<'_> {
        if self.on() {
            Some(self.span.enter())
        } else {
            None
        }
    }

    /// The policy admitted the call.
    #[inline]
    pub(crate) fn admitted(&self) {
        if self.on() {
            self.span.record("decision", "admitted");
        }
    }

    /// A decision of another kind (what a fault layer does to the call).
    #[inline]
    pub(crate) fn decided(&self, decision: &'static str) {
        if self.on() {
            self.span.record("decision", decision);
        }
    }

    /// The policy refused the call.
    #[inline]
    pub(crate) fn rejected(&self, rejection: &Rejection) {
        if self.on() {
            self.span.record("decision", "rejected");
            self.span
                .record("reason", tracing::field::debug(rejection.reason()));
            if let Some(after) = rejection.retry_after() {
                self.span.record("retry_after_ms", millis(after));
            }
        }
    }

    /// The call ended, classified as `outcome`.
    #[inline]
    pub(crate) fn classified(&self, outcome: Outcome) {
        if self.on() {
            self.span.record("outcome", outcome_label(outcome));
        }
    }

    /// The call ended with `result`, not classified.
    #[inline]
    pub(crate) fn ended<T, E>(&self, result: &Result<T, E>) {
        if self.on() {
            self.span
                .record("outcome", if result.is_ok() { "ok" } else { "error" });
        }
    }

    /// The call ended as `outcome` (`timed_out`, say).
    #[inline]
    pub(crate) fn outcome(&self, outcome: &'static str) {
        if self.on() {
            self.span.record("outcome", outcome);
        }
    }

    /// A retrying layer makes one more attempt: `attempts` counts them.
    #[inline]
    pub(crate) fn attempt(&self) {
        if self.on() {
            // ordering: Relaxed; one future counts its own attempts, polled
            // by one task at a time (the atomic only keeps the future Sync).
            let attempts = self.attempts.fetch_add(1, Ordering::Relaxed) + 1;
            self.span.record("attempts", attempts);
        }
    }

    /// The request starts to wait (in an admission queue).
    #[inline]
    pub(crate) fn start_waiting(&mut self) {
        if self.on() {
            self.waiting_since = Some(tokio::time::Instant::now());
        }
    }

    /// The wait is over (granted, shed or timed out): records `wait_ms`.
    /// Called once per wait.
    #[inline]
    pub(crate) fn stop_waiting(&self) {
        if let Some(since) = self.waiting_since {
            self.span.record("wait_ms", millis(since.elapsed()));
        }
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
