//! The futures form (feature `futures`): the fleet limiters as policies of
//! `tenlives-futures`, runtime-agnostic.
//!
//! [`FleetRateLimiter`], [`FleetSemaphore`] and one key of a
//! [`KeyedFleetLimiter`](crate::KeyedFleetLimiter) ([`ForKey`], from
//! [`KeyedFleetLimiter::for_key`](crate::KeyedFleetLimiter::for_key)) implement
//!
//! - [`Admission`]: `tenlives_futures::guard(&limiter, clock, classify,
//!   future)` runs `future` only if the limit admits it on its first poll,
//!   and refuses it at once (with the limiter's [`Refused`],
//!   [`SemaphoreRefused`] or [`KeyedRefused`]) otherwise; a semaphore permit
//!   is held until the future completes, is dropped or panics;
//! - [`TryAdmit`]: `tenlives_futures::acquire(&limiter, &timer, deadline)`
//!   waits for a token or permit on the caller's [`Timer`](tenlives_futures::Timer)
//!   (tokio, async-io, or a manual one), retrying after the limiter's
//!   `retry_after`.
//!
//! Neither reads the caller's clock for the decision (the limiters keep
//! their own monotonic clock) nor touches tokio: the request side of a
//! fleet limiter is atomics only. The background refresh that talks to
//! Redis is the one part that runs on tokio (the `redis` crate's connection
//! manager): start the limiter from inside a tokio runtime — one small
//! runtime on a side thread is enough — and use it from any executor.

use tenlives_engine::breaker::Outcome;
use tenlives_engine::time::{Clock, Timestamp};
use tenlives_futures::{Admission, NotYet, TryAdmit};

use crate::keyed::ForKey;
use crate::limiter::{Admitted, FleetRateLimiter, Refused};
use crate::semaphore::{FleetPermit, FleetSemaphore, SemaphoreRefused};
use crate::{KeyedAdmitted, KeyedRefused};

use core::hash::Hash;

impl Admission for FleetRateLimiter {
    /// How the request was admitted (a token is spent on admission:
    /// nothing is held).
    type Permit<'a> = Admitted;
    type Rejected = Refused;

    #[inline]
    fn admit<C: Clock>(&self, _clock: &C) -> Result<Admitted, Refused> {
        self.try_acquire()
    }

    #[inline]
    fn complete<C: Clock>(_permit: Admitted, _outcome: Outcome, _clock: &C) {}
}

impl TryAdmit for FleetRateLimiter {
    type Permit<'a> = Admitted;
    /// Waiting always may help: a token comes with the next lease, or
    /// (Redis unreachable) with the local limiter's refill.
    type Refused = core::convert::Infallible;

    #[inline]
    fn poll_admit(&self, now: Timestamp) -> Result<Admitted, NotYet<Self::Refused>> {
        self.try_acquire()
            .map_err(|r| NotYet::At(now.saturating_add(self.retry_after(&r))))
    }
}

impl Admission for FleetSemaphore {
    /// The fleet permit, held until the future ends.
    type Permit<'a> = FleetPermit<'a>;
    type Rejected = SemaphoreRefused;

    #[inline]
    fn admit<C: Clock>(&self, _clock: &C) -> Result<FleetPermit<'_>, SemaphoreRefused> {
        self.try_acquire()
    }

    #[inline]
    fn complete<C: Clock>(permit: FleetPermit<'_>, _outcome: Outcome, _clock: &C) {
        drop(permit);
    }
}

impl TryAdmit for FleetSemaphore {
    type Permit<'a> = FleetPermit<'a>;
    type Refused = core::convert::Infallible;

    /// A permit frees up when a call ends (here or anywhere in the fleet),
    /// not at a known time: try again after a backoff.
    #[inline]
    fn poll_admit(&self, _now: Timestamp) -> Result<FleetPermit<'_>, NotYet<Self::Refused>> {
        self.try_acquire().map_err(|_| NotYet::Unknown)
    }
}

impl<K> Admission for ForKey<'_, K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Permit<'a>
        = KeyedAdmitted
    where
        Self: 'a;
    type Rejected = KeyedRefused;

    #[inline]
    fn admit<C: Clock>(&self, _clock: &C) -> Result<KeyedAdmitted, KeyedRefused> {
        self.try_acquire()
    }

    #[inline]
    fn complete<C: Clock>(_permit: KeyedAdmitted, _outcome: Outcome, _clock: &C) {}
}

impl<K> TryAdmit for ForKey<'_, K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Permit<'a>
        = KeyedAdmitted
    where
        Self: 'a;
    type Refused = core::convert::Infallible;

    #[inline]
    fn poll_admit(&self, now: Timestamp) -> Result<KeyedAdmitted, NotYet<Self::Refused>> {
        self.try_acquire()
            .map_err(|r| NotYet::At(now.saturating_add(self.retry_after(&r))))
    }
}
