//! `loom` models of the three transports: every interleaving of a producer
//! and a consumer over a two-slot ring, with enough messages to wrap;
//! FastForward's and onesided's hand-back of slots in runs (a ring of 8 in
//! runs of 2, the consumer never syncing); Lamport's batched publication
//! and sync; a three-node Flux mesh; and a Flux peer dropped while calls to
//! it are in flight. A value read racing its write is reported by loom's
//! cell tracking; loss, duplication or reordering fails the asserts.
//!
//! `RUSTFLAGS="--cfg inproc_loom" cargo test -p inproc --lib --release loom`

use loom::thread;

use crate::{FastForward, Lamport, Onesided, Receiver, Sender, Transport, TryRecvError};

/// Producer sends `0..n` one by one; consumer checks FIFO order.
fn fifo<T: Transport>(n: usize) {
    loom::model(move || {
        let (mut tx, mut rx) = T::channel::<usize>(2);
        let producer = thread::spawn(move || {
            for i in 0..n {
                let mut v = i;
                loop {
                    match tx.try_send(v) {
                        Ok(()) => break,
                        Err(e) => {
                            v = e.into_inner();
                            tx.publish();
                            thread::yield_now();
                        }
                    }
                }
                tx.publish();
            }
        });
        let mut next = 0;
        while next < n {
            match rx.try_recv() {
                Ok(v) => {
                    assert_eq!(v, next, "out of order or duplicated");
                    next += 1;
                    rx.sync();
                }
                Err(TryRecvError::Empty) => {
                    rx.sync();
                    thread::yield_now();
                }
                Err(TryRecvError::Disconnected) => panic!("lost {} values", n - next),
            }
        }
        producer.join().unwrap();
        // Drained and the producer is gone.
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    });
}

#[test]
fn loom_fastforward_wraps_in_order() {
    fifo::<FastForward>(3);
}

#[test]
fn loom_lamport_wraps_in_order() {
    fifo::<Lamport>(3);
}

#[test]
fn loom_onesided_wraps_in_order() {
    fifo::<Onesided>(3);
}

/// Producer sends `0..n` with `try_send` alone, consumer takes them with
/// `try_recv` alone and never syncs: how FastForward and onesided are used
/// per message, their consumer handing slots back a run at a time (2 slots
/// in a ring of 8). Ten values wrap the ring far enough that the producer
/// refills a run's second slot, so a hand-back that raced the consumer's
/// read of it, or one out of order, would be seen; the consumer ends with a
/// run read in part, which its drop hands back before the queue drops the
/// rest.
///
/// Bounded to three preemptions: unbounded, ten values through a ring of
/// eight do not finish in minutes. The bound still catches what it is for:
/// onesided storing `tail` before reading the slot, or FastForward
/// clearing a run newest first, each fails this model.
fn fifo_unsynced<T: Transport>(n: usize) {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(3);
    model.check(move || {
        let (mut tx, mut rx) = T::channel::<usize>(8);
        let producer = thread::spawn(move || {
            for i in 0..n {
                let mut v = i;
                while let Err(e) = tx.try_send(v) {
                    v = e.into_inner();
                    thread::yield_now();
                }
            }
        });
        let mut next = 0;
        while next < n {
            match rx.try_recv() {
                Ok(v) => {
                    assert_eq!(v, next, "out of order or duplicated");
                    next += 1;
                }
                Err(TryRecvError::Empty) => thread::yield_now(),
                Err(TryRecvError::Disconnected) => panic!("lost {} values", n - next),
            }
        }
        producer.join().unwrap();
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    });
}

#[test]
fn loom_fastforward_batches_wrap_in_order_without_sync() {
    fifo_unsynced::<FastForward>(10);
}

#[test]
fn loom_onesided_batches_wrap_in_order_without_sync() {
    fifo_unsynced::<Onesided>(10);
}

#[test]
fn loom_lamport_batch_publication() {
    loom::model(|| {
        let (mut tx, mut rx) = Lamport::channel::<usize>(2);
        let producer = thread::spawn(move || {
            // Two values, one publication.
            let mut batch: std::collections::VecDeque<usize> = [10, 11].into();
            while !batch.is_empty() {
                tx.send_batch(&mut batch).unwrap();
                thread::yield_now();
            }
        });
        let mut got = Vec::new();
        while got.len() < 2 {
            match rx.recv_batch(2, |v| got.push(v)) {
                Ok(0) => thread::yield_now(),
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, [10, 11]);
        producer.join().unwrap();
    });
}

#[test]
fn loom_dropped_consumer_is_seen_and_values_are_dropped() {
    loom::model(|| {
        let (mut tx, rx) = Onesided::channel::<loom::sync::Arc<()>>(2);
        let token = loom::sync::Arc::new(());
        tx.try_send(token.clone()).unwrap();
        let t = thread::spawn(move || drop(rx));
        t.join().unwrap();
        assert!(tx.is_disconnected());
        match tx.try_send(token.clone()) {
            Err(crate::TrySendError::Disconnected(_)) => {}
            other => panic!("{other:?}"),
        }
        drop(tx);
        // The value left in the queue was dropped with it.
        assert_eq!(loom::sync::Arc::strong_count(&token), 1);
    });
}

/// A three-node mesh: node 0 calls nodes 1 and 2, which answer the one
/// request they get; node 0 must see both answers with their user data.
#[test]
fn loom_flux_three_nodes() {
    use crate::flux::{self, FluxConfig};
    // No preemption bound: with one, loom cannot switch away from the
    // spinning threads and the model never finishes.
    loom::model(|| {
        let cfg = FluxConfig {
            capacity: 2,
            max_in_flight: 1,
        };
        let mut nodes = flux::mesh::<Onesided, usize, usize, usize>(3, cfg);
        let servers: Vec<_> = nodes
            .drain(1..)
            .map(|mut node| {
                thread::spawn(move || {
                    let me = node.id();
                    loop {
                        if let Some(req) = node.try_recv() {
                            assert_eq!(req.from(), 0);
                            let x = *req.data();
                            req.reply(x + me).unwrap();
                            node.flush();
                            break;
                        }
                        thread::yield_now();
                    }
                    node
                })
            })
            .collect();
        let mut client = nodes.pop().unwrap();
        client.call(1, 10, 1).unwrap();
        client.call(2, 20, 2).unwrap();
        let mut got = [false; 3];
        while !(got[1] && got[2]) {
            if client.poll(|from, user, resp| {
                assert_eq!(from, user);
                assert_eq!(resp, Ok(from * 10 + from));
                assert!(!got[from], "duplicate response");
                got[from] = true;
            }) == 0
            {
                thread::yield_now();
            }
        }
        let nodes: Vec<_> = servers.into_iter().map(|h| h.join().unwrap()).collect();
        drop(nodes);
    });
}

/// Node 1 answers one of node 0's two calls and is dropped, racing node 0's
/// polls: node 0 gets that answer (the race never turns it into
/// `Disconnected`) and the other call back as `Disconnected`, each once.
fn flux_dropped_peer<T: Transport>() {
    use crate::Disconnected;
    use crate::flux::{self, FluxConfig};
    loom::model(|| {
        let cfg = FluxConfig {
            capacity: 2,
            max_in_flight: 2,
        };
        let mut nodes = flux::mesh::<T, usize, usize, usize>(2, cfg);
        let mut server = nodes.pop().unwrap();
        let mut client = nodes.pop().unwrap();
        client.call(1, 10, 0).unwrap();
        client.call(1, 20, 1).unwrap();
        client.flush();
        let t = thread::spawn(move || {
            loop {
                if let Some(req) = server.try_recv() {
                    let x = *req.data();
                    req.reply(x + 1).unwrap();
                    break;
                }
                thread::yield_now();
            }
            // Dropped without flushing: the drop publishes the reply.
        });
        let mut got: [Option<Result<usize, Disconnected<()>>>; 2] = [None, None];
        while client.in_flight(1) > 0 {
            if client.poll(|from, user, resp| {
                assert_eq!(from, 1);
                assert!(got[user].is_none(), "delivered twice");
                got[user] = Some(resp);
            }) == 0
            {
                thread::yield_now();
            }
        }
        t.join().unwrap();
        assert_eq!(got, [Some(Ok(11)), Some(Err(Disconnected(())))]);
    });
}

#[test]
fn loom_flux_dropped_peer_onesided() {
    flux_dropped_peer::<Onesided>();
}

#[test]
fn loom_flux_dropped_peer_lamport() {
    flux_dropped_peer::<Lamport>();
}

#[test]
fn loom_flux_dropped_peer_fastforward() {
    flux_dropped_peer::<FastForward>();
}
