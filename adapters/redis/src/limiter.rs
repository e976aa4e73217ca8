//! The two-level limiter: a lease of tokens granted by Redis, spent on the
//! request path through atomics and the engine's own limiter, and topped up
//! by a background task.
//!
//! # The lease words
//!
//! | word | holds | written by |
//! |---|---|---|
//! | `tokens` | tokens granted by Redis and not yet spent or given back | requests (take one with a compare-and-swap), the task (add a grant, or swap to 0 to give back) |
//! | `expiry` | the local instant (ns on the limiter's monotonic clock) after which the lease may no longer be spent while Redis is reachable | the task |
//! | `available` | whether the last Redis call succeeded | the task |
//!
//! A token leaves `tokens` exactly once: either a request takes it (and
//! spends it, or puts it back when its own engine limiter refuses) or the
//! task swaps it out to give it back to Redis. So no token is spent twice,
//! and none is given back that was spent. The three words are
//! `LeaseWords` in `lease.rs` (the counter is its `LeaseTokens`), which the
//! loom model compiles as it is.

use core::time::Duration;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use redis::aio::ConnectionManagerConfig;
use redis::{Client, Script};
use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker};
use tenlives_engine::events::EventKind;
use tenlives_engine::rate::{Quota, RateLimited, RateLimiter};
use tenlives_engine::time::{Clock, MonotonicClock, Timestamp};
use tokio::sync::Notify;

use crate::background::{Background, Conn, next_refresh};
use crate::config::{FailurePolicy, FleetConfig, FleetError};
use crate::gcra::{self, GcraParams, Reply};
use crate::key::rate_key;
use crate::lease::{GiveBack, LeaseWords, Take};
use crate::reports::Reports;

/// A request was decided under the failure policy, Redis being unreachable.
/// Payload: `[decision code, tokens left in the last lease]`; the codes are
/// 1 admitted from the last lease after its expiry, 2 admitted by the local
/// degraded limiter, 3 refused by it, 4 admitted (fail open), 5 refused
/// (fail closed).
pub const REDIS_DEGRADED: EventKind = EventKind(112);
/// A Redis call failed (or the breaker refused it) after the last one had
/// succeeded. Payload: `[policy code (1 open, 2 closed, 3 degraded), tokens
/// held]`.
pub const REDIS_UNAVAILABLE: EventKind = EventKind(113);
/// A Redis call succeeded after a failure. Payload: `[degraded decisions so
/// far, tokens granted by the call]`.
pub const REDIS_RECOVERED: EventKind = EventKind(114);

/// How a request was admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// With a token of a valid lease granted by Redis.
    Lease,
    /// Redis unreachable: with a token of the last lease, past its expiry
    /// ([`FailurePolicy::Degraded`]).
    LastLease,
    /// Redis unreachable and the lease spent: by the local limiter on
    /// `quota / expected_instances` ([`FailurePolicy::Degraded`]).
    Fallback,
    /// Redis unreachable and the lease spent: [`FailurePolicy::FailOpen`].
    FailOpen,
}

impl Admitted {
    /// Whether the admission was a degraded decision (Redis unreachable).
    pub fn is_degraded(self) -> bool {
        self != Admitted::Lease
    }
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The lease is spent (or expired) and Redis is reachable: the fleet's
    /// quota is in use; the background task asks for more.
    QuotaExhausted,
    /// The process's own engine limiter (its maximum share of the rate)
    /// refused.
    ShareLimited(RateLimited),
    /// Redis unreachable: the local degraded limiter refused.
    Fallback(RateLimited),
    /// Redis unreachable: [`FailurePolicy::FailClosed`].
    FailClosed,
}

impl Refused {
    /// Whether the refusal was a degraded decision (Redis unreachable).
    pub fn is_degraded(self) -> bool {
        matches!(self, Refused::Fallback(_) | Refused::FailClosed)
    }
}

impl core::fmt::Display for Refused {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Refused::QuotaExhausted => f.write_str("fleet-wide quota exhausted"),
            Refused::ShareLimited(l) => write!(f, "process share of the quota: {l}"),
            Refused::Fallback(l) => write!(f, "redis unreachable, local degraded quota: {l}"),
            Refused::FailClosed => f.write_str("redis unreachable (fail closed)"),
        }
    }
}

impl std::error::Error for Refused {}

/// A view of a limiter, for tests, dashboards and metrics, its counters read
/// one at a time.
///
/// Every token granted is held, spent, given back or lost:
/// `lease_tokens + spent + returned + lost == granted` in a view taken while
/// no request is deciding and no give-back is in flight (a give-back under
/// way has taken its tokens out of the lease but not yet counted them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FleetStats {
    /// Tokens held (granted, not spent, not given back).
    pub lease_tokens: u64,
    /// Whether the last Redis call succeeded.
    pub redis_available: bool,
    /// Requests admitted with lease tokens (valid or last lease).
    pub spent: u64,
    /// Requests refused because the lease was empty while Redis was
    /// reachable (counted as demand when sizing the next lease).
    pub starved: u64,
    /// Tokens granted by Redis in total.
    pub granted: u64,
    /// Tokens given back to Redis in total.
    pub returned: u64,
    /// Tokens taken out of the lease to give back whose call failed: lost
    /// (never spent; an ambiguous failure may or may not have returned them).
    pub lost: u64,
    /// Degraded decisions that admitted.
    pub degraded_admitted: u64,
    /// Degraded decisions that refused.
    pub degraded_refused: u64,
    /// Script calls made to Redis (successful or not).
    pub redis_calls: u64,
    /// Script calls that failed, timed out or were refused by the breaker.
    pub redis_errors: u64,
}

/// Counters requests write, on another line.
struct Demand {
    spent: AtomicU64,
    starved: AtomicU64,
}

pub(crate) struct Shared {
    /// The words requests read, on their own cache line.
    lease: CachePadded<LeaseWords>,
    demand: CachePadded<Demand>,
    reports: Reports,
    share: RateLimiter,
    fallback: RateLimiter,
    clock: MonotonicClock,
    policy: FailurePolicy,
    /// The refresh interval: when a lease may next arrive.
    interval: Duration,
    // Written by the task only.
    granted: AtomicU64,
    returned: AtomicU64,
    lost: AtomicU64,
    redis_calls: AtomicU64,
    redis_errors: AtomicU64,
}

impl Shared {
    #[inline]
    fn degraded(&self, admitted: bool, code: u64, now: Timestamp) {
        let left = self.lease.tokens.held();
        self.reports.degraded(admitted, code, left, now);
    }

    #[inline]
    pub(crate) fn try_acquire_at(&self, now: Timestamp) -> Result<Admitted, Refused> {
        let available = match self
            .lease
            .take(now.as_nanos(), self.policy == FailurePolicy::Degraded)
        {
            Take::None { available } => available,
            taken => {
                return match self.share.check(now) {
                    Ok(()) => {
                        // ordering: Relaxed; a demand count read by the task.
                        self.demand.spent.fetch_add(1, Ordering::Relaxed);
                        if taken == Take::Valid {
                            Ok(Admitted::Lease)
                        } else {
                            self.degraded(true, 1, now);
                            Ok(Admitted::LastLease)
                        }
                    }
                    Err(limited) => {
                        self.lease.tokens.put_back();
                        Err(Refused::ShareLimited(limited))
                    }
                };
            }
        };
        if available {
            // ordering: Relaxed; a demand count read by the task.
            self.demand.starved.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::QuotaExhausted);
        }
        match self.policy {
            FailurePolicy::FailOpen => {
                self.degraded(true, 4, now);
                Ok(Admitted::FailOpen)
            }
            FailurePolicy::FailClosed => {
                self.degraded(false, 5, now);
                Err(Refused::FailClosed)
            }
            FailurePolicy::Degraded => match self.fallback.check(now) {
                Ok(()) => {
                    self.degraded(true, 2, now);
                    Ok(Admitted::Fallback)
                }
                Err(limited) => {
                    self.degraded(false, 3, now);
                    Err(Refused::Fallback(limited))
                }
            },
        }
    }

    /// The words and limiters of a fresh limiter: no lease, Redis assumed
    /// reachable until a call says otherwise.
    pub(crate) fn new(config: &FleetConfig, max_lease: u32) -> Result<Shared, FleetError> {
        Ok(Shared {
            lease: CachePadded::new(LeaseWords::new()),
            demand: CachePadded::new(Demand {
                spent: AtomicU64::new(0),
                starved: AtomicU64::new(0),
            }),
            reports: Reports::new(config.events.clone(), config.source),
            share: RateLimiter::new(share_quota(&config.quota, config.max_share, max_lease)?),
            fallback: RateLimiter::new(fallback_quota(&config.quota, config.expected_instances)?),
            clock: MonotonicClock::new(),
            policy: config.policy,
            interval: config.refresh_interval,
            granted: AtomicU64::new(0),
            returned: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            redis_calls: AtomicU64::new(0),
            redis_errors: AtomicU64::new(0),
        })
    }

    /// The demand so far: requests admitted from the lease and refused
    /// because it was empty.
    pub(crate) fn demand(&self) -> u64 {
        // ordering: Relaxed; counts.
        self.demand.spent.load(Ordering::Relaxed) + self.demand.starved.load(Ordering::Relaxed)
    }

    /// What a refresh at `now` aiming at `target` tokens asks of Redis:
    /// `(want, give back)`, or `None` when it skips the call (Redis
    /// reachable at the last call, nothing to give back or ask for, and the
    /// lease not within two intervals of its expiry).
    pub(crate) fn plan(&self, target: u64, now: Timestamp) -> Option<(u64, GiveBack)> {
        let lease = &self.lease;
        let expiry = lease.expiry();
        let available = lease.available();
        let held = lease.tokens.held();
        let expired = now.as_nanos() >= expiry;
        // Under the degraded policy with Redis unreachable, the last lease is
        // spent instead of given back.
        let keep_last = !available && self.policy == FailurePolicy::Degraded;
        let give_back = if expired && !keep_last {
            GiveBack::All
        } else if available && held > 2 * target {
            GiveBack::Above(target)
        } else {
            GiveBack::Nothing
        };
        let want = match give_back {
            GiveBack::All => target,
            _ => target.saturating_sub(held),
        };
        let renew_soon = expiry.saturating_sub(now.as_nanos())
            < 2 * u64::try_from(self.interval.as_nanos()).unwrap_or(u64::MAX);
        if want == 0 && give_back == GiveBack::Nothing && !renew_soon && available {
            return None;
        }
        Some((want, give_back))
    }

    /// Takes out of the lease what a call the breaker let through gives
    /// back (at most `b`, what the script takes back at once), and counts
    /// the call.
    pub(crate) fn take_back(&self, give_back: GiveBack, b: u64) -> u64 {
        let mut ret = self.lease.tokens.give_back(give_back);
        // The script takes back at most `b` at once; a surplus never left
        // for Redis and goes back into the lease (a lease holds at most
        // `max_lease <= b`, so this does not happen in practice).
        if ret > b {
            self.lease.tokens.grant(ret - b);
            ret = b;
        }
        // ordering: Relaxed; counts.
        self.redis_calls.fetch_add(1, Ordering::Relaxed);
        ret
    }

    /// Applies the answer of a call that started at `now` and gave back
    /// `ret` tokens (`None`: it failed, timed out, or the breaker refused
    /// it) to the lease.
    pub(crate) fn apply(
        &self,
        reply: Option<Reply>,
        ret: u64,
        now: Timestamp,
        lease_duration: Duration,
    ) {
        let lease = &self.lease;
        match reply {
            Some(reply) => {
                // ordering: Relaxed; counts for reports.
                self.granted.fetch_add(reply.granted, Ordering::Relaxed);
                self.returned.fetch_add(ret, Ordering::Relaxed);
                let expiry = now.saturating_add(lease_duration).as_nanos();
                if lease.renewed(reply.granted, expiry) {
                    let degraded = self.reports.degraded_total();
                    self.reports
                        .emit(REDIS_RECOVERED, now, [degraded, reply.granted]);
                }
            }
            None => {
                // ordering: Relaxed; counts and a flag (see above).
                self.redis_errors.fetch_add(1, Ordering::Relaxed);
                // The tokens taken out to give back may or may not have
                // reached Redis: never put them back (no token spent twice).
                self.lost.fetch_add(ret, Ordering::Relaxed);
                if lease.failed() {
                    let held = lease.tokens.held();
                    self.reports
                        .emit(REDIS_UNAVAILABLE, now, [self.policy.code(), held]);
                }
            }
        }
    }

    pub(crate) fn stats(&self) -> FleetStats {
        // ordering: Relaxed throughout; a snapshot for reports.
        FleetStats {
            lease_tokens: self.lease.tokens.held(),
            redis_available: self.lease.available(),
            spent: self.demand.spent.load(Ordering::Relaxed),
            starved: self.demand.starved.load(Ordering::Relaxed),
            granted: self.granted.load(Ordering::Relaxed),
            returned: self.returned.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            degraded_admitted: self.reports.degraded_admitted.get(),
            degraded_refused: self.reports.degraded_refused.get(),
            redis_calls: self.redis_calls.load(Ordering::Relaxed),
            redis_errors: self.redis_errors.load(Ordering::Relaxed),
        }
    }
}

/// A fleet-wide rate limit: the quota lives in Redis, this process spends a
/// leased share of it locally. See the [crate documentation](crate).
///
/// Dropping it stops the background task, which gives the unspent tokens
/// back to Redis if the runtime is still running; [`shutdown`](Self::shutdown)
/// does the same and waits for it.
pub struct FleetRateLimiter {
    shared: Arc<Shared>,
    background: Background,
}

impl core::fmt::Debug for FleetRateLimiter {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FleetRateLimiter")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The state of the background task.
struct Refresher {
    shared: Arc<Shared>,
    conn: Conn,
    script: Script,
    key: String,
    params: GcraParams,
    breaker: CircuitBreaker,
    lease_duration: Duration,
    interval: Duration,
    timeout: Duration,
    sizing: Sizing,
}

/// How a refresh sizes the lease from the demand since the previous one.
pub(crate) struct Sizing {
    interval: Duration,
    max_lease: u64,
    /// Demand (spent + starved) and time at the previous refresh.
    last_demand: u64,
    last_at: Timestamp,
    /// The lease size aimed at (the initial size before any rate is known).
    target: u64,
    /// Whether no refresh happened yet.
    first: bool,
}

impl Sizing {
    /// Before the first refresh, at `now`: the initial lease (default a
    /// quarter of the largest, at least 1).
    pub(crate) fn new(config: &FleetConfig, now: Timestamp) -> Sizing {
        let max_lease = config.max_lease();
        let initial = config
            .initial_lease
            .unwrap_or(max_lease / 4)
            .clamp(1, max_lease);
        Sizing {
            interval: config.refresh_interval,
            max_lease: u64::from(max_lease),
            last_demand: 0,
            last_at: now,
            target: u64::from(initial),
            first: true,
        }
    }

    /// Sizes the next lease from the demand since the last refresh (`demand`
    /// the total so far): twice what the process would spend until the next
    /// one, within `[1, max_lease]`.
    pub(crate) fn size(&mut self, demand: u64, now: Timestamp) -> u64 {
        let delta = demand.saturating_sub(self.last_demand);
        let elapsed = now
            .saturating_duration_since(self.last_at)
            .as_nanos()
            .max(1);
        self.last_demand = demand;
        self.last_at = now;
        // Until the first refresh with a known elapsed time, the initial size.
        if !self.first {
            let per_interval = u128::from(delta) * self.interval.as_nanos() / elapsed;
            self.target = u64::try_from(2 * per_interval + 1).unwrap_or(u64::MAX);
        }
        self.first = false;
        self.target.clamp(1, self.max_lease)
    }
}

/// What a refresh gives back to Redis.
pub(crate) fn default_breaker() -> BreakerConfig {
    // A fixed, valid configuration: consecutive failures only.
    BreakerConfig::builder()
        .without_failure_rate()
        .consecutive_failures(3)
        .open_duration(Duration::from_millis(500))
        .half_open_probes(1)
        .build()
        .unwrap_or_default()
}

pub(crate) fn share_quota(quota: &Quota, share: f64, max_lease: u32) -> Result<Quota, FleetError> {
    let rate = ((f64::from(quota.rate()) * share).ceil() as u32).clamp(1, quota.rate());
    Ok(Quota::new(rate, quota.period())?.with_burst(max_lease)?)
}

pub(crate) fn fallback_quota(quota: &Quota, n: u32) -> Result<Quota, FleetError> {
    let rate = (quota.rate() / n).max(1);
    let burst = (quota.burst() / n).max(1);
    Ok(Quota::new(rate, quota.period())?.with_burst(burst)?)
}

impl FleetRateLimiter {
    /// Builds the limiter and its background task on the current tokio
    /// runtime, and waits for the first lease (or for the first call to
    /// fail: a Redis that is down at start is the failure policy's business,
    /// not an error). Each limiter has its own connection to `client`'s
    /// server, managed by the `redis` crate's `ConnectionManager`
    /// (reconnecting by itself), rebuilt by the background task after a
    /// failed call the manager cannot recover from (a reply that is not
    /// RESP).
    ///
    /// # Errors
    ///
    /// [`FleetError`] for a bad configuration or name, or a client that
    /// cannot be set up.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn start(config: FleetConfig, client: Client) -> Result<Self, FleetError> {
        config.validate()?;
        let params = GcraParams::from_quota(&config.quota)?;
        let key = rate_key(&config.prefix, &config.name)?;
        let max_lease = config.max_lease();
        let conn_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.redis_timeout))
            .set_response_timeout(Some(config.redis_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(config.refresh_interval);
        let conn = Conn::new(client, conn_config)?;
        let shared = Arc::new(Shared::new(&config, max_lease)?);
        let now = shared.clock.now();
        let sizing = Sizing::new(&config, now);
        let mut refresher = Refresher {
            shared: Arc::clone(&shared),
            conn,
            script: gcra::script(),
            key,
            params,
            breaker: CircuitBreaker::new(config.breaker.unwrap_or_else(default_breaker)),
            lease_duration: config.lease_duration,
            interval: config.refresh_interval,
            timeout: config.redis_timeout,
            sizing,
        };
        refresher.refresh().await;
        Ok(FleetRateLimiter {
            shared,
            background: Background::spawn(|stop| refresher.run(stop)),
        })
    }

    /// Decides one request now. Never waits, never allocates, never touches
    /// the network: it reads the lease words, takes a token with one
    /// compare-and-swap, and asks the process's engine limiter.
    ///
    /// # Errors
    ///
    /// [`Refused`], saying whether the fleet's quota is in use, the process's
    /// share is, or Redis is unreachable and the failure policy refused.
    #[inline]
    pub fn try_acquire(&self) -> Result<Admitted, Refused> {
        self.shared.try_acquire_at(self.shared.clock.now())
    }

    /// How long after `refused` trying again may help (an HTTP server's
    /// `Retry-After`): the engine limiter's own wait for
    /// [`Refused::ShareLimited`] and [`Refused::Fallback`], and the refresh
    /// interval — when the background task next asks Redis — for
    /// [`Refused::QuotaExhausted`] and [`Refused::FailClosed`].
    pub fn retry_after(&self, refused: &Refused) -> Duration {
        match refused {
            Refused::ShareLimited(l) | Refused::Fallback(l) => l.wait(),
            Refused::QuotaExhausted | Refused::FailClosed => self.shared.interval,
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> FleetStats {
        self.shared.stats()
    }

    /// The degraded decisions that admitted, as a Prometheus counter (the
    /// same atomic the limiter increments).
    pub fn degraded_admitted_counter(&self) -> Counter {
        self.shared.reports.degraded_admitted.clone()
    }

    /// The degraded decisions that refused, as a Prometheus counter.
    pub fn degraded_refused_counter(&self) -> Counter {
        self.shared.reports.degraded_refused.clone()
    }

    /// Registers the degraded-decision counters in `registry` as
    /// `tenlives_redis_degraded_admitted` and
    /// `tenlives_redis_degraded_refused` (add labels with
    /// `Registry::sub_registry_with_label` for several limiters).
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "tenlives_redis_degraded_admitted",
            "Requests admitted under the failure policy while Redis was unreachable",
            self.degraded_admitted_counter(),
        );
        registry.register(
            "tenlives_redis_degraded_refused",
            "Requests refused under the failure policy while Redis was unreachable",
            self.degraded_refused_counter(),
        );
    }

    /// Stops the background task after it gave the unspent tokens back to
    /// Redis (bounded by the Redis timeout), waits for it, and returns the
    /// final view: nothing moves tokens any more, so its accounting identity
    /// (see [`FleetStats`]) holds exactly.
    pub async fn shutdown(mut self) -> FleetStats {
        self.background.shutdown().await;
        self.shared.stats()
    }
}

impl Refresher {
    async fn run(mut self, stop: Arc<Notify>) {
        while next_refresh(self.interval, &stop).await {
            self.refresh().await;
        }
        if self.shared.lease.tokens.held() > 0 {
            let now = self.shared.clock.now();
            let _ = self.call(0, GiveBack::All, now).await;
        }
    }

    /// One refresh: gives back an expired lease, or (Redis reachable) the
    /// excess of a lease more than twice its target (the demand fell), and
    /// tops the lease up to its target — in one script call.
    async fn refresh(&mut self) {
        let now = self.shared.clock.now();
        let target = self.sizing.size(self.shared.demand(), now);
        if let Some((want, give_back)) = self.shared.plan(target, now) {
            self.call(want, give_back, now).await;
        }
    }

    /// One script call through the breaker and the timeout; applies the
    /// answer (or the failure) to the lease. The tokens to give back are
    /// taken out of the lease only once the breaker let the call through.
    async fn call(&mut self, want: u64, give_back: GiveBack, now: Timestamp) -> Option<Reply> {
        let want = want.min(self.params.b);
        let shared = Arc::clone(&self.shared);
        let mut ret = 0;
        let reply = match self.breaker.try_acquire(now) {
            Err(_) => None,
            Ok(permit) => {
                ret = shared.take_back(give_back, self.params.b);
                let mut invocation = self.script.key(&self.key);
                invocation
                    .arg(self.params.p)
                    .arg(self.params.r)
                    .arg(self.params.b)
                    .arg(want)
                    .arg(want.min(1))
                    .arg(ret);
                let answer = self.conn.invoke(&invocation, self.timeout).await;
                let reply = answer.as_deref().and_then(Reply::from_values);
                let done = shared.clock.now();
                match reply {
                    Some(_) => permit.success(done),
                    None => permit.failure(done),
                }
                reply
            }
        };
        shared.apply(reply, ret, now, self.lease_duration);
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degraded_quotas_divide_the_global_one() {
        let q = Quota::per_second(1_000).unwrap().with_burst(100).unwrap();
        let f = fallback_quota(&q, 3).unwrap();
        assert_eq!((f.rate(), f.burst()), (333, 33));
        // Never below one token.
        let f = fallback_quota(&q, 5_000).unwrap();
        assert_eq!((f.rate(), f.burst()), (1, 1));
        let s = share_quota(&q, 0.25, 25).unwrap();
        assert_eq!((s.rate(), s.burst()), (250, 25));
    }
}
