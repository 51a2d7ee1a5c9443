//! The software device: a NIC made of a thread (or of the caller, in manual
//! mode) that consumes the same send-queue WQEs, receive WQEs, doorbell
//! records and CQE rings a ConnectX NIC would.
//!
//! # How a WQE travels
//!
//! 1. *Requester, local phase*: read the doorbell record, copy the WQE out
//!    of the ring, decode and validate it (opcode, `ds`, index, QPN, inline
//!    length, SGE count), and validate the gather list's local keys (the
//!    payload is read where it lies, in registered memory or the WQE's
//!    inline bytes, when the frame or the peer's memory is written).
//! 2. *Responder phase*: check the target QP's state and peer, the rkey,
//!    bounds and access flags, take a receive WQE (RQ or SRQ) when the
//!    opcode consumes one, write target memory or read it, write the
//!    responder CQE.
//! 3. *Requester, completion phase*: scatter READ data or the atomic's
//!    original value, write the requester CQE (signaled WQEs and every
//!    error), or arm an RNR retry.
//!
//! The state of every device of this process lives behind one lock (the
//! [`state::Fabric`]), which a progress pass takes once: the three phases of every
//! WQE it executes, for a peer in this process too, run under that one
//! acquisition (no lock per WQE, no order between two devices' locks).
//!
//! A pass that found nothing to do and left nothing pending, on a device
//! with no QP in ERROR on a receive queue of its own (a receive posted by
//! a thread that read the QP in RTS rings no doorbell), marks the
//! device *quiet* (`Engine::quiet`): the passes after it look only at
//! what can bring work (the device's kick flag, which doorbells, changes
//! of its state outside a pass and requests of other devices of this
//! process set; the seal of the next record on each shared-memory link; a
//! connection to adopt; the earliest deadline) and return at once while
//! none did. A socket link is never quiet (only a `recv` can tell).
//!
//! Phase 2 is a function of (request, payload) → response. For a peer in
//! this process it runs in line; for a peer in another process or host
//! (over a [`link`]) phase 1 appends a `REQ` frame to the link and moves on (the
//! QP keeps its requests in flight, in order, each with a sequence
//! number), the target device runs phase 2 when the frame arrives and
//! answers with a `RESP`, and phase 3 runs when that answer arrives. An RNR
//! NAK rewinds the QP to the NAKed WQE (the target answers the requests
//! after it "out of sequence" without executing them).
//!
//! # Semantics and limits
//!
//! RC, in order per QP. Errors as hardware reports them: bad lkey or local
//! bounds → `LocalProt`; malformed WQE → `LocalQpOp`; bad rkey, bounds or
//! access → `RemoteAccess` and a misaligned atomic → `RemoteInvalRequest`
//! at the requester, with the responder QP in ERROR and an asynchronous
//! event for its owner (IBA class C); a receive WQE too small → `LocalLength` at the responder
//! and `RemoteInvalRequest` at the requester, both QPs in error; no receive
//! WQE → RNR NAK, retried after the responder's `min_rnr_timer`, then
//! `RnrRetryExceeded`; a peer QP that is unknown, not connected back, or
//! not in RTR/RTS drops the request unanswered: resent after the ACK
//! timeout, `retry_cnt` times, then `TransportRetryExceeded`; a link that closes or stays
//! silent past the ACK timeout with requests outstanding →
//! `TransportRetryExceeded` for the oldest WQE in flight. After an
//! error every later WQE of the QP, and every posted receive of its RQ,
//! completes with `WrFlush`. A CQ that fills up is overrun, as on hardware.
//! Atomics operate on target memory in host byte order and return the
//! original value big-endian, as ConnectX does.
//!
//! # Modules, by job (each imports only those above it)
//!
//! | module | job |
//! |---|---|
//! | [`wire`] | the wire codec, pure: addresses, frames in and out of byte buffers |
//! | [`bell`] | waking and sleeping: eventfd, `ppoll`, the doorbell's [`Bell`] |
//! | [`shm`] | a same-host link's shared-memory rings: layout, publish and consume, the sleep handshake, passing descriptors |
//! | [`link`] | links to other processes' devices (a socket, or shared-memory rings beside it), their buffers and limits, the handshake, the acceptor thread |
//! | [`state`] | the device's state and tables (the [`state::Fabric`] of every device of the process, one lock), its I/O state, [`state::Shared`] |
//! | [`responder`] | phase 2: one function per opcode family |
//! | [`requester`] | phases 1 and 3 for one QP's WQEs |
//! | [`mod@progress`] | one pass of a device, and the process's progress thread |
//! | this module, [`faults`] | the device's verbs for the backend: open, PD, MR, CQ, SRQ, QP, connect; fault knobs |

mod bell;
mod cred;
mod faults;
mod link;
mod progress;
mod requester;
mod responder;
mod shm;
mod state;
mod wire;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::cqe;
use crate::error::Error;
use crate::event::AsyncEvent;
use crate::mem::DmaBuf;
use crate::prm::{Access, CQE_SIZE, QpState};
use crate::queue::{ConnInfo, ConnectOpts, CqMem, QpCaps, QpMem, QpTrack, SrqMem};
use crate::wqe;

pub(crate) use bell::Bell;
pub use link::{LinkInfo, LinkKind, WireStats};
pub(crate) use progress::progress;
use state::{
    Engine, MrEntry, Peer, QPN_BASE, Shared, SoftCq, SoftQp, SoftSrq, State, Target, fabric, insert,
};

/// How the software device makes progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A device thread executes WQEs as doorbells ring; it spins briefly
    /// when work stops, then sleeps until the next doorbell.
    Background,
    /// Nothing happens until [`crate::Context::progress`] is called: tests step
    /// the device deterministically, and one-thread applications poll it.
    /// Across processes such a device answers (ACKs) a peer's requests at
    /// the pass that executes them or at the next one (sent with the
    /// requests the application posts in between); the plain ACKs of
    /// requests that asked for no completion (unsignaled WRITEs and SENDs)
    /// at a step about 20 µs later, or with the first request to that peer
    /// before. Keep stepping it, or call
    /// [`crate::Context::progress_until_idle`] before blocking on
    /// something else (it sends everything held back), so the peer's WQEs
    /// complete; dropping the device sends what is left.
    Manual,
}

static NEXT_ID: AtomicU32 = AtomicU32::new(1);

/// The environment variable that chooses how a software device links to
/// devices in other processes of its host: `shm` (the default: frames
/// through shared-memory rings, the unix socket kept for the handshake and
/// liveness) or `socket` (frames through the unix socket). Read when a
/// device opens; a link is over shared memory only when both devices
/// want it. Links to other hosts are TCP either way.
pub const SOFT_LINK_ENV: &str = "MLX5_SOFT_LINK";

/// A software device.
pub(crate) struct Device {
    shared: Arc<Shared>,
}

impl Device {
    /// Opens a device; `tcp` makes it listen there (port 0: any) instead
    /// of on a unix socket.
    pub(crate) fn open(
        progress: Progress,
        tcp: Option<SocketAddrV4>,
    ) -> Result<Arc<Device>, Error> {
        // Relaxed: a unique number, nothing else is published through it.
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let (addr, listener) = match tcp {
            None => (
                wire::Addr::Unix {
                    pid: std::process::id(),
                    id,
                },
                None,
            ),
            Some(at) => {
                let (l, port) = link::Listener::bind_tcp(at).map_err(|e| {
                    Error::InvalidAttr(format!("software device cannot listen on tcp:{at}: {e}"))
                })?;
                let ip = if at.ip().is_unspecified() {
                    advertised_ip()
                } else {
                    *at.ip()
                };
                (wire::Addr::Tcp { ip, port, id }, Some(l))
            }
        };
        let shm_links = match std::env::var(SOFT_LINK_ENV).as_deref() {
            Err(std::env::VarError::NotPresent) | Ok("" | "shm") => true,
            Ok("socket") => false,
            _ => {
                return Err(Error::InvalidAttr(format!(
                    "{SOFT_LINK_ENV} must be `shm` (the default) or `socket`"
                )));
            }
        };
        let background = match progress {
            Progress::Background => Some(progress::progressor()?),
            Progress::Manual => None,
        };
        let bell = match &background {
            Some(p) => p.bell(),
            None => Arc::new(Bell::new()?),
        };
        let has_events = Arc::new(AtomicBool::new(false));
        let kick = Arc::new(AtomicBool::new(true));
        let state = State {
            has_events: has_events.clone(),
            kick: kick.clone(),
            ..State::default()
        };
        let dev = fabric().insert(u64::from(id), addr.encode(), bell.clone(), state);
        let shared = Arc::new(Shared {
            id: u64::from(id),
            addr: addr.encode(),
            listening: Mutex::new(false),
            pending: Mutex::new(Vec::new()),
            has_pending: AtomicBool::new(false),
            answers_held: AtomicBool::new(false),
            accepting: AtomicUsize::new(0),
            manual: progress == Progress::Manual,
            shm_links,
            dev,
            lock_free_events: has_events,
            kick,
            engine: Mutex::new(Engine::default()),
            bell,
        });
        if let Some(l) = listener {
            link::listen(
                l,
                Arc::downgrade(&shared) as Weak<dyn link::Adopt>,
                shared.addr,
            )?;
            *shared.listening.lock().unwrap_or_else(|e| e.into_inner()) = true;
        }
        if let Some(p) = background {
            p.add(Arc::downgrade(&shared));
        }
        Ok(Arc::new(Device { shared }))
    }

    pub(crate) fn name(&self) -> String {
        format!("soft{}", self.shared.id)
    }

    pub(crate) fn is_manual(&self) -> bool {
        self.shared.manual
    }

    pub(crate) fn bell(&self) -> Arc<Bell> {
        self.shared.bell.clone()
    }

    /// The flag a doorbell sets (see `Shared::kick`).
    pub(crate) fn kick(&self) -> Arc<AtomicBool> {
        self.shared.kick.clone()
    }

    /// The device address carried in [`ConnInfo::gid`]; a unix-address
    /// device starts listening on its socket now.
    pub(crate) fn address(&self) -> Result<[u8; 16], Error> {
        let mut l = self
            .shared
            .listening
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !*l {
            let pid = std::process::id();
            let id = self.shared.id as u32;
            let sock = link::Listener::bind_unix(pid, id).map_err(|e| {
                Error::InvalidAttr(format!(
                    "software device cannot listen on {}: {e}",
                    wire::Addr::Unix { pid, id }
                ))
            })?;
            let dev = Arc::downgrade(&self.shared) as Weak<dyn link::Adopt>;
            link::listen(sock, dev, self.shared.addr)?;
            *l = true;
        }
        Ok(self.shared.addr)
    }

    /// The device address, printable.
    pub(crate) fn address_string(&self) -> String {
        let a: [u8; 16] = self.shared.addr;
        wire::Addr::decode(&a).map_or_else(|e| e, |a| a.to_string())
    }

    pub(crate) fn progress(&self) -> usize {
        progress(&self.shared)
    }

    /// A step that also sends every answer held back (see
    /// [`Device::answers_held`]).
    pub(crate) fn progress_sending_all(&self) -> usize {
        progress::progress_sending_all(&self.shared)
    }

    /// The next asynchronous event, waiting up to `timeout` for one.
    pub(crate) fn async_event(&self, timeout: Option<Duration>) -> Option<AsyncEvent> {
        if timeout.is_none() {
            // Acquire: pairs with State::event; a flag seen clear means no
            // event was queued before this call (one queued concurrently is
            // found by the next call).
            let has = self.shared.lock_free_events.load(Ordering::Acquire);
            if !has {
                return None;
            }
        }
        // A timeout too long for the clock waits as long as the clock goes.
        let deadline = timeout.map(|t| {
            let now = Instant::now();
            now.checked_add(t)
                .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
        });
        // The fabric's lock, not `Shared::lock`: taking an event gives the
        // device no work (no kick), and the wait gives the lock up.
        let mut fab = fabric();
        loop {
            let s = fab
                .state(self.shared.dev)
                .expect("a device's state lives as long as the device");
            if let Some(e) = s.events.pop_front() {
                if s.events.is_empty() {
                    // Relaxed: under the lock that every push takes.
                    s.has_events.store(false, Ordering::Relaxed);
                }
                return Some(e);
            }
            let left = deadline?.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let cv = s.events_cv.clone();
            fab = cv
                .wait_timeout(fab, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub(crate) fn alloc_pd(&self) -> u32 {
        let mut s = self.shared.lock();
        s.next_pd += 1;
        s.next_pd
    }

    pub(crate) fn dealloc_pd(&self, _pd: u32) {}

    pub(crate) fn reg_mr(&self, pd: u32, addr: u64, len: u64, access: Access) -> u32 {
        let mut s = self.shared.lock();
        let i = insert(
            &mut s.mrs,
            MrEntry {
                key: 0,
                pd,
                addr,
                len,
                access,
            },
        );
        if s.mr_gen.len() <= i {
            s.mr_gen.resize(i + 1, 0);
        }
        // Generation 1..=255 in the low byte: a stale key of a freed slot
        // does not match its next occupant, and no key equals 0x100
        // (MLX5_INVALID_LKEY, generation 0).
        let g = s.mr_gen[i] % 255 + 1;
        s.mr_gen[i] = g;
        let key = ((i as u32 + 1) << 8) | u32::from(g);
        if let Some(e) = s.mrs[i].as_mut() {
            e.key = key;
        }
        key
    }

    pub(crate) fn dereg_mr(&self, key: u32) {
        let mut s = self.shared.lock();
        if let Some(i) = (key >> 8).checked_sub(1)
            && let Some(slot) = s.mrs.get_mut(i as usize)
            && slot.is_some_and(|e| e.key == key)
        {
            *slot = None;
        }
    }

    /// A CQ of `entries` (rounded up to a power of two) CQEs, in memory
    /// the device allocates, every CQE invalid with owner 1 (as verbs
    /// initialises a CQ, so the first lap, which expects owner 0, sees
    /// nothing).
    pub(crate) fn create_cq(
        &self,
        entries: u32,
        overrun: Arc<AtomicBool>,
    ) -> Result<(QueueBufs, CqMem, u32), Error> {
        let n = entries.next_power_of_two();
        let buf = DmaBuf::zeroed(n as usize * CQE_SIZE)?;
        let dbrec = DmaBuf::zeroed(64)?;
        for i in 0..n as usize {
            // SAFETY: i < n, inside the freshly allocated buffer.
            unsafe {
                *buf.as_ptr().add(i * CQE_SIZE + cqe::offset::OP_OWN) = (cqe::op::INVALID << 4) | 1
            };
        }
        let mem = CqMem {
            buf: buf.as_ptr(),
            cqe_cnt: n,
            dbrec: dbrec.as_ptr().cast(),
        };
        let cqn = self.add_cq(&mem, overrun);
        Ok((
            QueueBufs {
                _bufs: vec![buf, dbrec],
            },
            mem,
            cqn,
        ))
    }

    fn add_cq(&self, mem: &CqMem, overrun: Arc<AtomicBool>) -> u32 {
        let mut s = self.shared.lock();
        let i = insert(
            &mut s.cqs,
            SoftCq {
                buf: mem.buf,
                n: mem.cqe_cnt,
                log_n: mem.cqe_cnt.trailing_zeros(),
                dbrec: mem.dbrec,
                pi: 0,
                overrun,
            },
        );
        i as u32 + 1
    }

    pub(crate) fn destroy_cq(&self, cqn: u32) {
        let mut s = self.shared.lock();
        if let Some(slot) = s.cqs.get_mut(cqn as usize - 1) {
            *slot = None;
        }
    }

    /// An SRQ with room for `depth` WQEs of `max_sge` entries, in memory
    /// the device allocates, its `next_wqe_index` links in ring order (as
    /// libmlx5 initialises them).
    pub(crate) fn create_srq(
        &self,
        depth: u32,
        max_sge: u32,
    ) -> Result<(QueueBufs, SrqMem, u32), Error> {
        // One WQE stays unposted (libmlx5 keeps the tail), hence +1.
        let wqe_cnt = (depth + 1).next_power_of_two();
        let stride = (wqe::SEG as u32 * (1 + max_sge)).next_power_of_two();
        let buf = DmaBuf::zeroed((wqe_cnt * stride) as usize)?;
        let dbrec = DmaBuf::zeroed(64)?;
        for i in 0..wqe_cnt {
            let next = ((i + 1) & (wqe_cnt - 1)) as u16;
            // SAFETY: inside the buffer; bytes 2..4 of WQE i are its
            // next_wqe_index.
            unsafe {
                let p = buf.as_ptr().add((i * stride) as usize + 2);
                std::ptr::copy_nonoverlapping(next.to_be_bytes().as_ptr(), p, 2);
            }
        }
        let mem = SrqMem {
            buf: buf.as_ptr(),
            wqe_cnt,
            stride,
            dbrec: dbrec.as_ptr().cast(),
        };
        let srqn = self.add_srq(&mem);
        Ok((
            QueueBufs {
                _bufs: vec![buf, dbrec],
            },
            mem,
            srqn,
        ))
    }

    fn add_srq(&self, mem: &SrqMem) -> u32 {
        let mut s = self.shared.lock();
        let i = insert(
            &mut s.srqs,
            SoftSrq {
                mem: SrqMem { ..*mem },
                ci: 0,
                cur: 0,
            },
        );
        i as u32 + 1
    }

    pub(crate) fn destroy_srq(&self, srqn: u32) {
        let mut s = self.shared.lock();
        if let Some(slot) = s.srqs.get_mut(srqn as usize - 1) {
            *slot = None;
        }
    }

    /// A QP of `d.caps`, its queues in memory the device allocates: a send
    /// queue with room for `max_send_wr` WQEs of the largest size, a
    /// receive queue (none on an SRQ) of power-of-two strides.
    pub(crate) fn create_qp(&self, d: QpDesc) -> Result<(QueueBufs, QpMem, u32), Error> {
        let caps = d.caps;
        let max_wqebbs = wqe::wqebbs(caps.max_ds()) as u32;
        let sq_cnt = (caps.max_send_wr * max_wqebbs).next_power_of_two();
        let rq_stride = (wqe::SEG as u32 * caps.max_recv_sge.max(1)).next_power_of_two();
        let rq_cnt = caps.max_recv_wr.max(1).next_power_of_two();
        let sq = DmaBuf::zeroed(sq_cnt as usize * wqe::WQEBB)?;
        let rq = DmaBuf::zeroed((rq_cnt * rq_stride) as usize)?;
        let dbrec = DmaBuf::zeroed(64)?;
        let mem = QpMem {
            sq_buf: sq.as_ptr(),
            sq_wqe_cnt: sq_cnt,
            rq_buf: rq.as_ptr(),
            rq_wqe_cnt: if d.srq.is_some() { 0 } else { rq_cnt },
            rq_stride,
            dbrec: dbrec.as_ptr().cast(),
        };
        let qpn = self.add_qp(d, &mem)?;
        Ok((
            QueueBufs {
                _bufs: vec![sq, rq, dbrec],
            },
            mem,
            qpn,
        ))
    }

    fn add_qp(&self, d: QpDesc, mem: &QpMem) -> Result<u32, Error> {
        let mut s = self.shared.lock();
        if s.cq(d.send_cq).is_none() || s.cq(d.recv_cq).is_none() {
            return Err(Error::Mismatch("CQ of another device"));
        }
        if let Some(srqn) = d.srq
            && s.srq(srqn).is_none()
        {
            return Err(Error::Mismatch("SRQ of another device"));
        }
        let i = s
            .qps
            .iter()
            .position(Option::is_none)
            .unwrap_or(s.qps.len());
        if i as u32 + QPN_BASE > 0x00ff_ffff {
            return Err(Error::InvalidAttr("out of QP numbers".into()));
        }
        let qpn = i as u32 + QPN_BASE;
        s.next_incarnation += 1;
        let qp = SoftQp {
            qpn,
            incarnation: s.next_incarnation,
            pd: d.pd,
            state: QpState::Reset,
            track: d.track,
            send_cq: d.send_cq,
            recv_cq: d.recv_cq,
            srq: d.srq,
            caps: d.caps,
            sq_buf: mem.sq_buf,
            sq_cnt: mem.sq_wqe_cnt,
            sq_ci: 0,
            rq_buf: mem.rq_buf,
            rq_cnt: mem.rq_wqe_cnt,
            rq_stride: mem.rq_stride,
            rq_ci: 0,
            dbrec: mem.dbrec,
            access: Access::default(),
            peer: None,
            min_rnr_timer: 0,
            rnr_retry: 0,
            retry_cnt: 7,
            ack_timeout: link::ack_budget(14, 0),
            rnr: None,
            sq_sent: 0,
            psn: 0,
            epsn: 0,
            // Unique on this device (mod 2^32), not 0 for every QP: a new
            // QP that reuses a destroyed one's number on the same link must
            // not take the old one's answers (same QPN, same PSN 0).
            epoch: s.fresh_epoch(),
            inflight: VecDeque::new(),
            inflight_sges: VecDeque::new(),
            fail_next: None,
            withhold_recv: false,
            answers_asked: false,
        };
        qp.track.set_state(QpState::Reset);
        if i == s.qps.len() {
            s.qps.push(Some(qp));
        } else {
            s.qps[i] = Some(qp);
        }
        Ok(qpn)
    }

    pub(crate) fn destroy_qp(&self, qpn: u32) {
        let mut s = self.shared.lock();
        if let Some(slot) = qpn
            .checked_sub(QPN_BASE)
            .and_then(|i| s.qps.get_mut(i as usize))
        {
            *slot = None;
        }
    }

    pub(crate) fn modify_qp(
        &self,
        qpn: u32,
        to: QpState,
        remote: Option<&ConnInfo>,
        opts: &ConnectOpts,
    ) -> Result<(), Error> {
        let peer = match remote {
            Some(r) => Some(self.resolve(r, opts)?),
            None => None,
        };
        let mut s = self.shared.lock();
        // A fresh epoch for what the QP sends after a RESET (see `add_qp`).
        let fresh_epoch = if to == QpState::Reset {
            s.fresh_epoch()
        } else {
            0
        };
        let qp = s
            .qp(qpn)
            .ok_or(Error::Mismatch("QP is not on this device"))?;
        match to {
            QpState::Init => qp.access = opts.access,
            QpState::Rtr => {
                qp.peer = peer;
                qp.min_rnr_timer = opts.min_rnr_timer.min(31);
                qp.epsn = 0;
            }
            QpState::Rts => {
                qp.rnr_retry = opts.rnr_retry.min(7);
                qp.retry_cnt = opts.retry_cnt.min(7);
                qp.ack_timeout = link::ack_budget(opts.timeout, 0);
            }
            QpState::Error => {}
            QpState::Reset => {
                qp.sq_ci = 0;
                qp.rq_ci = 0;
                qp.peer = None;
                qp.rnr = None;
                qp.sq_sent = 0;
                qp.psn = 0;
                qp.epsn = 0;
                qp.epoch = fresh_epoch;
                qp.inflight.clear();
                qp.inflight_sges.clear();
                qp.fail_next = None;
                qp.withhold_recv = false;
                qp.answers_asked = false;
                // SAFETY: the two doorbell-record words; verbs zeroes them
                // on RESET as well.
                unsafe {
                    AtomicU32::from_ptr(qp.dbrec).store(0, Ordering::Relaxed);
                    AtomicU32::from_ptr(qp.dbrec.add(1)).store(0, Ordering::Relaxed);
                }
                qp.track.reset();
            }
        }
        if to == QpState::Error {
            s.qp_to_error(qpn);
        } else {
            qp.set_state(to);
        }
        drop(s);
        if to == QpState::Error {
            // Flushing is device work: wake the thread.
            self.shared.bell.ring();
        }
        Ok(())
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if !self.shared.manual {
            progress::forget(self.shared.id);
        }
        if *self
            .shared
            .listening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        {
            link::unlisten(self.shared.addr);
        }
        if let Some(s) = fabric().slot(self.shared.dev) {
            // Its state stays until the last `Arc<Shared>` goes (requests
            // in flight to it still find it), but nobody connects to it.
            s.listed = false;
        }
    }
}

/// The longest a QP's connect waits for a handshake the acceptor thread is
/// in the middle of (see `Device::resolve`).
const ACCEPT_WAIT: Duration = Duration::from_millis(100);

impl Device {
    /// Finds the device a connection info names: in this process, or over
    /// a link (connecting one if none is up).
    fn resolve(&self, r: &ConnInfo, opts: &ConnectOpts) -> Result<Peer, Error> {
        let to = wire::Addr::decode(&r.gid).map_err(Error::InvalidAttr)?;
        let local = fabric().find(&r.gid);
        if let Some(dev) = local {
            return Ok(Peer {
                target: Target::Local(dev),
                addr: r.gid,
                qpn: r.qpn,
            });
        }
        let budget = link::ack_budget(opts.timeout, opts.retry_cnt);
        let lock = || self.shared.engine_outside();
        // The number of a device of this process that is not listed.
        let own = match to {
            wire::Addr::Unix { pid, id } if pid == std::process::id() => Some(id),
            _ => None,
        };
        let no_such =
            |id| Error::InvalidAttr(format!("no software device soft{id} in this process"));
        if let Some(id) = own {
            // A device of this process that is not listed is gone, unless
            // a connector of this process announced its address (a link is
            // up; the acceptor checked it is this process: that is how a
            // test poses as a device of another kind). Never connected to.
            let mut guard = lock();
            progress::adopt(&self.shared, &mut guard);
            if !guard.links.iter().any(|l| l.is_up() && l.peer == r.gid) {
                return Err(no_such(id));
            }
        }
        // A peer that connected to this device a moment ago (its QP was
        // connected first) may have its WELCOME while the acceptor thread
        // has not handed the link over yet: wait for that handover (briefly:
        // a stranger's slow handshake must not hold this up), or this side
        // would open a second link to the same peer, and answers and
        // requests would not share one.
        let wait_until = Instant::now() + ACCEPT_WAIT;
        // Acquire: pairs with the Release that ends a handshake (see
        // `Adopt::accepting`): a count seen at zero means the link it
        // adopted is in `pending` for the lookup below.
        while self.shared.accepting.load(Ordering::Acquire) > 0 && Instant::now() < wait_until {
            std::thread::yield_now();
        }
        let (fresh, existing) = {
            let mut guard = lock();
            let eng = &mut *guard;
            if eng.faults.dropped.contains(&r.gid) {
                return Err(Error::InvalidAttr(format!(
                    "software device {to} was dropped by fault injection"
                )));
            }
            progress::adopt(&self.shared, eng);
            // The knob is for a device of another process, and is spent
            // only by the link it makes (a connect that fails below puts
            // it back).
            let fresh = own.is_none() && std::mem::take(&mut eng.faults.fresh_link);
            let found = if fresh {
                None
            } else {
                eng.preferred_link(self.shared.addr, r.gid)
                    .or_else(|| {
                        eng.links
                            .iter()
                            .find(|l| l.is_up() && l.peer == r.gid)
                            .map(|l| l.id)
                    })
                    .and_then(|id| eng.links.iter_mut().find(|l| l.id == id))
                    .map(|l| {
                        if l.lower_timeout(budget) {
                            eng.stats.frames_sent += 1;
                        }
                        l.id
                    })
            };
            (fresh, found)
        };
        let id = match existing {
            Some(id) => id,
            None => {
                // (An address of this process: its link went meanwhile;
                // this process is never connected to.)
                if let Some(id) = own {
                    return Err(no_such(id));
                }
                // Connect without the engine lock (the handshake may take a
                // while); a link another QP made meanwhile is harmless.
                let made = link::connect(self.shared.addr, to, self.shared.shm_links)
                    .map_err(Error::InvalidAttr);
                let mut guard = lock();
                let added = made.and_then(|c| {
                    progress::add_link(&mut guard, r.gid, c, true)
                        .map(|l| {
                            l.timeout = budget;
                            l.id
                        })
                        .ok_or_else(|| {
                            Error::InvalidAttr(format!(
                                "software device {to} was dropped by fault injection"
                            ))
                        })
                });
                if added.is_err() && fresh {
                    guard.faults.fresh_link = true;
                }
                added?
            }
        };
        // The device thread must watch the new socket.
        self.shared.bell.ring();
        Ok(Peer {
            target: Target::Link(id),
            addr: r.gid,
            qpn: r.qpn,
        })
    }
}

impl Device {
    /// Whether the device's last pass kept answers back for a later one
    /// (see `Link::hold_answers` and `Link::defer_answers`).
    pub(crate) fn answers_held(&self) -> bool {
        // Relaxed: a hint for the thread that steps the device (the flag is
        // written at the end of its own passes); nothing is published
        // through it.
        self.shared.answers_held.load(Ordering::Relaxed)
    }

    pub(crate) fn wire_stats(&self) -> link::WireStats {
        let eng = self.shared.engine.lock().unwrap_or_else(|e| e.into_inner());
        link::WireStats {
            links: eng.links.len(),
            shm_links: eng
                .links
                .iter()
                .filter(|l| l.kind() == LinkKind::Shm)
                .count(),
            ..eng.stats
        }
    }

    pub(crate) fn links(&self) -> Vec<LinkInfo> {
        let eng = self.shared.engine.lock().unwrap_or_else(|e| e.into_inner());
        eng.links
            .iter()
            .filter(|l| l.is_up())
            .map(|l| LinkInfo {
                peer: wire::Addr::decode(&l.peer).map_or_else(|e| e, |a| a.to_string()),
                kind: l.kind(),
                outstanding: l.outstanding(),
            })
            .collect()
    }
}

/// The IPv4 address a device listening on 0.0.0.0 advertises: the first
/// non-loopback address of an interface that is up, else 127.0.0.1.
fn advertised_ip() -> Ipv4Addr {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Ipv4Addr::LOCALHOST;
    }
    let mut found = Ipv4Addr::LOCALHOST;
    let mut p = head;
    while !p.is_null() {
        // SAFETY: p is a node of the list getifaddrs returned.
        let ifa = unsafe { &*p };
        p = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_flags & libc::IFF_UP as u32 == 0 {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr of the family it names.
        let fam = unsafe { (*ifa.ifa_addr).sa_family };
        if i32::from(fam) != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
        let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        if !ip.is_loopback() {
            found = ip;
            break;
        }
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    found
}

/// What create_qp needs.
pub(crate) struct QpDesc {
    pub(crate) pd: u32,
    pub(crate) send_cq: u32,
    pub(crate) recv_cq: u32,
    pub(crate) srq: Option<u32>,
    pub(crate) caps: QpCaps,
    pub(crate) track: Arc<QpTrack>,
}

/// Queue memory the software device allocated for a resource (as libmlx5
/// does for a NIC), kept alive by the resource's handle until the device
/// has forgotten the queue.
pub(crate) struct QueueBufs {
    _bufs: Vec<DmaBuf>,
}
