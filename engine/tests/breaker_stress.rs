//! Multi-threaded stress tests of the circuit breaker, checking conservation:
//! no record is lost (B2), a count window's counts equal its outcomes after
//! laps of concurrent overwrites (B10), at most the configured probes are ever out at once
//! and every dropped probe frees its slot (B5, B6), and concurrent failures
//! crossing a threshold trip exactly once (B1); an open breaker with scouts
//! lets exactly one through per interval (B13).

use std::sync::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use tenlives_engine::breaker::{
    BreakerConfig, BreakerConfigBuilder, BreakerState, CircuitBreaker, MAX_WINDOW_CALLS, Outcome,
    WindowCounts,
};
use tenlives_engine::time::{Clock, ManualClock, Timestamp};

mod common;
use common::rng;

const THREADS: usize = 4;

/// Records `per_thread` calls from each thread at once, a third of them
/// failing and a fifth slow; returns the failures and slow calls recorded.
fn record_concurrently(
    breaker: &CircuitBreaker,
    now: Timestamp,
    per_thread: usize,
    seed: u64,
) -> (u64, u64) {
    thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || {
                    let mut next = rng(seed + t as u64);
                    let (mut failures, mut slow) = (0, 0);
                    for _ in 0..per_thread {
                        let p = breaker.try_acquire(now).unwrap();
                        let x = next();
                        let failed = x.is_multiple_of(3);
                        let took = if (x >> 8).is_multiple_of(5) {
                            slow += 1;
                            SLOW
                        } else {
                            Duration::ZERO
                        };
                        failures += u64::from(failed);
                        let outcome = if failed {
                            Outcome::Failure
                        } else {
                            Outcome::Success
                        };
                        p.record_elapsed(outcome, took, now);
                    }
                    (failures, slow)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    })
}

const SLOW: Duration = Duration::from_millis(1);

fn measuring(window: BreakerConfigBuilder) -> CircuitBreaker {
    let breaker = CircuitBreaker::new(
        window
            .failure_rate(50.0)
            .slow_calls(50.0, SLOW)
            .minimum_calls(1)
            .build()
            .unwrap(),
    );
    breaker.metrics_only(Timestamp::ZERO);
    breaker
}

#[test]
fn every_record_is_counted() {
    let now = Timestamp::from_nanos(1_000_000_000);
    // A time window: every call is in it.
    let breaker = measuring(BreakerConfig::builder().time_window(Duration::from_secs(10), 10));
    let per_thread = 100_000;
    let (failures, slow) = record_concurrently(&breaker, now, per_thread, 1);
    let expected = window_counts((THREADS * per_thread) as u64, failures, slow);
    assert_eq!(breaker.snapshot(now).window, expected, "time window");
}

#[test]
fn a_count_window_conserves_its_counts() {
    let now = Timestamp::from_nanos(1_000_000_000);
    let n = MAX_WINDOW_CALLS;
    let breaker = measuring(BreakerConfig::builder().count_window(n));
    // Fewer calls than the window holds: all of them are in it.
    let per_thread = n as usize / THREADS - 1;
    let (failures, slow) = record_concurrently(&breaker, now, per_thread, 1);
    let expected = window_counts((THREADS * per_thread) as u64, failures, slow);
    assert_eq!(
        breaker.snapshot(now).window,
        expected,
        "nothing overwritten"
    );
    // Many laps of the window, threads overwriting each other's positions.
    record_concurrently(&breaker, now, 50_000, 11);
    let window = breaker.snapshot(now).window;
    assert_eq!(window.calls, u64::from(n));
    assert!(window.failures < u64::from(n) && window.slow < u64::from(n));
    // Then one thread overwrites the whole window with known outcomes: the
    // counts must come out exactly, so no adjustment was lost or doubled
    // under contention (a drift would stay in the counts for good).
    for i in 0..n {
        let p = breaker.try_acquire(now).unwrap();
        let outcome = if i % 2 == 0 {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        let took = if i % 4 == 0 { SLOW } else { Duration::ZERO };
        p.record_elapsed(outcome, took, now);
    }
    let expected = window_counts(u64::from(n), u64::from(n / 2), u64::from(n / 4));
    assert_eq!(breaker.snapshot(now).window, expected, "after the laps");
}

#[test]
fn half_open_never_admits_more_than_its_probes() {
    let probes = 3;
    let breaker = CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .half_open_probes(probes)
            .open_duration(Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    breaker
        .try_acquire(Timestamp::ZERO)
        .unwrap()
        .failure(Timestamp::ZERO);
    assert_eq!(breaker.state(), BreakerState::Open);
    let now = Timestamp::from_nanos(2_000_000_000);
    let out = AtomicUsize::new(0);
    let granted = AtomicUsize::new(0);
    thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..50_000 {
                    if let Ok(p) = breaker.try_acquire(now) {
                        assert!(p.is_probe());
                        let n = out.fetch_add(1, Ordering::SeqCst) + 1;
                        assert!(n <= probes as usize, "{n} probes out at once");
                        granted.fetch_add(1, Ordering::Relaxed);
                        out.fetch_sub(1, Ordering::SeqCst);
                        drop(p); // cancelled: frees the slot
                    }
                }
            });
        }
    });
    let snap = breaker.snapshot(now);
    assert_eq!(snap.state, BreakerState::HalfOpen);
    assert_eq!(
        snap.probes_admitted, 0,
        "every dropped probe gave its slot back"
    );
    assert!(granted.load(Ordering::Relaxed) >= probes as usize);
}

/// Scouts (`probe_every`): however many threads ask at once, each deadline
/// lets exactly one scout through, the breaker stays open while scouts fail,
/// and one success among many failing scouts closes it exactly once.
#[test]
fn one_scout_per_interval_however_many_ask() {
    let breaker = CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .half_open_probes(1)
            .open_duration(Duration::from_millis(100))
            .probe_every(Duration::from_millis(10))
            .build()
            .unwrap(),
    );
    breaker
        .try_acquire(Timestamp::ZERO)
        .unwrap()
        .failure(Timestamp::ZERO);
    let rounds = 200u64;
    let barrier = Barrier::new(THREADS);
    let granted: Vec<AtomicUsize> = (0..rounds).map(|_| AtomicUsize::new(0)).collect();
    thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for round in 0..rounds {
                    // Every thread at the same instant: the round's deadline.
                    let now = Timestamp::from_nanos(100_000_000 + round * 10_000_000);
                    barrier.wait();
                    for _ in 0..200 {
                        if let Ok(p) = breaker.try_acquire(now) {
                            assert!(p.is_probe());
                            granted[round as usize].fetch_add(1, Ordering::Relaxed);
                            p.failure(now); // a failed scout changes nothing
                        }
                    }
                    barrier.wait();
                }
            });
        }
    });
    for (round, g) in granted.iter().enumerate() {
        assert_eq!(g.load(Ordering::Relaxed), 1, "round {round}");
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    assert_eq!(breaker.generation(), 1, "failed scouts made no transition");
    // Many scouts out at once, from several deadlines (each waiting longer
    // for the scouts still out); they answer concurrently, one success
    // among them: closed exactly once.
    let mut scouts = Vec::new();
    let mut now = Timestamp::from_nanos(2_200_000_000);
    for _ in 0..THREADS {
        scouts.push(breaker.try_acquire(now).expect("a scout").into_raw());
        let wait = breaker.try_acquire(now).unwrap_err().retry_after().unwrap();
        now = now.saturating_add(wait);
    }
    assert_eq!(breaker.scouts_in_flight() as usize, THREADS);
    let end = Timestamp::from_nanos(3_000_000_000);
    thread::scope(|s| {
        for (i, raw) in scouts.into_iter().enumerate() {
            let breaker = &breaker;
            s.spawn(move || {
                let outcome = if i == 2 {
                    Outcome::Success
                } else {
                    Outcome::Failure
                };
                breaker.record(raw, outcome, end);
            });
        }
    });
    assert_eq!(breaker.state(), BreakerState::Closed);
    assert_eq!(breaker.generation(), 2);
    assert_eq!(
        breaker.scouts_in_flight(),
        0,
        "every scout counted out once"
    );
}

#[test]
fn concurrent_failures_trip_exactly_once() {
    let breaker = CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(2)
            .build()
            .unwrap(),
    );
    let barrier = Barrier::new(THREADS);
    let now = Timestamp::from_nanos(1);
    for _round in 0..500 {
        breaker.reset(Timestamp::ZERO);
        let generation = breaker.generation();
        thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    let p = breaker.try_acquire(now).unwrap();
                    barrier.wait();
                    p.failure(now);
                });
            }
        });
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(
            breaker.generation(),
            generation.wrapping_add(1),
            "one transition, not several"
        );
    }
}

#[test]
fn a_mixed_workload_leaves_no_phantom_probes() {
    let breaker = CircuitBreaker::new(
        BreakerConfig::builder()
            .failure_rate(50.0)
            .count_window(20)
            .minimum_calls(10)
            .consecutive_failures(5)
            .open_duration(Duration::from_micros(5))
            .half_open_probes(4)
            .build()
            .unwrap(),
    );
    let clock = ManualClock::new();
    let probes = AtomicUsize::new(0);
    thread::scope(|s| {
        for t in 0..THREADS {
            let (breaker, clock, probes) = (&breaker, &clock, &probes);
            s.spawn(move || {
                let mut next = rng(t as u64 + 7);
                for _ in 0..100_000 {
                    let now = clock.advance(Duration::from_nanos(next() % 200));
                    let Ok(p) = breaker.try_acquire(now) else {
                        continue;
                    };
                    if p.is_probe() {
                        probes.fetch_add(1, Ordering::Relaxed);
                    }
                    match next() % 10 {
                        0..=3 => p.record(Outcome::Failure, clock.now()),
                        4..=7 => p.record(Outcome::Success, clock.now()),
                        8 => p.record(Outcome::Ignored, clock.now()),
                        _ => drop(p),
                    }
                }
            });
        }
    });
    assert!(
        probes.load(Ordering::Relaxed) > 0,
        "the workload reached the half-open state"
    );
    // Nothing is in flight any more, so a half-open breaker's admitted probes
    // are exactly those that reported: no slot leaked, none double-freed.
    let snap = breaker.snapshot(clock.now());
    if snap.state == BreakerState::HalfOpen {
        assert_eq!(snap.probes_admitted, snap.probes_reported);
    }
}

/// Window totals, built field by field: the struct may grow
/// (`#[non_exhaustive]`).
fn window_counts(calls: u64, failures: u64, slow: u64) -> WindowCounts {
    let mut counts = WindowCounts::default();
    counts.calls = calls;
    counts.failures = failures;
    counts.slow = slow;
    counts
}
