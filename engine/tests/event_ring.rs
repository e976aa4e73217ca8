//! Event ring: property test against a sequential model, and a
//! multi-producer, multi-consumer stress test of exact loss accounting.
//!
//! Model: a ring of capacity C keeps the last C events emitted; a consumer at
//! sequence r that is more than C behind loses everything older than the last
//! C; otherwise it reads event r. From one thread, the atomic ring must
//! deliver exactly what the model says, in order (E1, E2 in docs/guarantees.md).

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use proptest::prelude::*;
use tenlives_engine::events::{EventRing, Received, Slot};

#[path = "common/events.rs"]
mod events;
use events::{LastEvents, Op, event, intact, ops};

proptest! {
    #[test]
    fn ring_matches_the_model(log_cap in 1u32..5, ops in ops()) {
        let cap = 1usize << log_cap;
        let ring = EventRing::with_capacity(cap).unwrap();
        let mut model = LastEvents::new(cap);
        // Each consumer beside the model's cursor.
        let mut consumers = vec![(ring.consumer(), 0u64)];
        for op in ops {
            match op {
                Op::Emit(n) => {
                    for _ in 0..n {
                        ring.push(model.emit());
                    }
                }
                Op::Join => consumers.push((ring.consumer(), model.emitted())),
                Op::Read(i) => {
                    let n = consumers.len();
                    let (real, cursor) = &mut consumers[i % n];
                    let expected = model.receive(cursor);
                    prop_assert_eq!(real.try_recv(), expected);
                }
            }
        }
        for (real, cursor) in &consumers {
            prop_assert_eq!(real.cursor(), *cursor);
        }
    }
}

#[test]
fn capacity_must_be_a_power_of_two() {
    for bad in [0, 1, 3, 100] {
        let err = EventRing::with_capacity(bad).unwrap_err();
        assert!(err.to_string().contains("power of two"), "{err}");
    }
    let slots: [Slot; 3] = [const { Slot::new() }; 3];
    assert!(EventRing::from_slots(slots).is_err());
}

/// A capacity whose slots cannot fit in memory is a typed error, never a
/// panic or an abort in the allocator. Failed before as: `capacity overflow`
/// panic in `alloc::raw_vec` for `1 << 62`.
#[test]
#[cfg_attr(miri, ignore = "asks the allocator for petabytes")]
fn an_impossible_capacity_is_a_typed_error() {
    use tenlives_engine::ConfigError;
    use tenlives_engine::events::MAX_CAPACITY;

    assert!(MAX_CAPACITY.is_power_of_two());
    let bytes = MAX_CAPACITY.checked_mul(size_of::<Slot>()).unwrap();
    assert!(
        isize::try_from(bytes).is_ok(),
        "the largest ring's bytes fit isize"
    );
    assert!(
        isize::try_from((MAX_CAPACITY * 2).saturating_mul(size_of::<Slot>())).is_err(),
        "and it is the largest power of two that does"
    );
    for too_large in [MAX_CAPACITY * 2, 1 << 62, 1 << 63] {
        match EventRing::with_capacity(too_large) {
            Err(ConfigError::TooLarge { value, max, .. }) => {
                assert_eq!((value, max), (too_large as u64, MAX_CAPACITY as u64));
            }
            other => panic!("{too_large}: {other:?}"),
        }
    }
    // Within the maximum but beyond any machine's memory: the allocator
    // refuses, and that is an error too.
    match EventRing::with_capacity(MAX_CAPACITY) {
        Err(e @ ConfigError::OutOfMemory { .. }) => {
            assert!(e.to_string().contains("event ring capacity"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

/// E1, E2: 2 producers and 2 consumers racing over millions of events; for
/// each consumer read + lost = emitted since it joined, events arrive in
/// sequence order per producer, and every event read is intact.
#[test]
fn stress_conservation_and_integrity() {
    const PRODUCERS: u32 = 2;
    const PER_PRODUCER: u64 = if cfg!(debug_assertions) {
        300_000
    } else {
        2_000_000
    };
    for capacity in [8usize, 1024] {
        let ring = EventRing::with_capacity(capacity).unwrap();
        let done = AtomicBool::new(false);
        let (results, _) = thread::scope(|s| {
            let consumers: Vec<_> = (0..2)
                .map(|_| {
                    let mut c = ring.consumer();
                    let done = &done;
                    s.spawn(move || {
                        let mut last = [None::<u64>; PRODUCERS as usize];
                        loop {
                            let finished = done.load(Ordering::Acquire);
                            match c.try_recv() {
                                Some(Received::Event(e)) => {
                                    assert!(intact(&e), "torn event {e:?}");
                                    let p = e.source as usize;
                                    let n = e.time.as_nanos();
                                    if let Some(prev) = last[p] {
                                        assert!(n > prev, "producer {p}: {n} after {prev}");
                                    }
                                    last[p] = Some(n);
                                }
                                Some(Received::Lost(_)) => {}
                                Some(other) => panic!("unexpected {other:?}"),
                                None if finished => break,
                                None => std::hint::spin_loop(),
                            }
                        }
                        (c.read(), c.lost(), c.cursor())
                    })
                })
                .collect();
            let producers: Vec<_> = (0..PRODUCERS)
                .map(|p| {
                    let ring = &ring;
                    s.spawn(move || {
                        for i in 0..PER_PRODUCER {
                            ring.push(event(i, p));
                        }
                    })
                })
                .collect();
            for h in producers {
                h.join().unwrap();
            }
            done.store(true, Ordering::Release);
            (
                consumers
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .collect::<Vec<_>>(),
                (),
            )
        });
        let emitted = ring.emitted();
        assert_eq!(emitted, u64::from(PRODUCERS) * PER_PRODUCER);
        for (read, lost, cursor) in results {
            assert_eq!(
                read + lost,
                emitted,
                "capacity {capacity}: read {read} + lost {lost}"
            );
            assert_eq!(cursor, emitted);
            assert!(read > 0);
        }
    }
}
