//! The event ring: a fixed-capacity, multi-producer, multi-consumer
//! broadcast ring of [`Event`]s.
//!
//! # Protocol
//!
//! Producers take the next sequence number `s` with one `fetch_add` on
//! `head`; the event goes to slot `s % capacity`. Each slot is a seqlock made
//! only of atomics (a racing read is never undefined behaviour):
//!
//! ```text
//! stamp:   [ s + 1 : 63 | writing : 1 ]   0 = never written
//! skipped: highest s + 1 whose producer found the slot busy and gave up
//! words:   [ kind | source << 32 ], time, payload[0], payload[1]
//! ```
//!
//! | stamp            | meaning                                           |
//! |------------------|---------------------------------------------------|
//! | `0`              | empty: nothing written yet                        |
//! | `done(s)`        | holds event `s` (`(s + 1) << 1`)                  |
//! | `writing(s)`     | the producer of `s` is writing (`done(s) | 1`)    |
//!
//! A producer of `s` claims the slot with one compare-and-swap from an older
//! `done` (or empty) to `writing(s)`, writes the words, and publishes
//! `done(s)` with a `Release` store. So at most one producer writes a slot at a
//! time, and a reader can trust any words it read between two equal `done`
//! stamps. Producers never wait:
//!
//! - a stamp that already names a later sequence means `s` was lapped before
//!   its producer got there: the event is dropped (readers count it lost);
//! - a stamp `writing(x)` with `x < s` means a producer a whole lap behind is
//!   still writing (it was preempted mid-write): the producer of `s` records
//!   `s` in `skipped` and drops its event, and readers count it lost.
//!
//! A consumer at cursor `r` reads slot `r % capacity`: `done(r)` and the same
//! stamp after the words is event `r`; a later sequence in the stamp, a changed
//! stamp after the words, a cursor more than a lap behind `head`, or
//! `skipped > r` mean event `r` is lost; otherwise event `r` is not written
//! yet. Every sequence number is therefore either delivered once or counted
//! lost once: for each consumer, `read + lost = emitted` since it joined.

use core::fmt;

use crossbeam_utils::CachePadded;

use super::words::Words;
use super::{Event, EventSink, check_power_of_two};
use crate::error::ConfigError;
use crate::sync::{AtomicU64, Ordering, fence};

const WRITING: u64 = 1;

#[inline]
const fn done(seq: u64) -> u64 {
    (seq + 1) << 1
}

/// The sequence a non-empty stamp names.
#[inline]
const fn stamp_seq(stamp: u64) -> u64 {
    (stamp >> 1) - 1
}

/// One slot of a ring. Create storage for a ring that lives in a `static`
/// with [`Slot::new`] (const), e.g. `[const { Slot::new() }; 256]`.
pub struct Slot {
    stamp: AtomicU64,
    skipped: AtomicU64,
    words: Words,
}

impl Slot {
    /// An empty slot.
    #[cfg(not(tenlives_loom))]
    pub const fn new() -> Self {
        Slot {
            stamp: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            words: Words::new(),
        }
    }

    /// An empty slot.
    #[cfg(tenlives_loom)]
    pub fn new() -> Self {
        Slot {
            stamp: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            words: Words::new(),
        }
    }
}

impl Default for Slot {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

/// A broadcast ring of events over storage `S`: `Box<[Slot]>` (with the
/// `alloc` feature, from [`EventRing::with_capacity`]), a `[Slot; N]` array,
/// or a `&'static [Slot]`.
///
/// ```
/// use tenlives_engine::events::{Event, EventKind, EventRing, EventSink, Received, Slot};
/// use tenlives_engine::time::Timestamp;
///
/// // Storage that needs no allocator: a static array.
/// static SLOTS: [Slot; 4] = [const { Slot::new() }; 4];
/// let ring = EventRing::from_slots(&SLOTS).unwrap();
///
/// let mut consumer = ring.consumer(); // joins at the current head
/// for i in 0..6 {
///     ring.emit(Event::new(EventKind::USER, 7, Timestamp::from_nanos(i), [i, 0]));
/// }
/// // Six events into four slots: the two oldest were overwritten.
/// assert_eq!(consumer.try_recv(), Some(Received::Lost(2)));
/// assert!(matches!(consumer.try_recv(), Some(Received::Event(e)) if e.payload[0] == 2));
/// ```
pub struct EventRing<S: AsRef<[Slot]>> {
    /// Next sequence number to hand out; every producer writes it.
    head: CachePadded<AtomicU64>,
    slots: S,
    mask: u64,
}

impl<S: AsRef<[Slot]>> fmt::Debug for EventRing<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventRing")
            .field("capacity", &self.capacity())
            .field("emitted", &self.emitted())
            .finish()
    }
}

/// The largest capacity of a ring: the largest power of two whose slots
/// fit in `isize::MAX` bytes (the most any allocation or slice can span).
/// On 64-bit targets `2^57` slots; no machine has that much memory, so
/// [`EventRing::with_capacity`] also reports an allocator's refusal.
pub const MAX_CAPACITY: usize = {
    let fits = isize::MAX as usize / core::mem::size_of::<Slot>();
    1 << (usize::BITS - 1 - fits.leading_zeros())
};

#[cfg(feature = "alloc")]
impl EventRing<alloc::boxed::Box<[Slot]>> {
    /// A ring of `capacity` slots on the heap; `capacity` must be a power of
    /// two from 2 to [`MAX_CAPACITY`].
    ///
    /// # Errors
    ///
    /// [`ConfigError::NotPowerOfTwo`] or [`ConfigError::TooLarge`] for a
    /// capacity out of those bounds; [`ConfigError::OutOfMemory`] when the
    /// allocator cannot give the slots' memory (the allocation is fallible:
    /// an impossible size is an error, not an abort).
    pub fn with_capacity(capacity: usize) -> Result<Self, ConfigError> {
        check_capacity(capacity)?;
        let mut slots: alloc::vec::Vec<Slot> = alloc::vec::Vec::new();
        slots
            .try_reserve_exact(capacity)
            .map_err(|_| ConfigError::OutOfMemory {
                field: "event ring capacity",
                // Cannot overflow: `check_capacity` bounds it by isize::MAX.
                bytes: (capacity * core::mem::size_of::<Slot>()) as u64,
            })?;
        slots.extend((0..capacity).map(|_| Slot::new()));
        Self::from_slots(slots.into_boxed_slice())
    }
}

fn check_capacity(capacity: usize) -> Result<(), ConfigError> {
    check_power_of_two("event ring capacity", capacity)?;
    if capacity > MAX_CAPACITY {
        return Err(ConfigError::TooLarge {
            field: "event ring capacity",
            value: capacity as u64,
            max: MAX_CAPACITY as u64,
        });
    }
    Ok(())
}

impl<S: AsRef<[Slot]>> EventRing<S> {
    /// A ring over caller-provided slots (their number must be a power of two
    /// of at least 2). The slots must be fresh (as made by [`Slot::new`]).
    pub fn from_slots(slots: S) -> Result<Self, ConfigError> {
        let capacity = slots.as_ref().len();
        check_capacity(capacity)?;
        Ok(EventRing {
            head: CachePadded::new(AtomicU64::new(0)),
            slots,
            mask: capacity as u64 - 1,
        })
    }

    /// How many events the ring holds.
    pub fn capacity(&self) -> usize {
        self.slots.as_ref().len()
    }

    /// How many events were emitted so far (including those later overwritten).
    pub fn emitted(&self) -> u64 {
        // ordering: Relaxed; a count for reports.
        self.head.load(Ordering::Relaxed)
    }

    #[inline]
    fn slot(&self, seq: u64) -> &Slot {
        &self.slots.as_ref()[(seq & self.mask) as usize]
    }

    /// Writes one event, overwriting the oldest when the ring is full. Never
    /// blocks, never allocates, never waits for a consumer.
    #[inline]
    pub fn push(&self, event: Event) {
        // ordering: Relaxed; the sequence number only picks the slot, the
        // slot's stamp carries all synchronisation with readers.
        let seq = self.head.fetch_add(1, Ordering::Relaxed);
        let slot = self.slot(seq);
        let mine = done(seq);
        // The usual previous occupant: the event one lap earlier, or nothing.
        let mut expected = if seq > self.mask {
            done(seq - self.mask - 1)
        } else {
            0
        };
        loop {
            // ordering: Acquire on success: this producer now owns the slot
            // and must see the previous owner's writes as done before its own
            // (the previous owner published `done` with Release).
            match slot.stamp.compare_exchange(
                expected,
                mine | WRITING,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => {
                    if actual != 0 && stamp_seq(actual) >= seq {
                        return; // lapped before we started: readers count it lost
                    }
                    if actual & WRITING != 0 {
                        // A producer a lap behind is mid-write; don't wait.
                        // ordering: Release, pairs with the Acquire load in
                        // `Consumer::try_recv` that reads `skipped`.
                        slot.skipped.fetch_max(seq + 1, Ordering::Release);
                        return;
                    }
                    expected = actual; // an older `done`: try again from it
                }
            }
        }
        // ordering: Release fence; the seqlock writer's barrier between the
        // claim (`writing`) and the data, pairing with the Acquire fence a
        // reader puts between reading the data and re-reading the stamp.
        fence(Ordering::Release);
        // Published by the stamp store below.
        slot.words.store(event);
        // ordering: Release, pairs with the Acquire stamp load in `Consumer::try_recv`.
        slot.stamp.store(mine, Ordering::Release);
    }

    /// A consumer that will read every event emitted from now on.
    pub fn consumer(&self) -> Consumer<'_, S> {
        // ordering: Acquire; not needed for correctness (a stale head only
        // makes the consumer start earlier and see those events or count
        // them lost) but it keeps "from now on" tight.
        Consumer {
            ring: self,
            cursor: self.head.load(Ordering::Acquire),
            read: 0,
            lost: 0,
        }
    }
}

impl<S: AsRef<[Slot]>> EventSink for EventRing<S> {
    #[inline]
    fn emit(&self, event: Event) {
        self.push(event);
    }
}

/// What a consumer gets from [`Consumer::try_recv`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Received {
    /// The next event.
    Event(Event),
    /// This many events were overwritten (or dropped by a producer that
    /// found its slot busy) before this consumer could read them.
    Lost(u64),
}

/// A reader of a ring with its own cursor. Any number can exist; each sees
/// every event from when it joined, or learns exactly how many it lost.
pub struct Consumer<'r, S: AsRef<[Slot]>> {
    ring: &'r EventRing<S>,
    cursor: u64,
    read: u64,
    lost: u64,
}

impl<S: AsRef<[Slot]>> fmt::Debug for Consumer<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("cursor", &self.cursor)
            .field("read", &self.read)
            .field("lost", &self.lost)
            .finish()
    }
}

impl<S: AsRef<[Slot]>> Consumer<'_, S> {
    /// Events read so far.
    pub fn read(&self) -> u64 {
        self.read
    }

    /// Events reported lost so far.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// The sequence number of the next event this consumer will look at.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    fn lose(&mut self, n: u64) -> Option<Received> {
        self.cursor += n;
        self.lost += n;
        Some(Received::Lost(n))
    }

    /// The next event, a report of lost events, or `None` when the next
    /// event is not written yet. Never blocks.
    pub fn try_recv(&mut self) -> Option<Received> {
        let ring = self.ring;
        // ordering: Acquire; pairs with nothing in particular (producers
        // publish through stamps), but orders the slot reads after it.
        let head = ring.head.load(Ordering::Acquire);
        let r = self.cursor;
        if r >= head {
            return None;
        }
        let capacity = ring.mask + 1;
        if head - r > capacity {
            // More than a lap behind: the slots of r .. head - capacity
            // belong to later events now (or will, once their producers write).
            return self.lose(head - capacity - r);
        }
        let slot = ring.slot(r);
        // ordering: Acquire, pairs with the producer's Release stamp store.
        let stamp = slot.stamp.load(Ordering::Acquire);
        if stamp == done(r) {
            let event = slot.words.load();
            // ordering: Acquire fence, pairs with the producer's Release
            // fence after its claim: if any word above came from a later
            // writer, the stamp load below sees that writer's claim.
            fence(Ordering::Acquire);
            if slot.stamp.load(Ordering::Relaxed) != stamp {
                return self.lose(1); // overwritten while we read it
            }
            self.cursor += 1;
            self.read += 1;
            return Some(Received::Event(event));
        }
        if stamp != 0 && stamp_seq(stamp) > r {
            return self.lose(1); // already overwritten by a later lap
        }
        // ordering: Acquire, pairs with the Release `fetch_max` of a producer
        // that gave up on this slot.
        if slot.skipped.load(Ordering::Acquire) > r {
            return self.lose(1);
        }
        None // the producer of `r` has not finished writing yet
    }
}
