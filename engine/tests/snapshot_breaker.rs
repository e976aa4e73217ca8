//! Model: a breaker restored from a snapshot of breaker `x` behaves as `x`
//! for every later operation (admissions, rejections with their retry-after,
//! states, window counts), also when the restoring process's clock has
//! another origin; and a damaged, cut or foreign snapshot is refused with a
//! typed error, never a panic, leaving the breaker as it was.
//!
//! Invariants checked (docs/guarantees.md): D1 (restore(snapshot(x))
//! behaves as x), D2 (damaged snapshots are refused, the primitive
//! unchanged), D3 (the clock rule).

use core::time::Duration;

use proptest::prelude::*;
use tenlives_engine::breaker::{
    BREAKER_SNAPSHOT_MAX, BreakerConfig, BreakerState, CircuitBreaker, Outcome, Snapshot,
};
use tenlives_engine::snapshot::{SnapshotError, WallTime};
use tenlives_engine::time::Timestamp;

#[derive(Clone, Debug)]
enum Op {
    /// Acquire and keep the permit (index into the held list).
    Acquire,
    /// Report a held permit.
    Record {
        index: usize,
        outcome: Outcome,
        slow: bool,
    },
    /// Drop a held permit.
    Drop {
        index: usize,
    },
    Advance {
        ms: u64,
    },
    Explicit {
        which: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => Just(Op::Acquire),
        6 => (any::<usize>(), prop_oneof![
            4 => Just(Outcome::Success),
            4 => Just(Outcome::Failure),
            1 => Just(Outcome::Ignored),
        ], any::<bool>()).prop_map(|(index, outcome, slow)| Op::Record { index, outcome, slow }),
        1 => any::<usize>().prop_map(|index| Op::Drop { index }),
        3 => prop_oneof![0..50u64, 0..3_000u64].prop_map(|ms| Op::Advance { ms }),
        1 => (0..24u8).prop_map(|which| Op::Explicit { which }),
    ]
}

/// A random valid configuration: rules, window kind and size, open
/// durations with or without growth, probes.
fn config() -> impl Strategy<Value = BreakerConfig> {
    (
        proptest::option::of(1.0..100.0f64),
        proptest::option::of(1.0..100.0f64),
        proptest::option::of(1..6u32),
        any::<bool>(),
        1..40u32,
        1..6u32,
        1..5u32,
        1..8u32,
        1..2_000u64,
        any::<bool>(),
        1..5u32,
    )
        .prop_map(
            |(rate, slow, consecutive, count, calls, buckets, per, min, open_ms, grow, probes)| {
                let mut b = BreakerConfig::builder().without_failure_rate();
                if let Some(r) = rate {
                    b = b.failure_rate(r);
                }
                if let Some(r) = slow {
                    b = b.slow_calls(r, Duration::from_millis(200));
                }
                if rate.is_none() && slow.is_none() || consecutive.is_some() {
                    b = b.consecutive_failures(consecutive.unwrap_or(3));
                }
                b = if count {
                    b.count_window(calls).minimum_calls(min.min(calls))
                } else {
                    b.time_window(
                        Duration::from_millis(u64::from(buckets * per) * 100),
                        buckets,
                    )
                    .minimum_calls(min)
                };
                b = b
                    .open_duration(Duration::from_millis(open_ms))
                    .half_open_probes(probes);
                if grow {
                    b = b.open_backoff(2.0, Duration::from_millis(open_ms * 8));
                }
                b.build().expect("valid")
            },
        )
}

/// Everything observable but the generation (a restore moves to a new one).
fn observed(s: Snapshot) -> (BreakerState, u64, u64, u64, u32, u32, u32, Option<Duration>) {
    (
        s.state,
        s.window.calls,
        s.window.failures,
        s.window.slow,
        s.consecutive_failures,
        s.probes_reported,
        s.trips,
        s.retry_after,
    )
}

type Held<'a> = Vec<tenlives_engine::breaker::Permit<'a>>;

/// Applies `op` at `now` to `b`; returns what a caller could see.
fn apply<'a>(b: &'a CircuitBreaker, held: &mut Held<'a>, op: &Op, now: Timestamp) -> String {
    match op {
        Op::Acquire => match b.try_acquire(now) {
            Ok(p) => {
                let probe = p.is_probe();
                held.push(p);
                format!("admitted probe={probe}")
            }
            Err(r) => format!("rejected {:?} {:?}", r.reason(), r.retry_after()),
        },
        Op::Record {
            index,
            outcome,
            slow,
        } => {
            if held.is_empty() {
                return String::new();
            }
            let p = held.swap_remove(index % held.len());
            let elapsed = Duration::from_millis(if *slow { 300 } else { 5 });
            p.record_elapsed(*outcome, elapsed, now);
            String::new()
        }
        Op::Drop { index } => {
            if !held.is_empty() {
                drop(held.swap_remove(index % held.len()));
            }
            String::new()
        }
        Op::Advance { .. } => String::new(),
        Op::Explicit { which } => {
            match which {
                0 => b.force_open(now),
                1 => b.disable(now),
                2 => b.metrics_only(now),
                3 => b.reset(now),
                _ => {}
            }
            String::new()
        }
    }
}

fn at(origin: u64, ms: u64) -> Timestamp {
    Timestamp::from_nanos(origin + ms * 1_000_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn a_restored_breaker_behaves_as_the_original(
        config in config(),
        before in proptest::collection::vec(op(), 0..200),
        after in proptest::collection::vec(op(), 1..200),
        noise in proptest::collection::vec(op(), 0..20),
        origin_laps in 0..4u64,
        down_ms in prop_oneof![Just(0u64), 0..5_000u64],
    ) {
        // The restoring process's clock starts elsewhere, by a whole number
        // of 1.2 s (a multiple of every bucket length generated) plus the
        // time it was down, so that its buckets line up with the original's
        // (with other phases a restored bucket is off by less than one).
        let origin = origin_laps * 1_200_000_000 + 7_200_000_000 + down_ms * 1_000_000;
        let x = CircuitBreaker::new(config.clone());
        let mut held = Vec::new();
        let mut ms = 0;
        for op in &before {
            if let Op::Advance { ms: d } = op { ms += d; }
            apply(&x, &mut held, op, at(0, ms));
        }
        // Permits in flight are not part of a snapshot: settle them first.
        held.clear();
        let wall = WallTime::from_unix_nanos(1_000_000_000_000);
        let mut buf = [0u8; BREAKER_SNAPSHOT_MAX];
        let n = x.save_state(&mut buf, at(0, ms), wall).unwrap();

        // The restoring breaker was used before (its state must not leak).
        let y = CircuitBreaker::new(config);
        let mut y_held = Vec::new();
        for op in &noise {
            apply(&y, &mut y_held, op, at(origin, 0));
        }
        drop(y_held);
        let later = WallTime::from_unix_nanos(wall.as_unix_nanos() + down_ms * 1_000_000);
        y.restore_state(&buf[..n], at(origin, ms), later).unwrap();
        // x lives through the time y's process was down.
        let mut xms = ms + down_ms;
        prop_assert_eq!(observed(x.snapshot(at(0, xms))), observed(y.snapshot(at(origin, ms))));

        let (mut hx, mut hy) = (Vec::new(), Vec::new());
        for op in &after {
            if let Op::Advance { ms: d } = op { ms += d; xms += d; }
            let a = apply(&x, &mut hx, op, at(0, xms));
            let b = apply(&y, &mut hy, op, at(origin, ms));
            prop_assert_eq!(a, b, "after {:?}", op);
            prop_assert_eq!(observed(x.snapshot(at(0, xms))), observed(y.snapshot(at(origin, ms))));
        }
    }

    #[test]
    fn damaged_snapshots_are_refused_and_change_nothing(
        config in config(),
        before in proptest::collection::vec(op(), 0..100),
        cut in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0..8u8), 1..4),
        garbage in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let x = CircuitBreaker::new(config.clone());
        let mut held = Vec::new();
        let mut ms = 0;
        for op in &before {
            if let Op::Advance { ms: d } = op { ms += d; }
            apply(&x, &mut held, op, at(0, ms));
        }
        held.clear();
        let wall = WallTime::from_unix_nanos(5);
        let mut buf = [0u8; BREAKER_SNAPSHOT_MAX];
        let n = x.save_state(&mut buf, at(0, ms), wall).unwrap();

        let y = CircuitBreaker::new(config);
        y.try_acquire(at(0, 0)).unwrap().failure(at(0, 0));
        let untouched = y.snapshot(at(0, ms));
        let check = |bytes: &[u8]| -> Result<(), TestCaseError> {
            prop_assert!(y.restore_state(bytes, at(0, ms), wall).is_err());
            prop_assert_eq!(y.snapshot(at(0, ms)), untouched);
            Ok(())
        };
        // Cut anywhere.
        check(&buf[..cut.index(n)])?;
        // One to three bit flips (CRC-32 catches every error of up to three
        // bits in a frame this short).
        let mut damaged = buf;
        let mut flipped = std::collections::BTreeSet::new();
        for (i, bit) in &flips {
            let i = i.index(n);
            if flipped.insert((i, *bit)) {
                damaged[i] ^= 1 << bit;
            }
        }
        check(&damaged[..n])?;
        // Random bytes, and random bytes behind a valid magic.
        check(&garbage)?;
        let mut fake = b"TLSN".to_vec();
        fake.extend_from_slice(&garbage);
        check(&fake)?;
        // A byte too many.
        let mut long = buf[..n].to_vec();
        long.push(0);
        check(&long)?;
    }
}

fn opened(open: Duration) -> (BreakerConfig, CircuitBreaker) {
    let config = BreakerConfig::builder()
        .without_failure_rate()
        .consecutive_failures(1)
        .open_duration(open)
        .build()
        .unwrap();
    let b = CircuitBreaker::new(config.clone());
    let t = at(0, 1_000);
    b.try_acquire(t).unwrap().failure(t);
    (config, b)
}

#[test]
fn an_open_deadline_counts_the_wall_time_the_process_was_down() {
    let (config, b) = opened(Duration::from_secs(60));
    let mut buf = [0u8; BREAKER_SNAPSHOT_MAX];
    // 10 s into the open period.
    let n = b
        .save_state(&mut buf, at(0, 11_000), WallTime::from_unix_nanos(1_000))
        .unwrap();
    let retry = |down_ns: u64, wall_at: u64| {
        let r = CircuitBreaker::new(config.clone());
        r.restore_state(
            &buf[..n],
            Timestamp::from_nanos(down_ns),
            WallTime::from_unix_nanos(wall_at),
        )
        .unwrap();
        r.try_acquire(Timestamp::from_nanos(down_ns))
            .err()
            .and_then(|e| e.retry_after())
    };
    // Down 20 s: 30 s left, whatever the new clock's origin.
    assert_eq!(
        retry(0, 1_000 + 20_000_000_000),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        retry(u64::MAX / 2, 1_000 + 20_000_000_000),
        Some(Duration::from_secs(30))
    );
    // The wall clock went back: no time passed, 50 s left.
    assert_eq!(retry(0, 0), Some(Duration::from_secs(50)));
    // Down longer than the open duration: a probe is admitted at once.
    assert_eq!(retry(0, 1_000 + 120_000_000_000), None);
}

#[test]
fn the_growing_open_duration_survives_a_restore() {
    let config = BreakerConfig::builder()
        .without_failure_rate()
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(1))
        .open_backoff(2.0, Duration::from_secs(64))
        .half_open_probes(1)
        .build()
        .unwrap();
    let b = CircuitBreaker::new(config.clone());
    let mut t = 0;
    b.try_acquire(at(0, t)).unwrap().failure(at(0, t));
    // Fail two half-open tests: the third open period is 4 s.
    for _ in 0..2 {
        t += 10_000;
        b.try_acquire(at(0, t)).unwrap().failure(at(0, t));
    }
    let mut buf = [0u8; BREAKER_SNAPSHOT_MAX];
    let wall = WallTime::from_unix_nanos(0);
    let n = b.save_state(&mut buf, at(0, t), wall).unwrap();
    let r = CircuitBreaker::new(config);
    r.restore_state(&buf[..n], at(0, 0), wall).unwrap();
    assert_eq!(r.snapshot(at(0, 0)).trips, 3);
    assert_eq!(
        r.try_acquire(at(0, 0)).unwrap_err().retry_after(),
        Some(Duration::from_secs(4))
    );
    // The next failed test opens it for 8 s.
    r.try_acquire(at(0, 4_000)).unwrap().failure(at(0, 4_000));
    assert_eq!(
        r.try_acquire(at(0, 4_000)).unwrap_err().retry_after(),
        Some(Duration::from_secs(8))
    );
}

#[test]
fn a_small_buffer_says_what_it_needs() {
    let (_, b) = opened(Duration::from_secs(60));
    let mut buf = [0u8; BREAKER_SNAPSHOT_MAX];
    let n = b
        .save_state(&mut buf, at(0, 0), WallTime::UNIX_EPOCH)
        .unwrap();
    let mut small = [0u8; 8];
    assert_eq!(
        b.save_state(&mut small, at(0, 0), WallTime::UNIX_EPOCH),
        Err(SnapshotError::BufferTooSmall { needed: n })
    );
}

#[test]
fn another_configuration_keeps_the_state_as_a_live_change_would() {
    let wall = WallTime::UNIX_EPOCH;
    let mut buf = [0u8; BREAKER_SNAPSHOT_MAX];
    // Open for 60 s, saved 10 s in; restored under a 5 s open duration:
    // the deadline set when it opened stays (50 s left), the next trip
    // uses the new duration.
    let (_, b) = opened(Duration::from_secs(60));
    let n = b.save_state(&mut buf, at(0, 11_000), wall).unwrap();
    let short = BreakerConfig::builder()
        .without_failure_rate()
        .consecutive_failures(2)
        .open_duration(Duration::from_secs(5))
        .half_open_probes(1)
        .build()
        .unwrap();
    let r = CircuitBreaker::new(short);
    r.restore_state(&buf[..n], at(0, 0), wall).unwrap();
    assert_eq!(
        r.try_acquire(at(0, 0)).unwrap_err().retry_after(),
        Some(Duration::from_secs(50))
    );
    r.try_acquire(at(0, 50_000)).unwrap().failure(at(0, 50_000));
    assert_eq!(
        r.try_acquire(at(0, 50_000)).unwrap_err().retry_after(),
        Some(Duration::from_secs(5))
    );

    // A closed count window: kept under new thresholds with the same
    // layout, emptied under another layout (the failure run is kept).
    let window = |calls, rate| {
        BreakerConfig::builder()
            .failure_rate(rate)
            .count_window(calls)
            .minimum_calls(calls)
            .consecutive_failures(10)
            .build()
            .unwrap()
    };
    let b = CircuitBreaker::new(window(10, 50.0));
    for outcome in [Outcome::Success, Outcome::Failure, Outcome::Failure] {
        b.try_acquire(at(0, 0)).unwrap().record(outcome, at(0, 0));
    }
    let n = b.save_state(&mut buf, at(0, 0), wall).unwrap();
    let same_layout = CircuitBreaker::new(window(10, 90.0));
    same_layout
        .restore_state(&buf[..n], at(0, 0), wall)
        .unwrap();
    let s = same_layout.snapshot(at(0, 0));
    assert_eq!(
        (s.window.calls, s.window.failures, s.consecutive_failures),
        (3, 2, 2)
    );
    let other_layout = CircuitBreaker::new(window(20, 50.0));
    other_layout
        .restore_state(&buf[..n], at(0, 0), wall)
        .unwrap();
    let s = other_layout.snapshot(at(0, 0));
    assert_eq!((s.window.calls, s.consecutive_failures), (0, 2));

    // Half-open with 2 of 3 probes reported; restored where a test takes
    // 2 probes: the test starts again.
    let probes = |n| {
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(1))
            .half_open_probes(n)
            .build()
            .unwrap()
    };
    let b = CircuitBreaker::new(probes(3));
    b.try_acquire(at(0, 0)).unwrap().failure(at(0, 0));
    for _ in 0..2 {
        b.try_acquire(at(0, 1_000)).unwrap().success(at(0, 1_000));
    }
    assert_eq!(b.snapshot(at(0, 1_000)).probes_reported, 2);
    let n = b.save_state(&mut buf, at(0, 1_000), wall).unwrap();
    let r = CircuitBreaker::new(probes(2));
    r.restore_state(&buf[..n], at(0, 0), wall).unwrap();
    let s = r.snapshot(at(0, 0));
    assert_eq!(
        (s.state, s.probes_reported, s.probes_admitted),
        (BreakerState::HalfOpen, 0, 0)
    );
    for _ in 0..2 {
        r.try_acquire(at(0, 0)).unwrap().success(at(0, 0));
    }
    assert_eq!(r.state(), BreakerState::Closed);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_configuration_takes_any_breaker_snapshot(
        from in config(),
        to in config(),
        before in proptest::collection::vec(op(), 0..150),
    ) {
        let x = CircuitBreaker::new(from);
        let mut held = Vec::new();
        let mut ms = 0;
        for op in &before {
            if let Op::Advance { ms: d } = op { ms += d; }
            apply(&x, &mut held, op, at(0, ms));
        }
        held.clear();
        let wall = WallTime::UNIX_EPOCH;
        let mut buf = [0u8; BREAKER_SNAPSHOT_MAX];
        let n = x.save_state(&mut buf, at(0, ms), wall).unwrap();
        let y = CircuitBreaker::new(to);
        y.restore_state(&buf[..n], at(0, ms), wall).unwrap();
        let (sx, sy) = (x.snapshot(at(0, ms)), y.snapshot(at(0, ms)));
        prop_assert_eq!(sx.state, sy.state);
        prop_assert_eq!(sx.trips, sy.trips);
        prop_assert_eq!(sx.consecutive_failures, sy.consecutive_failures);
        if sx.state == BreakerState::Open {
            prop_assert_eq!(sx.retry_after, sy.retry_after);
        }
        // It goes on answering.
        let _ = y.try_acquire(at(0, ms + 1)).map(|p| p.failure(at(0, ms + 1)));
    }
}
