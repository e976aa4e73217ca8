//! The benchmark report command: runs the criterion suite of
//! `tenlives-benches` (and the ninelives comparison, the instruction counts
//! and the allocation counts), then writes the tables and charts into
//! `docs/performance.md` and `docs/perf/`.
//!
//! ```text
//! cargo run --release -p tenlives-bench-report -- [--quick] [--out docs/performance.md]
//! ```
//!
//! The tables go between the lines `<!-- report:begin -->` and
//! `<!-- report:end -->` of the document, replaced on every run; the text
//! around them is left as it is. A document without the markers gets the
//! region appended. `--quick` shortens every criterion benchmark (0.3 s
//! warm-up, 0.7 s measurement, 10 samples) to try the command out; the
//! committed numbers come from one full run. `--only` runs a subset,
//! `--no-run` reports what earlier runs left (criterion's estimates in
//! `target/criterion`, the instruction and allocation counts saved in
//! `target/bench-report`). `--step-timeout SECONDS` (default 1200, 0 for
//! none) stops a step that runs longer, with the bench binaries it started,
//! notes it and goes on.
//!
//! Exits 1 if a step failed (the document is written all the same, with
//! a note), 2 if the document could not be written.

mod charts;
mod doc;
mod machine;
mod model;
mod results;
mod run;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, SystemTime};

use clap::Parser;

use crate::machine::Machine;
use crate::results::Results;
use crate::run::{CRITERION_BENCHES, NINELIVES_MANIFEST, Runner};

/// Runs the benchmarks and writes docs/performance.md.
#[derive(Debug, Parser)]
#[command(about)]
struct Options {
    /// Short criterion runs (0.3 s warm-up, 0.7 s measurement, 10 samples),
    /// to try the command out.
    #[arg(long)]
    quick: bool,
    /// The document to write (its generated region).
    #[arg(long, default_value = "docs/performance.md")]
    out: PathBuf,
    /// Where the SVG charts go [default: `perf/` beside the document].
    #[arg(long)]
    charts: Option<PathBuf>,
    /// Run only these steps, comma-separated: breaker, bulkhead, rate,
    /// queue, events, config, layers, scaling, ninelives, iai, allocs.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Run nothing: report what the last runs left.
    #[arg(long)]
    no_run: bool,
    /// Stop a step (one `cargo bench` command, its build included) that runs
    /// longer than this many seconds, note it, and go on; 0: no limit.
    #[arg(long, default_value_t = 1200)]
    step_timeout: u64,
}

/// The repository's root: two levels above this crate.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// cargo's target directory for the workspace at `root`.
fn target_dir(root: &Path) -> PathBuf {
    Command::new("cargo")
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root)
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|m| Some(PathBuf::from(m.get("target_directory")?.as_str()?)))
        .unwrap_or_else(|| root.join("target"))
}

/// The command as typed, for the document.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut line = "cargo run --release -p tenlives-bench-report".to_owned();
    if !args.is_empty() {
        line.push_str(" -- ");
        line.push_str(&args.join(" "));
    }
    line
}

/// The saved output of a step (`iai`, `allocs`, `ninelives-allocs`).
fn saved(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.jsonl"))
}

/// Runs the selected steps; the results and notes on what failed.
fn run_all(
    options: &Options,
    runner: &mut Runner,
    root: &Path,
    target: &Path,
    save: &Path,
) -> (Results, Vec<String>) {
    let selected = |step: &str| options.only.is_empty() || options.only.iter().any(|s| s == step);
    let mut notes = Vec::new();
    let started = SystemTime::now();
    for bench in CRITERION_BENCHES {
        if selected(bench) && !runner.criterion(bench) {
            notes.push(format!(
                "criterion bench `{bench}` failed; its tables may be incomplete"
            ));
        }
    }
    let mut allocations = Vec::new();
    let peer_target = target.join("ninelives-peer");
    if selected("ninelives") {
        if root.join(NINELIVES_MANIFEST).exists() {
            let (timed, allocs) = runner.ninelives(&peer_target);
            if !timed {
                notes.push("the ninelives comparison failed to run".to_owned());
            }
            if let Some(out) = allocs {
                let _ = fs::write(saved(save, "ninelives-allocs"), &out);
                allocations.extend(results::parse_allocations(&out));
            }
        } else {
            notes.push(format!(
                "no ninelives comparison ({NINELIVES_MANIFEST} is missing)"
            ));
        }
    }
    let mut instructions = Vec::new();
    if selected("iai") {
        match runner.iai() {
            Some(out) => {
                let _ = fs::write(saved(save, "iai"), &out);
                instructions = results::parse_instructions(&out);
            }
            None => notes.push(
                "no instruction counts: the iai benches did not run (they need valgrind and \
                 `iai-callgrind-runner` 0.16.1, see above)"
                    .to_owned(),
            ),
        }
    }
    if selected("allocs") {
        match runner.allocs() {
            Some(out) => {
                let _ = fs::write(saved(save, "allocs"), &out);
                allocations.extend(results::parse_allocations(&out));
            }
            None => notes.push("no allocation counts: the allocs bench failed".to_owned()),
        }
    }
    let mut times = results::criterion_times(&target.join("criterion"), Some(started));
    times.extend(results::criterion_times(
        &peer_target.join("criterion"),
        Some(started),
    ));
    (
        Results {
            times,
            instructions,
            allocations,
        },
        notes,
    )
}

/// What earlier runs left.
fn collect_saved(target: &Path, save: &Path) -> Results {
    let read = |name: &str| fs::read_to_string(saved(save, name)).unwrap_or_default();
    let mut times = results::criterion_times(&target.join("criterion"), None);
    times.extend(results::criterion_times(
        &target.join("ninelives-peer").join("criterion"),
        None,
    ));
    let mut allocations = results::parse_allocations(&read("allocs"));
    allocations.extend(results::parse_allocations(&read("ninelives-allocs")));
    Results {
        times,
        instructions: results::parse_instructions(&read("iai")),
        allocations,
    }
}

fn main() -> ExitCode {
    let options = Options::parse();
    let root = root();
    let target = target_dir(&root);
    let save = target.join("bench-report");
    if let Err(e) = fs::create_dir_all(&save) {
        eprintln!("report: cannot create {}: {e}", save.display());
        return ExitCode::from(2);
    }
    let machine = Machine::describe(&root);
    let limit = (options.step_timeout > 0).then(|| Duration::from_secs(options.step_timeout));
    let mut runner = Runner::new(&root, options.quick, limit);
    let (results, mut notes) = if options.no_run {
        (collect_saved(&target, &save), Vec::new())
    } else {
        run_all(&options, &mut runner, &root, &target, &save)
    };
    let failed = runner.steps.iter().any(|s| !s.ok);
    if results.times.is_empty() {
        notes.push("no criterion results were found".to_owned());
    }

    let charts_dir = options.charts.clone().unwrap_or_else(|| {
        options
            .out
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("perf")
    });
    let charts_link = options
        .out
        .parent()
        .and_then(|p| charts_dir.strip_prefix(p).ok())
        .unwrap_or(&charts_dir)
        .display()
        .to_string();
    let unplaced = model::unplaced_instructions(&results);
    let sections = model::by_job(model::operations(&results));
    if let Err(e) = fs::create_dir_all(&charts_dir) {
        eprintln!("report: cannot create {}: {e}", charts_dir.display());
        return ExitCode::from(2);
    }
    for (_, _, ops) in &sections {
        for op in ops {
            let path = charts_dir.join(doc::chart_file(op));
            if let Err(e) = charts::draw(&path, op) {
                notes.push(format!("the chart of `{}` failed: {e}", op.id));
            }
        }
    }
    let info = doc::RunInfo {
        machine: &machine,
        command: command_line(),
        quick: options.quick,
        steps: &runner.steps,
        notes: &notes,
        charts_link,
    };
    let region = doc::region(&info, &sections, &unplaced);
    let existing = fs::read_to_string(&options.out).ok();
    if let Err(e) = fs::write(&options.out, doc::splice(existing.as_deref(), &region)) {
        eprintln!("report: cannot write {}: {e}", options.out.display());
        return ExitCode::from(2);
    }
    let ops: usize = sections.iter().map(|s| s.2.len()).sum();
    eprintln!(
        "report: wrote {} ({ops} tables) and {} charts in {}",
        options.out.display(),
        ops,
        charts_dir.display()
    );
    for n in &notes {
        eprintln!("report: note: {n}");
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
