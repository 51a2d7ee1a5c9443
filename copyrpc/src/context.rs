//! The transport: endpoints as RC QPs with their rings in registered
//! memory, one CQ and one SRQ per context, driven by [`crate::proto`].
//!
//! A flush is one WRITE_IMM per batch from the send ring to the same
//! offset of the peer's receive ring (inline when small), unsignaled except
//! every `signal_every`-th per send queue. Receives are zero-length WQEs on
//! the context's SRQ, reposted in bulk when half are used. A receive CQE's
//! QPN finds its endpoint in a sorted table (binary search, one-entry
//! cache); its immediate is the batch length.
//!
//! Doorbells are adaptive: [`Context::poll`] flushes every dirty endpoint
//! whenever it finds no new completion, so a lone call leaves at once and,
//! under load, calls made between two flushes (idle polls, and every
//! fourth poll that finds completions) share one WRITE_IMM.
//! [`Context::flush`] flushes explicitly.
//!
//! Keepalive: an endpoint that has heard from its peer and saw no traffic
//! for [`Config::keepalive`] posts one more WQE, a signaled zero-length
//! RDMA WRITE to the start of the peer's ring (no receive WQE, no ring
//! byte, no protocol state), so that a dead peer fails it as a call would.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlx5::wqe::{Write, WriteImm};
use mlx5::{Access, ConnectOpts, Cq, Kind, Mr, Pd, Progress, Qp, QpCaps, Remote, Srq, Syndrome};

use crate::error::{CallError, CallErrorKind, EndpointError, Error, ReplyError, RpcError};
use crate::info::EndpointInfo;
use crate::proto::{AppendError, Conn, Limits, Ring};

/// How a context is built.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Ring sizes and call limits of every endpoint (both ends must use
    /// the same).
    pub limits: Limits,
    /// Receive WQEs on the shared SRQ (each batch that arrives uses one).
    pub srq_depth: u32,
    /// CQ entries (sends and receives of every endpoint share one CQ). Must
    /// hold `srq_depth` plus `sq_depth` per endpoint.
    pub cq_depth: u32,
    /// Send-queue WQEs per endpoint.
    pub sq_depth: u32,
    /// Batches of at most this many bytes go inline in the WQE.
    pub inline_max: u32,
    /// A call without a reply after this long comes back with
    /// [`RpcError::Timeout`] (`None`: never; a dead peer is still detected
    /// by the transport). Deadlines are looked at in every poll that finds
    /// no completion and in every 64th that does, by a clock that reuses
    /// its last reading for a few microseconds (`lazyclock`): a call
    /// times out no earlier than this after it was made, at the first such
    /// poll after that, up to twice `lazyclock::MAX_STALE` (20 µs) late.
    pub call_timeout: Option<Duration>,
    /// QP attributes for connecting. The default is mlx5's, but the peer
    /// may only WRITE (copyrpc needs nothing else of it): no remote READ
    /// or atomic reaches this side's memory through an endpoint's QP.
    pub connect: ConnectOpts,
    /// On a software device with manual progress, step it once in every
    /// [`Context::poll`] (the default). Off, the caller steps the device
    /// itself (as the instruction-count example does, to leave the
    /// device's work out of copyrpc's count).
    pub step_manual_device: bool,
    /// An endpoint that has heard from its peer and neither sent nor
    /// received anything for this long is probed: a signaled zero-length
    /// RDMA WRITE, which the peer's NIC must acknowledge and its
    /// application never sees. A dead peer then fails the endpoint
    /// (`EndpointError::Completion` with `TransportRetryExceeded`, see
    /// [`Context::endpoint_error`]) within about twice this plus the
    /// transport's retry budget (the ACK timeout times `retry_cnt + 1` of
    /// [`Config::connect`], about 0.54 s with the default), also on an
    /// endpoint that only waits for requests (without probes such an
    /// endpoint learns it at its next send, as an RC QP does). Looked at
    /// in every 64th poll; a period under 1 ms is taken as 1 ms. Only an
    /// endpoint that has heard from its peer is probed (a probe to a QP
    /// not yet connected on the other side would fail the endpoint): a
    /// peer that dies before it sent anything is not noticed this way.
    /// `None`: no probes. On a software device with manual progress the
    /// peer's device answers a probe only when its application steps it: a
    /// peer that stops stepping for longer than the retry budget while a
    /// probe (or a call) is in flight fails the link between the two
    /// processes, and with it every endpoint between them.
    pub keepalive: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            srq_depth: 1024,
            cq_depth: 1 << 14,
            sq_depth: 128,
            inline_max: 128,
            call_timeout: Some(Duration::from_secs(10)),
            connect: ConnectOpts {
                access: Access::REMOTE_WRITE,
                ..ConnectOpts::default()
            },
            step_manual_device: true,
            keepalive: Some(Duration::from_secs(1)),
        }
    }
}

/// An endpoint of a [`Context`]: a handle (cheap to copy) naming one RC
/// connection to one peer endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    ctx: u32,
    idx: u32,
}

impl Endpoint {
    /// The endpoint's index in its context.
    pub fn index(self) -> u32 {
        self.idx
    }
}

/// Idle polls per look at the device's asynchronous events.
const ASYNC_EVERY: u32 = 64;
/// Polls with completions per look at the calls' deadlines (idle polls
/// look every time): a context that never goes idle still times calls out.
const EXPIRE_EVERY: u32 = 64;
/// Polls with completions per flush of the batches queued (idle polls
/// flush every time): under constant load, calls and replies still leave,
/// each batch after at most this many polls.
const FLUSH_EVERY: u32 = 4;

/// Context numbers, so a handle of one context is refused by another.
static NEXT_CONTEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

/// A ring in registered memory: hands the protocol the regions it asks
/// for, never a reference over the whole ring (the NIC moves other parts
/// of it concurrently).
struct RawRing {
    base: *mut u8,
    len: usize,
}

impl Ring for RawRing {
    fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        assert!(offset + len <= self.len, "ring region out of bounds");
        // SAFETY: in bounds (checked); the protocol asks only for a region
        // it owns now — a batch that arrived and is not yet released, or a
        // header it is about to write — which no NIC writes meanwhile.
        unsafe { std::slice::from_raw_parts(self.base.add(offset), len) }
    }

    fn bytes_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset + len <= self.len, "ring region out of bounds");
        // SAFETY: as above: a region past what was flushed (the NIC does
        // not read it) or a header not yet posted.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(offset), len) }
    }
}

/// The receive ring, kept alive by every request handle that views it.
struct RecvRing {
    mr: Mr,
}

/// A request's slot in the caller's table.
enum Slot<U> {
    Free,
    Waiting(U),
    /// Came back to the user (timeout); the reply, if it comes, is
    /// discarded, and the reply space stays reserved until then.
    Abandoned,
}

struct Peer {
    addr: u64,
    rkey: u32,
}

/// A call slot: the wire id of its call is `generation << 16 | index`
/// (16 bits of generation, which wrap); `number` tells its calls apart
/// for good (the endpoint's count of calls when it was issued), for the
/// deadline queue, whose entries may outlive many generations.
struct CallSlot<U> {
    generation: u16,
    number: u64,
    /// Where the call's request ends in the send ring: a reply is taken
    /// only once the request has left ([`Conn::sent`] past it).
    ends: u64,
    state: Slot<U>,
}

struct EndpointState<U> {
    qp: Qp,
    send: Mr,
    recv: Rc<RecvRing>,
    conn: Conn,
    peer: Option<Peer>,
    failed: Option<EndpointError>,
    slots: Vec<CallSlot<U>>,
    free: Vec<u16>,
    /// Calls issued so far (see [`CallSlot::number`]).
    calls: u64,
    /// Calls in issue order (slot index, call number) with their deadlines
    /// (one timeout for all, so they are sorted). Entries of calls already
    /// answered leave from the front as answers come
    /// ([`EndpointState::prune_deadlines`]), and the whole queue is
    /// compacted when a call held unanswered at its front keeps answered
    /// ones behind it ([`EndpointState::push_deadline`]), so it holds about
    /// the calls in flight, not every call of the last `call_timeout`.
    deadlines: VecDeque<(u16, u64, Instant)>,
    unsignaled: u32,
    dirty: bool,
    /// It posted or received a batch since the last keepalive check (see
    /// [`Config::keepalive`]): no probe needed.
    active: bool,
    /// A batch from the peer arrived once: its QP is connected, so a probe
    /// cannot find it not yet ready (see [`Config::keepalive`]).
    heard: bool,
    /// User data of calls in flight when the endpoint failed, waiting to be
    /// handed back by the next poll.
    orphans: Vec<U>,
}

impl<U> EndpointState<U> {
    /// Drops the deadlines of answered calls from the front (answers come
    /// mostly in call order): without this they would stay until their
    /// deadline passed, `call_timeout` worth of calls per endpoint.
    fn prune_deadlines(&mut self) {
        while let Some(&(idx, number, _)) = self.deadlines.front() {
            if waiting(&self.slots, idx, number) {
                break;
            }
            self.deadlines.pop_front();
        }
    }

    /// Queues the deadline of call `number` in slot `idx`. A call left
    /// unanswered keeps every later entry behind it in the queue; once the
    /// queue holds twice as many entries as there are slots, the entries
    /// of answered calls go (one per waiting call stays), so it stays
    /// bounded at a cost of O(1) per call.
    fn push_deadline(&mut self, idx: u16, number: u64, at: Instant) {
        self.deadlines.push_back((idx, number, at));
        if self.deadlines.len() > 2 * self.slots.len() + 16 {
            let slots = &self.slots;
            self.deadlines.retain(|&(i, n, _)| waiting(slots, i, n));
        }
    }

    fn send_ring(&self) -> RawRing {
        RawRing {
            base: self.send.as_ptr(),
            len: self.send.len(),
        }
    }

    fn recv_ring(&self) -> RawRing {
        RawRing {
            base: self.recv.mr.as_ptr(),
            len: self.recv.mr.len(),
        }
    }

    /// Shuts the endpoint down with `err`; the user data of every call in
    /// flight waits in `orphans` for the next poll to hand it back. Returns
    /// whether it was working until now (the caller lists it then).
    fn fail(&mut self, err: EndpointError) -> bool {
        if self.failed.is_some() {
            return false;
        }
        // Best effort: a QP already in ERROR stays there.
        let _ = self.qp.to_error();
        self.failed = Some(err);
        for s in self.slots.iter_mut() {
            if let Slot::Waiting(u) = std::mem::replace(&mut s.state, Slot::Free) {
                self.orphans.push(u);
            }
        }
        self.deadlines.clear();
        true
    }
}

/// Whether call `number` of slot `idx` still waits for its answer.
fn waiting<U>(slots: &[CallSlot<U>], idx: u16, number: u64) -> bool {
    slots
        .get(usize::from(idx))
        .is_some_and(|s| s.number == number && matches!(s.state, Slot::Waiting(_)))
}

/// A request handed out by [`Context::recv`]: its payload is read in place
/// in the receive ring, which stays reserved for it until it is replied to
/// ([`Context::reply`]) or dropped (the caller then gets
/// [`RpcError::Dropped`]).
pub struct Request {
    endpoint: Endpoint,
    id: u32,
    seq: u64,
    offset: u32,
    len: u32,
    ring: Rc<RecvRing>,
    dropped: Rc<RefCell<Vec<(u32, u32, u64)>>>,
    answered: bool,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("endpoint", &self.endpoint)
            .field("id", &self.id)
            .field("len", &self.len)
            .finish()
    }
}

impl Request {
    /// The request's payload, in place in the receive ring.
    pub fn data(&self) -> &[u8] {
        debug_assert!(self.offset as usize + self.len as usize <= self.ring.mr.len());
        // SAFETY: the range lies inside the ring (validated by the protocol
        // when the batch arrived, from the one read of its header that the
        // offset and length come from), the ring is kept alive by `self.ring`,
        // and its bytes are not released to the peer before this handle is
        // replied to or dropped, so a peer that follows the protocol does
        // not write them meanwhile (see the crate docs on trust).
        unsafe {
            std::slice::from_raw_parts(
                self.ring.mr.as_ptr().add(self.offset as usize),
                self.len as usize,
            )
        }
    }

    /// The endpoint it came from.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if !self.answered {
            // Cold path: the context answers "dropped" at its next poll.
            self.dropped
                .borrow_mut()
                .push((self.endpoint.idx, self.id, self.seq));
        }
    }
}

/// A request that arrived, not yet handed out.
struct Arrived {
    endpoint: u32,
    id: u32,
    seq: u64,
    offset: u32,
    len: u32,
}

/// A copyrpc context: one device, one CQ and SRQ, and its endpoints. `U`
/// is the user data each call carries back to its response. Single
/// threaded: one thread polls a context (use one context per thread).
pub struct Context<U> {
    id: u32,
    cfg: Config,
    dev: mlx5::Context,
    step_device: bool,
    pd: Pd,
    cq: Cq,
    srq: Srq,
    eps: Vec<EndpointState<U>>,
    /// (QPN, endpoint) sorted by QPN, and the last hit.
    routes: Vec<(u32, u32)>,
    last_route: usize,
    arrived: VecDeque<Arrived>,
    dropped: Rc<RefCell<Vec<(u32, u32, u64)>>>,
    dirty: Vec<u32>,
    /// Endpoints that failed with calls still to hand back.
    failing: Vec<u32>,
    /// Endpoints with a flushed WQE this poll, failed once the
    /// asynchronous events were read (see [`Context::poll`]).
    flushed: Vec<u32>,
    /// Polls that found nothing (paces the asynchronous-event check).
    idle_polls: u32,
    /// Polls that found completions, counted for [`FLUSH_EVERY`] and
    /// [`EXPIRE_EVERY`].
    busy_polls: u32,
    signal_every: u32,
    /// Deadlines' clock: the last instant read, again, for a few thousand
    /// TSC ticks (a clock read orders itself after the poll's loads and
    /// cost an idle poll with a call in flight more than half its time).
    clock: lazyclock::LazyClock,
    /// When the next keepalive check is due (`None` until the first poll
    /// that looks).
    next_probe: Option<Instant>,
}

impl<U> std::fmt::Debug for Context<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("device", &self.dev.name())
            .field("endpoints", &self.eps.len())
            .finish()
    }
}

impl<U> Context<U> {
    /// A context on `dev` (see `mlx5::Context::from_env`, which honours
    /// `MLX5_DEVICE`). On a software device with manual progress, every
    /// [`Context::poll`] steps the device once.
    pub fn new(dev: &mlx5::Context, cfg: Config) -> Result<Context<U>, Error> {
        cfg.limits.validate()?;
        if cfg.sq_depth < 4 || cfg.sq_depth > 1 << 14 {
            return Err(Error::Config(format!(
                "sq_depth {} (4..=16384)",
                cfg.sq_depth
            )));
        }
        if cfg.srq_depth < 2 || cfg.srq_depth > 1 << 15 {
            return Err(Error::Config(format!(
                "srq_depth {} (2..=32768)",
                cfg.srq_depth
            )));
        }
        if cfg.cq_depth < cfg.srq_depth + cfg.sq_depth {
            return Err(Error::Config(format!(
                "cq_depth {} cannot hold srq_depth {} plus one endpoint's sq_depth {}",
                cfg.cq_depth, cfg.srq_depth, cfg.sq_depth
            )));
        }
        let pd = Pd::new(dev)?;
        let cq = Cq::new(dev, cfg.cq_depth)?;
        let mut srq = Srq::new(&pd, cfg.srq_depth, 1)?;
        while srq.outstanding() < srq.depth() {
            srq.post_recv(&[])?;
        }
        Ok(Context {
            // Relaxed: a unique number, nothing is published through it.
            id: NEXT_CONTEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            step_device: cfg.step_manual_device && dev.progress_mode() == Some(Progress::Manual),
            dev: dev.clone(),
            pd,
            cq,
            srq,
            eps: Vec::new(),
            routes: Vec::new(),
            last_route: 0,
            arrived: VecDeque::new(),
            dropped: Rc::new(RefCell::new(Vec::new())),
            dirty: Vec::new(),
            failing: Vec::new(),
            flushed: Vec::new(),
            idle_polls: ASYNC_EVERY - 1,
            busy_polls: 0,
            signal_every: (cfg.sq_depth / 4).max(1),
            clock: lazyclock::LazyClock::default(),
            next_probe: None,
            cfg,
        })
    }

    /// The device.
    pub fn device(&self) -> &mlx5::Context {
        &self.dev
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// A new endpoint, not yet connected.
    pub fn endpoint(&mut self) -> Result<Endpoint, Error> {
        let n = self.eps.len() as u32 + 1;
        if self.cfg.srq_depth + n * self.cfg.sq_depth > self.cfg.cq_depth {
            return Err(Error::Config(format!(
                "cq_depth {} holds srq_depth {} plus {} endpoints of sq_depth {}, not {n}",
                self.cfg.cq_depth,
                self.cfg.srq_depth,
                n - 1,
                self.cfg.sq_depth
            )));
        }
        let caps = QpCaps {
            max_send_wr: self.cfg.sq_depth,
            max_recv_wr: 0,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline: self.cfg.inline_max,
        };
        let qp = Qp::builder(&self.pd, &self.cq, &self.cq)
            .srq(&self.srq)
            .caps(caps)
            .build()?;
        let ring = self.cfg.limits.ring as usize;
        let send = self.pd.alloc_mr(ring, Access::LOCAL_WRITE)?;
        let recv = self
            .pd
            .alloc_mr(ring, Access::LOCAL_WRITE | Access::REMOTE_WRITE)?;
        let k = self.cfg.limits.max_inflight as usize;
        self.eps.push(EndpointState {
            qp,
            send,
            recv: Rc::new(RecvRing { mr: recv }),
            conn: Conn::new(self.cfg.limits)?,
            peer: None,
            failed: None,
            slots: (0..k)
                .map(|_| CallSlot {
                    generation: 0,
                    number: 0,
                    ends: 0,
                    state: Slot::Free,
                })
                .collect(),
            // `k` is at most 2^16 (`Limits::validate`): every slot number
            // fits a u16 (`k as u16` would make 2^16 slots none).
            free: (0..k).rev().map(|i| i as u16).collect(),
            calls: 0,
            deadlines: VecDeque::new(),
            unsignaled: 0,
            dirty: false,
            active: false,
            heard: false,
            orphans: Vec::new(),
        });
        Ok(Endpoint {
            ctx: self.id,
            idx: n - 1,
        })
    }

    /// The index of `ep` if it is an endpoint of this context.
    fn slot(&self, ep: Endpoint) -> Option<usize> {
        (ep.ctx == self.id && (ep.idx as usize) < self.eps.len()).then_some(ep.idx as usize)
    }

    fn ep(&self, ep: Endpoint) -> Result<&EndpointState<U>, Error> {
        self.slot(ep)
            .map(|i| &self.eps[i])
            .ok_or(Error::NoEndpoint(ep.idx))
    }

    /// What the peer endpoint needs to connect to `ep`.
    pub fn local_info(&self, ep: Endpoint) -> Result<EndpointInfo, Error> {
        let e = self.ep(ep)?;
        Ok(EndpointInfo {
            qp: e.qp.local_info(&self.cfg.connect)?,
            ring_addr: e.recv.mr.addr(),
            ring_rkey: e.recv.mr.rkey(),
            limits: self.cfg.limits,
        })
    }

    /// Connects `ep` to the peer endpoint `remote` describes (both sides
    /// connect to each other's info).
    pub fn connect(&mut self, ep: Endpoint, remote: &EndpointInfo) -> Result<(), Error> {
        let opts = self.cfg.connect;
        let limits = self.cfg.limits;
        let i = self.slot(ep).ok_or(Error::NoEndpoint(ep.idx))?;
        let e = &mut self.eps[i];
        if e.peer.is_some() {
            return Err(Error::AlreadyConnected(ep.idx));
        }
        if remote.limits != limits {
            return Err(Error::BadInfo(format!(
                "the peer's limits {:?} differ from ours {:?}",
                remote.limits, limits
            )));
        }
        // Every WRITE goes to `ring_addr` plus an offset within the ring:
        // a ring that would end past the address space is no ring.
        if remote
            .ring_addr
            .checked_add(u64::from(limits.ring))
            .is_none()
        {
            return Err(Error::BadInfo(format!(
                "the peer's ring at {:#x} ({} bytes) ends past the address space",
                remote.ring_addr, limits.ring
            )));
        }
        e.qp.connect(&remote.qp, &opts)?;
        e.peer = Some(Peer {
            addr: remote.ring_addr,
            rkey: remote.ring_rkey,
        });
        let qpn = e.qp.qpn();
        let at = self.routes.partition_point(|&(q, _)| q < qpn);
        self.routes.insert(at, (qpn, ep.idx));
        Ok(())
    }

    /// The endpoint's QP (for diagnostics and fault injection).
    pub fn qp(&self, ep: Endpoint) -> Result<&Qp, Error> {
        Ok(&self.ep(ep)?.qp)
    }

    /// The endpoint's error, once it failed.
    pub fn endpoint_error(&self, ep: Endpoint) -> Option<&EndpointError> {
        self.eps[self.slot(ep)?].failed.as_ref()
    }

    /// Calls in flight on `ep` (replies owed, abandoned ones included).
    pub fn in_flight(&self, ep: Endpoint) -> u32 {
        self.slot(ep).map_or(0, |i| self.eps[i].conn.owed())
    }

    /// Queues a call of `payload` on `ep`; its reply (or error) comes back
    /// with `user_data` through [`Context::poll`]. The request leaves at
    /// the next idle poll (or within four busy ones) or
    /// [`Context::flush`].
    pub fn call(&mut self, ep: Endpoint, payload: &[u8], user_data: U) -> Result<(), CallError<U>> {
        let refuse = |kind, user_data| Err(CallError { kind, user_data });
        let timeout = self.cfg.call_timeout;
        if ep.ctx != self.id {
            return refuse(CallErrorKind::WrongContext, user_data);
        }
        let Some(i) = self.slot(ep) else {
            return refuse(CallErrorKind::NotConnected, user_data);
        };
        // A timeout past what the clock holds never expires. The lazy
        // instant may be behind by up to MAX_STALE, added so that the call
        // never times out early.
        let clock = &mut self.clock;
        let deadline = timeout.and_then(|t| {
            clock
                .now()
                .checked_add(t.saturating_add(lazyclock::MAX_STALE))
        });
        let e = &mut self.eps[i];
        if let Some(err) = &e.failed {
            return refuse(CallErrorKind::Endpoint(err.clone()), user_data);
        }
        if e.peer.is_none() {
            return refuse(CallErrorKind::NotConnected, user_data);
        }
        let Some(&idx) = e.free.last() else {
            return refuse(CallErrorKind::NoRoom, user_data);
        };
        let slot = &mut e.slots[idx as usize];
        let id = (u32::from(slot.generation.wrapping_add(1)) << 16) | u32::from(idx);
        let mut ring = e.send_ring();
        // Admission (room for the request and its reply) and the write, in
        // one: nothing is written when it refuses.
        if let Err(a) = e.conn.call(&mut ring, id, payload) {
            let kind = match a {
                AppendError::TooLarge { len, max } => CallErrorKind::TooLarge { len, max },
                _ => CallErrorKind::NoRoom,
            };
            return refuse(kind, user_data);
        }
        e.free.pop();
        e.calls += 1;
        let number = e.calls;
        let slot = &mut e.slots[idx as usize];
        slot.generation = slot.generation.wrapping_add(1);
        slot.number = number;
        slot.ends = e.conn.written();
        slot.state = Slot::Waiting(user_data);
        if let Some(at) = deadline {
            e.push_deadline(idx, number, at);
        }
        if !e.dirty {
            e.dirty = true;
            self.dirty.push(ep.idx);
        }
        Ok(())
    }

    /// The next request that arrived, in arrival order.
    pub fn recv(&mut self) -> Option<Request> {
        let a = self.arrived.pop_front()?;
        Some(Request {
            endpoint: Endpoint {
                ctx: self.id,
                idx: a.endpoint,
            },
            id: a.id,
            seq: a.seq,
            offset: a.offset,
            len: a.len,
            ring: self.eps[a.endpoint as usize].recv.clone(),
            dropped: self.dropped.clone(),
            answered: false,
        })
    }

    /// Answers `req` with `payload` (sent with the endpoint's next flush).
    /// The request's ring space is released. A reply over `max_reply` is
    /// refused and the caller told the request was dropped.
    pub fn reply(&mut self, mut req: Request, payload: &[u8]) -> Result<(), ReplyError> {
        if req.endpoint.ctx != self.id {
            // Dropping it lets its own context answer "dropped".
            return Err(ReplyError::WrongContext);
        }
        req.answered = true;
        let e = &mut self.eps[req.endpoint.idx as usize];
        let mut ring = e.send_ring();
        let r = match &e.failed {
            Some(err) => Err(ReplyError::Endpoint(err.clone())),
            None => match e.conn.reply(&mut ring, req.id, payload) {
                Ok(()) => Ok(()),
                Err(AppendError::TooLarge { len, max }) => {
                    req.answered = false; // answered "dropped" at the next poll
                    Err(ReplyError::TooLarge { len, max })
                }
                Err(_) => {
                    let err = EndpointError::Protocol {
                        endpoint: req.endpoint.idx,
                        error: Arc::new(crate::proto::ProtoError(
                            "no room for a reply the peer had to reserve".into(),
                        )),
                    };
                    if e.fail(err.clone()) {
                        self.failing.push(req.endpoint.idx);
                    }
                    Err(ReplyError::Endpoint(err))
                }
            },
        };
        if req.answered {
            e.conn.release(req.seq);
            if !e.dirty {
                e.dirty = true;
                self.dirty.push(req.endpoint.idx);
            }
        }
        r
    }

    /// Writes every dirty endpoint's batches (one WRITE_IMM each, one
    /// doorbell per endpoint). `poll` does this by itself when it finds
    /// nothing new.
    pub fn flush(&mut self) {
        let mut i = 0;
        while i < self.dirty.len() {
            let ep = self.dirty[i];
            let e = &mut self.eps[ep as usize];
            let done = flush_endpoint(e, ep, &self.cfg, self.signal_every);
            hand_back_if_failed(&mut self.failing, e, ep);
            if done {
                self.eps[ep as usize].dirty = false;
                self.dirty.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Probes the endpoints that neither sent nor received anything since
    /// the last check, once [`Config::keepalive`] has passed since it.
    /// Returns whether a probe was posted.
    fn keepalive(&mut self) -> bool {
        let Some(period) = self.cfg.keepalive else {
            return false;
        };
        let period = period.max(Duration::from_millis(1));
        let now = self.clock.now();
        match self.next_probe {
            Some(t) if now < t => return false,
            // The first look only starts the clock: a new endpoint gets a
            // whole period before its first probe.
            None => {
                self.next_probe = now.checked_add(period);
                return false;
            }
            _ => {}
        }
        self.next_probe = now.checked_add(period);
        let mut probed = false;
        for (i, e) in self.eps.iter_mut().enumerate() {
            if std::mem::take(&mut e.active) || e.failed.is_some() || !e.heard {
                continue;
            }
            probed |= probe(e, i as u32);
            hand_back_if_failed(&mut self.failing, e, i as u32);
        }
        probed
    }

    /// Progress: reads completions (responses go to `on_response` with
    /// their user data; requests queue for [`Context::recv`]; errors fail
    /// their endpoint, whose calls in flight come back with the error),
    /// reposts receives, answers dropped requests, and, when nothing new
    /// arrived, flushes dirty endpoints and expires timed-out calls (a
    /// poll that found completions does both too, every 4th and 64th
    /// time, so constant load does not hold batches or deadlines). On a
    /// manual software device that holds answers for its next step, dirty
    /// endpoints are flushed before that step, so their batches leave with
    /// the answers. Every 64th poll also looks at the keepalive clock
    /// ([`Config::keepalive`]). Returns the completions handled (a
    /// keepalive probe's included).
    pub fn poll(
        &mut self,
        mut on_response: impl FnMut(U, Result<&[u8], RpcError>),
    ) -> Result<usize, Error> {
        if self.step_device {
            // The device keeps the answers of its last step (ACKs) for this
            // one: batches queued since (replies, most often) go with them,
            // one record or `write`, instead of in a step of their own.
            if !self.dirty.is_empty() && self.dev.answers_held() {
                self.flush();
            }
            self.dev.progress()?;
        }
        if !self.dropped.borrow().is_empty() {
            self.answer_dropped();
        }
        let Context {
            cq,
            eps,
            routes,
            last_route,
            arrived,
            dirty,
            failing,
            flushed,
            ..
        } = self;
        let n = cq.poll(64, |c| {
            let Some(ep) = route(routes, last_route, c.qpn) else {
                return;
            };
            let e = &mut eps[ep as usize];
            match (c.kind, c.status()) {
                (Kind::RecvWriteImm, Ok(())) => {
                    e.active = true;
                    e.heard = true;
                    if e.failed.is_none() && !on_batch(e, ep, c.imm, arrived, &mut on_response) {
                        failing.push(ep);
                    }
                }
                (Kind::Send { .. }, Ok(())) => {}
                (_, Err(Syndrome::WrFlush)) => {
                    if e.failed.is_none() && !flushed.contains(&ep) {
                        flushed.push(ep);
                    }
                }
                (_, Err(syndrome)) => {
                    if e.fail(EndpointError::Completion {
                        endpoint: ep,
                        syndrome,
                    }) {
                        failing.push(ep);
                    }
                }
                (kind, Ok(())) => {
                    if e.fail(EndpointError::Protocol {
                        endpoint: ep,
                        error: Arc::new(crate::proto::ProtoError(format!(
                            "unexpected completion {kind:?}"
                        ))),
                    }) {
                        failing.push(ep);
                    }
                }
            }
            if e.failed.is_none() && e.conn.dirty() && !e.dirty {
                e.dirty = true;
                dirty.push(ep);
            }
        })?;
        if !self.flushed.is_empty() {
            // A flushed WQE only says that its QP is in ERROR: the cause is
            // an earlier failed completion (already recorded) or an
            // asynchronous event (a bad request this QP answered): read
            // those first, so the endpoint reports the cause.
            self.async_events();
            for ep in std::mem::take(&mut self.flushed) {
                if self.eps[ep as usize].fail(EndpointError::Completion {
                    endpoint: ep,
                    syndrome: Syndrome::WrFlush,
                }) {
                    self.failing.push(ep);
                }
            }
        }
        if self.srq.outstanding() * 2 < self.srq.depth() {
            while self.srq.outstanding() < self.srq.depth() {
                self.srq.post_recv(&[])?;
            }
        }
        if n == 0 {
            // Asynchronous events before this poll's flush and step: every
            // completion of the steps so far has been read (none was left),
            // and a failed WQE's completion says more than its QP's event.
            // On hardware asking costs a syscall (a `read` of the event
            // descriptor): once per ASYNC_EVERY idle polls. Events are rare
            // and a failed QP also shows in its next completion.
            self.idle_polls = self.idle_polls.wrapping_add(1);
            if self.idle_polls.is_multiple_of(ASYNC_EVERY) {
                self.async_events();
            }
            let flushing = !self.dirty.is_empty();
            self.flush();
            let probing = self.idle_polls.is_multiple_of(ASYNC_EVERY) && self.keepalive();
            if (flushing || probing) && self.step_device {
                // A manual device executes what was posted only when
                // stepped: step it now, so an idle loop's batches leave in
                // this poll, not the next one (the caller may yield its
                // core in between).
                self.dev.progress()?;
            }
            if self.cfg.call_timeout.is_some() {
                self.expire(&mut on_response);
            }
        } else {
            self.busy_polls = self.busy_polls.wrapping_add(1);
            if !self.dirty.is_empty() && self.busy_polls.is_multiple_of(FLUSH_EVERY) {
                self.flush();
            }
            if self.busy_polls.is_multiple_of(EXPIRE_EVERY) {
                if self.cfg.call_timeout.is_some() {
                    self.expire(&mut on_response);
                }
                self.keepalive();
            }
        }
        for ep in self.failing.drain(..) {
            let e = &mut self.eps[ep as usize];
            let err = e.failed.clone().expect("listed when it failed");
            for u in e.orphans.drain(..) {
                on_response(u, Err(RpcError::Endpoint(err.clone())));
            }
        }
        Ok(n)
    }

    /// Fails the endpoints whose QP the device reported an error on (a QP
    /// failed as the responder of a bad request learns it only this way).
    fn async_events(&mut self) {
        while let Ok(Some(event)) = self.dev.async_event() {
            let Some(qpn) = event.qpn() else { continue };
            let Some(ep) = route(&self.routes, &mut self.last_route, qpn) else {
                continue;
            };
            let fatal = matches!(
                event,
                mlx5::AsyncEvent::QpFatal { .. }
                    | mlx5::AsyncEvent::QpRequestError { .. }
                    | mlx5::AsyncEvent::QpAccessError { .. }
                    | mlx5::AsyncEvent::QpLastWqeReached { .. }
            );
            if fatal
                && self.eps[ep as usize].fail(EndpointError::Async {
                    endpoint: ep,
                    event,
                })
            {
                self.failing.push(ep);
            }
        }
    }

    /// Calls whose deadline passed come back with [`RpcError::Timeout`].
    fn expire(&mut self, on_response: &mut impl FnMut(U, Result<&[u8], RpcError>)) {
        let mut now = None;
        let clock = &mut self.clock;
        for e in &mut self.eps {
            // Answered calls first: the clock is read only for a front
            // call that still waits.
            e.prune_deadlines();
            while let Some(&(idx, _, deadline)) = e.deadlines.front() {
                let now = *now.get_or_insert_with(|| clock.now());
                if deadline > now {
                    break;
                }
                e.deadlines.pop_front();
                let slot = &mut e.slots[usize::from(idx)].state;
                if let Slot::Waiting(u) = std::mem::replace(slot, Slot::Abandoned) {
                    on_response(u, Err(RpcError::Timeout));
                }
                e.prune_deadlines();
            }
        }
    }

    /// Answers "dropped" for every request handle dropped unanswered.
    fn answer_dropped(&mut self) {
        let list = std::mem::take(&mut *self.dropped.borrow_mut());
        for (ep, id, seq) in list {
            let e = &mut self.eps[ep as usize];
            if e.failed.is_some() {
                continue;
            }
            let mut ring = e.send_ring();
            if e.conn.reply_dropped(&mut ring, id).is_err() {
                if e.fail(EndpointError::Protocol {
                    endpoint: ep,
                    error: Arc::new(crate::proto::ProtoError(
                        "no room for a reply the peer had to reserve".into(),
                    )),
                }) {
                    self.failing.push(ep);
                }
                continue;
            }
            e.conn.release(seq);
            if !e.dirty {
                e.dirty = true;
                self.dirty.push(ep);
            }
        }
    }
}

/// The endpoint a CQE's QPN belongs to.
#[inline]
fn route(routes: &[(u32, u32)], last: &mut usize, qpn: u32) -> Option<u32> {
    if let Some(&(q, ep)) = routes.get(*last)
        && q == qpn
    {
        return Some(ep);
    }
    let i = routes.binary_search_by_key(&qpn, |&(q, _)| q).ok()?;
    *last = i;
    Some(routes[i].1)
}

/// A batch of `imm` bytes arrived on endpoint `ep`. False when it broke
/// the protocol (the endpoint failed).
fn on_batch<U>(
    e: &mut EndpointState<U>,
    ep: u32,
    imm: u32,
    arrived: &mut VecDeque<Arrived>,
    on_response: &mut impl FnMut(U, Result<&[u8], RpcError>),
) -> bool {
    let ring = e.recv_ring();
    let parsed = match e.conn.on_batch(&ring, imm) {
        Ok(p) => p,
        Err(err) => {
            return !e.fail(EndpointError::Protocol {
                endpoint: ep,
                error: Arc::new(err),
            });
        }
    };
    // The messages as validated (the ring's bytes are not read again but
    // for a response's payload, which lies inside the batch).
    for i in 0..e.conn.messages().len() {
        let m = e.conn.messages()[i];
        if !m.response {
            arrived.push_back(Arrived {
                endpoint: ep,
                id: m.id,
                seq: parsed.seq,
                offset: m.offset,
                len: m.len,
            });
            continue;
        }
        let idx = (m.id & 0xffff) as usize;
        let slot = e
            .slots
            .get(idx)
            .filter(|s| u32::from(s.generation) == m.id >> 16 && !matches!(s.state, Slot::Free));
        let wrong = match slot {
            None => Some("which is not in flight"),
            // A peer that guessed the id of a call still queued here.
            Some(s) if s.ends > e.conn.sent() => Some("whose request has not been sent"),
            Some(_) => None,
        };
        if let Some(wrong) = wrong {
            return !e.fail(EndpointError::Protocol {
                endpoint: ep,
                error: Arc::new(crate::proto::ProtoError(format!(
                    "response to call {:#x}, {wrong}",
                    m.id
                ))),
            });
        }
        let slot = std::mem::replace(&mut e.slots[idx].state, Slot::Free);
        e.free.push(idx as u16);
        e.conn.call_done();
        e.prune_deadlines();
        if let Slot::Waiting(u) = slot {
            let data = ring.bytes(m.offset as usize, m.len as usize);
            on_response(
                u,
                if m.dropped {
                    Err(RpcError::Dropped)
                } else {
                    Ok(data)
                },
            );
        }
    }
    e.conn.advance();
    true
}

/// Flushes one endpoint; false when the send queue is full (try again
/// after the next completions).
fn flush_endpoint<U>(e: &mut EndpointState<U>, ep: u32, cfg: &Config, signal_every: u32) -> bool {
    if e.failed.is_some() {
        return true;
    }
    let Some(peer) = &e.peer else { return true };
    let (addr, rkey) = (peer.addr, peer.rkey);
    let mut ring = e.send_ring();
    let mut posted = false;
    let mut done = true;
    // The largest WQE this QP posts: ctrl + raddr + inline data.
    let need = (32 + 4 + cfg.inline_max).div_ceil(64);
    loop {
        if e.qp.sq_free() < need {
            done = false;
            break;
        }
        let Some(f) = e.conn.next_flush(&mut ring) else {
            break;
        };
        let remote = Remote {
            addr: addr + u64::from(f.offset),
            rkey,
        };
        e.unsignaled += 1;
        let signaled = e.unsignaled >= signal_every;
        let r = if f.len <= cfg.inline_max {
            let bytes = ring.bytes(f.offset as usize, f.len as usize);
            let w = WriteImm::inline(remote, bytes, f.len);
            if signaled {
                e.qp.post(&w.signaled())
            } else {
                e.qp.post(&w)
            }
        } else {
            let sge = [e.send.sge(f.offset as usize, f.len)];
            let w = WriteImm::new(remote, &sge, f.len);
            if signaled {
                e.qp.post(&w.signaled())
            } else {
                e.qp.post(&w)
            }
        };
        match r {
            Ok(_) => {
                e.conn.flushed(f);
                posted = true;
                if signaled {
                    e.unsignaled = 0;
                }
            }
            Err(mlx5::Error::SendQueueFull { .. }) => {
                e.unsignaled -= 1;
                done = false;
                break;
            }
            Err(err) => {
                e.unsignaled -= 1;
                if posted {
                    e.qp.ring_doorbell();
                }
                e.fail(EndpointError::Post {
                    endpoint: ep,
                    error: err.to_string().into(),
                });
                return true;
            }
        }
    }
    if posted {
        e.active = true;
        e.qp.ring_doorbell();
    }
    done
}

/// Lists endpoint `ep` for the poll to hand its calls back if a post just
/// failed it (its calls in flight are orphans now).
fn hand_back_if_failed<U>(failing: &mut Vec<u32>, e: &EndpointState<U>, ep: u32) {
    if e.failed.is_some() && !e.orphans.is_empty() && !failing.contains(&ep) {
        failing.push(ep);
    }
}

/// Posts a keepalive probe on a connected endpoint (see
/// [`Config::keepalive`]): a signaled zero-length RDMA WRITE to the start
/// of the peer's ring, which changes nothing there and completes only once
/// the peer's NIC acknowledged it. A full send queue has WQEs in flight
/// that probe the peer as well: nothing is posted then. Returns whether it
/// posted.
fn probe<U>(e: &mut EndpointState<U>, ep: u32) -> bool {
    let Some(peer) = &e.peer else { return false };
    let remote = Remote {
        addr: peer.addr,
        rkey: peer.rkey,
    };
    if e.qp.sq_free() == 0 {
        return false;
    }
    match e.qp.post(&Write::new(remote, &[]).signaled()) {
        Ok(_) => {
            e.unsignaled = 0;
            e.qp.ring_doorbell();
            true
        }
        Err(mlx5::Error::SendQueueFull { .. }) => false,
        Err(err) => {
            e.fail(EndpointError::Post {
                endpoint: ep,
                error: err.to_string().into(),
            });
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two contexts on manual software devices of this process, one
    /// endpoint each, connected.
    fn pair() -> (Context<u32>, Context<u32>, Endpoint, Endpoint) {
        let cfg = Config {
            call_timeout: Some(Duration::from_secs(10)),
            ..Config::default()
        };
        let (da, db) = (
            mlx5::Context::soft(Progress::Manual),
            mlx5::Context::soft(Progress::Manual),
        );
        let (mut a, mut b) = (
            Context::new(&da, cfg).unwrap(),
            Context::new(&db, cfg).unwrap(),
        );
        let (ea, eb) = (a.endpoint().unwrap(), b.endpoint().unwrap());
        let (ia, ib) = (a.local_info(ea).unwrap(), b.local_info(eb).unwrap());
        a.connect(ea, &ib).unwrap();
        b.connect(eb, &ia).unwrap();
        (a, b, ea, eb)
    }

    /// A keepalive period under a millisecond is taken as one: an idle
    /// endpoint whose peer was heard from is probed at most once a
    /// millisecond however fast it is polled (every 64th poll would
    /// probe otherwise, thousands in the time).
    #[test]
    fn a_keepalive_under_a_millisecond_probes_once_a_millisecond() {
        let (mut a, mut b, ea, _) = pair();
        a.cfg.keepalive = Some(Duration::from_micros(1));
        a.call(ea, b"ping", 1).unwrap();
        let mut answered = false;
        while !answered {
            a.poll(|_, r| answered = r.is_ok()).unwrap();
            b.poll(|_, _| {}).unwrap();
            while let Some(req) = b.recv() {
                b.reply(req, b"pong").unwrap();
            }
        }
        assert!(a.eps[ea.idx as usize].heard);
        let (mut probes, mut polls) = (0, 0u64);
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(100) {
            probes += a.poll(|_, _| {}).unwrap();
            b.poll(|_, _| {}).unwrap();
            polls += 1;
        }
        let elapsed_ms = start.elapsed().as_millis() as usize;
        assert_eq!(a.endpoint_error(ea), None);
        assert!(
            probes >= 1 && probes <= elapsed_ms + 2,
            "{probes} probes in {elapsed_ms} ms ({polls} polls)"
        );
    }

    /// A keepalive probe goes only to a peer this side has heard from: the
    /// peer's QP may not be connected yet, and a probe it refuses fails
    /// the endpoint (as the second half shows, hearing forced).
    #[test]
    fn keepalive_probes_only_a_peer_it_has_heard_from() {
        let cfg = Config {
            keepalive: Some(Duration::from_millis(5)),
            ..Config::default()
        };
        let half_connected = |forced: bool, wait: Duration| {
            let (da, db) = (
                mlx5::Context::soft(Progress::Manual),
                mlx5::Context::soft(Progress::Manual),
            );
            let mut a: Context<u32> = Context::new(&da, cfg).unwrap();
            let mut b: Context<u32> = Context::new(&db, cfg).unwrap();
            let (ea, eb) = (a.endpoint().unwrap(), b.endpoint().unwrap());
            let (ia, ib) = (a.local_info(ea).unwrap(), b.local_info(eb).unwrap());
            a.connect(ea, &ib).unwrap();
            a.eps[ea.idx as usize].heard = forced;
            let start = Instant::now();
            while start.elapsed() < wait && a.endpoint_error(ea).is_none() {
                a.poll(|_, _| {}).unwrap();
                b.poll(|_, _| {}).unwrap();
            }
            (a, b, ea, eb, ia)
        };
        let (mut a, mut b, ea, eb, ia) = half_connected(false, Duration::from_millis(700));
        assert_eq!(a.endpoint_error(ea), None);
        // Connected at last: calls work, and the answer makes the peer heard.
        b.connect(eb, &ia).unwrap();
        a.call(ea, b"ping", 7).unwrap();
        let mut got = None;
        let start = Instant::now();
        while got.is_none() {
            a.poll(|u, r| got = Some((u, r.map(<[u8]>::to_vec))))
                .unwrap();
            b.poll(|_, _| {}).unwrap();
            while let Some(req) = b.recv() {
                b.reply(req, b"pong").unwrap();
            }
            assert!(start.elapsed() < Duration::from_secs(10));
        }
        assert_eq!(got, Some((7, Ok(b"pong".to_vec()))));
        assert!(a.eps[ea.idx as usize].heard);
        // A peer QP not yet ready answers no request: the probe fails the
        // endpoint, as it would a call.
        let (a, _, ea, ..) = half_connected(true, Duration::from_secs(5));
        assert_eq!(
            a.endpoint_error(ea),
            Some(&EndpointError::Completion {
                endpoint: 0,
                syndrome: Syndrome::TransportRetryExceeded
            })
        );
    }

    /// Answered calls leave the deadline queue as their answers come, not
    /// `call_timeout` later: a busy endpoint's queue holds about its calls
    /// in flight (it held every call of the last 10 s before).
    #[test]
    fn answered_calls_leave_the_deadline_queue() {
        let (mut a, mut b, ea, _) = pair();
        let mut answered = 0;
        let start = Instant::now();
        for i in 0..2000u32 {
            a.call(ea, &i.to_le_bytes(), i).unwrap();
            if i % 4 != 3 {
                continue;
            }
            while answered <= i {
                a.poll(|_, r| {
                    r.unwrap();
                    answered += 1;
                })
                .unwrap();
                b.poll(|_, _| {}).unwrap();
                while let Some(req) = b.recv() {
                    let d = req.data().to_vec();
                    b.reply(req, &d).unwrap();
                }
                assert!(start.elapsed() < Duration::from_secs(20), "no progress");
            }
            let queued = a.eps[ea.idx as usize].deadlines.len();
            assert!(queued <= 4, "{queued} deadlines queued after call {i}");
        }
        assert_eq!(answered, 2000);
    }

    /// `a` calls `held` (user data `u32::MAX`) and `b` keeps the request
    /// unanswered; returns the handle (dropping it would answer it).
    fn hold_a_call(a: &mut Context<u32>, b: &mut Context<u32>, ea: Endpoint) -> Request {
        a.call(ea, b"held", u32::MAX).unwrap();
        let start = Instant::now();
        loop {
            a.poll(|_, _| panic!("no answer expected")).unwrap();
            b.poll(|_, _| {}).unwrap();
            if let Some(r) = b.recv() {
                return r;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "no progress");
        }
    }

    /// One call and its answer (the echo of `i`), `b` answering whatever
    /// else arrived too; the outcomes `a` saw, by user data.
    fn one_call(
        a: &mut Context<u32>,
        b: &mut Context<u32>,
        ea: Endpoint,
        i: u32,
        seen: &mut Vec<(u32, Result<(), RpcError>)>,
    ) {
        a.call(ea, &i.to_le_bytes(), i).unwrap();
        let start = Instant::now();
        while !seen.iter().any(|&(u, _)| u == i) {
            a.poll(|u, r| seen.push((u, r.map(|_| ())))).unwrap();
            b.poll(|_, _| {}).unwrap();
            while let Some(req) = b.recv() {
                let d = req.data().to_vec();
                b.reply(req, &d).unwrap();
            }
            assert!(start.elapsed() < Duration::from_secs(20), "no progress");
        }
    }

    /// A call timeout past what the clock holds never expires (before,
    /// every call panicked adding it to the clock).
    #[test]
    fn a_call_timeout_past_the_clock_never_expires() {
        let (mut a, mut b, ea, _) = pair();
        a.cfg.call_timeout = Some(Duration::MAX);
        let mut seen = Vec::new();
        one_call(&mut a, &mut b, ea, 1, &mut seen);
        assert!(matches!(seen[..], [(1, Ok(()))]), "{seen:?}");
        assert!(a.eps[ea.idx as usize].deadlines.is_empty());
    }

    /// A call held unanswered at the front of the deadline queue keeps the
    /// answered calls behind it there; the queue is compacted, so it stays
    /// bounded (it grew by one entry per call before: 10 s of calls).
    #[test]
    fn a_held_call_does_not_grow_the_deadline_queue() {
        let (mut a, mut b, ea, _) = pair();
        let _held = hold_a_call(&mut a, &mut b, ea);
        let bound = 2 * a.eps[ea.idx as usize].slots.len() + 17;
        let mut seen = Vec::new();
        for i in 0..(2 * bound as u32 + 100) {
            one_call(&mut a, &mut b, ea, i, &mut seen);
            let queued = a.eps[ea.idx as usize].deadlines.len();
            assert!(queued <= bound, "{queued} deadlines queued after call {i}");
            seen.clear();
        }
    }

    /// A deadline left in the queue by an answered call whose slot now
    /// serves a call with the same wire id (its 16-bit generation wrapped,
    /// simulated here by winding it back) must not time that call out: a
    /// held call at the front kept the stale entry, and the new call was
    /// issued long after it. Before, the entry was matched by wire id.
    #[test]
    fn a_stale_deadline_does_not_time_out_a_call_with_the_same_id() {
        let (mut a, mut b, ea, _) = pair();
        a.cfg.call_timeout = Some(Duration::from_millis(100));
        let held = hold_a_call(&mut a, &mut b, ea);
        let mut seen = Vec::new();
        one_call(&mut a, &mut b, ea, 1, &mut seen);
        assert!(matches!(seen[..], [(1, Ok(()))]), "{seen:?}");
        seen.clear();
        // The held call's deadline and call 1's pass.
        std::thread::sleep(Duration::from_millis(150));
        let e = &mut a.eps[ea.idx as usize];
        let idx = *e.free.last().expect("a free slot");
        let slot = &mut e.slots[idx as usize];
        assert_eq!(slot.generation, 1, "call 1's slot is next");
        slot.generation = 0;
        // Call 2: the same slot and wire id as call 1; the held call times
        // out, call 2 is answered.
        one_call(&mut a, &mut b, ea, 2, &mut seen);
        seen.sort_by_key(|&(u, _)| u);
        assert!(
            matches!(seen[..], [(2, Ok(())), (u32::MAX, Err(RpcError::Timeout))]),
            "{seen:?}"
        );
        drop(held);
    }
}
