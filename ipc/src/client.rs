//! Clients: a synchronous one ([`Client`]) and one with many calls in
//! flight ([`AsyncClient`]), both over the same connection core.

use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use crate::Error;
use crate::config::ClientConfig;
use crate::error::CallError;
use crate::layout::{
    SLOT_ATTACHED, SLOT_CLAIMED, SLOT_DETACHED, SLOT_FREE, STATE_RUNNING, owner_word,
};
use crate::message::Message;
use crate::ring::ClientCore;
use crate::segment::Segment;
use crate::sys::{self, ProcessHandle};

/// Spins between two looks at the clock while waiting.
const SPIN_BATCH: u32 = 256;

/// One attached client slot.
struct Conn<Req, Resp, U> {
    seg: Segment,
    name: String,
    index: u32,
    pid: u32,
    core: ClientCore<Req, Resp, U>,
    server: ProcessHandle,
    server_pid: u32,
    server_blocking: bool,
    cfg: ClientConfig,
    next_check: Instant,
    idle_polls: u32,
    broken: Option<Broken>,
}

#[derive(Clone, Copy)]
enum Broken {
    ServerGone(&'static str),
    Protocol(u32),
}

impl<Req: Message, Resp: Message, U> Conn<Req, Resp, U> {
    fn connect(name: &str, cfg: ClientConfig) -> Result<Self, Error> {
        let mut seg = Segment::open(name)?;
        seg.validate::<Req, Resp>(name)?;
        let h = seg.header();
        // Relaxed: geometry words are written once, before the magic that
        // `validate` acquired.
        let server_pid = h.geo.0.server_pid.load(Ordering::Relaxed);
        let gone = |why| Error::ServerGone {
            name: name.to_owned(),
            pid: server_pid,
            why,
        };
        // Acquire: pairs with the server's Release of CLOSED at shutdown.
        if h.state.0.load(Ordering::Acquire) != STATE_RUNNING {
            return Err(gone("it shut down"));
        }
        let server = ProcessHandle::open(server_pid).map_err(|_| gone("its process exited"))?;
        // The pidfd alone could name an unrelated process that reused the
        // pid of a dead server; the segment lock cannot.
        if server.exited() || !seg.server_alive()? {
            return Err(gone("its process exited"));
        }
        // Relaxed: geometry, as above.
        let server_blocking = h.geo.0.server_blocking.load(Ordering::Relaxed) != 0;
        let pid = sys::current_pid();
        let max_clients = seg.layout.max_clients;
        let index = (0..max_clients)
            .find(|&i| {
                // AcqRel: Acquire sees the server's ring reset that preceded
                // its Release of FREE; Release orders nothing yet but is
                // harmless.
                seg.ctl(i)
                    .owner
                    .0
                    .owner
                    .compare_exchange(
                        SLOT_FREE,
                        owner_word(pid, SLOT_CLAIMED),
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            })
            .ok_or_else(|| Error::NoFreeSlot {
                name: name.to_owned(),
                max_clients,
            })?;
        let ctl = &seg.ctl(index).owner.0;
        // Relaxed: these control words are ours while the slot is CLAIMED;
        // the Release store of ATTACHED below publishes them to the server.
        let generation = ctl.generation.load(Ordering::Relaxed).wrapping_add(1);
        ctl.generation.store(generation, Ordering::Relaxed);
        ctl.blocking
            .store(u32::from(cfg.wait.is_blocking()), Ordering::Relaxed);
        seg.ctl(index).wait.0.sleeping.store(0, Ordering::Relaxed);
        // Release: the server, acquiring ATTACHED, sees generation/blocking.
        ctl.owner
            .store(owner_word(pid, SLOT_ATTACHED), Ordering::Release);
        // Release: pairs with the server's Acquire of the epoch.
        seg.header().attach_epoch.0.fetch_add(1, Ordering::Release);
        let core = ClientCore::new(seg.req_ring(index), seg.resp_ring(index), seg.layout.depth);
        let conn = Self {
            seg,
            name: name.to_owned(),
            index,
            pid,
            core,
            server,
            server_pid,
            server_blocking,
            cfg,
            next_check: Instant::now(),
            idle_polls: 0,
            broken: None,
        };
        conn.notify_server();
        Ok(conn)
    }

    fn own_region(&self) -> (*mut u8, usize) {
        let l = self.seg.layout;
        let base = std::ptr::from_ref(self.seg.ctl(self.index))
            .cast_mut()
            .cast::<u8>();
        (base, l.client_region)
    }

    fn error(&self, b: Broken) -> Error {
        match b {
            Broken::ServerGone(why) => Error::ServerGone {
                name: self.name.clone(),
                pid: self.server_pid,
                why,
            },
            Broken::Protocol(call_id) => Error::Protocol {
                name: self.name.clone(),
                call_id,
            },
        }
    }

    fn check_broken(&self) -> Result<(), Error> {
        match self.broken {
            None => Ok(()),
            Some(b) => Err(self.error(b)),
        }
    }

    /// Wakes a blocked server after a request was published.
    #[inline(always)]
    fn notify_server(&self) {
        if !self.server_blocking {
            return;
        }
        let w = &self.seg.header().server_wait.0;
        // SeqCst fence: orders the request's publication before the load of
        // `sleeping` (Dekker with the server's `sleeping = 1; fence; check`).
        fence(Ordering::SeqCst);
        if w.sleeping.load(Ordering::Relaxed) != 0 {
            // The bump makes a server between its read of `wake` and its
            // futex wait return at once.
            w.wake.fetch_add(1, Ordering::Release);
            sys::futex_wake_all(&w.wake);
        }
    }

    #[inline]
    fn call(&mut self, req: &Req, user: U) -> Result<(), CallError<U>> {
        if let Some(b) = self.broken {
            return Err(CallError::Failed(user, self.error(b)));
        }
        self.core.try_call(req, user).map_err(CallError::Full)?;
        self.notify_server();
        Ok(())
    }

    /// Checks, at most every `server_timeout / 2`, whether the server is
    /// still there.
    #[cold]
    fn check_server(&mut self) -> Result<(), Error> {
        self.check_broken()?;
        let now = Instant::now();
        if now < self.next_check {
            return Ok(());
        }
        self.next_check = now + self.check_interval();
        let why = if self.seg.header().state.0.load(Ordering::Acquire) != STATE_RUNNING {
            "it shut down"
        } else if self.server.exited() {
            "its process exited"
        } else {
            return Ok(());
        };
        let b = Broken::ServerGone(why);
        self.broken = Some(b);
        Err(self.error(b))
    }

    fn check_interval(&self) -> Duration {
        (self.cfg.server_timeout / 2).max(Duration::from_micros(100))
    }

    /// Takes every response that has arrived.
    #[inline]
    fn poll(&mut self, f: &mut impl FnMut(U, Resp)) -> Result<usize, Error> {
        let mut n = 0;
        loop {
            match self.core.try_complete() {
                Ok(Some((user, resp))) => {
                    f(user, resp);
                    n += 1;
                }
                Ok(None) => break,
                Err(bad) => {
                    self.broken = Some(Broken::Protocol(bad.0));
                    return Err(self.error(Broken::Protocol(bad.0)));
                }
            }
        }
        if n > 0 {
            self.idle_polls = 0;
        } else if self.core.in_flight() > 0 {
            self.idle_polls = self.idle_polls.wrapping_add(1);
            if self.idle_polls.is_multiple_of(SPIN_BATCH) {
                self.check_server()?;
            }
        } else {
            self.check_broken()?;
        }
        Ok(n)
    }

    /// Waits until a response is ready (spinning, then sleeping if so
    /// configured), failing if the server goes away.
    fn wait_ready(&mut self) -> Result<(), Error> {
        let spins = self.cfg.wait.spins();
        let mut spun = 0u32;
        loop {
            // At least one look per batch; no more spinning than configured.
            let batch = SPIN_BATCH.min(spins - spun).max(1);
            for _ in 0..batch {
                if self.core.response_ready() {
                    return Ok(());
                }
                std::hint::spin_loop();
            }
            self.check_server()?;
            spun = spun.saturating_add(batch).min(spins);
            if spun >= spins {
                self.sleep_once();
            }
        }
    }

    #[cold]
    fn sleep_once(&mut self) {
        let w = &self.seg.ctl(self.index).wait.0;
        // Read before announcing sleep: a wake that bumps it after this read
        // makes the futex wait return at once. Acquire is not needed for
        // data (the response is re-checked through its own Acquire) but
        // costs nothing on x86.
        let seen = w.wake.load(Ordering::Acquire);
        // Relaxed: ordered before the re-check by the SeqCst fence below.
        w.sleeping.store(1, Ordering::Relaxed);
        // SeqCst fence: `sleeping = 1` before the re-check; pairs with the
        // server's publish + fence + load of `sleeping` in `reply`.
        fence(Ordering::SeqCst);
        // Acquire: pairs with the server's Release of CLOSED.
        let closed = self.seg.header().state.0.load(Ordering::Acquire) != STATE_RUNNING;
        if !self.core.response_ready() && !closed {
            sys::futex_wait(&w.wake, seen, self.check_interval());
        }
        // Relaxed: a stale `1` seen by the server costs one spare wake.
        w.sleeping.store(0, Ordering::Relaxed);
    }
}

impl<Req, Resp, U> Drop for Conn<Req, Resp, U> {
    fn drop(&mut self) {
        let ctl = &self.seg.ctl(self.index).owner.0;
        // Release: we touch nothing of the slot after this.
        ctl.owner
            .store(owner_word(self.pid, SLOT_DETACHED), Ordering::Release);
        let h = self.seg.header();
        // Release: pairs with the server's Acquire of the epoch, so it sees
        // DETACHED when it rescans.
        h.attach_epoch.0.fetch_add(1, Ordering::Release);
        if self.server_blocking {
            // SeqCst fence + Relaxed load: the Dekker pattern of
            // `notify_server`.
            fence(Ordering::SeqCst);
            if h.server_wait.0.sleeping.load(Ordering::Relaxed) != 0 {
                // Release: harmless; the futex wake is what matters.
                h.server_wait.0.wake.fetch_add(1, Ordering::Release);
                sys::futex_wake_all(&h.server_wait.0.wake);
            }
        }
    }
}

/// A client with one call in flight at a time.
///
/// ```no_run
/// # fn main() -> Result<(), ipc::Error> {
/// let mut client = ipc::Client::<u64, u64>::connect("kv-daemon", ipc::ClientConfig::new())?;
/// let answer: u64 = client.call(&41)?;
/// # Ok(()) }
/// ```
pub struct Client<Req: Message, Resp: Message> {
    conn: Conn<Req, Resp, ()>,
}

impl<Req: Message, Resp: Message> Client<Req, Resp> {
    /// Attaches to the server's segment `name`, checking that it was made
    /// by this crate's layout version for the same `Req`/`Resp` types.
    pub fn connect(name: &str, cfg: ClientConfig) -> Result<Self, Error> {
        Ok(Self {
            conn: Conn::connect(name, cfg)?,
        })
    }

    /// Sends `req` and waits for its response. Fails within the configured
    /// `server_timeout` if the server dies.
    #[inline]
    pub fn call(&mut self, req: &Req) -> Result<Resp, Error> {
        self.conn.call(req, ()).map_err(|e| match e {
            CallError::Failed((), err) => err,
            // One call at a time and depth >= 1: the ring cannot be full.
            CallError::Full(()) => self.conn.error(Broken::Protocol(u32::MAX)),
        })?;
        loop {
            self.conn.wait_ready()?;
            let mut out = None;
            self.conn.poll(&mut |(), r| out = Some(r))?;
            if let Some(r) = out {
                return Ok(r);
            }
        }
    }

    /// The client slot this client occupies.
    pub fn slot(&self) -> u32 {
        self.conn.index
    }

    /// The bytes of this client's own region of the segment (control block
    /// and both rings). For fault-injection tests that scribble over it to
    /// check that the server survives; writing through it breaks this client.
    #[doc(hidden)]
    pub fn own_region_for_fault_injection(&self) -> (*mut u8, usize) {
        self.conn.own_region()
    }
}

/// A client with up to `ring_depth` calls in flight, each carrying user
/// data `U` that comes back with its response. The server may answer in any
/// order.
pub struct AsyncClient<Req: Message, Resp: Message, U> {
    conn: Conn<Req, Resp, U>,
}

impl<Req: Message, Resp: Message, U> AsyncClient<Req, Resp, U> {
    /// Attaches like [`Client::connect`].
    pub fn connect(name: &str, cfg: ClientConfig) -> Result<Self, Error> {
        Ok(Self {
            conn: Conn::connect(name, cfg)?,
        })
    }

    /// Sends a call. [`CallError::Full`] when `ring_depth` calls are in
    /// flight; both errors return `user`.
    #[inline]
    pub fn call(&mut self, req: &Req, user: U) -> Result<(), CallError<U>> {
        self.conn.call(req, user)
    }

    /// Delivers every response that has arrived to `f` with its call's user
    /// data, without waiting. Returns how many. Detects a dead server within
    /// `server_timeout` while calls are in flight and polls keep coming.
    #[inline]
    pub fn poll(&mut self, mut f: impl FnMut(U, Resp)) -> Result<usize, Error> {
        self.conn.poll(&mut f)
    }

    /// Like [`poll`](Self::poll) but waits (per the wait strategy) for at
    /// least one response when calls are in flight.
    pub fn wait(&mut self, mut f: impl FnMut(U, Resp)) -> Result<usize, Error> {
        if self.conn.core.in_flight() == 0 {
            return self.conn.poll(&mut f);
        }
        loop {
            self.conn.wait_ready()?;
            let n = self.conn.poll(&mut f)?;
            if n > 0 {
                return Ok(n);
            }
        }
    }

    /// Calls sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.conn.core.in_flight()
    }

    /// Most calls that can be in flight (the segment's ring depth).
    pub fn capacity(&self) -> usize {
        self.conn.core.capacity()
    }

    /// The client slot this client occupies.
    pub fn slot(&self) -> u32 {
        self.conn.index
    }
}
