//! The response cache layer: hits and misses, TTL on tokio's paused clock,
//! invalidation by key and by tag (also of a call in flight), the memory
//! budget, errors and uncacheable requests, panics in the key, tag and
//! weigher functions, and the Prometheus collector.
#![cfg(feature = "cache")]

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tenlives_tokio::cache::ResponseCache;
use tower::{Layer, Service, ServiceExt};

/// An upstream answering `"v{n}:{req}"` (n = its call count) after 10 ms, or
/// failing for requests above 1000.
#[derive(Clone, Default)]
struct Upstream {
    calls: Arc<AtomicUsize>,
}

impl Service<u32> for Upstream {
    type Response = String;
    type Error = &'static str;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<String, &'static str>> + Send>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: u32) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if req > 1000 {
                Err("upstream failed")
            } else {
                Ok(format!("v{n}:{req}"))
            }
        })
    }
}

fn tags(req: &u32, _: &String) -> Vec<String> {
    vec![format!("id:{req}"), format!("parity:{}", req % 2)]
}

fn cache(ttl_secs: u64) -> ResponseCache<u32, String> {
    ResponseCache::builder(Duration::from_secs(ttl_secs), 1 << 20)
        .weigher(|_, v: &String| v.len() as u32)
        .build()
}

async fn get<S: Service<u32, Response = String>>(
    svc: &mut S,
    req: u32,
) -> Result<String, S::Error> {
    svc.ready().await?.call(req).await
}

#[tokio::test(start_paused = true)]
async fn hits_skip_the_upstream_and_are_counted() {
    let cache = cache(60);
    let up = Upstream::default();
    let mut svc = cache.layer(|r: &u32| Some(*r), tags).layer(up.clone());
    assert_eq!(get(&mut svc, 1).await.unwrap(), "v1:1");
    let before = tokio::time::Instant::now();
    for _ in 0..9 {
        assert_eq!(get(&mut svc, 1).await.unwrap(), "v1:1");
    }
    assert_eq!(
        tokio::time::Instant::now(),
        before,
        "hits do not wait for the upstream"
    );
    assert_eq!(up.calls.load(Ordering::SeqCst), 1);
    let s = cache.stats();
    assert_eq!((s.hits, s.misses, s.inserts), (9, 1, 1));
    assert!((s.hit_rate() - 0.9).abs() < 1e-9);
}

#[tokio::test(start_paused = true)]
async fn entries_expire_after_the_ttl_on_the_paused_clock() {
    let cache = cache(5);
    let up = Upstream::default();
    let mut svc = cache.layer(|r: &u32| Some(*r), tags).layer(up.clone());
    assert_eq!(get(&mut svc, 3).await.unwrap(), "v1:3");
    tokio::time::sleep(Duration::from_millis(4_980)).await;
    assert_eq!(
        get(&mut svc, 3).await.unwrap(),
        "v1:3",
        "younger than the TTL"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        get(&mut svc, 3).await.unwrap(),
        "v2:3",
        "expired at exactly the TTL"
    );
    let s = cache.stats();
    assert_eq!((s.hits, s.misses, s.expired), (1, 2, 1));
}

#[tokio::test(start_paused = true)]
async fn invalidation_by_key_and_by_tag() {
    let cache = cache(60);
    let up = Upstream::default();
    let mut svc = cache.layer(|r: &u32| Some(*r), tags).layer(up.clone());
    for r in 1..=4 {
        get(&mut svc, r).await.unwrap();
    }
    cache.invalidate(&1);
    assert_eq!(get(&mut svc, 1).await.unwrap(), "v5:1");
    assert_eq!(get(&mut svc, 2).await.unwrap(), "v2:2", "others stay");
    cache.invalidate_tag("parity:0");
    assert_eq!(get(&mut svc, 2).await.unwrap(), "v6:2");
    assert_eq!(get(&mut svc, 4).await.unwrap(), "v7:4");
    assert_eq!(get(&mut svc, 3).await.unwrap(), "v3:3", "odd ones stay");
    cache.invalidate_all();
    assert_eq!(get(&mut svc, 3).await.unwrap(), "v8:3");
    assert_eq!(cache.stats().invalidations, 3);
}

#[tokio::test(start_paused = true)]
async fn a_call_in_flight_during_an_invalidation_is_not_cached() {
    let cache = cache(60);
    let up = Upstream::default();
    let mut svc = cache.layer(|r: &u32| Some(*r), tags).layer(up.clone());
    let in_flight = svc.ready().await.unwrap().call(8);
    cache.invalidate_tag("id:8");
    assert_eq!(in_flight.await.unwrap(), "v1:8");
    assert_eq!(
        get(&mut svc, 8).await.unwrap(),
        "v2:8",
        "the earlier answer was not kept"
    );
    assert_eq!(get(&mut svc, 8).await.unwrap(), "v2:8");
    assert_eq!(cache.stats().skipped_stale, 1);
}

#[tokio::test(start_paused = true)]
async fn errors_and_uncacheable_requests_go_upstream_every_time() {
    let cache = cache(60);
    let up = Upstream::default();
    let mut svc = cache
        .layer(|r: &u32| (*r != 7).then_some(*r), tags)
        .layer(up.clone());
    for _ in 0..3 {
        assert!(get(&mut svc, 2000).await.is_err());
        get(&mut svc, 7).await.unwrap();
    }
    assert_eq!(up.calls.load(Ordering::SeqCst), 6);
    let s = cache.stats();
    assert_eq!((s.misses, s.bypassed, s.inserts), (3, 3, 0));
}

#[tokio::test(start_paused = true)]
async fn the_memory_budget_holds() {
    // 64 KiB; entries of about 4 KiB each (plus overhead): at most ~15 fit.
    let budget = 64 * 1024;
    let cache = ResponseCache::<u32, Arc<[u8]>>::builder(Duration::from_secs(60), budget)
        .weigher(|_, v: &Arc<[u8]>| v.len() as u32)
        .build();
    let mut svc = cache
        .layer(|r: &u32| Some(*r), |_: &u32, _: &Arc<[u8]>| Vec::new())
        .layer(tower::service_fn(|_: u32| async {
            Ok::<_, ()>(Arc::<[u8]>::from(vec![0u8; 4096]))
        }));
    for round in 0..3 {
        for r in 0..200u32 {
            let _ = svc.ready().await.unwrap().call(r + round).await;
        }
    }
    cache.run_pending_tasks();
    let s = cache.stats();
    assert!(s.weighted_bytes <= budget, "{s:?}");
    assert!(s.entries <= 16 && s.entries > 0, "{s:?}");
    assert!(s.evicted_for_size > 0, "{s:?}");
}

/// The key, tag and weigher functions panicking: the panic reaches the
/// caller, nothing is stored, and the cache works afterwards.
#[tokio::test(start_paused = true)]
async fn panics_in_the_key_tag_and_weigher_functions() {
    static KEY: AtomicBool = AtomicBool::new(false);
    static TAGS: AtomicBool = AtomicBool::new(false);
    static WEIGH: AtomicBool = AtomicBool::new(false);
    let cache = ResponseCache::<u32, String>::builder(Duration::from_secs(60), 1 << 20)
        .weigher(|_, v: &String| {
            assert!(!WEIGH.load(Ordering::SeqCst), "weigher panics");
            v.len() as u32
        })
        .build();
    let up = Upstream::default();
    let mut svc = cache
        .layer(
            |r: &u32| {
                assert!(!KEY.load(Ordering::SeqCst), "key function panics");
                Some(*r)
            },
            |r: &u32, v: &String| {
                assert!(!TAGS.load(Ordering::SeqCst), "tag function panics");
                tags(r, v)
            },
        )
        .layer(up.clone());
    for flag in [&KEY, &TAGS, &WEIGH] {
        flag.store(true, Ordering::SeqCst);
        let svc = &mut svc;
        let run = catch_unwind(AssertUnwindSafe(|| {
            let mut fut = Box::pin(svc.call(5));
            let mut cx = Context::from_waker(Waker::noop());
            let _ = fut.as_mut().poll(&mut cx);
            fut
        }));
        match run {
            Err(_) => {} // the key function, in `call`
            Ok(fut) => {
                // Complete the call: the panic comes at the response.
                tokio::time::sleep(Duration::from_millis(10)).await;
                let mut fut = fut;
                let r = catch_unwind(AssertUnwindSafe(|| {
                    fut.as_mut().poll(&mut Context::from_waker(Waker::noop()))
                }));
                assert!(r.is_err());
            }
        }
        flag.store(false, Ordering::SeqCst);
        assert_eq!(cache.stats().inserts, 0, "nothing was stored");
    }
    let n = up.calls.load(Ordering::SeqCst);
    let first = get(&mut svc, 5).await.unwrap();
    assert_eq!(
        get(&mut svc, 5).await.unwrap(),
        first,
        "the cache works afterwards"
    );
    assert_eq!(up.calls.load(Ordering::SeqCst), n + 1);
}

#[cfg(feature = "telemetry")]
#[tokio::test(start_paused = true)]
async fn the_collector_exports_hits_misses_and_memory() {
    let cache = cache(60);
    let mut svc = cache
        .layer(|r: &u32| Some(*r), tags)
        .layer(Upstream::default());
    for _ in 0..4 {
        get(&mut svc, 1).await.unwrap();
    }
    cache.run_pending_tasks();
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(cache.collector("profiles")));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("tenlives_cache_hits_total{cache=\"profiles\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("tenlives_cache_misses_total{cache=\"profiles\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tenlives_cache_entries{cache=\"profiles\"} 1"),
        "{text}"
    );
    let s: tenlives_tokio::cache::CacheStats = cache.stats();
    assert!(text.contains(&format!(
        "tenlives_cache_bytes{{cache=\"profiles\"}} {}",
        s.weighted_bytes
    )));
    assert!(s.weighted_bytes > 0);
}
