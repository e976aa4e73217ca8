//! [`TokioClock`]: the engine's [`Clock`] on tokio's timer.

use tenlives_engine::time::{Clock, Timestamp};
use tokio::time::Instant;

/// A [`Clock`] on tokio's timer: timestamps count from the moment it was made.
///
/// Copy it freely; every copy shares the origin.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    origin: Instant,
}

impl TokioClock {
    /// A clock whose origin is tokio's now.
    pub fn new() -> Self {
        TokioClock {
            origin: Instant::now(),
        }
    }

    /// The tokio instant that [`Timestamp::ZERO`] stands for.
    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// The tokio instant a timestamp of this clock stands for (saturating at
    /// the latest instant tokio can represent), e.g. to sleep until a
    /// breaker's retry time.
    pub fn instant_at(&self, t: Timestamp) -> Instant {
        let d = std::time::Duration::from_nanos(t.as_nanos());
        self.origin
            .checked_add(d)
            .unwrap_or_else(|| self.origin + std::time::Duration::from_secs(86_400 * 365 * 30))
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
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Timestamp::from_nanos(nanos)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_the_paused_clock_exactly() {
        let clock = TokioClock::new();
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
}
