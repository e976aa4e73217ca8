//! The stack with a sharded concurrency limit: requests beyond the limit are
//! rejected as by a bulkhead, and a permit comes back when its request ends,
//! is dropped, or is unwound by a panic.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tenlives_engine::sharded::ShardedBulkhead;
use tenlives_tokio::{RejectionReason, StackLayer, TenlivesError};
use tower::{Layer, Service, ServiceExt};

/// `Pending` on the first poll; then a panic if `panics`, else an answer.
#[derive(Clone, Copy)]
struct Backend {
    panics: bool,
}

struct Reply(bool, bool);

impl Future for Reply {
    type Output = Result<(), &'static str>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if !self.1 {
            self.1 = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        assert!(!self.0, "the backend panicked");
        Poll::Ready(Ok(()))
    }
}

impl Service<()> for Backend {
    type Response = ();
    type Error = &'static str;
    type Future = Reply;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, (): ()) -> Reply {
        Reply(self.panics, false)
    }
}

async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
}

#[tokio::test(start_paused = true)]
async fn the_stack_holds_and_gives_back_sharded_permits() {
    let layer = StackLayer::builder()
        .timeout(Duration::from_secs(1))
        .sharded_concurrency_limit(ShardedBulkhead::new(2).unwrap())
        .build();
    let limit = || layer.policies().limit().unwrap();
    let mut svc = layer.layer(Backend { panics: false });

    let mut a = Box::pin(svc.ready().await.unwrap().call(()));
    let mut b = Box::pin(svc.ready().await.unwrap().call(()));
    assert!(poll_once(&mut a).await.is_pending());
    assert!(poll_once(&mut b).await.is_pending());
    assert_eq!(limit().in_flight(), 2);
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    match err {
        TenlivesError::Rejected(r) => assert!(
            matches!(r.reason(), RejectionReason::ConcurrencyLimit { .. }),
            "{r:?}"
        ),
        other => panic!("{other:?}"),
    }

    drop(a); // cancelled
    assert_eq!(limit().in_flight(), 1);
    assert!(b.await.is_ok()); // completed
    assert_eq!(limit().in_flight(), 0);

    let mut panicking = layer.layer(Backend { panics: true });
    let mut c = Box::pin(panicking.ready().await.unwrap().call(()));
    assert!(poll_once(&mut c).await.is_pending());
    assert_eq!(limit().in_flight(), 1);
    let unwound = std::future::poll_fn(|cx| {
        Poll::Ready(catch_unwind(AssertUnwindSafe(|| c.as_mut().poll(cx))))
    })
    .await;
    assert!(unwound.is_err());
    drop(c);
    assert_eq!(
        limit().in_flight(),
        0,
        "the panicking request gave its permit back"
    );
}

/// A static stack (`into_static`) counts no reference per request and still
/// gives every permit back on completion, drop and panic; the layer's
/// clones and services keep working after the original layer is dropped.
#[tokio::test(start_paused = true)]
async fn a_static_stack_gives_back_what_it_holds() {
    let layer = StackLayer::builder()
        .timeout(Duration::from_millis(100))
        .sharded_concurrency_limit(ShardedBulkhead::new(2).unwrap())
        .build();
    assert!(layer.is_counted());
    let layer = layer.into_static();
    assert!(!layer.is_counted());
    let mut svc = layer.layer(Backend { panics: false });
    let probe = layer.clone();
    drop(layer);
    let limit = || probe.policies().limit().unwrap();
    for _ in 0..3 {
        assert!(svc.ready().await.unwrap().call(()).await.is_ok());
    }
    let mut a = Box::pin(svc.ready().await.unwrap().call(()));
    assert!(poll_once(&mut a).await.is_pending());
    assert_eq!(limit().in_flight(), 1);
    drop(a);
    assert_eq!(limit().in_flight(), 0);
    let mut panicking = probe.layer(Backend { panics: true });
    let mut c = Box::pin(panicking.ready().await.unwrap().call(()));
    assert!(poll_once(&mut c).await.is_pending());
    let unwound = std::future::poll_fn(|cx| {
        Poll::Ready(catch_unwind(AssertUnwindSafe(|| c.as_mut().poll(cx))))
    })
    .await;
    assert!(unwound.is_err());
    drop(c);
    assert_eq!(limit().in_flight(), 0);
    let timers = probe.policies().timers().unwrap();
    assert_eq!(timers.fallbacks(), 0);
}
