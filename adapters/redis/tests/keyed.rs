//! Keyed fleet quotas against a real `redis-server`: a new key's first
//! requests, the lease per key, TTLs, Cluster hash tags in key names, the
//! memory cap and eviction giving tokens back, shutdown, a wrong key type,
//! the failure policy, and 4 keys shared by two limiters within the bound.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::Commands;
use tenlives_engine::rate::Quota;
use tenlives_redis::gcra::{GcraParams, Reference};
use tenlives_redis::key::{key_slot, keyed_rate_key};
use tenlives_redis::{
    Admitted, FailurePolicy, FleetConfig, KeyedAdmitted, KeyedFleetConfig, KeyedFleetLimiter,
    KeyedFleetStats, KeyedRefused, Refused,
};

use common::{RedisServer, keyed_accounted, keyed_balanced, wait_for};

/// Every token Redis granted went to a debt or a lease, and every lease
/// token is held, spent, given back or lost — once no pipeline is in
/// flight: a give-back under way has taken its tokens out of the leases but
/// not yet counted them returned or lost, and `stats` reads its counters one
/// at a time. The background task keeps refreshing, so the identity must
/// hold again within a second; a token really lost never lets it.
/// The identity in the final view `shutdown` returns holds exactly.
fn exact(s: &KeyedFleetStats) {
    assert!(keyed_balanced(s), "{s:?}");
}

async fn start(server: &RedisServer, config: KeyedFleetConfig) -> KeyedFleetLimiter<String> {
    KeyedFleetLimiter::start(config, server.client())
        .await
        .unwrap()
}

fn fleet(name: &str, quota: Quota) -> FleetConfig {
    FleetConfig::new(name, quota)
        .refresh_interval(Duration::from_millis(20))
        .lease_duration(Duration::from_secs(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_is_admitted_from_its_allowance_then_charged_and_leased() {
    let server = RedisServer::start();
    // 100 a minute, burst 40: nothing refills noticeably during the test.
    let quota = Quota::per_minute(100).unwrap().with_burst(40).unwrap();
    let config = KeyedFleetConfig::new(
        fleet("api", quota).expected_instances(4).initial_lease(8),
        16,
    );
    let limiter = start(&server, config).await;
    let alice = "alice".to_owned();
    assert_eq!(limiter.lease_of(&alice), None);
    // The allowance before the lease: burst / expected instances = 10.
    let mut provisional = 0;
    while limiter.try_acquire(&alice) == Ok(KeyedAdmitted::NewKey) {
        provisional += 1;
    }
    assert_eq!(provisional, 10);
    assert!(matches!(
        limiter.try_acquire(&alice),
        Err(KeyedRefused::NewKey(_))
    ));
    // The task installs the key, charges the 10 to Redis and leases 8.
    assert!(
        wait_for(Duration::from_secs(2), || limiter.lease_of(&alice)
            == Some(8))
        .await
    );
    let s = limiter.stats();
    assert_eq!((s.keys, s.provisional, s.charged), (1, 10, 10), "{s:?}");
    keyed_accounted(&limiter).await;
    assert_eq!(
        limiter.try_acquire(&alice),
        Ok(KeyedAdmitted::Fleet(Admitted::Lease))
    );
    // Redis holds the key, under its hash-tagged name, with a TTL: booked
    // 18 tokens ahead of 40, so it expires when they have refilled.
    let mut con = server.connection();
    let name = "tenlives:{api:alice}:rate";
    let pttl: i64 = con.pttl(name).unwrap();
    let t_ms = 60_000 / 100;
    assert!(
        pttl > 0 && pttl <= 18 * t_ms + 1,
        "PTTL {pttl} of a key booked 18 tokens ahead"
    );
    // What is left in Redis: 40 - 18 (and a token refilled at most).
    let q = GcraParams::from_quota(&quota).unwrap();
    let got: Vec<i64> = tenlives_redis::gcra::script()
        .key(name)
        .arg(q.p)
        .arg(q.r)
        .arg(q.b)
        .arg(40)
        .arg(1)
        .arg(0)
        .invoke(&mut con)
        .unwrap();
    assert!((22..=23).contains(&got[0]), "{got:?}");
    exact(&limiter.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_names_carry_a_hash_tag_per_key_and_braces_are_escaped() {
    let server = RedisServer::start();
    let quota = Quota::per_minute(100).unwrap().with_burst(40).unwrap();
    let limiter = start(&server, KeyedFleetConfig::new(fleet("tags", quota), 16)).await;
    let keys = ["u1", "u2", "we{ird}", "100%"].map(str::to_owned);
    for k in &keys {
        assert_eq!(limiter.try_acquire(k), Ok(KeyedAdmitted::NewKey));
    }
    assert!(
        wait_for(Duration::from_secs(2), || keys
            .iter()
            .all(|k| limiter.lease_of(k).unwrap_or(0) > 0))
        .await
    );
    let mut con = server.connection();
    let mut names: Vec<String> = con.keys("tenlives:*").unwrap();
    names.sort();
    let mut expected: Vec<String> = keys
        .iter()
        .map(|k| keyed_rate_key("tenlives", "tags", k).unwrap())
        .collect();
    expected.sort();
    assert_eq!(names, expected);
    assert!(names.contains(&"tenlives:{tags:we%7Bird%7D}:rate".to_owned()));
    for (name, k) in expected.iter().zip(["100%25", "u1", "u2", "we%7Bird%7D"]) {
        // The slot is the tag's: `name:key` with the key escaped.
        assert_eq!(
            key_slot(name.as_bytes()),
            key_slot(format!("tags:{k}").as_bytes())
        );
        // Each has a TTL.
        let pttl: i64 = con.pttl(name).unwrap();
        assert!(pttl > 0, "{name}: {pttl}");
    }
    exact(&limiter.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_cap_holds_and_evicted_keys_give_their_tokens_back() {
    let server = RedisServer::start();
    let quota = Quota::per_minute(60).unwrap().with_burst(30).unwrap();
    let config = KeyedFleetConfig::new(fleet("cap", quota).initial_lease(10), 4)
        .idle_after(Duration::from_secs(30));
    let limiter = start(&server, config).await;
    let mut max_keys = 0;
    for i in 0..10 {
        let key = format!("k{i}");
        assert_eq!(limiter.try_acquire(&key), Ok(KeyedAdmitted::NewKey));
        // Its debt of 1 charged and a lease of 10 granted (the lease then
        // shrinks to 1 without demand).
        let granted = 11 * (i + 1);
        assert!(
            wait_for(Duration::from_secs(2), || limiter.stats().granted
                == granted)
            .await,
            "{:?}",
            limiter.stats()
        );
        max_keys = max_keys.max(limiter.stats().keys);
    }
    let s = limiter.stats();
    assert_eq!(max_keys, 4);
    assert_eq!((s.keys, s.evicted), (4, 6), "{s:?}");
    // Every key was leased 10 tokens and spent none: an evicted key gave
    // its lease back (what it still held), a resident one without demand
    // shrank to a lease of 1 (the excess went back); nothing is lost.
    assert!(
        wait_for(Duration::from_secs(2), || {
            let s = limiter.stats();
            s.lease_tokens == 4 && s.returned == 96
        })
        .await,
        "{:?}",
        limiter.stats()
    );
    keyed_accounted(&limiter).await;
    // In Redis, an evicted key is booked for its one charged token only.
    let mut con = server.connection();
    let q = GcraParams::from_quota(&quota).unwrap();
    let left: Vec<i64> = tenlives_redis::gcra::script()
        .key("tenlives:{cap:k0}:rate")
        .arg(q.p)
        .arg(q.r)
        .arg(q.b)
        .arg(30)
        .arg(1)
        .arg(0)
        .invoke(&mut con)
        .unwrap();
    assert!((29..=30).contains(&left[0]), "{left:?}");
    // The evicted key is new again: its allowance (burst / 1 = 30, one
    // spent already) decides, and it is charged once more.
    assert_eq!(
        limiter.try_acquire(&"k1".to_owned()),
        Ok(KeyedAdmitted::NewKey)
    );
    exact(&limiter.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keys_are_evicted_and_shutdown_gives_every_lease_back() {
    let server = RedisServer::start();
    let quota = Quota::per_minute(60).unwrap().with_burst(30).unwrap();
    let config = KeyedFleetConfig::new(fleet("idle", quota).initial_lease(10), 64)
        .idle_after(Duration::from_millis(200));
    let limiter = start(&server, config).await;
    let (a, b) = ("a".to_owned(), "b".to_owned());
    limiter.try_acquire(&a).unwrap();
    limiter.try_acquire(&b).unwrap();
    assert!(
        wait_for(Duration::from_secs(2), || limiter.lease_of(&a).unwrap_or(0)
            > 0
            && limiter.lease_of(&b).unwrap_or(0) > 0)
        .await
    );
    // Keep `a` busy (a request every 50 ms); `b` goes idle and is evicted,
    // its lease given back.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(600) {
        let _ = limiter.try_acquire(&a);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(limiter.lease_of(&b), None);
    assert!(limiter.lease_of(&a).is_some());
    let s = limiter.stats();
    assert_eq!(s.evicted, 1, "{s:?}");
    keyed_accounted(&limiter).await;
    // `b` spent nothing beyond its charged first request; `a` spent
    // `s.spent` from its lease after its charged first request.
    let a_used = s.spent + 1;
    exact(&limiter.shutdown().await);
    // Shutdown gave `a`'s lease back: Redis is booked for what `a` used
    // only (less what refilled, one a second).
    let refilled = started.elapsed().as_secs() + 2;
    let mut con = server.connection();
    let q = GcraParams::from_quota(&quota).unwrap();
    let left: Vec<i64> = tenlives_redis::gcra::script()
        .key("tenlives:{idle:a}:rate")
        .arg(q.p)
        .arg(q.r)
        .arg(q.b)
        .arg(30)
        .arg(1)
        .arg(0)
        .invoke(&mut con)
        .unwrap();
    let left = left[0] as u64;
    assert!(
        left >= 30 - a_used && left <= (30 - a_used + refilled).min(30),
        "left {left}, used {a_used}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_the_wrong_type_is_decided_by_the_policy_and_others_are_not() {
    let server = RedisServer::start();
    let mut con = server.connection();
    let _: () = con.set("tenlives:{typed:bad}:rate", "a string").unwrap();
    let quota = Quota::per_second(100).unwrap().with_burst(20).unwrap();
    let config = KeyedFleetConfig::new(fleet("typed", quota).expected_instances(10), 16);
    let limiter = start(&server, config).await;
    let (bad, good) = ("bad".to_owned(), "good".to_owned());
    assert_eq!(limiter.try_acquire(&bad), Ok(KeyedAdmitted::NewKey));
    assert_eq!(limiter.try_acquire(&good), Ok(KeyedAdmitted::NewKey));
    assert!(wait_for(Duration::from_secs(2), || limiter.stats().key_errors > 0).await);
    assert!(
        wait_for(Duration::from_secs(2), || limiter
            .lease_of(&good)
            .unwrap_or(0)
            > 0)
        .await
    );
    // The good key spends its lease; the bad one is decided by the degraded
    // policy (its per-key fallback: burst 20 / 10 = 2, one spent already),
    // counted, while Redis itself stays available.
    assert_eq!(
        limiter.try_acquire(&good),
        Ok(KeyedAdmitted::Fleet(Admitted::Lease))
    );
    let mut fallback = 0;
    for _ in 0..5 {
        match limiter.try_acquire(&bad) {
            Ok(KeyedAdmitted::Fleet(Admitted::Fallback)) => fallback += 1,
            Err(KeyedRefused::Fleet(Refused::Fallback(_))) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(fallback <= 2, "{fallback}");
    let s = limiter.stats();
    assert!(s.redis_available, "{s:?}");
    assert_eq!(s.degraded_admitted + s.degraded_refused, 5, "{s:?}");
    // Fixed in Redis, the key recovers by itself.
    let _: () = con.del("tenlives:{typed:bad}:rate").unwrap();
    assert!(
        wait_for(Duration::from_secs(2), || limiter.try_acquire(&bad)
            == Ok(KeyedAdmitted::Fleet(Admitted::Lease)))
        .await
    );
    exact(&limiter.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_is_the_policy_s_business_for_every_key() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let quota = Quota::per_second(100).unwrap().with_burst(20).unwrap();
    for (policy, expect) in [
        (FailurePolicy::FailOpen, "open"),
        (FailurePolicy::FailClosed, "closed"),
        (FailurePolicy::Degraded, "degraded"),
    ] {
        let config = KeyedFleetConfig::new(fleet("down", quota).policy(policy), 8);
        let limiter = KeyedFleetLimiter::<String>::start(config, client.clone())
            .await
            .unwrap();
        let key = "k".to_owned();
        // The first request is a new key while Redis is thought reachable;
        // once the first pipeline failed, the policy decides.
        let _ = limiter.try_acquire(&key);
        assert!(wait_for(Duration::from_secs(3), || !limiter.stats().redis_available).await);
        let r = limiter.try_acquire(&key);
        match expect {
            "open" => assert_eq!(r, Ok(KeyedAdmitted::Fleet(Admitted::FailOpen))),
            "closed" => assert_eq!(r, Err(KeyedRefused::Fleet(Refused::FailClosed))),
            _ => assert!(
                matches!(
                    r,
                    Ok(KeyedAdmitted::Fleet(Admitted::Fallback))
                        | Err(KeyedRefused::Fleet(Refused::Fallback(_)))
                ),
                "{r:?}"
            ),
        }
        assert!(limiter.stats().degraded_admitted + limiter.stats().degraded_refused >= 1);
        exact(&limiter.shutdown().await);
    }
}

/// Two limiters (two "processes") share 4 keys' quotas under saturating
/// demand: each key's admissions stay within `b + w/T + N·(L + D)`, `D` the
/// debt a process can run up before its first lease for the key (its
/// allowance: `⌊b/E⌋` plus what the allowance's rate adds during the first
/// refreshes); and each key gets most of its quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_keys_shared_by_two_limiters_stay_within_the_bound() {
    let server = RedisServer::start();
    // 200 a second per key, burst 20; E = 2; max_share 0.5 so L = 10.
    let quota = Quota::per_second(200).unwrap().with_burst(20).unwrap();
    let config = || {
        KeyedFleetConfig::new(
            fleet("four", quota).expected_instances(2).max_share(0.5),
            16,
        )
    };
    let limiters = [
        Arc::new(start(&server, config()).await),
        Arc::new(start(&server, config()).await),
    ];
    let keys: Vec<String> = (0..4).map(|i| format!("user{i}")).collect();
    let admitted: Arc<Vec<AtomicU64>> = Arc::new((0..4).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for limiter in &limiters {
        let (limiter, stop, admitted, keys) = (
            Arc::clone(limiter),
            Arc::clone(&stop),
            Arc::clone(&admitted),
            keys.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..5 {
                    for (i, key) in keys.iter().enumerate() {
                        match limiter.try_acquire(key) {
                            Ok(KeyedAdmitted::Fleet(Admitted::Lease) | KeyedAdmitted::NewKey) => {
                                admitted[i].fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(other) => panic!("degraded with Redis up: {other:?}"),
                            Err(
                                KeyedRefused::Fleet(
                                    Refused::QuotaExhausted | Refused::ShareLimited(_),
                                )
                                | KeyedRefused::NewKey(_),
                            ) => {}
                            Err(other) => panic!("unexpected refusal: {other:?}"),
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let w = started.elapsed();
    let ideal = (w.as_micros() * 200 / 1_000_000) as u64;
    // D per process and key: the allowance's burst 10 plus its rate (100/s)
    // over the first three refreshes (60 ms): 6.
    let bound = 20 + ideal + 1 + 2 * (10 + 10 + 6);
    let mut per_key = Vec::new();
    for (i, a) in admitted.iter().enumerate() {
        let a = a.load(Ordering::Relaxed);
        per_key.push(a);
        assert!(a <= bound, "key {i}: admitted {a} > bound {bound} in {w:?}");
        assert!(a * 10 >= ideal * 7, "key {i}: admitted only {a} of {ideal}");
    }
    for l in &limiters {
        let s = l.stats();
        keyed_accounted(l).await;
        assert_eq!(s.keys, 4, "{s:?}");
        assert_eq!(s.degraded_admitted + s.degraded_refused, 0, "{s:?}");
    }
    let pipelines: u64 = limiters.iter().map(|l| l.stats().redis_calls).sum();
    let scripts: u64 = limiters.iter().map(|l| l.stats().scripts).sum();
    eprintln!(
        "admitted per key {per_key:?}, bound {bound}, ideal {ideal}, in {w:?}; \
         {pipelines} pipelines carrying {scripts} script calls"
    );
    // Batching: several keys per round trip.
    assert!(
        scripts > pipelines,
        "{scripts} scripts in {pipelines} pipelines"
    );
    for l in limiters {
        exact(&Arc::into_inner(l).unwrap().shutdown().await);
    }
}

/// A pseudo-random sequence of requests over three keys, with pauses: each
/// key's admissions never exceed what one global GCRA bucket — the
/// reference model, `gcra::Reference`, asked for every token it has every
/// millisecond of the same span — grants, plus the key's allowance before
/// its lease (a burst of `⌊b/E⌋` and the allowance's rate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admissions_per_key_stay_within_one_reference_bucket() {
    let server = RedisServer::start();
    let quota = Quota::per_second(50).unwrap().with_burst(5).unwrap();
    let q = GcraParams::from_quota(&quota).unwrap();
    let limiter = start(
        &server,
        KeyedFleetConfig::new(fleet("model", quota).expected_instances(5), 4),
    )
    .await;
    let keys: Vec<String> = (0..3).map(|i| format!("m{i}")).collect();
    let mut admitted: HashMap<usize, u64> = HashMap::new();
    let started = Instant::now();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..400 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let k = (seed % 3) as usize;
        if limiter.try_acquire(&keys[k]).is_ok() {
            *admitted.entry(k).or_default() += 1;
        }
        if seed.is_multiple_of(4) {
            tokio::time::sleep(Duration::from_millis(1 + seed % 5)).await;
        }
    }
    let elapsed_us = started.elapsed().as_micros() as u64 + 1_000;
    // A fresh reference bucket asked for everything, continuously, grants
    // at most b + elapsed / T; each key's admissions stay within that plus
    // its allowance before the lease (⌊5/5⌋ = 1 token and its rate, 10/s).
    let mut reference = Reference::new();
    let t0 = 1_000_000_000;
    let mut max_grant = reference.decide(&q, t0, 5, 0, 0).granted;
    let mut t = t0;
    while t < t0 + elapsed_us {
        t += 1_000;
        max_grant += reference.decide(&q, t, 5, 0, 0).granted;
    }
    let allowance = 1 + elapsed_us * 10 / 1_000_000 + 1;
    for (k, a) in &admitted {
        assert!(
            *a <= max_grant + allowance,
            "key {k}: {a} > {max_grant} + {allowance}"
        );
    }
    keyed_accounted(&limiter).await;
    exact(&limiter.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_script_is_reloaded_and_loses_no_token() {
    let server = RedisServer::start();
    let quota = Quota::per_second(100).unwrap().with_burst(50).unwrap();
    let limiter = start(
        &server,
        KeyedFleetConfig::new(fleet("flush", quota).initial_lease(10), 8),
    )
    .await;
    let key = "k".to_owned();
    limiter.try_acquire(&key).unwrap();
    assert!(
        wait_for(Duration::from_secs(2), || limiter
            .lease_of(&key)
            .unwrap_or(0)
            > 0)
        .await
    );
    let mut con = server.connection();
    for _ in 0..3 {
        // The script disappears (as after a restart of a Redis that kept
        // its data); the next pipeline meets NOSCRIPT, reloads, carries on.
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut con).unwrap();
        let before = limiter.stats().granted;
        let started = Instant::now();
        while limiter.stats().granted == before {
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{:?}",
                limiter.stats()
            );
            let _ = limiter.try_acquire(&key);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let s = limiter.stats();
    assert!(s.redis_available, "{s:?}");
    assert_eq!((s.key_errors, s.lost, s.redis_errors), (0, 0, 0), "{s:?}");
    keyed_accounted(&limiter).await;
    exact(&limiter.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_degrades_every_key_and_recovers_when_it_returns() {
    let mut server = RedisServer::start();
    // 200 a second, burst 40, E = 4: the fallback is 50/s, burst 10 per key.
    let quota = Quota::per_second(200).unwrap().with_burst(40).unwrap();
    let config = KeyedFleetConfig::new(
        fleet("kill", quota)
            .expected_instances(4)
            .lease_duration(Duration::from_millis(200))
            .redis_timeout(Duration::from_millis(50)),
        8,
    );
    let limiter = start(&server, config).await;
    let keys: Vec<String> = (0..3).map(|i| format!("k{i}")).collect();
    let drive = |limiter: &KeyedFleetLimiter<String>| {
        let mut admitted = 0u64;
        for k in &keys {
            for _ in 0..5 {
                if limiter.try_acquire(k).is_ok() {
                    admitted += 1;
                }
            }
        }
        admitted
    };
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(300) {
        drive(&limiter);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(keys.iter().all(|k| limiter.lease_of(k).is_some()));
    server.kill();
    assert!(wait_for(Duration::from_secs(3), || !limiter.stats().redis_available).await);
    // Degraded: per key, the last lease (at most L = 40), then the fallback
    // (burst 10, 50/s) — over 500 ms at most 40 + 10 + 25 + 1 per key.
    let before = limiter.stats();
    let down = Instant::now();
    let mut admitted = 0;
    while down.elapsed() < Duration::from_millis(500) {
        admitted += drive(&limiter);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed_ms = down.elapsed().as_millis() as u64;
    let bound = 3 * (40 + 10 + elapsed_ms * 50 / 1_000 + 1);
    assert!(admitted <= bound, "{admitted} > {bound}");
    let s = limiter.stats();
    assert!(s.degraded_admitted > before.degraded_admitted, "{s:?}");
    assert!(s.degraded_refused > 0, "{s:?}");
    // Back: leases again within the breaker's open time plus refreshes.
    server.restart();
    let back = Instant::now();
    let mut leased = false;
    while back.elapsed() < Duration::from_secs(3) && !leased {
        leased = keys
            .iter()
            .all(|k| limiter.try_acquire(k) == Ok(KeyedAdmitted::Fleet(Admitted::Lease)));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(leased, "{:?}", limiter.stats());
    eprintln!(
        "degraded: {admitted} admitted (bound {bound}); recovered in {:?}",
        back.elapsed()
    );
    assert!(limiter.stats().redis_available);
    exact(&limiter.shutdown().await);
}

/// A fake server on loopback answering every command of a pipeline with
/// `reply` (one reply per command: it counts the array headers starting a
/// line).
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
async fn a_malformed_reply_is_a_key_error_under_the_policy() {
    let quota = Quota::per_second(100).unwrap().with_burst(10).unwrap();
    // An integer where the script's four were due, and two integers.
    for reply in [&b":7\r\n"[..], &b"*2\r\n:7\r\n:7\r\n"[..]] {
        let port = malformed_server(reply);
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        let config = KeyedFleetConfig::new(
            fleet("garbled", quota)
                .policy(FailurePolicy::FailClosed)
                .redis_timeout(Duration::from_millis(100)),
            8,
        );
        let limiter = KeyedFleetLimiter::<String>::start(config, client)
            .await
            .unwrap();
        let key = "k".to_owned();
        assert_eq!(limiter.try_acquire(&key), Ok(KeyedAdmitted::NewKey));
        assert!(wait_for(Duration::from_secs(2), || limiter.stats().key_errors > 0).await);
        // Nothing was granted; the key is decided by the policy (closed).
        assert_eq!(
            limiter.try_acquire(&key),
            Err(KeyedRefused::Fleet(Refused::FailClosed))
        );
        let s = limiter.stats();
        assert_eq!(s.granted, 0, "{s:?}");
        keyed_accounted(&limiter).await;
        exact(&limiter.shutdown().await);
    }
}

mod property {
    //! Random quotas, allowances and key counts, two limiters sharing the
    //! keys under saturating demand: per key, the fleet's admissions stay
    //! within what one global GCRA bucket — the reference model,
    //! `gcra::Reference` — can grant over the same span, plus each
    //! process's lease and its allowance before the lease (`N·(L + D)`),
    //! and reach most of it.

    use super::*;
    use proptest::prelude::*;

    fn run(rate: u32, burst: u32, instances: u32, keys: usize) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let server = RedisServer::start();
            let quota = Quota::per_second(rate).unwrap().with_burst(burst).unwrap();
            let config = || {
                KeyedFleetConfig::new(
                    fleet("prop", quota)
                        .expected_instances(instances)
                        .max_share(0.5),
                    16,
                )
            };
            let limiters = [
                Arc::new(start(&server, config()).await),
                Arc::new(start(&server, config()).await),
            ];
            let names: Vec<String> = (0..keys).map(|i| format!("p{i}")).collect();
            let admitted: Arc<Vec<AtomicU64>> =
                Arc::new((0..keys).map(|_| AtomicU64::new(0)).collect());
            let stop = Arc::new(AtomicBool::new(false));
            let started = Instant::now();
            let mut tasks = Vec::new();
            for limiter in &limiters {
                let (limiter, stop, admitted, names) = (
                    Arc::clone(limiter),
                    Arc::clone(&stop),
                    Arc::clone(&admitted),
                    names.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..4 {
                            for (i, key) in names.iter().enumerate() {
                                if limiter.try_acquire(key).is_ok() {
                                    admitted[i].fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                t.await.unwrap();
            }
            let w_us = started.elapsed().as_micros() as u64;
            // The reference: one bucket asked for everything it has every
            // 100 µs over the span (plus 1 ms of clock skew).
            let q = GcraParams::from_quota(&quota).unwrap();
            let mut reference = Reference::new();
            let t0 = 1_000_000_000_000;
            let mut max_grant = 0;
            let mut t = t0;
            while t <= t0 + w_us + 1_000 {
                max_grant += reference.decide(&q, t, u64::from(burst), 0, 0).granted;
                t += 100;
            }
            let max_lease = u64::from((burst / 2).max(1));
            let allowance = u64::from((burst / instances).max(1))
                + u64::from((rate / instances).max(1)) * 100 / 1_000
                + 1;
            let bound = max_grant + 2 * (max_lease + allowance);
            let ideal = w_us * u64::from(rate) / 1_000_000;
            for (i, a) in admitted.iter().enumerate() {
                let a = a.load(Ordering::Relaxed);
                assert!(
                    a <= bound,
                    "key {i}: {a} > {bound} (reference {max_grant}) for {rate}/s b {burst} E {instances}"
                );
                assert!(
                    a * 10 >= ideal * 6,
                    "key {i}: only {a} of {ideal} for {rate}/s b {burst} E {instances}"
                );
            }
            for l in &limiters {
                keyed_accounted(l).await;
            }
            for l in limiters {
                exact(&Arc::into_inner(l).unwrap().shutdown().await);
            }
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 5, ..ProptestConfig::default() })]

        #[test]
        fn per_key_admissions_stay_within_one_reference_bucket(
            rate in 100u32..400,
            burst_div in 4u32..10,
            instances in 1u32..4,
            keys in 1usize..5,
        ) {
            // The burst covers a refresh interval's refill for the fleet
            // (b ≥ rate · I / max_share with I = 20 ms).
            let burst = (rate / burst_div).max(rate / 25 + 1);
            run(rate, burst, instances, keys);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_churn_stays_within_the_capacity_and_accounts_for_every_token() {
    let server = RedisServer::start();
    let quota = Quota::per_second(50).unwrap().with_burst(10).unwrap();
    let limiter = start(
        &server,
        KeyedFleetConfig::new(fleet("churn", quota).initial_lease(4), 32),
    )
    .await;
    let mut max_keys = 0;
    let mut admitted = 0u64;
    // 400 distinct keys, a few requests each, one key every 2 ms.
    for i in 0..400 {
        let key = format!("c{i}");
        for _ in 0..3 {
            if limiter.try_acquire(&key).is_ok() {
                admitted += 1;
            }
        }
        max_keys = max_keys.max(limiter.stats().keys);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = limiter.stats();
    assert!(max_keys <= 32, "{max_keys} keys resident");
    assert!(s.evicted >= 400 - 32, "{s:?}");
    assert!(admitted >= 400, "{admitted}");
    keyed_accounted(&limiter).await;
    exact(&limiter.shutdown().await);
}
