//! copyrpc against raw WRITE_IMM on the same software device, same run.
//! `cargo bench -p copyrpc` (or `scripts/bench.sh`).
//!
//! * `pingpong/*`: one 32-byte call (copyrpc) or one 32-byte WRITE_IMM each
//!   way (raw) at a time: the round trip.
//! * `rate/*-QxD`: Q endpoints (QPs) with D calls (WRITE_IMMs) each in
//!   flight, every one answered: round trips per second.
//! * `rate/inproc-copyrpc-8x256-eager`: the same with [`Context::flush`]
//!   after every call (one WRITE_IMM per call: what adaptive doorbells
//!   save).
//! * `poll/idle-call-waiting`: one [`Context::poll`] that finds nothing, with a
//!   call in flight under the default `call_timeout` (its deadline watched
//!   on every idle poll; the peer is never stepped, so it never answers).
//!
//! `inproc`: both ends in this process on two software devices with manual
//! progress, stepped by the measuring thread (the device's and copyrpc's
//! own cost, no thread hand-off). `cross`: this process and a helper
//! process (this bench binary re-executed), their devices linked the
//! software device's way between processes of a host (shared-memory rings;
//! `MLX5_SOFT_LINK=socket` for the unix socket), each running one busy
//! thread that steps its own manual device.
//!
//! Knobs: `COPYRPC_BENCH_ROUNDS` (default 7), `COPYRPC_BENCH_SKIP_CRITERION`,
//! `COPYRPC_BENCH_SKIP_SUMMARY`.

use std::cell::RefCell;
use std::io::BufRead;
use std::rc::Rc;
use std::time::{Duration, Instant};

use benchutil::summary::{Kind as FigKind, Knobs};
use benchutil::{Helper, SharedFigure, as_helper};
use copyrpc::{Config, Context, Endpoint, EndpointInfo, Limits};
use mlx5::peer::{WriteImmEnd, hex, unhex};
use mlx5::{ConnInfo, Kind, Progress, QpCaps, Remote};

const PAYLOAD: usize = 32;
const STOP: u32 = u32::MAX;

// ---------------------------------------------------------------- raw ----

/// One end of the raw baseline: QPs with private receive queues, every
/// 16th WRITE_IMM signaled, PAYLOAD bytes each.
type RawEnd = WriteImmEnd;

fn raw_end(ctx: &mlx5::Context, qps: usize, depth: u32) -> RawEnd {
    let caps = QpCaps {
        max_send_wr: (depth * 2 + 32).max(64),
        max_recv_wr: depth,
        ..QpCaps::default()
    };
    WriteImmEnd::open(ctx, qps, caps, 1 << 16, PAYLOAD)
}

enum RawFar {
    Local(RawEnd),
    Helper(Helper, Remote),
}

struct Raw {
    near: RawEnd,
    far: RawFar,
    depth: u32,
}

/// `info HEX... ADDR RKEY`: a raw end's QPs and buffer.
fn raw_line(e: &RawEnd) -> String {
    let infos: Vec<String> = e.infos().iter().map(|i| hex(&i.encode())).collect();
    format!("{} {} {}", infos.join(" "), e.mr.addr(), e.mr.rkey())
}

fn parse_raw_line(l: &str) -> (Vec<ConnInfo>, Remote) {
    let w: Vec<&str> = l.split_whitespace().collect();
    let n = w.len() - 2;
    let infos = w[..n]
        .iter()
        .map(|h| ConnInfo::decode(&unhex(h).expect("hex")).expect("conn info"))
        .collect();
    let remote = Remote {
        addr: w[n].parse().expect("addr"),
        rkey: w[n + 1].parse().expect("rkey"),
    };
    (infos, remote)
}

impl Raw {
    fn inproc(qps: usize, depth: u32) -> Raw {
        let mut a = raw_end(&mlx5::Context::soft(Progress::Manual), qps, depth);
        let mut b = raw_end(&mlx5::Context::soft(Progress::Manual), qps, depth);
        let (ia, ib) = (a.infos(), b.infos());
        a.connect(&ib, depth);
        b.connect(&ia, depth);
        Raw {
            near: a,
            far: RawFar::Local(b),
            depth,
        }
    }

    fn cross(qps: usize, depth: u32) -> Raw {
        let mut a = raw_end(&mlx5::Context::soft(Progress::Manual), qps, depth);
        let mut h = Helper::start("raw-echo", &[qps.to_string(), depth.to_string()]);
        let (far, remote) = parse_raw_line(&h.line());
        h.send(&raw_line(&a));
        a.connect(&far, depth);
        assert_eq!(h.line().trim(), "connected");
        Raw {
            near: a,
            far: RawFar::Helper(h, remote),
            depth,
        }
    }

    fn rate(&mut self, iters: u64) -> Duration {
        let back = self.near.mr.remote(0);
        let to = match &mut self.far {
            RawFar::Local(b) => b.mr.remote(0),
            RawFar::Helper(h, r) => {
                h.send("go");
                *r
            }
        };
        let nq = self.near.qps.len();
        let t = Instant::now();
        let (mut issued, mut done) = (0u64, 0u64);
        'fill: for _ in 0..self.depth {
            for i in 0..nq {
                if issued == iters {
                    break 'fill;
                }
                self.near.ping(i, to, issued as u32);
                issued += 1;
            }
        }
        let (mut answers, mut replies) = (Vec::new(), Vec::new());
        let mut stall = benchutil::SpinLimit::new(Duration::from_secs(60));
        while done < iters {
            answers.clear();
            let _ = self.near.ctx.progress();
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
            for &i in &answers {
                done += 1;
                self.near.qps[i].post_recv(&[]).expect("recv");
                if issued < iters {
                    self.near.ping(i, to, issued as u32);
                    issued += 1;
                }
            }
            if let RawFar::Local(b) = &mut self.far {
                replies.clear();
                b.echo(back, STOP, &mut replies);
            }
            assert!(!stall.passed(), "raw rate stalled at {done}/{iters}");
        }
        let el = t.elapsed();
        if let RawFar::Helper(h, _) = &mut self.far {
            self.near.ping(0, to, STOP);
            let _ = self.near.ctx.progress();
            assert_eq!(h.line().trim(), "done");
        }
        el
    }
}

/// Helper role: a raw echo end. Prints its line, reads ours, then echoes
/// each `go` until the STOP immediate.
fn raw_echo_role(args: &[String]) {
    let (qps, depth): (usize, u32) = (args[0].parse().unwrap(), args[1].parse().unwrap());
    let mut e = raw_end(&mlx5::Context::soft(Progress::Manual), qps, depth);
    println!("ready");
    println!("{}", raw_line(&e));
    let mut lines = std::io::stdin().lock().lines();
    let (far, back) = parse_raw_line(&lines.next().unwrap().unwrap());
    e.connect(&far, depth);
    println!("connected");
    let mut seen = Vec::new();
    for line in lines {
        if line.unwrap().trim() != "go" {
            continue;
        }
        loop {
            seen.clear();
            e.echo(back, STOP, &mut seen);
            if seen.iter().any(|&(_, imm)| imm == STOP) {
                break;
            }
        }
        // The ACKs of the last pass (the stop's) leave with the next one:
        // step until idle before blocking on stdin, or the near side's
        // link would time out waiting for them.
        let _ = e.ctx.progress_until_idle();
        println!("done");
    }
}

// ------------------------------------------------------------ copyrpc ----

fn config(depth: u32) -> Config {
    Config {
        limits: Limits {
            ring: 1 << 20,
            max_inflight: depth.max(1),
            max_call: 64,
            max_reply: 64,
            max_batch: 16 << 10,
        },
        srq_depth: 4096,
        cq_depth: 1 << 15,
        sq_depth: 256,
        inline_max: 128,
        call_timeout: None,
        ..Config::default()
    }
}

enum RpcFar {
    Local(Box<Context<()>>),
    Helper(Helper),
}

struct Rpc {
    near: Context<u64>,
    eps: Vec<Endpoint>,
    far: RpcFar,
    depth: u32,
    eager: bool,
}

fn serve(ctx: &mut Context<()>, stop: &mut bool) {
    ctx.poll(|_, _| {}).expect("poll");
    while let Some(r) = ctx.recv() {
        *stop |= r.data() == b"stop";
        let bytes: [u8; PAYLOAD] = std::array::from_fn(|i| r.data().get(i).copied().unwrap_or(0));
        ctx.reply(r, &bytes).expect("reply");
    }
}

impl Rpc {
    fn inproc(qps: usize, depth: u32, eager: bool) -> Rpc {
        let cfg = config(depth);
        let mut a = Context::new(&mlx5::Context::soft(Progress::Manual), cfg).expect("ctx");
        let mut b = Context::new(&mlx5::Context::soft(Progress::Manual), cfg).expect("ctx");
        let mut eps = Vec::new();
        for _ in 0..qps {
            let (ea, eb) = (a.endpoint().unwrap(), b.endpoint().unwrap());
            let (ia, ib) = (a.local_info(ea).unwrap(), b.local_info(eb).unwrap());
            a.connect(ea, &ib).unwrap();
            b.connect(eb, &ia).unwrap();
            eps.push(ea);
        }
        Rpc {
            near: a,
            eps,
            far: RpcFar::Local(Box::new(b)),
            depth,
            eager,
        }
    }

    fn cross(qps: usize, depth: u32) -> Rpc {
        let mut a = Context::new(&mlx5::Context::soft(Progress::Manual), config(depth)).unwrap();
        let mut h = Helper::start("copyrpc-echo", &[qps.to_string(), depth.to_string()]);
        let line = h.line();
        let mut eps = Vec::new();
        let mut mine = Vec::new();
        for hx in line.split_whitespace() {
            let ep = a.endpoint().unwrap();
            a.connect(ep, &EndpointInfo::from_hex(hx).unwrap()).unwrap();
            mine.push(a.local_info(ep).unwrap().to_hex());
            eps.push(ep);
        }
        h.send(&mine.join(" "));
        assert_eq!(h.line().trim(), "connected");
        Rpc {
            near: a,
            eps,
            far: RpcFar::Helper(h),
            depth,
            eager: false,
        }
    }

    fn rate(&mut self, iters: u64) -> Duration {
        if let RpcFar::Helper(h) = &mut self.far {
            h.send("go");
        }
        let msg = [7u8; PAYLOAD];
        let t = Instant::now();
        let (mut issued, mut done) = (0u64, 0u64);
        let mut stop = false;
        let mut stall = benchutil::SpinLimit::new(Duration::from_secs(60));
        while done < iters {
            for &ep in &self.eps {
                while issued < iters && self.near.in_flight(ep) < self.depth {
                    self.near.call(ep, &msg, issued).expect("call");
                    issued += 1;
                    if self.eager {
                        self.near.flush();
                    }
                }
            }
            self.near
                .poll(|_, r| {
                    assert_eq!(r.expect("reply").len(), PAYLOAD);
                    done += 1;
                })
                .expect("poll");
            if let RpcFar::Local(b) = &mut self.far {
                serve(b, &mut stop);
            }
            assert!(!stall.passed(), "copyrpc rate stalled at {done}/{iters}");
        }
        let el = t.elapsed();
        if let RpcFar::Helper(h) = &mut self.far {
            self.near
                .call(self.eps[0], b"stop", u64::MAX)
                .expect("stop");
            let mut back = false;
            while !back {
                self.near.poll(|_, _| back = true).expect("poll");
            }
            // The ACK of the stop's reply leaves with the next step.
            let _ = self.near.device().progress_until_idle();
            assert_eq!(h.line().trim(), "done");
        }
        el
    }
}

/// Helper role: a copyrpc echo end for each `go`, until a `stop` call.
fn copyrpc_echo_role(args: &[String]) {
    let (qps, depth): (usize, u32) = (args[0].parse().unwrap(), args[1].parse().unwrap());
    let mut ctx: Context<()> =
        Context::new(&mlx5::Context::soft(Progress::Manual), config(depth)).unwrap();
    let eps: Vec<Endpoint> = (0..qps).map(|_| ctx.endpoint().unwrap()).collect();
    println!("ready");
    let infos: Vec<String> = eps
        .iter()
        .map(|&e| ctx.local_info(e).unwrap().to_hex())
        .collect();
    println!("{}", infos.join(" "));
    let mut lines = std::io::stdin().lock().lines();
    let line = lines.next().unwrap().unwrap();
    for (&ep, hx) in eps.iter().zip(line.split_whitespace()) {
        ctx.connect(ep, &EndpointInfo::from_hex(hx).unwrap())
            .unwrap();
    }
    println!("connected");
    for line in lines {
        if line.unwrap().trim() != "go" {
            continue;
        }
        let mut stop = false;
        while !stop {
            serve(&mut ctx, &mut stop);
        }
        // Let the last replies and credit leave before blocking on stdin.
        for _ in 0..1000 {
            serve(&mut ctx, &mut stop);
        }
        println!("done");
    }
}

// ---------------------------------------------------------- idle poll ----

/// A context with one call in flight that is never answered, and the
/// peer context that keeps the endpoint connected.
struct IdlePoll {
    ctx: Context<u64>,
    _peer: Context<()>,
}

impl IdlePoll {
    fn new() -> IdlePoll {
        let cfg = Config::default();
        let mut a = Context::new(&mlx5::Context::soft(Progress::Manual), cfg).expect("ctx");
        let mut b = Context::new(&mlx5::Context::soft(Progress::Manual), cfg).expect("ctx");
        let (ea, eb) = (a.endpoint().unwrap(), b.endpoint().unwrap());
        let (ia, ib) = (a.local_info(ea).unwrap(), b.local_info(eb).unwrap());
        a.connect(ea, &ib).unwrap();
        b.connect(eb, &ia).unwrap();
        a.call(ea, &[7u8; PAYLOAD], 0).expect("call");
        // The request leaves in the first idle polls.
        for _ in 0..16 {
            a.poll(|_, _| {}).expect("poll");
        }
        assert_eq!(a.in_flight(ea), 1);
        IdlePoll { ctx: a, _peer: b }
    }

    fn rate(&mut self, iters: u64) -> Duration {
        let t = Instant::now();
        for _ in 0..iters {
            let n = self.ctx.poll(|_, _| {}).expect("poll");
            std::hint::black_box(n);
        }
        t.elapsed()
    }
}

// -------------------------------------------------------------- main ----

type RunFn = Rc<RefCell<dyn FnMut(u64) -> Duration>>;

fn fig(id: String, kind: FigKind, iters: u64, run: RunFn) -> SharedFigure {
    SharedFigure {
        id,
        kind,
        iters,
        run,
    }
}

fn figures() -> Vec<SharedFigure> {
    let mut v = Vec::new();
    for place in ["inproc", "cross"] {
        for (qps, depth, kind, iters) in [
            (1usize, 1u32, FigKind::Latency, 10_000u64),
            (1, 32, FigKind::Throughput, 100_000),
            (8, 256, FigKind::Throughput, 200_000),
        ] {
            let shape = if depth == 1 {
                ("pingpong", String::new())
            } else {
                ("rate", format!("-{qps}x{depth}"))
            };
            let raw = Rc::new(RefCell::new(if place == "inproc" {
                Raw::inproc(qps, depth)
            } else {
                Raw::cross(qps, depth)
            }));
            let rpc = Rc::new(RefCell::new(if place == "inproc" {
                Rpc::inproc(qps, depth, false)
            } else {
                Rpc::cross(qps, depth)
            }));
            v.push(fig(
                format!("{}/{place}-raw{}", shape.0, shape.1),
                kind,
                iters,
                Rc::new(RefCell::new(move |n| raw.borrow_mut().rate(n))),
            ));
            v.push(fig(
                format!("{}/{place}-copyrpc{}", shape.0, shape.1),
                kind,
                iters,
                Rc::new(RefCell::new(move |n| rpc.borrow_mut().rate(n))),
            ));
        }
    }
    let eager = Rc::new(RefCell::new(Rpc::inproc(8, 256, true)));
    v.push(fig(
        "rate/inproc-copyrpc-8x256-eager".into(),
        FigKind::Throughput,
        200_000,
        Rc::new(RefCell::new(move |n| eager.borrow_mut().rate(n))),
    ));
    let idle = Rc::new(RefCell::new(IdlePoll::new()));
    v.push(fig(
        "poll/idle-call-waiting".into(),
        FigKind::Latency,
        2_000_000,
        Rc::new(RefCell::new(move |n| idle.borrow_mut().rate(n))),
    ));
    v
}

fn main() {
    if as_helper(|role, args| match role {
        "raw-echo" => raw_echo_role(args),
        "copyrpc-echo" => copyrpc_echo_role(args),
        other => panic!("unknown helper role {other}"),
    }) {
        return;
    }
    let knobs = Knobs::from_env("COPYRPC_BENCH", 7);
    let figs = figures();
    let Some(mut m) = benchutil::criterion_then_summary(&knobs, &figs) else {
        return;
    };
    // Each copyrpc figure against raw WRITE_IMM of the same shape, declared
    // once for the JSON beside the table.
    let pairs: Vec<(String, String)> = m
        .figures
        .iter()
        .filter(|f| f.id.contains("-copyrpc"))
        .map(|f| {
            let raw =
                f.id.replace("-copyrpc", "-raw")
                    .replace("-raw-8x256-eager", "-raw-8x256");
            (f.id.clone(), raw)
        })
        .collect();
    for (id, raw) in pairs {
        m.ratio(&id, &raw, "baseline");
    }
    let mut out = m.preamble("copyrpc");
    out += "| figure | median | per operation | copyrpc ÷ raw | note |\n|---|---|---|---|---|\n";
    let raw_of = |id: &str| -> Option<f64> {
        let raw = id
            .replace("-copyrpc", "-raw")
            .replace("-raw-8x256-eager", "-raw-8x256");
        (raw != id).then(|| m.get(&raw)).flatten().map(|f| f.ns)
    };
    for f in &m.figures {
        let value = if f.id.starts_with("poll/") {
            format!("{:.0} ns", f.ns)
        } else if f.kind == FigKind::Latency {
            format!("{:.2} µs", f.ns / 1e3)
        } else {
            format!("{:.2} M calls/s", f.per_second() / 1e6)
        };
        let ratio = match raw_of(&f.id) {
            // For a rate, the ratio of rates; for a latency, of times.
            Some(raw) if f.kind == FigKind::Throughput => format!("{:.2}× the rate", raw / f.ns),
            Some(raw) => format!("{:.2}× the time", f.ns / raw),
            None => String::new(),
        };
        let note = if f.id.starts_with("poll/") {
            "one poll that finds nothing, a call in flight (default call_timeout)"
        } else if f.id.contains("raw") {
            "32-byte WRITE_IMM each way"
        } else if f.id.ends_with("eager") {
            "32-byte calls, flush after every call"
        } else {
            "32-byte calls and replies"
        };
        out += &format!(
            "| {} | {value} | {:.0} ns | {ratio} | {note} |\n",
            f.id, f.ns
        );
    }
    let t = |a: &str, b: &str| m.ns(a) / m.ns(b);
    let pp_in = t("pingpong/inproc-copyrpc", "pingpong/inproc-raw");
    let pp_x = t("pingpong/cross-copyrpc", "pingpong/cross-raw");
    let r_in = t("rate/inproc-raw-8x256", "rate/inproc-copyrpc-8x256");
    let r_x = t("rate/cross-raw-8x256", "rate/cross-copyrpc-8x256");
    out += &format!(
        "\ntargets: ping-pong within 1.15× raw WRITE_IMM: inproc {pp_in:.2}× ({}), cross {pp_x:.2}× ({}); \
         8x256 rate ≥ 1.5× raw: inproc {r_in:.2}× ({}), cross {r_x:.2}× ({})\n",
        benchutil::verdict(pp_in <= 1.15),
        benchutil::verdict(pp_x <= 1.15),
        benchutil::verdict(r_in >= 1.5),
        benchutil::verdict(r_x >= 1.5),
    );
    out += "\ninproc: two devices in this process, manual progress, one thread stepping both ends. \
            cross: this process and a helper process, their devices linked through shared \
            memory (the software device's default between processes of a host), each \
            progressing its device from its one busy thread.\n";
    out += &format!(
        "\ncanary (floor/threads, {}k trips) per round, ns: {:?}\n",
        benchutil::CANARY_TRIPS / 1000,
        m.canaries_ns()
    );
    m.write_report("copyrpc", &out);
}
