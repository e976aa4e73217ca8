//! The bulkhead and the retry budget, tenlives beside tokio's `Semaphore`.
//!
//! What is measured, per operation:
//!
//! - `bulkhead/acquire_release`: one permit taken and given back.
//!   Subjects: tenlives `Bulkhead::try_acquire` + drop of the permit;
//!   `tokio::sync::Semaphore::try_acquire` + drop of its permit (the peer);
//!   `design_fetch_add_undo`, the alternative design for the bulkhead's
//!   acquire that `engine/src/bulkhead.rs` explains and rejects, written here
//!   on the same packed word (`fetch_add`, and `fetch_sub` it back if the
//!   value before shows the bulkhead full; release is a `fetch_sub`); and the
//!   floor, one `fetch_add(1, Relaxed)` on a shared `AtomicU64`. The limit
//!   (1000 permits) is never reached, so every acquisition is granted. Each
//!   runs on 1 thread (`1_thread`) and on 2 threads sharing one subject
//!   (`2_threads`, reported as nanoseconds per operation per thread: the
//!   wall time for both threads to do `iters` operations each, divided by
//!   `iters`).
//! - `retry_budget/deposit_withdraw`: one `deposit` and one `try_withdraw`
//!   (granted: the ratio is two retries per request) at a time that advances
//!   10 µs per operation, so that the head bucket (1.25 ms long) rolls every
//!   125 operations and the roll's cost is included, amortised. On 1 and 2
//!   threads, like the bulkhead. The headline row (`tenlives`) reads the
//!   adapters' default clock (the process's `TscClock`) once per operation,
//!   as `RetryLayer` and the stack do (one reading serves the deposit and
//!   the withdrawal), on a window of 10 ms in 8 buckets (at real speed a
//!   longer bucket reaches its cap of 2^25 - 1 counts and refuses);
//!   `tenlives_no_clock_read` is given the time for free (a counter
//!   advanced 10 µs per operation).
//!
//! The bulkhead reads no clock, so its rows have no clock variant.

use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::retry::{RetryBudget, RetryBudgetConfig};
use tenlives_engine::time::{Clock, Timestamp, TscClock};

mod support;

/// Where the budget's timestamps start: an hour after the clock's origin.
const START_NS: u64 = 3_600_000_000_000;

/// Permits: far more than 2 threads ever hold.
const LIMIT: u32 = 1000;

/// One operation of a subject, at `t` nanoseconds.
trait Operation: Sync {
    fn run(&self, t: u64);
}

impl Operation for Bulkhead {
    #[inline]
    fn run(&self, _t: u64) {
        let permit = self.try_acquire().expect("below the limit");
        drop(black_box(permit));
    }
}

impl Operation for tokio::sync::Semaphore {
    #[inline]
    fn run(&self, _t: u64) {
        let permit = self.try_acquire().expect("below the limit");
        drop(black_box(permit));
    }
}

/// The floor: the cheapest shared write.
impl Operation for AtomicU64 {
    #[inline]
    fn run(&self, _t: u64) {
        black_box(self.fetch_add(1, Ordering::Relaxed));
    }
}

/// The rejected design: the same word (`in_flight << 32 | limit`), acquired
/// by `fetch_add` and undone by `fetch_sub` when the bulkhead was full.
struct FetchAddUndo(AtomicU64);

const ONE: u64 = 1 << 32;

impl FetchAddUndo {
    fn new(limit: u32) -> Self {
        FetchAddUndo(AtomicU64::new(u64::from(limit)))
    }
    #[inline]
    fn try_acquire(&self) -> bool {
        let before = self.0.fetch_add(ONE, Ordering::Acquire);
        if (before >> 32) < (before & 0xFFFF_FFFF) {
            true
        } else {
            self.0.fetch_sub(ONE, Ordering::Relaxed);
            false
        }
    }
    #[inline]
    fn release(&self) {
        self.0.fetch_sub(ONE, Ordering::Release);
    }
}

impl Operation for FetchAddUndo {
    #[inline]
    fn run(&self, _t: u64) {
        assert!(self.try_acquire(), "below the limit");
        // The release goes through `black_box`, like the other subjects'
        // permits (which hold a reference to their semaphore), so that each
        // pays the same for keeping its token.
        black_box(self).release();
    }
}

impl Operation for RetryBudget {
    #[inline]
    fn run(&self, t: u64) {
        let now = Timestamp::from_nanos(t);
        self.deposit(now);
        assert!(self.try_withdraw(now), "two retries per request");
    }
}

/// The retry budget as the adapters call it: one clock reading per request.
struct ClockedBudget {
    budget: RetryBudget,
    clock: TscClock,
}

impl Operation for ClockedBudget {
    #[inline]
    fn run(&self, _t: u64) {
        // An hour in, as the counter's time: a budget with a past.
        let now = Timestamp::from_nanos(START_NS + self.clock.now().as_nanos());
        self.budget.deposit(now);
        assert!(self.budget.try_withdraw(now), "two retries per request");
    }
}

/// `subject` on 1 thread and on 2 threads, time advancing `step` ns per op.
///
/// Criterion calls each routine several times (warm-up, samples); the clock
/// lives outside them so that time never goes back between calls.
fn both<S: Operation>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    subject: &S,
    step: u64,
) {
    let clock = Cell::new(START_NS);
    group.bench_function(format!("{name}/1_thread"), |b| {
        let mut t = clock.get();
        b.iter(|| {
            t += step;
            subject.run(black_box(t));
        });
        clock.set(t);
    });
    group.bench_function(format!("{name}/2_threads"), |b| {
        b.iter_custom(|iters| {
            let start = clock.get();
            clock.set(start + iters * step);
            support::two_threads(iters, start, step, |t| subject.run(t))
        });
    });
}

fn bench_bulkhead(c: &mut Criterion) {
    let mut group = c.benchmark_group("bulkhead/acquire_release");

    let floor = AtomicU64::new(0);
    both(&mut group, "floor_fetch_add", &floor, 1);

    let bulkhead = Bulkhead::new(LIMIT).expect("valid limit");
    both(&mut group, "tenlives", &bulkhead, 1);
    assert_eq!(bulkhead.in_flight(), 0);

    let undo = FetchAddUndo::new(LIMIT);
    both(&mut group, "design_fetch_add_undo", &undo, 1);
    assert_eq!(undo.0.load(Ordering::Relaxed), u64::from(LIMIT));

    let semaphore = tokio::sync::Semaphore::new(LIMIT as usize);
    both(&mut group, "tokio_semaphore", &semaphore, 1);
    assert_eq!(semaphore.available_permits(), LIMIT as usize);

    group.finish();
}

fn bench_retry_budget(c: &mut Criterion) {
    let mut group = c.benchmark_group("retry_budget/deposit_withdraw");
    let budget = || {
        RetryBudget::new(
            RetryBudgetConfig::builder()
                .ratio(2.0)
                .min_per_second(0)
                .window(Duration::from_secs(10), 8)
                .build()
                .expect("valid config"),
        )
    };
    // On the real clock a bench runs tens of millions of operations a
    // second: a 1.25 s bucket would reach its cap of 2^25 - 1 deposits
    // (`BUCKET_CAP`) within a second or two and refuse. The clocked
    // row's window is therefore 10 ms in 8 buckets: a bucket of 1.25 ms
    // holds some tens of thousands of operations, and rolls as often in
    // real time as the counter row's does in its time.
    let clocked = ClockedBudget {
        budget: RetryBudget::new(
            RetryBudgetConfig::builder()
                .ratio(2.0)
                .min_per_second(0)
                .window(Duration::from_millis(10), 8)
                .build()
                .expect("valid config"),
        ),
        clock: TscClock::new(),
    };
    both(&mut group, "tenlives", &clocked, 10_000);
    both(&mut group, "tenlives_no_clock_read", &budget(), 10_000);
    group.finish();
}

/// The harness. A module of its own because `criterion_group!` makes a `pub`
/// function it cannot document; here it is not exported, so it needs no doc.
mod harness {
    use super::*;

    criterion_group! {
        name = benches;
        config = support::config();
        targets = bench_bulkhead, bench_retry_budget
    }
}
criterion_main!(harness::benches);
