//! [`Guarded`]: a future that runs only if a policy admits it, and reports
//! how it ended.

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};

use pin_project_lite::pin_project;
use tenlives_engine::breaker::Outcome;
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::events::EventSink;
use tenlives_engine::time::Clock;

use crate::admission::{Admission, Classify, Unclassified, Untimed};

pin_project! {
    /// A future guarded by a policy ([`Admission`]). Made by [`guard`] or
    /// [`limit`].
    ///
    /// On its first poll (never at creation) it asks the policy for
    /// admission: if refused, it resolves to `Err(rejection)` without polling
    /// the inner future; if admitted, it polls the inner future while holding
    /// the permit and, when that completes, reports the classified outcome
    /// and resolves to `Ok(output)`. Dropped before that (cancelled), or
    /// unwound by a panic of the inner future, it drops the permit, which
    /// gives back what it holds and reports nothing. A panic of the
    /// classifier drops the permit too, at once: nothing is reported, the
    /// panic reaches the caller, and the future is done.
    ///
    /// It allocates nothing, takes no lock and reads the clock at most twice
    /// (at admission and at completion), only where the policy needs it.
    #[must_use = "futures do nothing unless polled"]
    pub struct Guarded<'p, P, F, C, K>
    where
        P: Admission,
        P: 'p,
    {
        #[pin]
        inner: F,
        policy: &'p P,
        clock: C,
        classify: K,
        state: State<P::Permit<'p>>,
    }
}

enum State<T> {
    /// Not polled yet: admission happens on the first poll, not at creation,
    /// so a future built and never polled holds nothing.
    Idle,
    /// Admitted; the permit is given back if the future is dropped here.
    Running(T),
    /// Resolved.
    Done,
}

/// Wraps `future` so that it runs only if `policy` admits it, and reports its
/// outcome (as judged by `classify`) when it completes; `clock` is read
/// where the policy needs the time (a breaker's windows, an adaptive
/// limiter's round-trip times, a throttle's window).
///
/// `policy` is any [`Admission`]: a
/// [`CircuitBreaker`](tenlives_engine::breaker::CircuitBreaker), a
/// [`Bulkhead`] (see also [`limit`]), an
/// [`AdaptiveLimiter`](tenlives_engine::adaptive::AdaptiveLimiter) or a
/// [`Throttle`](tenlives_engine::throttle::Throttle).
///
/// ```
/// use core::time::Duration;
/// use futures::executor::block_on;
/// use tenlives_engine::adaptive::{AdaptiveLimiter, Aimd, WindowConfig};
/// use tenlives_engine::breaker::Outcome;
/// use tenlives_engine::time::{Clock, ManualClock};
/// use tenlives_futures::guard;
///
/// let clock = ManualClock::new();
/// let aimd = Aimd::builder().limits(1, 2, 10).build()?;
/// let limiter = AdaptiveLimiter::new(aimd, WindowConfig::new(Duration::from_secs(1), 1)?, clock.now());
/// let ok = |r: &Result<u8, ()>| if r.is_ok() { Outcome::Success } else { Outcome::Failure };
///
/// let call = guard(&limiter, &clock, ok, async { Ok::<u8, ()>(1) });
/// assert_eq!(limiter.in_flight(), 0, "nothing is admitted before the first poll");
/// assert_eq!(block_on(call), Ok(Ok(1)));
/// assert_eq!(limiter.pending_samples(), 1, "its round-trip time was reported");
/// # Ok::<(), tenlives_engine::ConfigError>(())
/// ```
pub fn guard<'p, P, F, C, K>(
    policy: &'p P,
    clock: C,
    classify: K,
    future: F,
) -> Guarded<'p, P, F, C, K>
where
    P: Admission,
    F: Future,
    C: Clock,
    K: FnMut(&F::Output) -> Outcome,
{
    Guarded {
        inner: future,
        policy,
        clock,
        classify,
        state: State::Idle,
    }
}

/// Wraps `future` so that it runs only while holding one of `bulkhead`'s
/// permits; the permit is given back when it completes, is dropped or
/// panics. A full bulkhead rejects it at once with
/// [`BulkheadFull`](tenlives_engine::bulkhead::BulkheadFull); to wait for a
/// permit instead, see [`acquire`](crate::acquire).
///
/// ```
/// use futures::executor::block_on;
/// use tenlives_engine::bulkhead::Bulkhead;
/// use tenlives_futures::limit;
///
/// let bulkhead = Bulkhead::new(1)?;
/// let held = bulkhead.try_acquire().unwrap();
/// assert!(block_on(limit(&bulkhead, async { 1 })).is_err(), "full: rejected");
/// drop(held);
/// assert_eq!(block_on(limit(&bulkhead, async { 2 })), Ok(2));
/// assert_eq!(bulkhead.in_flight(), 0);
/// # Ok::<(), tenlives_engine::ConfigError>(())
/// ```
pub fn limit<S, F>(
    bulkhead: &Bulkhead<S>,
    future: F,
) -> Guarded<'_, Bulkhead<S>, F, Untimed, Unclassified>
where
    S: EventSink,
    F: Future,
{
    Guarded {
        inner: future,
        policy: bulkhead,
        clock: Untimed,
        classify: Unclassified,
        state: State::Idle,
    }
}

impl<'p, P, F, C, K> Future for Guarded<'p, P, F, C, K>
where
    P: Admission,
    F: Future,
    C: Clock,
    K: Classify<F::Output>,
{
    type Output = Result<F::Output, P::Rejected>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let State::Idle = this.state {
            match this.policy.admit(this.clock) {
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
        // A panic here unwinds through `Guarded`, whose permit is dropped.
        let output = match this.inner.poll(cx) {
            Poll::Ready(output) => output,
            Poll::Pending => return Poll::Pending,
        };
        if let State::Running(permit) = core::mem::replace(this.state, State::Done) {
            // The permit belongs to this frame while the classifier runs: if
            // it panics, unwinding drops the permit, which gives it back
            // unreported, and the future stays done.
            let outcome = this.classify.classify(&output);
            P::complete(permit, outcome, this.clock);
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
        // Polled again after completion: it does not run the call again.
        assert!(fut.as_mut().poll(&mut cx).is_pending());
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
