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
//!
//! [`WriteImmEnd`] is the near end the benches of this crate and of
//! copyrpc use for their raw WRITE_IMM figures: QPs on one CQ that post
//! small inline WRITE_IMMs and echo the ones that arrive.

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use crate::wqe::WriteImm;
use crate::{Access, ConnInfo, ConnectOpts, Context, Cq, Kind, Mr, Pd, Qp, QpCaps, Remote};

/// One end of a raw WRITE_IMM exchange: `qps` QPs sharing one CQ (sends
/// and receives, with private receive queues), one registered buffer,
/// every 16th WRITE_IMM signaled so the send queue retires without a CQE
/// per message. Panics on any verbs error (bench and test use).
pub struct WriteImmEnd {
    /// The device.
    pub ctx: Context,
    _pd: Pd,
    /// The one CQ of every QP.
    pub cq: Cq,
    /// The QPs, numbered from `qpn0` on a fresh device.
    pub qps: Vec<Qp>,
    /// The buffer (all rights).
    pub mr: Mr,
    /// The first QP's number: a completion's QP index is `qpn - qpn0`.
    pub qpn0: u32,
    payload: usize,
    sent: Vec<u32>,
}

impl WriteImmEnd {
    /// The largest payload of [`WriteImmEnd::ping`].
    pub const MAX_PAYLOAD: usize = 64;

    /// `qps` QPs of `caps` on one CQ large enough for all of their queues,
    /// a buffer of `mr_len` bytes; each WRITE_IMM carries `payload` inline
    /// bytes (at most [`WriteImmEnd::MAX_PAYLOAD`], the immediate's low
    /// byte repeated).
    pub fn open(ctx: &Context, qps: usize, caps: QpCaps, mr_len: usize, payload: usize) -> Self {
        assert!(
            payload <= Self::MAX_PAYLOAD && payload <= caps.max_inline as usize,
            "payload {payload} (at most {} and max_inline)",
            Self::MAX_PAYLOAD
        );
        let pd = Pd::new(ctx).expect("pd");
        let cq = Cq::new(
            ctx,
            ((caps.max_send_wr + caps.max_recv_wr) * qps as u32 * 2).next_power_of_two(),
        )
        .expect("cq");
        let qps: Vec<Qp> = (0..qps)
            .map(|_| Qp::builder(&pd, &cq, &cq).caps(caps).build().expect("qp"))
            .collect();
        let mr = pd.alloc_mr(mr_len, Access::ALL).expect("mr");
        WriteImmEnd {
            ctx: ctx.clone(),
            _pd: pd,
            cq,
            sent: vec![0; qps.len()],
            qpn0: qps[0].qpn(),
            qps,
            mr,
            payload,
        }
    }

    /// Each QP's connection info.
    pub fn infos(&self) -> Vec<ConnInfo> {
        self.qps
            .iter()
            .map(|q| q.local_info(&ConnectOpts::default()).expect("info"))
            .collect()
    }

    /// Connects QP `i` to `far[i]` and posts `recvs` receives on it.
    pub fn connect(&mut self, far: &[ConnInfo], recvs: u32) {
        for (qp, info) in self.qps.iter_mut().zip(far) {
            qp.connect(info, &ConnectOpts::default()).expect("connect");
            for _ in 0..recvs {
                qp.post_recv(&[]).expect("recv");
            }
        }
    }

    /// Posts one WRITE_IMM on QP `i` to `to` with immediate `imm`.
    pub fn ping(&mut self, i: usize, to: Remote, imm: u32) {
        self.sent[i] = self.sent[i].wrapping_add(1);
        let bytes = [imm as u8; Self::MAX_PAYLOAD];
        let w = WriteImm::inline(to, &bytes[..self.payload], imm);
        let w = if self.sent[i].is_multiple_of(16) {
            w.signaled()
        } else {
            w
        };
        self.qps[i].post_and_ring(&w).expect("post");
    }

    /// Steps a software device once (nothing on hardware).
    pub fn step(&self) {
        if self.ctx.is_soft() {
            let _ = self.ctx.progress();
        }
    }

    /// Steps the device and answers every WRITE_IMM that arrived with one
    /// back to `to` (same immediate) on its QP, except immediate `stop`;
    /// `seen` gets (QP index, immediate) of each.
    pub fn echo(&mut self, to: Remote, stop: u32, seen: &mut Vec<(usize, u32)>) {
        self.step();
        let q0 = self.qpn0;
        self.cq
            .poll(256, |c| {
                if c.kind == Kind::RecvWriteImm {
                    seen.push(((c.qpn - q0) as usize, c.imm));
                } else {
                    assert!(c.status().is_ok(), "{c:?}");
                }
            })
            .expect("poll");
        for &(i, imm) in seen.iter() {
            self.qps[i].post_recv(&[]).expect("recv");
            if imm != stop {
                self.ping(i, to, imm);
            }
        }
    }
}

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
