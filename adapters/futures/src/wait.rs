//! Waiting for capacity: [`acquire`] a permit before a deadline, sleeping on
//! a [`Timer`] between attempts.
//!
//! A policy that can be waited on implements [`TryAdmit`]: "admit now, or
//! tell me when to try again". The answer decides how [`Acquire`] waits:
//!
//! | answer | the waiter |
//! |---|---|
//! | `Ok(permit)` | resolves to the permit |
//! | [`NotYet::At(t)`](NotYet::At) | sleeps until `t` and tries again; if `t` is past the deadline, fails at once with [`AcquireError::TimedOut`] carrying `t` |
//! | [`NotYet::Unknown`] | sleeps for the next delay of its backoff schedule (never past the deadline) and tries again |
//! | [`NotYet::Never(e)`](NotYet::Never) | fails at once with [`AcquireError::Refused(e)`](AcquireError::Refused) |
//!
//! A rate limiter knows exactly when its next token is due, so it answers
//! `At`; a bulkhead frees a permit when some call ends, which nobody can
//! predict, so it answers `Unknown`; a breaker that is open knows when it
//! will half-open (`At`), one that is forced open or whose probe slots are
//! taken does not (`Unknown`).
//!
//! # Why polling with backoff, not wake-on-release
//!
//! A bulkhead permit's release is one `fetch_sub` in the engine, which does
//! not know who waits. Waking waiters on release would need a list of
//! waiting tasks that releases walk: in every design we know (tokio's
//! semaphore, async-lock's event-listener) that list sits behind a lock or
//! allocates a node per waiter, and every release would pay to look at it,
//! even with nobody waiting. A waiter that retries after a bounded backoff
//! needs none of that: the engine stays as it is, a release costs exactly
//! what it did, a retry that finds the bulkhead full is one load that writes
//! nothing, and nothing is held while waiting, so dropping a waiter leaves no
//! trace. The price is latency: a permit freed just after an attempt waits
//! up to one backoff delay (50 ms with [`acquire`]'s default schedule; choose
//! your own with [`acquire_with`]) before it is taken, and a waiter may be
//! overtaken by a caller that never waited (there is no queue, so no
//! fairness). The deadline is exact: the last attempt happens at it.

use core::convert::Infallible;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};
use core::time::Duration;

use pin_project_lite::pin_project;
use tenlives_engine::adaptive::{AdaptiveLimiter, AdaptivePermit, LimitAlgorithm};
use tenlives_engine::breaker::{CircuitBreaker, Permit};
use tenlives_engine::bulkhead::{AcquireManyError, Bulkhead, BulkheadPermit};
use tenlives_engine::events::EventSink;
use tenlives_engine::rate::{RateLimitError, RateLimiter};
use tenlives_engine::retry::{Backoff, BackoffIter};
use tenlives_engine::time::{Clock, Timestamp};

use crate::timer::Timer;

/// Why a policy did not admit a call now, and when to try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotYet<E> {
    /// Not before this instant (on the clock `now` was read from): a rate
    /// limiter's next token, an open breaker's end of its open duration.
    At(Timestamp),
    /// Maybe at any moment (a permit may be released), maybe never: try
    /// again after a backoff.
    Unknown,
    /// Waiting cannot help (e.g. more permits asked for than the limit).
    Never(E),
}

/// A policy that can be waited on: admit now, or say when to try again.
///
/// Implemented here for [`Bulkhead`] (one permit), [`ManyPermits`] (`n`
/// permits of a bulkhead), [`AdaptiveLimiter`], [`CircuitBreaker`],
/// [`RateLimiter`] (one token) and [`Tokens`] (`n` tokens).
/// `poll_admit` is called once per attempt with the time of the attempt; it
/// must not block.
pub trait TryAdmit {
    /// What an admission grants. Dropping it gives back what it holds.
    type Permit<'a>
    where
        Self: 'a;
    /// Why waiting cannot help, for [`NotYet::Never`].
    type Refused;

    /// Admits now, or says when to try again.
    fn poll_admit(&self, now: Timestamp) -> Result<Self::Permit<'_>, NotYet<Self::Refused>>;
}

impl<S: EventSink> TryAdmit for Bulkhead<S> {
    type Permit<'a>
        = BulkheadPermit<'a, S>
    where
        Self: 'a;
    type Refused = Infallible;

    #[inline]
    fn poll_admit(&self, _now: Timestamp) -> Result<BulkheadPermit<'_, S>, NotYet<Infallible>> {
        self.try_acquire().map_err(|_| NotYet::Unknown)
    }
}

/// `n` permits of a bulkhead at once, to wait for with [`acquire`].
///
/// ```
/// use futures::executor::block_on;
/// use tenlives_engine::bulkhead::{AcquireManyError, Bulkhead};
/// use tenlives_engine::time::{Clock, Timestamp};
/// use tenlives_futures::{AcquireError, ManualTimer, ManyPermits, acquire};
///
/// let bulkhead = Bulkhead::new(4)?;
/// let timer = ManualTimer::new();
/// let three = ManyPermits::new(&bulkhead, 3);
/// let permit = block_on(acquire(&three, &timer, Timestamp::ZERO)).unwrap();
/// assert_eq!((permit.permits(), bulkhead.in_flight()), (3, 3));
///
/// // Five can never be free at once under a limit of four: no waiting.
/// let five = ManyPermits::new(&bulkhead, 5);
/// let refused = block_on(acquire(&five, &timer, Timestamp::MAX)).unwrap_err();
/// assert!(matches!(refused, AcquireError::Refused(AcquireManyError::ExceedsLimit { .. })));
/// # Ok::<(), tenlives_engine::ConfigError>(())
/// ```
#[derive(Debug)]
pub struct ManyPermits<'b, S: EventSink> {
    bulkhead: &'b Bulkhead<S>,
    n: u32,
}

impl<'b, S: EventSink> ManyPermits<'b, S> {
    /// `n` permits of `bulkhead`, all or none.
    pub fn new(bulkhead: &'b Bulkhead<S>, n: u32) -> Self {
        ManyPermits { bulkhead, n }
    }
}

impl<'b, S: EventSink> TryAdmit for ManyPermits<'b, S> {
    type Permit<'a>
        = BulkheadPermit<'b, S>
    where
        Self: 'a;
    type Refused = AcquireManyError;

    /// A full bulkhead is [`NotYet::Unknown`]; zero permits, or more than
    /// the limit in force, are [`NotYet::Never`].
    #[inline]
    fn poll_admit(
        &self,
        _now: Timestamp,
    ) -> Result<BulkheadPermit<'b, S>, NotYet<AcquireManyError>> {
        match self.bulkhead.try_acquire_many(self.n) {
            Ok(permit) => Ok(permit),
            Err(AcquireManyError::Full(_)) => Err(NotYet::Unknown),
            Err(refused) => Err(NotYet::Never(refused)),
        }
    }
}

impl<A: LimitAlgorithm, S: EventSink> TryAdmit for AdaptiveLimiter<A, S> {
    type Permit<'a>
        = AdaptivePermit<'a, A, S>
    where
        Self: 'a;
    type Refused = Infallible;

    #[inline]
    fn poll_admit(&self, now: Timestamp) -> Result<AdaptivePermit<'_, A, S>, NotYet<Infallible>> {
        self.try_acquire(now).map_err(|_| NotYet::Unknown)
    }
}

impl<S: EventSink> TryAdmit for CircuitBreaker<S> {
    type Permit<'a>
        = Permit<'a, S>
    where
        Self: 'a;
    type Refused = Infallible;

    /// Open: [`NotYet::At`] the end of the open duration. Forced open, or
    /// half-open with every probe slot taken: [`NotYet::Unknown`].
    #[inline]
    fn poll_admit(&self, now: Timestamp) -> Result<Permit<'_, S>, NotYet<Infallible>> {
        self.try_acquire(now)
            .map_err(|rejected| match rejected.retry_after() {
                Some(d) => NotYet::At(now.saturating_add(d)),
                None => NotYet::Unknown,
            })
    }
}

/// `n` tokens of a rate limiter, to wait for with [`acquire`]. The limiter
/// knows when they will be there, so the waiter sleeps exactly until then
/// (and tries again if another caller took them first).
///
/// ```
/// use core::time::Duration;
/// use futures::executor::block_on;
/// use tenlives_engine::rate::{Quota, RateLimiter};
/// use tenlives_engine::time::{Clock, Timestamp};
/// use tenlives_futures::{ManualTimer, Timer, Tokens, acquire};
///
/// let limiter = RateLimiter::new(Quota::per_second(10)?.with_burst(1)?);
/// let timer = ManualTimer::new();
/// let one = Tokens::new(&limiter, 1);
/// limiter.check(timer.clock().now()).unwrap(); // the burst is spent
/// let mut wait = core::pin::pin!(acquire(&one, &timer, Timestamp::from_nanos(1_000_000_000)));
/// let waker = futures::task::noop_waker();
/// let mut cx = core::task::Context::from_waker(&waker);
/// assert!(wait.as_mut().poll(&mut cx).is_pending());
/// timer.advance(Duration::from_millis(100)); // the next token is due
/// assert!(wait.as_mut().poll(&mut cx).is_ready());
/// # use core::future::Future;
/// # Ok::<(), tenlives_engine::ConfigError>(())
/// ```
#[derive(Debug)]
pub struct Tokens<'b, S: EventSink = tenlives_engine::events::NoSink> {
    limiter: &'b RateLimiter<S>,
    n: u32,
}

impl<'b, S: EventSink> Tokens<'b, S> {
    /// `n` tokens of `limiter`.
    pub fn new(limiter: &'b RateLimiter<S>, n: u32) -> Self {
        Tokens { limiter, n }
    }
}

impl<S: EventSink> TryAdmit for Tokens<'_, S> {
    type Permit<'a>
        = ()
    where
        Self: 'a;
    type Refused = RateLimitError;

    /// Not enough tokens is [`NotYet::At`] the instant they will be there;
    /// more than the burst (without debt) is [`NotYet::Never`].
    #[inline]
    fn poll_admit(&self, now: Timestamp) -> Result<(), NotYet<RateLimitError>> {
        match self.limiter.check_n(self.n, now) {
            Ok(()) => Ok(()),
            Err(RateLimitError::Limited(l)) => Err(NotYet::At(l.earliest())),
            Err(refused) => Err(NotYet::Never(refused)),
        }
    }
}

impl<S: EventSink> TryAdmit for RateLimiter<S> {
    type Permit<'a>
        = ()
    where
        Self: 'a;
    type Refused = Infallible;

    /// One token: [`NotYet::At`] the instant the next one is due.
    #[inline]
    fn poll_admit(&self, now: Timestamp) -> Result<(), NotYet<Infallible>> {
        self.check(now).map_err(|l| NotYet::At(l.earliest()))
    }
}

/// Why [`acquire`] gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AcquireError<E> {
    /// The deadline came (an attempt at the deadline failed too), or the
    /// policy said it could not admit before `retry_at`, which is past the
    /// deadline.
    TimedOut {
        /// When the policy said to try again, if it knew.
        retry_at: Option<Timestamp>,
    },
    /// The backoff schedule ran out of retries before the deadline.
    RetriesExhausted,
    /// The policy refused for good ([`NotYet::Never`]).
    Refused(E),
}

impl<E: fmt::Display> fmt::Display for AcquireError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcquireError::TimedOut { retry_at: None } => {
                f.write_str("no capacity was free before the deadline")
            }
            AcquireError::TimedOut { retry_at: Some(t) } => write!(
                f,
                "no capacity before the deadline: the earliest is at {} ns",
                t.as_nanos()
            ),
            AcquireError::RetriesExhausted => {
                f.write_str("no capacity was free within the backoff schedule's retries")
            }
            AcquireError::Refused(e) => write!(f, "refused: {e}"),
        }
    }
}

#[cfg(feature = "std")]
impl<E: fmt::Debug + fmt::Display> std::error::Error for AcquireError<E> {}

/// The schedule [`acquire`] retries on when the policy cannot say when
/// capacity frees: 1 ms, doubling, capped at 50 ms, never ending.
pub fn default_backoff() -> Backoff {
    match Backoff::exponential(Duration::from_millis(1), 2.0, Duration::from_millis(50)) {
        Ok(backoff) => backoff,
        // The arguments are constants that pass validation.
        Err(_) => unreachable!("a valid schedule"),
    }
}

pin_project! {
    /// Waits for a [`TryAdmit`] policy to admit, until a deadline. Made by
    /// [`acquire`] and [`acquire_with`].
    ///
    /// It holds nothing while it waits except, between attempts, one sleep
    /// of its timer; dropping it at any point leaves nothing behind. It
    /// allocates nothing itself (a timer's sleep may).
    #[must_use = "futures do nothing unless polled"]
    pub struct Acquire<'a, P, T>
    where
        P: TryAdmit,
        P: ?Sized,
        T: Timer,
    {
        policy: &'a P,
        timer: &'a T,
        deadline: Timestamp,
        backoff: BackoffIter,
        #[pin]
        sleep: Option<T::Sleep<'a>>,
    }
}

/// Waits until `policy` admits, or `deadline` (on `timer`'s clock) passes,
/// retrying on [`default_backoff`] when the policy cannot say when. See the
/// [module documentation](self) for the rules.
///
/// The first attempt happens on the first poll, never at creation; the last
/// one happens at the deadline. A deadline already past means one attempt.
///
/// ```
/// use core::pin::pin;
/// use core::task::{Context, Poll};
/// use futures::task::noop_waker;
/// use tenlives_engine::bulkhead::Bulkhead;
/// use tenlives_engine::time::{Clock, Timestamp};
/// use tenlives_futures::{AcquireError, ManualTimer, Timer, acquire};
///
/// let bulkhead = Bulkhead::new(1)?;
/// let timer = ManualTimer::new();
/// let waker = noop_waker();
/// let mut cx = Context::from_waker(&waker);
/// let held = bulkhead.try_acquire().unwrap();
///
/// // Waiting until 10 ms for a permit that stays taken: timed out at 10 ms.
/// let deadline = Timestamp::from_nanos(10_000_000);
/// let mut waiter = pin!(acquire(&bulkhead, &timer, deadline));
/// let result = loop {
///     if let Poll::Ready(result) = waiter.as_mut().poll(&mut cx) {
///         break result;
///     }
///     timer.advance_to_next().expect("the waiter sleeps on the timer");
/// };
/// assert_eq!(result.unwrap_err(), AcquireError::TimedOut { retry_at: None });
/// assert_eq!(timer.now(), deadline, "the last attempt was at the deadline");
///
/// // A permit released while a waiter sleeps is taken at its next attempt.
/// let mut waiter = pin!(acquire(&bulkhead, &timer, Timestamp::MAX));
/// assert!(waiter.as_mut().poll(&mut cx).is_pending());
/// drop(held);
/// timer.advance_to_next();
/// assert!(matches!(waiter.as_mut().poll(&mut cx), Poll::Ready(Ok(_))));
/// # Ok::<(), tenlives_engine::ConfigError>(())
/// ```
pub fn acquire<'a, P, T>(policy: &'a P, timer: &'a T, deadline: Timestamp) -> Acquire<'a, P, T>
where
    P: TryAdmit + ?Sized,
    T: Timer,
{
    acquire_with(policy, timer, deadline, default_backoff().iter(0))
}

/// [`acquire`] with your own backoff schedule, e.g. a jittered one seeded
/// per waiter (`Backoff::decorrelated_jitter(..)?.iter(seed)`) so that many
/// waiters do not retry in step. A schedule that ends
/// ([`with_max_retries`](Backoff::with_max_retries)) makes the waiter give
/// up with [`AcquireError::RetriesExhausted`] when it runs out.
pub fn acquire_with<'a, P, T>(
    policy: &'a P,
    timer: &'a T,
    deadline: Timestamp,
    backoff: BackoffIter,
) -> Acquire<'a, P, T>
where
    P: TryAdmit + ?Sized,
    T: Timer,
{
    Acquire {
        policy,
        timer,
        deadline,
        backoff,
        sleep: None,
    }
}

impl<'a, P, T> Future for Acquire<'a, P, T>
where
    P: TryAdmit + ?Sized,
    T: Timer,
{
    type Output = Result<P::Permit<'a>, AcquireError<P::Refused>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // Each round either returns or starts a sleep until a strictly later
        // instant than the attempt; a sleep that is already over (a real
        // clock moved past it) gives another round. So the loop ends once
        // the deadline is reached, and never spins on one instant.
        loop {
            if let Some(sleep) = this.sleep.as_mut().as_pin_mut() {
                if sleep.poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.sleep.set(None);
            }
            let now = this.timer.clock().now();
            let retry_at = match this.policy.poll_admit(now) {
                Ok(permit) => return Poll::Ready(Ok(permit)),
                Err(NotYet::Never(refused)) => {
                    return Poll::Ready(Err(AcquireError::Refused(refused)));
                }
                Err(NotYet::At(t)) if t > now => {
                    if t > *this.deadline {
                        return Poll::Ready(Err(AcquireError::TimedOut { retry_at: Some(t) }));
                    }
                    t
                }
                // `At` an instant already reached would retry at once
                // forever; treat it as `Unknown`.
                Err(NotYet::At(_) | NotYet::Unknown) => {
                    if now >= *this.deadline {
                        return Poll::Ready(Err(AcquireError::TimedOut { retry_at: None }));
                    }
                    let Some(delay) = this.backoff.next() else {
                        return Poll::Ready(Err(AcquireError::RetriesExhausted));
                    };
                    // At least 1 ns, so that time must pass between attempts.
                    let delay = delay.max(Duration::from_nanos(1));
                    now.saturating_add(delay).min(*this.deadline)
                }
            };
            this.sleep.set(Some(this.timer.sleep_until(retry_at)));
        }
    }
}

impl<P, T> fmt::Debug for Acquire<'_, P, T>
where
    P: TryAdmit + ?Sized,
    T: Timer,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("deadline", &self.deadline)
            .field("sleeping", &self.sleep.is_some())
            .finish_non_exhaustive()
    }
}
