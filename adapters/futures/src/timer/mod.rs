//! Timers: how a runtime sleeps until a [`Timestamp`].
//!
//! The engine takes time as a value; waiting for time to pass is the one
//! thing it cannot do. [`Timer`] is the small interface through which this
//! crate asks a runtime for that: a [`Clock`] that says what time it is, and
//! a future that completes once that clock reaches a given instant. Both must
//! agree: a sleep until `t` completes only when `clock().now() >= t` (or
//! later).
//!
//! Implementations here:
//!
//! - [`ManualTimer`] (feature `alloc`): virtual time for tests and
//!   simulations; sleepers wake when the test advances the timer.
//! - `TokioTimer` (feature `tokio`): `tokio::time::sleep_until`, so it
//!   follows tokio's paused test clock.
//! - `AsyncIoTimer` (feature `async-io`): `async_io::Timer`, for smol and
//!   other executors built on async-io.
//!
//! `docs/futures.md` shows how to implement it for another runtime.

#[cfg(feature = "async-io")]
mod async_io;
#[cfg(feature = "alloc")]
mod manual;
#[cfg(feature = "tokio")]
mod tokio;

use core::future::Future;

use tenlives_engine::time::{Clock, Timestamp};

#[cfg(feature = "async-io")]
pub use self::async_io::{AsyncIoSleep, AsyncIoTimer};
#[cfg(feature = "alloc")]
pub use self::manual::{ManualSleep, ManualTimer};
#[cfg(feature = "tokio")]
pub use self::tokio::TokioTimer;

/// A runtime's timer, on the time scale of a [`Clock`].
///
/// # Contract
///
/// - [`sleep_until(t)`](Timer::sleep_until) returns a future that completes
///   once [`clock()`](Timer::clock) reads `t` or later (at once if it already
///   does), and wakes its task then: a sleeper must not need another poll
///   to notice.
/// - Creating a sleep and dropping it, polled or not, leaves nothing behind.
/// - A sleep may complete later than `t` (timer granularity), never earlier.
pub trait Timer {
    /// The clock this timer's instants are measured on.
    type Clock: Clock;
    /// The future [`sleep_until`](Timer::sleep_until) returns.
    type Sleep<'a>: Future<Output = ()>
    where
        Self: 'a;

    /// The clock whose instants [`sleep_until`](Timer::sleep_until) takes.
    fn clock(&self) -> &Self::Clock;

    /// A future that completes once the clock reads `deadline` or later.
    fn sleep_until(&self, deadline: Timestamp) -> Self::Sleep<'_>;
}
