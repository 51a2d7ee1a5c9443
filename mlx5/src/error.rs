//! Error types.

use crate::prm::{QpState, Syndrome};

/// Everything that can go wrong opening a device, creating resources or
/// posting work. Completion errors are not `Error`s: they arrive as error
/// completions ([`crate::Completion::status`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `MLX5_DEVICE` (or an explicit selection) names something unusable.
    #[error(
        "invalid device selection {0:?}: expected `auto`, `soft`, `soft:manual`, either followed by `@tcp`, `@tcp:IP` or `@tcp:IP:PORT` (an IPv4 address, a port up to 65535), `hw`, or an mlx5 device name such as `mlx5_0`"
    )]
    InvalidSelection(String),
    /// Hardware was asked for but cannot be used here.
    #[error(
        "no usable mlx5 device: {reason}; the software device works anywhere (MLX5_DEVICE=soft)"
    )]
    NoDevice {
        /// Why (library missing, no device, name not found).
        reason: String,
    },
    /// An rdma-core verb failed.
    #[error("{verb} failed: {source}")]
    Verb {
        /// The verb (`ibv_create_qp`, ...).
        verb: &'static str,
        /// The errno it reported.
        #[source]
        source: std::io::Error,
    },
    /// A resource attribute is out of range.
    #[error("invalid attribute: {0}")]
    InvalidAttr(String),
    /// A QP state transition the RC state machine does not allow.
    #[error("QP {qpn:#x}: cannot go from {from:?} to {to:?}")]
    InvalidTransition {
        /// The QP.
        qpn: u32,
        /// Its current state.
        from: QpState,
        /// The state asked for.
        to: QpState,
    },
    /// Resources of different devices (or protection domains) were mixed.
    #[error("{0}")]
    Mismatch(&'static str),
    /// Posting needs more send-queue room than is free; poll the send CQ.
    #[error("send queue full: {needed} WQEBBs needed, {free} free")]
    SendQueueFull {
        /// WQEBBs the WQE (and its padding) needs.
        needed: usize,
        /// WQEBBs free.
        free: usize,
    },
    /// A WQE larger than the QP allows.
    #[error("WQE of {wqebbs} WQEBBs exceeds the limit of {limit}")]
    WqeTooLarge {
        /// Its size.
        wqebbs: usize,
        /// The limit.
        limit: usize,
    },
    /// Inline data longer than the QP's `max_inline`.
    #[error("inline payload of {len} bytes exceeds max_inline {max}")]
    InlineTooLarge {
        /// Its length.
        len: usize,
        /// The QP's limit.
        max: usize,
    },
    /// More scatter/gather entries than the queue allows.
    #[error("{count} SGEs exceed the limit of {max}")]
    TooManySges {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An atomic's result buffer cannot hold the 8-byte original value.
    #[error("atomic result buffer of {len} bytes: it must hold the 8-byte original value")]
    AtomicResultTooSmall {
        /// The buffer's length.
        len: u32,
    },
    /// The receive queue (or SRQ) has no free WQE.
    #[error("receive queue full ({depth} WQEs)")]
    RecvQueueFull {
        /// Its depth.
        depth: usize,
    },
    /// The QP posts receives through an SRQ; post to the SRQ instead.
    #[error("QP {0:#x} receives through an SRQ")]
    UsesSrq(u32),
    /// The QP is not in a state that allows posting (RESET/INIT for sends).
    #[error("QP {qpn:#x} is in state {state:?}")]
    BadState {
        /// The QP.
        qpn: u32,
        /// Its state.
        state: QpState,
    },
    /// The device overwrote CQEs that were not yet polled: the CQ was too
    /// small for the work in flight. The CQ is unusable.
    #[error("CQ {0:#x} overrun: completions were lost")]
    CqOverrun(u32),
    /// Connection info could not be decoded.
    #[error("malformed connection info: {0}")]
    BadConnInfo(&'static str),
    /// The operating system refused something a device needs (the software
    /// device's eventfd or thread; `fcntl` or `poll` on the hardware
    /// backend's async event descriptor).
    #[error("{what} failed: {source}")]
    Os {
        /// What was being done.
        what: &'static str,
        /// The error it reported.
        #[source]
        source: std::io::Error,
    },
    /// Something only the software device has (stepping it, its wire
    /// statistics, fault injection) was asked of a hardware device.
    #[error("not supported on hardware: {0} (the software device only)")]
    SoftOnly(&'static str),
    /// Never returned any more: what it reported (something only the
    /// software device has, asked of hardware) is [`Error::SoftOnly`].
    #[deprecated(note = "never returned: see Error::SoftOnly")]
    #[error("{0}")]
    Progress(&'static str),
}

/// A completion's status: success, or the syndrome the device reported.
pub type Status = Result<(), Syndrome>;
