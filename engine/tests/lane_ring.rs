//! Laned event ring: property test against a sequential model, and a
//! multi-producer, multi-consumer stress test of exact loss accounting and
//! per-lane order (E6-E8 in docs/guarantees.md).
//!
//! Model: one thread writes one lane (its home lane), so from one thread a
//! ring of `L` lanes of `C` slots behaves as one ring of `C`: it keeps the
//! last `C` events, and a consumer more than `C` behind loses the older ones.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use proptest::prelude::*;
use tenlives_engine::events::{LaneRing, MAX_LANES, Received};

#[path = "common/events.rs"]
mod events;
use events::{LastEvents, Op, event, intact, ops};

proptest! {
    /// E7, E10: from one thread, what the model says, whatever the lanes,
    /// pushing shared or through a producer that owns a lane.
    #[test]
    fn one_thread_matches_the_model(
        lanes in 1usize..=MAX_LANES,
        log_cap in 1u32..5,
        owned in any::<bool>(),
        ops in ops(),
    ) {
        let cap = 1usize << log_cap;
        let ring = LaneRing::new(lanes, cap).unwrap();
        let producer = owned.then(|| ring.producer().expect("every lane is free"));
        let push = |e| match &producer {
            Some(p) => p.push(e),
            None => ring.push(e),
        };
        let mut model = LastEvents::new(cap);
        // Each consumer beside the model's cursor and where it joined.
        let mut consumers = vec![(ring.consumer(), 0u64, 0u64)];
        let mut lane = None;
        for op in ops {
            match op {
                Op::Emit(n) => {
                    for _ in 0..n {
                        push(model.emit());
                    }
                }
                Op::Join => {
                    let now = model.emitted();
                    consumers.push((ring.consumer(), now, now));
                }
                Op::Read(i) => {
                    let n = consumers.len();
                    let (real, cursor, _) = &mut consumers[i % n];
                    let expected = model.receive(cursor);
                    prop_assert_eq!(real.try_recv(), expected);
                    if expected.is_some() {
                        // One thread, one lane.
                        let seen = real.last_lane();
                        prop_assert!(seen.is_some_and(|l| l < lanes));
                        prop_assert!(lane.is_none() || lane == seen);
                        lane = seen;
                    } else {
                        prop_assert_eq!(real.last_lane(), None);
                    }
                }
            }
        }
        prop_assert_eq!(ring.emitted(), model.emitted());
        prop_assert_eq!(ring.dropped(), 0);
        for (real, cursor, joined) in &consumers {
            // Everything it was told about since it joined, and where its
            // lanes' positions stand (one lane used: their sum).
            prop_assert_eq!(real.read() + real.lost(), *cursor - *joined);
            prop_assert_eq!(real.cursors().iter().sum::<u64>(), *cursor);
            prop_assert_eq!(real.position(), *cursor);
        }
    }
}

/// E6, E8: producers and consumers racing over millions of events; for each
/// consumer read + lost = emitted since it joined (drops included), every
/// event read is intact, and within a lane each producer's events come in the
/// order it emitted them. With one lane, producers collide and drop; with as
/// many lanes as producers they mostly keep to their own. E10: the first
/// `owners` producers push through a `LaneProducer` when they get one,
/// giving their lane back and asking again every 4096 events (pushing shared
/// while every lane is taken), so owned and shared writers hand lanes over
/// throughout.
#[test]
fn stress_conservation_integrity_and_lane_order() {
    const PRODUCERS: u32 = 3;
    const PER_PRODUCER: u64 = if cfg!(debug_assertions) {
        200_000
    } else {
        1_500_000
    };
    for (lanes, lane_capacity, owners) in [
        (1usize, 2usize, 0u32),
        (1, 256, 1),
        (2, 4, 0),
        (2, 4, 1),
        (4, 256, 2),
        (8, 2, 3),
    ] {
        let ring = LaneRing::new(lanes, lane_capacity).unwrap();
        let done = AtomicBool::new(false);
        let results: Vec<_> = thread::scope(|s| {
            let consumers: Vec<_> = (0..2)
                .map(|_| {
                    let mut c = ring.consumer();
                    let done = &done;
                    s.spawn(move || {
                        let mut last = [[None::<u64>; PRODUCERS as usize]; MAX_LANES];
                        loop {
                            let finished = done.load(Ordering::Acquire);
                            match c.try_recv() {
                                Some(Received::Event(e)) => {
                                    assert!(intact(&e), "torn event {e:?}");
                                    let lane = c.last_lane().expect("an event has a lane");
                                    let p = e.source as usize;
                                    let n = e.time.as_nanos();
                                    if let Some(prev) = last[lane][p] {
                                        assert!(
                                            n > prev,
                                            "lane {lane}, producer {p}: {n} after {prev}"
                                        );
                                    }
                                    last[lane][p] = Some(n);
                                }
                                Some(Received::Lost(_)) => {}
                                Some(other) => panic!("unexpected {other:?}"),
                                None if finished => break,
                                None => std::hint::spin_loop(),
                            }
                        }
                        (c.read(), c.lost())
                    })
                })
                .collect();
            let producers: Vec<_> = (0..PRODUCERS)
                .map(|p| {
                    let ring = &ring;
                    s.spawn(move || {
                        let owner = p < owners;
                        let mut mine = if owner { ring.producer() } else { None };
                        for i in 0..PER_PRODUCER {
                            if owner && i % 4096 == 4095 {
                                drop(mine.take());
                                mine = ring.producer();
                            }
                            match &mine {
                                Some(producer) => producer.push(event(i, p)),
                                None => ring.push(event(i, p)),
                            }
                        }
                    })
                })
                .collect();
            for h in producers {
                h.join().unwrap();
            }
            done.store(true, Ordering::Release);
            consumers.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let emitted = ring.emitted();
        assert_eq!(emitted, u64::from(PRODUCERS) * PER_PRODUCER);
        for (read, lost) in results {
            assert_eq!(
                read + lost,
                emitted,
                "{lanes} lanes of {lane_capacity}, {owners} owners: read {read} + lost {lost} (dropped {})",
                ring.dropped()
            );
            assert!(read > 0);
        }
    }
}
