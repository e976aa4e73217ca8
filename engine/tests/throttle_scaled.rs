//! `Throttle::try_admit_scaled`: the rejection probability scaled for a
//! request's criticality. Twins (same seed, same history) draw the same
//! number first, so their first decisions compare exactly.

use tenlives_engine::throttle::{Throttle, ThrottleConfig};
use tenlives_engine::time::Timestamp;

const NOW: Timestamp = Timestamp::from_nanos(1_000_000_000);

/// A throttle whose backend accepted one request in four: p = 0.5 at K = 2.
fn twin(seed: u64) -> Throttle {
    let t = Throttle::new(
        ThrottleConfig::builder()
            .minimum_requests(1)
            .seed(seed)
            .build()
            .unwrap(),
    );
    for i in 0..100u32 {
        // The history is made by hand: admitted at 0 % scale, never rejected.
        let ticket = t.try_admit_scaled(NOW, 0).expect("0 % never rejects");
        if i.is_multiple_of(4) {
            ticket.accepted(NOW);
        } else {
            ticket.refused(NOW);
        }
    }
    t
}

#[test]
fn scaling_orders_and_sizes_the_rejections() {
    let p = twin(0).probability(NOW);
    assert!(p > 0.4 && p < 0.6, "{p}");
    let scales = [0u32, 50, 100, 150, 200, 10_000];
    let mut rejected = [0u32; 6];
    const SEEDS: u64 = 2000;
    for seed in 0..SEEDS {
        let first: Vec<bool> = scales
            .iter()
            .map(|&pct| twin(seed).try_admit_scaled(NOW, pct).is_err())
            .collect();
        // 100 % is `try_admit` exactly.
        assert_eq!(first[2], twin(seed).try_admit(NOW).is_err());
        // Same draw: rejected at a scale means rejected at every larger one.
        for w in first.windows(2) {
            assert!(!w[0] || w[1], "seed {seed}: {first:?}");
        }
        for (r, f) in rejected.iter_mut().zip(&first) {
            *r += u32::from(*f);
        }
    }
    let rate = |i: usize| f64::from(rejected[i]) / SEEDS as f64;
    assert_eq!(rejected[0], 0, "0 % never rejects");
    assert_eq!(rejected[5], SEEDS as u32, "capped at 1");
    for (i, pct) in [(1, 0.5), (2, 1.0), (3, 1.5)] {
        let want = (p * pct).min(1.0);
        assert!(
            (rate(i) - want).abs() < 0.04,
            "{pct}: {} vs {want}",
            rate(i)
        );
    }
}
