//! The software device's state and tables: every device of the process
//! in one [`Fabric`] behind one lock (QPs, CQs, SRQs, memory regions,
//! async events: [`State`]), each device's I/O and scratch space behind its
//! own ([`Engine`]), and [`Shared`], what a device's handles, its progress
//! and the acceptor hold of it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::bell::Bell;
use super::link::{self, Link, WireStats};
use super::wire::Request;
use crate::cqe::{self, Cqe};
use crate::event::AsyncEvent;
use crate::prm::{Access, CQE_SIZE, QpState, Syndrome};
use crate::queue::{QpCaps, QpTrack, SrqMem};
use crate::wqe::{self, Sge};

/// A registered memory region as the device sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MrEntry {
    pub(crate) key: u32,
    pub(crate) pd: u32,
    pub(crate) addr: u64,
    pub(crate) len: u64,
    pub(crate) access: Access,
}

impl MrEntry {
    pub(crate) fn covers(&self, addr: u64, len: u64) -> bool {
        addr >= self.addr
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= self.addr + self.len)
    }
}

pub(crate) struct SoftCq {
    pub(crate) buf: *mut u8,
    pub(crate) n: u32,
    pub(crate) log_n: u32,
    pub(crate) dbrec: *const u32,
    pub(crate) pi: u32,
    pub(crate) overrun: Arc<AtomicBool>,
}

impl SoftCq {
    /// Writes a CQE as the NIC does: body, then `op_own` (`Release`).
    pub(crate) fn push(&mut self, c: &Cqe) {
        // SAFETY: dbrec points at the CQ's doorbell record (4-aligned).
        let ci_word = unsafe { AtomicU32::from_ptr(self.dbrec.cast_mut()) };
        // Acquire: pairs with the poller's Release; slots it consumed are free.
        let ci = u32::from_be(ci_word.load(Ordering::Acquire)) & 0x00ff_ffff;
        let used = self.pi.wrapping_sub(ci) & 0x00ff_ffff;
        if used >= self.n {
            // Relaxed: sticky flag; the poller reports it on its next poll.
            self.overrun.store(true, Ordering::Relaxed);
            return;
        }
        let owner = ((self.pi >> self.log_n) & 1) as u8;
        let bytes = cqe::encode(c, owner);
        let slot = (self.pi & (self.n - 1)) as usize * CQE_SIZE;
        // SAFETY: slot is inside the CQ buffer; the poller does not read
        // this CQE until op_own says it is software-owned.
        unsafe {
            let p = self.buf.add(slot);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, CQE_SIZE - 1);
            // Release: the body above is visible before the owner flips.
            AtomicU8::from_ptr(p.add(cqe::offset::OP_OWN))
                .store(bytes[cqe::offset::OP_OWN], Ordering::Release);
        }
        self.pi = self.pi.wrapping_add(1);
    }
}

pub(crate) struct SoftSrq {
    pub(crate) mem: SrqMem,
    /// WQEs consumed so far (free-running).
    pub(crate) ci: u32,
    /// Index of the next WQE to consume (following `next_wqe_index`).
    pub(crate) cur: u16,
}

/// How a QP reaches its peer device.
#[derive(Clone, Copy)]
pub(crate) enum Target {
    /// A device in this process: the responder phase runs in line, under
    /// the same lock.
    Local(DevRef),
    /// Over the link with this id (see [`super::link`]).
    Link(u64),
}

/// The remote end of a connected QP.
#[derive(Clone, Copy)]
pub(crate) struct Peer {
    pub(crate) target: Target,
    /// The peer device's address.
    pub(crate) addr: [u8; 16],
    pub(crate) qpn: u32,
}

/// A QP waiting to resend its oldest WQE: after an RNR NAK, or after a
/// request the responder dropped without an answer (a lost packet, as far
/// as the requester can tell).
pub(crate) struct Rnr {
    /// RNR NAKs of the WQE so far (against `rnr_retry`).
    pub(crate) attempts: u32,
    /// Unanswered sends of the WQE so far (against `retry_cnt`).
    pub(crate) lost: u32,
    pub(crate) next: Instant,
}

pub(crate) struct SoftQp {
    pub(crate) qpn: u32,
    /// Which QP of this device's life this is (a destroyed QP's number is
    /// reused): what a request in flight names it by.
    pub(crate) incarnation: u64,
    pub(crate) pd: u32,
    pub(crate) state: QpState,
    pub(crate) track: Arc<QpTrack>,
    pub(crate) send_cq: u32,
    pub(crate) recv_cq: u32,
    pub(crate) srq: Option<u32>,
    pub(crate) caps: QpCaps,
    pub(crate) sq_buf: *mut u8,
    pub(crate) sq_cnt: u32,
    /// WQEBB position the device has consumed up to (free-running).
    pub(crate) sq_ci: u32,
    pub(crate) rq_buf: *mut u8,
    pub(crate) rq_cnt: u32,
    pub(crate) rq_stride: u32,
    pub(crate) rq_ci: u32,
    pub(crate) dbrec: *mut u32,
    pub(crate) access: Access,
    pub(crate) peer: Option<Peer>,
    pub(crate) min_rnr_timer: u8,
    pub(crate) rnr_retry: u8,
    /// Transport retries and the local ACK timeout of one try (RTS).
    pub(crate) retry_cnt: u8,
    pub(crate) ack_timeout: Duration,
    pub(crate) rnr: Option<Rnr>,
    /// WQEBB position sent up to (ahead of `sq_ci` while requests to a
    /// remote device are in flight).
    pub(crate) sq_sent: u32,
    /// Next request sequence number this QP sends / expects to receive.
    pub(crate) psn: u32,
    pub(crate) epsn: u32,
    /// Carried by every REQ and echoed by its RESP: unique on this device
    /// per QP creation and RESET, so answers to a destroyed QP that had
    /// this number, or to this QP before a RESET, are ignored.
    pub(crate) epoch: u32,
    /// Requests sent over a link and not yet answered, oldest first, and
    /// the scatter lists of the READs and atomics among them.
    pub(crate) inflight: VecDeque<Inflight>,
    pub(crate) inflight_sges: VecDeque<Sge>,
    /// Fault injection: complete the next WQE with this syndrome.
    pub(crate) fail_next: Option<Syndrome>,
    /// Fault injection: act as if no receive WQE were posted (RNR).
    pub(crate) withhold_recv: bool,
    /// A WQE that completes locally waits behind `inflight`, and the link
    /// was asked for the answers (`wire::K_ACKREQ`); cleared once nothing
    /// is in flight (or an RNR NAK rewinds the queue).
    pub(crate) answers_asked: bool,
}

impl SoftQp {
    pub(crate) fn set_state(&mut self, s: QpState) {
        self.state = s;
        self.track.set_state(s);
    }

    /// The SQ producer counter (low 16 bits) from the doorbell record.
    pub(crate) fn sq_pi(&self) -> u16 {
        // SAFETY: word 1 of the QP's doorbell record.
        let w = unsafe { AtomicU32::from_ptr(self.dbrec.add(1)) };
        // Acquire: pairs with the poster's Release; WQEs are visible.
        u32::from_be(w.load(Ordering::Acquire)) as u16
    }

    /// The first 8 bytes of the WQEBB at free-running position `pos`.
    pub(crate) fn ctrl_words(&self, pos: u32) -> (u32, u32) {
        let off = (pos & (self.sq_cnt - 1)) as usize * wqe::WQEBB;
        let mut b = [0u8; 8];
        // SAFETY: off is inside the SQ buffer; 8 bytes of a WQEBB.
        unsafe { std::ptr::copy_nonoverlapping(self.sq_buf.add(off), b.as_mut_ptr(), 8) };
        (
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        )
    }

    /// The opcode byte of the control segment at `pos` (what a requester
    /// error CQE reports in the top byte of `s_wqe_opcode_qpn`).
    pub(crate) fn wqe_opcode(&self, pos: u32) -> u8 {
        self.ctrl_words(pos).0 as u8
    }

    /// Whether the WQEBB at `pos` opens a WQE posted there: its control
    /// segment names this position, this QP, opmod 0 and a non-zero `ds`.
    pub(crate) fn starts_wqe(&self, pos: u32) -> bool {
        let (w0, w1) = self.ctrl_words(pos);
        (w0 >> 8) as u16 == pos as u16 && w0 >> 24 == 0 && w1 >> 8 == self.qpn && w1 & 0x3f != 0
    }

    /// The WQEBBs the WQE at `pos` occupies as far as the device is
    /// concerned: what its `ds` claims (`claimed`, 0 when the control
    /// segment is not trustworthy), but never past the posted WQEBBs
    /// (`posted`) and never over the control segment of a later posted
    /// WQE. So a WQE that lies about its size (or is garbage) never hides
    /// the next one: that one still executes or is flushed, and its poster
    /// gets its completion.
    pub(crate) fn span(&self, pos: u32, claimed: u32, posted: u32) -> u32 {
        let limit = if claimed == 0 {
            posted
        } else {
            claimed.min(posted)
        };
        (1..limit)
            .find(|&b| self.starts_wqe(pos.wrapping_add(b)))
            .unwrap_or(limit)
            .max(1)
    }

    /// The RQ producer counter (low 16 bits) from the doorbell record.
    pub(crate) fn rq_pi(&self) -> u16 {
        // SAFETY: word 0 of the QP's doorbell record.
        let w = unsafe { AtomicU32::from_ptr(self.dbrec) };
        // Acquire: pairs with the poster's Release; WQEs are visible.
        u32::from_be(w.load(Ordering::Acquire)) as u16
    }
}

/// Everything the device knows, behind one lock.
#[derive(Default)]
pub(crate) struct State {
    /// Asynchronous events not yet taken ([`crate::event`]), and the
    /// condition variable a waiter for one sleeps on (with this lock).
    pub(crate) events: VecDeque<AsyncEvent>,
    pub(crate) events_cv: Arc<Condvar>,
    /// Whether `events` may hold something: lets a poll for events skip
    /// the lock when there are none (it is asked on every idle poll).
    pub(crate) has_events: Arc<AtomicBool>,
    /// `Shared::kick`, set by doorbells, by changes to the device's state
    /// outside a pass and, through this copy, by a pass of another device
    /// of this process that executed a request on this one (see
    /// `Engine::quiet`).
    pub(crate) kick: Arc<AtomicBool>,
    pub(crate) next_pd: u32,
    /// The last [`SoftQp::incarnation`] given out.
    pub(crate) next_incarnation: u64,
    /// The next [`SoftQp::epoch`] (0 for the device's first QP).
    pub(crate) next_epoch: u32,
    pub(crate) mrs: Vec<Option<MrEntry>>,
    pub(crate) mr_gen: Vec<u8>,
    pub(crate) cqs: Vec<Option<SoftCq>>,
    pub(crate) qps: Vec<Option<SoftQp>>,
    pub(crate) srqs: Vec<Option<SoftSrq>>,
}

// SAFETY: the raw pointers in State point into buffers whose owners remove
// the entries (under this lock) before freeing them.
unsafe impl Send for State {}

/// The first QPN (QPNs are 24-bit; small ones look reserved on hardware).
pub(crate) const QPN_BASE: u32 = 0x100;

impl State {
    /// An epoch no QP of this device had (until 2^32 creations and resets).
    pub(crate) fn fresh_epoch(&mut self) -> u32 {
        let e = self.next_epoch;
        self.next_epoch = e.wrapping_add(1);
        e
    }

    pub(crate) fn qp(&mut self, qpn: u32) -> Option<&mut SoftQp> {
        let i = qpn.checked_sub(QPN_BASE)? as usize;
        self.qps.get_mut(i)?.as_mut()
    }

    pub(crate) fn cq(&mut self, cqn: u32) -> Option<&mut SoftCq> {
        self.cqs.get_mut(cqn.checked_sub(1)? as usize)?.as_mut()
    }

    pub(crate) fn srq(&mut self, srqn: u32) -> Option<&mut SoftSrq> {
        self.srqs.get_mut(srqn.checked_sub(1)? as usize)?.as_mut()
    }

    /// The region `key` names if it belongs to `pd` and covers the range.
    pub(crate) fn mr(&self, key: u32, pd: u32, addr: u64, len: u64) -> Option<MrEntry> {
        let i = (key >> 8).checked_sub(1)? as usize;
        let e = (*self.mrs.get(i)?)?;
        (e.key == key && e.pd == pd && e.covers(addr, len)).then_some(e)
    }

    /// Queues an asynchronous event (dropping the oldest beyond
    /// [`crate::event::MAX_QUEUED`]) and wakes a waiter.
    pub(crate) fn event(&mut self, e: AsyncEvent) {
        if self.events.len() >= crate::event::MAX_QUEUED {
            self.events.pop_front();
        }
        self.events.push_back(e);
        // Release: the push is visible to whoever sees the flag and then
        // takes the lock (the lock orders it anyway; the flag is a hint).
        self.has_events.store(true, Ordering::Release);
        self.events_cv.notify_all();
    }

    /// Moves QP `qpn` to ERROR (its work is flushed by the next pass). A QP
    /// attached to an SRQ entering ERROR raises
    /// [`AsyncEvent::QpLastWqeReached`], as ConnectX does.
    pub(crate) fn qp_to_error(&mut self, qpn: u32) {
        let Some(qp) = self.qp(qpn) else { return };
        let was = qp.state;
        qp.set_state(QpState::Error);
        if was != QpState::Error && qp.srq.is_some() {
            self.event(AsyncEvent::QpLastWqeReached { qpn });
        }
    }

    /// Writes `c` to CQ `cqn` (a destroyed CQ drops it: its QPs are gone).
    pub(crate) fn push_cqe(&mut self, cqn: u32, c: &Cqe) {
        if let Some(cq) = self.cq(cqn) {
            cq.push(c);
        }
        crate::trace::ev(crate::trace::Ev::Cqe);
    }
}

pub(crate) fn insert<T>(v: &mut Vec<Option<T>>, t: T) -> usize {
    match v.iter().position(Option::is_none) {
        Some(i) => {
            v[i] = Some(t);
            i
        }
        None => {
            v.push(Some(t));
            v.len() - 1
        }
    }
}

/// What other devices (and the device thread) share.
pub(crate) struct Shared {
    pub(crate) id: u64,
    /// The device address (see [`super::wire::Addr`]).
    pub(crate) addr: [u8; 16],
    /// Unix-address devices bind their socket when first asked for their
    /// address; tcp ones at open.
    pub(crate) listening: Mutex<bool>,
    /// Connections the acceptor thread handed over, not yet adopted.
    pub(crate) pending: Mutex<Vec<([u8; 16], link::Conn)>>,
    /// Whether `pending` may hold something (spares the hot path a lock).
    pub(crate) has_pending: AtomicBool,
    /// Whether the last pass of a manual device kept answers back for the
    /// next one (see `Link::defer_answers`; spares `answers_held` the
    /// engine's lock).
    pub(crate) answers_held: AtomicBool,
    /// Handshakes the acceptor thread is in, for this device: a connector
    /// may already have its WELCOME while the link is not yet in `pending`.
    pub(crate) accepting: AtomicUsize,
    pub(crate) manual: bool,
    /// Links to devices of this host use shared-memory rings (unless
    /// `MLX5_SOFT_LINK=socket`).
    pub(crate) shm_links: bool,
    /// Where this device's [`State`] lives in the [`Fabric`].
    pub(crate) dev: DevRef,
    /// `State::has_events`, readable without the lock.
    pub(crate) lock_free_events: Arc<AtomicBool>,
    /// Something may have given the device work since its last full pass:
    /// a doorbell, a change of its state outside a pass, a request another
    /// device of this process executed on it. A pass that finds the device
    /// quiet (see `Engine::quiet`) and this unset returns at once.
    pub(crate) kick: Arc<AtomicBool>,
    pub(crate) engine: Mutex<Engine>,
    pub(crate) bell: Arc<Bell>,
}

impl Shared {
    /// This device's state, with the fabric locked, outside a progress
    /// pass: whatever the caller changes, the next pass looks at all of it
    /// (the guard kicks the device as it unlocks).
    pub(crate) fn lock(&self) -> StateGuard {
        StateGuard {
            fabric: fabric(),
            dev: self.dev,
            kick: Some(self.kick.clone()),
        }
    }

    /// This device's state, with the fabric locked, for a progress pass.
    pub(crate) fn lock_in_pass(&self) -> StateGuard {
        StateGuard {
            fabric: fabric(),
            dev: self.dev,
            kick: None,
        }
    }

    /// The engine, locked outside a progress pass: a change to its links
    /// is work for the next pass (the guard kicks the device as it
    /// unlocks).
    pub(crate) fn engine_outside(&self) -> EngineGuard<'_> {
        EngineGuard {
            engine: self.engine.lock().unwrap_or_else(|e| e.into_inner()),
            kick: &self.kick,
        }
    }

    pub(crate) fn is_manual(&self) -> bool {
        self.manual
    }

    pub(crate) fn take_pending(&self) -> Vec<([u8; 16], link::Conn)> {
        // Acquire: pairs with adopt's Release. Cleared before taking, so a
        // connection pushed meanwhile sets it again.
        // Relaxed load first: the common case (nothing pending) costs no
        // locked instruction.
        if !self.has_pending.load(Ordering::Relaxed)
            || !self.has_pending.swap(false, Ordering::Acquire)
        {
            return Vec::new();
        }
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Every software device of this process: their [`State`] behind one lock.
/// A WQE between two devices of this process executes under it once (the
/// requester's phases and the responder's, in line), and a progress pass
/// takes it once for all the frames it receives and the WQEs it executes:
/// no lock per WQE, and no order between two devices' locks to keep. A
/// device's [`Engine`] (its links and buffers) has its own lock, always
/// taken before this one. A pass reads its links with this lock held (a
/// socket `read`, or copies out of a shared-memory ring, at most
/// `link::RX_PASS` bytes per link) and writes them after releasing it; so
/// on a device with links, another thread's control call (creating a QP,
/// an async event) can wait for a pass's reads.
pub(crate) struct Fabric {
    pub(crate) slots: Vec<Option<Slot>>,
}

/// A device's place in the [`Fabric`].
pub(crate) struct Slot {
    pub(crate) id: u64,
    pub(crate) addr: [u8; 16],
    /// Found by address (false once its `Device` is dropped: nobody can
    /// connect to it, but requests in flight still reach it).
    pub(crate) listed: bool,
    pub(crate) bell: Arc<Bell>,
    pub(crate) state: State,
}

/// Names a device's [`State`] in the [`Fabric`]: its slot, and its id (a
/// slot is reused once its device is gone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DevRef {
    pub(crate) slot: usize,
    pub(crate) id: u64,
}

static FABRIC: Mutex<Fabric> = Mutex::new(Fabric { slots: Vec::new() });

/// Locks the fabric. A panic elsewhere cannot leave a device's state
/// half-updated in a way later passes trip over (each step is one WQE), so
/// a poisoned lock is used as is.
pub(crate) fn fabric() -> MutexGuard<'static, Fabric> {
    FABRIC.lock().unwrap_or_else(|e| e.into_inner())
}

impl Fabric {
    pub(crate) fn insert(
        &mut self,
        id: u64,
        addr: [u8; 16],
        bell: Arc<Bell>,
        state: State,
    ) -> DevRef {
        let slot = Slot {
            id,
            addr,
            listed: true,
            bell,
            state,
        };
        let i = insert(&mut self.slots, slot);
        DevRef { slot: i, id }
    }

    pub(crate) fn slot(&mut self, d: DevRef) -> Option<&mut Slot> {
        self.slots
            .get_mut(d.slot)?
            .as_mut()
            .filter(|s| s.id == d.id)
    }

    /// The state of device `d`, if it is still there.
    pub(crate) fn state(&mut self, d: DevRef) -> Option<&mut State> {
        self.slot(d).map(|s| &mut s.state)
    }

    /// Kicks device `d` out of quiet and wakes its progress (lock-free;
    /// harmless if it is gone).
    pub(crate) fn ring(&mut self, d: DevRef) {
        if let Some(s) = self.slot(d) {
            // Relaxed: the fabric's lock, held, publishes what changed
            // (see `StateGuard`).
            s.state.kick.swap(true, Ordering::Relaxed);
            s.bell.ring();
        }
    }

    /// The listed device with address `addr`.
    pub(crate) fn find(&self, addr: &[u8; 16]) -> Option<DevRef> {
        self.slots.iter().enumerate().find_map(|(i, s)| {
            s.as_ref()
                .filter(|s| s.listed && s.addr == *addr)
                .map(|s| DevRef { slot: i, id: s.id })
        })
    }
}

/// A device's [`State`] with the fabric locked (see [`Shared::lock`]).
pub(crate) struct StateGuard {
    pub(crate) fabric: MutexGuard<'static, Fabric>,
    pub(crate) dev: DevRef,
    /// Set as the guard goes, outside a pass (see [`Shared::lock`]).
    kick: Option<Arc<AtomicBool>>,
}

impl Drop for StateGuard {
    fn drop(&mut self) {
        if let Some(k) = &self.kick {
            // Relaxed, before the fabric unlocks (the fields drop after
            // this): a pass that sees the kick takes the fabric's lock
            // after this holder's changes; one that does not sees it at
            // its next pass. A swap (as every kick is) keeps a doorbell's
            // release sequence unbroken (see `Doorbell::ring_sq`).
            k.swap(true, Ordering::Relaxed);
        }
    }
}

/// The engine locked outside a pass (see [`Shared::engine_outside`]).
pub(crate) struct EngineGuard<'a> {
    engine: MutexGuard<'a, Engine>,
    kick: &'a AtomicBool,
}

impl Drop for EngineGuard<'_> {
    fn drop(&mut self) {
        // Relaxed, with the engine still locked (passes run under that
        // lock): as for `StateGuard`.
        self.kick.swap(true, Ordering::Relaxed);
    }
}

impl std::ops::Deref for EngineGuard<'_> {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

impl std::ops::DerefMut for EngineGuard<'_> {
    fn deref_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }
}

impl std::ops::Deref for StateGuard {
    type Target = State;
    fn deref(&self) -> &State {
        let s = self.fabric.slots[self.dev.slot].as_ref();
        &s.expect("a device's state lives as long as the device")
            .state
    }
}

impl std::ops::DerefMut for StateGuard {
    fn deref_mut(&mut self) -> &mut State {
        let s = self.fabric.slots[self.dev.slot].as_mut();
        &mut s
            .expect("a device's state lives as long as the device")
            .state
    }
}

impl link::Adopt for Shared {
    /// A connection accepted for this device (the acceptor thread).
    fn adopt(&self, from: [u8; 16], c: link::Conn) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((from, c));
        // Release: the push above is visible to whoever sees the flag.
        self.has_pending.store(true, Ordering::Release);
        self.bell.ring();
    }

    fn takes_shm(&self) -> bool {
        self.shm_links
    }

    fn accepting(&self, started: bool) {
        // Release/Acquire: a `resolve` that sees the count back at zero
        // sees the `pending` push before it.
        if started {
            self.accepting.fetch_add(1, Ordering::AcqRel);
        } else {
            self.accepting.fetch_sub(1, Ordering::Release);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Never dropped with the fabric locked: nothing holds an
        // `Arc<Shared>` while it does.
        let mut f = fabric();
        if f.slot(self.dev).is_some() {
            f.slots[self.dev.slot] = None;
        }
    }
}

/// Per-device scratch space, reused so execution allocates only when a
/// payload is larger than any before it.
#[derive(Default)]
pub(crate) struct Engine {
    pub(crate) work: Vec<u32>,
    /// The WQE phase 1 is decoding.
    pub(crate) wqe: super::requester::Wqe,
    /// A WQE's inline payload, or its gathered one where a copy is needed.
    pub(crate) scratch: Vec<u8>,
    /// A WQE's gather list, validated and not yet copied: (address, bytes).
    pub(crate) segs: Vec<(u64, u32)>,
    pub(crate) resp: Vec<u8>,
    pub(crate) sges: Vec<Sge>,
    pub(crate) frames: Vec<(u8, usize, usize)>,
    pub(crate) dead: Vec<u64>,
    /// The earliest timer (RNR retry, delayed frames, answer deadline):
    /// background mode sleeps until it.
    pub(crate) next_timer: Option<Instant>,
    /// The last full pass found nothing to do and left nothing pending,
    /// and no QP is in ERROR on a receive queue of its own:
    /// until the device is kicked, a record arrives on one of its links,
    /// a connection waits to be adopted or the deadline here passes, a
    /// pass has nothing to do either and returns at once (`Some(None)`:
    /// no deadline). A pass on an idle device then costs a few loads, not
    /// a walk over its QPs and links.
    pub(crate) quiet: Option<Option<Instant>>,
    /// The passes' clock (`lazyclock`: reused for a few TSC ticks).
    pub(crate) clock: lazyclock::LazyClock,
    /// Sockets to devices in other processes.
    pub(crate) links: Vec<Link>,
    pub(crate) next_link: u64,
    /// Two links to one peer came up at some point (both devices connected
    /// at once): QPs then send on the preferred one ([`Engine::preferred_link`]).
    pub(crate) dup_links: bool,
    pub(crate) stats: WireStats,
    pub(crate) faults: FaultState,
}

/// Device-wide fault injection state (the knobs are in `faults.rs`).
#[derive(Default)]
pub(crate) struct FaultState {
    /// Peer devices treated as gone.
    pub(crate) dropped: Vec<[u8; 16]>,
    /// Hold every frame sent for this long.
    pub(crate) delay: Duration,
    /// Hold plain ACKs nobody waits for this long (`None`: `ACK_HOLD`).
    pub(crate) ack_hold: Option<Duration>,
    /// The next connect opens a link of its own.
    pub(crate) fresh_link: bool,
}

impl Engine {
    /// Of the links up to `peer`, the one both devices send on: the one
    /// whose connector has the lower address (this device's own when its
    /// address is the lower), so that a device's requests and its answers
    /// to the peer's share records. `None` when no such link is up.
    pub(crate) fn preferred_link(&self, me: [u8; 16], peer: [u8; 16]) -> Option<u64> {
        let outgoing = me < peer;
        self.links
            .iter()
            .filter(|l| l.is_up() && l.peer == peer && l.outgoing == outgoing)
            .map(|l| l.id)
            .min()
    }

    /// Sockets the sleeping device thread must watch; shared-memory links
    /// are told that it is about to sleep (see [`super::shm`]).
    pub(crate) fn poll_fds(&mut self, fds: &mut Vec<libc::pollfd>) {
        for l in &mut self.links {
            l.announce_sleep();
            if let Some(fd) = l.fd() {
                let out = if l.wants_write() { libc::POLLOUT } else { 0 };
                fds.push(libc::pollfd {
                    fd,
                    events: libc::POLLIN | out,
                    revents: 0,
                });
            }
        }
    }

    /// The device thread woke up: same-host peers stop waking it.
    pub(crate) fn awake(&mut self) {
        for l in &mut self.links {
            l.awake();
        }
    }
}

/// The requester-side bookkeeping of a WQE in flight.
pub(crate) struct Inflight {
    /// Identifies the QP across phases (a destroyed QP's number can be
    /// reused by a new QP while a WQE is in flight): its
    /// [`super::SoftQp::incarnation`].
    pub(crate) incarnation: u64,
    pub(crate) req: Request,
    pub(crate) index: u16,
    pub(crate) wqebbs: u32,
    pub(crate) flags: u8,
    /// Its scatter entries in the QP's `inflight_sges` (READ, atomics).
    pub(crate) nsges: usize,
}

/// IB RNR NAK timer encoding (0..=31) in microseconds.
pub(crate) fn rnr_delay(code: u8) -> Duration {
    const US: [u32; 32] = [
        655_360, 10, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1_280, 1_920, 2_560,
        3_840, 5_120, 7_680, 10_240, 15_360, 20_480, 30_720, 40_960, 61_440, 81_920, 122_880,
        163_840, 245_760, 327_680, 491_520,
    ];
    Duration::from_micros(u64::from(US[usize::from(code & 31)]))
}

/// WQEBBs a WQE of `ds` segments spans (at least one, also for ds = 0).
pub(crate) fn wqebbs_of(ds: usize) -> u32 {
    wqe::wqebbs(ds).max(1) as u32
}
