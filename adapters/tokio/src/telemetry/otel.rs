//! The same telemetry as OpenTelemetry metrics, beside Prometheus (cargo
//! feature `otel`, off by default).
//!
//! [`OtelMetrics`] holds OpenTelemetry instruments built from a [`Meter`]
//! the application gives (from its `SdkMeterProvider`, with whatever
//! exporter it uses: OTLP, stdout, in-memory in tests). Attached to an
//! [`Exporter`](super::Exporter) with
//! [`Exporter::with_otel`](super::Exporter::with_otel), it is updated by the
//! drain from the same events, at the same moments, as the Prometheus
//! metrics: one decode, two outputs.
//!
//! | instrument | kind | attributes | Prometheus twin |
//! |---|---|---|---|
//! | `tenlives.events` | counter | `policy`, `kind` | `tenlives_events_total` |
//! | `tenlives.events.lost` | counter | — | `tenlives_events_lost_total` |
//! | `tenlives.breaker.state` | gauge | `policy` | `tenlives_breaker_state` |
//! | `tenlives.breaker.trips` | counter | `policy`, `reason` | `tenlives_breaker_trips_total` |
//! | `tenlives.rejections` | counter | `policy`, `reason` | `tenlives_rejections_total` |
//! | `tenlives.bulkhead.limit` | gauge | `policy` | `tenlives_bulkhead_limit` |
//! | `tenlives.bulkhead.in_flight` | gauge | `policy` | `tenlives_bulkhead_in_flight` |
//! | `tenlives.calls` | counter | `policy`, `outcome` | `tenlives_calls_total` |
//!
//! Attribute values are the Prometheus label values. A Prometheus backend
//! fed through OpenTelemetry (dots become underscores, counters gain
//! `_total`) sees the Prometheus exporter's names, so the rules in `ops/`
//! work on either.
//!
//! [`observe_config`] adds observable gauges of live configuration values
//! (breaker thresholds, rate-limit quotas, concurrency limits), read at each
//! collection from a function the application gives.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Meter, ObservableGauge};

use super::otel_sample::Sample;
use tenlives_engine::breaker::BreakerConfig;
use tenlives_engine::rate::Quota;

/// The OpenTelemetry instruments the drain updates (see the module docs).
#[derive(Clone)]
pub struct OtelMetrics {
    events: Counter<u64>,
    lost: Counter<u64>,
    breaker_state: Gauge<i64>,
    trips: Counter<u64>,
    rejections: Counter<u64>,
    limit: Gauge<i64>,
    in_flight: Gauge<i64>,
    calls: Counter<u64>,
}

impl fmt::Debug for OtelMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelMetrics").finish_non_exhaustive()
    }
}

impl OtelMetrics {
    /// The instruments, created from `meter`.
    pub fn new(meter: &Meter) -> Self {
        OtelMetrics {
            events: meter
                .u64_counter("tenlives.events")
                .with_unit("{event}")
                .with_description("Telemetry events read from the ring, by policy and event kind")
                .build(),
            lost: meter
                .u64_counter("tenlives.events.lost")
                .with_unit("{event}")
                .with_description(
                    "Telemetry events overwritten or dropped before the drain read them",
                )
                .build(),
            breaker_state: meter
                .i64_gauge("tenlives.breaker.state")
                .with_description(
                    "Circuit breaker state: 0 closed, 1 open, 2 half-open, 3 forced open, \
                     4 disabled, 5 metrics only",
                )
                .build(),
            trips: meter
                .u64_counter("tenlives.breaker.trips")
                .with_unit("{trip}")
                .with_description("Circuit breaker trips (transitions to open), by trip reason")
                .build(),
            rejections: meter
                .u64_counter("tenlives.rejections")
                .with_unit("{call}")
                .with_description("Calls refused by a policy, by reason")
                .build(),
            limit: meter
                .i64_gauge("tenlives.bulkhead.limit")
                .with_unit("{permit}")
                .with_description(
                    "Concurrency limit in force: the registered limit, then the last limit change read",
                )
                .build(),
            in_flight: meter
                .i64_gauge("tenlives.bulkhead.in_flight")
                .with_unit("{permit}")
                .with_description("Permits in flight, as reported by the last bulkhead event read")
                .build(),
            calls: meter
                .u64_counter("tenlives.calls")
                .with_unit("{call}")
                .with_description(
                    "Calls on a protected path by outcome: succeeded and failed as the application \
                     reported them, refused by the policy; for error budgets",
                )
                .build(),
        }
    }

    /// Records what the Prometheus exporter just recorded.
    pub(crate) fn record(&self, sample: Sample<'_>) {
        let policy = |name: &Arc<str>| KeyValue::new("policy", name.clone());
        match sample {
            Sample::Event { policy: p, kind, n } => self.events.add(
                n,
                &[policy(p), KeyValue::new("kind", cow_value(kind.clone()))],
            ),
            Sample::Lost(n) => self.lost.add(n, &[]),
            Sample::BreakerState { policy: p, code } => {
                self.breaker_state.record(code, &[policy(p)]);
            }
            Sample::Trip {
                policy: p,
                reason,
                n,
            } => {
                self.trips
                    .add(n, &[policy(p), KeyValue::new("reason", reason)]);
            }
            Sample::Rejection {
                policy: p,
                reason,
                n,
            } => {
                self.rejections
                    .add(n, &[policy(p), KeyValue::new("reason", reason)]);
            }
            Sample::Limit { policy: p, value } => self.limit.record(value, &[policy(p)]),
            Sample::InFlight { policy: p, value } => self.in_flight.record(value, &[policy(p)]),
            Sample::Call {
                policy: p,
                outcome,
                n,
            } => self
                .calls
                .add(n, &[policy(p), KeyValue::new("outcome", outcome)]),
        }
    }
}

fn cow_value(kind: Cow<'static, str>) -> opentelemetry::Value {
    match kind {
        Cow::Borrowed(s) => opentelemetry::Value::from(s),
        Cow::Owned(s) => opentelemetry::Value::from(s),
    }
}

/// A configuration value exported as a gauge by [`observe_config`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConfigGauge {
    /// `tenlives.config.breaker.failure_rate_threshold` (percent): the
    /// failure rate that trips the breaker; absent when that rule is off.
    BreakerFailureRate,
    /// `tenlives.config.breaker.slow_call_rate_threshold` (percent).
    BreakerSlowCallRate,
    /// `tenlives.config.breaker.slow_call_duration` (seconds).
    BreakerSlowCallDuration,
    /// `tenlives.config.breaker.consecutive_failures`.
    BreakerConsecutiveFailures,
    /// `tenlives.config.breaker.minimum_calls`.
    BreakerMinimumCalls,
    /// `tenlives.config.breaker.half_open_probes`.
    BreakerHalfOpenProbes,
    /// `tenlives.config.rate_limit.rate`: tokens per period.
    RateLimitRate,
    /// `tenlives.config.rate_limit.period` (seconds).
    RateLimitPeriod,
    /// `tenlives.config.rate_limit.burst`: the bucket's size in tokens.
    RateLimitBurst,
    /// `tenlives.config.concurrency.limit`: permits.
    ConcurrencyLimit,
}

impl ConfigGauge {
    /// Every configuration gauge.
    pub const ALL: [ConfigGauge; 10] = [
        ConfigGauge::BreakerFailureRate,
        ConfigGauge::BreakerSlowCallRate,
        ConfigGauge::BreakerSlowCallDuration,
        ConfigGauge::BreakerConsecutiveFailures,
        ConfigGauge::BreakerMinimumCalls,
        ConfigGauge::BreakerHalfOpenProbes,
        ConfigGauge::RateLimitRate,
        ConfigGauge::RateLimitPeriod,
        ConfigGauge::RateLimitBurst,
        ConfigGauge::ConcurrencyLimit,
    ];

    /// The instrument's name.
    pub fn name(self) -> &'static str {
        self.describe().0
    }

    fn describe(self) -> (&'static str, &'static str, &'static str) {
        match self {
            ConfigGauge::BreakerFailureRate => (
                "tenlives.config.breaker.failure_rate_threshold",
                "%",
                "Failure rate (percent of the window's calls) that trips the breaker",
            ),
            ConfigGauge::BreakerSlowCallRate => (
                "tenlives.config.breaker.slow_call_rate_threshold",
                "%",
                "Slow-call rate (percent of the window's calls) that trips the breaker",
            ),
            ConfigGauge::BreakerSlowCallDuration => (
                "tenlives.config.breaker.slow_call_duration",
                "s",
                "Duration above which a call counts as slow",
            ),
            ConfigGauge::BreakerConsecutiveFailures => (
                "tenlives.config.breaker.consecutive_failures",
                "{call}",
                "Consecutive failures that trip the breaker",
            ),
            ConfigGauge::BreakerMinimumCalls => (
                "tenlives.config.breaker.minimum_calls",
                "{call}",
                "Calls a window needs before its rates can trip the breaker",
            ),
            ConfigGauge::BreakerHalfOpenProbes => (
                "tenlives.config.breaker.half_open_probes",
                "{call}",
                "Probe calls admitted while half-open",
            ),
            ConfigGauge::RateLimitRate => (
                "tenlives.config.rate_limit.rate",
                "{token}",
                "Tokens the rate limiter grants per period",
            ),
            ConfigGauge::RateLimitPeriod => (
                "tenlives.config.rate_limit.period",
                "s",
                "The rate limiter's period",
            ),
            ConfigGauge::RateLimitBurst => (
                "tenlives.config.rate_limit.burst",
                "{token}",
                "Tokens the rate limiter can grant at once (its bucket)",
            ),
            ConfigGauge::ConcurrencyLimit => (
                "tenlives.config.concurrency.limit",
                "{permit}",
                "Concurrency limit in force",
            ),
        }
    }
}

/// What a [`ConfigSource`] fills at each collection: the configuration
/// values of the policies it knows, each under its policy's name.
#[derive(Debug, Default)]
pub struct ConfigReport {
    values: Vec<(ConfigGauge, Arc<str>, f64)>,
}

impl ConfigReport {
    /// Reports a breaker's thresholds (the rules switched off are left out).
    pub fn breaker(&mut self, policy: impl Into<Arc<str>>, config: &BreakerConfig) {
        let policy = policy.into();
        if let Some(rate) = config.failure_rate() {
            self.value(ConfigGauge::BreakerFailureRate, policy.clone(), rate);
        }
        if let Some((rate, duration)) = config.slow_calls() {
            self.value(ConfigGauge::BreakerSlowCallRate, policy.clone(), rate);
            self.value(
                ConfigGauge::BreakerSlowCallDuration,
                policy.clone(),
                duration.as_secs_f64(),
            );
        }
        if let Some(n) = config.consecutive_failures() {
            self.value(
                ConfigGauge::BreakerConsecutiveFailures,
                policy.clone(),
                f64::from(n),
            );
        }
        self.value(
            ConfigGauge::BreakerMinimumCalls,
            policy.clone(),
            f64::from(config.minimum_calls()),
        );
        self.value(
            ConfigGauge::BreakerHalfOpenProbes,
            policy,
            f64::from(config.half_open_probes()),
        );
    }

    /// Reports a rate limiter's quota.
    pub fn rate_limit(&mut self, policy: impl Into<Arc<str>>, quota: &Quota) {
        let policy = policy.into();
        self.value(
            ConfigGauge::RateLimitRate,
            policy.clone(),
            f64::from(quota.rate()),
        );
        self.value(
            ConfigGauge::RateLimitPeriod,
            policy.clone(),
            quota.period().as_secs_f64(),
        );
        self.value(
            ConfigGauge::RateLimitBurst,
            policy,
            f64::from(quota.burst()),
        );
    }

    /// Reports a concurrency limit (a bulkhead's, or an adaptive limit's
    /// current one).
    pub fn concurrency_limit(&mut self, policy: impl Into<Arc<str>>, limit: u32) {
        self.value(
            ConfigGauge::ConcurrencyLimit,
            policy.into(),
            f64::from(limit),
        );
    }

    /// Reports one value.
    pub fn value(&mut self, gauge: ConfigGauge, policy: Arc<str>, value: f64) {
        self.values.push((gauge, policy, value));
    }
}

/// Reads the live configuration for [`observe_config`]: called at each
/// collection, once per configuration gauge, off the request path.
pub type ConfigSource = Arc<dyn Fn(&mut ConfigReport) + Send + Sync>;

/// The observable gauges [`observe_config`] registered. Their callbacks stay
/// registered with the meter provider; keep this to show it.
#[derive(Clone)]
pub struct ConfigGauges {
    _gauges: Vec<ObservableGauge<f64>>,
}

impl fmt::Debug for ConfigGauges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigGauges").finish_non_exhaustive()
    }
}

/// Registers one observable gauge per [`ConfigGauge`] on `meter`, each
/// observing, at every collection, the values `source` reports for it with
/// the attribute `policy`.
///
/// ```
/// use std::sync::Arc;
/// use tenlives_engine::rate::Quota;
/// use tenlives_tokio::telemetry::otel::{ConfigReport, observe_config};
///
/// let meter = opentelemetry::global::meter("tenlives");
/// let quota = Quota::per_second(100)?;
/// let _gauges = observe_config(&meter, Arc::new(move |report: &mut ConfigReport| {
///     report.rate_limit("api", &quota);
///     report.concurrency_limit("db", 32);
/// }));
/// # Ok::<(), tenlives_engine::ConfigError>(())
/// ```
pub fn observe_config(meter: &Meter, source: ConfigSource) -> ConfigGauges {
    let gauges = ConfigGauge::ALL
        .iter()
        .map(|&gauge| {
            let (name, unit, description) = gauge.describe();
            let source = source.clone();
            meter
                .f64_observable_gauge(name)
                .with_unit(unit)
                .with_description(description)
                .with_callback(move |observer| {
                    let mut report = ConfigReport::default();
                    source(&mut report);
                    for (g, policy, value) in &report.values {
                        if *g == gauge {
                            observer.observe(*value, &[KeyValue::new("policy", policy.clone())]);
                        }
                    }
                })
                .build()
        })
        .collect();
    ConfigGauges { _gauges: gauges }
}
