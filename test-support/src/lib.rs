//! Helpers shared by the test suites of the tenlives crates.
//!
//! [`CountingAllocator`] counts allocations per thread, so that tests running
//! in parallel do not see each other's allocations. A test binary installs it
//! with
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: tenlives_test_support::CountingAllocator = tenlives_test_support::CountingAllocator;
//! ```
//!
//! and asserts with [`allocations_during`] that a request path allocates
//! nothing.
//!
//! With feature `tracing`, `tracing_capture` gives a test binary one global
//! `tracing` subscriber that forwards each thread's callbacks to the layer
//! that thread registered, instead of a scoped subscriber per test (whose
//! cached callsite interest can lose events; the module says how).
#![deny(missing_docs)]

#[cfg(feature = "tracing")]
pub mod tracing_capture;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// A global allocator that forwards to the system allocator and counts, per
/// thread, the allocations (and reallocations) it serves.
pub struct CountingAllocator;

std::thread_local! {
    // A const-initialised `Cell<usize>` has no destructor and needs no lazy
    // initialisation, so the allocator can touch it without allocating.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: during thread teardown the slot may be gone; then don't count.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: forwards every call unchanged to the system allocator; it only
// counts allocations on the side, without allocating.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout (above).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract, which we pass on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations this thread has made so far (while a [`CountingAllocator`]
/// is the global allocator).
pub fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

/// Allocations this thread made while running `f`.
pub fn allocations_during(f: impl FnOnce()) -> usize {
    let before = allocations();
    f();
    allocations() - before
}
