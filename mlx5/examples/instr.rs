//! The data path's cost in instructions, for callgrind: posts N signaled
//! WQEs and rings one doorbell (`post_batch`), lets the software device
//! execute them (`Context::progress_until_idle`, not measured), then polls
//! the N send completions (`poll_batch`) and, for `writeimm`, the N receive
//! completions at the target (`poll_recv_batch`).
//!
//! ```text
//! cargo run --release -p mlx5 --example instr -- [N] [write|writeimm]
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*post_batch*' \
//!     target/release/examples/instr 5000 write
//! ```
//!
//! * `write` (default): `Write::inline(remote, &[u8; 8]).signaled()`.
//! * `writeimm`: `WriteImm::new(remote, &[sge], imm).signaled()`, 8 bytes
//!   gathered from a registered region; the receives it consumes are posted
//!   beforehand, outside the measured functions.
//!
//! N defaults to 1000. Batches larger than a QP allows (16384 WQEs) run in
//! chunks; callgrind sums the calls. `scripts/callgrind.sh` runs this at two
//! batch sizes and takes the difference, so fixed costs cancel.
//!
//! Both devices are software devices with manual progress, in this process,
//! so nothing runs behind the measured functions' back.

use std::hint::black_box;
use std::process::ExitCode;

use mlx5::wqe::{Write, WriteImm};
use mlx5::{
    Access, Completion, ConnectOpts, Context, Cq, Error, Kind, Mr, Pd, Progress, Qp, QpCaps,
    Remote, Sge,
};

/// The most WQEs one batch holds: a QP's `max_send_wr` limit.
const MAX_CHUNK: usize = 1 << 14;
/// The largest N accepted (keeps a mistyped N from running for hours).
const MAX_N: usize = 1 << 26;
/// The payload every WQE carries.
const PAYLOAD: [u8; 8] = *b"instr-8B";

const USAGE: &str = "usage: instr [N] [write|writeimm]
  N          WQEs per run, 1..=67108864 (default 1000)
  write      RDMA WRITE, 8 bytes inline, signaled (default)
  writeimm   RDMA WRITE_IMM, 8 bytes from an SGE, signaled; also polls the
             receive completions at the target";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Write,
    WriteImm,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Write => "write",
            Op::WriteImm => "writeimm",
        }
    }
}

/// What the command line asks for (`Ok(None)`: print the usage, exit 0).
fn parse_args(args: &[String]) -> Result<Option<(usize, Op)>, String> {
    let (mut n, mut op) = (None, None);
    for a in args {
        match a.as_str() {
            "-h" | "--help" => return Ok(None),
            "write" | "writeimm" if op.is_some() => return Err(format!("second op kind {a:?}")),
            "write" => op = Some(Op::Write),
            "writeimm" => op = Some(Op::WriteImm),
            s => {
                let v: usize = s
                    .parse()
                    .map_err(|_| format!("{s:?} is neither a batch size nor an op kind"))?;
                if n.is_some() {
                    return Err(format!("second batch size {s:?}"));
                }
                if v == 0 || v > MAX_N {
                    return Err(format!("batch size {v} is not in 1..={MAX_N}"));
                }
                n = Some(v);
            }
        }
    }
    Ok(Some((n.unwrap_or(1000), op.unwrap_or(Op::Write))))
}

/// One end: its own software device, PD, CQ (sends and receives), QP and
/// memory region. Fields drop in order: QP before CQ, PD and device.
struct Side {
    qp: Qp,
    cq: Cq,
    mr: Mr,
    _pd: Pd,
    ctx: Context,
}

fn side(chunk: usize) -> Result<Side, Error> {
    let ctx = Context::soft(Progress::Manual);
    let pd = Pd::new(&ctx)?;
    // One CQE per WQE of a chunk: the send CQEs on the requester, the
    // receive CQEs on the target.
    let cq = Cq::new(&ctx, chunk as u32)?;
    let caps = QpCaps {
        max_send_wr: chunk as u32,
        max_recv_wr: chunk as u32,
        ..QpCaps::default()
    };
    let qp = Qp::builder(&pd, &cq, &cq).caps(caps).build()?;
    let mr = pd.alloc_mr(4096, Access::ALL)?;
    Ok(Side {
        qp,
        cq,
        mr,
        _pd: pd,
        ctx,
    })
}

/// What a WQE of the batch carries.
#[derive(Clone, Copy)]
enum Wqe<'a> {
    Inline { remote: Remote, data: &'a [u8; 8] },
    Sge { remote: Remote, sges: &'a [Sge] },
}

/// Measured: posts `n` signaled WQEs, then rings the doorbell once.
#[inline(never)]
fn post_batch(qp: &mut Qp, n: usize, wqe: Wqe<'_>) -> Result<(), Error> {
    match wqe {
        Wqe::Inline { remote, data } => {
            for _ in 0..n {
                let w = Write::inline(remote, data).signaled();
                black_box(qp.post(black_box(&w))?);
            }
        }
        Wqe::Sge { remote, sges } => {
            for i in 0..n {
                let w = WriteImm::new(remote, sges, i as u32).signaled();
                black_box(qp.post(black_box(&w))?);
            }
        }
    }
    qp.ring_doorbell();
    Ok(())
}

/// What a poll found: completions polled, and the first unexpected one.
struct Polled {
    count: usize,
    unexpected: Option<Completion>,
}

/// Polls up to `n` completions (all should be there: the device is idle),
/// checking each is a success of the expected kind.
#[inline(always)]
fn poll_n(cq: &mut Cq, n: usize, expected: impl Fn(Kind) -> bool) -> Result<Polled, Error> {
    let mut p = Polled {
        count: 0,
        unexpected: None,
    };
    while p.count < n {
        let mut bad = None;
        let got = cq.poll(n - p.count, |c| {
            if (c.status().is_err() || !expected(c.kind)) && bad.is_none() {
                bad = Some(*c);
            }
            black_box(c);
        })?;
        p.unexpected = p.unexpected.or(bad);
        if got == 0 {
            break;
        }
        p.count += got;
    }
    Ok(p)
}

/// Measured: polls the `n` send completions of a batch.
#[inline(never)]
fn poll_batch(cq: &mut Cq, n: usize) -> Result<Polled, Error> {
    poll_n(cq, n, |k| matches!(k, Kind::Send { .. }))
}

/// Measured: polls the `n` receive completions a WRITE_IMM batch produced.
#[inline(never)]
fn poll_recv_batch(cq: &mut Cq, n: usize) -> Result<Polled, Error> {
    poll_n(cq, n, |k| k == Kind::RecvWriteImm)
}

/// Checks a poll found exactly `n` successful completions of its kind.
fn check(what: &str, p: &Polled, n: usize) -> Result<(), String> {
    if let Some(c) = &p.unexpected {
        return Err(format!(
            "{what}: unexpected completion {:?} (syndrome {:?}, QP {:#x})",
            c.kind, c.syndrome, c.qpn
        ));
    }
    if p.count != n {
        return Err(format!(
            "{what}: {} of {n} completions arrived after the device went idle",
            p.count
        ));
    }
    Ok(())
}

fn run(n: usize, op: Op) -> Result<(), String> {
    let e = |what: &'static str| move |err: Error| format!("{what}: {err}");
    let chunk = n.min(MAX_CHUNK);
    let mut a = side(chunk).map_err(e("set up side A"))?;
    let mut b = side(chunk).map_err(e("set up side B"))?;
    let opts = ConnectOpts::default();
    let ia = a.qp.local_info(&opts).map_err(e("local info of A"))?;
    let ib = b.qp.local_info(&opts).map_err(e("local info of B"))?;
    a.qp.connect(&ib, &opts).map_err(e("connect A"))?;
    b.qp.connect(&ia, &opts).map_err(e("connect B"))?;

    // SAFETY: no WQE that reads or writes these bytes is in flight.
    unsafe { a.mr.write(0, &PAYLOAD) };
    let sges = [a.mr.sge(0, PAYLOAD.len() as u32)];
    let remote = black_box(b.mr.remote(0));
    let data = black_box(&PAYLOAD);
    let wqe = match op {
        Op::Write => Wqe::Inline { remote, data },
        Op::WriteImm => Wqe::Sge {
            remote,
            sges: black_box(&sges),
        },
    };

    let (mut done, mut recvs) = (0, 0);
    while done < n {
        let c = chunk.min(n - done);
        if op == Op::WriteImm {
            for _ in 0..c {
                b.qp.post_recv(&[]).map_err(e("post a receive on B"))?;
            }
        }
        post_batch(&mut a.qp, c, wqe).map_err(e("post_batch"))?;
        // The device's work: not measured.
        a.ctx
            .progress_until_idle()
            .map_err(e("progress device A"))?;
        b.ctx
            .progress_until_idle()
            .map_err(e("progress device B"))?;
        let p = poll_batch(&mut a.cq, c).map_err(e("poll_batch"))?;
        check("send CQ", &p, c)?;
        if op == Op::WriteImm {
            let p = poll_recv_batch(&mut b.cq, c).map_err(e("poll_recv_batch"))?;
            check("receive CQ", &p, c)?;
            recvs += p.count;
        }
        done += c;
    }

    let mut landed = [0u8; 8];
    // SAFETY: the WQEs that wrote these bytes have completed (their
    // completions were polled) and none is in flight to them.
    unsafe { b.mr.read(0, &mut landed) };
    if landed != PAYLOAD {
        return Err(format!("target memory holds {landed:?}, not the payload"));
    }
    println!(
        "instr: {} x{n} in {} batch(es): {n} send CQEs{} ok",
        op.name(),
        n.div_ceil(chunk),
        if op == Op::WriteImm {
            format!(", {recvs} receive CQEs")
        } else {
            String::new()
        }
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Result<Vec<String>, _> = std::env::args_os()
        .skip(1)
        .map(|a| a.into_string())
        .collect();
    let parsed = match args {
        Ok(args) => parse_args(&args),
        Err(a) => Err(format!("{a:?} is not UTF-8")),
    };
    let (n, op) = match parsed {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("instr: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(n, op) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("instr: error: {msg}");
            ExitCode::FAILURE
        }
    }
}
