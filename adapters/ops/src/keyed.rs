//! Keyed policies: one instance per key (per host, per endpoint) under a
//! memory cap, where making room evicts only idle entries.
//!
//! A hand-written map rather than `moka`: moka evicts by its own admission
//! and frequency policy and lets no entry veto its eviction, while here an
//! entry someone still uses (a handle held, a permit in flight, a breaker
//! not closed) must never go.
//!
//! Lookups take one mutex: a keyed family is looked up once per request at
//! most and the critical section is a hash probe; a caller on a hot path
//! keeps the `Arc` it got.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use tenlives_engine::adaptive::{AdaptiveLimiter, LimitAlgorithm};
use tenlives_engine::breaker::{BreakerState, CircuitBreaker};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::events::EventSink;
use tenlives_engine::rate::RateLimiter;
use tenlives_engine::retry::RetryBudget;
use tenlives_engine::throttle::Throttle;
use tenlives_engine::time::Timestamp;

/// Whether an instance holds nothing that evicting it would lose, beyond
/// what a fresh instance would rebuild (its handle count is checked
/// separately).
pub trait Idle {
    /// True when the instance can be dropped and recreated unnoticed.
    fn is_idle(&self, now: Timestamp) -> bool;
}

impl<S: EventSink> Idle for Bulkhead<S> {
    /// No permit in flight (raw permits included, which hold no handle).
    fn is_idle(&self, _now: Timestamp) -> bool {
        self.in_flight() == 0
    }
}

impl<S: EventSink> Idle for CircuitBreaker<S> {
    /// Closed: an open, half-open or forced breaker carries a deadline or a
    /// decision a fresh one would forget. (The closed window's counts are
    /// lost; a fresh breaker starts them again.)
    fn is_idle(&self, _now: Timestamp) -> bool {
        self.state() == BreakerState::Closed
    }
}

impl<S: EventSink> Idle for RateLimiter<S> {
    /// A full bucket: a fresh limiter would grant exactly the same.
    fn is_idle(&self, now: Timestamp) -> bool {
        self.available(now) >= u64::from(self.quota().burst())
    }
}

impl<A: LimitAlgorithm, S: EventSink> Idle for AdaptiveLimiter<A, S> {
    /// No permit in flight. (The limit it learned is lost with it: the
    /// registry offers no keyed adaptive family.)
    fn is_idle(&self, _now: Timestamp) -> bool {
        self.in_flight() == 0
    }
}

impl<S: EventSink> Idle for Throttle<S> {
    /// Rejecting nothing.
    fn is_idle(&self, now: Timestamp) -> bool {
        self.probability(now) == 0.0
    }
}

impl<S: EventSink> Idle for RetryBudget<S> {
    /// Always: a budget only remembers recent traffic (a fresh one starts
    /// with its floor).
    fn is_idle(&self, _now: Timestamp) -> bool {
        true
    }
}

/// A keyed family is at its cap and every entry is busy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyedFull {
    /// The family's name.
    pub family: Arc<str>,
    /// Its cap.
    pub capacity: usize,
}

impl fmt::Display for KeyedFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the keyed family `{}` holds its cap of {} entries and none is idle",
            self.family, self.capacity
        )
    }
}

impl std::error::Error for KeyedFull {}

struct Slot<P> {
    policy: Arc<P>,
    /// A tick of the family's use counter: the least recently used idle
    /// entry goes first.
    last_used: u64,
}

struct Table<K, P> {
    slots: HashMap<K, Slot<P>>,
    tick: u64,
}

/// Makes the instance for a key.
type Make<K, P> = Box<dyn Fn(&K, Timestamp) -> Arc<P> + Send + Sync>;

/// One policy per key, created on first use, at most `capacity` at once.
///
/// Obtained from the [`Registry`](crate::Registry) (`keyed_breaker` and
/// friends), which creates each entry from the configuration of
/// `<family>:<key>` if the file has one, else `<family>`, else the default
/// (else, if a later configuration has neither, what the family was created
/// with), and re-applies configuration to every entry on reload. Entries report
/// telemetry under the family's name and source (bounded label cardinality).
pub struct Keyed<K, P> {
    family: Arc<str>,
    capacity: usize,
    table: Mutex<Table<K, P>>,
    make: Make<K, P>,
}

impl<K, P> fmt::Debug for Keyed<K, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyed")
            .field("family", &self.family)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone, P: Idle> Keyed<K, P> {
    pub(crate) fn new(family: Arc<str>, capacity: usize, make: Make<K, P>) -> Self {
        Keyed {
            family,
            capacity,
            table: Mutex::new(Table {
                slots: HashMap::new(),
                tick: 0,
            }),
            make,
        }
    }

    /// The instance for `key`, created on first use. When the family is at
    /// its cap, the least recently used idle entry (no handle held outside
    /// the family, and [`Idle::is_idle`]) is evicted first.
    ///
    /// # Errors
    ///
    /// [`KeyedFull`] when the family is at its cap and no entry is idle.
    pub fn get(&self, key: &K, now: Timestamp) -> Result<Arc<P>, KeyedFull> {
        let mut table = self.lock();
        table.tick += 1;
        let tick = table.tick;
        if let Some(slot) = table.slots.get_mut(key) {
            slot.last_used = tick;
            return Ok(slot.policy.clone());
        }
        if table.slots.len() >= self.capacity {
            let victim = table
                .slots
                .iter()
                // Our own reference is the only one: nobody outside holds
                // the instance (so no borrowed permit either).
                .filter(|(_, s)| Arc::strong_count(&s.policy) == 1 && s.policy.is_idle(now))
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone());
            match victim {
                Some(k) => {
                    table.slots.remove(&k);
                }
                None => {
                    return Err(KeyedFull {
                        family: self.family.clone(),
                        capacity: self.capacity,
                    });
                }
            }
        }
        let policy = (self.make)(key, now);
        table.slots.insert(
            key.clone(),
            Slot {
                policy: policy.clone(),
                last_used: tick,
            },
        );
        Ok(policy)
    }

    /// The family's name.
    pub fn family(&self) -> &str {
        &self.family
    }

    /// The most entries it holds at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `key` has an entry now (without creating one).
    pub fn contains(&self, key: &K) -> bool {
        self.lock().slots.contains_key(key)
    }

    /// Calls `f` with every entry (for reload and inspection), under the
    /// family's lock.
    pub fn for_each(&self, mut f: impl FnMut(&K, &Arc<P>)) {
        for (k, s) in &self.lock().slots {
            f(k, &s.policy);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table<K, P>> {
        // A panic while holding the lock cannot leave the table half
        // changed (every change is one insert or remove), so a poisoned
        // lock is used as is.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}
