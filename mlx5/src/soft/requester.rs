//! The requester: phases 1 and 3 of the parent module's three for the WQEs
//! of one QP. Phase 1 reads a WQE out of the send queue, decodes and
//! validates it and gathers its payload; phase 2 runs in line for a peer
//! in this process ([`super::responder`]) or goes out as a `REQ` on a link;
//! phase 3 scatters what came back and writes the requester's CQE, or arms
//! a retry.

use std::time::Instant;

use super::link::ACK_AT_ONCE_BELOW;
use super::responder::respond_in_process;
use super::state::{Engine, Fabric, Inflight, Rnr, Shared, State, Target, rnr_delay, wqebbs_of};
use super::wire::{Data, Request, Response};
use crate::cqe::{self, Cqe, Kind};
use crate::prm::{Access, INLINE_SEG, MAX_DS, QpState, SEG, Syndrome, WQEBB, flags, opcode};
use crate::queue::QpCaps;
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
            Step::Nop { .. } | Step::Fail { .. } if busy => {
                ask_for_answers(s, qpn, eng);
                break;
            }
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
                    copy_segs(&mut eng.scratch, &eng.segs);
                    let resp = if eng.faults.dropped.contains(&peer.addr) {
                        Response::Nak(Syndrome::TransportRetryExceeded)
                    } else {
                        respond_in_process(
                            fab,
                            dev,
                            &f.req,
                            Data::slice(&eng.scratch),
                            &mut eng.resp,
                        )
                    };
                    let Some(s) = fab.state(shared.dev) else {
                        break;
                    };
                    let data = Data::slice(&eng.resp);
                    let rnr = complete(s, qpn, &f, resp, data, &eng.sges, &mut eng.next_timer);
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
                Target::Link(mut id) => {
                    // Two links to this peer (both devices connected at
                    // once): send on the one both prefer, so the peer's
                    // answers ride with its requests. A QP moves only from
                    // a link that is up (one that died fails its QPs, as
                    // always) and awaits nothing of it (answers, stale ones
                    // after an RNR NAK too, come back on the link the
                    // requests went out on: the order holds); the new
                    // link's ACK timeout is at most the QP's, as at connect.
                    if eng.dup_links
                        && !busy
                        && let Some(p) = eng.preferred_link(shared.addr, peer.addr)
                        && p != id
                        && eng
                            .links
                            .iter()
                            .any(|l| l.id == id && l.is_up() && !l.awaits(qpn))
                    {
                        let budget = s
                            .qp(qpn)
                            .map(|q| q.ack_timeout * (u32::from(q.retry_cnt.min(7)) + 1));
                        if let (Some(b), Some(l)) =
                            (budget, eng.links.iter_mut().find(|l| l.id == p))
                            && l.lower_timeout(b)
                        {
                            eng.stats.frames_sent += 1;
                        }
                        id = p;
                        if let Some(q) = s.qp(qpn).and_then(|q| q.peer.as_mut()) {
                            q.target = Target::Link(p);
                        }
                    }
                    let link = eng.links.iter_mut().find(|l| l.id == id && l.is_up());
                    let Some(link) = link else {
                        if busy {
                            break;
                        }
                        fail(s, qpn, f.index, f.wqebbs, Syndrome::TransportRetryExceeded);
                        done += 1;
                        continue;
                    };
                    let mut parts = [Data::slice(&[]); MAX_PARTS];
                    let n = payload_parts(&eng.scratch, &eng.segs, &mut parts);
                    f.req.ack_now |= link.timeout < ACK_AT_ONCE_BELOW;
                    link.put_req(&f.req, epoch, &parts[..n]);
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

/// A WQE that completes locally waits behind requests in flight on a
/// link: unless each of them asked for its ACK at once, the link is asked
/// (`wire::K_ACKREQ`, once per flight: the QP sends nothing more while it
/// waits) to have the peer send the answers it holds back, so the WQE
/// waits a round trip, not the peer's ACK hold.
fn ask_for_answers(s: &mut State, qpn: u32, eng: &mut Engine) {
    let Some(qp) = s.qp(qpn) else { return };
    if qp.answers_asked || qp.inflight.iter().all(|f| f.req.ack_now) {
        return;
    }
    let Some(Target::Link(id)) = qp.peer.as_ref().map(|p| p.target) else {
        return;
    };
    if let Some(link) = eng.links.iter_mut().find(|l| l.id == id && l.is_up()) {
        link.put_ack_request();
        eng.stats.frames_sent += 1;
        qp.answers_asked = true;
    }
}

/// Completes the WQE at the QP's consumer position with an error, moves the
/// QP to ERROR (its remaining work is flushed by the next pass).
pub(crate) fn fail(s: &mut State, qpn: u32, index: u16, wqebbs: u32, syndrome: Syndrome) {
    let Some(qp) = s.qp(qpn) else { return };
    let pos = qp.sq_ci;
    // A failed WQE whose claim covers a later posted WQE's control segment
    // (a raw WQE that lied about its size) ends there: that WQE still gets
    // its (flush) completion.
    let posted = u32::from(qp.sq_pi().wrapping_sub(pos as u16));
    let wqebbs = qp.span(pos, wqebbs, posted.max(1));
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

/// A WQE copied out of the send queue, its control segment decoded. One
/// per device (`Engine::wqe`), reused: a WQE's bytes are copied in over
/// the last one's, never zeroed first (only its `ds * 16` are read).
pub(crate) struct Wqe {
    /// Its bytes (`ds * 16` of them are the WQE's).
    bytes: [u8; MAX_DS * SEG + SEG],
    ds: usize,
    index: u16,
    wqebbs: u32,
    opcode: u8,
    flags: u8,
    /// The immediate, host order.
    imm: u32,
}

impl Default for Wqe {
    fn default() -> Wqe {
        Wqe {
            bytes: [0u8; MAX_DS * SEG + SEG],
            ds: 0,
            index: 0,
            wqebbs: 0,
            opcode: 0,
            flags: 0,
            imm: 0,
        }
    }
}

/// A malformed WQE: where it is and what it spans as far as the device is
/// concerned (see `SoftQp::span`).
struct Malformed {
    index: u16,
    wqebbs: u32,
}

/// Reads the WQE at the QP's send position, or says how it fails: a WQE
/// whose control segment does not name this position and QP, whose `ds` is
/// 0 or over the QP's limit, that claims more than was posted, or whose
/// claim covers the next posted WQE's control segment (executing it would
/// swallow that WQE, whose poster would never see it complete) is
/// malformed: `LocalQpOp`, over what the device takes it to span.
fn read_wqe(s: &mut State, qpn: u32, w: &mut Wqe) -> Result<(), Malformed> {
    let qp = s.qp(qpn).expect("caller checked");
    let pos = qp.sq_sent;
    let posted = u32::from(qp.sq_pi().wrapping_sub(pos as u16));
    let mask = qp.sq_cnt - 1;
    let off = (pos & mask) as usize * WQEBB;
    // SAFETY: a WQEBB inside the SQ buffer, device-owned (posted).
    unsafe { std::ptr::copy_nonoverlapping(qp.sq_buf.add(off), w.bytes.as_mut_ptr(), SEG) };
    let w0 = be32(&w.bytes, 0);
    let w1 = be32(&w.bytes, 4);
    w.opcode = w0 as u8;
    w.index = (w0 >> 8) as u16;
    w.ds = (w1 & 0x3f) as usize;
    w.flags = w.bytes[11];
    w.imm = be32(&w.bytes, 12);
    w.wqebbs = wqebbs_of(w.ds);
    let sane = w.ds != 0
        && w.index == pos as u16
        && (w0 >> 24) == 0
        && (w1 >> 8) == qpn
        && w.ds <= qp.caps.max_ds()
        && w.wqebbs <= qp.sq_cnt;
    // A WQE that claims more than was posted is malformed too, and then
    // it spans only up to the next posted control segment, so it cannot
    // swallow that WQE. A WQE claiming no more than was posted executes by
    // its claim, as a NIC does: its inline bytes may look like anything.
    if !sane || w.wqebbs > posted {
        return Err(Malformed {
            index: pos as u16,
            wqebbs: qp.span(pos, if sane { w.wqebbs } else { 0 }, posted),
        });
    }
    let end = w.ds * SEG;
    // The rest of the first WQEBB, then the others, following the ring
    // (hardware reads across the end; our own posts never need it thanks
    // to NOP padding).
    // SAFETY: the first WQEBB lies inside the SQ buffer; `end <= 64` or it
    // is copied whole.
    unsafe {
        std::ptr::copy_nonoverlapping(
            qp.sq_buf.add(off + SEG),
            w.bytes.as_mut_ptr().add(SEG),
            end.min(WQEBB) - SEG,
        )
    };
    for b in 1..w.wqebbs {
        let o = (pos.wrapping_add(b) & mask) as usize * WQEBB;
        let dst = b as usize * WQEBB;
        let n = WQEBB.min(end - dst.min(end));
        if n == 0 {
            break;
        }
        // SAFETY: a posted WQEBB inside the SQ buffer; dst + n <= end.
        unsafe {
            std::ptr::copy_nonoverlapping(qp.sq_buf.add(o), w.bytes.as_mut_ptr().add(dst), n)
        };
    }
    Ok(())
}

/// The remote address (and atomic) segments of WQE `w` into `req`; where
/// its data segments start. `None`: an opcode this device does not
/// execute, or a `ds` too small for its segments.
fn address_segments(w: &Wqe, req: &mut Request) -> Option<usize> {
    let b = &w.bytes[..w.ds * SEG];
    let remote = || Remote {
        addr: be64(b, SEG),
        rkey: be32(b, SEG + 8),
    };
    match w.opcode {
        opcode::RDMA_WRITE | opcode::RDMA_WRITE_IMM | opcode::RDMA_READ if w.ds >= 2 => {
            req.remote = remote();
            Some(2 * SEG)
        }
        opcode::SEND | opcode::SEND_IMM => Some(SEG),
        opcode::ATOMIC_CS | opcode::ATOMIC_FA if w.ds == 4 => {
            req.remote = remote();
            req.swap_add = be64(b, 2 * SEG);
            req.compare = be64(b, 2 * SEG + 8);
            Some(3 * SEG)
        }
        _ => None,
    }
}

/// A READ's or an atomic's scatter list, into `sges` (checked against the
/// regions when the data comes back, in phase 3); the bytes it asks for.
fn scatter_list(body: &[u8], op: u8, max_sge: usize, sges: &mut Vec<Sge>) -> Result<u32, Syndrome> {
    let mut total: u64 = 0;
    for seg in body.chunks_exact(SEG) {
        if be32(seg, 0) & INLINE_SEG != 0 {
            return Err(Syndrome::LocalQpOp);
        }
        let sge = read_data(seg);
        total += u64::from(sge.len);
        sges.push(sge);
    }
    let is_atomic = op != opcode::RDMA_READ;
    if sges.len() > max_sge.max(1) || total > 1 << 31 {
        return Err(Syndrome::LocalQpOp);
    }
    if is_atomic && total < 8 {
        return Err(Syndrome::LocalLength);
    }
    Ok(if is_atomic { 8 } else { total as u32 })
}

/// The most parts a WQE's payload has: its inline bytes, or its gather
/// list (at most 16 entries, see `QpCaps`).
pub(crate) const MAX_PARTS: usize = 16;

/// A WRITE's or SEND's payload: inline bytes copied into `inline`, or the
/// gather list checked against the QP's PD's regions and left in `segs`,
/// not copied (the bytes are read where they lie, with the state still
/// locked, when the request goes out: see [`payload_parts`]); its length.
fn gather(
    s: &State,
    body: &[u8],
    pd: u32,
    caps: &QpCaps,
    inline: &mut Vec<u8>,
    segs: &mut Vec<(u64, u32)>,
) -> Result<u32, Syndrome> {
    if !body.is_empty() && be32(body, 0) & INLINE_SEG != 0 {
        let len = (be32(body, 0) & !INLINE_SEG) as usize;
        if len > caps.max_inline as usize || 4 + len > body.len() {
            return Err(Syndrome::LocalQpOp);
        }
        inline.extend_from_slice(&body[4..4 + len]);
        return Ok(len as u32);
    }
    if body.len() / SEG > (caps.max_send_sge as usize).min(MAX_PARTS) {
        return Err(Syndrome::LocalQpOp);
    }
    let mut total = 0u64;
    for seg in body.chunks_exact(SEG) {
        let sge = read_data(seg);
        if sge.len == 0 {
            continue;
        }
        total += u64::from(sge.len);
        if s.mr(sge.lkey, pd, sge.addr, u64::from(sge.len)).is_none() || total > 1 << 31 {
            return Err(Syndrome::LocalProt);
        }
        segs.push((sge.addr, sge.len));
    }
    Ok(total as u32)
}

/// The payload `gather` left as parts: the inline bytes, or the gather
/// list's ranges; how many.
///
/// The ranges are read where they lie: `gather` checked them against
/// registered regions under the state lock, which the caller still holds
/// (deregistration takes it).
fn payload_parts<'a>(inline: &'a [u8], segs: &[(u64, u32)], parts: &mut [Data<'a>]) -> usize {
    debug_assert!(
        segs.len() <= parts.len(),
        "gather caps the list at MAX_PARTS"
    );
    if !inline.is_empty() {
        parts[0] = Data::slice(inline);
        return 1;
    }
    for (p, &(addr, len)) in parts.iter_mut().zip(segs) {
        // SAFETY: a registered range, see above.
        *p = unsafe { Data::raw(addr as *const u8, len as usize) };
    }
    segs.len()
}

/// Appends the gather list's bytes to `out` (a peer in this process takes
/// the payload as one slice).
fn copy_segs(out: &mut Vec<u8>, segs: &[(u64, u32)]) {
    let mut parts = [Data::slice(&[]); MAX_PARTS];
    let n = payload_parts(&[], segs, &mut parts);
    for d in &parts[..n] {
        d.append_to(out);
    }
}

/// Phase 1: decode, validate, gather (the WQE at `sq_sent`). Changes
/// nothing: the caller applies the step.
fn local_phase(s: &mut State, qpn: u32, src: [u8; 16], eng: &mut Engine) -> Step {
    if let Err(m) = read_wqe(s, qpn, &mut eng.wqe) {
        return Step::Fail {
            index: m.index,
            wqebbs: m.wqebbs,
            syndrome: Syndrome::LocalQpOp,
        };
    }
    let w = &eng.wqe;
    let (index, wqebbs) = (w.index, w.wqebbs);
    let fail = |syndrome| Step::Fail {
        index,
        wqebbs,
        syndrome,
    };
    let qp = s.qp(qpn).expect("caller checked");
    if let Some(syndrome) = qp.fail_next {
        return fail(syndrome);
    }
    let Some(peer) = qp.peer else {
        return fail(Syndrome::TransportRetryExceeded);
    };
    let (pd, caps, incarnation) = (qp.pd, qp.caps, qp.incarnation);
    if w.opcode == opcode::NOP {
        return Step::Nop {
            index,
            wqebbs,
            signaled: w.flags & flags::SIGNALED != 0,
        };
    }
    let mut req = Request {
        opcode: w.opcode,
        src,
        src_qpn: qpn,
        psn: qp.psn,
        dst_qpn: peer.qpn,
        remote: Remote { addr: 0, rkey: 0 },
        len: 0,
        imm: if matches!(w.opcode, opcode::RDMA_WRITE_IMM | opcode::SEND_IMM) {
            w.imm
        } else {
            0
        },
        swap_add: 0,
        compare: 0,
        solicited: w.flags & flags::SOLICITED != 0,
        // A completion to write, or data or an original value to bring
        // back: the answer is wanted at once (see `wire`). The link may
        // ask for it on every request (a short ACK timeout).
        ack_now: w.flags & flags::SIGNALED != 0
            || !matches!(
                w.opcode,
                opcode::RDMA_WRITE | opcode::RDMA_WRITE_IMM | opcode::SEND | opcode::SEND_IMM
            ),
    };
    let Some(payload_at) = address_segments(w, &mut req) else {
        return fail(Syndrome::LocalQpOp);
    };
    let body = &w.bytes[payload_at..w.ds * SEG];
    eng.scratch.clear();
    eng.segs.clear();
    eng.sges.clear();
    let len = match w.opcode {
        opcode::RDMA_READ | opcode::ATOMIC_CS | opcode::ATOMIC_FA => {
            scatter_list(body, w.opcode, caps.max_send_sge as usize, &mut eng.sges)
        }
        _ => gather(s, body, pd, &caps, &mut eng.scratch, &mut eng.segs),
    };
    match len {
        Ok(len) => req.len = len,
        Err(syndrome) => return fail(syndrome),
    }
    Step::Remote(
        Inflight {
            incarnation,
            req,
            index,
            wqebbs,
            flags: w.flags,
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
    data: Data<'_>,
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
    let resp = match resp {
        // The head of the queue out of sequence: the two ends disagree on
        // where they are (one was reset alone); no retry fixes that.
        Response::OutOfSequence => Response::Nak(Syndrome::TransportRetryExceeded),
        r => r,
    };
    match resp {
        Response::Ack { orig } => {
            acknowledged(s, qpn, f, orig, data, sges);
            false
        }
        Response::NoAnswer | Response::Rnr { .. } => retry_later(s, qpn, f, resp, next_timer),
        Response::Nak(syndrome) => {
            fail(s, qpn, f.index, f.wqebbs, syndrome);
            false
        }
        Response::OutOfSequence => unreachable!("mapped above"),
    }
}

/// Phase 3 of an acknowledged WQE: READ data or the atomic's original
/// value scattered (the whole scatter list validated first: no partial
/// writes), the send queue advanced, the requester CQE if signaled.
fn acknowledged(s: &mut State, qpn: u32, f: &Inflight, orig: u64, data: Data<'_>, sges: &[Sge]) {
    if f.req.opcode == opcode::RDMA_READ && data.len() != f.req.len as usize {
        fail(s, qpn, f.index, f.wqebbs, Syndrome::RemoteInvalRequest);
        return;
    }
    let pd = s.qp(qpn).expect("present").pd;
    let orig = orig.to_be_bytes();
    let data = match f.req.opcode {
        opcode::RDMA_READ => data,
        opcode::ATOMIC_CS | opcode::ATOMIC_FA => Data::slice(&orig),
        _ => Data::slice(&[]),
    };
    if !data.is_empty() || f.req.opcode == opcode::RDMA_READ {
        let mut rest = data.len();
        for g in sges {
            let n = rest.min(g.len as usize);
            let ok = n == 0
                || s.mr(g.lkey, pd, g.addr, n as u64)
                    .is_some_and(|e| e.access.contains(Access::LOCAL_WRITE));
            if !ok {
                fail(s, qpn, f.index, f.wqebbs, Syndrome::LocalProt);
                return;
            }
            rest -= n;
        }
        let mut rest = data;
        for g in sges {
            let (now, later) = rest.split_at(rest.len().min(g.len as usize));
            // SAFETY: validated above, under the same lock.
            unsafe { now.copy_to(g.addr as *mut u8) };
            rest = later;
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
}

/// Phase 3 of a WQE the responder did not take: dropped unanswered (resent
/// after the ACK timeout, `retry_cnt` times) or RNR NAKed (resent after the
/// responder's timer, `rnr_retry` times, 7 = forever). True: the QP waits
/// to resend; false: the retries ran out and the WQE failed.
fn retry_later(
    s: &mut State,
    qpn: u32,
    f: &Inflight,
    resp: Response,
    next_timer: &mut Option<Instant>,
) -> bool {
    let qp = s.qp(qpn).expect("present");
    let (retry_cnt, ack_timeout, rnr_retry) = (qp.retry_cnt, qp.ack_timeout, qp.rnr_retry);
    let r = qp.rnr.get_or_insert(Rnr {
        attempts: 0,
        lost: 0,
        next: Instant::now(),
    });
    let (exceeded, wait) = match resp {
        Response::Rnr { timer } => {
            // Saturating: with rnr_retry 7 (forever) a responder that never
            // posts a receive NAKs without end (2^32 NAKs are 12 hours at
            // the shortest timer).
            r.attempts = r.attempts.saturating_add(1);
            (
                (rnr_retry != 7 && r.attempts > u32::from(rnr_retry))
                    .then_some(Syndrome::RnrRetryExceeded),
                rnr_delay(timer),
            )
        }
        _ => {
            r.lost = r.lost.saturating_add(1);
            (
                (r.lost > u32::from(retry_cnt)).then_some(Syndrome::TransportRetryExceeded),
                ack_timeout,
            )
        }
    };
    if let Some(syndrome) = exceeded {
        fail(s, qpn, f.index, f.wqebbs, syndrome);
        return false;
    }
    r.next = Instant::now() + wait;
    let next = r.next;
    min_timer(next_timer, next);
    true
}
