//! Bad input from Redis, for the fleet rate limiter and the fleet
//! semaphore, at start and while running: bytes that are not RESP (the
//! chaos proxy's garbage mode), the scripts gone after `SCRIPT FLUSH`
//! (`NOSCRIPT`), a key of the wrong type or with malformed fields, an
//! unreachable address. Each is a failed call under the failure policy (or
//! a reload, for `NOSCRIPT`), never a panic and never an error of the
//! request path; each recovers once the input is good again.

mod common;

use std::time::Duration;

use redis::Commands;
use tenlives_engine::rate::Quota;
use tenlives_redis::{
    Admitted, FailurePolicy, FleetConfig, FleetPermit, FleetRateLimiter, FleetSemaphore, Refused,
    SemaphoreConfig, SemaphoreRefused,
};

use common::proxy::Proxy;
use common::{RedisServer, fleet_accounted, fleet_balanced, wait_for};

/// Every test is bounded: a hang fails it.
const BOUND: Duration = Duration::from_secs(30);
/// Recovery once the input is good again (see `tests/chaos.rs`).
const RECOVERY: Duration = Duration::from_millis(2_000);

/// Spoils a key in Redis.
type Spoil<'a> = Box<dyn Fn(&mut redis::Connection) + 'a>;

async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(BOUND, test)
        .await
        .expect("the test hung past its bound");
}

fn rate(name: &str, policy: FailurePolicy) -> FleetConfig {
    let quota = Quota::per_second(1_000).unwrap().with_burst(100).unwrap();
    FleetConfig::new(name, quota)
        .policy(policy)
        .expected_instances(10)
        .refresh_interval(Duration::from_millis(20))
        .lease_duration(Duration::from_millis(200))
        .redis_timeout(Duration::from_millis(50))
}

fn sem(name: &str, policy: FailurePolicy) -> SemaphoreConfig {
    SemaphoreConfig::new(name, 4)
        .policy(policy)
        .refresh_interval(Duration::from_millis(20))
        .ttl(Duration::from_millis(200))
        .redis_timeout(Duration::from_millis(50))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_replies_are_failed_calls_and_recovery_follows() {
    bounded(async {
        let server = RedisServer::start();
        let proxy = Proxy::start(server.port());
        // At start: the first call reads garbage; start still succeeds.
        proxy.set_garbage(true);
        let limiter =
            FleetRateLimiter::start(rate("garbage", FailurePolicy::FailClosed), proxy.client())
                .await
                .unwrap();
        let semaphore =
            FleetSemaphore::start(sem("garbage", FailurePolicy::FailClosed), proxy.client())
                .await
                .unwrap();
        assert!(!limiter.stats().redis_available, "{:?}", limiter.stats());
        assert!(
            !semaphore.stats().redis_available,
            "{:?}",
            semaphore.stats()
        );
        assert_eq!(limiter.try_acquire(), Err(Refused::FailClosed));
        assert_eq!(
            semaphore.try_acquire().unwrap_err(),
            SemaphoreRefused::FailClosed
        );
        // Good replies again: both recover (the client drops the connection
        // it could not parse and opens a new one).
        proxy.set_garbage(false);
        assert!(
            wait_for(RECOVERY, || limiter.try_acquire() == Ok(Admitted::Lease)).await,
            "the limiter did not recover from garbage: {:?}",
            limiter.stats()
        );
        assert!(
            wait_for(RECOVERY, || matches!(
                semaphore.try_acquire(),
                Ok(FleetPermit::Leased(_))
            ))
            .await,
            "the semaphore did not recover from garbage: {:?}",
            semaphore.stats()
        );
        // While running: garbage again, then good again.
        proxy.set_garbage(true);
        assert!(
            wait_for(Duration::from_secs(3), || !limiter.stats().redis_available
                && !semaphore.stats().redis_available)
            .await,
            "garbage went unnoticed: {:?} {:?}",
            limiter.stats(),
            semaphore.stats()
        );
        proxy.set_garbage(false);
        assert!(
            wait_for(RECOVERY, || limiter.stats().redis_available
                && semaphore.stats().redis_available)
            .await,
            "no recovery: {:?} {:?}",
            limiter.stats(),
            semaphore.stats()
        );
        fleet_accounted(&limiter).await;
        limiter.shutdown().await;
        semaphore.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_flushed_while_running_are_reloaded_without_a_failed_call() {
    bounded(async {
        let server = RedisServer::start();
        let limiter =
            FleetRateLimiter::start(rate("flushed", FailurePolicy::FailClosed), server.client())
                .await
                .unwrap();
        let semaphore =
            FleetSemaphore::start(sem("flushed", FailurePolicy::FailClosed), server.client())
                .await
                .unwrap();
        let mut con = server.connection();
        for _ in 0..3 {
            let calls = (limiter.stats().redis_calls, semaphore.stats().redis_calls);
            let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut con).unwrap();
            let loaded: Vec<bool> = redis::cmd("SCRIPT")
                .arg("EXISTS")
                .arg(tenlives_redis::gcra::script().get_hash())
                .query(&mut con)
                .unwrap();
            assert_eq!(loaded, [false]);
            // A few refreshes later: calls went on (NOSCRIPT answered by
            // loading the script), none failed.
            assert!(
                wait_for(Duration::from_secs(2), || limiter.stats().redis_calls
                    > calls.0 + 2
                    && semaphore.stats().redis_calls > calls.1 + 2)
                .await
            );
            let loaded: Vec<bool> = redis::cmd("SCRIPT")
                .arg("EXISTS")
                .arg(tenlives_redis::gcra::script().get_hash())
                .arg(tenlives_redis::semaphore::semaphore_script().get_hash())
                .query(&mut con)
                .unwrap();
            assert_eq!(loaded, [true, true], "the scripts were not reloaded");
        }
        for (errors, what) in [
            (limiter.stats().redis_errors, "limiter"),
            (semaphore.stats().redis_errors, "semaphore"),
        ] {
            assert_eq!(errors, 0, "{what}: a NOSCRIPT became a failed call");
        }
        assert!(limiter.stats().redis_available && semaphore.stats().redis_available);
        fleet_accounted(&limiter).await;
        limiter.shutdown().await;
        semaphore.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_type_while_running_degrades_the_limiter_until_it_is_fixed() {
    bounded(async {
        let server = RedisServer::start();
        let limiter =
            FleetRateLimiter::start(rate("retyped", FailurePolicy::Degraded), server.client())
                .await
                .unwrap();
        assert!(limiter.stats().redis_available);
        let mut con = server.connection();
        let key = "tenlives:{retyped}:rate";
        // A list where the bucket's hash belongs; then a hash with
        // a field that is not a number.
        for spoil in [
            Box::new(|con: &mut redis::Connection| {
                let _: () = con.del(key).unwrap();
                let _: () = con.rpush(key, "x").unwrap();
            }) as Spoil,
            Box::new(|con: &mut redis::Connection| {
                let _: () = con.del(key).unwrap();
                let _: () = con
                    .hset_multiple(key, &[("us", "soon"), ("fr", "0"), ("r", "1")])
                    .unwrap();
            }),
        ] {
            // Spoil it again at every refresh until the limiter notices
            // (a refresh may delete or rewrite the key in between).
            assert!(
                wait_for(Duration::from_secs(3), || {
                    spoil(&mut con);
                    let _ = limiter.try_acquire();
                    !limiter.stats().redis_available
                })
                .await,
                "a spoiled key went unnoticed: {:?}",
                limiter.stats()
            );
            // The policy decides: the last lease, then the local tenth.
            let before = limiter.stats();
            let mut degraded = 0;
            for _ in 0..200 {
                match limiter.try_acquire() {
                    Ok(Admitted::LastLease | Admitted::Fallback) | Err(Refused::Fallback(_)) => {
                        degraded += 1
                    }
                    Ok(Admitted::Lease) => {}
                    other => panic!("unexpected decision {other:?}"),
                }
            }
            assert!(degraded > 0);
            let after = limiter.stats();
            assert_eq!(
                after.degraded_admitted + after.degraded_refused
                    - before.degraded_admitted
                    - before.degraded_refused,
                degraded
            );
            let _: () = con.del(key).unwrap();
            assert!(
                wait_for(RECOVERY, || limiter.stats().redis_available).await,
                "no recovery once the key was fixed"
            );
        }
        fleet_accounted(&limiter).await;
        limiter.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_type_at_the_semaphore_s_keys_is_a_failed_call() {
    bounded(async {
        let server = RedisServer::start();
        let mut con = server.connection();
        let (hash, zset) = ("tenlives:{typed}:sem", "tenlives:{typed}:sem:ttl");
        // Each spoiled state at start, then fixed.
        let spoils: [(&str, Spoil); 3] = [
            (
                "string at the holders' hash",
                Box::new(|c: &mut redis::Connection| {
                    let _: () = c.set(hash, "x").unwrap();
                }),
            ),
            (
                "string at the lapse set",
                Box::new(|c: &mut redis::Connection| {
                    let _: () = c.set(zset, "x").unwrap();
                }),
            ),
            (
                "a claim that is not a number",
                Box::new(|c: &mut redis::Connection| {
                    let _: () = c.hset(hash, "someone", "many").unwrap();
                }),
            ),
        ];
        for (what, spoil) in spoils {
            let _: () = con.del(&[hash, zset]).unwrap();
            spoil(&mut con);
            let semaphore =
                FleetSemaphore::start(sem("typed", FailurePolicy::Degraded), server.client())
                    .await
                    .unwrap();
            let s = semaphore.stats();
            assert!(!s.redis_available && s.redis_errors >= 1, "{what}: {s:?}");
            // Degraded: the whole limit (one expected instance), locally.
            let permits: Vec<_> = (0..4).map(|_| semaphore.try_acquire().unwrap()).collect();
            assert!(
                permits
                    .iter()
                    .all(|p| matches!(p, FleetPermit::Fallback(_))),
                "{what}"
            );
            assert_eq!(
                semaphore.try_acquire().unwrap_err(),
                SemaphoreRefused::Fallback
            );
            drop(permits);
            let _: () = con.del(&[hash, zset]).unwrap();
            assert!(
                wait_for(RECOVERY, || matches!(
                    semaphore.try_acquire(),
                    Ok(FleetPermit::Leased(_))
                ))
                .await,
                "{what}: no recovery once fixed: {:?}",
                semaphore.stats()
            );
            semaphore.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_address_at_start_and_later_is_the_semaphore_policy_s_business() {
    bounded(async {
        // At start: a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        let semaphore = FleetSemaphore::start(sem("nowhere", FailurePolicy::FailOpen), client)
            .await
            .unwrap();
        assert!(!semaphore.stats().redis_available);
        assert!(matches!(semaphore.try_acquire(), Ok(FleetPermit::FailOpen)));
        assert_eq!(semaphore.stats().degraded_admitted, 1);
        tokio::time::timeout(Duration::from_secs(1), semaphore.shutdown())
            .await
            .expect("shutdown hung on an unreachable address");
        // Later: a proxy in front of a server that goes away for good.
        let server = RedisServer::start();
        let proxy = Proxy::start(server.port());
        let semaphore =
            FleetSemaphore::start(sem("gone", FailurePolicy::FailClosed), proxy.client())
                .await
                .unwrap();
        let limiter =
            FleetRateLimiter::start(rate("gone", FailurePolicy::FailClosed), proxy.client())
                .await
                .unwrap();
        assert!(semaphore.stats().redis_available && limiter.stats().redis_available);
        drop(server);
        proxy.drop_connections();
        assert!(
            wait_for(Duration::from_secs(3), || !semaphore
                .stats()
                .redis_available
                && !limiter.stats().redis_available)
            .await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(
            semaphore.try_acquire().unwrap_err(),
            SemaphoreRefused::FailClosed
        );
        assert_eq!(limiter.try_acquire(), Err(Refused::FailClosed));
        fleet_accounted(&limiter).await;
        let hung = "shutdown hung on an unreachable address";
        tokio::time::timeout(Duration::from_secs(1), semaphore.shutdown())
            .await
            .expect(hung);
        let last = tokio::time::timeout(Duration::from_secs(1), limiter.shutdown())
            .await
            .expect(hung);
        // Redis unreachable: the lease was not given back, but every token
        // is still held, spent, returned or lost.
        assert!(fleet_balanced(&last), "{last:?}");
    })
    .await;
}
