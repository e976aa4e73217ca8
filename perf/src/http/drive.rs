//! `drive`: the demo's load against a service of your own.
//!
//! The same open-loop generator as the demo ([`load`]): a
//! constant rate of arrivals, sent whether or not earlier ones were
//! answered, latency measured from each arrival's scheduled instant,
//! bounded in flight and per request. It prints what the service answered
//! and exits non-zero when a request was not answered in time: not sent
//! (the in-flight bound), no HTTP answer (refused, reset), none within the
//! generator's timeout (a `504` counts here too), or cancelled at the end.
//! A resilience policy may refuse (`429`, `503`), but it must answer, and
//! soon.
//!
//! CI drives the operations example (`adapters/ops/examples/service.rs`)
//! with it while the example reloads its configuration file.

use std::error::Error;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use http::Uri;
use tokio::time::Instant;

use super::front::http_client;
use super::load::{self, Bounds, RatePlan, Target};
use super::record::{Percentiles, Recorder, Tally};
use super::timeline::Timeline;

/// Options of `drive`.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct DriveArgs {
    /// The URL to send `GET` requests to, e.g. `http://127.0.0.1:8080/api`.
    #[arg(long)]
    pub url: Uri,
    /// Seconds of load.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub seconds: u64,
    /// Requests per second (the demo's rate by default).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate: u32,
    /// Most requests in flight at once.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_in_flight: u64,
    /// The generator's timeout per request, ms.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub client_timeout_ms: u64,
    /// A success within this many ms is a good answer.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub objective_ms: u64,
}

/// Requests not answered in time: the failures `drive` does not allow.
pub fn unanswered(t: &Tally) -> u64 {
    t.not_sent + t.failed_transport + t.failed_abandoned + t.failed_timeout
}

/// Runs `drive`; `Ok(true)` when every request was sent and answered in
/// time.
///
/// # Errors
///
/// When the URL has no host (the client cannot send to it).
pub async fn drive(args: &DriveArgs) -> Result<bool, Box<dyn Error>> {
    if args.url.host().is_none() {
        return Err(format!("`{}` names no host", args.url).into());
    }
    let length = Duration::from_secs(args.seconds);
    let plan = RatePlan::constant(args.rate, length);
    let timeline = Timeline::healthy(length, Duration::ZERO);
    let buckets = usize::try_from(args.seconds)
        .unwrap_or(usize::MAX)
        .saturating_add(16);
    let recorder = Arc::new(Mutex::new(Recorder::new(
        buckets,
        Duration::from_millis(args.objective_ms),
    )));
    let target = Target {
        uri: args.url.clone(),
        recorder: Arc::clone(&recorder),
        in_flight: Arc::new(AtomicU64::new(0)),
    };
    let bounds = Bounds {
        max_in_flight: args.max_in_flight,
        client_timeout: Duration::from_millis(args.client_timeout_ms),
    };
    let client = http_client(usize::try_from(args.max_in_flight).unwrap_or(usize::MAX));
    println!(
        "driving {} at {}/s for {} s (open loop, at most {} in flight)",
        args.url, args.rate, args.seconds, args.max_in_flight
    );
    let start = Instant::now();
    load::generate(
        &plan,
        start,
        &timeline,
        Duration::ZERO,
        &[target],
        &client,
        bounds,
    )
    .await;
    let recorder = load::lock(&recorder);
    let t = recorder.total.tally;
    let all = Percentiles::of(&recorder.total.all);
    println!("{}", summary(&t, &all));
    let missing = unanswered(&t);
    if missing > 0 {
        println!("FAIL  {missing} requests not answered in time");
    } else {
        println!("ok    every request answered in time");
    }
    Ok(missing == 0 && t.balanced())
}

/// What the service answered, for a person.
fn summary(t: &Tally, all: &Percentiles) -> String {
    format!(
        "sent {} of {} offered; answered: 200 {} ({} within the objective), 429 {}, 503 {} \
         (breaker {}, limit {}), other errors {}; not answered in time: {}\nlatency p50 {:?}, p99 {:?}, max {:?}",
        t.sent,
        t.offered,
        t.succeeded,
        t.good,
        t.shed_rate,
        t.rejected + t.shed_limit,
        t.rejected,
        t.shed_limit,
        t.failed_upstream + t.failed_unreachable,
        unanswered(t),
        all.p50,
        all.p99,
        all.max,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_missing_answers_count_as_unanswered() {
        let t = Tally {
            sent: 10,
            offered: 11,
            not_sent: 1,
            succeeded: 3,
            shed_rate: 2,
            rejected: 1,
            failed_upstream: 1,
            failed_transport: 1,
            failed_timeout: 1,
            failed_abandoned: 1,
            ..Tally::default()
        };
        assert_eq!(unanswered(&t), 4);
        assert_eq!(unanswered(&Tally::default()), 0);
    }
}
