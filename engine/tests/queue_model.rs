//! Model: the atomic `AdmissionQueue` over a `Bulkhead`, driven from one
//! thread, decides exactly what a sequential model of its definition
//! decides — who gets each permit and in which order, who is refused, shed
//! (and why) or timed out — for random arrivals in random classes with
//! random deadlines, releases, cancellations, limit raises and time moving
//! (checked by the owner's poll and by `expire` sweeps), under every
//! strategy (FIFO, round robin, weighted) and every overload policy.
//!
//! The model keeps one `VecDeque` per class and applies the rule of the
//! module documentation literally: the cursor stays on its class while it
//! has waiters and deficit, else moves to the next class with waiters
//! cyclically and refills that class's deficit with its weight; a class that
//! empties loses its deficit.
//!
//! Invariants checked (docs/guarantees.md): Q1 (permits conserved: the
//! bulkhead's count always equals the permits the test holds), Q4 (order
//! and verdicts equal the model's), Q6 (a shed caller is woken in the pass
//! that sheds it), Q7 (a caller that finds a permit free and nobody waiting
//! never queues).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use proptest::prelude::*;
use tenlives_engine::bulkhead::Bulkhead;
use tenlives_engine::events::NoSink;
use tenlives_engine::queue::{
    Acquire, AdmissionQueue, Overload, QueueConfig, QueuePermit, Rejected,
};
use tenlives_engine::time::{ManualClock, Timestamp};

#[derive(Clone, Debug)]
enum Op {
    /// A caller arrives in `class`; its deadline is `now + d`, or never.
    Arrive {
        class: u16,
        deadline_in: Option<u64>,
    },
    /// The `i`-th held permit (modulo) is dropped.
    Release(usize),
    /// The `i`-th waiting caller (modulo) gives up.
    Cancel(usize),
    /// Time moves; `sweep`: an `expire(now)` sweep follows.
    Advance { by: u64, sweep: bool },
    /// The bulkhead's limit goes up by one, then `dispatch`.
    Raise,
}

fn op(classes: u16) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..classes + 1, prop::option::weighted(0.6, 1..40u64))
            .prop_map(|(class, deadline_in)| Op::Arrive { class, deadline_in }),
        4 => any::<usize>().prop_map(Op::Release),
        2 => any::<usize>().prop_map(Op::Cancel),
        2 => (1..25u64, any::<bool>()).prop_map(|(by, sweep)| Op::Advance { by, sweep }),
        1 => Just(Op::Raise),
    ]
}

fn config() -> impl Strategy<Value = (QueueConfig, u32)> {
    let strategy = prop_oneof![
        (1..6u32).prop_map(|c| QueueConfig::fifo(c).unwrap()),
        (1..6u32, 1..5u16).prop_map(|(c, n)| QueueConfig::round_robin(c, n).unwrap()),
        (1..6u32, prop::collection::vec(1..5u32, 1..5))
            .prop_map(|(c, w)| QueueConfig::weighted(c, &w).unwrap()),
    ];
    let policy = prop_oneof![
        Just(Overload::ShedNewest),
        Just(Overload::ShedOldest),
        Just(Overload::ShedLowestPriority),
    ];
    (strategy, policy, 1..4u32).prop_map(|(c, p, limit)| (c.overload(p), limit))
}

/// What happened to a caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Granted,
    Refused(Rejected),
}

fn outcome<T>(r: &Result<T, Rejected>) -> Outcome {
    match r {
        Ok(_) => Outcome::Granted,
        Err(e) => Outcome::Refused(*e),
    }
}

/// The sequential model.
struct Model {
    weights: Vec<u32>,
    capacity: usize,
    policy: Overload,
    limit: u32,
    in_flight: u32,
    now: u64,
    /// Per class: (caller id, arrival number, deadline).
    queues: Vec<VecDeque<(usize, u64, u64)>>,
    deficit: Vec<u32>,
    cursor: usize,
    arrivals: u64,
    /// Decisions by the dispatcher or a sweep, in order: (id, outcome).
    decided: Vec<(usize, Outcome)>,
}

impl Model {
    fn len(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    fn remove(&mut self, id: usize) -> bool {
        for (c, q) in self.queues.iter_mut().enumerate() {
            if let Some(pos) = q.iter().position(|e| e.0 == id) {
                q.remove(pos);
                if q.is_empty() {
                    self.deficit[c] = 0;
                }
                return true;
            }
        }
        false
    }

    /// A dispatcher pass after linking: grant, then shed.
    fn pass(&mut self) {
        let n = self.weights.len();
        while self.len() > 0 && self.in_flight < self.limit {
            if self.queues[self.cursor].is_empty() || self.deficit[self.cursor] == 0 {
                let next = (1..=n)
                    .map(|k| (self.cursor + k) % n)
                    .find(|&c| !self.queues[c].is_empty())
                    .unwrap();
                self.cursor = next;
                self.deficit[next] = self.weights[next];
            }
            let (id, _, _) = self.queues[self.cursor].pop_front().unwrap();
            self.deficit[self.cursor] -= 1;
            if self.queues[self.cursor].is_empty() {
                self.deficit[self.cursor] = 0;
            }
            self.in_flight += 1;
            self.decided.push((id, Outcome::Granted));
        }
        while self.len() > self.capacity {
            let all = self
                .queues
                .iter()
                .enumerate()
                .flat_map(|(c, q)| q.iter().map(move |e| (c, *e)));
            let (victim, why) = match self.policy {
                Overload::ShedNewest => (
                    all.max_by_key(|(_, e)| e.1).unwrap().1.0,
                    Rejected::QueueFull,
                ),
                Overload::ShedOldest => (
                    all.min_by_key(|(_, e)| e.1).unwrap().1.0,
                    Rejected::ShedOldest,
                ),
                Overload::ShedLowestPriority => {
                    let class = (0..self.weights.len())
                        .filter(|&c| !self.queues[c].is_empty())
                        .min_by_key(|&c| {
                            (
                                self.weights[c],
                                std::cmp::Reverse(self.queues[c].len()),
                                std::cmp::Reverse(c),
                            )
                        })
                        .unwrap();
                    (
                        self.queues[class].back().unwrap().0,
                        Rejected::ShedLowPriority,
                    )
                }
                other => unreachable!("the model has no {other:?} policy"),
            };
            self.remove(victim);
            self.decided.push((victim, Outcome::Refused(why)));
        }
    }

    /// The immediate outcome of an arrival, or `None` if it waits (or was
    /// decided in its own pass, which then appears in `decided`).
    fn arrive(&mut self, id: usize, class: u16, deadline: u64) -> Option<Outcome> {
        if self.len() == 0 && self.in_flight < self.limit {
            self.in_flight += 1;
            return Some(Outcome::Granted);
        }
        if self.now >= deadline {
            return Some(Outcome::Refused(Rejected::TimedOut));
        }
        let classes = self.weights.len() as u16;
        if class >= classes {
            return Some(Outcome::Refused(Rejected::UnknownClass { class, classes }));
        }
        if self.policy == Overload::ShedNewest && self.len() >= self.capacity {
            return Some(Outcome::Refused(Rejected::QueueFull));
        }
        self.queues[usize::from(class)].push_back((id, self.arrivals, deadline));
        self.arrivals += 1;
        self.pass();
        None
    }

    fn sweep(&mut self) {
        let now = self.now;
        let expired: Vec<usize> = self
            .queues
            .iter()
            .flat_map(|q| q.iter().filter(|e| e.2 <= now).map(|e| e.0))
            .collect();
        for id in expired {
            self.remove(id);
            self.decided
                .push((id, Outcome::Refused(Rejected::TimedOut)));
        }
    }

    /// The owner polls at `now`: times out if still queued past its deadline.
    fn poll(&mut self, id: usize) -> Option<Outcome> {
        let deadline = self
            .queues
            .iter()
            .flat_map(|q| q.iter())
            .find(|e| e.0 == id)?
            .2;
        if self.now >= deadline {
            self.remove(id);
            Some(Outcome::Refused(Rejected::TimedOut))
        } else {
            None
        }
    }
}

/// Logs, in order, the callers the queue wakes.
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

enum Caller<'q> {
    Waiting(Fut<'q>, Waker),
    Holding(#[allow(dead_code, reason = "held, dropped to release")] QueuePermit<'q, Bulkhead>),
    Gone,
}

fn run(config: QueueConfig, limit: u32, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let clock = ManualClock::new();
    let mut model = Model {
        weights: config.weights().to_vec(),
        capacity: config.capacity() as usize,
        policy: config.overload_policy(),
        limit,
        in_flight: 0,
        now: 0,
        queues: vec![VecDeque::new(); config.weights().len()],
        deficit: vec![0; config.weights().len()],
        cursor: config.weights().len() - 1,
        arrivals: 0,
        decided: Vec::new(),
    };
    let queue = AdmissionQueue::new(Bulkhead::new(limit).unwrap(), config);
    let woken = Arc::new(Mutex::new(Vec::new()));
    let mut callers: Vec<Caller<'_>> = Vec::new();

    for op in ops {
        woken.lock().unwrap().clear();
        model.decided.clear();
        // What the queue told each caller during this step.
        let mut real = vec![None; callers.len() + 1];
        match op {
            Op::Arrive { class, deadline_in } => {
                let id = callers.len();
                let deadline = deadline_in.map_or(u64::MAX, |d| model.now + d);
                let waker = Waker::from(Arc::new(Log {
                    id,
                    woken: woken.clone(),
                }));
                let mut fut =
                    Box::pin(queue.acquire(class, Timestamp::from_nanos(deadline), &clock));
                let poll = fut.as_mut().poll(&mut Context::from_waker(&waker));
                let expected = model.arrive(id, class, deadline);
                match poll {
                    Poll::Pending => {
                        prop_assert_eq!(expected, None, "caller {} waits", id);
                        callers.push(Caller::Waiting(fut, waker));
                    }
                    Poll::Ready(r) => {
                        let got = outcome(&r);
                        real[id] = Some(got);
                        // Either decided at once (`expected`), or in the
                        // pass its own enqueue ran (then the model lists it
                        // in `decided`, checked below).
                        if expected.is_some() {
                            prop_assert_eq!(Some(got), expected, "caller {} on arrival", id);
                            prop_assert!(!woken.lock().unwrap().contains(&id));
                        }
                        callers.push(match r {
                            Ok(p) => Caller::Holding(p),
                            Err(_) => Caller::Gone,
                        });
                    }
                }
            }
            Op::Release(i) => {
                let held: Vec<usize> = (0..callers.len())
                    .filter(|&k| matches!(callers[k], Caller::Holding(_)))
                    .collect();
                if !held.is_empty() {
                    callers[held[i % held.len()]] = Caller::Gone;
                    model.in_flight -= 1;
                    model.pass();
                }
            }
            Op::Cancel(i) => {
                let waiting: Vec<usize> = (0..callers.len())
                    .filter(|&k| matches!(callers[k], Caller::Waiting(..)))
                    .collect();
                if !waiting.is_empty() {
                    let k = waiting[i % waiting.len()];
                    callers[k] = Caller::Gone;
                    prop_assert!(model.remove(k));
                    model.pass();
                }
            }
            Op::Advance { by, sweep } => {
                model.now += by;
                clock.advance_to(Timestamp::from_nanos(model.now));
                if sweep {
                    let n = queue.expire(Timestamp::from_nanos(model.now));
                    let before = model.decided.len();
                    model.sweep();
                    prop_assert_eq!(n as usize, model.decided.len() - before);
                }
            }
            Op::Raise => {
                let limit = queue.source().limit() + 1;
                queue.source().set_limit(limit).unwrap();
                model.limit = limit;
                queue.dispatch();
                model.pass();
            }
        }

        // Poll every waiting caller, in order of arrival. Those the model
        // did not decide in this step time out by their own poll, or wait.
        for (id, caller) in callers.iter_mut().enumerate() {
            let Caller::Waiting(fut, waker) = caller else {
                continue;
            };
            let decided = model.decided.iter().any(|d| d.0 == id);
            let by_poll = if decided { None } else { model.poll(id) };
            match fut.as_mut().poll(&mut Context::from_waker(waker)) {
                Poll::Pending => {
                    prop_assert!(!decided && by_poll.is_none(), "caller {} still waits", id);
                }
                Poll::Ready(r) => {
                    let got = outcome(&r);
                    real[id] = Some(got);
                    if !decided {
                        prop_assert_eq!(by_poll, Some(got), "caller {} polled", id);
                        prop_assert!(!woken.lock().unwrap().contains(&id));
                    }
                    *caller = match r {
                        Ok(p) => Caller::Holding(p),
                        Err(_) => Caller::Gone,
                    };
                }
            }
        }

        // Q2, Q6: everyone the dispatcher or a sweep decided was woken
        // exactly once; grants and sheds came in the model's order (a sweep
        // goes through slots in storage order, so timeouts are compared as
        // sets).
        let woken_now = woken.lock().unwrap().clone();
        let mut decided_real = Vec::new();
        for &id in &woken_now {
            let got = real[id];
            prop_assert!(got.is_some(), "caller {} woken but not decided", id);
            decided_real.push((id, got.unwrap()));
        }
        let timed_out = Outcome::Refused(Rejected::TimedOut);
        let split = |v: &[(usize, Outcome)]| {
            let mut timeouts: Vec<usize> =
                v.iter().filter(|d| d.1 == timed_out).map(|d| d.0).collect();
            timeouts.sort_unstable();
            let rest: Vec<(usize, Outcome)> =
                v.iter().copied().filter(|d| d.1 != timed_out).collect();
            (rest, timeouts)
        };
        prop_assert_eq!(split(&decided_real), split(&model.decided));

        // Q1: the bulkhead counts exactly the permits held.
        let held = callers
            .iter()
            .filter(|c| matches!(c, Caller::Holding(_)))
            .count();
        prop_assert_eq!(queue.source().in_flight() as usize, held);
        prop_assert_eq!(model.in_flight as usize, held);
        prop_assert_eq!(queue.waiting() as usize, model.len());
    }
    drop(callers);
    prop_assert_eq!(queue.source().in_flight(), 0);
    prop_assert_eq!(queue.waiting(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Q1, Q4, Q6, Q7: the atomic queue decides like the model.
    #[test]
    fn atomic_queue_matches_the_model(
        (config, limit) in config(),
        ops in prop::collection::vec(op(5), 1..80),
    ) {
        run(config, limit, ops)?;
    }
}
