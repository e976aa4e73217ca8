//! An admission queue as a tower layer: wait, boundedly and fairly, for a
//! permit instead of being refused at once.
//!
//! [`AdmissionQueueLayer`] puts an engine [`AdmissionQueue`] (usually in
//! front of a [`Bulkhead`](tenlives_engine::bulkhead::Bulkhead)) in front of
//! a service. A request that finds a permit free and nobody waiting is
//! called at once. Otherwise it joins the queue in `call`, in the class the
//! layer's [`QueueClass`] gives it (FIFO by default), and its response
//! future waits for a permit for at most the layer's maximum wait; the
//! queue's dispatcher grants permits in order (FIFO, round robin or
//! weighted classes), sheds by its overload policy, and wakes the future
//! through the waiter's slot. Once granted, the future calls the wrapped
//! service and holds the permit until the response arrives or the future is
//! dropped.
//!
//! ```
//! use std::time::Duration;
//! use tenlives_engine::bulkhead::Bulkhead;
//! use tenlives_engine::queue::{AdmissionQueue, QueueConfig};
//! use tenlives_tokio::{AdmissionQueueLayer, RejectionReason, TenlivesError};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tenlives_engine::ConfigError> {
//! // One call at a time; up to 16 more wait, each for at most 45 ms.
//! let queue = AdmissionQueue::new(Bulkhead::new(1)?, QueueConfig::fifo(16)?);
//! let layer = AdmissionQueueLayer::new(queue, Duration::from_millis(45));
//! let mut svc = layer.layer(service_fn(|ms: u64| async move {
//!     tokio::time::sleep(Duration::from_millis(ms)).await;
//!     Ok::<_, std::io::Error>(ms)
//! }));
//!
//! let first = svc.ready().await.unwrap().call(30); // takes the permit
//! let second = svc.ready().await.unwrap().call(10); // waits 30 ms for it: in time
//! let third = svc.ready().await.unwrap().call(10); // waits 40 ms: in time
//! let fourth = svc.ready().await.unwrap().call(10); // would wait 50 ms: too long
//! let (a, b, c, d) = tokio::join!(first, second, third, fourth);
//! assert_eq!((a.unwrap(), b.unwrap(), c.unwrap()), (30, 10, 10));
//! let d = d.unwrap_err();
//! assert!(matches!(
//!     &d,
//!     TenlivesError::Rejected(r) if r.reason() == RejectionReason::QueueTimeout { waited: Duration::from_millis(45) }
//! ));
//! assert_eq!(layer.queue().source().in_flight(), 0);
//! # Ok(())
//! # }
//! ```
//!
//! # `poll_ready` and `call`
//!
//! `poll_ready` forwards to the wrapped service, as every tenlives layer
//! does; the queue is entered in `call`, so a service polled ready and never
//! called holds no place and no permit. When the request has to wait, the
//! response future takes the wrapped service that was polled ready (leaving
//! a clone, not yet polled ready, in the service for the next request) and
//! calls it once granted: the wrapped service must be `Clone`, and a clone is
//! made only for requests that wait. A request granted at once calls the
//! wrapped service in `call` and clones nothing.
//!
//! # Rejections
//!
//! [`TenlivesError::Rejected`] with reason
//! [`QueueFull`](crate::RejectionReason::QueueFull) (refused on arrival),
//! [`QueueShed`](crate::RejectionReason::QueueShed) (shed from the queue to
//! make room, by the queue's overload policy),
//! [`QueueTimeout`](crate::RejectionReason::QueueTimeout) (no permit within
//! the maximum wait) or
//! [`QueueUnknownClass`](crate::RejectionReason::QueueUnknownClass). A full
//! queue and a shed carry `retry_after` = the maximum wait (by then every
//! request waiting now has been served or has given up); a timeout carries
//! none. Nothing was sent to the wrapped service.
//!
//! # Drop and panic
//!
//! The response future holds the waiter while waiting and the permit while
//! the call runs. Dropped while waiting, it gives up its place (a permit
//! granted to it meanwhile goes to the next waiter); dropped while the call
//! runs, or unwound by a panic in the wrapped service, it drops the call and
//! then gives the permit back — to the next waiter if there is one.
//!
//! # Cost
//!
//! A request granted at once: the queue's fast path (one load, the
//! bulkhead's acquire), one `Arc` clone (the queue, held by the permit), no
//! clock read, and on completion the bulkhead's release, a fence and one
//! load. A request that waits: one clock reading, the queue's enqueue and
//! hand-over (a dozen atomic read-modify-writes, no lock), a clone of the
//! wrapped service, and one entry of the layer's shared timer wheel for the
//! deadline, taken only when the future first waits and given back when the
//! wait ends (no tokio `Sleep` and no timer-driver lock per request: see
//! [`Timers`]; a wait that finds the wheel full sleeps on a tokio `Sleep`,
//! counted by [`Timers::fallbacks`]); two `Arc` clones (the queue's, which
//! moves from the waiter into the permit, and the wheel's). Nothing is
//! boxed or allocated.
//!
//! # Panics
//!
//! A request that waits sleeps on tokio's timer (through the wheel's driver
//! task): it needs a tokio runtime with the time driver enabled.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use pin_project_lite::pin_project;
use tenlives_engine::events::{EventSink, NoSink};
use tenlives_engine::queue::{AdmissionQueue, OwnedQueuePermit, OwnedWaiter, PermitSource};
use tenlives_engine::time::{Clock, Timestamp};
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

use crate::clock::TokioClock;
use crate::error::{Rejection, TenlivesError, queue_rejection, take_rejection};
use crate::span::{CallSpan, WaitStart, call_span};
use crate::wheel::{OwnedAlarm, Timers};

/// Which class of the admission queue a request waits in: a tenant, a
/// priority class.
///
/// Implemented by [`OneClass`] (class 0, for a FIFO queue) and by every
/// closure `Fn(&Req) -> u16`. It runs once per request that waits, on the
/// request path: keep it cheap and free of allocation. A class the queue
/// does not have refuses the request
/// ([`QueueUnknownClass`](crate::RejectionReason::QueueUnknownClass)).
pub trait QueueClass<Req> {
    /// The class `req` waits in.
    fn class(&self, req: &Req) -> u16;
}

/// Every request in class 0: the one class of a FIFO queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OneClass;

impl<Req> QueueClass<Req> for OneClass {
    #[inline]
    fn class(&self, _req: &Req) -> u16 {
        0
    }
}

impl<Req, F> QueueClass<Req> for F
where
    F: Fn(&Req) -> u16,
{
    #[inline]
    fn class(&self, req: &Req) -> u16 {
        self(req)
    }
}

/// A tower [`Layer`] that makes requests wait in an [`AdmissionQueue`] for
/// a permit of its source, for at most a maximum wait. See the
/// [module documentation](self).
///
/// Every service made by one layer value (and every clone of those) shares
/// the queue, behind one `Arc`, reachable with [`queue`](Self::queue) (for
/// its waiter count and its source's in-flight count).
pub struct AdmissionQueueLayer<P: PermitSource, Snk: EventSink = NoSink, C = OneClass> {
    queue: Arc<AdmissionQueue<P, Snk>>,
    max_wait: Duration,
    clock: TokioClock,
    timers: Timers,
    class: C,
}

impl<P: PermitSource, Snk: EventSink, C: Clone> Clone for AdmissionQueueLayer<P, Snk, C> {
    fn clone(&self) -> Self {
        AdmissionQueueLayer {
            queue: Arc::clone(&self.queue),
            max_wait: self.max_wait,
            clock: self.clock,
            timers: self.timers.clone(),
            class: self.class.clone(),
        }
    }
}

impl<P: PermitSource, Snk: EventSink, C> fmt::Debug for AdmissionQueueLayer<P, Snk, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionQueueLayer")
            .field("queue", &self.queue)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl<P: PermitSource, Snk: EventSink> AdmissionQueueLayer<P, Snk> {
    /// Requests wait in `queue` (an `AdmissionQueue`, or an `Arc` of one
    /// shared with other users), in class 0, for at most `max_wait`. A zero
    /// `max_wait` never waits: a request that finds no permit free is
    /// refused at once with `QueueTimeout`. Timed on a [`TokioClock`] made
    /// now.
    pub fn new(queue: impl Into<Arc<AdmissionQueue<P, Snk>>>, max_wait: Duration) -> Self {
        let clock = TokioClock::new();
        AdmissionQueueLayer {
            queue: queue.into(),
            max_wait,
            clock,
            timers: Timers::with_defaults(clock),
            class: OneClass,
        }
    }
}

impl<P: PermitSource, Snk: EventSink, C> AdmissionQueueLayer<P, Snk, C> {
    /// The same layer, putting each request in the class `class` gives it
    /// (a closure `Fn(&Req) -> u16`, or any [`QueueClass`]).
    pub fn class_by<C2>(self, class: C2) -> AdmissionQueueLayer<P, Snk, C2> {
        AdmissionQueueLayer {
            queue: self.queue,
            max_wait: self.max_wait,
            clock: self.clock,
            timers: self.timers,
            class,
        }
    }

    /// The same layer reading time from `clock` (e.g. one shared with other
    /// layers, so that the queue's event timestamps agree with theirs).
    pub fn with_clock(mut self, clock: TokioClock) -> Self {
        self.clock = clock;
        self.timers = Timers::with_defaults(clock);
        self
    }

    /// The same layer with a timer wheel of `capacity` entries on ticks of
    /// `resolution` for the waits (default: 1024 entries of 1 ms; see
    /// [`Timers`]).
    ///
    /// # Errors
    ///
    /// A zero or too large capacity, a zero resolution.
    pub fn timer_wheel(
        mut self,
        capacity: usize,
        resolution: Duration,
    ) -> Result<Self, tenlives_engine::ConfigError> {
        self.timers = Timers::new(capacity, resolution, self.clock)?;
        Ok(self)
    }

    /// The timer wheel the waits sleep on.
    pub fn timers(&self) -> &Timers {
        &self.timers
    }

    /// The queue, shared by every service this layer made.
    pub fn queue(&self) -> &Arc<AdmissionQueue<P, Snk>> {
        &self.queue
    }

    /// The longest a request waits for a permit.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }
}

impl<S, P: PermitSource, Snk: EventSink, C: Clone> Layer<S> for AdmissionQueueLayer<P, Snk, C> {
    type Service = AdmissionQueueService<S, P, Snk, C>;

    fn layer(&self, inner: S) -> Self::Service {
        AdmissionQueueService {
            inner,
            queue: Arc::clone(&self.queue),
            max_wait: self.max_wait,
            clock: self.clock,
            timers: self.timers.clone(),
            class: self.class.clone(),
        }
    }
}

/// A service whose requests wait in an [`AdmissionQueue`]. Made by
/// [`AdmissionQueueLayer`].
///
/// Errors are [`TenlivesError<S::Error>`]: `Rejected` when the queue turned
/// the request away, `Inner` when the wrapped service failed.
pub struct AdmissionQueueService<S, P: PermitSource, Snk: EventSink = NoSink, C = OneClass> {
    inner: S,
    queue: Arc<AdmissionQueue<P, Snk>>,
    max_wait: Duration,
    clock: TokioClock,
    timers: Timers,
    class: C,
}

impl<S: Clone, P: PermitSource, Snk: EventSink, C: Clone> Clone
    for AdmissionQueueService<S, P, Snk, C>
{
    fn clone(&self) -> Self {
        AdmissionQueueService {
            inner: self.inner.clone(),
            queue: Arc::clone(&self.queue),
            max_wait: self.max_wait,
            clock: self.clock,
            timers: self.timers.clone(),
            class: self.class.clone(),
        }
    }
}

impl<S: fmt::Debug, P: PermitSource, Snk: EventSink, C> fmt::Debug
    for AdmissionQueueService<S, P, Snk, C>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionQueueService")
            .field("inner", &self.inner)
            .field("queue", &self.queue)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl<S, P: PermitSource, Snk: EventSink, C> AdmissionQueueService<S, P, Snk, C> {
    /// The queue, shared with every clone of this service.
    pub fn queue(&self) -> &Arc<AdmissionQueue<P, Snk>> {
        &self.queue
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, Req, P, Snk, C> Service<Req> for AdmissionQueueService<S, P, Snk, C>
where
    S: Service<Req> + Clone,
    P: PermitSource,
    Snk: EventSink,
    C: QueueClass<Req>,
{
    type Response = S::Response;
    type Error = TenlivesError<S::Error>;
    type Future = AdmissionQueueFuture<S, Req, P, Snk>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(TenlivesError::Inner)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let span = call_span!("tenlives.queue", "admission_queue");
        if let Ok(permit) = self.queue.try_acquire_owned() {
            span.admitted();
            let future = span.in_scope(|| self.inner.call(req));
            return AdmissionQueueFuture::new(State::Running { future, permit }, span);
        }
        let now = self.clock.now();
        let deadline = now.saturating_add(self.max_wait);
        let rejected = if deadline <= now {
            // No time to wait at all.
            tenlives_engine::queue::Rejected::TimedOut
        } else {
            let class = self.class.class(&req);
            // The future registers its own waker at its first poll; a
            // decision before that wakes nobody, and that poll sees it.
            match self.queue.enqueue_owned(class, deadline, Waker::noop()) {
                Ok(waiter) => {
                    // The service polled ready goes with the request; the
                    // clone left here is polled ready before the next call.
                    let ready = self.inner.clone();
                    let service = std::mem::replace(&mut self.inner, ready);
                    return AdmissionQueueFuture::new(
                        State::Waiting {
                            waiter,
                            call: Some((service, req)),
                            wait: Wait {
                                deadline,
                                max_wait: self.max_wait,
                                started: span.wait_start(),
                            },
                            alarm: OwnedAlarm::new(self.timers.clone()),
                        },
                        span,
                    );
                }
                Err(rejected) => rejected,
            }
        };
        let rejection = queue_rejection(rejected, self.max_wait);
        span.rejected(&rejection);
        AdmissionQueueFuture::new(
            State::Rejected {
                rejection: Some(rejection),
            },
            span,
        )
    }
}

/// When a waiting request gives up.
#[derive(Clone, Copy, Debug)]
struct Wait {
    /// The waiter's deadline in the queue, on the layer's clock.
    deadline: Timestamp,
    /// The layer's maximum wait, for the rejection.
    max_wait: Duration,
    /// When the wait started, if the call's span records it.
    started: WaitStart,
}

pin_project! {
    /// Where a request is.
    #[project = StateProj]
    enum State<S, Req, F, P: PermitSource, Snk: EventSink> {
        /// Queued: the waiter, the service polled ready and the request
        /// for the call once granted, and the timer of the wait (its wheel
        /// entry given back when the state changes).
        Waiting {
            waiter: OwnedWaiter<P, Snk>,
            call: Option<(S, Req)>,
            wait: Wait,
            alarm: OwnedAlarm,
        },
        /// Granted: the call in flight, and the permit it holds (declared
        /// after the call: dropped after it).
        Running {
            #[pin]
            future: F,
            permit: OwnedQueuePermit<P, Snk>,
        },
        /// Turned away before reaching the service.
        Rejected { rejection: Option<Rejection> },
        /// The result was returned.
        Done,
    }
}

pin_project! {
    /// The response future of an [`AdmissionQueueService`]: the queued
    /// waiter, then the wrapped call and the permit it holds; and the timer
    /// for the maximum wait (made only once the request waits). Dropping it
    /// gives up the place in the queue, or drops the call and then releases
    /// the permit.
    #[must_use = "futures do nothing unless polled"]
    pub struct AdmissionQueueFuture<S: Service<Req>, Req, P: PermitSource, Snk: EventSink> {
        #[pin]
        state: State<S, Req, S::Future, P, Snk>,
        #[pin]
        sleep: Option<Sleep>,
        span: CallSpan,
    }
}

impl<S: Service<Req>, Req, P: PermitSource, Snk: EventSink> AdmissionQueueFuture<S, Req, P, Snk> {
    fn new(state: State<S, Req, S::Future, P, Snk>, span: CallSpan) -> Self {
        AdmissionQueueFuture {
            state,
            sleep: None,
            span,
        }
    }
}

impl<S: Service<Req>, Req, P: PermitSource, Snk: EventSink> fmt::Debug
    for AdmissionQueueFuture<S, Req, P, Snk>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Waiting { .. } => "waiting",
            State::Running { .. } => "running",
            State::Rejected { .. } => "rejected",
            State::Done => "done",
        };
        f.debug_struct("AdmissionQueueFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<S, Req, P, Snk> Future for AdmissionQueueFuture<S, Req, P, Snk>
where
    S: Service<Req>,
    P: PermitSource,
    Snk: EventSink,
{
    type Output = Result<S::Response, TenlivesError<S::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let span = &*this.span;
        let _entered = span.enter();
        loop {
            match this.state.as_mut().project() {
                StateProj::Running { future, .. } => {
                    // A panic here unwinds through this future; dropping it
                    // drops the call, then releases the permit.
                    let result = std::task::ready!(future.poll(cx));
                    span.ended(&result);
                    // The permit goes back (to the next waiter) now, not
                    // when the caller drops this future.
                    this.state.set(State::Done);
                    return Poll::Ready(result.map_err(TenlivesError::Inner));
                }
                StateProj::Waiting {
                    waiter,
                    call,
                    wait,
                    alarm,
                } => {
                    let verdict = match poll_waiter(waiter, alarm, this.sleep.as_mut(), wait, cx) {
                        Poll::Ready(verdict) => verdict,
                        Poll::Pending => return Poll::Pending,
                    };
                    span.waited(wait.started);
                    match verdict {
                        Ok(permit) => {
                            span.admitted();
                            // The timer is done with; give its slot in the
                            // wheel back now.
                            this.sleep.set(None);
                            let Some((mut service, request)) = call.take() else {
                                unreachable!("a waiting request keeps its call until granted")
                            };
                            // A panic in `call` unwinds with the permit in
                            // this frame: it is released.
                            let future = service.call(request);
                            this.state.set(State::Running { future, permit });
                        }
                        Err(rejected) => {
                            let rejection = queue_rejection(rejected, wait.max_wait);
                            span.rejected(&rejection);
                            this.sleep.set(None);
                            this.state.set(State::Done);
                            return Poll::Ready(Err(TenlivesError::Rejected(rejection)));
                        }
                    }
                }
                StateProj::Rejected { rejection } => return take_rejection(rejection),
                // Polled after completion: the caller's bug; stay pending.
                StateProj::Done => return Poll::Pending,
            }
        }
    }
}

/// Polls a waiter: its verdict if it has one; else, once the timer says the
/// deadline has passed, a poll at the deadline, which decides it (a timeout,
/// or the grant or shed that came first).
fn poll_waiter<P: PermitSource, Snk: EventSink>(
    waiter: &mut OwnedWaiter<P, Snk>,
    alarm: &mut OwnedAlarm,
    mut sleep: Pin<&mut Option<Sleep>>,
    wait: &Wait,
    cx: &mut Context<'_>,
) -> Poll<Result<OwnedQueuePermit<P, Snk>, tenlives_engine::queue::Rejected>> {
    // Any time before the deadline: the timer, not a clock reading, says
    // when it has passed. (The deadline is after the enqueue's reading,
    // which is at least zero.)
    if let Poll::Ready(verdict) = waiter.poll_permit(cx, Timestamp::ZERO) {
        return Poll::Ready(verdict);
    }
    if !alarm.is_set(&sleep) {
        alarm.set(sleep.as_mut(), wait.deadline, cx);
    }
    std::task::ready!(alarm.poll(sleep, cx));
    // At the deadline the waiter is decided whatever happened: timed out
    // here, or granted or shed just before.
    match waiter.poll_permit(cx, wait.deadline) {
        Poll::Ready(verdict) => Poll::Ready(verdict),
        Poll::Pending => unreachable!("a poll at the deadline decides the waiter"),
    }
}
