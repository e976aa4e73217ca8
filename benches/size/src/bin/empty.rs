//! The floor: `_start`, the panic handler and nothing of the engine.
#![no_std]
#![no_main]

use tenlives_size::{observe, opaque, park};

#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    observe(opaque(0u64));
    park()
}
