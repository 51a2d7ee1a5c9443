//! No call waits forever: connect, call and wait have deadlines, so a
//! server that is alive but never answers is an error, not a hang. The
//! wedged server is `ipc-peer serve --stall` (it takes requests and never
//! answers) in its own process.

mod common;

use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use common::{Msg, ServerThread, answer, attach_while_serving, name, spawn_server};
use ipc::{AsyncClient, Client, ClientConfig, Error, Server, ServerConfig};

/// Runs `f` in a thread; fails the test if it does not return within
/// `limit` (so a hang is a failure, not a stuck test run).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("still waiting after {limit:?}: a hang"))
}

#[test]
fn a_call_to_a_wedged_server_times_out() {
    let name = name("wedged-call");
    let _server = spawn_server(&["serve", &name, "--stall"]);
    let timeout = Duration::from_millis(200);
    let (err, took) = within(Duration::from_secs(10), move || {
        let cfg = ClientConfig::new().call_timeout(timeout);
        let mut c = Client::<Msg, Msg>::connect(&name, cfg).unwrap();
        let t0 = Instant::now();
        let err = c.call(&[1, 2, 3, 0]).unwrap_err();
        (err, t0.elapsed())
    });
    assert!(matches!(err, Error::Timeout { op: "call", .. }), "{err}");
    assert!(took >= timeout, "timed out early, after {took:?}");
    assert!(took < timeout * 5, "took {took:?}");
}

#[test]
fn an_async_wait_on_a_wedged_server_times_out() {
    let name = name("wedged-wait");
    let _server = spawn_server(&["serve", &name, "--stall"]);
    let err = within(Duration::from_secs(10), move || {
        let cfg = ClientConfig::new().call_timeout(Duration::from_millis(150));
        let mut c = AsyncClient::<Msg, Msg, u32>::connect(&name, cfg).unwrap();
        c.call(&[1, 2, 3, 0], 7).unwrap();
        let t0 = Instant::now();
        let e = c
            .wait_timeout(Duration::from_millis(100), |_, _| {})
            .unwrap_err();
        assert!(t0.elapsed() < Duration::from_millis(500));
        assert!(matches!(e, Error::Timeout { op: "wait", .. }), "{e}");
        // The plain `wait` uses the configured call timeout.
        let e = c.wait(|_, _| {}).unwrap_err();
        // The call stays in flight; a timeout does not break the client.
        assert_eq!(c.in_flight(), 1);
        e
    });
    assert!(matches!(err, Error::Timeout { op: "wait", .. }), "{err}");
}

#[test]
fn a_call_after_a_timeout_gets_its_own_answer_not_the_late_one() {
    let name = name("late-answer");
    let mut server = Server::<Msg, Msg>::create(&name, ServerConfig::new().ring_depth(2)).unwrap();
    let cfg = ClientConfig::new().call_timeout(Duration::from_millis(50));
    let mut client = attach_while_serving(&mut server, || {
        Client::<Msg, Msg>::connect(&name, cfg).unwrap()
    });
    let caller = std::thread::spawn(move || {
        let first = client.call(&[1, 1, 1, 0]);
        let second = client.call(&[2, 2, 2, 0]);
        let third = client.call(&[3, 3, 3, 0]);
        (first, second, third)
    });
    // Hold the first request until the second arrives (so past the first
    // call's deadline), then answer it late, right before the second: the
    // late answer is the first the client finds.
    let take = |server: &mut Server<Msg, Msg>| loop {
        if let Some(r) = server.recv() {
            break r;
        }
    };
    let (t1, r1) = take(&mut server);
    let (t2, r2) = take(&mut server);
    server.reply(t1, answer(&r1)).unwrap();
    server.reply(t2, answer(&r2)).unwrap();
    let (t3, r3) = take(&mut server);
    server.reply(t3, answer(&r3)).unwrap();
    let (first, second, third) = caller.join().unwrap();
    assert!(matches!(first, Err(Error::Timeout { .. })), "{first:?}");
    assert_eq!(second.unwrap(), [2, 2, 7, 0]);
    assert_eq!(third.unwrap(), [3, 3, 10, 0]);
}

#[test]
fn connect_retries_until_the_server_appears() {
    let name = name("late-server");
    let t = std::thread::spawn({
        let name = name.clone();
        move || {
            let cfg = ClientConfig::new().connect_timeout(Duration::from_secs(10));
            let mut c = Client::<Msg, Msg>::connect(&name, cfg)?;
            c.call(&[0, 1, 1, 0])
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let server = ServerThread::start(&name, ServerConfig::new());
    assert_eq!(t.join().unwrap().unwrap(), [0, 1, 4, 0]);
    server.stop();
}

#[test]
fn connect_retries_a_full_server_until_a_slot_frees_or_its_deadline() {
    let name = name("full-retry");
    let server = ServerThread::start(&name, ServerConfig::new().max_clients(1));
    let holder = Client::<Msg, Msg>::connect(&name, ClientConfig::new()).unwrap();
    // Nothing frees: NoFreeSlot once the deadline passed, not before.
    let t0 = Instant::now();
    let cfg = ClientConfig::new().connect_timeout(Duration::from_millis(300));
    match Client::<Msg, Msg>::connect(&name, cfg) {
        Err(Error::NoFreeSlot { max_clients: 1, .. }) => {}
        other => panic!("{:?}", other.err()),
    }
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // The slot frees while a connect is retrying: it gets in.
    let t = std::thread::spawn({
        let name = name.clone();
        move || {
            let cfg = ClientConfig::new().connect_timeout(Duration::from_secs(10));
            Client::<Msg, Msg>::connect(&name, cfg).map(|mut c| c.call(&[0, 2, 2, 0]))
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    drop(holder);
    assert_eq!(t.join().unwrap().unwrap().unwrap(), [0, 2, 7, 0]);
    server.stop();
}

#[test]
fn connect_to_a_server_that_never_answers_times_out() {
    // A server that exists but never looks at its connections.
    let name = name("deaf");
    let _server = Server::<Msg, Msg>::create(&name, ServerConfig::new()).unwrap();
    let cfg = ClientConfig::new()
        .connect_timeout(Duration::from_millis(200))
        .server_timeout(Duration::from_millis(100));
    let (err, took) = within(Duration::from_secs(10), move || {
        let t0 = Instant::now();
        let e = Client::<Msg, Msg>::connect(&name, cfg).err();
        (e, t0.elapsed())
    });
    assert!(
        matches!(err, Some(Error::Timeout { op: "connect", .. })),
        "{err:?}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// Timeouts longer than the clock can hold mean "no deadline": a client
/// built with them connects and calls (before, `connect` panicked adding
/// `server_timeout` to the clock).
#[test]
fn timeouts_past_the_clock_mean_no_deadline() {
    let name = name("max-timeouts");
    let server = ServerThread::start(&name, ServerConfig::new());
    let got = within(Duration::from_secs(10), move || {
        let cfg = ClientConfig::new()
            .call_timeout(Duration::MAX)
            .connect_timeout(Duration::MAX)
            .server_timeout(Duration::MAX);
        let mut c = Client::<Msg, Msg>::connect(&name, cfg).unwrap();
        c.call(&[1, 2, 3, 0]).unwrap()
    });
    assert_eq!(got, answer(&[1, 2, 3, 0]));
    server.stop();
}
