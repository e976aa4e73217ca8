//! Crash tests: a child process (this test binary, re-run in a child mode)
//! writes a journal, or saves a registry's state over and over, and is
//! killed with SIGKILL mid-way. Then: every journal record the child had
//! seen acknowledged (appended under `FsyncPolicy::EveryWrite`) reads back
//! intact and in order, and the journal opens and appends after the last
//! whole record; the registry's state file is always a whole snapshot that
//! restores (the old one or the new one, never a torn one).
//!
//! SIGKILL ends the process, not the machine: what the page cache held
//! survives it, so this checks the file protocol (framing, cutting, the
//! rename), not the disk's durability.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use tenlives_engine::events::{Event, EventKind};
use tenlives_engine::time::Timestamp;
use tenlives_ops::journal::{FsyncPolicy, Journal, JournalConfig, JournalItem, JournalReader};
use tenlives_ops::{ConfigSet, Registry, config::FileSpec};

const CHILD: &str = "TENLIVES_CRASH_CHILD";
const DIR: &str = "TENLIVES_CRASH_DIR";

fn event(seq: u64) -> Event {
    Event::new(
        EventKind(0x8000 + (seq % 7) as u16),
        seq as u32,
        Timestamp::from_nanos(seq * 1_000),
        [seq, !seq],
    )
}

fn config() -> JournalConfig {
    JournalConfig {
        segment_bytes: 4_096,
        fsync: FsyncPolicy::EveryWrite,
    }
}

/// Runs this binary's test `name` as a child with `mode`, reads its
/// acknowledgements (`ack <n>` lines) until `kill_after` of them, then
/// kills it with SIGKILL; returns the last acknowledged number.
fn run_child_and_kill(name: &str, mode: &str, dir: &Path, kill_after: u64) -> u64 {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, mode)
        .env(DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut last = None;
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("ack ") {
            let n: u64 = n.trim().parse().unwrap();
            last = Some(n);
            if n >= kill_after {
                break;
            }
        }
    }
    // `Child::kill` sends SIGKILL on Unix.
    child.kill().unwrap();
    child.wait().unwrap();
    last.expect("the child acknowledged nothing")
}

/// The child: appends events one by one, acknowledging each after
/// `append` returned (fsynced), until killed. Not a test of its own:
/// ignored, run only as the child of the test below.
#[test]
#[ignore = "the child process of a_killed_journal_writer_loses_no_acknowledged_record"]
fn child_journal() {
    if std::env::var(CHILD).as_deref() != Ok("journal") {
        return;
    }
    let dir = std::env::var(DIR).unwrap();
    let (mut j, report) = Journal::open(Path::new(&dir), config()).unwrap();
    let mut seq = report.next_seq;
    loop {
        assert_eq!(j.append(&event(seq)).unwrap(), seq);
        println!("ack {seq}");
        seq += 1;
    }
}

#[test]
fn a_killed_journal_writer_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged = 0;
    for round in 1..=3u64 {
        let last = run_child_and_kill(
            "child_journal",
            "journal",
            dir.path(),
            acknowledged + 150 * round,
        );
        acknowledged = last + 1;
        let items: Vec<JournalItem> = JournalReader::open(dir.path())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        // Every acknowledged record, in order, intact; beyond them at most
        // records written but not yet acknowledged, and at most a torn tail.
        let mut seq = 0;
        for item in &items {
            match item {
                JournalItem::Event { seq: s, event: e } => {
                    assert_eq!(*s, seq);
                    assert_eq!(*e, event(seq));
                    seq += 1;
                }
                JournalItem::Damaged { .. } => {}
                other => panic!("round {round}: unexpected {other:?}"),
            }
        }
        assert!(
            seq >= acknowledged,
            "round {round}: {seq} records read, {acknowledged} acknowledged"
        );
        // The next writer cuts whatever is torn and goes on after it.
        let (j, _) = Journal::open(dir.path(), config()).unwrap();
        assert_eq!(j.next_seq(), seq);
        acknowledged = seq;
    }
}

fn registry() -> Registry {
    let spec: FileSpec = serde_json::from_value(serde_json::json!({
        "circuit_breaker": { "configs": { "default": {
            "consecutive_failures": 1, "failure_rate": "off", "open_duration": "1h"
        } } },
    }))
    .unwrap();
    Registry::builder()
        .config(ConfigSet::from_file_spec(&spec).unwrap())
        .build()
}

/// The child: opens more breakers and saves the registry over and over,
/// acknowledging each save, until killed. Ignored, as `child_journal`.
#[test]
#[ignore = "the child process of a_registry_killed_while_saving_leaves_a_whole_snapshot"]
fn child_registry() {
    if std::env::var(CHILD).as_deref() != Ok("registry") {
        return;
    }
    let path = Path::new(&std::env::var(DIR).unwrap()).join("state.bin");
    let r = registry();
    for i in 0.. {
        let b = r.breaker(&format!("b{i}")).unwrap();
        let now = r.now();
        b.try_acquire(now).unwrap().failure(now);
        r.save_state(&path).unwrap();
        println!("ack {i}");
    }
}

#[test]
fn a_registry_killed_while_saving_leaves_a_whole_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let last = run_child_and_kill("child_registry", "registry", dir.path(), 60);
    let path = dir.path().join("state.bin");
    let r = registry();
    let report = r.restore_state(&path).expect("a whole snapshot");
    // The last acknowledged save at least (a later one may have landed).
    assert!(
        report.restored.len() as u64 > last,
        "{} restored, {last} acknowledged",
        report.restored.len()
    );
    assert!(report.skipped.is_empty());
    for i in 0..=last {
        let b = r.breaker(&format!("b{i}")).unwrap();
        assert_eq!(
            b.state(),
            tenlives_engine::breaker::BreakerState::Open,
            "b{i} was open when saved"
        );
    }
}

// A whole service killed mid-load and restarted from its files.
//
// The child (`child_service`) is a service in one process: a registry with
// a rate limiter (`api`: 20 a second, a burst of 50) and a breaker (`dep`),
// `Persistence` saving the registry's state every 20 ms, the registry's
// events drained into a journal, and an idempotency layer whose completed
// keys go to a journal of their own (`FsyncPolicy::EveryWrite`, responses
// kept). It offers about a thousand requests a second, each with a new
// idempotency key, and acknowledges each answer on stdout with the wall
// clock. On start it restores the state file and the completed keys, and
// first sends again the keys the parent gives it.

const ROUND: &str = "TENLIVES_CRASH_ROUND";
const DUPS: &str = "TENLIVES_CRASH_DUPS";
/// The limiter's rate (a second) and burst.
const RATE: u64 = 20;
const BURST: u64 = 50;
/// How often the child saves its registry.
const SAVE_EVERY_MS: u64 = 20;

fn service_registry(ring: std::sync::Arc<tenlives_ops::Ring>) -> Registry {
    let spec: FileSpec = serde_json::from_value(serde_json::json!({
        "circuit_breaker": { "configs": { "default": {
            "consecutive_failures": 1, "failure_rate": "off", "open_duration": "1h"
        } } },
        "rate_limiter": { "instances": {
            "api": { "rate": RATE, "period": "1s", "burst": BURST }
        } },
    }))
    .unwrap();
    Registry::builder()
        .config(ConfigSet::from_file_spec(&spec).unwrap())
        .events(ring)
        .build()
}

fn wall_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The service's handler: admitted by the rate limiter or not.
#[derive(Clone)]
struct Handler {
    registry: Registry,
    limiter: std::sync::Arc<tenlives_ops::Limiter>,
    round: u32,
}

impl tower::Service<String> for Handler {
    type Response = String;
    type Error = String;
    type Future = std::future::Ready<Result<String, String>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), String>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: String) -> Self::Future {
        let answer = match self.limiter.check(self.registry.now()) {
            Ok(()) => format!("admitted-by-round-{}", self.round),
            Err(_) => "limited".to_string(),
        };
        std::future::ready(Ok(answer))
    }
}

fn completions_config() -> JournalConfig {
    JournalConfig {
        segment_bytes: 1 << 20,
        fsync: FsyncPolicy::EveryWrite,
    }
}

/// The child: the service, until killed. Ignored, as `child_journal`.
#[test]
#[ignore = "the child process of a_service_killed_mid_load_restarts_within_its_promises"]
fn child_service() {
    use std::sync::Arc;
    use std::time::{Duration, Instant, SystemTime};
    use tenlives_engine::events::EventRing;
    use tenlives_ops::Persistence;
    use tenlives_ops::journal::{CompletionJournal, JournalDrain, read_completions};
    use tenlives_tokio::{IdempotencyConfig, IdempotencyLayer};
    use tower::{Layer, ServiceExt};

    if std::env::var(CHILD).as_deref() != Ok("service") {
        return;
    }
    let started = Instant::now();
    let dir = std::path::PathBuf::from(std::env::var(DIR).unwrap());
    let round: u32 = std::env::var(ROUND).unwrap().parse().unwrap();
    let ttl = Duration::from_secs(3600);

    let ring = Arc::new(EventRing::with_capacity(4096).unwrap());
    let registry = service_registry(ring.clone());
    let state = dir.join("state.bin");
    let restored = registry.restore_state_or_start_fresh(&state);
    let events_config = JournalConfig {
        segment_bytes: 1 << 20,
        fsync: FsyncPolicy::Interval(Duration::from_millis(20)),
    };
    let (events, _) = Journal::open(&dir.join("events"), events_config).unwrap();
    let _drain = JournalDrain::spawn(ring, events, Duration::from_millis(10)).unwrap();
    let breaker = registry.breaker("dep").unwrap();
    let limiter = registry.rate_limiter("api").unwrap();
    let _persistence = Persistence::start(
        registry.clone(),
        state,
        Duration::from_millis(SAVE_EVERY_MS),
    );
    println!(
        "start restored={} breaker={:?}",
        restored.restored.len(),
        breaker.state()
    );
    if round == 1 {
        let now = registry.now();
        breaker.try_acquire(now).unwrap().failure(now);
        println!("opened {:?}", breaker.state());
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async move {
        let handler = Handler {
            registry: registry.clone(),
            limiter,
            round,
        };
        let svc = IdempotencyLayer::new(
            |k: &String| Some(k.clone()),
            IdempotencyConfig::new(ttl, 100_000, 1_000)
                .store_if(|r: &String| r.starts_with("admitted")),
        )
        .layer(handler);
        let idem = dir.join("idempotency");
        let done = read_completions(
            &idem,
            ttl,
            SystemTime::now(),
            |k| String::from_utf8(k.to_vec()).ok(),
            |r| String::from_utf8(r.to_vec()).ok(),
        )
        .unwrap();
        svc.restore(done, SystemTime::now());
        let (journal, _) = Journal::open(&idem, completions_config()).unwrap();
        let log = CompletionJournal::new(journal, |k: &String| k.as_bytes().to_vec())
            .keep_responses(|r: &String| r.as_bytes().to_vec());
        assert!(svc.set_completion_log(Arc::new(log)).is_ok());
        println!("ready {}", started.elapsed().as_micros());

        let dups = std::env::var(DUPS).unwrap_or_default();
        for key in dups.split(',').filter(|k| !k.is_empty()) {
            let answer = svc.clone().oneshot(key.to_string()).await;
            println!("dup {key} {answer:?}");
        }
        for i in 0u64.. {
            let key = format!("r{round}-{i}");
            let answer = svc.clone().oneshot(key.clone()).await.unwrap();
            println!("ack {i} {key} {answer} {}", wall_nanos());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
}

/// What a service child said before it was killed.
struct Run {
    /// (key, answer, wall-clock ns) of every acknowledged request.
    acks: Vec<(String, String, u128)>,
    /// The lines before the first acknowledgement.
    start: Vec<String>,
    /// From the spawn to the first acknowledged request.
    first_ack: std::time::Duration,
}

/// Runs the service child for `round`, sending `dups` again first, and
/// kills it with SIGKILL after `kill_after` acknowledgements.
fn run_service(dir: &Path, round: u32, dups: &[String], kill_after: usize) -> Run {
    let spawned = std::time::Instant::now();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_service",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "service")
        .env(DIR, dir)
        .env(ROUND, round.to_string())
        .env(DUPS, dups.join(","))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut run = Run {
        acks: Vec::new(),
        start: Vec::new(),
        first_ack: std::time::Duration::ZERO,
    };
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("ack ") {
            if run.acks.is_empty() {
                run.first_ack = spawned.elapsed();
            }
            let f: Vec<&str> = rest.split(' ').collect();
            run.acks
                .push((f[1].to_string(), f[2].to_string(), f[3].parse().unwrap()));
            if run.acks.len() >= kill_after {
                break;
            }
        } else if run.acks.is_empty() {
            run.start.push(line);
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        run.acks.len() >= kill_after,
        "the child (round {round}) ended early: {:?}",
        run.start
    );
    run
}

/// The promises of issue 23 across a SIGKILL, with the slack stated: the
/// limiter's booking is saved every `SAVE_EVERY_MS`, so the admissions
/// after the last save before the kill are not in the state file and the
/// restarted limiter may admit as many again. At `RATE` a second that is
/// `RATE × (SAVE_EVERY_MS + 250 ms of scheduling delay on a busy machine)`
/// rounded down, plus two for the edges: 7. (A restarted limiter with a
/// fresh burst admits about `BURST` = 50 too many: skipping the restore
/// fails the test with 125 admitted for a quota of 76.)
const QUOTA_SLACK: u64 = RATE * (SAVE_EVERY_MS + 250) / 1000 + 2;

#[test]
fn a_service_killed_mid_load_restarts_within_its_promises() {
    let dir = tempfile::tempdir().unwrap();
    let first = run_service(dir.path(), 1, &[], 400);
    assert!(
        first.start.iter().any(|l| l == "opened Open"),
        "{:?}",
        first.start
    );
    let admitted_before: Vec<&(String, String, u128)> = first
        .acks
        .iter()
        .filter(|a| a.1.starts_with("admitted"))
        .collect();
    assert!(admitted_before.len() as u64 >= BURST);

    // No acknowledged completion lost: every admitted key is in the
    // completions journal, intact.
    let found = tenlives_ops::journal::read_completions(
        &dir.path().join("idempotency"),
        std::time::Duration::from_secs(3600),
        std::time::SystemTime::now(),
        |k| String::from_utf8(k.to_vec()).ok(),
        |r| String::from_utf8(r.to_vec()).ok(),
    )
    .unwrap();
    for (key, answer, _) in &admitted_before {
        assert!(
            found
                .iter()
                .any(|c| &c.key == key && c.response.as_deref() == Some(answer.as_str())),
            "{key} was acknowledged but is not in the journal"
        );
    }

    // The restart: the duplicates of every admitted request first.
    let dups: Vec<String> = admitted_before.iter().map(|a| a.0.clone()).collect();
    let second = run_service(dir.path(), 2, &dups, 200);
    println!(
        "restart: first request served {:?} after the spawn; {}",
        second.first_ack,
        second
            .start
            .iter()
            .find(|l| l.starts_with("ready"))
            .map_or("no ready line", |l| l.as_str())
    );
    let started = second.start.iter().find(|l| l.contains("start restored="));
    assert!(
        started.is_some_and(|l| l.ends_with("breaker=Open")),
        "the breaker open before the crash is open after it: {started:?}"
    );
    for key in &dups {
        let want = format!("dup {key} Ok(\"admitted-by-round-1\")");
        assert!(
            second.start.contains(&want),
            "the duplicate of {key} was not answered from round 1: {:?}",
            second
                .start
                .iter()
                .find(|l| l.starts_with(&format!("dup {key} ")))
        );
    }

    // The quota across the restart: from the first admission to the last,
    // at most the burst plus the rate over the time between (plus one for
    // the edges) plus the stated slack.
    let admitted: Vec<u128> = first
        .acks
        .iter()
        .chain(&second.acks)
        .filter(|a| a.1.starts_with("admitted"))
        .map(|a| a.2)
        .collect();
    let span_ns = admitted.last().unwrap() - admitted.first().unwrap();
    let quota = BURST + (span_ns * RATE as u128 / 1_000_000_000) as u64 + 1;
    let n = admitted.len() as u64;
    println!(
        "quota: {n} admitted over {:.3} s, quota {quota}, slack {QUOTA_SLACK}",
        span_ns as f64 / 1e9
    );
    assert!(
        n <= quota + QUOTA_SLACK,
        "{n} admitted over {span_ns} ns: quota {quota} + slack {QUOTA_SLACK}"
    );
    // And the limiter did admit after the restart (the test is not
    // vacuous: round 2 ran long enough to be admitted again).
    assert!(second.acks.iter().any(|a| a.1 == "admitted-by-round-2"));

    // The events journal: whole records, at most a torn tail, and the
    // breaker's opening in it.
    let items: Vec<JournalItem> = JournalReader::open(&dir.path().join("events"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let opened = items.iter().any(|i| {
        matches!(i, JournalItem::Event { event, .. }
            if event.kind == tenlives_engine::events::EventKind::BREAKER_OPENED)
    });
    assert!(opened, "no BREAKER_OPENED in the events journal");
    for (i, item) in items.iter().enumerate() {
        if let JournalItem::Damaged { .. } | JournalItem::Missing { .. } = item {
            // Only a torn tail of a segment the restarted writer then cut
            // and went on after: never in the middle of what it reads.
            assert!(
                matches!(item, JournalItem::Damaged { .. }) && i + 1 == items.len(),
                "{item:?} at {i} of {}",
                items.len()
            );
        }
    }
}
