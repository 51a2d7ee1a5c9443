//! copyrpc between two OS processes: this test and a `copyrpc-peer` it
//! spawns, software devices linked over shared memory (the default link
//! between processes of one host; the unix socket carries the handshake).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use copyrpc::{Config, Context, Endpoint, EndpointError, EndpointInfo, Limits, RpcError};
use mlx5::{ConnectOpts, Progress, Syndrome};

const TIMEOUT: Duration = Duration::from_secs(20);

struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    infos: Vec<EndpointInfo>,
}

impl Peer {
    fn spawn(endpoints: usize, l: Limits) -> Peer {
        let n = |v: u32| v.to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_copyrpc-peer"))
            .args(["--device", "soft", "--endpoints", &endpoints.to_string()])
            .args(["--ring", &n(l.ring), "--inflight", &n(l.max_inflight)])
            .args(["--max-call", &n(l.max_call), "--max-reply", &n(l.max_reply)])
            .args(["--max-batch", &n(l.max_batch)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn copyrpc-peer");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let infos = line
            .strip_prefix("info ")
            .unwrap_or_else(|| panic!("copyrpc-peer said {line:?}"))
            .split_whitespace()
            .map(|h| EndpointInfo::from_hex(h).unwrap())
            .collect();
        Peer {
            child,
            stdin,
            stdout,
            infos,
        }
    }

    fn cmd(&mut self, c: &str) {
        writeln!(self.stdin, "{c}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ok", "copyrpc-peer: {c:?} → {line:?}");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This side (a manual software device, stepped by every poll) connected
/// to a fresh peer process.
fn setup(cfg: Config, endpoints: usize) -> (Context<u64>, Vec<Endpoint>, Peer) {
    let mut peer = Peer::spawn(endpoints, cfg.limits);
    let dev = mlx5::Context::soft(Progress::Manual);
    let mut ctx = Context::new(&dev, cfg).unwrap();
    let mut eps = Vec::new();
    let mut mine = Vec::new();
    for info in &peer.infos {
        let ep = ctx.endpoint().unwrap();
        mine.push(ctx.local_info(ep).unwrap().to_hex());
        ctx.connect(ep, info).unwrap();
        eps.push(ep);
    }
    peer.cmd(&format!("connect {}", mine.join(" ")));
    (ctx, eps, peer)
}

fn plus_one(d: &[u8]) -> Vec<u8> {
    d.iter().map(|b| b.wrapping_add(1)).collect()
}

fn payload(i: u64) -> Vec<u8> {
    let mut v = i.to_le_bytes().to_vec();
    v.extend((0..(i % 300) as u8).map(|k| k ^ i as u8));
    v
}

/// Calls `total` times on every endpoint with up to `depth` in flight each,
/// checking every reply.
fn stream(ctx: &mut Context<u64>, eps: &[Endpoint], total: u64, depth: u32) {
    let mut sent = vec![0u64; eps.len()];
    let mut done = 0u64;
    let want = total * eps.len() as u64;
    let start = Instant::now();
    while done < want {
        for (k, &ep) in eps.iter().enumerate() {
            while sent[k] < total && ctx.in_flight(ep) < depth {
                let i = sent[k] * eps.len() as u64 + k as u64;
                ctx.call(ep, &payload(i), i).unwrap();
                sent[k] += 1;
            }
        }
        ctx.poll(|i, r| {
            assert_eq!(r.unwrap(), plus_one(&payload(i)).as_slice(), "reply {i}");
            done += 1;
        })
        .unwrap();
        assert!(start.elapsed() < TIMEOUT, "{done} of {want} replies");
    }
}

#[test]
fn calls_across_processes_come_back_intact() {
    let (mut ctx, eps, _peer) = setup(Config::default(), 4);
    stream(&mut ctx, &eps[..1], 500, 1);
    stream(&mut ctx, &eps, 2000, 32);
}

/// At one call in flight each call leaves with the ACK of the reply before
/// it: the device holds that ACK for its next step, and `poll` posts the
/// queued call before the step. One ring record (or `write`) per call,
/// not two.
#[test]
fn a_call_leaves_with_the_ack_of_the_last_reply() {
    const N: u64 = 300;
    let (mut ctx, eps, _peer) = setup(Config::default(), 1);
    stream(&mut ctx, &eps, 20, 1);
    let before = ctx.device().wire_stats().unwrap();
    stream(&mut ctx, &eps, N, 1);
    let after = ctx.device().wire_stats().unwrap();
    let (writes, frames) = (
        after.writes - before.writes,
        after.frames_sent - before.frames_sent,
    );
    assert!(
        writes <= N + N / 10,
        "{writes} writes for {N} calls ({frames} frames): the ACKs went alone"
    );
}

/// Calls `n` on `ep` and polls until each came back; returns the results
/// by user data.
fn fail_all(ctx: &mut Context<u64>, ep: Endpoint, n: u64) -> Vec<(u64, Result<Vec<u8>, RpcError>)> {
    let mut out = Vec::new();
    for i in 0..n {
        ctx.call(ep, &payload(i), i).unwrap();
    }
    let start = Instant::now();
    while (out.len() as u64) < n {
        ctx.poll(|u, r| out.push((u, r.map(|d| d.to_vec()))))
            .unwrap();
        assert!(
            start.elapsed() < TIMEOUT,
            "{} of {n} calls came back",
            out.len()
        );
    }
    out.sort_by_key(|(u, _)| *u);
    out
}

#[test]
fn a_killed_peer_returns_every_call_with_transport_retry_exceeded() {
    let (mut ctx, eps, mut peer) = setup(Config::default(), 1);
    stream(&mut ctx, &eps, 100, 8);
    peer.child.kill().unwrap();
    peer.child.wait().unwrap();
    let start = Instant::now();
    let out = fail_all(&mut ctx, eps[0], 16);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        out.iter().map(|(u, _)| *u).collect::<Vec<_>>(),
        (0..16).collect::<Vec<_>>()
    );
    for (_, r) in &out {
        assert_eq!(
            r,
            &Err(RpcError::Endpoint(EndpointError::Completion {
                endpoint: 0,
                syndrome: Syndrome::TransportRetryExceeded
            }))
        );
    }
}

/// An endpoint with `keepalive`, after some calls, whose peer process was
/// then killed: nothing is in flight.
fn idle_endpoint_of_a_killed_peer(keepalive: Option<Duration>) -> (Context<u64>, Endpoint) {
    let cfg = Config {
        keepalive,
        ..Config::default()
    };
    let (mut ctx, eps, mut peer) = setup(cfg, 1);
    stream(&mut ctx, &eps, 20, 4);
    peer.child.kill().unwrap();
    peer.child.wait().unwrap();
    (ctx, eps[0])
}

/// An endpoint that only waits for requests learns that its peer died
/// from its keepalive probe, with no call of its own.
#[test]
fn a_killed_peer_fails_an_endpoint_that_only_waits_for_requests() {
    let (mut ctx, ep) = idle_endpoint_of_a_killed_peer(Some(Duration::from_millis(50)));
    let eps = [ep];
    let start = Instant::now();
    while ctx.endpoint_error(eps[0]).is_none() {
        ctx.poll(|u, r| panic!("nothing was in flight, yet {u}: {r:?}"))
            .unwrap();
        assert!(start.elapsed() < TIMEOUT, "the endpoint never failed");
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        ctx.endpoint_error(eps[0]),
        Some(&EndpointError::Completion {
            endpoint: 0,
            syndrome: Syndrome::TransportRetryExceeded
        })
    );
    // Without probes an idle endpoint never finds out (as an RC QP).
    let (mut ctx, ep) = idle_endpoint_of_a_killed_peer(None);
    let eps = [ep];
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(300) {
        ctx.poll(|u, r| panic!("nothing was in flight, yet {u}: {r:?}"))
            .unwrap();
    }
    assert_eq!(ctx.endpoint_error(eps[0]), None);
}

/// Probes go out while an endpoint is idle, only then, and leave a live
/// peer's endpoint working: its calls before and after come back intact.
#[test]
fn keepalive_probes_an_idle_endpoint_and_leaves_a_live_one_alone() {
    let idle_frames = |keepalive| {
        let cfg = Config {
            keepalive,
            ..Config::default()
        };
        let (mut ctx, eps, _peer) = setup(cfg, 2);
        stream(&mut ctx, &eps, 50, 4);
        let before = ctx.device().wire_stats().unwrap().frames_sent;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(400) {
            ctx.poll(|u, r| panic!("nothing was in flight, yet {u}: {r:?}"))
                .unwrap();
        }
        let frames = ctx.device().wire_stats().unwrap().frames_sent - before;
        assert_eq!(ctx.endpoint_error(eps[0]), None);
        assert_eq!(ctx.endpoint_error(eps[1]), None);
        stream(&mut ctx, &eps, 50, 4);
        frames
    };
    // 400 ms at one probe per 20 ms or more, on each of two endpoints; the
    // first look only starts the clock.
    let probed = idle_frames(Some(Duration::from_millis(20)));
    assert!(probed >= 8, "{probed} frames sent while idle");
    // Without probes, at most the ACKs the device held when the calls
    // stopped, and the ACK of a probe from the peer (which keeps the
    // default period of 1 s: it may fall in the idle time).
    let quiet = idle_frames(None);
    assert!(quiet <= 3, "{quiet} frames sent while idle");
}

#[test]
fn a_partitioned_peer_fails_calls_after_the_ack_timeout() {
    // 4.096 µs × 2^10 × (retry_cnt 1 + 1): about 8 ms.
    let cfg = Config {
        connect: ConnectOpts {
            timeout: 10,
            retry_cnt: 1,
            ..ConnectOpts::default()
        },
        ..Config::default()
    };
    let (mut ctx, eps, peer) = setup(cfg, 1);
    stream(&mut ctx, &eps, 50, 4);
    ctx.device()
        .faults()
        .unwrap()
        .partition_peer(&peer.infos[0].qp)
        .unwrap();
    let start = Instant::now();
    let out = fail_all(&mut ctx, eps[0], 8);
    assert!(start.elapsed() < Duration::from_secs(5));
    for (_, r) in &out {
        assert_eq!(
            r,
            &Err(RpcError::Endpoint(EndpointError::Completion {
                endpoint: 0,
                syndrome: Syndrome::TransportRetryExceeded
            }))
        );
    }
}

#[test]
fn a_peer_that_stops_polling_times_calls_out_then_recovers() {
    let cfg = Config {
        call_timeout: Some(Duration::from_millis(100)),
        limits: Limits {
            max_inflight: 4,
            ..Limits::default()
        },
        ..Config::default()
    };
    let (mut ctx, eps, mut peer) = setup(cfg, 1);
    stream(&mut ctx, &eps, 20, 4);
    peer.cmd("stall");
    let out = fail_all(&mut ctx, eps[0], 4);
    assert!(
        out.iter().all(|(_, r)| r == &Err(RpcError::Timeout)),
        "{out:?}"
    );
    peer.cmd("resume");
    let start = Instant::now();
    while ctx.in_flight(eps[0]) > 0 {
        ctx.poll(|u, r| panic!("late reply to {u} delivered: {r:?}"))
            .unwrap();
        assert!(start.elapsed() < TIMEOUT);
    }
    stream(&mut ctx, &eps, 20, 4);
}
