//! Deadline propagation (feature `http`) on tokio's paused clock: where the
//! budget is read from, how it bounds the call, what is refused at once,
//! what is forwarded, and that a dropped request gives its timer back.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{HeaderName, Request};
use tenlives_tokio::deadline::{
    DeadlineLayer, RemainingBudget, format_grpc_timeout, parse_grpc_timeout,
};
use tenlives_tokio::{RejectionReason, TenlivesError, Timers, TokioClock};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};

/// What the upstream saw: the budget extension, the two headers.
type Seen = (Option<Duration>, Option<String>, Option<String>);

const CUSTOM: HeaderName = HeaderName::from_static("x-request-timeout-ms");

/// An upstream that takes `ms` and reports what it was given.
fn upstream(
    ms: u64,
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<()>, Response = Seen, Error = std::io::Error, Future: Send> + Clone {
    service_fn(move |req: Request<()>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let header = |name: &HeaderName| {
                req.headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
            };
            Ok((
                req.extensions().get::<RemainingBudget>().map(|b| b.0),
                header(&HeaderName::from_static("grpc-timeout")),
                header(&CUSTOM),
            ))
        }
    })
}

fn request(headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder();
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

#[test]
fn grpc_timeout_values_parse_and_format() {
    for (text, d) in [
        ("1H", Duration::from_secs(3600)),
        ("2M", Duration::from_secs(120)),
        ("3S", Duration::from_secs(3)),
        ("250m", Duration::from_millis(250)),
        ("99999999u", Duration::from_micros(99_999_999)),
        ("0n", Duration::ZERO),
    ] {
        assert_eq!(parse_grpc_timeout(text.as_bytes()), Some(d), "{text}");
    }
    for bad in ["", "m", "123456789m", "12x", "-1m", "1.5S", "１m"] {
        assert_eq!(parse_grpc_timeout(bad.as_bytes()), None, "{bad}");
    }
    let mut buf = [0u8; 9];
    for (d, text) in [
        (Duration::from_nanos(5), "5n"),
        (Duration::from_millis(500), "500000u"),
        (Duration::from_secs(100), "100000m"),
        (Duration::from_secs(1_000_000), "1000000S"),
        (Duration::MAX, "99999999H"),
    ] {
        let written = format_grpc_timeout(d, &mut buf);
        assert_eq!(std::str::from_utf8(written).unwrap(), text);
        // Formatting never gives more than there is.
        if d != Duration::MAX {
            assert!(parse_grpc_timeout(written).unwrap() <= d);
        }
    }
}

/// The extension beats `grpc-timeout`, which beats the custom header; the
/// layer's maximum bounds each; the bounded budget is forwarded in all
/// three places.
#[tokio::test(start_paused = true)]
async fn the_budget_is_read_bounded_and_forwarded() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = DeadlineLayer::new()
        .max(Duration::from_secs(1))
        .header_ms(CUSTOM);
    let mut svc = layer.layer(upstream(1, Arc::clone(&calls)));
    let mut with_ext = request(&[("grpc-timeout", "300m")]);
    with_ext
        .extensions_mut()
        .insert(RemainingBudget(Duration::from_millis(200)));
    let cases = [
        (with_ext, 200),
        (
            request(&[("grpc-timeout", "300m"), ("x-request-timeout-ms", "100")]),
            300,
        ),
        (request(&[("x-request-timeout-ms", "100")]), 100),
        (request(&[("grpc-timeout", "5S")]), 1000),
        (request(&[("grpc-timeout", "bogus")]), 1000),
        (request(&[]), 1000),
    ];
    for (req, ms) in cases {
        let seen = svc.ready().await.unwrap().call(req).await.unwrap();
        let d = Duration::from_millis(ms);
        assert_eq!(seen.0, Some(d));
        assert_eq!(seen.1.as_deref(), Some(format!("{}u", ms * 1000).as_str()));
        assert_eq!(seen.2.as_deref(), Some(ms.to_string().as_str()));
    }
}

/// The call times out when the caller's budget runs out (not the layer's
/// larger maximum), and the call in flight is dropped then.
#[tokio::test(start_paused = true)]
async fn the_call_ends_with_the_callers_budget() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = DeadlineLayer::new().max(Duration::from_secs(10));
    let mut svc = layer.layer(upstream(5_000, Arc::clone(&calls)));
    let start = Instant::now();
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(request(&[("grpc-timeout", "150m")]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TenlivesError::TimedOut { after } if after == Duration::from_millis(150))
    );
    // Within the wheel's tick.
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(150) && took <= Duration::from_millis(151),
        "{took:?}"
    );
}

/// Less than the minimum left: refused at once, the upstream never called.
#[tokio::test(start_paused = true)]
async fn work_that_cannot_finish_is_refused_at_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = DeadlineLayer::new().min(Duration::from_millis(20));
    let mut svc = layer.layer(upstream(1, Arc::clone(&calls)));
    let start = Instant::now();
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(request(&[("grpc-timeout", "19m")]))
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    match err {
        TenlivesError::Rejected(r) => assert_eq!(
            r.reason(),
            RejectionReason::DeadlineTooShort {
                remaining: Duration::from_millis(19),
                needed: Duration::from_millis(20),
            }
        ),
        other => panic!("{other:?}"),
    }
    // Exactly the minimum is enough.
    let ok = svc
        .ready()
        .await
        .unwrap()
        .call(request(&[("grpc-timeout", "20m")]))
        .await;
    assert!(ok.is_ok());
}

/// No deadline and no maximum: untouched, untimed.
#[tokio::test(start_paused = true)]
async fn no_deadline_passes_through() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = DeadlineLayer::new().layer(upstream(60_000, Arc::clone(&calls)));
    let seen = svc.ready().await.unwrap().call(request(&[])).await.unwrap();
    assert_eq!(seen, (None, None, None));
}

/// A request dropped while its deadline is armed gives the wheel's entry
/// back (a wheel of one entry: the next request takes it, no fallback).
#[tokio::test(start_paused = true)]
async fn a_dropped_request_gives_its_timer_back() {
    let calls = Arc::new(AtomicUsize::new(0));
    let timers = Timers::new(1, Duration::from_millis(1), TokioClock::new()).unwrap();
    let layer = DeadlineLayer::new().with_timers(timers.clone());
    let mut svc = layer.layer(upstream(60_000, Arc::clone(&calls)));
    let mut noop = Context::from_waker(Waker::noop());
    for _ in 0..3 {
        let mut fut = pin!(
            svc.ready()
                .await
                .unwrap()
                .call(request(&[("grpc-timeout", "1S")]))
        );
        assert!(matches!(fut.as_mut().poll(&mut noop), Poll::Pending));
    }
    assert_eq!(timers.fallbacks(), 0);
}
