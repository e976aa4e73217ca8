//! The registry's live configuration as OpenTelemetry gauges
//! (`Registry::config_source`), read through the SDK's in-memory exporter,
//! before and after a configuration change applied live.
#![cfg(all(feature = "otel", feature = "yaml"))]

use std::collections::BTreeMap;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};
use tenlives_ops::config::Format;
use tenlives_ops::{ConfigSet, Registry};
use tenlives_tokio::telemetry::otel::observe_config;

const BEFORE: &str = "\
circuit_breaker:
  instances:
    payments: { failure_rate: 50, minimum_calls: 20, half_open_probes: 3,
                slow_call_rate: 80, slow_call_duration: 800ms }
rate_limiter:
  instances:
    api: { rate: 100, period: 1s, burst: 20 }
bulkhead:
  instances:
    db: { limit: 32 }
adaptive_limit:
  instances:
    search: { min_limit: 2, initial_limit: 20, max_limit: 50 }
";

const AFTER: &str = "\
circuit_breaker:
  instances:
    payments: { failure_rate: 30, minimum_calls: 10, half_open_probes: 3 }
rate_limiter:
  instances:
    api: { rate: 10, period: 1m, burst: 5 }
bulkhead:
  instances:
    db: { limit: 8 }
adaptive_limit:
  instances:
    search: { min_limit: 2, initial_limit: 20, max_limit: 50 }
";

/// Every configuration gauge's data point: (instrument, policy) -> value.
fn collect(
    provider: &SdkMeterProvider,
    exporter: &InMemoryMetricExporter,
) -> BTreeMap<(String, String), f64> {
    exporter.reset();
    provider.force_flush().unwrap();
    let metrics = exporter.get_finished_metrics().unwrap();
    let mut out = BTreeMap::new();
    // With no data point at all the SDK exports nothing.
    let Some(last) = metrics.last() else {
        return out;
    };
    for scope in last.scope_metrics() {
        for metric in scope.metrics() {
            let AggregatedMetrics::F64(MetricData::Gauge(g)) = metric.data() else {
                panic!("{}: not an f64 gauge", metric.name());
            };
            for p in g.data_points() {
                let attrs: Vec<_> = p.attributes().collect();
                assert_eq!(attrs.len(), 1, "{}", metric.name());
                assert_eq!(attrs[0].key.as_str(), "policy");
                let key = (
                    metric.name().to_owned(),
                    attrs[0].value.as_str().into_owned(),
                );
                assert!(out.insert(key, p.value()).is_none());
            }
        }
    }
    out
}

fn expected(rows: &[(&str, &str, f64)]) -> BTreeMap<(String, String), f64> {
    rows.iter()
        .map(|(m, p, v)| ((format!("tenlives.config.{m}"), (*p).to_owned()), *v))
        .collect()
}

#[test]
fn configuration_gauges_follow_the_registry_through_a_live_change() {
    let registry = Registry::builder()
        .config(ConfigSet::from_str("before.yaml", BEFORE, Format::Yaml).unwrap())
        .build();
    registry.create_configured().unwrap();

    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_periodic_exporter(exporter.clone())
        .build();
    let _gauges = observe_config(&provider.meter("tenlives"), registry.config_source());

    assert_eq!(
        collect(&provider, &exporter),
        expected(&[
            ("breaker.failure_rate_threshold", "payments", 50.0),
            ("breaker.slow_call_rate_threshold", "payments", 80.0),
            ("breaker.slow_call_duration", "payments", 0.8),
            ("breaker.minimum_calls", "payments", 20.0),
            ("breaker.half_open_probes", "payments", 3.0),
            ("rate_limit.rate", "api", 100.0),
            ("rate_limit.period", "api", 1.0),
            ("rate_limit.burst", "api", 20.0),
            ("concurrency.limit", "db", 32.0),
            ("concurrency.limit", "search", 20.0),
        ])
    );

    // A reload (here `apply` directly): the same instances, new values; the
    // slow-call rule switched off is no longer reported.
    registry.apply(ConfigSet::from_str("after.yaml", AFTER, Format::Yaml).unwrap());
    assert_eq!(
        collect(&provider, &exporter),
        expected(&[
            ("breaker.failure_rate_threshold", "payments", 30.0),
            ("breaker.minimum_calls", "payments", 10.0),
            ("breaker.half_open_probes", "payments", 3.0),
            ("rate_limit.rate", "api", 10.0),
            ("rate_limit.period", "api", 60.0),
            ("rate_limit.burst", "api", 5.0),
            ("concurrency.limit", "db", 8.0),
            ("concurrency.limit", "search", 20.0),
        ])
    );

    // The source holds the registry weakly: once it is gone, nothing.
    drop(registry);
    assert_eq!(collect(&provider, &exporter), BTreeMap::new());
    provider.shutdown().unwrap();
}
