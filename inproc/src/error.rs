//! Error types. Every error of a send hands the value back, so nothing is
//! lost.

/// Why [`Sender::try_send`](crate::Sender::try_send) did not send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TrySendError<T> {
    /// The queue is full; try again after the consumer made room.
    #[error("queue full")]
    Full(T),
    /// The consumer was dropped; nobody will ever receive.
    #[error("consumer disconnected")]
    Disconnected(T),
}

impl<T> TrySendError<T> {
    /// The value that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            Self::Full(v) | Self::Disconnected(v) => v,
        }
    }
}

/// Why [`Receiver::try_recv`](crate::Receiver::try_recv) returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// Nothing published yet.
    #[error("queue empty")]
    Empty,
    /// The producer was dropped and everything it sent has been received.
    #[error("producer disconnected")]
    Disconnected,
}

/// The other side is gone (from the waiting operations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("peer disconnected")]
pub struct Disconnected<T>(pub T);
