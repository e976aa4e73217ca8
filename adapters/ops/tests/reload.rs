//! Hot reload under load: threads call policies while the file is
//! rewritten; every call sees one whole configuration or the other, state
//! survives every reload, a bad file changes nothing.
#![cfg(all(feature = "yaml", feature = "reload"))]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::thread;
use std::time::{Duration, Instant};

use tenlives_engine::breaker::{BreakerState, WindowSpec};
use tenlives_engine::events::{EventRing, Received};
use tenlives_engine::time::{Clock, ManualClock, Timestamp};
use tenlives_ops::reload::{Reloader, StartError};
use tenlives_ops::{REGISTRY_SOURCE, Registry, events};

#[derive(Clone, Default)]
struct SharedClock(Arc<ManualClock>);

impl Clock for SharedClock {
    fn now(&self) -> Timestamp {
        self.0.now()
    }
}

/// Version `v`: even versions are "A", odd ones "B"; every changed policy
/// changes several fields at once.
fn file(v: u32) -> String {
    let (rate, min, open, calls, q, burst, limit, k) = if v.is_multiple_of(2) {
        (50, 10, "10s", 100, 100, 10, 8, 1.5)
    } else {
        (25, 40, "20s", 200, 400, 40, 16, 3.0)
    };
    format!(
        "\
# version {v}
circuit_breaker:
  instances:
    payments:
      failure_rate: {rate}
      minimum_calls: {min}
      open_duration: {open}
      window_calls: {calls}
    frozen:
      consecutive_failures: 2
      failure_rate: off
      open_duration: 1h
rate_limiter:
  instances:
    api: {{ rate: {q}, burst: {burst}, period: 1s }}
bulkhead:
  instances:
    db: {{ limit: {limit} }}
throttle:
  instances:
    t: {{ k: {k} }}
"
    )
}

/// Writes beside the file and renames over it, as deployment tools do.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn reload_under_load_is_whole_and_keeps_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policies.yaml");
    std::fs::write(&path, file(0)).unwrap();
    let clock = SharedClock::default();
    let registry = Registry::builder().clock(clock.clone()).build();
    let reloader = Reloader::start(registry.clone(), &path, Duration::from_millis(30)).unwrap();

    let payments = registry.breaker("payments").unwrap();
    let frozen = registry.breaker("frozen").unwrap();
    let api = registry.rate_limiter("api").unwrap();
    let db = registry.bulkhead("db").unwrap();
    let t = registry.throttle("t").unwrap();
    let now = clock.now();
    // State before any reload: both breakers open, the limiter spent.
    for _ in 0..10 {
        payments.try_acquire(now).unwrap().failure(now);
    }
    for _ in 0..2 {
        frozen.try_acquire(now).unwrap().failure(now);
    }
    assert_eq!(payments.state(), BreakerState::Open);
    assert_eq!(frozen.state(), BreakerState::Open);
    for _ in 0..10 {
        api.check(now).unwrap();
    }
    assert_eq!(api.available(now), 0);

    let a = (Some(50.0), 10, Duration::from_secs(10), 100);
    let b = (Some(25.0), 40, Duration::from_secs(20), 200);
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (payments, frozen, api, db, t) = (
                payments.clone(),
                frozen.clone(),
                api.clone(),
                db.clone(),
                t.clone(),
            );
            let (stop, calls, clock) = (stop.clone(), calls.clone(), clock.clone());
            thread::spawn(move || {
                while !stop.load(SeqCst) {
                    let now = clock.now();
                    let c = payments.config();
                    let calls_in_window = match c.window() {
                        WindowSpec::Count { calls, .. } => calls,
                        _ => 0,
                    };
                    let seen = (
                        c.failure_rate(),
                        c.minimum_calls(),
                        c.open_duration(0),
                        calls_in_window,
                    );
                    assert!(seen == a || seen == b, "a half-applied breaker: {seen:?}");
                    let q = api.quota();
                    assert!(
                        matches!((q.rate(), q.burst()), (100, 10) | (400, 40)),
                        "a half-applied quota: {q:?}"
                    );
                    assert!(matches!(db.limit(), 8 | 16));
                    if let Ok(p) = db.try_acquire() {
                        drop(p);
                    }
                    let k = t.config().k();
                    assert!(k == 1.5 || k == 3.0, "throttle k {k}");
                    assert!(
                        frozen.try_acquire(now).is_err(),
                        "the untouched breaker closed"
                    );
                    assert!(
                        payments.try_acquire(now).is_err(),
                        "the changed breaker closed"
                    );
                    calls.fetch_add(1, SeqCst);
                }
            })
        })
        .collect();

    for v in 1..=6 {
        if v == 3 {
            // A bad file between good ones: refused, nothing changes.
            let before = payments.config().failure_rate();
            replace(
                &path,
                &file(v).replace("failure_rate: 25", "failure_rate: 150"),
            );
            wait_for("the refusal", || reloader.rejected() == 1);
            let e = reloader.last_error().unwrap();
            assert_eq!(e.path, "circuit_breaker.instances.payments.failure_rate");
            assert_eq!(e.line, 5);
            assert_eq!(payments.config().failure_rate(), before);
            assert_eq!(reloader.applied(), u64::from(v));
        }
        if v == 6 {
            std::fs::write(&path, file(v)).unwrap(); // in place, this time
        } else {
            replace(&path, &file(v));
        }
        wait_for("the reload", || reloader.applied() == u64::from(v) + 1);
        let want = if v % 2 == 0 { a.0 } else { b.0 };
        assert_eq!(payments.config().failure_rate(), want);
        assert_eq!(db.limit(), if v % 2 == 0 { 8 } else { 16 });
        // Let the callers run on this version for a while.
        let seen = calls.load(SeqCst);
        wait_for("calls", || calls.load(SeqCst) > seen + 100);
    }
    stop.store(true, SeqCst);
    for h in load {
        h.join().unwrap();
    }

    // The bad file was refused once: reading the file is no change to it.
    assert_eq!(reloader.rejected(), 1, "the refusal repeated");
    // Same instances, state kept through six reloads.
    assert!(Arc::ptr_eq(
        &payments,
        &registry.breaker("payments").unwrap()
    ));
    assert_eq!(payments.state(), BreakerState::Open);
    assert_eq!(frozen.state(), BreakerState::Open);
    assert_eq!(api.quota().burst(), 10);
    assert!(
        api.available(clock.now()) < 10,
        "the limiter's spent tokens came back"
    );
}

#[test]
fn a_refused_file_emits_an_event_and_a_later_good_file_applies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policies.yaml");
    std::fs::write(&path, file(0)).unwrap();
    let ring = Arc::new(EventRing::with_capacity(256).unwrap());
    let mut consumer = ring.consumer();
    let registry = Registry::builder().events(ring.clone()).build();
    let reloader = Reloader::start(registry.clone(), &path, Duration::from_millis(30)).unwrap();
    let db = registry.bulkhead("db").unwrap();
    replace(&path, &file(1).replace("limit: 16", "limit: -3"));
    wait_for("the refusal", || reloader.rejected() == 1);
    // Quiet for many debounce intervals: refused once, not again and again.
    thread::sleep(Duration::from_millis(300));
    assert_eq!(reloader.rejected(), 1, "the refusal repeated");
    let e = reloader.last_error().unwrap();
    assert_eq!(
        (e.line, e.path.as_str()),
        (18, "bulkhead.instances.db.limit")
    );
    assert_eq!(db.limit(), 8);
    replace(&path, &file(1));
    wait_for("the reload", || reloader.applied() == 2);
    assert_eq!(db.limit(), 16);
    let mut registry_events = Vec::new();
    while let Some(r) = consumer.try_recv() {
        if let Received::Event(ev) = r
            && ev.source == REGISTRY_SOURCE
        {
            registry_events.push((ev.kind, ev.payload[0]));
        }
    }
    assert_eq!(
        registry_events,
        [
            (events::CONFIG_APPLIED, 0), // the first load: no live instance yet
            (events::CONFIG_REJECTED, 18),
            (events::CONFIG_APPLIED, 1) // db, the only live instance, changed
        ]
    );
}

#[test]
fn a_bad_file_at_start_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policies.yaml");
    std::fs::write(&path, "bulkhead:\n  instances:\n    db: { limit: 0 }\n").unwrap();
    let registry = Registry::builder().build();
    match Reloader::start(registry.clone(), &path, Duration::from_millis(10)) {
        Err(StartError::Load(e)) => {
            assert_eq!(
                (e.line, e.path.as_str()),
                (3, "bulkhead.instances.db.limit")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(registry.bulkhead("db").is_err(), "nothing was applied");
}
