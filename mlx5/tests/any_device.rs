//! The tests to run first on a ConnectX NIC: they use the device
//! `MLX5_DEVICE` names (the software device when unset and no NIC exists)
//! and only behaviour hardware and the software device share.
//!
//! ```text
//! MLX5_DEVICE=mlx5_0 cargo test -p mlx5 --test any_device -- --test-threads 1
//! ```

mod common;

use common::pair::{TIMEOUT, pair_env};
use mlx5::wqe::opcode;
use mlx5::wqe::{AtomicCas, AtomicFa, Read, Send, Write, WriteImm};
use mlx5::{AsyncEvent, Kind, QpCaps, QpState, Syndrome};

#[test]
fn every_opcode_completes_with_the_expected_cqe() {
    let (mut a, mut b) = pair_env(QpCaps::default(), 64);
    // SAFETY: no WQE that reads or writes these bytes is in flight.
    unsafe { a.mr.write(0, b"0123456789abcdef") };
    // SAFETY: no WQE that reads or writes these bytes is in flight.
    unsafe { b.mr.write(1024, b"remote bytes") };
    b.qp.post_recv(&[]).unwrap();
    b.qp.post_recv(&[b.mr.sge(2048, 64)]).unwrap();
    let src = [a.mr.sge(0, 16)];
    let dst = [a.mr.sge(100, 12)];
    a.qp.post(&Write::new(b.mr.remote(0), &src).signaled())
        .unwrap();
    a.qp.post(&WriteImm::inline(b.mr.remote(16), b"imm", 7).signaled())
        .unwrap();
    a.qp.post(&Send::new(&src).signaled()).unwrap();
    a.qp.post(&Read::new(b.mr.remote(1024), &dst).signaled())
        .unwrap();
    a.qp.post(&AtomicFa::new(b.mr.remote(512), a.mr.sge(200, 8), 3).signaled())
        .unwrap();
    a.qp.post(&AtomicCas::new(b.mr.remote(512), a.mr.sge(208, 8), 3, 10).signaled())
        .unwrap();
    a.qp.ring_doorbell();
    let c = a.expect(6);
    let ops: Vec<Kind> = c.iter().map(|c| c.kind).collect();
    let want = [
        opcode::RDMA_WRITE,
        opcode::RDMA_WRITE_IMM,
        opcode::SEND,
        opcode::RDMA_READ,
        opcode::ATOMIC_FA,
        opcode::ATOMIC_CS,
    ]
    .map(|opcode| Kind::Send { opcode });
    assert_eq!(ops, want);
    let r = b.expect(2);
    assert_eq!(
        (r[0].kind, r[0].imm, r[0].byte_len),
        (Kind::RecvWriteImm, 7, 3)
    );
    assert_eq!((r[1].kind, r[1].byte_len), (Kind::RecvSend, 16));
    let mut buf = [0u8; 16];
    // SAFETY: the WQEs that wrote these bytes have completed (their
    // completions were polled) and none is in flight to them.
    unsafe { b.mr.read(0, &mut buf) };
    assert_eq!(&buf, b"0123456789abcdef");
    // SAFETY: the WQEs that wrote these bytes have completed (their
    // completions were polled) and none is in flight to them.
    unsafe { b.mr.read(2048, &mut buf) };
    assert_eq!(&buf, b"0123456789abcdef");
    let mut back = [0u8; 12];
    // SAFETY: the WQEs that wrote these bytes have completed (their
    // completions were polled) and none is in flight to them.
    unsafe { a.mr.read(100, &mut back) };
    assert_eq!(&back, b"remote bytes");
    let mut orig = [0u8; 8];
    // SAFETY: the WQEs that wrote these bytes have completed (their
    // completions were polled) and none is in flight to them.
    unsafe { a.mr.read(208, &mut orig) };
    assert_eq!(u64::from_be_bytes(orig), 3);
    assert_eq!(
        b.mr.atomic_u64(512)
            .load(std::sync::atomic::Ordering::SeqCst),
        10
    );
}

#[test]
fn send_queue_and_cq_wrap_many_times() {
    let caps = QpCaps {
        max_send_wr: 4,
        max_inline: 120,
        ..QpCaps::default()
    };
    let (mut a, mut b) = pair_env(caps, 8);
    for i in 0..500usize {
        let len = 1 + (i * 7) % 120;
        let data: Vec<u8> = (0..len).map(|k| (k + i) as u8).collect();
        b.qp.post_recv(&[]).unwrap();
        a.qp.post_and_ring(&WriteImm::inline(b.mr.remote(i % 64), &data, i as u32).signaled())
            .unwrap();
        assert_eq!(a.expect(1)[0].status(), Ok(()));
        let r = b.expect(1);
        assert_eq!((r[0].imm, r[0].byte_len), (i as u32, len as u32));
        let mut got = vec![0u8; len];
        // SAFETY: the WQEs that wrote these bytes have completed (their
        // completions were polled) and none is in flight to them.
        unsafe { b.mr.read(i % 64, &mut got) };
        assert_eq!(got, data);
    }
}

#[test]
fn bad_rkey_is_a_remote_access_error_and_flushes_what_follows() {
    let (mut a, b) = pair_env(QpCaps::default(), 16);
    let mut r = b.mr.remote(0);
    r.rkey = r.rkey.wrapping_add(0x1000);
    a.qp.post(&Write::inline(r, b"x").signaled()).unwrap();
    a.qp.post(&Write::inline(b.mr.remote(0), b"y").signaled())
        .unwrap();
    a.qp.ring_doorbell();
    let c = a.expect(2);
    assert_eq!(c[0].syndrome, Some(Syndrome::RemoteAccess));
    assert_eq!(c[1].syndrome, Some(Syndrome::WrFlush));
    assert_eq!(a.qp.state(), QpState::Error);
    // IBA class C: the responder QP fails as well, and says so.
    let ev = b.ctx.wait_async_event(TIMEOUT).unwrap();
    assert_eq!(ev, Some(AsyncEvent::QpAccessError { qpn: b.qp.qpn() }));
    assert_eq!(b.qp.state(), QpState::Error);
}
