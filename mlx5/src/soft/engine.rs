//! Executing WQEs: the three phases described in the parent module.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use super::{Shared, State, rnr_delay, wqebbs_of};
use crate::QpState;
use crate::cqe::{self, Cqe, Kind, Syndrome};
use crate::mr::Access;
use crate::srq::INVALID_LKEY;
use crate::wqe::{INLINE_SEG, MAX_DS, Remote, SEG, Sge, WQEBB, flags, opcode};

/// WQEs one QP may execute per progress pass (fairness between QPs).
const BUDGET: usize = 64;
/// Scatter entries a receive WQE can hold (the SRQ limit is 30).
const MAX_RECV_SGE: usize = 32;

/// Per-device scratch space, reused so execution allocates only when a
/// payload is larger than any before it.
#[derive(Default)]
pub(crate) struct Engine {
    work: Vec<u32>,
    scratch: Vec<u8>,
    resp: Vec<u8>,
    sges: Vec<Sge>,
    /// The earliest pending RNR retry (background mode sleeps until it).
    pub(crate) next_timer: Option<Instant>,
}

/// A request as it travels from requester to responder.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request {
    pub(crate) opcode: u8,
    pub(crate) src_dev: u64,
    pub(crate) src_qpn: u32,
    pub(crate) dst_qpn: u32,
    pub(crate) remote: Remote,
    /// Payload bytes (WRITE/SEND) or bytes to read (READ).
    pub(crate) len: u32,
    pub(crate) imm: u32,
    pub(crate) swap_add: u64,
    pub(crate) compare: u64,
}

/// The responder's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Response {
    /// Done; for atomics, the original value (READ data is in the buffer).
    Ack { orig: u64 },
    /// No receive WQE: retry after the responder's RNR timer.
    Rnr { timer: u8 },
    /// Rejected: the requester completes with this syndrome.
    Nak(Syndrome),
}

/// The requester-side bookkeeping of a WQE in flight.
struct Inflight {
    /// Identifies the QP across phases (a destroyed QP's number can be
    /// reused by a new QP while a WQE is in flight).
    track: Arc<crate::qp::QpTrack>,
    req: Request,
    index: u16,
    wqebbs: u32,
    flags: u8,
}

enum Step {
    /// Completed without the responder (NOP, local error): WQEs processed.
    Local,
    /// Needs the responder.
    Remote(Inflight, super::Peer),
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn read_sge(b: &[u8]) -> Sge {
    Sge {
        len: be32(b, 0),
        lkey: be32(b, 4),
        addr: be64(b, 8),
    }
}

/// One pass over every QP with work. Returns WQEs processed.
pub(crate) fn progress(shared: &Arc<Shared>) -> usize {
    let mut guard = shared.engine.lock().unwrap_or_else(|e| e.into_inner());
    let eng = &mut *guard;
    eng.next_timer = None;
    eng.work.clear();
    {
        let s = shared.lock();
        for qp in s.qps.iter().flatten() {
            let send = qp.sq_pi() != qp.sq_ci as u16;
            let active = matches!(qp.state, QpState::Rts | QpState::Error);
            let recv_flush =
                qp.state == QpState::Error && qp.srq.is_none() && qp.rq_pi() != qp.rq_ci as u16;
            if (send && active) || recv_flush {
                eng.work.push(qp.qpn);
            }
        }
    }
    let mut done = 0;
    for i in 0..eng.work.len() {
        let qpn = eng.work[i];
        done += process_qp(shared, eng, qpn);
    }
    done
}

fn process_qp(shared: &Arc<Shared>, eng: &mut Engine, qpn: u32) -> usize {
    let mut done = 0;
    for _ in 0..BUDGET {
        let step = {
            let mut s = shared.lock();
            let Some(qp) = s.qp(qpn) else { break };
            if qp.state == QpState::Error {
                done += flush(&mut s, qpn);
                break;
            }
            if qp.state != QpState::Rts || qp.sq_pi() == qp.sq_ci as u16 {
                break;
            }
            if let Some(r) = &qp.rnr
                && !shared.is_manual()
                && Instant::now() < r.next
            {
                eng.next_timer = Some(eng.next_timer.map_or(r.next, |t| t.min(r.next)));
                break;
            }
            local_phase(&mut s, qpn, shared.id, eng)
        };
        match step {
            Step::Local => done += 1,
            Step::Remote(inflight, peer) => {
                let resp = match peer.dev.upgrade() {
                    Some(dev) => respond(&dev, &inflight.req, &eng.scratch, &mut eng.resp),
                    None => Response::Nak(Syndrome::TransportRetryExceeded),
                };
                let mut s = shared.lock();
                // An RNR NAK completes nothing: it is not progress (so a
                // manual `progress_until_idle` ends while a QP waits).
                if complete(&mut s, qpn, &inflight, resp, eng) {
                    break;
                }
                done += 1;
            }
        }
    }
    done
}

/// Completes the WQE at the QP's consumer position with an error, moves the
/// QP to ERROR (its remaining work is flushed by the next pass).
fn fail(s: &mut State, qpn: u32, index: u16, wqebbs: u32, syndrome: Syndrome) {
    let Some(qp) = s.qp(qpn) else { return };
    qp.sq_ci = qp.sq_ci.wrapping_add(wqebbs);
    qp.rnr = None;
    qp.set_state(QpState::Error);
    let cq = qp.send_cq;
    s.push_cqe(
        cq,
        &Cqe {
            kind: Kind::SendError,
            qpn,
            wqe_counter: index,
            byte_len: 0,
            imm: 0,
            srqn: 0,
            syndrome: Some(syndrome),
            vendor_syndrome: 0,
        },
    );
}

/// Flushes every posted send and receive WQE of an ERROR QP.
fn flush(s: &mut State, qpn: u32) -> usize {
    let Some(qp) = s.qp(qpn) else { return 0 };
    let mut out: Vec<(u32, Cqe)> = Vec::new();
    let pi = qp.sq_pi();
    while qp.sq_ci as u16 != pi {
        let off = (qp.sq_ci % qp.sq_cnt) as usize * WQEBB;
        // SAFETY: off is inside the SQ buffer; the WQEBB is device-owned.
        let w1 = unsafe {
            let mut b = [0u8; 4];
            std::ptr::copy_nonoverlapping(qp.sq_buf.add(off + 4), b.as_mut_ptr(), 4);
            u32::from_be_bytes(b)
        };
        let wqebbs =
            wqebbs_of((w1 & 0x3f) as usize).min(u32::from(pi.wrapping_sub(qp.sq_ci as u16)));
        out.push((
            qp.send_cq,
            flush_cqe(Kind::SendError, qpn, qp.sq_ci as u16, 0),
        ));
        qp.sq_ci = qp.sq_ci.wrapping_add(wqebbs.max(1));
    }
    if qp.srq.is_none() {
        let rpi = qp.rq_pi();
        while qp.rq_ci as u16 != rpi {
            out.push((
                qp.recv_cq,
                flush_cqe(Kind::RecvError, qpn, qp.rq_ci as u16, 0),
            ));
            qp.rq_ci = qp.rq_ci.wrapping_add(1);
        }
    }
    let n = out.len();
    for (cq, c) in out {
        s.push_cqe(cq, &c);
    }
    n
}

fn flush_cqe(kind: Kind, qpn: u32, index: u16, srqn: u32) -> Cqe {
    Cqe {
        kind,
        qpn,
        wqe_counter: index,
        byte_len: 0,
        imm: 0,
        srqn,
        syndrome: Some(Syndrome::WrFlush),
        vendor_syndrome: 0,
    }
}

/// Phase 1: decode, validate, gather.
fn local_phase(s: &mut State, qpn: u32, dev_id: u64, eng: &mut Engine) -> Step {
    let qp = s.qp(qpn).expect("caller checked");
    let pos = qp.sq_ci;
    let posted = u32::from(qp.sq_pi().wrapping_sub(pos as u16));
    let mut wqe = [0u8; MAX_DS * SEG + SEG];
    let off = (pos % qp.sq_cnt) as usize * WQEBB;
    // SAFETY: a WQEBB inside the SQ buffer, device-owned (posted).
    unsafe { std::ptr::copy_nonoverlapping(qp.sq_buf.add(off), wqe.as_mut_ptr(), SEG) };
    let w0 = be32(&wqe, 0);
    let w1 = be32(&wqe, 4);
    let op = w0 as u8;
    let index = (w0 >> 8) as u16;
    let ds = (w1 & 0x3f) as usize;
    let ctrl_flags = wqe[11];
    let imm = be32(&wqe, 12);
    let wqebbs = wqebbs_of(ds);
    let malformed = ds == 0
        || index != pos as u16
        || (w0 >> 24) != 0
        || (w1 >> 8) != qpn
        || ds > qp.caps.max_ds()
        || wqebbs > posted
        || wqebbs > qp.sq_cnt;
    if malformed {
        let w = wqebbs.min(posted).max(1);
        fail(s, qpn, pos as u16, w, Syndrome::LocalQpOp);
        return Step::Local;
    }
    // The rest of the WQE, following the ring (hardware reads across the
    // end; our own posts never need it thanks to NOP padding).
    for b in 1..wqebbs {
        let o = ((pos + b) % qp.sq_cnt) as usize * WQEBB;
        let dst = b as usize * WQEBB;
        let n = WQEBB.min(ds * SEG - dst.min(ds * SEG));
        if n == 0 {
            break;
        }
        // SAFETY: a posted WQEBB inside the SQ buffer; dst + n <= wqe.len().
        unsafe { std::ptr::copy_nonoverlapping(qp.sq_buf.add(o), wqe.as_mut_ptr().add(dst), n) };
    }
    if ds * SEG > WQEBB {
        // The first WQEBB was only partly copied above.
        // SAFETY: the first WQEBB lies inside the SQ buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(
                qp.sq_buf.add(off + SEG),
                wqe.as_mut_ptr().add(SEG),
                WQEBB - SEG,
            )
        };
    } else {
        // SAFETY: as above; ds * SEG <= 64.
        unsafe {
            std::ptr::copy_nonoverlapping(
                qp.sq_buf.add(off + SEG),
                wqe.as_mut_ptr().add(SEG),
                ds * SEG - SEG,
            )
        };
    }
    let wqe = &wqe[..ds * SEG];
    let Some(peer) = qp.peer.clone() else {
        fail(s, qpn, index, wqebbs, Syndrome::TransportRetryExceeded);
        return Step::Local;
    };
    let pd = qp.pd;
    let max_sge = qp.caps.max_send_sge as usize;
    let max_inline = qp.caps.max_inline as usize;
    let signaled = ctrl_flags & flags::SIGNALED != 0;
    let mut req = Request {
        opcode: op,
        src_dev: dev_id,
        src_qpn: qpn,
        dst_qpn: peer.qpn,
        remote: Remote { addr: 0, rkey: 0 },
        len: 0,
        imm,
        swap_add: 0,
        compare: 0,
    };
    let payload_at = match op {
        opcode::NOP => {
            let qp = s.qp(qpn).expect("present");
            qp.sq_ci = qp.sq_ci.wrapping_add(wqebbs);
            qp.rnr = None;
            if signaled {
                let cq = qp.send_cq;
                s.push_cqe(cq, &ok_cqe(qpn, index, op, 0));
            }
            return Step::Local;
        }
        opcode::RDMA_WRITE | opcode::RDMA_WRITE_IMM | opcode::RDMA_READ if ds >= 2 => {
            req.remote = Remote {
                addr: be64(wqe, SEG),
                rkey: be32(wqe, SEG + 8),
            };
            2 * SEG
        }
        opcode::SEND | opcode::SEND_IMM => SEG,
        opcode::ATOMIC_CS | opcode::ATOMIC_FA if ds == 4 => {
            req.remote = Remote {
                addr: be64(wqe, SEG),
                rkey: be32(wqe, SEG + 8),
            };
            req.swap_add = be64(wqe, 2 * SEG);
            req.compare = be64(wqe, 2 * SEG + 8);
            3 * SEG
        }
        _ => {
            fail(s, qpn, index, wqebbs, Syndrome::LocalQpOp);
            return Step::Local;
        }
    };
    if !matches!(op, opcode::RDMA_WRITE_IMM | opcode::SEND_IMM) {
        req.imm = 0;
    }
    let body = &wqe[payload_at..];
    eng.scratch.clear();
    eng.sges.clear();
    match op {
        opcode::RDMA_READ | opcode::ATOMIC_CS | opcode::ATOMIC_FA => {
            // Scatter list, checked when the data comes back (phase 3).
            let mut total: u64 = 0;
            for seg in body.chunks_exact(SEG) {
                if be32(seg, 0) & INLINE_SEG != 0 {
                    fail(s, qpn, index, wqebbs, Syndrome::LocalQpOp);
                    return Step::Local;
                }
                let sge = read_sge(seg);
                total += u64::from(sge.len);
                eng.sges.push(sge);
            }
            let is_atomic = op != opcode::RDMA_READ;
            if eng.sges.len() > max_sge.max(1) || total > 1 << 31 {
                fail(s, qpn, index, wqebbs, Syndrome::LocalQpOp);
                return Step::Local;
            }
            if is_atomic && total < 8 {
                fail(s, qpn, index, wqebbs, Syndrome::LocalLength);
                return Step::Local;
            }
            req.len = if is_atomic { 8 } else { total as u32 };
        }
        _ => {
            // Gather: inline bytes or SGEs.
            if !body.is_empty() && be32(body, 0) & INLINE_SEG != 0 {
                let len = (be32(body, 0) & !INLINE_SEG) as usize;
                if len > max_inline || 4 + len > body.len() {
                    fail(s, qpn, index, wqebbs, Syndrome::LocalQpOp);
                    return Step::Local;
                }
                eng.scratch.extend_from_slice(&body[4..4 + len]);
            } else {
                if body.len() / SEG > max_sge {
                    fail(s, qpn, index, wqebbs, Syndrome::LocalQpOp);
                    return Step::Local;
                }
                for seg in body.chunks_exact(SEG) {
                    let sge = read_sge(seg);
                    if sge.len == 0 {
                        continue;
                    }
                    if s.mr(sge.lkey, pd, sge.addr, u64::from(sge.len)).is_none()
                        || eng.scratch.len() + sge.len as usize > 1 << 31
                    {
                        fail(s, qpn, index, wqebbs, Syndrome::LocalProt);
                        return Step::Local;
                    }
                    let at = eng.scratch.len();
                    eng.scratch.resize(at + sge.len as usize, 0);
                    // SAFETY: the range lies in a registered region (checked
                    // under the lock that deregistration takes).
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            sge.addr as *const u8,
                            eng.scratch.as_mut_ptr().add(at),
                            sge.len as usize,
                        )
                    };
                }
            }
            req.len = eng.scratch.len() as u32;
        }
    }
    let track = s.qp(qpn).expect("present").track.clone();
    Step::Remote(
        Inflight {
            track,
            req,
            index,
            wqebbs,
            flags: ctrl_flags,
        },
        peer,
    )
}

fn ok_cqe(qpn: u32, index: u16, op: u8, byte_len: u32) -> Cqe {
    Cqe {
        kind: Kind::Send { opcode: op },
        qpn,
        wqe_counter: index,
        byte_len: cqe::requester_byte_len(op, byte_len),
        imm: 0,
        srqn: 0,
        syndrome: None,
        vendor_syndrome: 0,
    }
}

/// A receive WQE taken from an RQ or SRQ.
struct RecvWqe {
    index: u16,
    srqn: u32,
    sges: [Sge; MAX_RECV_SGE],
    n: usize,
}

/// Takes the next receive WQE of QP `qpn`, if one is posted.
fn take_recv(s: &mut State, qpn: u32) -> Option<RecvWqe> {
    let qp = s.qp(qpn)?;
    let mut r = RecvWqe {
        index: 0,
        srqn: 0,
        sges: [Sge {
            addr: 0,
            len: 0,
            lkey: INVALID_LKEY,
        }; MAX_RECV_SGE],
        n: 0,
    };
    let (base, max_sge): (*const u8, usize) = match qp.srq {
        None => {
            if qp.rq_pi() == qp.rq_ci as u16 || qp.rq_cnt == 0 {
                return None;
            }
            r.index = qp.rq_ci as u16;
            let slot = qp.rq_ci & (qp.rq_cnt - 1);
            qp.rq_ci = qp.rq_ci.wrapping_add(1);
            let max = (qp.rq_stride as usize / SEG).min(MAX_RECV_SGE);
            // SAFETY: slot < rq_cnt, inside the RQ buffer.
            (
                unsafe { qp.rq_buf.add((slot * qp.rq_stride) as usize) },
                max,
            )
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
            r.index = idx as u16;
            r.srqn = srqn;
            let max = (srq.max_sge as usize).min(MAX_RECV_SGE);
            // SAFETY: the data segments follow the 16-byte next segment.
            (unsafe { wqe.add(SEG) }, max)
        }
    };
    for i in 0..max_sge {
        let mut b = [0u8; SEG];
        // SAFETY: segment i of the WQE lies within its stride.
        unsafe { std::ptr::copy_nonoverlapping(base.add(i * SEG), b.as_mut_ptr(), SEG) };
        let sge = read_sge(&b);
        if sge.lkey == INVALID_LKEY {
            break;
        }
        r.sges[i] = sge;
        r.n = i + 1;
    }
    Some(r)
}

/// Moves a responder QP to ERROR with an error receive completion.
fn responder_error(s: &mut State, qpn: u32, recv: &RecvWqe, syndrome: Syndrome) {
    let Some(qp) = s.qp(qpn) else { return };
    qp.set_state(QpState::Error);
    let cq = qp.recv_cq;
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
        },
    );
}

/// Phase 2, at the responder device.
pub(crate) fn respond(dev: &Shared, req: &Request, payload: &[u8], out: &mut Vec<u8>) -> Response {
    let mut s = dev.lock();
    let r = respond_locked(&mut s, req, payload, out);
    let errored = s
        .qp(req.dst_qpn)
        .is_some_and(|qp| qp.state == QpState::Error);
    drop(s);
    if errored {
        // Its receive queue must be flushed: device work.
        dev.bell.ring();
    }
    r
}

fn respond_locked(s: &mut State, req: &Request, payload: &[u8], out: &mut Vec<u8>) -> Response {
    let drop_it = Response::Nak(Syndrome::TransportRetryExceeded);
    let Some(qp) = s.qp(req.dst_qpn) else {
        return drop_it;
    };
    if !matches!(qp.state, QpState::Rtr | QpState::Rts)
        || !qp
            .peer
            .as_ref()
            .is_some_and(|p| p.dev_id == req.src_dev && p.qpn == req.src_qpn)
    {
        return drop_it;
    }
    let (pd, qp_access, recv_cq, timer) = (qp.pd, qp.access, qp.recv_cq, qp.min_rnr_timer);
    let qpn = req.dst_qpn;
    let remote_ok = |s: &State, need: Access, len: u64| {
        qp_access.contains(need)
            && s.mr(req.remote.rkey, pd, req.remote.addr, len)
                .is_some_and(|e| e.access.contains(need))
    };
    match req.opcode {
        opcode::RDMA_WRITE | opcode::RDMA_WRITE_IMM => {
            let len = payload.len() as u64;
            if len > 0 && !remote_ok(s, Access::REMOTE_WRITE, len) {
                return Response::Nak(Syndrome::RemoteAccess);
            }
            let recv = if req.opcode == opcode::RDMA_WRITE_IMM {
                match take_recv(s, qpn) {
                    Some(r) => Some(r),
                    None => return Response::Rnr { timer },
                }
            } else {
                None
            };
            if len > 0 {
                // SAFETY: the range is inside a registered region (checked
                // under the lock deregistration takes).
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        payload.as_ptr(),
                        req.remote.addr as *mut u8,
                        payload.len(),
                    )
                };
            }
            if let Some(r) = recv {
                s.push_cqe(
                    recv_cq,
                    &Cqe {
                        kind: Kind::RecvWriteImm,
                        qpn,
                        wqe_counter: r.index,
                        byte_len: payload.len() as u32,
                        imm: req.imm,
                        srqn: r.srqn,
                        syndrome: None,
                        vendor_syndrome: 0,
                    },
                );
            }
            Response::Ack { orig: 0 }
        }
        opcode::SEND | opcode::SEND_IMM => {
            let Some(recv) = take_recv(s, qpn) else {
                return Response::Rnr { timer };
            };
            let capacity: u64 = recv.sges[..recv.n].iter().map(|g| u64::from(g.len)).sum();
            if capacity < payload.len() as u64 {
                responder_error(s, qpn, &recv, Syndrome::LocalLength);
                return Response::Nak(Syndrome::RemoteInvalRequest);
            }
            let mut rest = payload;
            for g in &recv.sges[..recv.n] {
                if rest.is_empty() {
                    break;
                }
                let n = rest.len().min(g.len as usize);
                let ok = s
                    .mr(g.lkey, pd, g.addr, n as u64)
                    .is_some_and(|e| e.access.contains(Access::LOCAL_WRITE));
                if !ok {
                    responder_error(s, qpn, &recv, Syndrome::LocalProt);
                    return Response::Nak(Syndrome::RemoteOp);
                }
                // SAFETY: inside a registered, locally writable region.
                unsafe { std::ptr::copy_nonoverlapping(rest.as_ptr(), g.addr as *mut u8, n) };
                rest = &rest[n..];
            }
            let with_imm = req.opcode == opcode::SEND_IMM;
            s.push_cqe(
                recv_cq,
                &Cqe {
                    kind: if with_imm {
                        Kind::RecvSendImm
                    } else {
                        Kind::RecvSend
                    },
                    qpn,
                    wqe_counter: recv.index,
                    byte_len: payload.len() as u32,
                    imm: if with_imm { req.imm } else { 0 },
                    srqn: recv.srqn,
                    syndrome: None,
                    vendor_syndrome: 0,
                },
            );
            Response::Ack { orig: 0 }
        }
        opcode::RDMA_READ => {
            let len = u64::from(req.len);
            if len > 0 && !remote_ok(s, Access::REMOTE_READ, len) {
                return Response::Nak(Syndrome::RemoteAccess);
            }
            out.clear();
            out.resize(req.len as usize, 0);
            if len > 0 {
                // SAFETY: inside a registered, remotely readable region.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        req.remote.addr as *const u8,
                        out.as_mut_ptr(),
                        out.len(),
                    )
                };
            }
            Response::Ack { orig: 0 }
        }
        opcode::ATOMIC_CS | opcode::ATOMIC_FA => {
            if !req.remote.addr.is_multiple_of(8) || !remote_ok(s, Access::REMOTE_ATOMIC, 8) {
                return Response::Nak(Syndrome::RemoteAccess);
            }
            // SAFETY: 8 aligned bytes inside a registered region; every
            // device access to them is atomic.
            let a = unsafe { AtomicU64::from_ptr(req.remote.addr as *mut u64) };
            // SeqCst: atomics from several devices and local CPU atomics on
            // the same word agree on one order.
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
        _ => Response::Nak(Syndrome::RemoteInvalRequest),
    }
}

/// Phase 3. Returns whether the QP must wait (RNR) before its next WQE.
fn complete(s: &mut State, qpn: u32, f: &Inflight, resp: Response, eng: &mut Engine) -> bool {
    let Some(qp) = s.qp(qpn) else { return false };
    if !Arc::ptr_eq(&qp.track, &f.track) {
        return false; // destroyed meanwhile; this is another QP
    }
    match qp.state {
        QpState::Rts => {}
        QpState::Error => {
            // Moved to ERROR while in flight: the WQE is flushed.
            let cq = qp.send_cq;
            qp.sq_ci = qp.sq_ci.wrapping_add(f.wqebbs);
            s.push_cqe(cq, &flush_cqe(Kind::SendError, qpn, f.index, 0));
            return false;
        }
        _ => return false, // reset meanwhile: the WQE is gone
    }
    let pd = qp.pd;
    match resp {
        Response::Ack { orig } => {
            let data: &[u8] = match f.req.opcode {
                opcode::RDMA_READ => &eng.resp,
                opcode::ATOMIC_CS | opcode::ATOMIC_FA => &orig.to_be_bytes(),
                _ => &[],
            };
            if !data.is_empty() || f.req.opcode == opcode::RDMA_READ {
                // Validate the whole scatter list first: no partial writes.
                let mut rest = data.len();
                for g in &eng.sges {
                    let n = rest.min(g.len as usize);
                    let ok = n == 0
                        || s.mr(g.lkey, pd, g.addr, n as u64)
                            .is_some_and(|e| e.access.contains(Access::LOCAL_WRITE));
                    if !ok {
                        fail(s, qpn, f.index, f.wqebbs, Syndrome::LocalProt);
                        return false;
                    }
                    rest -= n;
                }
                let mut rest = data;
                for g in &eng.sges {
                    let n = rest.len().min(g.len as usize);
                    // SAFETY: validated above, under the same lock.
                    unsafe { std::ptr::copy_nonoverlapping(rest.as_ptr(), g.addr as *mut u8, n) };
                    rest = &rest[n..];
                }
            }
            let qp = s.qp(qpn).expect("present");
            qp.sq_ci = qp.sq_ci.wrapping_add(f.wqebbs);
            qp.rnr = None;
            if f.flags & flags::SIGNALED != 0 {
                let cq = qp.send_cq;
                s.push_cqe(cq, &ok_cqe(qpn, f.index, f.req.opcode, f.req.len));
            }
            false
        }
        Response::Rnr { timer } => {
            let limit = qp.rnr_retry;
            let r = qp.rnr.get_or_insert(super::Rnr {
                attempts: 0,
                next: Instant::now(),
            });
            r.attempts += 1;
            if limit != 7 && r.attempts > u32::from(limit) {
                fail(s, qpn, f.index, f.wqebbs, Syndrome::RnrRetryExceeded);
                return false;
            }
            r.next = Instant::now() + rnr_delay(timer);
            eng.next_timer = Some(eng.next_timer.map_or(r.next, |t| t.min(r.next)));
            true
        }
        Response::Nak(syndrome) => {
            fail(s, qpn, f.index, f.wqebbs, syndrome);
            false
        }
    }
}
