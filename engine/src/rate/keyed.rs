//! A rate limiter per key, in a table whose memory is fixed at construction.
//!
//! # Layout
//!
//! - An arena of `capacity` entries, allocated once, each 24 bytes for a
//!   `u64` key (32 with a 128-bit state): the key's GCRA state word, in the
//!   width the quota allows ([`word`]: `TAT` in 64 bits for a
//!   whole-nanosecond interval, `TAT·a` for a small fraction `c / a` ns,
//!   else the 128-bit state of [`gcra`](super::gcra)), a link word (the low 32 bits of the key's hash
//!   beside the number of the next entry of its chain) and the (initially
//!   empty) key. A check of a present key reads one entry: its tag, key and
//!   state share a line (or two, for an entry that straddles one).
//! - An index of one 32-bit head per bucket, `capacity` rounded up to a power
//!   of two buckets (4 to 8 bytes per entry): the number of the first entry
//!   of the bucket's chain, and a bit held by the one thread sweeping it.
//! - A free list of arena entries ([`free`]: a lock-free stack linked
//!   through one 32-bit number per entry, its exact length in its head
//!   word), handed out in order at first and last in, first out after, so
//!   the entries in use stay dense in the arena. It needs no ABA tag: pops
//!   happen only while pinned, and every push of an entry goes through the
//!   epoch (see its module documentation).
//!
//! # Protocol
//!
//! - Lookup: pin the epoch, read the head, walk the chain comparing tags,
//!   then keys, skipping entries being evicted. No lock, no write: a present
//!   key costs one head and (usually) one entry read, one key comparison and
//!   the compare-and-swap on its state cell.
//! - Insert (a new key): take a free entry, write the key, its tag and the
//!   state of a first request into it, link it in front of the chain read
//!   before scanning the chain, and publish it by a compare-and-swap of the
//!   head from that value. Any concurrent insert into the bucket changes the
//!   head, so the publish fails and the chain is scanned again: two threads
//!   can never publish the same key twice. The head needs no version: the
//!   entry it named when read cannot be reused while the inserter is pinned,
//!   so an unchanged head means every entry pushed since has been unlinked.
//! - A user `Hash`, `Eq` or `Clone` that panics loses nothing: the hash and
//!   the lookups before an insert hold no entry, and an entry taken off the
//!   free list is held by a guard that hands it back through the epoch if
//!   the insert unwinds or finds the key published meanwhile (reusable
//!   after a grace period, as an evicted entry).
//! - Eviction: only of an entry whose theoretical arrival time is in the past
//!   (its state means "full bucket", exactly like a fresh key's), by the one
//!   thread holding the bucket's sweeping bit (others skip the bucket). It
//!   first swaps the state word to a `DEAD` mark with a compare-and-swap, so
//!   a request racing with it either charges the entry before (and the
//!   eviction fails, because the entry is no longer fresh) or finds it dead
//!   (and starts again with a fresh key, which decides the same way). Then it
//!   unlinks the entry (only the sweeper changes a published entry's link,
//!   and an unlinked entry's link is never changed: a reader standing on it
//!   walks on) and hands it back to the free list through the epoch: a
//!   reader that might still look at it finishes first.
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

use crate::error::ConfigError;
use crate::events::{Event, EventKind, EventSink, NoSink};
use crate::sync::{AtomicU32, AtomicU64, ExclusiveCell, Ordering, epoch, spin_hint};
use crate::time::Timestamp;

use super::all::TokenSource;
use super::cell::{self, Origin};
use super::error::RateLimitError;
use super::gcra::Refusal;
use super::limiter::RateLimiter;
use super::quota::Quota;
#[cfg(not(tenlives_loom))]
use free::FreeList;

/// Runs `$body` with `$inner` bound to the table's `Arc<Inner<…>>`, in
/// whichever width it has: the one branch a call pays for the two widths.
macro_rules! on_table {
    ($limiter:expr, $inner:ident => $body:expr) => {
        match &$limiter.table {
            Table::Narrow($inner) => $body,
            Table::Scaled($inner) => $body,
            Table::Wide($inner) => $body,
        }
    };
}

mod free;
mod hasher;
mod snapshot;
mod word;
#[cfg(tenlives_loom)]
pub use free::FreeList;
pub use hasher::{DefaultHashBuilder, KeyHasher};
pub use snapshot::KeyedRestore;
use word::{Narrow, Scaled, Wide, Word};

/// A head's sweeping bit: set while one thread sweeps the bucket.
const SWEEPING: u32 = 1 << 31;
/// The low 32 bits of a link word: the next entry's number plus one.
const NEXT: u64 = u32::MAX as u64;
/// Fibonacci hashing: spreads any hash, even one weak in its low bits, over
/// the buckets.
const FIB: u64 = 0x9E37_79B9_7F4A_7C15;
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

/// An arena entry. Its link word:
///
/// | bits | field |
/// |---|---|
/// | 32..64 | tag: the low 32 bits of the key's hash |
/// | 0..32 | the next entry of the chain, its number plus one (`0`: the end) |
///
/// A bucket's head (`Inner::heads`):
///
/// | bits | field |
/// |---|---|
/// | 31 | `SWEEPING`: one thread is evicting from this bucket |
/// | 0..31 | the chain's first entry, its number plus one (`0`: empty) |
///
/// Entries are numbered below 2^30, so a number plus one fits in 31 bits.
struct Entry<K, W: Word> {
    /// The key's state, in the table's width ([`word`]).
    state: W::Cell,
    /// Written by the inserter before publishing; after that, changed only
    /// by the thread sweeping the bucket while the entry is linked (its
    /// next entry was unlinked), never once the entry is unlinked.
    link: AtomicU64,
    /// Written only while the entry is off the free list and not yet
    /// published, or after it has been unlinked and every reader that could
    /// see it has unpinned.
    key: ExclusiveCell<MaybeUninit<K>>,
}

enum Overflow<S: EventSink> {
    Reject,
    Admit,
    Shared(Box<RateLimiter<S>>),
}

struct Inner<K, H, S: EventSink, W: Word> {
    quota: Quota,
    /// Where a scaled table's time starts (see [`Word::RELATIVE`]); unused
    /// by the others.
    origin: Origin,
    /// One head per bucket (see [`Entry`] for its bits).
    heads: Box<[AtomicU32]>,
    mask: u64,
    /// `64 - log2(buckets)`: a bucket is the top bits of `hash * FIB`.
    shift: u32,
    entries: Box<[Entry<K, W>]>,
    free: FreeList,
    low_water: usize,
    hand: AtomicU64,
    /// Entries waiting for their grace period before going back to the
    /// free list: evicted, or handed back by an insert that did not
    /// publish.
    retired: AtomicU64,
    hasher: H,
    overflow: Overflow<S>,
    sink: S,
    source: u32,
}

// SAFETY: entries' `key` cells are accessed under the protocol in the module
// documentation: written only by the one thread that owns the entry (taken off
// the free list, or reclaimed after an epoch grace period), read only while
// published. Keys move between threads (K: Send) and are read from several
// at once (K: Sync).
unsafe impl<K: Send + Sync, H: Sync, S: EventSink + Sync, W: Word> Sync for Inner<K, H, S, W> {}
// SAFETY: as above; nothing in `Inner` is tied to a thread.
unsafe impl<K: Send + Sync, H: Send, S: EventSink + Send, W: Word> Send for Inner<K, H, S, W> {}

impl<K, H, S: EventSink, W: Word> Drop for Inner<K, H, S, W> {
    fn drop(&mut self) {
        for b in 0..self.heads.len() {
            self.walk(b, |entry| {
                // SAFETY: `&mut self`: nobody else is here. Every linked
                // entry holds an initialised key (an evicted one is unlinked
                // before its sweeper lets go of the bucket, and its pending
                // reclaim holds the table alive), dropped once.
                unsafe { entry.key.with_mut(|k| k.assume_init_drop()) };
            });
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
    table: Table<K, H, S>,
}

/// The table, in the width of state word its quota allows ([`word`]).
enum Table<K, H, S: EventSink> {
    Narrow(Arc<Inner<K, H, S, Narrow>>),
    Scaled(Arc<Inner<K, H, S, Scaled>>),
    Wide(Arc<Inner<K, H, S, Wide>>),
}

impl<K, H, S: EventSink> Clone for KeyedRateLimiter<K, H, S> {
    fn clone(&self) -> Self {
        let table = match &self.table {
            Table::Narrow(inner) => Table::Narrow(Arc::clone(inner)),
            Table::Scaled(inner) => Table::Scaled(Arc::clone(inner)),
            Table::Wide(inner) => Table::Wide(Arc::clone(inner)),
        };
        KeyedRateLimiter { table }
    }
}

impl<K, H, S: EventSink> fmt::Debug for KeyedRateLimiter<K, H, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        on_table!(self, inner => f
            .debug_struct("KeyedRateLimiter")
            .field("quota", &inner.quota)
            .field("capacity", &inner.entries.len())
            .field("in_use", &inner.in_use())
            .finish_non_exhaustive())
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

/// A published entry holding the key, and the state read from it (never
/// `DEAD`).
struct Found<'a, K, W: Word> {
    entry: &'a Entry<K, W>,
    state: W::Raw,
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
        let overflow = match config.when_full {
            WhenFull::Reject => Overflow::Reject,
            WhenFull::Admit => Overflow::Admit,
            WhenFull::Overflow(q) => {
                Overflow::Shared(Box::new(RateLimiter::with_sink(q, sink.clone(), source)))
            }
        };
        let parts = (config, hasher, overflow, sink, source);
        let table = if cell::fits_narrow(&config.quota) {
            Table::Narrow(Arc::new(Inner::new(parts)))
        } else if cell::fits_64(&config.quota) {
            Table::Scaled(Arc::new(Inner::new(parts)))
        } else {
            Table::Wide(Arc::new(Inner::new(parts)))
        };
        KeyedRateLimiter { table }
    }

    /// The per-key quota.
    pub fn quota(&self) -> &Quota {
        on_table!(self, inner => &inner.quota)
    }

    /// The most keys tracked at once.
    pub fn capacity(&self) -> usize {
        on_table!(self, inner => inner.entries.len())
    }

    /// Entries in use: keys tracked, plus entries waiting for their epoch
    /// grace period before reuse (evicted, or taken by an insert that did
    /// not finish: it lost a race to insert the same key, or a `K::clone`
    /// or `K::eq` panicked).
    pub fn in_use(&self) -> usize {
        on_table!(self, inner => inner.in_use())
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
    #[inline(always)]
    pub fn check_key_n(&self, key: &K, n: u32, now: Timestamp) -> Result<(), RateLimitError> {
        match &self.table {
            // The narrow check inline, the other widths a call away, and
            // this function always inlined: with a third width's check
            // inlined beside the other two, LLVM stopped inlining it into
            // its caller, and a narrow check took 16 to 26 instructions more
            // (`python3 benches/iai-gate.py`, `tenlives_keyed_check_1k`).
            Table::Narrow(inner) => inner.check_key_n(key, n, now),
            Table::Scaled(inner) => inner.check_key_n_out_of_line(key, n, now),
            Table::Wide(inner) => inner.check_key_n_out_of_line(key, n, now),
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
        on_table!(self, inner => inner.peek_key_n(key, n, now))
    }

    /// Gives back `n` tokens that `key` was charged earlier. Does nothing if
    /// the key is no longer tracked (then its tokens had all refilled).
    pub fn refund_key(&self, key: &K, n: u32) {
        on_table!(self, inner => inner.refund_key(key, n));
    }

    /// Evicts every key whose tokens have all refilled by `now` (which a
    /// fresh key would decide exactly like) and returns how many. Their
    /// entries become reusable after an epoch grace period. Inserts sweep on
    /// their own when the table runs low; call this to reclaim room ahead of
    /// a burst of new keys. A bucket another thread is sweeping at the same
    /// moment is left to that thread.
    pub fn sweep(&self, now: Timestamp) -> usize {
        on_table!(self, inner => inner.sweep(now))
    }

    /// A [`TokenSource`] for `key`, to take part in
    /// [`acquire_all`](super::acquire_all).
    pub fn source<'a>(&'a self, key: &'a K) -> KeyedSource<'a, K, H, S> {
        KeyedSource { limiter: self, key }
    }
}

/// What a table is built from: its settings, hasher, overflow policy, sink
/// and source.
type Parts<H, S> = (KeyedConfig, H, Overflow<S>, S, u32);

impl<K, H, S, W> Inner<K, H, S, W>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    H: BuildHasher + Send + Sync + 'static,
    S: EventSink + Send + Sync + 'static,
    W: Word,
{
    /// Allocates the whole table, every entry free and fresh.
    fn new((config, hasher, overflow, sink, source): Parts<H, S>) -> Self {
        let capacity = config.capacity as usize;
        // At least two: a bucket is picked by a shift of `64 - log2`, and a
        // shift by 64 overflows.
        let buckets = capacity.next_power_of_two().max(2);
        Inner {
            quota: config.quota,
            origin: Origin::unset(),
            heads: (0..buckets)
                .map(|_| AtomicU32::new(0))
                .collect::<Vec<_>>()
                .into_boxed_slice(),
            mask: buckets as u64 - 1,
            shift: 64 - buckets.trailing_zeros(),
            entries: (0..capacity)
                .map(|_| Entry {
                    state: W::cell(W::FRESH),
                    link: AtomicU64::new(0),
                    key: ExclusiveCell::new(MaybeUninit::uninit()),
                })
                .collect::<Vec<_>>()
                .into_boxed_slice(),
            free: FreeList::full(config.capacity),
            low_water: capacity / 4,
            hand: AtomicU64::new(0),
            retired: AtomicU64::new(0),
            hasher,
            overflow,
            sink,
            source,
        }
    }

    /// [`check_key_n`](Self::check_key_n), not inlined.
    #[inline(never)]
    fn check_key_n_out_of_line(
        self: &Arc<Self>,
        key: &K,
        n: u32,
        now: Timestamp,
    ) -> Result<(), RateLimitError> {
        self.check_key_n(key, n, now)
    }

    #[inline(always)]
    fn check_key_n(
        self: &Arc<Self>,
        key: &K,
        n: u32,
        now: Timestamp,
    ) -> Result<(), RateLimitError> {
        let hash = self.hasher.hash_one(key);
        // The bucket's head is a cache miss in a large table; its load
        // starts now and overlaps the pin's fence, which the head's read
        // must follow.
        let head = &self.heads[self.bucket_of(hash)];
        prefetch(head);
        let (t, origin) = self.time(now);
        let n = u64::from(n);
        let mut guard = epoch::pin();
        let mut rounds = 0;
        loop {
            match self.find_from(head, key, hash) {
                Some(found) => {
                    match charge::<W>(&found.entry.state, found.state, &self.quota, t, n) {
                        Ok(()) => return Ok(()),
                        Err(Some(refusal)) => {
                            return Err(self.refused(refusal.later_by(origin), n, now));
                        }
                        // Evicted under us: the next lookup skips it.
                        Err(None) => {}
                    }
                }
                None => {
                    let state = match W::decide(&self.quota, W::FRESH, t, n) {
                        Some(Ok(state)) => state,
                        Some(Err(refusal)) => {
                            return Err(self.refused(refusal.later_by(origin), n, now));
                        }
                        None => unreachable!("a fresh state is never dead"),
                    };
                    match self.insert(key, hash, state, t, &guard) {
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
                                && self.retired.load(Ordering::Relaxed) > 0 =>
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

    fn peek_key_n(&self, key: &K, n: u32, now: Timestamp) -> Result<(), RateLimitError> {
        let hash = self.hasher.hash_one(key);
        let (t, origin) = self.time_peek(now);
        let _guard = epoch::pin();
        let state = self.find(key, hash).map_or(W::FRESH, |found| found.state);
        match W::decide(&self.quota, state, t, u64::from(n)) {
            Some(Err(refusal)) => Err(refusal.later_by(origin).into_error(&self.quota, n, now)),
            // `find` returns no dead state.
            Some(Ok(_)) | None => Ok(()),
        }
    }

    fn refund_key(&self, key: &K, n: u32) {
        let hash = self.hasher.hash_one(key);
        let _guard = epoch::pin();
        if let Some(found) = self.find(key, hash) {
            let mut state = found.state;
            // A dead entry stays dead.
            while state != W::DEAD {
                let refunded = W::refund(&self.quota, state, u64::from(n));
                match W::swap_weak(&found.entry.state, state, refunded) {
                    Ok(()) => break,
                    Err(actual) => state = actual,
                }
            }
        }
    }

    fn sweep(self: &Arc<Self>, now: Timestamp) -> usize {
        let (t, _) = self.time_peek(now);
        let guard = epoch::pin();
        let evicted = (0..self.heads.len())
            .map(|b| self.evict_fresh(b, t, &guard))
            .sum();
        guard.flush();
        evicted
    }

    /// `now` in the table's time (nanoseconds since its origin for a scaled
    /// table, see [`Word::RELATIVE`]), and the origin (zero for the others);
    /// the first request sets a scaled table's origin.
    #[inline(always)]
    fn time(&self, now: Timestamp) -> (u64, u64) {
        self.time_with(now, Origin::at)
    }

    /// [`time`](Self::time) for a look that takes nothing: an unset origin
    /// stays unset (`Origin::peek`). Every entry was inserted by a request
    /// that set the origin first, and is reached through the Acquire loads
    /// of `find` or `walk`: it is read with that origin.
    fn time_peek(&self, now: Timestamp) -> (u64, u64) {
        self.time_with(now, Origin::peek)
    }

    #[inline(always)]
    fn time_with(&self, now: Timestamp, origin: impl FnOnce(&Origin, u64) -> u64) -> (u64, u64) {
        let now = now.as_nanos();
        if W::RELATIVE {
            let origin = origin(&self.origin, now);
            (now.saturating_sub(origin), origin)
        } else {
            (now, 0)
        }
    }

    /// The live entry of `key` (hashed to `hash`), if it is published. The
    /// caller is pinned.
    #[inline(always)]
    fn find(&self, key: &K, hash: u64) -> Option<Found<'_, K, W>> {
        self.find_from(&self.heads[self.bucket_of(hash)], key, hash)
    }

    /// [`find`](Self::find) from the bucket's `head`, already looked up.
    #[inline(always)]
    fn find_from(&self, head: &AtomicU32, key: &K, hash: u64) -> Option<Found<'_, K, W>> {
        let inner = self;
        let tag = hash & !NEXT;
        // ordering: Acquire pairs with the Release publish in `insert`: the
        // entry it names was written before it.
        let mut next = head.load(Ordering::Acquire) & !SWEEPING;
        while next != 0 {
            let entry = &inner.entries[next as usize - 1];
            // ordering: Acquire pairs with the Release of the publish (or of
            // an unlink) that wrote the next entry's number: that entry was
            // published before.
            let link = entry.link.load(Ordering::Acquire);
            next = link as u32;
            if link & !NEXT != tag {
                continue;
            }
            // SAFETY: a published entry's key is initialised and written
            // again only after it is unlinked and an epoch grace period has
            // passed; the caller is pinned, and it reached the entry from a
            // head it read while pinned.
            if unsafe { entry.key.with(|k| k.assume_init_ref() == key) } {
                let state = W::load(&entry.state);
                if state != W::DEAD {
                    return Some(Found { entry, state });
                }
            }
        }
        None
    }

    /// Out of line, always: a new key's path, which inlined into the check
    /// (as LLVM chose to once it had fewer callers) makes a present key's
    /// check too large to inline into its caller.
    #[inline(never)]
    fn insert(
        self: &Arc<Self>,
        key: &K,
        hash: u64,
        state: W::Raw,
        now: u64,
        guard: &epoch::Guard,
    ) -> Inserted {
        let inner = &**self;
        // SAFETY: the caller is pinned (`guard`) for the whole call.
        let slot = match unsafe { inner.free.pop() } {
            Some(slot) => slot,
            None => {
                self.sweep_some(SWEEP_WHEN_EMPTY, now, guard);
                guard.flush();
                // SAFETY: as above.
                match unsafe { inner.free.pop() } {
                    Some(slot) => slot,
                    None => return Inserted::NoRoom,
                }
            }
        };
        // From here on the slot goes back to the free list however this
        // ends, unless it is published: a panicking `K::clone` or `K::eq`
        // must not leak it.
        let mut claim = Claim {
            owner: self,
            guard,
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
            entry.key.with_mut(|k| {
                k.write(key.clone());
            })
        };
        claim.filled = true;
        // Published by the head's Release below.
        W::store(&entry.state, state);

        let head = &inner.heads[inner.bucket_of(hash)];
        let tag = hash & !NEXT;
        loop {
            // ordering: Acquire, as in `find`.
            let first = head.load(Ordering::Acquire);
            // Nothing is published here, so a panic in `K::eq` loses nothing
            // the claim does not give back.
            if self.find(key, hash).is_some() {
                return Inserted::AlreadyThere;
            }
            // ordering: Relaxed; published by the head's Release below.
            entry
                .link
                .store(tag | u64::from(first & !SWEEPING), Ordering::Relaxed);
            // ordering: Release publishes the entry (key, state, link); AcqRel
            // so a failed attempt that rescans sees what the winner published.
            match head.compare_exchange(
                first,
                first & SWEEPING | (slot + 1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    core::mem::forget(claim);
                    return Inserted::Yes;
                }
                Err(_) => spin_hint(),
            }
        }
    }

    fn sweep_some(self: &Arc<Self>, buckets: usize, now: u64, guard: &epoch::Guard) {
        let inner = &**self;
        for _ in 0..buckets {
            // ordering: Relaxed; the hand only spreads sweeping around.
            let b = inner.hand.fetch_add(1, Ordering::Relaxed) & inner.mask;
            self.evict_fresh(b as usize, now, guard);
        }
    }

    /// Evicts the entries of bucket `b` that are fresh at `now` (ns);
    /// returns how many. Skips the bucket if another thread is sweeping it.
    fn evict_fresh(self: &Arc<Self>, b: usize, now: u64, guard: &epoch::Guard) -> usize {
        let inner = &**self;
        let head = &inner.heads[b];
        // ordering: Acquire, as in `find`; the bit makes this thread the
        // only one changing the links of the bucket's published entries
        // until it lets go below (with Release).
        let first = head.fetch_or(SWEEPING, Ordering::Acquire);
        if first & SWEEPING != 0 {
            return 0;
        }
        let mut next = first;
        let mut evicted = 0;
        while next != 0 {
            let slot = next as usize - 1;
            let entry = &inner.entries[slot];
            // ordering: Acquire, as in `find`.
            next = entry.link.load(Ordering::Acquire) as u32;
            // The compare-and-swap below confirms it.
            let state = W::load(&entry.state);
            if state == W::DEAD
                || !W::is_full(&inner.quota, state, now)
                || W::swap(&entry.state, state, W::DEAD).is_err()
            {
                continue;
            }
            inner.unlink(head, slot as u32 + 1, next);
            let owner = Arc::clone(self);
            // ordering: Relaxed; a hint for `check_key_n`'s retries only.
            inner.retired.fetch_add(1, Ordering::Relaxed);
            // Two words (the table and a number): the closure fits in
            // crossbeam's inline storage, and deferring allocates nothing.
            // SAFETY: deferred after the entry was unlinked, so after the
            // insert's pop that took it (`reclaim`'s contract).
            guard.defer(move || unsafe { owner.reclaim(slot) });
            evicted += 1;
        }
        // ordering: Release; the next sweeper of the bucket starts after
        // this one's unlinks.
        head.fetch_and(!SWEEPING, Ordering::Release);
        evicted
    }

    #[cold]
    fn no_room(&self, n: u64, now: Timestamp) -> Result<(), RateLimitError> {
        let inner = self;
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
        let err = refusal.into_error(&self.quota, n as u32, now);
        let inner = self;
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

/// Asks the CPU to start loading `value`'s cache line (a hint: it changes
/// nothing the program can observe, and it cannot fault).
#[inline(always)]
fn prefetch<T>(value: &T) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: the pointer comes from a reference; a prefetch reads nothing
    // the program sees, and SSE is part of every x86-64 target.
    unsafe {
        use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(core::ptr::from_ref(value).cast());
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = value;
}

impl<K, H, S: EventSink, W: Word> Inner<K, H, S, W> {
    fn in_use(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    #[inline(always)]
    fn bucket_of(&self, hash: u64) -> usize {
        (hash.wrapping_mul(FIB) >> self.shift) as usize
    }

    /// Calls `f` on every entry of bucket `b`'s chain, dead ones included.
    /// The caller is pinned (or holds the table exclusively).
    fn walk(&self, b: usize, mut f: impl FnMut(&Entry<K, W>)) {
        // ordering: Acquire, as in `find`.
        let mut next = self.heads[b].load(Ordering::Acquire) & !SWEEPING;
        while next != 0 {
            let entry = &self.entries[next as usize - 1];
            // ordering: Acquire, as in `find`.
            next = entry.link.load(Ordering::Acquire) as u32;
            f(entry);
        }
    }

    /// Unlinks entry `x` (its number plus one), whose link names `after`,
    /// from the chain of `head`. The caller holds the bucket's sweeping bit,
    /// so `x` is linked and stays reachable: inserts only push in front,
    /// and nobody else unlinks.
    fn unlink(&self, head: &AtomicU32, x: u32, after: u32) {
        loop {
            // ordering: Acquire, as in `find`.
            let first = head.load(Ordering::Acquire);
            if first & !SWEEPING == x {
                // ordering: Release, as an insert's publish: `after` was
                // published before; AcqRel so a failure sees the new first.
                if head
                    .compare_exchange(
                        first,
                        first & SWEEPING | after,
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            // An insert pushed entries in front of `x`: one of them (or an
            // entry after them) is its predecessor now.
            let mut at = first & !SWEEPING;
            while at != 0 {
                let pred = &self.entries[at as usize - 1];
                // ordering: Acquire, as in `find`.
                let link = pred.link.load(Ordering::Acquire);
                if link as u32 == x {
                    // ordering: Release, as above. Only this thread changes a
                    // published entry's link while it sweeps.
                    pred.link
                        .store(link & !NEXT | u64::from(after), Ordering::Release);
                    return;
                }
                at = link as u32;
            }
            // Unreachable: `x` is linked. Start again rather than lose it.
            spin_hint();
        }
    }

    /// Runs after the grace period of an eviction: no reader can see entry
    /// `slot` any more.
    ///
    /// # Safety
    ///
    /// Called only from a function deferred through the epoch after entry
    /// `slot` was unlinked, once.
    unsafe fn reclaim(&self, slot: usize) {
        let entry = &self.entries[slot];
        // SAFETY: unlinked, and every thread that could have read it has
        // unpinned since: this is the only access.
        unsafe { entry.key.with_mut(|k| k.assume_init_drop()) };
        // SAFETY: the insert that published the entry popped it before, so
        // this is deferred after that pop, and the entry, unlinked, is
        // neither in use nor on the list.
        unsafe { self.hand_back(slot as u32) };
    }

    /// Runs after the grace period of an entry taken off the free list
    /// (evicted since, or never published): puts it back.
    ///
    /// # Safety
    ///
    /// Entry `slot` was popped, is not on the list and no longer in use,
    /// and this runs from a function deferred through the epoch after that
    /// pop (the free list's rule 2), once.
    unsafe fn hand_back(&self, slot: u32) {
        // SAFETY: the contract above is `push`'s: every pop that could have
        // read `slot` on top has finished.
        unsafe { self.free.push(slot) };
        // ordering: Relaxed; a hint only (see `retired`).
        self.retired.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An entry taken off the free list by an insert and not (yet) published.
/// Dropping it, on any path that does not publish, panics included, hands
/// the entry back through the epoch (the free list's rule: no push but a
/// deferred one), dropping the key if it was written.
///
/// Its bounds are those the deferred hand-back needs (`Send + 'static`),
/// which every insert has.
struct Claim<'a, K, H, S, W>
where
    K: Send + Sync + 'static,
    H: Send + Sync + 'static,
    S: EventSink + Send + Sync + 'static,
    W: Word,
{
    owner: &'a Arc<Inner<K, H, S, W>>,
    /// The insert's pin, under which the entry was popped.
    guard: &'a epoch::Guard,
    slot: u32,
    /// The entry holds an initialised key.
    filled: bool,
}

impl<K, H, S, W> Drop for Claim<'_, K, H, S, W>
where
    K: Send + Sync + 'static,
    H: Send + Sync + 'static,
    S: EventSink + Send + Sync + 'static,
    W: Word,
{
    fn drop(&mut self) {
        let entry = &self.owner.entries[self.slot as usize];
        // SAFETY: never published, so still ours alone; initialised iff
        // `filled`. Moved out before the slot is handed back, so that a
        // panicking `K::drop` below cannot leak the slot.
        let key = self
            .filled
            .then(|| unsafe { entry.key.with_mut(|k| k.assume_init_read()) });
        // ordering: Relaxed; a hint for `check_key_n`'s retries only.
        self.owner.retired.fetch_add(1, Ordering::Relaxed);
        let owner = Arc::clone(self.owner);
        let slot = self.slot;
        // Deferred after our pop: see `free`. Two words, as an eviction's.
        // SAFETY: never published, the key moved out, and deferred after
        // the pop that took it (`hand_back`'s contract).
        self.guard.defer(move || unsafe { owner.hand_back(slot) });
        drop(key);
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

/// Charges `n` tokens to an entry's state cell, read as `state`, at `now`
/// (ns). `Err(None)` when it is dead.
#[inline(always)]
fn charge<W: Word>(
    cell: &W::Cell,
    mut state: W::Raw,
    quota: &Quota,
    now: u64,
    n: u64,
) -> Result<(), Option<Refusal>> {
    loop {
        let next = W::decide(quota, state, now, n).ok_or(None)?.map_err(Some)?;
        match W::swap_weak(cell, state, next) {
            Ok(()) => return Ok(()),
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
    use super::super::cell;
    use super::*;
    use foldhash::fast::FixedState;
    use std::string::String;
    use std::vec;

    /// Hashes every key to the same value: one chain, one tag.
    #[derive(Default)]
    struct Collide;

    impl core::hash::Hasher for Collide {
        fn finish(&self) -> u64 {
            0x5151_5151_5151_5151
        }
        fn write(&mut self, _: &[u8]) {}
    }

    /// 1 a second (a narrow table), 3 a second with a burst of 1 (an
    /// interval of a third of a second: a scaled one) and 17 a second with
    /// a burst of 1 (a seventeenth: a wide one), each key refilled within a
    /// second.
    fn one_per_second_on_every_width() -> [Quota; 3] {
        [
            Quota::per_second(1).unwrap(),
            Quota::per_second(3).unwrap().with_burst(1).unwrap(),
            Quota::per_second(17).unwrap().with_burst(1).unwrap(),
        ]
    }

    #[test]
    fn every_width_is_chosen_by_the_quota() {
        let [narrow, scaled, wide] = one_per_second_on_every_width();
        let table = |q| KeyedRateLimiter::<u32>::new(KeyedConfig::new(q, 4).unwrap()).table;
        assert!(matches!(table(narrow), Table::Narrow(_)));
        assert!(matches!(table(scaled), Table::Scaled(_)));
        assert!(matches!(table(wide), Table::Wide(_)));
    }

    /// Forty keys in one bucket with the same tag: each keeps its own state
    /// (told apart by `Eq`), and evicting every other one (the chain's
    /// first, middle and last entries among them) leaves the others found
    /// with their state, the evicted ones found again as fresh keys. Before
    /// the chained index a bucket held fourteen keys and the fifteenth was
    /// refused with `TableFull`.
    #[test]
    fn colliding_keys_share_one_chain_and_evict_from_any_place() {
        // Under Miri not the scaled table: its atomics are the narrow
        // one's, the same generic code (`word::Word64`).
        for (i, quota) in one_per_second_on_every_width().into_iter().enumerate() {
            if !(cfg!(miri) && i == 1) {
                colliding_keys(quota);
            }
        }
    }

    fn colliding_keys(quota: Quota) {
        let limiter = KeyedRateLimiter::with_hasher_and_sink(
            KeyedConfig::new(quota, 64).unwrap(),
            core::hash::BuildHasherDefault::<Collide>::default(),
            NoSink,
            0,
        );
        let t0 = Timestamp::ZERO;
        let t1 = Timestamp::from_nanos(5_000_000_000);
        for k in 0..40u32 {
            assert_eq!(limiter.check_key(&k, t0), Ok(()), "key {k}");
        }
        assert_eq!(limiter.in_use(), 40);
        // Even keys charged again at t1: in use. Odd keys refilled: fresh.
        for k in (0..40u32).step_by(2) {
            assert_eq!(limiter.check_key(&k, t1), Ok(()), "key {k}");
        }
        assert_eq!(limiter.sweep(t1), 20);
        for k in 0..40u32 {
            let spent = limiter.peek_key_n(&k, 1, t1).is_err();
            assert_eq!(spent, k % 2 == 0, "key {k}");
        }
        // The odd keys come back as new entries, the even ones are refused.
        for k in 0..40u32 {
            assert_eq!(limiter.check_key(&k, t1).is_ok(), k % 2 == 1, "key {k}");
        }
        on_table!(limiter, inner => {
            let bucket = inner.bucket_of(0x5151_5151_5151_5151);
            // ordering: Relaxed; single-threaded test.
            let first = inner.heads[bucket].load(Ordering::Relaxed);
            assert_eq!(first & SWEEPING, 0, "the sweeper let go of the bucket");
            let mut chain = 0;
            let _guard = epoch::pin();
            inner.walk(bucket, |_| chain += 1);
            assert_eq!(chain, 40, "20 kept and 20 inserted again, none dead");
        });
    }

    /// A key whose `Clone` panics for every id that is a multiple of 16:
    /// such a key is never inserted, and each attempt takes an entry off
    /// the free list and hands it back while unwinding.
    #[derive(Debug, PartialEq, Eq, Hash)]
    struct Flaky(u32);

    const FLAKY: &str = "Flaky::clone panics on purpose";

    impl Clone for Flaky {
        fn clone(&self) -> Self {
            if self.0.is_multiple_of(16) {
                panic!("{FLAKY}");
            }
            Flaky(self.0)
        }
    }

    /// L8: threads churn keys through a small table, with evictions (keys
    /// refill within 1 s of table time, the table is swept by inserts
    /// running low and by `sweep`) and `K::clone` panicking during inserts.
    /// Afterwards, once the grace periods have passed, every entry is
    /// either in exactly one chain (once) or on the free list (once), the
    /// free list's length counts the entries it holds, and `in_use` the
    /// linked ones.
    #[test]
    fn churn_with_evictions_and_panics_conserves_every_entry() {
        // Under Miri the 64-bit table only (the epoch and free-list
        // protocol is the same code for every width; `miri_small` runs a
        // 64-bit and a 128-bit one): the run is Miri's longest.
        let widths = one_per_second_on_every_width();
        let widths = if cfg!(miri) {
            &widths[..1]
        } else {
            &widths[..]
        };
        for &quota in widths {
            churn(quota);
        }
    }

    fn churn(quota: Quota) {
        let (threads, ops, capacity, keys) = if cfg!(miri) {
            (2, 150, 8, 24)
        } else {
            (4, 20_000, 64, 256)
        };
        let quiet = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<String>().map(String::as_str) != Some(FLAKY) {
                quiet(info);
            }
        }));
        let limiter = KeyedRateLimiter::with_hasher_and_sink(
            KeyedConfig::new(quota, capacity).unwrap(),
            FixedState::with_seed(9),
            NoSink,
            0,
        );
        let panics = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|me| {
                    let limiter = &limiter;
                    scope.spawn(move || {
                        let mut rng = crate::rng::SplitMix64::new(me as u64);
                        let mut panics = 0;
                        for op in 0..ops {
                            // 10 ms of table time per operation: a key is
                            // fresh again 100 operations after its charge.
                            let now = Timestamp::from_nanos(op as u64 * 10_000_000);
                            let key = Flaky(rng.between(0, keys - 1) as u32);
                            if op % 97 == 0 {
                                limiter.sweep(now);
                            }
                            let call =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    limiter.check_key(&key, now)
                                }));
                            panics += usize::from(call.is_err());
                        }
                        panics
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap())
                .sum::<usize>()
        });
        assert!(panics > 0, "no clone panicked: the test tests nothing");
        on_table!(limiter, inner => conserved(inner, capacity));
    }

    /// Once the grace periods have passed, every entry is linked or free,
    /// once.
    fn conserved<W: Word>(inner: &Inner<Flaky, FixedState, NoSink, W>, capacity: usize) {
        // ordering: Relaxed; the workers have been joined.
        for _ in 0..100_000 {
            if inner.retired.load(Ordering::Relaxed) == 0 {
                break;
            }
            epoch::pin().flush();
            std::thread::yield_now();
        }
        assert_eq!(
            inner.retired.load(Ordering::Relaxed),
            0,
            "grace periods pending"
        );
        let mut place = vec![None; capacity];
        {
            let _guard = epoch::pin();
            for b in 0..inner.heads.len() {
                inner.walk(b, |entry| {
                    // SAFETY: `entry` is an element of `inner.entries`.
                    let slot =
                        unsafe { core::ptr::from_ref(entry).offset_from(inner.entries.as_ptr()) }
                            as usize;
                    assert_eq!(place[slot], None, "entry {slot} linked twice");
                    place[slot] = Some("linked");
                });
            }
        }
        let linked = place.iter().flatten().count();
        assert_eq!(inner.in_use(), linked, "in use against linked");
        let listed = inner.free.len();
        // SAFETY: the workers have been joined and nothing is pinned on
        // their behalf: the list is ours alone.
        while let Some(slot) = unsafe { inner.free.pop() } {
            let slot = slot as usize;
            assert_eq!(place[slot], None, "entry {slot} free and {:?}", place[slot]);
            place[slot] = Some("free");
        }
        assert!(place.iter().all(Option::is_some), "entries lost: {place:?}");
        assert_eq!(listed, capacity - linked, "the free list's length");
        // Give the entries back, so that dropping the table finds it whole.
        for slot in (0..capacity).filter(|&s| place[s] == Some("free")) {
            // SAFETY: popped just above, and still nobody else uses the list.
            unsafe { inner.free.push(slot as u32) };
        }
    }

    /// The keyed limiter at the ends of time and with time going backwards,
    /// on a wide table (an interval of 1.5 ns, a burst of 2): a fresh burst
    /// at `Timestamp::MAX`, as the wide state decides.
    #[test]
    fn the_ends_of_time_and_time_going_backwards_on_a_wide_table() {
        // 17 every 26 ns: `T = 26 / 17` ns, about 1.53.
        let quota = Quota::new(17, core::time::Duration::from_nanos(26))
            .unwrap()
            .with_burst(2)
            .unwrap();
        let limiter = KeyedRateLimiter::with_hasher_and_sink(
            KeyedConfig::new(quota, 4).unwrap(),
            FixedState::with_seed(2),
            NoSink,
            0,
        );
        assert!(matches!(limiter.table, Table::Wide(_)));
        for _ in 0..2 {
            assert!(limiter.check_key(&1, Timestamp::MAX).is_ok());
        }
        assert!(limiter.check_key(&1, Timestamp::MAX).is_err());
        // Stamped earlier: the key's arrival time is ahead of it.
        assert!(limiter.check_key(&1, Timestamp::ZERO).is_err());
        assert!(limiter.peek_key_n(&1, 1, Timestamp::ZERO).is_err());
        assert_eq!(limiter.sweep(Timestamp::ZERO), 0);
        assert_eq!(limiter.sweep(Timestamp::MAX), 0);
        limiter.refund_key(&1, 2);
        assert_eq!(limiter.sweep(Timestamp::MAX), 1);
        // Two tokens at 0 book until 3.06 ns; the next conforms at 1.53 ns.
        assert!(limiter.check_key_n(&2, 2, Timestamp::ZERO).is_ok());
        assert!(limiter.check_key(&2, Timestamp::from_nanos(1)).is_err());
        assert!(limiter.check_key(&2, Timestamp::from_nanos(2)).is_ok());
    }

    /// A 64-bit table of burst 3 at the end of its time: a key never seen
    /// is refused at `Timestamp::MAX` with no time it will conform; three
    /// tokens fit at `late`, the last instant a whole burst does, and a
    /// request at `end` is refused as "never"; stamped earlier, the key's
    /// arrival time is ahead of it; a refund of all three leaves it there,
    /// and a sweep at the end of the clock evicts it.
    fn a_64_bit_table_fails_closed(
        limiter: &KeyedRateLimiter<u32, FixedState>,
        late: u64,
        end: u64,
    ) {
        let never = |e: RateLimitError| matches!(e, RateLimitError::Limited(l) if l.earliest() == Timestamp::MAX);
        let in_use = limiter.in_use();
        assert!(never(limiter.check_key(&1, Timestamp::MAX).unwrap_err()));
        assert_eq!(limiter.in_use(), in_use, "a refused new key takes no entry");
        let late = Timestamp::from_nanos(late);
        for _ in 0..3 {
            assert!(limiter.check_key(&1, late).is_ok());
        }
        assert!(never(
            limiter
                .check_key(&1, Timestamp::from_nanos(end))
                .unwrap_err()
        ));
        assert!(limiter.check_key(&1, Timestamp::ZERO).is_err());
        assert!(limiter.peek_key_n(&1, 1, Timestamp::ZERO).is_err());
        assert_eq!(limiter.sweep(Timestamp::ZERO), 0);
        limiter.refund_key(&1, 3);
        assert!(
            limiter.peek_key_n(&1, 3, Timestamp::ZERO).is_err(),
            "refunded to `late`"
        );
        assert_eq!(limiter.sweep(Timestamp::MAX), 1);
    }

    /// A table of burst 3 at `quota`.
    fn burst_of_three(rate: u32, period_ns: u64) -> KeyedRateLimiter<u32, FixedState> {
        let quota = Quota::new(rate, core::time::Duration::from_nanos(period_ns))
            .unwrap()
            .with_burst(3)
            .unwrap();
        KeyedRateLimiter::with_hasher_and_sink(
            KeyedConfig::new(quota, 4).unwrap(),
            FixedState::with_seed(2),
            NoSink,
            0,
        )
    }

    /// The same on a scaled table (2 every 3 ns, `T` = 1.5 ns, a burst of
    /// 3), which fails closed as a narrow one, at `2^63 / 2` ns.
    #[test]
    fn the_ends_of_time_and_time_going_backwards_on_a_scaled_table() {
        let limiter = burst_of_three(2, 3);
        assert!(matches!(limiter.table, Table::Scaled(_)));
        // The table's origin at zero, set by a request; its key swept.
        assert!(limiter.check_key(&9, Timestamp::ZERO).is_ok());
        assert_eq!(limiter.sweep(Timestamp::from_nanos(10)), 1);
        // `TAT·2 = late·2 + 3·3` at most `NARROW_MAX`.
        a_64_bit_table_fails_closed(&limiter, (cell::NARROW_MAX - 9) / 2, cell::NARROW_MAX / 2);
        // Three tokens at 0 book until 4.5 ns; the next conforms at 1.5 ns,
        // and a refusal says 2 (rounded up).
        assert!(limiter.check_key_n(&2, 3, Timestamp::ZERO).is_ok());
        let refused = limiter.check_key(&2, Timestamp::from_nanos(1)).unwrap_err();
        assert!(
            matches!(refused, RateLimitError::Limited(l) if l.earliest() == Timestamp::from_nanos(2))
        );
        assert!(limiter.check_key(&2, Timestamp::from_nanos(2)).is_ok());
    }

    /// A scaled table counts from its first request: from a time in
    /// nanoseconds since the Unix epoch (past `2^63 / a` for every
    /// `a >= 6`), and from the end of the clock, keys decide as on a
    /// 128-bit table.
    #[test]
    fn a_scaled_table_counts_from_its_first_request() {
        const UNIX: u64 = 1_765_000_000_000_000_000;
        for start in [UNIX, u64::MAX - 10] {
            // 7 a second: T = 10^9 / 7 ns, a = 7.
            let limiter = burst_of_three(7, 1_000_000_000);
            assert!(matches!(limiter.table, Table::Scaled(_)));
            let now = Timestamp::from_nanos(start);
            assert!(limiter.check_key_n(&1, 3, now).is_ok());
            let refused = limiter.check_key(&1, now).unwrap_err();
            let next = start.saturating_add(142_857_143);
            assert!(
                matches!(refused, RateLimitError::Limited(l) if l.earliest().as_nanos() == next),
                "{refused:?}"
            );
            assert!(limiter.check_key_n(&2, 3, now).is_ok());
            assert!(limiter.peek_key_n(&2, 1, now).is_err());
            if start == UNIX {
                assert!(
                    limiter
                        .check_key(&1, Timestamp::from_nanos(next - 1))
                        .is_err()
                );
                assert!(limiter.check_key(&1, Timestamp::from_nanos(next)).is_ok());
                // Full again a burst's time on: swept.
                assert_eq!(
                    limiter.sweep(Timestamp::from_nanos(UNIX + 1_000_000_000)),
                    2
                );
            }
        }
    }

    /// Looks that take nothing (a peek, a sweep) leave a scaled table's
    /// origin to its first request.
    #[test]
    fn a_scaled_tables_origin_is_set_by_a_request_not_a_look() {
        const UNIX: u64 = 1_765_000_000_000_000_000;
        let limiter = burst_of_three(7, 1_000_000_000);
        assert!(limiter.peek_key_n(&1, 3, Timestamp::MAX).is_ok());
        assert_eq!(limiter.sweep(Timestamp::MAX), 0);
        let now = Timestamp::from_nanos(UNIX);
        assert!(limiter.check_key_n(&1, 3, now).is_ok());
        let next = UNIX + 142_857_143;
        assert!(
            limiter
                .check_key(&1, Timestamp::from_nanos(next - 1))
                .is_err()
        );
        assert!(limiter.check_key(&1, Timestamp::from_nanos(next)).is_ok());
    }

    /// The same on a narrow table (1 a nanosecond, a burst of 3), which
    /// fails closed at the end of its time (2^63 ns): a key never seen is
    /// refused at `Timestamp::MAX` with no time it will conform, and so is
    /// every key past the end; time going backwards is as on a wide table.
    #[test]
    fn the_ends_of_time_and_time_going_backwards_on_a_narrow_table() {
        let limiter = burst_of_three(1, 1);
        assert!(matches!(limiter.table, Table::Narrow(_)));
        a_64_bit_table_fails_closed(&limiter, cell::NARROW_MAX - 3, cell::NARROW_MAX);
        assert!(limiter.check_key_n(&2, 3, Timestamp::ZERO).is_ok());
        assert!(limiter.check_key(&2, Timestamp::ZERO).is_err());
        assert!(limiter.check_key(&2, Timestamp::from_nanos(1)).is_ok());
    }
}
