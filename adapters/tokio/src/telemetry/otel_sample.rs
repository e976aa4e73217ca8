//! What the Prometheus exporter updates, as values the OpenTelemetry side
//! (`otel`, cargo feature `otel`) mirrors; without that feature nothing
//! reads them and the mirroring compiles to nothing.

use std::borrow::Cow;
use std::sync::Arc;

/// One update of a Prometheus series, mirrored into OpenTelemetry. `n` is 0
/// when a series is created up front (so the data point exists at zero, as
/// the Prometheus series does).
#[derive(Debug)]
#[cfg_attr(not(feature = "otel"), allow(dead_code))]
pub(crate) enum Sample<'a> {
    Event {
        policy: &'a Arc<str>,
        kind: &'a Cow<'static, str>,
        n: u64,
    },
    Lost(u64),
    BreakerState {
        policy: &'a Arc<str>,
        code: i64,
    },
    Trip {
        policy: &'a Arc<str>,
        reason: &'static str,
        n: u64,
    },
    Rejection {
        policy: &'a Arc<str>,
        reason: &'static str,
        n: u64,
    },
    Limit {
        policy: &'a Arc<str>,
        value: i64,
    },
    InFlight {
        policy: &'a Arc<str>,
        value: i64,
    },
    Call {
        policy: &'a Arc<str>,
        outcome: &'static str,
        n: u64,
    },
}
