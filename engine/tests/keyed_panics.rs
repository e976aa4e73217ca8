//! The keyed rate limiter with keys whose `Hash`, `Eq` or `Clone` panic on
//! command (L7, docs/guarantees.md): a panic in user code during a lookup or
//! an insert loses no entry of the table. After every kind of panic, at
//! every point where the table calls user code, the table still takes its
//! full capacity of live keys. A test binary of its own: the panics are
//! armed per thread, and the table is filled to its last entry.
//!
//! An entry an insert took and handed back goes back to the free list
//! through the epoch (the free list's rule, `engine/src/rate/keyed/free.rs`):
//! right after a panic it may still count in `in_use`, for one grace
//! period, and [`settles_to`] checks that it comes back.

use std::cell::Cell;
use std::hash::{Hash, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};

use foldhash::fast::FixedState;
use tenlives_engine::events::NoSink;
use tenlives_engine::rate::{KeyedConfig, KeyedRateLimiter, Quota, RateLimitError};
use tenlives_engine::time::Timestamp;

thread_local! {
    /// Calls of each kind left before one panics (`u32::MAX`: never).
    static HASH_LEFT: Cell<u32> = const { Cell::new(u32::MAX) };
    static EQ_LEFT: Cell<u32> = const { Cell::new(u32::MAX) };
    static CLONE_LEFT: Cell<u32> = const { Cell::new(u32::MAX) };
}

fn tick(counter: &'static std::thread::LocalKey<Cell<u32>>, what: &str) {
    counter.with(|c| match c.get() {
        u32::MAX => {}
        0 => {
            c.set(u32::MAX);
            panic!("{what} panics on command");
        }
        n => c.set(n - 1),
    });
}

/// A key whose hash is its `group` only: keys of one group collide, so that
/// the table has to compare them with `Eq`.
#[derive(Debug)]
struct Touchy {
    group: u32,
    id: u32,
}

impl Hash for Touchy {
    fn hash<H: Hasher>(&self, state: &mut H) {
        tick(&HASH_LEFT, "hash");
        self.group.hash(state);
    }
}

impl PartialEq for Touchy {
    fn eq(&self, other: &Self) -> bool {
        tick(&EQ_LEFT, "eq");
        self.group == other.group && self.id == other.id
    }
}

impl Eq for Touchy {}

impl Clone for Touchy {
    fn clone(&self) -> Self {
        tick(&CLONE_LEFT, "clone");
        Touchy {
            group: self.group,
            id: self.id,
        }
    }
}

const CAPACITY: usize = 16;

fn table() -> KeyedRateLimiter<Touchy, FixedState> {
    // One token an hour: a key charged once stays live (not evictable) for
    // the whole test.
    let quota = Quota::per_hour(1).unwrap();
    KeyedRateLimiter::with_hasher_and_sink(
        KeyedConfig::new(quota, CAPACITY).unwrap(),
        FixedState::with_seed(3),
        NoSink,
        0,
    )
}

const NOW: Timestamp = Timestamp::from_nanos(1_000_000_000);

/// Fills the table with live keys of distinct groups (the groups of the
/// panicking attempts are above 1 000) and checks it took exactly its
/// capacity.
fn assert_full_capacity(t: &KeyedRateLimiter<Touchy, FixedState>, already: usize) {
    let mut admitted = already;
    for group in 0..CAPACITY as u32 * 4 {
        if admitted == CAPACITY {
            break;
        }
        let key = Touchy { group, id: 0 };
        match t.check_key(&key, NOW) {
            Ok(()) => admitted += 1,
            Err(e) => panic!("key {group} refused with {admitted} of {CAPACITY} in: {e:?}"),
        }
    }
    assert_eq!(t.in_use(), CAPACITY);
    assert_eq!(
        t.check_key(&Touchy { group: 999, id: 0 }, NOW),
        Err(RateLimitError::TableFull)
    );
}

/// After a panicking attempt: at most one entry (the one the attempt took)
/// waits for its grace period, and once the epoch has advanced (this
/// thread pinning and flushing, the other tests' threads unpinning) the
/// table holds exactly `live` entries.
fn settles_to(t: &KeyedRateLimiter<Touchy, FixedState>, live: usize, what: &str) {
    assert!(t.in_use() <= live + 1, "{what}: {} in use", t.in_use());
    for _ in 0..100_000 {
        if t.in_use() == live {
            return;
        }
        crossbeam_epoch::pin().flush();
        std::thread::yield_now();
    }
    panic!("{what} kept an entry: {} in use, {live} live", t.in_use());
}

fn arm(counter: &'static std::thread::LocalKey<Cell<u32>>, after: u32) {
    counter.with(|c| c.set(after));
}

fn disarm() {
    for c in [&HASH_LEFT, &EQ_LEFT, &CLONE_LEFT] {
        c.with(|c| c.set(u32::MAX));
    }
}

fn attempt(t: &KeyedRateLimiter<Touchy, FixedState>, key: &Touchy) -> bool {
    let panicked = catch_unwind(AssertUnwindSafe(|| t.check_key(key, NOW))).is_err();
    disarm();
    panicked
}

#[test]
fn a_panicking_clone_on_insert_loses_no_entry() {
    let t = table();
    for i in 0..CAPACITY as u32 * 3 {
        arm(&CLONE_LEFT, 0);
        assert!(attempt(
            &t,
            &Touchy {
                group: 1_000 + i,
                id: 0
            }
        ));
        settles_to(&t, 0, &format!("attempt {i}"));
    }
    assert_full_capacity(&t, 0);
}

#[test]
fn a_panicking_eq_during_an_insert_loses_no_entry() {
    let t = table();
    // A live key of group 1 000: every other key of that group is compared
    // with it, once in the lookup and once more in the insert's rescan.
    assert!(
        t.check_key(
            &Touchy {
                group: 1_000,
                id: 0
            },
            NOW
        )
        .is_ok()
    );
    for i in 0..CAPACITY as u32 * 3 {
        for after in 0..2 {
            arm(&EQ_LEFT, after);
            assert!(
                attempt(
                    &t,
                    &Touchy {
                        group: 1_000,
                        id: 1 + i
                    }
                ),
                "eq call {after} panics"
            );
            settles_to(&t, 1, &format!("attempt {i}, eq call {after}"));
        }
    }
    assert_full_capacity(&t, 1);
}

#[test]
fn a_panicking_hash_loses_no_entry() {
    let t = table();
    for i in 0..CAPACITY as u32 * 3 {
        arm(&HASH_LEFT, 0);
        assert!(attempt(
            &t,
            &Touchy {
                group: 1_000 + i,
                id: 0
            }
        ));
        arm(&HASH_LEFT, 0);
        let peek = catch_unwind(AssertUnwindSafe(|| {
            t.peek_key_n(&Touchy { group: 7, id: 0 }, 1, NOW)
        }));
        assert!(peek.is_err());
        disarm();
    }
    assert_eq!(t.in_use(), 0);
    assert_full_capacity(&t, 0);
}
