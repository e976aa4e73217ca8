//! A clock that panics, handed to the breaker's lazy readings
//! (`try_acquire_with`, `try_acquire_raw_with`, `Permit::record_with`), in
//! every state where the breaker reads it: the panic reaches the caller
//! and the breaker is left as if the call had never been made (an
//! admission), or as if the permit had been dropped unreported (a record:
//! what a `Permit` promises for a call that panicked). State, generation,
//! window, consecutive failures, probes admitted and reported, trips, the
//! open deadline, scouts in flight and the event ring are compared, and a
//! call made afterwards is admitted (or refused) as it would have been.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use tenlives_engine::breaker::{
    BreakerConfig, BreakerState, CircuitBreaker, Outcome, RejectReason, Snapshot,
};
use tenlives_engine::events::{EventRing, Received, Slot};
use tenlives_engine::time::Timestamp;

type Ring = EventRing<Box<[Slot]>>;
type Breaker = CircuitBreaker<Ring>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn at_ms(n: u64) -> Timestamp {
    Timestamp::from_nanos(n * 1_000_000)
}

/// A clock reading that panics.
fn panicking() -> Timestamp {
    panic!("the clock panicked")
}

/// Runs `f`, which must panic with the clock's message.
fn must_panic(f: impl FnOnce()) {
    let err = catch_unwind(AssertUnwindSafe(f)).expect_err("the clock's panic reaches the caller");
    assert_eq!(err.downcast_ref::<&str>(), Some(&"the clock panicked"));
}

/// Everything a panicking clock could leave changed.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    snapshot: Snapshot,
    scouts: u32,
    events: u64,
}

fn seen(b: &Breaker, now: Timestamp) -> Seen {
    Seen {
        snapshot: b.snapshot(now),
        scouts: b.scouts_in_flight(),
        events: b.sink().emitted(),
    }
}

fn breaker(config: BreakerConfig) -> Breaker {
    CircuitBreaker::with_sink(config, EventRing::with_capacity(64).unwrap(), 7)
}

/// Trips after one failure, open 100 ms, two probe slots.
fn tripping() -> Breaker {
    breaker(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .open_duration(ms(100))
            .half_open_probes(2)
            .build()
            .unwrap(),
    )
}

/// Trips after one failure, open 100 ms, then a scout every 50 ms; one
/// scout's success closes it.
fn scouting() -> Breaker {
    breaker(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .open_duration(ms(100))
            .half_open_probes(1)
            .probe_every(ms(50))
            .build()
            .unwrap(),
    )
}

/// Closed with a slow-call rule (a call over 10 ms is slow; half slow of
/// at least 2 opens it): every admission reads the time.
fn slow_rule() -> Breaker {
    breaker(
        BreakerConfig::builder()
            .without_failure_rate()
            .slow_calls(50.0, ms(10))
            .count_window(4)
            .minimum_calls(2)
            .build()
            .unwrap(),
    )
}

fn trip(b: &Breaker) {
    b.try_acquire(at_ms(0)).unwrap().failure(at_ms(0));
    assert_eq!(b.state(), BreakerState::Open);
}

/// Both lazy admissions with a panicking clock leave `b` untouched at `now`.
fn admissions_change_nothing(b: &Breaker, now: Timestamp) {
    let before = seen(b, now);
    must_panic(|| drop(b.try_acquire_with(panicking)));
    assert_eq!(seen(b, now), before, "try_acquire_with");
    must_panic(|| {
        if let Ok(p) = b.try_acquire_raw_with(panicking) {
            b.release(p);
        }
    });
    assert_eq!(seen(b, now), before, "try_acquire_raw_with");
}

#[test]
fn an_open_breaker_is_untouched_during_and_at_the_end_of_its_open_period() {
    let b = tripping();
    trip(&b);
    admissions_change_nothing(&b, at_ms(40));
    // The open period is over: the admission that would half-open the
    // breaker panics before the transition.
    admissions_change_nothing(&b, at_ms(100));
    assert_eq!(b.state(), BreakerState::Open);
    // The next admission takes the transition and the first probe.
    let probe = b.try_acquire_with(|| at_ms(100)).unwrap();
    assert!(probe.is_probe());
    assert_eq!(b.snapshot(at_ms(100)).probes_admitted, 1);
}

#[test]
fn a_half_open_breaker_keeps_its_probe_slots() {
    let b = tripping();
    trip(&b);
    let first = b.try_acquire(at_ms(100)).unwrap();
    assert_eq!(b.state(), BreakerState::HalfOpen);
    admissions_change_nothing(&b, at_ms(101));
    // One slot was left, and it still is.
    let second = b.try_acquire_with(|| at_ms(102)).unwrap();
    assert!(second.is_probe());
    let full = b.try_acquire_with(|| at_ms(102)).unwrap_err();
    assert_eq!(full.reason(), RejectReason::HalfOpenFull);
    // Full: refusing reads the clock too (for its event), and panics alike.
    admissions_change_nothing(&b, at_ms(103));
    first.success(at_ms(104));
    second.success(at_ms(104));
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn a_scouting_breaker_keeps_its_deadline_and_scout_count() {
    let b = scouting();
    trip(&b);
    admissions_change_nothing(&b, at_ms(40));
    // The deadline is up: the admission that would move it and take the
    // scout panics first.
    admissions_change_nothing(&b, at_ms(100));
    assert_eq!(b.scouts_in_flight(), 0);
    let scout = b.try_acquire_with(|| at_ms(100)).unwrap();
    assert!(scout.is_probe());
    assert_eq!(b.scouts_in_flight(), 1);
    // A scout out, the next one not due: refused, untouched.
    admissions_change_nothing(&b, at_ms(120));
    scout.success(at_ms(130));
    assert_eq!((b.state(), b.scouts_in_flight()), (BreakerState::Closed, 0));
}

#[test]
fn a_forced_open_breaker_is_untouched() {
    let b = tripping();
    b.force_open(at_ms(0));
    admissions_change_nothing(&b, at_ms(10));
    let refused = b.try_acquire_with(|| at_ms(10)).unwrap_err();
    assert_eq!(refused.reason(), RejectReason::ForcedOpen);
}

#[test]
fn a_closed_breaker_with_a_slow_call_rule_counts_nothing() {
    let b = slow_rule();
    b.try_acquire(at_ms(0)).unwrap().success(at_ms(1));
    assert_eq!(b.snapshot(at_ms(1)).window.calls, 1);
    admissions_change_nothing(&b, at_ms(2));
    // A slow call now makes one in two: open. Had the panicking admission
    // counted, it would not be one in two.
    b.try_acquire(at_ms(2)).unwrap().success(at_ms(50));
    assert_eq!(b.state(), BreakerState::Open);
}

/// Two breakers brought to the same point by `setup`, which returns the
/// permit of a call in flight on each and when it ends: on one the permit
/// is dropped unreported, on the other `record_with(outcome)` is given a
/// clock that panics. Both must end alike (snapshots, scouts, events), and
/// a call after it must be treated alike.
fn record_with_panicking_is_a_drop(
    make: fn() -> Breaker,
    setup: fn(&Breaker) -> Timestamp,
    outcome: Outcome,
) {
    let dropped = make();
    let panicked = make();
    let end = setup(&dropped);
    assert_eq!(setup(&panicked), end);
    let pd = dropped.try_acquire_with(|| end).ok();
    let pp = panicked.try_acquire_with(|| end).ok();
    assert_eq!(pd.is_some(), pp.is_some());
    let Some(permit) = pp else {
        panic!("the setup leaves the call admitted")
    };
    drop(pd);
    must_panic(|| permit.record_with(outcome, panicking));
    assert_eq!(seen(&panicked, end), seen(&dropped, end), "{outcome:?}");
    // What comes next is admitted or refused alike, and ends alike.
    let later = end.saturating_add(ms(1));
    let next_d = dropped.try_acquire(later);
    let next_p = panicked.try_acquire(later);
    assert_eq!(next_d.is_ok(), next_p.is_ok());
    if let (Ok(d), Ok(p)) = (next_d, next_p) {
        assert_eq!(d.is_probe(), p.is_probe());
        d.success(later);
        p.success(later);
    }
    assert_eq!(seen(&panicked, later), seen(&dropped, later));
}

#[test]
fn a_probe_whose_record_panics_frees_its_slot() {
    // Half-open, one of two probes out (the call under test is the second).
    fn half_open(b: &Breaker) -> Timestamp {
        trip(b);
        // The first probe stays out: its raw token is never handed back.
        let _out = b.try_acquire(at_ms(100)).unwrap().into_raw();
        at_ms(110)
    }
    for outcome in [Outcome::Success, Outcome::Failure] {
        record_with_panicking_is_a_drop(tripping, half_open, outcome);
    }
    // And directly: the slot is taken again, not lost.
    let b = tripping();
    trip(&b);
    let probe = b.try_acquire(at_ms(100)).unwrap();
    assert_eq!(b.snapshot(at_ms(100)).probes_admitted, 1);
    must_panic(|| probe.record_with(Outcome::Failure, panicking));
    let s = b.snapshot(at_ms(101));
    assert_eq!(
        (s.state, s.probes_admitted, s.probes_reported),
        (BreakerState::HalfOpen, 0, 0)
    );
    let a = b.try_acquire(at_ms(101)).unwrap();
    let c = b.try_acquire(at_ms(101)).unwrap();
    a.success(at_ms(102));
    c.success(at_ms(102));
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn a_scout_whose_record_panics_is_no_longer_counted() {
    fn at_scout_time(b: &Breaker) -> Timestamp {
        trip(b);
        at_ms(100)
    }
    for outcome in [Outcome::Success, Outcome::Failure] {
        record_with_panicking_is_a_drop(scouting, at_scout_time, outcome);
    }
    // Directly: the count goes back to zero, so the next scout waits one
    // interval, not two.
    let b = scouting();
    trip(&b);
    let scout = b.try_acquire(at_ms(100)).unwrap();
    assert_eq!(b.scouts_in_flight(), 1);
    must_panic(|| scout.record_with(Outcome::Success, panicking));
    assert_eq!(b.scouts_in_flight(), 0);
    assert_eq!(b.state(), BreakerState::Open);
    assert!(b.try_acquire(at_ms(150)).unwrap().is_probe());
}

#[test]
fn a_closed_call_whose_record_panics_counts_nothing() {
    fn closed(_: &Breaker) -> Timestamp {
        at_ms(5)
    }
    // A failure (it could open the breaker) on a consecutive-failures
    // breaker; a success and a failure on a slow-call rule's.
    record_with_panicking_is_a_drop(tripping, closed, Outcome::Failure);
    for outcome in [Outcome::Success, Outcome::Failure] {
        record_with_panicking_is_a_drop(slow_rule, closed, outcome);
    }
    // Metrics-only: measured, so the record reads the time.
    fn metrics(b: &Breaker) -> Timestamp {
        b.metrics_only(at_ms(0));
        at_ms(5)
    }
    record_with_panicking_is_a_drop(slow_rule, metrics, Outcome::Failure);
}

#[test]
fn a_record_that_reads_no_time_does_not_call_the_clock() {
    // A success through a closed consecutive-failures breaker, and any
    // ignored outcome: the panicking clock is never called.
    let b = tripping();
    b.try_acquire_with(panicking)
        .unwrap()
        .record_with(Outcome::Success, panicking);
    b.try_acquire_with(panicking)
        .unwrap()
        .record_with(Outcome::Ignored, panicking);
    assert_eq!(b.snapshot(at_ms(0)).window.calls, 0);
}

#[test]
fn the_event_ring_holds_only_whole_events_after_the_clock_panicked() {
    let b = tripping();
    let mut consumer = b.sink().consumer();
    trip(&b); // BREAKER_OPENED
    let before = b.sink().emitted();
    must_panic(|| drop(b.try_acquire_with(panicking)));
    assert_eq!(b.sink().emitted(), before, "no event claimed");
    let probe = b.try_acquire(at_ms(100)).unwrap(); // BREAKER_HALF_OPENED
    must_panic(|| probe.record_with(Outcome::Failure, panicking));
    let again = b.try_acquire(at_ms(100)).map(|p| p.success(at_ms(101)));
    assert!(again.is_ok(), "the freed slot admits");
    // Every event emitted reads whole, in order, none lost and none pending.
    let mut kinds = Vec::new();
    while let Some(received) = consumer.try_recv() {
        match received {
            Received::Event(e) => {
                assert_eq!(e.source, 7);
                kinds.push(e.kind);
            }
            other => panic!("not a whole event: {other:?}"),
        }
    }
    assert_eq!(kinds.len() as u64, b.sink().emitted());
    assert_eq!(consumer.lost(), 0);
}
