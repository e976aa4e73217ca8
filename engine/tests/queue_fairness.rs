//! Fairness under saturation, in virtual time (Q5).
//!
//! A bulkhead of a few permits behind an admission queue; every class keeps
//! a fixed number of callers waiting at all times (a granted caller is
//! replaced at once by a new one of its class), and each permit is held for
//! a random service time on a `ManualClock`. The simulation releases permits
//! in order of their finish times and records every grant.
//!
//! Checked: each class's share of the grants is within 5 % of its weight's
//! share; every waiter is granted within the bound of
//! `QueueConfig::grant_bound` (in grants made after it joined, given how
//! many of its class were ahead of it). The worst wait per class, in grants
//! and in virtual time, is printed (`cargo test --test queue_fairness --
//! --nocapture`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::events::NoSink;
use tenlives_engine::queue::{Acquire, AdmissionQueue, QueueConfig, QueuePermit};
use tenlives_engine::time::{Clock, ManualClock, Timestamp};

mod common;
use common::rng;

const GRANTS: u64 = if cfg!(debug_assertions) {
    100_000
} else {
    1_000_000
};

struct Log {
    id: usize,
    woken: Arc<Mutex<Vec<usize>>>,
}

impl Wake for Log {
    fn wake(self: Arc<Self>) {
        self.woken.lock().unwrap().push(self.id);
    }
}

type Fut<'q> = Pin<Box<Acquire<'q, Bulkhead, NoSink, &'q ManualClock>>>;

struct Waiting<'q> {
    fut: Fut<'q>,
    waker: Waker,
    class: usize,
    /// Grants made before it joined.
    joined_at_grant: u64,
    joined_at_ns: u64,
    /// Waiters of its class ahead of it when it joined.
    ahead: u32,
}

#[derive(Debug, Default, Clone)]
struct ClassStats {
    grants: u64,
    worst_wait_grants: u64,
    worst_wait_ns: u64,
}

/// The simulation's callers and permits, over a queue that outlives them.
struct Sim<'q> {
    queue: &'q AdmissionQueue<Bulkhead>,
    clock: &'q ManualClock,
    woken: Arc<Mutex<Vec<usize>>>,
    next: Box<dyn FnMut() -> u64>,
    waiters: HashMap<usize, Waiting<'q>>,
    queued_in: Vec<u32>,
    held: HashMap<u64, QueuePermit<'q, Bulkhead>>,
    finishes: BinaryHeap<Reverse<(u64, u64)>>,
    grants: u64,
    ids: usize,
    keys: u64,
}

impl<'q> Sim<'q> {
    /// A new caller of `class` arrives now: it takes a free permit (if
    /// nobody waits) or queues.
    fn arrive(&mut self, class: usize) -> Option<QueuePermit<'q, Bulkhead>> {
        let id = self.ids;
        self.ids += 1;
        let waker = Waker::from(Arc::new(Log {
            id,
            woken: self.woken.clone(),
        }));
        let mut fut = Box::pin(self.queue.acquire(class as u16, Timestamp::MAX, self.clock));
        match fut.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(Ok(permit)) => Some(permit),
            Poll::Ready(Err(e)) => panic!("caller refused: {e}"),
            Poll::Pending => {
                self.waiters.insert(
                    id,
                    Waiting {
                        fut,
                        waker,
                        class,
                        joined_at_grant: self.grants,
                        joined_at_ns: self.clock.now().as_nanos(),
                        ahead: self.queued_in[class],
                    },
                );
                self.queued_in[class] += 1;
                None
            }
        }
    }

    /// Holds a granted permit for a random service time (1 to 10 ms).
    fn hold(&mut self, permit: QueuePermit<'q, Bulkhead>, now: u64) {
        self.keys += 1;
        let service = 1_000_000 + (self.next)() % 9_000_001;
        self.held.insert(self.keys, permit);
        self.finishes.push(Reverse((now + service, self.keys)));
    }
}

/// Runs the simulation: `waiting[c]` callers of class `c` always queued,
/// `limit` permits, service times uniform in 1..=10 ms.
fn simulate(config: QueueConfig, limit: u32, waiting: &[u32], seed: u64) -> Vec<ClassStats> {
    let classes = config.weights().len();
    assert_eq!(classes, waiting.len());
    let bound_config = config.clone();
    let clock = ManualClock::new();
    let queue = AdmissionQueue::new(Bulkhead::new(limit).unwrap(), config);
    let mut stats = vec![ClassStats::default(); classes];
    let mut sim = Sim {
        queue: &queue,
        clock: &clock,
        woken: Arc::new(Mutex::new(Vec::new())),
        next: Box::new(rng(seed)),
        waiters: HashMap::new(),
        queued_in: vec![0; classes],
        held: HashMap::new(),
        finishes: BinaryHeap::new(),
        grants: 0,
        ids: 0,
        keys: 0,
    };

    // The first callers take every permit; then each class queues its backlog.
    for _ in 0..limit {
        let permit = sim.arrive(0).expect("a free permit");
        sim.hold(permit, 0);
    }
    for (class, &n) in waiting.iter().enumerate() {
        for _ in 0..n {
            assert!(sim.arrive(class).is_none(), "every permit is taken");
        }
    }

    let mut steps = 0u64;
    while sim.grants < GRANTS {
        steps += 1;
        assert!(
            steps <= 2 * GRANTS,
            "the simulation stopped making progress"
        );
        let Reverse((now, key)) = sim.finishes.pop().expect("permits are held");
        clock.advance_to(Timestamp::from_nanos(now));
        drop(sim.held.remove(&key)); // hands the permit to the next waiter
        let woken_now: Vec<usize> = std::mem::take(&mut *sim.woken.lock().unwrap());
        assert_eq!(woken_now.len(), 1, "one release, one grant");
        for id in woken_now {
            let mut w = sim.waiters.remove(&id).expect("a waiting caller was woken");
            let Poll::Ready(Ok(permit)) = w.fut.as_mut().poll(&mut Context::from_waker(&w.waker))
            else {
                panic!("a woken waiter was granted");
            };
            sim.grants += 1;
            sim.queued_in[w.class] -= 1;
            let waited_grants = sim.grants - w.joined_at_grant;
            let bound = bound_config.grant_bound(w.class as u16, w.ahead).unwrap();
            assert!(
                waited_grants <= bound,
                "class {} waited {waited_grants} grants, bound {bound}",
                w.class
            );
            let s = &mut stats[w.class];
            s.grants += 1;
            s.worst_wait_grants = s.worst_wait_grants.max(waited_grants);
            s.worst_wait_ns = s.worst_wait_ns.max(now - w.joined_at_ns);
            sim.hold(permit, now);
            assert!(sim.arrive(w.class).is_none(), "saturated: newcomers queue");
        }
    }
    drop(sim);
    assert_eq!(queue.source().in_flight(), 0);
    assert_eq!(queue.waiting(), 0);
    stats
}

/// Prints shares and worst waits; `waiting[c]` is class `c`'s backlog, so
/// its waiters join behind at most `waiting[c] - 1` of their class.
fn report(name: &str, config: &QueueConfig, waiting: &[u32], stats: &[ClassStats]) {
    let weights = config.weights();
    let total: u64 = stats.iter().map(|s| s.grants).sum();
    let weight_sum: u32 = weights.iter().sum();
    println!("{name}: {total} grants");
    for (c, (s, &w)) in stats.iter().zip(weights).enumerate() {
        println!(
            "  class {c} weight {w}: share {:.4} (expected {:.4}), worst wait {} grants \
             (bound {}), {:.1} ms of virtual time",
            s.grants as f64 / total as f64,
            f64::from(w) / f64::from(weight_sum),
            s.worst_wait_grants,
            config.grant_bound(c as u16, waiting[c] - 1).unwrap(),
            s.worst_wait_ns as f64 / 1e6
        );
    }
}

fn check_shares(weights: &[u32], stats: &[ClassStats]) {
    let total: u64 = stats.iter().map(|s| s.grants).sum();
    let weight_sum: u32 = weights.iter().sum();
    for (c, (s, &w)) in stats.iter().zip(weights).enumerate() {
        let share = s.grants as f64 / total as f64;
        let expected = f64::from(w) / f64::from(weight_sum);
        assert!(
            (share - expected).abs() <= 0.05 * expected,
            "class {c}: share {share:.4}, expected {expected:.4} within 5 %"
        );
    }
}

/// Q5: weighted classes get their weight's share and bounded waits.
#[test]
fn weighted_classes_get_their_share_and_bounded_waits() {
    let weights = [1, 2, 3, 4];
    let config = QueueConfig::weighted(64, &weights).unwrap();
    let backlog = [6, 6, 6, 6];
    let stats = simulate(config.clone(), 4, &backlog, 1);
    report("weighted 1:2:3:4, 4 permits", &config, &backlog, &stats);
    check_shares(&weights, &stats);
}

/// Q5: a tenant with many waiters does not crowd out tenants with few.
#[test]
fn round_robin_partitions_share_equally_whatever_their_backlog() {
    let config = QueueConfig::round_robin(128, 5).unwrap();
    let backlog = [40, 1, 2, 3, 10];
    let stats = simulate(config.clone(), 3, &backlog, 2);
    report(
        "round robin, backlogs 40/1/2/3/10, 3 permits",
        &config,
        &backlog,
        &stats,
    );
    check_shares(&[1; 5], &stats);
}

/// Q5: FIFO: a waiter behind `p` others is granted within `p + 1` grants.
#[test]
fn fifo_waits_are_bounded_by_the_queue_length() {
    let config = QueueConfig::fifo(32).unwrap();
    let stats = simulate(config.clone(), 2, &[20], 3);
    report("FIFO, 20 waiting, 2 permits", &config, &[20], &stats);
    assert!(stats[0].worst_wait_grants <= 20);
}
