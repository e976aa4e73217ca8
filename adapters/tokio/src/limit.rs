//! Concurrency limits as tower layers: fixed ([`Bulkhead`]) and adaptive
//! ([`AdaptiveLimiter`]).
//!
//! Unlike tower's `ConcurrencyLimit`, which makes callers wait in
//! `poll_ready` for a permit, these reject at once when the limit is reached
//! ([`RejectionReason::ConcurrencyLimit`](crate::RejectionReason)): a
//! bulkhead sheds load instead of queueing it. The permit is taken in `call`
//! and lives in the response future until the response arrives or the future
//! is dropped.
//!
//! The adaptive limit is fed by the calls it admits: a call classified
//! [`Outcome::Success`] reports its round-trip time (measured on a
//! [`TokioClock`](crate::TokioClock)); one classified [`Outcome::Failure`]
//! reports a drop, the congestion signal the engine's algorithms back off
//! on; [`Outcome::Ignored`] and a dropped future (cancellation, panic) give
//! the permit back without a sample, as the engine expects. Inside the
//! combined [`StackLayer`](crate::StackLayer), a timeout also reports a drop.
//!
//! ```
//! use std::time::Duration;
//! use tenlives_engine::adaptive::{AdaptiveLimiter, Aimd, WindowConfig};
//! use tenlives_engine::time::Timestamp;
//! use tenlives_tokio::AdaptiveLimitLayer;
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tenlives_engine::ConfigError> {
//! let aimd = Aimd::builder().limits(1, 4, 64).latency_threshold(Duration::from_millis(50)).build()?;
//! let limiter = AdaptiveLimiter::new(aimd, WindowConfig::new(Duration::from_millis(100), 1)?, Timestamp::ZERO);
//! let layer = AdaptiveLimitLayer::new(limiter);
//! let mut svc = layer.layer(service_fn(|_: ()| async {
//!     tokio::time::sleep(Duration::from_millis(10)).await; // a fast dependency
//!     Ok::<_, std::io::Error>(())
//! }));
//! for _ in 0..20 {
//!     svc.ready().await.unwrap().call(()).await.unwrap();
//! }
//! assert_eq!(layer.policy().in_flight(), 0);
//! # Ok(())
//! # }
//! ```

use tenlives_engine::adaptive::{AdaptiveLimiter, LimitAlgorithm};
use tenlives_engine::breaker::Outcome;
use tenlives_engine::bulkhead::{Bulkhead, RawBulkheadPermit};
use tenlives_engine::events::{EventSink, NoSink};
use tenlives_engine::sharded::{RawShardedPermit, ShardedBulkhead};
use tenlives_engine::time::Timestamp;

use crate::admission::{Admission, AdmissionLayer, AdmissionService};
use crate::classify::DefaultClassifier;
use crate::error::Rejection;
use crate::outcome::report_call;

/// The sharded limit: each thread takes permits from its own shard, so two
/// cores admitting at once write different lines (see
/// [`tenlives_engine::sharded`] for its precision).
impl Admission for ShardedBulkhead {
    type Token = RawShardedPermit;

    /// Never: a fixed limit counts permits, not time.
    #[inline]
    fn needs_time(&self) -> bool {
        false
    }

    #[inline]
    fn admit(&self, _now: Timestamp) -> Result<RawShardedPermit, Rejection> {
        self.try_acquire_raw().map_err(Rejection::from)
    }

    #[inline]
    fn complete(
        &self,
        token: RawShardedPermit,
        _outcome: Outcome,
        _admitted_at: Timestamp,
        _now: Timestamp,
    ) {
        ShardedBulkhead::release(self, token);
    }

    #[inline]
    fn release(&self, token: RawShardedPermit) {
        ShardedBulkhead::release(self, token);
    }
}

impl<Snk: EventSink> Admission for Bulkhead<Snk> {
    type Token = RawBulkheadPermit;
    const NAME: &'static str = "concurrency_limit";

    /// Never: a fixed limit counts permits, not time.
    #[inline]
    fn needs_time(&self) -> bool {
        false
    }

    #[inline]
    fn admit(&self, _now: Timestamp) -> Result<RawBulkheadPermit, Rejection> {
        self.try_acquire_raw().map_err(Rejection::from)
    }

    #[inline]
    fn complete(
        &self,
        token: RawBulkheadPermit,
        outcome: Outcome,
        _admitted_at: Timestamp,
        now: Timestamp,
    ) {
        Bulkhead::release(self, token);
        report_call(self.sink(), self.source_id(), now, outcome);
    }

    #[inline]
    fn release(&self, token: RawBulkheadPermit) {
        Bulkhead::release(self, token);
    }
}

impl<A: LimitAlgorithm, Snk: EventSink> Admission for AdaptiveLimiter<A, Snk> {
    type Token = RawBulkheadPermit;
    const NAME: &'static str = "adaptive_limit";

    /// Always: round-trip times feed the limit.
    #[inline]
    fn needs_time(&self) -> bool {
        true
    }

    #[inline]
    fn admit(&self, _now: Timestamp) -> Result<RawBulkheadPermit, Rejection> {
        // The admission time is kept by the caller and comes back in
        // `complete`; the bulkhead underneath decides.
        self.bulkhead().try_acquire_raw().map_err(Rejection::from)
    }

    #[inline]
    fn complete(
        &self,
        token: RawBulkheadPermit,
        outcome: Outcome,
        admitted_at: Timestamp,
        now: Timestamp,
    ) {
        match outcome {
            Outcome::Success => {
                let rtt = now.as_nanos().saturating_sub(admitted_at.as_nanos());
                self.complete_raw(token, Some(rtt), now);
            }
            Outcome::Failure => self.complete_raw(token, None, now),
            Outcome::Ignored => self.bulkhead().release(token),
        }
        let bulkhead = self.bulkhead();
        report_call(bulkhead.sink(), bulkhead.source_id(), now, outcome);
    }

    #[inline]
    fn release(&self, token: RawBulkheadPermit) {
        self.bulkhead().release(token);
    }
}

/// A layer putting a fixed concurrency limit (a [`Bulkhead`]) in front of a
/// service. See the [module documentation](self) and [`AdmissionLayer`].
pub type ConcurrencyLimitLayer<K = DefaultClassifier, Snk = NoSink> =
    AdmissionLayer<Bulkhead<Snk>, K>;

/// A service behind a [`Bulkhead`]. Made by [`ConcurrencyLimitLayer`].
pub type ConcurrencyLimitService<S, K = DefaultClassifier, Snk = NoSink> =
    AdmissionService<S, Bulkhead<Snk>, K>;

/// A layer putting an adaptive concurrency limit (an [`AdaptiveLimiter`]) in
/// front of a service. See the [module documentation](self).
pub type AdaptiveLimitLayer<A, K = DefaultClassifier, Snk = NoSink> =
    AdmissionLayer<AdaptiveLimiter<A, Snk>, K>;

/// A service behind an [`AdaptiveLimiter`]. Made by [`AdaptiveLimitLayer`].
pub type AdaptiveLimitService<S, A, K = DefaultClassifier, Snk = NoSink> =
    AdmissionService<S, AdaptiveLimiter<A, Snk>, K>;
