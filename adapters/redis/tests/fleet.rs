//! Several limiters ("processes", each with its own Redis connection)
//! sharing one quota on a real `redis-server`: the fleet never admits more
//! than the global GCRA allows; leases give unused tokens back; Redis killed
//! mid-run makes the failure policy decide, counted and reported; Redis
//! restarted makes the limiters recover by themselves.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::Commands;
use tenlives_engine::events::{EventRing, Received};
use tenlives_engine::rate::Quota;
use tenlives_redis::gcra::{self, GcraParams};
use tenlives_redis::{
    Admitted, FailurePolicy, FleetConfig, FleetRateLimiter, REDIS_DEGRADED, REDIS_RECOVERED,
    REDIS_UNAVAILABLE, Refused,
};

use common::{RedisServer, fleet_accounted, wait_for};

/// Takes `want` tokens (or as many as there are) straight from the quota's
/// key with the script, as another process would.
fn take_directly(server: &RedisServer, name: &str, quota: &Quota, want: u64) -> u64 {
    let q = GcraParams::from_quota(quota).unwrap();
    let mut con = server.connection();
    let reply: Vec<i64> = gcra::script()
        .key(format!("tenlives:{{{name}}}:rate"))
        .arg(q.p)
        .arg(q.r)
        .arg(q.b)
        .arg(want)
        .arg(0)
        .arg(0)
        .invoke(&mut con)
        .unwrap();
    reply[0] as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_sharing_a_quota_stay_within_the_gcra_bound() {
    let server = RedisServer::start();
    // 400 a second, burst 40: T = 2.5 ms. Each process may hold half the
    // burst.
    let quota = Quota::per_second(400).unwrap().with_burst(40).unwrap();
    let started = Instant::now();
    let mut limiters = Vec::new();
    for _ in 0..4 {
        let config = FleetConfig::new("shared", quota)
            .max_share(0.5)
            .refresh_interval(Duration::from_millis(20))
            .lease_duration(Duration::from_millis(500));
        limiters.push(Arc::new(
            FleetRateLimiter::start(config, server.client())
                .await
                .unwrap(),
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for limiter in &limiters {
        let (limiter, stop, admitted) = (
            Arc::clone(limiter),
            Arc::clone(&stop),
            Arc::clone(&admitted),
        );
        // Saturating demand: bursts of 20 attempts every millisecond.
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..20 {
                    match limiter.try_acquire() {
                        Ok(how) => {
                            assert_eq!(how, Admitted::Lease);
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(Refused::QuotaExhausted | Refused::ShareLimited(_)) => {}
                        Err(other) => panic!("unexpected refusal with Redis up: {other}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let admitted = admitted.load(Ordering::Relaxed);
    // Every grant happened on Redis's clock within `elapsed` of the key's
    // first use, and no process spends more than it was granted: at most
    // b + elapsed / T (+1 for the µs rounding of the two clocks).
    let bound = 40 + (elapsed.as_micros() * 400 / 1_000_000) as u64 + 1;
    let spent: u64 = limiters.iter().map(|l| l.stats().spent).sum();
    let granted: u64 = limiters.iter().map(|l| l.stats().granted).sum();
    assert_eq!(spent, admitted);
    assert!(spent <= granted);
    assert!(
        admitted <= bound,
        "admitted {admitted} > bound {bound} in {elapsed:?}"
    );
    // Under-admission: the leases held at the end (at most 4 x 20) and the
    // refresh lag are the slack; the fleet still gets well over half the
    // quota.
    let ideal = (elapsed.as_micros() * 400 / 1_000_000) as u64;
    assert!(admitted * 2 > ideal, "admitted only {admitted} of {ideal}");
    for l in &limiters {
        let s = l.stats();
        assert_eq!(s.degraded_admitted + s.degraded_refused, 0, "{s:?}");
        assert!(s.lease_tokens <= 20, "{s:?}");
        assert_eq!(
            s.lease_tokens + s.spent + s.returned + s.lost,
            s.granted,
            "{s:?}"
        );
    }
    eprintln!(
        "admitted {admitted}, bound {bound}, ideal {ideal}, in {elapsed:?}; redis calls {}",
        limiters.iter().map(|l| l.stats().redis_calls).sum::<u64>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_tokens_go_back_at_shutdown() {
    let server = RedisServer::start();
    // 60 a minute: during the test at most a token or two refills.
    let quota = Quota::per_minute(60).unwrap().with_burst(50).unwrap();
    let config = FleetConfig::new("back", quota).initial_lease(40);
    let started = Instant::now();
    let limiter = FleetRateLimiter::start(config, server.client())
        .await
        .unwrap();
    assert_eq!(limiter.stats().lease_tokens, 40);
    for _ in 0..5 {
        assert_eq!(limiter.try_acquire(), Ok(Admitted::Lease));
    }
    limiter.shutdown().await;
    // The quota lost only the 5 tokens spent: another process gets the rest.
    let refilled = started.elapsed().as_secs() + 1;
    let got = take_directly(&server, "back", &quota, 50);
    assert!((45..=45 + refilled).contains(&got), "got {got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_limiter_gives_its_lease_back_too() {
    let server = RedisServer::start();
    let quota = Quota::per_minute(60).unwrap().with_burst(50).unwrap();
    let config = FleetConfig::new("dropped", quota).initial_lease(30);
    let started = Instant::now();
    let limiter = FleetRateLimiter::start(config, server.client())
        .await
        .unwrap();
    assert_eq!(limiter.try_acquire(), Ok(Admitted::Lease));
    drop(limiter);
    // The task gives the 29 tokens back on its own; another process then
    // finds 49 (plus what refilled).
    let mut got = 0;
    assert!(
        wait_for(Duration::from_secs(2), || {
            got += take_directly(&server, "dropped", &quota, 50);
            got >= 49
        })
        .await,
        "only {got} tokens came back"
    );
    let refilled = started.elapsed().as_secs() + 1;
    assert!(got <= 49 + refilled, "got {got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_above_twice_its_demand_gives_the_excess_back() {
    let server = RedisServer::start();
    let quota = Quota::per_minute(60).unwrap().with_burst(50).unwrap();
    let config = FleetConfig::new("idle", quota)
        .initial_lease(40)
        .refresh_interval(Duration::from_millis(20));
    let started = Instant::now();
    let limiter = FleetRateLimiter::start(config, server.client())
        .await
        .unwrap();
    // No demand: the next refresh sizes the lease to 1 and gives 39 back.
    // The lease shrinks before the give-back is counted: wait for both.
    assert!(
        wait_for(Duration::from_secs(2), || {
            let s = limiter.stats();
            s.lease_tokens == 1 && s.returned == 39
        })
        .await,
        "{:?}",
        limiter.stats()
    );
    let refilled = started.elapsed().as_secs() + 1;
    let got = take_directly(&server, "idle", &quota, 50);
    assert!((49..=49 + refilled).contains(&got), "got {got}");
    drop(limiter);
}

/// Drains the ring, counting events of each kind of interest.
fn count_events(
    consumer: &mut tenlives_engine::events::Consumer<'_, Box<[tenlives_engine::events::Slot]>>,
) -> (u64, u64, u64) {
    let (mut degraded, mut down, mut up) = (0, 0, 0);
    while let Some(received) = consumer.try_recv() {
        if let Received::Event(e) = received {
            match e.kind {
                k if k == REDIS_DEGRADED => degraded += 1,
                k if k == REDIS_UNAVAILABLE => down += 1,
                k if k == REDIS_RECOVERED => up += 1,
                _ => {}
            }
        }
    }
    (degraded, down, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_degrades_to_the_local_share_and_recovers_when_it_returns() {
    let mut server = RedisServer::start();
    let ring = Arc::new(EventRing::with_capacity(1 << 14).unwrap());
    let mut consumer = ring.consumer();
    // 1 000 a second, burst 100; two expected instances: 500 a second,
    // burst 50 each when degraded.
    let quota = Quota::per_second(1_000).unwrap().with_burst(100).unwrap();
    let config = FleetConfig::new("chaos", quota)
        .expected_instances(2)
        .refresh_interval(Duration::from_millis(20))
        .lease_duration(Duration::from_millis(200))
        .redis_timeout(Duration::from_millis(50))
        .events(Arc::clone(&ring), 7);
    let limiter = FleetRateLimiter::start(config, server.client())
        .await
        .unwrap();
    assert!(limiter.stats().redis_available);

    server.kill();
    // Keep asking until the task has noticed.
    assert!(
        wait_for(Duration::from_secs(3), || {
            let _ = limiter.try_acquire();
            !limiter.stats().redis_available
        })
        .await,
        "the limiter never noticed Redis was gone"
    );
    // Spend what is left of the last lease, then decide locally.
    let before = limiter.stats();
    let start = Instant::now();
    let (mut fallback, mut last_lease, mut refused) = (0u64, 0u64, 0u64);
    while start.elapsed() < Duration::from_millis(300) {
        for _ in 0..20 {
            match limiter.try_acquire() {
                Ok(Admitted::Fallback) => fallback += 1,
                Ok(Admitted::LastLease | Admitted::Lease) => last_lease += 1,
                Ok(Admitted::FailOpen) => panic!("degraded policy failed open"),
                Err(Refused::Fallback(_)) => refused += 1,
                Err(other) => panic!("unexpected refusal while degraded: {other}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = start.elapsed();
    // The local limiter admits at most its burst plus its rate over the run.
    let bound = 50 + (elapsed.as_micros() * 500 / 1_000_000) as u64 + 1;
    assert!(fallback <= bound, "fallback admitted {fallback} > {bound}");
    assert!(
        fallback > 0 && refused > 0,
        "fallback {fallback} refused {refused}"
    );
    let after = limiter.stats();
    assert!(
        last_lease <= before.lease_tokens,
        "spent {last_lease} of a last lease of {}",
        before.lease_tokens
    );
    // Every degraded decision was counted.
    assert!(after.degraded_admitted - before.degraded_admitted >= fallback);
    assert!(after.degraded_refused - before.degraded_refused >= refused);
    let (degraded, down, _) = count_events(&mut consumer);
    assert!(
        degraded >= fallback + refused,
        "{degraded} events for {} decisions",
        fallback + refused
    );
    assert_eq!(down, 1);

    server.restart();
    // The breaker probes again within its open duration (500 ms) plus a
    // refresh; the ConnectionManager reconnects by itself.
    assert!(
        wait_for(Duration::from_secs(5), || limiter.stats().redis_available).await,
        "no recovery: {:?}",
        limiter.stats()
    );
    assert!(
        wait_for(Duration::from_secs(2), || limiter.try_acquire()
            == Ok(Admitted::Lease))
        .await,
        "no lease after recovery: {:?}",
        limiter.stats()
    );
    let (_, _, up) = count_events(&mut consumer);
    assert_eq!(up, 1);
    let s = limiter.stats();
    assert_eq!(
        s.lease_tokens + s.spent + s.returned + s.lost,
        s.granted,
        "{s:?}"
    );
    limiter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_and_fail_open_admits_once_the_lease_is_spent() {
    let mut server = RedisServer::start();
    let quota = Quota::per_second(1_000).unwrap().with_burst(100).unwrap();
    let base = |name: &str, policy| {
        FleetConfig::new(name, quota)
            .policy(policy)
            .initial_lease(10)
            .refresh_interval(Duration::from_millis(20))
            .lease_duration(Duration::from_millis(100))
            .redis_timeout(Duration::from_millis(50))
    };
    let closed =
        FleetRateLimiter::start(base("closed", FailurePolicy::FailClosed), server.client())
            .await
            .unwrap();
    let open = FleetRateLimiter::start(base("open", FailurePolicy::FailOpen), server.client())
        .await
        .unwrap();
    server.kill();
    assert!(
        wait_for(Duration::from_secs(3), || {
            !closed.stats().redis_available && !open.stats().redis_available
        })
        .await
    );
    // Past the lease's expiry: its tokens may no longer be spent.
    tokio::time::sleep(Duration::from_millis(150)).await;
    for _ in 0..100 {
        assert_eq!(closed.try_acquire(), Err(Refused::FailClosed));
        assert_eq!(open.try_acquire(), Ok(Admitted::FailOpen));
    }
    assert!(closed.stats().degraded_refused >= 100);
    assert!(open.stats().degraded_admitted >= 100);
    // Every granted token is accounted for exactly once: held, spent,
    // given back, or lost with a call that failed (never put back to be
    // spent again); none was spent past the lease's expiry.
    for limiter in [&closed, &open] {
        let s = limiter.stats();
        assert_eq!(s.spent, 0, "{s:?}");
        fleet_accounted(limiter).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_address_at_start_is_the_policy_s_business() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let quota = Quota::per_second(100).unwrap();
    let config = FleetConfig::new("nowhere", quota)
        .policy(FailurePolicy::FailClosed)
        .redis_timeout(Duration::from_millis(50));
    let limiter = FleetRateLimiter::start(config, client).await.unwrap();
    assert!(!limiter.stats().redis_available);
    assert_eq!(limiter.try_acquire(), Err(Refused::FailClosed));
    assert_eq!(limiter.stats().degraded_refused, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_type_is_a_failed_call_under_the_policy() {
    let server = RedisServer::start();
    let mut con = server.connection();
    let _: () = con.set("tenlives:{typed}:rate", "a string").unwrap();
    let quota = Quota::per_second(100).unwrap().with_burst(10).unwrap();
    let config = FleetConfig::new("typed", quota).expected_instances(10);
    let limiter = FleetRateLimiter::start(config, server.client())
        .await
        .unwrap();
    let s = limiter.stats();
    assert!(!s.redis_available && s.redis_errors == 1, "{s:?}");
    // Degraded: a tenth of the burst, 1 token, locally.
    assert_eq!(limiter.try_acquire(), Ok(Admitted::Fallback));
    assert!(matches!(limiter.try_acquire(), Err(Refused::Fallback(_))));
    // Once the key is fixed, the limiter recovers by itself.
    let _: () = con.del("tenlives:{typed}:rate").unwrap();
    assert!(wait_for(Duration::from_secs(3), || limiter.stats().redis_available).await);
}

#[tokio::test]
async fn bad_configurations_are_refused() {
    let client = redis::Client::open("redis://127.0.0.1:1/").unwrap();
    let quota = Quota::per_second(100).unwrap();
    for config in [
        FleetConfig::new("a{b", quota),
        FleetConfig::new("ok", quota).max_share(0.0),
        FleetConfig::new("ok", quota).max_share(1.5),
        FleetConfig::new("ok", quota).expected_instances(0),
        FleetConfig::new("ok", quota).refresh_interval(Duration::from_secs(3)),
        FleetConfig::new("ok", Quota::new(1, Duration::from_nanos(1_500)).unwrap()),
    ] {
        assert!(
            FleetRateLimiter::start(config, client.clone())
                .await
                .is_err()
        );
    }
}

/// A fake server on loopback that answers every command with `reply`: a
/// malformed reply for the script, which returns four integers.
fn malformed_server(reply: &'static [u8]) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut at_line_start = true;
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    // One reply per command: count the array headers that
                    // start a line.
                    let mut replies = 0;
                    for &b in &buf[..n] {
                        if at_line_start && b == b'*' {
                            replies += 1;
                        }
                        at_line_start = b == b'\n';
                    }
                    for _ in 0..replies {
                        if stream.write_all(reply).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_reply_is_a_failed_call_under_the_policy() {
    let quota = Quota::per_second(100).unwrap();
    let q = GcraParams::from_quota(&quota).unwrap();
    // An integer where an array was due (the client's type check refuses
    // it), and an array of two integers where four were due (the limiter's
    // parse refuses it).
    for (reply, shape) in [
        (&b":7\r\n"[..], None),
        (&b"*2\r\n:7\r\n:7\r\n"[..], Some(vec![7, 7])),
    ] {
        let port = malformed_server(reply);
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        // The connection works and the script's reply arrives, malformed.
        let mut con = client.get_connection().unwrap();
        let raw: redis::RedisResult<Vec<i64>> = gcra::script()
            .key("tenlives:{garbled}:rate")
            .arg(q.p)
            .arg(q.r)
            .arg(q.b)
            .arg(1)
            .arg(1)
            .arg(0)
            .invoke(&mut con);
        match shape {
            None => assert_eq!(raw.unwrap_err().kind(), redis::ErrorKind::Parse),
            Some(values) => assert_eq!(raw.unwrap(), values),
        }
        let config = FleetConfig::new("garbled", quota)
            .policy(FailurePolicy::FailClosed)
            .redis_timeout(Duration::from_millis(100));
        let limiter = FleetRateLimiter::start(config, client).await.unwrap();
        let s = limiter.stats();
        assert!(!s.redis_available, "{s:?}");
        assert_eq!(
            (s.redis_calls, s.redis_errors, s.granted),
            (1, 1, 0),
            "{s:?}"
        );
        assert_eq!(limiter.try_acquire(), Err(Refused::FailClosed));
    }
}
