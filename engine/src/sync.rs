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

#[cfg(all(feature = "std", tenlives_loom))]
pub(crate) use loom::sync::atomic::AtomicU32;
/// The keyed rate limiter's index cells (a hash fragment and an entry number).
#[cfg(all(feature = "std", not(tenlives_loom)))]
pub(crate) use portable_atomic::AtomicU32;

#[cfg(tenlives_loom)]
pub(crate) use loom::sync::atomic::AtomicU64;

/// The rate limiter's state cell (two 64-bit halves updated together).
/// portable-atomic makes it lock-free where the target has a 128-bit
/// compare-and-swap: x86_64 with `cmpxchg16b` (known at compile time, or
/// detected at run time, then each operation is an indirect call), AArch64,
/// riscv64 with `zacas`, s390x, powerpc64 with quadword atomics. Elsewhere
/// (32-bit targets, x86_64 CPUs without `cmpxchg16b`) its `fallback` feature
/// emulates it with a global array of spin locks: still no allocation and
/// no blocking system call, but not lock-free.
#[cfg(not(tenlives_loom))]
pub(crate) use portable_atomic::AtomicU128;

#[cfg(tenlives_loom)]
pub(crate) use loom_u128::AtomicU128;

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

/// loom has no 128-bit atomic. This one is a loom `AtomicPtr` to an
/// immutable boxed value: every operation on the value is one operation on
/// the pointer with the ordering the caller asked for (a compare-and-swap
/// compares the value behind the pointer it read, then swaps the pointer
/// from exactly that one), so loom explores the same interleavings and the
/// same happens-before edges as for a real 128-bit atomic with those
/// orderings. The values are never written after they are boxed and never
/// freed (a model runs for a bounded number of operations), so reading one
/// through a stale pointer is always valid.
#[cfg(tenlives_loom)]
mod loom_u128 {
    use alloc::boxed::Box;
    use core::sync::atomic::Ordering;
    use loom::sync::atomic::AtomicPtr;

    pub(crate) struct AtomicU128 {
        ptr: AtomicPtr<u128>,
    }

    fn boxed(v: u128) -> *mut u128 {
        Box::into_raw(Box::new(v))
    }

    fn read(p: *mut u128) -> u128 {
        // SAFETY: every pointer the cell ever holds comes from `boxed`, is
        // never written again and never freed.
        unsafe { *p }
    }

    impl AtomicU128 {
        pub(crate) fn new(v: u128) -> Self {
            AtomicU128 {
                ptr: AtomicPtr::new(boxed(v)),
            }
        }

        pub(crate) fn load(&self, order: Ordering) -> u128 {
            read(self.ptr.load(order))
        }

        pub(crate) fn store(&self, v: u128, order: Ordering) {
            self.ptr.store(boxed(v), order);
        }

        pub(crate) fn compare_exchange(
            &self,
            current: u128,
            new: u128,
            success: Ordering,
            failure: Ordering,
        ) -> Result<u128, u128> {
            let mut p = self.ptr.load(failure);
            loop {
                let v = read(p);
                if v != current {
                    return Err(v);
                }
                let n = boxed(new);
                match self.ptr.compare_exchange(p, n, success, failure) {
                    Ok(_) => return Ok(v),
                    Err(q) => {
                        // SAFETY: `n` was never published.
                        drop(unsafe { Box::from_raw(n) });
                        p = q;
                    }
                }
            }
        }

        pub(crate) fn compare_exchange_weak(
            &self,
            current: u128,
            new: u128,
            success: Ordering,
            failure: Ordering,
        ) -> Result<u128, u128> {
            self.compare_exchange(current, new, success, failure)
        }

        pub(crate) fn fetch_update(
            &self,
            set: Ordering,
            fetch: Ordering,
            mut f: impl FnMut(u128) -> Option<u128>,
        ) -> Result<u128, u128> {
            let mut prev = self.load(fetch);
            while let Some(next) = f(prev) {
                match self.compare_exchange(prev, next, set, fetch) {
                    Ok(v) => return Ok(v),
                    Err(v) => prev = v,
                }
            }
            Err(prev)
        }

        pub(crate) fn fetch_or(&self, bits: u128, order: Ordering) -> u128 {
            let fetch = match order {
                Ordering::Release => Ordering::Relaxed,
                Ordering::AcqRel => Ordering::Acquire,
                o => o,
            };
            self.fetch_update(order, fetch, |v| Some(v | bits))
                .unwrap_or_else(|v| v)
        }
    }
}

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
