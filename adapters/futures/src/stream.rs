//! The engine's event ring as a [`Stream`]: [`WakingSink`] and
//! [`EventStream`].
//!
//! The engine's [`EventRing`] never wakes anybody: producers must not pay
//! for consumers they do not know about. [`WakingSink`] is the sink to give
//! the primitives when a task should await their events: it pushes each
//! event into its ring, then wakes the one task registered in its
//! [`AtomicWaker`]. [`WakingSink::stream`] makes that task's side, an
//! [`EventStream`] yielding [`Received::Event`] and [`Received::Lost`] items.
//! Nothing takes a lock: a push is the ring's usual one `fetch_add` plus one
//! compare-and-swap (one compare-and-swap for a
//! [`LaneRing`](tenlives_engine::events::LaneRing)), and the wake is
//! atomic-waker's two read-modify-writes.
//!
//! # No lost wake-up
//!
//! A consumer must never sleep while an event it has not read is in the
//! ring. [`EventStream::poll_next`] therefore works in this order:
//!
//! 1. try to read the ring; if something is there, return it;
//! 2. register the task's waker in the `AtomicWaker`;
//! 3. try to read the ring *again*; if something is there, return it;
//! 4. only then return `Pending`.
//!
//! A producer works in the opposite order: it publishes the event in the
//! ring (the slot's `Release` stamp store; a laned ring's lane word, or its
//! count of dropped events), then calls
//! [`AtomicWaker::wake`]. Take any producer whose event the read of step 3
//! missed. Its `wake` then cannot have happened before the registration of
//! step 2 in the waker's state word: the registration's compare-and-swap
//! would have acquired the `wake`'s release, which comes after the event's
//! publication, so step 3 would have seen the event. So the `wake` happens
//! after the registration (it wakes the registered waker) or during it
//! (atomic-waker then wakes the new waker itself, at the end of `register`).
//! Either way the task is woken after the event was published and polls the
//! ring again. A slot a producer still writes when step 3 reads it shows as
//! "not written yet"; its producer's `wake` comes after it finishes writing.
//! Without step 3, an event published between step 1 and step 2 would be
//! announced to nobody: its `wake` would find no waker registered.
//!
//! # One stream per sink
//!
//! An `AtomicWaker` holds one waker, so a `WakingSink` serves one
//! `EventStream` at a time ([`WakingSink::stream`] refuses a second one while
//! the first lives). Other readers can still read the ring without waiting,
//! through [`WakingSink::ring`] and its `consumer`.

use core::fmt;
use core::pin::Pin;
use core::sync::atomic::{AtomicBool, Ordering};
use core::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use futures_core::Stream;
use futures_core::stream::FusedStream;
#[cfg(doc)]
use tenlives_engine::events::EventRing;
use tenlives_engine::events::{Event, EventReader, EventSink, EventSource, Received};

/// An [`EventSink`] that pushes into an [`EventRing`] and wakes the task
/// awaiting its [`EventStream`]. See the [module documentation](self).
///
/// ```
/// use futures::executor::block_on;
/// use futures::StreamExt;
/// use tenlives_engine::bulkhead::Bulkhead;
/// use tenlives_engine::events::{EventKind, EventRing, Received};
/// use tenlives_futures::WakingSink;
///
/// let sink = WakingSink::new(EventRing::with_capacity(64)?);
/// let mut events = sink.stream()?;
/// let bulkhead = Bulkhead::with_sink(1, &sink, 7)?;
/// let held = bulkhead.try_acquire().unwrap();
/// assert!(bulkhead.try_acquire().is_err());
/// drop(held);
/// sink.close(); // the stream ends once it has read everything
///
/// let kinds: Vec<EventKind> = block_on(events.by_ref().collect::<Vec<_>>())
///     .into_iter()
///     .map(|item| match item {
///         Received::Event(e) => e.kind,
///         Received::Lost(n) => panic!("lost {n}"),
///         other => panic!("unexpected {other:?}"), // `Received` may grow
///     })
///     .collect();
/// assert_eq!(
///     kinds,
///     [EventKind::BULKHEAD_ACQUIRED, EventKind::BULKHEAD_REJECTED, EventKind::BULKHEAD_RELEASED]
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct WakingSink<R: EventSource> {
    ring: R,
    waker: AtomicWaker,
    /// Set by `close`; never cleared.
    closed: AtomicBool,
    /// Whether an `EventStream` of this sink is alive.
    subscribed: AtomicBool,
}

impl<R: EventSource> WakingSink<R> {
    /// A sink over `ring`: an [`EventRing`] or a
    /// [`LaneRing`](tenlives_engine::events::LaneRing).
    pub fn new(ring: R) -> Self {
        WakingSink {
            ring,
            waker: AtomicWaker::new(),
            closed: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
        }
    }

    /// The ring underneath, e.g. for readers that poll it themselves.
    pub fn ring(&self) -> &R {
        &self.ring
    }

    /// The stream of events emitted from now on, or
    /// [`AlreadySubscribed`] while another stream of this sink lives.
    ///
    /// # Errors
    ///
    /// [`AlreadySubscribed`] if a stream of this sink has not been dropped.
    pub fn stream(&self) -> Result<EventStream<'_, R>, AlreadySubscribed> {
        // ordering: Acquire on success pairs with the Release store in
        // `EventStream::drop`: the previous stream is gone entirely.
        if self
            .subscribed
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err(AlreadySubscribed);
        }
        Ok(EventStream {
            sink: self,
            consumer: self.ring.reader(),
            ended: false,
        })
    }

    /// Ends the stream: once it has read every event emitted before this
    /// call, it yields `None`. Events emitted during or after `close` may
    /// not be delivered. The ring itself still takes events.
    pub fn close(&self) {
        // ordering: Release, pairs with the Acquire load in `poll_next`:
        // a stream that sees the flag sees every event emitted before it.
        self.closed.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        // ordering: Relaxed; a report.
        self.closed.load(Ordering::Relaxed)
    }
}

impl<R: EventSource> EventSink for WakingSink<R> {
    #[inline]
    fn emit(&self, event: Event) {
        // Publish first, then wake: see "No lost wake-up" above.
        self.ring.emit(event);
        self.waker.wake();
    }
}

impl<R: EventSource + fmt::Debug> fmt::Debug for WakingSink<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WakingSink")
            .field("ring", &self.ring)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// [`WakingSink::stream`] was called while another stream of the sink lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlreadySubscribed;

impl fmt::Display for AlreadySubscribed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("this sink already has a live event stream; it wakes one task only")
    }
}

#[cfg(feature = "std")]
impl std::error::Error for AlreadySubscribed {}

/// The events of a [`WakingSink`] as a [`Stream`] of [`Received`] items:
/// every event emitted since the stream was made, in order, or the number
/// of those it lost (overwritten before it read them). Made by
/// [`WakingSink::stream`].
///
/// It ends (yields `None`) only after [`WakingSink::close`]. Polling it
/// takes no lock and allocates nothing; registering the task's waker clones
/// it only when the task changed.
#[must_use = "streams do nothing unless polled"]
pub struct EventStream<'s, R: EventSource> {
    sink: &'s WakingSink<R>,
    consumer: R::Reader<'s>,
    ended: bool,
}

impl<R: EventSource> EventStream<'_, R> {
    /// Events read so far.
    pub fn read(&self) -> u64 {
        self.consumer.read()
    }

    /// Events reported lost so far.
    pub fn lost(&self) -> u64 {
        self.consumer.lost()
    }

    /// The next item if one is ready, without registering for a wake-up.
    pub fn try_next(&mut self) -> Option<Received> {
        self.consumer.try_recv()
    }
}

impl<R: EventSource> Stream for EventStream<'_, R> {
    type Item = Received;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Received>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some(item) = this.consumer.try_recv() {
            return Poll::Ready(Some(item));
        }
        #[cfg(test)]
        tests::between_read_and_register();
        this.sink.waker.register(cx.waker());
        // Read again after registering: see "No lost wake-up" above.
        if let Some(item) = this.consumer.try_recv() {
            return Poll::Ready(Some(item));
        }
        // ordering: Acquire, pairs with the Release store in `close`.
        if this.sink.closed.load(Ordering::Acquire) {
            // Everything emitted before `close` is visible now.
            if let Some(item) = this.consumer.try_recv() {
                return Poll::Ready(Some(item));
            }
            this.ended = true;
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

impl<R: EventSource> FusedStream for EventStream<'_, R> {
    fn is_terminated(&self) -> bool {
        self.ended
    }
}

impl<R: EventSource> fmt::Debug for EventStream<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("consumer", &self.consumer)
            .field("ended", &self.ended)
            .finish()
    }
}

impl<R: EventSource> Drop for EventStream<'_, R> {
    fn drop(&mut self) {
        // Drop the registered waker now rather than keep the task alive
        // until the next emit.
        drop(self.sink.waker.take());
        // ordering: Release, pairs with the Acquire in `WakingSink::stream`.
        self.sink.subscribed.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use core::cell::RefCell;
    use core::task::{Context, Poll};
    use std::boxed::Box;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    use futures_core::Stream;
    use tenlives_engine::events::{Event, EventKind, EventRing, EventSink, Received, Slot};
    use tenlives_engine::time::Timestamp;

    use super::WakingSink;

    std::thread_local! {
        /// Run by `poll_next` between its first read and its registration.
        static HOOK: RefCell<Option<Box<dyn FnMut()>>> = const { RefCell::new(None) };
    }

    pub(super) fn between_read_and_register() {
        HOOK.with(|hook| {
            if let Some(f) = hook.borrow_mut().as_mut() {
                f();
            }
        });
    }

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The race the re-check exists for, made to happen every time: an
    /// event is emitted after the stream's first read found the ring empty
    /// and before it registered its waker, so the emit's wake finds nobody
    /// to wake. The stream must still return the event instead of sleeping.
    #[test]
    fn an_emit_between_read_and_register_is_not_lost() {
        let sink: &'static WakingSink<EventRing<Box<[Slot]>>> = Box::leak(Box::new(
            WakingSink::new(EventRing::with_capacity(8).unwrap()),
        ));
        let mut stream = sink.stream().unwrap();
        let event = Event::new(EventKind::USER, 3, Timestamp::ZERO, [1, 2]);
        let mut emitted = false;
        HOOK.with(|hook| {
            *hook.borrow_mut() = Some(Box::new(move || {
                if !emitted {
                    emitted = true;
                    sink.emit(event);
                }
            }))
        });
        let counter = Arc::new(CountingWaker::default());
        let waker = Waker::from(counter.clone());
        let polled = core::pin::Pin::new(&mut stream).poll_next(&mut Context::from_waker(&waker));
        HOOK.with(|hook| hook.borrow_mut().take());
        assert_eq!(counter.0.load(Ordering::SeqCst), 0, "the emit woke nobody");
        assert_eq!(polled, Poll::Ready(Some(Received::Event(event))));
    }
}
