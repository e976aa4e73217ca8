//! Model: the atomic `CircuitBreaker`, driven from one thread, behaves exactly
//! like the sequential `BreakerModel` — same states, generations, admissions,
//! rejections, retry-after times and window counts — under random operations,
//! random configurations and virtual time. The model's count window is a
//! plain queue of the last `n` outcomes. `would_admit` answers what the next
//! `try_acquire` returns and changes nothing.
//!
//! Invariants checked (docs/guarantees.md): B1 (single-CAS transitions, as seen
//! through identical generations), B4 (stale outcomes change nothing), B5
//! (dropped permits count as nothing and free probe slots), B6 (exactly the
//! configured probes), B7 (rejections say why and when), B10 (a count window
//! is exactly the last n calls), B11 (`would_admit`), B13 (scouts, when a
//! configuration has `probe_every`).

use core::time::Duration;

use proptest::prelude::*;
use tenlives_engine::breaker::{BreakerConfig, BreakerModel, CircuitBreaker, Outcome};
use tenlives_engine::time::{Clock, ManualClock};

#[derive(Clone, Debug)]
enum Op {
    Acquire,
    Record {
        index: usize,
        outcome: Outcome,
    },
    RecordElapsed {
        index: usize,
        outcome: Outcome,
        ms: u64,
    },
    Peek,
    Drop {
        index: usize,
    },
    Advance {
        ms: u64,
    },
    Explicit {
        which: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => Just(Op::Acquire),
        6 => (any::<usize>(), prop_oneof![
            4 => Just(Outcome::Success),
            4 => Just(Outcome::Failure),
            1 => Just(Outcome::Ignored),
        ]).prop_map(|(index, outcome)| Op::Record { index, outcome }),
        2 => (any::<usize>(), prop_oneof![Just(Outcome::Success), Just(Outcome::Failure)], 0..600u64)
            .prop_map(|(index, outcome, ms)| Op::RecordElapsed { index, outcome, ms }),
        2 => Just(Op::Peek),
        1 => any::<usize>().prop_map(|index| Op::Drop { index }),
        3 => prop_oneof![0..50u64, 0..3_000u64].prop_map(|ms| Op::Advance { ms }),
        1 => (0..20u8).prop_map(|which| Op::Explicit { which }),
    ]
}

#[derive(Clone, Debug)]
struct Cfg {
    failure_rate: Option<f64>,
    slow: Option<(f64, u64)>,
    consecutive: Option<u32>,
    count_window: bool,
    count_calls: u32,
    buckets: u32,
    per_bucket: u32,
    minimum_calls: u32,
    open_ms: u64,
    backoff: Option<(f64, u64)>,
    probes: u32,
    reopen_first: bool,
    probe_every_ms: Option<u64>,
}

fn cfg() -> impl Strategy<Value = Cfg> {
    (base_cfg(), proptest::option::of(1..400u64)).prop_map(|(c, probe_every_ms)| Cfg {
        probe_every_ms,
        ..c
    })
}

fn base_cfg() -> impl Strategy<Value = Cfg> {
    (
        proptest::option::of(1.0..100.0f64),
        proptest::option::of((1.0..100.0f64, 1..500u64)),
        proptest::option::of(1..6u32),
        any::<bool>(),
        prop_oneof![1..8u32, 8..40u32],
        1..6u32,
        1..5u32,
        1..8u32,
        1..2_000u64,
        proptest::option::of((1.0..3.0f64, 2_000..10_000u64)),
        1..5u32,
        any::<bool>(),
    )
        .prop_map(
            |(
                failure_rate,
                slow,
                consecutive,
                count_window,
                count_calls,
                buckets,
                per_bucket,
                minimum_calls,
                open_ms,
                backoff,
                probes,
                reopen_first,
            )| Cfg {
                failure_rate,
                slow,
                consecutive: if failure_rate.is_none() && slow.is_none() {
                    Some(consecutive.unwrap_or(3))
                } else {
                    consecutive
                },
                count_window,
                count_calls,
                buckets,
                per_bucket,
                minimum_calls,
                open_ms,
                backoff,
                probes,
                reopen_first,
                probe_every_ms: None,
            },
        )
}

fn build(c: &Cfg) -> BreakerConfig {
    let mut b = BreakerConfig::builder().without_failure_rate();
    if let Some(r) = c.failure_rate {
        b = b.failure_rate(r);
    }
    if let Some((r, ms)) = c.slow {
        b = b.slow_calls(r, Duration::from_millis(ms));
    }
    if let Some(n) = c.consecutive {
        b = b.consecutive_failures(n);
    }
    let minimum = if c.count_window {
        c.minimum_calls.min(c.count_calls)
    } else {
        c.minimum_calls
    };
    b = if c.count_window {
        b.count_window(c.count_calls)
    } else {
        b.time_window(
            Duration::from_millis(u64::from(c.buckets * c.per_bucket) * 100),
            c.buckets,
        )
    };
    b = b
        .minimum_calls(minimum)
        .open_duration(Duration::from_millis(c.open_ms))
        .half_open_probes(c.probes);
    if let Some((m, cap)) = c.backoff {
        b = b.open_backoff(m, Duration::from_millis(cap.max(c.open_ms)));
    }
    if let Some(ms) = c.probe_every_ms {
        b = b.probe_every(Duration::from_millis(ms));
    }
    b.reopen_on_first_failure(c.reopen_first)
        .build()
        .expect("generated configs are valid")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn atomic_breaker_matches_the_model(c in cfg(), ops in proptest::collection::vec(op(), 1..300)) {
        let config = build(&c);
        let breaker = CircuitBreaker::new(config.clone());
        let mut model = BreakerModel::new(config);
        let clock = ManualClock::new();
        let mut held = Vec::new();
        for op in ops {
            let now = clock.now();
            match op {
                Op::Acquire => {
                    let peek = breaker.would_admit(now);
                    let real = breaker.try_acquire(now);
                    match (&peek, &real) {
                        (Ok(()), Ok(_)) => {}
                        (Err(p), Err(r)) => prop_assert_eq!(p, r),
                        (p, r) => prop_assert!(false, "would_admit said {:?}, try_acquire {:?}", p, r.as_ref().map(|p| p.generation())),
                    }
                    let expected = model.try_acquire(now);
                    match (real, expected) {
                        (Ok(p), Ok(m)) => {
                            prop_assert_eq!(p.is_probe(), m.is_probe());
                            prop_assert_eq!(p.generation(), m.generation());
                            held.push((p, m));
                        }
                        (Err(r), Err(m)) => prop_assert_eq!(r, m),
                        (r, m) => prop_assert!(false, "admission differs: {:?} vs {:?}", r.map(|p| p.generation()), m),
                    }
                }
                Op::Record { index, outcome } => {
                    if !held.is_empty() {
                        let (p, m) = held.swap_remove(index % held.len());
                        p.record(outcome, now);
                        model.record(m, outcome, now);
                    }
                }
                Op::RecordElapsed { index, outcome, ms } => {
                    if !held.is_empty() {
                        let (p, m) = held.swap_remove(index % held.len());
                        let elapsed = Duration::from_millis(ms);
                        p.record_elapsed(outcome, elapsed, now);
                        model.record_elapsed(m, outcome, elapsed, now);
                    }
                }
                Op::Peek => {
                    let before = breaker.snapshot(now);
                    let answer = breaker.would_admit(now);
                    prop_assert_eq!(answer, model.would_admit(now));
                    prop_assert_eq!(breaker.snapshot(now), before, "asking changed the breaker");
                }
                Op::Drop { index } => {
                    if !held.is_empty() {
                        let (p, m) = held.swap_remove(index % held.len());
                        drop(p);
                        model.release(m);
                    }
                }
                Op::Advance { ms } => {
                    clock.advance(Duration::from_millis(ms));
                }
                Op::Explicit { which } => match which {
                    0 => { breaker.force_open(now); model.force_open(); }
                    1 => { breaker.disable(now); model.disable(); }
                    2 => { breaker.metrics_only(now); model.metrics_only(); }
                    3 => { breaker.reset(now); model.reset(); }
                    _ => {}
                },
            }
            let now = clock.now();
            prop_assert_eq!(breaker.state(), model.state());
            prop_assert_eq!(breaker.generation(), model.generation());
            prop_assert_eq!(breaker.snapshot(now).window, model.window(now));
        }
    }
}
