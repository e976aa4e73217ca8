//! The serde shape of a configuration file, one struct per policy kind,
//! and how each becomes the engine's typed configuration (through the
//! engine's own builders, so that every rule the engine checks is checked
//! here with the same [`ConfigError`]).
//!
//! Every field is optional: an entry says only what it changes from the
//! configuration it inherits (`base_config`, else `configs.default`, else
//! the engine's defaults).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use tenlives_engine::ConfigError;
use tenlives_engine::adaptive::{Aimd, WindowConfig};
use tenlives_engine::breaker::BreakerConfig;
use tenlives_engine::queue::{Overload, QueueConfig};
use tenlives_engine::rate::Quota;
use tenlives_engine::retry::{Backoff, RetryBudgetConfig};
use tenlives_engine::throttle::ThrottleConfig;

/// A whole configuration file.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Circuit breakers.
    #[serde(default)]
    pub circuit_breaker: Section<BreakerSpec>,
    /// Rate limiters (GCRA).
    #[serde(default)]
    pub rate_limiter: Section<RateLimiterSpec>,
    /// Concurrency limits.
    #[serde(default)]
    pub bulkhead: Section<BulkheadSpec>,
    /// Retry budgets.
    #[serde(default)]
    pub retry_budget: Section<RetryBudgetSpec>,
    /// Client-side throttles.
    #[serde(default)]
    pub throttle: Section<ThrottleSpec>,
    /// Adaptive concurrency limits (AIMD).
    #[serde(default)]
    pub adaptive_limit: Section<AdaptiveLimitSpec>,
    /// Admission queues in front of a concurrency limit.
    #[serde(default)]
    pub admission_queue: Section<AdmissionQueueSpec>,
    /// Stacks: a timeout and named policies of the other sections in one
    /// layer.
    #[serde(default)]
    pub stack: Section<StackSpec>,
}

/// The named configurations and the instances of one policy kind.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Section<S> {
    /// Shared configurations; `default` is what every entry without a
    /// `base_config` inherits.
    #[serde(default = "BTreeMap::new")]
    pub configs: BTreeMap<String, S>,
    /// Per-instance settings, by instance name.
    #[serde(default = "BTreeMap::new")]
    pub instances: BTreeMap<String, S>,
}

impl<S> Default for Section<S> {
    fn default() -> Self {
        Section {
            configs: BTreeMap::new(),
            instances: BTreeMap::new(),
        }
    }
}

/// A duration written as text: `250ms`, `10s`, `1m 30s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct Dur(pub Duration);

impl From<Dur> for String {
    fn from(d: Dur) -> String {
        humantime::format_duration(d.0).to_string()
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"250ms\" or \"10s\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                humantime::parse_duration(s)
                    .map(Dur)
                    .map_err(|e| E::custom(format_args!("`{s}` is not a duration ({e})")))
            }
        }
        d.deserialize_str(V)
    }
}

/// A rule that can be switched off: a value, or the word `off`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum OrOff<T> {
    /// The rule applies with this value.
    On(T),
    /// The rule is off (`off` in the file).
    #[serde(serialize_with = "serialize_off")]
    Off,
}

fn serialize_off<S: serde::Serializer>(s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("off")
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OrOff<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        if value.as_str() == Some("off") {
            return Ok(OrOff::Off);
        }
        T::deserialize(value)
            .map(OrOff::On)
            .map_err(|e| de::Error::custom(format_args!("{e}, or `off`")))
    }
}

impl<T: Copy> OrOff<T> {
    fn value(self) -> Option<T> {
        match self {
            OrOff::On(v) => Some(v),
            OrOff::Off => None,
        }
    }
}

/// What each kind's spec does: inherit from a parent, and build the
/// engine's configuration.
pub trait Spec: Clone + fmt::Debug + PartialEq + Default + Serialize {
    /// The engine's configuration it becomes.
    type Built: Clone + fmt::Debug + Send + Sync + 'static;
    /// The section's name in a file (`circuit_breaker`, ...).
    const SECTION: &'static str;
    /// The entry it inherits from, if it names one.
    fn base_config(&self) -> Option<&str>;
    /// This spec with every unset field taken from `parent`.
    fn inherit(&self, parent: &Self) -> Self;
    /// The engine's configuration, through the engine's builders. Errors
    /// name the file key to blame, when one field is to blame.
    fn build(&self) -> Result<Self::Built, SpecError>;
}

/// Why a resolved spec could not be built.
#[derive(Clone, Debug, PartialEq)]
pub struct SpecError {
    /// The key (in this entry or one it inherits from) to blame, if one is.
    pub key: Option<&'static str>,
    /// What is wrong.
    pub kind: SpecErrorKind,
}

/// What is wrong with a resolved spec.
#[derive(Clone, Debug, PartialEq)]
pub enum SpecErrorKind {
    /// The engine refused a value.
    Config(ConfigError),
    /// A required key is missing.
    Missing(&'static str),
    /// Two keys that exclude each other are both set, or one needs another.
    Conflict(&'static str),
}

impl fmt::Display for SpecErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecErrorKind::Config(e) => fmt::Display::fmt(e, f),
            SpecErrorKind::Missing(key) => write!(f, "missing required key `{key}`"),
            SpecErrorKind::Conflict(why) => f.write_str(why),
        }
    }
}

fn engine(map: fn(&str) -> Option<&'static str>) -> impl Fn(ConfigError) -> SpecError {
    move |e| SpecError {
        key: engine_field(&e).and_then(map),
        kind: SpecErrorKind::Config(e),
    }
}

/// The field a `ConfigError` names, if it names one.
fn engine_field(e: &ConfigError) -> Option<&'static str> {
    match e {
        ConfigError::Zero { field }
        | ConfigError::TooLarge { field, .. }
        | ConfigError::RateOutOfRange { field, .. }
        | ConfigError::ZeroDuration { field }
        | ConfigError::DurationOverflow { field }
        | ConfigError::InvalidMultiplier { field, .. }
        | ConfigError::InvalidFraction { field, .. }
        | ConfigError::CapBelowBase { field }
        | ConfigError::RatioOutOfRange { field, .. }
        | ConfigError::NotPowerOfTwo { field, .. } => Some(field),
        ConfigError::UnevenBuckets { .. } => Some("buckets"),
        _ => None,
    }
}

macro_rules! inherit {
    ($self:ident, $parent:ident; $($field:ident),*) => {
        Self { base_config: $self.base_config.clone(), $($field: $self.$field.clone().or_else(|| $parent.$field.clone()),)* }
    };
}

/// A circuit breaker (`tenlives_engine::breaker::BreakerConfig`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BreakerSpec {
    /// The configuration this one inherits from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_config: Option<String>,
    /// Open at this failure rate in percent, in `(0, 100]`, or `off`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<OrOff<f64>>,
    /// Open at this slow-call rate in percent, or `off`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_call_rate: Option<OrOff<f64>>,
    /// A call slower than this is slow (needed with `slow_call_rate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_call_duration: Option<Dur>,
    /// Open after this many failures in a row, or `off`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<OrOff<u32>>,
    /// A count-based window of this many calls (excludes `window_duration`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_calls: Option<u32>,
    /// A time-based window this long (excludes `window_calls`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_duration: Option<Dur>,
    /// Buckets the window is split into.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_buckets: Option<u32>,
    /// Calls the window must hold before a rate rule can open the breaker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum_calls: Option<u32>,
    /// How long it stays open before probing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_duration: Option<Dur>,
    /// Growth of the open duration on repeated trips (with `open_backoff_cap`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_backoff_multiplier: Option<f64>,
    /// The longest open duration (with `open_backoff_multiplier`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_backoff_cap: Option<Dur>,
    /// Probe calls let through when half-open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub half_open_probes: Option<u32>,
    /// Reopen on the first failed probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reopen_on_first_failure: Option<bool>,
}

impl Spec for BreakerSpec {
    type Built = BreakerConfig;
    const SECTION: &'static str = "circuit_breaker";

    fn base_config(&self) -> Option<&str> {
        self.base_config.as_deref()
    }

    fn inherit(&self, parent: &Self) -> Self {
        let mut out = inherit!(self, parent; failure_rate, slow_call_rate, slow_call_duration,
            consecutive_failures, window_calls, window_duration, window_buckets, minimum_calls, open_duration,
            open_backoff_multiplier, open_backoff_cap, half_open_probes, reopen_on_first_failure);
        // The window's kind is one setting: an entry that sets either
        // length replaces the inherited window.
        if self.window_calls.is_some() || self.window_duration.is_some() {
            out.window_calls = self.window_calls;
            out.window_duration = self.window_duration;
        } else {
            out.window_calls = parent.window_calls;
            out.window_duration = parent.window_duration;
        }
        out
    }

    fn build(&self) -> Result<BreakerConfig, SpecError> {
        let map = |f: &str| -> Option<&'static str> {
            Some(match f {
                "failure_rate" => "failure_rate",
                "slow_call_rate" => "slow_call_rate",
                "slow_call_duration" => "slow_call_duration",
                "consecutive_failures" => "consecutive_failures",
                "minimum_calls" => "minimum_calls",
                "half_open_probes" => "half_open_probes",
                "open_duration" => "open_duration",
                "open_backoff multiplier" => "open_backoff_multiplier",
                "open_backoff cap" => "open_backoff_cap",
                "window calls" => "window_calls",
                "window length" | "window" => "window_duration",
                "window buckets" | "buckets" => "window_buckets",
                _ => return None,
            })
        };
        let conflict = |key, why| SpecError {
            key: Some(key),
            kind: SpecErrorKind::Conflict(why),
        };
        let mut b = BreakerConfig::builder();
        let defaults = BreakerConfig::builder().build().map_err(engine(map))?;
        match self.failure_rate {
            Some(OrOff::On(p)) => b = b.failure_rate(p),
            Some(OrOff::Off) => b = b.without_failure_rate(),
            None => {}
        }
        match (
            self.slow_call_rate.and_then(OrOff::value),
            self.slow_call_duration,
        ) {
            (Some(p), Some(d)) => b = b.slow_calls(p, d.0),
            (Some(_), None) => {
                return Err(conflict(
                    "slow_call_rate",
                    "`slow_call_rate` needs `slow_call_duration`",
                ));
            }
            (None, _) => {}
        }
        if let Some(n) = self.consecutive_failures.and_then(OrOff::value) {
            b = b.consecutive_failures(n);
        }
        let buckets = self.window_buckets;
        match (self.window_calls, self.window_duration) {
            (Some(_), Some(_)) => {
                return Err(conflict(
                    "window_duration",
                    "`window_calls` and `window_duration` exclude each other",
                ));
            }
            (Some(_), None) if buckets.is_some() => {
                return Err(conflict(
                    "window_buckets",
                    "a count window judges exactly its last `window_calls` calls: `window_buckets` applies to a time window only",
                ));
            }
            (Some(calls), None) => b = b.count_window(calls),
            (None, Some(d)) => b = b.time_window(d.0, buckets.unwrap_or(10)),
            (None, None) => {
                if let Some(n) = buckets {
                    let length = match defaults.window() {
                        tenlives_engine::breaker::WindowSpec::Time { length, .. } => length,
                        // A count window (or a kind this version does not
                        // know): the builder's default length.
                        _ => Duration::from_secs(10),
                    };
                    b = b.time_window(length, n);
                }
            }
        }
        if let Some(n) = self.minimum_calls {
            b = b.minimum_calls(n);
        }
        if let Some(d) = self.open_duration {
            b = b.open_duration(d.0);
        }
        match (self.open_backoff_multiplier, self.open_backoff_cap) {
            (Some(m), Some(cap)) => b = b.open_backoff(m, cap.0),
            (None, None) => {}
            (Some(_), None) => {
                return Err(conflict(
                    "open_backoff_multiplier",
                    "`open_backoff_multiplier` needs `open_backoff_cap`",
                ));
            }
            (None, Some(_)) => {
                return Err(conflict(
                    "open_backoff_cap",
                    "`open_backoff_cap` needs `open_backoff_multiplier`",
                ));
            }
        }
        if let Some(n) = self.half_open_probes {
            b = b.half_open_probes(n);
        }
        if let Some(yes) = self.reopen_on_first_failure {
            b = b.reopen_on_first_failure(yes);
        }
        b.build().map_err(engine(map))
    }
}

/// A rate limiter (`tenlives_engine::rate::Quota`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterSpec {
    /// The configuration this one inherits from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_config: Option<String>,
    /// Requests allowed per `period` (required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
    /// The period `rate` is counted over (default `1s`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<Dur>,
    /// Requests allowed at once after a quiet spell (default `rate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Let a request larger than the burst through, in debt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debt: Option<bool>,
}

impl Spec for RateLimiterSpec {
    type Built = Quota;
    const SECTION: &'static str = "rate_limiter";

    fn base_config(&self) -> Option<&str> {
        self.base_config.as_deref()
    }

    fn inherit(&self, parent: &Self) -> Self {
        inherit!(self, parent; rate, period, burst, debt)
    }

    fn build(&self) -> Result<Quota, SpecError> {
        let map = |f: &str| -> Option<&'static str> {
            Some(match f {
                "rate" => "rate",
                "period" => "period",
                "burst" => "burst",
                _ => return None,
            })
        };
        let rate = self.rate.ok_or(SpecError {
            key: None,
            kind: SpecErrorKind::Missing("rate"),
        })?;
        let period = self.period.map_or(Duration::from_secs(1), |d| d.0);
        let mut q = Quota::new(rate, period).map_err(engine(map))?;
        if let Some(burst) = self.burst {
            q = q.with_burst(burst).map_err(engine(map))?;
        }
        if self.debt == Some(true) {
            q = q.with_debt();
        }
        Ok(q)
    }
}

/// A concurrency limit (`tenlives_engine::bulkhead::Bulkhead`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BulkheadSpec {
    /// The configuration this one inherits from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_config: Option<String>,
    /// Calls allowed in flight at once (required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// A bulkhead's validated configuration: its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BulkheadConfig {
    /// Calls allowed in flight at once.
    pub limit: u32,
}

impl Spec for BulkheadSpec {
    type Built = BulkheadConfig;
    const SECTION: &'static str = "bulkhead";

    fn base_config(&self) -> Option<&str> {
        self.base_config.as_deref()
    }

    fn inherit(&self, parent: &Self) -> Self {
        inherit!(self, parent; limit)
    }

    fn build(&self) -> Result<BulkheadConfig, SpecError> {
        let limit = self.limit.ok_or(SpecError {
            key: None,
            kind: SpecErrorKind::Missing("limit"),
        })?;
        // The engine's own check: a throwaway bulkhead refuses what
        // `Bulkhead::set_limit` would refuse.
        tenlives_engine::bulkhead::Bulkhead::new(limit)
            .map_err(engine(|f| (f == "limit").then_some("limit")))?;
        Ok(BulkheadConfig { limit })
    }
}

/// A retry budget (`tenlives_engine::retry::RetryBudgetConfig`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetSpec {
    /// The configuration this one inherits from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_config: Option<String>,
    /// Retries allowed as a fraction of requests (`0.2` = 20 %).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// Retries allowed per second regardless of traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_per_second: Option<u32>,
    /// The window requests and retries are counted over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<Dur>,
    /// Buckets the window is split into.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_buckets: Option<u32>,
}

impl Spec for RetryBudgetSpec {
    type Built = RetryBudgetConfig;
    const SECTION: &'static str = "retry_budget";

    fn base_config(&self) -> Option<&str> {
        self.base_config.as_deref()
    }

    fn inherit(&self, parent: &Self) -> Self {
        inherit!(self, parent; ratio, min_per_second, window, window_buckets)
    }

    fn build(&self) -> Result<RetryBudgetConfig, SpecError> {
        let map = |f: &str| -> Option<&'static str> {
            Some(match f {
                "ratio" | "ratio_ppm" => "ratio",
                "min_per_second" | "min_per_second * window" => "min_per_second",
                "window" => "window",
                "buckets" => "window_buckets",
                _ => return None,
            })
        };
        let defaults = RetryBudgetConfig::default();
        let mut b = RetryBudgetConfig::builder();
        if let Some(r) = self.ratio {
            b = b.ratio(r);
        }
        if let Some(n) = self.min_per_second {
            b = b.min_per_second(n);
        }
        if self.window.is_some() || self.window_buckets.is_some() {
            b = b.window(
                self.window.map_or(defaults.window(), |d| d.0),
                self.window_buckets.unwrap_or(defaults.buckets()),
            );
        }
        b.build().map_err(engine(map))
    }
}

/// A client-side throttle (`tenlives_engine::throttle::ThrottleConfig`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ThrottleSpec {
    /// The configuration this one inherits from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_config: Option<String>,
    /// Accepted requests times `k` may be sent before throttling starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k: Option<f64>,
    /// The window requests are counted over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<Dur>,
    /// Buckets the window is split into.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_buckets: Option<u32>,
    /// Requests the window must hold before throttling can start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum_requests: Option<u32>,
    /// The seed of the throttle's random draws.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl Spec for ThrottleSpec {
    type Built = ThrottleConfig;
    const SECTION: &'static str = "throttle";

    fn base_config(&self) -> Option<&str> {
        self.base_config.as_deref()
    }

    fn inherit(&self, parent: &Self) -> Self {
        inherit!(self, parent; k, window, window_buckets, minimum_requests, seed)
    }

    fn build(&self) -> Result<ThrottleConfig, SpecError> {
        let map = |f: &str| -> Option<&'static str> {
            Some(match f {
                "k" => "k",
                "window" | "window length" => "window",
                "buckets" | "window buckets" => "window_buckets",
                "minimum_requests" => "minimum_requests",
                _ => return None,
            })
        };
        let mut b = ThrottleConfig::builder();
        if let Some(k) = self.k {
            b = b.k(k);
        }
        if self.window.is_some() || self.window_buckets.is_some() {
            b = b.window(
                // The engine's defaults: a minute in 12 buckets.
                self.window.map_or(Duration::from_secs(60), |d| d.0),
                self.window_buckets.unwrap_or(12),
            );
        }
        if let Some(n) = self.minimum_requests {
            b = b.minimum_requests(n);
        }
        if let Some(s) = self.seed {
            b = b.seed(s);
        }
        b.build().map_err(engine(map))
    }
}

/// An adaptive concurrency limit moved by AIMD
/// (`tenlives_engine::adaptive::{AdaptiveLimiter, Aimd}`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveLimitSpec {
    /// The configuration this one inherits from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_config: Option<String>,
    /// The lowest limit (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_limit: Option<u32>,
    /// The limit a new limiter starts at (default 20).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_limit: Option<u32>,
    /// The highest limit (default 1000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_limit: Option<u32>,
    /// Added to the limit after a good window (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub increase: Option<u32>,
    /// The limit is multiplied by this after a bad window, in (0, 1) (default 0.9).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff: Option<f64>,
    /// A window whose mean round trip exceeds this is bad (default 1s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_threshold: Option<Dur>,
    /// How long a window of samples lasts (default 1s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<Dur>,
    /// Samples a window needs before it is judged (default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<u32>,
}

/// An adaptive limit's validated configuration.
#[derive(Clone, Debug)]
pub struct AdaptiveLimitConfig {
    /// The algorithm, with its bounds.
    pub algorithm: Aimd,
    /// The sampling window.
    pub window: WindowConfig,
}

impl Spec for AdaptiveLimitSpec {
    type Built = AdaptiveLimitConfig;
    const SECTION: &'static str = "adaptive_limit";

    fn base_config(&self) -> Option<&str> {
        self.base_config.as_deref()
    }

    fn inherit(&self, parent: &Self) -> Self {
        inherit!(self, parent; min_limit, initial_limit, max_limit, increase, backoff,
            latency_threshold, window, min_samples)
    }

    fn build(&self) -> Result<AdaptiveLimitConfig, SpecError> {
        let map = |f: &str| -> Option<&'static str> {
            Some(match f {
                "min_limit" => "min_limit",
                "max_limit" => "max_limit",
                f if f.starts_with("initial_limit") => "initial_limit",
                "increase" => "increase",
                "backoff" => "backoff",
                "latency_threshold" => "latency_threshold",
                "window length" => "window",
                "min_samples" => "min_samples",
                _ => return None,
            })
        };
        // The engine's AIMD defaults (`Aimd::builder`); the window's are
        // this crate's: a second, 10 samples.
        let mut b = Aimd::builder();
        if self.min_limit.is_some() || self.initial_limit.is_some() || self.max_limit.is_some() {
            b = b.limits(
                self.min_limit.unwrap_or(1),
                self.initial_limit.unwrap_or(20),
                self.max_limit.unwrap_or(1000),
            );
        }
        if let Some(n) = self.increase {
            b = b.increase(n);
        }
        if let Some(r) = self.backoff {
            b = b.backoff(r);
        }
        if let Some(d) = self.latency_threshold {
            b = b.latency_threshold(d.0);
        }
        let algorithm = b.build().map_err(engine(map))?;
        let window = WindowConfig::new(
            self.window.map_or(Duration::from_secs(1), |d| d.0),
            self.min_samples.unwrap_or(10),
        )
        .map_err(engine(map))?;
        Ok(AdaptiveLimitConfig { algorithm, window })
    }
}

/// What an admission queue does when full, as written in a file.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OverloadSpec {
    /// `shed_newest`: the newcomer is refused.
    ShedNewest,
    /// `shed_oldest`: the longest waiter is shed.
    ShedOldest,
    /// `shed_lowest_priority`: the newest waiter of the lowest-weight class
    /// is shed.
    ShedLowestPriority,
}

impl From<OverloadSpec> for Overload {
    fn from(o: OverloadSpec) -> Overload {
        match o {
            OverloadSpec::ShedNewest => Overload::ShedNewest,
            OverloadSpec::ShedOldest => Overload::ShedOldest,
            OverloadSpec::ShedLowestPriority => Overload::ShedLowestPriority,
        }
    }
}

/// An admission queue (`tenlives_engine::queue::QueueConfig`) in front of a
/// concurrency limit of its own, and how long a request waits in it (the
/// `tenlives_tokio::queue::AdmissionQueueLayer`'s `max_wait`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdmissionQueueSpec {
    /// The configuration this one inherits from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_config: Option<String>,
    /// Calls allowed in flight at once, the permits the queue hands out
    /// (required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Waiters held at most, all classes together (required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// Classes served in turn, one grant each per round (excludes
    /// `weights`; default 1: FIFO).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classes: Option<u16>,
    /// One class per weight, served by deficit round robin (excludes
    /// `classes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<Vec<u32>>,
    /// What happens when full: `shed_newest` (default), `shed_oldest`,
    /// `shed_lowest_priority`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overload: Option<OverloadSpec>,
    /// The longest a request waits for a permit (required; `0s` never
    /// waits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_wait: Option<Dur>,
}

/// An admission queue's validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdmissionQueueConfig {
    /// Calls allowed in flight at once.
    pub limit: u32,
    /// The queue: capacity, classes and weights, overload policy.
    pub queue: QueueConfig,
    /// The longest a request waits for a permit.
    pub max_wait: Duration,
}

impl Spec for AdmissionQueueSpec {
    type Built = AdmissionQueueConfig;
    const SECTION: &'static str = "admission_queue";

    fn base_config(&self) -> Option<&str> {
        self.base_config.as_deref()
    }

    fn inherit(&self, parent: &Self) -> Self {
        let mut out = inherit!(self, parent; limit, capacity, classes, weights, overload, max_wait);
        // The classes are one setting: an entry that sets either form
        // replaces the inherited classes.
        if self.classes.is_some() || self.weights.is_some() {
            out.classes = self.classes;
            out.weights = self.weights.clone();
        }
        out
    }

    fn build(&self) -> Result<AdmissionQueueConfig, SpecError> {
        let map = |f: &str| -> Option<&'static str> {
            Some(match f {
                "limit" => "limit",
                "capacity" => "capacity",
                "classes" => "classes",
                "weight" => "weights",
                _ => return None,
            })
        };
        let missing = |key| SpecError {
            key: None,
            kind: SpecErrorKind::Missing(key),
        };
        let limit = self.limit.ok_or_else(|| missing("limit"))?;
        // The engine's own check, as for a bulkhead.
        tenlives_engine::bulkhead::Bulkhead::new(limit).map_err(engine(map))?;
        let capacity = self.capacity.ok_or_else(|| missing("capacity"))?;
        let max_wait = self.max_wait.ok_or_else(|| missing("max_wait"))?.0;
        let queue = match (self.classes, &self.weights) {
            (Some(_), Some(_)) => {
                return Err(SpecError {
                    key: Some("weights"),
                    kind: SpecErrorKind::Conflict("`classes` and `weights` exclude each other"),
                });
            }
            (Some(n), None) => QueueConfig::round_robin(capacity, n),
            (None, Some(w)) => QueueConfig::weighted(capacity, w),
            (None, None) => QueueConfig::fifo(capacity),
        }
        .map_err(engine(map))?;
        let queue = queue.overload(self.overload.map_or(Overload::ShedNewest, Overload::from));
        Ok(AdmissionQueueConfig {
            limit,
            queue,
            max_wait,
        })
    }
}

/// A stack (`tenlives_tokio::StackLayer`): a timeout and the policies of
/// the registry it admits through, by name.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StackSpec {
    /// The configuration this one inherits from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_config: Option<String>,
    /// The whole request must end within this, or `off`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<OrOff<Dur>>,
    /// The `circuit_breaker` instance it admits through, or `off`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<OrOff<String>>,
    /// The `rate_limiter` instance it admits through, or `off`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<OrOff<String>>,
    /// The `bulkhead` instance that limits its concurrency, or `off`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bulkhead: Option<OrOff<String>>,
    /// The `retry_budget` instance its retries withdraw from, or `off` (no
    /// retries). Several stacks naming one budget share it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<OrOff<String>>,
    /// The first retry's wait bound, default 50 ms: each wait is drawn
    /// between this and three times the previous one ("decorrelated
    /// jitter"), at most `retry_backoff_cap`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_backoff: Option<Dur>,
    /// The longest wait between attempts, default 1 s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_backoff_cap: Option<Dur>,
    /// Retries per request at most, default 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// How a stack retries: through a named retry budget of the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackRetryConfig {
    /// The retry budget, by name.
    pub budget: String,
    /// The first wait's bound (see [`StackSpec::retry_backoff`]).
    pub backoff: Duration,
    /// The longest wait.
    pub backoff_cap: Duration,
    /// Retries per request at most.
    pub max_retries: u32,
}

impl StackRetryConfig {
    /// The backoff schedule: decorrelated jitter from `backoff` to
    /// `backoff_cap`, at most `max_retries` retries.
    pub fn schedule(&self) -> Result<Backoff, ConfigError> {
        Ok(
            Backoff::decorrelated_jitter(self.backoff, self.backoff_cap)?
                .with_max_retries(self.max_retries),
        )
    }
}

/// A stack's validated shape: which stages, and the policies' names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StackConfig {
    /// The timeout of the whole request.
    pub timeout: Option<Duration>,
    /// The circuit breaker, by name.
    pub circuit_breaker: Option<String>,
    /// The rate limiter, by name.
    pub rate_limiter: Option<String>,
    /// The concurrency limit (bulkhead), by name.
    pub bulkhead: Option<String>,
    /// Its retries, if it retries.
    pub retry: Option<StackRetryConfig>,
}

fn named(v: &Option<OrOff<String>>) -> Option<String> {
    match v {
        Some(OrOff::On(name)) => Some(name.clone()),
        _ => None,
    }
}

impl Spec for StackSpec {
    type Built = StackConfig;
    const SECTION: &'static str = "stack";

    fn base_config(&self) -> Option<&str> {
        self.base_config.as_deref()
    }

    fn inherit(&self, parent: &Self) -> Self {
        inherit!(self, parent; timeout, circuit_breaker, rate_limiter, bulkhead, retry_budget, retry_backoff, retry_backoff_cap, max_retries)
    }

    fn build(&self) -> Result<StackConfig, SpecError> {
        let timeout = match self.timeout {
            Some(OrOff::On(d)) if d.0.is_zero() => {
                return Err(SpecError {
                    key: Some("timeout"),
                    kind: SpecErrorKind::Config(ConfigError::ZeroDuration { field: "timeout" }),
                });
            }
            Some(OrOff::On(d)) => Some(d.0),
            _ => None,
        };
        let retry = match named(&self.retry_budget) {
            Some(budget) => {
                let retry = StackRetryConfig {
                    budget,
                    backoff: self
                        .retry_backoff
                        .map_or(Duration::from_millis(50), |d| d.0),
                    backoff_cap: self
                        .retry_backoff_cap
                        .map_or(Duration::from_secs(1), |d| d.0),
                    max_retries: self.max_retries.unwrap_or(2),
                };
                retry.schedule().map_err(engine(|field| match field {
                    "base" => Some("retry_backoff"),
                    "cap" => Some("retry_backoff_cap"),
                    _ => None,
                }))?;
                Some(retry)
            }
            None => None,
        };
        let out = StackConfig {
            timeout,
            circuit_breaker: named(&self.circuit_breaker),
            rate_limiter: named(&self.rate_limiter),
            bulkhead: named(&self.bulkhead),
            retry,
        };
        if out == StackConfig::default() {
            // Also what keeps a name the file does not list from getting an
            // empty stack: there is no default stack without a
            // `configs.default`.
            return Err(SpecError {
                key: None,
                kind: SpecErrorKind::Conflict(
                    "a stack needs at least one stage: `timeout`, `circuit_breaker`, `rate_limiter`, `bulkhead` or `retry_budget`",
                ),
            });
        }
        Ok(out)
    }
}
