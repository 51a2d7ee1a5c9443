//! WRITE_IMM ping-pong between two RC QPs: each side writes a counter into
//! the other's buffer with an immediate, the receiver polls its CQ, reposts
//! a receive and answers.
//!
//! ```text
//! MLX5_DEVICE=soft cargo run --release -p mlx5 --example pingpong [iterations]
//! ```
//!
//! Uses the device `MLX5_DEVICE` names (the software device when unset and
//! no NIC exists). Both QPs live in this process, on two contexts of the
//! same device.

use std::time::{Duration, Instant};

use mlx5::wqe::WriteImm;
use mlx5::{Access, ConnectOpts, Context, Cq, Error, Kind, Pd, Qp, QpCaps};

struct Side {
    cq: Cq,
    qp: Qp,
    mr: mlx5::Mr,
    _pd: Pd,
}

fn side(ctx: &Context) -> Result<Side, Error> {
    let pd = Pd::new(ctx)?;
    let cq = Cq::new(ctx, 64)?;
    let qp = Qp::builder(&pd, &cq, &cq).caps(QpCaps::default()).build()?;
    let mr = pd.alloc_mr(4096, Access::ALL)?;
    Ok(Side {
        cq,
        qp,
        mr,
        _pd: pd,
    })
}

/// Waits for one completion of the expected kind.
fn wait(s: &mut Side, kind: Kind) -> Result<u32, Error> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut got = None;
        s.cq.poll(1, |c| got = Some(*c))?;
        if let Some(c) = got {
            if let Err(syn) = c.status() {
                eprintln!("error completion on QP {:#x}: {syn:?}", c.qpn);
                std::process::exit(1);
            }
            if c.kind == kind {
                return Ok(c.imm);
            }
        }
        if Instant::now() > deadline {
            eprintln!("no completion within 5 s");
            std::process::exit(1);
        }
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let iters = match args[..] {
        [] => 10_000,
        [ref n] => match n.parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!(
                    "pingpong: iterations must be a number from 1 to {}: {n:?}\nusage: pingpong [iterations]",
                    u32::MAX
                );
                return std::process::ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: pingpong [iterations]");
            return std::process::ExitCode::from(2);
        }
    };
    match run(iters) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pingpong: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(iters: u32) -> Result<(), Error> {
    let (ca, cb) = (Context::from_env()?, Context::from_env()?);
    println!("device: {}", ca.name());
    let (mut a, mut b) = (side(&ca)?, side(&cb)?);
    let o = ConnectOpts::default();
    let (ia, ib) = (a.qp.local_info(&o)?, b.qp.local_info(&o)?);
    a.qp.connect(&ib, &o)?;
    b.qp.connect(&ia, &o)?;
    a.qp.post_recv(&[])?;
    b.qp.post_recv(&[])?;

    let mut rtts = Vec::with_capacity(iters as usize);
    for i in 0..iters {
        let t = Instant::now();
        let msg = i.to_le_bytes();
        a.qp.post_and_ring(&WriteImm::inline(b.mr.remote(0), &msg, i))?;
        let got = wait(&mut b, Kind::RecvWriteImm)?;
        assert_eq!(got, i);
        b.qp.post_recv(&[])?;
        b.qp.post_and_ring(&WriteImm::inline(a.mr.remote(0), &msg, i))?;
        wait(&mut a, Kind::RecvWriteImm)?;
        a.qp.post_recv(&[])?;
        // Retire the unsignaled WQEs every quarter queue.
        if i % 32 == 31 {
            a.qp.post_and_ring(&mlx5::wqe::Nop::new().signaled())?;
            wait(
                &mut a,
                Kind::Send {
                    opcode: mlx5::wqe::opcode::NOP,
                },
            )?;
            b.qp.post_and_ring(&mlx5::wqe::Nop::new().signaled())?;
            wait(
                &mut b,
                Kind::Send {
                    opcode: mlx5::wqe::opcode::NOP,
                },
            )?;
        }
        rtts.push(t.elapsed());
    }
    let mut check = [0u8; 4];
    // SAFETY: the WQEs that wrote these bytes have completed (their
    // completions were polled) and none is in flight to them.
    unsafe { b.mr.read(0, &mut check) };
    assert_eq!(u32::from_le_bytes(check), iters - 1);
    rtts.sort();
    println!(
        "{iters} round trips: median {:?}, p99 {:?}",
        rtts[rtts.len() / 2],
        rtts[rtts.len() * 99 / 100]
    );
    Ok(())
}
