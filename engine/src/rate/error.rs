//! Why a rate limiter said no.

use core::fmt;
use core::num::NonZeroU64;
use core::time::Duration;

use crate::time::Timestamp;

/// Not enough tokens yet. Carries when there will be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimited {
    now: Timestamp,
    /// Later than `now`, so never zero: the niche lets `Result<(),
    /// RateLimited>` travel in two registers.
    earliest: NonZeroU64,
}

impl RateLimited {
    #[inline(always)]
    pub(crate) fn new(now: Timestamp, earliest: Timestamp) -> Self {
        RateLimited {
            now,
            earliest: NonZeroU64::new(earliest.as_nanos()).unwrap_or(NonZeroU64::MIN),
        }
    }

    /// The earliest instant at which the request would pass if nobody else
    /// took tokens meanwhile.
    pub fn earliest(&self) -> Timestamp {
        Timestamp::from_nanos(self.earliest.get())
    }

    /// How long after the refused attempt that is: what an HTTP server puts
    /// in `Retry-After`. Always `Some` for this error (a wait always helps);
    /// an `Option` like [`RateLimitError::retry_after`] and the circuit
    /// breaker's `Rejected::retry_after`, so that all three read alike.
    pub fn retry_after(&self) -> Option<Duration> {
        Some(self.wait())
    }

    /// The wait itself, as a plain `Duration`: [`retry_after`](Self::retry_after)
    /// without the `Option`, for callers holding this error.
    pub fn wait(&self) -> Duration {
        self.earliest().saturating_duration_since(self.now)
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate limited; retry after {:?}", self.wait())
    }
}

/// A request for more tokens than the burst, which no wait could satisfy
/// (and the quota does not allow debt).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InsufficientCapacity {
    /// Tokens asked for.
    pub requested: u32,
    /// The most the limiter ever has at once.
    pub burst: u32,
}

impl fmt::Display for InsufficientCapacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tokens requested, but the burst is {}: no wait would be long enough",
            self.requested, self.burst
        )
    }
}

/// Why a rate limiter refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateLimitError {
    /// Not yet: retry later.
    Limited(RateLimited),
    /// Never: the request is larger than the burst.
    Insufficient(InsufficientCapacity),
    /// A keyed limiter met a new key with no room for it, under
    /// [`WhenFull::Reject`](super::WhenFull::Reject).
    TableFull,
}

impl RateLimitError {
    /// When to retry, or `None` when the limiter cannot say (a full keyed
    /// table) or no wait would help (more than the burst).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RateLimitError::Limited(l) => l.retry_after(),
            RateLimitError::Insufficient(_) | RateLimitError::TableFull => None,
        }
    }
}

impl From<RateLimited> for RateLimitError {
    fn from(l: RateLimited) -> Self {
        RateLimitError::Limited(l)
    }
}

impl From<InsufficientCapacity> for RateLimitError {
    fn from(i: InsufficientCapacity) -> Self {
        RateLimitError::Insufficient(i)
    }
}

impl fmt::Display for RateLimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateLimitError::Limited(l) => l.fmt(f),
            RateLimitError::Insufficient(i) => i.fmt(f),
            RateLimitError::TableFull => {
                f.write_str("the keyed rate limiter has no room for a new key")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for RateLimited {}
#[cfg(feature = "std")]
impl std::error::Error for InsufficientCapacity {}
#[cfg(feature = "std")]
impl std::error::Error for RateLimitError {}
