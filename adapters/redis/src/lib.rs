//! Fleet-wide rate limits over Redis, with the request path local.
//!
//! A quota shared by every instance of a service lives in Redis; each
//! process spends a *lease* of it — a batch of tokens granted by Redis,
//! valid until an expiry — on the request path with atomics and the
//! engine's own [`RateLimiter`](tenlives_engine::rate::RateLimiter), and a
//! background tokio task tops the lease up before it runs out, sized from
//! the process's recent demand and bounded by a maximum share. A request
//! never waits on the network and never allocates.
//!
//! Redis decides each lease atomically with a Lua script on its own clock
//! (`TIME`), with exact GCRA semantics: one token per `T = period / rate`,
//! burst `b`; `n` tokens at `t` pass iff `max(TAT, t) + n·T − t ≤ b·T` (see
//! [`gcra`] for the arithmetic, kept exact in units of `1 / R` µs). Unused
//! tokens go back to Redis when a lease expires and at shutdown.
//!
//! When Redis cannot be reached (every call goes through an engine
//! [`CircuitBreaker`](tenlives_engine::breaker::CircuitBreaker) and a timeout
//! of its own), a typed [`FailurePolicy`] decides: fail open, fail closed, or
//! degraded (the default: spend the last lease, then `quota / expected
//! instances` locally). Every degraded decision is counted (Prometheus
//! counters) and reported as an event; when Redis answers again the limiter
//! recovers by itself.
//!
//! The same leasing gives a fleet-wide concurrency limit,
//! [`FleetSemaphore`]: each process claims permits in Redis with a TTL (so a
//! crashed process's permits come back by themselves) and spends them
//! through an engine [`Bulkhead`](tenlives_engine::bulkhead::Bulkhead).
//!
//! [`KeyedFleetLimiter`] gives one fleet-wide quota per key (per user, per
//! API key), with the memory cap of the engine's keyed table: a lease per
//! key, each key's quota in Redis under a hash-tagged key with a TTL, leases
//! refreshed in batched pipelines and given back when a key is evicted.
//!
//! With feature `futures` the limiters are `tenlives-futures` policies (any
//! executor); with feature `stack` they are `tenlives-tokio` admission
//! stages (the combined `StackLayer`).
//!
//! `docs/redis.md` describes the lease protocol, the bound on what a fleet
//! can over-admit, the cluster key mapping and what is not built yet.
//!
//! ```no_run
//! use std::time::Duration;
//! use tenlives_engine::rate::Quota;
//! use tenlives_redis::{FailurePolicy, FleetConfig, FleetRateLimiter};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = redis::Client::open("redis://127.0.0.1:6379/")?;
//! // 1 000 requests a second for the whole fleet, bursts of 200.
//! let quota = Quota::per_second(1_000)?.with_burst(200)?;
//! let config = FleetConfig::new("checkout-api", quota)
//!     .expected_instances(4)
//!     .policy(FailurePolicy::Degraded)
//!     .refresh_interval(Duration::from_millis(50));
//! let limiter = FleetRateLimiter::start(config, client).await?;
//!
//! match limiter.try_acquire() {
//!     Ok(_) => { /* serve the request */ }
//!     Err(refused) => eprintln!("429: {refused}"),
//! }
//! println!("{:?}", limiter.stats());
//! limiter.shutdown().await; // gives the unspent tokens back
//! # Ok(())
//! # }
//! ```

mod background;
mod config;
#[cfg(feature = "futures")]
pub mod futures;
pub mod gcra;
pub mod key;
pub mod keyed;
pub mod keyed_tower;
mod keyed_word;
mod lease;
mod limiter;
mod reports;
pub mod semaphore;
pub mod sim;
#[cfg(feature = "stack")]
pub mod stack;
pub mod tower;

pub use config::{FailurePolicy, FleetConfig, FleetError, Ring};
pub use keyed::{
    ForKey, KeyedAdmitted, KeyedFleetConfig, KeyedFleetLimiter, KeyedFleetStats, KeyedRefused,
};
pub use keyed_tower::{
    KeyedFleetRateLimit, KeyedFleetRateLimitLayer, KeyedFleetRejected, KeyedFleetResponseFuture,
};
pub use limiter::{
    Admitted, FleetRateLimiter, FleetStats, REDIS_DEGRADED, REDIS_RECOVERED, REDIS_UNAVAILABLE,
    Refused,
};
pub use semaphore::{
    FleetPermit, FleetSemaphore, OwnedFleetPermit, SemaphoreConfig, SemaphoreRefused,
    SemaphoreStats,
};
pub use tower::{
    FleetConcurrencyFuture, FleetConcurrencyLimit, FleetConcurrencyLimitLayer, FleetLimitError,
    FleetRateLimit, FleetRateLimitLayer, FleetRejected, FleetResponseFuture, SemaphoreRejected,
};

/// The crate's README (its page on crates.io), compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct CrateReadmeDoctests;
