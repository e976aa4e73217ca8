//! The harness: starts the upstreams and the fronts on loopback, drives
//! load at them, and watches them while it does.
//!
//! Each front has its own upstream (same script, same seed, same capacity),
//! so the two never compete for the upstream's worker slots and the only
//! difference between them is the tenlives stack. A watcher task closes a
//! time bucket on every front each `bucket`, reads the breaker's
//! transitions and the limit's changes from the event ring, samples the
//! breaker's state and the limit, updates the progress display and (for
//! `soak`) samples the process's memory and descriptors.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Uri;
use tenlives_engine::breaker::BreakerState;
use tenlives_engine::events::{EventKind, EventRing, Received};
use tenlives_tokio::TokioClock;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::front::{
    DownWatch, FrontCounts, HttpClient, PlainFront, ProtectedFront, ProtectedLayer, Protection,
    Ring, UpstreamClient, http_client,
};
use super::load::{Bounds, RatePlan, Target, generate, lock};
use super::peers::{Peer, PeerFront};
use super::procfs::{self, ProcSample};
use super::progress::{Live, Progress, ProgressMode};
use super::record::Recorder;
use super::results::{Drive, FrontRun, LimitReport, Transition};
use super::server::Server;
use super::timeline::Timeline;
use super::upstream::{UpstreamConfig, UpstreamServer, run_script};

/// Which fronts to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fronts {
    /// Both, side by side.
    Both,
    /// Only the protected one.
    Protected,
    /// Only the unprotected one.
    Unprotected,
}

/// How to set the harness up.
#[derive(Clone, Debug)]
pub struct HarnessConfig {
    /// The upstreams' script.
    pub timeline: Arc<Timeline>,
    /// The upstreams' worker slots.
    pub capacity: u32,
    /// The longest a call waits for a worker slot.
    pub queue_timeout: Duration,
    /// The protected front's policies.
    pub protection: Protection,
    /// Which fronts.
    pub fronts: Fronts,
    /// Seed of the upstreams' draws.
    pub seed: u64,
    /// Port of the protected front, or of the unprotected one when it is
    /// alone (0: any free port).
    pub port: u16,
    /// An upper bound on the whole run: the script task stops then.
    pub horizon: Duration,
    /// Peers' fronts to start beside the others, each with its own copy of
    /// the upstream, with the protection's thresholds.
    pub peers: Vec<Peer>,
}

struct ProtectedSide {
    _server: Server<ProtectedFront>,
    uri: Uri,
    counts: Arc<FrontCounts>,
    layer: ProtectedLayer,
    ring: Arc<Ring>,
    upstream: Arc<UpstreamServer>,
    watch: Arc<DownWatch>,
}

struct PlainSide {
    _server: Server<PlainFront>,
    uri: Uri,
    counts: Arc<FrontCounts>,
    upstream: Arc<UpstreamServer>,
    watch: Arc<DownWatch>,
}

struct PeerSide {
    name: &'static str,
    _server: Server<PeerFront>,
    uri: Uri,
    counts: Arc<FrontCounts>,
    upstream: Arc<UpstreamServer>,
    watch: Arc<DownWatch>,
}

/// The running services. See the [module documentation](self).
pub struct Harness {
    origin: Instant,
    timeline: Arc<Timeline>,
    protected: Option<ProtectedSide>,
    plain: Option<PlainSide>,
    peers: Vec<PeerSide>,
    script: JoinHandle<()>,
    restarts: Arc<AtomicU64>,
    client: HttpClient,
}

/// How to drive load.
#[derive(Clone, Debug)]
pub struct DriveOptions {
    /// Requests per second over time.
    pub plan: RatePlan,
    /// The generator's bounds.
    pub bounds: Bounds,
    /// Width of a time bucket.
    pub bucket: Duration,
    /// Live display.
    pub progress: ProgressMode,
    /// Sample the process's RSS and descriptors this often.
    pub sample_process: Option<Duration>,
    /// The latency objective: a success within it is a good answer.
    pub objective: Duration,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn front_uri(addr: SocketAddr) -> Result<Uri, http::uri::InvalidUri> {
    format!("http://{addr}/work").parse()
}

impl Harness {
    /// Starts the upstreams and the fronts; time zero of the script is now.
    ///
    /// # Errors
    ///
    /// A bad protection setting, or a port that cannot be bound.
    pub fn start(config: &HarnessConfig) -> Result<Harness, Box<dyn Error>> {
        let clock = TokioClock::new();
        let origin = clock.origin();
        let upstream = || {
            UpstreamServer::start(
                UpstreamConfig {
                    timeline: Arc::clone(&config.timeline),
                    capacity: config.capacity,
                    queue_timeout: config.queue_timeout,
                    seed: config.seed,
                },
                origin,
            )
            .map(Arc::new)
        };
        let watch = || Arc::new(DownWatch::new(Arc::clone(&config.timeline), origin));
        let mut upstreams = Vec::new();
        let protected = if config.fronts == Fronts::Unprotected {
            None
        } else {
            let ring = Arc::new(EventRing::with_capacity(4096)?);
            let layer = config.protection.build(clock, &ring)?;
            let up = upstream()?;
            let watch = watch();
            let client = UpstreamClient::new(http_client(256), front_uri(up.addr())?)
                .watched(Arc::clone(&watch));
            let front = ProtectedFront::new(&layer, client);
            let counts = Arc::clone(front.counts());
            let server = Server::start(loopback(config.port), front)?;
            upstreams.push(Arc::clone(&up));
            Some(ProtectedSide {
                uri: front_uri(server.addr())?,
                _server: server,
                counts,
                layer,
                ring,
                upstream: up,
                watch,
            })
        };
        let plain = if config.fronts == Fronts::Protected {
            None
        } else {
            let up = upstream()?;
            let watch = watch();
            let front = PlainFront::new(
                UpstreamClient::new(http_client(256), front_uri(up.addr())?)
                    .watched(Arc::clone(&watch)),
            );
            let counts = Arc::clone(front.counts());
            let port = if protected.is_none() { config.port } else { 0 };
            let server = Server::start(loopback(port), front)?;
            upstreams.push(Arc::clone(&up));
            Some(PlainSide {
                uri: front_uri(server.addr())?,
                _server: server,
                counts,
                upstream: up,
                watch,
            })
        };
        let mut peers = Vec::with_capacity(config.peers.len());
        for &peer in &config.peers {
            let up = upstream()?;
            let watch = watch();
            let client = UpstreamClient::new(http_client(256), front_uri(up.addr())?)
                .watched(Arc::clone(&watch));
            let front = PeerFront::new(peer, &config.protection, client)?;
            let counts = Arc::clone(front.counts());
            let server = Server::start(loopback(0), front)?;
            upstreams.push(Arc::clone(&up));
            peers.push(PeerSide {
                name: peer.name(),
                uri: front_uri(server.addr())?,
                _server: server,
                counts,
                upstream: up,
                watch,
            });
        }
        let restarts = Arc::new(AtomicU64::new(0));
        let script = tokio::spawn(run_script(
            upstreams,
            Arc::clone(&config.timeline),
            origin,
            config.horizon,
            Arc::clone(&restarts),
        ));
        Ok(Harness {
            origin,
            timeline: Arc::clone(&config.timeline),
            protected,
            plain,
            peers,
            script,
            restarts,
            client: http_client(1024),
        })
    }

    /// The URL of the protected front, else of the unprotected one.
    pub fn front_uri(&self) -> Option<&Uri> {
        self.protected
            .as_ref()
            .map(|p| &p.uri)
            .or(self.plain.as_ref().map(|p| &p.uri))
    }

    /// What each front answered so far: `(name, counts)`.
    pub fn front_counts(&self) -> Vec<(&'static str, &FrontCounts)> {
        let mut out = Vec::new();
        if let Some(p) = &self.protected {
            out.push(("protected", &*p.counts));
        }
        if let Some(p) = &self.plain {
            out.push(("unprotected", &*p.counts));
        }
        for p in &self.peers {
            out.push((p.name, &*p.counts));
        }
        out
    }

    /// The protected front's policies.
    pub fn protected_layer(&self) -> Option<&ProtectedLayer> {
        self.protected.as_ref().map(|p| &p.layer)
    }

    /// Drives `options.plan` at every front, from now, and returns what was
    /// measured once every request has ended.
    ///
    /// # Errors
    ///
    /// When the watcher task failed (a bug: it panicked).
    pub async fn drive(&self, options: &DriveOptions) -> Result<Drive, Box<dyn Error>> {
        let start = Instant::now();
        let started = start.saturating_duration_since(self.origin);
        let length = options.plan.length();
        let bucket = options.bucket.max(Duration::from_millis(100));
        let horizon = length + options.bounds.client_timeout + Duration::from_secs(10);
        let buckets = usize::try_from(horizon.as_millis() / bucket.as_millis() + 2).unwrap_or(1);
        let mut watched = Vec::new();
        if let Some(p) = &self.protected {
            watched.push(Watched {
                name: "protected",
                target: target(&p.uri, buckets, options.objective),
                layer: Some(p.layer.clone()),
                ring: Some(Arc::clone(&p.ring)),
                upstream: Arc::clone(&p.upstream),
                watch: Arc::clone(&p.watch),
            });
        }
        if let Some(p) = &self.plain {
            watched.push(Watched {
                name: "unprotected",
                target: target(&p.uri, buckets, options.objective),
                layer: None,
                ring: None,
                upstream: Arc::clone(&p.upstream),
                watch: Arc::clone(&p.watch),
            });
        }
        for p in &self.peers {
            watched.push(Watched {
                name: p.name,
                target: target(&p.uri, buckets, options.objective),
                layer: None,
                ring: None,
                upstream: Arc::clone(&p.upstream),
                watch: Arc::clone(&p.watch),
            });
        }
        let calls_before: Vec<(u64, u64)> = watched.iter().map(|w| w.upstream_calls()).collect();
        let restarts_before = self.restarts.load(Ordering::Relaxed);
        let targets: Vec<Target> = watched.iter().map(|w| w.target.clone()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = tokio::spawn(watch(
            watched,
            WatchPlan {
                origin: self.origin,
                start,
                bucket,
                length,
                horizon,
                progress: options.progress,
                sample_process: options.sample_process,
                timeline: Arc::clone(&self.timeline),
                plan: options.plan.clone(),
            },
            Arc::clone(&stop),
        ));
        generate(
            &options.plan,
            start,
            &self.timeline,
            started,
            &targets,
            &self.client,
            options.bounds,
        )
        .await;
        // ordering: Release, pairs with the Acquire load in `watch`: the
        // watcher's final roll sees every request's record.
        stop.store(true, Ordering::Release);
        let (mut fronts, process) = watcher
            .await
            .map_err(|e| format!("the watcher task failed: {e}"))?;
        for (front, (all, down)) in fronts.iter_mut().zip(calls_before) {
            front.upstream_calls -= all.min(front.upstream_calls);
            front.upstream_calls_while_down -= down.min(front.upstream_calls_while_down);
        }
        Ok(Drive {
            started_secs: started.as_secs_f64(),
            length,
            rate: options.plan.segments().first().map_or(0, |s| s.rate),
            fronts,
            process,
            restarts: self.restarts.load(Ordering::Relaxed) - restarts_before,
        })
    }

    /// Stops the script; the servers stop when the harness is dropped.
    pub fn shutdown(self) {
        self.script.abort();
    }
}

fn target(uri: &Uri, buckets: usize, objective: Duration) -> Target {
    Target {
        uri: uri.clone(),
        recorder: Arc::new(Mutex::new(Recorder::new(buckets, objective))),
        in_flight: Arc::new(AtomicU64::new(0)),
    }
}

/// A front as the watcher sees it.
struct Watched {
    name: &'static str,
    target: Target,
    layer: Option<ProtectedLayer>,
    ring: Option<Arc<Ring>>,
    upstream: Arc<UpstreamServer>,
    watch: Arc<DownWatch>,
}

impl Watched {
    fn breaker(&self) -> Option<BreakerState> {
        let layer = self.layer.as_ref()?;
        layer.policies().breaker().map(|b| b.state())
    }

    fn limit(&self) -> Option<u32> {
        let layer = self.layer.as_ref()?;
        layer.policies().limit().map(|l| l.limit())
    }

    /// Calls the upstream received, and calls the front sent it while it
    /// was down or in an outage (received or refused).
    fn upstream_calls(&self) -> (u64, u64) {
        let counts = self.upstream.counts();
        // ordering: Relaxed; a counter.
        (
            counts.received.load(Ordering::Relaxed),
            self.watch.sent_while_down(),
        )
    }

    fn in_flight(&self) -> u64 {
        // ordering: Relaxed; a gauge.
        self.target.in_flight.load(Ordering::Relaxed)
    }

    fn roll(&self, at: f64) {
        lock(&self.target.recorder).roll(at, self.in_flight(), self.breaker(), self.limit());
    }

    fn live(&self) -> Live {
        let r = lock(&self.target.recorder);
        Live {
            tally: r.total.tally,
            recent_p99: r
                .series
                .last()
                .filter(|b| b.latency.count > 0)
                .map(|b| b.latency.p99),
            in_flight: self.in_flight(),
            breaker: self.breaker(),
            limit: self.limit(),
        }
    }
}

struct WatchPlan {
    origin: Instant,
    start: Instant,
    bucket: Duration,
    length: Duration,
    horizon: Duration,
    progress: ProgressMode,
    sample_process: Option<Duration>,
    timeline: Arc<Timeline>,
    plan: RatePlan,
}

/// What the watcher learnt about one front from its events.
#[derive(Default)]
struct Seen {
    transitions: Vec<Transition>,
    lost: u64,
    limit: Option<LimitReport>,
}

const TICK: Duration = Duration::from_millis(250);

async fn watch(
    fronts: Vec<Watched>,
    plan: WatchPlan,
    stop: Arc<AtomicBool>,
) -> (Vec<FrontRun>, Vec<ProcSample>) {
    let secs = |at: Instant| at.saturating_duration_since(plan.origin).as_secs_f64();
    let mut consumers: Vec<_> = fronts
        .iter()
        .map(|f| f.ring.as_ref().map(|r| r.consumer()))
        .collect();
    let mut seen: Vec<Seen> = fronts
        .iter()
        .map(|f| Seen {
            limit: f.limit().map(|l| LimitReport {
                current: l,
                lowest: l,
                highest: l,
                changes: 0,
            }),
            ..Seen::default()
        })
        .collect();
    let mut states: Vec<Option<BreakerState>> = fronts.iter().map(Watched::breaker).collect();
    let mut progress = Progress::new(plan.progress, plan.length, fronts.len());
    let samples_room = plan.sample_process.map_or(0, |every| {
        plan.horizon.as_millis() / every.as_millis().max(1) + 2
    });
    let mut process = Vec::with_capacity(usize::try_from(samples_room).unwrap_or(0));
    let mut next_sample = Duration::ZERO;
    let mut next_roll = plan.start + plan.bucket;
    let mut ticks = tokio::time::interval_at(plan.start + TICK, TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let max_ticks = plan.horizon.as_millis() / TICK.as_millis() + 1;
    for _ in 0..max_ticks {
        ticks.tick().await;
        // ordering: Acquire, pairs with the Release store after the
        // generator ended.
        let stopping = stop.load(Ordering::Acquire);
        let now = Instant::now();
        for ((consumer, seen), state) in consumers.iter_mut().zip(&mut seen).zip(&mut states) {
            if let Some(c) = consumer {
                read_events(c, seen, state);
            }
        }
        while now >= next_roll {
            for f in &fronts {
                f.roll(secs(next_roll));
            }
            next_roll += plan.bucket;
        }
        let elapsed = now.saturating_duration_since(plan.start);
        if let Some(every) = plan.sample_process
            && elapsed >= next_sample
        {
            next_sample = elapsed + every;
            if let Some(s) = procfs::sample(now.saturating_duration_since(plan.origin).as_secs()) {
                process.push(s);
            }
        }
        let phase = plan
            .timeline
            .phase_at(now.saturating_duration_since(plan.origin))
            .kind
            .label();
        let status = format!("{phase}; load {}/s", plan.plan.rate_at(elapsed));
        let live: Vec<_> = fronts.iter().map(|f| (f.name, f.live())).collect();
        progress.update(elapsed, &status, &live);
        if stopping {
            break;
        }
    }
    progress.finish();
    // The last, partial bucket.
    let end = secs(Instant::now());
    for f in &fronts {
        let r = lock(&f.target.recorder);
        let partial = r.series.last().is_none_or(|b| b.end_secs < end);
        drop(r);
        if partial {
            f.roll(end);
        }
    }
    let runs = fronts
        .iter()
        .zip(seen)
        .map(|(f, seen)| {
            let r = lock(&f.target.recorder);
            let mut run = FrontRun::from_recorder(f.name, f.layer.is_some(), &r);
            run.transitions = seen.transitions;
            run.lost_events = seen.lost;
            run.limit = seen.limit.map(|l| LimitReport {
                current: f.limit().unwrap_or(l.current),
                ..l
            });
            run.breaker_end = f.breaker();
            (run.upstream_calls, run.upstream_calls_while_down) = f.upstream_calls();
            run
        })
        .collect();
    (runs, process)
}

fn read_events(
    consumer: &mut tenlives_engine::events::Consumer<'_, Box<[tenlives_engine::events::Slot]>>,
    seen: &mut Seen,
    state: &mut Option<BreakerState>,
) {
    // Bounded: at most one ring's worth per look.
    for _ in 0..8192 {
        let Some(received) = consumer.try_recv() else {
            break;
        };
        let event = match received {
            Received::Event(e) => e,
            Received::Lost(n) => {
                seen.lost += n;
                continue;
            }
            // A kind of receipt this version does not know.
            _ => continue,
        };
        let to = match event.kind {
            EventKind::BREAKER_OPENED => BreakerState::Open,
            EventKind::BREAKER_HALF_OPENED => BreakerState::HalfOpen,
            EventKind::BREAKER_CLOSED => BreakerState::Closed,
            EventKind::BULKHEAD_LIMIT_CHANGED => {
                if let Some(l) = &mut seen.limit {
                    let new = u32::try_from(event.payload[1]).unwrap_or(u32::MAX);
                    l.current = new;
                    l.lowest = l.lowest.min(new);
                    l.highest = l.highest.max(new);
                    l.changes += 1;
                }
                continue;
            }
            _ => continue,
        };
        let from = state.unwrap_or(BreakerState::Closed);
        *state = Some(to);
        seen.transitions.push(Transition {
            at_secs: event.time.as_nanos() as f64 / 1e9,
            from,
            to,
            open_for: (to == BreakerState::Open).then(|| Duration::from_nanos(event.payload[1])),
        });
    }
}
