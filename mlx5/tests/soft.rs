//! The software device as a NIC: every opcode, ring wrap, completions,
//! SRQs, every error path, threads. Everything here runs on `soft`.

mod common;

use common::pair::{End, TIMEOUT, connect, end, pair, pair_with, srq_qp};
use mlx5::wqe::opcode;
use mlx5::wqe::{AtomicCas, AtomicFa, Nop, Read, Send, SendImm, Write, WriteImm};
use mlx5::{
    Access, AsyncEvent, ConnectOpts, Context, Cq, Error, Kind, Progress, Qp, QpCaps, QpState,
    Remote, Srq, Syndrome,
};

/// Fills `e`'s region at `off` with a pattern; for bytes no WQE is
/// accessing (the tests fill before they post).
fn fill(e: &End, off: usize, len: usize, seed: u8) -> Vec<u8> {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    // SAFETY: see the doc: the callers' bytes are not in flight.
    unsafe { e.mr.write(off, &data) };
    data
}

/// `e`'s region at `off`; for bytes no WQE is writing (the tests read
/// after polling the completions that wrote them).
fn read(e: &End, off: usize, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    // SAFETY: see the doc: the callers' bytes are not in flight.
    unsafe { e.mr.read(off, &mut v) };
    v
}

#[test]
fn write_moves_gathered_bytes_and_completes_when_signaled() {
    for progress in [Progress::Manual, Progress::Background] {
        let (mut a, b) = pair(progress);
        let x = fill(&a, 0, 100, 1);
        let y = fill(&a, 200, 28, 2);
        let sges = [a.mr.sge(0, 100), a.mr.sge(200, 28)];
        let i =
            a.qp.post_and_ring(&Write::new(b.mr.remote(512), &sges).signaled())
                .unwrap();
        let c = a.expect(1);
        assert_eq!(
            c[0].kind,
            Kind::Send {
                opcode: opcode::RDMA_WRITE
            }
        );
        assert_eq!(
            (c[0].wqe_counter, c[0].qpn, c[0].status()),
            (i, a.qp.qpn(), Ok(()))
        );
        assert_eq!(read(&b, 512, 128), [x, y].concat());
    }
}

#[test]
fn write_imm_consumes_a_receive_and_reports_imm_and_length() {
    let (mut a, mut b) = pair(Progress::Background);
    b.qp.post_recv(&[]).unwrap();
    a.qp.post_and_ring(&WriteImm::inline(b.mr.remote(8), b"hello", 0xdead_beef))
        .unwrap();
    let c = b.expect(1);
    assert_eq!(c[0].kind, Kind::RecvWriteImm);
    assert_eq!(
        (c[0].imm, c[0].byte_len, c[0].wqe_counter, c[0].qpn),
        (0xdead_beef, 5, 0, b.qp.qpn())
    );
    assert_eq!(read(&b, 8, 5), b"hello");
    assert!(a.drain().is_empty(), "unsignaled: no requester completion");
    assert_eq!(b.qp.recv_outstanding(), 0);
}

#[test]
fn send_scatters_into_the_receive_sges() {
    let (mut a, mut b) = pair(Progress::Manual);
    let recv = [b.mr.sge(1000, 10), b.mr.sge(3000, 100)];
    b.qp.post_recv(&recv).unwrap();
    b.qp.post_recv(&[b.mr.sge(5000, 64)]).unwrap();
    let msg = fill(&a, 0, 50, 9);
    a.qp.post(&Send::new(&[a.mr.sge(0, 50)]).signaled())
        .unwrap();
    a.qp.post(&SendImm::inline(b"inline!", 77).signaled())
        .unwrap();
    a.qp.ring_doorbell();
    assert_eq!(a.expect(2).len(), 2);
    let c = b.expect(2);
    assert_eq!(
        (c[0].kind, c[0].byte_len, c[0].wqe_counter),
        (Kind::RecvSend, 50, 0)
    );
    assert_eq!(
        (c[1].kind, c[1].byte_len, c[1].imm, c[1].wqe_counter),
        (Kind::RecvSendImm, 7, 77, 1)
    );
    assert_eq!(read(&b, 1000, 10), msg[..10]);
    assert_eq!(read(&b, 3000, 40), msg[10..]);
    assert_eq!(read(&b, 5000, 7), b"inline!");
}

#[test]
fn read_brings_remote_bytes_into_the_scatter_list() {
    let (mut a, b) = pair(Progress::Manual);
    let data = fill(&b, 4096, 300, 5);
    let sges = [a.mr.sge(0, 100), a.mr.sge(1024, 200)];
    a.qp.post_and_ring(&Read::new(b.mr.remote(4096), &sges).signaled())
        .unwrap();
    let c = a.expect(1);
    assert_eq!(
        (c[0].kind, c[0].byte_len),
        (
            Kind::Send {
                opcode: opcode::RDMA_READ
            },
            300
        )
    );
    assert_eq!(read(&a, 0, 100), data[..100]);
    assert_eq!(read(&a, 1024, 200), data[100..]);
}

#[test]
fn atomics_update_target_memory_and_return_the_original_big_endian() {
    let (mut a, b) = pair(Progress::Background);
    b.mr.atomic_u64(64)
        .store(40, std::sync::atomic::Ordering::SeqCst);
    a.qp.post(&AtomicFa::new(b.mr.remote(64), a.mr.sge(0, 8), 2).signaled())
        .unwrap();
    a.qp.post(&AtomicCas::new(b.mr.remote(64), a.mr.sge(8, 8), 42, 1000).signaled())
        .unwrap();
    a.qp.post(&AtomicCas::new(b.mr.remote(64), a.mr.sge(16, 8), 42, 7).signaled())
        .unwrap();
    a.qp.ring_doorbell();
    let c = a.expect(3);
    assert!(c.iter().all(|c| c.status().is_ok() && c.byte_len == 8));
    assert_eq!(read(&a, 0, 8), 40u64.to_be_bytes());
    assert_eq!(read(&a, 8, 8), 42u64.to_be_bytes());
    assert_eq!(
        read(&a, 16, 8),
        1000u64.to_be_bytes(),
        "failed CAS returns the current value"
    );
    assert_eq!(
        b.mr.atomic_u64(64)
            .load(std::sync::atomic::Ordering::SeqCst),
        1000
    );
}

#[test]
fn nop_completes_when_signaled() {
    let (mut a, _b) = pair(Progress::Manual);
    let i = a.qp.post_and_ring(&Nop::new().signaled()).unwrap();
    let c = a.expect(1);
    assert_eq!(
        (c[0].kind, c[0].wqe_counter),
        (
            Kind::Send {
                opcode: opcode::NOP
            },
            i
        )
    );
}

#[test]
fn sq_wraps_with_nop_padding_and_every_byte_arrives() {
    // 8 WQEBBs of send queue: WQEs of 1..=3 WQEBBs hit the ring end at
    // every offset.
    let caps = QpCaps {
        max_send_wr: 2,
        max_inline: 150,
        ..QpCaps::default()
    };
    let (mut a, mut b) = pair_with(Progress::Manual, caps, 64);
    assert_eq!(a.qp.sq_free(), 8);
    let mut expected = vec![0u8; 4096];
    for round in 0..200usize {
        let len = [8usize, 60, 100, 150][round % 4] - (round % 3);
        let data: Vec<u8> = (0..len).map(|i| (i + round) as u8).collect();
        let off = (round * 37) % 3800;
        b.qp.post_recv(&[]).unwrap();
        a.qp.post_and_ring(&WriteImm::inline(b.mr.remote(off), &data, round as u32).signaled())
            .unwrap();
        expected[off..off + len].copy_from_slice(&data);
        let c = a.expect(1);
        assert_eq!(c[0].status(), Ok(()));
        let r = b.expect(1);
        assert_eq!((r[0].imm, r[0].byte_len), (round as u32, len as u32));
        assert_eq!(read(&b, off, len), data, "round {round}");
    }
    assert_eq!(read(&b, 0, 4096), expected);
    assert_eq!(a.qp.sq_free(), 8, "everything retired");
}

#[test]
fn cq_wraps_over_many_laps_of_the_owner_bit() {
    let (mut a, _b) = pair_with(Progress::Manual, QpCaps::default(), 4);
    assert_eq!(a.cq.entries(), 4);
    for i in 0..40u32 {
        a.qp.post_and_ring(&Write::inline(_b.mr.remote(0), &i.to_le_bytes()).signaled())
            .unwrap();
        let c = a.expect(1);
        assert_eq!(c[0].status(), Ok(()), "completion {i}");
    }
    assert_eq!(a.cq.consumer_index(), 40, "ten laps of a 4-entry CQ");
}

#[test]
fn unsignaled_wqes_are_retired_by_a_later_signaled_one() {
    let caps = QpCaps {
        max_send_wr: 8,
        ..QpCaps::default()
    };
    let (mut a, b) = pair_with(Progress::Manual, caps, 64);
    let cap = a.qp.sq_free();
    for _round in 0..5 {
        for _ in 0..7 {
            a.qp.post(&Write::inline(b.mr.remote(0), b"x")).unwrap();
        }
        a.qp.post(&Write::inline(b.mr.remote(0), b"y").signaled())
            .unwrap();
        a.qp.ring_doorbell();
        assert!(a.qp.sq_free() < cap);
        assert_eq!(a.expect(1).len(), 1, "one completion for eight WQEs");
        assert_eq!(a.qp.sq_free(), cap);
    }
}

#[test]
fn full_send_queue_is_an_error_not_an_overwrite() {
    let caps = QpCaps {
        max_send_wr: 4,
        ..QpCaps::default()
    };
    let (mut a, b) = pair_with(Progress::Manual, caps, 64);
    let cap = a.qp.sq_free() as usize;
    let mut posted = 0;
    let err = loop {
        match a.qp.post(&Write::inline(b.mr.remote(0), b"z")) {
            Ok(_) => posted += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::SendQueueFull { .. }), "{err}");
    assert_eq!(posted, cap, "one-WQEBB WQEs fill every WQEBB");
    assert!(cap >= a.qp.caps().max_send_wr as usize);
}

#[test]
fn srq_is_shared_by_several_qps() {
    let ca = Context::soft(Progress::Background);
    let cb = Context::soft(Progress::Background);
    let mut b = end(&cb, QpCaps::default(), 256, 1 << 16, Access::ALL);
    let mut srq = Srq::new(&b.pd, 64, 1).unwrap();
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..3 {
        let mut s = end(&ca, QpCaps::default(), 64, 4096, Access::ALL);
        let mut r = srq_qp(&b, &b.cq, &srq);
        let o = ConnectOpts::default();
        connect(&mut s.qp, &mut r, &o, &o);
        senders.push(s);
        receivers.push(r);
    }
    assert!(matches!(
        receivers[0].post_recv(&[]),
        Err(Error::UsesSrq(_))
    ));
    for i in 0..30 {
        srq.post_recv(&[b.mr.sge(i * 64, 64)]).unwrap();
    }
    for round in 0..10u32 {
        for (k, s) in senders.iter_mut().enumerate() {
            let msg = [k as u8; 16];
            s.qp.post_and_ring(&SendImm::inline(&msg, round * 10 + k as u32))
                .unwrap();
        }
    }
    let c = b.expect(30);
    let mut seen: Vec<(u32, u32)> = c
        .iter()
        .map(|c| {
            assert_eq!(
                (c.kind, c.srqn, c.byte_len),
                (Kind::RecvSendImm, srq.srqn(), 16)
            );
            (c.qpn, c.imm)
        })
        .collect();
    seen.sort();
    for (k, r) in receivers.iter().enumerate() {
        let imms: Vec<u32> = seen
            .iter()
            .filter(|x| x.0 == r.qpn())
            .map(|x| x.1)
            .collect();
        assert_eq!(
            imms,
            (0..10)
                .map(|round| round * 10 + k as u32)
                .collect::<Vec<_>>()
        );
    }
    // Every WQE index 0..30 consumed exactly once, in posting order.
    let idx: Vec<u16> = c.iter().map(|c| c.wqe_counter).collect();
    assert_eq!(idx, (0..30).collect::<Vec<u16>>());
    assert_eq!(srq.outstanding(), 0);
    // The ring keeps working past its end (64-entry ring, 5 laps).
    for lap in 0..8 {
        for i in 0..40 {
            srq.post_recv(&[b.mr.sge(i * 64, 64)]).unwrap();
        }
        for (k, s) in senders.iter_mut().enumerate() {
            for _ in 0..(13 + usize::from(k == 0)) {
                s.qp.post(&Send::inline(b"lap")).unwrap();
            }
            s.qp.post(&Nop::new().signaled()).unwrap();
            s.qp.ring_doorbell();
        }
        let c = b.expect(40);
        assert!(
            c.iter()
                .all(|c| c.kind == Kind::RecvSend && c.byte_len == 3),
            "lap {lap}"
        );
        for s in senders.iter_mut() {
            s.expect(1);
        }
        assert_eq!(srq.outstanding(), 0);
    }
}

fn first_error(e: &mut End) -> mlx5::Completion {
    let c = e.expect(1);
    assert!(c[0].kind.is_error(), "{c:?}");
    c[0]
}

#[test]
fn bad_lkey_and_local_bounds_are_local_protection_errors() {
    let (mut a, b) = pair(Progress::Manual);
    let mut bad = a.mr.sge(0, 8);
    bad.lkey ^= 0xff;
    a.qp.post_and_ring(&Write::new(b.mr.remote(0), &[bad]))
        .unwrap();
    assert_eq!(first_error(&mut a).syndrome, Some(Syndrome::LocalProt));
    assert_eq!(a.qp.state(), QpState::Error);

    let (mut a, b) = pair(Progress::Manual);
    let mut over = a.mr.sge(0, 8);
    over.len = a.mr.len() as u32 + 1;
    a.qp.post_and_ring(&Write::new(b.mr.remote(0), &[over]))
        .unwrap();
    assert_eq!(first_error(&mut a).syndrome, Some(Syndrome::LocalProt));
}

/// Runs one remote error case: the responder `b` has two receives posted;
/// `post` makes `a` send the offending request. The requester completes
/// with `want`; the responder QP enters ERROR, its receives are flushed,
/// and its device raises `event` (IBA class C, as ConnectX and rxe do).
fn remote_error_kills_both_sides(
    mut a: End,
    mut b: End,
    want: Syndrome,
    event: fn(u32) -> AsyncEvent,
    post: impl FnOnce(&mut End, &End),
) {
    b.qp.post_recv(&[b.mr.sge(0, 16)]).unwrap();
    b.qp.post_recv(&[]).unwrap();
    post(&mut a, &b);
    assert_eq!(first_error(&mut a).syndrome, Some(want));
    assert_eq!(a.qp.state(), QpState::Error);
    let flushed = b.expect(2);
    assert!(
        flushed
            .iter()
            .all(|c| c.kind == Kind::RecvError && c.syndrome == Some(Syndrome::WrFlush)),
        "{flushed:?}"
    );
    assert_eq!(b.qp.state(), QpState::Error, "the responder QP fails too");
    assert_eq!(b.ctx.async_event().unwrap(), Some(event(b.qp.qpn())));
    assert_eq!(b.ctx.async_event().unwrap(), None, "exactly one event");
    assert_eq!(a.ctx.async_event().unwrap(), None, "none at the requester");
}

fn access(qpn: u32) -> AsyncEvent {
    AsyncEvent::QpAccessError { qpn }
}

fn invalid(qpn: u32) -> AsyncEvent {
    AsyncEvent::QpRequestError { qpn }
}

#[test]
fn bad_rkey_bounds_or_rights_are_remote_access_errors_that_kill_the_responder() {
    for progress in [Progress::Manual, Progress::Background] {
        // bad rkey
        let (a, b) = pair(progress);
        remote_error_kills_both_sides(a, b, Syndrome::RemoteAccess, access, |a, b| {
            let mut r = b.mr.remote(0);
            r.rkey ^= 0xff;
            a.qp.post_and_ring(&Write::inline(r, b"x")).unwrap();
        });
        // past the end of the remote region
        let (a, b) = pair(progress);
        remote_error_kills_both_sides(a, b, Syndrome::RemoteAccess, access, |a, b| {
            let r = b.mr.remote(b.mr.len() - 4);
            a.qp.post_and_ring(&Write::inline(r, b"12345678")).unwrap();
        });
        // WRITE_IMM with a bad rkey: no receive is consumed, the posted
        // ones are flushed.
        let (a, b) = pair(progress);
        remote_error_kills_both_sides(a, b, Syndrome::RemoteAccess, access, |a, b| {
            let mut r = b.mr.remote(0);
            r.rkey ^= 0xff;
            a.qp.post_and_ring(&WriteImm::inline(r, b"x", 1)).unwrap();
        });
        // region without REMOTE_READ
        let (a, b) = pair(progress);
        let wo =
            b.pd.alloc_mr(64, Access::LOCAL_WRITE | Access::REMOTE_WRITE)
                .unwrap();
        remote_error_kills_both_sides(a, b, Syndrome::RemoteAccess, access, |a, _| {
            let sge = [a.mr.sge(0, 8)];
            a.qp.post_and_ring(&Read::new(wo.remote(0), &sge)).unwrap();
        });
        // an rkey of another PD on the same device
        let (a, b) = pair(progress);
        let other = mr_of_another_pd(&b);
        remote_error_kills_both_sides(a, b, Syndrome::RemoteAccess, access, |a, _| {
            a.qp.post_and_ring(&Write::inline(other.remote(0), b"x"))
                .unwrap();
        });
        // QP that does not allow remote atomics
        let (ca, cb) = (Context::soft(progress), Context::soft(progress));
        let mut a = end(&ca, QpCaps::default(), 64, 4096, Access::ALL);
        let mut b = end(&cb, QpCaps::default(), 64, 4096, Access::ALL);
        let no_atomic = ConnectOpts {
            access: Access::REMOTE_WRITE | Access::REMOTE_READ,
            ..ConnectOpts::default()
        };
        connect(&mut a.qp, &mut b.qp, &ConnectOpts::default(), &no_atomic);
        remote_error_kills_both_sides(a, b, Syndrome::RemoteAccess, access, |a, b| {
            a.qp.post_and_ring(&AtomicFa::new(b.mr.remote(0), a.mr.sge(0, 8), 1))
                .unwrap();
        });
    }
}

#[test]
fn unaligned_atomic_is_an_invalid_request_that_kills_the_responder() {
    for progress in [Progress::Manual, Progress::Background] {
        let (a, b) = pair(progress);
        remote_error_kills_both_sides(a, b, Syndrome::RemoteInvalRequest, invalid, |a, b| {
            a.qp.post_and_ring(&AtomicFa::new(b.mr.remote(4), a.mr.sge(0, 8), 1))
                .unwrap();
        });
        // Misalignment is reported even when the rkey is bad too.
        let (a, b) = pair(progress);
        remote_error_kills_both_sides(a, b, Syndrome::RemoteInvalRequest, invalid, |a, b| {
            let mut r = b.mr.remote(12);
            r.rkey ^= 0xff;
            a.qp.post_and_ring(&AtomicCas::new(r, a.mr.sge(0, 8), 1, 2))
                .unwrap();
        });
    }
}

#[test]
fn a_qp_on_an_srq_entering_error_reports_last_wqe_reached() {
    let (a, b) = pair(Progress::Manual);
    let cq = Cq::new(&b.ctx, 16).unwrap();
    let srq = Srq::new(&b.pd, 16, 1).unwrap();
    let mut q = srq_qp(&b, &cq, &srq);
    let mut p = Qp::builder(&a.pd, &a.cq, &a.cq).build().unwrap();
    connect(
        &mut p,
        &mut q,
        &ConnectOpts::default(),
        &ConnectOpts::default(),
    );
    assert_eq!(b.ctx.async_event().unwrap(), None);
    q.to_error().unwrap();
    assert_eq!(
        b.ctx.async_event().unwrap(),
        Some(AsyncEvent::QpLastWqeReached { qpn: q.qpn() })
    );
    // Once per entry into ERROR.
    q.to_error().unwrap();
    assert_eq!(b.ctx.async_event().unwrap(), None);
    // A waiter is woken by an event raised on another thread.
    q.reset().unwrap();
    p.reset().unwrap();
    connect(
        &mut p,
        &mut q,
        &ConnectOpts::default(),
        &ConnectOpts::default(),
    );
    let ctx = b.ctx.clone();
    // (No practical deadline: a timeout past what the clock holds waits.)
    let waiter =
        std::thread::spawn(move || ctx.wait_async_event(std::time::Duration::MAX).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(20));
    q.to_error().unwrap();
    assert_eq!(
        waiter.join().unwrap(),
        Some(AsyncEvent::QpLastWqeReached { qpn: q.qpn() })
    );
    let t = std::time::Instant::now();
    assert_eq!(
        b.ctx
            .wait_async_event(std::time::Duration::from_millis(30))
            .unwrap(),
        None
    );
    assert!(t.elapsed() >= std::time::Duration::from_millis(30));
}

/// A region larger than memory, or than one allocation can describe, is an
/// error: before, a length near `usize::MAX` wrapped when rounded up to a
/// page (a zero-byte allocation behind an `Mr` that claimed the length,
/// which safe accessors then wrote past) and one of 2^46 bytes aborted.
#[test]
fn a_region_too_large_to_allocate_is_an_error() {
    let ctx = Context::soft(Progress::Manual);
    let pd = mlx5::Pd::new(&ctx).unwrap();
    for len in [usize::MAX, usize::MAX - 100, isize::MAX as usize, 1 << 46] {
        let e = pd.alloc_mr(len, Access::ALL).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidAttr(m) if m.contains(&len.to_string())),
            "{len}: {e}"
        );
    }
    // The device goes on.
    let mr = pd.alloc_mr(4096, Access::ALL).unwrap();
    assert_eq!(mr.len(), 4096);
}

#[test]
fn remote_write_or_atomic_without_local_write_is_refused_at_registration() {
    let ctx = Context::soft(Progress::Manual);
    let pd = mlx5::Pd::new(&ctx).unwrap();
    for bad in [
        Access::REMOTE_WRITE,
        Access::REMOTE_ATOMIC,
        Access::REMOTE_WRITE | Access::REMOTE_READ,
        Access::REMOTE_ATOMIC | Access::REMOTE_READ,
    ] {
        let e = pd.alloc_mr(64, bad).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidAttr(m) if m.contains("LOCAL_WRITE")),
            "{bad:?}: {e}"
        );
    }
    for ok in [
        Access::default(),
        Access::LOCAL_WRITE,
        Access::REMOTE_READ,
        Access::LOCAL_WRITE | Access::REMOTE_WRITE,
        Access::LOCAL_WRITE | Access::REMOTE_ATOMIC,
        Access::ALL,
    ] {
        pd.alloc_mr(64, ok).unwrap();
    }
}

fn mr_of_another_pd(b: &End) -> mlx5::Mr {
    let pd = mlx5::Pd::new(&b.ctx).unwrap();
    pd.alloc_mr(64, Access::ALL).unwrap()
}

#[test]
fn missing_receive_is_retried_then_rnr_retry_exceeded() {
    let (ca, cb) = (
        Context::soft(Progress::Manual),
        Context::soft(Progress::Manual),
    );
    let mut a = end(&ca, QpCaps::default(), 64, 4096, Access::ALL);
    let mut b = end(&cb, QpCaps::default(), 64, 4096, Access::ALL);
    let o = ConnectOpts {
        rnr_retry: 3,
        ..ConnectOpts::default()
    };
    connect(&mut a.qp, &mut b.qp, &o, &o);
    a.qp.post_and_ring(&Send::inline(b"hi").signaled()).unwrap();
    // Manual mode: one attempt per step; the first try and 3 retries are
    // NAKed, the fourth NAK exceeds rnr_retry.
    for attempt in 0..4 {
        assert_eq!(a.cq.poll(8, |_| {}).unwrap(), 0, "attempt {attempt}");
        assert_eq!(a.qp.state(), QpState::Rts);
        ca.progress().unwrap();
    }
    let mut c = None;
    a.cq.poll(8, |x| c = Some(*x)).unwrap();
    let c = c.expect("an error completion");
    assert_eq!(c.syndrome, Some(Syndrome::RnrRetryExceeded));
}

#[test]
fn rnr_recovers_when_a_receive_is_posted_in_time() {
    let (mut a, mut b) = pair(Progress::Background);
    a.qp.post_and_ring(&Send::inline(b"late").signaled())
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert!(b.drain().is_empty());
    b.qp.post_recv(&[b.mr.sge(0, 16)]).unwrap();
    assert_eq!(a.expect(1)[0].status(), Ok(()));
    assert_eq!(b.expect(1)[0].byte_len, 4);
    assert_eq!(read(&b, 0, 4), b"late");
}

#[test]
fn after_an_error_every_later_wqe_and_receive_is_flushed() {
    let (mut a, b) = pair(Progress::Manual);
    let empty = a.qp.sq_free();
    for _ in 0..3 {
        a.qp.post_recv(&[]).unwrap();
    }
    let mut r = b.mr.remote(0);
    r.rkey ^= 1;
    let bad = a.qp.post(&Write::inline(r, b"x")).unwrap();
    let later: Vec<u16> = (0..4)
        .map(|_| a.qp.post(&Write::inline(b.mr.remote(0), b"y")).unwrap())
        .collect();
    a.qp.ring_doorbell();
    let c = a.expect(1 + 4 + 3);
    assert_eq!(
        (c[0].syndrome, c[0].wqe_counter),
        (Some(Syndrome::RemoteAccess), bad)
    );
    let flushed_sends: Vec<u16> = c
        .iter()
        .filter(|c| {
            // Flushed WQEs report their opcode too.
            c.kind
                == Kind::SendError {
                    opcode: opcode::RDMA_WRITE,
                }
                && c.syndrome == Some(Syndrome::WrFlush)
        })
        .map(|c| c.wqe_counter)
        .collect();
    assert_eq!(flushed_sends, later);
    let flushed_recvs = c
        .iter()
        .filter(|c| c.kind == Kind::RecvError && c.syndrome == Some(Syndrome::WrFlush))
        .count();
    assert_eq!(flushed_recvs, 3);
    // Posting to an ERROR QP is allowed and flushes.
    let i = a.qp.post_and_ring(&Nop::new()).unwrap();
    let c = a.expect(1);
    assert_eq!(
        (c[0].syndrome, c[0].wqe_counter),
        (Some(Syndrome::WrFlush), i)
    );
    a.qp.post_recv(&[]).unwrap();
    assert_eq!(a.expect(1)[0].kind, Kind::RecvError);
    assert_eq!(a.qp.sq_free(), empty, "flush completions retire every WQE");
}

/// A scatter list a WRITE_IMM cannot use: an lkey no region has, a length
/// past any region.
fn garbage_sge() -> mlx5::wqe::Sge {
    mlx5::wqe::Sge {
        addr: 0xdead_0000,
        len: u32::MAX,
        lkey: 0x00ab_cd01,
    }
}

/// A WRITE_IMM only completes its receive WQE (its data goes where the
/// request says): a garbage scatter list there is never looked at, on an
/// RQ or an SRQ; a SEND into the same kind of WQE fails with a local
/// protection error (the list is read where it is used).
#[test]
fn write_imm_ignores_the_receive_scatter_list_send_checks_it() {
    // A QP with its own receive queue.
    let (mut a, mut b) = pair(Progress::Manual);
    b.qp.post_recv(&[garbage_sge()]).unwrap();
    a.qp.post_and_ring(&WriteImm::inline(b.mr.remote(64), b"imm", 5).signaled())
        .unwrap();
    assert_eq!(a.expect(1)[0].status(), Ok(()));
    let c = b.expect(1);
    assert_eq!(
        (c[0].kind, c[0].status(), c[0].byte_len),
        (Kind::RecvWriteImm, Ok(()), 3)
    );
    assert_eq!(read(&b, 64, 3), b"imm");
    b.qp.post_recv(&[garbage_sge()]).unwrap();
    a.qp.post_and_ring(&Send::inline(b"send").signaled())
        .unwrap();
    assert!(first_error(&mut a).kind.is_error());
    let c = b.expect(1);
    assert_eq!(
        (c[0].kind, c[0].syndrome),
        (Kind::RecvError, Some(Syndrome::LocalProt))
    );

    // A QP on an SRQ.
    let (a, b) = pair(Progress::Manual);
    let cq = Cq::new(&b.ctx, 16).unwrap();
    let mut srq = Srq::new(&b.pd, 16, 1).unwrap();
    let mut q = srq_qp(&b, &cq, &srq);
    let mut p = Qp::builder(&a.pd, &a.cq, &a.cq).build().unwrap();
    let o = ConnectOpts::default();
    connect(&mut p, &mut q, &o, &o);
    let mut cq = cq;
    let mut recv_cqe = || {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while got.is_empty() && std::time::Instant::now() < deadline {
            a.ctx.progress().unwrap();
            b.ctx.progress().unwrap();
            cq.poll(16, |c| got.push(*c)).unwrap();
        }
        got
    };
    srq.post_recv(&[garbage_sge()]).unwrap();
    p.post_and_ring(&WriteImm::inline(b.mr.remote(128), b"srq", 9))
        .unwrap();
    let c = recv_cqe();
    assert_eq!(
        (c[0].kind, c[0].status(), c[0].srqn),
        (Kind::RecvWriteImm, Ok(()), srq.srqn())
    );
    assert_eq!(read(&b, 128, 3), b"srq");
    srq.post_recv(&[garbage_sge()]).unwrap();
    p.post_and_ring(&Send::inline(b"send")).unwrap();
    let c = recv_cqe();
    assert_eq!(
        (c[0].kind, c[0].syndrome),
        (Kind::RecvError, Some(Syndrome::LocalProt))
    );
}

#[test]
fn receive_too_small_fails_both_sides() {
    let (mut a, mut b) = pair(Progress::Manual);
    b.qp.post_recv(&[b.mr.sge(0, 4)]).unwrap();
    a.qp.post_and_ring(&Send::inline(b"too long").signaled())
        .unwrap();
    assert_eq!(
        first_error(&mut a).syndrome,
        Some(Syndrome::RemoteInvalRequest)
    );
    let c = b.expect(1);
    assert_eq!(
        (c[0].kind, c[0].syndrome),
        (Kind::RecvError, Some(Syndrome::LocalLength))
    );
    assert_eq!(b.qp.state(), QpState::Error);
}

#[test]
fn malformed_wqe_bytes_are_local_qp_operation_errors_never_panics() {
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for case in 0..200 {
        let (mut a, b) = pair(Progress::Manual);
        let mut bytes = [0u8; 64];
        for chunk in bytes.chunks_mut(8) {
            chunk.copy_from_slice(&next().to_le_bytes());
        }
        let plausible = case % 2 == 0;
        if plausible {
            // Plausible control segment, garbage body: gets past the first
            // checks into the opcode-specific ones.
            let ops = [
                opcode::RDMA_WRITE,
                opcode::SEND,
                opcode::RDMA_READ,
                opcode::ATOMIC_FA,
                0x33,
            ];
            let op = ops[case % ops.len()];
            let ds = (next() % 4 + 1) as u8;
            mlx5::wqe::write_ctrl(&mut bytes, 0, op, a.qp.qpn(), 0x08, ds, 0);
        }
        a.qp.post_raw(&bytes).unwrap();
        a.qp.ring_doorbell();
        a.ctx.progress_until_idle().unwrap();
        let c = a.drain();
        if !plausible {
            // A random control segment (index, QPN, opmod, ds) is refused.
            assert_eq!(c.len(), 1, "case {case}: {c:?}");
            assert_eq!(c[0].syndrome, Some(Syndrome::LocalQpOp), "case {case}");
            assert_eq!(a.qp.state(), QpState::Error);
        } else {
            // Executed, refused with a local error, or (a SEND with no
            // receive posted) waiting on RNR: never anything else.
            assert!(c.len() <= 1, "case {case}: {c:?}");
            match c.first().map(|c| c.syndrome) {
                None => assert_eq!(a.qp.state(), QpState::Rts, "case {case}"),
                Some(None) => assert_eq!(a.qp.state(), QpState::Rts, "case {case}"),
                Some(Some(syn)) => {
                    assert!(
                        matches!(
                            syn,
                            Syndrome::LocalQpOp
                                | Syndrome::LocalProt
                                | Syndrome::LocalLength
                                | Syndrome::RemoteAccess
                                | Syndrome::RemoteInvalRequest
                        ),
                        "case {case}: {syn:?}"
                    );
                    assert_eq!(a.qp.state(), QpState::Error, "case {case}");
                }
            }
        }
        drop(b);
    }
}

/// A raw WQE of one WQEBB whose control segment is well formed but whose
/// `ds` claims `ds` segments (more than one WQEBB's worth).
fn oversized_claim(qp: &Qp, index: u16, op: u8, ds: u8, remote: Remote) -> [u8; 64] {
    let mut w = [0u8; 64];
    mlx5::wqe::write_ctrl(&mut w, index, op, qp.qpn(), 0x08, ds, 0);
    mlx5::wqe::write_raddr(&mut w[16..], remote);
    w
}

#[test]
fn a_wqe_claiming_more_than_was_posted_never_swallows_the_next_one() {
    // Both posted before the device looks (one doorbell), and the
    // malformed one seen alone first (a doorbell each): either way every
    // later WQE completes, and the send queue's space all comes back.
    // Posted together, the device cannot tell a NOP that claims two WQEBBs
    // from a real one (nor can a NIC): it executes by its claim. A WRITE or
    // SEND whose claim covers the next WQE fails (that WQE's control
    // segment is no valid data segment) and still leaves it to complete.
    for one_doorbell in [true, false] {
        let ops: &[u8] = if one_doorbell {
            &[opcode::RDMA_WRITE, opcode::SEND]
        } else {
            &[opcode::RDMA_WRITE, opcode::NOP, opcode::SEND]
        };
        for &op in ops {
            let (mut a, b) = pair(Progress::Manual);
            let empty = a.qp.sq_free();
            let next = a.qp.post(&Nop::new()).unwrap().wrapping_add(1);
            a.qp.ring_doorbell();
            a.ctx.progress_until_idle().unwrap();
            let raw = oversized_claim(&a.qp, next, op, 8, b.mr.remote(0));
            let bad = a.qp.post_raw(&raw).unwrap();
            assert_eq!(bad, next);
            if !one_doorbell {
                a.qp.ring_doorbell();
                a.ctx.progress_until_idle().unwrap();
            }
            let later: Vec<u16> = (0..3)
                .map(|_| {
                    a.qp.post(&Write::inline(b.mr.remote(0), b"y").signaled())
                        .unwrap()
                })
                .collect();
            a.qp.ring_doorbell();
            let c = a.expect(4);
            assert_eq!(
                (c[0].wqe_counter, c[0].syndrome),
                (bad, Some(Syndrome::LocalQpOp)),
                "{op:#x}: {c:?}"
            );
            let flushed: Vec<(u16, Option<Syndrome>)> =
                c[1..].iter().map(|c| (c.wqe_counter, c.syndrome)).collect();
            let want: Vec<(u16, Option<Syndrome>)> = later
                .iter()
                .map(|&i| (i, Some(Syndrome::WrFlush)))
                .collect();
            assert_eq!(flushed, want, "{op:#x}");
            assert_eq!(a.qp.sq_free(), empty, "{op:#x}: no WQEBB leaks");
            assert!(a.drain().is_empty());
        }
    }
}

#[test]
fn inline_data_that_looks_like_a_control_segment_is_just_data() {
    // Found by the WQE fuzz target: the second WQEBB of a 60-byte inline
    // WRITE starts with bytes that read as a control segment for the next
    // position on this QP. A NIC executes the WQE by its ds; so must we.
    let (mut a, b) = pair(Progress::Manual);
    let mut data = [0x11u8; 60];
    let next = 1u32; // the WQEBB after this WQE's first
    let qpn = a.qp.qpn();
    data[28..32].copy_from_slice(&((next << 8) | u32::from(opcode::RDMA_WRITE)).to_be_bytes());
    data[32..36].copy_from_slice(&((qpn << 8) | 1).to_be_bytes());
    let i =
        a.qp.post_and_ring(&Write::inline(b.mr.remote(0), &data).signaled())
            .unwrap();
    assert_eq!(i, 0);
    let c = a.expect(1);
    assert_eq!(c[0].status(), Ok(()), "{c:?}");
    assert_eq!(read(&b, 0, 60), data);
}

#[test]
fn a_garbage_wqe_after_an_error_is_flushed_without_hiding_later_ones() {
    let (mut a, b) = pair(Progress::Manual);
    let empty = a.qp.sq_free();
    a.qp.to_error().unwrap();
    let raw = oversized_claim(&a.qp, 0x7777, opcode::RDMA_WRITE, 63, b.mr.remote(0));
    let g = a.qp.post_raw(&raw).unwrap();
    let ok = a.qp.post(&Write::inline(b.mr.remote(0), b"z")).unwrap();
    a.qp.ring_doorbell();
    let c: Vec<u16> = a.expect(2).iter().map(|c| c.wqe_counter).collect();
    assert_eq!(c, [g, ok]);
    assert_eq!(a.qp.sq_free(), empty);
}

#[test]
fn degenerate_posts_are_written_as_rdma_core_writes_them() {
    let (mut a, mut b) = pair(Progress::Manual);
    // An atomic's result buffer must hold 8 bytes: the device writes 8
    // whatever the SGE says.
    let e =
        a.qp.post(&AtomicFa::new(b.mr.remote(0), a.mr.sge(0, 4), 1))
            .unwrap_err();
    assert!(matches!(e, Error::AtomicResultTooSmall { len: 4 }), "{e}");
    // A longer one gets the 8 bytes and nothing after them.
    // SAFETY: no WQE that reads or writes these bytes is in flight.
    unsafe { a.mr.write(64, &[0xee; 16]) };
    // SAFETY: no WQE that reads or writes these bytes is in flight.
    unsafe { b.mr.write(0, &7u64.to_ne_bytes()) };
    a.qp.post_and_ring(&AtomicFa::new(b.mr.remote(0), a.mr.sge(64, 16), 1).signaled())
        .unwrap();
    assert_eq!(a.expect(1)[0].status(), Ok(()));
    assert_eq!(
        read(&a, 64, 16),
        [&7u64.to_be_bytes()[..], &[0xee; 8]].concat()
    );
    // Empty inline data: no inline segment, a zero-length WRITE_IMM.
    b.qp.post_recv(&[]).unwrap();
    a.qp.post_and_ring(&WriteImm::inline(b.mr.remote(0), b"", 9))
        .unwrap();
    a.ctx.progress_until_idle().unwrap();
    let c = b.expect(1);
    assert_eq!(
        (c[0].kind, c[0].byte_len, c[0].imm),
        (Kind::RecvWriteImm, 0, 9)
    );
    // Zero-length SGEs are skipped, whatever key they carry: on the send
    // side and in a receive WQE.
    let mut nothing = a.mr.sge(0, 0);
    nothing.lkey ^= 0xff;
    let mut recv_nothing = b.mr.sge(0, 0);
    recv_nothing.lkey ^= 0xff;
    b.qp.post_recv(&[recv_nothing, b.mr.sge(100, 8)]).unwrap();
    let msg = fill(&a, 200, 8, 3);
    a.qp.post_and_ring(&Send::new(&[nothing, a.mr.sge(200, 8)]).signaled())
        .unwrap();
    assert_eq!(a.expect(1)[0].status(), Ok(()));
    assert_eq!(b.expect(1)[0].status(), Ok(()));
    assert_eq!(read(&b, 100, 8), msg);
}

#[test]
fn cqes_carry_the_solicited_bit_and_a_failed_wqes_opcode() {
    for progress in [Progress::Manual, Progress::Background] {
        let (mut a, mut b) = pair(progress);
        for _ in 0..6 {
            b.qp.post_recv(&[b.mr.sge(0, 64)]).unwrap();
        }
        a.qp.post(&Send::inline(b"s").solicited()).unwrap();
        a.qp.post(&Send::inline(b"n")).unwrap();
        a.qp.post(&SendImm::inline(b"s", 1).solicited()).unwrap();
        a.qp.post(&WriteImm::inline(b.mr.remote(0), b"s", 2).solicited())
            .unwrap();
        a.qp.post(&WriteImm::inline(b.mr.remote(0), b"n", 3))
            .unwrap();
        a.qp.ring_doorbell();
        a.ctx.progress_until_idle().unwrap();
        let got: Vec<(Kind, bool)> = b.expect(5).iter().map(|c| (c.kind, c.solicited)).collect();
        assert_eq!(
            got,
            [
                (Kind::RecvSend, true),
                (Kind::RecvSend, false),
                (Kind::RecvSendImm, true),
                (Kind::RecvWriteImm, true),
                (Kind::RecvWriteImm, false),
            ]
        );
        // A requester error CQE names the failed WQE's opcode.
        let mut r = b.mr.remote(0);
        r.rkey ^= 0xff;
        a.qp.post_and_ring(&Read::new(r, &[a.mr.sge(0, 8)]))
            .unwrap();
        let c = first_error(&mut a);
        assert_eq!(
            (c.kind, c.syndrome),
            (
                Kind::SendError {
                    opcode: opcode::RDMA_READ
                },
                Some(Syndrome::RemoteAccess)
            )
        );
    }
}

#[test]
fn a_responder_not_yet_connected_is_retried_as_a_nic_retransmits() {
    let (ca, cb) = (
        Context::soft(Progress::Manual),
        Context::soft(Progress::Manual),
    );
    let mut a = end(&ca, QpCaps::default(), 64, 4096, Access::ALL);
    let mut b = end(&cb, QpCaps::default(), 64, 4096, Access::ALL);
    let o = ConnectOpts {
        retry_cnt: 3,
        ..ConnectOpts::default()
    };
    let (ia, ib) = (a.qp.local_info(&o).unwrap(), b.qp.local_info(&o).unwrap());
    a.qp.connect(&ib, &o).unwrap();
    // b is still in RESET: its NIC drops the request, a retransmits.
    a.qp.post_and_ring(&Write::inline(b.mr.remote(0), b"late").signaled())
        .unwrap();
    // Manual progress: one try per pass; retry_cnt 3 allows four.
    for attempt in 0..3 {
        ca.progress().unwrap();
        assert_eq!(a.cq.poll(8, |_| {}).unwrap(), 0, "attempt {attempt}");
        assert_eq!(a.qp.state(), QpState::Rts);
    }
    b.qp.connect(&ia, &o).unwrap();
    assert_eq!(a.expect(1)[0].status(), Ok(()));
    assert_eq!(read(&b, 0, 4), b"late");

    // A responder that never comes: retry_cnt retransmissions, then
    // TransportRetryExceeded.
    let mut c = end(&cb, QpCaps::default(), 64, 4096, Access::ALL);
    let mut d = end(&ca, QpCaps::default(), 64, 4096, Access::ALL);
    d.qp.connect(&c.qp.local_info(&o).unwrap(), &o).unwrap();
    d.qp.post_and_ring(&Write::inline(c.mr.remote(0), b"x").signaled())
        .unwrap();
    for attempt in 0..3 {
        ca.progress().unwrap();
        assert_eq!(d.cq.poll(8, |_| {}).unwrap(), 0, "attempt {attempt}");
    }
    ca.progress().unwrap();
    let mut got = None;
    d.cq.poll(8, |x| got = Some(*x)).unwrap();
    assert_eq!(
        got.expect("a completion after the last try").syndrome,
        Some(Syndrome::TransportRetryExceeded)
    );
    let _ = c.drain();
}

#[test]
fn peer_gone_is_transport_retry_exceeded() {
    let (mut a, b) = pair(Progress::Manual);
    drop(b);
    a.qp.post_and_ring(&Write::inline(Remote { addr: 0, rkey: 1 }, b"x"))
        .unwrap();
    assert_eq!(
        first_error(&mut a).syndrome,
        Some(Syndrome::TransportRetryExceeded)
    );
}

#[test]
fn cq_overrun_is_reported_not_silent() {
    let (mut a, b) = pair_with(Progress::Manual, QpCaps::default(), 4);
    for _ in 0..6 {
        a.qp.post(&Write::inline(b.mr.remote(0), b"x").signaled())
            .unwrap();
    }
    a.qp.ring_doorbell();
    a.ctx.progress_until_idle().unwrap();
    assert!(matches!(a.cq.poll(16, |_| {}), Err(Error::CqOverrun(_))));
}

#[test]
fn posting_before_rts_and_bad_transitions_are_errors() {
    let ctx = Context::soft(Progress::Manual);
    let mut e = end(&ctx, QpCaps::default(), 16, 64, Access::ALL);
    assert!(matches!(
        e.qp.post(&Nop::new()),
        Err(Error::BadState {
            state: QpState::Reset,
            ..
        })
    ));
    assert!(matches!(e.qp.post_recv(&[]), Err(Error::BadState { .. })));
    assert!(matches!(
        e.qp.to_rts(&ConnectOpts::default()),
        Err(Error::InvalidTransition { .. })
    ));
    e.qp.to_init(&ConnectOpts::default()).unwrap();
    e.qp.post_recv(&[]).unwrap();
    assert!(matches!(
        e.qp.post(&Nop::new()),
        Err(Error::BadState {
            state: QpState::Init,
            ..
        })
    ));
}

#[test]
fn limits_are_checked_at_post() {
    let (mut a, b) = pair(Progress::Manual);
    let big = vec![0u8; a.qp.caps().max_inline as usize + 1];
    assert!(matches!(
        a.qp.post(&Write::inline(b.mr.remote(0), &big)),
        Err(Error::InlineTooLarge { .. })
    ));
    let sges = vec![a.mr.sge(0, 1); a.qp.caps().max_send_sge as usize + 1];
    assert!(matches!(
        a.qp.post(&Send::new(&sges)),
        Err(Error::TooManySges { .. })
    ));
}

#[test]
fn reset_makes_a_qp_reusable() {
    let (mut a, mut b) = pair(Progress::Manual);
    let mut r = b.mr.remote(0);
    r.rkey ^= 1;
    a.qp.post_and_ring(&Write::inline(r, b"x")).unwrap();
    first_error(&mut a);
    a.qp.reset().unwrap();
    b.qp.reset().unwrap();
    assert_eq!(a.qp.state(), QpState::Reset);
    let o = ConnectOpts::default();
    connect(&mut a.qp, &mut b.qp, &o, &o);
    a.qp.post_and_ring(&Write::inline(b.mr.remote(0), b"again").signaled())
        .unwrap();
    assert_eq!(a.expect(1)[0].status(), Ok(()));
    assert_eq!(read(&b, 0, 5), b"again");
}

#[test]
fn two_qps_on_one_device_talk() {
    let ctx = Context::soft(Progress::Background);
    let mut a = end(&ctx, QpCaps::default(), 64, 4096, Access::ALL);
    let mut b = end(&ctx, QpCaps::default(), 64, 4096, Access::ALL);
    let o = ConnectOpts::default();
    connect(&mut a.qp, &mut b.qp, &o, &o);
    b.qp.post_recv(&[]).unwrap();
    a.qp.post_and_ring(&WriteImm::inline(b.mr.remote(0), b"same", 3))
        .unwrap();
    assert_eq!(b.expect(1)[0].imm, 3);
    assert_eq!(read(&b, 0, 4), b"same");
}

#[test]
fn qps_run_from_several_threads_at_once() {
    let ca = Context::soft(Progress::Background);
    let cb = Context::soft(Progress::Background);
    let handles: Vec<_> = (0..4u8)
        .map(|t| {
            let (ca, cb) = (ca.clone(), cb.clone());
            std::thread::spawn(move || {
                let mut a = end(&ca, QpCaps::default(), 64, 4096, Access::ALL);
                let mut b = end(&cb, QpCaps::default(), 64, 4096, Access::ALL);
                let o = ConnectOpts::default();
                connect(&mut a.qp, &mut b.qp, &o, &o);
                for i in 0..300u32 {
                    b.qp.post_recv(&[]).unwrap();
                    let msg = [t, i as u8, (i >> 8) as u8];
                    a.qp.post_and_ring(&WriteImm::inline(b.mr.remote(0), &msg, i).signaled())
                        .unwrap();
                    let c = b.expect(1);
                    assert_eq!(c[0].imm, i);
                    assert_eq!(read(&b, 0, 3), msg);
                    a.expect(1);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn idle_background_device_sleeps() {
    let (_a, _b) = pair(Progress::Background);
    std::thread::sleep(std::time::Duration::from_millis(50));
    let cpu = || common::progress_thread_ticks(std::process::id());
    let before = cpu();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let used = cpu() - before;
    assert!(used <= 5, "idle device thread used {used} ticks in 0.5 s");
}

#[test]
fn selection_parses_names_and_rejects_garbage() {
    use mlx5::Selection;
    assert_eq!(
        Selection::parse("soft").unwrap(),
        Selection::Soft(Progress::Background)
    );
    assert_eq!(
        Selection::parse("soft:manual").unwrap(),
        Selection::Soft(Progress::Manual)
    );
    assert_eq!(Selection::parse("").unwrap(), Selection::Auto);
    assert_eq!(
        Selection::parse("mlx5_0").unwrap(),
        Selection::Hw(Some("mlx5_0".into()))
    );
    assert!(matches!(
        Selection::parse("mlx5 0; rm"),
        Err(Error::InvalidSelection(_))
    ));
    // A NIC name that names nothing here: whatever stops it (no library,
    // no RDMA in the kernel, no such device), the error names the device
    // asked for and the software device as the alternative.
    match Context::open(Selection::parse("bogus").unwrap()) {
        Err(e @ Error::NoDevice { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("\"bogus\"") && msg.contains("MLX5_DEVICE=soft"),
                "{msg}"
            );
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a NIC named bogus opened"),
    }
    use std::net::{Ipv4Addr, SocketAddrV4};
    let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    assert_eq!(
        Selection::parse("soft@tcp").unwrap(),
        Selection::SoftTcp(Progress::Background, any)
    );
    assert_eq!(
        Selection::parse("soft:manual@tcp:127.0.0.1").unwrap(),
        Selection::SoftTcp(Progress::Manual, "127.0.0.1:0".parse().unwrap())
    );
    assert_eq!(
        Selection::parse("soft@tcp:10.1.2.3:7000").unwrap(),
        Selection::SoftTcp(Progress::Background, "10.1.2.3:7000".parse().unwrap())
    );
    for bad in [
        "soft@udp",
        "soft@tcp:",
        "soft@tcp:host",
        "soft@tcp:1.2.3.4:99999",
        "soft@tcp1.2.3.4",
        "hw@tcp",
        "soft@tcp@tcp",
    ] {
        assert!(
            matches!(Selection::parse(bad), Err(Error::InvalidSelection(_))),
            "{bad}"
        );
    }
    // A TCP device advertises the address it listens on.
    let ctx = Context::open(Selection::parse("soft@tcp:127.0.0.1").unwrap()).unwrap();
    let a = ctx.soft_address().unwrap();
    assert!(
        a.starts_with("tcp:127.0.0.1:") && !a.starts_with("tcp:127.0.0.1:0 "),
        "{a}"
    );
    // No NIC here: hardware fails with an error that names the software device.
    match Context::open(Selection::Hw(None)) {
        Ok(ctx) => assert!(!ctx.is_soft()),
        Err(e) => assert!(e.to_string().contains("MLX5_DEVICE=soft"), "{e}"),
    }
    // Auto falls back to the software device when there is no NIC.
    let ctx = Context::open(Selection::Auto).unwrap();
    let _ = ctx.name();
}

#[test]
fn conn_info_round_trips_and_rejects_malformed_bytes() {
    use mlx5::ConnInfo;
    let ctx = Context::soft(Progress::Manual);
    let e = end(&ctx, QpCaps::default(), 4, 64, Access::ALL);
    let info = e.qp.local_info(&ConnectOpts::default()).unwrap();
    let bytes = info.encode();
    assert_eq!(ConnInfo::decode(&bytes).unwrap(), info);
    assert!(ConnInfo::decode(&bytes[..31]).is_err());
    let mut bad = bytes;
    bad[0] ^= 1;
    assert!(ConnInfo::decode(&bad).is_err());
    let mut bad = bytes;
    bad[11] = 0xff; // QPN over 24 bits
    assert!(ConnInfo::decode(&bad).is_err());
    // Unknown device address: a clear error at RTR, no panic.
    let mut other = end(&ctx, QpCaps::default(), 4, 64, Access::ALL);
    let mut ghost = info;
    ghost.gid[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    other.qp.to_init(&ConnectOpts::default()).unwrap();
    assert!(other.qp.to_rtr(&ghost, &ConnectOpts::default()).is_err());
}

#[test]
fn cq_of_another_device_is_refused() {
    let (c1, c2) = (
        Context::soft(Progress::Manual),
        Context::soft(Progress::Manual),
    );
    let pd = mlx5::Pd::new(&c1).unwrap();
    let cq = Cq::new(&c2, 4).unwrap();
    assert!(matches!(
        Qp::builder(&pd, &cq, &cq).build(),
        Err(Error::Mismatch(_))
    ));
}

#[test]
fn one_thread_posts_while_another_polls_and_retires_its_sends() {
    let caps = QpCaps {
        max_send_wr: 16,
        ..QpCaps::default()
    };
    let (a, mut b) = pair_with(Progress::Background, caps, 64);
    let End {
        ctx: _ctx,
        pd: _pd,
        mut cq,
        mut qp,
        mr,
    } = a;
    const N: u32 = 20_000;
    let remote = b.mr.remote(0);
    let poster = std::thread::spawn(move || {
        let mut i = 0u32;
        while i < N {
            // Every WQE signaled; space comes back only through the other
            // thread's polls.
            match qp.post(&Write::inline(remote, &i.to_le_bytes()).signaled()) {
                Ok(_) => {
                    i += 1;
                    if i.is_multiple_of(4) {
                        qp.ring_doorbell();
                    }
                }
                Err(Error::SendQueueFull { .. }) => {
                    qp.ring_doorbell();
                    std::hint::spin_loop();
                }
                Err(e) => panic!("{e}"),
            }
        }
        qp.ring_doorbell();
        (qp, mr)
    });
    let mut seen = 0u32;
    let mut last = None;
    let start = std::time::Instant::now();
    while seen < N {
        seen += cq
            .poll(64, |c| {
                assert_eq!(c.status(), Ok(()));
                if let Some(prev) = last {
                    assert_eq!(c.wqe_counter, u16::wrapping_add(prev, 1), "in order");
                }
                last = Some(c.wqe_counter);
            })
            .unwrap() as u32;
        assert!(start.elapsed() < TIMEOUT, "stalled at {seen}");
    }
    let (_qp, _mr) = poster.join().unwrap();
    assert_eq!(read(&b, 0, 4), (N - 1).to_le_bytes());
    assert!(b.drain().is_empty());
}

#[test]
fn destroying_a_busy_qp_is_safe_and_its_number_can_be_reused() {
    let (a, mut b) = pair(Progress::Background);
    let End {
        ctx,
        pd,
        mut cq,
        mut qp,
        mr,
    } = a;
    let old = qp.qpn();
    for i in 0..100u32 {
        qp.post(&Write::inline(b.mr.remote(0), &i.to_le_bytes()))
            .unwrap();
        if i % 10 == 9 {
            qp.ring_doorbell();
        }
    }
    drop(qp); // while the device may be executing its WQEs
    let mut fresh = Qp::builder(&pd, &cq, &cq).build().unwrap();
    assert_eq!(fresh.qpn(), old, "the number is reused");
    let mut peer = Qp::builder(&b.pd, &b.cq, &b.cq).build().unwrap();
    let o = ConnectOpts::default();
    connect(&mut fresh, &mut peer, &o, &o);
    peer.post_recv(&[]).unwrap();
    fresh
        .post_and_ring(&WriteImm::inline(b.mr.remote(64), b"new", 5).signaled())
        .unwrap();
    let mut seen = Vec::new();
    cq.poll_until(1, TIMEOUT, |c| seen.push(*c)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    cq.poll(16, |c| seen.push(*c)).unwrap();
    assert_eq!(seen.len(), 1, "only the new QP's completion: {seen:?}");
    assert_eq!((seen[0].status(), seen[0].wqe_counter), (Ok(()), 0));
    assert_eq!(b.expect(1)[0].imm, 5);
    drop((ctx, mr));
}

/// A send queue is at most `MAX_SQ_WQEBBS` (2^15) WQEBBs: the WQE counter
/// of doorbells and completions is 16 bits. Caps that need more are
/// refused at build; a queue of exactly that size, filled to the last
/// WQEBB three times (past the counter's wrap), completes every round.
#[test]
fn the_send_queue_stays_within_the_16_bit_wqe_counter() {
    assert_eq!(mlx5::MAX_SQ_WQEBBS, 1 << 15);
    let ctx = Context::soft(Progress::Manual);
    let pd = mlx5::Pd::new(&ctx).unwrap();
    let cq = mlx5::Cq::new(&ctx, 64).unwrap();
    // 200 inline bytes make WQEs of 4 WQEBBs: 8192 of them fill 2^15.
    let full = QpCaps {
        max_send_wr: 8192,
        max_inline: 200,
        ..QpCaps::default()
    };
    assert_eq!(full.sq_wqebbs(), 1 << 15);
    for too_big in [
        QpCaps {
            max_send_wr: 8193,
            ..full
        },
        QpCaps {
            max_send_wr: 16384,
            max_inline: 512,
            ..full
        },
    ] {
        let e = mlx5::Qp::builder(&pd, &cq, &cq)
            .caps(too_big)
            .build()
            .expect_err("a send queue over 2^15 WQEBBs");
        assert!(
            matches!(&e, Error::InvalidAttr(m) if m.contains("16 bits")),
            "{e}"
        );
    }
    let (mut a, b) = pair_with(Progress::Manual, full, 64);
    let data = [7u8; 200];
    for round in 0..3u8 {
        assert_eq!(a.qp.sq_free(), 1 << 15, "round {round}");
        let mut last = None;
        for i in 0..8192 {
            let w = Write::inline(b.mr.remote(0), &data);
            last = Some(if i == 8191 {
                a.qp.post(&w.signaled()).unwrap()
            } else {
                a.qp.post(&w).unwrap()
            });
        }
        assert_eq!(a.qp.sq_free(), 0, "round {round}: the queue is full");
        a.qp.ring_doorbell();
        let c = a.expect(1);
        assert_eq!(
            (c[0].status(), c[0].wqe_counter),
            (Ok(()), last.unwrap()),
            "round {round}"
        );
    }
    assert_eq!(read(&b, 0, 200), data);
}

/// A manual device whose pass found nothing to do skips its next passes
/// until something changes: each kind of change must still reach it. A
/// doorbell; a request of another device of this process that moves its
/// QP to ERROR (its receives must then be flushed, by its own pass); a
/// receive posted to that QP afterwards (flushed too).
#[test]
fn a_quiet_manual_device_still_sees_every_kind_of_new_work() {
    let (mut a, mut b) = pair(Progress::Manual);
    b.qp.post_recv(&[b.mr.sge(0, 16)]).unwrap();
    let quiet = |e: &mut End| {
        for _ in 0..3 {
            assert!(e.drain().is_empty());
        }
    };
    quiet(&mut b);
    let sge = [b.mr.sge(64, 8)];
    b.qp.post_and_ring(&Write::new(a.mr.remote(0), &sge).signaled())
        .unwrap();
    assert_eq!(b.expect(1)[0].status(), Ok(()), "a doorbell");
    quiet(&mut b);
    quiet(&mut a);
    let mut r = b.mr.remote(0);
    r.rkey ^= 0xff;
    a.qp.post_and_ring(&Write::inline(r, b"x")).unwrap();
    assert_eq!(first_error(&mut a).syndrome, Some(Syndrome::RemoteAccess));
    let flushed = b.expect(1);
    assert_eq!(
        (flushed[0].kind, flushed[0].syndrome),
        (Kind::RecvError, Some(Syndrome::WrFlush)),
        "the receive of a QP another device's request moved to ERROR"
    );
    quiet(&mut b);
    b.qp.post_recv(&[]).unwrap();
    let flushed = b.expect(1);
    assert_eq!(
        (flushed[0].kind, flushed[0].syndrome),
        (Kind::RecvError, Some(Syndrome::WrFlush)),
        "a receive posted to a QP in ERROR"
    );
}
