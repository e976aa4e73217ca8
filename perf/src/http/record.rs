//! What the load generator measures: every request sorted into one
//! [`Outcome`], counted in a [`Tally`], its latency in an HDR histogram
//! (microseconds, three significant digits), overall, per phase kind and per
//! time bucket.
//!
//! The accounting identity is checked on tallies: every request sent ends
//! as exactly one of succeeded, failed, rejected or shed
//! ([`Tally::balanced`]); every request offered was either sent or not sent
//! because the generator's in-flight bound was reached.

use std::time::Duration;

use hdrhistogram::Histogram;
use tenlives_engine::breaker::BreakerState;

use super::timeline::PhaseKind;

/// Largest latency the histograms hold (longer ones are recorded as this).
pub const MAX_LATENCY_US: u64 = 120_000_000;

/// How one request ended, as the load generator saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// `200`.
    Succeeded,
    /// `502`: the upstream answered `5xx` (or another unexpected status).
    FailedUpstream,
    /// `502`: the front could not reach the upstream (refused, reset, closed
    /// without an answer).
    FailedUnreachable,
    /// `504` from the front, or no answer within the generator's timeout.
    FailedTimeout,
    /// No HTTP answer from the front: the connection was refused, reset or
    /// closed.
    FailedTransport,
    /// The run ended before the request did (it was cancelled).
    FailedAbandoned,
    /// `503` from an open breaker.
    Rejected,
    /// `503` from a full concurrency limit.
    ShedLimit,
    /// `429` from the rate limit.
    ShedRate,
}

impl Outcome {
    /// The outcome of an answer with `status` and the front's `x-tenlives`
    /// header value.
    pub fn of_answer(status: u16, tenlives: Option<&[u8]>) -> Outcome {
        match (status, tenlives) {
            (200, _) => Outcome::Succeeded,
            (429, _) => Outcome::ShedRate,
            (503, Some(b"breaker")) => Outcome::Rejected,
            (503, Some(b"limit")) => Outcome::ShedLimit,
            (504, _) => Outcome::FailedTimeout,
            (502, Some(b"upstream-unreachable")) => Outcome::FailedUnreachable,
            _ => Outcome::FailedUpstream,
        }
    }

    /// Whether the request succeeded.
    pub fn is_success(self) -> bool {
        self == Outcome::Succeeded
    }
}

/// Counts of requests by fate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Arrivals the load plan scheduled.
    pub offered: u64,
    /// Arrivals not sent: the generator's in-flight bound was reached.
    pub not_sent: u64,
    /// Requests sent.
    pub sent: u64,
    /// Answered `200`.
    pub succeeded: u64,
    /// Answered `200` within the latency objective (part of `succeeded`;
    /// see [`goodput`](super::goodput)).
    pub good: u64,
    /// Failed: the upstream's error passed on.
    pub failed_upstream: u64,
    /// Failed: the front could not reach the upstream.
    pub failed_unreachable: u64,
    /// Failed: a timeout (the front's or the generator's).
    pub failed_timeout: u64,
    /// Failed: no HTTP answer.
    pub failed_transport: u64,
    /// Failed: cancelled at the end of the run.
    pub failed_abandoned: u64,
    /// Refused by an open breaker.
    pub rejected: u64,
    /// Refused by the concurrency limit.
    pub shed_limit: u64,
    /// Refused by the rate limit.
    pub shed_rate: u64,
}

impl Tally {
    /// Counts one ended request.
    pub fn record(&mut self, outcome: Outcome) {
        let slot = match outcome {
            Outcome::Succeeded => &mut self.succeeded,
            Outcome::FailedUpstream => &mut self.failed_upstream,
            Outcome::FailedUnreachable => &mut self.failed_unreachable,
            Outcome::FailedTimeout => &mut self.failed_timeout,
            Outcome::FailedTransport => &mut self.failed_transport,
            Outcome::FailedAbandoned => &mut self.failed_abandoned,
            Outcome::Rejected => &mut self.rejected,
            Outcome::ShedLimit => &mut self.shed_limit,
            Outcome::ShedRate => &mut self.shed_rate,
        };
        *slot += 1;
    }

    /// All failures.
    pub fn failed(&self) -> u64 {
        self.failed_upstream
            + self.failed_unreachable
            + self.failed_timeout
            + self.failed_transport
            + self.failed_abandoned
    }

    /// All sheds (concurrency and rate limit).
    pub fn shed(&self) -> u64 {
        self.shed_limit + self.shed_rate
    }

    /// Requests that ended, whatever the way.
    pub fn ended(&self) -> u64 {
        self.succeeded + self.failed() + self.rejected + self.shed()
    }

    /// The accounting identities: sent = succeeded + failed + rejected +
    /// shed, and offered = sent + not sent.
    pub fn balanced(&self) -> bool {
        self.sent == self.ended() && self.offered == self.sent + self.not_sent
    }

    /// `part` of the requests sent, as a fraction (0 when none were sent).
    pub fn share(&self, part: u64) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            part as f64 / self.sent as f64
        }
    }

    /// Failed requests as a fraction of those sent.
    pub fn error_rate(&self) -> f64 {
        self.share(self.failed())
    }

    /// Succeeded requests as a fraction of those sent.
    pub fn success_rate(&self) -> f64 {
        self.share(self.succeeded)
    }

    /// Failed requests as a fraction of those the policies let through
    /// (sent minus rejected and shed).
    pub fn admitted_error_rate(&self) -> f64 {
        let admitted = self.sent.saturating_sub(self.rejected + self.shed());
        if admitted == 0 {
            0.0
        } else {
            self.failed() as f64 / admitted as f64
        }
    }

    /// The sum of two tallies.
    pub fn plus(&self, o: &Tally) -> Tally {
        Tally {
            offered: self.offered + o.offered,
            not_sent: self.not_sent + o.not_sent,
            sent: self.sent + o.sent,
            succeeded: self.succeeded + o.succeeded,
            good: self.good + o.good,
            failed_upstream: self.failed_upstream + o.failed_upstream,
            failed_unreachable: self.failed_unreachable + o.failed_unreachable,
            failed_timeout: self.failed_timeout + o.failed_timeout,
            failed_transport: self.failed_transport + o.failed_transport,
            failed_abandoned: self.failed_abandoned + o.failed_abandoned,
            rejected: self.rejected + o.rejected,
            shed_limit: self.shed_limit + o.shed_limit,
            shed_rate: self.shed_rate + o.shed_rate,
        }
    }
}

/// Percentiles of a latency histogram.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Largest.
    pub max: Duration,
}

impl Percentiles {
    /// The percentiles of `h` (microseconds); all zero when it is empty.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let us = Duration::from_micros;
        Percentiles {
            count: h.len(),
            p50: us(h.value_at_quantile(0.5)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

/// A latency histogram in microseconds, 1 µs to two minutes, three
/// significant digits.
pub fn histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, MAX_LATENCY_US, 3) {
        Ok(h) => h,
        // The bounds are constants that hdrhistogram accepts.
        Err(e) => unreachable!("histogram bounds: {e}"),
    }
}

/// Records `latency` into `h`, clamped to the histogram's range.
pub fn record_latency(h: &mut Histogram<u64>, latency: Duration) {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    h.saturating_record(us.clamp(1, MAX_LATENCY_US));
}

/// One time bucket of a run, for the plots and the recovery check.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    /// End of the bucket, seconds since the start.
    pub end_secs: f64,
    /// Requests sent in the bucket, and requests that ended in it, by fate
    /// (`offered`, `not_sent` and `sent` count arrivals; the rest count
    /// ends).
    pub tally: Tally,
    /// Latencies of the requests that ended in the bucket.
    pub latency: Percentiles,
    /// Requests in flight at the end of the bucket.
    pub in_flight: u64,
    /// Most requests in flight at once during the bucket.
    pub peak_in_flight: u64,
    /// The breaker's state at the end of the bucket (protected front).
    pub breaker: Option<BreakerState>,
    /// The concurrency limit at the end of the bucket (protected front).
    pub limit: Option<u32>,
}

/// Counts and latencies of one group of requests.
#[derive(Clone, Debug)]
pub struct Group {
    /// Counts.
    pub tally: Tally,
    /// Latency of every answer (succeeded, failed, rejected, shed).
    pub all: Histogram<u64>,
    /// Latency of the successes.
    pub ok: Histogram<u64>,
}

impl Default for Group {
    fn default() -> Self {
        Group {
            tally: Tally::default(),
            all: histogram(),
            ok: histogram(),
        }
    }
}

impl Group {
    fn end(&mut self, outcome: Outcome, latency: Duration, good: bool) {
        self.tally.record(outcome);
        self.tally.good += u64::from(good);
        record_latency(&mut self.all, latency);
        if outcome.is_success() {
            record_latency(&mut self.ok, latency);
        }
    }
}

/// Everything measured about one front during one drive. The load
/// generator's request tasks report to it (under a mutex, after the
/// request's end time was taken); the sampler closes a bucket every
/// interval.
#[derive(Debug)]
pub struct Recorder {
    /// Every request.
    pub total: Group,
    /// Requests by the kind of phase they were sent in.
    pub by_kind: Vec<Group>,
    bucket: Tally,
    bucket_latency: Histogram<u64>,
    bucket_peak: u64,
    /// Closed buckets, in order.
    pub series: Vec<Bucket>,
    /// The latency objective: a success within it is a good answer.
    pub objective: Duration,
}

impl Recorder {
    /// An empty recorder with room for `buckets` buckets (allocated now, so
    /// a long run's memory does not grow), counting successes within
    /// `objective` as good answers.
    pub fn new(buckets: usize, objective: Duration) -> Recorder {
        Recorder {
            total: Group::default(),
            by_kind: PhaseKind::ALL.iter().map(|_| Group::default()).collect(),
            bucket: Tally::default(),
            bucket_latency: histogram(),
            bucket_peak: 0,
            series: Vec::with_capacity(buckets),
            objective,
        }
    }

    /// An arrival the plan scheduled in a `kind` phase; `sent` says whether
    /// it was sent, with `in_flight` requests in flight after it.
    pub fn arrival(&mut self, kind: PhaseKind, sent: bool, in_flight: u64) {
        for t in [
            &mut self.total.tally,
            &mut self.by_kind[kind.index()].tally,
            &mut self.bucket,
        ] {
            t.offered += 1;
            if sent {
                t.sent += 1;
            } else {
                t.not_sent += 1;
            }
        }
        self.bucket_peak = self.bucket_peak.max(in_flight);
    }

    /// A request sent in a `kind` phase ended with `outcome` after
    /// `latency`.
    pub fn end(&mut self, kind: PhaseKind, outcome: Outcome, latency: Duration) {
        let good = outcome.is_success() && latency <= self.objective;
        self.total.end(outcome, latency, good);
        self.by_kind[kind.index()].end(outcome, latency, good);
        self.bucket.record(outcome);
        self.bucket.good += u64::from(good);
        record_latency(&mut self.bucket_latency, latency);
    }

    /// Closes the current bucket at `end_secs`, with the front's state
    /// then.
    pub fn roll(
        &mut self,
        end_secs: f64,
        in_flight: u64,
        breaker: Option<BreakerState>,
        limit: Option<u32>,
    ) {
        let bucket = Bucket {
            end_secs,
            tally: self.bucket,
            latency: Percentiles::of(&self.bucket_latency),
            in_flight,
            peak_in_flight: self.bucket_peak.max(in_flight),
            breaker,
            limit,
        };
        if self.series.len() < self.series.capacity() {
            self.series.push(bucket);
        } else if let Some(last) = self.series.last_mut() {
            // Out of room (a run longer than planned): fold into the last
            // bucket rather than grow.
            last.tally = last.tally.plus(&bucket.tally);
            last.end_secs = end_secs;
            last.latency = bucket.latency;
            last.in_flight = in_flight;
            last.peak_in_flight = last.peak_in_flight.max(bucket.peak_in_flight);
            last.breaker = breaker;
            last.limit = limit;
        }
        self.bucket = Tally::default();
        self.bucket_latency.reset();
        self.bucket_peak = in_flight;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn answers_sort_by_status_and_header() {
        assert_eq!(Outcome::of_answer(200, None), Outcome::Succeeded);
        assert_eq!(Outcome::of_answer(429, Some(b"rate")), Outcome::ShedRate);
        assert_eq!(Outcome::of_answer(503, Some(b"breaker")), Outcome::Rejected);
        assert_eq!(Outcome::of_answer(503, Some(b"limit")), Outcome::ShedLimit);
        assert_eq!(Outcome::of_answer(503, None), Outcome::FailedUpstream);
        assert_eq!(
            Outcome::of_answer(504, Some(b"timeout")),
            Outcome::FailedTimeout
        );
        assert_eq!(
            Outcome::of_answer(502, Some(b"upstream-error")),
            Outcome::FailedUpstream
        );
        assert_eq!(
            Outcome::of_answer(502, Some(b"upstream-unreachable")),
            Outcome::FailedUnreachable
        );
    }

    #[test]
    fn the_identity_holds_only_when_everything_ended() {
        let mut t = Tally {
            offered: 10,
            sent: 9,
            not_sent: 1,
            ..Tally::default()
        };
        assert!(!t.balanced());
        assert_eq!(t.ended(), 0);
        for o in [
            Outcome::Succeeded,
            Outcome::Succeeded,
            Outcome::Succeeded,
            Outcome::FailedUnreachable,
            Outcome::FailedTimeout,
            Outcome::FailedTransport,
            Outcome::Rejected,
            Outcome::ShedLimit,
        ] {
            t.record(o);
        }
        assert!(!t.balanced());
        t.record(Outcome::ShedRate);
        assert!(t.balanced());
        assert_eq!((t.failed(), t.shed(), t.rejected), (3, 2, 1));
        assert!((t.error_rate() - 3.0 / 9.0).abs() < 1e-12);
        assert!((t.admitted_error_rate() - 3.0 / 6.0).abs() < 1e-12);
        t.record(Outcome::Succeeded); // one end too many
        assert!(!t.balanced());
        let u = Tally {
            offered: 1,
            not_sent: 1,
            ..Tally::default()
        };
        assert!(u.balanced());
        assert_eq!(u.error_rate(), 0.0);
        assert_eq!(t.plus(&u).offered, 11);
    }

    #[test]
    fn recorder_groups_and_buckets_agree() {
        let mut r = Recorder::new(4, MS * 50);
        for i in 0..100u64 {
            let kind = if i < 60 {
                PhaseKind::Healthy
            } else {
                PhaseKind::Outage
            };
            let sent = i % 10 != 9;
            r.arrival(kind, sent, i % 7);
            if sent {
                let outcome = if kind == PhaseKind::Healthy {
                    Outcome::Succeeded
                } else {
                    Outcome::Rejected
                };
                r.end(kind, outcome, MS * (i as u32 + 1));
            }
            if i % 25 == 24 {
                r.roll((i / 25 + 1) as f64, 0, None, Some(7));
            }
        }
        let t = r.total.tally;
        assert!(t.balanced());
        assert_eq!(
            (t.offered, t.sent, t.succeeded, t.rejected),
            (100, 90, 54, 36)
        );
        let h = r.by_kind[PhaseKind::Healthy.index()].tally;
        let o = r.by_kind[PhaseKind::Outage.index()].tally;
        assert_eq!(h.plus(&o), t);
        assert_eq!(r.series.len(), 4);
        let summed = r
            .series
            .iter()
            .fold(Tally::default(), |a, b| a.plus(&b.tally));
        assert_eq!(summed, t);
        assert_eq!(r.series[0].peak_in_flight, 6);
        // Successes took 1..=60 ms; those within the 50 ms objective are
        // good (the unsent tenth of them aside).
        assert_eq!(t.good, (1..=50u64).filter(|i| i % 10 != 0).count() as u64);
        assert_eq!(r.total.ok.len(), 54);
        let p = Percentiles::of(&r.total.all);
        assert_eq!(p.count, 90);
        assert!(p.p50 <= p.p99 && p.p99 <= p.p999 && p.p999 <= p.max);
        // A fifth bucket has no room: it folds into the fourth.
        r.arrival(PhaseKind::Healthy, true, 1);
        r.end(PhaseKind::Healthy, Outcome::Succeeded, MS);
        r.roll(5.0, 0, None, None);
        assert_eq!(r.series.len(), 4);
        assert_eq!(r.series[3].end_secs, 5.0);
        let summed = r
            .series
            .iter()
            .fold(Tally::default(), |a, b| a.plus(&b.tally));
        assert_eq!(summed, r.total.tally);
    }

    #[test]
    fn latencies_are_clamped_into_range() {
        let mut h = histogram();
        record_latency(&mut h, Duration::ZERO);
        record_latency(&mut h, Duration::from_secs(3600));
        assert_eq!(h.min(), 1);
        assert!(h.max() >= MAX_LATENCY_US);
        assert_eq!(Percentiles::of(&histogram()), Percentiles::default());
    }
}
