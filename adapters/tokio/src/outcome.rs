//! Call outcomes, for service-level objectives computed from the event
//! stream.
//!
//! The engine's primitives report what they refuse, not how the calls they
//! let through ended. The tower layers report it for them: every policy
//! that holds a call while it runs (a circuit breaker, a fixed or adaptive
//! concurrency limit, in their own layers or in the stack, and the
//! throttle) emits [`CALL_SUCCEEDED`] or [`CALL_FAILED`] into its own sink,
//! under its own source id, when the call it admitted ends with a success
//! or a failure as the layer's classifier judges it (a timeout of the stack
//! is a failure; an `Ignored` outcome and a cancelled call report nothing).
//! Code calling the engine directly reports each admitted call's outcome
//! with [`report_outcome`]. The exporter then counts, per policy,
//! `tenlives_calls_total{outcome="succeeded" | "failed" | "refused"}`:
//! succeeded and failed from these events, refused from every refusal the
//! policy itself reports (`BREAKER_REJECTED`, `BULKHEAD_REJECTED`,
//! `RETRY_BUDGET_EXHAUSTED`, `THROTTLED`, `RATE_LIMITED`, `QUEUE_REJECTED`).
//! The error ratio is `(failed + refused) / (succeeded + failed + refused)`;
//! the Prometheus rules in `ops/` turn it into burn rates and alerts.
//!
//! A policy's `tenlives_calls_total` series appear with its first outcome
//! event (refusals it reported before are carried in), so that a policy
//! whose calls nobody reports does not look like a path failing every call.

use tenlives_engine::events::{Event, EventKind, EventSink};
use tenlives_engine::time::Timestamp;

/// An admitted call succeeded. Payload: `[0, 0]`.
pub const CALL_SUCCEEDED: EventKind = EventKind(0x7E00);
/// An admitted call failed (by the application's own judgement: an error,
/// a timeout, a response it classifies as a failure). Payload: `[0, 0]`.
pub const CALL_FAILED: EventKind = EventKind(0x7E01);

/// Reports how a call a layer admitted through a policy with `sink` and
/// `source` ended, as the layer's classifier judged it: a success or a
/// failure is an event, `Ignored` is none. Nothing at all with a disabled
/// sink (`NoSink`: the test is a constant).
#[inline]
pub(crate) fn report_call<S: EventSink + ?Sized>(
    sink: &S,
    source: u32,
    now: Timestamp,
    outcome: tenlives_engine::breaker::Outcome,
) {
    use tenlives_engine::breaker::Outcome as Classified;
    let outcome = match outcome {
        Classified::Success => Outcome::Succeeded,
        Classified::Failure => Outcome::Failed,
        Classified::Ignored => return,
    };
    report_outcome(sink, source, now, outcome);
}

/// How an admitted call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It counts as good for the objective.
    Succeeded,
    /// It counts against the error budget.
    Failed,
}

impl Outcome {
    /// The event kind that reports it.
    pub fn kind(self) -> EventKind {
        match self {
            Outcome::Succeeded => CALL_SUCCEEDED,
            Outcome::Failed => CALL_FAILED,
        }
    }
}

/// Reports how a call admitted by the policy with id `source` ended, as a
/// [`CALL_SUCCEEDED`] or [`CALL_FAILED`] event. Costs what any event costs
/// (no allocation, no lock); nothing at all with a disabled sink.
///
/// ```
/// use tenlives_engine::events::{EventRing, Received};
/// use tenlives_engine::time::Timestamp;
/// use tenlives_tokio::telemetry::{CALL_FAILED, Outcome, report_outcome};
///
/// let ring = EventRing::with_capacity(8)?;
/// let mut reader = ring.consumer();
/// report_outcome(&ring, 3, Timestamp::ZERO, Outcome::Failed);
/// assert!(matches!(reader.try_recv(), Some(Received::Event(e)) if e.kind == CALL_FAILED && e.source == 3));
/// # Ok::<(), tenlives_engine::ConfigError>(())
/// ```
#[inline]
pub fn report_outcome<S: EventSink + ?Sized>(
    sink: &S,
    source: u32,
    now: Timestamp,
    outcome: Outcome,
) {
    if sink.enabled() {
        sink.emit(Event::new(outcome.kind(), source, now, [0, 0]));
    }
}
