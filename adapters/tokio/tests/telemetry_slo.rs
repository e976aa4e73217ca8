//! `tenlives_calls_total`: the good and bad calls of each protected call
//! path, counted from the event stream (reported outcomes and the policy's
//! own refusals), which the error-budget rules in `ops/` read.
#![cfg(feature = "telemetry")]

use std::sync::Arc;
use std::time::Duration;

use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::events::EventRing;
use tenlives_engine::events::NoSink;
use tenlives_engine::rate::{Quota, RateLimiter};
use tenlives_engine::time::{Clock, ManualClock};
use tenlives_test_support::{CountingAllocator, allocations};
use tenlives_tokio::telemetry::{
    Drain, Exporter, Outcome, PolicyKind, SourceRegistry, report_outcome,
};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

#[test]
fn reporting_an_outcome_allocates_nothing() {
    let ring = EventRing::with_capacity(64).unwrap();
    let clock = ManualClock::new();
    let before = allocations();
    for i in 0..1000 {
        let outcome = if i % 3 == 0 {
            Outcome::Failed
        } else {
            Outcome::Succeeded
        };
        report_outcome(&ring, 1, clock.now(), outcome);
        report_outcome(&NoSink, 1, clock.now(), outcome);
    }
    assert_eq!(allocations() - before, 0);
    assert_eq!(ring.emitted(), 1000);
}

/// The value of the one sample line `series` (name and labels as rendered)
/// in the classic text format, if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

fn calls(text: &str, policy: &str, outcome: &str) -> Option<f64> {
    sample(
        text,
        &format!("tenlives_calls_total{{policy=\"{policy}\",outcome=\"{outcome}\"}}"),
    )
}

#[test]
fn outcomes_and_refusals_are_counted_per_path_from_the_first_outcome() {
    let ring = Arc::new(EventRing::with_capacity(256).unwrap());
    let sources = SourceRegistry::builder()
        .policy(1, "payments", PolicyKind::CircuitBreaker)
        .bulkhead(2, "db", 1)
        .policy(3, "partner", PolicyKind::Other)
        .build()
        .unwrap();
    let exporter = Arc::new(Exporter::new(sources));
    let mut drain = Drain::new(ring.clone(), exporter.clone());
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::with_sink(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(2)
            .open_duration(Duration::from_secs(5))
            .build()
            .unwrap(),
        ring.clone(),
        1,
    );

    // Nothing reported yet: no series, so no ratio that reads 0 / 0 or 1.
    drain.drain_once();
    let text = exporter.render_text().unwrap();
    assert!(!text.contains("tenlives_calls_total{"), "{text}");

    // Two calls succeed, two fail (the breaker opens), three are refused.
    for ok in [true, true, false, false] {
        let permit = breaker.try_acquire(clock.now()).unwrap();
        let outcome = if ok {
            permit.success(clock.now());
            Outcome::Succeeded
        } else {
            permit.failure(clock.now());
            Outcome::Failed
        };
        report_outcome(&*ring, 1, clock.now(), outcome);
    }
    for _ in 0..3 {
        assert!(breaker.try_acquire(clock.now()).is_err());
    }

    // A bulkhead whose calls nobody reports: refusals only, and no series.
    let db = Bulkhead::with_sink(1, ring.clone(), 2).unwrap();
    let held = db.try_acquire().unwrap();
    assert!(db.try_acquire().is_err());
    drop(held);

    // A rate limiter refusing before its path's first reported outcome:
    // the refusal is carried in when the series appear.
    let limiter = RateLimiter::with_sink(
        Quota::new(1, Duration::from_secs(60)).unwrap(),
        ring.clone(),
        3,
    );
    assert!(limiter.check(clock.now()).is_ok());
    assert!(limiter.check(clock.now()).is_err());
    let pass = drain.drain_once();
    assert_eq!(pass.lost, 0);
    let text = exporter.render_text().unwrap();
    assert_eq!(calls(&text, "partner", "refused"), None, "{text}");
    report_outcome(&*ring, 3, clock.now(), Outcome::Succeeded);
    drain.drain_once();

    let text = exporter.render_text().unwrap();
    assert_eq!(calls(&text, "payments", "succeeded"), Some(2.0), "{text}");
    assert_eq!(calls(&text, "payments", "failed"), Some(2.0));
    assert_eq!(calls(&text, "payments", "refused"), Some(3.0));
    assert_eq!(calls(&text, "db", "refused"), None);
    assert_eq!(calls(&text, "partner", "succeeded"), Some(1.0));
    assert_eq!(calls(&text, "partner", "failed"), Some(0.0));
    assert_eq!(calls(&text, "partner", "refused"), Some(1.0));
    // The outcome events are named kinds in `tenlives_events_total`.
    assert_eq!(
        sample(
            &text,
            "tenlives_events_total{policy=\"payments\",kind=\"call_failed\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "tenlives_events_total{policy=\"partner\",kind=\"rate_limited\"}"
        ),
        Some(1.0)
    );
}
