//! loom models of the keyed rate limiter's table (engine/src/rate/keyed.rs).
//!
//! L5 (docs/guarantees.md): a racing eviction and lookup never lose or
//! duplicate a key's state — a charge that races with the eviction of its
//! key is kept (in the old entry if the charge won, in a fresh one if the
//! eviction won), and two threads inserting the same new key end up sharing
//! one entry. The chain models put every key in one bucket, so inserts
//! (pushes in front of the chain), charges and a sweep's unlinks (of the
//! chain's first entry or one behind it) race on one head. Under loom the epoch never reclaims (see engine/src/sync.rs),
//! so these models check the table's own atomic protocol: an evicted entry,
//! or one an insert took and handed back, stays in use; the free list's own
//! protocol, with grace periods, is modelled in `loom_free_list.rs`.
#![cfg(tenlives_loom)]

use std::collections::hash_map::DefaultHasher;
use std::hash::{BuildHasherDefault, Hasher};

use loom::sync::Arc;
use loom::thread;
use tenlives_engine::events::NoSink;
use tenlives_engine::rate::{KeyedConfig, KeyedRateLimiter, Quota};
use tenlives_engine::time::Timestamp;
use tenlives_loom_tests::model;

/// A fixed hasher: loom needs every execution of a model to take the same
/// path through the table, so the key must land in the same bucket each time.
type Fixed = BuildHasherDefault<DefaultHasher>;

/// Hashes every key alike: every key lands in one bucket's chain with the
/// same tag, told apart only by `Eq`, so the models race on one head.
#[derive(Default)]
struct Collide;

impl Hasher for Collide {
    fn finish(&self) -> u64 {
        0x0123_4567_89ab_cdef
    }
    fn write(&mut self, _: &[u8]) {}
}

/// The models run on every width of the table's state words (the two
/// chain models on the first): 1 a second (a whole-nanosecond interval:
/// 64-bit words), 3 a second (a third of a second: scaled 64-bit words,
/// `TAT·3`) and 17 a second (128-bit), all refilled long before the
/// models' 10 s.
const WIDTHS: [u32; 3] = [1, 3, 17];

fn quota(rate: u32, burst: u32) -> Quota {
    Quota::per_second(rate).unwrap().with_burst(burst).unwrap()
}

fn one_chain(rate: u32, burst: u32) -> Arc<KeyedRateLimiter<u32, BuildHasherDefault<Collide>>> {
    let config = KeyedConfig::new(quota(rate, burst), 4).unwrap();
    Arc::new(KeyedRateLimiter::with_hasher_and_sink(
        config,
        BuildHasherDefault::default(),
        NoSink,
        0,
    ))
}

fn table(rate: u32, burst: u32) -> Arc<KeyedRateLimiter<u32, Fixed>> {
    let config = KeyedConfig::new(quota(rate, burst), 4).unwrap();
    Arc::new(KeyedRateLimiter::with_hasher_and_sink(
        config,
        Fixed::default(),
        NoSink,
        0,
    ))
}

/// When key 7, the evictable key of the models below, takes its token.
const EARLIER: Timestamp = Timestamp::ZERO;
/// Ten seconds later: key 7's bucket is full again (evictable), and the
/// models' requests and sweeps run at this time.
const NOW: Timestamp = Timestamp::from_nanos(10_000_000_000);

/// L5: key 7 is in the table with a full bucket (evictable). One thread
/// charges it while another sweeps: afterwards exactly one token is gone.
#[test]
fn a_charge_racing_with_eviction_is_never_lost() {
    for rate in WIDTHS {
        model(3, move || {
            let t = table(rate, 2);
            t.check_key(&7, EARLIER).unwrap();
            let charger = {
                let t = t.clone();
                thread::spawn(move || t.check_key(&7, NOW).is_ok())
            };
            let sweeper = {
                let t = t.clone();
                thread::spawn(move || t.sweep(NOW))
            };
            assert!(charger.join().unwrap(), "a full bucket grants one token");
            let evicted = sweeper.join().unwrap();
            assert!(evicted <= 1);
            // One token of two is left, whichever won.
            assert!(t.peek_key_n(&7, 1, NOW).is_ok());
            assert!(t.peek_key_n(&7, 2, NOW).is_err(), "the charge was lost");
        });
    }
}

/// L5: two threads make the first request of the same key at once; the
/// table ends up with one entry holding both charges.
#[test]
fn racing_inserts_of_one_key_share_one_entry() {
    for rate in WIDTHS {
        model(3, move || {
            let t = table(rate, 2);
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
            // The key's entry, and the entry of an insert that lost the race
            // to publish if it had taken one: handed back through the epoch, so
            // in use until a grace period that never ends under loom.
            let in_use = t.in_use();
            assert!((1..=2).contains(&in_use), "{in_use} entries in use");
        });
    }
}

/// L5, the chain protocol: one bucket holds key 3 (in use) in front of key 7
/// (evictable). A new key's insert (a push in front of the chain), a charge
/// of key 7 and a sweep (unlinking 7 from the middle of the chain, or through
/// a new front entry the insert pushed while it swept) race.
/// Afterwards each key has exactly the tokens its own requests took: the
/// insert is not lost to the unlink, the charge not lost to the eviction,
/// and key 3 untouched.
#[test]
fn an_insert_a_charge_and_an_eviction_in_one_chain() {
    // The longest model: one width (the charge racing an eviction runs on
    // both in `a_charge_racing_with_eviction_is_never_lost`).
    let rate = WIDTHS[0];
    model(2, move || {
        let t = one_chain(rate, 2);
        t.check_key(&7, EARLIER).unwrap();
        t.check_key_n(&3, 2, NOW).unwrap();
        let inserter = {
            let t = t.clone();
            thread::spawn(move || t.check_key(&9, NOW).is_ok())
        };
        let charger = {
            let t = t.clone();
            thread::spawn(move || t.check_key(&7, NOW).is_ok())
        };
        let evicted = t.sweep(NOW);
        assert!(inserter.join().unwrap(), "a new key has its burst");
        assert!(charger.join().unwrap(), "a full bucket grants one token");
        assert!(evicted <= 1, "only key 7 was fresh");
        for key in [7, 9] {
            assert!(
                t.peek_key_n(&key, 1, NOW).is_ok(),
                "key {key}: one token left"
            );
            assert!(
                t.peek_key_n(&key, 2, NOW).is_err(),
                "key {key}: a charge was lost"
            );
        }
        assert!(t.peek_key_n(&3, 1, NOW).is_err(), "key 3 kept its booking");
        // 3, 9 and 7 (in its first entry, or a new one after the eviction).
        assert_eq!(t.in_use(), 3 + evicted);
    });
}

/// L5, the chain protocol: two first requests of one key race with the
/// eviction of the chain's front entry (key 7, evictable, pushed last). The
/// inserts publish against a head the unlink moves: one entry for key 5.
#[test]
fn racing_inserts_and_an_unlink_of_the_front_share_one_entry() {
    // No state word races here but the sweep's: one width.
    let rate = WIDTHS[0];
    model(2, move || {
        let t = one_chain(rate, 2);
        t.check_key(&7, EARLIER).unwrap();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let t = t.clone();
                thread::spawn(move || t.check_key(&5, NOW).is_ok())
            })
            .collect();
        let evicted = t.sweep(NOW);
        for th in threads {
            assert!(th.join().unwrap());
        }
        assert!(evicted <= 1);
        assert!(
            t.peek_key_n(&5, 1, NOW).is_err(),
            "a second entry duplicated the key"
        );
        // Key 5 and key 7 (kept or retired), and the entry of an insert of
        // key 5 that lost the race to publish, if it had taken one (handed
        // back through the epoch: in use under loom, where grace periods
        // never end).
        let in_use = t.in_use();
        assert!((2..=3).contains(&in_use), "{in_use} entries in use");
    });
}
