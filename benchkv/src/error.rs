//! What can go wrong, with the context a user needs to act on it.

use std::path::PathBuf;

/// A benchkv failure. Every variant names where it happened (rank, daemon,
/// client, peer) and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A parameter is out of range or the parameters cannot work together
    /// (found before any work, identically on every rank).
    #[error("invalid parameters: {0}")]
    Params(String),
    /// MPI could not be initialised or used.
    #[error("MPI: {0}")]
    Mpi(String),
    /// A daemon's ipc segment for its clients could not be made, or a
    /// client could not attach or lost it.
    #[error("rank {rank} {who}: ipc: {source}")]
    Ipc {
        /// The rank.
        rank: u32,
        /// "daemon 1", "client 3", ...
        who: String,
        /// What ipc said.
        #[source]
        source: ipc::Error,
    },
    /// The network backend failed (setup, a peer that died, a protocol
    /// error).
    #[error("rank {rank} daemon {daemon}: {backend}: {reason}")]
    Net {
        /// The rank.
        rank: u32,
        /// The daemon on that rank.
        daemon: u32,
        /// `copyrpc` or `ucx-am`.
        backend: &'static str,
        /// What failed, with the peer when there is one.
        reason: String,
    },
    /// A GET returned something other than the last value PUT for its key.
    #[error("verification failed: {count} mismatch(es); first ones: {first}")]
    Verify {
        /// Mismatches over every rank and run.
        count: u64,
        /// The first few, one per line.
        first: String,
    },
    /// Responses with a status other than OK (a malformed request, a key
    /// out of range, a failed store), verify mode or not.
    #[error("{count} response(s) with an error status; first ones: {first}")]
    BadStatus {
        /// Such responses over every rank and run.
        count: u64,
        /// The first few (with any mismatches), one per line.
        first: String,
    },
    /// A rank completed no operation in a run's measured window (a
    /// duration shorter than an operation takes): its figures would be
    /// zeros, not a measurement.
    #[error(
        "rank {rank} completed no operation in the measured window of run {run}: the duration is too short for this point"
    )]
    EmptyWindow {
        /// The run, from 0.
        run: u32,
        /// The rank.
        rank: u32,
    },
    /// A rank other than 0 of a sweep: rank 0 found a point failed and
    /// stopped the sweep there (its own error says why).
    #[error("the sweep stopped at point {point}: rank 0 found it failed (its error says why)")]
    SweepStopped {
        /// The point, from 1.
        point: usize,
    },
    /// The run stopped because another part of it failed (a daemon, a
    /// client, or a rank that stopped answering).
    #[error("rank {rank}: {reason}")]
    Aborted {
        /// The rank.
        rank: u32,
        /// Why.
        reason: String,
    },
    /// A file could not be written or read.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The plot could not be drawn.
    #[error("plot {path}: {reason}")]
    Plot {
        /// The SVG file.
        path: PathBuf,
        /// What plotters said.
        reason: String,
    },
    /// A thread could not be started.
    #[error("spawning {what}: {source}")]
    Spawn {
        /// Which thread.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The process exit status for this error: 2 for bad parameters (as a
    /// command-line parser does), 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Params(_) => 2,
            _ => 1,
        }
    }
}
