//! The timer wheel under real threads: registrants arm timers on a shared
//! time line and either give them back early (cancelling) or wait for them,
//! re-polling only when their waker was woken, while an expirer moves time
//! on and expires. Checked (docs/guarantees.md, W1-W4): no waiting timer is
//! left asleep (every waiter finishes, or the test fails after a bound); a
//! registration is woken at most once; everything fired was counted by
//! `expire`; and at the end every entry is back on the free stack.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use tenlives_engine::time::Timestamp;
use tenlives_engine::timer::{TimerWheel, WheelFull};

struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A small xorshift, one per thread.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

const CAPACITY: usize = 8;
const REGISTRANTS: u64 = 3;
const ROUNDS: usize = if cfg!(debug_assertions) {
    3_000
} else {
    30_000
};
const BOUND: Duration = Duration::from_secs(20);

#[test]
fn every_timer_is_cancelled_or_fired_once_and_every_entry_comes_back() {
    let wheel = Arc::new(TimerWheel::new(CAPACITY, Duration::from_nanos(1)).unwrap());
    let now = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let fired = Arc::new(AtomicUsize::new(0));

    let expirer = {
        let (wheel, now, done, fired) = (
            Arc::clone(&wheel),
            Arc::clone(&now),
            Arc::clone(&done),
            Arc::clone(&fired),
        );
        thread::spawn(move || {
            let mut rng = 0x9E37_79B9_7F4A_7C15;
            while !done.load(Ordering::SeqCst) {
                let t = now.fetch_add(next(&mut rng) % 4, Ordering::SeqCst);
                fired.fetch_add(
                    wheel.expire(Timestamp::from_nanos(t)).fired,
                    Ordering::SeqCst,
                );
                thread::yield_now();
            }
        })
    };

    let registrants: Vec<_> = (0..REGISTRANTS)
        .map(|seed| {
            let (wheel, now) = (Arc::clone(&wheel), Arc::clone(&now));
            thread::spawn(move || {
                let mut rng = seed * 7919 + 1;
                let (mut waited, mut full) = (0usize, 0usize);
                for _ in 0..ROUNDS {
                    let count = Arc::new(Count(AtomicUsize::new(0)));
                    let waker = Waker::from(Arc::clone(&count));
                    let deadline = now.load(Ordering::SeqCst) + next(&mut rng) % 16;
                    let mut entry = match wheel.register(Timestamp::from_nanos(deadline), &waker) {
                        Ok(reg) => reg.entry,
                        Err(WheelFull) => {
                            full += 1;
                            continue;
                        }
                    };
                    if next(&mut rng).is_multiple_of(2) {
                        // Give it back at some point, fired or not.
                        for _ in 0..next(&mut rng) % 50 {
                            std::hint::spin_loop();
                        }
                        wheel.cancel(entry);
                    } else {
                        // Wait for it: poll again only when woken.
                        let start = Instant::now();
                        let mut seen = 0;
                        while wheel.poll(&mut entry, &waker).is_pending() {
                            while count.0.load(Ordering::SeqCst) == seen {
                                assert!(start.elapsed() < BOUND, "a waiting timer was never woken");
                                thread::yield_now();
                            }
                            seen = count.0.load(Ordering::SeqCst);
                        }
                        wheel.cancel(entry);
                        waited += 1;
                    }
                    drop(waker);
                    // Never woken twice (a wake still in flight is counted
                    // by the time the expirer stops, checked below).
                    assert!(count.0.load(Ordering::SeqCst) <= 1);
                }
                (waited, full)
            })
        })
        .collect();

    let mut waited = 0;
    for r in registrants {
        let (w, _full) = r.join().unwrap();
        waited += w;
    }
    done.store(true, Ordering::SeqCst);
    expirer.join().unwrap();

    let fired = fired.load(Ordering::SeqCst);
    assert!(fired >= waited, "fired {fired} < waited {waited}");
    assert!(fired <= REGISTRANTS as usize * ROUNDS);

    // Every entry is free again: exactly CAPACITY registrations succeed.
    let all: Vec<_> = (0..CAPACITY)
        .map(|_| {
            wheel
                .register(Timestamp::MAX, Waker::noop())
                .expect("a free entry")
                .entry
        })
        .collect();
    assert!(wheel.register(Timestamp::MAX, Waker::noop()).is_err());
    for entry in all {
        wheel.cancel(entry);
    }
}
