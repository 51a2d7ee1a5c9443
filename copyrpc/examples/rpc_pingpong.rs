//! Two processes calling each other over copyrpc.
//!
//! In two terminals (the software devices link them over shared memory,
//! the default on one host;
//! on a NIC set `MLX5_DEVICE=mlx5_0` and run them on two hosts):
//!
//! ```text
//! MLX5_DEVICE=soft:manual cargo run --release -p copyrpc --example rpc_pingpong -- serve
//! MLX5_DEVICE=soft:manual cargo run --release -p copyrpc --example rpc_pingpong -- call 100000
//! ```
//!
//! (`soft:manual`: each process's one thread steps its software device in
//! `poll`. With background progress each process adds a progress thread,
//! and on a 2-core machine four busy threads share two cores.)
//!
//! Each prints its endpoint info as one hex line and waits for the other's
//! on stdin: paste each line into the other terminal. With `--dir DIR`
//! they exchange it through files in DIR instead (`DIR/serve.info`,
//! `DIR/call.info`), so a script can run both:
//!
//! ```text
//! rpc_pingpong serve --dir /tmp/x & rpc_pingpong call 10000 --dir /tmp/x
//! ```
//!
//! The caller makes N calls of 32 bytes, one at a time, checks every
//! reply, prints the median round trip, and tells the server to stop.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use copyrpc::{Config, Context, EndpointInfo};

fn exchange(mine: &EndpointInfo, role: &str, dir: Option<&PathBuf>) -> EndpointInfo {
    let other = if role == "serve" { "call" } else { "serve" };
    match dir {
        None => {
            println!("{}", mine.to_hex());
            eprintln!("paste the other side's info line:");
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .expect("read stdin");
            EndpointInfo::from_hex(&line).expect("an info line from the other side")
        }
        Some(d) => {
            std::fs::create_dir_all(d).expect("create the exchange directory");
            let tmp = d.join(format!("{role}.tmp"));
            std::fs::write(&tmp, mine.to_hex()).expect("write info");
            std::fs::rename(&tmp, d.join(format!("{role}.info"))).expect("publish info");
            let theirs = d.join(format!("{other}.info"));
            let start = Instant::now();
            loop {
                if let Ok(s) = std::fs::read_to_string(&theirs) {
                    return EndpointInfo::from_hex(&s).expect("the other side's info");
                }
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "no {} within 60 s",
                    theirs.display()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args
        .iter()
        .position(|a| a == "--dir")
        .map(|i| PathBuf::from(args.get(i + 1).expect("--dir needs a path")));
    let role = args.first().map(String::as_str).unwrap_or("");
    if role != "serve" && role != "call" {
        eprintln!("usage: rpc_pingpong serve|call [N] [--dir DIR]");
        std::process::exit(2);
    }
    let n: u64 = match args.get(1) {
        Some(s) if role == "call" && s != "--dir" => s.parse()?,
        _ => 10_000,
    };

    let dev = mlx5::Context::from_env()?;
    let mut ctx: Context<u64> = Context::new(&dev, Config::default())?;
    let ep = ctx.endpoint()?;
    let theirs = exchange(&ctx.local_info(ep)?, role, dir.as_ref());
    ctx.connect(ep, &theirs)?;

    if role == "serve" {
        eprintln!("serving on {}", dev.name());
        loop {
            ctx.poll(|_, _| {})?;
            while let Some(req) = ctx.recv() {
                if req.data() == b"stop" {
                    ctx.reply(req, b"bye")?;
                    // Let the reply leave before the process exits.
                    for _ in 0..1000 {
                        ctx.poll(|_, _| {})?;
                    }
                    eprintln!("stopped by the caller");
                    return Ok(());
                }
                let out: Vec<u8> = req.data().iter().rev().copied().collect();
                ctx.reply(req, &out)?;
            }
        }
    }

    let mut times = Vec::with_capacity(n as usize);
    let mut msg = [0u8; 32];
    for i in 0..n {
        msg[..8].copy_from_slice(&i.to_le_bytes());
        let t = Instant::now();
        ctx.call(ep, &msg, i).map_err(|e| e.kind)?;
        let mut done = false;
        while !done {
            let mut failed = None;
            ctx.poll(|u, r| {
                match r {
                    Ok(d) if u == i && d.iter().rev().eq(msg.iter()) => {}
                    Ok(_) => failed = Some(format!("reply {u} is wrong")),
                    Err(e) => failed = Some(e.to_string()),
                }
                done = true;
            })?;
            if let Some(f) = failed {
                return Err(f.into());
            }
        }
        times.push(t.elapsed());
    }
    times.sort_unstable();
    println!(
        "{n} calls of 32 bytes on {}: median round trip {:?}, p99 {:?}",
        dev.name(),
        times[times.len() / 2],
        times[times.len() * 99 / 100]
    );
    ctx.call(ep, b"stop", u64::MAX).map_err(|e| e.kind)?;
    let mut stopped = false;
    while !stopped {
        ctx.poll(|_, r| stopped = r.is_ok_and(|d| d == b"bye"))?;
    }
    Ok(())
}
