//! A client trusts nothing a server sends. Each test puts a fake server (a
//! listener on the segment's address, written here) in front of `connect`;
//! it answers the hello with a welcome that is wrong in one way, and
//! `connect` must return an error that says what is wrong, never panic,
//! hang or fault on memory it maps, and leave this process holding exactly
//! the descriptors it held before (everything it was sent is closed). The
//! fakes start from a real server's welcome, and a faithful fake is
//! accepted, so each refusal is for the one thing changed. (A listener that
//! answers garbage or another protocol version: `process.rs`.)
//!
//! The tests of this file take turns: each compares this process's
//! descriptors before and after.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{
    HELLO, Msg, WELCOME_LEN, address, field, memfd, name, open_fds, raw_connect, recv_welcome,
    send_with_fds, welcome,
};
use ipc::{Client, ClientConfig, Error, Server, ServerConfig};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// How long a client waits for the server's answer here.
const SERVER_TIMEOUT: Duration = Duration::from_millis(300);

const SEALS_FIXED_SIZE: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
const SEALS_READ_ONLY: libc::c_int = SEALS_FIXED_SIZE | libc::F_SEAL_FUTURE_WRITE;

/// A real server's welcome for `Msg` (fixed part and type text).
fn genuine_welcome() -> Vec<u8> {
    static W: OnceLock<Vec<u8>> = OnceLock::new();
    W.get_or_init(|| {
        let name = name("genuine");
        let cfg = ServerConfig::new().max_clients(2).ring_depth(8);
        let mut server = Server::<Msg, Msg>::create(&name, cfg).unwrap();
        let s = raw_connect(&name);
        (&s).write_all(&HELLO).unwrap();
        // The hello is already in the socket: one look answers it.
        server.refresh();
        let (w, fds) = recv_welcome(&s);
        assert_eq!(field(&w, welcome::STATUS), 0, "{w:?}");
        assert_eq!(fds.len(), 2);
        w
    })
    .clone()
}

/// The region length the genuine welcome announces.
fn region_len(w: &[u8]) -> u64 {
    let at = welcome::REGION_LEN;
    u64::from_le_bytes(w[at..at + 8].try_into().unwrap())
}

fn put(w: &mut [u8], at: usize, v: u32) {
    w[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// A header memfd as a server makes it: a page holding the magic and the
/// protocol version, sealed against writes and resizing.
fn header() -> OwnedFd {
    let mut ident = b"CPRCIPC2".to_vec();
    ident.extend_from_slice(&2u32.to_le_bytes());
    memfd("ipc-test-fake-header", 4096, &ident, SEALS_READ_ONLY)
}

/// A region memfd of `len` bytes with `seals`.
fn region(len: u64, seals: libc::c_int) -> OwnedFd {
    memfd("ipc-test-fake-region", len, &[], seals)
}

/// Keeps the connection open until the client closes it.
fn hold(s: UnixStream) {
    let _ = (&s).read_to_end(&mut Vec::new());
}

/// Sends `bytes` with `fds` attached.
fn send(s: &UnixStream, bytes: &[u8], fds: &[&OwnedFd]) {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    assert_eq!(send_with_fds(s, bytes, &raw).unwrap(), bytes.len());
}

/// Puts a fake server on a fresh segment, which reads the hello and hands
/// the connection to `answer`; connects to it with one attempt and
/// returns what `connect` returned (a client it made is dropped). Fails
/// the test if `connect` took long or this process holds other
/// descriptors afterwards than before.
fn connect_to_fake(
    tag: &str,
    answer: impl FnOnce(UnixStream) + Send + 'static,
) -> Result<(), Error> {
    use std::os::linux::net::SocketAddrExt;
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    genuine_welcome();
    let name = name(tag);
    let before = open_fds(std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(address(&name)).unwrap();
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    let fake = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        let s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no client came");
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut hello = [0u8; 16];
        (&s).read_exact(&mut hello).unwrap();
        assert_eq!(hello, HELLO);
        answer(s);
    });
    let cfg = ClientConfig::new()
        .connect_timeout(Duration::ZERO)
        .server_timeout(SERVER_TIMEOUT);
    let t0 = Instant::now();
    let result = Client::<Msg, Msg>::connect(&name, cfg).map(drop);
    let took = t0.elapsed();
    fake.join().expect("the fake server panicked");
    assert!(took < Duration::from_secs(3), "connect took {took:?}");
    assert_eq!(
        open_fds(std::process::id()),
        before,
        "connect left descriptors behind ({result:?})"
    );
    result
}

/// The reason of a `Malformed` error.
fn malformed(r: Result<(), Error>) -> String {
    match r {
        Err(Error::Malformed { reason, .. }) => reason,
        other => panic!("expected a malformed-handshake error, got {other:?}"),
    }
}

/// The control: a fake that answers as a server does is accepted.
#[test]
fn a_faithful_fake_server_is_accepted() {
    let r = connect_to_fake("faithful", |s| {
        let w = genuine_welcome();
        send(
            &s,
            &w,
            &[&header(), &region(region_len(&w), SEALS_FIXED_SIZE)],
        );
        hold(s);
    });
    r.expect("a faithful welcome was refused");
}

#[test]
fn a_welcome_cut_short_is_an_error_not_a_hang() {
    let r = connect_to_fake("cut-fixed", |s| {
        (&s).write_all(&genuine_welcome()[..WELCOME_LEN / 2])
            .unwrap();
    });
    let why = malformed(r);
    assert!(
        why.contains("closed the connection during the handshake"),
        "{why}"
    );

    let cut = |s: &UnixStream| {
        let w = genuine_welcome();
        let half = WELCOME_LEN + (w.len() - WELCOME_LEN) / 2;
        send(
            s,
            &w[..half],
            &[&header(), &region(region_len(&w), SEALS_FIXED_SIZE)],
        );
    };
    let why = malformed(connect_to_fake("cut-text", move |s| cut(&s)));
    assert!(why.contains("closed within the welcome"), "{why}");

    // Cut short and then silent: the client gives up after its timeout.
    let t0 = Instant::now();
    match connect_to_fake("cut-silent", move |s| {
        cut(&s);
        hold(s);
    }) {
        Err(Error::Timeout { op: "connect", .. }) => {}
        other => panic!("expected a connect timeout, got {other:?}"),
    }
    assert!(t0.elapsed() >= SERVER_TIMEOUT, "{:?}", t0.elapsed());
}

#[test]
fn a_welcome_without_both_memfds_is_refused() {
    let why = malformed(connect_to_fake("no-fds", |s| {
        send(&s, &genuine_welcome(), &[]);
        hold(s);
    }));
    assert!(why.contains("carried 0 descriptors, not 2"), "{why}");
    let why = malformed(connect_to_fake("no-region", |s| {
        send(&s, &genuine_welcome(), &[&header()]);
        hold(s);
    }));
    assert!(why.contains("carried 1 descriptors, not 2"), "{why}");
}

/// Extra descriptors are refused and closed, whether they come with the
/// fixed part or later with the type text.
#[test]
fn a_welcome_with_extra_descriptors_is_refused_and_closes_them_all() {
    let why = malformed(connect_to_fake("extra-fd", |s| {
        let w = genuine_welcome();
        let r = region(region_len(&w), SEALS_FIXED_SIZE);
        send(&s, &w, &[&header(), &r, &header()]);
        hold(s);
    }));
    assert!(why.contains("carried 3 descriptors, not 2"), "{why}");
    let why = malformed(connect_to_fake("extra-fd-later", |s| {
        let w = genuine_welcome();
        let r = region(region_len(&w), SEALS_FIXED_SIZE);
        send(&s, &w[..WELCOME_LEN], &[&header(), &r]);
        let extra = [&header(), &header(), &r];
        send(&s, &w[WELCOME_LEN..], &extra);
        hold(s);
    }));
    assert!(why.contains("carried 5 descriptors, not 2"), "{why}");
}

/// A memfd that could shrink under the client's mapping (a SIGBUS at its
/// next access), is not the size announced, cannot be mapped as needed or
/// is no memfd at all is refused before anything is mapped; and a header
/// without the magic is not taken for one.
#[test]
fn memfds_that_could_fault_or_do_not_fit_are_refused() {
    type Fds = fn(u64) -> [OwnedFd; 2];
    let cases: [(&str, Fds, &str); 7] = [
        (
            "region-unsealed",
            |len| [header(), region(len, 0)],
            "region memfd: memfd is not sealed against shrinking",
        ),
        (
            "region-short",
            |len| [header(), region(len / 2, SEALS_FIXED_SIZE)],
            "region memfd: memfd is",
        ),
        (
            "region-long",
            |len| [header(), region(len + 4096, SEALS_FIXED_SIZE)],
            "region memfd: memfd is",
        ),
        (
            "region-write-sealed",
            |len| [header(), region(len, SEALS_FIXED_SIZE | libc::F_SEAL_WRITE)],
            // mmap refuses a writable shared mapping: EPERM.
            "region memfd: Operation not permitted",
        ),
        (
            "header-short",
            |len| {
                let h = memfd("ipc-test-fake-header", 0, &[], SEALS_READ_ONLY);
                [h, region(len, SEALS_FIXED_SIZE)]
            },
            "header memfd: memfd is 0 bytes, expected 4096",
        ),
        (
            "header-no-magic",
            |len| {
                let h = memfd("ipc-test-fake-header", 4096, &[], SEALS_READ_ONLY);
                [h, region(len, SEALS_FIXED_SIZE)]
            },
            "the header memfd has no valid magic",
        ),
        (
            "header-pipe",
            |len| {
                let mut p = [0; 2];
                // SAFETY: `p` has room for the two descriptors pipe2 writes.
                assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
                // SAFETY: the kernel just returned these descriptors; nobody
                // else owns them.
                let [r, w] =
                    p.map(|fd| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
                drop(w);
                [r, region(len, SEALS_FIXED_SIZE)]
            },
            // F_GET_SEALS on what is no memfd: EINVAL.
            "header memfd: Invalid argument",
        ),
    ];
    for (tag, fds, expected) in cases {
        let why = malformed(connect_to_fake(tag, move |s| {
            let w = genuine_welcome();
            let [h, r] = fds(region_len(&w));
            send(&s, &w, &[&h, &r]);
            hold(s);
        }));
        assert!(why.contains(expected), "{tag}: {why}");
    }
}

/// Sizes no server of these types announces, a slot outside the segment,
/// more type text than allowed and an unknown status are refused before
/// anything is read or mapped on their account.
#[test]
fn a_welcome_with_impossible_geometry_is_refused() {
    use welcome::{DEPTH, MAX_CLIENTS, REGION_LEN, REQ_SLOT, SLOT, STATUS, TEXT_LEN};
    let cases: [(&str, usize, u64, &str); 13] = [
        ("depth-0", DEPTH, 0, "ring_depth must be a power of two"),
        ("depth-3", DEPTH, 3, "ring_depth must be a power of two"),
        (
            "depth-2pow31",
            DEPTH,
            1 << 31,
            "ring_depth must be a power of two",
        ),
        // A possible depth, but not the one the rest describes.
        ("depth-2pow16", DEPTH, 1 << 16, "geometry"),
        ("clients-0", MAX_CLIENTS, 0, "max_clients must be in"),
        (
            "clients-max",
            MAX_CLIENTS,
            u32::MAX.into(),
            "max_clients must be in",
        ),
        ("region-1TiB", REGION_LEN, 1 << 40, "geometry"),
        ("req-slot-1", REQ_SLOT, 1, "geometry"),
        ("slot-past-end", SLOT, 2, "slot 2 of 2 clients"),
        (
            "slot-max",
            SLOT,
            u32::MAX.into(),
            "slot 4294967295 of 2 clients",
        ),
        ("text-1MiB", TEXT_LEN, 1 << 20, "more than 65536"),
        ("text-0", TEXT_LEN, 0, "type text lacks"),
        ("status-9", STATUS, 9, "unknown welcome status 9"),
    ];
    for (tag, at, value, expected) in cases {
        let why = malformed(connect_to_fake(tag, move |s| {
            let mut w = genuine_welcome();
            if at == REGION_LEN {
                w[at..at + 8].copy_from_slice(&value.to_le_bytes());
            } else {
                put(&mut w, at, u32::try_from(value).unwrap());
            }
            let r = region(region_len(&genuine_welcome()), SEALS_FIXED_SIZE);
            send(&s, &w, &[&header(), &r]);
            hold(s);
        }));
        assert!(why.contains(expected), "{tag}: {why}");
    }
}

/// A refusal is taken as one even if it comes with descriptors, which
/// are closed.
#[test]
fn a_refusal_that_carries_descriptors_is_a_refusal_and_they_are_closed() {
    let r = connect_to_fake("refusal-fds", |s| {
        let mut w = genuine_welcome();
        put(&mut w, welcome::STATUS, 1); // NoFreeSlot
        let r = region(region_len(&w), SEALS_FIXED_SIZE);
        send(&s, &w, &[&header(), &r]);
        hold(s);
    });
    match r {
        Err(Error::NoFreeSlot { max_clients: 2, .. }) => {}
        other => panic!("expected NoFreeSlot, got {other:?}"),
    }
}
