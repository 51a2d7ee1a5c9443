//! benchkv: a two-node key-value benchmark that runs every layer of this
//! workspace at once, launched with `mpirun`, and compares the copyrpc
//! network against UCX active messages on the same topology.
//!
//! # What runs
//!
//! Per MPI rank: `D` daemon threads, each owning a shard of the keys, and
//! `C` clients, threads or (`--client-procs`) processes. A client keeps `Q`
//! calls in flight to its daemon through an `ipc` segment; the daemon executes a call on its shard, hands
//! it to the daemon of its rank that owns the key through an `inproc` Flux
//! mesh, or sends it over the network to the owning daemon of another
//! rank (copyrpc endpoints, or UCP active messages). MPI only bootstraps:
//! ranks, the exchange of endpoint or worker addresses, barriers and the
//! gathering of results; it never carries a request.
//!
//! ```text
//! mpirun -n 2 benchkv --backend copyrpc --clients 2 --depth 8 --duration 5
//! ```
//!
//! # Guarantees
//!
//! * A request that cannot be forwarded now waits in order; none is
//!   dropped ([`daemon`]).
//! * `--verify`: every GET returns the last value PUT for its key, or the
//!   run fails listing the mismatches ([`client`], [`value`]).
//! * Bad parameters are refused on every rank before any work
//!   ([`params`]); a failed thread, a dead peer or a rank that stops
//!   answering ends the run with an error within seconds, never a hang
//!   ([`node`]).
//!
//! # Output
//!
//! Throughput and latency percentiles per rank and in total, gathered to
//! rank 0, printed as a table and written as JSON with the machine,
//! transport and every parameter ([`report`]), each against the floors
//! measured in the same run on the same ranks, cores and device: the
//! cache-line round trip between the ranks' cores and raw WRITE_IMM on
//! the copyrpc device ([`floor`]); `benchkv sweep` adds a CSV and an SVG
//! plot ([`sweep`]).
//!
//! # Cost
//!
//! `scripts/benchkv.sh` (the end of `scripts/bench.sh`) runs the two-rank
//! sweep on one host; `benchkv/README.md` shows one such sweep against its
//! floors and says what bounds each backend there.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

pub mod cli;
pub mod client;
pub mod clients;
pub mod daemon;
pub mod error;
pub mod floor;
pub mod ipc_link;
pub mod machine;
pub mod mpi_boot;
pub mod net;
pub mod node;
pub mod params;
pub mod progress;
pub mod report;
pub mod route;
pub mod store;
pub mod sweep;
pub mod value;
pub mod wire;
pub mod workload;

pub use error::Error;
