//! # tenlives-engine
//!
//! Lock-free resilience primitives that cost nanoseconds, never block, never
//! allocate on the request path, and never read a clock themselves.
//!
//! - [`breaker`]: a circuit breaker (closed, open, half-open, forced open,
//!   disabled, metrics-only) with consecutive-failure, failure-rate and
//!   slow-call-rate rules over count- or time-based sliding windows.
//! - [`bulkhead`]: a limit on concurrent calls (an atomic permit counter
//!   whose limit can change at run time).
//! - `queue` (feature `alloc`): a bounded, fair admission queue in front of a
//!   bulkhead or any permit source: FIFO, round-robin or weighted classes,
//!   overload shedding, deadlines, async waiting without a runtime.
//! - `config_cell` (feature `std`): a configuration cell on epoch
//!   reclamation: lock-free reads, whole-value writes, old values freed once
//!   no reader can see them (`docs/live-config.md`).
//! - `timer` (feature `alloc`): a shared, lock-free timer wheel: fixed
//!   entries, cancellation by generation, one driver for many deadlines
//!   (`docs/clocks-and-timers.md`).
//! - [`retry`]: backoff schedules with seedable jitter, and a lock-free retry
//!   budget.
//! - [`snapshot`]: the frame of every primitive's state snapshot
//!   (`save_state` into a caller's buffer, `restore_state` after a restart),
//!   typed errors for damaged or foreign bytes, and the clock rule that
//!   carries deadlines across a change of clock origin (`docs/snapshots.md`).
//! - [`time`]: time as a value ([`time::Timestamp`]), the [`time::Clock`]
//!   trait, a manual clock for tests and a monotonic clock under `std`.
//!
//! The crate is always `#![no_std]`. Features:
//!
//! - `alloc`: heap-owned storage where a primitive offers it.
//! - `std` (default): implies `alloc`; adds [`time::MonotonicClock`],
//!   per-thread stripe assignment and `std::error::Error` impls.
//! - `quanta`: implies `std`; adds the fast clocks `time::TscClock` and
//!   `time::RecentClock` (over the `quanta` crate).
//! - `foldhash`: implies `std`; the keyed rate limiter's default hasher
//!   (`rate::DefaultHashBuilder`) becomes foldhash instead of `std`'s
//!   SipHash.
//!
//! Invariants, and the tests that check each, are listed in
//! `docs/guarantees.md`.
#![no_std]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(any(feature = "std", test, tenlives_loom))]
extern crate std;

pub mod adaptive;
pub mod breaker;
pub mod bulkhead;
#[cfg(feature = "std")]
pub mod config_cell;
mod divide;
mod error;
pub mod events;
pub mod latency;
mod live;
#[cfg(feature = "alloc")]
pub mod queue;
pub mod rate;
pub mod retry;
mod rng;
pub mod sharded;
pub mod snapshot;
mod stripe;
mod sync;
pub mod throttle;
pub mod time;
#[cfg(feature = "alloc")]
pub mod timer;

pub use error::ConfigError;

/// The README's examples, compiled and run as doc tests (its breaker example
/// uses `TscClock`: with feature `quanta`, which `cargo test --workspace`
/// turns on through the tokio adapter).
#[cfg(all(doctest, feature = "quanta"))]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

/// The crate's README (its page on crates.io), compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct CrateReadmeDoctests;

/// `docs/events.md`'s example, compiled and run as a doc test.
#[cfg(all(doctest, feature = "alloc"))]
#[doc = include_str!("../../docs/events.md")]
struct EventsDoctests;
