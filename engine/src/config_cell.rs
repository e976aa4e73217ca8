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
//! The value the cell is made with lives inside the cell; nothing is
//! allocated until the first write. While no write ever happened, a read is
//! one Acquire load that finds the pointer null, and no pin. After the first
//! write a read pins the calling thread ([`crossbeam_epoch::pin`]), loads one
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
//! after every thread pinned at the time of the swap has unpinned (the first
//! value is freed with the cell).
//!
//! # What a reader sees
//!
//! Every read returns one value that was stored, whole: the pointer swap is
//! the only publication, and a value is never written after it is published.
//! A reader holding a [`Guard`] keeps the value it loaded alive until the
//! guard is dropped, however many writes happen meanwhile (loom model
//! `loom-tests/tests/loom_live_config.rs`, guarantee C1).
//!
//! # Which guards
//!
//! The cell retires replaced values to crossbeam-epoch's *default*
//! collector, so only a pin of that collector keeps them alive: every method
//! that takes a [`Guard`] (`load`, `swap`, `compare_and_set`, `update_with`)
//! panics when given any other — a guard of a private
//! [`Collector`](crossbeam_epoch::Collector), or [`epoch::unprotected`].
//! Accepting one would be a use-after-free reachable from safe code: a value
//! retired through a private collector's guard is freed when that collector
//! advances, whatever threads pinned on the default collector still read
//! (regression test `engine/tests/live_config_guard.rs`, run under Miri in
//! CI). A panic, not an error: passing the wrong guard is a programming
//! mistake that no retry can fix, as in `crossbeam-skiplist`. Get the guard
//! from [`crossbeam_epoch::pin`]; the check is one comparison of two
//! pointers per call.
//!
//! Stored values are compared by address (`compare_and_set`), so each one
//! the cell allocates is a distinct object even when `T` is zero-sized: a
//! write boxes the value beside one byte, so that two zero-sized values
//! never share an address.

use core::fmt;
use core::sync::atomic::Ordering;

use crossbeam_epoch::{self as epoch, Atomic, Guard, Owned, Shared};

/// The value in force, read through [`ConfigCell::read`]: dereferences to
/// it, and keeps it alive (pinning the thread when needed) until dropped.
pub struct Read<'a, T> {
    value: &'a T,
    _guard: Option<Guard>,
}

impl<T> core::ops::Deref for Read<'_, T> {
    type Target = T;

    #[inline(always)]
    fn deref(&self) -> &T {
        self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for Read<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

/// A value many threads read and a few replace, reclaimed by epochs. See
/// the [module documentation](self).
pub struct ConfigCell<T> {
    /// The value the cell was made with, in force while `current` is null.
    first: T,
    /// The value in force once a write replaced `first`.
    current: Atomic<Node<T>>,
}

/// A value as a write stores it: never zero-sized, so that every stored
/// value has an address of its own, which `compare_and_set` compares. The
/// value comes first (`repr(C)`): a reference to it is a reference to the
/// start of its node.
#[repr(C)]
struct Node<T> {
    value: T,
    _distinct: u8,
}

impl<T> Node<T> {
    fn boxed(value: T) -> Owned<Node<T>> {
        Owned::new(Node {
            value,
            _distinct: 0,
        })
    }
}

/// Panics unless `guard` pins crossbeam-epoch's default collector, the one
/// the cell retires values to (see "Which guards" in the
/// [module documentation](self)).
#[inline]
#[track_caller]
fn check_guard(guard: &Guard) {
    let ours = guard
        .collector()
        .is_some_and(|c| c == epoch::default_collector());
    assert!(
        ours,
        "ConfigCell: the guard must pin crossbeam-epoch's default collector \
         (crossbeam_epoch::pin()); a guard of another collector, or the \
         unprotected one, does not keep the cell's values alive"
    );
}

impl<T> ConfigCell<T> {
    /// A cell holding `value`. Nothing is allocated until the first write.
    pub fn new(value: T) -> Self {
        ConfigCell {
            first: value,
            current: Atomic::null(),
        }
    }

    /// The value in force, valid while `guard` is held (pin with
    /// [`crossbeam_epoch::pin`]). A reader that needs several values from
    /// one configuration loads once and reads them all from the reference.
    ///
    /// # Panics
    ///
    /// If `guard` does not pin crossbeam-epoch's default collector (see
    /// "Which guards" in the [module documentation](self)).
    #[inline]
    #[track_caller]
    pub fn load<'g>(&'g self, guard: &'g Guard) -> &'g T {
        check_guard(guard);
        self.load_pinned(guard)
    }

    /// [`load`](Self::load) with a guard known to pin the default collector.
    #[inline]
    fn load_pinned<'g>(&'g self, guard: &'g Guard) -> &'g T {
        // ordering: Acquire, pairs with the Release of the compare-and-swap
        // that published the value, so its fields are visible whole.
        let shared = self.current.load(Ordering::Acquire, guard);
        // SAFETY: a non-null value is retired only after it is unlinked, to
        // the default collector (`check_guard` refuses any other guard), so
        // it is not freed while `guard` pins this thread on that collector;
        // `&'g self` keeps the cell (whose drop frees the value in force)
        // alive as long as the reference.
        match unsafe { shared.as_ref() } {
            Some(node) => &node.value,
            None => &self.first,
        }
    }

    /// Whether the value in force is still the one the cell was made with.
    /// Once false, false for ever.
    #[inline(always)]
    pub fn is_first(&self) -> bool {
        // SAFETY: the pointer is only compared with null, never
        // dereferenced, so no guard is needed to keep anything alive.
        let unprotected = unsafe { epoch::unprotected() };
        // ordering: Acquire, so that a caller that goes on to read the value
        // in force through `load` sees at least this write.
        self.current.load(Ordering::Acquire, unprotected).is_null()
    }

    /// Runs `f` on the value in force. While no write ever happened this is
    /// one load and no pin; after the first write the thread is pinned for
    /// the call.
    #[inline(always)]
    pub fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.read())
    }

    /// The value in force, held for as long as the returned [`Read`] lives:
    /// while no write ever happened, one load and no pin; after the first
    /// write the `Read` holds a pin of this thread.
    #[inline(always)]
    pub fn read(&self) -> Read<'_, T> {
        if self.is_first() {
            // `first` is never freed before the cell, and a write never
            // changes it: reading it is reading the value in force before
            // that write.
            Read {
                value: &self.first,
                _guard: None,
            }
        } else {
            self.read_pinned()
        }
    }

    /// [`read`](Self::read) after a write: out of line, so that the path of
    /// a cell never written stays small.
    #[cold]
    #[inline(never)]
    fn read_pinned(&self) -> Read<'_, T> {
        let guard = epoch::pin();
        let value: *const T = self.load_pinned(&guard);
        Read {
            // SAFETY: the value stays alive while `guard` pins this thread
            // (see `load`), and the guard lives in the `Read` beside the
            // reference, dropped after it is last usable; moving a `Guard`
            // does not unpin. `Read` is not `Send` (the guard is not), so it
            // stays on this thread.
            value: unsafe { &*value },
            _guard: Some(guard),
        }
    }

    /// The value, taken out of the cell.
    pub fn into_inner(self) -> T {
        let this = core::mem::ManuallyDrop::new(self);
        // SAFETY: we own the cell, so no reader holds the value in force and
        // no guard is needed.
        let shared = this
            .current
            .load(Ordering::Relaxed, unsafe { epoch::unprotected() });
        // SAFETY: `this` is never used again and its drop does not run, so
        // `first` is read out exactly once.
        let first = unsafe { core::ptr::read(&this.first) };
        if shared.is_null() {
            first
        } else {
            drop(first);
            // SAFETY: as above; a non-null value is owned by the cell.
            unsafe { shared.into_owned() }.into_box().value
        }
    }

    /// Whether `value` is the value `stored` holds (`first` for null).
    /// Stored values are nodes that are never zero-sized, so distinct
    /// values have distinct addresses (see [`Node`]).
    fn is_stored(&self, value: &T, stored: Shared<'_, Node<T>>) -> bool {
        if stored.is_null() {
            core::ptr::eq(value, &self.first)
        } else {
            // `Node` is `repr(C)` with the value first: the node's address
            // is its value's.
            core::ptr::eq(
                core::ptr::from_ref(value).cast::<u8>(),
                stored.as_raw().cast::<u8>(),
            )
        }
    }
}

impl<T: Send + Sync + 'static> ConfigCell<T> {
    /// Replaces the value; the old one is freed once no reader can see it.
    pub fn store(&self, value: T) {
        let guard = epoch::pin();
        let _ = self.swap(value, &guard);
    }

    /// Replaces the value and returns the old one, readable while `guard` is
    /// held and freed after (the first value lives as long as the cell).
    ///
    /// # Panics
    ///
    /// If `guard` does not pin crossbeam-epoch's default collector (see
    /// "Which guards" in the [module documentation](self)).
    #[track_caller]
    pub fn swap<'g>(&'g self, value: T, guard: &'g Guard) -> &'g T {
        check_guard(guard);
        // ordering: AcqRel. Release publishes the new value whole; Acquire
        // makes the old one's fields visible to the reference returned.
        let old = self
            .current
            .swap(Node::boxed(value), Ordering::AcqRel, guard);
        // SAFETY: see `retire`.
        unsafe { self.retire(old, guard) }
    }

    /// Hands a value unlinked by a write to the collector and returns it.
    ///
    /// # Safety
    ///
    /// `old` was the value in force until a write by this thread unlinked
    /// it, so no reader pinned after that write can load it; `guard` pins
    /// the default collector (checked by the caller).
    unsafe fn retire<'g>(&'g self, old: Shared<'g, Node<T>>, guard: &'g Guard) -> &'g T {
        // SAFETY: by the contract `old` is unlinked; `defer_destroy` frees
        // it only once every thread pinned on the default collector before
        // the write (including us, through `guard`) has unpinned, and every
        // reader pins that collector. `T: Send + 'static` lets another
        // thread drop it later. Null is `first`, owned by the cell.
        unsafe {
            match old.as_ref() {
                Some(node) => {
                    guard.defer_destroy(old);
                    &node.value
                }
                None => &self.first,
            }
        }
    }

    /// Replaces the value with `new` if the value in force is still
    /// `current` (the same object, compared by address, as returned by
    /// [`load`](Self::load), [`swap`](Self::swap) or this method; every
    /// value the cell stores has an address of its own, zero-sized ones
    /// included). Returns the new value in force, or gives `new` back when
    /// another write came first.
    ///
    /// # Errors
    ///
    /// `Err(new)` when `current` is no longer the value in force.
    ///
    /// # Panics
    ///
    /// If `guard` does not pin crossbeam-epoch's default collector (see
    /// "Which guards" in the [module documentation](self)).
    #[track_caller]
    pub fn compare_and_set<'g>(
        &'g self,
        current: &'g T,
        new: T,
        guard: &'g Guard,
    ) -> Result<&'g T, T> {
        check_guard(guard);
        // ordering: Acquire, as in `load`: the pointer loaded here is the
        // one exchanged and, on success, retired.
        let expected = self.current.load(Ordering::Acquire, guard);
        if !self.is_stored(current, expected) {
            return Err(new);
        }
        // ordering: AcqRel on success, as in `swap`; Acquire on failure so
        // that a caller may read the value that won.
        match self.current.compare_exchange(
            expected,
            Node::boxed(new),
            Ordering::AcqRel,
            Ordering::Acquire,
            guard,
        ) {
            Ok(installed) => {
                // SAFETY: `expected` is now unlinked by our exchange; the
                // installed value is not null and is in force.
                unsafe {
                    self.retire(expected, guard);
                    Ok(&installed.deref().value)
                }
            }
            Err(e) => Err(e.new.into_box().value),
        }
    }

    /// Replaces the value with what `f` makes of the value in force,
    /// retrying `f` on the newer value when another write came first. When
    /// `f` refuses (a configuration builder's [`ConfigError`](crate::ConfigError),
    /// for example), nothing changes and its error is returned. On success
    /// returns what `f` made of the value it replaced, with that value
    /// (readable while `guard` is held).
    ///
    /// # Errors
    ///
    /// The first error `f` returns.
    ///
    /// # Panics
    ///
    /// If `guard` does not pin crossbeam-epoch's default collector (see
    /// "Which guards" in the [module documentation](self)).
    #[track_caller]
    pub fn update_with<'g, E>(
        &'g self,
        guard: &'g Guard,
        mut f: impl FnMut(&T) -> Result<T, E>,
    ) -> Result<(&'g T, &'g T), E> {
        let mut current = self.load(guard);
        loop {
            let new = f(current)?;
            match self.compare_and_set(current, new, guard) {
                Ok(installed) => return Ok((current, installed)),
                Err(_) => current = self.load(guard),
            }
        }
    }

    /// [`update_with`](Self::update_with) under a pin of its own.
    ///
    /// # Errors
    ///
    /// The first error `f` returns.
    pub fn update<E>(&self, f: impl FnMut(&T) -> Result<T, E>) -> Result<(), E> {
        let guard = epoch::pin();
        self.update_with(&guard, f).map(|_| ())
    }
}

impl<T> Drop for ConfigCell<T> {
    fn drop(&mut self) {
        let current = core::mem::replace(&mut self.current, Atomic::null());
        // SAFETY: `&mut self` means no reader holds a reference into the
        // cell (`load` ties its result to `&self`); older values were handed
        // to the collector already. Null: `first` drops with the cell.
        let shared = current.load(Ordering::Relaxed, unsafe { epoch::unprotected() });
        if !shared.is_null() {
            // SAFETY: as above, the value in force is owned by the cell.
            drop(unsafe { shared.into_owned() });
        }
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
        assert!(cell.is_first());
        {
            let guard = epoch::pin();
            assert_eq!(cell.swap(Tracked(2, drops.clone()), &guard).0, 1);
            assert!(!cell.is_first());
            let old = cell.swap(Tracked(3, drops.clone()), &guard);
            assert_eq!(old.0, 2);
            assert_eq!(cell.load(&guard).0, 3);
            // Still readable: we are pinned. The first value lives in the
            // cell and is never retired.
            assert_eq!(drops.load(Ordering::SeqCst), 0);
        }
        // Flushing the collector eventually frees the second (bounded tries;
        // tests running beside this one pin the same collector, so give
        // them time to unpin).
        for _ in 0..100_000 {
            if drops.load(Ordering::SeqCst) == 1 {
                break;
            }
            epoch::pin().flush();
            std::thread::yield_now();
        }
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        drop(cell);
        assert_eq!(
            drops.load(Ordering::SeqCst),
            3,
            "the first and the last go with the cell"
        );
    }

    #[test]
    fn into_inner_takes_the_value_in_force_and_drops_the_first() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = ConfigCell::new(Tracked(1, drops.clone()));
        cell.store(Tracked(2, drops.clone()));
        let value = cell.into_inner();
        assert_eq!(value.0, 2);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert_eq!(ConfigCell::new(7u8).into_inner(), 7);
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
