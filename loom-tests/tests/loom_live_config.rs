//! loom models of the configuration cell (`tenlives_engine::config_cell`),
//! guarantee C1: a reader racing writers sees one stored configuration
//! whole, never a mix and never a value not yet fully written, and nothing
//! it loaded is freed while it holds its guard; racing `update`s lose none
//! of each other's changes.
//!
//! These run in crossbeam-epoch's own loom mode, so that pinning, retiring
//! and freeing are part of what loom explores:
//!
//! ```sh
//! RUSTFLAGS="--cfg crossbeam_loom" CARGO_TARGET_DIR=target/loom-epoch \
//!     cargo test --release -p tenlives-loom-tests --test loom_live_config
//! ```
//!
//! Preemption bound: 3 (`LOOM_MAX_PREEMPTIONS` overrides it). Each model
//! catches a broken cell: freeing the old value at once instead of through
//! the collector fails the "freed while held" assertion, and publishing with
//! a Relaxed swap is a causality violation on the halves.
#![cfg(crossbeam_loom)]

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, Ordering};
use tenlives_engine::config_cell::ConfigCell;

fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    let mut builder = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}

/// A configuration of two halves written after construction (through a
/// loom cell, so that loom reports a read not ordered after the write), and
/// a flag set when it is freed.
struct Config {
    id: usize,
    halves: UnsafeCell<(u64, u64)>,
    freed: Arc<Vec<AtomicBool>>,
}

// SAFETY: `halves` is written once, by the thread that builds the value,
// before the value is shared; afterwards it is only read.
unsafe impl Sync for Config {}

impl Config {
    fn new(id: usize, freed: &Arc<Vec<AtomicBool>>) -> Self {
        let c = Config {
            id,
            halves: UnsafeCell::new((0, 0)),
            freed: freed.clone(),
        };
        let v = 10 * (id as u64 + 1);
        // SAFETY: not shared yet.
        c.halves.with_mut(|p| unsafe { *p = (v, v + 1) });
        c
    }

    fn read(&self) -> (u64, u64) {
        // SAFETY: only read once shared; loom checks the write happened
        // before.
        self.halves.with(|p| unsafe { *p })
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        self.freed[self.id].store(true, Ordering::SeqCst);
    }
}

fn flags(n: usize) -> Arc<Vec<AtomicBool>> {
    Arc::new((0..n).map(|_| AtomicBool::new(false)).collect())
}

#[test]
fn a_reader_sees_one_configuration_whole_and_it_is_not_freed_under_it() {
    model(|| {
        let freed = flags(3);
        let cell = Arc::new(ConfigCell::new(Config::new(0, &freed)));

        let reader = {
            let (cell, freed) = (cell.clone(), freed.clone());
            loom::thread::spawn(move || {
                let guard = crossbeam_epoch::pin();
                let config = cell.load(&guard);
                let (a, b) = config.read();
                let v = 10 * (config.id as u64 + 1);
                assert_eq!((a, b), (v, v + 1), "a mix of two configurations");
                // Let the writer retire it and the collector run.
                loom::thread::yield_now();
                assert!(
                    !freed[config.id].load(Ordering::SeqCst),
                    "freed while a reader holds it"
                );
                assert_eq!(config.read(), (a, b));
                drop(guard);
            })
        };

        {
            // Built while pinned, so that the pin's fence does not order
            // the writes for the reader: only the publication may.
            let guard = crossbeam_epoch::pin();
            let old = cell.swap(Config::new(1, &freed), &guard);
            assert_eq!(old.id, 0);
        }
        cell.store(Config::new(2, &freed));
        crossbeam_epoch::pin().flush();
        reader.join().unwrap();

        let guard = crossbeam_epoch::pin();
        assert_eq!(cell.load(&guard).id, 2);
        assert!(!freed[2].load(Ordering::SeqCst));
    });
}

#[test]
fn racing_updates_lose_nothing() {
    model(|| {
        let cell = Arc::new(ConfigCell::new(0u64));
        let other = {
            let cell = cell.clone();
            loom::thread::spawn(move || {
                cell.update(|v| Ok::<_, ()>(v + 1)).unwrap();
            })
        };
        cell.update(|v| Ok::<_, ()>(v + 10)).unwrap();
        // A refused update changes nothing.
        assert_eq!(cell.update(|_| Err::<u64, _>("no")), Err("no"));
        other.join().unwrap();
        assert_eq!(cell.with(|v| *v), 11);
    });
}
