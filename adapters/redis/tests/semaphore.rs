//! The fleet-wide concurrency limit on a real `redis-server`: several
//! semaphores ("processes") never hold more permits together than the
//! limit; a crashed holder's permits come back after its TTL; shutdown gives
//! back what is not in use; Redis killed makes the failure policy decide,
//! and its return makes the semaphores recover.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::Commands;
use tenlives_redis::semaphore::semaphore_script;
use tenlives_redis::{
    FailurePolicy, FleetPermit, FleetSemaphore, SemaphoreConfig, SemaphoreRefused,
};

use common::{RedisServer, wait_for};

/// The permits all live holders claim in Redis.
fn claimed(server: &RedisServer, name: &str) -> i64 {
    let mut con = server.connection();
    let held: Vec<i64> = con.hvals(format!("tenlives:{{{name}}}:sem")).unwrap();
    held.iter().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_never_holds_more_than_the_limit() {
    let server = RedisServer::start();
    let mut semaphores = Vec::new();
    for _ in 0..4 {
        let config = SemaphoreConfig::new("pool", 8)
            .max_share(3)
            .refresh_interval(Duration::from_millis(10))
            .ttl(Duration::from_millis(500));
        semaphores.push(Arc::new(
            FleetSemaphore::start(config, server.client())
                .await
                .unwrap(),
        ));
    }
    let in_use = Arc::new(AtomicI64::new(0));
    let peak = Arc::new(AtomicI64::new(0));
    let acquired = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, sem) in semaphores.iter().enumerate() {
        for j in 0..5u64 {
            let (sem, in_use, peak, acquired, stop) = (
                Arc::clone(sem),
                Arc::clone(&in_use),
                Arc::clone(&peak),
                Arc::clone(&acquired),
                Arc::clone(&stop),
            );
            tasks.push(tokio::spawn(async move {
                let hold = Duration::from_millis(1 + (i as u64 + j) % 3);
                while !stop.load(Ordering::Relaxed) {
                    match sem.try_acquire() {
                        Ok(permit) => {
                            assert!(matches!(permit, FleetPermit::Leased(_)), "{permit:?}");
                            let now = in_use.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            acquired.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(hold).await;
                            in_use.fetch_sub(1, Ordering::SeqCst);
                            drop(permit);
                        }
                        Err(SemaphoreRefused::Full) => {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Err(other) => panic!("refused with Redis up: {other}"),
                    }
                }
            }));
        }
    }
    let started = Instant::now();
    let mut max_claimed = 0;
    while started.elapsed() < Duration::from_millis(1_000) {
        max_claimed = max_claimed.max(claimed(&server, "pool"));
        tokio::time::sleep(Duration::from_millis(7)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 8, "{peak} permits in use at once");
    assert!(max_claimed <= 8, "{max_claimed} permits claimed in Redis");
    // The limit was actually used, by more than one process.
    assert!(peak >= 6, "peak only {peak}");
    let busy = semaphores
        .iter()
        .filter(|s| s.stats().redis_calls > 0)
        .count();
    assert_eq!(busy, 4);
    eprintln!(
        "peak {peak}, max claimed {max_claimed}, {} acquisitions",
        acquired.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_holder_s_permits_come_back_after_its_ttl() {
    let server = RedisServer::start();
    // A process claimed all 4 permits with a 1 s TTL, then died: that is
    // the state it leaves in Redis.
    let mut con = server.connection();
    let reply: Vec<i64> = semaphore_script()
        .key("tenlives:{crash}:sem")
        .key("tenlives:{crash}:sem:ttl")
        .arg(4)
        .arg("crashed-holder")
        .arg(4)
        .arg(1_000)
        .invoke(&mut con)
        .unwrap();
    assert_eq!(reply[0], 4);
    let crashed_at = Instant::now();
    let config = SemaphoreConfig::new("crash", 4).refresh_interval(Duration::from_millis(20));
    let sem = FleetSemaphore::start(config, server.client())
        .await
        .unwrap();
    assert_eq!(sem.try_acquire().unwrap_err(), SemaphoreRefused::Full);
    // Not before the TTL...
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(sem.try_acquire().unwrap_err(), SemaphoreRefused::Full);
    assert!(crashed_at.elapsed() < Duration::from_millis(1_000));
    // ...but soon after it.
    let mut permit = None;
    assert!(
        wait_for(Duration::from_secs(2), || {
            permit = sem.try_acquire().ok();
            permit.is_some()
        })
        .await
    );
    assert!(crashed_at.elapsed() >= Duration::from_millis(1_000));
    let held: Option<i64> = con.hget("tenlives:{crash}:sem", "crashed-holder").unwrap();
    assert_eq!(held, None, "the lapsed claim is gone");
    drop(permit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_back_the_permits_not_in_use() {
    let server = RedisServer::start();
    let config = SemaphoreConfig::new("back", 10).refresh_interval(Duration::from_millis(10));
    let sem = FleetSemaphore::start(config, server.client())
        .await
        .unwrap();
    // Demand grows the claim: three permits held at once.
    let mut held = Vec::new();
    assert!(
        wait_for(Duration::from_secs(2), || {
            if let Ok(p) = sem.try_acquire() {
                held.push(p);
            }
            held.len() == 3
        })
        .await
    );
    assert!(claimed(&server, "back") >= 3);
    drop(held);
    sem.shutdown().await;
    assert_eq!(claimed(&server, "back"), 0);
    let mut con = server.connection();
    let exists: bool = con.exists("tenlives:{back}:sem:ttl").unwrap();
    assert!(!exists, "an empty semaphore leaves no keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_semaphore_gives_its_claim_back_too() {
    let server = RedisServer::start();
    let config = SemaphoreConfig::new("dropped", 10).refresh_interval(Duration::from_millis(10));
    let sem = FleetSemaphore::start(config, server.client())
        .await
        .unwrap();
    assert!(claimed(&server, "dropped") >= 1);
    drop(sem);
    assert!(
        wait_for(Duration::from_secs(2), || claimed(&server, "dropped") == 0).await,
        "the claim stayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_applies_the_policy_and_its_return_recovers() {
    let mut server = RedisServer::start();
    let config = |name: &str, policy| {
        SemaphoreConfig::new(name, 8)
            .policy(policy)
            .expected_instances(4)
            .refresh_interval(Duration::from_millis(20))
            .ttl(Duration::from_millis(150))
            .redis_timeout(Duration::from_millis(50))
    };
    let degraded = FleetSemaphore::start(config("d", FailurePolicy::Degraded), server.client())
        .await
        .unwrap();
    let closed = FleetSemaphore::start(config("c", FailurePolicy::FailClosed), server.client())
        .await
        .unwrap();
    let open = FleetSemaphore::start(config("o", FailurePolicy::FailOpen), server.client())
        .await
        .unwrap();
    // The first call (connecting, loading the script) may outlast the 50 ms
    // timeout on a loaded machine: wait for the claims to be in place.
    let mut first = None;
    assert!(
        wait_for(Duration::from_secs(3), || {
            first = degraded.try_acquire().ok();
            matches!(first, Some(FleetPermit::Leased(_)))
                && closed.stats().redis_available
                && open.stats().redis_available
        })
        .await
    );
    server.kill();
    assert!(
        wait_for(Duration::from_secs(3), || {
            [&degraded, &closed, &open]
                .iter()
                .all(|s| !s.stats().redis_available)
        })
        .await
    );
    // Past the TTL the claims may have lapsed: no leased permit any more.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Degraded: 8 / 4 = 2 local permits, counted.
    let a = degraded.try_acquire().unwrap();
    let b = degraded.try_acquire().unwrap();
    assert!(matches!(
        (&a, &b),
        (FleetPermit::Fallback(_), FleetPermit::Fallback(_))
    ));
    assert_eq!(
        degraded.try_acquire().unwrap_err(),
        SemaphoreRefused::Fallback
    );
    let s = degraded.stats();
    assert_eq!((s.degraded_admitted, s.degraded_refused), (2, 1));
    assert_eq!(
        closed.try_acquire().unwrap_err(),
        SemaphoreRefused::FailClosed
    );
    assert!(matches!(open.try_acquire(), Ok(FleetPermit::FailOpen)));
    // The permit taken before the outage is still held, never revoked.
    assert_eq!(degraded.stats().in_use, 1);
    drop((a, b, first));

    server.restart();
    assert!(
        wait_for(Duration::from_secs(5), || {
            matches!(degraded.try_acquire(), Ok(FleetPermit::Leased(_)))
                && matches!(closed.try_acquire(), Ok(FleetPermit::Leased(_)))
        })
        .await,
        "no recovery: {:?}",
        degraded.stats()
    );
}

#[tokio::test]
async fn bad_semaphore_configurations_are_refused() {
    let client = redis::Client::open("redis://127.0.0.1:1/").unwrap();
    for config in [
        SemaphoreConfig::new("ok", 0),
        SemaphoreConfig::new("a}b", 3),
        SemaphoreConfig::new("ok", 3).max_share(0),
        SemaphoreConfig::new("ok", 3).expected_instances(0),
        SemaphoreConfig::new("ok", 3).ttl(Duration::from_millis(50)),
        SemaphoreConfig::new("ok", u32::MAX),
    ] {
        assert!(FleetSemaphore::start(config, client.clone()).await.is_err());
    }
}
