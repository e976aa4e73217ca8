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
    let height = 70 + 26 * u32::try_from(rows.len())?;
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = rows.iter().map(|r| r.1).fold(0.0, f64::max);
    let bottom = rows.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
    // A peer 100 times slower would flatten every other bar: past a ratio
    // of 30 the axis is logarithmic, from a little below the smallest bar.
    if top > 30.0 * bottom && bottom > 0.0 {
        let from = bottom / 2.0;
        let axis = (from..top * 3.0).log_scale();
        let desc = "ns per operation, logarithmic (on 2 threads: per operation per thread)";
        bars_on(&root, op, &rows, axis, from, desc)?;
    } else {
        let desc = "ns per operation (on 2 threads: per operation per thread)";
        bars_on(&root, op, &rows, 0.0..top * 1.2, 0.0, desc)?;
    }
    root.present()?;
    Ok(())
}

/// Draws `rows` as bars from `from` on an `x` axis.
fn bars_on<X>(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    op: &Operation,
    rows: &[(String, f64, ShapeStyle)],
    x: X,
    from: f64,
    desc: &str,
) -> Result<(), Box<dyn Error>>
where
    X: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    X::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let n = i32::try_from(rows.len())?;
    let mut chart = ChartBuilder::on(root)
        .caption(&op.id, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(290)
        .build_cartesian_2d(x, (0..n).into_segmented())?;
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
        .x_desc(desc)
        .draw()?;
    chart.draw_series(rows.iter().zip(0..).map(|((_, v, style), i)| {
        let y = n - 1 - i;
        let mut bar = Rectangle::new(
            [
                (from, SegmentValue::Exact(y)),
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::Subject;

    fn subject(name: &str, kind: Kind, one: f64) -> Subject {
        Subject {
            name: name.to_owned(),
            kind,
            one: Some(one),
            two: None,
            by_param: BTreeMap::new(),
            instructions: None,
            allocations: None,
        }
    }

    fn chart_of(subjects: Vec<Subject>) -> String {
        let op = Operation {
            id: "layers/test".to_owned(),
            subjects,
        };
        let dir = std::env::temp_dir().join(format!("tenlives-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chart.svg");
        draw(&path, &op).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        svg
    }

    #[test]
    fn bars_go_logarithmic_only_when_one_would_flatten_the_others() {
        let close = chart_of(vec![
            subject("tenlives", Kind::Tenlives, 90.0),
            subject("peer", Kind::Peer, 800.0),
        ]);
        assert!(!close.contains("logarithmic"));
        assert!(close.contains("tenlives"));
        let far = chart_of(vec![
            subject("tenlives", Kind::Tenlives, 90.0),
            subject("peer", Kind::Peer, 73_000.0),
        ]);
        assert!(far.contains("logarithmic"));
    }
}
