//! Flux: an all-to-all mesh of `n` threads built from per-pair call/reply
//! channels ([`crate::rpc`]).
//!
//! Between every ordered pair of nodes `(i, j)` there is a request queue
//! `i → j` (calls and notifications) and a response queue `j → i`. A node
//! therefore never shares a queue end with a third thread, and every queue
//! stays single-producer single-consumer.
//!
//! Sends are not published one by one: [`FluxNode::poll`] publishes
//! everything pending, an idle [`FluxNode::try_recv`] the pending replies
//! and returned request slots (so a busy node batches and an idle one
//! flushes at once), [`FluxNode::flush`] does it on demand,
//! and a node that is never idle still publishes (and returns request
//! slots) every quarter of a queue, and all its replies every 16 it sends,
//! so it cannot hold its peers up, even one with a single call in flight.
//!
//! A peer that is dropped does not swallow the calls made to it: `poll`
//! hands each one it never answered back, with its user data and a
//! `Disconnected` result.
//!
//! A call can be answered later: [`Incoming::defer`] gives a
//! [`DeferredReply`] that belongs to the node that took the call (only its
//! queue leads back to the caller); [`FluxNode::reply`] on any other node,
//! of this mesh or another, refuses it with [`ReplyError::WrongNode`] and
//! hands back both the response and the `DeferredReply`.
//!
//! ```
//! use inproc::flux::{self, FluxConfig};
//! use inproc::Onesided;
//!
//! let mut nodes = flux::mesh::<Onesided, u64, u64, &str>(2, FluxConfig::default());
//! let mut b = nodes.pop().unwrap();
//! let mut a = nodes.pop().unwrap();
//! let server = std::thread::spawn(move || loop {
//!     if let Some(req) = b.try_recv() {
//!         let x = *req.data();
//!         if x == 0 { break; }
//!         req.reply(x * 2).unwrap();
//!     }
//! });
//! a.call(1, 21, "question").unwrap();
//! let mut answer = None;
//! while answer.is_none() {
//!     a.poll(|from, user, resp| answer = Some((from, user, resp)));
//! }
//! assert_eq!(answer, Some((1, "question", Ok(42))));
//! a.notify(1, 0).unwrap();
//! a.flush();
//! server.join().unwrap();
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{CapacityError, Disconnected, TryRecvError};
use crate::rpc::{self, CallError, Caller, ReplyToken, Responder};
use crate::shared::new_slots;
use crate::{Transport, TrySendError};

/// Per-peer limits.
#[derive(Debug, Clone, Copy)]
pub struct FluxConfig {
    /// Request queue capacity per ordered pair (calls plus notifications).
    pub capacity: usize,
    /// Calls one node may have outstanding towards one peer.
    pub max_in_flight: usize,
}

impl Default for FluxConfig {
    fn default() -> Self {
        Self {
            capacity: 256,
            max_in_flight: 64,
        }
    }
}

/// Why a Flux operation did not happen; the value comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FluxError<V> {
    /// The peer's queue is full or the in-flight limit towards it reached.
    #[error("peer queue full or in-flight limit reached")]
    Full(V),
    /// No such peer (out of range, or this node itself).
    #[error("invalid peer")]
    InvalidPeer(V),
    /// The peer's node was dropped.
    #[error("peer disconnected")]
    Disconnected(V),
    /// A reply to a notification (which expects none).
    #[error("the message was a notification; it takes no reply")]
    NotACall(V),
}

/// Why [`FluxNode::reply`] did not answer; the response comes back, and the
/// [`DeferredReply`] too while it can still be answered.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError<Resp> {
    /// The call was taken by another node (of this mesh or of another one):
    /// answer it through node [`DeferredReply::node`] of its mesh.
    #[error("the deferred call was taken by another node (node {} of its mesh); answer it there", .1.node())]
    WrongNode(Resp, DeferredReply),
    /// The calling node was dropped.
    #[error("caller disconnected")]
    Disconnected(Resp),
}

/// Hands each mesh a number of its own, so that a [`DeferredReply`] can be
/// checked against the node it is given to.
static MESHES: AtomicU64 = AtomicU64::new(0);

/// One thread's handle on the mesh.
pub struct FluxNode<T: Transport, Req: Send, Resp: Send, U> {
    /// This node's mesh (from `MESHES`).
    mesh: u64,
    id: usize,
    callers: Vec<Option<Caller<T, Req, Resp, U>>>,
    responders: Vec<Option<Responder<T, Req, Resp>>>,
    cursor: usize,
    /// Replies sent since the responders were last flushed (see
    /// [`REPLY_FLUSH`]).
    replies: u32,
}

/// Replies a node sends, to any peers, between flushes of all its
/// responders: a node that is never idle publishes each response queue
/// every quarter of it, which alone would hold the reply to a peer with
/// fewer calls in flight until the node polls, flushes or runs idle.
const REPLY_FLUSH: u32 = 16;

/// Builds a mesh of `n` nodes; move node `i` to thread `i`.
///
/// # Panics
///
/// When [`try_mesh`] refuses `n` or `cfg`, with a message naming the sizes
/// and the reason.
#[track_caller]
pub fn mesh<T: Transport, Req: Send, Resp: Send, U>(
    n: usize,
    cfg: FluxConfig,
) -> Vec<FluxNode<T, Req, Resp, U>> {
    match try_mesh(n, cfg) {
        Ok(nodes) => nodes,
        Err(e) => panic!(
            "flux::mesh({n}, capacity {}, max_in_flight {}) over {}: {e}",
            cfg.capacity,
            cfg.max_in_flight,
            T::NAME
        ),
    }
}

/// Like [`mesh`], or why it cannot be made:
///
/// * [`CapacityError::TooManyNodes`] when `n` is above the largest mesh
///   possible: every node keeps a caller and a responder entry for each
///   node, and those `n × n` entries must fit in `isize::MAX` bytes (some
///   2 × 10^8 nodes on 64-bit targets). Checked before anything is
///   allocated, so an absurd `n` costs nothing;
/// * [`CapacityError::MeshTooLarge`] when the mesh's `n × (n − 1)`
///   call/reply pairs (about [`Transport::channel_bytes`] for each of
///   their queues) and tables would take more than the machine's memory,
///   or the memory limit of the process's cgroup (Linux; read from
///   `/proc/meminfo` and `/sys/fs/cgroup/memory.max`): checked once the
///   first pair is made (a configuration no pair can have is refused as
///   [`rpc::try_pair`] refuses it), before anything else is allocated. A
///   mesh that fits in the machine's memory but not in what is free can
///   still exhaust it;
/// * [`CapacityError::OutOfMemory`] when the allocator refuses a node's
///   tables;
/// * why a pair's queues cannot be made with `cfg` ([`rpc::try_pair`]).
pub fn try_mesh<T: Transport, Req: Send, Resp: Send, U>(
    n: usize,
    cfg: FluxConfig,
) -> Result<Vec<FluxNode<T, Req, Resp, U>>, CapacityError> {
    let entry =
        size_of::<Option<Caller<T, Req, Resp, U>>>() + size_of::<Option<Responder<T, Req, Resp>>>();
    // n ≤ max exactly when n × n × entry ≤ isize::MAX, found without a
    // product that could overflow; it also keeps every size below in range.
    let max = ((isize::MAX as usize) / entry.max(1)).isqrt();
    if n > max {
        return Err(CapacityError::TooManyNodes { requested: n, max });
    }
    // The first pair first: a configuration no pair can have is refused
    // for what it is (`rpc::try_pair`), not as a mesh too large.
    let mut first = if n > 1 {
        Some(rpc::try_pair::<T, Req, Resp, U>(
            cfg.capacity,
            cfg.max_in_flight,
        )?)
    } else {
        None
    };
    // Below `max`, n × n × entry fits in isize: only the pairs saturate.
    let bytes = (n * n * entry).saturating_add((n * n.saturating_sub(1)).saturating_mul(
        rpc::pair_bytes::<T, Req, Resp, U>(cfg.capacity, cfg.max_in_flight),
    ));
    if let Some(memory) = memory_limit()
        && bytes as u64 > memory
    {
        return Err(CapacityError::MeshTooLarge {
            nodes: n,
            bytes,
            memory,
        });
    }
    // Relaxed: only uniqueness matters, and every read-modify-write of one
    // atomic sees a value of its own, whatever the ordering.
    let mesh = MESHES.fetch_add(1, Ordering::Relaxed);
    let mut nodes = Vec::new();
    nodes
        .try_reserve_exact(n)
        .map_err(|_| CapacityError::OutOfMemory {
            requested: n,
            bytes: n * size_of::<FluxNode<T, Req, Resp, U>>(),
        })?;
    for id in 0..n {
        nodes.push(FluxNode {
            mesh,
            id,
            callers: new_slots(n, n, || None)?.into_vec(),
            responders: new_slots(n, n, || None)?.into_vec(),
            cursor: 0,
            replies: 0,
        });
    }
    for i in 0..n {
        for j in 0..n {
            if i != j {
                let (caller, responder) = match first.take() {
                    Some(pair) => pair,
                    None => rpc::try_pair::<T, Req, Resp, U>(cfg.capacity, cfg.max_in_flight)?,
                };
                nodes[i].callers[j] = Some(caller);
                nodes[j].responders[i] = Some(responder);
            }
        }
    }
    Ok(nodes)
}

/// The memory this process can have at most: the machine's (`MemTotal`),
/// or its cgroup's limit where that is lower; `None` where neither can be
/// read (then no mesh is refused for its size).
fn memory_limit() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        let kib = t.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
        kib.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
    });
    let total = total.map(|kib| kib.saturating_mul(1024));
    // cgroup v2: a number of bytes, or "max".
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    match (total, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A request taken by [`FluxNode::try_recv`].
#[must_use = "a call must be answered (reply or defer) or it never completes"]
pub struct Incoming<'a, T: Transport, Req: Send, Resp: Send, U> {
    node: &'a mut FluxNode<T, Req, Resp, U>,
    from: usize,
    token: Option<ReplyToken>,
    data: Req,
}

/// A call whose answer was deferred; give it to [`FluxNode::reply`] of the
/// node that took the call (see [`node`](Self::node)): any other node
/// refuses it and hands it back.
#[must_use = "an unanswered call never completes at the caller"]
#[derive(Debug)]
pub struct DeferredReply {
    /// The mesh and node that took the call: only that node's response
    /// queue towards `to` leads back to the caller.
    mesh: u64,
    node: usize,
    to: usize,
    token: ReplyToken,
}

impl DeferredReply {
    /// The node that made the call.
    pub fn to(&self) -> usize {
        self.to
    }

    /// The node that took the call, the only one that can answer it.
    pub fn node(&self) -> usize {
        self.node
    }
}

impl<T: Transport, Req: Send, Resp: Send, U> Incoming<'_, T, Req, Resp, U> {
    /// The sending node.
    pub fn from(&self) -> usize {
        self.from
    }

    /// The message.
    pub fn data(&self) -> &Req {
        &self.data
    }

    /// Whether the sender expects a reply (a call, not a notification).
    pub fn is_call(&self) -> bool {
        self.token.is_some()
    }

    /// Answers the call now.
    pub fn reply(self, resp: Resp) -> Result<(), FluxError<Resp>> {
        match self.token {
            None => Err(FluxError::NotACall(resp)),
            Some(token) => self
                .node
                .answer(self.from, token, resp)
                .map_err(|Disconnected(r)| FluxError::Disconnected(r)),
        }
    }

    /// Keeps the message and, for a call, a handle to answer it later with
    /// [`FluxNode::reply`] on this same node.
    pub fn defer(self) -> (Req, Option<DeferredReply>) {
        let (mesh, node, to) = (self.node.mesh, self.node.id, self.from);
        (
            self.data,
            self.token.map(|token| DeferredReply {
                mesh,
                node,
                to,
                token,
            }),
        )
    }
}

impl<T: Transport, Req: Send, Resp: Send, U> FluxNode<T, Req, Resp, U> {
    /// This node's index.
    pub fn id(&self) -> usize {
        self.id
    }

    /// Number of nodes in the mesh.
    pub fn len(&self) -> usize {
        self.callers.len()
    }

    /// Whether the mesh has no nodes (never true for a node).
    pub fn is_empty(&self) -> bool {
        self.callers.is_empty()
    }

    /// Calls node `to`; `user` comes back with the response in
    /// [`poll`](Self::poll).
    #[inline]
    pub fn call(&mut self, to: usize, msg: Req, user: U) -> Result<(), FluxError<(Req, U)>> {
        let Some(caller) = self.callers.get_mut(to).and_then(Option::as_mut) else {
            return Err(FluxError::InvalidPeer((msg, user)));
        };
        caller.call(msg, user).map_err(|e| match e {
            CallError::Full(m, u) => FluxError::Full((m, u)),
            CallError::Disconnected(m, u) => FluxError::Disconnected((m, u)),
        })
    }

    /// Sends a one-way message to node `to`.
    #[inline]
    pub fn notify(&mut self, to: usize, msg: Req) -> Result<(), FluxError<Req>> {
        let Some(caller) = self.callers.get_mut(to).and_then(Option::as_mut) else {
            return Err(FluxError::InvalidPeer(msg));
        };
        caller.notify(msg).map_err(|e| match e {
            TrySendError::Full(m) => FluxError::Full(m),
            TrySendError::Disconnected(m) => FluxError::Disconnected(m),
        })
    }

    /// Answers a deferred call. Only the node that took the call can: any
    /// other node (of this mesh or another) refuses it with
    /// [`ReplyError::WrongNode`], handing back the response and the
    /// `DeferredReply` to give to the right node.
    #[inline]
    pub fn reply(&mut self, d: DeferredReply, resp: Resp) -> Result<(), ReplyError<Resp>> {
        if d.mesh != self.mesh || d.node != self.id {
            return Err(ReplyError::WrongNode(resp, d));
        }
        self.answer(d.to, d.token, resp)
            .map_err(|Disconnected(r)| ReplyError::Disconnected(r))
    }

    /// Sends the reply to a call this node took from `to`.
    #[inline]
    fn answer(
        &mut self,
        to: usize,
        token: ReplyToken,
        resp: Resp,
    ) -> Result<(), Disconnected<Resp>> {
        self.responders[to]
            .as_mut()
            .expect("a call this node took came from one of its peers")
            .reply(token, resp)?;
        self.replies += 1;
        if self.replies == REPLY_FLUSH {
            self.replies = 0;
            for r in self.responders.iter_mut().flatten() {
                r.flush();
            }
        }
        Ok(())
    }

    /// Publishes every pending call, notification and reply.
    pub fn flush(&mut self) {
        for c in self.callers.iter_mut().flatten() {
            c.flush();
        }
        for r in self.responders.iter_mut().flatten() {
            r.flush();
        }
    }

    /// Publishes what is pending, then delivers every arrived response as
    /// `f(from, user_data, Ok(response))`. Calls to a peer that was dropped
    /// come back as `f(from, user_data, Err(Disconnected(())))` once its
    /// last replies are delivered, each once, and stop counting in
    /// [`in_flight`](Self::in_flight). Returns how many calls were
    /// delivered either way.
    #[inline]
    pub fn poll(&mut self, mut f: impl FnMut(usize, U, Result<Resp, Disconnected<()>>)) -> usize {
        self.flush();
        let mut n = 0;
        for (from, c) in self.callers.iter_mut().enumerate() {
            if let Some(c) = c {
                // Err: a dropped peer with nothing left to deliver.
                n += c.poll(|u, r| f(from, u, r)).unwrap_or(0);
            }
        }
        n
    }

    /// Takes the next request from any peer (round-robin). When there is
    /// none, publishes pending replies and returns request slots to their
    /// senders before returning `None`.
    #[inline]
    pub fn try_recv(&mut self) -> Option<Incoming<'_, T, Req, Resp, U>> {
        let n = self.responders.len();
        for k in 0..n {
            let from = (self.cursor + k) % n;
            let Some(r) = self.responders[from].as_mut() else {
                continue;
            };
            match r.try_recv() {
                Ok((token, data)) => {
                    self.cursor = (from + 1) % n;
                    return Some(Incoming {
                        node: self,
                        from,
                        token,
                        data,
                    });
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
            }
        }
        for r in self.responders.iter_mut().flatten() {
            r.sync();
            r.flush();
        }
        None
    }

    /// Calls outstanding towards `to`.
    pub fn in_flight(&self, to: usize) -> usize {
        self.callers
            .get(to)
            .and_then(Option::as_ref)
            .map_or(0, Caller::in_flight)
    }

    /// Whether node `to` has been dropped.
    pub fn is_disconnected(&self, to: usize) -> bool {
        self.callers
            .get(to)
            .and_then(Option::as_ref)
            .is_some_and(Caller::is_disconnected)
    }
}
