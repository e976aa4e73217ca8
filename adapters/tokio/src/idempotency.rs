//! Idempotency keys as a tower layer.
//!
//! [`IdempotencyLayer`] gives requests an idempotency key (a closure over the
//! request, say reading an `Idempotency-Key` header; `None` for a request
//! without one). For a keyed request:
//!
//! - **a duplicate while the first is in flight** does not reach the wrapped
//!   service: it waits for the first call and receives a clone of its result
//!   (errors too);
//! - **a duplicate after the first completed, within the TTL**, receives a
//!   clone of the stored response, without calling the wrapped service;
//! - **after the TTL** (or after its entry was evicted, see below) the key
//!   is new again.
//!
//! Requests without a key pass through, never shared and never stored.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::time::Duration;
//! use tenlives_tokio::idempotency::{IdempotencyConfig, IdempotencyLayer};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let counted = Arc::clone(&calls);
//! // The request: (idempotency key, amount to charge).
//! let upstream = service_fn(move |(_, amount): (Option<String>, u32)| {
//!     let n = counted.fetch_add(1, Ordering::Relaxed);
//!     async move { Ok::<_, &'static str>(format!("charge #{n}: {amount}")) }
//! });
//! let config = IdempotencyConfig::new(Duration::from_secs(3600), 10_000, 1_000);
//! let svc = IdempotencyLayer::new(|(key, _): &(Option<String>, u32)| key.clone(), config)
//!     .layer(upstream);
//! let first = svc.clone().oneshot((Some("k1".into()), 5)).await.unwrap();
//! let retry = svc.clone().oneshot((Some("k1".into()), 5)).await.unwrap();
//! assert_eq!(first, retry); // the stored response, not a second charge
//! assert_eq!(calls.load(Ordering::Relaxed), 1);
//! # }
//! ```
//!
//! # What is reused
//!
//! The in-flight half is the crate's single flight ([`crate::coalesce`]): the
//! wrapped service sits inside a [`CoalesceService`], so a duplicate in
//! flight joins the first call exactly as coalesced requests do, with the
//! same cancellation (a first caller dropped mid-call hands the call over to
//! a waiting duplicate; the call is dropped only when every caller has gone)
//! and the same panic handling (the panic reaches the caller whose code ran
//! it, every other caller answers [`IdempotencyError::Panicked`]). Time is
//! the crate's [`TokioClock`], so the TTL follows tokio's paused clock in
//! tests.
//!
//! The completed half is *not* the moka response cache (`cache` module,
//! feature `cache`), on purpose: moka's TinyLFU admission may refuse to store
//! a new entry, and its eviction order is by frequency. A response cache can
//! afford that (a refused entry is one more upstream call); an idempotency
//! store cannot (a refused entry lets a duplicate charge twice), and what is
//! evicted at the cap must be stated exactly. The store here is a map plus a
//! queue in completion order: every entry has the same TTL, so the oldest
//! completed entry is also the first to expire, and both expiry and eviction
//! pop the front of the queue.
//!
//! # No duplicate slips between "in flight" and "stored"
//!
//! A completed call stores its response *before* its flight leaves the
//! single-flight table (the store is written inside the wrapped future's
//! last poll, which the flight runs before removing itself). A request that
//! finds no flight starts one, and the new flight looks in the store again
//! before calling the wrapped service. Either the request found the old
//! flight (and joins it), or the old flight had left the table, so its
//! response was already stored and the new flight answers from the store.
//! So, while a key's response is stored, the wrapped service is called at
//! most once for it.
//!
//! # Memory and what happens at the caps
//!
//! [`IdempotencyConfig`] bounds both halves, in entries:
//!
//! - **stored responses** (`max_stored`): storing one more evicts the oldest
//!   completed entry (expired ones go first). An evicted key is new again: a
//!   later duplicate calls the wrapped service. `max_stored = 0` stores
//!   nothing (duplicates in flight are still shared);
//! - **keys in flight** (`max_in_flight`): in-flight entries are never
//!   evicted. A request with a *new* key while `max_in_flight` keyed calls
//!   are in flight is refused with [`IdempotencyError::InFlightFull`] without
//!   calling the wrapped service (and so are duplicates that joined that
//!   refused request meanwhile). A duplicate of a key in flight always joins.
//!
//! Each entry holds the key and, stored, a response (the single flight holds
//! the wrapped future while in flight), so memory is at most `max_stored`
//! keys and responses plus `max_in_flight` keys and futures, plus requests
//! without a key (each in flight on its own, uncounted).
//!
//! # Errors are not stored
//!
//! Only `Ok` responses are stored: a first request that failed (or was
//! refused, or panicked, or was cancelled by every caller) stores nothing,
//! and a retry with the same key calls the wrapped service again. Duplicates
//! that were waiting on the failed call receive its error (a clone). A
//! response that should count as a failure (an HTTP 5xx, say) can be kept
//! out of the store with [`IdempotencyConfig::store_if`].
//!
//! The response and the error must be `Clone`; wrap a non-`Clone` error in
//! an `Arc` with `map_err`.
//!
//! # Panics
//!
//! A panic in the key closure reaches the caller and takes nothing. A panic
//! in the wrapped service's `call`, in its future, in the response's `Clone`
//! when it is stored, or in the `store_if` predicate reaches the caller
//! whose code ran it, releases the in-flight entry, stores nothing, and every
//! duplicate waiting on it answers [`IdempotencyError::Panicked`]. A panic in
//! the response's `Clone` on a stored hit reaches that caller (and, when it
//! happens on a new flight's second look in the store, the duplicates that
//! joined that flight answer `Panicked`). The
//! store's lock ignores poisoning: every critical section leaves it
//! consistent wherever user code (`Clone`, `Hash`, `Eq`) can panic.
//!
//! # Across restarts
//!
//! The store lives in memory. To keep refusing duplicates after a restart,
//! give the service a [`CompletionLog`]
//! ([`IdempotencyService::set_completion_log`]): every response about to be
//! stored is handed to it first, with its key and the wall-clock time, so
//! no caller (not even a duplicate's replay) sees a response the log was
//! not handed. On start, [`IdempotencyService::restore`] puts the keys read
//! back from the log into the store for what is left of their TTL (judged
//! on the wall clock): a duplicate gets the kept response, or
//! [`IdempotencyError::CompletedBefore`] when the log kept only the key.
//! `tenlives_ops::journal::CompletionJournal` is such a log over the
//! decision journal, and `tenlives_ops::journal::read_completions` reads
//! it back (this crate does not depend on that one).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use pin_project_lite::pin_project;
use tenlives_engine::time::{Clock, Timestamp};
use tower_layer::Layer;
use tower_service::Service;

use crate::clock::TokioClock;
use crate::coalesce::{CoalesceError, CoalesceFuture, CoalesceLayer, CoalesceService};
use crate::span::{CallSpan, call_span};

/// The error of an idempotent call.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdempotencyError<E> {
    /// The wrapped service answered with this error (a duplicate that waited
    /// on the call receives a clone). Not stored.
    Upstream(E),
    /// The call panicked while another caller was running it (in the wrapped
    /// service's `call`, its future, or storing its response). The panic
    /// itself reached that caller.
    Panicked,
    /// The request's key was new and `max_in_flight` keyed calls were in
    /// flight: refused without calling the wrapped service.
    InFlightFull,
    /// The request's key completed before (restored with
    /// [`IdempotencyService::restore`], younger than the TTL) but its
    /// response was not kept: refused without calling the wrapped service.
    CompletedBefore,
}

impl<E> IdempotencyError<E> {
    /// The wrapped service's error, if it was one.
    pub fn into_upstream(self) -> Option<E> {
        match self {
            IdempotencyError::Upstream(e) => Some(e),
            IdempotencyError::Panicked
            | IdempotencyError::InFlightFull
            | IdempotencyError::CompletedBefore => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for IdempotencyError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdempotencyError::Upstream(e) => write!(f, "{e}"),
            IdempotencyError::Panicked => f.write_str("the idempotent call panicked"),
            IdempotencyError::InFlightFull => {
                f.write_str("too many idempotency keys in flight; the request was refused")
            }
            IdempotencyError::CompletedBefore => f.write_str(
                "a request with this idempotency key completed before; its response was not kept",
            ),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for IdempotencyError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            IdempotencyError::Upstream(e) => Some(e),
            IdempotencyError::Panicked
            | IdempotencyError::InFlightFull
            | IdempotencyError::CompletedBefore => None,
        }
    }
}

type StoreIf<R> = Arc<dyn Fn(&R) -> bool + Send + Sync>;

/// The layer's bounds and TTL.
pub struct IdempotencyConfig<R> {
    ttl: Duration,
    max_stored: usize,
    max_in_flight: usize,
    store_if: Option<StoreIf<R>>,
    clock: Option<TokioClock>,
}

impl<R> Clone for IdempotencyConfig<R> {
    fn clone(&self) -> Self {
        IdempotencyConfig {
            ttl: self.ttl,
            max_stored: self.max_stored,
            max_in_flight: self.max_in_flight,
            store_if: self.store_if.clone(),
            clock: self.clock,
        }
    }
}

impl<R> fmt::Debug for IdempotencyConfig<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyConfig")
            .field("ttl", &self.ttl)
            .field("max_stored", &self.max_stored)
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

impl<R> IdempotencyConfig<R> {
    /// Responses are kept `ttl` after their call completed, at most
    /// `max_stored` of them (the oldest completed is evicted first); at most
    /// `max_in_flight` keyed calls are in flight at once.
    pub fn new(ttl: Duration, max_stored: usize, max_in_flight: usize) -> Self {
        IdempotencyConfig {
            ttl,
            max_stored,
            max_in_flight,
            store_if: None,
            clock: None,
        }
    }

    /// Stores only `Ok` responses for which `pred` is true (default: every
    /// `Ok` response). A response not stored still answers the duplicates
    /// that waited on its call.
    pub fn store_if(mut self, pred: impl Fn(&R) -> bool + Send + Sync + 'static) -> Self {
        self.store_if = Some(Arc::new(pred));
        self
    }

    /// The clock the TTL is judged on (default: a [`TokioClock`] made when
    /// the layer makes its service).
    pub fn clock(mut self, clock: TokioClock) -> Self {
        self.clock = Some(clock);
        self
    }
}

/// Counters of an [`IdempotencyService`] (cumulative, plus current sizes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IdempotencyStats {
    /// Calls of the wrapped service for keyed requests.
    pub executed: u64,
    /// Keyed requests answered from the store.
    pub replayed: u64,
    /// Requests refused because `max_in_flight` keys were in flight.
    pub refused: u64,
    /// Stored responses evicted to make room (not counting expiry).
    pub evicted: u64,
    /// Completed keys put in the store by [`IdempotencyService::restore`].
    pub restored: u64,
    /// Keyed requests refused with [`IdempotencyError::CompletedBefore`].
    pub refused_completed: u64,
    /// Responses stored now (expired ones may count until the next store
    /// sweeps them).
    pub stored: usize,
    /// Keyed calls in flight now.
    pub in_flight: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn bump(counter: &AtomicU64) {
    // ordering: Relaxed; a statistics counter.
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The completed responses: a map, and the keys in completion order (which
/// is expiry order, every entry having the same TTL).
struct Store<K, R> {
    map: HashMap<K, StoredEntry<R>, foldhash::fast::RandomState>,
    /// (key, sequence number, expiry); an element whose sequence number is
    /// not its key's current one in `map` is stale and skipped.
    order: VecDeque<(K, u64, Timestamp)>,
    next_seq: u64,
}

struct StoredEntry<R> {
    /// `None`: a restored key whose response was not kept.
    response: Option<R>,
    seq: u64,
    expires: Timestamp,
}

struct Shared<K, R> {
    store: Mutex<Store<K, R>>,
    ttl: Duration,
    max_stored: usize,
    max_in_flight: usize,
    store_if: Option<StoreIf<R>>,
    clock: TokioClock,
    log: OnceLock<Arc<dyn CompletionLog<K, R>>>,
    in_flight: AtomicUsize,
    unique: AtomicU64,
    executed: AtomicU64,
    replayed: AtomicU64,
    refused: AtomicU64,
    evicted: AtomicU64,
    restored: AtomicU64,
    refused_completed: AtomicU64,
}

impl<K: Hash + Eq + Clone, R: Clone> Shared<K, R> {
    /// The stored entry for `key`, if younger than the TTL: `Some(None)`
    /// for a restored key whose response was not kept.
    fn get(&self, key: &K) -> Option<Option<R>> {
        let now = self.clock.now();
        let store = lock(&self.store);
        let entry = store.map.get(key)?;
        if now >= entry.expires {
            return None; // swept by the next `insert`
        }
        // A panic in `Clone` leaves the store as it was.
        let response = entry.response.clone();
        drop(store);
        bump(if response.is_some() {
            &self.replayed
        } else {
            &self.refused_completed
        });
        Some(response)
    }

    /// Stores `response` for `key` for the TTL from now.
    fn insert(&self, key: K, response: R) {
        let expires = self.clock.now().saturating_add(self.ttl);
        self.insert_until(key, Some(response), expires);
    }

    /// Stores `response` for `key` until `expires`, evicting expired
    /// entries and then the oldest completed ones to stay within
    /// `max_stored`.
    fn insert_until(&self, key: K, response: Option<R>, expires: Timestamp) {
        if self.max_stored == 0 {
            return;
        }
        let now = self.clock.now();
        let mut store = lock(&self.store);
        let store = &mut *store;
        // A panic in `Hash`/`Eq` below leaves the map and the queue
        // consistent: an entry leaves the map before its queue element is
        // popped (a panicking removal removes nothing, and the next
        // insertion tries again), and a queue element whose entry is
        // missing or newer is skipped. Only the key's `Clone` and the map's
        // insertion run after the queue's push, and an element pushed
        // without its entry is skipped.
        while let Some((k, seq, exp)) = store.order.front() {
            let current = store.map.get(k).is_some_and(|e| e.seq == *seq);
            let full = store.map.len() >= self.max_stored;
            if current && *exp > now && !full {
                break;
            }
            if current {
                store.map.remove(k);
                if *exp > now {
                    bump(&self.evicted);
                }
            }
            store.order.pop_front();
        }
        let seq = store.next_seq;
        store.next_seq += 1;
        store.order.push_back((key.clone(), seq, expires));
        store.map.insert(
            key,
            StoredEntry {
                response,
                seq,
                expires,
            },
        );
    }
}

/// A request's key inside the single flight: a caller's key, or a unique
/// number for a request without one (never shared, never stored).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum FlightKey<K> {
    Keyed(K),
    Unique(u64),
}

/// A request on its way through the single flight, with its key.
struct Keyed<K, Req> {
    key: FlightKey<K>,
    req: Req,
}

type KeyOf<K, Req> = fn(&Keyed<K, Req>) -> FlightKey<K>;

fn key_of<K: Clone, Req>(r: &Keyed<K, Req>) -> FlightKey<K> {
    r.key.clone()
}

/// Why a flight did not reach the wrapped service's answer.
#[derive(Clone, Debug)]
enum Refusal<E> {
    Upstream(E),
    Full,
    Completed,
}

/// The wrapped service inside the single flight: answers a new flight from
/// the store when its response was stored meanwhile, refuses a new key over
/// `max_in_flight`, and stores the `Ok` response.
struct Inner<S, K, R> {
    inner: S,
    shared: Arc<Shared<K, R>>,
}

impl<S: Clone, K, R> Clone for Inner<S, K, R> {
    fn clone(&self) -> Self {
        Inner {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

/// A keyed call's place in `max_in_flight`, released on drop (completion,
/// cancellation, or a panic in the wrapped service's `call` or future).
struct InFlight<K, R>(Arc<Shared<K, R>>);

impl<K, R> Drop for InFlight<K, R> {
    fn drop(&mut self) {
        // ordering: Relaxed; the count is a bound, not a synchronisation.
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S, K, Req> Service<Keyed<K, Req>> for Inner<S, K, S::Response>
where
    S: Service<Req>,
    S::Response: Clone,
    K: Hash + Eq + Clone,
{
    type Response = S::Response;
    type Error = Refusal<S::Error>;
    type Future = InnerFuture<S::Future, K, S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Refusal::Upstream)
    }

    fn call(&mut self, req: Keyed<K, Req>) -> Self::Future {
        let Keyed { key, req } = req;
        let FlightKey::Keyed(key) = key else {
            return InnerFuture::upstream(self.inner.call(req), None);
        };
        let shared = &self.shared;
        // A flight that ended and left the table stored its response first:
        // look again (see the module documentation).
        match shared.get(&key) {
            Some(Some(response)) => return InnerFuture::ready(Ok(response)),
            Some(None) => return InnerFuture::ready(Err(Refusal::Completed)),
            None => {}
        }
        // ordering: Relaxed; a bound on a count, read-modify-write so that
        // concurrent new keys cannot both take the last place.
        let before = shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let permit = InFlight(Arc::clone(shared));
        if before >= shared.max_in_flight {
            drop(permit);
            bump(&shared.refused);
            return InnerFuture::ready(Err(Refusal::Full));
        }
        bump(&shared.executed);
        let future = self.inner.call(req);
        InnerFuture::upstream(future, Some((key, permit)))
    }
}

pin_project! {
    /// The future inside a flight.
    struct InnerFuture<F, K, R, E> {
        #[pin]
        upstream: Option<F>,
        ready: Option<Result<R, Refusal<E>>>,
        store: Option<(K, InFlight<K, R>)>,
    }
}

impl<F, K, R, E> InnerFuture<F, K, R, E> {
    fn ready(r: Result<R, Refusal<E>>) -> Self {
        InnerFuture {
            upstream: None,
            ready: Some(r),
            store: None,
        }
    }

    fn upstream(f: F, store: Option<(K, InFlight<K, R>)>) -> Self {
        InnerFuture {
            upstream: Some(f),
            ready: None,
            store,
        }
    }
}

impl<F, K, R, E> Future for InnerFuture<F, K, R, E>
where
    F: Future<Output = Result<R, E>>,
    K: Hash + Eq + Clone,
    R: Clone,
{
    type Output = Result<R, Refusal<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(upstream) = this.upstream.as_pin_mut() else {
            return Poll::Ready(this.ready.take().expect("polled after completion"));
        };
        let result = std::task::ready!(upstream.poll(cx));
        if let (Ok(response), Some((key, permit))) = (&result, this.store.take()) {
            let shared = &permit.0;
            if shared.max_stored > 0 && shared.store_if.as_ref().is_none_or(|p| p(response)) {
                // The log first: no caller sees a stored response (a
                // duplicate's replay) that the log was not handed.
                if let Some(log) = shared.log.get() {
                    log.completed(&key, response, SystemTime::now());
                }
                // Before the flight leaves the table (it does so after this
                // poll returns): see the module documentation.
                shared.insert(key, response.clone());
            }
        }
        Poll::Ready(result.map_err(Refusal::Upstream))
    }
}

/// A tower [`Layer`] answering duplicates of keyed requests from the call in
/// flight or the stored response. See the [module documentation](self).
///
/// Each service the layer makes has its own store and single-flight table,
/// shared by that service's clones: make the service once and clone it per
/// task or connection.
pub struct IdempotencyLayer<KF, Req, R> {
    key_fn: Arc<KF>,
    config: IdempotencyConfig<R>,
    _req: PhantomData<fn(Req)>,
}

impl<KF, Req, R> Clone for IdempotencyLayer<KF, Req, R> {
    fn clone(&self) -> Self {
        IdempotencyLayer {
            key_fn: Arc::clone(&self.key_fn),
            config: self.config.clone(),
            _req: PhantomData,
        }
    }
}

impl<KF, Req, R> fmt::Debug for IdempotencyLayer<KF, Req, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<KF, Req, R> IdempotencyLayer<KF, Req, R> {
    /// A layer keying requests with `key_fn` (`None`: the request has no
    /// idempotency key and passes through).
    pub fn new<K>(key_fn: KF, config: IdempotencyConfig<R>) -> Self
    where
        KF: Fn(&Req) -> Option<K>,
    {
        IdempotencyLayer {
            key_fn: Arc::new(key_fn),
            config,
            _req: PhantomData,
        }
    }
}

impl<S, KF, K, Req> Layer<S> for IdempotencyLayer<KF, Req, S::Response>
where
    S: Service<Req>,
    S::Response: Clone,
    K: Hash + Eq + Clone,
    KF: Fn(&Req) -> Option<K>,
{
    type Service = IdempotencyService<S, KF, K, Req>;

    fn layer(&self, inner: S) -> Self::Service {
        let c = &self.config;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                map: HashMap::default(),
                order: VecDeque::new(),
                next_seq: 0,
            }),
            ttl: c.ttl,
            max_stored: c.max_stored,
            max_in_flight: c.max_in_flight,
            store_if: c.store_if.clone(),
            clock: c.clock.unwrap_or_default(),
            log: OnceLock::new(),
            in_flight: AtomicUsize::new(0),
            unique: AtomicU64::new(0),
            executed: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            restored: AtomicU64::new(0),
            refused_completed: AtomicU64::new(0),
        });
        let flights = CoalesceLayer::new(key_of::<K, Req> as KeyOf<K, Req>).layer(Inner {
            inner,
            shared: Arc::clone(&shared),
        });
        IdempotencyService {
            flights,
            key_fn: Arc::clone(&self.key_fn),
            shared,
        }
    }
}

type Flights<S, K, Req> =
    CoalesceService<Inner<S, K, <S as Service<Req>>::Response>, KeyOf<K, Req>, Keyed<K, Req>>;

/// A service answering duplicates of keyed requests. Made by
/// [`IdempotencyLayer`].
pub struct IdempotencyService<S, KF, K, Req>
where
    S: Service<Req>,
    S::Response: Clone,
    K: Hash + Eq + Clone,
{
    flights: Flights<S, K, Req>,
    key_fn: Arc<KF>,
    shared: Arc<Shared<K, S::Response>>,
}

impl<S, KF, K, Req> Clone for IdempotencyService<S, KF, K, Req>
where
    S: Service<Req> + Clone,
    S::Response: Clone,
    K: Hash + Eq + Clone,
{
    fn clone(&self) -> Self {
        IdempotencyService {
            flights: self.flights.clone(),
            key_fn: Arc::clone(&self.key_fn),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, KF, K, Req> fmt::Debug for IdempotencyService<S, KF, K, Req>
where
    S: Service<Req>,
    S::Response: Clone,
    K: Hash + Eq + Clone,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyService").finish_non_exhaustive()
    }
}

impl<S, KF, K, Req> IdempotencyService<S, KF, K, Req>
where
    S: Service<Req>,
    S::Response: Clone,
    K: Hash + Eq + Clone,
{
    /// The counters and current sizes.
    pub fn stats(&self) -> IdempotencyStats {
        let s = &self.shared;
        // ordering: Relaxed throughout; telemetry reads.
        IdempotencyStats {
            executed: s.executed.load(Ordering::Relaxed),
            replayed: s.replayed.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            evicted: s.evicted.load(Ordering::Relaxed),
            restored: s.restored.load(Ordering::Relaxed),
            refused_completed: s.refused_completed.load(Ordering::Relaxed),
            stored: lock(&s.store).map.len(),
            in_flight: s.in_flight.load(Ordering::Relaxed),
        }
    }

    /// Hands every response stored from now on to `log` (see
    /// [`CompletionLog`]); clones of this service share it. Returns `log`
    /// back if a log was set already (a service has at most one).
    ///
    /// # Errors
    ///
    /// `log` itself when a log was set before.
    pub fn set_completion_log(
        &self,
        log: Arc<dyn CompletionLog<K, S::Response>>,
    ) -> Result<(), Arc<dyn CompletionLog<K, S::Response>>> {
        self.shared.log.set(log)
    }

    /// Puts keys completed before (by an earlier process, read back from
    /// where a [`CompletionLog`] wrote them) into the store, so that their
    /// duplicates are answered with the kept response, or refused with
    /// [`IdempotencyError::CompletedBefore`] when it was not kept. An entry
    /// completed at `at` expires at `at` plus the TTL, judged against `now`
    /// (the wall clock, [`SystemTime::now()`] in a service): an entry at
    /// or past it is skipped, a younger one is stored for what is left of
    /// its TTL on the layer's clock. An `at` later than `now` (the wall
    /// clock stepped back across the restart) counts as completed at
    /// `now`, so it is kept at most one whole TTL. The store's cap holds:
    /// restoring more than `max_stored` keeps the last ones. Call it before
    /// serving, with the entries in completion order (as a log reads them
    /// back); returns the entries stored.
    pub fn restore(
        &self,
        entries: impl IntoIterator<Item = Completed<K, S::Response>>,
        now: SystemTime,
    ) -> usize {
        let shared = &self.shared;
        let mut stored = 0;
        if shared.max_stored == 0 {
            return 0;
        }
        for entry in entries {
            let age = now.duration_since(entry.at).unwrap_or(Duration::ZERO);
            let Some(left) = shared.ttl.checked_sub(age).filter(|l| !l.is_zero()) else {
                continue;
            };
            let expires = shared.clock.now().saturating_add(left);
            shared.insert_until(entry.key, entry.response, expires);
            bump(&shared.restored);
            stored += 1;
        }
        stored
    }
}

/// Where a service hands each response it stores, so that a restarted
/// process can [`restore`](IdempotencyService::restore) the keys it had
/// completed. `tenlives_ops::journal::CompletionJournal` writes them to a
/// decision journal.
///
/// [`completed`](Self::completed) runs inside the completing call's last
/// poll, before the response is stored and before any caller receives it:
/// when it returns, the record should be as durable as the log promises
/// (a journal synced at every write: on disk). It runs on the request's
/// task, so it costs that request its time (a file write, an `fsync`). A
/// panic in it reaches the caller whose poll ran it, as a panic in the
/// response's `Clone` does: the response is not stored and every duplicate
/// waiting answers [`IdempotencyError::Panicked`].
pub trait CompletionLog<K, R>: Send + Sync {
    /// The call for `key` completed at `at` (wall clock) with `response`,
    /// which is about to be stored.
    fn completed(&self, key: &K, response: &R, at: SystemTime);
}

/// A key completed by an earlier process, for
/// [`IdempotencyService::restore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completed<K, R> {
    /// The idempotency key.
    pub key: K,
    /// When its call completed (wall clock).
    pub at: SystemTime,
    /// Its response, if it was kept; `None` refuses its duplicates.
    pub response: Option<R>,
}

impl<S, KF, K, Req> Service<Req> for IdempotencyService<S, KF, K, Req>
where
    S: Service<Req>,
    S::Response: Clone,
    S::Error: Clone,
    K: Hash + Eq + Clone,
    KF: Fn(&Req) -> Option<K>,
{
    type Response = S::Response;
    type Error = IdempotencyError<S::Error>;
    type Future = IdempotencyFuture<K, S::Future, S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.flights.poll_ready(cx).map_err(map_err)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let span = call_span!("tenlives.idempotency", "idempotency");
        // A panic in the key closure unwinds with nothing taken.
        let key = match (self.key_fn)(&req) {
            Some(key) => {
                if let Some(response) = self.shared.get(&key) {
                    let answer = match response {
                        Some(response) => {
                            span.decided("replayed");
                            Ok(response)
                        }
                        None => {
                            span.decided("completed_before");
                            Err(IdempotencyError::CompletedBefore)
                        }
                    };
                    return IdempotencyFuture {
                        state: State::Replay(Some(answer)),
                        span,
                    };
                }
                FlightKey::Keyed(key)
            }
            None => {
                span.decided("unkeyed");
                // ordering: Relaxed; only uniqueness matters.
                FlightKey::Unique(self.shared.unique.fetch_add(1, Ordering::Relaxed))
            }
        };
        #[cfg(feature = "tracing")]
        let keyed = matches!(key, FlightKey::Keyed(_));
        let flight = span.in_scope(|| self.flights.call(Keyed { key, req }));
        #[cfg(feature = "tracing")]
        if keyed {
            span.decided(if flight.led() { "led" } else { "joined" });
        }
        IdempotencyFuture {
            state: State::Flight(flight),
            span,
        }
    }
}

fn map_err<E>(e: CoalesceError<Refusal<E>>) -> IdempotencyError<E> {
    match e {
        CoalesceError::Upstream(Refusal::Upstream(e)) => IdempotencyError::Upstream(e),
        CoalesceError::Upstream(Refusal::Full) => IdempotencyError::InFlightFull,
        CoalesceError::Upstream(Refusal::Completed) => IdempotencyError::CompletedBefore,
        CoalesceError::Panicked => IdempotencyError::Panicked,
    }
}

type FlightFuture<K, F, R, E> =
    CoalesceFuture<FlightKey<K>, InnerFuture<F, K, R, E>, R, Refusal<E>>;

enum State<K: Hash + Eq, F, R, E> {
    Replay(Option<Result<R, IdempotencyError<E>>>),
    Flight(FlightFuture<K, F, R, E>),
}

/// The response future of [`IdempotencyService`]: a stored response, or a
/// share of the key's call in flight. Dropping it mid-call leaves the call
/// to the duplicates waiting on it (or cancels it if none is left).
pub struct IdempotencyFuture<K: Hash + Eq, F, R, E> {
    state: State<K, F, R, E>,
    span: CallSpan,
}

impl<K: Hash + Eq, F, R, E> fmt::Debug for IdempotencyFuture<K, F, R, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let replay = matches!(self.state, State::Replay(_));
        f.debug_struct("IdempotencyFuture")
            .field("replay", &replay)
            .finish_non_exhaustive()
    }
}

// Neither state is pinned: a stored response is a value, and the flight's
// future lives in the flight's `Arc`.
impl<K: Hash + Eq, F, R, E> Unpin for IdempotencyFuture<K, F, R, E> {}

impl<K, F, R, E> Future for IdempotencyFuture<K, F, R, E>
where
    K: Hash + Eq + Clone,
    F: Future<Output = Result<R, E>>,
    R: Clone,
    E: Clone,
{
    type Output = Result<R, IdempotencyError<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let IdempotencyFuture { state, span } = &mut *self;
        let _entered = span.enter();
        let result = match state {
            State::Replay(r) => r.take().expect("polled after completion"),
            State::Flight(f) => std::task::ready!(Pin::new(f).poll(cx)).map_err(map_err),
        };
        span.ended(&result);
        Poll::Ready(result)
    }
}
