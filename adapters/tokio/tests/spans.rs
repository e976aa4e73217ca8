//! The `tracing` spans of every layer (feature `tracing`): a test subscriber
//! sees each span's name and every field it should carry, and the wrapped
//! service's own events inside it.
#![cfg(feature = "tracing")]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tenlives_engine::breaker::{BreakerConfig, CircuitBreaker};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::queue::{AdmissionQueue, QueueConfig};
use tenlives_engine::rate::{KeyedConfig, KeyedRateLimiter, Quota, RateLimiter};
use tenlives_engine::retry::{Backoff, RetryBudget, RetryBudgetConfig};
use tenlives_engine::throttle::{Throttle, ThrottleConfig};
use tenlives_test_support::tracing_capture;
use tenlives_tokio::fault::{FaultConfig, FaultLayer};
use tenlives_tokio::{
    AdmissionQueueLayer, CircuitBreakerLayer, ConcurrencyLimitLayer, KeyedRateLimitLayer,
    RateLimitLayer, RetryLayer, RetryPolicy, StackLayer, ThrottleLayer, TimeoutLayer,
};
use tower::{Layer, Service, ServiceExt, service_fn};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// A closed span: its name and the fields that had values.
#[derive(Clone, Debug, Default)]
struct Seen {
    name: &'static str,
    fields: BTreeMap<String, String>,
    /// Messages of the events logged inside it.
    events: Vec<String>,
}

impl Seen {
    fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

/// Records spans as they close.
#[derive(Clone, Default)]
struct Capture {
    open: Arc<Mutex<BTreeMap<u64, Seen>>>,
    closed: Arc<Mutex<Vec<Seen>>>,
}

impl Capture {
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.closed.lock().unwrap())
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        self.open.lock().unwrap().insert(
            id.into_u64(),
            Seen {
                name: attrs.metadata().name(),
                fields: fields.0,
                events: Vec::new(),
            },
        );
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        values.record(&mut fields);
        if let Some(seen) = self.open.lock().unwrap().get_mut(&id.into_u64()) {
            seen.fields.extend(fields.0);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let Some(span) = ctx.event_span(event)
            && let Some(seen) = self.open.lock().unwrap().get_mut(&span.id().into_u64())
        {
            seen.events
                .push(fields.0.remove("message").unwrap_or_default());
        }
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        if let Some(seen) = self.open.lock().unwrap().remove(&id.into_u64()) {
            self.closed.lock().unwrap().push(seen);
        }
    }
}

/// Records this thread's spans until the guard drops, through the test
/// binary's one global subscriber (`tenlives_test_support::tracing_capture`:
/// a scoped subscriber per test could miss a span whose callsite another
/// thread hit first). Only the test's thread is captured: every test runs
/// on a `current_thread` runtime, so the layers' spans and the services'
/// events happen there.
fn capture() -> (Capture, tracing_capture::Capture) {
    let capture = Capture::default();
    let guard = tracing_capture::capture(capture.clone());
    (capture, guard)
}

fn only(spans: Vec<Seen>) -> Seen {
    assert_eq!(spans.len(), 1, "one span per call: {spans:?}");
    spans.into_iter().next().unwrap()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn breaker_span_admitted_failed_then_rejected_with_reason_and_retry_after() {
    let (capture, _guard) = capture();
    let layer = CircuitBreakerLayer::new(CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(10))
            .build()
            .unwrap(),
    ));
    let mut svc = layer.layer(service_fn(|_: ()| async {
        tracing::info!("inside the call");
        Err::<(), _>("down")
    }));
    assert!(svc.ready().await.unwrap().call(()).await.is_err());
    let first = only(capture.take());
    assert_eq!(first.name, "tenlives.admission");
    assert_eq!(first.get("policy"), Some("circuit_breaker"));
    assert_eq!(first.get("decision"), Some("admitted"));
    assert_eq!(first.get("outcome"), Some("failure"));
    assert_eq!(
        first.events,
        ["inside the call"],
        "the call's events are inside its span"
    );

    assert!(svc.ready().await.unwrap().call(()).await.is_err());
    let second = only(capture.take());
    assert_eq!(second.get("decision"), Some("rejected"));
    assert_eq!(second.get("reason"), Some("CircuitBreaker(Open)"));
    assert_eq!(second.get("retry_after_ms"), Some("10000"));
    assert_eq!(second.get("outcome"), None);
    assert!(second.events.is_empty(), "the service was not called");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn limit_and_rate_spans_name_their_policy() {
    let (capture, _guard) = capture();
    let ok = || service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) });
    let mut limited = ConcurrencyLimitLayer::new(Bulkhead::new(1).unwrap()).layer(ok());
    limited.ready().await.unwrap().call(()).await.unwrap();
    let span = only(capture.take());
    assert_eq!(span.get("policy"), Some("concurrency_limit"));
    assert_eq!(span.get("decision"), Some("admitted"));
    assert_eq!(span.get("outcome"), Some("success"));

    let mut rated =
        RateLimitLayer::new(RateLimiter::new(Quota::per_second(1).unwrap())).layer(ok());
    rated.ready().await.unwrap().call(()).await.unwrap();
    let span = only(capture.take());
    assert_eq!(span.get("policy"), Some("rate_limit"));
    // A rate limiter holds nothing, so nothing classifies the outcome.
    assert_eq!(span.get("outcome"), Some("ok"));
    assert!(rated.ready().await.unwrap().call(()).await.is_err());
    let span = only(capture.take());
    assert_eq!(span.get("decision"), Some("rejected"));
    assert_eq!(span.get("reason"), Some("RateLimited"));
    assert_eq!(span.get("retry_after_ms"), Some("1000"));

    let keyed = KeyedRateLimiter::new(KeyedConfig::new(Quota::per_second(1).unwrap(), 16).unwrap());
    let mut keyed = KeyedRateLimitLayer::new(keyed, |k: &u8| *k)
        .layer(service_fn(|_: u8| async { Err::<(), _>("no") }));
    assert!(keyed.ready().await.unwrap().call(1).await.is_err());
    let span = only(capture.take());
    assert_eq!(span.name, "tenlives.keyed_rate_limit");
    assert_eq!(span.get("decision"), Some("admitted"));
    assert_eq!(span.get("outcome"), Some("error"));
    assert!(keyed.ready().await.unwrap().call(1).await.is_err());
    assert_eq!(only(capture.take()).get("decision"), Some("rejected"));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn queue_span_records_the_wait() {
    let (capture, _guard) = capture();
    let queue = AdmissionQueue::new(Bulkhead::new(1).unwrap(), QueueConfig::fifo(4).unwrap());
    let layer = AdmissionQueueLayer::new(queue, Duration::from_millis(45));
    let mut svc = layer.layer(service_fn(|ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, std::io::Error>(ms)
    }));
    let first = svc.ready().await.unwrap().call(30);
    let second = svc.ready().await.unwrap().call(10);
    let third = svc.ready().await.unwrap().call(10); // waits 40 ms: in time
    let fourth = svc.ready().await.unwrap().call(10); // 50 ms: too long
    let (a, b, c, d) = tokio::join!(first, second, third, fourth);
    assert!(a.is_ok() && b.is_ok() && c.is_ok() && d.is_err());
    let spans = capture.take();
    assert_eq!(spans.len(), 4);
    let mut waits: Vec<_> = spans
        .iter()
        .map(|s| {
            assert_eq!(s.name, "tenlives.queue");
            assert_eq!(s.get("policy"), Some("admission_queue"));
            (
                s.get("decision").unwrap().to_owned(),
                s.get("wait_ms").map(str::to_owned),
            )
        })
        .collect();
    waits.sort();
    assert_eq!(
        waits,
        [
            ("admitted".to_owned(), None),
            ("admitted".to_owned(), Some("30".to_owned())),
            ("admitted".to_owned(), Some("40".to_owned())),
            ("rejected".to_owned(), Some("45".to_owned())),
        ]
    );
    let rejected = spans
        .iter()
        .find(|s| s.get("decision") == Some("rejected"))
        .unwrap();
    assert_eq!(
        rejected.get("reason"),
        Some("QueueTimeout { waited: 45ms }")
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn throttle_timeout_retry_and_fault_spans() {
    let (capture, _guard) = capture();
    let throttle = Throttle::new(ThrottleConfig::builder().seed(1).build().unwrap());
    let mut svc = ThrottleLayer::new(throttle)
        .layer(service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) }));
    svc.ready().await.unwrap().call(()).await.unwrap();
    let span = only(capture.take());
    assert_eq!(span.name, "tenlives.throttle");
    assert_eq!(span.get("decision"), Some("admitted"));
    assert_eq!(span.get("outcome"), Some("success"));

    let mut slow = TimeoutLayer::new(Duration::from_millis(100)).layer(service_fn(|_: ()| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok::<_, std::io::Error>(())
    }));
    assert!(slow.ready().await.unwrap().call(()).await.is_err());
    let span = only(capture.take());
    assert_eq!(
        (span.name, span.get("policy")),
        ("tenlives.timeout", Some("timeout"))
    );
    assert_eq!(span.get("outcome"), Some("timed_out"));

    let backoff = Backoff::constant(Duration::from_millis(10))
        .unwrap()
        .with_max_retries(3);
    let policy = RetryPolicy::new(backoff, RetryBudget::new(RetryBudgetConfig::default()));
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    let mut flaky = RetryLayer::new(policy).layer(service_fn(move |_: ()| {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        async move { if n < 2 { Err("again") } else { Ok(n) } }
    }));
    assert_eq!(flaky.ready().await.unwrap().call(()).await, Ok(2));
    let span = only(capture.take());
    assert_eq!(span.name, "tenlives.retry");
    assert_eq!(span.get("attempts"), Some("3"));
    assert_eq!(span.get("outcome"), Some("ok"));

    let config = FaultConfig::builder().error(1.0).seed(7).build().unwrap();
    let mut faulty =
        FaultLayer::new(config).layer(service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) }));
    assert!(faulty.ready().await.unwrap().call(()).await.is_err());
    let span = only(capture.take());
    assert_eq!(span.name, "tenlives.fault");
    assert_eq!(span.get("decision"), Some("error"));
    assert_eq!(span.get("outcome"), Some("error"));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn stack_span_counts_attempts_and_records_the_last_outcome() {
    let (capture, _guard) = capture();
    let backoff = Backoff::constant(Duration::from_millis(10))
        .unwrap()
        .with_max_retries(2);
    let layer = StackLayer::builder()
        .timeout(Duration::from_secs(1))
        .retry(RetryPolicy::new(
            backoff,
            RetryBudget::new(RetryBudgetConfig::default()),
        ))
        .concurrency_limit(Bulkhead::new(4).unwrap())
        .build();
    let mut svc = layer.layer(service_fn(|_: ()| async { Err::<(), _>("down") }));
    assert!(svc.ready().await.unwrap().call(()).await.is_err());
    let span = only(capture.take());
    assert_eq!(
        (span.name, span.get("policy")),
        ("tenlives.stack", Some("stack"))
    );
    assert_eq!(span.get("attempts"), Some("3"));
    assert_eq!(span.get("decision"), Some("admitted"));
    assert_eq!(span.get("outcome"), Some("failure"));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_cancelled_call_closes_its_span_without_an_outcome() {
    let (capture, _guard) = capture();
    let mut svc =
        ConcurrencyLimitLayer::new(Bulkhead::new(1).unwrap()).layer(service_fn(|_: ()| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, std::io::Error>(())
        }));
    let call = svc.ready().await.unwrap().call(());
    assert!(
        tokio::time::timeout(Duration::from_millis(1), call)
            .await
            .is_err()
    );
    let span = only(capture.take());
    assert_eq!(span.get("decision"), Some("admitted"));
    assert_eq!(span.get("outcome"), None);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn fallback_span_says_whether_the_fallback_answered_and_why() {
    use tenlives_tokio::TenlivesError;
    use tenlives_tokio::fallback::{FallbackLayer, FallbackValue, On};

    let (capture, _guard) = capture();
    let layer = FallbackLayer::new(
        On::timeouts(),
        FallbackValue::new(|_: TenlivesError<&'static str>| Ok::<u32, _>(0)),
    );
    let mut svc = layer.layer(
        TimeoutLayer::new(Duration::from_millis(10)).layer(service_fn(|slow: bool| async move {
            tracing::info!("inside the call");
            if slow {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok::<u32, &'static str>(7)
        })),
    );
    assert_eq!(svc.ready().await.unwrap().call(false).await.unwrap(), 7);
    let spans = capture.take();
    let primary = spans
        .iter()
        .find(|s| s.name == "tenlives.fallback")
        .unwrap();
    assert_eq!(primary.get("policy"), Some("fallback"));
    assert_eq!(primary.get("decision"), Some("primary"));
    assert_eq!(primary.get("reason"), None);
    assert_eq!(primary.get("outcome"), Some("ok"));

    assert_eq!(svc.ready().await.unwrap().call(true).await.unwrap(), 0);
    let spans = capture.take();
    let taken = spans
        .iter()
        .find(|s| s.name == "tenlives.fallback")
        .unwrap();
    assert_eq!(taken.get("decision"), Some("fallback"));
    assert_eq!(taken.get("reason"), Some("timed_out"));
    assert_eq!(taken.get("outcome"), Some("ok"));
    // The timeout's span is opened inside the fallback's, and the call's
    // event inside the timeout's.
    let timeout = spans.iter().find(|s| s.name == "tenlives.timeout").unwrap();
    assert_eq!(timeout.get("outcome"), Some("timed_out"));
    assert_eq!(timeout.events, ["inside the call"]);
}

#[cfg(feature = "http")]
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn deadline_span_records_the_budget_and_a_refusal() {
    use tenlives_tokio::deadline::DeadlineLayer;

    let (capture, _guard) = capture();
    let layer = DeadlineLayer::new().min(Duration::from_millis(20));
    let mut svc = layer.layer(service_fn(|_: http::Request<()>| async {
        tracing::info!("inside the call");
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok::<(), std::io::Error>(())
    }));
    let request = |timeout: &str| {
        http::Request::builder()
            .header("grpc-timeout", timeout)
            .body(())
            .unwrap()
    };
    assert!(svc.ready().await.unwrap().call(request("2S")).await.is_ok());
    let span = only(capture.take());
    assert_eq!(span.name, "tenlives.deadline");
    assert_eq!(span.get("policy"), Some("deadline"));
    assert_eq!(span.get("decision"), Some("admitted"));
    assert_eq!(span.get("budget_ms"), Some("2000"));
    assert_eq!(span.get("outcome"), Some("ok"));
    assert_eq!(span.events, ["inside the call"]);

    assert!(
        svc.ready()
            .await
            .unwrap()
            .call(request("100m"))
            .await
            .is_err()
    );
    let span = only(capture.take());
    assert_eq!(span.get("budget_ms"), Some("100"));
    assert_eq!(span.get("outcome"), Some("timed_out"));

    assert!(
        svc.ready()
            .await
            .unwrap()
            .call(request("5m"))
            .await
            .is_err()
    );
    let span = only(capture.take());
    assert_eq!(span.get("decision"), Some("rejected"));
    assert_eq!(span.get("budget_ms"), Some("5"));
    assert!(span.get("reason").unwrap().starts_with("DeadlineTooShort"));
    assert!(span.events.is_empty());
}

#[cfg(feature = "cache")]
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn cache_span_says_hit_miss_or_bypass() {
    use tenlives_tokio::cache::ResponseCache;

    let (capture, _guard) = capture();
    let cache = ResponseCache::<u32, String>::builder(Duration::from_secs(60), 1 << 20).build();
    let mut svc = cache
        .layer(
            |r: &u32| (*r != 0).then_some(*r),
            |_: &u32, _: &String| Vec::new(),
        )
        .layer(service_fn(|r: u32| async move {
            tracing::info!("inside the call");
            Ok::<_, ()>(format!("v{r}"))
        }));
    let mut decisions = Vec::new();
    for req in [1, 1, 0] {
        assert_eq!(
            svc.ready().await.unwrap().call(req).await.unwrap(),
            format!("v{req}")
        );
        let span = only(capture.take());
        assert_eq!(span.name, "tenlives.cache");
        assert_eq!(span.get("policy"), Some("cache"));
        assert_eq!(span.get("outcome"), Some("ok"));
        let inside = if span.get("decision") == Some("hit") {
            0
        } else {
            1
        };
        assert_eq!(span.events.len(), inside, "{span:?}");
        decisions.push(span.get("decision").unwrap().to_owned());
    }
    assert_eq!(decisions, ["miss", "hit", "bypass"]);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn coalesce_span_says_who_led_and_who_joined() {
    use tenlives_tokio::CoalesceLayer;

    let (capture, _guard) = capture();
    let svc = CoalesceLayer::new(|r: &u32| *r).layer(service_fn(|r: u32| async move {
        tracing::info!("inside the call");
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok::<_, ()>(r * 2)
    }));
    let (a, b) = tokio::join!(svc.clone().oneshot(4), svc.clone().oneshot(4));
    assert_eq!((a.unwrap(), b.unwrap()), (8, 8));
    let spans = capture.take();
    assert_eq!(spans.len(), 2, "{spans:?}");
    let mut decisions: Vec<_> = spans.iter().map(|s| s.get("decision").unwrap()).collect();
    decisions.sort_unstable();
    assert_eq!(decisions, ["joined", "led"]);
    for span in &spans {
        assert_eq!(span.name, "tenlives.coalesce");
        assert_eq!(span.get("policy"), Some("coalesce"));
        assert_eq!(span.get("outcome"), Some("ok"));
    }
    let leader = spans
        .iter()
        .find(|s| s.get("decision") == Some("led"))
        .unwrap();
    assert_eq!(leader.events, ["inside the call"]);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn hedge_span_counts_the_attempts() {
    use tenlives_tokio::hedge::{HedgeDelay, HedgeLayer, HedgePolicy};

    let (capture, _guard) = capture();
    let layer = HedgeLayer::new(HedgePolicy::new(
        HedgeDelay::fixed(Duration::from_millis(50)),
        Arc::new(RetryBudget::new(RetryBudgetConfig::default())),
        |_: &u32| true,
    ));
    let calls = Arc::new(AtomicU32::new(0));
    let mut svc = layer.layer(service_fn(move |ms: u32| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            tracing::info!("inside the call");
            // The first attempt of a slow request is slower than its hedge.
            let ms = if n == 1 { ms / 10 } else { ms };
            tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
            Ok::<_, ()>(ms)
        }
    }));
    assert_eq!(svc.ready().await.unwrap().call(10).await.unwrap(), 10);
    let span = only(capture.take());
    assert_eq!(span.name, "tenlives.hedge");
    assert_eq!(span.get("policy"), Some("hedge"));
    assert_eq!(span.get("decision"), Some("not_hedged"));
    assert_eq!(span.get("attempts"), Some("1"));
    assert_eq!(span.get("outcome"), Some("ok"));
    assert_eq!(span.events, ["inside the call"]);

    assert_eq!(svc.ready().await.unwrap().call(1000).await.unwrap(), 100);
    let span = only(capture.take());
    assert_eq!(span.get("decision"), Some("hedged"));
    assert_eq!(span.get("attempts"), Some("2"));
    assert_eq!(span.get("outcome"), Some("ok"));
    assert_eq!(span.events, ["inside the call", "inside the call"]);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn eject_span_says_admitted_ejected_or_untracked() {
    use tenlives_tokio::eject::{EjectionConfig, OutlierDetector};

    let (capture, _guard) = capture();
    let breaker = BreakerConfig::builder()
        .without_failure_rate()
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(10))
        .build()
        .unwrap();
    // One endpoint tracked, and it may be ejected.
    let detector = OutlierDetector::new(EjectionConfig::new(breaker, 100, 1).unwrap());
    let endpoint = || {
        service_fn(|fail: bool| async move {
            tracing::info!("inside the call");
            if fail { Err("down") } else { Ok(()) }
        })
    };
    let mut a = detector.endpoint(1u32, endpoint());
    let mut b = detector.endpoint(2u32, endpoint());

    assert!(a.ready().await.unwrap().call(true).await.is_err());
    let span = only(capture.take());
    assert_eq!(span.name, "tenlives.eject");
    assert_eq!(span.get("policy"), Some("eject"));
    assert_eq!(span.get("decision"), Some("admitted"));
    assert_eq!(span.get("outcome"), Some("failure"));
    assert_eq!(span.events, ["inside the call"]);
    assert_eq!(detector.is_ejected(&1), Some(true));

    // Called without waiting for readiness: the endpoint's breaker refuses.
    assert!(a.call(false).await.is_err());
    let span = only(capture.take());
    assert_eq!(span.get("decision"), Some("ejected"));
    assert!(span.get("reason").is_some());
    assert_eq!(span.get("retry_after_ms"), Some("10000"));
    assert!(span.events.is_empty());

    assert!(b.ready().await.unwrap().call(false).await.is_ok());
    let span = only(capture.take());
    assert_eq!(span.get("decision"), Some("untracked"));
    assert_eq!(span.get("outcome"), Some("ok"));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn idempotency_span_says_led_joined_replayed_or_unkeyed() {
    use tenlives_tokio::{IdempotencyConfig, IdempotencyLayer, TokioClock};

    let (capture, _guard) = capture();
    let config =
        IdempotencyConfig::new(Duration::from_secs(60), 100, 100).clock(TokioClock::runtime());
    let svc = IdempotencyLayer::new(|r: &u32| (*r != 0).then_some(*r), config).layer(service_fn(
        |r: u32| async move {
            tracing::info!("inside the call");
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, ()>(r + 1)
        },
    ));
    let (a, b) = tokio::join!(svc.clone().oneshot(4), svc.clone().oneshot(4));
    assert_eq!((a.unwrap(), b.unwrap()), (5, 5));
    let spans: Vec<_> = capture
        .take()
        .into_iter()
        .filter(|s| s.name == "tenlives.idempotency")
        .collect();
    let mut decisions: Vec<_> = spans.iter().map(|s| s.get("decision").unwrap()).collect();
    decisions.sort_unstable();
    assert_eq!(decisions, ["joined", "led"]);
    for span in &spans {
        assert_eq!(span.get("policy"), Some("idempotency"));
        assert_eq!(span.get("outcome"), Some("ok"));
    }

    for (req, decision) in [(4, "replayed"), (0, "unkeyed")] {
        assert_eq!(svc.clone().oneshot(req).await.unwrap(), req + 1);
        let spans = capture.take();
        let span = spans
            .iter()
            .find(|s| s.name == "tenlives.idempotency")
            .unwrap();
        assert_eq!(span.get("decision"), Some(decision));
        assert_eq!(span.get("outcome"), Some("ok"));
        // A replay makes no call.
        let calls = spans.iter().map(|s| s.events.len()).sum::<usize>();
        assert_eq!(calls, usize::from(decision != "replayed"), "{spans:?}");
    }
}

#[cfg(feature = "http")]
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn rate_limit_headers_span_wraps_the_call() {
    use tenlives_tokio::headers::RateLimitHeadersLayer;

    let (capture, _guard) = capture();
    let limiter = Arc::new(RateLimiter::new(Quota::per_second(100).unwrap()));
    let mut svc =
        RateLimitHeadersLayer::new("api", limiter).layer(service_fn(|fail: bool| async move {
            tracing::info!("inside the call");
            if fail {
                Err("down")
            } else {
                Ok(http::Response::new(()))
            }
        }));
    for (fail, outcome) in [(false, "ok"), (true, "error")] {
        let _ = svc.ready().await.unwrap().call(fail).await;
        let span = only(capture.take());
        assert_eq!(span.name, "tenlives.rate_limit_headers");
        assert_eq!(span.get("policy"), Some("rate_limit_headers"));
        assert_eq!(span.get("outcome"), Some(outcome));
        assert_eq!(span.events, ["inside the call"]);
    }
}
