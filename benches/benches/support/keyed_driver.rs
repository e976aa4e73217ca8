//! The one-thread driver of the keyed rate-limiter benches, shared by
//! `rate.rs` and `scaling.rs` so that both time exactly the same loop.

use std::cell::Cell;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, measurement::WallTime};
use governor::clock::FakeRelativeClock;

/// Where the stepped timestamps start: an hour after the clock's origin, as
/// a monotonic clock of a running process would read.
pub const START_NS: u64 = 3_600_000_000_000;

/// Stepped time per operation, in nanoseconds.
pub const STEP: u64 = 20;

/// `op(key, t)` on 1 thread over keys `0..keys`, visited in turn, time
/// advancing [`STEP`] per operation from `clock` (and on `fake` too, when
/// given); the key cursor and the time carry on from one criterion call to
/// the next, and the time on to whatever else reads `clock` after.
pub fn keyed_one_thread(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    keys: u64,
    clock: &Cell<u64>,
    fake: Option<&FakeRelativeClock>,
    op: impl Fn(u64, u64),
) {
    let cursor = Cell::new(0u64);
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let start = clock.get();
            clock.set(start + iters * STEP);
            if let Some(fake) = fake {
                fake.advance(Duration::from_nanos(iters * STEP));
            }
            let mut key = cursor.get();
            let began = Instant::now();
            let mut t = start;
            for _ in 0..iters {
                t += STEP;
                key += 1;
                if key == keys {
                    key = 0;
                }
                op(black_box(key), black_box(t));
            }
            let elapsed = began.elapsed();
            cursor.set(key);
            elapsed
        });
    });
}
