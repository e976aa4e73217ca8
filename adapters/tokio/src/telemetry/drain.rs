//! The drain: reads an event ring and passes every event to `tracing` and to
//! the Prometheus metrics, either on demand ([`Drain::drain_once`]) or as a
//! tokio task polling on an interval ([`spawn`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::Duration;

use tenlives_engine::ConfigError;
use tenlives_engine::events::{Event, EventReader, EventSource, Received};
use tenlives_engine::time::Timestamp;
use tokio::sync::oneshot;
use tokio::task::{JoinError, JoinHandle};

use super::decode::{Decoded, kind_index};
use super::exporter::{Exporter, OtherKind, PolicyMetrics};
use super::trace::{self, Who};

/// How a spawned drain runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainConfig {
    interval: Duration,
}

impl DrainConfig {
    /// The polling interval of [`DrainConfig::default`]: 10 ms.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(10);

    /// Polls every `interval`. A ring of capacity `C` receiving `R` events a
    /// second loses events when `R * interval > C`; size one from the other.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroDuration`] when `interval` is zero.
    pub fn with_interval(interval: Duration) -> Result<Self, ConfigError> {
        if interval.is_zero() {
            return Err(ConfigError::ZeroDuration {
                field: "drain interval",
            });
        }
        Ok(DrainConfig { interval })
    }

    /// The polling interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            interval: Self::DEFAULT_INTERVAL,
        }
    }
}

/// How many events a drain read and how many it learned were lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainCounts {
    /// Events read and passed on.
    pub events: u64,
    /// Events overwritten or dropped before they could be read.
    pub lost: u64,
}

/// Per-source state the drain keeps besides the metrics.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    /// Event time of the last breaker transition applied to the state gauge.
    last_transition: Option<Timestamp>,
}

/// A reader of one ring (an [`EventSource`]: an `EventRing` or a
/// `LaneRing`) that sends every event to `tracing` (target
/// [`trace::TARGET`]) and to an [`Exporter`]'s metrics.
///
/// It joins the ring when created: it sees every event emitted from then
/// on, or counts it in `tenlives_events_lost_total` (and logs a warning).
///
/// ```
/// use std::sync::Arc;
/// use tenlives_engine::bulkhead::Bulkhead;
/// use tenlives_engine::events::EventRing;
/// use tenlives_tokio::telemetry::{Drain, Exporter, SourceRegistry};
///
/// let ring = Arc::new(EventRing::with_capacity(64)?);
/// let sources = SourceRegistry::builder().bulkhead(7, "db", 1).build()?;
/// let exporter = Arc::new(Exporter::new(sources));
/// let mut drain = Drain::new(ring.clone(), exporter.clone());
///
/// let bulkhead = Bulkhead::with_sink(1, ring.clone(), 7)?;
/// let held = bulkhead.try_acquire().unwrap();
/// assert!(bulkhead.try_acquire().is_err());
/// drop(held);
///
/// let pass = drain.drain_once();
/// assert_eq!((pass.events, pass.lost), (3, 0)); // acquired, rejected, released
/// let text = exporter.render_text()?;
/// assert!(text.contains(r#"tenlives_rejections_total{policy="db",reason="bulkhead_full"} 1"#));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Drain<R: EventSource + 'static> {
    // Declared before `ring`, so dropped before it: `consumer` borrows the
    // ring that `ring` keeps alive (see `Drain::new`).
    consumer: R::Reader<'static>,
    ring: Arc<R>,
    exporter: Arc<Exporter>,
    /// One per registered policy, in the order of `sources().policies()`.
    seen: Box<[Seen]>,
    /// Sources the source registry does not have, as they show up, with
    /// their kind for log fields.
    unregistered: HashMap<u32, (PolicyMetrics, Seen, &'static str)>,
    /// Counters of application kinds, as they show up.
    other_kinds: HashMap<(u32, u16), OtherKind>,
    totals: DrainCounts,
}

impl<R: EventSource + 'static> fmt::Debug for Drain<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain")
            .field("consumer", &self.consumer)
            .field("totals", &self.totals)
            .finish_non_exhaustive()
    }
}

impl<R: EventSource + 'static> Drain<R> {
    /// A drain of `ring` (an [`EventRing`](tenlives_engine::events::EventRing)
    /// or a [`LaneRing`](tenlives_engine::events::LaneRing)) into `exporter`,
    /// reading what is emitted from now on.
    pub fn new(ring: Arc<R>, exporter: Arc<Exporter>) -> Self {
        // SAFETY: the ring lives in the `Arc`'s heap allocation, which never
        // moves and stays alive while any `Arc` to it exists. This drain
        // holds one in `ring` for as long as `consumer` exists (`consumer` is
        // dropped first, by field order, and is never handed out), so the
        // `'static` borrow is never used after the ring is freed.
        let ring_ref: &'static R = unsafe { &*Arc::as_ptr(&ring) };
        let seen = vec![Seen::default(); exporter.sources().len()].into_boxed_slice();
        Drain {
            consumer: ring_ref.reader(),
            ring,
            exporter,
            seen,
            unregistered: HashMap::new(),
            other_kinds: HashMap::new(),
            totals: DrainCounts::default(),
        }
    }

    /// The exporter this drain updates.
    pub fn exporter(&self) -> &Arc<Exporter> {
        &self.exporter
    }

    /// Events read and lost since this drain was created.
    pub fn totals(&self) -> DrainCounts {
        self.totals
    }

    /// Whether this drain holds the only reference to the ring (no strong or
    /// weak `Arc` elsewhere), so that nothing can emit into it any more.
    pub fn is_orphaned(&self) -> bool {
        let alone = Arc::strong_count(&self.ring) == 1 && Arc::weak_count(&self.ring) == 0;
        if alone {
            // ordering: Acquire fence, pairs with the Release decrement of
            // the last other `Arc`'s drop: every event its holders pushed
            // is visible to the next `drain_once`.
            fence(Ordering::Acquire);
        }
        alone
    }

    /// Reads every event emitted before this call began (or learns it was
    /// lost), passes each to `tracing` and the metrics, and returns what
    /// this pass read. Never blocks; stops early at an event whose producer
    /// is still writing it (the next pass reads it).
    pub fn drain_once(&mut self) -> DrainCounts {
        let end = self.ring.emitted();
        let mut pass = DrainCounts::default();
        while self.consumer.position() < end {
            match self.consumer.try_recv() {
                None => break,
                Some(Received::Lost(n)) => pass.lost += n,
                Some(Received::Event(event)) => {
                    pass.events += 1;
                    self.handle(&event);
                }
                // A kind of receipt this version does not know (`Received`
                // may grow): nothing to count.
                Some(_) => {}
            }
        }
        if pass.lost > 0 {
            self.exporter.record_lost(pass.lost);
            trace::lost(pass.lost, self.exporter.lost());
        }
        self.totals.events += pass.events;
        self.totals.lost += pass.lost;
        pass
    }

    fn handle(&mut self, event: &Event) {
        let exporter = &*self.exporter;
        let (pm, policy_kind, seen) = match exporter.sources().index_of(event.source) {
            Some(i) => (
                exporter.policy(i),
                exporter.sources().policies()[i].kind().as_str(),
                &mut self.seen[i],
            ),
            None => {
                let (pm, seen, kind) = self.unregistered.entry(event.source).or_insert_with(|| {
                    let (pm, kind) = exporter.unregistered(event.source);
                    (pm, Seen::default(), kind)
                });
                (&*pm, *kind, seen)
            }
        };
        let decoded = Decoded::of(event);
        let is_transition = matches!(
            decoded,
            Decoded::BreakerOpened { .. }
                | Decoded::BreakerHalfOpened { .. }
                | Decoded::BreakerClosed { .. }
                | Decoded::BreakerForced { .. }
        );
        // Two threads' transitions can reach the ring out of order (each
        // emits after making its transition); the later event time wins.
        let current = is_transition && seen.last_transition.is_none_or(|t| event.time >= t);
        if current {
            seen.last_transition = Some(event.time);
        }
        let from = pm.breaker_state();
        exporter.record(pm, event, &decoded, current);
        if kind_index(event.kind).is_none() {
            let kind = self
                .other_kinds
                .entry((event.source, event.kind.0))
                .or_insert_with(|| exporter.other_kind_counter(pm, event.kind.0));
            exporter.record_other_kind(kind);
        }
        let who = Who {
            policy: pm.name(),
            policy_kind,
        };
        trace::emit(who, event, &decoded, from);
    }
}

/// Runs a [`Drain`] of `ring` into `exporter` as a tokio task: it drains
/// every `config.interval()`, and stops — after a last pass — when the
/// handle asks it to (or is dropped), or when the drain holds the last
/// reference to the ring (every producer is gone).
///
/// The drain joins the ring now, before this function returns. Needs a
/// tokio runtime with the timer enabled.
///
/// # Panics
///
/// Outside a tokio runtime (as `tokio::spawn`).
pub fn spawn<R>(ring: Arc<R>, exporter: Arc<Exporter>, config: DrainConfig) -> DrainHandle
where
    R: EventSource + Send + Sync + 'static,
    R::Reader<'static>: Send,
{
    let mut drain = Drain::new(ring, exporter);
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut listening = true;
        loop {
            drain.drain_once();
            if drain.is_orphaned() {
                drain.drain_once();
                break;
            }
            if listening {
                match tokio::time::timeout(config.interval, &mut stop_rx).await {
                    Err(_elapsed) => {}
                    Ok(Ok(())) => {
                        drain.drain_once();
                        break;
                    }
                    // Detached: run until the ring is orphaned.
                    Ok(Err(_closed)) => listening = false,
                }
            } else {
                tokio::time::sleep(config.interval).await;
            }
        }
        drain.totals()
    });
    DrainHandle {
        stop: Some(stop_tx),
        task: Some(task),
    }
}

/// Controls a drain started by [`spawn`]. Dropping it stops the drain
/// (after a last pass); [`detach`](DrainHandle::detach) lets it run until
/// the ring is orphaned.
#[must_use = "dropping a DrainHandle stops the drain; call `detach` to let it run"]
#[derive(Debug)]
pub struct DrainHandle {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<DrainCounts>>,
}

impl DrainHandle {
    /// Asks the drain to make a last pass and stop, and waits for it.
    ///
    /// # Errors
    ///
    /// The task's [`JoinError`] if it panicked or its runtime shut down.
    pub async fn stop(mut self) -> Result<DrainCounts, JoinError> {
        if let Some(stop) = self.stop.take() {
            // An error means the task already ended by itself; awaiting it
            // below still returns its counts.
            let _ = stop.send(());
        }
        self.wait().await
    }

    /// Waits until the drain stops by itself: when it holds the last
    /// reference to the ring.
    ///
    /// # Errors
    ///
    /// As [`DrainHandle::stop`].
    pub async fn join(mut self) -> Result<DrainCounts, JoinError> {
        drop(self.stop.take()); // closes the channel: "run until orphaned"
        self.wait().await
    }

    /// Lets the drain run until the ring is orphaned, without a handle.
    pub fn detach(mut self) {
        drop(self.stop.take());
    }

    /// Whether the drain task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    async fn wait(&mut self) -> Result<DrainCounts, JoinError> {
        match self.task.take() {
            Some(task) => task.await,
            None => Ok(DrainCounts::default()),
        }
    }
}

impl Drop for DrainHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // An error means the task already ended; nothing to stop.
            let _ = stop.send(());
        }
    }
}
