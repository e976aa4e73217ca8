//! loom model of the throttle's memo of its closed buckets
//! (engine/src/throttle/closed.rs: a sequence lock over the epoch).
//!
//! TH1 (docs/guarantees.md): however admissions of different buckets race to
//! remember and read the closed buckets' sums, each reads the window's exact
//! counts: never one bucket's calls with another's failures, never a sum
//! remembered for another epoch.
//!
//! The window is 3 buckets of 1 ns, so `Timestamp::from_nanos(k)` is bucket
//! `k`; an admission adds up buckets `k` and `k - 1` and takes bucket
//! `k - 2` from the memo.
#![cfg(tenlives_loom)]

use std::time::Duration;

use loom::sync::Arc;
use loom::thread;
use tenlives_engine::throttle::{Throttle, ThrottleConfig};
use tenlives_engine::time::Timestamp;
use tenlives_loom_tests::model;

fn at(bucket: u64) -> Timestamp {
    Timestamp::from_nanos(bucket)
}

#[test]
fn readers_of_two_epochs_see_exact_counts() {
    model(3, || {
        let t = Arc::new(Throttle::new(
            ThrottleConfig::builder()
                .window(Duration::from_nanos(3), 3)
                .minimum_requests(1_000)
                .build()
                .unwrap(),
        ));
        // Bucket 0: two requests, one accepted. Bucket 1: three refused.
        t.try_admit(at(0)).unwrap().accepted(at(0));
        t.try_admit(at(0)).unwrap().refused(at(0));
        for _ in 0..3 {
            t.try_admit(at(1)).unwrap().refused(at(1));
        }
        let reader = |bucket: u64| {
            let t = t.clone();
            thread::spawn(move || t.counts(at(bucket)))
        };
        // Bucket 2 remembers bucket 0; bucket 3 remembers bucket 1.
        let (a, b, c) = (reader(2), reader(3), reader(2));
        // At 2: buckets 0, 1, 2 -> 5 requests, 1 accepted.
        assert_eq!(a.join().unwrap(), (5, 1));
        assert_eq!(c.join().unwrap(), (5, 1));
        // At 3: buckets 1, 2, 3 -> 3 requests, none accepted.
        assert_eq!(b.join().unwrap(), (3, 0));
        // And again, from whatever the memo holds now.
        assert_eq!(t.counts(at(2)), (5, 1));
        assert_eq!(t.counts(at(3)), (3, 0));
    });
}
