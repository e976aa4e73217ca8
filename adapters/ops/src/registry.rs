//! The registry: named policies created on first use from a [`ConfigSet`],
//! keyed families, telemetry sources from names, and live configuration.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use tenlives_engine::adaptive::{AdaptiveLimiter, Aimd};
use tenlives_engine::breaker::CircuitBreaker;
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::events::{Event, EventKind, EventRing, EventSink, LaneRing, LaneSlot, Slot};
use tenlives_engine::queue::AdmissionQueue;
use tenlives_engine::rate::RateLimiter;
use tenlives_engine::retry::RetryBudget;
use tenlives_engine::throttle::Throttle;
use tenlives_engine::time::{Clock, MonotonicClock, Timestamp};
use tenlives_tokio::queue::AdmissionQueueLayer;
use tenlives_tokio::telemetry::{LateSources, Policy, PolicyKind, SourceError, SourceRegistry};
use tenlives_tokio::{
    DefaultClassifier, NoRetry, RetryOnErr, RetryPolicy, StackBuilder, StackLayer,
};

use crate::config::{
    AdaptiveLimitSpec, AdmissionQueueConfig, AdmissionQueueSpec, BreakerSpec, BulkheadSpec,
    ConfigSet, RateLimiterSpec, Resolved, RetryBudgetSpec, Spec, StackConfig, ThrottleSpec,
};
use crate::keyed::{Idle, Keyed};

/// The event ring policies of a registry write to.
pub type Ring = EventRing<Box<[Slot]>>;

/// A laned event ring policies of a registry may write to instead: for
/// many threads reporting at once (`docs/events.md`).
pub type LanedRing = LaneRing<Box<[LaneSlot]>>;

/// The ring a registry reports to: a [`Ring`] or a [`LanedRing`], made
/// from an `Arc` of either (see [`RegistryBuilder::events`]).
#[derive(Clone, Debug)]
pub struct EventTarget(Target);

#[derive(Clone, Debug)]
enum Target {
    Ordered(Arc<Ring>),
    Laned(Arc<LanedRing>),
}

impl From<Arc<Ring>> for EventTarget {
    fn from(ring: Arc<Ring>) -> Self {
        EventTarget(Target::Ordered(ring))
    }
}

impl From<Arc<LanedRing>> for EventTarget {
    fn from(ring: Arc<LanedRing>) -> Self {
        EventTarget(Target::Laned(ring))
    }
}

/// Where a registry's policies send their events: its ring, if it has one.
#[derive(Clone, Debug, Default)]
pub struct RegistrySink(Option<Target>);

impl EventSink for RegistrySink {
    #[inline]
    fn enabled(&self) -> bool {
        self.0.is_some()
    }

    #[inline]
    fn emit(&self, event: Event) {
        match &self.0 {
            Some(Target::Ordered(ring)) => ring.push(event),
            Some(Target::Laned(ring)) => ring.push(event),
            None => {}
        }
    }
}

/// A circuit breaker held by a registry.
pub type Breaker = CircuitBreaker<RegistrySink>;
/// A rate limiter held by a registry.
pub type Limiter = RateLimiter<RegistrySink>;
/// A concurrency limit held by a registry.
pub type Concurrency = Bulkhead<RegistrySink>;
/// A retry budget held by a registry.
pub type Retry = RetryBudget<RegistrySink>;
/// A throttle held by a registry.
pub type Throttler = Throttle<RegistrySink>;
/// An adaptive (AIMD) concurrency limit held by a registry.
pub type Adaptive = AdaptiveLimiter<Aimd, RegistrySink>;
/// The engine's admission queue inside an [`Admission`]: a queue in front
/// of a concurrency limit of its own.
pub type Queue = AdmissionQueue<Arc<Concurrency>, RegistrySink>;
/// The tower layer [`Admission::layer`] builds.
pub type QueueLayer = AdmissionQueueLayer<Arc<Concurrency>, RegistrySink>;
/// The admission stages of a [`RegistryStack`]: the registry's own
/// breaker, rate limiter and bulkhead (shared, not copied), each present if
/// the stack names one.
pub type StackAdmission = (
    Option<Arc<Breaker>>,
    Option<Arc<Limiter>>,
    Option<Arc<Concurrency>>,
);
/// The `tenlives_tokio::StackLayer` [`Registry::stack`] builds.
pub type RegistryStack = StackLayer<DefaultClassifier, NoRetry, StackAdmission>;
/// The `tenlives_tokio::StackLayer` [`Registry::retrying_stack`] builds: its
/// retries withdraw from a retry budget of the registry, shared with every
/// stack that names it.
pub type RegistryRetryingStack =
    StackLayer<DefaultClassifier, RetryPolicy<RetryOnErr, RegistrySink>, StackAdmission>;

/// An admission queue held by a registry: the engine's queue in front of a
/// concurrency limit of its own, and the longest a request waits in it.
///
/// On a configuration change, the limit changes live (`Bulkhead::set_limit`,
/// then a dispatcher pass, so that waiters get the permits a raise frees at
/// once; a lowered limit stops grants until enough permits come back) and
/// `max_wait` applies to layers built afterwards. The queue's shape —
/// `capacity`, `classes`/`weights`, `overload` — is fixed by the engine when
/// the queue is made (its slots are preallocated): a change to it is not
/// applied, the queue keeps its waiters, and the instance is listed in
/// [`ApplyReport::restart`]; the new shape is used when the instance is next
/// created (a restart).
#[derive(Debug)]
pub struct Admission {
    queue: Arc<Queue>,
    /// `max_wait` in nanoseconds (saturated at `u64::MAX`).
    max_wait: AtomicU64,
}

impl Admission {
    /// The engine's queue (its permits come from [`Queue::source`]).
    pub fn queue(&self) -> &Arc<Queue> {
        &self.queue
    }

    /// The longest a request waits for a permit, as configured now.
    pub fn max_wait(&self) -> Duration {
        // ordering: Relaxed; a lone value, read whole, ordered with nothing.
        Duration::from_nanos(self.max_wait.load(Ordering::Relaxed))
    }

    /// A `tenlives_tokio::queue::AdmissionQueueLayer` over this queue with
    /// the `max_wait` in force now. Every layer built here shares the queue
    /// and its permits; a later change of `max_wait` applies to layers built
    /// after it.
    pub fn layer(&self) -> QueueLayer {
        AdmissionQueueLayer::new(self.queue.clone(), self.max_wait())
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl crate::keyed::Idle for Admission {
    /// No waiter and no permit in flight.
    fn is_idle(&self, _now: Timestamp) -> bool {
        self.queue.waiting() == 0 && self.queue.source().in_flight() == 0
    }
}

/// Events the registry itself emits (source: the policy named `registry`,
/// kind `other`). Codes in the block tenlives reserves, above the engine's.
pub mod events {
    use tenlives_engine::events::EventKind;

    /// A configuration was applied. Payload: `[instances whose configuration
    /// changed, 0]`.
    pub const CONFIG_APPLIED: EventKind = EventKind(0x7F00);
    /// A configuration file was refused; the one in force stays. Payload:
    /// `[the line of the error, 0]`.
    pub const CONFIG_REJECTED: EventKind = EventKind(0x7F01);
    /// An operator changed something through the admin plane. Payload:
    /// `[action code, 0]`: 1 configuration set, 2 breaker forced open,
    /// 3 breaker closed (reset), 4 breaker disabled, 5 bulkhead limit set.
    pub const AUDIT: EventKind = EventKind(0x7F02);
    /// The policies' state was saved ([`Registry::save_state`](crate::Registry::save_state)).
    /// Payload: `[policies saved, bytes written]`.
    pub const STATE_SAVED: EventKind = EventKind(0x7F10);
    /// Policies' state was restored from a file. Payload: `[policies
    /// restored, policies that start fresh]`.
    pub const STATE_RESTORED: EventKind = EventKind(0x7F11);
    /// A state file could not be used; every policy starts fresh. Payload:
    /// `[1 corrupt, 2 unreadable, 0]`.
    pub const STATE_DISCARDED: EventKind = EventKind(0x7F12);
    /// A canary started or judged a window (`replay::Canary`). Payload:
    /// `[0 started, share in percent]`, `[1 quiet, requests]` or `[2 passed,
    /// good windows in a row]`.
    pub const CANARY_WINDOW: EventKind = EventKind(0x7F20);
    /// A canary's candidate was applied as the configuration in force.
    /// Payload: `[instances whose configuration changed, 0]`.
    pub const CANARY_PROMOTED: EventKind = EventKind(0x7F21);
    /// A canary broke a guardrail and was rolled back. Payload: `[the
    /// window's candidate requests, of which failed]`.
    pub const CANARY_ROLLED_BACK: EventKind = EventKind(0x7F22);
}

/// Why the registry could not give a policy.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum RegistryError {
    /// The kind has no engine defaults (rate limiters need a `rate`,
    /// bulkheads a `limit`) and the configuration has neither an instance
    /// of this name nor a `configs.default`.
    NotConfigured {
        /// The section (`rate_limiter`, `bulkhead`).
        section: &'static str,
        /// The instance asked for.
        name: String,
    },
    /// A keyed family of this name exists with another key type.
    KeyType {
        /// The family.
        family: String,
    },
    /// A keyed family's capacity was zero.
    ZeroCapacity,
    /// More than `u32::MAX` telemetry sources.
    SourcesExhausted,
    /// The name already labels the metrics of another instance of the same
    /// kind (a named instance and a keyed family, or a rate limiter named
    /// `registry`), whose series would merge.
    NameTaken {
        /// The name.
        name: String,
    },
    /// The stack retries (it names a `retry_budget`) and was asked for
    /// through [`Registry::stack`], whose layer cannot retry; or it does
    /// not retry and was asked for through [`Registry::retrying_stack`].
    Retries {
        /// The stack.
        name: String,
        /// Whether its configuration names a retry budget.
        configured: bool,
    },
    /// A stack's retry backoff is invalid (a configuration built in code:
    /// files are checked when they load).
    InvalidStack {
        /// The stack.
        name: String,
        /// The backoff's error.
        error: tenlives_engine::ConfigError,
    },
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::NotConfigured { section, name } => write!(
                f,
                "no configuration for `{name}`: add `{section}.instances.{name}` or `{section}.configs.default`"
            ),
            RegistryError::KeyType { family } => {
                write!(
                    f,
                    "the keyed family `{family}` exists with another key type"
                )
            }
            RegistryError::ZeroCapacity => {
                f.write_str("a keyed family needs a capacity of at least 1")
            }
            RegistryError::SourcesExhausted => f.write_str("no telemetry source id is left"),
            RegistryError::NameTaken { name } => write!(
                f,
                "`{name}` already labels the metrics of another instance of this kind"
            ),
            RegistryError::Retries {
                name,
                configured: true,
            } => write!(
                f,
                "the stack `{name}` retries (it names a `retry_budget`): build it with `Registry::retrying_stack`"
            ),
            RegistryError::Retries {
                name,
                configured: false,
            } => write!(
                f,
                "the stack `{name}` names no `retry_budget`: build it with `Registry::stack`, or add `stack.instances.{name}.retry_budget`"
            ),
            RegistryError::InvalidStack { name, error } => {
                write!(
                    f,
                    "the stack `{name}` has an invalid retry backoff: {error}"
                )
            }
        }
    }
}

impl std::error::Error for RegistryError {}

/// What [`Registry::apply`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ApplyReport {
    /// Instances (`section.name`, keyed ones as `section.family:key`) whose
    /// configuration changed.
    pub changed: Vec<String>,
    /// Instances kept on their configuration because the new one has none
    /// for them (a rate limiter or bulkhead whose entry and default were
    /// removed).
    pub kept: Vec<String>,
    /// Instances whose new configuration changes a part the engine cannot
    /// change live (an admission queue's `capacity`, `classes`, `weights` or
    /// `overload`): the parts it can change were applied (they are also in
    /// `changed`), the rest waits for the instance's next creation. Also
    /// every stack built so far (`stack.name`) whose shape changed: layers
    /// built from then on take the new shape, those built before keep
    /// theirs.
    pub restart: Vec<String>,
}

/// A primitive the registry can hold.
trait Primitive: Idle + Send + Sync + Sized + 'static {
    type Spec: Spec;
    const KIND: PolicyKind;
    fn section(set: &ConfigSet) -> &Resolved<Self::Spec>;
    fn make(
        cfg: &<Self::Spec as Spec>::Built,
        sink: RegistrySink,
        source: u32,
        now: Timestamp,
    ) -> Self;
    fn apply(&self, cfg: &<Self::Spec as Spec>::Built, now: Timestamp);
    fn initial_limit(_cfg: &<Self::Spec as Spec>::Built) -> Option<u32> {
        None
    }
    /// What an operator wants to see of its state.
    fn state(&self, now: Timestamp) -> serde_json::Value;
    /// True when `cfg` differs from the instance in a part `apply` cannot
    /// change live.
    fn needs_restart(&self, _cfg: &<Self::Spec as Spec>::Built) -> bool {
        false
    }
}

impl Primitive for Admission {
    type Spec = AdmissionQueueSpec;
    const KIND: PolicyKind = PolicyKind::Bulkhead;
    fn section(set: &ConfigSet) -> &Resolved<AdmissionQueueSpec> {
        &set.admission_queue
    }
    fn make(cfg: &AdmissionQueueConfig, sink: RegistrySink, source: u32, _now: Timestamp) -> Self {
        // The limit was checked by `Bulkhead::new` when the configuration
        // was loaded; the same check cannot fail here.
        let bulkhead = Bulkhead::with_sink(cfg.limit, sink.clone(), source)
            .expect("a validated bulkhead limit");
        Admission {
            queue: Arc::new(AdmissionQueue::with_sink(
                Arc::new(bulkhead),
                cfg.queue.clone(),
                sink,
                source,
            )),
            max_wait: AtomicU64::new(nanos(cfg.max_wait)),
        }
    }
    fn apply(&self, cfg: &AdmissionQueueConfig, _now: Timestamp) {
        // Validated at load time, as for a bulkhead.
        let _ = self.queue.source().set_limit(cfg.limit);
        // A raised limit frees permits behind the queue's back: a pass
        // hands them to the waiters now.
        self.queue.dispatch();
        // ordering: Relaxed; see `max_wait`.
        self.max_wait.store(nanos(cfg.max_wait), Ordering::Relaxed);
    }
    fn initial_limit(cfg: &AdmissionQueueConfig) -> Option<u32> {
        Some(cfg.limit)
    }
    fn state(&self, _now: Timestamp) -> serde_json::Value {
        let c = self.queue.config();
        serde_json::json!({
            "waiting": self.queue.waiting(),
            "in_flight": self.queue.source().in_flight(),
            "limit": self.queue.source().limit(),
            "capacity": c.capacity(),
            "weights": c.weights(),
            "max_wait_ms": u64::try_from(self.max_wait().as_millis()).unwrap_or(u64::MAX),
        })
    }
    fn needs_restart(&self, cfg: &AdmissionQueueConfig) -> bool {
        *self.queue.config() != cfg.queue
    }
}

impl Primitive for Breaker {
    type Spec = BreakerSpec;
    const KIND: PolicyKind = PolicyKind::CircuitBreaker;
    fn section(set: &ConfigSet) -> &Resolved<BreakerSpec> {
        &set.circuit_breaker
    }
    fn make(
        cfg: &tenlives_engine::breaker::BreakerConfig,
        sink: RegistrySink,
        source: u32,
        _now: Timestamp,
    ) -> Self {
        CircuitBreaker::with_sink(cfg.clone(), sink, source)
    }
    fn apply(&self, cfg: &tenlives_engine::breaker::BreakerConfig, now: Timestamp) {
        self.set_config(cfg.clone(), now);
    }
    fn state(&self, now: Timestamp) -> serde_json::Value {
        let s = self.snapshot(now);
        serde_json::json!({
            "state": breaker_state_name(s.state),
            "calls": s.window.calls,
            "failures": s.window.failures,
            "slow_calls": s.window.slow,
            "consecutive_failures": s.consecutive_failures,
            "trips": s.trips,
            "retry_after_ms": s.retry_after.map(|d| d.as_millis() as u64),
        })
    }
}

/// The name of a breaker state in the admin plane's JSON.
pub(crate) fn breaker_state_name(state: tenlives_engine::breaker::BreakerState) -> &'static str {
    use tenlives_engine::breaker::BreakerState as B;
    match state {
        B::Closed => "closed",
        B::Open => "open",
        B::HalfOpen => "half_open",
        B::ForcedOpen => "forced_open",
        B::Disabled => "disabled",
        B::MetricsOnly => "metrics_only",
    }
}

impl Primitive for Limiter {
    type Spec = RateLimiterSpec;
    const KIND: PolicyKind = PolicyKind::Other;
    fn section(set: &ConfigSet) -> &Resolved<RateLimiterSpec> {
        &set.rate_limiter
    }
    fn make(
        cfg: &tenlives_engine::rate::Quota,
        sink: RegistrySink,
        source: u32,
        _now: Timestamp,
    ) -> Self {
        RateLimiter::with_sink(*cfg, sink, source)
    }
    fn apply(&self, cfg: &tenlives_engine::rate::Quota, now: Timestamp) {
        self.set_quota(*cfg, now);
    }
    fn state(&self, now: Timestamp) -> serde_json::Value {
        serde_json::json!({ "available": self.available(now) })
    }
}

impl Primitive for Concurrency {
    type Spec = BulkheadSpec;
    const KIND: PolicyKind = PolicyKind::Bulkhead;
    fn section(set: &ConfigSet) -> &Resolved<BulkheadSpec> {
        &set.bulkhead
    }
    fn make(
        cfg: &crate::config::BulkheadConfig,
        sink: RegistrySink,
        source: u32,
        _now: Timestamp,
    ) -> Self {
        // The limit was checked by `Bulkhead::new` when the configuration
        // was loaded; the same check cannot fail here.
        Bulkhead::with_sink(cfg.limit, sink, source).expect("a validated bulkhead limit")
    }
    fn apply(&self, cfg: &crate::config::BulkheadConfig, _now: Timestamp) {
        // Validated at load time, as above.
        let _ = self.set_limit(cfg.limit);
    }
    fn initial_limit(cfg: &crate::config::BulkheadConfig) -> Option<u32> {
        Some(cfg.limit)
    }
    fn state(&self, _now: Timestamp) -> serde_json::Value {
        serde_json::json!({ "in_flight": self.in_flight(), "limit": self.limit() })
    }
}

impl Primitive for Retry {
    type Spec = RetryBudgetSpec;
    const KIND: PolicyKind = PolicyKind::RetryBudget;
    fn section(set: &ConfigSet) -> &Resolved<RetryBudgetSpec> {
        &set.retry_budget
    }
    fn make(
        cfg: &tenlives_engine::retry::RetryBudgetConfig,
        sink: RegistrySink,
        source: u32,
        _now: Timestamp,
    ) -> Self {
        RetryBudget::with_sink(*cfg, sink, source)
    }
    fn apply(&self, cfg: &tenlives_engine::retry::RetryBudgetConfig, now: Timestamp) {
        self.set_config(*cfg, now);
    }
    fn state(&self, now: Timestamp) -> serde_json::Value {
        let c = self.counts(now);
        serde_json::json!({
            "requests": c.deposits,
            "retries": c.withdrawals,
            "remaining": self.remaining(now),
        })
    }
}

impl Primitive for Throttler {
    type Spec = ThrottleSpec;
    const KIND: PolicyKind = PolicyKind::Throttle;
    fn section(set: &ConfigSet) -> &Resolved<ThrottleSpec> {
        &set.throttle
    }
    fn make(
        cfg: &tenlives_engine::throttle::ThrottleConfig,
        sink: RegistrySink,
        source: u32,
        _now: Timestamp,
    ) -> Self {
        Throttle::with_sink(*cfg, sink, source)
    }
    fn apply(&self, cfg: &tenlives_engine::throttle::ThrottleConfig, now: Timestamp) {
        self.set_config(*cfg, now);
    }
    fn state(&self, now: Timestamp) -> serde_json::Value {
        let (requests, accepted) = self.counts(now);
        serde_json::json!({
            "requests": requests,
            "accepted": accepted,
            "rejection_probability": self.probability(now),
        })
    }
}

impl Primitive for Adaptive {
    type Spec = AdaptiveLimitSpec;
    const KIND: PolicyKind = PolicyKind::AdaptiveLimit;
    fn section(set: &ConfigSet) -> &Resolved<AdaptiveLimitSpec> {
        &set.adaptive_limit
    }
    fn make(
        cfg: &crate::config::AdaptiveLimitConfig,
        sink: RegistrySink,
        source: u32,
        now: Timestamp,
    ) -> Self {
        use tenlives_engine::adaptive::LimitAlgorithm;
        // The initial limit was checked (at least the minimum, which is at
        // least 1) when the configuration was loaded.
        let bulkhead = Bulkhead::with_sink(cfg.algorithm.initial_limit().max(1), sink, source)
            .expect("a validated initial limit");
        AdaptiveLimiter::from_parts(cfg.algorithm.clone(), cfg.window, now, bulkhead)
    }
    fn apply(&self, cfg: &crate::config::AdaptiveLimitConfig, now: Timestamp) {
        // Two mailboxes: the algorithm, then the window (a window may be
        // judged between the two; each is whole).
        self.set_algorithm(cfg.algorithm.clone(), now);
        self.set_window(cfg.window, now);
    }
    fn initial_limit(cfg: &crate::config::AdaptiveLimitConfig) -> Option<u32> {
        use tenlives_engine::adaptive::LimitAlgorithm;
        Some(cfg.algorithm.initial_limit())
    }
    fn state(&self, _now: Timestamp) -> serde_json::Value {
        serde_json::json!({ "in_flight": self.in_flight(), "limit": self.limit() })
    }
}

/// The configuration name an instance resolves through, most specific
/// first: a keyed entry `family:key`, then its family.
fn resolve<'a, S: Spec>(section: &'a Resolved<S>, names: &[&str]) -> Option<&'a (S, S::Built)> {
    names
        .iter()
        .find_map(|n| section.instances.get(*n))
        .or(section.default.as_ref())
}

struct SourceEntry {
    source: u32,
    name: Arc<str>,
    kind: PolicyKind,
    limit: Option<u32>,
}

#[cfg(feature = "otel")]
mod otel;
mod persist;
pub use persist::{PersistError, Persistence, RestoreReport, Skipped};

/// Named instances of one kind.
struct Named<P> {
    map: RwLock<HashMap<Arc<str>, Arc<P>>>,
}

impl<P> Default for Named<P> {
    fn default() -> Self {
        Named {
            map: RwLock::new(HashMap::new()),
        }
    }
}

/// A keyed family, type-erased for reload.
trait Family: Send + Sync {
    fn reconfigure(
        &self,
        inner: &Inner,
        old: &ConfigSet,
        new: &ConfigSet,
        now: Timestamp,
        report: &mut ApplyReport,
    );
    fn as_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
    fn view(&self) -> serde_json::Value;
}

impl<K, P> Family for Keyed<K, P>
where
    K: Hash + Eq + Clone + fmt::Display + Send + 'static,
    P: Primitive,
{
    fn reconfigure(
        &self,
        _inner: &Inner,
        old: &ConfigSet,
        new: &ConfigSet,
        now: Timestamp,
        report: &mut ApplyReport,
    ) {
        let family = self.family().to_owned();
        self.for_each(|key, policy| {
            let specific = format!("{family}:{key}");
            let names = [specific.as_str(), family.as_str()];
            reconfigure_one::<P>(policy, &specific, &names, old, new, now, report);
        });
    }
    fn as_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
    fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "section": <P::Spec as Spec>::SECTION,
            "name": self.family(),
            "keyed": true,
            "entries": self.len(),
            "capacity": self.capacity(),
        })
    }
}

fn reconfigure_one<P: Primitive>(
    policy: &P,
    label: &str,
    names: &[&str],
    old: &ConfigSet,
    new: &ConfigSet,
    now: Timestamp,
    report: &mut ApplyReport,
) {
    let before = resolve(P::section(old), names);
    let label = format!("{}.{label}", <P::Spec as Spec>::SECTION);
    match resolve(P::section(new), names) {
        Some((spec, built)) => {
            if before.map(|(s, _)| s) != Some(spec) {
                policy.apply(built, now);
                if policy.needs_restart(built) {
                    report.restart.push(label.clone());
                }
                report.changed.push(label);
            }
        }
        None => report.kept.push(label),
    }
}

/// Keyed families by kind and name.
type Families = HashMap<(PolicyKind, Arc<str>), Arc<dyn Family>>;

struct Inner {
    config: RwLock<Arc<ConfigSet>>,
    /// Serialises [`Registry::apply`]: one configuration change at a time.
    applying: Mutex<()>,
    clock: Arc<dyn Clock + Send + Sync>,
    sink: RegistrySink,
    sources: Mutex<(u32, Vec<SourceEntry>)>,
    breakers: Named<Breaker>,
    limiters: Named<Limiter>,
    bulkheads: Named<Concurrency>,
    budgets: Named<Retry>,
    throttles: Named<Throttler>,
    adaptive: Named<Adaptive>,
    queues: Named<Admission>,
    /// Stacks built so far: how many layers each.
    stacks: Mutex<std::collections::BTreeMap<String, u64>>,
    families: Mutex<Families>,
}

/// Named policies, created on first use from a [`ConfigSet`].
///
/// - `registry.breaker("payments")` returns the one breaker named
///   `payments`, creating it on the first call from
///   `circuit_breaker.instances.payments` (or `configs.default`, or the
///   engine's defaults); concurrent first calls create exactly one.
/// - `registry.keyed_breaker::<String>("upstream", 1000)` returns a family
///   of breakers, one per key, at most 1000 at once, evicting only idle
///   entries; each entry is configured from `upstream:<key>`, else
///   `upstream`, else the default.
/// - every instance gets a telemetry source id when created, named after
///   it; [`Registry::sources`] lists them for the Prometheus exporter.
/// - [`Registry::apply`] changes the configuration of every live instance
///   in place, keeping its state.
///
/// Clones share one registry.
///
/// ```
/// use tenlives_ops::{ConfigSet, Registry};
/// use tenlives_ops::config::{FileSpec, RateLimiterSpec};
///
/// let mut spec = FileSpec::default();
/// spec.rate_limiter.instances.insert(
///     "api".into(),
///     RateLimiterSpec { rate: Some(10), ..Default::default() },
/// );
/// let registry = Registry::builder().config(ConfigSet::from_file_spec(&spec)?).build();
/// let api = registry.rate_limiter("api")?;
/// assert_eq!(api.quota().rate(), 10);
/// assert!(std::sync::Arc::ptr_eq(&api, &registry.rate_limiter("api")?));
/// assert!(registry.rate_limiter("other").is_err()); // no rate for it
/// let breaker = registry.breaker("payments")?; // the engine's defaults
/// let sources = registry.sources()?;
/// assert_eq!(sources.len(), 3); // the registry itself, api, payments
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("sources", &lock(&self.inner.sources).1.len())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Registry`].
pub struct RegistryBuilder {
    config: ConfigSet,
    clock: Arc<dyn Clock + Send + Sync>,
    ring: Option<Target>,
}

impl fmt::Debug for RegistryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryBuilder").finish_non_exhaustive()
    }
}

impl RegistryBuilder {
    /// The configuration policies are created from (default: the engine's
    /// defaults).
    pub fn config(mut self, config: ConfigSet) -> Self {
        self.config = config;
        self
    }

    /// The clock for creation and reconfiguration times (default: the
    /// monotonic clock). Use the clock the policies are called with.
    pub fn clock(mut self, clock: impl Clock + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The event ring every policy (and the registry) reports to: an
    /// `Arc<`[`Ring`]`>`, or an `Arc<`[`LanedRing`]`>` when many threads
    /// report at once (each writes a lane of its own; capacity and order
    /// are per lane, `docs/events.md`).
    pub fn events(mut self, ring: impl Into<EventTarget>) -> Self {
        self.ring = Some(ring.into().0);
        self
    }

    /// The registry.
    pub fn build(self) -> Registry {
        let inner = Inner {
            config: RwLock::new(Arc::new(self.config)),
            applying: Mutex::new(()),
            clock: self.clock,
            sink: RegistrySink(self.ring),
            sources: Mutex::new((
                1,
                vec![SourceEntry {
                    source: 0,
                    name: Arc::from("registry"),
                    kind: PolicyKind::Other,
                    limit: None,
                }],
            )),
            breakers: Named::default(),
            limiters: Named::default(),
            bulkheads: Named::default(),
            budgets: Named::default(),
            throttles: Named::default(),
            adaptive: Named::default(),
            queues: Named::default(),
            stacks: Mutex::new(Default::default()),
            families: Mutex::new(HashMap::new()),
        };
        Registry {
            inner: Arc::new(inner),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves its data whole (single inserts and
    // swaps), so a poisoned lock is used as is.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The source id of the registry's own events.
pub const REGISTRY_SOURCE: u32 = 0;

impl Inner {
    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn config(&self) -> Arc<ConfigSet> {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn new_source(
        &self,
        name: &Arc<str>,
        kind: PolicyKind,
        limit: Option<u32>,
    ) -> Result<u32, RegistryError> {
        let mut sources = lock(&self.sources);
        let series = |k: PolicyKind| match k {
            PolicyKind::AdaptiveLimit => PolicyKind::Bulkhead,
            other => other,
        };
        if sources
            .1
            .iter()
            .any(|s| s.name == *name && series(s.kind) == series(kind))
        {
            return Err(RegistryError::NameTaken {
                name: name.to_string(),
            });
        }
        let source = sources.0;
        sources.0 = source
            .checked_add(1)
            .ok_or(RegistryError::SourcesExhausted)?;
        sources.1.push(SourceEntry {
            source,
            name: name.clone(),
            kind,
            limit,
        });
        Ok(source)
    }

    fn named<P: Primitive>(&self, named: &Named<P>, name: &str) -> Result<Arc<P>, RegistryError> {
        self.named_or(named, name, None)
    }

    /// As `named`, with `fallback` for a name the configuration has no
    /// entry (and no default) for.
    fn named_or<P: Primitive>(
        &self,
        named: &Named<P>,
        name: &str,
        fallback: Option<&<P::Spec as Spec>::Built>,
    ) -> Result<Arc<P>, RegistryError> {
        if let Some(p) = named
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return Ok(p.clone());
        }
        let mut map = named.map.write().unwrap_or_else(PoisonError::into_inner);
        // Checked again under the write lock: of racing first callers, the
        // first to get here creates the instance, the others find it.
        if let Some(p) = map.get(name) {
            return Ok(p.clone());
        }
        let config = self.config();
        let built = resolve(P::section(&config), &[name])
            .map(|(_, b)| b)
            .or(fallback)
            .ok_or_else(|| RegistryError::NotConfigured {
                section: <P::Spec as Spec>::SECTION,
                name: name.to_owned(),
            })?;
        let name: Arc<str> = Arc::from(name);
        let source = self.new_source(&name, P::KIND, P::initial_limit(built))?;
        let policy = Arc::new(P::make(built, self.sink.clone(), source, self.now()));
        map.insert(name, policy.clone());
        Ok(policy)
    }

    fn emit(&self, kind: EventKind, payload: [u64; 2]) {
        self.sink
            .emit(Event::new(kind, REGISTRY_SOURCE, self.now(), payload));
    }
}

impl Registry {
    /// A builder: engine defaults, the monotonic clock, no event ring.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder {
            config: ConfigSet::default(),
            clock: Arc::new(MonotonicClock::new()),
            ring: None,
        }
    }

    /// The circuit breaker named `name`, created on first use.
    ///
    /// # Errors
    ///
    /// [`RegistryError::SourcesExhausted`] only: breakers have defaults.
    pub fn breaker(&self, name: &str) -> Result<Arc<Breaker>, RegistryError> {
        self.inner.named(&self.inner.breakers, name)
    }

    /// The rate limiter named `name`, created on first use.
    ///
    /// # Errors
    ///
    /// [`RegistryError::NotConfigured`] when the configuration has no
    /// quota for it.
    pub fn rate_limiter(&self, name: &str) -> Result<Arc<Limiter>, RegistryError> {
        self.inner.named(&self.inner.limiters, name)
    }

    /// The bulkhead named `name`, created on first use.
    ///
    /// # Errors
    ///
    /// [`RegistryError::NotConfigured`] when the configuration has no
    /// limit for it.
    pub fn bulkhead(&self, name: &str) -> Result<Arc<Concurrency>, RegistryError> {
        self.inner.named(&self.inner.bulkheads, name)
    }

    /// The retry budget named `name`, created on first use.
    ///
    /// # Errors
    ///
    /// [`RegistryError::SourcesExhausted`] only.
    pub fn retry_budget(&self, name: &str) -> Result<Arc<Retry>, RegistryError> {
        self.inner.named(&self.inner.budgets, name)
    }

    /// The throttle named `name`, created on first use.
    ///
    /// # Errors
    ///
    /// [`RegistryError::SourcesExhausted`] only.
    pub fn throttle(&self, name: &str) -> Result<Arc<Throttler>, RegistryError> {
        self.inner.named(&self.inner.throttles, name)
    }

    /// The adaptive (AIMD) concurrency limit named `name`, created on first
    /// use.
    ///
    /// # Errors
    ///
    /// [`RegistryError::NameTaken`] when a bulkhead has the name (their
    /// metrics would merge), [`RegistryError::SourcesExhausted`].
    pub fn adaptive_limit(&self, name: &str) -> Result<Arc<Adaptive>, RegistryError> {
        self.inner.named(&self.inner.adaptive, name)
    }

    /// The admission queue named `name`, created on first use (with the
    /// concurrency limit it stands in front of). Build its tower layer with
    /// [`Admission::layer`].
    ///
    /// # Errors
    ///
    /// [`RegistryError::NotConfigured`] when the configuration has no entry
    /// (and no default) for it; [`RegistryError::NameTaken`] when a bulkhead
    /// or adaptive limit has the name (their metrics would merge).
    pub fn admission_queue(&self, name: &str) -> Result<Arc<Admission>, RegistryError> {
        self.inner.named(&self.inner.queues, name)
    }

    /// A `tenlives_tokio::StackLayer` shaped by `stack.instances.<name>`
    /// (else `stack.configs.default`): its timeout, and the named breaker,
    /// rate limiter and bulkhead of this registry as its admission stages,
    /// created on first use as by [`Registry::breaker`] and the others.
    /// The stages are the registry's instances themselves, shared: a
    /// reload or an admin change of a member policy reaches every stack
    /// that holds it at once. The stack's own shape (which stages, which
    /// names, the timeout) is read here: a change of it applies to layers
    /// built afterwards, and is reported in [`ApplyReport::restart`].
    ///
    /// # Errors
    ///
    /// [`RegistryError::NotConfigured`] for a stack the configuration does
    /// not describe, or a member that cannot be created (a rate limiter or
    /// bulkhead with no configuration); [`RegistryError::NameTaken`].
    pub fn stack(&self, name: &str) -> Result<RegistryStack, RegistryError> {
        let shape = self.stack_shape(name)?;
        if shape.retry.is_some() {
            return Err(RegistryError::Retries {
                name: name.to_owned(),
                configured: true,
            });
        }
        let layer = self.stack_builder(&shape)?.build();
        self.count_stack(name);
        Ok(layer)
    }

    /// The stack named `name` with its retries: like [`stack`](Self::stack),
    /// and its retries withdraw from the registry's retry budget the
    /// configuration names (`stack.instances.<name>.retry_budget`), created
    /// on first use and shared with every stack and
    /// [`retry_budget`](Self::retry_budget) caller naming it, so their
    /// retries together stay within its ratio. A reload of the budget's
    /// configuration reaches built stacks; the backoff (`retry_backoff`,
    /// `retry_backoff_cap`, `max_retries`) applies to stacks built after it.
    /// Its services need `Clone` requests and a `Clone` wrapped service.
    ///
    /// Errors: as [`stack`](Self::stack); [`RegistryError::Retries`] if
    /// the stack names no retry budget; [`RegistryError::InvalidStack`] for
    /// a backoff that does not validate (possible only for a configuration
    /// built in code).
    ///
    /// ```
    /// # #[cfg(feature = "yaml")]
    /// # fn main() {
    /// use tenlives_ops::{ConfigSet, Format, Registry};
    ///
    /// let yaml = "
    /// retry_budget:
    ///   instances:
    ///     shared: { ratio: 0.2 }
    /// stack:
    ///   instances:
    ///     users: { timeout: 2s, retry_budget: shared }
    ///     orders: { timeout: 1s, retry_budget: shared, max_retries: 1 }
    /// ";
    /// let config = ConfigSet::from_str("policies.yaml", yaml, Format::Yaml).unwrap();
    /// let registry = Registry::builder().config(config).build();
    /// let users = registry.retrying_stack("users").unwrap();
    /// let orders = registry.retrying_stack("orders").unwrap();
    /// // One budget behind both stacks.
    /// assert!(std::ptr::eq(users.policies().retry().budget(), orders.policies().retry().budget()));
    /// assert!(registry.stack("users").is_err());
    /// # }
    /// # #[cfg(not(feature = "yaml"))]
    /// # fn main() {}
    /// ```
    pub fn retrying_stack(&self, name: &str) -> Result<RegistryRetryingStack, RegistryError> {
        let shape = self.stack_shape(name)?;
        let Some(retry) = &shape.retry else {
            return Err(RegistryError::Retries {
                name: name.to_owned(),
                configured: false,
            });
        };
        let budget = self.retry_budget(&retry.budget)?;
        // Validated when a file loads; a configuration built in code (its
        // fields are public) is checked here.
        let backoff = retry
            .schedule()
            .map_err(|error| RegistryError::InvalidStack {
                name: name.to_owned(),
                error,
            })?;
        let layer = self
            .stack_builder(&shape)?
            .retry(RetryPolicy::shared(backoff, budget))
            .build();
        self.count_stack(name);
        Ok(layer)
    }

    fn stack_shape(&self, name: &str) -> Result<StackConfig, RegistryError> {
        let config = self.inner.config();
        let (_, shape) =
            config
                .stack
                .for_instance(name)
                .ok_or_else(|| RegistryError::NotConfigured {
                    section: "stack",
                    name: name.to_owned(),
                })?;
        Ok(shape.clone())
    }

    fn stack_builder(
        &self,
        shape: &StackConfig,
    ) -> Result<StackBuilder<DefaultClassifier, NoRetry, StackAdmission>, RegistryError> {
        let breaker = shape
            .circuit_breaker
            .as_deref()
            .map(|n| self.breaker(n))
            .transpose()?;
        let limiter = shape
            .rate_limiter
            .as_deref()
            .map(|n| self.rate_limiter(n))
            .transpose()?;
        let bulkhead = shape
            .bulkhead
            .as_deref()
            .map(|n| self.bulkhead(n))
            .transpose()?;
        let mut builder = StackLayer::builder().admission((breaker, limiter, bulkhead));
        if let Some(after) = shape.timeout {
            builder = builder.timeout(after);
        }
        Ok(builder)
    }

    fn count_stack(&self, name: &str) {
        *lock(&self.inner.stacks).entry(name.to_owned()).or_insert(0) += 1;
    }

    fn keyed<K, P>(&self, family: &str, capacity: usize) -> Result<Arc<Keyed<K, P>>, RegistryError>
    where
        K: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static,
        P: Primitive,
    {
        if capacity == 0 {
            return Err(RegistryError::ZeroCapacity);
        }
        let mut families = lock(&self.inner.families);
        let slot = (P::KIND, Arc::<str>::from(family));
        if let Some(existing) = families.get(&slot) {
            return existing
                .clone()
                .as_any()
                .downcast::<Keyed<K, P>>()
                .map_err(|_| RegistryError::KeyType {
                    family: family.to_owned(),
                });
        }
        let config = self.inner.config();
        // The family's own entry, else the default: what a key without an
        // entry of its own gets, and (kept here) what it gets if a later
        // configuration has neither.
        let Some((_, fallback)) = resolve(P::section(&config), &[family]) else {
            return Err(RegistryError::NotConfigured {
                section: <P::Spec as Spec>::SECTION,
                name: family.to_owned(),
            });
        };
        let fallback = fallback.clone();
        let name = slot.1.clone();
        let source = self
            .inner
            .new_source(&name, P::KIND, P::initial_limit(&fallback))?;
        // Weak: the registry holds its families; a family held after the
        // registry is gone makes entries from its fallback.
        let weak = Arc::downgrade(&self.inner);
        let sink = self.inner.sink.clone();
        let fam = name.clone();
        let make = move |key: &K, now: Timestamp| -> Arc<P> {
            let specific = format!("{fam}:{key}");
            let current = weak.upgrade().map(|inner| inner.config());
            let built = current
                .as_deref()
                .and_then(|c| resolve(P::section(c), &[specific.as_str(), &fam]))
                .map_or(&fallback, |(_, b)| b);
            Arc::new(P::make(built, sink.clone(), source, now))
        };
        let keyed = Arc::new(Keyed::new(name, capacity, Box::new(make)));
        families.insert(slot, keyed.clone());
        Ok(keyed)
    }

    /// A family of circuit breakers, one per key, at most `capacity` at
    /// once (the first call fixes the capacity; later calls return the same
    /// family).
    ///
    /// # Errors
    ///
    /// [`RegistryError::ZeroCapacity`], [`RegistryError::KeyType`].
    pub fn keyed_breaker<K>(
        &self,
        family: &str,
        capacity: usize,
    ) -> Result<Arc<Keyed<K, Breaker>>, RegistryError>
    where
        K: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static,
    {
        self.keyed(family, capacity)
    }

    /// A family of bulkheads, one per key (see [`Registry::keyed_breaker`]).
    ///
    /// # Errors
    ///
    /// As [`Registry::keyed_breaker`], and [`RegistryError::NotConfigured`].
    pub fn keyed_bulkhead<K>(
        &self,
        family: &str,
        capacity: usize,
    ) -> Result<Arc<Keyed<K, Concurrency>>, RegistryError>
    where
        K: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static,
    {
        self.keyed(family, capacity)
    }

    /// A family of rate limiters, one per key (see [`Registry::keyed_breaker`]).
    ///
    /// # Errors
    ///
    /// As [`Registry::keyed_bulkhead`].
    pub fn keyed_rate_limiter<K>(
        &self,
        family: &str,
        capacity: usize,
    ) -> Result<Arc<Keyed<K, Limiter>>, RegistryError>
    where
        K: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static,
    {
        self.keyed(family, capacity)
    }

    /// Creates every named instance the configuration in force lists
    /// (`instances.<name>` of every section), as Resilience4j does at
    /// start-up, so that an exporter built from [`Registry::sources`]
    /// afterwards labels them all. Skips `family:key` entries and names a
    /// keyed family of the same kind already took (create keyed families
    /// first). Returns the instances created, as `section.name`.
    ///
    /// # Errors
    ///
    /// [`RegistryError::SourcesExhausted`].
    pub fn create_configured(&self) -> Result<Vec<String>, RegistryError> {
        fn each<P: Primitive>(
            inner: &Inner,
            named: &Named<P>,
            config: &ConfigSet,
            out: &mut Vec<String>,
        ) -> Result<(), RegistryError> {
            for name in P::section(config).instances.keys() {
                let exists = named
                    .map
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains_key(name.as_str());
                if name.contains(':') || exists {
                    continue;
                }
                match inner.named(named, name) {
                    Ok(_) => out.push(format!("{}.{name}", <P::Spec as Spec>::SECTION)),
                    Err(RegistryError::NameTaken { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
        let config = self.inner.config();
        let i = &*self.inner;
        let mut out = Vec::new();
        each(i, &i.breakers, &config, &mut out)?;
        each(i, &i.limiters, &config, &mut out)?;
        each(i, &i.bulkheads, &config, &mut out)?;
        each(i, &i.budgets, &config, &mut out)?;
        each(i, &i.throttles, &config, &mut out)?;
        each(i, &i.adaptive, &config, &mut out)?;
        each(i, &i.queues, &config, &mut out)?;
        Ok(out)
    }

    /// The telemetry sources of every instance created so far (and of the
    /// registry itself, source 0, named `registry`), for
    /// `tenlives_tokio::telemetry::Exporter::new`. Keyed entries report
    /// under their family.
    ///
    /// # Errors
    ///
    /// A [`SourceError`] if two instances of kinds whose metrics merge share
    /// a name (a bulkhead and an adaptive limit).
    pub fn sources(&self) -> Result<SourceRegistry, SourceError> {
        let sources = lock(&self.inner.sources);
        let mut b = SourceRegistry::builder();
        for s in &sources.1 {
            b = match s.limit {
                Some(limit) => b.bulkhead(s.source, &*s.name, limit),
                None => b.policy(s.source, &*s.name, s.kind),
            };
        }
        b.build()
    }

    /// Names, for an exporter built earlier, the instances created after it
    /// (`Exporter::new(registry.sources()?).with_late_sources(registry.late_sources())`):
    /// every instance is then labelled by its name whenever it was created.
    /// Holds the registry weakly.
    pub fn late_sources(&self) -> LateSources {
        let weak = Arc::downgrade(&self.inner);
        Arc::new(move |source| {
            let inner = weak.upgrade()?;
            let sources = lock(&inner.sources);
            sources
                .1
                .iter()
                .find(|s| s.source == source)
                .map(|s| Policy::new(s.source, s.name.clone(), s.kind, s.limit))
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<ConfigSet> {
        self.inner.config()
    }

    /// Makes `new` the configuration in force and applies it to every live
    /// instance whose resolved entry changed, through the primitives' live
    /// configuration (`set_config`, `set_quota`, `set_limit`): state (windows,
    /// open deadlines, tokens, permits) is kept. Instances created later use
    /// `new`. Emits [`events::CONFIG_APPLIED`] and an `INFO` `tracing` record.
    pub fn apply(&self, new: ConfigSet) -> ApplyReport {
        let one_at_a_time = lock(&self.inner.applying);
        self.apply_locked(new, &one_at_a_time)
    }

    fn apply_locked(&self, new: ConfigSet, _one_at_a_time: &MutexGuard<'_, ()>) -> ApplyReport {
        let new = Arc::new(new);
        let old = std::mem::replace(
            &mut *self
                .inner
                .config
                .write()
                .unwrap_or_else(PoisonError::into_inner),
            new.clone(),
        );
        let now = self.inner.now();
        let mut report = ApplyReport::default();
        fn each<P: Primitive>(
            named: &Named<P>,
            old: &ConfigSet,
            new: &ConfigSet,
            now: Timestamp,
            report: &mut ApplyReport,
        ) {
            let map = named.map.read().unwrap_or_else(PoisonError::into_inner);
            for (name, policy) in map.iter() {
                reconfigure_one(&**policy, name, &[name], old, new, now, report);
            }
        }
        each(&self.inner.breakers, &old, &new, now, &mut report);
        each(&self.inner.limiters, &old, &new, now, &mut report);
        each(&self.inner.bulkheads, &old, &new, now, &mut report);
        each(&self.inner.budgets, &old, &new, now, &mut report);
        each(&self.inner.throttles, &old, &new, now, &mut report);
        each(&self.inner.adaptive, &old, &new, now, &mut report);
        each(&self.inner.queues, &old, &new, now, &mut report);
        let families: Vec<Arc<dyn Family>> = lock(&self.inner.families).values().cloned().collect();
        for family in families {
            family.reconfigure(&self.inner, &old, &new, now, &mut report);
        }
        for name in lock(&self.inner.stacks).keys() {
            let before = old.stack.for_instance(name).map(|(s, _)| s);
            let after = new.stack.for_instance(name).map(|(s, _)| s);
            if before != after {
                report.restart.push(format!("stack.{name}"));
            }
        }
        report.changed.sort();
        report.kept.sort();
        report.restart.sort();
        self.inner
            .emit(events::CONFIG_APPLIED, [report.changed.len() as u64, 0]);
        tracing::info!(
            target: "tenlives::ops",
            changed = ?report.changed,
            kept = ?report.kept,
            restart = ?report.restart,
            "configuration applied"
        );
        if !report.restart.is_empty() {
            tracing::warn!(
                target: "tenlives::ops",
                instances = ?report.restart,
                "part of the new configuration (an admission queue's shape) takes effect only when these instances are next created"
            );
        }
        report
    }

    /// Records that a configuration was refused and the one in force stays:
    /// [`events::CONFIG_REJECTED`] and a `WARN` `tracing` record with the
    /// reason.
    pub fn reject(&self, error: &crate::LoadError) {
        self.inner
            .emit(events::CONFIG_REJECTED, [error.line as u64, 0]);
        tracing::warn!(
            target: "tenlives::ops",
            error = %error,
            "configuration refused; the previous one stays in force"
        );
    }
}

/// The sections of a configuration, as the admin plane and
/// [`Registry::set_instance`] name them.
pub const SECTIONS: [&str; 8] = [
    "circuit_breaker",
    "rate_limiter",
    "bulkhead",
    "retry_budget",
    "throttle",
    "adaptive_limit",
    "admission_queue",
    "stack",
];

/// A built stack as the admin plane lists it.
fn stack_view(config: &ConfigSet, name: &str, layers: u64) -> serde_json::Value {
    let entry = config.stack.for_instance(name);
    serde_json::json!({
        "section": "stack",
        "name": name,
        "state": {
            "layers_built": layers,
            "timeout_ms": entry
                .and_then(|(_, b)| b.timeout)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            "circuit_breaker": entry.and_then(|(_, b)| b.circuit_breaker.clone()),
            "rate_limiter": entry.and_then(|(_, b)| b.rate_limiter.clone()),
            "bulkhead": entry.and_then(|(_, b)| b.bulkhead.clone()),
            "retry_budget": entry.and_then(|(_, b)| b.retry.as_ref().map(|r| r.budget.clone())),
        },
        "config": entry.map_or(serde_json::Value::Null, |(s, _)| {
            serde_json::to_value(s).unwrap_or(serde_json::Value::Null)
        }),
    })
}

fn views<P: Primitive>(
    named: &Named<P>,
    config: &ConfigSet,
    now: Timestamp,
    out: &mut Vec<serde_json::Value>,
) {
    let map = named.map.read().unwrap_or_else(PoisonError::into_inner);
    let mut names: Vec<&Arc<str>> = map.keys().collect();
    names.sort();
    for name in names {
        out.push(view_of(&*map[name], name, config, now));
    }
}

fn view_of<P: Primitive>(
    policy: &P,
    name: &str,
    config: &ConfigSet,
    now: Timestamp,
) -> serde_json::Value {
    let spec = resolve(P::section(config), &[name]).map(|(s, _)| s);
    serde_json::json!({
        "section": <P::Spec as Spec>::SECTION,
        "name": name,
        "state": policy.state(now),
        "config": spec.map_or(serde_json::Value::Null, |s| {
            serde_json::to_value(s).unwrap_or(serde_json::Value::Null)
        }),
    })
}

fn find<P: Primitive>(named: &Named<P>, name: &str) -> Option<Arc<P>> {
    named
        .map
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(name)
        .cloned()
}

impl Registry {
    /// Every live named instance (section, name, state, resolved
    /// configuration) and every keyed family (entries, capacity), as JSON,
    /// sorted by section then name.
    pub fn policies(&self) -> Vec<serde_json::Value> {
        let config = self.inner.config();
        let now = self.inner.now();
        let mut out = Vec::new();
        views(&self.inner.breakers, &config, now, &mut out);
        views(&self.inner.limiters, &config, now, &mut out);
        views(&self.inner.bulkheads, &config, now, &mut out);
        views(&self.inner.budgets, &config, now, &mut out);
        views(&self.inner.throttles, &config, now, &mut out);
        views(&self.inner.adaptive, &config, now, &mut out);
        views(&self.inner.queues, &config, now, &mut out);
        for (name, layers) in lock(&self.inner.stacks).iter() {
            out.push(stack_view(&config, name, *layers));
        }
        let families = lock(&self.inner.families);
        let mut fams: Vec<serde_json::Value> = families.values().map(|f| f.view()).collect();
        fams.sort_by_key(|v| v.to_string());
        out.extend(fams);
        out
    }

    /// One live named instance, as in [`Registry::policies`]; `None` when
    /// none of that name was created (this never creates one).
    pub fn policy(&self, section: &str, name: &str) -> Option<serde_json::Value> {
        let config = self.inner.config();
        let now = self.inner.now();
        let i = &self.inner;
        match section {
            "circuit_breaker" => find(&i.breakers, name).map(|p| view_of(&*p, name, &config, now)),
            "rate_limiter" => find(&i.limiters, name).map(|p| view_of(&*p, name, &config, now)),
            "bulkhead" => find(&i.bulkheads, name).map(|p| view_of(&*p, name, &config, now)),
            "retry_budget" => find(&i.budgets, name).map(|p| view_of(&*p, name, &config, now)),
            "throttle" => find(&i.throttles, name).map(|p| view_of(&*p, name, &config, now)),
            "adaptive_limit" => find(&i.adaptive, name).map(|p| view_of(&*p, name, &config, now)),
            "admission_queue" => find(&i.queues, name).map(|p| view_of(&*p, name, &config, now)),
            "stack" => lock(&i.stacks)
                .get(name)
                .map(|layers| stack_view(&config, name, *layers)),
            _ => None,
        }
    }

    /// The rate limiter named `name`, created on first use from its entry
    /// or the default, else from `quota`.
    ///
    /// # Errors
    ///
    /// [`RegistryError::SourcesExhausted`], [`RegistryError::NameTaken`].
    pub fn rate_limiter_or(
        &self,
        name: &str,
        quota: tenlives_engine::rate::Quota,
    ) -> Result<Arc<Limiter>, RegistryError> {
        self.inner
            .named_or(&self.inner.limiters, name, Some(&quota))
    }

    /// The bulkhead named `name` if it was created (this never creates one).
    pub fn existing_bulkhead(&self, name: &str) -> Option<Arc<Concurrency>> {
        find(&self.inner.bulkheads, name)
    }

    /// Emits `kind` from the registry's own source (`REGISTRY_SOURCE`).
    pub fn emit(&self, kind: EventKind, payload: [u64; 2]) {
        self.inner.emit(kind, payload);
    }

    /// The breaker named `name` if it was created (this never creates one).
    pub fn existing_breaker(&self, name: &str) -> Option<Arc<Breaker>> {
        find(&self.inner.breakers, name)
    }

    /// The current time on the registry's clock.
    pub fn now(&self) -> Timestamp {
        self.inner.now()
    }

    /// Sets `section.instances.name` in the configuration in force to
    /// `entry` (a JSON object of the entry's keys, as in a file) and applies
    /// the result, as a file reload would. With `merge`, the keys given
    /// replace those of the current entry and the others stay; without, the
    /// entry is replaced whole. Returns the entry before and after.
    ///
    /// A later file reload replaces the whole configuration, this change
    /// included: the file stays the source of truth.
    ///
    /// # Errors
    ///
    /// A [`LoadError`](crate::LoadError) (file `<admin>`, line 0) for an
    /// unknown section, an unknown key, a wrong type or a value the engine
    /// refuses; nothing is changed then.
    pub fn set_instance(
        &self,
        section: &str,
        name: &str,
        entry: serde_json::Value,
        merge: bool,
    ) -> Result<(serde_json::Value, serde_json::Value, ApplyReport), crate::LoadError> {
        let one_at_a_time = lock(&self.inner.applying);
        let config = self.inner.config();
        let mut spec =
            serde_json::to_value(&config.spec).map_err(|e| admin_error("", e.to_string()))?;
        let section_value = spec
            .get_mut(section)
            .filter(|_| SECTIONS.contains(&section))
            .ok_or_else(|| {
                admin_error(
                    section,
                    format!("no section `{section}`; one of {SECTIONS:?}"),
                )
            })?;
        let instances = section_value
            .as_object_mut()
            .and_then(|o| {
                o.entry("instances")
                    .or_insert_with(|| serde_json::Value::Object(Default::default()))
                    .as_object_mut()
            })
            .ok_or_else(|| admin_error(section, "malformed section".into()))?;
        let old = instances
            .get(name)
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        let new = match (merge, &old, entry) {
            (true, serde_json::Value::Object(o), serde_json::Value::Object(e)) => {
                let mut merged = o.clone();
                merged.extend(e);
                serde_json::Value::Object(merged)
            }
            (_, _, e @ serde_json::Value::Object(_)) => e,
            (_, _, other) => {
                return Err(admin_error(
                    &format!("{section}.instances.{name}"),
                    format!("expected a JSON object of settings, got {other}"),
                ));
            }
        };
        instances.insert(name.to_owned(), new.clone());
        let file_spec: crate::config::FileSpec = serde_path_to_error::deserialize(&spec)
            .map_err(|e| admin_error(&e.path().to_string(), e.into_inner().to_string()))?;
        let set = ConfigSet::from_file_spec(&file_spec).map_err(|mut e| {
            e.file = "<admin>".into();
            e
        })?;
        let report = self.apply_locked(set, &one_at_a_time);
        Ok((old, new, report))
    }
}

fn admin_error(path: &str, message: String) -> crate::LoadError {
    crate::LoadError {
        file: "<admin>".into(),
        line: 0,
        path: path.to_owned(),
        message,
    }
}
