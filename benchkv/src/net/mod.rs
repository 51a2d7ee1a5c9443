//! The network between daemons of different ranks: the one part that
//! differs between backends. Both backends run under the same daemon loop
//! through [`Network`].
//!
//! Setting up is two-phase because addresses travel over MPI in between:
//! a backend is made unconnected with a *blob* (what its peers need to
//! reach it: one copyrpc endpoint info per remote daemon, or one UCX worker
//! address), the blobs of every daemon of every rank are exchanged, and
//! each daemon then connects to the others with them.

pub mod copyrpc;
pub mod ucx;

/// What the backends' tests share.
#[cfg(test)]
pub(crate) mod testing {
    use super::Network;

    /// Polls `net` (serving nothing) until it fails (the error) or
    /// `within` passes (`None`).
    pub(crate) fn error_within<N: Network<u32>>(
        net: &mut N,
        within: std::time::Duration,
    ) -> Option<String> {
        let start = std::time::Instant::now();
        while start.elapsed() < within {
            if let Err(e) = net.poll(&mut |_, _| 0, &mut |_, _| {}) {
                return Some(e.0);
            }
        }
        None
    }
}

use crate::route::Routing;
use crate::wire::{REQ_HDR, RESP_HDR};

/// What a daemon's network needs to know about the run.
#[derive(Clone, Debug)]
pub struct NetSetup {
    /// The key routing (ranks and daemons per rank).
    pub routing: Routing,
    /// This daemon's rank.
    pub rank: u32,
    /// This daemon's index on its rank.
    pub daemon: u32,
    /// Bytes per value.
    pub value_size: usize,
    /// Calls one daemon keeps in flight towards one remote daemon.
    pub max_inflight: u32,
    /// UCX only: the transports to use instead of `UCX_TLS`.
    pub ucx_tls: Option<String>,
}

impl NetSetup {
    /// This daemon's global id.
    pub fn me(&self) -> usize {
        self.routing.daemon_id(self.rank, self.daemon)
    }

    /// Global ids of the daemons on other ranks.
    pub fn peers(&self) -> impl Iterator<Item = usize> + '_ {
        let d = self.routing.daemons() as usize;
        let mine = self.rank as usize * d..(self.rank as usize + 1) * d;
        (0..self.routing.shards() as usize).filter(move |j| !mine.contains(j))
    }

    /// Largest request on the wire.
    pub fn max_request(&self) -> usize {
        REQ_HDR + self.value_size
    }

    /// Largest response on the wire.
    pub fn max_response(&self) -> usize {
        RESP_HDR + self.value_size
    }

    /// The rank and on-rank index of global daemon `id`.
    pub fn locate(&self, id: usize) -> (usize, usize) {
        let d = self.routing.daemons() as usize;
        (id / d, id % d)
    }
}

/// A backend failure, with the peer where there is one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct NetError(pub String);

/// Why a call was not made; the user data comes back.
#[derive(Debug)]
pub enum Refused<U> {
    /// Not now (the peer's ring or the in-flight limit is full): poll and
    /// retry.
    Busy(U),
    /// Never: the peer or the backend failed.
    Failed(U, NetError),
}

/// The two phases of setting a backend up (see the module docs).
pub trait Bootstrap: Sized {
    /// Makes the daemon's network, unconnected, and the blob its peers
    /// need.
    fn prepare(setup: &NetSetup) -> Result<(Self, Vec<u8>), NetError>;

    /// Connects to the daemons of the other ranks with every daemon's blob
    /// (indexed by global daemon id).
    fn connect(&mut self, blobs: &[Vec<u8>]) -> Result<(), NetError>;
}

/// Calls to remote daemons and service of their calls.
pub trait Network<U> {
    /// The backend's name in reports.
    const NAME: &'static str;

    /// Calls global daemon `to` with a request (header and value, see
    /// [`crate::wire`]); `user` comes back with the response.
    fn call(&mut self, to: usize, req: &[u8], user: U) -> Result<(), Refused<U>>;

    /// Progress: each request that arrived is answered with what
    /// `serve(request, out)` writes into `out` (it returns the length;
    /// `out` holds the largest response), each response goes to
    /// `done(user, response)`. A call that failed (a dead peer, a timeout)
    /// is an error of the whole poll, returned after the others were
    /// delivered.
    fn poll(
        &mut self,
        serve: &mut impl FnMut(&[u8], &mut [u8]) -> usize,
        done: &mut impl FnMut(U, &[u8]),
    ) -> Result<usize, NetError>;

    /// From now on failures of peers are expected (the run is over and
    /// they are shutting down): stop reporting them.
    fn quiesce(&mut self);

    /// The transport in one line for reports (device, transports).
    fn transport(&self) -> String;
}
