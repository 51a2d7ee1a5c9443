//! Error types.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong creating, attaching to or using a segment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The segment name is not usable as a file name in `/dev/shm`.
    #[error("invalid segment name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A system call on the segment file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// The file it was applied to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another live server owns a segment of this name.
    #[error("a live server already serves segment {name:?}")]
    AlreadyRunning {
        /// The segment name.
        name: String,
    },
    /// A file of this name exists but was not made by this crate.
    #[error("{path} exists and is not an ipc segment; refusing to replace it")]
    NotASegment {
        /// The file found.
        path: PathBuf,
    },
    /// No segment of this name exists.
    #[error("no server segment named {name:?} (looked for {path})")]
    NotFound {
        /// The segment name.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The segment was made by a different version of this crate or for
    /// different request/response types.
    #[error(
        "segment {name:?}: {what} mismatch: the segment has {found}, this process expects {expected}"
    )]
    Mismatch {
        /// The segment name.
        name: String,
        /// Which property differs (magic, version, request size, ...).
        what: &'static str,
        /// The value in the segment.
        found: u64,
        /// The value this process was built with.
        expected: u64,
    },
    /// The segment's header is inconsistent with its own size.
    #[error("segment {name:?} is malformed: {reason}")]
    Malformed {
        /// The segment name.
        name: String,
        /// What is inconsistent.
        reason: String,
    },
    /// Every client slot is in use.
    #[error("all {max_clients} client slots of segment {name:?} are taken")]
    NoFreeSlot {
        /// The segment name.
        name: String,
        /// The segment's client limit.
        max_clients: u32,
    },
    /// The server exited, crashed or shut down; no response will come.
    #[error("the server of segment {name:?} (pid {pid}) is gone: {why}")]
    ServerGone {
        /// The segment name.
        name: String,
        /// The server's process id.
        pid: u32,
        /// How it was detected.
        why: &'static str,
    },
    /// The server answered a call that was not in flight.
    #[error(
        "segment {name:?}: protocol violation by the server: response for call id {call_id}, which is not in flight"
    )]
    Protocol {
        /// The segment name.
        name: String,
        /// The call id it answered.
        call_id: u32,
    },
    /// A reply was addressed to a client that detached or died.
    #[error("client {client} is no longer attached; reply dropped")]
    ClientGone {
        /// The client slot index.
        client: u32,
    },
}

/// Why an asynchronous call was not sent. Both variants hand the user data
/// back, so nothing is lost.
#[derive(Debug, thiserror::Error)]
pub enum CallError<U> {
    /// As many calls as the ring depth are already in flight; poll first.
    #[error("ring depth reached: poll for responses before calling again")]
    Full(U),
    /// The connection is unusable.
    #[error("{1}")]
    Failed(U, #[source] Error),
}

impl<U> CallError<U> {
    /// The user data of the call that was not sent.
    pub fn into_user_data(self) -> U {
        match self {
            Self::Full(u) | Self::Failed(u, _) => u,
        }
    }
}
