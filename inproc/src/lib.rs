//! Thread-to-thread messaging inside one process.
//!
//! Three single-producer single-consumer queues behind one interface
//! ([`Transport`], [`Sender`], [`Receiver`]):
//!
//! * [`FastForward`]: a `full` flag per slot, no shared indices; the
//!   consumer hands slots back 64 at a time (a quarter of a smaller
//!   ring), so the producer refills lines
//!   the consumer has left (temporal slipping);
//! * [`Lamport`]: shared head and tail with cached copies and explicit
//!   batched publication (`publish` / `sync`): one shared write per batch;
//! * [`Onesided`]: a sequence number per slot; the consumer never writes a
//!   line the producer writes, and stores its position once per 64 slots.
//!
//! Each ring starts on a cache-line pair, and each side (the producer only,
//! for Lamport) pushes the lines it is done with to the shared cache
//! (CLDEMOTE on x86-64), where the other side finds them without snooping
//! its core.
//!
//! Producer and consumer are separate types and neither is `Clone`, so
//! "single producer, single consumer" is enforced by the type system. Full
//! and empty are errors that hand the value back; dropping one end is seen
//! by the other as `Disconnected`. The waiting operations (`send`, `recv`)
//! spin with backoff and then park, so a waiting thread can sleep. "Full"
//! means full once the consumer has synced: between syncs FastForward and
//! onesided may hold back up to 63 read slots, never so many that a
//! producer waits on them.
//!
//! A capacity that cannot be honoured (its power-of-two ring does not fit
//! in memory, or in `usize` at all) is refused by
//! [`Transport::try_channel`] with a [`CapacityError`];
//! [`Transport::channel`] panics with that error's message instead, in
//! debug and release builds alike.
//!
//! ```
//! use inproc::{FastForward, Receiver, Sender, Transport};
//!
//! let (mut tx, mut rx) = FastForward::channel::<u64>(64);
//! let consumer = std::thread::spawn(move || {
//!     let mut sum = 0;
//!     while let Some(v) = rx.recv() {
//!         sum += v;
//!     }
//!     sum // the producer was dropped and everything was received
//! });
//! for i in 1..=1000 {
//!     tx.send(i).unwrap();
//! }
//! drop(tx);
//! assert_eq!(consumer.join().unwrap(), 500_500);
//! ```
//!
//! On top of the queues: call/reply with user data, out-of-order and
//! deferred replies ([`rpc`]), and [`flux`], an all-to-all mesh of threads.
//! Neither loses a call: one whose answerer is dropped comes back from
//! `poll` with its user data and a `Disconnected` result.
//!
//! Throughput and ping-pong figures against rtrb and crossbeam, measured in
//! the same run: `cargo bench -p inproc` (figures in the repository README).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

mod error;
mod fastforward;
pub mod flux;
mod lamport;
mod onesided;
mod ring;
pub mod rpc;
mod shared;
mod sync;
mod transport;

#[cfg(all(test, inproc_loom))]
mod loom_tests;

/// The repository README, so that `cargo test --doc -p inproc` compiles and
/// runs each of its Rust snippets exactly as printed (the `ipc` one too:
/// `ipc` is a dev-dependency for this alone).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeSnippets;

pub use error::{CapacityError, Disconnected, TryRecvError, TrySendError};
pub use fastforward::{FastForward, FfConsumer, FfProducer};
pub use lamport::{Lamport, LamportConsumer, LamportProducer};
pub use onesided::{Onesided, OnesidedConsumer, OnesidedProducer};
pub use transport::{Channel, Receiver, Sender, Transport};
