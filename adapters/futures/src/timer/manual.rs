//! [`ManualTimer`]: virtual time for tests and simulations.

use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use core::time::Duration;

use tenlives_engine::time::{Clock, ManualClock, Timestamp};

use super::Timer;

/// A [`Timer`] on virtual time: its clock moves only when the test (or
/// simulation) calls [`advance`](Self::advance),
/// [`advance_to`](Self::advance_to) or
/// [`advance_to_next`](Self::advance_to_next), and each of those wakes,
/// in order of deadline (then of registration), every sleeper whose deadline
/// it reached.
///
/// It is for single-threaded executors (a hand-written one,
/// `futures::executor::LocalPool`, tokio's current-thread runtime): the
/// sleepers live in a `RefCell<Vec<_>>`, so the timer is `!Sync`. It uses no
/// lock, no thread and no system call. A sleep registers itself only when it
/// is polled before its deadline, and unregisters when it completes or is
/// dropped; the list keeps its capacity, so once it has grown to the largest
/// number of sleepers at once, sleeping allocates nothing.
///
/// Move time through the timer, not through [`clock()`](Timer::clock)
/// directly: the clock alone does not wake sleepers (they would see the new
/// time only when polled for another reason).
///
/// ```
/// use core::time::Duration;
/// use std::{cell::Cell, rc::Rc};
/// use futures::executor::LocalPool;
/// use futures::task::LocalSpawnExt;
/// use tenlives_engine::time::Timestamp;
/// use tenlives_futures::{ManualTimer, Timer};
///
/// let timer = Rc::new(ManualTimer::new());
/// let woke_at = Rc::new(Cell::new(None));
/// let mut pool = LocalPool::new();
/// let (t, w) = (timer.clone(), woke_at.clone());
/// pool.spawner().spawn_local(async move {
///     t.sleep_until(Timestamp::from_nanos(5_000)).await;
///     w.set(Some(t.now()));
/// }).unwrap();
///
/// pool.run_until_stalled();
/// assert_eq!(timer.sleepers(), 1);
/// timer.advance(Duration::from_nanos(4_000)); // not due yet
/// pool.run_until_stalled();
/// assert_eq!(woke_at.get(), None);
/// assert_eq!(timer.advance_to_next(), Some(Timestamp::from_nanos(5_000)));
/// pool.run_until_stalled();
/// assert_eq!(woke_at.get(), Some(Timestamp::from_nanos(5_000)));
/// assert_eq!(timer.sleepers(), 0);
/// ```
pub struct ManualTimer {
    clock: ManualClock,
    sleepers: RefCell<Sleepers>,
}

struct Sleepers {
    /// Key of the next sleeper to register; keys are never reused.
    next_key: u64,
    waiting: Vec<Sleeper>,
}

struct Sleeper {
    key: u64,
    deadline: Timestamp,
    waker: Waker,
}

impl Sleepers {
    fn position(&self, key: u64) -> Option<usize> {
        self.waiting.iter().position(|s| s.key == key)
    }

    /// Removes the sleeper due first at `now`, if any, and returns its waker.
    fn take_due(&mut self, now: Timestamp) -> Option<Waker> {
        let (i, _) = self
            .waiting
            .iter()
            .enumerate()
            .filter(|(_, s)| s.deadline <= now)
            .min_by_key(|(_, s)| (s.deadline, s.key))?;
        Some(self.waiting.swap_remove(i).waker)
    }
}

impl ManualTimer {
    /// A timer whose clock stands at [`Timestamp::ZERO`], with no sleepers.
    pub fn new() -> Self {
        Self::starting_at(Timestamp::ZERO)
    }

    /// A timer whose clock stands at `start`, with no sleepers.
    pub fn starting_at(start: Timestamp) -> Self {
        ManualTimer {
            clock: ManualClock::starting_at(start),
            sleepers: RefCell::new(Sleepers {
                next_key: 0,
                waiting: Vec::new(),
            }),
        }
    }

    /// The instant the clock stands at.
    #[inline]
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Moves the clock `d` forward (saturating), wakes the sleepers that are
    /// now due, and returns the new instant.
    ///
    /// Wakers are called one at a time with no borrow of the timer held, so
    /// a waker may poll (or drop) sleeps of this timer from inside `wake`.
    pub fn advance(&self, d: Duration) -> Timestamp {
        let now = self.clock.advance(d);
        self.wake_due(now);
        now
    }

    /// Moves the clock to `t` if that is later than now (it never goes
    /// back), wakes the sleepers that are now due, and returns the new
    /// instant.
    pub fn advance_to(&self, t: Timestamp) -> Timestamp {
        let now = self.clock.advance_to(t);
        self.wake_due(now);
        now
    }

    /// Moves the clock to the earliest deadline of the registered sleepers
    /// and wakes those due then; `None` (and no move) if nobody sleeps.
    ///
    /// A driver that runs its executor until every task is stalled and then
    /// calls this, until it returns `None`, simulates time the way tokio's
    /// paused clock does.
    pub fn advance_to_next(&self) -> Option<Timestamp> {
        let next = self.next_deadline()?;
        Some(self.advance_to(next))
    }

    /// The earliest deadline among the registered sleepers.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.sleepers
            .borrow()
            .waiting
            .iter()
            .map(|s| s.deadline)
            .min()
    }

    /// Sleeps registered and not yet woken.
    pub fn sleepers(&self) -> usize {
        self.sleepers.borrow().waiting.len()
    }

    fn wake_due(&self, now: Timestamp) {
        // One at a time, waking outside the borrow: a waker's `wake` (or the
        // drop of the last reference to a task) may run code that touches
        // this timer. The loop ends: each round removes one sleeper, and a
        // sleep polled from inside `wake` at a due instant completes without
        // registering.
        loop {
            let due = self.sleepers.borrow_mut().take_due(now);
            match due {
                Some(waker) => waker.wake(),
                None => return,
            }
        }
    }

    fn register(&self, key: &mut Option<u64>, deadline: Timestamp, waker: &Waker) {
        let mut sleepers = self.sleepers.borrow_mut();
        let found = key.and_then(|k| sleepers.position(k));
        let replaced = match found {
            Some(i) => {
                let slot = &mut sleepers.waiting[i].waker;
                if slot.will_wake(waker) {
                    None
                } else {
                    Some(core::mem::replace(slot, waker.clone()))
                }
            }
            None => {
                let k = sleepers.next_key;
                sleepers.next_key += 1;
                sleepers.waiting.push(Sleeper {
                    key: k,
                    deadline,
                    waker: waker.clone(),
                });
                *key = Some(k);
                None
            }
        };
        drop(sleepers);
        // Dropped outside the borrow: it may be the last reference to a task.
        drop(replaced);
    }

    fn unregister(&self, key: &mut Option<u64>) {
        let Some(k) = key.take() else { return };
        let mut sleepers = self.sleepers.borrow_mut();
        let removed = sleepers
            .position(k)
            .map(|i| sleepers.waiting.swap_remove(i));
        drop(sleepers);
        drop(removed);
    }
}

impl Default for ManualTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ManualTimer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualTimer")
            .field("now", &self.clock.now())
            .field("sleepers", &self.sleepers())
            .finish()
    }
}

impl Timer for ManualTimer {
    type Clock = ManualClock;
    type Sleep<'a> = ManualSleep<'a>;

    #[inline]
    fn clock(&self) -> &ManualClock {
        &self.clock
    }

    #[inline]
    fn sleep_until(&self, deadline: Timestamp) -> ManualSleep<'_> {
        ManualSleep {
            timer: self,
            deadline,
            key: None,
        }
    }
}

/// A sleep on a [`ManualTimer`]. Made by [`Timer::sleep_until`].
#[must_use = "futures do nothing unless polled"]
pub struct ManualSleep<'t> {
    timer: &'t ManualTimer,
    deadline: Timestamp,
    /// The registration, once polled before the deadline.
    key: Option<u64>,
}

impl ManualSleep<'_> {
    /// The instant this sleep waits for.
    pub fn deadline(&self) -> Timestamp {
        self.deadline
    }
}

impl fmt::Debug for ManualSleep<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualSleep")
            .field("deadline", &self.deadline)
            .field("registered", &self.key.is_some())
            .finish()
    }
}

impl Future for ManualSleep<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.timer.clock.now() >= this.deadline {
            this.timer.unregister(&mut this.key);
            return Poll::Ready(());
        }
        this.timer
            .register(&mut this.key, this.deadline, cx.waker());
        Poll::Pending
    }
}

impl Drop for ManualSleep<'_> {
    fn drop(&mut self) {
        self.timer.unregister(&mut self.key);
    }
}
