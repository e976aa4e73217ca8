//! The fleet-wide concurrency limit: a semaphore of `limit` permits shared
//! through Redis, each process holding a leased share with a TTL, spent on
//! the request path through the engine's own `Bulkhead`.
//!
//! # In Redis
//!
//! Two keys with one hash tag (one cluster slot): `prefix:{name}:sem`, a
//! hash from holder id to the permits it holds, and `prefix:{name}:sem:ttl`,
//! a sorted set from holder id to the instant (Redis `TIME`, µs) its claim
//! lapses. Every script call first drops the lapsed holders — so the permits
//! of a crashed process come back by themselves, `ttl` after its last call —
//! then sets the caller's claim: a shrink is always granted, a growth up to
//! what the other live holders leave free (never below what the caller
//! already holds). The sum of the live claims therefore never exceeds
//! `limit`. Both keys expire with the longest-lived claim.
//!
//! # In the process
//!
//! The leased permits are the limit of an engine [`Bulkhead`] (plus one
//! permit the limiter holds itself, because a bulkhead's limit is at least
//! 1). A request takes a bulkhead permit: one compare-and-swap, no network.
//! The task keeps the claim in Redis at least what is in use:
//!
//! - to grow, it asks Redis first and raises the bulkhead's limit to what was
//!   granted;
//! - to shrink, it lowers the bulkhead's limit first (new grants stop above
//!   it; permits held are never revoked) and then claims
//!   `max(new limit, in use)` in Redis.
//!
//! The local lease is valid until the call that renewed it started plus the
//! TTL — before Redis's own deadline for the claim, which starts later. Past
//! it (Redis unreachable), the failure policy decides.

use core::fmt;
use core::time::Duration;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use prometheus_client::metrics::counter::Counter;
use redis::aio::ConnectionManagerConfig;
use redis::{Client, Script};
use tenlives_engine::ConfigError;
use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker};
use tenlives_engine::bulkhead::{Bulkhead, BulkheadPermit, RawBulkheadPermit};
use tenlives_engine::time::{Clock, MonotonicClock, Timestamp};
use tokio::sync::Notify;

use crate::background::{Background, Conn, next_refresh};
use crate::config::{FailurePolicy, FleetError, Ring, validate_timing};
use crate::key::semaphore_keys;
use crate::limiter::{REDIS_RECOVERED, REDIS_UNAVAILABLE};
use crate::reports::Reports;

/// The Lua source of the semaphore script. `KEYS`: the holders hash and
/// the lapse sorted set. `ARGV`: `limit`, holder id, permits to hold, TTL
/// in ms. Returns `{held, total held by live holders, now_µs}`.
pub const SEMAPHORE_SCRIPT: &str = r#"
local function int(v)
  local n = tonumber(v)
  if n == nil or n ~= math.floor(n) or n < 0 or n > 9007199254740991 then return nil end
  return n
end
local limit, holder, want, ttl = int(ARGV[1]), ARGV[2], int(ARGV[3]), int(ARGV[4])
if not (limit and want and ttl) or limit < 1 or ttl < 1 or want > limit or holder == nil or holder == '' then
  return redis.error_reply('ERR tenlives: bad arguments')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local nows = string.format('%.0f', now)
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', nows)
for _, h in ipairs(dead) do redis.call('HDEL', KEYS[1], h) end
if #dead > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', nows) end
local all = redis.call('HGETALL', KEYS[1])
local total, cur = 0, 0
for i = 1, #all, 2 do
  local n = int(all[i + 1])
  if n == nil then return redis.error_reply('ERR tenlives: malformed state in ' .. KEYS[1]) end
  total = total + n
  if all[i] == holder then cur = n end
end
local free = limit - (total - cur)
if free < 0 then free = 0 end
local new = want
if want > cur then
  local most = cur
  if free > most then most = free end
  if new > most then new = most end
end
if new == 0 then
  redis.call('HDEL', KEYS[1], holder)
  redis.call('ZREM', KEYS[2], holder)
else
  redis.call('HSET', KEYS[1], holder, string.format('%.0f', new))
  redis.call('ZADD', KEYS[2], string.format('%.0f', now + ttl * 1000), holder)
end
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if last[2] then
  local ms = string.format('%.0f', math.floor((tonumber(last[2]) - now) / 1000) + 1)
  redis.call('PEXPIRE', KEYS[1], ms)
  redis.call('PEXPIRE', KEYS[2], ms)
else
  redis.call('DEL', KEYS[1], KEYS[2])
end
return {new, total - cur + new, now}
"#;

/// The semaphore script, for `EVALSHA` with the `EVAL` fallback.
pub fn semaphore_script() -> Script {
    Script::new(SEMAPHORE_SCRIPT)
}

/// The configuration of a [`FleetSemaphore`].
#[derive(Clone)]
pub struct SemaphoreConfig {
    name: String,
    prefix: String,
    limit: u32,
    max_share: u32,
    ttl: Duration,
    refresh_interval: Duration,
    expected_instances: u32,
    policy: FailurePolicy,
    redis_timeout: Duration,
    breaker: Option<BreakerConfig>,
    events: Option<Arc<Ring>>,
    source: u32,
}

impl fmt::Debug for SemaphoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphoreConfig")
            .field("name", &self.name)
            .field("limit", &self.limit)
            .field("max_share", &self.max_share)
            .field("ttl", &self.ttl)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl SemaphoreConfig {
    /// At most `limit` permits in use across the fleet under `name`.
    /// Defaults: prefix `tenlives`, a process may hold all of them, claims
    /// lapse 2 s after their last renewal, refreshed every 100 ms, one
    /// expected instance, [`FailurePolicy::Degraded`], 100 ms Redis timeout.
    pub fn new(name: impl Into<String>, limit: u32) -> Self {
        SemaphoreConfig {
            name: name.into(),
            prefix: "tenlives".to_owned(),
            limit,
            max_share: limit,
            ttl: Duration::from_secs(2),
            refresh_interval: Duration::from_millis(100),
            expected_instances: 1,
            policy: FailurePolicy::Degraded,
            redis_timeout: Duration::from_millis(100),
            breaker: None,
            events: None,
            source: 0,
        }
    }

    /// The key prefix (default `tenlives`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The most permits one process holds (default: the whole limit).
    pub fn max_share(mut self, permits: u32) -> Self {
        self.max_share = permits;
        self
    }

    /// How long a claim lives in Redis after the call that renewed it
    /// (default 2 s): the time a crashed process's permits take to come back.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How often the claim is renewed and resized (default 100 ms); must be
    /// shorter than the TTL.
    pub fn refresh_interval(mut self, d: Duration) -> Self {
        self.refresh_interval = d;
        self
    }

    /// Processes expected to share the limit: the degraded policy's local
    /// limit is `limit / expected_instances` (at least 1).
    pub fn expected_instances(mut self, n: u32) -> Self {
        self.expected_instances = n;
        self
    }

    /// What to decide once the lease lapsed with Redis unreachable.
    pub fn policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The timeout of each Redis call (default 100 ms).
    pub fn redis_timeout(mut self, d: Duration) -> Self {
        self.redis_timeout = d;
        self
    }

    /// The breaker Redis calls go through.
    pub fn breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = Some(config);
        self
    }

    /// Reports degraded decisions and availability changes to `ring`.
    pub fn events(mut self, ring: Arc<Ring>, source: u32) -> Self {
        self.events = Some(ring);
        self.source = source;
        self
    }

    fn validate(&self) -> Result<(), FleetError> {
        for (field, v) in [
            ("limit", self.limit),
            ("max_share", self.max_share),
            ("expected_instances", self.expected_instances),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero { field }.into());
            }
        }
        // The bulkhead holds the lease plus one permit of the limiter's own.
        if self.limit == u32::MAX {
            return Err(ConfigError::TooLarge {
                field: "limit",
                value: u64::from(self.limit),
                max: u64::from(u32::MAX - 1),
            }
            .into());
        }
        validate_timing(
            ("ttl", self.ttl),
            self.refresh_interval,
            self.redis_timeout,
            "refresh_interval (must be shorter than the ttl)",
            self.ttl.as_millis() <= u128::from(u32::MAX),
        )
    }
}

/// A permit of a [`FleetSemaphore`]; the permit goes back when it is
/// dropped.
#[must_use = "the permit is released when dropped"]
pub enum FleetPermit<'a> {
    /// One of the permits leased from Redis.
    Leased(BulkheadPermit<'a>),
    /// Redis unreachable and the lease lapsed: one of the local
    /// `limit / expected_instances` ([`FailurePolicy::Degraded`]).
    Fallback(BulkheadPermit<'a>),
    /// Redis unreachable and the lease lapsed: [`FailurePolicy::FailOpen`].
    FailOpen,
}

impl fmt::Debug for FleetPermit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FleetPermit::Leased(_) => "FleetPermit::Leased",
            FleetPermit::Fallback(_) => "FleetPermit::Fallback",
            FleetPermit::FailOpen => "FleetPermit::FailOpen",
        })
    }
}

/// A permit of a [`FleetSemaphore`] that owns a handle on the semaphore's
/// state (an `Arc`, cloned without allocating), so it can outlive the
/// borrow, e.g. in a response future. The permit goes back when it is
/// dropped.
#[must_use = "the permit is released when dropped"]
pub struct OwnedFleetPermit {
    shared: Arc<SemShared>,
    kind: Owned,
}

enum Owned {
    Leased(Option<RawBulkheadPermit>),
    Fallback(Option<RawBulkheadPermit>),
    FailOpen,
}

impl OwnedFleetPermit {
    /// Whether the permit was granted under the failure policy (Redis
    /// unreachable and the lease lapsed).
    pub fn is_degraded(&self) -> bool {
        !matches!(self.kind, Owned::Leased(_))
    }
}

impl fmt::Debug for OwnedFleetPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            Owned::Leased(_) => "OwnedFleetPermit::Leased",
            Owned::Fallback(_) => "OwnedFleetPermit::Fallback",
            Owned::FailOpen => "OwnedFleetPermit::FailOpen",
        })
    }
}

impl Drop for OwnedFleetPermit {
    fn drop(&mut self) {
        match &mut self.kind {
            Owned::Leased(raw) => {
                if let Some(raw) = raw.take() {
                    self.shared.bulkhead.release(raw);
                }
            }
            Owned::Fallback(raw) => {
                if let Some(raw) = raw.take() {
                    self.shared.fallback.release(raw);
                }
            }
            Owned::FailOpen => {}
        }
    }
}

/// Why a [`FleetSemaphore`] refused a permit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SemaphoreRefused {
    /// The leased permits are all in use (Redis reachable): the fleet's
    /// limit, or this process's share of it, is in use.
    Full,
    /// Redis unreachable: the local degraded limit is in use.
    Fallback,
    /// Redis unreachable: [`FailurePolicy::FailClosed`].
    FailClosed,
}

impl fmt::Display for SemaphoreRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SemaphoreRefused::Full => "fleet-wide concurrency limit in use",
            SemaphoreRefused::Fallback => "redis unreachable, local degraded limit in use",
            SemaphoreRefused::FailClosed => "redis unreachable (fail closed)",
        })
    }
}

impl std::error::Error for SemaphoreRefused {}

/// A snapshot of a [`FleetSemaphore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SemaphoreStats {
    /// Permits this process's claim in Redis holds (its bulkhead's limit).
    pub leased: u32,
    /// Leased permits in use.
    pub in_use: u32,
    /// Whether the last Redis call succeeded.
    pub redis_available: bool,
    /// Requests refused because the leased permits were in use.
    pub starved: u64,
    /// Degraded decisions that admitted.
    pub degraded_admitted: u64,
    /// Degraded decisions that refused.
    pub degraded_refused: u64,
    /// Script calls made.
    pub redis_calls: u64,
    /// Script calls that failed, timed out or were refused by the breaker.
    pub redis_errors: u64,
}

struct Words {
    expiry: AtomicU64,
    available: AtomicBool,
}

struct SemShared {
    words: CachePadded<Words>,
    bulkhead: Bulkhead,
    /// The bulkhead permit the limiter holds itself (a bulkhead's limit is
    /// at least 1); released when the semaphore is freed.
    reserve: Option<RawBulkheadPermit>,
    fallback: Bulkhead,
    starved: CachePadded<AtomicU64>,
    reports: Reports,
    clock: MonotonicClock,
    policy: FailurePolicy,
    redis_calls: AtomicU64,
    redis_errors: AtomicU64,
    /// The refresh interval: when the claim is next renewed.
    interval: Duration,
}

impl Drop for SemShared {
    fn drop(&mut self) {
        if let Some(reserve) = self.reserve.take() {
            self.bulkhead.release(reserve);
        }
    }
}

impl SemShared {
    /// Leased permits: the bulkhead's limit less the reserve.
    fn leased(&self) -> u32 {
        self.bulkhead.limit() - 1
    }

    fn in_use(&self) -> u32 {
        self.bulkhead.in_flight().saturating_sub(1)
    }

    #[inline]
    fn degraded(&self, admitted: bool, code: u64, now: Timestamp) {
        self.reports.degraded(admitted, code, 0, now);
    }
}

/// A fleet-wide concurrency limit over Redis. See the
/// [module documentation](self).
pub struct FleetSemaphore {
    shared: Arc<SemShared>,
    background: Background,
}

impl fmt::Debug for FleetSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetSemaphore")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

struct SemRefresher {
    shared: Arc<SemShared>,
    conn: Conn,
    script: Script,
    keys: [String; 2],
    holder: String,
    limit: u32,
    max_share: u32,
    ttl: Duration,
    interval: Duration,
    timeout: Duration,
    breaker: CircuitBreaker,
    last_starved: u64,
}

/// A holder id unique to this semaphore: process id, a process-wide
/// counter and the wall-clock nanoseconds at creation.
fn holder_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // ordering: Relaxed; only uniqueness matters.
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{}-{n}-{nanos}", std::process::id())
}

impl FleetSemaphore {
    /// Builds the semaphore and its background task on the current tokio
    /// runtime and waits for the first claim (or the first failed call).
    ///
    /// # Errors
    ///
    /// [`FleetError`] for a bad configuration or name, or a client that
    /// cannot be set up.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn start(config: SemaphoreConfig, client: Client) -> Result<Self, FleetError> {
        config.validate()?;
        let keys = semaphore_keys(&config.prefix, &config.name)?;
        let conn_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.redis_timeout))
            .set_response_timeout(Some(config.redis_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(config.refresh_interval);
        let conn = Conn::new(client, conn_config)?;
        let bulkhead = Bulkhead::new(1)?;
        let reserve = bulkhead
            .try_acquire_raw()
            .map_err(|_| ConfigError::Zero { field: "limit" })?;
        let fallback = Bulkhead::new((config.limit / config.expected_instances).max(1))?;
        let shared = Arc::new(SemShared {
            words: CachePadded::new(Words {
                expiry: AtomicU64::new(0),
                available: AtomicBool::new(true),
            }),
            bulkhead,
            reserve: Some(reserve),
            fallback,
            starved: CachePadded::new(AtomicU64::new(0)),
            reports: Reports::new(config.events.clone(), config.source),
            clock: MonotonicClock::new(),
            policy: config.policy,
            redis_calls: AtomicU64::new(0),
            redis_errors: AtomicU64::new(0),
            interval: config.refresh_interval,
        });
        let mut refresher = SemRefresher {
            shared: Arc::clone(&shared),
            conn,
            script: semaphore_script(),
            keys,
            holder: holder_id(),
            limit: config.limit,
            max_share: config.max_share.min(config.limit),
            ttl: config.ttl,
            interval: config.refresh_interval,
            timeout: config.redis_timeout,
            breaker: CircuitBreaker::new(
                config
                    .breaker
                    .unwrap_or_else(crate::limiter::default_breaker),
            ),
            last_starved: 0,
        };
        refresher.refresh().await;
        Ok(FleetSemaphore {
            shared,
            background: Background::spawn(|stop| refresher.run(stop)),
        })
    }

    /// Takes one permit now, without waiting, allocating or touching the
    /// network; it goes back when the returned permit is dropped.
    ///
    /// # Errors
    ///
    /// [`SemaphoreRefused`]: the leased permits are in use, or Redis is
    /// unreachable, the lease lapsed and the failure policy refused.
    #[inline]
    pub fn try_acquire(&self) -> Result<FleetPermit<'_>, SemaphoreRefused> {
        let s = &*self.shared;
        let now = s.clock.now();
        // ordering: Relaxed; the permits themselves are decided by the
        // bulkhead's compare-and-swap; a stale expiry or availability only
        // moves one request to the other side of a concurrent change.
        let valid = now.as_nanos() < s.words.expiry.load(Ordering::Relaxed);
        let available = s.words.available.load(Ordering::Relaxed);
        if valid || available {
            if valid && let Ok(permit) = s.bulkhead.try_acquire() {
                return Ok(FleetPermit::Leased(permit));
            }
            if available {
                // ordering: Relaxed; a demand count read by the task.
                s.starved.fetch_add(1, Ordering::Relaxed);
                return Err(SemaphoreRefused::Full);
            }
        }
        match s.policy {
            FailurePolicy::FailOpen => {
                s.degraded(true, 4, now);
                Ok(FleetPermit::FailOpen)
            }
            FailurePolicy::FailClosed => {
                s.degraded(false, 5, now);
                Err(SemaphoreRefused::FailClosed)
            }
            FailurePolicy::Degraded => match s.fallback.try_acquire() {
                Ok(permit) => {
                    s.degraded(true, 2, now);
                    Ok(FleetPermit::Fallback(permit))
                }
                Err(_) => {
                    s.degraded(false, 3, now);
                    Err(SemaphoreRefused::Fallback)
                }
            },
        }
    }

    /// [`try_acquire`](Self::try_acquire) with a permit that owns a handle
    /// on the semaphore's state instead of borrowing it (one reference
    /// count increment; no allocation).
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](Self::try_acquire).
    #[inline]
    pub fn try_acquire_owned(&self) -> Result<OwnedFleetPermit, SemaphoreRefused> {
        let kind = match self.try_acquire()? {
            FleetPermit::Leased(p) => Owned::Leased(Some(p.into_raw())),
            FleetPermit::Fallback(p) => Owned::Fallback(Some(p.into_raw())),
            FleetPermit::FailOpen => Owned::FailOpen,
        };
        Ok(OwnedFleetPermit {
            shared: Arc::clone(&self.shared),
            kind,
        })
    }

    /// How long after any refusal trying again may help: the refresh
    /// interval, when the claim is next renewed (a permit released in this
    /// process may come sooner).
    pub fn retry_after(&self) -> Duration {
        self.shared.interval
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SemaphoreStats {
        let s = &*self.shared;
        // ordering: Relaxed throughout; a snapshot.
        SemaphoreStats {
            leased: s.leased(),
            in_use: s.in_use(),
            redis_available: s.words.available.load(Ordering::Relaxed),
            starved: s.starved.load(Ordering::Relaxed),
            degraded_admitted: s.reports.degraded_admitted.get(),
            degraded_refused: s.reports.degraded_refused.get(),
            redis_calls: s.redis_calls.load(Ordering::Relaxed),
            redis_errors: s.redis_errors.load(Ordering::Relaxed),
        }
    }

    /// The degraded decisions that admitted, as a Prometheus counter.
    pub fn degraded_admitted_counter(&self) -> Counter {
        self.shared.reports.degraded_admitted.clone()
    }

    /// The degraded decisions that refused, as a Prometheus counter.
    pub fn degraded_refused_counter(&self) -> Counter {
        self.shared.reports.degraded_refused.clone()
    }

    /// Stops the background task after it shrank the claim in Redis to the
    /// permits still in use (zero when none are), waits for it, and returns
    /// the final view.
    pub async fn shutdown(mut self) -> SemaphoreStats {
        self.background.shutdown().await;
        self.stats()
    }
}

impl SemRefresher {
    async fn run(mut self, stop: Arc<Notify>) {
        while next_refresh(self.interval, &stop).await {
            self.refresh().await;
        }
        // Give back every permit not in use.
        let now = self.shared.clock.now();
        let _ = self.shared.bulkhead.set_limit(1);
        let claim = self.shared.in_use();
        let _ = self.call(claim, now).await;
    }

    /// Sizes the claim: what is in use, plus the requests refused for want
    /// of a permit since the last refresh (at least one spare), within the
    /// process's share.
    fn target(&mut self) -> u32 {
        // ordering: Relaxed; a count.
        let starved = self.shared.starved.load(Ordering::Relaxed);
        let demand = starved.saturating_sub(self.last_starved);
        self.last_starved = starved;
        let spare = u32::try_from(demand).unwrap_or(u32::MAX).max(1);
        self.shared
            .in_use()
            .saturating_add(spare)
            .min(self.max_share)
    }

    async fn refresh(&mut self) {
        let now = self.shared.clock.now();
        let target = self.target();
        let leased = self.shared.leased();
        // ordering: Relaxed; the task is the only writer of the expiry.
        let valid = now.as_nanos() < self.shared.words.expiry.load(Ordering::Relaxed);
        let claim = if target < leased && (leased > 2 * target || !valid) {
            // Shrink: stop local grants above the target first, then claim
            // what is in use at least.
            let _ = self.shared.bulkhead.set_limit(target + 1);
            target.max(self.shared.in_use())
        } else {
            target.max(leased)
        };
        self.call(claim, now).await;
    }

    /// One script call through the breaker and the timeout, setting the
    /// claim to `want`; applies the answer (or the failure).
    async fn call(&mut self, want: u32, now: Timestamp) {
        let want = want.min(self.limit);
        let shared = Arc::clone(&self.shared);
        let reply = match self.breaker.try_acquire(now) {
            Err(_) => None,
            Ok(permit) => {
                // ordering: Relaxed; counts.
                shared.redis_calls.fetch_add(1, Ordering::Relaxed);
                let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
                let mut invocation = self.script.key(&self.keys[0]);
                invocation
                    .key(&self.keys[1])
                    .arg(self.limit)
                    .arg(&self.holder)
                    .arg(want)
                    .arg(ttl_ms);
                let answer = self.conn.invoke(&invocation, self.timeout).await;
                let held = match answer.as_deref() {
                    Some(&[held, _, _]) => u32::try_from(held).ok(),
                    _ => None,
                };
                let done = shared.clock.now();
                match held {
                    Some(_) => permit.success(done),
                    None => permit.failure(done),
                }
                held
            }
        };
        let words = &shared.words;
        match reply {
            Some(held) => {
                // The claim in Redis is `held`: the bulkhead may grant that
                // many (a shrink already lowered it; never above the claim).
                let _ = shared.bulkhead.set_limit(held + 1);
                // ordering: Relaxed; see `try_acquire`.
                words
                    .expiry
                    .store(now.saturating_add(self.ttl).as_nanos(), Ordering::Relaxed);
                if !words.available.swap(true, Ordering::Relaxed) {
                    let degraded = shared.reports.degraded_total();
                    shared
                        .reports
                        .emit(REDIS_RECOVERED, now, [degraded, u64::from(held)]);
                }
            }
            None => {
                // ordering: Relaxed; a count and a flag.
                shared.redis_errors.fetch_add(1, Ordering::Relaxed);
                if words.available.swap(false, Ordering::Relaxed) {
                    shared.reports.emit(
                        REDIS_UNAVAILABLE,
                        now,
                        [shared.policy.code(), u64::from(shared.in_use())],
                    );
                }
                // Past the local expiry the claim may have lapsed in Redis:
                // stop granting leased permits.
                // ordering: Relaxed; the task is the only writer of the expiry.
                if now.as_nanos() >= words.expiry.load(Ordering::Relaxed) {
                    let _ = shared.bulkhead.set_limit(1);
                }
            }
        }
    }
}
