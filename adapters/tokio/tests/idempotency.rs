//! The idempotency-key layer: a duplicate in flight waits for the first call,
//! a duplicate within the TTL gets the stored response, errors are not
//! stored, memory is bounded (oldest completed evicted, new keys over the
//! in-flight cap refused), drops and panics never hang a duplicate, and under
//! two worker threads a stored key's upstream runs at most once.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use tenlives_tokio::idempotency::{Completed, CompletionLog, IdempotencyStats};
use tenlives_tokio::{IdempotencyConfig, IdempotencyError, IdempotencyLayer, TokioClock};
use tower::{Layer, Service, ServiceExt};

/// What the upstream does for one call.
#[derive(Clone, Copy, Debug)]
enum Script {
    /// Answers after `ms` milliseconds.
    Answer { ms: u64 },
    /// Fails after 10 ms.
    Fail,
    /// Panics in `call`.
    PanicInCall,
    /// Panics in `poll` after 10 ms.
    PanicInPoll,
}

#[derive(Clone, Debug)]
struct Req {
    key: Option<u32>,
    script: Script,
}

fn req(key: u32, script: Script) -> Req {
    Req {
        key: Some(key),
        script,
    }
}

const ANSWER: Script = Script::Answer { ms: 10 };

/// The answer: (key, the upstream's call number).
type Answer = (Option<u32>, usize);
type Reply = Pin<Box<dyn Future<Output = Result<Answer, &'static str>> + Send>>;

#[derive(Default)]
struct Counters {
    calls: AtomicUsize,
    /// Upstream futures dropped before they answered.
    dropped_unfinished: AtomicUsize,
}

#[derive(Clone)]
struct Upstream(Arc<Counters>);

struct Tracked(Arc<Counters>, bool);

impl Drop for Tracked {
    fn drop(&mut self) {
        if !self.1 {
            self.0.dropped_unfinished.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Service<Req> for Upstream {
    type Response = Answer;
    type Error = &'static str;
    type Future = Reply;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, r: Req) -> Reply {
        if let Script::PanicInCall = r.script {
            panic!("boom in call");
        }
        let n = self.0.calls.fetch_add(1, Ordering::SeqCst);
        let tracked = Tracked(Arc::clone(&self.0), false);
        Box::pin(async move {
            // The whole guard moves into the future (not only its flag).
            let mut tracked = tracked;
            let out = match r.script {
                Script::Answer { ms } => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok((r.key, n))
                }
                Script::Fail => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Err("upstream failed")
                }
                Script::PanicInPoll => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    panic!("boom in poll");
                }
                Script::PanicInCall => unreachable!(),
            };
            tracked.1 = true;
            out
        })
    }
}

fn key_fn(r: &Req) -> Option<u32> {
    r.key
}

type Svc = tenlives_tokio::IdempotencyService<Upstream, fn(&Req) -> Option<u32>, u32, Req>;

fn service(ttl: Duration, max_stored: usize, max_in_flight: usize) -> (Svc, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    let config =
        IdempotencyConfig::new(ttl, max_stored, max_in_flight).clock(TokioClock::runtime());
    let layer = IdempotencyLayer::new(key_fn as fn(&Req) -> Option<u32>, config);
    (layer.layer(Upstream(Arc::clone(&counters))), counters)
}

fn calls(c: &Counters) -> usize {
    c.calls.load(Ordering::SeqCst)
}

fn stats(svc: &Svc) -> IdempotencyStats {
    svc.stats()
}

#[tokio::test(start_paused = true)]
async fn a_duplicate_in_flight_waits_for_the_first_call() {
    let (svc, c) = service(Duration::from_secs(60), 100, 100);
    let start = tokio::time::Instant::now();
    let a = svc.clone().oneshot(req(1, Script::Answer { ms: 30 }));
    let b = svc.clone().oneshot(req(1, Script::Answer { ms: 30 }));
    let other = svc.clone().oneshot(req(2, Script::Answer { ms: 30 }));
    let (a, b, other) = tokio::join!(a, b, other);
    assert_eq!(a.unwrap(), (Some(1), 0));
    assert_eq!(b.unwrap(), (Some(1), 0));
    assert_eq!(other.unwrap(), (Some(2), 1));
    assert_eq!(start.elapsed(), Duration::from_millis(30));
    assert_eq!(calls(&c), 2);
    assert_eq!(stats(&svc).in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_duplicate_within_the_ttl_gets_the_stored_response_and_after_it_runs_again() {
    let (svc, c) = service(Duration::from_secs(5), 100, 100);
    let first = svc.clone().oneshot(req(1, ANSWER)).await.unwrap();
    assert_eq!(first, (Some(1), 0));
    // The response was stored at 10 ms; it answers until 5.01 s exclusive.
    tokio::time::sleep(Duration::from_millis(4_999)).await;
    let replay = svc.clone().oneshot(req(1, ANSWER)).await.unwrap();
    assert_eq!(replay, first);
    assert_eq!(calls(&c), 1);
    tokio::time::sleep(Duration::from_millis(1)).await;
    let fresh = svc.clone().oneshot(req(1, ANSWER)).await.unwrap();
    assert_eq!(fresh, (Some(1), 1));
    let s = stats(&svc);
    assert_eq!((s.executed, s.replayed, s.stored), (2, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn requests_without_a_key_always_run() {
    let (svc, c) = service(Duration::from_secs(60), 100, 1);
    let no_key = Req {
        key: None,
        script: ANSWER,
    };
    // Two at once, over an in-flight cap of 1: keyless requests are not
    // counted, shared or stored.
    let (a, b) = tokio::join!(
        svc.clone().oneshot(no_key.clone()),
        svc.clone().oneshot(no_key.clone())
    );
    assert_eq!((a.unwrap(), b.unwrap()), ((None, 0), (None, 1)));
    svc.clone().oneshot(no_key).await.unwrap();
    assert_eq!(calls(&c), 3);
    assert_eq!(stats(&svc).stored, 0);
}

#[tokio::test(start_paused = true)]
async fn errors_are_not_stored_but_reach_the_duplicates_that_waited() {
    let (svc, c) = service(Duration::from_secs(60), 100, 100);
    let (a, b) = tokio::join!(
        svc.clone().oneshot(req(1, Script::Fail)),
        svc.clone().oneshot(req(1, Script::Fail))
    );
    assert_eq!(
        a.unwrap_err(),
        IdempotencyError::Upstream("upstream failed")
    );
    assert_eq!(
        b.unwrap_err(),
        IdempotencyError::Upstream("upstream failed")
    );
    assert_eq!(calls(&c), 1);
    // The retry runs again, and its success is stored.
    assert_eq!(
        svc.clone().oneshot(req(1, ANSWER)).await.unwrap(),
        (Some(1), 1)
    );
    assert_eq!(
        svc.clone().oneshot(req(1, ANSWER)).await.unwrap(),
        (Some(1), 1)
    );
    assert_eq!(calls(&c), 2);
}

#[tokio::test(start_paused = true)]
async fn store_if_keeps_chosen_responses_out_of_the_store() {
    let counters = Arc::new(Counters::default());
    let config = IdempotencyConfig::new(Duration::from_secs(60), 100, 100)
        .store_if(|a: &Answer| a.0 != Some(13))
        .clock(TokioClock::runtime());
    let svc = IdempotencyLayer::new(key_fn, config).layer(Upstream(Arc::clone(&counters)));
    for _ in 0..3 {
        svc.clone().oneshot(req(13, ANSWER)).await.unwrap();
        svc.clone().oneshot(req(14, ANSWER)).await.unwrap();
    }
    // Key 13 ran three times, key 14 once.
    assert_eq!(calls(&counters), 4);
}

#[tokio::test(start_paused = true)]
async fn the_oldest_completed_entry_is_evicted_at_the_cap() {
    let (svc, c) = service(Duration::from_secs(60), 2, 100);
    for k in 1..=3 {
        svc.clone().oneshot(req(k, ANSWER)).await.unwrap();
    }
    let s = stats(&svc);
    assert_eq!((s.stored, s.evicted), (2, 1));
    // 2 and 3 are stored; 1 (the oldest) was evicted and runs again.
    assert_eq!(
        svc.clone().oneshot(req(3, ANSWER)).await.unwrap(),
        (Some(3), 2)
    );
    assert_eq!(
        svc.clone().oneshot(req(2, ANSWER)).await.unwrap(),
        (Some(2), 1)
    );
    assert_eq!(calls(&c), 3);
    assert_eq!(
        svc.clone().oneshot(req(1, ANSWER)).await.unwrap(),
        (Some(1), 3)
    );
    assert_eq!(calls(&c), 4);
    // Storing 1 again evicted 2 (now the oldest).
    assert_eq!(
        svc.clone().oneshot(req(2, ANSWER)).await.unwrap(),
        (Some(2), 4)
    );
    assert!(stats(&svc).stored <= 2);
}

#[tokio::test(start_paused = true)]
async fn expired_entries_go_before_live_ones_are_evicted() {
    let (svc, c) = service(Duration::from_secs(1), 2, 100);
    svc.clone().oneshot(req(1, ANSWER)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    svc.clone().oneshot(req(2, ANSWER)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await; // 1 expired, 2 not
    svc.clone().oneshot(req(3, ANSWER)).await.unwrap();
    let s = stats(&svc);
    assert_eq!((s.stored, s.evicted), (2, 0));
    assert_eq!(
        svc.clone().oneshot(req(2, ANSWER)).await.unwrap(),
        (Some(2), 1)
    );
    assert_eq!(calls(&c), 3);
}

#[tokio::test(start_paused = true)]
async fn a_new_key_over_the_in_flight_cap_is_refused_and_duplicates_still_join() {
    let (svc, c) = service(Duration::from_secs(60), 100, 1);
    let mut first = svc.clone().oneshot(req(1, Script::Answer { ms: 50 }));
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    assert!(Pin::new(&mut first).poll(&mut cx).is_pending());
    assert_eq!(stats(&svc).in_flight, 1);
    let refused = svc.clone().oneshot(req(2, ANSWER)).await.unwrap_err();
    assert_eq!(refused, IdempotencyError::InFlightFull);
    let (dup, first) = tokio::join!(svc.clone().oneshot(req(1, ANSWER)), first);
    assert_eq!(dup.unwrap(), first.unwrap());
    assert_eq!(calls(&c), 1);
    // The place is free again, and the refusal stored nothing.
    assert_eq!(
        svc.clone().oneshot(req(2, ANSWER)).await.unwrap(),
        (Some(2), 1)
    );
    let s = stats(&svc);
    assert_eq!((s.refused, s.in_flight), (1, 0));
}

/// The first request is polled `polls` times, then dropped while a duplicate
/// waits: the duplicate gets the answer of the same upstream call.
#[tokio::test(start_paused = true)]
async fn dropping_the_first_request_at_every_await_never_hangs_the_duplicate() {
    for polls in 0..4 {
        let (svc, c) = service(Duration::from_secs(60), 100, 100);
        let mut first = svc.clone().oneshot(req(1, Script::Answer { ms: 30 }));
        let mut dup = svc.clone().oneshot(req(1, Script::Answer { ms: 30 }));
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        for i in 0..polls {
            assert!(Pin::new(&mut first).poll(&mut cx).is_pending());
            if i == 0 {
                assert!(Pin::new(&mut dup).poll(&mut cx).is_pending());
            }
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        drop(first);
        let answer = tokio::time::timeout(Duration::from_secs(1), dup)
            .await
            .expect("the duplicate never hangs");
        assert_eq!(answer.unwrap(), (Some(1), 0), "polls = {polls}");
        assert_eq!(calls(&c), 1);
        assert_eq!(c.dropped_unfinished.load(Ordering::SeqCst), 0);
        assert_eq!(stats(&svc).in_flight, 0);
        // Stored: a third request is answered without a call.
        assert_eq!(
            svc.clone().oneshot(req(1, ANSWER)).await.unwrap(),
            (Some(1), 0)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_every_caller_cancels_the_call_and_stores_nothing() {
    let (svc, c) = service(Duration::from_secs(60), 100, 100);
    let mut a = svc.clone().oneshot(req(1, Script::Answer { ms: 30 }));
    let mut b = svc.clone().oneshot(req(1, Script::Answer { ms: 30 }));
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    assert!(Pin::new(&mut a).poll(&mut cx).is_pending());
    assert!(Pin::new(&mut b).poll(&mut cx).is_pending());
    drop(a);
    drop(b);
    assert_eq!(c.dropped_unfinished.load(Ordering::SeqCst), 1);
    let s = stats(&svc);
    assert_eq!((s.in_flight, s.stored), (0, 0));
    // The key is new again.
    assert_eq!(
        svc.clone().oneshot(req(1, ANSWER)).await.unwrap(),
        (Some(1), 1)
    );
}

fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    let waker = Waker::noop();
    Pin::new(f).poll(&mut Context::from_waker(waker))
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_call_reaches_the_caller_and_frees_the_key() {
    let (svc, c) = service(Duration::from_secs(60), 100, 1);
    let mut s = svc.clone();
    let panicked = catch_unwind(AssertUnwindSafe(|| s.call(req(1, Script::PanicInCall))));
    assert!(panicked.is_err());
    let st = stats(&svc);
    assert_eq!((st.in_flight, st.stored), (0, 0));
    assert_eq!(
        svc.clone().oneshot(req(1, ANSWER)).await.unwrap(),
        (Some(1), 0)
    );
    assert_eq!(calls(&c), 1);
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_the_future_reaches_its_poller_and_every_duplicate() {
    let (svc, c) = service(Duration::from_secs(60), 100, 1);
    let mut first = svc.clone().oneshot(req(1, Script::PanicInPoll));
    assert!(poll_once(&mut first).is_pending());
    let mut dups: Vec<_> = (0..3)
        .map(|_| svc.clone().oneshot(req(1, ANSWER)))
        .collect();
    for d in &mut dups {
        assert!(poll_once(d).is_pending());
    }
    tokio::time::advance(Duration::from_millis(10)).await;
    let panicked = catch_unwind(AssertUnwindSafe(|| poll_once(&mut first)));
    assert!(panicked.is_err());
    drop(first);
    for d in dups {
        let r = tokio::time::timeout(Duration::from_secs(1), d)
            .await
            .expect("a duplicate never hangs");
        assert_eq!(r.unwrap_err(), IdempotencyError::Panicked);
    }
    let st = stats(&svc);
    assert_eq!((st.in_flight, st.stored), (0, 0));
    assert_eq!(
        svc.clone().oneshot(req(1, ANSWER)).await.unwrap(),
        (Some(1), 1)
    );
    assert_eq!(calls(&c), 2);
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_the_key_function_reaches_the_caller_and_takes_nothing() {
    let counters = Arc::new(Counters::default());
    let config =
        IdempotencyConfig::new(Duration::from_secs(60), 100, 1).clock(TokioClock::runtime());
    let svc = IdempotencyLayer::new(
        |r: &Req| {
            assert!(r.key != Some(666), "boom in the key function");
            r.key
        },
        config,
    )
    .layer(Upstream(Arc::clone(&counters)));
    let mut first = svc.clone().oneshot(req(1, Script::Answer { ms: 30 }));
    assert!(poll_once(&mut first).is_pending());
    let mut s = svc.clone();
    assert!(catch_unwind(AssertUnwindSafe(|| s.call(req(666, ANSWER)))).is_err());
    let (a, b) = tokio::join!(first, svc.clone().oneshot(req(1, ANSWER)));
    assert_eq!(a.unwrap(), b.unwrap());
    assert_eq!(calls(&counters), 1);
    assert_eq!(svc.stats().in_flight, 0);
}

/// Two worker threads, 64 tasks, 16 keys, a TTL longer than the test: every
/// key's upstream completes at most once, and every answer for a key is that
/// one call's, whatever the interleaving. Some requests are cancelled
/// mid-call (a cancelled call that every caller left may run again: it never
/// completed), and no in-flight place leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_two_threads_a_stored_keys_upstream_completes_at_most_once() {
    const KEYS: u32 = 16;
    let counters = Arc::new(Counters::default());
    let completed: Arc<Mutex<Vec<Vec<usize>>>> =
        Arc::new(Mutex::new(vec![Vec::new(); KEYS as usize]));
    let config = IdempotencyConfig::new(Duration::from_secs(3600), 1000, 1000);
    let upstream = {
        let counters = Arc::clone(&counters);
        let completed = Arc::clone(&completed);
        tower::service_fn(move |r: Req| {
            let n = counters.calls.fetch_add(1, Ordering::SeqCst);
            let completed = Arc::clone(&completed);
            async move {
                for _ in 0..(n % 3) {
                    tokio::task::yield_now().await;
                }
                if n % 5 == 0 {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                let key = r.key.unwrap();
                completed.lock().unwrap()[key as usize].push(n);
                Ok::<Answer, &'static str>((r.key, n))
            }
        })
    };
    let svc = IdempotencyLayer::new(key_fn, config).layer(upstream);
    let answers: Arc<Mutex<Vec<Vec<usize>>>> =
        Arc::new(Mutex::new(vec![Vec::new(); KEYS as usize]));
    let mut tasks = Vec::new();
    for t in 0..64u32 {
        let svc = svc.clone();
        let answers = Arc::clone(&answers);
        tasks.push(tokio::spawn(async move {
            for i in 0..200u32 {
                let key = (t.wrapping_mul(7) + i) % KEYS;
                let call = svc.clone().oneshot(req(key, ANSWER));
                if (t + i) % 11 == 0 {
                    // Cancelled after at most one poll.
                    let _ = tokio::time::timeout(Duration::from_micros(1), call).await;
                    continue;
                }
                let (k, n) = call.await.unwrap();
                assert_eq!(k, Some(key));
                answers.lock().unwrap()[key as usize].push(n);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let completed = completed.lock().unwrap();
    let answers = answers.lock().unwrap();
    for key in 0..KEYS as usize {
        assert_eq!(
            completed[key].len(),
            1,
            "key {key} completed {:?}",
            completed[key]
        );
        let n = completed[key][0];
        assert!(!answers[key].is_empty());
        assert!(
            answers[key].iter().all(|&a| a == n),
            "key {key}: every answer is the one call's"
        );
    }
    let s = svc.stats();
    assert_eq!(s.in_flight, 0);
    assert_eq!(s.stored, KEYS as usize);
    assert!(s.replayed > 0);
}

/// Polls `f` on this thread until it is ready (a follower waiting on another
/// thread's call is polled again and again).
fn spin<F: Future + Unpin>(mut f: F) -> F::Output {
    loop {
        if let Poll::Ready(out) = poll_once(&mut f) {
            return out;
        }
        std::hint::spin_loop();
    }
}

/// Two threads ask for the same new key at the same moment, 100 000 times
/// over, with an upstream that answers at once: the window where one request
/// misses the store while the other's call completes and leaves the single
/// flight is hit often. Every key's upstream runs exactly once, and both
/// threads get its answer.
#[test]
fn two_threads_racing_on_each_new_key_call_its_upstream_once() {
    const KEYS: u32 = 100_000;
    let runs: Arc<Vec<AtomicUsize>> = Arc::new((0..KEYS).map(|_| AtomicUsize::new(0)).collect());
    let upstream = {
        let runs = Arc::clone(&runs);
        tower::service_fn(move |r: Req| {
            let key = r.key.unwrap();
            let n = runs[key as usize].fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<Answer, &'static str>((r.key, n)))
        })
    };
    let config = IdempotencyConfig::new(Duration::from_secs(3600), KEYS as usize, 16)
        .clock(TokioClock::tsc());
    let svc = IdempotencyLayer::new(key_fn, config).layer(upstream);
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let wrong = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            let svc = svc.clone();
            let barrier = Arc::clone(&barrier);
            let wrong = &wrong;
            s.spawn(move || {
                for key in 0..KEYS {
                    barrier.wait();
                    // No assertion here: a panicking thread would leave the
                    // other one at the barrier. The answers are checked below.
                    let answer = spin(svc.clone().oneshot(req(key, ANSWER)));
                    if answer != Ok((Some(key), 0)) {
                        wrong.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    let twice = runs
        .iter()
        .filter(|n| n.load(Ordering::SeqCst) != 1)
        .count();
    assert_eq!(twice, 0, "keys whose upstream did not run exactly once");
    assert_eq!(
        wrong.load(Ordering::SeqCst),
        0,
        "answers not the one call's"
    );
    let s = svc.stats();
    assert_eq!(s.executed, u64::from(KEYS));
    assert_eq!(s.in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_panic_while_storing_reaches_the_driver_and_the_duplicates_and_frees_the_key() {
    let counters = Arc::new(Counters::default());
    let config = IdempotencyConfig::new(Duration::from_secs(60), 100, 1)
        .store_if(|a: &Answer| {
            assert!(a.1 != 0, "boom in store_if");
            true
        })
        .clock(TokioClock::runtime());
    let svc = IdempotencyLayer::new(key_fn, config).layer(Upstream(Arc::clone(&counters)));
    let mut first = svc.clone().oneshot(req(1, ANSWER));
    let mut dup = svc.clone().oneshot(req(1, ANSWER));
    assert!(poll_once(&mut first).is_pending());
    assert!(poll_once(&mut dup).is_pending());
    tokio::time::advance(Duration::from_millis(10)).await;
    assert!(catch_unwind(AssertUnwindSafe(|| poll_once(&mut first))).is_err());
    drop(first);
    let r = tokio::time::timeout(Duration::from_secs(1), dup)
        .await
        .expect("the duplicate never hangs");
    assert_eq!(r.unwrap_err(), IdempotencyError::Panicked);
    let s = svc.stats();
    assert_eq!((s.in_flight, s.stored), (0, 0));
    // The second call's response (call number 1) is stored.
    assert_eq!(
        svc.clone().oneshot(req(1, ANSWER)).await.unwrap(),
        (Some(1), 1)
    );
    assert_eq!(
        svc.clone().oneshot(req(1, ANSWER)).await.unwrap(),
        (Some(1), 1)
    );
    assert_eq!(calls(&counters), 2);
}

/// Two worker threads on tokio's running clock, a 20 ms TTL, 8 keys asked
/// for over and over for about 300 ms: for every key, each upstream call
/// that completed was stored, and the key's next call started no earlier
/// than that completion plus the TTL (at most once per TTL window while the
/// response is stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_two_threads_a_keys_upstream_runs_at_most_once_per_ttl_window() {
    use std::time::Instant;
    const KEYS: u32 = 8;
    const TTL: Duration = Duration::from_millis(20);
    // Per key: (start, completion) of each call that completed.
    type Log = Arc<Mutex<Vec<Vec<(Instant, Instant)>>>>;
    let log: Log = Arc::new(Mutex::new(vec![Vec::new(); KEYS as usize]));
    let upstream = {
        let log = Arc::clone(&log);
        tower::service_fn(move |r: Req| {
            let start = Instant::now();
            let log = Arc::clone(&log);
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                let key = r.key.unwrap();
                log.lock().unwrap()[key as usize].push((start, Instant::now()));
                Ok::<Answer, &'static str>((r.key, 0))
            }
        })
    };
    // The TTL is judged on tokio's clock, which is `std::time::Instant` here.
    let config = IdempotencyConfig::new(TTL, 1000, 1000).clock(TokioClock::runtime());
    let svc = IdempotencyLayer::new(key_fn, config).layer(upstream);
    let deadline = Instant::now() + Duration::from_millis(300);
    let mut tasks = Vec::new();
    for t in 0..32u32 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while Instant::now() < deadline {
                i = i.wrapping_add(1);
                let call = svc.clone().oneshot(req(i % KEYS, ANSWER));
                if i % 7 == 0 {
                    let _ = tokio::time::timeout(Duration::from_micros(500), call).await;
                } else {
                    call.await.unwrap();
                }
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let log = log.lock().unwrap();
    for (key, calls) in log.iter().enumerate() {
        assert!(
            calls.len() >= 2,
            "key {key}: {} calls in 300 ms",
            calls.len()
        );
        let mut calls = calls.clone();
        calls.sort();
        for pair in calls.windows(2) {
            let ((_, done), (next_start, _)) = (pair[0], pair[1]);
            assert!(
                next_start + Duration::from_micros(1) >= done + TTL,
                "key {key}: a call started {:?} after the previous completed, within the {TTL:?} TTL",
                next_start.saturating_duration_since(done)
            );
        }
    }
    assert_eq!(svc.stats().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_ttl_at_the_end_of_time_keeps_the_response_for_ever() {
    let (svc, c) = service(Duration::MAX, 10, 10);
    svc.clone().oneshot(req(1, ANSWER)).await.unwrap();
    tokio::time::advance(Duration::from_secs(100 * 365 * 24 * 3600)).await;
    assert_eq!(
        svc.clone().oneshot(req(1, ANSWER)).await.unwrap(),
        (Some(1), 0)
    );
    assert_eq!(calls(&c), 1);
}

/// Hashing key 1 panics when `HASH_COUNTDOWN` reaches zero (counted down by
/// every hash of key 1 while it is positive).
static HASH_COUNTDOWN: AtomicUsize = AtomicUsize::new(0);

#[derive(Clone, PartialEq, Eq)]
struct FragileKey(u32);

impl std::hash::Hash for FragileKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        if self.0 == 1 {
            let left = HASH_COUNTDOWN.load(Ordering::SeqCst);
            if left > 0 {
                HASH_COUNTDOWN.store(left - 1, Ordering::SeqCst);
                assert!(left != 1, "boom in Hash");
            }
        }
        self.0.hash(state);
    }
}

/// The store's cap holds even when a key's `Hash` panics while its entry is
/// being evicted: the eviction is retried by the next insertion.
#[tokio::test(start_paused = true)]
async fn a_panicking_hash_during_eviction_leaves_the_cap_intact() {
    let counters = Arc::new(Counters::default());
    let config =
        IdempotencyConfig::new(Duration::from_secs(60), 1, 10).clock(TokioClock::runtime());
    let svc = IdempotencyLayer::new(|r: &Req| r.key.map(FragileKey), config)
        .layer(Upstream(Arc::clone(&counters)));
    svc.clone().oneshot(req(1, ANSWER)).await.unwrap();
    // Storing key 2 evicts key 1: its lookup hashes it once, its removal a
    // second time, which panics.
    HASH_COUNTDOWN.store(2, Ordering::SeqCst);
    let mut second = svc.clone().oneshot(req(2, ANSWER));
    assert!(poll_once(&mut second).is_pending());
    tokio::time::advance(Duration::from_millis(10)).await;
    assert!(catch_unwind(AssertUnwindSafe(|| poll_once(&mut second))).is_err());
    drop(second);
    assert_eq!(HASH_COUNTDOWN.load(Ordering::SeqCst), 0);
    assert!(svc.stats().stored <= 1);
    svc.clone().oneshot(req(2, ANSWER)).await.unwrap();
    assert_eq!(svc.stats().stored, 1, "the cap of 1 holds");
    assert_eq!(svc.stats().in_flight, 0);
}

/// Records what a service hands its completion log; panics on key 99.
#[derive(Default)]
struct Log(Mutex<Vec<(u32, Answer)>>);

impl CompletionLog<u32, Answer> for Log {
    fn completed(&self, key: &u32, response: &Answer, _: SystemTime) {
        assert!(*key != 99, "boom in the log");
        self.0.lock().unwrap().push((*key, *response));
    }
}

#[tokio::test(start_paused = true)]
async fn the_log_has_a_response_before_any_caller_and_only_stored_ones() {
    let (svc, _) = service(Duration::from_secs(60), 100, 100);
    let log = Arc::new(Log::default());
    assert!(svc.set_completion_log(log.clone()).is_ok());
    assert!(svc.set_completion_log(Arc::new(Log::default())).is_err());
    let answer = svc.clone().oneshot(req(1, ANSWER)).await.unwrap();
    assert_eq!(*log.0.lock().unwrap(), [(1, answer)]);
    // Errors and responses kept out of the store are not logged.
    svc.clone().oneshot(req(2, Script::Fail)).await.unwrap_err();
    assert_eq!(log.0.lock().unwrap().len(), 1);
    let (nothing_stored, _) = service(Duration::from_secs(60), 0, 100);
    let empty = Arc::new(Log::default());
    assert!(nothing_stored.set_completion_log(empty.clone()).is_ok());
    nothing_stored
        .clone()
        .oneshot(req(3, ANSWER))
        .await
        .unwrap();
    assert!(empty.0.lock().unwrap().is_empty());
}

/// A log that reads its service's store size when it is handed a response.
#[derive(Default)]
struct Peek(std::sync::OnceLock<Svc>, Mutex<Vec<usize>>);

impl CompletionLog<u32, Answer> for Peek {
    fn completed(&self, _: &u32, _: &Answer, _: SystemTime) {
        let stored = self.0.get().unwrap().stats().stored;
        self.1.lock().unwrap().push(stored);
    }
}

#[tokio::test(start_paused = true)]
async fn the_log_is_handed_a_response_before_it_is_stored() {
    let (svc, _) = service(Duration::from_secs(60), 100, 100);
    let peek = Arc::new(Peek::default());
    assert!(peek.0.set(svc.clone()).is_ok());
    assert!(svc.set_completion_log(peek.clone()).is_ok());
    svc.clone().oneshot(req(1, ANSWER)).await.unwrap();
    svc.clone().oneshot(req(2, ANSWER)).await.unwrap();
    // Nothing a duplicate could replay was stored before the log had it.
    assert_eq!(*peek.1.lock().unwrap(), [0, 1]);
    assert_eq!(stats(&svc).stored, 2);
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_the_log_reaches_its_poller_and_the_duplicates_and_stores_nothing() {
    let (svc, c) = service(Duration::from_secs(60), 100, 100);
    assert!(svc.set_completion_log(Arc::new(Log::default())).is_ok());
    let mut first = svc.clone().oneshot(req(99, ANSWER));
    let mut dup = svc.clone().oneshot(req(99, ANSWER));
    assert!(poll_once(&mut first).is_pending());
    assert!(poll_once(&mut dup).is_pending());
    tokio::time::advance(Duration::from_millis(10)).await;
    assert!(catch_unwind(AssertUnwindSafe(|| poll_once(&mut first))).is_err());
    drop(first);
    let r = tokio::time::timeout(Duration::from_secs(1), dup)
        .await
        .expect("the duplicate never hangs");
    assert_eq!(r.unwrap_err(), IdempotencyError::Panicked);
    let s = stats(&svc);
    assert_eq!((s.in_flight, s.stored), (0, 0));
    assert_eq!(calls(&c), 1);
}

fn done(key: u32, at: SystemTime, response: Option<Answer>) -> Completed<u32, Answer> {
    Completed { key, at, response }
}

#[tokio::test(start_paused = true)]
async fn restored_keys_answer_or_refuse_and_keep_to_the_cap_and_the_ttl() {
    let now = SystemTime::now();
    let ttl = Duration::from_secs(60);
    let (svc, c) = service(ttl, 2, 100);
    let n = svc.restore(
        [
            done(1, now - Duration::from_secs(60), Some((Some(1), 70))), // at the TTL: skipped
            done(2, now - Duration::from_secs(30), Some((Some(2), 71))), // evicted by the cap
            done(3, now - Duration::from_secs(20), None),
            // The wall clock stepped back: completed "in the future", kept one TTL.
            done(4, now + Duration::from_secs(3600), Some((Some(4), 73))),
        ],
        now,
    );
    assert_eq!(n, 3);
    let s = stats(&svc);
    assert_eq!((s.restored, s.stored, s.evicted), (3, 2, 1));
    assert_eq!(
        svc.clone().oneshot(req(3, ANSWER)).await,
        Err(IdempotencyError::CompletedBefore)
    );
    assert_eq!(
        svc.clone().oneshot(req(4, ANSWER)).await.unwrap(),
        (Some(4), 73)
    );
    assert_eq!(calls(&c), 0);
    // 3 expires 40 s on (what was left of its TTL), 4 after a whole TTL.
    tokio::time::advance(Duration::from_secs(40)).await;
    svc.clone().oneshot(req(3, ANSWER)).await.unwrap();
    assert_eq!(calls(&c), 1);
    // (the call for 3 took 10 ms)
    tokio::time::advance(Duration::from_millis(19_989)).await;
    assert_eq!(
        svc.clone().oneshot(req(4, ANSWER)).await.unwrap(),
        (Some(4), 73)
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    svc.clone().oneshot(req(4, ANSWER)).await.unwrap();
    assert_eq!(calls(&c), 2);
    let s = stats(&svc);
    assert_eq!((s.refused_completed, s.replayed), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn a_new_flight_refuses_a_key_restored_meanwhile() {
    // The second look in the store (see IK3) also sees restored keys.
    let (svc, c) = service(Duration::from_secs(60), 100, 100);
    let mut svc2 = svc.clone();
    std::future::poll_fn(|cx| svc2.poll_ready(cx))
        .await
        .unwrap();
    svc.restore([done(5, SystemTime::now(), None)], SystemTime::now());
    assert_eq!(
        svc2.call(req(5, ANSWER)).await,
        Err(IdempotencyError::CompletedBefore)
    );
    assert_eq!(calls(&c), 0);
}
