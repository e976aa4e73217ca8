//! loom models of the sharded concurrency limit (engine/src/sharded.rs),
//! guarantee K6 in docs/guarantees.md: never more permits held than the
//! limit, whichever shards the threads start from and steal from; every
//! permit goes back to its shard exactly once; and with no release racing
//! it, a refusal means every permit was held.
//!
//! Under loom the limit has two shards (STRIPES is 2), and each thread's
//! home shard is a hash of its loom thread id: threads share one or not.
#![cfg(tenlives_loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicU32, Ordering};
use loom::thread;
use tenlives_engine::sharded::ShardedBulkhead;
use tenlives_loom_tests::model;

/// Holds a permit while checking that the holders never exceed `limit`.
fn hold(holders: &AtomicU32, limit: u32) {
    let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
    assert!(now <= limit, "{now} permits held with a limit of {limit}");
    holders.fetch_sub(1, Ordering::SeqCst);
}

/// Three threads race for a limit of 2 (one permit per shard), each
/// acquiring, holding and releasing; at most 2 are ever held, and all come
/// back.
#[test]
fn never_more_than_the_limit_across_shards() {
    model(3, || {
        let s = Arc::new(ShardedBulkhead::new(2).unwrap());
        let holders = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (s, holders) = (s.clone(), holders.clone());
                thread::spawn(move || {
                    if let Ok(permit) = s.try_acquire() {
                        hold(&holders, 2);
                        drop(permit);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.in_flight(), 0);
    });
}

/// Two threads each take one permit of a limit of 3 (shares 2 and 1) and
/// keep it; then, with nothing released, a third acquisition must succeed
/// (one permit is free) and a fourth must be refused (all held): a refusal
/// without a racing release is exact, whatever the home shards.
#[test]
fn without_a_racing_release_a_refusal_is_exact() {
    model(3, || {
        let s = Arc::new(ShardedBulkhead::new(3).unwrap());
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let s = s.clone();
                thread::spawn(move || s.try_acquire_raw().expect("below the limit"))
            })
            .collect();
        let held: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let third = s.try_acquire_raw().expect("one permit is free");
        let refused = s.try_acquire_raw().expect_err("all three are held");
        assert_eq!(refused.in_flight(), 3);
        s.release(third);
        for p in held {
            s.release(p);
        }
        assert_eq!(s.in_flight(), 0);
    });
}
