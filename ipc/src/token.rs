//! The handle of a request the server has taken and not yet answered.

/// Identifies one answered-later request. Hand it back to
/// [`Server::reply`](crate::Server::reply) of the server that issued it; it
/// is not `Clone`, so a request is answered once. Another server refuses it
/// ([`Error::ForeignToken`](crate::Error::ForeignToken), which returns it).
#[must_use = "a request token must be answered with Server::reply, or the client's call never completes"]
#[derive(Debug, PartialEq, Eq)]
pub struct RequestToken {
    /// The issuing server's instance id (unique within this process).
    pub(crate) server: u64,
    pub(crate) client: u32,
    /// The slot's attach count when the request was taken: a reply never
    /// reaches a later occupant of the slot.
    pub(crate) attach: u64,
    pub(crate) call_id: u32,
}

impl RequestToken {
    /// The client slot the request came from (stable while it stays attached).
    pub fn client(&self) -> u32 {
        self.client
    }
}
