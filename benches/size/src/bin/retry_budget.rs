//! A retry budget: deposit on every call, withdraw for a retry.
#![no_std]
#![no_main]

use core::time::Duration;

use tenlives_engine::retry::{RetryBudget, RetryBudgetConfig};
use tenlives_engine::time::Timestamp;
use tenlives_size::{observe, opaque, opaque_nanos, park};

#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    let Ok(config) = RetryBudgetConfig::builder()
        .ratio_ppm(opaque(200_000))
        .min_per_second(opaque(10))
        .window(Duration::from_secs(opaque(10)), opaque(10))
        .build()
    else {
        park()
    };
    let budget = RetryBudget::new(config);
    let budget = opaque(&budget);
    let mut t = 0;
    loop {
        t += opaque_nanos(1_000_000);
        let now = Timestamp::from_nanos(t);
        budget.deposit(now);
        observe(budget.try_withdraw(now));
    }
}
