//! The one place that decides where atomics come from.
//!
//! Normal builds take them from [`portable_atomic`] (so that every target with
//! compare-and-swap works, including those without native 64-bit atomics);
//! builds with `--cfg tenlives_loom` take them from [`loom`] so that the loom
//! models in `loom-tests/` explore every interleaving of the real engine code.
//! No other file names the origin of an atomic type: they all import
//! `crate::sync::*`.

#[cfg(not(tenlives_loom))]
pub(crate) use portable_atomic::AtomicU64;

#[cfg(tenlives_loom)]
pub(crate) use loom::sync::atomic::AtomicU64;

#[cfg(all(feature = "alloc", tenlives_loom))]
pub(crate) use loom::sync::atomic::AtomicPtr;
/// The rate limiter's pointer to its current quota (live configuration).
#[cfg(all(feature = "alloc", not(tenlives_loom)))]
pub(crate) use portable_atomic::AtomicPtr;

pub(crate) use core::sync::atomic::Ordering;

#[cfg(not(tenlives_loom))]
pub(crate) use core::sync::atomic::fence;
#[cfg(tenlives_loom)]
pub(crate) use loom::sync::atomic::fence;

/// Hints the CPU that we are in a retry loop. Under loom it yields to the
/// model scheduler instead, so that a CAS loop cannot spin forever in a model.
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(not(tenlives_loom))]
    core::hint::spin_loop();
    #[cfg(tenlives_loom)]
    loom::thread::yield_now();
}

/// An `UnsafeCell` that loom can check: `with_mut` hands out `&mut T`, and the
/// caller promises (in a `SAFETY:` comment) that nothing else can be inside
/// `with_mut` on the same cell at the same time.
#[derive(Debug)]
pub(crate) struct ExclusiveCell<T> {
    #[cfg(not(tenlives_loom))]
    inner: core::cell::UnsafeCell<T>,
    #[cfg(tenlives_loom)]
    inner: loom::cell::UnsafeCell<T>,
}

impl<T> ExclusiveCell<T> {
    pub(crate) fn new(value: T) -> Self {
        ExclusiveCell {
            #[cfg(not(tenlives_loom))]
            inner: core::cell::UnsafeCell::new(value),
            #[cfg(tenlives_loom)]
            inner: loom::cell::UnsafeCell::new(value),
        }
    }

    /// # Safety
    ///
    /// No other call to `with_mut` or `with` on this cell may overlap this one.
    pub(crate) unsafe fn with_mut<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        #[cfg(not(tenlives_loom))]
        {
            // SAFETY: the caller guarantees exclusive access for this call.
            f(unsafe { &mut *self.inner.get() })
        }
        #[cfg(tenlives_loom)]
        {
            // SAFETY: the caller guarantees exclusive access; loom checks it.
            self.inner.with_mut(|p| f(unsafe { &mut *p }))
        }
    }

    /// # Safety
    ///
    /// No call to `with_mut` on this cell may overlap this one.
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    pub(crate) unsafe fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        #[cfg(not(tenlives_loom))]
        {
            // SAFETY: the caller guarantees no concurrent writer.
            f(unsafe { &*self.inner.get() })
        }
        #[cfg(tenlives_loom)]
        {
            // SAFETY: the caller guarantees no concurrent writer; loom checks it.
            self.inner.with(|p| f(unsafe { &*p }))
        }
    }
}

/// Epoch-based reclamation: crossbeam-epoch in normal builds. Under loom the
/// models check the table's atomic protocol, not crossbeam's (which has its
/// own loom tests), so retired memory is simply never reused there.
#[cfg(all(feature = "std", not(tenlives_loom)))]
pub(crate) mod epoch {
    pub(crate) use crossbeam_epoch::{Guard, pin};
}

/// Under loom: pinning does nothing and deferred work never runs (so no
/// retired slot is ever reused inside a model).
#[cfg(tenlives_loom)]
pub(crate) mod epoch {
    pub(crate) struct Guard;

    // Like crossbeam's guard, it unpins on drop (here: nothing to do).
    impl Drop for Guard {
        fn drop(&mut self) {}
    }

    impl Guard {
        pub(crate) fn defer<F: FnOnce() -> R + Send + 'static, R>(&self, f: F) {
            core::mem::forget(f);
        }

        pub(crate) fn flush(&self) {}
    }

    pub(crate) fn pin() -> Guard {
        Guard
    }
}
