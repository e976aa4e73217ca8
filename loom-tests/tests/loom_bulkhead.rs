//! loom models of the bulkhead's state word (engine/src/bulkhead.rs).
//!
//! K1 (docs/guarantees.md): never more permits held than the limit in force
//! when they were granted; K2: a grant is decided on the limit in force at
//! the instant of the grant, so an acquisition that starts after a lowering
//! finished sees the lowered limit; K3: every permit dropped or released is
//! given back exactly once, and the in-flight count never goes below zero or
//! corrupts the limit beside it.
//!
//! Holders are counted on a side counter: incremented after a grant returns,
//! decremented before the permit is dropped, so it never exceeds the permits
//! really held.
#![cfg(tenlives_loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use loom::thread;
use tenlives_engine::bulkhead::{AcquireManyError, Bulkhead};
use tenlives_loom_tests::model;

/// Holds `permits` while checking that the holders never exceed `limit`.
fn hold(holders: &AtomicU32, permits: u32, limit: u32) {
    let now = holders.fetch_add(permits, Ordering::SeqCst) + permits;
    assert!(now <= limit, "{now} permits held with a limit of {limit}");
    holders.fetch_sub(permits, Ordering::SeqCst);
}

/// K1, K3: three threads race for a limit of 2, each acquiring, holding and
/// dropping twice; at most 2 are ever held, and all are given back.
#[test]
fn never_more_than_the_limit_in_flight() {
    model(3, || {
        let b = Arc::new(Bulkhead::new(2).unwrap());
        let holders = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..3)
            .map(|i| {
                let (b, holders) = (b.clone(), holders.clone());
                thread::spawn(move || {
                    let mut granted = 0;
                    for _ in 0..if i == 0 { 2 } else { 1 } {
                        if let Ok(permit) = b.try_acquire() {
                            granted += 1;
                            hold(&holders, 1, 2);
                            drop(permit);
                        }
                    }
                    granted
                })
            })
            .collect();
        let granted: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(granted >= 2, "the first two attempts cannot both fail");
        assert_eq!(b.in_flight(), 0, "every dropped permit was released");
        assert_eq!(b.limit(), 2);
    });
}

/// K1, K3: `try_acquire_many` against single acquisitions and raw permits:
/// all or nothing, never above the limit, everything given back.
#[test]
fn many_and_raw_permits_conserve() {
    model(3, || {
        let b = Arc::new(Bulkhead::new(3).unwrap());
        let holders = Arc::new(AtomicU32::new(0));
        let many = {
            let (b, holders) = (b.clone(), holders.clone());
            thread::spawn(move || match b.try_acquire_many(2) {
                Ok(p) => {
                    hold(&holders, 2, 3);
                    drop(p);
                }
                Err(AcquireManyError::Full(full)) => assert!(full.in_flight() >= 2),
                Err(other) => panic!("unexpected {other:?}"),
            })
        };
        let singles = {
            let (b, holders) = (b.clone(), holders.clone());
            thread::spawn(move || {
                let first = b.try_acquire_raw();
                let second = b.try_acquire_raw();
                let held = u32::from(first.is_ok()) + u32::from(second.is_ok());
                if held > 0 {
                    hold(&holders, held, 3);
                }
                for p in [first, second].into_iter().flatten() {
                    b.release(p);
                }
            })
        };
        many.join().unwrap();
        singles.join().unwrap();
        assert_eq!(b.in_flight(), 0);
        assert_eq!(b.limit(), 3);
    });
}

/// K2, K3: a permit is held at limit 2 while one thread lowers the limit to
/// 1 and another acquires and releases. An acquisition that starts after the
/// lowering returned is refused; one that wins before it brings the count to
/// 2, which the lowering keeps (it revokes nothing). At the end the count is
/// back to 0 and the limit is exactly 1.
#[test]
fn set_limit_races_acquisitions() {
    model(3, || {
        let b = Arc::new(Bulkhead::new(2).unwrap());
        let lowered = Arc::new(AtomicBool::new(false));
        let held = b.try_acquire_raw().unwrap();
        let lower = {
            let (b, lowered) = (b.clone(), lowered.clone());
            thread::spawn(move || {
                assert_eq!(b.set_limit(1), Ok(2));
                lowered.store(true, Ordering::SeqCst);
            })
        };
        let acquire = {
            let (b, lowered) = (b.clone(), lowered.clone());
            thread::spawn(move || {
                let after_lowering = lowered.load(Ordering::SeqCst);
                match b.try_acquire() {
                    Ok(p) => {
                        assert!(!after_lowering, "granted above the limit in force");
                        let s = b.snapshot();
                        assert_eq!(s.in_flight, 2);
                        drop(p);
                    }
                    Err(full) => assert!(full.in_flight() >= full.limit()),
                }
            })
        };
        lower.join().unwrap();
        acquire.join().unwrap();
        b.release(held);
        let s = b.snapshot();
        assert_eq!((s.in_flight, s.limit), (0, 1));
    });
}
