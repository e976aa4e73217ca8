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

/// How far the key cursor moves per operation: a prime, so coprime with every
/// key count the benches use (powers of ten), and every key is visited once
/// per round. The keys are inserted in the order `0, 1, 2, ...`, and the
/// tenlives table hands out its arena entries in the order keys arrive:
/// visiting the keys in that same order would read tenlives' entries one
/// after the other, which the hardware prefetcher follows, while governor's
/// entries sit where their hash puts them. Traffic does not come back in the
/// order keys first arrived; a stride reads both tables out of order alike.
pub const KEY_STRIDE: u64 = 7_919;

/// The key after `key` among `0..keys`, `keys` coprime with [`KEY_STRIDE`].
#[inline(always)]
pub fn next_key(key: u64, keys: u64) -> u64 {
    let next = key + KEY_STRIDE % keys;
    if next >= keys { next - keys } else { next }
}

/// Panics unless [`next_key`] visits every key of `0..keys` once per round
/// (the stride and `keys` coprime).
pub fn assert_stride_fits(keys: u64) {
    let (mut a, mut b) = (KEY_STRIDE % keys, keys);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    assert!(
        a == 1 || keys == 1,
        "the key stride must be coprime with {keys}"
    );
}

/// `op(key, t)` on 1 thread over keys `0..keys`, visited in the order
/// [`next_key`] steps (every key once per round), time
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
    assert_stride_fits(keys);
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
                key = next_key(key, keys);
                op(black_box(key), black_box(t));
            }
            let elapsed = began.elapsed();
            cursor.set(key);
            elapsed
        });
    });
}
