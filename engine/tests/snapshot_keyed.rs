//! Model: a keyed rate limiter restored from a snapshot of limiter `x`
//! answers every later request, for every key, as `x` does (on a restoring
//! clock with another origin, with wall-clock time down between); keys the
//! restoring table has no room for are counted; a damaged snapshot is a
//! typed error and changes nothing.
//!
//! Invariants checked (docs/guarantees.md): D1, D2, D3, D4.

use core::time::Duration;

use proptest::prelude::*;
use tenlives_engine::rate::{KeyedConfig, KeyedRateLimiter, Quota, RateLimitError};
use tenlives_engine::snapshot::WallTime;
use tenlives_engine::time::Timestamp;

#[derive(Clone, Debug)]
enum Op {
    Check { key: u16, n: u32 },
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..40u16, 1..3u32).prop_map(|(key, n)| Op::Check { key, n }),
        2 => prop_oneof![0..20u64, 0..2_000u64].prop_map(Op::Advance),
    ]
}

fn quota() -> impl Strategy<Value = Quota> {
    (1..20u32, 1..3_000u64, 1..6u32).prop_map(|(rate, ms, burst)| {
        Quota::new(rate, Duration::from_millis(ms))
            .unwrap()
            .with_burst(burst)
            .unwrap()
    })
}

fn at(origin: u64, ms: u64) -> Timestamp {
    Timestamp::from_nanos(origin + ms * 1_000_000)
}

fn apply(l: &KeyedRateLimiter<u16>, op: &Op, now: Timestamp) -> String {
    match op {
        Op::Check { key, n } => match l.check_key_n(key, *n, now) {
            Ok(()) => "granted".into(),
            Err(RateLimitError::Limited(r)) => format!("limited {:?}", r.wait()),
            Err(e) => format!("{e:?}"),
        },
        Op::Advance(_) => String::new(),
    }
}

fn encode(k: &u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&k.to_le_bytes());
}

fn decode(b: &[u8]) -> Option<u16> {
    Some(u16::from_le_bytes(b.try_into().ok()?))
}

const OLD_CLOCK: u64 = 1 << 50;
const WALL: u64 = 1_000_000_000;

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn a_restored_table_answers_as_the_original(
        quota in quota(),
        before in proptest::collection::vec(op(), 0..200),
        after in proptest::collection::vec(op(), 1..200),
        down_ms in prop_oneof![Just(0u64), 0..3_000u64],
    ) {
        let config = KeyedConfig::new(quota, 256).unwrap();
        let x = KeyedRateLimiter::new(config);
        let mut ms = 0;
        for op in &before {
            if let Op::Advance(d) = op { ms += d; }
            apply(&x, op, at(0, ms));
        }
        let mut bytes = Vec::new();
        x.save_state(&mut bytes, at(0, ms), WallTime::from_unix_nanos(WALL), encode).unwrap();

        let y = KeyedRateLimiter::new(config);
        y.check_key(&7, at(OLD_CLOCK, 0)).ok();
        let later = WallTime::from_unix_nanos(WALL + down_ms * 1_000_000);
        let report = y.restore_state(&bytes, at(OLD_CLOCK, ms), later, decode).unwrap();
        prop_assert_eq!(report.no_room, 0);
        let (mut xms, mut yms) = (ms + down_ms, ms);
        for op in &after {
            if let Op::Advance(d) = op { xms += d; yms += d; }
            let a = apply(&x, op, at(0, xms));
            let b = apply(&y, op, at(OLD_CLOCK, yms));
            prop_assert_eq!(a, b, "after {:?}", op);
        }
    }

    #[test]
    fn damaged_snapshots_are_refused_and_change_nothing(
        quota in quota(),
        before in proptest::collection::vec(op(), 1..100),
        cut in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0..8u8), 1..4),
        garbage in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let config = KeyedConfig::new(quota, 64).unwrap();
        let x = KeyedRateLimiter::new(config);
        let mut ms = 0;
        for op in &before {
            if let Op::Advance(d) = op { ms += d; }
            apply(&x, op, at(0, ms));
        }
        let wall = WallTime::from_unix_nanos(WALL);
        let mut bytes = Vec::new();
        x.save_state(&mut bytes, at(0, ms), wall, encode).unwrap();
        let y = KeyedRateLimiter::new(config);
        let n = bytes.len();
        let mut flipped = bytes.clone();
        let mut seen = std::collections::BTreeSet::new();
        for (i, bit) in &flips {
            let i = i.index(n);
            if seen.insert((i, *bit)) {
                flipped[i] ^= 1 << bit;
            }
        }
        let mut fake = b"TLSN".to_vec();
        fake.extend_from_slice(&garbage);
        for damaged in [bytes[..cut.index(n)].to_vec(), flipped, garbage.clone(), fake] {
            prop_assert!(y.restore_state(&damaged, at(0, ms), wall, decode).is_err());
            prop_assert_eq!(y.in_use(), 0);
        }
        // A decoder that refuses a key refuses the snapshot, whole.
        if x.in_use() > 0 && bytes.len() > 40 {
            let mut calls = 0;
            let refusing = |b: &[u8]| { calls += 1; if calls == 2 { None } else { decode(b) } };
            let r = y.restore_state(&bytes, at(0, ms), wall, refusing);
            prop_assert!(r.is_err() || calls < 2);
            if r.is_err() { prop_assert_eq!(y.in_use(), 0); }
        }
    }
}

#[test]
fn keys_without_room_and_expired_bookings_are_counted() {
    let quota = Quota::per_second(1).unwrap();
    let x = KeyedRateLimiter::new(KeyedConfig::new(quota, 64).unwrap());
    let t = at(0, 1_000);
    for k in 0..20u16 {
        x.check_key(&k, t).unwrap();
    }
    let wall = WallTime::from_unix_nanos(WALL);
    let mut bytes = Vec::new();
    assert_eq!(x.save_state(&mut bytes, t, wall, encode).unwrap(), 20);
    let small = KeyedRateLimiter::new(KeyedConfig::new(quota, 8).unwrap());
    let r = small
        .restore_state(&bytes, at(OLD_CLOCK, 0), wall, decode)
        .unwrap();
    assert_eq!(r.restored + r.no_room, 20);
    assert!(r.no_room >= 12, "{r:?}");
    // Down for 2 s: every booking (1 s) ran out.
    let later = WallTime::from_unix_nanos(WALL + 2_000_000_000);
    let y = KeyedRateLimiter::new(KeyedConfig::new(quota, 64).unwrap());
    let r = y
        .restore_state(&bytes, at(OLD_CLOCK, 0), later, decode)
        .unwrap();
    assert_eq!((r.restored, r.expired), (0, 20));
}
