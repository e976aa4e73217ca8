//! Model: a retry budget, a throttle and an adaptive limiter restored from
//! a snapshot of `x` answer every later operation as `x` does (grants,
//! refusals, counts, probabilities, limits), on a restoring clock with
//! another origin and with wall-clock time down between snapshot and
//! restore; a damaged snapshot is a typed error and changes nothing.
//!
//! Invariants checked (docs/guarantees.md): D1, D2, D3.

use core::time::Duration;

use proptest::prelude::*;
use tenlives_engine::adaptive::{ADAPTIVE_SNAPSHOT_MAX, AdaptiveLimiter, Gradient, WindowConfig};
use tenlives_engine::retry::{BUDGET_SNAPSHOT_MAX, RetryBudget, RetryBudgetConfig};
use tenlives_engine::snapshot::{SnapshotError, WallTime};
use tenlives_engine::throttle::{THROTTLE_SNAPSHOT_MAX, Throttle, ThrottleConfig};
use tenlives_engine::time::Timestamp;

fn at(origin: u64, ms: u64) -> Timestamp {
    Timestamp::from_nanos(origin + ms * 1_000_000)
}

const WALL: u64 = 1_000_000_000_000;

/// Every way to damage `buf[..n]`: cut, flip up to three bits, garbage.
fn damaged(
    buf: &[u8],
    cut: prop::sample::Index,
    flips: &[(prop::sample::Index, u8)],
    garbage: &[u8],
) -> Vec<Vec<u8>> {
    let n = buf.len();
    let mut flipped = buf.to_vec();
    let mut seen = std::collections::BTreeSet::new();
    for (i, bit) in flips {
        let i = i.index(n);
        if seen.insert((i, *bit)) {
            flipped[i] ^= 1 << bit;
        }
    }
    let mut fake = b"TLSN".to_vec();
    fake.extend_from_slice(garbage);
    vec![
        buf[..cut.index(n)].to_vec(),
        flipped,
        garbage.to_vec(),
        fake,
    ]
}

#[derive(Clone, Debug)]
enum BudgetOp {
    Deposit,
    Withdraw,
    Advance(u64),
}

fn budget_op() -> impl Strategy<Value = BudgetOp> {
    prop_oneof![
        5 => Just(BudgetOp::Deposit),
        3 => Just(BudgetOp::Withdraw),
        2 => prop_oneof![0..100u64, 0..3_000u64].prop_map(BudgetOp::Advance),
    ]
}

fn budget_config() -> impl Strategy<Value = RetryBudgetConfig> {
    (1..500u32, 0..5u32, 1..5u64, 0..4u32).prop_map(|(ratio_permille, min, secs, log2)| {
        RetryBudgetConfig::builder()
            .ratio(f64::from(ratio_permille) / 1000.0)
            .min_per_second(min)
            .window(Duration::from_secs(secs), 1 << log2)
            .build()
            .unwrap()
    })
}

fn budget_apply(b: &RetryBudget, op: &BudgetOp, now: Timestamp) -> Option<bool> {
    match op {
        BudgetOp::Deposit => {
            b.deposit(now);
            None
        }
        BudgetOp::Withdraw => Some(b.try_withdraw(now)),
        BudgetOp::Advance(_) => None,
    }
}

#[derive(Clone, Debug)]
enum ThrottleOp {
    Admit { accepted: bool },
    Advance(u64),
}

fn throttle_op() -> impl Strategy<Value = ThrottleOp> {
    prop_oneof![
        6 => prop_oneof![1 => Just(true), 2 => Just(false)].prop_map(|accepted| ThrottleOp::Admit { accepted }),
        2 => prop_oneof![0..100u64, 0..3_000u64].prop_map(ThrottleOp::Advance),
    ]
}

fn throttle_config() -> impl Strategy<Value = ThrottleConfig> {
    (1.0..3.0f64, 1..5u64, 1..6u32, 0..20u32, any::<u64>()).prop_map(
        |(k, secs, buckets, min, seed)| {
            ThrottleConfig::builder()
                .k(k)
                .window(Duration::from_secs(secs * u64::from(buckets)), buckets)
                .minimum_requests(min)
                .seed(seed)
                .build()
                .unwrap()
        },
    )
}

fn throttle_apply(t: &Throttle, op: &ThrottleOp, now: Timestamp) -> String {
    match op {
        ThrottleOp::Admit { accepted } => match t.try_admit(now) {
            Ok(ticket) => {
                if *accepted {
                    ticket.accepted(now)
                } else {
                    ticket.refused(now)
                }
                "admitted".into()
            }
            Err(e) => format!("throttled {}", e.probability()),
        },
        ThrottleOp::Advance(_) => String::new(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn a_restored_retry_budget_answers_as_the_original(
        config in budget_config(),
        before in proptest::collection::vec(budget_op(), 0..150),
        after in proptest::collection::vec(budget_op(), 1..150),
        down_ms in prop_oneof![Just(0u64), 0..6_000u64],
        laps in 1..5u64,
        start_ms in 0..5_000u64,
    ) {
        // The new clock is a whole number of windows (60 s) plus the time
        // down away from the old one: its bucket boundaries fall where the
        // old clock's would have, so the restore can be exact (with other
        // phases a restored bucket is off by less than one bucket).
        let origin = laps * 60_000_000_000 + down_ms * 1_000_000;
        let x = RetryBudget::new(config);
        let mut ms = start_ms;
        for op in &before {
            if let BudgetOp::Advance(d) = op { ms += d; }
            budget_apply(&x, op, at(0, ms));
        }
        let mut buf = [0u8; BUDGET_SNAPSHOT_MAX];
        let n = x.save_state(&mut buf, at(0, ms), WallTime::from_unix_nanos(WALL)).unwrap();
        let y = RetryBudget::new(config);
        y.deposit(at(origin, 0));
        let later = WallTime::from_unix_nanos(WALL + down_ms * 1_000_000);
        y.restore_state(&buf[..n], at(origin, ms), later).unwrap();
        let (mut xms, mut yms) = (ms + down_ms, ms);
        prop_assert_eq!(x.counts(at(0, xms)), y.counts(at(origin, yms)));
        for op in &after {
            if let BudgetOp::Advance(d) = op { xms += d; yms += d; }
            let a = budget_apply(&x, op, at(0, xms));
            let b = budget_apply(&y, op, at(origin, yms));
            prop_assert_eq!(a, b, "after {:?}", op);
            prop_assert_eq!(x.counts(at(0, xms)), y.counts(at(origin, yms)));
        }
    }

    #[test]
    fn a_restored_throttle_answers_as_the_original(
        config in throttle_config(),
        before in proptest::collection::vec(throttle_op(), 0..150),
        after in proptest::collection::vec(throttle_op(), 1..150),
        down_ms in prop_oneof![Just(0u64), 0..6_000u64],
        laps in 1..5u64,
        start_ms in 0..5_000u64,
    ) {
        // As for the retry budget (60 s: a whole number of every generated
        // bucket length, 1..5 s).
        let origin = laps * 60_000_000_000 + down_ms * 1_000_000;
        let x = Throttle::new(config);
        let mut ms = start_ms;
        for op in &before {
            if let ThrottleOp::Advance(d) = op { ms += d; }
            throttle_apply(&x, op, at(0, ms));
        }
        let mut buf = [0u8; THROTTLE_SNAPSHOT_MAX];
        let n = x.save_state(&mut buf, at(0, ms), WallTime::from_unix_nanos(WALL)).unwrap();
        let y = Throttle::new(config);
        for _ in 0..3 {
            let _ = y.try_admit(at(origin, ms)).map(|t| t.refused(at(origin, ms)));
        }
        let later = WallTime::from_unix_nanos(WALL + down_ms * 1_000_000);
        y.restore_state(&buf[..n], at(origin, ms), later).unwrap();
        let (mut xms, mut yms) = (ms + down_ms, ms);
        prop_assert_eq!(x.counts(at(0, xms)), y.counts(at(origin, yms)));
        for op in &after {
            if let ThrottleOp::Advance(d) = op { xms += d; yms += d; }
            let a = throttle_apply(&x, op, at(0, xms));
            let b = throttle_apply(&y, op, at(origin, yms));
            prop_assert_eq!(a, b, "after {:?}", op);
            prop_assert_eq!(x.counts(at(0, xms)), y.counts(at(origin, yms)));
        }
    }

    #[test]
    fn a_restored_adaptive_limiter_answers_as_the_original(
        rtts in proptest::collection::vec((0..6u32, 1..200u64, any::<bool>()), 1..200),
        after in proptest::collection::vec((0..6u32, 1..200u64, any::<bool>()), 1..200),
        down_ms in prop_oneof![Just(0u64), 0..300u64],
    ) {
        let gradient = || Gradient::builder().limits(1, 10, 100).long_term(10, 2).probe_every(7).build().unwrap();
        let window = WindowConfig::new(Duration::from_millis(100), 1).unwrap();
        let x = AdaptiveLimiter::new(gradient(), window, at(0, 0));
        // Each step: `k` calls admitted together, all taking `rtt` ms (or
        // dropped), then time moves on by `rtt`.
        let step = |l: &AdaptiveLimiter<Gradient>, origin: u64, ms: &mut u64, &(k, rtt, drop): &(u32, u64, bool)| {
            let permits: Vec<_> = (0..k).filter_map(|_| l.try_acquire(at(origin, *ms)).ok()).collect();
            let admitted = permits.len();
            *ms += rtt;
            for p in permits {
                if drop { p.dropped(at(origin, *ms)) } else { p.success(at(origin, *ms)) }
            }
            (admitted, l.limit())
        };
        let mut ms = 0;
        for s in &rtts {
            step(&x, 0, &mut ms, s);
        }
        // Close the window with one more call, so that no sample is pending
        // (they are not part of a snapshot).
        ms += 100;
        step(&x, 0, &mut ms, &(1, 1, false));
        prop_assert_eq!(x.pending_samples(), 0);
        let mut buf = [0u8; ADAPTIVE_SNAPSHOT_MAX];
        let n = x.save_state(&mut buf, at(0, ms), WallTime::from_unix_nanos(WALL)).unwrap();
        let origin = 1 << 40;
        let y = AdaptiveLimiter::new(gradient(), window, at(origin, 0));
        // Used before the restore: its pending samples must not count.
        let mut y_ms = 0;
        step(&y, origin, &mut y_ms, &(3, 50, true));
        let later = WallTime::from_unix_nanos(WALL + down_ms * 1_000_000);
        y.restore_state(&buf[..n], at(origin, ms), later).unwrap();
        prop_assert_eq!(x.limit(), y.limit());
        let (mut xms, mut yms) = (ms + down_ms, ms);
        for s in &after {
            let a = step(&x, 0, &mut xms, s);
            let b = step(&y, origin, &mut yms, s);
            prop_assert_eq!(a, b, "after {:?}", s);
        }
    }

    #[test]
    fn damaged_snapshots_are_refused_and_change_nothing(
        cut in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0..8u8), 1..4),
        garbage in proptest::collection::vec(any::<u8>(), 0..200),
        deposits in 1..50u32,
    ) {
        let now = at(0, 5_000);
        let wall = WallTime::from_unix_nanos(WALL);

        let config = RetryBudgetConfig::builder().ratio(0.2).build().unwrap();
        let b = RetryBudget::new(config);
        for _ in 0..deposits { b.deposit(now); }
        let mut buf = [0u8; BUDGET_SNAPSHOT_MAX];
        let n = b.save_state(&mut buf, now, wall).unwrap();
        let target = RetryBudget::new(config);
        target.deposit(now);
        let before = target.counts(now);
        for bytes in damaged(&buf[..n], cut, &flips, &garbage) {
            prop_assert!(target.restore_state(&bytes, now, wall).is_err());
            prop_assert_eq!(target.counts(now), before);
        }

        let config = ThrottleConfig::builder().build().unwrap();
        let t = Throttle::new(config);
        for _ in 0..deposits { let _ = t.try_admit(now).map(|k| k.refused(now)); }
        let mut buf = [0u8; THROTTLE_SNAPSHOT_MAX];
        let n = t.save_state(&mut buf, now, wall).unwrap();
        let target = Throttle::new(config);
        let _ = target.try_admit(now).map(|k| k.accepted(now));
        let before = target.counts(now);
        for bytes in damaged(&buf[..n], cut, &flips, &garbage) {
            prop_assert!(target.restore_state(&bytes, now, wall).is_err());
            prop_assert_eq!(target.counts(now), before);
        }

        let gradient = || Gradient::builder().build().unwrap();
        let window = WindowConfig::new(Duration::from_millis(100), 1).unwrap();
        let a = AdaptiveLimiter::new(gradient(), window, now);
        let mut buf = [0u8; ADAPTIVE_SNAPSHOT_MAX];
        let n = a.save_state(&mut buf, now, wall).unwrap();
        let target = AdaptiveLimiter::new(gradient(), window, now);
        target.bulkhead().set_limit(3).unwrap();
        for bytes in damaged(&buf[..n], cut, &flips, &garbage) {
            prop_assert!(target.restore_state(&bytes, now, wall).is_err());
            prop_assert_eq!(target.limit(), 3);
        }
    }
}

#[test]
fn another_window_layout_is_refused() {
    let now = at(0, 0);
    let b = RetryBudget::new(RetryBudgetConfig::builder().build().unwrap());
    let mut buf = [0u8; BUDGET_SNAPSHOT_MAX];
    let n = b.save_state(&mut buf, now, WallTime::UNIX_EPOCH).unwrap();
    let other = RetryBudget::new(
        RetryBudgetConfig::builder()
            .window(Duration::from_secs(20), 8)
            .build()
            .unwrap(),
    );
    assert!(matches!(
        other.restore_state(&buf[..n], now, WallTime::UNIX_EPOCH),
        Err(SnapshotError::ConfigMismatch { .. })
    ));
    // Another ratio judges the same window.
    let ratio = RetryBudget::new(RetryBudgetConfig::builder().ratio(0.5).build().unwrap());
    ratio
        .restore_state(&buf[..n], now, WallTime::UNIX_EPOCH)
        .unwrap();
}
