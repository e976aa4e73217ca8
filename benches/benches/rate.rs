//! The GCRA rate limiter, tenlives beside governor 0.10.
//!
//! What is measured, per operation, each subject on 1 thread (`1_thread`)
//! and on 2 threads sharing one limiter (`2_threads`, reported as nanoseconds
//! per operation per thread: the wall time for both threads to do `iters`
//! operations each, divided by `iters`):
//!
//! - `rate/check_admitted`: one token taken by a direct limiter whose quota
//!   admits every request: 10^9 tokens a second, a burst of 2^32 - 1 (4.3 s
//!   worth, so that even a clock standing still for a whole criterion batch
//!   never runs it dry). Beside it, the floors: one `fetch_add(1, Relaxed)`
//!   on a shared `AtomicU64`, and one compare-and-swap (a load and one
//!   `compare_exchange` from it, not retried), the write every GCRA check
//!   makes on the 64-bit state; `floor_cas_128` is the same on a
//!   `portable_atomic::AtomicU128`, the write on the 128-bit state.
//!   `tenlives` runs on the 64-bit state (10^9 a second: a whole-nanosecond
//!   interval); `tenlives_uneven_rate` (1 thread only) is tenlives at
//!   999 999 937 tokens a second, an interval that is not a whole number of
//!   nanoseconds, so on the 128-bit state; `tenlives_fractional_rate`
//!   (1 thread only) at 750 000 000 a second, an interval of 4/3 ns, on the
//!   scaled 64-bit state (`TAT·3`, `docs/rate-limiter.md`).
//! - `rate/check_refused`: one token refused by a direct limiter with one
//!   token an hour, taken before the run.
//! - `rate/check_n8`: 8 tokens taken at once, all or none, admitted (the
//!   quota of `check_admitted`).
//! - `rate/keyed_1k`, `rate/keyed_100k`: one token taken from one key's
//!   limiter (the quota of `check_admitted` per key), the keys being the
//!   integers below 1 000 or 100 000, visited every one once per round in
//!   a scattered order (a stride of 7 919, `support/keyed_driver.rs`: not
//!   the order they were inserted in, which tenlives' arena would serve from
//!   consecutive lines); on 2 threads, the second thread starts half-way
//!   round. Every key is checked once before
//!   the run, and the benches assert that every key is still tracked after
//!   it (nothing evicted and inserted again; governor's map keeps every key
//!   anyway). The tenlives table's capacity is twice the number of keys, so
//!   that its free list stays above the quarter below which inserts sweep:
//!   under the admitting quota a key is evictable (its bucket full again)
//!   1 ns after its check, and with a clock that moves, a full table would
//!   evict and insert keys all along, a different job from governor's
//!   (whose map keeps every key). (A table of exactly the keys, filled at
//!   one instant, refuses a key with `TableFull` only when fifteen keys land
//!   in one bucket of fourteen cells, about one key in 5·10^8:
//!   `docs/rate-limiter.md`.)
//!
//! Every operation asserts its outcome (admitted or refused), so both crates
//! are always compared on the same branch.
//!
//! Clocks. tenlives never reads a clock: `tenlives` is given `now`, a counter
//! advanced by 20 ns per operation (at most 16 tokens of the 20 that appear
//! in that time are taken, so the admitting quota never runs dry). Rows
//! named `tenlives_quanta_clock` and `tenlives_monotonic_clock` read a clock
//! on every operation instead: quanta's TSC clock exactly as governor's
//! default clock reads it (`Clock::raw` then `delta_as_nanos`), or the
//! engine's `MonotonicClock` (`Instant::elapsed`). governor reads its clock
//! inside every check: `governor_quanta_clock` is `RateLimiter::direct` with
//! its default clock (quanta, a TSC read); `governor_fake_clock` is
//! `RateLimiter::direct_with_clock` with `FakeRelativeClock`, its cheapest
//! clock (one relaxed load), which the bench moves forward by the span of
//! each batch before timing it. For the keyed limiters `governor_default`
//! is `RateLimiter::keyed` (dashmap, quanta clock, std's SipHash hasher) and
//! `governor_fake_clock_foldhash` is `RateLimiter::dashmap_with_clock_and_hasher`
//! with `FakeRelativeClock` and the hasher tenlives uses (foldhash), so that
//! the comparison is not one of clocks or of hash functions. The keyed rows
//! that read a real clock on every call, the way a service calls them, are
//! `tenlives_quanta_clock` (quanta's TSC read as above, foldhash) beside
//! `governor_quanta_clock_foldhash` (`dashmap_with_clock_and_hasher` with
//! governor's default `QuantaClock` and foldhash): a serialising clock read
//! per call exposes the cache misses of a large table that a frozen clock
//! hides.

use std::cell::Cell;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use governor::clock::FakeRelativeClock;
use tenlives_engine::rate::{KeyedConfig, KeyedRateLimiter, Quota, RateLimiter};
use tenlives_engine::time::{Clock, MonotonicClock, Timestamp};

#[path = "support/keyed_driver.rs"]
mod keyed_driver;
mod support;
use keyed_driver::{START_NS, STEP, keyed_one_thread, next_key};

/// The admitting quota: tokens a second.
const RATE: u32 = 1_000_000_000;

/// The admitting quota: the burst.
const BURST: u32 = u32::MAX;

/// Tokens per `check_n`.
const N: u32 = 8;

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("non-zero")
}

/// The admitting quota, for tenlives.
fn admitting() -> Quota {
    Quota::per_second(RATE)
        .and_then(|q| q.with_burst(BURST))
        .expect("valid quota")
}

/// The admitting quota, for governor.
fn governor_admitting() -> governor::Quota {
    governor::Quota::per_second(nonzero(RATE)).allow_burst(nonzero(BURST))
}

/// A rate that does not divide a second: 999 999 937 (a prime) tokens a
/// second, so the grid takes its general path (`a != 1`, see
/// `engine/src/rate/quota.rs`) where the admitting quota takes the shortcut.
fn admitting_uneven() -> Quota {
    Quota::per_second(999_999_937)
        .and_then(|q| q.with_burst(BURST))
        .expect("valid quota")
}

/// 750 000 000 tokens a second: an interval of 4/3 ns, a fraction small
/// enough for the scaled 64-bit cell (`TAT·3`).
fn admitting_fractional() -> Quota {
    Quota::per_second(750_000_000)
        .and_then(|q| q.with_burst(BURST))
        .expect("valid quota")
}

/// quanta's clock read exactly as governor's default clock reads it.
struct QuantaTsc(quanta::Clock);

impl Clock for QuantaTsc {
    #[inline]
    fn now(&self) -> Timestamp {
        Timestamp::from_nanos(self.0.delta_as_nanos(0, self.0.raw()))
    }
}

/// Asserts that a request had the outcome its bench is about.
#[inline(always)]
fn expect<const ADMITTED: bool>(admitted: bool) {
    assert_eq!(admitted, ADMITTED, "the bench lost its branch");
}

/// Moves governor's fake clock over the span of a batch of `iters`
/// operations per thread, before the batch is timed.
fn advance(fake: Option<&FakeRelativeClock>, iters: u64) {
    if let Some(clock) = fake {
        clock.advance(Duration::from_nanos(iters * STEP));
    }
}

/// `op` on 1 thread, time advancing [`STEP`] ns per operation from `clock`.
fn one_thread(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    clock: &Cell<u64>,
    fake: Option<&FakeRelativeClock>,
    op: &(impl Fn(u64) + Sync),
) {
    group.bench_function(format!("{name}/1_thread"), |b| {
        b.iter_custom(|iters| {
            let start = clock.get();
            clock.set(start + iters * STEP);
            advance(fake, iters);
            let began = Instant::now();
            let mut t = start;
            for _ in 0..iters {
                t += STEP;
                op(black_box(t));
            }
            began.elapsed()
        });
    });
}

/// `op` on 1 thread and on 2 threads.
///
/// Criterion calls each routine several times (warm-up, samples); the
/// stepped clock lives outside them so that time never goes back between
/// calls.
fn both(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    fake: Option<&FakeRelativeClock>,
    op: impl Fn(u64) + Sync,
) {
    let clock = Cell::new(START_NS);
    one_thread(group, name, &clock, fake, &op);
    group.bench_function(format!("{name}/2_threads"), |b| {
        b.iter_custom(|iters| {
            let start = clock.get();
            clock.set(start + iters * STEP);
            advance(fake, iters);
            support::two_threads(iters, start, STEP, &op)
        });
    });
}

/// A compare-and-swap: the write of a GCRA check, without its decision.
fn cas(word: &AtomicU64) {
    let seen = word.load(Ordering::Relaxed);
    black_box(word.compare_exchange(seen, seen + 1, Ordering::Relaxed, Ordering::Relaxed)).ok();
}

fn cas_128(word: &portable_atomic::AtomicU128) {
    let seen = word.load(Ordering::Relaxed);
    black_box(word.compare_exchange(seen, seen + 1, Ordering::Relaxed, Ordering::Relaxed)).ok();
}

fn bench_check_admitted(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate/check_admitted");

    let word = AtomicU64::new(0);
    both(&mut group, "floor_fetch_add", None, |_| {
        black_box(word.fetch_add(1, Ordering::Relaxed));
    });
    both(&mut group, "floor_cas", None, |_| cas(&word));
    let word_128 = portable_atomic::AtomicU128::new(0);
    both(&mut group, "floor_cas_128", None, |_| cas_128(&word_128));

    let limiter = RateLimiter::new(admitting());
    both(&mut group, "tenlives", None, |t| {
        let r = limiter.check(Timestamp::from_nanos(t));
        expect::<true>(black_box(r).is_ok());
    });

    let limiter = RateLimiter::new(admitting_uneven());
    one_thread(
        &mut group,
        "tenlives_uneven_rate",
        &Cell::new(START_NS),
        None,
        &|t| {
            let r = limiter.check(Timestamp::from_nanos(t));
            expect::<true>(black_box(r).is_ok());
        },
    );

    let limiter = RateLimiter::new(admitting_fractional());
    one_thread(
        &mut group,
        "tenlives_fractional_rate",
        &Cell::new(START_NS),
        None,
        &|t| {
            let r = limiter.check(Timestamp::from_nanos(t));
            expect::<true>(black_box(r).is_ok());
        },
    );

    let limiter = RateLimiter::new(admitting());
    let tsc = QuantaTsc(quanta::Clock::new());
    both(&mut group, "tenlives_quanta_clock", None, |_| {
        let r = limiter.check(tsc.now());
        expect::<true>(black_box(r).is_ok());
    });

    let limiter = RateLimiter::new(admitting());
    let monotonic = MonotonicClock::new();
    both(&mut group, "tenlives_monotonic_clock", None, |_| {
        let r = limiter.check(monotonic.now());
        expect::<true>(black_box(r).is_ok());
    });

    let limiter = governor::RateLimiter::direct(governor_admitting());
    both(&mut group, "governor_quanta_clock", None, |_| {
        let r = limiter.check();
        expect::<true>(black_box(r).is_ok());
    });

    let fake = FakeRelativeClock::default();
    let limiter = governor::RateLimiter::direct_with_clock(governor_admitting(), fake.clone());
    both(&mut group, "governor_fake_clock", Some(&fake), |_| {
        let r = limiter.check();
        expect::<true>(black_box(r).is_ok());
    });

    group.finish();
}

fn bench_check_refused(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate/check_refused");
    let start = Timestamp::from_nanos(START_NS);

    let limiter = RateLimiter::new(Quota::per_hour(1).expect("valid quota"));
    limiter.check(start).expect("a fresh limiter has a token");
    both(&mut group, "tenlives", None, |t| {
        let r = limiter.check(Timestamp::from_nanos(t));
        expect::<false>(black_box(r).is_ok());
    });

    let limiter = governor::RateLimiter::direct(governor::Quota::per_hour(nonzero(1)));
    limiter.check().expect("a fresh limiter has a token");
    both(&mut group, "governor_quanta_clock", None, |_| {
        let r = limiter.check();
        expect::<false>(black_box(r).is_ok());
    });

    let fake = FakeRelativeClock::default();
    let limiter = governor::RateLimiter::direct_with_clock(
        governor::Quota::per_hour(nonzero(1)),
        fake.clone(),
    );
    limiter.check().expect("a fresh limiter has a token");
    both(&mut group, "governor_fake_clock", Some(&fake), |_| {
        let r = limiter.check();
        expect::<false>(black_box(r).is_ok());
    });

    group.finish();
}

fn bench_check_n(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate/check_n8");

    let limiter = RateLimiter::new(admitting());
    both(&mut group, "tenlives", None, |t| {
        let r = limiter.check_n(N, Timestamp::from_nanos(t));
        expect::<true>(black_box(r).is_ok());
    });

    let limiter = governor::RateLimiter::direct(governor_admitting());
    both(&mut group, "governor_quanta_clock", None, |_| {
        let r = limiter.check_n(nonzero(N));
        expect::<true>(matches!(black_box(r), Ok(Ok(()))));
    });

    let fake = FakeRelativeClock::default();
    let limiter = governor::RateLimiter::direct_with_clock(governor_admitting(), fake.clone());
    both(&mut group, "governor_fake_clock", Some(&fake), |_| {
        let r = limiter.check_n(nonzero(N));
        expect::<true>(matches!(black_box(r), Ok(Ok(()))));
    });

    group.finish();
}

/// Runs `op(key, t)` `iters` times on each of 2 threads, started together at
/// a barrier, with time going from `start` by [`STEP`] and keys going round
/// `0..keys`, the second thread starting half-way round; returns the wall
/// time from the first start to the last end.
fn two_threads_keyed(
    iters: u64,
    start: u64,
    keys: u64,
    op: &(impl Fn(u64, u64) + Sync),
) -> Duration {
    keyed_driver::assert_stride_fits(keys);
    let barrier = Barrier::new(2);
    let spans: Vec<(Instant, Instant)> = thread::scope(|scope| {
        let workers: Vec<_> = (0..2u64)
            .map(|lane| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut key = lane * keys / 2;
                    barrier.wait();
                    let began = Instant::now();
                    let mut t = start;
                    for _ in 0..iters {
                        t += STEP;
                        key = next_key(key, keys);
                        op(black_box(key), black_box(t));
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

/// `op(key, t)` on 1 thread and on 2 threads, over keys `0..keys`.
fn keyed_both(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    keys: u64,
    fake: Option<&FakeRelativeClock>,
    op: impl Fn(u64, u64) + Sync,
) {
    let clock = Cell::new(START_NS);
    keyed_one_thread(group, &format!("{name}/1_thread"), keys, &clock, fake, &op);
    group.bench_function(format!("{name}/2_threads"), |b| {
        b.iter_custom(|iters| {
            let start = clock.get();
            clock.set(start + iters * STEP);
            advance(fake, iters);
            two_threads_keyed(iters, start, keys, &op)
        });
    });
}

fn bench_keyed(c: &mut Criterion, keys: u64, label: &str) {
    let mut group = c.benchmark_group(format!("rate/keyed_{label}"));
    let start = Timestamp::from_nanos(START_NS);
    let count = usize::try_from(keys).expect("fits");

    let limiter = KeyedRateLimiter::new(KeyedConfig::new(admitting(), 2 * count).expect("valid"));
    for key in 0..keys {
        limiter
            .check_key(&key, start)
            .expect("a new key has tokens");
    }
    assert_eq!(limiter.in_use(), count);
    keyed_both(&mut group, "tenlives", keys, None, |key, t| {
        let r = limiter.check_key(&key, Timestamp::from_nanos(t));
        expect::<true>(black_box(r).is_ok());
    });
    assert_eq!(limiter.in_use(), count, "no key was evicted");

    // The same, reading quanta's TSC on every call as governor's default
    // clock does (the keys inserted at that clock's time).
    let tsc = QuantaTsc(quanta::Clock::new());
    let limiter = KeyedRateLimiter::new(KeyedConfig::new(admitting(), 2 * count).expect("valid"));
    for key in 0..keys {
        limiter
            .check_key(&key, tsc.now())
            .expect("a new key has tokens");
    }
    assert_eq!(limiter.in_use(), count, "no key was evicted while filling");
    keyed_both(&mut group, "tenlives_quanta_clock", keys, None, |key, _| {
        let r = limiter.check_key(&key, tsc.now());
        expect::<true>(black_box(r).is_ok());
    });
    assert_eq!(limiter.in_use(), count, "no key was evicted");

    let limiter = governor::RateLimiter::dashmap_with_clock_and_hasher(
        governor_admitting(),
        governor::clock::QuantaClock::default(),
        foldhash::fast::RandomState::default(),
    );
    for key in 0..keys {
        limiter.check_key(&key).expect("a new key has tokens");
    }
    keyed_both(
        &mut group,
        "governor_quanta_clock_foldhash",
        keys,
        None,
        |key, _| {
            let r = limiter.check_key(&key);
            expect::<true>(black_box(r).is_ok());
        },
    );
    assert_eq!(limiter.len(), count);

    let limiter = governor::RateLimiter::keyed(governor_admitting());
    for key in 0..keys {
        limiter.check_key(&key).expect("a new key has tokens");
    }
    keyed_both(&mut group, "governor_default", keys, None, |key, _| {
        let r = limiter.check_key(&key);
        expect::<true>(black_box(r).is_ok());
    });
    assert_eq!(limiter.len(), count);

    let fake = FakeRelativeClock::default();
    let limiter = governor::RateLimiter::dashmap_with_clock_and_hasher(
        governor_admitting(),
        fake.clone(),
        foldhash::fast::RandomState::default(),
    );
    for key in 0..keys {
        limiter.check_key(&key).expect("a new key has tokens");
    }
    keyed_both(
        &mut group,
        "governor_fake_clock_foldhash",
        keys,
        Some(&fake),
        |key, _| {
            let r = limiter.check_key(&key);
            expect::<true>(black_box(r).is_ok());
        },
    );
    assert_eq!(limiter.len(), count);

    group.finish();
}

fn bench_keyed_1k(c: &mut Criterion) {
    bench_keyed(c, 1_000, "1k");
}

fn bench_keyed_100k(c: &mut Criterion) {
    bench_keyed(c, 100_000, "100k");
}

/// The harness. A module of its own because `criterion_group!` makes a `pub`
/// function it cannot document; here it is not exported, so it needs no doc.
mod harness {
    use super::*;

    criterion_group! {
        name = benches;
        config = support::config();
        targets =
            bench_check_admitted,
            bench_check_refused,
            bench_check_n,
            bench_keyed_1k,
            bench_keyed_100k
    }
}
criterion_main!(harness::benches);
