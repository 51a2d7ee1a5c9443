//! The PRM vocabulary: the numbers and names of the mlx5 Programmer's
//! Reference Manual (and rdma-core's `mlx5dv.h`, `verbs.h`) that every
//! other module speaks: sizes, send and CQE opcodes, control flags,
//! syndromes, QP states, access rights. Pure constants and small types;
//! it imports nothing of this crate, and everything else may import it.

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

/// Bytes an atomic operates on and returns.
pub const ATOMIC_SIZE: u32 = 8;

/// `MLX5_INVALID_LKEY`: terminates a receive scatter list shorter than its
/// WQE's room.
pub const INVALID_LKEY: u32 = 0x100;

/// Bytes in a CQE.
pub const CQE_SIZE: usize = 64;

/// CQE opcodes (high nibble of `op_own`; `mlx5::cqe::op`).
pub mod cqe_op {
    /// Requester completion.
    pub const REQ: u8 = 0x0;
    /// Responder: RDMA WRITE with immediate.
    pub const RESP_WR_IMM: u8 = 0x1;
    /// Responder: SEND.
    pub const RESP_SEND: u8 = 0x2;
    /// Responder: SEND with immediate.
    pub const RESP_SEND_IMM: u8 = 0x3;
    /// Requester error.
    pub const REQ_ERR: u8 = 0xd;
    /// Responder error.
    pub const RESP_ERR: u8 = 0xe;
    /// Not yet written (how a CQ buffer is initialised).
    pub const INVALID: u8 = 0xf;
}

/// Error syndromes (`MLX5_CQE_SYNDROME_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Syndrome {
    /// Local length error (a receive too small for the incoming message).
    LocalLength,
    /// Local QP operation error (malformed WQE: bad opcode, ds, inline size).
    LocalQpOp,
    /// Local protection error (bad lkey, bounds or local access rights).
    LocalProt,
    /// Flushed: the QP was in the error state.
    WrFlush,
    /// Memory window bind error.
    MwBind,
    /// Bad response.
    BadResp,
    /// Local access error.
    LocalAccess,
    /// Remote invalid request (opcode not allowed by the target QP).
    RemoteInvalRequest,
    /// Remote access error (bad rkey, bounds, alignment or access flags).
    RemoteAccess,
    /// Remote operation error.
    RemoteOp,
    /// Transport retry counter exceeded (peer unreachable or gone).
    TransportRetryExceeded,
    /// Receiver-not-ready retry counter exceeded.
    RnrRetryExceeded,
    /// Remote aborted.
    RemoteAborted,
    /// A syndrome this crate does not name.
    Other(u8),
}

impl Syndrome {
    /// The syndrome byte.
    pub fn code(self) -> u8 {
        match self {
            Syndrome::LocalLength => 0x01,
            Syndrome::LocalQpOp => 0x02,
            Syndrome::LocalProt => 0x04,
            Syndrome::WrFlush => 0x05,
            Syndrome::MwBind => 0x06,
            Syndrome::BadResp => 0x10,
            Syndrome::LocalAccess => 0x11,
            Syndrome::RemoteInvalRequest => 0x12,
            Syndrome::RemoteAccess => 0x13,
            Syndrome::RemoteOp => 0x14,
            Syndrome::TransportRetryExceeded => 0x15,
            Syndrome::RnrRetryExceeded => 0x16,
            Syndrome::RemoteAborted => 0x22,
            Syndrome::Other(c) => c,
        }
    }

    /// The syndrome of a syndrome byte.
    pub fn from_code(code: u8) -> Self {
        match code {
            0x01 => Syndrome::LocalLength,
            0x02 => Syndrome::LocalQpOp,
            0x04 => Syndrome::LocalProt,
            0x05 => Syndrome::WrFlush,
            0x06 => Syndrome::MwBind,
            0x10 => Syndrome::BadResp,
            0x11 => Syndrome::LocalAccess,
            0x12 => Syndrome::RemoteInvalRequest,
            0x13 => Syndrome::RemoteAccess,
            0x14 => Syndrome::RemoteOp,
            0x15 => Syndrome::TransportRetryExceeded,
            0x16 => Syndrome::RnrRetryExceeded,
            0x22 => Syndrome::RemoteAborted,
            c => Syndrome::Other(c),
        }
    }
}

/// Access rights of a memory region (and, for the remote ones, of a QP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Access(pub u32);

impl Access {
    /// The device may write the region (receives, READ results, atomics).
    pub const LOCAL_WRITE: Access = Access(1);
    /// Peers may RDMA WRITE it.
    pub const REMOTE_WRITE: Access = Access(1 << 1);
    /// Peers may RDMA READ it.
    pub const REMOTE_READ: Access = Access(1 << 2);
    /// Peers may run atomics on it.
    pub const REMOTE_ATOMIC: Access = Access(1 << 3);
    /// Everything.
    pub const ALL: Access = Access(0xf);

    /// Whether every right in `other` is granted.
    pub fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        Access(self.0 | rhs.0)
    }
}

/// RC QP states.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QpState {
    /// Just created.
    Reset,
    /// Initialised: receives may be posted.
    Init,
    /// Ready to receive.
    Rtr,
    /// Ready to send.
    Rts,
    /// Error: every WQE completes with a flush error.
    Error,
}

impl QpState {
    /// The state of a `QpState as u8` (anything unknown is ERROR).
    pub(crate) fn from_u8(v: u8) -> QpState {
        match v {
            0 => QpState::Reset,
            1 => QpState::Init,
            2 => QpState::Rtr,
            3 => QpState::Rts,
            _ => QpState::Error,
        }
    }
}
