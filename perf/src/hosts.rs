//! `tenlives-perf hosts`: calls across three upstreams, a plain client beside
//! one with hedging, outlier ejection and a fallback.
//!
//! Three upstream HTTP services on loopback answer `GET /item/{id}` after a
//! service time:
//!
//! - **healthy**: always;
//! - **slow**: every `--slow-every`-th call takes `--slow-ms` instead (a
//!   latency tail);
//! - **failing**: answers `503` to `--failing-percent` of its calls (chosen
//!   by a fixed hash of the call's number, so every run fails the same
//!   calls), as fast as the others answer.
//!
//! A client balances over them with tower's power-of-two-choices balancer
//! (least pending requests), behind a `tower::buffer::Buffer` the workers
//! share. Two runs, the same bounded closed loop each (`--concurrency`
//! workers share `--requests` requests, and stop early at `--seconds`), each
//! with a fresh connection pool:
//!
//! - **plain**: `StackLayer` with the timeout only, over the balancer;
//! - **protected**: `FallbackLayer` (a fallback value for every failure,
//!   rejection and timeout) around the same `StackLayer` around a
//!   `HedgeLayer` (the `--hedge-quantile` of recent latencies, 0.9 by
//!   default, clamped to `[--hedge-min-ms, 100 ms]` and `--hedge-min-ms`
//!   until known; paid from a retry budget of 20 % plus 20 a second) around the balancer, whose endpoints go through `EjectDiscover`
//!   (an `OutlierDetector`: 5 consecutive failures, or a failure rate three
//!   times the others' over a second, eject an endpoint; at most one of the
//!   three out at once).
//!
//! The report gives, per run, p50/p99/max of every request (whatever its
//! outcome), the upstream success rate (answers from an upstream; fallback
//! answers not counted), the answered rate (with the fallback's), the calls
//! each upstream served and the upstream calls per request; then what the
//! hedges, the detector and the fallback did. The run fails (exit 1) unless
//! the protected client beats the plain one on the upstream success rate and
//! on p99, and no protected request ended in an error.

use std::error::Error;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tenlives_engine::breaker::BreakerConfig;
use tenlives_engine::latency::LatencyTracker;
use tenlives_engine::retry::{RetryBudget, RetryBudgetConfig};
use tenlives_tokio::fallback::{FallbackLayer, FallbackValue, On};
use tenlives_tokio::hedge::{HedgeDelay, HedgeLayer, HedgePolicy};
use tenlives_tokio::{
    EjectDiscover, EjectionConfig, OutlierDetector, RateRule, StackLayer, TenlivesError,
};
use tokio::time::Instant;
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PendingRequests};
use tower::{Service, ServiceExt};
use tower_layer::Layer;

use crate::http::server::{Body, Handler, Server, respond};

/// Options of the hosts scenario.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct HostsArgs {
    /// Requests per run (plain, then protected).
    #[arg(long, default_value_t = 4_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub requests: u64,
    /// The longest a run may take, in seconds (it stops early).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: u64,
    /// Concurrent workers.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: u64,
    /// Every upstream's service time per call, in milliseconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub service_ms: u64,
    /// The slow upstream takes `--slow-ms` on every this-many-th call.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub slow_every: u64,
    /// The slow upstream's slow calls, in milliseconds.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub slow_ms: u64,
    /// The share of the failing upstream's calls answered `503`, in percent.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=100))]
    pub failing_percent: u64,
    /// Both clients' timeout per request, in milliseconds.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub timeout_ms: u64,
    /// The hedge delay: this quantile of recent latencies (`0.0..1.0`).
    #[arg(long, default_value_t = 0.9)]
    pub hedge_quantile: f64,
    /// The shortest hedge delay, in milliseconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub hedge_min_ms: u64,
}

/// The three upstreams, in the report's order.
const NAMES: [&str; 3] = ["healthy", "slow", "failing"];

/// How an upstream answers its `n`-th call (from 0).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    Healthy {
        service: Duration,
    },
    Slow {
        service: Duration,
        every: u64,
        slow: Duration,
    },
    Failing {
        service: Duration,
        percent: u64,
    },
}

impl Behaviour {
    /// How long call `n` takes and its status.
    fn answer(self, n: u64) -> (Duration, StatusCode) {
        match self {
            Behaviour::Healthy { service } => (service, StatusCode::OK),
            Behaviour::Slow {
                service,
                every,
                slow,
            } => {
                // The first call is fast, then every `every`-th is slow.
                let late = every > 0 && n % every == every - 1;
                (if late { slow } else { service }, StatusCode::OK)
            }
            Behaviour::Failing { service, percent } => {
                let fails = mix(n) % 100 < percent;
                let status = if fails {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                };
                (service, status)
            }
        }
    }
}

/// SplitMix64's finaliser: spreads consecutive call numbers over `u64`, so
/// a partial failure share is spread over the calls rather than bunched.
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An upstream server's handler: answers as its behaviour says, and counts
/// its calls.
#[derive(Clone)]
struct Upstream {
    behaviour: Behaviour,
    calls: Arc<AtomicU64>,
}

impl Handler for Upstream {
    type Error = std::convert::Infallible;

    fn handle(
        &self,
        _req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<Body>, Self::Error>> + Send + 'static + use<> {
        // ordering: Relaxed; a counter, read after the run has ended.
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let (took, status) = self.behaviour.answer(n);
        async move {
            if !took.is_zero() {
                tokio::time::sleep(took).await;
            }
            let body = if status.is_success() {
                "item\n"
            } else {
                "unavailable\n"
            };
            Ok(respond(status.as_u16(), &[], body))
        }
    }
}

/// What a request was answered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    /// An upstream's answer.
    Upstream,
    /// The fallback's value.
    Fallback,
}

/// A failed call to one upstream.
#[derive(Debug)]
enum CallError {
    /// It answered with a status other than 2xx.
    Status(StatusCode),
    /// The exchange failed.
    Transport(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Status(status) => write!(f, "upstream answered {status}"),
            CallError::Transport(e) => write!(f, "upstream call failed: {e}"),
        }
    }
}

impl Error for CallError {}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// The client of one upstream: `GET /item/{id}`.
#[derive(Clone)]
struct Endpoint {
    client: HttpClient,
    addr: SocketAddr,
}

impl Service<u64> for Endpoint {
    type Response = Reply;
    type Error = CallError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Reply, CallError>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, id: u64) -> Self::Future {
        let client = self.client.clone();
        let uri = format!("http://{}/item/{id}", self.addr);
        Box::pin(async move {
            let uri: http::Uri = uri
                .parse()
                .map_err(|e: http::uri::InvalidUri| CallError::Transport(e.to_string()))?;
            let resp = client
                .get(uri)
                .await
                .map_err(|e| CallError::Transport(e.to_string()))?;
            let status = resp.status();
            resp.into_body()
                .collect()
                .await
                .map_err(|e| CallError::Transport(e.to_string()))?;
            if status.is_success() {
                Ok(Reply::Upstream)
            } else {
                Err(CallError::Status(status))
            }
        })
    }
}

/// The three endpoints, each counting its pending requests for the
/// balancer, on a fresh connection pool.
fn endpoints(addrs: &[SocketAddr; 3], pool: usize) -> ServiceList<Vec<PendingRequests<Endpoint>>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(pool)
        .build(connector);
    ServiceList::new(
        addrs
            .iter()
            .map(|&addr| {
                PendingRequests::new(
                    Endpoint {
                        client: client.clone(),
                        addr,
                    },
                    CompleteOnResponse::default(),
                )
            })
            .collect::<Vec<_>>(),
    )
}

/// One run's figures.
#[derive(Debug)]
struct Figures {
    /// Latency of every request, answered or not, in microseconds.
    latency: Histogram<u64>,
    /// Requests sent.
    requests: u64,
    /// Answered by an upstream.
    upstream: u64,
    /// Answered by the fallback.
    fallback: u64,
    /// Ended in an error.
    failed: u64,
    /// Calls each upstream served (hedges and ejection probes included), in
    /// [`NAMES`] order.
    calls: [u64; 3],
    elapsed: Duration,
}

/// `part` of `whole` in percent; 0 of nothing is 0 %.
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

impl Figures {
    fn new() -> Figures {
        Figures {
            latency: new_histogram(),
            requests: 0,
            upstream: 0,
            fallback: 0,
            failed: 0,
            calls: [0; 3],
            elapsed: Duration::ZERO,
        }
    }

    /// Answers from an upstream, in percent of the requests.
    fn success_rate(&self) -> f64 {
        percent(self.upstream, self.requests)
    }

    /// Answers from an upstream or the fallback, in percent of the requests.
    fn answered_rate(&self) -> f64 {
        percent(self.upstream + self.fallback, self.requests)
    }

    /// The latency at quantile `q`, in microseconds (0 with no request).
    fn quantile_us(&self, q: f64) -> u64 {
        if self.latency.is_empty() {
            0
        } else {
            self.latency.value_at_quantile(q)
        }
    }

    /// Upstream calls per request (1.0: one call each; hedges and probes
    /// add, calls refused before the wire take away).
    fn calls_per_request(&self) -> f64 {
        percent(self.calls.iter().sum(), self.requests) / 100.0
    }

    /// `upstream`'s share of all upstream calls, in percent.
    fn call_share(&self, upstream: usize) -> f64 {
        percent(self.calls[upstream], self.calls.iter().sum())
    }

    fn add(&mut self, other: &Figures) {
        self.latency
            .add(&other.latency)
            .expect("histograms of the same bounds");
        self.requests += other.requests;
        self.upstream += other.upstream;
        self.fallback += other.fallback;
        self.failed += other.failed;
    }
}

/// Whether the protected client beat the plain one, and why not.
#[derive(Debug, PartialEq)]
struct Verdict {
    /// Each failed check, in words.
    failures: Vec<String>,
}

impl Verdict {
    fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// The protected run must beat the plain one on the upstream success rate
/// (fallback answers not counted) and on p99, and answer every request.
fn verdict(plain: &Figures, protected: &Figures) -> Verdict {
    let mut failures = Vec::new();
    if protected.requests == 0 || plain.requests == 0 {
        failures.push("a run sent no request".to_owned());
    }
    if protected.success_rate() <= plain.success_rate() {
        failures.push(format!(
            "upstream success rate {:.1} % protected, not above {:.1} % plain",
            protected.success_rate(),
            plain.success_rate()
        ));
    }
    let (p99_plain, p99_protected) = (plain.quantile_us(0.99), protected.quantile_us(0.99));
    if p99_protected >= p99_plain {
        failures.push(format!(
            "p99 {:.1} ms protected, not below {:.1} ms plain",
            ms(p99_protected),
            ms(p99_plain)
        ));
    }
    if protected.failed > 0 {
        failures.push(format!(
            "{} protected requests failed despite the fallback",
            protected.failed
        ));
    }
    Verdict { failures }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// The side-by-side table.
fn table(plain: &Figures, protected: &Figures) -> String {
    let mut out = String::new();
    let mut row = |label: &str, a: String, b: String| {
        let _ = writeln!(out, "  {label:<28} {a:>18} {b:>18}");
    };
    row("", "plain".into(), "protected".into());
    row(
        "requests",
        plain.requests.to_string(),
        protected.requests.to_string(),
    );
    let rate = |n: u64, f: &Figures| format!("{n} ({:.1} %)", percent(n, f.requests));
    row(
        "answered by an upstream",
        rate(plain.upstream, plain),
        rate(protected.upstream, protected),
    );
    row(
        "answered by the fallback",
        rate(plain.fallback, plain),
        rate(protected.fallback, protected),
    );
    row(
        "failed",
        rate(plain.failed, plain),
        rate(protected.failed, protected),
    );
    row(
        "upstream success rate",
        format!("{:.1} %", plain.success_rate()),
        format!("{:.1} %", protected.success_rate()),
    );
    row(
        "answered (with fallback)",
        format!("{:.1} %", plain.answered_rate()),
        format!("{:.1} %", protected.answered_rate()),
    );
    for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
        row(
            label,
            format!("{:.1} ms", ms(plain.quantile_us(q))),
            format!("{:.1} ms", ms(protected.quantile_us(q))),
        );
    }
    row(
        "max",
        format!("{:.1} ms", ms(plain.latency.max())),
        format!("{:.1} ms", ms(protected.latency.max())),
    );
    for (i, name) in NAMES.iter().enumerate() {
        let calls = |f: &Figures| format!("{} ({:.1} %)", f.calls[i], f.call_share(i));
        row(&format!("calls to {name}"), calls(plain), calls(protected));
    }
    row(
        "upstream calls per request",
        format!("{:.3}", plain.calls_per_request()),
        format!("{:.3}", protected.calls_per_request()),
    );
    row(
        "run time",
        format!("{:.2} s", plain.elapsed.as_secs_f64()),
        format!("{:.2} s", protected.elapsed.as_secs_f64()),
    );
    out
}

/// Drives the requests `0..requests` through `svc` with `concurrency`
/// workers until they run out or `deadline` passes.
async fn drive<S>(svc: S, requests: u64, concurrency: u64, deadline: Instant) -> Figures
where
    S: Service<u64, Response = Reply> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let mut svc = svc.clone();
        let next = Arc::clone(&next);
        workers.spawn(async move {
            let mut mine = Figures::new();
            loop {
                // ordering: Relaxed; hands out request numbers, nothing
                // else is published through it.
                let id = next.fetch_add(1, Ordering::Relaxed);
                if id >= requests || Instant::now() >= deadline {
                    break;
                }
                let sent = Instant::now();
                let result = match svc.ready().await {
                    Ok(ready) => ready.call(id).await,
                    Err(e) => Err(e),
                };
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                mine.latency.saturating_record(micros.max(1));
                mine.requests += 1;
                match result {
                    Ok(Reply::Upstream) => mine.upstream += 1,
                    Ok(Reply::Fallback) => mine.fallback += 1,
                    Err(_) => mine.failed += 1,
                }
            }
            mine
        });
    }
    let mut total = Figures::new();
    while let Some(joined) = workers.join_next().await {
        total.add(&joined.expect("a worker does not panic"));
    }
    total.elapsed = start.elapsed();
    total
}

/// Reads the upstreams' call counters and sets them back to zero.
fn take_calls(counters: &[Arc<AtomicU64>; 3]) -> [u64; 3] {
    // ordering: Relaxed; every call of the run has been answered or
    // abandoned; a late cancelled call may still land (and is then counted
    // in the next run, or nowhere after the last).
    std::array::from_fn(|i| counters[i].swap(0, Ordering::Relaxed))
}

/// Both runs' figures, and what the protected client's layers did.
struct Outcome {
    plain: Figures,
    protected: Figures,
    hedges: tenlives_tokio::hedge::HedgeStats,
    hedge_delay: Duration,
    ejections: tenlives_tokio::EjectionStats,
    fallbacks: u64,
}

/// Runs the scenario: `Ok(true)` when the protected client beat the plain one.
pub async fn hosts(args: &HostsArgs) -> Result<bool, Box<dyn Error>> {
    let Outcome {
        plain: plain_figures,
        protected: protected_figures,
        hedges,
        hedge_delay,
        ejections,
        fallbacks,
    } = run(args).await?;
    println!();
    print!("{}", table(&plain_figures, &protected_figures));
    println!();
    println!(
        "  protected: {} hedges sent ({} won, {} refused by the budget; delay now {:.1} ms); {} ejections ({} by consecutive failures, {} by failure rate, {} refused by the cap), {} re-admissions; {} fallbacks",
        hedges.hedges,
        hedges.wins,
        hedges.refused,
        hedge_delay.as_secs_f64() * 1000.0,
        ejections.ejections_by_breaker + ejections.ejections_by_rate,
        ejections.ejections_by_breaker,
        ejections.ejections_by_rate,
        ejections.refused_by_cap,
        ejections.readmissions,
        fallbacks,
    );
    for (name, f) in [("plain", &plain_figures), ("protected", &protected_figures)] {
        if f.requests < args.requests {
            println!(
                "  note: the {name} run stopped at the {} s limit after {} of {} requests",
                args.seconds, f.requests, args.requests
            );
        }
    }
    let verdict = verdict(&plain_figures, &protected_figures);
    if verdict.passed() {
        println!(
            "  PASS: protected beats plain on upstream success rate ({:.1} % vs {:.1} %) and p99 ({:.1} ms vs {:.1} ms)",
            protected_figures.success_rate(),
            plain_figures.success_rate(),
            ms(protected_figures.quantile_us(0.99)),
            ms(plain_figures.quantile_us(0.99)),
        );
    } else {
        for failure in &verdict.failures {
            println!("  FAIL: {failure}");
        }
    }
    Ok(verdict.passed())
}

/// Starts the upstreams, runs the plain client then the protected one,
/// stops the upstreams.
async fn run(args: &HostsArgs) -> Result<Outcome, Box<dyn Error>> {
    let service = Duration::from_millis(args.service_ms);
    let behaviours = [
        Behaviour::Healthy { service },
        Behaviour::Slow {
            service,
            every: args.slow_every,
            slow: Duration::from_millis(args.slow_ms),
        },
        Behaviour::Failing {
            service,
            percent: args.failing_percent,
        },
    ];
    let counters: [Arc<AtomicU64>; 3] = std::array::from_fn(|_| Arc::new(AtomicU64::new(0)));
    let mut servers = Vec::with_capacity(3);
    for (behaviour, calls) in behaviours.iter().zip(&counters) {
        servers.push(Server::start(
            "127.0.0.1:0".parse()?,
            Upstream {
                behaviour: *behaviour,
                calls: Arc::clone(calls),
            },
        )?);
    }
    let addrs: [SocketAddr; 3] = std::array::from_fn(|i| servers[i].addr());
    println!(
        "hosts scenario: three upstreams on loopback, {} ms per call: healthy; slow (every {}th call {} ms); failing (503 on {} % of calls)",
        args.service_ms, args.slow_every, args.slow_ms, args.failing_percent
    );
    println!(
        "  {} requests per run, {} workers, p2c balance (least pending), timeout {} ms",
        args.requests, args.concurrency, args.timeout_ms
    );
    let pool = args.concurrency as usize * 2;
    let bound = pool.max(1);
    let limit = Duration::from_secs(args.seconds);
    let timeout = Duration::from_millis(args.timeout_ms);

    // Plain: the timeout, over the balancer.
    let plain = StackLayer::builder()
        .timeout(timeout)
        .build()
        .layer(Buffer::new(Balance::new(endpoints(&addrs, pool)), bound));
    let mut plain_figures = drive(
        plain,
        args.requests,
        args.concurrency,
        Instant::now() + limit,
    )
    .await;
    plain_figures.calls = take_calls(&counters);

    // Protected: fallback, timeout, hedging, and the balancer over endpoints
    // the outlier detector can eject.
    let detector = OutlierDetector::new(
        EjectionConfig::new(
            BreakerConfig::builder()
                .without_failure_rate()
                .consecutive_failures(5)
                .open_duration(Duration::from_secs(1))
                .open_backoff(2.0, Duration::from_secs(10))
                .half_open_probes(1)
                .build()?,
            50,
            16,
        )?
        .with_rate_rule(RateRule {
            interval: Duration::from_secs(1),
            factor: 3.0,
            floor: 0.3,
            minimum_calls: 20,
            ejection: Duration::from_secs(2),
        })?,
    );
    let balance = Balance::new(EjectDiscover::new(
        endpoints(&addrs, pool),
        detector.clone(),
    ));
    let budget = Arc::new(RetryBudget::new(
        RetryBudgetConfig::builder()
            .ratio(0.2)
            .min_per_second(20)
            .build()?,
    ));
    let hedge = HedgeLayer::new(HedgePolicy::new(
        HedgeDelay::quantile(
            LatencyTracker::new(args.hedge_quantile, 100, 50)?,
            Duration::from_millis(args.hedge_min_ms),
            Duration::from_millis(args.hedge_min_ms),
            Duration::from_millis(100).max(Duration::from_millis(args.hedge_min_ms)),
        ),
        Arc::clone(&budget),
        |_: &u64| true,
    ));
    let fallback = FallbackLayer::new(
        On::rejections().and_timeouts().and_failures(|_| true),
        FallbackValue::new(|_: TenlivesError<tower::BoxError>| Ok(Reply::Fallback)),
    );
    let protected = fallback.layer(
        StackLayer::builder()
            .timeout(timeout)
            .build()
            .layer(hedge.layer(Buffer::new(balance, bound))),
    );
    let mut protected_figures = drive(
        protected,
        args.requests,
        args.concurrency,
        Instant::now() + limit,
    )
    .await;
    protected_figures.calls = take_calls(&counters);
    for server in &servers {
        server.stop();
    }
    Ok(Outcome {
        plain: plain_figures,
        protected: protected_figures,
        hedges: hedge.stats(),
        hedge_delay: hedge.delay().current(),
        ejections: detector.stats(),
        fallbacks: fallback.taken(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(latencies_ms: &[u64], upstream: u64, fallback: u64, failed: u64) -> Figures {
        let mut f = Figures::new();
        for &l in latencies_ms {
            f.latency.record(l * 1000).unwrap();
        }
        f.requests = upstream + fallback + failed;
        f.upstream = upstream;
        f.fallback = fallback;
        f.failed = failed;
        f
    }

    #[test]
    fn rates_and_quantiles() {
        // 100 requests: 98 at 2 ms, 2 at 200 ms.
        let mut lat = vec![2; 98];
        lat.extend([200, 200]);
        let mut f = figures(&lat, 60, 30, 10);
        assert_eq!(f.requests, 100);
        assert_eq!(f.success_rate(), 60.0);
        assert_eq!(f.answered_rate(), 90.0);
        assert_eq!(f.quantile_us(0.5), 2000);
        // The 99th of 100 is the first 200 ms one (within the histogram's
        // 3 significant digits).
        assert!((199_000..=201_000).contains(&f.quantile_us(0.99)));
        f.calls = [50, 30, 40];
        assert!((f.calls_per_request() - 1.2).abs() < 1e-9);
        assert!((f.call_share(2) - 100.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn an_empty_run_has_zero_rates_not_nan() {
        let f = Figures::new();
        assert_eq!(f.success_rate(), 0.0);
        assert_eq!(f.answered_rate(), 0.0);
        assert_eq!(f.quantile_us(0.99), 0);
        assert_eq!(f.calls_per_request(), 0.0);
        assert_eq!(f.call_share(0), 0.0);
    }

    #[test]
    fn adding_runs_adds_counts_and_latencies() {
        let mut a = figures(&[1, 1], 2, 0, 0);
        a.add(&figures(&[300], 0, 0, 1));
        assert_eq!((a.requests, a.upstream, a.failed), (3, 2, 1));
        assert_eq!(a.latency.len(), 3);
        assert!(a.latency.max() >= 300_000);
    }

    #[test]
    fn the_verdict_needs_both_a_better_success_rate_and_p99() {
        let plain = figures(&[2, 2, 2, 200], 2, 0, 2);
        let better = figures(&[2, 2, 2, 10], 3, 1, 0);
        assert!(verdict(&plain, &better).passed());

        // Same success rate: not a win.
        let same_rate = figures(&[2, 2, 2, 10], 2, 2, 0);
        let v = verdict(&plain, &same_rate);
        assert_eq!(v.failures.len(), 1, "{v:?}");
        assert!(v.failures[0].contains("success rate"));

        // The fallback's answers do not count as upstream successes.
        let by_fallback = figures(&[2, 2, 2, 10], 1, 3, 0);
        assert!(!verdict(&plain, &by_fallback).passed());

        // A worse p99.
        let slower = figures(&[2, 2, 2, 400], 4, 0, 0);
        let v = verdict(&plain, &slower);
        assert_eq!(v.failures.len(), 1, "{v:?}");
        assert!(v.failures[0].contains("p99"));

        // A request that failed through the protected stack.
        let leaky = figures(&[2, 2, 2, 10], 3, 0, 1);
        let v = verdict(&plain, &leaky);
        assert_eq!(v.failures.len(), 1, "{v:?}");
        assert!(v.failures[0].contains("failed"));

        // Nothing measured: never a pass.
        assert!(!verdict(&Figures::new(), &Figures::new()).passed());
    }

    #[test]
    fn the_table_shows_both_runs() {
        let mut plain = figures(&[2, 2, 2, 200], 2, 0, 2);
        plain.calls = [1, 1, 2];
        let mut protected = figures(&[2, 2, 2, 10], 3, 1, 0);
        protected.calls = [2, 3, 0];
        let t = table(&plain, &protected);
        for needle in [
            "plain",
            "protected",
            "upstream success rate",
            "50.0 %",
            "75.0 %",
            "100.0 %",
            "calls to failing",
            "2 (50.0 %)",
            "0 (0.0 %)",
            "1.000",
            "1.250",
        ] {
            assert!(t.contains(needle), "{needle:?} missing from\n{t}");
        }
    }

    /// The whole scenario, small: every request is accounted for, the
    /// protected client ejects the failing upstream (the plain one feeds it
    /// a large share of the calls), and no protected request fails. The
    /// latencies are not checked here: they depend on the machine (the
    /// command's verdict checks them).
    #[test]
    fn a_small_run_ejects_the_failing_upstream_and_accounts_for_every_request() {
        let args = HostsArgs {
            requests: 400,
            seconds: 20,
            concurrency: 8,
            service_ms: 5,
            slow_every: 10,
            slow_ms: 100,
            failing_percent: 100,
            timeout_ms: 1_000,
            hedge_quantile: 0.9,
            hedge_min_ms: 5,
        };
        let outcome = crate::http::block_on(run(&args)).unwrap();
        let (plain, protected) = (&outcome.plain, &outcome.protected);
        for f in [plain, protected] {
            assert_eq!(f.requests, 400);
            assert_eq!(f.upstream + f.fallback + f.failed, f.requests);
        }
        // Plain: one call per request, and every call to the failing
        // upstream is a failed request.
        assert_eq!(plain.calls.iter().sum::<u64>(), 400);
        assert_eq!(plain.failed, plain.calls[2]);
        assert_eq!(plain.fallback, 0);
        assert!(plain.calls[2] >= 40, "{:?}", plain.calls);
        // Protected: ejected after 5 failures in a row (plus the calls in
        // flight then, at most one per worker, and a probe a second).
        assert!(outcome.ejections.ejections_by_breaker >= 1);
        assert!(protected.calls[2] <= 5 + 8 + 20, "{:?}", protected.calls);
        assert_eq!(protected.failed, 0);
        assert_eq!(protected.fallback, outcome.fallbacks);
        assert!(protected.success_rate() > plain.success_rate());
        // Every upstream call is a request's first attempt or a hedge
        // (a call refused by an ejected endpoint never reaches the wire).
        assert!(protected.calls.iter().sum::<u64>() <= 400 + outcome.hedges.hedges);
        assert_eq!(outcome.hedges.requests, 400);
    }

    #[test]
    fn the_slow_upstream_is_slow_on_every_nth_call() {
        let b = Behaviour::Slow {
            service: Duration::from_millis(2),
            every: 5,
            slow: Duration::from_millis(200),
        };
        let slow: Vec<u64> = (0..20)
            .filter(|&n| b.answer(n).0 == Duration::from_millis(200))
            .collect();
        assert_eq!(slow, [4, 9, 14, 19]);
        assert!((0..20).all(|n| b.answer(n).1 == StatusCode::OK));
    }

    #[test]
    fn the_failing_upstream_fails_its_share_spread_out() {
        let answer = |percent, n| {
            Behaviour::Failing {
                service: Duration::ZERO,
                percent,
            }
            .answer(n)
            .1
        };
        assert!((0..1000).all(|n| answer(100, n) == StatusCode::SERVICE_UNAVAILABLE));
        assert!((0..1000).all(|n| answer(0, n) == StatusCode::OK));
        let fails: Vec<bool> = (0..10_000)
            .map(|n| answer(30, n) != StatusCode::OK)
            .collect();
        let share = fails.iter().filter(|&&f| f).count();
        assert!((2_700..3_300).contains(&share), "{share}");
        // Spread, not bunched: no run of 20 failures in a row.
        assert!(fails.windows(20).all(|w| !w.iter().all(|&f| f)));
    }
}
