//! loom model of the adaptive limiter's window protocol
//! (engine/src/adaptive/sampler.rs and `AdaptiveLimiter::close_window`).
//!
//! A1 (docs/guarantees.md): the algorithm is only ever run by one thread at a
//! time (loom checks every access to its cell), and never more calls are in
//! flight than the limit in force when they were admitted.
//! A2: every sample recorded is handed to the algorithm exactly once, or is
//! still waiting in the sampler: none is lost or counted twice, even when a
//! report races the window's close.
#![cfg(tenlives_loom)]

use std::sync::Arc as StdArc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use loom::sync::Arc;
use loom::thread;
use tenlives_engine::adaptive::{AdaptiveLimiter, LimitAlgorithm, WindowConfig, WindowSample};
use tenlives_engine::time::Timestamp;
use tenlives_loom_tests::model;

/// Counts the samples it is shown; grows the limit by one per window.
struct Counting {
    seen: StdArc<AtomicU64>,
}

impl LimitAlgorithm for Counting {
    fn initial_limit(&self) -> u32 {
        2
    }
    fn update(&mut self, limit: u32, sample: &WindowSample) -> u32 {
        self.seen
            .fetch_add(sample.completed + sample.dropped, Ordering::Relaxed);
        limit + 1
    }
}

const LATER: Timestamp = Timestamp::from_nanos(2_000);

#[test]
fn reports_racing_a_window_close_are_counted_once() {
    model(2, || {
        let seen = StdArc::new(AtomicU64::new(0));
        let window = WindowConfig::new(Duration::from_nanos(1_000), 1).unwrap();
        let limiter = Arc::new(AdaptiveLimiter::new(
            Counting { seen: seen.clone() },
            window,
            Timestamp::ZERO,
        ));
        let p1 = limiter.try_acquire(Timestamp::ZERO).unwrap().into_raw();
        let p2 = limiter.try_acquire(Timestamp::ZERO).unwrap().into_raw();
        assert!(limiter.try_acquire(Timestamp::ZERO).is_err(), "limit 2");
        let other = {
            let limiter = limiter.clone();
            thread::spawn(move || limiter.complete_raw(p1, Some(100), LATER))
        };
        limiter.complete_raw(p2, None, LATER);
        other.join().unwrap();
        assert_eq!(limiter.in_flight(), 0);
        // Close one more window from here: whatever was not harvested yet is.
        let later = Timestamp::from_nanos(10_000);
        let p = limiter.try_acquire(later).unwrap().into_raw();
        limiter.complete_raw(p, Some(1), Timestamp::from_nanos(20_000));
        let p = limiter.try_acquire(later).unwrap().into_raw();
        limiter.complete_raw(p, Some(1), Timestamp::from_nanos(40_000));
        let pending = limiter.pending_samples();
        assert_eq!(
            seen.load(Ordering::Relaxed) + pending,
            4,
            "every sample once"
        );
    });
}

/// An algorithm that keeps its limit within `max` and counts how often it
/// was given new settings.
struct Bounded {
    max: u32,
    reconfigured: StdArc<AtomicU64>,
}

impl LimitAlgorithm for Bounded {
    fn initial_limit(&self) -> u32 {
        self.max
    }
    fn update(&mut self, limit: u32, _sample: &WindowSample) -> u32 {
        limit.min(self.max)
    }
    fn reconfigure(&mut self, new: Self, limit: u32) -> u32 {
        self.reconfigured.fetch_add(1, Ordering::Relaxed);
        self.max = new.max;
        limit.min(self.max)
    }
}

/// A4 (docs/guarantees.md): new settings given while another thread closes
/// a window are applied exactly once — at once, or by the next window's
/// close — and the algorithm is still only run by one thread at a time.
#[test]
fn new_settings_racing_a_window_close_are_applied_once() {
    model(2, || {
        let reconfigured = StdArc::new(AtomicU64::new(0));
        let make = |max| Bounded {
            max,
            reconfigured: reconfigured.clone(),
        };
        let window = WindowConfig::new(Duration::from_nanos(1_000), 1).unwrap();
        let limiter = Arc::new(AdaptiveLimiter::new(make(4), window, Timestamp::ZERO));
        let p = limiter.try_acquire(Timestamp::ZERO).unwrap().into_raw();
        let other = {
            let limiter = limiter.clone();
            thread::spawn(move || limiter.complete_raw(p, Some(100), LATER))
        };
        limiter.set_algorithm(make(2), Timestamp::from_nanos(1_500));
        other.join().unwrap();
        // The next window's close applies what is still waiting.
        let later = Timestamp::from_nanos(10_000);
        let p = limiter.try_acquire(later).unwrap().into_raw();
        limiter.complete_raw(p, Some(1), later);
        assert_eq!(reconfigured.load(Ordering::Relaxed), 1, "applied once");
        assert_eq!(limiter.limit(), 2, "within the new bound");
    });
}
