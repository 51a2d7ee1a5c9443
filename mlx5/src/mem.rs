//! Page-aligned, zeroed memory shared between software and a device.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;

use crate::error::Error;

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
    /// `len` zeroed bytes (at least one page is allocated); an error, not
    /// a panic or an abort, when `len` rounded up to a page is more than an
    /// allocation can hold or the allocator refuses it.
    pub(crate) fn zeroed(len: usize) -> Result<DmaBuf, Error> {
        let layout = len
            .max(1)
            .checked_next_multiple_of(PAGE)
            .and_then(|size| Layout::from_size_align(size, PAGE).ok())
            .ok_or_else(|| {
                Error::InvalidAttr(format!(
                    "a buffer of {len} bytes is larger than one allocation can be"
                ))
            })?;
        // SAFETY: layout has non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or_else(|| {
            Error::InvalidAttr(format!(
                "cannot allocate a buffer of {len} bytes (the allocator refused)"
            ))
        })?;
        Ok(DmaBuf { ptr, len })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        // Cannot overflow: `zeroed` checked it.
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
