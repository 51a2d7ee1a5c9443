//! `ipc-peer`: a small command-line server and client over `[u64; 4]`
//! messages, used by the crate's cross-process tests and benchmarks and
//! handy for checking a host by hand.
//!
//! ```text
//! ipc-peer serve NAME [--max-clients N] [--depth D] [--wait busy|block] [--for-ms MS] [--stall] [--reverse] [--pair]
//! ipc-peer call  NAME [--calls N] [--depth D] [--wait busy|block] [--forever]
//! ipc-peer scribble NAME [--for-ms MS]
//! ipc-peer attack NAME truncate|header|squat|others
//! ipc-peer probe ADDRESS HEX
//! ```
//!
//! The server answers `[a, b, c, _]` with `[a, b, 3c + 1, server pid]`.
//! `--stall` takes requests and never answers; `--reverse` holds a client's
//! requests until it has sent a full ring and answers them newest first;
//! `--pair` serves [`Pair`] requests instead, answering `{a, b, c}` with
//! `{a + 1, 2b, c ^ 1}` (for the message-layout tests).
//! `call` checks every response against its request and prints `ok N`.
//! `scribble` attaches, then writes random bytes over its own region, then
//! calls once and prints the outcome (`after: ...`).
//! `attack` attaches, then tries to reach beyond its own region (see
//! `attack.rs`) and stays attached until its stdin closes. `probe` speaks
//! raw bytes to an abstract socket address (see `attack::probe`).

mod attack;
mod rawsock;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use ipc::{AsyncClient, Client, ClientConfig, Server, ServerConfig, WaitStrategy};

type Msg = [u64; 4];

/// The struct message of `serve --pair`.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    ipc::zerocopy::FromBytes,
    ipc::zerocopy::IntoBytes,
    ipc::zerocopy::Immutable,
    ipc::Message,
)]
#[zerocopy(crate = "ipc::zerocopy")]
#[repr(C)]
struct Pair {
    a: u64,
    b: u32,
    c: u32,
}

const USAGE: &str = "usage:
  ipc-peer serve NAME [--max-clients N] [--depth D] [--wait busy|block] [--for-ms MS] [--stall] [--reverse] [--pair]
  ipc-peer call NAME [--calls N] [--depth D] [--wait busy|block] [--forever]
  ipc-peer scribble NAME [--for-ms MS]
  ipc-peer attack NAME truncate|header|squat|others
  ipc-peer probe ADDRESS HEX";

struct Args {
    cmd: String,
    name: String,
    kind: String,
    max_clients: u32,
    depth: u32,
    wait: WaitStrategy,
    for_ms: Option<u64>,
    calls: u64,
    stall: bool,
    reverse: bool,
    pair: bool,
    forever: bool,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let cmd = it.next().ok_or("missing command")?;
    if !matches!(
        cmd.as_str(),
        "serve" | "call" | "scribble" | "attack" | "probe"
    ) {
        return Err(format!("unknown command {cmd:?}"));
    }
    let name = it.next().ok_or("missing segment NAME")?;
    let kind = if cmd == "attack" {
        let k = it.next().ok_or("attack needs a KIND")?;
        if !matches!(k.as_str(), "truncate" | "header" | "squat" | "others") {
            return Err(format!("unknown attack {k:?}"));
        }
        k
    } else if cmd == "probe" {
        it.next().ok_or("probe needs HEX bytes")?
    } else {
        String::new()
    };
    let mut a = Args {
        cmd,
        name,
        kind,
        max_clients: 16,
        depth: 16,
        wait: WaitStrategy::BusyPoll,
        for_ms: None,
        calls: 1000,
        stall: false,
        reverse: false,
        pair: false,
        forever: false,
    };
    while let Some(flag) = it.next() {
        let mut value = |flag: &str| it.next().ok_or(format!("{flag} needs a value"));
        let number = |flag: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag} expects a non-negative integer, got {v:?}"))
        };
        match flag.as_str() {
            "--max-clients" => {
                a.max_clients = u32::try_from(number(&flag, value(&flag)?)?)
                    .map_err(|_| "--max-clients too large".to_string())?
            }
            "--depth" => {
                a.depth = u32::try_from(number(&flag, value(&flag)?)?)
                    .map_err(|_| "--depth too large".to_string())?
            }
            "--for-ms" => a.for_ms = Some(number(&flag, value(&flag)?)?),
            "--calls" => a.calls = number(&flag, value(&flag)?)?,
            "--wait" => {
                a.wait = match value(&flag)?.as_str() {
                    "busy" => WaitStrategy::BusyPoll,
                    "block" => WaitStrategy::blocking(),
                    other => return Err(format!("--wait expects busy or block, got {other:?}")),
                }
            }
            "--stall" => a.stall = true,
            "--reverse" => a.reverse = true,
            "--pair" => a.pair = true,
            "--forever" => a.forever = true,
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    Ok(a)
}

fn answer(req: &Msg, pid: u64) -> Msg {
    [req[0], req[1], req[2].wrapping_mul(3).wrapping_add(1), pid]
}

fn serve_pair(a: &Args) -> Result<(), String> {
    let cfg = ServerConfig::new().max_clients(a.max_clients).wait(a.wait);
    let mut server = Server::<Pair, Pair>::create(&a.name, cfg).map_err(|e| e.to_string())?;
    println!("ready");
    loop {
        if server.wait(Duration::from_millis(20)) {
            server.serve(64, |_, p| Pair {
                a: p.a + 1,
                b: p.b.wrapping_mul(2),
                c: p.c ^ 1,
            });
        }
    }
}

fn serve(a: &Args) -> Result<(), String> {
    if a.pair {
        return serve_pair(a);
    }
    let cfg = ServerConfig::new()
        .max_clients(a.max_clients)
        .ring_depth(a.depth)
        .wait(a.wait);
    let mut server = Server::<Msg, Msg>::create(&a.name, cfg).map_err(|e| e.to_string())?;
    println!("ready");
    let pid = u64::from(std::process::id());
    let deadline = a
        .for_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut held: Vec<Vec<(ipc::RequestToken, Msg)>> =
        (0..a.max_clients).map(|_| Vec::new()).collect();
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(());
        }
        if !server.wait(Duration::from_millis(20)) {
            continue;
        }
        while let Some((token, req)) = server.recv() {
            if a.stall {
                // Never answered: the client's call stays in flight.
                let _unanswered = token;
                continue;
            }
            if !a.reverse {
                // Replies to a client that just left are dropped; fine here.
                let _ = server.reply(token, answer(&req, pid));
                continue;
            }
            let c = token.client() as usize;
            held[c].push((token, req));
            if held[c].len() == a.depth as usize {
                while let Some((t, r)) = held[c].pop() {
                    let _ = server.reply(t, answer(&r, pid));
                }
            }
        }
        if a.reverse {
            // Anything held while nothing more arrives is answered too, so
            // clients with fewer calls than the depth finish.
            for list in &mut held {
                while let Some((t, r)) = list.pop() {
                    let _ = server.reply(t, answer(&r, pid));
                }
            }
        }
    }
}

fn call(a: &Args) -> Result<(), String> {
    let cfg = ClientConfig::new().wait(a.wait);
    let mut client =
        AsyncClient::<Msg, Msg, Msg>::connect(&a.name, cfg).map_err(|e| e.to_string())?;
    println!("ready {}", client.slot());
    let me = u64::from(std::process::id());
    let depth = (a.depth as usize).min(client.capacity()).max(1);
    let (mut sent, mut done) = (0u64, 0u64);
    let mut bad = None;
    while a.forever || done < a.calls {
        while client.in_flight() < depth && (a.forever || sent < a.calls) {
            let req = [me, sent, sent ^ 0x5bd1_e995, 0];
            if let Err(e) = client.call(&req, req) {
                return Err(e.to_string());
            }
            sent += 1;
        }
        done += client
            .wait(|req, resp| {
                if resp[..3] != answer(&req, 0)[..3] {
                    bad = Some((req, resp));
                }
            })
            .map_err(|e| e.to_string())? as u64;
        if let Some((req, resp)) = bad {
            return Err(format!("response {resp:?} does not answer request {req:?}"));
        }
    }
    println!("ok {done}");
    Ok(())
}

fn scribble(a: &Args) -> Result<(), String> {
    let cfg = ClientConfig::new().call_timeout(Duration::from_secs(30));
    let mut client = Client::<Msg, Msg>::connect(&a.name, cfg).map_err(|e| e.to_string())?;
    for i in 0..100u64 {
        let r = client.call(&[0, i, i, 0]).map_err(|e| e.to_string())?;
        if r[2] != i * 3 + 1 {
            return Err(format!("bad answer {r:?} before scribbling"));
        }
    }
    println!("ready {}", client.slot());
    let (base, len) = client.own_region_for_fault_injection();
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    let deadline = Instant::now() + Duration::from_millis(a.for_ms.unwrap_or(500));
    while Instant::now() < deadline {
        for off in (0..len).step_by(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // SAFETY: `off + 8 <= len` (len is a multiple of 128) and the
            // region stays mapped while `client` lives. Racing with the
            // server's reads is the point: every word of the region is
            // either an atomic or FromBytes data in the server's view.
            unsafe { base.add(off).cast::<u64>().write_volatile(x) };
        }
    }
    println!("scribbled");
    // The server should have cut us off; a call says how.
    let t0 = Instant::now();
    match client.call(&[0, 1, 1, 0]) {
        Ok(r) => println!("after: answered {r:?} in {:?}", t0.elapsed()),
        Err(e) => println!("after: {e} (in {} ms)", t0.elapsed().as_millis()),
    }
    Ok(())
}

fn attack(a: &Args) -> Result<(), String> {
    let mut client =
        Client::<Msg, Msg>::connect(&a.name, ClientConfig::new()).map_err(|e| e.to_string())?;
    for i in 0..100u64 {
        let r = client.call(&[0, i, i, 0]).map_err(|e| e.to_string())?;
        if r[2] != i * 3 + 1 {
            return Err(format!("bad answer {r:?} before attacking"));
        }
    }
    println!("ready {}", client.slot());
    let (base, len) = client.own_region_for_fault_injection();
    let kept = attack::Kept::attach(&a.name)?;
    let reach = attack::Reach::gather(&a.name, base, len, &kept);
    eprintln!("ipc-peer attack: reach: {}", reach.describe());
    let tally = reach.attack(&a.kind)?;
    // Done with the kept attach: its slot is free again.
    drop((reach, kept));
    println!("attacked {}: {tally}", a.kind);
    match client.call(&[0, 7, 7, 0]) {
        Ok(r) if r[2] == 22 => println!("after: ok"),
        Ok(r) => println!("after: wrong answer {r:?}"),
        Err(e) => println!("after: {e}"),
    }
    println!("holding");
    attack::hold();
    Ok(())
}

fn main() -> ExitCode {
    if matches!(std::env::args().nth(1).as_deref(), Some("-h" | "--help")) {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ipc-peer: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match args.cmd.as_str() {
        "serve" => serve(&args),
        "call" => call(&args),
        "attack" => attack(&args),
        "probe" => attack::probe(&args.name, &args.kind),
        _ => scribble(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipc-peer: {e}");
            ExitCode::from(1)
        }
    }
}
