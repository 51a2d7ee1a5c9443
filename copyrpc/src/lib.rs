//! copyrpc: RPC over RDMA WRITE-with-immediate ring buffers, on an mlx5
//! NIC or on the `mlx5` crate's software device, unchanged.
//!
//! # The contract
//!
//! * A [`Context`] owns one device context, one CQ, one SRQ and its
//!   [`Endpoint`]s; each endpoint is an RC connection to one peer endpoint
//!   with a send ring and a receive ring of the same size on both sides.
//!   One thread drives a context ([`Context::poll`]).
//! * [`Context::call`] either queues the request or refuses it at once,
//!   handing the user data back ([`CallError`]): a call is admitted only
//!   when its request fits the peer's ring **and** room for its reply is
//!   reserved, so a reply never fails for lack of space.
//! * Every admitted call comes back exactly once through `poll`'s callback,
//!   with its user data: the reply bytes, or why there is none
//!   ([`RpcError`]: the responder dropped it, the call timed out, or the
//!   endpoint failed — an error completion, a dead or partitioned peer, a
//!   protocol violation). Never a hang, never a lost user data.
//! * Requests come out of [`Context::recv`] in arrival order as
//!   [`Request`] handles that read the payload in place; the ring space is
//!   released when the handle is replied to or dropped (the caller then
//!   learns the request was dropped), never while it is held.
//! * Flow control needs no RDMA READ: consumed-space credit rides on every
//!   batch. Doorbells are adaptive: `poll` flushes when it finds nothing
//!   new, so a lone call leaves at once and a busy endpoint batches many
//!   calls into one WRITE_IMM.
//!
//! The wire format and the admission rule are in [`proto`], a sans-IO
//! module the property tests drive directly.
//!
//! # Example
//!
//! Two contexts on two software devices of one process (across processes
//! or hosts, exchange [`EndpointInfo::encode`]'s 80 bytes by any means; see
//! `examples/rpc_pingpong.rs`):
//!
//! ```
//! use copyrpc::{Config, Context};
//! use mlx5::Progress;
//! # fn main() -> Result<(), copyrpc::Error> {
//! let (da, db) = (mlx5::Context::soft(Progress::Manual), mlx5::Context::soft(Progress::Manual));
//! let mut client: Context<&str> = Context::new(&da, Config::default())?;
//! let mut server: Context<()> = Context::new(&db, Config::default())?;
//! let (c, s) = (client.endpoint()?, server.endpoint()?);
//! let (ci, si) = (client.local_info(c)?, server.local_info(s)?);
//! client.connect(c, &si)?;
//! server.connect(s, &ci)?;
//!
//! client.call(c, b"hello", "greeting").map_err(|e| e.kind).unwrap();
//! let mut answer = None;
//! while answer.is_none() {
//!     client.poll(|user_data, reply| answer = Some((user_data, reply.map(<[u8]>::to_vec))))?;
//!     server.poll(|_, _| {})?;
//!     while let Some(req) = server.recv() {
//!         let mut out = req.data().to_vec();
//!         out.extend_from_slice(b", world");
//!         server.reply(req, &out).unwrap();
//!     }
//! }
//! assert_eq!(answer, Some(("greeting", Ok(b"hello, world".to_vec()))));
//! # Ok(()) }
//! ```
//!
//! # Trust
//!
//! The receive ring is registered for remote writes by the peer endpoint.
//! Everything the peer writes is validated before use (lengths, counts,
//! credit, call ids; a violation fails the endpoint), and each batch's
//! headers are read once, so a peer that rewrites them after they were
//! checked changes nothing that was checked; but RDMA lets a peer that
//! ignores the protocol write into ring bytes a held [`Request`] views
//! (the payload itself): connect only to peers running copyrpc.
//!
//! The endpoints of a [`Context`] share one protection domain (and its
//! SRQ), and a memory key is no secret (on the software device, as on a
//! ConnectX, it is a table index and a small tag): a peer that ignores
//! the protocol and guesses the key of another endpoint's receive ring
//! can write into that ring too, which nothing on this side can notice.
//! Peers that must not reach each other's traffic belong in different
//! contexts, each with its own protection domain. An endpoint's QP lets
//! its peer only WRITE (the default [`Config::connect`]): no remote READ
//! or atomic.
//!
//! # Cost
//!
//! `cargo bench -p copyrpc` measures ping-pong and pipelined calls against
//! raw WRITE_IMM on the same device, in one process and across two;
//! `scripts/callgrind.sh` counts copyrpc's own instructions per RPC.
//! copyrpc/README.md quotes both with the machine they ran on.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

mod context;
mod error;
mod info;
pub mod proto;

pub use context::{Config, Context, Endpoint, Request};
pub use error::{CallError, CallErrorKind, EndpointError, Error, ReplyError, RpcError};
pub use info::EndpointInfo;
pub use proto::Limits;
