//! [`TokioTimer`]: the [`Timer`] trait on tokio's timer.

use core::time::Duration;

use tenlives_engine::time::{Clock, Timestamp};
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
#[derive(Clone, Copy, Debug)]
pub struct TokioTimer {
    origin: Instant,
}

impl TokioTimer {
    /// A timer whose origin ([`Timestamp::ZERO`]) is tokio's now.
    pub fn new() -> Self {
        TokioTimer {
            origin: Instant::now(),
        }
    }

    /// A timer whose origin is `origin`, e.g. to share one time scale with
    /// another tokio-based clock.
    pub fn with_origin(origin: Instant) -> Self {
        TokioTimer { origin }
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
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Timestamp::from_nanos(nanos)
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
