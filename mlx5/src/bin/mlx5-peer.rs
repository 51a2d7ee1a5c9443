//! `mlx5-peer`: the far end of an RDMA conversation in another process,
//! driven line by line over stdin/stdout. The crate's cross-process tests
//! and benches spawn it; it is also a quick way to poke a software device
//! (or a NIC) by hand.
//!
//! ```text
//! mlx5-peer [--device SELECTION] [--manual] [--link shm|socket]
//! ```
//!
//! `--device` takes an `MLX5_DEVICE` selection (default: `MLX5_DEVICE`, or
//! `soft`); `--manual` opens the software device with manual progress and
//! spins it from the command loop (a `soft:manual` selection implies it);
//! `--link` chooses how the software device links to devices of other
//! processes of this host (`MLX5_SOFT_LINK`: shared memory by default;
//! `links` shows what each link is).
//! Every command answers one line, `ok ...`
//! or `err <reason>`:
//!
//! | command | answer / effect |
//! |---|---|
//! | `setup QPS MR_LEN SQ_DEPTH RQ_DEPTH` | `ok ADDR RKEY INFO...`: QPs on one CQ, one MR (all rights); INFO is each QP's connection info, hex; once per process (a refused setup leaves nothing behind) |
//! | `connect I INFO [MIN_RNR_TIMER]` | connects QP I to INFO |
//! | `fill OFF LEN SEED` / `hash OFF LEN` | writes the test pattern / `ok FNV1A64` of the bytes |
//! | `hex OFF LEN` / `get64 OFF` / `set64 OFF V` | bytes in hex / a u64 (host order) |
//! | `recv I N OFF LEN` | posts N receives on QP I scattering to OFF..OFF+LEN (LEN 0: none) |
//! | `poll N MS` | `ok KIND/QPN/INDEX/LEN/IMM/STATUS ...` for N completions within MS ms (`STATUS+se` when the sender solicited an event) |
//! | `withhold I 0\|1` | fault injection: QP I answers RNR while on |
//! | `hold-acks MS` | fault injection: the device holds plain ACKs nobody asked for at once up to MS ms (`Faults::hold_acks_for`) |
//! | `state I` | `ok STATE` of QP I (`Rts`, `Error`, ...) |
//! | `event MS` | `ok EVENT` (`Debug` of the next asynchronous event, spaces removed) within MS ms, or `ok none` |
//! | `stream I N SEED MAXLEN WINDOW` | verifies N WRITE_IMMs on QP I (see `stream` below) |
//! | `links` | `ok KIND@PEER ...`: the software device's links (`shm`, `unix` or `tcp`, and the peer's address) |
//! | `wire` | `ok FRAMES_SENT FRAMES_RECEIVED LINKS`: the software device's `Context::wire_stats()` frame counts and links |
//! | `corrupt-rings` | fault injection: `ok N` after sealing an impossible record in each of the N shared-memory rings this device sends on |
//! | `malformed-large` | fault injection: `ok N` after publishing a 16 KiB REQ whose fixed part disagrees with its length in each of the N shared-memory rings this device sends on |
//! | `corrupt-heads` | fault injection: `ok N`; from now on the device publishes impossible heads on the N shared-memory rings it reads |
//! | `echo ADDR RKEY` | answers every WRITE_IMM with a WRITE_IMM of the same length and immediate to ADDR on the same QP, until immediate `0xffffffff`; `ok COUNT` |
//! | `quit` | exits with status 0 (as the end of stdin does) |

use std::io::{BufRead, Write as _};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mlx5::peer::{fnv1a as fnv, hex, pattern, stream_len, unhex};
use mlx5::wqe::WriteImm;
use mlx5::{
    Access, ConnInfo, ConnectOpts, Context, Cq, Kind, LinkKind, Mr, Pd, Progress, Qp, QpCaps,
    Selection,
};

struct Peer {
    ctx: Context,
    manual: bool,
    pd: Pd,
    cq: Option<Cq>,
    qps: Vec<Qp>,
    mr: Option<Mr>,
}

type Res = Result<String, String>;

fn num<T: std::str::FromStr>(
    it: &mut std::str::SplitWhitespace<'_>,
    what: &str,
) -> Result<T, String> {
    it.next()
        .ok_or_else(|| format!("missing {what}"))?
        .parse()
        .map_err(|_| format!("{what}: not a number"))
}

impl Peer {
    fn mr(&self) -> Result<&Mr, String> {
        self.mr.as_ref().ok_or_else(|| "no setup yet".to_string())
    }

    fn range(&self, off: usize, len: usize) -> Result<&Mr, String> {
        let mr = self.mr()?;
        if off.checked_add(len).is_none_or(|e| e > mr.len()) {
            return Err(format!("range {off}+{len} outside the MR"));
        }
        Ok(mr)
    }

    fn qp(&mut self, i: usize) -> Result<&mut Qp, String> {
        self.qps.get_mut(i).ok_or_else(|| format!("no QP {i}"))
    }

    fn poll(
        &mut self,
        n: usize,
        timeout: Duration,
        mut f: impl FnMut(&mlx5::Completion),
    ) -> Result<(), String> {
        let cq = self.cq.as_mut().ok_or("no setup yet")?;
        let got = cq
            .poll_until(n, timeout, &mut f)
            .map_err(|e| e.to_string())?;
        if got < n {
            return Err(format!("{got} of {n} completions within {timeout:?}"));
        }
        Ok(())
    }

    fn run(&mut self, line: &str) -> Res {
        let mut it = line.split_whitespace();
        let cmd = it.next().unwrap_or("");
        let e = |x: mlx5::Error| x.to_string();
        match cmd {
            "setup" => {
                let (n, len, sq, rq): (usize, usize, u32, u32) = (
                    num(&mut it, "QPS")?,
                    num(&mut it, "MR_LEN")?,
                    num(&mut it, "SQ_DEPTH")?,
                    num(&mut it, "RQ_DEPTH")?,
                );
                // One setup per process: QP indexes and `poll` refer to it.
                if self.cq.is_some() {
                    return Err("already set up".into());
                }
                // Room for every QP's sends and receives, twice; refused
                // (by Cq::new) when that does not fit a CQ.
                let entries = u32::try_from(n)
                    .ok()
                    .and_then(|n| sq.checked_add(rq)?.checked_mul(n)?.checked_mul(2))
                    .and_then(u32::checked_next_power_of_two)
                    .ok_or_else(|| {
                        format!("{n} QPs of {sq} + {rq} WRs need more CQEs than a CQ has")
                    })?;
                let cq = Cq::new(&self.ctx, entries).map_err(e)?;
                let caps = QpCaps {
                    max_send_wr: sq,
                    max_recv_wr: rq,
                    ..QpCaps::default()
                };
                // Kept only once all of it was made: a refused setup
                // leaves no QP behind to shift the next one's indexes.
                let mut qps = Vec::new();
                let mut out = Vec::new();
                for _ in 0..n {
                    let qp = Qp::builder(&self.pd, &cq, &cq)
                        .caps(caps)
                        .build()
                        .map_err(e)?;
                    out.push(hex(&qp
                        .local_info(&ConnectOpts::default())
                        .map_err(e)?
                        .encode()));
                    qps.push(qp);
                }
                let mr = self.pd.alloc_mr(len, Access::ALL).map_err(e)?;
                let r = format!("{} {} {}", mr.addr(), mr.rkey(), out.join(" "));
                self.qps = qps;
                self.cq = Some(cq);
                self.mr = Some(mr);
                Ok(r)
            }
            "connect" => {
                let i: usize = num(&mut it, "I")?;
                let bytes = unhex(it.next().ok_or("missing INFO")?).ok_or("INFO: not hex")?;
                let info = ConnInfo::decode(&bytes).map_err(e)?;
                let mut o = ConnectOpts::default();
                if let Some(t) = it.next() {
                    o.min_rnr_timer = t.parse().map_err(|_| "MIN_RNR_TIMER: not a number")?;
                }
                self.qp(i)?.connect(&info, &o).map_err(e)?;
                Ok(String::new())
            }
            "fill" => {
                let (off, len, seed): (usize, usize, u64) = (
                    num(&mut it, "OFF")?,
                    num(&mut it, "LEN")?,
                    num(&mut it, "SEED")?,
                );
                let mr = self.range(off, len)?;
                let b: Vec<u8> = (0..len as u64).map(|i| pattern(seed, i)).collect();
                // SAFETY: this binary's protocol: its driver sends `fill`
                // only for bytes no WQE of either side is accessing.
                unsafe { mr.write(off, &b) };
                Ok(String::new())
            }
            "hash" | "hex" => {
                let (off, len): (usize, usize) = (num(&mut it, "OFF")?, num(&mut it, "LEN")?);
                let mr = self.range(off, len)?;
                let mut b = vec![0u8; len];
                // SAFETY: this binary's protocol: its driver asks for
                // `hash`/`hex` only once what it wrote there completed.
                unsafe { mr.read(off, &mut b) };
                Ok(if cmd == "hash" {
                    format!("{:016x}", fnv(&b))
                } else {
                    hex(&b)
                })
            }
            "get64" | "set64" => {
                let off: usize = num(&mut it, "OFF")?;
                if !off.is_multiple_of(8) {
                    return Err("OFF must be 8-aligned".into());
                }
                let a = self.range(off, 8)?.atomic_u64(off);
                // SeqCst: the word is shared with a device executing remote
                // atomics; one total order with them keeps `get64` honest.
                if cmd == "set64" {
                    a.store(num(&mut it, "V")?, std::sync::atomic::Ordering::SeqCst);
                    return Ok(String::new());
                }
                Ok(a.load(std::sync::atomic::Ordering::SeqCst).to_string())
            }
            "recv" => {
                let (i, n, off, len): (usize, usize, usize, u32) = (
                    num(&mut it, "I")?,
                    num(&mut it, "N")?,
                    num(&mut it, "OFF")?,
                    num(&mut it, "LEN")?,
                );
                let sge = self.range(off, len as usize)?.sge(off, len);
                let sges = if len == 0 { vec![] } else { vec![sge] };
                let qp = self.qp(i)?;
                for _ in 0..n {
                    qp.post_recv(&sges).map_err(e)?;
                }
                Ok(String::new())
            }
            "poll" => {
                let (n, ms): (usize, u64) = (num(&mut it, "N")?, num(&mut it, "MS")?);
                let mut out = Vec::new();
                self.poll(n, Duration::from_millis(ms), |c| {
                    let status = match c.status() {
                        Ok(()) => "ok".to_string(),
                        Err(s) => format!("{s:?}"),
                    };
                    let kind = format!("{:?}", c.kind).replace(' ', "");
                    let se = if c.solicited { "+se" } else { "" };
                    out.push(format!(
                        "{kind}/{}/{}/{}/{}/{status}{se}",
                        c.qpn, c.wqe_counter, c.byte_len, c.imm
                    ));
                })?;
                Ok(out.join(" "))
            }
            "withhold" => {
                let (i, on): (usize, u8) = (num(&mut it, "I")?, num(&mut it, "ON")?);
                let f = self.ctx.faults().map_err(e)?;
                f.withhold_recv(self.qp(i)?, on != 0).map_err(e)?;
                Ok(String::new())
            }
            "hold-acks" => {
                let ms: u64 = num(&mut it, "MS")?;
                let f = self.ctx.faults().map_err(e)?;
                f.hold_acks_for(Duration::from_millis(ms));
                Ok(String::new())
            }
            "state" => {
                let i: usize = num(&mut it, "I")?;
                Ok(format!("{:?}", self.qp(i)?.state()))
            }
            "event" => {
                let ms: u64 = num(&mut it, "MS")?;
                let deadline = Instant::now()
                    .checked_add(Duration::from_millis(ms))
                    .ok_or_else(|| format!("MS {ms} is too far away"))?;
                loop {
                    if self.manual {
                        self.ctx.progress().map_err(e)?;
                    }
                    if let Some(ev) = self.ctx.async_event().map_err(e)? {
                        return Ok(format!("{ev:?}").replace(' ', ""));
                    }
                    if Instant::now() >= deadline {
                        return Ok("none".into());
                    }
                    if !self.manual {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            "stream" => {
                let (i, n, seed, maxlen, window): (usize, u64, u64, usize, usize) = (
                    num(&mut it, "I")?,
                    num(&mut it, "N")?,
                    num(&mut it, "SEED")?,
                    num(&mut it, "MAXLEN")?,
                    num(&mut it, "WINDOW")?,
                );
                self.stream(i, n, seed, maxlen, window)
            }
            "links" => {
                let l = self.ctx.soft_links().map_err(e)?;
                Ok(l.iter()
                    .map(|l| {
                        let k = match l.kind {
                            LinkKind::Shm => "shm",
                            LinkKind::Unix => "unix",
                            LinkKind::Tcp => "tcp",
                        };
                        // One word per link (a peer's address may print
                        // with spaces, as a TCP one does).
                        format!("{k}@{}", l.peer).replace(' ', "")
                    })
                    .collect::<Vec<_>>()
                    .join(" "))
            }
            "wire" => {
                let st = self.ctx.wire_stats().map_err(e)?;
                Ok(format!(
                    "{} {} {}",
                    st.frames_sent, st.frames_received, st.links
                ))
            }
            "corrupt-rings" => {
                let n = self.ctx.faults().map_err(e)?.corrupt_shm_rings();
                Ok(n.to_string())
            }
            "malformed-large" => {
                let n = self.ctx.faults().map_err(e)?.send_malformed_large_frames();
                Ok(n.to_string())
            }
            "corrupt-heads" => {
                let n = self.ctx.faults().map_err(e)?.corrupt_shm_heads();
                Ok(n.to_string())
            }
            "echo" => {
                let (addr, rkey): (u64, u32) = (num(&mut it, "ADDR")?, num(&mut it, "RKEY")?);
                self.echo(mlx5::Remote { addr, rkey })
            }
            "" => Err("empty command".into()),
            other => Err(format!("unknown command {other:?}")),
        }
    }

    /// Message `k` of a stream: its length and its slot's offset.
    fn stream(&mut self, i: usize, n: u64, seed: u64, maxlen: usize, window: usize) -> Res {
        if maxlen == 0 || window == 0 {
            return Err("MAXLEN and WINDOW must be at least 1".into());
        }
        let span = maxlen
            .checked_mul(window)
            .ok_or_else(|| format!("{window} slots of {maxlen} bytes overflow"))?;
        self.range(0, span)?;
        // WRITE_IMM needs receives without scatter entries; one per slot of
        // the window, reposted only after its message was checked, so the
        // sender never overwrites a slot that is not yet verified.
        for _ in 0..window {
            self.qp(i)?.post_recv(&[]).map_err(|e| e.to_string())?;
        }
        let mut buf = vec![0u8; maxlen];
        for k in 0..n {
            let mut c = None;
            self.poll(1, Duration::from_secs(20), |x| c = Some(*x))?;
            let c = c.expect("poll returned one");
            if c.kind != Kind::RecvWriteImm
                || c.status().is_err()
                || u64::from(c.imm) != k % (1 << 32)
            {
                return Err(format!("message {k}: unexpected completion {c:?}"));
            }
            let len = stream_len(seed, k, maxlen);
            if c.byte_len as usize != len {
                return Err(format!("message {k}: {} bytes, expected {len}", c.byte_len));
            }
            let slot = (k % window as u64) as usize;
            // SAFETY: message k's WRITE_IMM completed (its receive CQE was
            // just polled), and the sender writes this slot again only for
            // a later message, which needs the receive reposted below.
            unsafe { self.mr()?.read(slot * maxlen, &mut buf[..len]) };
            if let Some(j) = (0..len).find(|&j| buf[j] != pattern(seed ^ k, j as u64)) {
                return Err(format!("message {k}: byte {j} differs"));
            }
            self.qp(i)?.post_recv(&[]).map_err(|e| e.to_string())?;
        }
        Ok(String::new())
    }

    fn echo(&mut self, to: mlx5::Remote) -> Res {
        let mut count: u64 = 0;
        let mut sent = vec![0u32; self.qps.len()];
        let qpn0 = self.qps.first().ok_or("no setup yet")?.qpn();
        let mut todo: Vec<(usize, u32, u32)> = Vec::new();
        // Idle polls in a row, and since when (read only every 1024 idle
        // polls: a clock read per poll would be a measurable part of the
        // benches' round trips).
        let mut idle: u64 = 0;
        let mut idle_since = Instant::now();
        loop {
            if self.manual {
                self.ctx.progress().map_err(|e| e.to_string())?;
            }
            let cq = self.cq.as_mut().ok_or("no setup yet")?;
            let mut stop = false;
            cq.poll(64, |c| {
                if c.kind == Kind::RecvWriteImm {
                    // The stop message consumed a receive too: reposted
                    // below without an answer.
                    stop |= c.imm == u32::MAX;
                    todo.push((c.qpn.wrapping_sub(qpn0) as usize, c.byte_len, c.imm));
                }
            })
            .map_err(|e| e.to_string())?;
            if todo.is_empty() {
                idle += 1;
                if idle == 1024 {
                    idle_since = Instant::now();
                } else if idle.is_multiple_of(1024)
                    && idle_since.elapsed() > Duration::from_secs(60)
                {
                    return Err("echo: no message for 60 s".into());
                }
            } else {
                idle = 0;
            }
            let mr = self.mr.as_ref().ok_or("no setup yet")?;
            for (i, len, imm) in todo.drain(..) {
                let qp = self.qps.get_mut(i).ok_or("completion of an unknown QP")?;
                qp.post_recv(&[]).map_err(|e| e.to_string())?;
                if imm == u32::MAX {
                    continue;
                }
                sent[i] = sent[i].wrapping_add(1);
                let sge = [mr.sge(0, len)];
                let mut w = WriteImm::new(to, &sge[..], imm);
                if sent[i].is_multiple_of(16) {
                    w = w.signaled();
                }
                qp.post(&w).map_err(|e| e.to_string())?;
                qp.ring_doorbell();
                count += 1;
            }
            if stop {
                return Ok(count.to_string());
            }
        }
    }
}

fn main() {
    let mut sel = std::env::var(mlx5::ENV).unwrap_or_else(|_| "soft".into());
    let mut manual = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--device" => match args.next() {
                Some(s) => sel = s,
                None => {
                    eprintln!("mlx5-peer: --device needs a selection");
                    std::process::exit(2);
                }
            },
            "--manual" => manual = true,
            "--link" => match args.next().as_deref() {
                Some(k @ ("shm" | "socket")) => {
                    // SAFETY: at the top of main, before this process
                    // starts any thread; read when the device opens.
                    unsafe { std::env::set_var(mlx5::SOFT_LINK_ENV, k) };
                }
                _ => {
                    eprintln!("mlx5-peer: --link needs `shm` or `socket`");
                    std::process::exit(2);
                }
            },
            other => {
                eprintln!(
                    "mlx5-peer: unknown argument {other:?} (usage: mlx5-peer [--device SELECTION] [--manual] [--link shm|socket])"
                );
                std::process::exit(2);
            }
        }
    }
    let sel = match Selection::parse(&sel) {
        Ok(Selection::Soft(_)) if manual => Selection::Soft(Progress::Manual),
        Ok(Selection::SoftTcp(_, at)) if manual => Selection::SoftTcp(Progress::Manual, at),
        // A manual device named by the selection is stepped as --manual.
        Ok(s @ (Selection::Soft(Progress::Manual) | Selection::SoftTcp(Progress::Manual, _))) => {
            manual = true;
            s
        }
        Ok(s) => s,
        Err(e) => {
            eprintln!("mlx5-peer: {e}");
            std::process::exit(2);
        }
    };
    let ctx = match Context::open(sel) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mlx5-peer: {e}");
            std::process::exit(1);
        }
    };
    let pd = match Pd::new(&ctx) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("mlx5-peer: {e}");
            std::process::exit(1);
        }
    };
    let manual = ctx.is_soft() && manual;
    let mut peer = Peer {
        ctx,
        manual,
        pd,
        cq: None,
        qps: Vec::new(),
        mr: None,
    };
    // Commands arrive on a thread so a manual device keeps progressing
    // while none is pending.
    let (tx, rx) = mpsc::channel::<String>();
    // A line that is not UTF-8 is still a line: answered `err`, not taken
    // for the end of input.
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().split(b'\n') {
            let Ok(line) = line else { break };
            if tx
                .send(String::from_utf8_lossy(&line).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    let mut out = std::io::stdout().lock();
    // Idle progress passes in a row, and since when (the clock is read
    // every 64 idle passes, not on every pass: a read per pass would be a
    // measurable part of the benches' figures).
    let mut idle: u64 = 0;
    let mut idle_since = Instant::now();
    loop {
        let line = if peer.manual {
            match rx.try_recv() {
                Ok(l) => l,
                Err(mpsc::TryRecvError::Empty) => {
                    // Spin while traffic flows; nap when it has stopped for
                    // a millisecond, so an idle peer leaves the CPU alone;
                    // after 50 ms, wait for a command in 5 ms naps (an idle
                    // peer's wake-ups would otherwise disturb the other
                    // processes' measurements: a bench keeps several).
                    if peer.ctx.progress().unwrap_or(0) > 0 {
                        idle = 0;
                        continue;
                    }
                    idle += 1;
                    if idle == 64 {
                        idle_since = Instant::now();
                    }
                    if idle <= 64 || !idle.is_multiple_of(64) {
                        continue;
                    }
                    let quiet = idle_since.elapsed();
                    if quiet > Duration::from_millis(50) {
                        match rx.recv_timeout(Duration::from_millis(5)) {
                            Ok(l) => {
                                idle = 0;
                                l
                            }
                            Err(mpsc::RecvTimeoutError::Timeout) => continue,
                            Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        }
                    } else {
                        if quiet > Duration::from_millis(1) {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        continue;
                    }
                }
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        } else {
            match rx.recv() {
                Ok(l) => l,
                Err(_) => return,
            }
        };
        if line.trim() == "quit" {
            return;
        }
        let reply = match peer.run(&line) {
            Ok(s) if s.is_empty() => "ok".to_string(),
            Ok(s) => format!("ok {s}"),
            Err(e) => format!("err {e}"),
        };
        if writeln!(out, "{reply}").and_then(|()| out.flush()).is_err() {
            return;
        }
    }
}
