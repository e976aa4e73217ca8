//! What the report says about where it ran: the processor, the CPUs, the
//! toolchain, the commit and the date.

use std::path::Path;
use std::process::Command;

/// Where and when the numbers were taken.
#[derive(Debug, Clone)]
pub struct Machine {
    /// The processor's model name (`/proc/cpuinfo`), or `unknown`.
    pub cpu: String,
    /// CPUs available to this process (what `nproc` prints).
    pub cpus: usize,
    /// `rustc -V`.
    pub rustc: String,
    /// The commit checked out, with `+ uncommitted changes` when the tree
    /// differs from it.
    pub commit: String,
    /// The date and time, UTC (`date -u`).
    pub date: String,
}

/// A command's standard output, trimmed; `None` when it cannot run or fails.
fn output(program: &str, args: &[&str], dir: &Path) -> Option<String> {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
}

/// A command's one-line output, or `unknown`.
fn line(program: &str, args: &[&str], dir: &Path) -> String {
    output(program, args, dir)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The first `model name` of `/proc/cpuinfo`.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

impl Machine {
    /// Reads the machine's description, running commands in `root`.
    pub fn describe(root: &Path) -> Machine {
        let commit = line("git", &["rev-parse", "--short", "HEAD"], root);
        let dirty = output(
            "git",
            &["status", "--porcelain", "--untracked-files=no"],
            root,
        )
        .is_some_and(|s| !s.is_empty());
        Machine {
            cpu: cpu_model(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            rustc: line("rustc", &["-V"], root),
            commit: if dirty {
                format!("{commit} + uncommitted changes")
            } else {
                commit
            },
            date: line("date", &["-u", "+%Y-%m-%d %H:%M UTC"], root),
        }
    }
}
