//! The generated part of `docs/performance.md`: a region between two
//! marker lines, replaced on every run, so that the hand-written sections
//! around it stay.

use std::fmt::Write as _;

use crate::machine::Machine;
use crate::model::{Kind, Operation, Subject, Threads, best_peer, fewest_instructions_peer};
use crate::run::Step;

/// The line that opens the generated region.
pub const BEGIN: &str = "<!-- report:begin -->";
/// The line that closes it.
pub const END: &str = "<!-- report:end -->";

/// What the report says about its own run.
#[derive(Debug)]
pub struct RunInfo<'a> {
    /// Where and when.
    pub machine: &'a Machine,
    /// The command that made the report, as typed.
    pub command: String,
    /// Whether criterion ran with `--quick`'s short times.
    pub quick: bool,
    /// The commands run, with their times (empty with `--no-run`).
    pub steps: &'a [Step],
    /// Anything missing or failed, one sentence each.
    pub notes: &'a [String],
    /// The charts' directory as the document links it (`perf`).
    pub charts_link: String,
}

/// A time in nanoseconds with three significant digits or so.
pub fn ns(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// Allocations per operation: whole numbers as such, others to 2 decimals.
fn allocs(v: f64) -> String {
    if (v - v.round()).abs() < 0.005 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The name of a subject, tenlives' in bold.
fn name(s: &Subject) -> String {
    if s.kind == Kind::Tenlives {
        format!("**{}**", s.name)
    } else {
        s.name.clone()
    }
}

/// The file name of an operation's chart.
pub fn chart_file(op: &Operation) -> String {
    format!("{}.svg", op.id.replace('/', "_"))
}

fn cell<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "-".to_owned(), f)
}

fn row(out: &mut String, cells: &[String]) {
    let _ = writeln!(out, "| {} |", cells.join(" | "));
}

/// A ratio: two decimals, or two significant digits below 0.1 (so that a
/// peer hundreds of times slower does not read `0.00x`).
fn times(r: f64) -> String {
    if r > 0.0 && r < 0.1 {
        let decimals = (1.0 - r.log10().floor()) as usize;
        format!("{r:.decimals$}x")
    } else {
        format!("{r:.2}x")
    }
}

/// `mine` over the peer's figure, as `0.42x vs `peer``.
fn versus(mine: f64, peer: (&str, f64)) -> String {
    format!("{} vs `{}`", times(mine / peer.1), peer.0)
}

/// The time ratio cell of a tenlives subject: 1 thread, and 2 threads when
/// the table has them.
fn time_ratio(op: &Operation, s: &Subject, two: bool) -> String {
    let r1 = s.one.zip(best_peer(op, &s.name, Threads::One));
    let r2 = s.two.zip(best_peer(op, &s.name, Threads::Two));
    match (r1, r2) {
        (Some((m1, p1)), Some((m2, p2))) if p1.0 == p2.0 => {
            format!("{} / {} vs `{}`", times(m1 / p1.1), times(m2 / p2.1), p1.0)
        }
        (Some((m1, p1)), Some((m2, p2))) => format!("{} / {}", versus(m1, p1), versus(m2, p2)),
        (Some((m1, p1)), None) if two => format!("{} / -", versus(m1, p1)),
        (Some((m1, p1)), None) => versus(m1, p1),
        (None, Some((m2, p2))) => format!("- / {}", versus(m2, p2)),
        (None, None) => String::new(),
    }
}

/// The table of an operation timed on 1 (and 2) threads.
fn plain_table(out: &mut String, op: &Operation) {
    let any = |f: &dyn Fn(&Subject) -> bool| op.subjects.iter().any(f);
    let two = any(&|s| s.two.is_some());
    let ir = any(&|s| s.instructions.is_some());
    let alloc = any(&|s| s.allocations.is_some());
    let compared = any(&|s| s.kind == Kind::Tenlives) && any(&|s| s.kind == Kind::Peer);
    let ir_compared = any(&|s| {
        s.kind == Kind::Tenlives
            && s.instructions.is_some()
            && fewest_instructions_peer(op, &s.name).is_some()
    });

    let mut head = vec!["subject".to_owned(), "ns/op, 1 thread".to_owned()];
    if two {
        head.push("ns/op, 2 threads".to_owned());
    }
    if ir {
        head.push("Ir/op".to_owned());
    }
    if alloc {
        head.push("allocs/op".to_owned());
    }
    if compared {
        head.push(
            if two {
                "time ÷ best peer (1 / 2 threads)"
            } else {
                "time ÷ best peer"
            }
            .to_owned(),
        );
    }
    if ir_compared {
        head.push("Ir ÷ peer".to_owned());
    }
    row(out, &head);
    let align: Vec<String> = (0..head.len())
        .map(|i| if i == 0 { "---" } else { "---:" }.to_owned())
        .collect();
    row(out, &align);
    for s in &op.subjects {
        let mut cells = vec![name(s), cell(s.one, ns)];
        if two {
            cells.push(cell(s.two, ns));
        }
        if ir {
            cells.push(cell(s.instructions, |v| v.to_string()));
        }
        if alloc {
            cells.push(cell(s.allocations, allocs));
        }
        let tenlives = s.kind == Kind::Tenlives;
        if compared {
            cells.push(if tenlives {
                time_ratio(op, s, two)
            } else {
                String::new()
            });
        }
        if ir_compared {
            cells.push(
                match (
                    tenlives,
                    s.instructions,
                    fewest_instructions_peer(op, &s.name),
                ) {
                    (true, Some(m), Some((p, n))) => versus(m as f64, (p, n as f64)),
                    _ => String::new(),
                },
            );
        }
        row(out, &cells);
    }
}

/// The table of an operation swept over a table size or capacity: one row
/// per size, one column per subject (ns per operation, 1 thread).
fn sweep_table(out: &mut String, op: &Operation) {
    let param = if op.id.contains("keyed") {
        "keys"
    } else {
        "capacity"
    };
    let subjects: Vec<&Subject> = op
        .subjects
        .iter()
        .filter(|s| !s.by_param.is_empty())
        .collect();
    let tenlives = subjects.iter().find(|s| s.kind == Kind::Tenlives);
    let peers: Vec<&&Subject> = subjects.iter().filter(|s| s.kind == Kind::Peer).collect();
    let mut head = vec![param.to_owned()];
    head.extend(subjects.iter().map(|s| format!("{} (ns/op)", name(s))));
    let compared = tenlives.is_some() && !peers.is_empty();
    if compared {
        head.push("tenlives ÷ best peer".to_owned());
    }
    row(out, &head);
    let align: Vec<String> = (0..head.len()).map(|_| "---:".to_owned()).collect();
    row(out, &align);
    let mut params: Vec<u64> = subjects
        .iter()
        .flat_map(|s| s.by_param.keys().copied())
        .collect();
    params.sort_unstable();
    params.dedup();
    for p in params {
        let mut cells = vec![p.to_string()];
        cells.extend(
            subjects
                .iter()
                .map(|s| cell(s.by_param.get(&p).copied(), ns)),
        );
        if compared {
            let mine = tenlives.and_then(|t| t.by_param.get(&p));
            let best = peers
                .iter()
                .filter_map(|s| s.by_param.get(&p))
                .copied()
                .min_by(f64::total_cmp);
            cells.push(match (mine, best) {
                (Some(m), Some(b)) => times(m / b),
                _ => String::new(),
            });
        }
        row(out, &cells);
    }
}

/// Throughput on 1 and 2 threads of every tenlives subject timed on both.
fn throughput_table(out: &mut String, sections: &[(String, &[&str], Vec<Operation>)]) {
    let _ = writeln!(
        out,
        "Operations per second of every tenlives subject timed on both: on 1 thread \
         (10^9 / ns), and in total on 2 threads sharing the subject (2 × 10^9 / ns per \
         operation per thread); the speed-up is the second over the first (2.00 would be \
         perfect scaling). On a machine with 2 CPUs shared with other work, a speed-up \
         near 1 can mean the threads took turns.\n"
    );
    row(
        out,
        &[
            "operation / subject".to_owned(),
            "Mops/s, 1 thread".to_owned(),
            "Mops/s, 2 threads".to_owned(),
            "speed-up".to_owned(),
        ],
    );
    row(
        out,
        &[
            "---".to_owned(),
            "---:".to_owned(),
            "---:".to_owned(),
            "---:".to_owned(),
        ],
    );
    for (_, _, ops) in sections {
        for op in ops {
            for s in &op.subjects {
                if let (Kind::Tenlives, Some(one), Some(two)) = (s.kind, s.one, s.two) {
                    row(
                        out,
                        &[
                            format!("`{}` {}", op.id, s.name),
                            format!("{:.1}", 1e3 / one),
                            format!("{:.1}", 2e3 / two),
                            format!("{:.2}", 2.0 * one / two),
                        ],
                    );
                }
            }
        }
    }
}

/// The generated region, markers included.
pub fn region(
    info: &RunInfo<'_>,
    sections: &[(String, &[&str], Vec<Operation>)],
    unplaced: &[(String, u64)],
) -> String {
    let mut out = String::new();
    let m = info.machine;
    let _ = writeln!(out, "{BEGIN}");
    let _ = writeln!(out, "## Benchmark report (generated)\n");
    let _ = writeln!(
        out,
        "Everything from here to the `report:end` marker is written by the report \
         command; edit the command (`benches/report`), not this text. One run:\n"
    );
    let _ = writeln!(out, "- command: `{}`", info.command);
    let _ = writeln!(out, "- date: {}", m.date);
    let _ = writeln!(out, "- machine: {}, {} CPUs available", m.cpu, m.cpus);
    let _ = writeln!(out, "- toolchain: {}", m.rustc);
    let _ = writeln!(out, "- commit: {}", m.commit);
    if info.quick {
        let _ = writeln!(
            out,
            "- **quick run** (`--quick`: 0.3 s warm-up, 0.7 s measurement, 10 samples per \
             benchmark): the times are rough, for trying the command out; committed \
             numbers come from a full run"
        );
    }
    if !info.steps.is_empty() {
        let total: f64 = info.steps.iter().map(|s| s.seconds).sum();
        let _ = writeln!(
            out,
            "- took {:.0} min {:.0} s:",
            (total / 60.0).floor(),
            total % 60.0
        );
        for s in info.steps {
            let _ = writeln!(
                out,
                "  - `{}`: {:.0} s{}",
                s.command,
                s.seconds,
                match (s.ok, s.timed_out) {
                    (true, _) => "",
                    (false, true) => ", **stopped at the step time limit**",
                    (false, false) => ", **failed**",
                }
            );
        }
    }
    for n in info.notes {
        let _ = writeln!(out, "- note: {n}");
    }
    let _ = writeln!(
        out,
        "\nHow to read the tables. *ns/op*: criterion's estimate (the slope of its \
         regression, or the mean where it fits none) of one operation's time; on 2 threads, \
         per operation per thread (both threads run the operation on one shared subject; \
         wall time over operations per thread). *Ir/op*: instructions counted by callgrind \
         (`benches/benches/iai.rs`, the same operation on a warmed subject; see that file \
         for each configuration). *allocs/op*: heap allocations per operation \
         (`benches/benches/allocs.rs`). *÷ best peer*: tenlives' figure over the lowest \
         figure of any peer crate in the same table (below 1.00: tenlives is faster, or \
         runs fewer instructions). Floors (`floor_*`, `bare`, `design_*`, `*_reference`) \
         are reference points, never compared. `-`: not measured. tenlives in **bold**. \
         Each bench file's header says exactly what its rows do.\n"
    );
    for (title, benches, ops) in sections {
        let _ = writeln!(out, "### {title}\n");
        if !benches.is_empty() {
            let cmds: Vec<String> = benches
                .iter()
                .map(|b| match *b {
                    "ninelives" => {
                        "`cargo bench --manifest-path benches/ninelives-peer/Cargo.toml`".to_owned()
                    }
                    b => format!("`--bench {b}`"),
                })
                .collect();
            let _ = writeln!(out, "From {}.\n", cmds.join(", "));
        }
        for op in ops {
            let _ = writeln!(out, "#### `{}`\n", op.id);
            if op.is_sweep() {
                sweep_table(&mut out, op);
            } else {
                plain_table(&mut out, op);
            }
            let _ = writeln!(
                out,
                "\n![{}]({}/{})\n",
                op.id,
                info.charts_link,
                chart_file(op)
            );
        }
    }
    let _ = writeln!(out, "### Throughput on 1 and 2 threads\n");
    throughput_table(&mut out, sections);
    if !unplaced.is_empty() {
        let _ = writeln!(
            out,
            "\n### Instruction counts without a time row\n\n\
             Benchmarks of `benches/benches/iai.rs` that no row above shows:\n"
        );
        row(&mut out, &["benchmark".to_owned(), "Ir".to_owned()]);
        row(&mut out, &["---".to_owned(), "---:".to_owned()]);
        for (n, ir) in unplaced {
            row(&mut out, &[format!("`{n}`"), ir.to_string()]);
        }
    }
    let _ = writeln!(out, "\n{END}");
    out
}

/// `existing` with its generated region replaced by `region`; a document
/// without the markers gets the region appended, a missing one is made.
pub fn splice(existing: Option<&str>, region: &str) -> String {
    let Some(doc) = existing else {
        return format!("# Performance\n\n{region}");
    };
    match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if b < e => {
            let after = &doc[e + END.len()..];
            let after = after.strip_prefix('\n').unwrap_or(after);
            format!("{}{region}{after}", &doc[..b])
        }
        _ => {
            let sep = if doc.ends_with("\n\n") {
                ""
            } else if doc.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            format!("{doc}{sep}{region}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region_text(body: &str) -> String {
        format!("{BEGIN}\n{body}\n{END}\n")
    }

    #[test]
    fn small_ratios_keep_two_significant_digits() {
        assert_eq!(times(0.4213), "0.42x");
        assert_eq!(times(1.0), "1.00x");
        assert_eq!(times(0.0523), "0.052x");
        assert_eq!(times(240.0 / 88_636.0), "0.0027x");
    }

    #[test]
    fn replaces_only_the_region() {
        let doc = format!(
            "# Perf\n\nhand-written\n\n{}\nmore hand-written\n",
            region_text("old")
        );
        let new = splice(Some(&doc), &region_text("new"));
        assert_eq!(
            new,
            format!(
                "# Perf\n\nhand-written\n\n{}\nmore hand-written\n",
                region_text("new")
            )
        );
        // Running again changes nothing.
        assert_eq!(splice(Some(&new), &region_text("new")), new);
    }

    #[test]
    fn appends_the_region_to_a_document_without_one() {
        let new = splice(Some("# Perf\ntext\n"), &region_text("r"));
        assert_eq!(new, format!("# Perf\ntext\n\n{}", region_text("r")));
        assert!(splice(None, &region_text("r")).starts_with("# Performance\n\n"));
    }

    #[test]
    fn formats_times_and_allocations() {
        assert_eq!(ns(5.554), "5.55");
        assert_eq!(ns(39.84), "39.8");
        assert_eq!(ns(247.8), "248");
        assert_eq!(allocs(0.0), "0");
        assert_eq!(allocs(10.0001), "10");
        assert_eq!(allocs(0.25), "0.25");
    }
}
