//! The record layer and the shadow layer on a live tower service.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use tenlives_engine::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
use tenlives_ops::ConfigSet;
use tenlives_ops::config::{
    BreakerSpec, BulkheadSpec, Dur, FileSpec, OrOff, RateLimiterSpec, Section,
};
use tenlives_ops::replay::{
    Candidate, RecordLayer, Recorder, ShadowLayer, Stage, Tag, TraceOutcome, stack_outcome,
};
use tenlives_tokio::{AdmissionLayer, TenlivesError};
use tower::{Layer, Service, ServiceExt, service_fn};

fn default_section<T: Default>(spec: T) -> Section<T> {
    let mut s = Section::default();
    s.configs.insert("default".into(), spec);
    s
}

fn candidate(spec: FileSpec) -> Candidate {
    Candidate::from_config(&ConfigSet::from_file_spec(&spec).unwrap(), "api").unwrap()
}

/// The upstream: fails requests whose number is a multiple of `every`.
fn upstream(
    every: u32,
) -> impl Service<u32, Response = u32, Error = &'static str, Future: Send> + Clone {
    service_fn(move |n: u32| async move {
        if every != 0 && n.is_multiple_of(every) {
            Err("upstream failed")
        } else {
            Ok(n)
        }
    })
}

fn live_breaker() -> Arc<CircuitBreaker> {
    Arc::new(CircuitBreaker::new(
        BreakerConfig::builder()
            .consecutive_failures(3)
            .without_failure_rate()
            .open_duration(Duration::from_secs(60))
            .build()
            .unwrap(),
    ))
}

#[tokio::test]
async fn the_recorder_sees_outcomes_sheds_and_latency() {
    let recorder = Arc::new(Recorder::new(64));
    let breaker = live_breaker();
    let svc = RecordLayer::new(
        recorder.clone(),
        |n: &u32| Tag {
            key: u64::from(*n % 3),
            retry: *n == 7,
        },
        stack_outcome,
    )
    .layer(AdmissionLayer::new(breaker.clone()).layer(upstream(2)));
    // 1 ok, 2 err, 3 ok, 4 err, 5 ok, 6 err, 7 ok: three failures, not in
    // a row; then 8, 10, 12 fail in a row (odd ones between succeed... so
    // send only even ones) and open the breaker; 14 and 16 are shed.
    for n in [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16] {
        let _ = svc.clone().oneshot(n).await;
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    let trace = recorder.trace();
    let outcomes: Vec<_> = trace.records.iter().map(|r| r.outcome).collect();
    use TraceOutcome::{Err as E, Ok as O, Shed};
    assert_eq!(outcomes, [O, E, O, E, O, E, O, E, E, E, Shed, Shed]);
    assert_eq!(trace.records.iter().filter(|r| r.retry).count(), 1);
    assert_eq!(trace.records[6].key, 1);
    assert!(trace.records.windows(2).all(|w| w[0].at_ns <= w[1].at_ns));
}

#[tokio::test]
async fn a_panicking_tag_or_classifier_in_the_recorder_leaves_the_call_alone() {
    let recorder = Arc::new(Recorder::new(8));
    let svc = RecordLayer::new(
        recorder.clone(),
        |n: &u32| if *n == 1 { panic!("tag") } else { Tag::from(0) },
        |r: &Result<u32, &'static str>| {
            if r == &Ok(3) {
                panic!("classifier")
            } else {
                TraceOutcome::Ok
            }
        },
    )
    .layer(upstream(0));
    for n in 1..=4 {
        assert_eq!(svc.clone().oneshot(n).await, Ok(n));
    }
    assert_eq!(recorder.trace().records.len(), 2);
}

#[tokio::test]
async fn the_shadow_counts_what_a_tighter_rate_limit_would_refuse() {
    // Live: a breaker that never opens here; candidate: 1 request a minute.
    let shadow = ShadowLayer::new(
        candidate(FileSpec {
            rate_limiter: default_section(RateLimiterSpec {
                rate: Some(1),
                period: Some(Dur(Duration::from_secs(60))),
                ..RateLimiterSpec::default()
            }),
            ..FileSpec::default()
        }),
        |_: &u32| Tag::default(),
        stack_outcome,
    );
    let stats = shadow.stats();
    let svc = shadow.layer(AdmissionLayer::new(live_breaker()).layer(upstream(0)));
    for n in 1..=10 {
        // The live decision: every request answered.
        assert_eq!(svc.clone().oneshot(n).await.ok(), Some(n));
    }
    let c = stats.counts();
    assert_eq!(c.requests, 10);
    assert_eq!(c.agreed, 1);
    assert_eq!(c.would_reject_but_admitted, 9);
    assert_eq!(c.would_reject_by_stage[Stage::RateLimit as usize], 9);
    assert_eq!(c.would_admit_but_rejected, 0);
}

#[tokio::test]
async fn the_shadow_counts_what_it_would_admit_and_breaker_states_that_differ() {
    // Live opens after 3 failures in a row; the candidate's breaker never
    // opens on them (a 90 % rate over 100 calls).
    let live = live_breaker();
    let shadow = ShadowLayer::new(
        candidate(FileSpec {
            circuit_breaker: default_section(BreakerSpec {
                failure_rate: Some(OrOff::On(90.0)),
                window_calls: Some(100),
                minimum_calls: Some(100),
                ..BreakerSpec::default()
            }),
            ..FileSpec::default()
        }),
        |_: &u32| Tag::default(),
        stack_outcome,
    );
    // A clone taken before `compare_breaker` shares the comparison.
    let early = shadow.clone();
    let shadow = shadow.compare_breaker({
        let live = live.clone();
        move || live.state()
    });
    let stats = shadow.stats();
    let svc = early.layer(AdmissionLayer::new(live.clone()).layer(upstream(1)));
    for n in 1..=8 {
        let r = svc.clone().oneshot(n).await;
        assert!(r.is_err());
    }
    let c = stats.counts();
    assert_eq!(live.state(), BreakerState::Open);
    assert_eq!(c.requests, 8);
    // 3 failures both admitted; then 5 the live breaker shed.
    assert_eq!(c.agreed, 3);
    assert_eq!(c.would_admit_but_rejected, 5);
    // After the third request the states differ, for the 6 last.
    assert_eq!(c.breaker_state_differs, 6);
}

#[tokio::test]
async fn a_panicking_classifier_in_the_shadow_changes_no_live_decision() {
    // The candidate: a concurrency limit of 1, so a permit the panics
    // leaked would make it refuse every later (sequential) request.
    let make = || {
        ShadowLayer::new(
            candidate(FileSpec {
                bulkhead: default_section(BulkheadSpec {
                    limit: Some(1),
                    ..BulkheadSpec::default()
                }),
                ..FileSpec::default()
            }),
            |n: &u32| {
                if *n == 5 {
                    panic!("tag")
                }
                Tag::default()
            },
            |r: &Result<u32, TenlivesError<&'static str>>| match r {
                Ok(n) if n.is_multiple_of(2) => panic!("classifier"),
                r => stack_outcome(r),
            },
        )
    };
    let shadow = make();
    let stats = shadow.stats();
    let live = live_breaker();
    let with = shadow.layer(AdmissionLayer::new(live.clone()).layer(upstream(3)));
    let plain_breaker = live_breaker();
    let without = AdmissionLayer::new(plain_breaker.clone()).layer(upstream(3));
    for n in 1..=20u32 {
        let a = with.clone().oneshot(n).await.map_err(|e| e.to_string());
        let b = without.clone().oneshot(n).await.map_err(|e| e.to_string());
        assert_eq!(a, b, "request {n}");
    }
    assert_eq!(live.state(), plain_breaker.state());
    let c = stats.counts();
    // Panics: the tag once (5), the classifier on every even success.
    let even_successes = (1..=20u32)
        .filter(|n| n.is_multiple_of(2) && n % 3 != 0)
        .count() as u64;
    assert_eq!(c.panics, 1 + even_successes);
    // No permit leaked: the candidate never refused.
    assert_eq!(c.would_reject_but_admitted, 0);
    assert_eq!(c.requests, 20 - c.panics);
}

#[tokio::test]
async fn a_cancelled_request_gives_the_candidate_its_permit_back() {
    let shadow = ShadowLayer::new(
        candidate(FileSpec {
            bulkhead: default_section(BulkheadSpec {
                limit: Some(1),
                ..BulkheadSpec::default()
            }),
            ..FileSpec::default()
        }),
        |_: &u32| Tag::default(),
        |r: &Result<u32, Infallible>| {
            if r.is_ok() {
                TraceOutcome::Ok
            } else {
                TraceOutcome::Err
            }
        },
    );
    let stats = shadow.stats();
    let slow = service_fn(|n: u32| async move {
        if n == 0 {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Ok::<_, Infallible>(n)
    });
    let mut svc = shadow.layer(slow);
    let pending = svc.ready().await.unwrap().call(0);
    drop(pending);
    assert_eq!(svc.ready().await.unwrap().call(1).await, Ok(1));
    let c = stats.counts();
    assert_eq!(
        (c.requests, c.agreed, c.would_reject_but_admitted),
        (1, 1, 0)
    );
}

/// A service whose `call` itself panics for request 0.
#[derive(Clone, Copy)]
struct PanicsInCall;

impl tower::Service<u32> for PanicsInCall {
    type Response = u32;
    type Error = TenlivesError<&'static str>;
    type Future = std::future::Ready<Result<u32, TenlivesError<&'static str>>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, n: u32) -> Self::Future {
        assert!(n != 0, "call panics");
        std::future::ready(Ok(n))
    }
}

#[tokio::test]
async fn a_panic_in_the_live_services_call_gives_the_candidate_its_permit_back() {
    let shadow = ShadowLayer::new(
        candidate(FileSpec {
            bulkhead: default_section(BulkheadSpec {
                limit: Some(1),
                ..BulkheadSpec::default()
            }),
            ..FileSpec::default()
        }),
        |_: &u32| Tag::default(),
        stack_outcome,
    );
    let stats = shadow.stats();
    let mut svc = shadow.layer(PanicsInCall);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(svc.call(0));
    }));
    assert!(panicked.is_err());
    for n in 1..=3 {
        assert_eq!(svc.ready().await.unwrap().call(n).await.ok(), Some(n));
    }
    let c = stats.counts();
    assert_eq!(
        (c.requests, c.agreed, c.would_reject_but_admitted),
        (3, 3, 0)
    );
}
