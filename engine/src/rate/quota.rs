//! Quotas and the exact emission interval.
//!
//! A quota of `rate` tokens per `period` emits one token every
//! `T = period / rate` nanoseconds. That interval is rarely a whole number of
//! nanoseconds (3 per second is 333 333 333.3 ns), so the limiter never
//! rounds it: it keeps `T = c / a` as a fraction in lowest terms (`a / c` is
//! `rate / period_ns` reduced) and compares times multiplied by `a`, in
//! 128-bit integers (see [`gcra`](super::gcra)). Nothing is rounded, so
//! nothing can accumulate into drift.

use core::fmt;
use core::num::{NonZeroU32, NonZeroU64};
use core::time::Duration;

use crate::error::ConfigError;
use crate::time::checked_nanos;

/// How many tokens a rate limiter hands out: `rate` per `period`, with up to
/// `burst` at once.
///
/// ```
/// use core::time::Duration;
/// use tenlives_engine::rate::Quota;
///
/// let q = Quota::per_second(100)?.with_burst(20)?;
/// assert_eq!(q.rate(), 100);
/// assert_eq!(q.burst(), 20);
/// assert_eq!(q.emission_interval(), Duration::from_millis(10));
///
/// // Rates that do not divide the period evenly are exact too.
/// let q = Quota::new(3, Duration::from_secs(1))?;
/// assert_eq!(q.tokens_by(Duration::from_secs(1_000_000)), 3_000_000);
///
/// assert!(Quota::per_second(0).is_err());
/// # Ok::<(), tenlives_engine::ConfigError>(())
/// ```
#[derive(Clone, Copy)]
pub struct Quota {
    rate: u32,
    period_ns: u64,
    /// At least 1 (the decision relies on it).
    burst: NonZeroU64,
    debt: bool,
    /// Tokens per `c` nanoseconds: `rate / gcd(rate, period_ns)`, at most
    /// `2^32 - 1` and at most `c`.
    a: u64,
    /// Nanoseconds per `a` tokens: `period_ns / gcd(rate, period_ns)`. The
    /// emission interval is exactly `c / a` ns.
    c: u64,
    /// `burst * c`: the burst's worth of time, in units of `1 / a` ns.
    burst_c: u128,
}

const fn gcd(mut x: u64, mut y: u64) -> u64 {
    while y != 0 {
        let t = x % y;
        x = y;
        y = t;
    }
    x
}

impl Quota {
    /// `rate` tokens every `period`, with a burst of `rate`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero rate, [`ConfigError::ZeroDuration`]
    /// for a zero period, [`ConfigError::DurationOverflow`] for a period
    /// beyond 584 years, and [`ConfigError::TooLarge`] when tokens would
    /// appear more often than once a nanosecond.
    pub fn new(rate: u32, period: Duration) -> Result<Self, ConfigError> {
        let Some(nonzero_rate) = NonZeroU32::new(rate) else {
            return Err(ConfigError::Zero { field: "rate" });
        };
        let period_ns = checked_nanos("period", period)?;
        if period_ns == 0 {
            return Err(ConfigError::ZeroDuration { field: "period" });
        }
        if u64::from(rate) > period_ns {
            return Err(ConfigError::TooLarge {
                field: "rate",
                value: u64::from(rate),
                max: period_ns,
            });
        }
        let g = gcd(u64::from(rate), period_ns);
        let (a, c) = (u64::from(rate) / g, period_ns / g);
        Ok(Quota {
            rate,
            period_ns,
            burst: NonZeroU64::from(nonzero_rate),
            debt: false,
            a,
            c,
            burst_c: u128::from(rate) * u128::from(c),
        })
    }

    /// `rate` tokens a second, with a burst of `rate`.
    ///
    /// # Errors
    ///
    /// As [`Quota::new`].
    pub fn per_second(rate: u32) -> Result<Self, ConfigError> {
        Quota::new(rate, Duration::from_secs(1))
    }

    /// `rate` tokens a minute, with a burst of `rate`.
    ///
    /// # Errors
    ///
    /// As [`Quota::new`].
    pub fn per_minute(rate: u32) -> Result<Self, ConfigError> {
        Quota::new(rate, Duration::from_secs(60))
    }

    /// `rate` tokens an hour, with a burst of `rate`.
    ///
    /// # Errors
    ///
    /// As [`Quota::new`].
    pub fn per_hour(rate: u32) -> Result<Self, ConfigError> {
        Quota::new(rate, Duration::from_secs(3600))
    }

    /// The same rate with at most `burst` tokens available at once.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] when `burst` is zero.
    pub fn with_burst(mut self, burst: u32) -> Result<Self, ConfigError> {
        let Some(nonzero) = NonZeroU32::new(burst) else {
            return Err(ConfigError::Zero { field: "burst" });
        };
        self.burst = NonZeroU64::from(nonzero);
        self.burst_c = u128::from(burst) * u128::from(self.c);
        Ok(self)
    }

    /// Debt mode: a request for more tokens than the burst is admitted when
    /// the bucket is full, and the tokens it overdraws push every later
    /// admission out by the time they take to refill. Without it (the
    /// default) such a request is refused with
    /// [`InsufficientCapacity`](super::InsufficientCapacity), because no
    /// amount of waiting would ever let it through.
    pub fn with_debt(mut self) -> Self {
        self.debt = true;
        self
    }

    /// Tokens per period.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// The period over which [`rate`](Self::rate) tokens appear.
    pub fn period(&self) -> Duration {
        Duration::from_nanos(self.period_ns)
    }

    /// The most tokens available at once.
    pub fn burst(&self) -> u32 {
        // Set only from a `u32`.
        self.burst.get() as u32
    }

    /// Whether oversized requests run into debt instead of being refused.
    pub fn allows_debt(&self) -> bool {
        self.debt
    }

    /// The time between two tokens, rounded down to a nanosecond (the
    /// limiter itself does not round; see the module documentation).
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.period_ns / u64::from(self.rate))
    }

    /// How many tokens appear during `elapsed`: exactly
    /// `floor(elapsed * rate / period)`, saturating.
    pub fn tokens_by(&self, elapsed: Duration) -> u64 {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        // Below 2^64: `a <= c`.
        (u128::from(ns) * u128::from(self.a) / u128::from(self.c)) as u64
    }

    /// The emission interval's numerator's divisor: `T = c / a` ns.
    #[inline(always)]
    pub(crate) fn a(&self) -> u64 {
        self.a
    }

    /// The emission interval's numerator: `T = c / a` ns.
    #[inline(always)]
    pub(crate) fn c(&self) -> u64 {
        self.c
    }

    /// `burst * c`: the burst's worth of time in units of `1 / a` ns.
    #[inline(always)]
    pub(crate) fn burst_c(&self) -> u128 {
        self.burst_c
    }

    #[inline(always)]
    pub(crate) fn burst_tokens(&self) -> u64 {
        self.burst.get()
    }
}

impl fmt::Debug for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Quota")
            .field("rate", &self.rate)
            .field("period", &self.period())
            .field("burst", &self.burst)
            .field("debt", &self.debt)
            .finish()
    }
}

impl PartialEq for Quota {
    fn eq(&self, other: &Self) -> bool {
        self.rate == other.rate
            && self.period_ns == other.period_ns
            && self.burst == other.burst
            && self.debt == other.debt
    }
}

impl Eq for Quota {}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_tokens(rate: u64, period_ns: u64, x: u64) -> u64 {
        (x as u128 * rate as u128 / period_ns as u128) as u64
    }

    #[test]
    fn tokens_by_matches_128_bit_arithmetic() {
        let cases = [
            (1u32, 1_000_000_000u64),
            (3, 1_000_000_000),
            (7, 3_600_000_000_000),
            (1_000_000, 1_000_000_000),
            (999_983, 1_000_000_007),
            (u32::MAX, u64::MAX / 2),
            (4_000_000_000, 4_000_000_001),
        ];
        let xs = [
            0u64,
            1,
            999,
            1_000_000_000,
            123_456_789_012_345,
            u64::MAX / 3,
            u64::MAX,
        ];
        for &(rate, period) in &cases {
            let q = Quota::new(rate, Duration::from_nanos(period)).unwrap();
            assert_eq!(
                u128::from(q.a()) * u128::from(period),
                u128::from(q.c()) * u128::from(rate),
                "a / c = rate / period"
            );
            for &x in &xs {
                let want = reference_tokens(u64::from(rate), period, x);
                assert_eq!(
                    q.tokens_by(Duration::from_nanos(x)),
                    want,
                    "rate {rate} period {period} x {x}"
                );
            }
        }
    }

    #[test]
    fn invalid_quotas_are_refused() {
        assert_eq!(
            Quota::per_second(0),
            Err(ConfigError::Zero { field: "rate" })
        );
        assert_eq!(
            Quota::new(1, Duration::ZERO),
            Err(ConfigError::ZeroDuration { field: "period" })
        );
        assert!(matches!(
            Quota::new(10, Duration::from_nanos(5)),
            Err(ConfigError::TooLarge { field: "rate", .. })
        ));
        assert_eq!(
            Quota::per_second(1).unwrap().with_burst(0),
            Err(ConfigError::Zero { field: "burst" })
        );
    }
}
