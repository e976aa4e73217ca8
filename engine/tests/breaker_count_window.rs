//! A count window judges exactly the last `n` calls that reported (guarantee
//! B10 in docs/guarantees.md): for windows of 1, 7, 16, 17, 100 and 1000
//! calls, a rate at its threshold trips at exactly the call that brings it
//! there, and the oldest call leaves the window at exactly call `n + 1`.
//! Before the exact window, a count window had at most 16 buckets: a window
//! of 100 judged between 91 and 100 calls, so a failure landing in a partly
//! filled bucket with `minimum_calls` equal to the window was never judged.

use tenlives_engine::ConfigError;
use tenlives_engine::breaker::{
    BreakerConfig, BreakerState, CircuitBreaker, Outcome, WindowCounts,
};
use tenlives_engine::time::Timestamp;

const SIZES: [u32; 6] = [1, 7, 16, 17, 100, 1000];
const NOW: Timestamp = Timestamp::ZERO;

/// The failure-rate threshold in percent that `k` failures in `n` calls
/// reach and `k - 1` do not (rounded down to whole parts per million, the
/// configuration's unit).
fn percent(k: u32, n: u32) -> f64 {
    (1_000_000 * u64::from(k) / u64::from(n)) as f64 / 10_000.0
}

fn breaker(n: u32, failures_to_trip: u32) -> CircuitBreaker {
    CircuitBreaker::new(
        BreakerConfig::builder()
            .failure_rate(percent(failures_to_trip, n))
            .count_window(n)
            .minimum_calls(n)
            .build()
            .unwrap(),
    )
}

fn call(b: &CircuitBreaker, outcome: Outcome) {
    b.try_acquire(NOW).expect("closed").record(outcome, NOW);
}

fn counts(calls: u32, failures: u32) -> WindowCounts {
    // Built field by field: the struct may grow (`#[non_exhaustive]`).
    let mut counts = WindowCounts::default();
    counts.calls = calls.into();
    counts.failures = failures.into();
    counts
}

#[test]
fn the_last_of_n_calls_failing_is_judged() {
    // The case for n = 100: 99 successes, then one failure, with a
    // 1 % rule judged from 100 calls on.
    for n in SIZES {
        let b = breaker(n, 1);
        for _ in 0..n - 1 {
            call(&b, Outcome::Success);
        }
        assert_eq!(b.snapshot(NOW).window, counts(n - 1, 0), "n = {n}");
        call(&b, Outcome::Failure);
        assert_eq!(b.state(), BreakerState::Open, "n = {n}");
    }
}

#[test]
fn a_failure_below_the_minimum_is_judged_again_when_the_next_fails() {
    // Failed before the exact window as: a window of 100 in 10 buckets saw
    // 91 calls (2 failures) at the second failure and stayed closed; 1000
    // in 10 saw 901.
    for n in SIZES.into_iter().filter(|&n| n > 5) {
        let b = breaker(n, 2);
        for _ in 0..n - 5 {
            call(&b, Outcome::Success);
        }
        call(&b, Outcome::Failure); // n - 4 calls: below the minimum
        for _ in 0..4 {
            call(&b, Outcome::Success);
        }
        assert_eq!(b.snapshot(NOW).window, counts(n, 1), "n = {n}");
        call(&b, Outcome::Failure); // the last n: 2 failures
        assert_eq!(b.state(), BreakerState::Open, "n = {n}");
    }
}

#[test]
fn a_rate_trips_at_exactly_its_threshold_in_a_full_window() {
    for n in SIZES {
        let k = (n / 3).max(1);
        let b = breaker(n, k);
        for _ in 0..n {
            call(&b, Outcome::Success);
        }
        // Each failure pushes out one success: the window stays n calls.
        for j in 1..k {
            call(&b, Outcome::Failure);
            assert_eq!(b.snapshot(NOW).window, counts(n, j), "n = {n}");
            assert_eq!(b.state(), BreakerState::Closed, "n = {n}, {j} of {k}");
        }
        call(&b, Outcome::Failure);
        assert_eq!(b.state(), BreakerState::Open, "n = {n}: {k} failures");
    }
}

#[test]
fn the_oldest_call_leaves_at_exactly_call_n_plus_1() {
    for n in SIZES {
        // 100 %: every call in the window must have failed.
        let b = breaker(n, n);
        call(&b, Outcome::Success);
        for _ in 0..n - 1 {
            call(&b, Outcome::Failure);
        }
        // Calls 1..=n: the success is still the oldest in the window.
        assert_eq!(b.snapshot(NOW).window, counts(n, n - 1), "n = {n}");
        assert_eq!(b.state(), BreakerState::Closed, "n = {n}");
        call(&b, Outcome::Failure); // call n + 1 pushes the success out
        assert_eq!(b.state(), BreakerState::Open, "n = {n}");

        // And a failure that leaves stops counting at the same call (a
        // breaker that keeps the window but does not trip on failures).
        let b = CircuitBreaker::new(
            BreakerConfig::builder()
                .without_failure_rate()
                .slow_calls(100.0, core::time::Duration::from_secs(1))
                .count_window(n)
                .build()
                .unwrap(),
        );
        call(&b, Outcome::Failure);
        for _ in 0..n - 1 {
            call(&b, Outcome::Success);
        }
        assert_eq!(b.snapshot(NOW).window.failures, 1, "n = {n}");
        call(&b, Outcome::Success);
        assert_eq!(b.snapshot(NOW).window, counts(n, 0), "n = {n}");
    }
}

#[test]
fn slow_calls_leave_the_window_like_failures() {
    let n = 17;
    let b = CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .slow_calls(percent(2, n), core::time::Duration::from_millis(10))
            .count_window(n)
            .build()
            .unwrap(),
    );
    let slow = |b: &CircuitBreaker| {
        let p = b.try_acquire(NOW).unwrap();
        p.record_elapsed(Outcome::Success, core::time::Duration::from_millis(10), NOW);
    };
    slow(&b);
    for _ in 0..n - 1 {
        call(&b, Outcome::Success);
    }
    assert_eq!(b.snapshot(NOW).window.slow, 1);
    call(&b, Outcome::Success); // the slow call leaves
    slow(&b); // one slow call in the last n: under 2 / n
    assert_eq!(b.state(), BreakerState::Closed);
    slow(&b);
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn the_minimum_defaults_to_at_most_the_window() {
    // Failed before as: Err(TooLarge { field: "minimum_calls", value: 20, max: 10 }).
    let b = CircuitBreaker::new(
        BreakerConfig::builder()
            .failure_rate(50.0)
            .count_window(10)
            .build()
            .expect("a count window without minimum_calls builds"),
    );
    assert_eq!(b.config().minimum_calls(), 10);
    for _ in 0..4 {
        call(&b, Outcome::Failure);
    }
    for _ in 0..5 {
        call(&b, Outcome::Success);
    }
    assert_eq!(
        b.state(),
        BreakerState::Closed,
        "9 calls: below the minimum"
    );
    call(&b, Outcome::Failure);
    assert_eq!(b.state(), BreakerState::Open, "5 of 10");

    // An explicit minimum above the window is still refused.
    let refused = BreakerConfig::builder()
        .count_window(10)
        .minimum_calls(11)
        .build()
        .unwrap_err();
    assert_eq!(
        refused,
        ConfigError::TooLarge {
            field: "minimum_calls",
            value: 11,
            max: 10
        }
    );
}

#[test]
fn a_transition_empties_the_window() {
    let b = CircuitBreaker::new(
        BreakerConfig::builder()
            .failure_rate(50.0)
            .count_window(7)
            .half_open_probes(1)
            .open_duration(core::time::Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    for _ in 0..7 {
        call(&b, Outcome::Failure);
    }
    assert_eq!(b.state(), BreakerState::Open);
    let later = Timestamp::from_nanos(2_000_000_000);
    b.try_acquire(later).unwrap().success(later);
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.snapshot(later).window, counts(0, 0));
    for _ in 0..6 {
        call(&b, Outcome::Success);
    }
    call(&b, Outcome::Failure);
    assert_eq!(b.snapshot(NOW).window, counts(7, 1));
    assert_eq!(b.state(), BreakerState::Closed);
}
