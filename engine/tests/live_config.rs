//! Quota changes of a rate limiter at run time (guarantees C2–C4 in
//! `docs/guarantees.md`): what a change carries over (no free burst, no
//! lock-out beyond one new refill, an identical quota changes nothing), the
//! event it emits, and changes racing with checks on other threads (every
//! decision taken whole under one quota; the tokens kept stay within the
//! tokens that appeared under each quota while it was in force plus the
//! bursts).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use tenlives_engine::events::{EventKind, EventRing, Received};
use tenlives_engine::rate::{Quota, RateLimitError, RateLimiter};
use tenlives_engine::time::Timestamp;

mod common;
use common::rng;

const SECOND: u64 = 1_000_000_000;

fn at(ns: u64) -> Timestamp {
    Timestamp::from_nanos(ns)
}

fn quota(rate: u32, per: Duration, burst: u32) -> Quota {
    Quota::new(rate, per).unwrap().with_burst(burst).unwrap()
}

/// Takes tokens one at a time until refused; returns how many.
fn drain(limiter: &RateLimiter, now: Timestamp) -> u64 {
    let mut taken = 0;
    while limiter.check(now).is_ok() {
        taken += 1;
        assert!(taken <= 1 << 20, "a drain never ends");
    }
    taken
}

#[test]
fn changing_to_the_same_quota_changes_nothing() {
    // C2: the conversion of a booking to an identical quota is exact, so a
    // limiter whose quota is re-set before every operation decides exactly
    // like one left alone.
    let q = quota(7, Duration::from_millis(3), 5);
    let plain = RateLimiter::new(q);
    let changed = RateLimiter::new(q);
    let mut next = rng(11);
    let mut t = SECOND;
    for _ in 0..5_000 {
        t += next() % 2_000_000;
        let n = 1 + (next() % 6) as u32;
        changed.set_quota(q, at(t));
        assert_eq!(
            changed.check_n(n, at(t)),
            plain.check_n(n, at(t)),
            "t = {t}"
        );
        assert_eq!(changed.available(at(t)), plain.available(at(t)));
    }
    assert_eq!(changed.quota(), q);
}

#[test]
fn a_change_never_hands_out_a_free_burst() {
    // C2: what was in use stays in use. A drained limiter at 10/s (burst 10)
    // has one second booked ahead; at 100/s (burst 10) that second is 100
    // tokens, capped at the new burst: nothing is available at once.
    let now = at(10 * SECOND);
    let limiter = RateLimiter::new(quota(10, Duration::from_secs(1), 10));
    assert_eq!(drain(&limiter, now), 10);
    limiter.set_quota(quota(100, Duration::from_secs(1), 10), now);
    assert_eq!(limiter.available(now), 0);
    assert!(limiter.check(now).is_err());
    // The new rate applies from the change on: one token per 10 ms.
    let later = now.saturating_add(Duration::from_millis(10));
    assert_eq!(limiter.available(later), 1);

    // Half drained (5 of 10 in use: half a second), then a burst of 20 at
    // the same rate: the half second still occupies 5 tokens, 15 are free.
    let limiter = RateLimiter::new(quota(10, Duration::from_secs(1), 10));
    for _ in 0..5 {
        limiter.check(now).unwrap();
    }
    limiter.set_quota(quota(10, Duration::from_secs(1), 20), now);
    assert_eq!(limiter.available(now), 15);
}

#[test]
fn a_change_never_locks_out_longer_than_one_new_refill() {
    // C2: a drained limiter at 1000/s (burst 1000: one second booked ahead)
    // moved to 2 per minute (burst 1): the second ahead rounds up to one new
    // token, capped at the new burst, so the next token comes within one
    // new emission interval (30 s), not after 1000 of them.
    let now = at(60 * SECOND);
    let limiter = RateLimiter::new(quota(1000, Duration::from_secs(1), 1000));
    assert_eq!(drain(&limiter, now), 1000);
    limiter.set_quota(quota(2, Duration::from_secs(60), 1), now);
    let ready = limiter.earliest(1, now).unwrap();
    assert!(ready > now);
    assert!(
        ready <= now.saturating_add(Duration::from_secs(30)),
        "{ready:?}"
    );
    assert!(limiter.check(ready).is_ok());

    // Debt carried into a quota that allows debt is kept in full.
    let limiter = RateLimiter::new(quota(10, Duration::from_secs(1), 2).with_debt());
    limiter.check_n(10, now).unwrap(); // a second booked ahead
    limiter.set_quota(quota(10, Duration::from_secs(1), 2).with_debt(), now);
    let ready = limiter.earliest(1, now).unwrap();
    assert_eq!(ready, now.saturating_add(Duration::from_millis(900)));
}

#[test]
fn refunds_and_cancels_after_a_change_go_to_the_new_quota() {
    let now = at(SECOND);
    let limiter = RateLimiter::new(quota(10, Duration::from_secs(1), 4));
    let r = limiter.reserve_n(2, now, Duration::ZERO).unwrap();
    limiter.check_n(2, now).unwrap();
    limiter.set_quota(quota(10, Duration::from_secs(1), 4).with_debt(), now);
    assert_eq!(limiter.available(now), 0);
    r.cancel();
    assert_eq!(limiter.available(now), 2);
    limiter.refund(5);
    // L3: never more than the burst.
    assert_eq!(limiter.available(now), 4);
    assert!(limiter.check_n(4, now).is_ok());
    assert!(matches!(
        limiter.check_n(1, now),
        Err(RateLimitError::Limited(_))
    ));
}

#[test]
fn a_change_emits_one_event() {
    let ring = EventRing::with_capacity(8).unwrap();
    let mut seen = ring.consumer();
    let now = at(5 * SECOND);
    let limiter = RateLimiter::with_sink(quota(10, Duration::from_secs(1), 10), &ring, 9);
    for _ in 0..4 {
        limiter.check(now).unwrap();
    }
    limiter.set_quota(quota(20, Duration::from_secs(1), 10), now);
    match seen.try_recv() {
        Some(Received::Event(e)) => {
            assert_eq!(e.kind, EventKind::CONFIG_CHANGED);
            assert_eq!(e.source, 9);
            assert_eq!(e.time, now);
            // 4 tokens at 10/s are 400 ms, 8 tokens at 20/s.
            assert_eq!(e.payload, [u64::from(EventKind::RATE_LIMITED.0), 8]);
        }
        other => panic!("expected a CONFIG_CHANGED event, got {other:?}"),
    }
    assert_eq!(seen.try_recv(), None);
}

#[test]
fn changes_racing_with_checks_at_one_instant_lose_and_create_nothing() {
    // C3. Time stands still; the writer swaps between two quotas that differ
    // only in debt mode, so every conversion is exact and the limiter must
    // behave as if it never changed: exactly `burst` tokens are granted in
    // all, whatever the interleaving. A check that combined one era's quota
    // with another era's word, or a grant that landed on a sealed word and
    // was not carried over, would show here as a token too many.
    const BURST: u32 = 64;
    let a = quota(1000, Duration::from_secs(1), BURST);
    let b = a.with_debt();
    let now = at(3 * SECOND);
    for round in 0..if cfg!(debug_assertions) { 20 } else { 100 } {
        let limiter = RateLimiter::new(a);
        let stop = AtomicBool::new(false);
        let granted = AtomicU64::new(0);
        thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    let mut mine = 0;
                    let mut tries = 0u64;
                    while !stop.load(Ordering::Relaxed) && tries < 10_000_000 {
                        tries += 1;
                        if limiter.check(now).is_ok() {
                            mine += 1;
                        }
                    }
                    granted.fetch_add(mine, Ordering::Relaxed);
                });
            }
            for i in 0..2_000u32 {
                limiter.set_quota(if i % 2 == 0 { b } else { a }, now);
            }
            stop.store(true, Ordering::Relaxed);
        });
        let total = granted.load(Ordering::Relaxed) + drain(&limiter, now);
        assert_eq!(total, u64::from(BURST), "round {round}");
    }
}

#[test]
fn changes_racing_with_checks_keep_the_bound_while_time_moves() {
    // C3. The writer moves time on and changes between two quotas with
    // different rates and bursts; two threads check at the shared clock.
    // Without debt or reservations every era starts with at most its burst
    // available and ends with none below zero, so the tokens granted are at
    // most the sum over eras of (tokens that appeared under its quota while
    // it was in force + its burst).
    let quotas = [
        quota(7, Duration::from_millis(3), 20),
        quota(1000, Duration::from_secs(1), 3),
    ];
    let changes = if cfg!(debug_assertions) {
        2_000
    } else {
        20_000
    };
    let limiter = RateLimiter::new(quotas[0]);
    let clock = AtomicU64::new(SECOND);
    let stop = AtomicBool::new(false);
    let granted = AtomicU64::new(0);
    let mut eras = vec![(quotas[0], SECOND)];
    thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let mut mine = 0;
                let mut tries = 0u64;
                while !stop.load(Ordering::Relaxed) && tries < 50_000_000 {
                    tries += 1;
                    let now = at(clock.load(Ordering::SeqCst));
                    if limiter.check(now).is_ok() {
                        mine += 1;
                    }
                }
                granted.fetch_add(mine, Ordering::Relaxed);
            });
        }
        let mut next = rng(5);
        let mut t = SECOND;
        for i in 0..changes {
            t += next() % 1_000_000;
            clock.store(t, Ordering::SeqCst);
            let q = quotas[(i + 1) % 2];
            limiter.set_quota(q, at(t));
            eras.push((q, t));
            if i % 64 == 0 {
                thread::yield_now();
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    let end = clock.load(Ordering::SeqCst);
    let mut bound = 0u64;
    for (i, (q, since)) in eras.iter().enumerate() {
        let until = eras.get(i + 1).map_or(end, |e| e.1);
        let appeared =
            q.tokens_by(Duration::from_nanos(until)) - q.tokens_by(Duration::from_nanos(*since));
        bound += appeared + u64::from(q.burst());
    }
    let total = granted.load(Ordering::Relaxed);
    assert!(total <= bound, "granted {total}, bound {bound}");
    // No lock-out: a second after the last change, a full burst is there.
    let last = eras.last().unwrap().0;
    assert_eq!(limiter.available(at(end + SECOND)), u64::from(last.burst()));
}
