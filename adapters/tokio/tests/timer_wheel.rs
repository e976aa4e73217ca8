//! The stack's timer wheel (W6, W7 in docs/guarantees.md): the timeout
//! fires through the wheel on a paused clock and on a running one; a
//! request dropped or unwound by a panic after its timer was armed gives the
//! entry back (a wheel of one entry serves the next request without falling
//! back); requests beyond the wheel's capacity fall back to a tokio sleep
//! each, counted, and still time out.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tenlives_tokio::{StackLayer, TenlivesError};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// What a call does.
#[derive(Clone, Copy)]
enum Mode {
    /// Never answers (and never wakes).
    Forever,
    /// `Pending` on the first poll, a panic on the second.
    PanicLater,
}

#[derive(Clone)]
struct Backend(Mode, Arc<AtomicUsize>);

struct Reply(Mode, bool);

impl Future for Reply {
    type Output = Result<(), &'static str>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.0 {
            Mode::Forever => Poll::Pending,
            Mode::PanicLater if self.1 => panic!("the backend panicked"),
            Mode::PanicLater => {
                self.1 = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
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
        self.1.fetch_add(1, Ordering::Relaxed);
        Reply(self.0, false)
    }
}

fn backend(mode: Mode) -> Backend {
    Backend(mode, Arc::new(AtomicUsize::new(0)))
}

/// Polls `fut` once with the task's waker.
async fn poll_here<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
    let mut fut = Some(fut);
    std::future::poll_fn(|cx| Poll::Ready(fut.take().map(|f| f.poll(cx))))
        .await
        .unwrap_or(Poll::Pending)
}

#[tokio::test(start_paused = true)]
async fn the_timeout_fires_through_the_wheel_on_a_paused_clock() {
    let layer = StackLayer::builder()
        .timeout(Duration::from_millis(300))
        .build();
    let mut svc = layer.layer(backend(Mode::Forever));
    let start = Instant::now();
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(matches!(err, TenlivesError::TimedOut { .. }), "{err:?}");
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    let timers = layer.policies().timers().unwrap();
    assert_eq!(timers.fallbacks(), 0);
    assert_eq!(timers.resolution(), Duration::from_millis(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_fires_through_the_wheel_on_a_running_clock() {
    let layer = StackLayer::builder()
        .timeout(Duration::from_millis(30))
        .build();
    assert!(!layer.policies().clock().reads_runtime_clock());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut svc = layer.layer(backend(Mode::Forever));
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
            assert!(matches!(err, TenlivesError::TimedOut { .. }), "{err:?}");
            start.elapsed()
        }));
    }
    for task in tasks {
        let took = task.await.unwrap();
        // Never early; late by at most a tick, tokio's millisecond and the
        // scheduling of a busy machine.
        assert!(took >= Duration::from_millis(30), "{took:?}");
        assert!(took < Duration::from_millis(500), "{took:?}");
    }
    assert_eq!(layer.policies().timers().unwrap().fallbacks(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_request_gives_its_entry_back() {
    let layer = StackLayer::builder()
        .timeout(Duration::from_secs(1))
        .timer_wheel(1, Duration::from_millis(1))
        .unwrap()
        .build();
    let timers = layer.policies().timers().unwrap().clone();
    let mut svc = layer.layer(backend(Mode::Forever));
    for _ in 0..3 {
        let mut fut = pin!(svc.ready().await.unwrap().call(()));
        assert!(poll_here(fut.as_mut()).await.is_pending()); // armed
    } // dropped each time
    assert_eq!(timers.fallbacks(), 0, "the one entry came back each time");

    // Two at once: the second finds the entry taken and falls back.
    let mut a = pin!(svc.ready().await.unwrap().call(()));
    let mut b = pin!(svc.ready().await.unwrap().call(()));
    assert!(poll_here(a.as_mut()).await.is_pending());
    assert!(poll_here(b.as_mut()).await.is_pending());
    assert_eq!(timers.fallbacks(), 1);
    // Both still time out, the fallback on its own sleep.
    let (a, b) = tokio::join!(a, b);
    assert!(matches!(a, Err(TenlivesError::TimedOut { .. })));
    assert!(matches!(b, Err(TenlivesError::TimedOut { .. })));
}

#[tokio::test(start_paused = true)]
async fn a_request_unwound_by_a_panic_gives_its_entry_back() {
    let layer = StackLayer::builder()
        .timeout(Duration::from_secs(1))
        .timer_wheel(1, Duration::from_millis(1))
        .unwrap()
        .build();
    let timers = layer.policies().timers().unwrap().clone();
    let mut svc = layer.layer(backend(Mode::PanicLater));
    for _ in 0..3 {
        let fut = svc.ready().await.unwrap().call(());
        let mut fut = Box::pin(fut);
        assert!(poll_here(fut.as_mut()).await.is_pending()); // armed
        let unwound = std::future::poll_fn(|cx| {
            Poll::Ready(catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))))
        })
        .await;
        assert!(unwound.is_err(), "the backend panicked");
        drop(fut);
    }
    assert_eq!(timers.fallbacks(), 0, "the one entry came back each time");
}

/// The admission-queue layer's bounded wait: on the wheel, given back when
/// the waiting request is dropped, and timing out through the wheel.
#[tokio::test(start_paused = true)]
async fn the_queue_layer_waits_on_the_wheel_and_gives_entries_back() {
    use tenlives_engine::bulkhead::Bulkhead;
    use tenlives_engine::queue::{AdmissionQueue, QueueConfig};
    use tenlives_tokio::AdmissionQueueLayer;

    let layer = AdmissionQueueLayer::new(
        AdmissionQueue::new(Bulkhead::new(1).unwrap(), QueueConfig::fifo(4).unwrap()),
        Duration::from_millis(200),
    )
    .timer_wheel(1, Duration::from_millis(1))
    .unwrap();
    let mut svc = layer.layer(backend(Mode::Forever));
    // One request holds the only permit for good.
    let mut holder = pin!(svc.ready().await.unwrap().call(()));
    assert!(poll_here(holder.as_mut()).await.is_pending());
    for _ in 0..3 {
        let mut waiting = pin!(svc.ready().await.unwrap().call(()));
        assert!(poll_here(waiting.as_mut()).await.is_pending()); // armed
    } // dropped while waiting
    assert_eq!(
        layer.timers().fallbacks(),
        0,
        "the one entry came back each time"
    );
    let start = Instant::now();
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(matches!(err, TenlivesError::Rejected(_)), "{err:?}");
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert_eq!(layer.timers().fallbacks(), 0);
    assert_eq!(layer.queue().waiting(), 0);
}

/// A request that has its result gives its entry back then, not when the
/// caller gets round to dropping the future.
#[tokio::test(start_paused = true)]
async fn a_finished_request_gives_its_entry_back_before_it_is_dropped() {
    let layer = StackLayer::builder()
        .timeout(Duration::from_millis(50))
        .timer_wheel(1, Duration::from_millis(1))
        .unwrap()
        .build();
    let timers = layer.policies().timers().unwrap().clone();
    let mut svc = layer.layer(backend(Mode::Forever));
    let mut first = pin!(svc.ready().await.unwrap().call(()));
    let out = std::future::poll_fn(|cx| first.as_mut().poll(cx)).await;
    assert!(matches!(out, Err(TenlivesError::TimedOut { .. })));
    // `first` is finished but alive: the next request still gets the entry.
    let mut second = pin!(svc.ready().await.unwrap().call(()));
    assert!(poll_here(second.as_mut()).await.is_pending());
    assert_eq!(timers.fallbacks(), 0);
}

/// The stand-alone `TimeoutLayer` times out through its wheel (no fallback)
/// on a paused clock, and a call dropped or unwound by a panic after its
/// timer was armed gives the entry back: a wheel of one entry serves every
/// next request.
#[tokio::test(start_paused = true)]
async fn the_timeout_layer_waits_on_the_wheel_and_gives_entries_back() {
    use tenlives_tokio::TimeoutLayer;

    let layer = TimeoutLayer::new(Duration::from_millis(300))
        .timer_wheel(1, Duration::from_millis(1))
        .unwrap();
    let mut svc = layer.layer(backend(Mode::Forever));
    let start = Instant::now();
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(matches!(err, TenlivesError::TimedOut { .. }), "{err:?}");
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    assert_eq!(layer.timers().fallbacks(), 0);

    for _ in 0..3 {
        let mut fut = pin!(svc.ready().await.unwrap().call(()));
        assert!(poll_here(fut.as_mut()).await.is_pending()); // armed
    } // dropped each time
    assert_eq!(layer.timers().fallbacks(), 0, "the entry came back on drop");

    let mut panicking = layer.layer(backend(Mode::PanicLater));
    for _ in 0..3 {
        let mut fut = Box::pin(panicking.ready().await.unwrap().call(()));
        assert!(poll_here(fut.as_mut()).await.is_pending()); // armed
        let unwound = std::future::poll_fn(|cx| {
            Poll::Ready(catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))))
        })
        .await;
        assert!(unwound.is_err(), "the backend panicked");
        drop(fut);
    }
    assert_eq!(
        layer.timers().fallbacks(),
        0,
        "the entry came back on panic"
    );

    // Two at once: the second falls back to a sleep of its own, counted,
    // and both still time out.
    let mut a = pin!(svc.ready().await.unwrap().call(()));
    let mut b = pin!(svc.ready().await.unwrap().call(()));
    assert!(poll_here(a.as_mut()).await.is_pending());
    assert!(poll_here(b.as_mut()).await.is_pending());
    assert_eq!(layer.timers().fallbacks(), 1);
    let (a, b) = tokio::join!(a, b);
    assert!(matches!(a, Err(TenlivesError::TimedOut { .. })));
    assert!(matches!(b, Err(TenlivesError::TimedOut { .. })));
}

/// The timeout layer on a running clock: never early, through the wheel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_layer_fires_through_the_wheel_on_a_running_clock() {
    let layer = tenlives_tokio::TimeoutLayer::new(Duration::from_millis(30));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut svc = layer.layer(backend(Mode::Forever));
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
            assert!(matches!(err, TenlivesError::TimedOut { .. }), "{err:?}");
            start.elapsed()
        }));
    }
    for task in tasks {
        let took = task.await.unwrap();
        assert!(took >= Duration::from_millis(30), "{took:?}");
        assert!(took < Duration::from_millis(500), "{took:?}");
    }
    assert_eq!(layer.timers().fallbacks(), 0);
}

/// The stand-alone `RetryLayer`'s backoff waits are wheel entries: the
/// delays are kept exactly on a paused clock, an entry goes back when its
/// wait ends (a wheel of one entry serves every retry), and one dropped
/// while waiting gives its entry back.
#[tokio::test(start_paused = true)]
async fn the_retry_layer_waits_on_the_wheel_and_gives_entries_back() {
    use tenlives_engine::retry::{Backoff, RetryBudget, RetryBudgetConfig};
    use tenlives_tokio::{RetryLayer, RetryPolicy, Timers, TokioClock};

    let backoff = Backoff::exponential(Duration::from_millis(10), 2.0, Duration::from_secs(1))
        .unwrap()
        .with_max_retries(3);
    let budget = RetryBudget::new(
        RetryBudgetConfig::builder()
            .min_per_second(1000)
            .build()
            .unwrap(),
    );
    let timers = Timers::new(1, Duration::from_millis(1), TokioClock::new()).unwrap();
    let layer = RetryLayer::with_timers(RetryPolicy::new(backoff, budget), timers);
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let mut svc = layer.layer(tower::service_fn(move |(): ()| {
        counted.fetch_add(1, Ordering::Relaxed);
        std::future::ready(Err::<(), _>("no"))
    }));
    let start = Instant::now();
    assert_eq!(svc.ready().await.unwrap().call(()).await, Err("no"));
    assert_eq!(calls.load(Ordering::Relaxed), 4);
    assert_eq!(start.elapsed(), Duration::from_millis(10 + 20 + 40));
    assert_eq!(
        layer.timers().fallbacks(),
        0,
        "one entry, given back after each wait"
    );

    for _ in 0..3 {
        let mut fut = pin!(svc.ready().await.unwrap().call(()));
        assert!(poll_here(fut.as_mut()).await.is_pending()); // waiting to retry
    } // dropped while waiting
    assert_eq!(layer.timers().fallbacks(), 0, "the entry came back on drop");
}
