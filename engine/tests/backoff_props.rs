//! Properties of the backoff schedules (docs/guarantees.md R5, R6):
//! exponential and linear delays never decrease and reach the cap exactly;
//! jittered delays stay within their bounds; the same seed gives the same
//! delays; `with_max_retries(n)` yields exactly `n`.

use std::time::Duration;

use proptest::prelude::*;
use tenlives_engine::retry::Backoff;

fn ns(n: u64) -> Duration {
    Duration::from_nanos(n)
}

proptest! {
    #[test]
    fn exponential_is_monotone_up_to_the_cap(
        base in 1..1_000_000_000u64,
        multiplier in 1.0..8.0f64,
        extra in 0..u64::MAX / 2,
    ) {
        let cap = base.saturating_add(extra);
        let b = Backoff::exponential(ns(base), multiplier, ns(cap)).unwrap();
        let delays: Vec<Duration> = b.iter(0).take(100).collect();
        prop_assert_eq!(delays[0], ns(base));
        for pair in delays.windows(2) {
            prop_assert!(pair[0] <= pair[1]);
        }
        prop_assert!(delays.iter().all(|&d| d <= ns(cap)));
        if multiplier >= 1.5 {
            prop_assert_eq!(*delays.last().unwrap(), ns(cap), "100 steps of 1.5x reach any cap");
        }
    }

    #[test]
    fn linear_is_monotone_up_to_the_cap(
        base in 1..1_000_000u64, step in 1..1_000_000u64, extra in 0..100_000_000u64,
    ) {
        let cap = base + extra;
        let b = Backoff::linear(ns(base), ns(step), ns(cap)).unwrap();
        let delays: Vec<u64> = b.iter(0).take(300).map(|d| d.as_nanos() as u64).collect();
        for (k, &d) in delays.iter().enumerate() {
            prop_assert_eq!(d, (base + k as u64 * step).min(cap));
        }
    }

    #[test]
    fn jitter_stays_in_bounds_and_is_seeded(
        base in 1..1_000_000_000u64,
        extra in 0..10_000_000_000u64,
        multiplier in 1.0..4.0f64,
        seed in any::<u64>(),
        n in 0..60u32,
    ) {
        let cap = base + extra;
        let decorrelated = Backoff::decorrelated_jitter(ns(base), ns(cap)).unwrap().with_max_retries(n);
        let full = Backoff::full_jitter(ns(base), multiplier, ns(cap)).unwrap().with_max_retries(n);
        let exp = Backoff::exponential(ns(base), multiplier, ns(cap)).unwrap();
        let d: Vec<Duration> = decorrelated.iter(seed).collect();
        prop_assert_eq!(d.len(), n as usize);
        let mut previous = ns(base);
        for &x in &d {
            prop_assert!(ns(base) <= x && x <= ns(cap));
            prop_assert!(x <= previous * 3, "at most 3x the previous delay");
            previous = x;
        }
        prop_assert_eq!(&d, &decorrelated.iter(seed).collect::<Vec<_>>());
        let f: Vec<Duration> = full.iter(seed).collect();
        prop_assert_eq!(f.len(), n as usize);
        for (x, ceiling) in f.iter().zip(exp.iter(0)) {
            prop_assert!(*x <= ceiling);
        }
        prop_assert_eq!(&f, &full.iter(seed).collect::<Vec<_>>());
    }
}

#[test]
fn different_seeds_give_different_jitter() {
    let b = Backoff::decorrelated_jitter(Duration::from_millis(10), Duration::from_secs(60))
        .unwrap()
        .with_max_retries(8);
    let a: Vec<_> = b.iter(1).collect();
    let c: Vec<_> = b.iter(2).collect();
    assert_ne!(a, c);
}
