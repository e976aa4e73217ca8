//! # tenlives-futures
//!
//! Runtime-agnostic futures over the tenlives engine: nothing here depends on
//! an executor or a timer, so the same code runs on tokio, on
//! `futures::executor`, on smol, or on a hand-written embedded executor.
//!
//! [`Guarded`] wraps any future in a circuit breaker: it asks the breaker for
//! admission on its first poll, reports the classified outcome and the call's
//! latency when the inner future completes, and releases its permit if it is
//! dropped first (cancellation) or if the inner future panics.
//!
//! ```
//! use core::time::Duration;
//! use futures::executor::block_on;
//! use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker, Outcome};
//! use tenlives_engine::time::ManualClock;
//! use tenlives_futures::guard;
//!
//! let breaker = CircuitBreaker::new(BreakerConfig::builder().consecutive_failures(2).build()?);
//! let clock = ManualClock::new();
//! let classify = |r: &Result<u32, &str>| if r.is_ok() { Outcome::Success } else { Outcome::Failure };
//!
//! let answer = block_on(guard(&breaker, &clock, classify, async { Ok::<u32, &str>(42) }));
//! assert_eq!(answer, Ok(Ok(42)));
//!
//! for _ in 0..2 {
//!     let _ = block_on(guard(&breaker, &clock, classify, async { Err::<u32, &str>("boom") }));
//! }
//! // Two failures in a row opened the breaker: the next call is rejected
//! // without running the inner future.
//! let rejected = block_on(guard(&breaker, &clock, classify, async { Ok::<u32, &str>(7) })).unwrap_err();
//! assert_eq!(rejected.retry_after(), Some(Duration::from_secs(5)));
//! # Ok::<(), tenlives_engine::ConfigError>(())
//! ```
#![no_std]
#![deny(missing_docs)]

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};

use pin_project_lite::pin_project;
use tenlives_engine::breaker::{CircuitBreaker, Outcome, Permit, Rejected};
use tenlives_engine::events::EventSink;
use tenlives_engine::time::Clock;

pin_project! {
    /// A future guarded by a circuit breaker. Made by [`guard`].
    ///
    /// Resolves to `Ok(output)` when the breaker admitted the call, or to
    /// `Err(Rejected)` without polling the inner future when it did not.
    #[must_use = "futures do nothing unless polled"]
    pub struct Guarded<'b, F, C, K, S: EventSink> {
        #[pin]
        inner: F,
        breaker: &'b CircuitBreaker<S>,
        clock: C,
        classify: K,
        state: State<'b, S>,
    }
}

enum State<'b, S: EventSink> {
    /// Not polled yet: admission happens on the first poll, not at creation,
    /// so a future built and never polled holds nothing.
    Idle,
    /// Admitted; the permit is released if the future is dropped here.
    Running(Permit<'b, S>),
    /// Resolved.
    Done,
}

/// Wraps `future` so that it runs only if `breaker` admits it, and reports its
/// outcome (as judged by `classify`) and latency (measured with `clock`) when
/// it completes.
pub fn guard<'b, F, C, K, S>(
    breaker: &'b CircuitBreaker<S>,
    clock: C,
    classify: K,
    future: F,
) -> Guarded<'b, F, C, K, S>
where
    S: EventSink,
    F: Future,
    C: Clock,
    K: FnMut(&F::Output) -> Outcome,
{
    Guarded {
        inner: future,
        breaker,
        clock,
        classify,
        state: State::Idle,
    }
}

impl<F, C, K, S> Future for Guarded<'_, F, C, K, S>
where
    S: EventSink,
    F: Future,
    C: Clock,
    K: FnMut(&F::Output) -> Outcome,
{
    type Output = Result<F::Output, Rejected>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let State::Idle = this.state {
            match this.breaker.try_acquire(this.clock.now()) {
                Ok(permit) => *this.state = State::Running(permit),
                Err(rejected) => {
                    *this.state = State::Done;
                    return Poll::Ready(Err(rejected));
                }
            }
        }
        if !matches!(this.state, State::Running(_)) {
            // Polled after completion: keep returning Pending rather than
            // re-running the call; the future contract makes this the caller's bug.
            return Poll::Pending;
        }
        // A panic here unwinds through `Guarded`, whose `Permit` releases.
        let output = match this.inner.poll(cx) {
            Poll::Ready(output) => output,
            Poll::Pending => return Poll::Pending,
        };
        if let State::Running(permit) = core::mem::replace(this.state, State::Done) {
            permit.record((this.classify)(&output), this.clock.now());
        }
        Poll::Ready(Ok(output))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use core::task::{Context, Poll};
    use core::time::Duration;
    use std::boxed::Box;
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use futures::executor::block_on;
    use futures::future::{FutureExt, pending, poll_fn};
    use futures::task::noop_waker;
    use tenlives_engine::breaker::{
        BreakerConfig, BreakerState, CircuitBreaker, Outcome, RejectReason,
    };
    use tenlives_engine::time::{Clock, ManualClock};

    use super::guard;

    fn half_open_breaker(clock: &ManualClock) -> CircuitBreaker {
        let b = CircuitBreaker::new(
            BreakerConfig::builder()
                .without_failure_rate()
                .consecutive_failures(1)
                .half_open_probes(1)
                .slow_calls(100.0, Duration::from_millis(50))
                .build()
                .unwrap(),
        );
        b.try_acquire(clock.now()).unwrap().failure(clock.now());
        clock.advance(Duration::from_secs(5));
        b
    }

    fn ok(_: &()) -> Outcome {
        Outcome::Success
    }

    #[test]
    fn dropping_mid_flight_frees_the_probe_slot() {
        let clock = ManualClock::new();
        let b = half_open_breaker(&clock);
        let mut fut = Box::pin(guard(&b, &clock, ok, pending::<()>()));
        let waker = noop_waker();
        assert!(
            fut.as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        assert_eq!(b.snapshot(clock.now()).probes_admitted, 1);
        drop(fut);
        assert_eq!(b.snapshot(clock.now()).probes_admitted, 0);
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn a_future_never_polled_holds_nothing() {
        let clock = ManualClock::new();
        let b = half_open_breaker(&clock);
        let fut = guard(&b, &clock, ok, async {});
        assert_eq!(b.snapshot(clock.now()).probes_admitted, 0);
        drop(fut);
    }

    #[test]
    fn a_panicking_call_frees_the_probe_slot() {
        let clock = ManualClock::new();
        let b = half_open_breaker(&clock);
        let result = catch_unwind(AssertUnwindSafe(|| {
            block_on(guard(&b, &clock, ok, async {
                panic!("the inner call panicked")
            }))
        }));
        assert!(result.is_err());
        assert_eq!(b.snapshot(clock.now()).probes_admitted, 0);
        // The slot can be used again, and a success closes the breaker.
        assert_eq!(block_on(guard(&b, &clock, ok, async {})), Ok(()));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn latency_is_measured_from_admission_to_completion() {
        let clock = ManualClock::new();
        let b = half_open_breaker(&clock);
        // The probe succeeds but takes 60 ms, over the 50 ms slow threshold:
        // the slow-call rule (100 % of 1 probe) reopens the breaker.
        let mut polled = false;
        let slow = poll_fn(|_| {
            if polled {
                Poll::Ready(())
            } else {
                polled = true;
                clock.advance(Duration::from_millis(60));
                Poll::Pending
            }
        });
        let mut fut = Box::pin(guard(&b, &clock, ok, slow));
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(())));
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn rejections_do_not_run_the_inner_future() {
        let clock = ManualClock::new();
        let b = half_open_breaker(&clock);
        b.force_open(clock.now());
        let mut ran = false;
        let result = block_on(
            guard(&b, &clock, ok, async { ran = true }).map(|r| r.map_err(|e| e.reason())),
        );
        assert_eq!(result, Err(RejectReason::ForcedOpen));
        assert!(!ran);
    }
}
