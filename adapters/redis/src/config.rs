//! What a fleet-wide rate limit is configured with, and the failure policy.

use core::fmt;
use core::time::Duration;
use std::sync::Arc;

use tenlives_engine::ConfigError;
use tenlives_engine::breaker::BreakerConfig;
use tenlives_engine::events::{EventRing, Slot};
use tenlives_engine::rate::Quota;

use crate::key::BadName;

/// The event ring type a limiter can report into.
pub type Ring = EventRing<Box<[Slot]>>;

/// What a process decides when it cannot reach Redis (the breaker is open,
/// a call failed or timed out) and its lease is spent or expired.
///
/// Tokens of a lease still valid are always spent first: they were granted
/// by Redis. Every decision taken under the policy instead is a *degraded
/// decision*: counted ([`FleetStats::degraded_admitted`](crate::FleetStats),
/// [`degraded_refused`](crate::FleetStats)) and reported as an
/// [`REDIS_DEGRADED`](crate::REDIS_DEGRADED) event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Admit every request: availability over the quota.
    FailOpen,
    /// Refuse every request: the quota over availability.
    FailClosed,
    /// Keep spending the last lease (past its expiry: its tokens were
    /// granted), then decide locally with the engine limiter on
    /// `quota / expected_instances` (rate and burst, each at least 1).
    #[default]
    Degraded,
}

impl FailurePolicy {
    /// The code carried in events: 1 fail open, 2 fail closed, 3 degraded.
    pub fn code(self) -> u64 {
        match self {
            FailurePolicy::FailOpen => 1,
            FailurePolicy::FailClosed => 2,
            FailurePolicy::Degraded => 3,
        }
    }
}

/// The configuration of a [`FleetRateLimiter`](crate::FleetRateLimiter).
///
/// Every process sharing a quota must use the same name, prefix and quota;
/// the other settings are per process.
#[derive(Clone)]
pub struct FleetConfig {
    pub(crate) name: String,
    pub(crate) prefix: String,
    pub(crate) quota: Quota,
    pub(crate) lease_duration: Duration,
    pub(crate) refresh_interval: Duration,
    pub(crate) max_share: f64,
    pub(crate) initial_lease: Option<u32>,
    pub(crate) expected_instances: u32,
    pub(crate) policy: FailurePolicy,
    pub(crate) redis_timeout: Duration,
    pub(crate) breaker: Option<BreakerConfig>,
    pub(crate) events: Option<Arc<Ring>>,
    pub(crate) source: u32,
}

impl fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetConfig")
            .field("name", &self.name)
            .field("prefix", &self.prefix)
            .field("quota", &self.quota)
            .field("lease_duration", &self.lease_duration)
            .field("refresh_interval", &self.refresh_interval)
            .field("max_share", &self.max_share)
            .field("expected_instances", &self.expected_instances)
            .field("policy", &self.policy)
            .field("redis_timeout", &self.redis_timeout)
            .finish_non_exhaustive()
    }
}

impl FleetConfig {
    /// The quota `name`, shared by every process that uses the same name:
    /// `quota.rate()` tokens per `quota.period()` with bursts of
    /// `quota.burst()`, fleet-wide. Defaults: prefix `tenlives`, leases
    /// valid 2 s, refreshed every 100 ms, a process holds at most the whole
    /// burst (`max_share` 1.0), one expected instance, policy
    /// [`FailurePolicy::Degraded`], Redis calls time out after 100 ms, and
    /// the breaker opens after 3 consecutive failed calls for 500 ms.
    pub fn new(name: impl Into<String>, quota: Quota) -> Self {
        FleetConfig {
            name: name.into(),
            prefix: "tenlives".to_owned(),
            quota,
            lease_duration: Duration::from_secs(2),
            refresh_interval: Duration::from_millis(100),
            max_share: 1.0,
            initial_lease: None,
            expected_instances: 1,
            policy: FailurePolicy::Degraded,
            redis_timeout: Duration::from_millis(100),
            breaker: None,
            events: None,
            source: 0,
        }
    }

    /// The key prefix (default `tenlives`); see [`key`](crate::key).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a lease stays valid after the call that granted or renewed
    /// it started (default 2 s). Unused tokens go back when it expires.
    pub fn lease_duration(mut self, d: Duration) -> Self {
        self.lease_duration = d;
        self
    }

    /// How often the background task tops the lease up (default 100 ms).
    /// Must be shorter than the lease duration.
    pub fn refresh_interval(mut self, d: Duration) -> Self {
        self.refresh_interval = d;
        self
    }

    /// The largest share of the burst one process may hold at once, in
    /// `(0, 1]` (default 1.0): the largest lease is `max(1, floor(share ·
    /// burst))` tokens, and the process's own engine limiter admits at most
    /// `ceil(share · rate)` per period.
    pub fn max_share(mut self, share: f64) -> Self {
        self.max_share = share;
        self
    }

    /// The size of the first lease, before any rate is known (default a
    /// quarter of the largest lease, at least 1).
    pub fn initial_lease(mut self, tokens: u32) -> Self {
        self.initial_lease = Some(tokens);
        self
    }

    /// How many processes are expected to share the quota (default 1): the
    /// degraded policy's local quota is the global one divided by it.
    pub fn expected_instances(mut self, n: u32) -> Self {
        self.expected_instances = n;
        self
    }

    /// What to decide when Redis cannot be reached (default
    /// [`FailurePolicy::Degraded`]).
    pub fn policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The timeout of each Redis call, on top of the connection's own
    /// (default 100 ms).
    pub fn redis_timeout(mut self, d: Duration) -> Self {
        self.redis_timeout = d;
        self
    }

    /// The breaker Redis calls go through.
    pub fn breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = Some(config);
        self
    }

    /// Reports degraded decisions and Redis availability changes to `ring`,
    /// tagged with `source`.
    pub fn events(mut self, ring: Arc<Ring>, source: u32) -> Self {
        self.events = Some(ring);
        self.source = source;
        self
    }

    /// The quota.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// The largest lease, in tokens.
    pub fn max_lease(&self) -> u32 {
        let burst = f64::from(self.quota.burst());
        ((self.max_share * burst).floor() as u32).clamp(1, self.quota.burst())
    }

    pub(crate) fn validate(&self) -> Result<(), FleetError> {
        if !(self.max_share > 0.0 && self.max_share <= 1.0) {
            return Err(ConfigError::InvalidFraction {
                field: "max_share (in (0, 1])",
                value: self.max_share,
            }
            .into());
        }
        if self.expected_instances == 0 {
            return Err(ConfigError::Zero {
                field: "expected_instances",
            }
            .into());
        }
        validate_timing(
            ("lease_duration", self.lease_duration),
            self.refresh_interval,
            self.redis_timeout,
            "refresh_interval (must be shorter than lease_duration)",
            true,
        )
    }
}

/// Checks the timings a fleet limiter and a fleet semaphore share: the lease
/// (named `lease_field`), the refresh interval and the Redis timeout are not
/// zero, and the refresh comes before the lease lapses. A lease the caller
/// cannot carry (`lease_fits` false) is refused with the same error as one
/// shorter than the refresh, named `too_large_field`.
pub(crate) fn validate_timing(
    (lease_field, lease): (&'static str, Duration),
    refresh_interval: Duration,
    redis_timeout: Duration,
    too_large_field: &'static str,
    lease_fits: bool,
) -> Result<(), FleetError> {
    for (field, d) in [
        (lease_field, lease),
        ("refresh_interval", refresh_interval),
        ("redis_timeout", redis_timeout),
    ] {
        if d.is_zero() {
            return Err(ConfigError::ZeroDuration { field }.into());
        }
    }
    if refresh_interval >= lease || !lease_fits {
        return Err(ConfigError::TooLarge {
            field: too_large_field,
            value: u64::try_from(refresh_interval.as_nanos()).unwrap_or(u64::MAX),
            max: u64::try_from(lease.as_nanos()).unwrap_or(u64::MAX),
        }
        .into());
    }
    Ok(())
}

/// Why a limiter could not be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum FleetError {
    /// A setting is out of range.
    Config(ConfigError),
    /// The name or prefix cannot make a cluster-safe key.
    Name(BadName),
    /// The Redis client could not be set up (not: Redis is down — that is
    /// the failure policy's business).
    Redis(redis::RedisError),
}

impl fmt::Display for FleetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FleetError::Config(e) => write!(f, "fleet quota configuration: {e}"),
            FleetError::Name(e) => e.fmt(f),
            FleetError::Redis(e) => write!(f, "redis client: {e}"),
        }
    }
}

impl std::error::Error for FleetError {}

impl From<ConfigError> for FleetError {
    fn from(e: ConfigError) -> Self {
        FleetError::Config(e)
    }
}

impl From<BadName> for FleetError {
    fn from(e: BadName) -> Self {
        FleetError::Name(e)
    }
}

impl From<redis::RedisError> for FleetError {
    fn from(e: redis::RedisError) -> Self {
        FleetError::Redis(e)
    }
}
