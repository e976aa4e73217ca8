//! Turning the two runs of the simulation into text a person can read.
//!
//! Every figure printed here is computed from the runs (or is one of the
//! scenario's or breaker's settings, printed to explain what was simulated).

use std::fmt::{self, Write};
use std::time::Duration;

use tenlives_engine::breaker::BreakerState;
use tenlives_engine::time::Timestamp;

use super::Simulation;
use super::scenario::{Behaviour, BreakerSettings, Phase, PhaseKind, Scenario};
use super::sim::{Cause, Fate, RequestRecord, RunResult, Transition, TripRule};

/// Column at which the closing remarks wrap.
const WRAP: usize = 92;

/// Width of the timeline bar, in characters.
const BAR_WIDTH: u32 = 60;

/// Totals over a set of requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests sent.
    pub requests: u64,
    /// Requests answered successfully.
    pub succeeded: u64,
    /// Requests that reached the dependency and failed (error or timeout).
    pub failed: u64,
    /// Requests the breaker rejected without calling the dependency.
    pub rejected: u64,
    /// Mean time a client waited for its result (a rejection waits 0).
    pub mean: Duration,
    /// 99th percentile of that wait (nearest rank).
    pub p99: Duration,
    /// Total time clients spent waiting on calls that then failed.
    pub wasted: Duration,
}

impl Stats {
    /// Totals over `records`.
    pub fn of<'a>(records: impl IntoIterator<Item = &'a RequestRecord>) -> Stats {
        let mut s = Stats::default();
        let mut waits = Vec::new();
        let mut total = Duration::ZERO;
        for r in records {
            s.requests += 1;
            match r.fate {
                Fate::Succeeded => s.succeeded += 1,
                Fate::Failed => {
                    s.failed += 1;
                    s.wasted += r.latency;
                }
                Fate::Rejected => s.rejected += 1,
            }
            total += r.latency;
            waits.push(r.latency);
        }
        if s.requests > 0 {
            s.mean = total / u32::try_from(s.requests).unwrap_or(u32::MAX);
            waits.sort_unstable();
            s.p99 = percentile(&waits, 99.0);
        }
        s
    }

    /// Requests that reached the dependency.
    pub fn reached(&self) -> u64 {
        self.succeeded + self.failed
    }
}

/// The nearest-rank `p`-th percentile of `sorted` (zero when it is empty).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn secs(t: Timestamp) -> f64 {
    t.as_nanos() as f64 / 1e9
}

/// A duration in words: "5 s", "2.5 s", "500 ms".
fn span(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        let s = d.as_secs_f64();
        if d.subsec_nanos() == 0 {
            format!("{s:.0} s")
        } else {
            format!("{s:.1} s")
        }
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// A client wait for a table: "21.3 ms", "1.00 s".
fn wait(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".to_owned()
    } else {
        format!("{:.0} %", part as f64 * 100.0 / whole as f64)
    }
}

fn range(p: &Phase) -> String {
    format!("{:.0}-{:.0} s", p.start.as_secs_f64(), p.end.as_secs_f64())
}

/// What the dependency does during a phase, in words.
fn behaviour(b: Behaviour, timeout: Duration) -> String {
    match b {
        Behaviour::Down => format!(
            "does not answer: every call times out after {}",
            span(timeout)
        ),
        Behaviour::Serving {
            error_rate,
            base,
            extra_mean,
        } => format!(
            "{:.0} % of calls fail; calls take {} or more, about {} on average",
            error_rate * 100.0,
            span(base),
            span(base + extra_mean)
        ),
    }
}

/// The label and sentence for a transition.
fn narrate(t: &Transition, settings: &BreakerSettings) -> (String, String) {
    match t.cause {
        Cause::Tripped { rule, open_for } => {
            let why = match rule {
                TripRule::Consecutive { run } => format!("{run} calls in a row failed"),
                TripRule::FailureRate { failures, calls } => format!(
                    "{failures} of {calls} recent calls failed ({})",
                    pct(failures, calls)
                ),
                TripRule::SlowRate { slow, calls } => format!(
                    "{slow} of {calls} recent calls took {} or longer ({})",
                    span(settings.slow_call),
                    pct(slow, calls)
                ),
                TripRule::Unexplained => "a trip rule fired".to_owned(),
            };
            (
                "OPENED".to_owned(),
                format!("{why}; rejecting calls for {}", span(open_for)),
            )
        }
        Cause::Probing { probes } => (
            "HALF-OPEN".to_owned(),
            format!("open period over; letting {probes} probe calls test the dependency"),
        ),
        Cause::Reopened {
            reported,
            failed,
            slow,
            open_for,
            trips,
        } => {
            let why = match (failed, slow) {
                (0, s) => format!("{s} of {reported} probes were slow"),
                (f, 0) => format!("{f} of {reported} probes failed"),
                (f, s) => format!("{f} of {reported} probes failed and {s} were slow"),
            };
            (
                "RE-OPENED".to_owned(),
                format!(
                    "{why}; waiting {} this time (trip {trips} in a row)",
                    span(open_for)
                ),
            )
        }
        Cause::Closed {
            reported,
            succeeded,
        } => {
            let how = if succeeded == reported {
                format!("all {reported} probes succeeded")
            } else {
                format!("{succeeded} of {reported} probes succeeded, enough to close")
            };
            (
                "CLOSED".to_owned(),
                format!("{how}; calls flow normally again"),
            )
        }
        Cause::Other => (t.to.to_string().to_uppercase(), format!("was {}", t.from)),
    }
}

/// The breaker's state intervals: `(start, end, state)`.
fn intervals(run: &RunResult) -> Vec<(Timestamp, Timestamp, BreakerState)> {
    let mut out = Vec::new();
    let mut start = Timestamp::ZERO;
    let mut state = BreakerState::Closed;
    for t in &run.transitions {
        out.push((start, t.at, state));
        start = t.at;
        state = t.to;
    }
    out.push((start, run.end, state));
    out
}

fn state_symbol(s: BreakerState) -> char {
    match s {
        BreakerState::Closed => '-',
        BreakerState::Open => '#',
        BreakerState::HalfOpen => '?',
        _ => '*',
    }
}

/// Two lines of `BAR_WIDTH` characters: the dependency's phase and the
/// breaker's dominant state in each slice of the run.
fn bars(scenario: &Scenario, run: &RunResult) -> (String, String) {
    let total = scenario.duration.as_nanos() as u64;
    let spans = intervals(run);
    let mut phase_bar = String::new();
    let mut state_bar = String::new();
    for col in 0..u64::from(BAR_WIDTH) {
        let lo = total * col / u64::from(BAR_WIDTH);
        let hi = total * (col + 1) / u64::from(BAR_WIDTH);
        let mid = Timestamp::from_nanos(lo + (hi - lo) / 2);
        phase_bar.push(scenario.phases[scenario.phase_at(mid)].kind.symbol());
        let mut best = (0, BreakerState::Closed);
        for &(a, b, state) in &spans {
            let overlap = b.as_nanos().min(hi).saturating_sub(a.as_nanos().max(lo));
            if overlap > best.0 {
                best = (overlap, state);
            }
        }
        state_bar.push(state_symbol(best.1));
    }
    (phase_bar, state_bar)
}

/// Time spent in a state, with its share of the run.
fn share(d: Duration, end: Timestamp) -> String {
    let whole = end.as_nanos().max(1) as f64;
    format!(
        "{:.1} s ({:.0} %)",
        d.as_secs_f64(),
        d.as_nanos() as f64 * 100.0 / whole
    )
}

/// The whole report.
pub fn render(demo: &Simulation) -> Result<String, fmt::Error> {
    let mut out = String::new();
    let o = &mut out;
    let sc = &demo.scenario;
    let st = &demo.settings;
    let guarded = &demo.protected;
    let bare = &demo.unprotected;

    writeln!(
        o,
        "tenlives simulate: a circuit breaker protecting a flaky dependency, in virtual time"
    )?;
    writeln!(
        o,
        "==================================================================================="
    )?;
    writeln!(o)?;
    writeln!(
        o,
        "Virtual time, seed {}: {} of simulated traffic, {} requests per second, {} requests.",
        sc.seed,
        span(sc.duration),
        sc.rate,
        sc.requests()
    )?;
    writeln!(
        o,
        "The same traffic runs twice against the same dependency: once through the breaker,"
    )?;
    writeln!(
        o,
        "once unprotected. A client gives up on a call after {}.",
        span(sc.timeout)
    )?;
    writeln!(o)?;
    writeln!(o, "The dependency's phases:")?;
    for p in &sc.phases {
        writeln!(
            o,
            "  {:>11}  {:<14} {}",
            range(p),
            p.kind.name(),
            behaviour(p.behaviour, sc.timeout)
        )?;
    }
    writeln!(o)?;
    writeln!(
        o,
        "The breaker opens when, over the last {}:",
        span(st.window)
    )?;
    writeln!(
        o,
        "  {:.0} % of calls failed, or {:.0} % took {} or longer (judged once it saw {} calls),",
        st.failure_rate_pct,
        st.slow_rate_pct,
        span(st.slow_call),
        st.minimum_calls
    )?;
    writeln!(
        o,
        "  or when {} calls in a row failed.",
        st.consecutive_failures
    )?;
    writeln!(
        o,
        "Open, it rejects calls at once for {} ({} times longer after each failed test, at most {}),",
        span(st.open_duration),
        st.backoff,
        span(st.max_open)
    )?;
    writeln!(
        o,
        "then lets {} probe calls through; their results decide whether it closes.",
        st.probes
    )?;

    // 1. Timeline.
    writeln!(o)?;
    writeln!(o, "What happened")?;
    writeln!(o, "-------------")?;
    let mut transitions = guarded.transitions.iter().peekable();
    for p in &sc.phases {
        let start = Timestamp::from_nanos(p.start.as_nanos() as u64);
        while let Some(t) = transitions.next_if(|t| t.at < start) {
            write_transition(o, t, st)?;
        }
        writeln!(
            o,
            "  t={:>6.1}s  >> dependency: {}",
            secs(start),
            match p.kind {
                PhaseKind::Healthy => "healthy".to_owned(),
                PhaseKind::Recovery => "recovered, healthy again".to_owned(),
                k => format!("{} begins", k.name()),
            }
        )?;
    }
    for t in transitions {
        write_transition(o, t, st)?;
    }
    let (phase_bar, state_bar) = bars(sc, guarded);
    writeln!(o)?;
    writeln!(
        o,
        "  {:<12}0 s{:>w$}",
        "",
        span(sc.duration),
        w = BAR_WIDTH as usize - 3
    )?;
    writeln!(o, "  {:<12}{phase_bar}", "dependency")?;
    writeln!(o, "  {:<12}{state_bar}", "breaker")?;
    writeln!(
        o,
        "  {:<12}dependency: . healthy  s slow  e errors  X down",
        ""
    )?;
    writeln!(o, "  {:<12}breaker:    - closed   # open  ? half-open", "")?;

    // 2. Per phase.
    writeln!(o)?;
    writeln!(o, "Per phase")?;
    writeln!(o, "---------")?;
    writeln!(
        o,
        "  {:<14} {:>11}  {:<12} {:>8} {:>8} {:>9} {:>7} {:>8} {:>10} {:>10}",
        "phase",
        "time",
        "run",
        "requests",
        "reached",
        "succeeded",
        "failed",
        "rejected",
        "mean wait",
        "p99 wait"
    )?;
    for (i, p) in sc.phases.iter().enumerate() {
        for (n, (label, run)) in [("with breaker", guarded), ("unprotected", bare)]
            .into_iter()
            .enumerate()
        {
            let s = Stats::of(run.records.iter().filter(|r| r.phase == i));
            let (name, time) = if n == 0 {
                (p.kind.name().to_owned(), range(p))
            } else {
                (String::new(), String::new())
            };
            writeln!(
                o,
                "  {:<14} {:>11}  {:<12} {:>8} {:>8} {:>9} {:>7} {:>8} {:>10} {:>10}",
                name,
                time,
                label,
                s.requests,
                s.reached(),
                s.succeeded,
                s.failed,
                s.rejected,
                wait(s.mean),
                wait(s.p99)
            )?;
        }
    }
    writeln!(
        o,
        "  (reached: calls that reached the dependency; a rejected request waits 0 ms)"
    )?;

    // 3. Summary.
    let g = Stats::of(&guarded.records);
    let b = Stats::of(&bare.records);
    let outage = sc.find(PhaseKind::Outage);
    let outage_reached = |run: &RunResult| {
        outage.map(|k| Stats::of(run.records.iter().filter(|r| r.phase == k)).reached())
    };
    writeln!(o)?;
    writeln!(o, "Side by side")?;
    writeln!(o, "------------")?;
    let dash = || "-".to_owned();
    let row = |o: &mut String, what: &str, with: String, without: String| {
        writeln!(o, "  {what:<48} {with:>16} {without:>16}")
    };
    row(o, "", "with breaker".into(), "unprotected".into())?;
    row(
        o,
        "requests sent",
        g.requests.to_string(),
        b.requests.to_string(),
    )?;
    row(
        o,
        "  answered successfully",
        g.succeeded.to_string(),
        b.succeeded.to_string(),
    )?;
    row(
        o,
        "  failed after waiting for the dependency",
        g.failed.to_string(),
        b.failed.to_string(),
    )?;
    row(
        o,
        "  rejected at once by the breaker",
        g.rejected.to_string(),
        b.rejected.to_string(),
    )?;
    row(
        o,
        "calls that reached the dependency",
        g.reached().to_string(),
        b.reached().to_string(),
    )?;
    if let (Some(k), Some(gr), Some(br)) = (outage, outage_reached(guarded), outage_reached(bare)) {
        row(
            o,
            &format!("  of which during the outage ({})", range(&sc.phases[k])),
            gr.to_string(),
            br.to_string(),
        )?;
    }
    if let (Some(gr), Some(br)) = (outage_reached(guarded), outage_reached(bare)) {
        row(
            o,
            "    load spared while it was down",
            spared(gr, br),
            dash(),
        )?;
    }
    row(
        o,
        "most calls in flight on the dependency at once",
        guarded.peak_in_flight.to_string(),
        bare.peak_in_flight.to_string(),
    )?;
    row(o, "mean client wait", wait(g.mean), wait(b.mean))?;
    row(o, "p99 client wait", wait(g.p99), wait(b.p99))?;
    row(
        o,
        "client time spent waiting on calls that failed",
        span_1(g.wasted),
        span_1(b.wasted),
    )?;
    let times = guarded.state_times.unwrap_or_default();
    row(
        o,
        "time breaker closed",
        share(times.closed, guarded.end),
        dash(),
    )?;
    row(
        o,
        "time breaker open",
        share(times.open, guarded.end),
        dash(),
    )?;
    row(
        o,
        "time breaker half-open",
        share(times.half_open, guarded.end),
        dash(),
    )?;
    row(
        o,
        "breaker transitions",
        guarded.transitions.len().to_string(),
        dash(),
    )?;

    // 4. In words.
    writeln!(o)?;
    writeln!(o, "In short")?;
    writeln!(o, "--------")?;
    if let (Some(k), Some(gr), Some(br)) = (outage, outage_reached(guarded), outage_reached(bare)) {
        bullet(
            o,
            &format!(
                "While the dependency was down ({}), it received {gr} calls through the breaker \
                 instead of {br} without it: {} less load on a struggling service.",
                range(&sc.phases[k]),
                spared(gr, br)
            ),
        )?;
    }
    bullet(
        o,
        &format!(
            "Unprotected, {} requests failed after making their clients wait {} in total. \
             With the breaker, {} failed that way ({} of waiting) and {} were rejected at once.",
            b.failed,
            span_1(b.wasted),
            g.failed,
            span_1(g.wasted),
            g.rejected
        ),
    )?;
    let lost = rejected_counterfactual(guarded, bare);
    let would_fail: u64 = lost.iter().map(|l| l.0).sum();
    let would_succeed: u64 = lost.iter().map(|l| l.1).sum();
    let where_lost: Vec<String> = sc
        .phases
        .iter()
        .zip(&lost)
        .filter(|(_, l)| l.1 > 0)
        .map(|(p, l)| format!("{} in the {}", l.1, p.kind.name()))
        .collect();
    let price = if where_lost.is_empty() {
        String::new()
    } else {
        format!(
            " Those successes are the price of protection: {}.",
            where_lost.join(", ")
        )
    };
    bullet(
        o,
        &format!(
            "Of the {} rejected requests, {would_fail} would have failed anyway and \
             {would_succeed} would have succeeded.{price}",
            g.rejected
        ),
    )?;
    if let Some(k) = sc.find(PhaseKind::Recovery) {
        let back = Timestamp::from_nanos(sc.phases[k].start.as_nanos() as u64);
        bullet(o, &recovery_sentence(back, &guarded.transitions))?;
    }
    bullet(
        o,
        &format!(
            "A client waited {} on average for its result (answer or rejection) instead of {}; \
             the p99 wait went from {} to {}.",
            wait(g.mean),
            wait(b.mean),
            wait(b.p99),
            wait(g.p99)
        ),
    )?;
    bullet(
        o,
        "This simulated dependency does not slow down under load, so the unprotected run is \
         its best case: a real overloaded service often takes longer to recover without a breaker.",
    )?;
    Ok(out)
}

/// Writes `text` as a list item wrapped at `WRAP` columns.
fn bullet(o: &mut String, text: &str) -> fmt::Result {
    // A unit stays on the line of its number.
    let mut words: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        let unit = matches!(
            word.trim_end_matches([',', ';', '.', ')']),
            "ms" | "s" | "%"
        );
        match words.last_mut() {
            Some(last) if unit => {
                last.push(' ');
                last.push_str(word);
            }
            _ => words.push(word.to_owned()),
        }
    }
    let mut line = String::from("-");
    for word in &words {
        if line.len() + 1 + word.len() > WRAP && line.trim() != "-" {
            writeln!(o, "{line}")?;
            line = String::from(" ");
        }
        line.push(' ');
        line.push_str(word);
    }
    writeln!(o, "{line}")
}

/// How much smaller `with` is than `without`, in percent.
fn spared(with: u64, without: u64) -> String {
    if without == 0 {
        "-".to_owned()
    } else {
        format!(
            "{:.1} %",
            without.saturating_sub(with) as f64 * 100.0 / without as f64
        )
    }
}

fn span_1(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn write_transition(o: &mut String, t: &Transition, st: &BreakerSettings) -> fmt::Result {
    let (label, text) = narrate(t, st);
    writeln!(o, "  t={:>6.1}s     {label:<9} — {text}", secs(t.at))
}

/// Per phase: of the requests the breaker rejected, how many failed and how
/// many succeeded in the unprotected run (which met the same dependency).
pub fn rejected_counterfactual(guarded: &RunResult, bare: &RunResult) -> Vec<(u64, u64)> {
    let phases = guarded
        .records
        .iter()
        .map(|r| r.phase + 1)
        .max()
        .unwrap_or(0);
    let mut out = vec![(0, 0); phases];
    for (g, b) in guarded.records.iter().zip(&bare.records) {
        if g.fate == Fate::Rejected {
            match b.fate {
                Fate::Succeeded => out[g.phase].1 += 1,
                _ => out[g.phase].0 += 1,
            }
        }
    }
    out
}

/// How long after the dependency came back the breaker let traffic flow.
fn recovery_sentence(back: Timestamp, transitions: &[Transition]) -> String {
    let state_then = transitions
        .iter()
        .take_while(|t| t.at <= back)
        .last()
        .map_or(BreakerState::Closed, |t| t.to);
    if state_then == BreakerState::Closed {
        return format!(
            "The breaker was already closed when the dependency recovered at {:.1} s.",
            secs(back)
        );
    }
    match transitions
        .iter()
        .find(|t| t.at > back && t.to == BreakerState::Closed)
    {
        Some(t) => format!(
            "The dependency recovered at {:.1} s; the breaker closed at {:.1} s, {:.1} s later, \
             once its open period ran out and the probes found the dependency healthy.",
            secs(back),
            secs(t.at),
            t.at.saturating_duration_since(back).as_secs_f64()
        ),
        None => format!(
            "The dependency recovered at {:.1} s, but the breaker had not closed by the end of the run.",
            secs(back)
        ),
    }
}
