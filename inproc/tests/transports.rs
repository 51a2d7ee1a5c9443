//! Behaviour every transport must have: FIFO without loss or duplication
//! under any interleaving (property test), under real threads (stress),
//! through the batch and waiting operations, and on disconnection.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use inproc::{
    FastForward, Lamport, Onesided, Receiver, Sender, Transport, TryRecvError, TrySendError,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Send,
    SendBatch(usize),
    Publish,
    Recv,
    RecvBatch(usize),
    Sync,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Send),
        1 => (1usize..10).prop_map(Op::SendBatch),
        2 => Just(Op::Publish),
        4 => Just(Op::Recv),
        1 => (1usize..10).prop_map(Op::RecvBatch),
        2 => Just(Op::Sync),
    ]
}

/// Runs `ops` on one thread and checks that what comes out is exactly what
/// went in, in order, and that "full" is only reported when it must be.
fn check_interleaving<T: Transport>(cap: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let (mut tx, mut rx) = T::channel::<u64>(cap);
    let size = tx.capacity();
    prop_assert!(size >= cap);
    let (mut next, mut expect) = (0u64, 0u64);
    // Received values whose slots were returned with `sync` (Lamport holds
    // the others until then; the other transports return them at once).
    let mut freed = 0u64;
    let outstanding = |next: u64, expect: u64| (next - expect) as usize;
    for op in ops {
        match op {
            Op::Send => match tx.try_send(next) {
                Ok(()) => next += 1,
                Err(TrySendError::Full(v)) => {
                    prop_assert_eq!(v, next);
                    // Room a consumer has read and synced is room: "full"
                    // only when the values not yet returned by a sync fill
                    // the queue (a transport may return room sooner, never
                    // later).
                    prop_assert!(
                        next - freed >= size as u64,
                        "full with {} of {size} slots sent and not synced",
                        next - freed
                    );
                }
                Err(e) => prop_assert!(false, "{e:?}"),
            },
            Op::SendBatch(k) => {
                let mut batch: VecDeque<u64> = (next..next + *k as u64).collect();
                let n = tx.send_batch(&mut batch).unwrap();
                prop_assert_eq!(batch.len(), k - n);
                prop_assert_eq!(batch.front().copied(), (n < *k).then_some(next + n as u64));
                next += n as u64;
            }
            Op::Publish => tx.publish(),
            Op::Recv => match rx.try_recv() {
                Ok(v) => {
                    prop_assert_eq!(v, expect, "out of order");
                    expect += 1;
                }
                Err(TryRecvError::Empty) => {}
                Err(e) => prop_assert!(false, "{e:?}"),
            },
            Op::RecvBatch(k) => {
                let mut got = Vec::new();
                let n = rx.recv_batch(*k, |v| got.push(v)).unwrap();
                prop_assert_eq!(n, got.len());
                prop_assert!(n <= *k);
                for v in got {
                    prop_assert_eq!(v, expect, "out of order");
                    expect += 1;
                }
                freed = expect;
            }
            Op::Sync => {
                rx.sync();
                freed = expect;
            }
        }
        prop_assert!(
            outstanding(next, expect) <= size,
            "more in flight than capacity"
        );
    }
    // Drain: everything sent arrives, once.
    tx.publish();
    drop(tx);
    loop {
        match rx.try_recv() {
            Ok(v) => {
                prop_assert_eq!(v, expect);
                expect += 1;
            }
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => prop_assert!(false, "empty but producer gone"),
        }
    }
    prop_assert_eq!(expect, next, "values lost");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn fastforward_any_interleaving_is_fifo(cap in 1usize..20, ops in prop::collection::vec(op(), 0..200)) {
        check_interleaving::<FastForward>(cap, &ops)?;
    }

    #[test]
    fn lamport_any_interleaving_is_fifo(cap in 1usize..20, ops in prop::collection::vec(op(), 0..200)) {
        check_interleaving::<Lamport>(cap, &ops)?;
    }

    #[test]
    fn onesided_any_interleaving_is_fifo(cap in 1usize..20, ops in prop::collection::vec(op(), 0..200)) {
        check_interleaving::<Onesided>(cap, &ops)?;
    }
}

const N: u64 = 1_000_000;

/// Two real threads, polling operations, every value checked.
fn stress_polling<T: Transport>() {
    let (mut tx, mut rx) = T::channel::<u64>(64);
    let producer = std::thread::spawn(move || {
        let mut i = 0;
        while i < N {
            match tx.try_send(i) {
                Ok(()) => i += 1,
                Err(TrySendError::Full(_)) => {
                    tx.publish();
                    std::hint::spin_loop();
                }
                Err(e) => panic!("{e:?}"),
            }
            if i % 16 == 0 {
                tx.publish();
            }
        }
        tx.publish();
    });
    let mut expect = 0;
    loop {
        match rx.try_recv() {
            Ok(v) => {
                assert_eq!(v, expect);
                expect += 1;
                if expect % 16 == 0 {
                    rx.sync();
                }
            }
            Err(TryRecvError::Empty) => {
                rx.sync();
                std::hint::spin_loop();
            }
            Err(TryRecvError::Disconnected) => break,
        }
    }
    assert_eq!(expect, N);
    producer.join().unwrap();
}

/// Two real threads, `try_send` and `try_recv` alone, never `publish` or
/// `sync`: the per-message use of FastForward and onesided, whose values
/// are visible at once and whose room comes back a batch at a time as it is
/// read. The producer must never wait on slots the consumer read but did
/// not sync.
fn stress_per_message<T: Transport>() {
    let (mut tx, mut rx) = T::channel::<u64>(64);
    let producer = std::thread::spawn(move || {
        for i in 0..N {
            let mut v = i;
            while let Err(e) = tx.try_send(v) {
                assert!(matches!(e, TrySendError::Full(_)), "{e:?}");
                v = e.into_inner();
                std::hint::spin_loop();
            }
        }
    });
    let mut expect = 0;
    loop {
        match rx.try_recv() {
            Ok(v) => {
                assert_eq!(v, expect);
                expect += 1;
            }
            Err(TryRecvError::Empty) => std::hint::spin_loop(),
            Err(TryRecvError::Disconnected) => break,
        }
    }
    assert_eq!(expect, N);
    producer.join().unwrap();
}

/// Two real threads, batch operations.
fn stress_batches<T: Transport>() {
    let (mut tx, mut rx) = T::channel::<u64>(128);
    let producer = std::thread::spawn(move || {
        let mut batch = VecDeque::new();
        let mut i = 0;
        while i < N || !batch.is_empty() {
            while batch.len() < 32 && i < N {
                batch.push_back(i);
                i += 1;
            }
            tx.send_batch(&mut batch).unwrap();
        }
    });
    let mut expect = 0;
    loop {
        match rx.recv_batch(64, |v| {
            assert_eq!(v, expect);
            expect += 1;
        }) {
            Ok(_) => {}
            Err(TryRecvError::Disconnected) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(expect, N);
    producer.join().unwrap();
}

/// Two real threads, waiting operations (these park).
fn stress_waiting<T: Transport>() {
    let (mut tx, mut rx) = T::channel::<u64>(16);
    let producer = std::thread::spawn(move || {
        for i in 0..N / 10 {
            tx.send(i).unwrap();
        }
    });
    let mut expect = 0;
    while let Some(v) = rx.recv() {
        assert_eq!(v, expect);
        expect += 1;
    }
    assert_eq!(expect, N / 10);
    producer.join().unwrap();
}

/// A value whose drops are counted.
struct Counted(Arc<AtomicUsize>);
impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn disconnection<T: Transport>() {
    // Dropped producer: the consumer drains, then sees Disconnected.
    let (mut tx, mut rx) = T::channel::<u32>(8);
    tx.try_send(1).unwrap();
    tx.try_send(2).unwrap();
    drop(tx);
    assert_eq!(rx.try_recv(), Ok(1));
    assert_eq!(rx.recv(), Some(2));
    assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    assert_eq!(rx.recv(), None);

    // Dropped consumer: the producer gets its value back.
    let (mut tx, rx) = T::channel::<String>(8);
    drop(rx);
    assert!(tx.is_disconnected());
    match tx.try_send("kept".to_string()) {
        Err(TrySendError::Disconnected(v)) => assert_eq!(v, "kept"),
        other => panic!("{other:?}"),
    }
    assert_eq!(tx.send("again".to_string()).unwrap_err().0, "again");

    // A producer blocked on a full queue wakes when the consumer goes.
    let (mut tx, rx) = T::channel::<u32>(2);
    while tx.try_send(0).is_ok() {}
    let t = std::thread::spawn(move || tx.send(7));
    std::thread::sleep(Duration::from_millis(20));
    drop(rx);
    assert_eq!(t.join().unwrap().unwrap_err().0, 7);

    // Values still queued when both ends go are dropped exactly once.
    let drops = Arc::new(AtomicUsize::new(0));
    let (mut tx, mut rx) = T::channel::<Counted>(8);
    for _ in 0..5 {
        assert!(tx.try_send(Counted(drops.clone())).is_ok());
    }
    tx.publish();
    drop(rx.try_recv().unwrap());
    rx.sync();
    drop(tx);
    drop(rx);
    assert_eq!(drops.load(Ordering::Relaxed), 5);

    // The same with values read and not yet handed back (no `sync`): the
    // consumer's drop hands them back, and neither end drops them again,
    // whichever end goes first.
    for (consumer_first, reads) in [(false, 1), (true, 1), (false, 3), (true, 3)] {
        let drops = Arc::new(AtomicUsize::new(0));
        let (mut tx, mut rx) = T::channel::<Counted>(8);
        for _ in 0..5 {
            assert!(tx.try_send(Counted(drops.clone())).is_ok());
        }
        tx.publish();
        for _ in 0..reads {
            drop(rx.try_recv().unwrap());
        }
        if consumer_first {
            drop(rx);
            drop(tx);
        } else {
            drop(tx);
            drop(rx);
        }
        // Relaxed: both ends were dropped on this thread.
        assert_eq!(
            drops.load(Ordering::Relaxed),
            5,
            "{reads} read, consumer first: {consumer_first}"
        );
    }
}

fn waiting_with_timeout<T: Transport>() {
    let (mut tx, mut rx) = T::channel::<u32>(4);
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(10)),
        Err(TryRecvError::Empty)
    );
    // A timeout past what the clock holds is no deadline, not a panic.
    tx.send(4).unwrap();
    assert_eq!(rx.recv_timeout(Duration::MAX), Ok(4));
    // A consumer that went to sleep is woken by a later send.
    let t = std::thread::spawn(move || rx.recv());
    std::thread::sleep(Duration::from_millis(50));
    tx.send(5).unwrap();
    assert_eq!(t.join().unwrap(), Some(5));
}

/// A producer asleep in `send` on a full queue gets its room from a
/// `recv` that takes one value, not only once the consumer drained the
/// queue (Lamport shows room only at `sync`; its `recv` returned without
/// one, so the producer slept until the queue was empty).
fn a_blocked_send_gets_room_from_one_recv<T: Transport>() {
    let (mut tx, mut rx) = T::channel::<u32>(8);
    let cap = tx.capacity() as u32;
    for i in 0..cap {
        tx.try_send(i).unwrap();
    }
    tx.publish();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        // Full: this sleeps until the consumer makes room.
        tx.send(cap).unwrap();
        done_tx.send(()).unwrap();
        tx
    });
    // Let the producer go to sleep (if it finds the queue full at once,
    // nothing changes: the recv below is what must wake it).
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(rx.recv(), Some(0));
    assert!(
        done_rx.recv_timeout(Duration::from_secs(5)).is_ok(),
        "the blocked send did not complete after one recv"
    );
    let _tx = t.join().unwrap();
    for i in 1..=cap {
        assert_eq!(rx.recv(), Some(i));
    }
}

macro_rules! transport_tests {
    ($($m:ident: $t:ty),*) => {$(
        mod $m {
            use super::*;
            #[test] fn stress_polling_keeps_fifo() { stress_polling::<$t>() }
            #[test] fn stress_batches_keep_fifo() { stress_batches::<$t>() }
            #[test] fn stress_waiting_keeps_fifo() { stress_waiting::<$t>() }
            #[test] fn disconnection_is_observable_and_loses_nothing() { disconnection::<$t>() }
            #[test] fn waiting_receive_times_out_and_wakes() { waiting_with_timeout::<$t>() }
            #[test] fn a_blocked_send_gets_room_from_one_recv() { super::a_blocked_send_gets_room_from_one_recv::<$t>() }
        }
    )*};
}

transport_tests!(fastforward: FastForward, lamport: Lamport, onesided: Onesided);

/// Lamport publishes only at `publish`, so it has no per-message use.
mod per_message {
    use super::*;
    #[test]
    fn fastforward_keeps_fifo_without_publish_or_sync() {
        stress_per_message::<FastForward>()
    }
    #[test]
    fn onesided_keeps_fifo_without_publish_or_sync() {
        stress_per_message::<Onesided>()
    }
}
