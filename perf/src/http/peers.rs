//! The peers' fronts: the same upstream behind tower-resilience's layers
//! and behind failsafe's circuit breaker, configured as their users would
//! set them for the same service, so that the goodput scenarios compare
//! policies, not settings.
//!
//! - **tower-resilience** 0.13, in the order its composition guide
//!   recommends: `TimeLimiterLayer` (the protection's timeout), `RetryLayer` (as many retries, fixed 10 ms, of a `5xx` or a
//!   lost answer; no budget, its default), `CircuitBreakerLayer` (the same
//!   failure rate over a time-based window of the same length and minimum
//!   of calls, its default sliding-window model; it waits the protection's
//!   first open period, having no backoff; as many half-open calls as the
//!   protection's probes), `BulkheadLayer` (the adaptive limit's maximum,
//!   refusing when full), and a per-call `TimeLimiterLayer` of the same
//!   timeout innermost (so that its breaker counts a call that timed out).
//! - **failsafe** 1.3: its breaker, with its default policy's shape (a
//!   success rate over a time window, or failures in a row) at the
//!   protection's thresholds, dead for the protection's open periods
//!   rounded up to whole seconds (its exponential backoff counts seconds);
//!   a `tokio::time::timeout` of the protection's timeout inside it. It has
//!   no retry and no concurrency limit.
//!
//! The mapping and why each setting is what it is: `docs/demo.md`,
//! "Effectiveness beside the peers".
//!
//! A refused call is answered like tenlives' refusals (`503 breaker`,
//! `503 limit`), so the load generator sorts every front's answers the same
//! way.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use failsafe::failure_policy::FailurePolicy as _;
use http::Response;
use tower::ServiceExt as _;
use tower::util::BoxCloneSyncService;
use tower_layer::Layer;
use tower_resilience::bulkhead::{BulkheadLayer, BulkheadServiceError};
use tower_resilience::circuitbreaker::{
    CircuitBreakerError, CircuitBreakerLayer, SlidingWindowType,
};
use tower_resilience::retry::RetryLayer;
use tower_resilience::timelimiter::{TimeLimiterError, TimeLimiterLayer};
use tower_service::Service;

use super::front::{Call, CallFront, FrontCounts, Protection, UpstreamClient, UpstreamError};
use super::server::{Body, respond};

/// A peer library.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// tower-resilience: time limiter, retry, circuit breaker, bulkhead.
    TowerResilience,
    /// failsafe: a circuit breaker (and a tokio timeout).
    Failsafe,
}

impl Peer {
    /// Both peers.
    pub const ALL: [Peer; 2] = [Peer::TowerResilience, Peer::Failsafe];

    /// The front's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Peer::TowerResilience => "tower-resilience",
            Peer::Failsafe => "failsafe",
        }
    }
}

/// How a call through a peer's stack ended, when it did not end `2xx`-`4xx`.
#[derive(Debug)]
pub enum PeerFailure {
    /// The breaker refused.
    Open,
    /// The concurrency limit was full.
    Full,
    /// The timeout expired.
    Timeout,
    /// The upstream answered this `5xx`.
    Status(u16),
    /// No answer from the upstream.
    Unreachable(UpstreamError),
}

impl fmt::Display for PeerFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerFailure::Open => f.write_str("circuit breaker open"),
            PeerFailure::Full => f.write_str("concurrency limit full"),
            PeerFailure::Timeout => f.write_str("timed out"),
            PeerFailure::Status(s) => write!(f, "upstream answered {s}"),
            PeerFailure::Unreachable(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PeerFailure {}

/// The upstream client with a `5xx` answer turned into an error, which is
/// how both peers learn that a call failed (their default classifiers count
/// errors).
#[derive(Clone)]
struct StatusAsError(UpstreamClient);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl Service<Call> for StatusAsError {
    type Response = u16;
    type Error = PeerFailure;
    type Future = BoxFuture<Result<u16, PeerFailure>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PeerFailure>> {
        self.0.poll_ready(cx).map_err(PeerFailure::Unreachable)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let f = self.0.call(call);
        Box::pin(async move {
            match f.await {
                Ok(s) if s >= 500 => Err(PeerFailure::Status(s)),
                Ok(s) => Ok(s),
                Err(e) => Err(PeerFailure::Unreachable(e)),
            }
        })
    }
}

/// A peer's whole stack as one service.
pub type PeerService = BoxCloneSyncService<Call, u16, PeerFailure>;

type TowerBreakerError = CircuitBreakerError<BulkheadServiceError<PeerFailure>>;

/// Whether a result counts as a failure for tower-resilience's breaker: an
/// upstream failure, not the bulkhead's refusal.
fn tower_failure(result: &Result<u16, BulkheadServiceError<PeerFailure>>) -> bool {
    matches!(result, Err(BulkheadServiceError::Inner(_)))
}

/// Whether tower-resilience's retry tries again: an upstream failure, not a
/// refusal.
fn tower_retryable(e: &TowerBreakerError) -> bool {
    matches!(
        e,
        CircuitBreakerError::Inner(BulkheadServiceError::Inner(
            PeerFailure::Status(_) | PeerFailure::Unreachable(_)
        ))
    )
}

fn per_call_failure(e: TimeLimiterError<PeerFailure>) -> PeerFailure {
    match e {
        TimeLimiterError::Timeout => PeerFailure::Timeout,
        TimeLimiterError::Inner(e) => e,
    }
}

fn flatten_tower(e: TimeLimiterError<TowerBreakerError>) -> PeerFailure {
    match e {
        TimeLimiterError::Timeout => PeerFailure::Timeout,
        TimeLimiterError::Inner(CircuitBreakerError::OpenCircuit) => PeerFailure::Open,
        TimeLimiterError::Inner(CircuitBreakerError::Inner(BulkheadServiceError::Bulkhead(_))) => {
            PeerFailure::Full
        }
        TimeLimiterError::Inner(CircuitBreakerError::Inner(BulkheadServiceError::Inner(e))) => e,
    }
}

/// tower-resilience's layers around `upstream`, with `p`'s thresholds (see
/// the [module documentation](self)).
///
/// # Errors
///
/// When tower-resilience refuses a setting.
pub fn tower_resilience(
    p: &Protection,
    upstream: UpstreamClient,
) -> Result<PeerService, Box<dyn std::error::Error>> {
    let bulkhead = BulkheadLayer::builder()
        .max_concurrent_calls(usize::try_from(p.limits.2).unwrap_or(usize::MAX))
        .reject_when_full()
        .build()?;
    let breaker = CircuitBreakerLayer::builder()
        .failure_rate_threshold(p.failure_rate / 100.0)
        .sliding_window_type(SlidingWindowType::TimeBased)
        .sliding_window_duration(p.window)
        .minimum_number_of_calls(usize::try_from(p.minimum_calls).unwrap_or(usize::MAX))
        .wait_duration_in_open(p.open)
        .permitted_calls_in_half_open(usize::try_from(p.probes).unwrap_or(1))
        .failure_classifier(
            tower_failure as fn(&Result<u16, BulkheadServiceError<PeerFailure>>) -> bool,
        )
        .build()?;
    let retry = RetryLayer::<Call, u16, TowerBreakerError>::builder()
        .max_attempts(usize::try_from(p.retries).unwrap_or(0) + 1)
        .fixed_backoff(Duration::from_millis(10))
        .retry_on(tower_retryable)
        .build();
    let timeout = TimeLimiterLayer::builder()
        .timeout_duration(p.timeout)
        .build();
    // tower-resilience's recommended order (its `composition` guide): a
    // total timeout, retry, breaker, bulkhead, and a per-call timeout
    // innermost, so that the breaker sees a call that timed out.
    let per_call = TimeLimiterLayer::builder()
        .timeout_duration(p.timeout)
        .build()
        .layer(StatusAsError(upstream))
        .map_err(per_call_failure as fn(TimeLimiterError<PeerFailure>) -> PeerFailure);
    let service = timeout.layer(retry.layer(breaker.layer(bulkhead.layer(per_call))));
    Ok(BoxCloneSyncService::new(service.map_err(flatten_tower)))
}

/// failsafe's breaker around a timeout around `upstream`.
#[derive(Clone)]
struct FailsafeService<B> {
    breaker: B,
    timeout: Duration,
    inner: StatusAsError,
}

impl<B> Service<Call> for FailsafeService<B>
where
    B: failsafe::futures::CircuitBreaker + Clone + Send + Sync + 'static,
{
    type Response = u16;
    type Error = PeerFailure;
    type Future = BoxFuture<Result<u16, PeerFailure>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PeerFailure>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let mut inner = self.inner.clone();
        let timeout = self.timeout;
        // The call is made inside the guarded future, which failsafe polls
        // only once its breaker permits the call.
        let guarded = self.breaker.call(async move {
            match tokio::time::timeout(timeout, inner.call(call)).await {
                Ok(result) => result,
                Err(_) => Err(PeerFailure::Timeout),
            }
        });
        Box::pin(async move {
            guarded.await.map_err(|e| match e {
                failsafe::Error::Rejected => PeerFailure::Open,
                failsafe::Error::Inner(e) => e,
            })
        })
    }
}

/// failsafe's breaker with `p`'s thresholds (see the [module
/// documentation](self)) around a timeout around `upstream`.
pub fn failsafe(p: &Protection, upstream: UpstreamClient) -> PeerService {
    // failsafe's exponential backoff counts whole seconds, at least one.
    let secs = |d: Duration| Duration::from_secs(d.as_secs().max(1));
    let (open, max_open) = (secs(p.open), secs(p.max_open).max(secs(p.open)));
    let backoff = failsafe::backoff::exponential(open, max_open);
    let policy = failsafe::failure_policy::success_rate_over_time_window(
        1.0 - p.failure_rate / 100.0,
        p.minimum_calls,
        p.window,
        backoff.clone(),
    )
    .or_else(failsafe::failure_policy::consecutive_failures(
        p.consecutive_failures.unwrap_or(5),
        backoff,
    ));
    let breaker = failsafe::Config::new().failure_policy(policy).build();
    BoxCloneSyncService::new(FailsafeService {
        breaker,
        timeout: p.timeout,
        inner: StatusAsError(upstream),
    })
}

/// The answer of a peer's front to a call's result, with the same statuses
/// and `x-tenlives` tags as the protected front's.
pub fn answer_peer(result: Result<u16, PeerFailure>, counts: &FrontCounts) -> Response<Body> {
    let bump = |c: &std::sync::atomic::AtomicU64| {
        // ordering: Relaxed; a counter read only for reports.
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    match result {
        Ok(200) => {
            bump(&counts.ok);
            respond(200, &[], "ok\n")
        }
        Ok(_) | Err(PeerFailure::Status(_)) => {
            bump(&counts.upstream_error);
            respond(502, &[("x-tenlives", "upstream-error")], "upstream error\n")
        }
        Err(PeerFailure::Open) => {
            bump(&counts.breaker);
            respond(503, &[("x-tenlives", "breaker")], "circuit breaker open\n")
        }
        Err(PeerFailure::Full) => {
            bump(&counts.limit);
            respond(
                503,
                &[("x-tenlives", "limit")],
                "concurrency limit reached\n",
            )
        }
        Err(PeerFailure::Timeout) => {
            bump(&counts.timeout);
            respond(504, &[("x-tenlives", "timeout")], "upstream timed out\n")
        }
        Err(PeerFailure::Unreachable(_)) => {
            bump(&counts.unreachable);
            respond(
                502,
                &[("x-tenlives", "upstream-unreachable")],
                "upstream unreachable\n",
            )
        }
    }
}

/// A peer's front: answers by calling its upstream through the peer's
/// stack.
pub type PeerFront = CallFront<PeerService>;

impl PeerFront {
    /// `peer`'s stack with `protection`'s thresholds around `upstream`.
    ///
    /// # Errors
    ///
    /// When the peer refuses a setting.
    pub fn new(
        peer: Peer,
        protection: &Protection,
        upstream: UpstreamClient,
    ) -> Result<PeerFront, Box<dyn std::error::Error>> {
        let service = match peer {
            Peer::TowerResilience => tower_resilience(protection, upstream)?,
            Peer::Failsafe => failsafe(protection, upstream),
        };
        Ok(CallFront::with_answer(service, answer_peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_answers_sort_like_the_protected_fronts() {
        let counts = FrontCounts::default();
        let status = |r| answer_peer(r, &counts).status().as_u16();
        assert_eq!(status(Ok(200)), 200);
        assert_eq!(status(Err(PeerFailure::Status(500))), 502);
        assert_eq!(status(Err(PeerFailure::Open)), 503);
        assert_eq!(status(Err(PeerFailure::Full)), 503);
        assert_eq!(status(Err(PeerFailure::Timeout)), 504);
        let snap = counts.snapshot();
        // ok, upstream error, breaker, limit, timeout: one each.
        assert_eq!(
            snap.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            [1, 1, 0, 1, 1, 1, 0]
        );
        assert!(!tower_failure(&Ok(200)));
        assert!(tower_failure(&Err(BulkheadServiceError::Inner(
            PeerFailure::Status(503)
        ))));
        assert!(!tower_retryable(&CircuitBreakerError::OpenCircuit));
        assert!(tower_retryable(&CircuitBreakerError::Inner(
            BulkheadServiceError::Inner(PeerFailure::Status(500))
        )));
        assert!(matches!(
            flatten_tower(TimeLimiterError::Timeout),
            PeerFailure::Timeout
        ));
        assert!(matches!(
            flatten_tower(TimeLimiterError::Inner(CircuitBreakerError::OpenCircuit)),
            PeerFailure::Open
        ));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn both_peers_build_with_the_default_thresholds() {
        let client = UpstreamClient::new(
            super::super::front::http_client(4),
            "http://127.0.0.1:9/".parse().unwrap(),
        );
        for rate in [1, 200, 5000] {
            let p = Protection::for_rate(rate);
            for peer in Peer::ALL {
                assert!(PeerFront::new(peer, &p, client.clone()).is_ok(), "{peer:?}");
            }
        }
    }
}
