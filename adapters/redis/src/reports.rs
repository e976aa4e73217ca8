//! What a fleet limiter or semaphore reports: its degraded decisions,
//! counted and as events, and the changes of Redis's availability.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use tenlives_engine::events::{Event, EventKind};
use tenlives_engine::time::Timestamp;

use crate::config::Ring;
use crate::limiter::REDIS_DEGRADED;

/// The degraded-decision counters and the event ring of one limiter or
/// semaphore.
pub(crate) struct Reports {
    /// The degraded decisions that admitted.
    pub(crate) degraded_admitted: Counter,
    /// The degraded decisions that refused.
    pub(crate) degraded_refused: Counter,
    events: Option<Arc<Ring>>,
    source: u32,
}

impl Reports {
    /// No decision counted yet; events, if any, go to `events` tagged with
    /// `source`.
    pub(crate) fn new(events: Option<Arc<Ring>>, source: u32) -> Self {
        Reports {
            degraded_admitted: Counter::default(),
            degraded_refused: Counter::default(),
            events,
            source,
        }
    }

    #[inline]
    pub(crate) fn emit(&self, kind: EventKind, now: Timestamp, payload: [u64; 2]) {
        if let Some(ring) = &self.events {
            ring.push(Event::new(kind, self.source, now, payload));
        }
    }

    /// Counts one degraded decision and reports it as a
    /// [`REDIS_DEGRADED`] event with its `code` and `left`.
    #[inline]
    pub(crate) fn degraded(&self, admitted: bool, code: u64, left: u64, now: Timestamp) {
        if admitted {
            self.degraded_admitted.inc();
        } else {
            self.degraded_refused.inc();
        }
        self.emit(REDIS_DEGRADED, now, [code, left]);
    }

    /// The degraded decisions so far, admitted or refused.
    pub(crate) fn degraded_total(&self) -> u64 {
        self.degraded_admitted.get() + self.degraded_refused.get()
    }
}
