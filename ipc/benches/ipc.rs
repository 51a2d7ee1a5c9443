//! ipc benchmarks: the cache-line floor, synchronous ping-pong, multi-client
//! throughput, and the peers (Unix domain sockets, iceoryx2
//! request-response), each as a criterion group; then an interleaved summary
//! pass that prints every figure with its ratio to the floor and the peers.
//!
//! `cargo bench -p ipc`. Environment knobs: `IPC_BENCH_ROUNDS` (summary
//! rounds, default 7), `IPC_BENCH_SKIP_CRITERION=1`, `IPC_BENCH_SKIP_SUMMARY=1`,
//! `IPC_BENCH_VERBOSE=1` (name each summary figure as it runs).
//!
//! Every cross-process figure re-executes this binary as the other process
//! (see `benchutil::Helper`), pinned to the second core of the pair. The
//! floor, pinning and the interleaved summary runner are `benchutil`'s; the
//! peers are in `support`.

mod support;

use std::io::BufRead;
use std::time::{Duration, Instant};

use benchutil::summary::{self, Item, Kind, Knobs};
use benchutil::{Helper, core_pair, floor_processes, floor_threads, mono_ns, pin, unique};
use criterion::{BenchmarkId, Criterion, Throughput};
use ipc::{AsyncClient, Client, ClientConfig, Server, ServerConfig, WaitStrategy};

type Msg = [u64; 2];
const STOP: u64 = u64::MAX;

fn wait_arg(blocking: bool) -> String {
    if blocking { "block" } else { "busy" }.to_string()
}

fn strategy(arg: &str) -> WaitStrategy {
    if arg == "block" {
        // No spinning at all: every wait is a real futex sleep and wake-up.
        WaitStrategy::Block { spins: 0 }
    } else {
        WaitStrategy::BusyPoll
    }
}

/// Role `ipc-server NAME CORE WAIT MAX_CLIENTS DEPTH`: answers `[a, b]`
/// with `[a, b + 1]` until a request with `a == STOP`.
fn ipc_server_role(args: &[String]) {
    let cfg = ServerConfig::new()
        .max_clients(args[3].parse().unwrap())
        .ring_depth(args[4].parse().unwrap())
        .wait(strategy(&args[2]));
    let mut server = Server::<Msg, Msg>::create(&args[0], cfg).expect("create server");
    pin(args[1].parse().unwrap());
    println!("ready");
    serve_until_stop(&mut server);
}

fn serve_until_stop(server: &mut Server<Msg, Msg>) {
    let mut stop = false;
    while !stop {
        let done = server.serve(64, |_, req| {
            stop |= req[0] == STOP;
            [req[0], req[1] + 1]
        });
        if done.handled == 0 {
            server.wait(Duration::from_millis(100));
        }
    }
}

/// Role `ipc-client NAME CALLS DEPTH`: attaches, waits for a line on stdin,
/// runs CALLS calls with up to DEPTH in flight, prints "start_ns end_ns".
fn ipc_client_role(args: &[String]) {
    let calls: u64 = args[1].parse().unwrap();
    let depth: usize = args[2].parse().unwrap();
    let mut c =
        AsyncClient::<Msg, Msg, u64>::connect(&args[0], ClientConfig::new()).expect("connect");
    println!("ready");
    let mut go = String::new();
    std::io::stdin().lock().read_line(&mut go).unwrap();
    let start = mono_ns();
    let (mut sent, mut done) = (0u64, 0u64);
    while done < calls {
        while sent < calls && c.in_flight() < depth {
            c.call(&[1, sent], sent).map_err(|e| e.to_string()).unwrap();
            sent += 1;
        }
        done += c
            .wait(|id, resp| assert_eq!(resp[1], id + 1))
            .expect("server alive") as u64;
    }
    let end = mono_ns();
    println!("{start} {end}");
}

/// Synchronous round trips to a server in another process.
fn pingpong_processes(iters: u64, blocking: bool) -> Duration {
    let name = unique("ipc-bench-pp");
    let (c0, c1) = core_pair();
    let helper = Helper::start(
        "ipc-server",
        &[
            name.clone(),
            c1.to_string(),
            wait_arg(blocking),
            "1".into(),
            "1".into(),
        ],
    );
    pin(c0);
    let cfg = ClientConfig::new().wait(strategy(&wait_arg(blocking)));
    let mut client = Client::<Msg, Msg>::connect(&name, cfg).expect("connect");
    for i in 0..1000 {
        client.call(&[1, i]).unwrap();
    }
    let t0 = Instant::now();
    for i in 0..iters {
        let r = client.call(&[1, i]).unwrap();
        debug_assert_eq!(r[1], i + 1);
    }
    let d = t0.elapsed();
    let _ = client.call(&[STOP, 0]);
    drop(client);
    helper.finish();
    d
}

/// Synchronous round trips to a server thread of this process.
fn pingpong_threads(iters: u64) -> Duration {
    let name = unique("ipc-bench-ppt");
    let (c0, c1) = core_pair();
    let mut server =
        Server::<Msg, Msg>::create(&name, ServerConfig::new().max_clients(1).ring_depth(1))
            .expect("create");
    let t = std::thread::spawn(move || {
        pin(c1);
        serve_until_stop(&mut server);
    });
    pin(c0);
    let mut client = Client::<Msg, Msg>::connect(&name, ClientConfig::new()).expect("connect");
    for i in 0..1000 {
        client.call(&[1, i]).unwrap();
    }
    let t0 = Instant::now();
    for i in 0..iters {
        client.call(&[1, i]).unwrap();
    }
    let d = t0.elapsed();
    let _ = client.call(&[STOP, 0]);
    t.join().unwrap();
    d
}

/// `clients` client processes with `depth` calls in flight each against a
/// server process; returns the time `iters` calls take at the aggregate rate.
fn multi_client(iters: u64, clients: usize, depth: usize) -> Duration {
    let name = unique("ipc-bench-mc");
    let (_, c1) = core_pair();
    let server = Helper::start(
        "ipc-server",
        &[
            name.clone(),
            c1.to_string(),
            "busy".into(),
            clients.to_string(),
            "4".into(),
        ],
    );
    let per = (iters / clients as u64).max(depth as u64);
    let mut cs: Vec<Helper> = (0..clients)
        .map(|_| {
            Helper::start(
                "ipc-client",
                &[name.clone(), per.to_string(), depth.to_string()],
            )
        })
        .collect();
    for c in &mut cs {
        c.send("go");
    }
    let (mut first, mut last) = (u64::MAX, 0);
    for c in &mut cs {
        let line = c.line();
        let mut it = line.split_whitespace().map(|x| x.parse::<u64>().unwrap());
        first = first.min(it.next().unwrap());
        last = last.max(it.next().unwrap());
    }
    for c in cs {
        c.finish();
    }
    // The measured clients have exited, but the server frees their slots
    // only when it next looks at its connections (within its liveness
    // interval): until then a one-slot server is full. Connect retries
    // NoFreeSlot until its deadline, so the stopper never races them.
    let cfg = ClientConfig::new().connect_timeout(Duration::from_secs(10));
    let mut stopper = Client::<Msg, Msg>::connect(&name, cfg).expect("connect stopper");
    let _ = stopper.call(&[STOP, 0]);
    drop(stopper);
    server.finish();
    let total = per * clients as u64;
    Duration::from_nanos(((last - first) as f64 * iters as f64 / total as f64) as u64)
}

/// Cost of one empty `Server::recv` with one attached, idle client, for a
/// segment of `max_clients` slots of ring depth `depth`: it must not grow
/// with `max_clients × depth`.
fn idle_poll(iters: u64, max_clients: u32, depth: u32) -> Duration {
    let name = unique("ipc-bench-poll");
    let cfg = ServerConfig::new()
        .max_clients(max_clients)
        .ring_depth(depth);
    let mut server = Server::<Msg, Msg>::create(&name, cfg).expect("create");
    // Connect waits for the server's answer: connect from another thread
    // while this one lets the server look at its connections.
    let _client = std::thread::scope(|s| {
        let h = s.spawn(|| Client::<Msg, Msg>::connect(&name, ClientConfig::new()));
        while !h.is_finished() {
            server.refresh();
        }
        h.join().unwrap().expect("connect")
    });
    assert_eq!(server.attached_clients(), 1);
    let t0 = Instant::now();
    for _ in 0..iters {
        assert!(std::hint::black_box(server.recv()).is_none());
    }
    t0.elapsed()
}

fn iceoryx2(iters: u64) -> Duration {
    let name = unique("ipc-bench-iox");
    let (c0, c1) = core_pair();
    let helper = Helper::start("iox", &[name.clone(), c1.to_string()]);
    pin(c0);
    let d = support::iox::client_round_trips(&name, 1000, iters).expect("iceoryx2 client");
    helper.finish();
    d
}

fn iox_role(args: &[String]) {
    pin(args[1].parse().unwrap());
    println!("ready");
    support::iox::run_server(&args[0]).expect("iceoryx2 server");
}

/// Whether clients plus the server outnumber the cores available.
fn oversubscription_note(clients: usize) -> Option<String> {
    let cores = benchutil::allowed_cpus().len();
    (clients + 1 > cores).then(|| {
        format!(
            "{clients} clients + 1 server on {cores} cores: clients outnumber the {} free core(s)",
            cores.saturating_sub(1)
        )
    })
}

fn criterion_groups(c: &mut Criterion) {
    let mut g = c.benchmark_group("floor");
    g.bench_function("threads", |b| b.iter_custom(floor_threads));
    g.bench_function("processes", |b| b.iter_custom(floor_processes));
    g.finish();

    let mut g = c.benchmark_group("pingpong");
    g.bench_function("processes", |b| {
        b.iter_custom(|n| pingpong_processes(n, false))
    });
    g.bench_function("threads", |b| b.iter_custom(pingpong_threads));
    g.bench_function("processes-blocking", |b| {
        b.iter_custom(|n| pingpong_processes(n, true))
    });
    g.finish();

    let mut g = c.benchmark_group("multi_client");
    g.throughput(Throughput::Elements(1));
    for clients in 1..=4 {
        for depth in [1, 4] {
            if let Some(note) = oversubscription_note(clients) {
                eprintln!("multi_client/{clients}x-depth{depth}: note: {note}");
            }
            g.bench_function(
                BenchmarkId::new(format!("{clients}x"), format!("depth{depth}")),
                |b| b.iter_custom(|n| multi_client(n, clients, depth)),
            );
        }
    }
    g.finish();

    let mut g = c.benchmark_group("server_poll");
    for (clients, depth) in [(1, 1), (4096, 64)] {
        g.bench_function(format!("idle-{clients}x{depth}"), |b| {
            b.iter_custom(|n| idle_poll(n, clients, depth))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("peers");
    g.bench_function("uds", |b| b.iter_custom(support::uds_round_trips));
    g.bench_function("iceoryx2", |b| b.iter_custom(iceoryx2));
    g.finish();
}

fn summary(knobs: &Knobs) {
    let mut items = vec![
        Item::latency("floor/threads", 200_000, floor_threads),
        Item::latency("floor/processes", 200_000, floor_processes),
        Item::latency("pingpong/threads", 200_000, pingpong_threads),
        Item::latency("pingpong/processes", 200_000, |n| {
            pingpong_processes(n, false)
        }),
        Item::latency("pingpong/processes-blocking", 2_000, |n| {
            pingpong_processes(n, true)
        }),
        Item::latency("peers/uds", 5_000, support::uds_round_trips),
        Item::latency("peers/iceoryx2", 20_000, iceoryx2),
        Item::latency("server_poll/idle-1x1", 2_000_000, |n| idle_poll(n, 1, 1)),
        Item::latency("server_poll/idle-4096x64", 2_000_000, |n| {
            idle_poll(n, 4096, 64)
        }),
    ];
    for clients in 1..=4 {
        for depth in [1, 4] {
            items.push(
                Item::throughput(
                    format!("multi_client/{clients}x-depth{depth}"),
                    200_000,
                    move |n| multi_client(n, clients, depth),
                )
                .note(oversubscription_note(clients)),
            );
        }
    }

    let mut m = summary::run(knobs, items, benchutil::canary_ns);
    // The ratios the table shows, declared once for the JSON beside it.
    let ids: Vec<String> = m.figures.iter().map(|f| f.id.clone()).collect();
    for id in ids.iter().filter(|id| !id.starts_with("server_poll")) {
        let floor = if id.contains("threads") {
            "floor/threads"
        } else {
            "floor/processes"
        };
        if id != floor {
            m.ratio(id, floor, "floor");
        }
        for peer in ["peers/uds", "peers/iceoryx2"] {
            if id != peer && !id.starts_with("floor/") {
                m.ratio(id, peer, "peer");
            }
        }
    }
    let floor_t = m.ns("floor/threads");
    let floor_p = m.ns("floor/processes");
    let uds = m.ns("peers/uds");
    let iox = m.ns("peers/iceoryx2");

    let mut out = m.preamble("ipc");
    out += "| figure | median | per call | vs floor | UDS ÷ this | iceoryx2 ÷ this | note |\n";
    out += "|---|---|---|---|---|---|---|\n";
    for f in &m.figures {
        let ns = f.ns;
        let floor = if f.id.contains("threads") {
            floor_t
        } else {
            floor_p
        };
        if f.id.starts_with("server_poll") {
            // Not a round trip: no ratios.
            out += &format!(
                "| {} | {ns:.1} ns | | | | | one empty `Server::recv`, one idle client attached |\n",
                f.id
            );
            continue;
        }
        let value = match f.kind {
            Kind::Throughput => format!("{:.2} M calls/s", f.per_second() / 1e6),
            Kind::Latency => format!("{ns:.0} ns"),
        };
        out += &format!(
            "| {} | {} | {:.0} ns | {:.2}× | {:.1}× | {:.1}× | {} |\n",
            f.id,
            value,
            ns,
            ns / floor,
            uds / ns,
            iox / ns,
            f.note.as_deref().unwrap_or("")
        );
    }
    let pp = m.ns("pingpong/processes");
    let verdict = benchutil::verdict;
    out += &format!(
        "\ntargets: pingpong/processes within 1.5× of floor/processes: {:.2}× ({}); \
         ≥5× faster than iceoryx2: {:.1}× ({}); ≥100× faster than UDS: {:.0}× ({})\n",
        pp / floor_p,
        verdict(pp / floor_p <= 1.5),
        iox / pp,
        verdict(iox / pp >= 5.0),
        uds / pp,
        verdict(uds / pp >= 100.0)
    );
    out += &format!(
        "canary (floor/threads, {}k trips) per round, ns: {:?}\n",
        benchutil::CANARY_TRIPS / 1000,
        m.canaries_ns()
    );
    m.write_report("ipc", &out);
}

fn main() {
    let helper = benchutil::as_helper(|role, args| match role {
        "uds" => support::uds_role(args),
        "iox" => iox_role(args),
        "ipc-server" => ipc_server_role(args),
        "ipc-client" => ipc_client_role(args),
        other => panic!("unknown bench role {other}"),
    });
    if helper {
        return;
    }
    let knobs = Knobs::from_env("IPC_BENCH", 7);
    if !knobs.skip_criterion {
        let mut c = benchutil::criterion();
        criterion_groups(&mut c);
        c.final_summary();
    }
    if !knobs.skip_summary {
        summary(&knobs);
    }
}
