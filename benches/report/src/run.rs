//! Running the benchmarks: each step is one `cargo bench` command, timed;
//! a step that fails is recorded and the run goes on.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The criterion bench files of `tenlives-benches`, in the order they run.
pub const CRITERION_BENCHES: [&str; 8] = [
    "breaker", "bulkhead", "rate", "queue", "events", "config", "layers", "scaling",
];

/// The ninelives comparison's manifest, relative to the repository root.
pub const NINELIVES_MANIFEST: &str = "benches/ninelives-peer/Cargo.toml";

/// criterion's arguments for `--quick`: short warm-up and measurement, the
/// smallest sample criterion accepts.
const QUICK: [&str; 6] = [
    "--warm-up-time",
    "0.3",
    "--measurement-time",
    "0.7",
    "--sample-size",
    "10",
];

/// One command the report ran.
#[derive(Debug, Clone)]
pub struct Step {
    /// The command line, as a shell would take it.
    pub command: String,
    /// Its wall time, in seconds.
    pub seconds: f64,
    /// Whether it exited with status 0.
    pub ok: bool,
}

/// Runs the steps and remembers them.
#[derive(Debug)]
pub struct Runner {
    root: PathBuf,
    quick: bool,
    /// Every step run so far.
    pub steps: Vec<Step>,
}

impl Runner {
    /// A runner for the repository at `root`.
    pub fn new(root: &Path, quick: bool) -> Runner {
        Runner {
            root: root.to_owned(),
            quick,
            steps: Vec::new(),
        }
    }

    /// criterion's arguments after `--`.
    fn criterion_args(&self) -> Vec<&'static str> {
        let mut args = vec!["--noplot"];
        if self.quick {
            args.extend(QUICK);
        }
        args
    }

    /// Runs `cargo args…` (with `env` set), its output going to the
    /// terminal, or its standard output captured when `capture`; returns the
    /// captured output (empty when not captured), or `None` if it failed.
    fn cargo(&mut self, env: &[(&str, &Path)], args: &[&str], capture: bool) -> Option<String> {
        let shown: Vec<String> = env
            .iter()
            .map(|(k, v)| format!("{k}={}", v.display()))
            .chain(std::iter::once("cargo".to_owned()))
            .chain(args.iter().map(|a| (*a).to_owned()))
            .collect();
        let command = shown.join(" ");
        eprintln!("report: {command}");
        let began = Instant::now();
        let mut cmd = Command::new("cargo");
        cmd.args(args).current_dir(&self.root);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if capture {
            cmd.stdout(Stdio::piped());
        }
        let result = cmd.output();
        let seconds = began.elapsed().as_secs_f64();
        let (ok, stdout) = match result {
            Ok(out) => (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            ),
            Err(e) => {
                eprintln!("report: could not start cargo: {e}");
                (false, String::new())
            }
        };
        eprintln!(
            "report: {} in {seconds:.0} s",
            if ok { "done" } else { "FAILED" }
        );
        self.steps.push(Step {
            command,
            seconds,
            ok,
        });
        ok.then_some(stdout)
    }

    /// Runs one criterion bench file of `tenlives-benches`.
    pub fn criterion(&mut self, bench: &str) -> bool {
        let mut args = vec![
            "bench",
            "--locked",
            "-p",
            "tenlives-benches",
            "--bench",
            bench,
            "--",
        ];
        args.extend(self.criterion_args());
        self.cargo(&[], &args, false).is_some()
    }

    /// Runs the instruction-count benches as `benches/iai-gate.py` does;
    /// their JSON summaries, or `None` if they failed (no valgrind, no
    /// runner, a build error).
    pub fn iai(&mut self) -> Option<String> {
        let args = [
            "bench",
            "--locked",
            "-p",
            "tenlives-benches",
            "--bench",
            "iai",
            "--",
            "--output-format=json",
        ];
        self.cargo(&[], &args, true)
    }

    /// Runs the allocation counts; their JSON lines, or `None`.
    pub fn allocs(&mut self) -> Option<String> {
        let args = [
            "bench",
            "--locked",
            "-p",
            "tenlives-benches",
            "--bench",
            "allocs",
        ];
        self.cargo(&[], &args, true)
    }

    /// Runs the ninelives comparison, a workspace of its own built into
    /// `target_dir` (criterion finds its output directory through
    /// `CARGO_TARGET_DIR`); returns whether the timing ran and the
    /// allocation counts' JSON lines.
    pub fn ninelives(&mut self, target_dir: &Path) -> (bool, Option<String>) {
        let env = [("CARGO_TARGET_DIR", target_dir)];
        let mut args = vec![
            "bench",
            "--locked",
            "--manifest-path",
            NINELIVES_MANIFEST,
            "--bench",
            "layers",
            "--",
        ];
        args.extend(self.criterion_args());
        let timed = self.cargo(&env, &args, false).is_some();
        let args = [
            "bench",
            "--locked",
            "--manifest-path",
            NINELIVES_MANIFEST,
            "--bench",
            "allocs",
        ];
        (timed, self.cargo(&env, &args, true))
    }
}
