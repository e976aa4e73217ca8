//! Service-level indicators and their checks.
//!
//! Every check is a pure function of what a drive measured, and says what
//! it measured, what the limit was and whether it passed. The definitions:
//!
//! - **error rate**: failed requests (upstream errors passed on, timeouts,
//!   no answer, abandoned) over requests sent. A rejected or shed request is
//!   not an error: it is an immediate "try later" (`503`/`429`), counted
//!   by its own indicator;
//! - **p99**: the 99th percentile of the time to *any* answer, measured
//!   from the request's scheduled start;
//! - **recovery**: the time from the end of the faults until the first of
//!   `window` consecutive buckets in which at most `max_error` of the
//!   requests that ended did not succeed and the p99 is within the limit;
//! - **accounting**: sent = succeeded + failed + rejected + shed, offered =
//!   sent + not sent, and the buckets add up to the totals.

use std::time::Duration;

use super::procfs::ProcSample;
use super::record::{Bucket, Percentiles, Tally};
use super::report::{ms, pct};
use super::results::FrontRun;

/// One checked indicator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What is checked.
    pub name: String,
    /// The bound.
    pub limit: String,
    /// What was measured.
    pub measured: String,
    /// Whether the measurement is within the bound.
    pub passed: bool,
}

impl Check {
    fn new(name: impl Into<String>, limit: String, measured: String, passed: bool) -> Check {
        Check {
            name: name.into(),
            limit,
            measured,
            passed,
        }
    }
}

/// Whether every check passed.
pub fn all_passed(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.passed)
}

/// A fraction at most `limit`.
pub fn at_most_share(name: impl Into<String>, measured: f64, limit: f64) -> Check {
    Check::new(
        name,
        format!("≤ {}", pct(limit)),
        pct(measured),
        measured <= limit,
    )
}

/// A duration at most `limit`.
pub fn at_most_time(name: impl Into<String>, measured: Duration, limit: Duration) -> Check {
    Check::new(
        name,
        format!("≤ {}", ms(limit)),
        ms(measured),
        measured <= limit,
    )
}

/// A count at most `limit`.
pub fn at_most_count(name: impl Into<String>, measured: u64, limit: u64) -> Check {
    Check::new(
        name,
        format!("≤ {limit}"),
        measured.to_string(),
        measured <= limit,
    )
}

/// A count at least `limit`.
pub fn at_least_count(name: impl Into<String>, measured: u64, limit: u64) -> Check {
    Check::new(
        name,
        format!("≥ {limit}"),
        measured.to_string(),
        measured >= limit,
    )
}

/// The accounting identities of a front's run (see the
/// [module documentation](self)).
pub fn accounting(front: &FrontRun) -> Check {
    let t = &front.total.tally;
    let summed = front
        .series
        .iter()
        .fold(Tally::default(), |a, b| a.plus(&b.tally));
    let buckets_add_up = summed == *t;
    let kinds = front
        .by_kind
        .iter()
        .fold(Tally::default(), |a, (_, g)| a.plus(&g.tally));
    let passed = t.balanced() && buckets_add_up && kinds == *t;
    let measured = format!(
        "{} = {} + {} + {} + {}{}",
        t.sent,
        t.succeeded,
        t.failed(),
        t.rejected,
        t.shed(),
        if buckets_add_up && kinds == *t {
            ""
        } else {
            " (buckets or phases do not add up)"
        }
    );
    Check::new(
        format!("{}: accounting", front.name),
        "sent = ok + failed + rejected + shed".to_string(),
        measured,
        passed,
    )
}

/// A service-level objective for a bucket or a whole run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Slo {
    /// Largest share of requests that may end other than in success.
    pub max_unsuccessful: f64,
    /// Largest p99 of the answers.
    pub max_p99: Duration,
}

impl Slo {
    /// Whether a bucket meets it (an empty bucket does not).
    pub fn met_by(&self, b: &Bucket) -> bool {
        let ended = b.tally.ended();
        ended > 0
            && (ended - b.tally.succeeded) as f64 <= self.max_unsuccessful * ended as f64
            && b.latency.p99 <= self.max_p99
    }

    /// Whether a whole group meets it.
    pub fn met_by_group(&self, t: &Tally, latency: &Percentiles) -> bool {
        t.sent > 0 && 1.0 - t.success_rate() <= self.max_unsuccessful && latency.p99 <= self.max_p99
    }
}

/// Seconds from `from_secs` until the SLO held for `window` buckets in a
/// row (see the [module documentation](self)); `None` if it never did.
pub fn recovery(series: &[Bucket], from_secs: f64, slo: &Slo, window: usize) -> Option<f64> {
    let window = window.max(1);
    let after: Vec<(f64, bool)> = {
        let mut prev_end = from_secs;
        series
            .iter()
            .filter(|b| b.end_secs > from_secs)
            .map(|b| {
                let start = prev_end;
                prev_end = b.end_secs;
                (start, slo.met_by(b))
            })
            .collect()
    };
    after
        .windows(window)
        .find(|w| w.iter().all(|&(_, ok)| ok))
        .map(|w| (w[0].0 - from_secs).max(0.0))
}

/// Growth of resident memory after warm-up: `(baseline, peak after warm-up)`
/// in bytes, the baseline being the last sample at or before `warmup_secs`
/// since the first sample. `None` without samples on both sides.
pub fn rss_growth(samples: &[ProcSample], warmup_secs: u64) -> Option<(u64, u64)> {
    growth(samples, warmup_secs, |s| s.rss_bytes)
}

/// Growth of open descriptors after warm-up, as [`rss_growth`].
pub fn fd_growth(samples: &[ProcSample], warmup_secs: u64) -> Option<(u64, u64)> {
    growth(samples, warmup_secs, |s| s.fds)
}

fn growth(
    samples: &[ProcSample],
    warmup_secs: u64,
    f: impl Fn(&ProcSample) -> u64,
) -> Option<(u64, u64)> {
    let first = samples.first()?.at_secs;
    let warm = first + warmup_secs;
    let baseline = samples.iter().rev().find(|s| s.at_secs <= warm).map(&f)?;
    let peak = samples.iter().filter(|s| s.at_secs > warm).map(&f).max()?;
    Some((baseline, peak))
}

/// One step of a capacity ramp.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    /// Requests per second offered.
    pub rate: u32,
    /// Counts.
    pub tally: Tally,
    /// Latency of every answer.
    pub latency: Percentiles,
    /// Good answers (successes within the latency objective) per second.
    pub goodput: f64,
}

/// Where a ramp's SLO broke.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Knee {
    /// The highest rate of the ramp's unbroken prefix that met the SLO.
    pub last_good: Option<Step>,
    /// The first rate that did not.
    pub first_bad: Option<Step>,
}

/// The knee of a ramp: steps in increasing rate order, the SLO checked on
/// each.
pub fn knee(steps: &[Step], slo: &Slo) -> Knee {
    let broke = steps
        .iter()
        .position(|s| !slo.met_by_group(&s.tally, &s.latency));
    let good = &steps[..broke.unwrap_or(steps.len())];
    Knee {
        last_good: good.last().copied(),
        first_bad: broke.map(|i| steps[i]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::record::Outcome;

    fn bucket(end: f64, ok: u64, bad: u64, p99_ms: u64) -> Bucket {
        let mut tally = Tally::default();
        for _ in 0..ok {
            tally.record(Outcome::Succeeded);
        }
        for _ in 0..bad {
            tally.record(Outcome::Rejected);
        }
        Bucket {
            end_secs: end,
            tally,
            latency: Percentiles {
                count: ok + bad,
                p99: Duration::from_millis(p99_ms),
                ..Percentiles::default()
            },
            in_flight: 0,
            peak_in_flight: 0,
            breaker: None,
            limit: None,
        }
    }

    const SLO: Slo = Slo {
        max_unsuccessful: 0.05,
        max_p99: Duration::from_millis(500),
    };

    #[test]
    fn a_bucket_meets_the_slo_on_both_counts() {
        assert!(SLO.met_by(&bucket(1.0, 95, 5, 500)));
        assert!(!SLO.met_by(&bucket(1.0, 94, 6, 10)));
        assert!(!SLO.met_by(&bucket(1.0, 100, 0, 501)));
        assert!(
            !SLO.met_by(&bucket(1.0, 0, 0, 0)),
            "an empty bucket proves nothing"
        );
    }

    #[test]
    fn recovery_is_the_start_of_the_first_good_window() {
        let series = [
            bucket(1.0, 10, 10, 10),
            bucket(2.0, 10, 10, 10),
            bucket(3.0, 100, 0, 10), // good, but alone
            bucket(4.0, 10, 90, 10),
            bucket(5.0, 100, 0, 10),
            bucket(6.0, 100, 0, 10),
            bucket(7.0, 100, 0, 10),
        ];
        assert_eq!(recovery(&series, 1.5, &SLO, 2), Some(4.0 - 1.5));
        assert_eq!(recovery(&series, 1.5, &SLO, 1), Some(0.5));
        assert_eq!(recovery(&series, 0.0, &SLO, 4), None);
        assert_eq!(recovery(&series, 4.0, &SLO, 3), Some(0.0));
        assert_eq!(recovery(&[], 0.0, &SLO, 1), None);
    }

    #[test]
    fn growth_compares_after_warm_up_with_its_end() {
        let s = |at, mb: u64, fds| ProcSample {
            at_secs: at,
            rss_bytes: mb << 20,
            fds,
        };
        let samples = [s(10, 50, 20), s(20, 80, 40), s(30, 81, 30), s(40, 90, 35)];
        assert_eq!(rss_growth(&samples, 10), Some((80 << 20, 90 << 20)));
        assert_eq!(fd_growth(&samples, 10), Some((40, 35)));
        assert_eq!(rss_growth(&samples, 30), None, "nothing after warm-up");
        assert_eq!(rss_growth(&[], 0), None);
    }

    #[test]
    fn the_knee_is_where_the_slo_first_breaks() {
        let step = |rate, ok: u64, bad: u64, p99| {
            let b = bucket(0.0, ok, bad, p99);
            Step {
                rate,
                tally: Tally {
                    sent: ok + bad,
                    offered: ok + bad,
                    ..b.tally
                },
                latency: b.latency,
                goodput: ok as f64,
            }
        };
        let steps = [
            step(100, 100, 0, 10),
            step(200, 200, 0, 20),
            step(300, 250, 50, 30),
            step(400, 400, 0, 30),
        ];
        let k = knee(&steps, &SLO);
        assert_eq!(k.last_good.map(|s| s.rate), Some(200));
        assert_eq!(k.first_bad.map(|s| s.rate), Some(300));
        let k = knee(&steps[..2], &SLO);
        assert_eq!(
            (k.last_good.map(|s| s.rate), k.first_bad),
            (Some(200), None)
        );
        let k = knee(&steps[2..], &SLO);
        assert_eq!(k.last_good, None);
    }

    #[test]
    fn checks_say_what_they_measured() {
        let c = at_most_share("error rate", 0.012, 0.01);
        assert!(!c.passed);
        assert_eq!(
            (c.limit.as_str(), c.measured.as_str()),
            ("≤ 1.0 %", "1.2 %")
        );
        assert!(at_most_time("p99", Duration::from_millis(20), Duration::from_millis(500)).passed);
        assert!(at_least_count("shed", 0, 1).passed.eq(&false));
        assert!(all_passed(&[at_most_count("x", 3, 3)]));
        assert!(!all_passed(&[
            at_most_count("x", 3, 3),
            at_least_count("y", 5, 9)
        ]));
    }
}
