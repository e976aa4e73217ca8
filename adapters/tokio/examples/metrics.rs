//! Serves tenlives telemetry on `/metrics` while a circuit breaker and a
//! bulkhead protect a simulated flaky dependency; stops by itself.
//!
//! ```sh
//! cargo run -p tenlives-tokio --example metrics -- --seconds 5 --port 9000
//! curl -s http://127.0.0.1:9000/metrics
//! ```
//!
//! The port comes from `--port`, else `TENLIVES_METRICS_PORT`, else any free
//! port (printed). Breaker transitions and limit changes are logged at INFO
//! and WARN through `tracing`; at the end the example scrapes itself once,
//! prints the exposition, and shuts down.

use std::io::{IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::Parser;
use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::events::EventRing;
use tenlives_engine::time::Clock;
use tenlives_tokio::TokioClock;
use tenlives_tokio::telemetry::exposition::{OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};
use tenlives_tokio::telemetry::{self, DrainConfig, Exporter, PolicyKind, SourceRegistry};
use tracing_subscriber::filter::LevelFilter;

/// Command-line options.
#[derive(Parser, Debug)]
#[command(about = "Serve tenlives telemetry on /metrics for a bounded time")]
struct Args {
    /// Seconds to generate traffic before stopping.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Port on 127.0.0.1 (default: $TENLIVES_METRICS_PORT, else any free port).
    #[arg(long)]
    port: Option<u16>,
}

const BREAKER: u32 = 0;
const BULKHEAD: u32 = 1;

/// `/metrics`: OpenMetrics when the scraper accepts it (Prometheus does),
/// the classic text format otherwise.
async fn metrics(State(exporter): State<Arc<Exporter>>, headers: HeaderMap) -> impl IntoResponse {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let (body, content_type) = if openmetrics {
        (exporter.render_openmetrics(), OPENMETRICS_CONTENT_TYPE)
    } else {
        (exporter.render_text(), TEXT_CONTENT_TYPE)
    };
    match body {
        Ok(body) => (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)],
            String::from("encoding the metrics failed\n"),
        ),
    }
}

/// A small deterministic generator (xorshift64) for the simulated dependency.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Fetches `/metrics` with a plain HTTP/1.0 request (blocking; run it off
/// the runtime).
fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let port = match args.port {
        Some(p) => p,
        None => match std::env::var("TENLIVES_METRICS_PORT") {
            Ok(v) => v.parse()?,
            Err(_) => 0,
        },
    };
    tracing_subscriber::fmt()
        .with_max_level(LevelFilter::INFO)
        .with_ansi(std::io::stdout().is_terminal())
        .init();

    // Telemetry set-up: the ring, the policy names, the exporter, the drain.
    let ring = Arc::new(EventRing::with_capacity(4096)?);
    let limit = 4;
    let sources = SourceRegistry::builder()
        .policy(BREAKER, "upstream", PolicyKind::CircuitBreaker)
        .bulkhead(BULKHEAD, "upstream", limit)
        .build()?;
    let exporter = Arc::new(Exporter::new(sources));
    let drain = telemetry::spawn(ring.clone(), exporter.clone(), DrainConfig::default());

    // The policies, emitting into the ring.
    let breaker = Arc::new(CircuitBreaker::with_sink(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(5)
            .open_duration(Duration::from_millis(300))
            .half_open_probes(2)
            .build()?,
        ring.clone(),
        BREAKER,
    ));
    let bulkhead = Arc::new(Bulkhead::with_sink(limit, ring.clone(), BULKHEAD)?);

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    println!("serving http://{addr}/metrics for {} s", args.seconds);
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(exporter.clone());
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = shutdown_rx.await;
            })
            .into_future(),
    );

    // Traffic: a call every 2 ms for `seconds`; each holds a bulkhead permit
    // for 5-15 ms. The dependency fails 80 % of calls in the first 700 ms of
    // every 2 s, and 2 % otherwise. The limit moves between 3 and 6 each second.
    let clock = TokioClock::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.seconds);
    let mut ticks = tokio::time::interval(Duration::from_millis(2));
    let mut calls = tokio::task::JoinSet::new();
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let mut last_second = 0;
    while tokio::time::Instant::now() < deadline {
        ticks.tick().await;
        let elapsed = clock.now().as_nanos() / 1_000_000; // ms
        if elapsed / 1000 != last_second {
            last_second = elapsed / 1000;
            bulkhead.set_limit(3 + (last_second % 4) as u32)?;
        }
        let fails = noise.next() % 100 < if elapsed % 2000 < 700 { 80 } else { 2 };
        let latency = Duration::from_millis(5 + noise.next() % 11);
        let (breaker, bulkhead) = (breaker.clone(), bulkhead.clone());
        calls.spawn(async move {
            let Ok(_slot) = bulkhead.try_acquire() else {
                return; // full: refused at once
            };
            let Ok(permit) = breaker.try_acquire(clock.now()) else {
                return; // open: refused at once
            };
            tokio::time::sleep(latency).await;
            if fails {
                permit.failure(clock.now());
            } else {
                permit.success(clock.now());
            }
        });
        while calls.try_join_next().is_some() {}
    }
    while calls.join_next().await.is_some() {}

    let response = tokio::task::spawn_blocking(move || scrape(addr)).await??;
    println!("--- one scrape of /metrics ---\n{response}");

    drop((breaker, bulkhead));
    let counts = drain.stop().await?;
    println!(
        "drained {} events, {} lost; stopping",
        counts.events, counts.lost
    );
    let _ = shutdown_tx.send(());
    server.await??;
    Ok(())
}
