//! Links: the stream sockets between this process's software devices and
//! those of other processes or hosts, their buffers and limits, the
//! handshake, and the one acceptor thread of the process. What goes on the
//! wire is [`super::wire`]'s.
//!
//! # What a frame may carry
//!
//! A frame's length is checked as soon as its header is in, before any of
//! its body is waited for, against what the QPs on that link can
//! legitimately send:
//!
//! * a `REQ` carries at most 56 bytes and what a QP of this device
//!   connected to the sender's address could accept: a WRITE lands inside
//!   one remotely writable region of the QP's PD, a SEND is scattered over
//!   at most 32 receive entries, each inside one locally writable region;
//!   never more than the RC message limit, 2 GiB. A sender no QP is
//!   connected to (a *stranger*) may send nothing beyond the fixed part;
//! * a `RESP` carries at most 32 bytes and the longest READ this side has
//!   in flight on that link (nothing in flight: 32 bytes).
//!
//! So a WRITE or SEND larger than anything its target could ever accept,
//! which hardware would NAK (`RemoteAccess`, `RemoteInvalRequest`), closes
//! the link instead: the requester sees `TransportRetryExceeded`, and so
//! do the other QPs with requests in flight on that link.
//!
//! The receive buffer grows only with bytes that arrived (by at most what
//! it holds), never ahead of a body on the word of a header; one pass reads
//! at most 4 MiB from a link. A stranger's link holds at most 64 KiB of
//! unsent answers: one that does not read them is cut off.
//!
//! A malformed frame, or one longer than its link allows, kills that link
//! at once: its QPs complete with `TransportRetryExceeded`, as when the
//! peer goes away. A dead link is removed from its device once its QPs
//! were failed; link ids are never reused, so a QP that named it finds no
//! link (never another one) and keeps failing the same way.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::bell::{self, EventFd};
use super::cred;
use super::requester::MAX_PARTS;
use super::shm::{self, Corrupt, Offer, Pipe};
use super::wire::{
    self, Addr, Data, HDR, HELLO_LEN, K_ACKREQ, K_HELLO, K_REQ, K_RESP, K_WELCOME, REQ_LEN,
    RESP_LEN, Request, Resp, Response, WELCOME_LEN, WIRE_MAGIC, WIRE_VERSION, header, le32,
};
use crate::error::Error;
use crate::prm::opcode;

/// Where a device listens.
pub(crate) enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    pub(crate) fn bind_unix(pid: u32, id: u32) -> io::Result<Listener> {
        let a = UnixAddr::from_abstract_name(Addr::unix_name(pid, id).as_bytes())?;
        let l = UnixListener::bind_addr(&a)?;
        l.set_nonblocking(true)?;
        Ok(Listener::Unix(l))
    }

    /// Binds `at` (port 0: any) and returns the port bound.
    pub(crate) fn bind_tcp(at: SocketAddrV4) -> io::Result<(Listener, u16)> {
        let l = TcpListener::bind(at)?;
        l.set_nonblocking(true)?;
        let port = l.local_addr()?.port();
        Ok((Listener::Tcp(l), port))
    }

    fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
        }
    }

    fn fd(&self) -> RawFd {
        match self {
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }
}

/// A connected stream socket.
pub(crate) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    pub(crate) fn fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }

    fn set_blocking_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => {
                s.set_nonblocking(t.is_none())?;
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Stream::Tcp(s) => {
                s.set_nonblocking(t.is_none())?;
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(b),
            Stream::Tcp(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(b),
            Stream::Tcp(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A link's first receive buffer.
const RX_FIRST: usize = 4 << 10;
/// While reads fill it, the receive buffer doubles up to this (a batch of
/// small frames per `read`); beyond, it grows only for a frame whose header
/// is in and within the link's limits, and never by more than it holds.
const RX_BATCH: usize = 64 << 10;
/// The most one pass reads from one link (the other links get their turn).
pub(crate) const RX_PASS: usize = 4 << 20;
/// The unsent bytes (answers) a stranger's link may hold.
pub(crate) const STRANGER_TX: usize = 64 << 10;
/// How long connecting and the handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(5);

/// Counters of a device's wire traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WireStats {
    /// Links (to devices in other processes or hosts) the device holds:
    /// those up (one that dies is removed in the pass that notices, or at
    /// once by `drop_peer`).
    pub links: usize,
    /// Of those, the links over shared memory (the rest are sockets): see
    /// [`LinkKind`].
    pub shm_links: usize,
    /// REQ and RESP frames sent (plain ACKs queued together travel as one
    /// frame).
    pub frames_sent: u64,
    /// REQ and RESP frames received.
    pub frames_received: u64,
    /// `write` calls that sent bytes (on a shared-memory link: copies
    /// into its ring, each published by one store).
    pub writes: u64,
    /// `read` calls that returned bytes (shared memory: copies out of the
    /// ring).
    pub reads: u64,
    /// Wake-up bytes sent to a sleeping same-host peer (shared-memory
    /// links only: a busy link sends none).
    pub wakeups: u64,
    /// Bytes sent and received (frames included).
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Of the frames received, those handled where they lay in a
    /// shared-memory ring (large ones, whole and not wrapping its end),
    /// without a copy into the receive buffer.
    pub frames_in_place: u64,
}

/// How a link carries its frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// A unix stream socket (another process of this host, shared memory
    /// refused or turned off with `MLX5_SOFT_LINK=socket`).
    Unix,
    /// A TCP socket (another host, or a device listening on TCP).
    Tcp,
    /// Shared-memory rings, the unix socket kept for the handshake and
    /// liveness (another process of this host; the default there).
    Shm,
}

impl std::fmt::Display for LinkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LinkKind::Unix => "unix socket",
            LinkKind::Tcp => "tcp socket",
            LinkKind::Shm => "shared memory",
        })
    }
}

/// One link of a software device, as `Context::soft_links` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// The peer device's address (`unix:@…` or `tcp:IP:PORT`).
    pub peer: String,
    /// How the link carries frames.
    pub kind: LinkKind,
    /// Requests sent on it and not yet answered.
    pub outstanding: usize,
}

/// A connection to another device, handshake done: the socket, and the
/// shared-memory rings when both sides chose them.
pub(crate) struct Conn {
    pub(crate) stream: Stream,
    pub(crate) shm: Option<Pipe>,
}

/// A frame body this long or longer, whole and contiguous in a
/// shared-memory ring, is handled where it lies (see
/// [`Link::direct_frame`]): copying it into the receive buffer first would
/// cost as much as handling it.
pub(crate) const DIRECT_MIN: usize = 16 << 10;

/// Staged bytes from which a frame is published at once rather than at the
/// pass's flush.
const EAGER: usize = 64 << 10;
/// The most answer bytes a manual device's pass defers (ACKs and short READ
/// data; more goes at once), and the most plain ACKs a link holds.
const DEFER_MAX: usize = 4 << 10;

/// The longest a link holds plain ACKs of requests that did not ask for
/// them at once, waiting for a frame of its own to send them with (see
/// [`Link::hold_answers`]). Far below any ACK timeout a link holds them
/// under (see [`ACK_AT_ONCE_BELOW`]).
pub(crate) const ACK_HOLD: Duration = Duration::from_micros(20);

/// A link whose ACK timeout is shorter asks for every answer at once
/// (its requests' `ack_now`): an answer held back must never be what
/// times a link out.
pub(crate) const ACK_AT_ONCE_BELOW: Duration = Duration::from_millis(1);

/// How often a busy shared-memory link looks at its control socket for
/// the peer's death (a sleeping one is woken by it at once).
const CONTROL_CHECK: Duration = Duration::from_millis(1);

/// A link to another device and its buffers.
pub(crate) struct Link {
    pub(crate) id: u64,
    /// The peer device's address.
    pub(crate) peer: [u8; 16],
    /// This device connected (sent `HELLO`); false for a link it accepted.
    pub(crate) outgoing: bool,
    /// The socket: it carries the frames, or, under shared memory, only
    /// the handshake and the peer's death (EOF).
    stream: Option<Stream>,
    /// The shared-memory rings that carry the frames instead.
    shm: Option<Pipe>,
    kind: LinkKind,
    /// When to look at a shared-memory link's control socket next.
    next_check: Instant,
    /// Look at it in the next pass (the device thread woke up).
    check_now: bool,
    /// The control socket said the peer is gone: what it published in the
    /// ring before is read, then the link dies.
    peer_closed: bool,
    /// Bytes of frames staged in the ring, not yet published (by the
    /// pass's flush).
    staged: usize,
    /// Published before the pass's flush (large frames go at once), not
    /// yet in the counters: (stores, bytes, wake-ups).
    early: (u64, u64, u64),
    /// Received bytes; a progress pass borrows it while it handles frames.
    pub(crate) rx: Vec<u8>,
    /// Parsed up to / filled up to.
    pub(crate) rx_head: usize,
    rx_tail: usize,
    pub(crate) tx: Vec<u8>,
    tx_head: usize,
    /// Bytes of `tx` that may be written (the rest waits out a delay).
    tx_ready: usize,
    /// Delayed bytes: (end offset in `tx`, when they may go).
    held: VecDeque<(usize, Instant)>,
    /// Why the link is down (it is never reused once down).
    pub(crate) dead: Option<String>,
    /// Requests sent and not yet answered, oldest first: the peer answers
    /// every REQ, in order (one RESP each, or plain ACKs folded into one
    /// RESP that counts them), so the next answer starts at the front.
    sent: VecDeque<Sent>,
    /// Where in `tx` the last frame queued starts, if it is a plain ACK a
    /// next one may be folded into (see [`wire::fold_ack`]); any other
    /// frame queued, and any move of `tx`'s bytes, clears it.
    last_ack: Option<usize>,
    /// The requests the last RESP [`Link::answers`] accepted answered
    /// before the one it names.
    implied: Vec<Sent>,
    /// The longest READ among `sent` since it was last empty: what a RESP
    /// may carry.
    read_max: u32,
    /// The longest payload a REQ on this link may carry: what a QP of this
    /// device connected to the peer could accept (a progress pass raises it
    /// when a longer REQ arrives and the device's QPs and regions allow).
    pub(crate) req_limit: u32,
    /// A QP of this device is connected to the peer's address (else the
    /// peer is a stranger: nothing it sends can be accepted).
    pub(crate) vouched: bool,
    /// The last answer, or when `sent` stopped being empty.
    pub(crate) last_progress: Instant,
    /// No answer for this long with requests outstanding: the peer is gone.
    /// The smallest ACK budget of the QPs that send on the link (each
    /// lowers it as it connects or moves here; see [`Link::lower_timeout`]);
    /// [`FOREVER`] until one does, so a link the peer opened holds no
    /// default a QP with `timeout` 0 would inherit.
    pub(crate) timeout: Duration,
    /// Fault: discard everything sent and received.
    pub(crate) blackhole: bool,
    /// Fault: hold what is sent for this long.
    pub(crate) delay: Duration,
    /// How long plain ACKs nobody waits for may be held ([`ACK_HOLD`]
    /// unless a fault says otherwise).
    pub(crate) ack_hold: Duration,
    /// A REQ was queued since the last flush.
    req_queued: bool,
    /// An answer was queued since the last flush.
    answered: bool,
    /// The answers in `tx` were kept back by the last pass (see
    /// [`Link::defer_answers`]): the next flush sends them.
    answers_deferred: bool,
    /// An answer queued since the last flush must leave at this pass's end
    /// (or, on a manual device, the next pass's): not a plain ACK, or one
    /// its request asked for at once.
    urgent: bool,
    /// When the pass that first held the answers in `tx` back ran (see
    /// [`Link::hold_answers`]); `None` while none are held.
    hold_from: Option<Instant>,
    /// The last pass held this link's answers back: the link is quiet
    /// nonetheless (the pass's timer ends the hold).
    holding: bool,
}

/// Why the next frame cannot be taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bad {
    /// Kills the link.
    Frame(&'static str),
    /// A REQ longer than the link's `req_limit`: the limit may be stale.
    ReqOverLimit,
}

/// A request sent on a link, as its answer names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sent {
    pub(crate) qpn: u32,
    pub(crate) epoch: u32,
    pub(crate) psn: u32,
}

/// The ACK timeout of a QP whose `timeout` attribute is 0: IBA's
/// "infinite", wait for the answer as long as it takes (about 136 years, a
/// deadline that `Instant` arithmetic still holds and no run reaches). A
/// peer that dies still fails the QP: its link closes.
pub(crate) const FOREVER: Duration = Duration::from_secs(1 << 32);

/// The time without an answer before a link is declared dead (and a lost
/// request is resent): `4.096 µs × 2^timeout × (retry_cnt + 1)`, the
/// default QP attributes' when a link is made; [`FOREVER`] for
/// `timeout` 0, as on hardware.
pub(crate) fn ack_budget(timeout: u8, retry_cnt: u8) -> Duration {
    if timeout == 0 {
        return FOREVER;
    }
    let one = Duration::from_nanos(4096u64 << u32::from(timeout.min(31)));
    one * (u32::from(retry_cnt.min(7)) + 1)
}

impl Link {
    pub(crate) fn new(id: u64, peer: [u8; 16], c: Conn) -> Link {
        let kind = match (&c.shm, &c.stream) {
            (Some(_), _) => LinkKind::Shm,
            (None, Stream::Unix(_)) => LinkKind::Unix,
            (None, Stream::Tcp(_)) => LinkKind::Tcp,
        };
        Link {
            id,
            peer,
            outgoing: false,
            stream: Some(c.stream),
            shm: c.shm,
            kind,
            next_check: Instant::now(),
            check_now: false,
            staged: 0,
            early: (0, 0, 0),
            rx: Vec::new(),
            rx_head: 0,
            rx_tail: 0,
            tx: Vec::new(),
            tx_head: 0,
            tx_ready: 0,
            held: VecDeque::new(),
            dead: None,
            sent: VecDeque::new(),
            last_ack: None,
            implied: Vec::new(),
            read_max: 0,
            req_limit: 0,
            vouched: false,
            last_progress: Instant::now(),
            timeout: FOREVER,
            blackhole: false,
            delay: Duration::ZERO,
            peer_closed: false,
            req_queued: false,
            answered: false,
            answers_deferred: false,
            urgent: false,
            hold_from: None,
            holding: false,
            ack_hold: ACK_HOLD,
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        self.dead.is_none()
    }

    /// Marks the link down and closes the socket.
    pub(crate) fn kill(&mut self, reason: String) {
        if self.dead.is_none() {
            self.dead = Some(reason);
        }
        self.stream = None;
        self.shm = None;
        self.staged = 0;
        self.tx = Vec::new();
        self.rx = Vec::new();
        self.rx_head = 0;
        self.rx_tail = 0;
        self.tx_head = 0;
        self.tx_ready = 0;
        self.last_ack = None;
        self.held.clear();
        self.sent = VecDeque::new();
        self.read_max = 0;
    }

    /// Appends a REQ frame for `req`, its payload the concatenation of
    /// `payload` (at most [`MAX_PARTS`] parts, each copied once), and
    /// remembers it until answered.
    pub(crate) fn put_req(&mut self, req: &Request, epoch: u32, payload: &[Data<'_>]) {
        self.req_queued = true;
        if self.sent.is_empty() {
            self.last_progress = Instant::now();
        }
        self.sent.push_back(Sent {
            qpn: req.src_qpn,
            epoch,
            psn: req.psn,
        });
        if req.opcode == opcode::RDMA_READ {
            self.read_max = self.read_max.max(req.len);
        }
        // Over shared memory with nothing queued ahead, the frame goes
        // straight into the ring, else into `tx`: either way the payload
        // is copied once, from where it lies.
        let len: usize = payload.iter().map(Data::len).sum();
        let h = wire::header(K_REQ, REQ_LEN + len);
        let fixed = wire::req_fixed(req, epoch);
        if self.can_stage() {
            let mut parts = [Data::slice(&[]); 2 + MAX_PARTS];
            parts[0] = Data::slice(&h);
            parts[1] = Data::slice(&fixed);
            parts[2..2 + payload.len()].copy_from_slice(payload);
            if self.stage(&parts[..2 + payload.len()]) {
                return;
            }
        }
        self.last_ack = None;
        self.tx.reserve(HDR + REQ_LEN + len);
        self.tx.extend_from_slice(&h);
        self.tx.extend_from_slice(&fixed);
        for d in payload {
            d.append_to(&mut self.tx);
        }
    }

    /// A QP with ACK timeout `budget` sends on this link: the link's
    /// timeout becomes at most that. Requests already in flight were sent
    /// under the old one; when the new one wants every answer at once
    /// ([`ACK_AT_ONCE_BELOW`]) and the old did not, the peer may hold
    /// theirs back for up to its ACK hold, so it is asked for them now
    /// (an ACKREQ) and the new timeout counts from now. True if the
    /// ACKREQ was queued (a frame to count).
    pub(crate) fn lower_timeout(&mut self, budget: Duration) -> bool {
        let was = self.timeout;
        self.timeout = was.min(budget);
        if was >= ACK_AT_ONCE_BELOW
            && self.timeout < ACK_AT_ONCE_BELOW
            && self.outstanding() > 0
            && self.is_up()
        {
            self.last_progress = Instant::now();
            self.put_ack_request();
            return true;
        }
        false
    }

    /// Appends an ACKREQ frame (see `wire::K_ACKREQ`): it leaves with this
    /// pass's flush, as a request does.
    pub(crate) fn put_ack_request(&mut self) {
        self.req_queued = true;
        let h = wire::header(K_ACKREQ, 0);
        if self.can_stage() && self.stage(&[Data::slice(&h)]) {
            return;
        }
        self.last_ack = None;
        self.tx.extend_from_slice(&h);
    }

    /// The peer asked for the answers held back here (an ACKREQ arrived):
    /// they leave at the end of this pass, as answers wanted at once do.
    pub(crate) fn answers_wanted(&mut self) {
        self.urgent = true;
    }

    /// Appends the RESP answering `req` (with `data`, a READ's, copied
    /// once): over shared memory with nothing queued ahead, READ data of
    /// [`DIRECT_MIN`] bytes or more goes straight into the ring, not
    /// through `tx` (one copy of it fewer; published by the pass's flush,
    /// or at once when large, as [`Link::put_req`] does). Then
    /// [`Link::on_answer`].
    pub(crate) fn put_resp(
        &mut self,
        req: &Request,
        epoch: u32,
        r: Response,
        data: Data<'_>,
        st: &mut WireStats,
    ) {
        if data.len() >= DIRECT_MIN && self.can_stage() {
            let h = wire::header(K_RESP, RESP_LEN + data.len());
            let fixed = wire::resp_fixed(req, epoch, r, data.len());
            if self.stage(&[Data::slice(&h), Data::slice(&fixed), data]) {
                st.frames_sent += 1;
                self.answered = true;
                self.urgent = true;
                return;
            }
        }
        let plain = r == (Response::Ack { orig: 0 }) && data.is_empty();
        self.urgent |= !plain || req.ack_now;
        // A plain ACK after a plain ACK still queued (not yet written, not
        // held back by a delay) rides in it.
        if plain
            && let Some(at) = self.last_ack
            && at >= self.tx_head
            && self.held.is_empty()
            && self.delay.is_zero()
            && wire::fold_ack(&mut self.tx[at..], req, epoch)
        {
            self.on_answer(st);
            return;
        }
        let at = wire::start_resp(&mut self.tx);
        data.append_to(&mut self.tx);
        wire::finish_resp(&mut self.tx, at, req, epoch, r);
        self.last_ack = plain.then_some(at);
        st.frames_sent += 1;
        self.on_answer(st);
    }

    /// Whether a frame may go straight into the outgoing ring: a
    /// shared-memory link with nothing queued ahead in `tx` (so order is
    /// kept), no delay and no blackhole.
    fn can_stage(&self) -> bool {
        self.shm.is_some()
            && self.tx_head == self.tx.len()
            && self.delay.is_zero()
            && !self.blackhole
    }

    /// Stages one frame, the concatenation of `parts`, into the outgoing
    /// ring ([`Link::can_stage`] said it may); it is published by the
    /// pass's flush, or at once once [`EAGER`] bytes are staged (the peer
    /// copies a large frame out while this side makes the next). True if
    /// the frame is taken care of: staged, or the link killed because the
    /// peer broke the ring; false if it must go through `tx` (no room).
    fn stage(&mut self, parts: &[Data<'_>]) -> bool {
        let Some(p) = self.shm.as_mut() else {
            return false;
        };
        match p.stage(parts) {
            Ok(true) => {
                self.staged += parts.iter().map(Data::len).sum::<usize>();
                if self.staged >= EAGER && p.publish() {
                    self.early.0 += 1;
                    self.early.1 += std::mem::take(&mut self.staged) as u64;
                    self.early.2 += u64::from(self.wake_peer());
                }
                true
            }
            Ok(false) => false,
            Err(Corrupt(e)) => {
                self.kill(format!("the peer broke the shared-memory ring: {e}"));
                true
            }
        }
    }

    /// Whether `r` answers the oldest request unanswered on this link; if
    /// so it is progress (the ACK clock restarts). Any other RESP is stale
    /// or forged: it answers nothing and must be ignored.
    /// A `RESP` carrying `more` plain ACKs answers that many requests
    /// before the one it names: [`Link::implied`] lists them, oldest first.
    pub(crate) fn answers(&mut self, r: &Resp<'_>, now: Instant) -> bool {
        let it = Sent {
            qpn: r.qpn,
            epoch: r.epoch,
            psn: r.psn,
        };
        let n = usize::from(r.more);
        if self.sent.get(n) != Some(&it) {
            return false;
        }
        self.implied.clear();
        self.implied.extend(self.sent.drain(..n));
        self.sent.pop_front();
        if self.sent.is_empty() {
            self.read_max = 0;
        }
        self.last_progress = now;
        true
    }

    /// See [`Link::answers`].
    pub(crate) fn implied(&self) -> &[Sent] {
        &self.implied
    }

    /// Requests sent and not yet answered.
    pub(crate) fn outstanding(&self) -> usize {
        self.sent.len()
    }

    /// Whether a request of QP `qpn` is still unanswered on this link
    /// (after an RNR NAK the QP's own list is empty while the requests it
    /// sent behind the NAKed one still wait here for their answers).
    pub(crate) fn awaits(&self, qpn: u32) -> bool {
        self.sent.iter().any(|s| s.qpn == qpn)
    }

    /// Whether part of a frame is buffered: one is arriving (the bytes
    /// after the last whole frame a pass handled).
    pub(crate) fn mid_frame(&self) -> bool {
        self.rx_head < self.rx_tail
    }

    pub(crate) fn fd(&self) -> Option<RawFd> {
        self.stream.as_ref().map(Stream::fd)
    }

    pub(crate) fn kind(&self) -> LinkKind {
        self.kind
    }

    /// Whether a pass would find nothing to do on this link now, judged
    /// without a system call: a shared-memory link that is up, has no
    /// frame arriving, nothing to send (but answers the last pass held
    /// back, whose end is the pass's timer), no control-socket look asked
    /// for, and no sealed record waiting in its ring. A socket link is never
    /// quiet (only a `recv` can tell).
    pub(crate) fn quiet(&self) -> bool {
        self.dead.is_none()
            && !self.check_now
            && !self.peer_closed
            && self.rx_head == self.rx_tail
            && (self.tx.len() == self.tx_head || self.holding)
            && self.staged == 0
            && self.early == (0, 0, 0)
            && self.held.is_empty()
            && self.shm.as_ref().is_some_and(|p| !p.may_have_bytes())
    }

    /// When a pass looks at a shared-memory link's control socket next.
    pub(crate) fn next_check(&self) -> Instant {
        self.next_check
    }

    /// Whether the socket has bytes to take (a shared-memory link never
    /// waits for its socket to take bytes: its peer's wake-up does that).
    pub(crate) fn wants_write(&self) -> bool {
        self.shm.is_none() && self.tx_head < self.tx_ready
    }

    /// The device thread is about to sleep: a same-host peer that sends
    /// or frees ring space from now on wakes it.
    pub(crate) fn announce_sleep(&mut self) {
        if let Some(p) = self.shm.as_mut() {
            p.announce_sleep();
        }
    }

    /// Fault injection: seals an impossible record in this side's outgoing
    /// ring. False if the link has no rings.
    pub(crate) fn corrupt_ring(&mut self) -> bool {
        self.shm.as_mut().is_some_and(|p| {
            p.corrupt();
            true
        })
    }

    /// Fault injection: publishes a REQ frame of [`DIRECT_MIN`] payload
    /// bytes whose fixed part says 100 (a frame the peer handles where it
    /// lies in the ring, and must refuse). False if the link has no rings
    /// or no room.
    pub(crate) fn send_malformed_large(&mut self) -> bool {
        let Some(p) = self.shm.as_mut() else {
            return false;
        };
        let h = header(K_REQ, REQ_LEN + DIRECT_MIN);
        let mut fixed = [0u8; REQ_LEN];
        fixed[16] = opcode::RDMA_WRITE;
        fixed[32..36].copy_from_slice(&100u32.to_le_bytes());
        let zeros = vec![0u8; DIRECT_MIN];
        let parts = [Data::slice(&h), Data::slice(&fixed), Data::slice(&zeros)];
        if !matches!(p.stage(&parts), Ok(true)) || !p.publish() {
            return false;
        }
        self.wake_peer();
        true
    }

    /// Fault injection: publishes impossible heads on the ring this side
    /// reads from now on. False if the link has no rings.
    pub(crate) fn corrupt_head(&mut self) -> bool {
        self.shm.as_mut().is_some_and(|p| {
            p.corrupt_head();
            true
        })
    }

    /// The device thread is awake again.
    pub(crate) fn awake(&mut self) {
        if let Some(p) = self.shm.as_mut() {
            p.awake();
            // Drain the wake-up bytes (or notice EOF) in the next pass, not
            // a millisecond later: a readable socket would end every sleep
            // at once until then.
            self.check_now = true;
        }
    }

    /// After publishing bytes or freeing ring space: sends the peer a
    /// wake-up byte on the control socket if it sleeps (once per sleep;
    /// never blocking). True if the peer was woken: the byte went, or the
    /// socket was full (the peer has bytes to read, so it wakes anyway);
    /// not when the socket failed (the peer is gone).
    fn wake_peer(&mut self) -> bool {
        let Some(p) = self.shm.as_mut() else {
            return false;
        };
        if !p.peer_asleep() {
            return false;
        }
        let Some(s) = &self.stream else {
            return false;
        };
        // SAFETY: sends one byte from a live buffer on our own socket;
        // MSG_DONTWAIT: a full buffer is EAGAIN, never a wait.
        let sent = unsafe {
            libc::send(
                s.fd(),
                b"W".as_ptr().cast(),
                1,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        sent == 1 || io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }

    /// Bytes queued and not yet written.
    pub(crate) fn backlog(&self) -> usize {
        self.tx.len() - self.tx_head
    }

    /// Reads what the socket (or the shared-memory ring) has, without
    /// blocking, at most [`RX_PASS`] bytes. Returns bytes read; the link is
    /// killed on an error or ring memory the peer cannot have written, and
    /// once the peer is gone (EOF on the socket, or on a shared-memory
    /// link's control socket) at the first fill that reads nothing more.
    /// A shared-memory link also looks at its socket for the peer's death
    /// every [`CONTROL_CHECK`], and wakes a peer asleep with bytes to send
    /// once it took some (space came back).
    pub(crate) fn fill(&mut self, st: &mut WireStats, now: Instant) -> usize {
        if self.shm.is_some() && (self.check_now || now >= self.next_check) {
            self.check_now = false;
            self.next_check = now + CONTROL_CHECK;
            self.check_control();
        }
        let mut got = 0;
        while got < RX_PASS {
            if self.rx_head == self.rx_tail {
                self.rx_head = 0;
                self.rx_tail = 0;
            }
            if self.rx_tail == self.rx.len() && !self.make_room() {
                break;
            }
            let dst = &mut self.rx[self.rx_tail..];
            let r = match (self.shm.as_mut(), self.stream.as_mut()) {
                (Some(p), _) => p
                    .read(dst)
                    .map_err(|Corrupt(e)| format!("the peer broke the shared-memory ring: {e}")),
                (None, Some(s)) => loop {
                    match s.read(dst) {
                        Ok(0) => {
                            // Gone: the link dies at the next fill that
                            // reads nothing, once what arrived is handled.
                            self.peer_closed = true;
                            break Ok(0);
                        }
                        Ok(n) => break Ok(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(0),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(format!("reading from the peer failed: {e}")),
                    }
                },
                (None, None) => return got,
            };
            match r {
                Ok(0) => break,
                Ok(n) => {
                    st.reads += 1;
                    st.bytes_received += n as u64;
                    got += n;
                    self.rx_tail += n;
                    if self.rx_tail < self.rx.len() {
                        break;
                    }
                }
                Err(reason) => {
                    self.kill(reason);
                    return got;
                }
            }
        }
        if self.peer_closed && got == 0 && self.is_up() {
            // Everything the peer published before it went is read.
            self.kill("the peer closed the connection".into());
            return 0;
        }
        if self.shm.as_mut().is_some_and(Pipe::take_freed) && self.wake_peer() {
            st.wakeups += 1;
        }
        if self.blackhole {
            // Partitioned: what arrives is lost, and does not count as an
            // answer (the ACK timeout runs on).
            self.rx_head = self.rx_tail;
            return 0;
        }
        got
    }

    /// A shared-memory link's socket carries only wake-up bytes after the
    /// handshake: they are drained; EOF is the peer's death (the link dies
    /// once the ring is read empty: frames published before it, such as
    /// the answers a dropped device sends, are handled first).
    fn check_control(&mut self) {
        let Some(s) = self.stream.as_mut() else {
            return;
        };
        // Bytes are wake-ups (any number: a peer that floods them only
        // wakes this side); drained a bounded amount per look.
        let mut b = [0u8; 256];
        for _ in 0..16 {
            match s.read(&mut b) {
                Ok(0) => {
                    self.peer_closed = true;
                    return;
                }
                Ok(n) if n < b.len() => return,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    return;
                }
                // A peer that closed with wake-up bytes unread leaves
                // ECONNRESET, not EOF: gone all the same, ring read first.
                Err(_) => {
                    self.peer_closed = true;
                    return;
                }
            }
        }
    }

    /// Makes room after the bytes of a full receive buffer: moves them to
    /// the front, or grows the buffer by at most what it holds, so it grows
    /// only with bytes that arrived (never ahead of a frame's body on the
    /// word of its header). False when the buffer holds whole frames to
    /// handle first, or a header to refuse.
    fn make_room(&mut self) -> bool {
        if self.rx_head > 0 {
            self.rx.copy_within(self.rx_head..self.rx_tail, 0);
            self.rx_tail -= self.rx_head;
            self.rx_head = 0;
            return true;
        }
        let have = self.rx.len();
        let want = if have < RX_BATCH {
            RX_BATCH.min((2 * have).max(RX_FIRST))
        } else {
            match self.parse_header(0) {
                Ok((_, len)) if HDR + len > have => (HDR + len).min(2 * have),
                _ => return false,
            }
        };
        self.rx.resize(want, 0);
        true
    }

    /// The kind and body length of the frame whose header is at `at`,
    /// checked against what this link may carry: a REQ at most its fixed
    /// part and `req_limit`, a RESP at most its fixed part and the longest
    /// READ in flight.
    fn parse_header(&self, at: usize) -> Result<(u8, usize), Bad> {
        self.check_header(&self.rx[at..at + HDR])
    }

    /// `parse_header` of the header `h`.
    fn check_header(&self, h: &[u8]) -> Result<(u8, usize), Bad> {
        let len = le32(h, 0) as usize;
        if h[5..8] != [0, 0, 0] {
            return Err(Bad::Frame("malformed frame header"));
        }
        match h[4] {
            K_REQ if len > REQ_LEN + self.req_limit as usize => Err(Bad::ReqOverLimit),
            K_RESP if len > RESP_LEN + self.read_max as usize => Err(Bad::Frame(
                "RESP longer than any READ in flight on its link",
            )),
            k @ (K_REQ | K_RESP) => Ok((k, len)),
            K_ACKREQ if len == 0 => Ok((K_ACKREQ, 0)),
            K_ACKREQ => Err(Bad::Frame("ACKREQ with a body")),
            _ => Err(Bad::Frame("malformed frame header")),
        }
    }

    /// A large frame (a body of [`DIRECT_MIN`] bytes or more), whole and
    /// contiguous at the head of a shared-memory ring with nothing
    /// buffered before it: (kind, body, length), to be handled where it
    /// lies, without a copy into the receive buffer, and consumed with
    /// [`Link::consume_direct`]. Anything else (a header to refuse too)
    /// goes the usual way, through `fill`.
    pub(crate) fn direct_frame(&mut self) -> Option<(u8, *const u8, usize)> {
        if self.rx_head != self.rx_tail || self.blackhole {
            return None;
        }
        let p = self.shm.as_mut()?;
        let h: [u8; HDR] = p.peek_bytes().ok()??;
        let (kind, len) = self.check_header(&h).ok()?;
        if len < DIRECT_MIN {
            return None;
        }
        let p = self.shm.as_mut()?;
        let at = p.peek(HDR + len).ok()??;
        // SAFETY: peek found HDR + len bytes there.
        Some((kind, unsafe { at.add(HDR) }, len))
    }

    /// Consumes the frame `direct_frame` returned, `len` its body length.
    pub(crate) fn consume_direct(&mut self, len: usize, st: &mut WireStats) {
        if let Some(p) = self.shm.as_mut() {
            p.skip(HDR + len);
            st.reads += 1;
            st.frames_in_place += 1;
            st.bytes_received += (HDR + len) as u64;
            if self.wake_peer() {
                st.wakeups += 1;
            }
        }
    }

    /// The next complete frame in `rx`: (kind, body range). A header that
    /// is malformed or over the link's limits is reported as soon as it
    /// is in, before any of its body is waited for.
    pub(crate) fn next_frame(&mut self) -> Option<Result<(u8, usize, usize), Bad>> {
        let avail = self.rx_tail - self.rx_head;
        if avail < HDR {
            return None;
        }
        let (kind, len) = match self.parse_header(self.rx_head) {
            Ok(h) => h,
            Err(e) => return Some(Err(e)),
        };
        if avail < HDR + len {
            return None;
        }
        let start = self.rx_head + HDR;
        self.rx_head = start + len;
        Some(Ok((kind, start, start + len)))
    }

    /// Writes what may be written now (one `write` call when the socket
    /// takes it all). Returns the next time held bytes may go.
    pub(crate) fn flush(&mut self, now: Instant, st: &mut WireStats) -> Option<Instant> {
        self.req_queued = false;
        self.answered = false;
        self.answers_deferred = false;
        self.urgent = false;
        self.hold_from = None;
        self.holding = false;
        if self.blackhole {
            self.tx.clear();
            self.tx_head = 0;
            self.tx_ready = 0;
            self.last_ack = None;
            self.held.clear();
            return None;
        }
        if self.delay.is_zero() && self.held.is_empty() {
            self.tx_ready = self.tx.len();
        } else {
            let staged = self.held.back().map_or(self.tx_ready, |h| h.0);
            if self.tx.len() > staged {
                self.held.push_back((self.tx.len(), now + self.delay));
            }
            while let Some(&(end, due)) = self.held.front() {
                if due > now {
                    break;
                }
                self.tx_ready = end;
                self.held.pop_front();
            }
        }
        if self.shm.is_some() {
            self.flush_shm(st);
            return self.held.front().map(|h| h.1);
        }
        while self.tx_head < self.tx_ready {
            let s = self.stream.as_mut()?;
            match s.write(&self.tx[self.tx_head..self.tx_ready]) {
                Ok(n) => {
                    st.writes += 1;
                    st.bytes_sent += n as u64;
                    self.tx_head += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.kill(format!("writing to the peer failed: {e}"));
                    return None;
                }
            }
        }
        self.compact_tx();
        self.held.front().map(|h| h.1)
    }

    /// `flush`'s writes for a shared-memory link: into the ring until it
    /// is full (the rest waits for the peer to free space, which wakes
    /// this side if it sleeps), then one look at whether the peer sleeps.
    fn flush_shm(&mut self, st: &mut WireStats) {
        let mut sent = false;
        let (w, b, k) = std::mem::take(&mut self.early);
        st.writes += w;
        st.bytes_sent += b;
        st.wakeups += k;
        if let Some(p) = self.shm.as_mut()
            && p.publish()
        {
            st.writes += 1;
            st.bytes_sent += std::mem::take(&mut self.staged) as u64;
            sent = true;
        }
        while self.tx_head < self.tx_ready {
            let Some(p) = self.shm.as_mut() else { return };
            match p.write(&self.tx[self.tx_head..self.tx_ready]) {
                Ok(0) => break,
                Ok(n) => {
                    st.writes += 1;
                    st.bytes_sent += n as u64;
                    self.tx_head += n;
                    sent = true;
                }
                Err(Corrupt(e)) => {
                    self.kill(format!("the peer broke the shared-memory ring: {e}"));
                    return;
                }
            }
        }
        if sent {
            crate::trace::ev(crate::trace::Ev::Published);
        }
        if sent && self.wake_peer() {
            st.wakeups += 1;
        }
        self.compact_tx();
    }

    /// Called after each answer is queued: notes it (see
    /// [`Link::defer_answers`]) and, over shared memory, once `EAGER` bytes
    /// of answers are queued (READ data), sends them now rather than at the
    /// pass's flush, so the peer copies them out while this side reads the
    /// next ones.
    pub(crate) fn on_answer(&mut self, st: &mut WireStats) {
        self.answered = true;
        if self.shm.is_some()
            && self.backlog() >= EAGER
            && self.delay.is_zero()
            && self.held.is_empty()
            && !self.blackhole
        {
            self.tx_ready = self.tx.len();
            self.flush_shm(st);
        }
    }

    /// Whether a manual device's pass keeps this link's answers for its
    /// next pass instead of sending them now: when all this link has to
    /// send is answers the pass queued (a few ACKs, no request of its own,
    /// nothing a full ring or socket left over), and the last pass did not
    /// defer them already. An application that posts on seeing the
    /// requests' completions, before its next pass, then gets the ACKs and
    /// its requests sent together, as one store into the ring (one cache
    /// line for the peer to fetch, not two) or one `write`. At most one
    /// pass: the next pass sends them whatever it does, and dropping the
    /// device sends what is left.
    pub(crate) fn defer_answers(&mut self) -> bool {
        // Only answers wanted at once: the others are held
        // (`hold_answers`), and go as soon as their hold ends.
        let defer = !self.answers_deferred && self.urgent && self.answers_only();
        self.answers_deferred = defer;
        defer
    }

    /// Whether all this link has to send is answers queued since its last
    /// flush (at most [`DEFER_MAX`] bytes: ACKs, short READ data; no
    /// request, nothing a full ring or socket left over, no fault).
    fn answers_only(&self) -> bool {
        self.answered
            && !self.req_queued
            && self.staged == 0
            && self.tx_head == self.tx_ready
            && self.backlog() > 0
            && self.backlog() <= DEFER_MAX
            && self.delay.is_zero()
            && self.held.is_empty()
            && !self.blackhole
    }

    /// Whether a pass (at `now`) holds this link's answers back, and until
    /// when: when they are only plain ACKs of requests that did not ask
    /// for them at once (unsignaled WRITEs and SENDs: their ACKs complete
    /// nothing the peer's application sees), for at most [`ACK_HOLD`]
    /// (`ack_hold`) from the pass that first held them. The first frame this side
    /// sends to the peer takes them along (one store or `write`), so an
    /// exchange of requests in both directions sends no ACK of its own.
    /// Any other answer, and the end of the hold, sends them all.
    pub(crate) fn hold_answers(&mut self, now: Instant) -> Option<Instant> {
        self.holding = false;
        if self.urgent || !self.answers_only() {
            return None;
        }
        let until = *self.hold_from.get_or_insert(now) + self.ack_hold;
        self.holding = now < until;
        self.holding.then_some(until)
    }

    /// Drops the bytes written from the front of `tx`.
    fn compact_tx(&mut self) {
        if self.tx_head == self.tx.len() {
            self.tx.clear();
            self.tx_head = 0;
            self.tx_ready = 0;
            self.last_ack = None;
        } else if self.tx_head > (1 << 20) && self.tx_head * 2 > self.tx.len() {
            self.last_ack = None;
            self.tx.drain(..self.tx_head);
            self.tx_ready -= self.tx_head;
            for h in &mut self.held {
                h.0 -= self.tx_head;
            }
            self.tx_head = 0;
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Answers a manual device's last pass deferred: their requests
        // were executed, so the peer's WQEs complete.
        if (self.answers_deferred || self.holding) && self.is_up() {
            self.flush(Instant::now(), &mut WireStats::default());
        }
    }
}

/// The eight bytes that carry the connector's memfd.
const SHM_OFFER: [u8; 8] = *b"M5SHMOFR";
/// The eight bytes that say the acceptor mapped it.
const SHM_ACCEPT: [u8; 8] = *b"M5SHMACC";
/// HELLO flag: the connector offers shared-memory rings.
const HELLO_SHM: u16 = 1;
/// WELCOME status: the connector is not the process its unix address
/// names, or runs as another user, or announced a unix address over TCP.
const WELCOME_NOT_YOU: u8 = 2;

/// Connects to the device at `to` and performs the handshake, within
/// [`HANDSHAKE`] in all. `shm`: this device wants a shared-memory link
/// with a device of this host (the acceptor may refuse: then the socket
/// carries the frames).
pub(crate) fn connect(from: [u8; 16], to: Addr, shm: bool) -> Result<Conn, String> {
    if matches!(to, Addr::Tcp { .. }) && matches!(Addr::decode(&from), Ok(Addr::Unix { .. })) {
        // The acceptor would refuse it: a unix address is checked only
        // over a unix socket (`cred`).
        return Err(format!(
            "cannot link to software device {to} over TCP: this device has a unix address,              which a device accepts only over a unix socket (open both with soft@tcp)"
        ));
    }
    let deadline = Instant::now() + HANDSHAKE;
    let shm = shm && matches!(to, Addr::Unix { .. });
    let stream = match to {
        Addr::Unix { pid, id } => {
            let a = UnixAddr::from_abstract_name(Addr::unix_name(pid, id).as_bytes())
                .map_err(|e| e.to_string())?;
            UnixStream::connect_addr(&a).map(Stream::Unix)
        }
        Addr::Tcp { ip, port, .. } => {
            TcpStream::connect_timeout(&SocketAddrV4::new(ip, port).into(), HANDSHAKE).and_then(
                |s| {
                    s.set_nodelay(true)?;
                    Ok(Stream::Tcp(s))
                },
            )
        }
    }
    .map_err(|e| format!("cannot reach software device {to}: {e} (is its process alive?)"))?;
    if let Addr::Unix { pid, .. } = to {
        // The name is abstract: whoever bound it answers. It must be the
        // process the address names, of this user.
        cred::check(stream.fd(), Some(pid)).map_err(|e| {
            let hint = if matches!(e, cred::Refused::Pid { .. }) {
                " (a stale address whose name another process took?)"
            } else {
                ""
            };
            format!("refusing software device {to}: {e}{hint}")
        })?;
    }
    let mut s = stream;
    let fail = |e: io::Error| format!("handshake with software device {to} failed: {e}");
    s.set_blocking_timeout(Some(HANDSHAKE)).map_err(fail)?;
    let mut hello = [0u8; HDR + HELLO_LEN];
    hello[..HDR].copy_from_slice(&header(K_HELLO, HELLO_LEN));
    hello[HDR..HDR + 4].copy_from_slice(&WIRE_MAGIC);
    hello[HDR + 4..HDR + 6].copy_from_slice(&WIRE_VERSION.to_le_bytes());
    let flags = if shm { HELLO_SHM } else { 0 };
    hello[HDR + 6..HDR + 8].copy_from_slice(&flags.to_le_bytes());
    hello[HDR + 8..HDR + 24].copy_from_slice(&from);
    hello[HDR + 24..HDR + 40].copy_from_slice(&to.encode());
    s.write_all(&hello).map_err(fail)?;
    let mut w = [0u8; HDR + WELCOME_LEN];
    read_exact_by(&mut s, &mut w, deadline).map_err(fail)?;
    if w[..HDR] != header(K_WELCOME, WELCOME_LEN) {
        return Err(format!(
            "handshake with software device {to} failed: not a software device"
        ));
    }
    match w[HDR] {
        0 => {}
        WELCOME_NOT_YOU => {
            return Err(format!(
                "software device {to} refused this process: it is not the process of the \
                 address it announced (a device opened before a fork?), or runs as another \
                 user, or announced a unix address over TCP"
            ));
        }
        _ => {
            return Err(format!(
                "no software device {to} (the address is served by another device: a stale \
                 connection info?)"
            ));
        }
    }
    let shm = if shm && w[HDR + 1] == 1 {
        Some(offer_shm(&mut s, deadline).map_err(|e| {
            format!("handshake with software device {to} failed: shared memory: {e}")
        })?)
    } else {
        None
    };
    s.set_blocking_timeout(None).map_err(fail)?;
    Ok(Conn { stream: s, shm })
}

/// The connector's half of the shared-memory exchange: sends a new sealed
/// memfd, waits for the acceptor to take it.
fn offer_shm(s: &mut Stream, deadline: Instant) -> Result<Pipe, String> {
    let (offer, memfd) = Offer::create().map_err(|e| format!("creating the rings: {e}"))?;
    shm::send_fds(s.fd(), &SHM_OFFER, &[memfd.as_raw_fd()]).map_err(|e| e.to_string())?;
    let mut b = [0u8; 8];
    read_exact_by(s, &mut b, deadline).map_err(|e| e.to_string())?;
    if b != SHM_ACCEPT {
        return Err("the peer did not accept the rings".into());
    }
    Ok(offer.into_pipe())
}

/// The acceptor's half: receives the memfd, checks and maps it, says so.
fn accept_shm(s: &mut Stream, deadline: Instant) -> Result<Pipe, String> {
    let mut b = [0u8; 8];
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err("handshake timed out".into());
    }
    s.set_blocking_timeout(Some(left))
        .map_err(|e| e.to_string())?;
    let fds: Vec<OwnedFd> = shm::recv_fds(s.fd(), &mut b, 1).map_err(|e| e.to_string())?;
    if b != SHM_OFFER || fds.len() != 1 {
        return Err("no rings offered".into());
    }
    let pipe = Pipe::open(&fds[0])?;
    s.write_all(&SHM_ACCEPT).map_err(|e| e.to_string())?;
    Ok(pipe)
}

/// `read_exact` that gives up at `deadline` (a peer that trickles bytes
/// cannot stretch it: each read waits only for what is left).
fn read_exact_by(s: &mut Stream, mut buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    while !buf.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "handshake timed out",
            ));
        }
        s.set_blocking_timeout(Some(left))?;
        match s.read(buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The acceptor side of the handshake, within [`HANDSHAKE`] in all: reads
/// HELLO, answers WELCOME (and sets up the shared-memory rings when the
/// connector offers them and `shm` says this side wants them). Returns the
/// connector's address and the rings.
fn welcome(
    s: &mut Stream,
    me: [u8; 16],
    shm: bool,
) -> io::Result<Option<([u8; 16], Option<Pipe>)>> {
    let deadline = Instant::now() + HANDSHAKE;
    let mut h = [0u8; HDR + HELLO_LEN];
    read_exact_by(s, &mut h, deadline)?;
    let b = &h[HDR..];
    if h[..HDR] != header(K_HELLO, HELLO_LEN)
        || b[0..4] != WIRE_MAGIC
        || u16::from_le_bytes([b[4], b[5]]) != WIRE_VERSION
    {
        return Ok(None);
    }
    let mut from = [0u8; 16];
    from.copy_from_slice(&b[8..24]);
    let claimed = Addr::decode(&from);
    let mut status = u8::from(!(b[24..40] == me && claimed.is_ok()));
    if status == 0 {
        // A local connector must be the process its address names, and of
        // this user (`cred`); a unix address announced over TCP cannot be
        // checked, so it is refused; a TCP address over TCP is taken on
        // trust.
        let pid = match claimed {
            Ok(Addr::Unix { pid, .. }) => Some(pid),
            _ => None,
        };
        let refused = match s {
            Stream::Unix(_) => cred::check(s.fd(), pid).is_err(),
            Stream::Tcp(_) => pid.is_some(),
        };
        if refused {
            status = WELCOME_NOT_YOU;
        }
    }
    let ok = status == 0;
    let offered = u16::from_le_bytes([b[6], b[7]]) & HELLO_SHM != 0;
    let shm = shm && offered && ok && matches!(s, Stream::Unix(_));
    let mut w = [0u8; HDR + WELCOME_LEN];
    w[..HDR].copy_from_slice(&header(K_WELCOME, WELCOME_LEN));
    w[HDR] = status;
    w[HDR + 1] = u8::from(shm);
    s.write_all(&w)?;
    if !ok {
        return Ok(None);
    }
    let shm = if shm {
        // A connector that offered rings and then sent none or bad ones is
        // refused (the connection closes).
        match accept_shm(s, deadline) {
            Ok(p) => Some(p),
            Err(_) => return Ok(None),
        }
    } else {
        None
    };
    if let Stream::Tcp(t) = s {
        t.set_nodelay(true)?;
    }
    s.set_blocking_timeout(None)?;
    Ok(Some((from, shm)))
}

/// One thread per process accepts connections for every listening device.
struct Acceptor {
    entries: Mutex<Vec<Entry>>,
    wake: EventFd,
}

#[derive(Clone)]
struct Entry {
    listener: Arc<Listener>,
    dev: Weak<dyn Adopt>,
    addr: [u8; 16],
}

/// What the acceptor hands a connection it accepted and welcomed to: the
/// device it is for (a weak reference: the acceptor does not keep devices
/// alive).
pub(crate) trait Adopt: Send + Sync {
    /// A connection from the device at address `from`.
    fn adopt(&self, from: [u8; 16], c: Conn);
    /// Whether the device takes shared-memory links.
    fn takes_shm(&self) -> bool;
    /// The acceptor thread starts (`true`) or ends a handshake for it.
    fn accepting(&self, started: bool);
}

static ACCEPTOR: Mutex<Option<&'static Acceptor>> = Mutex::new(None);

/// The acceptor, started on first use (it lives as long as the process).
fn acceptor() -> Result<&'static Acceptor, Error> {
    let mut g = ACCEPTOR.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(a) = *g {
        return Ok(a);
    }
    let wake = EventFd::new()?;
    let a: &'static Acceptor = Box::leak(Box::new(Acceptor {
        entries: Mutex::new(Vec::new()),
        wake,
    }));
    std::thread::Builder::new()
        .name("mlx5-soft-accept".into())
        .spawn(move || accept_loop(a))
        .map_err(|source| Error::Os {
            what: "spawning the software device acceptor thread",
            source,
        })?;
    *g = Some(a);
    Ok(a)
}

/// A handshake the acceptor thread has under way for a device (see
/// [`Adopt::accepting`]): ended when dropped, however the handshake ends.
struct Handshake<'a>(&'a dyn Adopt);

impl<'a> Handshake<'a> {
    fn start(d: &'a dyn Adopt) -> Handshake<'a> {
        d.accepting(true);
        Handshake(d)
    }
}

impl Drop for Handshake<'_> {
    fn drop(&mut self) {
        self.0.accepting(false);
    }
}

/// Starts accepting for `dev` on `l`.
pub(crate) fn listen(l: Listener, dev: Weak<dyn Adopt>, addr: [u8; 16]) -> Result<(), Error> {
    let a = acceptor()?;
    a.entries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Entry {
            listener: Arc::new(l),
            dev,
            addr,
        });
    a.wake.signal();
    Ok(())
}

/// Stops accepting for the device with address `addr`.
pub(crate) fn unlisten(addr: [u8; 16]) {
    let Some(a) = *ACCEPTOR.lock().unwrap_or_else(|e| e.into_inner()) else {
        return;
    };
    a.entries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|e| e.addr != addr);
    a.wake.signal();
}

fn accept_loop(a: &'static Acceptor) {
    let mut snap: Vec<Entry> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    loop {
        snap.clear();
        {
            let mut e = a.entries.lock().unwrap_or_else(|e| e.into_inner());
            e.retain(|e| e.dev.strong_count() > 0);
            snap.extend(e.iter().cloned());
        }
        fds.clear();
        fds.push(a.wake.pollfd());
        fds.extend(snap.iter().map(|e| libc::pollfd {
            fd: e.listener.fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        bell::poll(&mut fds, None);
        a.wake.drain();
        for (i, e) in snap.iter().enumerate() {
            if fds[i + 1].revents == 0 {
                continue;
            }
            while let Ok(mut s) = e.listener.accept() {
                let Some(d) = e.dev.upgrade() else { break };
                let _handshake = Handshake::start(&*d);
                if let Ok(Some((from, shm))) = welcome(&mut s, e.addr, d.takes_shm()) {
                    d.adopt(from, Conn { stream: s, shm });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soft::wire::MAX_MSG;
    use crate::wqe::Remote;

    /// A link over one end of a socket pair, and the other end.
    fn link() -> (Link, UnixStream) {
        let (a, b) = UnixStream::pair().expect("socket pair");
        a.set_nonblocking(true).expect("nonblocking");
        let c = Conn {
            stream: Stream::Unix(a),
            shm: None,
        };
        (Link::new(1, [0; 16], c), b)
    }

    /// A link over one side of a shared-memory pipe, the other side's
    /// pipe, and the control socket's other end.
    fn shm_link() -> (Link, Pipe, UnixStream) {
        let (a, b) = UnixStream::pair().expect("socket pair");
        a.set_nonblocking(true).expect("nonblocking");
        let (offer, memfd) = shm::Offer::create().expect("memfd");
        let far = Pipe::open(&memfd).expect("open");
        let c = Conn {
            stream: Stream::Unix(a),
            shm: Some(offer.into_pipe()),
        };
        (Link::new(1, [0; 16], c), far, b)
    }

    fn frame_header(kind: u8, len: u32) -> [u8; HDR] {
        let mut h = [0u8; HDR];
        h[0..4].copy_from_slice(&len.to_le_bytes());
        h[4] = kind;
        h
    }

    fn read_request(len: u32, psn: u32) -> Request {
        Request {
            opcode: opcode::RDMA_READ,
            src: [0; 16],
            src_qpn: 0x100,
            psn,
            dst_qpn: 0x100,
            remote: Remote { addr: 0, rkey: 0 },
            len,
            imm: 0,
            swap_add: 0,
            compare: 0,
            solicited: false,
            ack_now: false,
        }
    }

    #[test]
    fn a_header_alone_does_not_grow_the_receive_buffer() {
        let (mut l, mut peer) = link();
        // Vouched for the largest message: the header is within limits.
        l.req_limit = MAX_MSG as u32;
        peer.write_all(&frame_header(K_REQ, 64 << 20)).unwrap();
        peer.write_all(&[7u8; 1000]).unwrap();
        let mut st = WireStats::default();
        assert_eq!(l.fill(&mut st, Instant::now()), HDR + 1000);
        assert!(l.next_frame().is_none(), "the body is still to come");
        assert!(l.rx.len() <= RX_BATCH, "{} bytes", l.rx.len());
        // As the body arrives, the buffer grows by at most what it holds.
        const MORE: usize = 300 << 10;
        let writer = std::thread::spawn(move || {
            peer.write_all(&[7u8; MORE]).unwrap();
            peer
        });
        let mut arrived = HDR + 1000;
        while arrived < HDR + 1000 + MORE {
            arrived += l.fill(&mut st, Instant::now());
            assert!(l.is_up());
            assert!(l.next_frame().is_none());
            assert!(l.rx.len() <= 2 * arrived.max(RX_BATCH), "{}", l.rx.len());
        }
        drop(writer.join().unwrap());
    }

    #[test]
    fn a_stranger_may_send_nothing_longer_than_a_fixed_part() {
        let (mut l, mut peer) = link();
        let mut st = WireStats::default();
        // A REQ with a payload: refused from its header alone.
        peer.write_all(&frame_header(K_REQ, REQ_LEN as u32 + 1))
            .unwrap();
        l.fill(&mut st, Instant::now());
        assert_eq!(l.next_frame(), Some(Err(Bad::ReqOverLimit)));
        // A RESP with data when no READ is in flight: refused.
        let (mut l, mut peer) = link();
        peer.write_all(&frame_header(K_RESP, RESP_LEN as u32 + 1))
            .unwrap();
        l.fill(&mut st, Instant::now());
        assert!(matches!(l.next_frame(), Some(Err(Bad::Frame(_)))));
    }

    /// An ACKREQ is a bare header: one with a body is malformed. Read, it
    /// makes the answers held back leave (`hold_answers` holds none).
    #[test]
    fn an_ack_request_has_no_body_and_releases_held_answers() {
        let (mut l, mut peer) = link();
        let mut st = WireStats::default();
        peer.write_all(&frame_header(K_ACKREQ, 1)).unwrap();
        l.fill(&mut st, Instant::now());
        assert_eq!(l.next_frame(), Some(Err(Bad::Frame("ACKREQ with a body"))));
        let (mut l, mut peer) = link();
        peer.write_all(&frame_header(K_ACKREQ, 0)).unwrap();
        l.fill(&mut st, Instant::now());
        assert!(matches!(l.next_frame(), Some(Ok((K_ACKREQ, _, _)))));
        // A plain ACK nobody asked for at once is held, until an ACKREQ.
        let now = Instant::now();
        l.put_resp(
            &read_request(0, 0),
            0,
            Response::Ack { orig: 0 },
            Data::slice(&[]),
            &mut st,
        );
        assert!(l.hold_answers(now).is_some());
        l.answers_wanted();
        assert_eq!(l.hold_answers(now), None);
    }

    /// A link's ACK timeout only goes down; crossing below
    /// [`ACK_AT_ONCE_BELOW`] with requests in flight (sent without asking
    /// for their answers at once) asks the peer for them, once, and
    /// restarts the clock the new timeout runs on.
    #[test]
    fn a_timeout_lowered_below_a_millisecond_asks_for_the_answers_in_flight() {
        let ms = Duration::from_millis;
        // Nothing in flight: nothing to ask for.
        let (mut l, _peer) = link();
        assert!(!l.lower_timeout(ms(2)));
        assert!(!l.lower_timeout(Duration::from_micros(600)));
        assert_eq!(l.timeout, Duration::from_micros(600));
        assert!(!l.lower_timeout(ms(5)), "never raised");
        assert_eq!(l.timeout, Duration::from_micros(600));
        // A WRITE in flight: asked for once, when the timeout crosses.
        let (mut l, mut peer) = link();
        l.put_req(&write_request(0x100, 0), 0, &[]);
        let sent_at = l.last_progress;
        assert!(!l.lower_timeout(ms(2)), "still a millisecond or more");
        std::thread::sleep(ms(2));
        assert!(l.lower_timeout(Duration::from_micros(600)));
        assert!(
            l.last_progress >= sent_at + ms(2),
            "the new timeout runs from now"
        );
        assert!(
            !l.lower_timeout(Duration::from_micros(300)),
            "asked already"
        );
        let mut st = WireStats::default();
        l.flush(Instant::now(), &mut st);
        let mut got = vec![0u8; HDR + REQ_LEN + HDR];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got[4], K_REQ);
        assert_eq!(&got[HDR + REQ_LEN..], &wire::header(K_ACKREQ, 0));
        peer.set_nonblocking(true).unwrap();
        assert!(
            peer.read(&mut [0u8; 1]).is_err(),
            "one ACKREQ, nothing more"
        );
    }

    #[test]
    fn a_resp_may_carry_the_longest_read_in_flight_and_no_more() {
        let (mut l, mut peer) = link();
        let mut st = WireStats::default();
        l.put_req(&read_request(100, 0), 0, &[]);
        l.put_req(&read_request(4000, 1), 0, &[]);
        peer.write_all(&frame_header(K_RESP, (RESP_LEN + 4000) as u32))
            .unwrap();
        l.fill(&mut st, Instant::now());
        assert_eq!(l.next_frame(), None, "within the limit: awaits its body");
        let (mut l, mut peer) = link();
        l.put_req(&read_request(4000, 0), 0, &[]);
        peer.write_all(&frame_header(K_RESP, (RESP_LEN + 4001) as u32))
            .unwrap();
        l.fill(&mut st, Instant::now());
        assert!(matches!(l.next_frame(), Some(Err(Bad::Frame(_)))));
    }

    #[test]
    fn frames_that_arrived_before_the_peer_closed_are_handled_before_the_link_dies() {
        let (mut l, mut peer) = link();
        let mut st = WireStats::default();
        // Frames filling the first receive buffer exactly, then EOF: the
        // read after them sees the close in the same fill.
        let frame = HDR + REQ_LEN;
        let n = RX_FIRST / frame;
        assert_eq!(n * frame, RX_FIRST, "frames fill the buffer exactly");
        for _ in 0..n {
            peer.write_all(&frame_header(K_REQ, REQ_LEN as u32))
                .unwrap();
            peer.write_all(&[0u8; REQ_LEN]).unwrap();
        }
        drop(peer);
        assert_eq!(l.fill(&mut st, Instant::now()), RX_FIRST);
        assert!(l.is_up(), "killed with {n} frames unread");
        for _ in 0..n {
            assert!(matches!(l.next_frame(), Some(Ok(_))));
        }
        assert_eq!(l.fill(&mut st, Instant::now()), 0);
        assert!(!l.is_up(), "the close ends the link once nothing is left");
    }

    /// Whatever the peer end of `link()` has received, without waiting.
    fn received(peer: &mut UnixStream) -> Vec<u8> {
        peer.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut b = [0u8; 4096];
        loop {
            match peer.read(&mut b) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return got,
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// (The answers here are ones wanted at once, `urgent`: the others are
    /// held instead, see the hold's test.)
    #[test]
    fn answers_are_deferred_one_pass_at_most() {
        let (mut l, mut peer) = link();
        let mut st = WireStats::default();
        let now = Instant::now();
        // Nothing queued: nothing to defer.
        assert!(!l.defer_answers());
        l.tx.extend_from_slice(b"ack one");
        l.on_answer(&mut st);
        l.urgent = true;
        assert!(l.defer_answers());
        assert!(received(&mut peer).is_empty(), "kept back");
        // The next pass sends them, with whatever it added.
        l.tx.extend_from_slice(b" ack two");
        l.on_answer(&mut st);
        l.urgent = true;
        assert!(!l.defer_answers(), "deferred once already");
        l.flush(now, &mut st);
        assert_eq!(received(&mut peer), b"ack one ack two");
        assert_eq!(st.writes, 1);
        // Answers after the flush may be deferred again.
        l.tx.extend_from_slice(b"three");
        l.on_answer(&mut st);
        l.urgent = true;
        assert!(l.defer_answers());
        l.flush(now, &mut st);
        assert_eq!(received(&mut peer), b"three");
    }

    #[test]
    fn answers_go_at_once_with_a_request_or_when_long() {
        let (mut l, mut peer) = link();
        let mut st = WireStats::default();
        l.tx.extend_from_slice(b"ack");
        l.on_answer(&mut st);
        l.put_req(&read_request(8, 0), 0, &[]);
        assert!(
            !l.defer_answers(),
            "a request goes now, and the answers with it"
        );
        l.flush(Instant::now(), &mut st);
        assert!(received(&mut peer).starts_with(b"ack"));
        l.tx.resize(DEFER_MAX + 1, 0);
        l.on_answer(&mut st);
        assert!(!l.defer_answers(), "READ data over the bound goes now");
    }

    #[test]
    fn only_answers_of_this_pass_are_deferred() {
        let (mut l, _peer) = link();
        let mut st = WireStats::default();
        // Bytes queued without an answer: nothing to defer.
        l.tx.extend_from_slice(b"not an answer");
        assert!(!l.defer_answers(), "no answer was queued");
        // A flush that leaves bytes behind (the socket is full): the next
        // pass sends them, and its answers with them, at once.
        l.tx.resize(16 << 20, 7);
        l.flush(Instant::now(), &mut st);
        assert!(l.backlog() > 0, "the socket took 16 MiB at once");
        // A small leftover (under the bound on deferred bytes).
        l.tx.truncate(l.tx_head + 100);
        l.tx_ready = l.tx.len();
        l.tx.extend_from_slice(b"ack");
        l.on_answer(&mut st);
        assert!(!l.defer_answers(), "bytes a full socket left over go now");
    }

    #[test]
    fn a_dropped_link_sends_the_answers_it_deferred() {
        let (mut l, mut peer) = link();
        l.tx.extend_from_slice(b"last ack");
        l.on_answer(&mut WireStats::default());
        l.urgent = true;
        assert!(l.defer_answers());
        drop(l);
        assert_eq!(received(&mut peer), b"last ack");
    }

    /// A link dropped while it holds plain ACKs back sends them (the
    /// peer's WQEs were executed, and must complete).
    #[test]
    fn a_dropped_link_sends_the_acks_it_holds() {
        let (mut l, mut peer) = link();
        let mut st = WireStats::default();
        let no = Data::slice(&[]);
        l.put_resp(
            &write_request(0x100, 3),
            1,
            Response::Ack { orig: 0 },
            no,
            &mut st,
        );
        assert!(l.hold_answers(Instant::now()).is_some());
        assert!(received(&mut peer).is_empty(), "held");
        drop(l);
        assert_eq!(received(&mut peer).len(), HDR + RESP_LEN);
    }

    /// A WRITE request of `qpn` at `psn`.
    fn write_request(qpn: u32, psn: u32) -> Request {
        Request {
            opcode: opcode::RDMA_WRITE,
            src_qpn: qpn,
            ..read_request(0, psn)
        }
    }

    /// Plain ACKs of requests that did not ask for them at once are held
    /// for `ACK_HOLD` from the pass that first held them (a later one does
    /// not extend it), over shared memory the link stays quiet meanwhile,
    /// and a request to send, an ACK asked for at once or any other answer
    /// ends the hold.
    #[test]
    fn plain_acks_nobody_waits_for_are_held_until_a_frame_goes_or_the_hold_ends() {
        let (mut l, _far, _ctl) = shm_link();
        let mut st = WireStats::default();
        let ack = Response::Ack { orig: 0 };
        let no = Data::slice(&[]);
        let t0 = Instant::now();
        l.put_resp(&write_request(0x100, 7), 1, ack, no, &mut st);
        assert_eq!(l.hold_answers(t0), Some(t0 + ACK_HOLD));
        assert!(l.quiet(), "holding, with nothing else to do");
        l.put_resp(&write_request(0x100, 8), 1, ack, no, &mut st);
        let later = t0 + ACK_HOLD / 2;
        assert_eq!(l.hold_answers(later), Some(t0 + ACK_HOLD));
        assert_eq!(l.hold_answers(t0 + ACK_HOLD), None, "the hold is over");
        assert!(
            !l.defer_answers(),
            "an ended hold goes now, not a pass later"
        );
        assert!(!l.quiet());
        l.flush(t0 + ACK_HOLD, &mut st);
        assert_eq!(l.backlog(), 0);
        let mut asked = write_request(0x100, 9);
        asked.ack_now = true;
        let nak = Response::Nak(crate::prm::Syndrome::RemoteAccess);
        let read = read_request(8, 11);
        let data = [7u8; 8];
        for (req, r, d) in [
            (&asked, ack, no),
            (&write_request(0x100, 10), nak, no),
            (&read, ack, Data::slice(&data)),
        ] {
            l.put_resp(&write_request(0x100, 6), 1, ack, no, &mut st);
            assert!(l.hold_answers(t0).is_some());
            l.put_resp(req, 1, r, d, &mut st);
            assert_eq!(l.hold_answers(t0), None, "{r:?} ends the hold");
            l.flush(t0, &mut st);
        }
        l.put_resp(&write_request(0x100, 12), 1, ack, no, &mut st);
        assert!(l.hold_answers(t0).is_some());
        l.put_req(&write_request(0x200, 0), 0, &[]);
        assert_eq!(l.hold_answers(t0), None, "a request takes the ACK along");
        l.flush(t0, &mut st);
        assert_eq!(l.backlog(), 0);
    }

    #[test]
    fn plain_acks_queued_together_share_a_frame_and_nothing_else_does() {
        let (mut l, mut peer) = link();
        let mut st = WireStats::default();
        let ack = Response::Ack { orig: 0 };
        let no = Data::slice(&[]);
        // Three plain ACKs (two QPs): one frame naming the last, more = 2.
        l.put_resp(&write_request(0x100, 7), 1, ack, no, &mut st);
        l.put_resp(&write_request(0x100, 8), 1, ack, no, &mut st);
        l.put_resp(&write_request(0x200, 3), 4, ack, no, &mut st);
        assert_eq!(l.tx.len(), HDR + RESP_LEN);
        assert_eq!(st.frames_sent, 1);
        let r = wire::get_resp(&l.tx[HDR..]).expect("a RESP");
        assert_eq!((r.qpn, r.epoch, r.psn, r.more), (0x200, 4, 3, 2));
        assert_eq!(r.resp, ack);
        // A NAK, an atomic's original value, READ data: frames of their
        // own, and no plain ACK rides in them.
        l.put_resp(
            &write_request(0x100, 9),
            1,
            Response::OutOfSequence,
            no,
            &mut st,
        );
        l.put_resp(&write_request(0x100, 10), 1, ack, no, &mut st);
        l.put_resp(
            &write_request(0x100, 11),
            1,
            Response::Ack { orig: 5 },
            no,
            &mut st,
        );
        l.put_resp(&write_request(0x100, 12), 1, ack, no, &mut st);
        l.put_resp(&read_request(2, 13), 1, ack, Data::slice(b"xy"), &mut st);
        l.put_resp(&write_request(0x100, 14), 1, ack, no, &mut st);
        assert_eq!(st.frames_sent, 7);
        // A request queued after an ACK: the next ACK does not jump it.
        l.put_req(&write_request(0x100, 0), 0, &[]);
        l.put_resp(&write_request(0x100, 15), 1, ack, no, &mut st);
        assert_eq!(st.frames_sent, 8, "answers stay behind the request");
        // Written out: later ACKs start a new frame.
        l.flush(Instant::now(), &mut st);
        assert!(!received(&mut peer).is_empty());
        assert_eq!(l.backlog(), 0);
        l.put_resp(&write_request(0x100, 16), 1, ack, no, &mut st);
        l.put_resp(&write_request(0x100, 17), 1, ack, no, &mut st);
        assert_eq!(st.frames_sent, 9);
        assert_eq!(l.backlog(), HDR + RESP_LEN);
        // A frame full of answers takes no more.
        let at = l.tx.len() - RESP_LEN;
        l.tx[at + 14..at + 16].copy_from_slice(&u16::MAX.to_le_bytes());
        l.put_resp(&write_request(0x100, 18), 1, ack, no, &mut st);
        assert_eq!(st.frames_sent, 10);
        // Partly written (a socket took some of its bytes): sealed.
        l.tx_head = l.tx.len() - 4;
        l.tx_ready = l.tx.len();
        l.put_resp(&write_request(0x100, 19), 1, ack, no, &mut st);
        assert_eq!(st.frames_sent, 11);
    }

    #[test]
    fn a_resp_with_more_answers_the_requests_before_the_one_it_names() {
        let (mut l, _peer) = link();
        let now = Instant::now();
        for psn in 0..4 {
            l.put_req(&write_request(0x100 + psn % 2, psn), 9, &[]);
        }
        let named = |qpn, psn, more| wire::Resp {
            more,
            ..wire::Resp::ack(qpn, 9, psn)
        };
        // Names a request further on than it counts, or past the last: no
        // answer (stale or forged), nothing taken off.
        assert!(!l.answers(&named(0x101, 1, 0), now));
        assert!(!l.answers(&named(0x101, 3, 4), now));
        assert!(!l.answers(&named(0x100, 2, 1), now));
        assert_eq!(l.outstanding(), 4);
        // The third request, with the two before it.
        assert!(l.answers(&named(0x100, 2, 2), now));
        let implied: Vec<(u32, u32)> = l.implied().iter().map(|s| (s.qpn, s.psn)).collect();
        assert_eq!(implied, [(0x100, 0), (0x101, 1)]);
        assert_eq!(l.outstanding(), 1);
        assert!(l.answers(&named(0x101, 3, 0), now));
        assert!(l.implied().is_empty());
        assert_eq!(l.outstanding(), 0);
        // `more` on anything but a plain ACK is malformed.
        for (status, orig, data) in [(2u8, 0u64, 0u32), (0, 5, 0), (0, 0, 4)] {
            let mut b = wire::resp_fixed(&write_request(0x100, 4), 9, Response::Ack { orig }, 0);
            b[12] = status;
            b[14] = 1;
            b[24..28].copy_from_slice(&data.to_le_bytes());
            let mut body = b.to_vec();
            body.resize(RESP_LEN + data as usize, 0);
            assert!(
                wire::get_resp(&body).is_err(),
                "status {status} orig {orig} data {data}"
            );
        }
    }

    #[test]
    fn large_read_data_goes_into_the_ring_in_order_with_what_is_queued() {
        let (mut l, mut far, _control) = shm_link();
        let mut st = WireStats::default();
        let data: Vec<u8> = (0..DIRECT_MIN + 5).map(|i| i as u8).collect();
        let ack = Response::Ack { orig: 0 };
        let frame = |req: &Request, data: &[u8]| {
            let mut f = wire::header(K_RESP, RESP_LEN + data.len()).to_vec();
            f.extend_from_slice(&wire::resp_fixed(req, 3, ack, data.len()));
            f.extend_from_slice(data);
            f
        };
        // Large, nothing queued: staged in the ring, `tx` untouched.
        let (big, small) = (read_request(data.len() as u32, 0), read_request(8, 1));
        l.put_resp(&big, 3, ack, Data::slice(&data), &mut st);
        assert_eq!(l.tx.len(), 0, "the data went straight into the ring");
        assert!(!l.defer_answers(), "staged READ data is not held back");
        // Small: through `tx`, behind it.
        l.put_resp(&small, 3, ack, Data::slice(&data[..8]), &mut st);
        assert!(l.backlog() > 0);
        // Large again, with bytes queued ahead: behind them, in `tx`.
        let third = read_request(data.len() as u32, 2);
        l.put_resp(&third, 3, ack, Data::slice(&data), &mut st);
        assert!(l.backlog() > data.len());
        l.flush(Instant::now(), &mut st);
        let want = [
            frame(&big, &data),
            frame(&small, &data[..8]),
            frame(&third, &data),
        ]
        .concat();
        let mut got = vec![0u8; want.len()];
        let mut n = 0;
        while n < got.len() {
            let k = far.read(&mut got[n..]).expect("ring");
            assert!(k > 0, "{n} of {} bytes arrived", want.len());
            n += k;
        }
        assert_eq!(got, want);
    }
}
