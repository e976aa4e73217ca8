//! The `fleet-sim` subcommand: the Redis lease protocol of
//! `tenlives-redis` in virtual time ([`tenlives_redis::sim`]), swept over
//! the lease size for four demand patterns and over the refresh interval;
//! prints a table, writes the figures as CSV and plots them as SVG (the
//! curves of `docs/distributed.md`). Deterministic: the same seed writes
//! the same files.

use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use tenlives_redis::sim::{self, Demand, Outcome, SimConfig};

/// Options of the `fleet-sim` subcommand.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct FleetSimArgs {
    /// Seed of the arrivals, latencies and start offsets.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Where the CSV files and the SVG plot go.
    #[arg(long, default_value = "docs/fleet-sim")]
    pub out: PathBuf,
}

/// The lease sizes of the sweep.
pub const LEASES: [u32; 8] = [5, 10, 25, 50, 100, 250, 500, 1_000];
/// The refresh intervals of the second sweep, in ms (at lease 500).
pub const INTERVALS_MS: [u64; 5] = [5, 10, 20, 50, 100];

/// One row: what ran and what it measured.
pub struct Row {
    /// The configuration.
    pub config: SimConfig,
    /// The measurements.
    pub outcome: Outcome,
}

impl Row {
    fn csv(&self) -> String {
        let (c, o) = (&self.config, &self.outcome);
        let nl = u64::from(c.instances) * o.max_lease;
        format!(
            "{},{},{},{},{},{:.1},{:.1},{:.3},{:.1},{},{:.3},{:.2},{},{}",
            c.demand.name(),
            o.max_lease,
            o.burst,
            c.refresh_interval.as_millis(),
            o.admitted,
            o.excess,
            c.over_admission_slack(),
            o.over_fraction() * 100.0,
            o.excess_from_start,
            nl,
            o.under_fraction() * 100.0,
            o.calls_per_1000(),
            o.redis_calls,
            o.crashed_held,
        )
    }
}

const HEADER: &str = "demand,lease,burst,interval_ms,admitted,excess_tokens,bound_slack_tokens,over_1s_pct,excess_from_start,n_times_lease,under_pct,calls_per_1000,redis_calls,crashed_held";

/// Runs both sweeps.
///
/// # Errors
///
/// A configuration the limiter refuses.
pub fn sweep(seed: u64) -> Result<(Vec<Row>, Vec<Row>), Box<dyn Error>> {
    let mut leases = Vec::new();
    for demand in Demand::standard() {
        for lease in LEASES {
            let config = SimConfig::standard(demand, seed).with_lease(lease)?;
            let outcome = sim::run(&config)?;
            leases.push(Row { config, outcome });
        }
    }
    let mut intervals = Vec::new();
    for ms in INTERVALS_MS {
        let config = SimConfig {
            refresh_interval: Duration::from_millis(ms),
            ..SimConfig::standard(Demand::Saturating { overload: 2.0 }, seed)
        }
        .with_lease(500)?;
        let outcome = sim::run(&config)?;
        intervals.push(Row { config, outcome });
    }
    Ok((leases, intervals))
}

/// Runs the sweeps, prints the table, writes `leases.csv`,
/// `intervals.csv` and `fleet-sim.svg` under `args.out`. `Ok(false)` when
/// a run broke the stated over-admission bound.
pub fn main(args: &FleetSimArgs) -> Result<bool, Box<dyn Error>> {
    let (leases, intervals) = sweep(args.seed)?;
    std::fs::create_dir_all(&args.out)?;
    for (name, rows) in [("leases.csv", &leases), ("intervals.csv", &intervals)] {
        let mut text = String::from(HEADER);
        text.push('\n');
        for r in rows.iter() {
            text.push_str(&r.csv());
            text.push('\n');
        }
        std::fs::write(args.out.join(name), text)?;
    }
    let svg = args.out.join("fleet-sim.svg");
    plot(&svg, &leases)?;
    print!("{}", table(&leases, &intervals)?);
    println!(
        "\nwritten: {}, {}, {}",
        args.out.join("leases.csv").display(),
        args.out.join("intervals.csv").display(),
        svg.display()
    );
    let ok = leases
        .iter()
        .chain(&intervals)
        .all(|r| r.outcome.excess <= r.config.over_admission_slack());
    if !ok {
        println!("a run broke the stated over-admission bound");
    }
    Ok(ok)
}

fn table(leases: &[Row], intervals: &[Row]) -> Result<String, std::fmt::Error> {
    let mut s = String::new();
    let c = &leases[0].config;
    writeln!(
        s,
        "fleet-sim: {} instances, quota {}/{:?}, max_share {}, refresh {:?}, latency {:?} + up to {:?} each way, {:?} (seed {})",
        c.instances,
        c.quota.rate(),
        c.quota.period(),
        c.max_share,
        c.refresh_interval,
        c.latency,
        c.jitter,
        c.duration,
        c.seed
    )?;
    writeln!(
        s,
        "excess: max over every window of (admitted - w/T - b), tokens; bound N*L (+ jitter/T)\n"
    )?;
    writeln!(
        s,
        "{:<11}{:>6}{:>6}{:>10}{:>10}{:>10}{:>10}{:>12}",
        "demand", "L", "b", "excess", "bound", "over 1s", "under", "calls/1000"
    )?;
    for r in leases {
        let o = &r.outcome;
        writeln!(
            s,
            "{:<11}{:>6}{:>6}{:>10.1}{:>10.1}{:>9.2}%{:>10}{:>12.1}",
            r.config.demand.name(),
            o.max_lease,
            o.burst,
            o.excess,
            r.config.over_admission_slack(),
            o.over_fraction() * 100.0,
            if r.config.demand.is_saturating() {
                format!("{:.2}%", o.under_fraction() * 100.0)
            } else {
                "-".to_owned()
            },
            o.calls_per_1000()
        )?;
    }
    writeln!(s, "\nsaturating demand, L = 500, by refresh interval:")?;
    writeln!(
        s,
        "{:<10}{:>10}{:>10}{:>12}",
        "interval", "excess", "under", "calls/1000"
    )?;
    for r in intervals {
        let o = &r.outcome;
        writeln!(
            s,
            "{:<10}{:>10.1}{:>9.2}%{:>12.1}",
            format!("{:?}", r.config.refresh_interval),
            o.excess,
            o.under_fraction() * 100.0,
            o.calls_per_1000()
        )?;
    }
    Ok(s)
}

/// Three panels against the lease size (log scale): over-admission in
/// tokens with the bound `N·L`, under-admission in percent of the quota,
/// Redis calls per 1 000 admitted; one line per demand pattern.
fn plot(path: &Path, rows: &[Row]) -> Result<(), Box<dyn Error>> {
    use plotters::prelude::*;

    let colors = [
        RGBColor(38, 110, 200),
        RGBColor(40, 150, 60),
        RGBColor(230, 140, 20),
        RGBColor(200, 40, 40),
    ];
    let root = SVGBackend::new(path, (1000, 1100)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((3, 1));
    let x0 = f64::from(LEASES[0]) * 0.8;
    let x1 = f64::from(LEASES[LEASES.len() - 1]) * 1.25;
    type Pick = fn(&Row) -> f64;
    let specs: [(&str, &str, Pick, bool); 3] = [
        (
            "Over-admission (max over windows of admitted - w/T - b) / stated slack N*L",
            "fraction of N*L",
            |r| r.outcome.excess / r.config.over_admission_slack(),
            true,
        ),
        (
            "Under-admission under saturating demand: shortfall after warm-up (% of quota)",
            "% of quota",
            |r| r.outcome.under_fraction() * 100.0,
            false,
        ),
        (
            "Redis calls per 1 000 admitted requests",
            "calls",
            |r| r.outcome.calls_per_1000(),
            false,
        ),
    ];
    for (panel, (title, unit, pick, bound)) in panels.iter().zip(specs) {
        // Under-admission is only meaningful under saturating demand.
        let shown = |r: &&Row| !title.starts_with("Under") || r.config.demand.is_saturating();
        let mut lo = rows.iter().filter(shown).map(pick).fold(0.0, f64::min);
        let mut hi = rows.iter().filter(shown).map(pick).fold(1.0, f64::max);
        lo -= (hi - lo) * 0.05;
        hi += (hi - lo) * 0.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d((x0..x1).log_scale(), lo..hi)?;
        chart
            .configure_mesh()
            .x_desc("largest lease L (tokens, log scale)")
            .y_desc(unit)
            .draw()?;
        if bound {
            let first = rows
                .iter()
                .filter(|r| r.config.demand.name() == "saturating");
            chart
                .draw_series(LineSeries::new(
                    first.map(|r| (r.outcome.max_lease as f64, 1.0)),
                    BLACK.stroke_width(2),
                ))?
                .label("stated bound (N*L + jitter/T)")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(2)));
        }
        for (demand, color) in Demand::standard().iter().zip(colors) {
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter(shown)
                .filter(|r| r.config.demand.name() == demand.name())
                .map(|r| (r.outcome.max_lease as f64, pick(r)))
                .collect();
            if points.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(demand.name())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_is_deterministic_and_within_the_bound() {
        let (a, _) = sweep(3).unwrap();
        let (b, _) = sweep(3).unwrap();
        assert_eq!(a.len(), 4 * LEASES.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.csv(), y.csv());
            assert!(x.outcome.excess <= x.config.over_admission_slack());
        }
        let text = table(&a, &a[..1]).unwrap();
        assert!(
            text.contains("saturating") && text.contains("crash"),
            "{text}"
        );
    }
}
