//! Send-queue work queue entries: the bytes a ConnectX NIC (and the software
//! device) reads.
//!
//! A WQE is a sequence of 16-byte segments in one or more 64-byte WQE basic
//! blocks (WQEBBs), all fields big-endian:
//!
//! | segment | bytes | written for |
//! |---|---|---|
//! | control | 16 | every WQE: opcode, WQE index, QPN, segment count (`ds`), flags, immediate |
//! | remote address | 16 | WRITE, WRITE_IMM, READ, atomics |
//! | atomic | 16 | ATOMIC_CS (swap, compare), ATOMIC_FA (add) |
//! | data (SGE) | 16 each | local buffers: gather for sends/writes, scatter for READ/atomics |
//! | inline data | `4 + len`, padded to 16 | small payloads copied into the WQE |
//!
//! One type per operation ([`Write`], [`Send`], [`Read`], [`AtomicCas`],
//! [`AtomicFa`], [`Nop`]) with `new(required)` and chained setters for the
//! options, in the manner of the io-uring crate; `.imm(x)` turns a WRITE or
//! SEND into its with-immediate form ([`WriteImm`], [`SendImm`]: one generic
//! type, [`WithImm`], serves both). They implement [`WqeBuild`], which a
//! send queue uses to size, check and encode them; [`encode`] writes one
//! into a contiguous byte slice, and [`SqRing`] does the ring accounting
//! (WQEBB counts, NOP padding at the ring end).
//!
//! Segments are written as fixed layouts (`#[repr(C)]` structs of
//! big-endian words, one store each), inline data without `memcpy` or
//! `memset` calls: the post path is a handful of stores per segment.
//!
//! This module is pure: it touches no device and is tested byte for byte
//! against the `mlx5dv.h` helpers (`tests/golden.rs`).

use crate::error::Error;

use crate::prm::INVALID_LKEY;
pub use crate::prm::{ATOMIC_SIZE, INLINE_SEG, MAX_DS, SEG, WQEBB, flags, opcode};

/// A local buffer: address, length and the lkey of the memory region that
/// holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sge {
    /// Virtual address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Local key of the registered region.
    pub lkey: u32,
}

/// A remote buffer: address and the rkey of the memory region that holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remote {
    /// Virtual address at the target.
    pub addr: u64,
    /// Remote key of the target's region.
    pub rkey: u32,
}

// ---- segments: fixed layouts ----

/// `struct mlx5_wqe_ctrl_seg` (`mlx5dv_set_ctrl_seg` with opmod 0 and
/// signature 0); multi-byte fields big-endian.
#[repr(C)]
#[derive(Clone, Copy)]
struct CtrlSeg {
    opmod_idx_opcode: u32,
    qpn_ds: u32,
    /// `signature`, `dci_stream_channel_id` (2 bytes) and `fm_ce_se`, as
    /// one big-endian word: the first three are 0.
    signature_fm_ce_se: u32,
    imm: u32,
}

/// `struct mlx5_wqe_raddr_seg`.
#[repr(C)]
#[derive(Clone, Copy)]
struct RaddrSeg {
    raddr: u64,
    rkey: u32,
    reserved: u32,
}

/// `struct mlx5_wqe_data_seg` (`mlx5dv_set_data_seg`).
#[repr(C)]
#[derive(Clone, Copy)]
struct DataSeg {
    byte_count: u32,
    lkey: u32,
    addr: u64,
}

/// `struct mlx5_wqe_atomic_seg`.
#[repr(C)]
#[derive(Clone, Copy)]
struct AtomicSeg {
    swap_add: u64,
    compare: u64,
}

const _: () = assert!(
    size_of::<CtrlSeg>() == SEG
        && size_of::<RaddrSeg>() == SEG
        && size_of::<DataSeg>() == SEG
        && size_of::<AtomicSeg>() == SEG
);

impl CtrlSeg {
    /// `qpn_ds` is `(qpn << 8) | ds`, host order.
    #[inline(always)]
    fn new(index: u16, opcode: u8, qpn_ds: u32, flags: u8, imm: u32) -> CtrlSeg {
        CtrlSeg {
            opmod_idx_opcode: ((u32::from(index) << 8) | u32::from(opcode)).to_be(),
            qpn_ds: qpn_ds.to_be(),
            signature_fm_ce_se: u32::from(flags).to_be(),
            imm: imm.to_be(),
        }
    }
}

impl RaddrSeg {
    #[inline(always)]
    fn new(r: Remote) -> RaddrSeg {
        RaddrSeg {
            raddr: r.addr.to_be(),
            rkey: r.rkey.to_be(),
            reserved: 0,
        }
    }
}

impl DataSeg {
    #[inline(always)]
    fn new(s: Sge) -> DataSeg {
        DataSeg {
            byte_count: s.len.to_be(),
            lkey: s.lkey.to_be(),
            addr: s.addr.to_be(),
        }
    }
}

impl AtomicSeg {
    #[inline(always)]
    fn new(swap_add: u64, compare: u64) -> AtomicSeg {
        AtomicSeg {
            swap_add: swap_add.to_be(),
            compare: compare.to_be(),
        }
    }
}

/// Stores `v` at `p` (any alignment).
///
/// # Safety
///
/// `p` is valid for `size_of::<T>()` bytes of writes.
#[inline(always)]
unsafe fn put<T: Copy>(p: *mut u8, v: T) {
    // SAFETY: the caller's contract; unaligned stores are allowed.
    unsafe { p.cast::<T>().write_unaligned(v) }
}

/// Loads a `T` from `p` (any alignment).
///
/// # Safety
///
/// `p` is valid for `size_of::<T>()` bytes of reads.
#[inline(always)]
unsafe fn get<T: Copy>(p: *const u8) -> T {
    // SAFETY: the caller's contract; unaligned loads are allowed.
    unsafe { p.cast::<T>().read_unaligned() }
}

/// Copies `src` to `dst` with a few wide loads and stores (overlapping
/// ones for the odd sizes) rather than a `memcpy` call: inline payloads
/// are small and their copy sits on the post path.
///
/// # Safety
///
/// `dst` is valid for `src.len()` bytes of writes and does not overlap
/// `src`.
#[inline(always)]
unsafe fn copy_small(dst: *mut u8, src: &[u8]) {
    let n = src.len();
    let s = src.as_ptr();
    // SAFETY: each load below lies in `src` (offsets below `n`, widths at
    // most `n`), each store at the same offset of `dst`, which the caller
    // guarantees for `n` bytes.
    unsafe {
        if n >= 16 {
            let mut i = 0;
            while i + 16 <= n {
                put(dst.add(i), get::<[u8; 16]>(s.add(i)));
                i += 16;
            }
            if i < n {
                put(dst.add(n - 16), get::<[u8; 16]>(s.add(n - 16)));
            }
        } else if n >= 8 {
            put(dst, get::<u64>(s));
            put(dst.add(n - 8), get::<u64>(s.add(n - 8)));
        } else if n >= 4 {
            put(dst, get::<u32>(s));
            put(dst.add(n - 4), get::<u32>(s.add(n - 4)));
        } else if n >= 2 {
            put(dst, get::<u16>(s));
            put(dst.add(n - 2), get::<u16>(s.add(n - 2)));
        } else if n == 1 {
            *dst = *s;
        }
    }
}

/// Segments an inline data segment of `len` bytes takes (header included).
#[inline(always)]
#[expect(
    clippy::manual_div_ceil,
    reason = "two instructions on the post path; `len` is a slice's, far from overflowing"
)]
fn inline_segs(len: usize) -> usize {
    (len + 4 + SEG - 1) / SEG
}

/// Writes an inline data segment at `dst`: header `len | 0x8000_0000`, the
/// bytes, zero padding to the 16-byte boundary; exactly
/// `inline_segs(data.len()) * 16` bytes.
///
/// # Safety
///
/// `dst` is valid for that many bytes of writes.
#[inline(always)]
unsafe fn put_inline(dst: *mut u8, data: &[u8]) {
    let len = data.len();
    let end = inline_segs(len) * SEG;
    // SAFETY: every store lies in [dst, dst + end): the padding first (the
    // last segment zeroed), then the header and the bytes over it.
    unsafe {
        put(dst.add(end - SEG), [0u8; SEG]);
        put(dst, (len as u32 | INLINE_SEG).to_be());
        copy_small(dst.add(4), data);
    }
}

/// Writes one data segment per SGE that carries bytes, from `dst` on.
///
/// # Safety
///
/// `dst` is valid for `data_segs(sges) * 16` bytes of writes.
#[inline(always)]
unsafe fn put_sges(mut dst: *mut u8, sges: &[Sge]) {
    if let [s] = sges {
        if s.len != 0 {
            // SAFETY: the one segment the caller guarantees.
            unsafe { put(dst, DataSeg::new(*s)) };
        }
        return;
    }
    for s in sges {
        if s.len != 0 {
            // SAFETY: one of the `data_segs(sges)` segments the caller
            // guarantees.
            unsafe {
                put(dst, DataSeg::new(*s));
                dst = dst.add(SEG);
            }
        }
    }
}

/// The result segment of an atomic: it always says 8 bytes, the size of
/// the value the target returns, whatever `result.len` holds (the
/// provider's `set_data_ptr_seg_atomic`). [`crate::Qp::post`] refuses a
/// result buffer shorter than that.
#[inline(always)]
fn atomic_result(result: Sge) -> DataSeg {
    DataSeg::new(Sge {
        len: ATOMIC_SIZE,
        ..result
    })
}

/// Reads a data segment (the inverse of [`write_data`]), as a device reads
/// a gather or scatter entry. `b` is at least 16 bytes.
pub(crate) fn read_data(b: &[u8]) -> Sge {
    let w = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    Sge {
        len: w(0),
        lkey: w(4),
        addr: (u64::from(w(8)) << 32) | u64::from(w(12)),
    }
}

/// Writes the control segment (`mlx5dv_set_ctrl_seg` with opmod 0 and
/// signature 0) into `out[..16]`. `imm` is in host order and stored
/// big-endian.
pub fn write_ctrl(out: &mut [u8], index: u16, opcode: u8, qpn: u32, flags: u8, ds: u8, imm: u32) {
    let out = &mut out[..SEG];
    let qpn_ds = ((qpn & 0x00ff_ffff) << 8) | u32::from(ds);
    // SAFETY: `out` is 16 bytes.
    unsafe {
        put(
            out.as_mut_ptr(),
            CtrlSeg::new(index, opcode, qpn_ds, flags, imm),
        )
    }
}

/// Writes a remote address segment into `out[..16]`.
pub fn write_raddr(out: &mut [u8], remote: Remote) {
    let out = &mut out[..SEG];
    // SAFETY: `out` is 16 bytes.
    unsafe { put(out.as_mut_ptr(), RaddrSeg::new(remote)) }
}

/// Writes a data segment (`mlx5dv_set_data_seg`) into `out[..16]`.
pub fn write_data(out: &mut [u8], sge: Sge) {
    let out = &mut out[..SEG];
    // SAFETY: `out` is 16 bytes.
    unsafe { put(out.as_mut_ptr(), DataSeg::new(sge)) }
}

/// Writes an atomic segment into `out[..16]`.
pub fn write_atomic(out: &mut [u8], swap_add: u64, compare: u64) {
    let out = &mut out[..SEG];
    // SAFETY: `out` is 16 bytes.
    unsafe { put(out.as_mut_ptr(), AtomicSeg::new(swap_add, compare)) }
}

/// Writes an inline data segment: header `len | 0x8000_0000`, the bytes,
/// zero padding to the next 16-byte boundary. `out` must be that long
/// (anything after it is zeroed as well).
pub fn write_inline(out: &mut [u8], data: &[u8]) {
    let end = inline_segs(data.len()) * SEG;
    let (seg, rest) = out.split_at_mut(end);
    // SAFETY: `seg` is exactly the segment's bytes.
    unsafe { put_inline(seg.as_mut_ptr(), data) };
    rest.fill(0);
}

/// Data segments a gather list takes: one per SGE that carries bytes.
#[inline(always)]
fn data_segs(sges: &[Sge]) -> usize {
    match sges {
        // The common case, without the vectorised count's set-up.
        [s] => usize::from(s.len != 0),
        _ => sges.iter().filter(|s| s.len != 0).count(),
    }
}

/// Writes a receive scatter list into `out`, one receive WQE's data
/// segments (the RQ stride, or an SRQ stride after its next segment), as
/// rdma-core's provider writes it: zero-length SGEs are skipped, and an
/// `MLX5_INVALID_LKEY` entry ends a list shorter than the room the stride
/// has. The device reads up to the stride's room, not up to the
/// `max_recv_sge` asked for at creation (the stride is a power of two and
/// may hold more), so the terminator is decided by the stride.
pub(crate) fn write_sges(out: &mut [u8], sges: &[Sge]) {
    let room = out.len() / SEG;
    let mut n = 0;
    for sge in sges.iter().filter(|s| s.len != 0).take(room) {
        write_data(&mut out[n * SEG..(n + 1) * SEG], *sge);
        n += 1;
    }
    if n < room {
        write_data(
            &mut out[n * SEG..(n + 1) * SEG],
            Sge {
                addr: 0,
                len: 0,
                lkey: INVALID_LKEY,
            },
        );
    }
}

// ---- builders ----

/// What a WRITE or SEND carries: gathered buffers or bytes copied inline.
#[derive(Clone, Copy, Debug)]
pub enum Payload<'a> {
    /// Gather list (may be empty: a zero-length operation).
    Sges(&'a [Sge]),
    /// Bytes copied into the WQE; bounded by the QP's `max_inline`.
    Inline(&'a [u8]),
}

impl Payload<'_> {
    /// Segments the payload takes, written as rdma-core's provider writes
    /// them: zero-length SGEs are skipped (they carry nothing), and empty
    /// inline data takes no segment at all.
    #[inline(always)]
    fn ds(&self) -> usize {
        match self {
            Payload::Sges(s) => data_segs(s),
            Payload::Inline([]) => 0,
            Payload::Inline(d) => inline_segs(d.len()),
        }
    }

    /// Writes the payload's segments at `dst`.
    ///
    /// # Safety
    ///
    /// `dst` is valid for `self.ds() * 16` bytes of writes.
    #[inline(always)]
    unsafe fn put(&self, dst: *mut u8) {
        match self {
            // SAFETY: the caller's contract (ds counts these segments).
            Payload::Sges(s) => unsafe { put_sges(dst, s) },
            Payload::Inline([]) => {}
            // SAFETY: as above.
            Payload::Inline(d) => unsafe { put_inline(dst, d) },
        }
    }

    /// Inline bytes (`None` for a gather list).
    pub fn inline_len(&self) -> Option<usize> {
        match self {
            Payload::Inline(d) => Some(d.len()),
            Payload::Sges(_) => None,
        }
    }

    /// Gather entries (0 for inline data).
    pub fn sge_count(&self) -> usize {
        match self {
            Payload::Sges(s) => s.len(),
            Payload::Inline(_) => 0,
        }
    }

    /// Total bytes the payload carries.
    pub fn len(&self) -> u64 {
        match self {
            Payload::Sges(s) => s.iter().map(|s| u64::from(s.len)).sum(),
            Payload::Inline(d) => d.len() as u64,
        }
    }

    /// Whether the payload carries no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Per-WQE options every builder shares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `fm_ce_se` bits ([`flags`]).
    pub flags: u8,
}

/// An operation a send queue can encode. Implemented by the builders of this
/// module only.
pub trait WqeBuild: sealed::Sealed {
    /// The control-segment opcode.
    fn opcode(&self) -> u8 {
        self.parts().opcode
    }
    /// Size in 16-byte segments, control segment included.
    fn ds(&self) -> usize {
        self.parts().ds()
    }
    /// The immediate, in host order (sent big-endian), if the opcode has one.
    fn imm(&self) -> u32 {
        self.parts().imm
    }
    /// The shared options.
    fn options(&self) -> Options {
        Options {
            flags: self.parts().flags,
        }
    }
    /// Scatter/gather entries (checked against the QP's SGE limit).
    fn sge_count(&self) -> usize {
        match self.parts().body {
            Body::Data { payload, .. } => payload.sge_count(),
            Body::Nop { .. } | Body::Atomic { .. } => 0,
        }
    }
    /// Inline bytes, if any (checked against the QP's inline limit).
    fn inline_len(&self) -> Option<usize> {
        match self.parts().body {
            Body::Data { payload, .. } => payload.inline_len(),
            Body::Nop { .. } | Body::Atomic { .. } => None,
        }
    }
    /// An atomic's result buffer length (checked to hold the 8-byte value).
    fn atomic_result_len(&self) -> Option<u32> {
        match self.parts().body {
            Body::Atomic { result, .. } => Some(result.len),
            Body::Nop { .. } | Body::Data { .. } => None,
        }
    }
    /// Writes every segment after the control segment into `out`, which is
    /// at least `(ds() - 1) * 16` bytes (what lies after those is left as
    /// is).
    fn write_body(&self, out: &mut [u8]) {
        let p = self.parts();
        let out = &mut out[..(p.ds() - 1) * SEG];
        // SAFETY: `out` holds the body's bytes.
        unsafe { p.put_body(out.as_mut_ptr()) }
    }
}

pub(crate) mod sealed {
    use super::{Error, Options, Payload, Remote, Sge, inline_segs, wqebbs};

    pub trait Sealed {
        /// What the WQE is made of, by value: a post reads the builder
        /// once, then checks and writes from registers.
        fn parts(&self) -> Parts<'_>;
        /// The options the setters change.
        fn opts_mut(&mut self) -> &mut Options;
    }

    /// A WQE as its builder describes it: one representation for every
    /// operation, so checking and encoding are written once. Built by value
    /// (`Sealed::parts`) and used from registers.
    #[derive(Clone, Copy, Debug)]
    pub struct Parts<'a> {
        pub(in crate::wqe) opcode: u8,
        pub(in crate::wqe) flags: u8,
        pub(in crate::wqe) imm: u32,
        pub(in crate::wqe) body: Body<'a>,
    }

    /// The segments after the control segment.
    #[derive(Clone, Copy, Debug)]
    pub enum Body<'a> {
        /// Zeros, up to `wqebbs` WQEBBs in all.
        Nop { wqebbs: usize },
        /// A remote address segment (WRITE, READ; not SEND), then the payload's
        /// data or inline segments.
        Data {
            remote: Option<Remote>,
            payload: Payload<'a>,
        },
        /// Remote address, atomic and result segments.
        Atomic {
            remote: Remote,
            swap_add: u64,
            compare: u64,
            result: Sge,
        },
    }

    /// What a send queue accepts, fixed when its QP is created (so a post
    /// compares, and computes nothing from the caps).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Limits {
        pub(in crate::wqe) max_inline: usize,
        /// Gather entries a WQE may name: `max_send_sge`, at least 1.
        pub(in crate::wqe) max_sge: usize,
        /// `max_send_sge` as created (what [`Error::TooManySges`] reports).
        pub(in crate::wqe) max_send_sge: usize,
        pub(in crate::wqe) max_ds: usize,
    }

    impl Limits {
        /// The limits of a send queue whose WQEs carry at most `max_inline`
        /// inline bytes and `max_send_sge` gather entries; `max_ds` is the
        /// largest WQE in segments, at least what those two allow (checked).
        pub fn new(max_inline: u32, max_send_sge: u32, max_ds: usize) -> Limits {
            let l = Limits {
                max_inline: max_inline as usize,
                max_sge: max_send_sge.max(1) as usize,
                max_send_sge: max_send_sge as usize,
                max_ds,
            };
            // Every builder within the first two limits fits `max_ds`, so
            // only a NOP's span needs checking against it.
            assert!(
                max_ds >= 4 && max_ds >= 2 + l.max_sge && max_ds >= 2 + inline_segs(l.max_inline),
                "max_ds {max_ds} below what max_inline {max_inline} and max_send_sge {max_send_sge} allow"
            );
            l
        }

        /// The largest WQE in WQEBBs.
        pub fn max_wqebbs(&self) -> usize {
            wqebbs(self.max_ds)
        }

        #[cold]
        pub(in crate::wqe) fn inline_too_large(&self, len: usize) -> Error {
            Error::InlineTooLarge {
                len,
                max: self.max_inline,
            }
        }

        #[cold]
        pub(in crate::wqe) fn too_many_sges(&self, count: usize) -> Error {
            Error::TooManySges {
                count,
                max: self.max_send_sge,
            }
        }

        #[cold]
        pub(in crate::wqe) fn too_large(&self, ds: usize) -> Error {
            Error::WqeTooLarge {
                wqebbs: wqebbs(ds),
                limit: self.max_wqebbs(),
            }
        }
    }
}

pub(crate) use sealed::{Body, Limits, Parts};

impl Parts<'_> {
    #[inline(always)]
    fn new(opcode: u8, opts: Options, body: Body<'_>) -> Parts<'_> {
        Parts {
            opcode,
            flags: opts.flags,
            imm: 0,
            body,
        }
    }

    /// Size in segments, control segment included.
    #[inline(always)]
    fn ds(&self) -> usize {
        match self.body {
            Body::Nop { wqebbs } => wqebbs * WQEBB / SEG,
            Body::Data { remote, payload } => 1 + usize::from(remote.is_some()) + payload.ds(),
            Body::Atomic { .. } => 4,
        }
    }

    /// The size in segments, or why a send queue with `lim` refuses the
    /// WQE: inline data over `max_inline` ([`Error::InlineTooLarge`]), more
    /// SGEs than `max_send_sge` (at least 1) allows
    /// ([`Error::TooManySges`]), an atomic result buffer under 8 bytes
    /// ([`Error::AtomicResultTooSmall`]: the device writes 8 bytes
    /// whatever the SGE says, as libmlx5 posts it), a NOP over the largest
    /// WQE ([`Error::WqeTooLarge`]). Every other WQE within the first two
    /// limits fits the largest WQE (`Limits::new` checks that).
    #[inline(always)]
    pub(crate) fn check(&self, lim: &Limits) -> Result<usize, Error> {
        match self.body {
            Body::Data {
                payload: Payload::Inline(d),
                ..
            } if d.len() > lim.max_inline => Err(lim.inline_too_large(d.len())),
            Body::Data {
                payload: Payload::Sges(s),
                ..
            } if s.len() > lim.max_sge => Err(lim.too_many_sges(s.len())),
            Body::Atomic { result, .. } if result.len < ATOMIC_SIZE => {
                Err(atomic_too_small(result.len))
            }
            Body::Nop { .. } if self.ds() > lim.max_ds => Err(lim.too_large(self.ds())),
            _ => Ok(self.ds()),
        }
    }

    /// Writes the WQE (control segment and body) at `wqe`; `qpn_ds` is
    /// `(qpn << 8) | ds`, with `ds == self.ds()`.
    ///
    /// # Safety
    ///
    /// `wqe` is valid for `ds * 16` bytes of writes.
    #[inline(always)]
    pub(crate) unsafe fn write(&self, wqe: *mut u8, index: u16, qpn_ds: u32) {
        let ctrl = CtrlSeg::new(index, self.opcode, qpn_ds, self.flags, self.imm);
        // SAFETY: the caller's contract: the control segment, then the body.
        unsafe {
            put(wqe, ctrl);
            self.put_body(wqe.add(SEG));
        }
    }

    /// Writes every segment after the control segment at `body`.
    ///
    /// # Safety
    ///
    /// `body` is valid for `(ds - 1) * 16` bytes of writes.
    #[inline(always)]
    unsafe fn put_body(&self, body: *mut u8) {
        // SAFETY: the segments stored below add up to the `ds - 1` the
        // caller guarantees.
        unsafe {
            match self.body {
                Body::Nop { .. } => body.write_bytes(0, (self.ds() - 1) * SEG),
                Body::Data {
                    remote: Some(r),
                    payload,
                } => {
                    put(body, RaddrSeg::new(r));
                    payload.put(body.add(SEG));
                }
                Body::Data {
                    remote: None,
                    payload,
                } => payload.put(body),
                Body::Atomic {
                    remote,
                    swap_add,
                    compare,
                    result,
                } => {
                    put(body, RaddrSeg::new(remote));
                    put(body.add(SEG), AtomicSeg::new(swap_add, compare));
                    put(body.add(2 * SEG), atomic_result(result));
                }
            }
        }
    }
}

#[cold]
fn atomic_too_small(len: u32) -> Error {
    Error::AtomicResultTooSmall { len }
}

/// WQEBBs a WQE of `ds` segments occupies.
#[inline(always)]
#[expect(
    clippy::manual_div_ceil,
    reason = "two instructions on the post path, where `ds` is at most 63"
)]
pub fn wqebbs(ds: usize) -> usize {
    const PER: usize = WQEBB / SEG;
    (ds + PER - 1) / PER
}

/// Encodes `wqe` at WQE index `index` of QP `qpn` into `out` (at least
/// `ds * 16` bytes; the rest is left as is). Returns `ds`.
pub fn encode<W: WqeBuild + ?Sized>(wqe: &W, index: u16, qpn: u32, out: &mut [u8]) -> usize {
    let p = wqe.parts();
    let ds = p.ds();
    assert!(ds <= MAX_DS, "a WQE of {ds} segments");
    let out = &mut out[..ds * SEG];
    let qpn_ds = ((qpn & 0x00ff_ffff) << 8) | ds as u32;
    // SAFETY: `out` holds the WQE's `ds * 16` bytes.
    unsafe { p.write(out.as_mut_ptr(), index, qpn_ds) };
    ds
}

macro_rules! common_setters {
    () => {
        /// Request a completion for this WQE.
        pub fn signaled(mut self) -> Self {
            sealed::Sealed::opts_mut(&mut self).flags |= flags::SIGNALED;
            self
        }
        /// Execute only after prior READs and atomics of this QP completed.
        pub fn fence(mut self) -> Self {
            sealed::Sealed::opts_mut(&mut self).flags |= flags::FENCE;
            self
        }
        /// Set the solicited-event bit.
        pub fn solicited(mut self) -> Self {
            sealed::Sealed::opts_mut(&mut self).flags |= flags::SOLICITED;
            self
        }
    };
}

/// A builder: its `Sealed` implementation (what its WQE is made of), and
/// `WqeBuild`, whose methods all follow from that.
macro_rules! builder {
    ($t:ty, |$s:ident| $parts:expr) => {
        impl sealed::Sealed for $t {
            #[inline(always)]
            fn parts(&self) -> Parts<'_> {
                let $s = self;
                $parts
            }
            fn opts_mut(&mut self) -> &mut Options {
                &mut self.opts
            }
        }
        impl WqeBuild for $t {}
    };
}

/// No operation (completes like any WQE when signaled).
#[derive(Clone, Copy, Debug, Default)]
pub struct Nop {
    opts: Options,
    wqebbs: usize,
}

impl Nop {
    /// A one-WQEBB NOP.
    pub fn new() -> Self {
        Nop {
            opts: Options::default(),
            wqebbs: 1,
        }
    }
    /// A NOP spanning `n` WQEBBs (how the ring end is padded), `1..=15`.
    pub fn spanning(n: usize) -> Self {
        Nop {
            opts: Options::default(),
            wqebbs: n.clamp(1, MAX_DS * SEG / WQEBB),
        }
    }
    common_setters!();
}

builder!(Nop, |s| Parts::new(
    opcode::NOP,
    s.opts,
    Body::Nop { wqebbs: s.wqebbs }
));

/// RDMA WRITE: `payload` to `remote`.
#[derive(Clone, Copy, Debug)]
pub struct Write<'a> {
    remote: Remote,
    payload: Payload<'a>,
    opts: Options,
}

impl<'a> Write<'a> {
    /// Writes the gathered `sges` to `remote`.
    pub fn new(remote: Remote, sges: &'a [Sge]) -> Self {
        Write {
            remote,
            payload: Payload::Sges(sges),
            opts: Options::default(),
        }
    }
    /// Writes `data`, copied into the WQE, to `remote`.
    pub fn inline(remote: Remote, data: &'a [u8]) -> Self {
        Write {
            remote,
            payload: Payload::Inline(data),
            opts: Options::default(),
        }
    }
    /// Adds an immediate: the WRITE becomes a [`WriteImm`].
    pub fn imm(self, imm: u32) -> WriteImm<'a> {
        WithImm { inner: self, imm }
    }
    common_setters!();
}

builder!(Write<'_>, |s| Parts::new(
    opcode::RDMA_WRITE,
    s.opts,
    Body::Data {
        remote: Some(s.remote),
        payload: s.payload,
    }
));

/// SEND: the payload is scattered into the target's next receive WQE.
#[derive(Clone, Copy, Debug)]
pub struct Send<'a> {
    payload: Payload<'a>,
    opts: Options,
}

impl<'a> Send<'a> {
    /// Sends the gathered `sges`.
    pub fn new(sges: &'a [Sge]) -> Self {
        Send {
            payload: Payload::Sges(sges),
            opts: Options::default(),
        }
    }
    /// Sends `data`, copied into the WQE.
    pub fn inline(data: &'a [u8]) -> Self {
        Send {
            payload: Payload::Inline(data),
            opts: Options::default(),
        }
    }
    /// Adds an immediate: the SEND becomes a [`SendImm`].
    pub fn imm(self, imm: u32) -> SendImm<'a> {
        WithImm { inner: self, imm }
    }
    common_setters!();
}

builder!(Send<'_>, |s| Parts::new(
    opcode::SEND,
    s.opts,
    Body::Data {
        remote: None,
        payload: s.payload,
    }
));

/// An operation with a with-immediate form ([`Write`], [`Send`]): the same
/// segments under another opcode, plus the immediate in the control segment.
pub trait HasImm: WqeBuild {
    /// The opcode of the with-immediate form.
    const IMM_OPCODE: u8;
}

impl HasImm for Write<'_> {
    const IMM_OPCODE: u8 = opcode::RDMA_WRITE_IMM;
}

impl HasImm for Send<'_> {
    const IMM_OPCODE: u8 = opcode::SEND_IMM;
}

/// A WRITE or SEND with an immediate ([`WriteImm`], [`SendImm`]): made by
/// `.imm(x)` on the operation, or by `WriteImm::new`/`SendImm::new` and
/// their `inline` forms. The target consumes a receive WQE and its
/// completion carries the immediate (and, for a WRITE, the byte count).
#[derive(Clone, Copy, Debug)]
pub struct WithImm<W> {
    inner: W,
    imm: u32,
}

/// RDMA WRITE with immediate: the target consumes a receive WQE and gets a
/// completion carrying the immediate and the byte count.
pub type WriteImm<'a> = WithImm<Write<'a>>;

/// SEND with immediate.
pub type SendImm<'a> = WithImm<Send<'a>>;

impl<'a> WriteImm<'a> {
    /// Writes the gathered `sges` to `remote` with immediate `imm`.
    pub fn new(remote: Remote, sges: &'a [Sge], imm: u32) -> Self {
        Write::new(remote, sges).imm(imm)
    }
    /// Writes inline `data` to `remote` with immediate `imm`.
    pub fn inline(remote: Remote, data: &'a [u8], imm: u32) -> Self {
        Write::inline(remote, data).imm(imm)
    }
}

impl<'a> SendImm<'a> {
    /// Sends the gathered `sges` with immediate `imm`.
    pub fn new(sges: &'a [Sge], imm: u32) -> Self {
        Send::new(sges).imm(imm)
    }
    /// Sends inline `data` with immediate `imm`.
    pub fn inline(data: &'a [u8], imm: u32) -> Self {
        Send::inline(data).imm(imm)
    }
}

impl<W: HasImm> WithImm<W> {
    common_setters!();
}

impl<W: HasImm> sealed::Sealed for WithImm<W> {
    #[inline(always)]
    fn parts(&self) -> Parts<'_> {
        Parts {
            opcode: W::IMM_OPCODE,
            imm: self.imm,
            ..self.inner.parts()
        }
    }
    fn opts_mut(&mut self) -> &mut Options {
        self.inner.opts_mut()
    }
}
impl<W: HasImm> WqeBuild for WithImm<W> {}

/// RDMA READ: `remote` into the local `sges`.
#[derive(Clone, Copy, Debug)]
pub struct Read<'a> {
    remote: Remote,
    sges: &'a [Sge],
    opts: Options,
}

impl<'a> Read<'a> {
    /// Reads from `remote` into the scatter list `sges`.
    pub fn new(remote: Remote, sges: &'a [Sge]) -> Self {
        Read {
            remote,
            sges,
            opts: Options::default(),
        }
    }
    common_setters!();
}

builder!(Read<'_>, |s| Parts::new(
    opcode::RDMA_READ,
    s.opts,
    Body::Data {
        remote: Some(s.remote),
        payload: Payload::Sges(s.sges),
    }
));

/// 8-byte compare and swap at an 8-byte aligned `remote`; the original value
/// lands big-endian in the 8-byte `result` buffer.
#[derive(Clone, Copy, Debug)]
pub struct AtomicCas {
    remote: Remote,
    result: Sge,
    compare: u64,
    swap: u64,
    opts: Options,
}

impl AtomicCas {
    /// If the target holds `compare`, replace it with `swap`.
    pub fn new(remote: Remote, result: Sge, compare: u64, swap: u64) -> Self {
        AtomicCas {
            remote,
            result,
            compare,
            swap,
            opts: Options::default(),
        }
    }
    common_setters!();
}

builder!(AtomicCas, |s| Parts::new(
    opcode::ATOMIC_CS,
    s.opts,
    Body::Atomic {
        remote: s.remote,
        swap_add: s.swap,
        compare: s.compare,
        result: s.result,
    }
));

/// 8-byte fetch and add at an 8-byte aligned `remote`; the original value
/// lands big-endian in the 8-byte `result` buffer.
#[derive(Clone, Copy, Debug)]
pub struct AtomicFa {
    remote: Remote,
    result: Sge,
    add: u64,
    opts: Options,
}

impl AtomicFa {
    /// Adds `add` (wrapping) to the target.
    pub fn new(remote: Remote, result: Sge, add: u64) -> Self {
        AtomicFa {
            remote,
            result,
            add,
            opts: Options::default(),
        }
    }
    common_setters!();
}

builder!(AtomicFa, |s| Parts::new(
    opcode::ATOMIC_FA,
    s.opts,
    Body::Atomic {
        remote: s.remote,
        swap_add: s.add,
        compare: 0,
        result: s.result,
    }
));

/// Where the next WQE goes in a send queue of `wqe_cnt` WQEBBs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// WQEBBs of NOP padding to write first at `pad_at` (0: none).
    pub pad: usize,
    /// Ring position (WQEBB counter) of the padding NOP.
    pub pad_at: u32,
    /// Ring position (WQEBB counter) of the WQE itself.
    pub at: u32,
}

/// Producer-side accounting of a send queue: the producer counter `pi` and
/// the consumer counter `ci` (WQEBBs the device has finished with), both
/// free-running; the ring offset of position `p` is `p & (wqe_cnt - 1)`
/// WQEBBs and the WQE index in the control segment is `p as u16`.
#[derive(Clone, Debug)]
pub struct SqRing {
    wqe_cnt: u32,
    mask: u32,
    pi: u32,
    ci: u32,
    /// The position up to which WQEs fit with neither padding nor
    /// retiring: the nearer of the end of `pi`'s lap and `ci + wqe_cnt`.
    /// Absolute (free-running), so posting does not move it; padding and
    /// retiring recompute it.
    fast_end: u32,
}

impl SqRing {
    /// A ring of `wqe_cnt` WQEBBs (a power of two).
    pub fn new(wqe_cnt: u32) -> Self {
        assert!(wqe_cnt.is_power_of_two(), "wqe_cnt must be a power of two");
        SqRing {
            wqe_cnt,
            mask: wqe_cnt - 1,
            pi: 0,
            ci: 0,
            fast_end: wqe_cnt,
        }
    }

    fn refresh(&mut self) {
        let lap_end = (self.pi & !self.mask).wrapping_add(self.wqe_cnt);
        let cap_end = self.ci.wrapping_add(self.wqe_cnt);
        self.fast_end = if lap_end.wrapping_sub(self.pi) <= cap_end.wrapping_sub(self.pi) {
            lap_end
        } else {
            cap_end
        };
    }

    /// Ring size in WQEBBs.
    pub fn wqe_cnt(&self) -> u32 {
        self.wqe_cnt
    }

    /// The producer counter: position of the next WQE.
    pub fn pi(&self) -> u32 {
        self.pi
    }

    /// The consumer counter.
    pub fn ci(&self) -> u32 {
        self.ci
    }

    /// WQEBBs free.
    pub fn free(&self) -> u32 {
        self.wqe_cnt - self.pi.wrapping_sub(self.ci)
    }

    /// Reserves room for a WQE of `wqebbs` blocks, with NOP padding first if
    /// it would not fit before the ring end. Does not advance `pi`:
    /// [`SqRing::commit`] does, once the bytes are written.
    #[inline(always)]
    pub fn reserve(&self, wqebbs: usize) -> Result<Slot, Error> {
        if wqebbs == 0 || wqebbs > self.wqe_cnt as usize {
            return Err(self.too_large(wqebbs));
        }
        let wqebbs = wqebbs as u32;
        let off = self.pi & self.mask;
        let pad = if off + wqebbs > self.wqe_cnt {
            self.wqe_cnt - off
        } else {
            0
        };
        if pad + wqebbs > self.free() {
            return Err(self.full(pad + wqebbs));
        }
        Ok(Slot {
            pad: pad as usize,
            pad_at: self.pi,
            at: self.pi.wrapping_add(pad),
        })
    }

    /// Where a WQE of `wqebbs` blocks (at least 1) goes when it fits
    /// before the ring end and the ring has room for it: the common case,
    /// in a few instructions. `None`: [`SqRing::reserve`] says what to do
    /// (padding, a full ring, a WQE too large; or nothing special, when
    /// `pi` reached the end of a lap: committing that reservation re-arms
    /// the fast path).
    #[inline(always)]
    pub fn reserve_fast(&self, wqebbs: usize) -> Option<u32> {
        debug_assert!(wqebbs >= 1);
        (self.fast_end.wrapping_sub(self.pi) as usize >= wqebbs).then_some(self.pi)
    }

    #[cold]
    fn too_large(&self, wqebbs: usize) -> Error {
        Error::WqeTooLarge {
            wqebbs,
            limit: self.wqe_cnt as usize,
        }
    }

    #[cold]
    fn full(&self, needed: u32) -> Error {
        Error::SendQueueFull {
            needed: needed as usize,
            free: self.free() as usize,
        }
    }

    /// Advances `pi` past the padding of `slot` (once its NOP is written),
    /// to where the WQE goes. [`SqRing::commit`] does this too; calling it
    /// first lets the WQE be placed with [`SqRing::reserve_fast`].
    pub fn commit_pad(&mut self, slot: Slot) {
        self.pi = slot.at;
        self.refresh();
    }

    /// Advances `pi` past a WQE of `wqebbs` blocks written at `slot`.
    pub fn commit(&mut self, slot: Slot, wqebbs: usize) {
        self.pi = slot.at.wrapping_add(wqebbs as u32);
        self.refresh();
    }

    /// [`SqRing::commit`] of a WQE placed by [`SqRing::reserve_fast`] at
    /// `at` (so the fast path's bound still holds).
    #[inline(always)]
    pub fn commit_fast(&mut self, at: u32, wqebbs: usize) {
        debug_assert!(self.fast_end.wrapping_sub(at) as usize >= wqebbs);
        self.pi = at.wrapping_add(wqebbs as u32);
    }

    /// Marks the device done with everything before position `ci`.
    pub fn retire(&mut self, ci: u32) {
        debug_assert!(self.pi.wrapping_sub(ci) <= self.wqe_cnt);
        self.ci = ci;
        self.refresh();
    }

    /// The WQEBB slot of position `p` (`p` mod `wqe_cnt`).
    #[inline(always)]
    pub fn index(&self, p: u32) -> usize {
        (p & self.mask) as usize
    }

    /// The ring offset in bytes of position `p`.
    #[inline]
    pub fn offset(&self, p: u32) -> usize {
        (p & self.mask) as usize * WQEBB
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_segment_pads_to_sixteen_bytes() {
        let data = [7u8; 13];
        let w = Write::inline(Remote { addr: 1, rkey: 2 }, &data);
        assert_eq!(w.ds(), 2 + 2); // 4 + 13 = 17 bytes -> two segments
        let mut out = [0xffu8; 64];
        encode(&w, 5, 0x12, &mut out);
        assert_eq!(&out[32..36], &(13u32 | INLINE_SEG).to_be_bytes());
        assert_eq!(&out[36..49], &data);
        assert!(out[49..64].iter().all(|&b| b == 0));
    }

    #[test]
    fn wqe_that_does_not_fit_before_the_end_is_padded() {
        let mut r = SqRing::new(8);
        let s = r.reserve(3).unwrap();
        r.commit(s, 3);
        let s = r.reserve(3).unwrap();
        r.commit(s, 3); // pi = 6
        r.retire(6);
        let s = r.reserve(3).unwrap();
        assert_eq!(
            s,
            Slot {
                pad: 2,
                pad_at: 6,
                at: 8
            }
        );
        r.commit(s, 3);
        assert_eq!(r.pi(), 11);
        assert_eq!(r.free(), 3);
        assert!(matches!(r.reserve(4), Err(Error::SendQueueFull { .. })));
    }

    #[test]
    fn fast_reservation_agrees_with_the_full_one() {
        // A deterministic walk of posts of 1..=5 WQEBBs and partial
        // retirements over a ring of 16: the fast path answers only when
        // the full reservation needs no padding, and then says the same;
        // it declines only what needs padding or room, or a lap that ends
        // just at `pi` (until a commit of the full path's reservation).
        let mut r = SqRing::new(16);
        let mut x = 0x9e37_79b9u32;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let wqebbs = 1 + (x % 5) as usize;
            let full = r.reserve(wqebbs).ok();
            match r.reserve_fast(wqebbs) {
                Some(at) => {
                    let s = full.expect("the fast path never admits more");
                    assert_eq!((s.pad, s.at), (0, at));
                }
                // Conservative only where a lap ends just at `pi`.
                None => assert!(full.is_none_or(|s| s.pad > 0 || r.index(r.pi()) == 0)),
            }
            match full {
                Some(s) if x & 0x100 == 0 => {
                    // As `Qp` posts: the padding (if any) committed, then
                    // the WQE placed by the fast path.
                    r.commit_pad(s);
                    let at = r.reserve_fast(wqebbs).expect("room after the padding");
                    r.commit_fast(at, wqebbs);
                }
                Some(s) => r.commit(s, wqebbs),
                None => {
                    let used = r.pi().wrapping_sub(r.ci());
                    r.retire(r.ci().wrapping_add(1 + (x >> 9) % used.max(1)));
                }
            }
        }
    }

    fn entries(out: &[u8]) -> Vec<(u32, u32, u64)> {
        out.chunks_exact(SEG)
            .map(|e| {
                (
                    u32::from_be_bytes(e[0..4].try_into().unwrap()),
                    u32::from_be_bytes(e[4..8].try_into().unwrap()),
                    u64::from_be_bytes(e[8..16].try_into().unwrap()),
                )
            })
            .collect()
    }

    const STALE: (u32, u32, u64) = (0x5a5a_5a5a, 0x5a5a_5a5a, 0x5a5a_5a5a_5a5a_5a5a);

    #[test]
    fn receive_terminator_is_decided_by_the_stride_not_the_requested_sges() {
        let sge = |len| Sge {
            addr: 0x1000,
            len,
            lkey: 7,
        };
        // A 64-byte stride has room for 4 entries: 3 SGEs (all a QP created
        // with max_recv_sge = 3 may post) still get a terminator, or the
        // device would read the stale fourth entry as an SGE.
        let mut out = [0x5au8; 64];
        write_sges(&mut out, &[sge(1), sge(2), sge(3)]);
        assert_eq!(
            entries(&out),
            [
                (1, 7, 0x1000),
                (2, 7, 0x1000),
                (3, 7, 0x1000),
                (0, INVALID_LKEY, 0)
            ]
        );
        // A full stride needs none.
        let mut out = [0x5au8; 32];
        write_sges(&mut out, &[sge(1), sge(2)]);
        assert_eq!(entries(&out), [(1, 7, 0x1000), (2, 7, 0x1000)]);
        // Zero-length SGEs are skipped; the terminator follows what was
        // written, and what lies after it is not touched.
        let mut out = [0x5au8; 64];
        write_sges(&mut out, &[sge(0), sge(5), sge(0)]);
        assert_eq!(
            entries(&out),
            [(5, 7, 0x1000), (0, INVALID_LKEY, 0), STALE, STALE]
        );
        // No SGE at all (a WRITE_IMM receive): just the terminator.
        let mut out = [0x5au8; 16];
        write_sges(&mut out, &[]);
        assert_eq!(entries(&out), [(0, INVALID_LKEY, 0)]);
    }

    #[test]
    fn oversized_wqe_is_refused() {
        let r = SqRing::new(4);
        assert!(matches!(r.reserve(5), Err(Error::WqeTooLarge { .. })));
    }
}
