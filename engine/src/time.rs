//! Time as a value.
//!
//! The engine never reads a clock. Every operation whose outcome depends on
//! time takes `now: Timestamp`, a count of nanoseconds since an arbitrary
//! monotonic origin chosen by whoever owns the clock. That makes every
//! decision reproducible under virtual time ([`ManualClock`]) and lets an
//! adapter read the clock once per request and share the reading across all
//! the policies of a stack.
//!
//! Clocks: [`ManualClock`] (tests, simulations), `MonotonicClock` (feature
//! `std`: `std::time::Instant`, 32-40 ns a reading), and with feature
//! `quanta` `TscClock` (the CPU's time-stamp counter, about 15 ns) and
//! `RecentClock` (one load of a time an upkeep thread refreshes, about 1 ns,
//! at a resolution you choose). All are monotonic; `docs/clocks-and-timers.md`
//! compares them.

use core::time::Duration;

use crate::error::ConfigError;
use crate::sync::{AtomicU64, Ordering};

#[cfg(all(feature = "quanta", not(tenlives_loom)))]
mod fast;
#[cfg(all(feature = "quanta", not(tenlives_loom)))]
pub use fast::{DEFAULT_RECENT_RESOLUTION, RecentClock, TscClock};

/// A point in time: nanoseconds since an arbitrary monotonic origin.
///
/// Only differences between two timestamps from the same clock mean anything.
/// All arithmetic saturates: a timestamp never wraps around.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The origin of the clock.
    pub const ZERO: Timestamp = Timestamp(0);
    /// The latest representable instant (about 584 years after the origin).
    pub const MAX: Timestamp = Timestamp(u64::MAX);

    /// A timestamp `nanos` nanoseconds after the origin.
    #[inline]
    pub const fn from_nanos(nanos: u64) -> Self {
        Timestamp(nanos)
    }

    /// Nanoseconds since the origin.
    #[inline]
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// This instant moved `d` later, saturating at [`Timestamp::MAX`].
    #[inline]
    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(saturating_nanos(d)))
    }

    /// How long after `earlier` this instant is; zero if it is not later.
    #[inline]
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// A `Duration` in nanoseconds, saturating at `u64::MAX` (584 years).
#[inline]
pub(crate) fn saturating_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A `Duration` in nanoseconds, or [`ConfigError::DurationOverflow`] when it
/// does not fit in 64 bits.
pub(crate) fn checked_nanos(field: &'static str, d: Duration) -> Result<u64, ConfigError> {
    u64::try_from(d.as_nanos()).map_err(|_| ConfigError::DurationOverflow { field })
}

/// A source of [`Timestamp`]s. Implementations must be monotonic: a later
/// call never returns an earlier instant.
pub trait Clock {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

impl<C: Clock + ?Sized> Clock for &C {
    #[inline]
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}

/// A clock that moves only when told to: for tests and simulations.
///
/// It is shared by reference between threads; `advance` is atomic.
///
/// ```
/// use core::time::Duration;
/// use tenlives_engine::time::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// clock.advance(Duration::from_millis(5));
/// assert_eq!(clock.now().as_nanos(), 5_000_000);
/// ```
#[derive(Debug, Default)]
pub struct ManualClock {
    // Nanoseconds since the origin. Only ever grows.
    nanos: AtomicU64,
}

impl ManualClock {
    /// A clock standing at its origin.
    pub fn new() -> Self {
        Self::starting_at(Timestamp::ZERO)
    }

    /// A clock standing at `start`.
    pub fn starting_at(start: Timestamp) -> Self {
        ManualClock {
            nanos: AtomicU64::new(start.0),
        }
    }

    /// Moves the clock `d` forward (saturating) and returns the new instant.
    pub fn advance(&self, d: Duration) -> Timestamp {
        let step = saturating_nanos(d);
        // ordering: Relaxed; the clock value is the only data it carries, and
        // fetch_update keeps every advance (no lost update between threads).
        let prev = self
            .nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(step))
            })
            .unwrap_or_else(|n| n);
        Timestamp(prev.saturating_add(step))
    }

    /// Moves the clock to `t` if `t` is later than now (it never goes back),
    /// and returns the new instant.
    pub fn advance_to(&self, t: Timestamp) -> Timestamp {
        // ordering: Relaxed; see `advance`.
        Timestamp(self.nanos.fetch_max(t.0, Ordering::Relaxed).max(t.0))
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now(&self) -> Timestamp {
        // ordering: Relaxed; a reading carries no other data with it.
        Timestamp(self.nanos.load(Ordering::Relaxed))
    }
}

/// The operating system's monotonic clock, measured from the moment this
/// value was created.
#[cfg(feature = "std")]
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    origin: std::time::Instant,
}

#[cfg(feature = "std")]
impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        MonotonicClock {
            origin: std::time::Instant::now(),
        }
    }

    /// The `std` instant that [`Timestamp::ZERO`] stands for.
    pub fn origin(&self) -> std::time::Instant {
        self.origin
    }
}

#[cfg(feature = "std")]
impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "std")]
impl Clock for MonotonicClock {
    #[inline]
    fn now(&self) -> Timestamp {
        Timestamp(saturating_nanos(self.origin.elapsed()))
    }
}

#[cfg(all(test, not(tenlives_loom)))]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(
            Timestamp::MAX.saturating_add(Duration::from_secs(1)),
            Timestamp::MAX
        );
        assert_eq!(
            Timestamp::ZERO.saturating_duration_since(Timestamp::from_nanos(9)),
            Duration::ZERO
        );
        assert_eq!(
            Timestamp::from_nanos(10).saturating_duration_since(Timestamp::from_nanos(3)),
            Duration::from_nanos(7)
        );
        assert_eq!(
            Timestamp::ZERO.saturating_add(Duration::MAX),
            Timestamp::MAX
        );
    }

    #[test]
    fn manual_clock_never_goes_back() {
        let c = ManualClock::starting_at(Timestamp::from_nanos(100));
        c.advance_to(Timestamp::from_nanos(50));
        assert_eq!(c.now().as_nanos(), 100);
        c.advance_to(Timestamp::from_nanos(150));
        assert_eq!(c.now().as_nanos(), 150);
        assert_eq!(c.advance(Duration::MAX), Timestamp::MAX);
    }

    #[test]
    fn checked_nanos_rejects_overflow() {
        assert_eq!(
            checked_nanos("x", Duration::from_secs(1)),
            Ok(1_000_000_000)
        );
        assert_eq!(
            checked_nanos("x", Duration::MAX),
            Err(ConfigError::DurationOverflow { field: "x" })
        );
    }

    #[cfg(feature = "std")]
    #[test]
    fn monotonic_clock_is_monotonic() {
        let c = MonotonicClock::new();
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
    }
}
