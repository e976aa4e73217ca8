//! Retry budget configuration: a builder in user terms (a ratio, retries per
//! second, a `Duration` window) that validates into a [`RetryBudgetConfig`]
//! in engine terms (parts per million, a reserve per window, bucket lengths),
//! and the budget's pure rule, [`RetryBudgetConfig::allows`].

use core::time::Duration;

use crate::divide::Divisor;

use crate::error::ConfigError;
use crate::time::{Timestamp, checked_nanos};

/// Most buckets a budget's window may have (a power of two).
#[cfg(not(tenlives_loom))]
pub const MAX_BUCKETS: u32 = 32;
/// Most buckets a budget's window may have (kept small under loom).
#[cfg(tenlives_loom)]
pub const MAX_BUCKETS: u32 = 4;

/// Largest ratio of retries to requests, in parts per million: 10 (1000 %).
pub const MAX_RATIO_PPM: u32 = 10_000_000;

const PPM: u64 = 1_000_000;
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Deposits and withdrawals in a budget's window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BudgetCounts {
    /// Requests deposited in the window.
    pub deposits: u64,
    /// Retries granted in the window.
    pub withdrawals: u64,
}

/// Builder for [`RetryBudgetConfig`]. Start from [`RetryBudgetConfig::builder`].
///
/// Defaults: 20 % of the requests of the last 10 seconds (in 8 buckets of
/// 1.25 s) may be retried, plus 10 retries a second.
#[derive(Clone, Debug)]
#[must_use]
pub struct RetryBudgetConfigBuilder {
    ratio: Ratio,
    min_per_second: u32,
    window: Duration,
    buckets: u32,
}

#[derive(Clone, Copy, Debug)]
enum Ratio {
    Float(f64),
    Ppm(u32),
}

impl Default for RetryBudgetConfigBuilder {
    fn default() -> Self {
        RetryBudgetConfigBuilder {
            ratio: Ratio::Ppm(200_000),
            min_per_second: 10,
            window: Duration::from_secs(10),
            buckets: if MAX_BUCKETS >= 8 { 8 } else { MAX_BUCKETS },
        }
    }
}

impl RetryBudgetConfigBuilder {
    /// Retries allowed per request in the window: `0.2` is 20 %, at most 10.
    /// Converted once to parts per million (rounded to the nearest).
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = Ratio::Float(ratio);
        self
    }

    /// The same ratio in parts per million, exactly: `200_000` is 20 %.
    pub fn ratio_ppm(mut self, ppm: u32) -> Self {
        self.ratio = Ratio::Ppm(ppm);
        self
    }

    /// Retries allowed whatever the traffic: `n` a second, that is
    /// `n * window / 1 s` (rounded down) in any window.
    pub fn min_per_second(mut self, n: u32) -> Self {
        self.min_per_second = n;
        self
    }

    /// How far back "recent" reaches, cut into `buckets` buckets: a power of
    /// two up to [`MAX_BUCKETS`] that divides `length` in nanoseconds. See the
    /// module documentation.
    pub fn window(mut self, length: Duration, buckets: u32) -> Self {
        self.window = length;
        self.buckets = buckets;
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<RetryBudgetConfig, ConfigError> {
        let ratio_ppm = match self.ratio {
            Ratio::Ppm(ppm) => ppm,
            Ratio::Float(r) => {
                let max = f64::from(MAX_RATIO_PPM) / PPM as f64;
                // `!(x >= 0.0)` also rejects NaN.
                if !(r >= 0.0 && r <= max) {
                    return Err(ConfigError::RatioOutOfRange {
                        field: "ratio",
                        value: r,
                        max,
                    });
                }
                (r * PPM as f64 + 0.5) as u32
            }
        };
        if ratio_ppm > MAX_RATIO_PPM {
            return Err(ConfigError::TooLarge {
                field: "ratio_ppm",
                value: ratio_ppm.into(),
                max: MAX_RATIO_PPM.into(),
            });
        }
        let window_ns = checked_nanos("window", self.window)?;
        if window_ns == 0 {
            return Err(ConfigError::ZeroDuration { field: "window" });
        }
        if self.buckets == 0 {
            return Err(ConfigError::Zero { field: "buckets" });
        }
        if self.buckets > MAX_BUCKETS {
            return Err(ConfigError::TooLarge {
                field: "buckets",
                value: self.buckets.into(),
                max: MAX_BUCKETS.into(),
            });
        }
        if !self.buckets.is_power_of_two() {
            return Err(ConfigError::NotPowerOfTwo {
                field: "buckets",
                value: self.buckets.into(),
            });
        }
        let buckets = u64::from(self.buckets);
        if !window_ns.is_multiple_of(buckets) {
            return Err(ConfigError::UnevenBuckets {
                window: window_ns,
                buckets,
            });
        }
        let reserve = u128::from(self.min_per_second) * u128::from(window_ns) / NANOS_PER_SEC;
        let reserve = u32::try_from(reserve).map_err(|_| ConfigError::TooLarge {
            field: "min_per_second * window",
            value: u64::try_from(reserve).unwrap_or(u64::MAX),
            max: u32::MAX.into(),
        })?;
        Ok(RetryBudgetConfig {
            ratio_ppm,
            reserve,
            min_per_second: self.min_per_second,
            window: self.window,
            bucket: Divisor::new(window_ns / buckets),
            buckets,
        })
    }
}

/// A validated retry budget configuration. Build one with
/// [`RetryBudgetConfig::builder`].
#[derive(Clone, Copy, Debug)]
pub struct RetryBudgetConfig {
    ratio_ppm: u32,
    reserve: u32,
    min_per_second: u32,
    window: Duration,
    /// Bucket length in nanoseconds, as a divisor without a `div`.
    pub(super) bucket: Divisor,
    /// Number of buckets, a power of two.
    pub(super) buckets: u64,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfigBuilder::default()
            .build()
            .expect("the defaults are valid")
    }
}

impl RetryBudgetConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> RetryBudgetConfigBuilder {
        RetryBudgetConfigBuilder::default()
    }
    /// Retries allowed per request, in parts per million.
    pub fn ratio_ppm(&self) -> u32 {
        self.ratio_ppm
    }
    /// Retries allowed in any window whatever the traffic.
    pub fn reserve(&self) -> u32 {
        self.reserve
    }
    /// The minimum retries per second it was built with.
    pub fn min_per_second(&self) -> u32 {
        self.min_per_second
    }
    /// The window length.
    pub fn window(&self) -> Duration {
        self.window
    }
    /// The number of buckets of the window.
    pub fn buckets(&self) -> u32 {
        self.buckets as u32
    }
    /// The length of one bucket.
    pub fn bucket_length(&self) -> Duration {
        Duration::from_nanos(self.bucket.get())
    }

    /// A builder holding this configuration's settings, to change some of
    /// them (for [`RetryBudget::update_config`](super::RetryBudget::update_config)).
    pub fn to_builder(&self) -> RetryBudgetConfigBuilder {
        RetryBudgetConfigBuilder::default()
            .ratio_ppm(self.ratio_ppm)
            .min_per_second(self.min_per_second)
            .window(self.window, self.buckets())
    }

    /// Whether a window of `other`'s layout (length and buckets) is laid
    /// out like this one's.
    pub(super) fn same_layout(&self, other: &RetryBudgetConfig) -> bool {
        self.window == other.window && self.buckets == other.buckets
    }

    /// The index of the bucket `now` falls in.
    #[inline]
    pub(super) fn epoch(&self, now: Timestamp) -> u64 {
        now.as_nanos() / self.bucket
    }

    /// The pure rule: may one more withdrawal be granted in a window holding
    /// `counts`? Exact integer arithmetic, which cannot overflow for counts a
    /// budget can hold (below `MAX_BUCKETS * 2^25` each, with a ratio of at
    /// most 10^7 ppm and a reserve below 2^32).
    #[inline]
    pub fn allows(&self, counts: BudgetCounts) -> bool {
        (counts.withdrawals + 1) * PPM
            <= counts.deposits * u64::from(self.ratio_ppm) + u64::from(self.reserve) * PPM
    }

    /// How many more withdrawals a window holding `counts` allows.
    pub fn remaining(&self, counts: BudgetCounts) -> u64 {
        let allowance =
            (counts.deposits * u64::from(self.ratio_ppm) + u64::from(self.reserve) * PPM) / PPM;
        allowance.saturating_sub(counts.withdrawals)
    }
}

#[cfg(all(test, not(tenlives_loom)))]
mod tests {
    use super::*;

    #[test]
    fn config_errors() {
        let e = |b: RetryBudgetConfigBuilder| b.build().unwrap_err();
        let base = RetryBudgetConfig::builder;
        assert!(matches!(
            e(base().ratio(f64::NAN)),
            ConfigError::RatioOutOfRange { field: "ratio", .. }
        ));
        assert!(matches!(
            e(base().ratio(-0.1)),
            ConfigError::RatioOutOfRange { .. }
        ));
        assert!(matches!(
            e(base().ratio(10.5)),
            ConfigError::RatioOutOfRange { .. }
        ));
        assert!(matches!(
            e(base().ratio_ppm(MAX_RATIO_PPM + 1)),
            ConfigError::TooLarge {
                field: "ratio_ppm",
                ..
            }
        ));
        assert_eq!(
            e(base().window(Duration::ZERO, 1)),
            ConfigError::ZeroDuration { field: "window" }
        );
        assert_eq!(
            e(base().window(Duration::MAX, 1)),
            ConfigError::DurationOverflow { field: "window" }
        );
        assert_eq!(
            e(base().window(Duration::from_secs(1), 0)),
            ConfigError::Zero { field: "buckets" }
        );
        assert_eq!(
            e(base().window(Duration::from_secs(1), 10)),
            ConfigError::NotPowerOfTwo {
                field: "buckets",
                value: 10
            }
        );
        assert!(matches!(
            e(base().window(Duration::from_secs(1), MAX_BUCKETS * 2)),
            ConfigError::TooLarge {
                field: "buckets",
                ..
            }
        ));
        assert_eq!(
            e(base().window(Duration::from_nanos(10), 4)),
            ConfigError::UnevenBuckets {
                window: 10,
                buckets: 4
            }
        );
        assert!(matches!(
            e(base()
                .min_per_second(u32::MAX)
                .window(Duration::from_secs(2), 2)),
            ConfigError::TooLarge { .. }
        ));
        let c = base().ratio(0.25).min_per_second(3).build().unwrap();
        assert_eq!((c.ratio_ppm(), c.reserve(), c.buckets()), (250_000, 30, 8));
        assert_eq!(c.bucket_length(), Duration::from_millis(1250));
        assert_eq!(c.window(), Duration::from_secs(10));
        assert_eq!(c.min_per_second(), 3);
    }
}
