//! [`AsyncIoTimer`]: the [`Timer`] trait on async-io's timer.

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};
use core::time::Duration;

use tenlives_engine::time::{MonotonicClock, Timestamp};

use super::Timer;

/// A [`Timer`] on async-io's reactor (smol, `async_io::block_on`, and the
/// executors built on them): its clock is a [`MonotonicClock`] and a sleep
/// until `t` is an `async_io::Timer` at the `std` instant `t` stands for.
///
/// ```
/// use core::time::Duration;
/// use tenlives_engine::time::Clock;
/// use tenlives_futures::{AsyncIoTimer, Timer};
///
/// let timer = AsyncIoTimer::new();
/// let t = timer.clock().now().saturating_add(Duration::from_millis(2));
/// async_io::block_on(timer.sleep_until(t));
/// assert!(timer.clock().now() >= t);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct AsyncIoTimer {
    clock: MonotonicClock,
}

impl AsyncIoTimer {
    /// A timer whose origin ([`Timestamp::ZERO`]) is now.
    pub fn new() -> Self {
        AsyncIoTimer {
            clock: MonotonicClock::new(),
        }
    }

    /// A timer on `clock`'s time scale.
    pub fn with_clock(clock: MonotonicClock) -> Self {
        AsyncIoTimer { clock }
    }
}

impl Timer for AsyncIoTimer {
    type Clock = MonotonicClock;
    type Sleep<'a> = AsyncIoSleep;

    #[inline]
    fn clock(&self) -> &MonotonicClock {
        &self.clock
    }

    fn sleep_until(&self, deadline: Timestamp) -> AsyncIoSleep {
        let at = self
            .clock
            .origin()
            .checked_add(Duration::from_nanos(deadline.as_nanos()));
        AsyncIoSleep {
            // An instant `std` cannot represent is never reached.
            timer: at.map_or_else(async_io::Timer::never, async_io::Timer::at),
        }
    }
}

/// A sleep on an [`AsyncIoTimer`]. Made by [`Timer::sleep_until`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct AsyncIoSleep {
    timer: async_io::Timer,
}

impl Future for AsyncIoSleep {
    type Output = ();

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.timer).poll(cx).map(drop)
    }
}
