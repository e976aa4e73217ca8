//! Persisting a registry: its policies' state saved to a real file in a
//! temporary directory and restored by a new registry on another clock (an
//! open breaker is open after the restart, a spent rate limit hands out no
//! fresh burst, a spent retry budget stays spent), atomically; a corrupted,
//! cut or foreign file is a typed error, and the start-fresh path logs it
//! as an event and restores nothing; a policy whose configuration changed
//! starts fresh, named in the report.

use std::sync::Arc;
use std::time::Duration;

use tenlives_engine::breaker::BreakerState;
use tenlives_engine::events::{Consumer, EventRing, Received, Slot};
use tenlives_engine::snapshot::SnapshotError;
use tenlives_engine::time::{Clock, ManualClock, Timestamp};
use tenlives_ops::config::FileSpec;
use tenlives_ops::{ConfigSet, PersistError, Persistence, Registry, Skipped, events};

#[derive(Clone, Default)]
struct SharedClock(Arc<ManualClock>);

impl Clock for SharedClock {
    fn now(&self) -> Timestamp {
        self.0.now()
    }
}

fn config(open: &str, budget_window: &str) -> ConfigSet {
    let spec: FileSpec = serde_json::from_value(serde_json::json!({
        "circuit_breaker": { "configs": { "default": {
            "consecutive_failures": 2, "failure_rate": "off", "open_duration": open
        } } },
        "rate_limiter": { "instances": {
            "api": { "rate": 5, "period": "1s" },
            "per_user": { "rate": 2, "period": "1s" }
        } },
        "retry_budget": { "configs": { "default": {
            "ratio": 0.1, "min_per_second": 0, "window": budget_window
        } } },
    }))
    .unwrap();
    ConfigSet::from_file_spec(&spec).unwrap()
}

fn registry(open: &str, start: Timestamp) -> (Registry, SharedClock, Arc<tenlives_ops::Ring>) {
    registry_with(open, "10s", start)
}

fn registry_with(
    open: &str,
    budget_window: &str,
    start: Timestamp,
) -> (Registry, SharedClock, Arc<tenlives_ops::Ring>) {
    let clock = SharedClock(Arc::new(ManualClock::starting_at(start)));
    let ring = Arc::new(EventRing::with_capacity(256).unwrap());
    let r = Registry::builder()
        .config(config(open, budget_window))
        .clock(clock.clone())
        .events(ring.clone())
        .build();
    (r, clock, ring)
}

/// Trips `payments`, spends `api`'s burst and most of `retries`.
fn use_it(r: &Registry, now: Timestamp) {
    let b = r.breaker("payments").unwrap();
    for _ in 0..2 {
        b.try_acquire(now).unwrap().failure(now);
    }
    assert_eq!(b.state(), BreakerState::Open);
    let api = r.rate_limiter("api").unwrap();
    while api.check(now).is_ok() {}
    let budget = r.retry_budget("retries").unwrap();
    for _ in 0..100 {
        budget.deposit(now);
    }
    for _ in 0..9 {
        assert!(budget.try_withdraw(now));
    }
    r.breaker("healthy").unwrap();
}

/// The events a consumer has not read yet, as (kind, payload).
fn kinds(c: &mut Consumer<'_, Box<[Slot]>>) -> Vec<(u16, [u64; 2])> {
    let mut out = Vec::new();
    while let Some(r) = c.try_recv() {
        if let Received::Event(e) = r {
            out.push((e.kind.0, e.payload));
        }
    }
    out
}

#[test]
fn a_restarted_registry_keeps_its_policies_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.bin");
    let start = Timestamp::from_nanos(1_000_000_000_000);
    let (old, _, _) = registry("60s", start);
    use_it(&old, start);
    assert_eq!(old.save_state(&path).unwrap(), 4);
    assert!(
        !dir.path().join("state.bin.tmp").exists(),
        "the temporary file is renamed"
    );

    // A new process: its clock starts at zero.
    let (new, _, ring) = registry("60s", Timestamp::ZERO);
    let mut seen = ring.consumer();
    let report = new.restore_state(&path).unwrap();
    assert!(!report.missing);
    assert_eq!(report.restored.len(), 4, "{report:?}");
    assert!(report.skipped.is_empty());
    let b = new.breaker("payments").unwrap();
    assert_eq!(b.state(), BreakerState::Open);
    let left = b
        .try_acquire(Timestamp::ZERO)
        .unwrap_err()
        .retry_after()
        .unwrap();
    assert!(
        left > Duration::from_secs(55) && left <= Duration::from_secs(60),
        "{left:?}"
    );
    assert_eq!(
        new.breaker("healthy").unwrap().state(),
        BreakerState::Closed
    );
    assert!(
        new.rate_limiter("api")
            .unwrap()
            .check(Timestamp::ZERO)
            .is_err(),
        "no fresh burst"
    );
    assert_eq!(
        new.retry_budget("retries")
            .unwrap()
            .remaining(Timestamp::ZERO),
        1
    );
    assert!(kinds(&mut seen).contains(&(events::STATE_RESTORED.0, [4, 0])));
}

#[test]
fn a_changed_configuration_converts_or_starts_that_policy_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.bin");
    let (old, _, _) = registry("60s", Timestamp::ZERO);
    use_it(&old, Timestamp::ZERO);
    old.save_state(&path).unwrap();
    // A shorter open duration (the breakers convert: an open one keeps the
    // deadline it opened with) and another retry-budget window (its
    // buckets do not convert: it starts fresh).
    let (new, _, _) = registry_with("30s", "20s", Timestamp::ZERO);
    let report = new.restore_state(&path).unwrap();
    assert_eq!(report.restored.len(), 3, "{report:?}");
    assert_eq!(report.skipped.len(), 1, "{report:?}");
    let (name, why) = &report.skipped[0];
    assert_eq!(name, "retry_budget/retries");
    assert!(matches!(
        why,
        Skipped::Snapshot(SnapshotError::ConfigMismatch { .. })
    ));
    let b = new.breaker("payments").unwrap();
    assert_eq!(b.state(), BreakerState::Open);
    let left = b
        .try_acquire(Timestamp::ZERO)
        .unwrap_err()
        .retry_after()
        .unwrap();
    assert!(left > Duration::from_secs(55), "{left:?}");
    assert!(
        new.rate_limiter("api")
            .unwrap()
            .check(Timestamp::ZERO)
            .is_err()
    );
    assert_eq!(
        new.retry_budget("retries")
            .unwrap()
            .remaining(Timestamp::ZERO),
        0,
        "a fresh budget with no deposits"
    );
}

#[test]
fn a_corrupted_file_is_a_typed_error_and_the_registry_starts_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.bin");
    let (old, _, _) = registry("60s", Timestamp::ZERO);
    use_it(&old, Timestamp::ZERO);
    old.save_state(&path).unwrap();
    let good = std::fs::read(&path).unwrap();

    let mut cases: Vec<Vec<u8>> = Vec::new();
    for i in [0, 5, good.len() / 2, good.len() - 1] {
        let mut b = good.clone();
        b[i] ^= 0x10;
        cases.push(b);
    }
    for cut in [0, 3, 13, good.len() / 3, good.len() - 1] {
        cases.push(good[..cut].to_vec());
    }
    cases.push(b"not a snapshot at all".to_vec());
    for bytes in cases {
        std::fs::write(&path, &bytes).unwrap();
        let (new, _, ring) = registry("60s", Timestamp::ZERO);
        let mut seen = ring.consumer();
        assert!(matches!(
            new.restore_state(&path),
            Err(PersistError::Corrupt(_))
        ));
        let report = new.restore_state_or_start_fresh(&path);
        assert!(report.restored.is_empty());
        assert!(kinds(&mut seen).contains(&(events::STATE_DISCARDED.0, [1, 0])));
        assert_eq!(
            new.breaker("payments").unwrap().state(),
            BreakerState::Closed
        );
    }
}

#[test]
fn a_missing_file_restores_nothing_and_a_save_replaces_the_file_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.bin");
    let (r, _, _) = registry("60s", Timestamp::ZERO);
    assert!(r.restore_state(&path).unwrap().missing);
    // A temporary file left by a crash mid-save is simply overwritten.
    std::fs::write(dir.path().join("state.bin.tmp"), b"half a save").unwrap();
    use_it(&r, Timestamp::ZERO);
    r.save_state(&path).unwrap();
    let first = std::fs::read(&path).unwrap();
    r.breaker("another").unwrap();
    r.save_state(&path).unwrap();
    let second = std::fs::read(&path).unwrap();
    assert!(second.len() > first.len());
    let (new, _, _) = registry("60s", Timestamp::ZERO);
    assert_eq!(new.restore_state(&path).unwrap().restored.len(), 5);
}

#[test]
fn persistence_saves_periodically_and_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.bin");
    let (r, _, ring) = registry("60s", Timestamp::ZERO);
    let mut seen = ring.consumer();
    use_it(&r, Timestamp::ZERO);
    let saver = Persistence::start(r.clone(), path.clone(), Duration::from_millis(20));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no periodic save in 30 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    r.breaker("late").unwrap();
    assert_eq!(
        saver.shutdown().unwrap(),
        5,
        "the final save has the late breaker"
    );
    let (new, _, _) = registry("60s", Timestamp::ZERO);
    assert_eq!(new.restore_state(&path).unwrap().restored.len(), 5);
    assert!(
        kinds(&mut seen)
            .iter()
            .any(|(k, _)| *k == events::STATE_SAVED.0)
    );
}

#[test]
fn string_keyed_families_are_saved_entry_by_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.bin");
    let (old, _, _) = registry("60s", Timestamp::ZERO);
    let t = Timestamp::ZERO;
    let hosts = old.keyed_breaker::<String>("upstream", 8).unwrap();
    let down = hosts.get(&"down.example".to_string(), t).unwrap();
    for _ in 0..2 {
        down.try_acquire(t).unwrap().failure(t);
    }
    hosts.get(&"up.example".to_string(), t).unwrap();
    let users = old.keyed_rate_limiter::<String>("per_user", 8).unwrap();
    let alice = users.get(&"alice".to_string(), t).unwrap();
    while alice.check(t).is_ok() {}
    // A family keyed by another type is not saved.
    let by_id = old.keyed_breaker::<u32>("by_id", 8).unwrap();
    let seven = by_id.get(&7, t).unwrap();
    for _ in 0..2 {
        seven.try_acquire(t).unwrap().failure(t);
    }
    assert_eq!(old.save_state(&path).unwrap(), 3);

    let (new, _, _) = registry("60s", Timestamp::ZERO);
    let report = new.restore_state(&path).unwrap();
    assert_eq!(report.restored.len(), 3, "{report:?}");
    assert!(
        report
            .restored
            .contains(&"circuit_breaker/upstream[down.example]".to_string())
    );
    let hosts = new.keyed_breaker::<String>("upstream", 8).unwrap();
    assert_eq!(hosts.len(), 2);
    assert_eq!(
        hosts.get(&"down.example".to_string(), t).unwrap().state(),
        BreakerState::Open
    );
    assert_eq!(
        hosts.get(&"up.example".to_string(), t).unwrap().state(),
        BreakerState::Closed
    );
    let users = new.keyed_rate_limiter::<String>("per_user", 8).unwrap();
    assert!(
        users
            .get(&"alice".to_string(), t)
            .unwrap()
            .check(t)
            .is_err(),
        "no fresh burst"
    );
    assert!(users.get(&"bob".to_string(), t).unwrap().check(t).is_ok());
    let by_id = new.keyed_breaker::<u32>("by_id", 8).unwrap();
    assert_eq!(by_id.get(&7, t).unwrap().state(), BreakerState::Closed);
}
