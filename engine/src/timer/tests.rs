//! The timer wheel against a sequential model: a `BTreeMap` of the armed
//! deadlines (in ticks), the set of fired timers, each stripe's free
//! entries and its `next_due` word as the protocol defines it (lowered by
//! each registration in the stripe, recomputed exactly by each expiry).
//! Every operation's result (`WheelFull`, the stripe an entry is taken
//! from, `wake_driver`, fired counts, `next`, `poll`) and every wake must
//! match the model.

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::task::Waker;
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering as StdOrdering};
use std::task::Wake;

use proptest::prelude::*;

use super::*;

/// A waker that counts its wakes.
struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, StdOrdering::Relaxed);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, StdOrdering::Relaxed);
    }
}

fn counting() -> (Arc<Count>, Waker) {
    let count = Arc::new(Count(AtomicUsize::new(0)));
    (Arc::clone(&count), Waker::from(count))
}

const RES: u64 = 1_000; // 1 µs ticks

#[derive(Clone, Debug)]
enum Op {
    /// Register a timer `after` ns past the current time.
    Register(u64),
    /// Cancel (give back) the k-th live timer.
    Cancel(usize),
    /// Poll the k-th live timer.
    Poll(usize),
    /// Move time forward by `by` ns and expire.
    Expire(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..20_000).prop_map(Op::Register),
        2 => any::<usize>().prop_map(Op::Cancel),
        2 => any::<usize>().prop_map(Op::Poll),
        2 => (0u64..8_000).prop_map(Op::Expire),
    ]
}

struct Live {
    id: u64,
    entry: TimerEntry,
    count: Arc<Count>,
    waker: Waker,
}

/// Operations per case: under Miri, where each takes about a third of a
/// second, 40 (a case of up to 120 took 23 s there).
const MAX_OPS: usize = if cfg!(miri) { 40 } else { 120 };

/// Under Miri a few cases only, and no failure file (Miri isolates the test
/// from the file system).
fn config() -> ProptestConfig {
    if cfg!(miri) {
        ProptestConfig {
            cases: 4,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    } else {
        ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_wheel_matches_its_model(capacity in 1usize..6, ops in proptest::collection::vec(op(), 1..MAX_OPS)) {
        let wheel = TimerWheel::new(capacity, Duration::from_nanos(RES)).unwrap();
        let mut now = 0u64;
        let mut next_id = 0u64;
        let mut live: Vec<Live> = Vec::new();
        // The model.
        let mut armed: BTreeMap<u64, (u64, usize)> = BTreeMap::new(); // id -> (tick, stripe)
        let mut fired: BTreeSet<u64> = BTreeSet::new();
        let stripes = wheel.stripes.len();
        prop_assert!(stripes.is_power_of_two() && stripes <= STRIPES.min(capacity));
        // Each stripe's entries: from its start to the next one's.
        let lens: Vec<usize> = (0..stripes)
            .map(|s| wheel.stripes.get(s + 1).map_or(capacity, |next| next.start) - wheel.stripes[s].start)
            .collect();
        prop_assert_eq!(lens.iter().sum::<usize>(), capacity);
        prop_assert!(lens.iter().all(|&len| len >= capacity / stripes));
        let mut free = lens.clone();
        let mut next_due = vec![NONE; stripes];
        let home = stripe::current() & (stripes - 1);
        for op in ops {
            match op {
                Op::Register(after) => {
                    let deadline = now + after;
                    let (count, waker) = counting();
                    match wheel.register(Timestamp::from_nanos(deadline), &waker) {
                        Ok(reg) => {
                            prop_assert!(live.len() < capacity);
                            // This thread's stripe, or else the next one
                            // with a free entry.
                            let want = (0..stripes).map(|i| (home + i) % stripes).find(|&s| free[s] > 0);
                            let s = reg.entry.stripe as usize;
                            prop_assert_eq!(Some(s), want);
                            let start = wheel.stripes[s].start;
                            let index = reg.entry.index as usize;
                            prop_assert!(index >= start && index < start + lens[s]);
                            free[s] -= 1;
                            let tick = deadline.div_ceil(RES);
                            prop_assert_eq!(reg.wake_driver, tick < next_due[s]);
                            next_due[s] = next_due[s].min(tick);
                            armed.insert(next_id, (tick, s));
                            live.push(Live { id: next_id, entry: reg.entry, count, waker });
                            next_id += 1;
                        }
                        Err(WheelFull) => prop_assert_eq!(live.len(), capacity),
                    }
                }
                Op::Cancel(k) if !live.is_empty() => {
                    let l = live.swap_remove(k % live.len());
                    let wakes = l.count.0.load(StdOrdering::Relaxed);
                    free[l.entry.stripe as usize] += 1;
                    wheel.cancel(l.entry);
                    armed.remove(&l.id);
                    let was_fired = fired.remove(&l.id);
                    // Woken once if it fired, never otherwise; never after.
                    prop_assert_eq!(wakes, usize::from(was_fired));
                    prop_assert_eq!(l.count.0.load(StdOrdering::Relaxed), wakes);
                }
                Op::Poll(k) if !live.is_empty() => {
                    let k = k % live.len();
                    let l = &mut live[k];
                    let poll = wheel.poll(&mut l.entry, &l.waker);
                    prop_assert_eq!(poll.is_ready(), fired.contains(&l.id));
                }
                Op::Expire(by) => {
                    now += by;
                    let now_tick = now / RES;
                    let due: Vec<u64> = armed.iter().filter(|(_, (t, _))| *t <= now_tick).map(|(id, _)| *id).collect();
                    for id in &due {
                        armed.remove(id);
                        fired.insert(*id);
                    }
                    let expired = wheel.expire(Timestamp::from_nanos(now));
                    prop_assert_eq!(expired.fired, due.len());
                    for (s, word) in next_due.iter_mut().enumerate() {
                        *word = armed.values().filter(|(_, at)| *at == s).map(|(t, _)| *t).min().unwrap_or(NONE);
                    }
                    let earliest = next_due.iter().copied().min().unwrap_or(NONE);
                    let want = (earliest != NONE).then(|| Timestamp::from_nanos(earliest * RES));
                    prop_assert_eq!(expired.next, want);
                    prop_assert_eq!(wheel.next_due(), want);
                }
                _ => {}
            }
            // Every fired timer was woken exactly once, every armed one never.
            for l in &live {
                let wakes = l.count.0.load(StdOrdering::Relaxed);
                prop_assert_eq!(wakes, usize::from(fired.contains(&l.id)), "timer {}", l.id);
            }
        }
        // Everything goes back: the wheel is whole again.
        for l in live.drain(..) {
            wheel.cancel(l.entry);
        }
        let all: Vec<_> = (0..capacity)
            .map(|_| wheel.register(Timestamp::MAX, Waker::noop()))
            .collect::<Result<_, _>>()
            .expect("every entry free");
        prop_assert!(wheel.register(Timestamp::MAX, Waker::noop()).is_err());
        for reg in all {
            wheel.cancel(reg.entry);
        }
    }
}

#[test]
fn a_deadline_never_fires_early_and_at_most_one_tick_late() {
    let wheel = TimerWheel::new(4, Duration::from_millis(1)).unwrap();
    let mut entry = wheel
        .register(Timestamp::from_nanos(2_500_000), Waker::noop())
        .unwrap()
        .entry;
    // Rounded up to the 3 ms tick.
    assert_eq!(wheel.next_due(), Some(Timestamp::from_nanos(3_000_000)));
    assert_eq!(wheel.expire(Timestamp::from_nanos(2_999_999)).fired, 0);
    assert!(wheel.poll(&mut entry, Waker::noop()).is_pending());
    assert_eq!(wheel.expire(Timestamp::from_nanos(3_000_000)).fired, 1);
    assert!(wheel.poll(&mut entry, Waker::noop()).is_ready());
    wheel.cancel(entry);
}

#[test]
fn timestamp_max_and_zero_deadlines() {
    let wheel = TimerWheel::new(2, Duration::from_nanos(1)).unwrap();
    // With 1 ns ticks, Timestamp::MAX is the "none" tick of `next_due`: the
    // driver is not asked to wake for it (584 years on), though an expiry
    // at that instant would fire it.
    let mut never = wheel.register(Timestamp::MAX, Waker::noop()).unwrap();
    assert!(!never.wake_driver);
    assert_eq!(wheel.next_due(), None);
    let mut now = wheel
        .register(Timestamp::ZERO, Waker::noop())
        .unwrap()
        .entry;
    assert_eq!(wheel.expire(Timestamp::ZERO).fired, 1);
    assert!(wheel.poll(&mut now, Waker::noop()).is_ready());
    assert_eq!(wheel.expire(Timestamp::from_nanos(u64::MAX - 1)).fired, 0);
    assert!(wheel.poll(&mut never.entry, Waker::noop()).is_pending());
    assert_eq!(wheel.expire(Timestamp::MAX).fired, 1);
    wheel.cancel(now);
    wheel.cancel(never.entry);
    // On a coarse wheel Timestamp::MAX rounds up past the end of time: the
    // driver is asked for Timestamp::MAX (saturated), and nothing fires it.
    let coarse = TimerWheel::new(1, Duration::from_millis(1)).unwrap();
    let max = coarse.register(Timestamp::MAX, Waker::noop()).unwrap();
    assert!(max.wake_driver);
    assert_eq!(coarse.next_due(), Some(Timestamp::MAX));
    assert_eq!(coarse.expire(Timestamp::MAX).fired, 0);
    coarse.cancel(max.entry);
}

#[test]
fn a_stale_entry_handle_cannot_fire_a_reused_entry() {
    // Fire an entry, give it back, take it again: the old generation is
    // gone, and the new use is armed, not fired.
    let wheel = TimerWheel::new(1, Duration::from_nanos(1)).unwrap();
    let first = wheel
        .register(Timestamp::from_nanos(5), Waker::noop())
        .unwrap()
        .entry;
    let old_generation = first.generation;
    wheel.cancel(first);
    let (count, waker) = counting();
    let mut second = wheel
        .register(Timestamp::from_nanos(50), &waker)
        .unwrap()
        .entry;
    assert_eq!(second.index, 0);
    assert_ne!(second.generation, old_generation);
    // An expiry at the first use's deadline does not touch the second.
    assert_eq!(wheel.expire(Timestamp::from_nanos(5)).fired, 0);
    assert!(wheel.poll(&mut second, &waker).is_pending());
    assert_eq!(count.0.load(StdOrdering::Relaxed), 0);
    wheel.cancel(second);
}

#[test]
fn bad_settings_are_typed_errors() {
    assert_eq!(
        TimerWheel::new(0, Duration::from_millis(1)).unwrap_err(),
        ConfigError::Zero { field: "capacity" }
    );
    assert_eq!(
        TimerWheel::new(1, Duration::ZERO).unwrap_err(),
        ConfigError::ZeroDuration {
            field: "resolution"
        }
    );
    assert_eq!(
        TimerWheel::new(1, Duration::MAX).unwrap_err(),
        ConfigError::DurationOverflow {
            field: "resolution"
        }
    );
}

#[test]
fn a_new_waker_replaces_the_old_one() {
    let wheel = TimerWheel::new(1, Duration::from_nanos(1)).unwrap();
    let (first, w1) = counting();
    let (second, w2) = counting();
    let mut entry = wheel
        .register(Timestamp::from_nanos(10), &w1)
        .unwrap()
        .entry;
    assert!(wheel.poll(&mut entry, &w2).is_pending());
    wheel.expire(Timestamp::from_nanos(10));
    assert_eq!(first.0.load(StdOrdering::Relaxed), 0);
    assert_eq!(second.0.load(StdOrdering::Relaxed), 1);
    wheel.cancel(entry);
}

/// A waker that panics when woken (user code of a custom executor).
struct Panics;

impl Wake for Panics {
    fn wake(self: Arc<Self>) {
        panic!("a waker that panics");
    }
}

#[test]
fn a_panicking_waker_leaves_the_wheel_whole_and_the_pass_finished() {
    let wheel = TimerWheel::new(2, Duration::from_nanos(1)).unwrap();
    let panicking = Waker::from(Arc::new(Panics));
    let (count, counted) = counting();
    let bad = wheel
        .register(Timestamp::from_nanos(5), &panicking)
        .unwrap()
        .entry;
    let good = wheel
        .register(Timestamp::from_nanos(5), &counted)
        .unwrap()
        .entry;
    let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wheel.expire(Timestamp::from_nanos(5))
    }));
    assert!(pass.is_err(), "the waker's panic reaches the expirer");
    // The pass went on past the panicking waker: the other timer fired.
    assert_eq!(count.0.load(StdOrdering::Relaxed), 1);
    assert!(wheel.fired(&bad) && wheel.fired(&good));
    wheel.cancel(bad);
    wheel.cancel(good);
    // Both entries came back: the wheel holds its capacity again.
    let again: Vec<TimerEntry> = (0..2)
        .map(|_| {
            wheel
                .register(Timestamp::from_nanos(9), &counted)
                .unwrap()
                .entry
        })
        .collect();
    assert_eq!(wheel.expire(Timestamp::from_nanos(9)).fired, 2);
    for entry in again {
        wheel.cancel(entry);
    }
}
