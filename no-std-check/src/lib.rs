//! Proof that the engine builds and works without `std` or `alloc`.
//!
//! This crate is `#![no_std]` and depends on `tenlives-engine` with
//! `default-features = false`, so the engine is compiled with neither feature.
//! CI builds it alone (`cargo build -p tenlives-no-std-check`) so that no
//! other workspace member can switch the engine's `std` feature back on
//! through feature unification. Its test runs the breaker through a trip on a
//! breaker that lives on the stack.
#![no_std]
#![deny(missing_docs)]

use core::time::Duration;

use tenlives_engine::ConfigError;
use tenlives_engine::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
use tenlives_engine::time::{Clock, ManualClock};

/// Trips a breaker with three failures and returns the state it ends in
/// (open) and the retry-after the next rejection carries.
pub fn trip_a_breaker() -> Result<(BreakerState, Option<Duration>), ConfigError> {
    let breaker = CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(3)
            .open_duration(Duration::from_secs(1))
            .build()?,
    );
    let clock = ManualClock::new();
    for _ in 0..3 {
        if let Ok(permit) = breaker.try_acquire(clock.now()) {
            permit.failure(clock.now());
        }
    }
    let retry_after = breaker
        .try_acquire(clock.now())
        .err()
        .and_then(|r| r.retry_after());
    Ok((breaker.state(), retry_after))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_breaker_trips_without_std() {
        assert_eq!(
            super::trip_a_breaker(),
            Ok((
                super::BreakerState::Open,
                Some(core::time::Duration::from_secs(1))
            ))
        );
    }
}
