//! A response cache as a tower layer, on [moka](https://docs.rs/moka)
//! (feature `cache`).
//!
//! [`ResponseCache`] keeps successful responses by key for a time to live,
//! within a memory budget, and forgets them on demand by key or by tag.
//! [`CacheLayer`] puts it in front of a service: a request whose key is
//! cached is answered from the cache without reaching the service; any other
//! goes through, and its `Ok` response is stored with the tags the layer's
//! tag function gives it. Errors are never cached.
//!
//! ```
//! use std::time::Duration;
//! use tenlives_tokio::cache::ResponseCache;
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let cache = ResponseCache::<u32, String>::builder(Duration::from_secs(60), 1 << 20)
//!     .weigher(|_, v: &String| v.len() as u32)
//!     .build();
//! let layer = cache.layer(|user: &u32| Some(*user), |user: &u32, _: &String| vec![format!("user:{user}")]);
//! let mut svc = layer.layer(service_fn(|user: u32| async move { Ok::<_, ()>(format!("profile {user}")) }));
//! assert_eq!(svc.ready().await.unwrap().call(7).await.unwrap(), "profile 7"); // a miss
//! assert_eq!(svc.ready().await.unwrap().call(7).await.unwrap(), "profile 7"); // a hit
//! cache.invalidate_tag("user:7");
//! assert_eq!(svc.ready().await.unwrap().call(7).await.unwrap(), "profile 7"); // a miss again
//! let stats = cache.stats();
//! assert_eq!((stats.hits, stats.misses), (1, 2));
//! # }
//! ```
//!
//! # Why moka
//!
//! moka is a well-kept concurrent cache (a port of Java's Caffeine) that gives
//! what a response cache needs and is hard to get right alone: **TinyLFU
//! admission** (a frequency sketch decides whether a new entry is worth
//! evicting an old one, so a scan of one-off keys does not flush the popular
//! ones, which keeps the hit rate up under a memory budget), **size-aware
//! eviction** through a weigher (the budget is in bytes, not entries),
//! time-to-live, lock-free reads, and invalidation by predicate that `get`
//! honours at once. It has an async cache too (`moka::future`); this layer
//! uses the synchronous one, because neither a lookup nor an insertion ever
//! waits, and an awaited lookup would put a second future in every request.
//!
//! # Time, tags and invalidation
//!
//! - **TTL** is checked by this layer against its [`TokioClock`] (so it
//!   follows tokio's paused clock in tests, exactly): an entry older than its
//!   TTL is never returned. moka's own TTL is set to the same duration as a
//!   backstop that reclaims the memory of entries nobody asks for again.
//! - **Invalidation by tag** uses moka's `invalidate_entries_if`: from the
//!   moment the call returns, no tagged entry is returned (moka checks the
//!   predicate on `get`), and the memory is reclaimed by its maintenance.
//! - **A call in flight during an invalidation is not cached**: the layer
//!   notes an invalidation counter when a miss goes upstream and stores the
//!   response only if no invalidation (of any key or tag) happened since,
//!   since the response may predate what the invalidation announced; it
//!   reads the counter again after storing, and takes the entry back out if
//!   an invalidation slipped in between. This is conservative: any
//!   invalidation, even of another key, skips the misses in flight.
//!
//! # Cost
//!
//! A hit: the key function, one moka lookup (a hash and a lock-free read), a
//! clock reading, one `Arc` clone, a `Clone` of the response, two relaxed
//! counter increments; the layer allocates nothing unless the response's
//! `Clone` does (moka's maintenance, run on the calling thread about every
//! 128 reads, allocates now and then). A miss: one `Arc` clone into the response future, and on an
//! `Ok` the tags, one entry allocation and moka's insertion.
//!
//! # Panics
//!
//! The key, tag and weigher functions run in this layer's code, never inside
//! moka: a panic there reaches the caller and leaves the cache as it was (a
//! miss whose tag or weigher function panics is not stored).

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use moka::notification::RemovalCause;
use pin_project_lite::pin_project;
use tenlives_engine::time::{Clock, Timestamp};
use tower_layer::Layer;
use tower_service::Service;

use crate::clock::TokioClock;
use crate::span::{CallSpan, call_span};

/// Bytes an entry costs beyond what the weigher counts: the entry record and
/// moka's bookkeeping (an estimate: moka keeps a node, a deque link and a
/// hash-table slot per entry).
const ENTRY_OVERHEAD: u32 = 96;

/// One cached response.
struct Entry<V> {
    value: V,
    expires: Timestamp,
    tags: Box<[Box<str>]>,
    /// The weight the user's weigher gave (plus overhead), computed before
    /// the insertion so that moka's weigher cannot panic.
    weight: u32,
}

/// The cache's counters, for telemetry (cumulative, plus the current size).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that went upstream (absent or expired).
    pub misses: u64,
    /// Requests whose key function said "do not cache".
    pub bypassed: u64,
    /// Responses stored.
    pub inserts: u64,
    /// Responses not stored because an invalidation happened while their
    /// call was in flight.
    pub skipped_stale: u64,
    /// Entries evicted to keep within the memory budget (moka's admission
    /// may also refuse a new entry: that counts here too).
    pub evicted_for_size: u64,
    /// Entries removed because their TTL passed.
    pub expired: u64,
    /// Invalidation calls (by key, by tag, or all).
    pub invalidations: u64,
    /// Entries in the cache now (moka's estimate; exact after
    /// [`ResponseCache::run_pending_tasks`]).
    pub entries: u64,
    /// Their weight in bytes (as weighed, plus a per-entry overhead).
    pub weighted_bytes: u64,
}

impl CacheStats {
    /// Hits over hits plus misses (`0.0` before any lookup).
    pub fn hit_rate(&self) -> f64 {
        let lookups = self.hits + self.misses;
        if lookups == 0 {
            0.0
        } else {
            self.hits as f64 / lookups as f64
        }
    }
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    bypassed: AtomicU64,
    inserts: AtomicU64,
    skipped_stale: AtomicU64,
    evicted_for_size: AtomicU64,
    expired: AtomicU64,
    invalidations: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    // ordering: Relaxed; a statistics counter.
    counter.fetch_add(1, Ordering::Relaxed);
}

type Weigher<K, V> = Box<dyn Fn(&K, &V) -> u32 + Send + Sync>;

struct Shared<K, V> {
    cache: moka::sync::Cache<K, Arc<Entry<V>>>,
    ttl: Duration,
    clock: TokioClock,
    weigher: Weigher<K, V>,
    counters: Arc<Counters>,
    /// Bumped by every invalidation (see the module documentation).
    invalidation_epoch: AtomicU64,
}

/// A response cache with a TTL, a memory budget, and invalidation by key and
/// by tag. See the [module documentation](self). Cloning shares the cache.
pub struct ResponseCache<K, V> {
    shared: Arc<Shared<K, V>>,
}

impl<K, V> Clone for ResponseCache<K, V> {
    fn clone(&self) -> Self {
        ResponseCache {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K, V> fmt::Debug for ResponseCache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCache")
            .field("ttl", &self.shared.ttl)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Builds a [`ResponseCache`].
pub struct ResponseCacheBuilder<K, V> {
    ttl: Duration,
    max_bytes: u64,
    weigher: Weigher<K, V>,
    clock: Option<TokioClock>,
}

impl<K, V> fmt::Debug for ResponseCacheBuilder<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCacheBuilder")
            .field("ttl", &self.ttl)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl<K, V> ResponseCacheBuilder<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// How many bytes a response weighs (default: `size_of::<V>()`). A fixed
    /// overhead per entry is added to it, and the tags' length.
    pub fn weigher(mut self, weigher: impl Fn(&K, &V) -> u32 + Send + Sync + 'static) -> Self {
        self.weigher = Box::new(weigher);
        self
    }

    /// The clock the TTL is judged on (default: a [`TokioClock`] made at
    /// [`build`](Self::build)).
    pub fn clock(mut self, clock: TokioClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The cache.
    pub fn build(self) -> ResponseCache<K, V> {
        let counters = Arc::new(Counters::default());
        let listener = Arc::clone(&counters);
        let cache = moka::sync::Cache::builder()
            .max_capacity(self.max_bytes)
            .weigher(|_: &K, e: &Arc<Entry<V>>| e.weight)
            // moka refuses a TTL over 1000 years; such a TTL is "forever".
            .time_to_live(self.ttl.min(Duration::from_secs(1000 * 365 * 24 * 3600)))
            .support_invalidation_closures()
            .eviction_listener(move |_, _, cause| match cause {
                RemovalCause::Size => bump(&listener.evicted_for_size),
                RemovalCause::Expired => bump(&listener.expired),
                RemovalCause::Explicit | RemovalCause::Replaced => {}
            })
            .build();
        ResponseCache {
            shared: Arc::new(Shared {
                cache,
                ttl: self.ttl,
                clock: self.clock.unwrap_or_default(),
                weigher: self.weigher,
                counters,
                invalidation_epoch: AtomicU64::new(0),
            }),
        }
    }
}

impl<K, V> ResponseCache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A builder: entries live `ttl`, all of them weigh at most `max_bytes`.
    pub fn builder(ttl: Duration, max_bytes: u64) -> ResponseCacheBuilder<K, V> {
        ResponseCacheBuilder {
            ttl,
            max_bytes,
            weigher: Box::new(|_, _| u32::try_from(size_of::<V>()).unwrap_or(u32::MAX)),
            clock: None,
        }
    }

    /// The cached response for `key`, if present and younger than the TTL.
    /// Counts a hit or a miss.
    pub fn get(&self, key: &K) -> Option<V> {
        let s = &self.shared;
        match s.cache.get(key) {
            Some(entry) if s.clock.now() < entry.expires => {
                bump(&s.counters.hits);
                Some(entry.value.clone())
            }
            Some(_) => {
                // Past its TTL on our clock: gone (moka may not know yet).
                s.cache.invalidate(key);
                bump(&s.counters.expired);
                bump(&s.counters.misses);
                None
            }
            None => {
                bump(&s.counters.misses);
                None
            }
        }
    }

    /// Stores `value` for `key` with `tags`, for the TTL from now.
    pub fn insert(&self, key: K, value: V, tags: Vec<String>) {
        let s = &self.shared;
        let tag_bytes: usize = tags.iter().map(String::len).sum();
        let weight = (s.weigher)(&key, &value)
            .saturating_add(ENTRY_OVERHEAD)
            .saturating_add(u32::try_from(tag_bytes).unwrap_or(u32::MAX));
        let entry = Entry {
            value,
            expires: s.clock.now().saturating_add(s.ttl),
            tags: tags.into_iter().map(String::into_boxed_str).collect(),
            weight,
        };
        s.cache.insert(key, Arc::new(entry));
        bump(&s.counters.inserts);
    }

    /// Forgets `key`'s response.
    pub fn invalidate(&self, key: &K) {
        self.bump_epoch();
        self.shared.cache.invalidate(key);
    }

    /// Forgets every response tagged `tag`: none is returned after this
    /// call.
    pub fn invalidate_tag(&self, tag: &str) {
        self.bump_epoch();
        let tag: Box<str> = tag.into();
        self.shared
            .cache
            .invalidate_entries_if(move |_, e| e.tags.contains(&tag))
            .expect("the cache is built with invalidation closures");
    }

    /// Forgets every response.
    pub fn invalidate_all(&self) {
        self.bump_epoch();
        self.shared.cache.invalidate_all();
    }

    fn bump_epoch(&self) {
        bump(&self.shared.counters.invalidations);
        // ordering: SeqCst, with the SeqCst loads in `epoch`: an invalidator
        // bumps before it invalidates in moka, a miss loads again after it
        // inserts into moka. In the one order of SeqCst operations, either
        // that load follows the bump (the miss sees it and removes its
        // entry), or it precedes it, so the insertion precedes the
        // invalidation, which removes the entry (moka's map orders its own
        // insertions and removals).
        self.shared
            .invalidation_epoch
            .fetch_add(1, Ordering::SeqCst);
    }

    fn epoch(&self) -> u64 {
        // ordering: SeqCst; see `bump_epoch`.
        self.shared.invalidation_epoch.load(Ordering::SeqCst)
    }

    /// Runs moka's pending maintenance now (evictions, expirations,
    /// invalidations), making [`stats`](Self::stats) exact.
    pub fn run_pending_tasks(&self) {
        self.shared.cache.run_pending_tasks();
    }

    /// The counters and the current size.
    pub fn stats(&self) -> CacheStats {
        let c = &self.shared.counters;
        // ordering: Relaxed throughout; telemetry reads.
        CacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            bypassed: c.bypassed.load(Ordering::Relaxed),
            inserts: c.inserts.load(Ordering::Relaxed),
            skipped_stale: c.skipped_stale.load(Ordering::Relaxed),
            evicted_for_size: c.evicted_for_size.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
            entries: self.shared.cache.entry_count(),
            weighted_bytes: self.shared.cache.weighted_size(),
        }
    }

    /// A layer caching through this cache: `key_fn` gives a request's key
    /// (`None`: do not cache it), `tags_fn` a response's tags.
    pub fn layer<KF, TF>(&self, key_fn: KF, tags_fn: TF) -> CacheLayer<K, V, KF, TF> {
        CacheLayer {
            cache: self.clone(),
            key_fn: Arc::new(key_fn),
            tags_fn: Arc::new(tags_fn),
        }
    }

    /// The cache's counters as Prometheus metrics, labelled `cache="name"`,
    /// read at each scrape: register with
    /// `registry.register_collector(Box::new(cache.collector("name")))` (for
    /// example on [`Exporter::registry`](crate::telemetry::Exporter)'s
    /// registry, or one of your own).
    #[cfg(feature = "telemetry")]
    pub fn collector(&self, name: &str) -> CacheCollector<K, V> {
        CacheCollector {
            cache: self.clone(),
            name: name.into(),
        }
    }
}

/// The Prometheus collector of a [`ResponseCache`]'s counters (feature
/// `telemetry`): `tenlives_cache_hits_total`, `_misses_total`,
/// `_bypassed_total`, `_inserts_total`, `_skipped_stale_total`,
/// `_evicted_total`, `_expired_total`, `_invalidations_total`, and the gauges
/// `tenlives_cache_entries` and `tenlives_cache_bytes`.
#[cfg(feature = "telemetry")]
pub struct CacheCollector<K, V> {
    cache: ResponseCache<K, V>,
    name: Box<str>,
}

#[cfg(feature = "telemetry")]
impl<K, V> fmt::Debug for CacheCollector<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheCollector")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "telemetry")]
impl<K, V> prometheus_client::collector::Collector for CacheCollector<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let s = self.cache.stats();
        let labels = [("cache", &*self.name)];
        let counters = [
            (
                "tenlives_cache_hits",
                "Lookups answered from the cache",
                s.hits,
            ),
            (
                "tenlives_cache_misses",
                "Lookups that went upstream",
                s.misses,
            ),
            (
                "tenlives_cache_bypassed",
                "Requests not cacheable",
                s.bypassed,
            ),
            ("tenlives_cache_inserts", "Responses stored", s.inserts),
            (
                "tenlives_cache_skipped_stale",
                "Responses not stored: an invalidation happened during their call",
                s.skipped_stale,
            ),
            (
                "tenlives_cache_evicted",
                "Entries evicted or refused for the memory budget",
                s.evicted_for_size,
            ),
            (
                "tenlives_cache_expired",
                "Entries past their TTL",
                s.expired,
            ),
            (
                "tenlives_cache_invalidations",
                "Invalidations by key, tag or all",
                s.invalidations,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            let mut metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric.encode_family(&labels)?)?;
        }
        let gauges = [
            ("tenlives_cache_entries", "Entries in the cache", s.entries),
            (
                "tenlives_cache_bytes",
                "Weighed bytes in the cache",
                s.weighted_bytes,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let mut metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// A tower [`Layer`] answering from a [`ResponseCache`]. Made by
/// [`ResponseCache::layer`].
pub struct CacheLayer<K, V, KF, TF> {
    cache: ResponseCache<K, V>,
    key_fn: Arc<KF>,
    tags_fn: Arc<TF>,
}

impl<K, V, KF, TF> Clone for CacheLayer<K, V, KF, TF> {
    fn clone(&self) -> Self {
        CacheLayer {
            cache: self.cache.clone(),
            key_fn: Arc::clone(&self.key_fn),
            tags_fn: Arc::clone(&self.tags_fn),
        }
    }
}

impl<K, V, KF, TF> fmt::Debug for CacheLayer<K, V, KF, TF> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer").finish_non_exhaustive()
    }
}

impl<S, K, V, KF, TF> Layer<S> for CacheLayer<K, V, KF, TF> {
    type Service = CacheService<S, K, V, KF, TF>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service answering from a [`ResponseCache`]. Made by [`CacheLayer`].
pub struct CacheService<S, K, V, KF, TF> {
    inner: S,
    layer: CacheLayer<K, V, KF, TF>,
}

impl<S: Clone, K, V, KF, TF> Clone for CacheService<S, K, V, KF, TF> {
    fn clone(&self) -> Self {
        CacheService {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, K, V, KF, TF> fmt::Debug for CacheService<S, K, V, KF, TF> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, Req, K, V, KF, TF> Service<Req> for CacheService<S, K, V, KF, TF>
where
    S: Service<Req, Response = V>,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    KF: Fn(&Req) -> Option<K>,
    TF: Fn(&K, &V) -> Vec<String>,
{
    type Response = V;
    type Error = S::Error;
    type Future = CacheFuture<S::Future, K, V, TF>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let span = call_span!("tenlives.cache", "cache");
        let cache = &self.layer.cache;
        let Some(key) = (self.layer.key_fn)(&req) else {
            bump(&cache.shared.counters.bypassed);
            span.decided("bypass");
            let upstream = span.in_scope(|| self.inner.call(req));
            return CacheFuture::upstream(upstream, None, span);
        };
        if let Some(value) = cache.get(&key) {
            span.decided("hit");
            return CacheFuture::hit(value, span);
        }
        span.decided("miss");
        let store = Store {
            epoch: cache.epoch(),
            key,
            cache: cache.clone(),
            tags_fn: Arc::clone(&self.layer.tags_fn),
        };
        let upstream = span.in_scope(|| self.inner.call(req));
        CacheFuture::upstream(upstream, Some(store), span)
    }
}

/// What a miss needs to store its response.
struct Store<K, V, TF> {
    epoch: u64,
    key: K,
    cache: ResponseCache<K, V>,
    tags_fn: Arc<TF>,
}

pin_project! {
    /// The response future of [`CacheService`]: a cached response, or the
    /// wrapped service's call whose `Ok` response is stored.
    pub struct CacheFuture<F, K, V, TF> {
        #[pin]
        upstream: Option<F>,
        hit: Option<V>,
        store: Option<Store<K, V, TF>>,
        span: CallSpan,
    }
}

impl<F, K, V, TF> CacheFuture<F, K, V, TF> {
    fn hit(value: V, span: CallSpan) -> Self {
        CacheFuture {
            upstream: None,
            hit: Some(value),
            store: None,
            span,
        }
    }

    fn upstream(future: F, store: Option<Store<K, V, TF>>, span: CallSpan) -> Self {
        CacheFuture {
            upstream: Some(future),
            hit: None,
            store,
            span,
        }
    }
}

impl<F, K, V, TF> fmt::Debug for CacheFuture<F, K, V, TF> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheFuture")
            .field("hit", &self.hit.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, K, V, E, TF> Future for CacheFuture<F, K, V, TF>
where
    F: Future<Output = Result<V, E>>,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    TF: Fn(&K, &V) -> Vec<String>,
{
    type Output = Result<V, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let Some(upstream) = this.upstream.as_pin_mut() else {
            let value = this
                .hit
                .take()
                .expect("CacheFuture polled after completion");
            this.span.outcome("ok");
            return Poll::Ready(Ok(value));
        };
        let result = std::task::ready!(upstream.poll(cx));
        this.span.ended(&result);
        if let (Ok(value), Some(store)) = (&result, this.store.take()) {
            let tags = (store.tags_fn)(&store.key, value);
            let cache = &store.cache;
            if cache.epoch() == store.epoch {
                cache.insert(store.key.clone(), value.clone(), tags);
                // An invalidation between the check above and the insertion
                // may have missed the new entry: look again, and take it
                // back out if one happened.
                if cache.epoch() != store.epoch {
                    cache.shared.cache.invalidate(&store.key);
                    bump(&cache.shared.counters.skipped_stale);
                }
            } else {
                bump(&cache.shared.counters.skipped_stale);
            }
        }
        Poll::Ready(result)
    }
}
