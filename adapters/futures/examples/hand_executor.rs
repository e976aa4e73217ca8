//! The engine inside a hand-written single-threaded executor: a run queue
//! that is one atomic bit mask, wakers made from `core::task::RawWaker`
//! that set a bit, and virtual time from `ManualTimer`. No tokio, no
//! `futures` executor, no threads; `std` only for printing.
//!
//! ```sh
//! cargo run -p tenlives-futures --example hand_executor
//! ```

mod common;

use core::future::Future;
use core::pin::Pin;
use core::sync::atomic::{AtomicU64, Ordering};
use core::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

use tenlives_futures::ManualTimer;

/// The run queue: bit `i` set means task `i` should be polled.
static READY: AtomicU64 = AtomicU64::new(0);

/// A waker's data is its task's index; waking sets the task's bit.
const VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake, drop_waker);

fn clone(data: *const ()) -> RawWaker {
    RawWaker::new(data, &VTABLE)
}

fn wake(data: *const ()) {
    READY.fetch_or(1 << (data as usize), Ordering::Release);
}

fn drop_waker(_: *const ()) {}

fn waker_for(task: usize) -> Waker {
    // SAFETY: the vtable's functions only read the data pointer as an
    // integer (the task index); none dereferences it, so any value is valid,
    // and cloning or dropping it needs no bookkeeping.
    unsafe { Waker::from_raw(RawWaker::new(task as *const (), &VTABLE)) }
}

/// Up to 64 tasks, polled when their bit is set; when none is ready, the
/// timer jumps to the next sleeper's deadline.
struct Executor<'a> {
    tasks: Vec<Option<Pin<Box<dyn Future<Output = ()> + 'a>>>>,
}

impl<'a> Executor<'a> {
    fn spawn(&mut self, task: impl Future<Output = ()> + 'a) {
        let index = self.tasks.len();
        assert!(index < 64, "one bit per task");
        self.tasks.push(Some(Box::pin(task)));
        READY.fetch_or(1 << index, Ordering::Release);
    }

    /// Runs every task to completion; returns how many polls it took.
    fn run(&mut self, timer: &ManualTimer) -> usize {
        let mut polls = 0;
        while self.tasks.iter().any(Option::is_some) {
            let ready = READY.swap(0, Ordering::Acquire);
            if ready == 0 {
                // Every task waits: move virtual time to the next deadline,
                // which wakes its sleepers.
                timer
                    .advance_to_next()
                    .expect("tasks wait, but nobody sleeps: a deadlock");
                continue;
            }
            for (i, slot) in self.tasks.iter_mut().enumerate() {
                if ready & (1 << i) == 0 {
                    continue;
                }
                if let Some(task) = slot {
                    polls += 1;
                    let waker = waker_for(i);
                    if task.as_mut().poll(&mut Context::from_waker(&waker)) == Poll::Ready(()) {
                        *slot = None;
                    }
                }
            }
        }
        polls
    }
}

fn main() {
    let scenario = common::Scenario::new(ManualTimer::new());
    let mut executor = Executor { tasks: Vec::new() };
    executor.spawn(scenario.telemetry());
    executor.spawn(scenario.clients());
    let polls = executor.run(&scenario.timer);
    scenario.finish();
    println!("hand-written executor: 2 tasks, {polls} polls");
}
