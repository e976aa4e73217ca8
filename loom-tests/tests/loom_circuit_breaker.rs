//! loom models of the circuit breaker protocol (engine/src/breaker/word.rs).
//!
//! Each model is small on purpose: loom explores every interleaving of the
//! real engine code (its atomics come from loom under `--cfg tenlives_loom`)
//! up to the preemption bound given to `model`.
#![cfg(tenlives_loom)]

use std::time::Duration;

use loom::sync::Arc;
use loom::thread;
use tenlives_engine::breaker::{BreakerConfig, BreakerState, CircuitBreaker, Outcome};
use tenlives_engine::time::Timestamp;
use tenlives_loom_tests::model;

const T0: Timestamp = Timestamp::ZERO;
/// Past the 1 s open duration used below.
const LATER: Timestamp = Timestamp::from_nanos(2_000_000_000);

fn consecutive(n: u32, probes: u32) -> BreakerConfig {
    BreakerConfig::builder()
        .without_failure_rate()
        .consecutive_failures(n)
        .open_duration(Duration::from_secs(1))
        .half_open_probes(probes)
        .reopen_on_first_failure(true)
        .build()
        .unwrap()
}

/// A breaker tripped at `T0`; at `LATER` it admits probes.
fn tripped(probes: u32) -> Arc<CircuitBreaker> {
    let b = Arc::new(CircuitBreaker::new(consecutive(1, probes)));
    b.try_acquire(T0).unwrap().failure(T0);
    assert_eq!(b.state(), BreakerState::Open);
    b
}

/// B6: with the half-open state allowing k = 2 probes and 3 threads asking
/// (one of which makes the Open -> HalfOpen transition), exactly 2 are admitted.
#[test]
fn half_open_admits_exactly_k_probes() {
    model(3, || {
        let b = tripped(2);
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let b = b.clone();
                thread::spawn(move || b.try_acquire_raw(LATER).ok())
            })
            .collect();
        let permits: Vec<_> = handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(permits.len(), 2);
        assert!(permits.iter().all(|p| p.is_probe()));
        assert_eq!(b.snapshot(LATER).probes_admitted, 2);
        for p in permits {
            b.release(p);
        }
    });
}

/// B4: a late success from an older generation cannot close (or reset the
/// failure run of) a breaker another thread just opened.
#[test]
fn late_closed_success_cannot_undo_a_trip() {
    model(3, || {
        let b = Arc::new(CircuitBreaker::new(consecutive(1, 1)));
        let early = b.try_acquire_raw(T0).unwrap();
        let tripper = {
            let b = b.clone();
            thread::spawn(move || b.try_acquire(T0).unwrap().failure(T0))
        };
        b.record(early, Outcome::Success, T0);
        tripper.join().unwrap();
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.generation(), 1);
    });
}

/// B4: a probe's success racing another probe's failure (which reopens at
/// once) never leaves the breaker closed.
#[test]
fn late_probe_success_cannot_close_a_reopened_breaker() {
    model(3, || {
        let b = tripped(2);
        let good = b.try_acquire_raw(LATER).unwrap();
        let bad = b.try_acquire_raw(LATER).unwrap();
        let failing = {
            let b = b.clone();
            thread::spawn(move || b.record(bad, Outcome::Failure, LATER))
        };
        b.record(good, Outcome::Success, LATER);
        failing.join().unwrap();
        assert_eq!(b.state(), BreakerState::Open);
    });
}

/// Two closed permits report failures from two threads at once; together
/// they cross `config`'s threshold: the breaker must end open after exactly
/// one transition.
fn two_failures_race(config: BreakerConfig) {
    let b = Arc::new(CircuitBreaker::new(config));
    let p1 = b.try_acquire_raw(T0).unwrap();
    let p2 = b.try_acquire_raw(T0).unwrap();
    let other = {
        let b = b.clone();
        thread::spawn(move || b.record(p1, Outcome::Failure, T0))
    };
    b.record(p2, Outcome::Failure, T0);
    other.join().unwrap();
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(b.generation(), 1, "exactly one transition");
}

/// B1: two failures racing across the consecutive-failures threshold make
/// exactly one Closed -> Open transition.
#[test]
fn racing_failures_trip_once_consecutive_rule() {
    model(3, || {
        two_failures_race(consecutive(2, 1));
    });
}

fn every_call_fails(window: u32) -> BreakerConfig {
    BreakerConfig::builder()
        .failure_rate(100.0)
        .count_window(window)
        .minimum_calls(window)
        .open_duration(Duration::from_secs(1))
        .build()
        .unwrap()
}

/// B1, B2, B10: two failures racing across a failure-rate threshold over an
/// empty count window: neither record is missed by both judges (no store
/// buffering between the tally and the head), so the breaker trips, and it
/// trips exactly once.
#[test]
fn racing_failures_trip_once_rate_rule() {
    model(2, || {
        two_failures_race(every_call_fails(2));
    });
}

/// B10: the same race over a full count window `[success, failure]`. The
/// first failure replaces the success (the tally goes up), the second
/// replaces the failure (nothing to adjust: it only reads the tally and the
/// head). Whichever order they take, one of them sees the window all failed.
#[test]
fn racing_failures_over_a_full_count_window_trip_once() {
    model(2, || {
        let b = Arc::new(CircuitBreaker::new(every_call_fails(2)));
        b.try_acquire(T0).unwrap().success(T0);
        b.try_acquire(T0).unwrap().failure(T0);
        assert_eq!(b.state(), BreakerState::Closed, "1 of 2 failed");
        let p1 = b.try_acquire_raw(T0).unwrap();
        let p2 = b.try_acquire_raw(T0).unwrap();
        let other = {
            let b = b.clone();
            thread::spawn(move || b.record(p1, Outcome::Failure, T0))
        };
        b.record(p2, Outcome::Failure, T0);
        other.join().unwrap();
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.generation(), 1, "exactly one transition");
    });
}

/// B10: two threads record failures into a full count window of four
/// `[success, success, failure, failure]` while a third records one more
/// and judges. In every order the second of the three failures fills the
/// window with failures; whatever the interleaving of the three reports'
/// steps (claim, write, adjust, judge), some judge sees it, and the breaker
/// opens exactly once.
#[test]
fn two_recorders_and_a_judge_over_a_count_window() {
    model(2, || {
        let b = Arc::new(CircuitBreaker::new(every_call_fails(4)));
        for outcome in [
            Outcome::Success,
            Outcome::Success,
            Outcome::Failure,
            Outcome::Failure,
        ] {
            b.try_acquire(T0).unwrap().record(outcome, T0);
        }
        assert_eq!(b.state(), BreakerState::Closed, "2 of 4 failed");
        let recorders: Vec<_> = (0..2)
            .map(|_| {
                let p = b.try_acquire_raw(T0).unwrap();
                let b = b.clone();
                thread::spawn(move || b.record(p, Outcome::Failure, T0))
            })
            .collect();
        let p = b.try_acquire_raw(T0).unwrap();
        b.record(p, Outcome::Failure, T0);
        for r in recorders {
            r.join().unwrap();
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.generation(), 1, "exactly one transition");
    });
}

/// B10: two threads overwrite a full count window of two failures with
/// successes while a third reads it. The reader sees the window's size in
/// calls and at most as many failures;
/// once both writers are done, the counts equal the outcomes in the window
/// exactly: every bit a writer changed was adjusted in the tally once, in
/// whatever order the writers' steps interleaved.
#[test]
fn count_window_writers_and_a_reader() {
    model(2, || {
        let b = Arc::new(CircuitBreaker::new(every_call_fails(2)));
        b.metrics_only(T0);
        b.try_acquire(T0).unwrap().failure(T0);
        b.try_acquire(T0).unwrap().failure(T0);
        let writers: Vec<_> = [Outcome::Success, Outcome::Success]
            .into_iter()
            .map(|outcome| {
                let p = b.try_acquire_raw(T0).unwrap();
                let b = b.clone();
                thread::spawn(move || b.record(p, outcome, T0))
            })
            .collect();
        let seen = b.snapshot(T0).window;
        assert_eq!(seen.calls, 2);
        assert!(seen.failures <= 2);
        for w in writers {
            w.join().unwrap();
        }
        let window = b.snapshot(T0).window;
        assert_eq!(
            (window.calls, window.failures, window.slow),
            (2, 0, 0),
            "{window:?}"
        );
    });
}

/// B5: a dropped half-open permit frees its slot, even while another thread
/// is asking for one; afterwards the slot can be taken again.
#[test]
fn dropped_probe_frees_its_slot() {
    model(3, || {
        let b = tripped(1);
        let ask_and_drop = || {
            let b = b.clone();
            thread::spawn(move || match b.try_acquire(LATER) {
                Ok(p) => {
                    drop(p); // cancelled before reporting
                    true
                }
                Err(_) => false,
            })
        };
        let (first, second) = (ask_and_drop(), ask_and_drop());
        let admitted = [first.join().unwrap(), second.join().unwrap()];
        assert!(admitted.contains(&true), "the free slot went to someone");
        assert_eq!(b.snapshot(LATER).probes_admitted, 0);
        assert!(b.try_acquire(LATER).is_ok(), "the slot is free again");
    });
}

/// A breaker with scouts every 10 ms, tripped at `T0` (open 1 s).
fn scouting() -> Arc<CircuitBreaker> {
    let b = Arc::new(CircuitBreaker::new(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(1))
            .half_open_probes(1)
            .probe_every(Duration::from_millis(10))
            .build()
            .unwrap(),
    ));
    b.try_acquire(T0).unwrap().failure(T0);
    assert_eq!(b.state(), BreakerState::Open);
    b
}

/// B13: three threads ask an open breaker with scouts at the same instant
/// past its deadline: exactly one scout goes, the breaker stays open in
/// the same generation, and the next deadline is one interval later.
#[test]
fn one_scout_per_deadline() {
    model(3, || {
        let b = scouting();
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let b = b.clone();
                thread::spawn(move || b.try_acquire_raw(LATER).ok())
            })
            .collect();
        let scouts: Vec<_> = handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(scouts.len(), 1);
        assert!(scouts[0].is_probe());
        assert_eq!((b.state(), b.generation()), (BreakerState::Open, 1));
        let r = b.try_acquire(LATER).unwrap_err();
        assert_eq!(r.retry_after(), Some(Duration::from_millis(10)));
        assert_eq!(b.scouts_in_flight(), 1, "the losers counted nothing");
        for s in scouts {
            b.record(s, Outcome::Failure, LATER);
        }
        assert_eq!((b.state(), b.generation()), (BreakerState::Open, 1));
        assert_eq!(b.scouts_in_flight(), 0);
    });
}

/// B13: a scout's failure races the next scout's admission. The next
/// deadline is one interval later if the failure was counted first, two
/// (the wait doubled for a scout still out) otherwise; either way the
/// count of scouts out ends at zero once both are reported.
#[test]
fn a_scouts_answer_racing_the_next_scout_leaves_the_count_exact() {
    const NEXT: Timestamp = Timestamp::from_nanos(LATER.as_nanos() + 10_000_000);
    model(2, || {
        let b = scouting();
        let first = b.try_acquire_raw(LATER).unwrap();
        let answer = {
            let b = b.clone();
            thread::spawn(move || b.record(first, Outcome::Failure, NEXT))
        };
        let second = b.try_acquire_raw(NEXT).expect("the next scout is due");
        answer.join().unwrap();
        let wait = b.try_acquire(NEXT).unwrap_err().retry_after();
        assert!(
            wait == Some(Duration::from_millis(10)) || wait == Some(Duration::from_millis(20)),
            "{wait:?}"
        );
        assert_eq!(b.scouts_in_flight(), 1);
        b.release(second);
        assert_eq!(b.scouts_in_flight(), 0);
        assert_eq!((b.state(), b.generation()), (BreakerState::Open, 1));
    });
}

/// B13, B4: a scout's success (closing the breaker) races a closed call's
/// failure (tripping it again) and an admission far past every deadline.
/// Whatever the order, a scout admitted there is stamped with the
/// generation the breaker was open in when it was admitted, so its success
/// closes that open period only: never a later one it raced into.
#[test]
fn a_scout_never_ends_a_later_open_period() {
    // Past the 1 s open period of a trip at `LATER`.
    const MUCH_LATER: Timestamp = Timestamp::from_nanos(4_000_000_000);
    model(2, || {
        let b = scouting();
        let first = b.try_acquire_raw(LATER).unwrap();
        let closer = {
            let b = b.clone();
            thread::spawn(move || b.record(first, Outcome::Success, LATER))
        };
        let tripper = {
            let b = b.clone();
            thread::spawn(move || {
                if let Ok(p) = b.try_acquire_raw(LATER) {
                    b.record(p, Outcome::Failure, LATER);
                }
            })
        };
        let late = b.try_acquire_raw(MUCH_LATER).ok();
        closer.join().unwrap();
        tripper.join().unwrap();
        let (state, generation) = (b.state(), b.generation());
        if let Some(p) = late {
            let (scout, stamped) = (p.is_probe(), p.generation());
            b.record(p, Outcome::Success, MUCH_LATER);
            if scout && stamped != generation {
                assert_eq!((b.state(), b.generation()), (state, generation));
            }
            if scout && stamped == generation && state == BreakerState::Open {
                assert_eq!(b.state(), BreakerState::Closed);
            }
        }
    });
}
