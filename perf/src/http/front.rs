//! The two front services: each answers `GET` (any path) by calling its
//! upstream through a pooled hyper client.
//!
//! - The **protected** front calls through one tenlives
//!   [`StackLayer`]: a timeout over the whole request, one retry within a
//!   retry budget, then admission by a rate limit, a circuit breaker and an
//!   adaptive (AIMD) concurrency limit. A refusal is answered at once: `503`
//!   with `Retry-After` when the breaker is open, `503` when the concurrency
//!   limit is full, `429` with `Retry-After` when the rate limit is spent.
//! - The **unprotected** front calls the upstream directly, with no policy
//!   at all: it waits as long as the upstream (or its caller) does.
//!
//! Both say what happened in an `x-tenlives` header (`breaker`, `limit`,
//! `rate`, `timeout`, `upstream-error`, `upstream-unreachable`), which the
//! load generator reads to sort answers into succeeded, failed, rejected and
//! shed.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;
use pin_project_lite::pin_project;
use tenlives_engine::ConfigError;
use tenlives_engine::adaptive::{AdaptiveLimiter, Aimd, WindowConfig};
use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker, Outcome};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::events::{EventKind, EventRing, Filter, Slot};
use tenlives_engine::rate::{Quota, RateLimiter};
use tenlives_engine::retry::{Backoff, RetryBudget, RetryBudgetConfig};
use tenlives_engine::time::Clock;
use tenlives_tokio::{
    DefaultAdmission, RejectionReason, RetryPolicy, Stack, StackLayer, TenlivesError, TokioClock,
};
use tokio::time::Instant;
use tower::ServiceExt as _;
use tower_layer::Layer;
use tower_service::Service;

use super::server::{Body, Handler, respond};
use super::timeline::Timeline;

/// The HTTP client every caller here uses: pooled HTTP/1 connections.
pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A pooled HTTP/1 client keeping at most `max_idle` idle connections per
/// host, with `TCP_NODELAY`.
pub fn http_client(max_idle: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_idle)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// A request to the upstream (it carries nothing: the upstream's script
/// decides the answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call;

/// Why a call to the upstream got no status.
#[derive(Debug)]
pub enum UpstreamError {
    /// Connecting, sending, or reading the head failed (refused, reset,
    /// closed without an answer).
    Request(hyper_util::client::legacy::Error),
    /// Reading the body failed.
    Body(hyper::Error),
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Request(e) => write!(f, "upstream request failed: {e}"),
            UpstreamError::Body(e) => write!(f, "upstream body failed: {e}"),
        }
    }
}

impl std::error::Error for UpstreamError {}

/// Counts the calls a front's client sends while the upstream's script has
/// it down or in an outage: the calls a policy could have kept from a
/// dependency that could not answer them well. (The upstream cannot count
/// them itself while its listener is closed.)
#[derive(Debug)]
pub struct DownWatch {
    timeline: Arc<Timeline>,
    origin: Instant,
    sent_while_down: AtomicU64,
}

impl DownWatch {
    /// Watches `timeline`, whose time zero is `origin`.
    pub fn new(timeline: Arc<Timeline>, origin: Instant) -> Self {
        DownWatch {
            timeline,
            origin,
            sent_while_down: AtomicU64::new(0),
        }
    }

    /// Calls sent while the upstream was down or in an outage.
    pub fn sent_while_down(&self) -> u64 {
        // ordering: Relaxed; a counter read for reports.
        self.sent_while_down.load(Ordering::Relaxed)
    }

    fn sent(&self) {
        if self.timeline.down_at(self.origin.elapsed()) {
            bump(&self.sent_while_down);
        }
    }
}

/// A tower service calling the upstream: answers the status code, after
/// reading the (short) body so the connection goes back to the pool.
#[derive(Clone)]
pub struct UpstreamClient {
    client: HttpClient,
    uri: Uri,
    watch: Option<Arc<DownWatch>>,
}

impl UpstreamClient {
    /// Calls `uri` through `client`.
    pub fn new(client: HttpClient, uri: Uri) -> Self {
        UpstreamClient {
            client,
            uri,
            watch: None,
        }
    }

    /// Counts the calls sent while the upstream is down in `watch`.
    #[must_use]
    pub fn watched(self, watch: Arc<DownWatch>) -> Self {
        UpstreamClient {
            watch: Some(watch),
            ..self
        }
    }
}

impl Service<Call> for UpstreamClient {
    type Response = u16;
    type Error = UpstreamError;
    type Future = UpstreamFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        // The pool opens a connection per call when none is idle.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _call: Call) -> UpstreamFuture {
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = self.uri.clone();
        UpstreamFuture::Head {
            head: self.client.request(req),
            watch: self.watch.clone(),
        }
    }
}

pin_project! {
    /// The future of [`UpstreamClient`]: the response head, then the body.
    #[project = UpstreamProj]
    pub enum UpstreamFuture {
        /// Waiting for the head.
        Head { head: ResponseFuture, watch: Option<Arc<DownWatch>> },
        /// Reading the body.
        Body { #[pin] body: Collect<Incoming>, status: u16 },
        /// Finished.
        Done,
    }
}

impl Future for UpstreamFuture {
    type Output = Result<u16, UpstreamError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                UpstreamProj::Head { head, watch } => {
                    // Counted when first polled: a future built and
                    // dropped unpolled (a caller that refused the call
                    // after building it) sent nothing.
                    if let Some(w) = watch.take() {
                        w.sent();
                    }
                    let response =
                        ready!(Pin::new(head).poll(cx)).map_err(UpstreamError::Request)?;
                    let status = response.status().as_u16();
                    let body = response.into_body().collect();
                    self.set(UpstreamFuture::Body { body, status });
                }
                UpstreamProj::Body { body, status } => {
                    let status = *status;
                    let read = ready!(body.poll(cx));
                    self.set(UpstreamFuture::Done);
                    return Poll::Ready(read.map(|_| status).map_err(UpstreamError::Body));
                }
                // Polled after completion: the caller's bug; stay pending
                // rather than invent an answer.
                UpstreamProj::Done => return Poll::Pending,
            }
        }
    }
}

/// The ring's type.
pub type Ring = EventRing<Box<[Slot]>>;
/// The event sink of the protected front's breaker and limit: the ring,
/// keeping only breaker transitions and limit changes (not every grant).
pub type Sink = Filter<Arc<Ring>, fn(EventKind) -> bool>;
/// How an outcome counts: a `5xx` answer or no answer is a failure.
pub type Classifier = fn(&Result<u16, UpstreamError>) -> Outcome;
/// Which results are retried.
pub type RetryIf = fn(&Result<u16, TenlivesError<UpstreamError>>) -> bool;
/// The admission stages: the breaker, then a rate limit, then the adaptive
/// limit.
pub type Admission =
    DefaultAdmission<CircuitBreaker<Sink>, RateLimiter, AdaptiveLimiter<Aimd, Sink>>;
/// The protected front's layer.
pub type ProtectedLayer = StackLayer<Classifier, RetryPolicy<RetryIf>, Admission>;
/// The protected front's service.
pub type ProtectedStack = Stack<UpstreamClient, Classifier, RetryPolicy<RetryIf>, Admission>;

/// Event source id of the breaker.
pub const BREAKER_SOURCE: u32 = 1;
/// Event source id of the adaptive limit.
pub const LIMIT_SOURCE: u32 = 2;

fn keep_transitions(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::BREAKER_OPENED
            | EventKind::BREAKER_HALF_OPENED
            | EventKind::BREAKER_CLOSED
            | EventKind::BREAKER_FORCED
            | EventKind::BULKHEAD_LIMIT_CHANGED
    )
}

fn classify(result: &Result<u16, UpstreamError>) -> Outcome {
    match result {
        Ok(status) if *status < 500 => Outcome::Success,
        _ => Outcome::Failure,
    }
}

/// Retries a `5xx` answer and a call that got no answer; never a refusal
/// (nothing was sent, and the breaker said when to come back) nor a
/// timeout (the deadline covers the retries too).
fn retry_if(result: &Result<u16, TenlivesError<UpstreamError>>) -> bool {
    match result {
        Ok(status) => *status >= 500,
        Err(e) => e.inner().is_some(),
    }
}

/// Failures in a row that open the default protection's breaker.
pub const CONSECUTIVE_FAILURES: u32 = 20;
/// Half-open probes of the default protection's breaker.
pub const PROBES: u32 = 1;

/// How long the default protection's breaker stays open for a load of
/// `rate` requests per second: the time in which twenty times its
/// [`PROBES`] arrive (twenty requests), so that probing a dead upstream
/// costs at most 5 % of the requests; at least 100 ms, at most a second.
pub fn open_for_rate(rate: u32) -> Duration {
    let ms = u64::from(PROBES) * 20 * 1000 / u64::from(rate.max(1));
    Duration::from_millis(ms.clamp(100, 1000))
}

/// How often the default protection's breaker lets a scout through while
/// open, for a load of `rate` requests per second: the time in which 15
/// requests arrive, so that a dead upstream receives about 7 % of the
/// requests as scouts (and the calls that showed it dead); at least 20 ms,
/// at most a second.
pub fn probe_every_for_rate(rate: u32) -> Duration {
    let ms = 15 * 1000 / u64::from(rate.max(1));
    Duration::from_millis(ms.clamp(20, 1000))
}

/// How long the default protection holds a request its breaker refuses
/// while a scout's answer is coming, for a load of `rate` requests per
/// second: two scout intervals ([`probe_every_for_rate`]), so that a
/// request refused just after a scout failed still hears the next one, and
/// at most 135 ms (half the default timeout), so that a held request that
/// is then admitted still answers within the objective.
pub fn hold_for_rate(rate: u32) -> Duration {
    (2 * probe_every_for_rate(rate)).min(Duration::from_millis(135))
}

/// How many requests the default protection holds at once, for a load of
/// `rate` requests per second: twice the requests that arrive during one
/// hold ([`hold_for_rate`]), at least 16, at most 1024; the rest are refused
/// at once.
pub fn hold_cap_for_rate(rate: u32) -> usize {
    let hold_ms = u64::from(rate) * hold_for_rate(rate).as_millis() as u64 / 1000;
    usize::try_from(2 * hold_ms)
        .unwrap_or(usize::MAX)
        .clamp(16, 1024)
}

/// The protected front's policies.
#[derive(Clone, Debug, PartialEq)]
pub struct Protection {
    /// The latency objective of the service: an answer that succeeded
    /// within it is a good answer (the goodput's default objective).
    pub objective: Duration,
    /// Deadline of a whole request, retries included: below the objective,
    /// so that a timed-out answer still reaches the caller within it.
    pub timeout: Duration,
    /// Retries after the first attempt...
    pub retries: u32,
    /// ...within a budget of this share of the requests (plus 10 per
    /// second).
    pub retry_budget: f64,
    /// Requests admitted per second (token bucket).
    pub rate_limit: u32,
    /// The rate limit's burst.
    pub rate_burst: u32,
    /// The breaker opens at this failure rate (percent)...
    pub failure_rate: f64,
    /// ...over this sliding window...
    pub window: Duration,
    /// ...once it has seen this many calls; or after this many failures in
    /// a row, whatever the window says.
    pub minimum_calls: u32,
    /// Opens after this many failures in a row.
    pub consecutive_failures: Option<u32>,
    /// First open period; each further trip doubles it, up to `max_open`.
    pub open: Duration,
    /// Longest open period.
    pub max_open: Duration,
    /// Half-open probes.
    pub probes: u32,
    /// Scouts while open: once the open period is over, one call every this
    /// long is let through, whether or not the earlier ones answered, and
    /// the first that succeeds closes the breaker (`None`: the classic
    /// half-open test, which a probe to a stalled upstream holds for its
    /// whole timeout).
    pub probe_every: Option<Duration>,
    /// Holds a request the breaker refuses while a scout's answer is
    /// coming, for at most this long and this many requests at once
    /// (`StackBuilder::hold_for_breaker`); `None`: refused at once.
    pub hold: Option<(Duration, usize)>,
    /// The adaptive limit's `(min, initial, max)`.
    pub limits: (u32, u32, u32),
    /// The AIMD limit shrinks when a window's mean latency exceeds this (or
    /// a call fails).
    pub latency_threshold: Duration,
}

impl Protection {
    /// The settings for a nominal load of `rate` requests per second: a
    /// rate limit at three times that.
    ///
    /// The breaker is tuned for goodput (see `docs/demo.md`, "Goodput"):
    /// it also opens after [`CONSECUTIVE_FAILURES`] failures in a row (a
    /// dead upstream is seen within a few dozen calls, whatever the window
    /// remembers of the healthy time before), stays open
    /// [`open_for_rate`]`(rate)`, without growing, then sends a scout every
    /// [`probe_every_for_rate`]`(rate)` whether or not the earlier ones
    /// answered, and closes at the first that succeeds ([`PROBES`] probe
    /// is the test): a recovered upstream is refused for at most an
    /// interval and a call's latency, even when the calls that failed
    /// stalled until the timeout, and a dead one receives scouts on about
    /// 7 % of the requests. A request the breaker refuses while a scout is
    /// in flight or due within [`hold_for_rate`]`(rate)` is held for the
    /// scout's answer (at most [`hold_cap_for_rate`]`(rate)` at once):
    /// admitted if the scout closes the breaker, refused otherwise.
    pub fn for_rate(rate: u32) -> Protection {
        let rate_limit = rate.saturating_mul(3).max(10);
        let open = open_for_rate(rate);
        Protection {
            objective: Duration::from_millis(300),
            timeout: Duration::from_millis(270),
            retries: 1,
            retry_budget: 0.4,
            rate_limit,
            rate_burst: (rate_limit / 10).max(10),
            failure_rate: 50.0,
            window: Duration::from_secs(5),
            minimum_calls: 20,
            consecutive_failures: Some(CONSECUTIVE_FAILURES),
            open,
            max_open: open,
            probes: PROBES,
            probe_every: Some(probe_every_for_rate(rate)),
            hold: Some((hold_for_rate(rate), hold_cap_for_rate(rate))),
            // The floor keeps a stray error from shrinking the limit below
            // what a healthy load needs: AIMD counts every failed call as a
            // drop and multiplies the limit down, but grows it only when at
            // least half of it is in use. 24 rather than 16: a down
            // upstream's failures take the limit to its floor, and when a
            // scout closes the breaker the requests held for its answer
            // (about 15 at 300/s) are admitted at once with the calls in
            // flight; a floor of 16 shed 22 to 34 of them a run in the
            // goodput suite's `flapping` (docs/demo.md).
            limits: (24, 32, 128),
            latency_threshold: Duration::from_millis(100),
        }
    }

    /// Builds the layer on `clock`, the breaker and the limit emitting into
    /// `ring`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when a setting is out of range.
    pub fn build(
        &self,
        clock: TokioClock,
        ring: &Arc<Ring>,
    ) -> Result<ProtectedLayer, ConfigError> {
        let sink = || Filter::new(Arc::clone(ring), keep_transitions as fn(EventKind) -> bool);
        let mut config = BreakerConfig::builder()
            .failure_rate(self.failure_rate)
            .time_window(self.window, 10)
            .minimum_calls(self.minimum_calls)
            .open_duration(self.open)
            .open_backoff(2.0, self.max_open)
            .half_open_probes(self.probes);
        if let Some(every) = self.probe_every {
            config = config.probe_every(every);
        }
        if let Some(n) = self.consecutive_failures {
            config = config.consecutive_failures(n);
        }
        let breaker = CircuitBreaker::with_sink(config.build()?, sink(), BREAKER_SOURCE);
        let (min, initial, max) = self.limits;
        let aimd = Aimd::builder()
            .limits(min, initial, max)
            .backoff(0.75)
            .latency_threshold(self.latency_threshold)
            .build()?;
        let limiter = AdaptiveLimiter::from_parts(
            aimd,
            WindowConfig::new(Duration::from_millis(250), 10)?,
            clock.now(),
            Bulkhead::with_sink(initial, sink(), LIMIT_SOURCE)?,
        );
        let rate =
            RateLimiter::new(Quota::per_second(self.rate_limit)?.with_burst(self.rate_burst)?);
        let retry = RetryPolicy::new(
            Backoff::exponential(Duration::from_millis(10), 2.0, Duration::from_millis(50))?
                .with_max_retries(self.retries),
            RetryBudget::new(
                RetryBudgetConfig::builder()
                    .ratio(self.retry_budget)
                    .build()?,
            ),
        )
        .retry_if(retry_if as RetryIf);
        let mut builder = StackLayer::builder().timeout(self.timeout).retry(retry);
        if let Some((max_wait, cap)) = self.hold {
            builder = builder.hold_for_breaker(max_wait, cap)?;
        }
        Ok(builder
            .classify(classify as Classifier)
            .clock(clock)
            .circuit_breaker(breaker)
            .rate_limit(rate)
            .adaptive_limit(limiter)
            .build())
    }
}

/// What a front answered, by kind.
#[derive(Debug, Default)]
pub struct FrontCounts {
    /// `200`.
    pub ok: AtomicU64,
    /// `502`: the upstream answered `5xx`.
    pub upstream_error: AtomicU64,
    /// `502`: the upstream could not be reached or closed the connection.
    pub unreachable: AtomicU64,
    /// `504`: the front's timeout expired.
    pub timeout: AtomicU64,
    /// `503`: the breaker refused.
    pub breaker: AtomicU64,
    /// `503`: the concurrency limit was full.
    pub limit: AtomicU64,
    /// `429`: the rate limit was spent.
    pub rate: AtomicU64,
}

impl FrontCounts {
    /// `(label, count)` for each kind of answer.
    pub fn snapshot(&self) -> [(&'static str, u64); 7] {
        // ordering: Relaxed; plain counters.
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("200 ok", get(&self.ok)),
            ("502 upstream error", get(&self.upstream_error)),
            ("502 upstream unreachable", get(&self.unreachable)),
            ("504 timeout", get(&self.timeout)),
            ("503 breaker open", get(&self.breaker)),
            ("503 concurrency limit", get(&self.limit)),
            ("429 rate limit", get(&self.rate)),
        ]
    }
}

fn bump(counter: &AtomicU64) {
    // ordering: Relaxed; a counter read only for reports.
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Whole seconds, rounded up, at least one: an HTTP `Retry-After`.
pub fn retry_after_secs(d: Option<Duration>) -> u64 {
    d.map_or(1, |d| {
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    })
}

/// The answer of the protected front to a call's result.
pub fn answer_protected(
    result: Result<u16, TenlivesError<UpstreamError>>,
    counts: &FrontCounts,
) -> Response<Body> {
    match result {
        Ok(200) => {
            bump(&counts.ok);
            respond(200, &[], "ok\n")
        }
        Ok(_) => {
            bump(&counts.upstream_error);
            respond(502, &[("x-tenlives", "upstream-error")], "upstream error\n")
        }
        Err(TenlivesError::Rejected(r)) => {
            let retry_after = retry_after_secs(r.retry_after()).to_string();
            match r.reason() {
                RejectionReason::CircuitBreaker(_) => {
                    bump(&counts.breaker);
                    respond(
                        503,
                        &[("x-tenlives", "breaker"), ("retry-after", &retry_after)],
                        "circuit breaker open\n",
                    )
                }
                RejectionReason::RateLimited
                | RejectionReason::RateLimitExceedsBurst
                | RejectionReason::RateLimitTableFull => {
                    bump(&counts.rate);
                    respond(
                        429,
                        &[("x-tenlives", "rate"), ("retry-after", &retry_after)],
                        "rate limited\n",
                    )
                }
                _ => {
                    bump(&counts.limit);
                    respond(
                        503,
                        &[("x-tenlives", "limit")],
                        "concurrency limit reached\n",
                    )
                }
            }
        }
        Err(TenlivesError::TimedOut { .. }) => {
            bump(&counts.timeout);
            respond(504, &[("x-tenlives", "timeout")], "upstream timed out\n")
        }
        Err(_) => {
            bump(&counts.unreachable);
            respond(
                502,
                &[("x-tenlives", "upstream-unreachable")],
                "upstream unreachable\n",
            )
        }
    }
}

/// The answer of the unprotected front to a call's result.
pub fn answer_plain(result: Result<u16, UpstreamError>, counts: &FrontCounts) -> Response<Body> {
    match result {
        Ok(200) => {
            bump(&counts.ok);
            respond(200, &[], "ok\n")
        }
        Ok(_) => {
            bump(&counts.upstream_error);
            respond(502, &[("x-tenlives", "upstream-error")], "upstream error\n")
        }
        Err(_) => {
            bump(&counts.unreachable);
            respond(
                502,
                &[("x-tenlives", "upstream-unreachable")],
                "upstream unreachable\n",
            )
        }
    }
}

/// Sorts a call's result into the front's answer, and counts it.
type Answer<S> = fn(
    Result<<S as Service<Call>>::Response, <S as Service<Call>>::Error>,
    &FrontCounts,
) -> Response<Body>;

/// A front that answers each request with one call through a service, and
/// sorts and counts the answers with `answer`.
pub struct CallFront<S: Service<Call>> {
    service: S,
    counts: Arc<FrontCounts>,
    answer: Answer<S>,
}

// Not derived: that would ask for `S::Response: Clone` and `S::Error: Clone`.
impl<S: Service<Call> + Clone> Clone for CallFront<S> {
    fn clone(&self) -> Self {
        CallFront {
            service: self.service.clone(),
            counts: Arc::clone(&self.counts),
            answer: self.answer,
        }
    }
}

impl<S: Service<Call>> CallFront<S> {
    /// A front over `service`, its answers sorted by `answer`.
    pub(crate) fn with_answer(service: S, answer: Answer<S>) -> Self {
        CallFront {
            service,
            counts: Arc::new(FrontCounts::default()),
            answer,
        }
    }

    /// What it answered.
    pub fn counts(&self) -> &Arc<FrontCounts> {
        &self.counts
    }
}

impl<S> Handler for CallFront<S>
where
    S: Service<Call> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Response: Send,
    S::Error: Send,
{
    type Error = Infallible;

    fn handle(
        &self,
        _req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'static + use<S> {
        let service = self.service.clone();
        let counts = Arc::clone(&self.counts);
        let answer = self.answer;
        async move { Ok(answer(service.oneshot(Call).await, &counts)) }
    }
}

/// The protected front's handler.
pub type ProtectedFront = CallFront<ProtectedStack>;

impl ProtectedFront {
    /// Calls `upstream` through `layer`.
    pub fn new(layer: &ProtectedLayer, upstream: UpstreamClient) -> Self {
        CallFront::with_answer(layer.layer(upstream), answer_protected)
    }
}

/// The unprotected front's handler.
#[derive(Clone)]
pub struct PlainFront {
    upstream: UpstreamClient,
    counts: Arc<FrontCounts>,
}

impl PlainFront {
    /// Calls `upstream` directly.
    pub fn new(upstream: UpstreamClient) -> Self {
        PlainFront {
            upstream,
            counts: Arc::new(FrontCounts::default()),
        }
    }

    /// What it answered.
    pub fn counts(&self) -> &Arc<FrontCounts> {
        &self.counts
    }
}

impl Handler for PlainFront {
    type Error = Infallible;

    fn handle(
        &self,
        _req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'static + use<> {
        let mut upstream = self.upstream.clone();
        let counts = Arc::clone(&self.counts);
        async move { Ok(answer_plain(upstream.call(Call).await, &counts)) }
    }
}

#[cfg(test)]
mod tests {
    use tenlives_engine::breaker::RejectReason;
    use tenlives_tokio::Rejection;

    use super::*;

    /// A 30 s script whose upstream is down 2 s then up 3 s, over and over
    /// from 6 s.
    fn flapping() -> Arc<Timeline> {
        let s = Duration::from_secs;
        Arc::new(Timeline::flapping(
            s(30),
            Duration::from_millis(10),
            s(2),
            s(3),
        ))
    }

    fn header<'a>(r: &'a Response<Body>, name: &str) -> Option<&'a str> {
        r.headers().get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn refusals_become_503_or_429_with_retry_after() {
        let counts = FrontCounts::default();
        let open = Rejection::new(
            RejectionReason::CircuitBreaker(RejectReason::Open),
            Some(Duration::from_millis(1500)),
        );
        let r = answer_protected(Err(TenlivesError::Rejected(open)), &counts);
        assert_eq!(r.status(), 503);
        assert_eq!(header(&r, "x-tenlives"), Some("breaker"));
        assert_eq!(header(&r, "retry-after"), Some("2"));
        let full = Rejection::new(
            RejectionReason::ConcurrencyLimit {
                in_flight: 4,
                limit: 4,
            },
            None,
        );
        let r = answer_protected(Err(TenlivesError::Rejected(full)), &counts);
        assert_eq!(
            (r.status().as_u16(), header(&r, "x-tenlives")),
            (503, Some("limit"))
        );
        assert_eq!(header(&r, "retry-after"), None);
        let rate = Rejection::new(RejectionReason::RateLimited, Some(Duration::from_millis(3)));
        let r = answer_protected(Err(TenlivesError::Rejected(rate)), &counts);
        assert_eq!(
            (r.status().as_u16(), header(&r, "retry-after")),
            (429, Some("1"))
        );
        let r = answer_protected(
            Err(TenlivesError::TimedOut {
                after: Duration::from_millis(300),
            }),
            &counts,
        );
        assert_eq!(r.status(), 504);
        let r = answer_protected(Ok(500), &counts);
        assert_eq!(
            (r.status().as_u16(), header(&r, "x-tenlives")),
            (502, Some("upstream-error"))
        );
        assert_eq!(answer_protected(Ok(200), &counts).status(), 200);
        let snap = counts.snapshot();
        assert_eq!(snap.iter().map(|(_, n)| n).sum::<u64>(), 6);
        assert!(snap.iter().all(|&(_, n)| n <= 1));
    }

    #[test]
    fn calls_are_counted_only_while_the_script_has_the_upstream_down() {
        let s = Duration::from_secs;
        let timeline = flapping();
        let now = Instant::now();
        // Down from 6 s to 8 s: 7 s into the script, then 1 s into it.
        let down = DownWatch::new(Arc::clone(&timeline), now.checked_sub(s(7)).unwrap());
        down.sent();
        down.sent();
        assert_eq!(down.sent_while_down(), 2);
        let up = DownWatch::new(timeline, now.checked_sub(s(1)).unwrap());
        up.sent();
        assert_eq!(up.sent_while_down(), 0);
    }

    #[test]
    fn the_breaker_waits_for_twenty_times_its_probes() {
        let ms = Duration::from_millis;
        assert_eq!(open_for_rate(300), ms(100));
        assert_eq!(open_for_rate(150), ms(133));
        assert_eq!(open_for_rate(50), ms(400));
        assert_eq!(open_for_rate(10), ms(1000));
        assert_eq!(open_for_rate(0), ms(1000));
        assert_eq!(open_for_rate(100_000), ms(100));
        let p = Protection::for_rate(150);
        assert_eq!((p.open, p.max_open, p.probes), (ms(133), ms(133), 1));
        assert_eq!(p.probe_every, Some(ms(100)));
        assert_eq!(probe_every_for_rate(300), ms(50));
        assert_eq!(probe_every_for_rate(10), ms(1000));
        assert_eq!(probe_every_for_rate(100_000), ms(20));
        assert!(p.timeout < p.objective);
        assert_eq!(hold_for_rate(300), ms(100));
        assert_eq!(hold_for_rate(10), ms(135));
        assert_eq!(hold_cap_for_rate(300), 60);
        assert_eq!(hold_cap_for_rate(10), 16);
        assert_eq!(hold_cap_for_rate(100_000), 1024);
        assert_eq!(p.hold, Some((hold_for_rate(150), hold_cap_for_rate(150))));
        // Holding and then calling still answers within the objective.
        assert!(hold_for_rate(1) * 2 <= p.timeout);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_call_counts_as_sent_once_polled_not_when_built() {
        let s = Duration::from_secs;
        let timeline = flapping();
        let watch = Arc::new(DownWatch::new(
            timeline,
            Instant::now().checked_sub(s(7)).unwrap(),
        ));
        // Nothing listens on port 9 of loopback here: refused at once.
        let mut client =
            UpstreamClient::new(http_client(1), "http://127.0.0.1:9/".parse().unwrap())
                .watched(Arc::clone(&watch));
        drop(client.call(Call));
        assert_eq!(watch.sent_while_down(), 0);
        let _ = tokio::time::timeout(s(5), client.call(Call)).await;
        assert_eq!(watch.sent_while_down(), 1);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(None), 1);
        assert_eq!(retry_after_secs(Some(Duration::ZERO)), 1);
        assert_eq!(retry_after_secs(Some(Duration::from_secs(2))), 2);
        assert_eq!(retry_after_secs(Some(Duration::from_millis(2001))), 3);
    }

    #[test]
    fn outcomes_and_retries() {
        assert_eq!(classify(&Ok(200)), Outcome::Success);
        assert_eq!(classify(&Ok(404)), Outcome::Success);
        assert_eq!(classify(&Ok(503)), Outcome::Failure);
        assert!(retry_if(&Ok(500)));
        assert!(!retry_if(&Ok(200)));
        assert!(!retry_if(&Err(TenlivesError::TimedOut {
            after: Duration::from_secs(1)
        })));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_default_protection_builds() {
        let ring = Arc::new(EventRing::with_capacity(64).unwrap());
        for rate in [1, 50, 200, 5000] {
            let layer = Protection::for_rate(rate)
                .build(TokioClock::new(), &ring)
                .unwrap();
            let policies = layer.policies();
            assert!(policies.breaker().is_some() && policies.rate_limit().is_some());
            assert_eq!(policies.limit().unwrap().limit(), 32);
            assert_eq!(
                policies.hold(),
                Some((hold_for_rate(rate), hold_cap_for_rate(rate)))
            );
        }
    }
}
