//! mlx5 direct verbs (WIP).
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

mod cq;
pub mod cqe;
mod device;
mod error;
mod hw;
mod mem;
mod mr;
mod qp;
mod soft;
mod srq;
pub mod wqe;

pub use cq::{Completion, Cq};
pub use cqe::{Kind, Syndrome};
pub use device::{Context, ENV, Progress, Selection};
pub use mr::{Access, Mr, Pd};
pub use qp::{ConnInfo, ConnectOpts, Mtu, Qp, QpBuilder, QpCaps, WqeIndex};
pub use srq::Srq;
pub use wqe::{AtomicCas, AtomicFa, Nop, Read, Remote, Send, SendImm, Sge, Write, WriteImm};

pub use error::{Error, Status};
#[doc(hidden)]
pub use hw::layout_table;

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
