//! Outlier ejection: per-endpoint breakers for a client calling a set of
//! endpoints, with a cap on how many may be out at once.
//!
//! An [`OutlierDetector`] keeps one engine [`CircuitBreaker`] per endpoint in
//! a keyed table whose size is fixed at construction. Each endpoint's service
//! is wrapped in an [`Ejectable`], which admits calls through the endpoint's
//! breaker and reports their classified outcomes to it. An endpoint is
//! **ejected**:
//!
//! - by its breaker's own rules (typically `consecutive_failures(n)`): the
//!   breaker trips, stays open for its open duration (the ejection time,
//!   growing with `open_backoff` when the endpoint keeps failing), then lets
//!   half-open probes through, and their success re-admits it;
//! - by the **rate rule**: every `interval`, an endpoint whose failure rate
//!   over that interval is at least `floor` and at least `factor` times the
//!   pooled failure rate of the *other* endpoints is held out for the
//!   ejection time (its breaker is forced open), then re-admitted (its
//!   breaker closed afresh).
//!
//! An ejection takes a slot of a budget of `max_ejection_percent` of the
//! tracked endpoints (rounded down): when the budget is spent, an endpoint
//! that would be ejected stays in (a breaker that tripped on its own is
//! closed again) and [`EjectionStats::refused_by_cap`] counts it, so a bad
//! dependency that fails every endpoint cannot eject them all.
//!
//! # With tower's balancer
//!
//! An ejected endpoint's [`Ejectable`] answers `poll_ready` with `Pending`
//! (it wakes itself when the ejection time ends), which is how tower's
//! balancers (`tower::balance::p2c`) learn that a service is not ready: they
//! route around it. With feature `balance`, `EjectDiscover` wraps any
//! `tower::discover::Discover`, tracking each inserted endpoint in the
//! detector and forgetting removed ones, and [`Ejectable`] forwards
//! `tower::load::Load`.
//!
//! # Cost
//!
//! Per request: one breaker admission and one record (the engine's lock-free
//! paths), two relaxed counter increments, one clock reading at admission and
//! one at completion, one `Arc` clone. No lock: the keyed table's mutex is
//! taken when endpoints come and go, and the member list's once per rate
//! evaluation (every `interval`, by the one request that claims it).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tenlives_engine::ConfigError;
use tenlives_engine::breaker::{
    BreakerConfig, BreakerState, CircuitBreaker, Outcome, RawPermit, RejectReason,
};
use tenlives_engine::time::{Clock, Timestamp};
use tower_service::Service;

use crate::classify::{Classify, DefaultClassifier};
use crate::clock::TokioClock;
use crate::error::{Rejection, TenlivesError};
use crate::span::{CallSpan, call_span};

/// How often an ejected endpoint whose breaker is half-open with every probe
/// slot taken checks again (the probes' outcomes do not wake it).
const HALF_OPEN_RECHECK: Duration = Duration::from_millis(10);

/// The rate rule: eject an endpoint whose failure rate is far above the
/// others'.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateRule {
    /// How often rates are compared (and the counts start again).
    pub interval: Duration,
    /// An endpoint is ejected when its rate is at least `factor` times the
    /// others' pooled rate...
    pub factor: f64,
    /// ...and at least this fraction (`0.0..=1.0`) of its calls failed.
    pub floor: f64,
    /// Endpoints with fewer calls in the interval are not judged (nor
    /// counted in the others' rate).
    pub minimum_calls: u64,
    /// How long an endpoint ejected by this rule stays out.
    pub ejection: Duration,
}

impl Default for RateRule {
    /// Every 10 s; five times the others' rate and at least 50 %; 20 calls;
    /// out for 30 s.
    fn default() -> Self {
        RateRule {
            interval: Duration::from_secs(10),
            factor: 5.0,
            floor: 0.5,
            minimum_calls: 20,
            ejection: Duration::from_secs(30),
        }
    }
}

/// The detector's settings. Build with [`EjectionConfig::new`].
#[derive(Clone, Debug)]
pub struct EjectionConfig {
    breaker: BreakerConfig,
    max_ejection_percent: u32,
    capacity: usize,
    rate: Option<RateRule>,
}

impl EjectionConfig {
    /// Endpoints judged by `breaker` (each gets its own breaker with this
    /// configuration: its open duration is the ejection time), at most
    /// `max_ejection_percent` (`0..=100`) of them ejected at once, at most
    /// `capacity` endpoints tracked (more are passed through, never ejected,
    /// and counted in [`EjectionStats::untracked`]); no rate rule.
    pub fn new(
        breaker: BreakerConfig,
        max_ejection_percent: u32,
        capacity: usize,
    ) -> Result<Self, ConfigError> {
        if max_ejection_percent > 100 {
            return Err(ConfigError::TooLarge {
                field: "max_ejection_percent",
                value: u64::from(max_ejection_percent),
                max: 100,
            });
        }
        if capacity == 0 {
            return Err(ConfigError::Zero { field: "capacity" });
        }
        Ok(EjectionConfig {
            breaker,
            max_ejection_percent,
            capacity,
            rate: None,
        })
    }

    /// Adds the rate rule.
    pub fn with_rate_rule(mut self, rule: RateRule) -> Result<Self, ConfigError> {
        if rule.interval.is_zero() {
            return Err(ConfigError::ZeroDuration { field: "interval" });
        }
        if rule.ejection.is_zero() {
            return Err(ConfigError::ZeroDuration { field: "ejection" });
        }
        if !(rule.floor > 0.0 && rule.floor <= 1.0) {
            return Err(ConfigError::RateOutOfRange {
                field: "floor",
                value: rule.floor,
            });
        }
        if !(rule.factor >= 1.0 && rule.factor.is_finite()) {
            return Err(ConfigError::RateOutOfRange {
                field: "factor",
                value: rule.factor,
            });
        }
        self.rate = Some(rule);
        Ok(self)
    }
}

/// What the detector did, for telemetry (cumulative counts, and the current
/// number of tracked and ejected endpoints).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EjectionStats {
    /// Endpoints tracked now.
    pub tracked: usize,
    /// Endpoints ejected now (holding a slot of the budget).
    pub ejected: usize,
    /// Ejections by an endpoint's breaker tripping.
    pub ejections_by_breaker: u64,
    /// Ejections by the rate rule.
    pub ejections_by_rate: u64,
    /// Ejections refused because the budget was spent.
    pub refused_by_cap: u64,
    /// Endpoints taken back in after an ejection.
    pub readmissions: u64,
    /// Endpoints passed through untracked because the table was full.
    pub untracked: u64,
}

/// The part of the detector every endpoint reaches (not generic over keys).
struct Pool<C> {
    config: EjectionConfig,
    classifier: C,
    clock: TokioClock,
    tracked: AtomicUsize,
    ejected: AtomicUsize,
    next_evaluation: AtomicU64,
    members: Mutex<Vec<Weak<Health<C>>>>,
    ejections_by_breaker: AtomicU64,
    ejections_by_rate: AtomicU64,
    refused_by_cap: AtomicU64,
    readmissions: AtomicU64,
    untracked: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    // ordering: Relaxed; a statistics counter, read only for telemetry.
    counter.fetch_add(1, Ordering::Relaxed);
}

impl<C> Pool<C> {
    /// Takes a slot of the ejection budget, if one is free.
    fn claim(&self) -> bool {
        // ordering: Relaxed; `tracked` only sizes the budget, and a
        // concurrent insertion or removal moves it by one either way.
        let tracked = self.tracked.load(Ordering::Relaxed);
        let cap = tracked * self.config.max_ejection_percent as usize / 100;
        // ordering: Relaxed; the compare-and-swap alone keeps the count
        // exact (no other memory is published through it).
        self.ejected
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |e| {
                (e < cap).then_some(e + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        // ordering: Relaxed; see `claim`.
        self.ejected.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One endpoint's health: its breaker, whether it holds an ejection slot, and
/// its counts for the rate rule.
struct Health<C> {
    breaker: CircuitBreaker,
    pool: Arc<Pool<C>>,
    /// Holds a slot of the ejection budget (set by the claim, cleared by
    /// whoever re-admits the endpoint or removes it).
    holds_slot: AtomicBool,
    /// The end of a rate-rule ejection (nanoseconds; 0: none).
    rate_ejected_until: AtomicU64,
    /// Removed from the set: never ejected again.
    removed: AtomicBool,
    calls: AtomicU64,
    failures: AtomicU64,
}

impl<C> Health<C> {
    /// When an ejected endpoint should look again, or `None` if it is in.
    /// Re-admits it when an ejection has ended.
    fn ejected_until(&self, now: Timestamp) -> Option<Timestamp> {
        // ordering: Acquire, pairs with the Release store in `evaluate`: a
        // reader that sees the deadline sees the breaker forced open.
        let until = self.rate_ejected_until.load(Ordering::Acquire);
        if until != 0 {
            if now.as_nanos() < until {
                return Some(Timestamp::from_nanos(until));
            }
            // ordering: Relaxed on both sides; the compare-and-swap picks the
            // one caller that re-admits.
            if self
                .rate_ejected_until
                .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                self.breaker.reset(now);
                self.release_slot();
            }
        }
        match self.breaker.would_admit(now) {
            Ok(()) => {
                if self.breaker.state() == BreakerState::Closed {
                    self.release_slot();
                }
                None
            }
            Err(rejected) => Some(match (rejected.reason(), rejected.retry_after()) {
                (RejectReason::Open, Some(after)) => now.saturating_add(after),
                _ => now.saturating_add(HALF_OPEN_RECHECK),
            }),
        }
    }

    /// Gives the ejection slot back, if this endpoint holds one.
    fn release_slot(&self) {
        // ordering: Relaxed; the swap alone decides who gives the slot back.
        if self.holds_slot.swap(false, Ordering::Relaxed) {
            self.pool.give_back();
            bump(&self.pool.readmissions);
        }
    }

    /// After an outcome was recorded: if the breaker tripped (by any of its
    /// rules, the slow-call rule on a success included), the endpoint is
    /// ejected, within the budget, or closed again.
    fn after_record(&self, now: Timestamp) {
        let tripped = matches!(
            self.breaker.state(),
            BreakerState::Open | BreakerState::HalfOpen
        );
        // ordering: Relaxed; see `release_slot`.
        if !tripped || self.holds_slot.load(Ordering::Relaxed) {
            return;
        }
        // ordering: Relaxed; a flag read to skip removed endpoints.
        if !self.removed.load(Ordering::Relaxed) && self.pool.claim() {
            // ordering: Relaxed; see `release_slot`.
            if self.holds_slot.swap(true, Ordering::Relaxed) {
                self.pool.give_back(); // another caller claimed it first
            } else {
                bump(&self.pool.ejections_by_breaker);
            }
        } else {
            bump(&self.pool.refused_by_cap);
            self.breaker.reset(now);
        }
    }
}

/// The keyed table: endpoint key to its health.
type EndpointTable<K, C> = HashMap<K, Arc<Health<C>>, foldhash::fast::RandomState>;

/// Judges a set of endpoints and ejects outliers. See the
/// [module documentation](self). Cloning shares the detector.
pub struct OutlierDetector<K, C = DefaultClassifier> {
    pool: Arc<Pool<C>>,
    table: Arc<Mutex<EndpointTable<K, C>>>,
}

impl<K, C> Clone for OutlierDetector<K, C> {
    fn clone(&self) -> Self {
        OutlierDetector {
            pool: Arc::clone(&self.pool),
            table: Arc::clone(&self.table),
        }
    }
}

impl<K, C> fmt::Debug for OutlierDetector<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutlierDetector")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq> OutlierDetector<K, DefaultClassifier> {
    /// A detector counting `Err` as a failure, on a [`TokioClock`] made now.
    pub fn new(config: EjectionConfig) -> Self {
        Self::with_classifier(config, DefaultClassifier, TokioClock::new())
    }
}

impl<K: Hash + Eq, C> OutlierDetector<K, C> {
    /// A detector judging outcomes with `classifier`, on `clock`.
    pub fn with_classifier(config: EjectionConfig, classifier: C, clock: TokioClock) -> Self {
        let start = clock.now();
        let first = config
            .rate
            .map_or(u64::MAX, |r| start.saturating_add(r.interval).as_nanos());
        let capacity = config.capacity;
        OutlierDetector {
            pool: Arc::new(Pool {
                config,
                classifier,
                clock,
                tracked: AtomicUsize::new(0),
                ejected: AtomicUsize::new(0),
                next_evaluation: AtomicU64::new(first),
                members: Mutex::new(Vec::new()),
                ejections_by_breaker: AtomicU64::new(0),
                ejections_by_rate: AtomicU64::new(0),
                refused_by_cap: AtomicU64::new(0),
                readmissions: AtomicU64::new(0),
                untracked: AtomicU64::new(0),
            }),
            table: Arc::new(Mutex::new(HashMap::with_capacity_and_hasher(
                capacity,
                foldhash::fast::RandomState::default(),
            ))),
        }
    }

    /// Tracks endpoint `key` (forgetting an earlier endpoint of that key) and
    /// wraps `service`, its client. Past the table's capacity the endpoint is
    /// passed through untracked: never ejected.
    pub fn endpoint<S>(&self, key: K, service: S) -> Ejectable<S, C> {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = table.remove(&key) {
            self.forget(&old);
        }
        if table.len() >= self.pool.config.capacity {
            bump(&self.pool.untracked);
            return Ejectable::new(service, None);
        }
        let health = Arc::new(Health {
            breaker: CircuitBreaker::new(self.pool.config.breaker.clone()),
            pool: Arc::clone(&self.pool),
            holds_slot: AtomicBool::new(false),
            rate_ejected_until: AtomicU64::new(0),
            removed: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        });
        table.insert(key, Arc::clone(&health));
        // ordering: Relaxed; see `Pool::claim`.
        self.pool.tracked.fetch_add(1, Ordering::Relaxed);
        self.pool
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::downgrade(&health));
        Ejectable::new(service, Some(health))
    }

    /// Forgets endpoint `key` (it left the set); its slot, if ejected, is
    /// given back.
    pub fn remove(&self, key: &K) {
        let removed = self
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
        if let Some(health) = removed {
            self.forget(&health);
        }
    }

    fn forget(&self, health: &Health<C>) {
        // ordering: Relaxed; see `Health::after_record`.
        health.removed.store(true, Ordering::Relaxed);
        // ordering: Relaxed; see `release_slot`.
        if health.holds_slot.swap(false, Ordering::Relaxed) {
            self.pool.give_back();
        }
        // ordering: Relaxed; see `Pool::claim`.
        self.pool.tracked.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether endpoint `key` is ejected now (`None`: not tracked).
    pub fn is_ejected(&self, key: &K) -> Option<bool> {
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let health = table.get(key)?;
        Some(health.ejected_until(self.pool.clock.now()).is_some())
    }

    /// Runs the rate rule now (it also runs by itself every `interval`, on
    /// the completion of a call).
    pub fn evaluate(&self) {
        evaluate(&self.pool, self.pool.clock.now());
    }
}

impl<K, C> OutlierDetector<K, C> {
    /// What the detector did so far.
    pub fn stats(&self) -> EjectionStats {
        let p = &self.pool;
        // ordering: Relaxed throughout; telemetry reads.
        EjectionStats {
            tracked: p.tracked.load(Ordering::Relaxed),
            ejected: p.ejected.load(Ordering::Relaxed),
            ejections_by_breaker: p.ejections_by_breaker.load(Ordering::Relaxed),
            ejections_by_rate: p.ejections_by_rate.load(Ordering::Relaxed),
            refused_by_cap: p.refused_by_cap.load(Ordering::Relaxed),
            readmissions: p.readmissions.load(Ordering::Relaxed),
            untracked: p.untracked.load(Ordering::Relaxed),
        }
    }
}

/// The Prometheus collector of an [`OutlierDetector`]'s statistics (feature
/// `telemetry`), read at each scrape and labelled `detector="name"`:
/// `tenlives_ejections_total{cause="breaker"|"rate"}`,
/// `tenlives_ejections_refused_total`, `tenlives_readmissions_total`,
/// `tenlives_endpoints_untracked_total`, and the gauges
/// `tenlives_endpoints_tracked` and `tenlives_endpoints_ejected`. Register
/// with `registry.register_collector(Box::new(detector.collector("name")))`.
#[cfg(feature = "telemetry")]
pub struct EjectionCollector<K, C> {
    detector: OutlierDetector<K, C>,
    name: Box<str>,
}

#[cfg(feature = "telemetry")]
impl<K, C> fmt::Debug for EjectionCollector<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EjectionCollector")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "telemetry")]
impl<K, C> OutlierDetector<K, C> {
    /// The detector's statistics as Prometheus metrics; see
    /// [`EjectionCollector`].
    pub fn collector(&self, name: &str) -> EjectionCollector<K, C> {
        EjectionCollector {
            detector: self.clone(),
            name: name.into(),
        }
    }
}

#[cfg(feature = "telemetry")]
impl<K, C> prometheus_client::collector::Collector for EjectionCollector<K, C>
where
    K: Send + Sync + 'static,
    C: Send + Sync + 'static,
{
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let s = self.detector.stats();
        let name = &*self.name;
        {
            let mut metric = encoder.encode_descriptor(
                "tenlives_ejections",
                "Endpoints ejected, by the rule that ejected them",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (cause, value) in [
                ("breaker", s.ejections_by_breaker),
                ("rate", s.ejections_by_rate),
            ] {
                let labels = [("detector", name), ("cause", cause)];
                ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
            }
        }
        let labels = [("detector", name)];
        let counters = [
            (
                "tenlives_ejections_refused",
                "Ejections refused because the maximum ejection percentage was reached",
                s.refused_by_cap,
            ),
            (
                "tenlives_readmissions",
                "Endpoints taken back in after an ejection",
                s.readmissions,
            ),
            (
                "tenlives_endpoints_untracked",
                "Endpoints passed through untracked because the table was full",
                s.untracked,
            ),
        ];
        for (metric_name, help, value) in counters {
            let counter = ConstCounter::new(value);
            let mut metric =
                encoder.encode_descriptor(metric_name, help, None, counter.metric_type())?;
            counter.encode(metric.encode_family(&labels)?)?;
        }
        let gauges = [
            ("tenlives_endpoints_tracked", "Endpoints tracked", s.tracked),
            (
                "tenlives_endpoints_ejected",
                "Endpoints ejected now",
                s.ejected,
            ),
        ];
        for (metric_name, help, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let mut metric =
                encoder.encode_descriptor(metric_name, help, None, gauge.metric_type())?;
            gauge.encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Runs the rate rule if its time has come and this caller claims the run.
fn maybe_evaluate<C>(pool: &Pool<C>, now: Timestamp) {
    // ordering: Relaxed; the compare-and-swap only elects the one caller
    // that runs this interval's evaluation, whose data it reads under the
    // member list's lock.
    let due = pool.next_evaluation.load(Ordering::Relaxed);
    if now.as_nanos() < due {
        return;
    }
    evaluate(pool, now);
}

fn evaluate<C>(pool: &Pool<C>, now: Timestamp) {
    let Some(rule) = pool.config.rate else {
        return;
    };
    // ordering: Relaxed; see `maybe_evaluate`. Whoever stores first after
    // `due` runs; a concurrent caller reading the old value may run a second
    // evaluation on near-empty counts, which ejects nobody (minimum calls).
    pool.next_evaluation.store(
        now.saturating_add(rule.interval).as_nanos(),
        Ordering::Relaxed,
    );
    let mut members = pool.members.lock().unwrap_or_else(PoisonError::into_inner);
    members.retain(|m| m.strong_count() > 0);
    // The interval's counts, taken and reset; (calls, failures) per live,
    // judged member.
    let mut total = (0u64, 0u64);
    let counts: Vec<(Arc<Health<C>>, u64, u64)> = members
        .iter()
        .filter_map(Weak::upgrade)
        .map(|h| {
            // ordering: Relaxed; counters, exactness per interval is not
            // needed (a call counted in the next interval is still counted).
            let calls = h.calls.swap(0, Ordering::Relaxed);
            let failures = h.failures.swap(0, Ordering::Relaxed);
            (h, calls, failures.min(calls))
        })
        .filter(|(_, calls, _)| *calls >= rule.minimum_calls)
        .inspect(|(_, c, f)| {
            total.0 += c;
            total.1 += f;
        })
        .collect();
    drop(members);
    for (health, calls, failures) in counts {
        let rate = failures as f64 / calls as f64;
        let (others_calls, others_failures) = (total.0 - calls, total.1 - failures);
        let others = if others_calls == 0 {
            continue; // nothing to compare with
        } else {
            others_failures as f64 / others_calls as f64
        };
        // ordering: Relaxed; see `Health::after_record`.
        let eligible =
            !health.removed.load(Ordering::Relaxed) && !health.holds_slot.load(Ordering::Relaxed);
        if rate >= rule.floor && rate >= rule.factor * others && eligible {
            if pool.claim() {
                // ordering: Relaxed; see `release_slot`.
                if health.holds_slot.swap(true, Ordering::Relaxed) {
                    pool.give_back();
                    continue;
                }
                health.breaker.force_open(now);
                // ordering: Release, pairs with the Acquire load in
                // `ejected_until`.
                health.rate_ejected_until.store(
                    now.saturating_add(rule.ejection).as_nanos().max(1),
                    Ordering::Release,
                );
                bump(&pool.ejections_by_rate);
            } else {
                bump(&pool.refused_by_cap);
            }
        }
    }
}

/// An endpoint's service, admitted through its breaker in the
/// [`OutlierDetector`]. Not ready while ejected.
pub struct Ejectable<S, C = DefaultClassifier> {
    inner: S,
    health: Option<Arc<Health<C>>>,
    /// The wake-up at the end of an ejection: allocated on the first
    /// ejection, reused after.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S: fmt::Debug, C> fmt::Debug for Ejectable<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ejectable")
            .field("inner", &self.inner)
            .field("tracked", &self.health.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, C> Ejectable<S, C> {
    fn new(inner: S, health: Option<Arc<Health<C>>>) -> Self {
        Ejectable {
            inner,
            health,
            sleep: None,
        }
    }

    /// The endpoint's breaker (`None`: untracked).
    pub fn breaker(&self) -> Option<&CircuitBreaker> {
        self.health.as_deref().map(|h| &h.breaker)
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, C, Req> Service<Req> for Ejectable<S, C>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = TenlivesError<S::Error>;
    type Future = EjectFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if let Some(health) = &self.health {
            let clock = &health.pool.clock;
            while let Some(until) = health.ejected_until(clock.now()) {
                let deadline = clock.instant_at(until);
                match &mut self.sleep {
                    Some(sleep) => sleep.as_mut().reset(deadline),
                    slot @ None => *slot = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
                let Some(sleep) = self.sleep.as_mut() else {
                    unreachable!("set just above")
                };
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        }
        self.inner.poll_ready(cx).map_err(TenlivesError::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let span = call_span!("tenlives.eject", "eject");
        let Some(health) = &self.health else {
            // Past the detector's capacity: not tracked, never ejected.
            span.decided("untracked");
            let inner = span.in_scope(|| self.inner.call(req));
            return EjectFuture::running(inner, None, span);
        };
        let now = health.pool.clock.now();
        match health.breaker.try_acquire_raw(now) {
            Err(rejected) => {
                let rejection = Rejection::from(rejected);
                span.refused("ejected", &rejection);
                EjectFuture::rejected(rejection, span)
            }
            Ok(permit) => {
                span.admitted();
                // The permit has its owner before the wrapped service runs.
                let held = HeldPermit {
                    permit: Some(permit),
                    health: Arc::clone(health),
                };
                let inner = span.in_scope(|| self.inner.call(req));
                EjectFuture::running(inner, Some(held), span)
            }
        }
    }
}

#[cfg(feature = "balance")]
impl<S: tower::load::Load, C> tower::load::Load for Ejectable<S, C> {
    type Metric = S::Metric;
    fn load(&self) -> S::Metric {
        self.inner.load()
    }
}

/// A breaker permit with its endpoint: released unreported if dropped.
struct HeldPermit<C> {
    permit: Option<RawPermit>,
    health: Arc<Health<C>>,
}

impl<C> Drop for HeldPermit<C> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.health.breaker.release(permit);
        }
    }
}

impl<C> HeldPermit<C> {
    /// Records the call's outcome on the endpoint's breaker and returns it.
    fn report<Res, E>(mut self, result: &Result<Res, E>) -> Outcome
    where
        C: Classify<Res, E>,
    {
        // A panicking classifier unwinds with the permit still held: it is
        // released unreported by the drop.
        let outcome = self.health.pool.classifier.classify(result);
        let Some(permit) = self.permit.take() else {
            return outcome;
        };
        let health = &self.health;
        let now = health.pool.clock.now();
        health.breaker.record(permit, outcome, now);
        if outcome != Outcome::Ignored {
            // ordering: Relaxed; see `evaluate`.
            health.calls.fetch_add(1, Ordering::Relaxed);
        }
        if outcome == Outcome::Failure {
            // ordering: Relaxed; see `evaluate`.
            health.failures.fetch_add(1, Ordering::Relaxed);
        }
        if outcome != Outcome::Ignored {
            health.after_record(now);
        }
        maybe_evaluate(&health.pool, now);
        outcome
    }
}

pin_project! {
    /// The response future of [`Ejectable`]: holds the endpoint's breaker
    /// permit and reports the classified outcome.
    pub struct EjectFuture<F, C> {
        #[pin]
        inner: Option<F>,
        held: Option<HeldPermit<C>>,
        rejected: Option<Rejection>,
        span: CallSpan,
    }
}

impl<F, C> EjectFuture<F, C> {
    fn running(inner: F, held: Option<HeldPermit<C>>, span: CallSpan) -> Self {
        EjectFuture {
            inner: Some(inner),
            held,
            rejected: None,
            span,
        }
    }

    fn rejected(rejection: Rejection, span: CallSpan) -> Self {
        EjectFuture {
            inner: None,
            held: None,
            rejected: Some(rejection),
            span,
        }
    }
}

impl<F, C> fmt::Debug for EjectFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EjectFuture").finish_non_exhaustive()
    }
}

impl<F, C, Res, E> Future for EjectFuture<F, C>
where
    F: Future<Output = Result<Res, E>>,
    C: Classify<Res, E>,
{
    type Output = Result<Res, TenlivesError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let Some(inner) = this.inner.as_pin_mut() else {
            let rejection = this
                .rejected
                .take()
                .expect("EjectFuture polled after completion");
            return Poll::Ready(Err(TenlivesError::Rejected(rejection)));
        };
        let result = std::task::ready!(inner.poll(cx));
        match this.held.take() {
            Some(held) => this.span.classified(held.report(&result)),
            None => this.span.ended(&result),
        }
        Poll::Ready(result.map_err(TenlivesError::Inner))
    }
}

#[cfg(feature = "balance")]
pin_project! {
    /// Wraps a `tower::discover::Discover`: each inserted endpoint is tracked
    /// by the [`OutlierDetector`] and yielded as an [`Ejectable`]; each
    /// removed one is forgotten. Feed it to `tower::balance::p2c::Balance`.
    pub struct EjectDiscover<D, K, C = DefaultClassifier> {
        #[pin]
        discover: D,
        detector: OutlierDetector<K, C>,
    }
}

#[cfg(feature = "balance")]
impl<D, K, C> EjectDiscover<D, K, C> {
    /// Tracks the endpoints `discover` yields in `detector`.
    pub fn new(discover: D, detector: OutlierDetector<K, C>) -> Self {
        EjectDiscover { discover, detector }
    }
}

#[cfg(feature = "balance")]
impl<D, K, C> futures_core::Stream for EjectDiscover<D, K, C>
where
    D: tower::discover::Discover<Key = K>,
    K: Hash + Eq + Clone,
{
    type Item = Result<tower::discover::Change<K, Ejectable<D::Service, C>>, D::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        use tower::discover::Change;
        let this = self.project();
        let change = match std::task::ready!(this.discover.poll_discover(cx)) {
            None => return Poll::Ready(None),
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            Some(Ok(change)) => change,
        };
        Poll::Ready(Some(Ok(match change {
            Change::Insert(key, svc) => {
                let svc = this.detector.endpoint(key.clone(), svc);
                Change::Insert(key, svc)
            }
            Change::Remove(key) => {
                this.detector.remove(&key);
                Change::Remove(key)
            }
        })))
    }
}
