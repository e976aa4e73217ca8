//! An HTTP service protected by tenlives on both sides; drives a bounded
//! burst of requests at itself, prints what happened, and stops by itself.
//!
//! ```sh
//! cargo run -p tenlives-tokio --example http -- --seconds 3
//! ```
//!
//! Two axum servers on loopback, in one process:
//!
//! - the **upstream**, `GET /work`: answers after 5 ms, but fails every
//!   request (HTTP 500) from 30 % to 55 % of the run;
//! - the **service**, `GET /api`, whose inbound endpoint sits behind a rate
//!   limit (`RateLimitLayer`), an admission queue in front of a concurrency
//!   limit (`AdmissionQueueLayer`: 8 calls at once, 16 waiting, 60 ms at
//!   most) and a timeout (`TimeoutLayer`); rejections become HTTP 429 (rate
//!   limited) or 503 (queue full, shed, timed out), each with `Retry-After`.
//!   Its handler calls the upstream through a hyper client wrapped in the
//!   combined `StackLayer`: a timeout, retries (backoff and a retry budget)
//!   and a circuit breaker that counts upstream 5xx as failures. An open
//!   breaker answers 503 with the breaker's own `Retry-After`.
//!
//! Every 100 ms a burst of requests (`--burst`, default 40) goes to
//! `/api` for `--seconds` seconds. At the end the example prints the
//! responses by status, per half second, with the breaker's states in that
//! time, and checks what must hold however fast the machine is: every
//! request got an answer, some were served, and every 429 and 503 said when
//! to retry. A failed check makes it exit with an error.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tenlives_engine::breaker::{BreakerConfig, BreakerState, CircuitBreaker, Outcome};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::queue::{AdmissionQueue, QueueConfig};
use tenlives_engine::rate::{Quota, RateLimiter};
use tenlives_engine::retry::{Backoff, RetryBudget, RetryBudgetConfig};
use tenlives_tokio::{
    AdmissionQueueLayer, RateLimitLayer, RejectionReason, RetryPolicy, StackLayer, TenlivesError,
    TimeoutLayer,
};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

/// Command-line options.
#[derive(Parser, Debug)]
#[command(about = "An HTTP service protected by tenlives, driven by a bounded burst of requests")]
struct Args {
    /// Seconds of traffic before stopping.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Requests per burst (one burst every 100 ms).
    #[arg(long, default_value_t = 40)]
    burst: u32,
}

/// A loopback HTTP/1 client.
type HttpClient = Client<HttpConnector, Empty<Bytes>>;

// ---------------------------------------------------------------- upstream

/// When the upstream fails, from its start.
#[derive(Clone, Copy)]
struct Upstream {
    start: Instant,
    failing_from: Duration,
    failing_until: Duration,
}

/// `GET /work`: 5 ms of work, or a failure inside the failing window.
async fn work(State(up): State<Upstream>) -> (StatusCode, &'static str) {
    let now = up.start.elapsed();
    if now >= up.failing_from && now < up.failing_until {
        return (StatusCode::INTERNAL_SERVER_ERROR, "upstream failing\n");
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    (StatusCode::OK, "done\n")
}

// ------------------------------------------------- the service's handler

/// What the upstream answered (the body is read in full, so that the
/// connection goes back to the pool).
#[derive(Debug)]
struct Reply {
    status: StatusCode,
}

type UpstreamError = hyper_util::client::legacy::Error;

/// What the handler shares: the protected upstream client and its address.
#[derive(Clone)]
struct App<C> {
    upstream: C,
    uri: Uri,
}

/// `GET /api`: one call to the upstream through the client stack.
async fn api<C>(State(app): State<App<C>>) -> Response
where
    C: Service<Uri, Response = Reply, Error = TenlivesError<UpstreamError>> + Clone,
{
    let mut upstream = app.upstream;
    let result = match upstream.ready().await {
        Ok(client) => client.call(app.uri).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(reply) if reply.status.is_success() => (StatusCode::OK, "ok\n").into_response(),
        Ok(reply) => (
            StatusCode::BAD_GATEWAY,
            format!("upstream answered {}\n", reply.status),
        )
            .into_response(),
        // The breaker is open: come back when it will let a call through.
        Err(TenlivesError::Rejected(r)) => with_retry_after(
            StatusCode::SERVICE_UNAVAILABLE,
            r.retry_after(),
            format!("upstream unavailable: {r}\n"),
        ),
        Err(TenlivesError::TimedOut { after }) => (
            StatusCode::GATEWAY_TIMEOUT,
            format!("upstream: no answer within {after:?}\n"),
        )
            .into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, format!("upstream: {e}\n")).into_response(),
    }
}

/// A response with a `Retry-After` header: whole seconds, rounded up, at
/// least one (the header has no fractions, and 0 invites a stampede).
fn with_retry_after(status: StatusCode, after: Option<Duration>, body: String) -> Response {
    let secs = after.map_or(1, |d| {
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    });
    (
        status,
        [(header::RETRY_AFTER, HeaderValue::from(secs))],
        body,
    )
        .into_response()
}

/// The inbound layers' error: rate limit, queue and timeout, each a level.
type InboundError = TenlivesError<TenlivesError<TenlivesError<Infallible>>>;

/// Turns an inbound refusal into a response: 429 for the rate limit, 503
/// for the queue and the timeout, each with `Retry-After`.
async fn refused(err: InboundError) -> Response {
    let err = err.flatten().flatten();
    let status = match err.rejection().map(|r| r.reason()) {
        Some(RejectionReason::RateLimited | RejectionReason::RateLimitExceedsBurst) => {
            StatusCode::TOO_MANY_REQUESTS
        }
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    with_retry_after(status, err.retry_after(), format!("{err}\n"))
}

// ----------------------------------------------------------------- driver

/// One answer the driver got.
struct Answer {
    sent_at: Duration,
    status: Option<StatusCode>,
    /// Who answered so: the status and, for a refusal, which policy.
    label: &'static str,
    retry_after: bool,
}

/// Sends one request to the service and notes what came back.
async fn fetch(client: HttpClient, uri: Uri, start: Instant) -> Answer {
    let sent_at = start.elapsed();
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        let response = client.get(uri).await.ok()?;
        let status = response.status();
        let retry_after = response.headers().contains_key(header::RETRY_AFTER);
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, label(status, &body), retry_after))
    })
    .await
    .ok()
    .flatten();
    Answer {
        sent_at,
        status: answer.map(|a| a.0),
        label: answer.map_or("no answer", |a| a.1),
        retry_after: answer.is_some_and(|a| a.2),
    }
}

/// Names an answer by its status and, for a 503, by the body, which says
/// which policy refused (the `Display` of the error).
fn label(status: StatusCode, body: &[u8]) -> &'static str {
    let body = String::from_utf8_lossy(body);
    match status.as_u16() {
        200 => "200",
        429 => "429 rate limit",
        503 if body.starts_with("upstream unavailable") => "503 breaker open",
        503 if body.contains("admission queue") => "503 queue",
        503 => "503 timeout",
        502 => "502 upstream failed",
        504 => "504 upstream timeout",
        _ => "other",
    }
}

/// Serves `app` on a free loopback port until `stop` resolves.
async fn serve(
    app: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .into_future(),
    );
    Ok((addr, server))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let run = Duration::from_secs(args.seconds.max(1));
    let start = Instant::now();
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let stopped = |tx: &tokio::sync::broadcast::Sender<()>| {
        let mut rx = tx.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };

    // The upstream.
    let upstream = Upstream {
        start,
        failing_from: run.mul_f64(0.30),
        failing_until: run.mul_f64(0.55),
    };
    let upstream_app = Router::new().route("/work", get(work)).with_state(upstream);
    let (upstream_addr, upstream_server) = serve(upstream_app, stopped(&stop_tx)).await?;

    // The client to the upstream: timeout, retry, breaker, in one layer.
    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let get_work = service_fn(move |uri: Uri| {
        let http = http.clone();
        async move {
            let response = http.get(uri).await?;
            let status = response.status();
            // A body that fails to arrive is a failed call like any other.
            let _ = response.into_body().collect().await;
            Ok::<_, UpstreamError>(Reply { status })
        }
    });
    let client_layer = StackLayer::builder()
        .timeout(Duration::from_millis(300))
        .retry(
            RetryPolicy::new(
                Backoff::exponential(Duration::from_millis(10), 2.0, Duration::from_millis(80))?
                    .with_max_retries(2),
                RetryBudget::new(RetryBudgetConfig::default()),
            )
            // Retry 5xx and transport errors; never a rejection by the
            // breaker (it is open: retrying would only wait) or a timeout.
            .retry_if(|r: &Result<Reply, TenlivesError<UpstreamError>>| match r {
                Ok(reply) => reply.status.is_server_error(),
                Err(e) => e.inner().is_some(),
            }),
        )
        .circuit_breaker(CircuitBreaker::new(
            BreakerConfig::builder()
                .without_failure_rate()
                .consecutive_failures(5)
                .open_duration(Duration::from_millis(250))
                .half_open_probes(2)
                .build()?,
        ))
        .classify(|r: &Result<Reply, UpstreamError>| match r {
            Ok(reply) if reply.status.is_server_error() => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        })
        .build();
    let app = App {
        upstream: tower::Layer::layer(&client_layer, get_work),
        uri: format!("http://{upstream_addr}/work").parse()?,
    };

    // The service: rate limit, then the admission queue, then a timeout.
    let queue_layer = AdmissionQueueLayer::new(
        AdmissionQueue::new(Bulkhead::new(8)?, QueueConfig::fifo(16)?),
        Duration::from_millis(60),
    );
    let inbound = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(refused))
        .layer(RateLimitLayer::new(RateLimiter::new(
            Quota::per_second(300)?.with_burst(30)?,
        )))
        .layer(queue_layer.clone())
        .layer(TimeoutLayer::new(Duration::from_millis(500)));
    let service_app = Router::new()
        .route("/api", get(api))
        .with_state(app)
        .layer(inbound);
    let (addr, service_server) = serve(service_app, stopped(&stop_tx)).await?;
    println!(
        "service http://{addr}/api, upstream http://{upstream_addr}/work (failing {:?}..{:?}); \
         {} requests every 100 ms for {:?}",
        upstream.failing_from, upstream.failing_until, args.burst, run
    );

    // Watch the breaker and the queue while the bursts run.
    let breaker_states = Arc::new(std::sync::Mutex::new(Vec::<(Duration, BreakerState)>::new()));
    let most_waiting = Arc::new(AtomicU32::new(0));
    let watcher = {
        let policies = client_layer.clone();
        let queue = Arc::clone(queue_layer.queue());
        let (states, most_waiting) = (breaker_states.clone(), most_waiting.clone());
        let mut stop = stop_tx.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            loop {
                tokio::select! {
                    _ = stop.recv() => break,
                    _ = tick.tick() => {}
                }
                if let Some(breaker) = policies.policies().breaker() {
                    let state = breaker.state();
                    let mut states = states.lock().unwrap_or_else(|e| e.into_inner());
                    if states.last().is_none_or(|&(_, last)| last != state) {
                        states.push((start.elapsed(), state));
                    }
                }
                most_waiting.fetch_max(queue.waiting(), Ordering::Relaxed);
            }
        })
    };

    // The bursts.
    let driver = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let api_uri: Uri = format!("http://{addr}/api").parse()?;
    let mut requests = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while start.elapsed() < run {
        tick.tick().await;
        for _ in 0..args.burst {
            requests.spawn(fetch(driver.clone(), api_uri.clone(), start));
        }
    }
    let mut answers = Vec::new();
    while let Some(answer) = requests.join_next().await {
        answers.push(answer?);
    }
    let _ = stop_tx.send(());
    watcher.await?;
    upstream_server.await??;
    service_server.await??;

    report(
        &answers,
        &breaker_states.lock().unwrap_or_else(|e| e.into_inner()),
    );
    println!(
        "most requests waiting in the admission queue at once: {}",
        most_waiting.load(Ordering::Relaxed)
    );
    println!(
        "in flight at the end: {} (queue), breaker {:?}",
        queue_layer.queue().source().in_flight(),
        client_layer.policies().breaker().map(CircuitBreaker::state)
    );
    check(&answers)
}

/// Prints the answers by status, per half second, with the breaker's states.
fn report(answers: &[Answer], states: &[(Duration, BreakerState)]) {
    let window = Duration::from_millis(500);
    let mut windows: BTreeMap<u128, BTreeMap<&str, usize>> = BTreeMap::new();
    let mut totals: BTreeMap<&str, usize> = BTreeMap::new();
    for a in answers {
        *windows
            .entry(a.sent_at.as_millis() / window.as_millis())
            .or_default()
            .entry(a.label)
            .or_default() += 1;
        *totals.entry(a.label).or_default() += 1;
    }
    let counts = |m: &BTreeMap<&str, usize>| {
        m.iter()
            .map(|(label, n)| format!("{label}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (w, by_status) in &windows {
        let from = window * u32::try_from(*w).unwrap_or(u32::MAX);
        let to = from + window;
        // The state at the start of the window, and every change within it.
        let mut seen: Vec<String> = Vec::new();
        if let Some(&(_, s)) = states.iter().rev().find(|(t, _)| *t <= from) {
            seen.push(format!("{s:?}"));
        }
        for &(_, s) in states.iter().filter(|(t, _)| *t > from && *t < to) {
            seen.push(format!("{s:?}"));
        }
        println!(
            "{:>4.1}-{:<4.1}s  {:<62} breaker {}",
            from.as_secs_f64(),
            to.as_secs_f64(),
            counts(by_status),
            seen.join(" -> ")
        );
    }
    println!("total {}: {}", answers.len(), counts(&totals));
}

/// What must hold however fast the machine is.
fn check(answers: &[Answer]) -> Result<(), Box<dyn std::error::Error>> {
    let unanswered = answers.iter().filter(|a| a.status.is_none()).count();
    if unanswered > 0 {
        return Err(format!("{unanswered} requests got no answer").into());
    }
    if !answers.iter().any(|a| a.status == Some(StatusCode::OK)) {
        return Err("no request was served".into());
    }
    let refused =
        |s: StatusCode| s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::SERVICE_UNAVAILABLE;
    let silent = answers
        .iter()
        .filter(|a| a.status.is_some_and(refused) && !a.retry_after)
        .count();
    if silent > 0 {
        return Err(format!("{silent} refusals (429/503) without Retry-After").into());
    }
    println!("checks passed: every request answered, some served, every 429/503 with Retry-After");
    Ok(())
}
