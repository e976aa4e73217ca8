//! K5, R7: the request paths of the bulkhead, the retry budget and the
//! backoff schedules never allocate. A counting global allocator sees zero
//! allocations across acquisitions, refusals, releases, limit changes,
//! deposits, withdrawals (granted and refused), bucket rolls, long idle gaps
//! and backoff iteration.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::retry::{Backoff, RetryBudget, RetryBudgetConfig};
use tenlives_engine::time::Timestamp;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; it only
// counts allocations on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout (above).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract, which we pass on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn the_request_paths_never_allocate() {
    let bulkhead = Bulkhead::new(3).unwrap();
    let budget = RetryBudget::new(RetryBudgetConfig::default());
    let backoffs = [
        Backoff::constant(Duration::from_millis(5)).unwrap(),
        Backoff::linear(
            Duration::from_millis(5),
            Duration::from_millis(5),
            Duration::from_secs(1),
        )
        .unwrap(),
        Backoff::exponential(Duration::from_millis(5), 2.0, Duration::from_secs(1)).unwrap(),
        Backoff::full_jitter(Duration::from_millis(5), 2.0, Duration::from_secs(1)).unwrap(),
        Backoff::decorrelated_jitter(Duration::from_millis(5), Duration::from_secs(1)).unwrap(),
    ];

    let before = ALLOCATIONS.load(Ordering::SeqCst);
    for i in 0..10_000u64 {
        // Bulkhead: grants, refusals, many, raw, limit changes.
        let a = bulkhead.try_acquire();
        let b = bulkhead.try_acquire_many(2);
        let c = bulkhead.try_acquire_raw();
        std::hint::black_box((&a, &b, &c));
        if let Ok(raw) = c {
            bulkhead.release(raw);
        }
        drop((a, b));
        if i % 100 == 0 {
            bulkhead
                .set_limit(if i % 200 == 0 { 1 } else { 3 })
                .unwrap();
        }
        std::hint::black_box(bulkhead.snapshot());

        // Budget: every call in a new millisecond, a jump every 1000 calls.
        let now = Timestamp::from_nanos(i * 1_000_000 + (i / 1000) * 60_000_000_000);
        budget.deposit(now);
        std::hint::black_box(budget.try_withdraw(now));
        std::hint::black_box(budget.counts(now));

        // Backoff iteration.
        let backoff = &backoffs[(i % 5) as usize];
        std::hint::black_box(backoff.iter(i).take(10).fold(Duration::ZERO, |a, d| a + d));
    }
    let after = ALLOCATIONS.load(Ordering::SeqCst);
    assert_eq!(after - before, 0, "allocations on the request path");
    assert_eq!(bulkhead.in_flight(), 0);
}
