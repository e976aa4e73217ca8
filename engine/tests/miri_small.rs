//! Small concurrent runs of every structure with `unsafe` inside or epoch
//! reclamation behind it, sized for Miri: 2 or 3 threads and a few dozen
//! operations each. `.ci/run` runs this file under Miri (tree borrows) on
//! several seeds, so each seed is another schedule of the same threads,
//! checked for data races, use-after-free, invalid references and leaks.
//! Natively it is a quick smoke test. The invariants asserted are the
//! same the stress tests check at scale: permits conserved, no torn value,
//! exact loss accounting.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::Duration;

use tenlives_engine::adaptive::{AdaptiveLimiter, Aimd, WindowConfig};
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::config_cell::ConfigCell;
use tenlives_engine::events::{Event, EventKind, EventRing, LaneRing, Received};
use tenlives_engine::queue::{AdmissionQueue, QueueConfig};
use tenlives_engine::rate::{KeyedConfig, KeyedRateLimiter, Quota, RateLimiter, WhenFull};
use tenlives_engine::time::Timestamp;

fn at(ms: u64) -> Timestamp {
    Timestamp::from_nanos(ms * 1_000_000)
}

/// A waker that counts its wakes.
#[derive(Default)]
struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Two releasers hand their permits to two waiters polled by a third
/// thread, which also cancels a third waiter; a sweep races them. Every
/// permit comes back, each waiter is woken at most once.
#[test]
fn admission_queue_releases_racing_waiters_and_a_sweep() {
    let queue = AdmissionQueue::new(Bulkhead::new(2).unwrap(), QueueConfig::fifo(4).unwrap());
    let a = queue.try_acquire().unwrap();
    let b = queue.try_acquire().unwrap();
    let counts: Vec<Arc<Count>> = (0..3).map(|_| Arc::new(Count::default())).collect();
    let mut waiters: Vec<_> = counts
        .iter()
        .enumerate()
        .map(|(i, c)| {
            // The third waiter's deadline is the sweep's time.
            let deadline = if i == 2 { at(5) } else { Timestamp::MAX };
            queue.enqueue(0, deadline, &Waker::from(c.clone())).unwrap()
        })
        .collect();
    let third = waiters.pop().unwrap();
    let queue = &queue;
    thread::scope(|s| {
        s.spawn(move || drop(a));
        s.spawn(move || {
            drop(b);
            queue.expire(at(5));
        });
        s.spawn(|| {
            drop(third);
            let mut cx = Context::from_waker(Waker::noop());
            for w in &mut waiters {
                loop {
                    match w.poll_permit(&mut cx, Timestamp::ZERO) {
                        Poll::Ready(Ok(permit)) => break drop(permit),
                        Poll::Ready(Err(e)) => panic!("refused: {e}"),
                        Poll::Pending => thread::yield_now(),
                    }
                }
            }
        });
    });
    drop(waiters);
    for c in &counts {
        assert!(c.0.load(Ordering::SeqCst) <= 1);
    }
    assert_eq!(queue.source().in_flight(), 0);
    assert_eq!(queue.waiting(), 0);
    drop(queue.try_acquire().expect("free again"));
}

/// Owned waiters and permits moving between threads: the queue's `Arc`
/// count comes back to one.
#[test]
fn admission_queue_owned_forms_across_threads() {
    let queue = Arc::new(AdmissionQueue::new(
        Bulkhead::new(1).unwrap(),
        QueueConfig::fifo(2).unwrap(),
    ));
    let held = queue.try_acquire_owned().unwrap();
    let mut waiter = queue
        .enqueue_owned(0, Timestamp::MAX, Waker::noop())
        .unwrap();
    let releaser = thread::spawn(move || drop(held));
    let owner = thread::spawn(move || {
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            match waiter.poll_permit(&mut cx, Timestamp::ZERO) {
                Poll::Ready(Ok(permit)) => break drop(permit),
                Poll::Ready(Err(e)) => panic!("refused: {e}"),
                Poll::Pending => thread::yield_now(),
            }
        }
    });
    releaser.join().unwrap();
    owner.join().unwrap();
    assert_eq!(queue.source().in_flight(), 0);
    assert_eq!(Arc::strong_count(&queue), 1);
}

/// Two threads check more keys than the table holds (evicting, and
/// reclaiming evicted entries through the epoch collector) and sweep.
#[test]
fn keyed_rate_table_with_evictions() {
    // 1 000 a second: 64-bit state words; 17 000 a second: 128-bit ones
    // (a scaled table runs the narrow one's atomics).
    for rate in [1_000, 17_000] {
        let quota = Quota::per_second(rate).unwrap();
        let config = KeyedConfig::new(quota, 4)
            .unwrap()
            .when_full(WhenFull::Admit);
        let limiter: KeyedRateLimiter<u64> = KeyedRateLimiter::new(config);
        thread::scope(|s| {
            for t in 0..2u64 {
                let limiter = &limiter;
                s.spawn(move || {
                    for i in 0..12u64 {
                        let key = (i * 3 + t) % 7;
                        let _ = limiter.check_key(&key, at(i * 10));
                    }
                    limiter.sweep(at(10_000));
                });
            }
        });
        assert!(limiter.in_use() <= limiter.capacity());
        crossbeam_epoch::pin().flush();
    }
}

/// Quota changes racing checks: every era the limiter retires is reclaimed
/// safely, and the tokens never exceed the burst of the quota in force. The
/// changes cross between the narrow cell (whole-nanosecond intervals), the
/// scaled one (30 and 300 a second) and the 128-bit one (17 a second).
#[test]
fn rate_limiter_quota_changes_racing_checks() {
    let limiter = RateLimiter::new(Quota::per_second(100).unwrap());
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        s.spawn(|| {
            for i in 0..20 {
                let _ = limiter.check(at(i));
            }
        });
        s.spawn(|| {
            for (i, rate) in [50, 300, 17, 10, 30, 100].into_iter().enumerate() {
                limiter.set_quota(Quota::per_second(rate).unwrap(), at(i as u64 * 5));
            }
            done.store(true, Ordering::Release);
        });
    });
    assert!(done.load(Ordering::Acquire));
    let burst = u64::from(limiter.quota().burst());
    assert!(limiter.available(at(10_000)) <= burst);
    crossbeam_epoch::pin().flush();
}

/// Readers see whole values while a writer replaces them and an updater
/// edits them; every replaced value is freed by the collector.
#[test]
fn config_cell_readers_writer_and_updater() {
    let cell = ConfigCell::new([0u64; 4]);
    thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..10 {
                cell.with(|v| assert!(v.iter().all(|x| *x == v[0]), "torn {v:?}"));
                let guard = crossbeam_epoch::pin();
                let held = cell.load(&guard);
                assert!(held.iter().all(|x| *x == held[0]));
            }
        });
        s.spawn(|| {
            for i in 1..6 {
                cell.store([i; 4]);
            }
        });
        s.spawn(|| {
            for _ in 0..5 {
                cell.update(|v| Ok::<_, ()>([v[0] + 100; 4])).unwrap();
            }
        });
    });
    let last = cell.with(|v| *v);
    assert!(last.iter().all(|x| *x == last[0]));
    for _ in 0..4 {
        crossbeam_epoch::pin().flush();
    }
}

/// Two threads acquire and report across window ends (each end runs the
/// algorithm on whoever notices) while one changes the algorithm and the
/// window through the mailboxes.
#[test]
fn adaptive_limiter_windows_and_changes() {
    let aimd = |initial| {
        Aimd::builder()
            .limits(1, initial, 50)
            .latency_threshold(Duration::from_millis(50))
            .build()
            .unwrap()
    };
    let window = WindowConfig::new(Duration::from_millis(10), 1).unwrap();
    let limiter = AdaptiveLimiter::new(aimd(4), window, Timestamp::ZERO);
    thread::scope(|s| {
        for t in 0..2u64 {
            let limiter = &limiter;
            s.spawn(move || {
                for i in 0..8u64 {
                    let now = at(i * 4 + t);
                    if let Ok(permit) = limiter.try_acquire(now) {
                        permit.success(at(i * 4 + t + 2));
                    }
                }
            });
        }
        s.spawn(|| {
            limiter.set_algorithm(aimd(8), at(3));
            limiter.set_window(
                WindowConfig::new(Duration::from_millis(5), 1).unwrap(),
                at(7),
            );
        });
    });
    assert_eq!(limiter.in_flight(), 0);
    assert!((1..=50).contains(&limiter.limit()));
}

/// Two producers overrun a 4-slot ring while a consumer reads: read plus
/// lost is exactly what was emitted, and no event is torn.
#[test]
fn event_ring_two_producers_one_consumer() {
    const PER_PRODUCER: u64 = 12;
    let ring = EventRing::with_capacity(4).unwrap();
    let mut consumer = ring.consumer();
    let producers_done = AtomicUsize::new(0);
    thread::scope(|s| {
        for p in 0..2u32 {
            let ring = &ring;
            let producers_done = &producers_done;
            s.spawn(move || {
                for i in 0..PER_PRODUCER {
                    ring.push(Event::new(
                        EventKind::USER,
                        p,
                        Timestamp::from_nanos(i),
                        [i, i ^ u64::from(p)],
                    ));
                }
                producers_done.fetch_add(1, Ordering::Release);
            });
        }
        s.spawn(|| {
            loop {
                let finished = producers_done.load(Ordering::Acquire) == 2;
                match consumer.try_recv() {
                    Some(Received::Event(e)) => {
                        assert_eq!(e.payload[1], e.payload[0] ^ u64::from(e.source));
                    }
                    Some(Received::Lost(_)) => {}
                    Some(other) => panic!("unexpected {other:?}"),
                    None if finished => break,
                    None => thread::yield_now(),
                }
            }
        });
    });
    assert_eq!(consumer.read() + consumer.lost(), 2 * PER_PRODUCER);
}

/// Two producers on a laned ring of two lanes of two slots, a consumer
/// reading: read plus lost (drops included) is what was emitted, no event is
/// torn, and within a lane each producer's events keep their order. With
/// `owned`, the first producer pushes through a `LaneProducer` (plain
/// stores), giving its lane back and taking one again halfway.
fn lane_ring_two_producers_one_consumer(owned: bool) {
    const PER_PRODUCER: u64 = 12;
    let ring = LaneRing::new(2, 2).unwrap();
    let mut consumer = ring.consumer();
    let producers_done = AtomicUsize::new(0);
    thread::scope(|s| {
        for p in 0..2u32 {
            let ring = &ring;
            let producers_done = &producers_done;
            s.spawn(move || {
                let owner = owned && p == 0;
                let mut mine = if owner { ring.producer() } else { None };
                for i in 0..PER_PRODUCER {
                    if owner && i == PER_PRODUCER / 2 {
                        drop(mine.take());
                        mine = ring.producer();
                    }
                    let event = Event::new(
                        EventKind::USER,
                        p,
                        Timestamp::from_nanos(i),
                        [i, i ^ u64::from(p)],
                    );
                    match &mine {
                        Some(producer) => producer.push(event),
                        None => ring.push(event),
                    }
                }
                producers_done.fetch_add(1, Ordering::Release);
            });
        }
        s.spawn(|| {
            let mut last = [[None::<u64>; 2]; 2];
            loop {
                let finished = producers_done.load(Ordering::Acquire) == 2;
                match consumer.try_recv() {
                    Some(Received::Event(e)) => {
                        assert_eq!(e.payload[1], e.payload[0] ^ u64::from(e.source));
                        let lane = consumer.last_lane().unwrap();
                        let i = e.time.as_nanos();
                        let prev = last[lane][e.source as usize].replace(i);
                        assert!(prev.is_none_or(|prev| prev < i), "{prev:?} then {i}");
                    }
                    Some(Received::Lost(_)) => {}
                    Some(other) => panic!("unexpected {other:?}"),
                    None if finished => break,
                    None => thread::yield_now(),
                }
            }
        });
    });
    assert_eq!(consumer.read() + consumer.lost(), 2 * PER_PRODUCER);
    assert_eq!(ring.emitted(), 2 * PER_PRODUCER);
}

#[test]
fn lane_ring_two_producers_one_consumer_shared() {
    lane_ring_two_producers_one_consumer(false);
}

/// E10 under Miri: an owner's plain stores beside a shared producer.
#[test]
fn lane_ring_an_owned_lane_a_shared_producer_one_consumer() {
    lane_ring_two_producers_one_consumer(true);
}

#[test]
fn sharded_limit_two_threads_steal_and_give_back() {
    let s = Arc::new(tenlives_engine::sharded::ShardedBulkhead::new(3).unwrap());
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let s = Arc::clone(&s);
            thread::spawn(move || {
                for _ in 0..12 {
                    let a = s.try_acquire();
                    let b = s.try_acquire_raw();
                    assert!(s.in_flight() <= 3);
                    drop(a);
                    if let Ok(b) = b {
                        s.release(b);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(s.in_flight(), 0);
}
