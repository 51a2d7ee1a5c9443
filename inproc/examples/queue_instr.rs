//! The instructions one message costs each transport, for callgrind: N
//! messages of 8 bytes sent and received on one thread (every `try_send`
//! and `try_recv`, with Lamport's `publish` and `sync` per message as in
//! ping-pong, runs inside a `measured_*` function), so callgrind with
//! `--toggle-collect='*measured_*'` counts the queue's own work, both ends.
//!
//! ```text
//! cargo run --release -p inproc --example queue_instr -- N onesided|fastforward|lamport
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured_*' \
//!     target/release/examples/queue_instr 20000 onesided
//! ```
//!
//! `scripts/callgrind.sh` runs it at two N and takes the difference, so
//! fixed costs (the queue's allocation) cancel. One thread means every
//! line is already in this core's cache: the count is instructions, not
//! the cache-line transfers a two-core round trip adds.

use std::hint::black_box;
use std::process::ExitCode;

use inproc::{FastForward, Lamport, Onesided, Receiver, Sender, Transport};

/// Capacity of the queue: more than any N the script uses would wrap a
/// smaller ring several times, which is the steady state being counted.
const CAPACITY: usize = 1024;

#[inline(never)]
fn measured_send<S: Sender<u64>>(tx: &mut S, v: u64) {
    if tx.try_send(black_box(v)).is_err() {
        panic!("queue full with one message in flight");
    }
    tx.publish();
}

#[inline(never)]
fn measured_recv<R: Receiver<u64>>(rx: &mut R) -> u64 {
    let v = rx.try_recv().expect("the message just sent");
    rx.sync();
    v
}

fn run<T: Transport>(n: u64) {
    let (mut tx, mut rx) = T::channel::<u64>(CAPACITY);
    for i in 0..n {
        measured_send(&mut tx, i);
        let v = measured_recv(&mut rx);
        assert_eq!(v, i, "{}: out of order", T::NAME);
    }
    println!("instr: {} x{n}: every message came back in order", T::NAME);
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n = args.first().and_then(|a| a.parse::<u64>().ok());
    match (n, args.get(1).map(String::as_str)) {
        (Some(n), Some(Onesided::NAME)) => run::<Onesided>(n),
        (Some(n), Some(FastForward::NAME)) => run::<FastForward>(n),
        (Some(n), Some(Lamport::NAME)) => run::<Lamport>(n),
        _ => {
            eprintln!("usage: queue_instr N onesided|fastforward|lamport");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
