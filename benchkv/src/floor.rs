//! Floors measured in the same run, on the same ranks, cores and device
//! as the figures they bound (DESIGN.md decision 12): an absolute figure
//! on a shared two-core host means little alone, its ratio to a floor
//! taken minutes apart means little more.
//!
//! * **Cache-line round trip** between the two cores in use: when ranks 0
//!   and 1 share a host, between the ranks themselves (a
//!   [`benchutil::Bounce`] in a `/dev/shm` file both map; rank 0's
//!   measuring thread pinned to the first core of
//!   [`benchutil::core_pair`], rank 1's to the second, or each to its own
//!   core when mpirun bound them); otherwise between two threads of rank 0
//!   ([`benchutil::floor_threads`]). No shared-memory round trip, and so no
//!   request and response between daemons on one host, can be faster.
//! * **Raw WRITE_IMM** between ranks 0 and 1 on the device `MLX5_DEVICE`
//!   selects (the copyrpc backend's device): one RC QP per rank, infos
//!   exchanged over MPI as copyrpc's are. A ping-pong (one 32-byte inline
//!   WRITE_IMM each way at a time: the device's round trip) and a
//!   pipelined rate ([`RAW_DEPTH`] WRITE_IMMs in flight, each echoed:
//!   round trips per second). A KV operation is a round trip too, so
//!   copyrpc's figures over these say what copyrpc and the KV layers add
//!   to the device.
//! * **Canary**: rank 0's short cache-line floor between two threads
//!   ([`benchutil::canary_ns`]), taken with the floors and before and after
//!   each point; a point whose canary exceeds [`SLOW_FACTOR`] times the
//!   floors' one ran in a slow phase of the host and is marked so.
//!
//! Every wait here has a deadline: a rank that dies during a floor makes
//! the others fail with an error, as in a run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use benchutil::Bounce;
use mlx5::wqe::WriteImm;
use mlx5::{Access, ConnInfo, ConnectOpts, Cq, Kind, Mr, Pd, Qp, QpCaps, Remote};
use serde::{Deserialize, Serialize};

use crate::client::histogram;
use crate::error::Error;
use crate::mpi_boot::Mpi;

/// Timed cache-line round trips (some 15 ms at 75 ns, 80 ms in a slow
/// phase).
pub const LINE_TRIPS: u64 = 200_000;
/// Untimed round trips first.
const LINE_WARM_UP: u64 = 2_000;
/// `ping` value that ends the cache-line server.
const LINE_STOP: u64 = u64::MAX;
/// Payload of each raw WRITE_IMM (a request of 8-byte values is 24 B).
pub const RAW_PAYLOAD: usize = 32;
/// Raw WRITE_IMMs in flight for the rate.
pub const RAW_DEPTH: u32 = 64;
/// How long each raw phase (ping-pong, rate) runs.
const RAW_PHASE: Duration = Duration::from_millis(300);
/// Immediate that ends the echo side.
const RAW_STOP: u32 = u32::MAX;
/// Every this many WRITE_IMMs one is signaled (send-queue space comes back
/// through it).
const RAW_SIGNAL_EVERY: u32 = 16;
/// Longest any floor waits for the other rank.
const DEADLINE: Duration = Duration::from_secs(30);
/// A canary this many times the floors' marks a point as taken in a slow
/// phase (the workspace's threshold, `benchutil::summary::SLOW_FACTOR`).
pub const SLOW_FACTOR: f64 = benchutil::summary::SLOW_FACTOR;

/// The floors of one run or sweep, as rank 0 reports them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Floors {
    /// When they were measured (`once per sweep, before the first point`,
    /// `before the run`).
    pub measured: String,
    /// Cache-line round trip, ns (mean of [`LINE_TRIPS`]).
    pub cache_line_ns: f64,
    /// Between what it was measured (ranks and cores).
    pub cache_line_between: String,
    /// Rank 0's canary at the same time, ns: the reference for the
    /// canaries of each point.
    pub canary_ns: f64,
    /// Between what the canary runs: two threads of rank 0 on two of its
    /// cores, or on its one CPU (a hand-off through the scheduler, not a
    /// cache-line round trip). Empty in reports written before it existed.
    #[serde(default)]
    pub canary_between: String,
    /// Raw WRITE_IMM between ranks 0 and 1, when both could open the
    /// device.
    pub write_imm: Option<WriteImmFloor>,
    /// Why there is no WRITE_IMM floor, when there is none.
    pub write_imm_missing: Option<String>,
}

/// Raw WRITE_IMM between ranks 0 and 1.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WriteImmFloor {
    /// Rank 0's device (`soft3`, `mlx5_0`).
    pub device: String,
    /// `MLX5_DEVICE` as set (`auto` when unset).
    pub selection: String,
    /// Bytes of each WRITE_IMM (inline).
    pub payload_bytes: usize,
    /// Ping-pong round trips timed.
    pub round_trips: u64,
    /// Median round trip, ns.
    pub round_trip_p50_ns: u64,
    /// Mean round trip, ns.
    pub round_trip_mean_ns: f64,
    /// WRITE_IMMs in flight for the rate.
    pub depth: u32,
    /// Round trips per second with `depth` in flight.
    pub round_trips_per_s: f64,
}

/// Rank 0's canary before and after one point.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Canary {
    /// Before the point, ns per round trip.
    pub before_ns: f64,
    /// After the point, ns per round trip.
    pub after_ns: f64,
    /// Either exceeds [`SLOW_FACTOR`] times the floors' canary: the point
    /// ran (at least partly) in a slow phase of the host.
    pub slow: bool,
}

impl Canary {
    /// The canary pair against the floors' reference.
    pub fn new(before_ns: f64, after_ns: f64, floors: &Floors) -> Canary {
        Canary {
            before_ns,
            after_ns,
            slow: before_ns.max(after_ns) > SLOW_FACTOR * floors.canary_ns,
        }
    }
}

/// Measures the floors on every rank (a collective: every rank calls it at
/// the same point); rank 0 gets them.
pub fn measure(mpi: &Mpi, measured: &str) -> Result<Option<Floors>, Error> {
    let canary = canary(mpi, "floor canary")?;
    let (cache_line_ns, cache_line_between) = cache_line(mpi)?;
    let raw = write_imm(mpi)?;
    Ok(canary.map(|canary_ns| {
        let (write_imm, write_imm_missing) = match raw {
            Ok(f) => (f, None),
            Err(why) => (None, Some(why)),
        };
        Floors {
            measured: measured.into(),
            cache_line_ns,
            cache_line_between,
            canary_ns,
            canary_between: canary_between(),
            write_imm,
            write_imm_missing,
        }
    }))
}

/// Between what this rank's canary runs (see [`Floors::canary_between`]).
fn canary_between() -> String {
    let (c0, c1) = benchutil::core_pair();
    if c0 == c1 {
        format!(
            "two threads of rank 0 sharing its one CPU, {c0}: a hand-off through the scheduler, \
             not a cache-line round trip"
        )
    } else {
        format!("two threads of rank 0 on cores {c0} and {c1}")
    }
}

/// Rank 0's canary (a collective; the other ranks wait, asleep, at a
/// barrier meanwhile); rank 0 gets ns per round trip.
pub fn canary(mpi: &Mpi, what: &str) -> Result<Option<f64>, Error> {
    let ns = if mpi.rank() == 0 {
        Some(on_thread("benchkv-canary", benchutil::canary_ns)?)
    } else {
        None
    };
    mpi.barrier(what, DEADLINE, || Ok(()))?;
    Ok(ns)
}

/// Runs `f` on a thread of its own, so that the pinning it does ends with
/// it (threads started later inherit the starter's affinity).
fn on_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|source| Error::Spawn {
            what: name.into(),
            source,
        })?
        .join()
        .map_err(|_| Error::Aborted {
            rank: 0,
            reason: format!("the {name} thread panicked"),
        })
}

/// The cache-line floor: ns per round trip (meaningful on rank 0) and
/// what it was measured between.
fn cache_line(mpi: &Mpi) -> Result<(f64, String), Error> {
    let rank = mpi.rank();
    let hosts = mpi.all_gather_bytes(crate::machine::host().as_bytes());
    let shared_host = hosts.len() >= 2 && hosts[0] == hosts[1];
    if !shared_host {
        let ns = if rank == 0 {
            let d = on_thread("benchkv-floor", || benchutil::floor_threads(LINE_TRIPS))?;
            d.as_nanos() as f64 / LINE_TRIPS as f64
        } else {
            0.0
        };
        mpi.barrier("cache-line floor", DEADLINE, || Ok(()))?;
        let (c0, c1) = benchutil::core_pair();
        return Ok((
            ns,
            format!(
                "two threads of rank 0 on cores {c0} and {c1} (ranks 0 and 1 are on different hosts)"
            ),
        ));
    }
    let id = mpi.broadcast_u64(if rank == 0 {
        crate::machine::unique_id()
    } else {
        0
    });
    let path = format!("/dev/shm/benchkv-floor-{id:016x}");
    let io = |op: &'static str| {
        let path = path.clone();
        move |source| Error::Io {
            op,
            path: path.into(),
            source,
        }
    };
    let map = if rank == 0 {
        Some(SharedLine::create(&path).map_err(io("creating the cache-line floor's file"))?)
    } else {
        None
    };
    mpi.barrier("cache-line floor file", DEADLINE, || Ok(()))?;
    let map = match (rank, map) {
        (1, _) => Some(SharedLine::open(&path).map_err(io("opening the cache-line floor's file"))?),
        (_, m) => m,
    };
    mpi.barrier("cache-line floor mapped", DEADLINE, || Ok(()))?;
    if rank == 0 {
        // Both sides hold their mapping: the name is no longer needed.
        let _ = std::fs::remove_file(&path);
    }
    let cpus = benchutil::allowed_cpus();
    let (c0, c1) = benchutil::core_pair();
    let core = if rank == 0 { c0 } else { c1 };
    let result = match (rank, map) {
        (0, Some(m)) => on_thread("benchkv-floor", move || {
            benchutil::pin(core);
            line_client(m.bounce(), Instant::now() + DEADLINE)
        })?
        .map(|d| d.as_nanos() as f64 / LINE_TRIPS as f64)
        .ok_or("rank 1 stopped answering the cache-line floor"),
        (1, Some(m)) => on_thread("benchkv-floor", move || {
            benchutil::pin(core);
            line_server(m.bounce(), Instant::now() + DEADLINE)
        })?
        .map(|()| 0.0)
        .ok_or("rank 0 did not end the cache-line floor"),
        _ => Ok(0.0),
    };
    let ns = result.map_err(|reason| Error::Aborted {
        rank,
        reason: reason.into(),
    })?;
    mpi.barrier("cache-line floor", DEADLINE, || Ok(()))?;
    // Each rank says where it ran (rank 1 pinned to the second CPU of its
    // own set, which need not be the second of rank 0's).
    let mine = format!(
        "{core} {}",
        if cpus.len() >= 2 { "pinned" } else { "bound" }
    );
    let between = mpi.gather_bytes(mine.as_bytes()).map(|all| {
        let words: Vec<String> = all
            .iter()
            .take(2)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        line_between(&words[0], &words[1])
    });
    Ok((ns, between.unwrap_or_default()))
}

/// What the cache-line floor between ranks 0 and 1 ran between, from
/// what each said: `"CPU pinned"` (this floor's thread pinned there) or
/// `"CPU bound"` (mpirun bound the rank to that one CPU).
fn line_between(rank0: &str, rank1: &str) -> String {
    let split = |s: &str| {
        let mut w = s.split(' ');
        (
            w.next().unwrap_or("?").to_string(),
            w.next() == Some("bound"),
        )
    };
    let ((a, a_bound), (b, b_bound)) = (split(rank0), split(rank1));
    let how = match (a_bound, b_bound) {
        (true, true) => "each on the one CPU mpirun bound it to",
        (false, false) => "each pinned there",
        _ => "one pinned, one bound there by mpirun",
    };
    if a == b {
        format!(
            "ranks 0 and 1 (processes) both on CPU {a}, {how}: a hand-off through the scheduler, not a cache-line round trip"
        )
    } else {
        format!("ranks 0 and 1 (processes) on CPUs {a} and {b}, {how}")
    }
}

/// A [`Bounce`] in a file of `/dev/shm` that both ranks map.
struct SharedLine {
    map: memmap2::MmapMut,
}

impl SharedLine {
    fn create(path: &str) -> std::io::Result<SharedLine> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        f.set_len(size_of::<Bounce>() as u64)?;
        Self::map(&f)
    }

    fn open(path: &str) -> std::io::Result<SharedLine> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Self::map(&f)
    }

    fn map(f: &std::fs::File) -> std::io::Result<SharedLine> {
        // SAFETY: the file exists only for this measurement and is at
        // least size_of::<Bounce>() bytes (rank 0 sized it before the
        // barrier rank 1 waits at); the other rank touches it only
        // through the atomics of `Bounce`.
        let map = unsafe { memmap2::MmapMut::map_mut(f) }?;
        if map.len() < size_of::<Bounce>() {
            return Err(std::io::Error::other("the floor file is too short"));
        }
        Ok(SharedLine { map })
    }

    fn bounce(&self) -> &Bounce {
        // SAFETY: the mapping is page-aligned (so 128-aligned) and at
        // least size_of::<Bounce>() bytes (checked in `map`); Bounce is
        // atomics and padding, valid for any bits (a new file is zeros);
        // it lives as long as `self.map`.
        unsafe { &*self.map.as_ptr().cast::<Bounce>() }
    }
}

/// Waits until `word` holds `want`; `false` past `deadline` (checked every
/// 64 Ki spins, so the check costs nothing measurable).
fn wait_for(word: &AtomicU64, want: u64, deadline: Instant) -> bool {
    let mut spins = 0u32;
    let mut p = benchutil::Patience::new();
    // Acquire: pairs with the other side's Release store, as in every
    // queue protocol of the workspace (and benchutil's floor).
    while word.load(Ordering::Acquire) != want {
        p.wait();
        spins = spins.wrapping_add(1);
        // Once yielding, a turn may take a time slice: look every turn.
        if (spins & 0xffff == 0 || p.yielding()) && Instant::now() > deadline {
            return false;
        }
    }
    true
}

/// Rank 0's side: [`LINE_WARM_UP`] then [`LINE_TRIPS`] timed round trips,
/// then the stop value. `None` if the other side stopped answering.
fn line_client(b: &Bounce, deadline: Instant) -> Option<Duration> {
    let trip = |i: u64| {
        // Release: the value the other side waits for (Acquire there).
        b.ping.store(i, Ordering::Release);
        wait_for(&b.pong, i, deadline)
    };
    for i in 1..=LINE_WARM_UP {
        trip(i).then_some(())?;
    }
    let t = Instant::now();
    for i in LINE_WARM_UP + 1..=LINE_WARM_UP + LINE_TRIPS {
        trip(i).then_some(())?;
    }
    let d = t.elapsed();
    // Release: as above.
    b.ping.store(LINE_STOP, Ordering::Release);
    Some(d)
}

/// Rank 1's side: echoes `ping` into `pong` until the stop value. `None`
/// past `deadline`.
fn line_server(b: &Bounce, deadline: Instant) -> Option<()> {
    let mut last = 0;
    let mut spins = 0u32;
    let mut p = benchutil::Patience::new();
    loop {
        // Acquire/Release: the pair benchutil's floor_server uses.
        let v = b.ping.load(Ordering::Acquire);
        if v != last {
            last = v;
            b.pong.store(v, Ordering::Release);
            if v == LINE_STOP {
                return Some(());
            }
            p = benchutil::Patience::new();
        }
        p.wait();
        spins = spins.wrapping_add(1);
        if (spins & 0xffff == 0 || p.yielding()) && Instant::now() > deadline {
            return None;
        }
    }
}

/// One rank's end of the raw WRITE_IMM floor: a QP with a private receive
/// queue, a buffer the peer writes into.
struct RawEnd {
    ctx: mlx5::Context,
    _pd: Pd,
    cq: Cq,
    qp: Qp,
    mr: Mr,
    sent: u32,
}

impl RawEnd {
    /// On the device `MLX5_DEVICE` selects.
    fn open() -> Result<RawEnd, String> {
        let ctx = mlx5::Context::from_env().map_err(|e| format!("opening the device: {e}"))?;
        Self::open_on(ctx)
    }

    fn open_on(ctx: mlx5::Context) -> Result<RawEnd, String> {
        let pd = Pd::new(&ctx).map_err(|e| format!("protection domain: {e}"))?;
        let caps = QpCaps {
            max_send_wr: RAW_DEPTH * 2 + 32,
            max_recv_wr: RAW_DEPTH + 1,
            ..QpCaps::default()
        };
        let cq = Cq::new(
            &ctx,
            ((caps.max_send_wr + caps.max_recv_wr) * 2).next_power_of_two(),
        )
        .map_err(|e| format!("completion queue: {e}"))?;
        let qp = Qp::builder(&pd, &cq, &cq)
            .caps(caps)
            .build()
            .map_err(|e| format!("queue pair: {e}"))?;
        let mr = pd
            .alloc_mr(4096, Access::ALL)
            .map_err(|e| format!("memory region: {e}"))?;
        Ok(RawEnd {
            ctx,
            _pd: pd,
            cq,
            qp,
            mr,
            sent: 0,
        })
    }

    /// What the peer needs: QP info, buffer address and key.
    fn blob(&self) -> Result<Vec<u8>, String> {
        let info = self
            .qp
            .local_info(&ConnectOpts::default())
            .map_err(|e| format!("QP info: {e}"))?;
        let mut b = info.encode().to_vec();
        b.extend_from_slice(&self.mr.addr().to_le_bytes());
        b.extend_from_slice(&self.mr.rkey().to_le_bytes());
        Ok(b)
    }

    fn connect(&mut self, blob: &[u8]) -> Result<Remote, String> {
        let bad = || format!("malformed raw floor info ({} bytes)", blob.len());
        let (info, rest) = blob.split_at_checked(ConnInfo::LEN).ok_or_else(bad)?;
        let (addr, rkey) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
        let rkey: [u8; 4] = rkey.try_into().map_err(|_| bad())?;
        let info = ConnInfo::decode(info).map_err(|e| format!("peer QP info: {e}"))?;
        self.qp
            .connect(&info, &ConnectOpts::default())
            .map_err(|e| format!("connecting: {e}"))?;
        for _ in 0..=RAW_DEPTH {
            self.qp
                .post_recv(&[])
                .map_err(|e| format!("posting a receive: {e}"))?;
        }
        Ok(Remote {
            addr: u64::from_le_bytes(*addr),
            rkey: u32::from_le_bytes(rkey),
        })
    }

    /// Posts one WRITE_IMM of [`RAW_PAYLOAD`] bytes (every
    /// [`RAW_SIGNAL_EVERY`]th signaled, and `signaled` ones).
    fn ping(&mut self, to: Remote, imm: u32, signaled: bool) -> Result<(), String> {
        self.sent = self.sent.wrapping_add(1);
        let bytes = [imm as u8; RAW_PAYLOAD];
        let w = WriteImm::inline(to, &bytes, imm);
        let w = if signaled || self.sent.is_multiple_of(RAW_SIGNAL_EVERY) {
            w.signaled()
        } else {
            w
        };
        self.qp
            .post_and_ring(&w)
            .map(|_| ())
            .map_err(|e| format!("posting a WRITE_IMM: {e}"))
    }

    /// Steps the device; the immediates of the WRITE_IMMs that arrived go
    /// to `arrived` (their receives posted again); returns how many sends
    /// completed. An error completion is an error.
    fn poll(&mut self, arrived: &mut Vec<u32>) -> Result<usize, String> {
        self.ctx
            .progress()
            .map_err(|e| format!("device progress: {e}"))?;
        let mut failed = None;
        let mut sends = 0;
        self.cq
            .poll(64, |c| {
                if let Err(s) = c.status() {
                    failed.get_or_insert(format!("error completion {:?}: {s:?}", c.kind));
                } else if c.kind == Kind::RecvWriteImm {
                    arrived.push(c.imm);
                } else {
                    sends += 1;
                }
            })
            .map_err(|e| format!("polling: {e}"))?;
        if let Some(f) = failed {
            return Err(f);
        }
        for _ in 0..arrived.len() {
            self.qp
                .post_recv(&[])
                .map_err(|e| format!("posting a receive: {e}"))?;
        }
        Ok(sends)
    }
}

/// The raw WRITE_IMM floor between ranks 0 and 1: rank 0 gets it, or why
/// there is none (a rank could not open the device: not an error of the
/// run, whose copyrpc points fail on their own if they need it).
fn write_imm(mpi: &Mpi) -> Result<Result<Option<WriteImmFloor>, String>, Error> {
    let rank = mpi.rank();
    let mut end = RawEnd::open();
    let mine = match &end {
        Ok(e) => e.blob().map(|b| [&[1u8][..], &b].concat()),
        Err(e) => Err(e.clone()),
    }
    .unwrap_or_else(|e| [&[0u8][..], e.as_bytes()].concat());
    let all = mpi.all_gather_bytes(&mine);
    if all.len() < 2 {
        return Ok(Err("one rank only: no peer to measure against".into()));
    }
    if let Some((r, b)) = all
        .iter()
        .enumerate()
        .take(2)
        .find(|(_, b)| b.first() != Some(&1))
    {
        let why = String::from_utf8_lossy(b.get(1..).unwrap_or_default()).into_owned();
        return Ok(Err(format!(
            "rank {r} ({}={}): {why}",
            mlx5::ENV,
            selection()
        )));
    }
    if rank > 1 {
        // The same barriers as ranks 0 and 1, nothing measured.
        mpi.barrier("raw WRITE_IMM floor connected", DEADLINE, || Ok(()))?;
        mpi.barrier("raw WRITE_IMM floor", DEADLINE, || Ok(()))?;
        return Ok(Ok(None));
    }
    let fail = |reason: String| Error::Aborted {
        rank,
        reason: format!("raw WRITE_IMM floor: {reason}"),
    };
    let end = end.as_mut().map_err(|e| fail(e.clone()))?;
    let peer = &all[1 - rank as usize][1..];
    let to = end.connect(peer).map_err(fail)?;
    mpi.barrier("raw WRITE_IMM floor connected", DEADLINE, || Ok(()))?;
    let deadline = Instant::now() + DEADLINE;
    let out = if rank == 0 {
        raw_initiator(end, to, deadline).map(Some)
    } else {
        raw_echo(end, to, deadline).map(|()| None)
    }
    .map_err(fail)?;
    mpi.barrier("raw WRITE_IMM floor", DEADLINE, || Ok(()))?;
    Ok(Ok(out))
}

/// `MLX5_DEVICE` as set, or `auto`.
fn selection() -> String {
    std::env::var(mlx5::ENV).unwrap_or_else(|_| "auto".into())
}

/// Rank 0: the ping-pong, the rate, then the stop immediate (signaled,
/// and waited for: rank 1 has it when this returns).
fn raw_initiator(e: &mut RawEnd, to: Remote, deadline: Instant) -> Result<WriteImmFloor, String> {
    let late = || "rank 1 stopped echoing".to_string();
    let mut arrived = Vec::with_capacity(RAW_DEPTH as usize);
    // Ping-pong: one at a time.
    let mut hist = histogram();
    let mut seq = 0u32;
    let phase = Instant::now();
    while phase.elapsed() < RAW_PHASE || hist.is_empty() {
        seq = (seq + 1) & 0x7fff_ffff;
        let t = Instant::now();
        e.ping(to, seq, false)?;
        loop {
            arrived.clear();
            e.poll(&mut arrived)?;
            if arrived.contains(&seq) {
                break;
            }
            if Instant::now() > deadline {
                return Err(late());
            }
        }
        hist.saturating_record(t.elapsed().as_nanos() as u64);
    }
    // Rate: RAW_DEPTH in flight, each echo answered with a new one.
    let (mut issued, mut done) = (0u64, 0u64);
    let t = Instant::now();
    for _ in 0..RAW_DEPTH {
        seq = (seq + 1) & 0x7fff_ffff;
        e.ping(to, seq, false)?;
        issued += 1;
    }
    let mut last = t;
    while done < issued {
        arrived.clear();
        e.poll(&mut arrived)?;
        if !arrived.is_empty() {
            last = Instant::now();
        }
        for _ in 0..arrived.len() {
            done += 1;
            if t.elapsed() < RAW_PHASE {
                seq = (seq + 1) & 0x7fff_ffff;
                e.ping(to, seq, false)?;
                issued += 1;
            }
        }
        if Instant::now() > deadline {
            return Err(late());
        }
    }
    let seconds = (last - t).as_secs_f64();
    // Stop: signaled, so its completion says rank 1's device took it.
    e.ping(to, RAW_STOP, true)?;
    let mut stopped = false;
    while !stopped {
        arrived.clear();
        stopped = e.poll(&mut arrived)? > 0;
        if Instant::now() > deadline {
            return Err(late());
        }
    }
    Ok(WriteImmFloor {
        device: e.ctx.name(),
        selection: selection(),
        payload_bytes: RAW_PAYLOAD,
        round_trips: hist.len(),
        round_trip_p50_ns: hist.value_at_quantile(0.5),
        round_trip_mean_ns: hist.mean(),
        depth: RAW_DEPTH,
        round_trips_per_s: if seconds > 0.0 {
            done as f64 / seconds
        } else {
            0.0
        },
    })
}

/// Rank 1: echoes every WRITE_IMM with the same immediate until the stop
/// immediate.
fn raw_echo(e: &mut RawEnd, to: Remote, deadline: Instant) -> Result<(), String> {
    let mut arrived = Vec::with_capacity(RAW_DEPTH as usize);
    loop {
        arrived.clear();
        e.poll(&mut arrived)?;
        for &imm in &arrived {
            if imm == RAW_STOP {
                // The acknowledgement of the stop goes out with the
                // device's next steps.
                let _ = e.ctx.progress_until_idle();
                return Ok(());
            }
            e.ping(to, imm, false)?;
        }
        if Instant::now() > deadline {
            return Err("rank 0 stopped sending".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::line_between;

    /// The label names the CPUs each rank said it ran on, and says when
    /// both were the same (no cache line crossed cores).
    #[test]
    fn the_line_floor_names_both_ranks_cpus() {
        assert_eq!(
            line_between("0 pinned", "3 pinned"),
            "ranks 0 and 1 (processes) on CPUs 0 and 3, each pinned there"
        );
        assert_eq!(
            line_between("2 bound", "5 bound"),
            "ranks 0 and 1 (processes) on CPUs 2 and 5, each on the one CPU mpirun bound it to"
        );
        assert!(line_between("1 bound", "1 bound").contains("both on CPU 1"));
    }

    use super::*;

    fn floors() -> Floors {
        Floors {
            measured: "before the run".into(),
            cache_line_ns: 80.0,
            cache_line_between: "ranks 0 and 1 (processes) on cores 0 and 1".into(),
            canary_ns: 100.0,
            canary_between: "two threads of rank 0 on cores 0 and 1".into(),
            write_imm: None,
            write_imm_missing: Some("rank 1: no device".into()),
        }
    }

    #[test]
    fn a_canary_over_twice_the_floors_marks_a_slow_phase() {
        let f = floors();
        assert!(!Canary::new(110.0, 190.0, &f).slow);
        assert!(Canary::new(90.0, 250.0, &f).slow);
        assert!(Canary::new(400.0, 90.0, &f).slow);
    }

    #[test]
    fn the_cache_line_floor_round_trips_between_two_threads() {
        let b = std::sync::Arc::new(Bounce::new());
        let server = {
            let b = b.clone();
            std::thread::spawn(move || line_server(&b, Instant::now() + DEADLINE))
        };
        let d = line_client(&b, Instant::now() + DEADLINE).expect("the server answers");
        assert_eq!(
            server.join().unwrap(),
            Some(()),
            "the stop value ends the server"
        );
        assert!(d > Duration::ZERO);
        assert_eq!(b.pong.load(Ordering::Relaxed), LINE_STOP);
    }

    #[test]
    fn a_silent_peer_ends_the_cache_line_floor_at_its_deadline() {
        let b = Bounce::new();
        let t = Instant::now();
        assert!(line_client(&b, Instant::now() + Duration::from_millis(50)).is_none());
        assert!(line_server(&b, Instant::now() + Duration::from_millis(50)).is_none());
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn raw_ends_echo_on_the_software_device() {
        let mut a = RawEnd::open_on(mlx5::Context::soft(mlx5::Progress::Manual)).unwrap();
        let mut b = RawEnd::open_on(mlx5::Context::soft(mlx5::Progress::Manual)).unwrap();
        let (ba, bb) = (a.blob().unwrap(), b.blob().unwrap());
        let to_b = a.connect(&bb).unwrap();
        let to_a = b.connect(&ba).unwrap();
        let echo = std::thread::spawn(move || raw_echo(&mut b, to_a, Instant::now() + DEADLINE));
        let f = raw_initiator(&mut a, to_b, Instant::now() + DEADLINE).unwrap();
        echo.join().unwrap().unwrap();
        assert!(f.round_trips > 0 && f.round_trip_p50_ns > 0, "{f:?}");
        assert!(f.round_trips_per_s > 0.0, "{f:?}");
        assert_eq!((f.depth, f.payload_bytes), (RAW_DEPTH, RAW_PAYLOAD));
        assert!(a.connect(&[0u8; 10]).is_err(), "a short blob is refused");
    }
}
