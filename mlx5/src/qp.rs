//! Reliable-connected queue pairs: creation, the RC state machine, posting
//! WQEs and ringing the doorbell. (What a QP is created and connected with,
//! and the completion tracking it shares with its CQs, are the `queue`
//! seam's.)
//!
//! | word | written by | when |
//! |---|---|---|
//! | SQ WQEBBs | software | before the doorbell record; never while the device owns them |
//! | doorbell record word 1 (SQ, be32 `pi & 0xffff`) | software | after the WQEs, `Release` |
//! | doorbell (UAR/BlueFlame, or the soft device's bell) | software | after the record |
//! | RQ WQEs, doorbell record word 0 (RQ counter) | software | WQE first, counter `Release` |
//! | `queue::QpTrack` (ours) | CQ poller | completed WQE index / receives consumed, `Release` |
//!
//! A send WQE's space returns when a completion for it, or for any later
//! WQE of the same QP, is polled: unsignaled WQEs are retired by the next
//! signaled one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::backend::{Doorbell, QpHandle, QpSpec};
use crate::cq::{Cq, CqShared, Route};
use crate::error::Error;
use crate::mr::{Pd, PdInner};
use crate::prm::{QpState, SEG, WQEBB};
use crate::queue::{COMPLETED_VALID, ConnInfo, ConnectOpts, QpCaps, QpMem, QpTrack};
use crate::srq::{Srq, SrqShared};
use crate::wqe::sealed::Sealed as _;
use crate::wqe::{self, Limits, Nop, Sge, Slot, SqRing, WqeBuild, write_sges};

struct QpShared {
    pd: Arc<PdInner>,
    send_cq: Arc<CqShared>,
    recv_cq: Arc<CqShared>,
    srq: Option<Arc<SrqShared>>,
    qpn: u32,
    caps: QpCaps,
    track: Arc<QpTrack>,
    mem: QpMem,
    handle: QpHandle,
}

impl Drop for QpShared {
    fn drop(&mut self) {
        self.send_cq.remove_route(self.qpn);
        self.recv_cq.remove_route(self.qpn);
        self.pd.ctx.inner.backend.destroy_qp(self.qpn, &self.handle);
    }
}

/// Builder for an RC QP.
pub struct QpBuilder<'a> {
    pd: &'a Pd,
    send_cq: &'a Cq,
    recv_cq: &'a Cq,
    srq: Option<&'a Srq>,
    caps: QpCaps,
}

impl<'a> QpBuilder<'a> {
    /// Receive through this SRQ instead of a private receive queue.
    pub fn srq(mut self, srq: &'a Srq) -> Self {
        self.srq = Some(srq);
        self
    }
    /// Queue sizes and limits.
    pub fn caps(mut self, caps: QpCaps) -> Self {
        self.caps = caps;
        self
    }
    /// Creates the QP (in RESET).
    pub fn build(self) -> Result<Qp, Error> {
        Qp::create(self)
    }
}

/// Producer state of the send queue (owned by the `Qp`, never shared).
struct SqState {
    ring: SqRing,
    /// The SQ buffer (`QpMem::sq_buf`).
    buf: *mut u8,
    /// What a WQE may be, from the caps (fixed at creation).
    limits: Limits,
    /// `qpn << 8`: the control segment's QPN word before its `ds`.
    qpn8: u32,
    /// WQEBBs of the WQE starting at each slot (to retire by WQE index).
    /// As long as the ring (`SqRing::index` is in bounds).
    sizes: Box<[u8]>,
    /// WQEs written since the last doorbell, and the last one's position.
    /// `pi` at the last doorbell: WQEs from there on are pending.
    rung: u32,
    last_at: u32,
}

impl SqState {
    /// WQEBBs of the WQE (or padding) posted at `pos`.
    fn size_at(&self, pos: u32) -> u8 {
        self.sizes[self.ring.index(pos)]
    }
}

/// An RC queue pair. Posting needs `&mut self` (one producer); move it to
/// the thread that posts. It keeps its PD, CQs and SRQ alive.
pub struct Qp {
    shared: QpShared,
    bell: Doorbell,
    sq: SqState,
    rq_head: u32,
    local_psn: u32,
}

// SAFETY: the raw pointers in QpShared/QpMem point into buffers the Qp owns
// (or rdma-core owns for the Qp's lifetime); only &mut Qp writes them.
unsafe impl Send for Qp {}
// SAFETY: &Qp methods only read immutable fields and atomics.
unsafe impl Sync for Qp {}

impl std::fmt::Debug for Qp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qp")
            .field("qpn", &self.shared.qpn)
            .field("state", &self.state())
            .finish()
    }
}

/// Index of a posted WQE: what its completion reports as `wqe_counter`.
pub type WqeIndex = u16;

impl Qp {
    /// Starts building an RC QP on `pd` completing sends on `send_cq` and
    /// receives on `recv_cq`.
    pub fn builder<'a>(pd: &'a Pd, send_cq: &'a Cq, recv_cq: &'a Cq) -> QpBuilder<'a> {
        QpBuilder {
            pd,
            send_cq,
            recv_cq,
            srq: None,
            caps: QpCaps::default(),
        }
    }

    fn create(b: QpBuilder<'_>) -> Result<Qp, Error> {
        let QpBuilder {
            pd,
            send_cq,
            recv_cq,
            srq,
            mut caps,
        } = b;
        caps.validate()?;
        let ctx = &pd.inner.ctx;
        if !ctx.same_device(&send_cq.shared.ctx) || !ctx.same_device(&recv_cq.shared.ctx) {
            return Err(Error::Mismatch("CQ of another device"));
        }
        if let Some(s) = srq {
            if !Arc::ptr_eq(&s.shared.pd, &pd.inner) {
                return Err(Error::Mismatch("SRQ of another protection domain"));
            }
            caps.max_recv_wr = 0;
            caps.max_recv_sge = 0;
        }
        let track = Arc::new(QpTrack::new());
        // `caps` becomes what the device made (a NIC's provider rounds up).
        let (handle, mem, qpn, bell) = ctx.inner.backend.create_qp(
            QpSpec {
                pd: &pd.inner.handle,
                send_cq: (&send_cq.shared.handle, send_cq.shared.cqn),
                recv_cq: (&recv_cq.shared.handle, recv_cq.shared.cqn),
                srq: srq.map(|s| (&s.shared.handle, s.shared.srqn)),
                track: &track,
            },
            &mut caps,
        )?;
        let shared = QpShared {
            pd: pd.inner.clone(),
            send_cq: send_cq.shared.clone(),
            recv_cq: recv_cq.shared.clone(),
            srq: srq.map(|s| s.shared.clone()),
            qpn,
            caps,
            track: track.clone(),
            mem,
            handle,
        };
        let route = Route {
            qpn,
            track,
            srq: shared.srq.as_ref().map(|s| s.track.clone()),
        };
        shared.send_cq.add_route(route.clone());
        if !Arc::ptr_eq(&shared.send_cq, &shared.recv_cq) {
            shared.recv_cq.add_route(route);
        }
        let sq_cnt = shared.mem.sq_wqe_cnt;
        let sq_buf = shared.mem.sq_buf;
        let limits = Limits::new(caps.max_inline, caps.max_send_sge, caps.max_ds());
        Ok(Qp {
            shared,
            bell,
            sq: SqState {
                ring: SqRing::new(sq_cnt),
                buf: sq_buf,
                limits,
                qpn8: qpn << 8,
                sizes: vec![0u8; sq_cnt as usize].into_boxed_slice(),
                rung: 0,
                last_at: 0,
            },
            rq_head: 0,
            // Any 24-bit value works; derive one from the QPN so two QPs
            // rarely start equal (it helps when reading packet traces).
            local_psn: qpn.wrapping_mul(0x9e37_79b9) & 0x00ff_ffff,
        })
    }

    pub(crate) fn context(&self) -> &crate::Context {
        &self.shared.pd.ctx
    }

    /// The QP number.
    pub fn qpn(&self) -> u32 {
        self.shared.qpn
    }

    /// The QP's limits: on hardware what `ibv_create_qp` made of the caps
    /// asked for (the provider rounds queue sizes, receive SGEs and the
    /// inline size up; a QP on an SRQ has 0 receive WQEs and SGEs); on the
    /// software device the caps asked for (0 receive WQEs and SGEs with an
    /// SRQ).
    pub fn caps(&self) -> QpCaps {
        self.shared.caps
    }

    /// The current state: what this QP last did, or what the device did to
    /// it (an error completion, seen by the device or by a poll).
    pub fn state(&self) -> QpState {
        let s = &self.shared;
        s.pd.ctx.inner.backend.qp_state(&s.handle, &s.track)
    }

    /// What a peer needs to connect to this QP.
    pub fn local_info(&self, opts: &ConnectOpts) -> Result<ConnInfo, Error> {
        let (lid, gid) = self.shared.pd.ctx.inner.backend.port_addr(opts)?;
        Ok(ConnInfo {
            qpn: self.shared.qpn,
            psn: self.local_psn,
            lid,
            gid,
        })
    }

    fn modify(
        &mut self,
        to: QpState,
        remote: Option<&ConnInfo>,
        opts: &ConnectOpts,
    ) -> Result<(), Error> {
        let from = self.state();
        let ok = matches!(
            (from, to),
            (QpState::Reset, QpState::Init)
                | (QpState::Init, QpState::Init)
                | (QpState::Init, QpState::Rtr)
                | (QpState::Rtr, QpState::Rts)
                | (QpState::Rts, QpState::Rts)
                | (_, QpState::Error)
                | (_, QpState::Reset)
        );
        if !ok {
            return Err(Error::InvalidTransition {
                qpn: self.shared.qpn,
                from,
                to,
            });
        }
        let s = &self.shared;
        s.pd.ctx.inner.backend.modify_qp(
            s.qpn,
            &s.handle,
            &s.track,
            to,
            remote,
            opts,
            self.local_psn,
        )?;
        if to == QpState::Reset {
            // The queues start over, as verbs does on RESET.
            self.shared.track.reset();
            self.sq.ring = SqRing::new(self.shared.mem.sq_wqe_cnt);
            self.sq.rung = 0;
            self.sq.last_at = 0;
            self.rq_head = 0;
        }
        Ok(())
    }

    /// RESET → INIT: receives may be posted; `opts.access` is what peers may
    /// do to this QP's memory.
    pub fn to_init(&mut self, opts: &ConnectOpts) -> Result<(), Error> {
        self.modify(QpState::Init, None, opts)
    }

    /// INIT → RTR: bind to the remote QP described by `remote`.
    pub fn to_rtr(&mut self, remote: &ConnInfo, opts: &ConnectOpts) -> Result<(), Error> {
        self.modify(QpState::Rtr, Some(remote), opts)
    }

    /// RTR → RTS: sends may be posted.
    pub fn to_rts(&mut self, opts: &ConnectOpts) -> Result<(), Error> {
        self.modify(QpState::Rts, None, opts)
    }

    /// RESET (or INIT) → INIT → RTR → RTS against `remote`.
    pub fn connect(&mut self, remote: &ConnInfo, opts: &ConnectOpts) -> Result<(), Error> {
        if self.state() == QpState::Reset {
            self.to_init(opts)?;
        }
        self.to_rtr(remote, opts)?;
        self.to_rts(opts)
    }

    /// Moves the QP to the error state: every outstanding and later WQE
    /// completes with a flush error.
    pub fn to_error(&mut self) -> Result<(), Error> {
        self.modify(QpState::Error, None, &ConnectOpts::default())
    }

    /// Back to RESET: queues emptied, QP reusable (after draining its CQs).
    pub fn reset(&mut self) -> Result<(), Error> {
        self.modify(QpState::Reset, None, &ConnectOpts::default())
    }

    /// Send-queue WQEBBs free (after retiring what completions allow).
    pub fn sq_free(&mut self) -> u32 {
        self.retire();
        self.sq.ring.free()
    }

    fn retire(&mut self) {
        // Acquire: pairs with QpTrack::send_completed.
        let c = self.shared.track.completed.load(Ordering::Acquire);
        if c & COMPLETED_VALID == 0 {
            return;
        }
        let idx = c as u16;
        let pi = self.sq.ring.pi();
        let back = (pi as u16).wrapping_sub(idx) as u32;
        let ci_now = self.sq.ring.ci();
        if back == 0 || back > pi.wrapping_sub(ci_now) {
            return; // stale: already retired past it
        }
        let pos = pi.wrapping_sub(back);
        let size = u32::from(self.sq.size_at(pos)).max(1);
        let new_ci = pos.wrapping_add(size);
        if new_ci.wrapping_sub(ci_now) <= pi.wrapping_sub(ci_now) {
            self.sq.ring.retire(new_ci);
        }
    }

    /// Writes `w` into the send queue (after a NOP that pads to the ring
    /// end if it would not fit before it) and returns its WQE index. The
    /// device sees it at the next [`Qp::ring_doorbell`]. Allowed in RTS, and
    /// in ERROR (where it completes with a flush error).
    #[inline(always)]
    pub fn post<W: WqeBuild + ?Sized>(&mut self, w: &W) -> Result<WqeIndex, Error> {
        // The builder is read once; checking and writing work on the copy.
        let parts = w.parts();
        let ds = parts.check(&self.sq.limits)?;
        let wqebbs = wqe::wqebbs(ds);
        let (at, p) = self.reserve(wqebbs)?;
        // SAFETY: `reserve` handed out `wqebbs * 64 >= ds * 16` bytes at
        // `p`, which the device does not own.
        unsafe { parts.write(p, at as u16, self.sq.qpn8 | ds as u32) };
        self.commit(at, wqebbs);
        Ok(at as u16)
    }

    /// Writes `bytes` as the next WQE exactly as given (zero-padded to whole
    /// WQEBBs, after NOP padding at the ring end): the caller supplies the
    /// control segment, so the device sees whatever it says. For tests of
    /// malformed WQEs and for opcodes this crate has no builder for; the
    /// device validates everything it reads, so nothing here is unsafe.
    pub fn post_raw(&mut self, bytes: &[u8]) -> Result<WqeIndex, Error> {
        let limit = self.sq.limits.max_wqebbs();
        let wqebbs = bytes.len().div_ceil(WQEBB);
        if wqebbs == 0 || wqebbs > limit {
            return Err(Error::WqeTooLarge { wqebbs, limit });
        }
        let (at, p) = self.reserve(wqebbs)?;
        // SAFETY: `reserve` handed out `wqebbs * 64` bytes at `p`, which
        // the device does not own; `bytes` is at most that long and lies
        // elsewhere (a caller's slice cannot alias the SQ buffer, to which
        // no reference is ever handed out).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
            p.add(bytes.len())
                .write_bytes(0, wqebbs * WQEBB - bytes.len());
        }
        self.commit(at, wqebbs);
        Ok(at as u16)
    }

    /// Room for a WQE of `wqebbs` blocks (after NOP padding to the ring end
    /// if it would not fit before it): its ring position, and where its
    /// bytes go. Posting is allowed in RTS and in ERROR.
    #[inline(always)]
    fn reserve(&mut self, wqebbs: usize) -> Result<(u32, *mut u8), Error> {
        let state = self.shared.track.state();
        if !matches!(state, QpState::Rts | QpState::Error) {
            return Err(self.bad_state(state));
        }
        let at = match self.sq.ring.reserve_fast(wqebbs) {
            Some(at) => at,
            None => self.reserve_slow(wqebbs)?,
        };
        let i = self.sq.ring.index(at);
        // SAFETY: `sizes` is as long as the ring, and `index` is a slot of
        // the ring.
        unsafe { *self.sq.sizes.get_unchecked_mut(i) = wqebbs as u8 };
        // SAFETY: `i` is a WQEBB of the SQ buffer; the ring reserved
        // `wqebbs` of them from there without wrapping.
        Ok((at, unsafe { self.sq.buf.add(i * WQEBB) }))
    }

    /// What [`SqRing::reserve_fast`] does not do: NOP padding at the ring
    /// end, retiring what completions allow when the ring looks full, and
    /// the errors.
    #[cold]
    fn reserve_slow(&mut self, wqebbs: usize) -> Result<u32, Error> {
        let slot = match self.sq.ring.reserve(wqebbs) {
            Ok(s) => s,
            Err(_) => {
                self.retire();
                self.sq.ring.reserve(wqebbs)?
            }
        };
        if slot.pad > 0 {
            self.pad(slot);
        }
        self.sq.ring.commit_pad(slot);
        Ok(slot.at)
    }

    #[cold]
    fn bad_state(&self, state: QpState) -> Error {
        Error::BadState {
            qpn: self.shared.qpn,
            state,
        }
    }

    /// Writes the NOP that pads the ring end before `slot`'s WQE.
    fn pad(&mut self, slot: Slot) {
        let nop = Nop::spanning(slot.pad);
        let i = self.sq.ring.index(slot.pad_at);
        self.sq.sizes[i] = slot.pad as u8;
        let ds = slot.pad * (WQEBB / SEG);
        // SAFETY: the ring reserved `slot.pad` WQEBBs from `i` to the ring
        // end, not owned by the device; the NOP spans exactly those.
        unsafe {
            let p = self.sq.buf.add(i * WQEBB);
            nop.parts()
                .write(p, slot.pad_at as u16, self.sq.qpn8 | ds as u32);
        }
    }

    /// Advances the producer past the WQE of `wqebbs` blocks written at
    /// `at`.
    #[inline(always)]
    fn commit(&mut self, at: u32, wqebbs: usize) {
        self.sq.ring.commit_fast(at, wqebbs);
        self.sq.last_at = at;
    }

    /// Makes every WQE posted since the last doorbell visible to the device:
    /// updates the doorbell record, then rings the doorbell (hardware: a
    /// BlueFlame copy when exactly one WQE that fits the BlueFlame buffer is
    /// pending, else the 8-byte doorbell, under the register's lock when
    /// it has BlueFlame buffers; see `hw/doorbell.rs`).
    pub fn ring_doorbell(&mut self) {
        crate::trace::ev(crate::trace::Ev::Doorbell);
        let pi = self.sq.ring.pi();
        if pi == self.sq.rung {
            return;
        }
        // SAFETY: dbrec points at the QP's doorbell record, two u32 words.
        let db = unsafe { AtomicU32::from_ptr(self.shared.mem.dbrec.add(1)) };
        let counter = pi & 0xffff;
        let (mut last_wqe, mut single) = (std::ptr::null(), 0);
        if self.bell.copies_wqe() {
            let off = self.sq.ring.offset(self.sq.last_at);
            // SAFETY: the last WQE's bytes are in the SQ buffer.
            last_wqe = unsafe { self.shared.mem.sq_buf.add(off) }.cast_const();
            // One WQE pending (no padding before it): it starts where the
            // last doorbell left off.
            if self.sq.last_at == self.sq.rung {
                single = usize::from(self.sq.size_at(self.sq.last_at)) * WQEBB;
            }
        }
        // SAFETY: `db` is this QP's send doorbell record and `counter`
        // covers every WQE written; `last_wqe` is the last WQE, 64-aligned
        // in the SQ buffer, with `single` (or, when several are pending, at
        // least 64) bytes written, which the device owns until their
        // completion (the SQ ring does not hand those WQEBBs out again
        // before). The software device reads none of that.
        unsafe { self.bell.ring_sq(db, counter, last_wqe, single) };
        self.sq.rung = pi;
    }

    /// [`Qp::post`] then [`Qp::ring_doorbell`].
    pub fn post_and_ring<W: WqeBuild + ?Sized>(&mut self, w: &W) -> Result<WqeIndex, Error> {
        let i = self.post(w)?;
        self.ring_doorbell();
        Ok(i)
    }

    /// Receive WQEs posted and not yet consumed (as polled CQEs tell).
    pub fn recv_outstanding(&self) -> u32 {
        // Acquire: pairs with QpTrack::recv_consumed.
        self.rq_head
            .wrapping_sub(self.shared.track.rq_consumed.load(Ordering::Acquire))
    }

    /// Posts a receive WQE scattering into `sges` (empty is fine for
    /// WRITE_IMM). Allowed from INIT on.
    pub fn post_recv(&mut self, sges: &[Sge]) -> Result<(), Error> {
        let m = &self.shared.mem;
        if self.shared.srq.is_some() {
            return Err(Error::UsesSrq(self.shared.qpn));
        }
        let state = self.shared.track.state();
        if state == QpState::Reset {
            return Err(Error::BadState {
                qpn: self.shared.qpn,
                state,
            });
        }
        let max_sge = self.shared.caps.max_recv_sge as usize;
        if sges.len() > max_sge {
            return Err(Error::TooManySges {
                count: sges.len(),
                max: max_sge,
            });
        }
        if self.recv_outstanding() >= m.rq_wqe_cnt {
            return Err(Error::RecvQueueFull {
                depth: m.rq_wqe_cnt as usize,
            });
        }
        let slot = self.rq_head & (m.rq_wqe_cnt - 1);
        // SAFETY: the slot is inside the RQ buffer and not owned by the
        // device (outstanding < depth); &mut self excludes other writers.
        let out = unsafe {
            std::slice::from_raw_parts_mut(
                m.rq_buf.add((slot * m.rq_stride) as usize),
                m.rq_stride as usize,
            )
        };
        write_sges(out, sges);
        self.rq_head = self.rq_head.wrapping_add(1);
        // SAFETY: word 0 of the QP's doorbell record.
        let db = unsafe { AtomicU32::from_ptr(m.dbrec) };
        // Release: the device reads the WQE after it sees the counter.
        db.store((self.rq_head & 0xffff).to_be(), Ordering::Release);
        if state == QpState::Error {
            // An ERROR QP flushes new receives; wake the device to do it.
            self.bell.wake_for_recv();
        }
        Ok(())
    }
}
