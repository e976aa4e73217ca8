//! Heap allocations per operation, tenlives beside its peers.
//!
//! Runs each operation the criterion benches time, on the subject they time
//! (configured the same way), [`OPS`] times on one thread after a warm-up of
//! [`WARM_UP`] operations, with a counting global allocator
//! (`tenlives_test_support::CountingAllocator`, which counts this thread's
//! allocations and reallocations), and prints one JSON line per operation:
//!
//! ```text
//! {"id":"breaker/closed_success/tenlives_consecutive","ops":10000,"allocations":0,"per_op":0}
//! ```
//!
//! `id` is the criterion benchmark's id without its `/1_thread` or
//! `/2_threads` suffix, so the report (`benches/report`) can put the count
//! beside the time. A warm-up allocation (a lazily made thread-local, a timer
//! wheel's first level) is not counted; what is counted is what every
//! further operation costs. Left out: the floors (`floor_*`, `bare`,
//! `design_*`), which allocate nothing by construction, and the variants
//! that differ from a counted operation only in the clock they read
//! (`tenlives_quanta_clock`, `tenlives_monotonic_clock`,
//! `tenlives_uneven_rate`). Layers are counted in both forms of `layers.rs`:
//! around `PendingOnce` (the headline: every timer armed, a real wake) and
//! around `Noop` (`*_always_ready`).
//!
//! With `--deny-tenlives`, exits 1 if any `tenlives*` operation allocated.
//!
//! `cargo bench -p tenlives-benches --bench allocs [-- --deny-tenlives]`

use std::hint::black_box;
use std::num::NonZeroU32;
use std::pin::pin;
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use failsafe::CircuitBreaker as _;
use governor::clock::FakeRelativeClock;
use tenlives_engine::adaptive::{AdaptiveLimiter, Aimd, WindowConfig};
use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::config_cell::ConfigCell;
use tenlives_engine::events::{Event, EventKind, EventRing, Received, Slot};
use tenlives_engine::queue::{AdmissionQueue, QueueConfig};
use tenlives_engine::rate::{KeyedConfig, KeyedRateLimiter, Quota, RateLimiter};
use tenlives_engine::retry::{Backoff, RetryBudget, RetryBudgetConfig};
use tenlives_engine::sharded::ShardedBulkhead;
use tenlives_engine::throttle::{Throttle, ThrottleConfig};
use tenlives_engine::time::{ManualClock, Timestamp};
use tenlives_test_support::{CountingAllocator, allocations_during};
use tenlives_tokio::{
    CircuitBreakerLayer, ConcurrencyLimitLayer, RateLimitLayer, RetryLayer, RetryPolicy,
    StackLayer, TimeoutLayer,
};
use tokio::runtime::Runtime;
use tokio::sync::{Semaphore, broadcast};
use tower::{Layer, Service, ServiceBuilder};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Operations counted per subject.
const OPS: u64 = 10_000;

/// Operations run before counting.
const WARM_UP: u64 = 100;

/// Where the timestamps start: an hour after the clock's origin.
const START_NS: u64 = 3_600_000_000_000;

/// Time per operation, in nanoseconds.
const STEP: u64 = 20;

#[path = "support/pending_once.rs"]
mod pending_once;
use pending_once::PendingOnce;
#[path = "support/tower_driver.rs"]
mod tower_driver;
use tower_driver::{Noop, drive, runtime};
#[path = "support/tower_peers.rs"]
mod peer;
/// Permits of every bulkhead and semaphore (the layers' too): never reached.
use peer::LIMIT;

/// Slots of every ring, queue and channel.
const CAPACITY: usize = 1024;

/// What the run found.
struct Tally {
    /// `id` of every `tenlives*` operation that allocated.
    tenlives_allocating: Vec<String>,
}

impl Tally {
    /// Runs `op` [`WARM_UP`] times, then [`OPS`] times counting allocations,
    /// with time advancing [`STEP`] per operation; prints the JSON line.
    fn count(&mut self, id: &str, mut op: impl FnMut(u64)) {
        let mut t = START_NS;
        for _ in 0..WARM_UP {
            t += STEP;
            op(black_box(t));
        }
        let allocations = allocations_during(|| {
            for _ in 0..OPS {
                t += STEP;
                op(black_box(t));
            }
        });
        self.print(id, OPS, allocations);
    }

    /// Prints the JSON line of `id`, which made `allocations` in `ops`
    /// operations.
    fn print(&mut self, id: &str, ops: u64, allocations: usize) {
        let per_op = allocations as f64 / ops as f64;
        println!(r#"{{"id":"{id}","ops":{ops},"allocations":{allocations},"per_op":{per_op}}}"#);
        let subject = id.rsplit('/').next().unwrap_or(id);
        if allocations > 0 && subject.starts_with("tenlives") {
            self.tenlives_allocating.push(id.to_owned());
        }
    }
}

fn ts(t: u64) -> Timestamp {
    Timestamp::from_nanos(t)
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("non-zero")
}

fn admitting() -> Quota {
    Quota::per_second(1_000_000_000)
        .and_then(|q| q.with_burst(u32::MAX))
        .expect("valid quota")
}

fn governor_admitting() -> governor::Quota {
    governor::Quota::per_second(nonzero(1_000_000_000)).allow_burst(nonzero(u32::MAX))
}

fn consecutive(failures: u32, probes: u32) -> CircuitBreaker {
    CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(failures)
            .open_duration(Duration::from_secs(3600))
            .half_open_probes(probes)
            .build()
            .expect("valid config"),
    )
}

fn failsafe_consecutive(failures: u32) -> impl failsafe::CircuitBreaker {
    failsafe::Config::new()
        .failure_policy(failsafe::failure_policy::consecutive_failures(
            failures,
            failsafe::backoff::constant(Duration::from_secs(3600)),
        ))
        .build()
}

fn breakers(tally: &mut Tally) {
    let success = |b: &CircuitBreaker, t: u64| {
        b.try_acquire(ts(t)).expect("closed").success(ts(t));
    };
    let b = consecutive(5, 1);
    tally.count("breaker/closed_success/tenlives_consecutive", |t| {
        success(&b, t)
    });
    let b = CircuitBreaker::new(BreakerConfig::default());
    tally.count("breaker/closed_success/tenlives_rate_time_window", |t| {
        success(&b, t)
    });
    let b = CircuitBreaker::new(
        BreakerConfig::builder()
            .failure_rate(50.0)
            .count_window(100)
            .build()
            .expect("valid config"),
    );
    tally.count("breaker/closed_success/tenlives_rate_count_window", |t| {
        success(&b, t)
    });
    let f = failsafe_consecutive(5);
    tally.count("breaker/closed_success/failsafe_consecutive", |_| {
        assert!(f.call(|| Ok::<(), ()>(())).is_ok());
    });
    let f = failsafe::Config::new().build();
    tally.count("breaker/closed_success/failsafe_default", |_| {
        assert!(f.call(|| Ok::<(), ()>(())).is_ok());
    });

    let b = consecutive(5, 1);
    b.force_open(Timestamp::ZERO);
    tally.count("breaker/open_rejection/tenlives_forced_open", |t| {
        assert!(b.try_acquire(ts(t)).is_err());
    });
    let b = consecutive(1, 1000);
    b.try_acquire(ts(START_NS))
        .expect("closed")
        .failure(ts(START_NS));
    tally.count("breaker/open_rejection/tenlives_tripped", |t| {
        assert!(b.try_acquire(ts(t)).is_err());
    });
    let f = failsafe_consecutive(1);
    assert!(f.call(|| Err::<(), ()>(())).is_err());
    tally.count("breaker/open_rejection/failsafe_tripped", |_| {
        assert!(!f.is_call_permitted());
    });
    // The tripped breaker above, an hour later: half-open, 1000 probe slots.
    let half_open_at = START_NS + 3_600_000_000_000;
    tally.count("breaker/half_open_admission/tenlives_probe_drop", |t| {
        drop(
            b.try_acquire(ts(half_open_at + t))
                .expect("a probe slot is free"),
        );
    });
}

fn bulkheads(tally: &mut Tally) {
    let b = Bulkhead::new(LIMIT).expect("valid limit");
    tally.count("bulkhead/acquire_release/tenlives", |_| {
        drop(black_box(b.try_acquire().expect("below the limit")));
    });
    let s = Semaphore::new(LIMIT as usize);
    tally.count("bulkhead/acquire_release/tokio_semaphore", |_| {
        drop(black_box(s.try_acquire().expect("below the limit")));
    });
    let budget = RetryBudget::new(
        RetryBudgetConfig::builder()
            .ratio(2.0)
            .min_per_second(0)
            .window(Duration::from_secs(10), 8)
            .build()
            .expect("valid config"),
    );
    tally.count("retry_budget/deposit_withdraw/tenlives", |t| {
        budget.deposit(ts(t));
        assert!(budget.try_withdraw(ts(t)));
    });
}

fn rate_limiters(tally: &mut Tally) {
    let r = RateLimiter::new(admitting());
    tally.count("rate/check_admitted/tenlives", |t| {
        assert!(r.check(ts(t)).is_ok());
    });
    let g = governor::RateLimiter::direct(governor_admitting());
    tally.count("rate/check_admitted/governor_quanta_clock", |_| {
        assert!(g.check().is_ok());
    });
    let g = governor::RateLimiter::direct_with_clock(
        governor_admitting(),
        FakeRelativeClock::default(),
    );
    tally.count("rate/check_admitted/governor_fake_clock", |_| {
        assert!(g.check().is_ok());
    });

    let r = RateLimiter::new(Quota::per_hour(1).expect("valid quota"));
    r.check(ts(START_NS)).expect("a fresh limiter has a token");
    tally.count("rate/check_refused/tenlives", |t| {
        assert!(r.check(ts(t)).is_err());
    });
    let g = governor::RateLimiter::direct(governor::Quota::per_hour(nonzero(1)));
    g.check().expect("a fresh limiter has a token");
    tally.count("rate/check_refused/governor_quanta_clock", |_| {
        assert!(g.check().is_err());
    });
    let g = governor::RateLimiter::direct_with_clock(
        governor::Quota::per_hour(nonzero(1)),
        FakeRelativeClock::default(),
    );
    g.check().expect("a fresh limiter has a token");
    tally.count("rate/check_refused/governor_fake_clock", |_| {
        assert!(g.check().is_err());
    });

    let r = RateLimiter::new(admitting());
    tally.count("rate/check_n8/tenlives", |t| {
        assert!(r.check_n(8, ts(t)).is_ok());
    });
    let g = governor::RateLimiter::direct_with_clock(
        governor_admitting(),
        FakeRelativeClock::default(),
    );
    tally.count("rate/check_n8/governor_fake_clock", |_| {
        assert!(matches!(g.check_n(nonzero(8)), Ok(Ok(()))));
    });

    for (keys, label) in [(1_000u64, "1k"), (100_000, "100k")] {
        let count = usize::try_from(keys).expect("fits");
        let next = |key: &mut u64| {
            *key = (*key + 1) % keys;
            *key
        };
        let k = KeyedRateLimiter::new(KeyedConfig::new(admitting(), 2 * count).expect("valid"));
        for key in 0..keys {
            k.check_key(&key, ts(START_NS)).expect("admitted");
        }
        let mut key = 0;
        tally.count(&format!("rate/keyed_{label}/tenlives"), |t| {
            assert!(k.check_key(&next(&mut key), ts(t)).is_ok());
        });
        assert_eq!(k.in_use(), count, "no key was evicted");

        let g = governor::RateLimiter::keyed(governor_admitting());
        for key in 0..keys {
            g.check_key(&key).expect("admitted");
        }
        tally.count(&format!("rate/keyed_{label}/governor_default"), |_| {
            assert!(g.check_key(&next(&mut key)).is_ok());
        });
        let g = governor::RateLimiter::dashmap_with_clock_and_hasher(
            governor_admitting(),
            FakeRelativeClock::default(),
            foldhash::fast::RandomState::default(),
        );
        for key in 0..keys {
            g.check_key(&key).expect("admitted");
        }
        tally.count(
            &format!("rate/keyed_{label}/governor_fake_clock_foldhash"),
            |_| {
                assert!(g.check_key(&next(&mut key)).is_ok());
            },
        );
    }
}

fn queues(tally: &mut Tally) {
    let clock = ManualClock::new();
    let mut cx = Context::from_waker(Waker::noop());
    let q = AdmissionQueue::new(
        Bulkhead::new(LIMIT).expect("valid limit"),
        QueueConfig::fifo(64).expect("valid config"),
    );
    tally.count("queue/acquire_release/tenlives_try_acquire", |_| {
        drop(black_box(q.try_acquire().expect("below the limit")));
    });
    tally.count("queue/acquire_release/tenlives_acquire_future", |_| {
        let fut = pin!(q.acquire(0, Timestamp::MAX, &clock));
        let Poll::Ready(Ok(p)) = fut.poll(&mut cx) else {
            panic!("below the limit")
        };
        drop(black_box(p));
    });
    let s = Semaphore::new(LIMIT as usize);
    tally.count("queue/acquire_release/tokio_try_acquire", |_| {
        drop(black_box(s.try_acquire().expect("below the limit")));
    });
    tally.count("queue/acquire_release/tokio_acquire_future", |_| {
        let fut = pin!(s.acquire());
        let Poll::Ready(Ok(p)) = fut.poll(&mut cx) else {
            panic!("below the limit")
        };
        drop(black_box(p));
    });

    // The waiting path of `queue.rs` on one thread: the only permit is held,
    // so each acquisition queues, and the release hands the permit over.
    let q = AdmissionQueue::new(
        Bulkhead::new(1).expect("valid limit"),
        QueueConfig::fifo(64).expect("valid config"),
    );
    let mut held = Some(q.try_acquire().expect("one permit"));
    tally.count("queue/enqueue_grant/tenlives", |_| {
        let mut fut = pin!(q.acquire(0, Timestamp::MAX, &clock));
        assert!(fut.as_mut().poll(&mut cx).is_pending(), "queued");
        drop(held.take());
        let Poll::Ready(Ok(p)) = fut.poll(&mut cx) else {
            panic!("granted on release")
        };
        held = Some(p);
    });
    drop(held);
    let s = Semaphore::new(1);
    let mut held = Some(s.try_acquire().expect("one permit"));
    tally.count("queue/enqueue_grant/tokio", |_| {
        let mut fut = pin!(s.acquire());
        assert!(fut.as_mut().poll(&mut cx).is_pending(), "queued");
        drop(held.take());
        let Poll::Ready(Ok(p)) = fut.poll(&mut cx) else {
            panic!("granted on release")
        };
        held = Some(p);
    });
}

fn event_at(t: u64) -> Event {
    Event::new(EventKind::USER, 1, ts(t), [t, 0])
}

fn events(tally: &mut Tally) {
    let ring = EventRing::<Box<[Slot]>>::with_capacity(CAPACITY).expect("a power of two");
    tally.count("events/emit/tenlives_ring", |t| ring.push(event_at(t)));
    let (tx, _idle) = broadcast::channel(CAPACITY);
    tally.count("events/emit/tokio_broadcast", |t| {
        assert!(tx.send(event_at(t)).is_ok());
    });
    let queue = ArrayQueue::new(CAPACITY);
    tally.count("events/emit/crossbeam_array_queue", |t| {
        black_box(queue.force_push(event_at(t)));
    });
    // Drained between batches, outside the count, as `events.rs` does.
    let (tx, rx) = mpsc::sync_channel(CAPACITY);
    let mut t = START_NS;
    for _ in 0..CAPACITY {
        t += STEP;
        tx.try_send(event_at(t)).expect("room");
    }
    rx.try_iter().for_each(drop);
    let batches = OPS.div_ceil(CAPACITY as u64);
    let mut allocations = 0;
    for _ in 0..batches {
        allocations += allocations_during(|| {
            for _ in 0..CAPACITY {
                t += STEP;
                tx.try_send(event_at(t))
                    .expect("drained before every batch");
            }
        });
        rx.try_iter().for_each(drop);
    }
    let ops = batches * CAPACITY as u64;
    tally.print("events/emit/std_sync_channel", ops, allocations);

    let ring = EventRing::<Box<[Slot]>>::with_capacity(CAPACITY).expect("a power of two");
    let mut consumer = ring.consumer();
    tally.count("events/consume/tenlives_ring", |t| {
        ring.push(event_at(t));
        assert!(matches!(consumer.try_recv(), Some(Received::Event(_))));
    });
    let (tx, mut rx) = broadcast::channel(CAPACITY);
    tally.count("events/consume/tokio_broadcast", |t| {
        tx.send(event_at(t)).expect("a receiver is alive");
        rx.try_recv().expect("the event just sent");
    });
    let queue = ArrayQueue::new(CAPACITY);
    tally.count("events/consume/crossbeam_array_queue", |t| {
        queue.push(event_at(t)).expect("empty");
        queue.pop().expect("the event just pushed");
    });
    let (tx, rx) = mpsc::sync_channel(CAPACITY);
    tally.count("events/consume/std_sync_channel", |t| {
        tx.try_send(event_at(t)).expect("empty");
        rx.try_recv().expect("the event just sent");
    });

    let ring = EventRing::<Box<[Slot]>>::with_capacity(CAPACITY).expect("a power of two");
    let b = CircuitBreaker::with_sink(BreakerConfig::default(), &ring, 1);
    tally.count("events/sink/closed_success_ring_sink", |t| {
        b.try_acquire(ts(t)).expect("closed").success(ts(t));
    });
    b.force_open(Timestamp::ZERO);
    tally.count("events/sink/rejection_ring_sink", |t| {
        assert!(b.try_acquire(ts(t)).is_err());
    });
}

struct Settings {
    limit: u64,
    _rest: [u64; 7],
}

fn configs(tally: &mut Tally) {
    let settings = || Settings {
        limit: 7,
        _rest: [7; 7],
    };
    let cell = ConfigCell::new(settings());
    tally.count("config/read/tenlives_cell", |_| {
        black_box(cell.with(|c| c.limit));
    });
    let swap = ArcSwap::from_pointee(settings());
    tally.count("config/read/arc_swap_load", |_| {
        black_box(swap.load().limit);
    });
    let lock = RwLock::new(settings());
    tally.count("config/read/rwlock_read", |_| {
        black_box(lock.read().expect("not poisoned").limit);
    });
    let unchanged = Arc::new(RateLimiter::new(admitting()));
    tally.count("config/rate_check/unchanged", |t| {
        assert!(unchanged.check(ts(t)).is_ok());
    });
    let changed = Arc::new(RateLimiter::new(admitting()));
    changed.set_quota(admitting(), ts(START_NS));
    tally.count("config/rate_check/after_change", |t| {
        assert!(changed.check(ts(t)).is_ok());
    });
}

fn others(tally: &mut Tally) {
    let throttle = Throttle::new(ThrottleConfig::builder().build().expect("valid config"));
    tally.count("scaling/throttle/tenlives", |t| {
        throttle.try_admit(ts(t)).expect("admitted").accepted(ts(t));
    });
    let aimd = Aimd::builder()
        .limits(1000, 1000, 1000)
        .build()
        .expect("valid algorithm");
    let window = WindowConfig::new(Duration::from_millis(100), 1).expect("valid window");
    let limiter = AdaptiveLimiter::new(aimd, window, ts(START_NS));
    tally.count("scaling/adaptive/tenlives_aimd", |t| {
        limiter.try_acquire(ts(t)).expect("admitted").success(ts(t));
    });
}

/// Counts the allocations of [`OPS`] requests through `svc` on `rt`.
fn layer<S: Service<u64>>(tally: &mut Tally, rt: &Runtime, id: &str, mut svc: S) {
    rt.block_on(drive(&mut svc, WARM_UP));
    let allocations = allocations_during(|| rt.block_on(drive(&mut svc, OPS)));
    tally.print(id, OPS, allocations);
}

fn retry_policy() -> RetryPolicy {
    let backoff = Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(2))
        .expect("a valid backoff")
        .with_max_retries(3);
    RetryPolicy::new(backoff, RetryBudget::new(RetryBudgetConfig::default()))
}

/// `make` around `PendingOnce` (the headline form: a real wake, every timer
/// armed) as `id`, and around `Noop` as `<id>_always_ready`, as in
/// `layers.rs`.
macro_rules! forms {
    ($tally:expr, $rt:expr, $id:expr, |$inner:ident| $make:expr) => {{
        {
            let $inner = PendingOnce;
            layer($tally, $rt, $id, $make);
        }
        {
            let $inner = Noop;
            layer($tally, $rt, &format!("{}_always_ready", $id), $make);
        }
    }};
}

fn layers(tally: &mut Tally) {
    let rt = runtime();
    let _in_runtime = rt.enter();
    let rt = &rt;
    let timeout = Duration::from_secs(1);
    let bulkhead = || Bulkhead::new(LIMIT).expect("a valid limit");
    let breaker = || CircuitBreaker::new(BreakerConfig::default());

    forms!(tally, rt, "layers/stack/tenlives_stack", |inner| {
        StackLayer::builder()
            .timeout(timeout)
            .retry(retry_policy())
            .circuit_breaker(breaker())
            .concurrency_limit(bulkhead())
            .build()
            .layer(inner)
    });
    layer(
        tally,
        rt,
        "layers/stack/tenlives_stack_static",
        StackLayer::builder()
            .timeout(timeout)
            .retry(retry_policy())
            .circuit_breaker(breaker())
            .concurrency_limit(bulkhead())
            .build()
            .into_static()
            .layer(PendingOnce),
    );
    layer(
        tally,
        rt,
        "layers/stack/tenlives_stack_sharded_static",
        StackLayer::builder()
            .timeout(timeout)
            .retry(retry_policy())
            .circuit_breaker(breaker())
            .sharded_concurrency_limit(ShardedBulkhead::new(LIMIT).expect("a valid limit"))
            .build()
            .into_static()
            .layer(PendingOnce),
    );
    forms!(tally, rt, "layers/stack/tenlives_layers", |inner| {
        ServiceBuilder::new()
            .layer(TimeoutLayer::new(timeout))
            .layer(RetryLayer::new(retry_policy()))
            .layer(CircuitBreakerLayer::new(breaker()))
            .layer(ConcurrencyLimitLayer::new(bulkhead()))
            .service(inner)
    });
    forms!(tally, rt, "layers/stack/tower_resilience", |inner| {
        peer::stack(inner)
    });
    forms!(
        tally,
        rt,
        "layers/stack/tenlives_stack_timeout_limit",
        |inner| {
            StackLayer::builder()
                .timeout(timeout)
                .concurrency_limit(bulkhead())
                .build()
                .layer(inner)
        }
    );
    forms!(tally, rt, "layers/stack/tower_timeout_limit", |inner| {
        ServiceBuilder::new()
            .timeout(timeout)
            .concurrency_limit(LIMIT as usize)
            .service(inner)
    });

    forms!(tally, rt, "layers/concurrency_limit/tenlives", |inner| {
        ConcurrencyLimitLayer::new(bulkhead()).layer(inner)
    });
    forms!(tally, rt, "layers/concurrency_limit/tower", |inner| {
        tower::limit::ConcurrencyLimitLayer::new(LIMIT as usize).layer(inner)
    });
    forms!(
        tally,
        rt,
        "layers/concurrency_limit/tower_resilience",
        |inner| peer::bulkhead().layer(inner)
    );

    forms!(tally, rt, "layers/timeout/tenlives", |inner| {
        TimeoutLayer::new(timeout).layer(inner)
    });
    forms!(tally, rt, "layers/timeout/tower", |inner| {
        tower::timeout::TimeoutLayer::new(timeout).layer(inner)
    });
    forms!(tally, rt, "layers/timeout/tower_resilience", |inner| {
        peer::timeout().layer(inner)
    });

    forms!(tally, rt, "layers/breaker/tenlives", |inner| {
        CircuitBreakerLayer::new(breaker()).layer(inner)
    });
    forms!(tally, rt, "layers/breaker/tower_resilience", |inner| {
        peer::breaker().layer(inner)
    });

    forms!(tally, rt, "layers/retry/tenlives", |inner| {
        RetryLayer::new(retry_policy()).layer(inner)
    });
    forms!(tally, rt, "layers/retry/tower_resilience", |inner| {
        peer::retry::<std::convert::Infallible>().layer(inner)
    });

    forms!(tally, rt, "layers/rate_limit/tenlives", |inner| {
        RateLimitLayer::new(RateLimiter::new(peer::tenlives_quota())).layer(inner)
    });
    forms!(tally, rt, "layers/rate_limit/tower_resilience", |inner| {
        peer::rate_limit().layer(inner)
    });
    forms!(tally, rt, "layers/rate_limit/tower", |inner| {
        tower::limit::RateLimitLayer::new(u64::from(peer::RATE), Duration::from_secs(1))
            .layer(inner)
    });
}

fn main() {
    let deny = std::env::args().any(|a| a == "--deny-tenlives");
    let mut tally = Tally {
        tenlives_allocating: Vec::new(),
    };
    breakers(&mut tally);
    bulkheads(&mut tally);
    rate_limiters(&mut tally);
    queues(&mut tally);
    events(&mut tally);
    configs(&mut tally);
    others(&mut tally);
    layers(&mut tally);
    if !tally.tenlives_allocating.is_empty() {
        eprintln!(
            "allocs: tenlives operations that allocate: {}",
            tally.tenlives_allocating.join(", ")
        );
        if deny {
            std::process::exit(1);
        }
    }
}
