//! The HTTP demo and the load, soak and chaos harness, all on loopback.
//!
//! One process runs everything on a tokio runtime:
//!
//! - an **upstream** HTTP service per front ([`upstream`]) that follows a
//!   scripted fault timeline ([`timeline`]): healthy, latency spikes, error
//!   bursts, dropped connections, a full outage, restarts of its listener,
//!   recovery;
//! - two **front** services ([`front`]) answering through a pooled hyper
//!   client: one protected by a tenlives `StackLayer` (timeout, retry within
//!   a budget, rate limit, circuit breaker, adaptive concurrency limit),
//!   one with no protection;
//! - an **open-loop load generator** ([`load`]) sending the same arrivals to
//!   both fronts at a fixed rate, bounded in flight, recording every
//!   request's fate and latency ([`record`], HDR histograms);
//! - a **watcher** ([`run`]) that closes a time bucket every second, reads
//!   the breaker's transitions from the engine's event ring, samples the
//!   limits, shows live figures ([`progress`]) and, for `soak`, the
//!   process's memory and descriptors ([`procfs`]).
//!
//! At the end, [`report`] prints the comparison for a person, [`plot`]
//! writes SVG plots, [`summary`] a JSON summary, and [`sli`] checks the
//! scenario's indicators. The commands are in [`scenario`] (`demo`, `smoke`,
//! `load`, `stress`, `spike`, `soak`, `chaos`), [`capacity`], [`serve`] and
//! [`suite`] (`goodput`: the goodput scenarios through tenlives, the peers
//! of [`peers`] and no policy, side by side).
//!
//! Every loop is bounded in count or time: the generator ends with its
//! plan, each request with its timeout, the watcher and the upstream script
//! with the run's horizon, and the servers are aborted when the run ends.

pub mod alerts;
pub mod capacity;
pub mod drive;
pub mod front;
pub mod goodput;
pub mod load;
pub mod peers;
pub mod plot;
pub mod procfs;
pub mod progress;
pub mod record;
pub mod report;
pub mod results;
pub mod run;
pub mod scenario;
pub mod serve;
pub mod server;
pub mod sli;
pub mod suite;
pub mod summary;
pub mod timeline;
pub mod upstream;

use std::error::Error;
use std::future::Future;

/// Runs `f` on a multi-threaded tokio runtime with one worker per core.
///
/// # Errors
///
/// When the runtime cannot start, or `f` fails.
pub fn block_on<T>(
    f: impl Future<Output = Result<T, Box<dyn Error>>>,
) -> Result<T, Box<dyn Error>> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(f)
}
