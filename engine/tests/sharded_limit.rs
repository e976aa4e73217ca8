//! The sharded concurrency limit (`tenlives_engine::sharded`, guarantee K6 in
//! docs/guarantees.md): against a sequential model over random sequences of
//! acquisitions and releases, and under threads hammering one limit
//! (conservation: never over the limit, every permit back).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;

use proptest::prelude::*;
use tenlives_engine::sharded::{RawShardedPermit, ShardedBulkhead};

#[derive(Clone, Debug)]
enum Op {
    Acquire,
    /// Release the held permit at this index (modulo how many are held).
    Release(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![Just(Op::Acquire), any::<usize>().prop_map(Op::Release)]
}

proptest! {
    /// From one thread (one home shard), the sharded limit behaves as a
    /// plain counter of `limit`: an acquisition succeeds exactly when fewer
    /// than `limit` permits are held, whichever shards the releases went
    /// back to, and `in_flight` is always the model's count.
    #[test]
    fn one_thread_matches_a_counter(limit in 1u32..40, ops in proptest::collection::vec(op(), 0..300)) {
        let s = ShardedBulkhead::new(limit).unwrap();
        let mut held: Vec<RawShardedPermit> = Vec::new();
        for op in ops {
            match op {
                Op::Acquire => {
                    let got = s.try_acquire_raw();
                    let model_admits = (held.len() as u32) < limit;
                    prop_assert_eq!(got.is_ok(), model_admits, "held {} of {}", held.len(), limit);
                    match got {
                        Ok(p) => held.push(p),
                        Err(full) => {
                            prop_assert_eq!(full.in_flight(), limit);
                            prop_assert_eq!(full.limit(), limit);
                        }
                    }
                }
                Op::Release(i) => {
                    if !held.is_empty() {
                        let p = held.swap_remove(i % held.len());
                        s.release(p);
                    }
                }
            }
            prop_assert_eq!(s.in_flight(), held.len() as u32);
        }
        for p in held {
            s.release(p);
        }
        prop_assert_eq!(s.in_flight(), 0);
    }
}

/// Four threads (more than one home shard each, and more threads than the
/// two cores) acquire and release for a while: the permits held, counted on
/// a side counter, never exceed the limit, and all come back.
#[test]
fn threads_never_exceed_the_limit_and_give_everything_back() {
    for limit in [1u32, 3, 8, 13] {
        let s = Arc::new(ShardedBulkhead::new(limit).unwrap());
        let holders = Arc::new(AtomicU32::new(0));
        let granted = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (s, holders, granted) = (s.clone(), holders.clone(), granted.clone());
                thread::spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..if cfg!(miri) { 50 } else { 20_000 } {
                        if let Ok(p) = s.try_acquire_raw() {
                            // ordering: SeqCst; a test's side counter.
                            let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
                            assert!(now <= limit, "{now} held with a limit of {limit}");
                            granted.fetch_add(1, Ordering::Relaxed);
                            mine.push(p);
                        }
                        // Hold up to three at once, release in a varying order.
                        if mine.len() > i % 3 {
                            let p = mine.swap_remove(0);
                            holders.fetch_sub(1, Ordering::SeqCst);
                            s.release(p);
                        }
                    }
                    for p in mine {
                        holders.fetch_sub(1, Ordering::SeqCst);
                        s.release(p);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.in_flight(), 0, "limit {limit}: every permit came back");
        assert!(granted.load(Ordering::Relaxed) > 0);
    }
}
