//! The errors the tower layers return.
//!
//! Every layer that can fail on its own returns [`TenlivesError<E>`], where
//! `E` is the wrapped service's error: the inner error passes through as
//! [`TenlivesError::Inner`], and what the layer decided itself has a variant
//! of its own. A [`Rejection`] says which policy refused the request and, when
//! it is known, how long to wait before trying again, so that an HTTP server
//! can answer `503` with a `Retry-After` header:
//!
//! ```
//! use std::time::Duration;
//! use tenlives_tokio::{Rejection, RejectionReason, TenlivesError};
//!
//! fn retry_after_header(err: &TenlivesError<std::io::Error>) -> Option<u64> {
//!     // Whole seconds, rounded up: the header has no fractions.
//!     err.retry_after().map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
//! }
//!
//! let open = TenlivesError::<std::io::Error>::Rejected(Rejection::new(
//!     RejectionReason::ConcurrencyLimit { in_flight: 8, limit: 8 },
//!     Some(Duration::from_millis(1500)),
//! ));
//! assert_eq!(retry_after_header(&open), Some(2));
//! assert!(open.is_rejected());
//! ```
//!
//! No variant allocates: the enum is a plain value, the inner error included.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use tenlives_engine::breaker::{self, RejectReason};
use tenlives_engine::bulkhead::BulkheadFull;
use tenlives_engine::queue::{self, Overload};
use tenlives_engine::rate::RateLimitError;
use tenlives_engine::throttle::Throttled;

/// Which policy refused a request, and the figures it decided on.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum RejectionReason {
    /// The circuit breaker refused: open, forced open, or half-open with every
    /// probe slot taken.
    CircuitBreaker(RejectReason),
    /// The concurrency limit (fixed or adaptive) was reached.
    ConcurrencyLimit {
        /// Calls in flight at the instant of the refusal.
        in_flight: u32,
        /// The limit in force at that instant.
        limit: u32,
    },
    /// The client-side throttle rejected the request locally.
    Throttled {
        /// The rejection probability at the time.
        probability: f64,
    },
    /// A rate limiter (direct or keyed) had not enough tokens; the
    /// rejection's `retry_after` says when it will.
    RateLimited,
    /// A request asked for more tokens than the rate limiter's burst: no wait
    /// would help.
    RateLimitExceedsBurst,
    /// A keyed rate limiter had no room for a new key (its `WhenFull` policy
    /// is `Reject`).
    RateLimitTableFull,
    /// The admission queue was full when the request arrived: refused
    /// without waiting.
    QueueFull,
    /// The request waited in the admission queue and was shed to make room
    /// for a newer one, by the queue's overload `policy`
    /// (`Overload::ShedOldest` or `Overload::ShedLowestPriority`).
    QueueShed {
        /// The policy that chose this request.
        policy: Overload,
    },
    /// No permit came within the admission queue's maximum wait.
    QueueTimeout {
        /// How long the request waited: the maximum wait.
        waited: Duration,
    },
    /// The request's class (from the layer's class function) is not one of
    /// the admission queue's: a configuration error, refused at once.
    QueueUnknownClass {
        /// The class the request was given.
        class: u16,
        /// How many classes the queue has.
        classes: u16,
    },
    /// The caller's deadline leaves less time than the work needs: refused
    /// at once by a `DeadlineLayer` (feature `http`).
    DeadlineTooShort {
        /// The time the caller had left.
        remaining: Duration,
        /// The least time the layer accepts.
        needed: Duration,
    },
}

/// A request refused before it reached the wrapped service.
///
/// Nothing was sent: retrying it is safe whatever the request does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rejection {
    reason: RejectionReason,
    retry_after: Option<Duration>,
}

impl Rejection {
    /// A rejection for `reason`, to be retried after `retry_after` if known.
    /// For admission policies of your own (see [`Admission`](crate::Admission)).
    pub fn new(reason: RejectionReason, retry_after: Option<Duration>) -> Self {
        Rejection {
            reason,
            retry_after,
        }
    }

    /// Which policy refused, and why.
    pub fn reason(&self) -> RejectionReason {
        self.reason
    }

    /// How long until the policy may admit the request, when it knows: the
    /// rest of an open breaker's open period. `None` when no time is known
    /// (a full concurrency limit frees up when a call ends, not at a time).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

/// What a response future that refused its request resolves to: the
/// rejection the first time; if polled again after that (which the `Future`
/// contract makes the caller's bug) it stays pending rather than invent a
/// result.
pub(crate) fn take_rejection<T, E>(
    slot: &mut Option<Rejection>,
) -> std::task::Poll<Result<T, TenlivesError<E>>> {
    match slot.take() {
        Some(rejection) => std::task::Poll::Ready(Err(TenlivesError::Rejected(rejection))),
        None => std::task::Poll::Pending,
    }
}

impl From<breaker::Rejected> for Rejection {
    fn from(r: breaker::Rejected) -> Self {
        Rejection::new(RejectionReason::CircuitBreaker(r.reason()), r.retry_after())
    }
}

impl From<BulkheadFull> for Rejection {
    fn from(full: BulkheadFull) -> Self {
        Rejection::new(
            RejectionReason::ConcurrencyLimit {
                in_flight: full.in_flight(),
                limit: full.limit(),
            },
            None,
        )
    }
}

impl From<RateLimitError> for Rejection {
    fn from(e: RateLimitError) -> Self {
        let reason = match e {
            RateLimitError::Limited(_) => RejectionReason::RateLimited,
            RateLimitError::Insufficient(_) => RejectionReason::RateLimitExceedsBurst,
            _ => RejectionReason::RateLimitTableFull,
        };
        Rejection::new(reason, e.retry_after())
    }
}

/// The rejection for a request the admission queue turned away, through a
/// layer whose requests wait at most `max_wait`.
///
/// A full queue and a shed request carry `retry_after = max_wait`: by then
/// every request waiting now has been served or has timed out (when every
/// caller of the queue waits at most `max_wait`, as through one layer). A
/// timed-out request carries none: the queue was full of slower work, and no
/// time is known.
pub(crate) fn queue_rejection(rejected: queue::Rejected, max_wait: Duration) -> Rejection {
    match rejected {
        queue::Rejected::QueueFull => Rejection::new(RejectionReason::QueueFull, Some(max_wait)),
        queue::Rejected::ShedOldest => Rejection::new(
            RejectionReason::QueueShed {
                policy: Overload::ShedOldest,
            },
            Some(max_wait),
        ),
        queue::Rejected::ShedLowPriority => Rejection::new(
            RejectionReason::QueueShed {
                policy: Overload::ShedLowestPriority,
            },
            Some(max_wait),
        ),
        queue::Rejected::TimedOut => {
            Rejection::new(RejectionReason::QueueTimeout { waited: max_wait }, None)
        }
        queue::Rejected::UnknownClass { class, classes } => {
            Rejection::new(RejectionReason::QueueUnknownClass { class, classes }, None)
        }
        // A kind the engine adds later: the closest known one.
        _ => Rejection::new(RejectionReason::QueueFull, Some(max_wait)),
    }
}

impl From<Throttled> for Rejection {
    fn from(t: Throttled) -> Self {
        Rejection::new(
            RejectionReason::Throttled {
                probability: t.probability(),
            },
            None,
        )
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            RejectionReason::CircuitBreaker(RejectReason::Open) => {
                f.write_str("rejected: the circuit breaker is open")?;
            }
            RejectionReason::CircuitBreaker(RejectReason::ForcedOpen) => {
                f.write_str("rejected: the circuit breaker is forced open")?;
            }
            RejectionReason::CircuitBreaker(RejectReason::HalfOpenFull) => f.write_str(
                "rejected: the circuit breaker is half-open and every probe slot is taken",
            )?,
            // A reason this version does not know (`RejectReason` may grow).
            RejectionReason::CircuitBreaker(other) => {
                write!(f, "rejected: the circuit breaker refused ({other:?})")?;
            }
            RejectionReason::ConcurrencyLimit { in_flight, limit } => write!(
                f,
                "rejected: the concurrency limit is reached ({in_flight} of {limit} in flight)"
            )?,
            RejectionReason::Throttled { probability } => write!(
                f,
                "rejected: throttled locally (rejecting {:.0} % of requests)",
                probability * 100.0
            )?,
            RejectionReason::RateLimited => f.write_str("rejected: rate limited")?,
            RejectionReason::RateLimitExceedsBurst => {
                f.write_str("rejected: more tokens asked for than the rate limiter's burst")?;
            }
            RejectionReason::RateLimitTableFull => {
                f.write_str("rejected: the keyed rate limiter has no room for a new key")?;
            }
            RejectionReason::QueueFull => f.write_str("rejected: the admission queue is full")?,
            RejectionReason::QueueShed { policy } => {
                let whom = match policy {
                    Overload::ShedLowestPriority => "its lowest-priority waiter",
                    _ => "its oldest waiter",
                };
                write!(f, "rejected: shed from the admission queue as {whom}")?;
            }
            RejectionReason::QueueTimeout { waited } => write!(
                f,
                "rejected: no permit within the admission queue's maximum wait ({waited:?})"
            )?,
            RejectionReason::QueueUnknownClass { class, classes } => write!(
                f,
                "rejected: class {class} does not exist; the admission queue has {classes}"
            )?,
            RejectionReason::DeadlineTooShort { remaining, needed } => write!(
                f,
                "rejected: the caller's deadline leaves {remaining:?}, less than the {needed:?} needed"
            )?,
        }
        if let Some(d) = self.retry_after {
            write!(f, "; retry after {d:?}")?;
        }
        Ok(())
    }
}

impl Error for Rejection {}

/// A failure that fault injection made up (see [`fault`](crate::fault)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InjectedFault {
    /// An error returned instead of calling the wrapped service.
    Error,
    /// The wrapped service was called and answered, but the answer was thrown
    /// away, as if the connection dropped before the response arrived.
    ConnectionDropped,
}

impl fmt::Display for InjectedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InjectedFault::Error => "injected fault: error",
            InjectedFault::ConnectionDropped => {
                "injected fault: the connection dropped before the response"
            }
        })
    }
}

impl Error for InjectedFault {}

/// The error of a tenlives layer wrapping a service whose error is `E`.
#[derive(Debug)]
#[non_exhaustive]
pub enum TenlivesError<E> {
    /// The wrapped service failed (in `call` or in `poll_ready`).
    Inner(E),
    /// A policy refused the request before it reached the wrapped service.
    Rejected(Rejection),
    /// No response within the timeout; the call in flight was dropped.
    TimedOut {
        /// The timeout that expired.
        after: Duration,
    },
    /// Fault injection made this failure up.
    Injected(InjectedFault),
}

impl<E> TenlivesError<E> {
    /// How long to wait before retrying, when a policy said so: see
    /// [`Rejection::retry_after`]. `None` for every other variant.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TenlivesError::Rejected(r) => r.retry_after(),
            _ => None,
        }
    }

    /// The rejection, if a policy refused the request.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            TenlivesError::Rejected(r) => Some(r),
            _ => None,
        }
    }

    /// Whether a policy refused the request (nothing was sent).
    pub fn is_rejected(&self) -> bool {
        matches!(self, TenlivesError::Rejected(_))
    }

    /// Whether the timeout expired.
    pub fn is_timeout(&self) -> bool {
        matches!(self, TenlivesError::TimedOut { .. })
    }

    /// The wrapped service's error, if it is one.
    pub fn inner(&self) -> Option<&E> {
        match self {
            TenlivesError::Inner(e) => Some(e),
            _ => None,
        }
    }

    /// The wrapped service's error, if it is one; `Err(self)` otherwise.
    pub fn into_inner(self) -> Result<E, Self> {
        match self {
            TenlivesError::Inner(e) => Ok(e),
            other => Err(other),
        }
    }

    /// The same error with the inner error mapped by `f`.
    pub fn map_inner<F>(self, f: impl FnOnce(E) -> F) -> TenlivesError<F> {
        match self {
            TenlivesError::Inner(e) => TenlivesError::Inner(f(e)),
            TenlivesError::Rejected(r) => TenlivesError::Rejected(r),
            TenlivesError::TimedOut { after } => TenlivesError::TimedOut { after },
            TenlivesError::Injected(fault) => TenlivesError::Injected(fault),
        }
    }
}

impl<E> TenlivesError<TenlivesError<E>> {
    /// One level instead of two, for separate tenlives layers stacked on each
    /// other (the combined [`StackLayer`](crate::StackLayer) has one level to
    /// begin with).
    ///
    /// ```
    /// use tenlives_tokio::TenlivesError;
    ///
    /// let nested: TenlivesError<TenlivesError<&str>> = TenlivesError::Inner(TenlivesError::Inner("boom"));
    /// assert!(matches!(nested.flatten(), TenlivesError::Inner("boom")));
    /// ```
    pub fn flatten(self) -> TenlivesError<E> {
        match self {
            TenlivesError::Inner(inner) => inner,
            TenlivesError::Rejected(r) => TenlivesError::Rejected(r),
            TenlivesError::TimedOut { after } => TenlivesError::TimedOut { after },
            TenlivesError::Injected(fault) => TenlivesError::Injected(fault),
        }
    }
}

impl<E> From<Rejection> for TenlivesError<E> {
    fn from(r: Rejection) -> Self {
        TenlivesError::Rejected(r)
    }
}

impl<E: fmt::Display> fmt::Display for TenlivesError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Transparent: the inner error says what happened.
            TenlivesError::Inner(e) => e.fmt(f),
            TenlivesError::Rejected(r) => r.fmt(f),
            TenlivesError::TimedOut { after } => write!(f, "no response within {after:?}"),
            TenlivesError::Injected(fault) => fault.fmt(f),
        }
    }
}

impl<E: Error + 'static> Error for TenlivesError<E> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            // Transparent, like `Display`: the inner error's own source.
            TenlivesError::Inner(e) => e.source(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_happened() {
        let open: TenlivesError<std::io::Error> = Rejection::new(
            RejectionReason::CircuitBreaker(RejectReason::Open),
            Some(Duration::from_secs(3)),
        )
        .into();
        assert_eq!(
            open.to_string(),
            "rejected: the circuit breaker is open; retry after 3s"
        );
        assert_eq!(open.retry_after(), Some(Duration::from_secs(3)));
        let full = TenlivesError::<std::io::Error>::Rejected(bulkhead_full().into());
        assert_eq!(
            full.to_string(),
            "rejected: the concurrency limit is reached (1 of 1 in flight)"
        );
        assert_eq!(full.retry_after(), None);
        let timed_out = TenlivesError::<std::io::Error>::TimedOut {
            after: Duration::from_millis(250),
        };
        assert_eq!(timed_out.to_string(), "no response within 250ms");
        assert!(timed_out.is_timeout() && !timed_out.is_rejected());
        let inner = TenlivesError::Inner(std::io::Error::other("refused"));
        assert_eq!(inner.to_string(), "refused");
        assert_eq!(inner.into_inner().unwrap().to_string(), "refused");
    }

    fn bulkhead_full() -> BulkheadFull {
        let b = tenlives_engine::bulkhead::Bulkhead::new(1).unwrap();
        let _held = b.try_acquire().unwrap();
        b.try_acquire().unwrap_err()
    }

    #[test]
    fn map_and_flatten_keep_the_variant() {
        let e: TenlivesError<TenlivesError<u8>> = TenlivesError::TimedOut {
            after: Duration::from_secs(1),
        };
        assert!(e.flatten().is_timeout());
        let e: TenlivesError<u8> = TenlivesError::Injected(InjectedFault::Error);
        assert!(matches!(
            e.map_inner(u16::from),
            TenlivesError::Injected(InjectedFault::Error)
        ));
        let e: TenlivesError<u8> = TenlivesError::Inner(7);
        assert!(matches!(e.map_inner(u16::from), TenlivesError::Inner(7u16)));
    }
}
