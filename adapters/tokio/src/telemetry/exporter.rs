//! The Prometheus side: metric families in a `prometheus-client` registry,
//! and per-policy handles to them so that recording an event is a lookup and
//! an atomic add, not a label hash.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tenlives_engine::breaker::BreakerState;
use tenlives_engine::events::{Event, EventKind};

use super::decode::{Decoded, KNOWN_KINDS, Rejection, kind_index};
use super::exposition;
#[cfg(feature = "otel")]
use super::otel::OtelMetrics;
use super::otel_sample::Sample;
use super::sources::{Policy, PolicyKind, SourceRegistry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    policy: Arc<str>,
    kind: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabel {
    policy: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    policy: Arc<str>,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    policy: Arc<str>,
    outcome: &'static str,
}

/// The `outcome` label values of `tenlives_calls_total`, in the order of
/// `PolicyMetrics::calls`.
const OUTCOMES: [&str; 3] = ["succeeded", "failed", "refused"];
const SUCCEEDED: usize = 0;
const FAILED: usize = 1;
const REFUSED: usize = 2;

/// Which `tenlives_calls_total` outcome an event counts as, if any: the
/// reported outcomes, and every refusal a policy reports.
fn call_outcome(kind: EventKind) -> Option<usize> {
    match kind {
        crate::outcome::CALL_SUCCEEDED => Some(SUCCEEDED),
        crate::outcome::CALL_FAILED => Some(FAILED),
        EventKind::BREAKER_REJECTED
        | EventKind::BULKHEAD_REJECTED
        | EventKind::RETRY_BUDGET_EXHAUSTED
        | EventKind::THROTTLED
        | EventKind::RATE_LIMITED
        | EventKind::QUEUE_REJECTED => Some(REFUSED),
        _ => None,
    }
}

/// The trip reasons in the order of [`trip_index`], as label values.
const TRIP_REASONS: [&str; 5] = [
    "consecutive_failures",
    "failure_rate",
    "slow_call_rate",
    "failed_test",
    "unknown",
];

fn trip_index(label: &str) -> usize {
    TRIP_REASONS
        .iter()
        .position(|r| *r == label)
        .unwrap_or(TRIP_REASONS.len() - 1)
}

fn rejection_index(r: Rejection) -> usize {
    Rejection::ALL
        .iter()
        .position(|x| *x == r)
        .unwrap_or_default()
}

/// Handles to one policy's series. Each is created on first use, or up
/// front for the series its kind is expected to produce.
#[derive(Debug)]
pub(crate) struct PolicyMetrics {
    name: Arc<str>,
    events: [OnceLock<Counter>; KNOWN_KINDS.len()],
    trips: [OnceLock<Counter>; TRIP_REASONS.len()],
    rejections: [OnceLock<Counter>; Rejection::ALL.len()],
    breaker_state: OnceLock<Gauge>,
    limit: OnceLock<Gauge>,
    in_flight: OnceLock<Gauge>,
    /// `tenlives_calls_total` by outcome, created with the first reported
    /// outcome (see `outcome.rs`).
    calls: OnceLock<[Counter; OUTCOMES.len()]>,
    /// Refusals read before `calls` existed, carried into it when it is
    /// created.
    refused_early: AtomicU64,
}

impl PolicyMetrics {
    fn new(name: Arc<str>) -> Self {
        PolicyMetrics {
            name,
            events: Default::default(),
            trips: Default::default(),
            rejections: Default::default(),
            breaker_state: OnceLock::new(),
            limit: OnceLock::new(),
            in_flight: OnceLock::new(),
            calls: OnceLock::new(),
            refused_early: AtomicU64::new(0),
        }
    }

    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The breaker state the gauge shows, if it exists.
    pub(crate) fn breaker_state(&self) -> Option<BreakerState> {
        let code = self.breaker_state.get()?.get();
        super::decode::state_from_code(u64::try_from(code).ok()?)
    }
}

#[derive(Debug, Default)]
struct Families {
    events: Family<EventLabels, Counter>,
    lost: Counter,
    breaker_state: Family<PolicyLabel, Gauge>,
    trips: Family<ReasonLabels, Counter>,
    rejections: Family<ReasonLabels, Counter>,
    limit: Family<PolicyLabel, Gauge>,
    in_flight: Family<PolicyLabel, Gauge>,
    calls: Family<OutcomeLabels, Counter>,
}

/// Where drained events go: the [`SourceRegistry`] that names their
/// sources, and the Prometheus metrics they update.
///
/// Share it (in an `Arc`) between the drain and whatever serves
/// `/metrics`. The metrics, their labels and the breaker state codes are
/// listed in `docs/telemetry.md`; in short:
///
/// | metric | type | labels |
/// |---|---|---|
/// | `tenlives_events_total` | counter | `policy`, `kind` |
/// | `tenlives_events_lost_total` | counter | — |
/// | `tenlives_breaker_state` | gauge: `BreakerState::code` (0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled, 5 metrics only) | `policy` |
/// | `tenlives_breaker_trips_total` | counter | `policy`, `reason` |
/// | `tenlives_rejections_total` | counter | `policy`, `reason` |
/// | `tenlives_bulkhead_limit` | gauge | `policy` |
/// | `tenlives_bulkhead_in_flight` | gauge | `policy` |
/// | `tenlives_calls_total` | counter | `policy`, `outcome` (`succeeded`, `failed`, `refused`) |
pub struct Exporter {
    sources: SourceRegistry,
    registry: Registry,
    families: Families,
    /// One per registered policy, in the order of `sources.policies()`.
    policies: Box<[PolicyMetrics]>,
    /// Names sources registered after the exporter was built.
    late: Option<LateSources>,
    /// The OpenTelemetry instruments updated beside the Prometheus metrics.
    #[cfg(feature = "otel")]
    otel: Option<OtelMetrics>,
}

/// Names a source the [`SourceRegistry`] did not have when the exporter was
/// built (a policy created later, say by a registry of named policies on
/// first use): its [`Policy`] or `None`. Called by the drain once per such
/// source, the first time one of its events is read, off the request path.
pub type LateSources = Arc<dyn Fn(u32) -> Option<Policy> + Send + Sync>;

impl fmt::Debug for Exporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporter")
            .field("sources", &self.sources)
            .finish_non_exhaustive()
    }
}

impl Exporter {
    /// An exporter with its own Prometheus registry.
    pub fn new(sources: SourceRegistry) -> Self {
        Self::with_registry(sources, Registry::default())
    }

    /// An exporter that adds its metrics to `registry` (which may already
    /// hold the application's own metrics; its prefix and labels apply).
    pub fn with_registry(sources: SourceRegistry, mut registry: Registry) -> Self {
        let families = Families::default();
        registry.register(
            "tenlives_events",
            "Telemetry events read from the ring, by policy and event kind",
            families.events.clone(),
        );
        registry.register(
            "tenlives_events_lost",
            "Telemetry events overwritten or dropped before the drain read them",
            families.lost.clone(),
        );
        registry.register(
            "tenlives_breaker_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled, \
             5 metrics only",
            families.breaker_state.clone(),
        );
        registry.register(
            "tenlives_breaker_trips",
            "Circuit breaker trips (transitions to open), by trip reason",
            families.trips.clone(),
        );
        registry.register(
            "tenlives_rejections",
            "Calls refused by a policy, by reason",
            families.rejections.clone(),
        );
        registry.register(
            "tenlives_bulkhead_limit",
            "Concurrency limit in force: the registered limit, then the last limit change read",
            families.limit.clone(),
        );
        registry.register(
            "tenlives_bulkhead_in_flight",
            "Permits in flight, as reported by the last bulkhead event read",
            families.in_flight.clone(),
        );
        registry.register(
            "tenlives_calls",
            "Calls on a protected path by outcome: succeeded and failed as the application \
             reported them, refused by the policy; for error budgets",
            families.calls.clone(),
        );
        let mut exporter = Exporter {
            policies: Box::default(),
            sources,
            registry,
            families,
            late: None,
            #[cfg(feature = "otel")]
            otel: None,
        };
        let policies: Vec<PolicyMetrics> = exporter
            .sources
            .policies()
            .iter()
            .map(|p| exporter.prepare(p))
            .collect();
        exporter.policies = policies.into_boxed_slice();
        exporter
    }

    /// Handles for a registered policy, with the series its kind produces
    /// created at zero (so that `rate()` works from the first scrape).
    fn prepare(&self, policy: &Policy) -> PolicyMetrics {
        let pm = PolicyMetrics::new(policy.shared_name().clone());
        let (kinds, rejections): (&[usize], &[Rejection]) = match policy.kind() {
            PolicyKind::CircuitBreaker => (
                &[0, 1, 2, 3, 4],
                &[
                    Rejection::BreakerOpen,
                    Rejection::BreakerForcedOpen,
                    Rejection::BreakerHalfOpenFull,
                ],
            ),
            PolicyKind::Bulkhead | PolicyKind::AdaptiveLimit => (
                &[5, 6, 7, 8],
                &[Rejection::BulkheadFull, Rejection::BulkheadOverLimit],
            ),
            PolicyKind::RetryBudget => (&[9], &[Rejection::RetryBudgetExhausted]),
            PolicyKind::Throttle => (&[10], &[Rejection::Throttled]),
            PolicyKind::Other => (&[], &[]),
        };
        for &k in kinds {
            self.event_counter(&pm, k);
        }
        for &r in rejections {
            self.rejection_counter(&pm, r);
        }
        if policy.kind() == PolicyKind::CircuitBreaker {
            // A breaker starts closed (code 0), which is the gauge's zero.
            self.state_gauge(&pm);
            for reason in &TRIP_REASONS[..4] {
                self.trip_counter(&pm, reason);
            }
        }
        if let Some(limit) = policy.initial_limit() {
            self.set_limit(&pm, i64::from(limit));
        }
        pm
    }

    /// The source registry.
    pub fn sources(&self) -> &SourceRegistry {
        &self.sources
    }

    /// The Prometheus registry (to render, or to read in tests).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Events counted lost so far (the `tenlives_events_lost_total` value).
    pub fn lost(&self) -> u64 {
        self.families.lost.get()
    }

    /// The registry in the OpenMetrics text format, which Prometheus scrapes
    /// natively; serve it with [`exposition::OPENMETRICS_CONTENT_TYPE`].
    ///
    /// # Errors
    ///
    /// Only if a metric's encoder fails (writing to a `String` itself
    /// cannot fail).
    pub fn render_openmetrics(&self) -> Result<String, fmt::Error> {
        exposition::render_openmetrics(&self.registry)
    }

    /// The registry in the classic Prometheus text format (0.0.4), which
    /// `promtool check metrics` reads; serve it with
    /// [`exposition::TEXT_CONTENT_TYPE`].
    ///
    /// # Errors
    ///
    /// As for [`Exporter::render_openmetrics`].
    pub fn render_text(&self) -> Result<String, fmt::Error> {
        exposition::render_text(&self.registry)
    }

    /// Handles for the registered policy at `index` in `sources().policies()`.
    pub(crate) fn policy(&self, index: usize) -> &PolicyMetrics {
        &self.policies[index]
    }

    /// Names sources registered after this exporter was built through
    /// `late`: their events are labelled with the policy's name (and the
    /// series its kind produces are created at zero) instead of
    /// `source_<id>`.
    pub fn with_late_sources(mut self, late: LateSources) -> Self {
        self.late = Some(late);
        self
    }

    /// Updates `otel`'s OpenTelemetry instruments beside the Prometheus
    /// metrics, from the same events (cargo feature `otel`). The series of
    /// the policies registered so far are created at zero in both.
    #[cfg(feature = "otel")]
    pub fn with_otel(mut self, otel: OtelMetrics) -> Self {
        self.otel = Some(otel);
        for pm in &*self.policies {
            self.mirror_existing(pm);
        }
        self
    }

    /// Mirrors into OpenTelemetry the series `pm` already has (created
    /// before the instruments were attached), at their current values for
    /// gauges and at zero for counters (OpenTelemetry counters start at the
    /// attachment).
    #[cfg(feature = "otel")]
    fn mirror_existing(&self, pm: &PolicyMetrics) {
        let policy = &pm.name;
        for (i, c) in pm.events.iter().enumerate() {
            if c.get().is_some() {
                let kind = Cow::Borrowed(KNOWN_KINDS[i].1);
                self.mirror(Sample::Event {
                    policy,
                    kind: &kind,
                    n: 0,
                });
            }
        }
        for (i, c) in pm.trips.iter().enumerate() {
            if c.get().is_some() {
                self.mirror(Sample::Trip {
                    policy,
                    reason: TRIP_REASONS[i],
                    n: 0,
                });
            }
        }
        for (i, c) in pm.rejections.iter().enumerate() {
            if c.get().is_some() {
                self.mirror(Sample::Rejection {
                    policy,
                    reason: Rejection::ALL[i].label(),
                    n: 0,
                });
            }
        }
        if let Some(g) = pm.breaker_state.get() {
            self.mirror(Sample::BreakerState {
                policy,
                code: g.get(),
            });
        }
        if let Some(g) = pm.limit.get() {
            self.mirror(Sample::Limit {
                policy,
                value: g.get(),
            });
        }
    }

    /// Passes one update to the OpenTelemetry instruments, if attached.
    #[inline]
    fn mirror(&self, _sample: Sample<'_>) {
        #[cfg(feature = "otel")]
        if let Some(otel) = &self.otel {
            otel.record(_sample);
        }
    }

    /// Handles for a source the source registry does not have, and its kind
    /// for log fields: named by the late sources if they know it, else
    /// labelled `source_<id>` (kind `unregistered`).
    pub(crate) fn unregistered(&self, source: u32) -> (PolicyMetrics, &'static str) {
        match self.late.as_ref().and_then(|late| late(source)) {
            Some(policy) => (self.prepare(&policy), policy.kind().as_str()),
            None => (
                PolicyMetrics::new(format!("source_{source}").into()),
                "unregistered",
            ),
        }
    }

    fn event_counter<'p>(&self, pm: &'p PolicyMetrics, kind: usize) -> &'p Counter {
        pm.events[kind].get_or_init(|| {
            let labels = EventLabels {
                policy: pm.name.clone(),
                kind: Cow::Borrowed(KNOWN_KINDS[kind].1),
            };
            self.mirror(Sample::Event {
                policy: &labels.policy,
                kind: &labels.kind,
                n: 0,
            });
            self.families.events.get_or_create_owned(&labels)
        })
    }

    /// The event counter for a kind this module does not know (application
    /// codes), labelled `code_<n>`. Allocates; callers cache it and count
    /// with [`Exporter::record_other_kind`].
    pub(crate) fn other_kind_counter(&self, pm: &PolicyMetrics, code: u16) -> OtherKind {
        let labels = EventLabels {
            policy: pm.name.clone(),
            kind: Cow::Owned(format!("code_{code}")),
        };
        OtherKind {
            counter: self.families.events.get_or_create_owned(&labels),
            labels,
        }
    }

    /// Counts one event of an application kind.
    pub(crate) fn record_other_kind(&self, kind: &OtherKind) {
        kind.counter.inc();
        self.mirror(Sample::Event {
            policy: &kind.labels.policy,
            kind: &kind.labels.kind,
            n: 1,
        });
    }

    fn rejection_counter<'p>(&self, pm: &'p PolicyMetrics, r: Rejection) -> &'p Counter {
        pm.rejections[rejection_index(r)].get_or_init(|| {
            self.mirror(Sample::Rejection {
                policy: &pm.name,
                reason: r.label(),
                n: 0,
            });
            self.families.rejections.get_or_create_owned(&ReasonLabels {
                policy: pm.name.clone(),
                reason: r.label(),
            })
        })
    }

    fn trip_counter<'p>(&self, pm: &'p PolicyMetrics, reason: &str) -> &'p Counter {
        let i = trip_index(reason);
        pm.trips[i].get_or_init(|| {
            self.mirror(Sample::Trip {
                policy: &pm.name,
                reason: TRIP_REASONS[i],
                n: 0,
            });
            self.families.trips.get_or_create_owned(&ReasonLabels {
                policy: pm.name.clone(),
                reason: TRIP_REASONS[i],
            })
        })
    }

    fn state_gauge<'p>(&self, pm: &'p PolicyMetrics) -> &'p Gauge {
        pm.breaker_state.get_or_init(|| {
            self.mirror(Sample::BreakerState {
                policy: &pm.name,
                code: 0,
            });
            self.families
                .breaker_state
                .get_or_create_owned(&PolicyLabel {
                    policy: pm.name.clone(),
                })
        })
    }

    fn limit_gauge<'p>(&self, pm: &'p PolicyMetrics) -> &'p Gauge {
        pm.limit.get_or_init(|| {
            self.families.limit.get_or_create_owned(&PolicyLabel {
                policy: pm.name.clone(),
            })
        })
    }

    fn in_flight_gauge<'p>(&self, pm: &'p PolicyMetrics) -> &'p Gauge {
        pm.in_flight.get_or_init(|| {
            self.families.in_flight.get_or_create_owned(&PolicyLabel {
                policy: pm.name.clone(),
            })
        })
    }

    /// Sets a policy's limit gauge, in both outputs.
    fn set_limit(&self, pm: &PolicyMetrics, value: i64) {
        self.limit_gauge(pm).set(value);
        self.mirror(Sample::Limit {
            policy: &pm.name,
            value,
        });
    }

    /// Sets a policy's in-flight gauge, in both outputs.
    fn set_in_flight(&self, pm: &PolicyMetrics, value: i64) {
        self.in_flight_gauge(pm).set(value);
        self.mirror(Sample::InFlight {
            policy: &pm.name,
            value,
        });
    }

    /// Counts one call of `outcome` (an index into [`OUTCOMES`]).
    fn record_call(&self, pm: &PolicyMetrics, outcome: usize) {
        if outcome == REFUSED && pm.calls.get().is_none() {
            // ordering: Relaxed; a count, moved exactly once by the swaps
            // below (each swap takes what it finds).
            pm.refused_early.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let calls = pm.calls.get_or_init(|| {
            OUTCOMES.map(|outcome| {
                self.mirror(Sample::Call {
                    policy: &pm.name,
                    outcome,
                    n: 0,
                });
                self.families.calls.get_or_create_owned(&OutcomeLabels {
                    policy: pm.name.clone(),
                    outcome,
                })
            })
        });
        // ordering: Relaxed; see above. A refusal counted early by another
        // drain while `calls` was being created is moved by the next call.
        if pm.refused_early.load(Ordering::Relaxed) > 0 {
            let early = pm.refused_early.swap(0, Ordering::Relaxed);
            calls[REFUSED].inc_by(early);
            self.mirror(Sample::Call {
                policy: &pm.name,
                outcome: OUTCOMES[REFUSED],
                n: early,
            });
        }
        calls[outcome].inc();
        self.mirror(Sample::Call {
            policy: &pm.name,
            outcome: OUTCOMES[outcome],
            n: 1,
        });
    }

    /// Counts `n` lost events.
    pub(crate) fn record_lost(&self, n: u64) {
        self.families.lost.inc_by(n);
        self.mirror(Sample::Lost(n));
    }

    /// Updates the metrics for one event of a known kind (`other` kinds are
    /// counted by the caller through [`Exporter::other_kind_counter`]).
    /// `state_is_current` says whether a breaker transition is the latest
    /// one read for its breaker and so may move the state gauge.
    pub(crate) fn record(
        &self,
        pm: &PolicyMetrics,
        event: &Event,
        decoded: &Decoded,
        state_is_current: bool,
    ) {
        if let Some(k) = kind_index(event.kind) {
            self.event_counter(pm, k).inc();
            self.mirror(Sample::Event {
                policy: &pm.name,
                kind: &Cow::Borrowed(KNOWN_KINDS[k].1),
                n: 1,
            });
        }
        if let Some(r) = Rejection::of(decoded) {
            self.rejection_counter(pm, r).inc();
            self.mirror(Sample::Rejection {
                policy: &pm.name,
                reason: r.label(),
                n: 1,
            });
        }
        if let Some(outcome) = call_outcome(event.kind) {
            self.record_call(pm, outcome);
        }
        let set_state = |s: BreakerState| {
            if state_is_current {
                self.state_gauge(pm).set(s.code() as i64);
                self.mirror(Sample::BreakerState {
                    policy: &pm.name,
                    code: s.code() as i64,
                });
            }
        };
        match *decoded {
            Decoded::BreakerOpened { reason, .. } => {
                let reason = super::decode::trip_label(reason);
                self.trip_counter(pm, reason).inc();
                self.mirror(Sample::Trip {
                    policy: &pm.name,
                    reason: TRIP_REASONS[trip_index(reason)],
                    n: 1,
                });
                set_state(BreakerState::Open);
            }
            Decoded::BreakerHalfOpened { .. } => set_state(BreakerState::HalfOpen),
            Decoded::BreakerClosed { .. } => set_state(BreakerState::Closed),
            Decoded::BreakerForced { to: Some(to) } => set_state(to),
            Decoded::BulkheadLimitChanged { new, .. } => {
                self.set_limit(pm, saturating_i64(new));
            }
            Decoded::BulkheadAcquired { in_flight, .. }
            | Decoded::BulkheadReleased { in_flight, .. } => {
                self.set_in_flight(pm, saturating_i64(in_flight));
            }
            Decoded::BulkheadRejected { in_flight, .. } => {
                self.set_in_flight(pm, i64::from(in_flight));
            }
            _ => {}
        }
    }
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The `tenlives_events_total` series of an application event kind.
#[derive(Debug)]
pub(crate) struct OtherKind {
    counter: Counter,
    labels: EventLabels,
}
