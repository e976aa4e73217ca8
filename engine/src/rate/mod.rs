//! Rate limiting with GCRA: a direct limiter over one atomic cell (64 bits
//! when the emission interval is a whole number of nanoseconds or a
//! fraction `c / a` with `a <= 16`, 128 otherwise), and a keyed limiter (one state per key) in a table of fixed
//! size.
//!
//! # The algorithm
//!
//! GCRA (the generic cell rate algorithm) keeps one number per limiter, the
//! theoretical arrival time `TAT`, and decides each request with one
//! compare-and-swap around a pure function of (that number, now, cost,
//! quota): `n` tokens at `t` are admitted iff `max(TAT, t) + n·T - t <=
//! b·T` (`T` the emission interval, `b` the burst), and then `TAT :=
//! max(TAT, t) + n·T`. Here `T = period / rate` is held exactly, as a
//! fraction, and `TAT` as `(reset, k)`: the nanosecond of the last full
//! bucket and the tokens booked since, `TAT = reset + k·T` (see `gcra.rs`);
//! where `T` is a whole number of nanoseconds, the direct limiter holds
//! `TAT` itself in 64 bits, and where it is a small fraction `c / a` ns,
//! `TAT·a` (see `cell.rs` and `docs/rate-limiter.md` for the two
//! departures that costs, at the end of time and on refunds).
//! Nothing is rounded except the nanosecond a refusal reports, so a rate
//! that does not divide the period (3 per second) never drifts: over any
//! time `t`, at most `t / T + b` tokens are handed out, whatever the rate,
//! the request pattern or the number of threads.
//!
//! ```
//! use core::time::Duration;
//! use tenlives_engine::rate::{Quota, RateLimitError, RateLimiter};
//! use tenlives_engine::time::{Clock, ManualClock};
//!
//! let limiter = RateLimiter::new(Quota::per_second(10)?.with_burst(2)?);
//! let clock = ManualClock::new();
//! assert!(limiter.check(clock.now()).is_ok());
//! assert!(limiter.check(clock.now()).is_ok());
//! let refused = limiter.check(clock.now()).unwrap_err();
//! assert_eq!(refused.retry_after(), Some(Duration::from_millis(100)));
//!
//! clock.advance(Duration::from_millis(100));
//! assert!(limiter.check(clock.now()).is_ok());
//!
//! // Asking for more than the burst can never succeed: a typed error, not a
//! // wait that never ends.
//! assert!(matches!(limiter.check_n(3, clock.now()), Err(RateLimitError::Insufficient(_))));
//!
//! // A reservation books tokens ahead and can be cancelled.
//! let r = limiter.reserve_n(2, clock.now(), Duration::from_secs(1))?;
//! assert_eq!(r.delay_from(clock.now()), Duration::from_millis(200));
//! r.cancel();
//! assert_eq!(limiter.available(clock.now().saturating_add(Duration::from_millis(200))), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Guarantees
//!
//! See `docs/rate-limiter.md` and `docs/guarantees.md` (L1–L7): never more
//! than the burst at one instant; never more than `rate * t + burst` over any
//! time `t` from the start; every decision exactly GCRA's; refunds never
//! create tokens; all-or-nothing
//! acquisition across limiters; the keyed table never exceeds its capacity
//! and evicts only keys a fresh key would be indistinguishable from.

mod all;
mod cell;
mod error;
mod gcra;
#[cfg(feature = "std")]
mod keyed;
mod limiter;
mod quota;

pub use all::{AllOrNothingError, TokenSource, acquire_all};
pub use error::{InsufficientCapacity, RateLimitError, RateLimited};
/// The keyed table's free list, public only in loom builds for its model
/// (`loom-tests/tests/loom_free_list.rs`).
#[cfg(all(feature = "std", tenlives_loom))]
#[doc(hidden)]
pub use keyed::FreeList;
#[cfg(feature = "std")]
pub use keyed::{
    DefaultHashBuilder, KeyHasher, KeyedConfig, KeyedRateLimiter, KeyedRestore, KeyedSource,
    WhenFull,
};
pub use limiter::{RATE_SNAPSHOT_MAX, RateLimiter, Reservation};
pub use quota::Quota;
