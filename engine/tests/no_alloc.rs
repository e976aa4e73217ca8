//! B8: the breaker's request path never allocates. A counting global
//! allocator sees zero allocations across admissions and reports in every
//! state (closed with each rule, open, half-open, metrics-only, disabled).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker, Outcome};
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

fn drive(b: &CircuitBreaker, start: u64, calls: u64) {
    for i in 0..calls {
        let now = Timestamp::from_nanos(start + i * 1_000_000);
        match b.try_acquire(now) {
            Ok(p) => match i % 4 {
                0 => p.record(Outcome::Failure, now),
                1 => drop(p),
                2 => p.record(Outcome::Ignored, now),
                _ => p.record(
                    Outcome::Success,
                    Timestamp::from_nanos(start + i * 1_000_000 + 300_000_000),
                ),
            },
            Err(rejected) => {
                std::hint::black_box(rejected);
            }
        }
    }
}

#[test]
fn the_request_path_never_allocates() {
    let configs = [
        BreakerConfig::builder().failure_rate(50.0).minimum_calls(5),
        BreakerConfig::builder()
            .failure_rate(50.0)
            .count_window(20, 4)
            .minimum_calls(5),
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(3),
        BreakerConfig::builder()
            .slow_calls(50.0, Duration::from_millis(100))
            .minimum_calls(5),
    ];
    let breakers: Vec<CircuitBreaker> = configs
        .into_iter()
        .map(|c| {
            CircuitBreaker::new(
                c.open_duration(Duration::from_millis(20))
                    .half_open_probes(2)
                    .build()
                    .unwrap(),
            )
        })
        .collect();
    // Warm up: the first use of a thread's stripe touches a thread-local.
    drive(&breakers[0], 0, 10);

    let before = ALLOCATIONS.load(Ordering::SeqCst);
    let mut t = 1_000_000_000;
    for b in &breakers {
        drive(b, t, 2_000); // trips, rejects, probes, closes, trips again...
        b.metrics_only(Timestamp::from_nanos(t));
        drive(b, t + 3_000_000_000, 100);
        b.disable(Timestamp::from_nanos(t));
        drive(b, t + 4_000_000_000, 100);
        b.force_open(Timestamp::from_nanos(t));
        drive(b, t + 5_000_000_000, 100);
        b.reset(Timestamp::from_nanos(t));
        std::hint::black_box(b.snapshot(Timestamp::from_nanos(t)));
        t += 10_000_000_000;
    }
    let after = ALLOCATIONS.load(Ordering::SeqCst);
    assert_eq!(after - before, 0, "allocations on the request path");
}
