//! The `replay` and `record` subcommands.
//!
//! `replay` reads a request trace (`tenlives_ops::replay::Trace`), replays
//! it in virtual time against one or two configuration files (the YAML or
//! TOML a `tenlives_ops::Registry` loads) and prints what each would have
//! admitted and rejected, and when its breaker would have opened, side by
//! side, with the requests on which they disagree; it writes `replay.svg`
//! (a panel per configuration: arrivals, admitted, rejected and failed per
//! bucket, the breaker's open and half-open spans shaded) and `replay.txt`
//! (the printed report). The report depends on the trace and the files
//! only: the same inputs print the same bytes.
//!
//! `record` makes a trace from a real run: an open-loop load on a tokio
//! service whose dependency fails for the middle third of the run, behind a
//! live circuit breaker, with a `RecordLayer` outermost.

use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use plotters::prelude::*;
use tenlives_engine::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
use tenlives_ops::ConfigSet;
use tenlives_ops::replay::{
    Candidate, Decision, RecordLayer, Recorder, Replay, Stage, Tag, Trace, TraceOutcome, format_ns,
    replay, stack_outcome,
};
use tenlives_tokio::AdmissionLayer;
use tower_layer::Layer;
use tower_service::Service;

/// Options of `replay`.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct ReplayArgs {
    /// The trace file.
    #[arg(long)]
    pub trace: PathBuf,
    /// A configuration file (.yaml, .yml or .toml); give it once, or twice
    /// to compare two.
    #[arg(long = "config", required = true, num_args = 1)]
    pub configs: Vec<PathBuf>,
    /// The policy instance whose settings are replayed (else each
    /// section's `configs.default`).
    #[arg(long, default_value = "default")]
    pub instance: String,
    /// Give each key of the trace its own rate limiter (as a keyed
    /// rate-limiter family does) instead of one for all.
    #[arg(long)]
    pub per_key: bool,
    /// The length of a bucket of the plot, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub bucket_ms: u64,
    /// Where `replay.svg` and `replay.txt` go.
    #[arg(long, default_value = "target/replay")]
    pub out: PathBuf,
}

/// One configuration's replay.
struct Side {
    name: String,
    run: Replay,
}

/// Replays the trace against each configuration and renders the report.
fn compare(trace: &Trace, args: &ReplayArgs) -> Result<(String, Vec<Side>), Box<dyn Error>> {
    if args.configs.len() > 2 {
        return Err("give one or two --config files".into());
    }
    let mut sides = Vec::new();
    for path in &args.configs {
        let config = ConfigSet::from_path(path)?;
        let mut candidate = Candidate::from_config(&config, &args.instance)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if args.per_key {
            candidate = candidate.rate_per_key();
        }
        sides.push(Side {
            name: path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
            run: replay(trace, &candidate, args.bucket_ms * 1_000_000),
        });
    }
    Ok((render(trace, &sides), sides))
}

fn render(trace: &Trace, sides: &[Side]) -> String {
    let mut out = String::new();
    let span = trace.records.last().map_or(0, |r| r.at_ns);
    let count = |o: TraceOutcome| trace.records.iter().filter(|r| r.outcome == o).count();
    let _ = writeln!(
        out,
        "trace: {} requests over {}, {} dropped by the recorder",
        trace.records.len(),
        format_ns(span),
        trace.dropped
    );
    let _ = writeln!(
        out,
        "live: {} shed, {} succeeded, {} failed, {} ignored",
        count(TraceOutcome::Shed),
        count(TraceOutcome::Ok),
        count(TraceOutcome::Err),
        count(TraceOutcome::Ignored)
    );
    let _ = writeln!(out);
    let row = |out: &mut String, label: &str, cells: Vec<String>| {
        let _ = write!(out, "{label:<28}");
        for c in cells {
            let _ = write!(out, "{c:>24}");
        }
        out.push('\n');
    };
    let cells = |f: &dyn Fn(&Replay) -> String| sides.iter().map(|s| f(&s.run)).collect();
    row(&mut out, "", sides.iter().map(|s| s.name.clone()).collect());
    row(&mut out, "admitted", cells(&|r| r.admitted().to_string()));
    row(&mut out, "  succeeded", cells(&|r| r.succeeded.to_string()));
    row(
        &mut out,
        "  failed (let through)",
        cells(&|r| r.failed.to_string()),
    );
    row(&mut out, "  ignored", cells(&|r| r.ignored.to_string()));
    row(
        &mut out,
        "  unknown (shed live)",
        cells(&|r| r.unknown.to_string()),
    );
    row(
        &mut out,
        "rejected",
        cells(&|r| r.rejected_total().to_string()),
    );
    for stage in Stage::ALL {
        if sides.iter().any(|s| s.run.stages.contains(&stage)) {
            let i = stage as usize;
            row(
                &mut out,
                &format!("  by {}", stage.name()),
                cells(&|r: &Replay| {
                    if r.stages.contains(&stage) {
                        r.rejected[i].to_string()
                    } else {
                        "-".into()
                    }
                }),
            );
        }
    }
    row(
        &mut out,
        "breaker first opened at",
        cells(&|r| r.first_open_ns().map_or_else(|| "never".into(), format_ns)),
    );
    row(
        &mut out,
        "breaker transitions",
        cells(&|r| r.transitions.len().to_string()),
    );
    if let [a, b] = sides {
        let mut a_only = 0u64;
        let mut b_only = 0u64;
        let mut first = None;
        for (i, (da, db)) in a.run.decisions.iter().zip(&b.run.decisions).enumerate() {
            let (aa, ba) = (*da == Decision::Admitted, *db == Decision::Admitted);
            if aa != ba {
                first.get_or_insert(i);
                if aa { a_only += 1 } else { b_only += 1 }
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "differences: {} requests", a_only + b_only);
        let _ = writeln!(out, "  {} admits, {} rejects: {a_only}", a.name, b.name);
        let _ = writeln!(out, "  {} rejects, {} admits: {b_only}", a.name, b.name);
        if let Some(i) = first {
            let _ = writeln!(out, "  first at {}", format_ns(trace.records[i].at_ns));
        }
    }
    for s in sides {
        let _ = writeln!(out);
        let _ = writeln!(out, "{}:", s.name);
        for line in s.run.render().lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// Runs `replay`: prints the report, writes it and the plot.
///
/// # Errors
///
/// An unreadable trace or configuration, a configuration with nothing to
/// replay, a file that cannot be written.
pub fn main(args: &ReplayArgs) -> Result<(), Box<dyn Error>> {
    let text = std::fs::read_to_string(&args.trace)
        .map_err(|e| format!("{}: {e}", args.trace.display()))?;
    let trace = Trace::parse(&text).map_err(|e| format!("{}: {e}", args.trace.display()))?;
    let (report, sides) = compare(&trace, args)?;
    print!("{report}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("replay.txt"), &report)?;
    let svg = args.out.join("replay.svg");
    plot(&svg, &sides)?;
    println!(
        "\nwrote {} and {}",
        args.out.join("replay.txt").display(),
        svg.display()
    );
    Ok(())
}

const ARRIVED: RGBColor = RGBColor(150, 150, 150);
const ADMITTED: RGBColor = RGBColor(40, 150, 60);
const REJECTED: RGBColor = RGBColor(230, 140, 20);
const FAILED: RGBColor = RGBColor(200, 40, 40);

fn plot(path: &Path, sides: &[Side]) -> Result<(), Box<dyn Error>> {
    let root = SVGBackend::new(path, (1100, 420 * sides.len().max(1) as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((sides.len().max(1), 1));
    for (area, side) in areas.iter().zip(sides) {
        let r = &side.run;
        let secs = r.bucket_ns as f64 / 1e9;
        let x1 = (r.series.len() as f64 * secs).max(secs);
        let top = r.series.iter().map(|b| b.arrived).max().unwrap_or(1).max(1) as f64 * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "{}: requests per {} ms bucket",
                    side.name,
                    r.bucket_ns / 1_000_000
                ),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..x1, 0.0..top)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the trace began")
            .y_desc("requests")
            .draw()?;
        // The breaker's open (red) and half-open (orange) spans.
        let mut spans = Vec::new();
        let mut since: Option<(f64, BreakerState)> = None;
        for t in &r.transitions {
            let at = t.at_ns as f64 / 1e9;
            if let Some((from, state)) = since.take() {
                spans.push((from, at, state));
            }
            if matches!(t.to, BreakerState::Open | BreakerState::HalfOpen) {
                since = Some((at, t.to));
            }
        }
        if let Some((from, state)) = since {
            spans.push((from, x1, state));
        }
        chart.draw_series(spans.into_iter().map(|(a, b, state)| {
            let color = if state == BreakerState::Open {
                FAILED
            } else {
                REJECTED
            };
            Rectangle::new([(a, 0.0), (b, top)], color.mix(0.12).filled())
        }))?;
        type Pick = fn(&tenlives_ops::replay::Bucket) -> u64;
        let lines: [(&str, RGBColor, Pick); 4] = [
            ("arrived", ARRIVED, |b| b.arrived),
            ("admitted", ADMITTED, |b| b.admitted),
            ("rejected", REJECTED, |b| b.rejected),
            ("failed (let through)", FAILED, |b| b.failed),
        ];
        for (label, color, pick) in lines {
            let points = r
                .series
                .iter()
                .enumerate()
                .map(|(i, b)| ((i as f64 + 0.5) * secs, pick(b) as f64));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Options of `record`.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct RecordArgs {
    /// Length of the run in seconds; the dependency fails for its middle
    /// third.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub seconds: u64,
    /// Requests per second (open loop).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub rate: u32,
    /// Where the trace goes.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `record`: a real run on the tokio runtime, recorded.
///
/// # Errors
///
/// The trace file cannot be written.
pub async fn record(args: &RecordArgs) -> Result<(), Box<dyn Error>> {
    let total = args.seconds * u64::from(args.rate);
    let recorder = Arc::new(Recorder::new(usize::try_from(total)? + 16));
    let start = tokio::time::Instant::now();
    let length = Duration::from_secs(args.seconds);
    // The dependency: 2..=12 ms; during the middle third every 10th call
    // succeeds, the rest fail after 30 ms.
    let dependency = tower::service_fn(move |n: u64| async move {
        let t = start.elapsed();
        let outage = t >= length / 3 && t < 2 * length / 3;
        if outage && !n.is_multiple_of(10) {
            tokio::time::sleep(Duration::from_millis(30)).await;
            Err("dependency down")
        } else {
            tokio::time::sleep(Duration::from_millis(2 + n % 11)).await;
            Ok(n)
        }
    });
    let breaker = Arc::new(CircuitBreaker::new(
        BreakerConfig::builder()
            .failure_rate(50.0)
            .count_window(50)
            .minimum_calls(20)
            .open_duration(Duration::from_millis(500))
            .half_open_probes(3)
            .build()?,
    ));
    let svc = RecordLayer::new(
        recorder.clone(),
        |n: &u64| Tag {
            key: n % 4,
            retry: false,
        },
        stack_outcome,
    )
    .layer(AdmissionLayer::new(breaker).layer(dependency));
    let gap = Duration::from_secs(1) / args.rate;
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(gap);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for n in 0..total {
        tick.tick().await;
        let mut svc = svc.clone();
        tasks.spawn(async move {
            let _ = svc.call(n).await;
        });
    }
    while tasks.join_next().await.is_some() {}
    let trace = recorder.trace();
    std::fs::write(&args.out, trace.write())?;
    println!(
        "recorded {} requests ({} dropped) into {}",
        trace.records.len(),
        trace.dropped,
        args.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(configs: &[&str]) -> ReplayArgs {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        ReplayArgs {
            trace: root.join("replay/demo.trace"),
            configs: configs
                .iter()
                .map(|c| root.join("replay").join(c))
                .collect(),
            instance: "default".into(),
            per_key: false,
            bucket_ms: 250,
            out: std::env::temp_dir(),
        }
    }

    fn report(configs: &[&str]) -> (String, Vec<Side>) {
        let a = args(configs);
        let trace = Trace::parse(&std::fs::read_to_string(&a.trace).unwrap()).unwrap();
        compare(&trace, &a).unwrap()
    }

    #[test]
    fn the_recorded_trace_replays_to_the_same_bytes() {
        let (one, _) = report(&["tight.yaml", "loose.toml"]);
        let (two, _) = report(&["tight.yaml", "loose.toml"]);
        assert_eq!(one, two);
        assert!(one.contains("differences:"), "{one}");
    }

    #[test]
    fn on_the_recorded_outage_the_tight_breaker_opens_and_the_loose_one_later_or_never() {
        let (text, sides) = report(&["tight.yaml", "loose.toml"]);
        let tight = &sides[0].run;
        let loose = &sides[1].run;
        let open = tight.first_open_ns().unwrap_or_else(|| panic!("{text}"));
        // The outage is the middle third of a 6 s run.
        assert!((2_000_000_000..3_000_000_000).contains(&open), "{text}");
        assert!(loose.first_open_ns().is_none_or(|l| l > open), "{text}");
        assert!(tight.failed < loose.failed, "{text}");
        assert_eq!(tight.decisions.len(), loose.decisions.len());
    }

    #[test]
    fn the_plot_is_written() {
        let (_, sides) = report(&["tight.yaml"]);
        let path = std::env::temp_dir().join(format!("tenlives-replay-{}.svg", std::process::id()));
        plot(&path, &sides).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.contains("<svg") && svg.contains("admitted"));
    }
}
