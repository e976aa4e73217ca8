//! Breaker configuration: a builder in user terms (percentages, `Duration`s)
//! that validates into a [`BreakerConfig`] in engine terms (parts per million,
//! nanoseconds, a precomputed table of open durations).

use core::time::Duration;

use crate::divide::Divisor;

use super::TripReason;
use crate::error::ConfigError;
use crate::time::checked_nanos;

/// Most buckets a sliding window may have.
#[cfg(not(tenlives_loom))]
pub const MAX_BUCKETS: usize = 16;
/// Most buckets a sliding window may have (kept small under loom).
#[cfg(tenlives_loom)]
pub const MAX_BUCKETS: usize = 4;

/// Buckets of the default window (fewer under loom, where windows are small).
const DEFAULT_BUCKETS: u32 = if MAX_BUCKETS >= 10 {
    10
} else {
    MAX_BUCKETS as u32
};

/// Most half-open probes (the probe counters are 10 bits wide).
pub const MAX_PROBES: u32 = 1000;

/// Largest consecutive-failures threshold (the counter is 24 bits wide).
pub const MAX_CONSECUTIVE_FAILURES: u32 = (1 << 24) - 1;

/// Largest count-based window, in calls. The window keeps two bits per call
/// in place, in words of 16 calls and a 32-bit tag (2 KiB at this size), with
/// no allocation.
#[cfg(not(tenlives_loom))]
pub const MAX_WINDOW_CALLS: u32 = 4096;
/// Largest count-based window, in calls (kept small under loom).
#[cfg(tenlives_loom)]
pub const MAX_WINDOW_CALLS: u32 = 32;

/// `minimum_calls` when the builder is not given one (capped at the size of a
/// count window).
const DEFAULT_MINIMUM_CALLS: u32 = 20;

/// Number of distinct open durations kept: trips beyond this reuse the last.
pub(crate) const OPEN_STEPS: usize = 32;

const PPM: u64 = 1_000_000;

/// How the breaker measures its failure and slow-call rates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WindowSpec {
    /// Exactly the most recent `calls` calls that reported (fewer until that
    /// many have), each with its own outcome: a rate is judged over the last
    /// `calls` outcomes, and the oldest leaves the window when a new one
    /// arrives. At most [`MAX_WINDOW_CALLS`].
    Count {
        /// Window size in calls.
        calls: u32,
    },
    /// The calls that completed in the last `length`, kept in `buckets`
    /// buckets of `length / buckets` each. The window is the current bucket
    /// (partly filled) and the `buckets - 1` before it, so it covers between
    /// `length - length / buckets` and `length` of history, and a whole
    /// bucket leaves it at once when a new one starts: rates move in steps of
    /// one bucket. More buckets make the steps smaller.
    Time {
        /// Window length.
        length: Duration,
        /// Number of buckets; must divide `length` in nanoseconds.
        buckets: u32,
    },
}

/// Builder for [`BreakerConfig`]. Start from [`BreakerConfig::builder`].
///
/// Defaults: open at a failure rate of 50 % over a 10-second time window of
/// 10 buckets once at least 20 calls were seen there (or, over a count
/// window smaller than 20 calls, once the window is full); stay open 5
/// seconds; then let 3 probe calls through.
#[derive(Clone, Debug)]
#[must_use]
pub struct BreakerConfigBuilder {
    failure_rate: Option<f64>,
    slow_calls: Option<(f64, Duration)>,
    consecutive_failures: Option<u32>,
    window: WindowSpec,
    /// `None`: the default, capped at a count window's size.
    minimum_calls: Option<u32>,
    open_duration: Duration,
    open_backoff: Option<(f64, Duration)>,
    probes: u32,
    reopen_on_first_failure: bool,
    probe_every: Option<Duration>,
}

impl Default for BreakerConfigBuilder {
    fn default() -> Self {
        BreakerConfigBuilder {
            failure_rate: Some(50.0),
            slow_calls: None,
            consecutive_failures: None,
            window: WindowSpec::Time {
                length: Duration::from_secs(10),
                buckets: DEFAULT_BUCKETS,
            },
            minimum_calls: None,
            open_duration: Duration::from_secs(5),
            open_backoff: None,
            probes: 3,
            reopen_on_first_failure: false,
            probe_every: None,
        }
    }
}

impl BreakerConfigBuilder {
    /// Open when at least `percent` % of the calls in the window failed
    /// (and the window holds at least [`minimum_calls`](Self::minimum_calls)).
    pub fn failure_rate(mut self, percent: f64) -> Self {
        self.failure_rate = Some(percent);
        self
    }

    /// Do not open on the failure rate (keep the other rules).
    pub fn without_failure_rate(mut self) -> Self {
        self.failure_rate = None;
        self
    }

    /// Open when at least `percent` % of the calls in the window took
    /// `threshold` or longer, successful or not.
    pub fn slow_calls(mut self, percent: f64, threshold: Duration) -> Self {
        self.slow_calls = Some((percent, threshold));
        self
    }

    /// Open after `n` failures in a row (a success resets the count).
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = Some(n);
        self
    }

    /// Measure rates over exactly the most recent `calls` calls (see
    /// [`WindowSpec::Count`]). Without an explicit
    /// [`minimum_calls`](Self::minimum_calls), rates are judged from 20
    /// calls on, or once the window is full if it is smaller.
    ///
    /// ```
    /// use tenlives_engine::breaker::{BreakerConfig, BreakerState, CircuitBreaker, Outcome};
    /// use tenlives_engine::time::Timestamp;
    ///
    /// // 10 % of the last 10 calls, judged once 10 calls reported.
    /// let breaker = CircuitBreaker::new(
    ///     BreakerConfig::builder().failure_rate(10.0).count_window(10).build()?,
    /// );
    /// let now = Timestamp::ZERO;
    /// let call = |outcome| breaker.try_acquire(now).expect("closed").record(outcome, now);
    /// call(Outcome::Failure);
    /// for _ in 0..9 {
    ///     call(Outcome::Success);
    /// }
    /// // The failure is the oldest of the last 10; one more success pushes
    /// // it out, and the next failure is alone in the window again: 10 %.
    /// call(Outcome::Success);
    /// assert_eq!(breaker.snapshot(now).window.failures, 0);
    /// call(Outcome::Failure);
    /// assert_eq!(breaker.state(), BreakerState::Open);
    /// # Ok::<(), tenlives_engine::ConfigError>(())
    /// ```
    pub fn count_window(mut self, calls: u32) -> Self {
        self.window = WindowSpec::Count { calls };
        self
    }

    /// Measure rates over the calls of the last `length`, in `buckets` buckets.
    pub fn time_window(mut self, length: Duration, buckets: u32) -> Self {
        self.window = WindowSpec::Time { length, buckets };
        self
    }

    /// Rates are judged only once the window holds at least `n` calls. Over
    /// a count window, `n` may not exceed its size. Default: 20, or the size
    /// of a smaller count window.
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.minimum_calls = Some(n);
        self
    }

    /// How long the breaker stays open after a trip.
    pub fn open_duration(mut self, d: Duration) -> Self {
        self.open_duration = d;
        self
    }

    /// Grow the open duration on consecutive trips (a failed half-open test
    /// re-trips): each trip multiplies it by `multiplier`, up to `cap`. A
    /// close resets it.
    pub fn open_backoff(mut self, multiplier: f64, cap: Duration) -> Self {
        self.open_backoff = Some((multiplier, cap));
        self
    }

    /// How many probe calls the half-open state admits before deciding.
    ///
    /// Once all `n` probes reported, the breaker closes unless the probes
    /// themselves break a rate rule: the share of failed probes is at or above
    /// the failure-rate threshold (or, without a failure-rate rule but with a
    /// consecutive-failures rule, any probe failed), or the share of slow
    /// probes is at or above the slow-call-rate threshold. Otherwise it opens
    /// again, for longer if [`open_backoff`](Self::open_backoff) is set. With
    /// 3 probes and a 50 % failure rate, one failed probe out of three closes
    /// the breaker; two reopen it. Probes dropped unreported, or reported as
    /// `Ignored`, free their slot for another probe and count for nothing.
    pub fn half_open_probes(mut self, n: u32) -> Self {
        self.probes = n;
        self
    }

    /// Reopen at the first failed probe instead of waiting for all probes.
    pub fn reopen_on_first_failure(mut self, yes: bool) -> Self {
        self.reopen_on_first_failure = yes;
        self
    }

    /// Probe an open breaker's dependency with **scouts**: once the open
    /// duration is over, the breaker stays open and admits one call every
    /// `interval` (the first admission at or after each deadline), whether
    /// or not earlier scouts have answered. A scout that fails, or times
    /// out, or is dropped, changes nothing: the next one goes `interval`
    /// later. The first scout that succeeds ends the open period at once:
    /// it closes the breaker when one probe is the whole half-open test
    /// ([`half_open_probes`](Self::half_open_probes)`(1)`), else it starts
    /// the half-open test (with all its probes).
    ///
    /// Without it (the default) the breaker half-opens when the open
    /// duration is over, admits its probes and refuses everything else
    /// until they answer: a probe to a stalled dependency holds the test for
    /// the call's whole timeout, and a failed test opens the breaker for
    /// another open duration. With scouts the dependency still receives one
    /// call per `interval` while it is down, and a recovery is seen within
    /// `interval` plus one call's latency of when it happened, however long
    /// a failing call takes.
    pub fn probe_every(mut self, interval: Duration) -> Self {
        self.probe_every = Some(interval);
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<BreakerConfig, ConfigError> {
        let builder = self.clone();
        let failure_rate_ppm = self
            .failure_rate
            .map(|p| percent_to_ppm("failure_rate", p))
            .transpose()?;
        let (slow_rate_ppm, slow_call_ns) = match self.slow_calls {
            Some((p, d)) => {
                let ppm = percent_to_ppm("slow_call_rate", p)?;
                let ns = checked_nanos("slow_call_duration", d)?;
                if ns == 0 {
                    return Err(ConfigError::ZeroDuration {
                        field: "slow_call_duration",
                    });
                }
                (Some(ppm), ns)
            }
            None => (None, u64::MAX),
        };
        if let Some(n) = self.consecutive_failures {
            check_range("consecutive_failures", n, MAX_CONSECUTIVE_FAILURES)?;
        }
        if failure_rate_ppm.is_none()
            && slow_rate_ppm.is_none()
            && self.consecutive_failures.is_none()
        {
            return Err(ConfigError::NoTripRule);
        }
        let window = Window::new(self.window)?;
        let minimum_calls = match (self.minimum_calls, self.window) {
            (Some(0), _) => {
                return Err(ConfigError::Zero {
                    field: "minimum_calls",
                });
            }
            (Some(n), WindowSpec::Count { calls })
                if n > calls && (failure_rate_ppm.is_some() || slow_rate_ppm.is_some()) =>
            {
                return Err(ConfigError::TooLarge {
                    field: "minimum_calls",
                    value: n.into(),
                    max: calls.into(),
                });
            }
            (Some(n), _) => n,
            (None, WindowSpec::Count { calls }) => DEFAULT_MINIMUM_CALLS.min(calls),
            (None, WindowSpec::Time { .. }) => DEFAULT_MINIMUM_CALLS,
        };
        check_range("half_open_probes", self.probes, MAX_PROBES)?;
        let open_ns = open_table(self.open_duration, self.open_backoff)?;
        let probe_every_ns = match self.probe_every {
            Some(d) => match checked_nanos("probe_every", d)? {
                0 => {
                    return Err(ConfigError::ZeroDuration {
                        field: "probe_every",
                    });
                }
                ns => Some(ns),
            },
            None => None,
        };
        Ok(BreakerConfig {
            failure_rate_ppm,
            slow_rate_ppm,
            slow_call_ns,
            consecutive_failures: self.consecutive_failures,
            window,
            minimum_calls,
            open_ns,
            probes: self.probes,
            reopen_on_first_failure: self.reopen_on_first_failure,
            probe_every_ns,
            builder,
        })
    }
}

fn check_range(field: &'static str, n: u32, max: u32) -> Result<(), ConfigError> {
    if n == 0 {
        Err(ConfigError::Zero { field })
    } else if n > max {
        Err(ConfigError::TooLarge {
            field,
            value: n.into(),
            max: max.into(),
        })
    } else {
        Ok(())
    }
}

fn percent_to_ppm(field: &'static str, percent: f64) -> Result<u32, ConfigError> {
    // `!(x > 0.0)` also rejects NaN.
    if !(percent > 0.0 && percent <= 100.0) {
        return Err(ConfigError::RateOutOfRange {
            field,
            value: percent,
        });
    }
    // In (0, 1_000_000]; at least 1 ppm so that a tiny rate is not "always".
    Ok(((percent * 10_000.0 + 0.5) as u32).max(1))
}

fn open_table(
    base: Duration,
    backoff: Option<(f64, Duration)>,
) -> Result<[u64; OPEN_STEPS], ConfigError> {
    let base_ns = checked_nanos("open_duration", base)?;
    if base_ns == 0 {
        return Err(ConfigError::ZeroDuration {
            field: "open_duration",
        });
    }
    let mut table = [base_ns; OPEN_STEPS];
    if let Some((multiplier, cap)) = backoff {
        if !(multiplier.is_finite() && multiplier >= 1.0) {
            return Err(ConfigError::InvalidMultiplier {
                field: "open_backoff multiplier",
                value: multiplier,
            });
        }
        let cap_ns = checked_nanos("open_backoff cap", cap)?;
        if cap_ns < base_ns {
            return Err(ConfigError::CapBelowBase {
                field: "open_backoff cap",
            });
        }
        let mut current = base_ns as f64;
        for slot in table.iter_mut() {
            // `as` saturates, and the cap bounds it anyway.
            *slot = (current as u64).min(cap_ns);
            current *= multiplier;
        }
    }
    Ok(table)
}

/// The shape of a validated window, in engine units.
#[derive(Clone, Copy, Debug)]
pub(crate) enum WindowKind {
    /// Exactly the last `calls` calls (`ring.rs`).
    Count { calls: u32 },
    /// Buckets of a fixed length; the bucket index is `now / length`.
    Time { bucket: Divisor },
}

/// A validated window.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub(crate) kind: WindowKind,
    /// Buckets of a time window; 1 for a count window.
    pub(crate) buckets: u32,
    /// `buckets` as a divisor without a `div` instruction (slot = epoch % buckets).
    pub(crate) buckets_divisor: Divisor,
    pub(crate) spec: WindowSpec,
}

impl Window {
    pub(crate) fn new(spec: WindowSpec) -> Result<Self, ConfigError> {
        let (length, buckets) = match spec {
            WindowSpec::Count { calls } => {
                check_range("window calls", calls, MAX_WINDOW_CALLS)?;
                return Ok(Window {
                    kind: WindowKind::Count { calls },
                    buckets: 1,
                    buckets_divisor: Divisor::new(1),
                    spec,
                });
            }
            WindowSpec::Time { length, buckets } => {
                let ns = checked_nanos("window length", length)?;
                if ns == 0 {
                    return Err(ConfigError::ZeroDuration {
                        field: "window length",
                    });
                }
                (ns, buckets)
            }
        };
        check_range("window buckets", buckets, MAX_BUCKETS as u32)?;
        if length % u64::from(buckets) != 0 || length < u64::from(buckets) {
            return Err(ConfigError::UnevenBuckets {
                window: length,
                buckets: buckets.into(),
            });
        }
        Ok(Window {
            kind: WindowKind::Time {
                bucket: Divisor::new(length / u64::from(buckets)),
            },
            buckets,
            buckets_divisor: Divisor::new(buckets.into()),
            spec,
        })
    }
}

/// A validated circuit-breaker configuration.
///
/// ```
/// use core::time::Duration;
/// use tenlives_engine::breaker::BreakerConfig;
///
/// let config = BreakerConfig::builder()
///     .failure_rate(25.0)
///     .count_window(100)
///     .minimum_calls(10)
///     .consecutive_failures(5)
///     .open_duration(Duration::from_secs(2))
///     .open_backoff(2.0, Duration::from_secs(60))
///     .build()
///     .expect("valid");
/// assert_eq!(config.open_duration(3), Duration::from_secs(8));
///
/// // Bad input is a typed error, never a panic.
/// let err = BreakerConfig::builder().failure_rate(120.0).build().unwrap_err();
/// assert_eq!(err.to_string(), "`failure_rate` is 120%, outside the accepted range (0, 100]");
/// ```
#[derive(Clone, Debug)]
pub struct BreakerConfig {
    pub(crate) failure_rate_ppm: Option<u32>,
    pub(crate) slow_rate_ppm: Option<u32>,
    /// Calls taking at least this long are slow (`u64::MAX` when no slow rule).
    pub(crate) slow_call_ns: u64,
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) window: Window,
    pub(crate) minimum_calls: u32,
    pub(crate) open_ns: [u64; OPEN_STEPS],
    pub(crate) probes: u32,
    pub(crate) reopen_on_first_failure: bool,
    /// Scouts while open: one every this many nanoseconds (`None`: the
    /// classic half-open test).
    pub(crate) probe_every_ns: Option<u64>,
    /// The settings this configuration was built from.
    builder: BreakerConfigBuilder,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        match BreakerConfigBuilder::default().build() {
            Ok(c) => c,
            // The defaults are constants that pass validation (checked by a test).
            Err(_) => unreachable!("default breaker configuration is valid"),
        }
    }
}

/// What the half-open state decides once its probes have reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Wait for more probes.
    Pending,
    /// Close the breaker.
    Close,
    /// Open it again, for longer if backoff is configured.
    Reopen,
}

impl BreakerConfig {
    /// A builder with the defaults described on [`BreakerConfigBuilder`].
    pub fn builder() -> BreakerConfigBuilder {
        BreakerConfigBuilder::default()
    }

    /// A builder holding the settings this configuration was built from, to
    /// change some of them (for
    /// [`CircuitBreaker::update_config`](super::CircuitBreaker::update_config)).
    pub fn to_builder(&self) -> BreakerConfigBuilder {
        self.builder.clone()
    }

    /// The window the rates are measured over.
    pub fn window(&self) -> WindowSpec {
        self.window.spec
    }

    /// How many half-open probes are admitted.
    pub fn half_open_probes(&self) -> u32 {
        self.probes
    }

    /// The failure-rate threshold in percent, if that rule is on.
    pub fn failure_rate(&self) -> Option<f64> {
        self.failure_rate_ppm.map(|p| f64::from(p) / 10_000.0)
    }

    /// The slow-call-rate threshold in percent and the slow-call duration, if
    /// that rule is on.
    pub fn slow_calls(&self) -> Option<(f64, Duration)> {
        self.slow_rate_ppm.map(|p| {
            (
                f64::from(p) / 10_000.0,
                Duration::from_nanos(self.slow_call_ns),
            )
        })
    }

    /// The consecutive-failures threshold, if that rule is on.
    pub fn consecutive_failures(&self) -> Option<u32> {
        self.consecutive_failures
    }

    /// The fewest calls in the window for the rate rules to judge.
    pub fn minimum_calls(&self) -> u32 {
        self.minimum_calls
    }

    /// Whether the first failed probe reopens the breaker at once.
    pub fn reopen_on_first_failure(&self) -> bool {
        self.reopen_on_first_failure
    }

    /// The interval between scouts while open, if scouts are on
    /// ([`BreakerConfigBuilder::probe_every`]).
    pub fn probe_every(&self) -> Option<Duration> {
        self.probe_every_ns.map(Duration::from_nanos)
    }

    /// How long the breaker stays open after its `trips`-th consecutive trip
    /// (1 for the first trip).
    pub fn open_duration(&self, trips: u32) -> Duration {
        Duration::from_nanos(self.open_ns_for(trips))
    }

    #[inline]
    pub(crate) fn open_ns_for(&self, trips: u32) -> u64 {
        let i = (trips.max(1) - 1) as usize;
        self.open_ns[i.min(OPEN_STEPS - 1)]
    }

    /// Whether a failure-rate or slow-call-rate rule needs the window.
    #[inline]
    pub(crate) fn has_rate_rule(&self) -> bool {
        self.failure_rate_ppm.is_some() || self.slow_rate_ppm.is_some()
    }

    /// Whether recording a success in the closed state reads its time: to
    /// judge it slow, or to find its bucket in a time-based rate window.
    #[inline]
    pub(crate) fn success_needs_time(&self) -> bool {
        self.slow_rate_ppm.is_some()
            || (self.has_rate_rule() && matches!(self.window.kind, WindowKind::Time { .. }))
    }

    /// Whether a call that took `elapsed_ns()` nanoseconds counts as slow
    /// (asked only when there is a slow-call rule).
    #[inline]
    pub(crate) fn is_slow(&self, elapsed_ns: impl FnOnce() -> u64) -> bool {
        self.slow_rate_ppm.is_some() && elapsed_ns() >= self.slow_call_ns
    }

    /// Whether the window's counts break a rate rule.
    pub(crate) fn rate_tripped(&self, calls: u64, failures: u64, slow: u64) -> bool {
        self.rate_trip(calls, failures, slow).is_some()
    }

    /// Which rate rule, if any, the window's counts break.
    pub(crate) fn rate_trip(&self, calls: u64, failures: u64, slow: u64) -> Option<TripReason> {
        if calls < u64::from(self.minimum_calls) {
            None
        } else if at_or_above(failures, calls, self.failure_rate_ppm) {
            Some(TripReason::FailureRate)
        } else if at_or_above(slow, calls, self.slow_rate_ppm) {
            Some(TripReason::SlowCallRate)
        } else {
            None
        }
    }

    /// The half-open decision after `succeeded + failed` probes reported.
    pub(crate) fn probe_verdict(
        &self,
        succeeded: u32,
        failed: u32,
        slow: u32,
        just_failed: bool,
    ) -> Verdict {
        if just_failed && self.reopen_on_first_failure {
            return Verdict::Reopen;
        }
        let done = succeeded + failed;
        if done < self.probes {
            return Verdict::Pending;
        }
        let (done, failed, slow) = (u64::from(done), u64::from(failed), u64::from(slow));
        let failed_too_often = match self.failure_rate_ppm {
            Some(_) => at_or_above(failed, done, self.failure_rate_ppm),
            // Without a rate rule, any failed probe means "not recovered" when
            // failures are what trips this breaker.
            None => self.consecutive_failures.is_some() && failed > 0,
        };
        if failed_too_often || at_or_above(slow, done, self.slow_rate_ppm) {
            Verdict::Reopen
        } else {
            Verdict::Close
        }
    }
}

/// `part / whole >= threshold` with the threshold in parts per million.
#[inline]
fn at_or_above(part: u64, whole: u64, threshold_ppm: Option<u32>) -> bool {
    match threshold_ppm {
        Some(t) => {
            whole > 0 && u128::from(part) * u128::from(PPM) >= u128::from(whole) * u128::from(t)
        }
        None => false,
    }
}

#[cfg(all(test, not(tenlives_loom)))]
mod tests {
    use std::string::ToString;

    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = BreakerConfig::default();
        assert_eq!(c.failure_rate_ppm, Some(500_000));
        assert_eq!(c.open_duration(1), Duration::from_secs(5));
    }

    #[test]
    fn rejects_bad_rates() {
        for bad in [0.0, -1.0, 100.5, f64::NAN, f64::INFINITY] {
            let e = BreakerConfig::builder()
                .failure_rate(bad)
                .build()
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    ConfigError::RateOutOfRange {
                        field: "failure_rate",
                        ..
                    }
                ),
                "{bad}"
            );
        }
        let e = BreakerConfig::builder()
            .slow_calls(0.0, Duration::from_secs(1))
            .build()
            .unwrap_err();
        assert!(matches!(
            e,
            ConfigError::RateOutOfRange {
                field: "slow_call_rate",
                ..
            }
        ));
        let e = BreakerConfig::builder()
            .slow_calls(10.0, Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(
            e,
            ConfigError::ZeroDuration {
                field: "slow_call_duration"
            }
        );
    }

    #[test]
    fn rejects_bad_windows() {
        let b = || BreakerConfig::builder().minimum_calls(1);
        assert_eq!(
            b().count_window(0).build().unwrap_err(),
            ConfigError::Zero {
                field: "window calls"
            }
        );
        assert_eq!(
            b().count_window(MAX_WINDOW_CALLS + 1).build().unwrap_err(),
            ConfigError::TooLarge {
                field: "window calls",
                value: (MAX_WINDOW_CALLS + 1).into(),
                max: MAX_WINDOW_CALLS.into()
            }
        );
        assert_eq!(
            b().time_window(Duration::from_nanos(10), 3)
                .build()
                .unwrap_err(),
            ConfigError::UnevenBuckets {
                window: 10,
                buckets: 3
            }
        );
        assert!(matches!(
            b().time_window(Duration::from_secs(17), 17)
                .build()
                .unwrap_err(),
            ConfigError::TooLarge {
                field: "window buckets",
                ..
            }
        ));
        assert_eq!(
            b().time_window(Duration::ZERO, 1).build().unwrap_err(),
            ConfigError::ZeroDuration {
                field: "window length"
            }
        );
        assert_eq!(
            b().time_window(Duration::MAX, 1).build().unwrap_err(),
            ConfigError::DurationOverflow {
                field: "window length"
            }
        );
        assert!(matches!(
            BreakerConfig::builder()
                .count_window(10)
                .minimum_calls(11)
                .build()
                .unwrap_err(),
            ConfigError::TooLarge {
                field: "minimum_calls",
                value: 11,
                max: 10
            }
        ));
        assert_eq!(
            BreakerConfig::builder()
                .minimum_calls(0)
                .build()
                .unwrap_err(),
            ConfigError::Zero {
                field: "minimum_calls"
            }
        );
    }

    #[test]
    fn minimum_calls_defaults_to_at_most_a_count_window() {
        let small = BreakerConfig::builder().count_window(10).build().unwrap();
        assert_eq!(small.minimum_calls(), 10);
        let large = BreakerConfig::builder().count_window(100).build().unwrap();
        assert_eq!(large.minimum_calls(), 20);
        assert_eq!(BreakerConfig::default().minimum_calls(), 20);
        // The default follows the window when a configuration is changed.
        let shrunk = large.to_builder().count_window(5).build().unwrap();
        assert_eq!(shrunk.minimum_calls(), 5);
        // Without a rate rule the window is not judged: no limit.
        let consecutive = BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(3)
            .count_window(5)
            .minimum_calls(50)
            .build()
            .unwrap();
        assert_eq!(consecutive.minimum_calls(), 50);
    }

    #[test]
    fn rejects_bad_durations_probes_and_rules() {
        let b = BreakerConfig::builder;
        assert_eq!(
            b().open_duration(Duration::ZERO).build().unwrap_err(),
            ConfigError::ZeroDuration {
                field: "open_duration"
            }
        );
        assert_eq!(
            b().open_duration(Duration::MAX).build().unwrap_err(),
            ConfigError::DurationOverflow {
                field: "open_duration"
            }
        );
        assert!(matches!(
            b().open_backoff(0.5, Duration::from_secs(60))
                .build()
                .unwrap_err(),
            ConfigError::InvalidMultiplier { .. }
        ));
        assert!(matches!(
            b().open_backoff(f64::NAN, Duration::from_secs(60))
                .build()
                .unwrap_err(),
            ConfigError::InvalidMultiplier { .. }
        ));
        assert!(matches!(
            b().open_backoff(2.0, Duration::from_secs(1))
                .build()
                .unwrap_err(),
            ConfigError::CapBelowBase { .. }
        ));
        assert_eq!(
            b().half_open_probes(0).build().unwrap_err(),
            ConfigError::Zero {
                field: "half_open_probes"
            }
        );
        assert!(matches!(
            b().half_open_probes(1001).build().unwrap_err(),
            ConfigError::TooLarge { .. }
        ));
        assert_eq!(
            b().without_failure_rate().build().unwrap_err(),
            ConfigError::NoTripRule
        );
        assert_eq!(
            b().consecutive_failures(0).build().unwrap_err(),
            ConfigError::Zero {
                field: "consecutive_failures"
            }
        );
        // Every error explains itself.
        let msg = ConfigError::NoTripRule.to_string();
        assert!(msg.contains("no trip rule"));
    }

    #[test]
    fn backoff_grows_and_caps() {
        let c = BreakerConfig::builder()
            .open_duration(Duration::from_secs(1))
            .open_backoff(1.5, Duration::from_secs(10))
            .build()
            .unwrap();
        assert_eq!(c.open_duration(0), Duration::from_secs(1));
        assert_eq!(c.open_duration(1), Duration::from_secs(1));
        assert_eq!(c.open_duration(2), Duration::from_millis(1500));
        assert_eq!(c.open_duration(3), Duration::from_millis(2250));
        assert_eq!(c.open_duration(10), Duration::from_secs(10));
        assert_eq!(c.open_duration(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn rates_compare_exactly() {
        let c = BreakerConfig::builder()
            .failure_rate(50.0)
            .minimum_calls(4)
            .build()
            .unwrap();
        assert!(!c.rate_tripped(3, 3, 0), "below minimum calls");
        assert!(c.rate_tripped(4, 2, 0), "50% is at the threshold");
        assert!(!c.rate_tripped(5, 2, 0));
        assert!(!c.rate_tripped(u64::MAX, u64::MAX / 2, 0));
        assert!(c.rate_tripped(u64::MAX, u64::MAX / 2 + 1, 0));
    }

    #[test]
    fn probe_verdicts() {
        let c = BreakerConfig::builder()
            .failure_rate(50.0)
            .half_open_probes(4)
            .build()
            .unwrap();
        assert_eq!(c.probe_verdict(1, 1, 0, true), Verdict::Pending);
        assert_eq!(c.probe_verdict(3, 1, 0, false), Verdict::Close);
        assert_eq!(c.probe_verdict(2, 2, 0, true), Verdict::Reopen);
        let c = BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(3)
            .half_open_probes(2)
            .reopen_on_first_failure(true)
            .build()
            .unwrap();
        assert_eq!(c.probe_verdict(0, 1, 0, true), Verdict::Reopen);
        let c = BreakerConfig::builder()
            .without_failure_rate()
            .slow_calls(50.0, Duration::from_millis(100))
            .half_open_probes(2)
            .build()
            .unwrap();
        assert_eq!(
            c.probe_verdict(1, 1, 0, false),
            Verdict::Close,
            "failures do not trip a slow-only breaker"
        );
        assert_eq!(c.probe_verdict(2, 0, 1, false), Verdict::Reopen);
    }
}
