//! A direct GCRA rate limiter: built from a quota with a burst, then `check`.
#![no_std]
#![no_main]

use tenlives_engine::rate::{Quota, RateLimiter};
use tenlives_engine::time::Timestamp;
use tenlives_size::{observe, opaque, opaque_nanos, park};

#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    let Ok(quota) = Quota::per_second(opaque(100)).and_then(|q| q.with_burst(opaque(10))) else {
        park()
    };
    let limiter = RateLimiter::new(quota);
    let limiter = opaque(&limiter);
    let mut t = 0;
    loop {
        t += opaque_nanos(1_000_000);
        observe(limiter.check(Timestamp::from_nanos(t)).is_ok());
    }
}
