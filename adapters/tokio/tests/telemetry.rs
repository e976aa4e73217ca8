//! The drain against real engine primitives, synchronously: what it logs
//! (captured by a small `tracing` layer), what it exports (parsed back from
//! the exposition text by the parser below), and how it accounts for events
//! the ring overwrote.
#![cfg(feature = "telemetry")]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::events::{Event, EventKind, EventRing, EventSink, LaneRing, Slot};
use tenlives_engine::time::{Clock, ManualClock, Timestamp};
use tenlives_test_support::tracing_capture;
use tenlives_tokio::telemetry::{Drain, DrainCounts, Exporter, PolicyKind, SourceRegistry};
use tracing::Level;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer};

// ---------------------------------------------------------------------------
// A tracing layer that records every event.

#[derive(Clone, Debug)]
struct Captured {
    level: Level,
    target: String,
    fields: BTreeMap<String, String>,
}

impl Captured {
    fn field(&self, name: &str) -> &str {
        self.fields
            .get(name)
            .map_or_else(|| panic!("no field `{name}` in {self:?}"), String::as_str)
    }
}

/// Records the events of the thread that captures: registered for the
/// duration of [`Capture::during`] with the test binary's one global
/// subscriber (`tenlives_test_support::tracing_capture`, whose module doc
/// says why not a scoped subscriber per test: CI once lost the half-open
/// transition's line, `left: 0, right: 1`, in
/// `a_breaker_that_trips_and_recovers_is_logged_and_exported`). The drain
/// logs on the thread that calls it, so the test's thread sees all of it.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<Captured>>>);

/// Captures what the current thread logs: [`Capture::during`].
#[derive(Clone, Copy)]
struct Capture;

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
}

impl<S: tracing::Subscriber> Layer<S> for Events {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(Captured {
            level: *event.metadata().level(),
            target: event.metadata().target().into(),
            fields,
        });
    }
}

impl Capture {
    /// Runs `f`, and returns what the current thread logged during it.
    fn during<R>(&self, f: impl FnOnce() -> R) -> (R, Vec<Captured>) {
        let events = Events::default();
        let capture = tracing_capture::capture(events.clone());
        let r = f();
        drop(capture);
        let logs = std::mem::take(&mut *events.0.lock().unwrap());
        (r, logs)
    }
}

// ---------------------------------------------------------------------------
// A parser for the classic Prometheus text format, strict about what the
// exporter promises.

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug)]
struct MetricFamily {
    name: String,
    help: String,
    kind: String,
    samples: Vec<Sample>,
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses `name{label="value",...} value`, unescaping label values.
fn parse_sample(line: &str) -> Sample {
    let name_end = line.find(['{', ' ']).expect("a sample has a value");
    let name = &line[..name_end];
    assert!(is_name(name), "bad metric name in {line:?}");
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        loop {
            let (start, c) = chars.next().expect("unterminated label set");
            if c == '}' {
                rest = &body[start + 1..];
                break;
            }
            let key_start = if c == ',' {
                chars.next().expect("label after comma").0
            } else {
                start
            };
            let eq = body[key_start..].find('=').expect("label `=`") + key_start;
            let key = &body[key_start..eq];
            assert!(is_name(key), "bad label name {key:?} in {line:?}");
            while chars.next().expect("label value").0 < eq + 1 {}
            let mut value = String::new();
            loop {
                match chars.next().expect("unterminated label value").1 {
                    '"' => break,
                    '\\' => match chars.next().expect("escape").1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    other => value.push(other),
                }
            }
            assert!(
                labels.insert(key.to_string(), value).is_none(),
                "label {key} twice in {line:?}"
            );
        }
    }
    let value = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no space before the value in {line:?}"));
    let value: f64 = value
        .parse()
        .unwrap_or_else(|_| panic!("bad value in {line:?}"));
    Sample {
        name: name.to_string(),
        labels,
        value,
    }
}

/// Parses the classic text format: every family has `# HELP` then `# TYPE`,
/// then samples named exactly after it (counters and gauges only here).
fn parse_text(text: &str) -> Vec<MetricFamily> {
    let mut families: Vec<MetricFamily> = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let help = line
            .strip_prefix("# HELP ")
            .unwrap_or_else(|| panic!("expected a HELP line, got {line:?}"));
        let (name, help) = help.split_once(' ').expect("HELP has text");
        let ty = lines.next().expect("TYPE after HELP");
        let ty = ty
            .strip_prefix(&format!("# TYPE {name} "))
            .unwrap_or_else(|| panic!("expected the TYPE of {name}, got {ty:?}"));
        assert!(matches!(ty, "counter" | "gauge"), "{name}: type {ty}");
        assert!(!help.is_empty());
        assert!(
            families.iter().all(|f| f.name != name),
            "{name} declared twice"
        );
        let mut samples = Vec::new();
        while let Some(line) = lines.next_if(|l| !l.starts_with('#')) {
            let sample = parse_sample(line);
            assert_eq!(sample.name, name, "sample outside its family: {line:?}");
            samples.push(sample);
        }
        families.push(MetricFamily {
            name: name.to_string(),
            help: help.to_string(),
            kind: ty.to_string(),
            samples,
        });
    }
    for f in &families {
        assert!(f.name.starts_with("tenlives_"), "{}", f.name);
        assert_eq!(
            f.kind == "counter",
            f.name.ends_with("_total"),
            "{}",
            f.name
        );
        assert!(f.help.ends_with('.'), "{}", f.help);
    }
    families
}

/// The OpenMetrics form: the same families, counters declared without
/// `_total` and sampled with it, and `# EOF` last.
fn parse_openmetrics(text: &str) -> Vec<MetricFamily> {
    let body = text.strip_suffix("# EOF\n").expect("ends with # EOF");
    let counters: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut classic = String::new();
    for line in body.lines() {
        let family = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
            .unwrap_or(line);
        let counter = counters.iter().find(|c| {
            family.starts_with(&format!("{c} ")) || family.starts_with(&format!("{c}_total"))
        });
        match counter {
            Some(name) if line.starts_with('#') => {
                assert!(!line.contains(&format!("{name}_total ")), "{line}");
                classic.push_str(&line.replacen(name, &format!("{name}_total"), 1));
            }
            Some(name) => {
                assert!(line.starts_with(&format!("{name}_total")), "{line}");
                classic.push_str(line);
            }
            None => classic.push_str(line),
        }
        classic.push('\n');
    }
    parse_text(&classic)
}

/// The value of the series `name{labels}`, if exported.
fn value(families: &[MetricFamily], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    families
        .iter()
        .flat_map(|f| &f.samples)
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

/// The sum of `tenlives_events_total` over all its labels.
fn events_total(families: &[MetricFamily]) -> f64 {
    families
        .iter()
        .filter(|f| f.name == "tenlives_events_total")
        .flat_map(|f| &f.samples)
        .map(|s| s.value)
        .sum()
}

fn scrape(exporter: &Exporter) -> Vec<MetricFamily> {
    let text = parse_text(&exporter.render_text().unwrap());
    let om = parse_openmetrics(&exporter.render_openmetrics().unwrap());
    // Both formats carry the same series and values.
    let flat = |fs: &[MetricFamily]| -> Vec<(String, BTreeMap<String, String>, u64)> {
        let mut v: Vec<_> = fs
            .iter()
            .flat_map(|f| &f.samples)
            .map(|s| (s.name.clone(), s.labels.clone(), s.value.to_bits()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(flat(&text), flat(&om));
    text
}

// ---------------------------------------------------------------------------

type Ring = EventRing<Box<[Slot]>>;

fn setup(capacity: usize, sources: SourceRegistry) -> (Arc<Ring>, Arc<Exporter>, Drain<Ring>) {
    let ring = Arc::new(EventRing::with_capacity(capacity).unwrap());
    let exporter = Arc::new(Exporter::new(sources));
    let drain = Drain::new(ring.clone(), exporter.clone());
    (ring, exporter, drain)
}

const BREAKER: u32 = 3;
const BULKHEAD: u32 = 5;

fn breaker_sources() -> SourceRegistry {
    SourceRegistry::builder()
        .policy(BREAKER, "payments", PolicyKind::CircuitBreaker)
        .build()
        .unwrap()
}

#[test]
fn a_breaker_that_trips_and_recovers_is_logged_and_exported() {
    let (ring, exporter, mut drain) = setup(64, breaker_sources());
    let capture = Capture;
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::with_sink(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(2)
            .open_duration(Duration::from_secs(10))
            .half_open_probes(1)
            .build()
            .unwrap(),
        ring.clone(),
        BREAKER,
    );

    // Before anything happens: the breaker's series exist, at zero / closed.
    let m = scrape(&exporter);
    let state = |m: &[MetricFamily]| value(m, "tenlives_breaker_state", &[("policy", "payments")]);
    assert_eq!(state(&m), Some(0.0));
    for kind in [
        "breaker_opened",
        "breaker_half_opened",
        "breaker_closed",
        "breaker_forced",
        "breaker_rejected",
    ] {
        let labels = [("policy", "payments"), ("kind", kind)];
        assert_eq!(
            value(&m, "tenlives_events_total", &labels),
            Some(0.0),
            "{kind}"
        );
    }

    // Trip, then a rejection 4 s later.
    for _ in 0..2 {
        breaker
            .try_acquire(clock.now())
            .unwrap()
            .failure(clock.now());
    }
    clock.advance(Duration::from_secs(4));
    assert!(breaker.try_acquire(clock.now()).is_err());
    let (pass, logs) = capture.during(|| drain.drain_once());
    assert_eq!(pass, DrainCounts { events: 2, lost: 0 });
    assert_eq!(logs.len(), 2, "{logs:?}");
    let opened = &logs[0];
    assert_eq!(opened.level, Level::WARN);
    assert_eq!(opened.target, "tenlives");
    for (field, want) in [
        ("policy", "payments"),
        ("policy_kind", "circuit_breaker"),
        ("source", "3"),
        ("kind", "breaker_opened"),
        ("from", "closed"),
        ("to", "open"),
        ("reason", "consecutive_failures"),
        ("trips", "1"),
        ("open_for_ms", "10000"),
        ("time_ns", "0"),
        ("message", "circuit breaker opened"),
    ] {
        assert_eq!(opened.field(field), want, "{field}");
    }
    let rejected = &logs[1];
    assert_eq!(rejected.level, Level::DEBUG);
    assert_eq!(rejected.field("kind"), "breaker_rejected");
    assert_eq!(rejected.field("reason"), "breaker_open");
    assert_eq!(rejected.field("retry_after_ms"), "6000");
    assert_eq!(rejected.field("time_ns"), "4000000000");

    let m = scrape(&exporter);
    assert_eq!(state(&m), Some(1.0));
    let trips = [("policy", "payments"), ("reason", "consecutive_failures")];
    assert_eq!(value(&m, "tenlives_breaker_trips_total", &trips), Some(1.0));
    let open = [("policy", "payments"), ("reason", "breaker_open")];
    assert_eq!(value(&m, "tenlives_rejections_total", &open), Some(1.0));

    // The open period ends: a probe is admitted (half-open) ...
    clock.advance(Duration::from_secs(6));
    let probe = breaker.try_acquire(clock.now()).unwrap();
    let (_, logs) = capture.during(|| drain.drain_once());
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].level, Level::INFO);
    assert_eq!(
        (logs[0].field("from"), logs[0].field("to")),
        ("open", "half_open")
    );
    assert_eq!(logs[0].field("probes"), "1");
    assert_eq!(state(&scrape(&exporter)), Some(2.0));

    // ... and its success closes the breaker.
    probe.success(clock.now());
    let (pass, logs) = capture.during(|| drain.drain_once());
    assert_eq!(pass.events, 1);
    assert_eq!(logs[0].level, Level::INFO);
    assert_eq!(
        (logs[0].field("from"), logs[0].field("to")),
        ("half_open", "closed")
    );
    assert_eq!(logs[0].field("probes_succeeded"), "1");
    assert_eq!(logs[0].field("probes_failed"), "0");

    let m = scrape(&exporter);
    assert_eq!(state(&m), Some(0.0));
    for (kind, n) in [
        ("breaker_opened", 1.0),
        ("breaker_half_opened", 1.0),
        ("breaker_closed", 1.0),
        ("breaker_forced", 0.0),
        ("breaker_rejected", 1.0),
    ] {
        let labels = [("policy", "payments"), ("kind", kind)];
        assert_eq!(
            value(&m, "tenlives_events_total", &labels),
            Some(n),
            "{kind}"
        );
    }
    assert_eq!(value(&m, "tenlives_events_lost_total", &[]), Some(0.0));
    assert_eq!(drain.totals(), DrainCounts { events: 4, lost: 0 });
}

#[test]
fn forced_states_move_the_gauge_and_log_where_they_came_from() {
    let (ring, exporter, mut drain) = setup(16, breaker_sources());
    let capture = Capture;
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .build()
        .unwrap();
    let breaker = CircuitBreaker::with_sink(config, ring.clone(), BREAKER);
    let state = || {
        value(
            &scrape(&exporter),
            "tenlives_breaker_state",
            &[("policy", "payments")],
        )
    };

    breaker.force_open(Timestamp::from_nanos(1));
    let (_, logs) = capture.during(|| drain.drain_once());
    assert_eq!(logs[0].level, Level::INFO);
    assert_eq!(
        (logs[0].field("from"), logs[0].field("to")),
        ("closed", "forced_open")
    );
    assert_eq!(state(), Some(3.0));

    breaker.disable(Timestamp::from_nanos(2));
    breaker.metrics_only(Timestamp::from_nanos(3));
    let (_, logs) = capture.during(|| drain.drain_once());
    assert_eq!(
        (logs[0].field("from"), logs[0].field("to")),
        ("forced_open", "disabled")
    );
    assert_eq!(
        (logs[1].field("from"), logs[1].field("to")),
        ("disabled", "metrics_only")
    );
    assert_eq!(state(), Some(5.0));

    breaker.reset(Timestamp::from_nanos(4));
    drain.drain_once();
    assert_eq!(state(), Some(0.0));
    let forced = [("policy", "payments"), ("kind", "breaker_forced")];
    assert_eq!(
        value(&scrape(&exporter), "tenlives_events_total", &forced),
        Some(4.0)
    );
}

#[test]
fn a_transition_read_out_of_order_does_not_move_the_state_back() {
    let (ring, exporter, mut drain) = setup(16, breaker_sources());
    let secs = |s: u64| Timestamp::from_nanos(s * 1_000_000_000);
    // Half-open at 10 s is read before the trip at 5 s that led to it (the
    // tripping thread was preempted between its transition and its emit).
    ring.emit(Event::new(
        EventKind::BREAKER_HALF_OPENED,
        BREAKER,
        secs(10),
        [1, 1],
    ));
    ring.emit(Event::new(
        EventKind::BREAKER_OPENED,
        BREAKER,
        secs(5),
        [1 | (1 << 32), 5_000_000_000],
    ));
    drain.drain_once();
    let m = scrape(&exporter);
    assert_eq!(
        value(&m, "tenlives_breaker_state", &[("policy", "payments")]),
        Some(2.0)
    );
    // Still counted as a trip and an event.
    let trips = [("policy", "payments"), ("reason", "consecutive_failures")];
    assert_eq!(value(&m, "tenlives_breaker_trips_total", &trips), Some(1.0));
    let opened = [("policy", "payments"), ("kind", "breaker_opened")];
    assert_eq!(value(&m, "tenlives_events_total", &opened), Some(1.0));
}

#[test]
fn a_full_bulkhead_is_logged_and_exported() {
    let sources = SourceRegistry::builder()
        .bulkhead(BULKHEAD, "db", 2)
        .build()
        .unwrap();
    let (ring, exporter, mut drain) = setup(64, sources);
    let capture = Capture;
    let bulkhead = Bulkhead::with_sink(2, ring.clone(), BULKHEAD).unwrap();
    let db = |m: &[MetricFamily], name: &str| value(m, name, &[("policy", "db")]);

    let m = scrape(&exporter);
    assert_eq!(db(&m, "tenlives_bulkhead_limit"), Some(2.0)); // registered
    assert_eq!(db(&m, "tenlives_bulkhead_in_flight"), None); // nothing reported yet

    let a = bulkhead.try_acquire().unwrap();
    let b = bulkhead.try_acquire().unwrap();
    assert!(bulkhead.try_acquire().is_err()); // full
    assert!(bulkhead.try_acquire_many(3).is_err()); // more than the limit
    let (pass, logs) = capture.during(|| drain.drain_once());
    assert_eq!(pass, DrainCounts { events: 4, lost: 0 });
    let levels: Vec<Level> = logs.iter().map(|c| c.level).collect();
    assert_eq!(levels, [Level::DEBUG; 4]);
    assert_eq!(logs[1].field("in_flight"), "2");
    assert_eq!(logs[2].field("kind"), "bulkhead_rejected");
    assert_eq!(logs[2].field("reason"), "bulkhead_full");
    assert_eq!(
        (logs[2].field("in_flight"), logs[2].field("limit")),
        ("2", "2")
    );
    assert_eq!(logs[3].field("reason"), "bulkhead_over_limit");
    assert_eq!(logs[3].field("permits"), "3");

    let m = scrape(&exporter);
    assert_eq!(db(&m, "tenlives_bulkhead_in_flight"), Some(2.0));
    let rejections = |m: &[MetricFamily], reason| {
        value(
            m,
            "tenlives_rejections_total",
            &[("policy", "db"), ("reason", reason)],
        )
    };
    assert_eq!(rejections(&m, "bulkhead_full"), Some(1.0));
    assert_eq!(rejections(&m, "bulkhead_over_limit"), Some(1.0));

    // A limit change is a transition: INFO, and the gauge follows it.
    bulkhead.set_limit(3).unwrap();
    drop((a, b));
    let (_, logs) = capture.during(|| drain.drain_once());
    assert_eq!(logs[0].level, Level::INFO);
    assert_eq!(
        (logs[0].field("old_limit"), logs[0].field("new_limit")),
        ("2", "3")
    );
    assert_eq!(logs[0].field("policy_kind"), "bulkhead");
    let m = scrape(&exporter);
    assert_eq!(db(&m, "tenlives_bulkhead_limit"), Some(3.0));
    assert_eq!(db(&m, "tenlives_bulkhead_in_flight"), Some(0.0));
    for (kind, n) in [
        ("bulkhead_acquired", 2.0),
        ("bulkhead_released", 2.0),
        ("bulkhead_rejected", 2.0),
        ("bulkhead_limit_changed", 1.0),
    ] {
        let labels = [("policy", "db"), ("kind", kind)];
        assert_eq!(
            value(&m, "tenlives_events_total", &labels),
            Some(n),
            "{kind}"
        );
    }
}

#[test]
fn events_overwritten_before_a_drain_are_counted_and_logged() {
    let sources = SourceRegistry::builder()
        .bulkhead(BULKHEAD, "db", 1)
        .build()
        .unwrap();
    let (ring, exporter, mut drain) = setup(8, sources);
    let capture = Capture;
    let bulkhead = Bulkhead::with_sink(1, ring.clone(), BULKHEAD).unwrap();
    for _ in 0..10 {
        drop(bulkhead.try_acquire().unwrap()); // two events each
    }
    let (pass, logs) = capture.during(|| drain.drain_once());
    assert_eq!(
        pass,
        DrainCounts {
            events: 8,
            lost: 12
        }
    );
    let warnings: Vec<&Captured> = logs.iter().filter(|c| c.level == Level::WARN).collect();
    assert_eq!(warnings.len(), 1, "one warning per pass: {logs:?}");
    assert_eq!(
        (warnings[0].field("lost"), warnings[0].field("lost_total")),
        ("12", "12")
    );
    assert_eq!(logs.len(), 1 + 8);

    let m = scrape(&exporter);
    assert_eq!(value(&m, "tenlives_events_lost_total", &[]), Some(12.0));
    assert_eq!(events_total(&m), 8.0);

    // Losses accumulate; read + lost = emitted.
    for _ in 0..5 {
        drop(bulkhead.try_acquire().unwrap());
    }
    let (pass, logs) = capture.during(|| drain.drain_once());
    assert_eq!(pass, DrainCounts { events: 8, lost: 2 });
    let warning = logs.iter().find(|c| c.level == Level::WARN).unwrap();
    assert_eq!(
        (warning.field("lost"), warning.field("lost_total")),
        ("2", "14")
    );
    assert_eq!(exporter.lost(), 14);
    let totals = drain.totals();
    assert_eq!(totals.events + totals.lost, ring.emitted());

    // Nothing new: an empty pass logs nothing.
    let (pass, logs) = capture.during(|| drain.drain_once());
    assert_eq!(pass, DrainCounts::default());
    assert!(logs.is_empty());
}

/// A drain reads a laned ring as it reads an `EventRing`: threads emitting
/// into their own lanes, every event counted once, read or lost.
#[test]
fn a_drain_reads_a_laned_ring_written_by_several_threads() {
    const THREADS: u64 = 4;
    const ROUNDS: u64 = 10;
    let sources = SourceRegistry::builder()
        .bulkhead(BULKHEAD, "db", 8)
        .build()
        .unwrap();
    let ring = Arc::new(LaneRing::new(4, 64).unwrap());
    let exporter = Arc::new(Exporter::new(sources));
    let mut drain = Drain::new(ring.clone(), exporter.clone());
    let bulkhead = Bulkhead::with_sink(8, ring.clone(), BULKHEAD).unwrap();
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..ROUNDS {
                    drop(bulkhead.try_acquire().unwrap()); // two events each
                }
            });
        }
    });
    let emitted = THREADS * ROUNDS * 2;
    assert_eq!(ring.emitted(), emitted);
    let pass = drain.drain_once();
    assert_eq!(pass.events + pass.lost, emitted, "{pass:?}");
    // Four threads over four lanes of 64: nothing overwritten; an event is
    // lost only if two threads shared a lane and met on it.
    assert_eq!(pass.lost, ring.dropped());
    let m = scrape(&exporter);
    assert_eq!(events_total(&m), pass.events as f64);
    assert_eq!(drain.drain_once(), DrainCounts::default());
}

#[test]
fn unregistered_sources_and_application_kinds_are_labelled_by_number() {
    let (ring, exporter, mut drain) = setup(16, breaker_sources());
    let capture = Capture;
    let custom = EventKind(EventKind::USER.0 + 2);
    ring.emit(Event::new(custom, 99, Timestamp::from_nanos(7), [11, 12]));
    ring.emit(Event::new(custom, 99, Timestamp::from_nanos(8), [13, 14]));
    ring.emit(Event::new(
        EventKind::THROTTLED,
        42,
        Timestamp::from_nanos(9),
        [250_000, 80],
    ));
    let (_, logs) = capture.during(|| drain.drain_once());
    assert_eq!(logs.len(), 3);
    assert_eq!(logs[0].level, Level::DEBUG);
    for (field, want) in [
        ("policy", "source_99"),
        ("policy_kind", "unregistered"),
        ("kind", "other"),
        ("code", "32770"),
        ("payload0", "11"),
        ("payload1", "12"),
    ] {
        assert_eq!(logs[0].field(field), want, "{field}");
    }
    assert_eq!(logs[2].field("reason"), "throttled");
    assert_eq!(logs[2].field("probability_ppm"), "250000");

    let m = scrape(&exporter);
    let user = [("policy", "source_99"), ("kind", "code_32770")];
    assert_eq!(value(&m, "tenlives_events_total", &user), Some(2.0));
    let throttled = [("policy", "source_42"), ("reason", "throttled")];
    assert_eq!(
        value(&m, "tenlives_rejections_total", &throttled),
        Some(1.0)
    );
}

#[test]
fn late_sources_name_policies_registered_after_the_exporter() {
    let ring = Arc::new(EventRing::with_capacity(16).unwrap());
    let late: tenlives_tokio::telemetry::LateSources = Arc::new(|source| {
        (source == 7).then(|| {
            tenlives_tokio::telemetry::Policy::new(7, "inventory", PolicyKind::Bulkhead, Some(3))
        })
    });
    let exporter = Arc::new(Exporter::new(breaker_sources()).with_late_sources(late));
    let mut drain = Drain::new(ring.clone(), exporter.clone());
    let capture = Capture;
    let bulkhead = Bulkhead::with_sink(3, ring.clone(), 7).unwrap();
    let _held = bulkhead.try_acquire().unwrap();
    ring.emit(Event::new(
        EventKind::THROTTLED,
        8,
        Timestamp::from_nanos(9),
        [1, 1],
    ));
    let (_, logs) = capture.during(|| drain.drain_once());
    assert_eq!(logs[0].field("policy"), "inventory");
    assert_eq!(logs[0].field("policy_kind"), "bulkhead");
    assert_eq!(
        logs[1].field("policy"),
        "source_8",
        "unknown to the late sources too"
    );
    let m = scrape(&exporter);
    let inventory = [("policy", "inventory")];
    assert_eq!(value(&m, "tenlives_bulkhead_limit", &inventory), Some(3.0));
    assert_eq!(
        value(&m, "tenlives_bulkhead_in_flight", &inventory),
        Some(1.0)
    );
}

#[test]
fn label_values_are_escaped_and_read_back() {
    let name = "a \"quoted\" \\ name\nwith a newline";
    let sources = SourceRegistry::builder()
        .policy(1, name, PolicyKind::RetryBudget)
        .build()
        .unwrap();
    let (ring, exporter, mut drain) = setup(4, sources);
    ring.emit(Event::new(
        EventKind::RETRY_BUDGET_EXHAUSTED,
        1,
        Timestamp::ZERO,
        [5, 4],
    ));
    drain.drain_once();
    let m = scrape(&exporter);
    let labels = [("policy", name), ("reason", "retry_budget_exhausted")];
    assert_eq!(value(&m, "tenlives_rejections_total", &labels), Some(1.0));
}

#[test]
fn an_application_registry_keeps_its_metrics_and_prefix() {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::registry::Registry;

    let mut registry = Registry::with_prefix("shop");
    let orders: Counter = Counter::default();
    registry.register("orders", "Orders placed", orders.clone());
    orders.inc();
    let exporter = Exporter::with_registry(breaker_sources(), registry);
    let text = exporter.render_text().unwrap();
    assert!(text.contains("\nshop_orders_total 1\n"), "{text}");
    assert!(
        text.contains("# TYPE shop_tenlives_breaker_state gauge\n"),
        "{text}"
    );
    assert!(
        text.contains("\nshop_tenlives_breaker_state{policy=\"payments\"} 0\n"),
        "{text}"
    );
}
