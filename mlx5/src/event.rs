//! Asynchronous events: what a device reports outside any completion queue,
//! as `ibv_get_async_event` reports it on hardware.
//!
//! The one an RC user cannot do without is the responder side of a remote
//! error. A bad rkey, remote bounds, missing remote rights (IBA class C) or
//! an invalid request such as a misaligned atomic fails the requester's WQE
//! with an error CQE *and* moves the responder QP to ERROR. The responder's
//! owner may have no receive WQE that could carry the news (the operation
//! consumed none, or the QP receives through an SRQ), so the device tells
//! it here: [`AsyncEvent::QpAccessError`] or
//! [`AsyncEvent::QpRequestError`] naming the QP. A QP attached to an SRQ
//! that enters ERROR also reports [`AsyncEvent::QpLastWqeReached`], as
//! ConnectX does, so its owner knows no further receive of the SRQ will
//! complete on it.
//!
//! [`crate::Context::async_event`] takes the next event without waiting;
//! [`crate::Context::wait_async_event`] waits up to a deadline. Events queue
//! up in the device until taken (the software device keeps the latest
//! [`MAX_QUEUED`] and counts what it drops).

/// How many events the software device keeps before it drops the oldest.
pub const MAX_QUEUED: usize = 4096;

/// An asynchronous event (`enum ibv_event_type` on hardware).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AsyncEvent {
    /// `IBV_EVENT_QP_FATAL`: the QP hit an error no completion describes
    /// and entered ERROR.
    QpFatal {
        /// The QP.
        qpn: u32,
    },
    /// `IBV_EVENT_QP_REQ_ERR`: as responder, the QP received an invalid
    /// request (a misaligned atomic, an opcode it does not support) and
    /// entered ERROR.
    QpRequestError {
        /// The QP.
        qpn: u32,
    },
    /// `IBV_EVENT_QP_ACCESS_ERR`: as responder, the QP received a request
    /// it had no right to execute (bad rkey, outside the region, missing
    /// remote access right) and entered ERROR.
    QpAccessError {
        /// The QP.
        qpn: u32,
    },
    /// `IBV_EVENT_COMM_EST`: the first packet arrived on a QP in RTR.
    CommEstablished {
        /// The QP.
        qpn: u32,
    },
    /// `IBV_EVENT_QP_LAST_WQE_REACHED`: a QP attached to an SRQ entered
    /// ERROR; no further receive WQE of the SRQ will complete on it.
    QpLastWqeReached {
        /// The QP.
        qpn: u32,
    },
    /// `IBV_EVENT_SQ_DRAINED`.
    SqDrained {
        /// The QP.
        qpn: u32,
    },
    /// `IBV_EVENT_PATH_MIG` or `IBV_EVENT_PATH_MIG_ERR`.
    PathMigration {
        /// The QP.
        qpn: u32,
        /// Whether migration failed (`PATH_MIG_ERR`).
        failed: bool,
    },
    /// `IBV_EVENT_CQ_ERR`: the CQ overran or hit a protection error.
    CqError {
        /// The CQ.
        cqn: u32,
    },
    /// `IBV_EVENT_SRQ_ERR`.
    SrqError {
        /// The SRQ.
        srqn: u32,
    },
    /// `IBV_EVENT_SRQ_LIMIT_REACHED`.
    SrqLimitReached {
        /// The SRQ.
        srqn: u32,
    },
    /// A port event (`PORT_ACTIVE`, `PORT_ERR`, `LID_CHANGE`,
    /// `PKEY_CHANGE`, `SM_CHANGE`, `CLIENT_REREGISTER`, `GID_CHANGE`).
    Port {
        /// The port number.
        port: u8,
        /// The `ibv_event_type` value.
        code: u32,
    },
    /// `IBV_EVENT_DEVICE_FATAL`: the device is unusable.
    DeviceFatal,
    /// An event type this crate does not name (its `ibv_event_type` value).
    Other {
        /// The `ibv_event_type` value.
        code: u32,
    },
}

impl AsyncEvent {
    /// The QP the event is about, if it is about one.
    pub fn qpn(&self) -> Option<u32> {
        match *self {
            AsyncEvent::QpFatal { qpn }
            | AsyncEvent::QpRequestError { qpn }
            | AsyncEvent::QpAccessError { qpn }
            | AsyncEvent::CommEstablished { qpn }
            | AsyncEvent::QpLastWqeReached { qpn }
            | AsyncEvent::SqDrained { qpn }
            | AsyncEvent::PathMigration { qpn, .. } => Some(qpn),
            _ => None,
        }
    }
}
