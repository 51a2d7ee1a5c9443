//! The software device across two OS processes: this test process and an
//! `mlx5-peer` child it spawns and drives over stdin/stdout.
//!
//! Every test runs twice, over each kind of same-host link: `over_shm::*`
//! (shared-memory rings, the default) and `over_socket::*` (the peer
//! started with `--link socket`, so the frames go through the unix
//! socket). `setup` checks that the link is of the kind the test is for.

mod common;

use std::io::Write as _;
use std::time::{Duration, Instant};

use common::pair::{End, end};
use mlx5::peer::{PeerProcess, fnv1a as fnv, hex, pattern, stream_len, unhex};
use mlx5::wqe::{AtomicCas, AtomicFa, Read, Send, SendImm, Write, WriteImm};
use mlx5::{
    Access, ConnectOpts, Context, Kind, LinkKind, Progress, QpCaps, QpState, Remote, Selection,
    Syndrome,
};

/// The software device's wire version (`mlx5/src/soft/wire.rs`).
const WIRE: u16 = 3;

const PEER: &str = env!("CARGO_BIN_EXE_mlx5-peer");

thread_local! {
    /// The same-host link kind of the running test (each test runs on
    /// its own thread).
    static LINK: std::cell::Cell<LinkKind> = const { std::cell::Cell::new(LinkKind::Shm) };
}

/// Runs test `f` with peers linked over `kind`.
fn over(kind: LinkKind, f: fn()) {
    LINK.set(kind);
    f();
}

/// An `mlx5-peer` on `device` with `qps` QPs and an MR of `mr_len` bytes,
/// linking to this process over the running test's link kind.
fn spawn(device: &str, qps: usize, mr_len: usize, sq: u32, rq: u32) -> PeerProcess {
    let link = match LINK.get() {
        LinkKind::Unix => "socket",
        _ => "shm",
    };
    PeerProcess::spawn(
        PEER,
        &["--device", device, "--link", link],
        qps,
        mr_len,
        sq,
        rq,
    )
}

/// Asserts that this side's link to `peer` is of the running test's kind
/// (tcp devices link over tcp whatever the kind), and that each side has
/// that one link: the peer connected first, so this side's connect must
/// find the link the peer opened, not open a second one.
fn check_link(ctx: &Context, peer: &mut PeerProcess) {
    let links = ctx.soft_links().expect("software device");
    let theirs = peer.cmd("links");
    assert_eq!(links.len(), 1, "{links:?}");
    let theirs_n = theirs
        .split_whitespace()
        .filter(|w| ["shm@", "unix@", "tcp@"].iter().any(|k| w.starts_with(k)))
        .count();
    assert_eq!(theirs_n, 1, "the peer's links: {theirs}");
    let tcp = theirs.contains("tcp@");
    let want = if tcp { LinkKind::Tcp } else { LINK.get() };
    assert!(
        links.iter().any(|l| l.kind == want),
        "no {want} link: {links:?} (peer: {theirs})"
    );
    let tag = match want {
        LinkKind::Shm => "shm@",
        LinkKind::Unix => "unix@",
        LinkKind::Tcp => "tcp@",
    };
    assert!(theirs.contains(tag), "the peer's links: {theirs}");
}

fn unhex_ok(s: &str) -> Vec<u8> {
    unhex(s).expect("hex from the peer")
}

fn caps(sq: u32, rq: u32) -> QpCaps {
    QpCaps {
        max_send_wr: sq,
        max_recv_wr: rq,
        ..QpCaps::default()
    }
}

/// A background device here, QP 0 of a fresh peer connected to it.
fn setup(device: &str, opts: &ConnectOpts) -> (End, PeerProcess) {
    setup_on(device, device, opts)
}

/// A device `mine` here, QP 0 of a fresh peer on device `theirs`
/// connected to it.
fn setup_on(mine: &str, theirs: &str, opts: &ConnectOpts) -> (End, PeerProcess) {
    let ctx = Context::open(Selection::parse(mine).expect("selection")).expect("device");
    let mut me = end(&ctx, caps(64, 64), 256, 1 << 20, Access::ALL);
    let mut peer = spawn(theirs, 1, 1 << 20, 64, 64);
    let mine = me.qp.local_info(opts).expect("info");
    peer.connect(0, &mine);
    me.qp.connect(&peer.infos[0], opts).expect("connect");
    check_link(&me.ctx, &mut peer);
    (me, peer)
}

fn ok_one(e: &mut End, opcode: u8) {
    let c = e.expect(1);
    assert_eq!(c[0].status(), Ok(()), "{c:?}");
    assert_eq!(c[0].kind, Kind::Send { opcode });
}

/// A signaled inline WRITE of `bytes` to `to`, completed without error.
fn write_ok(e: &mut End, to: Remote, bytes: &[u8]) {
    e.qp.post_and_ring(&Write::inline(to, bytes).signaled())
        .unwrap();
    ok_one(e, mlx5::wqe::opcode::RDMA_WRITE);
}

fn every_opcode(device: &str) {
    use mlx5::wqe::opcode;
    let (mut me, mut peer) = setup(device, &ConnectOpts::default());
    let data: Vec<u8> = (0..8192u64).map(|i| pattern(7, i)).collect();
    // SAFETY: no WQE that reads or writes these bytes is in flight.
    unsafe { me.mr.write(0, &data) };

    // WRITE from an SGE, checked by the peer.
    me.qp
        .post_and_ring(&Write::new(peer.remote(4096), &[me.mr.sge(0, 8192)]).signaled())
        .unwrap();
    ok_one(&mut me, opcode::RDMA_WRITE);
    assert_eq!(peer.cmd("hash 4096 8192"), format!("{:016x}", fnv(&data)));

    // WRITE gathered from two SGEs, in list order.
    let sges = [me.mr.sge(5000, 3000), me.mr.sge(100, 1000)];
    me.qp
        .post_and_ring(&Write::new(peer.remote(40000), &sges).signaled())
        .unwrap();
    ok_one(&mut me, opcode::RDMA_WRITE);
    let gathered = [&data[5000..8000], &data[100..1100]].concat();
    assert_eq!(
        peer.cmd("hash 40000 4000"),
        format!("{:016x}", fnv(&gathered))
    );

    // WRITE inline.
    me.qp
        .post_and_ring(&Write::inline(peer.remote(100), b"inline bytes").signaled())
        .unwrap();
    ok_one(&mut me, opcode::RDMA_WRITE);
    assert_eq!(peer.cmd("hex 100 12"), hex(b"inline bytes"));

    // WRITE_IMM consumes a receive there.
    peer.cmd("recv 0 1 0 0");
    me.qp
        .post_and_ring(&WriteImm::new(peer.remote(20000), &[me.mr.sge(10, 300)], 0xabcd).signaled())
        .unwrap();
    ok_one(&mut me, opcode::RDMA_WRITE_IMM);
    let c = peer.cmd("poll 1 5000");
    assert!(c.starts_with("RecvWriteImm/"), "{c}");
    assert!(c.ends_with("/300/43981/ok"), "{c}");
    assert_eq!(peer.cmd("hex 20000 300"), hex(&data[10..310]));

    // SEND and SEND_IMM scatter into the peer's receive buffer.
    peer.cmd("recv 0 2 30000 1000");
    me.qp
        .post_and_ring(&Send::new(&[me.mr.sge(0, 700)]).signaled())
        .unwrap();
    ok_one(&mut me, opcode::SEND);
    me.qp
        .post_and_ring(
            &SendImm::new(&[me.mr.sge(700, 50)], 99)
                .signaled()
                .solicited(),
        )
        .unwrap();
    ok_one(&mut me, opcode::SEND_IMM);
    let c = peer.cmd("poll 2 5000");
    let v: Vec<&str> = c.split(' ').collect();
    assert!(
        v[0].starts_with("RecvSend/") && v[0].ends_with("/700/0/ok"),
        "{c}"
    );
    // The solicited-event bit travels with the request.
    assert!(
        v[1].starts_with("RecvSendImm/") && v[1].ends_with("/50/99/ok+se"),
        "{c}"
    );
    // The second receive landed on the same offset: the SEND_IMM's bytes.
    assert_eq!(peer.cmd("hex 30000 50"), hex(&data[700..750]));

    // READ peer memory the peer filled.
    peer.cmd("fill 50000 5000 3");
    me.qp
        .post_and_ring(&Read::new(peer.remote(50000), &[me.mr.sge(100_000, 5000)]).signaled())
        .unwrap();
    ok_one(&mut me, opcode::RDMA_READ);
    let mut got = vec![0u8; 5000];
    // SAFETY: the WQEs that wrote these bytes have completed (their
    // completions were polled) and none is in flight to them.
    unsafe { me.mr.read(100_000, &mut got) };
    let want: Vec<u8> = (0..5000u64).map(|i| pattern(3, i)).collect();
    assert_eq!(got, want);

    // Atomics on a word the peer set, then checks.
    peer.cmd("set64 64 1000");
    me.qp
        .post_and_ring(
            &AtomicCas::new(peer.remote(64), me.mr.sge(200_000, 8), 1000, 2024).signaled(),
        )
        .unwrap();
    ok_one(&mut me, opcode::ATOMIC_CS);
    let mut orig = [0u8; 8];
    // SAFETY: the WQEs that wrote these bytes have completed (their
    // completions were polled) and none is in flight to them.
    unsafe { me.mr.read(200_000, &mut orig) };
    assert_eq!(u64::from_be_bytes(orig), 1000);
    assert_eq!(peer.cmd("get64 64"), "2024");
    // A failing compare returns the value and leaves it.
    me.qp
        .post_and_ring(&AtomicCas::new(peer.remote(64), me.mr.sge(200_008, 8), 1, 5).signaled())
        .unwrap();
    ok_one(&mut me, opcode::ATOMIC_CS);
    // SAFETY: the WQEs that wrote these bytes have completed (their
    // completions were polled) and none is in flight to them.
    unsafe { me.mr.read(200_008, &mut orig) };
    assert_eq!(u64::from_be_bytes(orig), 2024);
    assert_eq!(peer.cmd("get64 64"), "2024");
    me.qp
        .post_and_ring(&AtomicFa::new(peer.remote(64), me.mr.sge(200_016, 8), 76).signaled())
        .unwrap();
    ok_one(&mut me, opcode::ATOMIC_FA);
    // SAFETY: the WQEs that wrote these bytes have completed (their
    // completions were polled) and none is in flight to them.
    unsafe { me.mr.read(200_016, &mut orig) };
    assert_eq!(u64::from_be_bytes(orig), 2024);
    assert_eq!(peer.cmd("get64 64"), "2100");

    // A bad rkey is rejected by the target device: remote access error.
    let bad = Remote {
        addr: peer.mr.addr,
        rkey: peer.mr.rkey ^ 0x100,
    };
    me.qp
        .post_and_ring(&Write::new(bad, &[me.mr.sge(0, 64)]).signaled())
        .unwrap();
    let c = me.expect(1);
    assert_eq!(c[0].status(), Err(Syndrome::RemoteAccess));
    assert_eq!(me.qp.state(), QpState::Error);
    // Class C: the target QP fails too, and its owner hears of it.
    assert_eq!(peer.cmd("state 0"), "Error");
    let ev = peer.cmd("event 5000");
    assert!(ev.starts_with("QpAccessError{qpn:"), "{ev}");
    // Out of bounds on the peer's MR as well (on a fresh pair).
    let (mut me, mut peer) = setup(device, &ConnectOpts::default());
    me.qp
        .post_and_ring(&Read::new(peer.remote((1 << 20) - 8), &[me.mr.sge(0, 64)]).signaled())
        .unwrap();
    assert_eq!(me.expect(1)[0].status(), Err(Syndrome::RemoteAccess));
    assert_eq!(peer.cmd("state 0"), "Error");
    // A misaligned atomic is an invalid request, on both sides.
    let (mut me, mut peer) = setup(device, &ConnectOpts::default());
    me.qp
        .post_and_ring(&AtomicFa::new(peer.remote(4), me.mr.sge(0, 8), 1).signaled())
        .unwrap();
    assert_eq!(me.expect(1)[0].status(), Err(Syndrome::RemoteInvalRequest));
    assert_eq!(peer.cmd("state 0"), "Error");
    let ev = peer.cmd("event 5000");
    assert!(ev.starts_with("QpRequestError{qpn:"), "{ev}");
}

fn every_opcode_across_processes_unix() {
    every_opcode("soft");
}

#[test]
fn every_opcode_across_processes_tcp() {
    every_opcode("soft@tcp:127.0.0.1");
}

fn peer_killed_mid_stream() {
    let o = ConnectOpts::default();
    let (mut me, mut peer) = setup("soft", &o);
    let mut done = 0u64;
    let mut posted = 0u64;
    let mut killed_at = None;
    let mut statuses = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Stream WRITEs (every fourth signaled), kill the peer after 2000.
    while statuses.is_empty() || me.qp.state() != QpState::Error {
        assert!(Instant::now() < deadline, "no error after the kill");
        if posted == 2000 && killed_at.is_none() {
            peer.child.kill().expect("SIGKILL the peer");
            killed_at = Some(Instant::now());
        }
        while me.qp.sq_free() >= 4 && me.qp.state() == QpState::Rts && posted < 1_000_000 {
            let sge = [me.mr.sge(0, 64)];
            let w = Write::new(peer.remote(posted % 1000 * 64), &sge);
            let w = if posted % 4 == 3 { w.signaled() } else { w };
            if me.qp.post(&w).is_err() {
                break;
            }
            posted += 1;
            if posted == 2000 {
                break;
            }
        }
        me.qp.ring_doorbell();
        for c in me.drain() {
            match c.status() {
                Ok(()) => done += 1,
                Err(s) => statuses.push(s),
            }
        }
    }
    let since = killed_at.expect("killed").elapsed();
    assert!(done > 0, "some WRITEs completed before the kill");
    // One transport error, then flushes (if anything else was queued).
    assert_eq!(
        statuses[0],
        Syndrome::TransportRetryExceeded,
        "{statuses:?}"
    );
    assert!(statuses[1..].iter().all(|s| *s == Syndrome::WrFlush));
    // A later WQE is flushed too.
    me.qp
        .post_and_ring(&Write::new(peer.remote(0), &[me.mr.sge(0, 8)]).signaled())
        .expect("an ERROR QP accepts WQEs (and flushes them)");
    assert_eq!(me.expect(1)[0].status(), Err(Syndrome::WrFlush));
    eprintln!("error {since:?} after the SIGKILL, {done} signaled WRITEs completed first");
    assert!(since < Duration::from_secs(10));
}

/// Eight signaled WRITE_IMMs pipelined into the peer's QP 0, which has no
/// receives (RNR NAKs): nothing completes until receives arrive, one at a
/// time; then every WQE completes, in order.
fn pipelined_into_no_receives(me: &mut End, peer: &mut PeerProcess) {
    for i in 0..8u32 {
        me.qp
            .post(&WriteImm::inline(peer.remote(u64::from(i) * 8), &i.to_le_bytes(), i).signaled())
            .unwrap();
    }
    me.qp.ring_doorbell();
    std::thread::sleep(Duration::from_millis(50));
    assert!(me.drain().is_empty(), "nothing completes without receives");
    for k in 0..8 {
        peer.cmd("recv 0 1 0 0");
        let c = peer.cmd("poll 1 5000");
        assert!(c.ends_with(&format!("/4/{k}/ok")), "{c}");
    }
    let c = me.expect(8);
    assert!(c.iter().all(|c| c.status().is_ok()), "{c:?}");
    let idx: Vec<u16> = c.iter().map(|c| c.wqe_counter).collect();
    let mut sorted = idx.clone();
    sorted.sort();
    assert_eq!(idx, sorted);
}

/// A background device here and a peer connected to it that asks for short
/// RNR waits (timer 1 = 10 µs); with `second_link`, this side opens a link
/// of its own beside the peer's.
fn rnr_setup(second_link: bool) -> (End, PeerProcess) {
    let ctx = Context::soft(Progress::Background);
    let mut me = end(&ctx, caps(64, 64), 256, 1 << 16, Access::ALL);
    let mut peer = spawn("soft", 1, 1 << 16, 64, 64);
    let o = ConnectOpts::default();
    peer.cmd(&format!(
        "connect 0 {} 1",
        hex(&me.qp.local_info(&o).unwrap().encode())
    ));
    if second_link {
        ctx.faults().unwrap().open_a_second_link_on_next_connect();
    }
    me.qp.connect(&peer.infos[0], &o).unwrap();
    (me, peer)
}

fn rnr_across_processes_retries_in_order() {
    let (mut me, mut peer) = rnr_setup(false);
    pipelined_into_no_receives(&mut me, &mut peer);

    // With rnr_retry = 1 and receives withheld: RnrRetryExceeded.
    let ctx = Context::soft(Progress::Background);
    let mut me = end(&ctx, caps(64, 64), 256, 1 << 16, Access::ALL);
    let mut peer = spawn("soft", 1, 1 << 16, 64, 64);
    let o = ConnectOpts {
        rnr_retry: 1,
        ..ConnectOpts::default()
    };
    peer.cmd(&format!(
        "connect 0 {} 1",
        hex(&me.qp.local_info(&o).unwrap().encode())
    ));
    peer.cmd("recv 0 4 0 0");
    peer.cmd("withhold 0 1");
    me.qp.connect(&peer.infos[0], &o).unwrap();
    me.qp
        .post_and_ring(&WriteImm::inline(peer.remote(0), b"x", 1).signaled())
        .unwrap();
    assert_eq!(me.expect(1)[0].status(), Err(Syndrome::RnrRetryExceeded));
}

fn many_qps_share_one_link() {
    const N: usize = 16;
    let ctx = Context::soft(Progress::Background);
    let pd = mlx5::Pd::new(&ctx).unwrap();
    let mut cq = mlx5::Cq::new(&ctx, 1024).unwrap();
    let mr = pd.alloc_mr(N * 4096, Access::ALL).unwrap();
    let mut peer = spawn("soft", N, N * 4096, 16, 16);
    let o = ConnectOpts::default();
    let mut qps = Vec::new();
    for i in 0..N {
        let mut qp = mlx5::Qp::builder(&pd, &cq, &cq)
            .caps(caps(16, 16))
            .build()
            .unwrap();
        peer.connect(i, &qp.local_info(&o).unwrap());
        qp.connect(&peer.infos[i], &o).unwrap();
        qps.push(qp);
    }
    for (i, qp) in qps.iter_mut().enumerate() {
        let b: Vec<u8> = (0..4096u64).map(|j| pattern(i as u64, j)).collect();
        // SAFETY: no WQE that reads or writes these bytes is in flight.
        unsafe { mr.write(i * 4096, &b) };
        qp.post_and_ring(
            &Write::new(peer.remote(i as u64 * 4096), &[mr.sge(i * 4096, 4096)]).signaled(),
        )
        .unwrap();
    }
    let mut n = 0;
    cq.poll_until(N, Duration::from_secs(10), |c| {
        assert_eq!(c.status(), Ok(()));
        n += 1;
    })
    .unwrap();
    assert_eq!(n, N);
    for i in 0..N {
        let b: Vec<u8> = (0..4096u64).map(|j| pattern(i as u64, j)).collect();
        assert_eq!(
            peer.cmd(&format!("hash {} 4096", i * 4096)),
            format!("{:016x}", fnv(&b))
        );
    }
    let st = ctx.wire_stats().unwrap();
    assert_eq!(st.links, 1, "{st:?}");
    // A REQ per WRITE; their ACKs, queued together, may share frames
    // (how many depends on timing), but every frame one side sent the
    // other received: all WRITEs completed, so every answer arrived.
    assert_eq!(st.frames_sent, N as u64, "{st:?}");
    let theirs = peer_wire(&mut peer);
    assert_eq!(
        theirs[..2],
        [st.frames_received, st.frames_sent],
        "the peer's frames sent and received against ours: {st:?}"
    );
    assert!((1..=N as u64).contains(&st.frames_received), "{st:?}");
    let shm = if LINK.get() == LinkKind::Shm { 1 } else { 0 };
    assert_eq!(st.shm_links, shm, "{st:?}");
}

fn long_run_wraps_queues_and_checks_every_byte() {
    // 20 000 WRITE_IMMs of 1..=2048 bytes through a 64-WQE send queue and a
    // 128-entry CQ (hundreds of laps each); the peer checks every byte.
    const N: u64 = 20_000;
    const MAXLEN: usize = 2048;
    const WINDOW: usize = 32;
    let seed = 0x5eed;
    let ctx = Context::soft(Progress::Background);
    let mut me = end(&ctx, caps(64, 16), 128, MAXLEN * 64, Access::ALL);
    let mut peer = spawn("soft", 1, MAXLEN * WINDOW, 64, WINDOW as u32 * 2);
    let o = ConnectOpts::default();
    peer.connect(0, &me.qp.local_info(&o).unwrap());
    me.qp.connect(&peer.infos[0], &o).unwrap();
    peer.send(&format!("stream 0 {N} {seed} {MAXLEN} {WINDOW}"));
    let mut k = 0u64;
    let mut completed = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while completed < N {
        if Instant::now() > deadline {
            let line = peer.line();
            panic!("stalled at {completed} (sent {k}); the peer says {line:?}");
        }
        while k < N && k - completed < 64 && me.qp.sq_free() >= 2 {
            let len = stream_len(seed, k, MAXLEN);
            let src = (k % 64) as usize * MAXLEN;
            let b: Vec<u8> = (0..len as u64).map(|j| pattern(seed ^ k, j)).collect();
            // SAFETY: no WQE that reads or writes these bytes is in flight.
            unsafe { me.mr.write(src, &b) };
            let slot = (k % WINDOW as u64) * MAXLEN as u64;
            let sge = [me.mr.sge(src, len as u32)];
            let w = WriteImm::new(peer.remote(slot), &sge, k as u32);
            // Every WQE signaled: its source slot is reused 64 WQEs later.
            me.qp.post(&w.signaled()).unwrap();
            k += 1;
        }
        me.qp.ring_doorbell();
        for c in me.drain() {
            assert_eq!(c.status(), Ok(()), "{c:?}");
            completed += 1;
        }
    }
    assert_eq!(peer.line(), "ok", "the peer's check");
}

fn partition_times_out_with_transport_retry_exceeded() {
    // ACK timeout 4.096 µs × 2^12 × (1 + 1) ≈ 34 ms.
    let o = ConnectOpts {
        timeout: 12,
        retry_cnt: 1,
        ..ConnectOpts::default()
    };
    let (mut me, peer) = setup("soft", &o);
    write_ok(&mut me, peer.remote(0), b"ping");
    let f = ctx_faults(&me);
    f.partition_peer(&peer.infos[0]).unwrap();
    let t = Instant::now();
    me.qp
        .post_and_ring(&Write::inline(peer.remote(0), b"lost").signaled())
        .unwrap();
    assert_eq!(
        me.expect(1)[0].status(),
        Err(Syndrome::TransportRetryExceeded)
    );
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(30), "{waited:?}");
    assert_eq!(me.qp.state(), QpState::Error);
}

/// An ACK timeout attribute of 0 waits for the answer forever (IBA's
/// "infinite", as on hardware; the software device once read it as
/// 4.096 µs, and a link the peer opened, as here, kept a default of
/// 537 ms): a partitioned peer never fails the WRITE, not in 700 ms, a
/// killed one still does (its link closes).
fn an_ack_timeout_of_zero_waits_until_the_peer_dies() {
    let o = ConnectOpts {
        timeout: 0,
        retry_cnt: 0,
        ..ConnectOpts::default()
    };
    let (mut me, mut peer) = setup("soft", &o);
    write_ok(&mut me, peer.remote(0), b"ping");
    ctx_faults(&me).partition_peer(&peer.infos[0]).unwrap();
    me.qp
        .post_and_ring(&Write::inline(peer.remote(0), b"lost").signaled())
        .unwrap();
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(700) {
        let c = me.drain();
        assert!(c.is_empty(), "{c:?} after {:?}", t.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(me.qp.state(), QpState::Rts);
    peer.child.kill().expect("SIGKILL the peer");
    assert_eq!(
        me.expect(1)[0].status(),
        Err(Syndrome::TransportRetryExceeded)
    );
}

fn ctx_faults(e: &End) -> mlx5::Faults {
    e.ctx.faults().expect("software device")
}

fn delayed_delivery_still_in_order() {
    let (mut me, mut peer) = setup("soft", &ConnectOpts::default());
    ctx_faults(&me).delay(Duration::from_millis(40));
    let t = Instant::now();
    for i in 0..16u64 {
        me.qp
            .post(&Write::inline(peer.remote(i * 8), &i.to_le_bytes()).signaled())
            .unwrap();
    }
    me.qp.ring_doorbell();
    let c = me.expect(16);
    assert!(t.elapsed() >= Duration::from_millis(40));
    assert!(c.windows(2).all(|w| w[0].wqe_counter < w[1].wqe_counter));
    let got = unhex_ok(&peer.cmd("hex 0 128"));
    for i in 0..16u64 {
        assert_eq!(got[i as usize * 8..][..8], i.to_le_bytes());
    }
    ctx_faults(&me).delay(Duration::ZERO);
}

fn fail_next_forces_the_syndrome_then_flushes() {
    let (mut me, peer) = setup("soft", &ConnectOpts::default());
    ctx_faults(&me)
        .fail_next(&me.qp, Syndrome::RemoteOp)
        .unwrap();
    for _ in 0..3 {
        me.qp
            .post(&Write::inline(peer.remote(0), b"x").signaled())
            .unwrap();
    }
    me.qp.ring_doorbell();
    let s: Vec<_> = me.expect(3).iter().map(|c| c.status()).collect();
    assert_eq!(
        s,
        [
            Err(Syndrome::RemoteOp),
            Err(Syndrome::WrFlush),
            Err(Syndrome::WrFlush)
        ]
    );
}

fn a_dead_peer_is_refused_at_connect_and_garbage_kills_only_its_link() {
    // A peer that exited: connecting to it is a clear error.
    let ctx = Context::soft(Progress::Background);
    let mut me = end(&ctx, caps(8, 8), 64, 4096, Access::ALL);
    let info = {
        let peer = spawn("soft", 1, 4096, 8, 8);
        peer.infos[0]
    };
    let e = me
        .qp
        .connect(&info, &ConnectOpts::default())
        .expect_err("the peer is gone");
    assert!(
        e.to_string().contains("cannot reach software device"),
        "{e}"
    );

    // A stranger that sends garbage to a device's socket: the device
    // drops that connection and carries on.
    let (mut me, peer) = setup("soft", &ConnectOpts::default());
    let name = me.ctx.soft_address().unwrap();
    let name = name.strip_prefix("unix:@").expect("a unix address");
    use std::os::linux::net::SocketAddrExt;
    let a = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
    let mut s = std::os::unix::net::UnixStream::connect_addr(&a).unwrap();
    s.write_all(&[0xff; 200]).unwrap();
    let mut buf = [0u8; 64];
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The acceptor closes it (a WELCOME refusal at most, then EOF).
    let mut total = 0;
    loop {
        match std::io::Read::read(&mut s, &mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            // Closing with our bytes unread resets the connection.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the device did not close the connection: {e}"),
        }
    }
    assert!(total <= 16);
    write_ok(&mut me, peer.remote(0), b"still fine");
}

fn manual_progress_across_processes() {
    // Manual on both sides (the peer steps its device between commands).
    let (mut me, mut peer) = setup("soft:manual", &ConnectOpts::default());
    peer.cmd("fill 0 256 11");
    me.qp
        .post_and_ring(&Read::new(peer.remote(0), &[me.mr.sge(0, 256)]).signaled())
        .unwrap();
    // expect() steps the manual device while it waits.
    ok_one(&mut me, mlx5::wqe::opcode::RDMA_READ);
    // Neither side ever sleeps: not one wake-up went over the link.
    assert_eq!(me.ctx.wire_stats().unwrap().wakeups, 0);
    let mut b = [0u8; 256];
    // SAFETY: the WQEs that wrote these bytes have completed (their
    // completions were polled) and none is in flight to them.
    unsafe { me.mr.read(0, &mut b) };
    assert!(
        b.iter()
            .enumerate()
            .all(|(i, &x)| x == pattern(11, i as u64))
    );
}

/// Manual devices on both sides, four receives posted on each, and the
/// peer in its `echo` loop: each WRITE_IMM sent to it comes back with the
/// same immediate, until immediate `u32::MAX`.
fn echo_setup() -> (End, PeerProcess) {
    let (mut me, mut peer) = setup("soft:manual", &ConnectOpts::default());
    start_echo(&mut me, &mut peer);
    (me, peer)
}

/// Four receives posted on each side, and the peer in its `echo` loop.
fn start_echo(me: &mut End, peer: &mut PeerProcess) {
    peer.cmd("recv 0 4 0 0");
    for _ in 0..4 {
        me.qp.post_recv(&[]).unwrap();
    }
    let back = me.mr.remote(0);
    peer.send(&format!("echo {} {}", back.addr, back.rkey));
}

/// `n` signaled WRITE_IMMs to the echoing peer, each waited for with its
/// echo, then the stop; `each` runs after every round trip but the last.
/// Returns the frames and the stores (or `write`s) this side made.
fn echo_ping_pong(
    me: &mut End,
    peer: &mut PeerProcess,
    n: u32,
    mut each: impl FnMut(&End, u32),
) -> (u64, u64) {
    let before = me.ctx.wire_stats().unwrap();
    for i in 0..=n {
        // Every request signaled: each must be ACKed to complete.
        let stop = i == n;
        let imm = if stop { u32::MAX } else { i };
        me.qp
            .post_and_ring(&WriteImm::inline(peer.remote(0), &i.to_le_bytes(), imm).signaled())
            .unwrap();
        let want = if stop { 1 } else { 2 };
        for c in me.expect(want) {
            assert_eq!(c.status(), Ok(()), "{c:?}");
            if c.kind == Kind::RecvWriteImm {
                assert_eq!(c.imm, i);
                me.qp.post_recv(&[]).unwrap();
            }
        }
        if !stop {
            each(me, i);
        }
    }
    assert_eq!(peer.line(), format!("ok {n}"));
    let after = me.ctx.wire_stats().unwrap();
    (
        after.frames_sent - before.frames_sent,
        after.writes - before.writes,
    )
}

/// A manual device keeps the ACKs of a pass that only answered for its
/// next pass: in a ping-pong, each side's ACK and its next request leave
/// in one store (or one `write`), and every request still completes.
fn a_manual_ping_pong_sends_each_ack_with_the_next_request() {
    const N: u32 = 300;
    let (mut me, mut peer) = echo_setup();
    let (frames, writes) = echo_ping_pong(&mut me, &mut peer, N, |me, i| {
        // The step that brought the echo kept its ACK for the next.
        assert!(me.ctx.answers_held(), "echo {i}: its ACK is held");
    });
    // N + 1 requests and N ACKs of the echoes.
    assert_eq!(frames, u64::from(2 * N + 1));
    assert!(
        writes <= u64::from(N + N / 10),
        "{writes} stores for {frames} frames: ACKs went alone"
    );
}

/// The plain ACKs of requests that asked for no completion wait on the
/// link for the next request: unsignaled WRITE_IMMs (every 16th
/// signaled, so the send queue retires) to the echoing peer, each round
/// with three idle steps between the echo and the next request; the
/// one-pass deferral alone would send each echo's ACK by itself in the
/// first of them. (The hold is made a second here, so that a test thread
/// preempted between two steps does not end it; it is 20 µs.) Then, with
/// no request to come: `progress_until_idle` sends a held ACK at once,
/// and plain steps send one by itself once its hold ends.
fn unsignaled_acks_wait_for_the_next_request() {
    const N: u32 = 300;
    let (mut me, mut peer) = echo_setup();
    let faults = ctx_faults(&me);
    faults.hold_acks_for(Duration::from_secs(1));
    let writes = |me: &End| me.ctx.wire_stats().unwrap().writes;
    let to = peer.remote(0);
    let echo = |me: &mut End, i: u32| {
        let bytes = i.to_le_bytes();
        let w = WriteImm::inline(to, &bytes, i);
        let signaled = i % 16 == 15;
        if signaled {
            me.qp.post_and_ring(&w.signaled()).unwrap();
        } else {
            me.qp.post_and_ring(&w).unwrap();
        }
        for c in me.expect(1 + usize::from(signaled)) {
            assert_eq!(c.status(), Ok(()), "{c:?}");
            if c.kind == Kind::RecvWriteImm {
                assert_eq!(c.imm, i);
                me.qp.post_recv(&[]).unwrap();
            }
        }
    };
    let before = writes(&me);
    for i in 0..N {
        echo(&mut me, i);
        for _ in 0..3 {
            me.ctx.progress().unwrap();
        }
    }
    let stores = writes(&me) - before;
    // The peer signals every 16th echo: its ACK is wanted at once (and
    // goes by itself at the first idle step); the others ride with the
    // next request.
    assert_eq!(
        stores,
        u64::from(N + N / 16),
        "stores for {N} requests: each unsignaled echo's ACK goes with the next"
    );
    // The peer echoes unsignaled (but every 16th): this echo's ACK is
    // held, and `progress_until_idle` sends it.
    echo(&mut me, N);
    assert!(me.ctx.answers_held());
    let w = writes(&me);
    me.ctx.progress_until_idle().unwrap();
    assert!(!me.ctx.answers_held());
    assert_eq!(writes(&me), w + 1, "the held ACK, alone");
    // Steps alone send the next held ACK once its hold ends.
    faults.hold_acks_for(Duration::from_millis(20));
    echo(&mut me, N + 1);
    let w = writes(&me);
    let deadline = Instant::now() + Duration::from_secs(5);
    while writes(&me) == w {
        assert!(Instant::now() < deadline, "the held ACK never left");
        me.ctx.progress().unwrap();
    }
    assert!(!me.ctx.answers_held());
    me.qp
        .post_and_ring(&WriteImm::inline(peer.remote(0), b"stop", u32::MAX).signaled())
        .unwrap();
    let c = me.expect(1);
    assert_eq!(c[0].status(), Ok(()));
    assert_eq!(peer.line(), format!("ok {}", N + 2));
}

/// A NOP, and then a WQE that fails locally, posted behind unsignaled
/// WRITEs complete a round trip later, not when the peer's ACK hold ends
/// (400 ms here, under this side's ACK timeout): the requester asks for
/// the held answers with an ACKREQ frame, as a NIC sets AckReq.
fn a_wqe_that_completes_locally_asks_for_the_acks_it_waits_for() {
    use mlx5::wqe::{Nop, opcode};
    let (mut me, mut peer) = setup("soft", &ConnectOpts::default());
    peer.cmd("hold-acks 400");
    write_ok(&mut me, peer.remote(0), b"up");
    let to = peer.remote(0);
    let unsignaled = |me: &mut End| {
        for i in 0..4 {
            let at = Remote {
                addr: to.addr + 64 * i,
                ..to
            };
            me.qp
                .post_and_ring(&Write::inline(at, b"unsignaled"))
                .unwrap();
        }
    };
    // Behind signaled WRITEs, whose ACKs come at once, no ACKREQ.
    let received = |peer: &mut PeerProcess| peer_wire(peer)[1];
    let before = received(&mut peer);
    for i in 0..4 {
        me.qp
            .post_and_ring(&Write::inline(peer.remote(64 * i), b"signaled").signaled())
            .unwrap();
    }
    me.qp.post_and_ring(&Nop::new().signaled()).unwrap();
    assert_eq!(me.expect(5).len(), 5);
    assert_eq!(received(&mut peer), before + 4, "four REQs, no ACKREQ");
    unsignaled(&mut me);
    let t = Instant::now();
    me.qp.post_and_ring(&Nop::new().signaled()).unwrap();
    ok_one(&mut me, opcode::NOP);
    let nop = t.elapsed();
    assert_eq!(
        received(&mut peer),
        before + 4 + 5,
        "four REQs and one ACKREQ"
    );
    unsignaled(&mut me);
    let bad = mlx5::wqe::Sge {
        lkey: 0xdead_beef,
        ..me.mr.sge(0, 8)
    };
    let t = Instant::now();
    me.qp
        .post_and_ring(&Write::new(peer.remote(0), &[bad]).signaled())
        .unwrap();
    let c = me.expect(1);
    let failed = t.elapsed();
    assert_eq!(c[0].status(), Err(Syndrome::LocalProt), "{c:?}");
    // The failed WRITE never left: four REQs and one ACKREQ again.
    assert_eq!(
        received(&mut peer),
        before + 4 + 5 + 5,
        "four REQs and one ACKREQ"
    );
    assert!(
        nop < Duration::from_millis(150) && failed < Duration::from_millis(150),
        "NOP after {nop:?}, local failure after {failed:?}: they waited for the ACK hold"
    );
}

/// An RNR NAK rewinds the flight an ACKREQ was sent for: the resent
/// requests are a new flight, whose held ACKs the waiting NOP asks for
/// again (without that it would wait out the peer's 2 s hold once
/// receives are there). The time measured includes a command to the peer
/// process, so its bound is half the hold: ample on a loaded host.
fn an_rnr_rewind_asks_again_for_the_acks_of_the_resent_flight() {
    use mlx5::wqe::{Nop, opcode};
    let (mut me, mut peer) = rnr_setup(false);
    peer.cmd("hold-acks 2000");
    for i in 0..2u32 {
        me.qp
            .post(&WriteImm::inline(
                peer.remote(u64::from(i) * 8),
                &i.to_le_bytes(),
                i,
            ))
            .unwrap();
    }
    me.qp.post(&Nop::new().signaled()).unwrap();
    me.qp.ring_doorbell();
    std::thread::sleep(Duration::from_millis(30));
    assert!(me.drain().is_empty(), "the NOP waits behind RNR NAKs");
    let t = Instant::now();
    peer.cmd("recv 0 2 0 0");
    ok_one(&mut me, opcode::NOP);
    let waited = t.elapsed();
    assert!(
        waited < Duration::from_millis(1000),
        "NOP after {waited:?}: the resent flight's ACKs were not asked for"
    );
    for k in 0..2 {
        let c = peer.cmd("poll 1 5000");
        assert!(c.ends_with(&format!("/4/{k}/ok")), "{c}");
    }
}

/// Two devices that connect to each other at the same moment each open a
/// link (forced here: this side opens a second one after the peer's): both
/// then send on the link whose connector has the lower address, so the
/// ACKs still leave with the next request in one store or `write` (each
/// side on its own link, no answer would share a record with a request).
fn two_links_to_one_peer_still_carry_each_ack_with_a_request() {
    const N: u32 = 300;
    let o = ConnectOpts::default();
    let ctx = Context::open(Selection::parse("soft:manual").expect("selection")).expect("device");
    let mut me = end(&ctx, caps(64, 64), 256, 1 << 20, Access::ALL);
    let mut peer = spawn("soft:manual", 1, 1 << 20, 64, 64);
    peer.connect(0, &me.qp.local_info(&o).expect("info"));
    ctx.faults().unwrap().open_a_second_link_on_next_connect();
    me.qp.connect(&peer.infos[0], &o).expect("connect");
    start_echo(&mut me, &mut peer);
    let (frames, writes) = echo_ping_pong(&mut me, &mut peer, N, |_, _| {});
    let st = me.ctx.wire_stats().unwrap();
    assert_eq!(st.links, 2, "{st:?}");
    assert_eq!(frames, u64::from(2 * N + 1));
    assert!(
        writes <= u64::from(N + N / 10),
        "{writes} stores for {frames} frames: requests and answers on different links"
    );
}

/// `open_a_second_link_on_next_connect` is for the next connect that
/// makes a link: one that fails (a device the peer process does not have)
/// leaves it for the next.
fn a_failed_connect_does_not_spend_the_second_link_asked_for() {
    let o = ConnectOpts::default();
    let ctx = Context::open(Selection::parse("soft:manual").expect("selection")).expect("device");
    let mut me = end(&ctx, caps(64, 64), 256, 1 << 20, Access::ALL);
    let mut other = end(&ctx, caps(64, 64), 256, 1 << 20, Access::ALL);
    let mut peer = spawn("soft:manual", 1, 1 << 20, 64, 64);
    peer.connect(0, &me.qp.local_info(&o).expect("info"));
    ctx.faults().unwrap().open_a_second_link_on_next_connect();
    let mut missing = peer.infos[0];
    missing.gid[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = other.qp.connect(&missing, &o).expect_err("no such device");
    assert_eq!(ctx.wire_stats().unwrap().links, 1, "{err}");
    me.qp.connect(&peer.infos[0], &o).expect("connect");
    assert_eq!(ctx.wire_stats().unwrap().links, 2);
}

/// RNR NAKs with WRITE_IMMs pipelined over two links to one peer: every
/// WQE still completes, in order, round after round. (The QP here moves
/// to the other link only when this process's device has the higher
/// address, about every other run; the rule that it moves only once the
/// old link awaits nothing of it, against a stale answer overtaking the
/// resent requests, comes from review: this test did not fail without
/// it in four runs.)
fn rnr_over_two_links_retries_in_order() {
    let (mut me, mut peer) = rnr_setup(true);
    for _ in 0..3 {
        pipelined_into_no_receives(&mut me, &mut peer);
    }
    assert_eq!(me.ctx.wire_stats().unwrap().links, 2);
}

/// A manual device dropped right after the pass that received a request
/// (its ACK deferred to the next pass, which never comes) sends the ACK as
/// its links close: the peer's WQE completes, its QP stays in RTS, and only
/// then does it see the link close.
fn a_dropped_manual_device_sends_the_acks_it_deferred() {
    let (mut me, mut peer) = echo_setup();
    // A message and the stop together: the peer echoes the first and
    // leaves its echo loop (its device is still stepped).
    me.qp
        .post(&WriteImm::inline(peer.remote(0), b"one", 1))
        .unwrap();
    me.qp
        .post(&WriteImm::inline(peer.remote(0), b"stop", u32::MAX))
        .unwrap();
    me.qp.ring_doorbell();
    let c = me.expect(1);
    assert_eq!((c[0].kind, c[0].imm), (Kind::RecvWriteImm, 1));
    assert_eq!(peer.line(), "ok 1");
    drop(me);
    let deadline = Instant::now() + Duration::from_secs(10);
    while peer.cmd("links").contains('@') {
        assert!(
            Instant::now() < deadline,
            "the peer never saw the link close"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(peer.cmd("state 0"), "Rts", "the echo's WQE was not ACKed");
}

fn a_malformed_frame_after_the_handshake_closes_that_link_only() {
    use std::io::Read as _;
    use std::os::linux::net::SocketAddrExt;
    let (mut me, peer) = setup("soft", &ConnectOpts::default());
    let info = me.qp.local_info(&ConnectOpts::default()).unwrap();
    let name = me.ctx.soft_address().unwrap();
    let name = name
        .strip_prefix("unix:@")
        .expect("a unix address")
        .to_string();
    let a = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
    let mut s = std::os::unix::net::UnixStream::connect_addr(&a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A well-formed HELLO from a made-up device of this process.
    let from = made_up_address(1);
    let mut hello = vec![40, 0, 0, 0, 1, 0, 0, 0];
    hello.extend_from_slice(b"M5SW");
    hello.extend_from_slice(&WIRE.to_le_bytes());
    hello.extend_from_slice(&[0, 0]);
    hello.extend_from_slice(&from);
    hello.extend_from_slice(&info.gid);
    s.write_all(&hello).unwrap();
    let mut welcome = [0u8; 16];
    s.read_exact(&mut welcome).unwrap();
    assert_eq!(welcome[..8], [8, 0, 0, 0, 2, 0, 0, 0]);
    assert_eq!(welcome[8], 0, "accepted");
    // A REQ whose payload disagrees with its length: protocol error. (No
    // payload: a stranger's REQ longer than its fixed part is refused
    // from its header alone.)
    let mut req = vec![56, 0, 0, 0, 3, 0, 0, 0];
    let mut body = [0u8; 56];
    body[16] = mlx5::wqe::opcode::RDMA_WRITE;
    body[32..36].copy_from_slice(&100u32.to_le_bytes());
    req.extend_from_slice(&body);
    s.write_all(&req).unwrap();
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(0) => {}
        Ok(_) => panic!("no answer expected to a malformed frame"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the device did not close the link: {e}"),
    }
    // The device and its real link carry on.
    write_ok(&mut me, peer.remote(8), b"alive");
}

fn drop_peer_fails_the_qps_and_refuses_reconnecting() {
    // A peer in another process.
    let (mut me, peer) = setup("soft", &ConnectOpts::default());
    write_ok(&mut me, peer.remote(0), b"before");
    ctx_faults(&me).drop_peer(&peer.infos[0]);
    me.qp
        .post_and_ring(&Write::inline(peer.remote(0), b"after").signaled())
        .unwrap();
    assert_eq!(
        me.expect(1)[0].status(),
        Err(Syndrome::TransportRetryExceeded)
    );
    assert_eq!(me.ctx.wire_stats().unwrap().links, 0);
    let mut again = end(&me.ctx, caps(8, 8), 64, 4096, Access::ALL);
    let e = again
        .qp
        .connect(&peer.infos[0], &ConnectOpts::default())
        .expect_err("dropped");
    assert!(e.to_string().contains("dropped by fault injection"), "{e}");
    drop(peer);

    // A peer in this process.
    let (mut a, b) = common::pair::pair(Progress::Background);
    let info_b = b.qp.local_info(&ConnectOpts::default()).unwrap();
    ctx_faults(&a).drop_peer(&info_b);
    a.qp.post_and_ring(&Write::inline(b.mr.remote(0), b"gone").signaled())
        .unwrap();
    assert_eq!(
        a.expect(1)[0].status(),
        Err(Syndrome::TransportRetryExceeded)
    );
    assert_eq!(a.qp.state(), QpState::Error);
}

fn an_idle_linked_device_sleeps_and_a_frame_wakes_it() {
    // This side steps its own (manual) device; the peer's device has
    // background progress, the thread measured here, in its own process.
    let (mut me, mut peer) = setup_on("soft:manual", "soft", &ConnectOpts::default());
    peer.cmd("fill 0 64 5");
    let pid = peer.child.id();
    std::thread::sleep(Duration::from_millis(100));
    let before = common::progress_thread_ticks(pid);
    std::thread::sleep(Duration::from_millis(500));
    let used = common::progress_thread_ticks(pid) - before;
    assert!(
        used <= 5,
        "the idle peer's device thread used {used} ticks in 0.5 s"
    );
    // After idling, a READ is answered as soon as its frame arrives: the
    // socket (over shared memory, the wake-up byte the sender puts on it
    // when it finds the peer asleep) wakes the sleeping thread (the
    // fallback timer is 100 ms).
    let mut waits = Vec::new();
    for _ in 0..9 {
        std::thread::sleep(Duration::from_millis(150));
        let t = Instant::now();
        me.qp
            .post_and_ring(&Read::new(peer.remote(0), &[me.mr.sge(0, 64)]).signaled())
            .unwrap();
        ok_one(&mut me, mlx5::wqe::opcode::RDMA_READ);
        waits.push(t.elapsed());
    }
    waits.sort();
    // Median under 20 ms: a thread that only woke on its timer would put
    // it near 50 ms.
    assert!(waits[4] < Duration::from_millis(20), "{waits:?}");
    // Over shared memory it was this side's wake-up byte that woke it.
    if LINK.get() == LinkKind::Shm {
        assert!(me.ctx.wire_stats().unwrap().wakeups > 0);
    }
    let mut b = [0u8; 64];
    // SAFETY: the WQEs that wrote these bytes have completed (their
    // completions were polled) and none is in flight to them.
    unsafe { me.mr.read(0, &mut b) };
    assert!(
        b.iter()
            .enumerate()
            .all(|(i, &x)| x == pattern(5, i as u64))
    );
}

/// A fake software device at a made-up address, served by this process:
/// the address, the listener, and the child process the address names. A
/// connector checks that the process listening on a unix address is the
/// one the address names, so a child (`sleep`, killed when the guard
/// drops) binds the name with its pid and listens, as a device of its
/// would; the socket is this process's too, and this process accepts on it.
fn fake_device(id: u32) -> ([u8; 16], std::os::unix::net::UnixListener, ChildGuard) {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    use std::os::unix::process::CommandExt as _;
    let id = 0x7f00_0000 + id;
    // SAFETY: a plain socket call; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = sock.as_raw_fd();
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("600");
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe calls (getpid, bind, listen) on stack data.
    unsafe {
        cmd.pre_exec(move || {
            // SAFETY: all-zero is a valid `sockaddr_un`.
            let mut a: libc::sockaddr_un = std::mem::zeroed();
            a.sun_family = libc::AF_UNIX as libc::sa_family_t;
            // An abstract name: a leading NUL, then `mlx5-soft.PID.ID`.
            let mut n = 1;
            let mut put = |b: &[u8]| {
                for &c in b {
                    a.sun_path[n] = c as libc::c_char;
                    n += 1;
                }
            };
            let mut digits = [0u8; 10];
            let mut num = |v: u32, put: &mut dyn FnMut(&[u8])| {
                let mut i = digits.len();
                let mut v = v;
                loop {
                    i -= 1;
                    digits[i] = b'0' + (v % 10) as u8;
                    v /= 10;
                    if v == 0 {
                        break;
                    }
                }
                put(&digits[i..]);
            };
            put(b"mlx5-soft.");
            num(libc::getpid() as u32, &mut put);
            put(b".");
            num(id, &mut put);
            let len = std::mem::size_of::<libc::sa_family_t>() + n;
            if libc::bind(raw, (&raw const a).cast(), len as libc::socklen_t) != 0
                || libc::listen(raw, 16) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = ChildGuard(cmd.spawn().expect("spawning the fake device's process"));
    let gid = unix_address(child.0.id(), id);
    (gid, std::os::unix::net::UnixListener::from(sock), child)
}

/// The connection info of QP 0x100 (PSN 0) of the fake device at `gid`.
fn fake_qp(gid: [u8; 16]) -> mlx5::ConnInfo {
    mlx5::ConnInfo {
        qpn: 0x100,
        psn: 0,
        lid: 0,
        gid,
    }
}

/// Kills and reaps a child process when dropped.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Accepts one connection on a fake device's listener and answers its
/// HELLO with a WELCOME that takes no shared memory (frames on the socket).
fn accept_as_device(l: &std::os::unix::net::UnixListener) -> std::os::unix::net::UnixStream {
    use std::io::Read as _;
    let (mut s, _) = l.accept().unwrap();
    let mut hello = [0u8; 48];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(hello[..8], [40, 0, 0, 0, 1, 0, 0, 0], "a HELLO");
    s.write_all(&[8, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        .unwrap();
    s
}

/// The abstract unix socket name of the software device at `gid`.
fn unix_name(gid: &[u8; 16]) -> String {
    assert_eq!(gid[..5], *b"SOFT\x01", "a unix software device address");
    let word = |i: usize| u32::from_le_bytes(gid[i..i + 4].try_into().unwrap());
    format!("mlx5-soft.{}.{}", word(8), word(12))
}

/// A unix software device address of a device that does not exist: this
/// process's (a device checks that a local connector, or the listener it
/// connects to, is the process the address names), with a device number
/// above any real device's.
fn made_up_address(id: u32) -> [u8; 16] {
    unix_address(std::process::id(), 0x7f00_0000 + id)
}

/// The unix software device address of device `id` of process `pid`.
fn unix_address(pid: u32, id: u32) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[0..4].copy_from_slice(b"SOFT");
    g[4] = 1;
    g[8..12].copy_from_slice(&pid.to_le_bytes());
    g[12..16].copy_from_slice(&id.to_le_bytes());
    g
}

/// A stranger: connects to the device at `to`, says HELLO from a made-up
/// address (no QP there is connected to it) and checks it is welcome.
fn stranger(to: &[u8; 16], id: u32) -> std::os::unix::net::UnixStream {
    let (s, welcome) = say_hello(to, &made_up_address(id));
    assert_eq!(welcome[..9], [8, 0, 0, 0, 2, 0, 0, 0, 0], "welcomed");
    s
}

/// The peer's `wire` answer: frames sent, frames received, links.
fn peer_wire(peer: &mut PeerProcess) -> Vec<u64> {
    peer.cmd("wire")
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect()
}

/// Connects to the device at `to` and says HELLO from the address `from`
/// (no shared memory offered): the socket and the device's WELCOME.
fn say_hello(to: &[u8; 16], from: &[u8; 16]) -> (std::os::unix::net::UnixStream, [u8; 16]) {
    use std::io::Read as _;
    let mut s = send_hello(to, from, WIRE);
    let mut welcome = [0u8; 16];
    s.read_exact(&mut welcome).unwrap();
    (s, welcome)
}

/// Connects to the device at `to` and sends a HELLO of wire `version` from
/// `from` (no shared memory offered).
fn send_hello(to: &[u8; 16], from: &[u8; 16], version: u16) -> std::os::unix::net::UnixStream {
    use std::os::linux::net::SocketAddrExt;
    let a = std::os::unix::net::SocketAddr::from_abstract_name(unix_name(to)).unwrap();
    let mut s = std::os::unix::net::UnixStream::connect_addr(&a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut hello = vec![40, 0, 0, 0, 1, 0, 0, 0];
    hello.extend_from_slice(b"M5SW");
    hello.extend_from_slice(&version.to_le_bytes());
    hello.extend_from_slice(&[0, 0]);
    hello.extend_from_slice(from);
    hello.extend_from_slice(to);
    s.write_all(&hello).unwrap();
    s
}

/// A HELLO of another wire version (2: REQs without the "ACK at once"
/// flag, whose requester would wait up to the ACK hold for ACKs it asked
/// a completion for, and no ACKREQ frame) gets no WELCOME and no link:
/// the device closes the socket, and the pair goes on.
fn a_hello_of_another_wire_version_is_refused() {
    let (mut me, mut peer) = setup("soft", &ConnectOpts::default());
    write_ok(&mut me, peer.remote(0), b"up");
    let links = peer_wire(&mut peer)[2];
    for version in [WIRE - 1, WIRE + 1] {
        let mut s = send_hello(&peer.infos[0].gid, &made_up_address(7), version);
        // Closed with nothing said: no WELCOME byte.
        let mut buf = [0u8; 16];
        match std::io::Read::read(&mut s, &mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("version {version}: {other:?}, {buf:?}"),
        }
    }
    assert_eq!(peer_wire(&mut peer)[2], links, "the peer adopted no link");
    write_ok(&mut me, peer.remote(0), b"still");
}

/// A local process that announces the address of a device of another
/// process (here: of the very device the peer's QP is connected to) is
/// refused at the handshake (WELCOME status 2) and gets no link; the pair
/// it posed as part of goes on.
fn a_local_impostor_is_refused_at_the_handshake() {
    let (mut me, mut peer) = setup("soft", &ConnectOpts::default());
    let mine = me.qp.local_info(&ConnectOpts::default()).unwrap().gid;
    write_ok(&mut me, peer.remote(0), b"up");
    let theirs = peer.infos[0].gid;
    let links = peer_wire(&mut peer)[2];
    let my_links = me.ctx.wire_stats().unwrap().links;
    // Posing as a device of another live process to the peer's device,
    // and as the peer's own device to this process's.
    // (Pid 1: a process that exists, and is neither of the two.)
    for (to, from) in [(theirs, unix_address(1, 1)), (mine, theirs)] {
        let (mut s, welcome) = say_hello(&to, &from);
        assert_eq!(welcome[..10], [8, 0, 0, 0, 2, 0, 0, 0, 2, 0], "refused");
        assert!(closed_within(&mut s, Duration::from_secs(5)));
    }
    assert_eq!(peer_wire(&mut peer)[2], links, "the peer adopted no link");
    assert_eq!(
        me.ctx.wire_stats().unwrap().links,
        my_links,
        "nor did this side"
    );
    write_ok(&mut me, peer.remote(0), b"still");
}

/// A unix address names a process, which only a unix socket can check:
/// announced over TCP it is refused (WELCOME status 2), and a device with
/// a unix address does not try (its connect says why).
#[test]
fn a_unix_address_is_not_taken_over_tcp() {
    use std::io::Read as _;
    let mut peer = spawn("soft@tcp:127.0.0.1", 1, 4096, 8, 8);
    let gid = peer.infos[0].gid;
    assert_eq!(gid[..5], *b"SOFT\x02", "a TCP software device address");
    let port = u16::from_be_bytes([gid[6], gid[7]]);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut hello = vec![40, 0, 0, 0, 1, 0, 0, 0];
    hello.extend_from_slice(b"M5SW");
    hello.extend_from_slice(&WIRE.to_le_bytes());
    hello.extend_from_slice(&[0, 0]);
    hello.extend_from_slice(&made_up_address(3));
    hello.extend_from_slice(&gid);
    s.write_all(&hello).unwrap();
    let mut welcome = [0u8; 16];
    s.read_exact(&mut welcome).unwrap();
    assert_eq!(welcome[..10], [8, 0, 0, 0, 2, 0, 0, 0, 2, 0], "refused");
    assert_eq!(peer_wire(&mut peer)[2], 0, "the peer adopted no link");
    let ctx = Context::soft(Progress::Background);
    let mut me = end(&ctx, caps(8, 8), 64, 4096, Access::ALL);
    let e = me
        .qp
        .connect(&peer.infos[0], &ConnectOpts::default())
        .expect_err("a unix device over TCP")
        .to_string();
    assert!(e.contains("over TCP") && e.contains("soft@tcp"), "{e}");
    assert_eq!(ctx.wire_stats().unwrap().links, 0);
}

/// A connector checks the listener too: an address whose abstract name is
/// bound by another process than the one it names (a stale address whose
/// name was taken) is refused at `connect`, with the reason.
#[test]
fn a_device_name_bound_by_another_process_is_refused_at_connect() {
    use std::os::linux::net::SocketAddrExt;
    // Pid 1 exists in every pid namespace and is not this process.
    let gid = unix_address(1, 0x7f00_0101);
    let a = std::os::unix::net::SocketAddr::from_abstract_name(unix_name(&gid)).unwrap();
    let _l = std::os::unix::net::UnixListener::bind_addr(&a).unwrap();
    let ctx = Context::soft(Progress::Background);
    let mut me = end(&ctx, caps(8, 8), 64, 4096, Access::ALL);
    let info = fake_qp(gid);
    let e = me
        .qp
        .connect(&info, &ConnectOpts::default())
        .expect_err("a listener that is not pid 1");
    let e = e.to_string();
    assert!(
        e.contains("refusing software device") && e.contains("not pid 1 "),
        "{e}"
    );
    assert_eq!(ctx.wire_stats().unwrap().links, 0);
}

/// Waits until the device closes `s` (EOF or reset), at most `within`.
fn closed_within(s: &mut std::os::unix::net::UnixStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match std::io::Read::read(s, &mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn a_hostile_frame_header_allocates_nothing_and_other_links_keep_working() {
    // A working pair between this process and a peer (one link), then a
    // stranger on a second link into the peer's device announces the
    // largest frame the wire format can describe and sends nothing more.
    let (mut me, peer) = setup("soft", &ConnectOpts::default());
    write_ok(&mut me, peer.remote(0), b"warm");
    let pid = peer.child.id();
    let before = rss_kib(pid);
    let mut s = stranger(&peer.infos[0].gid, 1);
    let mut header = ((1u32 << 31) + 56).to_le_bytes().to_vec();
    header.extend_from_slice(&[3, 0, 0, 0]);
    s.write_all(&header).unwrap();
    // The pair keeps working for three ACK timeouts (537 ms each).
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < Duration::from_millis(1600) {
        me.qp
            .post_and_ring(&Write::inline(peer.remote(8 * (n % 64)), &n.to_le_bytes()).signaled())
            .unwrap();
        ok_one(&mut me, mlx5::wqe::opcode::RDMA_WRITE);
        n += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let grew = rss_kib(pid).saturating_sub(before);
    assert!(
        grew < 16 << 10,
        "the peer grew by {grew} KiB after one header"
    );
    assert!(
        closed_within(&mut s, Duration::from_secs(2)),
        "the stranger's link was not closed"
    );
}

/// (A fake device that refuses rings: one link kind, so not `over_both`.)
#[test]
fn a_resp_with_a_wrong_psn_does_not_stop_the_ack_timeout() {
    use std::io::Read as _;
    // A fake device: welcomes the connection, answers the first REQ with
    // a RESP one PSN ahead, then stays silent with the socket open.
    let (gid, l, _owner) = fake_device(77);
    let fake = std::thread::spawn(move || {
        let mut s = accept_as_device(&l);
        let mut h = [0u8; 8];
        s.read_exact(&mut h).unwrap();
        assert_eq!(h[4], 3, "a REQ");
        let mut body = vec![0u8; u32::from_le_bytes(h[..4].try_into().unwrap()) as usize];
        s.read_exact(&mut body).unwrap();
        let psn = u32::from_le_bytes(body[8..12].try_into().unwrap());
        let mut resp = vec![32, 0, 0, 0, 4, 0, 0, 0];
        resp.extend_from_slice(&body[0..4]); // requester QPN
        resp.extend_from_slice(&body[12..16]); // epoch
        resp.extend_from_slice(&(psn + 1).to_le_bytes());
        resp.extend_from_slice(&[0u8; 20]); // ACK, no data
        s.write_all(&resp).unwrap();
        s
    });
    let ctx = Context::soft(Progress::Background);
    let mut me = end(&ctx, caps(8, 8), 64, 4096, Access::ALL);
    let info = fake_qp(gid);
    me.qp.connect(&info, &ConnectOpts::default()).unwrap();
    let t = Instant::now();
    me.qp
        .post_and_ring(&Write::inline(me.mr.remote(0), b"unanswered").signaled())
        .unwrap();
    let _open = fake.join().expect("the fake device");
    let mut got = Vec::new();
    me.cq
        .poll_until(1, Duration::from_secs(5), |c| got.push(*c))
        .unwrap();
    let waited = t.elapsed();
    assert_eq!(got.len(), 1, "no completion within 5 s");
    assert_eq!(got[0].status(), Err(Syndrome::TransportRetryExceeded));
    // The ACK timeout (537 ms with the defaults), not the stale answer.
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
}

fn links_killed_by_bad_frames_are_removed() {
    let (mut me, peer) = setup("soft", &ConnectOpts::default());
    let gid = me.qp.local_info(&ConnectOpts::default()).unwrap().gid;
    write_ok(&mut me, peer.remote(0), b"up");
    // One link, or two if both ends connected at once.
    let live = me.ctx.wire_stats().unwrap().links;
    for i in 0..300 {
        let mut s = stranger(&gid, i);
        s.write_all(&[0, 0, 0, 0, 9, 0, 0, 0]).unwrap();
        assert!(
            closed_within(&mut s, Duration::from_secs(5)),
            "stranger {i}"
        );
    }
    // The device holds its one live link, and it works.
    write_ok(&mut me, peer.remote(0), b"alive");
    assert_eq!(me.ctx.wire_stats().unwrap().links, live);
}

fn a_stranger_that_does_not_read_its_answers_is_cut_off() {
    let (mut me, peer) = setup("soft", &ConnectOpts::default());
    let gid = me.qp.local_info(&ConnectOpts::default()).unwrap().gid;
    let mut s = stranger(&gid, 5);
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    // READs of nothing from a QP that does not exist: each is answered
    // with a 40-byte NAK, which the stranger never reads.
    let mut req = vec![56, 0, 0, 0, 3, 0, 0, 0];
    let mut body = [0u8; 56];
    body[4..8].copy_from_slice(&0xdeadu32.to_le_bytes());
    body[16] = mlx5::wqe::opcode::RDMA_READ;
    req.extend_from_slice(&body);
    let batch = req.repeat(1024);
    let mut sent = 0usize;
    let cut = loop {
        match s.write_all(&batch) {
            Ok(()) => sent += batch.len(),
            Err(e) => {
                use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
                assert!(matches!(e.kind(), BrokenPipe | ConnectionReset), "{e}");
                break true;
            }
        }
        if sent >= 32 << 20 {
            break false;
        }
    };
    assert!(
        cut,
        "the device took {sent} bytes of requests and kept the answers"
    );
    write_ok(&mut me, peer.remote(0), b"alive");
}

fn large_writes_and_reads_cross_the_link_whole() {
    // Frames far larger than the receive buffer's batch size, within what
    // the QPs connected over the link can accept.
    const BIG: usize = 8 << 20;
    let ctx = Context::soft(Progress::Background);
    let mut me = end(&ctx, caps(8, 8), 64, 2 * BIG, Access::ALL);
    let mut peer = spawn("soft", 1, 2 * BIG, 8, 8);
    let o = ConnectOpts::default();
    peer.connect(0, &me.qp.local_info(&o).unwrap());
    me.qp.connect(&peer.infos[0], &o).unwrap();
    let data: Vec<u8> = (0..BIG as u64).map(|i| pattern(9, i)).collect();
    // SAFETY: no WQE that reads or writes these bytes is in flight.
    unsafe { me.mr.write(0, &data) };
    me.qp
        .post_and_ring(&Write::new(peer.remote(0), &[me.mr.sge(0, BIG as u32)]).signaled())
        .unwrap();
    ok_one(&mut me, mlx5::wqe::opcode::RDMA_WRITE);
    assert_eq!(
        peer.cmd(&format!("hash 0 {BIG}")),
        format!("{:016x}", fnv(&data))
    );
    peer.cmd(&format!("fill {BIG} {BIG} 4"));
    me.qp
        .post_and_ring(
            &Read::new(peer.remote(BIG as u64), &[me.mr.sge(BIG, BIG as u32)]).signaled(),
        )
        .unwrap();
    ok_one(&mut me, mlx5::wqe::opcode::RDMA_READ);
    let mut got = vec![0u8; BIG];
    // SAFETY: the WQEs that wrote these bytes have completed (their
    // completions were polled) and none is in flight to them.
    unsafe { me.mr.read(BIG, &mut got) };
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, &x)| x == pattern(4, i as u64))
    );
}

fn frames_of_many_sizes_cross_whole_four_in_flight() {
    // Sizes around the size handled in place in a shared-memory ring
    // (16 KiB) and up to a few MiB, four in flight, so frames land at many
    // ring offsets, some wrapping its end (those go through the receive
    // buffer) and some not (handled in place).
    const SLOT: usize = 4 << 20;
    const SIZES: [usize; 8] = [
        (16 << 10) - 1,
        16 << 10,
        100_003,
        1 << 20,
        3 << 20,
        7,
        777_777,
        SLOT,
    ];
    let ctx = Context::soft(Progress::Background);
    let mut me = end(&ctx, caps(8, 8), 64, 4 * SLOT, Access::ALL);
    let mut peer = spawn("soft", 1, 4 * SLOT, 8, 8);
    let o = ConnectOpts::default();
    peer.connect(0, &me.qp.local_info(&o).unwrap());
    me.qp.connect(&peer.infos[0], &o).unwrap();
    for round in 0..6usize {
        let sizes: Vec<usize> = (0..4)
            .map(|k| SIZES[(round * 3 + k) % SIZES.len()])
            .collect();
        let seed = |k: usize| (round * 4 + k) as u64;
        for (k, &n) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..n as u64).map(|i| pattern(seed(k), i)).collect();
            // SAFETY: no WQE that reads or writes these bytes is in flight.
            unsafe { me.mr.write(k * SLOT, &data) };
        }
        for (k, &n) in sizes.iter().enumerate() {
            let sge = [me.mr.sge(k * SLOT, n as u32)];
            let w = Write::new(peer.remote((k * SLOT) as u64), &sge);
            me.qp.post_and_ring(&w.signaled()).unwrap();
        }
        for c in me.expect(4) {
            assert_eq!(c.status(), Ok(()), "{c:?}");
        }
        for (k, &n) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..n as u64).map(|i| pattern(seed(k), i)).collect();
            assert_eq!(
                peer.cmd(&format!("hash {} {n}", k * SLOT)),
                format!("{:016x}", fnv(&data)),
                "round {round}, WRITE of {n} bytes"
            );
            peer.cmd(&format!("fill {} {n} {}", k * SLOT, seed(k) + 100));
        }
        for (k, &n) in sizes.iter().enumerate() {
            let sge = [me.mr.sge(k * SLOT, n as u32)];
            let r = Read::new(peer.remote((k * SLOT) as u64), &sge);
            me.qp.post_and_ring(&r.signaled()).unwrap();
        }
        for c in me.expect(4) {
            assert_eq!(c.status(), Ok(()), "{c:?}");
        }
        for (k, &n) in sizes.iter().enumerate() {
            let mut got = vec![0u8; n];
            // SAFETY: the READs that wrote these bytes have completed.
            unsafe { me.mr.read(k * SLOT, &mut got) };
            assert!(
                got.iter()
                    .enumerate()
                    .all(|(i, &x)| x == pattern(seed(k) + 100, i as u64)),
                "round {round}, READ of {n} bytes"
            );
        }
    }
    let in_place = ctx.wire_stats().unwrap().frames_in_place;
    match LINK.get() {
        LinkKind::Shm => assert!(in_place > 0, "no frame was handled in place"),
        _ => assert_eq!(in_place, 0),
    }
}

fn a_qp_of_a_removed_link_keeps_failing_when_a_new_link_comes_up() {
    // QPs a and b share one link to the peer; the link times out (a's
    // request, partitioned) and is removed while b, idle, still names it.
    let fast = ConnectOpts {
        timeout: 12,
        retry_cnt: 1,
        ..ConnectOpts::default()
    };
    let o = ConnectOpts::default();
    let ctx = Context::soft(Progress::Background);
    let mut a = end(&ctx, caps(8, 8), 64, 4096, Access::ALL);
    let mut b = end(&ctx, caps(8, 8), 64, 4096, Access::ALL);
    let mut peer = spawn("soft", 3, 4096, 8, 8);
    peer.connect(0, &a.qp.local_info(&fast).unwrap());
    peer.connect(1, &b.qp.local_info(&o).unwrap());
    a.qp.connect(&peer.infos[0], &fast).unwrap();
    b.qp.connect(&peer.infos[1], &o).unwrap();
    assert_eq!(ctx.wire_stats().unwrap().links, 1);
    ctx.faults()
        .unwrap()
        .partition_peer(&peer.infos[0])
        .unwrap();
    a.qp.post_and_ring(&Write::inline(peer.remote(0), b"lost").signaled())
        .unwrap();
    assert_eq!(
        a.expect(1)[0].status(),
        Err(Syndrome::TransportRetryExceeded)
    );
    assert_eq!(ctx.wire_stats().unwrap().links, 0, "the dead link is gone");
    // A new QP pair brings up a new link to the same peer.
    let mut c = end(&ctx, caps(8, 8), 64, 4096, Access::ALL);
    peer.connect(2, &c.qp.local_info(&o).unwrap());
    c.qp.connect(&peer.infos[2], &o).unwrap();
    c.qp.post_and_ring(&Write::inline(peer.remote(8), b"new").signaled())
        .unwrap();
    ok_one(&mut c, mlx5::wqe::opcode::RDMA_WRITE);
    // (Not asserted: one new link or two. The peer's connect returns at
    // WELCOME, before this device adopts its link, so c may connect one of
    // its own meanwhile.)
    // b's link is gone: b fails, and does not borrow the new one.
    b.qp.post_and_ring(&Write::inline(peer.remote(16), b"old").signaled())
        .unwrap();
    assert_eq!(
        b.expect(1)[0].status(),
        Err(Syndrome::TransportRetryExceeded)
    );
    assert_eq!(
        peer.cmd("hex 16 3"),
        hex(&[0, 0, 0]),
        "nothing of b's landed"
    );
}

/// (A fake device that refuses rings: one link kind, so not `over_both`.)
#[test]
fn an_answer_on_another_link_completes_nothing() {
    use std::io::Read as _;
    // A fake device that takes a WRITE and never answers it.
    let (gid, l, _owner) = fake_device(78);
    let fake = std::thread::spawn(move || {
        let mut s = accept_as_device(&l);
        let mut req = [0u8; 8 + 56 + 4];
        s.read_exact(&mut req).unwrap();
        s
    });
    let ctx = Context::soft(Progress::Background);
    let mut me = end(&ctx, caps(8, 8), 64, 4096, Access::ALL);
    let mine = me.qp.local_info(&ConnectOpts::default()).unwrap().gid;
    let info = fake_qp(gid);
    me.qp.connect(&info, &ConnectOpts::default()).unwrap();
    me.qp
        .post_and_ring(&Write::inline(me.mr.remote(0), b"four").signaled())
        .unwrap();
    let _silent = fake.join().expect("the fake device");
    // A stranger, on a link of its own, ACKs it: QPN, epoch 0, PSN 0.
    let mut s = stranger(&mine, 9);
    let mut resp = vec![32, 0, 0, 0, 4, 0, 0, 0];
    resp.extend_from_slice(&me.qp.qpn().to_le_bytes());
    resp.extend_from_slice(&[0u8; 28]);
    s.write_all(&resp).unwrap();
    let c = me.expect(1);
    assert_eq!(c[0].status(), Err(Syndrome::TransportRetryExceeded));
}

/// The requester's "ACK at once" flag (REQ flags bit 1), read off the
/// wire by a fake device: clear on an unsignaled WRITE (its ACK may be
/// held), set on a signaled WRITE and on a READ, and set on every request
/// of a link whose ACK timeout is under a millisecond (`ConnectOpts`
/// timeout 4: 65.5 µs per try, 8 tries), so that no held ACK can time a
/// link out. (Fake devices refuse rings: one link kind.)
#[test]
fn the_ack_at_once_flag_follows_the_wqe_and_the_link_timeout() {
    use std::io::Read as _;
    /// Reads `n` REQ frames; returns each one's flags byte.
    fn flags_of(l: std::os::unix::net::UnixListener, n: usize) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut s = accept_as_device(&l);
            (0..n)
                .map(|_| {
                    let mut h = [0u8; 8];
                    s.read_exact(&mut h).unwrap();
                    assert_eq!(h[4], 3, "a REQ");
                    let len = u32::from_le_bytes(h[..4].try_into().unwrap()) as usize;
                    let mut body = vec![0u8; len];
                    s.read_exact(&mut body).unwrap();
                    body[17]
                })
                .collect()
        })
    }
    let ctx = Context::open(Selection::parse("soft:manual").expect("selection")).expect("device");
    let steps = |ctx: &Context| {
        for _ in 0..8 {
            ctx.progress().unwrap();
        }
    };
    // Default timeout: the flag follows the WQE.
    let mut me = end(&ctx, caps(8, 8), 64, 4096, Access::ALL);
    let (gid, l, _owner) = fake_device(82);
    let fake = flags_of(l, 3);
    me.qp
        .connect(&fake_qp(gid), &ConnectOpts::default())
        .unwrap();
    let to = mlx5::Remote { addr: 0, rkey: 1 };
    me.qp.post(&Write::inline(to, b"unsig")).unwrap();
    me.qp
        .post(&Write::inline(to, b"signaled").signaled())
        .unwrap();
    me.qp.post(&Read::new(to, &[me.mr.sge(0, 8)])).unwrap();
    me.qp.ring_doorbell();
    steps(&ctx);
    assert_eq!(fake.join().expect("fake device"), [0, 2, 2]);
    // A short ACK timeout: every request asks for its ACK at once.
    let mut short = end(&ctx, caps(8, 8), 64, 4096, Access::ALL);
    let (gid, l, _owner2) = fake_device(83);
    let fake = flags_of(l, 1);
    let o = ConnectOpts {
        timeout: 4,
        ..ConnectOpts::default()
    };
    short.qp.connect(&fake_qp(gid), &o).unwrap();
    short
        .qp
        .post_and_ring(&Write::inline(to, b"unsig"))
        .unwrap();
    steps(&ctx);
    assert_eq!(fake.join().expect("fake device"), [2]);
}

/// A link that dies in the write of a pass (its peer shut its reading
/// side: `EPIPE`) fails the oldest request of each QP on it; the passes
/// right after flush the rest of the send queue and the receives, as a
/// ConnectX does at once. (A device that marked itself quiet after that
/// write waited for the link's ACK deadline, here half a minute, for
/// them.) (A fake device that refuses rings: one link kind.)
#[test]
fn a_link_that_dies_in_a_write_has_its_qps_flushed_at_once() {
    use std::io::Read as _;
    let ctx = Context::open(Selection::parse("soft:manual").expect("selection")).expect("device");
    let mut me = end(&ctx, caps(8, 8), 64, 4096, Access::ALL);
    let (dst_qpn, target) = (me.qp.qpn(), me.mr.remote(0));
    let (gid, l, _owner) = fake_device(81);
    let (shut, shut_rx) = std::sync::mpsc::channel::<()>();
    let fake = std::thread::spawn(move || {
        let mut s = accept_as_device(&l);
        for _ in 0..2 {
            let mut h = [0u8; 8];
            s.read_exact(&mut h).unwrap();
            assert_eq!(h[4], 3, "a REQ");
            let mut body = vec![0u8; u32::from_le_bytes(h[..4].try_into().unwrap()) as usize];
            s.read_exact(&mut body).unwrap();
        }
        // A WRITE of 8 bytes to the device's QP: QPN 0x100 to it, PSN 0,
        // epoch 0.
        let mut req = vec![64, 0, 0, 0, 3, 0, 0, 0];
        req.extend_from_slice(&0x100u32.to_le_bytes());
        req.extend_from_slice(&dst_qpn.to_le_bytes());
        req.extend_from_slice(&[0u8; 8]); // PSN, epoch
        req.extend_from_slice(&[mlx5::wqe::opcode::RDMA_WRITE, 0, 0, 0]);
        req.extend_from_slice(&target.rkey.to_le_bytes());
        req.extend_from_slice(&target.addr.to_le_bytes());
        req.extend_from_slice(&8u32.to_le_bytes());
        req.extend_from_slice(&[0u8; 20]); // immediate, swap/add, compare
        req.extend_from_slice(&u64::MAX.to_le_bytes());
        s.write_all(&req).unwrap();
        shut_rx.recv().unwrap();
        s.shutdown(std::net::Shutdown::Read).unwrap();
        s
    });
    let o = ConnectOpts {
        timeout: 20,
        ..ConnectOpts::default()
    };
    me.qp.connect(&fake_qp(gid), &o).unwrap();
    me.qp.post_recv(&[]).unwrap();
    for w in [b"first!!!", b"second!!"] {
        me.qp
            .post_and_ring(&Write::inline(target, w).signaled())
            .unwrap();
    }
    // The pass after which the WRITE has landed is the one that executed
    // it, and holds its ACK for the next.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "the fake's WRITE did not land");
        ctx.progress().unwrap();
        if me
            .mr
            .atomic_u64(0)
            .load(std::sync::atomic::Ordering::Relaxed)
            == u64::MAX
        {
            break;
        }
    }
    assert!(ctx.answers_held(), "the WRITE's ACK is held");
    shut.send(()).unwrap();
    let _open = fake.join().expect("the fake device");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while got.len() < 3 && Instant::now() < deadline {
        got.extend(me.drain());
    }
    // (Receive or send, syndrome), the sends in order.
    let mut kinds: Vec<_> = got
        .iter()
        .map(|c| (c.kind == Kind::RecvError, c.syndrome))
        .collect();
    kinds.sort_by_key(|k| k.0);
    assert_eq!(
        kinds,
        [
            (false, Some(Syndrome::TransportRetryExceeded)),
            (false, Some(Syndrome::WrFlush)),
            (true, Some(Syndrome::WrFlush)),
        ],
        "within 2 s of the link's death: {got:?}"
    );
}

/// A QP destroyed with a request in flight, and a new QP that reuses its
/// number on the same link: the old request's answer must not complete
/// the new QP's (both start at PSN 0; the epoch tells them apart).
#[test]
fn an_answer_for_a_destroyed_qp_completes_nothing_of_its_successor() {
    use std::io::Read as _;
    let (gid, l, _owner) = fake_device(79);
    let (took, took_rx) = std::sync::mpsc::channel();
    let (answer, answer_rx) = std::sync::mpsc::channel::<()>();
    let fake = std::thread::spawn(move || {
        let mut s = accept_as_device(&l);
        let mut reqs = Vec::new();
        for _ in 0..2 {
            let mut h = [0u8; 8];
            s.read_exact(&mut h).unwrap();
            assert_eq!(h[4], 3, "a REQ");
            let mut body = vec![0u8; u32::from_le_bytes(h[..4].try_into().unwrap()) as usize];
            s.read_exact(&mut body).unwrap();
            reqs.push(body);
            took.send(()).unwrap();
        }
        answer_rx.recv().unwrap();
        // ACK the first request only: the destroyed QP's.
        let a = &reqs[0];
        let mut resp = vec![32, 0, 0, 0, 4, 0, 0, 0];
        resp.extend_from_slice(&a[0..4]); // requester QPN
        resp.extend_from_slice(&a[12..16]); // epoch
        resp.extend_from_slice(&a[8..12]); // PSN
        resp.extend_from_slice(&[0u8; 20]); // ACK, no data
        s.write_all(&resp).unwrap();
        s
    });
    let ctx = Context::soft(Progress::Background);
    let pd = mlx5::Pd::new(&ctx).unwrap();
    let mut cq = mlx5::Cq::new(&ctx, 64).unwrap();
    let mr = pd.alloc_mr(4096, Access::ALL).unwrap();
    let info = fake_qp(gid);
    let o = ConnectOpts::default();
    let mut old = mlx5::Qp::builder(&pd, &cq, &cq)
        .caps(caps(8, 8))
        .build()
        .unwrap();
    old.connect(&info, &o).unwrap();
    old.post_and_ring(&Write::inline(mr.remote(0), b"old").signaled())
        .unwrap();
    took_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let qpn = old.qpn();
    drop(old);
    let mut new = mlx5::Qp::builder(&pd, &cq, &cq)
        .caps(caps(8, 8))
        .build()
        .unwrap();
    assert_eq!(new.qpn(), qpn, "the number is reused");
    new.connect(&info, &o).unwrap();
    new.post_and_ring(&Write::inline(mr.remote(0), b"new").signaled())
        .unwrap();
    took_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    answer.send(()).unwrap();
    let _open = fake.join().expect("the fake device");
    let mut got = Vec::new();
    cq.poll_until(1, Duration::from_secs(5), |c| got.push(*c))
        .unwrap();
    assert_eq!(got.len(), 1, "no completion within 5 s");
    assert_eq!(
        got[0].status(),
        Err(Syndrome::TransportRetryExceeded),
        "the old request's ACK completed the new one"
    );
}

/// Each test over each kind of same-host link.
macro_rules! over_both {
    ($($name:ident),* $(,)?) => {
        mod over_shm {
            $(#[test]
            fn $name() {
                super::over(mlx5::LinkKind::Shm, super::$name);
            })*
        }
        mod over_socket {
            $(#[test]
            fn $name() {
                super::over(mlx5::LinkKind::Unix, super::$name);
            })*
        }
    };
}

/// QP 0 of a peer that a test will turn bad, and, on the same background
/// device here, another end connected to a second, good peer: (me, bad,
/// other, good).
fn bad_and_good_peers() -> (End, PeerProcess, End, PeerProcess) {
    let (me, bad) = setup("soft", &ConnectOpts::default());
    let mut other = end(&me.ctx, caps(8, 8), 64, 4096, Access::ALL);
    let mut good = spawn("soft", 1, 4096, 8, 8);
    good.connect(0, &other.qp.local_info(&ConnectOpts::default()).unwrap());
    other
        .qp
        .connect(&good.infos[0], &ConnectOpts::default())
        .unwrap();
    (me, bad, other, good)
}

/// A same-host peer that scribbles over the shared-memory rings: this
/// side cuts that link (its QP fails with `TransportRetryExceeded`), and
/// its other links and the process carry on.
#[test]
fn a_peer_that_corrupts_the_rings_loses_only_its_link() {
    let (mut me, mut bad, mut other, good) = bad_and_good_peers();
    let ctx = me.ctx.clone();
    let read = |e: &mut End, p: &PeerProcess| {
        e.qp.post_and_ring(&Read::new(p.remote(0), &[e.mr.sge(0, 64)]).signaled())
            .unwrap();
        e.expect(1)
    };
    assert_eq!(read(&mut me, &bad)[0].status(), Ok(()));
    assert_eq!(read(&mut other, &good)[0].status(), Ok(()));
    // Two devices that connect to each other at once may open two links
    // (one each way): count rather than assume one per peer.
    let before = ctx.wire_stats().unwrap().shm_links;
    assert!(before >= 2, "{before} shared-memory links");
    let corrupted: usize = bad.cmd("corrupt-rings").parse().unwrap();
    assert!(corrupted >= 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ctx.wire_stats().unwrap().shm_links != before - corrupted {
        assert!(Instant::now() < deadline, "the corrupted link is still up");
        std::thread::sleep(Duration::from_millis(5));
    }
    let c = read(&mut me, &bad);
    assert_eq!(
        c[0].status(),
        Err(Syndrome::TransportRetryExceeded),
        "{c:?}"
    );
    assert_eq!(read(&mut other, &good)[0].status(), Ok(()));
}

/// A same-host peer that publishes a malformed REQ large enough to be
/// handled where it lies in the ring: this side refuses it there, cuts
/// that link only, and carries on.
#[test]
fn a_malformed_large_frame_in_the_ring_loses_only_its_link() {
    let (mut me, mut bad, mut other, good) = bad_and_good_peers();
    let ctx = me.ctx.clone();
    let write = |e: &mut End, p: &PeerProcess| {
        e.qp.post_and_ring(&Write::inline(p.remote(0), b"still here").signaled())
            .unwrap();
        e.expect(1)
    };
    assert_eq!(write(&mut me, &bad)[0].status(), Ok(()));
    assert_eq!(write(&mut other, &good)[0].status(), Ok(()));
    // The peer echoes one large WRITE_IMM: its REQ raises what this side
    // accepts on the link (until then a large REQ is refused from its
    // header, before the in-place path).
    bad.cmd("recv 0 2 0 0");
    me.qp.post_recv(&[]).unwrap();
    let back = me.mr.remote(0);
    bad.send(&format!("echo {} {}", back.addr, back.rkey));
    let sge = [me.mr.sge(0, 20_000)];
    me.qp
        .post_and_ring(&WriteImm::new(bad.remote(0), &sge, 1).signaled())
        .unwrap();
    let c = me.expect(2);
    assert!(c.iter().all(|c| c.status().is_ok()), "{c:?}");
    me.qp
        .post_and_ring(&WriteImm::new(bad.remote(0), &[], u32::MAX).signaled())
        .unwrap();
    ok_one(&mut me, mlx5::wqe::opcode::RDMA_WRITE_IMM);
    assert_eq!(bad.line(), "ok 1");
    let before = ctx.wire_stats().unwrap();
    let sent: usize = bad.cmd("malformed-large").parse().unwrap();
    assert!(sent >= 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ctx.wire_stats().unwrap().shm_links != before.shm_links - sent {
        assert!(Instant::now() < deadline, "the link is still up");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        ctx.wire_stats().unwrap().frames_in_place > before.frames_in_place,
        "the frame was not handled in place"
    );
    let c = write(&mut me, &bad);
    assert_eq!(
        c[0].status(),
        Err(Syndrome::TransportRetryExceeded),
        "{c:?}"
    );
    assert_eq!(write(&mut other, &good)[0].status(), Ok(()));
}

/// A same-host peer that publishes impossible heads on the ring this side
/// writes: once this side needs room in the ring (after about a ring of
/// WRITEs) it refuses the head and cuts the link; every WRITE completes
/// (the first ones, or `TransportRetryExceeded` and flushes), none hangs.
#[test]
fn a_peer_that_lies_about_its_head_fails_the_writes_instead_of_hanging() {
    let (mut me, mut bad) = setup("soft", &ConnectOpts::default());
    assert!(bad.cmd("corrupt-heads").parse::<usize>().unwrap() >= 1);
    // 12 MiB of WRITEs through an 8 MiB ring.
    const N: usize = 12;
    for _ in 0..N {
        let sge = [me.mr.sge(0, 1 << 20)];
        me.qp
            .post_and_ring(&Write::new(bad.remote(0), &sge).signaled())
            .unwrap();
    }
    let c = me.expect(N);
    assert!(
        c.iter()
            .any(|c| c.status() == Err(Syndrome::TransportRetryExceeded)),
        "{c:?}"
    );
    assert!(
        c.iter().all(|c| matches!(
            c.status(),
            Ok(()) | Err(Syndrome::TransportRetryExceeded | Syndrome::WrFlush)
        )),
        "{c:?}"
    );
    assert_eq!(me.qp.state(), QpState::Error);
}

over_both!(
    every_opcode_across_processes_unix,
    peer_killed_mid_stream,
    rnr_across_processes_retries_in_order,
    many_qps_share_one_link,
    long_run_wraps_queues_and_checks_every_byte,
    partition_times_out_with_transport_retry_exceeded,
    an_ack_timeout_of_zero_waits_until_the_peer_dies,
    delayed_delivery_still_in_order,
    fail_next_forces_the_syndrome_then_flushes,
    a_dead_peer_is_refused_at_connect_and_garbage_kills_only_its_link,
    manual_progress_across_processes,
    a_manual_ping_pong_sends_each_ack_with_the_next_request,
    unsignaled_acks_wait_for_the_next_request,
    two_links_to_one_peer_still_carry_each_ack_with_a_request,
    a_failed_connect_does_not_spend_the_second_link_asked_for,
    rnr_over_two_links_retries_in_order,
    a_dropped_manual_device_sends_the_acks_it_deferred,
    a_malformed_frame_after_the_handshake_closes_that_link_only,
    drop_peer_fails_the_qps_and_refuses_reconnecting,
    an_idle_linked_device_sleeps_and_a_frame_wakes_it,
    a_hostile_frame_header_allocates_nothing_and_other_links_keep_working,
    links_killed_by_bad_frames_are_removed,
    a_local_impostor_is_refused_at_the_handshake,
    a_hello_of_another_wire_version_is_refused,
    a_wqe_that_completes_locally_asks_for_the_acks_it_waits_for,
    an_rnr_rewind_asks_again_for_the_acks_of_the_resent_flight,
    a_stranger_that_does_not_read_its_answers_is_cut_off,
    large_writes_and_reads_cross_the_link_whole,
    frames_of_many_sizes_cross_whole_four_in_flight,
    a_qp_of_a_removed_link_keeps_failing_when_a_new_link_comes_up,
);
