//! B8, K5, R7, E4: the request paths never allocate. A counting global
//! allocator (counting per thread, so that tests running in parallel do not
//! see each other's allocations) sees zero allocations across breaker
//! admissions and reports in every state; bulkhead acquisitions, refusals,
//! releases and limit changes; retry-budget deposits and withdrawals with
//! bucket rolls and idle gaps; backoff iteration; event-ring pushes and reads;
//! throttle admissions; and adaptive-limiter calls across window closes.

use std::time::Duration;

use tenlives_engine::adaptive::{AdaptiveLimiter, Aimd, WindowConfig};
use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker, Outcome};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::events::{Event, EventKind, EventRing, LaneRing};
use tenlives_engine::retry::{Backoff, RetryBudget, RetryBudgetConfig};
use tenlives_engine::throttle::{Throttle, ThrottleConfig};
use tenlives_engine::time::Timestamp;
use tenlives_test_support::{CountingAllocator, allocations_during};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn drive(b: &CircuitBreaker, start: u64, calls: u64) {
    for i in 0..calls {
        let now = Timestamp::from_nanos(start + i * 1_000_000);
        match b.try_acquire(now) {
            Ok(p) => match i % 4 {
                0 => p.record(Outcome::Failure, now),
                1 => drop(p),
                2 => p.record(Outcome::Ignored, now),
                _ => p.record(
                    Outcome::Success,
                    Timestamp::from_nanos(start + i * 1_000_000 + 300_000_000),
                ),
            },
            Err(rejected) => {
                std::hint::black_box(rejected);
            }
        }
    }
}

#[test]
fn the_request_path_never_allocates() {
    let configs = [
        BreakerConfig::builder().failure_rate(50.0).minimum_calls(5),
        BreakerConfig::builder()
            .failure_rate(50.0)
            .count_window(20)
            .minimum_calls(5),
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(3),
        BreakerConfig::builder()
            .slow_calls(50.0, Duration::from_millis(100))
            .minimum_calls(5),
    ];
    let breakers: Vec<CircuitBreaker> = configs
        .into_iter()
        .map(|c| {
            CircuitBreaker::new(
                c.open_duration(Duration::from_millis(20))
                    .half_open_probes(2)
                    .build()
                    .unwrap(),
            )
        })
        .collect();
    // Warm up: the first use of a thread's stripe touches a thread-local.
    drive(&breakers[0], 0, 10);

    let allocations = allocations_during(|| {
        let mut t = 1_000_000_000;
        for b in &breakers {
            drive(b, t, 2_000); // trips, rejects, probes, closes, trips again...
            b.metrics_only(Timestamp::from_nanos(t));
            drive(b, t + 3_000_000_000, 100);
            b.disable(Timestamp::from_nanos(t));
            drive(b, t + 4_000_000_000, 100);
            b.force_open(Timestamp::from_nanos(t));
            drive(b, t + 5_000_000_000, 100);
            b.reset(Timestamp::from_nanos(t));
            std::hint::black_box(b.snapshot(Timestamp::from_nanos(t)));
            t += 10_000_000_000;
        }
    });
    assert_eq!(allocations, 0, "allocations on the request path");
}

#[test]
fn the_request_paths_never_allocate() {
    let bulkhead = Bulkhead::new(3).unwrap();
    let budget = RetryBudget::new(RetryBudgetConfig::default());
    let backoffs = [
        Backoff::constant(Duration::from_millis(5)).unwrap(),
        Backoff::linear(
            Duration::from_millis(5),
            Duration::from_millis(5),
            Duration::from_secs(1),
        )
        .unwrap(),
        Backoff::exponential(Duration::from_millis(5), 2.0, Duration::from_secs(1)).unwrap(),
        Backoff::full_jitter(Duration::from_millis(5), 2.0, Duration::from_secs(1)).unwrap(),
        Backoff::decorrelated_jitter(Duration::from_millis(5), Duration::from_secs(1)).unwrap(),
    ];

    let allocations = allocations_during(|| {
        for i in 0..10_000u64 {
            // Bulkhead: grants, refusals, many, raw, limit changes.
            let a = bulkhead.try_acquire();
            let b = bulkhead.try_acquire_many(2);
            let c = bulkhead.try_acquire_raw();
            std::hint::black_box((&a, &b, &c));
            if let Ok(raw) = c {
                bulkhead.release(raw);
            }
            drop((a, b));
            if i % 100 == 0 {
                bulkhead
                    .set_limit(if i % 200 == 0 { 1 } else { 3 })
                    .unwrap();
            }
            std::hint::black_box(bulkhead.snapshot());

            // Budget: every call in a new millisecond, a jump every 1000 calls.
            let now = Timestamp::from_nanos(i * 1_000_000 + (i / 1000) * 60_000_000_000);
            budget.deposit(now);
            std::hint::black_box(budget.try_withdraw(now));
            std::hint::black_box(budget.counts(now));

            // Backoff iteration.
            let backoff = &backoffs[(i % 5) as usize];
            std::hint::black_box(backoff.iter(i).take(10).fold(Duration::ZERO, |a, d| a + d));
        }
    });
    assert_eq!(allocations, 0, "allocations on the request path");
    assert_eq!(bulkhead.in_flight(), 0);
}

#[test]
fn events_throttle_and_adaptive_limits_never_allocate() {
    let ring = EventRing::with_capacity(64).unwrap();
    let mut consumer = ring.consumer();
    let lanes = LaneRing::new(2, 32).unwrap();
    let mut lane_consumer = lanes.consumer();
    let throttle = Throttle::with_sink(
        ThrottleConfig::builder()
            .minimum_requests(5)
            .build()
            .unwrap(),
        &ring,
        1,
    );
    let aimd = Aimd::builder().limits(1, 4, 100).build().unwrap();
    let window = WindowConfig::new(Duration::from_millis(1), 1).unwrap();
    let limiter = AdaptiveLimiter::new(aimd, window, Timestamp::ZERO);
    let allocations = allocations_during(|| {
        for i in 0..10_000u64 {
            let now = Timestamp::from_nanos(i * 100_000);
            ring.push(Event::new(EventKind::USER, 0, now, [i, 0]));
            std::hint::black_box(consumer.try_recv());
            lanes.push(Event::new(EventKind::USER, 0, now, [i, 0]));
            std::hint::black_box(lane_consumer.try_recv());
            // A producer taken, used and given back: no allocation either.
            let producer = lanes.producer().expect("a lane is free");
            producer.push(Event::new(EventKind::USER, 1, now, [i, 1]));
            drop(producer);
            std::hint::black_box(lane_consumer.try_recv());
            match throttle.try_admit(now) {
                Ok(ticket) if i % 3 == 0 => ticket.accepted(now),
                Ok(ticket) => ticket.refused(now), // pushes the throttle into rejecting
                Err(rejected) => {
                    std::hint::black_box(rejected);
                }
            }
            if let Ok(permit) = limiter.try_acquire(now) {
                match i % 3 {
                    0 => permit.success(Timestamp::from_nanos(i * 100_000 + 50_000)),
                    1 => permit.dropped(now),
                    _ => drop(permit),
                }
            }
        }
    });
    assert_eq!(allocations, 0, "allocations on the request path");
    assert!(consumer.read() > 0);
}

/// L6: rate-limiter decisions allocate nothing: direct checks, refusals,
/// reservations and cancels, all-or-nothing acquisition, and keyed checks of
/// keys already in the table (a new key fills a preallocated entry, so it
/// allocates nothing either, unless epoch reclamation seals a bag).
#[test]
fn rate_limiters_never_allocate() {
    use tenlives_engine::rate::{
        KeyedConfig, KeyedRateLimiter, Quota, RateLimiter, TokenSource, acquire_all,
    };
    let quota = Quota::per_second(1_000).unwrap().with_burst(10).unwrap();
    let direct = RateLimiter::new(quota);
    let global = RateLimiter::new(Quota::per_second(50).unwrap());
    let keyed = KeyedRateLimiter::new(KeyedConfig::new(quota, 1_024).unwrap());
    let keys: Vec<u64> = (0..64).collect();
    // Warm up: the keys enter the table, and this thread registers with the
    // epoch collector (a one-time allocation per thread).
    for k in &keys {
        keyed.check_key(k, Timestamp::ZERO).unwrap();
    }
    let n = allocations_during(|| {
        for i in 0..20_000u64 {
            let now = Timestamp::from_nanos(i * 100_000);
            let _ = std::hint::black_box(direct.check(now));
            let _ = std::hint::black_box(direct.check_n(3, now));
            let _ = std::hint::black_box(direct.peek_n(2, now));
            let _ = std::hint::black_box(direct.earliest(5, now));
            if let Ok(r) = direct.reserve_n(2, now, Duration::from_millis(5)) {
                if i.is_multiple_of(2) {
                    r.cancel()
                } else {
                    r.commit()
                }
            }
            let key = &keys[(i % 64) as usize];
            let _ = std::hint::black_box(keyed.check_key(key, now));
            let _ = std::hint::black_box(keyed.check_key_n(key, 2, now));
            let source = keyed.source(key);
            let all: [(&dyn TokenSource, u32); 3] = [(&direct, 1), (&source, 1), (&global, 1)];
            let _ = std::hint::black_box(acquire_all(&all, now));
        }
    });
    assert_eq!(n, 0, "rate limiting allocated {n} times");
}

/// Q7: once built, the admission queue allocates nothing: fast-path
/// acquisitions and releases, enqueues, hand-overs, cancellations (before
/// and after a grant), sheds, timeouts by poll and by sweep, and the
/// `Acquire` future.
#[test]
fn the_admission_queue_never_allocates() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    use tenlives_engine::queue::{AdmissionQueue, Overload, QueueConfig};
    use tenlives_engine::time::ManualClock;

    let config = QueueConfig::weighted(3, &[1, 2])
        .unwrap()
        .overload(Overload::ShedOldest);
    let queue = AdmissionQueue::new(Bulkhead::new(2).unwrap(), config);
    let clock = ManualClock::new();
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    let n = allocations_during(|| {
        for i in 0..5_000u64 {
            let now = Timestamp::from_nanos(i * 10);
            clock.advance_to(now);
            let a = queue.try_acquire();
            let mut future = std::pin::pin!(queue.acquire((i % 2) as u16, Timestamp::MAX, &clock));
            let b = future.as_mut().poll(&mut cx);
            // The bulkhead is full: these wait; the fourth sheds the oldest.
            let mut waiters: [_; 4] = core::array::from_fn(|k| {
                let deadline = Timestamp::from_nanos(i * 10 + if k == 1 { 5 } else { 1_000 });
                queue.enqueue((k % 2) as u16, deadline, waker).ok()
            });
            std::hint::black_box(queue.expire(Timestamp::from_nanos(i * 10 + 5)));
            drop(a); // hands over to a waiter
            if let Some(w) = waiters[3].as_mut() {
                let _ = std::hint::black_box(w.poll_permit(&mut cx, now));
            }
            if i % 2 == 0 {
                drop(b); // granted permits go back, to the next waiter
                let late = Timestamp::from_nanos(i * 10 + 2_000);
                for w in waiters.iter_mut().flatten() {
                    if !w.is_done() {
                        let _ = std::hint::black_box(w.poll_permit(&mut cx, late)); // times out
                    }
                }
            } else {
                drop(waiters); // cancels the rest, passing on any grant
                std::hint::black_box(matches!(b, Poll::Ready(Ok(_))));
            }
        }
    });
    assert_eq!(n, 0, "the admission queue allocated {n} times");
    assert_eq!(queue.source().in_flight(), 0);
    assert_eq!(queue.waiting(), 0);
}
