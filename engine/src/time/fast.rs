//! Fast clocks over [`quanta`]: [`TscClock`] reads the CPU's time-stamp
//! counter, [`RecentClock`] reads a time an upkeep thread refreshes.
//!
//! What a reading costs on the machine the project is measured on (2 cores,
//! x86-64, invariant TSC; `docs/clocks-and-timers.md` has the command):
//!
//! | clock              | one reading | resolution                          |
//! |--------------------|-------------|-------------------------------------|
//! | [`MonotonicClock`](super::MonotonicClock) (`Instant`) | 32-40 ns | nanoseconds (the OS clock) |
//! | [`TscClock`]       | about 15 ns, plus the clamp (below) | nanoseconds (scaled TSC) |
//! | [`RecentClock`]    | about 1 ns  | the upkeep interval you choose (default 1 ms) |
//!
//! # Monotonicity
//!
//! quanta promises a monotonic `Clock::now` only as far as the source is:
//! its `Instant` documentation says the guarantee is "under rare
//! circumstances broken by hardware, virtualization or operating system
//! bugs", and its subtractions saturate to zero for that reason. A TSC read
//! on one core may be behind one read a moment earlier on another core
//! (unsynchronised sockets, some hypervisors), so a thread that moves
//! between cores could see time go back. Both clocks here therefore clamp:
//!
//! - [`TscClock::new`] clamps **per thread**: each reading is raised to the
//!   largest counter value any `TscClock` returned on the calling thread (a
//!   thread-local word, written by that thread only). A thread never sees
//!   its clock go back, and no reading writes memory another thread reads,
//!   so readings on many cores do not contend. Across threads, readings are
//!   ordered as far as the counter is: quanta uses the TSC only where the
//!   CPU reports it invariant, and then it is the same on every core of a
//!   socket; the engine's primitives accept a `now` earlier than one they
//!   have seen (guarantee R4 and the breaker's, in `docs/guarantees.md`), so
//!   a skew between cores delays a decision by the skew, never breaks one.
//! - [`TscClock::shared_clamp`] clamps **across threads**: every value it
//!   returns was, at that moment, the largest the clock had returned on any
//!   thread, kept in one atomic (a `fetch_max`). A reading that happens
//!   after another (in the happens-before sense, on any thread) is never
//!   earlier, at the price of one write to a shared cache line per reading:
//!   on two threads a breaker's rejection took 22 ns with it against 4.9 ns
//!   without (`docs/clocks-and-timers.md`).
//! - [`RecentClock`]: its one writer, the upkeep thread, only ever stores a
//!   larger value; a reading that happens after another is never earlier.

use core::time::Duration;
use std::sync::{Arc, Weak};
use std::thread;

use super::{Clock, Timestamp};
use crate::sync::{AtomicU64, Ordering};

/// A [`Clock`] on the CPU's time-stamp counter through [`quanta`] (the
/// counter where quanta finds it invariant, the OS monotonic clock
/// otherwise), measured from the moment the clock was made: about 10-15 ns
/// a reading, against 32-40 ns for `MonotonicClock`.
///
/// It never goes back on a thread: quanta promises that only as far as the
/// counter does, and a counter read on one core may be behind one read a
/// moment earlier on another (unsynchronised sockets, some hypervisors), so
/// each reading is clamped to the largest counter value returned on the
/// calling thread (a thread-local word: nothing shared is written, so
/// readings on many cores do not contend). Across threads, readings are as
/// ordered as the counter; [`TscClock::shared_clamp`] orders them too, at
/// the price of a shared write per reading (`docs/clocks-and-timers.md`,
/// "Monotonicity").
///
/// The first clock made in a process calibrates the counter against the OS
/// clock, which can take up to about 200 ms (quanta's figure); later ones
/// reuse the calibration.
///
/// Share one clock (by reference or in an `Arc`): its clamp is per value.
///
/// ```
/// use tenlives_engine::time::{Clock, TscClock};
///
/// let clock = TscClock::new();
/// let a = clock.now();
/// let b = clock.now();
/// assert!(b >= a);
/// ```
#[derive(Debug)]
pub struct TscClock {
    clock: quanta::Clock,
    /// The raw counter value [`Timestamp::ZERO`] stands for.
    origin: u64,
    /// With [`shared_clamp`](Self::shared_clamp): the largest raw counter
    /// value returned so far on any thread; readings never go below it.
    last: AtomicU64,
    /// Whether readings are clamped by `last` (across threads) instead of by
    /// the thread's own floor.
    shared: bool,
}

std::thread_local! {
    /// The largest raw counter value a [`TscClock`] returned on this thread.
    /// One word for every clock: they read the same counter, so a value one
    /// returned is a reading the others may not go below either.
    static FLOOR: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}

impl TscClock {
    /// A clock whose origin is now, clamped per thread: a thread's readings
    /// never go back, and no reading writes shared memory.
    pub fn new() -> Self {
        Self::make(false)
    }

    /// A clock whose origin is now, clamped across threads: a reading that
    /// happens after another, on any thread, is never earlier. Each reading
    /// then writes one shared word (a `fetch_max`), which threads reading
    /// the clock at once contend on; prefer [`new`](Self::new) unless
    /// something of yours compares readings taken on different threads and
    /// cannot accept a skew between cores.
    pub fn shared_clamp() -> Self {
        Self::make(true)
    }

    fn make(shared: bool) -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        TscClock {
            clock,
            origin,
            last: AtomicU64::new(origin),
            shared,
        }
    }

    /// Whether readings are clamped across threads
    /// ([`shared_clamp`](Self::shared_clamp)).
    pub fn is_shared_clamp(&self) -> bool {
        self.shared
    }

    /// The current instant without the clamp: the scaled counter as it
    /// reads on this core, which may be earlier than a reading made a moment
    /// before on another core. For measuring what the clamp costs.
    #[inline]
    pub fn now_unclamped(&self) -> Timestamp {
        let raw = self.clock.raw();
        Timestamp(self.clock.delta_as_nanos(self.origin, raw))
    }
}

impl Default for TscClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TscClock {
    #[inline]
    fn now(&self) -> Timestamp {
        let raw = self.clock.raw();
        let raw = if self.shared {
            // ordering: Relaxed on both; the value is the only data the
            // clock carries, and the modification order of `last` alone
            // makes the readings monotonic (a reading that happens after
            // another sees a `last` at least as late, by coherence).
            let last = self.last.load(Ordering::Relaxed);
            if raw > last {
                raw.max(self.last.fetch_max(raw, Ordering::Relaxed))
            } else {
                last
            }
        } else {
            // A `const`-initialised `Cell` of a `Copy` type has no
            // destructor, so the thread-local is never torn down: `with`
            // cannot fail, even from another thread-local's destructor.
            FLOOR.with(|floor| {
                let raw = raw.max(floor.get());
                floor.set(raw);
                raw
            })
        };
        // A value below this clock's origin (a lagging core just after the
        // clock was made) reads as zero: quanta's difference saturates.
        Timestamp(self.clock.delta_as_nanos(self.origin, raw))
    }
}

/// A coarse [`Clock`]: one relaxed load of a time that an upkeep thread
/// refreshes every `resolution` from a [`TscClock`].
///
/// A reading is at most `resolution` behind the true time, plus however
/// long the upkeep thread waits to be scheduled; it is never ahead. It never
/// goes back: the upkeep thread is the only writer and stores only larger
/// values.
///
/// Each clock made by [`RecentClock::new`] has its own upkeep thread; clones
/// share it. The thread ends within one `resolution` after the last clone
/// is dropped.
///
/// ```
/// use core::time::Duration;
/// use tenlives_engine::time::{Clock, RecentClock};
///
/// let clock = RecentClock::new(Duration::from_millis(1)).expect("upkeep thread");
/// let a = clock.now();
/// std::thread::sleep(Duration::from_millis(5));
/// assert!(clock.now() > a);
/// ```
#[derive(Clone, Debug)]
pub struct RecentClock {
    shared: Arc<Recent>,
}

#[derive(Debug)]
struct Recent {
    /// Nanoseconds since the clock's origin, as of the last refresh.
    nanos: AtomicU64,
    resolution: Duration,
}

/// The resolution [`RecentClock::default`] uses: 1 ms.
pub const DEFAULT_RECENT_RESOLUTION: Duration = Duration::from_millis(1);

impl RecentClock {
    /// A clock refreshed every `resolution` (at least 1 µs: a shorter one is
    /// raised to it) by a new upkeep thread, or the error from spawning it.
    pub fn new(resolution: Duration) -> std::io::Result<Self> {
        let resolution = resolution.max(Duration::from_micros(1));
        let source = TscClock::new();
        let shared = Arc::new(Recent {
            nanos: AtomicU64::new(0),
            resolution,
        });
        let weak: Weak<Recent> = Arc::downgrade(&shared);
        thread::Builder::new()
            .name("tenlives-recent-clock".into())
            .spawn(move || upkeep(&source, &weak, resolution))?;
        Ok(RecentClock { shared })
    }

    /// How often the time is refreshed: a reading lags the true time by up
    /// to this much (plus the upkeep thread's scheduling delay).
    pub fn resolution(&self) -> Duration {
        self.shared.resolution
    }
}

impl Default for RecentClock {
    /// A clock refreshed every millisecond.
    ///
    /// # Panics
    ///
    /// If the upkeep thread cannot be spawned.
    fn default() -> Self {
        Self::new(DEFAULT_RECENT_RESOLUTION).expect("spawning the recent clock's upkeep thread")
    }
}

/// The upkeep thread: refreshes the time until the last clock is dropped.
fn upkeep(source: &TscClock, weak: &Weak<Recent>, resolution: Duration) {
    loop {
        thread::sleep(resolution);
        let Some(shared) = weak.upgrade() else {
            return;
        };
        // `source` is clamped, and this thread is the only writer: the
        // stored value only grows.
        // ordering: Relaxed; readers take the value alone.
        shared
            .nanos
            .store(source.now().as_nanos(), Ordering::Relaxed);
    }
}

impl Clock for RecentClock {
    #[inline]
    fn now(&self) -> Timestamp {
        // ordering: Relaxed; the value is the only data, and one writer
        // storing larger and larger values makes the loads monotonic.
        Timestamp(self.shared.nanos.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_clock_never_goes_back_on_a_thread() {
        let clock = TscClock::new();
        assert!(!clock.is_shared_clamp());
        let mut prev = clock.now();
        for _ in 0..100_000 {
            let t = clock.now();
            assert!(t >= prev, "{t:?} < {prev:?}");
            prev = t;
        }
    }

    #[test]
    fn the_thread_floor_holds_against_an_earlier_raw_value() {
        // A reading below one this thread was given (as a lagging core
        // would give after the thread moved) is raised to it, whichever
        // clock gave it; another thread is not held back by it.
        let clock = TscClock::new();
        let other = TscClock::new();
        let ahead = clock.clock.raw() + 1_000_000_000;
        FLOOR.with(|f| f.set(ahead));
        let t = clock.now();
        assert_eq!(
            t.as_nanos(),
            clock.clock.delta_as_nanos(clock.origin, ahead)
        );
        assert!(clock.now_unclamped() < t);
        assert_eq!(
            other.now().as_nanos(),
            other.clock.delta_as_nanos(other.origin, ahead)
        );
        let elsewhere = Arc::new(TscClock::new());
        let on_thread = {
            let c = Arc::clone(&elsewhere);
            thread::spawn(move || c.now()).join().unwrap()
        };
        assert!(
            on_thread.as_nanos() < elsewhere.clock.delta_as_nanos(elsewhere.origin, ahead),
            "another thread was held back by this thread's floor"
        );
        // Leave the thread's floor where the counter is, for other tests
        // on this test thread.
        FLOOR.with(|f| f.set(0));
    }

    #[test]
    fn a_shared_clamp_tsc_clock_is_monotonic_across_threads() {
        let clock = Arc::new(TscClock::shared_clamp());
        assert!(clock.is_shared_clamp());
        let handles: std::vec::Vec<_> = (0..4)
            .map(|_| {
                let clock = Arc::clone(&clock);
                thread::spawn(move || {
                    let mut prev = clock.now();
                    for _ in 0..100_000 {
                        let t = clock.now();
                        assert!(t >= prev, "{t:?} < {prev:?}");
                        prev = t;
                    }
                    prev
                })
            })
            .collect();
        let ends: std::vec::Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        // Every thread's last reading happened before this one.
        let after = clock.now();
        assert!(ends.iter().all(|&t| t <= after));
    }

    #[test]
    fn tsc_clock_follows_the_os_clock() {
        let clock = TscClock::new();
        let start = std::time::Instant::now();
        let a = clock.now();
        thread::sleep(Duration::from_millis(20));
        let b = clock.now();
        let os = start.elapsed();
        let tsc = b.saturating_duration_since(a);
        assert!(tsc >= Duration::from_millis(19), "{tsc:?}");
        assert!(tsc <= os + Duration::from_millis(2), "{tsc:?} vs {os:?}");
    }

    #[test]
    fn the_shared_clamp_holds_against_an_earlier_raw_value() {
        // A reading below the last one returned on any thread (as a lagging
        // core would give) is raised to it.
        let clock = TscClock::shared_clamp();
        let ahead = clock.clock.raw() + 1_000_000_000;
        clock.last.store(ahead, Ordering::Relaxed);
        let t = clock.now();
        assert_eq!(
            t.as_nanos(),
            clock.clock.delta_as_nanos(clock.origin, ahead)
        );
        assert!(clock.now_unclamped() < t);
    }

    #[test]
    fn recent_clock_moves_at_its_resolution_and_stops_its_thread() {
        let clock = RecentClock::new(Duration::from_millis(2)).unwrap();
        assert_eq!(clock.resolution(), Duration::from_millis(2));
        let a = clock.now();
        thread::sleep(Duration::from_millis(30));
        let b = clock.now();
        assert!(
            b.saturating_duration_since(a) >= Duration::from_millis(10),
            "{a:?} {b:?}"
        );
        let weak = Arc::downgrade(&clock.shared);
        drop(clock);
        // The upkeep thread holds the clock only while it stores a reading.
        let start = std::time::Instant::now();
        while weak.upgrade().is_some() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the upkeep thread kept the clock"
            );
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn recent_clock_raises_a_tiny_resolution() {
        let clock = RecentClock::new(Duration::ZERO).unwrap();
        assert_eq!(clock.resolution(), Duration::from_micros(1));
    }
}
