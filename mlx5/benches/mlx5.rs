//! Raw RDMA on the software device: the baselines copyrpc is measured
//! against. `cargo bench -p mlx5` (or `scripts/bench.sh`).
//!
//! * `pingpong/*-1x1`: one 8-byte WRITE_IMM each way, one QP, one in
//!   flight: the round-trip latency.
//! * `rate/*-QxD`: Q QPs with D WRITE_IMMs each in flight, every one echoed
//!   back: round trips per second.
//! * `bw/*-read`, `bw/*-write`: 1 MiB RDMA READs / WRITEs, four in flight.
//! * `progress/*-idle`: one `Context::progress` pass of this side's
//!   device with nothing to do (one QP connected, nothing in flight): what
//!   polling costs an application between messages.
//! * `bw/floor-cross-core-copy`: no device, the bound of the cross-process
//!   bandwidth figures: one thread writes 1 MiB chunks into an 8 MiB ring
//!   and a thread on the other core copies each out, as a payload crosses
//!   a shared-memory link (written into the ring by one process, copied to
//!   its destination by the other).
//!
//! `inproc` figures put both ends in this process: two devices with manual
//! progress, both stepped by the measuring thread, so the figure is the
//! software device's own cost with no thread hand-off (the `pingpong`
//! example measures the background-thread mode). `cross-shm` and
//! `cross-socket` figures talk to an `mlx5-peer --manual` process of this
//! host, over the shared-memory link (the default between processes of a
//! host) and over the unix socket (`--link socket`) respectively; this
//! side's device is manual too and progressed by the measuring thread, so
//! each process runs one busy thread (this machine may have two cores). The peer
//! answers WRITE_IMMs itself (`echo`). `MLX5_DEVICE` is honoured where it
//! names hardware (the cross figures then need the peer on the same NIC).
//!
//! Environment knobs: `MLX5_BENCH_ROUNDS` (summary rounds, default 7),
//! `MLX5_BENCH_SKIP_CRITERION=1`, `MLX5_BENCH_SKIP_SUMMARY=1`.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use benchutil::SharedFigure;
use benchutil::summary::{Kind as FigKind, Knobs};
use mlx5::peer::{PeerProcess, WriteImmEnd};
use mlx5::wqe::{Read, Write};
use mlx5::{ConnectOpts, Context, Kind, Progress, QpCaps, Remote, Selection};

const MIB: usize = 1 << 20;
const BW_DEPTH: usize = 4;

/// One end: device, CQ, QPs, a 2 MiB buffer; WRITE_IMMs of 8 bytes.
type End = WriteImmEnd;

fn caps(depth: u32) -> QpCaps {
    QpCaps {
        max_send_wr: (depth * 2 + 32).max(64),
        max_recv_wr: depth.max(BW_DEPTH as u32),
        ..QpCaps::default()
    }
}

fn open_end(ctx: &Context, qps: usize, depth: u32) -> End {
    WriteImmEnd::open(ctx, qps, caps(depth), 2 * MIB, 8)
}

/// The far end: the other end in this process, or an `mlx5-peer`.
enum Far {
    Local(End),
    Peer(PeerProcess),
}

/// A connected setup of `qps` QPs that keep `depth` messages in flight.
struct Setup {
    near: End,
    far: Far,
    depth: u32,
}

impl Setup {
    fn inproc(qps: usize, depth: u32) -> Setup {
        let open = || match Selection::from_env() {
            Ok(s @ Selection::Hw(_)) => Context::open(s).expect("MLX5_DEVICE"),
            _ => Context::soft(Progress::Manual),
        };
        let mut a = open_end(&open(), qps, depth);
        let mut b = open_end(&open(), qps, depth);
        let (ia, ib) = (a.infos(), b.infos());
        let recvs = depth.max(BW_DEPTH as u32);
        a.connect(&ib, recvs);
        b.connect(&ia, recvs);
        Setup {
            near: a,
            far: Far::Local(b),
            depth,
        }
    }

    fn cross_shm(qps: usize, depth: u32) -> Setup {
        Setup::cross(qps, depth, "shm")
    }

    fn cross_socket(qps: usize, depth: u32) -> Setup {
        Setup::cross(qps, depth, "socket")
    }

    fn cross(qps: usize, depth: u32, link: &str) -> Setup {
        let ctx = Context::soft(Progress::Manual);
        let mut a = open_end(&ctx, qps, depth);
        let c = caps(depth);
        let mut p = PeerProcess::spawn(
            env!("CARGO_BIN_EXE_mlx5-peer"),
            &["--device", "soft", "--manual", "--link", link],
            qps,
            2 * MIB,
            c.max_send_wr,
            c.max_recv_wr,
        );
        let far = p.infos.clone();
        let o = ConnectOpts::default();
        let mine = a.infos();
        for i in 0..qps {
            p.connect(i, &mine[i]);
            a.qps[i].connect(&far[i], &o).expect("connect");
            p.cmd(&format!("recv {i} {} 0 0", c.max_recv_wr));
            for _ in 0..c.max_recv_wr {
                a.qps[i].post_recv(&[]).expect("recv");
            }
        }
        Setup {
            near: a,
            far: Far::Peer(p),
            depth,
        }
    }

    fn far_remote(&self) -> Remote {
        match &self.far {
            Far::Local(b) => b.mr.remote(0),
            Far::Peer(p) => p.mr,
        }
    }

    /// `iters` round trips with `depth` in flight per QP.
    fn rate(&mut self, iters: u64) -> Duration {
        let to = self.far_remote();
        let back = self.near.mr.remote(0);
        if let Far::Peer(p) = &mut self.far {
            p.send(&format!("echo {} {}", back.addr, back.rkey));
        }
        let nq = self.near.qps.len();
        let t = Instant::now();
        let mut issued = 0u64;
        let mut done = 0u64;
        'fill: for _ in 0..self.depth {
            for i in 0..nq {
                if issued == iters {
                    break 'fill;
                }
                self.near.ping(i, to, issued as u32);
                issued += 1;
            }
        }
        let mut replies: Vec<(usize, u32)> = Vec::new();
        let mut answers: Vec<usize> = Vec::new();
        let mut stall = benchutil::SpinLimit::new(Duration::from_secs(60));
        while done < iters {
            self.near.step();
            let q0 = self.near.qpn0;
            self.near
                .cq
                .poll(256, |c| {
                    if c.kind == Kind::RecvWriteImm {
                        answers.push((c.qpn - q0) as usize);
                    } else {
                        assert!(c.status().is_ok(), "{c:?}");
                    }
                })
                .expect("poll");
            for i in answers.drain(..) {
                done += 1;
                self.near.qps[i].post_recv(&[]).expect("recv");
                if issued < iters {
                    self.near.ping(i, to, issued as u32);
                    issued += 1;
                }
            }
            if let Far::Local(b) = &mut self.far {
                b.step();
                let q0 = b.qpn0;
                b.cq.poll(256, |c| {
                    if c.kind == Kind::RecvWriteImm {
                        replies.push(((c.qpn - q0) as usize, c.imm));
                    }
                })
                .expect("poll");
                for (i, imm) in replies.drain(..) {
                    b.qps[i].post_recv(&[]).expect("recv");
                    b.ping(i, back, imm);
                }
            }
            assert!(!stall.passed(), "rate: stalled at {done}/{iters}");
        }
        let el = t.elapsed();
        if let Far::Peer(p) = &mut self.far {
            // Stop the echo (this message is not answered).
            self.near.ping(0, to, u32::MAX);
            // One step sends it; the peer answers once it saw it.
            self.near.step();
            let l = p.line();
            assert!(l.starts_with("ok"), "echo: {l}");
        }
        el
    }

    /// `iters` progress passes of this side's device with nothing to do.
    fn idle(&mut self, iters: u64) -> Duration {
        let t = Instant::now();
        for _ in 0..iters {
            self.near.step();
        }
        t.elapsed()
    }

    /// `iters` 1 MiB READs or WRITEs, [`BW_DEPTH`] in flight.
    fn bw(&mut self, iters: u64, read: bool) -> Duration {
        let to = self.far_remote();
        let sge = [self.near.mr.sge(0, MIB as u32)];
        if let Far::Peer(p) = &mut self.far {
            // A command wakes a peer that idled (it naps then), before the
            // clock starts.
            p.cmd("state 0");
        }
        let t = Instant::now();
        let (mut issued, mut done) = (0u64, 0u64);
        let deadline = Instant::now() + Duration::from_secs(60);
        while done < iters {
            while issued < iters && issued - done < BW_DEPTH as u64 {
                let qp = &mut self.near.qps[0];
                if read {
                    qp.post(&Read::new(to, &sge).signaled())
                } else {
                    qp.post(&Write::new(to, &sge).signaled())
                }
                .expect("post");
                qp.ring_doorbell();
                issued += 1;
            }
            self.near.step();
            if let Far::Local(b) = &self.far {
                b.step();
            }
            self.near
                .cq
                .poll(16, |c| {
                    assert!(c.status().is_ok(), "{c:?}");
                    done += 1;
                })
                .expect("poll");
            assert!(Instant::now() < deadline, "bw: stalled");
        }
        t.elapsed()
    }
}

/// `iters` 1 MiB chunks through an 8-chunk ring between the two cores
/// (see the module doc).
fn cross_core_copy(iters: u64) -> Duration {
    use std::sync::atomic::{AtomicU64, Ordering};
    const SLOTS: u64 = 8;
    let ring: Vec<std::cell::UnsafeCell<u8>> = (0..SLOTS as usize * MIB)
        .map(|_| std::cell::UnsafeCell::new(0))
        .collect();
    struct Ring<'a>(&'a [std::cell::UnsafeCell<u8>]);
    // SAFETY: the producer writes a slot only after the consumer released
    // it, the consumer reads it only after the producer published it (the
    // counters below, Acquire/Release).
    unsafe impl Sync for Ring<'_> {}
    let ring = Ring(&ring);
    let (written, read) = (AtomicU64::new(0), AtomicU64::new(0));
    let (a, b) = benchutil::core_pair();
    let start = std::sync::Barrier::new(2);
    let t = std::thread::scope(|sc| {
        let (ring, written, read, start) = (&ring, &written, &read, &start);
        sc.spawn(move || {
            benchutil::pin(b);
            let mut dst = vec![0u8; MIB];
            start.wait();
            for i in 0..iters {
                // Acquire: the chunk's bytes are visible.
                while written.load(Ordering::Acquire) <= i {
                    std::hint::spin_loop();
                }
                let at = (i % SLOTS) as usize * MIB;
                // SAFETY: slot published, not written again before the
                // Release below.
                unsafe { std::ptr::copy_nonoverlapping(ring.0[at].get(), dst.as_mut_ptr(), MIB) };
                // Release: the slot was read before it is reused.
                read.store(i + 1, Ordering::Release);
            }
            std::hint::black_box(&dst);
        });
        benchutil::pin(a);
        let src: Vec<u8> = (0..MIB).map(|i| i as u8).collect();
        start.wait();
        let t = Instant::now();
        for i in 0..iters {
            // Acquire: the consumer is done with the slot.
            while i >= SLOTS && read.load(Ordering::Acquire) <= i - SLOTS {
                std::hint::spin_loop();
            }
            let at = (i % SLOTS) as usize * MIB;
            // SAFETY: the slot is free (checked above) and inside the ring.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), ring.0[at].get(), MIB) };
            // Release: the bytes are visible before the count.
            written.store(i + 1, Ordering::Release);
        }
        while read.load(Ordering::Acquire) < iters {
            std::hint::spin_loop();
        }
        t.elapsed()
    });
    benchutil::unpin(&benchutil::allowed_cpus());
    t
}

type Shared<T> = Rc<RefCell<T>>;

struct Fig {
    fig: SharedFigure,
    /// This side's device (for its wire counters).
    ctx: Context,
}

fn figures() -> Vec<Fig> {
    let mut v = Vec::new();
    for (place, mk) in [
        ("inproc", Setup::inproc as fn(usize, u32) -> Setup),
        ("cross-shm", Setup::cross_shm),
        ("cross-socket", Setup::cross_socket),
    ] {
        for (qps, depth, kind, iters) in [
            (1usize, 1u32, FigKind::Latency, 20_000u64),
            (1, 32, FigKind::Throughput, 100_000),
            (8, 256, FigKind::Throughput, 200_000),
        ] {
            let s: Shared<Setup> = Rc::new(RefCell::new(mk(qps, depth)));
            let ctx = s.borrow().near.ctx.clone();
            let name = if qps == 1 && depth == 1 {
                format!("pingpong/{place}-1x1")
            } else {
                format!("rate/{place}-{qps}x{depth}")
            };
            v.push(Fig {
                fig: SharedFigure {
                    id: name,
                    kind,
                    iters,
                    run: Rc::new(RefCell::new(move |n| s.borrow_mut().rate(n))),
                },
                ctx,
            });
        }
        {
            let s: Shared<Setup> = Rc::new(RefCell::new(mk(1, 1)));
            let ctx = s.borrow().near.ctx.clone();
            v.push(Fig {
                fig: SharedFigure {
                    id: format!("progress/{place}-idle"),
                    kind: FigKind::Latency,
                    iters: 200_000,
                    run: Rc::new(RefCell::new(move |n| s.borrow_mut().idle(n))),
                },
                ctx,
            });
        }
        let s: Shared<Setup> = Rc::new(RefCell::new(mk(1, 4)));
        if place == "inproc" {
            v.push(Fig {
                fig: SharedFigure {
                    id: "bw/floor-cross-core-copy".into(),
                    kind: FigKind::Throughput,
                    iters: 200,
                    run: Rc::new(RefCell::new(cross_core_copy)),
                },
                ctx: s.borrow().near.ctx.clone(),
            });
        }
        for read in [true, false] {
            let s = s.clone();
            let ctx = s.borrow().near.ctx.clone();
            v.push(Fig {
                fig: SharedFigure {
                    id: format!("bw/{place}-{}", if read { "read" } else { "write" }),
                    kind: FigKind::Throughput,
                    iters: 200,
                    run: Rc::new(RefCell::new(move |n| s.borrow_mut().bw(n, read))),
                },
                ctx,
            });
        }
    }
    v
}

fn main() {
    let knobs = Knobs::from_env("MLX5_BENCH", 7);
    let figs = figures();
    let Some(mut m) = benchutil::criterion_then_summary(&knobs, figs.iter().map(|f| &f.fig)) else {
        return;
    };
    // What the figures ran on, for the report (MLX5_DEVICE is honoured in
    // process only where it names a NIC).
    m.param("mlx5_inproc_device", figs[0].ctx.name());
    m.param("mlx5_cross_device", "software device (always)");
    // Each cross-process figure against its in-process twin (the device's
    // own cost), the socket link against the shared-memory one, and the
    // bandwidths against the cross-core copy floor.
    let mut vs_inproc = std::collections::HashMap::new();
    let ids: Vec<String> = m.figures.iter().map(|f| f.id.clone()).collect();
    for id in ids.iter().filter(|id| id.contains("/cross-")) {
        let twin = id
            .replace("cross-shm-", "inproc-")
            .replace("cross-socket-", "inproc-");
        vs_inproc.insert(id.clone(), m.ratio(id, &twin, "baseline"));
        if id.contains("/cross-socket-") {
            m.ratio(id, &id.replace("cross-socket-", "cross-shm-"), "peer");
        }
        if id.starts_with("bw/") {
            m.ratio(id, "bw/floor-cross-core-copy", "floor");
        }
    }
    let mut out = m.preamble("mlx5");
    out +=
        "| figure | median | per operation | time ÷ in-process | note |\n|---|---|---|---|---|\n";
    for f in &m.figures {
        let (value, note) = if f.id == "bw/floor-cross-core-copy" {
            (
                format!("{:.2} GB/s", f.per_second() * MIB as f64 / 1e9),
                "no device: 1 MiB chunks written on one core, copied out on the other",
            )
        } else if f.id.starts_with("bw/") {
            (
                format!("{:.2} GB/s", f.per_second() * MIB as f64 / 1e9),
                "1 MiB per operation, 4 in flight",
            )
        } else if f.id.starts_with("progress/") {
            (
                format!("{:.0} ns", f.ns),
                "one progress pass with nothing to do",
            )
        } else if f.kind == FigKind::Latency {
            (
                format!("{:.2} µs", f.ns / 1e3),
                "round trip, 8-byte WRITE_IMM each way",
            )
        } else {
            (
                format!("{:.2} M round trips/s", f.per_second() / 1e6),
                "8-byte WRITE_IMM each way",
            )
        };
        let vs = vs_inproc
            .get(&f.id)
            .map_or(String::new(), |r| format!("{r:.2}×"));
        out += &format!("| {} | {value} | {:.0} ns | {vs} | {note} |\n", f.id, f.ns);
    }
    // Issue 15's targets for the shared-memory link, from this run.
    let (pp, rate, rd, wr) = (
        vs_inproc["pingpong/cross-shm-1x1"],
        vs_inproc["rate/cross-shm-8x256"],
        vs_inproc["bw/cross-shm-read"],
        vs_inproc["bw/cross-shm-write"],
    );
    out += &format!(
        "\ntargets (shared-memory link against in-process, this run): ping-pong within 1.5× \
         ({pp:.2}×: {}); 8 × 256 rate at least in-process ({:.2}× its rate: {}); 1 MiB \
         bandwidth at least 70 % of in-process (READ {:.0} %, WRITE {:.0} %: {})\n",
        benchutil::verdict(pp <= 1.5),
        1.0 / rate,
        benchutil::verdict(rate <= 1.0),
        100.0 / rd,
        100.0 / wr,
        benchutil::verdict(rd <= 1.0 / 0.7 && wr <= 1.0 / 0.7),
    );
    // An estimate of the best ping-pong this machine allows: the work of
    // the in-process round trip (both devices' passes, done by one thread
    // there) plus one cache-line round trip between the cores (the median
    // canary), since each side's message must reach the other core. Only
    // an estimate: the in-process figure also holds passes that find
    // nothing, which a peer polling on its own core does not wait for.
    let canaries: Vec<f64> = m.canaries_ns().iter().map(|&c| c as f64).collect();
    let inproc_pp = m.ns("pingpong/inproc-1x1");
    let estimate = inproc_pp + benchutil::median(&canaries);
    out += &format!(
        "estimated best cross-process ping-pong on this machine: in-process round trip \
         + median canary (a cache-line round trip between the cores) = {estimate:.0} ns, \
         {:.2}× in-process\n",
        estimate / inproc_pp
    );
    out += "\ninproc: two devices in this process, manual progress, one thread stepping both. \
            cross-shm / cross-socket: this process and an `mlx5-peer --manual` process of this \
            host, linked over shared-memory rings / over the unix socket, each progressing its \
            device from its one measuring thread.\n";
    out += "\nwire (this side of the cross figures, criterion and summary runs together):\n\n\
            | setup | frames sent per write call | frames received per read call | bytes per write call | frames received in place |\n\
            |---|---|---|---|---|\n";
    for f in figs.iter().filter(|f| f.fig.id.contains("/cross-")) {
        if f.fig.id.ends_with("-write") || f.fig.id.starts_with("progress/") {
            // bw/*-write shares its setup (and counters) with bw/*-read; an
            // idle pass sends nothing.
            continue;
        }
        let w = f.ctx.wire_stats().expect("software device");
        let kinds: Vec<String> = f
            .ctx
            .soft_links()
            .expect("software device")
            .iter()
            .map(|l| l.kind.to_string())
            .collect();
        out += &format!(
            "| {} ({}) | {:.2} | {:.2} | {:.0} | {} |\n",
            f.fig.id.replace("-read", "-read+write"),
            kinds.join(", "),
            w.frames_sent as f64 / w.writes.max(1) as f64,
            w.frames_received as f64 / w.reads.max(1) as f64,
            w.bytes_sent as f64 / w.writes.max(1) as f64,
            w.frames_in_place,
        );
    }
    out += &format!(
        "\ncanary (floor/threads, {}k trips) per round, ns: {:?}\n",
        benchutil::CANARY_TRIPS / 1000,
        m.canaries_ns()
    );
    m.write_report("mlx5", &out);
}
