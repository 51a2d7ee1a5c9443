//! Page-aligned, zeroed memory shared between software and a device.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;

/// Alignment of every buffer: a page, as verbs allocates queue buffers.
pub(crate) const PAGE: usize = 4096;

/// An owned, page-aligned, zeroed allocation. The device side holds raw
/// pointers into it; the owner keeps it alive until the device has
/// forgotten them (see the Drop orders in `qp`, `cq`, `srq`, `mr`).
#[derive(Debug)]
pub(crate) struct DmaBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: DmaBuf is an owned allocation like Box<[u8]>; concurrent access
// goes through raw pointers under the protocols of the owning queue.
unsafe impl Send for DmaBuf {}
// SAFETY: as above; &DmaBuf exposes only the raw pointer.
unsafe impl Sync for DmaBuf {}

impl DmaBuf {
    /// `len` zeroed bytes (at least one page is allocated).
    pub(crate) fn zeroed(len: usize) -> DmaBuf {
        let size = len.max(1).next_multiple_of(PAGE);
        let layout = Layout::from_size_align(size, PAGE).expect("buffer size overflows");
        // SAFETY: layout has non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        DmaBuf { ptr, len }
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        let size = self.len.max(1).next_multiple_of(PAGE);
        // SAFETY: allocated in `zeroed` with this exact layout.
        unsafe {
            dealloc(
                self.ptr.as_ptr(),
                Layout::from_size_align_unchecked(size, PAGE),
            )
        }
    }
}
