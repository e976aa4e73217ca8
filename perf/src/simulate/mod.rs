//! The `simulate` subcommand: a circuit breaker protecting a flaky
//! dependency, simulated in virtual time, with and without protection side by
//! side. (The HTTP demo on loopback is [`crate::http`]; this is its
//! deterministic, virtual-time sibling.)
//!
//! - [`scenario`]: the client's traffic, the dependency's phases (healthy,
//!   latency spike, error burst, outage, recovery) and the breaker settings.
//! - [`sim`]: the discrete-event simulation on a
//!   [`ManualClock`](tenlives_engine::time::ManualClock).
//! - `report`: the text printed for a person.
//!
//! The output depends only on the arguments: the same seed prints the same
//! report, byte for byte.

pub mod scenario;
pub mod sim;

mod report;

use std::error::Error;
use std::fmt;
use std::time::Duration;

use clap::Args;
use tenlives_engine::ConfigError;

use scenario::{BreakerSettings, Scenario};
use sim::RunResult;

/// Seed of the default run.
pub const DEFAULT_SEED: u64 = 42;
/// Length of the default run, in virtual seconds.
pub const DEFAULT_DURATION_SECS: u64 = 120;
/// Requests per virtual second of the default run.
pub const DEFAULT_RATE: u32 = 50;

/// Options of the `simulate` subcommand.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct SimulateArgs {
    /// Seed of the simulated dependency's randomness; the same seed prints
    /// the same report.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,

    /// Length of the simulated run in virtual seconds; the dependency's
    /// phases scale with it.
    #[arg(long, default_value_t = DEFAULT_DURATION_SECS, value_parser = clap::value_parser!(u64).range(60..=86_400))]
    pub duration_secs: u64,

    /// Requests the client sends per virtual second.
    #[arg(long, default_value_t = DEFAULT_RATE, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub rate: u32,
}

impl Default for SimulateArgs {
    fn default() -> Self {
        SimulateArgs {
            seed: DEFAULT_SEED,
            duration_secs: DEFAULT_DURATION_SECS,
            rate: DEFAULT_RATE,
        }
    }
}

/// Both runs of the simulation and what they ran.
#[derive(Clone, Debug, PartialEq)]
pub struct Simulation {
    /// The simulated traffic and dependency.
    pub scenario: Scenario,
    /// The breaker's settings.
    pub settings: BreakerSettings,
    /// The run through the breaker.
    pub protected: RunResult,
    /// The run without protection.
    pub unprotected: RunResult,
}

impl Simulation {
    /// Simulates the scenario that `args` describe, with and without the
    /// breaker.
    pub fn run(args: &SimulateArgs) -> Result<Simulation, ConfigError> {
        let scenario = Scenario::standard(
            args.seed,
            Duration::from_secs(args.duration_secs),
            args.rate,
        );
        let settings = BreakerSettings::DEMO;
        let protected = sim::simulate(&scenario, Some(&settings))?;
        let unprotected = sim::simulate(&scenario, None)?;
        Ok(Simulation {
            scenario,
            settings,
            protected,
            unprotected,
        })
    }

    /// The report for a person.
    pub fn report(&self) -> Result<String, fmt::Error> {
        report::render(self)
    }
}

/// Runs the simulation and prints its report.
pub fn main(args: &SimulateArgs) -> Result<(), Box<dyn Error>> {
    let text = Simulation::run(args)?.report()?;
    print!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use tenlives_engine::breaker::BreakerState;

    use super::report::{Stats, percentile};
    use super::scenario::PhaseKind;
    use super::sim::{Cause, Fate, TripRule};
    use super::*;

    fn demo(seed: u64) -> Simulation {
        Simulation::run(&SimulateArgs {
            seed,
            ..SimulateArgs::default()
        })
        .unwrap()
    }

    #[test]
    fn settings_build() {
        assert!(BreakerSettings::DEMO.build().is_ok());
    }

    #[test]
    fn every_request_is_accounted_for() {
        for seed in [1, 42, 9000] {
            let d = demo(seed);
            for run in [&d.protected, &d.unprotected] {
                assert_eq!(run.records.len() as u64, d.scenario.requests());
                let s = Stats::of(&run.records);
                assert_eq!(s.requests, s.reached() + s.rejected);
                assert_eq!(s.requests, s.succeeded + s.failed + s.rejected);
                for (i, _) in d.scenario.phases.iter().enumerate() {
                    let p = Stats::of(run.records.iter().filter(|r| r.phase == i));
                    assert_eq!(p.requests, p.reached() + p.rejected);
                }
            }
            assert_eq!(Stats::of(&d.unprotected.records).rejected, 0);
            assert!(Stats::of(&d.protected.records).rejected > 0);
        }
    }

    #[test]
    fn both_runs_meet_the_same_dependency() {
        let d = demo(42);
        for (g, b) in d.protected.records.iter().zip(&d.unprotected.records) {
            assert_eq!(g.phase, b.phase);
            if g.fate != Fate::Rejected {
                assert_eq!(g, b);
            } else {
                assert_eq!(g.latency, Duration::ZERO);
            }
        }
    }

    #[test]
    fn breaker_spares_the_dependency_during_the_outage() {
        for seed in [1, 42, 9000] {
            let d = demo(seed);
            let k = d.scenario.find(PhaseKind::Outage).unwrap();
            let reached =
                |run: &RunResult| Stats::of(run.records.iter().filter(|r| r.phase == k)).reached();
            let (with, without) = (reached(&d.protected), reached(&d.unprotected));
            assert_eq!(without, Stats::of(run_phase(&d.unprotected, k)).requests);
            assert!(
                with * 10 < without,
                "seed {seed}: {with} calls with the breaker, {without} without"
            );
            assert!(d.protected.peak_in_flight < d.unprotected.peak_in_flight);
        }
    }

    fn run_phase(run: &RunResult, k: usize) -> Vec<&sim::RequestRecord> {
        run.records.iter().filter(|r| r.phase == k).collect()
    }

    #[test]
    fn transitions_are_consistent_and_time_adds_up() {
        for seed in [1, 42, 9000] {
            let d = demo(seed);
            let run = &d.protected;
            assert!(!run.transitions.is_empty());
            let mut state = BreakerState::Closed;
            let mut at = tenlives_engine::time::Timestamp::ZERO;
            for t in &run.transitions {
                assert_eq!(t.from, state);
                assert_ne!(t.cause, Cause::Other, "{t:?}");
                if let Cause::Tripped { rule, .. } = t.cause {
                    assert_ne!(rule, TripRule::Unexplained, "{t:?}");
                }
                assert!(t.at >= at);
                state = t.to;
                at = t.at;
            }
            let times = run.state_times.unwrap();
            assert_eq!(times.other, Duration::ZERO);
            assert_eq!(
                times.closed + times.open + times.half_open,
                Duration::from_nanos(run.end.as_nanos())
            );
            // The dependency is healthy at the end: the breaker closes again.
            assert_eq!(state, BreakerState::Closed, "seed {seed}");
        }
    }

    #[test]
    fn other_lengths_and_rates_add_up() {
        let d = Simulation::run(&SimulateArgs {
            seed: 3,
            duration_secs: 241,
            rate: 7,
        })
        .unwrap();
        assert_eq!(d.scenario.requests(), 241 * 7);
        for run in [&d.protected, &d.unprotected] {
            let s = Stats::of(&run.records);
            assert_eq!(s.requests, d.scenario.requests());
            assert_eq!(s.requests, s.reached() + s.rejected);
        }
        let text = d.report().unwrap();
        assert!(text.contains("OPENED"), "{text}");
    }

    #[test]
    fn same_seed_same_output() {
        let a = demo(7).report().unwrap();
        let b = demo(7).report().unwrap();
        assert_eq!(a, b);
        let c = demo(8).report().unwrap();
        assert_ne!(a, c);
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v[..1], 99.0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
    }
}
