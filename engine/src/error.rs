//! Typed configuration errors.
//!
//! Every builder in the engine validates what it is given and returns a
//! [`ConfigError`] naming the field and the rule it broke. Nothing on a public
//! path panics on user input.

use core::fmt;

/// Why a configuration was refused.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A count that must be at least one was zero.
    Zero {
        /// The offending setting.
        field: &'static str,
    },
    /// A count was larger than the engine supports.
    TooLarge {
        /// The offending setting.
        field: &'static str,
        /// What was asked for.
        value: u64,
        /// The largest accepted value.
        max: u64,
    },
    /// A rate (in percent) was outside `(0, 100]`, or not a number.
    RateOutOfRange {
        /// The offending setting.
        field: &'static str,
        /// What was asked for.
        value: f64,
    },
    /// A duration that must be positive was zero.
    ZeroDuration {
        /// The offending setting.
        field: &'static str,
    },
    /// A duration does not fit in 64 bits of nanoseconds (about 584 years).
    DurationOverflow {
        /// The offending setting.
        field: &'static str,
    },
    /// A sliding window cannot be split evenly into the requested buckets.
    UnevenBuckets {
        /// Window length (calls, or nanoseconds for a time window).
        window: u64,
        /// Requested number of buckets.
        buckets: u64,
    },
    /// A growth multiplier was below 1, or not a finite number.
    InvalidMultiplier {
        /// The offending setting.
        field: &'static str,
        /// What was asked for.
        value: f64,
    },
    /// A fraction was outside its range (`(0, 1)` unless stated), or not a number.
    InvalidFraction {
        /// The offending setting.
        field: &'static str,
        /// What was asked for.
        value: f64,
    },
    /// A cap was below the value it caps.
    CapBelowBase {
        /// The offending setting.
        field: &'static str,
    },
    /// A ratio was negative, above its maximum, or not a number.
    RatioOutOfRange {
        /// The offending setting.
        field: &'static str,
        /// What was asked for.
        value: f64,
        /// The largest accepted value.
        max: f64,
    },
    /// The breaker has no rule that could ever open it.
    NoTripRule,
    /// A size that must be a power of two (of at least 2) was not.
    NotPowerOfTwo {
        /// The offending setting.
        field: &'static str,
        /// What was asked for.
        value: u64,
    },
    /// The allocator could not give the memory a size needs (the size was
    /// within the engine's maximum, but not within the machine's).
    OutOfMemory {
        /// The offending setting.
        field: &'static str,
        /// The bytes asked for.
        bytes: u64,
    },
    /// A number of slots cannot be shared evenly between lanes.
    UnevenLanes {
        /// The slots given.
        slots: u64,
        /// The lanes asked for.
        lanes: u64,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Zero { field } => write!(f, "`{field}` must be at least 1"),
            ConfigError::TooLarge { field, value, max } => {
                write!(
                    f,
                    "`{field}` is {value}, above the supported maximum of {max}"
                )
            }
            ConfigError::RateOutOfRange { field, value } => {
                write!(
                    f,
                    "`{field}` is {value}%, outside the accepted range (0, 100]"
                )
            }
            ConfigError::ZeroDuration { field } => write!(f, "`{field}` must be longer than zero"),
            ConfigError::DurationOverflow { field } => {
                write!(
                    f,
                    "`{field}` does not fit in 64 bits of nanoseconds (about 584 years)"
                )
            }
            ConfigError::UnevenBuckets { window, buckets } => write!(
                f,
                "a window of {window} cannot be split evenly into {buckets} buckets"
            ),
            ConfigError::InvalidMultiplier { field, value } => {
                write!(
                    f,
                    "`{field}` is {value}; it must be a finite number of at least 1"
                )
            }
            ConfigError::InvalidFraction { field, value } => {
                write!(
                    f,
                    "`{field}` is {value}; it must be a number between 0 and 1"
                )
            }
            ConfigError::CapBelowBase { field } => {
                write!(f, "`{field}` must be at least the value it caps")
            }
            ConfigError::RatioOutOfRange { field, value, max } => {
                write!(
                    f,
                    "`{field}` is {value}; it must be a number from 0 to {max}"
                )
            }
            ConfigError::NotPowerOfTwo { field, value } => {
                write!(
                    f,
                    "`{field}` is {value}; it must be a power of two of at least 2"
                )
            }
            ConfigError::OutOfMemory { field, bytes } => {
                write!(
                    f,
                    "`{field}` needs {bytes} bytes, which the allocator refused"
                )
            }
            ConfigError::UnevenLanes { slots, lanes } => {
                write!(f, "{slots} slots cannot be shared evenly by {lanes} lanes")
            }
            ConfigError::NoTripRule => write!(
                f,
                "the breaker has no trip rule: enable a failure-rate, slow-call-rate or \
                 consecutive-failures rule"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ConfigError {}
