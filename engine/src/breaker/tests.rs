//! Scenario tests of the breaker's rules, one rule at a time.

use core::time::Duration;

use std::string::ToString;

use super::*;
use crate::time::{Clock, ManualClock};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn breaker(b: BreakerConfigBuilder) -> CircuitBreaker {
    CircuitBreaker::new(b.build().expect("valid config"))
}

fn call<S: EventSink>(
    b: &CircuitBreaker<S>,
    clock: &ManualClock,
    outcome: Outcome,
) -> Result<(), Rejected> {
    let p = b.try_acquire(clock.now())?;
    p.record(outcome, clock.now());
    Ok(())
}

#[test]
fn consecutive_failures_trip_and_success_resets_the_run() {
    let b = breaker(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(3),
    );
    let c = ManualClock::new();
    call(&b, &c, Outcome::Failure).unwrap();
    call(&b, &c, Outcome::Failure).unwrap();
    call(&b, &c, Outcome::Success).unwrap();
    assert_eq!(b.snapshot(c.now()).consecutive_failures, 0);
    call(&b, &c, Outcome::Failure).unwrap();
    call(&b, &c, Outcome::Failure).unwrap();
    assert_eq!(b.state(), BreakerState::Closed);
    call(&b, &c, Outcome::Failure).unwrap();
    assert_eq!(b.state(), BreakerState::Open);
    let r = call(&b, &c, Outcome::Success).unwrap_err();
    assert_eq!(r.reason(), RejectReason::Open);
    assert_eq!(r.retry_after(), Some(Duration::from_secs(5)));
}

#[test]
fn failure_rate_over_count_window_needs_minimum_calls() {
    let b = breaker(
        BreakerConfig::builder()
            .failure_rate(50.0)
            .count_window(10)
            .minimum_calls(4),
    );
    let c = ManualClock::new();
    for _ in 0..3 {
        call(&b, &c, Outcome::Failure).unwrap();
    }
    assert_eq!(
        b.state(),
        BreakerState::Closed,
        "three calls are below the minimum"
    );
    call(&b, &c, Outcome::Failure).unwrap();
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn count_window_forgets_old_calls() {
    // Window of the last 4 calls.
    let b = breaker(
        BreakerConfig::builder()
            .failure_rate(75.0)
            .count_window(4)
            .minimum_calls(4),
    );
    let c = ManualClock::new();
    for o in [
        Outcome::Failure,
        Outcome::Failure,
        Outcome::Success,
        Outcome::Success,
        Outcome::Failure,
    ] {
        call(&b, &c, o).unwrap();
    }
    // The last four calls: F S S F.
    assert_eq!(
        b.snapshot(c.now()).window,
        WindowCounts {
            calls: 4,
            failures: 2,
            slow: 0
        }
    );
    call(&b, &c, Outcome::Failure).unwrap(); // S S F F
    assert_eq!(b.state(), BreakerState::Closed);
    call(&b, &c, Outcome::Failure).unwrap(); // S F F F = 75 %
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn a_success_never_opens_the_breaker() {
    // 3 failures out of 3 calls is 100 % but below the minimum of 4; the
    // fourth call succeeds: 75 % over 4 calls breaks the 50 % rule, yet a
    // success does not trip. The next failure does.
    let b = breaker(
        BreakerConfig::builder()
            .failure_rate(50.0)
            .count_window(10)
            .minimum_calls(4),
    );
    let c = ManualClock::new();
    for _ in 0..3 {
        call(&b, &c, Outcome::Failure).unwrap();
    }
    call(&b, &c, Outcome::Success).unwrap();
    assert_eq!(b.state(), BreakerState::Closed);
    call(&b, &c, Outcome::Failure).unwrap();
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn time_window_expires_old_buckets() {
    let b = breaker(
        BreakerConfig::builder()
            .failure_rate(50.0)
            .time_window(Duration::from_secs(10), 10)
            .minimum_calls(4),
    );
    let c = ManualClock::new();
    for _ in 0..3 {
        call(&b, &c, Outcome::Failure).unwrap();
    }
    c.advance(Duration::from_secs(10));
    // The three failures fell out of the window.
    assert_eq!(b.snapshot(c.now()).window.calls, 0);
    for _ in 0..3 {
        call(&b, &c, Outcome::Success).unwrap();
    }
    call(&b, &c, Outcome::Failure).unwrap();
    assert_eq!(b.state(), BreakerState::Closed, "1 failure in 4 is 25 %");
    c.advance(Duration::from_secs(9));
    // Still inside the window: 2 failures in 5 calls is 40 %.
    call(&b, &c, Outcome::Failure).unwrap();
    assert_eq!(b.state(), BreakerState::Closed);
    // 3 in 6 is 50 %.
    call(&b, &c, Outcome::Failure).unwrap();
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn time_window_drops_a_bucket_when_it_leaves() {
    let b = breaker(
        BreakerConfig::builder()
            .failure_rate(50.0)
            .time_window(Duration::from_secs(10), 10)
            .minimum_calls(2),
    );
    let c = ManualClock::new();
    call(&b, &c, Outcome::Failure).unwrap();
    c.advance(Duration::from_secs(10));
    call(&b, &c, Outcome::Success).unwrap();
    call(&b, &c, Outcome::Success).unwrap();
    call(&b, &c, Outcome::Failure).unwrap();
    // Had the first failure still counted, 2 in 4 would have tripped.
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn slow_calls_trip_on_their_own_rate() {
    let b = breaker(
        BreakerConfig::builder()
            .without_failure_rate()
            .slow_calls(50.0, ms(100))
            .count_window(4)
            .minimum_calls(4),
    );
    let c = ManualClock::new();
    for slow in [false, true, false, true] {
        let p = b.try_acquire(c.now()).unwrap();
        if slow {
            c.advance(ms(100));
        }
        p.success(c.now());
    }
    assert_eq!(
        b.state(),
        BreakerState::Open,
        "2 slow calls in 4, both successes"
    );
}

#[test]
fn half_open_admits_exactly_the_probes_then_closes() {
    let b = breaker(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .half_open_probes(2),
    );
    let c = ManualClock::new();
    call(&b, &c, Outcome::Failure).unwrap();
    c.advance(Duration::from_secs(5));
    let p1 = b.try_acquire(c.now()).unwrap();
    let p2 = b.try_acquire(c.now()).unwrap();
    assert!(p1.is_probe() && p2.is_probe());
    let full = b.try_acquire(c.now()).unwrap_err();
    assert_eq!(full.reason(), RejectReason::HalfOpenFull);
    assert_eq!(full.retry_after(), None);
    p1.success(c.now());
    assert_eq!(b.state(), BreakerState::HalfOpen);
    p2.success(c.now());
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn dropped_probe_frees_its_slot_and_counts_nothing() {
    let b = breaker(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .half_open_probes(1),
    );
    let c = ManualClock::new();
    call(&b, &c, Outcome::Failure).unwrap();
    c.advance(Duration::from_secs(5));
    let p = b.try_acquire(c.now()).unwrap();
    assert_eq!(
        b.try_acquire(c.now()).unwrap_err().reason(),
        RejectReason::HalfOpenFull
    );
    drop(p);
    assert_eq!(b.state(), BreakerState::HalfOpen);
    let p = b.try_acquire(c.now()).expect("slot freed");
    p.record(Outcome::Ignored, c.now());
    let p = b.try_acquire(c.now()).expect("ignored frees the slot too");
    p.success(c.now());
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn failed_test_reopens_for_longer() {
    let b = breaker(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .half_open_probes(2)
            .reopen_on_first_failure(true)
            .open_duration(Duration::from_secs(1))
            .open_backoff(2.0, Duration::from_secs(3)),
    );
    let c = ManualClock::new();
    call(&b, &c, Outcome::Failure).unwrap();
    assert_eq!(
        b.try_acquire(c.now()).unwrap_err().retry_after(),
        Some(Duration::from_secs(1))
    );
    for expected in [2, 3, 3] {
        c.advance(Duration::from_secs(3));
        let p = b.try_acquire(c.now()).unwrap();
        p.failure(c.now());
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.try_acquire(c.now()).unwrap_err().retry_after(),
            Some(Duration::from_secs(expected))
        );
    }
    // A passing test closes and resets the backoff.
    c.advance(Duration::from_secs(3));
    b.try_acquire(c.now()).unwrap().success(c.now());
    b.try_acquire(c.now()).unwrap().success(c.now());
    assert_eq!(b.state(), BreakerState::Closed);
    call(&b, &c, Outcome::Failure).unwrap();
    assert_eq!(
        b.try_acquire(c.now()).unwrap_err().retry_after(),
        Some(Duration::from_secs(1))
    );
}

#[test]
fn late_outcome_from_an_older_generation_changes_nothing() {
    let b = breaker(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .half_open_probes(1),
    );
    let c = ManualClock::new();
    let old = b.try_acquire(c.now()).unwrap();
    call(&b, &c, Outcome::Failure).unwrap();
    c.advance(Duration::from_secs(5));
    let probe = b.try_acquire(c.now()).unwrap();
    probe.success(c.now());
    assert_eq!(b.state(), BreakerState::Closed);
    let generation = b.generation();
    old.failure(c.now()); // from the first closed period
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.generation(), generation);
    assert_eq!(b.snapshot(c.now()).window.calls, 0);
}

#[test]
fn explicit_states() {
    let b = breaker(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1),
    );
    let c = ManualClock::new();
    b.force_open(c.now());
    let r = b.try_acquire(c.now()).unwrap_err();
    assert_eq!(
        (r.reason(), r.retry_after()),
        (RejectReason::ForcedOpen, None)
    );
    b.disable(c.now());
    for _ in 0..5 {
        call(&b, &c, Outcome::Failure).unwrap();
    }
    assert_eq!(b.state(), BreakerState::Disabled);
    b.metrics_only(c.now());
    for _ in 0..5 {
        call(&b, &c, Outcome::Failure).unwrap();
    }
    assert_eq!(b.state(), BreakerState::MetricsOnly);
    assert_eq!(b.snapshot(c.now()).window.failures, 5);
    b.reset(c.now());
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(
        b.snapshot(c.now()).window.calls,
        0,
        "reset starts an empty window"
    );
    call(&b, &c, Outcome::Failure).unwrap();
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn rejection_messages_are_readable() {
    let r = Rejected {
        reason: RejectReason::Open,
        retry_after: Some(Duration::from_secs(2)),
    };
    assert_eq!(r.to_string(), "circuit breaker is open; retry after 2s");
}

#[test]
fn transitions_and_rejections_are_emitted() {
    use crate::events::{EventKind, EventRing, Received};

    let ring = EventRing::with_capacity(64).unwrap();
    let b = CircuitBreaker::with_sink(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(2)
            .half_open_probes(1)
            .open_duration(Duration::from_secs(1))
            .build()
            .unwrap(),
        &ring,
        42,
    );
    let mut events = ring.consumer();
    let c = ManualClock::new();
    call(&b, &c, Outcome::Failure).unwrap();
    call(&b, &c, Outcome::Failure).unwrap();
    assert!(call(&b, &c, Outcome::Success).is_err());
    c.advance(Duration::from_secs(1));
    call(&b, &c, Outcome::Success).unwrap();
    b.force_open(c.now());

    let mut got = std::vec::Vec::new();
    while let Some(Received::Event(e)) = events.try_recv() {
        assert_eq!(e.source, 42);
        got.push((e.kind, e.payload));
    }
    let open_ns = 1_000_000_000;
    assert_eq!(
        got,
        [
            (
                EventKind::BREAKER_OPENED,
                [TripReason::ConsecutiveFailures as u64 | (1 << 32), open_ns]
            ),
            (
                EventKind::BREAKER_REJECTED,
                [RejectReason::Open.code(), open_ns]
            ),
            (EventKind::BREAKER_HALF_OPENED, [1, 1]),
            (EventKind::BREAKER_CLOSED, [1, 0]),
            (
                EventKind::BREAKER_FORCED,
                [BreakerState::ForcedOpen.code(), 0]
            ),
        ]
    );
    assert_eq!(
        TripReason::from_code(got[0].1[0]),
        Some(TripReason::ConsecutiveFailures)
    );
}

#[test]
fn config_reads_back() {
    let c = BreakerConfig::builder()
        .failure_rate(25.0)
        .slow_calls(80.0, ms(300))
        .consecutive_failures(4)
        .minimum_calls(7)
        .reopen_on_first_failure(true)
        .build()
        .unwrap();
    assert_eq!(c.failure_rate(), Some(25.0));
    assert_eq!(c.slow_calls(), Some((80.0, ms(300))));
    assert_eq!(c.consecutive_failures(), Some(4));
    assert_eq!(c.minimum_calls(), 7);
    assert!(c.reopen_on_first_failure());
}

#[test]
fn slow_calls_are_judged_on_the_durations_callers_give() {
    let b = breaker(
        BreakerConfig::builder()
            .without_failure_rate()
            .slow_calls(50.0, ms(100))
            .count_window(4),
    );
    let c = ManualClock::new();
    // Admitted and completed at the same instant: only the given durations
    // can make these calls slow. 99 ms is not slow, 100 ms is.
    for elapsed in [ms(1), ms(99), ms(100)] {
        let p = b.try_acquire(c.now()).unwrap();
        p.record_elapsed(Outcome::Success, elapsed, c.now());
    }
    assert_eq!(b.snapshot(c.now()).window.slow, 1);
    assert_eq!(b.state(), BreakerState::Closed, "window not full yet");
    // The raw form; Duration::MAX saturates and is slow.
    let raw = b.try_acquire_raw(c.now()).unwrap();
    b.record_elapsed(raw, Outcome::Success, Duration::MAX, c.now());
    assert_eq!(b.state(), BreakerState::Open, "2 slow calls in 4");

    // And a call that took long by the clock but says it was fast is fast.
    let b = breaker(
        BreakerConfig::builder()
            .without_failure_rate()
            .slow_calls(50.0, ms(100))
            .count_window(1),
    );
    let p = b.try_acquire(c.now()).unwrap();
    c.advance(Duration::from_secs(10));
    p.record_elapsed(Outcome::Success, ms(5), c.now());
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.snapshot(c.now()).window.slow, 0);
}

#[test]
fn would_admit_answers_without_changing_anything() {
    use crate::events::{EventRing, Received};

    let ring = EventRing::with_capacity(16).unwrap();
    let b = CircuitBreaker::with_sink(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .half_open_probes(1)
            .open_duration(Duration::from_secs(1))
            .build()
            .unwrap(),
        &ring,
        1,
    );
    let mut events = ring.consumer();
    let c = ManualClock::new();
    assert_eq!(b.would_admit(c.now()), Ok(()));
    call(&b, &c, Outcome::Failure).unwrap();
    while events.try_recv().is_some() {}
    let generation = b.generation();
    c.advance(ms(400));
    let peek = b.would_admit(c.now()).unwrap_err();
    assert_eq!(
        (peek.reason(), peek.retry_after()),
        (RejectReason::Open, Some(ms(600)))
    );
    c.advance(ms(600));
    // Time is up: a probe would pass, and asking twice takes none.
    assert_eq!(b.would_admit(c.now()), Ok(()));
    assert_eq!(b.would_admit(c.now()), Ok(()));
    assert_eq!(
        (b.state(), b.generation()),
        (BreakerState::Open, generation)
    );
    assert!(
        !matches!(events.try_recv(), Some(Received::Event(_))),
        "asking emits nothing"
    );
    let probe = b
        .try_acquire(c.now())
        .expect("the one probe is still there");
    let full = b.would_admit(c.now()).unwrap_err();
    assert_eq!(full, b.try_acquire(c.now()).unwrap_err());
    assert_eq!(full.reason(), RejectReason::HalfOpenFull);
    drop(probe);
    assert_eq!(b.would_admit(c.now()), Ok(()));
    b.force_open(c.now());
    assert_eq!(
        b.would_admit(c.now()).unwrap_err().reason(),
        RejectReason::ForcedOpen
    );
    b.disable(c.now());
    assert_eq!(b.would_admit(c.now()), Ok(()));
}

#[test]
fn would_admit_agrees_at_the_ends_of_time() {
    let b = breaker(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .slow_calls(50.0, ms(100))
            .count_window(1)
            .open_duration(Duration::from_secs(1)),
    );
    let t = Timestamp::from_nanos(5_000_000_000);
    // Reported "before" it was admitted (a clock that went backwards): the
    // given duration alone decides slowness.
    let p = b.try_acquire(t).unwrap();
    p.record_elapsed(Outcome::Success, ms(1), Timestamp::ZERO);
    assert_eq!(b.state(), BreakerState::Closed);
    b.try_acquire(t).unwrap().failure(t);
    // Earlier than the trip: still open, for longer than the open duration.
    let earlier = Timestamp::from_nanos(1_000_000_000);
    let peek = b.would_admit(earlier).unwrap_err();
    assert_eq!(peek.retry_after(), Some(Duration::from_secs(5)));
    assert_eq!(peek, b.try_acquire(earlier).unwrap_err());
    // At the end of time the probe is due.
    assert_eq!(b.would_admit(Timestamp::MAX), Ok(()));
    assert!(b.try_acquire(Timestamp::MAX).unwrap().is_probe());
}

fn scouting(probes: u32) -> CircuitBreaker {
    breaker(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .open_duration(ms(100))
            .half_open_probes(probes)
            .probe_every(ms(20)),
    )
}

#[test]
fn scouts_go_one_per_interval_while_the_breaker_stays_open() {
    let b = scouting(1);
    let c = ManualClock::new();
    call(&b, &c, Outcome::Failure).unwrap();
    assert_eq!(b.state(), BreakerState::Open);
    c.advance(ms(99));
    assert_eq!(
        b.try_acquire(c.now()).unwrap_err().retry_after(),
        Some(ms(1))
    );
    c.advance(ms(1));
    let generation = b.generation();
    let scout = b.try_acquire(c.now()).expect("the first scout");
    assert!(scout.is_probe());
    assert_eq!(scout.generation(), generation);
    // The breaker stays open, and the next scout waits a whole interval.
    assert_eq!(b.state(), BreakerState::Open);
    let r = b.try_acquire(c.now()).unwrap_err();
    assert_eq!(
        (r.reason(), r.retry_after()),
        (RejectReason::Open, Some(ms(20)))
    );
    // A failed scout changes nothing: not the state, not the generation,
    // not the deadline.
    c.advance(ms(5));
    scout.failure(c.now());
    assert_eq!(
        (b.state(), b.generation()),
        (BreakerState::Open, generation)
    );
    assert_eq!(
        b.try_acquire(c.now()).unwrap_err().retry_after(),
        Some(ms(15))
    );
    c.advance(ms(15));
    let second = b.try_acquire(c.now()).expect("the second scout");
    // Its success closes the breaker (one probe is the whole test).
    second.success(c.now());
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.generation(), generation.wrapping_add(1));
}

#[test]
fn a_stalled_scout_does_not_hold_back_the_next_it_only_doubles_the_wait() {
    let b = scouting(1);
    let c = ManualClock::new();
    call(&b, &c, Outcome::Failure).unwrap();
    c.advance(ms(100));
    let stalled = b.try_acquire(c.now()).expect("scout 1");
    assert_eq!(b.scouts_in_flight(), 1);
    c.advance(ms(20));
    // Scout 1 is still out: scout 2 goes, and the next waits two intervals.
    let stalled_too = b.try_acquire(c.now()).expect("scout 2, scout 1 still out");
    assert_eq!(
        b.try_acquire(c.now()).unwrap_err().retry_after(),
        Some(ms(40))
    );
    c.advance(ms(20));
    assert_eq!(
        b.would_admit(c.now()).unwrap_err().retry_after(),
        Some(ms(20))
    );
    c.advance(ms(20));
    // Two still out: scout 3 goes, the next waits four intervals.
    let answered = b.try_acquire(c.now()).expect("scout 3");
    assert_eq!(b.scouts_in_flight(), 3);
    assert_eq!(
        b.try_acquire(c.now()).unwrap_err().retry_after(),
        Some(ms(80))
    );
    c.advance(ms(10));
    answered.success(c.now());
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.scouts_in_flight(), 2);
    // The stalled scouts fail after the close: stale, they change nothing
    // but the count of scouts out.
    let generation = b.generation();
    c.advance(ms(200));
    stalled.failure(c.now());
    drop(stalled_too);
    assert_eq!(
        (b.state(), b.generation()),
        (BreakerState::Closed, generation)
    );
    assert_eq!(b.scouts_in_flight(), 0);
}

#[test]
fn scouts_that_answer_before_the_next_keep_the_interval_and_the_wait_grows_at_most_fourfold() {
    let b = scouting(1);
    let c = ManualClock::new();
    call(&b, &c, Outcome::Failure).unwrap();
    c.advance(ms(100));
    // A dependency that refuses at once: every scout answers before the
    // next is due, and they go one per interval.
    for _ in 0..5 {
        let scout = b.try_acquire(c.now()).expect("a scout");
        scout.failure(c.now());
        assert_eq!(b.scouts_in_flight(), 0);
        assert_eq!(
            b.try_acquire(c.now()).unwrap_err().retry_after(),
            Some(ms(20))
        );
        c.advance(ms(20));
    }
    // Scouts that hang: 20, 40, then 80 ms between them, no longer.
    let mut out = alloc::vec::Vec::new();
    for wait in [20, 40, 80, 80, 80] {
        out.push(b.try_acquire(c.now()).expect("a scout"));
        assert_eq!(
            b.try_acquire(c.now()).unwrap_err().retry_after(),
            Some(ms(wait))
        );
        c.advance(ms(wait));
    }
    assert_eq!(b.scouts_in_flight(), 5);
    // Released unreported (cancelled), they are no longer out.
    out.clear();
    assert_eq!(b.scouts_in_flight(), 0);
    let scout = b.try_acquire(c.now()).expect("a scout");
    assert_eq!(
        b.try_acquire(c.now()).unwrap_err().retry_after(),
        Some(ms(20))
    );
    scout.success(c.now());
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn a_scouts_success_starts_a_test_of_more_probes() {
    let b = scouting(2);
    let c = ManualClock::new();
    call(&b, &c, Outcome::Failure).unwrap();
    c.advance(ms(100));
    let scout = b.try_acquire(c.now()).expect("scout");
    // Dropped unreported: nothing changes, no slot to free.
    drop(scout);
    assert_eq!(b.state(), BreakerState::Open);
    c.advance(ms(20));
    b.try_acquire(c.now()).expect("scout").success(c.now());
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert_eq!(b.snapshot(c.now()).probes_admitted, 0);
    let p1 = b.try_acquire(c.now()).expect("probe 1");
    let p2 = b.try_acquire(c.now()).expect("probe 2");
    assert_eq!(
        b.try_acquire(c.now()).unwrap_err().reason(),
        RejectReason::HalfOpenFull
    );
    // A failed test opens the breaker again, then scouts again.
    p1.failure(c.now());
    p2.success(c.now());
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(b.snapshot(c.now()).trips, 2);
    c.advance(ms(100));
    assert!(b.try_acquire(c.now()).expect("scout").is_probe());
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn a_slow_scout_that_would_fail_the_test_counts_as_failed() {
    let b = breaker(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .slow_calls(50.0, ms(50))
            .open_duration(ms(100))
            .half_open_probes(1)
            .probe_every(ms(20)),
    );
    let c = ManualClock::new();
    call(&b, &c, Outcome::Failure).unwrap();
    c.advance(ms(100));
    let slow = b.try_acquire(c.now()).expect("scout");
    c.advance(ms(60));
    slow.success(c.now());
    assert_eq!(b.state(), BreakerState::Open);
    let fast = b.try_acquire(c.now()).expect("the next scout");
    c.advance(ms(5));
    fast.success(c.now());
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn a_scout_at_the_end_of_time_saturates() {
    let b = scouting(1);
    let end = Timestamp::MAX;
    b.try_acquire(end).unwrap().failure(end);
    // Opened at the end of time: its deadline is the end of time, and no
    // interval is left after it for a scout.
    let r = b.try_acquire(end).unwrap_err();
    assert_eq!(
        (r.reason(), r.retry_after()),
        (RejectReason::Open, Some(Duration::ZERO))
    );
    assert_eq!(b.would_admit(end), Err(r));
    let almost = Timestamp::from_nanos(u64::MAX - 150_000_000);
    let b = scouting(1);
    b.try_acquire(almost).unwrap().failure(almost);
    let late = Timestamp::from_nanos(u64::MAX - 10);
    let scout = b.try_acquire(late).expect("a scout");
    // It took the last deadline: none is left, even at the end of time.
    assert_eq!(
        b.try_acquire(late).unwrap_err().reason(),
        RejectReason::Open
    );
    let r = b.try_acquire(end).unwrap_err();
    assert_eq!(r.retry_after(), Some(Duration::ZERO));
    scout.success(late);
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn probe_every_must_be_longer_than_zero() {
    let err = BreakerConfig::builder()
        .probe_every(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.to_string(), "`probe_every` must be longer than zero");
    let err = BreakerConfig::builder()
        .probe_every(Duration::MAX)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("probe_every"), "{err}");
    // The longest interval that fits in nanoseconds is accepted, and a scout
    // then waits until the end of time.
    let longest = Duration::from_nanos(u64::MAX);
    let b = breaker(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .open_duration(ms(1))
            .probe_every(longest),
    );
    let t = Timestamp::from_nanos(1_000_000);
    b.try_acquire(Timestamp::ZERO)
        .unwrap()
        .failure(Timestamp::ZERO);
    assert!(b.try_acquire(t).expect("the first scout").is_probe());
    let r = b.try_acquire(t).unwrap_err();
    assert_eq!(
        r.retry_after(),
        Some(Duration::from_nanos(u64::MAX - 1_000_000))
    );
    let c = BreakerConfig::builder().probe_every(ms(7)).build().unwrap();
    assert_eq!(c.probe_every(), Some(ms(7)));
    assert_eq!(BreakerConfig::default().probe_every(), None);
}

#[test]
fn a_restored_open_breaker_scouts_as_the_restoring_configuration_says() {
    use crate::snapshot::WallTime;
    let c = ManualClock::new();
    let b = scouting(1);
    call(&b, &c, Outcome::Failure).unwrap();
    let mut buf = [0u8; BREAKER_SNAPSHOT_MAX];
    let wall = WallTime::from_unix_nanos(1_000_000_000);
    let n = b.save_state(&mut buf, c.now(), wall).unwrap();
    // Restored with scouts: after the deadline it scouts and stays open.
    let again = scouting(1);
    again.restore_state(&buf[..n], c.now(), wall).unwrap();
    let later = c.now().saturating_add(ms(100));
    assert!(again.try_acquire(later).expect("a scout").is_probe());
    assert_eq!(again.state(), BreakerState::Open);
    // Restored without: the classic half-open test.
    let classic = breaker(
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .open_duration(ms(100))
            .half_open_probes(1),
    );
    classic.restore_state(&buf[..n], c.now(), wall).unwrap();
    assert!(classic.try_acquire(later).expect("a probe").is_probe());
    assert_eq!(classic.state(), BreakerState::HalfOpen);
}
