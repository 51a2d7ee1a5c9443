//! The segment's memory: sealed memfds and typed views of their mappings.
//!
//! The server creates every memfd ([`Mapping::create`]), maps it, seals it
//! and hands the descriptor to the client it belongs to; the client maps it
//! ([`Mapping::open`]) and closes the descriptor. Seals are properties of
//! the file, so they hold for every descriptor of it, however obtained.

use std::io;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;

use memmap2::{MmapOptions, MmapRaw};

use crate::layout::{ClientCtl, HEADER_SIZE, Header, Layout};
use crate::ring::{RingRef, Slot};
use crate::sys;

/// One mapping of a whole memfd.
pub(crate) struct Mapping {
    map: MmapRaw,
}

impl Mapping {
    /// Creates a memfd of `len` bytes (zero-filled), maps it read-write,
    /// then adds `seals`: a seal against future writes leaves this mapping
    /// writable and refuses any later one.
    pub(crate) fn create(tag: &str, len: usize, seals: libc::c_int) -> io::Result<(OwnedFd, Self)> {
        let fd = sys::memfd(tag, len as u64)?;
        let map = MmapOptions::new().len(len).map_raw(&fd)?;
        sys::add_seals(&fd, seals)?;
        Ok((fd, Self { map }))
    }

    /// Maps the memfd `fd`, which must be exactly `len` bytes and sealed
    /// against shrinking, read-write or read-only.
    pub(crate) fn open(fd: &OwnedFd, len: usize, writable: bool) -> io::Result<Self> {
        // The seal first: a size read from a file that can still shrink
        // says nothing of the size at the first access (a SIGBUS).
        if sys::seals(fd)? & libc::F_SEAL_SHRINK == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "memfd is not sealed against shrinking",
            ));
        }
        let found = sys::file_len(fd)?;
        if found != len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("memfd is {found} bytes, expected {len}"),
            ));
        }
        let opts = {
            let mut o = MmapOptions::new();
            o.len(len);
            o
        };
        let map = if writable {
            opts.map_raw(fd)?
        } else {
            opts.map_raw_read_only(fd)?
        };
        Ok(Self { map })
    }

    fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// The server's header (read-write in the server, read-only in clients).
pub(crate) struct HeaderMap(pub(crate) Mapping);

impl HeaderMap {
    pub(crate) fn header(&self) -> &Header {
        debug_assert!(self.0.len() >= HEADER_SIZE);
        // SAFETY: the mapping is at least HEADER_SIZE bytes (checked by
        // `Mapping::open`'s exact length, or created so), page-aligned, and
        // lives as long as `self`. Header is made only of atomics, so shared
        // mutation by the server is fine and any bit pattern is valid.
        unsafe { &*self.0.base().cast::<Header>() }
    }
}

/// One client's region, with the geometry it was made for.
pub(crate) struct RegionMap {
    map: Mapping,
    layout: Layout,
}

impl RegionMap {
    /// `map` must be exactly `layout.region` bytes.
    pub(crate) fn new(map: Mapping, layout: Layout) -> Self {
        assert_eq!(map.len(), layout.region, "region mapping of the wrong size");
        Self { map, layout }
    }

    pub(crate) fn ctl(&self) -> &ClientCtl {
        // SAFETY: the region starts with a ClientCtl (CTL_SIZE ≤ region,
        // checked by `new`), page-aligned, made of atomics only.
        unsafe { &*self.map.base().cast::<ClientCtl>() }
    }

    fn ring<T>(&self, offset: usize) -> RingRef<T> {
        // SAFETY: the ring lies within the region (Layout::new sized it),
        // which `new` checked is exactly the mapping; slots are 64-byte
        // aligned at these offsets; a fresh memfd is zero-filled and
        // all-zero is a valid Slot (atomics and a FromBytes payload). Views
        // are only held by the Server/Client that owns this RegionMap, next
        // to it, so the mapping outlives them.
        unsafe {
            let p = self.map.base().add(offset).cast::<Slot<T>>();
            RingRef::new(NonNull::new_unchecked(p), self.layout.depth)
        }
    }

    pub(crate) fn req_ring<T>(&self) -> RingRef<T> {
        self.ring(self.layout.req_offset())
    }

    pub(crate) fn resp_ring<T>(&self) -> RingRef<T> {
        self.ring(self.layout.resp_offset())
    }

    /// Start and length of the whole region in this process.
    pub(crate) fn bytes(&self) -> (*mut u8, usize) {
        (self.map.base(), self.map.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a peer hands over is mapped only if it is sealed against
    /// shrinking (checked before its size: the size of a file that can
    /// still shrink says nothing) and exactly as long as expected.
    #[test]
    fn an_unsealed_or_wrongly_sized_memfd_is_refused() {
        let unsealed = sys::memfd("ipc-test", 4096).unwrap();
        let e = Mapping::open(&unsealed, 4096, false)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("not sealed"), "{e}");
        let sealed = sys::memfd("ipc-test", 4096).unwrap();
        sys::add_seals(&sealed, libc::F_SEAL_SHRINK).unwrap();
        let e = Mapping::open(&sealed, 8192, false).err().expect("refused");
        assert!(e.to_string().contains("4096 bytes, expected 8192"), "{e}");
        assert_eq!(Mapping::open(&sealed, 4096, true).unwrap().len(), 4096);
    }
}
