//! Outlier ejection: the consecutive-failures rule (the endpoint's breaker),
//! the rate rule (far above the others'), the cap on ejections, re-admission
//! after the ejection time (paused clock), panicking classifiers, the table's
//! capacity, and routing around ejected endpoints in tower's p2c balancer.
#![cfg(feature = "balance")]

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tenlives_engine::breaker::{BreakerConfig, BreakerState, Outcome};
use tenlives_tokio::{
    EjectDiscover, Ejectable, EjectionConfig, EjectionStats, OutlierDetector, RateRule, TokioClock,
};
use tower::{Service, ServiceExt};

/// An endpoint's failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Failed;

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("endpoint failed")
    }
}

impl std::error::Error for Failed {}

/// An endpoint that fails while its flag is set, counting its calls.
#[derive(Clone, Default)]
struct Endpoint {
    failing: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

impl Endpoint {
    fn failing(&self, yes: bool) {
        self.failing.store(yes, Ordering::SeqCst);
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<u32> for Endpoint {
    type Response = u32;
    type Error = Failed;
    type Future = std::future::Ready<Result<u32, Failed>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: u32) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(if self.failing.load(Ordering::SeqCst) {
            Err(Failed)
        } else {
            Ok(req)
        })
    }
}

fn consecutive(n: u32) -> BreakerConfig {
    BreakerConfig::builder()
        .without_failure_rate()
        .consecutive_failures(n)
        .open_duration(Duration::from_secs(1))
        .half_open_probes(1)
        .build()
        .unwrap()
}

fn is_ready<S: Service<u32>>(svc: &mut S) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(())))
}

async fn calls<C>(svc: &mut Ejectable<Endpoint, C>, n: usize) -> usize
where
    C: tenlives_tokio::Classify<u32, Failed>,
{
    let mut ok = 0;
    for i in 0..n {
        if svc.ready().await.unwrap().call(i as u32).await.is_ok() {
            ok += 1;
        }
    }
    ok
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_eject_within_the_cap_and_readmit_after_the_ejection_time() {
    // Three endpoints, 50 %: at most one out.
    let detector = OutlierDetector::new(EjectionConfig::new(consecutive(3), 50, 8).unwrap());
    let (ea, eb, ec) = (
        Endpoint::default(),
        Endpoint::default(),
        Endpoint::default(),
    );
    let mut a = detector.endpoint("a", ea.clone());
    let mut b = detector.endpoint("b", eb.clone());
    let mut c = detector.endpoint("c", ec.clone());
    ea.failing(true);
    calls(&mut a, 2).await;
    assert!(is_ready(&mut a), "two failures are not three");
    calls(&mut a, 1).await;
    assert!(!is_ready(&mut a), "ejected");
    assert_eq!(detector.is_ejected(&"a"), Some(true));
    // The cap: b fails three times too but stays in.
    eb.failing(true);
    calls(&mut b, 3).await;
    assert!(is_ready(&mut b));
    assert_eq!(b.breaker().unwrap().state(), BreakerState::Closed);
    assert!(is_ready(&mut c));
    assert_eq!(
        detector.stats(),
        EjectionStats {
            tracked: 3,
            ejected: 1,
            ejections_by_breaker: 1,
            refused_by_cap: 1,
            ..EjectionStats::default()
        }
    );
    // Not before the ejection time ends...
    tokio::time::sleep(Duration::from_millis(999)).await;
    assert!(!is_ready(&mut a));
    // ...and at its end, a probe is let through: it succeeds, a is back in.
    let woke = tokio::time::timeout(Duration::from_millis(2), a.ready())
        .await
        .is_ok();
    assert!(
        woke,
        "the ejected service wakes itself when its ejection ends"
    );
    ea.failing(false);
    assert_eq!(calls(&mut a, 1).await, 1);
    assert!(is_ready(&mut a));
    assert_eq!(a.breaker().unwrap().state(), BreakerState::Closed);
    let s = detector.stats();
    assert_eq!((s.ejected, s.readmissions), (0, 1));
    // The slot is free again: b's next three failures eject it.
    calls(&mut b, 3).await;
    assert!(!is_ready(&mut b));
    assert_eq!(detector.stats().ejections_by_breaker, 2);
}

#[tokio::test(start_paused = true)]
async fn a_failing_probe_ejects_again_and_keeps_the_slot() {
    let detector = OutlierDetector::new(EjectionConfig::new(consecutive(2), 100, 8).unwrap());
    let ea = Endpoint::default();
    let mut a = detector.endpoint(1u32, ea.clone());
    let _b = detector.endpoint(2u32, Endpoint::default());
    ea.failing(true);
    calls(&mut a, 2).await;
    assert!(!is_ready(&mut a));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(is_ready(&mut a), "half-open: a probe may go");
    calls(&mut a, 1).await;
    assert!(!is_ready(&mut a), "the probe failed: out again");
    let s = detector.stats();
    assert_eq!(
        (s.ejected, s.ejections_by_breaker, s.readmissions),
        (1, 1, 0)
    );
}

fn rate_config(max_percent: u32) -> EjectionConfig {
    EjectionConfig::new(consecutive(1_000), max_percent, 8)
        .unwrap()
        .with_rate_rule(RateRule {
            interval: Duration::from_secs(10),
            factor: 3.0,
            floor: 0.3,
            minimum_calls: 10,
            ejection: Duration::from_secs(30),
        })
        .unwrap()
}

/// Drives `n` calls at endpoint `svc`, the first `failures` of them failing.
async fn mixed(svc: &mut Ejectable<Endpoint>, ep: &Endpoint, n: usize, failures: usize) {
    ep.failing(true);
    calls(svc, failures).await;
    ep.failing(false);
    calls(svc, n - failures).await;
}

#[tokio::test(start_paused = true)]
async fn the_rate_rule_ejects_an_endpoint_far_above_the_others_and_readmits_it() {
    let detector = OutlierDetector::new(rate_config(50));
    let eps: Vec<Endpoint> = (0..4).map(|_| Endpoint::default()).collect();
    let mut svcs: Vec<_> = eps
        .iter()
        .enumerate()
        .map(|(i, e)| detector.endpoint(i, e.clone()))
        .collect();
    // Endpoint 0 fails 60 %, the others 10 % (three times 10 % is 30 %: 0 is
    // far above; 1 is not).
    mixed(&mut svcs[0], &eps[0], 20, 12).await;
    for i in 1..4 {
        mixed(&mut svcs[i], &eps[i], 20, 2).await;
    }
    assert!(
        svcs.iter_mut().all(is_ready),
        "not before the interval ends"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    // The next completed call runs the evaluation.
    calls(&mut svcs[1], 1).await;
    assert!(!is_ready(&mut svcs[0]));
    assert!(svcs[1..].iter_mut().all(is_ready));
    let s = detector.stats();
    assert_eq!((s.ejected, s.ejections_by_rate), (1, 1));
    assert!(
        svcs[0].call(0).await.unwrap_err().is_rejected(),
        "an ejected endpoint's breaker is held open"
    );
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(!is_ready(&mut svcs[0]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        is_ready(&mut svcs[0]),
        "re-admitted after the ejection time"
    );
    assert_eq!(svcs[0].breaker().unwrap().state(), BreakerState::Closed);
    let s = detector.stats();
    assert_eq!((s.ejected, s.readmissions), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn endpoints_equally_bad_are_not_outliers_and_the_cap_holds() {
    // Every endpoint fails 60 %: none is far above the others.
    let detector = OutlierDetector::new(rate_config(100));
    let eps: Vec<Endpoint> = (0..4).map(|_| Endpoint::default()).collect();
    let mut svcs: Vec<_> = eps
        .iter()
        .enumerate()
        .map(|(i, e)| detector.endpoint(i, e.clone()))
        .collect();
    for i in 0..4 {
        mixed(&mut svcs[i], &eps[i], 20, 12).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    detector.evaluate();
    assert_eq!(detector.stats().ejections_by_rate, 0);

    // Two outliers of four at 25 %: one is ejected, one refused.
    let detector = OutlierDetector::new(rate_config(25));
    let mut svcs: Vec<_> = eps
        .iter()
        .enumerate()
        .map(|(i, e)| detector.endpoint(i, e.clone()))
        .collect();
    mixed(&mut svcs[0], &eps[0], 20, 20).await;
    mixed(&mut svcs[1], &eps[1], 20, 20).await;
    mixed(&mut svcs[2], &eps[2], 20, 0).await;
    mixed(&mut svcs[3], &eps[3], 20, 0).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    detector.evaluate();
    let s = detector.stats();
    assert_eq!(
        (s.ejected, s.ejections_by_rate, s.refused_by_cap),
        (1, 1, 1)
    );
    let out = svcs
        .iter_mut()
        .filter_map(|s| (!is_ready(s)).then_some(()))
        .count();
    assert_eq!(out, 1);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_classifier_releases_the_probe_and_records_nothing() {
    let panics = Arc::new(AtomicBool::new(false));
    let p = Arc::clone(&panics);
    let classifier = move |r: &Result<u32, Failed>| {
        if p.load(Ordering::SeqCst) {
            panic!("classifier panics");
        }
        if r.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    };
    let detector = OutlierDetector::with_classifier(
        EjectionConfig::new(consecutive(2), 100, 8).unwrap(),
        classifier,
        TokioClock::new(),
    );
    let ea = Endpoint::default();
    let mut a = detector.endpoint(0u8, ea.clone());
    let _b = detector.endpoint(1u8, Endpoint::default());
    // Closed: a panicking classifier counts nothing.
    ea.failing(true);
    calls(&mut a, 1).await;
    panics.store(true, Ordering::SeqCst);
    let fut = a.call(0);
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut fut = std::pin::pin!(fut);
        fut.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }));
    assert!(r.is_err(), "the panic reaches the caller");
    panics.store(false, Ordering::SeqCst);
    let snap = a
        .breaker()
        .unwrap()
        .snapshot(tenlives_engine::time::Timestamp::ZERO);
    assert_eq!(
        snap.consecutive_failures, 1,
        "the panicked call counted nothing"
    );
    // Half-open: the probe slot comes back.
    calls(&mut a, 1).await;
    assert!(!is_ready(&mut a));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(is_ready(&mut a));
    panics.store(true, Ordering::SeqCst);
    let fut = a.call(0);
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut fut = std::pin::pin!(fut);
        fut.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }));
    assert!(r.is_err());
    panics.store(false, Ordering::SeqCst);
    assert!(is_ready(&mut a), "the probe slot was given back");
    ea.failing(false);
    assert_eq!(calls(&mut a, 1).await, 1);
    assert_eq!(a.breaker().unwrap().state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_table_is_capped_and_removal_gives_the_slot_back() {
    let detector = OutlierDetector::new(EjectionConfig::new(consecutive(1), 100, 2).unwrap());
    let eps: Vec<Endpoint> = (0..3).map(|_| Endpoint::default()).collect();
    let mut a = detector.endpoint(0u8, eps[0].clone());
    let _b = detector.endpoint(1u8, eps[1].clone());
    let mut c = detector.endpoint(2u8, eps[2].clone());
    assert!(c.breaker().is_none(), "past the capacity: untracked");
    eps[2].failing(true);
    calls(&mut c, 5).await;
    assert!(is_ready(&mut c), "an untracked endpoint is never ejected");
    eps[0].failing(true);
    calls(&mut a, 1).await;
    assert!(!is_ready(&mut a));
    let s = detector.stats();
    assert_eq!((s.tracked, s.ejected, s.untracked), (2, 1, 1));
    detector.remove(&0);
    let s = detector.stats();
    assert_eq!((s.tracked, s.ejected), (1, 0));
    assert_eq!(detector.is_ejected(&0), None);
}

/// tower's p2c balancer over three endpoints, one failing: after its three
/// consecutive failures it is ejected and the balancer routes around it until
/// the ejection time ends.
#[tokio::test(start_paused = true)]
async fn the_p2c_balancer_routes_around_an_ejected_endpoint() {
    use tower::balance::p2c::Balance;
    use tower::discover::ServiceList;
    use tower::load::{CompleteOnResponse, PendingRequests};

    let detector = OutlierDetector::new(EjectionConfig::new(consecutive(3), 50, 8).unwrap());
    let eps: Vec<Endpoint> = (0..3).map(|_| Endpoint::default()).collect();
    eps[0].failing(true);
    let list = ServiceList::new(
        eps.iter()
            .map(|e| PendingRequests::new(e.clone(), CompleteOnResponse::default()))
            .collect::<Vec<_>>(),
    );
    let mut balance = Balance::new(EjectDiscover::new(list, detector.clone()));
    let mut failures = 0;
    for i in 0..300 {
        let svc = balance.ready().await.unwrap();
        if svc.call(i).await.is_err() {
            failures += 1;
        }
    }
    assert_eq!(eps[0].calls(), 3, "ejected after its third failure");
    assert_eq!(failures, 3);
    assert_eq!(eps[1].calls() + eps[2].calls(), 297);
    assert_eq!(detector.stats().ejected, 1);
    // After the ejection time a probe reaches it again (and fails: out again).
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..100 {
        let svc = balance.ready().await.unwrap();
        let _ = svc.call(i).await;
    }
    assert_eq!(eps[0].calls(), 4, "one probe per ejection time");
}

/// A breaker tripped by its slow-call rule (on successes) takes a slot of
/// the budget like any other trip: with no slot free, the endpoint stays in.
#[tokio::test(start_paused = true)]
async fn the_cap_holds_for_a_breaker_tripped_by_slow_successes() {
    let slow = BreakerConfig::builder()
        .without_failure_rate()
        .slow_calls(100.0, Duration::from_millis(50))
        .count_window(2)
        .minimum_calls(2)
        .open_duration(Duration::from_secs(1))
        .build()
        .unwrap();
    // Two endpoints at 49 %: no slot at all.
    let detector = OutlierDetector::new(EjectionConfig::new(slow, 49, 8).unwrap());
    let service = tower::service_fn(|r: u32| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, Failed>(r)
    });
    let mut a = detector.endpoint(0u8, service);
    let _b = detector.endpoint(1u8, Endpoint::default());
    for i in 0..2 {
        a.ready().await.unwrap().call(i).await.unwrap();
    }
    assert!(is_ready(&mut a), "no slot: the endpoint stays in");
    let s = detector.stats();
    assert_eq!((s.ejected, s.refused_by_cap), (0, 1));
}

#[cfg(feature = "telemetry")]
#[tokio::test(start_paused = true)]
async fn the_collector_exports_ejections_and_the_cap() {
    let detector = OutlierDetector::new(EjectionConfig::new(consecutive(1), 50, 8).unwrap());
    let eps: Vec<Endpoint> = (0..2).map(|_| Endpoint::default()).collect();
    let mut svcs: Vec<_> = eps
        .iter()
        .enumerate()
        .map(|(i, e)| detector.endpoint(i, e.clone()))
        .collect();
    for (svc, ep) in svcs.iter_mut().zip(&eps) {
        ep.failing(true);
        calls(svc, 1).await;
    }
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(detector.collector("upstreams")));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "tenlives_ejections_total{detector=\"upstreams\",cause=\"breaker\"} 1",
        "tenlives_ejections_total{detector=\"upstreams\",cause=\"rate\"} 0",
        "tenlives_ejections_refused_total{detector=\"upstreams\"} 1",
        "tenlives_endpoints_tracked{detector=\"upstreams\"} 2",
        "tenlives_endpoints_ejected{detector=\"upstreams\"} 1",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}

/// A response future dropped before it completes (at its await, or before
/// its first poll) gives the half-open probe slot back and reports nothing.
#[tokio::test(start_paused = true)]
async fn a_dropped_call_gives_its_probe_back() {
    let detector = OutlierDetector::new(EjectionConfig::new(consecutive(1), 100, 8).unwrap());
    let slow_fails = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&slow_fails);
    let service = tower::service_fn(move |r: u32| {
        let fails = flag.load(Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if fails { Err(Failed) } else { Ok(r) }
        }
    });
    let mut a = detector.endpoint(0u8, service);
    let _b = detector.endpoint(1u8, Endpoint::default());
    a.ready().await.unwrap().call(0).await.unwrap_err();
    assert!(!is_ready(&mut a));
    tokio::time::sleep(Duration::from_secs(1)).await;
    for polled in [false, true] {
        assert!(is_ready(&mut a), "the probe slot is free");
        let mut call = Box::pin(a.call(1));
        if polled {
            assert!(
                call.as_mut()
                    .poll(&mut Context::from_waker(Waker::noop()))
                    .is_pending()
            );
        }
        assert!(!is_ready(&mut a), "one probe at a time");
        drop(call);
        assert_eq!(a.breaker().unwrap().state(), BreakerState::HalfOpen);
    }
    slow_fails.store(false, Ordering::SeqCst);
    a.ready().await.unwrap().call(2).await.unwrap();
    assert_eq!(a.breaker().unwrap().state(), BreakerState::Closed);
    assert_eq!(
        detector.stats().readmissions,
        0,
        "seen closed at the next poll_ready"
    );
    assert!(is_ready(&mut a));
    assert_eq!(detector.stats().readmissions, 1);
}
