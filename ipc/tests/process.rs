//! Robustness behaviours that cross a real process boundary. The other side
//! is the `ipc-peer` binary of this crate.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Msg, Peer, name};
use ipc::{AsyncClient, Client, ClientConfig, Error, Server, ServerConfig, WaitStrategy};

const START: Duration = Duration::from_secs(20);

fn answer(req: &Msg) -> Msg {
    [req[0], req[1], req[2].wrapping_mul(3).wrapping_add(1), 0]
}

/// A server running in a thread of the test process.
struct ServerThread {
    stop: Arc<AtomicBool>,
    attached: Arc<AtomicUsize>,
    handle: Option<JoinHandle<usize>>,
}

impl ServerThread {
    fn start(name: &str, cfg: ServerConfig) -> Self {
        let mut server = Server::<Msg, Msg>::create(name, cfg).expect("create server");
        let stop = Arc::new(AtomicBool::new(false));
        let attached = Arc::new(AtomicUsize::new(0));
        let handle = std::thread::spawn({
            let (stop, attached) = (stop.clone(), attached.clone());
            move || {
                let mut served = 0;
                while !stop.load(Ordering::Relaxed) {
                    let n = server.serve(64, |_, req| answer(req));
                    served += n;
                    if n == 0 {
                        attached.store(server.attached_clients(), Ordering::Relaxed);
                        server.wait(Duration::from_millis(1));
                    }
                }
                served
            }
        });
        Self {
            stop,
            attached,
            handle: Some(handle),
        }
    }

    fn wait_attached(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.attached.load(Ordering::Relaxed) != n {
            assert!(
                Instant::now() < deadline,
                "server saw {} attached clients, expected {n}",
                self.attached.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops the server; panics if its thread panicked.
    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .unwrap()
            .join()
            .expect("server thread panicked")
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn assert_ok(peer: Peer, calls: u64) {
    let (ok, lines, err) = peer.finish(Duration::from_secs(120));
    assert!(ok, "client failed: {err}");
    assert!(
        lines.iter().any(|l| *l == format!("ok {calls}")),
        "client output {lines:?}"
    );
}

#[test]
fn killed_client_slot_is_reclaimed_and_other_clients_keep_going() {
    let name = name("kill-client");
    let cfg = ServerConfig::new()
        .max_clients(3)
        .ring_depth(4)
        .liveness_interval(Duration::from_millis(10));
    let server = ServerThread::start(&name, cfg);
    // The victim, in its own process, with calls in flight when it dies.
    let mut victim = Peer::spawn(&["call", &name, "--forever", "--depth", "4"]);
    victim.expect_line("ready", START);
    // Two other clients keep calling, checking every answer, throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let others: Vec<JoinHandle<u64>> = (0..2u64)
        .map(|k| {
            let mut c = Client::<Msg, Msg>::connect(&name, ClientConfig::new()).unwrap();
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
    // client gets in only through the victim's reclaimed slot.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut late = loop {
        match Client::<Msg, Msg>::connect(&name, ClientConfig::new()) {
            Ok(c) => break c,
            Err(Error::NoFreeSlot { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => panic!("victim's slot not reclaimed: {e}"),
        }
    };
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

fn spawn_server(args: &[&str]) -> Peer {
    let mut p = Peer::spawn(args);
    p.expect_line("ready", START);
    p
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
        assert!(matches!(err, Error::ServerGone { .. }), "{err}");
        // The bound is 100 ms; allow scheduling slack on a loaded 2-core
        // machine, but never a hang.
        assert!(took < bound * 5, "{wait}: took {took:?} to notice");
        // Later calls fail at once.
        let t1 = Instant::now();
        assert!(client.call(&[0; 4]).is_err());
        assert!(t1.elapsed() < bound);
        let _ = std::fs::remove_file(format!("/dev/shm/{name}"));
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
    let _ = std::fs::remove_file(format!("/dev/shm/{name}"));
}

#[test]
fn stale_segment_is_replaced_and_live_one_is_refused() {
    let name = name("stale");
    let path = format!("/dev/shm/{name}");
    let mut first = spawn_server(&["serve", &name]);
    match Server::<Msg, Msg>::create(&name, ServerConfig::new()) {
        Err(Error::AlreadyRunning { .. }) => {}
        other => panic!("a live server's segment was not refused: {:?}", other.err()),
    }
    first.kill();
    assert!(
        std::path::Path::new(&path).exists(),
        "SIGKILL leaves the segment"
    );
    // Its former clients' view: connecting to the stale segment fails clearly.
    match Client::<Msg, Msg>::connect(&name, ClientConfig::new()) {
        Err(Error::ServerGone { .. }) => {}
        other => panic!("connect to a stale segment: {:?}", other.err()),
    }
    let server = ServerThread::start(&name, ServerConfig::new());
    let mut client = Client::<Msg, Msg>::connect(&name, ClientConfig::new()).unwrap();
    assert_eq!(client.call(&[0, 0, 5, 0]).unwrap()[2], 16);
    drop(client);
    server.stop();
    assert!(
        !std::path::Path::new(&path).exists(),
        "a cleanly stopped server removes its segment"
    );
}

#[test]
fn a_file_that_is_not_a_segment_is_never_replaced() {
    let name = name("foreign");
    let path = format!("/dev/shm/{name}");
    std::fs::write(&path, b"somebody else's data").unwrap();
    match Server::<Msg, Msg>::create(&name, ServerConfig::new()) {
        Err(Error::NotASegment { .. }) => {}
        other => panic!("foreign file: {:?}", other.err()),
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"somebody else's data");
    match Client::<Msg, Msg>::connect(&name, ClientConfig::new()) {
        Err(Error::Malformed { .. }) => {}
        other => panic!("client on foreign file: {:?}", other.err()),
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_client_scribbling_over_its_region_hurts_neither_server_nor_others() {
    let name = name("scribble");
    let cfg = ServerConfig::new()
        .max_clients(3)
        .ring_depth(8)
        .liveness_interval(Duration::from_millis(10));
    let server = ServerThread::start(&name, cfg);
    let calls = 20_000u64;
    let calls_s = calls.to_string();
    let mut scribbler = Peer::spawn(&["scribble", &name, "--for-ms", "1500"]);
    scribbler.expect_line("ready", START);
    let good: Vec<Peer> = (0..2)
        .map(|_| Peer::spawn(&["call", &name, "--calls", &calls_s, "--depth", "8"]))
        .collect();
    let (ok, lines, err) = scribbler.finish(Duration::from_secs(60));
    assert!(
        ok && lines.iter().any(|l| l == "scribbled"),
        "{lines:?} {err}"
    );
    for p in good {
        assert_ok(p, calls);
    }
    // The scribbler is gone. Hold the two slots the good clients left, so
    // the next client can only get the scribbler's (reclaimed) slot.
    let held: Vec<_> = (0..2)
        .map(|_| Client::<Msg, Msg>::connect(&name, ClientConfig::new()).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut client = loop {
        match Client::<Msg, Msg>::connect(&name, ClientConfig::new()) {
            Ok(c) => break c,
            Err(Error::NoFreeSlot { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("{e}"),
        }
    };
    for i in 0..1000 {
        assert_eq!(client.call(&[0, i, i, 0]).unwrap()[2], 3 * i + 1);
    }
    drop((client, held));
    assert!(server.stop() >= 2 * calls as usize);
}

#[test]
fn mismatched_message_types_are_refused() {
    let name = name("types");
    let _server = Server::<Msg, Msg>::create(&name, ServerConfig::new()).unwrap();
    let what = |e: Error| match e {
        Error::Mismatch { what, .. } => what,
        other => panic!("expected a mismatch, got {other}"),
    };
    let e = Client::<[u64; 2], Msg>::connect(&name, ClientConfig::new()).err();
    assert_eq!(what(e.unwrap()), "request size");
    let e = Client::<[u32; 8], Msg>::connect(&name, ClientConfig::new()).err();
    assert_eq!(what(e.unwrap()), "request alignment");
    let e = Client::<[i64; 4], Msg>::connect(&name, ClientConfig::new()).err();
    assert_eq!(what(e.unwrap()), "request type fingerprint");
    let e = Client::<Msg, [i64; 4]>::connect(&name, ClientConfig::new()).err();
    assert_eq!(what(e.unwrap()), "response type fingerprint");
    let msg = Client::<Msg, u8>::connect(&name, ClientConfig::new())
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("response size") && msg.contains(&name),
        "{msg}"
    );
}

#[test]
fn bad_magic_version_or_size_is_a_clear_error() {
    use std::os::unix::fs::FileExt;
    let name = name("header");
    let path = format!("/dev/shm/{name}");
    let server = Server::<Msg, Msg>::create(&name, ServerConfig::new()).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    // The version word follows the 8-byte magic.
    file.write_all_at(&99u32.to_le_bytes(), 8).unwrap();
    match Client::<Msg, Msg>::connect(&name, ClientConfig::new()) {
        Err(Error::Mismatch {
            what: "layout version",
            found: 99,
            ..
        }) => {}
        other => panic!("{:?}", other.err()),
    }
    file.write_all_at(b"NOTMAGIC", 0).unwrap();
    match Client::<Msg, Msg>::connect(&name, ClientConfig::new()) {
        Err(Error::Mismatch { what: "magic", .. }) => {}
        other => panic!("{:?}", other.err()),
    }
    drop(server);

    let name = common::name("short");
    let path = format!("/dev/shm/{name}");
    std::fs::write(&path, [0u8; 16]).unwrap();
    match Client::<Msg, Msg>::connect(&name, ClientConfig::new()) {
        Err(Error::Malformed { .. }) => {}
        other => panic!("{:?}", other.err()),
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn truncated_segment_behind_a_valid_header_is_refused() {
    let name = name("truncated");
    let path = format!("/dev/shm/{name}");
    let server = Server::<Msg, Msg>::create(&name, ServerConfig::new()).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(4096).unwrap();
    match Client::<Msg, Msg>::connect(&name, ClientConfig::new()) {
        Err(Error::Malformed { reason, .. }) => assert!(reason.contains("bytes"), "{reason}"),
        other => panic!("{:?}", other.err()),
    }
    drop(server);
}

#[test]
fn invalid_names_are_rejected() {
    for bad in ["", ".hidden", "a/b", "../etc", "sp ace", &"x".repeat(201)] {
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
    match Client::<Msg, Msg>::connect(&name, ClientConfig::new()) {
        Err(Error::NotFound { .. }) => {}
        other => panic!("{:?}", other.err()),
    }
    let _server = Server::<Msg, Msg>::create(&name, ServerConfig::new().max_clients(2)).unwrap();
    let _a = Client::<Msg, Msg>::connect(&name, ClientConfig::new()).unwrap();
    let _b = Client::<Msg, Msg>::connect(&name, ClientConfig::new()).unwrap();
    match Client::<Msg, Msg>::connect(&name, ClientConfig::new()) {
        Err(Error::NoFreeSlot { max_clients: 2, .. }) => {}
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn segment_is_private_to_its_user() {
    use std::os::unix::fs::PermissionsExt;
    let name = name("mode");
    let _server = Server::<Msg, Msg>::create(&name, ServerConfig::new()).unwrap();
    let mode = std::fs::metadata(format!("/dev/shm/{name}"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
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
    // And it still answers after sleeping.
    assert_eq!(client.call(&[0, 7, 7, 0]).unwrap()[2], 22);
}

#[test]
fn server_shutdown_fails_calls_and_removes_the_segment() {
    let name = name("shutdown");
    let server = ServerThread::start(&name, ServerConfig::new());
    let mut client = Client::<Msg, Msg>::connect(&name, ClientConfig::new()).unwrap();
    assert_eq!(client.call(&[0, 0, 1, 0]).unwrap()[2], 4);
    server.stop();
    match client.call(&[0; 4]) {
        Err(Error::ServerGone { why, .. }) => assert!(why.contains("shut down"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(!std::path::Path::new(&format!("/dev/shm/{name}")).exists());
}

#[test]
fn a_reply_to_a_departed_client_is_refused_not_misdelivered() {
    let name = name("departed");
    let mut server = Server::<Msg, Msg>::create(&name, ServerConfig::new().max_clients(1)).unwrap();
    let mut first = AsyncClient::<Msg, Msg, ()>::connect(&name, ClientConfig::new()).unwrap();
    first.call(&[1, 1, 1, 0], ()).unwrap();
    let (token, _) = loop {
        if let Some(r) = server.recv() {
            break r;
        }
    };
    drop(first);
    // The same (only) slot is taken by a new client.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut second = loop {
        let _ = server.attached_clients();
        match AsyncClient::<Msg, Msg, u64>::connect(&name, ClientConfig::new()) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    };
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
