//! Executing WQEs: the three phases described in the parent module.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use super::link::{self, Link, WireStats};
use super::state::{
    DevRef, Engine, Fabric, Inflight, Rnr, Shared, State, Target, fabric, rnr_delay, wqebbs_of,
};
use super::wire::{self, Request, Response};
use crate::cqe::{self, Cqe, Kind};
use crate::event::AsyncEvent;
use crate::prm::Access;
use crate::prm::INVALID_LKEY;
use crate::prm::{INLINE_SEG, MAX_DS, QpState, SEG, Syndrome, WQEBB, flags, opcode};
use crate::wqe::{Remote, Sge};

/// WQEs one QP may execute per progress pass (fairness between QPs).
const BUDGET: usize = 64;
/// Scatter entries a receive WQE can hold (the SRQ limit is 30).
const MAX_RECV_SGE: usize = 32;

/// Adds a link to `peer` over `s`; `None` (and `s` closed) if fault
/// injection dropped that peer. Link ids are never reused: a QP whose link
/// died and was removed finds no link by its id, never another one.
pub(crate) fn add_link(eng: &mut Engine, peer: [u8; 16], s: link::Stream) -> Option<&mut Link> {
    if eng.faults.dropped.contains(&peer) {
        return None;
    }
    eng.next_link += 1;
    let mut l = Link::new(eng.next_link, peer, s);
    l.delay = eng.faults.delay;
    eng.links.push(l);
    eng.links.last_mut()
}

/// Removes the links that died, once their QPs were failed (a dead link
/// holds nothing the device needs; its id stays unused).
pub(crate) fn remove_dead_links(links: &mut Vec<Link>) {
    links.retain(Link::is_up);
}

/// Adopts the connections the acceptor thread accepted.
pub(crate) fn adopt(shared: &Shared, eng: &mut Engine) {
    for (peer, s) in shared.take_pending() {
        add_link(eng, peer, s);
    }
}

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

fn read_sge(b: &[u8]) -> Sge {
    Sge {
        len: be32(b, 0),
        lkey: be32(b, 4),
        addr: be64(b, 8),
    }
}

/// One pass: receive from links, execute every QP with work, send.
/// Returns the work done (WQEs executed, frames handled).
pub(crate) fn progress(shared: &Arc<Shared>) -> usize {
    let mut guard = shared.engine.lock().unwrap_or_else(|e| e.into_inner());
    let eng = &mut *guard;
    eng.next_timer = None;
    adopt(shared, eng);
    let mut done = 0;
    if !eng.links.is_empty() {
        done += receive(shared, eng);
    }
    eng.work.clear();
    // One lock for every WQE this pass executes (see `Fabric`).
    let mut fab = fabric();
    if let Some(s) = fab.state(shared.dev) {
        for qp in s.qps.iter().flatten() {
            let pi = qp.sq_pi();
            let send = match qp.state {
                QpState::Rts => pi != qp.sq_sent as u16,
                QpState::Error => pi != qp.sq_ci as u16 || !qp.inflight.is_empty(),
                _ => false,
            };
            let recv_flush =
                qp.state == QpState::Error && qp.srq.is_none() && qp.rq_pi() != qp.rq_ci as u16;
            if send || recv_flush {
                eng.work.push(qp.qpn);
            }
        }
    }
    for i in 0..eng.work.len() {
        let qpn = eng.work[i];
        done += process_qp(shared, eng, &mut fab, qpn);
    }
    drop(fab);
    if !eng.links.is_empty() {
        send(shared, eng);
    }
    done
}

fn min_timer(t: &mut Option<Instant>, at: Instant) {
    *t = Some(t.map_or(at, |t| t.min(at)));
}

/// Reads every link and handles the frames: requests are executed here
/// (the responder phase) and answered; answers complete WQEs in flight. A
/// link with requests outstanding and no progress for its ACK timeout is
/// declared dead.
fn receive(shared: &Arc<Shared>, eng: &mut Engine) -> usize {
    let now = Instant::now();
    let Engine {
        links,
        sges,
        frames,
        dead,
        stats,
        next_timer,
        ..
    } = eng;
    let mut done = 0;
    dead.clear();
    for link in links.iter_mut().filter(|l| l.is_up()) {
        let got = link.fill(stats);
        if got > 0 && link.is_up() {
            done += handle_frames(shared, link, frames, sges, stats, next_timer, now);
            if link.mid_frame() && link.outstanding() > 0 {
                // A frame is arriving (READ data, or frames queued ahead
                // of the answers): the peer is alive and sending.
                link.last_progress = now;
            }
        }
        if link.is_up() && link.outstanding() > 0 {
            let deadline = link.last_progress + link.timeout;
            if now >= deadline {
                link.kill(format!(
                    "no answer from the peer for {:?} with requests outstanding",
                    link.timeout
                ));
            } else {
                min_timer(next_timer, deadline);
            }
        }
        if !link.is_up() {
            dead.push(link.id);
        }
    }
    if !dead.is_empty() {
        let mut s = shared.lock();
        for &id in dead.iter() {
            done += fail_link_qps(&mut s, id, sges);
        }
        drop(s);
        remove_dead_links(links);
    }
    done
}

/// Handles the whole frames `link` has buffered; returns how many. A
/// malformed frame, or one longer than the link allows, kills the link, as
/// does a stranger that leaves more than [`link::STRANGER_TX`] of answers
/// unread.
fn handle_frames(
    shared: &Arc<Shared>,
    link: &mut Link,
    frames: &mut Vec<(u8, usize, usize)>,
    sges: &mut Vec<Sge>,
    stats: &mut WireStats,
    next_timer: &mut Option<Instant>,
    now: Instant,
) -> usize {
    frames.clear();
    let mut bad = None;
    let mut rechecked = false;
    while let Some(f) = link.next_frame() {
        match f {
            Ok(f) => frames.push(f),
            Err(link::Bad::ReqOverLimit) if !rechecked => {
                // QPs may have connected, or regions grown, since the
                // limit was set; this header is parsed again.
                rechecked = true;
                vouch(&shared.lock(), link);
            }
            Err(link::Bad::ReqOverLimit) => {
                bad = Some("REQ longer than any QP connected to its sender can accept");
                break;
            }
            Err(link::Bad::Frame(e)) => {
                bad = Some(e);
                break;
            }
        }
    }
    let mut done = 0;
    if !frames.is_empty() {
        let rx = std::mem::take(&mut link.rx);
        let mut s = shared.lock();
        for &(kind, a, b) in frames.iter() {
            let body = &rx[a..b];
            stats.frames_received += 1;
            done += 1;
            if kind == wire::K_REQ {
                let (req, epoch, payload) = match wire::get_req(body, link.peer) {
                    Ok(r) => r,
                    Err(e) => {
                        bad = Some(e);
                        break;
                    }
                };
                let at = wire::start_resp(&mut link.tx);
                let r = respond_locked(&mut s, &req, payload, &mut link.tx);
                wire::finish_resp(&mut link.tx, at, &req, epoch, r);
                stats.frames_sent += 1;
            } else {
                let r = match wire::get_resp(body) {
                    Ok(r) => r,
                    Err(e) => {
                        bad = Some(e);
                        break;
                    }
                };
                // Only an answer to the oldest request unanswered on this
                // link is progress; a stale or forged one (wrong QPN,
                // epoch or PSN, or nothing asked) is dropped, and the ACK
                // timeout runs on.
                if link.answers(&r, now) {
                    on_resp(&mut s, &r, sges, next_timer);
                }
            }
        }
        drop(s);
        link.rx = rx;
    }
    if let Some(e) = bad {
        link.kill(format!("protocol error from the peer: {e}"));
    } else if !link.vouched && link.backlog() > link::STRANGER_TX {
        vouch(&shared.lock(), link);
        if !link.vouched {
            link.kill("a stranger that does not read its answers".into());
        }
    }
    done
}

/// Sets what a REQ on `link` may carry: the most that one of this device's
/// QPs connected to the peer's address could accept (a WRITE lands inside
/// one remotely writable region of the QP's PD; a SEND is scattered over at
/// most [`MAX_RECV_SGE`] entries, each inside one locally writable region),
/// at most the RC message limit. No such QP: the peer is a stranger, and
/// its REQs carry nothing. Cold: runs when a REQ over the current limit
/// arrives, or a stranger's answers pile up.
fn vouch(s: &State, link: &mut Link) {
    let mut most = 0u64;
    let connected = s
        .qps
        .iter()
        .flatten()
        .filter(|q| q.peer.as_ref().is_some_and(|p| p.addr == link.peer));
    for q in connected {
        link.vouched = true;
        for m in s.mrs.iter().flatten().filter(|m| m.pd == q.pd) {
            if q.access.contains(Access::REMOTE_WRITE) && m.access.contains(Access::REMOTE_WRITE) {
                most = most.max(m.len);
            }
            if m.access.contains(Access::LOCAL_WRITE) {
                most = most.max(m.len.saturating_mul(MAX_RECV_SGE as u64));
            }
        }
    }
    link.req_limit = most.min(wire::MAX_MSG) as u32;
}

/// An answer from a link: completes the oldest request in flight on its
/// QP if it answers that one (anything else is stale and ignored).
fn on_resp(s: &mut State, r: &wire::Resp<'_>, sges: &mut Vec<Sge>, timer: &mut Option<Instant>) {
    let Some(qp) = s.qp(r.qpn) else { return };
    if qp.epoch != r.epoch || qp.inflight.front().is_none_or(|f| f.req.psn != r.psn) {
        return;
    }
    let f = qp.inflight.pop_front().expect("checked");
    sges.clear();
    sges.extend(qp.inflight_sges.drain(..f.nsges));
    if complete(s, r.qpn, &f, r.resp, r.data, sges, timer) {
        // RNR: resend from this WQE after the timer; the requests sent
        // after it are answered out of sequence and ignored.
        let qp = s.qp(r.qpn).expect("present");
        qp.sq_sent = qp.sq_ci;
        qp.psn = f.req.psn;
        qp.inflight.clear();
        qp.inflight_sges.clear();
    }
}

/// A link went down: the oldest request in flight of each of its QPs fails
/// with `TransportRetryExceeded` (the QP enters ERROR; the rest is flushed).
fn fail_link_qps(s: &mut State, link: u64, sges: &mut Vec<Sge>) -> usize {
    let hit: Vec<u32> = s
        .qps
        .iter()
        .flatten()
        .filter(|q| {
            matches!(q.peer.as_ref().map(|p| &p.target), Some(Target::Link(id)) if *id == link)
                && !q.inflight.is_empty()
        })
        .map(|q| q.qpn)
        .collect();
    for &qpn in &hit {
        let qp = s.qp(qpn).expect("listed");
        let f = qp.inflight.pop_front().expect("listed");
        sges.clear();
        sges.extend(qp.inflight_sges.drain(..f.nsges));
        if qp.state == QpState::Rts {
            fail(s, qpn, f.index, f.wqebbs, Syndrome::TransportRetryExceeded);
        }
    }
    hit.len()
}

/// A link was taken down outside a pass (fault injection).
pub(crate) fn fail_link(s: &mut State, link: u64) {
    fail_link_qps(s, link, &mut Vec::new());
}

/// Writes what the links have to send (one `write` per link per pass).
fn send(shared: &Arc<Shared>, eng: &mut Engine) {
    let now = Instant::now();
    let Engine {
        links,
        sges,
        dead,
        stats,
        next_timer,
        ..
    } = eng;
    dead.clear();
    for link in links.iter_mut().filter(|l| l.is_up()) {
        if let Some(t) = link.flush(now, stats) {
            min_timer(next_timer, t);
        }
        if !link.is_up() {
            dead.push(link.id);
        } else if link.outstanding() > 0 {
            min_timer(next_timer, link.last_progress + link.timeout);
        }
    }
    if !dead.is_empty() {
        let mut s = shared.lock();
        for &id in dead.iter() {
            fail_link_qps(&mut s, id, sges);
        }
        drop(s);
        remove_dead_links(links);
    }
}

/// Executes up to [`BUDGET`] WQEs of QP `qpn`, with the fabric locked: a
/// peer in this process answers in line.
fn process_qp(shared: &Shared, eng: &mut Engine, fab: &mut Fabric, qpn: u32) -> usize {
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
fn fail(s: &mut State, qpn: u32, index: u16, wqebbs: u32, syndrome: Syndrome) {
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
fn flush(s: &mut State, qpn: u32) -> usize {
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
                let sge = read_sge(seg);
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
                    let sge = read_sge(seg);
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
    if qp.withhold_recv {
        return None;
    }
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
            // As far as the stride has room (after the next segment), as
            // hardware reads it; the poster terminates shorter lists.
            let max = ((srq.mem.stride as usize - SEG) / SEG).min(MAX_RECV_SGE);
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
fn respond_in_process(
    fab: &mut Fabric,
    to: DevRef,
    req: &Request,
    payload: &[u8],
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
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Response {
    let Some(qp) = s.qp(req.dst_qpn) else {
        return Response::NoAnswer;
    };
    if !matches!(qp.state, QpState::Rtr | QpState::Rts)
        || !qp
            .peer
            .as_ref()
            .is_some_and(|p| p.addr == req.src && p.qpn == req.src_qpn)
    {
        return Response::NoAnswer;
    }
    if req.psn != qp.epsn {
        return Response::OutOfSequence;
    }
    let r = execute(s, req, payload, out);
    if !matches!(r, Response::Rnr { .. } | Response::NoAnswer)
        && let Some(qp) = s.qp(req.dst_qpn)
    {
        qp.epsn = qp.epsn.wrapping_add(1);
    }
    r
}

fn execute(s: &mut State, req: &Request, payload: &[u8], out: &mut Vec<u8>) -> Response {
    let qp = s.qp(req.dst_qpn).expect("checked by the caller");
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
                return responder_fatal(s, qpn, Syndrome::RemoteAccess);
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
                        solicited: req.solicited,
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
                    solicited: req.solicited,
                },
            );
            Response::Ack { orig: 0 }
        }
        opcode::RDMA_READ => {
            let len = u64::from(req.len);
            if len > 0 && !remote_ok(s, Access::REMOTE_READ, len) {
                return responder_fatal(s, qpn, Syndrome::RemoteAccess);
            }
            let at = out.len();
            out.resize(at + req.len as usize, 0);
            if len > 0 {
                // SAFETY: inside a registered, remotely readable region.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        req.remote.addr as *const u8,
                        out.as_mut_ptr().add(at),
                        req.len as usize,
                    )
                };
            }
            Response::Ack { orig: 0 }
        }
        opcode::ATOMIC_CS | opcode::ATOMIC_FA => {
            // A misaligned atomic is an invalid request (IBA 9.4.5), not an
            // access error: checked first, as rxe and ConnectX do.
            if !req.remote.addr.is_multiple_of(8) {
                return responder_fatal(s, qpn, Syndrome::RemoteInvalRequest);
            }
            if !remote_ok(s, Access::REMOTE_ATOMIC, 8) {
                return responder_fatal(s, qpn, Syndrome::RemoteAccess);
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
        _ => responder_fatal(s, qpn, Syndrome::RemoteInvalRequest),
    }
}

/// Phase 3. `data` is a READ's data, `sges` the WQE's scatter list.
/// Returns whether the QP must wait (RNR) before its next WQE.
fn complete(
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
