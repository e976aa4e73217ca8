//! Backoff schedules: how long to wait before each retry.
//!
//! A [`Backoff`] is a validated description of a schedule; [`Backoff::iter`]
//! turns it into an iterator of delays, one per retry, which ends after
//! [`with_max_retries`](Backoff::with_max_retries) delays if that is set and
//! never otherwise. Delays are computed in whole nanoseconds with saturating
//! arithmetic, so no schedule overflows, whatever it is asked.
//!
//! | schedule | delay before retry `k` (`k = 0, 1, ...`) |
//! |---|---|
//! | [`constant`](Backoff::constant) | `delay` |
//! | [`linear`](Backoff::linear) | `min(cap, base + k * step)` |
//! | [`exponential`](Backoff::exponential) | `min(cap, base * multiplier^k)` |
//! | [`full_jitter`](Backoff::full_jitter) | uniform in `0..=min(cap, base * multiplier^k)` |
//! | [`decorrelated_jitter`](Backoff::decorrelated_jitter) | `min(cap, uniform in base..=3 * previous)`, `previous` starting at `base` |
//!
//! The jittered schedules draw from a SplitMix64 generator seeded by the
//! caller: the same seed gives the same delays, and different seeds (even
//! consecutive integers, such as a request counter) give unrelated ones.
//!
//! ```
//! use core::time::Duration;
//! use tenlives_engine::retry::Backoff;
//!
//! let ms = Duration::from_millis;
//! let backoff = Backoff::exponential(ms(100), 2.0, ms(1_000))?.with_max_retries(6);
//! let delays: Vec<Duration> = backoff.iter(0).collect();
//! assert_eq!(delays, [ms(100), ms(200), ms(400), ms(800), ms(1_000), ms(1_000)]);
//!
//! let jittered = Backoff::decorrelated_jitter(ms(100), ms(5_000))?.with_max_retries(4);
//! for d in jittered.iter(42) {
//!     assert!(ms(100) <= d && d <= ms(5_000));
//! }
//! assert!(jittered.iter(42).eq(jittered.iter(42)), "same seed, same delays");
//! # Ok::<(), tenlives_engine::ConfigError>(())
//! ```

use core::time::Duration;

use crate::error::ConfigError;
use crate::rng::SplitMix64;
use crate::time::checked_nanos;

/// How the delay of each retry is found, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Schedule {
    Constant {
        delay: u64,
    },
    Linear {
        base: u64,
        step: u64,
        cap: u64,
    },
    Exponential {
        base: u64,
        multiplier: f64,
        cap: u64,
    },
    FullJitter {
        base: u64,
        multiplier: f64,
        cap: u64,
    },
    DecorrelatedJitter {
        base: u64,
        cap: u64,
    },
}

/// A validated backoff schedule. See the [module documentation](self).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    schedule: Schedule,
    max_retries: Option<u32>,
}

/// A positive duration in nanoseconds, or the error naming `field`.
fn positive_nanos(field: &'static str, d: Duration) -> Result<u64, ConfigError> {
    match checked_nanos(field, d)? {
        0 => Err(ConfigError::ZeroDuration { field }),
        ns => Ok(ns),
    }
}

fn cap_nanos(field: &'static str, cap: Duration, base: u64) -> Result<u64, ConfigError> {
    let cap = checked_nanos(field, cap)?;
    if cap < base {
        Err(ConfigError::CapBelowBase { field })
    } else {
        Ok(cap)
    }
}

/// The validated parts of a growing schedule: a positive base, a multiplier
/// of at least 1 and a cap of at least the base, in nanoseconds.
fn growth(
    field: &'static str,
    base: Duration,
    multiplier: f64,
    cap: Duration,
) -> Result<(u64, f64, u64), ConfigError> {
    let base = positive_nanos(field, base)?;
    let multiplier = check_multiplier(multiplier)?;
    let cap = cap_nanos("cap", cap, base)?;
    Ok((base, multiplier, cap))
}

fn check_multiplier(multiplier: f64) -> Result<f64, ConfigError> {
    // `!(x >= 1.0)` also rejects NaN.
    if multiplier.is_finite() && multiplier >= 1.0 {
        Ok(multiplier)
    } else {
        Err(ConfigError::InvalidMultiplier {
            field: "multiplier",
            value: multiplier,
        })
    }
}

impl Backoff {
    fn unlimited(schedule: Schedule) -> Self {
        Backoff {
            schedule,
            max_retries: None,
        }
    }

    /// The same `delay` before every retry. Errors: a zero or overflowing
    /// `delay`.
    pub fn constant(delay: Duration) -> Result<Self, ConfigError> {
        let delay = positive_nanos("delay", delay)?;
        Ok(Self::unlimited(Schedule::Constant { delay }))
    }

    /// `base`, then `step` longer each retry, up to `cap`. Errors: a zero or
    /// overflowing `base` or `step`, an overflowing `cap`, `cap < base`.
    pub fn linear(base: Duration, step: Duration, cap: Duration) -> Result<Self, ConfigError> {
        let base = positive_nanos("base", base)?;
        let step = positive_nanos("step", step)?;
        let cap = cap_nanos("cap", cap, base)?;
        Ok(Self::unlimited(Schedule::Linear { base, step, cap }))
    }

    /// `base`, then `multiplier` times longer each retry, up to `cap`.
    /// Errors: a zero or overflowing `base`, an overflowing `cap`,
    /// `cap < base`, a `multiplier` below 1 or not finite (NaN included).
    pub fn exponential(
        base: Duration,
        multiplier: f64,
        cap: Duration,
    ) -> Result<Self, ConfigError> {
        let (base, multiplier, cap) = growth("base", base, multiplier, cap)?;
        Ok(Self::unlimited(Schedule::Exponential {
            base,
            multiplier,
            cap,
        }))
    }

    /// "Full jitter": a delay drawn uniformly between zero and what
    /// [`exponential`](Self::exponential) would wait. Same errors.
    pub fn full_jitter(
        base: Duration,
        multiplier: f64,
        cap: Duration,
    ) -> Result<Self, ConfigError> {
        let (base, multiplier, cap) = growth("base", base, multiplier, cap)?;
        Ok(Self::unlimited(Schedule::FullJitter {
            base,
            multiplier,
            cap,
        }))
    }

    /// "Decorrelated jitter": each delay drawn uniformly between `base` and
    /// three times the previous delay (the first previous delay being
    /// `base`), then capped at `cap`. Delays stay within `base..=cap` and
    /// grow on average by about 1.5x a retry until the cap. Errors: a zero or
    /// overflowing `base`, an overflowing `cap`, `cap < base`.
    pub fn decorrelated_jitter(base: Duration, cap: Duration) -> Result<Self, ConfigError> {
        let base = positive_nanos("base", base)?;
        let cap = cap_nanos("cap", cap, base)?;
        Ok(Self::unlimited(Schedule::DecorrelatedJitter { base, cap }))
    }

    /// The same schedule, ending after `n` retries (`0`: no retry at all).
    #[must_use]
    pub fn with_max_retries(mut self, n: u32) -> Self {
        self.max_retries = Some(n);
        self
    }

    /// The same schedule, never ending.
    #[must_use]
    pub fn without_max_retries(mut self) -> Self {
        self.max_retries = None;
        self
    }

    /// The most retries the schedule allows, if it ends.
    pub fn max_retries(&self) -> Option<u32> {
        self.max_retries
    }

    /// The delays, one per retry. `seed` fixes the jitter; the schedules
    /// without jitter ignore it.
    pub fn iter(&self, seed: u64) -> BackoffIter {
        let (first, multiplier) = match self.schedule {
            Schedule::Constant { delay } => (delay, 1.0),
            Schedule::Linear { base, .. } | Schedule::DecorrelatedJitter { base, .. } => {
                (base, 1.0)
            }
            Schedule::Exponential {
                base, multiplier, ..
            }
            | Schedule::FullJitter {
                base, multiplier, ..
            } => (base, multiplier),
        };
        BackoffIter {
            schedule: self.schedule,
            remaining: self.max_retries,
            current: first,
            current_f: first as f64,
            multiplier,
            rng: SplitMix64::new(seed),
        }
    }
}

/// The delays of a [`Backoff`], one per retry. Made by [`Backoff::iter`].
#[derive(Clone, Debug)]
pub struct BackoffIter {
    schedule: Schedule,
    /// Retries left, if the schedule ends.
    remaining: Option<u32>,
    /// The un-jittered delay of the next retry (linear, exponential), or the
    /// previous delay (decorrelated jitter), in nanoseconds.
    current: u64,
    /// `current` before capping and rounding (exponential schedules), so that
    /// growth compounds exactly as the float arithmetic says.
    current_f: f64,
    multiplier: f64,
    rng: SplitMix64,
}

impl BackoffIter {
    /// Exponential growth: `current_f *= multiplier`, capped; never shrinks.
    #[inline]
    fn grow(&mut self, cap: u64) {
        if self.current < cap {
            self.current_f *= self.multiplier;
            // `as` saturates (and maps +inf to u64::MAX); `max` keeps the
            // schedule monotone where `u64 -> f64` rounded down.
            self.current = (self.current_f as u64).max(self.current).min(cap);
        }
    }

    /// The next delay in nanoseconds, whatever `remaining` says.
    #[inline]
    fn next_nanos(&mut self) -> u64 {
        match self.schedule {
            Schedule::Constant { delay } => delay,
            Schedule::Linear { step, cap, .. } => {
                let d = self.current;
                self.current = self.current.saturating_add(step).min(cap);
                d
            }
            Schedule::Exponential { cap, .. } => {
                let d = self.current.min(cap);
                self.grow(cap);
                d
            }
            Schedule::FullJitter { cap, .. } => {
                let ceiling = self.current.min(cap);
                self.grow(cap);
                self.rng.between(0, ceiling)
            }
            Schedule::DecorrelatedJitter { base, cap } => {
                let hi = self.current.saturating_mul(3).max(base);
                let d = self.rng.between(base, hi).min(cap);
                self.current = d;
                d
            }
        }
    }
}

impl Iterator for BackoffIter {
    type Item = Duration;

    #[inline]
    fn next(&mut self) -> Option<Duration> {
        if let Some(left) = self.remaining.as_mut() {
            *left = left.checked_sub(1)?;
        }
        Some(Duration::from_nanos(self.next_nanos()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self.remaining {
            Some(n) => (n as usize, Some(n as usize)),
            None => (usize::MAX, None),
        }
    }
}

#[cfg(all(test, not(tenlives_loom)))]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn first(b: Backoff, n: usize, seed: u64) -> Vec<u64> {
        b.iter(seed).take(n).map(|d| d.as_millis() as u64).collect()
    }

    #[test]
    fn deterministic_schedules() {
        assert_eq!(first(Backoff::constant(ms(7)).unwrap(), 3, 0), [7, 7, 7]);
        assert_eq!(
            first(Backoff::linear(ms(10), ms(5), ms(22)).unwrap(), 5, 0),
            [10, 15, 20, 22, 22]
        );
        assert_eq!(
            first(Backoff::exponential(ms(1), 3.0, ms(50)).unwrap(), 6, 0),
            [1, 3, 9, 27, 50, 50]
        );
        assert_eq!(
            first(Backoff::exponential(ms(4), 1.5, ms(1000)).unwrap(), 4, 0),
            [4, 6, 9, 13]
        );
    }

    #[test]
    fn max_retries_ends_the_schedule() {
        let b = Backoff::constant(ms(1)).unwrap().with_max_retries(2);
        assert_eq!(b.iter(0).count(), 2);
        assert_eq!(b.iter(0).size_hint(), (2, Some(2)));
        assert_eq!(b.with_max_retries(0).iter(0).next(), None);
        assert_eq!(b.max_retries(), Some(2));
        assert_eq!(b.without_max_retries().max_retries(), None);
    }

    #[test]
    fn huge_values_saturate() {
        let max = Duration::from_nanos(u64::MAX);
        let b = Backoff::exponential(Duration::from_nanos(1 << 62), 1e300, max).unwrap();
        let d: Vec<_> = b.iter(0).take(3).collect();
        assert_eq!(d, [Duration::from_nanos(1 << 62), max, max]);
        let b = Backoff::linear(Duration::from_nanos(u64::MAX - 1), max, max).unwrap();
        assert!(
            b.iter(0)
                .take(3)
                .all(|d| d >= Duration::from_nanos(u64::MAX - 1))
        );
        let b = Backoff::decorrelated_jitter(Duration::from_nanos(1 << 63), max).unwrap();
        assert!(
            b.iter(3)
                .take(20)
                .all(|d| d >= Duration::from_nanos(1 << 63))
        );
    }

    #[test]
    fn invalid_configs_are_typed_errors() {
        assert_eq!(
            Backoff::constant(Duration::ZERO),
            Err(ConfigError::ZeroDuration { field: "delay" })
        );
        assert_eq!(
            Backoff::constant(Duration::MAX),
            Err(ConfigError::DurationOverflow { field: "delay" })
        );
        assert_eq!(
            Backoff::linear(ms(1), Duration::ZERO, ms(5)),
            Err(ConfigError::ZeroDuration { field: "step" })
        );
        assert_eq!(
            Backoff::exponential(ms(10), 2.0, ms(5)),
            Err(ConfigError::CapBelowBase { field: "cap" })
        );
        assert_eq!(
            Backoff::exponential(ms(10), 2.0, Duration::MAX),
            Err(ConfigError::DurationOverflow { field: "cap" })
        );
        for bad in [0.5, f64::NAN, f64::INFINITY, -2.0] {
            assert!(matches!(
                Backoff::full_jitter(ms(1), bad, ms(5)),
                Err(ConfigError::InvalidMultiplier { .. })
            ));
        }
        assert_eq!(
            Backoff::decorrelated_jitter(ms(10), ms(9)),
            Err(ConfigError::CapBelowBase { field: "cap" })
        );
    }
}
