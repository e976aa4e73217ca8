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
use tenlives_tokio::fault::{FaultConfig, FaultLayer};
use tenlives_tokio::{
    AdmissionQueueLayer, CircuitBreakerLayer, ConcurrencyLimitLayer, KeyedRateLimitLayer,
    RateLimitLayer, RetryLayer, RetryPolicy, StackLayer, ThrottleLayer, TimeoutLayer,
};
use tower::{Layer, Service, ServiceExt, service_fn};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
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

fn capture() -> (Capture, tracing::subscriber::DefaultGuard) {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let guard = tracing::subscriber::set_default(subscriber);
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
