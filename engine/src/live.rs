//! Where a primitive keeps the configuration it can change at run time.
//!
//! With the `std` feature: a [`ConfigCell`](crate::config_cell::ConfigCell)
//! (changed through `&self`; the first value lives inline, so a primitive
//! whose configuration never changes pays one load and no pin). Without it
//! there is no epoch collector to free a replaced value safely, so the value
//! sits in place and is changed through `&mut self`.

#[cfg(feature = "std")]
pub(crate) use crate::config_cell::ConfigCell as Live;

/// The configuration, in place (no `std`: changed through `&mut self`).
#[cfg(not(feature = "std"))]
pub(crate) struct Live<T>(T);

#[cfg(not(feature = "std"))]
impl<T> Live<T> {
    pub(crate) fn new(value: T) -> Self {
        Live(value)
    }

    #[inline(always)]
    pub(crate) fn read(&self) -> &T {
        &self.0
    }

    pub(crate) fn get_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// What [`Layered`]'s changes report when the state was kept (the word
/// `CONFIG_CHANGED` events carry for "the window was kept").
pub(crate) const KEPT: u64 = u64::MAX;

/// A configuration with the state laid out for it (a window, for example):
/// state that can stay when the configuration changes, and must be rebuilt
/// when the layout does. The state of the first layout lives inline; a new
/// layout's state goes on the heap with the configuration that needs it
/// (`std` only; without `std` the inline state is replaced in place).
pub(crate) struct Layered<C, W> {
    own: W,
    era: Live<Era<C, W>>,
}

/// A configuration and the state it uses.
struct Era<C, W> {
    config: C,
    /// State of a layout other than the first one; `None`: the inline state.
    #[cfg(feature = "std")]
    state: Option<alloc::sync::Arc<W>>,
    #[cfg(not(feature = "std"))]
    state: core::marker::PhantomData<fn() -> W>,
}

impl<C, W> Layered<C, W> {
    pub(crate) fn new(config: C, state: W) -> Self {
        Layered {
            own: state,
            era: Live::new(Era {
                config,
                #[cfg(feature = "std")]
                state: None,
                #[cfg(not(feature = "std"))]
                state: core::marker::PhantomData,
            }),
        }
    }

    /// Runs `f` on the configuration in force and its state.
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(&C, &W) -> R) -> R {
        let read = self.era.read();
        // With `std` the read is a guard to dereference; without, already a
        // reference, which `Deref::deref` passes through.
        let era: &Era<C, W> = core::ops::Deref::deref(&read);
        #[cfg(feature = "std")]
        let state = era.state.as_deref().unwrap_or(&self.own);
        #[cfg(not(feature = "std"))]
        let state = &self.own;
        f(&era.config, state)
    }
}

#[cfg(feature = "std")]
impl<C: Send + Sync + 'static, W: Send + Sync + 'static> Layered<C, W> {
    /// Replaces the configuration with what `make` makes of the one in force
    /// (again if another change came first). `relayout(old config, old
    /// state, new config)` returns the new state when the layout changes,
    /// with a count of what it carried over, or `None` to keep the state.
    /// Returns that count, [`KEPT`] when the state was kept.
    pub(crate) fn update<E>(
        &self,
        mut make: impl FnMut(&C) -> Result<C, E>,
        mut relayout: impl FnMut(&C, &W, &C) -> Option<(W, u64)>,
    ) -> Result<u64, E> {
        let guard = crossbeam_epoch::pin();
        let mut carried = KEPT;
        self.era.update_with(&guard, |old| {
            let config = make(&old.config)?;
            let current = old.state.as_deref().unwrap_or(&self.own);
            let state = match relayout(&old.config, current, &config) {
                Some((fresh, count)) => {
                    carried = count;
                    Some(alloc::sync::Arc::new(fresh))
                }
                None => {
                    carried = KEPT;
                    old.state.clone()
                }
            };
            Ok(Era { config, state })
        })?;
        Ok(carried)
    }
}

#[cfg(not(feature = "std"))]
impl<C, W> Layered<C, W> {
    /// Replaces the configuration (through `&mut self`: no other thread can
    /// be reading it); `relayout` and the count returned as for the `std`
    /// version.
    pub(crate) fn set(
        &mut self,
        config: C,
        relayout: impl FnOnce(&C, &W, &C) -> Option<(W, u64)>,
    ) -> u64 {
        let era = self.era.get_mut();
        let carried = match relayout(&era.config, &self.own, &config) {
            Some((fresh, count)) => {
                self.own = fresh;
                count
            }
            None => KEPT,
        };
        era.config = config;
        carried
    }
}

/// A one-value mailbox between threads: [`put`](Self::put) leaves a value,
/// replacing one not yet taken; [`take`](Self::take) takes it. One swap
/// each, no lock; whoever swaps a pointer out owns the value behind it.
///
/// A value put by one thread may be taken by another, so the mailbox is
/// `Send` and `Sync` only for `T: Send` (its `AtomicPtr` alone would make it
/// both for any `T`; the `PhantomData` takes that away, the impls below give
/// it back with the bound).
#[cfg(feature = "alloc")]
pub(crate) struct Mailbox<T> {
    slot: crate::sync::AtomicPtr<T>,
    /// Owns a `T` behind a raw pointer: neither `Send` nor `Sync` by itself.
    _owns: core::marker::PhantomData<*mut T>,
}

// SAFETY: the mailbox owns at most one boxed `T`; sending the mailbox sends
// that value, which `T: Send` allows.
#[cfg(feature = "alloc")]
unsafe impl<T: Send> Send for Mailbox<T> {}

// SAFETY: through `&Mailbox` a thread can only move whole values in (`put`)
// and out (`take`, and `put` dropping the value it displaces), never borrow
// one, so sharing it moves values between threads and needs `T: Send`, not
// `T: Sync`.
#[cfg(feature = "alloc")]
unsafe impl<T: Send> Sync for Mailbox<T> {}

#[cfg(feature = "alloc")]
impl<T> Mailbox<T> {
    pub(crate) fn new() -> Self {
        Mailbox {
            slot: crate::sync::AtomicPtr::new(core::ptr::null_mut()),
            _owns: core::marker::PhantomData,
        }
    }

    pub(crate) fn put(&self, value: T) {
        let new = alloc::boxed::Box::into_raw(alloc::boxed::Box::new(value));
        // ordering: AcqRel. Release publishes the value to the taker;
        // Acquire sees the value displaced, which this thread now frees.
        let old = self.slot.swap(new, crate::sync::Ordering::AcqRel);
        if !old.is_null() {
            // SAFETY: the swap unlinked `old`, so this thread owns it; it
            // came from `Box::into_raw` in `put`.
            drop(unsafe { alloc::boxed::Box::from_raw(old) });
        }
    }

    pub(crate) fn take(&self) -> Option<T> {
        // ordering: Relaxed; only a shortcut for the empty case, the swap
        // below decides.
        if self.slot.load(crate::sync::Ordering::Relaxed).is_null() {
            return None;
        }
        // ordering: AcqRel; Acquire pairs with the Release of `put`.
        let taken = self
            .slot
            .swap(core::ptr::null_mut(), crate::sync::Ordering::AcqRel);
        // SAFETY: as in `put`: the swap made this thread the owner.
        (!taken.is_null()).then(|| *unsafe { alloc::boxed::Box::from_raw(taken) })
    }
}

#[cfg(feature = "alloc")]
impl<T> Drop for Mailbox<T> {
    fn drop(&mut self) {
        drop(self.take());
    }
}

#[cfg(all(test, feature = "alloc", not(tenlives_loom)))]
mod tests {
    use super::Mailbox;

    fn assert_send<T: Send>() {}
    fn assert_sync<T: Sync>() {}

    #[test]
    fn a_mailbox_of_send_values_is_send_and_sync() {
        assert_send::<Mailbox<u64>>();
        assert_sync::<Mailbox<u64>>();
        // `Cell` is `Send` but not `Sync`: a mailbox only moves values.
        assert_send::<Mailbox<core::cell::Cell<u64>>>();
        assert_sync::<Mailbox<core::cell::Cell<u64>>>();
    }

    /// A mailbox of non-`Send` values is neither `Send` nor `Sync`: checked
    /// by the trick of an ambiguous blanket impl (as `static_assertions`'
    /// `assert_not_impl_any!` does), which fails to compile if the bound
    /// ever stops excluding them.
    #[test]
    fn a_mailbox_of_rc_is_neither_send_nor_sync() {
        trait AmbiguousIfSend<A> {
            fn some_item() {}
        }
        impl<T: ?Sized> AmbiguousIfSend<()> for T {}
        impl<T: ?Sized + Send> AmbiguousIfSend<u8> for T {}
        trait AmbiguousIfSync<A> {
            fn some_item() {}
        }
        impl<T: ?Sized> AmbiguousIfSync<()> for T {}
        impl<T: ?Sized + Sync> AmbiguousIfSync<u8> for T {}

        type Rc = alloc::rc::Rc<u64>;
        <Mailbox<Rc> as AmbiguousIfSend<_>>::some_item();
        <Mailbox<Rc> as AmbiguousIfSync<_>>::some_item();
        let mailbox = Mailbox::new();
        mailbox.put(Rc::new(7));
        assert_eq!(mailbox.take().as_deref(), Some(&7));
    }
}
