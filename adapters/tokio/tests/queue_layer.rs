//! The admission-queue layer under tokio's paused clock: arrival order,
//! weighted classes, shedding, the bounded wait, typed rejections, tower's
//! `poll_ready` contract, and Q1/Q8 through the layer: a response future
//! dropped while waiting, after its grant, or while its call runs, or
//! unwound by a panicking service, gives back its place, its permit and its
//! `Arc` of the queue.

mod common;

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use common::{Backend, Call, poll_once, ready_call};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::queue::{AdmissionQueue, Overload, QueueConfig};
use tenlives_tokio::{AdmissionQueueLayer, Rejection, RejectionReason, TenlivesError};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

const MAX_WAIT: Duration = Duration::from_millis(100);

fn layer(limit: u32, config: QueueConfig) -> AdmissionQueueLayer<Bulkhead> {
    AdmissionQueueLayer::new(
        AdmissionQueue::new(Bulkhead::new(limit).unwrap(), config),
        MAX_WAIT,
    )
}

/// A request for [`Work`]: who it is, its class, how long it runs.
#[derive(Clone, Copy, Debug)]
struct Job {
    id: u32,
    class: u16,
    ms: u64,
}

fn job(id: u32, class: u16, ms: u64) -> Job {
    Job { id, class, ms }
}

/// A service that logs the order in which its calls start, then sleeps.
#[derive(Clone, Default)]
struct Work {
    started: Arc<Mutex<Vec<u32>>>,
}

impl Work {
    fn started(&self) -> Vec<u32> {
        self.started.lock().unwrap().clone()
    }
}

impl Service<Job> for Work {
    type Response = u32;
    type Error = &'static str;
    type Future = Pin<Box<dyn Future<Output = Result<u32, &'static str>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, job: Job) -> Self::Future {
        self.started.lock().unwrap().push(job.id);
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(job.ms)).await;
            Ok(job.id)
        })
    }
}

fn reason<T: std::fmt::Debug, E: std::fmt::Debug>(
    result: Result<T, TenlivesError<E>>,
) -> (RejectionReason, Option<Duration>) {
    match result {
        Err(TenlivesError::Rejected(r)) => (r.reason(), r.retry_after()),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn assert_send_static<T: Send + 'static>(_: &T) {}

#[tokio::test(start_paused = true)]
async fn waiting_requests_are_served_in_the_order_they_were_called() {
    let layer = layer(1, QueueConfig::fifo(8).unwrap());
    let work = Work::default();
    let mut svc = layer.layer(work.clone());
    let start = Instant::now();
    let mut futures = Vec::new();
    for id in 0..6 {
        futures.push(svc.ready().await.unwrap().call(job(id, 0, 10)));
    }
    assert_eq!(layer.queue().waiting(), 5, "the first runs, five wait");
    // Spawned (the futures are 'static) in reverse order: the queue, not
    // the order of polling, decides.
    assert_send_static(&futures[0]);
    let mut handles: Vec<_> = futures.into_iter().rev().map(tokio::spawn).collect();
    handles.reverse();
    for (id, handle) in (0..6).zip(handles) {
        assert_eq!(handle.await.unwrap().unwrap(), id);
        // Each call runs 10 ms, one at a time, each starting when the last
        // one's permit is handed over.
        assert!(Instant::now() >= start + Duration::from_millis(10 * u64::from(id + 1)));
    }
    assert_eq!(start.elapsed(), Duration::from_millis(60));
    assert_eq!(work.started(), vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(layer.queue().source().in_flight(), 0);
    assert_eq!(layer.queue().waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn weighted_classes_share_the_permits_by_weight() {
    // Class 1 has three times the weight of class 0.
    let config = QueueConfig::weighted(16, &[1, 3]).unwrap();
    let layer = layer(1, config).class_by(|j: &Job| j.class);
    let work = Work::default();
    let mut svc = layer.layer(work.clone());
    let mut handles = Vec::new();
    // The first call takes the permit; then four of each class wait, class
    // 0 first.
    handles.push(tokio::spawn(
        svc.ready().await.unwrap().call(job(100, 0, 1)),
    ));
    for (id, class) in [
        (0, 0),
        (1, 0),
        (2, 0),
        (3, 0),
        (10, 1),
        (11, 1),
        (12, 1),
        (13, 1),
    ] {
        handles.push(tokio::spawn(
            svc.ready().await.unwrap().call(job(id, class, 1)),
        ));
    }
    for handle in handles {
        handle.await.unwrap().unwrap();
    }
    // Deficit round robin: a visit to class 0 grants one, to class 1 three.
    assert_eq!(work.started(), vec![100, 0, 10, 11, 12, 1, 13, 2, 3]);
    assert_eq!(layer.queue().source().in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_request_that_finds_the_queue_full_is_refused_at_once() {
    let layer = layer(1, QueueConfig::fifo(2).unwrap());
    let mut backend = layer.layer(Backend::new());
    let held = layer.queue().try_acquire_owned().unwrap();
    let mut a = pin!(ready_call(&mut backend, Call::Ok(1)));
    let mut b = pin!(ready_call(&mut backend, Call::Ok(2)));
    assert!(poll_once(a.as_mut()).is_pending());
    assert!(poll_once(b.as_mut()).is_pending());
    let full = poll_once(pin!(ready_call(&mut backend, Call::Ok(3))));
    let Poll::Ready(full) = full else {
        panic!("refused on arrival")
    };
    assert_eq!(reason(full), (RejectionReason::QueueFull, Some(MAX_WAIT)));
    drop(held);
    assert_eq!(a.await.unwrap(), 1);
    assert_eq!(b.await.unwrap(), 2);
    assert_eq!(
        backend.get_ref().calls(),
        2,
        "the refused request was not sent"
    );
    assert_eq!(layer.queue().source().in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_oldest_waiter_is_shed_and_told_at_once() {
    let layer = layer(
        1,
        QueueConfig::fifo(2).unwrap().overload(Overload::ShedOldest),
    );
    let mut svc = layer.layer(Backend::new());
    let held = layer.queue().try_acquire_owned().unwrap();
    let mut oldest = pin!(ready_call(&mut svc, Call::Ok(1)));
    assert!(poll_once(oldest.as_mut()).is_pending());
    let b = tokio::spawn(ready_call(&mut svc, Call::Ok(2)));
    let c = tokio::spawn(ready_call(&mut svc, Call::Ok(3)));
    // `c` overflowed the queue: `oldest` was shed in the same pass.
    let Poll::Ready(shed) = poll_once(oldest.as_mut()) else {
        panic!("decided in the pass that linked the newcomer")
    };
    assert_eq!(
        reason(shed),
        (
            RejectionReason::QueueShed {
                policy: Overload::ShedOldest
            },
            Some(MAX_WAIT)
        )
    );
    drop(held);
    assert_eq!(b.await.unwrap().unwrap(), 2);
    assert_eq!(c.await.unwrap().unwrap(), 3);
    assert_eq!(layer.queue().source().in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_lowest_priority_class_is_shed_first() {
    let config = QueueConfig::weighted(2, &[1, 5])
        .unwrap()
        .overload(Overload::ShedLowestPriority);
    let layer = layer(1, config).class_by(|j: &Job| j.class);
    let mut svc = layer.layer(Work::default());
    let held = layer.queue().try_acquire_owned().unwrap();
    let low = tokio::spawn(svc.ready().await.unwrap().call(job(0, 0, 1)));
    let high = tokio::spawn(svc.ready().await.unwrap().call(job(1, 1, 1)));
    let newcomer = tokio::spawn(svc.ready().await.unwrap().call(job(2, 1, 1)));
    let (r, after) = reason(low.await.unwrap());
    assert_eq!(
        (r, after),
        (
            RejectionReason::QueueShed {
                policy: Overload::ShedLowestPriority
            },
            Some(MAX_WAIT)
        )
    );
    drop(held);
    assert_eq!(high.await.unwrap().unwrap(), 1);
    assert_eq!(newcomer.await.unwrap().unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_request_waits_at_most_the_maximum_wait() {
    let layer = layer(1, QueueConfig::fifo(4).unwrap());
    let mut svc = layer.layer(Backend::new());
    let held = layer.queue().try_acquire_owned().unwrap();
    let start = Instant::now();
    let result = ready_call(&mut svc, Call::Ok(1)).await;
    assert_eq!(start.elapsed(), MAX_WAIT, "exactly the maximum wait");
    let (r, after) = reason(result);
    assert_eq!(r, RejectionReason::QueueTimeout { waited: MAX_WAIT });
    assert_eq!(after, None);
    assert_eq!(svc.get_ref().calls(), 0);
    assert_eq!(layer.queue().waiting(), 0);
    assert_eq!(layer.queue().source().in_flight(), 1, "only `held`");
    drop(held);
    assert_eq!(layer.queue().source().in_flight(), 0);
    // A request granted before its deadline runs past it unhurried.
    let slow = tokio::spawn(ready_call(&mut svc, Call::SlowMs(40)));
    let waits = tokio::spawn(ready_call(&mut svc, Call::SlowMs(200)));
    assert_eq!(slow.await.unwrap().unwrap(), 0);
    assert_eq!(waits.await.unwrap().unwrap(), 0);
    assert_eq!(start.elapsed(), MAX_WAIT + Duration::from_millis(240));
}

#[tokio::test(start_paused = true)]
async fn a_zero_maximum_wait_never_waits() {
    let layer = AdmissionQueueLayer::new(
        AdmissionQueue::new(Bulkhead::new(1).unwrap(), QueueConfig::fifo(4).unwrap()),
        Duration::ZERO,
    );
    let mut svc = layer.layer(Backend::new());
    let running = tokio::spawn(ready_call(&mut svc, Call::SlowMs(10)));
    tokio::task::yield_now().await;
    let Poll::Ready(refused) = poll_once(pin!(ready_call(&mut svc, Call::Ok(1)))) else {
        panic!("refused at once")
    };
    assert_eq!(
        reason(refused),
        (
            RejectionReason::QueueTimeout {
                waited: Duration::ZERO
            },
            None
        )
    );
    assert_eq!(layer.queue().waiting(), 0);
    running.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_unknown_class_is_a_typed_rejection() {
    let layer = layer(1, QueueConfig::fifo(4).unwrap()).class_by(|_: &Call| 7);
    let mut svc = layer.layer(Backend::new());
    // The class is asked only of requests that wait.
    let running = tokio::spawn(ready_call(&mut svc, Call::SlowMs(10)));
    tokio::task::yield_now().await;
    let refused = ready_call(&mut svc, Call::Ok(1)).await;
    assert_eq!(
        reason(refused),
        (
            RejectionReason::QueueUnknownClass {
                class: 7,
                classes: 1
            },
            None
        )
    );
    running.await.unwrap().unwrap();
}

#[test]
fn rejections_say_what_happened() {
    let message = |reason| Rejection::new(reason, None).to_string();
    assert_eq!(
        message(RejectionReason::QueueFull),
        "rejected: the admission queue is full"
    );
    assert_eq!(
        message(RejectionReason::QueueShed {
            policy: Overload::ShedOldest
        }),
        "rejected: shed from the admission queue as its oldest waiter"
    );
    assert_eq!(
        message(RejectionReason::QueueShed {
            policy: Overload::ShedLowestPriority
        }),
        "rejected: shed from the admission queue as its lowest-priority waiter"
    );
    assert_eq!(
        message(RejectionReason::QueueTimeout {
            waited: Duration::from_millis(250)
        }),
        "rejected: no permit within the admission queue's maximum wait (250ms)"
    );
    assert_eq!(
        message(RejectionReason::QueueUnknownClass {
            class: 3,
            classes: 2
        }),
        "rejected: class 3 does not exist; the admission queue has 2"
    );
}

/// The backend panics if any service value is called without its own
/// `poll_ready`: a waiting request calls the very service that was polled
/// ready, and the clone left behind is polled before the next call.
#[tokio::test(start_paused = true)]
async fn waiting_requests_keep_tower_s_poll_ready_contract() {
    let layer = layer(2, QueueConfig::fifo(8).unwrap());
    let backend = Backend::new();
    let mut svc = layer.layer(backend.clone());
    let mut handles = Vec::new();
    for _ in 0..6 {
        let fut = svc.ready().await.unwrap().call(Call::SlowMs(5));
        handles.push(tokio::spawn(fut));
    }
    for handle in handles {
        assert_eq!(handle.await.unwrap().unwrap(), 0);
    }
    assert_eq!(backend.calls(), 6);
    assert_eq!(layer.queue().source().in_flight(), 0);
}

/// The queue's `Arc`: one for the layer, one for the service, and whatever
/// requests hold.
fn arcs(layer: &AdmissionQueueLayer<Bulkhead>) -> usize {
    Arc::strong_count(layer.queue())
}

#[tokio::test(start_paused = true)]
async fn a_future_dropped_while_waiting_gives_up_its_place() {
    let layer = layer(1, QueueConfig::fifo(4).unwrap());
    let mut svc = layer.layer(Backend::new());
    let held = layer.queue().try_acquire_owned().unwrap();
    let base = arcs(&layer) - 1;
    {
        let mut fut = pin!(ready_call(&mut svc, Call::Ok(1)));
        assert!(poll_once(fut.as_mut()).is_pending());
        assert_eq!(layer.queue().waiting(), 1);
        assert_eq!(arcs(&layer), base + 2, "`held` and the waiter");
    }
    assert_eq!(layer.queue().waiting(), 0);
    assert_eq!(arcs(&layer), base + 1);
    drop(held);
    assert_eq!(
        layer.queue().source().in_flight(),
        0,
        "back to the bulkhead"
    );
    assert_eq!(arcs(&layer), base);
    assert_eq!(svc.get_ref().calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_future_dropped_after_its_grant_passes_the_permit_on() {
    let layer = layer(1, QueueConfig::fifo(4).unwrap());
    let mut svc = layer.layer(Backend::new());
    let base = arcs(&layer);
    let held = layer.queue().try_acquire_owned().unwrap();
    let mut granted = Box::pin(ready_call(&mut svc, Call::Ok(1)));
    let mut next = pin!(ready_call(&mut svc, Call::Ok(2)));
    assert!(poll_once(granted.as_mut()).is_pending());
    assert!(poll_once(next.as_mut()).is_pending());
    drop(held); // granted to `granted`, which never looks
    drop(granted);
    assert_eq!(layer.queue().source().in_flight(), 1, "handed to `next`");
    assert_eq!(next.await.unwrap(), 2);
    assert_eq!(layer.queue().source().in_flight(), 0);
    assert_eq!(arcs(&layer), base);
    assert_eq!(svc.get_ref().calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_future_dropped_while_its_call_runs_releases_the_permit() {
    let layer = layer(1, QueueConfig::fifo(4).unwrap());
    let mut svc = layer.layer(Backend::new());
    let base = arcs(&layer);
    // Granted at once, then after waiting: both paths drop mid-flight.
    let mut first = Box::pin(ready_call(&mut svc, Call::Forever));
    let mut second = Box::pin(ready_call(&mut svc, Call::Forever));
    assert!(poll_once(first.as_mut()).is_pending());
    assert!(poll_once(second.as_mut()).is_pending());
    assert_eq!(layer.queue().waiting(), 1);
    drop(first);
    assert!(poll_once(second.as_mut()).is_pending(), "running now");
    assert_eq!(svc.get_ref().calls(), 2);
    assert_eq!(layer.queue().source().in_flight(), 1);
    drop(second);
    assert_eq!(layer.queue().source().in_flight(), 0);
    assert_eq!(layer.queue().waiting(), 0);
    assert_eq!(arcs(&layer), base);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_service_releases_the_permit() {
    let layer = layer(1, QueueConfig::fifo(4).unwrap());
    let mut svc = layer.layer(Backend::new());
    let base = arcs(&layer);
    // Granted at once: the call's future panics.
    {
        let mut fut = pin!(ready_call(&mut svc, Call::Panic));
        assert!(catch_unwind(AssertUnwindSafe(|| poll_once(fut.as_mut()))).is_err());
        assert_eq!(
            layer.queue().source().in_flight(),
            1,
            "until the future is dropped"
        );
    }
    assert_eq!(layer.queue().source().in_flight(), 0);
    // Granted after waiting.
    let held = layer.queue().try_acquire_owned().unwrap();
    {
        let mut fut = pin!(ready_call(&mut svc, Call::Panic));
        assert!(poll_once(fut.as_mut()).is_pending());
        drop(held);
        assert!(catch_unwind(AssertUnwindSafe(|| poll_once(fut.as_mut()))).is_err());
    }
    assert_eq!(layer.queue().source().in_flight(), 0);
    // In a task: the panic ends the task, and everything is given back.
    let task = tokio::spawn(ready_call(&mut svc, Call::Panic));
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(layer.queue().source().in_flight(), 0);
    assert_eq!(arcs(&layer), base);
}

/// A service whose `call` itself panics (not its future).
#[derive(Clone)]
struct PanicsInCall;

impl Service<u32> for PanicsInCall {
    type Response = u32;
    type Error = &'static str;
    type Future = std::future::Ready<Result<u32, &'static str>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: u32) -> Self::Future {
        panic!("call panicked")
    }
}

#[tokio::test(start_paused = true)]
async fn a_service_whose_call_panics_after_the_grant_releases_the_permit() {
    let layer = layer(1, QueueConfig::fifo(4).unwrap());
    let mut svc = layer.layer(PanicsInCall);
    let held = layer.queue().try_acquire_owned().unwrap();
    let mut waiting = pin!(svc.ready().await.unwrap().call(1));
    assert!(poll_once(waiting.as_mut()).is_pending());
    let mut next = pin!(svc.ready().await.unwrap().call(2));
    assert!(poll_once(next.as_mut()).is_pending());
    drop(held);
    // `call` runs in the poll that takes the grant, and unwinds through it.
    assert!(catch_unwind(AssertUnwindSafe(|| poll_once(waiting.as_mut()))).is_err());
    assert_eq!(
        layer.queue().source().in_flight(),
        1,
        "the permit went to `next` while unwinding"
    );
    assert!(catch_unwind(AssertUnwindSafe(|| poll_once(next.as_mut()))).is_err());
    assert_eq!(layer.queue().source().in_flight(), 0);
    assert_eq!(layer.queue().waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn clones_share_the_queue() {
    let layer = layer(1, QueueConfig::fifo(4).unwrap());
    let mut a = layer.layer(Work::default());
    let mut b = a.clone();
    let first = a.ready().await.unwrap().call(job(0, 0, 10));
    let second = b.ready().await.unwrap().call(job(1, 0, 10));
    assert!(Arc::ptr_eq(a.queue(), b.queue()));
    assert_eq!(layer.queue().waiting(), 1);
    let (x, y) = tokio::join!(first, second);
    assert_eq!((x.unwrap(), y.unwrap()), (0, 1));
}
