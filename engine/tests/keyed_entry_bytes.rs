//! The keyed limiter's memory per entry, measured: a counting allocator
//! reads the bytes a table of each capacity holds once built, and the test
//! prints them per entry (run with `--nocapture`; docs/performance.md quotes
//! them). The table is allocated whole at construction, so this is its
//! memory at any fill. Checked: the bytes per entry stay within the layout
//! `docs/rate-limiter.md` describes (an index of 4-byte chain heads, the
//! capacity rounded up to a power of two: at most 8 bytes per entry; an
//! entry for a `u64` key of its state, link word and key: 24 bytes with a
//! 64-bit state word, 32 with a 128-bit one; a free-list link of 4 bytes),
//! plus a fixed part.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use tenlives_engine::rate::{KeyedConfig, KeyedRateLimiter, Quota};

struct Tracking;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; it only
// counts live bytes on the side, without allocating.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::SeqCst);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::SeqCst);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

#[test]
fn bytes_per_entry_follow_the_layout() {
    // 10 a second: a whole-nanosecond interval, a 64-bit state word; 3 a
    // second: a third of a second, a scaled 64-bit word; 17 a second: a
    // seventeenth, the 128-bit state.
    for (quota, entry) in [
        (Quota::per_second(10).unwrap(), 24),
        (Quota::per_second(3).unwrap(), 24),
        (Quota::per_second(17).unwrap(), 32),
    ] {
        measure(quota, entry);
    }
}

fn measure(quota: Quota, entry: usize) {
    // Warm this thread's epoch registration before measuring.
    drop(KeyedRateLimiter::<u64>::new(
        KeyedConfig::new(quota, 1).unwrap(),
    ));
    let capacities: &[usize] = if cfg!(miri) {
        &[100]
    } else {
        &[1_000, 10_000, 100_000, 1_000_000]
    };
    for &capacity in capacities {
        let before = LIVE.load(Ordering::SeqCst);
        let limiter = KeyedRateLimiter::<u64>::new(KeyedConfig::new(quota, capacity).unwrap());
        let bytes = (LIVE.load(Ordering::SeqCst) - before) as usize;
        let index = 4 * capacity.next_power_of_two().max(2);
        assert!(index <= 8 * capacity, "at most 8 index bytes per entry");
        let layout = index + capacity * (entry + 4);
        println!(
            "{entry}-byte entries, capacity {capacity}: {bytes} bytes, {:.1} per entry (index {:.1}, entry and free slot {:.1}, fixed {})",
            bytes as f64 / capacity as f64,
            index as f64 / capacity as f64,
            (bytes - index) as f64 / capacity as f64,
            bytes.saturating_sub(layout),
        );
        assert!(
            bytes >= layout && bytes <= layout + 4096,
            "capacity {capacity}: {bytes} bytes, the layout says {layout} plus a fixed part"
        );
        drop(limiter);
    }
}
