//! Crash recovery and lifecycle behaviours that cross a real process
//! boundary. The other side is the `ipc-peer` binary of this crate.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{
    Msg, Peer, START, ServerThread, address, answer, assert_ok, attach_while_serving,
    connect_retrying, name, spawn_server,
};
use ipc::{AsyncClient, Client, ClientConfig, Error, Server, ServerConfig, WaitStrategy};

/// One attempt, no retries: errors come back at once.
fn once() -> ClientConfig {
    ClientConfig::new().connect_timeout(Duration::ZERO)
}

/// Connecting to `name` soon finds nobody there. (Not at once: another
/// test of this process may be between `fork` and `exec` of a peer, its
/// child holding a copy of every descriptor until `exec` closes them.)
fn assert_nobody_serves(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Client::<Msg, Msg>::connect(name, once()) {
            Err(Error::NotFound { .. }) => return,
            other if Instant::now() >= deadline => {
                panic!("{name} is still served: {:?}", other.err())
            }
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

#[test]
fn killed_client_slot_is_reclaimed_and_other_clients_keep_going() {
    let name = name("kill-client");
    let cfg = ServerConfig::new()
        .max_clients(3)
        .ring_depth(4)
        .liveness_interval(Duration::from_millis(1));
    let server = ServerThread::start(&name, cfg);
    // The victim, in its own process, with calls in flight when it dies.
    let mut victim = Peer::spawn(&["call", &name, "--forever", "--depth", "4"]);
    victim.expect_line("ready", START);
    // Two other clients keep calling, checking every answer, throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let others: Vec<JoinHandle<u64>> = (0..2u64)
        .map(|k| {
            let mut c = connect_retrying(&name, START);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let r = c.call(&[k, i, i, 0]).expect("call");
                    assert_eq!(r[..3], [k, i, 3 * i + 1], "misdelivered answer");
                    i += 1;
                }
                i
            })
        })
        .collect();
    server.wait_attached(3, START);
    std::thread::sleep(Duration::from_millis(50));
    victim.kill();

    // All three slots were taken and the two others still hold theirs: a new
    // client gets in only through the victim's reclaimed slot (connect
    // retries NoFreeSlot until then).
    let mut late = Client::<Msg, Msg>::connect(
        &name,
        ClientConfig::new().connect_timeout(Duration::from_secs(10)),
    )
    .unwrap_or_else(|e| panic!("victim's slot not reclaimed: {e}"));
    for i in 0..1000 {
        assert_eq!(late.call(&[9, i, i, 0]).unwrap()[2], 3 * i + 1);
    }
    stop.store(true, Ordering::Relaxed);
    for h in others {
        assert!(h.join().expect("other client failed") > 0);
    }
    drop(late);
    server.stop();
}

#[test]
fn killed_server_fails_new_calls_within_the_bound() {
    for wait in ["busy", "block"] {
        let name = name(&format!("kill-server-{wait}"));
        let mut server = spawn_server(&["serve", &name, "--wait", wait]);
        let strategy = if wait == "busy" {
            WaitStrategy::BusyPoll
        } else {
            WaitStrategy::blocking()
        };
        let bound = Duration::from_millis(100);
        let cfg = ClientConfig::new().wait(strategy).server_timeout(bound);
        let mut client = Client::<Msg, Msg>::connect(&name, cfg).unwrap();
        for i in 0..100 {
            assert_eq!(client.call(&[1, i, i, 0]).unwrap()[2], 3 * i + 1);
        }
        server.kill();
        let t0 = Instant::now();
        let err = client.call(&[1, 2, 3, 0]).unwrap_err();
        let took = t0.elapsed();
        match &err {
            Error::ServerGone { why, .. } => assert!(why.contains("exited"), "{err}"),
            other => panic!("{wait}: {other}"),
        }
        // The bound is 100 ms; allow scheduling slack on a loaded 2-core
        // machine, but never a hang.
        assert!(took < bound * 5, "{wait}: took {took:?} to notice");
        // Later calls fail at once.
        let t1 = Instant::now();
        assert!(client.call(&[0; 4]).is_err());
        assert!(t1.elapsed() < bound);
    }
}

#[test]
fn killed_server_fails_pending_async_calls_within_the_bound() {
    let name = name("kill-server-pending");
    let mut server = spawn_server(&["serve", &name, "--stall", "--depth", "8"]);
    let bound = Duration::from_millis(100);
    let mut client =
        AsyncClient::<Msg, Msg, u64>::connect(&name, ClientConfig::new().server_timeout(bound))
            .unwrap();
    for i in 0..5 {
        client.call(&[0, i, i, 0], i).unwrap();
    }
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        client
            .poll(|_, _| panic!("stalled server answered"))
            .unwrap(),
        0
    );
    server.kill();
    // A caller that only polls (never waits) learns of the death too.
    let t0 = Instant::now();
    let err = loop {
        match client.poll(|_, _| panic!("dead server answered")) {
            Ok(0) => std::hint::spin_loop(),
            Ok(n) => panic!("{n} responses from a stalled server"),
            Err(e) => break e,
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "poll never noticed");
    };
    assert!(matches!(err, Error::ServerGone { .. }), "{err}");
    assert!(t0.elapsed() < bound * 5, "took {:?}", t0.elapsed());
    // Waiting afterwards fails at once rather than hanging.
    let t1 = Instant::now();
    assert!(matches!(
        client.wait(|_, _| {}),
        Err(Error::ServerGone { .. })
    ));
    assert!(t1.elapsed() < bound);
    // A new call hands its user data back with the error.
    match client.call(&[0; 4], 99) {
        Err(ipc::CallError::Failed(99, Error::ServerGone { .. })) => {}
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn an_async_call_with_nothing_in_flight_fails_on_a_dead_server_like_a_sync_call() {
    let name = name("async-dead");
    let mut server = spawn_server(&["serve", &name]);
    let bound = Duration::from_millis(100);
    let cfg = ClientConfig::new().server_timeout(bound);
    let mut client = AsyncClient::<Msg, Msg, u64>::connect(&name, cfg.clone()).unwrap();
    let mut sync = Client::<Msg, Msg>::connect(&name, cfg).unwrap();
    client.call(&[0, 1, 1, 0], 1).unwrap();
    assert_eq!(client.wait(|_, _| {}).unwrap(), 1);
    assert_eq!(client.in_flight(), 0);
    server.kill();
    std::thread::sleep(bound);
    // The synchronous client fails...
    assert!(matches!(sync.call(&[0; 4]), Err(Error::ServerGone { .. })));
    // ...and so does an asynchronous call with nothing else in flight,
    // handing its user data back, instead of queueing a call nobody reads.
    match client.call(&[0, 2, 2, 0], 2) {
        Err(ipc::CallError::Failed(2, Error::ServerGone { .. })) => {}
        other => panic!("call on a dead server: {other:?}"),
    }
    assert_eq!(client.in_flight(), 0);
}

#[test]
fn a_dead_servers_name_is_free_at_once_and_a_live_ones_is_refused() {
    let name = name("restart");
    let mut first = spawn_server(&["serve", &name]);
    match Server::<Msg, Msg>::create(&name, ServerConfig::new()) {
        Err(Error::AlreadyRunning { .. }) => {}
        other => panic!("a live server's name was not refused: {:?}", other.err()),
    }
    first.kill();
    // Nothing is left behind: no file, and the kernel released the socket.
    assert_nobody_serves(&name);
    let server = ServerThread::start(&name, ServerConfig::new());
    let mut client = Client::<Msg, Msg>::connect(&name, ClientConfig::new()).unwrap();
    assert_eq!(client.call(&[0, 0, 5, 0]).unwrap()[2], 16);
    drop(client);
    server.stop();
    assert_nobody_serves(&name);
}

/// A listener on segment `name`'s address that is not an ipc server: it
/// accepts one connection, reads what comes, answers `reply` (if any) and
/// holds the connection until dropped.
fn impostor(name: &str, reply: Option<Vec<u8>>) -> JoinHandle<()> {
    use std::io::{Read, Write};
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(address(name)).unwrap();
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut hello = [0u8; 16];
        let _ = s.read_exact(&mut hello);
        if let Some(r) = reply {
            let _ = s.write_all(&r);
        }
        std::thread::sleep(Duration::from_secs(2));
    })
}

#[test]
fn a_listener_that_is_not_an_ipc_server_is_a_clear_error() {
    let name = name("impostor-garbage");
    let t = impostor(&name, Some(b"HTTP/1.1 400 Bad Request\r\n\r\n".repeat(4)));
    match Server::<Msg, Msg>::create(&name, ServerConfig::new()) {
        Err(Error::AlreadyRunning { .. }) => {}
        other => panic!("took over a foreign listener: {:?}", other.err()),
    }
    match Client::<Msg, Msg>::connect(&name, once()) {
        Err(Error::Malformed { reason, .. }) => assert!(reason.contains("not an ipc server")),
        other => panic!("{:?}", other.err()),
    }
    t.join().unwrap();

    // One that says nothing at all: a timeout, not a hang.
    let name = common::name("impostor-silent");
    let t = impostor(&name, None);
    let t0 = Instant::now();
    let cfg = once().server_timeout(Duration::from_millis(200));
    match Client::<Msg, Msg>::connect(&name, cfg) {
        Err(Error::Timeout { op: "connect", .. }) => {}
        other => panic!("{:?}", other.err()),
    }
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    t.join().unwrap();
}

#[test]
fn a_server_of_another_protocol_version_is_a_clear_error() {
    let name = name("impostor-version");
    let mut welcome = Vec::new();
    welcome.extend_from_slice(b"CPRCIPC2");
    welcome.extend_from_slice(&99u32.to_le_bytes());
    welcome.resize(80, 0);
    let t = impostor(&name, Some(welcome));
    match Client::<Msg, Msg>::connect(&name, once()) {
        Err(Error::Mismatch {
            what: "protocol version",
            found,
            ..
        }) => assert_eq!(found, "99"),
        other => panic!("{:?}", other.err()),
    }
    t.join().unwrap();
}

#[test]
fn a_client_scribbling_over_its_region_is_evicted_and_told_so() {
    let name = name("scribble");
    let cfg = ServerConfig::new().max_clients(3).ring_depth(8);
    let server = ServerThread::start(&name, cfg);
    let calls = 20_000u64;
    let calls_s = calls.to_string();
    let mut scribbler = Peer::spawn(&["scribble", &name, "--for-ms", "1000"]);
    scribbler.expect_line("ready", START);
    let good: Vec<Peer> = (0..2)
        .map(|_| Peer::spawn(&["call", &name, "--calls", &calls_s, "--depth", "8"]))
        .collect();
    let (ok, lines, err) = scribbler.finish(Duration::from_secs(60));
    assert!(
        ok && lines.iter().any(|l| l == "scribbled"),
        "{lines:?} {err}"
    );
    // Its next call fails with the eviction, within the bound of a dead
    // server (100 ms by default; slack for a loaded machine).
    let after = lines.iter().find(|l| l.starts_with("after:")).unwrap();
    assert!(after.contains("evicted"), "{after}");
    let ms: u64 = after
        .rsplit_once("(in ")
        .and_then(|(_, r)| r.strip_suffix(" ms)"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{after}"));
    assert!(ms < 500, "told of its eviction after {ms} ms");
    assert!(server.evictions() >= 1);
    for p in good {
        assert_ok(p, calls);
    }
    // The scribbler's slot is free again: with the two others held, the
    // next client gets it.
    let held: Vec<_> = (0..2).map(|_| connect_retrying(&name, START)).collect();
    let mut client = connect_retrying(&name, Duration::from_secs(10));
    for i in 0..1000 {
        assert_eq!(client.call(&[0, i, i, 0]).unwrap()[2], 3 * i + 1);
    }
    drop((client, held));
    assert!(server.stop() >= 2 * calls as usize);
}

#[test]
fn invalid_names_are_rejected() {
    for bad in ["", ".hidden", "a/b", "../etc", "sp ace", &"x".repeat(91)] {
        match Server::<Msg, Msg>::create(bad, ServerConfig::new()) {
            Err(Error::InvalidName { .. }) => {}
            other => panic!("{bad:?}: {:?}", other.err()),
        }
        match Client::<Msg, Msg>::connect(bad, ClientConfig::new()) {
            Err(Error::InvalidName { .. }) => {}
            other => panic!("{bad:?}: {:?}", other.err()),
        }
    }
}

#[test]
fn missing_segment_and_full_segment_are_clear_errors() {
    let name = name("full");
    match Client::<Msg, Msg>::connect(&name, once()) {
        Err(Error::NotFound { .. }) => {}
        other => panic!("{:?}", other.err()),
    }
    let server = ServerThread::start(&name, ServerConfig::new().max_clients(2));
    let _a = Client::<Msg, Msg>::connect(&name, ClientConfig::new()).unwrap();
    let _b = Client::<Msg, Msg>::connect(&name, ClientConfig::new()).unwrap();
    match Client::<Msg, Msg>::connect(&name, once()) {
        Err(Error::NoFreeSlot { max_clients: 2, .. }) => {}
        other => panic!("{:?}", other.err()),
    }
    server.stop();
}

#[test]
fn other_users_are_refused() {
    use std::os::unix::process::CommandExt;
    let name = name("other-user");
    let server = ServerThread::start(&name, ServerConfig::new());
    // A valid hello: magic "CPRCIPC2", version 2, no flags.
    let hello = "43505243495043320200000000000000";
    let probe = |uid: Option<u32>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ipc-peer"));
        cmd.args(["probe", &address(&name), hello]);
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    // This user gets the welcome and both descriptors...
    let mine = probe(None);
    assert!(
        mine.contains("status 0") && mine.contains("2 descriptors"),
        "{mine}"
    );
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        // ...another one is refused and gets nothing (needs root to switch).
        let theirs = probe(Some(65534));
        assert!(
            theirs.contains("status 3") && theirs.contains("0 descriptors"),
            "{theirs}"
        );
    }
    server.stop();
}

#[test]
fn several_client_processes_under_load_each_get_their_own_answers() {
    let name = name("load");
    // The server answers each client's requests newest first.
    let _server = spawn_server(&[
        "serve",
        &name,
        "--max-clients",
        "4",
        "--depth",
        "8",
        "--reverse",
    ]);
    let calls = 20_000u64;
    let calls_s = calls.to_string();
    let clients: Vec<Peer> = (0..4)
        .map(|_| Peer::spawn(&["call", &name, "--calls", &calls_s, "--depth", "8"]))
        .collect();
    for c in clients {
        assert_ok(c, calls);
    }
}

#[test]
fn blocking_waits_work_across_processes_and_idle_server_sleeps() {
    let name = name("block");
    let server = spawn_server(&["serve", &name, "--wait", "block"]);
    let pid = server.child.id();
    let cpu_ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        // utime and stime are fields 14 and 15 of the whole line.
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let cfg = ClientConfig::new().wait(WaitStrategy::blocking());
    let mut client = Client::<Msg, Msg>::connect(&name, cfg).unwrap();
    for i in 0..2000 {
        assert_eq!(client.call(&[0, i, i, 0]).unwrap()[2], 3 * i + 1);
    }
    // Idle for a second: a busy-polling server would use ~100 ticks.
    let before = cpu_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks() - before;
    assert!(
        used < 20,
        "idle blocking server used {used} ticks of CPU in 1 s"
    );
    // And it still answers after sleeping, to this client and a new one.
    assert_eq!(client.call(&[0, 7, 7, 0]).unwrap()[2], 22);
    let mut late = Client::<Msg, Msg>::connect(&name, ClientConfig::new()).unwrap();
    assert_eq!(late.call(&[0, 8, 8, 0]).unwrap()[2], 25);
}

/// Both sides sleep at once (no spinning): every reply must wake the
/// client through its futex. A lost wake-up is caught only by the client's
/// bounded sleep (half the server timeout, 10 s here), so one in these
/// calls would take the loop past the bound below; without it they take
/// milliseconds.
#[test]
fn a_client_that_sleeps_at_once_is_woken_by_every_reply() {
    let name = name("sleepers");
    let _server = ServerThread::start(
        &name,
        ServerConfig::new().wait(WaitStrategy::Block { spins: 0 }),
    );
    let cfg = ClientConfig::new()
        .wait(WaitStrategy::Block { spins: 0 })
        .server_timeout(Duration::from_secs(20));
    let mut client = Client::<Msg, Msg>::connect(&name, cfg).unwrap();
    let t = Instant::now();
    for i in 0..300 {
        assert_eq!(client.call(&[0, i, i, 0]).unwrap()[2], 3 * i + 1);
        assert!(
            t.elapsed() < Duration::from_secs(8),
            "{} calls took {:?}: a wake-up was lost",
            i + 1,
            t.elapsed()
        );
    }
}

#[test]
fn server_shutdown_fails_calls_and_frees_the_name() {
    let name = name("shutdown");
    let server = ServerThread::start(&name, ServerConfig::new());
    let mut client = Client::<Msg, Msg>::connect(&name, ClientConfig::new()).unwrap();
    assert_eq!(client.call(&[0, 0, 1, 0]).unwrap()[2], 4);
    server.stop();
    match client.call(&[0; 4]) {
        Err(Error::ServerGone { why, .. }) => assert!(why.contains("shut down"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_nobody_serves(&name);
}

#[test]
fn a_reply_to_a_departed_client_is_refused_not_misdelivered() {
    let name = name("departed");
    let mut server = Server::<Msg, Msg>::create(&name, ServerConfig::new().max_clients(1)).unwrap();
    let mut first = attach_while_serving(&mut server, || {
        AsyncClient::<Msg, Msg, ()>::connect(&name, ClientConfig::new()).unwrap()
    });
    first.call(&[1, 1, 1, 0], ()).unwrap();
    let (token, _) = loop {
        if let Some(r) = server.recv() {
            break r;
        }
    };
    drop(first);
    // The same (only) slot is taken by a new client once the server saw
    // the first one leave.
    let mut second = attach_while_serving(&mut server, || {
        AsyncClient::<Msg, Msg, u64>::connect(
            &name,
            ClientConfig::new().connect_timeout(Duration::from_secs(5)),
        )
        .unwrap()
    });
    assert_eq!(second.slot(), 0);
    assert_eq!(server.attached_clients(), 1);
    match server.reply(token, [9; 4]) {
        Err(Error::ClientGone { client: 0 }) => {}
        other => panic!("{other:?}"),
    }
    second.call(&[2, 2, 2, 0], 2).unwrap();
    let (t, req) = loop {
        if let Some(r) = server.recv() {
            break r;
        }
    };
    server.reply(t, answer(&req)).unwrap();
    let mut got = Vec::new();
    second.wait(|u, r| got.push((u, r))).unwrap();
    assert_eq!(got, vec![(2, [2, 2, 7, 0])]);
}

#[test]
fn ipc_peer_rejects_bad_command_lines_with_usage() {
    for args in [
        &["serve", "x", "--bogus"][..],
        &["call", "x", "--calls", "many"],
        &["serve", "x", "--wait", "sometimes"],
        &["attack", "x", "everything"],
        &["frobnicate", "x"],
        &[],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ipc-peer"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("usage:"), "{args:?}: {err}");
    }
    // A bad segment name is a clear runtime error, not a panic.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ipc-peer"))
        .args(["call", "../etc/passwd"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid segment name"));
}
