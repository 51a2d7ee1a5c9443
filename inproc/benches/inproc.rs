//! inproc benchmarks: SPSC throughput and ping-pong of the three transports
//! against rtrb, crossbeam and `std::sync::mpsc`, and the cache-line floor,
//! each as a criterion group; then an interleaved summary pass that prints
//! every figure with its ratio to rtrb (throughput) or to the floor
//! (ping-pong), and the targets.
//!
//! `cargo bench -p inproc`. Environment knobs: `INPROC_BENCH_ROUNDS`
//! (summary rounds, default 7), `INPROC_BENCH_SKIP_CRITERION=1`,
//! `INPROC_BENCH_SKIP_SUMMARY=1`, `INPROC_BENCH_VERBOSE=1`. The table is
//! also written to `target/bench-summary/inproc.md`.
//!
//! How every queue is driven, so the figures compare algorithms and not
//! APIs:
//!
//! * Spin mode only: non-blocking `try_send`/`try_recv` (`push`/`pop`) in a
//!   busy loop; no thread ever parks. Blocking wake-ups cost far more than
//!   a spin round trip (DESIGN.md, decision 12) and would be a figure of
//!   their own.
//! * Throughput is measured with two kinds of busy loop, each a figure of
//!   every queue, named in its id: `pause`, spin with PAUSE (a
//!   `spin_loop()` hint after every attempt that finds the queue full or
//!   empty), and `poll`, plain busy poll (the failed attempt is retried at
//!   once). A PAUSE lasts on the order of a hundred cycles on recent Intel
//!   cores: it penalises whichever queue fails more polls and hides the
//!   queue's own cost, which the plain loop shows. Each figure's ratio is to
//!   rtrb in the same loop. Ping-pong spins with PAUSE.
//! * The producer (or ping-pong client) runs on the first core of
//!   `benchutil::core_pair`, the consumer (server) on the second; every
//!   queue holds [`CAPACITY`] messages.
//! * FastForward and onesided use the plain per-message path: `try_send`,
//!   `try_recv`. Their `publish` is a no-op; their `sync` returns the slots
//!   of a batch read only in part (room otherwise comes back a batch at a
//!   time as it is read), so like every queue they sync only when they find
//!   the queue empty.
//! * Lamport makes values visible only at `publish` and room only at
//!   `sync`, so in the throughput figures it publishes every
//!   [`LAMPORT_BATCH`] sends and syncs every [`LAMPORT_BATCH`] receives,
//!   and besides publishes whenever the queue is full and syncs whenever it
//!   is empty (without those two it could stall with values unpublished).
//!   In ping-pong each message is published as it is sent and synced as it
//!   is received.
//! * Throughput: the consumer checks that every message carries the next
//!   sequence number; the time runs from the moment the consumer has
//!   drained a warm-up of `2 × CAPACITY` messages to its last receive.
//!
//! The adapters that drive each queue this way are in `queues/`.
//!
//! Adding a group (the Flux mesh): a `fn flux(c: &mut Criterion)` beside
//! [`pingpong`] and a `fn flux_items()` beside [`pingpong_items`], listed in
//! [`criterion_groups`] and [`summary_items`]. The table needs no other
//! change: every latency row gets its ratio to the floor, throughput rows
//! outside `spsc_throughput/` get no rtrb ratio.

mod flux;
mod queues;

use std::hint::spin_loop;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use benchutil::summary::{self, Item, Kind, Knobs, Medians};
use benchutil::{core_pair, floor_threads, pin};
use criterion::{BenchmarkId, Criterion, Throughput};
use inproc::{FastForward, Lamport, Onesided, Transport};
use queues::{
    ArrayQueue, CrossbeamChannel, IDLE_ONLY, Idle, Inproc, Pause, Poll, Queue, Rtrb, Rx, StdMpsc,
    Tx, recv_spin, send_spin,
};

/// Messages every queue of every figure holds.
const CAPACITY: usize = 4096;

/// Lamport publishes / syncs once per this many messages in the throughput
/// figures.
const LAMPORT_BATCH: usize = 32;

// The queues of the figures (see `queues` for how each is driven).
type FF = Inproc<FastForward, IDLE_ONLY>;
type LamportBatched = Inproc<Lamport, LAMPORT_BATCH>;
type LamportEach = Inproc<Lamport, 1>;
type OS = Inproc<Onesided, IDLE_ONLY>;

// ---------------------------------------------------------------------------
// SPSC throughput.

/// A throughput message: carries its sequence number.
trait Msg: Send + 'static {
    /// Size label in figure ids.
    const SIZE: &'static str;
    fn new(seq: u64) -> Self;
    fn seq(&self) -> u64;
}

impl Msg for u64 {
    const SIZE: &'static str = "8B";
    #[inline]
    fn new(seq: u64) -> Self {
        seq
    }
    #[inline]
    fn seq(&self) -> u64 {
        *self
    }
}

impl Msg for [u64; 4] {
    const SIZE: &'static str = "32B";
    #[inline]
    fn new(seq: u64) -> Self {
        [seq, !seq, seq, !seq]
    }
    #[inline]
    fn seq(&self) -> u64 {
        self[0]
    }
}

#[cold]
fn out_of_sequence(queue: &str, want: u64, got: u64) -> ! {
    panic!("{queue}: expected message {want}, received {got}");
}

/// Receives the messages `seq` from `rx`, checking that each carries the
/// next sequence number.
#[inline]
fn drain<Q: Queue, M: Msg, I: Idle>(rx: &mut Q::Rx<M>, seq: std::ops::Range<u64>) {
    for i in seq {
        let m = recv_spin::<I, M>(rx);
        if m.seq() != i {
            out_of_sequence(Q::NAME, i, m.seq());
        }
    }
}

/// Sends the messages `seq` into `tx`.
#[inline]
fn fill<Q: Queue, M: Msg, I: Idle>(tx: &mut Q::Tx<M>, seq: std::ops::Range<u64>) {
    for i in seq {
        send_spin::<I, M>(tx, M::new(i));
    }
    tx.flush();
}

/// `n` messages of type `M` from a producer on this thread to a consumer
/// thread, as fast as `Q` moves them, both sides busy-polling as `I` says.
/// Returns the time from the consumer's end of warm-up to its last receive.
fn throughput<Q: Queue, M: Msg, I: Idle>(n: u64) -> Duration {
    let (c0, c1) = core_pair();
    let (mut tx, mut rx) = Q::pair::<M>(CAPACITY);
    let warm = 2 * CAPACITY as u64;
    let warmed = Arc::new(AtomicBool::new(false));
    let consumer = {
        let warmed = warmed.clone();
        thread::spawn(move || {
            pin(c1);
            drain::<Q, M, I>(&mut rx, 0..warm);
            // Release/Acquire: only a start signal, no data rides on it.
            warmed.store(true, Ordering::Release);
            drain::<Q, M, I>(&mut rx, warm..warm + n);
            rx.release();
            Instant::now()
        })
    };
    pin(c0);
    fill::<Q, M, I>(&mut tx, 0..warm);
    while !warmed.load(Ordering::Acquire) {
        spin_loop();
    }
    let t0 = Instant::now();
    fill::<Q, M, I>(&mut tx, warm..warm + n);
    let end = consumer.join().expect("consumer thread");
    end.saturating_duration_since(t0)
}

/// A figure's measurement: the time of `n` operations.
type Run = fn(u64) -> Duration;

/// One row of the throughput table.
struct Case {
    /// The busy loop's kind ([`Idle::NAME`]).
    idle: &'static str,
    queue: &'static str,
    size: &'static str,
    run: Run,
    note: Option<&'static str>,
}

impl Case {
    /// `spsc_throughput/<loop>/<queue>/<size>`.
    fn id(&self) -> String {
        format!("spsc_throughput/{}/{}/{}", self.idle, self.queue, self.size)
    }
}

fn case<Q: Queue, M: Msg, I: Idle>(note: Option<&'static str>) -> Case {
    Case {
        idle: I::NAME,
        queue: Q::NAME,
        size: M::SIZE,
        run: throughput::<Q, M, I>,
        note,
    }
}

/// How FastForward and onesided are driven, for the note column.
const PER_MESSAGE: &str = "try_send/try_recv only; sync when empty";

/// Every queue at one message size in one kind of loop.
fn throughput_cases_of<M: Msg, I: Idle>() -> Vec<Case> {
    vec![
        case::<FF, M, I>(Some(PER_MESSAGE)),
        case::<LamportBatched, M, I>(Some(
            "batch period 32: publish/sync every 32 messages, and when full/empty",
        )),
        case::<OS, M, I>(Some(PER_MESSAGE)),
        case::<Rtrb, M, I>(None),
        case::<ArrayQueue, M, I>(None),
        case::<CrossbeamChannel, M, I>(None),
        case::<StdMpsc, M, I>(None),
    ]
}

/// Both loop kinds, interleaved figure by figure in each summary round.
fn throughput_cases() -> Vec<Case> {
    let mut v = throughput_cases_of::<u64, Pause>();
    v.extend(throughput_cases_of::<u64, Poll>());
    v.extend(throughput_cases_of::<[u64; 4], Pause>());
    v.extend(throughput_cases_of::<[u64; 4], Poll>());
    v
}

fn spsc_throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("spsc_throughput");
    g.throughput(Throughput::Elements(1));
    for cs in throughput_cases() {
        g.bench_function(
            BenchmarkId::new(format!("{}/{}", cs.idle, cs.queue), cs.size),
            |b| b.iter_custom(cs.run),
        );
    }
    g.finish();
}

/// Messages per throughput figure of a summary round.
const THROUGHPUT_ITERS: u64 = 2_000_000;

fn throughput_items() -> Vec<Item<'static>> {
    throughput_cases()
        .into_iter()
        .map(|cs| {
            Item::throughput(cs.id(), THROUGHPUT_ITERS, cs.run).note(cs.note.map(String::from))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Ping-pong.

const STOP: u64 = u64::MAX;

/// `n` round trips of a `u64` from this thread to a server thread and back,
/// over two queues of `Q` (one per direction), spinning with PAUSE. Each
/// message is flushed as it is sent.
fn pingpong_of<Q: Queue>(n: u64) -> Duration {
    let (c0, c1) = core_pair();
    let (mut ping_tx, mut ping_rx) = Q::pair::<u64>(CAPACITY);
    let (mut pong_tx, mut pong_rx) = Q::pair::<u64>(CAPACITY);
    let server = thread::spawn(move || {
        pin(c1);
        loop {
            let v = recv_spin::<Pause, _>(&mut ping_rx);
            send_spin::<Pause, _>(&mut pong_tx, v.wrapping_add(1));
            pong_tx.flush();
            if v == STOP {
                return;
            }
        }
    });
    pin(c0);
    let mut trip = |i: u64| {
        send_spin::<Pause, _>(&mut ping_tx, i);
        ping_tx.flush();
        let r = recv_spin::<Pause, _>(&mut pong_rx);
        if r != i.wrapping_add(1) {
            out_of_sequence(Q::NAME, i.wrapping_add(1), r);
        }
    };
    for i in 0..1000 {
        trip(i);
    }
    let t0 = Instant::now();
    for i in 0..n {
        trip(i);
    }
    let d = t0.elapsed();
    trip(STOP);
    server.join().expect("ping-pong server thread");
    d
}

/// The ping-pong rows: (queue, run).
fn pingpong_cases() -> Vec<(&'static str, Run)> {
    vec![
        (FF::NAME, pingpong_of::<FF>),
        (LamportEach::NAME, pingpong_of::<LamportEach>),
        (OS::NAME, pingpong_of::<OS>),
        (Rtrb::NAME, pingpong_of::<Rtrb>),
        (ArrayQueue::NAME, pingpong_of::<ArrayQueue>),
    ]
}

/// The transports of this crate, for the Flux targets.
const TRANSPORTS: [&str; 3] = [FastForward::NAME, Lamport::NAME, Onesided::NAME];

fn pingpong(c: &mut Criterion) {
    let mut g = c.benchmark_group("pingpong");
    for (queue, run) in pingpong_cases() {
        g.bench_function(queue, |b| b.iter_custom(run));
    }
    g.finish();
}

/// Round trips per ping-pong figure of a summary round.
const PINGPONG_ITERS: u64 = 100_000;

fn pingpong_items() -> Vec<Item<'static>> {
    pingpong_cases()
        .into_iter()
        .map(|(queue, run)| {
            let note = (queue == Lamport::NAME).then(|| "publish and sync per message".to_string());
            Item::latency(format!("pingpong/{queue}"), PINGPONG_ITERS, run).note(note)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The floor, the run, the table.

fn floor(c: &mut Criterion) {
    let mut g = c.benchmark_group("floor");
    g.bench_function("threads", |b| b.iter_custom(floor_threads));
    g.finish();
}

// ---------------------------------------------------------------------------
// Flux all-to-all call/reply.

/// Thread counts of the Flux figures.
const FLUX_THREADS: [usize; 2] = [2, 4];

fn flux_cases() -> Vec<(String, Run2)> {
    let mut v: Vec<(String, Run2)> = Vec::new();
    for n in FLUX_THREADS {
        v.push((format!("flux/{}/{n}threads", FastForward::NAME), |n, i| {
            flux::flux::<FastForward>(n, i)
        }));
        v.push((format!("flux/{}/{n}threads", Lamport::NAME), |n, i| {
            flux::flux::<Lamport>(n, i)
        }));
        v.push((format!("flux/{}/{n}threads", Onesided::NAME), |n, i| {
            flux::flux::<Onesided>(n, i)
        }));
        v.push((
            format!("flux/crossbeam-mesh/{n}threads"),
            flux::crossbeam_mesh,
        ));
    }
    v
}

/// A Flux run: (threads, calls) -> time.
type Run2 = fn(usize, u64) -> Duration;

fn threads_of(id: &str) -> usize {
    id.rsplit('/')
        .next()
        .and_then(|t| t.strip_suffix("threads"))
        .and_then(|t| t.parse().ok())
        .expect("thread count in id")
}

fn oversubscribed(n: usize) -> Option<String> {
    let cores = benchutil::allowed_cpus().len();
    (n > cores).then(|| format!("{n} threads on {cores} cores: threads outnumber cores"))
}

fn flux_group(c: &mut Criterion) {
    let mut g = c.benchmark_group("flux");
    g.throughput(Throughput::Elements(1));
    for (id, run) in flux_cases() {
        let n = threads_of(&id);
        let name = id.strip_prefix("flux/").expect("flux id").to_string();
        g.bench_function(name, |b| b.iter_custom(|iters| run(n, iters)));
    }
    g.finish();
}

/// Calls per Flux figure of a summary round.
const FLUX_ITERS: u64 = 400_000;

fn flux_items() -> Vec<Item<'static>> {
    flux_cases()
        .into_iter()
        .map(|(id, run)| {
            let n = threads_of(&id);
            let mut note = format!(
                "completed calls (call + reply) per second, window {}",
                flux::WINDOW
            );
            if let Some(o) = oversubscribed(n) {
                note = format!("{note}; {o}");
            }
            Item::throughput(id, FLUX_ITERS, move |iters| run(n, iters)).note(Some(note))
        })
        .collect()
}

fn criterion_groups(c: &mut Criterion) {
    floor(c);
    spsc_throughput(c);
    pingpong(c);
    flux_group(c);
}

fn summary_items() -> Vec<Item<'static>> {
    let mut items = vec![Item::latency("floor/threads", 200_000, floor_threads)];
    items.extend(throughput_items());
    items.extend(pingpong_items());
    items.extend(flux_items());
    items
}

/// The id of the rtrb figure a throughput figure is compared with: same
/// loop kind, same message size, `spsc_throughput` rows only.
fn rtrb_peer(id: &str) -> Option<String> {
    let (idle, rest) = id.strip_prefix("spsc_throughput/")?.split_once('/')?;
    let size = rest.rsplit('/').next()?;
    Some(format!("spsc_throughput/{idle}/{}/{size}", Rtrb::NAME))
}

/// The transports a throughput target names, with what the table says
/// beside each one's figure when it is the best: Lamport's figure counts
/// only with its batch period stated.
fn throughput_transports() -> [(&'static str, String); 3] {
    [
        (FastForward::NAME, String::new()),
        (Onesided::NAME, String::new()),
        (Lamport::NAME, format!(" (batch period {LAMPORT_BATCH})")),
    ]
}

/// The ratios the report shows, declared once for the JSON beside the
/// table: latency rows to the floor and ping-pong rows to rtrb's and
/// crossbeam's ping-pong; `spsc_throughput` rows to rtrb, crossbeam's
/// channel and ArrayQueue in the same loop at the same size (the table
/// shows the rtrb ratio); Flux rows to the crossbeam-channel mesh.
fn declare_ratios(m: &mut Medians) {
    let figs: Vec<(String, Kind)> = m.figures.iter().map(|f| (f.id.clone(), f.kind)).collect();
    let peers = [Rtrb::NAME, CrossbeamChannel::NAME, ArrayQueue::NAME];
    for (id, kind) in figs {
        let mut against: Vec<(String, &str)> = Vec::new();
        match kind {
            Kind::Latency if id != "floor/threads" => {
                against.push(("floor/threads".into(), "floor"));
                if id.starts_with("pingpong/") {
                    against.extend(peers.iter().map(|p| (format!("pingpong/{p}"), "peer")));
                }
            }
            Kind::Throughput => {
                if let Some(rtrb) = rtrb_peer(&id) {
                    against.extend(peers.iter().map(|p| (rtrb.replace(Rtrb::NAME, p), "peer")));
                } else if let Some(n) = id.strip_prefix("flux/").and_then(|r| r.rsplit('/').next())
                {
                    against.push((format!("flux/crossbeam-mesh/{n}"), "peer"));
                }
            }
            Kind::Latency => {}
        }
        for (p, role) in against {
            if p != id && m.get(&p).is_some() {
                m.ratio(&id, &p, role);
            }
        }
    }
}

fn table(m: &Medians) -> String {
    let floor = m.ns("floor/threads");
    let mut out = m.preamble("inproc");
    out +=
        "| figure | median | msgs/s ÷ rtrb (same loop, same size) | round trip ÷ floor | note |\n";
    out += "|---|---|---|---|---|\n";
    for f in &m.figures {
        let (value, vs_rtrb, vs_floor) = match f.kind {
            Kind::Throughput => {
                let vs_rtrb = rtrb_peer(&f.id)
                    .and_then(|p| m.get(&p))
                    .map(|r| format!("{:.2}×", r.ns / f.ns))
                    .unwrap_or_default();
                (
                    format!("{:.1} M msgs/s ({:.1} ns/msg)", f.per_second() / 1e6, f.ns),
                    vs_rtrb,
                    String::new(),
                )
            }
            Kind::Latency => (
                format!("{:.0} ns", f.ns),
                String::new(),
                format!("{:.2}×", f.ns / floor),
            ),
        };
        out += &format!(
            "| {} | {value} | {vs_rtrb} | {vs_floor} | {} |\n",
            f.id,
            f.note.as_deref().unwrap_or("")
        );
    }
    // msgs/s ÷ rtrb's, 8-byte messages, in loop `idle`.
    let vs_rtrb = |idle: &str, queue: &str| {
        m.ns(&format!("spsc_throughput/{idle}/{}/8B", Rtrb::NAME))
            / m.ns(&format!("spsc_throughput/{idle}/{queue}/8B"))
    };
    let loops = [Pause::NAME, Poll::NAME];
    out += "\ntargets (8-byte messages; throughput ÷ rtrb's in the same loop, same run):\n";
    for t in [FastForward::NAME, Onesided::NAME] {
        let per_loop: Vec<String> = loops
            .iter()
            .map(|l| {
                let r = vs_rtrb(l, t);
                format!("{l} {r:.2}× ({})", benchutil::verdict(r >= 1.0))
            })
            .collect();
        out += &format!("- {t} ≥ 1.0× rtrb: {}\n", per_loop.join(", "));
    }
    let best: Vec<String> = loops
        .iter()
        .map(|l| {
            let (t, about, r) = throughput_transports()
                .into_iter()
                .map(|(t, about)| (t, about, vs_rtrb(l, t)))
                .max_by(|a, b| a.2.total_cmp(&b.2))
                .expect("three transports");
            format!("{l}: {t}{about} {r:.2}× ({})", benchutil::verdict(r >= 2.0))
        })
        .collect();
    out += &format!("- best transport ≥ 2.0× rtrb: {}\n", best.join(", "));
    let pingpong: Vec<String> = [FastForward::NAME, Onesided::NAME]
        .iter()
        .map(|t| {
            let r = m.ns(&format!("pingpong/{t}")) / floor;
            format!("{t} {r:.2}× ({})", benchutil::verdict(r <= 1.1))
        })
        .collect();
    out += &format!(
        "- ping-pong within 1.1× of the floor: {}\n",
        pingpong.join(", ")
    );
    for n in FLUX_THREADS {
        let mesh = m.ns(&format!("flux/crossbeam-mesh/{n}threads"));
        let (best, best_ns) = TRANSPORTS
            .iter()
            .map(|t| (*t, m.ns(&format!("flux/{t}/{n}threads"))))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("three transports");
        out += &format!(
            "target: Flux call/reply on {n} threads ≥ 2× the crossbeam-channel mesh: {best} {:.2}× ({})\n",
            mesh / best_ns,
            benchutil::verdict(mesh / best_ns >= 2.0),
        );
    }
    out += &format!(
        "all queues busy-poll try_send/try_recv (spin mode), capacity {CAPACITY}, \
         producer and consumer pinned to two cores; throughput loops: {} = {}, {} = {}; \
         ping-pong spins with PAUSE\n",
        Pause::NAME,
        Pause::ABOUT,
        Poll::NAME,
        Poll::ABOUT,
    );
    out += &format!(
        "canary (floor/threads, {}k trips) per round, ns: {:?}\n",
        benchutil::CANARY_TRIPS / 1000,
        m.canaries_ns()
    );
    out
}

fn main() {
    if benchutil::as_helper(|role, _| panic!("unknown bench role {role}")) {
        return;
    }
    let knobs = Knobs::from_env("INPROC_BENCH", 7);
    if !knobs.skip_criterion {
        let mut c = benchutil::criterion();
        criterion_groups(&mut c);
        c.final_summary();
    }
    if !knobs.skip_summary {
        let mut m = summary::run(&knobs, summary_items(), benchutil::canary_ns);
        declare_ratios(&mut m);
        m.write_report("inproc", &table(&m));
    }
}
