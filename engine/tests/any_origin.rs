//! `Timestamp` counts nanoseconds from any zero its owner chooses
//! (`docs/clocks-and-timers.md`). The rate limiters on every cell, the
//! breaker's time window, the throttle, the retry budget and the timer
//! wheel, each run through the same script from a clock's first second and
//! from nanoseconds since the Unix epoch, decide the same way: none assumes
//! its times start near zero. (Two did: the scaled rate cell refused every
//! request at Unix times, and the time windows dropped records into fresh
//! slots when the bucket number had bit 31 set; `CHANGELOG.md`.)

use core::time::Duration;

use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker, Outcome};
use tenlives_engine::rate::{KeyedConfig, KeyedRateLimiter, Quota, RateLimiter};
use tenlives_engine::retry::{RetryBudget, RetryBudgetConfig};
use tenlives_engine::throttle::{Throttle, ThrottleConfig};
use tenlives_engine::time::Timestamp;

/// A clock's first second, 2025-12-06 in Unix nanoseconds, and a time in
/// 2055 where the windows' bucket numbers (1.25 s and 250 ms buckets
/// below) have bit 31 set, which a fresh window slot's tag 0 once counted
/// as newer.
const ORIGINS: [u64; 3] = [
    1_000_000_000,
    1_765_000_000_000_000_000,
    2_700_000_000_000_000_000,
];

const MS: u64 = 1_000_000;

/// Runs `script` from each origin; the two transcripts must be equal.
fn same_from_every_origin<T: PartialEq + core::fmt::Debug>(script: impl Fn(u64) -> T) -> T {
    let [a, b, c] = ORIGINS.map(&script);
    assert_eq!(a, b);
    assert_eq!(a, c);
    a
}

#[test]
fn rate_limiters_on_every_cell() {
    // Narrow, scaled (a = 7, a = 3, a = 16) and 128-bit (a = 17) cells.
    for (rate, period_ns) in [
        (10, 1_000_000_000),
        (7, 1_000_000_000),
        (30, 1_000_000_000),
        (16, 999_999_999),
        (17, 1_000_000_000),
    ] {
        let transcript = same_from_every_origin(|t0| {
            let quota = Quota::new(rate, Duration::from_nanos(period_ns))
                .unwrap()
                .with_burst(3)
                .unwrap();
            let direct = RateLimiter::new(quota);
            let keyed = KeyedRateLimiter::new(KeyedConfig::new(quota, 8).unwrap());
            let mut transcript = Vec::new();
            for step in 0..60u64 {
                let now = Timestamp::from_nanos(t0 + step * 13 * MS);
                let d = direct.check(now).map_err(|e| e.earliest().as_nanos() - t0);
                let k = keyed
                    .check_key(&(step % 2), now)
                    .map_err(|e| e.retry_after());
                transcript.push((d, k, direct.available(now)));
            }
            transcript
        });
        // The script is not trivial: refusals and grants on both limiters.
        assert!(transcript.iter().any(|(d, _, _)| d.is_err()));
        assert!(transcript.iter().any(|(_, k, _)| k.is_err()));
        assert!(transcript.iter().filter(|(d, _, _)| d.is_ok()).count() > 3);
    }
}

#[test]
fn breaker_on_a_time_window() {
    let transcript = same_from_every_origin(|t0| {
        let breaker = CircuitBreaker::new(
            BreakerConfig::builder()
                .failure_rate(50.0)
                .time_window(Duration::from_secs(10), 8)
                .minimum_calls(4)
                .open_duration(Duration::from_secs(1))
                .build()
                .unwrap(),
        );
        let mut transcript = Vec::new();
        for step in 0..40u64 {
            let now = Timestamp::from_nanos(t0 + step * 150 * MS);
            let outcome = if step % 3 == 0 {
                Outcome::Success
            } else {
                Outcome::Failure
            };
            let admitted = match breaker.try_acquire(now) {
                Ok(permit) => {
                    permit.record(outcome, now);
                    true
                }
                Err(_) => false,
            };
            transcript.push((admitted, format!("{:?}", breaker.state())));
        }
        transcript
    });
    // It opened, refused, and probed again.
    assert!(transcript.iter().any(|(admitted, _)| !admitted));
    assert!(transcript.iter().any(|(_, s)| s.contains("HalfOpen")));
}

#[test]
fn throttle_and_retry_budget() {
    let transcript = same_from_every_origin(|t0| {
        let throttle = Throttle::new(
            ThrottleConfig::builder()
                .window(Duration::from_secs(2), 8)
                .build()
                .unwrap(),
        );
        let budget = RetryBudget::new(
            RetryBudgetConfig::builder()
                .ratio(0.2)
                .min_per_second(1)
                .window(Duration::from_secs(2), 8)
                .build()
                .unwrap(),
        );
        let mut transcript = Vec::new();
        for step in 0..200u64 {
            let now = Timestamp::from_nanos(t0 + step * 20 * MS);
            let p = throttle.probability(now);
            if let Ok(ticket) = throttle.try_admit(now) {
                if step % 4 == 0 {
                    ticket.accepted(now);
                } else {
                    ticket.refused(now);
                }
            }
            budget.deposit(now);
            let retry = budget.try_withdraw(now);
            transcript.push(((p * 1e6) as u64, retry));
        }
        transcript
    });
    // The throttle rejects with some probability, the budget runs dry.
    assert!(transcript.iter().any(|(p, _)| *p > 0));
    assert!(transcript.iter().any(|(_, retry)| !retry));
    assert!(transcript.iter().any(|(_, retry)| *retry));
}

#[test]
fn timer_wheel() {
    use core::task::Waker;
    use tenlives_engine::timer::TimerWheel;
    let transcript = same_from_every_origin(|t0| {
        let wheel = TimerWheel::new(16, Duration::from_millis(1)).unwrap();
        let waker = Waker::noop();
        let mut entries = Vec::new();
        for d in [5u64, 1, 30, 12] {
            let r = wheel
                .register(Timestamp::from_nanos(t0 + d * MS), waker)
                .unwrap();
            entries.push(r.entry);
        }
        let mut transcript = Vec::new();
        for step in 0..40u64 {
            let expired = wheel.expire(Timestamp::from_nanos(t0 + step * MS));
            let fired: Vec<bool> = entries.iter().map(|e| wheel.fired(e)).collect();
            transcript.push((
                expired.fired,
                expired.next.map(|t| t.as_nanos() - t0),
                fired,
            ));
        }
        for entry in entries {
            wheel.cancel(entry);
        }
        transcript
    });
    // Each timer fired once, the last at its 30 ms deadline.
    assert_eq!(transcript.iter().map(|(n, _, _)| n).sum::<usize>(), 4);
    assert_eq!(transcript[29].2, [true, true, false, true]);
    assert_eq!(transcript[30].2, [true; 4]);
}
