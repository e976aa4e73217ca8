//! What every size binary shares: the panic handler and the helpers that keep
//! inputs opaque and results observed, so that the optimiser can neither fold
//! a primitive's operations into constants nor drop them.
//!
//! Each binary in `src/bin/` defines `_start` (the entry point rust-lld looks
//! for; no runtime, no vector table, no linker script: the binary only has to
//! link for its `.text` to be measured) and calls one primitive the way a
//! firmware would. `empty` calls nothing: its `.text` is the floor that every
//! binary carries (this crate's `_start`, panic handler and helpers).
#![no_std]

use core::hint::black_box;
use core::panic::PanicInfo;

/// A timestamp, in nanoseconds, that the optimiser cannot see.
#[inline(always)]
pub fn opaque_nanos(n: u64) -> u64 {
    black_box(n)
}

/// A value the optimiser cannot see.
#[inline(always)]
pub fn opaque<T>(v: T) -> T {
    black_box(v)
}

/// Marks a result as used.
#[inline(always)]
pub fn observe<T>(v: T) {
    black_box(v);
}

/// Parks the core: what every binary does after its calls.
#[inline(always)]
pub fn park() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

#[panic_handler]
fn panic(_info: &PanicInfo) -> ! {
    park()
}
