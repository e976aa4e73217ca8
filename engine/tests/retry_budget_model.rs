//! Model: the atomic `RetryBudget`, driven from one thread, grants and
//! refuses exactly like a sequential model that keeps every bucket's counts
//! by full index in a map — head = the latest bucket any call reached, a late
//! call counted in the head, the window = the head and the `buckets - 1`
//! before it, the rule `withdrawals + 1 <= deposits * ratio + reserve` in
//! exact rational arithmetic — under random deposits, withdrawals and
//! advances of virtual time (including long idle gaps).
//!
//! Invariants checked (docs/guarantees.md): R1 (exact arithmetic, no drift),
//! R2 (grants never exceed what the window allows), R4 (the budget equals the
//! model).

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use tenlives_engine::retry::{BUCKET_CAP, BudgetCounts, RetryBudget, RetryBudgetConfig};
use tenlives_engine::time::Timestamp;

#[derive(Clone, Debug)]
enum Op {
    Deposit,
    Withdraw,
    /// Advance the clock by this many nanoseconds.
    Advance(u64),
    /// A call from a thread whose clock reading is this far behind.
    LateWithdraw(u64),
    LateDeposit(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => Just(Op::Deposit),
        5 => Just(Op::Withdraw),
        3 => prop_oneof![0..300u64, 0..3_000u64, Just(1u64 << 40)].prop_map(Op::Advance),
        1 => (0..2_000u64).prop_map(Op::LateWithdraw),
        1 => (0..2_000u64).prop_map(Op::LateDeposit),
    ]
}

/// The sequential model, in bucket indices.
struct Model {
    ratio_ppm: u128,
    reserve: u128,
    buckets: u64,
    bucket_ns: u64,
    head: u64,
    counts: BTreeMap<u64, (u64, u64)>,
}

impl Model {
    fn touch(&mut self, now: u64) -> u64 {
        self.head = self.head.max(now / self.bucket_ns);
        self.head
    }
    fn window(&self, head: u64) -> (u64, u64) {
        let first = (head + 1).saturating_sub(self.buckets);
        self.counts
            .range(first..=head)
            .fold((0, 0), |(d, w), (_, &(bd, bw))| (d + bd, w + bw))
    }
    fn deposit(&mut self, now: u64) {
        let h = self.touch(now);
        let c = self.counts.entry(h).or_default();
        c.0 = (c.0 + 1).min(u64::from(BUCKET_CAP));
    }
    fn withdraw(&mut self, now: u64) -> bool {
        let h = self.touch(now);
        let (d, w) = self.window(h);
        // Exact: (w + 1) <= d * ratio_ppm / 10^6 + reserve, in rationals.
        let allowed = u128::from(w + 1) * 1_000_000
            <= u128::from(d) * self.ratio_ppm + self.reserve * 1_000_000;
        let c = self.counts.entry(h).or_default();
        if allowed && c.1 < u64::from(BUCKET_CAP) {
            c.1 += 1;
            true
        } else {
            false
        }
    }
    fn counts_at(&self, now: u64) -> BudgetCounts {
        let (deposits, withdrawals) = self.window(self.head.max(now / self.bucket_ns));
        BudgetCounts {
            deposits,
            withdrawals,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn atomic_budget_matches_the_model(
        ratio_ppm in prop_oneof![Just(0u32), 1..2_000_000u32, Just(333_333u32)],
        min_per_second in 0..4u32,
        bucket_ms in 1..500u64,
        bucket_bits in 0..4u32,
        start in 0..1_000_000_000_000u64,
        ops in proptest::collection::vec(op(), 1..300),
    ) {
        let buckets = 1u32 << bucket_bits;
        let config = RetryBudgetConfig::builder()
            .ratio_ppm(ratio_ppm)
            .min_per_second(min_per_second)
            .window(Duration::from_millis(bucket_ms * u64::from(buckets)), buckets)
            .build()
            .unwrap();
        let budget = RetryBudget::new(config);
        let bucket_ns = bucket_ms * 1_000_000;
        let mut m = Model {
            ratio_ppm: u128::from(ratio_ppm),
            reserve: u128::from(config.reserve()),
            buckets: u64::from(buckets),
            bucket_ns,
            head: 0,
            counts: BTreeMap::new(),
        };
        let mut now = start;
        for op in ops {
            match op {
                Op::Deposit => { budget.deposit(Timestamp::from_nanos(now)); m.deposit(now); }
                Op::Withdraw => {
                    let expected = m.withdraw(now);
                    prop_assert_eq!(budget.try_withdraw(Timestamp::from_nanos(now)), expected);
                }
                Op::Advance(ms) => now = now.saturating_add(ms.saturating_mul(1_000_000)),
                Op::LateWithdraw(ms) => {
                    let t = now.saturating_sub(ms * 1_000_000);
                    let expected = m.withdraw(t);
                    prop_assert_eq!(budget.try_withdraw(Timestamp::from_nanos(t)), expected);
                }
                Op::LateDeposit(ms) => {
                    let t = now.saturating_sub(ms * 1_000_000);
                    budget.deposit(Timestamp::from_nanos(t));
                    m.deposit(t);
                }
            }
            let at = Timestamp::from_nanos(now);
            let expected = m.counts_at(now);
            prop_assert_eq!(budget.counts(at), expected);
        }
    }
}
