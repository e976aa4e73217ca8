//! Multi-threaded stress tests of the bulkhead and the retry budget, checking
//! conservation: permits granted = released and never more held than the
//! limit (K1, K3); retries granted never exceed what the deposits and the
//! reserve allow, and every count is kept (R2, R3).

use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::retry::{BudgetCounts, RetryBudget, RetryBudgetConfig};
use tenlives_engine::time::{Clock, ManualClock, Timestamp};

mod common;
use common::rng;

const THREADS: usize = 4;
const ROUNDS: u64 = if cfg!(debug_assertions) {
    50_000
} else {
    500_000
};

/// K1, K3 at a fixed limit: a side counter of held permits never exceeds the
/// limit; granted = released; nothing is in flight at the end.
#[test]
fn bulkhead_never_exceeds_its_limit() {
    let limit = 3;
    let b = Bulkhead::new(limit).unwrap();
    let holders = AtomicU32::new(0);
    let barrier = Barrier::new(THREADS);
    let (granted, released): (u64, u64) = thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (b, holders, barrier) = (&b, &holders, &barrier);
                s.spawn(move || {
                    let mut next = rng(t as u64 + 1);
                    let (mut granted, mut released) = (0u64, 0u64);
                    barrier.wait();
                    for _ in 0..ROUNDS {
                        let n = if next().is_multiple_of(4) { 2 } else { 1 };
                        let permit = if n == 1 {
                            b.try_acquire().ok()
                        } else {
                            b.try_acquire_many(n).ok()
                        };
                        if let Some(p) = permit {
                            granted += u64::from(n);
                            let held = holders.fetch_add(n, Ordering::SeqCst) + n;
                            assert!(held <= limit, "{held} held with a limit of {limit}");
                            holders.fetch_sub(n, Ordering::SeqCst);
                            released += u64::from(p.permits());
                            if next().is_multiple_of(2) {
                                drop(p);
                            } else {
                                b.release(p.into_raw());
                            }
                        }
                    }
                    (granted, released)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |a, x| (a.0 + x.0, a.1 + x.1))
    });
    assert_eq!(granted, released);
    assert!(granted > 0);
    assert_eq!(b.in_flight(), 0);
    assert_eq!(b.limit(), limit);
}

/// K1, K2, K3 while the limit moves: one thread switches the limit between
/// 1 and 4; the others acquire. Held permits never exceed 4 (the largest
/// limit ever in force), the in-flight count never reads above it, and
/// everything is given back.
#[test]
fn bulkhead_survives_limit_changes() {
    let b = Bulkhead::new(4).unwrap();
    let holders = AtomicU32::new(0);
    let done = AtomicBool::new(false);
    let granted = AtomicU64::new(0);
    thread::scope(|s| {
        let setter = {
            let (b, done) = (&b, &done);
            s.spawn(move || {
                let mut i = 0u32;
                while !done.load(Ordering::Relaxed) {
                    b.set_limit(if i.is_multiple_of(2) { 1 } else { 4 })
                        .unwrap();
                    i = i.wrapping_add(1);
                }
            })
        };
        let acquirers: Vec<_> = (0..THREADS - 1)
            .map(|t| {
                let (b, holders, granted) = (&b, &holders, &granted);
                s.spawn(move || {
                    let mut next = rng(t as u64 + 7);
                    for _ in 0..ROUNDS {
                        if let Ok(p) = b.try_acquire() {
                            granted.fetch_add(1, Ordering::Relaxed);
                            let held = holders.fetch_add(1, Ordering::SeqCst) + 1;
                            assert!(held <= 4, "{held} held");
                            if next().is_multiple_of(64) {
                                thread::yield_now();
                            }
                            holders.fetch_sub(1, Ordering::SeqCst);
                            drop(p);
                        }
                        let snap = b.snapshot();
                        assert!(
                            snap.in_flight <= 4 && (1..=4).contains(&snap.limit),
                            "{snap:?}"
                        );
                    }
                })
            })
            .collect();
        for a in acquirers {
            a.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
        setter.join().unwrap();
    });
    assert_eq!(b.in_flight(), 0);
    assert!(granted.load(Ordering::Relaxed) > 0);
}

/// R2, R3 in one bucket: 4 threads deposit and withdraw at the same instant.
/// Grants never exceed `floor(deposits * 20 %) + reserve` with the deposits
/// made by the end, and the budget's counts equal what the threads did.
#[test]
fn budget_grants_never_exceed_the_bound() {
    let budget = RetryBudget::new(
        RetryBudgetConfig::builder()
            .ratio_ppm(200_000)
            .min_per_second(10)
            .window(Duration::from_secs(8), 8)
            .build()
            .unwrap(),
    );
    let now = Timestamp::from_nanos(3_600_000_000_000);
    let rounds = ROUNDS / 4;
    let (deposits, granted): (u64, u64) = thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let budget = &budget;
                s.spawn(move || {
                    let mut next = rng(t as u64 + 11);
                    let (mut d, mut g) = (0u64, 0u64);
                    for _ in 0..rounds {
                        if next().is_multiple_of(3) {
                            g += u64::from(budget.try_withdraw(now));
                        } else {
                            budget.deposit(now);
                            d += 1;
                        }
                    }
                    (d, g)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |a, x| (a.0 + x.0, a.1 + x.1))
    });
    let bound = deposits * 200_000 / 1_000_000 + 80;
    assert!(granted <= bound, "{granted} granted, bound {bound}");
    assert_eq!(
        budget.counts(now),
        BudgetCounts {
            deposits,
            withdrawals: granted
        }
    );
    // Demand exceeded supply, so the budget was used up to the bound minus
    // what deposits made after the last refusals added.
    assert!(granted + deposits / 3 >= bound, "{granted} of {bound}");
}

/// R2, R3 with time moving: 3 threads deposit and withdraw on a shared
/// manual clock that a fourth advances across many buckets (and past whole
/// windows). Cut time into tiles of one window: the last grant of a tile saw
/// a window holding every grant of that tile and deposits of at most that
/// tile and the one before, so over the run grants never exceed
/// `2 * 20 % * deposits + reserve * tiles`, whatever the interleaving; and
/// the last window never holds more withdrawals than it allows.
#[test]
fn budget_conserves_while_time_moves() {
    let window = Duration::from_millis(64);
    let budget = RetryBudget::new(
        RetryBudgetConfig::builder()
            .ratio_ppm(200_000)
            .min_per_second(100)
            .window(window, 4)
            .build()
            .unwrap(),
    );
    let clock = ManualClock::starting_at(Timestamp::from_nanos(1_000_000_000));
    let start = clock.now();
    let done = AtomicBool::new(false);
    let (deposits, granted): (u64, u64) = thread::scope(|s| {
        let ticker = {
            let (clock, done) = (&clock, &done);
            s.spawn(move || {
                let mut next = rng(99);
                while !done.load(Ordering::Relaxed) {
                    let step = match next() % 16 {
                        0 => 200_000_000, // past a whole window
                        _ => next() % 2_000_000,
                    };
                    clock.advance(Duration::from_nanos(step));
                    thread::yield_now();
                }
            })
        };
        let workers: Vec<_> = (0..THREADS - 1)
            .map(|t| {
                let (budget, clock) = (&budget, &clock);
                s.spawn(move || {
                    let mut next = rng(t as u64 + 21);
                    let (mut d, mut g) = (0u64, 0u64);
                    for _ in 0..ROUNDS / 4 {
                        let now = clock.now();
                        if next().is_multiple_of(4) {
                            g += u64::from(budget.try_withdraw(now));
                        } else {
                            budget.deposit(now);
                            d += 1;
                        }
                    }
                    (d, g)
                })
            })
            .collect();
        let totals = workers
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |a, x| (a.0 + x.0, a.1 + x.1));
        done.store(true, Ordering::Relaxed);
        ticker.join().unwrap();
        totals
    });
    let span = clock.now().saturating_duration_since(start);
    let windows = (span.as_nanos() / window.as_nanos()) as u64 + 2;
    let reserve = u64::from(budget.config().reserve());
    let bound = 2 * deposits * 200_000 / 1_000_000 + reserve * windows;
    assert!(granted <= bound, "{granted} granted, bound {bound}");
    assert!(granted > 0 && deposits > 0);
}
