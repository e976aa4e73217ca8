//! Retry support: how long to wait between attempts, and whether a retry is
//! affordable at all.
//!
//! - [`Backoff`]: validated backoff schedules (constant, linear, exponential,
//!   full jitter, decorrelated jitter) as iterators of delays, with seedable
//!   jitter that needs no `std`.
//! - [`RetryBudget`]: a lock-free budget that allows retries as a share of
//!   recent requests plus a reserve, so that retries cannot multiply the load
//!   on a struggling dependency.
//!
//! The two are independent: an adapter's retry loop typically deposits every
//! request into the budget, and before each retry asks the budget, then waits
//! the next delay of the schedule.
//!
//! ```
//! use core::time::Duration;
//! use tenlives_engine::retry::{Backoff, RetryBudget, RetryBudgetConfig};
//! use tenlives_engine::time::{Clock, ManualClock};
//!
//! let budget = RetryBudget::new(RetryBudgetConfig::default());
//! let backoff = Backoff::exponential(Duration::from_millis(10), 2.0, Duration::from_secs(1))?
//!     .with_max_retries(3);
//! let clock = ManualClock::new();
//!
//! budget.deposit(clock.now()); // the first attempt
//! let mut attempts = 1;
//! for delay in backoff.iter(7) {
//!     // ...the attempt failed...
//!     if !budget.try_withdraw(clock.now()) {
//!         break; // retries are used up: give up now rather than pile on
//!     }
//!     clock.advance(delay);
//!     attempts += 1;
//! }
//! assert_eq!(attempts, 4);
//! # Ok::<(), tenlives_engine::ConfigError>(())
//! ```

pub mod backoff;
pub mod budget;
mod budget_config;

pub use backoff::{Backoff, BackoffIter};
pub use budget::{
    BUCKET_CAP, BUDGET_SNAPSHOT_MAX, BudgetCounts, MAX_BUCKETS, MAX_RATIO_PPM, RetryBudget,
    RetryBudgetConfig, RetryBudgetConfigBuilder,
};
