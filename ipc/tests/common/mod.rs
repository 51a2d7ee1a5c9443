//! Helpers for tests that cross a process boundary with `ipc-peer`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipc::{Client, ClientConfig, Server, ServerConfig};

pub type Msg = [u64; 4];

/// Runs `connect` in a thread while `server` looks at its connections, and
/// returns what it returned: `connect` waits for the server's answer, so a
/// test that drives the server itself cannot connect from the same thread.
pub fn attach_while_serving<Req: ipc::Message, Resp: ipc::Message, C: Send>(
    server: &mut ipc::Server<Req, Resp>,
    connect: impl FnOnce() -> C + Send,
) -> C {
    std::thread::scope(|s| {
        let h = s.spawn(connect);
        while !h.is_finished() {
            server.refresh();
            std::thread::sleep(Duration::from_micros(100));
        }
        h.join().expect("connecting thread panicked")
    })
}

/// A unique segment name for one test.
pub fn name(test: &str) -> String {
    format!("ipc-test-{}-{test}", std::process::id())
}

pub struct Peer {
    pub child: Child,
    lines: Receiver<String>,
    /// Kept open: a peer that holds (`attack`) exits when it closes, so it
    /// never outlives this process.
    _stdin: Option<ChildStdin>,
}

impl Peer {
    pub fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ipc-peer"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ipc-peer");
        let stdin = child.stdin.take();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            _stdin: stdin,
        }
    }

    /// Waits for a stdout line starting with `prefix`; panics with the
    /// peer's stderr if it exits or takes longer than `timeout`.
    pub fn expect_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(_) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        let err = self.stderr();
                        panic!("peer exited ({status}) before printing {prefix:?}: {err}");
                    }
                    if left.is_zero() {
                        panic!("peer did not print {prefix:?} within {timeout:?}");
                    }
                }
            }
        }
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
    }

    /// Waits for exit (at most `timeout`) and returns (success, stdout lines, stderr).
    pub fn finish(mut self, timeout: Duration) -> (bool, Vec<String>, String) {
        let deadline = std::time::Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if std::time::Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("peer did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut lines = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            lines.push(l);
        }
        let err = self.stderr();
        (status.success(), lines, err)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill peer");
        self.child.wait().expect("reap peer");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long a peer may take to start and print its first line.
pub const START: Duration = Duration::from_secs(20);

/// The answer `ipc-peer serve` and [`ServerThread`] give, less the pid.
pub fn answer(req: &Msg) -> Msg {
    [req[0], req[1], req[2].wrapping_mul(3).wrapping_add(1), 0]
}

/// A server running in a thread of the test process, answering with
/// [`answer`].
pub struct ServerThread {
    stop: Arc<AtomicBool>,
    attached: Arc<AtomicUsize>,
    evictions: Arc<AtomicU64>,
    handle: Option<JoinHandle<usize>>,
}

impl ServerThread {
    pub fn start(name: &str, cfg: ServerConfig) -> Self {
        let mut server = Server::<Msg, Msg>::create(name, cfg).expect("create server");
        let stop = Arc::new(AtomicBool::new(false));
        let attached = Arc::new(AtomicUsize::new(0));
        let evictions = Arc::new(AtomicU64::new(0));
        let handle = std::thread::spawn({
            let (stop, attached, evictions) = (stop.clone(), attached.clone(), evictions.clone());
            move || {
                let mut served = 0;
                while !stop.load(Ordering::Relaxed) {
                    let done = server.serve(64, |_, req| answer(req));
                    assert_eq!(done.undelivered, 0, "serve could not deliver a reply");
                    served += done.handled;
                    if done.handled == 0 {
                        attached.store(server.attached_clients(), Ordering::Relaxed);
                        evictions.store(server.evictions(), Ordering::Relaxed);
                        server.wait(Duration::from_millis(1));
                    }
                }
                served
            }
        });
        Self {
            stop,
            attached,
            evictions,
            handle: Some(handle),
        }
    }

    pub fn wait_attached(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.attached.load(Ordering::Relaxed) != n {
            assert!(
                Instant::now() < deadline,
                "server saw {} attached clients, expected {n}",
                self.attached.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Stops the server; panics if its thread panicked. Returns how many
    /// requests it served.
    pub fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .unwrap()
            .join()
            .expect("server thread panicked")
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Connects, retrying while the server is not there yet or full, for at
/// most `within`.
pub fn connect_retrying(name: &str, within: Duration) -> Client<Msg, Msg> {
    Client::<Msg, Msg>::connect(name, ClientConfig::new().connect_timeout(within))
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

/// An `ipc-peer serve` process, once it printed `ready`.
pub fn spawn_server(args: &[&str]) -> Peer {
    let mut p = Peer::spawn(args);
    p.expect_line("ready", START);
    p
}

/// Waits for an `ipc-peer call` process and checks it made all its calls.
pub fn assert_ok(peer: Peer, calls: u64) {
    let (ok, lines, err) = peer.finish(Duration::from_secs(120));
    assert!(ok, "client failed: {err}");
    assert!(
        lines.iter().any(|l| *l == format!("ok {calls}")),
        "client output {lines:?}"
    );
}

/// A client thread of this process that calls until told to stop, checking
/// every answer; `finish` fails the test if it erred or got stuck in a call.
pub struct Caller {
    stop: Arc<AtomicBool>,
    done: Receiver<Result<u64, String>>,
}

impl Caller {
    pub fn start(name: &str, k: u64) -> Self {
        let mut c = connect_retrying(name, START);
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, done) = channel();
        std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut i = 0u64;
                let r = loop {
                    if stop.load(Ordering::Relaxed) {
                        break Ok(i);
                    }
                    match c.call(&[k, i, i, 0]) {
                        Ok(r) if r[..3] == [k, i, 3 * i + 1] => i += 1,
                        Ok(r) => break Err(format!("call {i}: wrong answer {r:?}")),
                        Err(e) => break Err(format!("call {i}: {e}")),
                    }
                };
                let _ = tx.send(r);
            }
        });
        Self { stop, done }
    }

    /// Stops it; returns how many calls it made.
    pub fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        match self.done.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => panic!("a well-behaved client failed: {e}"),
            Err(_) => panic!("a well-behaved client is stuck in a call"),
        }
    }
}

// ------------------------------------------------ raw peers of the protocol

/// The abstract socket address a segment `name` of this user listens on.
pub fn address(name: &str) -> String {
    // SAFETY: geteuid cannot fail.
    format!("ipc.{}.{name}", unsafe { libc::geteuid() })
}

/// A valid hello (magic "CPRCIPC2", protocol version 2, no flags), as a raw
/// client sends it.
pub const HELLO: [u8; 16] = *b"CPRCIPC2\x02\0\0\0\0\0\0\0";
/// Length of a welcome's fixed part, and where its fields lie.
pub const WELCOME_LEN: usize = 80;
pub mod welcome {
    //! Byte offsets of the welcome's little-endian fields (`wire::Welcome`).
    pub const VERSION: usize = 8;
    pub const STATUS: usize = 12;
    pub const SLOT: usize = 16;
    pub const MAX_CLIENTS: usize = 20;
    pub const DEPTH: usize = 24;
    pub const REGION_LEN: usize = 40;
    pub const REQ_SLOT: usize = 64;
    pub const TEXT_LEN: usize = 72;
}

/// The welcome's `u32` field at `at`.
pub fn field(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// A connection to segment `name` that speaks raw bytes (blocking, with a
/// read timeout, so a silent peer fails the test instead of hanging it).
pub fn raw_connect(name: &str) -> std::os::unix::net::UnixStream {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(address(name)).unwrap();
    let s = std::os::unix::net::UnixStream::connect_addr(&addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[path = "../../src/bin/ipc-peer/rawsock.rs"]
mod rawsock;
#[allow(unused_imports)]
pub use rawsock::{recv_with_fds, send_with_fds};

/// Reads until the peer closes (or the socket's timeout passes, which
/// fails the test): every byte and every descriptor that came.
pub fn read_to_close(
    sock: &std::os::unix::net::UnixStream,
) -> (Vec<u8>, Vec<std::os::fd::OwnedFd>) {
    let (mut bytes, mut fds) = (Vec::new(), Vec::new());
    loop {
        let mut buf = [0u8; 4096];
        match recv_with_fds(sock, &mut buf, &mut fds) {
            Ok(0) => return (bytes, fds),
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("waiting for the peer to close: {e}"),
        }
    }
}

/// A new memfd named `tag` (it shows as `/memfd:TAG` in `/proc/*/fd`) of
/// `len` bytes holding `contents` at its start, with `seals` added.
pub fn memfd(tag: &str, len: u64, contents: &[u8], seals: libc::c_int) -> std::os::fd::OwnedFd {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::fs::FileExt;
    let cname = std::ffi::CString::new(tag).unwrap();
    // SAFETY: `cname` is a valid NUL-terminated string for the call.
    let fd =
        unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel just returned this descriptor; nobody else owns it.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let file = std::fs::File::from(fd);
    file.set_len(len).unwrap();
    file.write_all_at(contents, 0).unwrap();
    let fd = std::os::fd::OwnedFd::from(file);
    // SAFETY: fcntl on a descriptor we own.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    assert_eq!(r, 0, "F_ADD_SEALS: {}", std::io::Error::last_os_error());
    fd
}

/// What process `pid`'s descriptors are: (number, link target), sorted.
pub fn open_fds(pid: u32) -> Vec<(u32, String)> {
    let mut v: Vec<(u32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list /proc/PID/fd")
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.parse().ok()?;
            // A descriptor closed between the listing and here is gone.
            let target = std::fs::read_link(e.path()).ok()?;
            Some((n, target.to_string_lossy().into_owned()))
        })
        // The listing's own descriptor, when a process lists itself.
        .filter(|(_, target)| *target != format!("/proc/{pid}/fd"))
        .collect();
    v.sort();
    v
}

/// Waits (at most `within`) until process `pid` holds exactly the
/// descriptors `expected` (a server closes a connection at its next look).
pub fn wait_for_fds(pid: u32, expected: &[(u32, String)], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = open_fds(pid);
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} holds descriptors {now:?}, expected {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads exactly `n` bytes (the descriptors that come with them go to
/// `fds`); fails the test if the peer closes first.
pub fn recv_exact(
    sock: &std::os::unix::net::UnixStream,
    n: usize,
    fds: &mut Vec<std::os::fd::OwnedFd>,
) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match recv_with_fds(sock, &mut buf[got..], fds) {
            Ok(0) => panic!("the peer closed after {got} of {n} bytes"),
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("after {got} of {n} bytes: {e}"),
        }
    }
    buf
}

/// Reads a whole welcome (fixed part and type text) and its descriptors.
pub fn recv_welcome(sock: &std::os::unix::net::UnixStream) -> (Vec<u8>, Vec<std::os::fd::OwnedFd>) {
    let mut fds = Vec::new();
    let mut bytes = recv_exact(sock, WELCOME_LEN, &mut fds);
    let text = field(&bytes, welcome::TEXT_LEN) as usize;
    bytes.extend(recv_exact(sock, text, &mut fds));
    (bytes, fds)
}
