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
//! One type per operation ([`Write`], [`WriteImm`], [`Send`], [`SendImm`],
//! [`Read`], [`AtomicCas`], [`AtomicFa`], [`Nop`]) with `new(required)` and
//! chained setters for the options, in the manner of the io-uring crate.
//! They implement [`WqeBuild`], which a send queue uses to size and encode
//! them; [`encode`] writes one into a contiguous byte slice, and [`SqRing`]
//! does the ring accounting (WQEBB counts, NOP padding at the ring end).
//!
//! This module is pure: it touches no device and is tested byte for byte
//! against the `mlx5dv.h` helpers (`tests/golden.rs`).

use crate::error::Error;

/// Bytes in a WQE basic block.
pub const WQEBB: usize = 64;
/// Bytes in a segment; the `ds` count is in these units.
pub const SEG: usize = 16;
/// The largest `ds` count the control segment can express (6 bits).
pub const MAX_DS: usize = 63;
/// Marks an inline data segment header (`byte_count | MLX5_INLINE_SEG`).
pub const INLINE_SEG: u32 = 0x8000_0000;

/// Send opcodes (`MLX5_OPCODE_*`).
pub mod opcode {
    /// No operation; pads the ring end.
    pub const NOP: u8 = 0x00;
    /// RDMA WRITE.
    pub const RDMA_WRITE: u8 = 0x08;
    /// RDMA WRITE with immediate: consumes a receive WQE at the target.
    pub const RDMA_WRITE_IMM: u8 = 0x09;
    /// SEND.
    pub const SEND: u8 = 0x0a;
    /// SEND with immediate.
    pub const SEND_IMM: u8 = 0x0b;
    /// RDMA READ.
    pub const RDMA_READ: u8 = 0x10;
    /// 8-byte atomic compare and swap.
    pub const ATOMIC_CS: u8 = 0x11;
    /// 8-byte atomic fetch and add.
    pub const ATOMIC_FA: u8 = 0x12;
}

/// Control-segment flags (`fm_ce_se`).
pub mod flags {
    /// Generate a completion for this WQE (`MLX5_WQE_CTRL_CQ_UPDATE`).
    pub const SIGNALED: u8 = 2 << 2;
    /// Set the solicited event bit at the responder (`MLX5_WQE_CTRL_SOLICITED`).
    pub const SOLICITED: u8 = 1 << 1;
    /// Wait for prior READs and atomics before executing (`MLX5_WQE_CTRL_FENCE`).
    pub const FENCE: u8 = 4 << 5;
}

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
    fn ds(&self) -> usize {
        match self {
            Payload::Sges(s) => data_segs(s),
            Payload::Inline([]) => 0,
            Payload::Inline(d) => (4 + d.len()).div_ceil(SEG),
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
    fn opcode(&self) -> u8;
    /// Size in 16-byte segments, control segment included.
    fn ds(&self) -> usize;
    /// The immediate, in host order (sent big-endian), if the opcode has one.
    fn imm(&self) -> u32 {
        0
    }
    /// The shared options.
    fn options(&self) -> Options;
    /// Scatter/gather entries (checked against the QP's SGE limit).
    fn sge_count(&self) -> usize {
        0
    }
    /// Inline bytes, if any (checked against the QP's inline limit).
    fn inline_len(&self) -> Option<usize> {
        None
    }
    /// An atomic's result buffer length (checked to hold the 8-byte value).
    fn atomic_result_len(&self) -> Option<u32> {
        None
    }
    /// Writes every segment after the control segment into `out`, which is
    /// exactly `(ds() - 1) * 16` bytes.
    fn write_body(&self, out: &mut [u8]);
}

mod sealed {
    pub trait Sealed {}
}

/// WQEBBs a WQE of `ds` segments occupies.
pub fn wqebbs(ds: usize) -> usize {
    (ds * SEG).div_ceil(WQEBB)
}

/// Writes the control segment (`mlx5dv_set_ctrl_seg` with opmod 0 and
/// signature 0). `imm` is in host order and stored big-endian.
pub fn write_ctrl(out: &mut [u8], index: u16, opcode: u8, qpn: u32, flags: u8, ds: u8, imm: u32) {
    out[0..4].copy_from_slice(&((u32::from(index) << 8) | u32::from(opcode)).to_be_bytes());
    out[4..8].copy_from_slice(&(((qpn & 0x00ff_ffff) << 8) | u32::from(ds)).to_be_bytes());
    out[8] = 0; // signature
    out[9] = 0; // dci_stream_channel_id
    out[10] = 0;
    out[11] = flags;
    out[12..16].copy_from_slice(&imm.to_be_bytes());
}

/// Writes a remote address segment.
pub fn write_raddr(out: &mut [u8], remote: Remote) {
    out[0..8].copy_from_slice(&remote.addr.to_be_bytes());
    out[8..12].copy_from_slice(&remote.rkey.to_be_bytes());
    out[12..16].fill(0);
}

/// Writes a data segment (`mlx5dv_set_data_seg`).
pub fn write_data(out: &mut [u8], sge: Sge) {
    out[0..4].copy_from_slice(&sge.len.to_be_bytes());
    out[4..8].copy_from_slice(&sge.lkey.to_be_bytes());
    out[8..16].copy_from_slice(&sge.addr.to_be_bytes());
}

/// Writes an atomic segment.
pub fn write_atomic(out: &mut [u8], swap_add: u64, compare: u64) {
    out[0..8].copy_from_slice(&swap_add.to_be_bytes());
    out[8..16].copy_from_slice(&compare.to_be_bytes());
}

/// Writes an inline data segment: header `len | 0x8000_0000`, the bytes,
/// zero padding to the next 16-byte boundary. `out` must be that long.
pub fn write_inline(out: &mut [u8], data: &[u8]) {
    out[0..4].copy_from_slice(&(data.len() as u32 | INLINE_SEG).to_be_bytes());
    out[4..4 + data.len()].copy_from_slice(data);
    out[4 + data.len()..].fill(0);
}

/// Data segments a gather list takes: one per SGE that carries bytes.
fn data_segs(sges: &[Sge]) -> usize {
    sges.iter().filter(|s| s.len != 0).count()
}

fn write_payload(out: &mut [u8], payload: &Payload<'_>) {
    match payload {
        Payload::Sges(sges) => {
            let carrying = sges.iter().filter(|s| s.len != 0);
            for (seg, sge) in out.chunks_exact_mut(SEG).zip(carrying) {
                write_data(seg, *sge);
            }
        }
        Payload::Inline([]) => {}
        Payload::Inline(data) => write_inline(out, data),
    }
}

/// The result segment of an atomic: it always says 8 bytes, the size of
/// the value the target returns, whatever `result.len` holds (the
/// provider's `set_data_ptr_seg_atomic`). [`crate::Qp::post`] refuses a
/// result buffer shorter than that.
fn write_atomic_result(out: &mut [u8], result: Sge) {
    write_data(
        out,
        Sge {
            len: ATOMIC_SIZE,
            ..result
        },
    );
}

/// Bytes an atomic operates on and returns.
pub const ATOMIC_SIZE: u32 = 8;

/// Encodes `wqe` at WQE index `index` of QP `qpn` into `out` (at least
/// `ds * 16` bytes; the rest of the last WQEBB is left as is).
pub fn encode<W: WqeBuild + ?Sized>(wqe: &W, index: u16, qpn: u32, out: &mut [u8]) -> usize {
    let ds = wqe.ds();
    debug_assert!(ds <= MAX_DS && out.len() >= ds * SEG);
    write_ctrl(
        out,
        index,
        wqe.opcode(),
        qpn,
        wqe.options().flags,
        ds as u8,
        wqe.imm(),
    );
    wqe.write_body(&mut out[SEG..ds * SEG]);
    ds
}

macro_rules! common_setters {
    () => {
        common_setters!(opts);
    };
    ($($opts:ident).+) => {
        /// Request a completion for this WQE.
        pub fn signaled(mut self) -> Self {
            self.$($opts).+.flags |= flags::SIGNALED;
            self
        }
        /// Execute only after prior READs and atomics of this QP completed.
        pub fn fence(mut self) -> Self {
            self.$($opts).+.flags |= flags::FENCE;
            self
        }
        /// Set the solicited-event bit.
        pub fn solicited(mut self) -> Self {
            self.$($opts).+.flags |= flags::SOLICITED;
            self
        }
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

impl sealed::Sealed for Nop {}
impl WqeBuild for Nop {
    fn opcode(&self) -> u8 {
        opcode::NOP
    }
    fn ds(&self) -> usize {
        self.wqebbs * WQEBB / SEG
    }
    fn options(&self) -> Options {
        self.opts
    }
    fn write_body(&self, out: &mut [u8]) {
        out.fill(0);
    }
}

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
        WriteImm { inner: self, imm }
    }
    common_setters!();
}

impl sealed::Sealed for Write<'_> {}
impl WqeBuild for Write<'_> {
    fn opcode(&self) -> u8 {
        opcode::RDMA_WRITE
    }
    fn sge_count(&self) -> usize {
        self.payload.sge_count()
    }
    fn ds(&self) -> usize {
        2 + self.payload.ds()
    }
    fn options(&self) -> Options {
        self.opts
    }
    fn inline_len(&self) -> Option<usize> {
        self.payload.inline_len()
    }
    fn write_body(&self, out: &mut [u8]) {
        write_raddr(&mut out[..SEG], self.remote);
        write_payload(&mut out[SEG..], &self.payload);
    }
}

/// RDMA WRITE with immediate: the target consumes a receive WQE and gets a
/// completion carrying `imm` and the byte count.
#[derive(Clone, Copy, Debug)]
pub struct WriteImm<'a> {
    inner: Write<'a>,
    imm: u32,
}

impl<'a> WriteImm<'a> {
    /// Writes the gathered `sges` to `remote` with immediate `imm`.
    pub fn new(remote: Remote, sges: &'a [Sge], imm: u32) -> Self {
        Write::new(remote, sges).imm(imm)
    }
    /// Writes inline `data` to `remote` with immediate `imm`.
    pub fn inline(remote: Remote, data: &'a [u8], imm: u32) -> Self {
        Write::inline(remote, data).imm(imm)
    }
    common_setters!(inner.opts);
}

impl sealed::Sealed for WriteImm<'_> {}
impl WqeBuild for WriteImm<'_> {
    fn opcode(&self) -> u8 {
        opcode::RDMA_WRITE_IMM
    }
    fn sge_count(&self) -> usize {
        self.inner.sge_count()
    }
    fn ds(&self) -> usize {
        self.inner.ds()
    }
    fn imm(&self) -> u32 {
        self.imm
    }
    fn options(&self) -> Options {
        self.inner.opts
    }
    fn inline_len(&self) -> Option<usize> {
        self.inner.inline_len()
    }
    fn write_body(&self, out: &mut [u8]) {
        self.inner.write_body(out)
    }
}

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
        SendImm { inner: self, imm }
    }
    common_setters!();
}

impl sealed::Sealed for Send<'_> {}
impl WqeBuild for Send<'_> {
    fn opcode(&self) -> u8 {
        opcode::SEND
    }
    fn sge_count(&self) -> usize {
        self.payload.sge_count()
    }
    fn ds(&self) -> usize {
        1 + self.payload.ds()
    }
    fn options(&self) -> Options {
        self.opts
    }
    fn inline_len(&self) -> Option<usize> {
        self.payload.inline_len()
    }
    fn write_body(&self, out: &mut [u8]) {
        write_payload(out, &self.payload);
    }
}

/// SEND with immediate.
#[derive(Clone, Copy, Debug)]
pub struct SendImm<'a> {
    inner: Send<'a>,
    imm: u32,
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
    common_setters!(inner.opts);
}

impl sealed::Sealed for SendImm<'_> {}
impl WqeBuild for SendImm<'_> {
    fn opcode(&self) -> u8 {
        opcode::SEND_IMM
    }
    fn sge_count(&self) -> usize {
        self.inner.sge_count()
    }
    fn ds(&self) -> usize {
        self.inner.ds()
    }
    fn imm(&self) -> u32 {
        self.imm
    }
    fn options(&self) -> Options {
        self.inner.opts
    }
    fn inline_len(&self) -> Option<usize> {
        self.inner.inline_len()
    }
    fn write_body(&self, out: &mut [u8]) {
        self.inner.write_body(out)
    }
}

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

impl sealed::Sealed for Read<'_> {}
impl WqeBuild for Read<'_> {
    fn opcode(&self) -> u8 {
        opcode::RDMA_READ
    }
    fn sge_count(&self) -> usize {
        self.sges.len()
    }
    fn ds(&self) -> usize {
        2 + data_segs(self.sges)
    }
    fn options(&self) -> Options {
        self.opts
    }
    fn write_body(&self, out: &mut [u8]) {
        write_raddr(&mut out[..SEG], self.remote);
        write_payload(&mut out[SEG..], &Payload::Sges(self.sges));
    }
}

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

impl sealed::Sealed for AtomicCas {}
impl WqeBuild for AtomicCas {
    fn atomic_result_len(&self) -> Option<u32> {
        Some(self.result.len)
    }
    fn opcode(&self) -> u8 {
        opcode::ATOMIC_CS
    }
    fn ds(&self) -> usize {
        4
    }
    fn options(&self) -> Options {
        self.opts
    }
    fn write_body(&self, out: &mut [u8]) {
        write_raddr(&mut out[..SEG], self.remote);
        write_atomic(&mut out[SEG..2 * SEG], self.swap, self.compare);
        write_atomic_result(&mut out[2 * SEG..], self.result);
    }
}

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

impl sealed::Sealed for AtomicFa {}
impl WqeBuild for AtomicFa {
    fn atomic_result_len(&self) -> Option<u32> {
        Some(self.result.len)
    }
    fn opcode(&self) -> u8 {
        opcode::ATOMIC_FA
    }
    fn ds(&self) -> usize {
        4
    }
    fn options(&self) -> Options {
        self.opts
    }
    fn write_body(&self, out: &mut [u8]) {
        write_raddr(&mut out[..SEG], self.remote);
        write_atomic(&mut out[SEG..2 * SEG], self.add, 0);
        write_atomic_result(&mut out[2 * SEG..], self.result);
    }
}

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
/// free-running; the ring offset of position `p` is `p % wqe_cnt` WQEBBs and
/// the WQE index in the control segment is `p as u16`.
#[derive(Clone, Debug)]
pub struct SqRing {
    wqe_cnt: u32,
    pi: u32,
    ci: u32,
}

impl SqRing {
    /// A ring of `wqe_cnt` WQEBBs (a power of two).
    pub fn new(wqe_cnt: u32) -> Self {
        assert!(wqe_cnt.is_power_of_two(), "wqe_cnt must be a power of two");
        SqRing {
            wqe_cnt,
            pi: 0,
            ci: 0,
        }
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
    pub fn reserve(&self, wqebbs: usize) -> Result<Slot, Error> {
        let wqebbs = wqebbs as u32;
        if wqebbs == 0 || wqebbs > self.wqe_cnt {
            return Err(Error::WqeTooLarge {
                wqebbs: wqebbs as usize,
                limit: self.wqe_cnt as usize,
            });
        }
        let off = self.pi % self.wqe_cnt;
        let pad = if off + wqebbs > self.wqe_cnt {
            self.wqe_cnt - off
        } else {
            0
        };
        if pad + wqebbs > self.free() {
            return Err(Error::SendQueueFull {
                needed: (pad + wqebbs) as usize,
                free: self.free() as usize,
            });
        }
        Ok(Slot {
            pad: pad as usize,
            pad_at: self.pi,
            at: self.pi.wrapping_add(pad),
        })
    }

    /// Advances `pi` past a WQE of `wqebbs` blocks written at `slot`.
    pub fn commit(&mut self, slot: Slot, wqebbs: usize) {
        self.pi = slot.at.wrapping_add(wqebbs as u32);
    }

    /// Marks the device done with everything before position `ci`.
    pub fn retire(&mut self, ci: u32) {
        debug_assert!(self.pi.wrapping_sub(ci) <= self.wqe_cnt);
        self.ci = ci;
    }

    /// The ring offset in bytes of position `p`.
    pub fn offset(&self, p: u32) -> usize {
        (p % self.wqe_cnt) as usize * WQEBB
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
    fn oversized_wqe_is_refused() {
        let r = SqRing::new(4);
        assert!(matches!(r.reserve(5), Err(Error::WqeTooLarge { .. })));
    }
}
