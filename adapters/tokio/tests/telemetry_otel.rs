//! The OpenTelemetry side of the telemetry (cargo feature `otel`), read back
//! through the SDK's in-memory exporter: every Prometheus series has an
//! OpenTelemetry twin with the same attributes and value (and no other data
//! point exists), and the configuration gauges report what the source gives.
#![cfg(feature = "otel")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};
use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::events::{Event, EventKind, EventRing, EventSink};
use tenlives_engine::rate::Quota;
use tenlives_engine::time::{Clock, ManualClock, Timestamp};
use tenlives_tokio::telemetry::otel::{ConfigGauge, ConfigReport, OtelMetrics, observe_config};
use tenlives_tokio::telemetry::{
    Drain, Exporter, LateSources, Outcome, Policy, PolicyKind, SourceRegistry, report_outcome,
};

/// A data point: metric name and sorted attributes.
type Point = (String, BTreeMap<String, String>);

fn otel_points(metrics: &ResourceMetrics) -> BTreeMap<Point, f64> {
    let mut out = BTreeMap::new();
    for scope in metrics.scope_metrics() {
        for metric in scope.metrics() {
            let name = metric.name().to_owned();
            let mut put = |attrs: &mut dyn Iterator<Item = &opentelemetry::KeyValue>, v: f64| {
                let attrs = attrs
                    .map(|kv| (kv.key.as_str().to_owned(), kv.value.as_str().into_owned()))
                    .collect();
                assert!(out.insert((name.clone(), attrs), v).is_none());
            };
            match metric.data() {
                AggregatedMetrics::U64(MetricData::Sum(s)) => {
                    assert!(s.is_monotonic(), "{name}");
                    for p in s.data_points() {
                        put(&mut p.attributes(), p.value() as f64);
                    }
                }
                AggregatedMetrics::I64(MetricData::Gauge(g)) => {
                    for p in g.data_points() {
                        put(&mut p.attributes(), p.value() as f64);
                    }
                }
                AggregatedMetrics::F64(MetricData::Gauge(g)) => {
                    for p in g.data_points() {
                        put(&mut p.attributes(), p.value());
                    }
                }
                other => panic!("{name}: unexpected aggregation {other:?}"),
            }
        }
    }
    out
}

/// The Prometheus series of the classic text format, named as their
/// OpenTelemetry twins (`tenlives_breaker_trips_total` ->
/// `tenlives.breaker.trips`).
fn prometheus_points(text: &str) -> BTreeMap<Point, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let name = name.strip_suffix("_total").unwrap_or(name);
        let name = match name {
            "tenlives_bulkhead_in_flight" => "tenlives.bulkhead.in_flight".to_owned(),
            n => n.replace('_', "."),
        };
        let attrs = labels
            .split(',')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .collect();
        out.insert((name, attrs), value.parse().unwrap());
    }
    out
}

fn point(name: &str, attrs: &[(&str, &str)]) -> Point {
    (
        name.to_owned(),
        attrs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

#[test]
fn every_prometheus_series_has_an_opentelemetry_twin_and_config_is_observed() {
    let otel_exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_periodic_exporter(otel_exporter.clone())
        .build();
    let meter = provider.meter("tenlives");

    let ring = Arc::new(EventRing::with_capacity(32).unwrap());
    let sources = SourceRegistry::builder()
        .policy(1, "payments", PolicyKind::CircuitBreaker)
        .bulkhead(2, "db", 2)
        .build()
        .unwrap();
    // Source 4 is a breaker created after the exporter (a late source): its
    // series are created at zero when its first event is read, in both.
    let late: LateSources = Arc::new(|source| {
        (source == 4).then(|| Policy::new(4, "late", PolicyKind::CircuitBreaker, None))
    });
    let exporter = Arc::new(
        Exporter::new(sources)
            .with_late_sources(late)
            .with_otel(OtelMetrics::new(&meter)),
    );
    let mut drain = Drain::new(ring.clone(), exporter.clone());

    let breaker_config = BreakerConfig::builder()
        .failure_rate(40.0)
        .consecutive_failures(2)
        .minimum_calls(5)
        .open_duration(Duration::from_secs(5))
        .build()
        .unwrap();
    let quota = Quota::new(50, Duration::from_secs(10)).unwrap();
    let db = Arc::new(Bulkhead::with_sink(2, ring.clone(), 2).unwrap());
    let (report_db, report_config) = (db.clone(), breaker_config.clone());
    let _gauges = observe_config(
        &meter,
        Arc::new(move |report: &mut ConfigReport| {
            report.breaker("payments", &report_config);
            report.rate_limit("partner", &quota);
            report.concurrency_limit("db", report_db.limit());
        }),
    );

    // The breaker: one success, two failures (it opens), one refusal; the
    // outcomes reported under its source.
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::with_sink(breaker_config, ring.clone(), 1);
    for ok in [true, false, false] {
        let permit = breaker.try_acquire(clock.now()).unwrap();
        if ok {
            permit.success(clock.now());
        } else {
            permit.failure(clock.now());
        }
        let outcome = if ok {
            Outcome::Succeeded
        } else {
            Outcome::Failed
        };
        report_outcome(&*ring, 1, clock.now(), outcome);
    }
    assert!(breaker.try_acquire(clock.now()).is_err());
    // The bulkhead: full once, then its limit raised.
    let a = db.try_acquire().unwrap();
    let b = db.try_acquire().unwrap();
    assert!(db.try_acquire().is_err());
    drop((a, b));
    db.set_limit(3).unwrap();
    // The late breaker refuses once (open).
    ring.emit(Event::new(
        EventKind::BREAKER_REJECTED,
        4,
        Timestamp::ZERO,
        [1, u64::MAX],
    ));
    assert_eq!(drain.drain_once().lost, 0);

    // An unregistered source with an application kind, overflowing the
    // ring: 40 events into 32 slots, 8 lost.
    for i in 0..40 {
        ring.emit(Event::new(EventKind::USER, 9, Timestamp::ZERO, [i, 0]));
    }
    assert_eq!(drain.drain_once().lost, 8);

    provider.force_flush().unwrap();
    let exported = otel_exporter.get_finished_metrics().unwrap();
    let otel = otel_points(exported.last().unwrap());
    let prometheus = prometheus_points(&exporter.render_text().unwrap());

    // Every Prometheus series, with its labels and value, and nothing else.
    let events_only: BTreeMap<_, _> = otel
        .iter()
        .filter(|((name, _), _)| !name.starts_with("tenlives.config."))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(events_only, prometheus);

    // And the values are the ones the scenario produced (not merely equal).
    let expect = [
        (
            point("tenlives.breaker.state", &[("policy", "payments")]),
            1.0,
        ),
        (
            point(
                "tenlives.breaker.trips",
                &[("policy", "payments"), ("reason", "consecutive_failures")],
            ),
            1.0,
        ),
        (
            point(
                "tenlives.rejections",
                &[("policy", "payments"), ("reason", "breaker_open")],
            ),
            1.0,
        ),
        (
            point(
                "tenlives.calls",
                &[("policy", "payments"), ("outcome", "succeeded")],
            ),
            1.0,
        ),
        (
            point(
                "tenlives.calls",
                &[("policy", "payments"), ("outcome", "failed")],
            ),
            2.0,
        ),
        (
            point(
                "tenlives.calls",
                &[("policy", "payments"), ("outcome", "refused")],
            ),
            1.0,
        ),
        (
            point(
                "tenlives.rejections",
                &[("policy", "db"), ("reason", "bulkhead_full")],
            ),
            1.0,
        ),
        (point("tenlives.bulkhead.limit", &[("policy", "db")]), 3.0),
        (
            point("tenlives.bulkhead.in_flight", &[("policy", "db")]),
            0.0,
        ),
        (
            point(
                "tenlives.events",
                &[("policy", "db"), ("kind", "bulkhead_acquired")],
            ),
            2.0,
        ),
        (
            point(
                "tenlives.events",
                &[("policy", "source_9"), ("kind", "code_32768")],
            ),
            32.0,
        ),
        (point("tenlives.events.lost", &[]), 8.0),
        (
            point(
                "tenlives.rejections",
                &[("policy", "late"), ("reason", "breaker_open")],
            ),
            1.0,
        ),
        (
            point(
                "tenlives.breaker.trips",
                &[("policy", "late"), ("reason", "failure_rate")],
            ),
            0.0,
        ),
        (point("tenlives.breaker.state", &[("policy", "late")]), 0.0),
        // Configuration gauges.
        (
            point(
                ConfigGauge::BreakerFailureRate.name(),
                &[("policy", "payments")],
            ),
            40.0,
        ),
        (
            point(
                ConfigGauge::BreakerConsecutiveFailures.name(),
                &[("policy", "payments")],
            ),
            2.0,
        ),
        (
            point(
                ConfigGauge::BreakerMinimumCalls.name(),
                &[("policy", "payments")],
            ),
            5.0,
        ),
        (
            point(ConfigGauge::RateLimitRate.name(), &[("policy", "partner")]),
            50.0,
        ),
        (
            point(
                ConfigGauge::RateLimitPeriod.name(),
                &[("policy", "partner")],
            ),
            10.0,
        ),
        (
            point(ConfigGauge::ConcurrencyLimit.name(), &[("policy", "db")]),
            3.0,
        ),
    ];
    for (p, v) in &expect {
        assert_eq!(otel.get(p), Some(v), "{p:?} in {otel:#?}");
    }
    // A rule switched off is not reported (no slow-call rule configured).
    assert!(
        !otel
            .keys()
            .any(|(name, _)| name == ConfigGauge::BreakerSlowCallRate.name())
    );
    let config_points = otel
        .keys()
        .filter(|(n, _)| n.starts_with("tenlives.config."))
        .count();
    // payments: failure rate, consecutive failures, minimum calls, probes;
    // partner: rate, period, burst; db: limit.
    assert_eq!(config_points, 8, "{otel:#?}");
    provider.shutdown().unwrap();
}
