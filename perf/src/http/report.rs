//! The text a person reads at the end of a run: what ran, the two fronts
//! side by side, per phase, the breaker's timeline, the limits, the
//! accounting, and the SLI checks. Every figure comes from the measurement
//! (or is a setting, printed to say what ran).

use std::fmt::{self, Write as _};
use std::time::Duration;

use tenlives_engine::breaker::BreakerState;

use super::front::Protection;
use super::goodput::{self, Limits};
use super::load::{Bounds, RatePlan};
use super::record::{Percentiles, Tally};
use super::results::{Drive, FrontRun};
use super::sli::Check;
use super::timeline::{Fault, PhaseKind, Timeline};

/// A duration for people: `0.42 ms`, `4.2 ms`, `42 ms`, `1.25 s`.
pub fn ms(d: Duration) -> String {
    let m = d.as_secs_f64() * 1e3;
    if m < 1.0 {
        format!("{m:.2} ms")
    } else if m < 10.0 {
        format!("{m:.1} ms")
    } else if m < 1000.0 {
        format!("{m:.0} ms")
    } else {
        format!("{:.2} s", m / 1e3)
    }
}

/// A fraction as a percentage with one decimal: `12.3 %`.
pub fn pct(f: f64) -> String {
    format!("{:.1} %", f * 100.0)
}

/// A count with thousands separated by spaces: `12 345`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// A count and its share of `whole`: `1 234 (5.6 %)`.
fn count_share(n: u64, t: &Tally) -> String {
    format!("{} ({})", count(n), pct(t.share(n)))
}

/// Renders rows as a table: the first column left-aligned, the others
/// right-aligned, columns two spaces apart, each line indented by two.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    table_aligned(header, rows, 1)
}

/// As [`table`], with the first `left` columns left-aligned.
pub fn table_aligned(header: &[&str], rows: &[Vec<String>], left: usize) -> String {
    let columns = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        out.push_str("  ");
        for (i, cell) in cells.iter().enumerate().take(columns) {
            let pad = width[i].saturating_sub(cell.chars().count());
            if i > 0 {
                out.push_str("  ");
            }
            if i < left {
                out.push_str(cell);
                if i + 1 < columns {
                    out.push_str(&" ".repeat(pad));
                }
            } else {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            }
        }
        out.push('\n');
    };
    let head: Vec<String> = header.iter().map(|h| (*h).to_string()).collect();
    line(&mut out, &head);
    let rule: Vec<String> = width.iter().map(|&w| "-".repeat(w)).collect();
    line(&mut out, &rule);
    for row in rows {
        line(&mut out, row);
    }
    out
}

/// What ran, for the report's header.
#[derive(Clone, Copy, Debug)]
pub struct RunInfo<'a> {
    /// The first line.
    pub title: &'a str,
    /// The upstreams' script.
    pub timeline: &'a Timeline,
    /// The load.
    pub plan: &'a RatePlan,
    /// The protected front's policies.
    pub protection: &'a Protection,
    /// The upstreams' worker slots.
    pub capacity: u32,
    /// The generator's bounds.
    pub bounds: Bounds,
    /// The latency objective of goodput.
    pub objective: Duration,
}

fn describe_fault(f: &Fault) -> String {
    if f.down {
        return "listener closed: connections refused (a restart)".to_string();
    }
    let (lo, hi) = f.latency;
    let mut s = if f.outage {
        format!("every call stalls {}, then 503", ms(lo))
    } else {
        format!("{} – {} per call", ms(lo), ms(hi))
    };
    if f.errors_per_mille > 0 {
        let _ = write!(
            s,
            ", {:.1} % answered 500",
            f64::from(f.errors_per_mille) / 10.0
        );
    }
    if f.drops_per_mille > 0 {
        let _ = write!(
            s,
            ", {:.1} % of connections dropped",
            f64::from(f.drops_per_mille) / 10.0
        );
    }
    if f.slots_per_mille < 1000 {
        let _ = write!(
            s,
            ", {:.0} % of the worker slots serving",
            f64::from(f.slots_per_mille) / 10.0
        );
    }
    s
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The script, as a table (a long script, like soak's, is summarised).
pub fn script(timeline: &Timeline) -> String {
    let phases = timeline.phases();
    if phases.len() > 12 {
        let bursts = phases.iter().filter(|p| p.kind.is_fault()).count();
        let healthy = phases.iter().find(|p| !p.kind.is_fault());
        let fault = phases.iter().find(|p| p.kind.is_fault());
        let mut s = format!(
            "  {} phases over {}: healthy ({}), with {} short bursts ({})\n",
            phases.len(),
            secs(timeline.length()),
            healthy.map_or_else(String::new, |p| describe_fault(&p.fault)),
            bursts,
            fault.map_or_else(String::new, |p| format!(
                "{}, {} each",
                describe_fault(&p.fault),
                secs(p.to - p.from)
            )),
        );
        s.push('\n');
        return s;
    }
    let rows: Vec<Vec<String>> = phases
        .iter()
        .map(|p| {
            vec![
                format!("{} – {}", secs(p.from), secs(p.to)),
                p.kind.label().to_string(),
                describe_fault(&p.fault),
            ]
        })
        .collect();
    table_aligned(&["when", "phase", "the upstream"], &rows, 3)
}

/// The protected front's settings in words.
pub fn protection(p: &Protection) -> String {
    let open = if p.max_open > p.open {
        format!("{} at first, doubling up to {}", ms(p.open), ms(p.max_open))
    } else {
        ms(p.open)
    };
    format!(
        "  timeout {} per request, retries included (the objective is {});\n  \
         {} retry of 5xx or lost answers, within a budget of {} of requests + 10/s;\n  \
         rate limit {}/s (burst {});\n  \
         circuit breaker opening at {:.0} % failures over {} (once {} calls were seen){},\n  \
         open {}, then {};\n  \
         adaptive concurrency limit (AIMD) {}..{} starting at {}, shrinking when a window's mean\n  \
         latency exceeds {} or a call fails.\n",
        ms(p.timeout),
        ms(p.objective),
        p.retries,
        pct(p.retry_budget),
        p.rate_limit,
        p.rate_burst,
        p.failure_rate,
        secs(p.window),
        p.minimum_calls,
        p.consecutive_failures
            .map_or_else(String::new, |n| format!(" or after {n} failures in a row")),
        open,
        match p.probe_every {
            Some(every) => format!(
                "one scout every {} until one succeeds ({} probe{} then)",
                ms(every),
                p.probes,
                if p.probes == 1 {
                    " is the test"
                } else {
                    "s test it"
                }
            ),
            None => format!("{} probes", p.probes),
        } + &match p.hold {
            Some((wait, cap)) => format!(
                ";\n  a refusal while a scout's answer is coming is held for it, up to {} (at most {cap} at once)",
                ms(wait)
            ),
            None => String::new(),
        },
        p.limits.0,
        p.limits.2,
        p.limits.1,
        ms(p.latency_threshold),
    )
}

fn latency_rows(rows: &mut Vec<Vec<String>>, fronts: &[&FrontRun]) {
    let mut add = |label: &str, f: &dyn Fn(&FrontRun) -> Duration| {
        let mut row = vec![label.to_string()];
        row.extend(fronts.iter().map(|r| ms(f(r))));
        rows.push(row);
    };
    add("latency, all answers: p50", &|r| r.total.all.p50);
    add("                      p99", &|r| r.total.all.p99);
    add("                      p99.9", &|r| r.total.all.p999);
    add("                      max", &|r| r.total.all.max);
    add("latency, successes:   p50", &|r| r.total.ok.p50);
    add("                      p99", &|r| r.total.ok.p99);
}

/// The side-by-side table of the fronts.
pub fn comparison(fronts: &[&FrontRun]) -> String {
    let mut header = vec![""];
    header.extend(fronts.iter().map(|f| f.name));
    let mut rows = Vec::new();
    let mut add = |label: &str, f: &dyn Fn(&Tally) -> String| {
        let mut row = vec![label.to_string()];
        row.extend(fronts.iter().map(|r| f(&r.total.tally)));
        rows.push(row);
    };
    add("requests sent", &|t| count(t.sent));
    add("succeeded", &|t| count_share(t.succeeded, t));
    add("failed", &|t| count_share(t.failed(), t));
    add("  upstream answered 5xx", &|t| count(t.failed_upstream));
    add("  upstream unreachable", &|t| count(t.failed_unreachable));
    add("  timed out", &|t| count(t.failed_timeout));
    add("  no answer from the front", &|t| count(t.failed_transport));
    add("  abandoned at the end", &|t| count(t.failed_abandoned));
    add("rejected: breaker open (503)", &|t| {
        count_share(t.rejected, t)
    });
    add("shed: concurrency limit (503)", &|t| {
        count_share(t.shed_limit, t)
    });
    add("shed: rate limit (429)", &|t| count_share(t.shed_rate, t));
    add("not sent: generator bound", &|t| count(t.not_sent));
    latency_rows(&mut rows, fronts);
    let mut row = vec!["most in flight at once".to_string()];
    row.extend(fronts.iter().map(|r| count(r.peak_in_flight)));
    rows.push(row);
    let mut row = vec!["calls that reached the upstream".to_string()];
    row.extend(fronts.iter().map(|r| count(r.upstream_calls)));
    rows.push(row);
    let mut row = vec!["calls sent while it was down".to_string()];
    row.extend(fronts.iter().map(|r| count(r.upstream_calls_while_down)));
    rows.push(row);
    table(&header, &rows)
}

/// Success rate and p99 per phase kind, for each front.
pub fn by_phase(fronts: &[&FrontRun]) -> String {
    let mut header = vec!["phase"];
    for f in fronts {
        header.push(f.name);
        header.push("p99");
    }
    let kinds = PhaseKind::ALL.iter().filter(|k| {
        fronts
            .iter()
            .any(|f| f.by_kind.iter().any(|(fk, _)| fk == *k))
    });
    let rows: Vec<Vec<String>> = kinds
        .map(|k| {
            let mut row = vec![k.label().to_string()];
            for f in fronts {
                match f.by_kind.iter().find(|(fk, _)| fk == k) {
                    Some((_, g)) => {
                        row.push(format!("{} ok", pct(g.tally.success_rate())));
                        row.push(ms(g.all.p99));
                    }
                    None => {
                        row.push("-".to_string());
                        row.push("-".to_string());
                    }
                }
            }
            row
        })
        .collect();
    table(&header, &rows)
}

/// The limit of `info`'s run as driven in `drive`.
pub fn limits<'a>(info: &RunInfo<'a>, drive: &Drive) -> Limits<'a> {
    Limits {
        timeline: info.timeline,
        plan: info.plan,
        started: Duration::from_secs_f64(drive.started_secs.max(0.0)),
        capacity: info.capacity,
        objective: info.objective,
    }
}

/// Good answers per phase kind and overall, for each front, beside the
/// limit (see the [`goodput` module](super::goodput)).
pub fn goodput(info: &RunInfo<'_>, drive: &Drive) -> String {
    let mut header = vec!["phase", "limit"];
    header.extend(drive.fronts.iter().map(|f| f.name));
    let rows: Vec<Vec<String>> = goodput::rows(&limits(info, drive), drive)
        .into_iter()
        .map(|r| {
            let mut row = vec![r.label.to_string(), count(r.limit.round() as u64)];
            row.extend(r.good.iter().map(|&good| {
                format!(
                    "{} ({} of limit)",
                    count(good),
                    pct(goodput::of_limit(good, r.limit))
                )
            }));
            row
        })
        .collect();
    table(&header, &rows)
}

/// The breaker's transitions and the time spent in each state.
pub fn breaker_timeline(front: &FrontRun, end_secs: f64) -> String {
    let mut out = String::new();
    if front.transitions.is_empty() {
        let _ = writeln!(out, "  no transitions: the breaker stayed closed.");
        return out;
    }
    const SHOWN: usize = 40;
    for t in front.transitions.iter().take(SHOWN) {
        let _ = write!(
            out,
            "  {:>8.2} s  {:<9} → {}",
            t.at_secs,
            t.from.to_string(),
            t.to
        );
        if let Some(d) = t.open_for {
            let _ = write!(out, " (for {})", ms(d));
        }
        out.push('\n');
    }
    if front.transitions.len() > SHOWN {
        let _ = writeln!(out, "  ... and {} more", front.transitions.len() - SHOWN);
    }
    let (mut open, mut half) = (0.0, 0.0);
    for (from, to, state) in front.breaker_intervals(end_secs) {
        match state {
            BreakerState::HalfOpen => half += to - from,
            _ => open += to - from,
        }
    }
    let opened = front
        .transitions
        .iter()
        .filter(|t| t.to == BreakerState::Open)
        .count();
    let _ = writeln!(
        out,
        "  {} transitions; opened {} times; open {:.1} s and half-open {:.1} s in all.",
        front.transitions.len(),
        opened,
        open,
        half
    );
    if front.lost_events > 0 {
        let _ = writeln!(
            out,
            "  ({} events were overwritten before they were read.)",
            front.lost_events
        );
    }
    out
}

/// The accounting line of a front.
pub fn accounting_line(front: &FrontRun) -> String {
    let t = &front.total.tally;
    format!(
        "  {:<12} sent {} = {} succeeded + {} failed + {} rejected + {} shed  {}\n",
        front.name,
        count(t.sent),
        count(t.succeeded),
        count(t.failed()),
        count(t.rejected),
        count(t.shed()),
        if t.balanced() {
            "✓"
        } else {
            "✗ DOES NOT ADD UP"
        }
    )
}

/// The SLI checks and the verdict.
pub fn checks(name: &str, checks: &[Check]) -> String {
    let rows: Vec<Vec<String>> = checks
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.limit.clone(),
                c.measured.clone(),
                if c.passed { "pass" } else { "FAIL" }.to_string(),
            ]
        })
        .collect();
    let mut out = table_aligned(&["check", "limit", "measured", ""], &rows, 4);
    let passed = checks.iter().filter(|c| c.passed).count();
    let _ = writeln!(
        out,
        "\n  {name}: {} ({passed} of {} checks passed)",
        if passed == checks.len() {
            "PASS"
        } else {
            "FAIL"
        },
        checks.len()
    );
    out
}

/// What the numbers say, in sentences: only what the measurement supports.
fn findings(drive: &Drive, timeline: &Timeline) -> String {
    let (Some(p), Some(u)) = (drive.protected(), drive.unprotected()) else {
        return String::new();
    };
    let mut out = String::new();
    for kind in [
        PhaseKind::LoadSpike,
        PhaseKind::LatencySpike,
        PhaseKind::Outage,
        PhaseKind::Down,
        PhaseKind::ErrorBurst,
    ] {
        let get = |f: &FrontRun| f.by_kind.iter().find(|(k, _)| *k == kind).map(|(_, g)| *g);
        if let (Some(gp), Some(gu)) = (get(p), get(u)) {
            let _ = writeln!(
                out,
                "  - During the {}, the unprotected front's answers took {} at p99 and {} succeeded;\n    \
                 the protected front answered in {} at p99 ({} succeeded, {} refused at once).",
                kind.label(),
                ms(gu.all.p99),
                pct(gu.tally.success_rate()),
                ms(gp.all.p99),
                pct(gp.tally.success_rate()),
                pct(gp.tally.share(gp.tally.rejected + gp.tally.shed())),
            );
        }
    }
    let (ps, us) = (p.total.tally.success_rate(), u.total.tally.success_rate());
    if us > ps {
        let open: f64 = p
            .breaker_intervals(drive.started_secs + drive.length.as_secs_f64())
            .iter()
            .map(|(from, to, _)| to - from)
            .sum();
        let _ = writeln!(
            out,
            "  - The unprotected front got more requests through overall ({} against {}): the\n    \
             breaker also refuses requests while it waits to test the upstream again (it was not\n    \
             closed for {open:.1} s in all), and some of those the upstream could have served.",
            pct(us),
            pct(ps),
        );
    }
    if u.upstream_calls > 0 && p.upstream_calls < u.upstream_calls {
        let _ = writeln!(
            out,
            "  - The protected front sent {} calls to its upstream, the unprotected {} ({} fewer).",
            count(p.upstream_calls),
            count(u.upstream_calls),
            pct(1.0 - p.upstream_calls as f64 / u.upstream_calls as f64)
        );
    }
    if u.peak_in_flight > p.peak_in_flight {
        let _ = writeln!(
            out,
            "  - At most {} requests waited on the protected front at once, {} on the unprotected.",
            count(p.peak_in_flight),
            count(u.peak_in_flight)
        );
    }
    if let Some(end) = timeline.faults_end() {
        let end = end.as_secs_f64();
        let closed = p
            .transitions
            .iter()
            .rev()
            .find(|t| t.to == BreakerState::Closed && t.at_secs >= end);
        if let Some(t) = closed {
            let _ = writeln!(
                out,
                "  - The faults stopped at {end:.1} s; the breaker closed again at {:.1} s.",
                t.at_secs
            );
        }
    }
    out
}

fn percentiles_line(p: &Percentiles) -> String {
    format!("p50 {}, p99 {}, p99.9 {}", ms(p.p50), ms(p.p99), ms(p.p999))
}

/// The whole report of a drive.
///
/// # Errors
///
/// Only if writing to a `String` fails, which it does not.
pub fn render(
    info: &RunInfo<'_>,
    drive: &Drive,
    checks_done: Option<(&str, &[Check])>,
) -> Result<String, fmt::Error> {
    let mut o = String::new();
    writeln!(o, "{}", info.title)?;
    writeln!(o, "{}", "=".repeat(info.title.chars().count()))?;
    let rates: Vec<String> = info
        .plan
        .segments()
        .iter()
        .map(|s| format!("{}/s for {}", s.rate, secs(s.length)))
        .collect();
    writeln!(
        o,
        "Open-loop load on loopback, the same arrivals sent to each front: {}.\n\
         The load generator keeps at most {} requests in flight per front and gives up on a\n\
         request after {}. Each front calls its own copy of the upstream ({} worker slots),\n\
         which plays this script:\n",
        if rates.len() > 4 {
            format!(
                "{} steps from {} to {}",
                rates.len(),
                rates[0],
                rates[rates.len() - 1]
            )
        } else {
            rates.join(", then ")
        },
        info.bounds.max_in_flight,
        ms(info.bounds.client_timeout),
        info.capacity,
    )?;
    o.push_str(&script(info.timeline));
    if drive.restarts > 0 {
        writeln!(
            o,
            "  (the upstreams were restarted {} times)",
            drive.restarts
        )?;
    }
    writeln!(o)?;
    if drive.protected().is_some() {
        writeln!(
            o,
            "The protected front calls through one tenlives StackLayer:"
        )?;
        o.push_str(&protection(info.protection));
        writeln!(
            o,
            "The unprotected front calls the upstream directly, with no policy.\n"
        )?;
    }
    let fronts: Vec<&FrontRun> = drive.fronts.iter().collect();
    writeln!(o, "Results")?;
    o.push_str(&comparison(&fronts));
    writeln!(o)?;
    if fronts.iter().any(|f| f.by_kind.len() > 1) {
        writeln!(
            o,
            "By phase (requests grouped by the phase they were sent in)"
        )?;
        o.push_str(&by_phase(&fronts));
        writeln!(o)?;
    }
    writeln!(
        o,
        "Goodput: answers that succeeded within {} (the latency objective), beside the\n\
         limit: what the upstream could have answered that well ({} slots over its service\n\
         time, its correct and fast-enough share, at most the load offered; zero while down)",
        ms(info.objective),
        info.capacity
    )?;
    o.push_str(&goodput(info, drive));
    writeln!(o)?;
    let end = drive.started_secs + drive.length.as_secs_f64();
    if let Some(p) = drive.protected() {
        writeln!(
            o,
            "Circuit breaker of the protected front (from the engine's event ring)"
        )?;
        o.push_str(&breaker_timeline(p, end));
        if let Some(b) = p.breaker_end {
            writeln!(o, "  state at the end: {b}")?;
        }
        if let Some(l) = p.limit {
            writeln!(
                o,
                "\nConcurrency limit: {} at the end; between {} and {} during the run ({} changes).",
                l.current, l.lowest, l.highest, l.changes
            )?;
        }
        writeln!(
            o,
            "Rate limit: {}/s, burst {}.",
            info.protection.rate_limit, info.protection.rate_burst
        )?;
        writeln!(o)?;
    }
    if let Some(p) = drive.protected() {
        writeln!(
            o,
            "Alerts of ops/rules/tenlives.rules.yml the protected front would have set off\n\
             (each rule's thresholds on the phase's own figures, the phase standing in for the\n\
             rule's windows and `for:`; burn: the error budget's burn rate, objective {})",
            super::alerts::OBJECTIVE
        )?;
        o.push_str(&super::alerts::section(
            p,
            info.timeline,
            drive.started_secs,
        ));
        writeln!(o)?;
    }
    let findings = findings(drive, info.timeline);
    if !findings.is_empty() {
        writeln!(o, "What this shows")?;
        o.push_str(&findings);
        writeln!(o)?;
    }
    writeln!(o, "Accounting (every request sent ends exactly one way)")?;
    for f in &fronts {
        o.push_str(&accounting_line(f));
    }
    if let Some((name, done)) = checks_done {
        writeln!(o, "\nService-level checks")?;
        o.push_str(&checks(name, done));
    }
    for f in &fronts {
        if f.total.all.count == 0 {
            writeln!(
                o,
                "\n  note: no answers were measured at the {} front",
                f.name
            )?;
        } else if f.total.tally.sent > 0 && info.plan.segments().len() == 1 && fronts.len() == 1 {
            writeln!(o, "\n  {}: {}", f.name, percentiles_line(&f.total.all))?;
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::results::fixtures::drive;

    #[test]
    fn numbers_read_well() {
        assert_eq!(ms(Duration::from_micros(420)), "0.42 ms");
        assert_eq!(ms(Duration::from_micros(4200)), "4.2 ms");
        assert_eq!(ms(Duration::from_millis(42)), "42 ms");
        assert_eq!(ms(Duration::from_millis(1250)), "1.25 s");
        assert_eq!(pct(0.1234), "12.3 %");
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1 000");
        assert_eq!(count(1_234_567), "1 234 567");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["name", "n"],
            &[
                vec!["a".into(), "1".into()],
                vec!["longer".into(), "1 000".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "  name        n");
        assert_eq!(lines[1], "  ------  -----");
        assert_eq!(lines[2], "  a           1");
        assert_eq!(lines[3], "  longer  1 000");
    }

    #[test]
    fn the_report_says_what_happened() {
        let timeline = Timeline::standard(Duration::from_secs(10), Duration::from_millis(10));
        let plan = RatePlan::constant(10, Duration::from_secs(10));
        let protection = Protection::for_rate(10);
        let info = RunInfo {
            title: "test run",
            timeline: &timeline,
            plan: &plan,
            protection: &protection,
            capacity: 8,
            bounds: Bounds {
                max_in_flight: 100,
                client_timeout: Duration::from_secs(2),
            },
            objective: Duration::from_millis(300),
        };
        let drive = drive();
        let done = [crate::http::sli::at_most_count("x", 1, 2)];
        let text = render(&info, &drive, Some(("smoke", &done))).unwrap();
        for needle in [
            "test run\n========\n",
            "latency spike",
            "every call stalls 1.00 s, then 503",
            "rejected: breaker open (503)",
            "20 (19.6 %)",
            "1.50 s  closed    → open (for 2.00 s)",
            "3 transitions; opened 1 times; open 2.0 s and half-open 0.1 s in all.",
            "Concurrency limit: 30 at the end; between 4 and 33",
            "sent 102 = 80 succeeded + 1 failed + 20 rejected + 1 shed  ✓",
            "The protected front sent 90 calls to its upstream, the unprotected 110 (18.2 % fewer).",
            "smoke: PASS (1 of 1 checks passed)",
            "Goodput: answers that succeeded within 300 ms",
            // 10/s offered; healthy 2.5 s and recovery 2.8 s in full, the
            // error burst's 1.2 s in full (40 % of 533/s is over 10/s), the
            // latency spike's 1.5 s at 5/s, the outage's nothing: 72.5.
            "whole run     73",
            "80 (110.3 % of limit)",
            "50 (69.0 % of limit)",
            "Alerts of ops/rules/tenlives.rules.yml the protected front would have set off",
            "over the whole run: none",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}
