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
//! The throttle does not read criticality yet.

use tenlives_engine::ConfigError;
use tenlives_engine::queue::{Overload, QueueConfig};

use crate::queue::QueueClass;

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
