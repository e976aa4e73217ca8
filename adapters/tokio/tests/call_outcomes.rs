//! The layers report how each admitted call ended (`CALL_SUCCEEDED`,
//! `CALL_FAILED`) into their policy's sink, so that `tenlives_calls_total`
//! needs no code of the application's.
#![cfg(feature = "telemetry")]

use std::sync::Arc;
use std::time::Duration;

use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker, Outcome};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::events::{EventRing, Received, Slot};
use tenlives_engine::throttle::{Throttle, ThrottleConfig};
use tenlives_tokio::telemetry::{
    CALL_FAILED, CALL_SUCCEEDED, Drain, Exporter, PolicyKind, SourceRegistry,
};
use tenlives_tokio::{
    CircuitBreakerLayer, ConcurrencyLimitLayer, StackLayer, ThrottleLayer, TokioClock,
};
use tower::{Layer, Service, ServiceExt, service_fn};

type Ring = EventRing<Box<[Slot]>>;

fn ring() -> Arc<Ring> {
    Arc::new(EventRing::with_capacity(1024).unwrap())
}

/// The value of `tenlives_calls_total{policy, outcome}` in the text format.
fn calls(text: &str, policy: &str, outcome: &str) -> Option<f64> {
    let series = format!("tenlives_calls_total{{policy=\"{policy}\",outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|v| v.parse().unwrap())
}

/// Succeeds for even requests, fails for odd ones.
fn flaky() -> impl Service<u32, Response = u32, Error = &'static str, Future: Send> + Clone {
    service_fn(|n: u32| async move {
        if n.is_multiple_of(2) {
            Ok(n)
        } else {
            Err("odd")
        }
    })
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_breaker_layer_counts_its_calls_without_application_code() {
    let ring = ring();
    let sources = SourceRegistry::builder()
        .policy(1, "payments", PolicyKind::CircuitBreaker)
        .build()
        .unwrap();
    let exporter = Arc::new(Exporter::new(sources));
    let mut drain = Drain::new(ring.clone(), exporter.clone());
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
    // 5xx-like errors fail, requests over 100 are ignored (a client's fault).
    let layer = CircuitBreakerLayer::with_classifier(
        breaker,
        |r: &Result<u32, &'static str>| match r {
            Ok(n) if *n > 100 => Outcome::Ignored,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        },
        TokioClock::new(),
    );
    let mut svc = layer.layer(flaky());
    // Three successes, one ignored, then two failures open the breaker,
    // which refuses the next three.
    for n in [2, 4, 6, 102, 1, 3, 5, 7, 9] {
        let _ = svc.ready().await.unwrap().call(n).await;
    }
    drain.drain_once();
    let text = exporter.render_text().unwrap();
    assert_eq!(calls(&text, "payments", "succeeded"), Some(3.0), "{text}");
    assert_eq!(calls(&text, "payments", "failed"), Some(2.0), "{text}");
    assert_eq!(calls(&text, "payments", "refused"), Some(3.0), "{text}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn each_policy_of_a_stack_reports_the_calls_it_admitted_and_a_timeout_fails() {
    let ring = ring();
    let mut reader = ring.consumer();
    let breaker = CircuitBreaker::with_sink(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(100)
            .build()
            .unwrap(),
        ring.clone(),
        7,
    );
    let layer = StackLayer::builder()
        .timeout(Duration::from_millis(50))
        .circuit_breaker(breaker)
        .concurrency_limit(Bulkhead::with_sink(8, ring.clone(), 8).unwrap())
        .build();
    let mut svc = layer.layer(service_fn(|ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, &'static str>(ms)
    }));
    assert!(svc.ready().await.unwrap().call(1).await.is_ok());
    assert!(svc.ready().await.unwrap().call(500).await.is_err()); // timed out
    // A cancelled call reports nothing.
    let call = svc.ready().await.unwrap().call(500);
    assert!(
        tokio::time::timeout(Duration::from_millis(1), call)
            .await
            .is_err()
    );

    let mut outcomes = Vec::new();
    while let Some(received) = reader.try_recv() {
        if let Received::Event(e) = received
            && (e.kind == CALL_SUCCEEDED || e.kind == CALL_FAILED)
        {
            outcomes.push((e.source, e.kind == CALL_SUCCEEDED));
        }
    }
    outcomes.sort_unstable();
    assert_eq!(
        outcomes,
        [(7, false), (7, true), (8, false), (8, true)],
        "one success and one failure (the timeout) per policy, nothing for the cancelled call"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn limit_and_throttle_layers_report_outcomes_and_a_sinkless_layer_emits_nothing() {
    let ring = ring();
    let mut reader = ring.consumer();
    let mut limited =
        ConcurrencyLimitLayer::new(Bulkhead::with_sink(4, ring.clone(), 2).unwrap()).layer(flaky());
    let throttle = Throttle::with_sink(
        ThrottleConfig::builder().seed(1).build().unwrap(),
        ring.clone(),
        3,
    );
    let mut throttled = ThrottleLayer::new(throttle).layer(flaky());
    let mut silent = ConcurrencyLimitLayer::new(Bulkhead::new(4).unwrap()).layer(flaky());
    for n in [2, 1] {
        let _ = limited.ready().await.unwrap().call(n).await;
        let _ = throttled.ready().await.unwrap().call(n).await;
        let _ = silent.ready().await.unwrap().call(n).await;
    }
    let mut outcomes = Vec::new();
    while let Some(received) = reader.try_recv() {
        if let Received::Event(e) = received
            && (e.kind == CALL_SUCCEEDED || e.kind == CALL_FAILED)
        {
            outcomes.push((e.source, e.kind == CALL_SUCCEEDED));
        }
    }
    outcomes.sort_unstable();
    assert_eq!(outcomes, [(2, false), (2, true), (3, false), (3, true)]);
}
