//! The client-side throttle as a tower layer.
//!
//! [`ThrottleLayer`] asks a [`Throttle`] in `call` whether to send the
//! request; a local rejection is an error future
//! ([`RejectionReason::Throttled`](crate::RejectionReason)) that never
//! reaches the wrapped service. When the response arrives the throttle hears
//! whether the backend accepted it: a call classified [`Outcome::Success`]
//! or [`Outcome::Ignored`] was accepted (the backend answered, even if with an
//! error of the caller's making), one classified [`Outcome::Failure`] was
//! refused. A response future dropped before the answer reports nothing.
//!
//! ```
//! use tenlives_engine::throttle::{Throttle, ThrottleConfig};
//! use tenlives_tokio::ThrottleLayer;
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tenlives_engine::ConfigError> {
//! let layer = ThrottleLayer::new(Throttle::new(ThrottleConfig::builder().minimum_requests(10).seed(1).build()?));
//! let mut svc = layer.layer(service_fn(|_: ()| async { Err::<(), _>("overloaded") }));
//! let mut local = 0;
//! for _ in 0..200 {
//!     if let Err(e) = svc.ready().await.unwrap().call(()).await {
//!         local += usize::from(e.is_rejected());
//!     }
//! }
//! assert!(local > 100, "a backend refusing everything is mostly spared: {local}");
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tenlives_engine::breaker::Outcome;
use tenlives_engine::events::{EventSink, NoSink};
use tenlives_engine::throttle::{Throttle, ThrottleTicket};
use tenlives_engine::time::Clock;
use tower_layer::Layer;
use tower_service::Service;

use crate::classify::{Classify, DefaultClassifier};
use crate::clock::TokioClock;
use crate::error::{Rejection, TenlivesError, take_rejection};
use crate::outcome::report_call;
use crate::span::{CallSpan, call_span};

struct Shared<K, Snk: EventSink> {
    throttle: Throttle<Snk>,
    classifier: K,
    clock: TokioClock,
}

/// A ticket of the throttle that `shared` owns, kept beside it.
///
/// The engine's ticket borrows its throttle, and the throttle lives in the
/// `Arc` the response future holds; this pair is the one place that ties the
/// two lifetimes together.
struct HeldTicket<K, Snk: EventSink + 'static> {
    // Declared before `shared`, so dropped before it.
    ticket: ThrottleTicket<'static, Snk>,
    shared: Arc<Shared<K, Snk>>,
}

impl<K, Snk: EventSink + 'static> HeldTicket<K, Snk> {
    /// Asks the throttle in `shared` to admit a request, its rejection
    /// probability scaled by `percent` (100: as configured).
    fn admit(shared: &Arc<Shared<K, Snk>>, percent: u32) -> Result<Self, Rejection> {
        let now = shared.clock.now();
        let throttle: *const Throttle<Snk> = &shared.throttle;
        // SAFETY: the throttle lives inside the `Arc` allocation, which does
        // not move and stays alive while any clone of the `Arc` does; the
        // clone stored beside the ticket below outlives the ticket (it is
        // dropped after it, and `report` consumes the ticket while holding
        // it). The `'static` reference never leaves this type: the ticket is
        // private and only consumed by `report`.
        let throttle: &'static Throttle<Snk> = unsafe { &*throttle };
        let ticket = throttle
            .try_admit_scaled(now, percent)
            .map_err(Rejection::from)?;
        Ok(HeldTicket {
            ticket,
            shared: Arc::clone(shared),
        })
    }

    /// Tells the throttle how the backend answered.
    fn report<Res, E>(self, result: &Result<Res, E>) -> Outcome
    where
        K: Classify<Res, E>,
    {
        let HeldTicket { ticket, shared } = self;
        let now = shared.clock.now();
        let outcome = shared.classifier.classify(result);
        match outcome {
            Outcome::Success | Outcome::Ignored => ticket.accepted(now),
            Outcome::Failure => ticket.refused(now),
        }
        report_call(
            shared.throttle.sink(),
            shared.throttle.source_id(),
            now,
            outcome,
        );
        drop(shared);
        outcome
    }
}

/// A tower [`Layer`] putting a client-side [`Throttle`] in front of a
/// service. See the [module documentation](self).
///
/// Every service made by one layer value shares the throttle, behind one
/// `Arc`.
pub struct ThrottleLayer<K = DefaultClassifier, Snk: EventSink = NoSink> {
    shared: Arc<Shared<K, Snk>>,
}

impl<K, Snk: EventSink> Clone for ThrottleLayer<K, Snk> {
    fn clone(&self) -> Self {
        ThrottleLayer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K, Snk: EventSink> fmt::Debug for ThrottleLayer<K, Snk> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottleLayer")
            .field("throttle", &self.shared.throttle)
            .finish_non_exhaustive()
    }
}

impl<Snk: EventSink> ThrottleLayer<DefaultClassifier, Snk> {
    /// A layer throttling through `throttle`, counting `Err` as refused, on a
    /// [`TokioClock`] made now.
    pub fn new(throttle: Throttle<Snk>) -> Self {
        Self::with_classifier(throttle, DefaultClassifier, TokioClock::new())
    }
}

impl<K, Snk: EventSink> ThrottleLayer<K, Snk> {
    /// A layer throttling through `throttle`, judging answers with
    /// `classifier`, on `clock`.
    pub fn with_classifier(throttle: Throttle<Snk>, classifier: K, clock: TokioClock) -> Self {
        ThrottleLayer {
            shared: Arc::new(Shared {
                throttle,
                classifier,
                clock,
            }),
        }
    }

    /// The throttle, shared by every service this layer made.
    pub fn throttle(&self) -> &Throttle<Snk> {
        &self.shared.throttle
    }
}

impl<S, K, Snk: EventSink> Layer<S> for ThrottleLayer<K, Snk> {
    type Service = ThrottleService<S, K, Snk>;

    fn layer(&self, inner: S) -> Self::Service {
        ThrottleService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// A service behind a client-side throttle. Made by [`ThrottleLayer`].
pub struct ThrottleService<S, K = DefaultClassifier, Snk: EventSink = NoSink> {
    inner: S,
    shared: Arc<Shared<K, Snk>>,
}

impl<S: Clone, K, Snk: EventSink> Clone for ThrottleService<S, K, Snk> {
    fn clone(&self) -> Self {
        ThrottleService {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, K, Snk: EventSink> fmt::Debug for ThrottleService<S, K, Snk> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottleService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, K, Snk: EventSink> ThrottleService<S, K, Snk> {
    /// The throttle, shared with every clone of this service.
    pub fn throttle(&self) -> &Throttle<Snk> {
        &self.shared.throttle
    }
}

impl<S, Req, K, Snk> Service<Req> for ThrottleService<S, K, Snk>
where
    S: Service<Req>,
    K: Classify<S::Response, S::Error>,
    Snk: EventSink + 'static,
{
    type Response = S::Response;
    type Error = TenlivesError<S::Error>;
    type Future = ThrottleFuture<S::Future, K, Snk>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(TenlivesError::Inner)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        self.call_scaled(req, 100)
    }
}

impl<S, K, Snk: EventSink + 'static> ThrottleService<S, K, Snk> {
    /// `call`, the rejection probability scaled by `percent` (request
    /// criticality: `crate::criticality::CriticalityThrottleLayer`).
    #[inline]
    pub(crate) fn call_scaled<Req>(
        &mut self,
        req: Req,
        percent: u32,
    ) -> ThrottleFuture<S::Future, K, Snk>
    where
        S: Service<Req>,
    {
        let span = call_span!("tenlives.throttle", "throttle");
        match HeldTicket::admit(&self.shared, percent) {
            Ok(ticket) => {
                span.admitted();
                let inner = span.in_scope(|| self.inner.call(req));
                ThrottleFuture {
                    inner: Some(inner),
                    ticket: Some(ticket),
                    rejection: None,
                    span,
                }
            }
            Err(rejection) => {
                span.rejected(&rejection);
                ThrottleFuture {
                    inner: None,
                    ticket: None,
                    rejection: Some(rejection),
                    span,
                }
            }
        }
    }
}

pin_project! {
    /// The response future of a [`ThrottleService`].
    #[must_use = "futures do nothing unless polled"]
    pub struct ThrottleFuture<F, K, Snk>
    where
        Snk: EventSink,
        Snk: 'static,
    {
        #[pin]
        inner: Option<F>,
        ticket: Option<HeldTicket<K, Snk>>,
        rejection: Option<Rejection>,
        span: CallSpan,
    }
}

impl<F, K, Snk: EventSink + 'static> fmt::Debug for ThrottleFuture<F, K, Snk> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottleFuture")
            .field("admitted", &self.ticket.is_some())
            .field("rejection", &self.rejection)
            .finish_non_exhaustive()
    }
}

impl<F, Res, E, K, Snk> Future for ThrottleFuture<F, K, Snk>
where
    F: Future<Output = Result<Res, E>>,
    K: Classify<Res, E>,
    Snk: EventSink + 'static,
{
    type Output = Result<Res, TenlivesError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return take_rejection(this.rejection);
        };
        let _entered = this.span.enter();
        let result = std::task::ready!(inner.poll(cx));
        this.inner.set(None);
        if let Some(ticket) = this.ticket.take() {
            this.span.classified(ticket.report(&result));
        }
        Poll::Ready(result.map_err(TenlivesError::Inner))
    }
}
