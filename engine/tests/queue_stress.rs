//! Multi-threaded stress tests of the admission queue, checking
//! conservation (Q1), exactly-one verdict per waiter and at most one wake
//! (Q2), and that no waiter is ever stranded (Q3).
//!
//! Four threads share a queue over a bulkhead of 2 permits. Each, for a
//! bounded number of rounds, asks for a permit through the `Acquire`
//! future (in a random class, with a deadline on a shared `ManualClock` or
//! none), and then either holds it briefly, or gives up after its first
//! `Pending`; thread 0 also moves the clock and sweeps with `expire`. A side
//! counter of permits held never exceeds the limit; at the end the bulkhead
//! and the queue are empty, and every waker was woken at most once.
//!
//! A waiter is stranded if it is still pending after every other thread has
//! finished: then no release, arrival or sweep can come, so the queue must
//! have decided it already. Each waiting thread checks exactly that, so a
//! stranded waiter fails the test instead of hanging it.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::queue::{AdmissionQueue, Overload, QueueConfig, Rejected};
use tenlives_engine::time::{Clock, ManualClock, Timestamp};

mod common;
use common::rng;

const THREADS: usize = 4;
const LIMIT: u32 = 2;
const ROUNDS: u64 = if cfg!(debug_assertions) {
    20_000
} else {
    200_000
};

/// Unparks its thread and counts its wakes.
struct Unpark {
    thread: Thread,
    wakes: AtomicUsize,
}

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        self.thread.unpark();
    }
}

#[derive(Default)]
struct Tally {
    granted: AtomicU64,
    timed_out: AtomicU64,
    shed: AtomicU64,
    cancelled: AtomicU64,
}

fn stress(config: QueueConfig) {
    let classes = config.classes();
    let queue = AdmissionQueue::new(Bulkhead::new(LIMIT).unwrap(), config);
    let clock = ManualClock::new();
    let holders = AtomicU32::new(0);
    let finished = AtomicUsize::new(0);
    let tally = Tally::default();
    let barrier = Barrier::new(THREADS);
    let max_wakes = thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (queue, clock, holders, finished, tally, barrier) =
                    (&queue, &clock, &holders, &finished, &tally, &barrier);
                s.spawn(move || {
                    let mut next = rng(t as u64 + 11);
                    let mut max_wakes = 0;
                    barrier.wait();
                    for _ in 0..ROUNDS {
                        if t == 0 && next().is_multiple_of(8) {
                            clock.advance(Duration::from_nanos(next() % 50));
                            queue.expire(clock.now());
                        }
                        let class = (next() % u64::from(classes)) as u16;
                        let deadline = if next().is_multiple_of(2) {
                            Timestamp::MAX
                        } else {
                            clock
                                .now()
                                .saturating_add(Duration::from_nanos(next() % 100))
                        };
                        let give_up = next().is_multiple_of(8);
                        let unpark = Arc::new(Unpark {
                            thread: thread::current(),
                            wakes: AtomicUsize::new(0),
                        });
                        let waker = Waker::from(unpark.clone());
                        let mut cx = Context::from_waker(&waker);
                        // The future lives in this block: giving up drops it,
                        // which cancels (or passes on a permit granted meanwhile).
                        let result = {
                            let mut fut = pin!(queue.acquire(class, deadline, clock));
                            let mut pending_after_others_finished = 0;
                            loop {
                                match fut.as_mut().poll(&mut cx) {
                                    Poll::Ready(r) => break Some(r),
                                    Poll::Pending if give_up => break None,
                                    Poll::Pending => {
                                        if finished.load(Ordering::SeqCst) == THREADS - 1 {
                                            pending_after_others_finished += 1;
                                            assert!(
                                                pending_after_others_finished < 2,
                                                "stranded: still waiting after every other \
                                                 thread finished"
                                            );
                                        }
                                        thread::park_timeout(Duration::from_millis(1));
                                    }
                                }
                            }
                        };
                        match result {
                            None => {
                                tally.cancelled.fetch_add(1, Ordering::Relaxed);
                            }
                            Some(Ok(permit)) => {
                                let held = holders.fetch_add(1, Ordering::SeqCst) + 1;
                                assert!(held <= LIMIT, "{held} permits held, limit {LIMIT}");
                                if next().is_multiple_of(4) {
                                    thread::yield_now();
                                }
                                holders.fetch_sub(1, Ordering::SeqCst);
                                drop(permit);
                                tally.granted.fetch_add(1, Ordering::Relaxed);
                            }
                            Some(Err(Rejected::TimedOut)) => {
                                tally.timed_out.fetch_add(1, Ordering::Relaxed);
                            }
                            Some(Err(
                                Rejected::QueueFull
                                | Rejected::ShedOldest
                                | Rejected::ShedLowPriority,
                            )) => {
                                tally.shed.fetch_add(1, Ordering::Relaxed);
                            }
                            Some(Err(other)) => panic!("unexpected refusal {other}"),
                        }
                        max_wakes = max_wakes.max(unpark.wakes.load(Ordering::SeqCst));
                    }
                    finished.fetch_add(1, Ordering::SeqCst);
                    // Late wakes of this thread's last wakers land before the
                    // queue is dropped; the maximum is re-read by the caller.
                    max_wakes
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .max()
            .unwrap()
    });
    let granted = tally.granted.load(Ordering::Relaxed);
    println!(
        "granted {granted}, timed out {}, shed {}, gave up {}",
        tally.timed_out.load(Ordering::Relaxed),
        tally.shed.load(Ordering::Relaxed),
        tally.cancelled.load(Ordering::Relaxed)
    );
    assert!(granted > 0);
    assert!(max_wakes <= 1, "a waiter was woken {max_wakes} times");
    assert_eq!(queue.source().in_flight(), 0, "every permit came back");
    assert_eq!(queue.waiting(), 0, "nobody is left waiting");
}

/// Q1, Q2, Q3 with FIFO and the newest shed.
#[test]
fn fifo_conserves_permits_and_strands_nobody() {
    stress(QueueConfig::fifo(3).unwrap());
}

/// Q1, Q2, Q3 with weighted classes and the oldest shed.
#[test]
fn weighted_classes_shedding_the_oldest_conserve_permits() {
    stress(
        QueueConfig::weighted(2, &[1, 3])
            .unwrap()
            .overload(Overload::ShedOldest),
    );
}

/// Q1, Q2, Q3 with round robin and the lowest priority shed.
#[test]
fn round_robin_shedding_by_priority_conserves_permits() {
    stress(
        QueueConfig::round_robin(2, 3)
            .unwrap()
            .overload(Overload::ShedLowestPriority),
    );
}
