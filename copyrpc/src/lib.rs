//! copyrpc: RPC over RDMA WRITE-with-immediate ring buffers.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

pub mod proto;
