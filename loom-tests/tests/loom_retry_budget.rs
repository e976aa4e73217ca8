//! loom models of the retry budget's words (engine/src/retry/budget.rs).
//!
//! R2 (docs/guarantees.md): withdrawals granted never exceed what the
//! deposits in the window allow, however calls interleave with each other and
//! with the rolls that move the head bucket; R3: no deposit or withdrawal is
//! lost or counted twice when the head moves (the slots hold exactly what the
//! frozen head held).
//!
//! The budgets here allow one retry per request and no reserve, with a window
//! of 2 buckets of 1 ns, so `Timestamp::from_nanos(k)` is bucket `k`.
#![cfg(tenlives_loom)]

use std::time::Duration;

use loom::sync::Arc;
use loom::thread;
use tenlives_engine::retry::{BudgetCounts, RetryBudget, RetryBudgetConfig};
use tenlives_engine::time::Timestamp;
use tenlives_loom_tests::model;

fn one_per_request() -> RetryBudget {
    RetryBudget::new(
        RetryBudgetConfig::builder()
            .ratio_ppm(1_000_000)
            .min_per_second(0)
            .window(Duration::from_nanos(2), 2)
            .build()
            .unwrap(),
    )
}

fn at(bucket: u64) -> Timestamp {
    Timestamp::from_nanos(bucket)
}

/// R2: two threads withdraw while a third deposits, all in one bucket, with
/// one deposit made before. Grants never exceed deposits, and the budget
/// counts exactly the grants.
#[test]
fn withdrawals_never_exceed_deposits_in_one_bucket() {
    model(3, || {
        let b = Arc::new(one_per_request());
        b.deposit(at(0));
        let withdrawers: Vec<_> = (0..2)
            .map(|_| {
                let b = b.clone();
                thread::spawn(move || b.try_withdraw(at(0)))
            })
            .collect();
        let depositor = {
            let b = b.clone();
            thread::spawn(move || b.deposit(at(0)))
        };
        let granted = withdrawers
            .into_iter()
            .map(|t| u64::from(t.join().unwrap()))
            .sum::<u64>();
        depositor.join().unwrap();
        assert!(granted >= 1, "one deposit was there from the start");
        assert_eq!(
            b.counts(at(0)),
            BudgetCounts {
                deposits: 2,
                withdrawals: granted
            }
        );
    });
}

/// R2, R3: calls in buckets 0 and 1 race the roll from bucket 0 to bucket 1
/// (both inside the window, so nothing expires). Late callers are counted in
/// the head; nothing is lost or doubled by the roll, and grants never exceed
/// deposits.
#[test]
fn rolls_lose_nothing() {
    model(2, || {
        let b = Arc::new(one_per_request());
        b.deposit(at(0));
        let roller = {
            let b = b.clone();
            thread::spawn(move || {
                b.deposit(at(1));
                u64::from(b.try_withdraw(at(1)))
            })
        };
        let late = {
            let b = b.clone();
            thread::spawn(move || {
                u64::from(b.try_withdraw(at(0))) + u64::from(b.try_withdraw(at(0)))
            })
        };
        let granted = roller.join().unwrap() + late.join().unwrap();
        assert!(granted <= 2, "two deposits allow two withdrawals");
        assert_eq!(
            b.counts(at(1)),
            BudgetCounts {
                deposits: 2,
                withdrawals: granted
            },
            "the roll kept every count"
        );
    });
}

/// R2, R3: a jump past the whole window (to bucket 5, which zeroes every
/// slot) races a late withdrawal (bucket 1) and a deposit in the new bucket.
/// Whatever the order, the final window never holds more withdrawals than
/// deposits, and the deposit at 0 has left it.
#[test]
fn a_jump_past_the_window_races_late_callers() {
    model(2, || {
        let b = Arc::new(one_per_request());
        b.deposit(at(0));
        let jumper = {
            let b = b.clone();
            thread::spawn(move || {
                b.deposit(at(5));
                b.try_withdraw(at(5))
            })
        };
        let late = {
            let b = b.clone();
            thread::spawn(move || b.try_withdraw(at(1)))
        };
        let jumped = jumper.join().unwrap();
        let late = late.join().unwrap();
        // The late withdrawal either ran before the jump (on the deposit at
        // 0) or after it, counted in bucket 5, where it may take the deposit
        // at 5 from the jumper: at least one of the two is granted.
        assert!(jumped || late);
        let c = b.counts(at(5));
        assert!(c.withdrawals <= c.deposits, "{c:?}");
        assert!(c.deposits == 1, "the deposit at 0 expired: {c:?}");
    });
}

/// R3: two rolls to different buckets (1 and 2) race each other while the
/// main thread withdraws late (bucket 0), so that callers help, lose and
/// repeat each other's rolls. Both deposits end in the window of bucket 2,
/// and the withdrawal is counted at most once, and only if granted.
#[test]
fn racing_rolls_to_different_buckets() {
    model(2, || {
        let b = Arc::new(one_per_request());
        b.deposit(at(0));
        let one = {
            let b = b.clone();
            thread::spawn(move || b.deposit(at(1)))
        };
        let two = {
            let b = b.clone();
            thread::spawn(move || b.deposit(at(2)))
        };
        let late = b.try_withdraw(at(0));
        one.join().unwrap();
        two.join().unwrap();
        let c = b.counts(at(2));
        assert_eq!(
            c.deposits, 2,
            "the deposits at 1 and 2 are both in the window: {c:?}"
        );
        // Counted in bucket 2 (or 1) if it ran after a roll, in bucket 0
        // (gone from this window) if before.
        assert!(c.withdrawals <= u64::from(late), "{c:?}");
    });
}

/// R3: a caller that begins helping a roll (from bucket 0 to 1) and is
/// preempted while others finish it and roll on twice more (so that slot 0 is
/// reused for bucket 2) must not write its stale slot afterwards: the final
/// window (buckets 2 and 3) holds exactly the deposits made there.
#[test]
fn a_stale_helper_never_overwrites_newer_buckets() {
    model(2, || {
        let b = Arc::new(one_per_request());
        for _ in 0..3 {
            b.deposit(at(0)); // three, so that a stale copy of bucket 0 shows
        }
        let stale = {
            let b = b.clone();
            thread::spawn(move || b.deposit(at(1)))
        };
        let runner = {
            let b = b.clone();
            thread::spawn(move || {
                b.deposit(at(1));
                b.deposit(at(2));
                b.deposit(at(3));
            })
        };
        stale.join().unwrap();
        runner.join().unwrap();
        let c = b.counts(at(3));
        // The stale deposit at 1 lands in bucket 1, 2 or 3 depending on when
        // it ran; the deposits at 2 and 3 are always in the window.
        assert!((2..=3).contains(&c.deposits), "{c:?}");
        assert_eq!(c.withdrawals, 0);
    });
}

/// R2, R3, with the clocks of the report of 2026-12: each thread deposits
/// and then withdraws, one at bucket 1 (it rolls the head), the other a
/// little behind, at bucket 0, so its calls can land on either side of the
/// roll. Each withdrawal follows its own thread's deposit, in the same or a
/// later bucket, so the window always allows it: both are granted, and the
/// window of bucket 1 holds both deposits and both withdrawals, the late
/// thread's pair counted once, on whichever side of the roll it landed.
#[test]
fn a_lagging_thread_across_a_roll_is_granted_within_the_ratio() {
    model(2, || {
        let b = Arc::new(one_per_request());
        let ahead = {
            let b = b.clone();
            thread::spawn(move || {
                b.deposit(at(1));
                b.try_withdraw(at(1))
            })
        };
        b.deposit(at(0));
        let late = b.try_withdraw(at(0));
        let ahead = ahead.join().unwrap();
        assert!(ahead && late, "refused within the ratio: {ahead} {late}");
        // The window of bucket 1 is buckets 0 and 1: every call is in it,
        // counted once, whichever side of the roll it landed on.
        assert_eq!(
            b.counts(at(1)),
            BudgetCounts {
                deposits: 2,
                withdrawals: 2
            }
        );
    });
}
