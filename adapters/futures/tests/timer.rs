//! The timers: `ManualTimer`'s wake order and bookkeeping, and the runtime
//! timers (`TokioTimer` under tokio's paused clock, `AsyncIoTimer` on a
//! real clock) keeping the `Timer` contract.

mod common;

use std::cell::RefCell;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use common::*;
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use tenlives_engine::time::{Clock, Timestamp};
use tenlives_futures::{AsyncIoTimer, ManualSleep, ManualTimer, Timer, TokioTimer};

#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn sleepers_wake_in_deadline_order_then_registration_order() {
    let timer = Rc::new(ManualTimer::new());
    let order = Rc::new(RefCell::new(Vec::new()));
    let mut pool = LocalPool::new();
    for (name, deadline) in [("c", 30), ("a", 10), ("b1", 20), ("b2", 20), ("now", 0)] {
        let (t, o) = (timer.clone(), order.clone());
        pool.spawner()
            .spawn_local(async move {
                t.sleep_until(at_ms(deadline)).await;
                o.borrow_mut().push((name, t.now()));
            })
            .unwrap();
    }
    pool.run_until_stalled();
    assert_eq!(timer.sleepers(), 4, "the one due now never registered");
    assert_eq!(timer.next_deadline(), Some(at_ms(10)));
    // One jump past every deadline still wakes them in deadline order.
    timer.advance(ms(25));
    pool.run_until_stalled();
    assert_eq!(timer.sleepers(), 1);
    timer.advance_to(at_ms(30));
    pool.run_until_stalled();
    assert_eq!(timer.advance_to_next(), None, "nobody sleeps");
    let names: Vec<_> = order.borrow().iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["now", "a", "b1", "b2", "c"]);
}

#[test]
fn advancing_short_of_a_deadline_wakes_nobody() {
    let timer = ManualTimer::new();
    let counter = Arc::new(CountingWaker::default());
    let waker = Waker::from(counter.clone());
    let mut cx = Context::from_waker(&waker);
    let mut sleep = pin!(timer.sleep_until(at_ms(10)));
    assert!(sleep.as_mut().poll(&mut cx).is_pending());
    timer.advance(ms(9));
    assert_eq!(counter.0.load(Ordering::SeqCst), 0);
    assert!(sleep.as_mut().poll(&mut cx).is_pending());
    timer.advance(ms(1));
    assert_eq!(counter.0.load(Ordering::SeqCst), 1);
    assert_eq!(sleep.as_mut().poll(&mut cx), Poll::Ready(()));
    assert_eq!(timer.sleepers(), 0);
}

#[test]
fn a_sleep_registers_when_polled_and_leaves_when_dropped() {
    let timer = ManualTimer::new();
    let unpolled = timer.sleep_until(at_ms(10));
    assert_eq!(timer.sleepers(), 0, "made, not polled: not registered");
    drop(unpolled);
    let mut polled = Box::pin(timer.sleep_until(at_ms(10)));
    assert!(poll_once(polled.as_mut()).is_pending());
    assert!(poll_once(polled.as_mut()).is_pending());
    assert_eq!(timer.sleepers(), 1, "polled twice: registered once");
    drop(polled);
    assert_eq!((timer.sleepers(), timer.next_deadline()), (0, None));
}

#[test]
fn the_latest_waker_is_the_one_woken() {
    let timer = ManualTimer::new();
    let (first, second) = (
        Arc::new(CountingWaker::default()),
        Arc::new(CountingWaker::default()),
    );
    let mut sleep = pin!(timer.sleep_until(at_ms(1)));
    let w1 = Waker::from(first.clone());
    let w2 = Waker::from(second.clone());
    assert!(
        sleep
            .as_mut()
            .poll(&mut Context::from_waker(&w1))
            .is_pending()
    );
    assert!(
        sleep
            .as_mut()
            .poll(&mut Context::from_waker(&w2))
            .is_pending()
    );
    timer.advance(ms(1));
    assert_eq!(
        (
            first.0.load(Ordering::SeqCst),
            second.0.load(Ordering::SeqCst)
        ),
        (0, 1)
    );
}

std::thread_local! {
    static STASH: RefCell<Option<std::pin::Pin<Box<ManualSleep<'static>>>>> =
        const { RefCell::new(None) };
}

/// Drops the stashed sleep when woken.
struct DropStash;

impl Wake for DropStash {
    fn wake(self: Arc<Self>) {
        drop(STASH.with(|s| s.borrow_mut().take()));
    }
}

#[test]
fn a_waker_may_drop_a_sleep_of_the_same_timer_from_inside_wake() {
    let timer: &'static ManualTimer = Box::leak(Box::new(ManualTimer::new()));
    let mut later = Box::pin(timer.sleep_until(at_ms(5)));
    assert!(poll_once(later.as_mut()).is_pending());
    STASH.with(|s| *s.borrow_mut() = Some(later));
    let waker = Waker::from(Arc::new(DropStash));
    let mut first = pin!(timer.sleep_until(at_ms(1)));
    assert!(
        first
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    assert_eq!(timer.sleepers(), 2);
    // Waking the first drops the second, which unregisters: no borrow of
    // the timer is held while a waker runs.
    timer.advance(ms(1));
    assert_eq!(timer.sleepers(), 0);
    assert!(STASH.with(|s| s.borrow().is_none()));
}

#[test]
fn time_saturates_and_never_goes_back() {
    let timer = ManualTimer::starting_at(at_ms(5));
    assert_eq!(timer.advance_to(at_ms(1)), at_ms(5));
    assert_eq!(timer.advance(std::time::Duration::MAX), Timestamp::MAX);
    let mut sleep = pin!(timer.sleep_until(Timestamp::MAX));
    assert_eq!(poll_once(sleep.as_mut()), Poll::Ready(()));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_tokio_timer_follows_the_paused_clock() {
    let timer = TokioTimer::new();
    assert_eq!(
        timer.clock().now(),
        Timestamp::ZERO,
        "paused: time stands still"
    );
    timer.sleep_until(at_ms(1_500)).await;
    assert_eq!(timer.clock().now(), at_ms(1_500));
    tokio::time::advance(ms(500)).await;
    assert_eq!(timer.clock().now(), at_ms(2_000));
    // A deadline already past completes at once; one beyond what tokio can
    // represent is put 30 years out rather than overflowing.
    timer.sleep_until(at_ms(1)).await;
    assert!(timer.instant_at(Timestamp::MAX) > timer.origin());
    let far = timer.sleep_until(Timestamp::MAX);
    assert!(tokio::time::timeout(ms(10), far).await.is_err());
}

#[test]
fn the_async_io_timer_never_wakes_early() {
    let timer = AsyncIoTimer::new();
    for step in [0, 1, 3] {
        let deadline = timer.clock().now().saturating_add(ms(step));
        async_io::block_on(timer.sleep_until(deadline));
        assert!(timer.clock().now() >= deadline);
    }
}
