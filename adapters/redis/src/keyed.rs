//! Keyed fleet-wide quotas: one global quota per key (a user, an API key),
//! each kept in Redis under a key of its own with a TTL, each spent locally
//! from a lease of its own.
//!
//! # Layout
//!
//! - A fixed table of `2 · capacity` (rounded up to a power of two) lease
//!   slots, allocated once. A key lives in one of the [`PROBE`] slots after
//!   the one its hash selects; at most `capacity` keys are resident at once.
//! - Two engine [`KeyedRateLimiter`]s: the per-key *share* limiter
//!   (`ceil(max_share · rate)` per period, as the unkeyed limiter's share
//!   limiter; `2 · capacity` entries, admitting keys it has no room for; the
//!   task makes a key's entry when it installs the key, so a request never
//!   clones a key) and the per-key *fallback* limiter (`quota /
//!   expected_instances`; `capacity` entries, keys without room sharing one
//!   limiter of that quota), which decides a new key's first requests and,
//!   Redis being unreachable, the degraded policy.
//! - A bounded queue of keys waiting for a lease (`pending_capacity`).
//!
//! # The slot words
//!
//! | word | bits | field | written by |
//! |---|---|---|---|
//! | `word` | 32..64 | generation: bumped when the slot's key is evicted (wraps) | the task |
//! | `word` | 0..32 | tokens granted by Redis for the slot's key, not spent or given back | requests (take one, only at the generation they found the key at), the task |
//! | `key` | pointer | the resident key and its hash (crossbeam-epoch), null when free | the task |
//! | `expiry` | 64 | local instant (ns) until which the lease may be spent while Redis is reachable; 0 before the key's first lease | the task |
//! | `failed` | 1 | the key's last script call got an error reply (`WRONGTYPE`, malformed state) | the task |
//! | `spent`, `starved` | 64 each | demand counts, for sizing | requests |
//!
//! The generation and the tokens are `SlotWord` (`keyed_word.rs`, checked
//! by a loom model). Only the background task installs and evicts keys, so
//! there are never two slots for one key. To evict, it first nulls the key pointer, then swaps
//! the word to the next generation with no tokens (taking out every token
//! left, to give back), and retires the key through the epoch. A request
//! reads the word's generation *before* the key pointer (both `Acquire`),
//! and takes a token only with a compare-and-swap that requires that
//! generation: a request that found a key that was evicted meanwhile finds
//! its generation gone and takes nothing, even if another key was
//! installed in the slot since. So each token leaves the word exactly once:
//! spent by a request of its own key, or taken out by the task to give back.
//! (A stale request could be fooled only by exactly `2^32` evictions of one
//! slot between its two reads.)
//!
//! # A new key's first requests
//!
//! A key that is not resident (or resident without its first lease yet)
//! has no lease. While Redis is reachable,
//! its requests are decided by the fallback limiter (`quota /
//! expected_instances` per key: a burst of `⌊b / E⌋` at most, then
//! `rate / E`), and each one admitted is queued as a *debt*: the task
//! installs the key within one refresh interval, and its first script call
//! asks for the debt on top of the lease, charging it to the key's quota
//! in Redis before any of the grant goes to the lease. So admissions made
//! before the lease arrived are counted against the global quota too; what
//! a process admits beyond Redis's grants is bounded by its outstanding
//! debt. When the queue is full, a new key's request is refused
//! ([`KeyedRefused::Backlog`]) rather than admitted uncounted.

use core::fmt;
use core::hash::{BuildHasher, Hash};
use core::time::Duration;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_epoch::{self as epoch, Atomic, Guard, Owned, Shared as EpochShared};
use crossbeam_queue::ArrayQueue;
use prometheus_client::registry::Registry;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script, ServerErrorKind, Value};
use tenlives_engine::ConfigError;
use tenlives_engine::breaker::CircuitBreaker;
use tenlives_engine::rate::{
    DefaultHashBuilder, KeyedConfig, KeyedRateLimiter, RateLimitError, RateLimited, WhenFull,
};
use tenlives_engine::time::{Clock, MonotonicClock, Timestamp};
use tokio::sync::Notify;

use crate::background::{Background, next_refresh};
use crate::config::{FailurePolicy, FleetConfig, FleetError};
use crate::gcra::{self, GcraParams, Reply};
use crate::key::keyed_rate_key;
use crate::keyed_word::SlotWord;
use crate::limiter::{
    Admitted, REDIS_RECOVERED, REDIS_UNAVAILABLE, Refused, default_breaker, fallback_quota,
    share_quota,
};
use crate::reports::Reports;

/// Slots probed for a key, from the one its hash selects.
pub const PROBE: usize = 16;
/// Script calls sent in one pipeline (one round trip) at most.
pub const BATCH: usize = 128;

/// The configuration of a [`KeyedFleetLimiter`]: the per-key quota and
/// every setting of a [`FleetConfig`], plus the table's capacity.
#[derive(Clone, Debug)]
pub struct KeyedFleetConfig {
    fleet: FleetConfig,
    capacity: usize,
    pending: usize,
    idle_after: Option<Duration>,
}

impl KeyedFleetConfig {
    /// Every key gets `fleet`'s quota, fleet-wide (the quota's name names the
    /// family of keys); at most `capacity` keys are resident in this process
    /// at once. Defaults: a pending queue of `max(64, capacity / 4)` keys,
    /// and an idle key (no request for `idle_after`, default the lease
    /// duration) is evicted, its tokens given back.
    pub fn new(fleet: FleetConfig, capacity: usize) -> Self {
        KeyedFleetConfig {
            fleet,
            capacity,
            pending: (capacity / 4).max(64),
            idle_after: None,
        }
    }

    /// How many new-key requests may wait for a lease at once (see
    /// [`KeyedRefused::Backlog`]).
    pub fn pending_capacity(mut self, n: usize) -> Self {
        self.pending = n;
        self
    }

    /// How long a key may go without a request before it is evicted and its
    /// tokens given back (default the lease duration).
    pub fn idle_after(mut self, d: Duration) -> Self {
        self.idle_after = Some(d);
        self
    }

    /// The settings shared with the unkeyed limiter.
    pub fn fleet(&self) -> &FleetConfig {
        &self.fleet
    }

    /// The most keys resident at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// How a keyed request was admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyedAdmitted {
    /// As the unkeyed limiter admits, with the key's own lease.
    Fleet(Admitted),
    /// The key had no lease yet: admitted by the per-key allowance of
    /// `quota / expected_instances` and queued as a debt, charged to the
    /// key's quota in Redis by its first script call.
    NewKey,
}

/// Why a keyed request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyedRefused {
    /// As the unkeyed limiter refuses, for the key's own lease.
    Fleet(Refused),
    /// The key has no lease yet and its allowance of `quota /
    /// expected_instances` is spent.
    NewKey(RateLimited),
    /// The key has no lease yet and the queue of keys waiting for one is
    /// full: refused rather than admitted without being counted.
    Backlog,
    /// The fallback table had no room for the key.
    TableFull,
}

impl fmt::Display for KeyedRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyedRefused::Fleet(r) => r.fmt(f),
            KeyedRefused::NewKey(l) => write!(f, "new key, allowance before its lease: {l}"),
            KeyedRefused::Backlog => f.write_str("new key, too many keys waiting for a lease"),
            KeyedRefused::TableFull => f.write_str("new key, no room in the local table"),
        }
    }
}

impl std::error::Error for KeyedRefused {}

/// A view of a keyed limiter, its counters read one at a time.
///
/// Every token Redis granted is charged to a debt or put in a lease, and
/// every lease token is held, spent, given back or lost:
/// `charged + lease_tokens + spent + returned + lost == granted`. The
/// identity holds in a view taken while no request is deciding and no
/// pipeline is in flight; while the background task gives tokens back, they
/// are out of the leases but not yet counted `returned` or `lost`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyedFleetStats {
    /// Keys resident now.
    pub keys: u64,
    /// Tokens held in all leases (a sum over the table).
    pub lease_tokens: u64,
    /// Whether the last pipeline reached Redis.
    pub redis_available: bool,
    /// Requests admitted with lease tokens.
    pub spent: u64,
    /// Requests refused for an empty lease with Redis reachable.
    pub starved: u64,
    /// New-key requests admitted before the key's lease (each a debt).
    pub provisional: u64,
    /// Debt charged to Redis (taken from grants before the lease).
    pub charged: u64,
    /// Debt dropped uncharged (the key was evicted first).
    pub uncharged: u64,
    /// Tokens granted by Redis in total (charged debt included).
    pub granted: u64,
    /// Tokens given back to Redis.
    pub returned: u64,
    /// Tokens taken out to give back whose call failed.
    pub lost: u64,
    /// Keys evicted (idle, or to make room).
    pub evicted: u64,
    /// Degraded decisions that admitted.
    pub degraded_admitted: u64,
    /// Degraded decisions that refused.
    pub degraded_refused: u64,
    /// Pipelines sent (round trips), successful or not.
    pub redis_calls: u64,
    /// Script calls sent inside them.
    pub scripts: u64,
    /// Pipelines that failed, timed out or were refused by the breaker.
    pub redis_errors: u64,
    /// Script calls answered with an error for their key (`WRONGTYPE`,
    /// malformed state): that key is decided by the failure policy.
    pub key_errors: u64,
}

struct Resident<K> {
    hash: u64,
    key: K,
}

struct Slot<K> {
    word: SlotWord,
    key: Atomic<Resident<K>>,
    expiry: AtomicU64,
    failed: AtomicBool,
    spent: AtomicU64,
    starved: AtomicU64,
}

impl<K> Slot<K> {
    #[inline]
    fn take(&self, generation: u32) -> bool {
        self.word.take(generation)
    }

    fn grant(&self, n: u64) {
        self.word.grant(n);
    }

    fn take_above(&self, keep: u64) -> u64 {
        self.word.take_above(keep)
    }

    #[inline]
    fn held(&self) -> u64 {
        self.word.held()
    }

    fn demand(&self) -> u64 {
        // ordering: Relaxed; counts.
        self.spent.load(Ordering::Relaxed) + self.starved.load(Ordering::Relaxed)
    }
}

struct KShared<K> {
    slots: Box<[Slot<K>]>,
    mask: usize,
    hasher: DefaultHashBuilder,
    share: KeyedRateLimiter<K>,
    fallback: KeyedRateLimiter<K>,
    pending: ArrayQueue<(K, bool)>,
    available: AtomicBool,
    reports: Reports,
    clock: MonotonicClock,
    policy: FailurePolicy,
    interval: Duration,
    provisional: AtomicU64,
    // Written by the task only.
    keys: AtomicU64,
    granted: AtomicU64,
    charged: AtomicU64,
    uncharged: AtomicU64,
    returned: AtomicU64,
    lost: AtomicU64,
    evicted: AtomicU64,
    redis_calls: AtomicU64,
    scripts: AtomicU64,
    redis_errors: AtomicU64,
    key_errors: AtomicU64,
}

impl<K> KShared<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    #[inline]
    fn find<'g>(&'g self, key: &K, hash: u64, guard: &'g Guard) -> Option<(&'g Slot<K>, u32)> {
        let start = hash as usize;
        for i in 0..PROBE {
            let slot = &self.slots[start.wrapping_add(i) & self.mask];
            // ordering: Acquire on the word, then on the key: the task nulls
            // the key before it bumps the generation (Release), so a request
            // that reads the new generation reads the null (or a newer key),
            // never the evicted key with the new generation.
            let generation = slot.word.generation();
            let resident = slot.key.load(Ordering::Acquire, guard);
            // SAFETY: loaded under `guard`; the task retires a key only with
            // `defer_destroy` after unlinking it, so it lives while `guard`
            // does.
            if let Some(r) = unsafe { resident.as_ref() }
                && r.hash == hash
                && r.key == *key
            {
                return Some((slot, generation));
            }
        }
        None
    }

    #[inline]
    fn degraded(&self, admitted: bool, code: u64, now: Timestamp) {
        self.reports.degraded(admitted, code, 0, now);
    }

    /// The failure policy's decision for `key`, Redis (or the key's state in
    /// it) being unusable and the key's lease spent.
    #[inline]
    fn by_policy(&self, key: &K, now: Timestamp) -> Result<KeyedAdmitted, KeyedRefused> {
        match self.policy {
            FailurePolicy::FailOpen => {
                self.degraded(true, 4, now);
                Ok(KeyedAdmitted::Fleet(Admitted::FailOpen))
            }
            FailurePolicy::FailClosed => {
                self.degraded(false, 5, now);
                Err(KeyedRefused::Fleet(Refused::FailClosed))
            }
            FailurePolicy::Degraded => match self.fallback.check_key(key, now) {
                Ok(()) => {
                    self.degraded(true, 2, now);
                    Ok(KeyedAdmitted::Fleet(Admitted::Fallback))
                }
                Err(RateLimitError::Limited(l)) => {
                    self.degraded(false, 3, now);
                    Err(KeyedRefused::Fleet(Refused::Fallback(l)))
                }
                Err(_) => {
                    self.degraded(false, 3, now);
                    Err(KeyedRefused::TableFull)
                }
            },
        }
    }

    #[inline]
    fn try_acquire_at(&self, key: &K, now: Timestamp) -> Result<KeyedAdmitted, KeyedRefused> {
        let hash = self.hasher.hash_one(key);
        // ordering: Relaxed; as in the unkeyed limiter, a stale flag only
        // moves a request to the other side of a concurrent change.
        let available = self.available.load(Ordering::Relaxed);
        let guard = epoch::pin();
        // A key installed whose first lease has not come yet (expiry 0) is
        // decided as a new key (its allowance, its debt) while Redis and the
        // key's state in it are fine.
        if let Some((slot, generation, expiry)) = self
            .find(key, hash, &guard)
            // ordering: Relaxed; see `available`.
            .map(|(slot, g)| (slot, g, slot.expiry.load(Ordering::Relaxed)))
            // ordering: Relaxed; see `available`.
            .filter(|&(slot, _, expiry)| {
                expiry != 0 || !available || slot.failed.load(Ordering::Relaxed)
            })
        {
            let reachable = available && !slot.failed.load(Ordering::Relaxed);
            let valid = now.as_nanos() < expiry;
            let last_lease = !reachable && self.policy == FailurePolicy::Degraded;
            if (valid || last_lease) && slot.held() > 0 {
                // The share limiter first: a request it refuses takes no
                // token, so a token never has to be put back into a slot
                // that may have changed hands.
                // (The share table admits keys it has no room for.)
                if let Err(RateLimitError::Limited(l)) = self.share.check_key(key, now) {
                    return Err(KeyedRefused::Fleet(Refused::ShareLimited(l)));
                }
                if slot.take(generation) {
                    // ordering: Relaxed; a demand count read by the task.
                    slot.spent.fetch_add(1, Ordering::Relaxed);
                    return if valid {
                        Ok(KeyedAdmitted::Fleet(Admitted::Lease))
                    } else {
                        self.degraded(true, 1, now);
                        Ok(KeyedAdmitted::Fleet(Admitted::LastLease))
                    };
                }
                self.share.refund_key(key, 1);
            }
            if reachable {
                // ordering: Relaxed; a demand count read by the task.
                slot.starved.fetch_add(1, Ordering::Relaxed);
                return Err(KeyedRefused::Fleet(Refused::QuotaExhausted));
            }
            return self.by_policy(key, now);
        }
        drop(guard);
        if !available {
            // Asked for when Redis is back; not charged (a degraded decision).
            if !self.pending.is_full() {
                let _ = self.pending.push((key.clone(), false));
            }
            return self.by_policy(key, now);
        }
        match self.fallback.check_key(key, now) {
            Ok(()) => {
                if self.pending.push((key.clone(), true)).is_ok() {
                    // ordering: Relaxed; a count.
                    self.provisional.fetch_add(1, Ordering::Relaxed);
                    Ok(KeyedAdmitted::NewKey)
                } else {
                    self.fallback.refund_key(key, 1);
                    Err(KeyedRefused::Backlog)
                }
            }
            // Not queued: the request that spent the allowance did that.
            Err(RateLimitError::Limited(l)) => Err(KeyedRefused::NewKey(l)),
            Err(_) => Err(KeyedRefused::TableFull),
        }
    }

    fn stats(&self) -> KeyedFleetStats {
        let (mut spent, mut starved, mut held) = (0, 0, 0);
        for slot in &self.slots {
            // ordering: Relaxed throughout; counts, each read on its own.
            spent += slot.spent.load(Ordering::Relaxed);
            starved += slot.starved.load(Ordering::Relaxed);
            held += slot.held();
        }
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        KeyedFleetStats {
            keys: r(&self.keys),
            lease_tokens: held,
            // ordering: Relaxed; a snapshot.
            redis_available: self.available.load(Ordering::Relaxed),
            spent,
            starved,
            provisional: r(&self.provisional),
            charged: r(&self.charged),
            uncharged: r(&self.uncharged),
            granted: r(&self.granted),
            returned: r(&self.returned),
            lost: r(&self.lost),
            evicted: r(&self.evicted),
            degraded_admitted: self.reports.degraded_admitted.get(),
            degraded_refused: self.reports.degraded_refused.get(),
            redis_calls: r(&self.redis_calls),
            scripts: r(&self.scripts),
            redis_errors: r(&self.redis_errors),
            key_errors: r(&self.key_errors),
        }
    }
}

impl<K> Drop for KShared<K> {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no request or task holds a reference any more,
        // so the resident keys can be freed at once.
        unsafe {
            let guard = epoch::unprotected();
            for slot in &self.slots {
                // ordering: Relaxed; exclusive access (`&mut self`).
                let p = slot.key.swap(EpochShared::null(), Ordering::Relaxed, guard);
                if !p.is_null() {
                    drop(p.into_owned());
                }
            }
        }
    }
}

/// A fleet-wide quota per key (per user, per API key): each key's quota
/// lives in Redis under a key of its own (with a TTL), and this process
/// spends a lease per key locally. See the [module documentation](self) and
/// `docs/redis.md`.
///
/// Dropping it stops the background task, which gives every lease back if
/// the runtime still runs; [`shutdown`](Self::shutdown) does the same and
/// waits for it.
///
/// ```no_run
/// use tenlives_engine::rate::Quota;
/// use tenlives_redis::{FleetConfig, KeyedAdmitted, KeyedFleetConfig, KeyedFleetLimiter};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
/// // 100 requests a minute per API key, fleet-wide; 100 000 keys at most
/// // resident in this process.
/// let quota = Quota::per_minute(100)?.with_burst(20)?;
/// let config = KeyedFleetConfig::new(FleetConfig::new("api", quota).expected_instances(4), 100_000);
/// let limiter = KeyedFleetLimiter::<String>::start(config, client).await?;
///
/// let api_key = "key-1234".to_owned();
/// match limiter.try_acquire(&api_key) {
///     Ok(KeyedAdmitted::NewKey) => { /* its first requests, charged later */ }
///     Ok(_) => { /* serve */ }
///     Err(refused) => println!("429, retry after {:?}", limiter.retry_after(&refused)),
/// }
/// limiter.shutdown().await; // every lease back to Redis
/// # Ok(())
/// # }
/// ```
pub struct KeyedFleetLimiter<K> {
    shared: Arc<KShared<K>>,
    background: Background,
}

impl<K> fmt::Debug for KeyedFleetLimiter<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedFleetLimiter")
            .field("stats", &self.shared.stats())
            .finish_non_exhaustive()
    }
}

impl<K> KeyedFleetLimiter<K>
where
    K: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static,
{
    /// Builds the limiter and its background task on the current tokio
    /// runtime. No key is resident yet: the first request of each key is a
    /// [`KeyedAdmitted::NewKey`] decision.
    ///
    /// # Errors
    ///
    /// [`FleetError`] for a bad configuration or name, or a client that
    /// cannot be set up.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn start(config: KeyedFleetConfig, client: Client) -> Result<Self, FleetError> {
        let fleet = &config.fleet;
        fleet.validate()?;
        if config.capacity == 0 || config.pending == 0 {
            return Err(ConfigError::Zero {
                field: "capacity and pending_capacity",
            }
            .into());
        }
        let params = GcraParams::from_quota(&fleet.quota)?;
        // The name is checked (no braces, not empty) with an empty key.
        keyed_rate_key(&fleet.prefix, &fleet.name, "")?;
        let max_lease = fleet.max_lease();
        let conn_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(fleet.redis_timeout))
            .set_response_timeout(Some(fleet.redis_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(fleet.refresh_interval);
        let conn = ConnectionManager::new_lazy_with_config(client, conn_config)?;
        let size = config
            .capacity
            .saturating_mul(2)
            .next_power_of_two()
            .max(PROBE);
        // Twice the capacity: it sweeps (entries whose tokens all refilled)
        // only when three quarters are in use, so a resident key's entry
        // stays.
        let share = KeyedRateLimiter::new(
            KeyedConfig::new(
                share_quota(&fleet.quota, fleet.max_share, max_lease)?,
                config.capacity.saturating_mul(2),
            )?
            .when_full(WhenFull::Admit),
        );
        // Keys the fallback table has no room for share one limiter of the
        // same quota: under key churn the allowance stays bounded.
        let fallback_q = fallback_quota(&fleet.quota, fleet.expected_instances)?;
        let fallback = KeyedRateLimiter::new(
            KeyedConfig::new(fallback_q, config.capacity)?
                .when_full(WhenFull::Overflow(fallback_q)),
        );
        let clock = MonotonicClock::new();
        let shared = Arc::new(KShared {
            slots: (0..size)
                .map(|_| Slot {
                    word: SlotWord::new(),
                    key: Atomic::null(),
                    expiry: AtomicU64::new(0),
                    failed: AtomicBool::new(false),
                    spent: AtomicU64::new(0),
                    starved: AtomicU64::new(0),
                })
                .collect(),
            mask: size - 1,
            hasher: DefaultHashBuilder::default(),
            share,
            fallback,
            pending: ArrayQueue::new(config.pending),
            available: AtomicBool::new(true),
            reports: Reports::new(fleet.events.clone(), fleet.source),
            clock,
            policy: fleet.policy,
            interval: fleet.refresh_interval,
            provisional: AtomicU64::new(0),
            keys: AtomicU64::new(0),
            granted: AtomicU64::new(0),
            charged: AtomicU64::new(0),
            uncharged: AtomicU64::new(0),
            returned: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            redis_calls: AtomicU64::new(0),
            scripts: AtomicU64::new(0),
            redis_errors: AtomicU64::new(0),
            key_errors: AtomicU64::new(0),
        });
        let refresher = KeyedRefresher {
            shared: Arc::clone(&shared),
            conn,
            script: gcra::script(),
            loaded: false,
            prefix: fleet.prefix.clone(),
            name: fleet.name.clone(),
            params,
            breaker: CircuitBreaker::new(fleet.breaker.clone().unwrap_or_else(default_breaker)),
            lease_duration: fleet.lease_duration,
            interval: fleet.refresh_interval,
            idle_after: config.idle_after.unwrap_or(fleet.lease_duration),
            max_lease: u64::from(max_lease),
            initial: u64::from(
                fleet
                    .initial_lease
                    .unwrap_or(max_lease / 4)
                    .clamp(1, max_lease),
            ),
            timeout: fleet.redis_timeout,
            capacity: config.capacity,
            index: HashMap::with_capacity(config.capacity),
            meta: (0..size).map(|_| Meta::default()).collect(),
            last_at: clock.now(),
        };
        Ok(KeyedFleetLimiter {
            shared,
            background: Background::spawn(|stop| refresher.run(stop)),
        })
    }
}

impl<K> KeyedFleetLimiter<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// Decides one request of `key` now. Never waits, never touches the
    /// network; for a resident key it never allocates (a new key's request
    /// clones the key into the queue of keys waiting for a lease).
    ///
    /// # Errors
    ///
    /// [`KeyedRefused`].
    #[inline]
    pub fn try_acquire(&self, key: &K) -> Result<KeyedAdmitted, KeyedRefused> {
        self.shared.try_acquire_at(key, self.shared.clock.now())
    }

    /// `key`'s limit as a value of its own: a policy for the futures form
    /// (`tenlives-futures`' `guard` and `acquire`, feature `futures`).
    pub fn for_key<'a>(&'a self, key: &'a K) -> ForKey<'a, K> {
        ForKey { limiter: self, key }
    }

    /// How long after `refused` trying again may help: the engine limiter's
    /// wait when one refused, else the refresh interval.
    pub fn retry_after(&self, refused: &KeyedRefused) -> Duration {
        match refused {
            KeyedRefused::Fleet(Refused::ShareLimited(l) | Refused::Fallback(l))
            | KeyedRefused::NewKey(l) => l.wait(),
            _ => self.shared.interval,
        }
    }

    /// The tokens `key`'s lease holds, or `None` when it is not resident.
    pub fn lease_of(&self, key: &K) -> Option<u64> {
        let hash = self.shared.hasher.hash_one(key);
        let guard = epoch::pin();
        self.shared
            .find(key, hash, &guard)
            .map(|(slot, _)| slot.held())
    }

    /// A snapshot of the counters (sums over the table: not for every
    /// request).
    pub fn stats(&self) -> KeyedFleetStats {
        self.shared.stats()
    }

    /// Registers the degraded-decision counters as
    /// `tenlives_redis_keyed_degraded_admitted` / `_refused`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "tenlives_redis_keyed_degraded_admitted",
            "Keyed requests admitted under the failure policy while Redis was unreachable",
            self.shared.reports.degraded_admitted.clone(),
        );
        registry.register(
            "tenlives_redis_keyed_degraded_refused",
            "Keyed requests refused under the failure policy while Redis was unreachable",
            self.shared.reports.degraded_refused.clone(),
        );
    }

    /// Stops the background task after it gave every lease back (bounded by
    /// the Redis timeout per pipeline), waits for it, and returns the final
    /// view: nothing moves tokens any more, so its accounting identity (see
    /// [`KeyedFleetStats`]) holds exactly.
    pub async fn shutdown(mut self) -> KeyedFleetStats {
        self.background.shutdown().await;
        self.shared.stats()
    }
}

/// One key's limit in a [`KeyedFleetLimiter`], from
/// [`KeyedFleetLimiter::for_key`]: a policy of its own for the futures form.
pub struct ForKey<'a, K> {
    limiter: &'a KeyedFleetLimiter<K>,
    key: &'a K,
}

impl<K: fmt::Debug> fmt::Debug for ForKey<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForKey")
            .field("key", self.key)
            .finish_non_exhaustive()
    }
}

impl<K> Clone for ForKey<'_, K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K> Copy for ForKey<'_, K> {}

impl<K> ForKey<'_, K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// [`KeyedFleetLimiter::try_acquire`] for the key.
    ///
    /// # Errors
    ///
    /// [`KeyedRefused`].
    #[inline]
    pub fn try_acquire(&self) -> Result<KeyedAdmitted, KeyedRefused> {
        self.limiter.try_acquire(self.key)
    }

    /// [`KeyedFleetLimiter::retry_after`].
    pub fn retry_after(&self, refused: &KeyedRefused) -> Duration {
        self.limiter.retry_after(refused)
    }
}

/// What the task knows of one slot.
#[derive(Default)]
struct Meta {
    redis_key: String,
    target: u64,
    last_demand: u64,
    /// Provisional admissions not yet charged to Redis.
    debt: u64,
    /// The last refresh that saw demand (or the install).
    busy_at: u64,
    /// Whether no call for the key happened yet (first lease: `initial`).
    fresh: bool,
}

/// One script call of a pipeline.
struct Call {
    /// The live slot it is for (`None`: a key evicted this round, giving
    /// its tokens back).
    slot: Option<usize>,
    redis_key: String,
    want: u64,
    ret: u64,
    /// Part of `want` that is debt.
    debt: u64,
}

struct KeyedRefresher<K> {
    shared: Arc<KShared<K>>,
    conn: ConnectionManager,
    script: Script,
    loaded: bool,
    prefix: String,
    name: String,
    params: GcraParams,
    breaker: CircuitBreaker,
    lease_duration: Duration,
    interval: Duration,
    idle_after: Duration,
    max_lease: u64,
    initial: u64,
    timeout: Duration,
    capacity: usize,
    index: HashMap<K, usize>,
    meta: Vec<Meta>,
    last_at: Timestamp,
}

impl<K> KeyedRefresher<K>
where
    K: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static,
{
    async fn run(mut self, stop: Arc<Notify>) {
        while next_refresh(self.interval, &stop).await {
            self.refresh().await;
        }
        // Shutdown: every lease back.
        let mut calls = Vec::new();
        let slots: Vec<usize> = self.index.values().copied().collect();
        for i in slots {
            if let Some(call) = self.evict(i) {
                calls.push(call);
            }
        }
        let now = self.shared.clock.now();
        self.send(calls, now).await;
    }

    /// Evicts the key of slot `i`: unlinks it, takes out its tokens, and
    /// returns the call giving them back (if any).
    fn evict(&mut self, i: usize) -> Option<Call> {
        let slot = &self.shared.slots[i];
        let guard = epoch::pin();
        // ordering: AcqRel on the key, then Release on the word: a request
        // that reads the new generation (Acquire) reads the null key.
        let old = slot.key.swap(EpochShared::null(), Ordering::AcqRel, &guard);
        // SAFETY: the task alone writes the key pointer; `old` was installed
        // by it and is unlinked now.
        let resident = unsafe { old.as_ref() }?;
        self.index.remove(&resident.key);
        let tokens = slot.word.evict();
        // ordering: Relaxed; read independently of the tokens (see
        // `try_acquire_at`): a stale expiry at most refuses a request.
        slot.expiry.store(0, Ordering::Relaxed);
        // SAFETY: unlinked above; readers that may still hold it pinned the
        // epoch before, so it is freed after they unpin.
        unsafe { guard.defer_destroy(old) };
        let meta = &mut self.meta[i];
        // ordering: Relaxed; counts.
        self.shared
            .uncharged
            .fetch_add(meta.debt, Ordering::Relaxed);
        self.shared.evicted.fetch_add(1, Ordering::Relaxed);
        self.shared.keys.fetch_sub(1, Ordering::Relaxed);
        let redis_key = core::mem::take(&mut meta.redis_key);
        *meta = Meta::default();
        (tokens > 0).then_some(Call {
            slot: None,
            redis_key,
            want: 0,
            ret: tokens,
            debt: 0,
        })
    }

    /// Installs `key` in a free slot of its window, evicting first — the
    /// table at its capacity — the least recently busy sixteenth of the
    /// table, and — the window full — the least recently busy key of the
    /// window.
    fn install(&mut self, key: K, tick: u64, evictions: &mut Vec<Call>) -> Option<usize> {
        let hash = self.shared.hasher.hash_one(&key);
        let redis_key = match keyed_rate_key(&self.prefix, &self.name, &key.to_string()) {
            Ok(k) => k,
            Err(_) => return None,
        };
        if self.index.len() >= self.capacity {
            // Make room for a run of new keys at once: the least recently
            // busy sixteenth of the table (at least one key), found in one
            // pass, so a full table costs amortised O(16) per new key.
            let mut by_age: Vec<(u64, usize)> = self
                .index
                .values()
                .map(|&i| (self.meta[i].busy_at, i))
                .collect();
            let n = (self.capacity / 16).clamp(1, by_age.len());
            by_age.select_nth_unstable(n - 1);
            for &(_, i) in &by_age[..n] {
                evictions.extend(self.evict(i));
            }
        }
        let mask = self.shared.mask;
        let window = (0..PROBE).map(|j| (hash as usize).wrapping_add(j) & mask);
        let guard = epoch::pin();
        let free = window.clone().find(|&i| {
            // ordering: Relaxed; the task alone writes key pointers.
            self.shared.slots[i]
                .key
                .load(Ordering::Relaxed, &guard)
                .is_null()
        });
        drop(guard);
        let i = match free {
            Some(i) => i,
            None => {
                let oldest = window.min_by_key(|&i| self.meta[i].busy_at)?;
                evictions.extend(self.evict(oldest));
                oldest
            }
        };
        let slot = &self.shared.slots[i];
        // ordering: Relaxed; a flag read on its own by requests.
        slot.failed.store(false, Ordering::Relaxed);
        let demand = slot.demand();
        self.meta[i] = Meta {
            redis_key,
            target: self.initial,
            last_demand: demand,
            debt: 0,
            busy_at: tick,
            fresh: true,
        };
        // The key's share entry is made here, by the task (charging
        // nothing), so that its requests find it and never clone the key.
        let _ = self
            .shared
            .share
            .check_key_n(&key, 0, self.shared.clock.now());
        self.index.insert(key.clone(), i);
        // ordering: Release; publishes the resident key (and its hash) to
        // requests, which load it with Acquire.
        slot.key
            .store(Owned::new(Resident { hash, key }), Ordering::Release);
        // ordering: Relaxed; a count.
        self.shared.keys.fetch_add(1, Ordering::Relaxed);
        Some(i)
    }

    async fn refresh(&mut self) {
        let now = self.shared.clock.now();
        let tick = now.as_nanos();
        let elapsed = now
            .saturating_duration_since(self.last_at)
            .as_nanos()
            .max(1);
        self.last_at = now;
        let mut calls = Vec::new();
        // New keys (and debts of keys that became resident meanwhile).
        while let Some((key, charge)) = self.shared.pending.pop() {
            let slot = match self.index.get(&key) {
                Some(&i) => Some(i),
                None => self.install(key, tick, &mut calls),
            };
            if let Some(i) = slot {
                self.meta[i].debt += u64::from(charge);
                self.meta[i].busy_at = tick;
            } else if charge {
                // ordering: Relaxed; a count.
                self.shared.uncharged.fetch_add(1, Ordering::Relaxed);
            }
        }
        // ordering: Relaxed; a flag this task writes.
        let available = self.shared.available.load(Ordering::Relaxed);
        let idle_ns = u64::try_from(self.idle_after.as_nanos()).unwrap_or(u64::MAX);
        let interval_ns = u64::try_from(self.interval.as_nanos()).unwrap_or(u64::MAX);
        let slots: Vec<usize> = self.index.values().copied().collect();
        for i in slots {
            let slot = &self.shared.slots[i];
            let demand = slot.demand();
            let meta = &mut self.meta[i];
            let delta = demand.saturating_sub(meta.last_demand);
            meta.last_demand = demand;
            if delta > 0 {
                meta.busy_at = tick;
            }
            let held = slot.held();
            // ordering: Relaxed; the task's own word.
            let expiry = slot.expiry.load(Ordering::Relaxed);
            let expired = tick >= expiry;
            if available && meta.debt == 0 && tick.saturating_sub(meta.busy_at) >= idle_ns {
                calls.extend(self.evict(i));
                continue;
            }
            let target = if meta.fresh {
                meta.target
            } else {
                let per_interval = u128::from(delta) * self.interval.as_nanos() / elapsed;
                u64::try_from(2 * per_interval + 1).unwrap_or(u64::MAX)
            };
            let target = target.clamp(1, self.max_lease);
            meta.target = target;
            let keep_last = !available && self.shared.policy == FailurePolicy::Degraded;
            let ret = if expired && !keep_last {
                // Taken out only if the call is sent (below); counted now.
                held
            } else if available && held > 2 * target {
                held - target
            } else {
                0
            };
            let want_lease = target.saturating_sub(held - ret);
            let debt = meta.debt.min(self.params.b);
            let renew_soon = expiry.saturating_sub(tick) < 2 * interval_ns;
            if want_lease == 0 && debt == 0 && ret == 0 && !(renew_soon && available) {
                continue;
            }
            calls.push(Call {
                slot: Some(i),
                redis_key: meta.redis_key.clone(),
                want: (want_lease + debt).min(self.params.b),
                ret,
                debt,
            });
        }
        self.send(calls, now).await;
        // Let the epoch advance so that evicted keys are freed.
        epoch::pin().flush();
    }

    /// Sends `calls` in pipelines of at most [`BATCH`], each through the
    /// breaker and the timeout, and applies the answers.
    async fn send(&mut self, mut calls: Vec<Call>, now: Timestamp) {
        while !calls.is_empty() {
            let rest = calls.split_off(calls.len().min(BATCH));
            self.send_batch(calls, now).await;
            calls = rest;
        }
    }

    async fn send_batch(&mut self, mut calls: Vec<Call>, now: Timestamp) {
        let shared = Arc::clone(&self.shared);
        // ordering: Relaxed; counts.
        shared.redis_calls.fetch_add(1, Ordering::Relaxed);
        let Ok(permit) = self.breaker.try_acquire(now) else {
            self.failed_batch(&calls, now, false);
            return;
        };
        // Take the tokens to give back out of the live leases now that the
        // call will be sent.
        for call in &mut calls {
            if let Some(i) = call.slot {
                let slot = &shared.slots[i];
                // At most a burst goes back per call (what the script
                // takes); the rest stays in the lease for the next one.
                let keep = slot.held().saturating_sub(call.ret.min(self.params.b));
                call.ret = slot.take_above(keep);
            }
        }
        let invocations: Vec<_> = calls
            .iter()
            .map(|c| {
                let mut inv = self.script.key(&c.redis_key);
                inv.arg(self.params.p)
                    .arg(self.params.r)
                    .arg(self.params.b)
                    .arg(c.want)
                    .arg(c.want.min(1))
                    .arg(c.ret);
                inv
            })
            .collect();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        if !self.loaded {
            pipe.load_script(&self.script);
        }
        for inv in &invocations {
            pipe.invoke_script(inv);
        }
        // ordering: Relaxed; a count.
        shared
            .scripts
            .fetch_add(calls.len() as u64, Ordering::Relaxed);
        let answer: Option<Vec<redis::RedisResult<Value>>> =
            match tokio::time::timeout(self.timeout, pipe.query_async(&mut self.conn)).await {
                Ok(Ok(v)) => Some(v),
                Ok(Err(_)) | Err(_) => None,
            };
        let done = shared.clock.now();
        let skip = usize::from(!self.loaded);
        let Some(answers) = answer.filter(|a| a.len() == calls.len() + skip) else {
            permit.failure(done);
            self.loaded = false;
            self.failed_batch(&calls, now, true);
            return;
        };
        permit.success(done);
        self.loaded = true;
        // ordering: Relaxed; a flag only this task writes.
        if !shared.available.swap(true, Ordering::Relaxed) {
            let degraded = shared.reports.degraded_total();
            shared.reports.emit(REDIS_RECOVERED, now, [degraded, 0]);
        }
        for (call, answer) in calls.iter().zip(answers.into_iter().skip(skip)) {
            let reply = answer.map(|v| {
                redis::from_redis_value::<Vec<i64>>(v)
                    .ok()
                    .as_deref()
                    .and_then(Reply::from_values)
            });
            match reply {
                Ok(Some(reply)) => self.apply(call, reply, now),
                Err(e) if e.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) => {
                    // The script did not run: nothing reached Redis.
                    self.loaded = false;
                    match call.slot {
                        Some(i) => shared.slots[i].grant(call.ret),
                        None => {
                            // ordering: Relaxed; a count.
                            shared.lost.fetch_add(call.ret, Ordering::Relaxed);
                        }
                    }
                }
                Ok(None) | Err(_) => {
                    // An error reply for this key (WRONGTYPE, malformed
                    // state) or a malformed answer: the key is decided by
                    // the failure policy until a call for it succeeds.
                    // ordering: Relaxed; counts, and a flag read on its own.
                    shared.key_errors.fetch_add(1, Ordering::Relaxed);
                    shared.lost.fetch_add(call.ret, Ordering::Relaxed);
                    if let Some(i) = call.slot {
                        shared.slots[i].failed.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    fn apply(&mut self, call: &Call, reply: Reply, now: Timestamp) {
        let shared = &self.shared;
        // ordering: Relaxed; counts.
        shared.granted.fetch_add(reply.granted, Ordering::Relaxed);
        shared.returned.fetch_add(call.ret, Ordering::Relaxed);
        let Some(i) = call.slot else { return };
        let meta = &mut self.meta[i];
        let charged = reply.granted.min(call.debt);
        meta.debt -= charged;
        meta.fresh = false;
        // ordering: Relaxed; a count.
        shared.charged.fetch_add(charged, Ordering::Relaxed);
        let slot = &shared.slots[i];
        slot.grant(reply.granted - charged);
        // ordering: Relaxed; the flag and the expiry are read on their own
        // (see `try_acquire_at`), the tokens are a count.
        slot.failed.store(false, Ordering::Relaxed);
        slot.expiry.store(
            now.saturating_add(self.lease_duration).as_nanos(),
            Ordering::Relaxed,
        );
    }

    /// Applies a failed pipeline: `taken` says whether the live leases'
    /// tokens to give back were taken out (the pipeline was sent: they may
    /// have reached Redis, so they are lost, never put back).
    fn failed_batch(&self, calls: &[Call], now: Timestamp, taken: bool) {
        let shared = &self.shared;
        // ordering: Relaxed; counts and a flag this task writes.
        shared.redis_errors.fetch_add(1, Ordering::Relaxed);
        for call in calls {
            // Evicted keys' tokens were taken out at eviction; live slots'
            // only if the call was sent (`ret` then holds what was taken).
            if call.slot.is_none() || taken {
                shared.lost.fetch_add(call.ret, Ordering::Relaxed);
            }
        }
        // ordering: Relaxed; a flag only this task writes.
        if shared.available.swap(false, Ordering::Relaxed) {
            shared
                .reports
                .emit(REDIS_UNAVAILABLE, now, [shared.policy.code(), 0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn slot() -> Slot<u64> {
        Slot {
            word: SlotWord::new(),
            key: Atomic::null(),
            expiry: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            spent: AtomicU64::new(0),
            starved: AtomicU64::new(0),
        }
    }

    /// The task evicts (bumping the generation and taking every token
    /// out) and re-grants, round after round, while requests take tokens at
    /// the generation they read: per generation, tokens taken by requests
    /// plus tokens taken out by the task equal the tokens granted. A
    /// request that read an old generation never takes a newer key's token.
    #[test]
    fn a_token_is_taken_only_at_its_own_generation() {
        const ROUNDS: usize = 3_000;
        let slot = Arc::new(slot());
        let round = Arc::new(AtomicUsize::new(0));
        let takers: Vec<_> = (0..2)
            .map(|_| {
                let (slot, round) = (Arc::clone(&slot), Arc::clone(&round));
                std::thread::spawn(move || {
                    let mut taken = vec![0u64; ROUNDS + 1];
                    // ordering: Relaxed; a stop signal.
                    while round.load(Ordering::Relaxed) < ROUNDS {
                        let generation = slot.word.generation();
                        // A pause between the read and the take widens the
                        // window in which the task moves on.
                        std::hint::spin_loop();
                        if slot.take(generation) {
                            taken[generation as usize] += 1;
                        }
                    }
                    taken
                })
            })
            .collect();
        let mut granted = vec![0u64; ROUNDS + 1];
        let mut returned = vec![0u64; ROUNDS + 1];
        for r in 0..ROUNDS {
            let g = slot.word.generation() as usize;
            assert_eq!(g, r);
            let n = 1 + (r as u64 % 5);
            slot.grant(n);
            granted[g] += n;
            // Give the takers a moment with the tokens.
            for _ in 0..2_000 {
                std::hint::spin_loop();
            }
            if r % 3 == 0 {
                returned[g] += slot.take_above(1);
            }
            // Evict: the next generation, no tokens.
            returned[g] += slot.word.evict();
            // ordering: Relaxed; a progress count.
            round.store(r + 1, Ordering::Relaxed);
        }
        let mut taken = vec![0u64; ROUNDS + 1];
        for t in takers {
            for (g, n) in t.join().unwrap().into_iter().enumerate() {
                taken[g] += n;
            }
        }
        for g in 0..ROUNDS {
            assert_eq!(
                taken[g] + returned[g],
                granted[g],
                "generation {g}: taken {} returned {} granted {}",
                taken[g],
                returned[g],
                granted[g]
            );
        }
        assert!(taken.iter().sum::<u64>() > 0, "the takers never took");
    }
}
