//! The windows a breaker measures its rates over: [`CallWindow`] is either
//! the striped time window of this file or the exact count window of
//! `ring.rs`.
//!
//! # The striped time window
//!
//! The window is a ring of `buckets` buckets. Each bucket exists once per
//! stripe ([`crate::stripe`]): a thread writes only its own stripe's copy, so
//! the success path of a closed breaker never writes a cache line that every
//! core writes. Readers (the failure path, snapshots) add up all stripes.
//!
//! # Bucket epochs and tags
//!
//! Calls fall into *epochs*: `epoch = now / bucket_length`. The slot of
//! epoch `e` is `e % buckets`. A slot word is
//!
//! ```text
//! +----------------+----------------+
//! |  tag (32 bits) | count (32 bits)|
//! +----------------+----------------+
//! ```
//!
//! with `tag = low32(e) + generation * 2 * buckets` (wrapping). The shift
//! moves every tag of a new breaker generation two whole windows away from the
//! old generation's tags: a window read by generation `g + 1` ending at epoch
//! `E` covers tags above any that generation `g` wrote up to epoch
//! `E + buckets - 1`. So a close (or any transition) starts from an empty
//! window without clearing anything, and a late record from an older
//! generation lands in a tag the readers ignore. A writer that finds an older
//! tag, or an empty slot (count 0, such as a fresh one's tag 0, which the
//! wrapping comparison calls newer than any tag from `2^31` on), resets the
//! slot to `(its tag, 1)`; one that finds a newer tag with a count drops its
//! record (it is late); readers count a slot only if its tag is one of the
//! window's current tags.
//!
//! Limits: a slot that nobody touched for 2^32 epochs (49 days of 1 ms
//! buckets), or time jumping by 2^31 epochs or more, can alias a current
//! tag (the calls, failures and slow words alias each on its own, so a
//! reader never counts a slot's failures or slow calls above its calls); a
//! stripe's bucket counts up to 2^32 - 1 calls and then saturates.
//!
//! # Orderings
//!
//! All slot operations are `SeqCst`. Two threads that each record a failure
//! and then add up the window must not both miss the other's record (the
//! store-buffering shape), or a rate that crossed its threshold would trip
//! nobody. On x86-64 a `SeqCst` read-modify-write or load costs the same as a
//! `Relaxed` one.

use crate::divide::Divisor;
use crossbeam_utils::CachePadded;

use super::config::{MAX_BUCKETS, Window as WindowConfig, WindowKind};
use super::ring::{CountWindow, Counted};
use super::word::is_newer;
use crate::stripe::{self, STRIPES};
use crate::sync::{AtomicU64, Ordering, spin_hint};
use crate::time::Timestamp;

const COUNT_MASK: u64 = u32::MAX as u64;

/// One bucket of one stripe.
#[derive(Default)]
struct Slot {
    /// Calls that reported success or failure.
    calls: AtomicU64,
    /// Of those, failures.
    failures: AtomicU64,
    /// Of those, slow calls (successful or not).
    slow: AtomicU64,
}

#[derive(Default)]
struct Stripe {
    slots: [Slot; MAX_BUCKETS],
}

/// Totals over the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WindowCounts {
    /// Calls that reported success or failure.
    pub calls: u64,
    /// Calls that failed.
    pub failures: u64,
    /// Calls at or above the slow-call duration.
    pub slow: u64,
}

/// The window of a breaker: of the kind its configuration asks for.
///
/// Both kinds live inline (there may be no allocator): the enum is as large
/// as the striped time window, about 3 KiB, the count window fitting inside.
/// (`allow`, not `expect`: under loom the variants are small.)
#[allow(
    clippy::large_enum_variant,
    reason = "inline storage without an allocator; boxing would need `alloc`"
)]
pub(crate) enum CallWindow {
    /// Calls of the last span of time, striped.
    Time(StripedWindow),
    /// Exactly the last `n` calls.
    Count(CountWindow),
}

/// Where a record landed, for judging the window it landed in.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Recorded {
    /// In the time window's bucket of this epoch.
    Time { epoch: u64 },
    /// In the count window.
    Count,
    /// Nowhere: it was late for the window's generation.
    Late,
}

impl CallWindow {
    /// An empty window laid out for `cfg`.
    pub(crate) fn new(cfg: &WindowConfig) -> Self {
        match cfg.kind {
            WindowKind::Count { calls } => CallWindow::Count(CountWindow::new(calls)),
            WindowKind::Time { bucket } => CallWindow::Time(StripedWindow::new(bucket, cfg)),
        }
    }

    /// Counts one call of `generation` that completed at `now`.
    // Always inlined: out of line, saving and restoring registers around the
    // call cost a time window's success 8 instructions (callgrind: 209 per
    // closed success against 201 before the count window; inlined, 196).
    #[inline(always)]
    pub(crate) fn record(
        &self,
        generation: u32,
        now: Timestamp,
        failed: bool,
        slow: bool,
    ) -> Recorded {
        match self {
            CallWindow::Time(w) => {
                let epoch = w.epoch(now);
                w.record(generation, epoch, failed, slow);
                Recorded::Time { epoch }
            }
            CallWindow::Count(w) => match w.record(generation, failed, slow) {
                Counted::Yes => Recorded::Count,
                Counted::Late => Recorded::Late,
            },
        }
    }

    /// The window a record landed in, for a decision; `None` if it was late.
    pub(crate) fn judged(&self, generation: u32, at: Recorded) -> Option<WindowCounts> {
        match (self, at) {
            (CallWindow::Time(w), Recorded::Time { epoch }) => Some(w.sum(generation, epoch)),
            (CallWindow::Count(w), Recorded::Count) => Some(w.counts(generation)),
            _ => None,
        }
    }

    /// Totals over the latest window at `now`, for reports.
    pub(crate) fn latest(&self, generation: u32, now: Timestamp) -> WindowCounts {
        match self {
            CallWindow::Time(w) => w.sum(generation, w.epoch(now)),
            CallWindow::Count(w) => w.counts(generation),
        }
    }

    /// A new window laid out for `new`, holding the calls of this window (of
    /// `generation`, at `now`) that fit it: for a new time window, the
    /// buckets of an old time window that overlap its span (`now` minus its
    /// length to `now`), or all of an old count window (its calls carry no
    /// times), counted in its bucket at `now`; for a new count window, the
    /// newest calls, as many as it holds, in their order (an old time window
    /// knows only counts per bucket: its buckets go oldest first, and within
    /// a bucket the failures before the successes, the slow calls last).
    /// Returns the new window and what it holds.
    pub(crate) fn carried(
        &self,
        new: &WindowConfig,
        generation: u32,
        now: Timestamp,
    ) -> (CallWindow, WindowCounts) {
        let fresh = CallWindow::new(new);
        match (&fresh, self) {
            (CallWindow::Count(into), CallWindow::Count(old)) => {
                old.newest(generation, u64::from(into.size()), |failed, slow| {
                    into.record(generation, failed, slow);
                });
            }
            (CallWindow::Count(into), CallWindow::Time(old)) => {
                old.newest_buckets(generation, now, u64::from(into.size()), |b| {
                    for i in 0..b.calls {
                        into.record(
                            generation,
                            i < b.failures,
                            i >= b.calls.saturating_sub(b.slow),
                        );
                    }
                });
            }
            (CallWindow::Time(into), CallWindow::Time(old)) => {
                old.carry_into(into, generation, now);
            }
            (CallWindow::Time(into), CallWindow::Count(old)) => {
                into.store(generation, into.epoch(now), old.counts(generation));
            }
        }
        let counts = fresh.latest(generation, now);
        (fresh, counts)
    }
}

/// A time window on its own, for a user that never needs a count window
/// (the throttle): the same operations as [`CallWindow`]'s time variant,
/// without the count window's code in its binary.
impl StripedWindow {
    /// An empty time window laid out for `cfg`; `None` for a count window.
    pub(crate) fn for_time(cfg: &WindowConfig) -> Option<Self> {
        match cfg.kind {
            WindowKind::Time { bucket } => Some(StripedWindow::new(bucket, cfg)),
            WindowKind::Count { .. } => None,
        }
    }

    /// Counts one call of `generation` that completed at `now`.
    #[inline]
    pub(crate) fn record_at(&self, generation: u32, now: Timestamp, failed: bool, slow: bool) {
        self.record(generation, self.epoch(now), failed, slow);
    }

    /// Totals over the window at `now`.
    #[inline]
    pub(crate) fn latest(&self, generation: u32, now: Timestamp) -> WindowCounts {
        self.sum(generation, self.epoch(now))
    }

    /// The bucket epoch of `now`.
    #[cfg(target_has_atomic = "64")]
    #[inline]
    pub(crate) fn epoch_at(&self, now: Timestamp) -> u64 {
        self.epoch(now)
    }

    /// Totals over the buckets `back` buckets before `epoch` (0 being
    /// `epoch`'s own bucket): `latest` is `0..buckets`, split so that a
    /// caller may remember the older part (the throttle's closed buckets).
    #[cfg(target_has_atomic = "64")]
    #[inline]
    pub(crate) fn totals_back(
        &self,
        generation: u32,
        epoch: u64,
        back: core::ops::Range<u64>,
    ) -> WindowCounts {
        self.sum_back(generation, epoch, back)
    }

    /// Counts the buckets of this window that overlap `into`'s span at `now`
    /// into `into`'s bucket at `now`.
    pub(crate) fn carry_into(&self, into: &StripedWindow, generation: u32, now: Timestamp) {
        let mut carried = WindowCounts::default();
        self.newest_buckets_since(generation, now, into.span(), |b| carried.add(b));
        into.store(generation, into.epoch(now), carried);
    }
}

/// What a snapshot reads and writes (`snapshot.rs` of the breaker and the
/// throttle): buckets by age, the bucket of `now` being age 0.
impl StripedWindow {
    /// The length of a bucket in nanoseconds.
    pub(crate) fn bucket_ns(&self) -> u64 {
        self.bucket.get()
    }

    /// How many buckets the window has.
    pub(crate) fn bucket_count(&self) -> u32 {
        self.buckets
    }

    /// Hands the counts of the window's buckets at `now` to `f`, newest
    /// (age 0) first, as many as the window has (fewer near time zero).
    pub(crate) fn buckets_by_age(
        &self,
        generation: u32,
        now: Timestamp,
        mut f: impl FnMut(WindowCounts),
    ) {
        let head = self.epoch(now);
        for back in 0..u64::from(self.buckets) {
            let Some(epoch) = head.checked_sub(back) else {
                break;
            };
            f(self.bucket(generation, epoch));
        }
    }

    /// Empties every bucket of every stripe (to tag 0, count 0); for a
    /// window no other thread uses yet.
    pub(crate) fn clear(&self) {
        for stripe in &self.stripes {
            for slot in &stripe.slots {
                for word in [&slot.calls, &slot.failures, &slot.slow] {
                    // ordering: SeqCst, like every window access.
                    word.store(0, Ordering::SeqCst);
                }
            }
        }
    }

    /// Sets the bucket `age` buckets before the bucket of `now` to `counts`
    /// (in stripe 0), if the window reaches that far and it is not before
    /// time zero; for a window no other thread uses yet.
    pub(crate) fn put_by_age(
        &self,
        generation: u32,
        now: Timestamp,
        age: u64,
        counts: WindowCounts,
    ) {
        if age >= u64::from(self.buckets) {
            return;
        }
        if let Some(epoch) = self.epoch(now).checked_sub(age) {
            self.store(generation, epoch, counts);
        }
    }
}

/// The striped, tagged time window; see the module documentation.
pub(crate) struct StripedWindow {
    stripes: [CachePadded<Stripe>; STRIPES],
    /// Bucket length in nanoseconds.
    bucket: Divisor,
    buckets: u32,
    /// `buckets` as a divisor without a `div` instruction (slot = epoch % buckets).
    buckets_divisor: Divisor,
}

impl StripedWindow {
    fn new(bucket: Divisor, cfg: &WindowConfig) -> Self {
        StripedWindow {
            stripes: core::array::from_fn(|_| CachePadded::new(Stripe::default())),
            bucket,
            buckets: cfg.buckets,
            buckets_divisor: cfg.buckets_divisor,
        }
    }

    /// The epoch of a record at `now`.
    #[inline]
    fn epoch(&self, now: Timestamp) -> u64 {
        now.as_nanos() / self.bucket
    }

    /// The window's length in nanoseconds.
    fn span(&self) -> u64 {
        self.bucket.get().saturating_mul(u64::from(self.buckets))
    }

    #[inline]
    fn tag(&self, generation: u32, epoch: u64) -> u32 {
        (epoch as u32).wrapping_add(generation.wrapping_mul(2 * self.buckets))
    }

    #[inline]
    fn slot_index(&self, epoch: u64) -> usize {
        (epoch % self.buckets_divisor) as usize
    }

    /// Counts one call into this thread's stripe at `epoch`.
    #[inline]
    fn record(&self, generation: u32, epoch: u64, failed: bool, slow: bool) {
        let tag = self.tag(generation, epoch);
        let slot = &self.stripes[stripe::current()].slots[self.slot_index(epoch)];
        if bump(&slot.calls, tag).is_none() {
            return;
        }
        if failed {
            bump(&slot.failures, tag);
        }
        if slow {
            bump(&slot.slow, tag);
        }
    }

    /// Totals over the window that ends at `epoch` for `generation`.
    fn sum(&self, generation: u32, epoch: u64) -> WindowCounts {
        self.sum_back(generation, epoch, 0..u64::from(self.buckets))
    }

    /// Totals over the buckets `back` buckets before `epoch` (0: `epoch`'s
    /// own), for `generation`; buckets before epoch 0 count nothing.
    fn sum_back(&self, generation: u32, epoch: u64, back: core::ops::Range<u64>) -> WindowCounts {
        let mut total = WindowCounts::default();
        for back in back {
            let Some(epoch) = epoch.checked_sub(back) else {
                break;
            };
            total.add(self.bucket(generation, epoch));
        }
        total
    }

    /// The counts of one bucket, over all stripes.
    #[inline]
    fn bucket(&self, generation: u32, epoch: u64) -> WindowCounts {
        let tag = self.tag(generation, epoch);
        let index = self.slot_index(epoch);
        let mut total = WindowCounts::default();
        for stripe in &self.stripes {
            let slot = &stripe.slots[index];
            let calls = read(&slot.calls, tag);
            if calls == 0 {
                continue;
            }
            // The three words are tagged one by one: after a jump in time of
            // 2^31 epochs or more (time going far backwards, or a slot left
            // alone for 2^32 epochs) their tags can alias apart, so a part
            // is never read above the whole.
            total.add(WindowCounts {
                calls,
                failures: read(&slot.failures, tag).min(calls),
                slow: read(&slot.slow, tag).min(calls),
            });
        }
        total
    }

    /// Hands the buckets of the window at `now` that end after `now - span`
    /// to `f`, newest first.
    fn newest_buckets_since(
        &self,
        generation: u32,
        now: Timestamp,
        span: u64,
        mut f: impl FnMut(WindowCounts),
    ) {
        let head = self.epoch(now);
        for back in 0..u64::from(self.buckets) {
            let Some(epoch) = head.checked_sub(back) else {
                break;
            };
            let bucket_end = (epoch + 1).saturating_mul(self.bucket.get());
            if bucket_end <= now.as_nanos().saturating_sub(span) {
                break;
            }
            f(self.bucket(generation, epoch));
        }
    }

    /// Hands the newest `calls` calls of the window at `now` to `f` bucket by
    /// bucket, oldest bucket first; of a bucket taken in part, its failures
    /// and slow calls in proportion.
    fn newest_buckets(
        &self,
        generation: u32,
        now: Timestamp,
        calls: u64,
        mut f: impl FnMut(WindowCounts),
    ) {
        let mut taken = [WindowCounts::default(); MAX_BUCKETS];
        let mut room = calls;
        let mut used = 0;
        self.newest_buckets_since(generation, now, self.span(), |b| {
            if room == 0 || b.calls == 0 {
                return;
            }
            let b = if b.calls > room {
                WindowCounts {
                    calls: room,
                    failures: b.failures * room / b.calls,
                    slow: b.slow * room / b.calls,
                }
            } else {
                b
            };
            room -= b.calls;
            taken[used] = b;
            used += 1;
        });
        taken[..used].iter().rev().for_each(|b| f(*b));
    }

    /// Sets the bucket of `epoch` to `counts`, in stripe 0; for a window no
    /// other thread uses yet.
    fn store(&self, generation: u32, epoch: u64, counts: WindowCounts) {
        let tag = self.tag(generation, epoch);
        let slot = &self.stripes[0].slots[self.slot_index(epoch)];
        for (word, count) in [
            (&slot.calls, counts.calls),
            (&slot.failures, counts.failures),
            (&slot.slow, counts.slow),
        ] {
            let count = count.min(COUNT_MASK);
            // ordering: SeqCst, like every window access; nobody else can
            // see this window yet.
            word.store((u64::from(tag) << 32) | count, Ordering::SeqCst);
        }
    }
}

impl WindowCounts {
    fn add(&mut self, other: WindowCounts) {
        self.calls += other.calls;
        self.failures += other.failures;
        self.slow += other.slow;
    }
}

/// Adds one to the slot word if its tag is `tag`, restarts it at one if its
/// tag is older or its count zero, and leaves it if its tag is newer and
/// holds a count (a late record). Returns the stripe's new count for the
/// bucket, or `None` for a late record.
///
/// An empty slot holds nothing whatever its tag: a fresh one is tag 0, which
/// the wrapping comparison calls newer than every tag from `2^31` on, so
/// timestamps far from zero (nanoseconds since the Unix epoch put the
/// epoch's low 32 bits anywhere) or a long uptime (2^31 buckets: 25 days of
/// 1 ms buckets) once found fresh slots "newer" and dropped every record
/// into them (`tests/any_origin.rs`: a throttle that never rejected).
#[inline]
fn bump(word: &AtomicU64, tag: u32) -> Option<u32> {
    // ordering: SeqCst, see the module docs.
    let mut current = word.load(Ordering::SeqCst);
    loop {
        let current_tag = (current >> 32) as u32;
        let next = if current_tag == tag {
            let count = (current & COUNT_MASK) as u32;
            (current & !COUNT_MASK) | u64::from(count.saturating_add(1))
        } else if is_newer(current_tag, tag) && current & COUNT_MASK != 0 {
            return None;
        } else {
            (u64::from(tag) << 32) | 1
        };
        match word.compare_exchange_weak(current, next, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return Some((next & COUNT_MASK) as u32),
            Err(actual) => {
                current = actual;
                spin_hint();
            }
        }
    }
}

/// The slot's count if its tag is `tag`, else zero.
#[inline]
fn read(word: &AtomicU64, tag: u32) -> u64 {
    // ordering: SeqCst, see the module docs.
    let w = word.load(Ordering::SeqCst);
    if (w >> 32) as u32 == tag {
        w & COUNT_MASK
    } else {
        0
    }
}
