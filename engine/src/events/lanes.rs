//! The laned event ring: a broadcast ring split into lanes, each written by
//! one producer at a time, so that producers on different cores write
//! different cache lines and an emit makes at most one read-modify-write.
//!
//! # Protocol
//!
//! A ring of `L` lanes of `C` slots each (`C` a power of two). Each lane has
//! one word, on a cache line of its own:
//!
//! ```text
//! word: [ next : 62 | owned : 1 | busy : 1 ]
//! ```
//!
//! `next` is the lane's next sequence number: events `0 .. next` of the lane
//! are published; `busy` says a producer is writing event `next`; `owned`
//! says a [`LaneProducer`] holds the lane for itself. Event `n` of a lane
//! lives in the lane's slot `n % C`, four plain data words.
//!
//! A shared producer ([`LaneRing::push`]) picks its home lane (its thread's
//! stripe, see `crate::stripe`), and claims it with one compare-and-swap
//! from `next << 2` to `next << 2 | busy`. A lane found busy or owned is not
//! waited for: the producer tries the next lane, once around; if every lane
//! is busy or owned it drops the event and counts it in `dropped`, where
//! consumers find it. The claimant writes the four words and releases the
//! lane by storing `(next + 1) << 2`.
//!
//! A [`LaneProducer`] takes a lane with one compare-and-swap from
//! `next << 2` to `next << 2 | owned`. From then on it is the lane word's
//! only writer, so it writes it with plain stores, a seqlock writer's: it
//! stores `next << 2 | owned | busy` (the same "event `next` begun" a
//! shared claim says, without a read-modify-write), writes the four words,
//! and publishes with `(next + 1) << 2 | owned`. Dropping it stores
//! `next << 2` (Release): the lane is shared again, its sequence going on.
//!
//! The lane word is the slot's version, seqlock style. A consumer at lane
//! position `r` reads the word: `r < next` means event `r` is published; it
//! reads the slot's words, then (after an Acquire fence) the word again. If
//! by then a producer has begun an event `m >= r + C` (`next + busy > r + C`),
//! the slot may hold that later event's words: event `r` is counted lost,
//! with every other event of the lane the producers have lapped. Otherwise
//! no writer touched the slot since event `r`, and the words are event `r`.
//! Every event is therefore delivered once or counted lost once, per
//! consumer: `read + lost = emitted` since it joined.

use core::cell::Cell;
use core::fmt;
use core::marker::PhantomData;

use crossbeam_utils::CachePadded;

use super::words::Words;
use super::{Event, EventSink, Received, check_power_of_two};
use crate::error::ConfigError;
use crate::stripe::{self, STRIPES};
use crate::sync::{AtomicU64, Ordering, fence};

/// The most lanes a ring can have.
pub const MAX_LANES: usize = 8;

/// A producer is writing the lane's event `next`.
const BUSY: u64 = 1;
/// A [`LaneProducer`] holds the lane: shared pushes pass it over.
const OWNED: u64 = 2;
/// Where a lane word's sequence number starts.
const SEQ: u32 = 2;

/// A lane word: sequence number `next` and `flags` (`BUSY`, `OWNED`).
#[inline(always)]
const fn lane_word(next: u64, flags: u64) -> u64 {
    (next << SEQ) | flags
}

/// The sequence number of a lane word: the events published in the lane.
#[inline(always)]
const fn published(word: u64) -> u64 {
    word >> SEQ
}

/// One slot of a laned ring: the four words of one event. Storage for a ring
/// in a `static` is `[const { LaneSlot::new() }; N]`.
pub struct LaneSlot {
    words: Words,
}

impl LaneSlot {
    /// An empty slot.
    #[cfg(not(tenlives_loom))]
    pub const fn new() -> Self {
        LaneSlot {
            words: Words::new(),
        }
    }

    /// An empty slot.
    #[cfg(tenlives_loom)]
    pub fn new() -> Self {
        LaneSlot {
            words: Words::new(),
        }
    }
}

impl Default for LaneSlot {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LaneSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LaneSlot").finish_non_exhaustive()
    }
}

/// A broadcast ring of events in lanes, over storage `S`: `Box<[LaneSlot]>`
/// (with the `alloc` feature, from [`LaneRing::new`]), a `[LaneSlot; N]`
/// array, or a `&'static [LaneSlot]`.
///
/// Beside [`EventRing`](super::EventRing), which puts every event in one
/// sequence, a laned ring gives each producer a lane of its own while there
/// are no more producers than lanes. What it buys: an emit is one
/// compare-and-swap on a word no other core writes, and producers on
/// different cores never share a cache line. What it costs, and why it is a
/// choice rather than the default:
///
/// - a producer keeps to one lane, so it can overwrite only its lane's
///   `lane_capacity` events, not the whole ring's;
/// - events are ordered within a lane only: a consumer returns each lane's
///   events in the order they were written, taking lanes in turn; two
///   events of different lanes come in no particular order (their `time`
///   says when they happened);
/// - a producer that finds every lane busy drops its event (consumers count
///   it lost): with one lane that is any two producers emitting at the same
///   instant, so give a ring at least as many lanes as threads that emit at
///   once.
///
/// ```
/// use tenlives_engine::events::{Event, EventKind, EventSink, LaneRing, LaneSlot, Received};
/// use tenlives_engine::time::Timestamp;
///
/// // Two lanes of four events, in a static: no allocator needed.
/// static SLOTS: [LaneSlot; 8] = [const { LaneSlot::new() }; 8];
/// let ring = LaneRing::from_slots(&SLOTS, 2).unwrap();
///
/// let mut consumer = ring.consumer(); // joins now
/// for i in 0..6 {
///     ring.emit(Event::new(EventKind::USER, 7, Timestamp::from_nanos(i), [i, 0]));
/// }
/// // One thread writes one lane: six events into its four slots.
/// assert_eq!(consumer.try_recv(), Some(Received::Lost(2)));
/// assert!(matches!(consumer.try_recv(), Some(Received::Event(e)) if e.payload[0] == 2));
/// assert_eq!(ring.emitted(), 6);
/// ```
pub struct LaneRing<S: AsRef<[LaneSlot]>> {
    /// One word per lane (only the first `lanes` are used).
    words: [CachePadded<AtomicU64>; MAX_LANES],
    /// Events dropped because every lane was busy.
    dropped: CachePadded<AtomicU64>,
    slots: S,
    lanes: usize,
    /// Each stripe's home lane (`stripe % lanes`, without a division per push).
    home: [u8; STRIPES],
    /// `lane_capacity - 1`.
    mask: u64,
    /// `log2(lane_capacity)`: a lane's first slot is `lane << shift`.
    shift: u32,
}

impl<S: AsRef<[LaneSlot]>> fmt::Debug for LaneRing<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LaneRing")
            .field("lanes", &self.lanes)
            .field("lane_capacity", &self.lane_capacity())
            .field("emitted", &self.emitted())
            .finish()
    }
}

#[cfg(feature = "alloc")]
impl LaneRing<alloc::boxed::Box<[LaneSlot]>> {
    /// A ring of `lanes` lanes (1 to [`MAX_LANES`]) of `lane_capacity` slots
    /// each (a power of two, at least 2), on the heap.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] or [`ConfigError::TooLarge`] for a number of
    /// lanes out of bounds,
    /// [`ConfigError::NotPowerOfTwo`] for a bad lane capacity,
    /// [`ConfigError::TooLarge`] when the slots would not fit in memory's
    /// address space, [`ConfigError::OutOfMemory`] when the allocator
    /// refuses them.
    pub fn new(lanes: usize, lane_capacity: usize) -> Result<Self, ConfigError> {
        check_lanes(lanes)?;
        check_lane_capacity(lane_capacity)?;
        let too_large = ConfigError::TooLarge {
            field: "laned ring lane capacity",
            value: lane_capacity as u64,
            max: (max_slots() / lanes) as u64,
        };
        let total = lane_capacity.checked_mul(lanes).ok_or(too_large.clone())?;
        if total > max_slots() {
            return Err(too_large);
        }
        let mut slots: alloc::vec::Vec<LaneSlot> = alloc::vec::Vec::new();
        slots
            .try_reserve_exact(total)
            .map_err(|_| ConfigError::OutOfMemory {
                field: "laned ring capacity",
                // Cannot overflow: bounded by `max_slots` above.
                bytes: (total * core::mem::size_of::<LaneSlot>()) as u64,
            })?;
        slots.extend((0..total).map(|_| LaneSlot::new()));
        Self::from_slots(slots.into_boxed_slice(), lanes)
    }
}

/// The most slots any slice can hold: `isize::MAX` bytes.
#[cfg(feature = "alloc")]
const fn max_slots() -> usize {
    isize::MAX as usize / core::mem::size_of::<LaneSlot>()
}

fn check_lanes(lanes: usize) -> Result<(), ConfigError> {
    if lanes == 0 {
        return Err(ConfigError::Zero {
            field: "laned ring lanes",
        });
    }
    if lanes > MAX_LANES {
        return Err(ConfigError::TooLarge {
            field: "laned ring lanes",
            value: lanes as u64,
            max: MAX_LANES as u64,
        });
    }
    Ok(())
}

fn check_lane_capacity(lane_capacity: usize) -> Result<(), ConfigError> {
    check_power_of_two("laned ring lane capacity", lane_capacity)
}

/// Sets `flag` (`BUSY` for one event, `OWNED` for a producer) in a lane word
/// that is neither busy nor owned; returns the word as it was, or `None` if
/// the lane is taken (or was taken meanwhile).
#[inline(always)]
fn claim(word: &AtomicU64, flag: u64) -> Option<u64> {
    // ordering: Relaxed; the compare-and-swap below decides.
    let seen = word.load(Ordering::Relaxed);
    if seen & (BUSY | OWNED) != 0 {
        return None;
    }
    // ordering: Acquire on success, pairs with the Release store that freed
    // the lane: its previous writers' writes to the slots come before the
    // claimant's.
    word.compare_exchange(seen, seen | flag, Ordering::Acquire, Ordering::Relaxed)
        .ok()
}

/// Writes event `seq` into `slot` of a lane whose word (`word`, already
/// saying `busy`) this producer has claimed, and publishes it, leaving
/// `flags` in the word.
#[inline(always)]
fn publish(word: &AtomicU64, slot: &LaneSlot, seq: u64, event: Event, flags: u64) {
    // ordering: Release fence; the seqlock writer's barrier between the
    // claim (`busy`) and the data, pairing with the Acquire fence a reader
    // puts between reading the data and re-reading the word.
    fence(Ordering::Release);
    // Published by the word's store below.
    slot.words.store(event);
    // ordering: Release, pairs with the Acquire load in
    // `LaneConsumer::try_recv` and the next writer's claim.
    word.store(lane_word(seq + 1, flags), Ordering::Release);
}

/// The events of a lane whose producers have begun, published or being
/// written, as its word says.
#[inline]
const fn begun(word: u64) -> u64 {
    published(word) + (word & BUSY)
}

impl<S: AsRef<[LaneSlot]>> LaneRing<S> {
    /// A ring of `lanes` lanes over caller-provided slots, which it divides
    /// evenly: their number divided by `lanes` must be a power of two of at
    /// least 2. The slots must be fresh (as made by [`LaneSlot::new`]).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] or [`ConfigError::TooLarge`] for `lanes`
    /// outside 1 to [`MAX_LANES`], [`ConfigError::UnevenLanes`] when they do
    /// not divide the slots evenly, [`ConfigError::NotPowerOfTwo`] when a
    /// lane's share is not a power of two of at least 2.
    pub fn from_slots(slots: S, lanes: usize) -> Result<Self, ConfigError> {
        check_lanes(lanes)?;
        let total = slots.as_ref().len();
        if total % lanes != 0 {
            return Err(ConfigError::UnevenLanes {
                slots: total as u64,
                lanes: lanes as u64,
            });
        }
        let lane_capacity = total / lanes;
        check_lane_capacity(lane_capacity)?;
        Ok(LaneRing {
            words: core::array::from_fn(|_| CachePadded::new(AtomicU64::new(0))),
            dropped: CachePadded::new(AtomicU64::new(0)),
            slots,
            lanes,
            // `lanes <= MAX_LANES`, which fits a byte.
            home: core::array::from_fn(|stripe| (stripe % lanes) as u8),
            mask: lane_capacity as u64 - 1,
            shift: lane_capacity.trailing_zeros(),
        })
    }

    /// How many lanes the ring has.
    pub fn lanes(&self) -> usize {
        self.lanes
    }

    /// How many events one lane holds.
    pub fn lane_capacity(&self) -> usize {
        self.mask as usize + 1
    }

    /// How many events were emitted so far: written (including those later
    /// overwritten), being written, or dropped because every lane was busy.
    pub fn emitted(&self) -> u64 {
        // ordering: Relaxed; a count for reports.
        let written: u64 = self.words[..self.lanes]
            .iter()
            .map(|w| begun(w.load(Ordering::Relaxed)))
            .sum();
        written + self.dropped()
    }

    /// How many events were dropped because every lane was busy.
    pub fn dropped(&self) -> u64 {
        // ordering: Relaxed; a count for reports.
        self.dropped.load(Ordering::Relaxed)
    }

    #[inline]
    fn slot(&self, lane: usize, seq: u64) -> &LaneSlot {
        let index = (lane << self.shift) + (seq & self.mask) as usize;
        &self.slots.as_ref()[index]
    }

    /// Writes one event into this thread's lane, or the next free one,
    /// overwriting that lane's oldest event when it is full. Never blocks,
    /// never allocates, never waits for a consumer or another producer; drops
    /// the event (counted in [`dropped`](Self::dropped)) when every lane is
    /// being written.
    #[inline]
    pub fn push(&self, event: Event) {
        let home = self.home_lane();
        if !self.try_push(home, event) {
            self.push_elsewhere(home, event);
        }
    }

    /// This thread's home lane.
    #[inline(always)]
    fn home_lane(&self) -> usize {
        // The mask only proves the index in bounds: a stripe is below STRIPES.
        usize::from(self.home[stripe::current() & (STRIPES - 1)])
    }

    /// Takes a lane for the returned producer alone: this thread's home
    /// lane if it is free, else the next free one; `None` when every lane
    /// is being written or already owned.
    ///
    /// A [`LaneProducer`] emits with plain stores, no read-modify-write
    /// (about 2 ns an event, less than one `fetch_add`:
    /// `docs/performance.md`, "A lane of one's own"), and no other producer
    /// writes its lane while it lives: shared [`push`](Self::push)es pass
    /// the lane over, and with every lane owned they drop their events.
    /// Dropping the producer gives the lane back (a leaked one keeps it
    /// forever). It is [`Send`] but not [`Sync`]: one thread at a time
    /// emits through it, such as a worker thread of a thread-per-core
    /// runtime, or the one executor of an embedded target.
    ///
    /// ```
    /// use tenlives_engine::events::{Event, EventKind, LaneRing, Received};
    /// use tenlives_engine::time::Timestamp;
    ///
    /// let ring = LaneRing::new(2, 4)?;
    /// let mut consumer = ring.consumer();
    /// let producer = ring.producer().expect("a lane is free");
    /// producer.push(Event::new(EventKind::USER, 1, Timestamp::from_nanos(5), [7, 0]));
    /// // The other lane still takes shared pushes; with both owned, they drop.
    /// let second = ring.producer().expect("the other lane is free");
    /// ring.push(Event::new(EventKind::USER, 2, Timestamp::from_nanos(6), [8, 0]));
    /// assert_eq!(ring.dropped(), 1);
    /// drop((producer, second)); // both lanes shared again
    /// assert_eq!(consumer.try_recv(), Some(Received::Lost(1)));
    /// assert!(matches!(consumer.try_recv(), Some(Received::Event(e)) if e.payload[0] == 7));
    /// # Ok::<(), tenlives_engine::ConfigError>(())
    /// ```
    pub fn producer(&self) -> Option<LaneProducer<'_, S>> {
        self.lanes_from(self.home_lane()).find_map(|lane| {
            let word = &self.words[lane];
            let seen = claim(word, OWNED)?;
            let first = lane << self.shift;
            Some(LaneProducer {
                word,
                slots: &self.slots.as_ref()[first..first + self.lane_capacity()],
                mask: self.mask,
                lane,
                next: Cell::new(published(seen)),
                ring: PhantomData,
            })
        })
    }

    /// Every lane once, from `start` on, wrapping round.
    fn lanes_from(&self, start: usize) -> impl Iterator<Item = usize> {
        let lanes = self.lanes;
        (start..lanes).chain(0..start)
    }

    /// Writes `event` into `lane` if no other producer is writing it.
    #[inline(always)]
    fn try_push(&self, lane: usize, event: Event) -> bool {
        // The mask only proves the index in bounds: `lane < lanes <= MAX_LANES`.
        let word = &self.words[lane & (MAX_LANES - 1)];
        let Some(seen) = claim(word, BUSY) else {
            return false;
        };
        self.write(word, lane, published(seen), event);
        true
    }

    /// The home lane was busy: the other lanes in turn, once around, then
    /// the event is dropped and counted.
    #[cold]
    #[inline(never)]
    fn push_elsewhere(&self, home: usize, event: Event) {
        if self
            .lanes_from(home)
            .skip(1)
            .any(|lane| self.try_push(lane, event))
        {
            return;
        }
        // ordering: Relaxed; consumers read the count, it publishes nothing.
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes event `seq` of a lane this producer has claimed (`word` is the
    /// lane's, already saying `busy`), and publishes it.
    #[inline(always)]
    fn write(&self, word: &AtomicU64, lane: usize, seq: u64, event: Event) {
        publish(word, self.slot(lane, seq), seq, event, 0);
    }

    /// A consumer that will read every event emitted from now on.
    pub fn consumer(&self) -> LaneConsumer<'_, S> {
        let mut cursors = [0; MAX_LANES];
        for (cursor, word) in cursors.iter_mut().zip(&self.words[..self.lanes]) {
            // ordering: Acquire; keeps "from now on" tight (a stale word only
            // makes the consumer start earlier).
            *cursor = published(word.load(Ordering::Acquire));
        }
        LaneConsumer {
            ring: self,
            cursors,
            // ordering: Relaxed; a count.
            dropped: self.dropped.load(Ordering::Relaxed),
            turn: 0,
            last: None,
            read: 0,
            lost: 0,
        }
    }
}

impl<S: AsRef<[LaneSlot]>> EventSink for LaneRing<S> {
    #[inline]
    fn emit(&self, event: Event) {
        self.push(event);
    }
}

/// A producer that holds one lane of a [`LaneRing`] for itself, from
/// [`LaneRing::producer`]: it is the lane word's only writer, so an emit is
/// plain stores (the seqlock writer's), no read-modify-write. Consumers read
/// its events as any lane's. Dropping it gives the lane back to shared
/// pushes, its sequence going on.
///
/// It may move to another thread but not be shared by two, since two
/// threads writing one lane with plain stores would tear its events:
///
/// ```compile_fail
/// use tenlives_engine::events::{Event, EventKind, LaneRing};
/// use tenlives_engine::time::Timestamp;
///
/// let ring = LaneRing::new(2, 4).unwrap();
/// let producer = ring.producer().unwrap();
/// let event = Event::new(EventKind::USER, 1, Timestamp::ZERO, [0, 0]);
/// std::thread::scope(|s| {
///     s.spawn(|| producer.push(event)); // `LaneProducer` is not `Sync`
///     producer.push(event);
/// });
/// ```
///
/// (With `move ||` and without the second push, it compiles: the producer
/// is `Send`.)
pub struct LaneProducer<'r, S: AsRef<[LaneSlot]>> {
    /// The lane's word, which this producer alone writes.
    word: &'r AtomicU64,
    /// The lane's slots.
    slots: &'r [LaneSlot],
    /// `lane_capacity - 1`.
    mask: u64,
    lane: usize,
    /// The lane's next sequence number. A `Cell`: the producer is not
    /// `Sync`, so no two threads ever emit through it at once.
    next: Cell<u64>,
    ring: PhantomData<&'r LaneRing<S>>,
}

impl<S: AsRef<[LaneSlot]>> fmt::Debug for LaneProducer<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LaneProducer")
            .field("lane", &self.lane)
            .field("next", &self.next.get())
            .finish()
    }
}

impl<S: AsRef<[LaneSlot]>> LaneProducer<'_, S> {
    /// The lane this producer holds.
    pub fn lane(&self) -> usize {
        self.lane
    }

    /// Writes one event into the producer's lane, overwriting its oldest
    /// event when the lane is full. Never blocks, never allocates, never
    /// drops the event.
    #[inline]
    pub fn push(&self, event: Event) {
        let seq = self.next.get();
        let word = self.word;
        // ordering: Release, though a seqlock writer's first store is
        // usually Relaxed: a consumer whose Acquire load reads this word
        // takes `published` from it and reads event `seq - 1`, whose words
        // were published by this producer's previous store. Only a
        // read-modify-write (a shared claim) would carry that store's
        // release on; a plain store must release again. (A plain `mov` on
        // x86 either way.) The Release fence in `publish` orders this
        // claim before the slot's words.
        word.store(lane_word(seq, OWNED | BUSY), Ordering::Release);
        publish(
            word,
            &self.slots[(seq & self.mask) as usize],
            seq,
            event,
            OWNED,
        );
        self.next.set(seq + 1);
    }
}

impl<S: AsRef<[LaneSlot]>> Drop for LaneProducer<'_, S> {
    fn drop(&mut self) {
        // ordering: Release, pairs with the Acquire claim of the next
        // producer of the lane: this producer's writes come before its.
        self.word
            .store(lane_word(self.next.get(), 0), Ordering::Release);
    }
}

impl<S: AsRef<[LaneSlot]>> EventSink for LaneProducer<'_, S> {
    #[inline]
    fn emit(&self, event: Event) {
        self.push(event);
    }
}

/// A reader of a [`LaneRing`] with its own position in every lane. Any
/// number can exist; each sees every event from when it joined, or learns
/// exactly how many it lost.
pub struct LaneConsumer<'r, S: AsRef<[LaneSlot]>> {
    ring: &'r LaneRing<S>,
    cursors: [u64; MAX_LANES],
    /// The ring's drop count already reported.
    dropped: u64,
    /// The lane to look at first.
    turn: usize,
    /// The lane of the last report, if it came from a lane.
    last: Option<usize>,
    read: u64,
    lost: u64,
}

impl<S: AsRef<[LaneSlot]>> fmt::Debug for LaneConsumer<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LaneConsumer")
            .field("cursors", &&self.cursors[..self.ring.lanes])
            .field("read", &self.read)
            .field("lost", &self.lost)
            .finish()
    }
}

impl<S: AsRef<[LaneSlot]>> LaneConsumer<'_, S> {
    /// Events read so far.
    pub fn read(&self) -> u64 {
        self.read
    }

    /// Events reported lost so far (overwritten before this consumer read
    /// them, or dropped because every lane was busy).
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// The position of the next event this consumer will look at in each
    /// lane.
    pub fn cursors(&self) -> &[u64] {
        &self.cursors[..self.ring.lanes]
    }

    /// The lane the last [`try_recv`](Self::try_recv) report came from:
    /// `None` before the first, after a `None`, and for a report of events
    /// dropped because every lane was busy (those belong to no lane). Within
    /// a lane, each producer's events come in the order it emitted them.
    pub fn last_lane(&self) -> Option<usize> {
        self.last
    }

    /// How far this consumer has come, on the scale of
    /// [`LaneRing::emitted`]: the events emitted before it joined plus those
    /// it has read or counted lost (the sum of its lanes' positions and the
    /// drops it has reported).
    pub fn position(&self) -> u64 {
        self.cursors().iter().sum::<u64>() + self.dropped
    }

    fn lose(&mut self, lane: Option<usize>, n: u64) -> Option<Received> {
        self.last = lane;
        self.lost += n;
        Some(Received::Lost(n))
    }

    /// If producers of `lane` (whose word reads `word`) have begun more
    /// than a lap of events past `r`, the consumer's event `r` and those
    /// after it up to the oldest still safe to read are lost: moves the
    /// cursor there and reports them.
    fn lapped(&mut self, lane: usize, r: u64, word: u64) -> Option<Received> {
        let begun = begun(word);
        let capacity = self.ring.mask + 1;
        if begun - r <= capacity {
            return None;
        }
        self.cursors[lane] = begun - capacity;
        self.lose(Some(lane), begun - capacity - r)
    }

    /// The next event, a report of lost events, or `None` when no lane has
    /// a published event this consumer has not seen. Lanes are taken in
    /// turn, one event at a time. Never blocks.
    pub fn try_recv(&mut self) -> Option<Received> {
        let ring = self.ring;
        // ordering: Relaxed; a count.
        let dropped = ring.dropped.load(Ordering::Relaxed);
        if dropped != self.dropped {
            let n = dropped - self.dropped;
            self.dropped = dropped;
            return self.lose(None, n);
        }
        for _ in 0..ring.lanes {
            let lane = self.turn;
            self.turn = if lane + 1 == ring.lanes { 0 } else { lane + 1 };
            let r = self.cursors[lane];
            // ordering: Acquire, pairs with the Release store that published
            // event `next - 1` (and so every event before it).
            let word = ring.words[lane].load(Ordering::Acquire);
            if r >= published(word) {
                continue; // nothing new in this lane
            }
            // A slot is safe to read while fewer than a lap of begun events
            // lie past `r`.
            if let Some(lost) = self.lapped(lane, r, word) {
                return Some(lost);
            }
            let event = ring.slot(lane, r).words.load();
            // ordering: Acquire fence, pairs with the producer's Release
            // fence after its claim: if any word above came from a later
            // writer, the load below sees that writer's claim.
            fence(Ordering::Acquire);
            // Overwritten while we read it (and maybe more since)?
            if let Some(lost) = self.lapped(lane, r, ring.words[lane].load(Ordering::Relaxed)) {
                return Some(lost);
            }
            self.cursors[lane] = r + 1;
            self.last = Some(lane);
            self.read += 1;
            return Some(Received::Event(event));
        }
        self.last = None;
        None
    }
}

#[cfg(all(test, feature = "alloc", not(tenlives_loom)))]
mod tests {
    use super::*;
    use crate::events::EventKind;
    use crate::time::Timestamp;
    use alloc::string::ToString;
    use alloc::vec::Vec;

    fn event(i: u64) -> Event {
        Event::new(EventKind::USER, 3, Timestamp::from_nanos(i), [i, !i])
    }

    fn home<S: AsRef<[LaneSlot]>>(ring: &LaneRing<S>) -> usize {
        usize::from(ring.home[stripe::current()])
    }

    /// A lane held by another producer (here: marked busy by hand) is not
    /// waited for: the event goes to the next lane; with every lane held it
    /// is dropped, counted, and reported lost to consumers, outside any lane.
    #[test]
    fn a_busy_lane_is_passed_over_and_all_busy_drops() {
        let ring = LaneRing::new(2, 4).unwrap();
        let mut consumer = ring.consumer();
        let mine = home(&ring);
        let other = 1 - mine;
        ring.words[mine].store(BUSY, Ordering::Relaxed);
        ring.push(event(1));
        assert_eq!(ring.words[other].load(Ordering::Relaxed), lane_word(1, 0));
        assert_eq!(consumer.try_recv(), Some(Received::Event(event(1))));
        assert_eq!(consumer.last_lane(), Some(other));

        ring.words[other].store(lane_word(1, BUSY), Ordering::Relaxed);
        ring.push(event(2));
        assert_eq!(ring.dropped(), 1);
        // Two lanes "being written" (events 0 of `mine`, 1 of `other`), one
        // written, one dropped.
        assert_eq!(ring.emitted(), 4);
        assert_eq!(consumer.try_recv(), Some(Received::Lost(1)));
        assert_eq!(consumer.last_lane(), None);
        assert_eq!(consumer.try_recv(), None);
        assert_eq!((consumer.read(), consumer.lost()), (1, 1));

        // Released, both lanes take events again.
        ring.words[mine].store(0, Ordering::Release);
        ring.words[other].store(lane_word(1, 0), Ordering::Release);
        ring.push(event(3));
        assert_eq!(consumer.try_recv(), Some(Received::Event(event(3))));
        assert_eq!(consumer.last_lane(), Some(mine));
    }

    /// A producer that has begun overwriting the slot a consumer is about to
    /// read makes that event lost, even before it publishes anything.
    #[test]
    fn an_event_being_overwritten_is_lost_not_read() {
        let ring = LaneRing::new(1, 2).unwrap();
        let mut consumer = ring.consumer();
        ring.push(event(0));
        ring.push(event(1));
        // The producer of event 2 has claimed the lane (it writes slot 0,
        // which holds event 0) but not finished.
        ring.words[0].store(lane_word(2, BUSY), Ordering::Relaxed);
        assert_eq!(consumer.try_recv(), Some(Received::Lost(1)));
        assert_eq!(consumer.last_lane(), Some(0));
        assert_eq!(consumer.try_recv(), Some(Received::Event(event(1))));
        // Event 2 is not published yet.
        assert_eq!(consumer.try_recv(), None);
        assert_eq!(consumer.cursors(), &[2]);
        assert_eq!(ring.emitted(), 3);
    }

    /// Sequence numbers far along (a lane that has taken 2^61 events, about
    /// 73 years at one event a nanosecond) are handled like small ones: no
    /// arithmetic of the protocol overflows before a lane's 2^62nd event.
    #[test]
    fn a_lane_far_along_reads_and_laps_as_at_the_start() {
        let ring = LaneRing::new(1, 2).unwrap();
        let start = 1u64 << 61;
        ring.words[0].store(lane_word(start, 0), Ordering::Relaxed);
        let mut consumer = ring.consumer();
        assert_eq!(consumer.cursors(), &[start]);
        for i in 0..5 {
            ring.push(event(i));
        }
        assert_eq!(ring.emitted(), start + 5);
        assert_eq!(consumer.try_recv(), Some(Received::Lost(3)));
        assert_eq!(consumer.try_recv(), Some(Received::Event(event(3))));
        assert_eq!(consumer.try_recv(), Some(Received::Event(event(4))));
        assert_eq!(consumer.try_recv(), None);
        assert_eq!(consumer.position(), start + 5);
    }

    /// An owned lane is passed over by shared pushes and taken by no second
    /// producer; its events are read as any lane's; dropping the producer
    /// gives the lane back with its sequence going on.
    #[test]
    fn an_owned_lane_is_its_producers_alone_until_dropped() {
        let ring = LaneRing::new(2, 4).unwrap();
        let mut consumer = ring.consumer();
        let producer = ring.producer().unwrap();
        let mine = producer.lane();
        assert_eq!(mine, home(&ring), "the home lane first");
        for i in 0..3 {
            producer.push(event(i));
        }
        assert_eq!(
            ring.words[mine].load(Ordering::Relaxed),
            lane_word(3, OWNED)
        );
        // Shared pushes go to the other lane; a second producer gets it.
        ring.push(event(10));
        assert_eq!(published(ring.words[1 - mine].load(Ordering::Relaxed)), 1);
        let second = ring.producer().unwrap();
        assert_eq!(second.lane(), 1 - mine);
        assert!(ring.producer().is_none(), "every lane is owned");
        ring.push(event(11));
        assert_eq!(ring.dropped(), 1);
        assert_eq!(ring.emitted(), 5);
        drop(second);

        let mut got = Vec::new();
        while let Some(r) = consumer.try_recv() {
            got.push((r, consumer.last_lane()));
        }
        // Lanes are read in turn: the drop first, then each lane in order.
        assert_eq!(got[0], (Received::Lost(1), None));
        let lane = |l| -> Vec<_> { got.iter().filter(|g| g.1 == Some(l)).map(|g| g.0).collect() };
        let events =
            |ids: &[u64]| -> Vec<_> { ids.iter().map(|&i| Received::Event(event(i))).collect() };
        assert_eq!(lane(mine), events(&[0, 1, 2]));
        assert_eq!(lane(1 - mine), events(&[10]));
        assert_eq!(got.len(), 5);

        // Given back, the lane's sequence goes on under shared pushes and a
        // later producer.
        drop(producer);
        assert_eq!(ring.words[mine].load(Ordering::Relaxed), lane_word(3, 0));
        ring.push(event(4));
        let again = ring.producer().unwrap();
        assert_eq!(again.lane(), mine);
        again.push(event(5));
        assert_eq!(consumer.try_recv(), Some(Received::Event(event(4))));
        assert_eq!(consumer.try_recv(), Some(Received::Event(event(5))));
        assert_eq!(consumer.cursors()[mine], 5);
        assert_eq!((consumer.read(), consumer.lost()), (6, 1));
    }

    /// A producer laps a consumer as shared pushes do, and a producer
    /// mid-write (its claim stored, the words not yet) makes the event it
    /// overwrites lost, not read.
    #[test]
    fn an_owned_lane_laps_and_loses_as_a_shared_one() {
        let ring = LaneRing::new(1, 2).unwrap();
        let mut consumer = ring.consumer();
        let producer = ring.producer().unwrap();
        for i in 0..5 {
            producer.push(event(i));
        }
        assert_eq!(consumer.try_recv(), Some(Received::Lost(3)));
        assert_eq!(consumer.try_recv(), Some(Received::Event(event(3))));
        producer.push(event(5));
        // As `push` leaves the word between its two stores for event 6,
        // which overwrites event 4's slot.
        ring.words[0].store(lane_word(6, OWNED | BUSY), Ordering::Relaxed);
        assert_eq!(ring.emitted(), 7);
        assert_eq!(consumer.try_recv(), Some(Received::Lost(1)));
        assert_eq!(consumer.try_recv(), Some(Received::Event(event(5))));
        assert_eq!(consumer.try_recv(), None);
        ring.words[0].store(lane_word(6, OWNED), Ordering::Relaxed);
        drop(producer);
        assert_eq!(ring.emitted(), 6);
    }

    /// Lanes are taken in turn: two lanes with events interleave one by one.
    #[test]
    fn lanes_are_read_in_turn() {
        let ring = LaneRing::new(2, 4).unwrap();
        let mut consumer = ring.consumer();
        let mine = home(&ring);
        ring.push(event(0));
        ring.push(event(1));
        // Write two events into the other lane by holding this one.
        ring.words[mine].store(lane_word(2, BUSY), Ordering::Relaxed);
        ring.push(event(10));
        ring.push(event(11));
        ring.words[mine].store(lane_word(2, 0), Ordering::Release);
        let mut got = Vec::new();
        while let Some(Received::Event(e)) = consumer.try_recv() {
            got.push((consumer.last_lane().unwrap(), e.payload[0]));
        }
        let other = 1 - mine;
        let expected = if mine == 0 {
            [(0, 0), (1, 10), (0, 1), (1, 11)]
        } else {
            [(0, 10), (1, 0), (0, 11), (1, 1)]
        };
        assert_eq!(got, expected, "home lane {mine}, other {other}");
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        assert_eq!(
            LaneRing::new(0, 4).unwrap_err(),
            ConfigError::Zero {
                field: "laned ring lanes"
            }
        );
        assert!(matches!(
            LaneRing::new(MAX_LANES + 1, 4),
            Err(ConfigError::TooLarge {
                value: 9,
                max: 8,
                ..
            })
        ));
        for bad in [0, 1, 3, 12] {
            assert!(matches!(
                LaneRing::new(2, bad),
                Err(ConfigError::NotPowerOfTwo { value, .. }) if value == bad as u64
            ));
        }
        let slots: Vec<LaneSlot> = (0..12).map(|_| LaneSlot::new()).collect();
        assert_eq!(
            LaneRing::from_slots(slots, 5).unwrap_err(),
            ConfigError::UnevenLanes {
                slots: 12,
                lanes: 5
            }
        );
        let slots: Vec<LaneSlot> = (0..12).map(|_| LaneSlot::new()).collect();
        assert!(matches!(
            LaneRing::from_slots(slots, 2),
            Err(ConfigError::NotPowerOfTwo { value: 6, .. })
        ));
        assert!(matches!(
            LaneRing::new(8, 1 << 62),
            Err(ConfigError::TooLarge { .. })
        ));
        let err = LaneRing::from_slots((0..12).map(|_| LaneSlot::new()).collect::<Vec<_>>(), 5)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "12 slots cannot be shared evenly by 5 lanes"
        );
    }

    /// Within the address space but beyond any machine's memory: the
    /// allocator refuses, and that is an error, not an abort.
    #[test]
    #[cfg_attr(miri, ignore = "asks the allocator for exabytes")]
    fn an_impossible_ring_is_a_typed_error() {
        assert!(matches!(
            LaneRing::new(1, 1 << 56),
            Err(ConfigError::OutOfMemory { bytes, .. }) if bytes == 32 << 56
        ));
    }
}
