//! Telemetry events: what the primitives report, and where it goes.
//!
//! An [`Event`] is a small `Copy` record (kind, source, time, two payload
//! words). Primitives emit events into an [`EventSink`]; the sink of choice is
//! an [`EventRing`], a fixed-capacity broadcast ring that producers never wait
//! on and from which any number of [`Consumer`]s read at their own pace,
//! learning exactly how many events they missed. With [`NoSink`] (the
//! default) the emission code compiles away.
//!
//! The schema — every kind and what its payload words mean — is in
//! `docs/events.md`.

mod lanes;
mod ring;
mod words;

pub use lanes::{LaneConsumer, LaneProducer, LaneRing, LaneSlot, MAX_LANES};
pub use ring::{Consumer, EventRing, MAX_CAPACITY, Received, Slot};

use crate::error::ConfigError;
use crate::time::Timestamp;

/// A ring's (or a lane's) number of slots: a power of two of at least 2,
/// so that a sequence number finds its slot with a mask.
fn check_power_of_two(field: &'static str, slots: usize) -> Result<(), ConfigError> {
    if slots < 2 || !slots.is_power_of_two() {
        return Err(ConfigError::NotPowerOfTwo {
            field,
            value: slots as u64,
        });
    }
    Ok(())
}

/// What happened. A `u16` code; codes below [`EventKind::USER`] are reserved
/// for tenlives, codes from it up are free for applications.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct EventKind(pub u16);

impl EventKind {
    /// A breaker opened. Payload: `[consecutive trips, open duration in ns]`.
    pub const BREAKER_OPENED: EventKind = EventKind(1);
    /// A breaker moved to half-open. Payload: `[consecutive trips, probes allowed]`.
    pub const BREAKER_HALF_OPENED: EventKind = EventKind(2);
    /// A breaker closed after a passing test. Payload: `[probes succeeded, probes failed]`.
    pub const BREAKER_CLOSED: EventKind = EventKind(3);
    /// An operator changed a breaker's state. Payload: `[new state code, 0]`
    /// (see `docs/events.md` for the codes).
    pub const BREAKER_FORCED: EventKind = EventKind(4);
    /// A breaker rejected a call. Payload: `[reason code, retry-after in ns or u64::MAX if unknown]`.
    pub const BREAKER_REJECTED: EventKind = EventKind(5);
    /// A bulkhead refused a call. Payload: `[permits asked, the packed state
    /// word seen (in-flight << 32 | limit)]`.
    pub const BULKHEAD_REJECTED: EventKind = EventKind(16);
    /// A bulkhead's limit changed. Payload: `[old limit, new limit]`.
    pub const BULKHEAD_LIMIT_CHANGED: EventKind = EventKind(17);
    /// A bulkhead granted permits. Payload: `[permits, in flight after]`.
    pub const BULKHEAD_ACQUIRED: EventKind = EventKind(18);
    /// Permits went back to a bulkhead. Payload: `[permits, in flight after]`.
    pub const BULKHEAD_RELEASED: EventKind = EventKind(19);
    /// A retry budget refused a withdrawal. Payload: `[withdrawals in the
    /// window, deposits in the window]`.
    pub const RETRY_BUDGET_EXHAUSTED: EventKind = EventKind(32);
    /// A client-side throttle rejected a request locally. Payload:
    /// `[rejection probability in parts per million, requests in the window]`.
    pub const THROTTLED: EventKind = EventKind(48);
    /// A rate limiter refused a request; payload `[tokens asked, nanoseconds
    /// until they would be available (u64::MAX: never, or unknown)]`.
    pub const RATE_LIMITED: EventKind = EventKind(56);
    /// A keyed rate limiter had no room for a new key; payload `[tokens
    /// asked, 0]`. What happened to the request depends on its `WhenFull`.
    pub const KEYED_TABLE_FULL: EventKind = EventKind(57);
    /// An admission queue turned a caller away: refused on arrival, shed
    /// while waiting, or timed out. Payload: `[class, reason code]`, the
    /// code being 1 queue full, 2 shed as the oldest, 3 shed as the lowest
    /// priority, 4 timed out. Sheds and refusals carry
    /// [`Timestamp::ZERO`](crate::time::Timestamp::ZERO) (the queue knows no
    /// time then); timeouts carry the time they were found at.
    pub const QUEUE_REJECTED: EventKind = EventKind(64);
    /// A primitive took a new configuration at run time (see
    /// `docs/live-config.md`). Payload: `[the primitive's event family (1
    /// breaker, 17 adaptive limiter, 32 retry budget, 48 throttle, 56 rate
    /// limiter), a primitive-specific word]`: for a rate limiter the tokens
    /// still booked ahead under the new quota; for a breaker, budget or
    /// throttle what was carried into a new window (`u64::MAX`: the window
    /// was kept); for an adaptive limiter 1 (algorithm) or 2 (window). The
    /// bulkhead reports its limit changes as
    /// [`BULKHEAD_LIMIT_CHANGED`](Self::BULKHEAD_LIMIT_CHANGED).
    pub const CONFIG_CHANGED: EventKind = EventKind(96);
    /// First code free for applications.
    pub const USER: EventKind = EventKind(0x8000);
}

/// One telemetry record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// Which policy instance it happened in (an id the application assigns).
    pub source: u32,
    /// When it happened, on the clock the primitive was given.
    pub time: Timestamp,
    /// Kind-specific data; see the kind's documentation.
    pub payload: [u64; 2],
}

impl Event {
    /// An event of `kind` from `source` at `time` with `payload`.
    #[inline]
    pub const fn new(kind: EventKind, source: u32, time: Timestamp, payload: [u64; 2]) -> Self {
        Event {
            kind,
            source,
            time,
            payload,
        }
    }
}

/// Where a primitive sends its events.
///
/// Implementations must not block and should not allocate: `emit` runs on
/// the request path.
pub trait EventSink {
    /// Whether emitting does anything. Primitives skip building events when
    /// this is `false`; for [`NoSink`] it is a constant, so the whole emission
    /// compiles away.
    #[inline]
    fn enabled(&self) -> bool {
        true
    }

    /// Records one event.
    fn emit(&self, event: Event);
}

/// A ring that consumers join: [`EventRing`] and [`LaneRing`]. Readers that
/// work with either (a telemetry drain, a journal) take an `EventSource`.
///
/// ```
/// use tenlives_engine::events::{Event, EventKind, EventReader, EventRing, EventSource, LaneRing, Received};
/// use tenlives_engine::time::Timestamp;
///
/// fn count_events<R: EventSource>(ring: &R, emit: usize) -> u64 {
///     let mut reader = ring.reader();
///     for i in 0..emit as u64 {
///         ring.emit(Event::new(EventKind::USER, 1, Timestamp::from_nanos(i), [i, 0]));
///     }
///     while reader.try_recv().is_some() {}
///     reader.read()
/// }
/// assert_eq!(count_events(&EventRing::with_capacity(8)?, 5), 5);
/// assert_eq!(count_events(&LaneRing::new(2, 8)?, 5), 5);
/// # Ok::<(), tenlives_engine::ConfigError>(())
/// ```
pub trait EventSource: EventSink {
    /// The ring's consumer.
    type Reader<'a>: EventReader + core::fmt::Debug + Unpin
    where
        Self: 'a;

    /// A consumer that will read every event emitted from now on.
    fn reader(&self) -> Self::Reader<'_>;

    /// How many events were emitted so far (including those overwritten or
    /// dropped).
    fn emitted(&self) -> u64;
}

/// A consumer of an [`EventSource`]: [`Consumer`] and [`LaneConsumer`].
pub trait EventReader {
    /// The next event, a report of lost events, or `None` when nothing new
    /// is published. Never blocks.
    fn try_recv(&mut self) -> Option<Received>;

    /// Events read so far.
    fn read(&self) -> u64;

    /// Events reported lost so far.
    fn lost(&self) -> u64;

    /// How far this consumer has come, on the scale of
    /// [`EventSource::emitted`]: the events emitted before it joined plus
    /// those it has read or counted lost. A reader that wants only what was
    /// emitted before some moment reads while `position() < emitted()` as
    /// taken at that moment.
    fn position(&self) -> u64;
}

impl<S: AsRef<[Slot]>> EventSource for EventRing<S> {
    type Reader<'a>
        = Consumer<'a, S>
    where
        Self: 'a;

    #[inline]
    fn reader(&self) -> Consumer<'_, S> {
        self.consumer()
    }

    #[inline]
    fn emitted(&self) -> u64 {
        EventRing::emitted(self)
    }
}

impl<S: AsRef<[Slot]>> EventReader for Consumer<'_, S> {
    #[inline]
    fn try_recv(&mut self) -> Option<Received> {
        Consumer::try_recv(self)
    }

    #[inline]
    fn read(&self) -> u64 {
        Consumer::read(self)
    }

    #[inline]
    fn lost(&self) -> u64 {
        Consumer::lost(self)
    }

    #[inline]
    fn position(&self) -> u64 {
        self.cursor()
    }
}

impl<S: AsRef<[LaneSlot]>> EventSource for LaneRing<S> {
    type Reader<'a>
        = LaneConsumer<'a, S>
    where
        Self: 'a;

    #[inline]
    fn reader(&self) -> LaneConsumer<'_, S> {
        self.consumer()
    }

    #[inline]
    fn emitted(&self) -> u64 {
        LaneRing::emitted(self)
    }
}

impl<S: AsRef<[LaneSlot]>> EventReader for LaneConsumer<'_, S> {
    #[inline]
    fn try_recv(&mut self) -> Option<Received> {
        LaneConsumer::try_recv(self)
    }

    #[inline]
    fn read(&self) -> u64 {
        LaneConsumer::read(self)
    }

    #[inline]
    fn lost(&self) -> u64 {
        LaneConsumer::lost(self)
    }

    #[inline]
    fn position(&self) -> u64 {
        LaneConsumer::position(self)
    }
}

/// A sink that passes on only the events whose kind `keep` accepts, e.g. to
/// record a bulkhead's rejections but not its every grant and release.
///
/// ```
/// use tenlives_engine::bulkhead::Bulkhead;
/// use tenlives_engine::events::{EventKind, EventRing, Filter, Received};
///
/// let ring = EventRing::with_capacity(16)?;
/// let mut seen = ring.consumer();
/// let sink = Filter::new(&ring, |kind| kind == EventKind::BULKHEAD_REJECTED);
/// let bulkhead = Bulkhead::with_sink(1, sink, 3)?;
/// let held = bulkhead.try_acquire().unwrap(); // not recorded
/// assert!(bulkhead.try_acquire().is_err()); // recorded
/// drop(held); // not recorded
/// assert!(matches!(seen.try_recv(), Some(Received::Event(e)) if e.kind == EventKind::BULKHEAD_REJECTED));
/// assert_eq!(seen.try_recv(), None);
/// # Ok::<(), tenlives_engine::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Filter<S, F> {
    sink: S,
    keep: F,
}

impl<S: EventSink, F: Fn(EventKind) -> bool> Filter<S, F> {
    /// Passes to `sink` the events whose kind `keep` accepts.
    pub fn new(sink: S, keep: F) -> Self {
        Filter { sink, keep }
    }
}

impl<S: EventSink, F: Fn(EventKind) -> bool> EventSink for Filter<S, F> {
    #[inline]
    fn enabled(&self) -> bool {
        self.sink.enabled()
    }
    #[inline]
    fn emit(&self, event: Event) {
        if (self.keep)(event.kind) {
            self.sink.emit(event);
        }
    }
}

/// The sink that drops everything, at no cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoSink;

impl EventSink for NoSink {
    #[inline(always)]
    fn enabled(&self) -> bool {
        false
    }
    #[inline(always)]
    fn emit(&self, _event: Event) {}
}

impl<T: EventSink + ?Sized> EventSink for &T {
    #[inline]
    fn enabled(&self) -> bool {
        (**self).enabled()
    }
    #[inline]
    fn emit(&self, event: Event) {
        (**self).emit(event);
    }
}

#[cfg(feature = "alloc")]
impl<T: EventSink + ?Sized> EventSink for alloc::sync::Arc<T> {
    #[inline]
    fn enabled(&self) -> bool {
        (**self).enabled()
    }
    #[inline]
    fn emit(&self, event: Event) {
        (**self).emit(event);
    }
}
