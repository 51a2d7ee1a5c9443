//! Figures the report derives from measured ones: the theoretical limits
//! (cache-line transfers × the measured transfer time, raw WRITE_IMM for
//! copyrpc), the benchkv critical path summed from the layers' own
//! latencies, and the cross-layer table. Every input is a figure of the
//! run; the only constants are protocol facts (how many cache lines a round
//! trip moves), each stated with its reason.

use benchutil::{FigureRecord, Kind};

use crate::format;
use crate::input::{KvPoint, Run};

/// A figure of suite `suite` named `name`, if the run has it.
pub fn fig<'a>(run: &'a Run, suite: &str, name: &str) -> Option<&'a FigureRecord> {
    run.suites
        .iter()
        .find(|s| s.suite == suite)?
        .figures
        .iter()
        .find(|f| f.name == name)
}

/// Median nanoseconds per operation of a figure, if the run has it.
pub fn ns(run: &Run, suite: &str, name: &str) -> Option<f64> {
    fig(run, suite, name).map(|f| f.ns_per_op)
}

/// What the limit of a shared-memory ping-pong is built from, per
/// protocol.
///
/// Any hand-over makes at least one line change cores: the one the
/// consumer waits on. A round trip is two hand-overs, so its limit is two
/// transfers, the cache-line floor itself, whatever else the protocol
/// moves: lines the consumer reads after the one it waits on are fetched
/// while that one is in flight (the loads are issued speculatively), so
/// they add bandwidth, not latency. `lines` says how many lines a round
/// trip moves in all.
pub struct Protocol {
    /// The suite.
    pub suite: &'static str,
    /// The ping-pong figure.
    pub figure: &'static str,
    /// The cache-line floor it is bounded by (same suite).
    pub floor: &'static str,
    /// Lines that change cores per round trip, in all.
    pub lines: u32,
    /// Which lines those are.
    pub why: &'static str,
}

/// Transfers a round trip waits for in sequence: one per direction.
pub const SERIAL_TRANSFERS: u32 = 2;

/// The protocols of the ping-pong figures (see each crate's module docs:
/// ipc's `ring.rs`, inproc's `onesided.rs`, `fastforward.rs`, `lamport.rs`).
pub const PROTOCOLS: [Protocol; 6] = [
    Protocol {
        suite: "ipc",
        figure: "pingpong/processes",
        floor: "floor/processes",
        lines: 2,
        why: "the request slot (payload, call id and sequence word share a line) moves to the \
              server, the response slot back; the server's active list and the client's \
              free ids are private",
    },
    Protocol {
        suite: "ipc",
        figure: "pingpong/threads",
        floor: "floor/threads",
        lines: 2,
        why: "as between processes: one request slot line, one response slot line",
    },
    Protocol {
        suite: "inproc",
        figure: "pingpong/onesided",
        floor: "floor/threads",
        lines: 2,
        why: "one slot line (value and sequence word) each way; the consumer's `tail` line \
              moves once per 64 slots, which this leaves out",
    },
    Protocol {
        suite: "inproc",
        figure: "pingpong/fastforward",
        floor: "floor/threads",
        lines: 2,
        why: "one slot line (value and full flag) each way; flags go back once per 64-slot run, \
              which this leaves out",
    },
    Protocol {
        suite: "inproc",
        figure: "pingpong/lamport",
        floor: "floor/threads",
        lines: 4,
        why: "each way the published `head` line, which the consumer waits on, and the slot \
              line it then reads; the `tail` line moves only when the producer's cached room \
              runs out",
    },
    Protocol {
        suite: "inproc",
        figure: "pingpong/rtrb",
        floor: "floor/threads",
        lines: 4,
        why: "each way the producer's write index (published per push), which the consumer \
              waits on, and the slot line it then reads",
    },
];

/// A limit computed from measured primitives, and how far the measurement
/// is from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    /// The suite of the measured figure.
    pub suite: String,
    /// The measured figure.
    pub figure: String,
    /// The calculation, written out with the run's numbers.
    pub calculation: String,
    /// What the calculation assumes.
    pub assumption: String,
    /// The limit, in the figure's unit (`ns` per round trip or `ops/s`).
    pub limit: f64,
    /// The figure's median, same unit.
    pub measured: f64,
    /// `ns` or `ops/s`.
    pub unit: String,
}

impl Limit {
    /// How far the measurement is from the limit: measured time ÷ limit
    /// time (above 1: slower than the limit).
    pub fn distance(&self) -> f64 {
        if self.unit == "ops/s" {
            self.limit / self.measured
        } else {
            self.measured / self.limit
        }
    }
}

/// The shared-memory limits (ipc, inproc) of the run.
pub fn cache_line_limits(run: &Run, suite: &str) -> Vec<Limit> {
    PROTOCOLS
        .iter()
        .filter(|p| p.suite == suite)
        .filter_map(|p| {
            let measured = ns(run, p.suite, p.figure)?;
            let floor = ns(run, p.suite, p.floor)?;
            // The floor is one round trip of two lines (ping, pong).
            let per_transfer = floor / 2.0;
            let limit = f64::from(SERIAL_TRANSFERS) * per_transfer;
            Some(Limit {
                suite: p.suite.into(),
                figure: p.figure.into(),
                calculation: format!(
                    "{SERIAL_TRANSFERS} transfers in sequence × ({} {} ÷ 2 transfers) = \
                     {SERIAL_TRANSFERS} × {} = {}",
                    p.floor,
                    crate::format::ns(floor),
                    crate::format::ns(per_transfer),
                    crate::format::ns(limit)
                ),
                assumption: format!(
                    "{} lines change cores per round trip: {}; the round trip waits for one \
                     each way",
                    p.lines, p.why
                ),
                limit,
                measured,
                unit: "ns".into(),
            })
        })
        .collect()
}

/// copyrpc's limits: a call and its reply cannot beat one raw WRITE_IMM
/// each way (ping-pong), and without batching it cannot beat the raw
/// WRITE_IMM rate of the same shape.
pub fn copyrpc_limits(run: &Run) -> Vec<Limit> {
    let mut v = Vec::new();
    for place in ["inproc", "cross"] {
        let pp = format!("pingpong/{place}-copyrpc");
        let raw = format!("pingpong/{place}-raw");
        if let (Some(m), Some(r)) = (ns(run, "copyrpc", &pp), ns(run, "copyrpc", &raw)) {
            v.push(Limit {
                suite: "copyrpc".into(),
                figure: pp,
                calculation: format!("1 WRITE_IMM each way = {raw} = {}", crate::format::ns(r)),
                assumption: "a call and its reply are one WRITE_IMM each way on the same device; \
                             copyrpc's framing and credit work add to it"
                    .into(),
                limit: r,
                measured: m,
                unit: "ns".into(),
            });
        }
        let shape = "8x256";
        let rate = format!("rate/{place}-copyrpc-{shape}");
        let raw = format!("rate/{place}-raw-{shape}");
        if let (Some(m), Some(r)) = (fig(run, "copyrpc", &rate), fig(run, "copyrpc", &raw)) {
            v.push(Limit {
                suite: "copyrpc".into(),
                figure: rate,
                calculation: format!(
                    "raw WRITE_IMM round trips at {shape} = {raw} = {}",
                    crate::format::rate(r.median)
                ),
                assumption: "one WRITE_IMM per call each way; copyrpc passes this limit only by \
                             batching several calls into one WRITE_IMM (a distance below 1× \
                             is batching at work)"
                    .into(),
                limit: r.median,
                measured: m.median,
                unit: "ops/s".into(),
            });
        }
    }
    v
}

/// The benchkv critical path of one sweep point, summed from the layers'
/// own latencies.
#[derive(Debug, Clone, PartialEq)]
pub struct CriticalPath {
    /// The point.
    pub point: KvPoint,
    /// (hop, figure used, its latency, share of requests taking the hop).
    pub hops: Vec<(String, String, f64, f64)>,
    /// Σ share × latency: the expected request latency, ns.
    pub latency_ns: f64,
    /// Requests in flight in the whole system: ranks × clients × depth.
    pub in_flight: u32,
    /// in_flight ÷ latency: the throughput the path implies (Little's law).
    pub implied_ops_per_s: f64,
}

/// The network round trip figure of a benchkv backend, if a suite measures
/// it (between two processes, as benchkv's two ranks on one host): copyrpc's
/// own suite, and UCX-AM through the same `UcxNet` in the `ucx` suite.
/// `ucx-am` with `UCX_TLS` left to the environment has none.
pub fn network_figure(backend: &str) -> Option<(&'static str, &'static str)> {
    match backend {
        "copyrpc" => Some(("copyrpc", "pingpong/cross-copyrpc")),
        "ucx-am:shm" => Some(("ucx", "pingpong/ucx-am-shm")),
        "ucx-am:tcp" => Some(("ucx", "pingpong/ucx-am-tcp")),
        _ => None,
    }
}

/// The critical path of `p`, if every hop it takes has a measured figure.
pub fn critical_path(run: &Run, p: &KvPoint) -> Option<CriticalPath> {
    let total = (p.local + p.flux + p.remote).max(1) as f64;
    let ipc = if p.client_procs {
        "pingpong/processes"
    } else {
        "pingpong/threads"
    };
    let mut hops = vec![(
        "client ↔ daemon (ipc)".to_string(),
        format!("ipc {ipc}"),
        ns(run, "ipc", ipc)?,
        1.0,
    )];
    if p.flux > 0 {
        // benchkv's Flux mesh runs on onesided channels (daemon.rs).
        hops.push((
            "daemon ↔ daemon (Flux)".into(),
            "inproc pingpong/onesided".into(),
            ns(run, "inproc", "pingpong/onesided")?,
            p.flux as f64 / total,
        ));
    }
    if p.remote > 0 {
        let (suite, name) = network_figure(&p.backend)?;
        hops.push((
            "rank ↔ rank (network)".into(),
            format!("{suite} {name}"),
            ns(run, suite, name)?,
            p.remote as f64 / total,
        ));
    }
    let latency_ns: f64 = hops.iter().map(|h| h.2 * h.3).sum();
    let in_flight = p.ranks * p.clients * p.depth;
    Some(CriticalPath {
        point: p.clone(),
        hops,
        latency_ns,
        in_flight,
        implied_ops_per_s: f64::from(in_flight) * 1e9 / latency_ns,
    })
}

/// One row of the cross-layer table.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// The layer.
    pub name: String,
    /// Its ping-pong figure and median round trip, ns.
    pub pingpong: Option<(String, f64)>,
    /// Its best pipelined figure and that figure's ns per operation.
    pub pipelined: Option<(String, f64)>,
    /// The layer below and its round trip, ns.
    pub below: Option<(String, f64)>,
}

/// The best (lowest ns per operation) throughput figure of a suite whose
/// name starts with one of `prefixes`.
fn best_pipelined(run: &Run, suite: &str, prefixes: &[&str]) -> Option<(String, f64)> {
    run.suites
        .iter()
        .find(|s| s.suite == suite)?
        .figures
        .iter()
        .filter(|f| f.kind == Kind::Throughput && prefixes.iter().any(|p| f.name.starts_with(p)))
        .min_by(|a, b| a.ns_per_op.total_cmp(&b.ns_per_op))
        .map(|f| (format!("{suite} {}", f.name), f.ns_per_op))
}

fn named(run: &Run, suite: &str, name: &str) -> Option<(String, f64)> {
    ns(run, suite, name).map(|v| (format!("{suite} {name}"), v))
}

/// The cross-layer table: each layer's ping-pong and best pipelined cost,
/// and the layer below it.
pub fn layers(run: &Run) -> Vec<Layer> {
    let kv_pp = run
        .benchkv
        .iter()
        .filter(|p| p.backend == "copyrpc" && p.depth == 1)
        .min_by_key(|p| p.clients)
        .map(|p| {
            (
                format!("benchkv copyrpc c{} q1 p50", p.clients),
                p.p50_ns as f64,
            )
        });
    let kv_best = run
        .benchkv
        .iter()
        .filter(|p| p.backend == "copyrpc")
        .filter_map(|p| {
            let m = crate::format::median(&p.run_ops_per_s);
            (m > 0.0).then(|| {
                (
                    format!("benchkv copyrpc c{} q{}", p.clients, p.depth),
                    1e9 / m,
                )
            })
        })
        .min_by(|a, b| a.1.total_cmp(&b.1));
    vec![
        Layer {
            name: "inproc (thread to thread)".into(),
            pingpong: named(run, "inproc", "pingpong/onesided"),
            pipelined: best_pipelined(run, "inproc", &["spsc_throughput/"]),
            below: named(run, "inproc", "floor/threads"),
        },
        Layer {
            name: "ipc (process to process)".into(),
            pingpong: named(run, "ipc", "pingpong/processes"),
            pipelined: best_pipelined(run, "ipc", &["multi_client/"]),
            below: named(run, "ipc", "floor/processes"),
        },
        Layer {
            name: "mlx5 raw WRITE_IMM (two processes)".into(),
            pingpong: named(run, "mlx5", "pingpong/cross-shm-1x1"),
            pipelined: best_pipelined(run, "mlx5", &["rate/cross-shm-"]),
            below: named(run, "ipc", "floor/processes"),
        },
        Layer {
            name: "copyrpc (two processes)".into(),
            pingpong: named(run, "copyrpc", "pingpong/cross-copyrpc"),
            pipelined: best_pipelined(run, "copyrpc", &["rate/cross-copyrpc"]),
            below: named(run, "copyrpc", "pingpong/cross-raw"),
        },
        Layer {
            name: "benchkv over copyrpc (two ranks)".into(),
            pingpong: kv_pp,
            pipelined: kv_best,
            below: named(run, "copyrpc", "pingpong/cross-copyrpc"),
        },
    ]
}
/// The limits of mlx5's cross-process figures, which always run on the
/// software device: the ping-pong is at least the in-process one plus a
/// cache-line round trip between the processes, a 1 MiB operation at least
/// the cross-core copy floor.
pub fn mlx5_limits(run: &Run) -> Vec<Limit> {
    let mut limits = Vec::new();
    if let (Some(pp), Some(inproc), Some(floor)) = (
        ns(run, "mlx5", "pingpong/cross-shm-1x1"),
        ns(run, "mlx5", "pingpong/inproc-1x1"),
        ns(run, "ipc", "floor/processes"),
    ) {
        limits.push(Limit {
            suite: "mlx5".into(),
            figure: "pingpong/cross-shm-1x1".into(),
            calculation: format!(
                "pingpong/inproc-1x1 {} + ipc floor/processes {} = {}",
                format::ns(inproc),
                format::ns(floor),
                format::ns(inproc + floor)
            ),
            assumption: "an estimate, not a strict bound: across processes the software \
                         device does the work of the in-process ping-pong (whose figure also \
                         holds passes that find nothing, which a peer polling on its own core \
                         does not wait for), and its frames cross shared memory once each \
                         way: one cache-line round trip between the processes more; on \
                         hardware the bound is the NIC's, which only two real hosts measure"
                .into(),
            limit: inproc + floor,
            measured: pp,
            unit: "ns".into(),
        });
    }
    if let Some(copy) = ns(run, "mlx5", "bw/floor-cross-core-copy") {
        for fig in ["bw/cross-shm-write", "bw/cross-shm-read"] {
            if let Some(bw) = ns(run, "mlx5", fig) {
                limits.push(Limit {
                    suite: "mlx5".into(),
                    figure: fig.into(),
                    calculation: format!("bw/floor-cross-core-copy = {} per MiB", format::ns(copy)),
                    assumption: "every byte of a 1 MiB operation between two processes is \
                                 written on one core and copied out on the other at least \
                                 once (the shared-memory ring); the floor measures that \
                                 pipeline with no device"
                        .into(),
                    limit: copy,
                    measured: bw,
                    unit: "ns".into(),
                });
            }
        }
    }
    limits
}
