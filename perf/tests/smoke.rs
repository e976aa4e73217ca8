//! End to end on loopback: the `smoke` scenario as a user runs it, through
//! the binary. Upstreams, fronts and load generator start, a few seconds of
//! load run, the report, the plots and the JSON summary are written, and the
//! exit status follows the checks.
//!
//! The thresholds passed here are loose on purpose: this test checks the
//! plumbing and the accounting, which do not depend on the machine's speed;
//! a deliberately impossible threshold checks the non-zero exit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tenlives-perf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn smoke(out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tenlives-perf"))
        .args([
            "smoke",
            "--seconds",
            "3",
            "--rate",
            "20",
            "--quiet",
            "--out",
        ])
        .arg(out)
        .args(extra)
        .output()
        .expect("the binary runs")
}

#[test]
fn smoke_runs_end_to_end_and_accounts_for_every_request() {
    let out = out_dir("smoke");
    let run = smoke(
        &out,
        &[
            "--max-error-rate",
            "100",
            "--max-p99-ms",
            "600000",
            "--max-refused",
            "100",
        ],
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("smoke: PASS"), "{stdout}");
    assert!(stdout.contains("Accounting"), "{stdout}");

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(json["scenario"], "smoke");
    assert_eq!(json["passed"], true);
    // The alerts section: one entry per phase of the script, with its burn
    // rate; a healthy smoke run sets off none.
    let alerts = &json["alerts"];
    let by_phase = alerts["by_phase"].as_array().unwrap();
    assert_eq!(
        by_phase.len(),
        json["script"].as_array().unwrap().len(),
        "{alerts}"
    );
    for phase in by_phase {
        assert!(phase["burn_rate"].as_f64().is_some(), "{alerts}");
    }
    assert!(
        stdout.contains("Alerts of ops/rules/tenlives.rules.yml"),
        "{stdout}"
    );
    let fronts = json["fronts"].as_array().unwrap();
    assert_eq!(fronts.len(), 2);
    for front in fronts {
        let c = &front["total"]["counts"];
        let n = |k: &str| c[k].as_u64().unwrap();
        // 20 requests per second for 3 seconds, to each front.
        assert_eq!(n("offered"), 60, "{front}");
        assert_eq!(n("sent") + n("not_sent"), n("offered"));
        assert_eq!(
            n("sent"),
            n("succeeded") + n("failed") + n("rejected") + n("shed")
        );
        assert_eq!(c["balanced"], true);
        assert!(n("succeeded") > 0, "{front}");
        let series_sent: u64 = front["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["sent"].as_u64().unwrap())
            .sum();
        assert_eq!(series_sent, n("sent"));
    }
    assert_eq!(fronts[0]["name"], "protected");
    assert!(fronts[0]["limit"]["current"].as_u64().unwrap() >= 4);
    for svg in ["latency.svg", "throughput.svg"] {
        let text = std::fs::read_to_string(out.join(svg)).unwrap();
        assert!(text.starts_with("<svg"), "{svg}");
        assert!(text.contains("protected front"), "{svg}");
    }
    let report = std::fs::read_to_string(out.join("report.txt")).unwrap();
    assert!(report.contains("tenlives smoke"));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_breached_threshold_exits_with_status_1() {
    let out = out_dir("breach");
    // No answer takes zero time: this p99 bound cannot hold.
    let run = smoke(&out, &["--max-p99-ms", "0"]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("smoke: FAIL"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(json["passed"], false);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn bad_options_exit_with_status_2() {
    // A chaos run too short to check recovery is refused before it starts.
    let run = Command::new(env!("CARGO_BIN_EXE_tenlives-perf"))
        .args(["chaos", "--seconds", "5", "--quiet"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("recover"));
}

#[test]
fn goodput_runs_every_front_side_by_side_and_writes_the_table() {
    let out = out_dir("goodput");
    let run = Command::new(env!("CARGO_BIN_EXE_tenlives-perf"))
        .args([
            "goodput",
            "--seconds",
            "3",
            "--rate",
            "20",
            "--scenario",
            "half-capacity",
            "--quiet",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    // 0 when every aim held, 1 when one did not; never an error.
    assert!(
        matches!(run.status.code(), Some(0 | 1)),
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("Effectiveness"), "{stdout}");
    let passed = stdout.contains("goodput: PASS");
    assert_eq!(passed, run.status.success(), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let scenario = &json["scenarios"][0];
    assert_eq!(scenario["scenario"], "half-capacity");
    let names: Vec<&str> = scenario["fronts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["tenlives", "unprotected", "tower-resilience", "failsafe"]
    );
    for f in scenario["fronts"].as_array().unwrap() {
        let phases = f["by_phase"].as_array().unwrap();
        assert_eq!(phases.last().unwrap()["phase"], "whole run");
        assert!(phases.iter().any(|p| p["phase"] == "capacity drop"));
    }
    for file in [
        "report.txt",
        "summary.json",
        "latency.svg",
        "throughput.svg",
    ] {
        assert!(out.join("half-capacity").join(file).exists(), "{file}");
    }
    let _ = std::fs::remove_dir_all(&out);
}
