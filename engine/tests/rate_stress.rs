//! Multi-threaded stress tests of the rate limiters, checking conservation
//! over a virtual-time run (L2, L4, L5): with worker threads competing for
//! tokens (checks, multi-token checks, reservations that are cancelled or
//! kept) and a driver that moves time on only once the limiter is drained,
//! the tokens kept equal `floor(T * rate / period) + burst` exactly — none
//! lost, none created. The keyed run adds a sweeper evicting fresh keys
//! while the workers use them. A third run lets time move on its own, so
//! that the bucket refills (GCRA resets its arrival time) and threads act
//! on stale clock readings (time going backwards between threads): the
//! tokens kept never exceed `floor(T_max * rate / period) + burst`, and no
//! instant ever shows more than the burst available.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use tenlives_engine::rate::{KeyedConfig, KeyedRateLimiter, Quota, RateLimiter, WhenFull};
use tenlives_engine::time::Timestamp;

mod common;
use common::rng;

const THREADS: usize = 3;
const STEPS: u64 = if cfg!(debug_assertions) { 300 } else { 1_000 };

/// The limiters' quotas: 7 tokens every 3 ms (an emission interval
/// that is not a whole number of nanoseconds: the scaled 64-bit state,
/// `TAT·7`), 7 every 2 999 997 ns (428 571 ns exactly: the narrow 64-bit
/// state), and 17 every 7 285 715 ns (`a = 17`: the 128-bit state), an
/// interval a little longer than the first's, so that `drive`'s steps stay
/// below `burst - 1` of them.
fn quotas() -> [Quota; 3] {
    [(7, 3_000_000), (7, 2_999_997), (17, 7_285_715)].map(|(rate, period)| {
        Quota::new(rate, Duration::from_nanos(period))
            .unwrap()
            .with_burst(20)
            .unwrap()
    })
}

/// Moves virtual time on by at most `burst - 1` emission intervals at a time,
/// each time after `drained(now)` says the workers took everything.
fn drive(clock: &AtomicU64, stop: &AtomicBool, drained: impl Fn(Timestamp) -> bool) -> u64 {
    let mut next = rng(99);
    let max_step = 19 * 3_000_000 / 7;
    let mut t = 0;
    for _ in 0..STEPS {
        let now = Timestamp::from_nanos(t);
        while !drained(now) {
            thread::yield_now();
        }
        t += 1 + next() % max_step;
        clock.store(t, Ordering::SeqCst);
    }
    let end = Timestamp::from_nanos(t);
    while !drained(end) {
        thread::yield_now();
    }
    stop.store(true, Ordering::SeqCst);
    t
}

#[test]
fn direct_limiter_conserves_tokens_across_threads() {
    for quota in quotas() {
        direct_limiter_conserves_tokens(quota);
    }
}

fn direct_limiter_conserves_tokens(quota: Quota) {
    let limiter = RateLimiter::new(quota);
    let clock = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    // Reservations in progress. A cancel gives tokens back, but never more than
    // the burst: a reservation cancelled after time moved on can lose
    // tokens to that cap (L3), so time moves only between calls.
    let outstanding = AtomicU64::new(0);
    let (kept, end) = thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|w| {
                let (limiter, clock, stop, outstanding) = (&limiter, &clock, &stop, &outstanding);
                s.spawn(move || {
                    let mut next = rng(w as u64 + 1);
                    let mut kept = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let op = next() % 4;
                        let reserving = op >= 2;
                        if reserving {
                            // Announced before reading the clock, so the
                            // driver never moves time on under an open
                            // reservation.
                            outstanding.fetch_add(1, Ordering::SeqCst);
                        }
                        let now = Timestamp::from_nanos(clock.load(Ordering::SeqCst));
                        match op {
                            0 => kept += u64::from(limiter.check(now).is_ok()),
                            1 => {
                                let n = 1 + (next() % 3) as u32;
                                if limiter.check_n(n, now).is_ok() {
                                    kept += u64::from(n);
                                }
                            }
                            _ => {
                                let n = 1 + (next() % 2) as u32;
                                if let Ok(r) = limiter.reserve_n(n, now, Duration::ZERO) {
                                    if next().is_multiple_of(2) {
                                        r.cancel();
                                    } else {
                                        kept += r.tokens();
                                        r.commit();
                                    }
                                }
                            }
                        }
                        if reserving {
                            outstanding.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    kept
                })
            })
            .collect();
        let end = drive(&clock, &stop, |now| {
            outstanding.load(Ordering::SeqCst) == 0 && limiter.available(now) == 0
        });
        let kept: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
        (kept, end)
    });
    let expected = quota.tokens_by(Duration::from_nanos(end)) + u64::from(quota.burst());
    assert_eq!(kept, expected, "{quota:?}");
}

#[test]
fn direct_limiter_never_exceeds_the_bound_while_time_runs() {
    for quota in quotas() {
        direct_limiter_stays_within_the_bound(quota);
    }
}

fn direct_limiter_stays_within_the_bound(quota: Quota) {
    let limiter = RateLimiter::new(quota);
    let clock = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    // Operations done: the driver lets a few happen between its steps, so
    // that time never races ahead of idle workers.
    let ops = AtomicU64::new(0);
    let kept = thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|w| {
                let (limiter, clock, stop, ops) = (&limiter, &clock, &stop, &ops);
                s.spawn(move || {
                    let mut next = rng(w as u64 + 40);
                    let mut kept = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let now = Timestamp::from_nanos(clock.load(Ordering::SeqCst));
                        let n = 1 + (next() % 3) as u32;
                        match next() % 3 {
                            0 => kept += u64::from(limiter.check(now).is_ok()),
                            1 => {
                                if limiter.check_n(n, now).is_ok() {
                                    kept += u64::from(n);
                                }
                            }
                            _ => {
                                let wait = Duration::from_nanos(next() % 2_000_000);
                                if let Ok(r) = limiter.reserve_n(n, now, wait) {
                                    if next().is_multiple_of(2) {
                                        r.cancel();
                                    } else {
                                        kept += r.tokens();
                                        r.commit();
                                    }
                                }
                            }
                        }
                        assert!(limiter.available(now) <= u64::from(quota.burst()));
                        ops.fetch_add(1, Ordering::SeqCst);
                    }
                    kept
                })
            })
            .collect();
        let mut next = rng(77);
        for _ in 0..STEPS * 4 {
            // Steps up to 30 emission intervals: the bucket refills at
            // times, and the reservations' waits reach past the next step.
            let done = ops.load(Ordering::SeqCst);
            clock.fetch_add(1 + next() % 13_000_000, Ordering::SeqCst);
            while ops.load(Ordering::SeqCst) < done + 1 + next() % 8 {
                thread::yield_now();
            }
        }
        stop.store(true, Ordering::SeqCst);
        workers.into_iter().map(|w| w.join().unwrap()).sum::<u64>()
    });
    // Reservations may book up to their wait beyond the last reading.
    let end = clock.load(Ordering::SeqCst) + 2_000_000;
    let bound = quota.tokens_by(Duration::from_nanos(end)) + u64::from(quota.burst());
    assert!(
        kept <= bound,
        "{quota:?}: kept {kept} tokens, bound {bound}"
    );
    assert!(kept > 0);
}

/// On a table of each width of state words (`quotas()`): three
/// threads charge 64 keys while a fourth sweeps. Time moves as in
/// `drive`, except that every fourth step jumps two bursts ahead, so every
/// key's bucket refills and the sweeper may evict it while the workers
/// charge it (the race guarantee L5 is about: a charge is kept in the old
/// entry or the key starts fresh, never both, never lost). A bucket full at
/// a jump `j` (no debt left) grants exactly `burst + tokens_by(t - j)` by
/// a later `t` reached in small steps, so each key's total is exact. The
/// sweeper sweeps at the oldest time a worker may still be deciding with:
/// L5 covers requests stamped at or after the sweep's `now` (a worker that
/// read the time before a jump and decides after an eviction at the new
/// time would take a token from a fresh bucket in the past, which this
/// test, sweeping at the new time, failed on as one token too many).
#[test]
fn keyed_limiter_conserves_tokens_per_key_while_sweeping() {
    for quota in quotas() {
        keyed_conserves(quota);
    }
}

fn keyed_conserves(quota: Quota) {
    // Enough keys that some are still full when the workers start on a
    // jump's time and the sweep at it runs.
    const KEYS: usize = 64;
    let limiter = KeyedRateLimiter::new(
        KeyedConfig::new(quota, 128)
            .unwrap()
            .when_full(WhenFull::Reject),
    );
    let clock = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let evicted = AtomicU64::new(0);
    // Closed while time jumps: no worker starts a decision.
    let gate = AtomicBool::new(false);
    // The time each worker is deciding with: 0 while it reads the clock,
    // then the time it read, `u64::MAX` between its decisions.
    let seen: Vec<AtomicU64> = (0..THREADS).map(|_| AtomicU64::new(u64::MAX)).collect();
    let kept: Vec<AtomicU64> = (0..KEYS).map(|_| AtomicU64::new(0)).collect();
    let expected = thread::scope(|s| {
        for w in 0..THREADS {
            let (limiter, clock, stop, kept, seen, gate) =
                (&limiter, &clock, &stop, &kept, &seen, &gate);
            s.spawn(move || {
                let mut next = rng(w as u64 + 10);
                while !stop.load(Ordering::SeqCst) {
                    // Announced before the gate is looked at: a worker that
                    // passes an open gate reads the clock after a jump's
                    // time was stored, or is waited for before it.
                    seen[w].store(0, Ordering::SeqCst);
                    if gate.load(Ordering::SeqCst) {
                        seen[w].store(u64::MAX, Ordering::SeqCst);
                        thread::yield_now();
                        continue;
                    }
                    let t = clock.load(Ordering::SeqCst);
                    seen[w].store(t, Ordering::SeqCst);
                    let now = Timestamp::from_nanos(t);
                    let key = (next() % KEYS as u64) as usize;
                    let n = 1 + (next() % 2) as u32;
                    if limiter.check_key_n(&key, n, now).is_ok() {
                        kept[key].fetch_add(u64::from(n), Ordering::SeqCst);
                    }
                    seen[w].store(u64::MAX, Ordering::SeqCst);
                }
            });
        }
        {
            let (limiter, clock, stop, evicted, seen) = (&limiter, &clock, &stop, &evicted, &seen);
            s.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    // Read the clock first: a worker that reads it after
                    // reads this time or a later one.
                    let t = clock.load(Ordering::SeqCst);
                    let oldest = seen.iter().map(|t| t.load(Ordering::SeqCst)).min();
                    let now = Timestamp::from_nanos(oldest.map_or(t, |o| o.min(t)));
                    evicted.fetch_add(limiter.sweep(now) as u64, Ordering::SeqCst);
                    assert!(limiter.in_use() <= limiter.capacity());
                    thread::yield_now();
                }
            });
        }
        let drained = |now| (0..KEYS).all(|k| limiter.peek_key_n(&k, 1, now).is_err());
        let mut next = rng(99);
        let burst = u64::from(quota.burst());
        let interval = quota.period().as_nanos() as u64 / u64::from(quota.rate());
        let (mut t, mut full_at, mut expected) = (0u64, 0u64, burst);
        for step in 1..=STEPS {
            while !drained(Timestamp::from_nanos(t)) {
                thread::yield_now();
            }
            if step % 4 == 0 {
                // The epoch since the last full bucket ends at `t`.
                expected += quota.tokens_by(Duration::from_nanos(t - full_at)) + burst;
                t += 2 * burst * interval;
                full_at = t;
                // No decision with the old time may run past the jump: close
                // the gate, wait for every worker's decision to end, move
                // time, open the gate and sweep at once at the new time
                // (every key not yet charged at it is full, and its eviction
                // races the workers' charges).
                gate.store(true, Ordering::SeqCst);
                while seen.iter().any(|s| s.load(Ordering::SeqCst) != u64::MAX) {
                    thread::yield_now();
                }
                clock.store(t, Ordering::SeqCst);
                gate.store(false, Ordering::SeqCst);
                evicted.fetch_add(
                    limiter.sweep(Timestamp::from_nanos(t)) as u64,
                    Ordering::SeqCst,
                );
            } else {
                t += 1 + next() % ((burst - 1) * interval);
                clock.store(t, Ordering::SeqCst);
            }
        }
        while !drained(Timestamp::from_nanos(t)) {
            thread::yield_now();
        }
        stop.store(true, Ordering::SeqCst);
        expected + quota.tokens_by(Duration::from_nanos(t - full_at))
    });
    for (key, kept) in kept.iter().enumerate() {
        assert_eq!(kept.load(Ordering::SeqCst), expected, "key {key}");
    }
    assert!(
        evicted.load(Ordering::SeqCst) > 0,
        "no key was evicted: the test tests no race with eviction"
    );
}
