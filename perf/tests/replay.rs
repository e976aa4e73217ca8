//! The `replay` command as a user runs it: the committed recorded trace
//! against the two committed configurations, twice, byte for byte; a bad
//! configuration exits 2 with the file named.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(out: &Path, configs: &[PathBuf]) -> Output {
    run_with(out, configs, &[])
}

fn run_with(out: &Path, configs: &[PathBuf], extra: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenlives-perf"));
    cmd.arg("replay").args(extra);
    cmd.args(["--trace"])
        .arg(root().join("replay/demo.trace"))
        .arg("--out")
        .arg(out);
    for c in configs {
        cmd.arg("--config").arg(c);
    }
    cmd.output().expect("the binary runs")
}

#[test]
fn replay_prints_the_same_bytes_twice_and_writes_its_files() {
    let out = std::env::temp_dir().join(format!("tenlives-perf-replay-{}", std::process::id()));
    let configs = [
        root().join("replay/tight.yaml"),
        root().join("replay/loose.toml"),
    ];
    let one = run(&out, &configs);
    let two = run(&out, &configs);
    assert!(
        one.status.success(),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    assert_eq!(one.stdout, two.stdout);
    let text = String::from_utf8(one.stdout).unwrap();
    assert!(
        text.contains("tight.yaml") && text.contains("loose.toml"),
        "{text}"
    );
    assert!(text.contains("breaker first opened at"), "{text}");
    let written = std::fs::read_to_string(out.join("replay.txt")).unwrap();
    assert!(
        text.starts_with(&written),
        "the report file is what was printed"
    );
    assert!(
        std::fs::read_to_string(out.join("replay.svg"))
            .unwrap()
            .contains("<svg")
    );
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_bad_configuration_exits_2_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("tenlives-perf-replay-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "circuit_breaker:\n  configs:\n    default:\n      failure_rate: 500\n",
    )
    .unwrap();
    let r = run(&dir, &[bad]);
    assert_eq!(r.status.code(), Some(2));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("failure_rate"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn per_key_gives_each_key_of_the_trace_its_own_rate_limiter() {
    let out = std::env::temp_dir().join(format!("tenlives-perf-replay-key-{}", std::process::id()));
    let configs = [root().join("replay/tight.yaml")];
    let one = run(&out, &configs);
    let per_key = run_with(&out, &configs, &["--per-key"]);
    assert!(
        per_key.status.success(),
        "{}",
        String::from_utf8_lossy(&per_key.stderr)
    );
    let (one, per_key) = (
        String::from_utf8(one.stdout).unwrap(),
        String::from_utf8(per_key.stdout).unwrap(),
    );
    assert!(per_key.contains("rate_limiter (per key)"), "{per_key}");
    // The demo trace has four keys: 90 a second each refuses nothing of
    // its 25 a second, where 90 for all refused some.
    let refused = |text: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("by rate_limiter"))
            .unwrap_or_else(|| panic!("{text}"));
        line.split_whitespace().last().unwrap().parse().unwrap()
    };
    assert!(refused(&one) > 0, "{one}");
    assert_eq!(refused(&per_key), 0, "{per_key}");
    std::fs::remove_dir_all(&out).unwrap();
}
