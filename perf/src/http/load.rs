//! The open-loop load generator.
//!
//! A [`RatePlan`] says how many requests per second to send, piecewise
//! constant over time. Arrival `i` is scheduled at the instant the plan's
//! cumulative count reaches `i + 1`; the generator wakes every millisecond
//! and sends every arrival that is due, to every target at once, without
//! waiting for answers (open loop: a slow service does not slow the
//! arrivals). Latency is measured from each arrival's *scheduled* instant,
//! so a generator that falls behind shows up in the latencies instead of
//! hiding them (no coordinated omission).
//!
//! Bounds: at most `max_in_flight` requests per target (an arrival beyond
//! that is counted as not sent); each request ends within `client_timeout`;
//! the loop ends when the plan's last arrival is sent; the requests still in
//! flight are then given `client_timeout` plus two seconds, and any left are
//! cancelled and counted as failed (abandoned), so every request sent is
//! accounted for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::front::HttpClient;
use super::record::{Outcome, Recorder};
use super::timeline::{PhaseKind, SPIKE_SHARES, Timeline};

/// One piece of a [`RatePlan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Requests per second.
    pub rate: u32,
    /// How long.
    pub length: Duration,
}

/// Requests per second over time, piecewise constant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RatePlan {
    segments: Vec<Segment>,
}

const NANOS: u128 = 1_000_000_000;

impl RatePlan {
    /// `segments`, in order.
    pub fn new(segments: Vec<Segment>) -> RatePlan {
        RatePlan { segments }
    }

    /// `rate` per second for `length`.
    pub fn constant(rate: u32, length: Duration) -> RatePlan {
        RatePlan::new(vec![Segment { rate, length }])
    }

    /// `base` per second, `factor` times that between 30 % and 50 % of
    /// `length` (the `spike` scenario).
    pub fn spike(base: u32, factor: u32, length: Duration) -> RatePlan {
        let at = |per_mille: u32| length * per_mille / 1000;
        let (from, to) = (at(SPIKE_SHARES.0), at(SPIKE_SHARES.1));
        RatePlan::new(vec![
            Segment {
                rate: base,
                length: from,
            },
            Segment {
                rate: base.saturating_mul(factor),
                length: to - from,
            },
            Segment {
                rate: base,
                length: length - to,
            },
        ])
    }

    /// The segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Total length.
    pub fn length(&self) -> Duration {
        self.segments.iter().map(|s| s.length).sum()
    }

    /// Arrivals in a whole segment.
    fn count(s: &Segment) -> u64 {
        u64::try_from(u128::from(s.rate) * s.length.as_nanos() / NANOS).unwrap_or(u64::MAX)
    }

    /// Arrivals scheduled at or before `t`.
    pub fn due(&self, t: Duration) -> u64 {
        let mut start = Duration::ZERO;
        let mut before = 0u64;
        for s in &self.segments {
            if t < start + s.length {
                let into = (t - start).as_nanos();
                let n = u128::from(s.rate) * into / NANOS;
                return before + u64::try_from(n).unwrap_or(u64::MAX);
            }
            before += Self::count(s);
            start += s.length;
        }
        before
    }

    /// Every arrival of the plan.
    pub fn total(&self) -> u64 {
        self.segments.iter().map(Self::count).sum()
    }

    /// When arrival `i` (from 0) is scheduled; past the last, the end.
    pub fn time_of(&self, i: u64) -> Duration {
        let mut start = Duration::ZERO;
        let mut before = 0u64;
        for s in &self.segments {
            let n = Self::count(s);
            if i < before + n {
                let k = u128::from(i - before + 1);
                let rate = u128::from(s.rate.max(1));
                let nanos = (k * NANOS).div_ceil(rate);
                return start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
            }
            before += n;
            start += s.length;
        }
        start
    }

    /// The rate at `t` (0 past the end).
    pub fn rate_at(&self, t: Duration) -> u32 {
        let mut start = Duration::ZERO;
        for s in &self.segments {
            start += s.length;
            if t < start {
                return s.rate;
            }
        }
        0
    }
}

/// Where the generator sends requests, and what it records there.
#[derive(Clone)]
pub struct Target {
    /// The front's URL.
    pub uri: Uri,
    /// What is measured.
    pub recorder: Arc<Mutex<Recorder>>,
    /// Requests in flight to it right now.
    pub in_flight: Arc<AtomicU64>,
}

/// Locks a recorder, whether or not a request task panicked with it.
pub fn lock(recorder: &Mutex<Recorder>) -> MutexGuard<'_, Recorder> {
    recorder.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The generator's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Most requests in flight per target.
    pub max_in_flight: u64,
    /// The longest a request may take before the generator gives up on it.
    pub client_timeout: Duration,
}

/// A request in flight: when it is dropped without an outcome (its task
/// was cancelled), it counts as failed (abandoned).
struct Pending {
    target: Target,
    kind: PhaseKind,
    scheduled: Instant,
    ended: bool,
}

impl Pending {
    fn end(mut self, outcome: Outcome) {
        self.finish(outcome);
    }

    fn finish(&mut self, outcome: Outcome) {
        if !self.ended {
            self.ended = true;
            let latency = Instant::now().saturating_duration_since(self.scheduled);
            lock(&self.target.recorder).end(self.kind, outcome, latency);
            // ordering: Relaxed; the gauge is a count, read for bounds and
            // display only.
            self.target.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(Outcome::FailedAbandoned);
    }
}

/// One request: the outcome the front's answer (or its absence) means.
async fn request(client: HttpClient, uri: Uri, timeout: Duration) -> Outcome {
    let mut req = Request::new(Empty::<Bytes>::new());
    *req.uri_mut() = uri;
    let exchange = async {
        let response = client
            .request(req)
            .await
            .map_err(|_| Outcome::FailedTransport)?;
        let status = response.status().as_u16();
        let outcome = Outcome::of_answer(
            status,
            response.headers().get("x-tenlives").map(|v| v.as_bytes()),
        );
        response
            .into_body()
            .collect()
            .await
            .map_err(|_| Outcome::FailedTransport)?;
        Ok::<Outcome, Outcome>(outcome)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(outcome) | Err(outcome)) => outcome,
        Err(_) => Outcome::FailedTimeout,
    }
}

/// Sends `plan`'s arrivals, from `start`, to every target; `timeline_at` is
/// the timeline's time at `start` (to label each request with the phase it
/// was sent in). Returns when every request sent has ended. See the
/// [module documentation](self).
pub async fn generate(
    plan: &RatePlan,
    start: Instant,
    timeline: &Timeline,
    timeline_at: Duration,
    targets: &[Target],
    client: &HttpClient,
    bounds: Bounds,
) {
    let total = plan.total();
    let mut tasks = JoinSet::new();
    let mut ticks = tokio::time::interval_at(start, Duration::from_millis(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut issued = 0u64;
    // Bounded by time: `due` reaches `total` once the plan's length has
    // passed, which ends the loop at the next tick.
    while issued < total {
        ticks.tick().await;
        let due = plan
            .due(Instant::now().saturating_duration_since(start))
            .min(total);
        while issued < due {
            let at = plan.time_of(issued);
            let kind = timeline.phase_at(timeline_at + at).kind;
            let scheduled = start + at;
            for target in targets {
                // ordering: Relaxed; see `Pending::finish`.
                let in_flight = target.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                if in_flight > bounds.max_in_flight {
                    target.in_flight.fetch_sub(1, Ordering::Relaxed);
                    lock(&target.recorder).arrival(kind, false, in_flight - 1);
                    continue;
                }
                lock(&target.recorder).arrival(kind, true, in_flight);
                let pending = Pending {
                    target: target.clone(),
                    kind,
                    scheduled,
                    ended: false,
                };
                let (client, uri) = (client.clone(), target.uri.clone());
                tasks.spawn(async move {
                    let outcome = request(client, uri, bounds.client_timeout).await;
                    pending.end(outcome);
                });
            }
            issued += 1;
        }
        while tasks.try_join_next().is_some() {}
    }
    let drain = bounds.client_timeout + Duration::from_secs(2);
    let _ = tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await;
    // Whatever is left is cancelled; each records itself as abandoned.
    tasks.abort_all();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_constant_plan_spaces_arrivals_evenly() {
        let p = RatePlan::constant(100, 10 * S);
        assert_eq!(p.total(), 1000);
        assert_eq!(p.due(Duration::ZERO), 0);
        assert_eq!(p.due(Duration::from_millis(10)), 1);
        assert_eq!(p.due(Duration::from_millis(19)), 1);
        assert_eq!(p.due(5 * S), 500);
        assert_eq!(p.due(100 * S), 1000);
        assert_eq!(p.time_of(0), Duration::from_millis(10));
        assert_eq!(p.time_of(999), 10 * S);
        assert_eq!(p.time_of(5000), 10 * S);
        for i in [0, 1, 17, 500, 999] {
            let t = p.time_of(i);
            assert_eq!(p.due(t), i + 1, "arrival {i} at {t:?}");
            assert_eq!(p.due(t - Duration::from_nanos(1)), i);
        }
    }

    #[test]
    fn a_spike_plan_multiplies_the_middle() {
        let p = RatePlan::spike(100, 5, 10 * S);
        assert_eq!(p.total(), 300 + 1000 + 500);
        assert_eq!(p.rate_at(Duration::from_millis(2999)), 100);
        assert_eq!(p.rate_at(3 * S), 500);
        assert_eq!(p.rate_at(5 * S), 100);
        assert_eq!(p.rate_at(10 * S), 0);
        assert_eq!(p.due(3 * S), 300);
        assert_eq!(p.due(4 * S), 800);
        // Arrival times never go backwards and match `due`.
        let mut last = Duration::ZERO;
        for i in 0..p.total() {
            let t = p.time_of(i);
            assert!(t >= last);
            assert!(p.due(t) > i);
            last = t;
        }
        assert_eq!(p.length(), 10 * S);
    }

    #[test]
    fn odd_rates_and_lengths_round_down_per_segment() {
        let p = RatePlan::new(vec![
            Segment {
                rate: 3,
                length: Duration::from_millis(1500),
            },
            Segment { rate: 7, length: S },
        ]);
        assert_eq!(p.total(), 4 + 7);
        assert_eq!(p.due(Duration::from_millis(1500)), 4);
        assert_eq!(
            p.time_of(4),
            Duration::from_millis(1500) + Duration::from_nanos(142_857_143)
        );
    }
}
