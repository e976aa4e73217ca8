//! The drain as a tokio task (on tokio's paused clock, so no test depends on
//! the machine's speed), and the exposition checked by `promtool`.
#![cfg(feature = "telemetry")]

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tenlives_engine::ConfigError;
use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::events::{Event, EventKind, EventRing, EventSink, Slot};
use tenlives_engine::time::{Clock, ManualClock, Timestamp};
use tenlives_tokio::telemetry::{
    self, Drain, DrainConfig, DrainCounts, Exporter, PolicyKind, SourceRegistry,
};

type Ring = EventRing<Box<[Slot]>>;

fn setup() -> (Arc<Ring>, Arc<Exporter>) {
    let ring = Arc::new(EventRing::with_capacity(256).unwrap());
    let sources = SourceRegistry::builder()
        .policy(1, "breaker", PolicyKind::CircuitBreaker)
        .bulkhead(2, "pool", 2)
        .build()
        .unwrap();
    (ring, Arc::new(Exporter::new(sources)))
}

fn user_event(n: u64) -> Event {
    Event::new(EventKind::USER, 1, Timestamp::from_nanos(n), [n, 0])
}

/// `tenlives_events_total` summed over all series, read from the registry.
fn events_exported(exporter: &Exporter) -> u64 {
    exporter
        .render_text()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("tenlives_events_total{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum()
}

#[test]
fn a_zero_interval_is_a_typed_error() {
    assert_eq!(
        DrainConfig::with_interval(Duration::ZERO),
        Err(ConfigError::ZeroDuration {
            field: "drain interval"
        })
    );
    let config = DrainConfig::with_interval(Duration::from_millis(50)).unwrap();
    assert_eq!(config.interval(), Duration::from_millis(50));
    assert_eq!(DrainConfig::default().interval(), Duration::from_millis(10));
}

#[tokio::test(start_paused = true)]
async fn the_task_drains_on_its_interval_and_a_last_time_when_stopped() {
    let (ring, exporter) = setup();
    let config = DrainConfig::with_interval(Duration::from_millis(10)).unwrap();
    let handle = telemetry::spawn(ring.clone(), exporter.clone(), config);

    // Events emitted right after `spawn` returns are seen: it joined already.
    for i in 0..3 {
        ring.emit(user_event(i));
    }
    tokio::time::sleep(Duration::from_millis(25)).await;
    assert_eq!(events_exported(&exporter), 3, "drained without being asked");

    ring.emit(user_event(3));
    ring.emit(user_event(4));
    // Stopping makes a last pass, so nothing emitted before it is left behind.
    let counts = handle.stop().await.unwrap();
    assert_eq!(counts, DrainCounts { events: 5, lost: 0 });
    assert_eq!(events_exported(&exporter), 5);

    // Stopped: later events stay in the ring.
    ring.emit(user_event(5));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(events_exported(&exporter), 5);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_handle_stops_the_drain_after_a_last_pass() {
    let (ring, exporter) = setup();
    let handle = telemetry::spawn(ring.clone(), exporter.clone(), DrainConfig::default());
    ring.emit(user_event(0));
    drop(handle);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(events_exported(&exporter), 1);
    ring.emit(user_event(1));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(events_exported(&exporter), 1, "the drain stopped");
}

#[tokio::test(start_paused = true)]
async fn the_drain_ends_by_itself_when_the_producers_are_gone() {
    let (ring, exporter) = setup();
    let handle = telemetry::spawn(ring.clone(), exporter.clone(), DrainConfig::default());
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::with_sink(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .build()
            .unwrap(),
        ring.clone(),
        1,
    );
    let bulkhead = Bulkhead::with_sink(2, ring.clone(), 2).unwrap();
    drop(ring);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(!handle.is_finished(), "producers still hold the ring");

    breaker
        .try_acquire(clock.now())
        .unwrap()
        .failure(clock.now()); // opened
    drop(bulkhead.try_acquire().unwrap()); // acquired, released
    drop((breaker, bulkhead));
    // `join` does not ask the drain to stop; it ends because it holds the
    // last reference to the ring, after reading what the producers left.
    let counts = handle.join().await.unwrap();
    assert_eq!(counts, DrainCounts { events: 3, lost: 0 });
    let text = exporter.render_text().unwrap();
    assert!(
        text.contains("tenlives_breaker_state{policy=\"breaker\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("tenlives_bulkhead_in_flight{policy=\"pool\"} 0\n"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_detached_drain_keeps_running() {
    let (ring, exporter) = setup();
    telemetry::spawn(ring.clone(), exporter.clone(), DrainConfig::default()).detach();
    for round in 1..=3 {
        ring.emit(user_event(round));
        tokio::time::sleep(Duration::from_millis(15)).await;
        assert_eq!(events_exported(&exporter), round);
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_drain_reports_what_the_ring_overwrote() {
    let ring: Arc<Ring> = Arc::new(EventRing::with_capacity(4).unwrap());
    let exporter = Arc::new(Exporter::new(SourceRegistry::default()));
    let config = DrainConfig::with_interval(Duration::from_secs(1)).unwrap();
    let handle = telemetry::spawn(ring.clone(), exporter.clone(), config);
    tokio::task::yield_now().await; // the first pass, on an empty ring
    for i in 0..10 {
        ring.emit(user_event(i));
    }
    let counts = handle.stop().await.unwrap();
    assert_eq!(counts, DrainCounts { events: 4, lost: 6 });
    assert_eq!(exporter.lost(), 6);
    assert!(
        exporter
            .render_text()
            .unwrap()
            .contains("\ntenlives_events_lost_total 6\n")
    );
}

/// `promtool check metrics` (from Debian's `prometheus` package) on the
/// classic-format output of an exporter that has seen every kind of event.
/// Skips, saying so, when promtool is not installed.
#[test]
fn promtool_accepts_the_exposition() {
    let Ok(version) = Command::new("promtool").arg("--version").output() else {
        println!("SKIPPED: promtool not found (apt-get install prometheus to run this check)");
        return;
    };
    assert!(version.status.success());

    let ring = Arc::new(EventRing::with_capacity(256).unwrap());
    let sources = SourceRegistry::builder()
        .policy(1, "api", PolicyKind::CircuitBreaker)
        .bulkhead(2, "api", 2)
        .policy(3, "api", PolicyKind::RetryBudget)
        .policy(4, "api", PolicyKind::Throttle)
        .policy(5, "adaptive", PolicyKind::AdaptiveLimit)
        .policy(6, "app", PolicyKind::Other)
        .build()
        .unwrap();
    let exporter = Arc::new(Exporter::new(sources));
    let mut drain = Drain::new(ring.clone(), exporter.clone());
    let t = Timestamp::from_nanos(1);
    for (kind, source) in [
        (EventKind::BREAKER_OPENED, 1),
        (EventKind::BREAKER_REJECTED, 1),
        (EventKind::BREAKER_FORCED, 1),
        (EventKind::BULKHEAD_ACQUIRED, 2),
        (EventKind::BULKHEAD_REJECTED, 2),
        (EventKind::BULKHEAD_LIMIT_CHANGED, 5),
        (EventKind::RETRY_BUDGET_EXHAUSTED, 3),
        (EventKind::THROTTLED, 4),
        (EventKind::USER, 6),
        (EventKind::USER, 77),
    ] {
        ring.emit(Event::new(kind, source, t, [1, 1]));
    }
    for _ in 0..300 {
        ring.emit(Event::new(EventKind::USER, 6, t, [0, 0])); // overflow: lost events
    }
    drain.drain_once();
    assert!(exporter.lost() > 0);

    let text = exporter.render_text().unwrap();
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool: {said}\n--- input ---\n{text}"
    );
    assert!(
        said.trim().is_empty(),
        "promtool: {said}\n--- input ---\n{text}"
    );
}
