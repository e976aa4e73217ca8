//! A configuration cell: readers take the current value with no lock and no
//! shared write; writers publish a new value whole; the old one is freed
//! once no reader can still see it (epoch reclamation on crossbeam-epoch's
//! global collector). Feature `std`.
//!
//! ```
//! use core::time::Duration;
//! use tenlives_engine::breaker::BreakerConfig;
//! use tenlives_engine::config_cell::ConfigCell;
//!
//! let cell = ConfigCell::new(BreakerConfig::builder().half_open_probes(1).build()?);
//! assert_eq!(cell.with(|c| c.half_open_probes()), 1);
//!
//! // A new configuration is validated by its builder before it is stored...
//! cell.update(|_old| BreakerConfig::builder().half_open_probes(3).build())?;
//! assert_eq!(cell.with(|c| c.half_open_probes()), 3);
//!
//! // ...and a bad one is refused with the builder's typed error, the old one
//! // staying in force.
//! let refused = cell.update(|_old| BreakerConfig::builder().half_open_probes(0).build());
//! assert!(refused.is_err());
//! assert_eq!(cell.with(|c| c.half_open_probes()), 3);
//! # let _ = Duration::ZERO;
//! # Ok::<(), tenlives_engine::ConfigError>(())
//! ```
//!
//! # What a read costs
//!
//! A read pins the calling thread ([`crossbeam_epoch::pin`]), loads one
//! pointer (Acquire) and unpins. Pinning writes only the thread's own
//! participant record: one compare-and-swap on it (x86: `lock cmpxchg`, used
//! by crossbeam-epoch as the `SeqCst` fence reclamation needs) when the
//! thread was not already pinned, and nothing when it was (a nested pin is a
//! counter bump). No reference count is touched and no line shared with
//! other threads is written, except that every 128th pin of a thread also
//! tries to advance the global epoch and to free garbage (it reads every
//! registered thread's record and may write the global epoch and the global
//! garbage queue). Measured beside `arc-swap` and an `RwLock` in
//! `benches/benches/config.rs`; the figures are in `docs/live-config.md`.
//!
//! A write allocates the new value (one `Box`), swaps the pointer with one
//! compare-and-swap and hands the old value to the collector, which frees it
//! after every thread pinned at the time of the swap has unpinned.
//!
//! # What a reader sees
//!
//! Every read returns one value that was stored, whole: the pointer swap is
//! the only publication, and a value is never written after it is published.
//! A reader holding a [`Guard`] keeps the value it loaded alive until the
//! guard is dropped, however many writes happen meanwhile (loom model
//! `loom-tests/tests/loom_live_config.rs`, guarantee C1).

use core::fmt;
use core::sync::atomic::Ordering;

use crossbeam_epoch::{self as epoch, Atomic, Guard, Owned, Shared};

/// A value many threads read and a few replace, reclaimed by epochs. See
/// the [module documentation](self).
pub struct ConfigCell<T> {
    current: Atomic<T>,
}

impl<T> ConfigCell<T> {
    /// A cell holding `value`.
    pub fn new(value: T) -> Self {
        ConfigCell {
            current: Atomic::new(value),
        }
    }

    /// The value in force, valid while `guard` is held (pin with
    /// [`crossbeam_epoch::pin`]). A reader that needs several values from
    /// one configuration loads once and reads them all from the reference.
    #[inline]
    pub fn load<'g>(&'g self, guard: &'g Guard) -> &'g T {
        // ordering: Acquire, pairs with the Release of the compare-and-swap
        // that published the value, so its fields are visible whole.
        let shared = self.current.load(Ordering::Acquire, guard);
        // SAFETY: the pointer is never null (every store publishes a value)
        // and the value is retired only after it is unlinked, through
        // `guard.defer_destroy`, so it is not freed while `guard` pins this
        // thread; `&'g self` keeps the cell (whose drop frees the value in
        // force) alive as long as the reference.
        unsafe { shared.deref() }
    }

    /// Runs `f` on the value in force, pinning the thread for the call.
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        let guard = epoch::pin();
        f(self.load(&guard))
    }

    /// The value, taken out of the cell.
    pub fn into_inner(self) -> T {
        let this = core::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used again and its drop does not run, so
        // the atomic is read out exactly once; nothing else can reach it
        // because we own the cell.
        let current = unsafe { core::ptr::read(&this.current) };
        // SAFETY: we own the cell, so no reader holds the value; the pointer
        // is never null.
        *unsafe { current.into_owned() }.into_box()
    }
}

impl<T: Send + Sync + 'static> ConfigCell<T> {
    /// Replaces the value; the old one is freed once no reader can see it.
    pub fn store(&self, value: T) {
        let guard = epoch::pin();
        let _ = self.swap(value, &guard);
    }

    /// Replaces the value and returns the old one, readable while `guard` is
    /// held and freed after.
    pub fn swap<'g>(&'g self, value: T, guard: &'g Guard) -> &'g T {
        // ordering: AcqRel. Release publishes the new value whole; Acquire
        // makes the old one's fields visible to the reference returned.
        let old = self
            .current
            .swap(Owned::new(value), Ordering::AcqRel, guard);
        // SAFETY: `old` is unlinked by the swap, so no reader pinned after
        // now can load it; `defer_destroy` frees it only once every thread
        // pinned before (including us, through `guard`) has unpinned. It is
        // never null. `T: Send + 'static` lets another thread drop it later.
        unsafe {
            guard.defer_destroy(old);
            old.deref()
        }
    }

    /// Replaces the value with `new` if the value in force is still
    /// `current` (the same object, compared by address, as returned by
    /// [`load`](Self::load)). Returns the new value in force, or gives `new`
    /// back when another write came first.
    ///
    /// # Errors
    ///
    /// `Err(new)` when `current` is no longer the value in force.
    pub fn compare_and_set<'g>(
        &'g self,
        current: &'g T,
        new: T,
        guard: &'g Guard,
    ) -> Result<&'g T, T> {
        let expected = Shared::from(current as *const T);
        // ordering: AcqRel on success, as in `swap`; Acquire on failure so
        // that a caller may read the value that won.
        match self.current.compare_exchange(
            expected,
            Owned::new(new),
            Ordering::AcqRel,
            Ordering::Acquire,
            guard,
        ) {
            Ok(installed) => {
                // SAFETY: as in `swap`: `expected` is now unlinked, and the
                // installed value is not null.
                unsafe {
                    guard.defer_destroy(expected);
                    Ok(installed.deref())
                }
            }
            Err(e) => Err(*e.new.into_box()),
        }
    }

    /// Replaces the value with what `f` makes of the value in force,
    /// retrying `f` on the newer value when another write came first. When
    /// `f` refuses (a configuration builder's [`ConfigError`](crate::ConfigError),
    /// for example), nothing changes and its error is returned.
    ///
    /// # Errors
    ///
    /// The first error `f` returns.
    pub fn update<E>(&self, mut f: impl FnMut(&T) -> Result<T, E>) -> Result<(), E> {
        let guard = epoch::pin();
        let mut current = self.load(&guard);
        loop {
            let new = f(current)?;
            match self.compare_and_set(current, new, &guard) {
                Ok(_) => return Ok(()),
                Err(_) => current = self.load(&guard),
            }
        }
    }
}

impl<T> Drop for ConfigCell<T> {
    fn drop(&mut self) {
        let current = core::mem::replace(&mut self.current, Atomic::null());
        // SAFETY: `&mut self` means no reader holds a reference into the
        // cell (`load` ties its result to `&self`); the pointer is never
        // null; older values were handed to the collector already.
        drop(unsafe { current.into_owned() });
    }
}

impl<T: fmt::Debug> fmt::Debug for ConfigCell<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with(|value| f.debug_tuple("ConfigCell").field(value).finish())
    }
}

impl<T: Default> Default for ConfigCell<T> {
    fn default() -> Self {
        ConfigCell::new(T::default())
    }
}

#[cfg(all(test, not(crossbeam_loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    /// Counts its drops in a shared counter.
    struct Tracked(u64, Arc<AtomicUsize>);

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn swap_returns_the_old_value_and_frees_it_after_the_guard() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = ConfigCell::new(Tracked(1, drops.clone()));
        {
            let guard = epoch::pin();
            let old = cell.swap(Tracked(2, drops.clone()), &guard);
            assert_eq!(old.0, 1);
            assert_eq!(cell.load(&guard).0, 2);
            // Still readable: we are pinned.
            assert_eq!(drops.load(Ordering::SeqCst), 0);
        }
        // Flushing the collector eventually frees it (bounded tries).
        for _ in 0..1_000 {
            if drops.load(Ordering::SeqCst) == 1 {
                break;
            }
            epoch::pin().flush();
        }
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        drop(cell);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn compare_and_set_fails_on_a_stale_value() {
        let cell = ConfigCell::new(1u64);
        let guard = epoch::pin();
        let first = cell.load(&guard);
        assert_eq!(cell.compare_and_set(first, 2, &guard).copied(), Ok(2));
        // `first` is no longer in force.
        assert_eq!(cell.compare_and_set(first, 3, &guard), Err(3));
        assert_eq!(*cell.load(&guard), 2);
    }

    #[test]
    fn update_keeps_the_old_value_on_error() {
        let cell = ConfigCell::new(10u32);
        assert_eq!(cell.update(|v| Ok::<_, ()>(v + 1)), Ok(()));
        assert_eq!(cell.update(|_| Err("refused")), Err("refused"));
        assert_eq!(cell.with(|v| *v), 11);
        assert_eq!(cell.into_inner(), 11);
    }
}
