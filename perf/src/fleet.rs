//! `tenlives-perf fleet`: three HTTP fronts sharing one quota through Redis.
//!
//! The scenario starts its own `redis-server` on a free loopback port (in a
//! temporary directory, persistence off; the binary is `--redis-server`, or
//! `REDIS_SERVER` when set) and stops it at the end. On loopback beside it:
//! a healthy upstream (the demo's, [`UpstreamServer`], 2–4 ms a call) and
//! three fronts, each an HTTP server answering every request through
//! `tenlives_redis::FleetRateLimitLayer` over the demo's upstream client:
//! admitted, the call goes to the upstream; refused, the front answers `429`
//! with `Retry-After`. Each front has its own `FleetRateLimiter` (its own
//! Redis connection and lease, as three processes would) on one quota.
//!
//! An open-loop generator sends the demo's load (`--rate`, 200 a second by
//! default) split 3 : 2 : 1 between the fronts for `--seconds` (20 by
//! default). Each front counts what its limiter admitted, per second of the
//! run. The report prints the per-front and fleet admitted rates second by
//! second beside the quota, writes them as an SVG plot
//! (`--out`/fleet.svg), and checks the bound of `docs/redis.md`: over any
//! window of length `w` the fleet admits at most `b + w / T + N·L` (`N` = 3
//! fronts, `L` the largest lease), checked over the whole run and over every
//! one-second bucket (`b + rate + N·L`, plus 20 ms of clock skew between
//! the fronts' buckets and Redis's clock). It also checks that the fleet got
//! at least half of what the quota and the offered load allowed (a run that
//! admits nothing would otherwise pass). Exit status 1 when a check fails,
//! 2 when the scenario cannot run (no `redis-server`, a port).

use std::convert::Infallible;
use std::error::Error;
use std::fmt::Write as _;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::http::{Request, Response, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use tenlives_engine::rate::Quota;
use tenlives_redis::{
    FleetConfig, FleetLimitError, FleetRateLimit, FleetRateLimitLayer, FleetRateLimiter,
};
use tokio::task::JoinSet;
use tower::ServiceExt;
use tower_layer::Layer;

use crate::http;
use crate::http::front::{Call, HttpClient, UpstreamClient, http_client};
use crate::http::plot;
use crate::http::server::{Body, Handler, Server, respond};
use crate::http::timeline::Timeline;
use crate::http::upstream::{UpstreamConfig, UpstreamServer};

/// The fronts, and their shares of the offered load (sixths).
const FRONTS: [(&str, u32); 3] = [("front A", 3), ("front B", 2), ("front C", 1)];
/// Slack for the skew between a front's one-second buckets (its clock, at
/// the request's arrival) and Redis's clock, on which grants are decided.
const SKEW: Duration = Duration::from_millis(20);
/// Requests in flight per front, at most (the generator skips beyond).
const MAX_IN_FLIGHT: usize = 512;
/// The longest a request may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Options of `tenlives-perf fleet`.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct FleetArgs {
    /// How long the load runs, in seconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub seconds: u64,
    /// The offered load across the three fronts, per second (the demo's
    /// load), split 3 : 2 : 1.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(6..=100_000))]
    pub rate: u32,
    /// The fleet's quota, per second.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub quota: u32,
    /// The quota's burst.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub burst: u32,
    /// The largest share of the burst (and of the rate) one front may hold.
    #[arg(long, default_value_t = 0.5)]
    pub max_share: f64,
    /// How often each front's lease is refreshed, in milliseconds.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub refresh_ms: u64,
    /// The `redis-server` binary (`REDIS_SERVER`, when set, wins).
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// Where the plot goes.
    #[arg(long, default_value = "target/fleet")]
    pub out: PathBuf,
}

/// A `redis-server` of the scenario's own, killed (and its directory
/// removed) on drop.
struct RedisProcess {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl RedisProcess {
    /// Starts `bin` on a free loopback port and waits (10 s at most) until
    /// it answers `PING`.
    fn start(bin: &str) -> Result<RedisProcess, Box<dyn Error>> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!("tenlives-fleet-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new(bin)
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {bin} (install redis-server): {e}"))?;
        let server = RedisProcess { child, dir, port };
        let client = redis::Client::open(server.url())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut con) = client.get_connection_with_timeout(Duration::from_millis(200))
                && redis::cmd("PING").query::<String>(&mut con).as_deref() == Ok("PONG")
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(format!("{bin} did not answer PING within 10 s").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What one front's limiter decided, per second of the run.
struct Tally {
    admitted: Vec<AtomicU64>,
    refused: AtomicU64,
    upstream_failed: AtomicU64,
}

impl Tally {
    fn new(seconds: u64) -> Tally {
        // Two more buckets for the answers that arrive after the load ends.
        let n = usize::try_from(seconds).unwrap_or(usize::MAX - 2) + 2;
        Tally {
            admitted: (0..n).map(|_| AtomicU64::new(0)).collect(),
            refused: AtomicU64::new(0),
            upstream_failed: AtomicU64::new(0),
        }
    }

    fn admitted(&self) -> Vec<u64> {
        // ordering: Relaxed; read after the load ended.
        self.admitted
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

/// One front's handler: every request through the fleet rate limit.
#[derive(Clone)]
struct Front {
    service: FleetRateLimit<UpstreamClient>,
    tally: Arc<Tally>,
    start: Instant,
}

impl Handler for Front {
    type Error = Infallible;

    fn handle(
        &self,
        _req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'static + use<> {
        let service = self.service.clone();
        let tally = Arc::clone(&self.tally);
        let second = Instant::now()
            .saturating_duration_since(self.start)
            .as_secs();
        let bucket = usize::try_from(second)
            .unwrap_or(usize::MAX)
            .min(tally.admitted.len() - 1);
        async move {
            // ordering: Relaxed throughout; counts read after the run.
            let answer = match service.oneshot(Call).await {
                Ok(_) => {
                    tally.admitted[bucket].fetch_add(1, Ordering::Relaxed);
                    respond(200, &[], "ok\n")
                }
                Err(FleetLimitError::Rejected(r)) => {
                    tally.refused.fetch_add(1, Ordering::Relaxed);
                    let secs = r.retry_after.as_secs_f64().ceil().max(1.0).to_string();
                    respond(
                        429,
                        &[("x-tenlives", "fleet-quota"), ("retry-after", &secs)],
                        "fleet quota in use\n",
                    )
                }
                Err(FleetLimitError::Inner(_)) => {
                    // Admitted by the limiter; the upstream failed.
                    tally.admitted[bucket].fetch_add(1, Ordering::Relaxed);
                    tally.upstream_failed.fetch_add(1, Ordering::Relaxed);
                    respond(502, &[], "upstream failed\n")
                }
            };
            Ok(answer)
        }
    }
}

/// Sends `rate` requests a second to `uri` from `start` for `length`, open
/// loop; returns the requests that got no answer (or were skipped at the
/// in-flight bound). Bounded: the plan ends at `length`, each request with
/// [`CLIENT_TIMEOUT`], and what is still in flight 3 s later is aborted.
async fn drive(client: HttpClient, uri: Uri, rate: f64, start: Instant, length: Duration) -> u64 {
    let total = (rate * length.as_secs_f64()) as u64;
    let unanswered = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    let mut ticks = tokio::time::interval_at(start.into(), Duration::from_millis(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut issued = 0u64;
    while issued < total {
        ticks.tick().await;
        let due = ((Instant::now()
            .saturating_duration_since(start)
            .as_secs_f64()
            * rate) as u64)
            .min(total);
        while issued < due {
            issued += 1;
            if tasks.len() >= MAX_IN_FLIGHT {
                // ordering: Relaxed; a count.
                unanswered.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let (client, uri, unanswered) = (client.clone(), uri.clone(), Arc::clone(&unanswered));
            tasks.spawn(async move {
                let mut req = Request::new(Empty::<Bytes>::new());
                *req.uri_mut() = uri;
                let exchange = async {
                    let response = client.request(req).await.ok()?;
                    response.into_body().collect().await.ok()
                };
                if tokio::time::timeout(CLIENT_TIMEOUT, exchange)
                    .await
                    .ok()
                    .flatten()
                    .is_none()
                {
                    // ordering: Relaxed; a count.
                    unanswered.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while tasks.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    // ordering: Relaxed; every task ended or was aborted.
    unanswered.load(Ordering::Relaxed)
}

/// The stated bound on what the fleet admits over a window of `w`:
/// `b + (w + skew) · rate + N·L` tokens.
fn bound(burst: u32, rate: u32, fronts: u64, max_lease: u32, w: Duration) -> u64 {
    let refill = ((w + SKEW).as_secs_f64() * f64::from(rate)).floor() as u64;
    u64::from(burst) + refill + fronts * u64::from(max_lease)
}

/// What the run measured, and the checks on it.
struct Outcome {
    /// Admitted per second, per front.
    per_front: Vec<Vec<u64>>,
    /// The length of the window the decisions fell in.
    window: Duration,
}

impl Outcome {
    fn fleet(&self) -> Vec<u64> {
        let n = self.per_front.iter().map(Vec::len).max().unwrap_or(0);
        (0..n)
            .map(|i| {
                self.per_front
                    .iter()
                    .map(|f| f.get(i).copied().unwrap_or(0))
                    .sum()
            })
            .collect()
    }

    fn total(&self) -> u64 {
        self.fleet().iter().sum()
    }
}

/// The checks: `(what, measured, limit, passed)`.
fn checks(args: &FleetArgs, max_lease: u32, outcome: &Outcome) -> Vec<(String, u64, u64, bool)> {
    let fronts = FRONTS.len() as u64;
    let total = outcome.total();
    let whole = bound(args.burst, args.quota, fronts, max_lease, outcome.window);
    let second = bound(
        args.burst,
        args.quota,
        fronts,
        max_lease,
        Duration::from_secs(1),
    );
    let busiest = outcome.fleet().into_iter().max().unwrap_or(0);
    let secs = Duration::from_secs(args.seconds).as_secs_f64();
    let floor = (f64::from(args.quota.min(args.rate)) * secs * 0.5) as u64;
    vec![
        (
            "fleet admitted over the run <= b + w/T + N*L".to_owned(),
            total,
            whole,
            total <= whole,
        ),
        (
            "fleet admitted in the busiest second <= b + rate + N*L".to_owned(),
            busiest,
            second,
            busiest <= second,
        ),
        (
            "fleet admitted over the run >= half of min(quota, offered) * seconds".to_owned(),
            total,
            floor,
            total >= floor,
        ),
    ]
}

/// Runs the scenario: `Ok(true)` when every check passed.
///
/// # Errors
///
/// When `redis-server` cannot be started, a port cannot be bound, or the
/// plot cannot be written.
pub fn main(args: &FleetArgs) -> Result<bool, Box<dyn Error>> {
    let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| args.redis_server.clone());
    let redis = RedisProcess::start(&bin)?;
    let result = http::block_on(run(args, &redis));
    drop(redis);
    result
}

async fn run(args: &FleetArgs, redis: &RedisProcess) -> Result<bool, Box<dyn Error>> {
    let quota = Quota::per_second(args.quota)?.with_burst(args.burst)?;
    let length = Duration::from_secs(args.seconds);
    let refresh = Duration::from_millis(args.refresh_ms);
    let origin = Instant::now();
    let upstream = UpstreamServer::start(
        UpstreamConfig {
            timeline: Arc::new(Timeline::healthy(
                length + Duration::from_secs(10),
                Duration::from_millis(2),
            )),
            capacity: 1_024,
            queue_timeout: Duration::from_secs(1),
            seed: 1,
        },
        origin.into(),
    )?;
    let upstream_uri: Uri = format!("http://{}/", upstream.addr()).parse()?;
    let client = http_client(64);
    // One quota name per run, so a reused Redis never mixes two runs.
    let name = format!(
        "fleet-{}-{}",
        std::process::id(),
        origin.elapsed().as_nanos()
    );
    let config = FleetConfig::new(name, quota)
        .max_share(args.max_share)
        .expected_instances(FRONTS.len() as u32)
        .refresh_interval(refresh)
        .lease_duration((refresh * 8).max(Duration::from_secs(1)))
        .redis_timeout(Duration::from_millis(250));
    let max_lease = config.max_lease();
    // The load starts once every front is up.
    let start = Instant::now() + Duration::from_millis(500);
    let mut limiters = Vec::new();
    let mut servers = Vec::new();
    let mut tallies = Vec::new();
    for _ in FRONTS {
        let limiter = Arc::new(
            FleetRateLimiter::start(config.clone(), redis::Client::open(redis.url())?).await?,
        );
        let tally = Arc::new(Tally::new(args.seconds));
        let front = Front {
            service: FleetRateLimitLayer::new(Arc::clone(&limiter))
                .layer(UpstreamClient::new(client.clone(), upstream_uri.clone())),
            tally: Arc::clone(&tally),
            start,
        };
        servers.push(Server::start(SocketAddr::from(([127, 0, 0, 1], 0)), front)?);
        limiters.push(limiter);
        tallies.push(tally);
    }
    let load_client = http_client(MAX_IN_FLIGHT);
    let mut drives = JoinSet::new();
    for ((_, share), server) in FRONTS.iter().zip(&servers) {
        let uri: Uri = format!("http://{}/", server.addr()).parse()?;
        let rate = f64::from(args.rate) * f64::from(*share) / 6.0;
        drives.spawn(drive(load_client.clone(), uri, rate, start, length));
    }
    let mut unanswered = 0;
    while let Some(n) = drives.join_next().await {
        unanswered += n.unwrap_or(0);
    }
    let window = Instant::now().saturating_duration_since(start);
    let stats: Vec<_> = limiters.iter().map(|l| l.stats()).collect();
    for server in &servers {
        server.stop();
    }
    drop(servers);
    for limiter in limiters {
        if let Some(limiter) = Arc::into_inner(limiter) {
            let _ = tokio::time::timeout(Duration::from_secs(2), limiter.shutdown()).await;
        }
    }
    drop(upstream);

    let outcome = Outcome {
        per_front: tallies.iter().map(|t| t.admitted()).collect(),
        window,
    };
    let checks = checks(args, max_lease, &outcome);
    let mut text = String::new();
    let _ = writeln!(
        text,
        "tenlives fleet: three fronts sharing one quota through Redis (redis-server on 127.0.0.1:{})",
        redis.port
    );
    let _ = writeln!(
        text,
        "quota {}/s, burst b = {}, max share {} (largest lease L = {max_lease}), refresh {} ms; \
         offered {}/s split 3:2:1 for {} s",
        args.quota, args.burst, args.max_share, args.refresh_ms, args.rate, args.seconds
    );
    let _ = writeln!(text);
    let _ = write!(text, "{:>8}", "second");
    for (label, _) in FRONTS {
        let _ = write!(text, "{label:>10}");
    }
    let _ = writeln!(text, "{:>10}{:>10}", "fleet", "quota");
    let fleet = outcome.fleet();
    for (i, total) in fleet.iter().enumerate() {
        if i as u64 >= args.seconds && *total == 0 {
            continue;
        }
        let _ = write!(text, "{i:>8}");
        for front in &outcome.per_front {
            let _ = write!(text, "{:>10}", front.get(i).copied().unwrap_or(0));
        }
        let _ = writeln!(text, "{total:>10}{:>10}", args.quota);
    }
    let _ = writeln!(text);
    let secs = window.as_secs_f64().max(1e-3);
    for ((label, _), (front, (tally, s))) in FRONTS
        .iter()
        .zip(outcome.per_front.iter().zip(tallies.iter().zip(&stats)))
    {
        let admitted: u64 = front.iter().sum();
        let _ = writeln!(
            text,
            "{label}: admitted {admitted} ({:.1}/s), refused {}, upstream failures {}, \
             script calls {}, degraded decisions {}",
            admitted as f64 / secs,
            tally.refused.load(Ordering::Relaxed),
            tally.upstream_failed.load(Ordering::Relaxed),
            s.redis_calls,
            s.degraded_admitted + s.degraded_refused,
        );
    }
    let total = outcome.total();
    let calls: u64 = stats.iter().map(|s| s.redis_calls).sum();
    let _ = writeln!(
        text,
        "fleet: admitted {total} in {secs:.2} s = {:.1}/s against a quota of {}/s; \
         {calls} script calls ({:.0} per 1 000 admitted); {unanswered} requests unanswered",
        total as f64 / secs,
        args.quota,
        calls as f64 * 1_000.0 / (total.max(1) as f64),
    );
    let _ = writeln!(text);
    let mut passed = true;
    for (what, measured, limit, ok) in &checks {
        passed &= ok;
        let _ = writeln!(
            text,
            "[{}] {what}: {measured} vs {limit}",
            if *ok { "PASS" } else { "FAIL" }
        );
    }
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join("fleet.svg");
    let points = |v: &[u64]| -> Vec<(f64, f64)> {
        v.iter()
            .enumerate()
            .take(usize::try_from(args.seconds).unwrap_or(usize::MAX))
            .map(|(i, n)| (i as f64 + 0.5, *n as f64))
            .collect()
    };
    let lines: Vec<plot::RateLine<'_>> = FRONTS
        .iter()
        .zip(&outcome.per_front)
        .map(|((label, _), v)| (*label, points(v)))
        .collect();
    plot::fleet_rates(
        &path,
        "tenlives fleet: admitted per second, three fronts sharing one quota",
        &lines,
        &points(&fleet),
        f64::from(args.quota),
        bound(args.burst, args.quota, 3, max_lease, Duration::from_secs(1)) as f64,
    )?;
    let _ = writeln!(text, "plot: {}", path.display());
    print!("{text}");
    Ok(passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> FleetArgs {
        FleetArgs {
            seconds: 20,
            rate: 200,
            quota: 100,
            burst: 20,
            max_share: 0.5,
            refresh_ms: 50,
            redis_server: "redis-server".to_owned(),
            out: PathBuf::from("target/fleet"),
        }
    }

    #[test]
    fn the_bound_is_burst_plus_refill_plus_the_leases() {
        // 20 + 100 * 1.02 + 3 * 10.
        assert_eq!(bound(20, 100, 3, 10, Duration::from_secs(1)), 152);
        assert_eq!(
            bound(20, 100, 3, 10, Duration::from_secs(20)),
            20 + 2_002 + 30
        );
    }

    #[test]
    fn checks_fail_above_the_bound_and_below_the_floor() {
        let window = Duration::from_secs(20);
        let at = |per_second: u64| Outcome {
            per_front: vec![
                vec![per_second / 2; 20],
                vec![per_second / 2; 20],
                vec![0; 20],
            ],
            window,
        };
        let ok = checks(&args(), 10, &at(100));
        assert!(ok.iter().all(|c| c.3), "{ok:?}");
        // 160 a second: over the one-second bound (152) and the run's.
        let over = checks(&args(), 10, &at(160));
        assert!(!over[0].3 && !over[1].3 && over[2].3, "{over:?}");
        // Nothing admitted: the floor fails.
        let none = checks(&args(), 10, &at(0));
        assert!(none[0].3 && none[1].3 && !none[2].3, "{none:?}");
    }
}
