//! A peer that breaks the protocol: every malformed batch is refused with
//! an error that names what is wrong, messages are read once (a peer that
//! rewrites a batch after it was validated changes nothing), and in a
//! context the endpoint that received it fails, with its calls handed back,
//! while the context's other endpoints go on.

mod common;

use std::time::{Duration, Instant};

use common::{Side, TIMEOUT, config, pair};
use copyrpc::proto::{BATCH_HEADER, Conn, Limits, MSG_HEADER, WRAPPED, align};
use copyrpc::{EndpointError, RpcError};
use mlx5::wqe::WriteImm;
use mlx5::{Access, ConnectOpts, Cq, Mr, Pd, Progress, Qp, QpCaps, Remote};

const RESPONSE: u32 = 1 << 31;
const DROPPED: u32 = 1 << 30;

fn limits() -> Limits {
    Limits {
        ring: 4096,
        max_inflight: 4,
        max_call: 64,
        max_reply: 32,
        max_batch: 512,
    }
}

/// A batch: the header (`credit`, the batch's length, `count`, `flags`),
/// then each message (`id`, its length word, its payload padded to 8).
fn batch(credit: u64, count: u16, flags: u16, msgs: &[(u32, u32, &[u8])]) -> Vec<u8> {
    let mut b = vec![0u8; BATCH_HEADER as usize];
    for &(id, word, payload) in msgs {
        b.extend_from_slice(&id.to_le_bytes());
        b.extend_from_slice(&word.to_le_bytes());
        b.extend_from_slice(payload);
        b.resize(align(b.len() as u64) as usize, 0);
    }
    let len = b.len() as u32;
    b[0..8].copy_from_slice(&credit.to_le_bytes());
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[12..14].copy_from_slice(&count.to_le_bytes());
    b[14..16].copy_from_slice(&flags.to_le_bytes());
    b
}

/// `b` at the start of a fresh receiver's ring, offered with immediate
/// `imm`: what `on_batch` says.
fn offer(b: &[u8], imm: u32) -> Result<(), String> {
    let mut conn = Conn::new(limits()).unwrap();
    let mut ring = vec![0u8; limits().ring as usize];
    ring[..b.len()].copy_from_slice(b);
    conn.on_batch(ring.as_slice(), imm)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn refused(b: &[u8], imm: u32, says: &str) {
    match offer(b, imm) {
        Ok(()) => panic!("accepted; expected an error saying {says:?}"),
        Err(e) => assert!(e.contains(says), "{e:?} does not say {says:?}"),
    }
}

#[test]
fn a_well_formed_batch_is_accepted() {
    let b = batch(0, 1, 0, &[(7, 5, b"hello")]);
    assert_eq!(offer(&b, b.len() as u32), Ok(()));
}

#[test]
fn every_malformed_batch_is_refused_with_what_is_wrong() {
    let ok = batch(0, 1, 0, &[(7, 5, b"hello")]);
    let n = ok.len() as u32;
    // The immediate: shorter than a header, unaligned, over max_batch.
    refused(&ok, 8, "batch length 8");
    refused(&ok, n - 4, "batch length");
    refused(
        &batch(0, 0, 0, &[(1, 600, &[0; 600])]),
        616,
        "batch length 616",
    );
    // The header's length against the immediate.
    let mut lie = ok.clone();
    lie[8..12].copy_from_slice(&(n + 8).to_le_bytes());
    refused(&lie, n, "batch header says");
    // Flags: a wrap where there is none, an unknown bit.
    refused(&batch(0, 1, WRAPPED, &[(7, 5, b"hello")]), n, "flags");
    refused(&batch(0, 1, 4, &[(7, 5, b"hello")]), n, "flags");
    // Credit for bytes this side never sent.
    refused(&batch(8, 1, 0, &[(7, 5, b"hello")]), n, "credit 8");
    // A batch without messages that returns no credit (a peer could send
    // those without end, each taking a receive of the shared SRQ).
    refused(&batch(0, 0, 0, &[]), 16, "without messages");
    // Messages that do not tile the batch: too few, too many.
    refused(
        &batch(0, 2, 0, &[(7, 5, b"hello")]),
        n,
        "header past the batch end",
    );
    let mut short = batch(0, 1, 0, &[(7, 5, b"hello")]);
    short.extend_from_slice(&[0; 8]);
    short[8..12].copy_from_slice(&(n + 8).to_le_bytes());
    refused(&short, n + 8, "end at byte");
    // A payload longer than the batch.
    let mut long = ok.clone();
    long[BATCH_HEADER as usize + 4..BATCH_HEADER as usize + 8]
        .copy_from_slice(&64u32.to_le_bytes());
    refused(&long, n, "past the batch end");
    // DROPPED on a request, or with a payload.
    refused(&batch(0, 1, 0, &[(7, DROPPED, &[])]), 24, "DROPPED");
    refused(
        &batch(0, 1, 0, &[(7, RESPONSE | DROPPED | 5, b"hello")]),
        n,
        "DROPPED",
    );
    // Over the limits: a request over max_call, a response over max_reply.
    let big = [0u8; 72];
    refused(&batch(0, 1, 0, &[(7, 72, &big)]), 96, "exceeds max_call");
    refused(
        &batch(0, 1, 0, &[(7, RESPONSE | 40, &big[..40])]),
        64,
        "exceeds max_reply",
    );
}

/// A peer may write the ring after a batch was validated (it is the
/// peer's to write): the messages handed on are the ones validated, read
/// once. Before, they were decoded from the ring a second time, unchecked.
#[test]
fn messages_are_read_once() {
    let mut conn = Conn::new(limits()).unwrap();
    let mut ring = vec![0u8; limits().ring as usize];
    let b = batch(0, 2, 0, &[(7, 5, b"hello"), (8, RESPONSE | 3, b"abc")]);
    ring[..b.len()].copy_from_slice(&b);
    let parsed = conn.on_batch(ring.as_slice(), b.len() as u32).unwrap();
    assert_eq!(parsed.count, 2);
    let before = conn.messages().to_vec();
    // The peer rewrites both length words: huge, and a flipped kind.
    let h = BATCH_HEADER as usize;
    ring[h + 4..h + 8].copy_from_slice(&(u32::MAX >> 2).to_le_bytes());
    let second = h + (MSG_HEADER + align(5)) as usize;
    ring[second + 4..second + 8].copy_from_slice(&7u32.to_le_bytes());
    assert_eq!(conn.messages(), before.as_slice());
    let (m0, m1) = (before[0], before[1]);
    assert_eq!((m0.id, m0.response, m0.len), (7, false, 5));
    assert_eq!((m1.id, m1.response, m1.len), (8, true, 3));
    for m in before {
        assert!(u64::from(m.offset) + u64::from(m.len) <= b.len() as u64);
    }
}

/// A raw mlx5 QP posing as a copyrpc peer: its WRITE_IMMs land in the
/// copyrpc endpoint's receive ring as that peer's batches would.
struct RawPeer {
    _pd: Pd,
    cq: Cq,
    qp: Qp,
    _mr: Mr,
    ring: Remote,
}

impl RawPeer {
    /// Connects a new endpoint of `side` to a raw QP; returns both.
    fn connect(side: &mut Side<u32>) -> (copyrpc::Endpoint, RawPeer) {
        let dev = mlx5::Context::soft(Progress::Background);
        let pd = Pd::new(&dev).unwrap();
        let cq = Cq::new(&dev, 64).unwrap();
        let qp = Qp::builder(&pd, &cq, &cq)
            .caps(QpCaps::default())
            .build()
            .unwrap();
        let mr = pd
            .alloc_mr(4096, Access::LOCAL_WRITE | Access::REMOTE_WRITE)
            .unwrap();
        let ep = side.ctx.endpoint().unwrap();
        let mine = side.ctx.local_info(ep).unwrap();
        let mut qp = qp;
        qp.connect(&mine.qp, &ConnectOpts::default()).unwrap();
        let theirs = copyrpc::EndpointInfo {
            qp: qp.local_info(&ConnectOpts::default()).unwrap(),
            ring_addr: mr.remote(0).addr,
            ring_rkey: mr.remote(0).rkey,
            limits: mine.limits,
        };
        side.ctx.connect(ep, &theirs).unwrap();
        let ring = Remote {
            addr: mine.ring_addr,
            rkey: mine.ring_rkey,
        };
        (
            ep,
            RawPeer {
                _pd: pd,
                cq,
                qp,
                _mr: mr,
                ring,
            },
        )
    }

    /// Writes `b` at the start of the endpoint's ring with immediate `imm`.
    fn send(&mut self, b: &[u8], imm: u32) {
        self.qp
            .post_and_ring(&WriteImm::inline(self.ring, b, imm).signaled())
            .unwrap();
        let mut got = 0;
        self.cq
            .poll_until(1, Duration::from_secs(5), |c| {
                assert_eq!(c.status(), Ok(()));
                got += 1;
            })
            .unwrap();
        assert_eq!(got, 1, "the write completed");
    }
}

/// Each kind of bad batch, sent by a raw peer to one endpoint of a context
/// with a call in flight there: that endpoint fails with a protocol error
/// and hands the call back with it; a second endpoint of the same context,
/// to a real copyrpc peer, keeps working.
#[test]
fn a_peer_that_breaks_the_protocol_fails_only_its_endpoint() {
    let cases: [(&str, Vec<u8>, Option<u32>); 3] = [
        (
            "not in flight",
            batch(0, 1, 0, &[(0x5_0001, RESPONSE | 2, b"hi")]),
            None,
        ),
        ("batch header says", batch(0, 0, 0, &[]), Some(24)),
        ("batch length", batch(0, 0, 0, &[]), Some(12)),
    ];
    for (says, bytes, imm) in cases {
        let limits = copyrpc::Limits::default();
        let (mut a, mut b) = pair::<u32>(Progress::Manual, 1, config(limits));
        let (good_a, good_b) = (a.eps[0], b.eps[0]);
        let (bad, mut raw) = RawPeer::connect(&mut a);
        a.ctx.call(bad, b"to the raw peer", 1).unwrap();
        a.ctx.flush();
        a.poll();
        raw.send(&bytes, imm.unwrap_or(bytes.len() as u32));
        let start = Instant::now();
        while a.done.is_empty() {
            a.poll();
            assert!(start.elapsed() < TIMEOUT, "the bad endpoint never failed");
        }
        match &a.done[..] {
            [(1, Err(RpcError::Endpoint(EndpointError::Protocol { error, .. })))] => {
                assert!(error.to_string().contains(says), "{error} ({says})")
            }
            other => panic!("{says}: {other:?}"),
        }
        assert!(matches!(
            a.ctx.endpoint_error(bad),
            Some(EndpointError::Protocol { .. })
        ));
        // The other endpoint still carries calls.
        a.done.clear();
        a.ctx.call(good_a, b"still", 2).unwrap();
        common::run(&mut a, &mut b, <[u8]>::to_vec, |a, _| !a.done.is_empty());
        assert_eq!(a.done, [(2, Ok(b"still".to_vec()))], "{says}");
        assert!(b.ctx.endpoint_error(good_b).is_none());
    }
}

/// A response to a call still queued here (its request never left: the
/// peer guessed the call's id) is a protocol error, not the call's answer;
/// before, the call completed with what the peer made up.
#[test]
fn a_response_to_a_call_not_yet_sent_fails_the_endpoint() {
    let limits = copyrpc::Limits::default();
    let (mut a, _b) = pair::<u32>(Progress::Manual, 1, config(limits));
    let (bad, mut raw) = RawPeer::connect(&mut a);
    // The first call takes slot 0 with generation 1: id 0x1_0000.
    a.ctx.call(bad, b"never sent", 1).unwrap();
    let forged = batch(0, 1, 0, &[(0x1_0000, RESPONSE | 2, b"hi")]);
    raw.send(&forged, forged.len() as u32);
    let start = Instant::now();
    while a.done.is_empty() {
        a.poll();
        assert!(start.elapsed() < TIMEOUT, "the endpoint never failed");
    }
    match &a.done[..] {
        [(1, Err(RpcError::Endpoint(EndpointError::Protocol { error, .. })))] => {
            assert!(error.to_string().contains("not been sent"), "{error}")
        }
        other => panic!("{other:?}"),
    }
}
