//! Which of the alerts in `ops/rules/tenlives.rules.yml` a run's protected
//! front would have set off, phase by phase: the rules' own thresholds
//! evaluated on the run's own figures.
//!
//! A demo's phases last seconds, the rules' windows minutes to days and
//! their `for:` durations ten minutes, so a phase stands in for every
//! window of a rule: an alert is named when its condition held over the
//! phase (a rate over the phase's requests; a state at every second of
//! it), that is, when it would have fired had the phase lasted as long as
//! the rule asks. The front is one call path: its error ratio is what
//! `tenlives:slo_error_ratio` would read, requests failed or refused (by
//! the breaker, the concurrency limit or the rate limit) over requests
//! ended. `TenlivesRedisQuotaDegraded` has no part in the demo (no Redis);
//! `TenlivesEventsLost` is judged over the whole run (the ring's losses are
//! not kept per phase). The unprotected front runs no tenlives policy, so
//! exports nothing an alert could read.
//!
//! The thresholds below are the rules'; a test reads the rules file and
//! fails if one of them is changed there and not here.

use std::fmt::Write as _;

use tenlives_engine::breaker::BreakerState;

use super::record::Tally;
use super::report::{pct, table_aligned};
use super::results::FrontRun;
use super::timeline::{PhaseKind, Timeline};

/// `tenlives:slo_objective:ratio`.
pub const OBJECTIVE: f64 = 0.999;
/// `TenlivesErrorBudgetBurnFast`: the burn rate over 1 h and 5 min...
pub const BURN_FAST_1H: f64 = 14.4;
/// ...or over 6 h and 30 min.
pub const BURN_FAST_6H: f64 = 6.0;
/// `TenlivesErrorBudgetBurnSlow`: the burn rate over 1 d and 2 h...
pub const BURN_SLOW_1D: f64 = 3.0;
/// ...or over 3 d and 6 h.
pub const BURN_SLOW_3D: f64 = 1.0;
/// `TenlivesConcurrencySaturated`: the share of acquisitions refused.
pub const SATURATED_REFUSED: f64 = 0.05;
/// `TenlivesRateLimiterRefusing`: the share of calls refused by the rate
/// limiter.
pub const RATE_REFUSED: f64 = 0.2;

/// An alert named for a phase, and the figure that set it off.
#[derive(Clone, Debug, PartialEq)]
pub struct Firing {
    /// The alert's name in the rules file.
    pub alert: &'static str,
    /// What was measured against its threshold.
    pub measured: String,
}

/// The alerts of one phase.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseAlerts {
    /// The phase.
    pub kind: PhaseKind,
    /// Its start and end, seconds since the start of the load.
    pub from_secs: f64,
    /// See `from_secs`.
    pub to_secs: f64,
    /// The burn rate of the error budget over the phase (`None`: no request
    /// ended in it).
    pub burn: Option<f64>,
    /// The alerts whose condition held over the phase.
    pub firing: Vec<Firing>,
}

/// The burn rate of `tally`'s requests: their error ratio over the budget.
pub fn burn_rate(tally: &Tally) -> Option<f64> {
    let ended = tally.ended();
    (ended > 0).then(|| {
        let bad = tally.failed() + tally.rejected + tally.shed();
        bad as f64 / ended as f64 / (1.0 - OBJECTIVE)
    })
}

/// Evaluates the rules over each phase of `timeline` for `front`, whose
/// per-second series starts at `started_secs`.
pub fn evaluate(front: &FrontRun, timeline: &Timeline, started_secs: f64) -> Vec<PhaseAlerts> {
    timeline
        .phases()
        .iter()
        .map(|phase| {
            let from = phase.from.as_secs_f64();
            let to = phase.to.as_secs_f64();
            // The buckets that end within the phase.
            let buckets: Vec<_> = front
                .series
                .iter()
                .filter(|b| {
                    let t = b.end_secs - started_secs;
                    t > from + 1e-9 && t <= to + 1e-9
                })
                .collect();
            let tally = buckets
                .iter()
                .fold(Tally::default(), |sum, b| sum.plus(&b.tally));
            let burn = burn_rate(&tally);
            let mut firing = Vec::new();
            if let Some(burn) = burn {
                let measured = format!("burn rate {burn:.1}x");
                if burn > BURN_FAST_1H || burn > BURN_FAST_6H {
                    firing.push(Firing {
                        alert: "TenlivesErrorBudgetBurnFast",
                        measured: measured.clone(),
                    });
                }
                if burn > BURN_SLOW_1D || burn > BURN_SLOW_3D {
                    firing.push(Firing {
                        alert: "TenlivesErrorBudgetBurnSlow",
                        measured,
                    });
                }
            }
            let states: Vec<_> = buckets.iter().filter_map(|b| b.breaker).collect();
            if !states.is_empty()
                && states.iter().all(|s| {
                    matches!(
                        s,
                        BreakerState::Open | BreakerState::HalfOpen | BreakerState::ForcedOpen
                    )
                })
            {
                firing.push(Firing {
                    alert: "TenlivesBreakerOpenTooLong",
                    measured: format!("not closed at any of {} seconds", states.len()),
                });
            }
            // Acquisitions: the calls that reached the concurrency limit
            // (past the breaker and the rate limit).
            let acquisitions = tally.succeeded + tally.failed() + tally.shed_limit;
            let limit_refused = share(tally.shed_limit, acquisitions);
            let full_throughout = !buckets.is_empty()
                && buckets
                    .iter()
                    .all(|b| b.limit.is_some_and(|l| b.in_flight >= u64::from(l)));
            if limit_refused > SATURATED_REFUSED || full_throughout {
                firing.push(Firing {
                    alert: "TenlivesConcurrencySaturated",
                    measured: if full_throughout {
                        "every permit in use at every second".to_string()
                    } else {
                        format!("{} of acquisitions refused", pct(limit_refused))
                    },
                });
            }
            let rate_refused = share(tally.shed_rate, tally.ended());
            if rate_refused > RATE_REFUSED {
                firing.push(Firing {
                    alert: "TenlivesRateLimiterRefusing",
                    measured: format!("{} of calls refused", pct(rate_refused)),
                });
            }
            PhaseAlerts {
                kind: phase.kind,
                from_secs: from,
                to_secs: to,
                burn,
                firing,
            }
        })
        .collect()
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// `TenlivesEventsLost` over the whole run.
pub fn events_lost(front: &FrontRun) -> Option<Firing> {
    (front.lost_events > 0).then(|| Firing {
        alert: "TenlivesEventsLost",
        measured: format!("{} events lost", front.lost_events),
    })
}

/// The report's section: a table of phases and the alerts named in each,
/// then what set off each alert other than the burn-rate ones.
pub fn section(front: &FrontRun, timeline: &Timeline, started_secs: f64) -> String {
    let evaluated = evaluate(front, timeline, started_secs);
    let rows: Vec<Vec<String>> = evaluated
        .iter()
        .map(|p| {
            vec![
                format!("{:.0}-{:.0} s", p.from_secs, p.to_secs),
                p.kind.label().to_string(),
                p.burn.map_or("-".to_string(), |b| format!("{b:.1}x")),
                if p.firing.is_empty() {
                    "none".to_string()
                } else {
                    p.firing
                        .iter()
                        .map(|f| f.alert)
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ]
        })
        .collect();
    let mut o = table_aligned(&["phase", "", "burn", "alerts"], &rows, 4);
    for p in &evaluated {
        for f in p.firing.iter().filter(|f| !f.alert.contains("Burn")) {
            let _ = writeln!(
                o,
                "  {:.0}-{:.0} s: {}: {}",
                p.from_secs, p.to_secs, f.alert, f.measured
            );
        }
    }
    let lost = events_lost(front).map_or("none".to_string(), |f| {
        format!("{} ({})", f.alert, f.measured)
    });
    let _ = writeln!(o, "  over the whole run: {lost}");
    o
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::http::record::Bucket;
    use crate::http::results::GroupSummary;

    /// The rules file, read where the tests run (the perf crate's folder).
    fn rules() -> String {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../ops/rules/tenlives.rules.yml"
        );
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn the_thresholds_are_the_rules() {
        let rules = rules();
        for expected in [
            format!("vector({OBJECTIVE})"),
            format!(
                "tenlives:slo_burn_rate:1h > {BURN_FAST_1H} and tenlives:slo_burn_rate:5m > {BURN_FAST_1H}"
            ),
            format!(
                "tenlives:slo_burn_rate:6h > {BURN_FAST_6H} and tenlives:slo_burn_rate:30m > {BURN_FAST_6H}"
            ),
            format!(
                "tenlives:slo_burn_rate:1d > {BURN_SLOW_1D} and tenlives:slo_burn_rate:2h > {BURN_SLOW_1D}"
            ),
            format!(
                "tenlives:slo_burn_rate:3d > {BURN_SLOW_3D} and tenlives:slo_burn_rate:6h > {BURN_SLOW_3D}"
            ),
            format!(") > {SATURATED_REFUSED}"),
            format!("> {RATE_REFUSED}"),
            "tenlives_breaker_state >= 1 and tenlives_breaker_state <= 3".to_string(),
        ] {
            assert!(
                rules.contains(&expected),
                "the rules file has no `{expected}`"
            );
        }
    }

    fn bucket(end_secs: f64, tally: Tally, breaker: BreakerState, in_flight: u64) -> Bucket {
        Bucket {
            end_secs,
            tally,
            latency: Default::default(),
            in_flight,
            peak_in_flight: in_flight,
            breaker: Some(breaker),
            limit: Some(4),
        }
    }

    fn front(series: Vec<Bucket>) -> FrontRun {
        FrontRun {
            name: "protected",
            protected: true,
            total: GroupSummary::of(&Default::default()),
            by_kind: Vec::new(),
            series,
            transitions: Vec::new(),
            lost_events: 0,
            limit: None,
            breaker_end: None,
            peak_in_flight: 0,
            upstream_calls: 0,
            upstream_calls_while_down: 0,
        }
    }

    fn tally(succeeded: u64, failed: u64, rejected: u64, shed_limit: u64, shed_rate: u64) -> Tally {
        Tally {
            sent: succeeded + failed + rejected + shed_limit + shed_rate,
            succeeded,
            failed_upstream: failed,
            rejected,
            shed_limit,
            shed_rate,
            ..Tally::default()
        }
    }

    #[test]
    fn each_phase_names_the_alerts_its_figures_set_off() {
        use BreakerState::{Closed, HalfOpen, Open};
        let base = Duration::from_millis(10);
        // The demo's script over 100 s: phases of whole seconds (healthy,
        // latency spike, healthy, error burst, outage, recovery).
        let timeline = Timeline::standard(Duration::from_secs(100), base);
        let phases: Vec<_> = timeline.phases().to_vec();
        let started = 100.0;
        let mut series = Vec::new();
        // What each phase's seconds look like: 0 clean, 1 failing, 2 down.
        let look = |kind: PhaseKind| match kind {
            PhaseKind::LatencySpike | PhaseKind::ErrorBurst => 1,
            PhaseKind::Outage => 2,
            _ => 0,
        };
        for p in &phases {
            let mut t = p.from.as_secs_f64() + 1.0;
            while t <= p.to.as_secs_f64() + 1e-9 {
                series.push(match look(p.kind) {
                    // 1 bad in 10 000: burn 0.1, nothing.
                    0 => bucket(started + t, tally(9999, 1, 0, 0, 0), Closed, 1),
                    // 1 % failed: burn 10, fast and slow.
                    1 => bucket(started + t, tally(99, 1, 0, 0, 0), Closed, 1),
                    // Open throughout, refusing; the limit full; a third of
                    // the calls rate-limited.
                    _ => bucket(
                        started + t,
                        tally(0, 0, 40, 10, 30),
                        if (t as u64).is_multiple_of(2) {
                            Open
                        } else {
                            HalfOpen
                        },
                        4,
                    ),
                });
                t += 1.0;
            }
        }
        let alerts = evaluate(&front(series), &timeline, started);
        assert_eq!(alerts.len(), phases.len());
        for (i, a) in alerts.iter().enumerate() {
            let names: Vec<_> = a.firing.iter().map(|f| f.alert).collect();
            let expected: &[&str] = match look(a.kind) {
                0 => &[],
                1 => &["TenlivesErrorBudgetBurnFast", "TenlivesErrorBudgetBurnSlow"],
                _ => &[
                    "TenlivesErrorBudgetBurnFast",
                    "TenlivesErrorBudgetBurnSlow",
                    "TenlivesBreakerOpenTooLong",
                    "TenlivesConcurrencySaturated",
                    "TenlivesRateLimiterRefusing",
                ],
            };
            assert_eq!(names, expected, "phase {i} ({:?}): {a:?}", a.kind);
        }
        assert_eq!(phases.len(), 6);
        assert!((alerts[3].burn.unwrap() - 10.0).abs() < 1e-9);
    }

    #[test]
    fn a_breaker_that_closes_within_the_phase_and_a_burn_at_the_threshold_fire_nothing() {
        use BreakerState::{Closed, Open};
        let timeline = Timeline::healthy(Duration::from_secs(2), Duration::from_millis(10));
        // A burn of exactly 1 (1 bad in 1000) is not above the slow
        // threshold; the breaker closed at the second second.
        let series = vec![
            bucket(1.0, tally(499, 1, 0, 0, 0), Open, 0),
            bucket(2.0, tally(500, 0, 0, 0, 0), Closed, 0),
        ];
        let alerts = evaluate(&front(series), &timeline, 0.0);
        assert_eq!(alerts.len(), 1);
        assert!(alerts[0].firing.is_empty(), "{alerts:?}");
        let mut lossy = front(Vec::new());
        lossy.lost_events = 3;
        assert_eq!(events_lost(&lossy).unwrap().alert, "TenlivesEventsLost");
        assert_eq!(events_lost(&front(Vec::new())), None);
    }
}
