//! Server and client configuration.

use std::time::Duration;

/// How a process waits for the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WaitStrategy {
    /// Spin on the shared words: the lowest latency, one busy core per
    /// waiting process.
    #[default]
    BusyPoll,
    /// Spin `spins` times, then sleep until the other side wakes it: a
    /// client in a futex wait on a word of its region, the server in
    /// `epoll_wait` on its connections (a client that publishes a request
    /// to a sleeping server sends a wake-up byte). An idle process costs no
    /// CPU; a wake-up costs a system call on both sides (the
    /// `pingpong/processes-blocking` benchmark measures the round trip; the
    /// analysis report quotes it).
    Block {
        /// Checks of the shared word before going to sleep.
        spins: u32,
    },
}

impl WaitStrategy {
    /// Blocking after 1024 looks at the shared word.
    pub const fn blocking() -> Self {
        Self::Block { spins: 1024 }
    }

    pub(crate) fn is_blocking(self) -> bool {
        matches!(self, Self::Block { .. })
    }

    /// Looks before sleeping; `None`: never sleeps (a count of `u32::MAX`
    /// standing for "never" ran out after a few idle minutes in one long
    /// wait, and a busy-polling side then slept where no one wakes it).
    pub(crate) fn spins(self) -> Option<u32> {
        match self {
            Self::BusyPoll => None,
            Self::Block { spins } => Some(spins),
        }
    }
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub(crate) max_clients: u32,
    pub(crate) ring_depth: u32,
    pub(crate) wait: WaitStrategy,
    pub(crate) liveness_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_clients: 16,
            ring_depth: 16,
            wait: WaitStrategy::BusyPoll,
            liveness_interval: Duration::from_millis(1),
        }
    }
}

impl ServerConfig {
    /// Defaults: 16 clients, ring depth 16, busy polling, connections
    /// looked at every millisecond.
    pub fn new() -> Self {
        Self::default()
    }

    /// Client slots in the segment (1 to 4096).
    pub fn max_clients(mut self, n: u32) -> Self {
        self.max_clients = n;
        self
    }

    /// Slots per ring, which is also the most calls one client can have in
    /// flight (a power of two, 1 to 65536).
    pub fn ring_depth(mut self, depth: u32) -> Self {
        self.ring_depth = depth;
        self
    }

    /// How [`Server::wait`](crate::Server::wait) waits for requests.
    pub fn wait(mut self, wait: WaitStrategy) -> Self {
        self.wait = wait;
        self
    }

    /// How often a busy server looks at its connections: new clients are
    /// attached, departed or dead ones released, wake-ups drained. One
    /// `epoll_wait` per interval (checked every 1024 polls against a coarse
    /// clock of one kernel tick: 1–4 ms, 10 ms with HZ=100), so a killed client's slot is free again
    /// within about this time plus one clock tick while the server polls. A
    /// server blocked in [`wait`](crate::Server::wait) sees them at once.
    /// An interval past the clock's range (`Duration::MAX`) means never
    /// while polling: only `wait` and `refresh` see the connections.
    pub fn liveness_interval(mut self, every: Duration) -> Self {
        self.liveness_interval = every;
        self
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub(crate) wait: WaitStrategy,
    pub(crate) server_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) call_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            wait: WaitStrategy::BusyPoll,
            server_timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_secs(10),
        }
    }
}

impl ClientConfig {
    /// Defaults: busy polling, a dead server or an eviction detected within
    /// 100 ms, connect retries for up to 1 s, calls time out after 10 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// How the client waits for responses.
    pub fn wait(mut self, wait: WaitStrategy) -> Self {
        self.wait = wait;
        self
    }

    /// Bound on the time between the server's death (or this client's
    /// eviction) and the error that a waiting call returns: the connection
    /// is looked at every half of it while waiting. It is not a call
    /// timeout: a live but slow server is waited for, up to
    /// [`call_timeout`](Self::call_timeout).
    pub fn server_timeout(mut self, bound: Duration) -> Self {
        self.server_timeout = bound;
        self
    }

    /// How long `connect` may take: while the segment is not there
    /// ([`Error::NotFound`](crate::Error::NotFound)) or all its slots are
    /// taken ([`Error::NoFreeSlot`](crate::Error::NoFreeSlot)) it retries
    /// until this has passed, then returns that error. The server's answer
    /// to an attempt is waited for until then too, and at least
    /// `server_timeout` (a server that never answers is
    /// [`Error::Timeout`](crate::Error::Timeout)). Zero: one attempt.
    pub fn connect_timeout(mut self, deadline: Duration) -> Self {
        self.connect_timeout = deadline;
        self
    }

    /// Longest time [`Client::call`](crate::Client::call) and
    /// [`AsyncClient::wait`](crate::AsyncClient::wait) wait for a response
    /// before returning [`Error::Timeout`](crate::Error::Timeout), so that a
    /// live but wedged server is an error, not a hang. The call stays in
    /// flight (its late response is discarded by `Client`, delivered by
    /// `AsyncClient`). `Duration::MAX` waits as long as the server lives.
    pub fn call_timeout(mut self, deadline: Duration) -> Self {
        self.call_timeout = deadline;
        self
    }
}
