//! UCX active messages between two processes of one host: the same-host RPC
//! peer a user would pick instead of `ipc` (beside Unix sockets and
//! iceoryx2, which the ipc suite measures), and the network hop of
//! benchkv's `ucx-am` backend on one host.
//!
//! `ucx-am-pingpong` (run by `scripts/bench.sh` after the ipc suite) measures
//! one 16-byte active message each way at a time, over UCX's shared-memory
//! transports and over tcp, through benchkv's own `UcxNet` (the code the
//! benchkv daemons run), between this process and a helper process (this
//! binary re-executed), pinned to the two cores of `benchutil::core_pair`.
//! The figures are interleaved with the cache-line floor between processes
//! in `benchutil`'s summary, and land in `target/bench-summary/ucx.md` and
//! `ucx.json`.
//!
//! Knobs: `PEERS_BENCH_ROUNDS` (default 7), `PEERS_BENCH_VERBOSE`,
//! `BENCH_QUICK` (see `benchutil::Knobs`); not `UCX_…`, a prefix UCX reads
//! as its own and warns about.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use benchkv::net::ucx::UcxNet;
use benchkv::net::{Bootstrap, NetSetup, Network, Refused};
use benchkv::route::Routing;
use benchutil::summary::{self, Item, Knobs};
use benchutil::{Helper, as_helper, core_pair, floor_processes, pin};

/// Payload bytes each way.
const PAYLOAD: usize = 16;
/// First byte of the request that ends the helper's service.
const STOP: u8 = 0xff;
/// Round trips before the timed ones.
const WARM_UP: u64 = 1000;
/// The client is rank 0, the helper rank 1, one daemon each.
const RANKS: u32 = 2;

fn setup(rank: u32, tls: &str) -> NetSetup {
    NetSetup {
        routing: Routing::new(RANKS, 1, 1),
        rank,
        daemon: 0,
        value_size: PAYLOAD,
        max_inflight: 1,
        ucx_tls: Some(tls.to_string()),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("a hex worker address"))
        .collect()
}

/// Helper role `ucx-echo TLS CORE`: prints its worker address, reads the
/// client's, then answers every request with its bytes until stdin closes.
fn echo_role(args: &[String]) {
    let (tls, core) = (&args[0], args[1].parse().expect("core number"));
    pin(core);
    let (mut net, blob) = UcxNet::<()>::prepare(&setup(1, tls)).expect("UCX worker");
    println!("ready");
    println!("{}", hex(&blob));
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .expect("client address");
    let theirs = unhex(line.trim());
    net.connect(&[theirs, blob])
        .expect("UCX endpoint to the client");
    let closed = Arc::new(AtomicBool::new(false));
    {
        let closed = closed.clone();
        // Stdin closes when the client is done (Helper::finish); until then
        // this process keeps progressing, so the last reply leaves.
        std::thread::spawn(move || {
            for _ in std::io::stdin().lines() {}
            // Relaxed: only a stop signal, no data rides on it.
            closed.store(true, Ordering::Relaxed);
        });
    }
    let mut stopped = false;
    // Relaxed: see the store.
    while !closed.load(Ordering::Relaxed) {
        let r = net.poll(
            &mut |req, out| {
                stopped |= req.first() == Some(&STOP);
                out[..req.len()].copy_from_slice(req);
                req.len()
            },
            &mut |(), _| {},
        );
        if stopped {
            // The client may close its endpoint first: not an error now.
            net.quiesce();
        } else {
            r.expect("UCX progress");
        }
    }
}

/// `iters` round trips of a 16-byte active message each way over `tls`
/// between this thread and a helper process.
fn round_trips(tls: &str, iters: u64) -> Duration {
    let (c0, c1) = core_pair();
    let mut h = Helper::start("ucx-echo", &[tls.to_string(), c1.to_string()]);
    pin(c0);
    let (mut net, blob) = UcxNet::<u64>::prepare(&setup(0, tls)).expect("UCX worker");
    let theirs = unhex(h.line().trim());
    h.send(&hex(&blob));
    net.connect(&[blob, theirs])
        .expect("UCX endpoint to the helper");
    let mut trip = |i: u64, first: u8| {
        let mut req = [0u8; PAYLOAD];
        req[0] = first;
        req[8..].copy_from_slice(&i.to_le_bytes());
        match net.call(1, &req, i) {
            Ok(()) => {}
            Err(Refused::Busy(_)) => panic!("busy with no call in flight"),
            Err(Refused::Failed(_, e)) => panic!("UCX call: {e}"),
        }
        let mut back = false;
        let mut stall = benchutil::SpinLimit::new(Duration::from_secs(10));
        while !back {
            net.poll(&mut |_, _| 0, &mut |id, resp| {
                assert_eq!(id, i, "the reply of call {i}");
                assert_eq!(resp, &req[..], "the echo of call {i}");
                back = true;
            })
            .expect("UCX progress");
            assert!(!stall.passed(), "no reply to call {i} in 10 s");
        }
    };
    for i in 0..WARM_UP {
        trip(i, 1);
    }
    let t0 = Instant::now();
    for i in WARM_UP..WARM_UP + iters {
        trip(i, 1);
    }
    let d = t0.elapsed();
    trip(u64::MAX, STOP);
    net.quiesce();
    drop(net);
    h.finish();
    d
}

fn main() {
    if as_helper(|role, args| match role {
        "ucx-echo" => echo_role(args),
        other => panic!("unknown helper role {other}"),
    }) {
        return;
    }
    let knobs = Knobs::from_env("PEERS_BENCH", 7);
    let items = vec![
        Item::latency("floor/processes", 200_000, floor_processes),
        Item::latency("pingpong/ucx-am-shm", 20_000, |n| round_trips("shm", n)).note(Some(
            "UCX_TLS=shm: UCX's shared-memory transports, no peer failure detection".into(),
        )),
        Item::latency("pingpong/ucx-am-tcp", 5_000, |n| round_trips("tcp", n)).note(Some(
            "UCX_TLS=tcp over loopback, peer failure detection on".into(),
        )),
    ];
    let mut m = summary::run(&knobs, items, benchutil::canary_ns);
    let shm = m.ratio("pingpong/ucx-am-shm", "floor/processes", "floor");
    let tcp = m.ratio("pingpong/ucx-am-tcp", "floor/processes", "floor");
    let mut out = m.preamble("ucx");
    out += "| figure | median | vs floor/processes | note |\n|---|---|---|---|\n";
    for (f, r) in m.figures.iter().zip([None, Some(shm), Some(tcp)]) {
        out += &format!(
            "| {} | {:.0} ns | {} | {} |\n",
            f.id,
            f.ns,
            r.map_or(String::new(), |r| format!("{r:.1}×")),
            f.note.as_deref().unwrap_or("")
        );
    }
    out += &format!(
        "\n16-byte active message each way through benchkv's UcxNet, one in flight, \
         between two processes pinned to cores {} and {}.\ncanary (floor/threads, {}k trips) \
         per round, ns: {:?}\n",
        core_pair().0,
        core_pair().1,
        benchutil::CANARY_TRIPS / 1000,
        m.canaries_ns()
    );
    m.write_report("ucx", &out);
}
