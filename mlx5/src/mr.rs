//! Protection domains and memory regions.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::backend::{MrHandle, PdHandle};
use crate::device::Context;
use crate::error::Error;
use crate::mem::DmaBuf;
use crate::prm::Access;
use crate::wqe::{Remote, Sge};

pub(crate) struct PdInner {
    pub(crate) ctx: Context,
    pub(crate) handle: PdHandle,
}

impl Drop for PdInner {
    fn drop(&mut self) {
        self.ctx.inner.backend.dealloc_pd(&self.handle);
    }
}

/// A protection domain: memory regions and QPs of one PD work together;
/// a key of another PD fails with a protection error.
#[derive(Clone)]
pub struct Pd {
    pub(crate) inner: Arc<PdInner>,
}

impl Pd {
    /// Allocates a protection domain on `ctx`.
    pub fn new(ctx: &Context) -> Result<Pd, Error> {
        let handle = ctx.inner.backend.alloc_pd()?;
        Ok(Pd {
            inner: Arc::new(PdInner {
                ctx: ctx.clone(),
                handle,
            }),
        })
    }

    /// The device this PD belongs to.
    pub fn context(&self) -> &Context {
        &self.inner.ctx
    }

    /// Allocates `len` zeroed, page-aligned bytes and registers them.
    pub fn alloc_mr(&self, len: usize, access: Access) -> Result<Mr, Error> {
        let buf = DmaBuf::zeroed(len)?;
        let ptr = buf.as_ptr();
        // SAFETY: `buf` is owned by the returned Mr and outlives its
        // registration (Mr::drop deregisters before the buffer is freed).
        unsafe { self.register_inner(ptr, len, access, Some(buf)) }
    }

    /// Registers memory the caller owns.
    ///
    /// # Safety
    ///
    /// `[addr, addr + len)` must stay allocated until the returned `Mr` is
    /// dropped, and the caller must not create Rust references to bytes
    /// the device may be writing (a posted receive, READ or atomic target,
    /// or a region peers may WRITE) until a completion says it is done.
    pub unsafe fn register(&self, addr: *mut u8, len: usize, access: Access) -> Result<Mr, Error> {
        // SAFETY: forwarded contract.
        unsafe { self.register_inner(addr, len, access, None) }
    }

    unsafe fn register_inner(
        &self,
        addr: *mut u8,
        len: usize,
        access: Access,
        buf: Option<DmaBuf>,
    ) -> Result<Mr, Error> {
        if len == 0 {
            return Err(Error::InvalidAttr("memory region of 0 bytes".into()));
        }
        // Verbs' rule (ibv_reg_mr(3): EINVAL): a region peers may write or
        // run atomics on must be locally writable too. Checked here so both
        // backends refuse it the same way.
        if (access.contains(Access::REMOTE_WRITE) || access.contains(Access::REMOTE_ATOMIC))
            && !access.contains(Access::LOCAL_WRITE)
        {
            return Err(Error::InvalidAttr(format!(
                "memory region access {access:?}: REMOTE_WRITE and REMOTE_ATOMIC need LOCAL_WRITE (ibv_reg_mr refuses it with EINVAL)"
            )));
        }
        // SAFETY: the caller's contract: the memory outlives the Mr, which
        // deregisters it first thing when dropped.
        let (handle, lkey, rkey) = unsafe {
            self.inner
                .ctx
                .inner
                .backend
                .reg_mr(&self.inner.handle, addr, len, access)?
        };
        Ok(Mr {
            pd: self.inner.clone(),
            handle,
            lkey,
            rkey,
            addr: addr as u64,
            len,
            access,
            _buf: buf,
        })
    }
}

/// A registered memory region: local key for WQEs posted here, remote key
/// for peers.
pub struct Mr {
    pd: Arc<PdInner>,
    handle: MrHandle,
    lkey: u32,
    rkey: u32,
    addr: u64,
    len: usize,
    access: Access,
    // Dropped after `handle` is deregistered (Drop below runs first).
    _buf: Option<DmaBuf>,
}

impl std::fmt::Debug for Mr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mr")
            .field("addr", &format_args!("{:#x}", self.addr))
            .field("len", &self.len)
            .field("lkey", &format_args!("{:#x}", self.lkey))
            .field("rkey", &format_args!("{:#x}", self.rkey))
            .finish()
    }
}

// SAFETY: Mr's raw memory is accessed only through raw-pointer copies whose
// ordering with the device is the caller's protocol (completions).
unsafe impl Send for Mr {}
// SAFETY: as above; no method hands out references into the region.
unsafe impl Sync for Mr {}

impl Mr {
    /// Local key.
    pub fn lkey(&self) -> u32 {
        self.lkey
    }
    /// Remote key.
    pub fn rkey(&self) -> u32 {
        self.rkey
    }
    /// Start address.
    pub fn addr(&self) -> u64 {
        self.addr
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the region is empty (never: registration refuses 0 bytes).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Access rights.
    pub fn access(&self) -> Access {
        self.access
    }
    /// Raw pointer to the first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr as *mut u8
    }

    fn check(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "range {offset}+{len} outside memory region of {} bytes",
            self.len
        );
    }

    /// An SGE for `len` bytes at `offset`. Panics if out of range (a
    /// programming error; the device would report a protection error).
    pub fn sge(&self, offset: usize, len: u32) -> Sge {
        self.check(offset, len as usize);
        Sge {
            addr: self.addr + offset as u64,
            len,
            lkey: self.lkey,
        }
    }

    /// The remote address peers use for `offset`.
    pub fn remote(&self, offset: usize) -> Remote {
        self.check(offset, 0);
        Remote {
            addr: self.addr + offset as u64,
            rkey: self.rkey,
        }
    }

    /// Copies `data` into the region at `offset`. Panics if the range is
    /// outside the region.
    ///
    /// # Safety
    ///
    /// The device must not be accessing those bytes while this runs: no
    /// WQE posted here that gathers from them (a WRITE or SEND not yet
    /// completed), and no peer's WRITE, READ or atomic on them, may be in
    /// flight. The device (the software device's thread, or the NIC's DMA)
    /// would race the copy, which no Rust code can order; a completion
    /// (this QP's, or the peer's word that it is done) is what says the
    /// device is done with them.
    pub unsafe fn write(&self, offset: usize, data: &[u8]) {
        self.check(offset, data.len());
        // SAFETY: in bounds (checked); raw copy, no reference into the
        // region; the caller excludes the device.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.as_ptr().add(offset), data.len())
        }
    }

    /// Copies bytes at `offset` into `out`. Panics if the range is outside
    /// the region.
    ///
    /// # Safety
    ///
    /// The device must not be writing those bytes while this runs: no
    /// receive, READ or atomic result posted here that scatters into them,
    /// and no peer's WRITE or atomic on them, may be in flight (a polled
    /// completion is what says one is done).
    pub unsafe fn read(&self, offset: usize, out: &mut [u8]) {
        self.check(offset, out.len());
        // SAFETY: in bounds (checked); raw copy, no reference into the
        // region; the caller excludes the device's writes.
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(offset), out.as_mut_ptr(), out.len())
        }
    }

    /// The 8 bytes at an 8-aligned `offset` as an atomic (memory that peers
    /// update with RDMA atomics; the software device operates on it in host
    /// byte order).
    pub fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        self.check(offset, 8);
        let p = self.as_ptr().wrapping_add(offset);
        assert!(
            (p as usize).is_multiple_of(8),
            "atomic at unaligned offset {offset}"
        );
        // SAFETY: in bounds, aligned, and the region lives as long as &self;
        // all device accesses to these bytes are atomic as well.
        unsafe { AtomicU64::from_ptr(p.cast()) }
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        self.pd.ctx.inner.backend.dereg_mr(&self.handle);
    }
}
