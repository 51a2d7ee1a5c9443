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
