//! A bulkhead: acquire a permit, release it by dropping it.
#![no_std]
#![no_main]

use tenlives_engine::bulkhead::Bulkhead;
use tenlives_size::{observe, opaque, park};

#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    let Ok(bulkhead) = Bulkhead::new(opaque(8)) else {
        park()
    };
    let bulkhead = opaque(&bulkhead);
    loop {
        match bulkhead.try_acquire() {
            Ok(permit) => {
                observe(permit.permits());
                drop(permit);
            }
            Err(full) => observe(full.in_flight()),
        }
    }
}
