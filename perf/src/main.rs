//! # tenlives-perf
//!
//! The demo and (later) the load, soak and chaos harness of tenlives.
//!
//! ```sh
//! cargo run --release -p tenlives-perf -- demo
//! cargo run --release -p tenlives-perf -- demo --seed 7 --duration-secs 240 --rate 100
//! ```
//!
//! `demo` simulates a client calling a flaky dependency through a
//! [`CircuitBreaker`](tenlives_engine::breaker::CircuitBreaker) in virtual
//! time, and the same traffic without protection, then explains in plain
//! words what the breaker did and what it changed. See [`demo`].

mod adaptive;
mod demo;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// tenlives demo and load harness.
#[derive(Parser, Debug)]
#[command(name = "tenlives-perf", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What to run.
#[derive(Subcommand, Debug)]
enum Command {
    /// Show a circuit breaker protecting a flaky dependency, in virtual time,
    /// with and without protection side by side.
    Demo(demo::DemoArgs),
    /// Simulate the adaptive concurrency limiters (AIMD, gradient) against a
    /// server whose capacity halves midway; print how they settle and write
    /// the convergence plot.
    Adaptive(adaptive::AdaptiveArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Demo(args) => demo::main(args),
        Command::Adaptive(args) => adaptive::main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tenlives-perf: {e}");
            ExitCode::FAILURE
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
        let cli = Cli::try_parse_from(["tenlives-perf", "demo", "--seed", "7"]).unwrap();
        let Command::Demo(args) = cli.command else {
            panic!("parsed as demo")
        };
        assert_eq!(args.seed, 7);
        assert_eq!(args.duration_secs, demo::DemoArgs::default().duration_secs);
        assert!(Cli::try_parse_from(["tenlives-perf", "demo", "--duration-secs", "5"]).is_err());
    }
}
