//! Multi-threaded stress tests of the circuit breaker, checking conservation:
//! no record is lost (B2), at most the configured probes are ever out at once
//! and every dropped probe frees its slot (B5, B6), and concurrent failures
//! crossing a threshold trip exactly once (B1).

use std::sync::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use tenlives_engine::breaker::{
    BreakerConfig, BreakerState, CircuitBreaker, Outcome, WindowCounts,
};
use tenlives_engine::time::{Clock, ManualClock, Timestamp};

mod common;
use common::rng;

const THREADS: usize = 4;

#[test]
fn every_record_is_counted() {
    for count_window in [true, false] {
        let b = BreakerConfig::builder().consecutive_failures(1_000_000);
        let b = if count_window {
            b.count_window(1 << 30, 1).minimum_calls(1)
        } else {
            b.time_window(Duration::from_secs(10), 10)
        };
        let breaker = CircuitBreaker::new(b.build().unwrap());
        breaker.metrics_only(Timestamp::ZERO);
        let now = Timestamp::from_nanos(1_000_000_000);
        let per_thread = 100_000;
        let failures: usize = thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let breaker = &breaker;
                    s.spawn(move || {
                        let mut next = rng(t as u64 + 1);
                        let mut failures = 0;
                        for _ in 0..per_thread {
                            let p = breaker.try_acquire(now).unwrap();
                            if next().is_multiple_of(3) {
                                failures += 1;
                                p.record(Outcome::Failure, now);
                            } else {
                                p.record(Outcome::Success, now);
                            }
                        }
                        failures
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let expected = WindowCounts {
            calls: (THREADS * per_thread) as u64,
            failures: failures as u64,
            slow: 0,
        };
        assert_eq!(
            breaker.snapshot(now).window,
            expected,
            "count window: {count_window}"
        );
    }
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
            .count_window(20, 4)
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
