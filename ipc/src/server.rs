//! The server: listens for clients, gives each one its own memory, finds
//! clients with work, answers them, and evicts any that breaks the protocol.
//!
//! # A client's slot, as the server sees it
//!
//! | state      | entered when                                   | left when |
//! |------------|------------------------------------------------|-----------|
//! | `Free`     | start; the client's connection closed or it was evicted | a connection is accepted into it |
//! | `Hello`    | accepted (its uid is the server's)             | its hello arrives (→ `Attached`), is wrong or comes with descriptors (refused), its connection closes, or 2 s pass (→ `Free`) |
//! | `Attached` | the welcome and both memfds were sent          | its connection reads end-of-file (it detached or died), it sent a stray byte or its ring went bad (evicted) (→ `Free`) |
//!
//! Each attach gets a fresh region memfd, so nothing a departed or evicted
//! client still writes (it may keep its mapping) can reach the next
//! occupant of the slot; tokens carry the slot's attach count so a late
//! reply cannot reach it either.

use std::marker::PhantomData;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use zerocopy::IntoBytes;

use crate::Error;
use crate::config::ServerConfig;
use crate::layout::{HEADER_LEN, Layout, MAGIC, VERSION};
use crate::message::{Message, describe};
use crate::ring::{ServedClient, Take};
use crate::shm::{HeaderMap, Mapping, RegionMap};
use crate::sys::{self, Epoll, Event};
use crate::token::RequestToken;
use crate::wire::{self, Hello, Notice, Status, TypeText, WAKE, Welcome};

/// Instance ids for tokens: unique within this process, never reused.
static NEXT_SERVER_ID: AtomicU64 = AtomicU64::new(1);

/// Epoll token of the listening socket (client slots use their index).
const LISTENER: u64 = u64::MAX;
/// How long an accepted connection may take to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// Most connections accepted per look; the rest wait in the backlog.
const ACCEPT_BATCH: usize = 64;
/// Most reads of one client's wake-up bytes per look, so a client that
/// floods its connection cannot keep the server from the others.
const WAKE_READS: usize = 4;
/// Polls between two looks at the (coarse) clock.
const POLLS_PER_CLOCK: u32 = 1024;

/// What [`Server::serve`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Served {
    /// Requests taken and handed to the handler.
    pub handled: usize,
    /// Of those, replies [`Server::reply`] refused (the client left or was
    /// evicted in between); their responses were dropped.
    pub undelivered: usize,
}

enum Conn<Req, Resp> {
    Free,
    Hello {
        sock: OwnedFd,
        buf: [u8; Hello::LEN],
        got: usize,
        deadline_ns: u64,
    },
    Attached(Attached<Req, Resp>),
}

struct Attached<Req, Resp> {
    /// Views into `region`; declared first so they go first.
    served: ServedClient<Req, Resp>,
    region: RegionMap,
    sock: OwnedFd,
    blocking: bool,
    /// Wake-up bytes received: a correct client sends at most one per
    /// request it publishes, so more than the requests taken plus those
    /// that can be waiting in its ring is a flood (a client that keeps the
    /// socket readable would keep a blocking server from ever sleeping).
    wakes: u64,
}

struct SlotState<Req, Resp> {
    conn: Conn<Req, Resp>,
    /// Attaches and releases of this slot so far; tokens carry it.
    /// Attaches so far (64 bits: a counter that wrapped would let a
    /// token of a departed client match a later occupant).
    attach: u64,
}

/// The server end of a segment.
///
/// Requests are taken with [`recv`](Self::recv) (or handled inline with
/// [`serve`](Self::serve)) and answered with [`reply`](Self::reply), in any
/// order and from anywhere in the server's loop. Each poll costs one load
/// of the next request slot of each attached client; it does not depend on
/// `max_clients × ring_depth`. Connections (new clients, departures,
/// wake-ups) are looked at every
/// [`liveness_interval`](ServerConfig::liveness_interval) while polling, at
/// once while blocked in [`wait`](Self::wait), and on
/// [`refresh`](Self::refresh).
pub struct Server<Req: Message, Resp: Message> {
    id: u64,
    name: String,
    cfg: ServerConfig,
    layout: Layout,
    uid: u32,
    header: HeaderMap,
    header_fd: OwnedFd,
    listener: OwnedFd,
    epoll: Epoll,
    slots: Box<[SlotState<Req, Resp>]>,
    /// Free slot indices, lowest last.
    free: Vec<u32>,
    /// Indices of attached clients.
    active: Vec<u32>,
    cursor: usize,
    /// Slots in the `Hello` state.
    hellos: usize,
    polls: u32,
    next_look_ns: u64,
    events: Vec<Event>,
    /// The welcome's type text, the same for every client.
    type_text: Vec<u8>,
    evictions: u64,
    _types: PhantomData<fn(Req) -> Resp>,
}

impl<Req: Message, Resp: Message> Server<Req, Resp> {
    /// Starts serving segment `name`: a unix socket in the abstract
    /// namespace, private to this user (see the crate docs).
    ///
    /// A name whose server died is free again at once (the kernel releases
    /// it); one whose server is alive is refused with
    /// [`Error::AlreadyRunning`].
    pub fn create(name: &str, cfg: ServerConfig) -> Result<Self, Error> {
        let address = wire::validate_name(name)?;
        let layout = Layout::new::<Req, Resp>(cfg.max_clients, cfg.ring_depth)?;
        let io = |op| {
            move |source| Error::Io {
                name: name.to_owned(),
                op,
                source,
            }
        };
        let ((req_name, req_layout), (resp_name, resp_layout)) =
            (describe::<Req>(), describe::<Resp>());
        let type_text = TypeText {
            req_name,
            req_layout,
            resp_name,
            resp_layout,
        }
        .encode();
        if type_text.len() > wire::MAX_TEXT {
            return Err(Error::InvalidConfig(format!(
                "the message types' descriptions take {} bytes, more than {}",
                type_text.len(),
                wire::MAX_TEXT
            )));
        }
        let (header_fd, header) =
            Mapping::create(&format!("ipc:{name}:header"), HEADER_LEN, 0).map_err(io("memfd"))?;
        let header = HeaderMap(header);
        let ident = &header.header().ident.0;
        // Relaxed: clients read these only after receiving the descriptor,
        // which happens after this (the socket transfer orders it).
        ident.version.store(VERSION, Ordering::Relaxed);
        // Release: a client's Acquire of the magic sees the version too.
        ident.magic.store(MAGIC, Ordering::Release);
        // Now that our own writable mapping exists, refuse any other.
        sys::add_seals(&header_fd, sys::SEALS_READ_ONLY).map_err(io("seal header memfd"))?;

        let addr = sys::AbstractAddr::new(&address).map_err(io("socket address"))?;
        let listener = match sys::listen(&addr, cfg.max_clients.max(16)) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(Error::AlreadyRunning {
                    name: name.to_owned(),
                });
            }
            Err(e) => return Err(io("listen")(e)),
        };
        let epoll = Epoll::new().map_err(io("epoll_create"))?;
        epoll.add(&listener, LISTENER).map_err(io("epoll_ctl"))?;
        // One socket per client, plus a few of our own.
        sys::raise_fd_limit(u64::from(layout.max_clients) + 64);
        Ok(Self {
            id: NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed),
            name: name.to_owned(),
            cfg,
            layout,
            uid: sys::euid(),
            header,
            header_fd,
            listener,
            epoll,
            slots: (0..layout.max_clients)
                .map(|_| SlotState {
                    conn: Conn::Free,
                    attach: 0,
                })
                .collect(),
            free: (0..layout.max_clients).rev().collect(),
            active: Vec::with_capacity(layout.max_clients as usize),
            cursor: 0,
            hellos: 0,
            polls: 0,
            next_look_ns: 0,
            events: Vec::with_capacity(64),
            type_text,
            evictions: 0,
            _types: PhantomData,
        })
    }

    /// The segment name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of attached clients, as of the last look at the connections.
    pub fn attached_clients(&self) -> usize {
        self.active.len()
    }

    /// Clients evicted so far for breaking the protocol.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Looks at the connections now: attaches clients that connected,
    /// releases those that left, drains wake-ups. `recv`, `serve` and `wait`
    /// do this on their own (see [`Server`]).
    pub fn refresh(&mut self) {
        self.look(Duration::ZERO);
    }

    /// Takes the next request from an attached client, visiting clients
    /// round-robin. The answer goes to [`reply`](Self::reply), now or later.
    /// A client whose ring holds what no correct client writes is evicted
    /// here, and learns it from its own calls ([`Error::Evicted`]).
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
            let st = &mut self.slots[idx as usize];
            // `active` holds exactly the indices of attached slots.
            if let Conn::Attached(a) = &mut st.conn {
                match a.served.try_recv() {
                    Take::Empty => {}
                    Take::Request(call_id, req) => {
                        self.cursor = i + 1;
                        let token = RequestToken {
                            server: self.id,
                            client: idx,
                            attach: st.attach,
                            call_id,
                        };
                        return Some((token, req));
                    }
                    Take::Corrupt(why) => {
                        self.evict(idx, why.to_string());
                        return self.recv();
                    }
                }
            }
            i += 1;
        }
        None
    }

    /// Answers a request taken by [`recv`](Self::recv). Fails with
    /// [`Error::ClientGone`] if the client detached, died or was evicted
    /// meanwhile (the response is dropped), and with
    /// [`Error::ForeignToken`] if another server issued the token (nothing
    /// changes; the error hands the token back).
    #[inline]
    pub fn reply(&mut self, token: RequestToken, resp: Resp) -> Result<(), Error> {
        if token.server != self.id {
            return Err(Error::ForeignToken {
                name: self.name.clone(),
                token,
            });
        }
        let gone = Error::ClientGone {
            client: token.client,
        };
        let Some(st) = self.slots.get_mut(token.client as usize) else {
            return Err(gone);
        };
        if st.attach != token.attach {
            return Err(gone);
        }
        let Conn::Attached(a) = &mut st.conn else {
            return Err(gone);
        };
        if !a.served.reply(token.call_id, &resp) {
            return Err(gone);
        }
        if a.blocking {
            let w = &a.region.ctl().wait.0;
            // SeqCst fence: orders our response's publication before the
            // load of `sleeping`, pairing with the client's store of
            // `sleeping` + fence + re-check (Dekker), so one of us sees the
            // other and no wake-up is lost.
            fence(Ordering::SeqCst);
            // Relaxed: ordered by the fence above; a garbage value only
            // costs this client a spurious or missed wake (its futex wait is
            // bounded).
            if w.sleeping.load(Ordering::Relaxed) != 0 {
                wake(&a.region);
            }
        }
        Ok(())
    }

    /// Handles up to `max` requests inline, answering each with `f`'s
    /// result, and says how many it handled and how many of those replies
    /// could not be delivered.
    #[inline]
    pub fn serve(&mut self, max: usize, mut f: impl FnMut(u32, &Req) -> Resp) -> Served {
        let mut done = Served::default();
        while done.handled < max {
            let Some((token, req)) = self.recv() else {
                break;
            };
            let resp = f(token.client, &req);
            done.handled += 1;
            if self.reply(token, resp).is_err() {
                done.undelivered += 1;
            }
        }
        done
    }

    /// Waits until some client may have a request, or `timeout` passes.
    /// Spins with [`WaitStrategy::BusyPoll`](crate::WaitStrategy), sleeps in
    /// `epoll_wait` on the connections with `Block` (a client that publishes
    /// a request while the header says the server sleeps sends a wake-up
    /// byte). Returns whether work is available.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let spins = self.cfg.wait.spins();
        let mut spun = 0u32;
        loop {
            self.housekeeping();
            if self.has_work() {
                return true;
            }
            spun = spun.wrapping_add(1);
            if spun.is_multiple_of(256) && deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            if spins.is_none_or(|s| spun < s) {
                std::hint::spin_loop();
                continue;
            }
            // Relaxed: ordered before the re-check by the SeqCst fence.
            self.sleeping().store(1, Ordering::Relaxed);
            // SeqCst fence: our `sleeping = 1` is ordered before the
            // re-check below; a client orders its request before its load of
            // `sleeping` the same way, so either we see its request or it
            // sees us asleep and sends a wake-up byte, which makes the
            // epoll wait below return.
            fence(Ordering::SeqCst);
            if self.has_work() {
                self.sleeping().store(0, Ordering::Relaxed);
                return true;
            }
            let now = Instant::now();
            let mut nap = match deadline {
                Some(d) if now >= d => {
                    self.sleeping().store(0, Ordering::Relaxed);
                    return false;
                }
                Some(d) => d - now,
                None => Duration::from_secs(3600),
            };
            if self.hellos > 0 {
                // Wake up to expire hellos that never come.
                nap = nap.min(HELLO_TIMEOUT / 4);
            }
            self.look(nap);
            // Relaxed: a stale `1` seen by a client costs one spare byte.
            self.sleeping().store(0, Ordering::Relaxed);
            spun = 0;
        }
    }

    fn sleeping(&self) -> &std::sync::atomic::AtomicU32 {
        &self.header.header().server_wait.0.sleeping
    }

    fn has_work(&self) -> bool {
        self.active
            .iter()
            .any(|&i| match &self.slots[i as usize].conn {
                Conn::Attached(a) => a.served.has_work(),
                _ => false,
            })
    }

    /// Every `liveness_interval` (looked at every 1024 polls), a look at
    /// the connections.
    #[inline(always)]
    fn housekeeping(&mut self) {
        self.polls = self.polls.wrapping_add(1);
        if self.polls % POLLS_PER_CLOCK == 1 {
            self.maybe_look();
        }
    }

    #[cold]
    fn maybe_look(&mut self) {
        if sys::coarse_now_ns() >= self.next_look_ns {
            self.look(Duration::ZERO);
        }
    }

    /// Waits up to `timeout` for connection events and handles them.
    fn look(&mut self, timeout: Duration) {
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        // An epoll_wait on our own valid descriptors fails only for EINTR,
        // which `Epoll::wait` absorbs; anything else leaves `events` empty
        // and the next look tries again.
        let _ = self.epoll.wait(&mut events, timeout);
        for ev in &events {
            if !ev.readable {
                continue;
            }
            if ev.token == LISTENER {
                self.accept_all();
            } else if let Ok(i) = u32::try_from(ev.token) {
                self.on_readable(i);
            }
        }
        self.events = events;
        let now = sys::coarse_now_ns();
        if self.hellos > 0 {
            self.expire_hellos(now);
        }
        let every = u64::try_from(self.cfg.liveness_interval.as_nanos()).unwrap_or(u64::MAX);
        self.next_look_ns = now.saturating_add(every);
    }

    fn accept_all(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            let sock = match sys::accept(&self.listener) {
                Ok(Some(s)) => s,
                Ok(None) => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::Interrupted | std::io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue;
                }
                // Out of descriptors or memory: the connection waits in the
                // backlog and its client times out; try again next look.
                Err(_) => return,
            };
            if sys::peer_uid(&sock).ok() != Some(self.uid) {
                self.refuse(&sock, Status::ForeignUser);
                continue;
            }
            let Some(i) = self.free.pop() else {
                self.refuse(&sock, Status::NoFreeSlot);
                continue;
            };
            if self.epoll.add(&sock, u64::from(i)).is_err() {
                self.refuse(&sock, Status::ServerError);
                self.free.push(i);
                continue;
            }
            self.slots[i as usize].conn = Conn::Hello {
                sock,
                buf: [0; Hello::LEN],
                got: 0,
                deadline_ns: sys::coarse_now_ns() + HELLO_TIMEOUT.as_nanos() as u64,
            };
            self.hellos += 1;
            // The hello usually came with the connection.
            self.on_readable(i);
        }
    }

    /// Sends a refusal; the caller drops (closes) the socket.
    fn refuse(&self, sock: &OwnedFd, status: Status) {
        let w = Welcome::refusal(status, self.layout.max_clients);
        // Best effort: a client that cannot take 80 bytes on a fresh
        // connection learns from the close instead.
        let _ = sys::send(sock, w.as_bytes(), &[]);
    }

    fn on_readable(&mut self, i: u32) {
        let Some(st) = self.slots.get_mut(i as usize) else {
            return;
        };
        let mut fds = Vec::new();
        match &mut st.conn {
            Conn::Free => {}
            Conn::Hello { sock, buf, got, .. } => {
                match sys::recv(sock, &mut buf[*got..], &mut fds) {
                    Ok(0) => self.release(i),
                    Ok(n) => {
                        *got += n;
                        if !fds.is_empty() {
                            // No correct client sends descriptors: refuse
                            // it (they are closed as `fds` drops).
                            let why = "it sent descriptors with its hello".to_owned();
                            self.finish_hello(i, Err(why));
                        } else if *got == Hello::LEN {
                            let hello = Hello::parse(&buf[..]);
                            self.finish_hello(i, hello);
                        }
                    }
                    Err(e) if would_block(&e) => {}
                    Err(_) => self.release(i),
                }
            }
            Conn::Attached(a) => {
                let mut buf = [0u8; 256];
                for _ in 0..WAKE_READS {
                    match sys::recv(&a.sock, &mut buf, &mut fds) {
                        // End of file: the client detached or died.
                        Ok(0) => return self.release(i),
                        Ok(n) => {
                            if let Some(&b) = buf[..n].iter().find(|&&b| b != WAKE) {
                                let why = format!(
                                    "it sent byte {b:#04x} on its connection, where only \
                                     wake-ups ({WAKE:#04x}) may follow the hello"
                                );
                                return self.evict(i, why);
                            }
                            if !fds.is_empty() {
                                let why = "it sent descriptors on its connection".to_owned();
                                return self.evict(i, why);
                            }
                            a.wakes += n as u64;
                            let allowed = a.served.taken() + 2 * u64::from(a.served.depth());
                            if a.wakes > allowed {
                                let why = format!(
                                    "it sent {} wake-ups for {} requests (a flood)",
                                    a.wakes,
                                    a.served.taken()
                                );
                                return self.evict(i, why);
                            }
                        }
                        Err(e) if would_block(&e) => return,
                        // ECONNRESET and the like: it is gone.
                        Err(_) => return self.release(i),
                    }
                }
            }
        }
    }

    /// A full hello arrived on slot `i`: attach or refuse.
    fn finish_hello(&mut self, i: u32, hello: Result<Hello, String>) {
        let st = &mut self.slots[i as usize];
        let Conn::Hello { sock, .. } = std::mem::replace(&mut st.conn, Conn::Free) else {
            return;
        };
        self.hellos -= 1;
        let Ok(hello) = hello else {
            self.refuse(&sock, Status::BadHello);
            return self.release_taken(i, sock);
        };
        let l = self.layout;
        let tag = format!("ipc:{}:{i}", self.name);
        let region = Mapping::create(&tag, l.region, sys::SEALS_FIXED_SIZE);
        let Ok((region_fd, region)) = region else {
            self.refuse(&sock, Status::ServerError);
            return self.release_taken(i, sock);
        };
        let welcome = Welcome {
            status: (Status::Attached as u32).into(),
            slot: i.into(),
            depth: l.depth.into(),
            server_pid: std::process::id().into(),
            server_blocking: u32::from(self.cfg.wait.is_blocking()).into(),
            header_len: (HEADER_LEN as u32).into(),
            region_len: (l.region as u64).into(),
            req_size: (size_of::<Req>() as u32).into(),
            req_align: (align_of::<Req>() as u32).into(),
            resp_size: (size_of::<Resp>() as u32).into(),
            resp_align: (align_of::<Resp>() as u32).into(),
            req_slot: (l.req_slot as u32).into(),
            resp_slot: (l.resp_slot as u32).into(),
            text_len: (self.type_text.len() as u32).into(),
            ..Welcome::refusal(Status::Attached, l.max_clients)
        };
        let mut msg = welcome.as_bytes().to_vec();
        msg.extend_from_slice(&self.type_text);
        let fds = [self.header_fd.as_raw_fd(), region_fd.as_raw_fd()];
        // A fresh connection's buffer takes the whole welcome; if it does
        // not, the client sees the connection close mid-handshake.
        if sys::send(&sock, &msg, &fds).ok() != Some(msg.len()) {
            return self.release_taken(i, sock);
        }
        // The client has its own descriptor now; ours is not needed.
        drop(region_fd);
        let region = RegionMap::new(region, l);
        let served = ServedClient::new(region.req_ring(), region.resp_ring(), l.depth);
        let st = &mut self.slots[i as usize];
        st.conn = Conn::Attached(Attached {
            served,
            region,
            sock,
            blocking: hello.blocking(),
            wakes: 0,
        });
        st.attach = st.attach.wrapping_add(1);
        self.active.push(i);
    }

    /// Frees slot `i`, whose connection the caller already took out.
    fn release_taken(&mut self, i: u32, sock: OwnedFd) {
        self.epoll.remove(&sock);
        drop(sock);
        self.free.push(i);
    }

    /// Stops serving slot `i` (closing its connection) and frees it.
    fn release(&mut self, i: u32) {
        let st = &mut self.slots[i as usize];
        match std::mem::replace(&mut st.conn, Conn::Free) {
            Conn::Free => return,
            Conn::Hello { sock, .. } => {
                self.hellos -= 1;
                self.epoll.remove(&sock);
            }
            Conn::Attached(a) => {
                // Invalidate outstanding tokens.
                st.attach = st.attach.wrapping_add(1);
                self.epoll.remove(&a.sock);
                if let Some(pos) = self.active.iter().position(|&c| c == i) {
                    self.active.swap_remove(pos);
                }
                if self.cursor >= self.active.len() {
                    self.cursor = 0;
                }
            }
        }
        self.free.push(i);
    }

    /// Tells client `i` why it is cut off, wakes it if it sleeps, and frees
    /// its slot. Its region is unmapped here; the client keeps its own
    /// mapping, which nobody else will ever see.
    #[cold]
    fn evict(&mut self, i: u32, why: String) {
        if let Conn::Attached(a) = &self.slots[i as usize].conn {
            // Best effort: a client that filled its receive buffer (it
            // never reads) still sees the connection close.
            let _ = sys::send(&a.sock, &Notice::Evicted(why).encode(), &[]);
            wake(&a.region);
            self.evictions += 1;
        }
        self.release(i);
    }

    fn expire_hellos(&mut self, now: u64) {
        for i in 0..self.layout.max_clients {
            if let Conn::Hello { deadline_ns, .. } = &self.slots[i as usize].conn
                && *deadline_ns <= now
            {
                self.release(i);
            }
        }
    }
}

fn would_block(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
    )
}

/// Wakes a client that may sleep in a futex wait on its region.
fn wake(region: &RegionMap) {
    let w = &region.ctl().wait.0;
    // Release: harmless; the bump is what makes a client between its read
    // of `wake` and its futex wait return at once.
    w.wake.fetch_add(1, Ordering::Release);
    sys::futex_wake_all(&w.wake);
}

impl<Req: Message, Resp: Message> Drop for Server<Req, Resp> {
    fn drop(&mut self) {
        let bye = Notice::Shutdown.encode();
        for &i in &self.active {
            if let Conn::Attached(a) = &self.slots[i as usize].conn {
                // Best effort, as in `evict`; closing the socket below is
                // what every client notices in the end.
                let _ = sys::send(&a.sock, &bye, &[]);
                wake(&a.region);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use super::*;
    use crate::ServerConfig;

    type Msg = [u64; 2];

    /// A server whose connections accept descriptors, as every socket does
    /// on kernels before 6.16 (no `SO_PASSRIGHTS`): what a client sends
    /// reaches it, and it must refuse the client and close them itself.
    fn server_taking_descriptors(tag: &str) -> Server<Msg, Msg> {
        let name = format!("ipc-rights-{}-{tag}", std::process::id());
        let server = Server::create(&name, ServerConfig::new().max_clients(2)).unwrap();
        // Fails only where the option does not exist, which is the same.
        let _ = sys::pass_rights(&server.listener, true);
        server
    }

    /// A raw connection to `server`, its hello (or part) sent with `fds`,
    /// the server's answer read.
    fn hello_with(server: &mut Server<Msg, Msg>, hello: &[u8], fds: &[i32]) -> (Vec<u8>, OwnedFd) {
        let addr = wire::address(sys::euid(), &server.name);
        let sock = sys::connect(&sys::AbstractAddr::new(&addr).unwrap()).unwrap();
        assert_eq!(sys::send(&sock, hello, fds).unwrap(), hello.len());
        server.refresh();
        let mut answer = vec![0u8; 4096];
        let mut got = Vec::new();
        let n = sys::recv(&sock, &mut answer, &mut got).unwrap_or(0);
        answer.truncate(n);
        (answer, sock)
    }

    /// Whether every copy of the pipe's write end is closed (the server's
    /// included, so it kept none).
    fn writers_gone(r: &std::io::PipeReader) -> bool {
        let mut p = libc::pollfd {
            fd: r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; no waiting.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n == 1 && p.revents & libc::POLLHUP != 0
    }

    #[test]
    fn a_hello_with_descriptors_is_refused_and_they_are_closed() {
        let mut server = server_taking_descriptors("hello");
        let (r, w) = std::io::pipe().unwrap();
        let (answer, _sock) =
            hello_with(&mut server, Hello::new(false).as_bytes(), &[w.as_raw_fd()]);
        drop(w);
        let welcome = Welcome::parse(&answer[..Welcome::LEN]).unwrap();
        assert_eq!(welcome.status(), Ok(Status::BadHello));
        assert_eq!(server.attached_clients(), 0);
        assert!(writers_gone(&r), "the server kept the descriptor");
    }

    #[test]
    fn a_client_sending_descriptors_after_its_hello_is_evicted_and_they_are_closed() {
        let mut server = server_taking_descriptors("later");
        let (answer, sock) = hello_with(&mut server, Hello::new(false).as_bytes(), &[]);
        let welcome = Welcome::parse(&answer[..Welcome::LEN]).unwrap();
        assert_eq!(welcome.status(), Ok(Status::Attached));
        let (r, w) = std::io::pipe().unwrap();
        assert_eq!(sys::send(&sock, &[WAKE], &[w.as_raw_fd()]).unwrap(), 1);
        drop(w);
        server.refresh();
        assert_eq!(server.evictions(), 1);
        assert!(writers_gone(&r), "the server kept the descriptor");
    }

    /// A socket set to linger, with a full send queue its peer never reads,
    /// blocks the `close` of its last descriptor for the linger time; the
    /// server defuses it (linger off) before closing it.
    #[test]
    fn closing_a_lingering_socket_a_client_sent_does_not_block_the_server() {
        let mut server = server_taking_descriptors("linger");
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_peer, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        while s.write(&[0u8; 65536]).is_ok() {}
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 3,
        };
        // SAFETY: `linger` is a valid option value of the size given.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        let addr = wire::address(sys::euid(), &server.name);
        let sock = sys::connect(&sys::AbstractAddr::new(&addr).unwrap()).unwrap();
        let hello = Hello::new(false);
        sys::send(&sock, hello.as_bytes(), &[s.as_raw_fd()]).unwrap();
        // The server's copy is the last.
        drop(s);
        let t0 = Instant::now();
        server.refresh();
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "the server was stuck {:?} closing it",
            t0.elapsed()
        );
    }
}
