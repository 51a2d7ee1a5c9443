//! The responder: executing a request at its target QP (phase 2 of the
//! parent module's three), one function per opcode family: WRITE and
//! WRITE_IMM, SEND and SEND_IMM, READ, the atomics. A function of (request,
//! payload) to response, the same whether the request came from this
//! process or over a link.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::state::{DevRef, Fabric, State};
use super::wire::{Data, Request, Response};
use crate::cqe::{Cqe, Kind};
use crate::event::AsyncEvent;
use crate::prm::{Access, INVALID_LKEY, QpState, SEG, Syndrome, opcode};
use crate::wqe::{Sge, read_data};

/// Scatter entries a receive WQE can hold (the SRQ limit is 30).
pub(crate) const MAX_RECV_SGE: usize = 32;

/// A receive WQE taken from an RQ or SRQ: its index and where its
/// scatter list lies. The list is read only by what scatters into it
/// ([`RecvWqe::sges`], SEND); a WRITE_IMM only completes the WQE, so it
/// reads none of it.
struct RecvWqe {
    index: u16,
    srqn: u32,
    /// The WQE's first data segment.
    segs: *const u8,
    /// Data segments the WQE's stride has room for (at most
    /// [`MAX_RECV_SGE`]); the poster ends a shorter list with an invalid
    /// lkey.
    max_sge: usize,
}

impl RecvWqe {
    /// The scatter list, read from the WQE as it is walked: its data
    /// segments up to the first with an invalid lkey (at most `max_sge`).
    /// Nothing is copied up front (a SEND to a WQE of one segment reads one
    /// segment, not a table of [`MAX_RECV_SGE`]).
    ///
    /// # Safety
    ///
    /// The queue the WQE was taken from still exists (its buffer is
    /// mapped) while the iterator is used: under the same state lock as
    /// `take_recv`, before the QP or SRQ can be destroyed.
    unsafe fn sges(&self) -> impl Iterator<Item = Sge> + '_ {
        (0..self.max_sge)
            .map(|n| {
                let mut b = [0u8; SEG];
                // SAFETY: segment n of the WQE lies within its stride
                // (`max_sge` was bounded by it in `take_recv`), in a queue
                // buffer that is still mapped (the caller's contract).
                unsafe {
                    std::ptr::copy_nonoverlapping(self.segs.add(n * SEG), b.as_mut_ptr(), SEG)
                };
                read_data(&b)
            })
            .take_while(|g| g.lkey != INVALID_LKEY)
    }
}

/// Takes the next receive WQE of QP `qpn`, if one is posted.
fn take_recv(s: &mut State, qpn: u32) -> Option<RecvWqe> {
    let qp = s.qp(qpn)?;
    if qp.withhold_recv {
        return None;
    }
    match qp.srq {
        None => {
            if qp.rq_pi() == qp.rq_ci as u16 || qp.rq_cnt == 0 {
                return None;
            }
            let index = qp.rq_ci as u16;
            let slot = qp.rq_ci & (qp.rq_cnt - 1);
            qp.rq_ci = qp.rq_ci.wrapping_add(1);
            Some(RecvWqe {
                index,
                srqn: 0,
                // SAFETY: slot < rq_cnt, inside the RQ buffer.
                segs: unsafe { qp.rq_buf.add((slot * qp.rq_stride) as usize) },
                max_sge: (qp.rq_stride as usize / SEG).min(MAX_RECV_SGE),
            })
        }
        Some(srqn) => {
            let srq = s.srq(srqn)?;
            // SAFETY: word 0 of the SRQ's doorbell record.
            let db = unsafe { AtomicU32::from_ptr(srq.mem.dbrec) };
            // Acquire: pairs with the poster's Release; the WQEs are visible.
            let posted = u32::from_be(db.load(Ordering::Acquire)) as u16;
            if posted == srq.ci as u16 {
                return None;
            }
            let idx = u32::from(srq.cur) & (srq.mem.wqe_cnt - 1);
            // SAFETY: idx < wqe_cnt, inside the SRQ buffer.
            let wqe = unsafe { srq.mem.buf.add((idx * srq.mem.stride) as usize) };
            let mut next = [0u8; 2];
            // SAFETY: bytes 2..4 of the WQE (next_wqe_index).
            unsafe { std::ptr::copy_nonoverlapping(wqe.add(2), next.as_mut_ptr(), 2) };
            srq.cur = u16::from_be_bytes(next);
            srq.ci = srq.ci.wrapping_add(1);
            Some(RecvWqe {
                index: idx as u16,
                srqn,
                // SAFETY: the data segments follow the 16-byte next segment.
                segs: unsafe { wqe.add(SEG) },
                // As far as the stride has room (after the next segment),
                // as hardware reads it; the poster terminates shorter lists.
                max_sge: ((srq.mem.stride as usize - SEG) / SEG).min(MAX_RECV_SGE),
            })
        }
    }
}

/// Moves a responder QP to ERROR with an error receive completion.
fn responder_error(s: &mut State, qpn: u32, recv: &RecvWqe, syndrome: Syndrome) {
    let Some(qp) = s.qp(qpn) else { return };
    let cq = qp.recv_cq;
    s.qp_to_error(qpn);
    s.push_cqe(
        cq,
        &Cqe {
            kind: Kind::RecvError,
            qpn,
            wqe_counter: recv.index,
            byte_len: 0,
            imm: 0,
            srqn: recv.srqn,
            syndrome: Some(syndrome),
            vendor_syndrome: 0,
            solicited: false,
        },
    );
}

/// A request the responder must refuse without a receive WQE to report it
/// on (IBA class C: remote access, invalid request): the requester gets
/// `syndrome`, and the responder QP enters ERROR (its posted receives are
/// flushed) and raises an asynchronous event, as ConnectX does (rxe's
/// `do_class_ac_error`).
fn responder_fatal(s: &mut State, qpn: u32, syndrome: Syndrome) -> Response {
    // The cause first, then (on an SRQ) the QP's last-WQE event.
    s.event(if syndrome == Syndrome::RemoteAccess {
        AsyncEvent::QpAccessError { qpn }
    } else {
        AsyncEvent::QpRequestError { qpn }
    });
    s.qp_to_error(qpn);
    Response::Nak(syndrome)
}

/// Phase 2 at device `to` of this process (the requester's, or another),
/// with the fabric locked. A device that is gone answers nothing, as a
/// dead process: `TransportRetryExceeded`.
pub(crate) fn respond_in_process(
    fab: &mut Fabric,
    to: DevRef,
    req: &Request,
    payload: Data<'_>,
    out: &mut Vec<u8>,
) -> Response {
    let Some(s) = fab.state(to) else {
        return Response::Nak(Syndrome::TransportRetryExceeded);
    };
    let r = respond_locked(s, req, payload, out);
    if s.qp(req.dst_qpn)
        .is_some_and(|qp| qp.state == QpState::Error)
    {
        // Its receive queue must be flushed: device work.
        fab.ring(to);
    }
    r
}

/// Phase 2 with the responder's state locked: checks the QP, its peer and
/// the sequence number, then executes. READ data is appended to `out`.
pub(crate) fn respond_locked(
    s: &mut State,
    req: &Request,
    payload: Data<'_>,
    out: &mut Vec<u8>,
) -> Response {
    let (r, data) = respond(s, req, payload);
    data.append_to(out);
    r
}

/// [`respond_locked`], the READ data left where it lies: in a region of
/// this device, readable while the state stays locked (deregistration
/// takes the lock), which the `'s` borrow holds.
pub(crate) fn respond<'s>(
    s: &'s mut State,
    req: &Request,
    payload: Data<'_>,
) -> (Response, Data<'s>) {
    let none = Data::slice(&[]);
    let Some(qp) = s.qp(req.dst_qpn) else {
        return (Response::NoAnswer, none);
    };
    if !matches!(qp.state, QpState::Rtr | QpState::Rts)
        || !qp
            .peer
            .as_ref()
            .is_some_and(|p| p.addr == req.src && p.qpn == req.src_qpn)
    {
        return (Response::NoAnswer, none);
    }
    if req.psn != qp.epsn {
        return (Response::OutOfSequence, none);
    }
    let (r, read) = execute(s, req, payload);
    if !matches!(r, Response::Rnr { .. } | Response::NoAnswer)
        && let Some(qp) = s.qp(req.dst_qpn)
    {
        qp.epsn = qp.epsn.wrapping_add(1);
    }
    let data = match read {
        // SAFETY: `read` checked the range against a registered, remotely
        // readable region, which stays registered while `s` is borrowed
        // (deregistration takes the state lock the borrow stands for).
        Some((addr, len)) => unsafe { Data::raw(addr as *const u8, len) },
        None => none,
    };
    (r, data)
}

/// The target QP's side of a request, read once.
struct Target {
    qpn: u32,
    pd: u32,
    access: Access,
    recv_cq: u32,
    min_rnr_timer: u8,
}

impl Target {
    /// Whether the request's remote range, `len` bytes, lies in a region of
    /// the QP's PD that grants `need`, and the QP grants it too.
    fn remote_ok(&self, s: &State, req: &Request, need: Access, len: u64) -> bool {
        self.access.contains(need)
            && s.mr(req.remote.rkey, self.pd, req.remote.addr, len)
                .is_some_and(|e| e.access.contains(need))
    }

    /// The RNR NAK this QP answers with when it has no receive WQE.
    fn rnr(&self) -> Response {
        Response::Rnr {
            timer: self.min_rnr_timer,
        }
    }

    /// A successful receive completion of `recv`.
    fn recv_cqe(&self, kind: Kind, recv: &RecvWqe, req: &Request, len: usize) -> Cqe {
        Cqe {
            kind,
            qpn: self.qpn,
            wqe_counter: recv.index,
            byte_len: len as u32,
            imm: if matches!(kind, Kind::RecvWriteImm | Kind::RecvSendImm) {
                req.imm
            } else {
                0
            },
            srqn: recv.srqn,
            syndrome: None,
            vendor_syndrome: 0,
            solicited: req.solicited,
        }
    }
}

/// Executes `req` at its target QP (checked by the caller), by opcode
/// family; a READ's data is returned as the checked range it lies in
/// (address, length), which [`respond`] reads while the state is locked.
fn execute(s: &mut State, req: &Request, payload: Data<'_>) -> (Response, Option<(u64, usize)>) {
    let qp = s.qp(req.dst_qpn).expect("checked by the caller");
    let t = Target {
        qpn: req.dst_qpn,
        pd: qp.pd,
        access: qp.access,
        recv_cq: qp.recv_cq,
        min_rnr_timer: qp.min_rnr_timer,
    };
    match req.opcode {
        opcode::RDMA_WRITE | opcode::RDMA_WRITE_IMM => (write(s, &t, req, payload), None),
        opcode::SEND | opcode::SEND_IMM => (send(s, &t, req, payload), None),
        opcode::RDMA_READ => read(s, &t, req),
        opcode::ATOMIC_CS | opcode::ATOMIC_FA => (atomic(s, &t, req), None),
        _ => (
            responder_fatal(s, t.qpn, Syndrome::RemoteInvalRequest),
            None,
        ),
    }
}

/// WRITE and WRITE_IMM: the payload into the remote range; WRITE_IMM also
/// consumes a receive WQE and completes it with the immediate.
fn write(s: &mut State, t: &Target, req: &Request, payload: Data<'_>) -> Response {
    let len = payload.len() as u64;
    if len > 0 && !t.remote_ok(s, req, Access::REMOTE_WRITE, len) {
        return responder_fatal(s, t.qpn, Syndrome::RemoteAccess);
    }
    let recv = if req.opcode == opcode::RDMA_WRITE_IMM {
        match take_recv(s, t.qpn) {
            Some(r) => Some(r),
            None => return t.rnr(),
        }
    } else {
        None
    };
    if len > 0 {
        // SAFETY: the range is inside a registered region (checked under
        // the lock deregistration takes); the payload is in a frame or a
        // scratch buffer, never in a region.
        unsafe { payload.copy_to(req.remote.addr as *mut u8) };
    }
    if let Some(r) = recv {
        let c = t.recv_cqe(Kind::RecvWriteImm, &r, req, payload.len());
        s.push_cqe(t.recv_cq, &c);
    }
    Response::Ack { orig: 0 }
}

/// SEND and SEND_IMM: the payload scattered over the next receive WQE,
/// which must hold it and name locally writable memory.
fn send(s: &mut State, t: &Target, req: &Request, payload: Data<'_>) -> Response {
    let Some(recv) = take_recv(s, t.qpn) else {
        return t.rnr();
    };
    // SAFETY: taken just above, under the same `&mut State` (the QP or
    // SRQ cannot go while it is held).
    let listed = unsafe { recv.sges() };
    let capacity: u64 = listed.map(|g| u64::from(g.len)).sum();
    if capacity < payload.len() as u64 {
        responder_error(s, t.qpn, &recv, Syndrome::LocalLength);
        return Response::Nak(Syndrome::RemoteInvalRequest);
    }
    let mut rest = payload;
    // SAFETY: as above.
    for g in unsafe { recv.sges() } {
        if rest.is_empty() {
            break;
        }
        let n = rest.len().min(g.len as usize);
        let ok = s
            .mr(g.lkey, t.pd, g.addr, n as u64)
            .is_some_and(|e| e.access.contains(Access::LOCAL_WRITE));
        if !ok {
            responder_error(s, t.qpn, &recv, Syndrome::LocalProt);
            return Response::Nak(Syndrome::RemoteOp);
        }
        let (now, later) = rest.split_at(n);
        // SAFETY: inside a registered, locally writable region.
        unsafe { now.copy_to(g.addr as *mut u8) };
        rest = later;
    }
    let kind = if req.opcode == opcode::SEND_IMM {
        Kind::RecvSendImm
    } else {
        Kind::RecvSend
    };
    let c = t.recv_cqe(kind, &recv, req, payload.len());
    s.push_cqe(t.recv_cq, &c);
    Response::Ack { orig: 0 }
}

/// READ: the remote range, checked (the data goes where [`respond`]'s
/// caller puts it).
fn read(s: &mut State, t: &Target, req: &Request) -> (Response, Option<(u64, usize)>) {
    let len = u64::from(req.len);
    if len == 0 {
        return (Response::Ack { orig: 0 }, None);
    }
    if !t.remote_ok(s, req, Access::REMOTE_READ, len) {
        return (responder_fatal(s, t.qpn, Syndrome::RemoteAccess), None);
    }
    (
        Response::Ack { orig: 0 },
        Some((req.remote.addr, req.len as usize)),
    )
}

/// Compare-and-swap and fetch-and-add on 8 aligned bytes, in host byte
/// order; the answer carries the original value.
fn atomic(s: &mut State, t: &Target, req: &Request) -> Response {
    // A misaligned atomic is an invalid request (IBA 9.4.5), not an access
    // error: checked first, as rxe and ConnectX do.
    if !req.remote.addr.is_multiple_of(8) {
        return responder_fatal(s, t.qpn, Syndrome::RemoteInvalRequest);
    }
    if !t.remote_ok(s, req, Access::REMOTE_ATOMIC, 8) {
        return responder_fatal(s, t.qpn, Syndrome::RemoteAccess);
    }
    // SAFETY: 8 aligned bytes inside a registered region; every device
    // access to them is atomic.
    let a = unsafe { AtomicU64::from_ptr(req.remote.addr as *mut u64) };
    // SeqCst: atomics from several devices and local CPU atomics on the
    // same word agree on one order.
    let orig = if req.opcode == opcode::ATOMIC_CS {
        match a.compare_exchange(
            req.compare,
            req.swap_add,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(v) | Err(v) => v,
        }
    } else {
        a.fetch_add(req.swap_add, Ordering::SeqCst)
    };
    Response::Ack { orig }
}
