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
}
