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
//! `DIR/call.info`, each with its writer's pid: a file left by a process
//! that is gone is not taken, and each side removes its own when it ends),
//! so a script can run both, as often as it likes:
//!
//! ```text
//! rpc_pingpong serve --dir /tmp/x & rpc_pingpong call 10000 --dir /tmp/x
//! ```
//!
//! The caller makes N calls of 32 bytes, one at a time, checks every
//! reply, prints the median round trip, and tells the server to stop. A
//! server whose caller dies without saying so, after its first call
//! arrived, exits with an error within seconds: the endpoint's keepalive
//! probe (`Config::keepalive`) finds the peer gone.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use copyrpc::{Config, Context, EndpointInfo};

const USAGE: &str =
    "usage: rpc_pingpong serve|call [N] [--dir DIR]  (N: calls, at least 1; default 10000)";

/// Bad command line: the usage, exit status 2.
struct Usage(String);

/// Gets the other side's endpoint info: from stdin, or from `DIR/ROLE.info`
/// (each file holds its writer's pid and info; a file whose writer is gone,
/// left by an earlier run, is not taken).
fn exchange(mine: &EndpointInfo, role: &str, dir: Option<&Path>) -> Result<EndpointInfo, String> {
    let other = if role == "serve" { "call" } else { "serve" };
    let Some(d) = dir else {
        println!("{}", mine.to_hex());
        eprintln!("paste the other side's info line:");
        let mut line = String::new();
        let n = std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("reading stdin: {e}"))?;
        if n == 0 {
            return Err("stdin ended before the other side's info line".into());
        }
        return EndpointInfo::from_hex(line.trim())
            .map_err(|e| format!("not the other side's info line ({e}): {:?}", line.trim()));
    };
    std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    let tmp = d.join(format!("{role}.tmp"));
    let text = format!("{} {}", std::process::id(), mine.to_hex());
    std::fs::write(&tmp, text).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    let published = d.join(format!("{role}.info"));
    std::fs::rename(&tmp, &published)
        .map_err(|e| format!("publishing {}: {e}", published.display()))?;
    let theirs = d.join(format!("{other}.info"));
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(&theirs)
            && let Some((pid, hex)) = s.trim().split_once(' ')
            && Path::new("/proc").join(pid).exists()
        {
            return EndpointInfo::from_hex(hex)
                .map_err(|e| format!("{} is not an info file ({e})", theirs.display()));
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "no {} from a live process within 60 s (is the other side running?)",
                theirs.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("rpc_pingpong: error: {e}");
            ExitCode::FAILURE
        }
        Err(Usage(why)) => {
            eprintln!("rpc_pingpong: {why}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// The command line, then the run.
fn run() -> Result<Result<(), String>, Usage> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut dir = None;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--dir" {
            let d = it
                .next()
                .ok_or_else(|| Usage("--dir needs a path".into()))?;
            dir = Some(PathBuf::from(d));
        } else {
            rest.push(a.as_str());
        }
    }
    let (role, n) = match rest[..] {
        ["serve"] => ("serve", 0),
        ["call"] => ("call", 10_000),
        ["call", n] => match n.parse::<u64>() {
            Ok(n) if n > 0 => ("call", n),
            _ => {
                return Err(Usage(format!(
                    "N must be a number of calls, at least 1: {n:?}"
                )));
            }
        },
        [] => return Err(Usage("say serve or call".into())),
        _ => return Err(Usage(format!("unexpected arguments {rest:?}"))),
    };
    let r = session(role, n, dir.as_deref());
    if let Some(d) = &dir {
        // This side's info is of no use once it is gone.
        let _ = std::fs::remove_file(d.join(format!("{role}.info")));
    }
    Ok(r)
}

fn session(role: &str, n: u64, dir: Option<&Path>) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let dev = mlx5::Context::from_env().map_err(|x| e(&x))?;
    let mut ctx: Context<u64> = Context::new(&dev, Config::default()).map_err(|x| e(&x))?;
    let ep = ctx.endpoint().map_err(|x| e(&x))?;
    let theirs = exchange(&ctx.local_info(ep).map_err(|x| e(&x))?, role, dir)?;
    ctx.connect(ep, &theirs).map_err(|x| e(&x))?;

    if role == "serve" {
        eprintln!("serving on {}", dev.name());
        let mut first = true;
        loop {
            ctx.poll(|_, _| {}).map_err(|x| e(&x))?;
            // A caller that died without its "stop" shows up here, through
            // the endpoint's keepalive probe (`Config::keepalive`).
            if let Some(err) = ctx.endpoint_error(ep) {
                return Err(format!("the caller is gone: {err}"));
            }
            while let Some(req) = ctx.recv() {
                if first {
                    first = false;
                    eprintln!("the caller's first call arrived");
                }
                if req.data() == b"stop" {
                    ctx.reply(req, b"bye").map_err(|x| e(&x))?;
                    // Let the reply leave before the process exits.
                    for _ in 0..1000 {
                        ctx.poll(|_, _| {}).map_err(|x| e(&x))?;
                    }
                    eprintln!("stopped by the caller");
                    return Ok(());
                }
                let out: Vec<u8> = req.data().iter().rev().copied().collect();
                ctx.reply(req, &out).map_err(|x| e(&x))?;
            }
        }
    }

    let mut times = Vec::with_capacity(n.min(1 << 24) as usize);
    let mut msg = [0u8; 32];
    for i in 0..n {
        msg[..8].copy_from_slice(&i.to_le_bytes());
        let t = Instant::now();
        ctx.call(ep, &msg, i).map_err(|x| e(&x.kind))?;
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
            })
            .map_err(|x| e(&x))?;
            if let Some(f) = failed {
                return Err(f);
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
    ctx.call(ep, b"stop", u64::MAX).map_err(|x| e(&x.kind))?;
    let mut stopped = false;
    while !stopped {
        ctx.poll(|_, r| stopped = r.is_ok_and(|d| d == b"bye"))
            .map_err(|x| e(&x))?;
    }
    Ok(())
}
