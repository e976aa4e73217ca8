//! loom model of the fleet rate limiter's lease counter
//! (adapters/redis/src/lease.rs, `LeaseTokens`).
//!
//! The file below is the limiter's own: it is compiled here through
//! `#[path]`, and with `--cfg tenlives_loom` its cfg shim takes the atomics
//! from loom. The threads play the limiter's parts exactly as
//! adapters/redis/src/limiter.rs does: requests `take_one` and, when the
//! process's share limiter refuses, `put_back`; the background task
//! `grant`s what a refresh brought, and at expiry `give_back(All)`s the
//! unspent rest (or `Above(keep)` when the demand fell), counting what it
//! took out as returned when the script call succeeds and as lost when it
//! fails (never putting it back).
//!
//! F1 (docs/guarantees.md): no token is spent twice and none is given
//! back that was spent: `held + spent + returned + lost = granted` once the
//! threads are done, in every interleaving. F2: none is lost beyond the
//! expiry's give-back: the only tokens counted lost are the ones that
//! give-back took out, and after an expiry the lease holds only tokens put
//! back after it. Preemption bound 3.
#![cfg(tenlives_loom)]

#[allow(dead_code)]
#[path = "../../adapters/redis/src/lease.rs"]
mod lease;

use lease::{GiveBack, LeaseTokens};
use loom::sync::Arc;
use loom::thread;
use tenlives_loom_tests::model;

/// A request: takes a token if the lease has one; `refuse` plays the
/// share limiter refusing, so the token goes back. Returns (spent, put back).
fn request(lease: &LeaseTokens, refuse: bool) -> (u64, u64) {
    if !lease.take_one() {
        return (0, 0);
    }
    if refuse {
        lease.put_back();
        (0, 1)
    } else {
        (1, 0)
    }
}

/// The task's refresh-then-expiry: grants `grant` tokens, then takes back
/// `what`; the give-back call succeeds or fails. Returns (granted,
/// returned, lost, taken out).
fn task(lease: &LeaseTokens, grant: u64, what: GiveBack, call_ok: bool) -> (u64, u64, u64, u64) {
    lease.grant(grant);
    let taken = lease.give_back(what);
    if call_ok {
        (grant, taken, 0, taken)
    } else {
        (grant, 0, taken, taken)
    }
}

fn race(initial: u64, grant: u64, what: GiveBack, call_ok: bool) {
    model(3, move || {
        let lease = Arc::new(LeaseTokens::new(initial));
        // Two requests spending, one spending then refused by its share.
        let spender = {
            let lease = lease.clone();
            thread::spawn(move || {
                let (a, _) = request(&lease, false);
                let (b, _) = request(&lease, false);
                a + b
            })
        };
        let refused = {
            let lease = lease.clone();
            thread::spawn(move || {
                let (s, p) = request(&lease, false);
                let (s2, p2) = request(&lease, true);
                (s + s2, p + p2)
            })
        };
        let (granted, returned, lost, taken) = task(&lease, grant, what, call_ok);
        let spent_a = spender.join().unwrap();
        let (spent_b, put_back) = refused.join().unwrap();
        let granted = initial + granted;
        let spent = spent_a + spent_b;
        let held = lease.held();
        // F1: every token left the word exactly once.
        assert_eq!(
            held + spent + returned + lost,
            granted,
            "held {held} spent {spent} returned {returned} lost {lost} granted {granted}"
        );
        // F2: only the give-back's tokens are lost, and only when its call
        // failed.
        assert_eq!(returned + lost, taken);
        if call_ok {
            assert_eq!(lost, 0);
        }
        if what == GiveBack::All {
            // After the expiry took the rest, only a token put back later
            // (at most one here) is left.
            assert!(
                held <= put_back,
                "held {held} after expiry, put back {put_back}"
            );
        }
        if let GiveBack::Above(keep) = what {
            assert!(
                held <= keep + put_back,
                "held {held} above {keep} + {put_back}"
            );
        }
    });
}

/// F1, F2: a lease of 2 spent by two requests racing a refresh adding 1 and
/// an expiry taking the rest back, the call succeeding.
#[test]
fn spending_races_a_refresh_and_an_expiry() {
    race(2, 1, GiveBack::All, true);
}

/// F1, F2: as above, the give-back call failing: what the expiry took out is
/// lost (never put back), nothing else.
#[test]
fn a_failed_give_back_loses_only_what_it_took() {
    race(2, 1, GiveBack::All, false);
}

/// F1, F2: the demand fell: the task gives back what is above 1 while the
/// requests spend.
#[test]
fn giving_back_the_excess_races_spending() {
    race(3, 1, GiveBack::Above(1), true);
}
