//! L7: a keyed limiter's memory stays at the cap fixed at construction. A
//! million distinct keys pass through a table of 1 000 entries; a counting
//! allocator tracks the bytes live on the heap. After construction the
//! table's own storage never grows: the only allocations are epoch
//! reclamation's bags of deferred frees (crossbeam-epoch seals one per 64
//! evictions and frees it once the grace period is over), so the bytes live
//! must stay within a small constant of what they were after construction.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use tenlives_engine::rate::{KeyedConfig, KeyedRateLimiter, Quota, WhenFull};
use tenlives_engine::time::Timestamp;

struct Tracking;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; it only
// tracks live bytes on the side, without allocating.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live =
            LIVE.fetch_add(layout.size() as isize, Ordering::SeqCst) + layout.size() as isize;
        PEAK.fetch_max(live, Ordering::SeqCst);
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
fn a_million_keys_through_a_thousand_entries_keep_memory_at_the_cap() {
    const CAPACITY: usize = 1_000;
    const KEYS: u64 = 1_000_000;
    let quota = Quota::per_second(10).unwrap().with_burst(5).unwrap();
    // Warm this thread's epoch registration before measuring.
    drop(KeyedRateLimiter::<u64>::new(
        KeyedConfig::new(quota, 1).unwrap(),
    ));

    let before = LIVE.load(Ordering::SeqCst);
    let limiter = KeyedRateLimiter::new(
        KeyedConfig::new(quota, CAPACITY)
            .unwrap()
            .when_full(WhenFull::Reject),
    );
    let table = LIVE.load(Ordering::SeqCst) - before;
    PEAK.store(LIVE.load(Ordering::SeqCst), Ordering::SeqCst);

    let mut admitted = 0u64;
    for k in 0..KEYS {
        // Each key makes one request; 1 ms later its bucket is not full yet,
        // 500 ms later it is (5 tokens at 10/s), so old keys become
        // evictable while new ones keep arriving.
        let now = Timestamp::from_nanos(k * 1_000_000);
        admitted += u64::from(limiter.check_key(&k, now).is_ok());
        assert!(limiter.in_use() <= CAPACITY);
    }
    assert_eq!(admitted, KEYS);
    let peak_growth = PEAK.load(Ordering::SeqCst) - before - table;
    println!(
        "table: {table} bytes for {CAPACITY} entries ({} per entry); peak growth over {KEYS} keys: {peak_growth} bytes",
        table / CAPACITY as isize
    );
    // Bags of deferred frees in flight: a few KiB, independent of the number
    // of keys.
    assert!(
        peak_growth < 64 * 1024,
        "memory grew by {peak_growth} bytes beyond the table's {table}"
    );
    drop(limiter);
    let _ = Duration::ZERO;
}
