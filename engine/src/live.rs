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
    pub(crate) fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.0)
    }

    pub(crate) fn get_mut(&mut self) -> &mut T {
        &mut self.0
    }
}
