//! A rate limiter per key, in a table whose memory is fixed at construction.
//!
//! # Layout
//!
//! - An arena of `capacity` entries, each a GCRA state cell (128 bits, see
//!   [`gcra`](super::gcra)) and an (initially empty) `(hash, key)` pair,
//!   allocated once.
//! - An index of `capacity / 2` (rounded up to a power of two: between half
//!   the capacity and the capacity; at least two) buckets of one cache line each, 32 to 64
//!   bytes per entry: a header word (a version and an occupancy bit per
//!   cell) and fourteen 32-bit cells, each naming an arena entry (in the low
//!   bits, as many as the capacity needs) with a fragment of its key's hash
//!   (the bits left). A key lives in the bucket its hash selects; two keys
//!   that share the fragment are told apart by comparing the full hash and
//!   the keys themselves, so distinct keys never share state.
//! - A free list of arena entries (crossbeam-queue's lock-free `ArrayQueue`).
//!
//! # Protocol
//!
//! - Lookup: pin the epoch, read the header, compare the cells whose bit is
//!   set. No lock, no write: a present key costs one header and cell read,
//!   one key comparison and the compare-and-swap on its state cell.
//! - Insert (a new key): take a free entry, write the key and the state of a
//!   first request into it, claim an empty cell with a compare-and-swap, then
//!   publish it by a compare-and-swap of the header from the version read
//!   before scanning the bucket. Any concurrent insert into the bucket bumps
//!   the version, so the publish fails and the bucket is scanned again: two
//!   threads can never publish the same key twice. The version has 56 bits
//!   and wraps (`wrapping_add`): a publish could be fooled only by exactly
//!   `2^56` changes of one bucket between its read and its compare-and-swap.
//! - A user `Hash`, `Eq` or `Clone` that panics loses nothing: the hash and
//!   the lookups before an insert hold no entry, and an entry taken off the
//!   free list is held by a guard that puts it back if the insert unwinds.
//! - Eviction: only of an entry whose theoretical arrival time is in the past
//!   (its state means "full bucket", exactly like a fresh key's). The evictor
//!   first swaps the state cell to a `DEAD` mark with a compare-and-swap, so
//!   a request racing with it either charges the entry before (and the
//!   eviction fails, because the entry is no longer fresh) or finds it dead
//!   (and starts again with a fresh key, which decides the same way). Then it
//!   clears the cell's bit and hands the entry back to the free list through
//!   the epoch: a reader that might still look at it finishes first.
//!
//! Eviction happens when the free list runs low (a few buckets are swept per
//! insert below a quarter free) or empty (a longer sweep), and on
//! [`KeyedRateLimiter::sweep`].

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::hash::{BuildHasher, Hash};
use core::mem::MaybeUninit;

use crossbeam_queue::ArrayQueue;

use crate::error::ConfigError;
use crate::events::{Event, EventKind, EventSink, NoSink};
use crate::sync::{AtomicU32, AtomicU64, AtomicU128, ExclusiveCell, Ordering, epoch, spin_hint};
use crate::time::Timestamp;

use super::all::TokenSource;
use super::error::RateLimitError;
use super::gcra::{self, Refusal, State};
use super::limiter::RateLimiter;
use super::quota::Quota;

mod hasher;
mod snapshot;
pub use hasher::{DefaultHashBuilder, KeyHasher};
pub use snapshot::KeyedRestore;

/// Cells per bucket: a 64-bit header and fourteen 32-bit cells fill a
/// 64-byte line.
const WAYS: usize = 14;
const BITS: u64 = (1 << WAYS) - 1;
/// One version step in the header, above the occupancy bits.
const VERSION_SHIFT: u32 = 16;
const VERSION: u64 = 1 << VERSION_SHIFT;
/// Fibonacci hashing: spreads any hash, even one weak in its low bits, over
/// the buckets.
const FIB: u64 = 0x9E37_79B9_7F4A_7C15;
/// The state of an entry being evicted (never a valid state: its token
/// count is above `gcra::MAX_TOKENS`).
const DEAD: State = State::MAX;
/// Buckets swept when the free list is empty.
const SWEEP_WHEN_EMPTY: usize = 64;
/// Most rounds of `reclaim_now` a new key that found no room waits through
/// while evicted entries wait for their grace period.
const RECLAIM_ROUNDS: u32 = 16;
/// Buckets swept per insert while the free list is below a quarter.
const SWEEP_WHEN_LOW: usize = 4;

/// What a keyed limiter does with a new key when it has no room for it
/// (every entry holds a key whose tokens are still in use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WhenFull {
    /// Refuse the request with [`RateLimitError::TableFull`] (the default).
    Reject,
    /// Let the request through unlimited.
    Admit,
    /// Charge one shared limiter with this quota for every key that has no
    /// room.
    Overflow(Quota),
}

/// Settings of a [`KeyedRateLimiter`].
#[derive(Clone, Copy, Debug)]
pub struct KeyedConfig {
    quota: Quota,
    capacity: u32,
    when_full: WhenFull,
}

impl KeyedConfig {
    /// Every key gets `quota`; at most `capacity` keys are tracked at once.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero capacity, [`ConfigError::TooLarge`]
    /// above 2^30 keys.
    pub fn new(quota: Quota, capacity: usize) -> Result<Self, ConfigError> {
        const MAX: usize = 1 << 30;
        if capacity == 0 {
            return Err(ConfigError::Zero { field: "capacity" });
        }
        if capacity > MAX {
            return Err(ConfigError::TooLarge {
                field: "capacity",
                value: capacity as u64,
                max: MAX as u64,
            });
        }
        Ok(KeyedConfig {
            quota,
            capacity: capacity as u32,
            when_full: WhenFull::Reject,
        })
    }

    /// What to do with a new key when the table has no room.
    pub fn when_full(mut self, policy: WhenFull) -> Self {
        self.when_full = policy;
        self
    }

    /// The per-key quota.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// The most keys tracked at once.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }
}

/// One cache line of the index.
///
/// | word | bits | field |
/// |---|---|---|
/// | `header` | 16..64 | version, bumped by every publish and unlink (wraps) |
/// | `header` | 14..16 | zero |
/// | `header` | 0..14 | occupancy: cell `i` is published iff bit `i` is set |
/// | `cells[i]` | `slot_bits..32` | fragment: the low bits of the key's hash |
/// | `cells[i]` | `0..slot_bits` | the arena entry's number plus one (`0`: empty) |
///
/// `slot_bits` is fixed at construction: the fewest bits that hold the
/// capacity (at most 31, for 2^30 entries).
#[repr(align(64))]
struct Bucket {
    header: AtomicU64,
    cells: [AtomicU32; WAYS],
}

impl Bucket {
    fn new() -> Self {
        Bucket {
            header: AtomicU64::new(0),
            cells: core::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

struct Entry<K> {
    state: AtomicU128,
    /// Written only while the entry is off the free list and not yet
    /// published, or after it has been unlinked and every reader that could
    /// see it has unpinned.
    data: ExclusiveCell<MaybeUninit<(u64, K)>>,
}

enum Overflow<S: EventSink> {
    Reject,
    Admit,
    Shared(Box<RateLimiter<S>>),
}

struct Inner<K, H, S: EventSink> {
    quota: Quota,
    buckets: Box<[Bucket]>,
    mask: u64,
    /// `64 - log2(buckets)`: a bucket is the top bits of `hash * FIB`.
    shift: u32,
    /// The low bits of a cell that name its entry (see [`Bucket`]).
    slot_bits: u32,
    entries: Box<[Entry<K>]>,
    free: ArrayQueue<u32>,
    low_water: usize,
    hand: AtomicU64,
    /// Evicted entries waiting for their grace period.
    retired: AtomicU64,
    hasher: H,
    overflow: Overflow<S>,
    sink: S,
    source: u32,
}

// SAFETY: entries' `data` cells are accessed under the protocol in the module
// documentation: written only by the one thread that owns the entry (taken off
// the free list, or reclaimed after an epoch grace period), read only while
// published. Keys move between threads (K: Send) and are read from several
// at once (K: Sync).
unsafe impl<K: Send + Sync, H: Sync, S: EventSink + Sync> Sync for Inner<K, H, S> {}
// SAFETY: as above; nothing in `Inner` is tied to a thread.
unsafe impl<K: Send + Sync, H: Send, S: EventSink + Send> Send for Inner<K, H, S> {}

impl<K, H, S: EventSink> Drop for Inner<K, H, S> {
    fn drop(&mut self) {
        for bucket in self.buckets.iter() {
            let bits = bucket.header.load(Ordering::Relaxed) & BITS;
            for i in 0..WAYS {
                if bits & (1 << i) != 0 {
                    let slot = self.cell_slot(bucket.cells[i].load(Ordering::Relaxed));
                    let entry = &self.entries[slot];
                    // SAFETY: `&mut self`: nobody else is here. A published
                    // cell's entry holds an initialised key, dropped once.
                    unsafe { entry.data.with_mut(|d| d.assume_init_drop()) };
                }
            }
        }
    }
}

/// A rate limiter per key with a hard cap on the number of keys. The table
/// and its lock-free protocol are described in `docs/rate-limiter.md`.
///
/// Cloning it is cheap and shares the table.
///
/// ```
/// use tenlives_engine::rate::{KeyedConfig, RateLimitError, KeyedRateLimiter, Quota, WhenFull};
/// use tenlives_engine::time::Timestamp;
///
/// let config = KeyedConfig::new(Quota::per_second(2)?, 10_000)?.when_full(WhenFull::Reject);
/// let limiter = KeyedRateLimiter::new(config);
/// let now = Timestamp::ZERO;
/// assert!(limiter.check_key(&"alice", now).is_ok());
/// assert!(limiter.check_key(&"alice", now).is_ok());
/// let refused = limiter.check_key(&"alice", now).unwrap_err();
/// assert_eq!(refused.retry_after(), Some(std::time::Duration::from_millis(500)));
/// // Bob has his own tokens.
/// assert!(limiter.check_key(&"bob", now).is_ok());
/// # Ok::<(), tenlives_engine::ConfigError>(())
/// ```
pub struct KeyedRateLimiter<K, H = DefaultHashBuilder, S: EventSink = NoSink> {
    inner: Arc<Inner<K, H, S>>,
}

impl<K, H, S: EventSink> Clone for KeyedRateLimiter<K, H, S> {
    fn clone(&self) -> Self {
        KeyedRateLimiter {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, H, S: EventSink> fmt::Debug for KeyedRateLimiter<K, H, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimiter")
            .field("quota", &self.inner.quota)
            .field("capacity", &self.inner.entries.len())
            .field(
                "in_use",
                &(self.inner.entries.len() - self.inner.free.len()),
            )
            .finish_non_exhaustive()
    }
}

impl<K> KeyedRateLimiter<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// A keyed limiter with a randomly seeded hasher
    /// ([`DefaultHashBuilder`]), emitting no events. Allocates its whole
    /// table now.
    pub fn new(config: KeyedConfig) -> Self {
        KeyedRateLimiter::with_hasher_and_sink(config, DefaultHashBuilder::default(), NoSink, 0)
    }
}

enum Found<'a, K> {
    Present { cell: usize, entry: &'a Entry<K> },
    Absent,
}

enum Inserted {
    Yes,
    AlreadyThere,
    NoRoom,
}

impl<K, H, S> KeyedRateLimiter<K, H, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    H: BuildHasher + Send + Sync + 'static,
    S: EventSink + Send + Sync + 'static,
{
    /// A keyed limiter hashing keys with `hasher` (seed it: keys often come
    /// from untrusted clients) and reporting refusals to `sink` tagged with
    /// `source`. The overflow limiter of [`WhenFull::Overflow`] reports to
    /// the same sink.
    pub fn with_hasher_and_sink(config: KeyedConfig, hasher: H, sink: S, source: u32) -> Self
    where
        S: Clone,
    {
        let capacity = config.capacity as usize;
        // At least two: a bucket is picked by a shift of `64 - log2`, and a
        // shift by 64 overflows.
        let buckets = capacity.div_ceil(2).next_power_of_two().max(2);
        // `capacity <= 2^30`: at most 31 bits, leaving at least one for the
        // fragment.
        let slot_bits = u32::BITS - config.capacity.leading_zeros();
        let free = ArrayQueue::new(capacity);
        for slot in 0..config.capacity {
            let _ = free.push(slot);
        }
        let overflow = match config.when_full {
            WhenFull::Reject => Overflow::Reject,
            WhenFull::Admit => Overflow::Admit,
            WhenFull::Overflow(q) => {
                Overflow::Shared(Box::new(RateLimiter::with_sink(q, sink.clone(), source)))
            }
        };
        let inner = Inner {
            quota: config.quota,
            buckets: (0..buckets)
                .map(|_| Bucket::new())
                .collect::<Vec<_>>()
                .into_boxed_slice(),
            mask: buckets as u64 - 1,
            shift: 64 - buckets.trailing_zeros(),
            slot_bits,
            entries: (0..capacity)
                .map(|_| Entry {
                    state: AtomicU128::new(0),
                    data: ExclusiveCell::new(MaybeUninit::uninit()),
                })
                .collect::<Vec<_>>()
                .into_boxed_slice(),
            free,
            low_water: capacity / 4,
            hand: AtomicU64::new(0),
            retired: AtomicU64::new(0),
            hasher,
            overflow,
            sink,
            source,
        };
        KeyedRateLimiter {
            inner: Arc::new(inner),
        }
    }

    /// The per-key quota.
    pub fn quota(&self) -> &Quota {
        &self.inner.quota
    }

    /// The most keys tracked at once.
    pub fn capacity(&self) -> usize {
        self.inner.entries.len()
    }

    /// Entries in use: keys tracked, plus evicted entries waiting for their
    /// epoch grace period before reuse.
    pub fn in_use(&self) -> usize {
        self.inner.entries.len() - self.inner.free.len()
    }

    /// Takes one token from `key`'s limiter.
    ///
    /// # Errors
    ///
    /// [`RateLimitError::Limited`] with the time a token will be there, or what
    /// the [`WhenFull`] policy says for a new key with no room.
    #[inline]
    pub fn check_key(&self, key: &K, now: Timestamp) -> Result<(), RateLimitError> {
        self.check_key_n(key, 1, now)
    }

    /// Takes `n` tokens from `key`'s limiter, all or none.
    ///
    /// # Errors
    ///
    /// As [`check_key`](Self::check_key), plus [`RateLimitError::Insufficient`]
    /// when `n` exceeds the burst and the quota allows no debt.
    #[inline]
    pub fn check_key_n(&self, key: &K, n: u32, now: Timestamp) -> Result<(), RateLimitError> {
        let inner = &*self.inner;
        let hash = inner.hasher.hash_one(key);
        let t = now.as_nanos();
        let n = u64::from(n);
        let mut guard = epoch::pin();
        let mut rounds = 0;
        loop {
            match self.find(key, hash) {
                Found::Present { cell, entry } => match charge(&entry.state, &inner.quota, t, n) {
                    Ok(()) => return Ok(()),
                    Err(Some(refusal)) => return Err(self.refused(refusal, n, now)),
                    Err(None) => self.help_unlink(hash, cell),
                },
                Found::Absent => {
                    let grant = gcra::decide(&inner.quota, 0, t, t, n)
                        .map_err(|refusal| self.refused(refusal, n, now))?;
                    match self.insert(key, hash, grant.state, t, &guard) {
                        Inserted::Yes => return Ok(()),
                        Inserted::AlreadyThere => continue,
                        // Entries evicted by the sweep wait for their grace
                        // period; while some do, let it pass (a few rounds,
                        // retrying after each) before giving up (see
                        // `reclaim_now`). A table full of live keys refuses
                        // at once.
                        // ordering: Relaxed; a hint, see `retired`.
                        Inserted::NoRoom
                            if rounds < RECLAIM_ROUNDS
                                && inner.retired.load(Ordering::Relaxed) > 0 =>
                        {
                            drop(guard);
                            reclaim_now();
                            guard = epoch::pin();
                            rounds += 1;
                        }
                        Inserted::NoRoom => return self.no_room(n, now),
                    }
                }
            }
        }
    }

    /// Whether `n` tokens are available to `key` now, taking nothing (a key
    /// not in the table has a full burst).
    ///
    /// # Errors
    ///
    /// As [`check_key_n`](Self::check_key_n), except that a full table is
    /// not reported: a peek never inserts.
    pub fn peek_key_n(&self, key: &K, n: u32, now: Timestamp) -> Result<(), RateLimitError> {
        let inner = &*self.inner;
        let hash = inner.hasher.hash_one(key);
        let t = now.as_nanos();
        let _guard = epoch::pin();
        let state = match self.find(key, hash) {
            // ordering: Relaxed; a peek is a snapshot.
            Found::Present { entry, .. } => match entry.state.load(Ordering::Relaxed) {
                DEAD => 0,
                s => s,
            },
            Found::Absent => 0,
        };
        gcra::decide(&inner.quota, state, t, t, u64::from(n))
            .map(|_| ())
            .map_err(|refusal| refusal.into_error(&inner.quota, n, now))
    }

    /// Gives back `n` tokens that `key` was charged earlier. Does nothing if
    /// the key is no longer tracked (then its tokens had all refilled).
    pub fn refund_key(&self, key: &K, n: u32) {
        let hash = self.inner.hasher.hash_one(key);
        let _guard = epoch::pin();
        if let Found::Present { entry, .. } = self.find(key, hash) {
            // ordering: Relaxed, as in `gcra::refund`; a dead entry stays dead.
            let _ = entry
                .state
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                    (s != DEAD).then(|| {
                        gcra::pack(
                            gcra::reset_of(s),
                            gcra::tokens_of(s).saturating_sub(u64::from(n)),
                        )
                    })
                });
        }
    }

    /// Evicts every key whose tokens have all refilled by `now` (which a
    /// fresh key would decide exactly like) and returns how many. Their
    /// entries become reusable after an epoch grace period. Inserts sweep on
    /// their own when the table runs low; call this to reclaim room ahead of
    /// a burst of new keys.
    pub fn sweep(&self, now: Timestamp) -> usize {
        let t = now.as_nanos();
        let guard = epoch::pin();
        let evicted = (0..self.inner.buckets.len())
            .map(|b| self.evict_fresh(b, t, &guard))
            .sum();
        guard.flush();
        evicted
    }

    /// A [`TokenSource`] for `key`, to take part in
    /// [`acquire_all`](super::acquire_all).
    pub fn source<'a>(&'a self, key: &'a K) -> KeyedSource<'a, K, H, S> {
        KeyedSource { limiter: self, key }
    }

    #[inline(always)]
    fn find(&self, key: &K, hash: u64) -> Found<'_, K> {
        let inner = &*self.inner;
        let bucket = &inner.buckets[inner.bucket_of(hash)];
        let fragment = inner.fragment(hash);
        // ordering: Acquire pairs with the Release publish in `insert`: the
        // cells and entries it names were written before it.
        let mut bits = bucket.header.load(Ordering::Acquire) & BITS;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            // ordering: Relaxed; made visible by the header's Acquire above,
            // and not cleared before an epoch grace period we are inside of.
            let cell = bucket.cells[i].load(Ordering::Relaxed);
            if cell >> inner.slot_bits != fragment {
                continue;
            }
            let entry = &inner.entries[inner.cell_slot(cell)];
            // SAFETY: a published entry's data is initialised and written
            // again only after an epoch grace period; the caller is pinned.
            let same = unsafe {
                entry.data.with(|d| {
                    let (h, k) = d.assume_init_ref();
                    *h == hash && k == key
                })
            };
            if same {
                return Found::Present { cell: i, entry };
            }
        }
        Found::Absent
    }

    fn insert(&self, key: &K, hash: u64, state: State, now: u64, guard: &epoch::Guard) -> Inserted {
        let inner = &*self.inner;
        let slot = match inner.free.pop() {
            Some(slot) => slot,
            None => {
                self.sweep_some(SWEEP_WHEN_EMPTY, now, guard);
                guard.flush();
                match inner.free.pop() {
                    Some(slot) => slot,
                    None => return Inserted::NoRoom,
                }
            }
        };
        // From here on the slot goes back to the free list however this
        // ends, unless it is published: a panicking `K::clone` or `K::eq`
        // must not leak it.
        let mut claim = Claim {
            inner,
            slot,
            filled: false,
        };
        if inner.free.len() < inner.low_water {
            self.sweep_some(SWEEP_WHEN_LOW, now, guard);
        }
        let entry = &inner.entries[slot as usize];
        // SAFETY: the slot came off the free list: it is ours alone until
        // published, and no reader can reach it. If `clone` panics, nothing
        // was written and the claim hands the slot back unfilled.
        unsafe {
            entry.data.with_mut(|d| {
                d.write((hash, key.clone()));
            })
        };
        claim.filled = true;
        // ordering: Relaxed; published by the header's Release below.
        entry.state.store(state, Ordering::Relaxed);

        let bucket = &inner.buckets[inner.bucket_of(hash)];
        let cell_value = inner.fragment(hash) << inner.slot_bits | (slot + 1);
        loop {
            // ordering: Acquire, as in `find`.
            let header = bucket.header.load(Ordering::Acquire);
            // No cell is claimed here, so a panic in `K::eq` loses nothing
            // the claim does not give back.
            if let Found::Present { .. } = self.find(key, hash) {
                return Inserted::AlreadyThere;
            }
            let Some(i) = claim_cell(bucket, header, cell_value) else {
                // Fourteen keys share this bucket. Evict the fresh ones; their
                // cells come back after the grace period, which the caller
                // lets pass once before giving up.
                drop(claim);
                self.evict_fresh(inner.bucket_of(hash), now, guard);
                return Inserted::NoRoom;
            };
            let published = header.wrapping_add(VERSION) | (1 << i);
            // ordering: Release publishes the entry and the cell; AcqRel so a
            // failed attempt that rescans sees what the winner published.
            match bucket.header.compare_exchange(
                header,
                published,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    core::mem::forget(claim);
                    return Inserted::Yes;
                }
                Err(_) => {
                    // ordering: Relaxed; the cell was never published.
                    bucket.cells[i].store(0, Ordering::Relaxed);
                    spin_hint();
                }
            }
        }
    }

    fn sweep_some(&self, buckets: usize, now: u64, guard: &epoch::Guard) {
        let inner = &*self.inner;
        for _ in 0..buckets {
            // ordering: Relaxed; the hand only spreads sweeping around.
            let b = inner.hand.fetch_add(1, Ordering::Relaxed) & inner.mask;
            self.evict_fresh(b as usize, now, guard);
        }
    }

    /// Evicts the entries of bucket `b` that are fresh at `now` (ns);
    /// returns how many.
    fn evict_fresh(&self, b: usize, now: u64, guard: &epoch::Guard) -> usize {
        let inner = &*self.inner;
        let bucket = &inner.buckets[b];
        // ordering: Acquire, as in `find`.
        let mut bits = bucket.header.load(Ordering::Acquire) & BITS;
        let mut evicted = 0;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            // ordering: Relaxed, as in `find`.
            let cell = bucket.cells[i].load(Ordering::Relaxed);
            let slot = inner.cell_slot(cell);
            let cell_state = &inner.entries[slot].state;
            // ordering: Relaxed; the compare-and-swap below confirms it.
            let state = cell_state.load(Ordering::Relaxed);
            if state == DEAD || !gcra::is_full(&inner.quota, state, now) {
                continue;
            }
            if cell_state
                .compare_exchange(state, DEAD, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            unlink(bucket, i);
            let owner = Arc::clone(&self.inner);
            // Packed so the closure fits in crossbeam's inline storage (three
            // words) and deferring allocates nothing: b < 2^29, slot < 2^30,
            // i < 16.
            let at = (b as u64) << 34 | (slot as u64) << 4 | i as u64;
            // ordering: Relaxed; a hint for `check_key_n`'s retries only.
            self.inner.retired.fetch_add(1, Ordering::Relaxed);
            guard.defer(move || owner.reclaim(at));
            evicted += 1;
        }
        evicted
    }

    /// A reader met a dead entry at `cell`: make sure it is unlinked so the
    /// next lookup does not meet it again.
    fn help_unlink(&self, hash: u64, cell: usize) {
        let bucket = &self.inner.buckets[self.inner.bucket_of(hash)];
        unlink(bucket, cell);
    }

    #[cold]
    fn no_room(&self, n: u64, now: Timestamp) -> Result<(), RateLimitError> {
        let inner = &*self.inner;
        if inner.sink.enabled() {
            inner.sink.emit(Event::new(
                EventKind::KEYED_TABLE_FULL,
                inner.source,
                now,
                [n, 0],
            ));
        }
        match &inner.overflow {
            Overflow::Reject => Err(RateLimitError::TableFull),
            Overflow::Admit => Ok(()),
            Overflow::Shared(limiter) => {
                // `n` came from a `u32`.
                limiter.check_n(n as u32, now)
            }
        }
    }

    #[cold]
    fn refused(&self, refusal: Refusal, n: u64, now: Timestamp) -> RateLimitError {
        // `n` came from a `u32`.
        let err = refusal.into_error(&self.inner.quota, n as u32, now);
        let inner = &*self.inner;
        if inner.sink.enabled() {
            let wait = err.retry_after().map_or(u64::MAX, |d| d.as_nanos() as u64);
            inner.sink.emit(Event::new(
                EventKind::RATE_LIMITED,
                inner.source,
                now,
                [n, wait],
            ));
        }
        err
    }
}

impl<K, H, S: EventSink> Inner<K, H, S> {
    #[inline(always)]
    fn bucket_of(&self, hash: u64) -> usize {
        (hash.wrapping_mul(FIB) >> self.shift) as usize
    }

    /// The bits of `hash` a cell keeps: its low bits (the bucket comes from
    /// the top bits of the product above, which depend mostly on the high
    /// ones), as many as `slot_bits` leaves.
    #[inline(always)]
    fn fragment(&self, hash: u64) -> u32 {
        (hash as u32) >> self.slot_bits
    }

    /// The arena entry a published cell names.
    #[inline(always)]
    fn cell_slot(&self, cell: u32) -> usize {
        ((cell & ((1 << self.slot_bits) - 1)) - 1) as usize
    }

    /// Runs after the grace period of an eviction: no reader can see the
    /// entry any more.
    fn reclaim(&self, at: u64) {
        let (b, slot, cell) = (
            (at >> 34) as usize,
            (at >> 4 & ((1 << 30) - 1)) as usize,
            (at & 15) as usize,
        );
        let entry = &self.entries[slot];
        // SAFETY: unlinked, and every thread that could have read it has
        // unpinned since: this is the only access.
        unsafe { entry.data.with_mut(|d| d.assume_init_drop()) };
        // ordering: Release; whoever claims the cell next starts after this.
        self.buckets[b].cells[cell].store(0, Ordering::Release);
        // The queue holds every slot, so there is room for this one.
        let _ = self.free.push(slot as u32);
        // ordering: Relaxed; a hint only (see `retired`).
        self.retired.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An entry taken off the free list by an insert and not (yet) published.
/// Dropping it, on any path that does not publish, panics included, hands
/// the entry back: dropping the key if it was written.
struct Claim<'a, K, H, S: EventSink> {
    inner: &'a Inner<K, H, S>,
    slot: u32,
    /// The entry holds an initialised `(hash, key)`.
    filled: bool,
}

impl<K, H, S: EventSink> Drop for Claim<'_, K, H, S> {
    fn drop(&mut self) {
        let entry = &self.inner.entries[self.slot as usize];
        // SAFETY: never published, so still ours alone; initialised iff
        // `filled`. Moved out before the slot goes back, so that a panicking
        // `K::drop` below cannot leak the slot.
        let data = self
            .filled
            .then(|| unsafe { entry.data.with_mut(|d| d.assume_init_read()) });
        // The queue holds every slot, so there is room for this one.
        let _ = self.inner.free.push(self.slot);
        drop(data);
    }
}

/// Lets epoch reclamation run: pinning and flushing, unpinned in between,
/// lets the global epoch advance past this thread's own retired entries (two
/// advances are needed). Another thread pinned in an older epoch holds that
/// back, typically one descheduled inside a limiter call, so each attempt
/// yields the processor first to let it finish. Bounded: this is the cold
/// path of a new key that found no room.
fn reclaim_now() {
    // Each flush collects at most a few sealed bags, oldest first.
    for _ in 0..64 {
        #[cfg(not(tenlives_loom))]
        std::thread::yield_now();
        epoch::pin().flush();
    }
}

/// Claims an empty, unpublished cell of `bucket` for `value`.
fn claim_cell(bucket: &Bucket, header: u64, value: u32) -> Option<usize> {
    (0..WAYS).find(|&i| {
        header & (1 << i) == 0
            // ordering: Acquire pairs with `reclaim`'s Release of the cell.
            && bucket.cells[i]
                .compare_exchange(0, value, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    })
}

/// Clears cell `i`'s bit if it is still set.
fn unlink(bucket: &Bucket, i: usize) {
    // ordering: Relaxed loads, AcqRel update: the header is the bucket's
    // publication point, and a concurrent insert must see the version move.
    let _ = bucket
        .header
        .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |h| {
            (h & (1 << i) != 0).then(|| h.wrapping_add(VERSION) & !(1 << i))
        });
}

/// Charges `n` tokens to an entry's state at `now` (ns). `Err(None)` when
/// it is dead.
#[inline(always)]
fn charge(cell: &AtomicU128, quota: &Quota, now: u64, n: u64) -> Result<(), Option<Refusal>> {
    // ordering: Relaxed, as in `gcra::acquire`.
    let mut state = cell.load(Ordering::Relaxed);
    loop {
        if state == DEAD {
            return Err(None);
        }
        let grant = gcra::decide(quota, state, now, now, n).map_err(Some)?;
        match cell.compare_exchange_weak(state, grant.state, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Ok(()),
            Err(actual) => {
                state = actual;
                spin_hint();
            }
        }
    }
}

/// One key of a [`KeyedRateLimiter`] as a [`TokenSource`].
#[derive(Debug)]
pub struct KeyedSource<'a, K, H, S: EventSink> {
    limiter: &'a KeyedRateLimiter<K, H, S>,
    key: &'a K,
}

impl<K, H, S> TokenSource for KeyedSource<'_, K, H, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    H: BuildHasher + Send + Sync + 'static,
    S: EventSink + Send + Sync + 'static,
{
    fn peek(&self, n: u32, now: Timestamp) -> Result<(), RateLimitError> {
        self.limiter.peek_key_n(self.key, n, now)
    }

    fn take(&self, n: u32, now: Timestamp) -> Result<(), RateLimitError> {
        self.limiter.check_key_n(self.key, n, now)
    }

    fn give_back(&self, n: u32) {
        self.limiter.refund_key(self.key, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foldhash::fast::FixedState;

    /// A bucket's version at its largest: the next insert or unlink wraps it
    /// (to version 0), and the table goes on working.
    #[test]
    fn the_bucket_version_wraps_harmlessly() {
        let quota = Quota::per_second(1).unwrap();
        let limiter = KeyedRateLimiter::with_hasher_and_sink(
            KeyedConfig::new(quota, 4).unwrap(),
            FixedState::with_seed(1),
            NoSink,
            0,
        );
        let inner = &*limiter.inner;
        let b = inner.bucket_of(inner.hasher.hash_one(7u64));
        // ordering: Relaxed; single-threaded test.
        inner.buckets[b]
            .header
            .store(u64::MAX << VERSION_SHIFT, Ordering::Relaxed);
        let now = Timestamp::from_nanos(5_000_000_000);
        assert!(limiter.check_key(&7, now).is_ok());
        let header = inner.buckets[b].header.load(Ordering::Relaxed);
        assert_eq!(header >> VERSION_SHIFT, 0, "the version wrapped to 0");
        assert_eq!(header & BITS, 1, "the key is published");
        // The key is found again (its one token is gone), and an unlink
        // (sweeping it once refilled) moves the version on again.
        assert!(limiter.check_key(&7, now).is_err());
        assert_eq!(limiter.sweep(Timestamp::from_nanos(7_000_000_000)), 1);
        let header = inner.buckets[b].header.load(Ordering::Relaxed);
        assert_eq!((header >> VERSION_SHIFT, header & BITS), (1, 0));
    }

    /// The keyed limiter at the ends of time and with time going backwards.
    #[test]
    fn the_ends_of_time_and_time_going_backwards() {
        let quota = Quota::new(1, core::time::Duration::from_nanos(1))
            .unwrap()
            .with_burst(3)
            .unwrap();
        let limiter = KeyedRateLimiter::with_hasher_and_sink(
            KeyedConfig::new(quota, 4).unwrap(),
            FixedState::with_seed(2),
            NoSink,
            0,
        );
        for _ in 0..3 {
            assert!(limiter.check_key(&1, Timestamp::MAX).is_ok());
        }
        assert!(limiter.check_key(&1, Timestamp::MAX).is_err());
        // Stamped earlier: the key's arrival time is ahead of it.
        assert!(limiter.check_key(&1, Timestamp::ZERO).is_err());
        assert!(limiter.peek_key_n(&1, 1, Timestamp::ZERO).is_err());
        assert_eq!(limiter.sweep(Timestamp::ZERO), 0);
        assert_eq!(limiter.sweep(Timestamp::MAX), 0);
        limiter.refund_key(&1, 3);
        assert_eq!(limiter.sweep(Timestamp::MAX), 1);
        assert!(limiter.check_key_n(&2, 3, Timestamp::ZERO).is_ok());
        assert!(limiter.check_key(&2, Timestamp::ZERO).is_err());
        assert!(limiter.check_key(&2, Timestamp::from_nanos(1)).is_ok());
    }
}
