//! Replay: determinism, what each stage does to a trace, and the rules for
//! unknown outcomes, overlapping calls and retries.

use std::time::Duration;

use tenlives_engine::breaker::BreakerState;
use tenlives_ops::ConfigSet;
use tenlives_ops::config::{
    BreakerSpec, BulkheadSpec, Dur, FileSpec, OrOff, RateLimiterSpec, RetryBudgetSpec, Section,
    ThrottleSpec,
};
use tenlives_ops::replay::{
    Candidate, Decision, MAX_BUCKETS, Stage, Trace, TraceOutcome, TraceRecord, replay,
};

const MS: u64 = 1_000_000;
const S: u64 = 1_000 * MS;

fn default_section<T: Default>(spec: T) -> Section<T> {
    let mut s = Section::default();
    s.configs.insert("default".into(), spec);
    s
}

fn breaker() -> BreakerSpec {
    BreakerSpec {
        failure_rate: Some(OrOff::On(50.0)),
        window_calls: Some(20),
        minimum_calls: Some(10),
        open_duration: Some(Dur(Duration::from_secs(2))),
        half_open_probes: Some(3),
        ..BreakerSpec::default()
    }
}

fn config(spec: FileSpec) -> ConfigSet {
    ConfigSet::from_file_spec(&spec).expect("valid")
}

fn candidate(spec: &FileSpec) -> Candidate {
    Candidate::from_config(&config(spec.clone()), "api").expect("a candidate")
}

/// A SplitMix64 stream: the synthetic traces are seeded.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Poisson-ish arrivals at about `per_second`, failing with probability
/// `fail(t)` percent, latencies 1..=80 ms, a few retries and sheds.
fn synthetic(seed: u64, seconds: u64, per_second: u64, fail: impl Fn(u64) -> u64) -> Trace {
    let mut rng = Rng(seed);
    let mut records = Vec::new();
    let mut t = 0;
    let gap = S / per_second;
    while t < seconds * S {
        t += 1 + rng.next() % (2 * gap);
        let roll = rng.next() % 100;
        let outcome = if roll < fail(t) {
            TraceOutcome::Err
        } else if rng.next().is_multiple_of(50) {
            TraceOutcome::Shed
        } else if rng.next().is_multiple_of(40) {
            TraceOutcome::Ignored
        } else {
            TraceOutcome::Ok
        };
        records.push(TraceRecord {
            at_ns: t,
            key: rng.next() % 7,
            outcome,
            latency_ns: MS + rng.next() % (80 * MS),
            retry: rng.next().is_multiple_of(10),
        });
    }
    Trace::new(records)
}

fn outage(t: u64) -> u64 {
    if (10 * S..20 * S).contains(&t) { 90 } else { 2 }
}

fn everything() -> FileSpec {
    FileSpec {
        circuit_breaker: default_section(breaker()),
        rate_limiter: default_section(RateLimiterSpec {
            rate: Some(150),
            burst: Some(20),
            ..RateLimiterSpec::default()
        }),
        bulkhead: default_section(BulkheadSpec {
            limit: Some(6),
            ..BulkheadSpec::default()
        }),
        retry_budget: default_section(RetryBudgetSpec {
            ratio: Some(0.05),
            min_per_second: Some(1),
            ..RetryBudgetSpec::default()
        }),
        throttle: default_section(ThrottleSpec {
            k: Some(1.0),
            minimum_requests: Some(20),
            seed: Some(3),
            ..ThrottleSpec::default()
        }),
        ..FileSpec::default()
    }
}

#[test]
fn the_same_trace_and_configuration_give_the_same_bytes() {
    for seed in [1, 2, 3, 99] {
        let trace = synthetic(seed, 30, 200, outage);
        // Through the text form too: what the command reads.
        let trace = Trace::parse(&trace.write()).unwrap();
        let a = replay(&trace, &candidate(&everything()), S);
        let b = replay(&trace, &candidate(&everything()), S);
        assert_eq!(a, b, "seed {seed}");
        assert_eq!(a.render(), b.render());
        // Every stage took part, so the determinism covers each.
        for stage in Stage::ALL {
            assert!(
                a.rejected[stage as usize] > 0,
                "seed {seed}: {stage:?} refused nothing\n{}",
                a.render()
            );
        }
        assert_eq!(a.decisions.len(), trace.records.len());
        assert_eq!(
            a.admitted() + a.rejected_total(),
            trace.records.len() as u64
        );
    }
}

#[test]
fn the_breaker_opens_when_the_outage_starts_and_closes_after_it() {
    let trace = synthetic(7, 30, 100, outage);
    let spec = FileSpec {
        circuit_breaker: default_section(breaker()),
        ..FileSpec::default()
    };
    let r = replay(&trace, &candidate(&spec), S);
    let open = r.first_open_ns().expect("it opened");
    // A window of 20 calls at ~100 calls a second, minimum 10: open within
    // the outage's first second, not before it.
    assert!((10 * S..11 * S).contains(&open), "opened at {open}");
    let last = r.transitions.last().unwrap();
    assert_eq!(last.to, BreakerState::Closed, "{}", r.render());
    assert!((20 * S..24 * S).contains(&last.at_ns), "{}", r.render());
    // While open it refuses; outside the outage nearly nothing.
    let during: u64 = r.series[11..19].iter().map(|b| b.rejected).sum();
    let before: u64 = r.series[..10].iter().map(|b| b.rejected).sum();
    assert!(during > 400, "{during}");
    assert_eq!(before, 0);
    // It spared the dependency most of the outage's failures.
    let failed_in_outage: u64 = r.series[10..20].iter().map(|b| b.failed).sum();
    let arrived_in_outage: u64 = r.series[10..20].iter().map(|b| b.arrived).sum();
    assert!(
        failed_in_outage * 3 < arrived_in_outage,
        "{failed_in_outage} of {arrived_in_outage}"
    );
}

#[test]
fn a_rate_limit_admits_its_quota_of_an_even_trace() {
    // 100 a second for 10 s, evenly; 50 a second allowed, burst 1.
    let records = (0..1000)
        .map(|i| TraceRecord {
            at_ns: i * 10 * MS,
            key: 0,
            outcome: TraceOutcome::Ok,
            latency_ns: MS,
            retry: false,
        })
        .collect();
    let spec = FileSpec {
        rate_limiter: default_section(RateLimiterSpec {
            rate: Some(50),
            burst: Some(1),
            ..RateLimiterSpec::default()
        }),
        ..FileSpec::default()
    };
    let r = replay(&Trace::new(records), &candidate(&spec), S);
    assert_eq!(r.admitted(), 500, "{}", r.render());
    assert_eq!(r.rejected[Stage::RateLimit as usize], 500);
    // Every other request, exactly.
    for (i, d) in r.decisions.iter().enumerate() {
        let want = if i % 2 == 0 {
            Decision::Admitted
        } else {
            Decision::Rejected(Stage::RateLimit)
        };
        assert_eq!(*d, want, "request {i}");
    }
}

#[test]
fn a_rate_limit_per_key_gives_each_key_its_quota() {
    // Two keys, each 100 a second, alternating; 50 a second allowed, burst 1.
    let records: Vec<_> = (0..2000)
        .map(|i| TraceRecord {
            at_ns: i * 5 * MS,
            key: i % 2,
            outcome: TraceOutcome::Ok,
            latency_ns: MS,
            retry: false,
        })
        .collect();
    let trace = Trace::new(records);
    let spec = FileSpec {
        rate_limiter: default_section(RateLimiterSpec {
            rate: Some(50),
            burst: Some(1),
            ..RateLimiterSpec::default()
        }),
        ..FileSpec::default()
    };
    let one = replay(&trace, &candidate(&spec), S);
    let per_key = replay(&trace, &candidate(&spec).rate_per_key(), S);
    // One limiter for both: 50 a second in all; one each: 50 a second each.
    assert_eq!(one.admitted(), 500, "{}", one.render());
    assert_eq!(per_key.admitted(), 1000, "{}", per_key.render());
    for key in 0..2 {
        let admitted = trace
            .records
            .iter()
            .zip(&per_key.decisions)
            .filter(|(r, d)| r.key == key && **d == Decision::Admitted)
            .count();
        assert_eq!(admitted, 500, "key {key}");
    }
    assert!(per_key.render().contains("rate_limiter (per key)"));
    assert!(!one.render().contains("per key"));
}

#[test]
fn a_concurrency_limit_never_holds_more_than_its_limit_of_recorded_calls() {
    let trace = synthetic(11, 5, 300, |_| 5);
    let spec = FileSpec {
        bulkhead: default_section(BulkheadSpec {
            limit: Some(4),
            ..BulkheadSpec::default()
        }),
        ..FileSpec::default()
    };
    let r = replay(&trace, &candidate(&spec), S);
    assert!(r.rejected[Stage::Concurrency as usize] > 0);
    // Independent check: the admitted calls with a known outcome, as
    // intervals [arrival, arrival + latency), overlap at most 4 deep
    // (a call ending at an instant frees its slot for one arriving then).
    let mut edges = Vec::new();
    for (rec, d) in trace.records.iter().zip(&r.decisions) {
        if *d == Decision::Admitted && rec.outcome != TraceOutcome::Shed {
            edges.push((rec.at_ns + rec.latency_ns, 0i32));
            edges.push((rec.at_ns, 1));
        }
    }
    edges.sort();
    let mut depth = 0;
    for (_, e) in edges {
        depth += if e == 1 { 1 } else { -1 };
        assert!(depth <= 4, "{depth} in flight");
    }
    // And a request is refused only when 4 are in flight at its arrival.
    for (i, (rec, d)) in trace.records.iter().zip(&r.decisions).enumerate() {
        if *d == Decision::Rejected(Stage::Concurrency) {
            let busy = trace.records[..i]
                .iter()
                .zip(&r.decisions)
                .filter(|(p, pd)| {
                    **pd == Decision::Admitted
                        && p.outcome != TraceOutcome::Shed
                        && p.at_ns + p.latency_ns > rec.at_ns
                })
                .count();
            assert_eq!(busy, 4, "request {i}");
        }
    }
}

#[test]
fn retries_spend_the_budget_and_first_attempts_fill_it() {
    // 10 first attempts a second and 10 retries a second, for 10 s; the
    // budget allows 10 % of requests plus none per second.
    let mut records = Vec::new();
    for i in 0..200u64 {
        records.push(TraceRecord {
            at_ns: i * 50 * MS,
            key: 1,
            outcome: TraceOutcome::Ok,
            latency_ns: MS,
            retry: i % 2 == 1,
        });
    }
    let spec = FileSpec {
        retry_budget: default_section(RetryBudgetSpec {
            ratio: Some(0.1),
            min_per_second: Some(0),
            ..RetryBudgetSpec::default()
        }),
        ..FileSpec::default()
    };
    let r = replay(&Trace::new(records), &candidate(&spec), S);
    let refused = r.rejected[Stage::RetryBudget as usize];
    // 100 first attempts all pass; about 10 % of them in retries.
    assert_eq!(r.admitted(), 100 + (100 - refused));
    assert!((80..=95).contains(&refused), "{}", r.render());
    for (i, d) in r.decisions.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(*d, Decision::Admitted);
        }
    }
}

#[test]
fn a_request_the_live_policy_shed_has_no_outcome_to_report() {
    // Every request was shed live: the candidate breaker admits them all
    // and never opens, for it hears nothing.
    let records = (0..100)
        .map(|i| TraceRecord {
            at_ns: i * MS,
            key: 0,
            outcome: TraceOutcome::Shed,
            latency_ns: 0,
            retry: false,
        })
        .collect();
    let spec = FileSpec {
        circuit_breaker: default_section(breaker()),
        ..FileSpec::default()
    };
    let r = replay(&Trace::new(records), &candidate(&spec), S);
    assert_eq!((r.unknown, r.admitted()), (100, 100));
    assert!(r.transitions.is_empty());
    assert_eq!(r.series[0].live_shed, 100);
}

#[test]
fn a_configuration_without_policies_or_for_another_instance_is_refused() {
    assert!(Candidate::from_config(&ConfigSet::default(), "api").is_err());
    let mut rate = Section::default();
    rate.instances.insert(
        "other".to_string(),
        RateLimiterSpec {
            rate: Some(5),
            ..RateLimiterSpec::default()
        },
    );
    let spec = FileSpec {
        rate_limiter: rate,
        ..FileSpec::default()
    };
    let e = Candidate::from_config(&config(spec.clone()), "api").unwrap_err();
    assert!(e.0.contains("rate_limiter"), "{e}");
    assert!(Candidate::from_config(&config(spec), "other").is_ok());
}

#[test]
fn times_at_the_ends_of_the_range_do_not_panic_nor_allocate_a_bucket_each() {
    let records = vec![
        TraceRecord {
            at_ns: 0,
            key: 0,
            outcome: TraceOutcome::Ok,
            latency_ns: u64::MAX,
            retry: false,
        },
        TraceRecord {
            at_ns: u64::MAX - 1,
            key: u64::MAX,
            outcome: TraceOutcome::Err,
            latency_ns: u64::MAX,
            retry: true,
        },
        TraceRecord {
            at_ns: u64::MAX,
            key: 0,
            outcome: TraceOutcome::Err,
            latency_ns: 5,
            retry: false,
        },
    ];
    let spec = FileSpec {
        circuit_breaker: default_section(breaker()),
        ..FileSpec::default()
    };
    // One-second buckets over 584 years: the buckets widen to keep the
    // series at most MAX_BUCKETS long.
    let r = replay(&Trace::new(records), &candidate(&spec), S);
    assert_eq!(r.decisions.len(), 3);
    assert!(r.series.len() <= MAX_BUCKETS, "{} buckets", r.series.len());
    assert!(r.bucket_ns > S);
    assert_eq!(r.series.iter().map(|b| b.arrived).sum::<u64>(), 3);
}

#[test]
fn buckets_keep_their_length_when_the_trace_fits() {
    let trace = synthetic(5, 30, 50, outage);
    let r = replay(&trace, &candidate(&everything()), 100 * MS);
    assert_eq!(r.bucket_ns, 100 * MS);
    assert_eq!(
        r.series.len(),
        usize::try_from(trace.records.last().unwrap().at_ns / (100 * MS)).unwrap() + 1
    );
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn record() -> impl Strategy<Value = TraceRecord> {
        (
            0..10 * S,
            0..5u64,
            prop_oneof![
                Just(TraceOutcome::Ok),
                Just(TraceOutcome::Err),
                Just(TraceOutcome::Ignored),
                Just(TraceOutcome::Shed),
            ],
            0..300 * MS,
            any::<bool>(),
        )
            .prop_map(|(at_ns, key, outcome, latency_ns, retry)| TraceRecord {
                at_ns,
                key,
                outcome,
                latency_ns,
                retry,
            })
    }

    fn spec() -> impl Strategy<Value = FileSpec> {
        (
            1.0..=100.0f64,
            1..60u32,
            1..1000u32,
            1..50u32,
            proptest::option::of(1..10u32),
            any::<bool>(),
        )
            .prop_map(|(rate, calls, per_second, burst, limit, budget)| {
                let mut spec = FileSpec {
                    circuit_breaker: default_section(BreakerSpec {
                        failure_rate: Some(OrOff::On(rate)),
                        window_calls: Some(calls),
                        minimum_calls: Some(calls),
                        open_duration: Some(Dur(Duration::from_millis(700))),
                        ..BreakerSpec::default()
                    }),
                    rate_limiter: default_section(RateLimiterSpec {
                        rate: Some(per_second),
                        burst: Some(burst),
                        ..RateLimiterSpec::default()
                    }),
                    ..FileSpec::default()
                };
                if let Some(limit) = limit {
                    spec.bulkhead = default_section(BulkheadSpec {
                        limit: Some(limit),
                        ..BulkheadSpec::default()
                    });
                }
                if budget {
                    spec.retry_budget = default_section(RetryBudgetSpec::default());
                    spec.throttle = default_section(ThrottleSpec {
                        seed: Some(u64::from(calls)),
                        ..ThrottleSpec::default()
                    });
                }
                spec
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Replay determinism (RP1) and its accounting, for any trace and
        /// configuration.
        #[test]
        fn any_trace_replays_the_same_twice_and_accounts_for_every_request(
            records in proptest::collection::vec(record(), 0..400),
            spec in spec(),
            bucket_ms in 1..2000u64,
            per_key in any::<bool>(),
        ) {
            let candidate = |spec: &FileSpec| {
                let c = candidate(spec);
                if per_key { c.rate_per_key() } else { c }
            };
            let trace = Trace::new(records);
            let back = Trace::parse(&trace.write()).unwrap();
            prop_assert_eq!(&back, &trace);
            let a = replay(&trace, &candidate(&spec), bucket_ms * MS);
            let b = replay(&back, &candidate(&spec), bucket_ms * MS);
            prop_assert_eq!(a.render(), b.render());
            prop_assert_eq!(&a, &b);
            let n = trace.records.len() as u64;
            prop_assert_eq!(a.decisions.len() as u64, n);
            prop_assert_eq!(a.admitted() + a.rejected_total(), n);
            prop_assert_eq!(a.series.iter().map(|b| b.arrived).sum::<u64>(), n);
            prop_assert_eq!(
                a.series.iter().map(|b| b.admitted).sum::<u64>(),
                a.admitted()
            );
            // Transitions chain and move forward in time.
            let mut state = BreakerState::Closed;
            let mut when = 0;
            for t in &a.transitions {
                prop_assert_eq!(t.from, state);
                prop_assert!(t.at_ns >= when);
                state = t.to;
                when = t.at_ns;
            }
            // A request the live policy shed is never counted as an outcome.
            let shed_admitted = trace
                .records
                .iter()
                .zip(&a.decisions)
                .filter(|(r, d)| r.outcome == TraceOutcome::Shed && **d == Decision::Admitted)
                .count() as u64;
            prop_assert_eq!(a.unknown, shed_admitted);
        }
    }
}
