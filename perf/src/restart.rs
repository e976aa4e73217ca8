//! `tenlives-perf restart`: a service killed with SIGKILL mid-load and
//! restarted from its state file.
//!
//! The service is a child process (this binary re-run as the hidden
//! `restart-child` subcommand): an HTTP front on a loopback port whose
//! policies come from a `tenlives_ops::Registry` — a rate limiter `api`
//! (`--quota` a second, burst `--burst`) and a breaker `dep` (opens after 5
//! failures in a row, for `--open-ms`) — with `Persistence` saving the
//! registry's state to `<state dir>/state.bin` every `--save-ms`, and
//! `restore_state_or_start_fresh` on start. A request is first checked
//! against the limiter (`429` when refused), then the breaker (`503` while
//! open), then sent to the demo's upstream ([`UpstreamServer`], run by the
//! parent): `200`, or `502` when the call failed. The child prints a line
//! (`admitted <wall-clock ns>`) for every admission before it answers, so
//! the parent holds the limiter's decisions up to the kill.
//!
//! The parent drives an open-loop load (`--rate`, 300 a second) for
//! `--seconds` (12). The upstream is stopped (connections refused) from 25 %
//! to 50 % of the run, so the breaker opens; at 40 % the parent asks the
//! child for its breaker's state, kills it with SIGKILL, starts it again on
//! the same port from the same state directory, and asks again. It reports
//! what was answered each second by status, the admissions each second
//! against the quota, the gap (from the kill to the first answered request,
//! and to the end of the first second back within the SLO: at most 5 % of
//! the requests failed, `5xx` or unanswered, and p99 ≤ 500 ms) and the
//! requests that failed in it, and writes an SVG (`--out`/restart.svg).
//!
//! Checks (exit status 1 when one fails, 2 when the scenario cannot run):
//! - over every window `[t_i, t_j]` between two admissions the limiter
//!   admitted at most `burst + quota × (t_j − t_i) + 1 + slack`: the GCRA
//!   bound, plus the admissions a restart may repeat, those after the last
//!   save before the kill: `slack = quota × (save interval + 250 ms of
//!   scheduling delay) + 2` ([`slack`]);
//! - the breaker was open before the kill and is open right after the
//!   restart;
//! - the restarted service answered, the limiter admitted after the
//!   restart, and the service was back within the SLO before the load ended.
//!
//! `--no-restore` starts the second child fresh (no restore): the breaker
//! check fails, and with a burst the restart gap does not refill, so does
//! the quota check. Everything runs on loopback and ends within `--seconds`
//! plus about 15 s; the child is killed on every exit path of the parent
//! (dropped guard), and exits by itself when its stdin closes (the parent
//! died) or after `--max-secs`.

use std::convert::Infallible;
use std::error::Error;
use std::fmt::Write as _;
use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::http::{Request, Response, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use plotters::prelude::*;
use tenlives_engine::breaker::Outcome as BreakerOutcome;
use tenlives_ops::config::FileSpec;
use tenlives_ops::{ConfigSet, Persistence, Registry};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::http;
use crate::http::front::{Call, HttpClient, UpstreamClient, http_client};
use crate::http::server::{Body, Handler, Server, respond};
use crate::http::timeline::Timeline;
use crate::http::upstream::{UpstreamConfig, UpstreamServer};

/// Requests in flight at most (the generator counts the rest as failed).
const MAX_IN_FLIGHT: usize = 512;
/// The longest a request may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest the child's call to the upstream may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(1);
/// Scheduling delay allowed between the last save and the kill (a busy
/// 2-core machine), as in `adapters/ops/tests/crash.rs`.
const SAVE_DELAY: Duration = Duration::from_millis(250);
/// The SLO of one second: at most this share of its requests failed …
const SLO_MAX_FAILED: f64 = 0.05;
/// … and its p99 at most this.
const SLO_P99: Duration = Duration::from_millis(500);

/// Options of `tenlives-perf restart`.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct RestartArgs {
    /// How long the load runs, in seconds.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u64).range(5..=600))]
    pub seconds: u64,
    /// The offered load, per second.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub rate: u32,
    /// The rate limiter's quota, per second.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub quota: u32,
    /// The rate limiter's burst. A burst the restart gap refills (below
    /// quota × the gap) makes a fresh start look like a restored one.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub burst: u32,
    /// How often the service saves its registry, in milliseconds.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub save_ms: u64,
    /// How long the breaker stays open (default: 30 % of the run, at least
    /// 2 s: it opens at 25 % and must still be open after the restart at 40 %).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub open_ms: Option<u64>,
    /// Restart the service without restoring its state (to see the checks
    /// fail).
    #[arg(long)]
    pub no_restore: bool,
    /// Where the plot goes.
    #[arg(long, default_value = "target/restart")]
    pub out: PathBuf,
}

impl RestartArgs {
    fn open(&self) -> Duration {
        self.open_ms.map_or_else(
            || (Duration::from_secs(self.seconds) * 3 / 10).max(Duration::from_secs(2)),
            Duration::from_millis,
        )
    }
}

/// Options of the hidden `restart-child` subcommand: the service.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct ChildArgs {
    /// Where the state file goes.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// The loopback port to serve on.
    #[arg(long)]
    pub port: u16,
    /// The upstream's address.
    #[arg(long)]
    pub upstream: SocketAddr,
    #[arg(long)]
    pub quota: u32,
    #[arg(long)]
    pub burst: u32,
    #[arg(long)]
    pub save_ms: u64,
    #[arg(long)]
    pub open_ms: u64,
    /// Start fresh instead of restoring the state file.
    #[arg(long)]
    pub no_restore: bool,
    /// Exit after this long whatever happens.
    #[arg(long, default_value_t = 120)]
    pub max_secs: u64,
}

fn wall_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The service's handler.
#[derive(Clone)]
struct Service {
    registry: Registry,
    limiter: Arc<tenlives_ops::Limiter>,
    breaker: Arc<tenlives_ops::Breaker>,
    upstream: UpstreamClient,
}

impl Handler for Service {
    type Error = Infallible;

    fn handle(
        &self,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'static + use<> {
        let this = self.clone();
        let state_query = req.uri().path() == "/breaker";
        async move {
            if state_query {
                let state: &'static str = match this.breaker.state() {
                    tenlives_engine::breaker::BreakerState::Open => "Open\n",
                    tenlives_engine::breaker::BreakerState::HalfOpen => "HalfOpen\n",
                    tenlives_engine::breaker::BreakerState::Closed => "Closed\n",
                    _ => "Other\n",
                };
                return Ok(respond(200, &[], state));
            }
            let now = this.registry.now();
            if this.limiter.check(now).is_err() {
                return Ok(respond(429, &[("x-tenlives", "rate")], "over quota\n"));
            }
            // Printed before the answer: a decision the parent did not see
            // was never answered either.
            println!("admitted {}", wall_nanos());
            let Ok(permit) = this.breaker.try_acquire_raw(now) else {
                return Ok(respond(503, &[("x-tenlives", "breaker")], "breaker open\n"));
            };
            let call = tokio::time::timeout(UPSTREAM_TIMEOUT, this.upstream.oneshot(Call)).await;
            let ok = matches!(call, Ok(Ok(200)));
            let outcome = if ok {
                BreakerOutcome::Success
            } else {
                BreakerOutcome::Failure
            };
            this.breaker.record(permit, outcome, this.registry.now());
            Ok(if ok {
                respond(200, &[], "ok\n")
            } else {
                respond(502, &[], "upstream failed\n")
            })
        }
    }
}

fn service_registry(quota: u32, burst: u32, open_ms: u64) -> Result<Registry, Box<dyn Error>> {
    let spec: FileSpec = serde_json::from_value(serde_json::json!({
        "circuit_breaker": { "configs": { "default": {
            "consecutive_failures": 5, "failure_rate": "off",
            "open_duration": format!("{open_ms}ms")
        } } },
        "rate_limiter": { "instances": {
            "api": { "rate": quota, "period": "1s", "burst": burst }
        } },
    }))?;
    Ok(Registry::builder()
        .config(ConfigSet::from_file_spec(&spec)?)
        .build())
}

/// The child: serves until killed, its stdin closes, or `max_secs`.
///
/// # Errors
///
/// When the registry cannot be built or the port bound.
pub fn child(args: &ChildArgs) -> Result<(), Box<dyn Error>> {
    // The parent holds our stdin: when it ends, so do we.
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    let max = Duration::from_secs(args.max_secs);
    std::thread::spawn(move || {
        std::thread::sleep(max);
        std::process::exit(0);
    });
    let registry = service_registry(args.quota, args.burst, args.open_ms)?;
    std::fs::create_dir_all(&args.state_dir)?;
    let state = args.state_dir.join("state.bin");
    let restored = if args.no_restore {
        0
    } else {
        registry.restore_state_or_start_fresh(&state).restored.len()
    };
    let breaker = registry.breaker("dep")?;
    let limiter = registry.rate_limiter("api")?;
    let _persistence =
        Persistence::start(registry.clone(), state, Duration::from_millis(args.save_ms));
    let upstream: Uri = format!("http://{}/", args.upstream).parse()?;
    let port = args.port;
    http::block_on(async move {
        let service = Service {
            registry,
            limiter,
            breaker: Arc::clone(&breaker),
            upstream: UpstreamClient::new(http_client(64), upstream),
        };
        let _server = Server::start(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), service)?;
        println!("ready restored={restored} breaker={:?}", breaker.state());
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// A running child, killed (SIGKILL) and reaped on drop.
struct ChildGuard {
    child: Child,
    /// Held so the child sees EOF when the parent dies.
    _stdin: Option<ChildStdin>,
}

impl ChildGuard {
    fn kill(&mut self) {
        // `Child::kill` sends SIGKILL on Unix.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the service and waits (10 s at most) for its `ready` line; its
/// admissions go into `admitted` (wall-clock ns) from a reader thread.
fn spawn_child(
    args: &RestartArgs,
    dir: &Path,
    port: u16,
    upstream: SocketAddr,
    no_restore: bool,
    admitted: &Arc<Mutex<Vec<u128>>>,
) -> Result<(ChildGuard, String), Box<dyn Error>> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("restart-child")
        .arg("--state-dir")
        .arg(dir)
        .args(["--port", &port.to_string()])
        .args(["--upstream", &upstream.to_string()])
        .args(["--quota", &args.quota.to_string()])
        .args(["--burst", &args.burst.to_string()])
        .args(["--save-ms", &args.save_ms.to_string()])
        .args(["--open-ms", &args.open().as_millis().to_string()])
        .args(["--max-secs", &(args.seconds + 60).to_string()]);
    if no_restore {
        command.arg("--no-restore");
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let mut guard = ChildGuard {
        child,
        _stdin: stdin,
    };
    let stdout = stdout.ok_or("no stdout")?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let admitted = Arc::clone(admitted);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(ns) = line.strip_prefix("admitted ") {
                if let (Ok(ns), Ok(mut v)) = (ns.trim().parse(), admitted.lock()) {
                    v.push(ns);
                }
            } else if line.starts_with("ready ") {
                let _ = ready_tx.send(line);
            }
        }
    });
    match ready_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(line) => Ok((guard, line)),
        Err(_) => {
            guard.kill();
            Err("the service did not start within 10 s".into())
        }
    }
}

/// One request of the load.
#[derive(Clone, Copy, Debug)]
struct Sent {
    /// When it was scheduled, since the load's start.
    at: Duration,
    /// Its status, when answered.
    status: Option<u16>,
    /// From the scheduled start to the answer (or the give-up).
    latency: Duration,
}

/// Sends `rate` requests a second to `uri` from `start` for `length`, open
/// loop, and returns every request's fate. Bounded: each request with
/// [`CLIENT_TIMEOUT`], and what is still in flight 3 s after the plan is
/// aborted (and counted unanswered).
async fn drive(
    client: HttpClient,
    uri: Uri,
    rate: f64,
    start: Instant,
    length: Duration,
) -> Vec<Sent> {
    let total = (rate * length.as_secs_f64()) as u64;
    let log = Arc::new(Mutex::new(Vec::with_capacity(
        usize::try_from(total).unwrap_or(0),
    )));
    let mut tasks = JoinSet::new();
    let mut ticks = tokio::time::interval_at(start.into(), Duration::from_millis(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut issued = 0u64;
    let record = |log: &Mutex<Vec<Sent>>, s: Sent| {
        if let Ok(mut v) = log.lock() {
            v.push(s);
        }
    };
    while issued < total {
        ticks.tick().await;
        let due = ((Instant::now()
            .saturating_duration_since(start)
            .as_secs_f64()
            * rate) as u64)
            .min(total);
        while issued < due {
            let at = Duration::from_secs_f64(issued as f64 / rate);
            issued += 1;
            if tasks.len() >= MAX_IN_FLIGHT {
                record(
                    &log,
                    Sent {
                        at,
                        status: None,
                        latency: Duration::ZERO,
                    },
                );
                continue;
            }
            let (client, uri, log) = (client.clone(), uri.clone(), Arc::clone(&log));
            tasks.spawn(async move {
                let mut req = Request::new(Empty::<Bytes>::new());
                *req.uri_mut() = uri;
                let exchange = async {
                    let response = client.request(req).await.ok()?;
                    let status = response.status().as_u16();
                    response.into_body().collect().await.ok()?;
                    Some(status)
                };
                let status = tokio::time::timeout(CLIENT_TIMEOUT, exchange)
                    .await
                    .ok()
                    .flatten();
                let latency = Instant::now().saturating_duration_since(start + at);
                if let Ok(mut v) = log.lock() {
                    v.push(Sent {
                        at,
                        status,
                        latency,
                    });
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
    while tasks.join_next().await.is_some() {}
    let mut log = log.lock().map(|v| v.clone()).unwrap_or_default();
    // Aborted requests left no record: count them unanswered.
    let mut seen = vec![false; usize::try_from(total).unwrap_or(0)];
    for s in &log {
        let i = (s.at.as_secs_f64() * rate).round() as usize;
        if let Some(x) = seen.get_mut(i) {
            *x = true;
        }
    }
    for (i, x) in seen.iter().enumerate() {
        if !x {
            log.push(Sent {
                at: Duration::from_secs_f64(i as f64 / rate),
                status: None,
                latency: CLIENT_TIMEOUT,
            });
        }
    }
    log.sort_by_key(|s| s.at);
    log
}

/// The slack of the quota check: the admissions after the last save
/// before the kill are not in the state file, so the restarted limiter may
/// admit as many again: `quota × (save interval + SAVE_DELAY) + 2`.
fn slack(quota: u32, save: Duration) -> u64 {
    ((save + SAVE_DELAY).as_secs_f64() * f64::from(quota)).floor() as u64 + 2
}

/// The largest excess of admissions over the limiter's bound, over every
/// window between two admissions `i ≤ j` (seconds, sorted):
/// `(j − i + 1) − (burst + quota × (t_j − t_i) + 1)`. Linear: the excess is
/// `(j − q·t_j) + (q·t_i − i) − burst`, so a running maximum of
/// `q·t_i − i` suffices. Also returns the window `(t_i, t_j)` reaching it.
fn worst_window(times: &[f64], quota: u32, burst: u32) -> (f64, (f64, f64)) {
    let q = f64::from(quota);
    let mut best_i = f64::NEG_INFINITY;
    let mut best_i_at = 0.0;
    let mut worst = f64::NEG_INFINITY;
    let mut window = (0.0, 0.0);
    for (j, &t) in times.iter().enumerate() {
        let i_term = q * t - j as f64;
        if i_term > best_i {
            best_i = i_term;
            best_i_at = t;
        }
        let excess = (j as f64 - q * t) + best_i - f64::from(burst);
        if excess > worst {
            worst = excess;
            window = (best_i_at, t);
        }
    }
    (worst, window)
}

/// One second of the run.
#[derive(Clone, Debug, Default, PartialEq)]
struct Second {
    sent: u64,
    ok: u64,
    limited: u64,
    breaker: u64,
    upstream_failed: u64,
    unanswered: u64,
    /// Admissions the child printed in this second.
    admitted: u64,
    p99: Duration,
}

impl Second {
    fn failed(&self) -> u64 {
        self.sent - self.ok - self.limited
    }

    fn within_slo(&self) -> bool {
        self.sent > 0
            && (self.failed() as f64) <= SLO_MAX_FAILED * self.sent as f64
            && self.p99 <= SLO_P99
    }
}

fn seconds(sent: &[Sent], admitted: &[f64], n: usize) -> Vec<Second> {
    buckets(sent, admitted, n, 1.0)
}

/// The run in `n` buckets of `width` seconds.
fn buckets(sent: &[Sent], admitted: &[f64], n: usize, width: f64) -> Vec<Second> {
    let mut out = vec![Second::default(); n];
    let mut latencies: Vec<Vec<Duration>> = vec![Vec::new(); n];
    for s in sent {
        let i = ((s.at.as_secs_f64() / width) as usize).min(n - 1);
        let b = &mut out[i];
        b.sent += 1;
        match s.status {
            Some(200) => b.ok += 1,
            Some(429) => b.limited += 1,
            Some(503) => b.breaker += 1,
            Some(_) => b.upstream_failed += 1,
            None => b.unanswered += 1,
        }
        latencies[i].push(if s.status.is_some() {
            s.latency
        } else {
            CLIENT_TIMEOUT
        });
    }
    for &t in admitted {
        if t >= 0.0 {
            out[((t / width) as usize).min(n - 1)].admitted += 1;
        }
    }
    for (b, mut l) in out.iter_mut().zip(latencies) {
        l.sort();
        if !l.is_empty() {
            b.p99 = l[((l.len() * 99).div_ceil(100)).saturating_sub(1)];
        }
    }
    out
}

/// What the run measured.
#[derive(Debug)]
struct Outcome {
    /// Admission times, seconds since the load's start, sorted.
    admitted: Vec<f64>,
    sent: Vec<Sent>,
    /// The kill, and the restarted service's `ready`, since the start.
    kill: Duration,
    ready: Duration,
    breaker_before: String,
    breaker_after: String,
}

/// What the report says about the gap.
#[derive(Debug, PartialEq)]
struct Gap {
    /// From the kill to the first answer of a request sent after it.
    first_answer: Option<Duration>,
    /// From the kill to the end of the first second after it within SLO.
    back_within_slo: Option<Duration>,
    /// Requests sent from the kill to the first answer that failed.
    failed: u64,
}

fn gap(o: &Outcome, per_second: &[Second]) -> Gap {
    let first = o
        .sent
        .iter()
        .filter(|s| s.at >= o.kill && s.status.is_some())
        .map(|s| s.at + s.latency)
        .min();
    let until = first.unwrap_or(Duration::MAX);
    let failed = o
        .sent
        .iter()
        .filter(|s| s.at >= o.kill && s.at < until)
        .filter(|s| !matches!(s.status, Some(200 | 429)))
        .count() as u64;
    let kill_second = o.kill.as_secs() as usize;
    let back = per_second
        .iter()
        .enumerate()
        .skip(kill_second + 1)
        .find(|(_, b)| b.within_slo())
        .map(|(i, _)| Duration::from_secs(i as u64 + 1) - o.kill);
    Gap {
        first_answer: first.map(|t| t - o.kill),
        back_within_slo: back,
        failed,
    }
}

/// The checks: `(what, measured, passed)`.
fn checks(args: &RestartArgs, o: &Outcome, gap: &Gap) -> Vec<(String, String, bool)> {
    let slack = slack(args.quota, Duration::from_millis(args.save_ms));
    let (worst, (from, to)) = worst_window(&o.admitted, args.quota, args.burst);
    // Adding 0.0 turns a -0 into a 0 for the report.
    let worst = worst + 0.0;
    let kill = o.kill.as_secs_f64();
    let after = o.admitted.iter().filter(|&&t| t > kill).count();
    vec![
        (
            format!(
                "admitted over every window <= burst + quota*w + 1 + slack ({slack}: {} ms of saves + {} ms)",
                args.save_ms,
                SAVE_DELAY.as_millis()
            ),
            format!("worst excess {worst:.0} over [{from:.3} s, {to:.3} s]"),
            worst <= slack as f64,
        ),
        (
            "breaker open before the kill".to_owned(),
            o.breaker_before.clone(),
            o.breaker_before == "Open",
        ),
        (
            "breaker open right after the restart".to_owned(),
            o.breaker_after.clone(),
            o.breaker_after == "Open",
        ),
        (
            "the restarted service answered and its limiter admitted".to_owned(),
            format!(
                "first answer {}, {after} admitted after the kill",
                gap.first_answer
                    .map_or("never".to_owned(), |d| format!("{} ms", d.as_millis()))
            ),
            gap.first_answer.is_some() && after > 0,
        ),
        (
            "back within the SLO before the load ended".to_owned(),
            gap.back_within_slo.map_or("never".to_owned(), |d| {
                format!("{:.1} s after the kill", d.as_secs_f64())
            }),
            gap.back_within_slo.is_some(),
        ),
    ]
}

/// A free loopback port.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Asks the service for its breaker's state.
async fn breaker_state(client: &HttpClient, port: u16) -> String {
    let Ok(uri) = format!("http://127.0.0.1:{port}/breaker").parse::<Uri>() else {
        return "bad uri".to_owned();
    };
    let mut req = Request::new(Empty::<Bytes>::new());
    *req.uri_mut() = uri;
    let exchange = async {
        let response = client.request(req).await.ok()?;
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some(String::from_utf8_lossy(&body).trim().to_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| "no answer".to_owned())
}

/// Runs the scenario: `Ok(true)` when every check passed.
///
/// # Errors
///
/// When a port cannot be bound, the service does not start, or the plot
/// cannot be written.
pub fn main(args: &RestartArgs) -> Result<bool, Box<dyn Error>> {
    let dir = std::env::temp_dir().join(format!("tenlives-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = http::block_on(run(args, &dir));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run(args: &RestartArgs, dir: &Path) -> Result<bool, Box<dyn Error>> {
    let length = Duration::from_secs(args.seconds);
    let upstream = UpstreamServer::start(
        UpstreamConfig {
            timeline: Arc::new(Timeline::healthy(
                length + Duration::from_secs(30),
                Duration::from_millis(2),
            )),
            capacity: 1_024,
            queue_timeout: Duration::from_secs(1),
            seed: 1,
        },
        tokio::time::Instant::now(),
    )?;
    let port = free_port()?;
    let admitted = Arc::new(Mutex::new(Vec::new()));
    let (first, first_ready) = spawn_child(args, dir, port, upstream.addr(), false, &admitted)?;
    let mut child = Some(first);
    let uri: Uri = format!("http://127.0.0.1:{port}/").parse()?;
    let control = http_client(4);
    let start = Instant::now() + Duration::from_millis(300);
    let wall_start = wall_nanos() + 300_000_000;
    let load = tokio::spawn(drive(
        http_client(MAX_IN_FLIGHT),
        uri,
        f64::from(args.rate),
        start,
        length,
    ));

    // The script: the upstream fails from 25 % to 50 %; the kill at 40 %.
    let at = |per_cent: u32| start + length * per_cent / 100;
    tokio::time::sleep_until(at(25).into()).await;
    upstream.stop();
    tokio::time::sleep_until(at(40).into()).await;
    let breaker_before = breaker_state(&control, port).await;
    let kill = Instant::now().saturating_duration_since(start);
    if let Some(mut c) = child.take() {
        c.kill();
    }
    let spawned = spawn_child(args, dir, port, upstream.addr(), args.no_restore, &admitted);
    let ready = Instant::now().saturating_duration_since(start);
    let (second, second_ready) = match spawned {
        Ok(s) => s,
        Err(e) => {
            load.abort();
            return Err(e);
        }
    };
    child = Some(second);
    let breaker_after = breaker_state(&control, port).await;
    tokio::time::sleep_until(at(50).into()).await;
    upstream.restart()?;
    let sent = load.await?;
    drop(child);
    drop(upstream);

    let mut times: Vec<f64> = admitted
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|ns| (ns as f64 - wall_start as f64) / 1e9)
        .collect();
    times.sort_by(f64::total_cmp);
    let outcome = Outcome {
        admitted: times,
        sent,
        kill,
        ready,
        breaker_before,
        breaker_after,
    };
    let n = usize::try_from(args.seconds).unwrap_or(1).max(1);
    let per_second = seconds(&outcome.sent, &outcome.admitted, n);
    let gap = gap(&outcome, &per_second);
    let checks = checks(args, &outcome, &gap);
    let text = report(
        args,
        &outcome,
        &per_second,
        &gap,
        &checks,
        (&first_ready, &second_ready),
    );
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join("restart.svg");
    let tenths = buckets(&outcome.sent, &outcome.admitted, n * 10, 0.1);
    plot(&path, args, &tenths, outcome.kill)?;
    println!("{text}plot: {}", path.display());
    Ok(checks.iter().all(|c| c.2))
}

fn report(
    args: &RestartArgs,
    o: &Outcome,
    per_second: &[Second],
    gap: &Gap,
    checks: &[(String, String, bool)],
    ready: (&str, &str),
) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "tenlives restart: a service (a child process) killed with SIGKILL mid-load and restarted{}",
        if args.no_restore {
            " WITHOUT its state (--no-restore)"
        } else {
            " from its state file"
        }
    );
    let _ = writeln!(
        text,
        "quota {}/s burst {}, breaker: 5 failures in a row, open {} ms; saved every {} ms; \
         offered {}/s for {} s; upstream refusing from {:.1} s to {:.1} s",
        args.quota,
        args.burst,
        args.open().as_millis(),
        args.save_ms,
        args.rate,
        args.seconds,
        args.seconds as f64 * 0.25,
        args.seconds as f64 * 0.5
    );
    let _ = writeln!(
        text,
        "first start: {}; killed at {:.3} s; restarted: {} (ready {:.0} ms after the kill)",
        ready.0,
        o.kill.as_secs_f64(),
        ready.1,
        (o.ready.saturating_sub(o.kill)).as_secs_f64() * 1e3
    );
    let _ = writeln!(text);
    let _ = writeln!(
        text,
        "{:>6} {:>6} {:>6} {:>6} {:>8} {:>6} {:>6} {:>9} {:>8} {:>4}",
        "second", "sent", "200", "429", "503 brk", "502", "none", "admitted", "p99 ms", "SLO"
    );
    let kill_second = o.kill.as_secs() as usize;
    for (i, b) in per_second.iter().enumerate() {
        let _ = writeln!(
            text,
            "{i:>6} {:>6} {:>6} {:>6} {:>8} {:>6} {:>6} {:>9} {:>8} {:>4}{}",
            b.sent,
            b.ok,
            b.limited,
            b.breaker,
            b.upstream_failed,
            b.unanswered,
            b.admitted,
            b.p99.as_millis(),
            if b.within_slo() { "ok" } else { "-" },
            if i == kill_second { "  <- SIGKILL" } else { "" }
        );
    }
    let _ = writeln!(text);
    let total = o.admitted.len();
    let span =
        o.admitted.last().copied().unwrap_or(0.0) - o.admitted.first().copied().unwrap_or(0.0);
    let _ = writeln!(
        text,
        "admitted {total} over {span:.2} s ({:.1}/s against a quota of {}/s); \
         breaker before the kill: {}, right after the restart: {}",
        total as f64 / span.max(1e-3),
        args.quota,
        o.breaker_before,
        o.breaker_after
    );
    let _ = writeln!(
        text,
        "gap: first answer {} after the kill, back within the SLO (<= {:.0} % failed, p99 <= {} ms) {}; \
         {} requests failed between the kill and the first answer",
        gap.first_answer
            .map_or("never".to_owned(), |d| format!("{} ms", d.as_millis())),
        SLO_MAX_FAILED * 100.0,
        SLO_P99.as_millis(),
        gap.back_within_slo.map_or("never".to_owned(), |d| format!(
            "{:.1} s after it",
            d.as_secs_f64()
        )),
        gap.failed
    );
    let _ = writeln!(text);
    for (what, measured, ok) in checks {
        let _ = writeln!(
            text,
            "[{}] {what}: {measured}",
            if *ok { "PASS" } else { "FAIL" }
        );
    }
    text
}

/// A line of the plot: its label, colour and value in one second.
type Series = (&'static str, RGBColor, fn(&Second) -> u64);

/// Answers by status in 0.1 s buckets (as rates a second), the kill marked.
fn plot(
    path: &Path,
    args: &RestartArgs,
    tenths: &[Second],
    kill: Duration,
) -> Result<(), Box<dyn Error>> {
    let root = SVGBackend::new(path, (1000, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    // Buckets of 0.1 s, drawn as rates a second.
    let x1 = tenths.len() as f64 / 10.0;
    let top = tenths.iter().map(|b| b.sent).max().unwrap_or(1).max(1) as f64 * 11.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "tenlives restart: answers by status (per second, in 0.1 s buckets), the service SIGKILLed and restarted",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x1, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("answers / s")
        .draw()?;
    let k = kill.as_secs_f64();
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [(k, 0.0), (k + 0.02 * x1 / 10.0, top)],
            RGBColor(0xDC, 0x32, 0x2F).filled(),
        )))?
        .label("SIGKILL")
        .legend(|(x, y)| {
            Rectangle::new(
                [(x, y - 5), (x + 20, y + 5)],
                RGBColor(0xDC, 0x32, 0x2F).filled(),
            )
        });
    let series: [Series; 6] = [
        ("200", RGBColor(0x14, 0x5A, 0x28), |b| b.ok),
        ("429 over quota", RGBColor(0x26, 0x8B, 0xD2), |b| b.limited),
        ("503 breaker open", RGBColor(0xB5, 0x89, 0x00), |b| {
            b.breaker
        }),
        ("502 upstream failed", RGBColor(0xD3, 0x36, 0x82), |b| {
            b.upstream_failed
        }),
        ("no answer", RGBColor(0x00, 0x00, 0x00), |b| b.unanswered),
        ("admitted by the limiter", RGBColor(0x96, 0x96, 0x96), |b| {
            b.admitted
        }),
    ];
    for (label, color, f) in series {
        let points: Vec<(f64, f64)> = tenths
            .iter()
            .enumerate()
            .map(|(i, b)| ((i as f64 + 0.5) / 10.0, f(b) as f64 * 10.0))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    let q = f64::from(args.quota);
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, q), (x1, q)],
            6,
            4,
            BLACK.stroke_width(1),
        ))?
        .label("quota")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(1)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RestartArgs {
        RestartArgs {
            seconds: 10,
            rate: 300,
            quota: 100,
            burst: 100,
            save_ms: 50,
            open_ms: None,
            no_restore: false,
            out: PathBuf::from("target/restart"),
        }
    }

    /// Admissions at `quota` a second from a full burst at 0 s over 10 s,
    /// a kill at 4 s; after a restart 0.2 s later, `extra` admitted at once.
    fn admissions(extra: u32) -> Vec<f64> {
        let mut t: Vec<f64> = (0..100).map(|_| 0.0).collect();
        t.extend((1..400).map(|i| f64::from(i) / 100.0));
        t.extend((0..extra).map(|_| 4.2));
        t.extend((21..600).map(|i| 4.0 + f64::from(i) / 100.0));
        t
    }

    fn outcome(admitted: Vec<f64>, before: &str, after: &str) -> Outcome {
        let mut sent = Vec::new();
        for i in 0..3000u32 {
            let at = Duration::from_secs_f64(f64::from(i) / 300.0);
            let down = at >= Duration::from_millis(4000) && at < Duration::from_millis(4200);
            let status = if down {
                None
            } else if i % 3 == 0 {
                Some(200)
            } else {
                Some(429)
            };
            sent.push(Sent {
                at,
                status,
                latency: Duration::from_millis(3),
            });
        }
        Outcome {
            admitted,
            sent,
            kill: Duration::from_millis(4000),
            ready: Duration::from_millis(4150),
            breaker_before: before.to_owned(),
            breaker_after: after.to_owned(),
        }
    }

    #[test]
    fn the_slack_is_the_save_interval_and_the_delay_at_the_quota() {
        // 100/s × (50 + 250) ms + 2.
        assert_eq!(slack(100, Duration::from_millis(50)), 32);
    }

    #[test]
    fn the_worst_window_finds_a_burst_over_the_bound() {
        // Exactly at the quota from a full burst: within the bound.
        let (w, _) = worst_window(&admissions(0), 100, 100);
        assert!(w <= 0.0, "{w}");
        // A fresh burst of 80 after the restart: 58 over the bound from
        // the first admission (the 0.2 s gap refilled 20 tokens; the edges
        // 2).
        let (w, (from, to)) = worst_window(&admissions(80), 100, 100);
        assert!((w - 58.0).abs() < 0.5, "{w}");
        assert!(from < 4.2 && to >= 4.2, "{from} {to}");
    }

    #[test]
    fn checks_pass_a_restored_restart_and_fail_a_fresh_one() {
        let a = args();
        let good = outcome(admissions(10), "Open", "Open");
        let per_second = seconds(&good.sent, &good.admitted, 10);
        assert_eq!(per_second[4].unanswered, 60);
        let g = gap(&good, &per_second);
        assert_eq!(g.failed, 60);
        assert!(
            g.first_answer
                .is_some_and(|d| d >= Duration::from_millis(200))
        );
        assert_eq!(g.back_within_slo, Some(Duration::from_secs(2)));
        let c = checks(&a, &good, &g);
        assert!(c.iter().all(|c| c.2), "{c:?}");

        // Started fresh: a new burst and the breaker closed.
        let fresh = outcome(admissions(80), "Open", "Closed");
        let c = checks(&a, &fresh, &gap(&fresh, &per_second));
        assert!(!c[0].2 && c[1].2 && !c[2].2 && c[3].2 && c[4].2, "{c:?}");

        // Never answered again: the gap has no end and the checks fail.
        let mut dead = outcome(admissions(0), "Open", "no answer");
        dead.sent
            .iter_mut()
            .filter(|s| s.at >= dead.kill)
            .for_each(|s| s.status = None);
        dead.admitted.retain(|&t| t < 4.0);
        let per_second = seconds(&dead.sent, &dead.admitted, 10);
        let g = gap(&dead, &per_second);
        assert_eq!((g.first_answer, g.back_within_slo), (None, None));
        let c = checks(&a, &dead, &g);
        assert!(!c[2].2 && !c[3].2 && !c[4].2, "{c:?}");
    }
}
