//! Running the benchmarks: each step is one `cargo bench` command, timed
//! and bounded; a step that fails or runs out of time is recorded and the
//! run goes on.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

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
    /// Whether it was stopped at the step time limit.
    pub timed_out: bool,
}

/// Runs the steps and remembers them.
#[derive(Debug)]
pub struct Runner {
    root: PathBuf,
    quick: bool,
    /// The longest a step may run; `None`: no limit.
    limit: Option<Duration>,
    /// Every step run so far.
    pub steps: Vec<Step>,
}

impl Runner {
    /// A runner for the repository at `root`, stopping a step that runs
    /// longer than `limit`.
    pub fn new(root: &Path, quick: bool, limit: Option<Duration>) -> Runner {
        Runner {
            root: root.to_owned(),
            quick,
            limit,
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

    /// `path` as the report prints it: relative to the repository when it
    /// lies inside it, else as `<target>/` and its name (a target directory
    /// elsewhere, set by `CARGO_TARGET_DIR`), so that no machine's path is
    /// written into the document.
    fn shown_path(&self, path: &Path) -> String {
        match path.strip_prefix(&self.root) {
            Ok(inside) => inside.display().to_string(),
            Err(_) => format!(
                "<target>/{}",
                path.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            ),
        }
    }

    /// Runs `cargo args…` (with `env` set), its output going to the
    /// terminal, or its standard output captured when `capture`; returns the
    /// captured output (empty when not captured), or `None` if it failed.
    fn cargo(&mut self, env: &[(&str, &Path)], args: &[&str], capture: bool) -> Option<String> {
        let shown: Vec<String> = env
            .iter()
            .map(|(k, v)| format!("{k}={}", self.shown_path(v)))
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
        // Its own process group, so that a step out of time is stopped with
        // the bench binaries cargo started.
        cmd.process_group(0);
        let (status, stdout) = match cmd.spawn() {
            Ok(child) => run_bounded(child, began, self.limit),
            Err(e) => {
                eprintln!("report: could not start cargo: {e}");
                (Ended::Failed, String::new())
            }
        };
        let seconds = began.elapsed().as_secs_f64();
        let ok = status == Ended::Ok;
        let timed_out = status == Ended::TimedOut;
        eprintln!(
            "report: {} in {seconds:.0} s",
            match status {
                Ended::Ok => "done",
                Ended::Failed => "FAILED",
                Ended::TimedOut => "STOPPED at the step time limit",
            }
        );
        self.steps.push(Step {
            command,
            seconds,
            ok,
            timed_out,
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

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Exit status 0.
    Ok,
    /// Another status, or it could not be waited for.
    Failed,
    /// Stopped at the time limit.
    TimedOut,
}

/// Waits for `child` (started at `began`), stopping its process group once
/// `limit` has passed; returns how it ended and its standard output (if it
/// was captured), read on a thread of its own so that a full pipe cannot
/// stall the step.
fn run_bounded(mut child: Child, began: Instant, limit: Option<Duration>) -> (Ended, String) {
    let reader = child.stdout.take().map(|mut out| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            // A read error leaves what was read: the step's status says more.
            let _ = out.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    });
    let ended = loop {
        match child.try_wait() {
            Ok(Some(status)) => break ended_with(status),
            Ok(None) => {}
            Err(e) => {
                eprintln!("report: cannot wait for cargo: {e}");
                break Ended::Failed;
            }
        }
        if limit.is_some_and(|l| began.elapsed() >= l) {
            stop_group(child.id());
            let _ = child.wait();
            break Ended::TimedOut;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let stdout = reader.and_then(|r| r.join().ok()).unwrap_or_default();
    (ended, stdout)
}

fn ended_with(status: ExitStatus) -> Ended {
    if status.success() {
        Ended::Ok
    } else {
        Ended::Failed
    }
}

/// Kills the process group led by `pid` (cargo and the benches it started).
fn stop_group(pid: u32) {
    let group = format!("-{pid}");
    match Command::new("kill").args(["-KILL", "--", &group]).status() {
        Ok(s) if s.success() => {}
        other => eprintln!("report: could not stop process group {pid}: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str, capture: bool) -> Child {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]).process_group(0);
        if capture {
            cmd.stdout(Stdio::piped());
        }
        cmd.spawn().expect("sh starts")
    }

    #[test]
    fn a_step_within_its_limit_keeps_its_output() {
        let child = shell("echo hello; echo there", true);
        let (ended, out) = run_bounded(child, Instant::now(), Some(Duration::from_secs(60)));
        assert_eq!(ended, Ended::Ok);
        assert_eq!(out, "hello\nthere\n");
        let child = shell("exit 3", false);
        assert_eq!(run_bounded(child, Instant::now(), None).0, Ended::Failed);
    }

    #[test]
    fn a_step_out_of_time_is_stopped_with_its_children() {
        // The shell starts a child that would outlive it; both are stopped,
        // so the output pipe closes and the reader returns.
        let child = shell("echo started; sleep 600 & wait", true);
        let began = Instant::now();
        let (ended, out) = run_bounded(child, began, Some(Duration::from_millis(300)));
        assert_eq!(ended, Ended::TimedOut);
        assert_eq!(out, "started\n");
        assert!(
            began.elapsed() < Duration::from_secs(590),
            "not left waiting for the sleep"
        );
    }
}
