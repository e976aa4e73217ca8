//! The driver of the tower layer benches, shared by `layers.rs` and the
//! ninelives comparison (`benches/ninelives-peer`, a workspace of its own),
//! so that both time the same loop: `ready().await` then `call(i).await` on
//! a service whose response future is ready at once, inside one `block_on`
//! of a current-thread tokio runtime (tokio's real clock).
//!
//! Included with `#[path]`; each includer uses a part of it.
#![allow(
    dead_code,
    reason = "each bench file that includes this uses a part of it"
)]

use std::future::{Ready, ready};
use std::hint::black_box;
use std::sync::Barrier;
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use criterion::BenchmarkGroup;
use criterion::measurement::WallTime;
use tokio::runtime::Runtime;
use tower::{Service, ServiceExt};

/// A service that answers at once and allocates nothing.
#[derive(Clone, Copy, Debug)]
pub struct Noop;

impl Service<u64> for Noop {
    type Response = u64;
    type Error = std::convert::Infallible;
    type Future = Ready<Result<u64, Self::Error>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: u64) -> Self::Future {
        ready(Ok(req))
    }
}

/// A current-thread runtime with the timer enabled.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
}

/// `iters` requests through `svc`, one after another; each must succeed.
pub async fn drive<S: Service<u64>>(svc: &mut S, iters: u64) {
    for i in 0..iters {
        let Ok(ready) = svc.ready().await else {
            panic!("the service failed in poll_ready")
        };
        let answered = ready.call(black_box(i)).await.is_ok();
        assert!(black_box(answered), "the request failed");
    }
}

/// The wall time of `iters` requests through `svc` on `rt`.
pub fn time_on<S: Service<u64>>(rt: &Runtime, svc: &mut S, iters: u64) -> Duration {
    rt.block_on(async {
        let began = Instant::now();
        drive(svc, iters).await;
        began.elapsed()
    })
}

/// Two threads, each with its own runtime and its own clone of `svc`, do
/// `iters` requests each, started together; the wall time from the first
/// start to the last end (divided by `iters`: time per request per thread).
pub fn two_threads<S>(svc: &S, iters: u64) -> Duration
where
    S: Service<u64> + Clone + Send,
{
    let barrier = Barrier::new(2);
    let spans: Vec<(Instant, Instant)> = thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let mut svc = svc.clone();
                let barrier = &barrier;
                scope.spawn(move || {
                    let rt = runtime();
                    rt.block_on(async {
                        barrier.wait();
                        let began = Instant::now();
                        drive(&mut svc, iters).await;
                        (began, Instant::now())
                    })
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker panicked"))
            .collect()
    });
    let first_start = spans.iter().map(|s| s.0).min().expect("two spans");
    let last_end = spans.iter().map(|s| s.1).max().expect("two spans");
    last_end - first_start
}

/// Benches `make()`'s service on 1 thread, as `<name>/1_thread`.
pub fn one_thread<S: Service<u64>>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    make: impl Fn() -> S,
) {
    let rt = runtime();
    // Some layers (tower's `RateLimit`) make a timer when they are built.
    let _in_runtime = rt.enter();
    let mut svc = make();
    // Sanity: the service answers (and warms its stripes and the timer).
    time_on(&rt, &mut svc, 100);
    group.bench_function(format!("{name}/1_thread"), |b| {
        b.iter_custom(|iters| time_on(&rt, &mut svc, iters));
    });
}

/// Benches `make()`'s service on 1 thread and on 2 sharing it, as
/// `<name>/1_thread` and `<name>/2_threads`.
pub fn both<S>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, make: impl Fn() -> S)
where
    S: Service<u64> + Clone + Send,
{
    one_thread(group, name, &make);
    // Built inside a runtime, for the layers that make a timer when built.
    let rt = runtime();
    let shared = {
        let _in_runtime = rt.enter();
        make()
    };
    group.bench_function(format!("{name}/2_threads"), |b| {
        b.iter_custom(|iters| two_threads(&shared, iters));
    });
}
