//! The registry's live configuration as OpenTelemetry gauges (cargo
//! feature `otel`).

use std::sync::{Arc, PoisonError};

use tenlives_tokio::telemetry::otel::{ConfigReport, ConfigSource};

use super::{Named, Registry};

/// Calls `f` with every instance of `named` and its name, under the read
/// lock (the instances' own reads take no lock).
fn each<P>(named: &Named<P>, mut f: impl FnMut(&Arc<str>, &P)) {
    let map = named.map.read().unwrap_or_else(PoisonError::into_inner);
    for (name, policy) in map.iter() {
        f(name, policy);
    }
}

impl Registry {
    /// A source for `tenlives_tokio::telemetry::otel::observe_config`: at
    /// each collection it reports the configuration in force of every named
    /// instance created so far — breakers' thresholds, rate limiters'
    /// quotas, bulkheads', adaptive limits' and admission queues' current
    /// limits — under the
    /// instance's name, so the gauges follow reloads and admin changes.
    /// Keyed families are left out (their entries share the family's name).
    /// Holds the registry weakly: once it is dropped, nothing is reported.
    pub fn config_source(&self) -> ConfigSource {
        let weak = Arc::downgrade(&self.inner);
        Arc::new(move |report: &mut ConfigReport| {
            let Some(inner) = weak.upgrade() else {
                return;
            };
            each(&inner.breakers, |name, b| {
                report.breaker(name.clone(), &b.config());
            });
            each(&inner.limiters, |name, l| {
                report.rate_limit(name.clone(), &l.quota());
            });
            each(&inner.bulkheads, |name, b| {
                report.concurrency_limit(name.clone(), b.limit());
            });
            each(&inner.adaptive, |name, a| {
                report.concurrency_limit(name.clone(), a.limit());
            });
            each(&inner.queues, |name, q| {
                report.concurrency_limit(name.clone(), q.queue().source().limit());
            });
        })
    }
}
