//! Writes the committed seed corpus (`seeds/wqe/`, `seeds/frame/`) and runs
//! every seed through its harness once, without libFuzzer:
//!
//! ```sh
//! cargo run --manifest-path mlx5/fuzz/Cargo.toml --example seeds
//! ```
//!
//! With `--check` it writes and runs nothing: it fails when the committed
//! files differ from what it would write (`scripts/fuzz.sh --replay` asks).
//!
//! Each seed is a small, meaningful program: one of each opcode, each error
//! the device must answer, ring wrap, the two handshake modes, frames split
//! across reads. None is a crasher: every frame length is small (a header
//! claiming a huge body is the known `Link::next_frame` allocation defect).

use std::path::Path;

use mlx5::wqe::opcode;
use mlx5_fuzz::frame::{self, CANARY_ADDR, CANARY_RKEY, FAKE_QPN, REGION, REGION_RKEY, Req, V_QPN};
use mlx5_fuzz::input::Writer;
use mlx5_fuzz::wqe::{Body, Fix, Loc, Op, Payload, Region, SgeSpec, Side};

fn at(region: Region, off: i16) -> Loc {
    Loc { region, off }
}

fn sge(region: Region, off: i16, len: u16) -> SgeSpec {
    SgeSpec {
        at: at(region, off),
        len,
    }
}

fn build(side: Side, body: Body, signaled: bool) -> Op {
    Op::Build {
        side,
        body,
        signaled,
        mutations: Vec::new(),
    }
}

fn write(remote: Loc, payload: Payload, imm: Option<u32>) -> Body {
    Body::Write {
        remote,
        payload,
        imm,
    }
}

fn wqe_seeds() -> Vec<(&'static str, Vec<Op>)> {
    use Region::*;
    use Side::{A, B};
    let own = |len| Payload::Sges(vec![sge(Own, 0, len)]);
    let poll = Op::Poll(A, 16);
    let fix_all = Fix {
        index: true,
        qpn: true,
        ds: true,
        signaled: true,
    };
    let mut ctrl = vec![0u8; 64];
    mlx5::wqe::write_ctrl(&mut ctrl, 0, opcode::RDMA_WRITE, 0, 0, 3, 0);
    let mut big_ds = ctrl.clone();
    big_ds[7] = 8; // two WQEBBs claimed, one posted
    vec![
        (
            "write-sges",
            vec![
                build(A, write(at(Peer, 0), own(64), None), true),
                poll.clone(),
            ],
        ),
        (
            "write-two-sges-unsignaled-then-nop",
            vec![
                build(
                    A,
                    write(
                        at(Peer, 100),
                        Payload::Sges(vec![sge(Own, 0, 10), sge(Own, 200, 20)]),
                        None,
                    ),
                    false,
                ),
                build(A, Body::Nop, true),
                Op::Idle,
                poll.clone(),
            ],
        ),
        (
            "write-imm-inline-with-receive",
            vec![
                Op::Recv(B, vec![]),
                build(
                    A,
                    write(at(Peer, 8), Payload::Inline(b"hello".to_vec()), Some(7)),
                    true,
                ),
                Op::Ring(A),
                Op::Progress(A),
                poll.clone(),
                Op::Poll(B, 4),
            ],
        ),
        (
            "send-and-send-imm-scatter",
            vec![
                Op::Recv(B, vec![sge(Own, 0, 16), sge(Own, 512, 100)]),
                Op::Recv(B, vec![sge(Own, 1024, 64)]),
                build(
                    A,
                    Body::Send {
                        payload: own(50),
                        imm: None,
                    },
                    true,
                ),
                build(
                    A,
                    Body::Send {
                        payload: Payload::Inline(b"inline!".to_vec()),
                        imm: Some(9),
                    },
                    true,
                ),
                Op::Idle,
                poll.clone(),
                Op::Poll(B, 4),
            ],
        ),
        (
            "read-into-two-sges",
            vec![build(
                A,
                Body::Read {
                    remote: at(Peer, 64),
                    sges: vec![sge(Own, 0, 32), sge(Own, 1000, 100)],
                },
                true,
            )],
        ),
        (
            "read-from-canary-allowed",
            vec![build(
                A,
                Body::Read {
                    remote: at(PeerCanary, 0),
                    sges: vec![sge(Own, 0, 64)],
                },
                true,
            )],
        ),
        (
            "atomics",
            vec![
                build(
                    A,
                    Body::Fa {
                        remote: at(Peer, 64),
                        result: sge(Own, 0, 8),
                        add: 5,
                    },
                    true,
                ),
                build(
                    A,
                    Body::Cas {
                        remote: at(Peer, 64),
                        result: sge(Own, 8, 8),
                        compare: 5,
                        swap: 77,
                    },
                    true,
                ),
                Op::Idle,
                poll.clone(),
            ],
        ),
        (
            "ring-wrap-with-padding",
            (0..12)
                .flat_map(|i| {
                    let inline = vec![i as u8; if i % 3 == 0 { 60 } else { 8 }];
                    [
                        build(A, write(at(Peer, 0), Payload::Inline(inline), None), true),
                        Op::Idle,
                        Op::Poll(A, 2),
                    ]
                })
                .collect(),
        ),
        (
            // Found by the harness: inline bytes at the start of the second
            // WQEBB that read as a control segment for that position on
            // QP 0x100. The device must execute the WQE by its ds.
            "inline-that-looks-like-a-control-segment",
            {
                let mut inline = vec![0x11u8; 60];
                inline[28..36].copy_from_slice(&[0, 0, 1, 8, 0, 1, 0, 1]);
                vec![
                    build(A, write(at(Peer, 0), Payload::Inline(inline), None), true),
                    Op::Idle,
                    Op::Poll(A, 2),
                ]
            },
        ),
        (
            "bad-keys-and-bounds",
            vec![
                build(A, write(at(PeerForeign, 0), own(8), None), true),
                build(A, write(at(Peer, 4090), own(8), None), true),
                Op::Idle,
                poll.clone(),
            ],
        ),
        (
            "write-to-read-only-region",
            vec![build(A, write(at(PeerCanary, 0), own(8), None), true)],
        ),
        (
            "read-into-read-only-region",
            vec![build(
                A,
                Body::Read {
                    remote: at(Peer, 0),
                    sges: vec![sge(OwnCanary, 0, 8)],
                },
                true,
            )],
        ),
        (
            "gather-invalid-and-foreign-keys",
            vec![
                build(
                    A,
                    write(at(Peer, 0), Payload::Sges(vec![sge(Invalid, 0, 8)]), None),
                    false,
                ),
                build(
                    B,
                    write(
                        at(Peer, 0),
                        Payload::Sges(vec![sge(OwnForeign, 0, 8)]),
                        None,
                    ),
                    true,
                ),
            ],
        ),
        (
            "atomic-unaligned-and-short-result",
            vec![
                build(
                    A,
                    Body::Fa {
                        remote: at(Peer, 4),
                        result: sge(Own, 0, 8),
                        add: 1,
                    },
                    true,
                ),
                build(
                    B,
                    Body::Cas {
                        remote: at(Peer, 0),
                        result: sge(Own, 0, 4),
                        compare: 0,
                        swap: 1,
                    },
                    true,
                ),
            ],
        ),
        (
            "any-key",
            vec![build(
                A,
                write(
                    at(Key(0x301), 0),
                    Payload::Sges(vec![sge(Key(0x101), 0, 8)]),
                    None,
                ),
                true,
            )],
        ),
        (
            "send-without-receive-rnr",
            vec![
                build(
                    A,
                    Body::Send {
                        payload: own(8),
                        imm: None,
                    },
                    true,
                ),
                Op::Idle,
                Op::Idle,
                poll.clone(),
            ],
        ),
        (
            "receive-too-small",
            vec![
                Op::Recv(B, vec![sge(Own, 0, 8)]),
                Op::Recv(B, vec![sge(Own, 64, 8)]),
                build(
                    A,
                    Body::Send {
                        payload: own(64),
                        imm: None,
                    },
                    true,
                ),
                Op::Idle,
                Op::Poll(B, 8),
            ],
        ),
        (
            "receive-into-read-only-region",
            vec![
                Op::Recv(B, vec![sge(OwnCanary, 0, 64)]),
                build(
                    A,
                    Body::Send {
                        payload: own(16),
                        imm: None,
                    },
                    true,
                ),
            ],
        ),
        (
            "error-mid-stream-then-post",
            vec![
                build(A, write(at(Peer, 0), own(8), None), false),
                Op::Recv(A, vec![]),
                Op::ToError(A),
                build(A, write(at(Peer, 0), own(8), None), true),
                Op::Idle,
                poll.clone(),
            ],
        ),
        (
            "flush-of-a-full-ring",
            (0..6)
                .map(|i| build(A, write(at(Peer, i * 8), own(8), None), i == 2))
                .chain([Op::Ring(A), Op::ToError(A), Op::Idle, poll.clone()])
                .collect(),
        ),
        (
            "both-sides-post",
            vec![
                Op::Recv(A, vec![sge(Own, 0, 64)]),
                build(
                    B,
                    Body::Send {
                        payload: Payload::Inline(b"from b".to_vec()),
                        imm: Some(1),
                    },
                    true,
                ),
                build(
                    A,
                    Body::Read {
                        remote: at(Peer, 0),
                        sges: vec![sge(Own, 128, 16)],
                    },
                    true,
                ),
                Op::Idle,
                Op::Poll(A, 8),
                Op::Poll(B, 8),
            ],
        ),
        (
            "raw-fixed-write",
            vec![Op::Raw {
                side: A,
                fix: fix_all,
                bytes: ctrl.clone(),
            }],
        ),
        (
            "raw-unfixed",
            vec![Op::Raw {
                side: A,
                fix: Fix::default(),
                bytes: (0..64).map(|i| (i * 37) as u8).collect(),
            }],
        ),
        (
            "raw-ds-spans-two-wqebbs",
            vec![
                Op::Raw {
                    side: A,
                    fix: Fix {
                        ds: false,
                        ..fix_all
                    },
                    bytes: big_ds,
                },
                build(A, Body::Nop, true),
            ],
        ),
        (
            "raw-refused-lengths",
            vec![
                Op::Raw {
                    side: B,
                    fix: Fix::default(),
                    bytes: Vec::new(),
                },
                Op::Raw {
                    side: B,
                    fix: Fix::default(),
                    bytes: vec![0; 200],
                },
            ],
        ),
        (
            "mutated-write",
            vec![Op::Build {
                side: A,
                body: write(at(Peer, 0), own(16), None),
                signaled: true,
                mutations: vec![(3, 0x01), (40, 0xff)],
            }],
        ),
        (
            "steps-and-partial-polls",
            vec![
                build(A, write(at(Peer, 0), own(8), None), true),
                build(A, write(at(Peer, 8), own(8), None), true),
                Op::Ring(A),
                Op::Progress(B),
                Op::Progress(A),
                Op::Poll(A, 1),
                Op::Poll(A, 1),
            ],
        ),
        (
            // Found by the fuzzer: A's zero-length WRITE_IMM meets a B
            // without receives (RNR NAK), then B moves to ERROR on a WQE
            // of an opcode the device does not execute (BIND_MW), so the
            // retry goes unanswered and waits for the ACK timeout; the end
            // check must not expect A's NOP to retire it.
            "write-imm-to-a-peer-that-fails-mid-retry",
            vec![
                build(A, write(at(Own, 0), Payload::Sges(vec![]), Some(7)), false),
                Op::Raw {
                    side: B,
                    fix: Fix {
                        index: true,
                        ..Fix::default()
                    },
                    bytes: vec![
                        0, 0, 0, 0x18, 0x18, 0x18, 0x18, 0x18, 0x18, 8, 0, 4, 4, 0, 0, 1, 0, 0, 64,
                        0, 0, 0, 0, 0,
                    ],
                },
            ],
        ),
    ]
}

fn frame_seeds() -> Vec<(&'static str, u8, u16, Vec<u8>)> {
    use frame::flags::*;
    let to_v = |psn: u32, op: u8| Req {
        src_qpn: FAKE_QPN,
        dst_qpn: V_QPN,
        psn,
        opcode: op,
        rkey: REGION_RKEY,
        addr: REGION + 2048,
        ..Req::default()
    };
    let with_len = |mut r: Req, len: u32| {
        r.len = len;
        r
    };
    let write16 = frame::req(&with_len(to_v(0, opcode::RDMA_WRITE), 16), &[0xab; 16]);
    let three: Vec<u8> = [
        frame::req(&with_len(to_v(0, opcode::RDMA_WRITE), 4), b"abcd"),
        frame::req(&with_len(to_v(1, opcode::RDMA_READ), 32), &[]),
        frame::req(
            &Req {
                swap_add: 3,
                ..with_len(to_v(2, opcode::ATOMIC_FA), 8)
            },
            &[],
        ),
    ]
    .concat();
    let mut bad_reserved = write16.clone();
    bad_reserved[5] = 1;
    let mut short_req = frame::frame(3, &[0; 20]);
    short_req.extend_from_slice(&write16);
    let mut mismatch = frame::req(&with_len(to_v(0, opcode::RDMA_WRITE), 100), &[1; 4]);
    mismatch.extend_from_slice(&write16);
    let mut partial_big = 100_000u32.to_le_bytes().to_vec();
    partial_big.extend_from_slice(&[3, 0, 0, 0]);
    partial_big.extend_from_slice(&[0; 56]);
    let resps: Vec<u8> = [
        frame::resp(V_QPN, 0, 0, 0, 0, 0, &[0x11; 64]),
        frame::resp(V_QPN, 0, 1, 0, 0, 41, &[]),
        frame::resp(V_QPN, 0, 2, 0, 0, 0, &[]),
    ]
    .concat();
    let raw_hello = frame::hello(frame::seed_peer(), [0; 16]);
    vec![
        ("handshake-only", 0, 0, Vec::new()),
        ("claim-peer-only", CLAIM_PEER, 0, Vec::new()),
        ("write-to-v", CLAIM_PEER, 0, write16.clone()),
        (
            "write-imm-to-v",
            CLAIM_PEER,
            0,
            frame::req(
                &Req {
                    imm: 9,
                    ..with_len(to_v(0, opcode::RDMA_WRITE_IMM), 4)
                },
                b"wimm",
            ),
        ),
        (
            "send-and-send-imm-to-v",
            CLAIM_PEER,
            0,
            [
                frame::req(&with_len(to_v(0, opcode::SEND), 100), &[7; 100]),
                frame::req(
                    &Req {
                        imm: 5,
                        ..with_len(to_v(1, opcode::SEND_IMM), 3)
                    },
                    b"imm",
                ),
            ]
            .concat(),
        ),
        (
            "send-too-large-for-receive",
            CLAIM_PEER,
            0,
            frame::req(&with_len(to_v(0, opcode::SEND), 2000), &[1; 2000]),
        ),
        (
            "read-from-v-and-canary",
            CLAIM_PEER,
            0,
            [
                frame::req(&with_len(to_v(0, opcode::RDMA_READ), 64), &[]),
                frame::req(
                    &Req {
                        rkey: CANARY_RKEY,
                        addr: CANARY_ADDR,
                        ..with_len(to_v(1, opcode::RDMA_READ), 64)
                    },
                    &[],
                ),
            ]
            .concat(),
        ),
        (
            "atomics-on-v",
            CLAIM_PEER,
            0,
            [
                frame::req(
                    &Req {
                        compare: 0,
                        swap_add: 99,
                        ..with_len(to_v(0, opcode::ATOMIC_CS), 8)
                    },
                    &[],
                ),
                frame::req(
                    &Req {
                        swap_add: 1,
                        addr: REGION + 3,
                        ..with_len(to_v(1, opcode::ATOMIC_FA), 8)
                    },
                    &[],
                ),
            ]
            .concat(),
        ),
        (
            "write-to-canary-refused",
            CLAIM_PEER,
            0,
            frame::req(
                &Req {
                    rkey: CANARY_RKEY,
                    addr: CANARY_ADDR,
                    ..with_len(to_v(0, opcode::RDMA_WRITE), 8)
                },
                &[0; 8],
            ),
        ),
        (
            "out-of-sequence",
            CLAIM_PEER,
            0,
            frame::req(&with_len(to_v(5, opcode::RDMA_WRITE), 1), b"x"),
        ),
        // ACK requests (kind 5): bare, between requests (the held ACKs
        // leave), and one with a body (malformed: the link dies).
        (
            "ack-requests",
            CLAIM_PEER,
            0,
            [frame::frame(5, &[]), three.clone(), frame::frame(5, &[])].concat(),
        ),
        ("ack-request-with-a-body", CLAIM_PEER, 0, frame::frame(5, &[0])),
        ("three-requests", CLAIM_PEER, 0, three.clone()),
        ("three-requests-split-mid-frame", CLAIM_PEER, 70, three),
        ("stranger-request-refused", 0, 0, write16.clone()),
        ("answers-to-v", CLAIM_PEER | V_REQUESTS, 0, resps.clone()),
        ("answers-to-v-split", CLAIM_PEER | V_REQUESTS, 45, resps),
        (
            "rnr-nak-and-out-of-sequence-answers",
            CLAIM_PEER | V_REQUESTS,
            0,
            [
                frame::resp(V_QPN, 0, 0, 1, 1, 0, &[]),
                frame::resp(V_QPN, 0, 1, 3, 0, 0, &[]),
                frame::resp(V_QPN, 0, 2, 2, 0x13, 0, &[]),
            ]
            .concat(),
        ),
        // Folded plain ACKs (`more`): answering v's three requests at
        // once (its READ gets no data: it fails), naming a request that is
        // not the k-th unanswered one (stale, dropped), counting past what
        // is outstanding (stale), and `more` on a NAK (malformed: the link
        // dies).
        (
            "folded-ack-answers-all-of-v",
            CLAIM_PEER | V_REQUESTS,
            0,
            frame::resp_more(V_QPN, 0, 2, 0, 2),
        ),
        (
            "folded-ack-names-the-wrong-request",
            CLAIM_PEER | V_REQUESTS,
            0,
            frame::resp_more(V_QPN, 0, 2, 0, 1),
        ),
        (
            "folded-ack-past-the-outstanding",
            CLAIM_PEER | V_REQUESTS,
            0,
            frame::resp_more(V_QPN, 0, 9, 0, 7),
        ),
        (
            "more-on-a-nak",
            CLAIM_PEER | V_REQUESTS,
            0,
            frame::resp_more(V_QPN, 0, 1, 2, 1),
        ),
        (
            "read-answer-of-wrong-length",
            CLAIM_PEER | V_REQUESTS,
            0,
            frame::resp(V_QPN, 0, 0, 0, 0, 0, &[0; 10]),
        ),
        (
            "stale-epoch-answer",
            CLAIM_PEER | V_REQUESTS,
            0,
            frame::resp(V_QPN, 7, 0, 0, 0, 0, &[0; 64]),
        ),
        ("bad-reserved-header-bytes", CLAIM_PEER, 0, bad_reserved),
        ("short-req", CLAIM_PEER, 0, short_req),
        ("payload-length-mismatch", CLAIM_PEER, 0, mismatch),
        ("hello-after-handshake", CLAIM_PEER, 0, raw_hello.clone()),
        ("unknown-kind", 0, 0, frame::frame(9, &[0; 8])),
        (
            "bad-resp-status",
            0,
            0,
            frame::resp(V_QPN, 0, 0, 9, 0, 0, &[]),
        ),
        ("body-promised-not-sent", CLAIM_PEER, 0, partial_big),
        ("raw-garbage-handshake", RAW_HANDSHAKE, 0, vec![0xff; 64]),
        (
            "raw-hello-to-another-device",
            RAW_HANDSHAKE,
            0,
            raw_hello.clone(),
        ),
        (
            "raw-hello-then-write",
            RAW_HANDSHAKE | FIX_TO,
            0,
            [raw_hello, write16].concat(),
        ),
    ]
}

fn put(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

/// Seeds of one target: file names and bytes.
type Seeds = Vec<(&'static str, Vec<u8>)>;

/// Every seed's file name and bytes, per target directory.
fn corpus() -> Vec<(&'static str, Seeds)> {
    let wqe = wqe_seeds()
        .into_iter()
        .map(|(name, ops)| {
            let mut w = Writer::default();
            for op in &ops {
                op.encode(&mut w);
            }
            let mut r = mlx5_fuzz::input::Reader::new(&w.0);
            let back: Vec<Op> =
                std::iter::from_fn(|| (!r.is_empty()).then(|| Op::decode(&mut r))).collect();
            assert_eq!(back, ops, "{name}: the encoding reads back");
            (name, w.0)
        })
        .collect();
    let frames = frame_seeds()
        .into_iter()
        .map(|(name, flags, split, bytes)| {
            let mut w = Writer::default();
            w.u8(flags).u16(split).bytes(&bytes);
            (name, w.0)
        })
        .collect();
    vec![("wqe", wqe), ("frame", frames)]
}

/// The committed files that differ from what this program writes (a
/// changed wire format leaves old seeds that only hit the first check),
/// and the ones it would not write.
fn stale(root: &Path, corpus: &[(&str, Seeds)]) -> Vec<String> {
    let mut out = Vec::new();
    for (t, seeds) in corpus {
        let dir = root.join(t);
        for (name, bytes) in seeds {
            match std::fs::read(dir.join(name)) {
                Ok(b) if &b == bytes => {}
                Ok(_) => out.push(format!("{t}/{name}: differs")),
                Err(e) => out.push(format!("{t}/{name}: {e}")),
            }
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            if !seeds.iter().any(|(n, _)| *n == f) {
                out.push(format!("{t}/{f}: not written by this program"));
            }
        }
    }
    out
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let corpus = corpus();
    if std::env::args().any(|a| a == "--check") {
        let bad = stale(&root, &corpus);
        if !bad.is_empty() {
            eprintln!(
                "the committed seeds are not what examples/seeds.rs writes \
                 (run it without --check and commit the result):"
            );
            for b in &bad {
                eprintln!("  {b}");
            }
            std::process::exit(1);
        }
        println!("the committed seeds are up to date");
        return;
    }
    for (t, seeds) in &corpus {
        let d = root.join(t);
        if d.exists() {
            std::fs::remove_dir_all(&d).expect("clear old seeds");
        }
        std::fs::create_dir_all(&d).expect("seed dir");
        for (name, bytes) in seeds {
            put(&d, name, bytes);
            match *t {
                "wqe" => mlx5_fuzz::wqe::run(bytes),
                _ => mlx5_fuzz::frame::run(bytes),
            }
        }
    }
    println!(
        "{} wqe seeds, {} frame seeds written to {} and run",
        corpus[0].1.len(),
        corpus[1].1.len(),
        root.display()
    );
}
