//! A client-side throttle: admit, then report the outcome.
#![no_std]
#![no_main]

use core::time::Duration;

use tenlives_engine::throttle::{Throttle, ThrottleConfig};
use tenlives_engine::time::Timestamp;
use tenlives_size::{observe, opaque, opaque_nanos, park};

#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    let Ok(config) = ThrottleConfig::builder()
        .k(opaque(2.0))
        .window(Duration::from_secs(opaque(60)), opaque(12))
        .build()
    else {
        park()
    };
    let throttle = Throttle::new(config);
    let throttle = opaque(&throttle);
    let mut t = 0;
    loop {
        t += opaque_nanos(1_000_000);
        let now = Timestamp::from_nanos(t);
        match throttle.try_admit(now) {
            Ok(ticket) => {
                if opaque(t) % 4 == 0 {
                    ticket.refused(now);
                } else {
                    ticket.accepted(now);
                }
            }
            Err(throttled) => observe(throttled.probability()),
        }
    }
}
