//! Reading what the benchmarks left: criterion's estimates, iai-callgrind's
//! JSON summaries and the allocation counts' JSON lines.

use std::fs;
use std::path::Path;
use std::time::SystemTime;

use serde_json::Value;

/// Every figure the report has.
#[derive(Debug, Default)]
pub struct Results {
    /// criterion's estimate per benchmark id, in nanoseconds per iteration.
    pub times: Vec<(String, f64)>,
    /// Instructions per benchmark of `benches/benches/iai.rs`, in the order
    /// they ran.
    pub instructions: Vec<(String, u64)>,
    /// Allocations per operation, by criterion id without its thread suffix.
    pub allocations: Vec<(String, f64)>,
}

/// The time criterion reports for one benchmark, from its `estimates.json`:
/// the slope of the linear regression when criterion fitted one, else the
/// mean (criterion's `flat` sampling, and `iter_custom` benches that chose
/// it).
fn estimate(estimates: &Value) -> Option<f64> {
    let point = |name: &str| estimates.get(name)?.get("point_estimate")?.as_f64();
    point("slope").or_else(|| point("mean"))
}

/// The benchmarks criterion recorded under `dir` (a `criterion` output
/// directory), each as its full id and its estimate; with `since`, only
/// those written at or after it.
pub fn criterion_times(dir: &Path, since: Option<SystemTime>) -> Vec<(String, f64)> {
    let mut found = Vec::new();
    walk(dir, since, &mut found);
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

fn walk(dir: &Path, since: Option<SystemTime>, found: &mut Vec<(String, f64)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "new") {
            if let Some(point) = read_point(&path, since) {
                found.push(point);
            }
        } else if path
            .file_name()
            .is_some_and(|n| n != "report" && n != "base")
        {
            walk(&path, since, found);
        }
    }
}

/// The id and estimate recorded in one `new` directory.
fn read_point(new: &Path, since: Option<SystemTime>) -> Option<(String, f64)> {
    let benchmark = new.join("benchmark.json");
    if let Some(since) = since {
        let written = fs::metadata(&benchmark).ok()?.modified().ok()?;
        if written < since {
            return None;
        }
    }
    let meta: Value = serde_json::from_str(&fs::read_to_string(&benchmark).ok()?).ok()?;
    let id = meta.get("full_id")?.as_str()?.to_owned();
    let estimates: Value =
        serde_json::from_str(&fs::read_to_string(new.join("estimates.json")).ok()?).ok()?;
    Some((id, estimate(&estimates)?))
}

/// The instruction counts in iai-callgrind's `--output-format=json` output:
/// one JSON summary per line (as `benches/iai-gate.py` reads them).
pub fn parse_instructions(stdout: &str) -> Vec<(String, u64)> {
    stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|summary| {
            let name = summary.get("function_name")?.as_str()?.to_owned();
            Some((name, callgrind_ir(&summary)?))
        })
        .collect()
}

/// The Ir of this run in one summary: `metrics` is `{"Both": [new, old]}`
/// when iai-callgrind compared with its previous run, `{"Left": new}` when
/// there was none.
fn callgrind_ir(summary: &Value) -> Option<u64> {
    summary
        .get("profiles")?
        .as_array()?
        .iter()
        .find(|p| p.get("tool").and_then(Value::as_str) == Some("Callgrind"))
        .and_then(|p| {
            let metrics = p
                .pointer("/summaries/total/summary/Callgrind/Ir/metrics")?
                .as_object()?;
            let new = match metrics.get("Both") {
                Some(both) => both.get(0)?,
                None => metrics.get("Left")?,
            };
            new.get("Int")?.as_u64()
        })
}

/// The allocation counts printed by `benches/benches/allocs.rs` (and the
/// ninelives comparison's `allocs.rs`), as `(id, per_op)`.
pub fn parse_allocations(stdout: &str) -> Vec<(String, f64)> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter_map(|v| {
            Some((
                v.get("id")?.as_str()?.to_owned(),
                v.get("per_op")?.as_f64()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_slope_or_else_the_mean() {
        let both: Value = serde_json::from_str(
            r#"{"mean":{"point_estimate":2.5},"slope":{"point_estimate":2.0}}"#,
        )
        .unwrap();
        assert_eq!(estimate(&both), Some(2.0));
        let flat: Value =
            serde_json::from_str(r#"{"mean":{"point_estimate":2.5},"slope":null}"#).unwrap();
        assert_eq!(estimate(&flat), Some(2.5));
    }

    #[test]
    fn reads_instruction_counts_with_and_without_a_previous_run() {
        let line = |name: &str, metrics: &str| {
            format!(
                r#"{{"function_name":"{name}","profiles":[{{"tool":"Callgrind","summaries":{{"total":{{"summary":{{"Callgrind":{{"Ir":{{"metrics":{metrics}}}}}}}}}}}}}]}}"#
            )
        };
        let out = format!(
            "noise\n{}\n{}\n",
            line("a", r#"{"Left":{"Int":42}}"#),
            line("b", r#"{"Both":[{"Int":7},{"Int":9}]}"#)
        );
        assert_eq!(
            parse_instructions(&out),
            vec![("a".to_owned(), 42), ("b".to_owned(), 7)]
        );
    }

    #[test]
    fn reads_allocation_lines_and_skips_the_rest() {
        let out = "{\"id\":\"x/y/tenlives\",\"ops\":10,\"allocations\":0,\"per_op\":0}\nwarning\n\
                   {\"id\":\"x/y/peer\",\"ops\":10,\"allocations\":20,\"per_op\":2}\n";
        assert_eq!(
            parse_allocations(out),
            vec![
                ("x/y/tenlives".to_owned(), 0.0),
                ("x/y/peer".to_owned(), 2.0)
            ]
        );
    }
}
