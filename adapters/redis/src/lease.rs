//! The lease's token counter: the one word requests spend from and the
//! background task grants into and takes back from.
//!
//! This file is self-contained on purpose: its atomics come through the cfg
//! shim below, and the loom model (`loom-tests/tests/loom_redis_lease.rs`)
//! compiles this very file with `--cfg tenlives_loom`, so the model checks
//! the code the limiter runs, not a copy of it.
//!
//! A token leaves the word exactly once: a request takes it (and spends it,
//! or puts it back when its own engine limiter refuses), or the task takes
//! it out to give it back to Redis. So no token is spent twice, and none is
//! given back that was spent; with the task counting what it takes out as
//! returned (the call succeeded) or lost (it failed: the token may have
//! reached Redis, so it is never put back), `held + spent + returned + lost
//! = granted` at every quiescent point.
//!
//! Beside the counter, [`LeaseWords`] holds the lease's expiry and Redis's
//! availability, and makes the request path's decision on all three: spend
//! a token of a valid lease, spend one of the last lease (Redis unreachable,
//! degraded policy), or none. The loom model checks that decision racing a
//! renewal and an expiry, too.

#[cfg(not(tenlives_loom))]
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
#[cfg(tenlives_loom)]
use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// What the task takes out of the lease to give back to Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GiveBack {
    Nothing,
    /// The whole lease (expired, or shutting down).
    All,
    /// What the lease holds above this many tokens.
    Above(u64),
}

/// The tokens granted by Redis and not yet spent or given back.
#[derive(Debug)]
pub(crate) struct LeaseTokens {
    tokens: AtomicU64,
}

impl LeaseTokens {
    pub(crate) fn new(held: u64) -> Self {
        LeaseTokens {
            tokens: AtomicU64::new(held),
        }
    }

    /// Takes one token if there is one (the request path).
    #[inline]
    pub(crate) fn take_one(&self) -> bool {
        // ordering: Relaxed; the count is the only data the word carries,
        // and the read-modify-write makes each token leave it exactly once.
        self.tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Puts back a token taken by [`take_one`](Self::take_one) and not
    /// spent (the process's own limiter refused the request).
    #[inline]
    pub(crate) fn put_back(&self) {
        // ordering: Relaxed; see `take_one`.
        self.tokens.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds the tokens Redis granted (the task).
    pub(crate) fn grant(&self, granted: u64) {
        // ordering: Relaxed; see `take_one`.
        self.tokens.fetch_add(granted, Ordering::Relaxed);
    }

    /// Takes out the tokens to give back (the task) and returns how many.
    pub(crate) fn give_back(&self, what: GiveBack) -> u64 {
        // ordering: Relaxed; see `take_one`.
        match what {
            GiveBack::Nothing => 0,
            GiveBack::All => self.tokens.swap(0, Ordering::Relaxed),
            GiveBack::Above(keep) => self
                .tokens
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n > keep).then_some(keep)
                })
                .map_or(0, |n| n - keep),
        }
    }

    /// The tokens held now (a snapshot).
    #[inline]
    pub(crate) fn held(&self) -> u64 {
        // ordering: Relaxed; a count for decisions and reports.
        self.tokens.load(Ordering::Relaxed)
    }
}

/// What [`LeaseWords::take`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Take {
    /// Took a token of a lease valid at `now`.
    Valid,
    /// Took a token of the last lease, past its expiry: Redis unreachable
    /// and the caller spends the last lease (the degraded policy).
    Last,
    /// Took none: the lease is expired or empty; `available` is Redis's
    /// availability as read for the decision.
    None { available: bool },
}

/// The words the request path reads: the tokens, the expiry and Redis's
/// availability.
///
/// | word | meaning | written by |
/// |---|---|---|
/// | `tokens` | granted, not spent, not given back | requests (take one, put one back), the task (grant, give back) |
/// | `expiry` | instant (ns on the limiter's clock) after which the lease may not be spent while Redis is reachable | the task, after a successful call |
/// | `available` | whether the last Redis call succeeded | the task |
#[derive(Debug)]
pub(crate) struct LeaseWords {
    pub(crate) tokens: LeaseTokens,
    expiry: AtomicU64,
    available: AtomicBool,
}

impl LeaseWords {
    /// No tokens, expired, Redis taken as available until a call fails.
    pub(crate) fn new() -> Self {
        LeaseWords {
            tokens: LeaseTokens::new(0),
            expiry: AtomicU64::new(0),
            available: AtomicBool::new(true),
        }
    }

    /// The request path: takes a token of a lease valid at `now`, or — Redis
    /// unreachable and `spend_last` (the degraded policy) — of the last
    /// lease, past its expiry.
    #[inline]
    pub(crate) fn take(&self, now: u64, spend_last: bool) -> Take {
        // ordering: Relaxed for both words. A request needs no memory
        // published with them: a token is a count, taken by a
        // read-modify-write; a stale expiry or availability only moves one
        // request to the other side of a renewal, expiry or failure that
        // happened concurrently (the loom model checks what that allows).
        let expiry = self.expiry.load(Ordering::Relaxed);
        let available = self.available.load(Ordering::Relaxed);
        let valid = now < expiry;
        let last = !available && spend_last;
        if (valid || last) && self.tokens.take_one() {
            if valid { Take::Valid } else { Take::Last }
        } else {
            Take::None { available }
        }
    }

    /// The expiry (the task reads it to decide a refresh).
    pub(crate) fn expiry(&self) -> u64 {
        // ordering: Relaxed; only the task writes it.
        self.expiry.load(Ordering::Relaxed)
    }

    /// Whether the last Redis call succeeded.
    pub(crate) fn available(&self) -> bool {
        // ordering: Relaxed; a flag only the task writes.
        self.available.load(Ordering::Relaxed)
    }

    /// A successful call granted `granted` tokens and renewed the lease
    /// until `expiry`: the grant is added first, then the expiry, then Redis
    /// is marked available. Returns whether it was unavailable (recovered).
    pub(crate) fn renewed(&self, granted: u64, expiry: u64) -> bool {
        self.tokens.grant(granted);
        // ordering: Relaxed; see `take`.
        self.expiry.store(expiry, Ordering::Relaxed);
        !self.available.swap(true, Ordering::Relaxed)
    }

    /// A call failed: Redis is marked unavailable. Returns whether it was
    /// available.
    pub(crate) fn failed(&self) -> bool {
        // ordering: Relaxed; see `take`.
        self.available.swap(false, Ordering::Relaxed)
    }
}

#[cfg(all(test, not(tenlives_loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    /// Requests taking tokens (and putting some back) race a task adding
    /// grants and giving tokens back (all, or the excess above a target):
    /// every token leaves the word exactly once, so spent + given back +
    /// left = granted.
    #[test]
    fn a_token_is_spent_or_given_back_exactly_once() {
        let lease = Arc::new(LeaseTokens::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let spenders: Vec<_> = (0..3)
            .map(|k| {
                let (lease, done) = (Arc::clone(&lease), Arc::clone(&done));
                std::thread::spawn(move || {
                    let mut spent = 0u64;
                    let mut i = 0u64;
                    // ordering: Relaxed; a stop flag.
                    while !done.load(Ordering::Relaxed) {
                        if lease.take_one() {
                            i += 1;
                            // Every fifth token of spender 0 is refused by
                            // the share limiter and put back.
                            if k == 0 && i.is_multiple_of(5) {
                                lease.put_back();
                            } else {
                                spent += 1;
                            }
                        }
                    }
                    spent
                })
            })
            .collect();
        let (mut granted, mut returned) = (0u64, 0u64);
        for i in 0..20_000u64 {
            let grant = i % 7;
            lease.grant(grant);
            granted += grant;
            returned += match i % 3 {
                0 => lease.give_back(GiveBack::All),
                1 => lease.give_back(GiveBack::Above(2)),
                _ => lease.give_back(GiveBack::Nothing),
            };
        }
        done.store(true, Ordering::Relaxed);
        let spent: u64 = spenders.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(spent + returned + lease.held(), granted);
    }

    #[test]
    fn give_back_above_keeps_the_target() {
        let lease = LeaseTokens::new(10);
        assert_eq!(lease.give_back(GiveBack::Above(4)), 6);
        assert_eq!(lease.held(), 4);
        assert_eq!(lease.give_back(GiveBack::Above(4)), 0);
        assert_eq!(lease.give_back(GiveBack::All), 4);
        assert_eq!(lease.give_back(GiveBack::All), 0);
        assert!(!lease.take_one());
        lease.grant(1);
        assert!(lease.take_one());
        lease.put_back();
        assert_eq!(lease.held(), 1);
    }
}
