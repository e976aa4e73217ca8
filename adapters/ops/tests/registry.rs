//! The registry: one instance per name under racing first use, names as
//! telemetry sources, keyed families whose eviction drops only idle entries.
#![cfg(feature = "yaml")]

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use tenlives_engine::breaker::BreakerState;
use tenlives_engine::events::{EventRing, LaneRing};
use tenlives_engine::time::{Clock, ManualClock, Timestamp};
use tenlives_ops::config::Format;
use tenlives_ops::{ConfigSet, KeyedFull, Registry, RegistryError};
use tenlives_tokio::telemetry::{Drain, Exporter, PolicyKind};

#[derive(Clone, Default)]
struct SharedClock(Arc<ManualClock>);

impl Clock for SharedClock {
    fn now(&self) -> Timestamp {
        self.0.now()
    }
}

const CONFIG: &str = "\
circuit_breaker:
  configs:
    default: { consecutive_failures: 2, failure_rate: off, open_duration: 10s }
  instances:
    \"upstream:slow.example\": { consecutive_failures: 7 }
rate_limiter:
  instances:
    api: { rate: 5, period: 1s }
    per_host: { rate: 2, period: 1s }
bulkhead:
  instances:
    db: { limit: 4 }
    per_host: { limit: 1 }
";

fn registry(clock: &SharedClock) -> Registry {
    Registry::builder()
        .config(ConfigSet::from_str("test.yaml", CONFIG, Format::Yaml).unwrap())
        .clock(clock.clone())
        .build()
}

/// Releases `n` threads together, spinning (a condvar wakes them too far
/// apart to race).
struct SpinBarrier {
    n: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    fn new(n: usize) -> Self {
        SpinBarrier {
            n,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    fn wait(&self) {
        let generation = self.generation.load(SeqCst);
        if self.arrived.fetch_add(1, SeqCst) + 1 == self.n {
            self.arrived.store(0, SeqCst);
            self.generation.fetch_add(1, SeqCst);
        } else {
            let mut spins = 0u32;
            while self.generation.load(SeqCst) == generation {
                spins += 1;
                if spins.is_multiple_of(64) {
                    // On a loaded machine the other thread may not be running.
                    thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
        }
    }
}

#[test]
fn racing_first_calls_create_exactly_one_instance() {
    // Threads released together ask for each of 1000 names, so that first
    // uses overlap many times.
    const NAMES: usize = 1000;
    let registry = registry(&SharedClock::default());
    let threads = 2;
    let barrier = Arc::new(SpinBarrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (registry, barrier) = (registry.clone(), barrier.clone());
            thread::spawn(move || {
                let names: Vec<String> = (0..NAMES).map(|i| format!("p{i}")).collect();
                let families: Vec<String> = (0..NAMES).map(|i| format!("k{i}")).collect();
                let mut got = Vec::new();
                for i in 0..NAMES {
                    barrier.wait();
                    got.push((
                        registry.breaker(&names[i]).unwrap(),
                        registry.throttle(&names[i]).unwrap(),
                        registry.keyed_breaker::<String>(&families[i], 10).unwrap(),
                    ));
                }
                got
            })
        })
        .collect();
    let got: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (i, (b, t, k)) in got[1].iter().enumerate() {
        assert!(Arc::ptr_eq(b, &got[0][i].0), "two breakers p{i}");
        assert!(Arc::ptr_eq(t, &got[0][i].1), "two throttles p{i}");
        assert!(Arc::ptr_eq(k, &got[0][i].2), "two families k{i}");
    }
    // The registry, then one source per instance and family.
    assert_eq!(registry.sources().unwrap().len(), 1 + 3 * NAMES);
}

#[test]
fn racing_first_calls_on_one_key_create_one_entry() {
    let clock = SharedClock::default();
    let registry = registry(&clock);
    let family = registry.keyed_bulkhead::<String>("per_host", 8).unwrap();
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (family, barrier, clock) = (family.clone(), barrier.clone(), clock.clone());
            thread::spawn(move || {
                barrier.wait();
                family.get(&"a.example".to_owned(), clock.now()).unwrap()
            })
        })
        .collect();
    let got: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(got.iter().all(|b| Arc::ptr_eq(b, &got[0])));
    assert_eq!(family.len(), 1);
}

#[test]
fn instances_are_configured_from_their_entry_or_the_default() {
    let clock = SharedClock::default();
    let registry = registry(&clock);
    assert_eq!(registry.bulkhead("db").unwrap().limit(), 4);
    assert_eq!(registry.rate_limiter("api").unwrap().quota().rate(), 5);
    assert_eq!(
        registry
            .breaker("anything")
            .unwrap()
            .config()
            .consecutive_failures(),
        Some(2)
    );
    assert_eq!(
        registry.rate_limiter("nowhere").unwrap_err(),
        RegistryError::NotConfigured {
            section: "rate_limiter",
            name: "nowhere".into()
        }
    );
    assert!(registry.bulkhead("nowhere").is_err());
    // A keyed entry takes `family:key` when the file has it.
    let upstream = registry.keyed_breaker::<String>("upstream", 4).unwrap();
    let slow = upstream.get(&"slow.example".into(), clock.now()).unwrap();
    let fast = upstream.get(&"fast.example".into(), clock.now()).unwrap();
    assert_eq!(slow.config().consecutive_failures(), Some(7));
    assert_eq!(fast.config().consecutive_failures(), Some(2));
    // Another key type under the same family name is refused.
    assert_eq!(
        registry.keyed_breaker::<u32>("upstream", 4).unwrap_err(),
        RegistryError::KeyType {
            family: "upstream".into()
        }
    );
    assert_eq!(
        registry.keyed_breaker::<u32>("other", 0).unwrap_err(),
        RegistryError::ZeroCapacity
    );
    // One name, one kind: a family cannot take a named breaker's name.
    registry.breaker("payments").unwrap();
    assert_eq!(
        registry.keyed_breaker::<u32>("payments", 4).unwrap_err(),
        RegistryError::NameTaken {
            name: "payments".into()
        }
    );
    // Another kind's name is free: the bulkhead `db` exists.
    assert!(registry.breaker("db").is_ok());
}

/// A registry reporting to a laned ring: policies used from several
/// threads, each thread writing its own lane; a drain reads every event
/// once (nothing is overwritten in lanes of 256) and labels it by name.
#[test]
fn a_registry_reports_to_a_laned_ring_from_several_threads() {
    const THREADS: usize = 4;
    const ROUNDS: usize = 25;
    let clock = SharedClock::default();
    let ring = Arc::new(LaneRing::new(4, 256).unwrap());
    let registry = Registry::builder()
        .config(ConfigSet::from_str("test.yaml", CONFIG, Format::Yaml).unwrap())
        .clock(clock.clone())
        .events(ring.clone())
        .build();
    let db = registry.bulkhead("db").unwrap();
    let exporter = Arc::new(Exporter::new(registry.sources().unwrap()));
    let mut drain = Drain::new(ring.clone(), exporter.clone());
    thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..ROUNDS {
                    // Four permits for four threads: never refused.
                    drop(db.try_acquire().unwrap()); // acquired, released
                }
            });
        }
    });
    let emitted = (THREADS * ROUNDS * 2) as u64;
    assert_eq!(ring.emitted(), emitted);
    let pass = drain.drain_once();
    assert_eq!(pass.events + pass.lost, emitted);
    assert_eq!(pass.lost, ring.dropped());
    // Every event read is labelled with its policy's name. (Events are lost
    // only when two threads share a home lane and meet on it: rare.)
    let text = exporter.render_text().unwrap();
    let read: u64 = text
        .lines()
        .filter(|l| l.starts_with("tenlives_events_total{") && l.contains("policy=\"db\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(read, pass.events, "{text}");
}

#[test]
fn names_become_sources_and_metric_labels() {
    let clock = SharedClock::default();
    let ring = Arc::new(EventRing::with_capacity(256).unwrap());
    let registry = Registry::builder()
        .config(ConfigSet::from_str("test.yaml", CONFIG, Format::Yaml).unwrap())
        .clock(clock.clone())
        .events(ring.clone())
        .build();
    let payments = registry.breaker("payments").unwrap();
    let db = registry.bulkhead("db").unwrap();
    let sources = registry.sources().unwrap();
    let names: Vec<(&str, PolicyKind)> = sources
        .policies()
        .iter()
        .map(|p| (p.name(), p.kind()))
        .collect();
    assert_eq!(
        names,
        [
            ("registry", PolicyKind::Other),
            ("payments", PolicyKind::CircuitBreaker),
            ("db", PolicyKind::Bulkhead)
        ]
    );
    let exporter = Arc::new(Exporter::new(sources));
    let mut drain = Drain::new(ring, exporter.clone());
    for _ in 0..2 {
        payments
            .try_acquire(clock.now())
            .unwrap()
            .failure(clock.now());
    }
    let _held = db.try_acquire().unwrap();
    drain.drain_once();
    let text = exporter.render_text().unwrap();
    assert!(
        text.contains("tenlives_breaker_state{policy=\"payments\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tenlives_bulkhead_limit{policy=\"db\"} 4"),
        "{text}"
    );
}

#[test]
fn eviction_drops_only_idle_entries() {
    let clock = SharedClock::default();
    let registry = registry(&clock);
    let hosts = registry
        .keyed_bulkhead::<&'static str>("per_host", 2)
        .unwrap();
    let now = clock.now();
    // `a` is busy: a permit in flight through a held handle.
    let a = hosts.get(&"a", now).unwrap();
    let permit = a.try_acquire().unwrap();
    // `b` is busy too, through a raw permit whose handle was dropped.
    let raw = hosts.get(&"b", now).unwrap().try_acquire_raw().unwrap();
    // Full, nothing idle: refused, and both stay.
    assert_eq!(
        hosts.get(&"c", now).unwrap_err(),
        KeyedFull {
            family: "per_host".into(),
            capacity: 2
        }
    );
    assert!(hosts.contains(&"a") && hosts.contains(&"b"));
    // `b` done: it is the one evicted to make room for `c`; `a` stays.
    hosts.get(&"b", now).unwrap().release(raw);
    hosts.get(&"c", now).unwrap();
    assert!(hosts.contains(&"a") && hosts.contains(&"c") && !hosts.contains(&"b"));
    assert_eq!(a.in_flight(), 1, "the busy entry kept its permit");
    assert!(Arc::ptr_eq(&a, &hosts.get(&"a", now).unwrap()));
    drop(permit);
    drop(a);
    // Now both idle: the least recently used goes (`c`: `a` was just used).
    hosts.get(&"d", now).unwrap();
    assert!(hosts.contains(&"a") && hosts.contains(&"d") && !hosts.contains(&"c"));
}

#[test]
fn an_open_breaker_and_a_spent_limiter_are_not_idle() {
    let clock = SharedClock::default();
    let registry = registry(&clock);
    let breakers = registry.keyed_breaker::<u32>("upstream", 1).unwrap();
    let b = breakers.get(&1, clock.now()).unwrap();
    for _ in 0..2 {
        b.try_acquire(clock.now()).unwrap().failure(clock.now());
    }
    assert_eq!(b.state(), BreakerState::Open);
    drop(b);
    assert!(
        breakers.get(&2, clock.now()).is_err(),
        "an open breaker was evicted"
    );
    breakers.get(&1, clock.now()).unwrap().reset(clock.now());
    assert!(breakers.get(&2, clock.now()).is_ok());

    let limiters = registry.keyed_rate_limiter::<u32>("per_host", 1).unwrap();
    limiters
        .get(&1, clock.now())
        .unwrap()
        .check(clock.now())
        .unwrap();
    assert!(
        limiters.get(&2, clock.now()).is_err(),
        "a spent limiter was evicted"
    );
    clock.0.advance(Duration::from_secs(1)); // refilled: like a fresh one
    assert!(limiters.get(&2, clock.now()).is_ok());
}

#[test]
fn busy_entries_survive_churn_from_many_threads() {
    // Threads churn through keys while one key stays busy throughout; at no
    // point may the busy entry be replaced by a fresh one.
    let clock = SharedClock::default();
    let registry = registry(&clock);
    let hosts = registry.keyed_bulkhead::<u32>("per_host", 4).unwrap();
    let busy = hosts.get(&0, clock.now()).unwrap();
    let _permit = busy.try_acquire().unwrap();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let (hosts, clock, busy) = (hosts.clone(), clock.clone(), busy.clone());
            thread::spawn(move || {
                for i in 0..2_000u32 {
                    let key = 1 + (t * 10_000 + i) % 50;
                    if let Ok(h) = hosts.get(&key, clock.now())
                        && let Ok(p) = h.try_acquire()
                    {
                        drop(p);
                    }
                    let same = hosts.get(&0, clock.now()).unwrap();
                    assert!(Arc::ptr_eq(&same, &busy), "the busy entry was evicted");
                    assert!(hosts.len() <= 4);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(busy.in_flight(), 1);
}

#[test]
fn apply_reconfigures_named_and_keyed_instances_in_place() {
    let clock = SharedClock::default();
    let registry = registry(&clock);
    let named = registry.breaker("payments").unwrap();
    let family = registry.keyed_breaker::<String>("upstream", 8).unwrap();
    let slow = family.get(&"slow.example".into(), clock.now()).unwrap();
    let fast = family.get(&"fast.example".into(), clock.now()).unwrap();
    // Open the fast host's breaker: the reload must keep it open.
    for _ in 0..2 {
        fast.try_acquire(clock.now()).unwrap().failure(clock.now());
    }
    assert_eq!(fast.state(), BreakerState::Open);
    let next = CONFIG
        .replace("consecutive_failures: 2,", "consecutive_failures: 3,")
        .replace("{ consecutive_failures: 7 }", "{ consecutive_failures: 8 }");
    let report = registry.apply(ConfigSet::from_str("next.yaml", &next, Format::Yaml).unwrap());
    assert_eq!(
        report.changed,
        [
            "circuit_breaker.payments",
            "circuit_breaker.upstream:fast.example",
            "circuit_breaker.upstream:slow.example"
        ]
    );
    assert_eq!(named.config().consecutive_failures(), Some(3));
    assert_eq!(fast.config().consecutive_failures(), Some(3));
    assert_eq!(slow.config().consecutive_failures(), Some(8));
    assert_eq!(
        fast.state(),
        BreakerState::Open,
        "the reload closed a breaker"
    );
    assert!(Arc::ptr_eq(
        &fast,
        &family.get(&"fast.example".into(), clock.now()).unwrap()
    ));
    // Applying the same configuration again changes nothing.
    let again = registry.apply(ConfigSet::from_str("next.yaml", &next, Format::Yaml).unwrap());
    assert!(again.changed.is_empty(), "{again:?}");
    // An instance whose entry and default disappear keeps its configuration.
    let db = registry.bulkhead("db").unwrap();
    let report = registry.apply(ConfigSet::from_str("empty.yaml", "{}", Format::Yaml).unwrap());
    assert!(
        report.kept.contains(&"bulkhead.db".to_owned()),
        "{report:?}"
    );
    assert_eq!(db.limit(), 4);
}

#[tokio::test]
async fn registry_policies_go_straight_into_tower_layers() {
    use tenlives_tokio::{AdmissionLayer, TenlivesError};
    use tower::{Layer, ServiceExt, service_fn};
    let registry = registry(&SharedClock::default());
    let breaker = registry.breaker("payments").unwrap();
    let svc = AdmissionLayer::new((breaker.clone(), registry.bulkhead("db").unwrap())).layer(
        service_fn(|fail: bool| async move { if fail { Err("down") } else { Ok(()) } }),
    );
    for _ in 0..2 {
        assert!(matches!(
            svc.clone().oneshot(true).await,
            Err(TenlivesError::Inner("down"))
        ));
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    assert!(matches!(
        svc.clone().oneshot(false).await,
        Err(TenlivesError::Rejected(_))
    ));
}

#[test]
fn a_refused_configuration_is_logged_as_a_warning_with_its_reason() {
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<String>>>);
    struct Text<'a>(&'a mut String);
    impl tracing::field::Visit for Text<'_> {
        fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
            self.0.push_str(&format!("{}={v:?} ", f.name()));
        }
    }
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Lines {
        fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            let mut line = format!("{} {} ", e.metadata().level(), e.metadata().target());
            e.record(&mut Text(&mut line));
            self.0.lock().unwrap().push(line);
        }
    }

    // Through the test binary's one global subscriber, capturing this
    // thread (where `reject` logs), not a scoped one: see
    // `tenlives_test_support::tracing_capture` for the events those lose.
    let lines = Lines::default();
    let _capture = tenlives_test_support::tracing_capture::capture(lines.clone());
    let registry = registry(&SharedClock::default());
    let e = ConfigSet::from_str(
        "p.yaml",
        "bulkhead:\n  instances:\n    db: { limit: 0 }\n",
        Format::Yaml,
    )
    .unwrap_err();
    registry.reject(&e);
    let lines = lines.0.lock().unwrap();
    assert_eq!(lines.len(), 1);
    assert!(lines[0].starts_with("WARN tenlives::ops "), "{}", lines[0]);
    assert!(
        lines[0].contains("p.yaml:3: bulkhead.instances.db.limit: `limit` must be at least 1"),
        "{}",
        lines[0]
    );
}

#[test]
fn a_keyed_family_whose_entry_a_reload_removed_still_makes_entries() {
    let clock = SharedClock::default();
    let registry = registry(&clock);
    let hosts = registry.keyed_bulkhead::<u32>("per_host", 8).unwrap();
    assert_eq!(hosts.get(&1, clock.now()).unwrap().limit(), 1);
    // The new file has no bulkhead section at all.
    registry.apply(ConfigSet::from_str("next.yaml", "{}", Format::Yaml).unwrap());
    // A new key takes the configuration the family was created with.
    assert_eq!(hosts.get(&2, clock.now()).unwrap().limit(), 1);
    // A family needs its own entry or a default: a `family:key` entry alone
    // does not configure the other keys.
    let only_keys = "bulkhead:\n  instances:\n    \"edge:a\": { limit: 3 }\n";
    registry.apply(ConfigSet::from_str("keys.yaml", only_keys, Format::Yaml).unwrap());
    assert_eq!(
        registry.keyed_bulkhead::<u32>("edge", 8).unwrap_err(),
        RegistryError::NotConfigured {
            section: "bulkhead",
            name: "edge".into()
        }
    );
}

#[test]
fn a_keyed_family_kept_after_its_registry_is_gone_still_makes_entries() {
    let clock = SharedClock::default();
    // The registry is a temporary, dropped at the end of the statement.
    let orphan = registry(&clock)
        .keyed_breaker::<u32>("upstream", 2)
        .unwrap();
    let entry = orphan.get(&1, clock.now()).unwrap();
    assert_eq!(entry.config().consecutive_failures(), Some(2));
}

#[test]
fn create_configured_makes_every_listed_instance_before_the_exporter_is_built() {
    let clock = SharedClock::default();
    let registry = registry(&clock);
    // `per_host` serves keyed families here: created first, it is skipped.
    registry.keyed_bulkhead::<u32>("per_host", 4).unwrap();
    let created = registry.create_configured().unwrap();
    assert_eq!(
        created,
        ["rate_limiter.api", "rate_limiter.per_host", "bulkhead.db"]
    );
    assert!(
        registry.create_configured().unwrap().is_empty(),
        "created twice"
    );
    let names: Vec<String> = registry
        .sources()
        .unwrap()
        .policies()
        .iter()
        .map(|p| format!("{}:{}", p.kind(), p.name()))
        .collect();
    assert_eq!(
        names,
        [
            "other:registry",
            "bulkhead:per_host",
            "other:api",
            "other:per_host",
            "bulkhead:db"
        ]
    );
}

#[test]
fn adaptive_limits_are_created_and_reconfigured_in_place() {
    let clock = SharedClock::default();
    let text = "bulkhead:\n  configs:\n    default: { limit: 4 }\n\
                adaptive_limit:\n  instances:\n    search: { min_limit: 2, initial_limit: 20, max_limit: 50, window: 100ms }\n";
    let registry = Registry::builder()
        .config(ConfigSet::from_str("a.yaml", text, Format::Yaml).unwrap())
        .clock(clock.clone())
        .build();
    let search = registry.adaptive_limit("search").unwrap();
    assert_eq!(search.limit(), 20);
    let permit = search.try_acquire(clock.now()).unwrap();
    // New bounds: the limit moves into them (the new initial limit is for
    // new limiters), the permit in flight stays.
    let report = registry.apply(
        ConfigSet::from_str(
            "a.yaml",
            &text.replace(
                "initial_limit: 20, max_limit: 50",
                "initial_limit: 5, max_limit: 8",
            ),
            Format::Yaml,
        )
        .unwrap(),
    );
    assert_eq!(report.changed, ["adaptive_limit.search"]);
    assert_eq!(search.limit(), 8);
    assert_eq!(search.in_flight(), 1);
    permit.success(clock.now());
    // Its metrics are a bulkhead's: one name serves one of the two.
    assert_eq!(
        registry.bulkhead("search").unwrap_err(),
        RegistryError::NameTaken {
            name: "search".into()
        }
    );
    let view = registry.policy("adaptive_limit", "search").unwrap();
    assert_eq!(view["state"]["limit"], 8);
    assert_eq!(view["config"]["max_limit"], 8);
}

#[test]
fn instances_created_after_the_exporter_are_labelled_by_name() {
    let clock = SharedClock::default();
    let ring = Arc::new(EventRing::with_capacity(256).unwrap());
    let registry = Registry::builder()
        .config(ConfigSet::from_str("test.yaml", CONFIG, Format::Yaml).unwrap())
        .clock(clock.clone())
        .events(ring.clone())
        .build();
    // The exporter first, the instances on first use afterwards.
    let exporter = Arc::new(
        Exporter::new(registry.sources().unwrap()).with_late_sources(registry.late_sources()),
    );
    let mut drain = Drain::new(ring, exporter.clone());
    let late = registry.breaker("late").unwrap();
    for _ in 0..2 {
        late.try_acquire(clock.now()).unwrap().failure(clock.now());
    }
    let db = registry.bulkhead("db").unwrap();
    let _held = db.try_acquire().unwrap();
    drain.drain_once();
    let text = exporter.render_text().unwrap();
    assert!(
        text.contains("tenlives_breaker_state{policy=\"late\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "tenlives_breaker_trips_total{policy=\"late\",reason=\"consecutive_failures\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("tenlives_bulkhead_limit{policy=\"db\"} 4"),
        "{text}"
    );
    assert!(!text.contains("source_"), "{text}");
}
