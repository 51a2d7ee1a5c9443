//! Atomics and cells used by the slot protocol, swapped for `loom`'s under
//! `--cfg ipc_loom` so the model checker sees every access of the protocol.
//!
//! Only the ring protocol ([`crate::ring`]) goes through this shim. The
//! segment header and client control blocks live in memory shared with other
//! processes and always use `std` atomics: their protocol is checked by the
//! process-boundary tests instead.

#[cfg(ipc_loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};

#[cfg(not(ipc_loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

#[cfg(ipc_loom)]
pub(crate) use loom::cell::UnsafeCell;

/// `std`'s cell with the closure-based access API of `loom::cell::UnsafeCell`.
#[cfg(not(ipc_loom))]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(ipc_loom))]
impl<T> UnsafeCell<T> {
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
