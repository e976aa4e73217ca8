//! The circuit breaker as a tower layer.
//!
//! [`CircuitBreakerLayer`] admits each request through a
//! [`CircuitBreaker`] when it is called, and reports the classified outcome
//! when the response arrives, with the call's latency measured on a
//! [`TokioClock`](crate::TokioClock) (for the breaker's slow-call rule). An
//! open breaker rejects at once with [`TenlivesError::Rejected`](crate::TenlivesError::Rejected), saying when
//! to retry; see [the admission module](crate::admission) for the
//! `poll_ready` choice and what happens on drop and panic.
//!
//! ```
//! use std::time::Duration;
//! use tenlives_engine::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
//! use tenlives_tokio::{CircuitBreakerLayer, TenlivesError};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tenlives_engine::ConfigError> {
//! let config = BreakerConfig::builder()
//!     .without_failure_rate()
//!     .consecutive_failures(2)
//!     .open_duration(Duration::from_secs(10))
//!     .build()?;
//! let layer = CircuitBreakerLayer::new(CircuitBreaker::new(config));
//! let mut svc = layer.layer(service_fn(|_: ()| async { Err::<(), _>("down") }));
//!
//! for _ in 0..2 {
//!     let _ = svc.ready().await.unwrap().call(()).await;
//! }
//! assert_eq!(layer.policy().state(), BreakerState::Open);
//! let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
//! assert!(err.is_rejected());
//! assert_eq!(err.retry_after(), Some(Duration::from_secs(10)));
//! # Ok(())
//! # }
//! ```

use tenlives_engine::breaker::{CircuitBreaker, Outcome, RawPermit};
use tenlives_engine::events::{EventSink, NoSink};
use tenlives_engine::time::Timestamp;

use crate::admission::{Admission, AdmissionLayer, AdmissionService};
use crate::classify::DefaultClassifier;
use crate::error::Rejection;
use crate::outcome::report_call;

impl<Snk: EventSink> Admission for CircuitBreaker<Snk> {
    type Token = RawPermit;
    const NAME: &'static str = "circuit_breaker";

    /// Always: an open breaker needs the time to know whether its open period
    /// is over, and a closed one times calls for its slow-call rule (a
    /// closed one without that rule reads none: see `admit_with`).
    #[inline]
    fn needs_time(&self) -> bool {
        true
    }

    /// Only where the engine reads it: a success that no rule times needs
    /// no reading.
    #[inline]
    fn needs_time_to_complete(&self, token: &RawPermit, outcome: Outcome) -> bool {
        self.record_needs_time(token, outcome)
    }

    #[inline]
    fn is_probe(&self, token: &RawPermit) -> bool {
        token.is_probe()
    }

    #[inline]
    fn admit(&self, now: Timestamp) -> Result<RawPermit, Rejection> {
        self.try_acquire_raw(now).map_err(Rejection::from)
    }

    /// Reads the time only where the breaker decides with it: not for a
    /// closed breaker without a slow-call rule (the permit carries its own
    /// admission time when a rule measures the call).
    #[inline]
    fn admit_with(
        &self,
        now: impl FnOnce() -> Timestamp,
    ) -> Result<(RawPermit, Option<Timestamp>), Rejection> {
        self.try_acquire_raw_with(now)
            .map(|permit| (permit, None))
            .map_err(Rejection::from)
    }

    #[inline]
    fn complete(
        &self,
        token: RawPermit,
        outcome: Outcome,
        _admitted_at: Timestamp,
        now: Timestamp,
    ) {
        // The permit carries its own admission time for the slow-call rule.
        self.record(token, outcome, now);
        report_call(self.sink(), self.source_id(), now, outcome);
    }

    #[inline]
    fn release(&self, token: RawPermit) {
        CircuitBreaker::release(self, token);
    }
}

/// A layer putting a [`CircuitBreaker`] in front of a service. See the
/// [module documentation](self) and [`AdmissionLayer`].
pub type CircuitBreakerLayer<K = DefaultClassifier, Snk = NoSink> =
    AdmissionLayer<CircuitBreaker<Snk>, K>;

/// A service behind a [`CircuitBreaker`]. Made by [`CircuitBreakerLayer`].
pub type CircuitBreakerService<S, K = DefaultClassifier, Snk = NoSink> =
    AdmissionService<S, CircuitBreaker<Snk>, K>;
