//! Fuzzing the WQE bytes the software device executes.
//!
//! Each input is a program of [`Op`]s on two connected RC QPs, `A` and `B`,
//! each on its own manual-progress software device in this process, each
//! with one CQ (sends and receives) and three 4 KiB memory regions: `main`
//! (every right), `canary` (REMOTE_READ only) and `foreign` (every right,
//! but registered on another protection domain). Both sides post: raw bytes
//! through `Qp::post_raw` (optionally with the control segment's index, QPN
//! and `ds` fixed up so that the fuzzer gets past the first checks), WQEs
//! from the crate's builders (optionally encoded, mutated, then posted raw),
//! receives; and they ring, step the devices and poll.
//!
//! What is checked, besides "no panic, no hang, no sanitizer report":
//!
//! * every CQE names this side's QP, and the CQ is never overrun (it has
//!   room for every WQE and receive that can be outstanding);
//! * send completions come in posting order and name a WQE that was
//!   posted; a signaled WQE is never skipped; nothing succeeds after an
//!   error; after an error every WQE completes (flushed); receives complete
//!   one by one in order;
//! * a builder WQE that uses memory it may not (another PD's region, a
//!   region without the right, out of bounds, the invalid key, an
//!   unaligned atomic) never succeeds, signaled or not; one the crate's
//!   builders wrote is never refused as malformed (`LocalQpOp`);
//! * the `canary` and `foreign` regions never change;
//! * at the end (all rung, the devices stepped until idle): a QP still in
//!   RTS, its peer too, retires its whole send queue when a signaled NOP
//!   completes (a peer in ERROR drops requests unanswered, so what was sent
//!   to it waits for the ACK timeout, as on hardware, and the NOP with it), and
//!   after `to_error` every send and receive WQE has completed, except
//!   unsignaled WQEs that succeeded with no later completion to retire
//!   them (as on hardware), and `sq_free` says exactly that.
//!
//! The completion checks need the device and the poster to agree on where
//! each WQE starts. The device finds out from the bytes (`SoftQp::span`):
//! a control segment naming its position, the QP, opmod 0 and a `ds`. A
//! raw WQE that does not describe itself so (garbage, a `ds` that is not
//! its length, a later WQEBB that looks like a control segment) may be cut
//! or merged with a neighbour, which the poster cannot foresee, so after
//! one the order and accounting checks of that QP are skipped (everything
//! else is still checked).

use std::collections::VecDeque;

use mlx5::wqe::{self, AtomicCas, AtomicFa, Nop, Read, Send, WQEBB, WqeBuild, Write, opcode};
use mlx5::{
    Access, Completion, ConnectOpts, Context, Cq, Error, Kind, Mr, Pd, Progress, Qp, QpCaps,
    QpState, Remote, Sge, Syndrome,
};

use crate::input::{Reader, Writer};

/// Small queues: rings wrap and NOP-pad within a short input.
pub const CAPS: QpCaps = QpCaps {
    max_send_wr: 4,
    max_recv_wr: 4,
    max_send_sge: 2,
    max_recv_sge: 2,
    max_inline: 64,
};
/// Bytes of each memory region.
pub const MR_LEN: usize = 4096;
/// `MLX5_INVALID_LKEY`: never a valid key.
const INVALID_KEY: u32 = 0x100;
/// The byte pattern of the regions that must never change.
const CANARY: u8 = 0xa5;
/// Rounds of `progress_until_idle` on both devices that settle everything:
/// an RNR NAKed WQE is retried on the next round and fails on the one after
/// (`rnr_retry` 1), and the flush of the QP it moved to ERROR needs one more.
const SETTLE_ROUNDS: usize = 4;

/// Which QP an operation acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The first QP.
    A,
    /// The second QP, connected to `A`.
    B,
}

/// Memory named by a key and an address, seen from the side that posts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    /// This side's `main` region.
    Own,
    /// This side's REMOTE_READ-only region.
    OwnCanary,
    /// This side's region on another PD.
    OwnForeign,
    /// The peer's `main` region.
    Peer,
    /// The peer's REMOTE_READ-only region.
    PeerCanary,
    /// The peer's region on another PD.
    PeerForeign,
    /// The invalid key (address: this side's `main`).
    Invalid,
    /// Any key (address: this side's `main`).
    Key(u32),
}

/// A key and an address: `off` bytes from the start of `region`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    /// Where.
    pub region: Region,
    /// Offset from the region's first byte (negative: before it).
    pub off: i16,
}

/// A scatter/gather entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgeSpec {
    /// Where.
    pub at: Loc,
    /// Length in bytes.
    pub len: u16,
}

/// What a WRITE or SEND carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A gather list.
    Sges(Vec<SgeSpec>),
    /// Inline bytes.
    Inline(Vec<u8>),
}

/// A WQE built with the crate's builders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// WRITE, or WRITE_IMM with an immediate.
    Write {
        /// Target.
        remote: Loc,
        /// Source.
        payload: Payload,
        /// The immediate of a WRITE_IMM.
        imm: Option<u32>,
    },
    /// SEND, or SEND_IMM with an immediate.
    Send {
        /// Source.
        payload: Payload,
        /// The immediate of a SEND_IMM.
        imm: Option<u32>,
    },
    /// READ.
    Read {
        /// Source.
        remote: Loc,
        /// Scatter list.
        sges: Vec<SgeSpec>,
    },
    /// Compare and swap.
    Cas {
        /// Target word.
        remote: Loc,
        /// Where the original value goes.
        result: SgeSpec,
        /// Compared with the target.
        compare: u64,
        /// Stored if equal.
        swap: u64,
    },
    /// Fetch and add.
    Fa {
        /// Target word.
        remote: Loc,
        /// Where the original value goes.
        result: SgeSpec,
        /// Added to the target.
        add: u64,
    },
    /// NOP.
    Nop,
}

/// Fix-ups applied to raw bytes before posting them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fix {
    /// Opmod 0 and the WQE index the post will land at.
    pub index: bool,
    /// The QP's own number.
    pub qpn: bool,
    /// `ds` = the segments the bytes span (agrees with the WQEBBs posted).
    pub ds: bool,
    /// The SIGNALED flag.
    pub signaled: bool,
}

/// One step of a fuzz program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `Qp::post_raw` of `bytes` (0 or over two WQEBBs are refused by the
    /// poster, which is checked too).
    Raw {
        /// Which QP posts.
        side: Side,
        /// Control-segment fix-ups.
        fix: Fix,
        /// The WQE.
        bytes: Vec<u8>,
    },
    /// A builder's WQE: posted with `Qp::post`, or, with mutations, encoded
    /// at the index it will land at, each `(position, xor)` applied, and
    /// posted with `Qp::post_raw`.
    Build {
        /// Which QP posts.
        side: Side,
        /// The WQE.
        body: Body,
        /// Request a completion.
        signaled: bool,
        /// Byte flips applied to the encoded WQE.
        mutations: Vec<(u8, u8)>,
    },
    /// `Qp::ring_doorbell`.
    Ring(Side),
    /// One `Context::progress` of that side's device.
    Progress(Side),
    /// `Cq::poll` of up to this many completions.
    Poll(Side, u8),
    /// `Qp::post_recv` with these scatter entries.
    Recv(Side, Vec<SgeSpec>),
    /// Ring both, then `progress_until_idle` on both devices.
    Idle,
    /// `Qp::to_error`.
    ToError(Side),
}

const T_RAW: u8 = 0;
const T_BUILD: u8 = 1;
const T_RING: u8 = 2;
const T_PROGRESS: u8 = 3;
const T_POLL: u8 = 4;
const T_RECV: u8 = 5;
/// `ToError` with every flag bit set; `Idle` otherwise (moving a QP to
/// ERROR ends most of what a program can do, so it is made rare).
const T_IDLE_OR_ERROR: u8 = 6;
const T_IDLE: u8 = 7;
const SIDE_B: u8 = 1 << 3;

impl Op {
    /// Decodes the next operation: a tag byte (operation in bits 0..3, side
    /// in bit 3, flags in bits 4..8), then its arguments.
    pub fn decode(r: &mut Reader<'_>) -> Op {
        let tag = r.u8();
        let side = if tag & SIDE_B != 0 { Side::B } else { Side::A };
        let flag = |bit: u8| tag & (0x10 << bit) != 0;
        match tag & 7 {
            T_RAW => {
                let fix = Fix {
                    index: flag(0),
                    qpn: flag(1),
                    ds: flag(2),
                    signaled: flag(3),
                };
                let len = usize::from(r.u8());
                Op::Raw {
                    side,
                    fix,
                    bytes: r.bytes(len),
                }
            }
            T_BUILD => {
                let body = Body::decode(r);
                let mutations = if flag(1) {
                    (0..r.u8() % 8).map(|_| (r.u8(), r.u8())).collect()
                } else {
                    Vec::new()
                };
                Op::Build {
                    side,
                    body,
                    signaled: flag(0),
                    mutations,
                }
            }
            T_RING => Op::Ring(side),
            T_PROGRESS => Op::Progress(side),
            T_POLL => Op::Poll(side, r.u8()),
            T_RECV => {
                let n = r.u8() % 4;
                Op::Recv(side, (0..n).map(|_| SgeSpec::decode(r)).collect())
            }
            T_IDLE_OR_ERROR if tag >> 4 == 0xf => Op::ToError(side),
            _ => Op::Idle,
        }
    }

    /// The bytes [`Op::decode`] reads back as `self`.
    pub fn encode(&self, w: &mut Writer) {
        let side = |s: &Side| if *s == Side::B { SIDE_B } else { 0 };
        let bit = |on: bool, b: u8| if on { 0x10 << b } else { 0 };
        match self {
            Op::Raw {
                side: s,
                fix,
                bytes,
            } => {
                let flags = bit(fix.index, 0) | bit(fix.qpn, 1) | bit(fix.ds, 2);
                w.u8(T_RAW | side(s) | flags | bit(fix.signaled, 3));
                w.u8(u8::try_from(bytes.len()).expect("at most 255 raw bytes"));
                w.bytes(bytes);
            }
            Op::Build {
                side: s,
                body,
                signaled,
                mutations,
            } => {
                let flags = bit(*signaled, 0) | bit(!mutations.is_empty(), 1);
                w.u8(T_BUILD | side(s) | flags);
                body.encode(w);
                if !mutations.is_empty() {
                    assert!(mutations.len() < 8, "at most 7 mutations");
                    w.u8(mutations.len() as u8);
                    for &(p, x) in mutations {
                        w.u8(p).u8(x);
                    }
                }
            }
            Op::Ring(s) => {
                w.u8(T_RING | side(s));
            }
            Op::Progress(s) => {
                w.u8(T_PROGRESS | side(s));
            }
            Op::Poll(s, max) => {
                w.u8(T_POLL | side(s)).u8(*max);
            }
            Op::Recv(s, sges) => {
                assert!(sges.len() < 4, "at most 3 receive SGEs");
                w.u8(T_RECV | side(s)).u8(sges.len() as u8);
                for g in sges {
                    g.encode(w);
                }
            }
            Op::Idle => {
                w.u8(T_IDLE);
            }
            Op::ToError(s) => {
                w.u8(T_IDLE_OR_ERROR | side(s) | 0xf0);
            }
        }
    }
}

impl Loc {
    fn decode(r: &mut Reader<'_>) -> Loc {
        let region = match r.u8() % 8 {
            0 => Region::Own,
            1 => Region::OwnCanary,
            2 => Region::OwnForeign,
            3 => Region::Peer,
            4 => Region::PeerCanary,
            5 => Region::PeerForeign,
            6 => Region::Invalid,
            _ => Region::Key(r.u32()),
        };
        Loc {
            region,
            off: r.u16() as i16,
        }
    }

    fn encode(&self, w: &mut Writer) {
        let code = match self.region {
            Region::Own => 0,
            Region::OwnCanary => 1,
            Region::OwnForeign => 2,
            Region::Peer => 3,
            Region::PeerCanary => 4,
            Region::PeerForeign => 5,
            Region::Invalid => 6,
            Region::Key(_) => 7,
        };
        w.u8(code);
        if let Region::Key(k) = self.region {
            w.u32(k);
        }
        w.u16(self.off as u16);
    }

    /// Whether `[off, off + len)` lies inside a region of [`MR_LEN`] bytes.
    fn in_bounds(&self, len: u64) -> bool {
        let start = i64::from(self.off);
        start >= 0 && start as u64 + len <= MR_LEN as u64
    }
}

impl SgeSpec {
    fn decode(r: &mut Reader<'_>) -> SgeSpec {
        let at = Loc::decode(r);
        SgeSpec { at, len: r.u16() }
    }

    fn encode(&self, w: &mut Writer) {
        self.at.encode(w);
        w.u16(self.len);
    }
}

impl Payload {
    fn decode(r: &mut Reader<'_>) -> Payload {
        let p = r.u8();
        if p & 0x80 != 0 {
            Payload::Inline(r.bytes(usize::from(p & 0x7f)))
        } else {
            Payload::Sges((0..p % 4).map(|_| SgeSpec::decode(r)).collect())
        }
    }

    fn encode(&self, w: &mut Writer) {
        match self {
            Payload::Inline(d) => {
                assert!(d.len() < 128, "at most 127 inline bytes");
                w.u8(0x80 | d.len() as u8).bytes(d);
            }
            Payload::Sges(s) => {
                assert!(s.len() < 4, "at most 3 SGEs");
                w.u8(s.len() as u8);
                for g in s {
                    g.encode(w);
                }
            }
        }
    }
}

impl Body {
    fn decode(r: &mut Reader<'_>) -> Body {
        match r.u8() % 8 {
            k @ (0 | 1) => {
                let remote = Loc::decode(r);
                let payload = Payload::decode(r);
                let imm = (k == 1).then(|| r.u32());
                Body::Write {
                    remote,
                    payload,
                    imm,
                }
            }
            k @ (2 | 3) => {
                let payload = Payload::decode(r);
                let imm = (k == 3).then(|| r.u32());
                Body::Send { payload, imm }
            }
            4 => {
                let remote = Loc::decode(r);
                let n = r.u8() % 4;
                Body::Read {
                    remote,
                    sges: (0..n).map(|_| SgeSpec::decode(r)).collect(),
                }
            }
            5 => {
                let remote = Loc::decode(r);
                let result = SgeSpec::decode(r);
                let (compare, swap) = (r.u64(), r.u64());
                Body::Cas {
                    remote,
                    result,
                    compare,
                    swap,
                }
            }
            6 => {
                let remote = Loc::decode(r);
                let result = SgeSpec::decode(r);
                Body::Fa {
                    remote,
                    result,
                    add: r.u64(),
                }
            }
            _ => Body::Nop,
        }
    }

    fn encode(&self, w: &mut Writer) {
        match self {
            Body::Write {
                remote,
                payload,
                imm,
            } => {
                w.u8(if imm.is_some() { 1 } else { 0 });
                remote.encode(w);
                payload.encode(w);
                if let Some(i) = imm {
                    w.u32(*i);
                }
            }
            Body::Send { payload, imm } => {
                w.u8(if imm.is_some() { 3 } else { 2 });
                payload.encode(w);
                if let Some(i) = imm {
                    w.u32(*i);
                }
            }
            Body::Read { remote, sges } => {
                assert!(sges.len() < 4, "at most 3 SGEs");
                w.u8(4);
                remote.encode(w);
                w.u8(sges.len() as u8);
                for g in sges {
                    g.encode(w);
                }
            }
            Body::Cas {
                remote,
                result,
                compare,
                swap,
            } => {
                w.u8(5);
                remote.encode(w);
                result.encode(w);
                w.u64(*compare).u64(*swap);
            }
            Body::Fa {
                remote,
                result,
                add,
            } => {
                w.u8(6);
                remote.encode(w);
                result.encode(w);
                w.u64(*add);
            }
            Body::Nop => {
                w.u8(7);
            }
        }
    }

    /// Whether the device must refuse this WQE (some part of it uses memory
    /// it may not). Parts whose key might belong to another region (a
    /// local key used as a remote one: each device numbers its keys alike;
    /// a fuzzer-chosen key) make no claim either way.
    fn must_fail(&self) -> bool {
        // A gather entry: the key and bounds (no right is needed to read).
        let gather = |g: &SgeSpec| {
            g.len > 0
                && match g.at.region {
                    Region::Own | Region::OwnCanary => !g.at.in_bounds(u64::from(g.len)),
                    Region::OwnForeign | Region::Invalid => true,
                    _ => false,
                }
        };
        // A scatter entry receiving `n` bytes: LOCAL_WRITE is needed.
        let scatter = |g: &SgeSpec, n: u64| {
            n > 0
                && match g.at.region {
                    Region::Own => !g.at.in_bounds(n),
                    Region::OwnCanary | Region::OwnForeign | Region::Invalid => true,
                    _ => false,
                }
        };
        // The remote range, needing REMOTE_WRITE (`write`) or REMOTE_READ.
        let remote = |l: &Loc, len: u64, write: bool| {
            len > 0
                && match l.region {
                    Region::Peer => !l.in_bounds(len),
                    Region::PeerCanary => write || !l.in_bounds(len),
                    Region::PeerForeign => true,
                    _ => false,
                }
        };
        let payload = |p: &Payload| match p {
            Payload::Sges(s) => (
                s.iter().any(gather),
                s.iter().map(|g| u64::from(g.len)).sum(),
            ),
            Payload::Inline(d) => (false, d.len() as u64),
        };
        match self {
            Body::Write {
                remote: r,
                payload: p,
                ..
            } => {
                let (bad, len) = payload(p);
                bad || remote(r, len, true)
            }
            Body::Send { payload: p, .. } => payload(p).0,
            Body::Read { remote: r, sges } => {
                let len = sges.iter().map(|g| u64::from(g.len)).sum();
                remote(r, len, false) || sges.iter().any(|g| scatter(g, u64::from(g.len)))
            }
            Body::Cas {
                remote: r, result, ..
            }
            | Body::Fa {
                remote: r, result, ..
            } => {
                let target = match r.region {
                    // An atomic needs REMOTE_ATOMIC and 8 aligned bytes
                    // (regions are page-aligned).
                    Region::Peer => !r.in_bounds(8) || r.off % 8 != 0,
                    Region::PeerCanary | Region::PeerForeign => true,
                    _ => false,
                };
                target || result.len < 8 || scatter(result, 8)
            }
            Body::Nop => false,
        }
    }
}

/// A WQE the poster wrote and no completion has accounted for yet.
#[derive(Clone, Copy, Debug)]
struct Posted {
    /// Ring position (free-running WQEBBs).
    pos: u32,
    index: u16,
    opcode: u8,
    signaled: bool,
    must_fail: bool,
    /// Written by the crate's builders (never malformed).
    builder: bool,
}

/// What the poster knows about its queues, to check the completions.
#[derive(Default)]
struct Shadow {
    /// Send-queue ring size in WQEBBs.
    sq_cnt: u32,
    /// The producer position (free-running WQEBBs), as `SqRing` keeps it.
    pi: u32,
    sq: VecDeque<Posted>,
    /// A send error (or flush) was polled.
    sq_error: bool,
    /// A raw WQE's `ds` disagreed with its WQEBBs: boundaries differ.
    desync: bool,
    /// Receives posted / completed (free-running).
    rq_head: u32,
    rq_next: u32,
    rq_error: bool,
}

impl Shadow {
    /// Where a WQE of `wqebbs` will land: NOP padding first if it would
    /// not fit before the ring end (`SqRing::reserve`).
    fn next_at(&self, wqebbs: u32) -> u32 {
        let off = self.pi % self.sq_cnt;
        if off + wqebbs > self.sq_cnt {
            self.pi + (self.sq_cnt - off)
        } else {
            self.pi
        }
    }

    /// Records a post that returned `index` (`p.pos` is filled in here).
    fn posted(&mut self, index: u16, wqebbs: u32, p: Posted) {
        let at = self.next_at(wqebbs);
        assert_eq!(index, at as u16, "the post landed where SqRing did not say");
        if at != self.pi {
            self.sq.push_back(Posted {
                pos: self.pi,
                index: self.pi as u16,
                opcode: opcode::NOP,
                signaled: false,
                must_fail: false,
                builder: true,
            });
        }
        self.sq.push_back(Posted { pos: at, ..p });
        self.pi = at + wqebbs;
    }

    fn on_send(&mut self, c: &Completion) {
        let found = self.sq.iter().position(|p| p.index == c.wqe_counter);
        if self.desync {
            // The device's WQE boundaries are not ours: only forget what
            // this completion retires if it names one of our WQEs.
            if let Some(pos) = found {
                self.sq.drain(..=pos);
            }
            return;
        }
        let pos = found.unwrap_or_else(|| {
            panic!(
                "send completion {c:?} names no outstanding WQE (outstanding: {:?})",
                self.sq
            )
        });
        for p in self.sq.drain(..pos) {
            assert!(
                !self.sq_error,
                "WQE {p:?} has no completion though the QP is in error (next: {c:?})"
            );
            assert!(
                !p.signaled,
                "signaled WQE {p:?} completed silently (next: {c:?})"
            );
            assert!(
                c.syndrome.is_some() || !p.must_fail,
                "WQE {p:?} must have failed, yet a later one succeeded: {c:?}"
            );
        }
        let p = self.sq.pop_front().expect("found above");
        match c.syndrome {
            None => {
                assert!(!self.sq_error, "success after an error: {c:?}");
                assert!(p.signaled, "unsignaled WQE {p:?} completed: {c:?}");
                assert!(!p.must_fail, "WQE {p:?} must have failed: {c:?}");
                assert_eq!(c.kind, Kind::Send { opcode: p.opcode }, "{p:?}");
            }
            Some(s) => {
                assert_eq!(c.kind, Kind::SendError { opcode: p.opcode }, "{p:?}");
                if self.sq_error {
                    assert_eq!(s, Syndrome::WrFlush, "a second error is a flush: {c:?}");
                }
                assert!(
                    !(p.builder && s == Syndrome::LocalQpOp),
                    "a WQE the crate's builders wrote was refused as malformed: {p:?} {c:?}"
                );
                self.sq_error = true;
            }
        }
    }

    fn on_recv(&mut self, c: &Completion) {
        assert_ne!(
            self.rq_next, self.rq_head,
            "receive completion {c:?} with no receive outstanding"
        );
        assert_eq!(
            c.wqe_counter, self.rq_next as u16,
            "receives complete in order: {c:?}"
        );
        self.rq_next = self.rq_next.wrapping_add(1);
        match c.syndrome {
            None => assert!(!self.rq_error, "receive success after an error: {c:?}"),
            Some(s) => {
                assert_eq!(c.kind, Kind::RecvError, "{c:?}");
                if self.rq_error {
                    assert_eq!(s, Syndrome::WrFlush, "a second error is a flush: {c:?}");
                }
                self.rq_error = true;
            }
        }
    }
}

/// One side: its device and resources.
struct End {
    ctx: Context,
    // Fields drop in order: the QP before its CQ and PDs (it holds them
    // anyway), the regions last.
    qp: Qp,
    cq: Cq,
    _pd: Pd,
    _other_pd: Pd,
    main: Mr,
    canary: Mr,
    foreign: Mr,
    shadow: Shadow,
}

impl End {
    fn new() -> End {
        let ctx = Context::soft(Progress::Manual);
        let pd = Pd::new(&ctx).expect("pd");
        let other_pd = Pd::new(&ctx).expect("pd");
        // Room for every WQE (at most one per WQEBB) and receive at once.
        let cq = Cq::new(&ctx, 64).expect("cq");
        let mut qp = Qp::builder(&pd, &cq, &cq).caps(CAPS).build().expect("qp");
        let sq_cnt = qp.sq_free();
        assert!(
            sq_cnt + CAPS.max_recv_wr <= cq.entries(),
            "the CQ cannot overrun"
        );
        let main = pd.alloc_mr(MR_LEN, Access::ALL).expect("mr");
        let canary = pd.alloc_mr(MR_LEN, Access::REMOTE_READ).expect("mr");
        let foreign = other_pd.alloc_mr(MR_LEN, Access::ALL).expect("mr");
        // SAFETY: fresh regions no WQE or peer has been told about; the
        // devices are manual and only this thread steps them.
        unsafe {
            canary.write(0, &[CANARY; MR_LEN]);
            foreign.write(0, &[CANARY; MR_LEN]);
        }
        End {
            ctx,
            qp,
            cq,
            _pd: pd,
            _other_pd: other_pd,
            main,
            canary,
            foreign,
            shadow: Shadow {
                sq_cnt,
                ..Shadow::default()
            },
        }
    }

    fn poll(&mut self, max: usize) -> usize {
        let qpn = self.qp.qpn();
        let sh = &mut self.shadow;
        let n = self
            .cq
            .poll(max, |c| {
                assert_eq!(c.qpn, qpn, "a completion of another QP: {c:?}");
                match c.kind {
                    Kind::Send { .. } | Kind::SendError { .. } => sh.on_send(c),
                    _ => sh.on_recv(c),
                }
            })
            .unwrap_or_else(|e| panic!("poll: {e} (the CQ has room for everything)"));
        if sh.sq_error || sh.rq_error {
            assert_eq!(self.qp.state(), QpState::Error, "an error CQE was polled");
        }
        n
    }

    fn poll_all(&mut self) {
        while self.poll(64) > 0 {}
    }

    fn check_canaries(&self) {
        for (name, mr) in [("canary", &self.canary), ("foreign", &self.foreign)] {
            let mut b = vec![0u8; MR_LEN];
            // SAFETY: the devices are manual and stepped only by this
            // thread, so nothing executes while this reads.
            unsafe { mr.read(0, &mut b) };
            if let Some(i) = b.iter().position(|&x| x != CANARY) {
                panic!("the {name} region changed at byte {i}: the device wrote memory it may not");
            }
        }
    }
}

/// The two connected QPs and their devices.
pub struct Harness {
    a: End,
    b: End,
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

impl Harness {
    /// Two fresh devices with a connected QP pair (fresh each input, so
    /// that keys, QPNs and memory start alike and every input replays the
    /// same way).
    pub fn new() -> Harness {
        let (mut a, mut b) = (End::new(), End::new());
        // A finite RNR retry count: a SEND nobody posted a receive for
        // fails after two passes instead of waiting forever.
        let opts = ConnectOpts {
            rnr_retry: 1,
            ..ConnectOpts::default()
        };
        let ia = a.qp.local_info(&opts).expect("info");
        let ib = b.qp.local_info(&opts).expect("info");
        a.qp.connect(&ib, &opts).expect("connect");
        b.qp.connect(&ia, &opts).expect("connect");
        Harness { a, b }
    }

    fn end(&mut self, s: Side) -> &mut End {
        match s {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    /// The key and address `l` names for the side `s`.
    fn resolve(&self, s: Side, l: &Loc) -> (u32, u64) {
        let (own, peer) = match s {
            Side::A => (&self.a, &self.b),
            Side::B => (&self.b, &self.a),
        };
        let (key, base) = match l.region {
            Region::Own => (own.main.lkey(), own.main.addr()),
            Region::OwnCanary => (own.canary.lkey(), own.canary.addr()),
            Region::OwnForeign => (own.foreign.lkey(), own.foreign.addr()),
            Region::Peer => (peer.main.rkey(), peer.main.addr()),
            Region::PeerCanary => (peer.canary.rkey(), peer.canary.addr()),
            Region::PeerForeign => (peer.foreign.rkey(), peer.foreign.addr()),
            Region::Invalid => (INVALID_KEY, own.main.addr()),
            Region::Key(k) => (k, own.main.addr()),
        };
        (key, base.wrapping_add_signed(i64::from(l.off)))
    }

    fn remote(&self, s: Side, l: &Loc) -> Remote {
        let (rkey, addr) = self.resolve(s, l);
        Remote { addr, rkey }
    }

    fn sge(&self, s: Side, g: &SgeSpec) -> Sge {
        let (lkey, addr) = self.resolve(s, &g.at);
        Sge {
            addr,
            len: u32::from(g.len),
            lkey,
        }
    }

    /// Runs one operation.
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::Raw { side, fix, bytes } => self.raw(*side, *fix, bytes),
            Op::Build {
                side,
                body,
                signaled,
                mutations,
            } => self.build(*side, body, *signaled, mutations),
            Op::Ring(s) => self.end(*s).qp.ring_doorbell(),
            Op::Progress(s) => {
                self.end(*s).ctx.progress().expect("progress");
            }
            Op::Poll(s, max) => {
                self.end(*s).poll(usize::from(*max));
            }
            Op::Recv(s, specs) => {
                let sges: Vec<Sge> = specs.iter().map(|g| self.sge(*s, g)).collect();
                let e = self.end(*s);
                match e.qp.post_recv(&sges) {
                    Ok(()) => e.shadow.rq_head = e.shadow.rq_head.wrapping_add(1),
                    Err(Error::RecvQueueFull { .. } | Error::TooManySges { .. }) => {}
                    Err(e) => panic!("post_recv: {e}"),
                }
            }
            Op::Idle => {
                self.a.qp.ring_doorbell();
                self.b.qp.ring_doorbell();
                self.settle(1);
            }
            Op::ToError(s) => self.end(*s).qp.to_error().expect("to_error"),
        }
    }

    fn settle(&mut self, rounds: usize) {
        for _ in 0..rounds {
            self.a.ctx.progress_until_idle().expect("progress");
            self.b.ctx.progress_until_idle().expect("progress");
        }
    }

    fn raw(&mut self, s: Side, fix: Fix, bytes: &[u8]) {
        let e = self.end(s);
        let mut b = bytes.to_vec();
        let wqebbs = b.len().div_ceil(WQEBB) as u32;
        if fix != Fix::default() && !b.is_empty() && b.len() < 16 {
            b.resize(16, 0); // room for the control segment (same WQEBBs)
        }
        if b.len() >= 16 {
            if fix.index {
                let at = e.shadow.next_at(wqebbs.max(1)) as u16;
                b[0] = 0;
                b[1..3].copy_from_slice(&at.to_be_bytes());
            }
            if fix.qpn {
                b[4..7].copy_from_slice(&e.qp.qpn().to_be_bytes()[1..]);
            }
            if fix.ds {
                b[7] = (b[7] & 0xc0) | (bytes.len().div_ceil(16) as u8 & 0x3f);
            }
            if fix.signaled {
                b[11] |= wqe::flags::SIGNALED;
            }
        }
        post_raw(e, &b);
    }

    fn build(&mut self, s: Side, body: &Body, signaled: bool, mutations: &[(u8, u8)]) {
        let sges: Vec<Sge> = match body {
            Body::Write {
                payload: Payload::Sges(g),
                ..
            }
            | Body::Send {
                payload: Payload::Sges(g),
                ..
            }
            | Body::Read { sges: g, .. } => g.iter().map(|g| self.sge(s, g)).collect(),
            Body::Cas { result, .. } | Body::Fa { result, .. } => vec![self.sge(s, result)],
            _ => Vec::new(),
        };
        let w: Box<dyn WqeBuild + '_> = match body {
            Body::Write {
                remote,
                payload,
                imm,
            } => {
                let r = self.remote(s, remote);
                let w = match payload {
                    Payload::Sges(_) => Write::new(r, &sges),
                    Payload::Inline(d) => Write::inline(r, d),
                };
                let w = if signaled { w.signaled() } else { w };
                match imm {
                    Some(i) => Box::new(w.imm(*i)),
                    None => Box::new(w),
                }
            }
            Body::Send { payload, imm } => {
                let w = match payload {
                    Payload::Sges(_) => Send::new(&sges),
                    Payload::Inline(d) => Send::inline(d),
                };
                let w = if signaled { w.signaled() } else { w };
                match imm {
                    Some(i) => Box::new(w.imm(*i)),
                    None => Box::new(w),
                }
            }
            Body::Read { remote, .. } => {
                let w = Read::new(self.remote(s, remote), &sges);
                Box::new(if signaled { w.signaled() } else { w })
            }
            Body::Cas {
                remote,
                compare,
                swap,
                ..
            } => {
                let w = AtomicCas::new(self.remote(s, remote), sges[0], *compare, *swap);
                Box::new(if signaled { w.signaled() } else { w })
            }
            Body::Fa { remote, add, .. } => {
                let w = AtomicFa::new(self.remote(s, remote), sges[0], *add);
                Box::new(if signaled { w.signaled() } else { w })
            }
            Body::Nop => Box::new(if signaled {
                Nop::new().signaled()
            } else {
                Nop::new()
            }),
        };
        let must_fail = body.must_fail();
        let e = match s {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        };
        let wqebbs = wqe::wqebbs(w.ds()) as u32;
        if mutations.is_empty() {
            match e.qp.post(&*w) {
                Ok(index) => e.shadow.posted(
                    index,
                    wqebbs,
                    Posted {
                        pos: 0,
                        index,
                        opcode: w.opcode(),
                        signaled,
                        must_fail,
                        builder: true,
                    },
                ),
                Err(
                    Error::SendQueueFull { .. }
                    | Error::InlineTooLarge { .. }
                    | Error::TooManySges { .. }
                    | Error::AtomicResultTooSmall { .. }
                    | Error::WqeTooLarge { .. },
                ) => {}
                Err(err) => panic!("post: {err}"),
            }
        } else {
            let mut b = vec![0u8; wqebbs as usize * WQEBB];
            let at = e.shadow.next_at(wqebbs) as u16;
            wqe::encode(&*w, at, e.qp.qpn(), &mut b);
            for &(p, x) in mutations {
                let n = b.len();
                b[usize::from(p) % n] ^= x;
            }
            post_raw(e, &b);
        }
    }

    /// Rings, steps, polls; then the end-of-program checks (module doc).
    pub fn finish(mut self) {
        self.a.qp.ring_doorbell();
        self.b.qp.ring_doorbell();
        self.settle(SETTLE_ROUNDS);
        self.a.poll_all();
        self.b.poll_all();
        // In RTS, a signaled NOP retires everything before it.
        let mut nop = [false; 2];
        for (i, e) in [&mut self.a, &mut self.b].into_iter().enumerate() {
            if e.qp.state() != QpState::Rts {
                continue;
            }
            match e.qp.post(&Nop::new().signaled()) {
                Ok(index) => {
                    let p = Posted {
                        pos: 0,
                        index,
                        opcode: opcode::NOP,
                        signaled: true,
                        must_fail: false,
                        builder: true,
                    };
                    e.shadow.posted(index, 1, p);
                    e.qp.ring_doorbell();
                    nop[i] = true;
                }
                // Unsignaled WQEs fill the ring: nothing can retire them
                // (the poster's doing, as on hardware).
                Err(Error::SendQueueFull { .. }) => {}
                Err(err) => panic!("post NOP: {err}"),
            }
        }
        self.settle(SETTLE_ROUNDS);
        self.a.poll_all();
        self.b.poll_all();
        // A peer in ERROR drops requests without an answer: what it was
        // sent waits for the ACK timeout (much longer than the settling),
        // and the NOP behind it.
        let peer_rts = [
            self.b.qp.state() == QpState::Rts,
            self.a.qp.state() == QpState::Rts,
        ];
        for (i, e) in [&mut self.a, &mut self.b].into_iter().enumerate() {
            if nop[i] && peer_rts[i] && e.qp.state() == QpState::Rts && !e.shadow.desync {
                assert!(e.shadow.sq.is_empty(), "left: {:?}", e.shadow.sq);
                assert_eq!(e.qp.sq_free(), e.shadow.sq_cnt, "the NOP retired the ring");
            }
        }
        // In ERROR, every WQE completes.
        self.a.qp.to_error().expect("to_error");
        self.b.qp.to_error().expect("to_error");
        self.settle(SETTLE_ROUNDS);
        for e in [&mut self.a, &mut self.b] {
            e.poll_all();
            if !e.shadow.desync {
                // What is left ran before the error without a completion:
                // unsignaled WQEs that succeeded and that no later
                // completion retires (their space stays taken until RESET,
                // as on hardware).
                for p in &e.shadow.sq {
                    assert!(!p.signaled, "never completed: {p:?}");
                    assert!(!p.must_fail, "succeeded though it must fail: {p:?}");
                }
                let held = e.shadow.sq.front().map_or(0, |p| e.shadow.pi - p.pos);
                assert_eq!(e.qp.sq_free(), e.shadow.sq_cnt - held, "send queue space");
            }
            assert_eq!(
                e.shadow.rq_next, e.shadow.rq_head,
                "every receive completed"
            );
            assert_eq!(e.qp.recv_outstanding(), 0);
            e.check_canaries();
        }
    }
}

/// Posts `b` raw and records it (and whether its `ds` disagrees with its
/// length).
fn post_raw(e: &mut End, b: &[u8]) {
    let wqebbs = b.len().div_ceil(WQEBB) as u32;
    let (qpn, at) = (e.qp.qpn(), e.shadow.next_at(wqebbs.max(1)));
    match e.qp.post_raw(b) {
        Ok(index) => {
            let p = Posted {
                pos: 0,
                index,
                opcode: b.get(3).copied().unwrap_or(0),
                signaled: b.get(11).is_some_and(|f| f & wqe::flags::SIGNALED != 0),
                must_fail: false,
                builder: false,
            };
            e.shadow.posted(index, wqebbs, p);
            if !self_describing(b, at, qpn) {
                e.shadow.desync = true;
            }
        }
        Err(Error::SendQueueFull { .. }) => {}
        Err(Error::WqeTooLarge { wqebbs: n, .. }) => {
            assert!(n == 0 || n > 2, "a WQE of {n} WQEBBs was refused");
        }
        Err(err) => panic!("post_raw: {err}"),
    }
}

/// Whether the device can find this WQE's boundaries from its own bytes,
/// as `SoftQp::starts_wqe` and `SoftQp::span` do: its control segment
/// names its position, the QP, opmod 0 and a `ds` spanning exactly the
/// WQEBBs posted, and no later WQEBB of it looks like a control segment
/// opening a WQE there. The device cannot know the poster's boundaries
/// otherwise (hardware walks the ring by `ds` alone).
fn self_describing(b: &[u8], at: u32, qpn: u32) -> bool {
    let n = b.len().div_ceil(WQEBB);
    let starts = |k: usize| {
        let w = |i: usize| {
            let mut x = [0u8; 4];
            for (j, v) in x.iter_mut().enumerate() {
                *v = b.get(k * WQEBB + i + j).copied().unwrap_or(0);
            }
            u32::from_be_bytes(x)
        };
        let (w0, w1) = (w(0), w(4));
        (w0 >> 8) as u16 == at.wrapping_add(k as u32) as u16
            && w0 >> 24 == 0
            && w1 >> 8 == qpn
            && w1 & 0x3f != 0
    };
    let ds = usize::from(b.get(7).map_or(0, |x| x & 0x3f));
    starts(0) && wqe::wqebbs(ds) == n && !(1..n).any(starts)
}

/// Runs the program `data` encodes (the fuzz target).
pub fn run(data: &[u8]) {
    let mut h = Harness::new();
    let mut r = Reader::new(data);
    while !r.is_empty() {
        h.apply(&Op::decode(&mut r));
    }
    h.finish();
}
