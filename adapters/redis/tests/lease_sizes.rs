//! The simulation's fleet on a real Redis: 4 OS processes share one
//! `redis-server` and one quota under saturating demand, at three lease
//! sizes, and the parent prints what they admitted beside what the
//! virtual-time simulation (`tenlives_redis::sim`) gives for the same
//! configuration — the figures of `docs/distributed.md`.
//!
//! The fleet is `SimConfig::standard`'s: 10 000 a second, `max_share` 0.5,
//! refresh every 10 ms, leases valid 500 ms; the largest lease `L` is 10, 50
//! or 250 (burst `2·L`). Each size runs in a fresh key for a common 2 s
//! window. Checked for each: every child's `held + spent + returned + lost
//! = granted`, the fleet's admissions at most `b + w/T + N·L` (+ the start
//! skew), and — where a lease carries a refresh cycle's refill
//! (`L ≥ (I + RTT)/T`, here `L` = 250) — at least `w/T − 2·(I + RTT)/T −
//! N·L`, with an RTT of up to 5 ms on a loaded machine.
//!
//! No test harness (`harness = false`): the parent re-executes this binary
//! as the children with `TENLIVES_REDIS_CHILD` set, as `tests/processes.rs`
//! does.

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tenlives_redis::sim::{self, Demand, SimConfig};
use tenlives_redis::{FleetRateLimiter, Refused};

use common::RedisServer;

const N: u64 = 4;
const WINDOW_MS: u64 = 2_000;
const LEASES: [u32; 3] = [10, 50, 250];

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn config(lease: u32) -> SimConfig {
    SimConfig {
        duration: Duration::from_millis(WINDOW_MS),
        warmup: Duration::ZERO,
        ..SimConfig::standard(Demand::Saturating { overload: 2.0 }, 1)
    }
    .with_lease(lease)
    .expect("a valid lease")
}

fn main() {
    if std::env::var_os("TENLIVES_REDIS_CHILD").is_some() {
        child();
    } else {
        parent();
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name}"))
}

fn child() {
    let lease: u32 = env("TENLIVES_REDIS_LEASE").parse().expect("a lease");
    let start_ms: u64 = env("TENLIVES_REDIS_START_MS").parse().expect("a start");
    let name = format!("lease-{lease}");
    let quota = config(lease).quota;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let client = redis::Client::open(env("TENLIVES_REDIS_URL")).expect("client");
        // The simulation's configuration (`SimConfig::fleet_config`), under
        // a name of its own per lease size.
        let fleet = tenlives_redis::FleetConfig::new(name, quota)
            .max_share(0.5)
            .refresh_interval(Duration::from_millis(10))
            .lease_duration(Duration::from_millis(500))
            .expected_instances(4)
            .redis_timeout(Duration::from_secs(1));
        assert_eq!(fleet.max_lease(), lease);
        let limiter = FleetRateLimiter::start(fleet, client).await.expect("start");
        let wait = Duration::from_millis(start_ms.saturating_sub(unix_ms()));
        let start = Instant::now() + wait;
        let end = start + Duration::from_millis(WINDOW_MS);
        tokio::time::sleep_until(start.into()).await;
        let before = limiter.stats();
        let mut admitted = 0u64;
        // Saturating: 50 attempts every 1 ms, 4 processes: 200 000 a
        // second asked of a quota of 10 000.
        'window: loop {
            for _ in 0..50 {
                if Instant::now() >= end {
                    break 'window;
                }
                match limiter.try_acquire() {
                    Ok(_) => admitted += 1,
                    Err(Refused::QuotaExhausted | Refused::ShareLimited(_)) => {}
                    Err(other) => panic!("unexpected refusal with Redis up: {other}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let s = limiter.stats();
        limiter.shutdown().await;
        println!(
            "RESULT admitted={admitted} spent={} granted={} returned={} lost={} held={} calls={} window_calls={}",
            s.spent,
            s.granted,
            s.returned,
            s.lost,
            s.lease_tokens,
            s.redis_calls,
            s.redis_calls - before.redis_calls,
        );
    });
}

struct Fleet(Vec<Child>);

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("bad {name} in {line:?}"))
}

fn run(server: &RedisServer, lease: u32) -> (u64, u64) {
    let exe = std::env::current_exe().expect("the test binary");
    let start_ms = unix_ms() + 1_500;
    let mut fleet = Fleet(Vec::new());
    for _ in 0..N {
        fleet.0.push(
            Command::new(&exe)
                .env("TENLIVES_REDIS_CHILD", "1")
                .env("TENLIVES_REDIS_URL", server.url())
                .env("TENLIVES_REDIS_START_MS", start_ms.to_string())
                .env("TENLIVES_REDIS_LEASE", lease.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn a child"),
        );
    }
    let deadline = Instant::now() + Duration::from_millis(1_500 + WINDOW_MS + 15_000);
    let (mut admitted, mut calls) = (0, 0);
    for child in &mut fleet.0 {
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for a child") {
                break status;
            }
            assert!(Instant::now() < deadline, "a child did not finish in time");
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut out = String::new();
        child
            .stdout
            .take()
            .expect("piped stdout")
            .read_to_string(&mut out)
            .expect("read a child's output");
        assert!(status.success(), "a child failed: {status}; output {out:?}");
        let line = out
            .lines()
            .find(|l| l.starts_with("RESULT "))
            .unwrap_or_else(|| panic!("no result in {out:?}"));
        let (spent, granted) = (field(line, "spent"), field(line, "granted"));
        let (returned, lost, held) = (
            field(line, "returned"),
            field(line, "lost"),
            field(line, "held"),
        );
        assert_eq!(held + spent + returned + lost, granted, "{line}");
        assert!(held <= u64::from(lease), "{line}");
        admitted += field(line, "admitted");
        calls += field(line, "window_calls");
    }
    (admitted, calls)
}

fn parent() {
    let server = RedisServer::start();
    eprintln!(
        "{N} processes, 10 000/s, max_share 0.5, refresh 10 ms, {WINDOW_MS} ms of saturating demand (real Redis | simulation):"
    );
    for lease in LEASES {
        let c = config(lease);
        let (b, l) = (c.quota.burst() as f64, f64::from(lease));
        let ideal = WINDOW_MS as f64 * 10.0; // w/T, T = 0.1 ms
        let (admitted, calls) = run(&server, lease);
        let s = sim::run(&c).expect("simulate");
        let per_1000 = |calls: u64, adm: u64| calls as f64 * 1_000.0 / adm.max(1) as f64;
        eprintln!(
            "  L = {lease:>3}: admitted {admitted:>6} | {:>6} of w/T = {ideal} (over w/T + b: {:+.2}% | {:+.2}%), \
             calls per 1 000 admitted {:.1} | {:.1}",
            s.admitted,
            (admitted as f64 - ideal - b) / ideal * 100.0,
            (s.admitted as f64 - ideal - b) / ideal * 100.0,
            per_1000(calls, admitted),
            s.calls_per_1000()
        );
        // The children's windows start within 1 ms of each other: at most
        // 1 ms (10 tokens) more than one window.
        let upper = b + ideal + 10.0 + N as f64 * l;
        assert!(
            (admitted as f64) <= upper,
            "L = {lease}: admitted {admitted} > bound {upper}"
        );
        // I = 10 ms and an RTT up to 5 ms: a cycle of 150 tokens.
        let cycle = 150.0;
        if l >= cycle {
            let lower = ideal - 2.0 * cycle - N as f64 * l;
            assert!(
                admitted as f64 >= lower,
                "L = {lease}: admitted {admitted} < {lower}"
            );
        }
    }
    drop(server);
    println!("lease_sizes: ok");
}
