//! # tenlives-futures
//!
//! Runtime-agnostic futures and streams over the tenlives engine: nothing
//! here needs a particular executor, so the same code runs on tokio, on
//! `futures::executor`, on smol, or on a hand-written embedded executor.
//!
//! - [`guard`] / [`Guarded`]: any future, admitted on its first poll by a
//!   circuit breaker, a bulkhead ([`limit`]), an adaptive limiter or a
//!   client-side throttle (anything that implements [`Admission`]); its
//!   outcome (and, where the policy wants it, its latency) reported when it
//!   completes; its permit released if it is dropped first or panics.
//! - [`Timer`]: sleeping until a [`Timestamp`](tenlives_engine::time::Timestamp),
//!   the one thing the engine cannot do. [`ManualTimer`] (virtual time),
//!   `TokioTimer` (feature `tokio`) and `AsyncIoTimer` (feature `async-io`)
//!   implement it.
//! - [`acquire`]: waits on a timer until a policy ([`TryAdmit`]: a bulkhead,
//!   `n` permits of one, an adaptive limiter, a breaker) admits, or a
//!   deadline passes.
//! - [`WakingSink`] / [`EventStream`]: the engine's event ring as a
//!   `futures_core::Stream`, woken by producers without a lock and without a
//!   lost wake-up.
//!
//! ```
//! use core::time::Duration;
//! use futures::executor::block_on;
//! use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker, Outcome};
//! use tenlives_engine::time::ManualClock;
//! use tenlives_futures::guard;
//!
//! let breaker = CircuitBreaker::new(BreakerConfig::builder().consecutive_failures(2).build()?);
//! let clock = ManualClock::new();
//! let classify = |r: &Result<u32, &str>| if r.is_ok() { Outcome::Success } else { Outcome::Failure };
//!
//! let answer = block_on(guard(&breaker, &clock, classify, async { Ok::<u32, &str>(42) }));
//! assert_eq!(answer, Ok(Ok(42)));
//!
//! for _ in 0..2 {
//!     let _ = block_on(guard(&breaker, &clock, classify, async { Err::<u32, &str>("boom") }));
//! }
//! // Two failures in a row opened the breaker: the next call is rejected
//! // without running the inner future.
//! let rejected = block_on(guard(&breaker, &clock, classify, async { Ok::<u32, &str>(7) })).unwrap_err();
//! assert_eq!(rejected.retry_after(), Some(Duration::from_secs(5)));
//! # Ok::<(), tenlives_engine::ConfigError>(())
//! ```
//!
//! The crate is always `#![no_std]`. Features, each implying the one above:
//!
//! - (none): guarded futures, waiting with any [`Timer`], the event stream
//!   (over a ring in a `static` array, say).
//! - `alloc`: [`ManualTimer`].
//! - `std` (default): passes `std` to the engine (its monotonic clock) and
//!   adds `std::error::Error` impls.
//! - `tokio`: `TokioTimer`. `async-io`: `AsyncIoTimer`. Both imply `std`.
//!
//! `docs/futures.md` describes the timer contract, how to implement it for
//! another runtime, the waiting rules, the stream's wake-up protocol and
//! what cancellation guarantees.
#![no_std]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod admission;
pub mod guarded;
pub mod stream;
pub mod timer;
pub mod wait;

pub use admission::{Admission, Classify, Unclassified, Untimed};
pub use guarded::{Guarded, guard, limit};
pub use stream::{AlreadySubscribed, EventStream, WakingSink};
pub use timer::Timer;
#[cfg(feature = "tokio")]
pub use timer::TokioTimer;
#[cfg(feature = "async-io")]
pub use timer::{AsyncIoSleep, AsyncIoTimer};
#[cfg(feature = "alloc")]
pub use timer::{ManualSleep, ManualTimer};
pub use wait::{
    Acquire, AcquireError, ManyPermits, NotYet, Tokens, TryAdmit, acquire, acquire_with,
    default_backoff,
};

/// The code in `docs/futures.md`, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/futures.md")]
struct FuturesGuideDoctests;

/// The crate's README (its page on crates.io), compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct CrateReadmeDoctests;
