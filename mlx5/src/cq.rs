//! Completion queues: direct polling of the CQE ring.
//!
//! | word | written by | when |
//! |---|---|---|
//! | CQE bytes 0..63 | device | before its `op_own` |
//! | CQE `op_own` (byte 63) | device | last, `Release` (hardware: DMA ordered before it) |
//! | doorbell record word 0 (`ci`, be32) | software | after a poll consumed CQEs, `Release` |
//!
//! Software reads `op_own` with `Acquire`, checks the owner parity, then the
//! rest; it never writes the CQE. The device may overwrite a CQE only after
//! the doorbell record shows it consumed.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::backend::CqHandle;
use crate::cqe::{self, CQE_SIZE, Cqe};
use crate::device::Context;
use crate::error::Error;
use crate::prm::QpState;
use crate::queue::{CqMem, QpTrack, SrqTrack};

/// What a poll needs to know about a QP that completes on this CQ.
#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) qpn: u32,
    pub(crate) track: Arc<QpTrack>,
    pub(crate) srq: Option<Arc<SrqTrack>>,
}

pub(crate) struct CqShared {
    pub(crate) ctx: Context,
    pub(crate) cqn: u32,
    pub(crate) mem: CqMem,
    pub(crate) overrun: Arc<AtomicBool>,
    routes: Mutex<Vec<Route>>,
    routes_version: AtomicU32,
    // Last: destroyed after the device forgot the CQ (Drop below).
    pub(crate) handle: CqHandle,
}

// SAFETY: the raw pointers point into `handle`'s memory, which lives as long
// as the CqShared; access follows the protocol in the module doc.
unsafe impl Send for CqShared {}
// SAFETY: as above.
unsafe impl Sync for CqShared {}

impl CqShared {
    pub(crate) fn add_route(&self, route: Route) {
        let mut r = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let at = r.partition_point(|x| x.qpn < route.qpn);
        r.insert(at, route);
        // Release: a poller that sees the new version sees the new table
        // (it also takes the lock to copy it).
        self.routes_version.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn remove_route(&self, qpn: u32) {
        let mut r = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        r.retain(|x| x.qpn != qpn);
        // Release: as in add_route.
        self.routes_version.fetch_add(1, Ordering::Release);
    }
}

impl Drop for CqShared {
    fn drop(&mut self) {
        self.ctx.inner.backend.destroy_cq(self.cqn, &self.handle);
    }
}

/// A completion: a decoded CQE.
pub type Completion = Cqe;

impl Cqe {
    /// `Ok` for a successful completion, else the error syndrome.
    pub fn status(&self) -> crate::Status {
        match self.syndrome {
            None => Ok(()),
            Some(s) => Err(s),
        }
    }
}

/// A completion queue. Polling needs `&mut self`: one poller per CQ.
pub struct Cq {
    pub(crate) shared: Arc<CqShared>,
    ci: u32,
    log_n: u32,
    routes: Vec<Route>,
    routes_version: u32,
    /// The route of the QP whose CQE was polled last.
    hot: Hot,
}

/// A route as raw pointers into [`Cq::routes`], whose `Arc`s keep them
/// alive: reset to [`Hot::NONE`] whenever `routes` is replaced. Consecutive
/// CQEs mostly name the same QP, so most polls find their route here with
/// one comparison.
#[derive(Clone, Copy)]
struct Hot {
    qpn: u32,
    track: *const QpTrack,
    /// Null: the QP has a private receive queue.
    srq: *const SrqTrack,
}

impl Hot {
    /// Matches no CQE (QPNs are 24-bit).
    const NONE: Hot = Hot {
        qpn: u32::MAX,
        track: std::ptr::null(),
        srq: std::ptr::null(),
    };
}

// SAFETY: `hot` points into the `Arc`s `routes` holds (QpTrack and
// SrqTrack are Send + Sync); everything else is Send.
unsafe impl Send for Cq {}
// SAFETY: as above; `&Cq` reads only immutable fields.
unsafe impl Sync for Cq {}

impl std::fmt::Debug for Cq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cq")
            .field("cqn", &self.shared.cqn)
            .field("entries", &self.shared.mem.cqe_cnt)
            .field("ci", &self.ci)
            .finish()
    }
}

impl Cq {
    /// A CQ of at least `entries` CQEs (rounded up to a power of two).
    pub fn new(ctx: &Context, entries: u32) -> Result<Cq, Error> {
        if entries == 0 || entries > 1 << 22 {
            return Err(Error::InvalidAttr(format!(
                "CQ of {entries} entries (1..=4194304)"
            )));
        }
        let overrun = Arc::new(AtomicBool::new(false));
        let (handle, mem, cqn) = ctx.inner.backend.create_cq(entries, &overrun)?;
        let log_n = mem.cqe_cnt.trailing_zeros();
        Ok(Cq {
            shared: Arc::new(CqShared {
                ctx: ctx.clone(),
                cqn,
                mem,
                overrun,
                routes: Mutex::new(Vec::new()),
                routes_version: AtomicU32::new(0),
                handle,
            }),
            ci: 0,
            log_n,
            routes: Vec::new(),
            routes_version: 0,
            hot: Hot::NONE,
        })
    }

    /// The CQ number.
    pub fn cqn(&self) -> u32 {
        self.shared.cqn
    }

    /// Number of CQEs.
    pub fn entries(&self) -> u32 {
        self.shared.mem.cqe_cnt
    }

    /// The consumer counter (CQEs polled so far, free-running).
    pub fn consumer_index(&self) -> u32 {
        self.ci
    }

    fn refresh_routes(&mut self) {
        // Acquire: pairs with add_route/remove_route's Release.
        let v = self.shared.routes_version.load(Ordering::Acquire);
        if v != self.routes_version {
            let r = self.shared.routes.lock().unwrap_or_else(|e| e.into_inner());
            self.routes.clone_from(&r);
            self.routes_version = v;
            self.hot = Hot::NONE;
        }
    }

    /// Makes `hot` the route of QP `qpn`; false if `qpn` is not a QP of
    /// this CQ (any more).
    #[cold]
    fn find_route(&mut self, qpn: u32) -> bool {
        let Ok(i) = self.routes.binary_search_by_key(&qpn, |r| r.qpn) else {
            return false;
        };
        let r = &self.routes[i];
        self.hot = Hot {
            qpn,
            track: Arc::as_ptr(&r.track),
            srq: r.srq.as_ref().map_or(std::ptr::null(), Arc::as_ptr),
        };
        true
    }

    /// Polls up to `max` completions, calling `f` for each in order, and
    /// returns how many there were. No allocation; one comparison (or, when
    /// the QP changes, a binary search) per CQE to retire send-queue and
    /// receive-queue space.
    pub fn poll(&mut self, max: usize, mut f: impl FnMut(&Completion)) -> Result<usize, Error> {
        // Relaxed: a sticky flag; the CQEs it concerns are lost either way.
        if self.shared.overrun.load(Ordering::Relaxed) {
            return Err(Error::CqOverrun(self.shared.cqn));
        }
        self.refresh_routes();
        let mask = self.shared.mem.cqe_cnt - 1;
        let buf = self.shared.mem.buf;
        // SAFETY: dbrec points at the CQ's doorbell record (4-aligned u32).
        let db = unsafe { AtomicU32::from_ptr(self.shared.mem.dbrec) };
        let log_n = self.log_n;
        let mut ci = self.ci;
        let mut n = 0;
        while n < max {
            let slot = (ci & mask) as usize * CQE_SIZE;
            // SAFETY: slot is inside the CQ buffer (masked index).
            let p = unsafe { buf.add(slot) };
            // SAFETY: op_own is a byte of the buffer; the device stores it
            // atomically (software device) or by DMA (hardware).
            let op_own_ref = unsafe { AtomicU8::from_ptr(p.add(cqe::offset::OP_OWN)) };
            // Acquire: the CQE body was written before op_own.
            let op_own = op_own_ref.load(Ordering::Acquire);
            if !cqe::is_sw_owned(op_own, ci, log_n) {
                break;
            }
            // SAFETY: the CQE is software-owned (checked above, Acquire), so
            // the device does not write it until the doorbell record moves
            // past it (below, after these reads).
            let c = unsafe { cqe::read(p, op_own) };
            ci = ci.wrapping_add(1);
            self.ci = ci;
            // Release: the device may reuse the slot only after our reads.
            // Published before the send-queue space below is returned (and
            // before `f` can post): otherwise the WQEs that space admits
            // could complete into a CQ whose freed slots the device cannot
            // see yet, and overrun it.
            db.store((ci & 0x00ff_ffff).to_be(), Ordering::Release);
            self.retire(op_own >> 4, c.qpn, c.wqe_counter);
            n += 1;
            f(&c);
        }
        if n > 0 {
            crate::trace::ev(crate::trace::Ev::Polled);
        }
        Ok(n)
    }

    /// Returns the queue space a completion frees: the send WQEs up to the
    /// completed one, or one receive WQE (of the RQ or the SRQ); an error
    /// completion also tells the QP's poster that the QP is in ERROR.
    /// `opcode` is the CQE's (`op_own >> 4`): a requester completion
    /// (`REQ`, `REQ_ERR`) or anything else, which consumed a receive WQE
    /// (an unknown opcode decodes as a receive error).
    #[inline(always)]
    fn retire(&mut self, opcode: u8, qpn: u32, wqe_counter: u16) {
        if self.hot.qpn != qpn && !self.find_route(qpn) {
            return;
        }
        let r = self.hot;
        // SAFETY: `r` points into `self.routes`' Arcs (see `Hot`).
        let track = unsafe { &*r.track };
        if opcode == cqe::op::REQ {
            track.send_completed(wqe_counter);
        } else if opcode <= cqe::op::RESP_SEND_IMM {
            self.recv_consumed(r, track);
        } else {
            self.retire_error(opcode, r, track, wqe_counter);
        }
    }

    /// [`Cq::retire`] of an error completion.
    #[cold]
    fn retire_error(&self, opcode: u8, r: Hot, track: &QpTrack, wqe_counter: u16) {
        if opcode == cqe::op::REQ_ERR {
            track.send_completed(wqe_counter);
        } else {
            self.recv_consumed(r, track);
        }
        track.set_state(QpState::Error);
    }

    #[inline(always)]
    fn recv_consumed(&self, r: Hot, track: &QpTrack) {
        if r.srq.is_null() {
            track.recv_consumed();
        } else {
            // SAFETY: as `track`, in `retire`.
            unsafe { &*r.srq }.consumed();
        }
    }

    /// Polls until `f` has seen at least `want` completions or `timeout`
    /// passes; returns how many were seen. For tests and examples.
    pub fn poll_until(
        &mut self,
        want: usize,
        timeout: std::time::Duration,
        mut f: impl FnMut(&Completion),
    ) -> Result<usize, Error> {
        let start = std::time::Instant::now();
        let mut seen = 0;
        while seen < want {
            if self.shared.ctx.progress_mode() == Some(crate::Progress::Manual) {
                self.shared.ctx.progress()?;
            }
            seen += self.poll(want - seen, &mut f)?;
            if seen < want {
                if start.elapsed() >= timeout {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        Ok(seen)
    }
}
