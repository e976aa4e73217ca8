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
//!
//! The second half models the words beside the counter, `LeaseWords`: the
//! request path's decision (`take`: a token of a lease valid at `now`, of
//! the last lease when Redis is unreachable and the policy spends it, or
//! none) racing the task's expiry give-back and its renewal (`renewed`:
//! grant, then expiry, then available) or its failure (`failed`). F3: a
//! request at an instant past every expiry written never spends a token as
//! valid, and past the renewal's expiry neither; F4: a last-lease token is
//! spent only once a call failed and only under the policy that spends it;
//! F1 and F2 as above, with the expiry's give-back taking out every token
//! of the old lease not spent (after it the lease holds at most the
//! renewal's grant).
#![cfg(tenlives_loom)]

#[allow(dead_code)]
#[path = "../../adapters/redis/src/lease.rs"]
mod lease;

use lease::{GiveBack, LeaseTokens, LeaseWords, Take};
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

/// Times in the words model: the first lease expires at 10, the renewal at
/// the expiry (t = 10) extends it to 20.
const FIRST_EXPIRY: u64 = 10;
const RENEWED_EXPIRY: u64 = 20;

/// Counts of what one request thread's takes did: (valid, last).
fn takes(lease: &LeaseWords, at: &[u64], spend_last: bool) -> (u64, u64, Vec<(u64, Take)>) {
    let (mut valid, mut last) = (0, 0);
    let mut seen = Vec::new();
    for &now in at {
        let t = lease.take(now, spend_last);
        match t {
            Take::Valid => valid += 1,
            Take::Last => last += 1,
            Take::None { .. } => {}
        }
        seen.push((now, t));
    }
    (valid, last, seen)
}

/// A lease of 2 (expiry 10) spent by a request at t = 5 (twice) and one at
/// `late` racing the task at the expiry: it takes the rest back, and its
/// call either succeeds (granting 1 and renewing until 20) or fails (Redis
/// unreachable from then on).
fn words_race(late: u64, call_ok: bool, spend_last: bool) {
    model(3, move || {
        let lease = Arc::new(LeaseWords::new());
        assert!(!lease.renewed(2, FIRST_EXPIRY));
        let early = {
            let lease = lease.clone();
            thread::spawn(move || takes(&lease, &[5, 5], spend_last))
        };
        let later = {
            let lease = lease.clone();
            thread::spawn(move || takes(&lease, &[late], spend_last))
        };
        // The task at t = 10: the lease expired; give the rest back.
        let taken = lease.tokens.give_back(GiveBack::All);
        let (grant, returned, lost) = if call_ok {
            assert!(!lease.renewed(1, RENEWED_EXPIRY), "Redis was available");
            (1, taken, 0)
        } else {
            assert!(lease.failed(), "Redis was available");
            (0, 0, taken)
        };
        let (v1, l1, _) = early.join().unwrap();
        let (v2, l2, seen) = later.join().unwrap();
        let held = lease.tokens.held();
        let spent = v1 + l1 + v2 + l2;
        let granted = 2 + grant;
        // F1: every token left the counter exactly once.
        assert_eq!(held + spent + returned + lost, granted);
        // F2: only the give-back's tokens are lost, only when its call
        // failed; none is lost beyond the tokens the expired lease held.
        assert_eq!(returned + lost, taken);
        assert!(lost <= 2);
        // After the expiry's give-back the lease holds at most the
        // renewal's grant: no token of the old lease is left to spend late.
        assert!(
            held <= grant,
            "held {held} after the give-back, grant {grant}"
        );
        // F3: past the expiry, a request spends a token as valid only if
        // the renewal wrote a later expiry, and never past that one.
        for (now, t) in seen {
            if t == Take::Valid {
                assert!(call_ok && now < RENEWED_EXPIRY, "valid at {now}");
            }
            // F4: a last-lease token only after a failed call, under the
            // policy that spends it.
            if t == Take::Last {
                assert!(!call_ok && spend_last, "last lease at {now}");
            }
            if let Take::None { available: false } = t {
                assert!(!call_ok, "unavailable seen with every call ok");
            }
        }
        // The early requests (t = 5 < 10) never need the last lease.
        assert_eq!(l1, 0);
    });
}

/// F1–F4: spending across the expiry while the task gives the old lease
/// back and renews it (the call succeeds); a request at 15, inside the
/// renewed lease.
#[test]
fn spending_races_an_expiry_and_a_renewal() {
    words_race(15, true, true);
}

/// F3: a request at 25, past the renewed lease too, never spends as valid.
#[test]
fn no_token_is_spent_as_valid_past_the_renewed_expiry() {
    words_race(25, true, true);
}

/// F1–F4: the call at the expiry fails under the degraded policy: what the
/// give-back took out is lost, a late request may spend only a token the
/// give-back did not take (as the last lease), never as valid.
#[test]
fn a_failed_call_at_the_expiry_leaves_only_the_last_lease() {
    words_race(15, false, true);
}

/// F3, F4: the same under a policy that does not spend the last lease
/// (fail open or closed): the late request spends nothing.
#[test]
fn without_the_last_lease_nothing_is_spent_past_the_expiry() {
    words_race(15, false, false);
}
