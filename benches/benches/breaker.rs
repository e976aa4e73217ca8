//! The circuit breaker's request path, tenlives beside failsafe 1.3.
//!
//! What is measured, per operation:
//!
//! - `breaker/closed_success`: one call admitted by a closed breaker and
//!   reported as a success (`try_acquire` + `Permit::success` for tenlives,
//!   `CircuitBreaker::call` with a closure returning `Ok` for failsafe, which
//!   is its `is_call_permitted` + `on_success`). Subjects: tenlives with the
//!   consecutive-failures rule alone, with a failure rate over a time window
//!   (the default configuration) and over a count window (exactly the last
//!   100 calls); failsafe with its consecutive-failures policy and with its
//!   default configuration (success rate over a time window, or else
//!   consecutive failures); and a floor, one `fetch_add(1, Relaxed)` on a
//!   shared `AtomicU64`. Each runs on 1 thread (`1_thread`) and on 2 threads
//!   sharing one breaker (`2_threads`, reported as nanoseconds per operation
//!   per thread: the wall time for both threads to do `iters` operations
//!   each, divided by `iters`).
//! - `breaker/open_rejection`: one admission refused by an open breaker,
//!   tenlives force-opened and tripped, failsafe tripped.
//! - `breaker/half_open_admission`: tenlives only: one probe admitted by a
//!   half-open breaker and dropped unreported, which frees its slot.
//!
//! Headline rows measure tenlives the way its adapters call it: the engine
//! never reads a clock, so the row reads the adapters' default clock (the
//! process's `TscClock`, quanta's TSC) at admission only where the decision
//! needs it (`try_acquire_raw_with`: an open breaker, or a slow-call rule),
//! and at the end only where the breaker says the outcome needs the time
//! (`record_needs_time`: the default time window does, the
//! consecutive-failures rule and the count window do not), exactly as the
//! breaker layer and the futures adapter do (the stack reads once at the
//! call when it has a timeout or a rate limit, which need the time anyway). failsafe reads `Instant::now()` itself
//! wherever its design needs it (its rate window on every success, its open
//! state on every admission), with its default clock. The secondary rows
//! ending in `_no_clock_read` give tenlives `now` for free (a counter
//! advanced by 1 ns per operation), which is what the engine's decisions
//! alone cost.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use failsafe::CircuitBreaker as _;
use failsafe::failure_policy::FailurePolicy;
use tenlives_engine::breaker::{BreakerConfig, BreakerState, CircuitBreaker, Outcome};
use tenlives_engine::time::{Clock, Timestamp, TscClock};

mod support;

/// Where the benchmarks' timestamps start: an hour after the clock's origin,
/// as a monotonic clock of a running process would read.
const START_NS: u64 = 3_600_000_000_000;

/// How long a tripped breaker stays open: far longer than any run.
const OPEN: Duration = Duration::from_secs(60);

/// One call through a closed breaker that succeeds, at `t` nanoseconds.
trait ClosedSuccess: Sync {
    fn succeed(&self, t: u64);
}

impl ClosedSuccess for CircuitBreaker {
    #[inline]
    fn succeed(&self, t: u64) {
        let now = Timestamp::from_nanos(t);
        let permit = self.try_acquire(now).expect("a closed breaker admits");
        permit.success(now);
    }
}

impl<P> ClosedSuccess for failsafe::StateMachine<P, ()>
where
    P: FailurePolicy + Send,
{
    #[inline]
    fn succeed(&self, _t: u64) {
        // failsafe reads its own clock; `t` has no use here.
        let result = self.call(|| Ok::<(), ()>(()));
        assert!(result.is_ok(), "a closed breaker admits");
    }
}

/// A tenlives breaker as the adapters call it: the clock read at admission
/// and at the end only where the decision needs the time.
struct Clocked<'a> {
    breaker: &'a CircuitBreaker,
    clock: &'a TscClock,
}

impl ClosedSuccess for Clocked<'_> {
    #[inline]
    fn succeed(&self, _t: u64) {
        let b = self.breaker;
        let permit = b
            .try_acquire_raw_with(|| self.clock.now())
            .expect("a closed breaker admits");
        let end = if b.record_needs_time(&permit, Outcome::Success) {
            self.clock.now()
        } else {
            Timestamp::ZERO
        };
        b.record(permit, Outcome::Success, end);
    }
}

/// The floor: the cheapest shared write a breaker could make.
impl ClosedSuccess for AtomicU64 {
    #[inline]
    fn succeed(&self, _t: u64) {
        black_box(self.fetch_add(1, Ordering::Relaxed));
    }
}

/// tenlives, consecutive-failures rule only.
fn tenlives_consecutive() -> CircuitBreaker {
    CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(5)
            .open_duration(OPEN)
            .build()
            .expect("valid config"),
    )
}

/// failsafe, consecutive-failures policy only.
fn failsafe_consecutive() -> impl ClosedSuccess + failsafe::CircuitBreaker {
    failsafe::Config::new()
        .failure_policy(failsafe::failure_policy::consecutive_failures(
            5,
            failsafe::backoff::constant(OPEN),
        ))
        .build()
}

/// Makes a fresh breaker of one configuration.
type MakeBreaker = fn() -> CircuitBreaker;

/// `subject` on 1 thread and on 2 threads.
fn closed_success<S: ClosedSuccess>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    subject: &S,
) {
    group.bench_function(format!("{name}/1_thread"), |b| {
        let mut t = START_NS;
        b.iter(|| {
            t += 1;
            subject.succeed(black_box(t));
        });
    });
    group.bench_function(format!("{name}/2_threads"), |b| {
        b.iter_custom(|iters| support::two_threads(iters, START_NS, 1, |t| subject.succeed(t)));
    });
}

fn bench_closed_success(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker/closed_success");

    let floor = AtomicU64::new(0);
    closed_success(&mut group, "floor_fetch_add", &floor);

    let clock = TscClock::new();
    let count_window = || {
        CircuitBreaker::new(
            BreakerConfig::builder()
                .failure_rate(50.0)
                .count_window(100)
                .build()
                .expect("valid config"),
        )
    };
    let subjects: [(&str, MakeBreaker); 3] = [
        ("tenlives_consecutive", tenlives_consecutive),
        ("tenlives_rate_time_window", || {
            CircuitBreaker::new(BreakerConfig::default())
        }),
        ("tenlives_rate_count_window", count_window),
    ];
    for (name, make) in subjects {
        let b = make();
        let clocked = Clocked {
            breaker: &b,
            clock: &clock,
        };
        closed_success(&mut group, name, &clocked);
        assert_eq!(b.state(), BreakerState::Closed);
        let b = make();
        closed_success(&mut group, &format!("{name}_no_clock_read"), &b);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    let f = failsafe_consecutive();
    closed_success(&mut group, "failsafe_consecutive", &f);
    assert!(f.is_call_permitted());

    let f = failsafe::Config::new().build();
    closed_success(&mut group, "failsafe_default", &f);
    assert!(f.is_call_permitted());

    group.finish();
}

fn bench_open_rejection(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker/open_rejection");

    let clock = TscClock::new();
    let b = tenlives_consecutive();
    b.force_open(Timestamp::ZERO);
    group.bench_function("tenlives_forced_open", |bench| {
        bench.iter(|| b.try_acquire_raw_with(|| clock.now()).err());
    });
    group.bench_function("tenlives_forced_open_no_clock_read", |bench| {
        let mut t = START_NS;
        bench.iter(|| {
            t += 1;
            b.try_acquire(Timestamp::from_nanos(black_box(t))).err()
        });
    });
    assert_eq!(b.state(), BreakerState::ForcedOpen);

    let b = tenlives_consecutive();
    let tripped_at = Timestamp::from_nanos(START_NS);
    for _ in 0..5 {
        b.try_acquire(tripped_at)
            .expect("closed")
            .failure(tripped_at);
    }
    assert_eq!(b.state(), BreakerState::Open);
    let on_clock = tenlives_consecutive();
    let tripped_at = clock.now();
    for _ in 0..5 {
        on_clock
            .try_acquire(tripped_at)
            .expect("closed")
            .failure(tripped_at);
    }
    group.bench_function("tenlives_tripped", |bench| {
        bench.iter(|| on_clock.try_acquire_raw_with(|| clock.now()).err());
    });
    assert_eq!(on_clock.state(), BreakerState::Open);
    group.bench_function("tenlives_tripped_no_clock_read", |bench| {
        let mut t = START_NS;
        bench.iter(|| {
            t += 1;
            b.try_acquire(Timestamp::from_nanos(black_box(t))).err()
        });
    });
    assert_eq!(b.state(), BreakerState::Open);

    let f = failsafe_consecutive();
    for _ in 0..5 {
        assert!(f.call(|| Err::<(), ()>(())).is_err());
    }
    assert!(!f.is_call_permitted());
    group.bench_function("failsafe_tripped", |bench| {
        // Reads `Instant::now()` on every call: failsafe's open state
        // compares its deadline with its own clock.
        bench.iter(|| f.is_call_permitted());
    });
    assert!(!f.is_call_permitted());

    group.finish();
}

fn bench_half_open_admission(c: &mut Criterion) {
    // failsafe is left out: its half-open state admits every call, with no
    // slot to take or give back, and the first outcome reported decides the
    // state, so it has no operation that matches "admit a probe, free its
    // slot" and stays half-open.
    let mut group = c.benchmark_group("breaker/half_open_admission");

    let b = CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .open_duration(OPEN)
            .half_open_probes(1000)
            .build()
            .expect("valid config"),
    );
    let tripped_at = Timestamp::from_nanos(START_NS);
    b.try_acquire(tripped_at)
        .expect("closed")
        .failure(tripped_at);
    // The first admission after the open duration moves the breaker to
    // half-open; from then on each admission takes a slot and each drop frees it.
    let half_open_at = START_NS + OPEN.as_nanos() as u64;
    let first = b
        .try_acquire(Timestamp::from_nanos(half_open_at))
        .expect("probe");
    assert!(first.is_probe());
    drop(first);
    assert_eq!(b.state(), BreakerState::HalfOpen);

    let clock = TscClock::new();
    group.bench_function("tenlives_probe_drop", |bench| {
        bench.iter(|| {
            // The TSC's time, moved to the half-open breaker's.
            let now = Timestamp::from_nanos(clock.now().as_nanos().saturating_add(half_open_at));
            let probe = b.try_acquire(now).expect("a probe slot is free");
            drop(black_box(probe));
        });
    });
    group.bench_function("tenlives_probe_drop_no_clock_read", |bench| {
        let mut t = half_open_at;
        bench.iter(|| {
            t += 1;
            let probe = b
                .try_acquire(Timestamp::from_nanos(black_box(t)))
                .expect("a probe slot is free");
            drop(black_box(probe));
        });
    });
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert_eq!(
        b.snapshot(Timestamp::from_nanos(half_open_at))
            .probes_admitted,
        0,
        "every dropped probe freed its slot"
    );

    group.finish();
}

/// The harness. A module of its own because `criterion_group!` makes a `pub`
/// function it cannot document; here it is not exported, so it needs no doc.
mod harness {
    use super::*;

    criterion_group! {
        name = benches;
        config = support::config();
        targets = bench_closed_success, bench_open_rejection, bench_half_open_admission
    }
}
criterion_main!(harness::benches);
