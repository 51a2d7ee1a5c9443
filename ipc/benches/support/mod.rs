//! The ipc benchmarks' peers: Unix domain sockets here, iceoryx2 in
//! [`iox`]. The generic machinery (pinning, helper processes, the floor, the
//! summary) is the `benchutil` crate.

pub mod iox;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use benchutil::{Helper, core_pair, pin, unique};

/// 16-byte echo over a Unix stream socket between two pinned processes.
pub fn uds_round_trips(iters: u64) -> Duration {
    let path = format!("/tmp/{}.sock", unique("ipc-bench-uds"));
    let (c0, c1) = core_pair();
    let helper = Helper::start("uds", &[path.clone(), c1.to_string()]);
    pin(c0);
    let mut s = UnixStream::connect(&path).expect("connect uds peer");
    let mut buf = [0u8; 16];
    let mut trip = |i: u64| {
        buf[..8].copy_from_slice(&i.to_le_bytes());
        s.write_all(&buf).unwrap();
        s.read_exact(&mut buf).unwrap();
        assert_eq!(u64::from_le_bytes(buf[..8].try_into().unwrap()), i + 1);
    };
    for i in 0..100 {
        trip(i);
    }
    let t0 = Instant::now();
    for i in 0..iters {
        trip(i);
    }
    let d = t0.elapsed();
    drop(s);
    helper.finish();
    let _ = std::fs::remove_file(&path);
    d
}

/// Role body of `uds`: echo `x + 1` for each 16-byte message until EOF.
pub fn uds_role(args: &[String]) {
    let _ = std::fs::remove_file(&args[0]);
    let listener = UnixListener::bind(&args[0]).expect("bind uds");
    pin(args[1].parse().unwrap());
    println!("ready");
    let (mut s, _) = listener.accept().expect("accept");
    let mut buf = [0u8; 16];
    while s.read_exact(&mut buf).is_ok() {
        let x = u64::from_le_bytes(buf[..8].try_into().unwrap()) + 1;
        buf[..8].copy_from_slice(&x.to_le_bytes());
        if s.write_all(&buf).is_err() {
            break;
        }
    }
}
