//! How costs grow: with the keyed table's size, with the event ring's
//! capacity, and from 1 thread to 2 for the primitives the other bench files
//! time on 1 thread only (or not at all).
//!
//! What is measured, per operation:
//!
//! - `scaling/keyed/<subject>/<keys>`: one admitted `check_key` on a keyed
//!   rate limiter holding `keys` keys (10^3, 10^4, 10^5, 10^6), the keys being
//!   the integers below `keys`, visited once per round in a scattered order
//!   (`support/keyed_driver.rs`), on 1 thread. The quota and
//!   the clocks are those of `rate.rs`: 10^9 tokens a second with a burst of
//!   2^32 - 1 per key; tenlives (`tenlives`) is given `now`, a counter
//!   advanced by 20 ns per operation; governor
//!   (`governor_fake_clock_foldhash`) is its dashmap-keyed limiter on
//!   `FakeRelativeClock` with the hasher tenlives uses (foldhash), moved
//!   forward by the span of each batch before it is timed. Every key is
//!   checked once before the run; the tenlives table's capacity is twice the
//!   number of keys (see `rate.rs`), and both limiters must still hold every
//!   key after the run.
//! - `scaling/ring_push/<subject>/<capacity>`: one event written into a full
//!   buffer of `capacity` slots (64 to 65 536) that overwrites its oldest
//!   event, on 1 thread: tenlives `EventRing::push` and crossbeam's
//!   `ArrayQueue::force_push`, the same 32-byte event as `events.rs`. Each
//!   buffer is filled before the run, so every write overwrites.
//! - `scaling/throttle/tenlives/{1_thread,2_threads}`: `Throttle::try_admit`
//!   and `ThrottleTicket::accepted`, default configuration (60 s window in
//!   12 buckets), time advancing 1 ns per operation.
//! - `scaling/adaptive/tenlives_aimd/{1_thread,2_threads}`:
//!   `AdaptiveLimiter::try_acquire` and `AdaptivePermit::success` (AIMD, limit
//!   1000, 100 ms windows), time advancing 20 ns per operation, so a window
//!   closes every 5 million operations and its cost is included, amortised.
//! - `scaling/breaker_rejection/<subject>/{1_thread,2_threads}`: the
//!   rejection of `breaker.rs`'s `breaker/open_rejection` on 1 and 2 threads:
//!   tenlives force-opened and tripped, failsafe 1.3 tripped (it reads
//!   `Instant::now()` on every admission).
//! - `scaling/half_open_probe/tenlives/{1_thread,2_threads}`: one probe
//!   admitted by a half-open breaker (1000 probe slots) and dropped
//!   unreported, which frees its slot.
//! - `scaling/timer_wheel/tenlives/{1_thread,2_threads}`: one timer armed
//!   on a shared `TimerWheel` (1024 entries, 1 ms ticks, what the tower
//!   layers make) for a second after `now` and given back before it fires,
//!   as every request through a layer with a timeout does; no driver runs
//!   (nothing is due). Given its time, no clock read: a lab row of the wheel
//!   alone, whose 2-thread figure shows what the two threads' registrations
//!   share.
//!
//! Headline rows read the adapters' default clock (the process's
//! `TscClock`, quanta's TSC) once per operation, as the tower layers do, and
//! hand that reading (an hour after the benches' origin, `START_NS`, plus
//! the time since the clock was made) to every decision of the operation;
//! governor's keyed limiter in a headline row reads its own default clock
//! (quanta's, `governor_default_foldhash`), failsafe its own
//! `Instant::now()`. The secondary rows ending in `_no_clock_read` (and
//! governor's `_fake_clock_` rows) are given their time for free, a counter
//! advanced by the step above: what the decisions alone cost.
//!
//! `2_threads` is nanoseconds per operation per thread: the wall time for
//! both threads to do `iters` operations each, divided by `iters`. Each
//! benchmark runs for 1 s of warm-up and 2 s of measurement (`support::config`),
//! so the whole file takes about two minutes on two cores, most of it the
//! keyed tables of 10^6 keys being filled.
//!
//! `cargo bench -p tenlives-benches --bench scaling`

use std::cell::Cell;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::task::Waker;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use crossbeam_queue::ArrayQueue;
use failsafe::CircuitBreaker as _;
use governor::clock::FakeRelativeClock;
use tenlives_engine::adaptive::{AdaptiveLimiter, Aimd, WindowConfig};
use tenlives_engine::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
use tenlives_engine::events::{Event, EventKind, EventRing, Slot};
use tenlives_engine::rate::{KeyedConfig, KeyedRateLimiter, Quota};
use tenlives_engine::throttle::{Throttle, ThrottleConfig};
use tenlives_engine::time::{Clock, Timestamp, TscClock};
use tenlives_engine::timer::TimerWheel;

#[path = "support/keyed_driver.rs"]
mod keyed_driver;
mod support;
use keyed_driver::{START_NS, keyed_one_thread};

/// The keyed table sizes.
const TABLE_SIZES: [u64; 4] = [1_000, 10_000, 100_000, 1_000_000];

/// The buffer capacities, powers of two (the ring requires one).
const CAPACITIES: [usize; 6] = [64, 256, 1024, 4096, 16_384, 65_536];

/// How long a tripped breaker stays open: far longer than any run.
const OPEN: Duration = Duration::from_secs(3600);

/// The admitting quota of `rate.rs`, for tenlives.
fn admitting() -> Quota {
    Quota::per_second(1_000_000_000)
        .and_then(|q| q.with_burst(u32::MAX))
        .expect("valid quota")
}

/// The admitting quota of `rate.rs`, for governor.
fn governor_admitting() -> governor::Quota {
    let n = |v: u32| NonZeroU32::new(v).expect("non-zero");
    governor::Quota::per_second(n(1_000_000_000)).allow_burst(n(u32::MAX))
}

fn bench_keyed(c: &mut Criterion) {
    let mut group = c.benchmark_group("scaling/keyed");
    let start = Timestamp::from_nanos(START_NS);
    for keys in TABLE_SIZES {
        let count = usize::try_from(keys).expect("fits");

        let limiter =
            KeyedRateLimiter::new(KeyedConfig::new(admitting(), 2 * count).expect("valid"));
        for key in 0..keys {
            limiter
                .check_key(&key, start)
                .expect("a new key has tokens");
        }
        assert_eq!(limiter.in_use(), count);
        let tsc = TscClock::new();
        keyed_one_thread(
            &mut group,
            &format!("tenlives/{keys}"),
            keys,
            &Cell::new(START_NS),
            None,
            |k, _| {
                let now = Timestamp::from_nanos(START_NS + tsc.now().as_nanos());
                let r = limiter.check_key(&k, now);
                assert!(black_box(r).is_ok(), "admitted");
            },
        );
        keyed_one_thread(
            &mut group,
            &format!("tenlives_no_clock_read/{keys}"),
            keys,
            &Cell::new(START_NS),
            None,
            |k, t| {
                let r = limiter.check_key(&k, Timestamp::from_nanos(t));
                assert!(black_box(r).is_ok(), "admitted");
            },
        );
        assert_eq!(limiter.in_use(), count, "no key was evicted");
        drop(limiter);

        let fake = FakeRelativeClock::default();
        let limiter = governor::RateLimiter::dashmap_with_clock_and_hasher(
            governor_admitting(),
            fake.clone(),
            foldhash::fast::RandomState::default(),
        );
        for key in 0..keys {
            limiter.check_key(&key).expect("a new key has tokens");
        }
        keyed_one_thread(
            &mut group,
            &format!("governor_fake_clock_foldhash/{keys}"),
            keys,
            &Cell::new(START_NS),
            Some(&fake),
            |k, _| {
                let r = limiter.check_key(&k);
                assert!(black_box(r).is_ok(), "admitted");
            },
        );
        assert_eq!(limiter.len(), count);
        drop(limiter);

        let limiter = governor::RateLimiter::dashmap_with_hasher(
            governor_admitting(),
            foldhash::fast::RandomState::default(),
        );
        for key in 0..keys {
            limiter.check_key(&key).expect("a new key has tokens");
        }
        keyed_one_thread(
            &mut group,
            &format!("governor_default_foldhash/{keys}"),
            keys,
            &Cell::new(START_NS),
            None,
            |k, _| {
                let r = limiter.check_key(&k);
                assert!(black_box(r).is_ok(), "admitted");
            },
        );
        assert_eq!(limiter.len(), count);
    }
    group.finish();
}

/// The event of `events.rs`, at `t` nanoseconds.
#[inline]
fn event_at(t: u64) -> Event {
    Event::new(EventKind::USER, 1, Timestamp::from_nanos(t), [t, 0])
}

/// `push(event)` on 1 thread, `t` going on from one criterion call to the next.
fn push_one_thread(group: &mut BenchmarkGroup<'_, WallTime>, id: &str, push: impl Fn(Event)) {
    let clock = Cell::new(START_NS);
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let mut t = clock.get();
            let began = Instant::now();
            for _ in 0..iters {
                t += 1;
                push(event_at(black_box(t)));
            }
            let elapsed = began.elapsed();
            clock.set(t);
            elapsed
        });
    });
}

fn bench_ring_push(c: &mut Criterion) {
    let mut group = c.benchmark_group("scaling/ring_push");
    for capacity in CAPACITIES {
        let ring = EventRing::<Box<[Slot]>>::with_capacity(capacity).expect("a power of two");
        for _ in 0..=capacity {
            ring.push(event_at(START_NS));
        }
        push_one_thread(&mut group, &format!("tenlives_ring/{capacity}"), |e| {
            ring.push(e);
        });
        assert!(ring.emitted() > capacity as u64);

        let queue = ArrayQueue::new(capacity);
        while queue.push(event_at(START_NS)).is_ok() {}
        push_one_thread(
            &mut group,
            &format!("crossbeam_array_queue/{capacity}"),
            |e| {
                black_box(queue.force_push(e));
            },
        );
        assert!(queue.is_full());
    }
    group.finish();
}

/// `op(t)` on 1 thread and on 2 threads as `<name>/1_thread` and
/// `<name>/2_threads`, time advancing `step` ns per operation from where the
/// previous criterion call left it, starting at [`START_NS`].
fn both(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, step: u64, op: impl Fn(u64) + Sync) {
    both_from(group, name, START_NS, step, op);
}

/// [`both`], its time starting at `start`.
fn both_from(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    start: u64,
    step: u64,
    op: impl Fn(u64) + Sync,
) {
    let clock = Cell::new(start);
    group.bench_function(format!("{name}/1_thread"), |b| {
        b.iter_custom(|iters| {
            let start = clock.get();
            clock.set(start + iters * step);
            let began = Instant::now();
            let mut t = start;
            for _ in 0..iters {
                t += step;
                op(black_box(t));
            }
            began.elapsed()
        });
    });
    group.bench_function(format!("{name}/2_threads"), |b| {
        b.iter_custom(|iters| {
            let start = clock.get();
            clock.set(start + iters * step);
            support::two_threads(iters, start, step, &op)
        });
    });
}

/// `op` as the adapters call it, `<name>/{1_thread,2_threads}`: its time
/// read from the TSC on each operation (an hour in, plus the time since the
/// clock was made); and given its time for free, as
/// `<name>_no_clock_read/...` (see [`both`]), from the last reading on: the
/// subject is the same, and a time behind what it has already seen would
/// measure its path for late calls instead (the throttle's secondary row
/// did, at twice the cost, until the time went on from there).
fn both_timed(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    step: u64,
    op: impl Fn(u64) + Sync,
) {
    let tsc = TscClock::new();
    both(group, name, step, |_| op(START_NS + tsc.now().as_nanos()));
    let resume = START_NS + tsc.now().as_nanos();
    both_from(group, &format!("{name}_no_clock_read"), resume, step, op);
}

fn bench_throttle(c: &mut Criterion) {
    let mut group = c.benchmark_group("scaling/throttle");
    let throttle = Throttle::new(ThrottleConfig::builder().build().expect("valid config"));
    both_timed(&mut group, "tenlives", 1, |t| {
        let now = Timestamp::from_nanos(t);
        throttle
            .try_admit(now)
            .expect("a healthy backend is never throttled")
            .accepted(now);
    });
    group.finish();
}

fn bench_adaptive(c: &mut Criterion) {
    let mut group = c.benchmark_group("scaling/adaptive");
    let aimd = Aimd::builder()
        .limits(1000, 1000, 1000)
        .build()
        .expect("valid algorithm");
    let window = WindowConfig::new(Duration::from_millis(100), 1).expect("valid window");
    let limiter = AdaptiveLimiter::new(aimd, window, Timestamp::from_nanos(START_NS));
    both_timed(&mut group, "tenlives_aimd", 20, |t| {
        let now = Timestamp::from_nanos(t);
        limiter
            .try_acquire(now)
            .expect("below the limit")
            .success(now);
    });
    assert_eq!(limiter.in_flight(), 0);
    assert_eq!(limiter.limit(), 1000);
    group.finish();
}

/// A breaker with the consecutive-failures rule alone (as `breaker.rs`).
fn consecutive(half_open_probes: u32) -> CircuitBreaker {
    CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .open_duration(OPEN)
            .half_open_probes(half_open_probes)
            .build()
            .expect("valid config"),
    )
}

/// Trips `b` by one failure at `at`.
fn trip(b: &CircuitBreaker, at: Timestamp) {
    b.try_acquire(at).expect("closed").failure(at);
    assert_eq!(b.state(), BreakerState::Open);
}

fn bench_breaker_rejection(c: &mut Criterion) {
    let mut group = c.benchmark_group("scaling/breaker_rejection");

    let b = consecutive(1);
    b.force_open(Timestamp::ZERO);
    both_timed(&mut group, "tenlives_forced_open", 1, |t| {
        let r = b.try_acquire(Timestamp::from_nanos(t));
        assert!(black_box(r).is_err(), "rejected");
    });
    assert_eq!(b.state(), BreakerState::ForcedOpen);

    let b = consecutive(1);
    trip(&b, Timestamp::from_nanos(START_NS));
    both_timed(&mut group, "tenlives_tripped", 1, |t| {
        let r = b.try_acquire(Timestamp::from_nanos(t));
        assert!(black_box(r).is_err(), "rejected");
    });
    assert_eq!(b.state(), BreakerState::Open);

    let f = failsafe::Config::new()
        .failure_policy(failsafe::failure_policy::consecutive_failures(
            1,
            failsafe::backoff::constant(OPEN),
        ))
        .build();
    assert!(f.call(|| Err::<(), ()>(())).is_err());
    both(&mut group, "failsafe_tripped", 1, |_| {
        assert!(!black_box(f.is_call_permitted()), "rejected");
    });
    group.finish();
}

fn bench_half_open_probe(c: &mut Criterion) {
    let mut group = c.benchmark_group("scaling/half_open_probe");
    let b = consecutive(1000);
    trip(&b, Timestamp::from_nanos(START_NS));
    // The first admission after the open duration moves the breaker to
    // half-open; from then on each admission takes a slot and each drop
    // frees it. The benches' time starts an hour in, exactly then.
    let half_open_at = START_NS + OPEN.as_nanos() as u64;
    drop(
        b.try_acquire(Timestamp::from_nanos(half_open_at))
            .expect("probe"),
    );
    assert_eq!(b.state(), BreakerState::HalfOpen);
    both_timed(&mut group, "tenlives", 1, |t| {
        let probe = b
            .try_acquire(Timestamp::from_nanos(half_open_at + t - START_NS))
            .expect("a probe slot is free");
        drop(black_box(probe));
    });
    assert_eq!(b.state(), BreakerState::HalfOpen);
    group.finish();
}

fn bench_timer_wheel(c: &mut Criterion) {
    let mut group = c.benchmark_group("scaling/timer_wheel");
    let wheel = TimerWheel::new(1024, Duration::from_millis(1)).expect("a valid wheel");
    both(&mut group, "tenlives", 20, |t| {
        let deadline = Timestamp::from_nanos(t + 1_000_000_000);
        let registered = wheel
            .register(deadline, Waker::noop())
            .expect("a free entry");
        wheel.cancel(black_box(registered.entry));
    });
    group.finish();
}

/// The harness. A module of its own because `criterion_group!` makes a `pub`
/// function it cannot document; here it is not exported, so it needs no doc.
mod harness {
    use super::*;

    criterion_group! {
        name = benches;
        config = support::config();
        targets = bench_keyed, bench_ring_push, bench_throttle, bench_adaptive,
            bench_breaker_rejection, bench_half_open_probe, bench_timer_wheel
    }
}
criterion_main!(harness::benches);
