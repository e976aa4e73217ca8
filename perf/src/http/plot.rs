//! SVG plots of a drive (plotters): latency and throughput over time, one
//! panel per front, with the upstream's fault phases shaded grey and the
//! protected front's breaker shaded red while open and orange while
//! half-open. The throughput panels draw the good answers (successes within
//! the latency objective) beside their limit (see
//! [`goodput`](super::goodput)).

use std::error::Error;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use tenlives_engine::breaker::BreakerState;

use super::goodput::Limits;
use super::record::Bucket;
use super::results::{Drive, FrontRun};
use super::timeline::Timeline;

type Res = Result<(), Box<dyn Error>>;

const SIZE: (u32, u32) = (1100, 820);
const OPEN: RGBColor = RGBColor(220, 50, 47);
const HALF_OPEN: RGBColor = RGBColor(240, 160, 30);
const P50: RGBColor = RGBColor(38, 110, 200);
const P99: RGBColor = RGBColor(120, 40, 160);
const OK: RGBColor = RGBColor(40, 150, 60);
const FAILED: RGBColor = RGBColor(200, 40, 40);
const REFUSED: RGBColor = RGBColor(230, 140, 20);
const GOOD: RGBColor = RGBColor(20, 90, 40);
const LIMIT: RGBColor = RGBColor(0, 0, 0);

/// The x range of a drive's plots, seconds since the start of the run.
fn x_range(drive: &Drive) -> (f64, f64) {
    let from = drive.started_secs;
    let last = drive
        .fronts
        .iter()
        .flat_map(|f| f.series.last())
        .map(|b| b.end_secs)
        .fold(from + drive.length.as_secs_f64(), f64::max);
    (from, last.max(from + 1.0))
}

/// `(start, bucket)` pairs: each bucket with the second it started at,
/// leaving out a last bucket shorter than half the others (the few answers
/// that ended after the load stopped), whose rate would mislead.
fn spans(series: &[Bucket], from: f64) -> impl Iterator<Item = (f64, &Bucket)> {
    let mut prev = from;
    let pairs: Vec<(f64, &Bucket)> = series
        .iter()
        .map(|b| {
            let start = prev;
            prev = b.end_secs;
            (start, b)
        })
        .collect();
    let widest = pairs
        .iter()
        .map(|(s, b)| b.end_secs - s)
        .fold(0.0, f64::max);
    let keep = match pairs.last() {
        Some((s, b)) if pairs.len() > 1 && b.end_secs - s < widest / 2.0 => pairs.len() - 1,
        _ => pairs.len(),
    };
    pairs.into_iter().take(keep)
}

/// Shades the fault phases (grey) and the breaker's open (red) and
/// half-open (orange) intervals behind a chart's series.
fn shade<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, impl CoordTranslate<From = (f64, f64)>>,
    timeline: &Timeline,
    front: &FrontRun,
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> Res
where
    DB::ErrorType: 'static,
{
    let faults = timeline
        .phases()
        .iter()
        .filter(|p| p.kind.is_fault())
        .map(|p| (p.from.as_secs_f64().max(x0), p.to.as_secs_f64().min(x1)))
        .filter(|(a, b)| a < b);
    chart.draw_series(
        faults.map(|(a, b)| Rectangle::new([(a, y0), (b, y1)], BLACK.mix(0.07).filled())),
    )?;
    let breaker = front
        .breaker_intervals(x1)
        .into_iter()
        .map(|(a, b, state)| {
            let color = if state == BreakerState::HalfOpen {
                HALF_OPEN
            } else {
                OPEN
            };
            Rectangle::new([(a.max(x0), y0), (b.min(x1), y1)], color.mix(0.18).filled())
        });
    chart.draw_series(breaker)?;
    Ok(())
}

fn panels(path: &Path) -> Result<Vec<DrawingArea<SVGBackend<'_>, Shift>>, Box<dyn Error>> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    Ok(root.split_evenly((2, 1)))
}

fn latency_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    drive: &Drive,
    timeline: &Timeline,
    front: &FrontRun,
) -> Res
where
    DB::ErrorType: 'static,
{
    let (x0, x1) = x_range(drive);
    let top = front
        .series
        .iter()
        .map(|b| b.latency.p99.as_secs_f64() * 1e3)
        .fold(100.0, f64::max)
        * 2.0;
    let (y0, y1) = (0.1, top);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "{} front: latency of answers per second (log scale)",
                front.name
            ),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, (y0..y1).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("milliseconds")
        .draw()?;
    shade(&mut chart, timeline, front, (x0, x1), (y0, y1))?;
    for (label, color, pick) in [
        (
            "p50",
            P50,
            (|b: &Bucket| b.latency.p50) as fn(&Bucket) -> std::time::Duration,
        ),
        ("p99", P99, |b: &Bucket| b.latency.p99),
    ] {
        let points = front
            .series
            .iter()
            .filter(|b| b.latency.count > 0)
            .map(|b| (b.end_secs, (pick(b).as_secs_f64() * 1e3).max(y0)));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    legend(&mut chart, front)
}

fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, impl CoordTranslate<From = (f64, f64)>>,
    front: &FrontRun,
) -> Res
where
    DB::ErrorType: 'static,
{
    // Legend entries for the shading, drawn as empty series.
    chart
        .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
        .label("upstream fault")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], BLACK.mix(0.15).filled()));
    if front.protected {
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
            .label("breaker open")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], OPEN.mix(0.4).filled()));
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
            .label("breaker half-open")
            .legend(|(x, y)| {
                Rectangle::new([(x, y - 5), (x + 20, y + 5)], HALF_OPEN.mix(0.4).filled())
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()?;
    Ok(())
}

fn throughput_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    drive: &Drive,
    limits: &Limits<'_>,
    front: &FrontRun,
) -> Res
where
    DB::ErrorType: 'static,
{
    let (x0, x1) = x_range(drive);
    let per_sec = |start: f64, b: &Bucket, n: u64| {
        let width = (b.end_secs - start).max(1e-3);
        n as f64 / width
    };
    let top = spans(&front.series, drive.started_secs)
        .map(|(s, b)| per_sec(s, b, b.tally.ended()))
        .fold(10.0, f64::max)
        * 1.15;
    let (y0, y1) = (0.0, top);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{} front: answers per second", front.name),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("answers / s")
        .draw()?;
    shade(&mut chart, limits.timeline, front, (x0, x1), (y0, y1))?;
    let limit: Vec<(f64, f64)> = spans(&front.series, drive.started_secs)
        .map(|(s, b)| {
            (
                b.end_secs,
                limits.between(s, b.end_secs) / (b.end_secs - s).max(1e-3),
            )
        })
        .collect();
    chart
        .draw_series(DashedLineSeries::new(limit, 6, 4, LIMIT.stroke_width(2)))?
        .label("limit of good answers")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], LIMIT.stroke_width(2)));
    type Pick = fn(&Bucket) -> u64;
    let lines: [(&str, RGBColor, Pick); 4] = [
        ("succeeded", OK, |b| b.tally.succeeded),
        ("good: succeeded within the objective", GOOD, |b| {
            b.tally.good
        }),
        ("failed", FAILED, |b| b.tally.failed()),
        ("rejected or shed", REFUSED, |b| {
            b.tally.rejected + b.tally.shed()
        }),
    ];
    for (label, color, pick) in lines {
        let points: Vec<(f64, f64)> = spans(&front.series, drive.started_secs)
            .map(|(s, b)| (b.end_secs, per_sec(s, b, pick(b))))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    legend(&mut chart, front)
}

/// Writes `latency.svg` (p50 and p99 per bucket) to `path`.
///
/// # Errors
///
/// When the file cannot be written.
pub fn latency(path: &Path, drive: &Drive, timeline: &Timeline) -> Res {
    let areas = panels(path)?;
    for (area, front) in areas.iter().zip(&drive.fronts) {
        latency_panel(area, drive, timeline, front)?;
    }
    if let Some(a) = areas.first() {
        a.present()?;
    }
    Ok(())
}

/// Writes `throughput.svg` (succeeded, good, failed, refused per second,
/// and the limit of good answers) to `path`.
///
/// # Errors
///
/// When the file cannot be written.
pub fn throughput(path: &Path, drive: &Drive, limits: &Limits<'_>) -> Res {
    let areas = panels(path)?;
    for (area, front) in areas.iter().zip(&drive.fronts) {
        throughput_panel(area, drive, limits, front)?;
    }
    if let Some(a) = areas.first() {
        a.present()?;
    }
    Ok(())
}

/// The colours of the fronts in the effectiveness plot: tenlives, no
/// policy, then the peers.
const FRONTS: [RGBColor; 4] = [
    GOOD,
    RGBColor(150, 150, 150),
    RGBColor(38, 110, 200),
    RGBColor(230, 140, 20),
];

/// The effectiveness plot of `goodput`: per scenario, a bar per front with
/// its good answers as a share of the limit, in percent. `scenarios` holds
/// `(scenario, [(front, share)])`, every scenario with the fronts in the
/// same order.
///
/// # Errors
///
/// When the file cannot be written.
pub fn effectiveness(path: &Path, scenarios: &[(&str, Vec<(&str, f64)>)]) -> Res {
    let root = SVGBackend::new(path, (1100, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let groups = scenarios.len().max(1);
    let fronts = scenarios.first().map_or(1, |(_, f)| f.len().max(1));
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "goodput: good answers as a share of the limit, per scenario and front",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..groups as f64, 0.0..135.0)?;
    let names: Vec<&str> = scenarios.iter().map(|(n, _)| *n).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups * 2 + 1)
        .x_label_formatter(&|x| {
            // Names at the middle of each group only.
            let i = x.floor();
            if (x - i - 0.5).abs() < 1e-6 {
                names
                    .get(i as usize)
                    .map_or_else(String::new, |n| (*n).to_string())
            } else {
                String::new()
            }
        })
        .y_desc("% of the limit")
        .draw()?;
    let width = 0.8 / fronts as f64;
    for k in 0..fronts {
        let color = FRONTS[k % FRONTS.len()];
        let label = scenarios
            .first()
            .and_then(|(_, f)| f.get(k))
            .map_or("", |(n, _)| *n);
        chart
            .draw_series(scenarios.iter().enumerate().filter_map(|(g, (_, f))| {
                let share = f.get(k)?.1 * 100.0;
                let x = g as f64 + 0.1 + width * k as f64;
                Some(Rectangle::new(
                    [(x, 0.0), (x + width * 0.9, share.min(135.0))],
                    color.filled(),
                ))
            }))?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], color.filled()));
    }
    chart
        .draw_series(LineSeries::new(
            [(0.0, 90.0), (groups as f64, 90.0)],
            BLACK.mix(0.5).stroke_width(1),
        ))?
        .label("90 % of the limit")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.5).stroke_width(1)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()?;
    root.present()?;
    Ok(())
}

/// One line of [`fleet_rates`]: a label and its points (seconds, per second).
pub type RateLine<'a> = (&'a str, Vec<(f64, f64)>);

/// The `fleet` scenario's plot: the admitted rate of each front and of the
/// whole fleet per second, beside the quota (dashed) and the stated bound
/// on one second's admissions (dotted).
pub fn fleet_rates(
    path: &Path,
    title: &str,
    fronts: &[RateLine<'_>],
    global: &[(f64, f64)],
    quota: f64,
    bound: f64,
) -> Res {
    const FRONTS: [RGBColor; 4] = [P50, P99, REFUSED, OK];
    let root = SVGBackend::new(path, (SIZE.0, SIZE.1 / 2 + 80)).into_drawing_area();
    root.fill(&WHITE)?;
    let x1 = global.iter().map(|p| p.0 + 0.5).fold(1.0, f64::max);
    let top = global.iter().map(|p| p.1).fold(bound, f64::max).max(1.0) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x1, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("admitted / s")
        .draw()?;
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, quota), (x1, quota)],
            6,
            4,
            LIMIT.stroke_width(2),
        ))?
        .label("quota")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], LIMIT.stroke_width(2)));
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, bound), (x1, bound)],
            2,
            4,
            FAILED.stroke_width(2),
        ))?
        .label("bound on one second: b + rate + N·L")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], FAILED.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(
            global.iter().copied(),
            GOOD.stroke_width(3),
        ))?
        .label("fleet (all fronts)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], GOOD.stroke_width(3)));
    for (i, (label, points)) in fronts.iter().enumerate() {
        let color = FRONTS[i % FRONTS.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::http::results::fixtures::drive;

    #[test]
    fn plots_show_both_fronts_with_the_breaker_and_the_faults_shaded() {
        let drive = drive();
        let timeline = Timeline::standard(Duration::from_secs(10), Duration::from_millis(10));
        let dir = std::env::temp_dir().join(format!("tenlives-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (l, t) = (dir.join("latency.svg"), dir.join("throughput.svg"));
        latency(&l, &drive, &timeline).unwrap();
        let plan = crate::http::load::RatePlan::constant(10, Duration::from_secs(10));
        let limits = Limits {
            timeline: &timeline,
            plan: &plan,
            started: Duration::ZERO,
            capacity: 8,
            objective: Duration::from_millis(300),
        };
        throughput(&t, &drive, &limits).unwrap();
        let svg = std::fs::read_to_string(&t).unwrap();
        assert!(svg.contains("limit of good answers") && svg.contains("good: succeeded within"));
        for (path, title) in [(&l, "latency of answers"), (&t, "answers per second")] {
            let svg = std::fs::read_to_string(path).unwrap();
            assert!(svg.starts_with("<svg"));
            assert!(svg.contains(&format!("protected front: {title}")));
            assert!(svg.contains(&format!("unprotected front: {title}")));
            assert!(svg.contains("breaker open") && svg.contains("upstream fault"));
            // The open interval (1.5 s to 3.5 s) is shaded in the breaker's
            // colour.
            assert!(svg.contains("#DC322F"), "{}", path.display());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_effectiveness_plot_has_a_bar_per_scenario_and_front() {
        let dir = std::env::temp_dir().join(format!("tenlives-eff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("effectiveness.svg");
        let fronts = |a: f64, b: f64| vec![("tenlives", a), ("unprotected", b)];
        effectiveness(
            &path,
            &[
                ("flapping", fronts(0.97, 0.99)),
                ("half-capacity", fronts(0.95, 0.55)),
            ],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        for text in [
            "flapping",
            "half-capacity",
            "tenlives",
            "unprotected",
            "90 % of the limit",
        ] {
            assert!(svg.contains(text), "{text}");
        }
        // Both fronts' colours are drawn.
        assert!(svg.contains("#145A28") && svg.contains("#969696"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
