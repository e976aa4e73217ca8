//! What a guarded future needs from a policy: admit a call, complete it with
//! an outcome, and (by dropping the permit) abandon it.
//!
//! [`Admission`] is implemented here for the four engine primitives that
//! admit calls one at a time:
//!
//! | policy | admit | complete with `Success` / `Failure` / `Ignored` | abandon (drop) |
//! |---|---|---|---|
//! | [`CircuitBreaker`] | `try_acquire_with(now)`: no clock read when closed without a slow-call rule | `record_with(outcome, now)`: a clock read only where a rule needs the end time | permit released, nothing recorded |
//! | [`Bulkhead`] | `try_acquire()`, no clock read | permit released, no clock read | permit released |
//! | [`AdaptiveLimiter`] | `try_acquire(now)` | `success(now)` (round-trip time) / `dropped(now)` / released without a sample | released without a sample |
//! | [`Throttle`] | `try_admit(now)` | `accepted(now)` / `refused(now)` / not counted | not counted |
//!
//! Every permit of the engine gives back what it holds when dropped, so
//! "abandon" needs no method: a guarded future that is cancelled, or whose
//! inner future panics, drops its permit.

use tenlives_engine::adaptive::{AdaptiveLimiter, AdaptivePermit, LimitAlgorithm};
use tenlives_engine::breaker::{CircuitBreaker, Outcome, Permit, Rejected};
use tenlives_engine::bulkhead::{Bulkhead, BulkheadFull, BulkheadPermit};
use tenlives_engine::events::EventSink;
use tenlives_engine::throttle::{Throttle, ThrottleTicket, Throttled};
use tenlives_engine::time::{Clock, Timestamp};

/// A policy that admits calls one at a time and learns how they ended.
///
/// Implement it for your own policy to guard futures with it; the methods
/// are called once per call, with static dispatch.
pub trait Admission {
    /// What an admitted call holds while it runs. Dropping it must give
    /// back whatever it holds (this is how cancellation and panics release).
    type Permit<'a>
    where
        Self: 'a;
    /// Why a call was not admitted.
    type Rejected;

    /// Admits a call now, or says why not. Read `clock` only if the decision
    /// needs the time.
    fn admit<C: Clock>(&self, clock: &C) -> Result<Self::Permit<'_>, Self::Rejected>;

    /// Reports that the call holding `permit` ended with `outcome`. Read
    /// `clock` only if the policy needs the time of the end.
    fn complete<C: Clock>(permit: Self::Permit<'_>, outcome: Outcome, clock: &C);
}

impl<S: EventSink> Admission for CircuitBreaker<S> {
    type Permit<'a>
        = Permit<'a, S>
    where
        Self: 'a;
    type Rejected = Rejected;

    #[inline]
    fn admit<C: Clock>(&self, clock: &C) -> Result<Permit<'_, S>, Rejected> {
        self.try_acquire_with(|| clock.now())
    }

    #[inline]
    fn complete<C: Clock>(permit: Permit<'_, S>, outcome: Outcome, clock: &C) {
        permit.record_with(outcome, || clock.now());
    }
}

impl<S: EventSink> Admission for Bulkhead<S> {
    type Permit<'a>
        = BulkheadPermit<'a, S>
    where
        Self: 'a;
    type Rejected = BulkheadFull;

    #[inline]
    fn admit<C: Clock>(&self, _clock: &C) -> Result<BulkheadPermit<'_, S>, BulkheadFull> {
        self.try_acquire()
    }

    #[inline]
    fn complete<C: Clock>(permit: BulkheadPermit<'_, S>, _outcome: Outcome, _clock: &C) {
        drop(permit);
    }
}

impl<A: LimitAlgorithm, S: EventSink> Admission for AdaptiveLimiter<A, S> {
    type Permit<'a>
        = AdaptivePermit<'a, A, S>
    where
        Self: 'a;
    type Rejected = BulkheadFull;

    #[inline]
    fn admit<C: Clock>(&self, clock: &C) -> Result<AdaptivePermit<'_, A, S>, BulkheadFull> {
        self.try_acquire(clock.now())
    }

    /// `Success` reports the round-trip time, `Failure` reports a dropped
    /// call (a congestion signal: the dependency timed out or refused), and
    /// `Ignored` releases the permit without a sample.
    #[inline]
    fn complete<C: Clock>(permit: AdaptivePermit<'_, A, S>, outcome: Outcome, clock: &C) {
        match outcome {
            Outcome::Success => permit.success(clock.now()),
            Outcome::Failure => permit.dropped(clock.now()),
            Outcome::Ignored => drop(permit),
        }
    }
}

impl<S: EventSink> Admission for Throttle<S> {
    type Permit<'a>
        = ThrottleTicket<'a, S>
    where
        Self: 'a;
    type Rejected = Throttled;

    #[inline]
    fn admit<C: Clock>(&self, clock: &C) -> Result<ThrottleTicket<'_, S>, Throttled> {
        self.try_admit(clock.now())
    }

    /// `Success` counts the request as accepted by the backend, `Failure` as
    /// refused by it, and `Ignored` does not count it.
    #[inline]
    fn complete<C: Clock>(ticket: ThrottleTicket<'_, S>, outcome: Outcome, clock: &C) {
        match outcome {
            Outcome::Success => ticket.accepted(clock.now()),
            Outcome::Failure => ticket.refused(clock.now()),
            Outcome::Ignored => drop(ticket),
        }
    }
}

/// How a guarded future turns its inner future's output into an
/// [`Outcome`].
///
/// Every `FnMut(&T) -> Outcome` closure or function is a classifier;
/// [`Unclassified`] is the one for policies that ignore outcomes.
pub trait Classify<T> {
    /// The outcome `output` stands for.
    fn classify(&mut self, output: &T) -> Outcome;
}

impl<T, K: FnMut(&T) -> Outcome> Classify<T> for K {
    #[inline]
    fn classify(&mut self, output: &T) -> Outcome {
        self(output)
    }
}

/// The classifier of policies that ignore how a call ended (a
/// [`Bulkhead`]): every output is [`Outcome::Ignored`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unclassified;

impl<T> Classify<T> for Unclassified {
    #[inline]
    fn classify(&mut self, _output: &T) -> Outcome {
        Outcome::Ignored
    }
}

/// The clock of policies that never read the time (a [`Bulkhead`]): it
/// always reads [`Timestamp::ZERO`].
///
/// Do not hand it to a policy that does read the time: every call would
/// happen at the same instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Untimed;

impl Clock for Untimed {
    #[inline]
    fn now(&self) -> Timestamp {
        Timestamp::ZERO
    }
}
