//! The Lua script against a real `redis-server`: its decisions equal the
//! exact Rust reference for random quotas and request sequences, its keys
//! expire when the bucket is full again, and bad input gets an error, never
//! a wrong answer.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use redis::{Commands, Script};
use tenlives_engine::rate::Quota;
use tenlives_redis::gcra::{self, GcraParams, Reference, Reply};

use common::RedisServer;

/// Each test starts its own server (a static one would never be dropped,
/// so never killed).
fn server() -> RedisServer {
    RedisServer::start()
}

fn fresh_key() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("test:{{q{}}}:rate", N.fetch_add(1, Ordering::Relaxed))
}

fn eval(
    con: &mut redis::Connection,
    script: &Script,
    key: &str,
    q: &GcraParams,
    want: u64,
    min: u64,
    ret: u64,
) -> redis::RedisResult<Vec<i64>> {
    script
        .key(key)
        .arg(q.p)
        .arg(q.r)
        .arg(q.b)
        .arg(want)
        .arg(min)
        .arg(ret)
        .invoke(con)
}

fn reply(values: &[i64]) -> Reply {
    assert_eq!(values.len(), 4, "{values:?}");
    Reply {
        granted: values[0] as u64,
        ahead: values[1] as u64,
        wait_us: u64::try_from(values[2]).ok(),
        now_us: values[3] as u64,
    }
}

fn quota() -> impl Strategy<Value = GcraParams> {
    (
        1u32..=50_000,
        prop::sample::select(vec![1_000u64, 3_000, 7_919, 1_000_000, 60_000_000]),
        1u32..=100,
    )
        .prop_map(|(rate, period_us, burst)| {
            let quota = Quota::new(rate, Duration::from_micros(period_us))
                .unwrap()
                .with_burst(burst)
                .unwrap();
            GcraParams::from_quota(&quota).unwrap()
        })
}

thread_local! {
    // One server for the property's cases, on the test's thread; dropped
    // (killed) when the thread ends.
    static SERVER: RedisServer = RedisServer::start();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Every reply — tokens granted, time booked ahead, wait — equals the
    /// 128-bit reference fed the same server time, call after call; and the
    /// key exists while the bucket is booked ahead (with a TTL) and not once
    /// it is full.
    #[test]
    fn script_decisions_equal_the_reference(
        q in quota(),
        ops in prop::collection::vec((0u64..=120, 0u64..=120, 0u64..=120), 1..30),
    ) {
        let mut con = SERVER.with(RedisServer::connection);
        let script = gcra::script();
        let key = fresh_key();
        let mut model = Reference::new();
        for (want, min, ret) in ops {
            let want = want % (q.b + 1);
            let min = min % (want + 1);
            let ret = ret % (q.b + 1);
            let got = reply(&eval(&mut con, &script, &key, &q, want, min, ret).unwrap());
            let expected = model.decide(&q, got.now_us, want, min, ret);
            prop_assert_eq!(got, expected, "quota {:?} want {} min {} ret {}", q, want, min, ret);
            let exists: bool = con.exists(&key).unwrap();
            if got.ahead == 0 {
                prop_assert!(!exists, "a full bucket kept its key");
            } else if got.ahead / q.r >= 50_000 {
                // Booked at least 50 ms ahead: the key cannot have expired
                // in the moment since the call.
                prop_assert!(exists, "a booked key is gone");
            }
            if exists {
                let pttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut con).unwrap();
                // -1: no TTL. (0 or -2: expiring or gone within the
                // millisecond since EXISTS.)
                prop_assert!(pttl != -1, "a key without a TTL");
            }
        }
    }
}

#[test]
fn a_full_bucket_deletes_its_key_and_a_booked_one_expires() {
    let server = server();
    let mut con = server.connection();
    let script = gcra::script();
    let key = fresh_key();
    // 10 per 100 ms, burst 5: T = 10 ms.
    let q = GcraParams::from_quota(
        &Quota::new(10, Duration::from_millis(100))
            .unwrap()
            .with_burst(5)
            .unwrap(),
    )
    .unwrap();
    let r = reply(&eval(&mut con, &script, &key, &q, 3, 1, 0).unwrap());
    assert_eq!(r.granted, 3);
    let pttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut con).unwrap();
    // Booked 30 ms ahead: the key lives about that long, not longer.
    assert!((1..=31).contains(&pttl), "pttl {pttl}");
    // Giving everything back makes the bucket full: the key goes.
    let r = reply(&eval(&mut con, &script, &key, &q, 0, 0, 5).unwrap());
    assert_eq!((r.granted, r.ahead), (0, 0));
    let exists: bool = con.exists(&key).unwrap();
    assert!(!exists);
    // And a booked key disappears by itself once its time has passed.
    eval(&mut con, &script, &key, &q, 1, 1, 0).unwrap();
    std::thread::sleep(Duration::from_millis(40));
    let exists: bool = con.exists(&key).unwrap();
    assert!(!exists, "the key outlived its booking");
}

#[test]
fn a_missing_script_is_loaded_again_after_a_flush() {
    // A server of its own: a flush racing another test's EVALSHA, between
    // its reload and its retry, would fail that call (once; a limiter's
    // next refresh reloads it again).
    let own = RedisServer::start();
    let mut con = own.connection();
    let script = gcra::script();
    let key = fresh_key();
    let q = GcraParams::from_quota(&Quota::per_second(100).unwrap()).unwrap();
    eval(&mut con, &script, &key, &q, 1, 1, 0).unwrap();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut con).unwrap();
    // EVALSHA now answers NOSCRIPT; the invocation loads the script again.
    let r = reply(&eval(&mut con, &script, &key, &q, 1, 1, 0).unwrap());
    assert_eq!(r.granted, 1);
}

#[test]
fn bad_input_is_an_error_not_an_answer() {
    let server = server();
    let mut con = server.connection();
    let script = gcra::script();
    let q =
        GcraParams::from_quota(&Quota::per_second(100).unwrap().with_burst(10).unwrap()).unwrap();

    // A key of the wrong type.
    let key = fresh_key();
    let _: () = con.set(&key, "not a hash").unwrap();
    let err = eval(&mut con, &script, &key, &q, 1, 1, 0).unwrap_err();
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");

    // A hash with garbage in it.
    let key = fresh_key();
    let _: () = con
        .hset_multiple(&key, &[("us", "abc"), ("fr", "0"), ("r", "1")])
        .unwrap();
    let err = eval(&mut con, &script, &key, &q, 1, 1, 0).unwrap_err();
    assert!(err.to_string().contains("malformed"), "{err}");

    // Arguments out of range: more than the burst, min above want, a
    // fraction, a negative number, b·P beyond 2^53.
    let key = fresh_key();
    for (want, min, ret) in [
        ("11", "1", "0"),
        ("2", "3", "0"),
        ("1.5", "1", "0"),
        ("1", "1", "-1"),
    ] {
        let err = script
            .key(&key)
            .arg(q.p)
            .arg(q.r)
            .arg(q.b)
            .arg(want)
            .arg(min)
            .arg(ret)
            .invoke::<Vec<i64>>(&mut con)
            .unwrap_err();
        assert!(
            err.to_string().contains("bad arguments"),
            "{want} {min} {ret}: {err}"
        );
    }
    let err = script
        .key(&key)
        .arg(1u64 << 40)
        .arg(1)
        .arg(1u64 << 20)
        .arg(1)
        .arg(1)
        .arg(0)
        .invoke::<Vec<i64>>(&mut con)
        .unwrap_err();
    assert!(err.to_string().contains("bad arguments"), "{err}");
    // Nothing was written by the refused calls.
    let exists: bool = con.exists(&key).unwrap();
    assert!(!exists);
}

#[test]
fn sixteen_digit_microsecond_times_are_stored_exactly() {
    // Lua's default number format (%.14g) would round the stored time to
    // 10 µs or worse; the script writes %.0f. Booking far ahead and reading
    // the field back shows every digit survived.
    let server = server();
    let mut con = server.connection();
    let script = gcra::script();
    let key = fresh_key();
    let q = GcraParams::from_quota(&Quota::per_hour(3).unwrap()).unwrap();
    let r = reply(&eval(&mut con, &script, &key, &q, 1, 1, 0).unwrap());
    let us: String = con.hget(&key, "us").unwrap();
    let fr: String = con.hget(&key, "fr").unwrap();
    let tat = u128::from(us.parse::<u64>().unwrap()) * u128::from(q.r)
        + u128::from(fr.parse::<u64>().unwrap());
    assert_eq!(
        tat,
        u128::from(r.now_us) * u128::from(q.r) + u128::from(r.ahead)
    );
    assert!(us.len() >= 16, "{us}");
}

#[test]
fn a_clock_stepped_back_locks_out_for_at_most_two_bursts() {
    // A booking an hour ahead of Redis's clock is what a clock stepped back
    // by an hour leaves behind. The script caps it at 2·b·T: callers wait at
    // most two bursts' worth of time, not an hour.
    let server = server();
    let mut con = server.connection();
    let script = gcra::script();
    let key = fresh_key();
    // 10 a second, burst 5: T = 100 ms, 2·b·T = 1 s.
    let q = GcraParams::from_quota(&Quota::per_second(10).unwrap().with_burst(5).unwrap()).unwrap();
    let now = reply(&eval(&mut con, &script, &key, &q, 0, 0, 0).unwrap()).now_us;
    let ahead = now + 3_600_000_000;
    let _: () = con
        .hset_multiple(
            &key,
            &[
                ("us", ahead.to_string()),
                ("fr", "0".into()),
                ("r", q.r.to_string()),
            ],
        )
        .unwrap();
    let r = reply(&eval(&mut con, &script, &key, &q, 1, 1, 0).unwrap());
    assert_eq!(r.granted, 0);
    assert_eq!(r.ahead, 2 * q.b * q.p);
    // Until min = 1 fits: 2·b·T − (b − 1)·T = 600 ms.
    assert_eq!(r.wait_us, Some(600_000));
}

/// The semaphore script's reference: holders with a claim and a lapse
/// instant (µs); lapsed holders are dropped first, a shrink is granted, a
/// growth up to what the others leave free and never below the holder's
/// current claim.
#[derive(Default)]
struct SemaphoreModel {
    holders: std::collections::BTreeMap<u8, (u64, u64)>,
}

impl SemaphoreModel {
    fn call(&mut self, limit: u64, holder: u8, want: u64, ttl_ms: u64, now: u64) -> (u64, u64) {
        self.holders.retain(|_, &mut (_, lapse)| lapse > now);
        let total: u64 = self.holders.values().map(|&(n, _)| n).sum();
        let cur = self.holders.get(&holder).map_or(0, |&(n, _)| n);
        let free = limit.saturating_sub(total - cur);
        let new = if want > cur {
            want.min(cur.max(free))
        } else {
            want
        };
        if new == 0 {
            self.holders.remove(&holder);
        } else {
            self.holders.insert(holder, (new, now + ttl_ms * 1_000));
        }
        (new, total - cur + new)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Claims granted and totals equal the reference fed the server's time,
    /// and the live claims never sum to more than the limit.
    #[test]
    fn semaphore_claims_equal_the_reference(
        limit in 1u64..=10,
        ops in prop::collection::vec((0u8..5, 0u64..=10, 1u64..=20, 0u64..=3), 1..40),
    ) {
        let mut con = SERVER.with(RedisServer::connection);
        let script = tenlives_redis::semaphore::semaphore_script();
        let n = fresh_key();
        let (hash, zset) = (format!("{n}:sem"), format!("{n}:sem:ttl"));
        let mut model = SemaphoreModel::default();
        for (holder, want, ttl_ms, pause_ms) in ops {
            if pause_ms > 0 {
                std::thread::sleep(Duration::from_millis(pause_ms));
            }
            let want = want.min(limit);
            let got: Vec<i64> = script
                .key(&hash)
                .key(&zset)
                .arg(limit)
                .arg(format!("h{holder}"))
                .arg(want)
                .arg(ttl_ms)
                .invoke(&mut con)
                .unwrap();
            let expected = model.call(limit, holder, want, ttl_ms, got[2] as u64);
            prop_assert_eq!((got[0] as u64, got[1] as u64), expected);
            prop_assert!(expected.1 <= limit);
        }
    }
}
