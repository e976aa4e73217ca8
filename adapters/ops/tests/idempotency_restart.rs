//! Idempotency keys across a restart, on real journal files: a process
//! completes keyed requests with a `CompletionJournal` as its completion
//! log, "restarts" (the service and the journal are dropped, a new service
//! is restored from the files), and its duplicates are answered from the
//! kept response or refused; entries past the TTL are not restored; a torn
//! journal tail costs only the record it tore.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use std::task::{Context, Poll};
use tenlives_ops::journal::{
    CompletionJournal, FsyncPolicy, Journal, JournalConfig, JournalItem, JournalReader,
    read_completions,
};
use tenlives_tokio::idempotency::{CompletionLog, IdempotencyService};
use tenlives_tokio::{IdempotencyConfig, IdempotencyError, IdempotencyLayer};
use tower::{Layer, Service, ServiceExt};

type Req = (Option<String>, u32);
type Svc = IdempotencyService<Upstream, fn(&Req) -> Option<String>, String, Req>;

const TTL: Duration = Duration::from_secs(3600);

/// The upstream: charges, numbering its calls.
#[derive(Clone)]
struct Upstream(Arc<AtomicUsize>);

impl Service<Req> for Upstream {
    type Response = String;
    type Error = String;
    type Future = std::future::Ready<Result<String, String>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), String>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (_, amount): Req) -> Self::Future {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        std::future::ready(Ok(format!("charge #{n}: {amount}")))
    }
}

fn key_of(r: &Req) -> Option<String> {
    r.0.clone()
}

/// A fresh service (a new process): its upstream counts its calls.
fn service(ttl: Duration) -> (Svc, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = IdempotencyLayer::new(
        key_of as fn(&Req) -> Option<String>,
        IdempotencyConfig::new(ttl, 1_000, 100),
    )
    .layer(Upstream(Arc::clone(&calls)));
    (svc, calls)
}

fn config() -> JournalConfig {
    JournalConfig {
        segment_bytes: 1 << 20,
        fsync: FsyncPolicy::EveryWrite,
    }
}

/// Starts a process: restores from the journal in `dir`, then logs every
/// completion to it (responses kept when `keep`).
fn start(dir: &Path, ttl: Duration, keep: bool, now: SystemTime) -> (Svc, Arc<AtomicUsize>, usize) {
    let (svc, calls) = service(ttl);
    let restored = read_completions(
        dir,
        ttl,
        now,
        |k| String::from_utf8(k.to_vec()).ok(),
        |r| String::from_utf8(r.to_vec()).ok(),
    )
    .unwrap();
    let n = svc.restore(restored, now);
    let (journal, _) = Journal::open(dir, config()).unwrap();
    let log = CompletionJournal::new(journal, |k: &String| k.as_bytes().to_vec());
    let log = if keep {
        log.keep_responses(|r: &String| r.as_bytes().to_vec())
    } else {
        log
    };
    let log: Arc<dyn CompletionLog<String, String>> = Arc::new(log);
    assert!(svc.set_completion_log(log).is_ok());
    (svc, calls, n)
}

async fn send(svc: &Svc, key: &str, amount: u32) -> Result<String, IdempotencyError<String>> {
    svc.clone().oneshot((Some(key.into()), amount)).await
}

#[tokio::test]
async fn a_restarted_process_answers_a_duplicate_with_the_kept_response() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let (svc, calls, restored) = start(dir.path(), TTL, true, now);
    assert_eq!(restored, 0);
    let first = send(&svc, "k1", 5).await.unwrap();
    let other = send(&svc, "k2", 7).await.unwrap();
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    drop(svc); // the process ends (its journal closed with it)

    let (svc, calls, restored) = start(dir.path(), TTL, true, SystemTime::now());
    assert_eq!(restored, 2);
    assert_eq!(send(&svc, "k1", 5).await.unwrap(), first);
    assert_eq!(send(&svc, "k2", 7).await.unwrap(), other);
    assert_eq!(calls.load(Ordering::Relaxed), 0, "no second charge");
    // A new key still runs, and is journalled in its turn.
    send(&svc, "k3", 1).await.unwrap();
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    let s = svc.stats();
    assert_eq!((s.restored, s.replayed, s.executed), (2, 2, 1));
    drop(svc);
    let (svc, calls, restored) = start(dir.path(), TTL, true, SystemTime::now());
    assert_eq!(restored, 3);
    assert_eq!(send(&svc, "k3", 1).await.unwrap(), "charge #0: 1");
    assert_eq!(calls.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn without_kept_responses_a_restarted_process_refuses_the_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let (svc, _, _) = start(dir.path(), TTL, false, SystemTime::now());
    send(&svc, "k1", 5).await.unwrap();
    drop(svc);

    let (svc, calls, restored) = start(dir.path(), TTL, false, SystemTime::now());
    assert_eq!(restored, 1);
    assert_eq!(
        send(&svc, "k1", 5).await,
        Err(IdempotencyError::CompletedBefore)
    );
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    assert_eq!(svc.stats().refused_completed, 1);
    // Without a restore (the layer as it was before the journal), the same
    // duplicate charges again: what the restore prevents.
    let (fresh, fresh_calls) = service(TTL);
    send(&fresh, "k1", 5).await.unwrap();
    assert_eq!(fresh_calls.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn entries_past_the_ttl_are_not_restored() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path(), config()).unwrap();
    let log = CompletionJournal::new(journal, |k: &String| k.as_bytes().to_vec());
    let t0 = SystemTime::now();
    // Completed at t0, t0 + 10 s and t0 + 20 s.
    for (i, key) in ["old", "mid", "new"].iter().enumerate() {
        log.completed(
            &key.to_string(),
            &String::new(),
            t0 + Duration::from_secs(10 * i as u64),
        );
    }
    drop(log);
    let ttl = Duration::from_secs(30);
    let decode = |k: &[u8]| String::from_utf8(k.to_vec()).ok();
    // At t0 + 40 s: "old" is 40 s old, "mid" exactly 30 s (at the TTL: expired), "new" 20 s.
    let now = t0 + Duration::from_secs(40);
    let found = read_completions(dir.path(), ttl, now, decode, |_| None::<String>).unwrap();
    let keys: Vec<_> = found.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["new"]);
    // The layer judges the TTL itself too: given every record, it keeps the same.
    let all = read_completions(dir.path(), Duration::MAX, now, decode, |_| None::<String>).unwrap();
    assert_eq!(all.len(), 3);
    let (svc, calls) = service(ttl);
    assert_eq!(svc.restore(all, now), 1);
    assert_eq!(send(&svc, "old", 1).await.unwrap(), "charge #0: 1");
    assert_eq!(send(&svc, "mid", 1).await.unwrap(), "charge #1: 1");
    assert_eq!(
        send(&svc, "new", 1).await,
        Err(IdempotencyError::CompletedBefore)
    );
    assert_eq!(calls.load(Ordering::Relaxed), 2);
}

#[tokio::test(start_paused = true)]
async fn a_restored_entry_lives_only_what_is_left_of_its_ttl() {
    let now = SystemTime::now();
    let (svc, calls) = service(Duration::from_secs(30));
    let entry = tenlives_tokio::idempotency::Completed {
        key: "k".to_string(),
        at: now - Duration::from_secs(20),
        response: Some("kept".to_string()),
    };
    assert_eq!(svc.restore([entry], now), 1);
    tokio::time::advance(Duration::from_millis(9_999)).await;
    assert_eq!(send(&svc, "k", 1).await.unwrap(), "kept");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(send(&svc, "k", 1).await.unwrap(), "charge #0: 1");
    assert_eq!(calls.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_torn_journal_tail_costs_only_the_record_it_tore() {
    let dir = tempfile::tempdir().unwrap();
    let (svc, _, _) = start(dir.path(), TTL, true, SystemTime::now());
    for k in ["a", "b", "c"] {
        send(&svc, k, 1).await.unwrap();
    }
    drop(svc);
    // Tear the last record (a crash mid-write): cut its last 3 bytes.
    let seg = dir.path().join("journal-0000000000.tjl");
    let len = std::fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let items: Vec<JournalItem> = JournalReader::open(dir.path())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        matches!(items.last(), Some(JournalItem::Damaged { .. })),
        "{items:?}"
    );

    let (svc, calls, restored) = start(dir.path(), TTL, true, SystemTime::now());
    assert_eq!(restored, 2, "a and b; c was torn");
    assert_eq!(send(&svc, "a", 1).await.unwrap(), "charge #0: 1");
    assert_eq!(send(&svc, "b", 1).await.unwrap(), "charge #1: 1");
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    // c's record was torn: it runs again, and the journal (its tail cut on
    // open) records it whole.
    assert_eq!(send(&svc, "c", 1).await.unwrap(), "charge #0: 1");
    drop(svc);
    let (svc, calls, restored) = start(dir.path(), TTL, true, SystemTime::now());
    assert_eq!(restored, 3);
    send(&svc, "c", 1).await.unwrap();
    assert_eq!(calls.load(Ordering::Relaxed), 0);
}

#[test]
fn completion_records_round_trip_and_refuse_oversized_input() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path(), config()).unwrap();
    let key = vec![7u8; tenlives_ops::journal::MAX_KEY];
    let resp = vec![9u8; tenlives_ops::journal::MAX_RESPONSE];
    assert_eq!(j.append_completed(&key, 42, Some(&resp)).unwrap(), 0);
    assert_eq!(j.append_completed(b"", u64::MAX, None).unwrap(), 1);
    let too_long = vec![0u8; tenlives_ops::journal::MAX_KEY + 1];
    let err = j.append_completed(&too_long, 1, None).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let err = j
        .append_completed(b"k", 1, Some(&vec![0u8; resp.len() + 1]))
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    drop(j);
    let items: Vec<JournalItem> = JournalReader::open(dir.path())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        items,
        [
            JournalItem::Completed {
                seq: 0,
                at_unix_nanos: 42,
                key,
                response: Some(resp)
            },
            JournalItem::Completed {
                seq: 1,
                at_unix_nanos: u64::MAX,
                key: vec![],
                response: None
            },
        ]
    );
    // The journal reopens after them (nothing cut).
    let (j, report) = Journal::open(dir.path(), config()).unwrap();
    assert_eq!((j.next_seq(), report.cut), (2, None));
}

#[tokio::test]
async fn a_key_too_long_is_counted_and_a_response_too_long_is_journalled_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path(), config()).unwrap();
    let log = Arc::new(
        CompletionJournal::new(journal, |k: &String| k.as_bytes().to_vec()).keep_responses(
            |r: &String| {
                r.as_bytes()
                    .repeat(if r.ends_with(" 2") { 1 } else { 10_000 })
            },
        ),
    );
    let (svc, calls) = service(TTL);
    assert!(svc.set_completion_log(log.clone()).is_ok());
    let long_key = "k".repeat(tenlives_ops::journal::MAX_KEY + 1);
    // Not journalled, counted; the request itself is answered.
    assert_eq!(send(&svc, &long_key, 1).await.unwrap(), "charge #0: 1");
    assert_eq!(log.failures(), 1);
    // Its response encodes to 120 000 bytes: journalled without it.
    send(&svc, "big", 3).await.unwrap();
    send(&svc, "small", 2).await.unwrap();
    assert_eq!(log.failures(), 1);
    drop((svc, log));

    let (svc, calls2, restored) = start(dir.path(), TTL, true, SystemTime::now());
    assert_eq!(restored, 2);
    assert_eq!(send(&svc, "small", 2).await.unwrap(), "charge #2: 2");
    assert_eq!(
        send(&svc, "big", 3).await,
        Err(IdempotencyError::CompletedBefore)
    );
    // The long key was not journalled: it runs again.
    send(&svc, &long_key, 1).await.unwrap();
    assert_eq!(
        (
            calls.load(Ordering::Relaxed),
            calls2.load(Ordering::Relaxed)
        ),
        (3, 1)
    );
}
