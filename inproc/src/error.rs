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

/// Why a queue, a call/reply pair or a Flux mesh of the requested size was
/// not made. Carries what was asked for, so the caller can report it or
/// retry with less.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    /// No ring this large can exist: its power-of-two size does not fit in
    /// `usize`, or its bytes do not fit in `isize` (Rust's limit for one
    /// allocation). `max` is the largest capacity possible for this element
    /// type.
    #[error("capacity {requested} is above the largest possible for this element type ({max})")]
    TooLarge {
        /// The capacity asked for.
        requested: usize,
        /// The largest capacity this element type allows.
        max: usize,
    },
    /// More calls in flight than there are call ids (`u32`, one reserved for
    /// notifications).
    #[error("{requested} calls in flight is above the limit of {max}")]
    TooManyInFlight {
        /// The in-flight limit asked for.
        requested: usize,
        /// The largest in-flight limit possible.
        max: usize,
    },
    /// More Flux nodes than any mesh of these types can have: each node
    /// keeps a caller and a responder entry for every node, and those
    /// `n × n` entries alone would need more than `isize::MAX` bytes.
    #[error(
        "a Flux mesh of {requested} nodes is above the largest possible for these types ({max})"
    )]
    TooManyNodes {
        /// The node count asked for.
        requested: usize,
        /// The most nodes a mesh of these types allows.
        max: usize,
    },
    /// A Flux mesh needs more memory than the machine (or the cgroup this
    /// process runs in) has at all: its `n × (n − 1)` call/reply pairs
    /// would be allocated and written one by one, and the kernel, which
    /// lets each allocation through, would kill the process part way.
    #[error(
        "a Flux mesh of {nodes} nodes needs about {bytes} bytes (its n × (n − 1) queue pairs), \
         more than this machine's {memory} bytes of memory"
    )]
    MeshTooLarge {
        /// The node count asked for.
        nodes: usize,
        /// About the bytes the mesh would take (a lower bound).
        bytes: usize,
        /// The memory the machine or the process's cgroup has.
        memory: u64,
    },
    /// The allocator refused the memory.
    #[error("out of memory for capacity {requested} ({bytes} bytes)")]
    OutOfMemory {
        /// The capacity asked for (the node count, for a Flux mesh's
        /// per-node tables).
        requested: usize,
        /// The bytes that could not be allocated.
        bytes: usize,
    },
}
