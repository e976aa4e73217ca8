//! `CircuitBreaker::record_needs_time` is honest: whenever it says a record
//! does not read its `now`, recording with any `now` leaves the breaker
//! exactly as recording with the true time does (same snapshot); and where
//! the time does matter (a slow-call rule, a time-based rate window, a
//! failure that opens the breaker) it says so. And the admission that reads
//! the time only where it decides (`try_acquire_raw_with`) admits and
//! refuses exactly as the one given the time, reading it at most once, and
//! never for a closed breaker without a slow-call rule.

use core::cell::Cell;
use core::time::Duration;

use proptest::prelude::*;
use tenlives_engine::breaker::{BreakerConfig, BreakerState, CircuitBreaker, Outcome};
use tenlives_engine::time::Timestamp;

fn configs() -> Vec<BreakerConfig> {
    vec![
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(3)
            .build()
            .unwrap(),
        BreakerConfig::builder()
            .failure_rate(50.0)
            .count_window(10)
            .minimum_calls(4)
            .build()
            .unwrap(),
        BreakerConfig::builder()
            .failure_rate(50.0)
            .time_window(Duration::from_secs(1), 4)
            .minimum_calls(4)
            .build()
            .unwrap(),
        BreakerConfig::builder()
            .slow_calls(50.0, Duration::from_millis(10))
            .count_window(10)
            .minimum_calls(4)
            .build()
            .unwrap(),
    ]
}

proptest! {
    #[test]
    fn a_record_said_not_to_need_the_time_ignores_it(
        which in 0usize..4,
        calls in proptest::collection::vec((0u8..3, 0u64..50_000_000), 1..60),
        skew in prop_oneof![Just(0u64), Just(u64::MAX), 0u64..u64::MAX],
    ) {
        let config = configs()[which].clone();
        let truth = CircuitBreaker::new(config.clone());
        let skewed = CircuitBreaker::new(config);
        let mut now = 0u64;
        for (kind, took) in calls {
            let outcome = match kind { 0 => Outcome::Success, 1 => Outcome::Failure, _ => Outcome::Ignored };
            let at = Timestamp::from_nanos(now);
            let end = Timestamp::from_nanos(now + took);
            match (truth.try_acquire_raw(at), skewed.try_acquire_raw(at)) {
                (Ok(a), Ok(b)) => {
                    let needs = truth.record_needs_time(&a, outcome);
                    prop_assert_eq!(needs, skewed.record_needs_time(&b, outcome));
                    truth.record(a, outcome, end);
                    let given = if needs { end } else { Timestamp::from_nanos(skew) };
                    skewed.record(b, outcome, given);
                }
                (Err(_), Err(_)) => {}
                _ => prop_assert!(false, "the two breakers diverged"),
            }
            prop_assert_eq!(
                format!("{:?}", truth.snapshot(end)),
                format!("{:?}", skewed.snapshot(end))
            );
            now += took + 1;
        }
    }
}

proptest! {
    #[test]
    fn an_admission_that_reads_the_time_lazily_decides_as_the_eager_one(
        which in 0usize..4,
        calls in proptest::collection::vec((0u8..3, 0u64..50_000_000), 1..80),
        forced in proptest::collection::vec(0u8..12, 1..80),
    ) {
        let config = configs()[which].clone();
        let slow_rule = config.slow_calls().is_some();
        let eager = CircuitBreaker::new(config.clone());
        let lazy = CircuitBreaker::new(config);
        let mut now = 0u64;
        for ((kind, took), force) in calls.into_iter().zip(forced.into_iter().cycle()) {
            // Now and then an operator forces a state, so that forced-open
            // and disabled breakers are admitted through both forms too.
            let at = Timestamp::from_nanos(now);
            match force {
                0 => { eager.force_open(at); lazy.force_open(at); }
                1 => { eager.disable(at); lazy.disable(at); }
                2 => { eager.reset(at); lazy.reset(at); }
                3 => { eager.metrics_only(at); lazy.metrics_only(at); }
                _ => {}
            }
            let outcome = match kind { 0 => Outcome::Success, 1 => Outcome::Failure, _ => Outcome::Ignored };
            let end = Timestamp::from_nanos(now + took);
            let state = lazy.state();
            let reads = Cell::new(0u32);
            let clock = || {
                reads.set(reads.get() + 1);
                at
            };
            let (a, b) = (eager.try_acquire_raw(at), lazy.try_acquire_raw_with(clock));
            prop_assert!(reads.get() <= 1, "read {} times", reads.get());
            let unread = matches!(state, BreakerState::Closed | BreakerState::Disabled | BreakerState::MetricsOnly);
            if unread && !(slow_rule && state != BreakerState::Disabled) {
                prop_assert_eq!(reads.get(), 0, "in {:?}", state);
            }
            match (a, b) {
                (Ok(a), Ok(b)) => {
                    prop_assert_eq!(a.generation(), b.generation());
                    prop_assert_eq!(a.is_probe(), b.is_probe());
                    eager.record(a, outcome, end);
                    lazy.record(b, outcome, end);
                }
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                (a, b) => prop_assert!(false, "diverged: {:?} against {:?}", a, b),
            }
            prop_assert_eq!(
                format!("{:?}", eager.snapshot(end)),
                format!("{:?}", lazy.snapshot(end))
            );
            now += took + 1;
        }
    }
}

#[test]
fn a_call_admitted_untimed_is_not_slow_when_a_slow_rule_arrives_before_its_end() {
    let at = Timestamp::ZERO;
    let b = CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(3)
            .build()
            .unwrap(),
    );
    let untimed = b
        .try_acquire_raw_with(|| panic!("a closed breaker without a slow-call rule read the time"))
        .unwrap();
    assert_eq!(untimed.admitted_at(), Timestamp::MAX);
    // Every call slow from 1 ns, over a window of one call.
    let slow = BreakerConfig::builder()
        .without_failure_rate()
        .slow_calls(100.0, Duration::from_nanos(1))
        .count_window(1)
        .minimum_calls(1)
        .build()
        .unwrap();
    b.set_config(slow, at);
    let end = at.saturating_add(Duration::from_secs(60));
    b.record(untimed, Outcome::Success, end);
    assert_eq!(
        b.state(),
        BreakerState::Closed,
        "a call of unknown duration was judged slow"
    );
    // A call admitted under the rule is timed, and a minute is slow.
    let timed = b.try_acquire_raw_with(|| at).unwrap();
    assert_eq!(timed.admitted_at(), at);
    b.record(timed, Outcome::Success, end);
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn the_time_is_needed_where_it_decides() {
    let at = Timestamp::ZERO;
    // Consecutive failures only: a success needs no time, a failure does.
    let b = CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(3)
            .build()
            .unwrap(),
    );
    let p = b.try_acquire_raw(at).unwrap();
    assert!(!b.record_needs_time(&p, Outcome::Success));
    assert!(b.record_needs_time(&p, Outcome::Failure));
    assert!(!b.record_needs_time(&p, Outcome::Ignored));
    // A slow-call rule, and a time window, need it for a success too.
    for config in [configs()[2].clone(), configs()[3].clone()] {
        let b = CircuitBreaker::new(config);
        let p = b.try_acquire_raw(at).unwrap();
        assert!(b.record_needs_time(&p, Outcome::Success));
    }
}
