//! `serve`: only the protected front (or, with `--unprotected`, only the
//! unprotected one) and its upstream, for a fixed time, so that another load
//! generator (wrk) or a profiler can drive it:
//!
//! ```sh
//! cargo run --release -p tenlives-perf -- serve --seconds 30 --port 8080 &
//! wrk -t2 -c64 -d20s http://127.0.0.1:8080/
//! ```
//!
//! Defaults suit measuring the request path rather than the policies: a
//! fast upstream (0 ms service time, 1024 slots), a rate limit far above any
//! load, an adaptive limit from 128 up to 4096. At the end it prints what the
//! front answered.

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::front::Protection;
use super::report::count;
use super::run::{Fronts, Harness, HarnessConfig};
use super::timeline::Timeline;

/// The upstream's script for `serve`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Script {
    /// Healthy throughout.
    Healthy,
    /// The demo's script.
    Standard,
    /// The chaos script.
    Chaos,
}

/// Options of `serve`.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct ServeArgs {
    /// How long to serve, seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub seconds: u64,
    /// Port of the protected front on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The upstream's script (scaled to `--seconds`).
    #[arg(long, value_enum, default_value_t = Script::Healthy)]
    pub script: Script,
    /// Worker slots of the upstream.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub capacity: u32,
    /// Healthy service time of the upstream, ms (a call takes 1 to 2 times
    /// this; 0 answers at once).
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// The protected front's rate limit, requests per second.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000_000))]
    pub rate_limit: u32,
    /// Seed of the upstream's draws.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Serve the unprotected front instead (no tenlives policy), to compare
    /// the cost of the stack.
    #[arg(long)]
    pub unprotected: bool,
}

/// Runs `serve`.
///
/// # Errors
///
/// When the port cannot be bound or a setting is out of range.
pub async fn serve(args: &ServeArgs) -> Result<(), Box<dyn Error>> {
    let length = Duration::from_secs(args.seconds);
    let base = Duration::from_millis(args.latency_ms);
    let timeline = match args.script {
        Script::Healthy => Timeline::healthy(length, base),
        Script::Standard => Timeline::standard(length, base),
        Script::Chaos => Timeline::chaos(length, base),
    };
    let mut protection = Protection::for_rate(args.rate_limit / 3);
    protection.rate_limit = args.rate_limit;
    protection.rate_burst = (args.rate_limit / 10).max(10);
    protection.limits = (16, 128, 4096);
    let harness = Harness::start(&HarnessConfig {
        timeline: Arc::new(timeline),
        capacity: args.capacity,
        queue_timeout: Duration::from_secs(2),
        protection,
        fronts: if args.unprotected {
            Fronts::Unprotected
        } else {
            Fronts::Protected
        },
        seed: args.seed,
        port: args.port,
        horizon: length + Duration::from_secs(5),
        peers: Vec::new(),
    })?;
    let name = if args.unprotected {
        "unprotected"
    } else {
        "protected"
    };
    if let Some(uri) = harness.front_uri() {
        println!("serving the {name} front at {uri} for {} s", args.seconds);
        println!(
            "  e.g.  wrk -t2 -c64 -d{}s {uri}",
            args.seconds.saturating_sub(2).max(1)
        );
    }
    tokio::time::sleep(length).await;
    println!("\nthe {name} front answered:");
    let mut total = 0;
    for (_, counts) in harness.front_counts() {
        for (label, n) in counts.snapshot() {
            total += n;
            println!("  {label:<26} {:>12}", count(n));
        }
    }
    println!("  {:<26} {:>12}", "total", count(total));
    if let Some(layer) = harness.protected_layer() {
        let policies = layer.policies();
        if let Some(b) = policies.breaker() {
            println!("  breaker at the end: {}", b.state());
        }
        if let Some(l) = policies.limit() {
            println!("  concurrency limit at the end: {}", l.limit());
        }
    }
    harness.shutdown();
    Ok(())
}
