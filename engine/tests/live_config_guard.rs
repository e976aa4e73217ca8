//! A `ConfigCell` refuses guards that do not protect its values: a guard
//! pinned on another crossbeam-epoch collector (or an unprotected one) would
//! let a value retired through it be freed while a reader pinned on the
//! default collector still holds it. Safe code only; Miri runs this file in
//! CI (`.ci/run`), where a use-after-free is reported as undefined behaviour.

use std::panic::{AssertUnwindSafe, catch_unwind};

use crossbeam_epoch::{self as epoch, Collector, LocalHandle};
use tenlives_engine::config_cell::ConfigCell;

/// Flushes the garbage of `handle`'s collector: with only this handle
/// registered on it, a few pins and flushes advance its epoch far enough to
/// free everything retired through it.
fn flush(handle: &LocalHandle) {
    for _ in 0..8 {
        handle.pin().flush();
    }
}

/// A reader on the default collector holds the value in force; a writer
/// replaces it through a guard of a private collector, which it then
/// flushes. Were the foreign guard accepted, the value would be freed under
/// the reader (before the fix Miri reported: "Undefined Behavior: memory
/// access failed: alloc... has been freed").
#[test]
fn swap_through_a_foreign_guard_is_refused_and_the_reader_keeps_its_value() {
    let cell = ConfigCell::new(vec![0u64; 4]);
    cell.store(vec![1u64; 4]); // the value in force is now on the heap
    let reader = epoch::pin();
    let held: &Vec<u64> = cell.load(&reader);

    let private = Collector::new();
    let writer = private.register();
    let swapped = catch_unwind(AssertUnwindSafe(|| {
        let foreign = writer.pin();
        let _ = cell.swap(vec![2u64; 4], &foreign);
    }));
    flush(&writer);

    // Read before asserting: were the value freed, this is the access Miri
    // reports.
    assert_eq!(held.iter().sum::<u64>(), 4, "the reader's value is intact");
    assert!(swapped.is_err(), "a guard of another collector is refused");
    assert_eq!(*cell.load(&reader), vec![1u64; 4], "nothing was replaced");
}

#[test]
fn every_guarded_operation_refuses_a_foreign_guard() {
    let cell = ConfigCell::new(1u32);
    cell.store(2);
    let private = Collector::new();
    let handle = private.register();
    let foreign = handle.pin();
    let refused = |what: &str, r: std::thread::Result<()>| {
        let payload = r.expect_err(what);
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        assert!(
            message.contains("crossbeam_epoch::pin"),
            "{what}: the panic names the guard to use, got {message:?}"
        );
    };
    refused(
        "load",
        catch_unwind(AssertUnwindSafe(|| {
            let _ = cell.load(&foreign);
        })),
    );
    refused(
        "swap",
        catch_unwind(AssertUnwindSafe(|| {
            let _ = cell.swap(3, &foreign);
        })),
    );
    refused(
        "compare_and_set",
        catch_unwind(AssertUnwindSafe(|| {
            let guard = epoch::pin();
            let current = cell.load(&guard);
            let _ = cell.compare_and_set(current, 3, &foreign);
        })),
    );
    refused(
        "update_with",
        catch_unwind(AssertUnwindSafe(|| {
            let _ = cell.update_with(&foreign, |v| Ok::<_, ()>(v + 1));
        })),
    );
    drop(foreign);
    // The cell is unchanged and still works with the default collector.
    assert_eq!(cell.with(|v| *v), 2);
    cell.update(|v| Ok::<_, ()>(v + 1)).unwrap();
    assert_eq!(cell.with(|v| *v), 3);
}

/// The unprotected guard is not a pin of the default collector either: a
/// value retired through it would be freed at once, under any reader.
#[test]
fn the_unprotected_guard_is_refused_for_writes() {
    let cell = ConfigCell::new(1u32);
    cell.store(2);
    let reader = epoch::pin();
    let held = cell.load(&reader);
    let swapped = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the guard is only handed to the cell, which must refuse it.
        let unprotected = unsafe { epoch::unprotected() };
        let _ = cell.swap(3, unprotected);
    }));
    assert_eq!(*held, 2);
    assert!(swapped.is_err());
}

/// Zero-sized values all live at one address once boxed, so the cell cannot
/// tell two of them apart by address: `compare_and_set` with a value that
/// is no longer in force must still fail (before the fix it succeeded:
/// `left: Err(Marker), right: Ok(Marker)`-style mismatch).
#[test]
fn compare_and_set_tells_zero_sized_values_apart() {
    #[derive(Debug, PartialEq)]
    struct Marker;
    let cell = ConfigCell::new(Marker);
    let guard = epoch::pin();
    cell.store(Marker); // boxed
    let stale = cell.load(&guard);
    cell.store(Marker); // another boxed value, same address
    assert!(
        cell.compare_and_set(stale, Marker, &guard).is_err(),
        "a value replaced since it was loaded is not the value in force"
    );
    let current = cell.load(&guard);
    assert!(cell.compare_and_set(current, Marker, &guard).is_ok());
    // And update_with retries on the newer value: f sees each value once.
    let mut calls = 0;
    let (old, _) = cell
        .update_with(&guard, |_| {
            calls += 1;
            Ok::<_, ()>(Marker)
        })
        .unwrap();
    assert_eq!(*old, Marker);
    assert_eq!(calls, 1);
}
