//! The JSON summary of a run (`summary.json`): settings, per-front totals,
//! latency percentiles (milliseconds), per-phase figures, breaker
//! transitions, limits, the time series, process samples, and the SLI
//! checks with the verdict.

use std::time::Duration;

use serde_json::{Value, json};

use super::goodput;
use super::record::{Bucket, Percentiles, Tally};
use super::report::{self, RunInfo};
use super::results::{Drive, FrontRun, GroupSummary};
use super::sli::Check;

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn percentiles(p: &Percentiles) -> Value {
    json!({
        "count": p.count,
        "p50_ms": millis(p.p50),
        "p99_ms": millis(p.p99),
        "p999_ms": millis(p.p999),
        "max_ms": millis(p.max),
    })
}

fn tally(t: &Tally) -> Value {
    json!({
        "offered": t.offered,
        "not_sent": t.not_sent,
        "sent": t.sent,
        "succeeded": t.succeeded,
        "good": t.good,
        "failed": t.failed(),
        "failed_upstream": t.failed_upstream,
        "failed_unreachable": t.failed_unreachable,
        "failed_timeout": t.failed_timeout,
        "failed_transport": t.failed_transport,
        "failed_abandoned": t.failed_abandoned,
        "rejected": t.rejected,
        "shed": t.shed(),
        "shed_limit": t.shed_limit,
        "shed_rate": t.shed_rate,
        "balanced": t.balanced(),
    })
}

fn group(g: &GroupSummary) -> Value {
    json!({
        "counts": tally(&g.tally),
        "success_rate": g.tally.success_rate(),
        "error_rate": g.tally.error_rate(),
        "latency_all": percentiles(&g.all),
        "latency_ok": percentiles(&g.ok),
    })
}

fn bucket(b: &Bucket) -> Value {
    json!({
        "end_s": b.end_secs,
        "sent": b.tally.sent,
        "succeeded": b.tally.succeeded,
        "good": b.tally.good,
        "failed": b.tally.failed(),
        "rejected": b.tally.rejected,
        "shed": b.tally.shed(),
        "p50_ms": millis(b.latency.p50),
        "p99_ms": millis(b.latency.p99),
        "in_flight": b.in_flight,
        "peak_in_flight": b.peak_in_flight,
        "breaker": b.breaker.map(|s| s.to_string()),
        "limit": b.limit,
    })
}

fn front(f: &FrontRun) -> Value {
    json!({
        "name": f.name,
        "protected": f.protected,
        "total": group(&f.total),
        "by_phase": f.by_kind.iter().map(|(k, g)| {
            let mut v = group(g);
            v["phase"] = json!(k.label());
            v
        }).collect::<Vec<_>>(),
        "transitions": f.transitions.iter().map(|t| json!({
            "at_s": t.at_secs,
            "from": t.from.to_string(),
            "to": t.to.to_string(),
            "open_for_ms": t.open_for.map(millis),
        })).collect::<Vec<_>>(),
        "lost_events": f.lost_events,
        "limit": f.limit.map(|l| json!({
            "current": l.current, "lowest": l.lowest, "highest": l.highest, "changes": l.changes,
        })),
        "breaker_at_end": f.breaker_end.map(|s| s.to_string()),
        "peak_in_flight": f.peak_in_flight,
        "upstream_calls": f.upstream_calls,
        "upstream_calls_while_down": f.upstream_calls_while_down,
        "series": f.series.iter().map(bucket).collect::<Vec<_>>(),
    })
}

/// Good answers per phase kind and overall beside the limit (see
/// the [`goodput` module](super::goodput)).
fn goodput(info: &RunInfo<'_>, d: &Drive) -> Value {
    let rows = goodput::rows(&report::limits(info, d), d);
    json!({
        "objective_ms": millis(info.objective),
        "by_phase": rows.iter().map(|r| json!({
            "phase": r.label,
            "limit": r.limit,
            "fronts": d.fronts.iter().zip(&r.good).map(|(f, &good)| json!({
                "name": f.name,
                "good": good,
                "of_limit": goodput::of_limit(good, r.limit),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// The `ops/` alerts the protected front would have set off, per phase
/// (`alerts` module), and over the run; null without a protected front.
fn alerts(info: &RunInfo<'_>, d: &Drive) -> Value {
    let Some(p) = d.protected() else {
        return Value::Null;
    };
    let firing = |f: &super::alerts::Firing| json!({"alert": f.alert, "measured": f.measured});
    json!({
        "objective": super::alerts::OBJECTIVE,
        "by_phase": super::alerts::evaluate(p, info.timeline, d.started_secs)
            .iter()
            .take(200)
            .map(|a| json!({
                "from_s": a.from_secs,
                "to_s": a.to_secs,
                "phase": a.kind.label(),
                "burn_rate": a.burn,
                "firing": a.firing.iter().map(firing).collect::<Vec<_>>(),
            }))
            .collect::<Vec<_>>(),
        "run": super::alerts::events_lost(p).iter().map(firing).collect::<Vec<_>>(),
    })
}

/// The summary of one drive, with the checks made on it (if any).
pub fn drive(name: &str, info: &RunInfo<'_>, d: &Drive, checks: &[Check]) -> Value {
    json!({
        "scenario": name,
        "started_s": d.started_secs,
        "length_s": d.length.as_secs_f64(),
        "load": info.plan.segments().iter().map(|s| json!({
            "rate_per_s": s.rate, "seconds": s.length.as_secs_f64(),
        })).collect::<Vec<_>>(),
        "max_in_flight": info.bounds.max_in_flight,
        "client_timeout_ms": millis(info.bounds.client_timeout),
        "upstream_capacity": info.capacity,
        "script": info.timeline.phases().iter().take(200).map(|p| json!({
            "from_s": p.from.as_secs_f64(),
            "to_s": p.to.as_secs_f64(),
            "phase": p.kind.label(),
        })).collect::<Vec<_>>(),
        "upstream_restarts": d.restarts,
        "goodput": goodput(info, d),
        "protection": {
            "objective_ms": millis(info.protection.objective),
            "timeout_ms": millis(info.protection.timeout),
            "consecutive_failures": info.protection.consecutive_failures,
            "retries": info.protection.retries,
            "retry_budget": info.protection.retry_budget,
            "rate_limit_per_s": info.protection.rate_limit,
            "rate_burst": info.protection.rate_burst,
            "failure_rate_percent": info.protection.failure_rate,
            "window_s": info.protection.window.as_secs_f64(),
            "minimum_calls": info.protection.minimum_calls,
            "open_ms": millis(info.protection.open),
            "max_open_ms": millis(info.protection.max_open),
            "probes": info.protection.probes,
            "probe_every_ms": info.protection.probe_every.map(millis),
            "hold_ms": info.protection.hold.map(|(wait, _)| millis(wait)),
            "hold_cap": info.protection.hold.map(|(_, cap)| cap),
            "limit_min": info.protection.limits.0,
            "limit_initial": info.protection.limits.1,
            "limit_max": info.protection.limits.2,
            "latency_threshold_ms": millis(info.protection.latency_threshold),
        },
        "fronts": d.fronts.iter().map(front).collect::<Vec<_>>(),
        "alerts": alerts(info, d),
        "process": d.process.iter().map(|s| json!({
            "at_s": s.at_secs, "rss_bytes": s.rss_bytes, "fds": s.fds,
        })).collect::<Vec<_>>(),
        "checks": checks_json(checks),
        "passed": checks.iter().all(|c| c.passed),
    })
}

/// The checks as JSON.
pub fn checks_json(checks: &[Check]) -> Value {
    checks
        .iter()
        .map(|c| {
            json!({
                "check": c.name, "limit": c.limit, "measured": c.measured, "passed": c.passed,
            })
        })
        .collect()
}
