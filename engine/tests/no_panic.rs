//! Model: none — the property is that nothing public panics on any input.
//!
//! Every public constructor and builder is given arbitrary values (zero,
//! one, the largest durations and counts, NaN and infinite ratios); each
//! one must return a value or a typed `ConfigError`, never panic. Every
//! primitive that was built is then driven through its time-taking methods
//! with arbitrary timestamps — `Timestamp::ZERO`, `Timestamp::MAX`, values
//! near both ends, and time going backwards — and must answer without
//! panicking, and without granting more than its configuration allows
//! where that can be stated without a model (guarantee N1 in
//! docs/guarantees.md).

use core::time::Duration;

use proptest::prelude::*;
use tenlives_engine::adaptive::{AdaptiveLimiter, Aimd, Gradient, WindowConfig};
use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker, Outcome};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::events::{Event, EventKind, EventRing};
use tenlives_engine::rate::{KeyedConfig, KeyedRateLimiter, Quota, RateLimiter};
use tenlives_engine::retry::{Backoff, RetryBudget, RetryBudgetConfig};
use tenlives_engine::throttle::{Throttle, ThrottleConfig};
use tenlives_engine::time::{Clock, ManualClock, Timestamp};

/// Durations a user could pass: the edges and anything in between.
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        Just(Duration::from_nanos(u64::MAX)),
        Just(Duration::from_nanos(u64::MAX) + Duration::from_nanos(1)),
        Just(Duration::MAX),
        (0u64..10_000_000_000).prop_map(Duration::from_nanos),
        any::<u64>().prop_map(Duration::from_nanos),
        any::<(u64, u32)>().prop_map(|(s, n)| Duration::new(s, n % 1_000_000_000)),
    ]
}

/// Counts: the edges and small values, where most limits live.
fn count() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(u32::MAX),
        Just(u32::MAX - 1),
        0u32..1_100,
        any::<u32>(),
    ]
}

/// Ratios and multipliers, NaN and infinities included.
fn ratio() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(0.0),
        Just(-1.0),
        Just(f64::MAX),
        Just(f64::MIN_POSITIVE),
        0.0f64..200.0,
        any::<f64>(),
    ]
}

/// A sequence of instants: near zero, near the end of time, and jumps
/// backwards.
fn timeline() -> impl Strategy<Value = Vec<Timestamp>> {
    let instant = prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        u64::MAX - 10_000_000_000..=u64::MAX,
        0u64..10_000_000_000,
        any::<u64>(),
    ];
    prop::collection::vec(instant.prop_map(Timestamp::from_nanos), 1..24)
}

/// 512 cases a test (4 under Miri); `PROPTEST_CASES` sets another number
/// for a longer search.
fn cases() -> u32 {
    let asked = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok());
    if cfg!(miri) { 4 } else { asked.unwrap_or(512) }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn time_values_saturate(a in any::<u64>(), b in any::<u64>(), d in duration()) {
        let (a, b) = (Timestamp::from_nanos(a), Timestamp::from_nanos(b));
        let later = a.saturating_add(d);
        prop_assert!(later >= a);
        let _ = a.saturating_duration_since(b);
        let clock = ManualClock::starting_at(a);
        let moved = clock.advance(d);
        prop_assert!(moved >= a);
        prop_assert_eq!(clock.advance_to(b), clock.now());
    }

    #[test]
    fn breaker_any_config_any_time(
        rate in ratio(), slow in ratio(), slow_after in duration(),
        consecutive in count(), calls in count(), buckets in count(),
        length in duration(), time_based in any::<bool>(), minimum in count(),
        open in duration(), multiplier in ratio(), cap in duration(),
        probes in count(), times in timeline(), outcomes in prop::collection::vec(0u8..4, 24),
    ) {
        let mut builder = BreakerConfig::builder()
            .failure_rate(rate)
            .slow_calls(slow, slow_after)
            .consecutive_failures(consecutive)
            .minimum_calls(minimum)
            .open_duration(open)
            .open_backoff(multiplier, cap)
            .half_open_probes(probes);
        builder = if time_based {
            builder.time_window(length, buckets)
        } else {
            builder.count_window(calls)
        };
        let Ok(config) = builder.build() else { return Ok(()) };
        let breaker = CircuitBreaker::new(config);
        for (now, outcome) in times.iter().zip(outcomes) {
            let _ = breaker.state();
            match breaker.try_acquire(*now) {
                Ok(permit) => match outcome {
                    0 => permit.record(Outcome::Success, *now),
                    1 => permit.record(Outcome::Failure, *now),
                    2 => permit.record(Outcome::Success, Timestamp::MAX),
                    _ => drop(permit),
                },
                Err(rejected) => {
                    let _ = (rejected.reason(), rejected.retry_after());
                }
            }
            let _ = breaker.snapshot(*now);
        }
    }

    #[test]
    fn rate_limiter_any_quota_any_time(
        rate in count(), period in duration(), burst in count(), debt in any::<bool>(),
        times in timeline(), costs in prop::collection::vec(count(), 24),
        new_rate in count(), new_period in duration(),
    ) {
        let Ok(quota) = Quota::new(rate, period) else { return Ok(()) };
        let quota = match quota.with_burst(burst) { Ok(q) => q, Err(_) => quota };
        let quota = if debt { quota.with_debt() } else { quota };
        let _ = (quota.emission_interval(), quota.tokens_by(period));
        let limiter = RateLimiter::new(quota);
        for (i, (now, n)) in times.iter().zip(costs).enumerate() {
            prop_assert!(limiter.available(*now) <= u64::from(limiter.quota().burst()));
            let _ = limiter.check(*now).map_err(|e| e.retry_after());
            let _ = limiter.check_n(n, *now).map_err(|e| e.retry_after());
            let _ = limiter.peek_n(n, *now);
            let _ = limiter.earliest(n, *now);
            if let Ok(reservation) = limiter.reserve_n(n, *now, Duration::from_secs(1)) {
                let _ = (reservation.ready_at(), reservation.delay_from(*now));
                if i % 2 == 0 { reservation.cancel() } else { reservation.commit() }
            }
            limiter.refund(n);
            if i == 12
                && let Ok(q) = Quota::new(new_rate, new_period)
            {
                limiter.set_quota(q, *now);
            }
        }
    }

    #[test]
    fn keyed_limiter_any_quota_any_time(
        rate in count(), period in duration(), capacity in prop_oneof![Just(0usize), 1usize..64, Just(usize::MAX)],
        times in timeline(), keys in prop::collection::vec(0u8..8, 24),
    ) {
        let Ok(quota) = Quota::new(rate, period) else { return Ok(()) };
        let Ok(config) = KeyedConfig::new(quota, capacity) else { return Ok(()) };
        let limiter = KeyedRateLimiter::<u8>::new(config);
        for (now, key) in times.iter().zip(keys) {
            let _ = limiter.check_key(&key, *now);
            let _ = limiter.peek_key_n(&key, 2, *now);
            limiter.refund_key(&key, 1);
            let _ = limiter.sweep(*now);
        }
        prop_assert!(limiter.in_use() <= limiter.capacity());
    }

    #[test]
    fn bulkhead_any_limit(limit in count(), new_limit in count(), n in count()) {
        let Ok(bulkhead) = Bulkhead::new(limit) else { return Ok(()) };
        let many = bulkhead.try_acquire_many(n);
        let one = bulkhead.try_acquire();
        prop_assert!(bulkhead.in_flight() <= limit);
        let _ = bulkhead.set_limit(new_limit);
        drop((many, one));
        prop_assert_eq!(bulkhead.in_flight(), 0);
    }

    #[test]
    fn adaptive_any_settings_any_time(
        min in count(), initial in count(), max in count(), step in count(), backoff in ratio(),
        threshold in duration(), smoothing in ratio(), tolerance in ratio(),
        long in count(), warmup in count(), probe in count(),
        length in duration(), samples in count(), times in timeline(), rtts in prop::collection::vec(any::<u64>(), 24),
    ) {
        let aimd = Aimd::builder()
            .limits(min, initial, max)
            .increase(step)
            .backoff(backoff)
            .latency_threshold(threshold)
            .build();
        let gradient = Gradient::builder()
            .limits(min, initial, max)
            .smoothing(smoothing)
            .tolerance(tolerance)
            .long_term(long, warmup)
            .probe_every(probe)
            .build();
        let Ok(window) = WindowConfig::new(length, samples) else { return Ok(()) };
        let start = times[0];
        if let Ok(aimd) = aimd {
            drive_adaptive(&AdaptiveLimiter::new(aimd, window, start), &times, &rtts);
        }
        if let Ok(gradient) = gradient {
            drive_adaptive(&AdaptiveLimiter::new(gradient, window, start), &times, &rtts);
        }
    }

    #[test]
    fn throttle_any_config_any_time(
        k in ratio(), length in duration(), buckets in count(), minimum in count(),
        seed in any::<u64>(), times in timeline(),
    ) {
        let Ok(config) = ThrottleConfig::builder()
            .k(k)
            .window(length, buckets)
            .minimum_requests(minimum)
            .seed(seed)
            .build() else { return Ok(()) };
        let throttle = Throttle::new(config);
        for (i, now) in times.iter().enumerate() {
            let p = throttle.probability(*now);
            prop_assert!((0.0..=1.0).contains(&p));
            if let Ok(ticket) = throttle.try_admit(*now) {
                if i % 2 == 0 { ticket.accepted(*now) } else { ticket.refused(*now) }
            }
            let _ = throttle.counts(*now);
        }
    }

    #[test]
    fn retry_any_schedule_any_budget(
        base in duration(), step in duration(), cap in duration(), multiplier in ratio(),
        retries in count(), seed in any::<u64>(),
        ratio in ratio(), ppm in count(), floor in count(), length in duration(), buckets in count(),
        times in timeline(),
    ) {
        let schedules = [
            Backoff::constant(base),
            Backoff::linear(base, step, cap),
            Backoff::exponential(base, multiplier, cap),
            Backoff::full_jitter(base, multiplier, cap),
            Backoff::decorrelated_jitter(base, cap),
        ];
        for schedule in schedules.into_iter().flatten() {
            let delays = schedule.with_max_retries(retries).iter(seed).take(40);
            for delay in delays {
                prop_assert!(delay <= cap.max(base));
            }
        }
        for builder in [
            RetryBudgetConfig::builder().ratio(ratio),
            RetryBudgetConfig::builder().ratio_ppm(ppm),
        ] {
            let Ok(config) = builder.min_per_second(floor).window(length, buckets).build() else { continue };
            let budget = RetryBudget::new(config);
            for now in &times {
                budget.deposit(*now);
                let _ = budget.try_withdraw(*now);
                let _ = (budget.counts(*now), budget.remaining(*now));
            }
        }
    }

    #[test]
    fn event_ring_any_capacity(capacity in prop_oneof![
        Just(0usize), 1usize..5000, Just(1usize << 40), Just(1usize << 62), Just(usize::MAX)
    ]) {
        // Sizes beyond what a process can allocate are refused, not aborted.
        if let Ok(ring) = EventRing::with_capacity(capacity) {
            let mut consumer = ring.consumer();
            ring.push(Event::new(EventKind(1), 0, Timestamp::MAX, [u64::MAX, 0]));
            prop_assert!(consumer.try_recv().is_some());
        }
    }
}

fn drive_adaptive<A>(limiter: &AdaptiveLimiter<A>, times: &[Timestamp], rtts: &[u64])
where
    A: tenlives_engine::adaptive::LimitAlgorithm,
{
    for (now, rtt) in times.iter().zip(rtts) {
        if let Ok(permit) = limiter.try_acquire(*now) {
            let raw = permit.into_raw();
            limiter.complete_raw(raw, Some(*rtt), *now);
        }
        assert!(limiter.limit() >= 1);
    }
    assert_eq!(limiter.in_flight(), 0);
}
