//! loom models of a rate limiter's quota change racing with its users
//! (engine/src/rate/limiter.rs, "Live quota changes").
//!
//! C3 (docs/guarantees.md): every decision is taken whole under one quota,
//! and a grant against the old quota is either part of the booking the new
//! quota takes over or decided again under the new quota, never lost. The
//! quotas differ only in debt mode, so the conversion is exact and the
//! limiter must grant exactly its burst at one instant, whatever the
//! interleaving of the change (link, seal, convert, publish, by the writer
//! or by a helping check) with the checks and a refund.
//!
//! Four more models change between the state cells (engine/src/rate/cell.rs:
//! narrow, scaled, wide): a quota with a whole-nanosecond interval and ones
//! a third or a seventeenth of a nanosecond longer or shorter, so that whole
//! tokens of one are whole tokens of the other and the conversion is exact.
//!
//! The engine's epoch shim never frees under loom: these models check the
//! change protocol; reclamation is modelled in `loom_live_config.rs`.
#![cfg(tenlives_loom)]

use loom::sync::Arc;
use loom::thread;
use tenlives_engine::rate::{Quota, RateLimiter};
use tenlives_engine::time::Timestamp;
use tenlives_loom_tests::model;

const NOW: Timestamp = Timestamp::from_nanos(1_000_000_000);

fn quota() -> Quota {
    Quota::per_second(10).unwrap().with_burst(2).unwrap()
}

/// Takes what is left at `NOW` (at most 3 tries).
fn rest(l: &RateLimiter) -> u32 {
    (0..3).map(|_| u32::from(l.check(NOW).is_ok())).sum()
}

/// Two checks race with a change from quota `from` to quota `to` (both of
/// a burst of 2, converting exactly): exactly the burst in all, and `to`
/// in force afterwards.
fn checks_racing_a_change(from: Quota, to: Quota) {
    model(3, move || {
        let l = Arc::new(RateLimiter::new(from));
        let checker = {
            let l = l.clone();
            thread::spawn(move || u32::from(l.check(NOW).is_ok()) + u32::from(l.check(NOW).is_ok()))
        };
        l.set_quota(to, NOW);
        let granted = checker.join().unwrap() + rest(&l);
        assert_eq!(granted, 2);
        assert_eq!(l.quota(), to);
    });
}

/// Two checks race with a quota change (debt mode only): exactly the burst
/// in all.
#[test]
fn checks_racing_a_change_grant_exactly_the_burst() {
    checks_racing_a_change(quota(), quota().with_debt());
}

/// Ten a second in fractions: `rate` tokens every `rate · 100 ms + delta`
/// (`delta` of -1 or 1 ns), a burst of 2; `a = rate`. Its interval is
/// `1 / rate` ns away from `quota()`'s, so `k <= 2` tokens booked under a
/// shorter interval are `k` tokens of a longer one (rounded up as a change
/// rounds). A `rate` of 3 takes the scaled 64-bit cell, of 17 the 128-bit
/// one.
fn fractional_quota(rate: u32, delta: i64) -> Quota {
    let period = (u64::from(rate) * 100_000_000)
        .checked_add_signed(delta)
        .unwrap();
    Quota::new(rate, core::time::Duration::from_nanos(period))
        .unwrap()
        .with_burst(2)
        .unwrap()
}

/// Two checks race with a change from the narrow cell to the 128-bit one:
/// exactly the burst in all.
#[test]
fn checks_racing_a_change_to_the_wide_cell_grant_exactly_the_burst() {
    checks_racing_a_change(quota(), fractional_quota(17, 1));
}

/// And from the 128-bit cell to the narrow one.
#[test]
fn checks_racing_a_change_to_the_narrow_cell_grant_exactly_the_burst() {
    checks_racing_a_change(fractional_quota(17, -1), quota());
}

/// From the 128-bit cell to the scaled one (`TAT·3`).
#[test]
fn checks_racing_a_change_to_the_scaled_cell_grant_exactly_the_burst() {
    checks_racing_a_change(fractional_quota(17, -1), fractional_quota(3, 1));
}

/// And from the scaled cell to the narrow one.
#[test]
fn checks_racing_a_change_from_the_scaled_cell_grant_exactly_the_burst() {
    checks_racing_a_change(fractional_quota(3, -1), quota());
}

/// Two changes race with each other and with a check (the second writer
/// helps the first one finish): exactly the burst in all, and the last
/// change linked is the quota in force.
#[test]
fn racing_changes_apply_one_after_the_other() {
    model(2, || {
        let l = Arc::new(RateLimiter::new(quota()));
        let writer = {
            let l = l.clone();
            thread::spawn(move || l.set_quota(quota().with_debt(), NOW))
        };
        let checker = {
            let l = l.clone();
            thread::spawn(move || u32::from(l.check(NOW).is_ok()))
        };
        l.set_quota(quota(), NOW);
        writer.join().unwrap();
        let granted = checker.join().unwrap() + rest(&l);
        assert_eq!(granted, 2);
    });
}

/// A refund racing a change lands in one era or the other, never lost and
/// never more than the burst.
#[test]
fn a_refund_racing_a_change_is_kept() {
    model(3, || {
        let l = Arc::new(RateLimiter::new(quota()));
        l.check_n(2, NOW).unwrap();
        let refunder = {
            let l = l.clone();
            thread::spawn(move || l.refund(1))
        };
        l.set_quota(quota().with_debt(), NOW);
        refunder.join().unwrap();
        assert_eq!(rest(&l), 1);
    });
}
