//! Configuration changes of a circuit breaker at run time (`docs/live-config.md`,
//! guarantee C5): what each part of its state means after a change — the
//! window with the same layout and with a new one (shrinking, growing,
//! another kind), the consecutive-failure run, an open deadline, a half-open
//! test — the event a change emits, and a refused change.

use std::time::Duration;

use tenlives_engine::ConfigError;
use tenlives_engine::breaker::{BreakerConfig, BreakerState, CircuitBreaker, RejectReason};
use tenlives_engine::events::{EventKind, EventRing, Received};
use tenlives_engine::time::Timestamp;

const SECOND: u64 = 1_000_000_000;

fn at(ns: u64) -> Timestamp {
    Timestamp::from_nanos(ns)
}

/// Reports `n` calls at `now`, failing the first `failures` of them.
fn calls(
    breaker: &CircuitBreaker<impl tenlives_engine::events::EventSink>,
    n: u32,
    failures: u32,
    now: Timestamp,
) {
    for i in 0..n {
        let permit = breaker.try_acquire(now).expect("closed");
        if i < failures {
            permit.failure(now);
        } else {
            permit.success(now);
        }
    }
}

fn rate_breaker(percent: f64, calls: u32, minimum: u32) -> BreakerConfig {
    BreakerConfig::builder()
        .failure_rate(percent)
        .count_window(calls)
        .minimum_calls(minimum)
        .build()
        .unwrap()
}

#[test]
fn new_thresholds_judge_the_same_window() {
    let now = at(SECOND);
    let breaker = CircuitBreaker::new(rate_breaker(80.0, 20, 5));
    // Successes first, then failures: 4 of 8 failed, under 80 %.
    calls(&breaker, 4, 0, now);
    calls(&breaker, 4, 4, now);
    assert_eq!(breaker.state(), BreakerState::Closed);
    breaker.set_config(rate_breaker(40.0, 20, 5), now);
    // Same layout: the window is kept whole.
    assert_eq!(breaker.snapshot(now).window.calls, 8);
    assert_eq!(breaker.snapshot(now).window.failures, 4);
    // The next failure is judged against 40 %: 5 of 9.
    calls(&breaker, 1, 1, now);
    assert_eq!(breaker.state(), BreakerState::Open);
}

#[test]
fn a_count_window_that_shrinks_keeps_its_newest_calls() {
    let ring = EventRing::with_capacity(8).unwrap();
    let mut seen = ring.consumer();
    let now = at(SECOND);
    let breaker = CircuitBreaker::with_sink(rate_breaker(90.0, 100, 50), &ring, 3);
    // 40 calls with no failure, then 20 with 10 failures.
    calls(&breaker, 40, 0, now);
    calls(&breaker, 10, 5, now);
    calls(&breaker, 10, 5, now);
    assert_eq!(breaker.snapshot(now).window.calls, 60);
    breaker.set_config(rate_breaker(90.0, 20, 10), now);
    let window = breaker.snapshot(now).window;
    assert_eq!(
        (window.calls, window.failures),
        (20, 10),
        "the newest 20 calls, as they were"
    );
    match seen.try_recv() {
        Some(Received::Event(e)) => {
            assert_eq!(e.kind, EventKind::CONFIG_CHANGED);
            assert_eq!((e.source, e.time), (3, now));
            assert_eq!(e.payload, [u64::from(EventKind::BREAKER_OPENED.0), 20]);
        }
        other => panic!("expected CONFIG_CHANGED, got {other:?}"),
    }
    // The carried calls count: at 50 %, a 40 % rule trips at the next failure.
    breaker.set_config(rate_breaker(40.0, 20, 10), now);
    match seen.try_recv() {
        Some(Received::Event(e)) => assert_eq!(e.payload[1], u64::MAX, "layout kept"),
        other => panic!("expected CONFIG_CHANGED, got {other:?}"),
    }
    calls(&breaker, 1, 1, now);
    assert_eq!(breaker.state(), BreakerState::Open);
}

#[test]
fn a_count_window_carries_its_newest_calls_in_their_order() {
    let now = at(SECOND);
    let breaker = CircuitBreaker::new(rate_breaker(90.0, 100, 50));
    // 10 failures, then 10 successes.
    calls(&breaker, 10, 10, now);
    calls(&breaker, 10, 0, now);
    // A window of 15 takes the newest 15: 5 failures, then 10 successes.
    breaker.set_config(rate_breaker(90.0, 15, 10), now);
    let window = breaker.snapshot(now).window;
    assert_eq!((window.calls, window.failures), (15, 5));
    // The carried calls leave oldest first: each new success pushes out one
    // of the 5 failures, then the successes.
    for left in (0..5).rev() {
        calls(&breaker, 1, 0, now);
        assert_eq!(breaker.snapshot(now).window.failures, left);
    }
    assert_eq!(breaker.snapshot(now).window.calls, 15);
}

#[test]
fn a_time_window_becoming_a_count_window_carries_its_newest_calls() {
    let timed = BreakerConfig::builder()
        .failure_rate(90.0)
        .time_window(Duration::from_secs(10), 5)
        .build()
        .unwrap();
    let breaker = CircuitBreaker::new(timed);
    calls(&breaker, 6, 6, at(SECOND)); // bucket [0, 2 s): 6 failures
    calls(&breaker, 4, 0, at(3 * SECOND)); // bucket [2, 4 s): 4 successes
    // The newest 8: all of the newer bucket, and 4 of the older one's 6
    // calls, its failures in proportion (4 of 6 failed -> 4).
    breaker.set_config(rate_breaker(90.0, 8, 8), at(3 * SECOND));
    let window = breaker.snapshot(at(3 * SECOND)).window;
    assert_eq!((window.calls, window.failures), (8, 4));
    // The older bucket's calls are the oldest: 4 successes push them out.
    calls(&breaker, 4, 0, at(3 * SECOND));
    assert_eq!(breaker.snapshot(at(3 * SECOND)).window.failures, 0);
}

#[test]
fn a_time_window_that_shrinks_keeps_the_buckets_it_overlaps() {
    let window = |length: u64, buckets: u32| {
        BreakerConfig::builder()
            .failure_rate(90.0)
            .time_window(Duration::from_secs(length), buckets)
            .minimum_calls(100)
            .build()
            .unwrap()
    };
    // 60 s in 6 buckets of 10 s.
    let breaker = CircuitBreaker::new(window(60, 6));
    calls(&breaker, 4, 2, at(5 * SECOND)); // bucket [0, 10)
    calls(&breaker, 3, 1, at(12 * SECOND)); // [10, 20)
    calls(&breaker, 6, 0, at(55 * SECOND)); // [50, 60)
    assert_eq!(breaker.snapshot(at(58 * SECOND)).window.calls, 13);
    // At 58 s a window of 10 s spans [48, 58]: only the newest bucket
    // overlaps it.
    breaker.set_config(window(10, 2), at(58 * SECOND));
    let counts = breaker.snapshot(at(58 * SECOND)).window;
    assert_eq!((counts.calls, counts.failures), (6, 0));
    // They count as calls made at the change, and leave with its bucket:
    // 58 s is in [55, 60), which leaves the window at 65 s.
    assert_eq!(breaker.snapshot(at(64 * SECOND)).window.calls, 6);
    assert_eq!(breaker.snapshot(at(65 * SECOND)).window.calls, 0);
}

#[test]
fn a_window_that_grows_or_changes_kind_keeps_everything_it_had() {
    let now = at(30 * SECOND);
    let breaker = CircuitBreaker::new(rate_breaker(90.0, 20, 20));
    calls(&breaker, 12, 3, now);
    // Count -> larger count window: all 12.
    breaker.set_config(rate_breaker(90.0, 100, 20), now);
    assert_eq!(breaker.snapshot(now).window.calls, 12);
    // Count -> time window: a count window's calls carry no time, all 12.
    let timed = BreakerConfig::builder()
        .failure_rate(90.0)
        .time_window(Duration::from_secs(10), 5)
        .build()
        .unwrap();
    breaker.set_config(timed, now);
    let counts = breaker.snapshot(now).window;
    assert_eq!((counts.calls, counts.failures), (12, 3));
    // And new calls count in the new window beside them.
    calls(&breaker, 2, 0, now);
    assert_eq!(breaker.snapshot(now).window.calls, 14);
}

#[test]
fn the_consecutive_run_is_kept_and_judged_against_the_new_limit() {
    let now = at(SECOND);
    let consecutive = |n| {
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(n)
            .build()
            .unwrap()
    };
    let breaker = CircuitBreaker::new(consecutive(10));
    calls(&breaker, 6, 6, now);
    breaker.set_config(consecutive(20), now);
    calls(&breaker, 6, 6, now);
    assert_eq!(breaker.snapshot(now).consecutive_failures, 12);
    // Lowered below the run: the next failure trips.
    breaker.set_config(consecutive(5), now);
    assert_eq!(breaker.state(), BreakerState::Closed);
    calls(&breaker, 1, 1, now);
    assert_eq!(breaker.state(), BreakerState::Open);
}

#[test]
fn an_open_deadline_is_kept_and_the_next_trip_uses_the_new_duration() {
    let config = |secs| {
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(secs))
            .half_open_probes(1)
            .build()
            .unwrap()
    };
    let breaker = CircuitBreaker::new(config(10));
    calls(&breaker, 1, 1, at(0));
    breaker.set_config(config(1), at(SECOND));
    let rejected = breaker.try_acquire(at(5 * SECOND)).unwrap_err();
    assert_eq!(rejected.reason(), RejectReason::Open);
    assert_eq!(rejected.retry_after(), Some(Duration::from_secs(5)));
    // The probe fails at 10 s: open again, for the new duration.
    breaker
        .try_acquire(at(10 * SECOND))
        .expect("probe")
        .failure(at(10 * SECOND));
    let rejected = breaker.try_acquire(at(10 * SECOND)).unwrap_err();
    assert_eq!(rejected.retry_after(), Some(Duration::from_secs(1)));
}

#[test]
fn a_half_open_test_is_judged_with_the_new_probe_count() {
    let config = |probes| {
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(1))
            .half_open_probes(probes)
            .build()
            .unwrap()
    };
    let breaker = CircuitBreaker::new(config(3));
    calls(&breaker, 1, 1, at(0));
    let first = breaker.try_acquire(at(2 * SECOND)).expect("probe");
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    breaker.set_config(config(1), at(2 * SECOND));
    // One probe admitted already: the test is full.
    let full = breaker.try_acquire(at(2 * SECOND)).unwrap_err();
    assert_eq!(full.reason(), RejectReason::HalfOpenFull);
    // And its success alone closes the breaker.
    first.success(at(2 * SECOND));
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[test]
fn a_refused_change_keeps_the_configuration_in_force() {
    let now = at(SECOND);
    let breaker = CircuitBreaker::new(rate_breaker(50.0, 20, 5));
    calls(&breaker, 4, 1, now);
    let refused = breaker.update_config(|old| old.to_builder().minimum_calls(0).build(), now);
    assert_eq!(
        refused,
        Err(ConfigError::Zero {
            field: "minimum_calls"
        })
    );
    let refused = breaker.update_config(|old| old.to_builder().count_window(0).build(), now);
    assert!(matches!(refused, Err(ConfigError::Zero { .. })));
    assert_eq!(breaker.config().minimum_calls(), 5);
    assert_eq!(breaker.snapshot(now).window.calls, 4);
    // The builder round-trips every setting.
    let same = breaker.config().to_builder().build().unwrap();
    assert_eq!(format!("{same:?}"), format!("{:?}", breaker.config()));
}
