//! Clients: a synchronous one ([`Client`]) and one with many calls in
//! flight ([`AsyncClient`]), both over the same connection core.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use crate::Error;
use crate::config::ClientConfig;
use crate::error::CallError;
use crate::layout::{HEADER_LEN, Layout, MAGIC, VERSION};
use crate::message::{Message, describe};
use crate::ring::ClientCore;
use crate::shm::{HeaderMap, Mapping, RegionMap};
use crate::sys;
use crate::wire::{self, Hello, Notice, Status, TypeText, WAKE, Welcome};

/// Spins between two looks at the clock while waiting.
const SPIN_BATCH: u32 = 256;
/// Most bytes a server's last word can take (a notice).
const MAX_NOTICE: usize = 3 + u16::MAX as usize;

/// One attached client slot.
struct Conn<Req, Resp, U> {
    /// Views into `region`; declared first so they go first.
    core: ClientCore<Req, Resp, U>,
    region: RegionMap,
    header: HeaderMap,
    sock: OwnedFd,
    name: String,
    slot: u32,
    server_pid: u32,
    server_blocking: bool,
    cfg: ClientConfig,
    /// Coarse-clock time of the next look at the connection.
    next_check_ns: u64,
    idle_polls: u32,
    /// What the server sent so far (its last word, a notice).
    notice: Vec<u8>,
    broken: Option<Broken>,
}

#[derive(Clone)]
enum Broken {
    ServerGone(&'static str),
    Evicted(String),
    Protocol(u32),
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

impl<Req: Message, Resp: Message, U> Conn<Req, Resp, U> {
    fn connect(name: &str, cfg: ClientConfig) -> Result<Self, Error> {
        let address = wire::validate_name(name)?;
        let deadline = Instant::now().checked_add(cfg.connect_timeout);
        let mut backoff = Duration::from_micros(100);
        loop {
            let now = Instant::now();
            let answer_by = deadline.unwrap_or(now + Duration::from_secs(3600)).max(
                now.checked_add(cfg.server_timeout)
                    .unwrap_or(now + Duration::from_secs(3600)),
            );
            match Self::attempt(name, &address, &cfg, answer_by) {
                Err(e @ (Error::NotFound { .. } | Error::NoFreeSlot { .. })) => {
                    let now = Instant::now();
                    let left = match deadline {
                        Some(d) if now >= d => return Err(e),
                        Some(d) => d - now,
                        None => backoff,
                    };
                    std::thread::sleep(backoff.min(left));
                    backoff = (backoff * 2).min(Duration::from_millis(10));
                }
                other => return other,
            }
        }
    }

    /// One connection attempt; the server's answer is waited for until
    /// `answer_by`.
    fn attempt(
        name: &str,
        address: &str,
        cfg: &ClientConfig,
        answer_by: Instant,
    ) -> Result<Self, Error> {
        let io = |op| {
            move |source| Error::Io {
                name: name.to_owned(),
                op,
                source,
            }
        };
        let malformed = |reason: String| Error::Malformed {
            name: name.to_owned(),
            reason,
        };
        let timeout = || Error::Timeout {
            name: name.to_owned(),
            op: "connect",
            after: cfg.connect_timeout.max(cfg.server_timeout),
        };
        let addr = sys::AbstractAddr::new(address).map_err(io("socket address"))?;
        let sock = loop {
            match sys::connect(&addr) {
                Ok(s) => break s,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
                    ) =>
                {
                    return Err(Error::NotFound {
                        name: name.to_owned(),
                        address: address.to_owned(),
                    });
                }
                // The listener's backlog is full: the server is not
                // accepting right now.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= answer_by {
                        return Err(timeout());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(io("connect")(e)),
            }
        };
        let me = sys::euid();
        let theirs = sys::peer_uid(&sock).map_err(io("SO_PEERCRED"))?;
        if theirs != me {
            return Err(Error::Refused {
                name: name.to_owned(),
                reason: format!("the listening socket belongs to uid {theirs}, not to {me}"),
            });
        }
        let hello = Hello::new(cfg.wait.is_blocking());
        if sys::send(&sock, zerocopy::IntoBytes::as_bytes(&hello), &[]).map_err(io("send"))?
            != Hello::LEN
        {
            return Err(malformed("the server did not take our hello".into()));
        }

        let mut fds = Vec::new();
        let mut fixed = [0u8; Welcome::LEN];
        read_exact(&sock, &mut fixed, &mut fds, answer_by).map_err(|e| match e {
            ReadError::Timeout => timeout(),
            ReadError::Closed => {
                malformed("the server closed the connection during the handshake".into())
            }
            ReadError::Io(e) => io("recv")(e),
        })?;
        let w = Welcome::parse(&fixed).map_err(malformed)?;
        if w.version.get() != VERSION {
            return Err(Error::Mismatch {
                name: name.to_owned(),
                what: "protocol version",
                found: w.version.get().to_string(),
                expected: VERSION.to_string(),
            });
        }
        let refused = |reason: &str| Error::Refused {
            name: name.to_owned(),
            reason: reason.to_owned(),
        };
        match w.status().map_err(malformed)? {
            Status::Attached => {}
            Status::NoFreeSlot => {
                return Err(Error::NoFreeSlot {
                    name: name.to_owned(),
                    max_clients: w.max_clients.get(),
                });
            }
            Status::BadHello => return Err(refused("it did not accept our hello")),
            Status::ForeignUser => return Err(refused("this process's uid is not the server's")),
            Status::ServerError => {
                return Err(refused("it could not create this client's memory"));
            }
        }
        let mut text = vec![0u8; w.text_len.get() as usize];
        read_exact(&sock, &mut text, &mut fds, answer_by).map_err(|e| match e {
            ReadError::Timeout => timeout(),
            ReadError::Closed => malformed("the connection closed within the welcome".into()),
            ReadError::Io(e) => io("recv")(e),
        })?;
        let types = TypeText::parse(&text).map_err(malformed)?;
        for (what, (theirs_name, theirs_layout), (ours_name, ours_layout)) in [
            (
                "request type",
                (&types.req_name, &types.req_layout),
                describe::<Req>(),
            ),
            (
                "response type",
                (&types.resp_name, &types.resp_layout),
                describe::<Resp>(),
            ),
        ] {
            if *theirs_layout != ours_layout {
                return Err(Error::Mismatch {
                    name: name.to_owned(),
                    what,
                    found: format!("`{theirs_name}` = {theirs_layout}"),
                    expected: format!("`{ours_name}` = {ours_layout}"),
                });
            }
        }

        let layout = Layout::new::<Req, Resp>(w.max_clients.get(), w.depth.get())
            .map_err(|e| malformed(e.to_string()))?;
        let recorded = (
            w.req_size.get() as usize,
            w.req_align.get() as usize,
            w.resp_size.get() as usize,
            w.resp_align.get() as usize,
            w.req_slot.get() as usize,
            w.resp_slot.get() as usize,
            w.region_len.get(),
            w.header_len.get() as usize,
        );
        let computed = (
            size_of::<Req>(),
            align_of::<Req>(),
            size_of::<Resp>(),
            align_of::<Resp>(),
            layout.req_slot,
            layout.resp_slot,
            layout.region as u64,
            HEADER_LEN,
        );
        if recorded != computed {
            return Err(malformed(format!(
                "the server's geometry {recorded:?} differs from this process's {computed:?}"
            )));
        }
        let slot = w.slot.get();
        if slot >= layout.max_clients {
            return Err(malformed(format!(
                "slot {slot} of {} clients",
                layout.max_clients
            )));
        }
        let [header_fd, region_fd] = <[OwnedFd; 2]>::try_from(fds).map_err(|fds| {
            malformed(format!(
                "the welcome carried {} descriptors, not 2",
                fds.len()
            ))
        })?;
        let header = Mapping::open(&header_fd, HEADER_LEN, false)
            .map_err(|e| malformed(format!("header memfd: {e}")))?;
        let region = Mapping::open(&region_fd, layout.region, true)
            .map_err(|e| malformed(format!("region memfd: {e}")))?;
        // The mappings keep the memory; holding the descriptors would only
        // give this process more handles on it.
        drop((header_fd, region_fd));
        let header = HeaderMap(header);
        let ident = &header.header().ident.0;
        // Relaxed: the header is mapped read-only, where only Relaxed
        // loads are documented as allowed; the descriptor's passage over
        // the socket already orders the server's writes before this.
        if ident.magic.load(Ordering::Relaxed) != MAGIC
            || ident.version.load(Ordering::Relaxed) != VERSION
        {
            return Err(malformed("the header memfd has no valid magic".into()));
        }
        let region = RegionMap::new(region, layout);
        let core = ClientCore::new(region.req_ring(), region.resp_ring(), layout.depth);
        Ok(Self {
            core,
            region,
            header,
            sock,
            name: name.to_owned(),
            slot,
            server_pid: w.server_pid.get(),
            server_blocking: w.server_blocking.get() != 0,
            cfg: cfg.clone(),
            next_check_ns: 0,
            idle_polls: 0,
            notice: Vec::new(),
            broken: None,
        })
    }

    fn error(&self, b: &Broken) -> Error {
        match b {
            Broken::ServerGone(why) => Error::ServerGone {
                name: self.name.clone(),
                pid: self.server_pid,
                why,
            },
            Broken::Evicted(reason) => Error::Evicted {
                name: self.name.clone(),
                slot: self.slot,
                reason: reason.clone(),
            },
            Broken::Protocol(call_id) => Error::Protocol {
                name: self.name.clone(),
                call_id: *call_id,
            },
        }
    }

    fn check_broken(&self) -> Result<(), Error> {
        match &self.broken {
            None => Ok(()),
            Some(b) => Err(self.error(b)),
        }
    }

    fn fail(&mut self, b: Broken) -> Error {
        let e = self.error(&b);
        self.broken = Some(b);
        e
    }

    /// Wakes a blocked server after a request was published.
    #[inline(always)]
    fn notify_server(&self) {
        if !self.server_blocking {
            return;
        }
        let sleeping = &self.header.header().server_wait.0.sleeping;
        // SeqCst fence: orders the request's publication before the load of
        // `sleeping` (Dekker with the server's `sleeping = 1; fence; check`).
        fence(Ordering::SeqCst);
        // Relaxed: ordered by the fence above.
        if sleeping.load(Ordering::Relaxed) != 0 {
            // A full socket buffer already holds wake-ups, and a broken
            // connection is found by the next look at it: either way the
            // byte is not needed.
            let _ = sys::send(&self.sock, &[WAKE], &[]);
        }
    }

    #[inline]
    fn call(&mut self, req: &Req, user: U) -> Result<(), CallError<U>> {
        if let Some(b) = &self.broken {
            return Err(CallError::Failed(user, self.error(b)));
        }
        self.core.try_call(req, user).map_err(CallError::Full)?;
        self.notify_server();
        Ok(())
    }

    /// Looks at the connection, at most every `server_timeout / 2`: the
    /// server writes on it only its last word (shutdown or eviction) before
    /// closing it, and the kernel closes it when the server dies.
    #[cold]
    fn check_server(&mut self) -> Result<(), Error> {
        self.check_broken()?;
        let now = sys::coarse_now_ns();
        if now < self.next_check_ns {
            return Ok(());
        }
        self.next_check_ns = now.saturating_add(nanos(self.check_interval()));
        self.look()
    }

    fn look(&mut self) -> Result<(), Error> {
        let mut chunk = [0u8; 512];
        let mut fds = Vec::new();
        let closed = loop {
            match sys::recv(&self.sock, &mut chunk, &mut fds) {
                Ok(0) => break true,
                Ok(n) if self.notice.len() + n <= MAX_NOTICE => {
                    self.notice.extend_from_slice(&chunk[..n]);
                }
                Ok(_) => {
                    return Err(self.fail(Broken::ServerGone(
                        "it sent more than a notice on the connection",
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ECONNRESET and the like: the connection is gone.
                Err(_) => break true,
            }
        };
        if !closed && self.notice.is_empty() {
            return Ok(());
        }
        let b = match Notice::parse(&self.notice) {
            Ok(Some(Notice::Shutdown)) => Broken::ServerGone("it shut down"),
            Ok(Some(Notice::Evicted(reason))) => Broken::Evicted(reason),
            Ok(None) => Broken::ServerGone("its process exited"),
            // Part of a notice: the rest follows with the close.
            Err(_) if !closed => return Ok(()),
            Err(_) => Broken::ServerGone("it closed the connection after a malformed notice"),
        };
        Err(self.fail(b))
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
                Err(bad) => return Err(self.fail(Broken::Protocol(bad.0))),
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
    /// configured), failing if the server goes away, evicts us, or
    /// `timeout` passes. `deadline` (coarse-clock nanoseconds) is set at the
    /// first look at the clock, after one batch of spins, so a response that
    /// comes quickly never costs a clock read; callers that wait several
    /// times for one operation pass the same `deadline`.
    fn wait_ready(
        &mut self,
        timeout: Duration,
        deadline: &mut Option<u64>,
        op: &'static str,
    ) -> Result<(), Error> {
        let spins = self.cfg.wait.spins();
        let mut spun = 0u32;
        loop {
            // At least one look per batch; no more spinning than configured.
            let batch = spins.map_or(SPIN_BATCH, |s| SPIN_BATCH.min(s - spun).max(1));
            for _ in 0..batch {
                if self.core.response_ready() {
                    return Ok(());
                }
                std::hint::spin_loop();
            }
            self.check_server()?;
            let now = sys::coarse_now_ns();
            // Plus one tick: `now` may lag the true time by up to one.
            let d = *deadline.get_or_insert_with(|| {
                now.saturating_add(nanos(timeout))
                    .saturating_add(sys::coarse_resolution_ns())
            });
            if now >= d {
                return Err(Error::Timeout {
                    name: self.name.clone(),
                    op,
                    after: timeout,
                });
            }
            if let Some(s) = spins {
                spun = spun.saturating_add(batch).min(s);
                if spun >= s {
                    self.sleep_once(Duration::from_nanos(d - now));
                }
            }
        }
    }

    #[cold]
    fn sleep_once(&mut self, at_most: Duration) {
        let w = &self.region.ctl().wait.0;
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
        if !self.core.response_ready() {
            sys::futex_wait(&w.wake, seen, self.check_interval().min(at_most));
        }
        // Relaxed: a stale `1` seen by the server costs one spare wake.
        w.sleeping.store(0, Ordering::Relaxed);
    }
}

enum ReadError {
    Timeout,
    Closed,
    Io(io::Error),
}

/// Fills `buf` from the non-blocking `sock`, waiting until `by`.
fn read_exact(
    sock: &OwnedFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    by: Instant,
) -> Result<(), ReadError> {
    let mut got = 0;
    while got < buf.len() {
        match sys::recv(sock, &mut buf[got..], fds) {
            Ok(0) => return Err(ReadError::Closed),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let now = Instant::now();
                if now >= by {
                    return Err(ReadError::Timeout);
                }
                sys::wait_readable(sock, by - now).map_err(ReadError::Io)?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    Ok(())
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
    /// User data of a call: its sequence number, so the late answer of a
    /// call that timed out is never taken for a later call's.
    conn: Conn<Req, Resp, u64>,
    seq: u64,
}

impl<Req: Message, Resp: Message> Client<Req, Resp> {
    /// Attaches to the server of segment `name`, checking that it speaks
    /// this crate's protocol version with the same `Req`/`Resp` layouts.
    /// Retries while the server is not there or full, for up to
    /// [`connect_timeout`](ClientConfig::connect_timeout).
    pub fn connect(name: &str, cfg: ClientConfig) -> Result<Self, Error> {
        Ok(Self {
            conn: Conn::connect(name, cfg)?,
            seq: 0,
        })
    }

    /// Sends `req` and waits for its response, at most
    /// [`call_timeout`](ClientConfig::call_timeout). Fails within the
    /// configured `server_timeout` if the server dies or evicts this client.
    #[inline]
    pub fn call(&mut self, req: &Req) -> Result<Resp, Error> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let timeout = self.conn.cfg.call_timeout;
        let mut deadline = None;
        loop {
            match self.conn.call(req, seq) {
                Ok(()) => break,
                Err(CallError::Failed(_, e)) => return Err(e),
                // Every call id is held by an earlier call that timed out:
                // wait for one of their late answers, and drop it.
                Err(CallError::Full(_)) => {
                    self.conn.wait_ready(timeout, &mut deadline, "call")?;
                    self.conn.poll(&mut |_, _| {})?;
                }
            }
        }
        loop {
            self.conn.wait_ready(timeout, &mut deadline, "call")?;
            let mut out = None;
            self.conn.poll(&mut |s, r| {
                if s == seq {
                    out = Some(r);
                }
            })?;
            if let Some(r) = out {
                return Ok(r);
            }
        }
    }

    /// The client slot this client occupies.
    pub fn slot(&self) -> u32 {
        self.conn.slot
    }

    /// The bytes of this client's own region (control block and both
    /// rings), the only shared memory it can write. For fault-injection
    /// tests that scribble over it to check that the server survives;
    /// writing through it gets this client evicted.
    #[doc(hidden)]
    pub fn own_region_for_fault_injection(&self) -> (*mut u8, usize) {
        self.conn.region.bytes()
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
    /// flight; [`CallError::Failed`] when the connection is broken, which a
    /// call with nothing else in flight finds out as the synchronous client
    /// would (looking at the connection at most every `server_timeout / 2`).
    /// Both errors return `user`.
    #[inline]
    pub fn call(&mut self, req: &Req, user: U) -> Result<(), CallError<U>> {
        if self.conn.core.in_flight() == 0
            && let Err(e) = self.conn.check_server()
        {
            return Err(CallError::Failed(user, e));
        }
        self.conn.call(req, user)
    }

    /// Delivers every response that has arrived to `f` with its call's user
    /// data, without waiting. Returns how many. Detects a dead server or an
    /// eviction within `server_timeout` while calls are in flight and polls
    /// keep coming.
    #[inline]
    pub fn poll(&mut self, mut f: impl FnMut(U, Resp)) -> Result<usize, Error> {
        self.conn.poll(&mut f)
    }

    /// Like [`poll`](Self::poll) but waits (per the wait strategy) for at
    /// least one response when calls are in flight, at most
    /// [`call_timeout`](ClientConfig::call_timeout).
    pub fn wait(&mut self, f: impl FnMut(U, Resp)) -> Result<usize, Error> {
        self.wait_timeout(self.conn.cfg.call_timeout, f)
    }

    /// Like [`wait`](Self::wait) with its own deadline: [`Error::Timeout`]
    /// if no response arrives within `timeout` (the calls stay in flight).
    pub fn wait_timeout(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(U, Resp),
    ) -> Result<usize, Error> {
        if self.conn.core.in_flight() == 0 {
            return self.conn.poll(&mut f);
        }
        let mut deadline = None;
        loop {
            self.conn.wait_ready(timeout, &mut deadline, "wait")?;
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
        self.conn.slot
    }
}
