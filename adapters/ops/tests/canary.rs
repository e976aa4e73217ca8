//! Canary promotion: guardrails promote a good candidate into the
//! registry's live configuration, roll a bad one back at the end of its
//! first bad window, and audit every step.

use std::sync::Arc;
use std::time::Duration;

use tenlives_engine::breaker::{BreakerState, Outcome};
use tenlives_engine::events::{EventRing, Received};
use tenlives_engine::time::{Clock, Timestamp};
use tenlives_ops::config::{BreakerSpec, BulkheadSpec, FileSpec, OrOff, RateLimiterSpec, Section};
use tenlives_ops::replay::{
    Arm, Breach, Canary, CanaryError, CanaryLayer, CanaryStep, Guardrails, Phase, Stage, Tag,
};
use tenlives_ops::{ConfigSet, REGISTRY_SOURCE, Registry, events};
use tenlives_tokio::TokioClock;
use tower::{Layer, Service, ServiceExt, service_fn};

const MS: u64 = 1_000_000;

fn default_section<T: Default>(spec: T) -> Section<T> {
    let mut s = Section::default();
    s.configs.insert("default".into(), spec);
    s
}

fn with_breaker(rate: f64) -> ConfigSet {
    ConfigSet::from_file_spec(&FileSpec {
        circuit_breaker: default_section(BreakerSpec {
            failure_rate: Some(OrOff::On(rate)),
            window_calls: Some(50),
            minimum_calls: Some(50),
            ..BreakerSpec::default()
        }),
        ..FileSpec::default()
    })
    .unwrap()
}

fn guard() -> Guardrails {
    Guardrails {
        window: Duration::from_secs(1),
        windows: 3,
        min_requests: 10,
        max_error_rate: 0.1,
        max_rejection_rate: 0.05,
        max_p99: Duration::from_millis(200),
    }
}

fn at(ms: u64) -> Timestamp {
    Timestamp::from_nanos(ms * MS)
}

/// Sends 100 requests a second for `seconds` from `from_ms`, each ending
/// after `latency` with `outcome(arm)`.
fn drive(
    canary: &Canary,
    from_ms: u64,
    seconds: u64,
    latency: Duration,
    outcome: impl Fn(Arm) -> Outcome,
) {
    for i in 0..seconds * 100 {
        let now = at(from_ms + i * 10);
        let arm = canary.route(now);
        if let Ok(token) = canary.admit(arm, now, false) {
            canary.complete(
                arm,
                token,
                outcome(arm),
                latency,
                now.saturating_add(latency),
            );
        }
    }
}

fn steps(canary: &Canary) -> Vec<String> {
    canary
        .events()
        .iter()
        .map(|e| match &e.step {
            CanaryStep::Started { share } => format!("started {share}"),
            CanaryStep::Quiet(_) => "quiet".into(),
            CanaryStep::Passed { good, .. } => format!("passed {good}"),
            CanaryStep::RolledBack { breach, .. } => format!("rolled back {breach:?}"),
            CanaryStep::Promoted { changed } => format!("promoted {changed:?}"),
        })
        .collect()
}

#[test]
fn a_good_candidate_is_promoted_into_the_live_configuration_keeping_state() {
    let ring = Arc::new(EventRing::with_capacity(256).unwrap());
    let mut consumer = ring.consumer();
    let registry = Registry::builder()
        .config(with_breaker(50.0))
        .events(ring.clone())
        .build();
    let live = registry.breaker("api").unwrap();
    // State the promotion must keep: the live breaker held open by hand.
    live.force_open(at(0));
    let canary = Canary::new(&registry, "api", with_breaker(20.0), 10, guard(), at(0)).unwrap();
    drive(&canary, 0, 5, Duration::from_millis(20), |_| {
        Outcome::Success
    });
    assert_eq!(canary.phase(), Phase::Promoted);
    assert_eq!(canary.share(), 100);
    assert_eq!(
        steps(&canary),
        [
            "started 10",
            "passed 1",
            "passed 2",
            "passed 3",
            "promoted [\"circuit_breaker.api\"]"
        ]
    );
    // Promoted through live configuration: the same breaker, reconfigured.
    assert!(Arc::ptr_eq(&live, &registry.breaker("api").unwrap()));
    assert_eq!(live.config().failure_rate(), Some(20.0));
    assert_eq!(live.state(), BreakerState::ForcedOpen);
    // The third window closed at 3 s, the first request of the fourth.
    let promoted = canary.events().last().unwrap().at;
    assert_eq!(promoted, at(3000));
    // After promotion every request goes to the candidate.
    assert!((0..50).all(|i| canary.route(at(5000 + i)) == Arm::Candidate));
    let mut kinds = Vec::new();
    while let Some(r) = consumer.try_recv() {
        if let Received::Event(ev) = r
            && ev.source == REGISTRY_SOURCE
        {
            kinds.push(ev.kind);
        }
    }
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == events::CANARY_WINDOW)
            .count(),
        4
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == events::CANARY_PROMOTED)
            .count(),
        1
    );
    assert!(kinds.contains(&events::CONFIG_APPLIED));
}

#[test]
fn a_failing_candidate_is_rolled_back_at_the_end_of_its_first_bad_window() {
    let registry = Registry::builder().config(with_breaker(50.0)).build();
    let live = registry.breaker("api").unwrap();
    let before = live.config().failure_rate();
    assert_eq!(before, Some(50.0));
    let canary = Canary::new(&registry, "api", with_breaker(20.0), 20, guard(), at(0)).unwrap();
    // Healthy for 2 s, then the candidate's requests fail from 2.5 s.
    drive(&canary, 0, 2, Duration::from_millis(5), |_| {
        Outcome::Success
    });
    drive(&canary, 2000, 2, Duration::from_millis(5), |arm| {
        if arm == Arm::Candidate {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    });
    assert_eq!(canary.phase(), Phase::RolledBack);
    assert_eq!(canary.share(), 0);
    let ev = canary.events();
    let last = ev.last().unwrap();
    let CanaryStep::RolledBack {
        breach: Breach::ErrorRate(rate),
        stats,
    } = &last.step
    else {
        panic!("{:?}", steps(&canary))
    };
    assert_eq!(*rate, 1.0);
    assert_eq!(stats.requests, 20);
    // Within the stated time: the end of the window the failures began in.
    assert_eq!(last.at, at(3000));
    assert_eq!(steps(&canary)[..3], ["started 20", "passed 1", "passed 2"]);
    // Nothing applied; every later request goes to the baseline.
    assert_eq!(live.config().failure_rate(), before);
    assert!((0..200).all(|i| canary.route(at(4000 + i)) == Arm::Baseline));
}

#[test]
fn rejection_rate_and_p99_are_guardrails_too() {
    let registry = Registry::builder().config(with_breaker(50.0)).build();
    let tight = ConfigSet::from_file_spec(&FileSpec {
        rate_limiter: default_section(RateLimiterSpec {
            rate: Some(5),
            burst: Some(1),
            ..RateLimiterSpec::default()
        }),
        ..FileSpec::default()
    })
    .unwrap();
    let canary = Canary::new(&registry, "api", tight, 50, guard(), at(0)).unwrap();
    drive(&canary, 0, 2, Duration::from_millis(5), |_| {
        Outcome::Success
    });
    let CanaryStep::RolledBack {
        breach: Breach::RejectionRate(r),
        ..
    } = canary.events().last().unwrap().step
    else {
        panic!("{:?}", steps(&canary))
    };
    assert!(r > 0.8, "{r}");

    let slow = Canary::new(&registry, "api", with_breaker(20.0), 50, guard(), at(0)).unwrap();
    drive(&slow, 0, 2, Duration::from_millis(300), |_| {
        Outcome::Success
    });
    let CanaryStep::RolledBack {
        breach: Breach::P99(p),
        ..
    } = slow.events().last().unwrap().step
    else {
        panic!("{:?}", steps(&slow))
    };
    assert!(
        p >= Duration::from_millis(300) && p <= Duration::from_millis(375),
        "{p:?}"
    );
}

#[test]
fn quiet_windows_neither_count_nor_reset_and_the_share_is_exact() {
    let registry = Registry::builder().config(with_breaker(50.0)).build();
    let canary = Canary::new(&registry, "api", with_breaker(20.0), 10, guard(), at(0)).unwrap();
    // Of every 100 consecutive requests, exactly 10 go to the candidate.
    let mut candidate = 0;
    for i in 0..100 {
        if canary.route(at(i)) == Arm::Candidate {
            candidate += 1;
        }
    }
    assert_eq!(candidate, 10);
    // Windows of 1 s with 5 candidate requests each: quiet.
    for s in 1..=3u64 {
        for i in 0..50 {
            let now = at(s * 1000 + i);
            let arm = canary.route(now);
            if let Ok(token) = canary.admit(arm, now, false) {
                canary.complete(arm, token, Outcome::Success, Duration::from_millis(1), now);
            }
        }
    }
    canary.tick(at(10_000));
    assert_eq!(canary.phase(), Phase::Running);
    // The first window: routed only, no request admitted: quiet. Then the
    // counter gives the candidate 10, 0 and 10 of the 50 requests of each
    // window: passed, quiet (not counted, not resetting), passed.
    assert_eq!(
        steps(&canary),
        ["started 10", "quiet", "passed 1", "quiet", "passed 2"]
    );
}

#[test]
fn guardrails_out_of_range_are_refused() {
    let registry = Registry::builder().config(with_breaker(50.0)).build();
    for g in [
        Guardrails {
            window: Duration::ZERO,
            ..guard()
        },
        Guardrails {
            windows: 0,
            ..guard()
        },
        Guardrails {
            max_error_rate: 1.5,
            ..guard()
        },
        Guardrails {
            max_rejection_rate: f64::NAN,
            ..guard()
        },
    ] {
        assert!(
            Canary::new(&registry, "api", with_breaker(20.0), 10, g, at(0)).is_err(),
            "{g:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_layer_routes_reports_and_survives_a_panicking_classifier() {
    let clock = TokioClock::runtime();
    let registry = Registry::builder().config(with_breaker(50.0)).build();
    // The candidate: a concurrency limit of 1; a leaked permit would make
    // it refuse every later request.
    let candidate = ConfigSet::from_file_spec(&FileSpec {
        bulkhead: default_section(BulkheadSpec {
            limit: Some(1),
            ..BulkheadSpec::default()
        }),
        ..FileSpec::default()
    })
    .unwrap();
    let canary = Arc::new(
        Canary::new(
            &registry,
            "api",
            candidate,
            100,
            Guardrails {
                min_requests: 1000,
                ..guard()
            },
            clock.now(),
        )
        .unwrap(),
    );
    let layer = CanaryLayer::new(
        canary.clone(),
        clock,
        |_: &u32| Tag::default(),
        |r: &Result<u32, &'static str>| match r {
            Ok(7) => panic!("classifier"),
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        },
    );
    let svc = layer.layer(service_fn(|n: u32| async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if n == 3 { Err("failed") } else { Ok(n) }
    }));
    let panicked = tokio::spawn(svc.clone().oneshot(7)).await;
    assert!(panicked.unwrap_err().is_panic());
    for n in 0..7u32 {
        let r = svc.clone().oneshot(n).await;
        match n {
            3 => assert_eq!(r, Err(CanaryError::Inner("failed"))),
            _ => assert_eq!(r, Ok(n)),
        }
    }
    // Two at once: the second is refused by the candidate's limit.
    let (a, b) = tokio::join!(svc.clone().oneshot(1), svc.clone().oneshot(2));
    assert_eq!(a, Ok(1));
    assert_eq!(
        b,
        Err(CanaryError::Refused {
            arm: Arm::Candidate,
            stage: Stage::Concurrency
        })
    );
}

#[test]
fn time_going_backwards_or_stopping_at_its_end_closes_no_window() {
    let registry = Registry::builder().config(with_breaker(50.0)).build();
    let g = Guardrails {
        min_requests: 1,
        ..guard()
    };
    let canary = Canary::new(&registry, "api", with_breaker(20.0), 100, g, at(5000)).unwrap();
    // Earlier than the start: counted, no window closes.
    drive(&canary, 1000, 1, Duration::from_millis(5), |_| {
        Outcome::Success
    });
    assert_eq!(steps(&canary), ["started 100"]);
    // A clock stuck at its end: a window that would end past it never
    // ends, so requests at `Timestamp::MAX` cannot each close one.
    let end = Canary::new(&registry, "api", with_breaker(20.0), 100, g, Timestamp::MAX).unwrap();
    for _ in 0..10 {
        let arm = end.route(Timestamp::MAX);
        let token = end.admit(arm, Timestamp::MAX, false).unwrap();
        end.complete(arm, token, Outcome::Success, Duration::ZERO, Timestamp::MAX);
    }
    end.tick(Timestamp::MAX);
    assert_eq!(end.phase(), Phase::Running);
    assert_eq!(steps(&end), ["started 100"]);
}

#[tokio::test]
async fn a_panic_in_the_services_call_gives_the_arm_its_permit_back() {
    let registry = Registry::builder().config(with_breaker(50.0)).build();
    let candidate = ConfigSet::from_file_spec(&FileSpec {
        bulkhead: default_section(BulkheadSpec {
            limit: Some(1),
            ..BulkheadSpec::default()
        }),
        ..FileSpec::default()
    })
    .unwrap();
    let clock = TokioClock::runtime();
    let canary =
        Arc::new(Canary::new(&registry, "api", candidate, 100, guard(), clock.now()).unwrap());
    let mut svc = CanaryLayer::new(
        canary,
        clock,
        |_: &u32| Tag::default(),
        |r: &Result<u32, &'static str>| {
            if r.is_ok() {
                Outcome::Success
            } else {
                Outcome::Failure
            }
        },
    )
    .layer(tower::service_fn(|n: u32| {
        assert!(n != 0, "call panics");
        std::future::ready(Ok::<_, &'static str>(n))
    }));
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(tower::Service::call(&mut svc, 0));
    }));
    assert!(panicked.is_err());
    for n in 1..=3 {
        assert_eq!(svc.ready().await.unwrap().call(n).await, Ok(n));
    }
}
