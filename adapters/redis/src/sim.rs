//! The lease protocol in virtual time: `N` instances sharing one quota
//! through a simulated Redis, deterministic for a seed and fast (a 10 s run
//! of a fleet at 10 000 requests a second takes milliseconds in a release
//! build).
//!
//! Nothing of the protocol is re-implemented here. Each instance is the
//! limiter's own state — the lease words, the share and fallback engine
//! limiters and the request path (`try_acquire_at`), the lease sizing and
//! the refresh plan (what to give back, what to ask for, whether to call at
//! all), and the way a reply is applied — driven by a [`ManualClock`]
//! instead of a tokio task. Redis is
//! [`gcra::Reference`](crate::gcra::Reference), the exact model the Lua
//! script is checked against call for call (`tests/script.rs`), fed
//! Redis's clock in whole microseconds.
//!
//! What the simulation adds is only the world around them: request
//! arrivals (a [`Demand`] pattern), the network (a one-way latency with
//! seeded jitter on each leg, so a call is decided by Redis half-way and
//! applied when its answer arrives), refresh ticks (each instance starts at
//! a seeded offset within the first interval, and waits one interval after
//! each call completes, as the background task does), and a crash (an
//! instance that stops, holding its lease).
//!
//! [`Outcome`] measures what `docs/distributed.md` states and plots: the
//! largest over-admission over every window of every length
//! (`max (admitted − w/T − b)`), the admissions in the worst window of a
//! given length, the shortfall under saturating demand, and Redis calls per
//! 1 000 admitted requests.

use core::cmp::Reverse;
use core::time::Duration;
use std::collections::BinaryHeap;

use tenlives_engine::breaker::{CircuitBreaker, Outcome as CallOutcome, RawPermit};
use tenlives_engine::rate::Quota;
use tenlives_engine::time::{ManualClock, Timestamp};

use crate::config::{FleetConfig, FleetError};
use crate::gcra::{GcraParams, Reference};
use crate::limiter::{Shared, Sizing, default_breaker};

/// Redis's clock at the simulation's origin, in µs since the Unix epoch (a
/// 16-digit time, as the real `TIME` gives).
const REDIS_EPOCH_US: u64 = 1_765_000_000_000_000;

/// Who asks for requests, and how fast.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Demand {
    /// Every instance asks for `overload / N` of the quota's rate, all the
    /// run.
    Saturating {
        /// The fleet's demand as a multiple of the quota (above 1).
        overload: f64,
    },
    /// Instance `i` asks for a share proportional to `2^i` of `overload`
    /// times the quota: one small instance, one that alone would take half.
    Uneven {
        /// The fleet's demand as a multiple of the quota.
        overload: f64,
    },
    /// A base load (`base` times the quota, spread evenly) with surges of
    /// `surge` times the quota for `on` out of every `period`: between
    /// surges the bucket refills while the leases are sized for the base
    /// load, the case where held leases add to a full bucket.
    Bursts {
        /// The load between surges, as a multiple of the quota.
        base: f64,
        /// The load during a surge, as a multiple of the quota.
        surge: f64,
        /// How long a surge lasts.
        on: Duration,
        /// One surge starts every `period`.
        period: Duration,
    },
    /// Saturating, and instance 0 crashes at `at`: it stops asking and
    /// refreshing, and the tokens it holds are never spent nor given back.
    Crash {
        /// The fleet's demand as a multiple of the quota.
        overload: f64,
        /// When instance 0 crashes, from the start.
        at: Duration,
    },
}

impl Demand {
    /// The four patterns of `docs/distributed.md`: saturating (twice the
    /// quota), uneven (twice the quota, split 1:2:4:8), bursts (0.6 of the
    /// quota with a surge of 3 times it for 100 ms every second), and a
    /// crash (saturating, instance 0 gone at 5 s).
    pub fn standard() -> [Demand; 4] {
        [
            Demand::Saturating { overload: 2.0 },
            Demand::Uneven { overload: 2.0 },
            Demand::Bursts {
                base: 0.6,
                surge: 3.0,
                on: Duration::from_millis(100),
                period: Duration::from_secs(1),
            },
            Demand::Crash {
                overload: 2.0,
                at: Duration::from_secs(5),
            },
        ]
    }

    /// A short name, for tables and file names.
    pub fn name(&self) -> &'static str {
        match self {
            Demand::Saturating { .. } => "saturating",
            Demand::Uneven { .. } => "uneven",
            Demand::Bursts { .. } => "bursts",
            Demand::Crash { .. } => "crash",
        }
    }

    /// Whether every instance alive asks for more than the quota allows
    /// (the under-admission bound applies).
    pub fn is_saturating(&self) -> bool {
        !matches!(self, Demand::Bursts { .. })
    }

    /// Requests per second instance `i` of `n` asks for at `t` (0: none),
    /// for a quota of `rate_per_s`.
    fn rate(&self, i: u32, n: u32, t: Duration, rate_per_s: f64) -> f64 {
        let even = rate_per_s / f64::from(n);
        match *self {
            Demand::Saturating { overload } => overload * even,
            Demand::Uneven { overload } => {
                let weights = 2f64.powi(n as i32) - 1.0;
                overload * rate_per_s * 2f64.powi(i as i32) / weights
            }
            Demand::Bursts {
                base,
                surge,
                on,
                period,
            } => {
                let phase = t.as_nanos() % period.as_nanos().max(1);
                if phase < on.as_nanos() {
                    surge * even
                } else {
                    base * even
                }
            }
            Demand::Crash { overload, at } => {
                if i == 0 && t >= at {
                    0.0
                } else {
                    overload * even
                }
            }
        }
    }

    fn crash(&self) -> Option<Duration> {
        match *self {
            Demand::Crash { at, .. } => Some(at),
            _ => None,
        }
    }
}

/// One simulated fleet.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The fleet-wide quota.
    pub quota: Quota,
    /// Instances sharing it.
    pub instances: u32,
    /// Each instance's maximum share (so its largest lease is
    /// `max(1, ⌊max_share · b⌋)` and its own limiter admits
    /// `⌈max_share · rate⌉` per period).
    pub max_share: f64,
    /// The refresh interval `I`.
    pub refresh_interval: Duration,
    /// How long a lease is valid after the call that granted it started.
    pub lease_duration: Duration,
    /// The one-way network latency to Redis (each leg).
    pub latency: Duration,
    /// Each leg takes `latency` plus a uniform random part in `[0, jitter]`.
    pub jitter: Duration,
    /// The length of the run.
    pub duration: Duration,
    /// When the measured window for under-admission starts (the warm-up
    /// before it holds the first leases and the initial burst).
    pub warmup: Duration,
    /// The demand pattern.
    pub demand: Demand,
    /// Seed of the arrivals, the latencies and the instances' start offsets.
    pub seed: u64,
    /// Redis unreachable from the first instant to the second (from the
    /// start): a call Redis would decide then fails after the Redis
    /// timeout (100 ms), through each instance's circuit breaker (the
    /// limiter's default: open after 3 consecutive failures for 500 ms),
    /// and the failure policy (degraded) decides.
    pub outage: Option<(Duration, Duration)>,
}

impl SimConfig {
    /// The fleet of `docs/distributed.md`: 10 000 requests a second shared
    /// by 4 instances, each with a maximum share of 0.5, largest lease 50
    /// (burst 100), refreshed every 10 ms, leases valid 500 ms, 0.5–1 ms
    /// each way to Redis, 10 s, the first 0.5 s of warm-up.
    pub fn standard(demand: Demand, seed: u64) -> SimConfig {
        SimConfig {
            quota: Quota::per_second(10_000)
                .and_then(|q| q.with_burst(100))
                .unwrap_or_else(|_| unreachable!("a valid quota")),
            instances: 4,
            max_share: 0.5,
            refresh_interval: Duration::from_millis(10),
            lease_duration: Duration::from_millis(500),
            latency: Duration::from_micros(500),
            jitter: Duration::from_micros(500),
            duration: Duration::from_secs(10),
            warmup: Duration::from_millis(500),
            demand,
            seed,
            outage: None,
        }
    }

    /// The same fleet with largest lease `lease`: the quota's burst becomes
    /// `⌈lease / max_share⌉`, so that `⌊max_share · b⌋ = lease` (the
    /// lease, the burst and the share move together in the limiter's
    /// configuration; holding the share fixed keeps every instance able to
    /// take `max_share` of the rate).
    ///
    /// # Errors
    ///
    /// A burst the quota refuses.
    pub fn with_lease(mut self, lease: u32) -> Result<SimConfig, FleetError> {
        let burst = (f64::from(lease) / self.max_share).ceil() as u32;
        self.quota = self.quota.with_burst(burst.max(1))?;
        Ok(self)
    }

    /// The configuration each instance's limiter is built from.
    pub fn fleet_config(&self) -> FleetConfig {
        FleetConfig::new("sim", self.quota)
            .max_share(self.max_share)
            .refresh_interval(self.refresh_interval)
            .lease_duration(self.lease_duration)
            .expected_instances(self.instances)
    }

    /// The largest lease `L`, in tokens.
    pub fn max_lease(&self) -> u64 {
        u64::from(self.fleet_config().max_lease())
    }

    /// `T` in ns, as a float (for measurements).
    fn t_ns(&self, params: &GcraParams) -> f64 {
        params.p as f64 * 1_000.0 / params.r as f64
    }

    /// The stated over-admission bound's slack beyond `b + w / T`, in
    /// tokens: `N·L`, plus what the network adds — a grant decided by Redis
    /// in a window of length `w` arrives over a window up to `jitter`
    /// longer — and one µs of Redis's clock granularity.
    pub fn over_admission_slack(&self) -> f64 {
        let params = match GcraParams::from_quota(&self.quota) {
            Ok(p) => p,
            Err(_) => return f64::NAN,
        };
        let t = self.t_ns(&params);
        let jitter = self.jitter.as_nanos() as f64 + 1_000.0;
        (u64::from(self.instances) * self.max_lease()) as f64 + jitter / t
    }
}

/// What one run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The largest lease `L`.
    pub max_lease: u64,
    /// The quota's burst `b`.
    pub burst: u64,
    /// Requests admitted, fleet-wide, over the run.
    pub admitted: u64,
    /// Requests admitted by each instance.
    pub per_instance: Vec<u64>,
    /// Requests asked for, fleet-wide.
    pub attempts: u64,
    /// The largest `admitted(window) − w/T − b` over every window `[s, e]`
    /// of every length `w = e − s` (in tokens; negative when no window
    /// reaches `b + w/T`).
    pub excess: f64,
    /// The largest `admitted([0, e]) − e/T − b` over every `e`: the
    /// windows that open before any instance holds a token (a fresh key),
    /// where the stated bound is `b + w/T` exactly.
    pub excess_from_start: f64,
    /// The most admitted in any window of [`Outcome::window`].
    pub worst_window: u64,
    /// The window length of [`Outcome::worst_window`] (1 s, or the run when
    /// shorter).
    pub window: Duration,
    /// `w/T` for that window: what the quota allows in it without the burst.
    pub window_quota: f64,
    /// Admitted in `[warmup, duration]`.
    pub measured: u64,
    /// `(duration − warmup) / T`.
    pub measured_quota: f64,
    /// Script calls made to Redis.
    pub redis_calls: u64,
    /// Tokens Redis granted, gave back, and lost with the crashed instance.
    pub granted: u64,
    /// Tokens given back.
    pub returned: u64,
    /// Tokens held by the crashed instance when it crashed (never spent).
    pub crashed_held: u64,
    /// The most tokens any instance held right after a reply was applied:
    /// the premise of the over-admission bound is that it never exceeds
    /// the largest lease `L` (a grant is at most the target minus what
    /// was held at the call's start).
    pub max_held: u64,
    /// Requests admitted under the failure policy (Redis unreachable).
    pub degraded_admitted: u64,
    /// Script calls that failed or that the breaker refused.
    pub redis_errors: u64,
    /// The last admission decided with a lease token (not degraded), from
    /// the start, in ns (`None`: none).
    pub last_lease_admission: Option<u64>,
}

impl Outcome {
    /// Redis calls per 1 000 admitted requests.
    pub fn calls_per_1000(&self) -> f64 {
        self.redis_calls as f64 * 1_000.0 / (self.admitted.max(1) as f64)
    }

    /// Over-admission in the worst window of [`Outcome::window`]:
    /// `(admitted − w/T − b) / (w/T)`, negative when no such window
    /// reaches the quota plus the burst.
    pub fn over_fraction(&self) -> f64 {
        (self.worst_window as f64 - self.window_quota - self.burst as f64) / self.window_quota
    }

    /// The shortfall in the measured window, as a fraction of its quota
    /// (0 when the fleet admitted at least the quota).
    pub fn under_fraction(&self) -> f64 {
        ((self.measured_quota - self.measured as f64) / self.measured_quota).max(0.0)
    }
}

/// SplitMix64 (Steele, Lea and Flood): small, seeded, and enough for
/// arrivals and jitter.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn upto(&mut self, max_ns: u64) -> u64 {
        if max_ns == 0 {
            0
        } else {
            self.next_u64() % (max_ns + 1)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A request arrives at instance `i`.
    Arrival(u32),
    /// Instance `i`'s refresh tick.
    Refresh(u32),
    /// Instance `i`'s call (which gave back `ret` and started at `start`)
    /// failed: Redis was unreachable and the timeout expired.
    Failed { i: u32, ret: u64, start: u64 },
    /// Redis runs instance `i`'s call (`want`, `ret`), which started at
    /// `start` (ns).
    Decide {
        i: u32,
        want: u64,
        ret: u64,
        start: u64,
    },
    /// The answer reaches instance `i`.
    Answer {
        i: u32,
        granted: u64,
        ret: u64,
        start: u64,
    },
}

struct Instance {
    shared: Shared,
    sizing: Sizing,
    breaker: CircuitBreaker,
    /// The breaker's permit of the call in flight.
    permit: Option<RawPermit>,
    crashed: bool,
}

/// Runs one simulated fleet.
///
/// # Errors
///
/// [`FleetError`] for a configuration the limiter itself would refuse.
pub fn run(config: &SimConfig) -> Result<Outcome, FleetError> {
    let fleet = config.fleet_config();
    fleet.validate()?;
    let params = GcraParams::from_quota(&config.quota)?;
    let max_lease = fleet.max_lease();
    let n = config.instances;
    let clock = ManualClock::new();
    let mut rng = Rng(config.seed ^ 0x7465_6e6c_6976_6573);
    let mut instances = Vec::with_capacity(n as usize);
    let mut queue: BinaryHeap<Reverse<(u64, u64, Event)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |queue: &mut BinaryHeap<_>, at: u64, e: Event| {
        seq += 1;
        queue.push(Reverse((at, seq, e)));
    };
    let interval_ns = config.refresh_interval.as_nanos() as u64;
    for i in 0..n {
        instances.push(Instance {
            shared: Shared::new(&fleet, max_lease)?,
            sizing: Sizing::new(&fleet, Timestamp::ZERO),
            breaker: CircuitBreaker::new(fleet.breaker.clone().unwrap_or_else(default_breaker)),
            permit: None,
            crashed: false,
        });
        let offset = rng.upto(interval_ns);
        push(&mut queue, offset, Event::Refresh(i));
        push(&mut queue, offset, Event::Arrival(i));
    }
    let mut redis = Reference::new();
    let rate_per_s = f64::from(config.quota.rate()) / config.quota.period().as_secs_f64();
    let end = config.duration.as_nanos() as u64;
    let latency = config.latency.as_nanos() as u64;
    let jitter = config.jitter.as_nanos() as u64;
    let crash_at = config.demand.crash().map(|d| d.as_nanos() as u64);
    let timeout = fleet.redis_timeout.as_nanos() as u64;
    let down = |t: u64| {
        config
            .outage
            .is_some_and(|(a, b)| (a.as_nanos() as u64..b.as_nanos() as u64).contains(&t))
    };
    let mut admissions: Vec<u64> = Vec::new();
    let mut per_instance = vec![0u64; n as usize];
    let (mut attempts, mut calls, mut crashed_held) = (0u64, 0u64, 0u64);
    let mut max_held = 0u64;
    let mut last_lease_admission = None;

    while let Some(Reverse((at, _, event))) = queue.pop() {
        let now = clock.advance_to(Timestamp::from_nanos(at));
        if let Some(c) = crash_at
            && at >= c
            && !instances[0].crashed
        {
            instances[0].crashed = true;
            crashed_held = instances[0].shared.stats().lease_tokens;
        }
        match event {
            Event::Arrival(i) => {
                if at >= end || instances[i as usize].crashed {
                    continue;
                }
                attempts += 1;
                if let Ok(how) = instances[i as usize].shared.try_acquire_at(now) {
                    admissions.push(at);
                    per_instance[i as usize] += 1;
                    if !how.is_degraded() {
                        last_lease_admission = Some(at);
                    }
                }
                let r = config
                    .demand
                    .rate(i, n, Duration::from_nanos(at), rate_per_s);
                // Exponential gaps (Poisson arrivals); none while the rate
                // is 0 (crashed), and at least a ns apart.
                if r > 0.0 {
                    let gap = -(1.0 - rng.unit()).ln() / r * 1e9;
                    push(&mut queue, at + (gap as u64).max(1), Event::Arrival(i));
                }
            }
            Event::Refresh(i) => {
                let inst = &mut instances[i as usize];
                if at >= end || inst.crashed {
                    continue;
                }
                let target = inst.sizing.size(inst.shared.demand(), now);
                let plan = inst.shared.plan(target, now);
                let permit = plan.map(|_| inst.breaker.try_acquire_raw(now));
                match (plan, permit) {
                    (Some(_), Some(Err(_))) => {
                        // The breaker refused: a failed call, at once.
                        inst.shared.apply(None, 0, now, config.lease_duration);
                        push(&mut queue, at + interval_ns, Event::Refresh(i));
                    }
                    (Some((want, give_back)), Some(Ok(raw))) => {
                        inst.permit = Some(raw);
                        let ret = inst.shared.take_back(give_back, params.b);
                        calls += 1;
                        let leg = latency + rng.upto(jitter);
                        let want = want.min(params.b);
                        push(
                            &mut queue,
                            at + leg,
                            Event::Decide {
                                i,
                                want,
                                ret,
                                start: at,
                            },
                        );
                    }
                    _ => push(&mut queue, at + interval_ns, Event::Refresh(i)),
                }
            }
            Event::Failed { i, ret, start } => {
                let inst = &mut instances[i as usize];
                if let Some(raw) = inst.permit.take() {
                    inst.breaker.record(raw, CallOutcome::Failure, now);
                }
                if inst.crashed {
                    continue;
                }
                inst.shared.apply(
                    None,
                    ret,
                    Timestamp::from_nanos(start),
                    config.lease_duration,
                );
                push(&mut queue, at + interval_ns, Event::Refresh(i));
            }
            Event::Decide {
                i,
                want,
                ret,
                start,
            } => {
                if down(at) {
                    // Unreachable: the caller sees its timeout expire.
                    push(
                        &mut queue,
                        (start + timeout).max(at),
                        Event::Failed { i, ret, start },
                    );
                    continue;
                }
                let redis_us = REDIS_EPOCH_US + at / 1_000;
                let reply = redis.decide(&params, redis_us, want, want.min(1), ret);
                let leg = latency + rng.upto(jitter);
                push(
                    &mut queue,
                    at + leg,
                    Event::Answer {
                        i,
                        granted: reply.granted,
                        ret,
                        start,
                    },
                );
            }
            Event::Answer {
                i,
                granted,
                ret,
                start,
            } => {
                let inst = &mut instances[i as usize];
                if let Some(raw) = inst.permit.take() {
                    inst.breaker.record(raw, CallOutcome::Success, now);
                }
                if inst.crashed {
                    continue;
                }
                let reply = crate::gcra::Reply {
                    granted,
                    ahead: 0,
                    wait_us: Some(0),
                    now_us: 0,
                };
                inst.shared.apply(
                    Some(reply),
                    ret,
                    Timestamp::from_nanos(start),
                    config.lease_duration,
                );
                max_held = max_held.max(inst.shared.stats().lease_tokens);
                push(&mut queue, at + interval_ns, Event::Refresh(i));
            }
        }
    }

    let (mut granted, mut returned) = (0u64, 0u64);
    let (mut degraded_admitted, mut redis_errors) = (0u64, 0u64);
    for inst in &instances {
        let s = inst.shared.stats();
        granted += s.granted;
        returned += s.returned;
        degraded_admitted += s.degraded_admitted;
        redis_errors += s.redis_errors;
    }
    let t_ns = config.t_ns(&params);
    let window = config.duration.min(Duration::from_secs(1));
    let warmup = config.warmup.as_nanos() as u64;
    let measured = admissions.iter().filter(|&&t| t >= warmup).count() as u64;
    Ok(Outcome {
        max_lease: u64::from(max_lease),
        burst: params.b,
        admitted: admissions.len() as u64,
        per_instance,
        attempts,
        excess: max_excess(&admissions, t_ns) - params.b as f64,
        excess_from_start: excess_from_start(&admissions, t_ns) - params.b as f64,
        worst_window: worst_window(&admissions, window.as_nanos() as u64),
        window,
        window_quota: window.as_nanos() as f64 / t_ns,
        measured,
        measured_quota: end.saturating_sub(warmup) as f64 / t_ns,
        redis_calls: calls,
        granted,
        returned,
        crashed_held,
        max_held,
        degraded_admitted,
        redis_errors,
        last_lease_admission,
    })
}

/// The largest `count − (t_last − t_first) / T` over every run of
/// consecutive admissions (times sorted, in ns): with `g_k = k − t_k / T`,
/// the window from admission `i` to `j` holds `j − i + 1` over a length
/// `t_j − t_i`, so the answer is `1 + max_j (g_j − min_{i ≤ j} g_i)`.
/// Every window of every length is covered: a window's count only grows by
/// shrinking it to its first and last admission.
pub fn max_excess(times: &[u64], t_ns: f64) -> f64 {
    let mut best = f64::NEG_INFINITY;
    let mut low = f64::INFINITY;
    for (k, &t) in times.iter().enumerate() {
        let g = k as f64 - t as f64 / t_ns;
        low = low.min(g);
        best = best.max(g - low);
    }
    if times.is_empty() { 0.0 } else { best + 1.0 }
}

/// The largest `count([0, t_k]) − t_k / T` over the admissions (times
/// sorted, in ns).
pub fn excess_from_start(times: &[u64], t_ns: f64) -> f64 {
    times
        .iter()
        .enumerate()
        .map(|(k, &t)| (k + 1) as f64 - t as f64 / t_ns)
        .fold(0.0, f64::max)
}

/// The most admissions (times sorted, in ns) in any closed window of
/// length `w_ns`.
pub fn worst_window(times: &[u64], w_ns: u64) -> u64 {
    let mut best = 0usize;
    let mut lo = 0usize;
    for (hi, &t) in times.iter().enumerate() {
        while times[lo] + w_ns < t {
            lo += 1;
        }
        best = best.max(hi + 1 - lo);
    }
    best as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_excess_covers_every_window() {
        // T = 10 ns: 5 admissions at 0..4 ns is 5 − 0.4 over 4 ns.
        let times = [0, 1, 2, 3, 4, 100, 200];
        let e = max_excess(&times, 10.0);
        assert!((e - 4.6).abs() < 1e-9, "{e}");
        // Brute force over every pair.
        let mut brute = f64::NEG_INFINITY;
        for i in 0..times.len() {
            for j in i..times.len() {
                brute = brute.max((j - i + 1) as f64 - (times[j] - times[i]) as f64 / 10.0);
            }
        }
        assert!((e - brute).abs() < 1e-9);
        assert_eq!(worst_window(&times, 4), 5);
        assert_eq!(worst_window(&times, 3), 4);
        assert_eq!(worst_window(&times, 100), 6);
        assert_eq!(max_excess(&[], 1.0), 0.0);
        // From 0: 5 by 4 ns (4.6), 7 by 200 ns (−13).
        assert!((excess_from_start(&times, 10.0) - 4.6).abs() < 1e-9);
    }
}
