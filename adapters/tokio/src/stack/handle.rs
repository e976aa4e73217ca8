//! [`Handle`]: how a stack's layer, services and requests reach its
//! [`Policies`](super::Policies): a counted `Arc`, or, for a stack made
//! with [`StackLayer::into_static`](super::StackLayer::into_static), a
//! reference that is never counted because the policies are never freed.
//!
//! A counted clone or drop is an atomic read-modify-write of the one shared
//! count: on two threads admitting through one stack, that line moves
//! between the cores on every request. A static handle copies a pointer.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::Arc;

/// A counted or a never-freed reference to `P`.
pub(crate) struct Handle<P> {
    ptr: NonNull<P>,
    /// Whether this handle owns one strong count of the `Arc` at `ptr`.
    counted: bool,
    /// Owns (or behaves as if it owned) an `Arc<P>`: the same auto traits
    /// and drop check.
    _arc: PhantomData<Arc<P>>,
}

// SAFETY: a `Handle` gives shared access to `P` from any thread and may drop
// it on any thread, exactly as an `Arc<P>` does; it is Send and Sync under
// the same bounds as `Arc<P>`.
unsafe impl<P: Send + Sync> Send for Handle<P> {}
// SAFETY: as above.
unsafe impl<P: Send + Sync> Sync for Handle<P> {}

impl<P> Handle<P> {
    /// A counted handle owning `arc`'s strong count.
    pub(crate) fn new(arc: Arc<P>) -> Self {
        Handle {
            // SAFETY: `Arc::into_raw` never returns null.
            ptr: unsafe { NonNull::new_unchecked(Arc::into_raw(arc).cast_mut()) },
            counted: true,
            _arc: PhantomData,
        }
    }

    /// This handle's `P`, never freed from now on: one strong count is
    /// leaked, and the handle (and its clones) count nothing.
    pub(crate) fn into_static(self) -> Self {
        let mut this = self;
        if this.counted {
            // The count this handle owned is leaked: the allocation is
            // never freed, so the pointer stays valid for as long as `P`'s
            // own lifetimes allow, which bound every handle's type.
            this.counted = false;
        }
        this
    }

    /// Whether clones of this handle touch a reference count.
    pub(crate) fn is_counted(&self) -> bool {
        self.counted
    }
}

impl<P> Clone for Handle<P> {
    #[inline]
    fn clone(&self) -> Self {
        if self.counted {
            // SAFETY: `ptr` came from `Arc::into_raw` and this handle owns
            // one strong count, so the allocation is alive.
            unsafe { Arc::increment_strong_count(self.ptr.as_ptr()) };
        }
        Handle {
            ptr: self.ptr,
            counted: self.counted,
            _arc: PhantomData,
        }
    }
}

impl<P> Drop for Handle<P> {
    #[inline]
    fn drop(&mut self) {
        if self.counted {
            // SAFETY: `ptr` came from `Arc::into_raw` and this handle owns
            // one strong count, which it gives back exactly once here.
            unsafe { Arc::decrement_strong_count(self.ptr.as_ptr()) };
        }
    }
}

impl<P> Deref for Handle<P> {
    type Target = P;
    #[inline]
    fn deref(&self) -> &P {
        // SAFETY: a counted handle owns a strong count; a static one points
        // at an allocation whose count was leaked. Either way it is alive,
        // and only shared references to `P` are ever made.
        unsafe { self.ptr.as_ref() }
    }
}

impl<P: fmt::Debug> fmt::Debug for Handle<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    struct Counted<'a>(&'a AtomicUsize);

    impl Drop for Counted<'_> {
        fn drop(&mut self) {
            // ordering: Relaxed; a test's counter.
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_counted_handle_frees_with_its_last_clone() {
        let drops = AtomicUsize::new(0);
        let a = Handle::new(Arc::new(Counted(&drops)));
        let b = a.clone();
        assert!(a.is_counted() && b.is_counted());
        drop(a);
        assert_eq!(drops.load(Ordering::Relaxed), 0);
        drop(b);
        assert_eq!(drops.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_static_handle_is_never_freed_and_counts_nothing() {
        let drops = AtomicUsize::new(0);
        let a = Handle::new(Arc::new(Counted(&drops))).into_static();
        let b = a.clone();
        assert!(!a.is_counted() && !b.is_counted());
        drop(a);
        drop(b);
        assert_eq!(drops.load(Ordering::Relaxed), 0, "never freed");
    }
}
