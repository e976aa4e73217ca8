//! The record and shadow layers allocate nothing per request: a counting
//! global allocator (per thread) sees zero allocations while thousands of
//! requests go through each, admitted and refused by the candidate,
//! succeeding and failing, shed by a live breaker, completing at once and
//! after a `Pending`, and dropped before completing.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker};
use tenlives_ops::ConfigSet;
use tenlives_ops::config::{
    BreakerSpec, BulkheadSpec, Dur, FileSpec, OrOff, RateLimiterSpec, RetryBudgetSpec, Section,
    ThrottleSpec,
};
use tenlives_ops::replay::{Candidate, RecordLayer, Recorder, ShadowLayer, Tag, stack_outcome};
use tenlives_test_support::{CountingAllocator, allocations_during};
use tenlives_tokio::error::RejectionReason;
use tenlives_tokio::{AdmissionLayer, Rejection, TenlivesError};
use tower::{Layer, Service};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Answers after `pending` returns of `Pending`; fails odd requests.
struct Answer {
    pending: u8,
    n: u32,
}

impl Future for Answer {
    type Output = Result<u32, &'static str>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.pending > 0 {
            self.pending -= 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(if self.n % 4 == 1 {
            Err("odd")
        } else {
            Ok(self.n)
        })
    }
}

#[derive(Clone, Copy)]
struct Quiet;

impl Service<u32> for Quiet {
    type Response = u32;
    type Error = &'static str;
    type Future = Answer;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), &'static str>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, n: u32) -> Answer {
        Answer {
            pending: (n % 3) as u8,
            n,
        }
    }
}

/// A live stack stand-in that sheds deterministically: request `n` is
/// refused when `n % 7 == 3`, else answered as [`Quiet`] does.
#[derive(Clone, Copy)]
struct Shedding;

impl Service<u32> for Shedding {
    type Response = u32;
    type Error = TenlivesError<&'static str>;
    type Future = Shed;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, n: u32) -> Shed {
        Shed {
            inner: (n % 7 != 3).then(|| Quiet.call(n)),
        }
    }
}

struct Shed {
    inner: Option<Answer>,
}

impl Future for Shed {
    type Output = Result<u32, TenlivesError<&'static str>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.inner {
            None => Poll::Ready(Err(TenlivesError::Rejected(Rejection::new(
                RejectionReason::RateLimited,
                None,
            )))),
            Some(a) => Pin::new(a).poll(cx).map_err(TenlivesError::Inner),
        }
    }
}

fn section<T: Default>(spec: T) -> Section<T> {
    let mut s = Section::default();
    s.configs.insert("default".into(), spec);
    s
}

fn candidate() -> Candidate {
    let spec = FileSpec {
        circuit_breaker: section(BreakerSpec {
            consecutive_failures: Some(OrOff::On(3)),
            ..BreakerSpec::default()
        }),
        // One an hour after a burst of 3000: the first 3000 requests
        // pass, the rest are refused, however fast the test runs.
        rate_limiter: section(RateLimiterSpec {
            rate: Some(1),
            period: Some(Dur(Duration::from_secs(3600))),
            burst: Some(3000),
            ..RateLimiterSpec::default()
        }),
        bulkhead: section(BulkheadSpec {
            limit: Some(2),
            ..BulkheadSpec::default()
        }),
        retry_budget: section(RetryBudgetSpec::default()),
        throttle: section(ThrottleSpec::default()),
        ..FileSpec::default()
    };
    Candidate::from_config(&ConfigSet::from_file_spec(&spec).unwrap(), "api").unwrap()
}

/// Drives `n` requests through `svc`: most to completion, every fifth
/// dropped after its first poll.
fn drive<S>(svc: &mut S, n: u32)
where
    S: Service<u32>,
{
    let mut cx = Context::from_waker(Waker::noop());
    for i in 0..n {
        let _ = svc.poll_ready(&mut cx);
        let mut fut = pin!(svc.call(i));
        if i % 5 == 4 {
            let _ = fut.as_mut().poll(&mut cx);
            continue;
        }
        while fut.as_mut().poll(&mut cx).is_pending() {}
    }
}

fn live() -> AdmissionLayer<Arc<CircuitBreaker>> {
    AdmissionLayer::new(Arc::new(CircuitBreaker::new(
        BreakerConfig::builder()
            .consecutive_failures(1)
            .without_failure_rate()
            .open_duration(Duration::from_millis(50))
            .build()
            .unwrap(),
    )))
}

#[test]
fn recording_a_request_allocates_nothing() {
    let recorder = Arc::new(Recorder::new(2_000));
    let mut svc = RecordLayer::new(
        recorder.clone(),
        |n: &u32| Tag {
            key: u64::from(*n % 7),
            retry: n.is_multiple_of(10),
        },
        stack_outcome,
    )
    .layer(live().layer(Quiet));
    drive(&mut svc, 100);
    // Past its capacity too: 4000 requests into 2000 slots.
    assert_eq!(allocations_during(|| drive(&mut svc, 4_000)), 0);
    let trace = recorder.trace();
    assert_eq!(trace.records.len(), 2_000);
    assert!(trace.dropped > 0);
}

#[test]
fn a_shadow_decision_allocates_nothing() {
    let shadow = ShadowLayer::new(
        candidate(),
        |n: &u32| Tag {
            key: 0,
            retry: n.is_multiple_of(10),
        },
        stack_outcome,
    );
    let stats = shadow.stats();
    let breaker = Arc::new(CircuitBreaker::new(
        BreakerConfig::builder().build().unwrap(),
    ));
    let shadow = shadow.compare_breaker({
        let b = breaker.clone();
        move || b.state()
    });
    let mut svc = shadow.layer(Shedding);
    drive(&mut svc, 100);
    assert_eq!(allocations_during(|| drive(&mut svc, 4_000)), 0);
    let c = stats.counts();
    // Every path was taken.
    assert!(
        c.agreed > 0 && c.would_admit_but_rejected > 0 && c.would_reject_but_admitted > 0,
        "{c:?}"
    );
}
