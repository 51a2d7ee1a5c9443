//! Error types: what a call, a reply or an endpoint can report.

use std::sync::Arc;

use mlx5::Syndrome;

use crate::proto::{LimitsError, ProtoError};

/// Setting up a context or an endpoint failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The device layer refused something (opening, a resource, a QP
    /// transition, a poll that found the CQ overrun).
    #[error("mlx5: {0}")]
    Device(#[from] mlx5::Error),
    /// The configured sizes cannot work together.
    #[error(transparent)]
    Limits(#[from] LimitsError),
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The peer's endpoint information could not be used.
    #[error("bad endpoint info: {0}")]
    BadInfo(String),
    /// The endpoint is already connected.
    #[error("endpoint {0} is already connected")]
    AlreadyConnected(u32),
    /// The endpoint handle belongs to another context, or does not exist.
    #[error("no endpoint {0} in this context")]
    NoEndpoint(u32),
}

/// Why an endpoint stopped working. Every call in flight on it comes back
/// with this error; new calls and replies are refused with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// A WRITE_IMM of the endpoint completed with an error (the peer died
    /// or is unreachable: `TransportRetryExceeded`; it refused the write:
    /// `RemoteAccess`, ...). The QP is in the error state.
    #[error("endpoint {endpoint}: completion error {syndrome:?}")]
    Completion {
        /// The endpoint.
        endpoint: u32,
        /// The syndrome of the error CQE.
        syndrome: Syndrome,
    },
    /// The peer sent what no correct peer sends; the endpoint was shut
    /// down.
    #[error("endpoint {endpoint}: {error}")]
    Protocol {
        /// The endpoint.
        endpoint: u32,
        /// What was wrong.
        error: Arc<ProtoError>,
    },
    /// The device reported an asynchronous event on the endpoint's QP (a
    /// remote access error or invalid request it received moved it to the
    /// error state).
    #[error("endpoint {endpoint}: asynchronous event {event:?}")]
    Async {
        /// The endpoint.
        endpoint: u32,
        /// The event.
        event: mlx5::AsyncEvent,
    },
    /// Posting to the endpoint's QP failed.
    #[error("endpoint {endpoint}: posting failed: {error}")]
    Post {
        /// The endpoint.
        endpoint: u32,
        /// The mlx5 error, as text.
        error: Arc<str>,
    },
}

/// Why a call could not be made. The call's user data comes back in
/// [`CallError::user_data`].
#[derive(Debug, thiserror::Error)]
#[error("call refused: {kind}")]
pub struct CallError<U> {
    /// Why.
    pub kind: CallErrorKind,
    /// The user data the call was made with.
    pub user_data: U,
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallErrorKind {
    /// The request is larger than the endpoint's `max_call`.
    #[error("request of {len} bytes exceeds max_call {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// Not now: `max_inflight` calls are in flight, or the rings have no
    /// room (the peer has not released enough, requests held on this side
    /// block the reply space, or empty credit batches the peer may have
    /// sent have not arrived). Poll, then retry.
    #[error("no room: too many calls in flight or the rings are full")]
    NoRoom,
    /// The endpoint is not connected yet.
    #[error("endpoint not connected")]
    NotConnected,
    /// The endpoint failed.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The endpoint belongs to another context (an endpoint handle is
    /// only valid with the context that made it).
    #[error("the endpoint belongs to another context")]
    WrongContext,
}

/// Why a call came back without a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// The responder dropped the request without replying.
    #[error("the responder dropped the request without a reply")]
    Dropped,
    /// No reply within the context's `call_timeout`. A reply that arrives
    /// later is discarded.
    #[error("no reply within the call timeout")]
    Timeout,
    /// The endpoint failed while the call was in flight.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
}

/// Why a reply could not be sent. The caller then gets
/// [`RpcError::Dropped`], or the endpoint's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// The reply is larger than the endpoint's `max_reply`: it was not
    /// sent, and the caller is told the request was dropped.
    #[error("reply of {len} bytes exceeds max_reply {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// The endpoint failed.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The request came from another context (the handle was dropped: its
    /// own context tells the caller it was dropped).
    #[error("the request belongs to another context")]
    WrongContext,
}
