//! loom models of the keyed rate limiter's table (engine/src/rate/keyed.rs).
//!
//! L5 (docs/guarantees.md): a racing eviction and lookup never lose or
//! duplicate a key's state — a charge that races with the eviction of its
//! key is kept (in the old entry if the charge won, in a fresh one if the
//! eviction won), and two threads inserting the same new key end up sharing
//! one entry. Under loom the epoch never reclaims (see engine/src/sync.rs),
//! so these models check the table's own atomic protocol.
#![cfg(tenlives_loom)]

use std::collections::hash_map::DefaultHasher;
use std::hash::BuildHasherDefault;

use loom::sync::Arc;
use loom::thread;
use tenlives_engine::events::NoSink;
use tenlives_engine::rate::{KeyedConfig, KeyedRateLimiter, Quota};
use tenlives_engine::time::Timestamp;
use tenlives_loom_tests::model;

/// A fixed hasher: loom needs every execution of a model to take the same
/// path through the table, so the key must land in the same bucket each time.
type Fixed = BuildHasherDefault<DefaultHasher>;

fn table(burst: u32) -> Arc<KeyedRateLimiter<u32, Fixed>> {
    let quota = Quota::per_second(1).unwrap().with_burst(burst).unwrap();
    let config = KeyedConfig::new(quota, 4).unwrap();
    Arc::new(KeyedRateLimiter::with_hasher_and_sink(
        config,
        Fixed::default(),
        NoSink,
        0,
    ))
}

/// L5: key 7 is in the table with a full bucket (evictable). One thread
/// charges it while another sweeps: afterwards exactly one token is gone.
#[test]
fn a_charge_racing_with_eviction_is_never_lost() {
    model(3, || {
        let t = table(2);
        let earlier = Timestamp::ZERO;
        let now = Timestamp::from_nanos(10_000_000_000);
        t.check_key(&7, earlier).unwrap();
        let charger = {
            let t = t.clone();
            thread::spawn(move || t.check_key(&7, now).is_ok())
        };
        let sweeper = {
            let t = t.clone();
            thread::spawn(move || t.sweep(now))
        };
        assert!(charger.join().unwrap(), "a full bucket grants one token");
        let evicted = sweeper.join().unwrap();
        assert!(evicted <= 1);
        // One token of two is left, whichever won.
        assert!(t.peek_key_n(&7, 1, now).is_ok());
        assert!(t.peek_key_n(&7, 2, now).is_err(), "the charge was lost");
    });
}

/// L5: two threads make the first request of the same key at once; the
/// table ends up with one entry holding both charges.
#[test]
fn racing_inserts_of_one_key_share_one_entry() {
    model(3, || {
        let t = table(2);
        let now = Timestamp::ZERO;
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let t = t.clone();
                thread::spawn(move || t.check_key(&7, now).is_ok())
            })
            .collect();
        for th in threads {
            assert!(th.join().unwrap());
        }
        assert!(
            t.peek_key_n(&7, 1, now).is_err(),
            "a second entry duplicated the key"
        );
        assert_eq!(t.in_use(), 1);
    });
}
