//! Fuzzing entry points (feature `fuzzing`; the targets are in `ipc/fuzz/`).
//!
//! [`server_reads`] runs a real [`Server`] with two raw clients in this one
//! thread: a correct one, and a hostile one whose hello, region contents and
//! connection bytes come from the input. Connecting needs no second thread:
//! the client's hello waits in the socket until the server's
//! [`refresh`](Server::refresh) reads it, and the welcome waits for the
//! client the same way. Whatever the input, the server must not panic or
//! hang, the correct client must get every answer right and never be
//! evicted, and the header must stay impossible to map writable.
//!
//! [`wire`] feeds the input to every parser of the connection protocol.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use zerocopy::IntoBytes;

use crate::layout::{HEADER_LEN, Layout};
use crate::ring::ClientCore;
use crate::shm::{Mapping, RegionMap};
use crate::wire::{self, Hello, Notice, Status, TypeText, WAKE, Welcome};
use crate::{Server, ServerConfig, sys};

type Msg = [u64; 2];
const MAX_CLIENTS: u32 = 3;

fn answer(req: &Msg) -> Msg {
    [req[0], req[1].wrapping_mul(3).wrapping_add(1)]
}

/// Reads the fuzz input front to back; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }

    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let t = self.take(8);
        b[..t.len()].copy_from_slice(t);
        u64::from_le_bytes(b)
    }

    fn u16(&mut self) -> u16 {
        let mut b = [0u8; 2];
        let t = self.take(2);
        b[..t.len()].copy_from_slice(t);
        u16::from_le_bytes(b)
    }
}

/// A client made of the crate's parts, without `Client`'s blocking connect.
struct RawClient {
    core: ClientCore<Msg, Msg, u64>,
    region: RegionMap,
    sock: OwnedFd,
}

impl RawClient {
    /// Connects, sends `hello`, lets the server answer, reads the welcome.
    /// `None` when the server refused or dropped the connection.
    fn attach(server: &mut Server<Msg, Msg>, name: &str, hello: &[u8]) -> Option<Self> {
        let addr = sys::AbstractAddr::new(&wire::address(sys::euid(), name)).ok()?;
        let sock = sys::connect(&addr).ok()?;
        let _ = sys::send(&sock, hello, &[]);
        server.refresh();
        let mut fds = Vec::new();
        let mut buf = vec![0u8; Welcome::LEN + wire::MAX_TEXT];
        let mut got = 0;
        while let Ok(n) = sys::recv(&sock, &mut buf[got..], &mut fds) {
            if n == 0 {
                break;
            }
            got += n;
        }
        if got < Welcome::LEN {
            // No answer (yet): the hello was incomplete.
            return None;
        }
        let w = Welcome::parse(&buf[..Welcome::LEN]).expect("the server's welcome parses");
        if w.status() != Ok(Status::Attached) {
            assert!(fds.is_empty(), "a refusal carried descriptors");
            return None;
        }
        let text = buf.get(Welcome::LEN..got)?;
        assert_eq!(text.len(), w.text_len.get() as usize);
        TypeText::parse(text).expect("the server's type text parses");
        let layout = Layout::new::<Msg, Msg>(MAX_CLIENTS, w.depth.get()).expect("geometry");
        let [header_fd, region_fd] = <[OwnedFd; 2]>::try_from(fds).ok()?;
        assert!(
            Mapping::open(&header_fd, HEADER_LEN, true).is_err(),
            "a client could map the header writable"
        );
        Mapping::open(&header_fd, HEADER_LEN, false).expect("header maps read-only");
        let region = Mapping::open(&region_fd, layout.region, true).expect("region maps");
        let region = RegionMap::new(region, layout);
        let core = ClientCore::new(region.req_ring(), region.resp_ring(), layout.depth);
        Some(Self { core, region, sock })
    }

    /// Writes `value` at an 8-byte-aligned offset of the region.
    fn scribble(&self, offset: u16, value: u64) {
        let (base, len) = self.region.bytes();
        let off = (usize::from(offset) * 8) % len;
        // SAFETY: `off + 8 <= len` (len is a multiple of 8) inside the live
        // mapping, 8-byte aligned; every word of a region is an atomic or
        // plain `FromBytes` data, and this thread is the only one touching
        // it, so an atomic store through a raw pointer is what a
        // scribbling client process would do.
        unsafe { (*base.add(off).cast::<AtomicU64>()).store(value, Ordering::Relaxed) };
    }
}

/// One run of the `server_reads` target (see the module docs).
pub fn server_reads(data: &[u8]) {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let mut input = Input(data);
    let depth = 1u32 << (input.byte().unwrap_or(0) % 4);
    let name = format!(
        "ipc-fuzz-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    );
    let cfg = ServerConfig::new()
        .max_clients(MAX_CLIENTS)
        .ring_depth(depth);
    let mut server = Server::<Msg, Msg>::create(&name, cfg).expect("create server");
    let mut good = RawClient::attach(&mut server, &name, Hello::new(false).as_bytes())
        .expect("a correct client attaches");
    let valid = Hello::new(false);
    let hello = if input.byte().unwrap_or(0) & 1 == 0 {
        valid.as_bytes().to_vec()
    } else {
        input.take(16).to_vec()
    };
    let mut hostile = RawClient::attach(&mut server, &name, &hello);
    if hello == valid.as_bytes() {
        assert!(hostile.is_some(), "a valid hello was refused");
    }

    // The correct client's calls in flight: user data -> request.
    let mut good_calls = std::collections::HashMap::new();
    let mut next = 0u64;
    let mut held = Vec::new();
    let good_slot = 0;
    while let Some(op) = input.byte() {
        match op % 10 {
            0 => {
                let req = [next, input.u64()];
                if good.core.try_call(&req, next).is_ok() {
                    good_calls.insert(next, req);
                    next += 1;
                }
            }
            1 => complete(&mut good, &mut good_calls),
            2 => {
                if let Some(h) = &hostile {
                    h.scribble(input.u16(), input.u64());
                }
            }
            3 => {
                let n = usize::from(input.byte().unwrap_or(0) % 8);
                let bytes = input.take(n).to_vec();
                if let Some(h) = &hostile {
                    let _ = sys::send(&h.sock, &bytes, &[]);
                }
            }
            4 => {
                if let Some(h) = &mut hostile {
                    let _ = h.core.try_call(&[u64::MAX, input.u64()], 0);
                }
            }
            5 => {
                if let Some(h) = &hostile {
                    let _ = sys::send(&h.sock, &[WAKE], &[]);
                }
            }
            6 => {
                if let Some(r) = server.recv() {
                    held.push(r);
                }
            }
            7 => {
                if !held.is_empty() {
                    let i = usize::from(input.byte().unwrap_or(0)) % held.len();
                    let (token, req) = held.swap_remove(i);
                    reply(&mut server, token, &req, good_slot);
                }
            }
            8 => server.refresh(),
            _ => hostile = None,
        }
        assert!(server.attached_clients() <= MAX_CLIENTS as usize);
    }

    // Whatever happened, the correct client gets every answer.
    for (token, req) in held.drain(..) {
        reply(&mut server, token, &req, good_slot);
    }
    let mut rounds = 0;
    while !good_calls.is_empty() {
        server.serve(64, |_, r| answer(r));
        complete(&mut good, &mut good_calls);
        rounds += 1;
        assert!(
            rounds < 10_000,
            "the correct client's calls were never answered"
        );
    }
    // And it was never evicted: nothing but silence on its connection.
    let mut fds = Vec::new();
    let mut byte = [0u8; 1];
    assert!(
        sys::recv(&good.sock, &mut byte, &mut fds).is_err(),
        "the server wrote to (or closed) the correct client's connection"
    );
    drop(hostile);
}

fn reply(server: &mut Server<Msg, Msg>, token: crate::RequestToken, req: &Msg, good_slot: u32) {
    let client = token.client();
    let r = server.reply(token, answer(req));
    if client == good_slot {
        r.expect("a reply to the correct client failed");
    }
}

fn complete(good: &mut RawClient, calls: &mut std::collections::HashMap<u64, Msg>) {
    while let Some((user, resp)) = good
        .core
        .try_complete()
        .expect("the server answered a call id the correct client never used")
    {
        let req = calls
            .remove(&user)
            .expect("an answer for a call not in flight");
        assert_eq!(resp, answer(&req), "the correct client got a wrong answer");
    }
}

/// One run of the `wire` target: every parser of the connection protocol
/// on arbitrary bytes; what parses re-encodes to the same value.
pub fn wire(data: &[u8]) {
    if let Ok(h) = Hello::parse(data) {
        assert_eq!(
            Hello::parse(h.as_bytes()).map(|h| h.blocking()),
            Ok(h.blocking())
        );
    }
    if let Ok(w) = Welcome::parse(data) {
        let _ = w.status();
        assert!(w.text_len.get() as usize <= wire::MAX_TEXT);
    }
    if let Ok(t) = TypeText::parse(data) {
        assert_eq!(TypeText::parse(&t.encode()), Ok(t));
    }
    if let Ok(Some(n)) = Notice::parse(data) {
        assert_eq!(Notice::parse(&n.encode()), Ok(Some(n)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays the committed seed corpus of both targets (what
    /// `scripts/fuzz-ipc.sh replay` does under libFuzzer, here without it).
    #[test]
    fn fuzz_corpus_replays_cleanly() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        let mut n = 0;
        for (target, run) in [
            ("server_reads", super::server_reads as fn(&[u8])),
            ("wire", super::wire),
        ] {
            let dir = root.join(target);
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
                let path = entry.unwrap().path();
                run(&std::fs::read(&path).unwrap());
                n += 1;
            }
        }
        assert!(n >= 8, "only {n} corpus files");
    }

    /// A client that sends wake-ups without requests (it would keep a
    /// blocking server's epoll readable, and the server awake) is evicted;
    /// one wake-up per request, the most a correct client sends, is not.
    #[test]
    fn a_client_flooding_wake_ups_is_evicted() {
        let name = format!("ipc-wake-flood-{}", std::process::id());
        let cfg = ServerConfig::new()
            .max_clients(MAX_CLIENTS)
            .ring_depth(4)
            .wait(crate::WaitStrategy::Block { spins: 0 });
        let mut server = Server::<Msg, Msg>::create(&name, cfg).expect("create server");
        let mut good = RawClient::attach(&mut server, &name, Hello::new(true).as_bytes())
            .expect("a correct client attaches");
        let flood = RawClient::attach(&mut server, &name, Hello::new(true).as_bytes())
            .expect("a second client attaches");
        for i in 0..50u64 {
            good.core.try_call(&[i, i], i).expect("room");
            let _ = sys::send(&good.sock, &[WAKE], &[]);
            let (token, req) = loop {
                if let Some(t) = server.recv() {
                    break t;
                }
            };
            server.reply(token, answer(&req)).unwrap();
            assert_eq!(good.core.try_complete(), Ok(Some((i, answer(&[i, i])))));
        }
        for _ in 0..16 {
            let _ = sys::send(&flood.sock, &[WAKE; 64], &[]);
        }
        server.refresh();
        assert_eq!(server.evictions(), 1, "the flood was not evicted");
        assert_eq!(server.attached_clients(), 1);
        drop(flood);
    }
}
