//! [`TokioTimer`]: the [`Timer`] trait on tokio's timer.

use core::time::Duration;

use std::sync::OnceLock;

use tenlives_engine::time::{Clock, Timestamp, TscClock};
use tokio::time::{Instant, Sleep};

use super::Timer;

/// About 30 years: where a deadline past what `tokio::time::Instant` can
/// represent is put instead (tokio's own "far future").
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// A [`Timer`] (and its own [`Clock`]) on tokio's timer: timestamps count
/// from the moment it was made, read from `tokio::time::Instant`, and sleeps
/// are `tokio::time::sleep_until`. So it follows tokio's paused test clock
/// (`start_paused = true`, `tokio::time::advance`), under which waiting is
/// instant and deterministic.
///
/// Make it inside a tokio runtime with the time driver enabled; sleeping
/// outside one panics, as tokio's sleeps do. Copy it freely: every copy
/// shares the origin.
///
/// ```
/// use core::time::Duration;
/// use tenlives_engine::time::Clock;
/// use tenlives_futures::{Timer, TokioTimer};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let timer = TokioTimer::new();
/// let t = timer.now().saturating_add(Duration::from_secs(3));
/// timer.sleep_until(t).await; // instant: the paused clock jumps ahead
/// assert!(timer.now() >= t);
/// # }
/// ```
///
/// # Which clock it reads
///
/// On a running tokio clock, `tokio::time::Instant::now()` is
/// `std::time::Instant::now()` (32-40 ns a reading here); the timer then
/// reads the process's [`TscClock`] instead (10-15 ns), on the same time
/// scale. Under a paused clock it reads `tokio::time::Instant`, which alone
/// follows `advance` and auto-advance. It decides once, when it is made:
/// tokio has no "is the clock paused" call, so it reads tokio's now, spins
/// until the OS clock has moved 1 µs and reads it again (a paused clock
/// cannot move meanwhile: pausing needs a current-thread runtime, whose
/// only thread is this one). Make it inside the paused runtime, or say
/// [`TokioTimer::runtime`].
#[derive(Clone, Copy, Debug)]
pub struct TokioTimer {
    origin: Instant,
    /// When the timer reads the TSC: the TSC's reading when the timer was
    /// made, and the nanoseconds from `origin` to then.
    tsc_origin: Option<(Timestamp, u64)>,
}

/// The process's TSC clock: one calibration, one clamp.
fn tsc() -> &'static TscClock {
    static TSC: OnceLock<TscClock> = OnceLock::new();
    TSC.get_or_init(TscClock::new)
}

/// Whether tokio's clock is paused here (see [`TokioTimer`]).
fn runtime_clock_is_paused() -> bool {
    let before = Instant::now();
    let os = std::time::Instant::now();
    while os.elapsed() < Duration::from_micros(1) {
        core::hint::spin_loop();
    }
    Instant::now() == before
}

impl TokioTimer {
    /// A timer whose origin ([`Timestamp::ZERO`]) is tokio's now, reading
    /// the TSC unless tokio's clock is paused now.
    pub fn new() -> Self {
        Self::with_origin(Instant::now())
    }

    /// A timer whose origin is `origin`, e.g. to share one time scale with
    /// another tokio-based clock; it reads the TSC unless tokio's clock is
    /// paused now.
    pub fn with_origin(origin: Instant) -> Self {
        if runtime_clock_is_paused() {
            return TokioTimer {
                origin,
                tsc_origin: None,
            };
        }
        // Calibrated (the first time) before the two readings are paired.
        let clock = tsc();
        let at = clock.now();
        let since = u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        TokioTimer {
            origin,
            tsc_origin: Some((at, since)),
        }
    }

    /// A timer that reads `tokio::time::Instant`, paused or not.
    pub fn runtime() -> Self {
        TokioTimer {
            origin: Instant::now(),
            tsc_origin: None,
        }
    }

    /// Whether it reads tokio's clock (rather than the TSC).
    pub fn reads_runtime_clock(&self) -> bool {
        self.tsc_origin.is_none()
    }

    /// The tokio instant that [`Timestamp::ZERO`] stands for.
    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// The tokio instant `t` stands for, saturating about 30 years after the
    /// origin when `t` is beyond what tokio can represent.
    pub fn instant_at(&self, t: Timestamp) -> Instant {
        let d = Duration::from_nanos(t.as_nanos());
        self.origin
            .checked_add(d)
            .unwrap_or_else(|| self.origin + FAR_FUTURE)
    }
}

impl Default for TokioTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioTimer {
    #[inline]
    fn now(&self) -> Timestamp {
        match self.tsc_origin {
            Some((at, since)) => Timestamp::from_nanos(
                tsc()
                    .now()
                    .as_nanos()
                    .saturating_sub(at.as_nanos())
                    .saturating_add(since),
            ),
            None => {
                let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
                Timestamp::from_nanos(nanos)
            }
        }
    }
}

impl Timer for TokioTimer {
    type Clock = TokioTimer;
    type Sleep<'a> = Sleep;

    #[inline]
    fn clock(&self) -> &TokioTimer {
        self
    }

    #[inline]
    fn sleep_until(&self, deadline: Timestamp) -> Sleep {
        tokio::time::sleep_until(self.instant_at(deadline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn under_a_paused_clock_it_reads_tokio_time() {
        let timer = TokioTimer::new();
        assert!(timer.reads_runtime_clock());
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(timer.now(), Timestamp::from_nanos(3_000_000_000));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn on_a_running_clock_it_reads_the_tsc_on_tokio_time() {
        let origin = Instant::now();
        std::thread::sleep(Duration::from_millis(5));
        let timer = TokioTimer::with_origin(origin);
        assert!(!timer.reads_runtime_clock());
        // The origin is honoured: the 5 ms before the timer was made count.
        assert!(timer.now() >= Timestamp::from_nanos(5_000_000));
        let t = timer.now().saturating_add(Duration::from_millis(20));
        timer.sleep_until(t).await;
        let now = timer.now();
        assert!(now >= t, "{now:?} < {t:?}");
        assert!(now.saturating_duration_since(t) < Duration::from_millis(50));
        assert!(TokioTimer::runtime().reads_runtime_clock());
    }
}
