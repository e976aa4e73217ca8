//! # tenlives-perf
//!
//! The demo, and the load, soak and chaos harness of tenlives.
//!
//! ```sh
//! cargo run --release -p tenlives-perf -- demo                 # about a minute
//! cargo run --release -p tenlives-perf -- demo --seconds 20
//! cargo run --release -p tenlives-perf -- smoke                # SLI checks, exit 1 on a breach
//! cargo run --release -p tenlives-perf -- chaos --seconds 30
//! cargo run --release -p tenlives-perf -- capacity
//! cargo run --release -p tenlives-perf -- goodput --seconds 20  # beside the peers
//! cargo run --release -p tenlives-perf -- serve --port 8080    # for wrk or perf
//! cargo run --release -p tenlives-perf -- simulate             # the virtual-time breaker story
//! cargo run --release -p tenlives-perf -- cache                # the response cache's hit rate and savings
//! cargo run --release -p tenlives-perf -- hosts                # hedging, ejection, fallback over three upstreams
//! cargo run --release -p tenlives-perf -- fleet --seconds 20   # three fronts sharing one quota through Redis
//! cargo run --release -p tenlives-perf -- replay --trace perf/replay/demo.trace --config perf/replay/tight.yaml --config perf/replay/loose.toml
//! cargo run --release -p tenlives-perf -- fleet-sim            # the Redis lease protocol in virtual time
//! cargo run --release -p tenlives-perf -- restart              # a service SIGKILLed mid-load, restarted from its state file
//! ```
//!
//! - [`http`]: `demo` starts, on loopback, an upstream HTTP service that
//!   plays a scripted fault timeline and two front services calling it, one
//!   through the tenlives stack and one unprotected; drives the same
//!   open-loop load at both with a live display; then prints the comparison,
//!   and writes SVG plots and a JSON summary. The scenarios `smoke`, `load`,
//!   `stress`, `spike`, `soak`, `chaos` and `capacity` do the same with
//!   their own scripts and loads, check their SLIs, and exit non-zero on a
//!   breach. `serve` runs only the protected front, for wrk or a profiler.
//! - [`simulate`]: a circuit breaker protecting a flaky dependency in
//!   virtual time, with and without protection, explained in plain words;
//!   the same seed prints the same report.
//! - `adaptive`: the adaptive concurrency limiters in a simulation.
//! - `cache`: the response cache layer on loopback, without and with it.
//! - `hosts`: three upstreams on loopback (healthy, slow, failing) behind a
//!   balancing client, plain and with hedging, outlier ejection and a
//!   fallback.
//! - `fleet`: three HTTP fronts sharing one quota through a `redis-server`
//!   the scenario starts on loopback; per-front and fleet admitted rates
//!   against the quota and its stated bound.
//! - `replay`: a recorded request trace replayed in virtual time against one
//!   or two configuration files, side by side, with plots; `record` makes a
//!   trace from a short real run (`docs/replay.md`).
//! - `restart`: a service (this binary as a child process) with a registry's
//!   rate limiter and breaker, its state saved periodically, SIGKILLed
//!   mid-load and restarted from its state file (`docs/snapshots.md`).
//!
//! Exit status: 0 on success, 1 when a scenario's check failed, 2 on an
//! error (bad options, a port that cannot be bound, a file that cannot be
//! written).

mod adaptive;
mod cache;
mod fleet;
mod fleet_sim;
mod hosts;
mod http;
mod replay;
mod restart;
mod simulate;

use std::error::Error;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use http::scenario::{self, ChaosArgs, Kind, LoadArgs, SloArgs, SoakArgs, SpikeArgs};

/// tenlives demo and load harness.
#[derive(Parser, Debug)]
#[command(name = "tenlives-perf", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options of the scenarios checked against a plain SLO.
#[derive(clap::Args, Debug, Clone, PartialEq)]
struct Checked {
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    slo: SloArgs,
}

/// What to run.
#[derive(Subcommand, Debug)]
enum Command {
    /// The HTTP demo on loopback: a flaky upstream behind a tenlives stack and
    /// behind nothing, the same load at both, compared (about a minute).
    Demo(LoadArgs),
    /// A short healthy run; checks error rate, p99 and accounting.
    Smoke(Checked),
    /// Steady load with stray upstream errors; checks error rate and p99.
    Load(Checked),
    /// About twice what the upstream can serve; checks that the protected
    /// front sheds instead of queueing.
    Stress(Checked),
    /// The load jumps fivefold, then falls back; checks recovery.
    Spike(SpikeArgs),
    /// A long run with periodic faults; checks memory and descriptors.
    Soak(SoakArgs),
    /// Latency, errors, dropped connections and upstream restarts; checks
    /// graceful degradation, recovery and accounting.
    Chaos(ChaosArgs),
    /// The goodput scenarios (demo script, flapping, slow recovery, partial
    /// failure, half capacity) through tenlives, tower-resilience, failsafe
    /// and no policy, side by side; checks tenlives against the aims.
    Goodput(http::suite::GoodputArgs),
    /// Ramps the load until the SLO breaks and reports the knee.
    Capacity(http::capacity::CapacityArgs),
    /// Runs only the protected front and its upstream, for wrk or perf.
    Serve(http::serve::ServeArgs),
    /// A circuit breaker protecting a flaky dependency, in virtual time,
    /// with and without protection side by side.
    Simulate(simulate::SimulateArgs),
    /// Simulate the adaptive concurrency limiters (AIMD, gradient) against a
    /// server whose capacity halves midway; print how they settle and write
    /// the convergence plot.
    Adaptive(adaptive::AdaptiveArgs),
    /// The response cache on loopback: the same Zipf-keyed load without and
    /// with the cache layer; checks the hit rate and the latency it saves.
    Cache(cache::CacheArgs),
    /// Three upstreams on loopback (healthy, slow, failing) behind a p2c
    /// balancing client, plain and with hedging, outlier ejection and a
    /// fallback; checks that the protected client wins on success rate and p99.
    Hosts(hosts::HostsArgs),
    /// The demo's open-loop load against a URL of your own (for example the
    /// operations example while it reloads); fails when a request is not
    /// answered in time.
    Drive(http::drive::DriveArgs),
    /// Three HTTP fronts sharing one quota through a redis-server started
    /// on loopback, under the demo's load; checks the fleet's admitted rate
    /// against the stated bound.
    Fleet(fleet::FleetArgs),
    /// Replays a request trace in virtual time against one or two
    /// configuration files; prints what each admits and rejects and when
    /// its breaker opens, side by side, and writes plots.
    Replay(replay::ReplayArgs),
    /// Records a request trace from a short real run (a dependency that
    /// fails for the middle third, behind a live breaker).
    Record(replay::RecordArgs),
    /// The Redis lease protocol of tenlives-redis in virtual time: 4
    /// instances sharing one quota, swept over the lease size and the
    /// refresh interval; writes CSV and an SVG plot, exit 1 when a run
    /// breaks the stated over-admission bound.
    FleetSim(fleet_sim::FleetSimArgs),
    /// A service (a child process: a registry's rate limiter and breaker,
    /// its state saved periodically) killed with SIGKILL mid-load and
    /// restarted from its state file; checks the quota across the restart,
    /// that the breaker stays open, and measures the gap.
    Restart(restart::RestartArgs),
    /// The service of `restart`, run by it as a child process.
    #[command(hide = true)]
    RestartChild(restart::ChildArgs),
}

/// Runs the command: `Ok(true)` when it passed.
fn run(command: &Command) -> Result<bool, Box<dyn Error>> {
    match command {
        Command::Demo(load) => http::block_on(scenario::demo(load)),
        Command::Smoke(c) => http::block_on(scenario::checked(Kind::Smoke, &c.load, &c.slo)),
        Command::Load(c) => http::block_on(scenario::checked(Kind::Load, &c.load, &c.slo)),
        Command::Stress(c) => http::block_on(scenario::checked(Kind::Stress, &c.load, &c.slo)),
        Command::Spike(a) => http::block_on(scenario::spike(a)),
        Command::Soak(a) => http::block_on(scenario::soak(a)),
        Command::Chaos(a) => http::block_on(scenario::chaos(a)),
        Command::Goodput(a) => http::block_on(http::suite::goodput(a)),
        Command::Capacity(a) => http::block_on(http::capacity::capacity(a)),
        Command::Serve(a) => http::block_on(async { http::serve::serve(a).await.map(|()| true) }),
        Command::Simulate(args) => simulate::main(args).map(|()| true),
        Command::Adaptive(args) => adaptive::main(args).map(|()| true),
        Command::Cache(args) => http::block_on(cache::cache(args)),
        Command::Hosts(args) => http::block_on(hosts::hosts(args)),
        Command::Drive(args) => http::block_on(http::drive::drive(args)),
        Command::Fleet(args) => fleet::main(args),
        Command::Replay(args) => replay::main(args).map(|()| true),
        Command::Record(args) => {
            http::block_on(async { replay::record(args).await.map(|()| true) })
        }
        Command::FleetSim(args) => fleet_sim::main(args),
        Command::Restart(args) => restart::main(args),
        Command::RestartChild(args) => restart::child(args).map(|()| true),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli.command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("tenlives-perf: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["tenlives-perf", "simulate", "--seed", "7"]).unwrap();
        let Command::Simulate(args) = cli.command else {
            panic!("parsed as simulate")
        };
        assert_eq!(args.seed, 7);
        assert_eq!(
            args.duration_secs,
            simulate::SimulateArgs::default().duration_secs
        );
        assert!(
            Cli::try_parse_from(["tenlives-perf", "simulate", "--duration-secs", "5"]).is_err()
        );
    }

    #[test]
    fn fleet_takes_its_options() {
        let cli = Cli::try_parse_from(["tenlives-perf", "fleet"]).unwrap();
        let Command::Fleet(a) = cli.command else {
            panic!("parsed as fleet")
        };
        assert_eq!((a.seconds, a.rate, a.quota), (20, 200, 100));
        let cli = Cli::try_parse_from(["tenlives-perf", "fleet", "--seconds", "5"]).unwrap();
        let Command::Fleet(a) = cli.command else {
            panic!("parsed as fleet")
        };
        assert_eq!(a.seconds, 5);
        assert!(Cli::try_parse_from(["tenlives-perf", "fleet", "--seconds", "1"]).is_err());
    }

    #[test]
    fn restart_takes_its_options() {
        let cli = Cli::try_parse_from(["tenlives-perf", "restart", "--seconds", "6"]).unwrap();
        let Command::Restart(a) = cli.command else {
            panic!("parsed as restart")
        };
        assert_eq!((a.seconds, a.rate, a.quota, a.burst), (6, 300, 100, 100));
        assert!(!a.no_restore);
        assert!(Cli::try_parse_from(["tenlives-perf", "restart", "--seconds", "2"]).is_err());
        let cli = Cli::try_parse_from([
            "tenlives-perf",
            "restart-child",
            "--state-dir",
            "/tmp/x",
            "--port",
            "1",
            "--upstream",
            "127.0.0.1:2",
            "--quota",
            "100",
            "--burst",
            "20",
            "--save-ms",
            "50",
            "--open-ms",
            "2000",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::RestartChild(_)));
    }

    #[test]
    fn scenarios_take_their_options() {
        let cli = Cli::try_parse_from(["tenlives-perf", "demo", "--seconds", "20"]).unwrap();
        let Command::Demo(load) = cli.command else {
            panic!("parsed as demo")
        };
        assert_eq!((load.seconds, load.rate), (Some(20), None));
        let cli =
            Cli::try_parse_from(["tenlives-perf", "smoke", "--max-p99-ms", "5000", "--quiet"])
                .unwrap();
        let Command::Smoke(c) = cli.command else {
            panic!("parsed as smoke")
        };
        assert_eq!(c.slo.max_p99_ms, Some(5000));
        assert!(c.load.quiet);
        let cli = Cli::try_parse_from(["tenlives-perf", "chaos", "--seconds", "30"]).unwrap();
        let Command::Chaos(a) = cli.command else {
            panic!("parsed as chaos")
        };
        assert_eq!((a.load.seconds, a.recover_within_secs), (Some(30), 10));
        assert!(Cli::try_parse_from(["tenlives-perf", "smoke", "--seconds", "0"]).is_err());
        assert!(Cli::try_parse_from(["tenlives-perf", "capacity", "--front", "protected"]).is_ok());
        assert!(Cli::try_parse_from(["tenlives-perf", "serve", "--script", "chaos"]).is_ok());
        let cli = Cli::try_parse_from([
            "tenlives-perf",
            "goodput",
            "--seconds",
            "20",
            "--scenario",
            "flapping",
            "--scenario",
            "half-capacity",
        ])
        .unwrap();
        let Command::Goodput(g) = cli.command else {
            panic!("parsed as goodput")
        };
        assert_eq!(g.load.seconds, Some(20));
        assert_eq!(g.scenarios.len(), 2);
        assert!(!g.no_peers && g.min_limit_share == 90.0);
        let cli = Cli::try_parse_from(["tenlives-perf", "hosts", "--requests", "1500"]).unwrap();
        let Command::Hosts(h) = cli.command else {
            panic!("parsed as hosts")
        };
        assert_eq!((h.requests, h.seconds, h.failing_percent), (1500, 20, 100));
        assert!(
            Cli::try_parse_from(["tenlives-perf", "hosts", "--failing-percent", "101"]).is_err()
        );
        assert!(Cli::try_parse_from(["tenlives-perf", "hosts", "--slow-every", "0"]).is_err());
    }
}
