//! The workload the three examples run, written once against the `Timer`
//! trait: it never names a runtime.
//!
//! Six clients call a flaky backend through a bulkhead of two permits
//! (waiting up to 20 ms for one) and a circuit breaker (two failures in a
//! row open it for 30 ms); a telemetry task prints the breaker's events as
//! they arrive on an `EventStream`. Time is virtual, so every executor
//! prints the same story.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker, Outcome};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::events::{EventKind, EventRing, Received, Slot};
use tenlives_engine::time::{Clock, Timestamp};
use tenlives_futures::{Timer, WakingSink, acquire, guard};

type Sink = Arc<WakingSink<EventRing<Box<[Slot]>>>>;

/// Everything the clients share.
pub struct Scenario<T> {
    pub timer: T,
    sink: Sink,
    breaker: CircuitBreaker<Sink>,
    bulkhead: Bulkhead,
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Clients that start at `5 * id` ms; those in `FAILING` get a backend
/// error, after 14 ms like every call.
const CLIENTS: u64 = 6;
const FAILING: [u64; 3] = [2, 3, 4];
const LATE_CLIENT_AT: u64 = 70;

impl<T: Timer> Scenario<T> {
    pub fn new(timer: T) -> Self {
        let sink: Sink = Arc::new(WakingSink::new(EventRing::with_capacity(64).unwrap()));
        let config = BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(2)
            .open_duration(ms(30))
            .half_open_probes(1)
            .build()
            .unwrap();
        Scenario {
            breaker: CircuitBreaker::with_sink(config, sink.clone(), 1),
            bulkhead: Bulkhead::new(2).unwrap(),
            sink,
            timer,
        }
    }

    fn now_ms(&self) -> u64 {
        self.timer.clock().now().as_nanos() / 1_000_000
    }

    fn at(&self, ms_since_origin: u64) -> Timestamp {
        Timestamp::from_nanos(ms_since_origin * 1_000_000)
    }

    /// The backend: 14 ms, then an answer or an error.
    async fn backend(&self, id: u64) -> Result<u64, &'static str> {
        let done = self.timer.clock().now().saturating_add(ms(14));
        self.timer.sleep_until(done).await;
        if FAILING.contains(&id) {
            Err("backend error")
        } else {
            Ok(id * 10)
        }
    }

    /// One client: wait up to 20 ms for a permit, then call through the
    /// breaker.
    async fn client(&self, id: u64, start: u64) {
        self.timer.sleep_until(self.at(start)).await;
        let deadline = self.at(start + 20);
        let permit = match acquire(&self.bulkhead, &self.timer, deadline).await {
            Ok(permit) => permit,
            Err(e) => {
                println!(
                    "[{:>3} ms] client {id}: gave up waiting for a permit: {e}",
                    self.now_ms()
                );
                return;
            }
        };
        let waited = self.now_ms() - start;
        let classify = |r: &Result<u64, &str>| {
            if r.is_ok() {
                Outcome::Success
            } else {
                Outcome::Failure
            }
        };
        let result = guard(
            &self.breaker,
            self.timer.clock(),
            classify,
            self.backend(id),
        )
        .await;
        drop(permit);
        let what = match result {
            Ok(Ok(answer)) => format!("answered {answer}"),
            Ok(Err(e)) => format!("failed: {e}"),
            Err(rejected) => format!("rejected: {rejected}"),
        };
        println!(
            "[{:>3} ms] client {id}: waited {waited} ms for a permit; {what}",
            self.now_ms()
        );
    }

    /// Every client, concurrently in one task; then closes the event stream.
    pub async fn clients(&self) {
        futures::join!(
            self.client(0, 0),
            self.client(1, 5),
            self.client(2, 10),
            self.client(3, 15),
            self.client(4, 20),
            self.client(5, 25),
            self.client(CLIENTS, LATE_CLIENT_AT),
        );
        self.sink.close();
    }

    /// Prints the breaker's events as they arrive, until the stream closes.
    pub async fn telemetry(&self) {
        let mut events = self.sink.stream().expect("the only stream");
        while let Some(item) = events.next().await {
            let Received::Event(e) = item else {
                println!("[{:>3} ms] telemetry: lost {item:?}", self.now_ms());
                continue;
            };
            let what = match e.kind {
                EventKind::BREAKER_OPENED => "breaker opened",
                EventKind::BREAKER_HALF_OPENED => "breaker half-open",
                EventKind::BREAKER_CLOSED => "breaker closed",
                EventKind::BREAKER_REJECTED => "breaker rejected a call",
                _ => "other event",
            };
            println!(
                "[{:>3} ms] telemetry: {what}",
                e.time.as_nanos() / 1_000_000
            );
        }
        println!(
            "[{:>3} ms] telemetry: stream closed after {} events, {} lost",
            self.now_ms(),
            events.read(),
            events.lost()
        );
    }

    /// Checks the end state: every permit back.
    pub fn finish(&self) {
        assert_eq!(self.bulkhead.in_flight(), 0, "every permit is back");
        println!(
            "done at {} ms (virtual); permits in flight: 0",
            self.now_ms()
        );
    }
}
