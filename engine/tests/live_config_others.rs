//! Configuration changes at run time of the retry budget, the client-side
//! throttle and the adaptive limiter (`docs/live-config.md`): what their
//! state means after a change, the event each change emits, and refused
//! changes.

use std::time::Duration;

use tenlives_engine::ConfigError;
use tenlives_engine::adaptive::{AdaptiveLimiter, Aimd, Gradient, WindowConfig};
use tenlives_engine::events::{Consumer, EventKind, EventRing, Received, Slot};
use tenlives_engine::retry::{BudgetCounts, RetryBudget, RetryBudgetConfig};
use tenlives_engine::throttle::{Throttle, ThrottleConfig};
use tenlives_engine::time::Timestamp;

const SECOND: u64 = 1_000_000_000;

fn at(ns: u64) -> Timestamp {
    Timestamp::from_nanos(ns)
}

/// The payload of the one `CONFIG_CHANGED` event waiting (others skipped).
fn one_event(seen: &mut Consumer<'_, impl AsRef<[Slot]>>) -> [u64; 2] {
    let mut found = Vec::new();
    while let Some(received) = seen.try_recv() {
        match received {
            Received::Event(e) if e.kind == EventKind::CONFIG_CHANGED => found.push(e.payload),
            Received::Event(_) => {}
            Received::Lost(n) => panic!("{n} events lost"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(found.len(), 1, "one event per change: {found:?}");
    found[0]
}

fn budget_config(ratio: f64, secs: u64, buckets: u32) -> RetryBudgetConfig {
    RetryBudgetConfig::builder()
        .ratio(ratio)
        .min_per_second(0)
        .window(Duration::from_secs(secs), buckets)
        .build()
        .unwrap()
}

#[test]
fn a_budget_with_a_new_layout_carries_its_window_into_the_head_bucket() {
    let ring = EventRing::with_capacity(128).unwrap();
    let mut seen = ring.consumer();
    let budget = RetryBudget::with_sink(budget_config(0.5, 8, 8), &ring, 4);
    for s in 0..4 {
        for _ in 0..25 {
            budget.deposit(at(s * SECOND));
        }
    }
    let granted = (0..100)
        .filter(|_| budget.try_withdraw(at(3 * SECOND)))
        .count();
    assert_eq!(granted, 50);
    budget.set_config(budget_config(0.5, 2, 2), at(3 * SECOND));
    assert_eq!(
        one_event(&mut seen),
        [u64::from(EventKind::RETRY_BUDGET_EXHAUSTED.0), 100]
    );
    let both = BudgetCounts {
        deposits: 100,
        withdrawals: 50,
    };
    assert_eq!(budget.counts(at(3 * SECOND)), both, "carried whole");
    assert!(!budget.try_withdraw(at(3 * SECOND)), "still spent");
    // Counted as made at the change (bucket [3 s, 4 s)): they leave when the
    // head reaches 5 s.
    assert_eq!(budget.counts(at(4 * SECOND)), both);
    assert_eq!(budget.counts(at(5 * SECOND)), BudgetCounts::default());
}

#[test]
fn a_budget_with_the_same_layout_keeps_its_window() {
    let ring = EventRing::with_capacity(128).unwrap();
    let mut seen = ring.consumer();
    let budget = RetryBudget::with_sink(budget_config(0.1, 8, 8), &ring, 4);
    for s in 0..8 {
        budget.deposit(at(s * SECOND));
    }
    budget.set_config(budget_config(1.0, 8, 8), at(7 * SECOND));
    assert_eq!(one_event(&mut seen)[1], u64::MAX);
    assert_eq!(budget.remaining(at(7 * SECOND)), 8);
    // Still sliding by the same buckets: the deposit at 0 s leaves at 8 s.
    assert_eq!(budget.remaining(at(8 * SECOND)), 7);
    let refused = budget.update_config(
        |old| old.to_builder().window(Duration::from_secs(8), 3).build(),
        at(8 * SECOND),
    );
    assert!(
        matches!(refused, Err(ConfigError::NotPowerOfTwo { .. })),
        "{refused:?}"
    );
    assert_eq!(budget.config().buckets(), 8);
}

fn throttle_config(k: f64, secs: u64, buckets: u32) -> ThrottleConfig {
    ThrottleConfig::builder()
        .k(k)
        .window(Duration::from_secs(secs), buckets)
        .minimum_requests(1_000)
        .build()
        .unwrap()
}

#[test]
fn a_throttle_with_a_new_layout_keeps_the_requests_that_overlap_it() {
    let ring = EventRing::with_capacity(128).unwrap();
    let mut seen = ring.consumer();
    let throttle = Throttle::with_sink(throttle_config(2.0, 60, 6), &ring, 2);
    for (secs, accepted) in [(5, 3), (55, 4)] {
        for i in 0..5 {
            let ticket = throttle
                .try_admit(at(secs * SECOND))
                .expect("under the minimum");
            if i < accepted {
                ticket.accepted(at(secs * SECOND));
            } else {
                ticket.refused(at(secs * SECOND));
            }
        }
    }
    assert_eq!(throttle.counts(at(58 * SECOND)), (10, 7));
    // A 10-second window at 58 s overlaps only the bucket [50 s, 60 s).
    throttle.set_config(throttle_config(2.0, 10, 2), at(58 * SECOND));
    assert_eq!(one_event(&mut seen), [u64::from(EventKind::THROTTLED.0), 5]);
    assert_eq!(throttle.counts(at(58 * SECOND)), (5, 4));
    assert_eq!(throttle.config().k(), 2.0);
}

#[test]
fn an_adaptive_limiter_takes_new_bounds_and_keeps_its_permits() {
    let ring = EventRing::with_capacity(128).unwrap();
    let bulkhead = tenlives_engine::bulkhead::Bulkhead::with_sink(1, &ring, 6).unwrap();
    let aimd = |initial, max| Aimd::builder().limits(1, initial, max).build().unwrap();
    let window = WindowConfig::new(Duration::from_millis(100), 1).unwrap();
    let limiter = AdaptiveLimiter::from_parts(aimd(10, 100), window, at(0), bulkhead);
    let held: Vec<_> = (0..10)
        .map(|_| limiter.try_acquire(at(0)).unwrap())
        .collect();
    let mut seen = ring.consumer();
    while seen.try_recv().is_some() {}
    limiter.set_algorithm(aimd(4, 6), at(0));
    // The limit moved into the new bounds; the ten permits stay held.
    assert_eq!((limiter.limit(), limiter.in_flight()), (6, 10));
    let mut kinds = Vec::new();
    while let Some(Received::Event(e)) = seen.try_recv() {
        kinds.push((e.kind, e.payload));
    }
    assert!(
        kinds.contains(&(EventKind::BULKHEAD_LIMIT_CHANGED, [10, 6])),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(EventKind::CONFIG_CHANGED, [17, 1])),
        "{kinds:?}"
    );
    assert!(
        limiter.try_acquire(at(0)).is_err(),
        "10 in flight over a limit of 6"
    );
    drop(held);
    assert_eq!(limiter.in_flight(), 0);
}

#[test]
fn an_adaptive_window_change_moves_the_end_of_the_window_being_collected() {
    let aimd = Aimd::builder().limits(1, 10, 100).build().unwrap();
    let window = WindowConfig::new(Duration::from_millis(100), 1).unwrap();
    let limiter = AdaptiveLimiter::new(aimd, window, at(0));
    limiter.set_window(WindowConfig::new(Duration::from_secs(1), 1).unwrap(), at(0));
    let ms = |n: u64| at(n * 1_000_000);
    let permits: Vec<_> = (0..10)
        .map(|_| limiter.try_acquire(ms(0)).unwrap())
        .collect();
    for p in permits {
        p.success(ms(150)); // the old window would have ended at 100 ms
    }
    assert_eq!(limiter.limit(), 10, "the window now ends at 1 s");
    let permits: Vec<_> = (0..10)
        .map(|_| limiter.try_acquire(ms(900)).unwrap())
        .collect();
    for p in permits {
        p.success(ms(1_010));
    }
    // The first report after 1 s closed the window with 11 samples; the
    // nine after it wait for the next one.
    assert_eq!(limiter.limit(), 11);
    assert_eq!(limiter.pending_samples(), 9);
}

#[test]
fn a_gradient_limiter_keeps_what_it_measured() {
    let gradient = |max| Gradient::builder().limits(1, 20, max).build().unwrap();
    let window = WindowConfig::new(Duration::from_millis(10), 1).unwrap();
    let limiter = AdaptiveLimiter::new(gradient(100), window, at(0));
    let ms = |n: u64| at(n * 1_000_000);
    for w in 1..=30 {
        let permits: Vec<_> = (0..10)
            .map(|_| limiter.try_acquire(ms(10 * w)).unwrap())
            .collect();
        for p in permits {
            p.success(ms(10 * w + 5));
        }
    }
    let settled = limiter.limit();
    limiter.set_algorithm(gradient(1_000), ms(400));
    // Wider bounds: nothing to move, and the limit goes on from its measured
    // value instead of starting again from the initial 20.
    assert_eq!(limiter.limit(), settled);
}
