//! A service configured entirely from a YAML file, reloaded while traffic
//! runs against it; stops by itself.
//!
//! ```sh
//! cargo run -p tenlives-ops --features yaml,reload,admin --example service -- --seconds 3
//! ```
//!
//! Or serve only, and drive it with the demo's load generator (what CI
//! does: 300 requests a second, open loop, while the file is reloaded):
//!
//! ```sh
//! cargo run -p tenlives-ops --features yaml,reload,admin --example service -- \
//!     --seconds 10 --serve-only --port-file /tmp/ops-port &
//! cargo run --release -p tenlives-perf -- drive --seconds 10 --rate 300 \
//!     --url "http://127.0.0.1:$(cat /tmp/ops-port)/api"
//! ```
//!
//! The service, on loopback: `GET /api` spends a token of the rate limiter
//! `api` (429 when there is none), then calls a simulated upstream through a
//! tower layer admitting through the breaker `upstream` and the bulkhead
//! `db` (503 when either refuses). The upstream fails every call from 20 %
//! to 45 % of the run. The admin plane is mounted at `/admin`. Every policy
//! comes from `examples/service.yaml` through a [`Registry`]; a
//! [`Reloader`] watches a copy of it.
//!
//! While bursts of requests run, the example:
//!
//! - at 50 %, writes a copy with an invalid value (`limit: 0`): refused,
//!   the configuration in force stays, a warning says why;
//! - at 60 %, writes a copy that cuts the rate limit to 100/s with a burst
//!   of 10: applied live, the limiter keeps its state;
//! - at 75 %, sets the bulkhead's limit to 4 through the admin API with an
//!   admin token (and tries with a read-only one: 403).
//!
//! At the end it prints responses by status per phase, the reload counts
//! and the metrics of the registry's policies, and checks what must hold on
//! any machine: every request answered, the breaker opened during the fault,
//! the bad file refused, the good one applied, the admin change made. A
//! failed check exits with an error.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use clap::Parser;
use tenlives_engine::events::EventRing;
use tenlives_engine::time::Clock;
use tenlives_ops::admin::{self, AdminConfig, Role};
use tenlives_ops::reload::Reloader;
use tenlives_ops::{Breaker, Concurrency, Limiter, Registry};
use tenlives_tokio::telemetry::{self, DrainConfig, Exporter};
use tenlives_tokio::{AdmissionLayer, RejectionReason, TenlivesError, TokioClock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};

/// Command-line options.
#[derive(Parser, Debug)]
#[command(about = "A service configured from YAML, reloaded under traffic")]
struct Args {
    /// Seconds of traffic before stopping.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Requests per burst (one burst every 20 ms).
    #[arg(long, default_value_t = 10)]
    burst: u32,
    /// Send no requests of its own: serve while another program, such as
    /// `tenlives-perf drive`, sends the load, making the same changes on the
    /// same schedule, which starts at the first request and lasts
    /// `--seconds` (then 2 s more of serving for the sender's last
    /// requests).
    #[arg(long)]
    serve_only: bool,
    /// Port to listen on, on 127.0.0.1 (0: a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Write the port listened on to this file once listening.
    #[arg(long)]
    port_file: Option<std::path::PathBuf>,
}

/// Answers by phase and status, counted where the service answers.
type Counts = Arc<Mutex<BTreeMap<(&'static str, u16), u32>>>;

const ADMIN_TOKEN: &str = "example-admin-token-5d1f0e2a9c7b4e3f8a6d";
const VIEWER_TOKEN: &str = "example-viewer-token-0b9e8d7c6a5f4e3d2c1b";
const YAML: &str = include_str!("service.yaml");

/// The simulated upstream behind the breaker `upstream` and the bulkhead `db`.
type Upstream = tenlives_tokio::AdmissionService<
    tower::util::ServiceFn<fn(()) -> std::future::Ready<Result<(), &'static str>>>,
    (Arc<Breaker>, Arc<Concurrency>),
>;

#[derive(Clone)]
struct App {
    limiter: Arc<Limiter>,
    clock: TokioClock,
    /// When the schedule started: at once, or with `--serve-only` at the
    /// first request.
    start: Arc<OnceLock<Instant>>,
    fault: (f64, f64),
    length: Duration,
    upstream: Upstream,
    served: Counts,
}

fn upstream_call(_: ()) -> std::future::Ready<Result<(), &'static str>> {
    std::future::ready(if FAILING.load(std::sync::atomic::Ordering::Relaxed) {
        Err("upstream failed")
    } else {
        Ok(())
    })
}

// ordering: Relaxed, a flag the example flips; no data depends on it.
static FAILING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

async fn api(
    State(app): State<App>,
) -> (StatusCode, [(&'static str, &'static str); 1], &'static str) {
    let start = *app.start.get_or_init(Instant::now);
    let frac = start.elapsed().as_secs_f64() / app.length.as_secs_f64();
    FAILING.store(
        frac >= app.fault.0 && frac < app.fault.1,
        std::sync::atomic::Ordering::Relaxed,
    );
    let answer = if app.limiter.check(app.clock.now()).is_err() {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [("x-tenlives", "rate")],
            "rate limited\n",
        )
    } else {
        let mut upstream = app.upstream.clone();
        let result = match upstream.ready().await {
            Ok(svc) => svc.call(()).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => (StatusCode::OK, [("x-tenlives", "ok")], "done\n"),
            Err(TenlivesError::Rejected(r)) => {
                // The header the demo's load generator sorts refusals by.
                let by = match r.reason() {
                    RejectionReason::CircuitBreaker(_) => "breaker",
                    _ => "limit",
                };
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("x-tenlives", by)],
                    "refused\n",
                )
            }
            Err(_) => (
                StatusCode::BAD_GATEWAY,
                [("x-tenlives", "upstream-error")],
                "upstream failed\n",
            ),
        }
    };
    *app.served
        .lock()
        .unwrap()
        .entry((phase(frac), answer.0.as_u16()))
        .or_default() += 1;
    answer
}

/// One HTTP/1.1 request on a fresh loopback connection: the status code.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut raw = String::new();
    let _ = stream.read_to_string(&mut raw).await;
    let status = raw.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (status, body)
}

/// The reload the example makes: the rate limit cut to 100/s, burst 10.
struct Edit(&'static str, &'static str);

impl Edit {
    fn apply(&self) -> String {
        YAML.replace(self.0, self.1)
    }
}

const GOOD_EDIT: Edit = Edit(
    "rate: 2000, period: 1s, burst: 200",
    "rate: 100, period: 1s, burst: 10",
);

/// `PUT /admin/bulkheads/db/limit` with a read-only token, then an admin one.
async fn set_limit_as_viewer_then_admin(addr: SocketAddr) -> Vec<u16> {
    let body = "{\"limit\": 4}";
    vec![
        request(
            addr,
            "PUT",
            "/admin/bulkheads/db/limit",
            Some(VIEWER_TOKEN),
            body,
        )
        .await
        .0,
        request(
            addr,
            "PUT",
            "/admin/bulkheads/db/limit",
            Some(ADMIN_TOKEN),
            body,
        )
        .await
        .0,
    ]
}

fn phase(frac: f64) -> &'static str {
    match frac {
        f if f < 0.2 => "1 healthy",
        f if f < 0.45 => "2 upstream failing",
        f if f < 0.6 => "3 recovered",
        f if f < 0.75 => "4 rate cut by reload",
        _ => "5 limit set by admin",
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_target(true)
        .with_max_level(tracing::Level::INFO)
        .init();
    let length = Duration::from_secs(args.seconds.max(1));

    // The configuration file: a copy the example may rewrite.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("service.yaml");
    std::fs::write(&path, YAML)?;

    let clock = TokioClock::new();
    let ring = Arc::new(EventRing::with_capacity(1 << 14)?);
    let registry = Registry::builder()
        .clock(clock)
        .events(ring.clone())
        .build();
    let reloader = Reloader::start(registry.clone(), &path, Duration::from_millis(50))?;

    // Every policy by name, from the file.
    let limiter = registry.rate_limiter("api")?;
    let breaker = registry.breaker("upstream")?;
    let db = registry.bulkhead("db")?;
    let admin_router = admin::router(
        registry.clone(),
        AdminConfig::default()
            .token("operator", ADMIN_TOKEN, Role::Admin)
            .token("dashboard", VIEWER_TOKEN, Role::ReadOnly),
    )?;
    // Names are the metric labels: no source ids assigned by hand.
    let exporter =
        Arc::new(Exporter::new(registry.sources()?).with_late_sources(registry.late_sources()));
    let drain = telemetry::spawn(ring, exporter.clone(), DrainConfig::default());

    let upstream = AdmissionLayer::new((breaker.clone(), db.clone()))
        .layer(service_fn(upstream_call as fn(()) -> _));
    let start = Arc::new(OnceLock::new());
    let served = Counts::default();
    let app = App {
        limiter,
        clock,
        start: start.clone(),
        fault: (0.2, 0.45),
        length,
        upstream,
        served: served.clone(),
    };
    let router = Router::new()
        .route("/api", get(api))
        .with_state(app)
        .nest("/admin", admin_router);
    let listener = TcpListener::bind(("127.0.0.1", args.port)).await?;
    let addr = listener.local_addr()?;
    if let Some(file) = &args.port_file {
        // Whole or absent: written aside, then renamed.
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, addr.port().to_string())?;
        std::fs::rename(&tmp, file)?;
    }
    println!("listening on http://{addr}/api (admin plane at /admin)");
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    let counts: Arc<Mutex<BTreeMap<(&'static str, u16), u32>>> = Arc::default();
    let mut sent = 0u32;
    let mut requests = Vec::new();
    let (mut bad_written, mut good_written, mut admin_done) = (false, false, false);
    let mut admin_statuses = Vec::new();
    let mut breaker_opened = false;
    let start = if args.serve_only {
        // The schedule starts with the load: at the first request.
        let deadline = Instant::now() + Duration::from_secs(60);
        while start.get().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        *start.get().ok_or("no request came within 60 s")?
    } else {
        *start.get_or_init(Instant::now)
    };
    while start.elapsed() < length {
        let frac = start.elapsed().as_secs_f64() / length.as_secs_f64();
        if frac >= 0.5 && !bad_written {
            std::fs::write(&path, YAML.replace("limit: 8", "limit: 0"))?;
            bad_written = true;
        }
        // The good file only once the bad one was seen (however slow the
        // machine), so that both are read.
        if frac >= 0.6 && !good_written && reloader.rejected() > 0 {
            std::fs::write(&path, GOOD_EDIT.apply())?;
            good_written = true;
        }
        if frac >= 0.75 && !admin_done {
            admin_statuses = set_limit_as_viewer_then_admin(addr).await;
            admin_done = true;
        }
        breaker_opened |= breaker.state() != tenlives_engine::breaker::BreakerState::Closed;
        if args.serve_only {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        for _ in 0..args.burst {
            let counts = counts.clone();
            sent += 1;
            requests.push(tokio::spawn(async move {
                let (status, _) = request(addr, "GET", "/api", None, "").await;
                *counts
                    .lock()
                    .unwrap()
                    .entry((phase(frac), status))
                    .or_default() += 1;
            }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for r in requests {
        r.await?;
    }
    if args.serve_only {
        // The sender's last requests (it started before the first one
        // arrived here) are still answered.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // On a machine too slow for the timeline, the steps not reached yet.
    let deadline = Instant::now() + Duration::from_secs(20);
    while reloader.rejected() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if !good_written {
        std::fs::write(&path, GOOD_EDIT.apply())?;
    }
    while reloader.applied() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if !admin_done {
        admin_statuses = set_limit_as_viewer_then_admin(addr).await;
    }
    let (_, listing) = request(addr, "GET", "/admin/policies", Some(VIEWER_TOKEN), "").await;
    server.abort();
    drain.stop().await?;

    let counts = counts.lock().unwrap().clone();
    if !args.serve_only {
        println!("\nresponses by phase and status, as the example's client saw them:");
        for ((phase, status), n) in &counts {
            println!("  {phase:<22} {status}: {n}");
        }
    }
    let served = served.lock().unwrap().clone();
    println!("\nanswers by phase and status, as the service gave them:");
    for ((phase, status), n) in &served {
        println!("  {phase:<22} {status}: {n}");
    }
    println!(
        "\nreloads applied: {} (the first load included), refused: {}",
        reloader.applied(),
        reloader.rejected()
    );
    if let Some(e) = reloader.last_error() {
        println!("last refusal: {e}");
    }
    println!(
        "admin: limit change as read-only -> {}, as admin -> {}",
        admin_statuses[0], admin_statuses[1]
    );
    println!("\nGET /admin/policies:\n{listing}\n");
    let metrics = exporter.render_text()?;
    println!("metrics:");
    for line in metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
    {
        println!("  {line}");
    }

    let answered: u32 = counts
        .iter()
        .filter(|((_, s), _)| *s != 0)
        .map(|(_, n)| n)
        .sum();
    let quota = registry.rate_limiter("api")?.quota();
    let in_phase = |p: &str, status: u16| {
        served
            .iter()
            .filter(|((ph, s), _)| *ph == p && *s == status)
            .map(|(_, n)| *n)
            .sum::<u32>()
    };
    let checks = [
        (
            args.serve_only || answered == sent,
            if args.serve_only {
                "every request answered: checked by the load's sender".to_owned()
            } else {
                format!("every request answered ({answered} of {sent})")
            },
        ),
        (
            in_phase("1 healthy", 200) > 0 && in_phase("5 limit set by admin", 200) > 0,
            "requests served before the fault and after every change".to_owned(),
        ),
        (
            breaker_opened,
            "the breaker left `closed` during the fault".to_owned(),
        ),
        (
            reloader.rejected() == 1,
            "the bad file was refused".to_owned(),
        ),
        (
            reloader.applied() == 2,
            "the good file was applied".to_owned(),
        ),
        (
            (quota.rate(), quota.burst()) == (100, 10),
            "the new quota is in force".to_owned(),
        ),
        (
            admin_statuses == [403, 200] && db.limit() == 4,
            "the admin change was made, by the admin only".to_owned(),
        ),
    ];
    let mut failed = false;
    for (ok, what) in &checks {
        println!("{} {what}", if *ok { "ok  " } else { "FAIL" });
        failed |= !ok;
    }
    if failed {
        return Err("a check failed".into());
    }
    Ok(())
}
