//! The futures adapter's [`Timer`] over embassy-time, for the embassy example
//! (`src/main.rs`, `docs/embedded.md`).
//!
//! [`EmbassyTimer`] reads embassy's `Instant` (ticks since the time driver
//! started) as the engine's [`Timestamp`] (nanoseconds), and sleeps with
//! `embassy_time::Timer::at`. It is `no_std` code: on a microcontroller it is
//! the same, over the chip's time driver instead of the host's.
#![no_std]

use embassy_time::{Instant, TICK_HZ};
use tenlives_engine::time::{Clock, Timestamp};
use tenlives_futures::Timer;

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// The [`Timer`] (and [`Clock`]) of embassy-time: timestamps are embassy's
/// instants in nanoseconds, from the time driver's start.
#[derive(Clone, Copy, Debug, Default)]
pub struct EmbassyTimer;

impl EmbassyTimer {
    /// The engine's timestamp for an embassy instant: its ticks in
    /// nanoseconds, rounded down, saturating at [`Timestamp::MAX`].
    pub fn timestamp(instant: Instant) -> Timestamp {
        let nanos = u128::from(instant.as_ticks()) * NANOS_PER_SECOND / u128::from(TICK_HZ);
        Timestamp::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The first embassy instant whose timestamp is `t` or later: `t` in
    /// ticks, rounded up, so that a sleep until it never ends before `t`.
    /// Saturates at `Instant::MAX`, a sleep that never ends.
    pub fn instant_at(t: Timestamp) -> Instant {
        let ticks = (u128::from(t.as_nanos()) * u128::from(TICK_HZ)).div_ceil(NANOS_PER_SECOND);
        u64::try_from(ticks).map_or(Instant::MAX, Instant::from_ticks)
    }
}

impl Clock for EmbassyTimer {
    #[inline]
    fn now(&self) -> Timestamp {
        Self::timestamp(Instant::now())
    }
}

impl Timer for EmbassyTimer {
    type Clock = EmbassyTimer;
    type Sleep<'a> = embassy_time::Timer;

    #[inline]
    fn clock(&self) -> &EmbassyTimer {
        self
    }

    #[inline]
    fn sleep_until(&self, deadline: Timestamp) -> embassy_time::Timer {
        embassy_time::Timer::at(Self::instant_at(deadline))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use core::sync::atomic::{AtomicBool, Ordering};
    use core::time::Duration;
    use embassy_executor::Executor;
    use std::boxed::Box;

    /// Runs `task` on an embassy executor (embassy's integrated timer queue
    /// wakes only its own tasks) until it sets `DONE`; a failed assertion in
    /// the task panics out of `run_until`, failing the test.
    fn run_on_embassy(spawn: impl FnOnce(embassy_executor::Spawner)) {
        let executor: &'static mut Executor = Box::leak(Box::new(Executor::new()));
        // ordering: the flag only ends the loop; it publishes no data.
        executor.run_until(spawn, || DONE.load(Ordering::Relaxed));
    }

    static DONE: AtomicBool = AtomicBool::new(false);

    #[embassy_executor::task]
    async fn sleeps() {
        let timer = EmbassyTimer;
        // Deadlines between ticks, on a tick, and already past.
        for offset_ns in [1, 999, 1_000, 1_001, 250_500, 2_000_000] {
            let deadline = timer.now().saturating_add(Duration::from_nanos(offset_ns));
            timer.sleep_until(deadline).await;
            assert!(
                timer.now() >= deadline,
                "woke before {deadline:?} (+{offset_ns} ns)"
            );
        }
        timer.sleep_until(Timestamp::from_nanos(0)).await;
        // ordering: see `run_on_embassy`.
        DONE.store(true, Ordering::Relaxed);
    }

    #[test]
    fn a_sleep_never_ends_before_its_deadline() {
        run_on_embassy(|spawner| spawner.spawn(sleeps().expect("one task")));
    }

    #[test]
    fn conversions_round_toward_the_deadline_and_saturate() {
        for nanos in [0, 1, 999, 1_000, 1_001, 123_456_789, u64::MAX / 2] {
            let t = Timestamp::from_nanos(nanos);
            let at = EmbassyTimer::instant_at(t);
            assert!(EmbassyTimer::timestamp(at) >= t, "{nanos} ns");
            // The instant one tick earlier reads before the deadline.
            if at.as_ticks() > 0 {
                let before = Instant::from_ticks(at.as_ticks() - 1);
                assert!(EmbassyTimer::timestamp(before) < t, "{nanos} ns");
            }
        }
        // The far end: a deadline at `Timestamp::MAX` maps to an instant that
        // reads back as `Timestamp::MAX`, and embassy's last instant too.
        let last = EmbassyTimer::instant_at(Timestamp::MAX);
        assert_eq!(EmbassyTimer::timestamp(last), Timestamp::MAX);
        assert_eq!(EmbassyTimer::timestamp(Instant::MAX), Timestamp::MAX);
    }
}
