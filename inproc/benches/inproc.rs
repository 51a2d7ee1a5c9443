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
//!   busy loop with a `spin_loop` hint; no thread ever parks. Blocking
//!   wake-ups cost far more than a spin round trip (DESIGN.md, decision
//!   12) and would be a figure of their own.
//! * The producer (or ping-pong client) runs on the first core of
//!   `benchutil::core_pair`, the consumer (server) on the second; every
//!   queue holds [`CAPACITY`] messages.
//! * FastForward and onesided use the plain per-message path: `try_send`,
//!   `try_recv` (their `publish`/`sync` are no-ops).
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
    ArrayQueue, CrossbeamChannel, Inproc, Queue, Rtrb, Rx, StdMpsc, Tx, recv_spin, send_spin,
};

/// Messages every queue of every figure holds.
const CAPACITY: usize = 4096;

/// Lamport publishes / syncs once per this many messages in the throughput
/// figures.
const LAMPORT_BATCH: usize = 32;

// The queues of the figures (see `queues` for how each is driven).
type FF = Inproc<FastForward, 1>;
type LamportBatched = Inproc<Lamport, LAMPORT_BATCH>;
type LamportEach = Inproc<Lamport, 1>;
type OS = Inproc<Onesided, 1>;

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
fn drain<Q: Queue, M: Msg>(rx: &mut Q::Rx<M>, seq: std::ops::Range<u64>) {
    for i in seq {
        let m = recv_spin(rx);
        if m.seq() != i {
            out_of_sequence(Q::NAME, i, m.seq());
        }
    }
}

/// Sends the messages `seq` into `tx`.
#[inline]
fn fill<Q: Queue, M: Msg>(tx: &mut Q::Tx<M>, seq: std::ops::Range<u64>) {
    for i in seq {
        send_spin(tx, M::new(i));
    }
    tx.flush();
}

/// `n` messages of type `M` from a producer on this thread to a consumer
/// thread, as fast as `Q` moves them. Returns the time from the consumer's
/// end of warm-up to its last receive.
fn throughput<Q: Queue, M: Msg>(n: u64) -> Duration {
    let (c0, c1) = core_pair();
    let (mut tx, mut rx) = Q::pair::<M>(CAPACITY);
    let warm = 2 * CAPACITY as u64;
    let warmed = Arc::new(AtomicBool::new(false));
    let consumer = {
        let warmed = warmed.clone();
        thread::spawn(move || {
            pin(c1);
            drain::<Q, M>(&mut rx, 0..warm);
            // Release/Acquire: only a start signal, no data rides on it.
            warmed.store(true, Ordering::Release);
            drain::<Q, M>(&mut rx, warm..warm + n);
            rx.release();
            Instant::now()
        })
    };
    pin(c0);
    fill::<Q, M>(&mut tx, 0..warm);
    while !warmed.load(Ordering::Acquire) {
        spin_loop();
    }
    let t0 = Instant::now();
    fill::<Q, M>(&mut tx, warm..warm + n);
    let end = consumer.join().expect("consumer thread");
    end.saturating_duration_since(t0)
}

/// A figure's measurement: the time of `n` operations.
type Run = fn(u64) -> Duration;

/// One row of the throughput table.
struct Case {
    queue: &'static str,
    size: &'static str,
    run: Run,
    note: Option<&'static str>,
}

fn case<Q: Queue, M: Msg>(note: Option<&'static str>) -> Case {
    Case {
        queue: Q::NAME,
        size: M::SIZE,
        run: throughput::<Q, M>,
        note,
    }
}

/// Every queue at one message size.
fn throughput_cases_of<M: Msg>() -> Vec<Case> {
    vec![
        case::<FF, M>(None),
        case::<LamportBatched, M>(Some("publish/sync every 32 messages, and when full/empty")),
        case::<OS, M>(None),
        case::<Rtrb, M>(None),
        case::<ArrayQueue, M>(None),
        case::<CrossbeamChannel, M>(None),
        case::<StdMpsc, M>(None),
    ]
}

fn throughput_cases() -> Vec<Case> {
    let mut v = throughput_cases_of::<u64>();
    v.extend(throughput_cases_of::<[u64; 4]>());
    v
}

fn spsc_throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("spsc_throughput");
    g.throughput(Throughput::Elements(1));
    for cs in throughput_cases() {
        g.bench_function(BenchmarkId::new(cs.queue, cs.size), |b| {
            b.iter_custom(cs.run)
        });
    }
    g.finish();
}

/// Messages per throughput figure of a summary round.
const THROUGHPUT_ITERS: u64 = 2_000_000;

fn throughput_items() -> Vec<Item<'static>> {
    throughput_cases()
        .into_iter()
        .map(|cs| {
            Item::throughput(
                format!("spsc_throughput/{}/{}", cs.queue, cs.size),
                THROUGHPUT_ITERS,
                cs.run,
            )
            .note(cs.note.map(String::from))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Ping-pong.

const STOP: u64 = u64::MAX;

/// `n` round trips of a `u64` from this thread to a server thread and back,
/// over two queues of `Q` (one per direction). Each message is flushed as
/// it is sent.
fn pingpong_of<Q: Queue>(n: u64) -> Duration {
    let (c0, c1) = core_pair();
    let (mut ping_tx, mut ping_rx) = Q::pair::<u64>(CAPACITY);
    let (mut pong_tx, mut pong_rx) = Q::pair::<u64>(CAPACITY);
    let server = thread::spawn(move || {
        pin(c1);
        loop {
            let v = recv_spin(&mut ping_rx);
            send_spin(&mut pong_tx, v.wrapping_add(1));
            pong_tx.flush();
            if v == STOP {
                return;
            }
        }
    });
    pin(c0);
    let mut trip = |i: u64| {
        send_spin(&mut ping_tx, i);
        ping_tx.flush();
        let r = recv_spin(&mut pong_rx);
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

/// The transports of this crate, for the ping-pong target.
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
/// message size, `spsc_throughput` rows only.
fn rtrb_peer(id: &str) -> Option<String> {
    let size = id.strip_prefix("spsc_throughput/")?.rsplit('/').next()?;
    Some(format!("spsc_throughput/{}/{size}", Rtrb::NAME))
}

fn table(m: &Medians) -> String {
    let floor = m.ns("floor/threads");
    let mut out = m.preamble("inproc");
    out += "| figure | median | msgs/s ÷ rtrb (same size) | round trip ÷ floor | note |\n";
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
    let ff = m.ns(&format!("spsc_throughput/{}/8B", FastForward::NAME));
    let rtrb = m.ns(&format!("spsc_throughput/{}/8B", Rtrb::NAME));
    let (best, best_ns) = TRANSPORTS
        .iter()
        .map(|t| (*t, m.ns(&format!("pingpong/{t}"))))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("three transports");
    out += &format!(
        "\ntargets: FastForward 8B throughput ≥ 2× rtrb: {:.2}× ({}); \
         best transport ping-pong within 1.3× of floor: {best} {:.2}× ({})\n",
        rtrb / ff,
        benchutil::verdict(rtrb / ff >= 2.0),
        best_ns / floor,
        benchutil::verdict(best_ns / floor <= 1.3),
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
         producer and consumer pinned to two cores\n"
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
        let m = summary::run(&knobs, summary_items(), benchutil::canary_ns);
        benchutil::write_report("inproc", &table(&m));
    }
}
