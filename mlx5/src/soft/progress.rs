//! Progress: one pass of a device (read its links and handle the frames,
//! execute its QPs, write its links), and the process's progress thread
//! that runs passes for every background device and sleeps when there is
//! nothing to do.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::bell::Bell;
use super::link::{self, Link, WireStats};
use super::requester::{complete, fail, min_timer, process_qp};
use super::responder::{MAX_RECV_SGE, respond};
use super::state::{Engine, Shared, State, Target};
use super::wire;
use crate::error::Error;
use crate::prm::{Access, QpState, Syndrome};
use crate::trace::{self, Ev};
use crate::wqe::Sge;

/// Adds a link to `peer` over `s`; `None` (and `s` closed) if fault
/// injection dropped that peer. Link ids are never reused: a QP whose link
/// died and was removed finds no link by its id, never another one.
pub(crate) fn add_link(
    eng: &mut Engine,
    peer: [u8; 16],
    c: link::Conn,
    outgoing: bool,
) -> Option<&mut Link> {
    if eng.faults.dropped.contains(&peer) {
        return None;
    }
    eng.next_link += 1;
    let mut l = Link::new(eng.next_link, peer, c);
    l.delay = eng.faults.delay;
    if let Some(h) = eng.faults.ack_hold {
        l.ack_hold = h;
    }
    l.outgoing = outgoing;
    if eng.links.iter().any(|o| o.is_up() && o.peer == peer) {
        eng.dup_links = true;
    }
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
        add_link(eng, peer, s, false);
    }
}

/// One pass: receive from links, execute every QP with work, send; on a
/// quiet device (`Engine::quiet`), only the few checks of what could have
/// brought work, and a return while none did. Returns the work done (WQEs executed, frames handled).
pub(crate) fn progress(shared: &Arc<Shared>) -> usize {
    pass(shared, false)
}

/// A full pass that sends every answer its links hold or deferred (see
/// `send`): what a manual device's last step before the application
/// stops stepping it must do. Returns the work done.
pub(crate) fn progress_sending_all(shared: &Arc<Shared>) -> usize {
    pass(shared, true)
}

fn pass(shared: &Arc<Shared>, all: bool) -> usize {
    let mut guard = shared.engine.lock().unwrap_or_else(|e| e.into_inner());
    let eng = &mut *guard;
    if let Some(until) = eng.quiet {
        if !all && still_quiet(shared, eng, until) {
            return 0;
        }
        eng.quiet = None;
    }
    trace::ev(Ev::PassStart);
    // Acquire: pairs with a doorbell's Release (the counters it published
    // are visible to the scan below); a kick after this is for the next
    // pass.
    shared.kick.swap(false, Ordering::Acquire);
    eng.next_timer = None;
    adopt(shared, eng);
    let mut done = 0;
    // One clock read per pass, and none at all within a few thousand TSC
    // ticks of the last (`lazyclock`): the links' deadlines and control
    // checks share it.
    let now = (!eng.links.is_empty()).then(|| eng.clock.now());
    // One lock for every frame and WQE this pass handles (see `Fabric`).
    let mut st = shared.lock_in_pass();
    trace::ev(Ev::Locked);
    if let Some(now) = now {
        let got = receive(eng, now, &mut st);
        if got > 0 {
            trace::ev(Ev::Received);
        }
        done += got;
    }
    trace::ev(Ev::ReceiveDone);
    eng.work.clear();
    // A QP in ERROR that flushes its own receive queue: a receive posted
    // by a thread that saw the QP still in RTS rings no doorbell, so a
    // device with such a QP is never quiet (its scan finds the receive).
    let mut flushes_rq = false;
    {
        let s: &State = &st;
        for qp in s.qps.iter().flatten() {
            flushes_rq |= qp.state == QpState::Error && qp.srq.is_none();
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
    let idle_qps = eng.work.is_empty() && !flushes_rq;
    for i in 0..eng.work.len() {
        let qpn = eng.work[i];
        done += process_qp(shared, eng, &mut st.fabric, qpn);
    }
    trace::ev(Ev::QpsDone);
    drop(st);
    if let Some(now) = now
        && !eng.links.is_empty()
    {
        // A link that died in its write failed QPs whose flushes the next
        // pass does: work, so this pass does not mark the device quiet.
        done += send(shared, eng, now, all);
    } else {
        set_answers_held(shared, false);
    }
    if done == 0 && idle_qps && eng.links.iter().all(Link::quiet) {
        // Nothing to do and nothing left over: until something changes
        // (see `Engine::quiet`), a pass would do the same nothing.
        let checks = eng.links.iter().map(Link::next_check).min();
        eng.quiet = Some(match (eng.next_timer, checks) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        });
    }
    done
}

/// Whether a device the last full pass found quiet still is: not kicked,
/// no connection to adopt, nothing arrived on its links, its deadline not
/// reached. A few loads (and, when a deadline is set, the lazy clock: a
/// TSC read, and a clock read now and then).
fn still_quiet(shared: &Shared, eng: &mut Engine, until: Option<Instant>) -> bool {
    // Relaxed: hints; a full pass takes the kick with Acquire, and adopts
    // under its lock.
    !shared.kick.load(Ordering::Relaxed)
        && !shared.has_pending.load(Ordering::Relaxed)
        && eng.links.iter().all(Link::quiet)
        && until.is_none_or(|t| eng.clock.now() < t)
}

/// Records whether answers wait for the next pass (`Device::answers_held`),
/// writing the shared flag only when it changes.
fn set_answers_held(shared: &Shared, held: bool) {
    // Relaxed: a hint read by the thread that runs these passes (see
    // `Device::answers_held`).
    if shared.answers_held.load(Ordering::Relaxed) != held {
        shared.answers_held.store(held, Ordering::Relaxed);
    }
}

/// Reads every link and handles the frames: requests are executed here
/// (the responder phase) and answered; answers complete WQEs in flight. A
/// link with requests outstanding and no progress for its ACK timeout is
/// declared dead.
fn receive(eng: &mut Engine, now: Instant, s: &mut State) -> usize {
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
    for link in links.iter_mut() {
        if !link.is_up() {
            // Killed outside a pass's receive (sending into it): its QPs
            // are failed below like any other's.
            dead.push(link.id);
            continue;
        }
        // Large frames where they lie, at most a pass's worth of bytes (the
        // other links and the QPs get their turn).
        let mut direct = 0;
        while direct < link::RX_PASS
            && let Some((kind, body, len)) = link.direct_frame()
        {
            done += 1;
            direct += len;
            handle_direct(s, link, (kind, body, len), sges, stats, next_timer, now);
            if !link.is_up() {
                break;
            }
        }
        let got = if link.is_up() && direct < link::RX_PASS {
            link.fill(stats, now)
        } else {
            0
        };
        if got > 0 {
            trace::ev(Ev::Filled);
        }
        if got > 0 && link.kind() == link::LinkKind::Shm {
            // Bytes taken from a ring are work even when no frame is whole
            // yet: a ring has no readiness to poll, so a thread that slept
            // now would not be woken for the bytes still in it.
            done += 1;
        }
        if got > 0 && link.is_up() {
            done += handle_frames(s, link, frames, sges, stats, next_timer, now);
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
        for &id in dead.iter() {
            done += fail_link_qps(s, id, sges);
        }
        remove_dead_links(links);
    }
    done
}

/// Handles the whole frames `link` has buffered; returns how many. A
/// malformed frame, or one longer than the link allows, kills the link, as
/// does a stranger that leaves more than [`link::STRANGER_TX`] of answers
/// unread.
fn handle_frames(
    s: &mut State,
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
                vouch(s, link);
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
        for &(kind, a, b) in frames.iter() {
            if !link.is_up() {
                // Killed while answering (an early flush failed): the
                // frames after are not executed.
                break;
            }
            let body = &rx[a..b];
            stats.frames_received += 1;
            done += 1;
            if kind == wire::K_ACKREQ {
                link.answers_wanted();
            } else if kind == wire::K_REQ {
                let (req, epoch, payload) = match wire::get_req(body, link.peer) {
                    Ok(r) => r,
                    Err(e) => {
                        bad = Some(e);
                        break;
                    }
                };
                answer(s, link, &req, epoch, payload, stats);
            } else {
                let r = match wire::get_resp(body) {
                    Ok(r) => r,
                    Err(e) => {
                        bad = Some(e);
                        break;
                    }
                };
                // Only an answer to the oldest requests unanswered on
                // this link is progress; a stale or forged one (wrong QPN,
                // epoch, PSN or count, or nothing asked) is dropped, and
                // the ACK timeout runs on.
                on_answer(s, link, &r, sges, next_timer, now);
            }
        }
        link.rx = rx;
    }
    if let Some(e) = bad {
        link.kill(format!("protocol error from the peer: {e}"));
    } else if !link.vouched && link.backlog() > link::STRANGER_TX {
        vouch(s, link);
        if !link.vouched {
            link.kill("a stranger that does not read its answers".into());
        }
    }
    done
}

/// Executes a REQ that arrived on `link` and queues its answer there.
fn answer(
    s: &mut State,
    link: &mut Link,
    req: &wire::Request,
    epoch: u32,
    payload: wire::Data<'_>,
    stats: &mut WireStats,
) {
    let (r, data) = respond(s, req, payload);
    link.put_resp(req, epoch, r, data, stats);
}

/// Handles one large frame where it lies in a shared-memory ring (see
/// `Link::direct_frame`): its fixed part is copied out and decoded, its
/// payload or data copied straight to its destination, as `handle_frames`
/// does from the receive buffer.
fn handle_direct(
    s: &mut State,
    link: &mut Link,
    (kind, body, len): (u8, *const u8, usize),
    sges: &mut Vec<Sge>,
    stats: &mut WireStats,
    next_timer: &mut Option<Instant>,
    now: Instant,
) {
    // Only REQs and RESPs are long enough to be read in place.
    debug_assert!(kind == wire::K_REQ || kind == wire::K_RESP);
    let fixed_len = if kind == wire::K_REQ {
        wire::REQ_LEN
    } else {
        wire::RESP_LEN
    };
    // `direct_frame` returns bodies of DIRECT_MIN bytes or more, longer
    // than either fixed part (checked at compile time).
    const _: () = assert!(link::DIRECT_MIN >= wire::REQ_LEN && link::DIRECT_MIN >= wire::RESP_LEN);
    debug_assert!(len >= fixed_len);
    let mut fixed = [0u8; wire::REQ_LEN];
    // SAFETY: `direct_frame` found `len` (>= `fixed_len`, above) published
    // bytes at `body`, which the peer does not reuse before
    // `consume_direct`; the copies are `shmcopy`'s, which the compiler
    // cannot look into or repeat (a peer that writes the bytes anyway only
    // changes what it sent, and makes no data race).
    let rest = unsafe {
        shmcopy::from_shared(fixed.as_mut_ptr(), body, fixed_len);
        wire::Data::raw(body.add(fixed_len), len - fixed_len)
    };
    stats.frames_received += 1;
    let bad = if kind == wire::K_REQ {
        match wire::req_from(&fixed, rest, link.peer) {
            Ok((req, epoch, payload)) => {
                answer(s, link, &req, epoch, payload, stats);
                None
            }
            Err(e) => Some(e),
        }
    } else {
        match wire::resp_from(&fixed[..wire::RESP_LEN], rest) {
            Ok(r) => {
                on_answer(s, link, &r, sges, next_timer, now);
                None
            }
            Err(e) => Some(e),
        }
    };
    link.consume_direct(len, stats);
    if let Some(e) = bad {
        link.kill(format!("protocol error from the peer: {e}"));
    }
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

/// A RESP that arrived on `link`: if it answers the oldest requests there
/// (see [`Link::answers`]), each is completed, oldest first.
fn on_answer(
    s: &mut State,
    link: &mut Link,
    r: &wire::Resp<'_>,
    sges: &mut Vec<Sge>,
    timer: &mut Option<Instant>,
    now: Instant,
) {
    if link.answers(r, now) {
        for a in link.implied() {
            on_resp(s, &wire::Resp::ack(a.qpn, a.epoch, a.psn), sges, timer);
        }
        on_resp(s, r, sges, timer);
    }
}

/// One answer: completes the oldest request in flight on its QP if it
/// answers that one (anything else is stale and ignored).
fn on_resp(s: &mut State, r: &wire::Resp<'_>, sges: &mut Vec<Sge>, timer: &mut Option<Instant>) {
    let Some(qp) = s.qp(r.qpn) else { return };
    if qp.epoch != r.epoch || qp.inflight.front().is_none_or(|f| f.req.psn != r.psn) {
        return;
    }
    let f = qp.inflight.pop_front().expect("checked");
    // One ACKREQ covers every request in flight (a QP waiting on a local
    // completion sends no more): ask again only for a new flight.
    if qp.inflight.is_empty() {
        qp.answers_asked = false;
    }
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
        qp.answers_asked = false;
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

/// Writes what the links have to send (one `write` per link per pass),
/// but answers a link holds back (see `Link::hold_answers`) or a manual
/// device defers; with `all`, everything. Returns the number of QPs
/// failed because their link died meanwhile.
fn send(shared: &Arc<Shared>, eng: &mut Engine, now: Instant, all: bool) -> usize {
    let Engine {
        links,
        sges,
        dead,
        stats,
        next_timer,
        ..
    } = eng;
    dead.clear();
    let mut held = false;
    for link in links.iter_mut() {
        // Plain ACKs nobody waits for may wait for a frame to ride with,
        // a little while; a manual device's other answers, for the next
        // pass (see `Link::hold_answers` and `Link::defer_answers`).
        let hold = if link.is_up() && !all {
            link.hold_answers(now)
        } else {
            None
        };
        if let Some(t) = hold {
            min_timer(next_timer, t);
        }
        let defer =
            hold.is_some() || (shared.manual && !all && link.is_up() && link.defer_answers());
        held |= defer && shared.manual;
        if !defer
            && link.is_up()
            && let Some(t) = link.flush(now, stats)
        {
            min_timer(next_timer, t);
        }
        // Also a link killed while this pass sent into it (`put_req`).
        if !link.is_up() {
            dead.push(link.id);
        } else if link.outstanding() > 0 {
            min_timer(next_timer, link.last_progress + link.timeout);
        }
    }
    set_answers_held(shared, held);
    let mut failed = 0;
    if !dead.is_empty() {
        let mut s = shared.lock_in_pass();
        for &id in dead.iter() {
            failed += fail_link_qps(&mut s, id, sges);
        }
        drop(s);
        remove_dead_links(links);
    }
    failed
}

/// How long the device thread spins after the last work before sleeping.
const SPIN: Duration = Duration::from_micros(50);
/// The longest sleep without a doorbell (a safety net; doorbells wake it).
const IDLE_SLEEP: Duration = Duration::from_millis(100);

/// The one progress thread of this process: it drives every software
/// device opened with background progress. One thread, not one per device,
/// because these machines have few cores and a spinning device thread per
/// context would compete with the threads that post and poll.
pub(crate) struct Progressor {
    devices: Mutex<Vec<Weak<Shared>>>,
    bell: Arc<Bell>,
}

impl Progressor {
    /// The bell the thread sleeps on: every background device rings it.
    pub(crate) fn bell(&self) -> Arc<Bell> {
        self.bell.clone()
    }

    /// Drives `dev` from now on.
    pub(crate) fn add(&self, dev: Weak<Shared>) {
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(dev);
        self.bell.ring();
    }
}

/// Stops driving the device with id `id` (it is being dropped).
pub(crate) fn forget(id: u64) {
    if let Some(p) = &*PROGRESSOR.lock().unwrap_or_else(|e| e.into_inner()) {
        let mut d = p.devices.lock().unwrap_or_else(|e| e.into_inner());
        d.retain(|w| w.upgrade().is_some_and(|s| s.id != id));
    }
}

static PROGRESSOR: Mutex<Option<Arc<Progressor>>> = Mutex::new(None);

/// The progress thread's name (tests look for it in /proc).
pub const PROGRESS_THREAD: &str = "mlx5-soft-progress";

pub(crate) fn progressor() -> Result<Arc<Progressor>, Error> {
    let mut g = PROGRESSOR.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = &*g {
        return Ok(p.clone());
    }
    let p = Arc::new(Progressor {
        devices: Mutex::new(Vec::new()),
        bell: Arc::new(Bell::new()?),
    });
    let t = p.clone();
    std::thread::Builder::new()
        .name(PROGRESS_THREAD.into())
        .spawn(move || run(&t))
        .map_err(|source| Error::Os {
            what: "spawning the software device progress thread",
            source,
        })?;
    *g = Some(p.clone());
    Ok(p)
}

/// The progress thread: progress every background device while there is
/// work, spin [`SPIN`] after the last work, then sleep until a doorbell, a
/// socket with data (or room, when sends are pending) or the next timer
/// (RNR retry, delayed frames, a peer's answer deadline). It lives as long
/// as the process.
fn run(p: &Progressor) {
    let mut last_work = Instant::now();
    let mut devs: Vec<Arc<Shared>> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    loop {
        devs.clear();
        devs.extend(
            p.devices
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter_map(Weak::upgrade),
        );
        let pass = |devs: &[Arc<Shared>]| devs.iter().map(progress).sum::<usize>();
        if pass(&devs) > 0 {
            last_work = Instant::now();
            continue;
        }
        if last_work.elapsed() < SPIN {
            std::hint::spin_loop();
            continue;
        }
        let now = Instant::now();
        fds.clear();
        let mut timeout = IDLE_SLEEP;
        for d in &devs {
            let mut eng = d.engine.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(t) = eng.next_timer {
                timeout = timeout.min(t.saturating_duration_since(now));
            }
            eng.poll_fds(&mut fds);
        }
        if timeout.is_zero() {
            for d in &devs {
                d.engine.lock().unwrap_or_else(|e| e.into_inner()).awake();
            }
            continue;
        }
        p.bell.sleep(timeout, &mut fds, || pass(&devs));
        for d in &devs {
            d.engine.lock().unwrap_or_else(|e| e.into_inner()).awake();
        }
        // Drop the strong references before sleeping again: a device must
        // be able to go away while the thread idles.
        devs.clear();
        last_work = Instant::now();
    }
}
