//! The script of a run: which fault the upstream plays at each moment.
//!
//! A [`Timeline`] is a list of contiguous [`Phase`]s covering the run, each
//! with a [`PhaseKind`] (its label in tables and plots) and a [`Fault`]
//! (how the upstream answers meanwhile). The upstream asks the timeline, for
//! every call, which phase the call arrived in and what to do with it
//! ([`Fault::decide`]), from a draw that depends only on the seed and the
//! call's number: the same seed plays the same script.
//!
//! The timelines of the scenarios are built here from shares of the run's
//! length, so a shorter or longer run plays the same script, scaled.

use std::time::Duration;

/// What a phase is, for labels, colours and the per-phase tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PhaseKind {
    /// The upstream answers quickly and correctly.
    Healthy,
    /// The upstream answers correctly but slowly.
    LatencySpike,
    /// Many calls are answered `500`.
    ErrorBurst,
    /// Many calls lose their connection before an answer.
    Drops,
    /// Every call stalls, then is answered `503`.
    Outage,
    /// The upstream's listener is closed (a restart): connections are refused.
    Down,
    /// Latency, errors and dropped connections at once.
    Mixed,
    /// The upstream is healthy; the load jumps (the `spike` scenario).
    LoadSpike,
    /// The upstream answers correctly and quickly, with fewer worker slots
    /// than it normally has (half of them in the `half-capacity` scenario).
    CapacityDrop,
    /// The upstream is healthy again after faults (or the load after a
    /// spike).
    Recovery,
}

impl PhaseKind {
    /// Every kind, in the order of [`index`](Self::index).
    pub const ALL: [PhaseKind; 10] = [
        PhaseKind::Healthy,
        PhaseKind::LatencySpike,
        PhaseKind::ErrorBurst,
        PhaseKind::Drops,
        PhaseKind::Outage,
        PhaseKind::Down,
        PhaseKind::Mixed,
        PhaseKind::LoadSpike,
        PhaseKind::CapacityDrop,
        PhaseKind::Recovery,
    ];

    /// A dense index, `0..ALL.len()`: the position in [`ALL`](Self::ALL).
    pub fn index(self) -> usize {
        self as usize
    }

    /// A short name for tables.
    pub fn label(self) -> &'static str {
        match self {
            PhaseKind::Healthy => "healthy",
            PhaseKind::LatencySpike => "latency spike",
            PhaseKind::ErrorBurst => "error burst",
            PhaseKind::Drops => "dropped connections",
            PhaseKind::Outage => "outage",
            PhaseKind::Down => "upstream down",
            PhaseKind::Mixed => "mixed faults",
            PhaseKind::Recovery => "recovery",
            PhaseKind::LoadSpike => "load spike",
            PhaseKind::CapacityDrop => "capacity drop",
        }
    }

    /// Whether the upstream misbehaves in this phase.
    pub fn is_fault(self) -> bool {
        !matches!(
            self,
            PhaseKind::Healthy | PhaseKind::Recovery | PhaseKind::LoadSpike
        )
    }
}

/// How the upstream answers during a phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Service time of a call, drawn uniformly from `min..=max` (on top of
    /// any wait for one of the upstream's worker slots).
    pub latency: (Duration, Duration),
    /// Calls answered `500`, per thousand.
    pub errors_per_mille: u16,
    /// Calls whose connection is closed without an answer, per thousand.
    pub drops_per_mille: u16,
    /// Every call is held for its service time, then answered `503`.
    pub outage: bool,
    /// The upstream's listener is closed: new connections are refused and
    /// open ones are cut.
    pub down: bool,
    /// The share of the upstream's worker slots that serve, per thousand
    /// (at least one slot always does): a capacity drop, or a recovery
    /// that returns capacity in steps.
    pub slots_per_mille: u16,
}

impl Fault {
    /// Correct answers in `base..=2 * base`.
    pub fn healthy(base: Duration) -> Fault {
        Fault {
            latency: (base, base * 2),
            errors_per_mille: 0,
            drops_per_mille: 0,
            outage: false,
            down: false,
            slots_per_mille: 1000,
        }
    }

    /// This fault with only `per_mille` of the worker slots serving.
    pub fn with_slots(self, per_mille: u16) -> Fault {
        Fault {
            slots_per_mille: per_mille.min(1000),
            ..self
        }
    }

    /// The worker slots that serve out of `capacity`: at least one.
    pub fn slots(&self, capacity: u32) -> u32 {
        let share = u64::from(capacity) * u64::from(self.slots_per_mille.min(1000)) / 1000;
        u32::try_from(share)
            .unwrap_or(capacity)
            .clamp(1, capacity.max(1))
    }

    /// Correct answers in `min..=max`.
    pub fn slow(min: Duration, max: Duration) -> Fault {
        Fault {
            latency: (min, max.max(min)),
            ..Fault::healthy(min)
        }
    }

    /// `per_mille` of the calls answered `500`, the rest as [`healthy`](Self::healthy).
    pub fn errors(base: Duration, per_mille: u16) -> Fault {
        Fault {
            errors_per_mille: per_mille.min(1000),
            ..Fault::healthy(base)
        }
    }

    /// `per_mille` of the calls lose their connection, the rest as
    /// [`healthy`](Self::healthy).
    pub fn drops(base: Duration, per_mille: u16) -> Fault {
        Fault {
            drops_per_mille: per_mille.min(1000),
            ..Fault::healthy(base)
        }
    }

    /// Every call is held `stall`, then answered `503`.
    pub fn outage(stall: Duration) -> Fault {
        Fault {
            outage: true,
            ..Fault::slow(stall, stall)
        }
    }

    /// The listener is closed.
    pub fn down(base: Duration) -> Fault {
        Fault {
            down: true,
            ..Fault::healthy(base)
        }
    }

    /// What to do with the call whose draw is `draw` (any 64 random bits):
    /// the low 32 bits pick the service time, the high 32 bits whether the
    /// call fails.
    pub fn decide(&self, draw: u64) -> Decision {
        let (lo, hi) = self.latency;
        let span = hi.saturating_sub(lo).as_nanos();
        let extra = (u128::from(draw & 0xFFFF_FFFF) * span) >> 32;
        let delay = lo + Duration::from_nanos(u64::try_from(extra).unwrap_or(u64::MAX));
        let roll = (draw >> 32) % 1000;
        let drops = u64::from(self.drops_per_mille);
        let errors = u64::from(self.errors_per_mille);
        let action = if self.outage {
            Action::Answer(503)
        } else if roll < drops {
            Action::Drop
        } else if roll < drops + errors {
            Action::Answer(500)
        } else {
            Action::Answer(200)
        };
        Decision { delay, action }
    }
}

/// What the upstream does with one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// How long the call holds a worker slot before the action.
    pub delay: Duration,
    /// The answer.
    pub action: Action,
}

/// How a call ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// An answer with this status code.
    Answer(u16),
    /// The connection is closed without an answer.
    Drop,
}

/// One stretch of the script: `from..to` since the start of the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phase {
    /// Start, since the start of the run.
    pub from: Duration,
    /// End (exclusive).
    pub to: Duration,
    /// Its label.
    pub kind: PhaseKind,
    /// How the upstream answers meanwhile.
    pub fault: Fault,
}

/// The whole script. See the [module documentation](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeline {
    phases: Vec<Phase>,
}

/// A piece of a timeline given as the share of the run (per thousand) at
/// which it ends.
type Share = (u32, PhaseKind, Fault);

impl Timeline {
    /// Phases ending at the given shares (per thousand) of `length`; the
    /// last share is stretched to the end.
    fn from_shares(length: Duration, shares: &[Share]) -> Timeline {
        let at = |per_mille: u32| length * per_mille / 1000;
        let mut from = Duration::ZERO;
        let mut phases = Vec::with_capacity(shares.len());
        for (i, &(end, kind, fault)) in shares.iter().enumerate() {
            let to = if i + 1 == shares.len() {
                length
            } else {
                at(end)
            };
            if to > from {
                phases.push(Phase {
                    from,
                    to,
                    kind,
                    fault,
                });
                from = to;
            }
        }
        Timeline::from_phases(phases, length)
    }

    /// A timeline from contiguous phases; an empty list becomes one healthy
    /// phase (10 ms base latency) of `length`.
    fn from_phases(mut phases: Vec<Phase>, length: Duration) -> Timeline {
        if phases.is_empty() {
            phases.push(Phase {
                from: Duration::ZERO,
                to: length,
                kind: PhaseKind::Healthy,
                fault: Fault::healthy(Duration::from_millis(10)),
            });
        }
        debug_assert!(phases.windows(2).all(|w| w[0].to == w[1].from));
        Timeline { phases }
    }

    /// The upstream healthy throughout, with `base..2*base` latency.
    pub fn healthy(length: Duration, base: Duration) -> Timeline {
        Timeline::from_shares(length, &[(1000, PhaseKind::Healthy, Fault::healthy(base))])
    }

    /// Healthy with `errors_per_mille` stray `500`s throughout (`load`).
    pub fn steady(length: Duration, base: Duration, errors_per_mille: u16) -> Timeline {
        Timeline::from_shares(
            length,
            &[(
                1000,
                PhaseKind::Healthy,
                Fault::errors(base, errors_per_mille),
            )],
        )
    }

    /// The demo's script: healthy, a latency spike, healthy, an error burst,
    /// a full outage (every call stalls a second, then `503`), recovery.
    pub fn standard(length: Duration, base: Duration) -> Timeline {
        let h = Fault::healthy(base);
        Timeline::from_shares(
            length,
            &[
                (150, PhaseKind::Healthy, h),
                (
                    300,
                    PhaseKind::LatencySpike,
                    Fault::slow(base * 20, base * 60),
                ),
                (400, PhaseKind::Healthy, h),
                (520, PhaseKind::ErrorBurst, Fault::errors(base, 600)),
                (
                    720,
                    PhaseKind::Outage,
                    Fault::outage(Duration::from_secs(1)),
                ),
                (1000, PhaseKind::Recovery, h),
            ],
        )
    }

    /// The chaos script: latency, errors, dropped connections, an upstream
    /// restart, everything at once, a second restart; the faults stop at
    /// 55 % of the run and the rest is recovery.
    pub fn chaos(length: Duration, base: Duration) -> Timeline {
        let h = Fault::healthy(base);
        let mixed = Fault {
            errors_per_mille: 200,
            drops_per_mille: 100,
            ..Fault::slow(base * 5, base * 30)
        };
        Timeline::from_shares(
            length,
            &[
                (80, PhaseKind::Healthy, h),
                (
                    170,
                    PhaseKind::LatencySpike,
                    Fault::slow(base * 10, base * 40),
                ),
                (250, PhaseKind::ErrorBurst, Fault::errors(base, 500)),
                (330, PhaseKind::Drops, Fault::drops(base, 300)),
                (390, PhaseKind::Down, Fault::down(base)),
                (480, PhaseKind::Mixed, mixed),
                (550, PhaseKind::Down, Fault::down(base)),
                (1000, PhaseKind::Recovery, h),
            ],
        )
    }

    /// Healthy, with the load jumping between 30 % and 50 % of the run.
    pub fn load_spike(length: Duration, base: Duration) -> Timeline {
        let h = Fault::healthy(base);
        Timeline::from_shares(
            length,
            &[
                (SPIKE_SHARES.0, PhaseKind::Healthy, h),
                (SPIKE_SHARES.1, PhaseKind::LoadSpike, h),
                (1000, PhaseKind::Recovery, h),
            ],
        )
    }

    /// The soak script: healthy, with a short error burst (80 % of the
    /// calls fail, for a twelfth of each cycle) at the end of every `cycle`,
    /// so the breaker opens and closes over and over.
    pub fn soak(length: Duration, base: Duration, cycle: Duration) -> Timeline {
        let cycle = cycle.max(Duration::from_secs(1));
        let burst = cycle / 12;
        let mut phases = Vec::new();
        let mut from = Duration::ZERO;
        while from < length {
            let burst_at = (from + cycle - burst).min(length);
            let end = (from + cycle).min(length);
            phases.push(Phase {
                from,
                to: burst_at,
                kind: PhaseKind::Healthy,
                fault: Fault::healthy(base),
            });
            if end > burst_at {
                phases.push(Phase {
                    from: burst_at,
                    to: end,
                    kind: PhaseKind::ErrorBurst,
                    fault: Fault::errors(base, 800),
                });
            }
            from = end;
        }
        Timeline::from_phases(phases, length)
    }

    /// A flapping upstream: healthy for the first fifth of the run, then
    /// down (its listener closed) for `down` and up for `up`, over and over,
    /// until four fifths of the run; the rest is recovery. The up stretches
    /// between two downs are labelled recovery too: the upstream serves
    /// fully in them, and a policy should let it.
    pub fn flapping(length: Duration, base: Duration, down: Duration, up: Duration) -> Timeline {
        let h = Fault::healthy(base);
        let (down, up) = (
            down.max(Duration::from_millis(100)),
            up.max(Duration::from_millis(100)),
        );
        let flaps_from = length / 5;
        let flaps_to = length * 4 / 5;
        let mut phases = vec![Phase {
            from: Duration::ZERO,
            to: flaps_from,
            kind: PhaseKind::Healthy,
            fault: h,
        }];
        let mut from = flaps_from;
        while from < flaps_to {
            let down_to = (from + down).min(flaps_to);
            phases.push(Phase {
                from,
                to: down_to,
                kind: PhaseKind::Down,
                fault: Fault::down(base),
            });
            let up_to = (down_to + up).min(flaps_to);
            if up_to > down_to {
                phases.push(Phase {
                    from: down_to,
                    to: up_to,
                    kind: PhaseKind::Recovery,
                    fault: h,
                });
            }
            from = up_to;
        }
        phases.push(Phase {
            from,
            to: length,
            kind: PhaseKind::Recovery,
            fault: h,
        });
        phases.retain(|p| p.to > p.from);
        // Merge the last up stretch with the final recovery.
        let mut merged: Vec<Phase> = Vec::with_capacity(phases.len());
        for p in phases {
            match merged.last_mut() {
                Some(last) if last.kind == p.kind && last.fault == p.fault => last.to = p.to,
                _ => merged.push(p),
            }
        }
        Timeline::from_phases(merged, length)
    }

    /// A slow recovery: healthy, a full outage (every call stalls a second,
    /// then `503`), then the capacity returns in steps: a quarter, half and
    /// three quarters of the worker slots, each for a tenth of the run,
    /// then all of them.
    pub fn slow_recovery(length: Duration, base: Duration) -> Timeline {
        let h = Fault::healthy(base);
        Timeline::from_shares(
            length,
            &[
                (250, PhaseKind::Healthy, h),
                (
                    400,
                    PhaseKind::Outage,
                    Fault::outage(Duration::from_secs(1)),
                ),
                (500, PhaseKind::Recovery, h.with_slots(250)),
                (600, PhaseKind::Recovery, h.with_slots(500)),
                (700, PhaseKind::Recovery, h.with_slots(750)),
                (1000, PhaseKind::Recovery, h),
            ],
        )
    }

    /// A partial failure: 30 % of the calls answered `500` at full speed
    /// from a fifth to four fifths of the run, healthy around it.
    pub fn partial_failure(length: Duration, base: Duration) -> Timeline {
        let h = Fault::healthy(base);
        Timeline::from_shares(
            length,
            &[
                (200, PhaseKind::Healthy, h),
                (800, PhaseKind::ErrorBurst, Fault::errors(base, 300)),
                (1000, PhaseKind::Recovery, h),
            ],
        )
    }

    /// Half the worker slots from 30 % to 70 % of the run, healthy around
    /// it.
    pub fn half_capacity(length: Duration, base: Duration) -> Timeline {
        let h = Fault::healthy(base);
        Timeline::from_shares(
            length,
            &[
                (300, PhaseKind::Healthy, h),
                (700, PhaseKind::CapacityDrop, h.with_slots(500)),
                (1000, PhaseKind::Recovery, h),
            ],
        )
    }

    /// Whether the phase at `t` had the upstream down or in an outage: no
    /// call then can be answered well.
    pub fn down_at(&self, t: Duration) -> bool {
        let f = &self.phase_at(t).fault;
        f.down || f.outage
    }

    /// The phases, in order.
    pub fn phases(&self) -> &[Phase] {
        &self.phases
    }

    /// The end of the last phase.
    pub fn length(&self) -> Duration {
        self.phases.last().map_or(Duration::ZERO, |p| p.to)
    }

    /// The phase at `t` since the start; past the end, the last phase.
    pub fn phase_at(&self, t: Duration) -> &Phase {
        let i = self.phases.partition_point(|p| p.to <= t);
        &self.phases[i.min(self.phases.len() - 1)]
    }

    /// The end of the last phase whose kind is a fault; `None` if there is
    /// none.
    pub fn faults_end(&self) -> Option<Duration> {
        self.phases
            .iter()
            .rev()
            .find(|p| p.kind.is_fault())
            .map(|p| p.to)
    }

    /// Whether any phase closes the upstream's listener.
    pub fn has_down_phases(&self) -> bool {
        self.phases.iter().any(|p| p.fault.down)
    }
}

/// Where the `spike` scenario's load jump starts and ends, per thousand of
/// the run.
pub const SPIKE_SHARES: (u32, u32) = (300, 500);

/// 64 well-mixed bits from a seed and a counter (SplitMix64's finaliser).
pub fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn covers(t: &Timeline, length: Duration) {
        let p = t.phases();
        assert_eq!(p[0].from, Duration::ZERO);
        assert_eq!(t.length(), length);
        for w in p.windows(2) {
            assert_eq!(w[0].to, w[1].from, "{w:?}");
            assert!(w[0].from < w[0].to);
        }
    }

    #[test]
    fn every_script_covers_the_run_without_gaps() {
        for secs in [1, 7, 30, 60, 3600] {
            let len = Duration::from_secs(secs);
            covers(&Timeline::healthy(len, 10 * MS), len);
            covers(&Timeline::steady(len, 10 * MS, 5), len);
            covers(&Timeline::standard(len, 10 * MS), len);
            covers(&Timeline::chaos(len, 10 * MS), len);
            covers(&Timeline::load_spike(len, 10 * MS), len);
            covers(&Timeline::soak(len, 10 * MS, Duration::from_secs(60)), len);
            let (two, three) = (Duration::from_secs(2), Duration::from_secs(3));
            covers(&Timeline::flapping(len, 10 * MS, two, three), len);
            covers(&Timeline::slow_recovery(len, 10 * MS), len);
            covers(&Timeline::partial_failure(len, 10 * MS), len);
            covers(&Timeline::half_capacity(len, 10 * MS), len);
        }
    }

    #[test]
    fn kinds_index_their_place_in_all() {
        for (i, k) in PhaseKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{k:?}");
        }
        let faults = PhaseKind::ALL.iter().filter(|k| k.is_fault()).count();
        assert_eq!(faults, 7);
    }

    #[test]
    fn the_demo_script_plays_in_order() {
        let t = Timeline::standard(Duration::from_secs(100), 10 * MS);
        let kinds: Vec<_> = t.phases().iter().map(|p| p.kind).collect();
        assert_eq!(
            kinds,
            [
                PhaseKind::Healthy,
                PhaseKind::LatencySpike,
                PhaseKind::Healthy,
                PhaseKind::ErrorBurst,
                PhaseKind::Outage,
                PhaseKind::Recovery
            ]
        );
        assert_eq!(t.phase_at(Duration::ZERO).kind, PhaseKind::Healthy);
        assert_eq!(
            t.phase_at(Duration::from_secs(15)).kind,
            PhaseKind::LatencySpike
        );
        assert_eq!(
            t.phase_at(Duration::from_millis(14_999)).kind,
            PhaseKind::Healthy
        );
        assert_eq!(t.phase_at(Duration::from_secs(60)).kind, PhaseKind::Outage);
        assert_eq!(
            t.phase_at(Duration::from_secs(500)).kind,
            PhaseKind::Recovery
        );
        assert_eq!(t.faults_end(), Some(Duration::from_secs(72)));
        assert!(!t.has_down_phases());
    }

    #[test]
    fn chaos_restarts_the_upstream_and_stops_at_55_percent() {
        let t = Timeline::chaos(Duration::from_secs(30), 10 * MS);
        assert!(t.has_down_phases());
        assert_eq!(t.faults_end(), Some(Duration::from_millis(16_500)));
        let downs = t.phases().iter().filter(|p| p.fault.down).count();
        assert_eq!(downs, 2);
        assert_eq!(
            Timeline::healthy(Duration::from_secs(5), MS).faults_end(),
            None
        );
    }

    #[test]
    fn flapping_alternates_down_and_up_between_a_fifth_and_four_fifths() {
        let s = Duration::from_secs;
        let t = Timeline::flapping(s(30), 10 * MS, s(2), s(3));
        let spans: Vec<_> = t
            .phases()
            .iter()
            .map(|p| (p.kind, p.from.as_secs(), p.to.as_secs()))
            .collect();
        let (d, r) = (PhaseKind::Down, PhaseKind::Recovery);
        assert_eq!(
            spans,
            [
                (PhaseKind::Healthy, 0, 6),
                (d, 6, 8),
                (r, 8, 11),
                (d, 11, 13),
                (r, 13, 16),
                (d, 16, 18),
                (r, 18, 21),
                (d, 21, 23),
                (r, 23, 30),
            ]
        );
        assert!(t.down_at(s(7)) && !t.down_at(s(9)));
        assert_eq!(t.faults_end(), Some(s(23)));
    }

    #[test]
    fn capacity_changes_by_phase() {
        let s = Duration::from_secs;
        let t = Timeline::slow_recovery(s(100), 10 * MS);
        let slots: Vec<_> = t.phases().iter().map(|p| p.fault.slots(8)).collect();
        assert_eq!(slots, [8, 8, 2, 4, 6, 8]);
        assert!(t.down_at(s(30)));
        let h = Timeline::half_capacity(s(10), 10 * MS);
        assert_eq!(h.phase_at(s(5)).kind, PhaseKind::CapacityDrop);
        assert_eq!(h.phase_at(s(5)).fault.slots(8), 4);
        // At least one slot, never more than there are.
        assert_eq!(Fault::healthy(MS).with_slots(1).slots(8), 1);
        assert_eq!(Fault::healthy(MS).with_slots(2000).slots(8), 8);
        assert_eq!(Fault::healthy(MS).slots(0), 1);
        let p = Timeline::partial_failure(s(10), 10 * MS);
        assert_eq!(p.phase_at(s(5)).fault.errors_per_mille, 300);
    }

    #[test]
    fn soak_cycles_end_in_a_burst() {
        let t = Timeline::soak(Duration::from_secs(150), 10 * MS, Duration::from_secs(60));
        let bursts: Vec<_> = t
            .phases()
            .iter()
            .filter(|p| p.kind == PhaseKind::ErrorBurst)
            .map(|p| (p.from.as_secs(), p.to.as_secs()))
            .collect();
        assert_eq!(bursts, [(55, 60), (115, 120)]);
        assert_eq!(
            t.phase_at(Duration::from_secs(149)).kind,
            PhaseKind::Healthy
        );
    }

    #[test]
    fn decisions_follow_the_fault() {
        let f = Fault::healthy(10 * MS);
        assert_eq!(f.decide(0).delay, 10 * MS);
        assert!(f.decide(u64::MAX).delay <= 20 * MS);
        assert!(f.decide(u64::MAX).delay > 19 * MS);
        assert_eq!(f.decide(12345).action, Action::Answer(200));
        assert_eq!(
            Fault::outage(Duration::from_secs(1)).decide(7),
            Decision {
                delay: Duration::from_secs(1),
                action: Action::Answer(503)
            }
        );
        // The failure roll is the high half of the draw, modulo 1000.
        let at = |roll: u64| roll << 32;
        let e = Fault::errors(MS, 250);
        assert_eq!(e.decide(at(249)).action, Action::Answer(500));
        assert_eq!(e.decide(at(250)).action, Action::Answer(200));
        let d = Fault {
            errors_per_mille: 100,
            ..Fault::drops(MS, 100)
        };
        assert_eq!(d.decide(at(0)).action, Action::Drop);
        assert_eq!(d.decide(at(99)).action, Action::Drop);
        assert_eq!(d.decide(at(100)).action, Action::Answer(500));
        assert_eq!(d.decide(at(199)).action, Action::Answer(500));
        assert_eq!(d.decide(at(200)).action, Action::Answer(200));
    }

    #[test]
    fn rates_of_failure_match_the_script() {
        let f = Fault {
            errors_per_mille: 200,
            ..Fault::drops(MS, 100)
        };
        let (mut drops, mut errors) = (0, 0);
        for n in 0..100_000 {
            match f.decide(mix(42, n)).action {
                Action::Drop => drops += 1,
                Action::Answer(500) => errors += 1,
                _ => {}
            }
        }
        assert!((9_000..11_000).contains(&drops), "{drops}");
        assert!((18_500..21_500).contains(&errors), "{errors}");
    }
}
