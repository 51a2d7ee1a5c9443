//! A rank's clients: threads of the rank, or (`--client-procs`) processes
//! of their own, so that the ipc layer is crossed between processes as in
//! a real deployment. Either way the rank's main thread starts each run
//! and collects one [`ClientRun`] per client and run.
//!
//! A client process is this binary started with the hidden subcommand
//! `client-process`, its [`ClientSpec`] as JSON in `BENCHKV_CLIENT`. It
//! never initialises MPI, and dies with its rank (`PR_SET_PDEATHSIG`).
//! The rank and the process talk in lines:
//!
//! | direction | line |
//! |---|---|
//! | rank → client | `run NANOS`: start a run NANOS from now |
//! | client → rank | `progress N`: N operations completed so far |
//! | client → rank | `result JSON`: a run's [`WireRun`] |
//! | client → rank | `error TEXT`: it failed (and exits) |
//!
//! End of input ends the process.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::client::{Client, ClientRun, ClientSpec};
use crate::error::Error;
use crate::report::{hist_from_pairs, hist_pairs};
use crate::wire;

/// The environment variable that carries a client process's spec.
pub const SPEC_VAR: &str = "BENCHKV_CLIENT";

/// How a failure is reported to the rank.
pub type OnFailure = Arc<dyn Fn(Error) + Send + Sync>;

/// A run as a client process reports it.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireRun {
    ops: u64,
    hist: Vec<(u64, u64)>,
    mismatches: u64,
    bad_status: u64,
    examples: Vec<String>,
}

impl From<&ClientRun> for WireRun {
    fn from(r: &ClientRun) -> WireRun {
        WireRun {
            ops: r.ops,
            hist: hist_pairs(&r.hist),
            mismatches: r.mismatches,
            bad_status: r.bad_status,
            examples: r.examples.clone(),
        }
    }
}

impl From<WireRun> for ClientRun {
    fn from(w: WireRun) -> ClientRun {
        ClientRun {
            ops: w.ops,
            hist: hist_from_pairs(&w.hist),
            mismatches: w.mismatches,
            bad_status: w.bad_status,
            examples: w.examples,
        }
    }
}

enum Worker {
    Thread {
        start: Sender<Instant>,
        handle: JoinHandle<()>,
    },
    Process {
        child: Child,
        stdin: ChildStdin,
        reader: JoinHandle<()>,
    },
}

/// The clients of a rank.
pub struct Clients {
    workers: Vec<Worker>,
    rank: u32,
    /// Set before the rank closes the processes' input: their end is then
    /// expected, not a failure.
    finishing: Arc<AtomicBool>,
}

impl Clients {
    /// Starts one client per spec, threads or processes; each result goes
    /// to `results` with the client's index.
    pub fn start<const N: usize>(
        specs: Vec<ClientSpec>,
        processes: bool,
        progress: Arc<AtomicU64>,
        abort: Arc<AtomicBool>,
        on_failure: OnFailure,
        results: Sender<(u32, ClientRun)>,
    ) -> Result<Clients, Error> {
        let rank = specs.first().map_or(0, |s| s.rank);
        let finishing = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for spec in specs {
            let w = if processes {
                start_process(spec, &progress, &on_failure, &results, &finishing)?
            } else {
                start_thread::<N>(spec, &progress, &abort, &on_failure, &results)?
            };
            workers.push(w);
        }
        Ok(Clients {
            workers,
            rank,
            finishing,
        })
    }

    /// Starts a run on every client at `start`.
    pub fn run(&mut self, start: Instant) -> Result<(), Error> {
        let gone = |i: usize| Error::Aborted {
            rank: self.rank,
            reason: format!("client {i} ended early"),
        };
        for (i, w) in self.workers.iter_mut().enumerate() {
            match w {
                Worker::Thread { start: tx, .. } => tx.send(start).map_err(|_| gone(i))?,
                Worker::Process { stdin, .. } => {
                    let nanos = start.saturating_duration_since(Instant::now()).as_nanos();
                    stdin
                        .write_all(format!("run {nanos}\n").as_bytes())
                        .and_then(|()| stdin.flush())
                        .map_err(|_| gone(i))?;
                }
            }
        }
        Ok(())
    }

    /// Ends every client (after its last run) and waits for it.
    pub fn finish(self) {
        // Release, paired with the reader's Acquire after EOF: the store
        // comes before this thread closes the children's input, which is
        // what makes them exit and their output end. The memory model has
        // no edge through a pipe; the close and the read are system calls,
        // full barriers on every platform Linux runs on, which is what the
        // reader actually relies on to see `true` after such an EOF.
        self.finishing.store(true, Ordering::Release);
        for w in self.workers {
            match w {
                Worker::Thread { start, handle } => {
                    drop(start);
                    let _ = handle.join();
                }
                Worker::Process {
                    mut child,
                    stdin,
                    reader,
                } => {
                    drop(stdin);
                    let _ = child.wait();
                    let _ = reader.join();
                }
            }
        }
    }
}

fn spawn_thread(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|source| Error::Spawn { what: name, source })
}

fn start_thread<const N: usize>(
    spec: ClientSpec,
    progress: &Arc<AtomicU64>,
    abort: &Arc<AtomicBool>,
    on_failure: &OnFailure,
    results: &Sender<(u32, ClientRun)>,
) -> Result<Worker, Error> {
    let (tx, rx) = mpsc::channel::<Instant>();
    let (progress, abort, fail, results) = (
        progress.clone(),
        abort.clone(),
        on_failure.clone(),
        results.clone(),
    );
    let index = spec.index;
    let handle = spawn_thread(format!("benchkv-c{index}"), move || {
        let mut client = match Client::<N>::connect(spec, progress, abort) {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        for start in rx {
            match client.run(start) {
                Ok(r) => {
                    if results.send((index, r)).is_err() {
                        return;
                    }
                }
                Err(e) => return fail(e),
            }
        }
    })?;
    Ok(Worker::Thread { start: tx, handle })
}

fn start_process(
    spec: ClientSpec,
    progress: &Arc<AtomicU64>,
    on_failure: &OnFailure,
    results: &Sender<(u32, ClientRun)>,
    finishing: &Arc<AtomicBool>,
) -> Result<Worker, Error> {
    let (rank, index) = (spec.rank, spec.index);
    let exe = std::env::current_exe().map_err(|source| Error::Spawn {
        what: format!("client process {index} (locating benchkv)"),
        source,
    })?;
    let mut child = Command::new(exe)
        .arg("client-process")
        .env(
            SPEC_VAR,
            serde_json::to_string(&spec).expect("a spec serialises"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| Error::Spawn {
            what: format!("client process {index}"),
            source,
        })?;
    let stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let (progress, fail, results, finishing) = (
        progress.clone(),
        on_failure.clone(),
        results.clone(),
        finishing.clone(),
    );
    let reader = spawn_thread(format!("benchkv-c{index}-reader"), move || {
        let died = |why: String| Error::Aborted {
            rank,
            reason: format!("client process {index}: {why}"),
        };
        let mut seen = 0u64;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let (word, rest) = line.split_once(' ').unwrap_or((&line, ""));
            match word {
                "progress" => {
                    if let Ok(n) = rest.parse::<u64>() {
                        // Relaxed: a counter for the progress line only.
                        progress.fetch_add(n.saturating_sub(seen), Ordering::Relaxed);
                        seen = n;
                    }
                }
                "result" => match serde_json::from_str::<WireRun>(rest) {
                    Ok(w) => {
                        seen = 0;
                        if results.send((index, w.into())).is_err() {
                            return;
                        }
                    }
                    Err(e) => return fail(died(format!("unreadable result: {e}"))),
                },
                "error" => return fail(died(rest.to_string())),
                _ => return fail(died(format!("unexpected line {line:?}"))),
            }
        }
        // End of output without an error line: after the rank closed its
        // input that is the normal end; before, it died.
        // Acquire: pairs with `finish`'s Release (see there).
        if !finishing.load(Ordering::Acquire) {
            fail(died("exited without a word (killed?)".into()));
        }
    })?;
    Ok(Worker::Process {
        child,
        stdin,
        reader,
    })
}

/// The main of a client process: runs until its input ends. Returns the
/// exit status.
pub fn process_main() -> i32 {
    let say = |line: String| {
        let mut out = std::io::stdout().lock();
        // The rank sees a broken pipe as the end of this process anyway.
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    };
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let spec: ClientSpec = match std::env::var(SPEC_VAR)
        .map_err(|e| e.to_string())
        .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            say(format!(
                "error no usable client spec in {SPEC_VAR} (client-process is started by benchkv itself): {e}\n"
            ));
            return 2;
        }
    };
    let r = match wire::class_of(spec.params.value_size) {
        8 => serve::<8>(spec, &say),
        64 => serve::<64>(spec, &say),
        512 => serve::<512>(spec, &say),
        _ => serve::<4096>(spec, &say),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            say(format!("error {e}\n"));
            1
        }
    }
}

fn serve<const N: usize>(spec: ClientSpec, say: &dyn Fn(String)) -> Result<(), Error> {
    let progress = Arc::new(AtomicU64::new(0));
    let abort = Arc::new(AtomicBool::new(false));
    let rank = spec.rank;
    let mut client = Client::<N>::connect(spec, progress.clone(), abort)?;
    let running = Arc::new(AtomicBool::new(false));
    {
        let (progress, running) = (progress.clone(), running.clone());
        let _ = std::thread::Builder::new()
            .name("benchkv-progress".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(250));
                    // Relaxed: counters for the progress line only.
                    if running.load(Ordering::Relaxed) {
                        let n = progress.load(Ordering::Relaxed);
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(format!("progress {n}\n").as_bytes());
                        let _ = out.flush();
                    }
                }
            });
    }
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| Error::Aborted {
            rank,
            reason: format!("client process: reading its rank: {e}"),
        })?;
        let nanos: u64 = line
            .strip_prefix("run ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::Aborted {
                rank,
                reason: format!("client process: unexpected command {line:?}"),
            })?;
        let start = Instant::now() + Duration::from_nanos(nanos);
        // Relaxed: a progress counter and a flag; results travel by the
        // pipe, not through these.
        progress.store(0, Ordering::Relaxed);
        running.store(true, Ordering::Relaxed);
        let r = client.run(start);
        running.store(false, Ordering::Relaxed);
        let r = r?;
        let json = serde_json::to_string(&WireRun::from(&r)).expect("a run serialises");
        say(format!("result {json}\n"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::histogram;

    #[test]
    fn a_run_survives_the_pipe() {
        let mut hist = histogram();
        hist.record_n(1500, 7).unwrap();
        hist.record(90_000).unwrap();
        let r = ClientRun {
            ops: 8,
            hist,
            mismatches: 1,
            bad_status: 0,
            examples: vec!["GET of key 3 returned writer 1 version 2".into()],
        };
        let line = serde_json::to_string(&WireRun::from(&r)).unwrap();
        assert!(!line.contains('\n'), "one line");
        let back: ClientRun = serde_json::from_str::<WireRun>(&line).unwrap().into();
        assert_eq!(back.ops, 8);
        assert_eq!(back.hist.len(), 8);
        assert_eq!(
            back.hist.value_at_quantile(0.5),
            r.hist.value_at_quantile(0.5)
        );
        assert_eq!(back.mismatches, 1);
        assert_eq!(back.examples, r.examples);
    }
}
