//! D6: saving and restoring a snapshot allocates nothing (every primitive
//! but the keyed table, whose snapshot goes into a `Vec`): a counting
//! global allocator (per thread) sees zero allocations across
//! `save_state` and `restore_state` of a breaker over each window kind, a
//! rate limiter, a retry budget, a throttle and an adaptive limiter,
//! successful and refused (damaged bytes, another configuration).

use std::time::Duration;

use tenlives_engine::adaptive::{ADAPTIVE_SNAPSHOT_MAX, AdaptiveLimiter, Gradient, WindowConfig};
use tenlives_engine::breaker::{BREAKER_SNAPSHOT_MAX, BreakerConfig, CircuitBreaker};
use tenlives_engine::rate::{Quota, RATE_SNAPSHOT_MAX, RateLimiter};
use tenlives_engine::retry::{BUDGET_SNAPSHOT_MAX, RetryBudget, RetryBudgetConfig};
use tenlives_engine::snapshot::WallTime;
use tenlives_engine::throttle::{THROTTLE_SNAPSHOT_MAX, Throttle, ThrottleConfig};
use tenlives_engine::time::Timestamp;
use tenlives_test_support::{CountingAllocator, allocations_during};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const T: Timestamp = Timestamp::from_nanos(7_000_000_000);
const WALL: WallTime = WallTime::from_unix_nanos(1_000_000_000);

#[test]
fn saving_and_restoring_never_allocates() {
    let breakers = [
        BreakerConfig::builder()
            .count_window(100)
            .minimum_calls(100)
            .build()
            .unwrap(),
        BreakerConfig::builder()
            .minimum_calls(1000)
            .build()
            .unwrap(),
    ];
    for config in breakers {
        let (b, r) = (
            CircuitBreaker::new(config.clone()),
            CircuitBreaker::new(config),
        );
        for i in 0..40 {
            b.try_acquire(T).unwrap().record_elapsed(
                tenlives_engine::breaker::Outcome::Failure,
                Duration::from_millis(i),
                T,
            );
        }
        let mut buf = [0u8; BREAKER_SNAPSHOT_MAX];
        let n = allocations_during(|| {
            let n = b.save_state(&mut buf, T, WALL).unwrap();
            r.restore_state(&buf[..n], T, WALL).unwrap();
            buf[n / 2] ^= 1;
            assert!(r.restore_state(&buf[..n], T, WALL).is_err());
        });
        assert_eq!(n, 0, "breaker");
    }

    let (l, r) = (
        RateLimiter::new(Quota::per_second(10).unwrap()),
        RateLimiter::new(Quota::per_second(20).unwrap()),
    );
    l.check_n(5, T).unwrap();
    let mut buf = [0u8; RATE_SNAPSHOT_MAX];
    assert_eq!(
        allocations_during(|| {
            let n = l.save_state(&mut buf, T, WALL).unwrap();
            r.restore_state(&buf[..n], T, WALL).unwrap();
        }),
        0,
        "rate limiter"
    );

    let config = RetryBudgetConfig::builder().build().unwrap();
    let (b, r) = (RetryBudget::new(config), RetryBudget::new(config));
    for _ in 0..30 {
        b.deposit(T);
    }
    let mut buf = [0u8; BUDGET_SNAPSHOT_MAX];
    assert_eq!(
        allocations_during(|| {
            let n = b.save_state(&mut buf, T, WALL).unwrap();
            r.restore_state(&buf[..n], T, WALL).unwrap();
            let other = RetryBudget::new(
                RetryBudgetConfig::builder()
                    .window(Duration::from_secs(1), 2)
                    .build()
                    .unwrap(),
            );
            assert!(other.restore_state(&buf[..n], T, WALL).is_err());
        }),
        0,
        "retry budget"
    );

    let config = ThrottleConfig::builder().build().unwrap();
    let (t, r) = (Throttle::new(config), Throttle::new(config));
    for _ in 0..30 {
        if let Ok(ticket) = t.try_admit(T) {
            ticket.refused(T);
        }
    }
    let mut buf = [0u8; THROTTLE_SNAPSHOT_MAX];
    assert_eq!(
        allocations_during(|| {
            let n = t.save_state(&mut buf, T, WALL).unwrap();
            r.restore_state(&buf[..n], T, WALL).unwrap();
        }),
        0,
        "throttle"
    );

    let window = WindowConfig::new(Duration::from_millis(100), 1).unwrap();
    let gradient = || Gradient::builder().build().unwrap();
    let (a, r) = (
        AdaptiveLimiter::new(gradient(), window, T),
        AdaptiveLimiter::new(gradient(), window, T),
    );
    let mut buf = [0u8; ADAPTIVE_SNAPSHOT_MAX];
    assert_eq!(
        allocations_during(|| {
            let n = a.save_state(&mut buf, T, WALL).unwrap();
            r.restore_state(&buf[..n], T, WALL).unwrap();
        }),
        0,
        "adaptive limiter"
    );
}
