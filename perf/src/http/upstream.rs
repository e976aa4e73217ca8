//! The upstream: an HTTP service that plays a [`Timeline`].
//!
//! It has a fixed number of worker slots (its capacity): a call waits for a
//! free slot (at most `queue_timeout`, else it is answered `503` without
//! being served), holds it for the service time its phase draws, then is
//! answered as the phase says — `200`, `500`, `503`, or a connection closed
//! without an answer. A call's draw depends only on the seed and the call's
//! number. During a [`Down`](super::timeline::PhaseKind::Down) phase the
//! script task ([`run_script`]) closes the listener and cuts every open
//! connection, and opens it again on the same port when the phase ends: a
//! restart. When a phase leaves only part of the worker slots serving
//! ([`Fault::slots_per_mille`](super::timeline::Fault::slots_per_mille)),
//! the script task withholds the others: it takes them as they free up
//! (calls holding them finish first) and gives them back when the phase
//! ends.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::server::{Body, Handler, Server, respond};
use super::timeline::{Action, Timeline, mix};

/// How an upstream behaves.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// The script.
    pub timeline: Arc<Timeline>,
    /// Worker slots: calls served at once.
    pub capacity: u32,
    /// The longest a call waits for a slot before it is answered `503`.
    pub queue_timeout: Duration,
    /// Seed of the per-call draws.
    pub seed: u64,
}

/// What an upstream counted.
#[derive(Debug, Default)]
pub struct UpstreamCounts {
    /// Calls received.
    pub received: AtomicU64,
    /// Calls received while the script had the upstream down or in an
    /// outage: none of them could be answered well. (While its listener is
    /// closed, calls do not arrive at all.)
    pub received_while_down: AtomicU64,
    /// Calls answered `503` because no slot freed up in time.
    pub overflowed: AtomicU64,
    /// Connections closed without an answer, as scripted.
    pub dropped: AtomicU64,
}

/// The request handler (shared by every connection).
#[derive(Clone)]
struct Upstream {
    shared: Arc<Shared>,
}

struct Shared {
    config: UpstreamConfig,
    origin: Instant,
    slots: Arc<Semaphore>,
    counts: Arc<UpstreamCounts>,
}

/// The error that makes hyper close a connection without an answer.
#[derive(Debug)]
pub struct Dropped;

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped by the script")
    }
}

impl std::error::Error for Dropped {}

impl Handler for Upstream {
    type Error = Dropped;

    fn handle(
        &self,
        _req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<Body>, Dropped>> + Send + 'static + use<> {
        let shared = Arc::clone(&self.shared);
        async move {
            let s = &*shared;
            // ordering: Relaxed; a counter and a ticket number, nothing else
            // is published through them.
            let n = s.counts.received.fetch_add(1, Ordering::Relaxed);
            let phase = s.config.timeline.phase_at(s.origin.elapsed());
            if phase.fault.outage || phase.fault.down {
                s.counts.received_while_down.fetch_add(1, Ordering::Relaxed);
            }
            let decision = phase.fault.decide(mix(s.config.seed, n));
            let permit = match tokio::time::timeout(s.config.queue_timeout, s.slots.acquire()).await
            {
                Ok(Ok(permit)) => permit,
                _ => {
                    s.counts.overflowed.fetch_add(1, Ordering::Relaxed);
                    return Ok(respond(503, &[], "upstream overloaded\n"));
                }
            };
            tokio::time::sleep(decision.delay).await;
            drop(permit);
            match decision.action {
                Action::Answer(200) => Ok(respond(200, &[], "ok\n")),
                Action::Answer(status) => Ok(respond(status, &[], "scripted failure\n")),
                Action::Drop => {
                    s.counts.dropped.fetch_add(1, Ordering::Relaxed);
                    Err(Dropped)
                }
            }
        }
    }
}

/// A running upstream.
pub struct UpstreamServer {
    server: Server<Upstream>,
    counts: Arc<UpstreamCounts>,
    slots: Arc<Semaphore>,
    capacity: u32,
}

impl UpstreamServer {
    /// Starts an upstream on a free loopback port; its script's time zero is
    /// `origin`.
    ///
    /// # Errors
    ///
    /// When no port can be bound.
    pub fn start(config: UpstreamConfig, origin: Instant) -> io::Result<UpstreamServer> {
        let counts = Arc::new(UpstreamCounts::default());
        let capacity = config.capacity.max(1);
        let slots = Arc::new(Semaphore::new(
            usize::try_from(capacity).unwrap_or(usize::MAX),
        ));
        let handler = Upstream {
            shared: Arc::new(Shared {
                config,
                origin,
                slots: Arc::clone(&slots),
                counts: Arc::clone(&counts),
            }),
        };
        let server = Server::start(SocketAddr::from(([127, 0, 0, 1], 0)), handler)?;
        Ok(UpstreamServer {
            server,
            counts,
            slots,
            capacity,
        })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// What it counted.
    pub fn counts(&self) -> &UpstreamCounts {
        &self.counts
    }

    /// Whether it is listening.
    pub fn is_up(&self) -> bool {
        self.server.is_up()
    }

    /// Closes the listener and cuts open connections.
    pub fn stop(&self) {
        self.server.stop();
    }

    /// Listens again on the same port.
    ///
    /// # Errors
    ///
    /// When the port cannot be bound again.
    pub fn restart(&self) -> io::Result<()> {
        self.server.restart()
    }
}

/// The worker slots the script task keeps from one upstream: one task per
/// slot, each waiting for the slot (in the semaphore's queue, behind the
/// calls already waiting) and then holding it until dropped.
struct Withheld {
    slots: Arc<Semaphore>,
    held: Vec<JoinHandle<Option<OwnedSemaphorePermit>>>,
}

impl Withheld {
    fn new(slots: Arc<Semaphore>) -> Withheld {
        Withheld {
            slots,
            held: Vec::new(),
        }
    }

    /// Withholds exactly `n` slots: takes more or gives some back.
    fn set(&mut self, n: usize) {
        while self.held.len() > n {
            if let Some(task) = self.held.pop() {
                // Aborting a task still waiting removes it from the queue;
                // dropping the handle of one that finished drops its permit.
                task.abort();
            }
        }
        while self.held.len() < n {
            let slots = Arc::clone(&self.slots);
            self.held.push(tokio::spawn(
                async move { slots.acquire_owned().await.ok() },
            ));
        }
    }
}

/// Plays the timeline's `Down` phases on `upstreams` until `until` since
/// `origin`: stops them when a down phase begins and restarts them when it
/// ends, counting restarts in `restarts`; and withholds the worker slots a
/// phase does not leave serving. Looks every 20 ms; a failed rebind is
/// tried again at the next look.
pub async fn run_script(
    upstreams: Vec<Arc<UpstreamServer>>,
    timeline: Arc<Timeline>,
    origin: Instant,
    until: Duration,
    restarts: Arc<AtomicU64>,
) {
    // ordering: Relaxed; a counter read for reports.
    let restarted = || {
        restarts.fetch_add(1, Ordering::Relaxed);
    };
    let mut withheld: Vec<Withheld> = upstreams
        .iter()
        .map(|u| Withheld::new(Arc::clone(&u.slots)))
        .collect();
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let steps = until.as_millis() / 20 + 2;
    for _ in 0..steps {
        ticks.tick().await;
        let elapsed = origin.elapsed();
        if elapsed > until {
            break;
        }
        let fault = timeline.phase_at(elapsed).fault;
        for (u, w) in upstreams.iter().zip(&mut withheld) {
            if fault.down && u.is_up() {
                u.stop();
            } else if !fault.down && !u.is_up() && u.restart().is_ok() {
                restarted();
            }
            let keep = u.capacity - fault.slots(u.capacity);
            w.set(usize::try_from(keep).unwrap_or(0));
        }
    }
    for (u, w) in upstreams.iter().zip(&mut withheld) {
        w.set(0);
        if !u.is_up() && u.restart().is_ok() {
            restarted();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn withheld_slots_are_taken_as_they_free_up_and_given_back() {
        let slots = Arc::new(Semaphore::new(8));
        let mut w = Withheld::new(Arc::clone(&slots));
        w.set(4);
        settle().await;
        assert_eq!(slots.available_permits(), 4);
        // Calls hold three of the four left; withholding two more waits for
        // them to finish.
        let busy = Arc::clone(&slots).acquire_many_owned(3).await.unwrap();
        w.set(6);
        settle().await;
        assert_eq!(slots.available_permits(), 0, "one taken at once");
        drop(busy);
        settle().await;
        assert_eq!(slots.available_permits(), 2);
        // Giving back: a slot still being waited for leaves the queue, a
        // held one is released.
        w.set(1);
        settle().await;
        assert_eq!(slots.available_permits(), 7);
        w.set(0);
        settle().await;
        assert_eq!(slots.available_permits(), 8);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_waiting_withhold_given_back_leaves_the_queue() {
        let slots = Arc::new(Semaphore::new(2));
        let busy = Arc::clone(&slots).acquire_many_owned(2).await.unwrap();
        let mut w = Withheld::new(Arc::clone(&slots));
        w.set(1);
        settle().await;
        w.set(0);
        settle().await;
        drop(busy);
        settle().await;
        assert_eq!(slots.available_permits(), 2);
    }
}
