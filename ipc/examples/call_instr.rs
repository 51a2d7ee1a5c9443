//! The instructions one ipc call costs, for callgrind: N calls of a
//! 16-byte request and response between an `AsyncClient` and a `Server` on
//! one thread. The client's `call` and `poll` and the server's `serve` run
//! inside `measured_*` functions, so callgrind with
//! `--toggle-collect='*measured_*'` counts the client's and the server's
//! work per call (slot protocol, validation, the active-client scan).
//!
//! ```text
//! cargo run --release -p ipc --example call_instr -- N
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured_*' \
//!     target/release/examples/call_instr 20000
//! ```
//!
//! `scripts/callgrind.sh` runs it at two N and takes the difference, so
//! fixed costs (creating the segment, connecting) cancel. One thread means
//! every line is already in this core's cache: the count is instructions,
//! not the cache-line transfers a two-process round trip adds.

use std::hint::black_box;
use std::process::ExitCode;

use ipc::{AsyncClient, ClientConfig, Server, ServerConfig};

type Msg = [u64; 2];

#[inline(never)]
fn measured_call(c: &mut AsyncClient<Msg, Msg, u64>, i: u64) {
    c.call(black_box(&[1, i]), i)
        .map_err(|e| e.to_string())
        .expect("a free call id with one call in flight");
}

#[inline(never)]
fn measured_serve(s: &mut Server<Msg, Msg>) -> usize {
    s.serve(64, |_, req| [req[0], req[1] + 1]).handled
}

#[inline(never)]
fn measured_poll(c: &mut AsyncClient<Msg, Msg, u64>, got: &mut u64) -> usize {
    c.poll(|id, resp| {
        assert_eq!(resp[1], id + 1, "the reply of call {id}");
        *got += 1;
    })
    .expect("server alive")
}

fn main() -> ExitCode {
    let Some(n) = std::env::args().nth(1).and_then(|a| a.parse::<u64>().ok()) else {
        eprintln!("usage: call_instr N");
        return ExitCode::from(2);
    };
    let name = format!("ipc-call-instr-{}", std::process::id());
    let cfg = ServerConfig::new().max_clients(1).ring_depth(4);
    let mut server = Server::<Msg, Msg>::create(&name, cfg).expect("create the server");
    // Connecting waits for the server's answer: connect from another
    // thread while this one lets the server look at its connections.
    let mut client = std::thread::scope(|s| {
        let h = s.spawn(|| AsyncClient::<Msg, Msg, u64>::connect(&name, ClientConfig::new()));
        while !h.is_finished() {
            server.refresh();
        }
        h.join().expect("connect thread").expect("connect")
    });
    let mut got = 0;
    for i in 0..n {
        measured_call(&mut client, i);
        assert_eq!(
            measured_serve(&mut server),
            1,
            "call {i} reached the server"
        );
        assert_eq!(
            measured_poll(&mut client, &mut got),
            1,
            "reply {i} came back"
        );
    }
    assert_eq!(got, n);
    println!("call_instr: {n} calls answered");
    ExitCode::SUCCESS
}
