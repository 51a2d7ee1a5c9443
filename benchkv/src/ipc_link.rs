//! Clients to their daemon through `ipc`: the only module that touches the
//! ipc API (a daemon's [`Front`], a client's [`Link`]), so that a change of
//! that API is adapted here alone.
//!
//! One segment per daemon, one slot pair per client, ring depth = the
//! queue depth rounded up to a power of two. Requests and responses are
//! [`KvReq`] and [`KvResp`] of the run's size class.

use crate::wire::{KvReq, KvResp};

/// The segment name of `daemon` on `rank` for the run `run_id` (unique per
/// run and host, so concurrent runs do not meet).
pub fn segment_name(run_id: u64, rank: u32, daemon: u32) -> String {
    format!("benchkv-{run_id:x}-r{rank}-d{daemon}")
}

/// A daemon's side: its clients' requests, answered now or later.
pub struct Front<const N: usize> {
    server: ipc::Server<KvReq<N>, KvResp<N>>,
}

/// A request taken by [`Front::recv`], to give back to [`Front::reply`].
#[derive(Debug)]
#[must_use = "a client's call completes only when its token is replied to"]
pub struct Token(ipc::RequestToken);

/// Why a client could not make a call now.
#[derive(Debug)]
pub enum LinkCallError<U> {
    /// Its ring is full: poll first.
    Full(U),
    /// The segment is unusable (the daemon is gone).
    Failed(U, ipc::Error),
}

impl<const N: usize> Front<N> {
    /// Creates the segment `name` for `clients` clients with `depth` calls
    /// in flight each.
    pub fn create(name: &str, clients: usize, depth: usize) -> Result<Front<N>, ipc::Error> {
        let cfg = ipc::ServerConfig::new()
            .max_clients(clients.max(1) as u32)
            .ring_depth(depth.next_power_of_two() as u32);
        Ok(Front {
            server: ipc::Server::create(name, cfg)?,
        })
    }

    /// The next request of any client.
    #[inline]
    pub fn recv(&mut self) -> Option<(Token, KvReq<N>)> {
        self.server.recv().map(|(t, r)| (Token(t), r))
    }

    /// Answers a request.
    #[inline]
    pub fn reply(&mut self, token: Token, resp: KvResp<N>) -> Result<(), ipc::Error> {
        self.server.reply(token.0, resp)
    }
}

/// A client's side: up to `depth` calls in flight, each with user data.
pub struct Link<const N: usize, U> {
    client: ipc::AsyncClient<KvReq<N>, KvResp<N>, U>,
}

impl<const N: usize, U> Link<N, U> {
    /// Attaches to the segment `name`.
    pub fn connect(name: &str) -> Result<Link<N, U>, ipc::Error> {
        Ok(Link {
            client: ipc::AsyncClient::connect(name, ipc::ClientConfig::new())?,
        })
    }

    /// Sends a call.
    #[inline]
    pub fn call(&mut self, req: &KvReq<N>, user: U) -> Result<(), LinkCallError<U>> {
        self.client.call(req, user).map_err(|e| match e {
            ipc::CallError::Full(u) => LinkCallError::Full(u),
            ipc::CallError::Failed(u, e) => LinkCallError::Failed(u, e),
        })
    }

    /// Delivers the responses that arrived.
    #[inline]
    pub fn poll(&mut self, f: impl FnMut(U, KvResp<N>)) -> Result<usize, ipc::Error> {
        self.client.poll(f)
    }
}
