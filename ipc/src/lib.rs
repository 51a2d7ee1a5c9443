//! Shared-memory RPC between processes on one host: one server, up to
//! `max_clients` client processes.
//!
//! Each client owns a request ring and a response ring of cache-line slots;
//! a slot carries a sequence word that its producer writes last (`Release`)
//! and its consumer reads first (`Acquire`), so the consumer never writes a
//! line the producer writes and a round trip costs two cache-line transfers.
//!
//! A server listens on a unix socket in the abstract namespace (named after
//! the segment and the user id; no file anywhere). A client connects, and
//! the server passes it two sealed memfds over that connection: the
//! server's header, which the client can only map read-only, and a region
//! of its own holding its two rings. The connection stays open: it carries
//! wake-ups for a sleeping server and the server's last word, and the
//! kernel closes it when either process dies. Who writes which word, and
//! when, is tabled in the module docs of `wire` (the connection), `layout`
//! (the memory), `ring` (the slots) and `server` (a slot's life).
//!
//! # Guarantees
//!
//! * **Typed.** Requests and responses are plain data ([`Message`], with a
//!   [`TypeLayout`] derived by `#[derive(ipc::Message)]`): at connect every
//!   field's offset, width and primitive kind is compared, recursively, and
//!   a client built with other layouts is refused ([`Error::Mismatch`]
//!   names both types and shows both layouts). Names are not compared: the
//!   same struct declared in another module or crate connects.
//! * **A client can only write its own rings.** It holds no file of the
//!   segment and no descriptor (it closes them after mapping); the header
//!   is sealed against writable mappings and every memfd against shrinking
//!   and growing, so it can neither stop the server with `SIGBUS` nor write
//!   what other clients or the server read. Slots are owned by connections,
//!   not by words in shared memory, so a dead client cannot keep one: the
//!   kernel frees a slot when its client's process dies (a live process of
//!   the server's user can still hold up to `max_clients` connections open
//!   and idle; there is no per-process limit). What it writes into its
//!   own region the server validates and never uses as an index; a client
//!   whose ring holds what no correct client writes, or that sends stray
//!   bytes on its connection, is evicted, told so ([`Error::Evicted`]) and
//!   its slot freed; the server and the other clients carry on.
//! * **Crashes.** A killed client's slot is free again within the server's
//!   [`liveness_interval`](ServerConfig::liveness_interval) (1 ms by
//!   default, plus a tick of the coarse clock); a killed server makes
//!   waiting calls fail within [`ClientConfig::server_timeout`] (100 ms by
//!   default); a dead server's name is free at once (the kernel releases
//!   it), while a live one is refused.
//! * **Deadlines.** Every wait has one: `connect` retries a missing or full
//!   server until [`ClientConfig::connect_timeout`] (1 s), calls and waits
//!   give up after [`ClientConfig::call_timeout`] (10 s) or the timeout
//!   given to [`AsyncClient::wait_timeout`], with [`Error::Timeout`].
//! * **Private.** The server refuses connections from other user ids.
//! * **Bounded server poll.** A poll costs one load per attached client,
//!   independent of `max_clients × ring_depth`; connections are looked at
//!   every [`liveness_interval`](ServerConfig::liveness_interval).
//!
//! Out of scope: a process of the same user can still `kill` or `ptrace`
//! the server; the guarantees cover what a client can do with what this
//! crate gives it.
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
//! sockets and iceoryx2 in the same run (figures in the analysis report,
//! `docs/analysis/<date>/report.md`, section ipc).

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
mod server;
mod shm;
mod sync;
mod sys;
mod token;
mod wire;

#[cfg(all(test, ipc_loom))]
mod loom_tests;

/// Entry points of the fuzz targets in `ipc/fuzz/`; not part of the API.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;

pub use client::{AsyncClient, Client};
pub use config::{ClientConfig, ServerConfig, WaitStrategy};
pub use error::{CallError, Error};
pub use ipc_derive::Message;
pub use message::{Field, Message, Shape, TypeLayout};
pub use server::{Served, Server};
pub use token::RequestToken;
pub use zerocopy;
