//! [`Timers`]: the engine's [`TimerWheel`] with one tokio task that drives
//! it, shared by a layer's requests instead of a `tokio::time::Sleep` each.
//!
//! A tokio `Sleep` takes the runtime's timer-driver lock when it is first
//! polled (to register) and when it is dropped early (to cancel): every
//! request whose call is still pending at its first poll pays both, and
//! requests on different threads contend for the one lock. Here a request
//! takes an entry of a fixed array with a few atomic operations and gives it
//! back with one or two more; one driver task sleeps on tokio's timer until
//! the earliest deadline, then fires what is due.
//!
//! - **Resolution**: deadlines are rounded up to the wheel's tick (1 ms by
//!   default, [`Timers::new`] takes another). A timer never fires early; it
//!   fires at most one tick late, plus tokio's own timer latency (tokio's
//!   timer also counts in milliseconds).
//! - **Capacity**: a fixed number of entries (1024 by default). When all are
//!   taken, a request falls back to a `tokio::time::Sleep` of its own, as
//!   before; [`Timers::fallbacks`] counts those.
//! - **The driver** is spawned on the runtime of the first request that
//!   arms a timer, sleeps with `tokio::time::sleep_until` (so it follows a
//!   paused test clock, and auto-advance still fires timeouts), parks when
//!   no timer is armed, and is woken through a `tokio::sync::Notify` when a
//!   registration is earlier than what it sleeps for. It never reads a
//!   clock: it expires at the instant it slept until. If its runtime shuts
//!   down, the next request to arm a timer spawns a new one on its own
//!   runtime. It ends when the last [`Timers`] handle (the layer, its
//!   services and the futures holding timers) is dropped.
//!
//! A request holds its entry in its response future; dropping the future,
//! or a panic unwinding through it, gives the entry back.

use std::fmt;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tenlives_engine::ConfigError;
use tenlives_engine::time::Timestamp;
use tenlives_engine::timer::{TimerEntry, TimerWheel};
use tokio::sync::Notify;
use tokio::time::Sleep;

use crate::clock::TokioClock;

/// Entries in a wheel made by [`Timers::with_defaults`].
pub const DEFAULT_CAPACITY: usize = 1024;
/// The tick of a wheel made by [`Timers::with_defaults`].
pub const DEFAULT_RESOLUTION: Duration = Duration::from_millis(1);

/// A shared timer wheel and its driver task. Clones share the wheel; the
/// driver ends when the last clone is dropped. See the
/// [module documentation](self).
#[derive(Clone)]
pub struct Timers {
    owner: Arc<Owner>,
}

/// Closes the wheel when the last handle goes.
struct Owner {
    shared: Arc<Shared>,
}

struct Shared {
    wheel: TimerWheel,
    clock: TokioClock,
    /// Wakes the driver: a registration earlier than its sleep, or closing.
    notify: Notify,
    /// A driver task is alive (spawned, and not yet dropped).
    driver: AtomicBool,
    /// No handle is left: the driver ends.
    closed: AtomicBool,
    /// Timers that found the wheel full and used a tokio `Sleep`.
    fallbacks: AtomicU64,
}

impl fmt::Debug for Timers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timers")
            .field("wheel", &self.owner.shared.wheel)
            .field("fallbacks", &self.fallbacks())
            .finish_non_exhaustive()
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        // ordering: Release, pairs with the driver's Acquire load.
        self.shared.closed.store(true, Ordering::Release);
        self.shared.notify.notify_one();
    }
}

impl Timers {
    /// A wheel of `capacity` entries on ticks of `resolution`, its deadlines
    /// on `clock`.
    ///
    /// # Errors
    ///
    /// As [`TimerWheel::new`]: a zero capacity or resolution, or one too
    /// large.
    pub fn new(
        capacity: usize,
        resolution: Duration,
        clock: TokioClock,
    ) -> Result<Self, ConfigError> {
        Ok(Timers {
            owner: Arc::new(Owner {
                shared: Arc::new(Shared {
                    wheel: TimerWheel::new(capacity, resolution)?,
                    clock,
                    notify: Notify::new(),
                    driver: AtomicBool::new(false),
                    closed: AtomicBool::new(false),
                    fallbacks: AtomicU64::new(0),
                }),
            }),
        })
    }

    /// [`DEFAULT_CAPACITY`] entries of [`DEFAULT_RESOLUTION`] on `clock`.
    pub fn with_defaults(clock: TokioClock) -> Self {
        match Self::new(DEFAULT_CAPACITY, DEFAULT_RESOLUTION, clock) {
            Ok(timers) => timers,
            Err(_) => unreachable!("the default wheel settings are valid"),
        }
    }

    fn shared(&self) -> &Shared {
        &self.owner.shared
    }

    /// How many timers the wheel holds at once.
    pub fn capacity(&self) -> usize {
        self.shared().wheel.capacity()
    }

    /// The clock the wheel's deadlines are on.
    pub fn clock(&self) -> TokioClock {
        self.shared().clock
    }

    /// The wheel's tick: deadlines are rounded up to it.
    pub fn resolution(&self) -> Duration {
        self.shared().wheel.resolution()
    }

    /// How many timers found every entry taken and slept on a tokio `Sleep`
    /// instead.
    pub fn fallbacks(&self) -> u64 {
        // ordering: Relaxed; a statistic.
        self.shared().fallbacks.load(Ordering::Relaxed)
    }

    /// Sets `alarm` (given back first if set) for `at`, to wake `cx`'s task.
    pub(crate) fn set(
        &self,
        alarm: &mut Option<TimerEntry>,
        mut fallback: Pin<&mut Option<Sleep>>,
        at: Timestamp,
        cx: &mut Context<'_>,
    ) {
        self.clear(alarm, fallback.as_mut());
        let shared = self.shared();
        match shared.wheel.register(at, cx.waker()) {
            Ok(registered) => {
                *alarm = Some(registered.entry);
                self.ensure_driver(registered.wake_driver);
            }
            Err(_) => {
                // ordering: Relaxed; a statistic.
                shared.fallbacks.fetch_add(1, Ordering::Relaxed);
                fallback.set(Some(tokio::time::sleep_until(shared.clock.instant_at(at))));
            }
        }
    }

    /// `Ready` once the alarm set by [`set`](Self::set) has gone off.
    pub(crate) fn poll(
        &self,
        alarm: &mut Option<TimerEntry>,
        fallback: Pin<&mut Option<Sleep>>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        match alarm {
            Some(entry) => self.shared().wheel.poll(entry, cx.waker()),
            None => match fallback.as_pin_mut() {
                Some(sleep) => sleep.poll(cx),
                // Only polled once set.
                None => Poll::Pending,
            },
        }
    }

    /// Gives the alarm back (fired or not).
    pub(crate) fn clear(
        &self,
        alarm: &mut Option<TimerEntry>,
        mut fallback: Pin<&mut Option<Sleep>>,
    ) {
        if let Some(entry) = alarm.take() {
            self.shared().wheel.cancel(entry);
        }
        if fallback.is_some() {
            fallback.set(None);
        }
    }

    /// Gives back an entry (on drop).
    pub(crate) fn cancel(&self, entry: TimerEntry) {
        self.shared().wheel.cancel(entry);
    }

    /// Makes sure a driver task is alive, and wakes it if `wake`.
    fn ensure_driver(&self, wake: bool) {
        let shared = &self.owner.shared;
        // ordering: Acquire, pairs with the Release of the driver's guard:
        // seeing `false`, the old driver is gone.
        if !shared.driver.load(Ordering::Acquire)
            && shared
                .driver
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    drop(handle.spawn(drive(Arc::clone(shared))));
                }
                Err(_) => {
                    // ordering: Release, as the guard's.
                    shared.driver.store(false, Ordering::Release);
                    panic!("a tenlives timer needs a tokio runtime, like tokio::time::sleep");
                }
            }
            // A new driver reads `next_due` itself.
            return;
        }
        if wake {
            shared.notify.notify_one();
        }
    }
}

/// Clears the driver flag when the driver task ends or is dropped (its
/// runtime shut down), so that the next registration spawns another.
struct Running<'a>(&'a Shared);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        // ordering: Release, pairs with `ensure_driver`'s Acquire.
        self.0.driver.store(false, Ordering::Release);
    }
}

/// The driver task: sleeps until the earliest deadline and fires what is
/// due, until the wheel is closed.
async fn drive(shared: Arc<Shared>) {
    let _running = Running(&shared);
    let mut sleep = pin!(tokio::time::sleep(Duration::ZERO));
    loop {
        // ordering: Acquire, pairs with the Release in `Owner::drop`.
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        let mut notified = pin!(shared.notify.notified());
        match shared.wheel.next_due() {
            None => notified.await,
            Some(due) => {
                sleep.as_mut().reset(shared.clock.instant_at(due));
                let timer_fired = std::future::poll_fn(|cx| {
                    if notified.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(false);
                    }
                    sleep.as_mut().poll(cx).map(|()| true)
                })
                .await;
                if timer_fired {
                    // We slept until `due`: it is at least that late.
                    shared.wheel.expire(due);
                }
            }
        }
    }
}

/// A timer of a request that does not hold its layer otherwise (the
/// admission-queue layer's bounded wait): the wheel's handle and the entry,
/// given back on drop.
pub(crate) struct OwnedAlarm {
    timers: Timers,
    entry: Option<TimerEntry>,
}

impl OwnedAlarm {
    pub(crate) fn new(timers: Timers) -> Self {
        OwnedAlarm {
            timers,
            entry: None,
        }
    }

    pub(crate) fn set(
        &mut self,
        fallback: Pin<&mut Option<Sleep>>,
        at: Timestamp,
        cx: &mut Context<'_>,
    ) {
        self.timers.set(&mut self.entry, fallback, at, cx);
    }

    pub(crate) fn is_set(&self, fallback: &Option<Sleep>) -> bool {
        self.entry.is_some() || fallback.is_some()
    }

    pub(crate) fn poll(
        &mut self,
        fallback: Pin<&mut Option<Sleep>>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        self.timers.poll(&mut self.entry, fallback, cx)
    }

    /// Gives the entry (or the fallback sleep) back, fired or not.
    pub(crate) fn clear(&mut self, fallback: Pin<&mut Option<Sleep>>) {
        self.timers.clear(&mut self.entry, fallback);
    }
}

impl Drop for OwnedAlarm {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.timers.cancel(entry);
        }
    }
}

/// A waker-less check for tests: whether a driver task is alive.
#[cfg(test)]
impl Timers {
    fn driver_alive(&self) -> bool {
        self.shared().driver.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use tenlives_engine::time::Clock;

    use super::*;

    /// A paused runtime: the driver sleeps on tokio's time, so auto-advance
    /// fires the wheel's timers.
    #[tokio::test(start_paused = true)]
    async fn a_timer_fires_on_the_paused_clock() {
        let clock = TokioClock::new();
        let timers = Timers::with_defaults(clock);
        let at = clock.now().saturating_add(Duration::from_millis(250));
        let mut alarm = OwnedAlarm::new(timers.clone());
        let mut fallback = pin!(None::<Sleep>);
        let start = tokio::time::Instant::now();
        std::future::poll_fn(|cx| {
            if !alarm.is_set(&fallback) {
                alarm.set(fallback.as_mut(), at, cx);
            }
            alarm.poll(fallback.as_mut(), cx)
        })
        .await;
        assert_eq!(start.elapsed(), Duration::from_millis(250));
        assert!(timers.driver_alive());
        assert_eq!(timers.fallbacks(), 0);
    }

    /// A full wheel falls back to a tokio sleep, counted.
    #[tokio::test(start_paused = true)]
    async fn a_full_wheel_falls_back_to_a_sleep() {
        let clock = TokioClock::new();
        let timers = Timers::new(1, Duration::from_millis(1), clock).unwrap();
        let mut first = OwnedAlarm::new(timers.clone());
        let mut second = OwnedAlarm::new(timers.clone());
        let mut f1 = pin!(None::<Sleep>);
        let mut f2 = pin!(None::<Sleep>);
        let far = clock.now().saturating_add(Duration::from_secs(60));
        let soon = clock.now().saturating_add(Duration::from_millis(10));
        std::future::poll_fn(|cx| {
            first.set(f1.as_mut(), far, cx);
            second.set(f2.as_mut(), soon, cx);
            Poll::Ready(())
        })
        .await;
        assert!(first.entry.is_some() && f1.is_none());
        assert!(second.entry.is_none() && f2.is_some());
        assert_eq!(timers.fallbacks(), 1);
        std::future::poll_fn(|cx| second.poll(f2.as_mut(), cx)).await;
        drop(first);
        // The entry came back: the next timer takes it.
        let mut third = OwnedAlarm::new(timers.clone());
        let mut f3 = pin!(None::<Sleep>);
        std::future::poll_fn(|cx| {
            third.set(f3.as_mut(), far, cx);
            Poll::Ready(())
        })
        .await;
        assert!(third.entry.is_some());
    }

    /// The driver ends with the last handle; a new runtime gets a new driver.
    #[test]
    fn the_driver_follows_its_runtime_and_its_handles() {
        let timers = Timers::with_defaults(TokioClock::runtime());
        for _ in 0..2 {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async {
                let mut alarm = OwnedAlarm::new(timers.clone());
                let mut fallback = pin!(None::<Sleep>);
                std::future::poll_fn(|cx| {
                    if !alarm.is_set(&fallback) {
                        alarm.set(fallback.as_mut(), Timestamp::ZERO, cx);
                    }
                    alarm.poll(fallback.as_mut(), cx)
                })
                .await;
                assert!(timers.driver_alive());
            });
            drop(rt);
            // The runtime dropped its tasks: the driver is gone.
            assert!(!timers.driver_alive());
        }
    }
}
