//! Event emission, tenlives' `EventRing` beside tokio's `broadcast`,
//! crossbeam's `ArrayQueue` and std's `sync_channel`.
//!
//! Every subject carries the same 32-byte `tenlives_engine::events::Event`
//! and holds 1024 of them. What is measured, per operation:
//!
//! - `events/emit/<subject>/1_thread` and `/2_threads`: one event written.
//!   tenlives `EventRing::push`; tenlives `LaneRing::push` into 2 lanes of
//!   512 (as many lanes as the threads of `2_threads`, each thread keeping to
//!   its own); `LaneProducer::push` into the same shape of ring, each thread
//!   through a producer that owns a lane (taken when the thread starts,
//!   outside the timed region); tokio `broadcast::Sender::send` with one
//!   receiver alive that never reads, so the channel overwrites its oldest
//!   value as the ring does; `ArrayQueue::force_push`, which overwrites too;
//!   `SyncSender::try_send`; and a floor, one `fetch_add(1, Relaxed)` on a
//!   shared `AtomicU64`. `2_threads` is nanoseconds per operation per thread:
//!   the wall time for both threads to do `iters` operations each, divided by
//!   `iters`.
//!
//!   A `sync_channel` cannot overwrite: once full, `try_send` fails, and a
//!   failing `try_send` is a few loads, not an emission. So its threads
//!   send in batches of 1024 between them, and between batches (outside the
//!   timed region, with the threads held at a barrier) the receiver drains
//!   the channel: every timed `try_send` succeeds. Its time is the sum over
//!   batches of each batch's wall time. The other subjects run as one batch.
//! - `events/consume/<subject>`: one event written and read back on one
//!   thread: tenlives `push` + `Consumer::try_recv` (and the same for the
//!   laned ring), broadcast `send` +
//!   `Receiver::try_recv`, `ArrayQueue` `push` + `pop`, `sync_channel`
//!   `try_send` + `try_recv`.
//! - `events/sink/<subject>`: what events cost a circuit breaker. The same
//!   breaker (default configuration) without a sink (`NoSink`) and with an
//!   `EventRing` of 1024 as its sink: a rejection by a force-opened breaker,
//!   which emits one `BREAKER_REJECTED` event when there is a sink, and a
//!   closed breaker's admitted call reported as a success, which emits
//!   nothing.
//! - `events/emit_capacity/<capacity>`: tenlives `push` on 1 thread into rings
//!   of 64, 1024 and 65536 slots: how the ring's footprint in the caches
//!   shows in the cost of a write.

use std::hint::{black_box, spin_loop};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use crossbeam_queue::ArrayQueue;
use tenlives_engine::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
use tenlives_engine::events::{
    Event, EventKind, EventReader, EventRing, EventSink, EventSource, LaneRing, LaneSlot, Received,
    Slot,
};
use tenlives_engine::time::Timestamp;

mod support;
use tokio::sync::broadcast;

/// Where the benchmarks' timestamps start: an hour after the clock's origin,
/// as a monotonic clock of a running process would read.
const START_NS: u64 = 3_600_000_000_000;

/// How many events every subject holds.
const CAPACITY: usize = 1024;

/// A ring on the heap, as an application would make one.
type Ring = EventRing<Box<[Slot]>>;

/// A laned ring on the heap.
type Lanes = LaneRing<Box<[LaneSlot]>>;

/// The laned ring's lanes: as many as the threads that emit at once in the
/// two-thread rows, so that each keeps to a lane of its own, and as many
/// slots in all as every other subject holds.
const LANES: usize = 2;

/// The event emitted at `t` nanoseconds: the same for every subject.
#[inline]
fn event_at(t: u64) -> Event {
    Event::new(EventKind::USER, 1, Timestamp::from_nanos(t), [t, 0])
}

/// Something that takes events from any number of threads.
trait Emit: Sync {
    /// How many events all threads together may write before the subject must
    /// be emptied; `None` for a subject that overwrites and never fills.
    fn batch(&self) -> Option<u64> {
        None
    }

    /// What one thread emits through: the subject itself for those shared by
    /// every thread, or a handle the thread holds (a `LaneProducer`).
    fn emitter(&self) -> impl FnMut(Event) + '_;

    /// Empties the subject (outside the timed region).
    fn empty(&self) {}
}

impl Emit for Ring {
    fn emitter(&self) -> impl FnMut(Event) + '_ {
        |event| self.push(event)
    }
}

impl Emit for Lanes {
    fn emitter(&self) -> impl FnMut(Event) + '_ {
        |event| self.push(event)
    }
}

/// A laned ring whose every thread emits through a `LaneProducer` owning a
/// lane (as many lanes as threads).
struct OwnedLanes(Lanes);

impl Emit for OwnedLanes {
    fn emitter(&self) -> impl FnMut(Event) + '_ {
        let producer = self.0.producer().expect("a lane for every thread");
        move |event| producer.push(event)
    }
}

/// A broadcast channel with a receiver that is kept alive and never reads:
/// `send` succeeds and overwrites the oldest value once the channel is full.
struct Broadcast {
    tx: broadcast::Sender<Event>,
    _idle: broadcast::Receiver<Event>,
}

impl Broadcast {
    fn new() -> Self {
        let (tx, idle) = broadcast::channel(CAPACITY);
        Broadcast { tx, _idle: idle }
    }
}

impl Emit for Broadcast {
    fn emitter(&self) -> impl FnMut(Event) + '_ {
        // `send` fails only when no receiver is alive, and one is.
        |event| {
            black_box(self.tx.send(event).is_ok());
        }
    }
}

impl Emit for ArrayQueue<Event> {
    fn emitter(&self) -> impl FnMut(Event) + '_ {
        |event| {
            black_box(self.force_push(event));
        }
    }
}

/// A bounded std channel: drained between batches so that every timed
/// `try_send` succeeds (see the header).
struct SyncChannel {
    tx: SyncSender<Event>,
    rx: Mutex<Receiver<Event>>,
}

impl SyncChannel {
    fn new() -> Self {
        let (tx, rx) = mpsc::sync_channel(CAPACITY);
        SyncChannel {
            tx,
            rx: Mutex::new(rx),
        }
    }
}

impl Emit for SyncChannel {
    fn batch(&self) -> Option<u64> {
        Some(CAPACITY as u64)
    }

    fn emitter(&self) -> impl FnMut(Event) + '_ {
        |event| self.tx.try_send(event).expect("drained before every batch")
    }

    fn empty(&self) {
        let rx = self.rx.lock().expect("not poisoned");
        let drained = rx.try_iter().count();
        assert!(drained <= CAPACITY, "a batch fits in the channel");
    }
}

/// The floor: the cheapest shared write an emission could make.
impl Emit for AtomicU64 {
    fn emitter(&self) -> impl FnMut(Event) + '_ {
        |_event| {
            black_box(self.fetch_add(1, Ordering::Relaxed));
        }
    }
}

/// A barrier that spins (yielding after a while), so that the threads leave
/// it within a cache-line transfer of each other rather than a futex wake-up:
/// batches of the `sync_channel` are short, and a late start would count as
/// time spent sending.
struct SpinBarrier {
    threads: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    fn new(threads: usize) -> Self {
        SpinBarrier {
            threads,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            self.arrived.store(0, Ordering::Relaxed);
            // Release: the next round's arrivals see `arrived` reset.
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            if spins < 1 << 14 {
                spins += 1;
                spin_loop();
            } else {
                thread::yield_now();
            }
        }
    }
}

/// Runs `iters` emissions on each of `threads` threads sharing `subject`, in
/// batches if the subject needs emptying, and returns the sum over batches of
/// the wall time from the batch's first start to its last end: divided by
/// `iters`, the time per operation per thread.
fn emit_on_threads<E: Emit>(subject: &E, threads: usize, iters: u64) -> Duration {
    let per_thread = subject
        .batch()
        .map_or(iters, |b| b / threads as u64)
        .clamp(1, iters.max(1));
    let barrier = SpinBarrier::new(threads);
    let barrier = &barrier;
    let spans: Vec<Vec<(Instant, Instant)>> = thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|id| {
                scope.spawn(move || {
                    let mut emit = subject.emitter();
                    let mut spans = Vec::with_capacity(iters.div_ceil(per_thread) as usize);
                    let mut t = START_NS;
                    let mut left = iters;
                    while left > 0 {
                        let n = left.min(per_thread);
                        barrier.wait();
                        let start = Instant::now();
                        for _ in 0..n {
                            t += 1;
                            emit(event_at(black_box(t)));
                        }
                        spans.push((start, Instant::now()));
                        left -= n;
                        barrier.wait();
                        if id == 0 {
                            subject.empty();
                        }
                    }
                    spans
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker panicked"))
            .collect()
    });
    (0..spans[0].len())
        .map(|batch| {
            let first_start = spans.iter().map(|s| s[batch].0).min().expect("a thread");
            let last_end = spans.iter().map(|s| s[batch].1).max().expect("a thread");
            last_end - first_start
        })
        .sum()
}

/// `subject` on 1 thread and on 2 threads.
fn emit<E: Emit>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, subject: &E) {
    group.bench_function(format!("{name}/1_thread"), |b| {
        b.iter_custom(|iters| emit_on_threads(subject, 1, iters));
    });
    group.bench_function(format!("{name}/2_threads"), |b| {
        b.iter_custom(|iters| emit_on_threads(subject, 2, iters));
    });
}

fn bench_emit(c: &mut Criterion) {
    let mut group = c.benchmark_group("events/emit");

    let floor = AtomicU64::new(0);
    emit(&mut group, "floor_fetch_add", &floor);

    let ring = Ring::with_capacity(CAPACITY).expect("a power of two");
    emit(&mut group, "tenlives_ring", &ring);
    // Either filtered out (`cargo bench -- <filter>`) or long enough to lap.
    assert!(ring.emitted() == 0 || ring.emitted() > CAPACITY as u64);

    let lanes = Lanes::new(LANES, CAPACITY / LANES).expect("valid lanes");
    emit(&mut group, "tenlives_lanes", &lanes);
    assert!(lanes.emitted() == 0 || lanes.emitted() > CAPACITY as u64);

    let owned = OwnedLanes(Lanes::new(LANES, CAPACITY / LANES).expect("valid lanes"));
    emit(&mut group, "tenlives_lane_producer", &owned);
    assert_eq!(owned.0.dropped(), 0);

    let broadcast = Broadcast::new();
    emit(&mut group, "tokio_broadcast", &broadcast);
    assert!(
        matches!(broadcast.tx.len(), 0 | CAPACITY),
        "untouched, or full and overwriting"
    );

    let queue = ArrayQueue::new(CAPACITY);
    emit(&mut group, "crossbeam_array_queue", &queue);
    assert!(queue.is_empty() || queue.is_full());

    let channel = SyncChannel::new();
    emit(&mut group, "std_sync_channel", &channel);

    group.finish();
}

/// One event pushed into `ring` and read back by one consumer.
fn consume<R: EventSource>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, ring: &R) {
    let mut consumer = ring.reader();
    group.bench_function(name, |b| {
        let mut t = START_NS;
        b.iter(|| {
            t += 1;
            ring.emit(event_at(black_box(t)));
            match consumer.try_recv() {
                Some(Received::Event(e)) => e,
                other => panic!("expected the event just pushed, got {other:?}"),
            }
        });
    });
    assert_eq!(consumer.lost(), 0);
}

fn bench_consume(c: &mut Criterion) {
    let mut group = c.benchmark_group("events/consume");

    consume(
        &mut group,
        "tenlives_ring",
        &Ring::with_capacity(CAPACITY).expect("a power of two"),
    );
    consume(
        &mut group,
        "tenlives_lanes",
        &Lanes::new(LANES, CAPACITY / LANES).expect("valid lanes"),
    );

    let (tx, mut rx) = broadcast::channel(CAPACITY);
    group.bench_function("tokio_broadcast", |b| {
        let mut t = START_NS;
        b.iter(|| {
            t += 1;
            tx.send(event_at(black_box(t)))
                .expect("a receiver is alive");
            rx.try_recv().expect("the event just sent")
        });
    });

    let queue = ArrayQueue::new(CAPACITY);
    group.bench_function("crossbeam_array_queue", |b| {
        let mut t = START_NS;
        b.iter(|| {
            t += 1;
            queue.push(event_at(black_box(t))).expect("empty");
            queue.pop().expect("the event just pushed")
        });
    });

    let (tx, rx) = mpsc::sync_channel(CAPACITY);
    group.bench_function("std_sync_channel", |b| {
        let mut t = START_NS;
        b.iter(|| {
            t += 1;
            tx.try_send(event_at(black_box(t))).expect("empty");
            rx.try_recv().expect("the event just sent")
        });
    });

    group.finish();
}

/// A rejection by a force-opened breaker at successive times.
fn rejection<S: EventSink>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    b: &CircuitBreaker<S>,
) {
    b.force_open(Timestamp::ZERO);
    group.bench_function(name, |bench| {
        let mut t = START_NS;
        bench.iter(|| {
            t += 1;
            b.try_acquire(Timestamp::from_nanos(black_box(t))).err()
        });
    });
    assert_eq!(b.state(), BreakerState::ForcedOpen);
}

/// A call admitted by a closed breaker and reported as a success.
fn closed_success<S: EventSink>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    b: &CircuitBreaker<S>,
) {
    group.bench_function(name, |bench| {
        let mut t = START_NS;
        bench.iter(|| {
            t += 1;
            let now = Timestamp::from_nanos(black_box(t));
            b.try_acquire(now)
                .expect("a closed breaker admits")
                .success(now);
        });
    });
    assert_eq!(b.state(), BreakerState::Closed);
}

fn bench_sink(c: &mut Criterion) {
    let mut group = c.benchmark_group("events/sink");
    let config = || BreakerConfig::builder().build().expect("valid config");
    let ring = Ring::with_capacity(CAPACITY).expect("a power of two");

    closed_success(
        &mut group,
        "closed_success_no_sink",
        &CircuitBreaker::new(config()),
    );
    let emitted = ring.emitted();
    let b = CircuitBreaker::with_sink(config(), &ring, 1);
    closed_success(&mut group, "closed_success_ring_sink", &b);
    assert_eq!(ring.emitted(), emitted, "a success emits nothing");

    rejection(
        &mut group,
        "rejection_no_sink",
        &CircuitBreaker::new(config()),
    );
    let emitted = ring.emitted();
    rejection(&mut group, "rejection_ring_sink", &b);
    // One BREAKER_FORCED, then (unless filtered out) one BREAKER_REJECTED
    // per rejection.
    assert!(ring.emitted() > emitted, "the sink is wired");

    group.finish();
}

fn bench_emit_capacity(c: &mut Criterion) {
    let mut group = c.benchmark_group("events/emit_capacity");
    for capacity in [64, 1024, 65536] {
        let ring = Ring::with_capacity(capacity).expect("a power of two");
        group.bench_function(capacity.to_string(), |b| {
            b.iter_custom(|iters| emit_on_threads(&ring, 1, iters));
        });
    }
    group.finish();
}

/// The harness. A module of its own because `criterion_group!` makes a `pub`
/// function it cannot document; here it is not exported, so it needs no doc.
mod harness {
    use super::*;

    criterion_group! {
        name = benches;
        config = support::config();
        targets = bench_emit, bench_consume, bench_sink, bench_emit_capacity
    }
}
criterion_main!(harness::benches);
