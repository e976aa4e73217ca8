//! Limit algorithms: pure, sequential functions from one window of samples
//! to the next concurrency limit. The adaptive limiter calls them from the
//! single thread that wins each window; simulations call them directly.

use core::time::Duration;

use crate::error::ConfigError;
use crate::time::checked_nanos;

/// What one window of completed calls says about the dependency.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowSample {
    /// Calls that completed and reported a round-trip time.
    pub completed: u64,
    /// Calls reported dropped (timed out, or refused by the dependency).
    pub dropped: u64,
    /// Mean round-trip time of the completed calls, in nanoseconds.
    pub mean_rtt_ns: u64,
    /// Calls in flight when the window closed.
    pub in_flight: u32,
}

/// An algorithm that turns window samples into a concurrency limit.
pub trait LimitAlgorithm {
    /// The limit to start with.
    fn initial_limit(&self) -> u32;
    /// The next limit, given the current one and the window that just ended.
    fn update(&mut self, limit: u32, sample: &WindowSample) -> u32;

    /// Takes the settings of `new` at run time (see
    /// [`AdaptiveLimiter::set_algorithm`](super::AdaptiveLimiter::set_algorithm))
    /// and returns the limit to go on from, given the current one. The
    /// default replaces the algorithm, state and all, and keeps the limit;
    /// [`Aimd`] and [`Gradient`] keep what they measured and move the limit
    /// into the new bounds.
    fn reconfigure(&mut self, new: Self, limit: u32) -> u32
    where
        Self: Sized,
    {
        *self = new;
        limit
    }

    /// Writes what the algorithm measured into `words` for a state
    /// snapshot ([`AdaptiveLimiter::save_state`](super::AdaptiveLimiter::save_state))
    /// and returns how many words it used. The default, for an algorithm
    /// that measures nothing beyond the limit, uses none.
    fn save_measurements(&self, words: &mut [u64; MEASUREMENT_WORDS]) -> usize {
        let _ = words;
        0
    }

    /// Takes measurements that [`save_measurements`](Self::save_measurements)
    /// wrote; returns false (and changes nothing) if they are not valid for
    /// this algorithm, which refuses the snapshot. The default accepts only
    /// no words.
    fn restore_measurements(&mut self, words: &[u64]) -> bool {
        words.is_empty()
    }
}

/// Most words an algorithm's measurements take in a snapshot.
pub const MEASUREMENT_WORDS: usize = 6;

fn check_bounds(min: u32, initial: u32, max: u32) -> Result<(), ConfigError> {
    if min == 0 {
        return Err(ConfigError::Zero { field: "min_limit" });
    }
    if max < min {
        return Err(ConfigError::CapBelowBase { field: "max_limit" });
    }
    if initial < min || initial > max {
        return Err(ConfigError::TooLarge {
            field: "initial_limit (outside min..=max)",
            value: initial.into(),
            max: max.into(),
        });
    }
    Ok(())
}

fn check_fraction(field: &'static str, value: f64, low_inclusive: bool) -> Result<(), ConfigError> {
    let ok = value.is_finite() && value < 1.0 && (value > 0.0 || (low_inclusive && value == 0.0));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::InvalidFraction { field, value })
    }
}

/// Additive increase, multiplicative decrease.
///
/// After each window: if any call was dropped, or the mean round-trip time
/// exceeded the latency threshold, the limit is multiplied by `backoff`;
/// otherwise, if the limit was actually used (at least half of it in flight),
/// it grows by `increase`. Always within `min..=max`.
///
/// ```
/// use core::time::Duration;
/// use tenlives_engine::adaptive::{Aimd, LimitAlgorithm, WindowSample};
///
/// let mut aimd = Aimd::builder().limits(1, 20, 100).latency_threshold(Duration::from_millis(50)).build()?;
/// let busy = WindowSample { completed: 100, dropped: 0, mean_rtt_ns: 10_000_000, in_flight: 20 };
/// assert_eq!(aimd.update(20, &busy), 21);
/// let dropping = WindowSample { dropped: 3, ..busy };
/// assert_eq!(aimd.update(21, &dropping), 18); // 21 * 0.9, rounded down
/// # Ok::<(), tenlives_engine::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Aimd {
    min: u32,
    initial: u32,
    max: u32,
    increase: u32,
    backoff: f64,
    threshold_ns: u64,
}

/// Builder for [`Aimd`].
#[derive(Clone, Debug)]
#[must_use]
pub struct AimdBuilder {
    limits: (u32, u32, u32),
    increase: u32,
    backoff: f64,
    threshold: Duration,
}

impl Aimd {
    /// Defaults: limits 1 ..= 1000 starting at 20, +1 per window, ×0.9 on a
    /// drop, latency threshold 1 s.
    pub fn builder() -> AimdBuilder {
        AimdBuilder {
            limits: (1, 20, 1000),
            increase: 1,
            backoff: 0.9,
            threshold: Duration::from_secs(1),
        }
    }
}

impl AimdBuilder {
    /// Smallest, initial and largest limit.
    pub fn limits(mut self, min: u32, initial: u32, max: u32) -> Self {
        self.limits = (min, initial, max);
        self
    }
    /// How much the limit grows after a healthy window.
    pub fn increase(mut self, step: u32) -> Self {
        self.increase = step;
        self
    }
    /// The factor in `(0, 1)` applied after a window with drops.
    pub fn backoff(mut self, ratio: f64) -> Self {
        self.backoff = ratio;
        self
    }
    /// A window whose mean round-trip time is above this counts as a drop.
    pub fn latency_threshold(mut self, d: Duration) -> Self {
        self.threshold = d;
        self
    }
    /// Validates the settings.
    pub fn build(self) -> Result<Aimd, ConfigError> {
        let (min, initial, max) = self.limits;
        check_bounds(min, initial, max)?;
        if self.increase == 0 {
            return Err(ConfigError::Zero { field: "increase" });
        }
        check_fraction("backoff", self.backoff, false)?;
        let threshold_ns = checked_nanos("latency_threshold", self.threshold)?;
        if threshold_ns == 0 {
            return Err(ConfigError::ZeroDuration {
                field: "latency_threshold",
            });
        }
        Ok(Aimd {
            min,
            initial,
            max,
            increase: self.increase,
            backoff: self.backoff,
            threshold_ns,
        })
    }
}

impl LimitAlgorithm for Aimd {
    fn initial_limit(&self) -> u32 {
        self.initial
    }

    fn update(&mut self, limit: u32, sample: &WindowSample) -> u32 {
        let next = if sample.dropped > 0 || sample.mean_rtt_ns > self.threshold_ns {
            // `as` truncates toward zero and saturates: the product is finite.
            (f64::from(limit) * self.backoff) as u32
        } else if u64::from(sample.in_flight) * 2 >= u64::from(limit) {
            limit.saturating_add(self.increase)
        } else {
            limit // not using what it has: no evidence for more
        };
        next.clamp(self.min, self.max)
    }

    fn reconfigure(&mut self, new: Self, limit: u32) -> u32 {
        *self = new; // AIMD keeps no measurements
        limit.clamp(self.min, self.max)
    }
}

/// A gradient limiter in the spirit of Netflix's Gradient2.
///
/// It compares a short-term round-trip time (the mean of the last window)
/// with a long-term one (an exponential average over many windows):
///
/// ```text
/// gradient  = clamp(tolerance * long_rtt / short_rtt, 0.5, 1.0)
/// target    = limit * gradient + (queue_size(limit) if gradient == 1, else 0)
/// new limit = limit * (1 - smoothing) + target * smoothing, within min..=max
/// ```
///
/// so the limit shrinks in proportion to how much latency rose above its
/// long-term level, and otherwise grows by the queue allowance (here
/// `max(1, sqrt(limit) / 2)`). The limit only grows when at least half of it
/// is in use. A drop counts as a window twice as slow as the long-term RTT.
///
/// Three changes from Gradient2: the queue allowance is added only while
/// latency is within tolerance (so the limit settles near `tolerance ×
/// capacity` instead of `queue_size` above it, which matters for small
/// limits), and two against learning congestion as normal:
///
/// - the long-term average learns from a window at the normal rate only
///   while that window was within tolerance, and 10 times slower while it was
///   congested (Gradient2's long-term RTT creeps up under sustained load, and
///   the limit with it); when the short-term RTT falls below half the
///   long-term one, the long-term one decays toward it quickly (recovery);
/// - every `probe_every` windows the limit dips to half for one window, and
///   the RTT measured then, if lower, becomes the long-term RTT. Without it, a
///   limiter that starts (or has drifted) above the dependency's capacity
///   never sees its uncongested latency, and settles where it started.
///
/// ```
/// use tenlives_engine::adaptive::{Gradient, LimitAlgorithm, WindowSample};
///
/// let mut g = Gradient::builder().limits(1, 50, 1000).build()?;
/// let calm = WindowSample { completed: 100, dropped: 0, mean_rtt_ns: 10_000_000, in_flight: 50 };
/// let mut limit = 50;
/// for _ in 0..5 {
///     limit = g.update(limit, &calm); // latency at its long-term level: grow
/// }
/// assert!(limit > 50);
/// let slow = WindowSample { mean_rtt_ns: 40_000_000, ..calm }; // 4x slower
/// assert!(g.update(limit, &slow) < limit);
/// # Ok::<(), tenlives_engine::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Gradient {
    min: u32,
    initial: u32,
    max: u32,
    smoothing: f64,
    tolerance: f64,
    long_factor: f64,
    warmup: u32,
    probe_every: u32,
    // State: the estimate with its fraction, the long-term RTT in ns, how
    // many windows fed it so far, windows since the last probe, and the
    // estimate to return to while a probe runs.
    estimate: f64,
    long_rtt: f64,
    windows: u32,
    since_probe: u32,
    probing: Option<f64>,
}

/// Builder for [`Gradient`].
#[derive(Clone, Debug)]
#[must_use]
pub struct GradientBuilder {
    limits: (u32, u32, u32),
    smoothing: f64,
    tolerance: f64,
    long_windows: u32,
    warmup: u32,
    probe_every: u32,
}

impl Gradient {
    /// Defaults: limits 1 ..= 1000 starting at 20, smoothing 0.2, tolerance
    /// 1.05, long-term average over 100 windows after a warm-up of 5, a
    /// probe every 50 windows.
    pub fn builder() -> GradientBuilder {
        GradientBuilder {
            limits: (1, 20, 1000),
            smoothing: 0.2,
            tolerance: 1.05,
            long_windows: 100,
            warmup: 5,
            probe_every: 50,
        }
    }
}

impl GradientBuilder {
    /// Smallest, initial and largest limit.
    pub fn limits(mut self, min: u32, initial: u32, max: u32) -> Self {
        self.limits = (min, initial, max);
        self
    }
    /// How far each window moves the limit toward its target, in `(0, 1)`.
    pub fn smoothing(mut self, s: f64) -> Self {
        self.smoothing = s;
        self
    }
    /// How much slower than the long-term RTT a window may be before the
    /// limit shrinks (at least 1).
    pub fn tolerance(mut self, t: f64) -> Self {
        self.tolerance = t;
        self
    }
    /// The long-term RTT is an exponential average over about this many
    /// windows, after a plain average over the first `warmup` windows.
    pub fn long_term(mut self, windows: u32, warmup: u32) -> Self {
        self.long_windows = windows;
        self.warmup = warmup;
        self
    }
    /// Dip the limit to half for one window every `windows` windows, to
    /// re-measure the uncongested latency (0 turns probing off).
    pub fn probe_every(mut self, windows: u32) -> Self {
        self.probe_every = windows;
        self
    }
    /// Validates the settings.
    pub fn build(self) -> Result<Gradient, ConfigError> {
        let (min, initial, max) = self.limits;
        check_bounds(min, initial, max)?;
        check_fraction("smoothing", self.smoothing, false)?;
        if !(self.tolerance.is_finite() && self.tolerance >= 1.0) {
            return Err(ConfigError::InvalidMultiplier {
                field: "tolerance",
                value: self.tolerance,
            });
        }
        if self.long_windows == 0 {
            return Err(ConfigError::Zero {
                field: "long_term windows",
            });
        }
        Ok(Gradient {
            min,
            initial,
            max,
            smoothing: self.smoothing,
            tolerance: self.tolerance,
            long_factor: 2.0 / (f64::from(self.long_windows) + 1.0),
            warmup: self.warmup,
            probe_every: self.probe_every,
            estimate: f64::from(initial),
            long_rtt: 0.0,
            windows: 0,
            since_probe: 0,
            probing: None,
        })
    }
}

impl Gradient {
    /// The long-term round-trip time it currently holds, in nanoseconds.
    pub fn long_rtt_ns(&self) -> u64 {
        self.long_rtt as u64
    }

    fn learn(&mut self, short: f64) {
        self.windows = self.windows.saturating_add(1);
        if self.windows <= self.warmup.max(1) {
            // Plain running mean while warming up.
            self.long_rtt += (short - self.long_rtt) / f64::from(self.windows);
            return;
        }
        let factor = if short <= self.long_rtt * self.tolerance {
            self.long_factor
        } else {
            self.long_factor / 10.0
        };
        self.long_rtt += (short - self.long_rtt) * factor;
        if self.long_rtt > 2.0 * short {
            // Recovering: let the baseline come down fast.
            self.long_rtt = self.long_rtt * 0.9 + short * 0.1;
        }
    }
}

impl LimitAlgorithm for Gradient {
    fn initial_limit(&self) -> u32 {
        self.initial
    }

    fn update(&mut self, limit: u32, sample: &WindowSample) -> u32 {
        if sample.completed == 0 && sample.dropped == 0 {
            return limit;
        }
        let mut short = sample.mean_rtt_ns as f64;
        if sample.completed == 0 || short <= 0.0 {
            short = if self.long_rtt > 0.0 {
                self.long_rtt * 2.0
            } else {
                1.0
            };
        } else if sample.dropped > 0 && self.long_rtt > 0.0 {
            short = short.max(self.long_rtt * 2.0);
        }
        let limit = if let Some(saved) = self.probing.take() {
            // The window that ended ran at half the limit: its latency is
            // the best estimate of the uncongested one.
            if sample.dropped == 0 && short < self.long_rtt {
                self.long_rtt = short;
            }
            self.estimate = saved;
            saved as u32
        } else {
            // The engine may have been given another limit meanwhile (or
            // clamped ours); start from what is in force.
            if (self.estimate - f64::from(limit)).abs() >= 1.0 {
                self.estimate = f64::from(limit);
            }
            self.learn(short);
            limit
        };
        let gradient = (self.tolerance * self.long_rtt / short).clamp(0.5, 1.0);
        let queue = f64::from(((limit as u64).isqrt() / 2).max(1) as u32);
        let used = u64::from(sample.in_flight) * 2 >= u64::from(limit);
        // The queue allowance is added only while latency is within
        // tolerance: added always (as in Gradient2), it alone holds the limit
        // `queue` above capacity, which for small limits is far above it.
        let mut target = self.estimate * gradient + if gradient >= 1.0 { queue } else { 0.0 };
        if !used && target > self.estimate {
            target = self.estimate;
        }
        self.estimate = (self.estimate * (1.0 - self.smoothing) + target * self.smoothing)
            .clamp(f64::from(self.min), f64::from(self.max));
        self.since_probe += 1;
        if self.probe_every > 0 && self.since_probe >= self.probe_every {
            self.since_probe = 0;
            self.probing = Some(self.estimate);
            return ((self.estimate / 2.0) as u32).max(self.min);
        }
        self.estimate as u32
    }

    fn reconfigure(&mut self, new: Self, limit: u32) -> u32 {
        // Keep the measurements (long-term RTT, estimate, probe schedule);
        // take the settings; move the estimate and the limit into the new
        // bounds.
        let (min, max) = (f64::from(new.min), f64::from(new.max));
        *self = Gradient {
            estimate: self.estimate.clamp(min, max),
            long_rtt: self.long_rtt,
            windows: self.windows,
            since_probe: self.since_probe,
            probing: self.probing.map(|saved| saved.clamp(min, max)),
            ..new
        };
        limit.clamp(self.min, self.max)
    }

    /// The estimate, the long-term RTT, the windows seen, the windows since
    /// the last probe, and the estimate a running probe returns to.
    fn save_measurements(&self, words: &mut [u64; MEASUREMENT_WORDS]) -> usize {
        *words = [
            self.estimate.to_bits(),
            self.long_rtt.to_bits(),
            u64::from(self.windows),
            u64::from(self.since_probe),
            u64::from(self.probing.is_some()),
            self.probing.unwrap_or(0.0).to_bits(),
        ];
        MEASUREMENT_WORDS
    }

    fn restore_measurements(&mut self, words: &[u64]) -> bool {
        let &[estimate, long_rtt, windows, since_probe, probing, saved] = words else {
            return false;
        };
        let (estimate, long_rtt, saved) = (
            f64::from_bits(estimate),
            f64::from_bits(long_rtt),
            f64::from_bits(saved),
        );
        let (min, max) = (f64::from(self.min), f64::from(self.max));
        let (Ok(windows), Ok(since_probe)) = (u32::try_from(windows), u32::try_from(since_probe))
        else {
            return false;
        };
        // An estimate saved under other bounds is moved into these, as
        // `reconfigure` moves it.
        if !estimate.is_finite() || !long_rtt.is_finite() || long_rtt < 0.0 || probing > 1 {
            return false;
        }
        if probing == 1 && !saved.is_finite() {
            return false;
        }
        self.estimate = estimate.clamp(min, max);
        self.long_rtt = long_rtt;
        self.windows = windows;
        self.since_probe = since_probe;
        self.probing = (probing == 1).then(|| saved.clamp(min, max));
        true
    }
}

#[cfg(all(test, not(tenlives_loom)))]
mod tests {
    use super::*;

    fn sample(rtt_ms: u64, dropped: u64, in_flight: u32) -> WindowSample {
        WindowSample {
            completed: 100,
            dropped,
            mean_rtt_ns: rtt_ms * 1_000_000,
            in_flight,
        }
    }

    #[test]
    fn aimd_grows_only_when_used_and_backs_off_on_drops_and_slowness() {
        let mut a = Aimd::builder()
            .limits(2, 10, 12)
            .latency_threshold(Duration::from_millis(100))
            .build()
            .unwrap();
        assert_eq!(a.update(10, &sample(10, 0, 4)), 10, "less than half used");
        assert_eq!(a.update(10, &sample(10, 0, 5)), 11);
        assert_eq!(a.update(12, &sample(10, 0, 12)), 12, "capped at max");
        assert_eq!(
            a.update(10, &sample(150, 0, 10)),
            9,
            "too slow counts as a drop"
        );
        assert_eq!(a.update(2, &sample(10, 1, 2)), 2, "floored at min");
    }

    #[test]
    fn builders_reject_bad_input() {
        assert_eq!(
            Aimd::builder().limits(0, 1, 2).build().unwrap_err(),
            ConfigError::Zero { field: "min_limit" }
        );
        assert!(Aimd::builder().limits(5, 1, 10).build().is_err());
        assert!(Aimd::builder().limits(5, 6, 4).build().is_err());
        assert!(matches!(
            Aimd::builder().backoff(1.0).build().unwrap_err(),
            ConfigError::InvalidFraction { .. }
        ));
        assert!(matches!(
            Aimd::builder().backoff(f64::NAN).build().unwrap_err(),
            ConfigError::InvalidFraction { .. }
        ));
        assert!(Aimd::builder().increase(0).build().is_err());
        assert!(
            Aimd::builder()
                .latency_threshold(Duration::ZERO)
                .build()
                .is_err()
        );
        assert!(Gradient::builder().smoothing(0.0).build().is_err());
        assert!(Gradient::builder().tolerance(0.9).build().is_err());
        assert!(Gradient::builder().long_term(0, 1).build().is_err());
    }

    #[test]
    fn gradient_holds_its_baseline_under_sustained_congestion() {
        let mut g = Gradient::builder().limits(1, 20, 1000).build().unwrap();
        let mut limit = 20;
        for _ in 0..10 {
            limit = g.update(limit, &sample(10, 0, limit));
        }
        let baseline = g.long_rtt_ns();
        for _ in 0..50 {
            limit = g.update(limit, &sample(30, 0, limit));
        }
        // 50 congested windows move the baseline by well under the
        // congestion itself (20 ms).
        assert!(
            g.long_rtt_ns() < baseline + 6_000_000,
            "{} vs {}",
            g.long_rtt_ns(),
            baseline
        );
        assert!(limit < 20, "the limit came down: {limit}");
    }
}
