//! The single-flight layer: concurrent requests with equal keys share one
//! upstream call; a dropped driver hands the call (the same upstream future)
//! to a follower; a panic anywhere in user code reaches the code that ran it
//! and every other caller as `CoalesceError::Panicked`, never a hang; every
//! request is answered exactly once.

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tenlives_tokio::{CoalesceError, CoalesceLayer};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// What the upstream does for one call.
#[derive(Clone, Copy, Debug)]
enum Script {
    /// Answers `key * 10` after `steps` sleeps of 10 ms each.
    Answer { steps: u32 },
    /// Sleeps `steps` times, then panics in `poll`.
    PanicAfter { steps: u32 },
    /// Fails after one sleep.
    Fail,
}

/// Counts what the upstream saw: calls made, futures dropped before or after
/// completing, sleeps polled.
#[derive(Default, Debug)]
struct Counters {
    calls: AtomicUsize,
    dropped_unfinished: AtomicUsize,
    finished: AtomicUsize,
    steps: AtomicUsize,
}

#[derive(Clone)]
struct Upstream(Arc<Counters>);

struct Tracked {
    counters: Arc<Counters>,
    done: bool,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let c = if self.done {
            &self.counters.finished
        } else {
            &self.counters.dropped_unfinished
        };
        c.fetch_add(1, Ordering::SeqCst);
    }
}

type Reply = Pin<Box<dyn Future<Output = Result<u64, &'static str>> + Send>>;

impl Service<(u64, Script)> for Upstream {
    type Response = u64;
    type Error = &'static str;
    type Future = Reply;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (key, script): (u64, Script)) -> Reply {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        let tracked = Tracked {
            counters: Arc::clone(&self.0),
            done: false,
        };
        Box::pin(async move {
            let mut tracked = tracked;
            let (steps, panics) = match script {
                Script::Answer { steps } => (steps, false),
                Script::PanicAfter { steps } => (steps, true),
                Script::Fail => (1, false),
            };
            for _ in 0..steps {
                tokio::time::sleep(Duration::from_millis(10)).await;
                tracked.counters.steps.fetch_add(1, Ordering::SeqCst);
            }
            if panics {
                panic!("upstream future panics");
            }
            tracked.done = true;
            drop(tracked);
            if let Script::Fail = script {
                return Err("upstream failed");
            }
            Ok(key * 10)
        })
    }
}

fn key_of(req: &(u64, Script)) -> u64 {
    req.0
}

fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    Pin::new(f).poll(&mut cx)
}

/// Lets the paused clock and the spawned tasks run until nothing is left to do.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn many_followers_share_one_call_and_all_answer() {
    let counters = Arc::new(Counters::default());
    let svc = CoalesceLayer::new(key_of).layer(Upstream(Arc::clone(&counters)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..1000u64 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            // Keys 1 and 2, interleaved: two flights.
            let r = svc.oneshot((1 + i % 2, Script::Answer { steps: 3 })).await;
            (i, r, Instant::now())
        }));
    }
    for t in tasks {
        let (i, r, at) = t.await.unwrap();
        assert_eq!(r, Ok((1 + i % 2) * 10));
        assert_eq!(
            at - start,
            Duration::from_millis(30),
            "no caller waits longer than the call"
        );
    }
    assert_eq!(counters.calls.load(Ordering::SeqCst), 2);
    assert_eq!(counters.finished.load(Ordering::SeqCst), 2);
    assert_eq!(svc.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_finished_flight_is_not_a_cache() {
    let counters = Arc::new(Counters::default());
    let svc = CoalesceLayer::new(key_of).layer(Upstream(Arc::clone(&counters)));
    for _ in 0..3 {
        let r = svc.clone().oneshot((4, Script::Answer { steps: 1 })).await;
        assert_eq!(r, Ok(40));
    }
    assert_eq!(counters.calls.load(Ordering::SeqCst), 3);
    // Errors are shared too.
    let (a, b) = tokio::join!(
        svc.clone().oneshot((5, Script::Fail)),
        svc.clone().oneshot((5, Script::Fail))
    );
    assert_eq!(a, Err(CoalesceError::Upstream("upstream failed")));
    assert_eq!(b, Err(CoalesceError::Upstream("upstream failed")));
    assert_eq!(counters.calls.load(Ordering::SeqCst), 4);
}

/// The driver dropped at each of the call's awaits (before its first poll,
/// and after 0..=2 of its 3 sleeps): the follower finishes the same upstream
/// future (no second call, no step repeated) at the time the call would have
/// finished anyway.
#[tokio::test(start_paused = true)]
async fn dropping_the_driver_at_every_await_hands_the_call_over() {
    for drop_after_steps in [None, Some(0), Some(1), Some(2)] {
        let counters = Arc::new(Counters::default());
        let mut svc = CoalesceLayer::new(key_of).layer(Upstream(Arc::clone(&counters)));
        let start = Instant::now();
        let mut leader = svc.call((7, Script::Answer { steps: 3 }));
        let follower = tokio::spawn(svc.clone().oneshot((7, Script::Answer { steps: 3 })));
        settle().await;
        if let Some(steps) = drop_after_steps {
            assert!(poll_once(&mut leader).is_pending());
            while counters.steps.load(Ordering::SeqCst) < steps as usize {
                tokio::time::sleep(Duration::from_millis(1)).await;
                assert!(poll_once(&mut leader).is_pending());
            }
        }
        drop(leader);
        let r = tokio::time::timeout(Duration::from_secs(5), follower)
            .await
            .expect("the follower took the call over")
            .unwrap();
        assert_eq!(r, Ok(70), "{drop_after_steps:?}");
        assert_eq!(
            Instant::now() - start,
            Duration::from_millis(30),
            "{drop_after_steps:?}: the call continued, it was not re-issued"
        );
        assert_eq!(counters.calls.load(Ordering::SeqCst), 1);
        assert_eq!(counters.steps.load(Ordering::SeqCst), 3);
        assert_eq!(counters.finished.load(Ordering::SeqCst), 1);
        assert_eq!(counters.dropped_unfinished.load(Ordering::SeqCst), 0);
        assert_eq!(svc.in_flight(), 0);
    }
}

/// Followers dropped at each await leave the leader's answer untouched; the
/// last caller to leave cancels the upstream call and empties the table.
#[tokio::test(start_paused = true)]
async fn dropping_every_caller_cancels_the_call() {
    for drop_after_steps in [0u32, 1, 2] {
        let counters = Arc::new(Counters::default());
        let mut svc = CoalesceLayer::new(key_of).layer(Upstream(Arc::clone(&counters)));
        let mut leader = svc.call((3, Script::Answer { steps: 3 }));
        let mut follower = svc.call((3, Script::Answer { steps: 3 }));
        assert!(poll_once(&mut follower).is_pending());
        assert!(poll_once(&mut leader).is_pending());
        while counters.steps.load(Ordering::SeqCst) < drop_after_steps as usize {
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(poll_once(&mut leader).is_pending());
        }
        drop(follower);
        assert_eq!(svc.in_flight(), 1);
        assert_eq!(counters.dropped_unfinished.load(Ordering::SeqCst), 0);
        drop(leader);
        assert_eq!(svc.in_flight(), 0);
        assert_eq!(counters.dropped_unfinished.load(Ordering::SeqCst), 1);
        // The next request for the key makes a new call.
        let r = svc.clone().oneshot((3, Script::Answer { steps: 1 })).await;
        assert_eq!(r, Ok(30));
        assert_eq!(counters.calls.load(Ordering::SeqCst), 2);
    }
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_the_drivers_future_reaches_every_follower() {
    for steps in [0u32, 2] {
        let counters = Arc::new(Counters::default());
        let mut svc = CoalesceLayer::new(key_of).layer(Upstream(Arc::clone(&counters)));
        // The leader drives (it made the call); the followers join before
        // its first poll.
        let leader = svc.call((9, Script::PanicAfter { steps }));
        let followers: Vec<_> = (0..10)
            .map(|_| svc.call((9, Script::PanicAfter { steps })))
            .collect();
        let leader = tokio::spawn(leader);
        let followers: Vec<_> = followers.into_iter().map(tokio::spawn).collect();
        let err = leader.await.unwrap_err();
        assert!(err.is_panic(), "the panic reaches the driver's caller");
        for f in followers {
            assert_eq!(f.await.unwrap(), Err(CoalesceError::Panicked));
        }
        assert_eq!(counters.calls.load(Ordering::SeqCst), 1);
        assert_eq!(svc.in_flight(), 0);
        // The key is usable again.
        let r = svc.clone().oneshot((9, Script::Answer { steps: 1 })).await;
        assert_eq!(r, Ok(90));
    }
}

/// After a handoff, the follower that drives is the one whose poll panics;
/// the others get `Panicked`.
#[tokio::test(start_paused = true)]
async fn a_panic_while_a_follower_drives_reaches_the_others() {
    let counters = Arc::new(Counters::default());
    let mut svc = CoalesceLayer::new(key_of).layer(Upstream(Arc::clone(&counters)));
    let mut leader = svc.call((2, Script::PanicAfter { steps: 2 }));
    assert!(poll_once(&mut leader).is_pending());
    let mut a = svc.call((2, Script::PanicAfter { steps: 2 }));
    let mut b = svc.call((2, Script::PanicAfter { steps: 2 }));
    assert!(poll_once(&mut a).is_pending());
    assert!(poll_once(&mut b).is_pending());
    drop(leader);
    assert!(poll_once(&mut a).is_pending(), "a drives now");
    assert!(poll_once(&mut b).is_pending(), "b waits");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(poll_once(&mut a).is_pending(), "the second sleep");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let panicked = catch_unwind(AssertUnwindSafe(|| poll_once(&mut a)));
    assert!(panicked.is_err());
    assert_eq!(poll_once(&mut b), Poll::Ready(Err(CoalesceError::Panicked)));
    drop(a);
    assert_eq!(svc.in_flight(), 0);
    assert_eq!(counters.calls.load(Ordering::SeqCst), 1);
}

/// A panic in the wrapped service's `call`, with followers joining while the
/// leader is inside it (on another thread): they answer `Panicked`.
#[test]
fn a_panic_in_call_reaches_followers_that_joined_during_it() {
    struct Gate {
        entered: std::sync::Barrier,
        joined: std::sync::Barrier,
    }
    #[derive(Clone)]
    struct Blocking(Arc<Gate>);
    impl Service<u64> for Blocking {
        type Response = u64;
        type Error = &'static str;
        type Future = std::future::Ready<Result<u64, &'static str>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, key: u64) -> Self::Future {
            if key == 1 {
                self.0.entered.wait();
                self.0.joined.wait();
                panic!("call panics with a follower waiting");
            }
            std::future::ready(Ok(key))
        }
    }
    let gate = Arc::new(Gate {
        entered: std::sync::Barrier::new(2),
        joined: std::sync::Barrier::new(2),
    });
    let svc = CoalesceLayer::new(|k: &u64| *k).layer(Blocking(Arc::clone(&gate)));
    let mut leader_svc = svc.clone();
    let leader = std::thread::spawn(move || {
        catch_unwind(AssertUnwindSafe(|| drop(leader_svc.call(1)))).is_err()
    });
    gate.entered.wait();
    let mut follower = svc.clone().call(1);
    assert!(poll_once(&mut follower).is_pending());
    gate.joined.wait();
    assert!(leader.join().unwrap(), "the panic reached the leader");
    assert_eq!(
        poll_once(&mut follower),
        Poll::Ready(Err(CoalesceError::Panicked))
    );
    assert_eq!(svc.in_flight(), 0);
    assert_eq!(
        poll_once(&mut svc.clone().call(2)),
        Poll::Ready(Ok(2)),
        "the service still works"
    );
}

/// A key whose `Clone`, `Hash` or `Eq` panics on the n-th use across all
/// keys (counted down in `FUSE`), to fail at every point of the table's code.
#[derive(Debug)]
struct FusedKey(u64);

static FUSE: AtomicUsize = AtomicUsize::new(usize::MAX);

fn burn() {
    if FUSE
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1))
        .is_ok_and(|f| f == 1)
    {
        panic!("key panics");
    }
}

impl Clone for FusedKey {
    fn clone(&self) -> Self {
        burn();
        FusedKey(self.0)
    }
}
impl Hash for FusedKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        burn();
        self.0.hash(h);
    }
}
impl PartialEq for FusedKey {
    fn eq(&self, other: &Self) -> bool {
        burn();
        self.0 == other.0
    }
}
impl Eq for FusedKey {}

/// For each n, the n-th use of a key's `Clone`/`Hash`/`Eq` panics, while a
/// flight for the same key is in progress and another request comes in:
/// the panic reaches only the caller whose code ran it, the flight in
/// progress still answers its callers, and the key works afterwards.
#[tokio::test(start_paused = true)]
async fn panics_in_the_keys_clone_hash_and_eq_never_hang() {
    static KEY_FN_PANICS: AtomicBool = AtomicBool::new(false);
    let mut panics_seen = 0;
    for n in 1..=12 {
        let counters = Arc::new(Counters::default());
        let mut svc = CoalesceLayer::new(|r: &(u64, Script)| {
            if KEY_FN_PANICS.load(Ordering::SeqCst) {
                panic!("key closure panics");
            }
            FusedKey(r.0)
        })
        .layer(Upstream(Arc::clone(&counters)));
        // A flight in progress for key 1 (built with the fuse off).
        FUSE.store(usize::MAX, Ordering::SeqCst);
        let mut first = svc.call((1, Script::Answer { steps: 1 }));
        assert!(poll_once(&mut first).is_pending());
        // The n-th key operation of the next two requests panics.
        FUSE.store(n, Ordering::SeqCst);
        let mut joined = Vec::new();
        for _ in 0..2 {
            match catch_unwind(AssertUnwindSafe(|| {
                svc.call((1, Script::Answer { steps: 1 }))
            })) {
                Ok(f) => joined.push(f),
                Err(_) => panics_seen += 1,
            }
        }
        FUSE.store(usize::MAX, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(poll_once(&mut first), Poll::Ready(Ok(10)), "n = {n}");
        for mut f in joined {
            // Joined the first flight, or (after a panic lost its entry)
            // made a call of its own.
            let r = match poll_once(&mut f) {
                Poll::Ready(r) => r,
                Poll::Pending => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    poll_once(&mut f).into_ready()
                }
            };
            assert_eq!(r, Ok(10), "n = {n}");
        }
        // The key closure panicking takes nothing either.
        KEY_FN_PANICS.store(true, Ordering::SeqCst);
        assert!(catch_unwind(AssertUnwindSafe(|| svc.call((1, Script::Fail)))).is_err());
        KEY_FN_PANICS.store(false, Ordering::SeqCst);
        let r = svc.clone().oneshot((1, Script::Answer { steps: 1 })).await;
        assert_eq!(r, Ok(10), "n = {n}: the key works afterwards");
        assert_eq!(svc.in_flight(), 0, "n = {n}");
    }
    assert!(
        panics_seen >= 6,
        "the fuse reached the table's code: {panics_seen}"
    );
}

trait IntoReady<T> {
    fn into_ready(self) -> T;
}
impl<T> IntoReady<T> for Poll<T> {
    fn into_ready(self) -> T {
        match self {
            Poll::Ready(t) => t,
            Poll::Pending => panic!("still pending"),
        }
    }
}

/// A response whose `Clone` panics once: the follower cloning it gets the
/// panic, every other caller its answer.
#[tokio::test(start_paused = true)]
async fn a_panic_in_the_responses_clone_reaches_only_its_caller() {
    static CLONE_PANICS: AtomicBool = AtomicBool::new(false);
    #[derive(Debug, PartialEq)]
    struct Resp(u64);
    impl Clone for Resp {
        fn clone(&self) -> Self {
            if CLONE_PANICS.swap(false, Ordering::SeqCst) {
                panic!("response clone panics");
            }
            Resp(self.0)
        }
    }
    let mut svc = CoalesceLayer::new(|k: &u64| *k).layer(tower::service_fn(|k: u64| async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok::<_, &'static str>(Resp(k))
    }));
    let mut calls: Vec<_> = (0..4).map(|_| svc.call(6)).collect();
    for c in &mut calls {
        assert!(poll_once(c).is_pending());
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    CLONE_PANICS.store(true, Ordering::SeqCst);
    // The leader drives and clones (3 others left).
    assert!(catch_unwind(AssertUnwindSafe(|| poll_once(&mut calls[0]))).is_err());
    drop(calls.remove(0));
    for c in &mut calls {
        assert_eq!(poll_once(c), Poll::Ready(Ok(Resp(6))));
    }
    assert_eq!(svc.in_flight(), 0);
}

/// Many tasks on a multi-threaded runtime, few keys, a third of the callers
/// cancelled at random points: every request that was not cancelled is
/// answered exactly once with its key's value, no task hangs, the upstream
/// sees at most one call per request, and the table ends empty.
#[test]
fn stress_every_request_is_answered_exactly_once() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let counters = Arc::new(Counters::default());
    let svc = CoalesceLayer::new(key_of).layer(Upstream(Arc::clone(&counters)));
    let answered = Arc::new(AtomicUsize::new(0));
    let cancelled = Arc::new(AtomicUsize::new(0));
    const REQUESTS: u64 = 4000;
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..REQUESTS {
            let svc = svc.clone();
            let answered = Arc::clone(&answered);
            let cancelled = Arc::clone(&cancelled);
            tasks.push(tokio::spawn(async move {
                let key = i % 7;
                let steps = (i % 3) as u32;
                let call = svc.oneshot((key, Script::Answer { steps }));
                let r = if i % 3 == 0 {
                    // Cancelled after a pseudo-random 0..25 ms.
                    let after = Duration::from_millis((i * 7919) % 25);
                    tokio::time::timeout(after, call).await.ok()
                } else {
                    Some(call.await)
                };
                match r {
                    Some(r) => {
                        assert_eq!(r, Ok(key * 10));
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                    None => {
                        cancelled.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
            if i % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let all = async {
            for t in tasks {
                t.await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(60), all)
            .await
            .expect("no caller hangs");
    });
    let answered = answered.load(Ordering::SeqCst);
    let cancelled = cancelled.load(Ordering::SeqCst);
    assert_eq!(answered + cancelled, REQUESTS as usize);
    assert!(answered >= (REQUESTS as usize) * 2 / 3);
    let calls = counters.calls.load(Ordering::SeqCst);
    assert!(calls < REQUESTS as usize, "coalesced: {calls} calls");
    assert_eq!(
        counters.finished.load(Ordering::SeqCst)
            + counters.dropped_unfinished.load(Ordering::SeqCst),
        calls,
        "every upstream future ended"
    );
    assert_eq!(svc.in_flight(), 0);
}
