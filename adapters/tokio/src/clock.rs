//! [`TokioClock`]: the engine's [`Clock`] on tokio's time scale, read from
//! the CPU's time-stamp counter unless tokio's clock is paused.
//!
//! (See [`TokioClock`] for which source it reads, and why that is decided
//! when the clock is made.)

use std::sync::OnceLock;
use std::time::Duration;

use tenlives_engine::time::{Clock, RecentClock, Timestamp, TscClock};
use tokio::time::Instant;

/// About 30 years: where an instant past what `tokio::time::Instant` can
/// represent is put instead (tokio's own "far future").
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The engine's [`Clock`] on tokio's time scale: timestamps count from the
/// moment it was made, and [`instant_at`](Self::instant_at) turns one back
/// into a `tokio::time::Instant` to sleep until.
///
/// [`new`](Self::new) reads the CPU's time-stamp counter (a [`TscClock`],
/// shared by the whole process), or tokio's own clock when tokio's clock is
/// paused at that moment (see below). The other
/// constructors choose the source: [`runtime`](Self::runtime) (always
/// tokio's), [`tsc`](Self::tsc), [`recent`](Self::recent) (a coarse clock
/// at about 1 ns a reading) and [`from_source`](Self::from_source) (any
/// clock of yours).
///
/// Copy it freely; every copy shares the origin and the source.
///
/// # Which source, and why it is decided when the clock is made
///
/// Reading `std::time::Instant` (what `tokio::time::Instant::now` is on a
/// running clock) costs 32-40 ns here, more than any engine decision; the
/// time-stamp counter through [`TscClock`] about 10-15 ns. Tests, though,
/// run on tokio's paused clock (`#[tokio::test(start_paused = true)]`),
/// which only `tokio::time::Instant` follows: a timestamp from the TSC would
/// keep real time while the timers jump ahead.
///
/// tokio has no public "is the clock paused" call, so [`TokioClock::new`]
/// finds out once, when it is made: it reads `tokio::time::Instant::now()`,
/// waits (spinning) until the OS clock has moved by 1 µs, and reads it
/// again. A running clock *is* the OS clock there, so it moved; a paused
/// one moves only by `advance` or by auto-advance, neither of which can
/// happen while this thread spins (pausing needs a current-thread runtime,
/// and this thread is its only one). Unchanged: paused, read tokio's clock;
/// changed: running, read the TSC. The test costs about a microsecond per
/// clock, not per request.
///
/// The decision holds for the clock's life. A clock made outside any
/// runtime (or in a running one) and used later under a paused runtime
/// reads the TSC: make the clock (the layer) inside the paused runtime, or
/// say which source with [`TokioClock::runtime`].
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    /// The tokio instant [`Timestamp::ZERO`] stands for.
    origin: Instant,
    source: Source,
}

/// Where a [`TokioClock`] reads time.
#[derive(Clone, Copy)]
enum Source {
    /// `tokio::time::Instant::now()`.
    Runtime,
    /// The process's [`TscClock`], less its reading at our origin.
    Tsc { origin: Timestamp },
    /// The process's [`RecentClock`], less its reading at our origin.
    Recent {
        clock: &'static RecentClock,
        origin: Timestamp,
    },
    /// A clock of the caller's, less its reading at our origin.
    Custom {
        clock: &'static (dyn Clock + Send + Sync),
        origin: Timestamp,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Runtime => "Runtime",
            Source::Tsc { .. } => "Tsc",
            Source::Recent { .. } => "Recent",
            Source::Custom { .. } => "Custom",
        })
    }
}

/// The process's TSC clock: one calibration, one clamp.
fn tsc() -> &'static TscClock {
    static TSC: OnceLock<TscClock> = OnceLock::new();
    TSC.get_or_init(TscClock::new)
}

/// Whether tokio's clock is paused here (see the module documentation).
fn runtime_clock_is_paused() -> bool {
    let before = Instant::now();
    let os = std::time::Instant::now();
    while os.elapsed() < Duration::from_micros(1) {
        std::hint::spin_loop();
    }
    Instant::now() == before
}

impl TokioClock {
    /// A clock whose origin is now: on the TSC, or on tokio's clock if that
    /// is paused now (see [`TokioClock`]).
    pub fn new() -> Self {
        if runtime_clock_is_paused() {
            Self::runtime()
        } else {
            Self::tsc()
        }
    }

    /// A clock that reads `tokio::time::Instant::now()`, paused or not.
    pub fn runtime() -> Self {
        TokioClock {
            origin: Instant::now(),
            source: Source::Runtime,
        }
    }

    /// A clock on the process's [`TscClock`], whatever tokio's clock does.
    /// The first one made in a process calibrates the counter (up to about
    /// 200 ms, quanta's figure).
    pub fn tsc() -> Self {
        let clock = tsc();
        TokioClock {
            origin: Instant::now(),
            source: Source::Tsc {
                origin: clock.now(),
            },
        }
    }

    /// A coarse clock: the process's [`RecentClock`] (made by the first call,
    /// refreshed every millisecond by its own thread), about 1 ns a reading.
    /// A reading lags real time by up to a millisecond, so a deadline taken
    /// from it can end up to a millisecond early or late. For another
    /// resolution, make a [`RecentClock`] and pass it to
    /// [`from_source`](Self::from_source).
    ///
    /// # Errors
    ///
    /// If the upkeep thread cannot be spawned.
    pub fn recent() -> std::io::Result<Self> {
        static RECENT: OnceLock<RecentClock> = OnceLock::new();
        let clock = match RECENT.get() {
            Some(clock) => clock,
            None => {
                let made = RecentClock::new(tenlives_engine::time::DEFAULT_RECENT_RESOLUTION)?;
                RECENT.get_or_init(|| made)
            }
        };
        Ok(TokioClock {
            origin: Instant::now(),
            source: Source::Recent {
                clock,
                origin: clock.now(),
            },
        })
    }

    /// A clock reading `clock`, which must keep real time (its timestamps
    /// are mapped to tokio instants by [`instant_at`](Self::instant_at)):
    /// e.g. a wrapper that counts readings, or a clock shared with other
    /// code.
    pub fn from_source(clock: &'static (dyn Clock + Send + Sync)) -> Self {
        TokioClock {
            origin: Instant::now(),
            source: Source::Custom {
                clock,
                origin: clock.now(),
            },
        }
    }

    /// Whether this clock reads tokio's own clock (made by
    /// [`runtime`](Self::runtime), or by [`new`](Self::new) under a paused
    /// clock).
    pub fn reads_runtime_clock(&self) -> bool {
        matches!(self.source, Source::Runtime)
    }

    /// The tokio instant that [`Timestamp::ZERO`] stands for.
    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// The tokio instant a timestamp of this clock stands for (saturating at
    /// the latest instant tokio can represent), e.g. to sleep until a
    /// breaker's retry time. Reads no clock.
    pub fn instant_at(&self, t: Timestamp) -> Instant {
        let d = Duration::from_nanos(t.as_nanos());
        self.origin
            .checked_add(d)
            .unwrap_or_else(|| self.origin + FAR_FUTURE)
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    #[inline]
    fn now(&self) -> Timestamp {
        let (reading, origin) = match self.source {
            Source::Tsc { origin } => (tsc().now(), origin),
            Source::Runtime => {
                let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
                return Timestamp::from_nanos(nanos);
            }
            Source::Recent { clock, origin } => (clock.now(), origin),
            Source::Custom { clock, origin } => (clock.now(), origin),
        };
        Timestamp::from_nanos(reading.as_nanos().saturating_sub(origin.as_nanos()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_the_paused_clock_exactly() {
        let clock = TokioClock::new();
        assert!(clock.reads_runtime_clock());
        assert_eq!(clock.now(), Timestamp::ZERO);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.now(), Timestamp::from_nanos(1_500_000_000));
        assert_eq!(clock.instant_at(clock.now()), Instant::now());
    }

    #[tokio::test(start_paused = true)]
    async fn sleeping_until_a_retry_time_reaches_it() {
        let clock = TokioClock::new();
        let at = Timestamp::from_nanos(2_000_000_000);
        tokio::time::sleep_until(clock.instant_at(at)).await;
        assert_eq!(clock.now(), at);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_running_clock_reads_the_tsc_on_tokio_time() {
        let clock = TokioClock::new();
        assert!(!clock.reads_runtime_clock());
        let start = Instant::now();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let tokio_elapsed = start.elapsed();
        let elapsed = Duration::from_nanos(clock.now().as_nanos());
        assert!(elapsed >= Duration::from_millis(20), "{elapsed:?}");
        assert!(
            elapsed <= tokio_elapsed + Duration::from_millis(2),
            "{elapsed:?} vs {tokio_elapsed:?}"
        );
    }

    #[test]
    fn outside_a_runtime_the_clock_reads_the_tsc() {
        assert!(!TokioClock::new().reads_runtime_clock());
    }

    #[tokio::test(start_paused = true)]
    async fn chosen_sources_hold_under_a_paused_clock() {
        let tsc = TokioClock::tsc();
        assert!(!tsc.reads_runtime_clock());
        tokio::time::advance(Duration::from_secs(10)).await;
        // Real time, not the paused clock's ten seconds.
        assert!(tsc.now() < Timestamp::from_nanos(1_000_000_000));
        let recent = TokioClock::recent().unwrap();
        assert!(recent.now() < Timestamp::from_nanos(1_000_000_000));
    }

    #[test]
    fn a_custom_source_counts_from_its_origin() {
        let source: &'static tenlives_engine::time::ManualClock =
            Box::leak(Box::new(tenlives_engine::time::ManualClock::new()));
        source.advance(Duration::from_secs(5));
        let clock = TokioClock::from_source(source);
        assert_eq!(clock.now(), Timestamp::ZERO);
        source.advance(Duration::from_millis(3));
        assert_eq!(clock.now(), Timestamp::from_nanos(3_000_000));
    }
}
