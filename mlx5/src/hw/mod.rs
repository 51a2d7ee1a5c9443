//! The rdma-core backend: mlx5 hardware driven through direct verbs, for the
//! control path only (UNVERIFIED ON HARDWARE, see the crate README).

mod async_event;
mod device;
mod doorbell;
pub(crate) mod ffi;

pub(crate) use device::{Cq, Device, Mr, Pd, Qp, Srq};
pub(crate) use doorbell::BlueFlame;

/// Size, alignment, field offset and field size of every rdma-core struct
/// the backend declares, and the value of every constant, keyed as
/// `tests/c/hw_layout.c` prints them from the real headers. For
/// `tests/hw_layout.rs` (the `testing` feature); not part of the API.
#[cfg(feature = "testing")]
pub fn layout_table() -> Vec<(&'static str, usize)> {
    ffi::layout_table()
}
