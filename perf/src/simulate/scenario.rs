//! The scenario: a client sending a steady stream of requests, a dependency
//! that goes through phases of good and bad health, and the breaker settings
//! the demo protects the client with.
//!
//! The dependency's answer to request `i` depends only on the seed, on `i` and
//! on the phase the request arrives in. Both runs of the demo (with and
//! without the breaker) therefore face exactly the same dependency, and a
//! request the breaker rejects can be compared with what it would have met.

use std::time::Duration;

use tenlives_engine::ConfigError;
use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker};
use tenlives_engine::time::Timestamp;

/// What kind of trouble (or none) the dependency is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhaseKind {
    /// Working normally.
    Healthy,
    /// Answering, but slowly.
    LatencySpike,
    /// Answering quickly, but often with an error.
    ErrorBurst,
    /// Not answering at all: every call times out.
    Outage,
    /// Working normally again after the outage.
    Recovery,
}

impl PhaseKind {
    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            PhaseKind::Healthy => "healthy",
            PhaseKind::LatencySpike => "latency spike",
            PhaseKind::ErrorBurst => "error burst",
            PhaseKind::Outage => "outage",
            PhaseKind::Recovery => "recovery",
        }
    }

    /// One character for the timeline bar.
    pub fn symbol(self) -> char {
        match self {
            PhaseKind::Healthy | PhaseKind::Recovery => '.',
            PhaseKind::LatencySpike => 's',
            PhaseKind::ErrorBurst => 'e',
            PhaseKind::Outage => 'X',
        }
    }
}

/// How the dependency answers during a phase.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Behaviour {
    /// Answers after `base` plus an exponentially distributed extra delay of
    /// mean `extra_mean`; each answer is an error with probability
    /// `error_rate`. An answer later than the client's timeout is a timeout.
    Serving {
        /// Probability (0 to 1) that an answer is an error.
        error_rate: f64,
        /// The smallest latency.
        base: Duration,
        /// Mean of the random part of the latency.
        extra_mean: Duration,
    },
    /// Never answers: every call fails when the client's timeout expires.
    Down,
}

/// A stretch of virtual time with one behaviour of the dependency.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Phase {
    /// Which phase this is.
    pub kind: PhaseKind,
    /// When it begins (since the start of the run).
    pub start: Duration,
    /// When it ends.
    pub end: Duration,
    /// How the dependency answers meanwhile.
    pub behaviour: Behaviour,
}

/// What one call to the dependency comes to, as the client sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    /// Whether the call succeeded.
    pub ok: bool,
    /// How long the client waited for it (at most the timeout).
    pub latency: Duration,
}

/// The whole simulated world, minus the breaker.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Seed of every random draw.
    pub seed: u64,
    /// Length of the run.
    pub duration: Duration,
    /// Requests the client sends per second, evenly spaced.
    pub rate: u32,
    /// How long the client waits for an answer before counting a failure.
    pub timeout: Duration,
    /// The dependency's phases, in order, covering the whole run.
    pub phases: Vec<Phase>,
}

impl Scenario {
    /// The standard five-phase story, its phases scaled to `duration`
    /// (at 120 s: healthy 0-25 s, latency spike 25-40 s, error burst
    /// 40-60 s, outage 60-85 s, recovery 85-120 s).
    pub fn standard(seed: u64, duration: Duration, rate: u32) -> Self {
        let ms = Duration::from_millis;
        let healthy = Behaviour::Serving {
            error_rate: 0.01,
            base: ms(12),
            extra_mean: ms(8),
        };
        // Boundaries in 120ths of the run (seconds of the default run).
        let plan = [
            (PhaseKind::Healthy, 0, 25, healthy),
            (
                PhaseKind::LatencySpike,
                25,
                40,
                Behaviour::Serving {
                    error_rate: 0.02,
                    base: ms(550),
                    extra_mean: ms(120),
                },
            ),
            (
                PhaseKind::ErrorBurst,
                40,
                60,
                Behaviour::Serving {
                    error_rate: 0.60,
                    base: ms(12),
                    extra_mean: ms(8),
                },
            ),
            (PhaseKind::Outage, 60, 85, Behaviour::Down),
            (PhaseKind::Recovery, 85, 120, healthy),
        ];
        let at = |k: u32| duration * k / 120;
        Scenario {
            seed,
            duration,
            rate,
            timeout: Duration::from_secs(1),
            phases: plan
                .iter()
                .map(|&(kind, from, to, behaviour)| Phase {
                    kind,
                    start: at(from),
                    end: at(to),
                    behaviour,
                })
                .collect(),
        }
    }

    /// How many requests the client sends over the run.
    pub fn requests(&self) -> u64 {
        (self.duration.as_nanos() * u128::from(self.rate) / 1_000_000_000) as u64
    }

    /// When request `i` is sent.
    pub fn arrival(&self, i: u64) -> Timestamp {
        let nanos = u128::from(i) * 1_000_000_000 / u128::from(self.rate.max(1));
        Timestamp::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The index of the phase that instant `t` falls in.
    pub fn phase_at(&self, t: Timestamp) -> usize {
        let t = Duration::from_nanos(t.as_nanos());
        self.phases
            .iter()
            .position(|p| t < p.end)
            .unwrap_or(self.phases.len().saturating_sub(1))
    }

    /// The index of the first phase of `kind`, if there is one.
    pub fn find(&self, kind: PhaseKind) -> Option<usize> {
        self.phases.iter().position(|p| p.kind == kind)
    }

    /// How the dependency answers request `i`, sent during phase `phase`.
    pub fn response(&self, i: u64, phase: usize) -> Response {
        let timed_out = Response {
            ok: false,
            latency: self.timeout,
        };
        match self.phases[phase].behaviour {
            Behaviour::Down => timed_out,
            Behaviour::Serving {
                error_rate,
                base,
                extra_mean,
            } => {
                let mut rng = SplitMix64::for_request(self.seed, i);
                let ok = rng.next_f64() >= error_rate;
                let latency = base + extra_mean.mul_f64(rng.next_exp());
                if latency >= self.timeout {
                    timed_out
                } else {
                    Response { ok, latency }
                }
            }
        }
    }
}

/// The breaker settings of the demo, kept here once so that the breaker is
/// built from them and the report describes them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerSettings {
    /// Open when this percentage of the calls in the window failed...
    pub failure_rate_pct: f64,
    /// ...or when this percentage took at least `slow_call`...
    pub slow_rate_pct: f64,
    /// ...the slow-call threshold...
    pub slow_call: Duration,
    /// ...measured over a sliding window this long...
    pub window: Duration,
    /// ...kept in this many buckets...
    pub buckets: u32,
    /// ...once it holds at least this many calls.
    pub minimum_calls: u32,
    /// Or open after this many failures in a row.
    pub consecutive_failures: u32,
    /// Stay open this long after a first trip...
    pub open_duration: Duration,
    /// ...multiplied by this on every failed test...
    pub backoff: f64,
    /// ...up to this.
    pub max_open: Duration,
    /// Probe calls let through to test the dependency.
    pub probes: u32,
}

impl BreakerSettings {
    /// The settings the demo uses.
    pub const DEMO: BreakerSettings = BreakerSettings {
        failure_rate_pct: 50.0,
        slow_rate_pct: 80.0,
        slow_call: Duration::from_millis(500),
        window: Duration::from_secs(10),
        buckets: 10,
        minimum_calls: 20,
        consecutive_failures: 5,
        open_duration: Duration::from_secs(5),
        backoff: 2.0,
        max_open: Duration::from_secs(20),
        probes: 3,
    };

    /// A closed breaker with these settings.
    pub fn build(&self) -> Result<CircuitBreaker, ConfigError> {
        let config = BreakerConfig::builder()
            .failure_rate(self.failure_rate_pct)
            .time_window(self.window, self.buckets)
            .minimum_calls(self.minimum_calls)
            .consecutive_failures(self.consecutive_failures)
            .slow_calls(self.slow_rate_pct, self.slow_call)
            .open_duration(self.open_duration)
            .open_backoff(self.backoff, self.max_open)
            .half_open_probes(self.probes)
            .build()?;
        Ok(CircuitBreaker::new(config))
    }

    /// Whether a call that took `latency` counts as slow.
    pub fn is_slow(&self, latency: Duration) -> bool {
        latency >= self.slow_call
    }
}

/// SplitMix64 (Steele, Lea and Flood): a tiny, fast, well-mixed PRNG. Good
/// enough for a simulation; not for anything that must be unpredictable.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function: a bijective scrambler of 64 bits.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// An independent-looking stream for request `i` of a run seeded `seed`.
    pub fn for_request(seed: u64, i: u64) -> Self {
        SplitMix64::new(mix64(mix64(seed) ^ i.wrapping_mul(GOLDEN_GAMMA)))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix64(self.state)
    }

    /// A uniform number in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An exponentially distributed number of mean 1.
    pub fn next_exp(&mut self) -> f64 {
        -(1.0 - self.next_f64()).ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_cover_the_run_in_order() {
        let s = Scenario::standard(1, Duration::from_secs(120), 50);
        assert_eq!(s.phases.first().map(|p| p.start), Some(Duration::ZERO));
        assert_eq!(s.phases.last().map(|p| p.end), Some(s.duration));
        for pair in s.phases.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        assert_eq!(s.requests(), 6000);
        assert_eq!(s.phase_at(Timestamp::ZERO), 0);
        assert_eq!(s.phase_at(s.arrival(s.requests() - 1)), s.phases.len() - 1);
    }

    #[test]
    fn responses_follow_the_phase() {
        let s = Scenario::standard(7, Duration::from_secs(120), 50);
        let outage = s.find(PhaseKind::Outage).unwrap();
        let healthy = s.find(PhaseKind::Healthy).unwrap();
        for i in 0..1000 {
            let r = s.response(i, outage);
            assert!(!r.ok);
            assert_eq!(r.latency, s.timeout);
        }
        let ok = (0..1000).filter(|&i| s.response(i, healthy).ok).count();
        assert!(ok > 950, "{ok}");
        // Same seed and request, same answer.
        assert_eq!(s.response(5, healthy), s.response(5, healthy));
    }

    #[test]
    fn prng_is_uniform_enough() {
        let mut rng = SplitMix64::new(3);
        let n = 100_000;
        let mean = (0..n).map(|_| rng.next_f64()).sum::<f64>() / f64::from(n);
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        let mean_exp = (0..n).map(|_| rng.next_exp()).sum::<f64>() / f64::from(n);
        assert!((mean_exp - 1.0).abs() < 0.02, "{mean_exp}");
    }
}
