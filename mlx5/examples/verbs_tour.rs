//! One of each RC operation against a peer QP, with what each completion
//! reports: WRITE, WRITE_IMM, SEND, READ, fetch-and-add, compare-and-swap,
//! and an error (a bad rkey) followed by the flush of the next WQE.
//!
//! ```text
//! MLX5_DEVICE=soft cargo run -p mlx5 --example verbs_tour
//! ```

use std::time::Duration;

use mlx5::wqe::{AtomicCas, AtomicFa, Read, Send, Write, WriteImm};
use mlx5::{Access, Completion, ConnectOpts, Context, Cq, Error, Pd, Qp};

fn one(cq: &mut Cq) -> Result<Completion, Error> {
    let mut got = Vec::new();
    cq.poll_until(1, Duration::from_secs(5), |c| got.push(*c))?;
    let c = *got.first().expect("a completion within 5 s");
    println!(
        "  cqe: {:?} qpn={:#x} wqe_counter={} byte_len={} imm={:#x} status={:?}",
        c.kind,
        c.qpn,
        c.wqe_counter,
        c.byte_len,
        c.imm,
        c.status()
    );
    Ok(c)
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Display, not Debug: it names what to do (MLX5_DEVICE=soft).
            eprintln!("verbs_tour: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Error> {
    let ctx = Context::from_env()?;
    println!("device: {}", ctx.name());
    let pd = Pd::new(&ctx)?;
    let (mut cq_a, mut cq_b) = (Cq::new(&ctx, 16)?, Cq::new(&ctx, 16)?);
    let mut a = Qp::builder(&pd, &cq_a, &cq_a).build()?;
    let mut b = Qp::builder(&pd, &cq_b, &cq_b).build()?;
    let o = ConnectOpts::default();
    let (ia, ib) = (a.local_info(&o)?, b.local_info(&o)?);
    a.connect(&ib, &o)?;
    b.connect(&ia, &o)?;
    let (ma, mb) = (
        pd.alloc_mr(4096, Access::ALL)?,
        pd.alloc_mr(4096, Access::ALL)?,
    );

    println!("WRITE 5 bytes");
    // SAFETY: no WQE that reads or writes these bytes is in flight.
    unsafe { ma.write(0, b"hello") };
    a.post_and_ring(&Write::new(mb.remote(0), &[ma.sge(0, 5)]).signaled())?;
    one(&mut cq_a)?;

    println!("WRITE_IMM (inline) consumes a receive at the target");
    b.post_recv(&[])?;
    a.post_and_ring(&WriteImm::inline(mb.remote(8), b"imm", 0xabcd).signaled())?;
    one(&mut cq_a)?;
    one(&mut cq_b)?;

    println!("SEND scatters into the posted receive buffer");
    b.post_recv(&[mb.sge(64, 32)])?;
    a.post_and_ring(&Send::inline(b"a message").signaled())?;
    one(&mut cq_a)?;
    one(&mut cq_b)?;

    println!("READ 5 bytes back");
    a.post_and_ring(&Read::new(mb.remote(0), &[ma.sge(100, 5)]).signaled())?;
    one(&mut cq_a)?;
    let mut back = [0u8; 5];
    // SAFETY: the WQEs that wrote these bytes have completed (their
    // completions were polled) and none is in flight to them.
    unsafe { ma.read(100, &mut back) };
    println!("  read: {:?}", String::from_utf8_lossy(&back));

    println!("fetch-and-add 5, then compare-and-swap 5 -> 9");
    a.post(&AtomicFa::new(mb.remote(128), ma.sge(200, 8), 5).signaled())?;
    a.post(&AtomicCas::new(mb.remote(128), ma.sge(208, 8), 5, 9).signaled())?;
    a.ring_doorbell();
    one(&mut cq_a)?;
    one(&mut cq_a)?;
    println!(
        "  target word: {}",
        mb.atomic_u64(128).load(std::sync::atomic::Ordering::SeqCst)
    );

    println!("a bad rkey: remote access error, QP in ERROR, next WQE flushed");
    let mut bad = mb.remote(0);
    bad.rkey ^= 0x55;
    a.post(&Write::inline(bad, b"x").signaled())?;
    a.post(&Write::inline(mb.remote(0), b"y").signaled())?;
    a.ring_doorbell();
    one(&mut cq_a)?;
    one(&mut cq_a)?;
    println!("  QP state: {:?}", a.state());
    Ok(())
}
