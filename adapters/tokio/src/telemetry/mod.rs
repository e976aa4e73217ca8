//! Telemetry: from the engine's event ring to `tracing` and Prometheus.
//!
//! The engine's primitives report what they do as small events into an
//! [`EventRing`](tenlives_engine::events::EventRing), without blocking or
//! allocating. This module reads that ring off the request path:
//!
//! - a [`SourceRegistry`] names the policy behind each event `source` id;
//! - a [`Drain`] reads the ring and, for every event, emits a `tracing`
//!   event (target `tenlives`; `WARN` when a breaker opens, `INFO` for other
//!   transitions and limit changes, `DEBUG` for per-request events) and
//!   updates the [`Exporter`]'s Prometheus metrics; events the ring
//!   overwrote before the drain got to them are counted in
//!   `tenlives_events_lost_total` and logged at `WARN`;
//! - [`spawn`] runs a drain as a tokio task that polls every 10 ms (or as
//!   [`DrainConfig`] says) until stopped or until the ring is orphaned;
//!   [`Drain::drain_once`] drains synchronously, for tests and other runtimes;
//! - the [`exposition`] functions render the metrics for a scrape.
//!
//! Metric names, labels, the breaker state codes and lost-event accounting
//! are described in `docs/telemetry.md`.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker};
//! use tenlives_engine::events::EventRing;
//! use tenlives_engine::time::{Clock, ManualClock};
//! use tenlives_tokio::telemetry::{self, DrainConfig, Exporter, PolicyKind, SourceRegistry};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Once, at set-up: a ring, the names of the policies writing to it, the
//! // exporter, and the drain task.
//! let ring = Arc::new(EventRing::with_capacity(1024)?);
//! let sources = SourceRegistry::builder()
//!     .policy(1, "inventory", PolicyKind::CircuitBreaker)
//!     .build()?;
//! let exporter = Arc::new(Exporter::new(sources));
//! let drain = telemetry::spawn(ring.clone(), exporter.clone(), DrainConfig::default());
//!
//! let clock = ManualClock::new();
//! let breaker = CircuitBreaker::with_sink(
//!     BreakerConfig::builder()
//!         .without_failure_rate()
//!         .consecutive_failures(2)
//!         .open_duration(Duration::from_secs(5))
//!         .build()?,
//!     ring.clone(),
//!     1,
//! );
//! for _ in 0..2 {
//!     breaker.try_acquire(clock.now())?.failure(clock.now());
//! }
//! assert!(breaker.try_acquire(clock.now()).is_err());
//!
//! let counts = drain.stop().await?; // a last pass, then the task ends
//! assert_eq!((counts.events, counts.lost), (2, 0)); // opened, rejected
//! let text = exporter.render_text()?;
//! assert!(text.contains("tenlives_breaker_state{policy=\"inventory\"} 1")); // 1 = open
//! assert!(text.contains(
//!     "tenlives_breaker_trips_total{policy=\"inventory\",reason=\"consecutive_failures\"} 1"
//! ));
//! # Ok(())
//! # }
//! ```
//!
//! Call outcomes, which the layers report by themselves (and code calling
//! the engine directly with [`report_outcome`]), and the policies' refusals
//! make `tenlives_calls_total`, the good and bad calls of
//! each protected path that error budgets are computed from. With the cargo
//! feature `otel`, the `otel` module mirrors every metric into OpenTelemetry
//! instruments and exports configuration values as gauges.

mod decode;
mod drain;
mod exporter;
pub mod exposition;
#[cfg(feature = "otel")]
pub mod otel;
mod otel_sample;
mod sources;
mod trace;

pub use crate::outcome::{CALL_FAILED, CALL_SUCCEEDED, Outcome, report_outcome};
pub use drain::{Drain, DrainConfig, DrainCounts, DrainHandle, spawn};
pub use exporter::{Exporter, LateSources};
pub use sources::{Policy, PolicyKind, SourceError, SourceRegistry, SourceRegistryBuilder};
pub use trace::TARGET;
