//! loom models of the direct rate limiter's state cell
//! (engine/src/rate/cell.rs, gcra.rs, limiter.rs), each run on all three
//! cells: the narrow one (10 a second, `T` = 100 ms exactly), the scaled
//! one (3 every 300 000 001 ns, `T` a third of a nanosecond longer: `TAT·3`
//! in 64 bits) and the 128-bit one (17 every 1 700 000 001 ns, `T` a
//! seventeenth of a nanosecond longer: `(reset, k)` in one 128-bit cell,
//! modelled under loom by engine/src/sync.rs's `AtomicU128`, a loom
//! `AtomicPtr` to immutable values with the orderings the engine asks for).
//!
//! L1 (docs/guarantees.md): at one instant, concurrent checks never admit
//! more than the burst, and under enough demand admit exactly the burst;
//! L2: a check that refills the bucket (GCRA's reset of the arrival time)
//! racing with a check on a stale clock reading ends as one of the two
//! sequential orders, never a mix;
//! L3: a reservation cancelled while other threads check never lets more
//! than the burst through, and the tokens it gives back are exactly what it
//! took; L4: an all-or-nothing acquisition refused by its second limiter
//! leaves the first one charged only by what others kept.
#![cfg(tenlives_loom)]

use std::time::Duration;

use loom::sync::Arc;
use loom::thread;
use tenlives_engine::rate::{Quota, RateLimiter, TokenSource, acquire_all};
use tenlives_engine::time::Timestamp;
use tenlives_loom_tests::model;

/// The three cells' quotas, with a burst of `burst`.
fn quotas(burst: u32) -> [Quota; 3] {
    [
        Quota::per_second(10).unwrap(),
        Quota::new(3, Duration::from_nanos(300_000_001)).unwrap(),
        Quota::new(17, Duration::from_nanos(1_700_000_001)).unwrap(),
    ]
    .map(|q| q.with_burst(burst).unwrap())
}

/// Runs `f` as a loom model (at most `preemptions`) once per cell, with a
/// function making a limiter of the given burst on that cell's quota.
fn on_every_cell(preemptions: usize, f: fn(fn(u32) -> Arc<RateLimiter>)) {
    fn narrow(burst: u32) -> Arc<RateLimiter> {
        Arc::new(RateLimiter::new(quotas(burst)[0]))
    }
    fn scaled(burst: u32) -> Arc<RateLimiter> {
        Arc::new(RateLimiter::new(quotas(burst)[1]))
    }
    fn wide(burst: u32) -> Arc<RateLimiter> {
        Arc::new(RateLimiter::new(quotas(burst)[2]))
    }
    for limiter in [narrow as fn(u32) -> Arc<RateLimiter>, scaled, wide] {
        model(preemptions, move || f(limiter));
    }
}

const NOW: Timestamp = Timestamp::from_nanos(1_000_000_000);

/// L1: three threads take one token each, and one of them a second, from a
/// burst of 3 at the same instant: exactly 3 are granted.
#[test]
fn concurrent_checks_at_one_instant_grant_exactly_the_burst() {
    on_every_cell(3, |limiter| {
        let l = limiter(3);
        let threads: Vec<_> = (0..3)
            .map(|i| {
                let l = l.clone();
                thread::spawn(move || {
                    let mut granted = u32::from(l.check(NOW).is_ok());
                    if i == 0 {
                        granted += u32::from(l.check(NOW).is_ok());
                    }
                    granted
                })
            })
            .collect();
        let granted: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(granted, 3);
        assert_eq!(l.available(NOW), 0);
    });
}

/// L2: burst 2 at 10 a second (T = 100 ms; on the fractional cells a third
/// or a seventeenth of a nanosecond more, which moves no decision below), both tokens taken at
/// NOW, so TAT = NOW + 200 ms. A checks at NOW + 250 ms (a full bucket: it resets
/// the state to TAT = NOW + 350 ms); B checks at NOW + 150 ms (a stale
/// reading). B first: both pass, TAT = NOW + 400 ms. A first: B is refused
/// (350 + 100 - 150 > 200). Whichever order the compare-and-swaps take, the
/// end state is that order's, seen at NOW + 350 ms.
#[test]
fn a_refill_racing_with_a_stale_check_is_one_order_or_the_other() {
    fn at(ms: u64) -> Timestamp {
        Timestamp::from_nanos(NOW.as_nanos() + ms * 1_000_000)
    }
    on_every_cell(3, |limiter| {
        let l = limiter(2);
        l.check_n(2, NOW).unwrap();
        let refill = {
            let l = l.clone();
            thread::spawn(move || l.check(at(250)).is_ok())
        };
        let stale = {
            let l = l.clone();
            thread::spawn(move || l.check(at(150)).is_ok())
        };
        assert!(refill.join().unwrap(), "a full bucket always grants");
        let stale_granted = stale.join().unwrap();
        let expected = if stale_granted { 1 } else { 2 };
        // A nanosecond after NOW + 350 ms: the fractional quotas' refill
        // lands a third (a seventeenth) of a nanosecond after it.
        let end = Timestamp::from_nanos(at(350).as_nanos() + 1);
        assert_eq!(l.available(end), expected);
    });
}

/// L1, L3: a reservation of 2 that is cancelled races with two single
/// checks on a burst of 2. The checks never get more than 2 between them,
/// and afterwards exactly the tokens they kept are gone.
#[test]
fn reserve_and_cancel_racing_with_checks_never_over_admit() {
    on_every_cell(3, |limiter| {
        let l = limiter(2);
        let reserver = {
            let l = l.clone();
            thread::spawn(move || {
                if let Ok(r) = l.reserve_n(2, NOW, Duration::ZERO) {
                    r.cancel();
                }
            })
        };
        let checkers: Vec<_> = (0..2)
            .map(|_| {
                let l = l.clone();
                thread::spawn(move || u64::from(l.check(NOW).is_ok()))
            })
            .collect();
        reserver.join().unwrap();
        let kept: u64 = checkers.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(kept <= 2);
        assert_eq!(
            l.available(NOW),
            2 - kept,
            "the cancel gave back exactly what it took"
        );
    });
}

/// L4: one thread acquires from (a, b) all or nothing while another drains
/// b. Whatever the interleaving, a is charged only if b was too, and what
/// remains in a is its burst minus the successful acquisitions.
#[test]
fn all_or_nothing_never_leaves_a_partial_charge() {
    on_every_cell(3, |limiter| {
        let a = limiter(1);
        let b = limiter(1);
        let both = {
            let (a, b) = (a.clone(), b.clone());
            thread::spawn(move || {
                let pair: [(&dyn TokenSource, u32); 2] = [(&*a, 1), (&*b, 1)];
                acquire_all(&pair, NOW).is_ok()
            })
        };
        let drain = {
            let b = b.clone();
            thread::spawn(move || b.check(NOW).is_ok())
        };
        let got_both = both.join().unwrap();
        let drained = drain.join().unwrap();
        assert!(
            got_both != drained,
            "b has one token: exactly one of them gets it"
        );
        assert_eq!(a.available(NOW), u64::from(!got_both));
        assert_eq!(b.available(NOW), 0);
    });
}

/// A scaled cell's origin (engine/src/rate/cell.rs, `Origin`): the first
/// decision sets it; a look that takes nothing (`available`) racing it
/// either sees the fresh cell (the whole burst) or the decision's word with
/// the origin it was written with, never that word with an origin of its
/// own making. The two threads use times `2^51` ns apart, so the origin a
/// look would make (`2^50` ns before its own time) differs from the
/// decision's: a word read without the origin it was written with counts
/// the token as taken 2^51 ns later, and the look would see one left. (The
/// Acquire load of the word before the origin is what rules that out; loom
/// did not produce the stale read with both orderings made Relaxed, so the
/// pairing rests on its argument in `Origin::peek`, not on this model.)
/// Also two first decisions at those times: whichever sets the origin,
/// both count from it, so the later request always finds its bucket full
/// (a word read against another origin would put the earlier tokens 2^51
/// ns later, and refuse it); the earlier thread's two requests get what the
/// 128-bit cell would give them in the same order: both before the later
/// one, one, or none after it (its arrival time is then ahead of theirs).
#[test]
fn the_first_decision_sets_the_origin_every_look_and_decision_uses() {
    const FIRST: u64 = 1 << 52;
    const LATER: u64 = FIRST + (1 << 51);
    model(3, || {
        let l = Arc::new(RateLimiter::new(quotas(2)[1]));
        let decider = {
            let l = l.clone();
            thread::spawn(move || l.check(Timestamp::from_nanos(FIRST)).is_ok())
        };
        let seen = l.available(Timestamp::from_nanos(LATER));
        assert!(decider.join().unwrap());
        // At `LATER` the token taken at `FIRST` has long come back.
        assert_eq!(seen, 2);
        assert_eq!(l.available(Timestamp::from_nanos(LATER)), 2);
        assert_eq!(l.available(Timestamp::from_nanos(FIRST)), 1);
    });
    model(3, || {
        let l = Arc::new(RateLimiter::new(quotas(2)[1]));
        let early = {
            let l = l.clone();
            thread::spawn(move || {
                let t = Timestamp::from_nanos(FIRST);
                u32::from(l.check(t).is_ok()) + u32::from(l.check(t).is_ok())
            })
        };
        assert!(l.check(Timestamp::from_nanos(LATER)).is_ok());
        assert!(early.join().unwrap() <= 2);
        assert_eq!(l.available(Timestamp::from_nanos(LATER + (1 << 40))), 2);
    });
}
