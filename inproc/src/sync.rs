//! Atomics, cells and `Arc` of the queue algorithms, replaced by `loom`'s
//! under `--cfg inproc_loom` so the model checker sees every access.

#[cfg(inproc_loom)]
pub(crate) use loom::sync::Arc;
#[cfg(inproc_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

#[cfg(not(inproc_loom))]
pub(crate) use std::sync::Arc;
#[cfg(not(inproc_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

#[cfg(inproc_loom)]
pub(crate) use loom::cell::UnsafeCell;

/// `std`'s cell with the closure-based access API of `loom::cell::UnsafeCell`.
#[cfg(not(inproc_loom))]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(inproc_loom))]
impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(core::cell::UnsafeCell::new(value))
    }

    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
