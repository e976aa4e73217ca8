//! What every bench file shares: the criterion settings and the way a
//! subject is driven from two threads at once.

use std::hint::black_box;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::Criterion;

/// Short runs (1 s warm-up, 2 s measurement, 30 samples), so that the whole
/// suite fits in a few minutes on two cores.
pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

/// Runs `op` `iters` times on each of 2 threads, started together at a
/// barrier, with a time argument going from `start` by `step`; returns the
/// wall time from the first start to the last end, which divided by `iters`
/// is the time per operation per thread.
#[allow(
    dead_code,
    reason = "events.rs drives its subjects in batches of its own"
)]
pub fn two_threads(iters: u64, start: u64, step: u64, op: impl Fn(u64) + Sync) -> Duration {
    let barrier = Barrier::new(2);
    let spans: Vec<(Instant, Instant)> = thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let began = Instant::now();
                    let mut t = start;
                    for _ in 0..iters {
                        t += step;
                        op(black_box(t));
                    }
                    (began, Instant::now())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker panicked"))
            .collect()
    });
    let first_start = spans.iter().map(|s| s.0).min().expect("two spans");
    let last_end = spans.iter().map(|s| s.1).max().expect("two spans");
    last_end - first_start
}
