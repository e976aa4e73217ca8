//! Shared by the integration tests: the four policies in a known state, an
//! inner future with a chosen number of await points, and drivers.
#![allow(dead_code)] // each test binary uses its own part

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::executor::LocalPool;
use futures::task::noop_waker_ref;
use tenlives_engine::adaptive::{AdaptiveLimiter, Aimd, WindowConfig};
use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker, Outcome};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::throttle::{Throttle, ThrottleConfig};
use tenlives_engine::time::{Clock, ManualClock, Timestamp};
use tenlives_futures::ManualTimer;

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn at_ms(n: u64) -> Timestamp {
    Timestamp::from_nanos(n * 1_000_000)
}

/// A breaker with a failure-rate window (so the closed state counts calls),
/// tripping after 2 consecutive failures, open for 5 s, then 1 probe.
pub fn breaker() -> CircuitBreaker {
    CircuitBreaker::new(
        BreakerConfig::builder()
            .consecutive_failures(2)
            .open_duration(Duration::from_secs(5))
            .half_open_probes(1)
            .build()
            .unwrap(),
    )
}

/// A breaker in the half-open state at `clock`'s now, with one probe slot:
/// a probe held shows as `probes_admitted == 1`.
pub fn half_open_breaker(clock: &ManualClock) -> CircuitBreaker {
    let b = breaker();
    for _ in 0..2 {
        b.try_acquire(clock.now()).unwrap().failure(clock.now());
    }
    clock.advance(Duration::from_secs(5));
    b
}

pub fn adaptive(clock: &ManualClock) -> AdaptiveLimiter<Aimd> {
    let aimd = Aimd::builder().limits(1, 4, 10).build().unwrap();
    // A window far longer than any test: no window closes, samples stay pending.
    let window = WindowConfig::new(Duration::from_secs(3600), 1).unwrap();
    AdaptiveLimiter::new(aimd, window, clock.now())
}

pub fn throttle() -> Throttle {
    Throttle::new(
        ThrottleConfig::builder()
            .minimum_requests(1000)
            .build()
            .unwrap(),
    )
}

pub fn bulkhead(limit: u32) -> Bulkhead {
    Bulkhead::new(limit).unwrap()
}

pub fn classify(r: &Result<u32, &'static str>) -> Outcome {
    match r {
        Ok(0) => Outcome::Ignored,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    }
}

/// A future that returns `Pending` `awaits` times (waking itself each time,
/// so any executor polls it again) and then `output`; it panics instead at
/// poll number `panic_at` (0-based) if that is set.
pub struct Steps<T> {
    awaits: u32,
    polls: u32,
    panic_at: Option<u32>,
    output: Option<T>,
}

impl<T> Steps<T> {
    pub fn new(awaits: u32, output: T) -> Self {
        Steps {
            awaits,
            polls: 0,
            panic_at: None,
            output: Some(output),
        }
    }

    pub fn panicking_at(mut self, poll: u32) -> Self {
        self.panic_at = Some(poll);
        self
    }
}

impl<T: Unpin> Future for Steps<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let poll = self.polls;
        self.polls += 1;
        if self.panic_at == Some(poll) {
            panic!("the inner future panicked at poll {poll}");
        }
        if poll < self.awaits {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(self.output.take().expect("polled after completion"))
    }
}

/// Polls `fut` once with a waker that does nothing.
pub fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(noop_waker_ref()))
}

/// Runs `pool` under virtual time: runs every task until stalled, then moves
/// the timer to its next deadline, until nobody sleeps. At most `rounds`
/// rounds (the tests' loops are bounded); returns how many it took.
pub fn run_virtual(pool: &mut LocalPool, timer: &ManualTimer, rounds: usize) -> usize {
    for round in 0..rounds {
        pool.run_until_stalled();
        if timer.advance_to_next().is_none() {
            return round;
        }
    }
    panic!("still sleeping after {rounds} rounds");
}
