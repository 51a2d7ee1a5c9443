//! Driving an `mlx5-peer` process (this crate's binary) from Rust: what
//! the crate's cross-process tests and benches do, and what tests of
//! layers above can do to put the far end of a QP in another process.
//!
//! The peer is started with [`PeerProcess::spawn`] (given the binary's
//! path, e.g. `env!("CARGO_BIN_EXE_mlx5-peer")` inside this package), set
//! up with `QPS` QPs and one MR, and driven with the line commands listed in
//! the binary's documentation. The byte pattern and hash the peer uses to
//! fill and check memory ([`pattern`], [`fnv1a`], [`stream_len`]) are here
//! so both sides compute the same thing.

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use crate::{ConnInfo, Remote};

/// The test pattern: byte `i` of stream `seed`.
pub fn pattern(seed: u64, i: u64) -> u8 {
    let x = (i ^ seed.rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 56) as u8
}

/// The length of message `k` of a `stream` of messages up to `maxlen`
/// bytes (1..=maxlen).
pub fn stream_len(seed: u64, k: u64, maxlen: usize) -> usize {
    1 + (u64::from(pattern(seed, k)) * 0x101 + k) as usize % maxlen.max(1)
}

/// FNV-1a, 64 bits: the peer's `hash` command.
pub fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Lower-case hex, as the peer's commands and answers carry bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parses [`hex`]; `None` for anything else.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// A running `mlx5-peer`, set up with QPs and an MR. Dropping it kills the
/// process.
pub struct PeerProcess {
    /// The process (tests kill it to simulate a crash).
    pub child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The peer MR's address and rkey.
    pub mr: Remote,
    /// Connection info of each of the peer's QPs.
    pub infos: Vec<ConnInfo>,
}

impl PeerProcess {
    /// Starts `bin` with `args` (e.g. `["--device", "soft"]`) and sets it up
    /// with `qps` QPs of send depth `sq` and receive depth `rq` on one CQ,
    /// and an MR of `mr_len` bytes with every right.
    ///
    /// # Panics
    ///
    /// If the process cannot be started or the setup fails (this is test
    /// and bench tooling: a failure should stop the test, loudly).
    pub fn spawn(bin: &str, args: &[&str], qps: usize, mr_len: usize, sq: u32, rq: u32) -> Self {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut p = PeerProcess {
            child,
            stdin,
            stdout,
            mr: Remote { addr: 0, rkey: 0 },
            infos: Vec::new(),
        };
        let r = p.cmd(&format!("setup {qps} {mr_len} {sq} {rq}"));
        let mut it = r.split_whitespace();
        let mut field = |what: &str| it.next().unwrap_or_else(|| panic!("setup: no {what}"));
        p.mr.addr = field("address").parse().expect("setup: address");
        p.mr.rkey = field("rkey").parse().expect("setup: rkey");
        p.infos = it
            .map(|h| ConnInfo::decode(&unhex(h).expect("setup: hex")).expect("setup: conn info"))
            .collect();
        assert_eq!(p.infos.len(), qps, "setup: connection infos");
        p
    }

    /// Sends a command and returns what follows `ok`.
    ///
    /// # Panics
    ///
    /// If the peer answers `err` (with its reason) or is gone.
    pub fn cmd(&mut self, c: &str) -> String {
        self.send(c);
        let r = self.line();
        match r.strip_prefix("ok") {
            Some(rest) => rest.trim().to_string(),
            None => panic!("mlx5-peer: {c:?} → {r:?}"),
        }
    }

    /// Sends a command without waiting for its answer (`stream`, `echo`).
    pub fn send(&mut self, c: &str) {
        writeln!(self.stdin, "{c}").expect("write to mlx5-peer");
        self.stdin.flush().expect("flush to mlx5-peer");
    }

    /// The next answer line, trimmed (empty if the peer is gone).
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        self.stdout.read_line(&mut l).expect("read from mlx5-peer");
        l.trim().to_string()
    }

    /// The peer MR at `off`.
    pub fn remote(&self, off: u64) -> Remote {
        Remote {
            addr: self.mr.addr + off,
            rkey: self.mr.rkey,
        }
    }

    /// Connects the peer's QP `i` to `to`.
    pub fn connect(&mut self, i: usize, to: &ConnInfo) {
        self.cmd(&format!("connect {i} {}", hex(&to.encode())));
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
