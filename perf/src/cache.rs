//! `tenlives-perf cache`: the response cache layer on loopback, and the
//! latency it saves.
//!
//! An upstream HTTP service on loopback answers `GET /item/{id}` after a
//! service time. A client calls it through a pooled hyper client, first
//! with no cache, then through `tenlives_tokio::cache::CacheLayer` (moka),
//! each run the same bounded closed loop: `--concurrency` workers share
//! `--requests` requests, with keys drawn from a Zipf distribution over
//! `--keys` items (seeded, so both runs draw the same sequence), and stop
//! early at `--seconds`. The report gives p50/p99/max and throughput of both,
//! the hit rate, the upstream calls saved and the cache's memory; the run
//! fails (exit 1) when the hit rate is below `--min-hit-rate` or the cache
//! does not lower p50.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tenlives_tokio::cache::ResponseCache;
use tokio::time::Instant;
use tower::{Service, ServiceExt};
use tower_layer::Layer;

use crate::http::server::{Body, Handler, Server};

/// Options of the cache scenario.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct CacheArgs {
    /// Requests per run (with and without the cache).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub requests: u64,
    /// The longest a run may take, in seconds (it stops early).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: u64,
    /// Concurrent workers.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub concurrency: u64,
    /// Distinct items the keys are drawn from.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub keys: u64,
    /// The Zipf exponent of the key distribution (larger: more skewed).
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// The upstream's service time per call, in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub service_ms: u64,
    /// The cache's time to live, in seconds.
    #[arg(long, default_value_t = 60)]
    pub ttl_secs: u64,
    /// The cache's memory budget, in KiB.
    #[arg(long, default_value_t = 4096)]
    pub budget_kib: u64,
    /// The lowest acceptable hit rate, in percent.
    #[arg(long, default_value_t = 70.0)]
    pub min_hit_rate: f64,
    /// Seed of the key sequence.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// The upstream: answers after its service time with a 512-byte body naming
/// the item, and counts its calls.
#[derive(Clone)]
struct Items {
    service: Duration,
    calls: Arc<AtomicU64>,
}

impl Handler for Items {
    type Error = std::convert::Infallible;

    fn handle(
        &self,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<Body>, Self::Error>> + Send + 'static + use<> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let service = self.service;
        let id = req.uri().path().trim_start_matches("/item/").to_owned();
        async move {
            tokio::time::sleep(service).await;
            let mut body = format!("item {id}\n");
            body.extend(std::iter::repeat_n(
                '.',
                512usize.saturating_sub(body.len()),
            ));
            Ok(Response::new(Full::new(Bytes::from(body))))
        }
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// The client side: `GET /item/{id}`, the body as `Bytes`.
#[derive(Clone)]
struct ItemClient {
    client: HttpClient,
    addr: SocketAddr,
}

type BoxError = Box<dyn Error + Send + Sync>;

impl Service<u64> for ItemClient {
    type Response = Bytes;
    type Error = Arc<BoxError>;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Bytes, Arc<BoxError>>> + Send>>;

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
            let fetch = async {
                let uri: http::Uri = uri.parse()?;
                let resp = client.get(uri).await?;
                let body = resp.into_body().collect().await?.to_bytes();
                Ok::<_, BoxError>(body)
            };
            fetch.await.map_err(Arc::new)
        })
    }
}

/// A Zipf sampler over `1..=n` by inverse CDF, on a seeded xorshift.
struct Zipf {
    cdf: Vec<f64>,
    state: u64,
}

impl Zipf {
    fn new(n: u64, s: f64, seed: u64) -> Zipf {
        let mut cdf = Vec::with_capacity(n as usize);
        let mut total = 0.0;
        for k in 1..=n {
            total += 1.0 / (k as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf {
            cdf,
            state: seed.max(1),
        }
    }

    fn next(&mut self) -> u64 {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let x = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let u = (x >> 11) as f64 / (1u64 << 53) as f64;
        self.cdf.partition_point(|&c| c < u) as u64 + 1
    }
}

/// One run's figures.
struct RunResult {
    latency: Histogram<u64>,
    completed: u64,
    errors: u64,
    elapsed: Duration,
}

/// Drives `keys` through `svc` with `concurrency` workers until the keys run
/// out or `deadline` passes.
async fn drive<S>(svc: S, keys: Arc<Vec<u64>>, concurrency: u64, deadline: Instant) -> RunResult
where
    S: Service<u64, Response = Bytes> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let mut svc = svc.clone();
        let keys = Arc::clone(&keys);
        let next = Arc::clone(&next);
        workers.spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .expect("valid histogram bounds");
            let (mut completed, mut errors) = (0u64, 0u64);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= keys.len() || Instant::now() >= deadline {
                    break;
                }
                let sent = Instant::now();
                let result = match svc.ready().await {
                    Ok(ready) => ready.call(keys[i]).await,
                    Err(e) => Err(e),
                };
                let micros = sent.elapsed().as_micros().max(1) as u64;
                latency.saturating_record(micros);
                if result.is_ok() {
                    completed += 1;
                } else {
                    errors += 1;
                }
            }
            (latency, completed, errors)
        });
    }
    let mut total = RunResult {
        latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
        completed: 0,
        errors: 0,
        elapsed: Duration::ZERO,
    };
    while let Some(joined) = workers.join_next().await {
        let (latency, completed, errors) = joined.expect("a worker does not panic");
        total.latency.add(&latency).expect("same bounds");
        total.completed += completed;
        total.errors += errors;
    }
    total.elapsed = start.elapsed();
    total
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn line(name: &str, r: &RunResult) {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    println!(
        "  {name:<14} {:>8} ok {:>5} err  p50 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms  {:>8.0} req/s",
        r.completed,
        r.errors,
        ms(r.latency.value_at_quantile(0.50)),
        ms(r.latency.value_at_quantile(0.99)),
        ms(r.latency.max()),
        r.completed as f64 / secs,
    );
}

/// Runs the scenario: `Ok(true)` when the cache met its aims.
pub async fn cache(args: &CacheArgs) -> Result<bool, Box<dyn Error>> {
    let calls = Arc::new(AtomicU64::new(0));
    let upstream = Server::start(
        "127.0.0.1:0".parse()?,
        Items {
            service: Duration::from_millis(args.service_ms),
            calls: Arc::clone(&calls),
        },
    )?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.concurrency as usize)
        .build(connector);
    let plain = ItemClient {
        client,
        addr: upstream.addr(),
    };
    let mut zipf = Zipf::new(args.keys, args.zipf, args.seed);
    let keys: Arc<Vec<u64>> = Arc::new((0..args.requests).map(|_| zipf.next()).collect());
    let distinct = {
        let mut k: Vec<u64> = keys.to_vec();
        k.sort_unstable();
        k.dedup();
        k.len()
    };
    println!(
        "cache scenario: {} requests, {} workers, Zipf({}) over {} items ({} distinct drawn), upstream {} ms per call, loopback",
        args.requests, args.concurrency, args.zipf, args.keys, distinct, args.service_ms
    );

    let limit = Duration::from_secs(args.seconds);
    let without = drive(
        plain.clone(),
        Arc::clone(&keys),
        args.concurrency,
        Instant::now() + limit,
    )
    .await;
    let calls_without = calls.swap(0, Ordering::Relaxed);

    let cache = ResponseCache::<u64, Bytes>::builder(
        Duration::from_secs(args.ttl_secs),
        args.budget_kib * 1024,
    )
    .weigher(|_, body: &Bytes| u32::try_from(body.len()).unwrap_or(u32::MAX))
    .build();
    let cached = cache
        .layer(
            |id: &u64| Some(*id),
            |id: &u64, _: &Bytes| vec![format!("item:{id}")],
        )
        .layer(plain);
    let with = drive(
        cached,
        Arc::clone(&keys),
        args.concurrency,
        Instant::now() + limit,
    )
    .await;
    let calls_with = calls.load(Ordering::Relaxed);
    cache.run_pending_tasks();
    let stats = cache.stats();
    upstream.stop();

    line("without cache", &without);
    line("with cache", &with);
    let hit_rate = stats.hit_rate() * 100.0;
    println!(
        "  hit rate {hit_rate:.1} % ({} hits, {} misses); upstream calls {calls_without} without, {calls_with} with; cache holds {} entries, {} KiB of {} KiB",
        stats.hits,
        stats.misses,
        stats.entries,
        stats.weighted_bytes / 1024,
        args.budget_kib
    );
    let (p50_without, p50_with) = (
        without.latency.value_at_quantile(0.5),
        with.latency.value_at_quantile(0.5),
    );
    let (p99_without, p99_with) = (
        without.latency.value_at_quantile(0.99),
        with.latency.value_at_quantile(0.99),
    );
    println!(
        "  saved: p50 {:.3} ms -> {:.3} ms, p99 {:.3} ms -> {:.3} ms",
        ms(p50_without),
        ms(p50_with),
        ms(p99_without),
        ms(p99_with)
    );
    let mut ok = true;
    if hit_rate < args.min_hit_rate {
        println!(
            "  FAIL: hit rate {hit_rate:.1} % below {} %",
            args.min_hit_rate
        );
        ok = false;
    }
    if p50_with >= p50_without {
        println!("  FAIL: the cache did not lower p50");
        ok = false;
    }
    if with.errors + without.errors > 0 {
        println!("  FAIL: {} requests failed", with.errors + without.errors);
        ok = false;
    }
    if ok {
        println!(
            "  PASS: hit rate at least {} %, p50 lower with the cache",
            args.min_hit_rate
        );
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_is_skewed_and_in_range() {
        let mut z = Zipf::new(100, 1.0, 7);
        let draws: Vec<u64> = (0..10_000).map(|_| z.next()).collect();
        assert!(draws.iter().all(|&d| (1..=100).contains(&d)));
        let ones = draws.iter().filter(|&&d| d == 1).count();
        let hundreds = draws.iter().filter(|&&d| d == 100).count();
        // P(1) = 1/H(100) ~ 19 %, P(100) ~ 0.19 %.
        assert!((1_600..2_300).contains(&ones), "{ones}");
        assert!(hundreds < 60, "{hundreds}");
    }
}
