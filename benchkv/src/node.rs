//! One rank of a run, from its main thread: daemons and their network set
//! up (addresses exchanged over MPI), clients started, runs timed between
//! barriers, a shutdown in two steps, results gathered to rank 0.
//!
//! Shutting down: when every client of every rank is done (a barrier),
//! daemons are told to *quiesce* (peers going away is no longer an error),
//! and only when every daemon of every rank has (a second barrier) are
//! they stopped and their networks closed, so no daemon ever sees a peer
//! close while it still counts on it.
//!
//! Failures: a daemon or client that fails records its error and raises
//! the abort flags; the main thread notices at its next check (it checks
//! while it waits, barriers included) and returns the first error. The
//! caller then exits without finalising MPI, and `mpirun` ends the other
//! ranks; those that notice first (a peer's endpoint failing) report it
//! themselves.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use inproc::flux::{self, FluxConfig};

use crate::client::{ClientRun, ClientSpec, STALL, histogram};
use crate::clients::{Clients, OnFailure};
use crate::daemon::{Control, Daemon, DaemonCounts, Flux};
use crate::error::Error;
use crate::ipc_link::{Front, Token, segment_name};
use crate::machine;
use crate::mpi_boot::Mpi;
use crate::net::copyrpc::CopyrpcNet;
use crate::net::ucx::UcxNet;
use crate::net::{Bootstrap, NetError, NetSetup, Network};
use crate::params::{self, Backend, Params};
use crate::progress::Progress;
use crate::report::{Metadata, RankReport, RankRun, Report, hist_pairs};
use crate::route::{KeySpace, Routing};
use crate::wire::{self, KvReq, KvResp};

/// Longest wait for the other ranks at a setup or shutdown barrier.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Calls one daemon keeps in flight towards one remote daemon.
const NET_INFLIGHT: u32 = 256;

/// The first failure of any thread of this rank, and the flags that stop
/// the others.
struct Failures {
    first: Mutex<Option<Error>>,
    control: Arc<Control>,
    clients_abort: Arc<AtomicBool>,
    rank: u32,
}

impl Failures {
    fn fail(&self, e: Error) {
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(e);
        }
        // Relaxed: the error itself travels through the mutex.
        self.control.abort.store(true, Ordering::Relaxed);
        self.clients_abort.store(true, Ordering::Relaxed);
    }

    /// The first failure, if any thread failed.
    fn check(&self) -> Result<(), Error> {
        // Relaxed: a flag; the failure itself is read under its lock.
        if !self.control.abort.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        Err(first.take().unwrap_or_else(|| Error::Aborted {
            rank: self.rank,
            reason: "a thread failed".into(),
        }))
    }
}

/// Runs `params` on this rank; rank 0 gets the report.
pub fn run(mpi: &Mpi, params: &Params) -> Result<Option<Report>, Error> {
    params.check(mpi.size() as usize)?;
    match wire::class_of(params.value_size) {
        8 => run_class::<8>(mpi, params),
        64 => run_class::<64>(mpi, params),
        512 => run_class::<512>(mpi, params),
        _ => run_class::<4096>(mpi, params),
    }
}

/// What a daemon thread needs to start.
struct DaemonStart<const N: usize> {
    index: u32,
    rank: u32,
    routing: Routing,
    params: Params,
    clients: usize,
    segment: String,
    flux: Flux<N>,
    control: Arc<Control>,
    failures: Arc<Failures>,
    blob_tx: Sender<(u32, Vec<u8>)>,
    blobs_rx: Receiver<Arc<Vec<Vec<u8>>>>,
    ready_tx: Sender<(u32, String)>,
}

fn daemon_thread<const N: usize>(s: DaemonStart<N>) -> Option<DaemonCounts> {
    let failures = s.failures.clone();
    // The main thread takes a closed setup channel for a thread that ended
    // without answering and looks for its recorded error then: keep the
    // channels open until a failure is recorded (`serve` drops its own
    // senders when it returns, before that).
    let open = (s.blob_tx.clone(), s.ready_tx.clone());
    let r = match s.params.backend.clone() {
        Backend::Copyrpc => serve::<N, CopyrpcNet<Token>>(s, None),
        Backend::UcxAm { tls } => serve::<N, UcxNet<Token>>(s, tls),
    };
    let r = r.map_err(|e| failures.fail(e)).ok();
    drop(open);
    r
}

fn serve<const N: usize, Net: Bootstrap + Network<Token>>(
    s: DaemonStart<N>,
    ucx_tls: Option<String>,
) -> Result<DaemonCounts, Error> {
    let (rank, index) = (s.rank, s.index);
    let net_err = |e: NetError| Error::Net {
        rank,
        daemon: index,
        backend: Net::NAME,
        reason: e.0,
    };
    let gone = || Error::Aborted {
        rank,
        reason: format!("daemon {index}: the main thread went away during setup"),
    };
    let front =
        Front::<N>::create(&s.segment, s.clients, s.params.depth).map_err(|source| Error::Ipc {
            rank,
            who: format!("daemon {index}"),
            source,
        })?;
    let setup = NetSetup {
        routing: s.routing,
        rank,
        daemon: index,
        value_size: s.params.value_size,
        max_inflight: if std::env::var(crate::daemon::FAULT_ENV).as_deref()
            == Ok(crate::daemon::FAULT_TIGHT_NETWORK)
        {
            2
        } else {
            NET_INFLIGHT
        },
        ucx_tls,
    };
    let (mut net, blob) = Net::prepare(&setup).map_err(net_err)?;
    s.blob_tx.send((index, blob)).map_err(|_| gone())?;
    let blobs = s.blobs_rx.recv().map_err(|_| gone())?;
    net.connect(&blobs).map_err(net_err)?;
    let daemon = Daemon::new(
        rank,
        index,
        s.routing,
        s.params.value_size,
        front,
        s.flux,
        net,
        s.control,
        s.params.idle_yield,
        s.params.round_costs,
    );
    s.ready_tx
        .send((index, daemon.transport()))
        .map_err(|_| gone())?;
    daemon.run()
}

fn spawn<T: Send + 'static>(
    name: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, Error> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|source| Error::Spawn { what: name, source })
}

/// Waits for `n` messages on `rx`, checking failures and a deadline.
fn collect<T>(
    rx: &Receiver<T>,
    n: usize,
    what: &str,
    timeout: Duration,
    failures: &Failures,
    mut tick: impl FnMut(),
) -> Result<Vec<T>, Error> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        failures.check()?;
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(x) => got.push(x),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                failures.check()?;
                return Err(Error::Aborted {
                    rank: failures.rank,
                    reason: format!("{what}: a thread ended without answering"),
                });
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Aborted {
                rank: failures.rank,
                reason: format!("{what}: not done within {} s", timeout.as_secs()),
            });
        }
        tick();
    }
    Ok(got)
}

fn run_class<const N: usize>(mpi: &Mpi, p: &Params) -> Result<Option<Report>, Error> {
    let (rank, ranks) = (mpi.rank(), mpi.size());
    // The idle policy: whether this rank's busy threads share cores.
    let me = machine::host();
    let here = mpi
        .all_gather_bytes(me.as_bytes())
        .iter()
        .filter(|h| h.as_slice() == me.as_bytes())
        .count();
    let per_rank = p.daemons + p.clients;
    let shared = params::shares_cores(
        here * per_rank,
        machine::cpus_online(),
        per_rank,
        machine::cpus_allowed(),
    );
    let p = &Params {
        idle_yield: p.idle_yield.resolve(shared),
        ..p.clone()
    };
    let d = p.daemons;
    let routing = Routing::new(ranks, d as u32, p.keys);
    let run_id = mpi.broadcast_u64(if rank == 0 { machine::unique_id() } else { 0 });
    let control = Arc::new(Control::default());
    let clients_abort = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Failures {
        first: Mutex::new(None),
        control: control.clone(),
        clients_abort: clients_abort.clone(),
        rank,
    });

    // Daemons, each with its ipc segment, Flux node and network.
    let per_pair = (p.clients.div_ceil(d) * p.depth).next_power_of_two();
    let by_bytes = ((1usize << 20) / size_of::<KvReq<N>>()).next_power_of_two();
    let capacity = per_pair.clamp(64, 1024).min(by_bytes.max(64));
    let nodes = flux::try_mesh::<inproc::Onesided, KvReq<N>, KvResp<N>, Token>(
        d,
        FluxConfig {
            capacity,
            max_in_flight: capacity / 2,
        },
    )
    .map_err(|e| Error::Params(format!("Flux mesh of {d} daemons: {e}")))?;
    let (blob_tx, blob_rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut blob_txs = Vec::new();
    let mut daemons = Vec::new();
    for (i, node) in nodes.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel();
        blob_txs.push(tx);
        let start = DaemonStart::<N> {
            index: i as u32,
            rank,
            routing,
            params: p.clone(),
            clients: (i..p.clients).step_by(d).count(),
            segment: segment_name(run_id, rank, i as u32),
            flux: node,
            control: control.clone(),
            failures: failures.clone(),
            blob_tx: blob_tx.clone(),
            blobs_rx: rx,
            ready_tx: ready_tx.clone(),
        };
        daemons.push(spawn(format!("benchkv-d{i}"), move || {
            daemon_thread(start)
        })?);
    }
    drop((blob_tx, ready_tx));

    // Exchange of addresses: every daemon's blob, by global daemon id.
    let mut blobs = collect(&blob_rx, d, "daemon setup", SETUP_TIMEOUT, &failures, || {})?;
    blobs.sort_by_key(|(i, _)| *i);
    let mut packed = Vec::new();
    for (_, b) in &blobs {
        packed.extend_from_slice(&(b.len() as u32).to_le_bytes());
        packed.extend_from_slice(b);
    }
    mpi.barrier("daemon setup", SETUP_TIMEOUT, || failures.check())?;
    let all = Arc::new(unpack(&mpi.all_gather_bytes(&packed), d, rank)?);
    for tx in &blob_txs {
        // A daemon that failed meanwhile shows up in the next check.
        let _ = tx.send(all.clone());
    }
    let mut transports = collect(&ready_rx, d, "connecting", SETUP_TIMEOUT, &failures, || {})?;
    transports.sort();
    let transport = transports
        .first()
        .map(|(_, t)| t.clone())
        .unwrap_or_default();
    mpi.barrier("connecting", SETUP_TIMEOUT, || failures.check())?;

    // Clients.
    let progress_ops = Arc::new(AtomicU64::new(0));
    let (result_tx, result_rx) = mpsc::channel::<(u32, ClientRun)>();
    let total_clients = u64::from(ranks) * p.clients as u64;
    let specs = (0..p.clients)
        .map(|c| {
            let global = u64::from(rank) * p.clients as u64 + c as u64;
            ClientSpec {
                rank,
                index: c as u32,
                global,
                segment: segment_name(run_id, rank, (c % d) as u32),
                params: p.clone(),
                keys: if p.verify {
                    KeySpace::owned(&routing, global, total_clients)
                } else {
                    KeySpace::all(&routing)
                },
            }
        })
        .collect();
    let on_failure: OnFailure = {
        let f = failures.clone();
        Arc::new(move |e| f.fail(e))
    };
    let mut clients = Clients::start::<N>(
        specs,
        p.client_procs,
        progress_ops.clone(),
        clients_abort.clone(),
        on_failure,
        result_tx,
    )?;

    // The runs.
    let run_timeout = p.warmup + p.duration + STALL + Duration::from_secs(30);
    let mut runs = Vec::new();
    for run in 0..p.runs {
        mpi.barrier(&format!("start of run {run}"), run_timeout, || {
            failures.check()
        })?;
        // Relaxed: a counter for the progress line only.
        progress_ops.store(0, Ordering::Relaxed);
        clients.run(Instant::now() + Duration::from_millis(2))?;
        let mut line = Progress::new(format!("run {}/{}", run + 1, p.runs), rank == 0);
        let results = collect(
            &result_rx,
            p.clients,
            &format!("run {run}"),
            run_timeout,
            &failures,
            || line.tick(progress_ops.load(Ordering::Relaxed)),
        );
        line.finish();
        runs.push(merge(results?, p.duration.as_secs_f64()));
    }

    // Shutdown: quiesce everywhere, then stop.
    mpi.barrier("end of the clients", run_timeout, || failures.check())?;
    clients.finish();
    // Relaxed: flags (see `Control`); what daemons did comes back by
    // `join`.
    control.quiesce.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + SETUP_TIMEOUT;
    while control.quiesced.load(Ordering::Relaxed) < d {
        failures.check()?;
        if Instant::now() > deadline {
            return Err(Error::Aborted {
                rank,
                reason: "daemons did not quiesce within 60 s".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    mpi.barrier("quiescing", SETUP_TIMEOUT, || failures.check())?;
    control.stop.store(true, Ordering::Relaxed);
    let mut counts = Vec::new();
    for h in daemons {
        match h.join() {
            Ok(Some(c)) => counts.push(c),
            Ok(None) => {}
            Err(_) => failures.fail(Error::Aborted {
                rank,
                reason: "a daemon thread panicked".into(),
            }),
        }
    }
    failures.check()?;

    // Results to rank 0.
    let mine = RankReport {
        rank,
        host: machine::host(),
        cpus_allowed: machine::cpus_allowed(),
        transport,
        runs,
        daemons: counts,
    };
    let bytes = serde_json::to_vec(&mine).expect("a report serialises");
    let Some(parts) = mpi.gather_bytes(&bytes) else {
        return Ok(None);
    };
    let ranks_reports: Vec<RankReport> = parts
        .iter()
        .enumerate()
        .map(|(i, b)| {
            serde_json::from_slice(b).map_err(|e| Error::Mpi(format!("rank {i}'s results: {e}")))
        })
        .collect::<Result<_, _>>()?;
    Ok(Some(Report::build(
        metadata(mpi, p, &ranks_reports),
        &ranks_reports,
    )))
}

/// One rank's run: its clients merged.
fn merge(results: Vec<(u32, ClientRun)>, seconds: f64) -> RankRun {
    let mut hist = histogram();
    let mut out = RankRun {
        ops: 0,
        seconds,
        hist: Vec::new(),
        mismatches: 0,
        bad_status: 0,
        examples: Vec::new(),
    };
    for (_, r) in results {
        out.ops += r.ops;
        hist.add(&r.hist).expect("same histogram bounds");
        out.mismatches += r.mismatches;
        out.bad_status += r.bad_status;
        out.examples.extend(r.examples);
    }
    out.hist = hist_pairs(&hist);
    out
}

/// Splits the gathered blobs (per rank: `daemons` × (u32 length, bytes))
/// into one blob per global daemon id.
fn unpack(parts: &[Vec<u8>], daemons: usize, rank: u32) -> Result<Vec<Vec<u8>>, Error> {
    let mut out = Vec::new();
    for (r, part) in parts.iter().enumerate() {
        let mut rest = &part[..];
        for i in 0..daemons {
            let bad = || {
                Error::Mpi(format!(
                    "rank {rank}: malformed address blob of rank {r} daemon {i}"
                ))
            };
            let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
            let len = u32::from_le_bytes(*len) as usize;
            if tail.len() < len {
                return Err(bad());
            }
            out.push(tail[..len].to_vec());
            rest = &tail[len..];
        }
    }
    Ok(out)
}

fn metadata(mpi: &Mpi, p: &Params, ranks: &[RankReport]) -> Metadata {
    let hosts: Vec<String> = ranks.iter().map(|r| r.host.clone()).collect();
    let per_host = hosts
        .iter()
        .map(|h| hosts.iter().filter(|x| *x == h).count())
        .max()
        .unwrap_or(1);
    let per_rank = p.daemons + p.clients;
    let busy = per_host * per_rank;
    let cores = machine::cpus_online();
    let allowed: Vec<usize> = ranks.iter().map(|r| r.cpus_allowed).collect();
    let mut notes = Vec::new();
    if busy > cores {
        notes.push(format!(
            "{busy} busy threads ({per_host} rank(s) × ({} daemons + {} clients)) on {cores} cores: threads outnumber cores",
            p.daemons, p.clients,
        ));
    }
    if let Some(min) = allowed
        .iter()
        .copied()
        .min()
        .filter(|&m| m < per_rank.min(cores))
    {
        notes.push(format!(
            "a rank may run on only {min} CPU(s) for its {per_rank} busy threads (as mpirun bound it: by default, or as asked; --bind-to none lifts that)"
        ));
    }
    // Always: the policy is part of what a figure means (rank 0's; each
    // rank decides its own, the same way).
    notes.push(p.idle_yield.describe());
    Metadata {
        cpu: machine::cpu(),
        cores,
        cpus_allowed: allowed,
        kernel: machine::kernel(),
        device_selection: std::env::var(mlx5::ENV).unwrap_or_else(|_| "auto".into()),
        backend: p.backend.to_string(),
        transport: ranks.iter().map(|r| r.transport.clone()).collect(),
        ucx_tls_env: std::env::var("UCX_TLS").ok(),
        mpi: mpi.library(),
        git: machine::git(),
        date: benchutil::summary::utc_now(),
        busy_threads_per_host: busy,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
        params: p
            .pairs()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        hosts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_unpack_by_global_daemon_id() {
        let pack = |bs: &[&[u8]]| {
            let mut v = Vec::new();
            for b in bs {
                v.extend_from_slice(&(b.len() as u32).to_le_bytes());
                v.extend_from_slice(b);
            }
            v
        };
        let parts = vec![pack(&[b"a", b""]), pack(&[b"cc", b"ddd"])];
        let all = unpack(&parts, 2, 0).unwrap();
        assert_eq!(
            all,
            vec![b"a".to_vec(), vec![], b"cc".to_vec(), b"ddd".to_vec()]
        );
        assert!(unpack(&[vec![1, 0, 0]], 1, 0).is_err(), "short length");
        assert!(unpack(&[vec![5, 0, 0, 0, 1]], 1, 0).is_err(), "short body");
    }
}
