//! copyrpc: RPC over RDMA WRITE-with-immediate ring buffers.
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
