//! Model: a rate limiter restored from a snapshot of limiter `x` answers
//! every later request as `x` does (same grants, refusals and retry times,
//! same tokens available), on a restoring clock with another origin; with
//! time down between snapshot and restore it answers as `x` would that much
//! later; under another quota or on a young clock it never grants more than
//! the booking allows; a damaged snapshot is a typed error and changes
//! nothing.
//!
//! Invariants checked (docs/guarantees.md): D1, D2, D3, D4 (no fresh burst
//! after a restart).

use core::time::Duration;

use proptest::prelude::*;
use tenlives_engine::rate::{Quota, RATE_SNAPSHOT_MAX, RateLimitError, RateLimiter};
use tenlives_engine::snapshot::{SnapshotError, WallTime};
use tenlives_engine::time::Timestamp;

#[derive(Clone, Debug)]
enum Op {
    Check(u32),
    Reserve { n: u32, wait_ms: u64, cancel: bool },
    Refund(u32),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1..4u32).prop_map(Op::Check),
        2 => (1..6u32, 0..3_000u64, any::<bool>())
            .prop_map(|(n, wait_ms, cancel)| Op::Reserve { n, wait_ms, cancel }),
        1 => (1..3u32).prop_map(Op::Refund),
        4 => prop_oneof![0..20u64, 0..2_000u64].prop_map(Op::Advance),
    ]
}

fn quota() -> impl Strategy<Value = Quota> {
    (1..50u32, 1..5_000u64, 1..20u32, any::<bool>()).prop_map(|(rate, ms, burst, debt)| {
        let q = Quota::new(rate, Duration::from_millis(ms))
            .unwrap()
            .with_burst(burst)
            .unwrap();
        if debt { q.with_debt() } else { q }
    })
}

fn apply(l: &RateLimiter, op: &Op, now: Timestamp) -> String {
    match op {
        Op::Check(n) => match l.check_n(*n, now) {
            Ok(()) => "granted".into(),
            Err(e) => refusal(&e),
        },
        Op::Reserve { n, wait_ms, cancel } => {
            match l.reserve_n(*n, now, Duration::from_millis(*wait_ms)) {
                Ok(r) => {
                    let s = format!("reserved {:?}", r.ready_at().as_nanos() - now.as_nanos());
                    if *cancel {
                        r.cancel()
                    } else {
                        r.commit()
                    }
                    s
                }
                Err(e) => refusal(&e),
            }
        }
        Op::Refund(n) => {
            l.refund(*n);
            String::new()
        }
        Op::Advance(_) => String::new(),
    }
}

/// A refusal without its timestamps (the clocks' origins differ).
fn refusal(e: &RateLimitError) -> String {
    match e {
        RateLimitError::Limited(l) => format!("limited, wait {:?}", l.wait()),
        other => format!("{other:?}"),
    }
}

fn run(l: &RateLimiter, ops: &[Op], origin: u64, ms: &mut u64) {
    for op in ops {
        if let Op::Advance(d) = op {
            *ms += d;
        }
        apply(l, op, at(origin, *ms));
    }
}

fn at(origin: u64, ms: u64) -> Timestamp {
    Timestamp::from_nanos(origin + ms * 1_000_000)
}

/// Far enough from its origin for an exact restore of anything generated.
const OLD_CLOCK: u64 = 1 << 50;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn a_restored_limiter_answers_as_the_original(
        quota in quota(),
        before in proptest::collection::vec(op(), 0..100),
        after in proptest::collection::vec(op(), 1..100),
        down_ms in prop_oneof![Just(0u64), 0..5_000u64],
        start_ms in 0..10_000u64,
    ) {
        let x = RateLimiter::new(quota);
        let mut ms = start_ms;
        run(&x, &before, 0, &mut ms);
        let wall = WallTime::from_unix_nanos(1_000_000);
        let mut buf = [0u8; RATE_SNAPSHOT_MAX];
        let n = x.save_state(&mut buf, at(0, ms), wall).unwrap();

        let y = RateLimiter::new(quota);
        y.check(at(OLD_CLOCK, 0)).ok();
        let wall_later = WallTime::from_unix_nanos(wall.as_unix_nanos() + down_ms * 1_000_000);
        // y restores `down_ms` later on the wall; x simply lives through it.
        y.restore_state(&buf[..n], at(OLD_CLOCK, ms), wall_later).unwrap();
        let mut xms = ms + down_ms;
        let mut yms = ms;
        prop_assert_eq!(x.available(at(0, xms)), y.available(at(OLD_CLOCK, yms)));
        for op in &after {
            if let Op::Advance(d) = op { xms += d; yms += d; }
            let a = apply(&x, op, at(0, xms));
            let b = apply(&y, op, at(OLD_CLOCK, yms));
            prop_assert_eq!(a, b, "after {:?}", op);
            prop_assert_eq!(x.available(at(0, xms)), y.available(at(OLD_CLOCK, yms)));
        }
    }

    #[test]
    fn a_young_clock_or_another_quota_never_grants_more(
        quota in quota(),
        other in quota(),
        before in proptest::collection::vec(op(), 0..100),
        start_ms in 0..10_000u64,
    ) {
        let x = RateLimiter::new(quota);
        let mut ms = start_ms;
        run(&x, &before, 0, &mut ms);
        let wall = WallTime::from_unix_nanos(0);
        let mut buf = [0u8; RATE_SNAPSHOT_MAX];
        let n = x.save_state(&mut buf, at(0, ms), wall).unwrap();

        // Same quota, a clock that just started: at most x's tokens, and
        // at most one token fewer.
        let y = RateLimiter::new(quota);
        y.restore_state(&buf[..n], Timestamp::ZERO, wall).unwrap();
        let (ax, ay) = (x.available(at(0, ms)), y.available(Timestamp::ZERO));
        prop_assert!(ay <= ax && ay + 1 >= ax, "x {} y {}", ax, ay);

        // Another quota: what x.set_quota would have left, at most.
        let z = RateLimiter::new(other);
        z.restore_state(&buf[..n], Timestamp::ZERO, wall).unwrap();
        x.set_quota(other, at(0, ms));
        prop_assert!(z.available(Timestamp::ZERO) <= x.available(at(0, ms)));
    }

    #[test]
    fn damaged_snapshots_are_refused_and_change_nothing(
        quota in quota(),
        before in proptest::collection::vec(op(), 0..50),
        cut in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0..8u8), 1..4),
        garbage in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let x = RateLimiter::new(quota);
        let mut ms = 0;
        run(&x, &before, 0, &mut ms);
        let wall = WallTime::from_unix_nanos(0);
        let mut buf = [0u8; RATE_SNAPSHOT_MAX];
        let n = x.save_state(&mut buf, at(0, ms), wall).unwrap();
        let y = RateLimiter::new(quota);
        y.check(at(0, ms)).ok();
        let untouched = y.available(at(0, ms));
        let check = |bytes: &[u8]| -> Result<(), TestCaseError> {
            prop_assert!(y.restore_state(bytes, at(0, ms), wall).is_err());
            prop_assert_eq!(y.available(at(0, ms)), untouched);
            Ok(())
        };
        check(&buf[..cut.index(n)])?;
        let mut damaged = buf;
        let mut flipped = std::collections::BTreeSet::new();
        for (i, bit) in &flips {
            let i = i.index(n);
            if flipped.insert((i, *bit)) {
                damaged[i] ^= 1 << bit;
            }
        }
        check(&damaged[..n])?;
        check(&garbage)?;
        let mut fake = b"TLSN".to_vec();
        fake.extend_from_slice(&garbage);
        check(&fake)?;
    }
}

#[test]
fn a_breaker_snapshot_is_not_a_rate_limiter_snapshot() {
    use tenlives_engine::breaker::{BREAKER_SNAPSHOT_MAX, BreakerConfig, CircuitBreaker};
    let b = CircuitBreaker::new(BreakerConfig::builder().build().unwrap());
    let mut buf = [0u8; BREAKER_SNAPSHOT_MAX];
    let n = b
        .save_state(&mut buf, Timestamp::ZERO, WallTime::UNIX_EPOCH)
        .unwrap();
    let l = RateLimiter::new(Quota::per_second(5).unwrap());
    assert!(matches!(
        l.restore_state(&buf[..n], Timestamp::ZERO, WallTime::UNIX_EPOCH),
        Err(SnapshotError::WrongKind { .. })
    ));
}

#[test]
fn a_restart_hands_out_no_fresh_burst() {
    // 100 a second, burst 100: spend it, restart at once on a new clock.
    let quota = Quota::per_second(100).unwrap();
    let x = RateLimiter::new(quota);
    let t = Timestamp::from_nanos(123_456_789_000);
    let mut granted = 0;
    while x.check(t).is_ok() {
        granted += 1;
    }
    assert_eq!(granted, 100);
    let wall = WallTime::from_unix_nanos(1_000_000_000);
    let mut buf = [0u8; RATE_SNAPSHOT_MAX];
    let n = x.save_state(&mut buf, t, wall).unwrap();
    let y = RateLimiter::new(quota);
    y.restore_state(&buf[..n], Timestamp::from_nanos(5), wall)
        .unwrap();
    assert_eq!(y.available(Timestamp::from_nanos(5)), 0);
    // 50 ms of wall time down: 5 tokens back.
    let z = RateLimiter::new(quota);
    let later = WallTime::from_unix_nanos(wall.as_unix_nanos() + 50_000_000);
    z.restore_state(&buf[..n], Timestamp::from_nanos(5), later)
        .unwrap();
    assert_eq!(z.available(Timestamp::from_nanos(5)), 5);
}
