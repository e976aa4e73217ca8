//! Model: the rate limiters against a reference GCRA written with exact
//! rational arithmetic in 128-bit integers, under random operations and
//! virtual time (moving forwards, backwards, and to the end of time).
//!
//! The reference is the definition, nothing more: with `T = period / rate`
//! held as the fraction itself (times are kept in units of `1 / rate` ns, so
//! `T` is `period` of them), a request for `n` tokens at `t` is admitted iff
//! `max(TAT, t) + min(n, b)·T - t <= b·T` (`min` only in debt mode; without
//! it `n > b` is refused as insufficient), and then `TAT := max(TAT, t) +
//! n·T`. A refusal's earliest time is `max(TAT, t) + n·T - b·T`, rounded up
//! to a nanosecond. A refund of `n` lowers `TAT` by `n·T`, but not below the
//! instant of the last request that found a full bucket. A quota change at
//! `t` to the same interval keeps `TAT` (cut to `t + b·T` without debt);
//! to another it keeps `TAT - t` rounded up to a nanosecond, then up to
//! whole tokens of the new quota, capped at its burst without debt. It shares no code with
//! the engine (which reduces `rate / period` and counts tokens since a reset).
//!
//! A quota whose interval is a whole number of nanoseconds (`rate` divides
//! `period`) and whose burst spans less than `2^62` ns runs on the engine's
//! 64-bit state (the direct limiter's cell, and every entry of a keyed
//! table for that quota), and so does one whose interval is a fraction
//! `c / a` ns with `a <= 16` (its cell or word holds `TAT·a`),
//! with two documented departures, modelled here: `(TAT - origin)·a`
//! never passes `2^63 - 1`, the origin zero for a whole interval and, for
//! a fraction, `2^50` ns before the state's first use (clamped at zero;
//! a time before the origin is decided as at the origin) (a request that would push it further, or
//! that comes later, is refused with an earliest time of `u64::MAX`, and
//! only the tokens that fit count as available; a quota change cuts `TAT`
//! there; a request that would pass it is refused so whether or not it
//! would have conformed), and a refund may take `TAT` back to zero rather than only to the
//! last full bucket (to the origin).
//!
//! Invariants checked (docs/guarantees.md): L1 (never more than the burst at
//! one instant), L2 (exact GCRA: every decision, every earliest time, every
//! count of available tokens equals the definition's), L3 (refunds never
//! create tokens beyond the burst), L4 (`acquire_all` charges every source
//! as its reference would, or none), L5 (keyed decisions equal one
//! independent limiter per key, whatever the evictions), C2 (quota
//! changes).

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use tenlives_engine::rate::{
    KeyedConfig, KeyedRateLimiter, Quota, RateLimitError, RateLimiter, TokenSource, WhenFull,
    acquire_all,
};
use tenlives_engine::time::Timestamp;

mod common;

/// The reference: GCRA by its definition, in units of `1 / rate` ns.
#[derive(Clone, Debug)]
struct Reference {
    rate: u128,
    period: u128,
    burst: u128,
    debt: bool,
    /// `TAT · rate`.
    tat: u128,
    /// The last instant a request found a full bucket (or a quota change).
    reset: u64,
    /// On the engine's 64-bit state (see the module documentation).
    narrow: bool,
    /// `gcd(rate, period)`: the engine's state counts in units of
    /// `1 / a` ns, `a = rate / g`.
    g: u128,
    /// Where a scaled state (64-bit, `a > 1`) counts from: set by its
    /// first use; zero for the others.
    origin: Option<u64>,
}

/// How far before its first use a scaled state's origin is put.
const ORIGIN_SLACK: u64 = 1 << 50;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The latest `TAT` of the 64-bit state, in ns.
const NARROW_END: u128 = (1 << 63) - 1;

#[derive(Debug, PartialEq)]
enum Decision {
    Granted { ready_at: u64 },
    Limited { earliest: u64 },
    Insufficient,
}

fn ceil_ns(x: u128, rate: u128) -> u64 {
    u64::try_from(x.div_ceil(rate)).unwrap_or(u64::MAX)
}

impl Reference {
    fn new(rate: u32, period_ns: u64, burst: u32, debt: bool) -> Self {
        Reference {
            rate: u128::from(rate),
            period: u128::from(period_ns),
            burst: u128::from(burst),
            debt,
            tat: 0,
            reset: 0,
            narrow: u64::from(rate) / gcd(u64::from(rate), period_ns) <= 16
                && u128::from(burst) * u128::from(period_ns / gcd(u64::from(rate), period_ns))
                    < 1 << 62,
            g: u128::from(gcd(u64::from(rate), period_ns)),
            origin: None,
        }
    }

    /// Whether the engine keeps this state in a scaled 64-bit word.
    fn scaled(&self) -> bool {
        self.narrow && self.rate / self.g > 1
    }

    /// The origin for a use at `t`: the first use of a scaled state sets
    /// it.
    fn origin_at(&mut self, t: u64) -> u64 {
        if !self.scaled() {
            return 0;
        }
        *self.origin.get_or_insert(t.saturating_sub(ORIGIN_SLACK))
    }

    /// The origin, times `rate`.
    fn origin_units(&self) -> u128 {
        u128::from(self.origin.unwrap_or(0)) * self.rate
    }

    /// The latest `TAT` the state holds, times `rate`: `(TAT - origin)·a`
    /// at most `2^63 - 1` on the 64-bit state.
    fn end(&self) -> u128 {
        if self.narrow {
            NARROW_END * self.g + self.origin_units()
        } else {
            u128::MAX
        }
    }

    /// Decides `n` tokens at `t` that must conform by `horizon`.
    fn take(&mut self, n: u32, t: u64, horizon: u64) -> Decision {
        let origin = self.origin_at(t);
        let (real, t, horizon) = (t, t.max(origin), horizon.max(origin));
        let n = u128::from(n);
        let cost = if n <= self.burst {
            n
        } else if self.debt {
            self.burst
        } else {
            return Decision::Insufficient;
        };
        let now = u128::from(t) * self.rate;
        let start = self.tat.max(now);
        if start + n * self.period > self.end() {
            return Decision::Limited { earliest: u64::MAX };
        }
        // max(TAT, t) + cost·T - b·T, when positive.
        let ready = (start + cost * self.period).saturating_sub(self.burst * self.period);
        if ready > u128::from(horizon) * self.rate {
            return Decision::Limited {
                earliest: ceil_ns(ready, self.rate),
            };
        }
        if self.tat <= now {
            self.reset = t;
        }
        self.tat = start + n * self.period;
        Decision::Granted {
            ready_at: if ready <= now {
                real
            } else {
                ceil_ns(ready, self.rate)
            },
        }
    }

    /// The decision on `n` tokens at `t`, taking nothing (and leaving the
    /// origin to the next decision, as the engine does).
    fn peek(&self, n: u32, t: u64) -> Decision {
        self.clone().take(n, t, t)
    }

    /// When `n` tokens conform if nobody else takes any.
    fn earliest(&self, n: u32, t: u64) -> Option<u64> {
        match self.clone().take(n, t, u64::MAX) {
            Decision::Granted { ready_at } => Some(ready_at),
            Decision::Limited { earliest } => Some(earliest),
            Decision::Insufficient => None,
        }
    }

    fn refund(&mut self, n: u32) {
        let floor = if self.narrow {
            self.origin_units()
        } else {
            u128::from(self.reset) * self.rate
        };
        self.tat = self
            .tat
            .saturating_sub(u128::from(n) * self.period)
            .max(floor.min(self.tat));
    }

    /// Tokens available at `t` (a look: the origin it would set is not
    /// kept).
    fn available(&self, t: u64) -> u64 {
        let mut at = self.clone();
        let now = u128::from(t.max(at.origin_at(t))) * self.rate;
        let tat = self.tat.max(now);
        let tokens = (now + self.burst * self.period).saturating_sub(tat) / self.period;
        tokens.min(at.end().saturating_sub(tat) / self.period) as u64
    }

    fn change(&mut self, rate: u32, period_ns: u64, burst: u32, debt: bool, t: u64) {
        let now = u128::from(t) * self.rate;
        let mut next = Reference::new(rate, period_ns, burst, debt);
        // A new scaled state counts from the change.
        next.origin_at(t);
        if self.rate * next.period == next.rate * self.period {
            // The same interval: TAT is kept, cut at the new burst.
            next.tat = self.tat * next.rate / self.rate;
            next.reset = self.reset;
            let cap = u128::from(t) * next.rate + next.burst * next.period;
            if !debt && next.tat > cap {
                next.tat = cap;
                next.reset = t;
            }
            next.tat = next.tat.min(next.end()).max(next.origin_units());
            *self = next;
            return;
        }
        let ahead_ns = self.tat.saturating_sub(now).div_ceil(self.rate);
        let mut k = (ahead_ns * next.rate).div_ceil(next.period);
        if !debt {
            k = k.min(next.burst);
        }
        next.tat = (u128::from(t) * next.rate + k * next.period)
            .min(next.end())
            .max(next.origin_units());
        next.reset = t;
        *self = next;
    }
}

#[derive(Clone, Debug)]
enum Op {
    Advance(u64),
    Back(u64),
    /// Jump to `Timestamp::MAX` minus this much.
    EndOfTime(u64),
    Check,
    CheckN(u32),
    Peek(u32),
    Earliest(u32),
    Reserve(u32, u64),
    CancelLast,
    Refund(u32),
    /// Change to quota number `i % 4` of the run's alternatives, or (for
    /// even `i / 4`) only to its burst and debt mode.
    Change(usize),
}

fn op(burst: u32, period_ns: u64) -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => forward_op(burst, period_ns),
        1 => (0..period_ns / 4).prop_map(Op::Back),
        1 => prop_oneof![Just(0u64), 0..period_ns].prop_map(Op::EndOfTime),
        1 => any::<usize>().prop_map(Op::Change),
    ]
}

/// The operations that keep time moving forwards. Keyed runs use only
/// these: an eviction judges a key fresh at the sweep's `now`, and a later
/// request stamped earlier would find it fresh where the reference still
/// remembers it. (Generated directly rather than filtered out of `op`: a
/// filter rejected one operation in eight, and at a few thousand cases the
/// rejections passed proptest's limit and aborted the test.)
fn forward_op(burst: u32, period_ns: u64) -> impl Strategy<Value = Op> {
    let max_n = burst * 2 + 2;
    prop_oneof![
        4 => (0..period_ns / 2).prop_map(Op::Advance),
        5 => Just(Op::Check),
        3 => (1..=max_n).prop_map(Op::CheckN),
        2 => (1..=max_n).prop_map(Op::Peek),
        2 => (1..=max_n).prop_map(Op::Earliest),
        2 => ((1..=max_n), 0..period_ns).prop_map(|(n, w)| Op::Reserve(n, w)),
        1 => Just(Op::CancelLast),
        1 => (1..=max_n).prop_map(Op::Refund),
    ]
}

fn quota_params() -> impl Strategy<Value = (u32, u64, u32, bool)> {
    (
        1u32..2_000,
        prop_oneof![
            Just(1_000_000_000u64),
            Just(60_000_000_000),
            Just(1_000),
            1u64..3_000,
            1_000u64..10_000_000_000,
        ],
        1u32..20,
        any::<bool>(),
    )
        .prop_filter("at most one token a nanosecond", |(r, p, _, _)| {
            u64::from(*r) <= *p
        })
}

fn quota_of((rate, period, burst, debt): (u32, u64, u32, bool)) -> Quota {
    let quota = Quota::new(rate, Duration::from_nanos(period))
        .unwrap()
        .with_burst(burst)
        .unwrap();
    if debt { quota.with_debt() } else { quota }
}

fn decision(result: Result<Timestamp, RateLimitError>) -> Decision {
    match result {
        Ok(t) => Decision::Granted {
            ready_at: t.as_nanos(),
        },
        Err(RateLimitError::Limited(l)) => Decision::Limited {
            earliest: l.earliest().as_nanos(),
        },
        Err(RateLimitError::Insufficient(_)) => Decision::Insufficient,
        Err(other) => panic!("a direct limiter has no table: {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn direct_limiter_matches_the_reference(
        params in quota_params(),
        others in prop::collection::vec(quota_params(), 4),
        ops in prop::collection::vec(op(8, 1_000_000_000), 1..200),
        // A clock's first microsecond, or nanoseconds since the Unix epoch
        // (past `2^63 / a` for `a >= 6`: scaled states count from an origin).
        start in prop_oneof![Just(1_000u64), Just(1_765_000_000_000_000_000)],
    ) {
        let (rate, period, burst, debt) = params;
        let limiter = RateLimiter::new(quota_of(params));
        let mut model = Reference::new(rate, period, burst, debt);
        let (mut rate, mut period, mut burst) = (rate, period, burst);
        let mut t = start;
        let mut reservations = Vec::new();
        for op in ops {
            let now = Timestamp::from_nanos(t);
            match op {
                Op::Advance(d) => t = t.saturating_add(d % period.max(2)),
                Op::Back(d) => t = t.saturating_sub(d % period.max(2)),
                Op::EndOfTime(d) => t = u64::MAX - d,
                Op::Check => {
                    let got = decision(limiter.check(now).map(|()| now).map_err(Into::into));
                    prop_assert_eq!(got, model.take(1, t, t));
                }
                Op::CheckN(n) => {
                    let got = decision(limiter.check_n(n, now).map(|()| now));
                    prop_assert_eq!(got, model.take(n, t, t));
                }
                Op::Peek(n) => {
                    let got = decision(limiter.peek_n(n, now).map(|()| now));
                    let want = model.peek(n, t);
                    prop_assert_eq!(got, want);
                }
                Op::Earliest(n) => {
                    let got = limiter.earliest(n, now).ok().map(Timestamp::as_nanos);
                    prop_assert_eq!(got, model.earliest(n, t));
                }
                Op::Reserve(n, wait) => {
                    let wait = wait % period.max(2);
                    let got = limiter.reserve_n(n, now, Duration::from_nanos(wait));
                    let want = model.take(n, t, t.saturating_add(wait));
                    match got {
                        Ok(r) => {
                            prop_assert_eq!(Decision::Granted { ready_at: r.ready_at().as_nanos() }, want);
                            reservations.push(r);
                        }
                        Err(e) => prop_assert_eq!(decision(Err(e)), want),
                    }
                }
                Op::CancelLast => {
                    if let Some(r) = reservations.pop() {
                        model.refund(r.tokens() as u32);
                        r.cancel();
                    }
                }
                Op::Refund(n) => {
                    limiter.refund(n);
                    model.refund(n);
                }
                Op::Change(i) => {
                    let mut next = others[i % others.len()];
                    if (i / others.len()).is_multiple_of(2) {
                        // Only the burst or debt mode changes.
                        (next.0, next.1) = (rate, period);
                    }
                    limiter.set_quota(quota_of(next), now);
                    model.change(next.0, next.1, next.2, next.3, t);
                    (rate, period, burst) = (next.0, next.1, next.2);
                    prop_assert_eq!(limiter.quota(), quota_of(next));
                }
            }
            let now = Timestamp::from_nanos(t);
            let available = limiter.available(now);
            prop_assert_eq!(available, model.available(t));
            prop_assert!(available <= u64::from(burst), "L1: {} above the burst {}", available, burst);
        }
    }

    #[test]
    fn acquire_all_matches_the_references(
        first in quota_params(),
        second in quota_params(),
        ops in prop::collection::vec((0u64..600_000_000, 1u32..12, 1u32..12, 0u8..4), 1..200),
    ) {
        let limiters = [RateLimiter::new(quota_of(first)), RateLimiter::new(quota_of(second))];
        let mut models = [
            Reference::new(first.0, first.1, first.2, first.3),
            Reference::new(second.0, second.1, second.2, second.3),
        ];
        let mut t = 1_000u64;
        for (step, n1, n2, which) in ops {
            t += step;
            let now = Timestamp::from_nanos(t);
            match which {
                // One limiter alone, so that the two drift apart.
                0 | 1 => {
                    let i = usize::from(which);
                    let got = decision(limiters[i].check_n(n1, now).map(|()| now));
                    prop_assert_eq!(got, models[i].take(n1, t, t));
                }
                _ => {
                    let both: [(&dyn TokenSource, u32); 2] = [(&limiters[0], n1), (&limiters[1], n2)];
                    let got = acquire_all(&both, now).map_err(|e| (e.index, decision(Err(e.error))));
                    let wants = [models[0].clone().take(n1, t, t), models[1].clone().take(n2, t, t)];
                    let want = match wants.iter().position(|d| !matches!(d, Decision::Granted { .. })) {
                        Some(index) => Err((index, models[index].clone().take([n1, n2][index], t, t))),
                        None => {
                            models[0].take(n1, t, t);
                            models[1].take(n2, t, t);
                            Ok(())
                        }
                    };
                    prop_assert_eq!(got, want);
                }
            }
            for (limiter, model) in limiters.iter().zip(&models) {
                prop_assert_eq!(limiter.available(now), model.available(t));
            }
        }
    }

    #[test]
    fn keyed_limiter_matches_one_reference_per_key(
        (rate, period, burst, _debt) in quota_params(),
        ops in prop::collection::vec((0u8..12, forward_op(8, 1_000_000_000), any::<bool>()), 1..300),
    ) {
        let quota = Quota::new(rate, Duration::from_nanos(period)).unwrap().with_burst(burst).unwrap();
        // Room for every key: evictions (by sweeps and by the inserts' own
        // sweeping) must never change a decision. Evicted entries come back
        // only after an epoch grace period, which another test's thread
        // (pinned, e.g. in `set_quota`) can hold back on a loaded machine:
        // with 512 entries, more than the 12 keys plus one insert per
        // operation, the table never runs out even if no evicted entry
        // comes back during the run.
        let limiter = KeyedRateLimiter::new(KeyedConfig::new(quota, 512).unwrap().when_full(WhenFull::Reject));
        let mut models: HashMap<u8, Reference> = HashMap::new();
        let mut t = 1_000u64;
        for (key, op, sweep) in ops {
            let now = Timestamp::from_nanos(t);
            let model = models
                .entry(key)
                .or_insert_with(|| Reference::new(rate, period, burst, false));
            match op {
                Op::Advance(d) => t += d % period.max(2),
                Op::Check | Op::Reserve(..) | Op::CancelLast | Op::Earliest(_) => {
                    let got = decision(limiter.check_key(&key, now).map(|()| now));
                    prop_assert_eq!(got, model.take(1, t, t));
                }
                Op::CheckN(n) => {
                    let got = decision(limiter.check_key_n(&key, n, now).map(|()| now));
                    prop_assert_eq!(got, model.take(n, t, t));
                }
                Op::Peek(n) => {
                    let got = decision(limiter.peek_key_n(&key, n, now).map(|()| now));
                    prop_assert_eq!(got, model.clone().take(n, t, t));
                }
                Op::Refund(n) => {
                    limiter.refund_key(&key, n);
                    // A key no longer in the table had a full bucket: the
                    // refund is a no-op in both.
                    model.refund(n);
                }
                Op::Back(_) | Op::EndOfTime(_) | Op::Change(_) => unreachable!("filtered out"),
            }
            if sweep {
                limiter.sweep(Timestamp::from_nanos(t));
            }
            prop_assert!(limiter.in_use() <= limiter.capacity());
        }
    }
}

/// L2 over a long run: under saturating demand the limiter hands out exactly
/// `floor(t * rate / period) + burst` tokens, for rates that do not divide
/// their period and for very slow and very fast ones, over 10^6 simulated
/// seconds. Demand is saturating: the test drains the limiter at random
/// instants spaced closely enough that the bucket never overflows in between
/// (at most `burst - 1` emission intervals apart), so no token is wasted and
/// the bound must be met exactly.
#[test]
fn no_drift_over_a_million_seconds() {
    let cases: [(u32, Duration); 7] = [
        (3, Duration::from_secs(1)),
        (7, Duration::from_secs(3600)),
        (1, Duration::from_nanos(333_333_333)),
        (1_000_000, Duration::from_secs(1)),
        (999_983, Duration::from_nanos(1_000_000_007)),
        (4_000_000_000, Duration::from_nanos(4_000_000_001)),
        (u32::MAX, Duration::from_secs(3600)),
    ];
    let horizon = 1_000_000u64 * 1_000_000_000;
    let mut rng = common::rng(7);
    for (rate, period) in cases {
        // A burst worth about 400 s of tokens (at least 2, at most u32::MAX).
        let per_400s = u128::from(rate) * 400_000_000_000 / period.as_nanos();
        let burst = u32::try_from(per_400s + 2).unwrap_or(u32::MAX);
        let max_step = (u128::from(burst - 1) * period.as_nanos() / u128::from(rate)) as u64;
        let quota = Quota::new(rate, period).unwrap().with_burst(burst).unwrap();
        let limiter = RateLimiter::new(quota);
        let mut admitted: u128 = 0;
        let mut t = 0u64;
        loop {
            let now = Timestamp::from_nanos(t);
            // Take everything there is, in chunks of at most the burst.
            loop {
                let n = limiter.available(now).min(u64::from(burst)) as u32;
                if n == 0 {
                    break;
                }
                limiter.check_n(n, now).unwrap();
                admitted += u128::from(n);
            }
            assert!(
                limiter.check(now).is_err(),
                "tokens left after draining at {t}"
            );
            if t == horizon {
                break;
            }
            t = t.saturating_add(1 + rng() % max_step).min(horizon);
        }
        let expected =
            u128::from(horizon) * u128::from(rate) / period.as_nanos() + u128::from(burst);
        assert_eq!(
            admitted, expected,
            "rate {rate} per {period:?}, burst {burst}"
        );
    }
}
