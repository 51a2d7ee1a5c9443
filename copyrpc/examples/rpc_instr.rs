//! copyrpc's own cost in instructions, for callgrind: N RPCs of 32 bytes
//! between two contexts on two manual software devices in this process.
//! Every copyrpc call (`call`, `poll`, `recv`, `reply`) runs inside one of
//! the `measured_*` functions; the devices are stepped outside them, so
//! callgrind with `--toggle-collect='*measured_*'` counts the caller's and
//! the responder's work (copyrpc and the mlx5 post/poll it does) and not
//! the software device's.
//!
//! ```text
//! cargo run --release -p copyrpc --example rpc_instr -- N depth1|8x256
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured_*' \
//!     target/release/examples/rpc_instr 20000 8x256
//! ```
//!
//! `scripts/callgrind.sh` runs it at two N and takes the difference, so
//! fixed costs (setup, the first flushes) cancel.

use std::hint::black_box;
use std::process::ExitCode;

use copyrpc::{Config, Context, Endpoint, Limits};
use mlx5::Progress;

const PAYLOAD: [u8; 32] = *b"instr-32-byte-payload-for-rpc!!!";

struct Pair {
    a: Context<u64>,
    b: Context<()>,
    eps: Vec<Endpoint>,
    depth: u32,
}

fn pair(qps: usize, depth: u32) -> Pair {
    let cfg = Config {
        limits: Limits {
            ring: 1 << 20,
            max_inflight: depth,
            max_call: 64,
            max_reply: 64,
            max_batch: 16 << 10,
        },
        srq_depth: 4096,
        cq_depth: 1 << 15,
        sq_depth: 256,
        call_timeout: None,
        // No clock reads in the counted polls (neither timeouts nor
        // keepalive probes look at it).
        keepalive: None,
        step_manual_device: false,
        ..Config::default()
    };
    let mut a = Context::new(&mlx5::Context::soft(Progress::Manual), cfg).expect("context");
    let mut b = Context::new(&mlx5::Context::soft(Progress::Manual), cfg).expect("context");
    let mut eps = Vec::new();
    for _ in 0..qps {
        let (ea, eb) = (a.endpoint().unwrap(), b.endpoint().unwrap());
        let (ia, ib) = (a.local_info(ea).unwrap(), b.local_info(eb).unwrap());
        a.connect(ea, &ib).unwrap();
        b.connect(eb, &ia).unwrap();
        eps.push(ea);
    }
    Pair { a, b, eps, depth }
}

/// The caller: issues calls up to the depth on every endpoint, then polls
/// (which flushes when idle and delivers replies). Returns replies seen.
#[inline(never)]
fn measured_caller(p: &mut Pair, issued: &mut u64, n: u64) -> u64 {
    for &ep in &p.eps {
        while *issued < n && p.a.in_flight(ep) < p.depth {
            if p.a.call(ep, &PAYLOAD, *issued).is_err() {
                break;
            }
            *issued += 1;
        }
    }
    let mut done = 0;
    // Two polls: the first reads what arrived, the second (idle) flushes.
    for _ in 0..2 {
        p.a.poll(|u, r| {
            black_box((u, r.map(<[u8]>::len).unwrap_or(0)));
            done += 1;
        })
        .expect("poll");
    }
    done
}

/// The responder: reads requests, answers each with its own bytes, and
/// flushes.
#[inline(never)]
fn measured_responder(p: &mut Pair) {
    p.b.poll(|_, _| {}).expect("poll");
    while let Some(r) = p.b.recv() {
        let mut out = [0u8; 32];
        out.copy_from_slice(&r.data()[..32]);
        p.b.reply(r, &out).expect("reply");
    }
    p.b.poll(|_, _| {}).expect("poll");
}

fn run(n: u64, qps: usize, depth: u32) {
    let mut p = pair(qps, depth);
    let (da, db) = (p.a.device().clone(), p.b.device().clone());
    let (mut issued, mut done) = (0u64, 0u64);
    while done < n {
        done += measured_caller(&mut p, &mut issued, n);
        da.progress_until_idle().expect("progress");
        db.progress_until_idle().expect("progress");
        measured_responder(&mut p);
        db.progress_until_idle().expect("progress");
        da.progress_until_idle().expect("progress");
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: rpc_instr N depth1|8x256";
    let (Some(n), Some(shape)) = (args.first(), args.get(1)) else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let Ok(n) = n.parse::<u64>() else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    match shape.as_str() {
        "depth1" => run(n, 1, 1),
        "8x256" => run(n, 8, 256),
        _ => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
