//! Stress: one writer replacing the configuration in a tight loop while two
//! readers use it, for the `ConfigCell`, a rate limiter's quota and a
//! breaker's configuration
//! (guarantees C1 and C4 in `docs/guarantees.md`). No crash, every read sees
//! one stored value whole, and no leak: a counting global allocator shows
//! the bytes allocated minus the bytes freed back within a small bound of
//! where they started, once the epoch collector has been flushed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use tenlives_engine::config_cell::ConfigCell;
use tenlives_engine::rate::{Quota, RateLimiter};
use tenlives_engine::time::Timestamp;

/// Counts the bytes alive on the heap, for the whole test binary.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to `System` unchanged; it only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on to `System`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on to `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The heap count is global: the tests take turns.
static SERIAL: Mutex<()> = Mutex::new(());

/// Heap bytes that may stay behind after a run and a flush: the epoch
/// collector's bags in flight and the records of threads that exited (freed
/// lazily), never the replaced values themselves (10^5 of them would be
/// megabytes).
const SLACK: usize = 64 * 1024;

const SWAPS: u64 = if cfg!(debug_assertions) {
    20_000
} else {
    200_000
};

/// Pins and flushes the collector until the heap is back within `SLACK` of
/// `baseline` (bounded tries); returns the bytes still above it.
fn settle(baseline: usize) -> isize {
    let mut above = 0;
    for _ in 0..10_000 {
        crossbeam_epoch::pin().flush();
        above = LIVE_BYTES.load(Ordering::SeqCst) as isize - baseline as isize;
        if above <= SLACK as isize {
            break;
        }
        thread::yield_now();
    }
    above
}

/// A configuration whose halves must always agree.
struct Pair {
    value: u64,
    check: u64,
    /// Makes each value a real heap object, so that a leak is visible.
    _padding: [u64; 8],
}

impl Pair {
    fn new(value: u64) -> Self {
        Pair {
            value,
            check: !value,
            _padding: [value; 8],
        }
    }
}

#[test]
fn config_cell_swapped_in_a_tight_loop() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Register this thread with the collector before the baseline.
    crossbeam_epoch::pin().flush();
    let baseline = LIVE_BYTES.load(Ordering::SeqCst);
    let allocations_before = ALLOCATIONS.load(Ordering::SeqCst);
    {
        let cell = ConfigCell::new(Pair::new(0));
        let stop = AtomicBool::new(false);
        let reads = AtomicU64::new(0);
        thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    let mut last = 0;
                    let mut mine = 0u64;
                    while !stop.load(Ordering::Relaxed) && mine < 100_000_000 {
                        let (value, check) = cell.with(|p| (p.value, p.check));
                        assert_eq!(check, !value, "a torn configuration");
                        // One writer, so values only go up.
                        assert!(value >= last, "went back from {last} to {value}");
                        last = value;
                        mine += 1;
                    }
                    reads.fetch_add(mine, Ordering::Relaxed);
                });
            }
            for v in 1..=SWAPS {
                cell.store(Pair::new(v));
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert_eq!(cell.with(|p| p.value), SWAPS);
        assert!(reads.load(Ordering::Relaxed) > 0);
    }
    let allocated = ALLOCATIONS.load(Ordering::SeqCst) - allocations_before;
    assert!(allocated as u64 >= SWAPS, "every store allocates its value");
    let above = settle(baseline);
    assert!(
        above <= SLACK as isize,
        "{above} bytes still allocated after {SWAPS} swaps and a flush"
    );
}

#[test]
fn rate_limiter_quota_swapped_in_a_tight_loop() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    crossbeam_epoch::pin().flush();
    let baseline = LIVE_BYTES.load(Ordering::SeqCst);
    {
        let quotas = [
            Quota::new(7, Duration::from_millis(3))
                .unwrap()
                .with_burst(20)
                .unwrap(),
            Quota::per_second(1_000).unwrap().with_burst(3).unwrap(),
        ];
        let limiter = RateLimiter::new(quotas[0]);
        let clock = AtomicU64::new(1_000_000_000);
        let stop = AtomicBool::new(false);
        thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    let mut tries = 0u64;
                    while !stop.load(Ordering::Relaxed) && tries < 100_000_000 {
                        let now = Timestamp::from_nanos(clock.load(Ordering::Relaxed));
                        let _ = limiter.check(now);
                        let _ = limiter.available(now);
                        tries += 1;
                    }
                });
            }
            for i in 0..SWAPS {
                let t = clock.fetch_add(1_000, Ordering::Relaxed) + 1_000;
                limiter.set_quota(quotas[(i % 2) as usize], Timestamp::from_nanos(t));
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert_eq!(limiter.quota(), quotas[((SWAPS - 1) % 2) as usize]);
    }
    let above = settle(baseline);
    assert!(
        above <= SLACK as isize,
        "{above} bytes still allocated after {SWAPS} quota changes and a flush"
    );
}

#[test]
fn breaker_configuration_swapped_in_a_tight_loop() {
    use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker, Outcome};

    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    crossbeam_epoch::pin().flush();
    let baseline = LIVE_BYTES.load(Ordering::SeqCst);
    // Two layouts, so that every change builds (and retires) a window.
    let configs = [
        BreakerConfig::builder()
            .failure_rate(50.0)
            .count_window(40)
            .minimum_calls(10)
            .consecutive_failures(6)
            .open_duration(Duration::from_micros(50))
            .build()
            .unwrap(),
        BreakerConfig::builder()
            .failure_rate(30.0)
            .time_window(Duration::from_micros(400), 8)
            .minimum_calls(5)
            .open_duration(Duration::from_micros(20))
            .half_open_probes(2)
            .build()
            .unwrap(),
    ];
    let changes = SWAPS / 10; // each change allocates a window of a few KiB
    {
        let breaker = CircuitBreaker::new(configs[0].clone());
        let clock = AtomicU64::new(1_000_000_000);
        let stop = AtomicBool::new(false);
        let outcomes = AtomicU64::new(0);
        thread::scope(|s| {
            for t in 0..2u64 {
                let (breaker, clock, stop, outcomes) = (&breaker, &clock, &stop, &outcomes);
                s.spawn(move || {
                    let mut i = t;
                    while !stop.load(Ordering::Relaxed) && i < 100_000_000 {
                        let now = Timestamp::from_nanos(clock.load(Ordering::Relaxed));
                        if let Ok(permit) = breaker.try_acquire(now) {
                            let outcome = if i % 3 == 0 {
                                Outcome::Failure
                            } else {
                                Outcome::Success
                            };
                            permit.record(outcome, now);
                            outcomes.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = breaker.snapshot(now);
                        i += 2;
                    }
                });
            }
            for i in 0..changes {
                let t = clock.fetch_add(1_000, Ordering::Relaxed) + 1_000;
                breaker.set_config(configs[(i % 2) as usize].clone(), Timestamp::from_nanos(t));
            }
            stop.store(true, Ordering::Relaxed);
        });
        let last = &configs[((changes - 1) % 2) as usize];
        assert_eq!(breaker.config().window(), last.window());
        assert!(outcomes.load(Ordering::Relaxed) > 0);
    }
    let above = settle(baseline);
    assert!(
        above <= SLACK as isize,
        "{above} bytes still allocated after {changes} breaker changes and a flush"
    );
}
