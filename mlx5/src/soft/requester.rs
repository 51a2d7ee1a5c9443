//! The requester: phases 1 and 3 of the parent module's three for the WQEs
//! of one QP. Phase 1 reads a WQE out of the send queue, decodes and
//! validates it and gathers its payload; phase 2 runs in line for a peer
//! in this process ([`super::responder`]) or goes out as a `REQ` on a link;
//! phase 3 scatters what came back and writes the requester's CQE, or arms
//! a retry.

use std::time::Instant;

use super::responder::respond_in_process;
use super::state::{Engine, Fabric, Inflight, Rnr, Shared, State, Target, rnr_delay, wqebbs_of};
use super::wire::{Request, Response};
use crate::cqe::{self, Cqe, Kind};
use crate::prm::{Access, INLINE_SEG, MAX_DS, QpState, SEG, Syndrome, WQEBB, flags, opcode};
use crate::wqe::{Remote, Sge, read_data};

/// WQEs one QP may execute per progress pass (fairness between QPs).
const BUDGET: usize = 64;

/// What the local phase decided.
enum Step {
    /// A NOP: completes without the responder.
    Nop {
        index: u16,
        wqebbs: u32,
        signaled: bool,
    },
    /// Fails locally with this syndrome.
    Fail {
        index: u16,
        wqebbs: u32,
        syndrome: Syndrome,
    },
    /// Needs the responder.
    Remote(Inflight, super::state::Peer),
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

pub(crate) fn min_timer(t: &mut Option<Instant>, at: Instant) {
    *t = Some(t.map_or(at, |t| t.min(at)));
}

/// Executes up to [`BUDGET`] WQEs of QP `qpn`, with the fabric locked: a
/// peer in this process answers in line.
pub(crate) fn process_qp(shared: &Shared, eng: &mut Engine, fab: &mut Fabric, qpn: u32) -> usize {
    let mut done = 0;
    for _ in 0..BUDGET {
        let Some(s) = fab.state(shared.dev) else {
            break;
        };
        let Some(qp) = s.qp(qpn) else { break };
        if qp.state == QpState::Error {
            done += flush(s, qpn);
            break;
        }
        if qp.state != QpState::Rts || qp.sq_pi() == qp.sq_sent as u16 {
            break;
        }
        if let Some(r) = &qp.rnr
            && !shared.is_manual()
            && Instant::now() < r.next
        {
            min_timer(&mut eng.next_timer, r.next);
            break;
        }
        let busy = !qp.inflight.is_empty();
        let epoch = qp.epoch;
        match local_phase(s, qpn, shared.addr, eng) {
            // Completions are in order: these wait for the requests in
            // flight to be answered.
            Step::Nop { .. } | Step::Fail { .. } if busy => break,
            Step::Nop {
                index,
                wqebbs,
                signaled,
            } => {
                let qp = s.qp(qpn).expect("present");
                qp.sq_ci = qp.sq_ci.wrapping_add(wqebbs);
                qp.sq_sent = qp.sq_ci;
                qp.rnr = None;
                if signaled {
                    let cq = qp.send_cq;
                    s.push_cqe(cq, &ok_cqe(qpn, index, opcode::NOP, 0));
                }
                done += 1;
            }
            Step::Fail {
                index,
                wqebbs,
                syndrome,
            } => {
                fail(s, qpn, index, wqebbs, syndrome);
                if let Some(qp) = s.qp(qpn) {
                    qp.fail_next = None;
                }
                done += 1;
            }
            Step::Remote(mut f, peer) => match peer.target {
                Target::Local(dev) => {
                    eng.resp.clear();
                    let resp = if eng.faults.dropped.contains(&peer.addr) {
                        Response::Nak(Syndrome::TransportRetryExceeded)
                    } else {
                        respond_in_process(fab, dev, &f.req, &eng.scratch, &mut eng.resp)
                    };
                    let Some(s) = fab.state(shared.dev) else {
                        break;
                    };
                    let rnr = complete(s, qpn, &f, resp, &eng.resp, &eng.sges, &mut eng.next_timer);
                    // An RNR NAK completes nothing: it is not progress (so a
                    // manual `progress_until_idle` ends while a QP waits).
                    if rnr {
                        break;
                    }
                    if let Some(qp) = s.qp(qpn) {
                        qp.psn = qp.psn.wrapping_add(1);
                    }
                    done += 1;
                }
                Target::Link(id) => {
                    let link = eng.links.iter_mut().find(|l| l.id == id && l.is_up());
                    let Some(link) = link else {
                        if busy {
                            break;
                        }
                        fail(s, qpn, f.index, f.wqebbs, Syndrome::TransportRetryExceeded);
                        done += 1;
                        continue;
                    };
                    link.put_req(&f.req, epoch, &eng.scratch);
                    eng.stats.frames_sent += 1;
                    let qp = s.qp(qpn).expect("present");
                    qp.sq_sent = qp.sq_sent.wrapping_add(f.wqebbs);
                    qp.psn = qp.psn.wrapping_add(1);
                    f.nsges = eng.sges.len();
                    qp.inflight_sges.extend(eng.sges.iter().copied());
                    qp.inflight.push_back(f);
                    done += 1;
                }
            },
        }
    }
    done
}

/// Completes the WQE at the QP's consumer position with an error, moves the
/// QP to ERROR (its remaining work is flushed by the next pass).
pub(crate) fn fail(s: &mut State, qpn: u32, index: u16, wqebbs: u32, syndrome: Syndrome) {
    let Some(qp) = s.qp(qpn) else { return };
    let pos = qp.sq_ci;
    qp.sq_ci = qp.sq_ci.wrapping_add(wqebbs);
    if qp.inflight.is_empty() {
        qp.sq_sent = qp.sq_ci;
    }
    qp.rnr = None;
    let cq = qp.send_cq;
    let opcode = qp.wqe_opcode(pos);
    s.qp_to_error(qpn);
    s.push_cqe(
        cq,
        &Cqe {
            kind: Kind::SendError { opcode },
            qpn,
            wqe_counter: index,
            byte_len: 0,
            imm: 0,
            srqn: 0,
            syndrome: Some(syndrome),
            vendor_syndrome: 0,
            solicited: false,
        },
    );
}

/// Flushes every posted send and receive WQE of an ERROR QP (those in
/// flight to a remote device too: their answers will be ignored).
pub(crate) fn flush(s: &mut State, qpn: u32) -> usize {
    let Some(qp) = s.qp(qpn) else { return 0 };
    qp.inflight.clear();
    qp.inflight_sges.clear();
    let mut out: Vec<(u32, Cqe)> = Vec::new();
    let pi = qp.sq_pi();
    while qp.sq_ci as u16 != pi {
        let pos = qp.sq_ci;
        let posted = u32::from(pi.wrapping_sub(pos as u16));
        // Each posted WQE gets its flush completion, whatever its bytes
        // say: see `SoftQp::span`.
        let claimed = if qp.starts_wqe(pos) {
            wqebbs_of((qp.ctrl_words(pos).1 & 0x3f) as usize)
        } else {
            0
        };
        let wqebbs = qp.span(pos, claimed, posted);
        let kind = Kind::SendError {
            opcode: qp.wqe_opcode(pos),
        };
        out.push((qp.send_cq, flush_cqe(kind, qpn, pos as u16, 0)));
        qp.sq_ci = pos.wrapping_add(wqebbs);
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
    qp.sq_sent = qp.sq_ci;
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
        solicited: false,
    }
}

/// Phase 1: decode, validate, gather (the WQE at `sq_sent`). Changes
/// nothing: the caller applies the step.
fn local_phase(s: &mut State, qpn: u32, src: [u8; 16], eng: &mut Engine) -> Step {
    let qp = s.qp(qpn).expect("caller checked");
    let pos = qp.sq_sent;
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
    let sane = ds != 0
        && index == pos as u16
        && (w0 >> 24) == 0
        && (w1 >> 8) == qpn
        && ds <= qp.caps.max_ds()
        && wqebbs <= qp.sq_cnt;
    // A WQE that claims more than was posted, or whose claim covers the
    // next posted WQE's control segment, is malformed too: executing it
    // would swallow that WQE (its poster would never see it complete).
    if !sane || wqebbs > posted || qp.span(pos, wqebbs, posted) != wqebbs {
        return Step::Fail {
            index: pos as u16,
            wqebbs: qp.span(pos, if sane { wqebbs } else { 0 }, posted),
            syndrome: Syndrome::LocalQpOp,
        };
    }
    if let Some(syndrome) = qp.fail_next {
        return Step::Fail {
            index,
            wqebbs,
            syndrome,
        };
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
    let Some(peer) = qp.peer else {
        return Step::Fail {
            index,
            wqebbs,
            syndrome: Syndrome::TransportRetryExceeded,
        };
    };
    let psn = qp.psn;
    let pd = qp.pd;
    let max_sge = qp.caps.max_send_sge as usize;
    let max_inline = qp.caps.max_inline as usize;
    let signaled = ctrl_flags & flags::SIGNALED != 0;
    let mut req = Request {
        opcode: op,
        src,
        src_qpn: qpn,
        psn,
        dst_qpn: peer.qpn,
        remote: Remote { addr: 0, rkey: 0 },
        len: 0,
        imm,
        swap_add: 0,
        compare: 0,
        solicited: ctrl_flags & flags::SOLICITED != 0,
    };
    let payload_at = match op {
        opcode::NOP => {
            return Step::Nop {
                index,
                wqebbs,
                signaled,
            };
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
            return Step::Fail {
                index,
                wqebbs,
                syndrome: Syndrome::LocalQpOp,
            };
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
                    return Step::Fail {
                        index,
                        wqebbs,
                        syndrome: Syndrome::LocalQpOp,
                    };
                }
                let sge = read_data(seg);
                total += u64::from(sge.len);
                eng.sges.push(sge);
            }
            let is_atomic = op != opcode::RDMA_READ;
            if eng.sges.len() > max_sge.max(1) || total > 1 << 31 {
                return Step::Fail {
                    index,
                    wqebbs,
                    syndrome: Syndrome::LocalQpOp,
                };
            }
            if is_atomic && total < 8 {
                return Step::Fail {
                    index,
                    wqebbs,
                    syndrome: Syndrome::LocalLength,
                };
            }
            req.len = if is_atomic { 8 } else { total as u32 };
        }
        _ => {
            // Gather: inline bytes or SGEs.
            if !body.is_empty() && be32(body, 0) & INLINE_SEG != 0 {
                let len = (be32(body, 0) & !INLINE_SEG) as usize;
                if len > max_inline || 4 + len > body.len() {
                    return Step::Fail {
                        index,
                        wqebbs,
                        syndrome: Syndrome::LocalQpOp,
                    };
                }
                eng.scratch.extend_from_slice(&body[4..4 + len]);
            } else {
                if body.len() / SEG > max_sge {
                    return Step::Fail {
                        index,
                        wqebbs,
                        syndrome: Syndrome::LocalQpOp,
                    };
                }
                for seg in body.chunks_exact(SEG) {
                    let sge = read_data(seg);
                    if sge.len == 0 {
                        continue;
                    }
                    if s.mr(sge.lkey, pd, sge.addr, u64::from(sge.len)).is_none()
                        || eng.scratch.len() + sge.len as usize > 1 << 31
                    {
                        return Step::Fail {
                            index,
                            wqebbs,
                            syndrome: Syndrome::LocalProt,
                        };
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
    let incarnation = s.qp(qpn).expect("present").incarnation;
    Step::Remote(
        Inflight {
            incarnation,
            req,
            index,
            wqebbs,
            flags: ctrl_flags,
            nsges: 0,
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
        solicited: false,
    }
}

/// Phase 3. `data` is a READ's data, `sges` the WQE's scatter list.
/// Returns whether the QP must wait (RNR) before its next WQE.
pub(crate) fn complete(
    s: &mut State,
    qpn: u32,
    f: &Inflight,
    resp: Response,
    data: &[u8],
    sges: &[Sge],
    next_timer: &mut Option<Instant>,
) -> bool {
    let Some(qp) = s.qp(qpn) else { return false };
    if qp.incarnation != f.incarnation {
        return false; // destroyed meanwhile; this is another QP
    }
    match qp.state {
        QpState::Rts => {}
        QpState::Error => {
            // Moved to ERROR while in flight: the WQE is flushed.
            let cq = qp.send_cq;
            let kind = Kind::SendError {
                opcode: f.req.opcode,
            };
            qp.sq_ci = qp.sq_ci.wrapping_add(f.wqebbs);
            if qp.inflight.is_empty() {
                qp.sq_sent = qp.sq_ci;
            }
            s.push_cqe(cq, &flush_cqe(kind, qpn, f.index, 0));
            return false;
        }
        _ => return false, // reset meanwhile: the WQE is gone
    }
    let pd = qp.pd;
    let resp = match resp {
        // The head of the queue out of sequence: the two ends disagree on
        // where they are (one was reset alone); no retry fixes that.
        Response::OutOfSequence => Response::Nak(Syndrome::TransportRetryExceeded),
        r => r,
    };
    match resp {
        Response::Ack { orig } => {
            if f.req.opcode == opcode::RDMA_READ && data.len() != f.req.len as usize {
                fail(s, qpn, f.index, f.wqebbs, Syndrome::RemoteInvalRequest);
                return false;
            }
            let data: &[u8] = match f.req.opcode {
                opcode::RDMA_READ => data,
                opcode::ATOMIC_CS | opcode::ATOMIC_FA => &orig.to_be_bytes(),
                _ => &[],
            };
            if !data.is_empty() || f.req.opcode == opcode::RDMA_READ {
                // Validate the whole scatter list first: no partial writes.
                let mut rest = data.len();
                for g in sges {
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
                for g in sges {
                    let n = rest.len().min(g.len as usize);
                    // SAFETY: validated above, under the same lock.
                    unsafe { std::ptr::copy_nonoverlapping(rest.as_ptr(), g.addr as *mut u8, n) };
                    rest = &rest[n..];
                }
            }
            let qp = s.qp(qpn).expect("present");
            qp.sq_ci = qp.sq_ci.wrapping_add(f.wqebbs);
            if qp.inflight.is_empty() {
                qp.sq_sent = qp.sq_ci;
            }
            qp.rnr = None;
            if f.flags & flags::SIGNALED != 0 {
                let cq = qp.send_cq;
                s.push_cqe(cq, &ok_cqe(qpn, f.index, f.req.opcode, f.req.len));
            }
            false
        }
        Response::NoAnswer => {
            let (limit, wait) = (qp.retry_cnt, qp.ack_timeout);
            let r = qp.rnr.get_or_insert(Rnr {
                attempts: 0,
                lost: 0,
                next: Instant::now(),
            });
            r.lost += 1;
            if r.lost > u32::from(limit) {
                fail(s, qpn, f.index, f.wqebbs, Syndrome::TransportRetryExceeded);
                return false;
            }
            r.next = Instant::now() + wait;
            let next = r.next;
            min_timer(next_timer, next);
            true
        }
        Response::Rnr { timer } => {
            let limit = qp.rnr_retry;
            let r = qp.rnr.get_or_insert(Rnr {
                attempts: 0,
                lost: 0,
                next: Instant::now(),
            });
            r.attempts += 1;
            if limit != 7 && r.attempts > u32::from(limit) {
                fail(s, qpn, f.index, f.wqebbs, Syndrome::RnrRetryExceeded);
                return false;
            }
            r.next = Instant::now() + rnr_delay(timer);
            let next = r.next;
            min_timer(next_timer, next);
            true
        }
        Response::Nak(syndrome) => {
            fail(s, qpn, f.index, f.wqebbs, syndrome);
            false
        }
        Response::OutOfSequence => unreachable!("mapped above"),
    }
}
