//! A client can misbehave before it is attached: send descriptors the
//! server never asked for, or start a hello and never finish it. The server
//! keeps none of what it was sent (its sockets refuse descriptors where the
//! kernel can; elsewhere it closes them, never blocking on the close),
//! refuses or drops such a connection, and serves everyone else meanwhile.
//! It runs in its own process (`ipc-peer serve`), so its descriptors can be
//! listed from here: after each attack it holds exactly what it held before.
//! (The path of kernels that pass descriptors through is also unit-tested
//! on every kernel, in `src/server.rs`.)

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{
    HELLO, START, WELCOME_LEN, connect_retrying, field, memfd, name, open_fds, raw_connect,
    read_to_close, recv_welcome, send_with_fds, spawn_server, wait_for_fds, welcome,
};
use ipc::{Client, ClientConfig};

/// The memfd a hostile client smuggles in is named so.
const SMUGGLED: &str = "ipc-test-smuggled";
/// `wire::Status::BadHello`.
const BAD_HELLO: u32 = 2;
/// `wire::Notice::Evicted`'s kind byte.
const EVICTED: u8 = 2;
/// `wire::WAKE`.
const WAKE: u8 = 0x57;
/// The server's documented hello timeout (`server::HELLO_TIMEOUT`).
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// What a hostile client sends along: a memfd named [`SMUGGLED`] and an
/// eventfd (the server has neither of its own).
fn contraband() -> [OwnedFd; 2] {
    let m = memfd(SMUGGLED, 4096, &[], 0);
    // SAFETY: eventfd takes plain integers and returns a new fd or -1.
    let e = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(e >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel just returned this descriptor; nobody else owns it.
    [m, unsafe { OwnedFd::from_raw_fd(e) }]
}

/// Sends `bytes` with `fds` attached. False if the kernel refused to pass
/// descriptors to the server at all (EPERM: its sockets refuse them with
/// `SO_PASSRIGHTS`, Linux 6.16 on), in which case nothing was sent.
fn smuggle(s: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> bool {
    match send_with_fds(s, bytes, fds) {
        Ok(n) => {
            assert_eq!(n, bytes.len());
            true
        }
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => false,
        Err(e) => panic!("sendmsg: {e}"),
    }
}

/// A refusal of a bad hello: a bare welcome with that status, no
/// descriptors, then the close.
fn assert_refused_as_bad_hello(answer: &[u8], fds: &[OwnedFd]) {
    assert_eq!(answer.len(), WELCOME_LEN, "answer {answer:?}");
    assert_eq!(field(answer, welcome::STATUS), BAD_HELLO, "{answer:?}");
    assert!(
        fds.is_empty(),
        "a refusal carried {} descriptors",
        fds.len()
    );
}

/// Descriptors a client sends never stay in the server: where the kernel
/// can, the server's sockets refuse them (the client's `sendmsg` fails and
/// nothing arrives); elsewhere a hello that comes with some (whole or in
/// part) is refused and a client that sends some later is evicted, and the
/// server closes them. Either way its other client is served on.
#[test]
fn descriptors_a_client_sends_never_stay_in_the_server() {
    let name = name("smuggle");
    let mut server = spawn_server(&["serve", &name, "--max-clients", "3"]);
    let pid = server.child.id();
    let mut good = connect_retrying(&name, START);
    assert_eq!(good.call(&[1, 1, 1, 0]).unwrap()[2], 4);
    let before = open_fds(pid);
    let contraband = contraband();
    let smuggled: Vec<RawFd> = contraband.iter().map(|f| f.as_raw_fd()).collect();

    // With a whole hello.
    let s = raw_connect(&name);
    if smuggle(&s, &HELLO, &smuggled) {
        let (answer, fds) = read_to_close(&s);
        assert_refused_as_bad_hello(&answer, &fds);
    } else {
        // Nothing was sent: the same hello without them attaches.
        (&s).write_all(&HELLO).unwrap();
        let (w, fds) = recv_welcome(&s);
        assert_eq!(field(&w, welcome::STATUS), 0, "{w:?}");
        assert_eq!(fds.len(), 2);
    }
    drop(s);

    // With half a hello, and more descriptors than the server's receive
    // buffer holds (the kernel closes those that do not fit).
    let s = raw_connect(&name);
    let many: Vec<RawFd> = (0..20).map(|k| smuggled[k % 2]).collect();
    if smuggle(&s, &HELLO[..8], &many) {
        let (answer, fds) = read_to_close(&s);
        assert_refused_as_bad_hello(&answer, &fds);
    }
    drop(s);

    // With a wake-up byte after a good hello: evicted, and told why.
    let s = raw_connect(&name);
    (&s).write_all(&HELLO).unwrap();
    let (w, fds) = recv_welcome(&s);
    assert_eq!(field(&w, welcome::STATUS), 0, "a good hello was refused");
    assert_eq!(fds.len(), 2);
    drop(fds);
    if smuggle(&s, &[WAKE], &smuggled) {
        let (notice, fds) = read_to_close(&s);
        assert!(fds.is_empty());
        assert_eq!(notice.first(), Some(&EVICTED), "{notice:?}");
        let reason = String::from_utf8_lossy(&notice[3..]);
        assert!(reason.contains("sent descriptors"), "{reason}");
    }
    drop(s);

    // The other client never noticed, and the server runs on holding what
    // it held before: none of what it was sent.
    for i in 0..100 {
        assert_eq!(good.call(&[2, i, i, 0]).unwrap()[2], 3 * i + 1);
    }
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server died"
    );
    wait_for_fds(pid, &before, Duration::from_secs(5));
    drop(contraband);
}

/// A hello that stops partway never blocks the server: a client that
/// closes after part of one is dropped at once, one that stalls is dropped
/// when the hello timeout passes (not before), and a normal client is
/// attached and served meanwhile. Both slots and descriptors come back.
#[test]
fn a_hello_that_stops_halfway_holds_up_nobody_and_is_dropped_after_its_timeout() {
    let name = name("stalled-hello");
    let server = spawn_server(&["serve", &name, "--max-clients", "2", "--wait", "block"]);
    let pid = server.child.id();
    let before = open_fds(pid);

    let quitter = raw_connect(&name);
    (&quitter).write_all(&HELLO[..5]).unwrap();
    quitter.shutdown(std::net::Shutdown::Write).unwrap();
    let t0 = Instant::now();
    let (answer, fds) = read_to_close(&quitter);
    assert!(answer.is_empty() && fds.is_empty(), "{answer:?}");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    drop(quitter);

    let staller = raw_connect(&name);
    let stalled_at = Instant::now();
    (&staller).write_all(&HELLO[..8]).unwrap();
    // The second and last slot: served while the stalled hello waits.
    let mut good = connect_retrying(&name, START);
    for i in 0..100 {
        assert_eq!(good.call(&[0, i, i, 0]).unwrap()[2], 3 * i + 1);
    }
    assert!(
        stalled_at.elapsed() < HELLO_TIMEOUT * 3 / 4,
        "the good client took {:?}: too long to tell whether it waited",
        stalled_at.elapsed()
    );
    staller.set_nonblocking(true).unwrap();
    match (&staller).read(&mut [0u8; 1]) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the stalled hello was answered early: {other:?}"),
    }
    staller.set_nonblocking(false).unwrap();

    let (answer, fds) = read_to_close(&staller);
    let took = stalled_at.elapsed();
    assert!(answer.is_empty() && fds.is_empty(), "{answer:?}");
    assert!(
        took >= HELLO_TIMEOUT - Duration::from_millis(100),
        "dropped early, after {took:?}"
    );
    assert!(
        took < HELLO_TIMEOUT + Duration::from_millis(1500),
        "{took:?}"
    );
    drop(staller);

    // Its slot is free: a client gets in at the first try.
    let once = ClientConfig::new().connect_timeout(Duration::ZERO);
    let mut second = Client::<common::Msg, common::Msg>::connect(&name, once).unwrap();
    assert_eq!(second.call(&[1, 1, 1, 0]).unwrap()[2], 4);
    drop((good, second));
    wait_for_fds(pid, &before, Duration::from_secs(5));
}

/// A hello may come in pieces: within the timeout, it is a hello.
#[test]
fn a_hello_sent_in_pieces_within_the_timeout_is_accepted() {
    let name = name("slow-hello");
    let _server = spawn_server(&["serve", &name, "--max-clients", "2"]);
    let s = raw_connect(&name);
    for piece in [&HELLO[..3], &HELLO[3..11], &HELLO[11..]] {
        (&s).write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let (w, fds) = recv_welcome(&s);
    assert_eq!(field(&w, welcome::STATUS), 0, "{w:?}");
    assert_eq!(fds.len(), 2, "the header and region memfds");
}

/// A TCP connection this process set to linger on close (`SO_LINGER`,
/// `secs` seconds) with a full send queue its peer never reads: closing
/// its last descriptor blocks for the linger time. Returns it and the
/// peer, which must stay open for as long.
fn lingering_socket(secs: i32) -> (std::net::TcpStream, std::net::TcpStream) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (peer, _) = l.accept().unwrap();
    s.set_nonblocking(true).unwrap();
    let chunk = [0u8; 65536];
    loop {
        match (&s).write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("fill the send queue: {e}"),
        }
    }
    set_linger(&s, 1, secs);
    (s, peer)
}

fn linger_off(s: &std::net::TcpStream) {
    set_linger(s, 0, 0);
}

fn set_linger(s: &std::net::TcpStream, on: i32, secs: i32) {
    let linger = libc::linger {
        l_onoff: on,
        l_linger: secs,
    };
    // SAFETY: `linger` is a valid option value of the size given.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

/// Closing a descriptor can block (a lingering socket with unsent data, a
/// file whose flush waits on its FUSE daemon): one a client sends must
/// not put the server to sleep, or every other client waits with it.
#[test]
fn a_descriptor_that_blocks_on_close_does_not_stall_the_server() {
    let name = name("lingering-fd");
    let _server = spawn_server(&["serve", &name, "--max-clients", "3"]);
    let mut good = connect_retrying(&name, START);
    assert_eq!(good.call(&[1, 1, 1, 0]).unwrap()[2], 4);

    let (sock, _peer) = lingering_socket(3);
    let s = raw_connect(&name);
    if smuggle(&s, &HELLO, &[sock.as_raw_fd()]) {
        // Ours closed, the server's copy is the last.
        drop(sock);
        let (answer, fds) = read_to_close(&s);
        assert_refused_as_bad_hello(&answer, &fds);
    } else {
        // Ours is the last: closed without lingering, not to wait here.
        linger_off(&sock);
    }
    // The server closed that connection; is it free to serve?
    let t0 = Instant::now();
    assert_eq!(good.call(&[1, 2, 2, 0]).unwrap()[2], 7);
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "a call took {:?} after a client sent a lingering socket",
        t0.elapsed()
    );
}
