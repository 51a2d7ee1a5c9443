//! Shared-memory RPC between processes on one host: one server, up to
//! `max_clients` client processes, one segment in `/dev/shm`.
//!
//! Each client owns a request ring and a response ring of cache-line slots;
//! a slot carries a sequence word that its producer writes last (`Release`)
//! and its consumer reads first (`Acquire`), so the consumer never writes a
//! line the producer writes and a round trip costs two cache-line transfers.
//!
//! # Guarantees
//!
//! * **Typed.** Requests and responses are plain data ([`Message`], with a
//!   [`TypeLayout`] derived by `#[derive(ipc::Message)]`); their size,
//!   alignment and a fingerprint of every field's offset, width and kind are
//!   checked at attach, so a client built with other layouts is refused
//!   ([`Error::Mismatch`]), while the same struct declared elsewhere is not.
//! * **Untrusted memory.** The server validates everything it reads from a
//!   client's region and never uses it as an index: a client that scribbles
//!   over its own region can hurt only itself.
//! * **Crashes.** A killed client's slot is reclaimed (pidfd liveness); a
//!   killed server makes waiting calls fail within
//!   [`ClientConfig::server_timeout`] (100 ms by default); a segment left by
//!   a dead server is replaced by the next server of that name, while a live
//!   one is refused.
//! * **Bounded server poll.** A poll costs one shared load plus one load per
//!   attached client, independent of `max_clients × ring_depth`.
//!
//! # Example
//!
//! ```
//! use ipc::{Client, ClientConfig, Server, ServerConfig};
//!
//! # fn main() -> Result<(), ipc::Error> {
//! let name = format!("ipc-doc-{}", std::process::id());
//! let mut server = Server::<u64, u64>::create(&name, ServerConfig::new().max_clients(4))?;
//! let handle = std::thread::spawn({
//!     let name = name.clone();
//!     move || -> Result<u64, ipc::Error> {
//!         let mut client = Client::<u64, u64>::connect(&name, ClientConfig::new())?;
//!         client.call(&41)
//!     }
//! });
//! while !handle.is_finished() {
//!     server.serve(64, |_client, req| req + 1);
//! }
//! assert_eq!(handle.join().unwrap()?, 42);
//! # Ok(()) }
//! ```
//!
//! # Cost
//!
//! A cross-process synchronous call costs about two cache-line transfers;
//! `cargo bench -p ipc` measures it against the cache-line floor, Unix
//! sockets and iceoryx2 in the same run (figures in the repository README).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

// Lets `#[derive(ipc::Message)]`'s `::ipc::` paths resolve inside this crate.
extern crate self as ipc;

mod client;
mod config;
mod error;
mod layout;
mod message;
mod ring;
mod segment;
mod server;
mod sync;
mod sys;

#[cfg(all(test, ipc_loom))]
mod loom_tests;

pub use client::{AsyncClient, Client};
pub use config::{ClientConfig, ServerConfig, WaitStrategy};
pub use error::{CallError, Error};
pub use ipc_derive::Message;
pub use message::{Field, Message, Shape, TypeLayout};
pub use server::{RequestToken, Server};
pub use zerocopy;
