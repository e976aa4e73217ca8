//! The fleet-wide rate limit of `tenlives-redis` against the alternatives,
//! on one process and a `redis-server` the bench starts itself on a free
//! loopback port (found on `PATH`, or named by `REDIS_SERVER`).
//!
//! What is measured, per decision, on 1 thread:
//!
//! - `fleet/decide/local_limiter`: the engine's `RateLimiter::check` alone,
//!   reading the engine's `MonotonicClock` as the fleet limiter does: the
//!   floor.
//! - `fleet/decide/two_level`: `FleetRateLimiter::try_acquire`, the lease
//!   spent locally (read the lease words, take a token with a
//!   compare-and-swap, ask the share limiter), its background task topping
//!   the lease up every 5 ms on a tokio runtime of its own.
//! - `fleet/decide/script_per_request`: one `EVALSHA` of the same GCRA
//!   script per decision, on a blocking connection (the redis-cell style:
//!   every decision a round trip).
//!
//! The quota of the timed runs admits everything (10^9 a second), so that
//! every subject makes the same decision. After the timed runs a second,
//! untimed part measures what the quota is for, at 100 000 a second with a
//! burst of 1 000 (`max_share` 1, so a lease of at most 1 000: the bound's
//! `N·L` is 1 % of a second's quota, and a lease covers a 5 ms cycle's
//! refill of 500 with room for the round trip): the local limiter, the
//! two-level limiter and the
//! per-request script each decide as fast as one thread can for 1 s,
//! printing admitted, over-admission beyond `w/T + b`, Redis calls per
//! 1 000 admitted, and the p50 and p99 of one decision (each timed with
//! `Instant`, whose own cost, about 20–40 ns, is in every figure).
//!
//! Run: `cargo bench -p tenlives-benches --bench fleet` (needs
//! `redis-server`; the bench panics without one).

use std::hint::black_box;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tenlives_engine::rate::{Quota, RateLimiter};
use tenlives_engine::time::{Clock, MonotonicClock};
use tenlives_redis::gcra::{self, GcraParams};
use tenlives_redis::{FleetConfig, FleetRateLimiter};

/// A `redis-server` of the bench's own, killed on drop.
struct Server {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Server {
    fn start() -> Server {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let dir = std::env::temp_dir().join(format!("tenlives-bench-redis-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("the server's directory");
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
        let child = Command::new(&bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} (install redis-server): {e}"));
        let server = Server { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err()
            || redis::cmd("PING")
                .query::<String>(&mut server.connection())
                .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).expect("client")
    }

    fn connection(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fleet limiter started on a multi-thread runtime of one worker, which
/// runs its background task while the bench thread decides.
fn fleet(
    server: &Server,
    name: &str,
    quota: Quota,
    max_share: f64,
) -> (tokio::runtime::Runtime, Arc<FleetRateLimiter>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let config = FleetConfig::new(name, quota)
        .max_share(max_share)
        .refresh_interval(Duration::from_millis(5))
        .lease_duration(Duration::from_millis(500))
        .redis_timeout(Duration::from_secs(1));
    let limiter = rt
        .block_on(FleetRateLimiter::start(config, server.client()))
        .expect("start");
    (rt, Arc::new(limiter))
}

/// One redis-cell style decision: the script, one token, on `con`.
struct PerRequest {
    con: redis::Connection,
    script: redis::Script,
    key: String,
    params: GcraParams,
}

impl PerRequest {
    fn new(server: &Server, key: &str, quota: &Quota) -> PerRequest {
        PerRequest {
            con: server.connection(),
            script: gcra::script(),
            key: key.to_owned(),
            params: GcraParams::from_quota(quota).expect("params"),
        }
    }

    fn decide(&mut self) -> bool {
        let reply: Vec<i64> = self
            .script
            .key(&self.key)
            .arg(self.params.p)
            .arg(self.params.r)
            .arg(self.params.b)
            .arg(1)
            .arg(1)
            .arg(0)
            .invoke(&mut self.con)
            .expect("script call");
        reply[0] == 1
    }
}

fn open_quota() -> Quota {
    Quota::per_second(1_000_000_000)
        .and_then(|q| q.with_burst(100_000_000))
        .expect("quota")
}

fn decide(c: &mut Criterion) {
    let server = Server::start();
    let mut group = c.benchmark_group("fleet/decide");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    let clock = MonotonicClock::new();
    let local = RateLimiter::new(open_quota());
    group.bench_function("local_limiter", |b| {
        b.iter(|| black_box(local.check(clock.now()).is_ok()))
    });

    let (rt, two_level) = fleet(&server, "bench-open", open_quota(), 0.5);
    group.bench_function("two_level", |b| {
        b.iter(|| black_box(two_level.try_acquire().is_ok()))
    });
    let stats = two_level.stats();
    println!(
        "two_level over the timed runs: {} admitted, {} refused for an empty lease, {} Redis calls ({:.3} per 1 000 admitted)",
        stats.spent,
        stats.starved,
        stats.redis_calls,
        stats.redis_calls as f64 * 1_000.0 / stats.spent.max(1) as f64
    );
    drop(two_level);
    drop(rt);

    let mut per_request = PerRequest::new(&server, "tenlives:{bench-cell}:rate", &open_quota());
    group.bench_function("script_per_request", |b| {
        b.iter(|| black_box(per_request.decide()))
    });
    group.finish();

    bounded(&server);
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Decides as fast as one thread can for `window`, timing each decision:
/// `(admitted, decisions, sorted times)`.
fn drive(window: Duration, mut decide: impl FnMut() -> bool) -> (u64, u64, Vec<Duration>) {
    let mut times = Vec::with_capacity(1 << 22);
    let (mut admitted, mut decisions) = (0u64, 0u64);
    let start = Instant::now();
    let end = start + window;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let ok = decide();
        let t1 = Instant::now();
        if times.len() < times.capacity() {
            times.push(t1 - t0);
        }
        decisions += 1;
        admitted += u64::from(ok);
    }
    times.sort_unstable();
    (admitted, decisions, times)
}

/// The bounded quota's burst, and the largest lease (`max_share` 1).
const BURST: u32 = 1_000;

/// The untimed part: over- and under-admission and Redis calls at a quota
/// that binds.
fn bounded(server: &Server) {
    let window = Duration::from_secs(1);
    let quota = Quota::per_second(100_000)
        .and_then(|q| q.with_burst(BURST))
        .expect("quota");
    let allowed = 100_000.0 * window.as_secs_f64() + f64::from(BURST);
    println!(
        "\nbounded quota: 100 000/s, burst {BURST}, max_share 1 (L = {BURST}: N·L = 1 % of a second's quota), refresh 5 ms, 1 process, {window:?} of saturating decisions"
    );
    println!(
        "{:<20}{:>12}{:>10}{:>14}{:>12}{:>12}{:>12}",
        "subject", "decisions", "admitted", "over w/T+b", "calls/1000", "p50", "p99"
    );

    let clock = MonotonicClock::new();
    let local = RateLimiter::new(quota);
    let (a, d, t) = drive(window, || local.check(clock.now()).is_ok());
    row("local_limiter", a, d, allowed, 0.0, &t);

    let (rt, limiter) = fleet(server, "bench-bounded", quota, 1.0);
    let before = limiter.stats();
    let (a, d, t) = drive(window, || limiter.try_acquire().is_ok());
    let after = limiter.stats();
    let calls = (after.redis_calls - before.redis_calls) as f64;
    row(
        "two_level",
        a,
        d,
        allowed,
        calls * 1_000.0 / a.max(1) as f64,
        &t,
    );
    rt.block_on(Arc::into_inner(limiter).expect("one owner").shutdown());
    drop(rt);

    let mut per_request = PerRequest::new(server, "tenlives:{bench-cell-bounded}:rate", &quota);
    let (a, d, t) = drive(window, || per_request.decide());
    row(
        "script_per_request",
        a,
        d,
        allowed,
        d as f64 * 1_000.0 / a.max(1) as f64,
        &t,
    );
}

fn row(name: &str, admitted: u64, decisions: u64, allowed: f64, calls: f64, t: &[Duration]) {
    println!(
        "{:<20}{:>12}{:>10}{:>13.2}%{:>12.2}{:>12?}{:>12?}",
        name,
        decisions,
        admitted,
        (admitted as f64 - allowed) / (allowed - f64::from(BURST)) * 100.0,
        calls,
        percentile(t, 50.0),
        percentile(t, 99.0),
    );
}

mod harness {
    use super::*;

    criterion_group!(benches, decide);
}
criterion_main!(harness::benches);
