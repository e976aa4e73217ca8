//! The `replay` command as a user runs it: the committed recorded trace
//! against the two committed configurations, twice, byte for byte; a bad
//! configuration exits 2 with the file named.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(out: &Path, configs: &[PathBuf]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenlives-perf"));
    cmd.args(["replay", "--trace"])
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
