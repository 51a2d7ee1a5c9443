//! `loom` models of the slot protocol: every interleaving (and every
//! permitted reordering of the Acquire/Release accesses) of a client and a
//! server, and of two clients and a server, including slot reuse after the
//! ring wraps. A payload read racing a payload write would be reported by
//! loom's cell tracking; a lost or misdelivered response fails the asserts,
//! and so does the server's corruption check firing on a correct client
//! (it must accept every sequence value the model can show it).
//!
//! Run with `RUSTFLAGS="--cfg ipc_loom" cargo test -p ipc --lib --release loom`.

use std::ptr::NonNull;
use std::sync::Arc;

use loom::thread;

use crate::ring::{ClientCore, RingRef, ServedClient, Slot, Take};

struct Rings {
    req: Box<[Slot<u64>]>,
    resp: Box<[Slot<u64>]>,
    depth: u32,
}

// SAFETY: slots are Sync for Send payloads; the boxes are never moved or
// freed while views exist (the Arc outlives every thread of the model).
unsafe impl Sync for Rings {}
// SAFETY: as above.
unsafe impl Send for Rings {}

impl Rings {
    fn new(depth: u32) -> Arc<Self> {
        Arc::new(Self {
            req: (0..depth).map(|_| Slot::empty()).collect(),
            resp: (0..depth).map(|_| Slot::empty()).collect(),
            depth,
        })
    }

    fn view(slots: &[Slot<u64>], depth: u32) -> RingRef<u64> {
        let p = NonNull::from(&slots[0]);
        // SAFETY: `depth` slots, kept alive by the Arc held by the caller
        // for as long as the view is used.
        unsafe { RingRef::new(p, depth) }
    }

    fn client<U>(&self) -> ClientCore<u64, u64, U> {
        ClientCore::new(
            Self::view(&self.req, self.depth),
            Self::view(&self.resp, self.depth),
            self.depth,
        )
    }

    fn served(&self) -> ServedClient<u64, u64> {
        ServedClient::new(
            Self::view(&self.req, self.depth),
            Self::view(&self.resp, self.depth),
            self.depth,
        )
    }
}

fn answer(x: u64) -> u64 {
    x * 10 + 1
}

/// Client sends `calls` requests with up to `depth` in flight, checks every
/// response against the user data of its call.
fn run_client(rings: Arc<Rings>, calls: u64, base: u64) {
    let mut core = rings.client::<u64>();
    let (mut sent, mut done) = (0, 0);
    while done < calls {
        while sent < calls && core.try_call(&(base + sent), base + sent).is_ok() {
            sent += 1;
        }
        match core.try_complete() {
            Ok(Some((user, resp))) => {
                assert_eq!(resp, answer(user), "response does not match its call");
                done += 1;
            }
            Ok(None) => thread::yield_now(),
            Err(e) => panic!("unknown call id {e:?}"),
        }
    }
    assert_eq!(core.in_flight(), 0);
}

/// Server answers `total` requests over all `clients`, round-robin, the
/// newest held request first when `reverse` (out-of-order replies).
fn run_server(clients: Vec<Arc<Rings>>, total: u64, reverse: bool) {
    let mut served: Vec<_> = clients.iter().map(|r| r.served()).collect();
    let mut held: Vec<Vec<(u32, u64)>> = vec![Vec::new(); served.len()];
    let mut answered = 0;
    while answered < total {
        let mut progress = false;
        for (s, h) in served.iter_mut().zip(&mut held) {
            match s.try_recv() {
                Take::Request(id, req) => {
                    h.push((id, req));
                    progress = true;
                }
                Take::Empty => {}
                // A correct client never leaves what the server calls
                // corrupt, under any interleaving or reordering.
                Take::Corrupt(why) => panic!("correct client reported corrupt: {why}"),
            }
            let flush = !reverse || h.len() >= 2 || !s.has_work();
            while flush && let Some((id, req)) = h.pop() {
                assert!(s.reply(id, &answer(req)));
                answered += 1;
                progress = true;
            }
        }
        if !progress {
            thread::yield_now();
        }
    }
}

#[test]
fn loom_one_client_wraps_the_ring() {
    loom::model(|| {
        // Depth 2, three calls: the third reuses slot 0 of both rings.
        let rings = Rings::new(2);
        let server = thread::spawn({
            let r = rings.clone();
            move || run_server(vec![r], 3, false)
        });
        run_client(rings, 3, 100);
        server.join().unwrap();
    });
}

#[test]
fn loom_one_client_out_of_order_replies() {
    loom::model(|| {
        let rings = Rings::new(2);
        let server = thread::spawn({
            let r = rings.clone();
            move || run_server(vec![r], 2, true)
        });
        run_client(rings, 2, 7);
        server.join().unwrap();
    });
}

#[test]
fn loom_two_clients_and_a_server() {
    // Exhaustive (no preemption bound): a bound starves the spinning
    // threads of the switches they need and the model never finishes.
    // Depth 1; client A makes two calls, so its slots are reused while B's
    // call is in flight. (Two calls each does not finish in minutes; the
    // one-client models cover reuse in depth.)
    loom::model(|| {
        let a = Rings::new(1);
        let b = Rings::new(1);
        let server = thread::spawn({
            let (a, b) = (a.clone(), b.clone());
            move || run_server(vec![a, b], 3, false)
        });
        let other = thread::spawn({
            let b = b.clone();
            move || run_client(b, 1, 1000)
        });
        run_client(a, 2, 0);
        other.join().unwrap();
        server.join().unwrap();
    });
}
