//! The admission queue, beside tokio's `Semaphore` (a FIFO queue of
//! waiters behind a mutex).
//!
//! What is measured, per operation:
//!
//! - `queue/acquire_release`: one permit taken and given back while nobody
//!   waits (the fast path). Subjects: tenlives `AdmissionQueue::try_acquire`
//!   and a drop of its permit, over a `Bulkhead` of 1000; the `Acquire`
//!   future polled once (ready) and dropped with its permit; the bare
//!   `Bulkhead` the queue stands in front of (the floor); tokio
//!   `Semaphore::try_acquire` and drop; tokio `Semaphore::acquire` polled
//!   once (ready) and drop. On 1 thread (`1_thread`) and on 2 threads
//!   sharing one subject (`2_threads`: ns per operation per thread, the wall
//!   time for both threads to do `iters` operations each, over `iters`).
//! - `queue/enqueue_grant`: the waiting path. Each thread holds one permit
//!   of a source that has exactly one per thread, so every request waits:
//!   start an acquisition (it queues), release the permit held (it goes to
//!   the oldest waiter), then poll until the own acquisition is granted,
//!   which becomes the permit held for the next operation. So one operation
//!   is one enqueue, one hand-over and one wake-up. (At the very end of a
//!   2-thread run, after the other thread has stopped, the first poll may
//!   find a permit free.) tenlives: the `Acquire` future on a FIFO queue
//!   over a `Bulkhead`; tokio: the `Semaphore::acquire` future. On 1 and 2
//!   threads (2 permits, 2 threads: a thread's release often serves the
//!   other's waiter).
//! - `queue/layer_wait`: the tower layers when a request has to wait. One
//!   operation is a pair of requests through a concurrency limit of 1, on a
//!   current-thread tokio runtime (one `block_on` for all `iters` pairs):
//!   the first is admitted and returns `Pending` once; the second, sent
//!   through a clone of the service meanwhile, waits for the first's permit
//!   and then does the same. Subjects: tenlives `AdmissionQueueLayer` (FIFO
//!   queue of 64 over a `Bulkhead` of 1, 1 s maximum wait: the waiting
//!   request enqueues in `call`, arms its deadline timer, and is woken
//!   through its slot), tower's `ConcurrencyLimit` (the second waits in
//!   `poll_ready` on tokio's `Semaphore`, for as long as it takes), the same
//!   with the wait bounded as a tower user would, by `tokio::time::timeout`
//!   (1 s) around the second's `ready()` (`_bounded`: one timer per waiting
//!   request, as in tenlives), and the same pair without any limit (`bare`:
//!   the floor, where nothing waits). 1 thread.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Barrier;
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::queue::{AdmissionQueue, QueueConfig};
use tenlives_engine::time::{ManualClock, Timestamp};
use tenlives_tokio::AdmissionQueueLayer;
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};

#[path = "support/pending_once.rs"]
mod pending_once;
mod support;
use pending_once::PendingOnce;

/// Permits for the fast path: far more than 2 threads ever hold.
const LIMIT: u32 = 1000;

fn queue(limit: u32) -> AdmissionQueue<Bulkhead> {
    AdmissionQueue::new(
        Bulkhead::new(limit).expect("valid limit"),
        QueueConfig::fifo(64).expect("valid config"),
    )
}

/// Runs `op` `iters` times on each of 2 threads, each with its own state
/// from `init`, started together; returns the wall time from the first start
/// to the last end.
fn two_threads<T>(iters: u64, init: impl Fn() -> T + Sync, op: impl Fn(&mut T) + Sync) -> Duration {
    let barrier = Barrier::new(2);
    let spans: Vec<(Instant, Instant)> = thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let mut state = init();
                    barrier.wait();
                    let began = Instant::now();
                    for _ in 0..iters {
                        op(&mut state);
                    }
                    let ended = Instant::now();
                    drop(state);
                    (began, ended)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker panicked"))
            .collect()
    });
    let first = spans.iter().map(|s| s.0).min().expect("two spans");
    let last = spans.iter().map(|s| s.1).max().expect("two spans");
    last - first
}

/// `op` on 1 thread and on 2 threads, each thread with state from `init`.
fn both<T>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    init: impl Fn() -> T + Sync,
    op: impl Fn(&mut T) + Sync,
) {
    group.bench_function(format!("{name}/1_thread"), |b| {
        let mut state = init();
        b.iter(|| op(&mut state));
    });
    group.bench_function(format!("{name}/2_threads"), |b| {
        b.iter_custom(|iters| two_threads(iters, &init, &op));
    });
}

/// Polls `fut` until it is ready (the other thread's release will come).
fn ready<F: Future>(mut fut: std::pin::Pin<&mut F>, cx: &mut Context<'_>) -> F::Output {
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return out;
        }
        std::hint::spin_loop();
    }
}

fn bench_fast_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue/acquire_release");
    let clock = ManualClock::new();
    let cx = || Context::from_waker(Waker::noop());

    let bulkhead = Bulkhead::new(LIMIT).expect("valid limit");
    both(
        &mut group,
        "floor_bulkhead",
        || (),
        |_| {
            drop(black_box(bulkhead.try_acquire().expect("below the limit")));
        },
    );

    let q = queue(LIMIT);
    both(
        &mut group,
        "tenlives_try_acquire",
        || (),
        |_| {
            drop(black_box(q.try_acquire().expect("below the limit")));
        },
    );
    both(&mut group, "tenlives_acquire_future", cx, |cx| {
        let fut = pin!(q.acquire(0, Timestamp::MAX, &clock));
        let Poll::Ready(Ok(p)) = fut.poll(cx) else {
            panic!("below the limit")
        };
        drop(black_box(p));
    });
    assert_eq!(q.source().in_flight(), 0);

    let semaphore = Semaphore::new(LIMIT as usize);
    both(
        &mut group,
        "tokio_try_acquire",
        || (),
        |_| {
            drop(black_box(semaphore.try_acquire().expect("below the limit")));
        },
    );
    both(&mut group, "tokio_acquire_future", cx, |cx| {
        let fut = pin!(semaphore.acquire());
        let Poll::Ready(Ok(p)) = fut.poll(cx) else {
            panic!("below the limit")
        };
        drop(black_box(p));
    });
    assert_eq!(semaphore.available_permits(), LIMIT as usize);
    group.finish();
}

fn bench_enqueue_grant(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue/enqueue_grant");
    let clock = ManualClock::new();

    for (threads, name) in [(1u32, "1_thread"), (2, "2_threads")] {
        let q = queue(threads);
        let semaphore = Semaphore::new(threads as usize);
        let waker = Waker::noop();

        // Each thread's state: the permit it holds between operations. The
        // first poll finds every permit held (and queues), except at the
        // end of a 2-thread run, after the other thread dropped its permit.
        let tenlives_init = || Some(q.try_acquire().expect("one permit per thread"));
        let tenlives_op = |held: &mut Option<_>| {
            let mut cx = Context::from_waker(waker);
            let mut fut = pin!(q.acquire(0, Timestamp::MAX, &clock));
            let first = fut.as_mut().poll(&mut cx);
            drop(held.take());
            *held = Some(match first {
                Poll::Ready(r) => r.expect("granted"),
                Poll::Pending => ready(fut, &mut cx).expect("granted"),
            });
        };
        let tokio_init = || Some(semaphore.try_acquire().expect("one permit per thread"));
        let tokio_op = |held: &mut Option<_>| {
            let mut cx = Context::from_waker(waker);
            let mut fut = pin!(semaphore.acquire());
            let first = fut.as_mut().poll(&mut cx);
            drop(held.take());
            *held = Some(match first {
                Poll::Ready(r) => r.expect("granted"),
                Poll::Pending => ready(fut, &mut cx).expect("granted"),
            });
        };

        if threads == 1 {
            group.bench_function(format!("tenlives/{name}"), |b| {
                let mut held = tenlives_init();
                b.iter(|| tenlives_op(&mut held));
            });
            group.bench_function(format!("tokio/{name}"), |b| {
                let mut held = tokio_init();
                b.iter(|| tokio_op(&mut held));
            });
        } else {
            group.bench_function(format!("tenlives/{name}"), |b| {
                b.iter_custom(|iters| two_threads(iters, tenlives_init, tenlives_op));
            });
            group.bench_function(format!("tokio/{name}"), |b| {
                b.iter_custom(|iters| two_threads(iters, tokio_init, tokio_op));
            });
        }
        assert_eq!(q.source().in_flight(), 0);
        assert_eq!(q.waiting(), 0);
        assert_eq!(semaphore.available_permits(), threads as usize);
    }
    group.finish();
}

/// Drives both futures to completion, polling `a` first each time, and
/// drops each as soon as it completes (tower's `ConcurrencyLimit` releases
/// its permit when its response future is dropped, not when it completes).
async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (pin!(Some(a)), pin!(Some(b)));
    let (mut out_a, mut out_b) = (None, None);
    std::future::poll_fn(|cx| {
        if let Some(fut) = a.as_mut().as_pin_mut()
            && let Poll::Ready(out) = fut.poll(cx)
        {
            out_a = Some(out);
            a.set(None);
        }
        if let Some(fut) = b.as_mut().as_pin_mut()
            && let Poll::Ready(out) = fut.poll(cx)
        {
            out_b = Some(out);
            b.set(None);
        }
        match (out_a.take(), out_b.take()) {
            (Some(a), Some(b)) => Poll::Ready((a, b)),
            (a, b) => {
                (out_a, out_b) = (a, b);
                Poll::Pending
            }
        }
    })
    .await
}

/// `iters` pairs through `svc` (see the module documentation): the first
/// request holds the one permit while the second, through a clone, waits.
/// With `bound`, the second's `ready()` is bounded by a tokio timeout (how
/// a tower user bounds the wait of a `ConcurrencyLimit`, which happens in
/// `poll_ready`).
fn time_pairs<S>(
    rt: &tokio::runtime::Runtime,
    svc: &S,
    bound: Option<Duration>,
    iters: u64,
) -> Duration
where
    S: Service<u64> + Clone,
    S::Error: std::fmt::Debug,
{
    let mut first = svc.clone();
    let mut second = svc.clone();
    rt.block_on(async {
        let began = Instant::now();
        for i in 0..iters {
            let a = first.ready().await.expect("ready").call(i);
            let b = async {
                let ready = match bound {
                    Some(limit) => tokio::time::timeout(limit, second.ready())
                        .await
                        .expect("ready in time"),
                    None => second.ready().await,
                };
                ready.expect("ready").call(i).await
            };
            let (a, b) = join(a, b).await;
            black_box((a.expect("served"), b.expect("served")));
        }
        began.elapsed()
    })
}

fn bench_layer_wait(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue/layer_wait");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");

    let layer = rt.block_on(async { AdmissionQueueLayer::new(queue(1), Duration::from_secs(1)) });
    let tenlives = layer.layer(PendingOnce);
    group.bench_function("tenlives_admission_queue/1_thread", |b| {
        b.iter_custom(|iters| time_pairs(&rt, &tenlives, None, iters));
    });
    assert_eq!(layer.queue().source().in_flight(), 0);
    assert_eq!(layer.queue().waiting(), 0);

    let tower = tower::limit::ConcurrencyLimitLayer::new(1).layer(PendingOnce);
    group.bench_function("tower_concurrency_limit/1_thread", |b| {
        b.iter_custom(|iters| time_pairs(&rt, &tower, None, iters));
    });
    let max_wait = Some(Duration::from_secs(1));
    group.bench_function("tower_concurrency_limit_bounded/1_thread", |b| {
        b.iter_custom(|iters| time_pairs(&rt, &tower, max_wait, iters));
    });

    group.bench_function("bare/1_thread", |b| {
        b.iter_custom(|iters| time_pairs(&rt, &PendingOnce, None, iters));
    });
    group.finish();
}

/// The harness. A module of its own because `criterion_group!` makes a `pub`
/// function it cannot document; here it is not exported, so it needs no doc.
mod harness {
    use super::*;

    criterion_group! {
        name = benches;
        config = support::config();
        targets = bench_fast_path, bench_enqueue_grant, bench_layer_wait
    }
}
criterion_main!(harness::benches);
