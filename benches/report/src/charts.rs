//! SVG charts of the tables (plotters): horizontal bars of each operation's
//! subjects, and lines of the swept operations over their table size or
//! capacity (logarithmic).

use std::error::Error;
use std::path::Path;

use plotters::prelude::*;

use crate::doc::ns;
use crate::model::{Kind, Operation};

/// tenlives' colour.
const TENLIVES: RGBColor = RGBColor(31, 119, 180);
/// The peers' colour.
const PEER: RGBColor = RGBColor(214, 39, 40);
/// The floors' colour.
const FLOOR: RGBColor = RGBColor(140, 140, 140);
/// The lines of a sweep, one colour per subject.
const LINES: [RGBColor; 4] = [
    TENLIVES,
    PEER,
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

fn colour(kind: Kind) -> RGBColor {
    match kind {
        Kind::Tenlives => TENLIVES,
        Kind::Peer => PEER,
        Kind::Floor => FLOOR,
    }
}

/// Draws `op`'s chart into `path`: bars, or lines for a sweep.
pub fn draw(path: &Path, op: &Operation) -> Result<(), Box<dyn Error>> {
    if op.is_sweep() {
        lines(path, op)
    } else {
        bars(path, op)
    }
}

/// One bar per subject and thread count, ns per operation.
fn bars(path: &Path, op: &Operation) -> Result<(), Box<dyn Error>> {
    let mut rows: Vec<(String, f64, ShapeStyle)> = Vec::new();
    for s in &op.subjects {
        let c = colour(s.kind);
        if let Some(v) = s.one {
            let label = if s.two.is_some() {
                format!("{}, 1 thread", s.name)
            } else {
                s.name.clone()
            };
            rows.push((label, v, c.filled()));
        }
        if let Some(v) = s.two {
            rows.push((format!("{}, 2 threads", s.name), v, c.mix(0.5).filled()));
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    let n = i32::try_from(rows.len())?;
    let height = 70 + 26 * u32::try_from(rows.len())?;
    let top = rows.iter().map(|r| r.1).fold(0.0, f64::max) * 1.2;
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&op.id, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(290)
        .build_cartesian_2d(0.0..top, (0..n).into_segmented())?;
    // Row i is drawn at y = n - 1 - i, so the first row is on top.
    let label_of = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(y) | SegmentValue::Exact(y) => usize::try_from(n - 1 - y)
            .ok()
            .and_then(|i| rows.get(i))
            .map_or_else(String::new, |r| r.0.clone()),
        SegmentValue::Last => String::new(),
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(TRANSPARENT)
        .y_labels(rows.len())
        .y_label_formatter(&label_of)
        .x_desc("ns per operation (on 2 threads: per operation per thread)")
        .draw()?;
    chart.draw_series(rows.iter().zip(0..).map(|((_, v, style), i)| {
        let y = n - 1 - i;
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(y)),
                (*v, SegmentValue::Exact(y + 1)),
            ],
            *style,
        );
        bar.set_margin(4, 4, 0, 0);
        bar
    }))?;
    chart.draw_series(rows.iter().zip(0..).map(|((_, v, _), i)| {
        Text::new(
            format!(" {}", ns(*v)),
            (*v, SegmentValue::CenterOf(n - 1 - i)),
            ("sans-serif", 12),
        )
    }))?;
    root.present()?;
    Ok(())
}

/// One line per subject over the swept size, ns per operation.
fn lines(path: &Path, op: &Operation) -> Result<(), Box<dyn Error>> {
    let subjects: Vec<_> = op
        .subjects
        .iter()
        .filter(|s| !s.by_param.is_empty())
        .collect();
    let params = subjects.iter().flat_map(|s| s.by_param.keys().copied());
    let (lo, hi) = params.fold((u64::MAX, 0), |(lo, hi), p| (lo.min(p), hi.max(p)));
    let top = subjects
        .iter()
        .flat_map(|s| s.by_param.values().copied())
        .fold(0.0, f64::max)
        * 1.2;
    let what = if op.id.contains("keyed") {
        "keys in the table"
    } else {
        "capacity (slots)"
    };
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&op.id, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d((lo as f64 * 0.8..hi as f64 * 1.25).log_scale(), 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc(what)
        .y_desc("ns per operation")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    for (s, c) in subjects.iter().zip(LINES.iter().cycle()) {
        let points: Vec<(f64, f64)> = s.by_param.iter().map(|(p, v)| (*p as f64, *v)).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}
