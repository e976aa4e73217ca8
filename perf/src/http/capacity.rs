//! `capacity`: ramps the load on a front step by step until its SLO breaks,
//! and reports the knee — the highest rate that still met the SLO, and the
//! first that did not.
//!
//! Each front is ramped on its own (first the protected one, then the
//! unprotected one, each with a fresh upstream), so the two do not share the
//! machine while they are measured. The upstream is healthy throughout; what
//! limits the rate is its worker slots (`--capacity`, each call holding one
//! for 1 to 2 times `--latency-ms`) and the machine.

use std::error::Error;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use plotters::prelude::*;
use serde_json::json;

use super::front::Protection;
use super::load::{Bounds, RatePlan};
use super::progress::ProgressMode;
use super::report::{count, ms, pct, table};
use super::run::{DriveOptions, Fronts, Harness, HarnessConfig};
use super::sli::{self, Check, Knee, Slo, Step};
use super::summary::checks_json;
use super::timeline::Timeline;

/// Which fronts `capacity` ramps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Which {
    /// The protected front, then the unprotected one.
    Both,
    /// Only the protected front.
    Protected,
    /// Only the unprotected front.
    Unprotected,
}

/// Options of `capacity`.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct CapacityArgs {
    /// The first step's rate, requests per second.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub start_rate: u32,
    /// How much each step adds, requests per second.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub step: u32,
    /// Seconds per step.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub step_secs: u64,
    /// The ramp stops here even if the SLO still holds.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_rate: u32,
    /// Which fronts to ramp.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    pub front: Which,
    /// SLO: largest p99 of answers, ms.
    #[arg(long, default_value_t = 100)]
    pub max_p99_ms: u64,
    /// SLO: smallest share of requests that succeed, percent.
    #[arg(long, default_value_t = 99.0)]
    pub min_success: f64,
    /// Worker slots of the upstream.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub capacity: u32,
    /// Healthy service time of the upstream, ms (a call takes 1 to 2 times
    /// this).
    #[arg(long, default_value_t = 10)]
    pub latency_ms: u64,
    /// Most requests in flight (the load generator's bound).
    #[arg(long, default_value_t = 1024)]
    pub max_in_flight: u64,
    /// The load generator's timeout per request, ms.
    #[arg(long, default_value_t = 2000)]
    pub client_timeout_ms: u64,
    /// Seed of the upstream's draws.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output directory.
    #[arg(long, default_value = "target/demo/capacity")]
    pub out: PathBuf,
    /// No line per step while ramping.
    #[arg(long)]
    pub quiet: bool,
}

/// The ramp of one front.
#[derive(Clone, Debug, PartialEq)]
pub struct Ramp {
    /// `protected` or `unprotected`.
    pub name: &'static str,
    /// The steps run, in order.
    pub steps: Vec<Step>,
    /// Where the SLO broke.
    pub knee: Knee,
}

/// The rates of the ramp: `start`, `start + step`, ... up to `max`.
pub fn rates(start: u32, step: u32, max: u32) -> Vec<u32> {
    let step = step.max(1);
    (0..=max.saturating_sub(start) / step)
        .map(|k| start + k * step)
        .collect()
}

async fn ramp(args: &CapacityArgs, fronts: Fronts, slo: &Slo) -> Result<Ramp, Box<dyn Error>> {
    let rates = rates(args.start_rate, args.step, args.max_rate);
    let step_len = Duration::from_secs(args.step_secs);
    let bounds = Bounds {
        max_in_flight: args.max_in_flight,
        client_timeout: Duration::from_millis(args.client_timeout_ms),
    };
    let horizon = (step_len + bounds.client_timeout + Duration::from_secs(10))
        * u32::try_from(rates.len()).unwrap_or(u32::MAX);
    let mut protection = Protection::for_rate(args.max_rate);
    protection.limits = (16, 64, 1024);
    let objective = protection.objective;
    let harness = Harness::start(&HarnessConfig {
        timeline: Arc::new(Timeline::healthy(
            horizon,
            Duration::from_millis(args.latency_ms),
        )),
        capacity: args.capacity,
        queue_timeout: bounds.client_timeout,
        protection,
        fronts,
        seed: args.seed,
        port: 0,
        horizon,
        peers: Vec::new(),
    })?;
    let name = if fronts == Fronts::Protected {
        "protected"
    } else {
        "unprotected"
    };
    let mut steps = Vec::new();
    for rate in rates {
        let drive = harness
            .drive(&DriveOptions {
                plan: RatePlan::constant(rate, step_len),
                bounds,
                bucket: Duration::from_secs(1),
                progress: ProgressMode::Quiet,
                sample_process: None,
                objective,
            })
            .await?;
        let Some(front) = drive.fronts.first() else {
            break;
        };
        let step = Step {
            rate,
            tally: front.total.tally,
            latency: front.total.all,
            goodput: front.total.tally.good as f64 / step_len.as_secs_f64(),
        };
        let ok = slo.met_by_group(&step.tally, &step.latency);
        if !args.quiet {
            println!(
                "  {name:<11} {rate:>6}/s  ok {:>6}  p99 {:>8}  goodput {:>7.0}/s  {}",
                pct(step.tally.success_rate()),
                ms(step.latency.p99),
                step.goodput,
                if ok { "within SLO" } else { "SLO broken" }
            );
        }
        steps.push(step);
        if !ok {
            break;
        }
    }
    harness.shutdown();
    let knee = sli::knee(&steps, slo);
    Ok(Ramp { name, steps, knee })
}

fn render(args: &CapacityArgs, slo: &Slo, ramps: &[Ramp], checks: &[Check]) -> String {
    let mut o = String::new();
    let title = "tenlives capacity: load ramped until the SLO breaks";
    let _ = writeln!(o, "{title}\n{}", "=".repeat(title.chars().count()));
    let _ = writeln!(
        o,
        "Steps of {} s from {}/s by {}/s (at most {}/s); SLO: at least {} succeed and p99 ≤ {}.\n\
         Upstream: {} worker slots, {}–{} ms per call (about {:.0} calls/s at most).\n",
        args.step_secs,
        args.start_rate,
        args.step,
        args.max_rate,
        pct(1.0 - slo.max_unsuccessful),
        ms(slo.max_p99),
        args.capacity,
        args.latency_ms,
        args.latency_ms * 2,
        f64::from(args.capacity) * 1000.0 / (args.latency_ms.max(1) as f64 * 1.5),
    );
    for r in ramps {
        let _ = writeln!(o, "{} front", r.name);
        let rows: Vec<Vec<String>> = r
            .steps
            .iter()
            .map(|s| {
                vec![
                    format!("{}/s", s.rate),
                    count(s.tally.sent),
                    pct(s.tally.success_rate()),
                    pct(s.tally.share(s.tally.rejected + s.tally.shed())),
                    ms(s.latency.p50),
                    ms(s.latency.p99),
                    format!("{:.0}/s", s.goodput),
                    if slo.met_by_group(&s.tally, &s.latency) {
                        "yes"
                    } else {
                        "NO"
                    }
                    .to_string(),
                ]
            })
            .collect();
        o.push_str(&table(
            &[
                "offered",
                "sent",
                "succeeded",
                "refused",
                "p50",
                "p99",
                "goodput",
                "SLO met",
            ],
            &rows,
        ));
        let _ = match (r.knee.last_good, r.knee.first_bad) {
            (Some(g), Some(b)) => writeln!(
                o,
                "  knee: the SLO held up to {}/s ({:.0} successes/s) and broke at {}/s.\n",
                g.rate, g.goodput, b.rate
            ),
            (Some(g), None) => writeln!(
                o,
                "  knee: above {}/s — the SLO still held at the last step ({:.0} successes/s).\n",
                g.rate, g.goodput
            ),
            (None, _) => writeln!(
                o,
                "  knee: below {}/s — even the first step broke the SLO.\n",
                args.start_rate
            ),
        };
    }
    o.push_str(&super::report::checks("capacity", checks));
    o
}

fn plot(path: &Path, ramps: &[Ramp]) -> Result<(), Box<dyn Error>> {
    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((2, 1));
    let max_rate = ramps
        .iter()
        .flat_map(|r| r.steps.iter().map(|s| f64::from(s.rate)))
        .fold(10.0, f64::max)
        * 1.05;
    let colors = [RGBColor(38, 110, 200), RGBColor(200, 40, 40)];
    let mut top = ChartBuilder::on(&panels[0])
        .caption(
            "good answers (successes within the objective) per second against the rate offered",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_rate, 0.0..max_rate)?;
    top.configure_mesh()
        .x_desc("offered, requests/s")
        .y_desc("succeeded/s")
        .draw()?;
    top.draw_series(LineSeries::new(
        [(0.0, 0.0), (max_rate, max_rate)],
        BLACK.mix(0.3),
    ))?
    .label("all succeed")
    .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.3)));
    for (r, color) in ramps.iter().zip(colors) {
        top.draw_series(LineSeries::new(
            r.steps.iter().map(|s| (f64::from(s.rate), s.goodput)),
            color.stroke_width(2),
        ))?
        .label(r.name)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    top.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()?;
    let p99_top = ramps
        .iter()
        .flat_map(|r| r.steps.iter().map(|s| s.latency.p99.as_secs_f64() * 1e3))
        .fold(10.0, f64::max)
        * 2.0;
    let mut bottom = ChartBuilder::on(&panels[1])
        .caption(
            "p99 of answers against the rate offered (log scale)",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_rate, (0.1..p99_top).log_scale())?;
    bottom
        .configure_mesh()
        .x_desc("offered, requests/s")
        .y_desc("p99, ms")
        .draw()?;
    for (r, color) in ramps.iter().zip(colors) {
        bottom
            .draw_series(LineSeries::new(
                r.steps.iter().map(|s| {
                    (
                        f64::from(s.rate),
                        (s.latency.p99.as_secs_f64() * 1e3).max(0.1),
                    )
                }),
                color.stroke_width(2),
            ))?
            .label(r.name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    bottom
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()?;
    root.present()?;
    Ok(())
}

/// Runs `capacity`; returns whether every ramped front met the SLO at its
/// first step at least (a knee was found).
///
/// # Errors
///
/// When the services cannot start or the files cannot be written.
pub async fn capacity(args: &CapacityArgs) -> Result<bool, Box<dyn Error>> {
    let slo = Slo {
        max_unsuccessful: (1.0 - args.min_success / 100.0).max(0.0),
        max_p99: Duration::from_millis(args.max_p99_ms),
    };
    let which: &[Fronts] = match args.front {
        Which::Both => &[Fronts::Protected, Fronts::Unprotected],
        Which::Protected => &[Fronts::Protected],
        Which::Unprotected => &[Fronts::Unprotected],
    };
    let mut ramps = Vec::new();
    for &fronts in which {
        ramps.push(ramp(args, fronts, &slo).await?);
    }
    let checks: Vec<Check> = ramps
        .iter()
        .map(|r| Check {
            name: format!("{}: the SLO held at some rate (a knee exists)", r.name),
            limit: format!("≥ {}/s", args.start_rate),
            measured: r
                .knee
                .last_good
                .map_or_else(|| "none".to_string(), |s| format!("{}/s", s.rate)),
            passed: r.knee.last_good.is_some(),
        })
        .collect();
    let text = render(args, &slo, &ramps, &checks);
    fs::create_dir_all(&args.out)?;
    let report = args.out.join("report.txt");
    fs::write(&report, &text)?;
    let json_path = args.out.join("summary.json");
    let value = json!({
        "scenario": "capacity",
        "slo": { "min_success": 1.0 - slo.max_unsuccessful, "max_p99_ms": args.max_p99_ms },
        "fronts": ramps.iter().map(|r| json!({
            "name": r.name,
            "knee_rate": r.knee.last_good.map(|s| s.rate),
            "broke_at_rate": r.knee.first_bad.map(|s| s.rate),
            "steps": r.steps.iter().map(|s| json!({
                "rate": s.rate,
                "sent": s.tally.sent,
                "succeeded": s.tally.succeeded,
                "failed": s.tally.failed(),
                "rejected": s.tally.rejected,
                "shed": s.tally.shed(),
                "p50_ms": s.latency.p50.as_secs_f64() * 1e3,
                "p99_ms": s.latency.p99.as_secs_f64() * 1e3,
                "goodput_per_s": s.goodput,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "checks": checks_json(&checks),
        "passed": sli::all_passed(&checks),
    });
    fs::write(&json_path, serde_json::to_string_pretty(&value)?)?;
    let svg = args.out.join("capacity.svg");
    plot(&svg, &ramps)?;
    print!("{text}");
    println!("\nFiles written:");
    for f in [&report, &json_path, &svg] {
        println!("  {}", f.display());
    }
    Ok(sli::all_passed(&checks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ramp_climbs_to_the_maximum() {
        assert_eq!(rates(100, 100, 500), [100, 200, 300, 400, 500]);
        assert_eq!(rates(100, 150, 500), [100, 250, 400]);
        assert_eq!(rates(100, 100, 50), [100]);
        assert_eq!(rates(5, 0, 7), [5, 6, 7]);
    }
}
