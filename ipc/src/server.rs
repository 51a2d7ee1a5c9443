//! The server: owns the segment, finds clients with work, answers them.

use std::marker::PhantomData;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use crate::config::ServerConfig;
use crate::layout::{
    Layout, SLOT_ATTACHED, SLOT_CLAIMED, SLOT_DETACHED, SLOT_FREE, STATE_CLOSED, STATE_RUNNING,
    VERSION, owner_pid, owner_state,
};
use crate::message::{Message, fingerprint};
use crate::ring::ServedClient;
use crate::segment::Segment;
use crate::sys::{self, ProcessHandle};
use crate::{Error, layout};

/// Identifies one answered-later request. Hand it back to
/// [`Server::reply`]; it is not `Clone`, so a request is answered once.
#[must_use = "a request token must be answered with Server::reply, or the client's call never completes"]
#[derive(Debug)]
pub struct RequestToken {
    client: u32,
    attach: u32,
    call_id: u32,
}

impl RequestToken {
    /// The client slot the request came from (stable while it stays attached).
    pub fn client(&self) -> u32 {
        self.client
    }
}

struct ClientState<Req, Resp> {
    served: Option<ServedClient<Req, Resp>>,
    process: Option<ProcessHandle>,
    /// Server-local count of attachments to this slot; tokens carry it so a
    /// reply never reaches a later occupant of the slot.
    attach: u32,
    /// The client's `generation` word when it attached: a change means the
    /// slot was detached and re-attached between two scans.
    generation: u32,
    blocking: bool,
    /// Its control words went bad while its process lives: not served, not
    /// reused until the process exits.
    quarantined: bool,
}

/// The server end of a segment.
///
/// Requests are taken with [`recv`](Self::recv) (or handled inline with
/// [`serve`](Self::serve)) and answered with [`reply`](Self::reply), in any
/// order and from anywhere in the server's loop. Each poll costs one load of
/// the attach epoch plus one load of the next request slot of each attached
/// client; it does not depend on `max_clients × ring_depth`.
pub struct Server<Req: Message, Resp: Message> {
    seg: Segment,
    name: String,
    cfg: ServerConfig,
    clients: Box<[ClientState<Req, Resp>]>,
    /// Indices of attached, served clients.
    active: Vec<u32>,
    cursor: usize,
    seen_epoch: u64,
    polls: u32,
    next_check: Instant,
    _types: PhantomData<fn(Req) -> Resp>,
}

impl<Req: Message, Resp: Message> Server<Req, Resp> {
    /// Creates the segment `/dev/shm/<name>` (mode 0600) and starts serving.
    ///
    /// A segment of the same name left by a dead server is replaced; one
    /// whose server is alive is refused with [`Error::AlreadyRunning`].
    pub fn create(name: &str, cfg: ServerConfig) -> Result<Self, Error> {
        let layout = Layout::new::<Req, Resp>(cfg.max_clients, cfg.ring_depth)?;
        let seg = Segment::create(name, layout, |h| {
            // Relaxed stores throughout: nobody can map the file before it
            // is linked under its name, and readers acquire the magic,
            // which is stored last with Release.
            let g = &h.geo.0;
            let set =
                |w: &std::sync::atomic::AtomicU32, v: usize| w.store(v as u32, Ordering::Relaxed);
            set(&g.version, VERSION as usize);
            set(&g.header_size, layout::HEADER_SIZE);
            set(&g.ctl_size, layout::CTL_SIZE);
            set(&g.max_clients, layout.max_clients as usize);
            set(&g.ring_depth, layout.depth as usize);
            set(&g.req_size, size_of::<Req>());
            set(&g.req_align, align_of::<Req>());
            set(&g.resp_size, size_of::<Resp>());
            set(&g.resp_align, align_of::<Resp>());
            set(&g.req_slot, layout.req_slot);
            set(&g.resp_slot, layout.resp_slot);
            set(&g.server_pid, sys::current_pid() as usize);
            set(&g.server_blocking, usize::from(cfg.wait.is_blocking()));
            g.req_fingerprint
                .store(fingerprint::<Req>(), Ordering::Relaxed);
            g.resp_fingerprint
                .store(fingerprint::<Resp>(), Ordering::Relaxed);
            g.client_region
                .store(layout.client_region as u64, Ordering::Relaxed);
            g.total_size.store(layout.total as u64, Ordering::Relaxed);
            h.state.0.store(STATE_RUNNING, Ordering::Relaxed);
            // Release: a client that acquires the magic sees all of the above.
            g.magic.store(layout::MAGIC, Ordering::Release);
        })?;
        let clients = (0..layout.max_clients)
            .map(|_| ClientState {
                served: None,
                process: None,
                attach: 0,
                generation: 0,
                blocking: false,
                quarantined: false,
            })
            .collect();
        Ok(Self {
            seg,
            name: name.to_owned(),
            cfg,
            clients,
            active: Vec::with_capacity(layout.max_clients as usize),
            cursor: 0,
            seen_epoch: 0,
            polls: 0,
            next_check: Instant::now(),
            _types: PhantomData,
        })
    }

    /// The segment name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of attached clients being served.
    pub fn attached_clients(&mut self) -> usize {
        self.refresh();
        self.active.len()
    }

    /// Takes the next request from an attached client, visiting clients
    /// round-robin. The answer goes to [`reply`](Self::reply), now or later.
    #[inline]
    pub fn recv(&mut self) -> Option<(RequestToken, Req)> {
        self.housekeeping();
        let n = self.active.len();
        let mut i = self.cursor;
        for _ in 0..n {
            if i >= n {
                i = 0;
            }
            let idx = self.active[i];
            let st = &mut self.clients[idx as usize];
            // `active` holds exactly the indices whose `served` is Some.
            if let Some(served) = st.served.as_mut()
                && let Some((call_id, req)) = served.try_recv()
            {
                self.cursor = i + 1;
                let token = RequestToken {
                    client: idx,
                    attach: st.attach,
                    call_id,
                };
                return Some((token, req));
            }
            i += 1;
        }
        None
    }

    /// Answers a request taken by [`recv`](Self::recv). Fails with
    /// [`Error::ClientGone`] if the client detached or died meanwhile; the
    /// response is then dropped.
    #[inline]
    pub fn reply(&mut self, token: RequestToken, resp: Resp) -> Result<(), Error> {
        let gone = Error::ClientGone {
            client: token.client,
        };
        let Some(st) = self.clients.get_mut(token.client as usize) else {
            return Err(gone);
        };
        if st.attach != token.attach {
            return Err(gone);
        }
        let Some(served) = st.served.as_mut() else {
            return Err(gone);
        };
        if !served.reply(token.call_id, &resp) {
            return Err(gone);
        }
        if st.blocking {
            let w = &self.seg.ctl(token.client).wait.0;
            // SeqCst fence: orders our response's publication before the
            // load of `sleeping`, pairing with the client's store of
            // `sleeping` + fence + re-check (Dekker), so one of us sees the
            // other and no wake-up is lost.
            fence(Ordering::SeqCst);
            if w.sleeping.load(Ordering::Relaxed) != 0 {
                w.wake.fetch_add(1, Ordering::Release);
                sys::futex_wake_all(&w.wake);
            }
        }
        Ok(())
    }

    /// Handles up to `max` requests inline, answering each with `f`'s
    /// result. Returns how many were handled.
    #[inline]
    pub fn serve(&mut self, max: usize, mut f: impl FnMut(u32, &Req) -> Resp) -> usize {
        let mut done = 0;
        while done < max {
            let Some((token, req)) = self.recv() else {
                break;
            };
            let resp = f(token.client, &req);
            // A fresh token of an attached client: cannot be refused.
            let _ = self.reply(token, resp);
            done += 1;
        }
        done
    }

    /// Waits until some client may have a request, or `timeout` passes.
    /// Spins with [`WaitStrategy::BusyPoll`](crate::WaitStrategy), sleeps in
    /// a futex wait with `Block`. Returns whether work is available.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let spins = self.cfg.wait.spins();
        let mut spun = 0u32;
        loop {
            self.housekeeping();
            if self.has_work() {
                return true;
            }
            spun = spun.saturating_add(1);
            if spun.is_multiple_of(256) && Instant::now() >= deadline {
                return false;
            }
            if spun < spins {
                std::hint::spin_loop();
                continue;
            }
            let w = &self.seg.header().server_wait.0;
            // Read before announcing sleep, so a wake after this read makes
            // the futex wait return at once.
            let seen = w.wake.load(Ordering::Acquire);
            // Relaxed: ordered before the re-check by the SeqCst fence.
            w.sleeping.store(1, Ordering::Relaxed);
            // SeqCst fence: our `sleeping = 1` is ordered before the
            // re-check below; a client orders its request before its load of
            // `sleeping` the same way, so either we see its request or it
            // sees us asleep and wakes us.
            fence(Ordering::SeqCst);
            let epoch = self.seg.header().attach_epoch.0.load(Ordering::Acquire);
            if self.has_work() || epoch != self.seen_epoch {
                w.sleeping.store(0, Ordering::Relaxed);
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                w.sleeping.store(0, Ordering::Relaxed);
                return false;
            }
            let nap = (deadline - now).min(self.cfg.liveness_interval);
            sys::futex_wait(&w.wake, seen, nap);
            w.sleeping.store(0, Ordering::Relaxed);
            spun = 0;
            // Always run the time-based checks after a sleep.
            self.polls = 0;
        }
    }

    fn has_work(&self) -> bool {
        self.active.iter().any(|&i| {
            self.clients[i as usize]
                .served
                .as_ref()
                .is_some_and(ServedClient::has_work)
        })
    }

    /// Notices attaches and detaches (one shared load per call) and, every
    /// `liveness_interval`, dead clients.
    #[inline(always)]
    fn housekeeping(&mut self) {
        // Acquire: pairs with the client's Release increment after it
        // attached, so its control words are visible to `rescan`.
        let epoch = self.seg.header().attach_epoch.0.load(Ordering::Acquire);
        if epoch != self.seen_epoch {
            self.seen_epoch = epoch;
            self.rescan();
        }
        self.polls = self.polls.wrapping_add(1);
        if self.polls % 1024 == 1 {
            let now = Instant::now();
            if now >= self.next_check {
                self.next_check = now + self.cfg.liveness_interval;
                self.check_liveness();
            }
        }
    }

    fn refresh(&mut self) {
        self.polls = 0;
        self.housekeeping();
    }

    /// Reads every client's owner word; attaches new clients, drops those
    /// that left. O(max_clients), run only when the attach epoch moved or
    /// at liveness checks.
    fn rescan(&mut self) {
        for i in 0..self.seg.layout.max_clients {
            let ctl = &self.seg.ctl(i).owner.0;
            // Acquire: see the control words the client wrote before it
            // published this owner state.
            let word = ctl.owner.load(Ordering::Acquire);
            let state = owner_state(word);
            let generation = ctl.generation.load(Ordering::Relaxed);
            let st = &self.clients[i as usize];
            if st.quarantined {
                continue;
            }
            if st.served.is_some() {
                if state == SLOT_ATTACHED && generation == st.generation {
                    continue;
                }
                // Only the server frees a slot, so an attached client's slot
                // can legitimately change only to DETACHED with the same
                // generation. Anything else is garbage from its owner.
                let clean = state == SLOT_DETACHED && generation == st.generation;
                let process = self.detach(i).filter(|p| !p.exited());
                match process {
                    Some(p) if !clean => self.quarantine(i, p),
                    _ => self.reclaim(i),
                }
            } else if state == SLOT_ATTACHED {
                self.attach(i, word, generation);
            } else if state == SLOT_DETACHED {
                self.reclaim(i);
            } else if state != SLOT_FREE && state != SLOT_CLAIMED {
                // Garbage in a slot nobody is attached to: make it usable.
                self.reclaim(i);
            }
        }
    }

    fn attach(&mut self, i: u32, word: u64, generation: u32) {
        // Relaxed: published by the client's Release of ATTACHED, which
        // `rescan` acquired before calling us.
        let blocking = self.seg.ctl(i).owner.0.blocking.load(Ordering::Relaxed) != 0;
        let Ok(process) = ProcessHandle::open(owner_pid(word)) else {
            // Attached and already gone.
            self.reclaim(i);
            return;
        };
        let served = ServedClient::new(
            self.seg.req_ring(i),
            self.seg.resp_ring(i),
            self.seg.layout.depth,
        );
        let st = &mut self.clients[i as usize];
        st.served = Some(served);
        st.process = Some(process);
        st.attach = st.attach.wrapping_add(1);
        st.generation = generation;
        st.blocking = blocking;
        self.active.push(i);
    }

    /// Stops serving slot `i`; returns the handle on its process.
    fn detach(&mut self, i: u32) -> Option<ProcessHandle> {
        let st = &mut self.clients[i as usize];
        st.served = None;
        let process = st.process.take();
        // Invalidate outstanding tokens.
        st.attach = st.attach.wrapping_add(1);
        if let Some(pos) = self.active.iter().position(|&c| c == i) {
            self.active.swap_remove(pos);
        }
        if self.cursor >= self.active.len() {
            self.cursor = 0;
        }
        process
    }

    /// Stops serving slot `i` but keeps it from reuse until the process we
    /// knew there exits (checked by `check_liveness`).
    fn quarantine(&mut self, i: u32, process: ProcessHandle) {
        let st = &mut self.clients[i as usize];
        st.quarantined = true;
        st.process = Some(process);
    }

    /// Makes slot `i` free for a new client. Only called when no live
    /// process will write to it again (clean detach, or owner dead).
    fn reclaim(&mut self, i: u32) {
        let st = &mut self.clients[i as usize];
        st.quarantined = false;
        st.process = None;
        self.seg.reset_rings(i);
        let ctl = self.seg.ctl(i);
        // Relaxed: published by the Release store of FREE below.
        ctl.wait.0.sleeping.store(0, Ordering::Relaxed);
        ctl.owner.0.blocking.store(0, Ordering::Relaxed);
        // Release: the ring resets above happen before a new client's
        // Acquire CAS on this word sees it free.
        ctl.owner.0.owner.store(SLOT_FREE, Ordering::Release);
    }

    /// Reclaims slots of clients whose process exited, and slots claimed by
    /// a process that died before finishing its attach.
    fn check_liveness(&mut self) {
        self.rescan();
        for i in 0..self.seg.layout.max_clients {
            let st = &self.clients[i as usize];
            if st.served.is_some() || st.quarantined {
                if st.process.as_ref().is_none_or(ProcessHandle::exited) {
                    let _ = self.detach(i);
                    self.reclaim(i);
                }
                continue;
            }
            // Acquire: as in `rescan`.
            let word = self.seg.ctl(i).owner.0.owner.load(Ordering::Acquire);
            if owner_state(word) == SLOT_CLAIMED && !sys::pid_exists(owner_pid(word)) {
                self.reclaim(i);
            }
        }
    }
}

impl<Req: Message, Resp: Message> Drop for Server<Req, Resp> {
    fn drop(&mut self) {
        let h = self.seg.header();
        // Release: clients that see CLOSED stop waiting.
        h.state.0.store(STATE_CLOSED, Ordering::Release);
        fence(Ordering::SeqCst);
        for &i in &self.active {
            let w = &self.seg.ctl(i).wait.0;
            w.wake.fetch_add(1, Ordering::Release);
            sys::futex_wake_all(&w.wake);
        }
        if self.seg.path_is_ours() {
            let _ = std::fs::remove_file(&self.seg.path);
        }
    }
}
