//! The source registry: which policy instance each event `source` id names.
//!
//! Every primitive built `with_sink(config, sink, source)` tags its events
//! with `source`, an id the application chooses. A [`SourceRegistry`] maps
//! those ids to a [`Policy`] — a name for labels and log fields, and a
//! [`PolicyKind`] — once, at set-up. Looking an id up is a binary search over
//! a sorted slice; nothing is allocated after [`SourceRegistryBuilder::build`].

use std::fmt;
use std::sync::Arc;

use tenlives_engine::ConfigError;

/// What kind of primitive a policy is. It decides which series the
/// Prometheus exporter creates for the policy up front (at zero) and how
/// its events are described.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum PolicyKind {
    /// A `tenlives_engine::breaker::CircuitBreaker`.
    CircuitBreaker,
    /// A `tenlives_engine::bulkhead::Bulkhead`.
    Bulkhead,
    /// A `tenlives_engine::adaptive::AdaptiveLimiter` (a bulkhead whose
    /// limit an algorithm moves).
    AdaptiveLimit,
    /// A `tenlives_engine::retry::RetryBudget`.
    RetryBudget,
    /// A `tenlives_engine::throttle::Throttle`.
    Throttle,
    /// Anything else that emits events (for example application code
    /// emitting `EventKind::USER` codes).
    Other,
}

impl PolicyKind {
    /// The name used in the `policy_kind` log field: `circuit_breaker`,
    /// `bulkhead`, `adaptive_limit`, `retry_budget`, `throttle` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::CircuitBreaker => "circuit_breaker",
            PolicyKind::Bulkhead => "bulkhead",
            PolicyKind::AdaptiveLimit => "adaptive_limit",
            PolicyKind::RetryBudget => "retry_budget",
            PolicyKind::Throttle => "throttle",
            PolicyKind::Other => "other",
        }
    }
}

impl PolicyKind {
    /// Kinds with the same value here produce the same series, so their
    /// policies need distinct names (a bulkhead and an adaptive limit both
    /// report bulkhead events and gauges).
    fn series(self) -> PolicyKind {
        match self {
            PolicyKind::AdaptiveLimit => PolicyKind::Bulkhead,
            other => other,
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One registered policy instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    source: u32,
    name: Arc<str>,
    kind: PolicyKind,
    initial_limit: Option<u32>,
}

impl Policy {
    /// A policy: its source id, name (the `policy` label), kind, and the
    /// concurrency limit it starts with if it is a bulkhead or an adaptive
    /// limit. For [`LateSources`](super::LateSources); a
    /// [`SourceRegistry`] is built with its builder.
    pub fn new(
        source: u32,
        name: impl Into<Arc<str>>,
        kind: PolicyKind,
        initial_limit: Option<u32>,
    ) -> Self {
        Policy {
            source,
            name: name.into(),
            kind,
            initial_limit,
        }
    }

    /// The source id its events carry.
    pub fn source(&self) -> u32 {
        self.source
    }

    /// Its name: the `policy` label and log field.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What kind of primitive it is.
    pub fn kind(&self) -> PolicyKind {
        self.kind
    }

    /// The concurrency limit it was registered with, if any (bulkheads).
    pub fn initial_limit(&self) -> Option<u32> {
        self.initial_limit
    }

    pub(crate) fn shared_name(&self) -> &Arc<str> {
        &self.name
    }
}

/// Why a [`SourceRegistryBuilder`] refused to build.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum SourceError {
    /// Two policies were registered under one source id.
    DuplicateSource {
        /// The id registered twice.
        source: u32,
    },
    /// Two policies of the same kind share a name, so their series would
    /// merge (a breaker state gauge cannot hold two breakers). Bulkheads and
    /// adaptive limits count as one kind here: they report the same series.
    DuplicateName {
        /// The shared name.
        name: String,
        /// Their kind.
        kind: PolicyKind,
    },
    /// A policy's name was empty.
    EmptyName {
        /// The source id it was registered under.
        source: u32,
    },
    /// A setting was invalid (for example a bulkhead limit of zero).
    Config(ConfigError),
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::DuplicateSource { source } => {
                write!(f, "source id {source} is registered twice")
            }
            SourceError::DuplicateName { name, kind } => write!(
                f,
                "`{name}` already names a policy whose metrics a {kind} would merge with"
            ),
            SourceError::EmptyName { source } => {
                write!(
                    f,
                    "the policy registered as source {source} has an empty name"
                )
            }
            SourceError::Config(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SourceError::Config(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ConfigError> for SourceError {
    fn from(e: ConfigError) -> Self {
        SourceError::Config(e)
    }
}

/// The map from event `source` ids to policies, fixed once built.
///
/// ```
/// use tenlives_tokio::telemetry::{PolicyKind, SourceRegistry};
///
/// let sources = SourceRegistry::builder()
///     .policy(0, "payments", PolicyKind::CircuitBreaker)
///     .bulkhead(1, "payments", 64)
///     .build()?;
/// assert_eq!(sources.get(1).map(|p| p.kind()), Some(PolicyKind::Bulkhead));
/// assert_eq!(sources.get(1).and_then(|p| p.initial_limit()), Some(64));
/// assert!(sources.get(2).is_none());
/// # Ok::<(), tenlives_tokio::telemetry::SourceError>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct SourceRegistry {
    /// Sorted by source id, ids unique.
    policies: Box<[Policy]>,
}

impl SourceRegistry {
    /// A builder with no policies.
    pub fn builder() -> SourceRegistryBuilder {
        SourceRegistryBuilder::default()
    }

    /// The policy registered under `source`, if any.
    #[inline]
    pub fn get(&self, source: u32) -> Option<&Policy> {
        self.index_of(source).map(|i| &self.policies[i])
    }

    /// The position of `source` in [`SourceRegistry::policies`], if registered.
    #[inline]
    pub fn index_of(&self, source: u32) -> Option<usize> {
        self.policies
            .binary_search_by_key(&source, |p| p.source)
            .ok()
    }

    /// Every registered policy, sorted by source id.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// How many policies are registered.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether no policy is registered.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}

/// Collects policies for a [`SourceRegistry`]; the first invalid entry is
/// reported by [`build`](SourceRegistryBuilder::build).
#[derive(Clone, Debug, Default)]
pub struct SourceRegistryBuilder {
    policies: Vec<Policy>,
    error: Option<SourceError>,
}

impl SourceRegistryBuilder {
    /// Registers the policy whose events carry `source`.
    pub fn policy(self, source: u32, name: impl Into<String>, kind: PolicyKind) -> Self {
        self.push(source, name.into(), kind, None)
    }

    /// Registers a bulkhead with the limit it was built with, so that the
    /// `tenlives_bulkhead_limit` gauge shows it before any limit change.
    pub fn bulkhead(self, source: u32, name: impl Into<String>, limit: u32) -> Self {
        self.push(source, name.into(), PolicyKind::Bulkhead, Some(limit))
    }

    fn push(
        mut self,
        source: u32,
        name: String,
        kind: PolicyKind,
        initial_limit: Option<u32>,
    ) -> Self {
        if self.error.is_some() {
            return self;
        }
        self.error = if name.is_empty() {
            Some(SourceError::EmptyName { source })
        } else if initial_limit == Some(0) {
            Some(SourceError::Config(ConfigError::Zero {
                field: "bulkhead limit",
            }))
        } else if self.policies.iter().any(|p| p.source == source) {
            Some(SourceError::DuplicateSource { source })
        } else if self
            .policies
            .iter()
            .any(|p| p.kind.series() == kind.series() && *p.name == *name)
        {
            Some(SourceError::DuplicateName { name, kind })
        } else {
            self.policies.push(Policy {
                source,
                name: name.into(),
                kind,
                initial_limit,
            });
            None
        };
        self
    }

    /// The registry.
    ///
    /// # Errors
    ///
    /// The first problem met while registering: a [`SourceError`] naming a
    /// duplicate source id, two same-kind policies with one name, an empty
    /// name, or a bulkhead limit of zero.
    pub fn build(self) -> Result<SourceRegistry, SourceError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let mut policies = self.policies;
        policies.sort_unstable_by_key(|p| p.source);
        Ok(SourceRegistry {
            policies: policies.into_boxed_slice(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_find_every_registered_id_and_nothing_else() {
        let sources = SourceRegistry::builder()
            .policy(9, "c", PolicyKind::Throttle)
            .policy(2, "a", PolicyKind::CircuitBreaker)
            .bulkhead(5, "b", 3)
            .build()
            .unwrap();
        assert_eq!(sources.len(), 3);
        let ids: Vec<u32> = sources.policies().iter().map(Policy::source).collect();
        assert_eq!(ids, [2, 5, 9]);
        for (id, name) in [(2, "a"), (5, "b"), (9, "c")] {
            assert_eq!(sources.get(id).map(Policy::name), Some(name));
        }
        for id in [0, 1, 3, 4, 6, 10, u32::MAX] {
            assert!(sources.get(id).is_none(), "{id}");
        }
    }

    #[test]
    fn bad_registrations_are_typed_errors() {
        let dup = SourceRegistry::builder()
            .policy(1, "a", PolicyKind::CircuitBreaker)
            .policy(1, "b", PolicyKind::Bulkhead)
            .build();
        assert_eq!(dup.unwrap_err(), SourceError::DuplicateSource { source: 1 });

        let same_name = SourceRegistry::builder()
            .policy(1, "a", PolicyKind::CircuitBreaker)
            .policy(2, "a", PolicyKind::CircuitBreaker)
            .build();
        assert_eq!(
            same_name.unwrap_err(),
            SourceError::DuplicateName {
                name: "a".into(),
                kind: PolicyKind::CircuitBreaker
            }
        );

        // A bulkhead and an adaptive limit report the same series.
        let same_series = SourceRegistry::builder()
            .bulkhead(1, "pool", 4)
            .policy(2, "pool", PolicyKind::AdaptiveLimit)
            .build();
        assert_eq!(
            same_series.unwrap_err(),
            SourceError::DuplicateName {
                name: "pool".into(),
                kind: PolicyKind::AdaptiveLimit
            }
        );

        // The same name for different kinds is fine: their series differ.
        assert!(
            SourceRegistry::builder()
                .policy(1, "a", PolicyKind::CircuitBreaker)
                .bulkhead(2, "a", 1)
                .build()
                .is_ok()
        );

        let empty = SourceRegistry::builder()
            .policy(4, "", PolicyKind::Other)
            .build();
        assert_eq!(empty.unwrap_err(), SourceError::EmptyName { source: 4 });

        let zero = SourceRegistry::builder().bulkhead(1, "b", 0).build();
        let err = zero.unwrap_err();
        assert_eq!(
            err,
            SourceError::Config(ConfigError::Zero {
                field: "bulkhead limit"
            })
        );
        assert_eq!(err.to_string(), "`bulkhead limit` must be at least 1");
    }
}
