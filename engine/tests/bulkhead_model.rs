//! Model: the atomic `Bulkhead`, driven from one thread, behaves exactly like
//! a sequential counter `in_flight <= limit` — same grants, same refusals
//! (with the same reason and the same in-flight count and limit), same
//! snapshots — under random acquire, acquire_many, drop, raw release and
//! set_limit operations.
//!
//! Invariants checked (docs/guarantees.md): K1 (never above the limit in
//! force when granted), K3 (every release gives back exactly what was
//! granted), K4 (the atomic bulkhead equals the model).

use proptest::prelude::*;
use tenlives_engine::ConfigError;
use tenlives_engine::bulkhead::{AcquireManyError, Bulkhead, BulkheadPermit, RawBulkheadPermit};

#[derive(Clone, Debug)]
enum Op {
    Acquire,
    AcquireMany(u32),
    AcquireRaw,
    Drop(usize),
    ReleaseRaw(usize),
    SetLimit(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => Just(Op::Acquire),
        3 => (0..8u32).prop_map(Op::AcquireMany),
        2 => Just(Op::AcquireRaw),
        4 => any::<usize>().prop_map(Op::Drop),
        2 => any::<usize>().prop_map(Op::ReleaseRaw),
        2 => (0..8u32).prop_map(Op::SetLimit),
    ]
}

/// The sequential model.
#[derive(Debug)]
struct Model {
    in_flight: u32,
    limit: u32,
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Granted(u32),
    Full { in_flight: u32, limit: u32 },
    Zero,
    ExceedsLimit { requested: u32, limit: u32 },
}

impl Model {
    fn acquire(&mut self, n: u32) -> Outcome {
        if n == 0 {
            Outcome::Zero
        } else if self.in_flight + n <= self.limit {
            self.in_flight += n;
            Outcome::Granted(n)
        } else if n > self.limit {
            Outcome::ExceedsLimit {
                requested: n,
                limit: self.limit,
            }
        } else {
            Outcome::Full {
                in_flight: self.in_flight,
                limit: self.limit,
            }
        }
    }
}

fn outcome<T>(r: Result<T, AcquireManyError>, n: u32) -> (Outcome, Option<T>) {
    match r {
        Ok(p) => (Outcome::Granted(n), Some(p)),
        Err(AcquireManyError::Full(f)) => (
            Outcome::Full {
                in_flight: f.in_flight(),
                limit: f.limit(),
            },
            None,
        ),
        Err(AcquireManyError::Zero) => (Outcome::Zero, None),
        Err(AcquireManyError::ExceedsLimit { requested, limit }) => {
            (Outcome::ExceedsLimit { requested, limit }, None)
        }
        Err(other) => panic!("unexpected {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn atomic_bulkhead_matches_the_model(
        limit in 1..6u32,
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let b = Bulkhead::new(limit).unwrap();
        let mut m = Model { in_flight: 0, limit };
        let mut held: Vec<BulkheadPermit<'_>> = Vec::new();
        let mut raw: Vec<RawBulkheadPermit> = Vec::new();
        let mut granted = 0u64;
        let mut released = 0u64;
        for op in ops {
            match op {
                Op::Acquire => {
                    let expected = m.acquire(1);
                    let got = match b.try_acquire() {
                        Ok(p) => { held.push(p); Outcome::Granted(1) }
                        Err(f) => Outcome::Full { in_flight: f.in_flight(), limit: f.limit() },
                    };
                    if expected == Outcome::Granted(1) { granted += 1; }
                    prop_assert_eq!(got, expected);
                }
                Op::AcquireMany(n) => {
                    let expected = m.acquire(n);
                    let (got, permit) = outcome(b.try_acquire_many(n), n);
                    if let Some(p) = permit {
                        prop_assert_eq!(p.permits(), n);
                        granted += u64::from(n);
                        held.push(p);
                    }
                    prop_assert_eq!(got, expected);
                }
                Op::AcquireRaw => {
                    let expected = m.acquire(1);
                    let got = match b.try_acquire_raw() {
                        Ok(p) => { raw.push(p); granted += 1; Outcome::Granted(1) }
                        Err(f) => Outcome::Full { in_flight: f.in_flight(), limit: f.limit() },
                    };
                    prop_assert_eq!(got, expected);
                }
                Op::Drop(i) if !held.is_empty() => {
                    let p = held.swap_remove(i % held.len());
                    m.in_flight -= p.permits();
                    released += u64::from(p.permits());
                    drop(p);
                }
                Op::ReleaseRaw(i) if !raw.is_empty() => {
                    let p = raw.swap_remove(i % raw.len());
                    m.in_flight -= p.permits();
                    released += u64::from(p.permits());
                    b.release(p);
                }
                Op::SetLimit(0) => {
                    prop_assert_eq!(b.set_limit(0), Err(ConfigError::Zero { field: "limit" }));
                }
                Op::SetLimit(n) => {
                    prop_assert_eq!(b.set_limit(n), Ok(m.limit));
                    m.limit = n;
                }
                Op::Drop(_) | Op::ReleaseRaw(_) => {}
            }
            let s = b.snapshot();
            prop_assert_eq!((s.in_flight, s.limit), (m.in_flight, m.limit));
            prop_assert_eq!(b.available(), m.limit.saturating_sub(m.in_flight));
        }
        for p in raw { released += u64::from(p.permits()); b.release(p); }
        for p in held { released += u64::from(p.permits()); drop(p); }
        prop_assert_eq!(granted, released);
        prop_assert_eq!(b.in_flight(), 0);
    }
}
