//! The engine on embassy, run on the host.
//!
//! A circuit breaker, a rate limiter and an event ring live in `static`
//! storage (the ring's slots are a `static` array; the breaker and limiter,
//! whose constructors validate a configuration, are placed in `StaticCell`s
//! once). Three client tasks on embassy's executor call a simulated upstream
//! through them: each call first waits for a rate-limiter token
//! (`tenlives_futures::acquire` over [`EmbassyTimer`], embassy-time's timer),
//! then runs guarded by the breaker (`tenlives_futures::guard`). The upstream
//! has an outage: the calls that reach it from the 20th to the 29th fail.
//! The breaker opens, probes, and closes again once the upstream is back.
//! (The outage is counted in calls, not in time, so that a slow or loaded
//! machine cannot let the clients step over it.) A monitor task
//! drains the event ring and prints each breaker transition as it happens.
//!
//! Bounded (90 calls at 100 per second, about a second), it prints a summary
//! and exits 0 when the run's checks hold, 1 when one does not:
//!
//! ```text
//! cargo run -p tenlives-example-embassy
//! ```
//!
//! Nothing here needs `std` but the host's executor and time driver (and the
//! printing): on a microcontroller, the same code runs on embassy's
//! Cortex-M executor and the chip's time driver.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use core::time::Duration;
use std::process::ExitCode;

use embassy_executor::{Executor, Spawner};
use static_cell::StaticCell;
use tenlives_engine::breaker::{BreakerConfig, BreakerState, CircuitBreaker, Outcome};
use tenlives_engine::events::{EventKind, EventRing, Received, Slot};
use tenlives_engine::rate::{Quota, RateLimiter};
use tenlives_engine::time::{Clock, Timestamp};
use tenlives_example_embassy::EmbassyTimer;
use tenlives_futures::{acquire, guard};

/// Client tasks, and calls each makes.
const CLIENTS: usize = 3;
const CALLS_PER_CLIENT: u32 = 30;
/// The rate limiter: 100 calls per second, bursts of 5.
const RATE_PER_SECOND: u32 = 100;
const BURST: u32 = 5;
/// The upstream fails the calls that reach it with these sequence numbers
/// (from 0), and takes this long per call.
const OUTAGE: core::ops::Range<u32> = 20..30;
const UPSTREAM_LATENCY_MS: u64 = 2;
/// How long a call waits for a token before giving up.
const TOKEN_WAIT: Duration = Duration::from_secs(1);
/// Event sources (the `source` field of the events).
const BREAKER_SOURCE: u32 = 1;
const LIMITER_SOURCE: u32 = 2;

type Ring = EventRing<&'static [Slot]>;

static SLOTS: [Slot; 128] = [const { Slot::new() }; 128];
static RING: StaticCell<Ring> = StaticCell::new();
static BREAKER: StaticCell<CircuitBreaker<&'static Ring>> = StaticCell::new();
static LIMITER: StaticCell<RateLimiter<&'static Ring>> = StaticCell::new();
static EXECUTOR: StaticCell<Executor> = StaticCell::new();

/// What the clients saw. ordering (all counters and flags): Relaxed; each is
/// read by `main` only after the executor has stopped, on the same thread
/// that ran every task (embassy's std executor is single-threaded).
static SUCCEEDED: AtomicU32 = AtomicU32::new(0);
static FAILED: AtomicU32 = AtomicU32::new(0);
static REJECTED: AtomicU32 = AtomicU32::new(0);
static NO_TOKEN: AtomicU32 = AtomicU32::new(0);
static CLIENTS_DONE: AtomicU32 = AtomicU32::new(0);
static MONITOR_DONE: AtomicBool = AtomicBool::new(false);

/// What the monitor read from the ring (same ordering rule as above).
static OPENED: AtomicU32 = AtomicU32::new(0);
static HALF_OPENED: AtomicU32 = AtomicU32::new(0);
static CLOSED: AtomicU32 = AtomicU32::new(0);
static SEEN_REJECTED: AtomicU32 = AtomicU32::new(0);
static RATE_LIMITED: AtomicU32 = AtomicU32::new(0);
static READ: AtomicU64 = AtomicU64::new(0);
static LOST: AtomicU64 = AtomicU64::new(0);

fn bump(counter: &AtomicU32) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Calls that reached the upstream (same ordering rule as above).
static UPSTREAM_CALLS: AtomicU32 = AtomicU32::new(0);

/// The simulated upstream: `UPSTREAM_LATENCY_MS` of work, failing the calls
/// numbered in `OUTAGE`.
async fn upstream() -> Result<(), ()> {
    let number = UPSTREAM_CALLS.fetch_add(1, Ordering::Relaxed);
    embassy_time::Timer::after_millis(UPSTREAM_LATENCY_MS).await;
    if OUTAGE.contains(&number) {
        Err(())
    } else {
        Ok(())
    }
}

#[embassy_executor::task(pool_size = CLIENTS)]
async fn client(
    breaker: &'static CircuitBreaker<&'static Ring>,
    limiter: &'static RateLimiter<&'static Ring>,
) {
    let timer = EmbassyTimer;
    for _ in 0..CALLS_PER_CLIENT {
        let deadline = timer.now().saturating_add(TOKEN_WAIT);
        if acquire(limiter, &timer, deadline).await.is_err() {
            NO_TOKEN.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let classify = |r: &Result<(), ()>| match r {
            Ok(()) => Outcome::Success,
            Err(()) => Outcome::Failure,
        };
        let counter = match guard(breaker, timer, classify, upstream()).await {
            Ok(Ok(())) => &SUCCEEDED,
            Ok(Err(())) => &FAILED,
            Err(_rejected) => &REJECTED,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    CLIENTS_DONE.fetch_add(1, Ordering::Relaxed);
}

#[embassy_executor::task]
async fn monitor(ring: &'static Ring, start: Timestamp) {
    let mut consumer = ring.consumer();
    loop {
        // Read the clients' count before draining: once all are done, this
        // drain sees every event they emitted.
        let finished = CLIENTS_DONE.load(Ordering::Relaxed) == CLIENTS as u32;
        while let Some(received) = consumer.try_recv() {
            let event = match received {
                Received::Event(event) => event,
                Received::Lost(n) => {
                    println!("monitor: {n} events overwritten before they were read");
                    continue;
                }
                // A kind of receipt this version does not know.
                _ => continue,
            };
            let at_ms = event.time.saturating_duration_since(start).as_millis();
            match event.kind {
                EventKind::BREAKER_OPENED => {
                    bump(&OPENED);
                    let open_ms = Duration::from_nanos(event.payload[1]).as_millis();
                    println!(
                        "{at_ms:>5} ms  breaker opened (trip {}, open for {open_ms} ms)",
                        event.payload[0] >> 32
                    );
                }
                EventKind::BREAKER_HALF_OPENED => {
                    bump(&HALF_OPENED);
                    println!(
                        "{at_ms:>5} ms  breaker half-open: {} probe(s) allowed",
                        event.payload[1]
                    );
                }
                EventKind::BREAKER_CLOSED => {
                    bump(&CLOSED);
                    println!(
                        "{at_ms:>5} ms  breaker closed ({} probe(s) succeeded)",
                        event.payload[0]
                    );
                }
                EventKind::BREAKER_REJECTED => bump(&SEEN_REJECTED),
                EventKind::RATE_LIMITED => bump(&RATE_LIMITED),
                other => println!("{at_ms:>5} ms  event {other:?}"),
            }
        }
        if finished {
            READ.store(consumer.read(), Ordering::Relaxed);
            LOST.store(consumer.lost(), Ordering::Relaxed);
            MONITOR_DONE.store(true, Ordering::Relaxed);
            return;
        }
        embassy_time::Timer::after_millis(2).await;
    }
}

/// The engine's parts, built once into their static cells.
struct Parts {
    ring: &'static Ring,
    breaker: &'static CircuitBreaker<&'static Ring>,
    limiter: &'static RateLimiter<&'static Ring>,
}

fn build() -> Result<Parts, &'static str> {
    let ring: &'static Ring =
        RING.init(EventRing::from_slots(&SLOTS[..]).map_err(|_| "ring slots")?);
    let config = BreakerConfig::builder()
        .without_failure_rate()
        .consecutive_failures(5)
        .open_duration(Duration::from_millis(50))
        .half_open_probes(2)
        .build()
        .map_err(|_| "breaker configuration")?;
    let breaker = BREAKER.init(CircuitBreaker::with_sink(config, ring, BREAKER_SOURCE));
    let quota = Quota::per_second(RATE_PER_SECOND)
        .and_then(|q| q.with_burst(BURST))
        .map_err(|_| "quota")?;
    let limiter = LIMITER.init(RateLimiter::with_sink(quota, ring, LIMITER_SOURCE));
    Ok(Parts {
        ring,
        breaker,
        limiter,
    })
}

fn spawn_all(spawner: Spawner, parts: &Parts, start: Timestamp) -> Result<(), &'static str> {
    spawner.spawn(monitor(parts.ring, start).map_err(|_| "monitor task")?);
    for _ in 0..CLIENTS {
        spawner.spawn(client(parts.breaker, parts.limiter).map_err(|_| "client task")?);
    }
    Ok(())
}

fn main() -> ExitCode {
    let parts = match build() {
        Ok(parts) => parts,
        Err(what) => {
            eprintln!("setup failed: {what}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "{CLIENTS} clients x {CALLS_PER_CLIENT} calls, {RATE_PER_SECOND}/s (burst {BURST}), upstream fails calls #{} to #{}",
        OUTAGE.start,
        OUTAGE.end - 1
    );
    let start = EmbassyTimer.now();
    let executor = EXECUTOR.init(Executor::new());
    let mut spawned = Ok(());
    executor.run_until(
        |spawner| spawned = spawn_all(spawner, &parts, start),
        || MONITOR_DONE.load(Ordering::Relaxed),
    );
    if let Err(what) = spawned {
        eprintln!("setup failed: {what}");
        return ExitCode::FAILURE;
    }
    let elapsed = EmbassyTimer.now().saturating_duration_since(start);
    let load = |c: &AtomicU32| c.load(Ordering::Relaxed);
    let (ok, failed, rejected, no_token) = (
        load(&SUCCEEDED),
        load(&FAILED),
        load(&REJECTED),
        load(&NO_TOKEN),
    );
    let (opened, half_opened, closed) = (load(&OPENED), load(&HALF_OPENED), load(&CLOSED));
    let (read, lost) = (READ.load(Ordering::Relaxed), LOST.load(Ordering::Relaxed));
    let emitted = parts.ring.emitted();

    println!(
        "\nin {} ms: {ok} succeeded, {failed} failed, {rejected} rejected by the breaker, {no_token} without a token",
        elapsed.as_millis()
    );
    println!(
        "events: {read} read, {lost} lost, {emitted} emitted; breaker opened {opened}, half-opened {half_opened}, closed {closed}, rejected {}; rate limited {}",
        load(&SEEN_REJECTED),
        load(&RATE_LIMITED)
    );

    let calls = CLIENTS as u32 * CALLS_PER_CLIENT;
    let admitted = ok + failed + rejected;
    // GCRA: at most the burst plus the rate times the time elapsed.
    let allowed = u128::from(BURST) + u128::from(RATE_PER_SECOND) * elapsed.as_millis() / 1000 + 1;
    let checks = [
        ("every call is accounted for", admitted + no_token == calls),
        ("the limiter held its rate", u128::from(admitted) <= allowed),
        (
            "every emitted event was read or counted lost",
            read + lost == emitted,
        ),
        (
            "the outage opened the breaker",
            opened >= 1 && failed >= 5 && failed <= OUTAGE.len() as u32,
        ),
        ("calls were rejected while it was open", rejected >= 1),
        (
            "it closed again once the upstream was back",
            parts.breaker.state() == BreakerState::Closed && closed >= 1,
        ),
    ];
    let mut all = true;
    for (what, holds) in checks {
        println!("  [{}] {what}", if holds { "ok" } else { "FAILED" });
        all &= holds;
    }
    if all {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
