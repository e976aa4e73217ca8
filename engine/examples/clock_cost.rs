//! What one reading of each clock costs, on one thread and on two at once:
//! `cargo run --release -p tenlives-engine --features quanta --example clock_cost`.
//!
//! A rough loop (no statistics): the figures in `docs/clocks-and-timers.md`
//! come from it.

use std::hint::black_box;
use std::time::{Duration, Instant};

use tenlives_engine::time::{Clock, MonotonicClock, RecentClock, Timestamp, TscClock};

const READS: u32 = 5_000_000;

/// Nanoseconds per reading on each of `threads` threads reading `clock` at once.
fn per_read<C: Clock + Sync>(clock: &C, threads: usize) -> Vec<f64> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let start = Instant::now();
                    for _ in 0..READS {
                        black_box(clock.now());
                    }
                    start.elapsed().as_nanos() as f64 / f64::from(READS)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The TSC clock without its clamp, to see what the clamp costs.
struct Unclamped(TscClock);

impl Clock for Unclamped {
    fn now(&self) -> Timestamp {
        self.0.now_unclamped()
    }
}

fn main() {
    let monotonic = MonotonicClock::new();
    let tsc = TscClock::new();
    let shared = TscClock::shared_clamp();
    let unclamped = Unclamped(TscClock::new());
    let recent = RecentClock::new(Duration::from_millis(1)).expect("upkeep thread");
    for threads in [1, 2] {
        println!("{threads} thread(s), ns per reading on each:");
        println!(
            "  MonotonicClock      {:.1?}",
            per_read(&monotonic, threads)
        );
        println!(
            "  TscClock (per-thread clamp) {:.1?}",
            per_read(&tsc, threads)
        );
        println!(
            "  TscClock, shared clamp {:.1?}",
            per_read(&shared, threads)
        );
        println!(
            "  TscClock, no clamp  {:.1?}",
            per_read(&unclamped, threads)
        );
        println!("  RecentClock (1 ms)  {:.1?}", per_read(&recent, threads));
    }
}
