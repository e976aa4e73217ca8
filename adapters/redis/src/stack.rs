//! The stack stage (feature `stack`): the fleet limiters as admission
//! stages of `tenlives-tokio`, so that they join its `StackLayer` (through
//! `StackBuilder::admission`, e.g. `(Arc::clone(&fleet), (Some(breaker),
//! None, Some(bulkhead)))` with the fleet limit in front) and its
//! `AdmissionLayer`.
//!
//! - [`FleetRateLimiter`]: a token is spent on admission and nothing is
//!   held (`HOLDS` is false: the stack keeps no reference and classifies
//!   nothing for it). A refusal is
//!   [`RejectionReason::RateLimited`] with the limiter's
//!   [`retry_after`](FleetRateLimiter::retry_after) (the refresh interval
//!   for an exhausted fleet quota, the engine limiter's wait otherwise), so
//!   the stack's retry waits at least that long.
//! - [`FleetSemaphore`]: the permit ([`OwnedFleetPermit`]) is held until the
//!   call ends, is cancelled or panics. A refusal is
//!   [`RejectionReason::ConcurrencyLimit`] with the refresh interval as
//!   `retry_after`.
//!
//! Neither reads the stack's clock (`needs_time` is false: the limiters keep
//! their own), and each admission is the limiter's own `try_acquire`: no
//! allocation, no lock, no network.

use tenlives_engine::breaker::Outcome;
use tenlives_engine::time::Timestamp;
use tenlives_tokio::{Admission, Rejection, RejectionReason};

use crate::limiter::FleetRateLimiter;
use crate::semaphore::{FleetSemaphore, OwnedFleetPermit};

impl Admission for FleetRateLimiter {
    type Token = ();
    const HOLDS: bool = false;
    const NAME: &'static str = "fleet_rate_limit";

    #[inline]
    fn needs_time(&self) -> bool {
        false
    }

    #[inline]
    fn admit(&self, _now: Timestamp) -> Result<(), Rejection> {
        match self.try_acquire() {
            Ok(_) => Ok(()),
            Err(refused) => Err(Rejection::new(
                RejectionReason::RateLimited,
                Some(self.retry_after(&refused)),
            )),
        }
    }

    #[inline]
    fn complete(&self, _token: (), _outcome: Outcome, _admitted_at: Timestamp, _now: Timestamp) {}

    #[inline]
    fn release(&self, _token: ()) {}
}

impl Admission for FleetSemaphore {
    type Token = OwnedFleetPermit;
    const NAME: &'static str = "fleet_concurrency_limit";

    #[inline]
    fn needs_time(&self) -> bool {
        false
    }

    #[inline]
    fn admit(&self, _now: Timestamp) -> Result<OwnedFleetPermit, Rejection> {
        self.try_acquire_owned().map_err(|_| {
            let s = self.stats();
            Rejection::new(
                RejectionReason::ConcurrencyLimit {
                    in_flight: s.in_use,
                    limit: s.leased,
                },
                Some(self.retry_after()),
            )
        })
    }

    #[inline]
    fn complete(
        &self,
        permit: OwnedFleetPermit,
        _outcome: Outcome,
        _admitted_at: Timestamp,
        _now: Timestamp,
    ) {
        drop(permit);
    }

    #[inline]
    fn release(&self, permit: OwnedFleetPermit) {
        drop(permit);
    }
}
