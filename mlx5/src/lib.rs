//! mlx5 direct verbs in Rust: the send-queue WQEs, CQEs, doorbells and
//! queue buffers of a ConnectX NIC, written and read by our own code, with a
//! software device that consumes exactly those bytes where no NIC exists.
//!
//! * [`wqe`] and [`cqe`] are a pure codec: typed builders
//!   ([`wqe::Write`], [`wqe::WriteImm`], [`wqe::Send`], [`wqe::SendImm`],
//!   [`wqe::Read`], [`wqe::AtomicCas`], [`wqe::AtomicFa`], [`wqe::Nop`])
//!   producing big-endian 64-byte WQEBBs, and a CQE64 parser, both checked
//!   byte for byte against rdma-core's `mlx5dv.h`. The builders live in
//!   [`wqe`] only: at the crate root, `use mlx5::*` would shadow
//!   `std::marker::Send` and `std::io::{Read, Write}`.
//! * [`Context`], [`Pd`], [`Mr`], [`Cq`], [`Qp`] (RC) and [`Srq`] own their
//!   resources: a QP keeps its PD, CQs and SRQ alive, so none can be freed
//!   under it. [`Qp::post`] writes WQEs (NOP-padding at the ring end),
//!   [`Qp::ring_doorbell`] publishes a batch with one doorbell, and
//!   [`Cq::poll`] reads CQEs in place with no allocation.
//! * The **software device** (`MLX5_DEVICE=soft`) executes RC semantics
//!   from those same buffers and validates like hardware: bad keys, bounds
//!   and rights become error CQEs with the QP in ERROR and later WQEs
//!   flushed; a remote access error fails the responder QP too and raises
//!   an [`AsyncEvent`] ([`Context::async_event`]); a missing receive is
//!   RNR-retried. It progresses on a
//!   background thread that sleeps when idle, or only when a test calls
//!   [`Context::progress`] ([`Progress::Manual`]).
//! * The **hardware backend** loads rdma-core (libibverbs, libmlx5) at run
//!   time for the control path only; building needs no rdma-core. It is
//!   UNVERIFIED ON HARDWARE (see the crate README).
//!
//! The modules form layers, each importing only those below it: the PRM
//! vocabulary ([`prm`]), the codecs ([`wqe`], [`cqe`]), the queue memory
//! and descriptors both sides share, the two backends side by side, the
//! one `Backend` door, and the resources (the README's module table).
//!
//! # Example
//!
//! ```
//! use mlx5::{Access, ConnectOpts, Context, Cq, Kind, Pd, Progress, Qp};
//! use mlx5::wqe::WriteImm;
//! # fn main() -> Result<(), mlx5::Error> {
//! let ctx = Context::soft(Progress::Background); // or Context::from_env()
//! let pd = Pd::new(&ctx)?;
//! let (mut cq_a, mut cq_b) = (Cq::new(&ctx, 16)?, Cq::new(&ctx, 16)?);
//! let mut a = Qp::builder(&pd, &cq_a, &cq_a).build()?;
//! let mut b = Qp::builder(&pd, &cq_b, &cq_b).build()?;
//! let opts = ConnectOpts::default();
//! let (ia, ib) = (a.local_info(&opts)?, b.local_info(&opts)?);
//! a.connect(&ib, &opts)?;
//! b.connect(&ia, &opts)?;
//!
//! let target = pd.alloc_mr(4096, Access::ALL)?;
//! b.post_recv(&[])?; // WRITE_IMM consumes a receive WQE
//! a.post_and_ring(&WriteImm::inline(target.remote(0), b"hello", 42).signaled())?;
//!
//! let mut got = None;
//! cq_b.poll_until(1, std::time::Duration::from_secs(5), |c| got = Some(*c))?;
//! let c = got.expect("a receive completion");
//! assert_eq!((c.kind, c.imm, c.byte_len), (Kind::RecvWriteImm, 42, 5));
//! let mut bytes = [0u8; 5];
//! // SAFETY: the WRITE_IMM's receive completion was polled: the device is
//! // done with these bytes.
//! unsafe { target.read(0, &mut bytes) };
//! assert_eq!(&bytes, b"hello");
//! # let _ = cq_a.poll(16, |_| {});
//! # Ok(()) }
//! ```
//!
//! # Across processes
//!
//! A software device reaches devices in other processes of its host
//! through shared-memory rings (the unix socket beside them carries the
//! handshake and tells of a peer's death; `MLX5_SOFT_LINK=socket` sends
//! the frames through the socket instead), and on other hosts over TCP
//! (`MLX5_DEVICE=soft@tcp`): the same
//! `ConnInfo` exchange connects the QPs. [`Context::faults`] injects
//! faults (a peer dropped or partitioned, delayed frames, a forced error
//! CQE, receives withheld). `mlx5-peer` (a binary of this crate) is a
//! scriptable far end in another process.
//!
//! # Cost
//!
//! `cargo bench -p mlx5` measures WRITE_IMM ping-pong, message rate and
//! 1 MiB READ/WRITE bandwidth in one process and across two;
//! `scripts/callgrind.sh` counts the instructions per posted WQE and per
//! polled CQE. mlx5/README.md quotes both with the machine they ran on.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

mod backend;
mod cq;
pub mod cqe;
mod device;
mod error;
pub mod event;
mod faults;
mod hw;
mod mem;
mod mr;
/// Test tooling (the `testing` feature): driving an `mlx5-peer` process.
#[cfg(feature = "testing")]
pub mod peer;
pub mod prm;
mod qp;
mod queue;
mod soft;
mod srq;
pub mod trace;
pub mod wqe;

pub use cq::{Completion, Cq};
pub use cqe::Kind;
pub use device::{Context, ENV, LinkInfo, LinkKind, Progress, SOFT_LINK_ENV, Selection, WireStats};
pub use faults::Faults;
pub use mr::{Mr, Pd};
pub use prm::{Access, QpState, Syndrome};
pub use qp::{Qp, QpBuilder, WqeIndex};
pub use queue::{ConnInfo, ConnectOpts, MAX_SQ_WQEBBS, Mtu, QpCaps};
pub use srq::Srq;
// The builders (`Write`, `Send`, `Read`, ...) stay in `wqe`: at the root,
// `use mlx5::*` would shadow `std::marker::Send` and the `io` traits.
pub use wqe::{Remote, Sge};

pub use error::{Error, Status};
pub use event::AsyncEvent;
/// Test tooling (the `testing` feature), for `tests/hw_layout.rs`.
#[cfg(feature = "testing")]
pub use hw::layout_table;
