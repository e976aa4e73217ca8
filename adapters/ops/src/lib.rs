//! # tenlives-ops
//!
//! Running tenlives in a service: named policies, configuration files, live
//! changes.
//!
//! - [`Registry`]: named circuit breakers, rate limiters, bulkheads, retry
//!   budgets, throttles and adaptive limits, created on first use from a [`ConfigSet`]
//!   (a default, named configurations, per-instance overrides); keyed
//!   families (per host, per endpoint) under a memory cap that evicts only
//!   idle entries; telemetry source ids and metric labels from names.
//! - [`config`]: TOML (feature `toml`) and YAML (feature `yaml`) files in
//!   the shape of Resilience4j's, every value validated by the engine's
//!   builders, errors with file, line and key path.
//! - `reload` (feature `reload`): a watched file applied live, keeping
//!   every policy's state; a bad file never replaces a good configuration.
//! - State across restarts: [`Registry::save_state`] writes every named
//!   policy's state to one file atomically, [`Persistence`] does it
//!   periodically and on shutdown, [`Registry::restore_state`] brings it
//!   back on start (`docs/snapshots.md`).
//! - [`journal`]: the decision journal, a ring's events appended to
//!   checksummed, rotated segment files, a torn tail cut on open, and a
//!   reader that reports the gaps.
//! - [`replay`]: request traces recorded by a tower layer, replayed in
//!   virtual time against a candidate configuration, and a candidate run
//!   beside the live one as a shadow or given a share of the traffic as a
//!   canary that guardrails promote or roll back.
//! - `admin` (feature `admin`): an axum router to list policies, read and
//!   change configuration, force breakers, change limits, behind bearer
//!   tokens with roles, every change audited.
//!
//! `docs/operations.md` in the repository describes the file format, the
//! reload semantics and what is not done yet.
#![deny(missing_docs)]

#[cfg(feature = "admin")]
pub mod admin;
pub mod config;
pub mod journal;
mod keyed;
mod registry;
#[cfg(feature = "reload")]
pub mod reload;
pub mod replay;

pub use config::{ConfigSet, Format, LoadError};

pub use keyed::{Idle, Keyed, KeyedFull};
pub use registry::{
    Adaptive, Admission, ApplyReport, Breaker, Concurrency, EventTarget, LanedRing, Limiter,
    PersistError, Persistence, Queue, QueueLayer, REGISTRY_SOURCE, Registry, RegistryBuilder,
    RegistryError, RegistrySink, RestoreReport, Retry, Ring, Skipped, Throttler, events,
};
