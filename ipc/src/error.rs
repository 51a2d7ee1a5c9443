//! Error types.

use std::io;
use std::time::Duration;

use crate::token::RequestToken;

/// Everything that can go wrong creating, attaching to or using a segment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The segment name is not usable.
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
    /// A system call failed.
    #[error("segment {name:?}: {op}: {source}")]
    Io {
        /// The segment name.
        name: String,
        /// The operation that failed.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another live server serves a segment of this name.
    #[error("a live server already serves segment {name:?}")]
    AlreadyRunning {
        /// The segment name.
        name: String,
    },
    /// No server of this name is listening.
    #[error("no server serves segment {name:?} (nothing listens on @{address})")]
    NotFound {
        /// The segment name.
        name: String,
        /// The abstract socket address looked for.
        address: String,
    },
    /// The server was built with another protocol version or other
    /// request/response types.
    #[error(
        "segment {name:?}: {what} mismatch: the server has {found}, this process has {expected}"
    )]
    Mismatch {
        /// The segment name.
        name: String,
        /// Which property differs (protocol version, request type, ...).
        what: &'static str,
        /// The server's: for a type, its name and canonical layout.
        found: String,
        /// This process's.
        expected: String,
    },
    /// The server's answer to the handshake is inconsistent.
    #[error("segment {name:?}: malformed handshake: {reason}")]
    Malformed {
        /// The segment name.
        name: String,
        /// What is inconsistent.
        reason: String,
    },
    /// The server refused the connection.
    #[error("segment {name:?}: the server refused the connection: {reason}")]
    Refused {
        /// The segment name.
        name: String,
        /// Why.
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
    /// The server stopped serving this client because the client broke the
    /// protocol (its region held what no correct client writes, or it sent
    /// bytes it must not). No response will come; connect again.
    #[error("segment {name:?}: the server evicted this client (slot {slot}): {reason}")]
    Evicted {
        /// The segment name.
        name: String,
        /// The slot this client had.
        slot: u32,
        /// What the server found.
        reason: String,
    },
    /// A deadline passed (see [`ClientConfig`](crate::ClientConfig)).
    #[error("segment {name:?}: {op} timed out after {after:?}")]
    Timeout {
        /// The segment name.
        name: String,
        /// What timed out: `connect`, `call` or `wait`.
        op: &'static str,
        /// The deadline that passed.
        after: Duration,
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
    /// A reply was addressed to a client that detached, died or was
    /// evicted since its request was taken.
    #[error("client {client} is no longer attached; reply dropped")]
    ClientGone {
        /// The client slot index.
        client: u32,
    },
    /// A reply was given a token that another server issued. Nothing was
    /// sent; the token is handed back, to be used with its own server.
    #[error("segment {name:?}: the request token belongs to another server; nothing was sent")]
    ForeignToken {
        /// The segment name of the server the token was given to.
        name: String,
        /// The token, untouched.
        token: RequestToken,
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
