//! Reading live configuration: tenlives' `ConfigCell` beside `arc-swap` and
//! a `std::sync::RwLock`, and a rate-limiter check before and after its
//! first quota change.
//!
//! What is measured, per read, on 1 thread (`1_thread`) and on 2 threads
//! reading one shared cell (`2_threads`, nanoseconds per read per thread):
//!
//! - `config/read/tenlives_cell`: `ConfigCell::with(|c| c.field)`: an epoch
//!   pin, one Acquire pointer load, an unpin.
//! - `config/read/arc_swap_load`: `ArcSwap::load()` and one field read
//!   (arc-swap's debt-list fast path; no reference-count write).
//! - `config/read/rwlock_read`: `RwLock::read()` and one field read (one
//!   read-modify-write of the lock word to take it and one to drop it).
//! - `config/rate_check/unchanged` and `config/rate_check/after_change`:
//!   `RateLimiter::check` (admitted) on a limiter whose quota was never
//!   changed, and on one whose quota was changed once before the run (every
//!   check then pins the epoch to read the quota in force).
//!
//! The configuration is a 64-byte struct; every read returns one field
//! through `black_box`.
//!
//! `cargo bench -p tenlives-benches --bench config`

use std::hint::black_box;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use criterion::{Criterion, criterion_group, criterion_main};
use tenlives_engine::config_cell::ConfigCell;
use tenlives_engine::rate::{Quota, RateLimiter};
use tenlives_engine::time::Timestamp;

mod support;

/// A configuration of eight words.
struct Config {
    limit: u64,
    _rest: [u64; 7],
}

fn config(limit: u64) -> Config {
    Config {
        limit,
        _rest: [limit; 7],
    }
}

/// Where the stepped timestamps of the rate checks start (an hour in).
const START_NS: u64 = 3_600_000_000_000;
/// Stepped time per check, in nanoseconds.
const STEP: u64 = 20;

/// `op` on 1 thread and on 2 threads, as `name/1_thread`, `name/2_threads`.
fn both(c: &mut Criterion, name: &str, op: impl Fn(u64) + Sync) {
    c.bench_function(&format!("{name}/1_thread"), |b| {
        b.iter_custom(|iters| {
            let began = Instant::now();
            let mut t = START_NS;
            for _ in 0..iters {
                t += STEP;
                op(black_box(t));
            }
            began.elapsed()
        });
    });
    c.bench_function(&format!("{name}/2_threads"), |b| {
        b.iter_custom(|iters| support::two_threads(iters, START_NS, STEP, &op));
    });
}

fn bench_reads(c: &mut Criterion) {
    let cell = ConfigCell::new(config(7));
    both(c, "config/read/tenlives_cell", |_| {
        black_box(cell.with(|c| c.limit));
    });

    let swap = ArcSwap::from_pointee(config(7));
    both(c, "config/read/arc_swap_load", |_| {
        black_box(swap.load().limit);
    });

    let lock = RwLock::new(config(7));
    both(c, "config/read/rwlock_read", |_| {
        black_box(lock.read().expect("not poisoned").limit);
    });
}

fn admitting() -> Quota {
    Quota::per_second(1_000_000_000)
        .and_then(|q| q.with_burst(u32::MAX))
        .expect("valid quota")
}

fn bench_rate_checks(c: &mut Criterion) {
    let unchanged = Arc::new(RateLimiter::new(admitting()));
    both(c, "config/rate_check/unchanged", |t| {
        assert!(unchanged.check(Timestamp::from_nanos(t)).is_ok());
    });
    let changed = Arc::new(RateLimiter::new(admitting()));
    changed.set_quota(admitting(), Timestamp::from_nanos(START_NS));
    both(c, "config/rate_check/after_change", |t| {
        assert!(changed.check(Timestamp::from_nanos(t)).is_ok());
    });
}

/// The harness. A module of its own because `criterion_group!` makes a `pub`
/// function it cannot document; here it is not exported, so it needs no doc.
mod harness {
    use super::*;

    criterion_group! {
        name = benches;
        config = support::config();
        targets = bench_reads, bench_rate_checks
    }
}
criterion_main!(harness::benches);
