//! Connect has a deadline: it retries a missing or full server until then,
//! and a server that never answers is an error, not a hang.

mod common;

use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use common::{Msg, ServerThread, name};
use ipc::{Client, ClientConfig, Error, Server, ServerConfig};

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
