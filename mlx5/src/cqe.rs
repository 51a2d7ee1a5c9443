//! 64-byte completion queue entries (`struct mlx5_cqe64`, `struct
//! mlx5_err_cqe`): parsing what the NIC wrote, and encoding (the software
//! device writes the same bytes).
//!
//! | offset | field | meaning here |
//! |---|---|---|
//! | 32 | `srqn_uidx` (be32) | SRQ number for SRQ receives (low 24 bits) |
//! | 36 | `imm_inval_pkey` (be32) | immediate of WRITE_IMM / SEND_IMM |
//! | 44 | `byte_cnt` (be32) | bytes received, or read/atomic bytes at the requester |
//! | 54 | `vendor_err_synd` | error CQEs only |
//! | 55 | `syndrome` | error CQEs only |
//! | 56 | `sop_drop_qpn` (be32) | QPN (low 24 bits); WQE opcode (high 8) in requester CQEs |
//! | 60 | `wqe_counter` (be16) | send: index of the completed WQE; receive: RQ/SRQ WQE index |
//! | 63 | `op_own` | CQE opcode (high nibble), owner bit (bit 0) |
//!
//! The producer writes `op_own` last; a CQE at consumer counter `ci` of a
//! queue of `n = 2^k` entries belongs to software when its opcode is not
//! `INVALID` and its owner bit equals bit `k` of `ci` (the lap parity).

use crate::prm::opcode;

pub use crate::prm::{CQE_SIZE, Syndrome, cqe_op as op};

/// What a completion reports, decoded from a CQE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A send-queue WQE completed; `opcode` is the WQE's opcode ([`opcode`]).
    Send {
        /// The WQE opcode.
        opcode: u8,
    },
    /// A WRITE_IMM arrived (consumed a receive WQE).
    RecvWriteImm,
    /// A SEND arrived.
    RecvSend,
    /// A SEND_IMM arrived.
    RecvSendImm,
    /// A send-queue WQE failed (or was flushed); `opcode` is the WQE's
    /// opcode, which hardware reports in the top byte of
    /// `s_wqe_opcode_qpn`.
    SendError {
        /// The WQE opcode.
        opcode: u8,
    },
    /// A receive WQE failed (or was flushed).
    RecvError,
}

impl Kind {
    /// Whether this is an error completion.
    pub fn is_error(self) -> bool {
        matches!(self, Kind::SendError { .. } | Kind::RecvError)
    }
}

/// A decoded CQE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cqe {
    /// What completed.
    pub kind: Kind,
    /// The QP the completion belongs to.
    pub qpn: u32,
    /// Send: the WQE index (control-segment `wqe_index`) of the completed
    /// WQE. Receive: the RQ or SRQ WQE index that was consumed.
    pub wqe_counter: u16,
    /// Bytes transferred (received bytes; READ/atomic bytes at the requester).
    pub byte_len: u32,
    /// The immediate, host order (WRITE_IMM / SEND_IMM receives).
    pub imm: u32,
    /// The SRQ number of an SRQ receive (0 otherwise).
    pub srqn: u32,
    /// Error syndrome (error CQEs).
    pub syndrome: Option<Syndrome>,
    /// Vendor error syndrome (error CQEs; 0 otherwise).
    pub vendor_syndrome: u8,
    /// The sender asked for a solicited event (`op_own` bit 1, what
    /// `mlx5dv_get_cqe_se` reads); receive completions only.
    pub solicited: bool,
}

/// Offsets in a CQE64 (checked against `mlx5dv.h` by the golden tests).
pub mod offset {
    /// `srqn_uidx`.
    pub const SRQN: usize = 32;
    /// `imm_inval_pkey`.
    pub const IMM: usize = 36;
    /// `byte_cnt`.
    pub const BYTE_CNT: usize = 44;
    /// `vendor_err_synd` (error CQE).
    pub const VENDOR_SYNDROME: usize = 54;
    /// `syndrome` (error CQE).
    pub const SYNDROME: usize = 55;
    /// `sop_drop_qpn` / `s_wqe_opcode_qpn`.
    pub const QPN: usize = 56;
    /// `wqe_counter`.
    pub const WQE_COUNTER: usize = 60;
    /// `op_own`.
    pub const OP_OWN: usize = 63;
}

/// Whether the CQE with `op_own` at consumer counter `ci` of a queue of
/// `2^log_n` entries belongs to software.
#[inline]
pub fn is_sw_owned(op_own: u8, ci: u32, log_n: u32) -> bool {
    op_own >> 4 != op::INVALID && (u32::from(op_own) ^ (ci >> log_n)) & 1 == 0
}

/// Decodes a software-owned CQE. Unknown opcodes decode as a receive error
/// with syndrome `Other(opcode)`, never as success.
pub fn parse(b: &[u8; CQE_SIZE]) -> Cqe {
    // SAFETY: `b` is a whole CQE.
    unsafe { read(b.as_ptr(), b[offset::OP_OWN]) }
}

/// [`parse`] of the CQE at `p` whose `op_own` byte the caller already read
/// (with the ordering it needs): each field is loaded where it lies, only
/// the ones its opcode uses.
///
/// # Safety
///
/// `p` is valid for reads of [`CQE_SIZE`] bytes that nothing writes
/// meanwhile.
#[inline(always)]
pub(crate) unsafe fn read(p: *const u8, op_own: u8) -> Cqe {
    let opcode = op_own >> 4;
    if opcode > op::RESP_SEND_IMM {
        // SAFETY: the caller's contract.
        return unsafe { read_error(p, op_own) };
    }
    // A success (successes first, in a few instructions; errors out of
    // line): the requester's, or a receive, which has the solicited bit,
    // and an immediate for WRITE_IMM and SEND_IMM.
    // SAFETY: the caller's contract.
    let c = unsafe { read_common(p) };
    let kind = match opcode {
        op::REQ => c.kind,
        op::RESP_WR_IMM => Kind::RecvWriteImm,
        op::RESP_SEND => Kind::RecvSend,
        _ => Kind::RecvSendImm,
    };
    let imm = if opcode & 1 == 1 {
        // SAFETY: as above.
        unsafe { be32_at(p, offset::IMM) }
    } else {
        0
    };
    Cqe {
        kind,
        imm,
        solicited: opcode != op::REQ && op_own & SE != 0,
        ..c
    }
}

/// The big-endian word at byte `at` of the CQE at `p`.
///
/// # Safety
///
/// `p` is valid for reads of `at + 4` bytes.
#[inline(always)]
unsafe fn be32_at(p: *const u8, at: usize) -> u32 {
    // SAFETY: the caller's contract.
    u32::from_be(unsafe { p.add(at).cast::<u32>().read_unaligned() })
}

/// The fields every CQE has, as a requester completion with no immediate.
///
/// # Safety
///
/// As [`read`].
#[inline(always)]
unsafe fn read_common(p: *const u8) -> Cqe {
    // SAFETY: every load lies inside the caller's CQE.
    unsafe {
        let qpn_word = be32_at(p, offset::QPN);
        Cqe {
            kind: Kind::Send {
                opcode: (qpn_word >> 24) as u8,
            },
            qpn: qpn_word & 0x00ff_ffff,
            wqe_counter: u16::from_be(p.add(offset::WQE_COUNTER).cast::<u16>().read_unaligned()),
            byte_len: be32_at(p, offset::BYTE_CNT),
            imm: 0,
            srqn: be32_at(p, offset::SRQN) & 0x00ff_ffff,
            syndrome: None,
            vendor_syndrome: 0,
            solicited: false,
        }
    }
}

/// [`read`] of an error CQE (or an opcode this crate does not know): the
/// syndromes, and no byte count.
///
/// # Safety
///
/// As [`read`].
#[cold]
#[inline(never)]
unsafe fn read_error(p: *const u8, op_own: u8) -> Cqe {
    // SAFETY: the caller's contract.
    let c = unsafe { read_common(p) };
    let opcode = op_own >> 4;
    let kind = match (opcode, c.kind) {
        (op::REQ_ERR, Kind::Send { opcode }) => Kind::SendError { opcode },
        _ => Kind::RecvError,
    };
    if !matches!(opcode, op::REQ_ERR | op::RESP_ERR) {
        return Cqe {
            kind,
            syndrome: Some(Syndrome::Other(opcode)),
            ..c
        };
    }
    // SAFETY: two bytes of the caller's CQE.
    let (synd, vendor) = unsafe { (*p.add(offset::SYNDROME), *p.add(offset::VENDOR_SYNDROME)) };
    Cqe {
        kind,
        byte_len: 0,
        syndrome: Some(Syndrome::from_code(synd)),
        vendor_syndrome: vendor,
        ..c
    }
}

/// Encodes a CQE as a NIC writes it, with owner bit `owner`. Byte 63
/// (`op_own`) must be stored last, after the rest is visible.
pub fn encode(c: &Cqe, owner: u8) -> [u8; CQE_SIZE] {
    let mut b = [0u8; CQE_SIZE];
    let (cqe_op, hi) = match c.kind {
        Kind::Send { opcode } => (op::REQ, opcode),
        Kind::RecvWriteImm => (op::RESP_WR_IMM, 0),
        Kind::RecvSend => (op::RESP_SEND, 0),
        Kind::RecvSendImm => (op::RESP_SEND_IMM, 0),
        Kind::SendError { opcode } => (op::REQ_ERR, opcode),
        Kind::RecvError => (op::RESP_ERR, 0),
    };
    b[offset::SRQN..offset::SRQN + 4].copy_from_slice(&(c.srqn & 0x00ff_ffff).to_be_bytes());
    if c.kind.is_error() {
        b[offset::SYNDROME] = c.syndrome.map_or(0, Syndrome::code);
        b[offset::VENDOR_SYNDROME] = c.vendor_syndrome;
    } else {
        b[offset::IMM..offset::IMM + 4].copy_from_slice(&c.imm.to_be_bytes());
        b[offset::BYTE_CNT..offset::BYTE_CNT + 4].copy_from_slice(&c.byte_len.to_be_bytes());
    }
    let qpn_word = (u32::from(hi) << 24) | (c.qpn & 0x00ff_ffff);
    b[offset::QPN..offset::QPN + 4].copy_from_slice(&qpn_word.to_be_bytes());
    b[offset::WQE_COUNTER..offset::WQE_COUNTER + 2].copy_from_slice(&c.wqe_counter.to_be_bytes());
    let se = match c.kind {
        Kind::RecvWriteImm | Kind::RecvSend | Kind::RecvSendImm if c.solicited => SE,
        _ => 0,
    };
    b[offset::OP_OWN] = (cqe_op << 4) | se | (owner & 1);
    b
}

/// The solicited-event bit of `op_own`.
const SE: u8 = 1 << 1;

/// Bytes a requester completion of `wqe_opcode` reports (READ and atomics
/// report the bytes they brought back; hardware reports 0 for the others).
pub fn requester_byte_len(wqe_opcode: u8, len: u32) -> u32 {
    match wqe_opcode {
        opcode::RDMA_READ | opcode::ATOMIC_CS | opcode::ATOMIC_FA => len,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_parse_is_identity_for_every_kind() {
        let kinds = [
            Kind::Send {
                opcode: opcode::RDMA_READ,
            },
            Kind::RecvWriteImm,
            Kind::RecvSend,
            Kind::RecvSendImm,
        ];
        for kind in kinds {
            let c = Cqe {
                kind,
                qpn: 0xabcdef,
                wqe_counter: 0xfffe,
                byte_len: 4096,
                imm: if matches!(kind, Kind::RecvWriteImm | Kind::RecvSendImm) {
                    0xdead_beef
                } else {
                    0
                },
                srqn: 7,
                syndrome: None,
                vendor_syndrome: 0,
                solicited: kind
                    != Kind::Send {
                        opcode: opcode::RDMA_READ,
                    },
            };
            assert_eq!(parse(&encode(&c, 1)), c);
        }
        let e = Cqe {
            kind: Kind::SendError {
                opcode: opcode::ATOMIC_FA,
            },
            qpn: 9,
            wqe_counter: 3,
            byte_len: 0,
            imm: 0,
            srqn: 0,
            syndrome: Some(Syndrome::RemoteAccess),
            vendor_syndrome: 0x88,
            solicited: false,
        };
        assert_eq!(parse(&encode(&e, 0)), e);
    }

    #[test]
    fn owner_parity_follows_the_lap() {
        // 4 entries (log 2): lap 0 expects owner 0, lap 1 expects 1.
        assert!(is_sw_owned(op::REQ << 4, 3, 2));
        assert!(!is_sw_owned(op::REQ << 4, 4, 2));
        assert!(is_sw_owned((op::REQ << 4) | 1, 4, 2));
        assert!(!is_sw_owned(op::INVALID << 4, 0, 2));
    }

    #[test]
    fn unknown_opcode_is_never_success() {
        let mut b = [0u8; CQE_SIZE];
        b[offset::OP_OWN] = 0x7 << 4;
        assert!(parse(&b).kind.is_error());
    }
}
