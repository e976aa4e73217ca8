//! `CircuitBreaker::record_needs_time` is honest: whenever it says a record
//! does not read its `now`, recording with any `now` leaves the breaker
//! exactly as recording with the true time does (same snapshot); and where
//! the time does matter (a slow-call rule, a time-based rate window, a
//! failure that opens the breaker) it says so.

use core::time::Duration;

use proptest::prelude::*;
use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker, Outcome};
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
