//! Goodput, and the limit beside it.
//!
//! A resilience policy is worth what it keeps of the **good answers**: the
//! requests that succeeded within the service's latency objective (by
//! default the protected front's timeout; `--objective-ms`). An answer that
//! succeeds after the caller stopped caring counts as a success in the
//! other tables, and not here.
//!
//! Beside the goodput stands the **limit**: the good answers the upstream
//! could have given, at most the requests offered. While a phase lasts, the
//! upstream's `capacity` slots (or the share of them the phase leaves
//! serving) serve calls in a mean service time `s`, so at most
//! `capacity / s` calls per second; of those only the share answered
//! correctly (no `500`, no dropped connection) and fast enough (service time
//! within the objective, from the phase's uniform service-time range) can be
//! good. While the upstream is down or in an outage the limit is zero. The
//! limit of a stretch of time is the integral of `min(offered rate, that
//! rate)` over it. It is an upper bound: it grants the upstream perfect
//! scheduling and the front no overhead at all.

use std::time::Duration;

use super::load::RatePlan;
use super::results::Drive;
use super::timeline::{Fault, PhaseKind, Timeline};

/// Good answers per second the upstream can give during `fault`, with
/// `capacity` worker slots, for an `objective` (infinite when its service
/// time is zero).
pub fn good_rate(fault: &Fault, capacity: u32, objective: Duration) -> f64 {
    if fault.down || fault.outage {
        return 0.0;
    }
    let (lo, hi) = (fault.latency.0.as_secs_f64(), fault.latency.1.as_secs_f64());
    let objective = objective.as_secs_f64();
    let fast = if hi <= objective {
        1.0
    } else if lo > objective {
        0.0
    } else {
        (objective - lo) / (hi - lo)
    };
    let faulty = f64::from(fault.errors_per_mille) + f64::from(fault.drops_per_mille);
    let correct = (1.0 - faulty / 1000.0).clamp(0.0, 1.0);
    let mean = (lo + hi) / 2.0;
    if mean <= 0.0 {
        return if fast * correct > 0.0 {
            f64::INFINITY
        } else {
            0.0
        };
    }
    f64::from(fault.slots(capacity)) / mean * correct * fast
}

/// The limit of a run: its script, its load and its objective.
#[derive(Clone, Copy, Debug)]
pub struct Limits<'a> {
    /// The upstream's script (times since the harness started).
    pub timeline: &'a Timeline,
    /// The load (times since the drive started).
    pub plan: &'a RatePlan,
    /// When the drive started, since the harness started.
    pub started: Duration,
    /// The upstream's worker slots.
    pub capacity: u32,
    /// The latency objective.
    pub objective: Duration,
}

impl Limits<'_> {
    /// Offered requests per second at `t` since the harness started.
    fn offered_at(&self, t: Duration) -> f64 {
        match t.checked_sub(self.started) {
            Some(elapsed) => f64::from(self.plan.rate_at(elapsed)),
            None => 0.0,
        }
    }

    /// Good answers possible between `from` and `to` (seconds since the
    /// harness started).
    pub fn between(&self, from: f64, to: f64) -> f64 {
        if to <= from {
            return 0.0;
        }
        // Every instant where the offered rate or the fault may change.
        let mut cuts = vec![from, to];
        cuts.extend(
            self.timeline
                .phases()
                .iter()
                .flat_map(|p| [p.from.as_secs_f64(), p.to.as_secs_f64()]),
        );
        let mut at = self.started;
        for s in self.plan.segments() {
            cuts.push(at.as_secs_f64());
            at += s.length;
            cuts.push(at.as_secs_f64());
        }
        cuts.retain(|c| (from..=to).contains(c));
        cuts.sort_by(f64::total_cmp);
        cuts.dedup();
        cuts.windows(2)
            .map(|w| {
                let mid = Duration::from_secs_f64((w[0] + w[1]) / 2.0);
                let fault = &self.timeline.phase_at(mid).fault;
                let rate =
                    self.offered_at(mid)
                        .min(good_rate(fault, self.capacity, self.objective));
                rate * (w[1] - w[0])
            })
            .sum()
    }

    /// Good answers possible in the phases of `kind`, over the time the load
    /// ran.
    pub fn of_kind(&self, kind: PhaseKind) -> f64 {
        let load_end = (self.started + self.plan.length()).as_secs_f64();
        self.timeline
            .phases()
            .iter()
            .filter(|p| p.kind == kind)
            .map(|p| self.between(p.from.as_secs_f64(), p.to.as_secs_f64().min(load_end)))
            .sum()
    }

    /// Good answers possible over the whole load.
    pub fn total(&self) -> f64 {
        let start = self.started.as_secs_f64();
        self.between(start, start + self.plan.length().as_secs_f64())
    }
}

/// One line of the goodput table: a phase kind (or the whole run), its
/// limit, and each front's good answers in it.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The phase kind's label, or `whole run`.
    pub label: &'static str,
    /// Good answers possible.
    pub limit: f64,
    /// Good answers of each front, in the drive's order.
    pub good: Vec<u64>,
}

/// The goodput of `drive` per phase kind that any front saw, then over the
/// whole run.
pub fn rows(limits: &Limits<'_>, drive: &Drive) -> Vec<Row> {
    let mut rows: Vec<Row> = PhaseKind::ALL
        .iter()
        .filter(|k| {
            drive
                .fronts
                .iter()
                .any(|f| f.by_kind.iter().any(|(fk, _)| fk == *k))
        })
        .map(|&k| Row {
            label: k.label(),
            limit: limits.of_kind(k),
            good: drive
                .fronts
                .iter()
                .map(|f| {
                    f.by_kind
                        .iter()
                        .find(|(fk, _)| *fk == k)
                        .map_or(0, |(_, g)| g.tally.good)
                })
                .collect(),
        })
        .collect();
    rows.push(Row {
        label: "whole run",
        limit: limits.total(),
        good: drive.fronts.iter().map(|f| f.total.tally.good).collect(),
    });
    rows
}

/// `good` as a share of `limit` (1 when the limit is zero: nothing good
/// was possible, and nothing was missed).
pub fn of_limit(good: u64, limit: f64) -> f64 {
    if limit < 0.5 {
        1.0
    } else {
        good as f64 / limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_rate_is_slots_over_service_time_for_correct_fast_answers() {
        let objective = 300 * MS;
        // 8 slots, 10-20 ms: 8 / 15 ms = 533.3/s.
        let healthy = good_rate(&Fault::healthy(10 * MS), 8, objective);
        assert!((healthy - 533.33).abs() < 0.01, "{healthy}");
        // 60 % errors: 40 % of that.
        let errors = good_rate(&Fault::errors(10 * MS, 600), 8, objective);
        assert!((errors - 213.33).abs() < 0.01, "{errors}");
        // 200-600 ms against 300 ms: a quarter is fast enough, of 8 / 0.4 s.
        let slow = good_rate(&Fault::slow(200 * MS, 600 * MS), 8, objective);
        assert!((slow - 5.0).abs() < 1e-9, "{slow}");
        // Slower than the objective throughout, down, or in an outage: none.
        assert_eq!(
            good_rate(&Fault::slow(400 * MS, 600 * MS), 8, objective),
            0.0
        );
        assert_eq!(good_rate(&Fault::down(10 * MS), 8, objective), 0.0);
        assert_eq!(good_rate(&Fault::outage(MS), 8, objective), 0.0);
        // Half the slots, half the rate.
        let half = good_rate(&Fault::healthy(10 * MS).with_slots(500), 8, objective);
        assert!((half - 266.67).abs() < 0.01, "{half}");
    }

    #[test]
    fn the_limit_is_the_offered_load_where_the_upstream_could_serve_it() {
        let length = Duration::from_secs(10);
        let timeline = Timeline::standard(length, 10 * MS);
        let plan = RatePlan::constant(100, length);
        let limits = Limits {
            timeline: &timeline,
            plan: &plan,
            started: Duration::ZERO,
            capacity: 8,
            objective: 300 * MS,
        };
        // Healthy phases (0-1.5 s and 3-4 s): 100/s offered, 533/s possible.
        assert!((limits.of_kind(PhaseKind::Healthy) - 250.0).abs() < 1e-6);
        // Latency spike (1.5-3 s), 200-600 ms: 5/s for 1.5 s.
        assert!((limits.of_kind(PhaseKind::LatencySpike) - 7.5).abs() < 1e-6);
        // Outage (5.2-7.2 s): nothing.
        assert_eq!(limits.of_kind(PhaseKind::Outage), 0.0);
        // The whole run is the sum of its phases.
        let sum: f64 = PhaseKind::ALL.iter().map(|&k| limits.of_kind(k)).sum();
        assert!((limits.total() - sum).abs() < 1e-6);
        // Before the load started nothing was offered.
        let late = Limits {
            started: Duration::from_secs(1),
            ..limits
        };
        assert!((late.between(0.0, 1.0)).abs() < 1e-9);
    }

    #[test]
    fn the_limit_follows_the_slots_a_phase_leaves_serving() {
        let length = Duration::from_secs(10);
        let timeline = Timeline::slow_recovery(length, 10 * MS);
        let plan = RatePlan::constant(300, length);
        let limits = Limits {
            timeline: &timeline,
            plan: &plan,
            started: Duration::ZERO,
            capacity: 8,
            objective: 300 * MS,
        };
        // Recovery: 1 s each at 2, 4 and 6 slots (133, 267 and 400/s, at
        // most the 300/s offered), then 3 s at 8 slots.
        let expected = 133.33 + 266.67 + 300.0 + 900.0;
        let recovery = limits.of_kind(PhaseKind::Recovery);
        assert!((recovery - expected).abs() < 0.1, "{recovery}");
        assert_eq!(limits.of_kind(PhaseKind::Outage), 0.0);
        // Half the slots: 267/s of the 300/s offered, for 4 s.
        let half = Timeline::half_capacity(length, 10 * MS);
        let drop = Limits {
            timeline: &half,
            ..limits
        }
        .of_kind(PhaseKind::CapacityDrop);
        assert!((drop - 4.0 * 266.67).abs() < 0.1, "{drop}");
    }

    #[test]
    fn a_zero_limit_is_met_by_nothing() {
        assert_eq!(of_limit(0, 0.0), 1.0);
        assert!((of_limit(45, 50.0) - 0.9).abs() < 1e-12);
    }
}
