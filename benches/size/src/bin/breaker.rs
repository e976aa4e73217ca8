//! A circuit breaker: built from a configuration, then `try_acquire` and
//! recording the outcome (success or failure), and a rejection's retry-after.
#![no_std]
#![no_main]

use core::time::Duration;

use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker, Outcome};
use tenlives_engine::time::Timestamp;
use tenlives_size::{observe, opaque, opaque_nanos, park};

#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    let Ok(config) = BreakerConfig::builder()
        .consecutive_failures(opaque(5))
        .open_duration(Duration::from_millis(opaque(1_000)))
        .build()
    else {
        park()
    };
    let breaker = CircuitBreaker::new(config);
    let breaker = opaque(&breaker);
    let mut t = 0;
    loop {
        t += opaque_nanos(1_000_000);
        let now = Timestamp::from_nanos(t);
        match breaker.try_acquire(now) {
            Ok(permit) => {
                let outcome = if opaque(t) % 3 == 0 {
                    Outcome::Failure
                } else {
                    Outcome::Success
                };
                permit.record(outcome, now);
            }
            Err(rejected) => observe(rejected.retry_after()),
        }
        observe(breaker.state());
    }
}
