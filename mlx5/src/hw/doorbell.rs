//! Ringing a hardware QP's send doorbell: the doorbell record, the
//! BlueFlame/UAR register, the barriers between them, and the lock of a
//! register several QPs share.
//!
//! # The sequence (libmlx5's `post_send_db`, step for step)
//!
//! | step | what | barrier before it (x86_64) |
//! |---|---|---|
//! | 1 | WQEs written to the SQ buffer (normal memory) | — |
//! | 2 | doorbell record word 1 = be32 `pi & 0xffff` | `udma_to_device_barrier` (compiler barrier) |
//! | 3 | take the register's lock (if it has a BlueFlame buffer) | — |
//! | 4 | BlueFlame copy of the WQE, or its first 8 bytes, to `reg + offset` (write-combining MMIO) | `mmio_wc_start`: the lock's `lock cmpxchg`, or `sfence` when no lock is taken |
//! | 5 | `mmio_flush_writes` (`sfence`), still under the lock | — |
//! | 6 | `offset ^= size` (the other half next time), unlock | — |
//!
//! # Barriers per architecture
//!
//! rdma-core's `util/udma_barrier.h` defines, for x86_64:
//! `udma_to_device_barrier` = `asm volatile("" ::: "memory")`,
//! `mmio_flush_writes` = `sfence`, `mmio_wc_start` = `mmio_flush_writes`,
//! and `mmio_wc_spinlock` skips `mmio_wc_start` on x86 because the locked
//! instruction of the spinlock already orders (and drains) write-combining
//! stores. We use exactly these, as inline asm.
//!
//! On aarch64 the same macros are `dmb oshst` (to device), `dsb st` (flush,
//! and WC start inside the lock too) and `dmb oshld` (from device, after a
//! CQE's owner bit). `fence(SeqCst)` there is `dmb ish`, which orders only
//! for the inner-shareable domain and is not a barrier for the device. The
//! doorbell path here could use the aarch64 instructions, but completion
//! polling and the receive doorbell records (shared with the software
//! device, `cq.rs`, `qp.rs`, `srq.rs`) rely on `Acquire`/`Release`, which
//! rdma-core does not consider enough for DMA on aarch64, and none of it
//! can be built or run for aarch64 here. So the hardware backend supports
//! x86_64 only: [`Arch::check`] refuses every other target when a device is
//! opened (the software device stays portable), and [`Arch`] is
//! uninhabited there, so no doorbell can be rung by construction.
//!
//! # Shared registers: lock, as libmlx5 does
//!
//! `mlx5dv_init_obj` gives a QP its register (`bf.reg`) and the size of
//! each of its two BlueFlame halves (`bf.size`, 0 for a doorbell-only
//! register), but not whether other QPs use the same register. libmlx5
//! decides that when it creates the QP: the first QPs of a context get
//! dedicated registers, later ones share a few registers between them
//! (`mlx5_get_qp_uar`, or `need_uuar_lock` with the kernel's static
//! registers), and for shared ones it sets `bf->need_lock` and serialises
//! the copy with `bf->lock`. That flag and lock are private to libmlx5.
//!
//! A dedicated register could be asked for with a thread domain
//! (`ibv_alloc_td` + `ibv_alloc_parent_domain`, then the QP created on the
//! parent domain), but both are `static inline` in verbs.h and reach the
//! provider through the private `verbs_context`, which this backend does
//! not touch (see `ffi.rs`). And even a QP that holds a register alone
//! today cannot know that no later QP will be given the same one while it
//! posts from another thread.
//!
//! So we lock as libmlx5 does for shared registers, with one lock per
//! register shared by every QP of the device that uses it: the device keeps
//! one [`BlueFlame`] per register address (two QPs with the same `bf.reg`
//! share libmlx5's `struct mlx5_bf`), and every QP on that register holds
//! it. The lock is taken for every ring of a register that has BlueFlame
//! halves, dedicated or not (an uncontended `lock cmpxchg`, which on x86
//! also replaces the `sfence` before the copy). The toggling half
//! (`offset`) lives with the register, as `bf->offset` does, so that two QPs
//! sharing it alternate halves between them. A doorbell-only register
//! (`bf.size == 0`, libmlx5's `uuarn == 0` or its non-cached UAR) needs no
//! lock, as in libmlx5: each doorbell is one aligned 8-byte store, which
//! cannot interleave with another, and there is no half to toggle.
//!
//! Only our own code posts on this context's QPs (nothing calls
//! `ibv_post_send`), so these locks see every writer of the registers.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::error::Error;

/// Proof that this target has the doorbell barriers this module uses:
/// x86_64 only (see the module docs). Uninhabited elsewhere, so no
/// [`BlueFlame`] (and no hardware device) can exist there.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Arch(ArchInner);

#[cfg(target_arch = "x86_64")]
type ArchInner = ();
#[cfg(not(target_arch = "x86_64"))]
type ArchInner = std::convert::Infallible;

impl Arch {
    /// `Ok` on x86_64; elsewhere the error a hardware open reports.
    pub(crate) fn check() -> Result<Arch, Error> {
        #[cfg(target_arch = "x86_64")]
        {
            Ok(Arch(()))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Err(Error::NoDevice {
                reason: format!(
                    "the hardware backend supports x86_64 only, not {}: the DMA \
                     and MMIO barriers of the doorbell and completion paths are \
                     written and checked for x86_64",
                    std::env::consts::ARCH
                ),
            })
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod barrier {
    //! The x86_64 definitions of rdma-core's `util/udma_barrier.h`.

    /// `udma_to_device_barrier`: a compiler barrier. x86 does not reorder
    /// stores to normal memory with each other, so the device sees the
    /// WQEs before the doorbell record once the compiler keeps the order.
    #[inline(always)]
    pub(super) fn to_device() {
        // SAFETY: an empty asm statement; without `nomem` the compiler
        // assumes it reads and writes any memory the program has exposed
        // (the SQ buffer is), so no store moves across it.
        unsafe { core::arch::asm!("", options(nostack, preserves_flags)) };
    }

    /// `mmio_flush_writes` (and `mmio_wc_start`): `sfence`. Drains the
    /// write-combining buffers and orders every earlier store before
    /// every later one, write-combining ones included.
    #[inline(always)]
    pub(super) fn flush_writes() {
        // SAFETY: `sfence` only orders stores; it touches no register or
        // memory of ours (memory clobber: no `nomem`).
        unsafe { core::arch::asm!("sfence", options(nostack, preserves_flags)) };
    }
}

/// One UAR/BlueFlame register as `mlx5dv_init_obj` describes it, shared by
/// every QP of the device that libmlx5 assigned to it (see the module docs).
/// Aligned to 128 bytes so that its lock word shares no cache line (nor
/// the adjacent-line prefetch pair) with unrelated data.
#[repr(align(128))]
#[cfg_attr(
    not(target_arch = "x86_64"),
    allow(dead_code, reason = "never constructed without x86_64 barriers")
)]
pub(crate) struct BlueFlame {
    /// The register (`mlx5dv_qp.bf.reg`), mapped by libmlx5 for the
    /// context's lifetime.
    reg: *mut u8,
    /// Bytes of each of the two BlueFlame halves (`mlx5dv_qp.bf.size`); 0:
    /// doorbell writes only.
    size: u32,
    /// Held from before the MMIO write until after its flush.
    lock: AtomicBool,
    /// 0 or `size`: the half the next write goes to. Only read and written
    /// with `lock` held.
    offset: AtomicU32,
    arch: Arch,
}

// SAFETY: `reg` is an MMIO mapping of the context, valid until the context
// closes, which happens only after every QP (and so every ring) is gone;
// concurrent rings are serialised by `lock` (or are single 8-byte stores
// when there is no BlueFlame buffer).
unsafe impl Send for BlueFlame {}
// SAFETY: as above; `&self` methods only use the atomics and the register.
unsafe impl Sync for BlueFlame {}

impl std::fmt::Debug for BlueFlame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlueFlame")
            .field("reg", &self.reg)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl BlueFlame {
    /// The register at `reg` with halves of `size` bytes (0: doorbell
    /// only). Errors on a null register or a size that is not a multiple of
    /// the 64-byte WQEBB.
    pub(crate) fn new(arch: Arch, reg: *mut u8, size: u32) -> Result<BlueFlame, Error> {
        if reg.is_null() || !reg.cast::<u64>().is_aligned() {
            return Err(Error::InvalidAttr(format!(
                "mlx5dv_init_obj gave doorbell register {reg:p} (null or not 8-aligned)"
            )));
        }
        if !size.is_multiple_of(64) {
            return Err(Error::InvalidAttr(format!(
                "BlueFlame buffer of {size} bytes (not whole 64-byte WQEBBs)"
            )));
        }
        Ok(BlueFlame {
            reg,
            size,
            lock: AtomicBool::new(false),
            offset: AtomicU32::new(0),
            arch,
        })
    }

    /// The register's address (the key two QPs share it by).
    pub(crate) fn reg(&self) -> *mut u8 {
        self.reg
    }

    /// The size of each BlueFlame half (0: doorbell only).
    pub(crate) fn size(&self) -> u32 {
        self.size
    }

    /// How many bytes of the last WQE a ring writes to the register: the
    /// whole WQE (a BlueFlame copy) when it is the only one pending
    /// (`single_len` is its length, 0 when several are pending) and fits a
    /// half, else its first 8 bytes (the doorbell: control segment's
    /// `opmod_idx_opcode` and `qpn_ds`).
    pub(crate) fn copy_len(&self, single_len: usize) -> usize {
        if single_len != 0 && single_len <= self.size as usize {
            single_len
        } else {
            8
        }
    }

    /// Publishes the send queue up to `counter` and rings the doorbell:
    /// the steps of the module docs' table.
    ///
    /// # Safety
    ///
    /// `dbrec` must be the QP's send doorbell record (word 1), `counter` the
    /// producer counter (`pi & 0xffff`) covering every WQE written, and
    /// `wqe` the last posted WQE: 8-aligned, with [`BlueFlame::copy_len`]
    /// `(single_len)` readable bytes, written before this call and not
    /// changed until the device has read them (the QP owns them until their
    /// completion).
    #[inline]
    pub(crate) unsafe fn ring(
        &self,
        dbrec: &AtomicU32,
        counter: u32,
        wqe: *const u8,
        single_len: usize,
    ) {
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (dbrec, counter, wqe, single_len);
            match self.arch.0 {}
        }
        #[cfg(target_arch = "x86_64")]
        {
            // `self.arch` exists, so this target has the barriers below.
            let Arch(()) = self.arch;
            let len = self.copy_len(single_len);
            // Step 2: the device must see the WQEs before the counter.
            barrier::to_device();
            // Release: keeps the WQE stores before it for the compiler and
            // for other threads of this process; the device ordering is
            // the barrier above.
            dbrec.store(counter.to_be(), Ordering::Release);
            if self.size == 0 {
                // Doorbell only: no halves, no lock (one 8-byte store).
                // mmio_wc_start: the record store is visible before the
                // register write.
                barrier::flush_writes();
                // SAFETY: the caller guarantees 8 readable bytes at `wqe`;
                // `reg` is the live, 8-aligned register.
                unsafe { write_mmio(self.reg, wqe, len) };
                barrier::flush_writes();
                return;
            }
            // SAFETY: the caller guarantees `len` readable bytes at `wqe`;
            // `reg + offset` is a half of `size >= len` bytes of the live
            // register, and the lock excludes every other writer of it.
            self.locked(|offset| unsafe { write_mmio(self.reg.add(offset as usize), wqe, len) });
        }
    }

    /// Steps 3 to 6: takes the register's lock, runs `write` with the
    /// offset of the half to write, flushes the write-combining buffers
    /// (inside the lock: another CPU's doorbell must not reach the device
    /// before this one, libmlx5's comment), moves to the other half and
    /// unlocks.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn locked<R>(&self, write: impl FnOnce(u32) -> R) -> R {
        // Acquire: pairs with the Release of the unlock below, so the
        // previous holder's `offset` toggle is seen. The locked `cmpxchg`
        // also drains this CPU's store buffer, the doorbell record
        // included, before the write-combining stores that follow
        // (mmio_wc_spinlock's reason to skip mmio_wc_start on x86).
        while self
            .lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        // Relaxed: only read and written under the lock.
        let offset = self.offset.load(Ordering::Relaxed);
        let r = write(offset);
        barrier::flush_writes();
        // Relaxed: under the lock (published by its Release).
        self.offset.store(offset ^ self.size, Ordering::Relaxed);
        // Release: the write and the toggle happen before the next
        // holder's Acquire.
        self.lock.store(false, Ordering::Release);
        r
    }
}

/// Copies `len` bytes (a multiple of 8) from `src` to the MMIO register
/// `dst` with 8-byte volatile stores, as rdma-core's `mmio_memcpy_x64`
/// does on x86_64; consecutive stores to one 64-byte write-combining line
/// merge into one PCIe write before the flush.
///
/// # Safety
///
/// `dst` must be a mapped register with `len` writable bytes and `src`
/// `len` readable bytes, both 8-aligned.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn write_mmio(dst: *mut u8, src: *const u8, len: usize) {
    for i in (0..len).step_by(8) {
        // SAFETY: the caller guarantees both ranges and their alignment;
        // the register needs volatile stores (each one reaches the device).
        unsafe {
            let v = std::ptr::read(src.add(i).cast::<u64>());
            std::ptr::write_volatile(dst.add(i).cast::<u64>(), v);
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// A stand-in register in normal memory: two halves of `size` bytes.
    #[repr(C, align(64))]
    struct FakeReg([u8; 1024]);

    fn wqe(fill: u8, wqebbs: usize) -> Vec<u64> {
        vec![u64::from_ne_bytes([fill; 8]); wqebbs * 8]
    }

    #[test]
    fn copy_len_is_the_whole_wqe_only_when_alone_and_fitting() {
        let mut reg = FakeReg([0; 1024]);
        let bf = BlueFlame::new(Arch::check().unwrap(), reg.0.as_mut_ptr(), 256).unwrap();
        assert_eq!(bf.copy_len(64), 64);
        assert_eq!(bf.copy_len(256), 256);
        assert_eq!(bf.copy_len(320), 8, "larger than a half: doorbell only");
        assert_eq!(bf.copy_len(0), 8, "several pending: doorbell only");
        let db_only = BlueFlame::new(Arch::check().unwrap(), reg.0.as_mut_ptr(), 0).unwrap();
        assert_eq!(db_only.copy_len(64), 8);
    }

    #[test]
    fn rejects_null_unaligned_and_partial_wqebb_registers() {
        let arch = Arch::check().unwrap();
        assert!(BlueFlame::new(arch, std::ptr::null_mut(), 256).is_err());
        let mut reg = FakeReg([0; 1024]);
        // SAFETY: one byte into the buffer, still inside it.
        let odd = unsafe { reg.0.as_mut_ptr().add(1) };
        assert!(BlueFlame::new(arch, odd, 256).is_err());
        assert!(BlueFlame::new(arch, reg.0.as_mut_ptr(), 100).is_err());
    }

    /// The record is written, the copy goes to alternating halves, and a
    /// second QP on the same register continues the alternation.
    #[test]
    fn rings_alternate_halves_of_the_shared_register() {
        let mut reg = FakeReg([0; 1024]);
        let bf = BlueFlame::new(Arch::check().unwrap(), reg.0.as_mut_ptr(), 256).unwrap();
        let db = AtomicU32::new(0);
        let a = wqe(0xaa, 1);
        // SAFETY: `a` has 64 readable, 8-aligned bytes; the register is
        // our buffer of two 256-byte halves.
        unsafe { bf.ring(&db, 7, a.as_ptr().cast(), 64) };
        assert_eq!(db.load(Ordering::Relaxed), 7u32.to_be());
        assert!(reg.0[..64].iter().all(|&b| b == 0xaa));
        assert!(reg.0[64..].iter().all(|&b| b == 0));
        let b = wqe(0xbb, 2);
        // SAFETY: as above, 128 bytes.
        unsafe { bf.ring(&db, 9, b.as_ptr().cast(), 128) };
        assert!(reg.0[256..384].iter().all(|&x| x == 0xbb));
        // Several WQEs pending: 8 bytes, back in the first half.
        let c = wqe(0xcc, 1);
        // SAFETY: as above.
        unsafe { bf.ring(&db, 11, c.as_ptr().cast(), 0) };
        assert!(reg.0[..8].iter().all(|&x| x == 0xcc));
        assert!(reg.0[8..64].iter().all(|&x| x == 0xaa));
        assert_eq!(db.load(Ordering::Relaxed), 11u32.to_be());
    }

    /// Two threads (two QPs on one register) never write it at the same
    /// time, and the halves alternate across both: the section that `ring`
    /// writes the register in, run with a slow write. (Fails within a few
    /// iterations when the lock is removed: checked.)
    #[test]
    fn writers_of_a_shared_register_exclude_each_other_and_alternate_halves() {
        let mut reg = FakeReg([0; 1024]);
        let bf = BlueFlame::new(Arch::check().unwrap(), reg.0.as_mut_ptr(), 256).unwrap();
        let inside = AtomicU32::new(0);
        let overlapped = AtomicBool::new(false);
        let offsets = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..2000 {
                        bf.locked(|offset| {
                            // Relaxed: a counter only this test reads; the
                            // lock under test is what must order it.
                            if inside.fetch_add(1, Ordering::Relaxed) != 0 {
                                overlapped.store(true, Ordering::Relaxed);
                            }
                            offsets.lock().unwrap().push(offset);
                            for _ in 0..100 {
                                std::hint::spin_loop();
                            }
                            inside.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                });
            }
        });
        assert!(!overlapped.load(Ordering::Relaxed), "two writers at once");
        let offsets = offsets.into_inner().unwrap();
        assert_eq!(offsets.len(), 4000);
        for (i, &o) in offsets.iter().enumerate() {
            assert_eq!(o, if i % 2 == 0 { 0 } else { 256 }, "write {i}");
        }
    }
}
