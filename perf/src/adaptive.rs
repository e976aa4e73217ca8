//! `adaptive`: the adaptive concurrency limiters in a virtual-time
//! simulation, and the plot of their convergence in `docs/`.
//!
//! A server handles up to `capacity` calls at once at its base latency; past
//! that, every call slows in proportion (`base * in_flight / capacity`), as a
//! queue would make it. Closed-loop clients (three per unit of capacity) call
//! it as fast as they are let through; a rejected client tries again 1 ms
//! later, and a call slower than five times the base latency counts as a
//! timeout (a drop). Halfway through, the capacity halves. The limiter under
//! test should settle within 20 % of the capacity, keep the p99 latency
//! bounded, and follow the drop within a bounded number of windows.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tenlives_engine::ConfigError;
use tenlives_engine::adaptive::{
    AdaptiveLimiter, AdaptivePermit, Aimd, Gradient, LimitAlgorithm, WindowConfig,
};
use tenlives_engine::time::Timestamp;

const MS: u64 = 1_000_000;
const BASE_LATENCY: u64 = 10 * MS;
const TIMEOUT: u64 = 5 * BASE_LATENCY;
const WINDOW: u64 = 100 * MS;
const RETRY_AFTER_REJECTION: u64 = MS;

/// Options of `adaptive`.
#[derive(Args, Debug, Clone)]
pub struct AdaptiveArgs {
    /// Length of each of the two phases (full capacity, then half), seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(5..=3600))]
    pub phase_secs: u64,
    /// Where to write the convergence plot (SVG).
    #[arg(long, default_value = "docs/adaptive-limits.svg")]
    pub svg: PathBuf,
}

/// Which algorithm a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algo {
    /// [`Aimd`] with a latency threshold of 1.1 times the base latency.
    Aimd,
    /// [`Gradient`] with its defaults.
    Gradient,
}

impl Algo {
    fn name(self) -> &'static str {
        match self {
            Algo::Aimd => "AIMD",
            Algo::Gradient => "Gradient",
        }
    }
}

/// One simulated run.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// The algorithm.
    pub algo: Algo,
    /// The server's capacity in the first phase (halved in the second).
    pub capacity: u32,
    /// Length of each phase, ns.
    pub phase_ns: u64,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// `(seconds, limit)` at the end of every window.
    pub curve: Vec<(f64, u32)>,
    /// Mean limit over the last third of each phase.
    pub settled: [f64; 2],
    /// p99 latency of calls completed in the last third of each phase, ns.
    pub p99: [u64; 2],
    /// Windows after the capacity drop until the limit first comes within
    /// 20 % of the new capacity (None if it never does).
    pub windows_to_follow_drop: Option<usize>,
    /// Calls completed, and of them timed out.
    pub completed: u64,
    /// Calls that timed out.
    pub timeouts: u64,
}

/// At equal times a completion goes first, so that the permit it frees is
/// there for the attempts of that instant.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Complete,
    Attempt,
}

fn run_with<A: LimitAlgorithm>(algorithm: A, s: &Scenario) -> Result<Outcome, ConfigError> {
    let limiter = AdaptiveLimiter::new(
        algorithm,
        WindowConfig::new(Duration::from_nanos(WINDOW), 10)?,
        Timestamp::ZERO,
    );
    let clients = (s.capacity * 3) as usize;
    let end = 2 * s.phase_ns;
    let mut queue: BinaryHeap<Reverse<(u64, Step, usize)>> = (0..clients)
        .map(|c| Reverse((0, Step::Attempt, c)))
        .collect();
    let mut held: Vec<Option<(AdaptivePermit<'_, A>, u64)>> = (0..clients).map(|_| None).collect();
    let mut out = Outcome::default();
    let mut latencies: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    let mut limits: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
    let mut next_window = WINDOW;
    while let Some(Reverse((now, step, client))) = queue.pop() {
        if now >= end {
            break;
        }
        while now >= next_window {
            let limit = limiter.limit();
            out.curve.push((next_window as f64 / 1e9, limit));
            let phase = usize::from(next_window >= s.phase_ns);
            let phase_start = phase as u64 * s.phase_ns;
            if next_window >= phase_start + s.phase_ns * 2 / 3 {
                limits[phase].push(limit);
            }
            next_window += WINDOW;
        }
        let phase = usize::from(now >= s.phase_ns);
        let capacity = if phase == 0 {
            s.capacity
        } else {
            (s.capacity / 2).max(1)
        };
        let t = Timestamp::from_nanos(now);
        match step {
            Step::Attempt => match limiter.try_acquire(t) {
                Ok(permit) => {
                    let n = u64::from(limiter.in_flight());
                    let latency = BASE_LATENCY * n.max(u64::from(capacity)) / u64::from(capacity);
                    held[client] = Some((permit, latency));
                    queue.push(Reverse((
                        now + latency.min(TIMEOUT),
                        Step::Complete,
                        client,
                    )));
                }
                Err(_) => queue.push(Reverse((
                    now + RETRY_AFTER_REJECTION,
                    Step::Attempt,
                    client,
                ))),
            },
            Step::Complete => {
                if let Some((permit, latency)) = held[client].take() {
                    out.completed += 1;
                    if latency > TIMEOUT {
                        out.timeouts += 1;
                        permit.dropped(t);
                    } else {
                        permit.success(t);
                    }
                    let phase_start = phase as u64 * s.phase_ns;
                    if now >= phase_start + s.phase_ns * 2 / 3 {
                        latencies[phase].push(latency.min(TIMEOUT));
                    }
                }
                queue.push(Reverse((now, Step::Attempt, client)));
            }
        }
    }
    for phase in 0..2 {
        let l = &limits[phase];
        out.settled[phase] = l.iter().map(|&x| f64::from(x)).sum::<f64>() / l.len().max(1) as f64;
        let lat = &mut latencies[phase];
        lat.sort_unstable();
        out.p99[phase] = lat
            .get((lat.len() * 99 / 100).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0);
    }
    let half = f64::from((s.capacity / 2).max(1));
    let drop_index = out
        .curve
        .iter()
        .position(|&(t, _)| t * 1e9 >= s.phase_ns as f64)
        .unwrap_or(out.curve.len());
    let after = &out.curve[drop_index..];
    out.windows_to_follow_drop = after
        .iter()
        .position(|&(_, l)| (f64::from(l) - half).abs() <= 0.2 * half);
    Ok(out)
}

/// Runs one scenario.
pub fn run(s: &Scenario) -> Result<Outcome, ConfigError> {
    let max = s.capacity * 10;
    match s.algo {
        Algo::Aimd => {
            let threshold = Duration::from_nanos(BASE_LATENCY * 11 / 10);
            run_with(
                Aimd::builder()
                    .limits(1, 20, max)
                    .latency_threshold(threshold)
                    .build()?,
                s,
            )
        }
        Algo::Gradient => run_with(Gradient::builder().limits(1, 20, max).build()?, s),
    }
}

/// The command: runs every algorithm at capacities 10 and 100, prints a
/// table and writes the plot.
pub fn main(args: &AdaptiveArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut runs = Vec::new();
    println!(
        "Adaptive concurrency limits in virtual time: {} s at capacity C, then {} s at C/2.",
        args.phase_secs, args.phase_secs
    );
    println!(
        "Server latency {} ms up to C calls at once, proportionally more beyond; 3C closed-loop clients.\n",
        BASE_LATENCY / MS
    );
    println!(
        "{:<9} {:>4}  {:>14} {:>10}  {:>14} {:>10}  {:>16}",
        "algorithm", "C", "settled limit", "p99", "settled at C/2", "p99", "windows to follow"
    );
    for algo in [Algo::Aimd, Algo::Gradient] {
        for capacity in [10, 100] {
            let s = Scenario {
                algo,
                capacity,
                phase_ns: args.phase_secs * 1_000_000_000,
            };
            let o = run(&s)?;
            println!(
                "{:<9} {:>4}  {:>8.1} ({:>+3.0}%) {:>7.1} ms  {:>8.1} ({:>+3.0}%) {:>7.1} ms  {:>16}",
                algo.name(),
                capacity,
                o.settled[0],
                (o.settled[0] / f64::from(capacity) - 1.0) * 100.0,
                o.p99[0] as f64 / MS as f64,
                o.settled[1],
                (o.settled[1] / f64::from(capacity / 2) - 1.0) * 100.0,
                o.p99[1] as f64 / MS as f64,
                o.windows_to_follow_drop
                    .map_or("never".to_string(), |w| w.to_string()),
            );
            runs.push((s, o));
        }
    }
    plot(&args.svg, &runs)?;
    println!("\nplot written to {}", args.svg.display());
    Ok(())
}

fn plot(
    path: &std::path::Path,
    runs: &[(Scenario, Outcome)],
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;

    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((2, 1));
    for (panel, capacity) in panels.iter().zip([10u32, 100]) {
        let end = runs
            .iter()
            .filter(|(s, _)| s.capacity == capacity)
            .flat_map(|(_, o)| o.curve.last())
            .map(|p| p.0)
            .fold(1.0, f64::max);
        let top = runs
            .iter()
            .filter(|(s, _)| s.capacity == capacity)
            .flat_map(|(_, o)| o.curve.iter().map(|p| p.1))
            .max()
            .unwrap_or(capacity)
            .max(capacity) as f64
            * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("Limit over time, capacity {capacity} then {}", capacity / 2),
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(0.0..end, 0.0..top)?;
        chart
            .configure_mesh()
            .x_desc("virtual time, s")
            .y_desc("concurrency limit")
            .draw()?;
        let half = end / 2.0;
        chart
            .draw_series(LineSeries::new(
                [
                    (0.0, f64::from(capacity)),
                    (half, f64::from(capacity)),
                    (half, f64::from(capacity / 2)),
                    (end, f64::from(capacity / 2)),
                ],
                BLACK.mix(0.5),
            ))?
            .label("server capacity")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.5)));
        for ((s, o), color) in runs
            .iter()
            .filter(|(s, _)| s.capacity == capacity)
            .zip([RED, BLUE])
        {
            chart
                .draw_series(LineSeries::new(
                    o.curve.iter().map(|&(t, l)| (t, f64::from(l))),
                    color,
                ))?
                .label(s.algo.name())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The acceptance test: for C in {10, 100}, each algorithm
    /// settles within 20 % of C with a bounded p99, and follows a halving of
    /// the capacity within a bounded number of windows.
    #[test]
    fn limiters_converge_and_follow_a_capacity_drop() {
        for algo in [Algo::Aimd, Algo::Gradient] {
            for capacity in [10u32, 100] {
                let s = Scenario {
                    algo,
                    capacity,
                    phase_ns: 30_000_000_000,
                };
                let o = run(&s).unwrap();
                let c = f64::from(capacity);
                assert!(
                    (o.settled[0] - c).abs() <= 0.2 * c,
                    "{algo:?} C={capacity}: settled at {}",
                    o.settled[0]
                );
                let h = f64::from(capacity / 2);
                assert!(
                    (o.settled[1] - h).abs() <= 0.2 * h,
                    "{algo:?} C/2={h}: settled at {}",
                    o.settled[1]
                );
                for p in o.p99 {
                    assert!(
                        p <= 3 * BASE_LATENCY,
                        "{algo:?} C={capacity}: p99 {} ms",
                        p / MS
                    );
                }
                let w = o.windows_to_follow_drop.expect("follows the drop");
                assert!(
                    w <= 100,
                    "{algo:?} C={capacity}: {w} windows to follow the drop"
                );
            }
        }
    }

    #[test]
    fn runs_are_deterministic() {
        let s = Scenario {
            algo: Algo::Gradient,
            capacity: 10,
            phase_ns: 5_000_000_000,
        };
        let (a, b) = (run(&s).unwrap(), run(&s).unwrap());
        assert_eq!(a.curve, b.curve);
        assert_eq!(a.completed, b.completed);
    }
}
