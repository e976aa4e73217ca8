//! # tenlives-tokio
//!
//! tokio and tower bindings for the tenlives engine: a tower layer for every
//! policy, one combined layer for the usual stack, and the engine on tokio's
//! clock.
//!
//! | layer | what it does | error |
//! |---|---|---|
//! | [`StackLayer`] | timeout, retry, circuit breaker and concurrency limit in one layer, one service and one future | [`TenlivesError<E>`] |
//! | [`CircuitBreakerLayer`] | admits through a `CircuitBreaker`, reports classified outcomes and latency | [`TenlivesError<E>`] |
//! | [`ConcurrencyLimitLayer`] | a fixed limit on calls in flight (`Bulkhead`): rejects when full | [`TenlivesError<E>`] |
//! | [`AdaptiveLimitLayer`] | a limit that follows latency (`AdaptiveLimiter`) | [`TenlivesError<E>`] |
//! | [`AdmissionQueueLayer`] | waits (bounded, fair) for a permit in an `AdmissionQueue` instead of rejecting | [`TenlivesError<E>`] |
//! | [`ThrottleLayer`] | client-side throttling (`Throttle`) | [`TenlivesError<E>`] |
//! | [`TimeoutLayer`] | fails a call that takes too long | [`TenlivesError<E>`] |
//! | [`RetryLayer`] | retries with backoff, within a retry budget | `E` |
//! | [`FaultLayer`] | injects latency, errors and dropped responses, from a seed | [`TenlivesError<E>`] or `E` |
//! | [`HedgeLayer`] | hedges slow requests, the hedges paid from the retry budget | `E` |
//! | [`FallbackLayer`] | answers chosen failures with a value or another service | the wrapped service's |
//! | `DeadlineLayer` (feature `http`) | keeps the caller's deadline, refuses what cannot finish, forwards what is left | [`TenlivesError<E>`] |
//! | [`CoalesceLayer`] | concurrent requests with equal keys share one call (single flight) | [`CoalesceError<E>`] |
//! | [`OutlierDetector`] / [`Ejectable`] | per-endpoint breakers; ejected endpoints are not ready (with tower's balancers, feature `balance`) | [`TenlivesError<E>`] |
//! | [`IdempotencyLayer`] | duplicates of a keyed request wait for the call in flight or get its stored response (TTL, bounded) | [`IdempotencyError<E>`] |
//! | `cache::CacheLayer` | answers from a moka response cache: TTL, tags, a byte budget (feature `cache`) | `E` |
//!
//! Common to all of them:
//!
//! - **Named futures, nothing boxed.** Each service's response future is a
//!   named type holding the wrapped call, the policy's token and (for timeouts
//!   and retries) a `tokio::time::Sleep`. A request allocates nothing and
//!   clones at most one `Arc` (tested with a counting allocator).
//! - **Admission in `call`.** `poll_ready` only forwards to the wrapped
//!   service; policies admit or reject in `call`, so a service polled ready
//!   and never called holds nothing, and a rejection says why and when to
//!   retry ([`TenlivesError::retry_after`], for an HTTP `Retry-After`).
//! - **Release on drop and panic.** A permit or probe slot has an owner that
//!   releases it from the moment it is taken: a response future dropped
//!   mid-flight (cancelled, or unwound by a panic), a wrapped service whose
//!   `call` panics, and a classifier that panics all give it back without
//!   reporting an outcome, and the panic reaches the caller.
//! - **Outcomes are classified** by a [`Classify`]: `Ok`/`Err` by default, or
//!   any closure over the wrapped service's `Result` (say, HTTP 5xx is a
//!   failure and 4xx a success).
//! - **Time comes from [`TokioClock`]**, which follows tokio's paused test
//!   clock, so every behaviour is deterministic under
//!   `#[tokio::test(start_paused = true)]`.
//!
//! `docs/tower.md` in the repository describes the layers, the `poll_ready`
//! choice, the drop and panic guarantees and the measured costs.
//!
//! ```
//! use std::time::Duration;
//! use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker, Outcome};
//! use tenlives_engine::bulkhead::Bulkhead;
//! use tenlives_engine::retry::{Backoff, RetryBudget, RetryBudgetConfig};
//! use tenlives_tokio::{RetryPolicy, StackLayer, TenlivesError};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! #[derive(Debug)]
//! struct Response { status: u16 }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tenlives_engine::ConfigError> {
//! let layer = StackLayer::builder()
//!     .timeout(Duration::from_secs(1))
//!     .retry(
//!         RetryPolicy::new(
//!             Backoff::exponential(Duration::from_millis(20), 2.0, Duration::from_millis(200))?.with_max_retries(2),
//!             RetryBudget::new(RetryBudgetConfig::default()),
//!         )
//!         // Retry what never reached the dependency, and 503s.
//!         .retry_if(|r: &Result<Response, TenlivesError<std::io::Error>>| match r {
//!             Ok(resp) => resp.status == 503,
//!             Err(e) => e.is_rejected(),
//!         }),
//!     )
//!     .circuit_breaker(CircuitBreaker::new(
//!         BreakerConfig::builder().without_failure_rate().consecutive_failures(3).build()?,
//!     ))
//!     .concurrency_limit(Bulkhead::new(100)?)
//!     // 5xx counts against the dependency; 4xx does not.
//!     .classify(|r: &Result<Response, std::io::Error>| match r {
//!         Ok(resp) if resp.status >= 500 => Outcome::Failure,
//!         Ok(_) => Outcome::Success,
//!         Err(_) => Outcome::Failure,
//!     })
//!     .build();
//!
//! let mut svc = layer.layer(service_fn(|_: ()| async { Ok::<_, std::io::Error>(Response { status: 503 }) }));
//! let resp = svc.ready().await.unwrap().call(()).await.unwrap();
//! assert_eq!(resp.status, 503); // three attempts, all 503: the last is returned
//! let breaker = layer.policies().breaker().unwrap();
//! let err = svc.ready().await.unwrap().call(()).await.unwrap_err(); // three failures opened it
//! assert!(err.is_rejected());
//! assert_eq!(err.retry_after(), breaker.snapshot(layer.policies().clock().now()).retry_after);
//! # Ok(())
//! # }
//! # use tenlives_engine::time::Clock;
//! ```
//!
//! [`TokioClock`] on its own gives the engine tokio's clock:
//!
//! ```
//! use std::time::Duration;
//! use tenlives_engine::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
//! use tenlives_engine::time::Clock;
//! use tenlives_tokio::TokioClock;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let clock = TokioClock::new();
//! let breaker = CircuitBreaker::new(
//!     BreakerConfig::builder().consecutive_failures(1).open_duration(Duration::from_secs(30)).build().unwrap(),
//! );
//! breaker.try_acquire(clock.now()).unwrap().failure(clock.now());
//! tokio::time::sleep(Duration::from_secs(10)).await; // instant under a paused clock
//! let rejected = breaker.try_acquire(clock.now()).unwrap_err();
//! assert_eq!(rejected.retry_after(), Some(Duration::from_secs(20)));
//! # }
//! ```
#![deny(missing_docs)]

#[cfg(feature = "telemetry")]
pub mod telemetry;

pub mod admission;
pub mod breaker;
#[cfg(feature = "cache")]
pub mod cache;
pub mod classify;
mod clock;
pub mod coalesce;
pub mod criticality;
#[cfg(feature = "http")]
pub mod deadline;
pub mod eject;
pub mod error;
pub mod fallback;
pub mod fault;
#[cfg(feature = "http")]
pub mod headers;
pub mod hedge;
pub mod idempotency;
pub mod limit;
mod outcome;
pub mod queue;
pub mod rate;
pub mod retry;
pub mod span;
pub mod stack;
pub mod throttle;
pub mod timeout;
pub mod wheel;

pub use admission::{Admission, AdmissionFuture, AdmissionLayer, AdmissionService};
pub use breaker::{CircuitBreakerLayer, CircuitBreakerService};
pub use classify::{Classify, DefaultClassifier};
pub use clock::TokioClock;
pub use coalesce::{CoalesceError, CoalesceFuture, CoalesceKey, CoalesceLayer, CoalesceService};
#[cfg(feature = "balance")]
pub use eject::EjectDiscover;
pub use eject::{EjectFuture, Ejectable, EjectionConfig, EjectionStats, OutlierDetector, RateRule};
pub use error::{InjectedFault, Rejection, RejectionReason, TenlivesError};
pub use fallback::{FallbackFuture, FallbackLayer, WithFallback};
pub use fault::{FaultConfig, FaultFuture, FaultInjection, FaultLayer};
pub use hedge::{Hedge, HedgeFuture, HedgeLayer, HedgePolicy};
pub use idempotency::{
    Completed, CompletionLog, IdempotencyConfig, IdempotencyError, IdempotencyLayer,
    IdempotencyService,
};
pub use limit::{
    AdaptiveLimitLayer, AdaptiveLimitService, ConcurrencyLimitLayer, ConcurrencyLimitService,
};
pub use queue::{
    AdmissionQueueFuture, AdmissionQueueLayer, AdmissionQueueService, OneClass, QueueClass,
};
pub use rate::{
    KeyedRateLimitFuture, KeyedRateLimitLayer, KeyedRateLimitService, RateLimitLayer,
    RateLimitService,
};
pub use retry::{
    NoRetry, Retry, RetryClones, RetryFuture, RetryLayer, RetryOnErr, RetryPolicy, RetryStage,
    ShouldRetry,
};
pub use stack::{
    DefaultAdmission, MAX_HOLD_CAP, Policies, Stack, StackBuilder, StackFuture, StackLayer,
};
pub use throttle::{ThrottleFuture, ThrottleLayer, ThrottleService};
pub use timeout::{Timeout, TimeoutFuture, TimeoutLayer};
pub use wheel::Timers;

/// The crate README's example, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct CrateReadmeDoctests;

/// `docs/calls-across-hosts.md`'s examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/calls-across-hosts.md")]
struct CallsAcrossHostsDoctests;
