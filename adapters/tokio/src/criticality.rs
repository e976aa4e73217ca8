//! Request criticality: critical, default or sheddable, and an admission
//! queue that sheds the lower ones first.
//!
//! A request's [`Criticality`] comes from a function of the request
//! ([`ByCriticality`]), or, for HTTP requests (feature `http`), from a
//! `Criticality` request extension or a header (`FromRequest`: the values
//! `critical`, `default`, `sheddable`, and gRPC's `CRITICAL_PLUS`,
//! `CRITICAL`, `SHEDDABLE_PLUS`, `SHEDDABLE`; anything else is `Default`).
//!
//! [`queue_config`] makes a weighted admission queue with one class per
//! criticality (class 0 critical, 1 default, 2 sheddable) whose overload
//! policy is [`Overload::ShedLowestPriority`]: when the queue is full, the
//! newest waiter of the lowest class present is shed (sheddable, then
//! default), and permits go to the classes in proportion to their weights,
//! so under overload critical requests keep their success rate and
//! sheddable ones pay (`tests/criticality.rs` shows it).
//!
//! ```
//! use std::time::Duration;
//! use tenlives_engine::bulkhead::Bulkhead;
//! use tenlives_engine::queue::AdmissionQueue;
//! use tenlives_tokio::criticality::{queue_config, ByCriticality, Criticality};
//! use tenlives_tokio::AdmissionQueueLayer;
//!
//! # fn main() -> Result<(), tenlives_engine::ConfigError> {
//! let queue = AdmissionQueue::new(Bulkhead::new(8)?, queue_config(64, [16, 4, 1])?);
//! let layer = AdmissionQueueLayer::new(queue, Duration::from_millis(50))
//!     .class_by(ByCriticality(|req: &(Criticality, u32)| req.0));
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```
//!
//! [`CriticalityThrottleLayer`] puts a client-side throttle in front of a
//! service with its rejection probability scaled per criticality (by
//! default critical ×0.5, default ×1, sheddable ×2, capped at 1): when the
//! backend refuses, sheddable requests are held back locally first.

use std::fmt;
use std::task::{Context, Poll};

use tenlives_engine::ConfigError;
use tenlives_engine::events::EventSink;
use tenlives_engine::queue::{Overload, QueueConfig};
use tower_layer::Layer;
use tower_service::Service;

use crate::classify::Classify;
use crate::error::TenlivesError;
use crate::queue::QueueClass;
use crate::throttle::{ThrottleFuture, ThrottleLayer, ThrottleService};

/// How much a request matters when there is not room for all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Criticality {
    /// Served first; shed last.
    Critical,
    /// The usual request.
    #[default]
    Default,
    /// Shed first: prefetches, batch work, retries of best-effort calls.
    Sheddable,
}

impl Criticality {
    /// The class of [`queue_config`]'s queue: 0, 1 or 2.
    #[inline]
    pub fn class(self) -> u16 {
        match self {
            Criticality::Critical => 0,
            Criticality::Default => 1,
            Criticality::Sheddable => 2,
        }
    }

    /// Parses a header value (see the [module documentation](self)).
    pub fn parse(value: &[u8]) -> Option<Self> {
        Some(match value {
            b"critical" | b"CRITICAL" | b"CRITICAL_PLUS" => Criticality::Critical,
            b"default" | b"DEFAULT" => Criticality::Default,
            b"sheddable" | b"SHEDDABLE" | b"SHEDDABLE_PLUS" => Criticality::Sheddable,
            _ => return None,
        })
    }
}

/// A weighted admission queue of `capacity` waiters with one class per
/// criticality, weighted `[critical, default, sheddable]`, shedding the
/// lowest class first when full. The weights must not increase (a class's
/// priority is its weight).
///
/// # Errors
///
/// As [`QueueConfig::weighted`]; [`ConfigError::CapBelowBase`] for weights
/// that increase.
pub fn queue_config(capacity: u32, weights: [u32; 3]) -> Result<QueueConfig, ConfigError> {
    if weights[0] < weights[1] || weights[1] < weights[2] {
        return Err(ConfigError::CapBelowBase { field: "weights" });
    }
    Ok(QueueConfig::weighted(capacity, &weights)?.overload(Overload::ShedLowestPriority))
}

/// The queue class of a request from its criticality, given by `F`.
#[derive(Clone, Copy, Debug)]
pub struct ByCriticality<F>(pub F);

impl<Req, F: Fn(&Req) -> Criticality> QueueClass<Req> for ByCriticality<F> {
    #[inline]
    fn class(&self, req: &Req) -> u16 {
        (self.0)(req).class()
    }
}

/// The criticality of an HTTP request: its `Criticality` extension, or its
/// header (`x-criticality` unless [`FromRequest::header`] says otherwise),
/// or `Default`.
#[cfg(feature = "http")]
#[derive(Clone, Debug)]
pub struct FromRequest {
    header: http::HeaderName,
}

#[cfg(feature = "http")]
impl Default for FromRequest {
    fn default() -> Self {
        FromRequest {
            header: http::HeaderName::from_static("x-criticality"),
        }
    }
}

#[cfg(feature = "http")]
impl FromRequest {
    /// Reads the header `header`.
    pub fn header(header: http::HeaderName) -> Self {
        FromRequest { header }
    }

    /// The criticality of `req`.
    pub fn of<B>(&self, req: &http::Request<B>) -> Criticality {
        if let Some(c) = req.extensions().get::<Criticality>() {
            return *c;
        }
        req.headers()
            .get(&self.header)
            .and_then(|v| Criticality::parse(v.as_bytes()))
            .unwrap_or_default()
    }
}

#[cfg(feature = "http")]
impl<B> QueueClass<http::Request<B>> for FromRequest {
    #[inline]
    fn class(&self, req: &http::Request<B>) -> u16 {
        self.of(req).class()
    }
}

/// The criticality of a request, for [`CriticalityThrottleLayer`].
///
/// Implemented by every closure `Fn(&Req) -> Criticality`, and (feature
/// `http`) by `FromRequest` for HTTP requests.
pub trait CriticalityOf<Req> {
    /// The criticality of `req`.
    fn criticality(&self, req: &Req) -> Criticality;
}

impl<Req, F: Fn(&Req) -> Criticality> CriticalityOf<Req> for F {
    #[inline]
    fn criticality(&self, req: &Req) -> Criticality {
        self(req)
    }
}

#[cfg(feature = "http")]
impl<B> CriticalityOf<http::Request<B>> for FromRequest {
    #[inline]
    fn criticality(&self, req: &http::Request<B>) -> Criticality {
        self.of(req)
    }
}

/// The default scales of [`CriticalityThrottleLayer`], in percent of the
/// throttle's rejection probability: critical, default, sheddable.
pub const DEFAULT_SCALES: [u32; 3] = [50, 100, 200];

/// A [`ThrottleLayer`] whose rejection probability is scaled by each
/// request's criticality. See the [module documentation](self).
pub struct CriticalityThrottleLayer<C, K, Snk: EventSink> {
    throttle: ThrottleLayer<K, Snk>,
    criticality: C,
    scales: [u32; 3],
}

impl<C: Clone, K, Snk: EventSink> Clone for CriticalityThrottleLayer<C, K, Snk> {
    fn clone(&self) -> Self {
        CriticalityThrottleLayer {
            throttle: self.throttle.clone(),
            criticality: self.criticality.clone(),
            scales: self.scales,
        }
    }
}

impl<C, K, Snk: EventSink> fmt::Debug for CriticalityThrottleLayer<C, K, Snk> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CriticalityThrottleLayer")
            .field("throttle", &self.throttle)
            .field("scales", &self.scales)
            .finish_non_exhaustive()
    }
}

impl<C, K, Snk: EventSink> CriticalityThrottleLayer<C, K, Snk> {
    /// `throttle`, its rejection probability scaled by [`DEFAULT_SCALES`]
    /// for the criticality `criticality` gives each request.
    pub fn new(throttle: ThrottleLayer<K, Snk>, criticality: C) -> Self {
        CriticalityThrottleLayer {
            throttle,
            criticality,
            scales: DEFAULT_SCALES,
        }
    }

    /// Scales `[critical, default, sheddable]` in percent (0 never rejects
    /// locally; the result is capped at 1).
    #[must_use]
    pub fn scales(mut self, scales: [u32; 3]) -> Self {
        self.scales = scales;
        self
    }

    /// The throttle layer.
    pub fn throttle(&self) -> &ThrottleLayer<K, Snk> {
        &self.throttle
    }
}

impl<S, C: Clone, K, Snk: EventSink> Layer<S> for CriticalityThrottleLayer<C, K, Snk> {
    type Service = CriticalityThrottle<S, C, K, Snk>;

    fn layer(&self, inner: S) -> Self::Service {
        CriticalityThrottle {
            inner: self.throttle.layer(inner),
            criticality: self.criticality.clone(),
            scales: self.scales,
        }
    }
}

/// A service behind a criticality-scaled throttle. Made by
/// [`CriticalityThrottleLayer`].
pub struct CriticalityThrottle<S, C, K, Snk: EventSink> {
    inner: ThrottleService<S, K, Snk>,
    criticality: C,
    scales: [u32; 3],
}

impl<S: Clone, C: Clone, K, Snk: EventSink> Clone for CriticalityThrottle<S, C, K, Snk> {
    fn clone(&self) -> Self {
        CriticalityThrottle {
            inner: self.inner.clone(),
            criticality: self.criticality.clone(),
            scales: self.scales,
        }
    }
}

impl<S, C, K, Snk: EventSink> fmt::Debug for CriticalityThrottle<S, C, K, Snk> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CriticalityThrottle")
            .field("scales", &self.scales)
            .finish_non_exhaustive()
    }
}

impl<S, Req, C, K, Snk> Service<Req> for CriticalityThrottle<S, C, K, Snk>
where
    S: Service<Req>,
    C: CriticalityOf<Req>,
    K: Classify<S::Response, S::Error>,
    Snk: EventSink + 'static,
{
    type Response = S::Response;
    type Error = TenlivesError<S::Error>;
    type Future = ThrottleFuture<S::Future, K, Snk>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let percent = self.scales[usize::from(self.criticality.criticality(&req).class())];
        self.inner.call_scaled(req, percent)
    }
}
