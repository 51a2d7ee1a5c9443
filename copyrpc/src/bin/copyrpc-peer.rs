//! `copyrpc-peer`: a copyrpc echo responder in its own process, driven over
//! stdin/stdout. The crate's cross-process tests and benchmarks spawn it.
//!
//! ```text
//! copyrpc-peer [--device SELECTION] [--endpoints N] [--ring BYTES] [--inflight N]
//!              [--max-call BYTES] [--max-reply BYTES] [--max-batch BYTES]
//! ```
//!
//! It prints `info HEX...` (one endpoint info per endpoint), reads
//! `connect HEX...` (the other side's, in the same order) and answers
//! `ok`. From then on it answers every request with the request's bytes,
//! each plus one, and calls back nothing itself. Commands on stdin:
//! `stall` (stop polling until `resume`), `resume`, `quit`. Errors are one
//! line `err <reason>` and exit status 1.

use std::io::{BufRead, Write};
use std::sync::mpsc;
use std::time::Duration;

use copyrpc::{Config, Context, EndpointInfo, Limits};

const USAGE: &str = "usage: copyrpc-peer [--device SELECTION] [--endpoints N] [--ring BYTES] \
     [--inflight N] [--max-call BYTES] [--max-reply BYTES] [--max-batch BYTES]
an echo responder driven over stdin/stdout: it prints `info HEX...`, reads
`connect HEX...`, answers `ok`, then echoes every request (each byte plus
one); commands: stall, resume, quit";

fn die(msg: impl std::fmt::Display) -> ! {
    println!("err {msg}");
    std::process::exit(1);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut sel = None;
    let mut n = 1usize;
    let mut limits = Limits::default();
    while let Some(a) = args.next() {
        let mut val = |name: &str| -> u32 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| die(format!("{name} needs a number")))
        };
        match a.as_str() {
            "--device" => sel = Some(args.next().unwrap_or_else(|| die("--device needs a value"))),
            "--endpoints" => n = val("--endpoints") as usize,
            "--ring" => limits.ring = val("--ring"),
            "--inflight" => limits.max_inflight = val("--inflight"),
            "--max-call" => limits.max_call = val("--max-call"),
            "--max-reply" => limits.max_reply = val("--max-reply"),
            "--max-batch" => limits.max_batch = val("--max-batch"),
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => die(format!("unknown argument {other:?}")),
        }
    }
    let dev = match sel {
        Some(s) => mlx5::Selection::parse(&s).and_then(mlx5::Context::open),
        None => mlx5::Context::from_env(),
    }
    .unwrap_or_else(|e| die(e));
    let cfg = Config {
        limits,
        call_timeout: None,
        ..Config::default()
    };
    let mut ctx: Context<()> = Context::new(&dev, cfg).unwrap_or_else(|e| die(e));
    let eps: Vec<_> = (0..n)
        .map(|_| ctx.endpoint().unwrap_or_else(|e| die(e)))
        .collect();
    let infos: Vec<String> = eps
        .iter()
        .map(|&ep| ctx.local_info(ep).unwrap_or_else(|e| die(e)).to_hex())
        .collect();
    println!("info {}", infos.join(" "));
    std::io::stdout().flush().ok();

    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = rx
        .recv()
        .unwrap_or_else(|_| die("stdin closed before connect"));
    let mut words = line.split_whitespace();
    if words.next() != Some("connect") {
        die("expected `connect HEX...`");
    }
    for &ep in &eps {
        let hex = words.next().unwrap_or_else(|| die("too few infos"));
        let info = EndpointInfo::from_hex(hex).unwrap_or_else(|e| die(e));
        ctx.connect(ep, &info).unwrap_or_else(|e| die(e));
    }
    println!("ok");
    std::io::stdout().flush().ok();

    let mut stalled = false;
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(cmd) => match cmd.trim() {
                "stall" => {
                    stalled = true;
                    println!("ok");
                }
                "resume" => {
                    stalled = false;
                    println!("ok");
                }
                "quit" => return,
                other => println!("err unknown command {other:?}"),
            },
            Err(mpsc::TryRecvError::Disconnected) => return,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        std::io::stdout().flush().ok();
        if stalled {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        for _ in 0..256 {
            ctx.poll(|_, _| {}).unwrap_or_else(|e| die(e));
            while let Some(req) = ctx.recv() {
                out.clear();
                out.extend(req.data().iter().map(|b| b.wrapping_add(1)));
                if let Err(e) = ctx.reply(req, &out) {
                    die(e);
                }
            }
        }
    }
}
