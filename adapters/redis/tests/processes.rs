//! Several OS processes share one `redis-server` and one quota under
//! saturating load: the fleet's admissions over the window stay within the
//! bound `docs/redis.md` states (`b + w / T + N·L`) and reach at least the
//! quota minus its stated slack (`w / T − 2·I / T − N·L`).
//!
//! No test harness (`harness = false` in Cargo.toml): the parent starts the
//! server and re-executes this binary `N` times with `TENLIVES_REDIS_CHILD`
//! set; each child builds a `FleetRateLimiter`, waits for a common start
//! instant, makes saturating requests for the window, gives its lease back,
//! and prints its counts on one line. The parent bounds the whole run in
//! time and kills every child still running when it fails or panics.

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tenlives_engine::rate::Quota;
use tenlives_redis::{Admitted, FleetConfig, FleetRateLimiter, Refused};

use common::RedisServer;

/// Processes.
const N: u64 = 4;
/// The quota: 1 000 a second (`T` = 1 ms), burst 100.
const RATE: u64 = 1_000;
const BURST: u64 = 100;
/// Each process may hold (and spend) half the burst: `L` = 50.
const MAX_SHARE: f64 = 0.5;
const L: u64 = 50;
/// Refresh interval `I`, in ms (`I / T` = 20 tokens).
const INTERVAL_MS: u64 = 20;
/// The window `w`, in ms.
const WINDOW_MS: u64 = 1_000;

fn quota() -> Quota {
    Quota::per_second(RATE as u32)
        .unwrap()
        .with_burst(BURST as u32)
        .unwrap()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn main() {
    if std::env::var_os("TENLIVES_REDIS_CHILD").is_some() {
        child();
    } else {
        parent();
    }
}

/// One process of the fleet.
fn child() {
    let url = std::env::var("TENLIVES_REDIS_URL").expect("TENLIVES_REDIS_URL");
    let start_ms: u64 = std::env::var("TENLIVES_REDIS_START_MS")
        .expect("TENLIVES_REDIS_START_MS")
        .parse()
        .expect("a start instant");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let config = FleetConfig::new("processes", quota())
            .max_share(MAX_SHARE)
            .refresh_interval(Duration::from_millis(INTERVAL_MS))
            .lease_duration(Duration::from_millis(500))
            // A loaded machine (the tests run beside others) may answer
            // slowly on loopback; Redis is up, so no call should count as
            // failed here.
            .redis_timeout(Duration::from_secs(1));
        assert_eq!(u64::from(config.max_lease()), L);
        let client = redis::Client::open(url).expect("client");
        let limiter = FleetRateLimiter::start(config, client).await.expect("start");
        // The common start instant, on this process's monotonic clock.
        let wait = Duration::from_millis(start_ms.saturating_sub(unix_ms()));
        let start = Instant::now() + wait;
        let end = start + Duration::from_millis(WINDOW_MS);
        tokio::time::sleep_until(start.into()).await;
        let mut admitted = 0u64;
        // Saturating demand: bursts of 50 attempts every millisecond, each
        // attempt inside the window.
        'window: loop {
            for _ in 0..50 {
                if Instant::now() >= end {
                    break 'window;
                }
                match limiter.try_acquire() {
                    Ok(how) => {
                        assert_eq!(how, Admitted::Lease, "Redis is up");
                        admitted += 1;
                    }
                    Err(Refused::QuotaExhausted | Refused::ShareLimited(_)) => {}
                    Err(other) => panic!("unexpected refusal with Redis up: {other}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let late = Instant::now().saturating_duration_since(end);
        let before = limiter.stats();
        limiter.shutdown().await;
        println!(
            "RESULT admitted={admitted} spent={} granted={} returned={} lost={} held={} calls={} late_us={}",
            before.spent,
            before.granted,
            before.returned,
            before.lost,
            before.lease_tokens,
            before.redis_calls,
            late.as_micros()
        );
    });
}

/// Kills the children still running when dropped (a failed assertion, a
/// timeout).
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

fn parent() {
    let server = RedisServer::start();
    let exe = std::env::current_exe().expect("the test binary");
    // Time for every child to start and take its first lease.
    let start_ms = unix_ms() + 1_500;
    let mut fleet = Fleet(Vec::new());
    for _ in 0..N {
        let child = Command::new(&exe)
            .env("TENLIVES_REDIS_CHILD", "1")
            .env("TENLIVES_REDIS_URL", server.url())
            .env("TENLIVES_REDIS_START_MS", start_ms.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a child");
        fleet.0.push(child);
    }
    // Bounded in time: the window plus 15 s for start-up and shutdown.
    let deadline =
        Instant::now() + Duration::from_millis(1_500 + WINDOW_MS) + Duration::from_secs(15);
    let mut lines = Vec::new();
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
            .unwrap_or_else(|| panic!("no result in {out:?}"))
            .to_owned();
        lines.push(line);
    }
    let mut admitted = 0;
    let mut calls = 0;
    for line in &lines {
        let a = field(line, "admitted");
        let (spent, granted) = (field(line, "spent"), field(line, "granted"));
        let (returned, lost, held) = (
            field(line, "returned"),
            field(line, "lost"),
            field(line, "held"),
        );
        // Each process: what it admitted it spent, and every token it was
        // granted is held, spent, given back or lost.
        assert_eq!(a, spent, "{line}");
        assert_eq!(held + spent + returned + lost, granted, "{line}");
        assert!(held <= L, "{line}");
        // A child's last attempt is checked against the window's end
        // before it is made: none admitted outside the window.
        admitted += a;
        calls += field(line, "calls");
    }
    // T = 1 ms: w / T = WINDOW_MS tokens; I / T = INTERVAL_MS tokens. The
    // children's windows start within 1 ms of each other (the start instant
    // is passed in whole ms), so the union of the windows is at most 2 ms
    // longer than one: 2 tokens more.
    let ideal = WINDOW_MS * RATE / 1_000;
    let upper = BURST + ideal + 2 + N * L;
    let lower = ideal - 2 * INTERVAL_MS * RATE / 1_000 - N * L;
    eprintln!(
        "{N} processes: admitted {admitted} in {WINDOW_MS} ms (ideal {ideal}, bound {lower}..={upper}); \
         {calls} script calls ({:.0} per 1 000 admitted)",
        calls as f64 * 1_000.0 / admitted.max(1) as f64
    );
    for line in &lines {
        eprintln!("  {line}");
    }
    assert!(admitted <= upper, "admitted {admitted} > bound {upper}");
    assert!(
        admitted >= lower,
        "admitted {admitted} < quota minus slack {lower}"
    );
    drop(fleet);
    drop(server);
    println!("processes: ok");
}
