//! All-or-nothing acquisition across several limiters.

use core::fmt;

use crate::events::EventSink;
use crate::time::Timestamp;

use super::error::RateLimitError;
use super::limiter::RateLimiter;

/// Something that hands out tokens and can take them back: a
/// [`RateLimiter`], or one key of a [`KeyedRateLimiter`](super::KeyedRateLimiter)
/// (see [`KeyedRateLimiter::source`](super::KeyedRateLimiter::source)).
pub trait TokenSource {
    /// Whether `n` tokens are available now, taking nothing.
    ///
    /// # Errors
    ///
    /// As [`RateLimiter::check_n`].
    fn peek(&self, n: u32, now: Timestamp) -> Result<(), RateLimitError>;

    /// Takes `n` tokens, all or none.
    ///
    /// # Errors
    ///
    /// As [`RateLimiter::check_n`].
    fn take(&self, n: u32, now: Timestamp) -> Result<(), RateLimitError>;

    /// Gives back `n` tokens taken by [`take`](Self::take).
    fn give_back(&self, n: u32);
}

impl<S: EventSink> TokenSource for RateLimiter<S> {
    fn peek(&self, n: u32, now: Timestamp) -> Result<(), RateLimitError> {
        self.peek_n(n, now)
    }

    fn take(&self, n: u32, now: Timestamp) -> Result<(), RateLimitError> {
        self.check_n(n, now)
    }

    fn give_back(&self, n: u32) {
        self.refund(n);
    }
}

/// Which limiter refused an [`acquire_all`], and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllOrNothingError {
    /// Position of the refusing limiter in the list.
    pub index: usize,
    /// Its refusal.
    pub error: RateLimitError,
}

impl fmt::Display for AllOrNothingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "limiter #{} refused: {}", self.index, self.error)
    }
}

#[cfg(feature = "std")]
impl std::error::Error for AllOrNothingError {}

/// Takes each `(source, n)` pair's tokens, or none of them.
///
/// The guarantee, precisely:
/// - When it returns `Ok`, every source has been charged its cost once.
/// - When it returns `Err`, no source keeps a charge: the ones charged before
///   the refusing one are refunded before it returns.
/// - It first peeks at every source and gives up without charging anything
///   when one of them would refuse; charges happen only when all looked
///   available. A concurrent caller may still take tokens between the peek
///   and the charge, so a refusal can come after some charges.
/// - What another thread can see: while an attempt that ends in refusal is in
///   flight, the tokens it charged to the earlier sources are taken, so a
///   concurrent request on one of those sources can be refused because of
///   them. A refund moves the source's theoretical arrival time back by
///   exactly what was charged, which commutes with other bookings: once the
///   attempt returns, each source is as if the charge had never been made,
///   for every request stamped at or after `now`. (Two exceptions, both
///   within the burst, L3: a concurrent request stamped after the charged
///   tokens' time found the bucket full and restarted the state, so the
///   refund gives back tokens that had already refilled; and a request
///   stamped before `now` sees the state restarted at `now` if the charge
///   found a full bucket.)
///
/// It never waits and never allocates.
///
/// ```
/// use tenlives_engine::rate::{acquire_all, Quota, RateLimiter, TokenSource};
/// use tenlives_engine::time::Timestamp;
///
/// let user = RateLimiter::new(Quota::per_second(2)?);
/// let global = RateLimiter::new(Quota::per_second(100)?);
/// let now = Timestamp::ZERO;
/// let both: [(&dyn TokenSource, u32); 2] = [(&user, 1), (&global, 1)];
/// assert!(acquire_all(&both, now).is_ok());
/// assert!(acquire_all(&both, now).is_ok());
/// // The user is out of tokens: the global limiter is not charged either.
/// let refused = acquire_all(&both, now).unwrap_err();
/// assert_eq!(refused.index, 0);
/// assert_eq!(global.available(now), 98);
/// # Ok::<(), tenlives_engine::ConfigError>(())
/// ```
///
/// # Errors
///
/// The first refusal met, with the index of the source that refused.
pub fn acquire_all(
    requests: &[(&dyn TokenSource, u32)],
    now: Timestamp,
) -> Result<(), AllOrNothingError> {
    for (index, (source, n)) in requests.iter().enumerate() {
        source
            .peek(*n, now)
            .map_err(|error| AllOrNothingError { index, error })?;
    }
    for (index, (source, n)) in requests.iter().enumerate() {
        if let Err(error) = source.take(*n, now) {
            for (charged, m) in &requests[..index] {
                charged.give_back(*m);
            }
            return Err(AllOrNothingError { index, error });
        }
    }
    Ok(())
}
