//! Results: what each rank measured, gathered to rank 0 as JSON bytes over
//! MPI, merged into the report (JSON file with a metadata block, and a
//! printed table).

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::client::histogram;
use crate::error::Error;
use crate::floor::{Canary, Floors};

/// The report's schema name and version (the `schema` field).
/// `benchkv/2` added the floors (`floors`, `canary`, `vs_floors`).
pub const SCHEMA: &str = "benchkv/3";

/// Fails at once when the report cannot be written to `path`: its
/// directory is missing, or the path is a directory (checked before a run,
/// which would otherwise be lost at its end).
pub fn check_output_path(path: &std::path::Path) -> Result<(), crate::Error> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let why = if path.is_dir() {
        "it is a directory"
    } else if !dir.is_dir() {
        "its directory does not exist"
    } else {
        return Ok(());
    };
    Err(crate::Error::Io {
        op: "checking where the JSON report goes, before the run",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, why),
    })
}

/// A histogram as (value, count) pairs of its recorded buckets: what
/// travels over MPI.
pub fn hist_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Rebuilds a histogram from [`hist_pairs`].
pub fn hist_from_pairs(pairs: &[(u64, u64)]) -> Histogram<u64> {
    let mut h = histogram();
    for &(v, c) in pairs {
        h.saturating_record_n(v, c);
    }
    h
}

/// One rank's measurement of one run (clients merged).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RankRun {
    /// Operations completed in the measured window.
    pub ops: u64,
    /// The measured window, seconds.
    pub seconds: f64,
    /// Latency histogram, (ns, count) pairs.
    pub hist: Vec<(u64, u64)>,
    /// GETs that did not return the last PUT (verify mode).
    pub mismatches: u64,
    /// Responses with a status other than OK.
    pub bad_status: u64,
    /// The first mismatches, described.
    pub examples: Vec<String>,
}

/// What one rank sends to rank 0 at the end.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RankReport {
    /// The rank.
    pub rank: u32,
    /// Its host name.
    pub host: String,
    /// CPUs it may run on (its affinity).
    pub cpus_allowed: usize,
    /// The network transport its daemons used.
    pub transport: String,
    /// Each run.
    pub runs: Vec<RankRun>,
    /// What each of its daemons did.
    pub daemons: Vec<Counts>,
}

/// What one daemon did, as the report carries it.
pub use crate::daemon::DaemonCounts as Counts;

/// Throughput and latency of one group of operations.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Figures {
    /// Operations measured.
    pub ops: u64,
    /// Operations per second.
    pub ops_per_s: f64,
    /// Median latency, ns.
    pub p50_ns: u64,
    /// 99th percentile, ns.
    pub p99_ns: u64,
    /// 99.9th percentile, ns.
    pub p999_ns: u64,
    /// Mean, ns.
    pub mean_ns: f64,
    /// Largest, ns.
    pub max_ns: u64,
}

impl Figures {
    /// The figures of `ops` operations over `seconds` with latencies `h`.
    pub fn of(ops: u64, seconds: f64, h: &Histogram<u64>) -> Figures {
        let q = |x: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(x)
            }
        };
        Figures {
            ops,
            ops_per_s: if seconds > 0.0 {
                ops as f64 / seconds
            } else {
                0.0
            },
            p50_ns: q(0.5),
            p99_ns: q(0.99),
            p999_ns: q(0.999),
            mean_ns: if h.is_empty() { 0.0 } else { h.mean() },
            max_ns: if h.is_empty() { 0 } else { h.max() },
        }
    }
}

/// One rank in one run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RankFigures {
    /// The rank.
    pub rank: u32,
    /// Its host.
    pub host: String,
    /// Its figures.
    #[serde(flatten)]
    pub figures: Figures,
}

/// One run over all ranks.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunFigures {
    /// Run number, from 0.
    pub run: u32,
    /// Each rank.
    pub ranks: Vec<RankFigures>,
    /// All ranks: summed throughput, merged latencies.
    pub total: Figures,
}

/// The run's machine, software and parameters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Metadata {
    /// Host name of each rank.
    pub hosts: Vec<String>,
    /// CPU model (of rank 0's host).
    pub cpu: String,
    /// CPUs online on rank 0's host.
    pub cores: usize,
    /// CPUs each rank may run on (`mpirun` binds a rank to one core
    /// unless told `--bind-to none`).
    pub cpus_allowed: Vec<usize>,
    /// Kernel release (of rank 0's host).
    pub kernel: String,
    /// `MLX5_DEVICE` as set (`auto` when unset).
    pub device_selection: String,
    /// The backend (`copyrpc`, `ucx-am`, `ucx-am:tcp`, ...).
    pub backend: String,
    /// The transport each rank's daemons used (device, or UCX transports).
    pub transport: Vec<String>,
    /// `UCX_TLS` as set in the environment, if it is.
    pub ucx_tls_env: Option<String>,
    /// The MPI library.
    pub mpi: String,
    /// `git describe` of the source tree.
    pub git: String,
    /// When the run ended (UTC, RFC 3339).
    pub date: String,
    /// Busy threads (daemons and clients) on the busiest host.
    pub busy_threads_per_host: usize,
    /// Said when busy threads outnumber the cores.
    pub note: Option<String>,
    /// Every parameter, by name.
    pub params: Vec<(String, String)>,
}

/// The whole report of one run of benchkv (one point of a sweep).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// [`SCHEMA`].
    pub schema: String,
    /// Machine, software, parameters.
    pub metadata: Metadata,
    /// Each measured run.
    pub runs: Vec<RunFigures>,
    /// All runs merged: per rank, then in total.
    pub summary: Vec<RankFigures>,
    /// All runs and ranks merged.
    pub total: Figures,
    /// Total throughput of each run (to see the spread).
    pub run_ops_per_s: Vec<f64>,
    /// What each daemon did, per rank.
    pub daemons: Vec<Vec<Counts>>,
    /// Verify mode: mismatches over every rank and run.
    pub mismatches: u64,
    /// Responses with a status other than OK.
    pub bad_status: u64,
    /// The first mismatches or bad statuses, described.
    pub examples: Vec<String>,
    /// The floors measured in the same run ([`crate::floor`]).
    pub floors: Option<Floors>,
    /// Rank 0's canary before and after this run or point.
    pub canary: Option<Canary>,
    /// The total figures against the floors.
    pub vs_floors: Option<Ratios>,
}

impl Report {
    /// Why this report is not a measurement, if it is not: verify
    /// mismatches, responses with an error status, or a rank that
    /// completed nothing in a run's measured window. Its JSON is still
    /// written (to look at); the run exits with this error.
    pub fn failure(&self) -> Option<Error> {
        let first = || self.examples.join("\n  ");
        if self.mismatches > 0 {
            return Some(Error::Verify {
                count: self.mismatches,
                first: first(),
            });
        }
        if self.bad_status > 0 {
            return Some(Error::BadStatus {
                count: self.bad_status,
                first: first(),
            });
        }
        self.runs.iter().find_map(|r| {
            r.ranks
                .iter()
                .find(|k| k.figures.ops == 0)
                .map(|k| Error::EmptyWindow {
                    run: r.run,
                    rank: k.rank,
                })
        })
    }
}

/// The total figures of a run against the floors of the same run: each
/// a plain ratio (ops/s ÷ floor rate: below 1 is slower than the floor;
/// latency ÷ floor round trip: above 1 is slower).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Ratios {
    /// Ops/s that crossed ranks (the total's share the daemons forwarded
    /// to another rank: each a request and its response, a round trip)
    /// ÷ raw WRITE_IMM round trips per second (pipelined, rank 0
    /// initiating, rank 1 echoing). The ops served on their own rank
    /// never touch the device, so the total's ops/s would be no measure
    /// against it.
    pub remote_ops_vs_raw_rate: Option<f64>,
    /// p50 ÷ raw WRITE_IMM ping-pong round trip (its median).
    pub p50_vs_raw_round_trip: Option<f64>,
    /// p99 ÷ raw WRITE_IMM ping-pong round trip (its median).
    pub p99_vs_raw_round_trip: Option<f64>,
    /// Total ops/s ÷ cache-line round trips per second (one line bounced
    /// serially between the two cores).
    pub ops_vs_cache_line_rate: f64,
    /// p50 ÷ cache-line round trip.
    pub p50_vs_cache_line: f64,
}

impl Ratios {
    /// `total` against `floors`; `remote_share` is the fraction of the
    /// operations that crossed ranks.
    pub fn of(total: &Figures, floors: &Floors, remote_share: f64) -> Ratios {
        let div = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let raw = floors.write_imm.as_ref();
        Ratios {
            remote_ops_vs_raw_rate: raw
                .map(|w| div(total.ops_per_s * remote_share, w.round_trips_per_s)),
            p50_vs_raw_round_trip: raw
                .map(|w| div(total.p50_ns as f64, w.round_trip_p50_ns as f64)),
            p99_vs_raw_round_trip: raw
                .map(|w| div(total.p99_ns as f64, w.round_trip_p50_ns as f64)),
            ops_vs_cache_line_rate: total.ops_per_s * floors.cache_line_ns / 1e9,
            p50_vs_cache_line: div(total.p50_ns as f64, floors.cache_line_ns),
        }
    }
}

/// A ratio as printed (`0.42×`), or `-` when there is none.
pub fn times(x: Option<f64>) -> String {
    match x {
        Some(x) if x >= 100.0 => format!("{x:.0}×"),
        Some(x) if x >= 10.0 => format!("{x:.1}×"),
        Some(x) => format!("{x:.2}×"),
        None => "-".into(),
    }
}

/// The floors in one line for tables.
pub fn floors_line(f: &Floors) -> String {
    let raw = match (&f.write_imm, &f.write_imm_missing) {
        (Some(w), _) => format!(
            "raw WRITE_IMM ({} B inline) on mlx5 {} ({}={}) between ranks 0 and 1: round trip p50 {} (mean {}), {} round trips/s with {} in flight",
            w.payload_bytes,
            w.device,
            mlx5::ENV,
            w.selection,
            ns(w.round_trip_p50_ns),
            ns(w.round_trip_mean_ns as u64),
            rate(w.round_trips_per_s),
            w.depth
        ),
        (None, Some(why)) => format!("no raw WRITE_IMM floor: {why}"),
        (None, None) => "no raw WRITE_IMM floor".into(),
    };
    format!(
        "floors (measured {}): cache-line round trip {:.0} ns between {}; {}; canary {:.0} ns{}",
        f.measured,
        f.cache_line_ns,
        f.cache_line_between,
        raw,
        f.canary_ns,
        if f.canary_between.is_empty() {
            String::new()
        } else {
            format!(" ({})", f.canary_between)
        }
    )
}

impl Report {
    /// Attaches the floors of the same run and rank 0's canary around it,
    /// and the total figures' ratios to them.
    pub fn with_floors(mut self, floors: Floors, canary: Option<Canary>) -> Report {
        self.vs_floors = Some(Ratios::of(&self.total, &floors, self.remote_share()));
        self.floors = Some(floors);
        self.canary = canary;
        self
    }

    /// The fraction of the client requests that the daemons forwarded to
    /// another rank (over every run, warm-up included: a share, which the
    /// window does not change beyond noise).
    pub fn remote_share(&self) -> f64 {
        let (mut remote, mut all) = (0u64, 0u64);
        for d in self.daemons.iter().flatten() {
            remote += d.remote;
            all += d.local + d.flux + d.remote;
        }
        if all == 0 {
            0.0
        } else {
            remote as f64 / all as f64
        }
    }

    /// Merges the ranks' reports (in rank order).
    pub fn build(metadata: Metadata, ranks: &[RankReport]) -> Report {
        let nruns = ranks.iter().map(|r| r.runs.len()).min().unwrap_or(0);
        let mut runs = Vec::new();
        let mut all = histogram();
        let mut per_rank: Vec<(Histogram<u64>, u64, f64)> =
            ranks.iter().map(|_| (histogram(), 0, 0.0)).collect();
        let (mut total_ops, mut total_secs) = (0u64, 0.0f64);
        for run in 0..nruns {
            let mut run_hist = histogram();
            let mut figs = Vec::new();
            let mut ops_per_s = 0.0;
            let mut ops = 0;
            let mut secs: f64 = 0.0;
            for (i, r) in ranks.iter().enumerate() {
                let rr = &r.runs[run];
                let h = hist_from_pairs(&rr.hist);
                let f = Figures::of(rr.ops, rr.seconds, &h);
                ops_per_s += f.ops_per_s;
                ops += rr.ops;
                secs = secs.max(rr.seconds);
                run_hist.add(&h).expect("same histogram bounds");
                per_rank[i].0.add(&h).expect("same histogram bounds");
                per_rank[i].1 += rr.ops;
                per_rank[i].2 += rr.seconds;
                figs.push(RankFigures {
                    rank: r.rank,
                    host: r.host.clone(),
                    figures: f,
                });
            }
            let mut total = Figures::of(ops, secs, &run_hist);
            total.ops_per_s = ops_per_s;
            all.add(&run_hist).expect("same histogram bounds");
            total_ops += ops;
            total_secs += secs;
            runs.push(RunFigures {
                run: run as u32,
                ranks: figs,
                total,
            });
        }
        let summary: Vec<RankFigures> = ranks
            .iter()
            .zip(&per_rank)
            .map(|(r, (h, ops, secs))| RankFigures {
                rank: r.rank,
                host: r.host.clone(),
                figures: Figures::of(*ops, *secs, h),
            })
            .collect();
        let mut total = Figures::of(total_ops, total_secs, &all);
        total.ops_per_s = summary.iter().map(|s| s.figures.ops_per_s).sum();
        let mut examples = Vec::new();
        for r in ranks {
            for rr in &r.runs {
                examples.extend(rr.examples.iter().cloned());
            }
        }
        examples.truncate(16);
        Report {
            schema: SCHEMA.into(),
            metadata,
            run_ops_per_s: runs.iter().map(|r| r.total.ops_per_s).collect(),
            runs,
            summary,
            total,
            daemons: ranks.iter().map(|r| r.daemons.clone()).collect(),
            mismatches: ranks
                .iter()
                .flat_map(|r| &r.runs)
                .map(|r| r.mismatches)
                .sum(),
            bad_status: ranks
                .iter()
                .flat_map(|r| &r.runs)
                .map(|r| r.bad_status)
                .sum(),
            examples,
            floors: None,
            canary: None,
            vs_floors: None,
        }
    }

    /// With `--round-costs`, a line per daemon: its busy and idle rounds,
    /// what each kind cost on average, and its busy time per request it
    /// handled (its clients' and other daemons'). Empty without.
    pub fn rounds_lines(&self) -> String {
        let mut s = String::new();
        for (rank, daemons) in self.daemons.iter().enumerate() {
            for (d, c) in daemons.iter().enumerate() {
                let Some(r) = c.rounds else { continue };
                if s.is_empty() {
                    s += "daemon rounds (--round-costs; over the whole run, warm-up included; \
                          each round's two counter reads included; \"net\": the network backend's \
                          part, its calls and poll):\n";
                }
                let mean = |t: u64, n: u64| ns(t / n.max(1));
                let handled = c.local + c.flux + c.remote + c.served_flux + c.served_remote;
                let _ = writeln!(
                    s,
                    "rank {rank} daemon {d}: {} busy rounds of {} on average (net {}), {} idle \
                     rounds of {} (net {}); busy time per request handled {}",
                    rate(r.busy_rounds as f64),
                    mean(r.busy_ns, r.busy_rounds),
                    mean(r.busy_net_ns, r.busy_rounds),
                    rate(r.idle_rounds as f64),
                    mean(r.idle_ns, r.idle_rounds),
                    mean(r.idle_net_ns, r.idle_rounds),
                    mean(r.busy_ns, handled),
                );
            }
        }
        s
    }

    /// The printed table: a heading line, one row per rank and the total
    /// (all runs merged), then each run's total throughput.
    pub fn table(&self) -> String {
        let m = &self.metadata;
        let param = |k: &str| {
            m.params
                .iter()
                .find(|(n, _)| n == k)
                .map_or("?", |(_, v)| v.as_str())
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            "benchkv {}: {} rank(s) × ({} daemon(s) + {} client(s), depth {}), {} keys/rank, {} B values, read ratio {}, {} keys; {} run(s) of {} s after {} s warm-up",
            m.backend,
            m.hosts.len(),
            param("daemons"),
            param("clients"),
            param("depth"),
            param("keys"),
            param("value_size"),
            param("read_ratio"),
            param("dist"),
            param("runs"),
            param("duration_s"),
            param("warmup_s"),
        );
        let _ = writeln!(
            s,
            "transport: {}; {}; {} CPUs (ranks may use {:?}), kernel {}; {}; git {}; {}",
            dedup(&m.transport),
            m.cpu,
            m.cores,
            m.cpus_allowed,
            m.kernel,
            m.mpi,
            m.git,
            m.date
        );
        if let Some(n) = &m.note {
            let _ = writeln!(s, "note: {n}");
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "| rank | host | ops/s | p50 | p99 | p99.9 | ops |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        let row = |s: &mut String, who: &str, host: &str, f: &Figures| {
            let _ = writeln!(
                s,
                "| {who} | {host} | {} | {} | {} | {} | {} |",
                rate(f.ops_per_s),
                ns(f.p50_ns),
                ns(f.p99_ns),
                ns(f.p999_ns),
                f.ops
            );
        };
        for r in &self.summary {
            row(&mut s, &r.rank.to_string(), &r.host, &r.figures);
        }
        row(&mut s, "total", "", &self.total);
        let rounds = self.rounds_lines();
        if !rounds.is_empty() {
            let _ = write!(s, "\n{rounds}");
        }
        if let (Some(f), Some(r)) = (&self.floors, &self.vs_floors) {
            let _ = writeln!(s, "\n{}", floors_line(f));
            let _ = writeln!(
                s,
                "total against them: remote ops/s ÷ raw WRITE_IMM rate {}, p50 ÷ raw round trip {}, p99 ÷ raw round trip {}, ops/s ÷ cache-line rate {}, p50 ÷ cache-line round trip {}",
                times(r.remote_ops_vs_raw_rate),
                times(r.p50_vs_raw_round_trip),
                times(r.p99_vs_raw_round_trip),
                times(Some(r.ops_vs_cache_line_rate)),
                times(Some(r.p50_vs_cache_line)),
            );
        }
        if let Some(c) = &self.canary {
            let _ = writeln!(
                s,
                "canary before/after: {:.0} / {:.0} ns{}",
                c.before_ns,
                c.after_ns,
                if c.slow {
                    format!(
                        " (slow phase of the host: over {}× the floors' canary)",
                        crate::floor::SLOW_FACTOR
                    )
                } else {
                    String::new()
                }
            );
        }
        if self.runs.len() > 1 {
            let per: Vec<String> = self.run_ops_per_s.iter().map(|&x| rate(x)).collect();
            let _ = writeln!(s, "\nper run (ops/s, all ranks): {}", per.join(", "));
        }
        if m.params.iter().any(|(k, v)| k == "verify" && v == "true") {
            let _ = writeln!(
                s,
                "\nverify: {} mismatch(es) over {} operations",
                self.mismatches, self.total.ops
            );
        }
        s
    }
}

fn dedup(v: &[String]) -> String {
    let mut u: Vec<&String> = Vec::new();
    for x in v {
        if !u.contains(&x) {
            u.push(x);
        }
    }
    u.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" | ")
}

/// Operations per second with a unit (`1.23 M`).
pub fn rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// Nanoseconds with a unit (`12.3 µs`).
pub fn ns(x: u64) -> String {
    if x >= 1_000_000 {
        format!("{:.2} ms", x as f64 / 1e6)
    } else if x >= 1_000 {
        format!("{:.1} µs", x as f64 / 1e3)
    } else {
        format!("{x} ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata() -> Metadata {
        Metadata {
            hosts: vec!["a".into(), "b".into()],
            cpu: "cpu".into(),
            cores: 2,
            cpus_allowed: vec![2, 2],
            kernel: "6.1".into(),
            device_selection: "soft:manual".into(),
            backend: "copyrpc".into(),
            transport: vec!["mlx5 soft0".into(), "mlx5 soft0".into()],
            ucx_tls_env: None,
            mpi: "Open MPI".into(),
            git: "abc".into(),
            date: "2026-01-01T00:00:00Z".into(),
            busy_threads_per_host: 4,
            note: Some("4 busy threads on 2 cores".into()),
            params: crate::params::Params::default()
                .pairs()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }

    fn rank(rank: u32, lat: u64, ops: u64) -> RankReport {
        let mut h = histogram();
        h.record_n(lat, ops).unwrap();
        RankReport {
            rank,
            host: format!("h{rank}"),
            cpus_allowed: 2,
            transport: "t".into(),
            runs: vec![
                RankRun {
                    ops,
                    seconds: 2.0,
                    hist: hist_pairs(&h),
                    mismatches: 0,
                    bad_status: 0,
                    examples: vec![],
                };
                2
            ],
            daemons: vec![Counts::default()],
        }
    }

    #[test]
    fn histograms_survive_their_pairs() {
        let mut h = histogram();
        for v in [1u64, 10, 1000, 123_456, 99_999_999] {
            h.record_n(v, v % 7 + 1).unwrap();
        }
        let back = hist_from_pairs(&hist_pairs(&h));
        assert_eq!(back.len(), h.len());
        for q in [0.0, 0.5, 0.99, 0.999, 1.0] {
            assert_eq!(back.value_at_quantile(q), h.value_at_quantile(q));
        }
    }

    #[test]
    fn ranks_merge_into_totals() {
        let r = Report::build(metadata(), &[rank(0, 1000, 100), rank(1, 3000, 300)]);
        assert_eq!(r.runs.len(), 2);
        assert_eq!(r.runs[0].ranks[0].figures.ops_per_s, 50.0);
        assert_eq!(r.runs[0].total.ops_per_s, 200.0, "throughputs add up");
        assert_eq!(r.runs[0].total.ops, 400);
        assert_eq!(r.total.ops, 800);
        assert_eq!(
            r.total.ops_per_s, 200.0,
            "the mean over runs, summed over ranks"
        );
        assert!(
            r.total.p50_ns >= 2990 && r.total.p50_ns <= 3010,
            "{}",
            r.total.p50_ns
        );
        assert_eq!(
            r.summary[1].figures.p50_ns,
            r.runs[0].ranks[1].figures.p50_ns
        );
        assert_eq!(r.run_ops_per_s, vec![200.0, 200.0]);
        let t = r.table();
        assert!(t.contains("| total |"), "{t}");
        assert!(t.contains("note: 4 busy threads"), "{t}");
    }

    /// A report is a measurement only if every check passed and every
    /// rank completed operations in every run's window; else its failure
    /// says which, mismatches first.
    #[test]
    fn a_failed_or_empty_run_is_not_a_measurement() {
        let good = Report::build(metadata(), &[rank(0, 1000, 100), rank(1, 3000, 300)]);
        assert!(good.failure().is_none());
        let mut bad = rank(1, 3000, 300);
        bad.runs[1].bad_status = 2;
        bad.runs[1].examples = vec!["key 7: OutOfRange".into()];
        let r = Report::build(metadata(), &[rank(0, 1000, 100), bad.clone()]);
        let e = r.failure().expect("bad statuses").to_string();
        assert!(
            e.starts_with("2 response(s) with an error status") && e.contains("key 7"),
            "{e}"
        );
        bad.runs[0].mismatches = 1;
        let r = Report::build(metadata(), &[rank(0, 1000, 100), bad]);
        let e = r.failure().expect("a mismatch").to_string();
        assert!(e.starts_with("verification failed: 1 mismatch"), "{e}");
        let mut idle = rank(0, 1000, 100);
        idle.runs[1].ops = 0;
        idle.runs[1].hist = hist_pairs(&histogram());
        let r = Report::build(metadata(), &[idle, rank(1, 3000, 300)]);
        let e = r.failure().expect("an empty window").to_string();
        assert!(
            e.starts_with("rank 0 completed no operation in the measured window of run 1"),
            "{e}"
        );
    }

    /// With `--round-costs` the table has a line per daemon with its
    /// rounds' mean costs and busy time per request, and the JSON carries
    /// them (`daemons[rank][d].rounds`); without, neither (the JSON of a
    /// plain run is unchanged).
    #[test]
    fn round_costs_are_printed_and_carried_only_when_measured() {
        let plain = Report::build(metadata(), &[rank(0, 1000, 100), rank(1, 3000, 300)]);
        assert!(plain.rounds_lines().is_empty());
        assert!(!plain.table().contains("daemon rounds"));
        let v = serde_json::to_value(&plain).unwrap();
        assert!(v["daemons"][0][0].get("rounds").is_none(), "{v}");
        let mut r1 = rank(1, 3000, 300);
        r1.daemons[0] = Counts {
            local: 600,
            served_remote: 400,
            rounds: Some(crate::daemon::RoundCosts {
                busy_rounds: 500,
                busy_ns: 1_000_000,
                busy_net_ns: 600_000,
                idle_rounds: 2000,
                idle_ns: 400_000,
                idle_net_ns: 300_000,
            }),
            ..Counts::default()
        };
        let timed = Report::build(metadata(), &[rank(0, 1000, 100), r1]);
        let t = timed.table();
        assert!(
            t.contains(
                "rank 1 daemon 0: 500 busy rounds of 2.0 µs on average (net 1.2 µs), 2.0 k \
                 idle rounds of 200 ns (net 150 ns); busy time per request handled 1.0 µs"
            ),
            "{t}"
        );
        assert!(!t.contains("rank 0 daemon 0"), "{t}");
        let v = serde_json::to_value(&timed).unwrap();
        assert_eq!(v["daemons"][1][0]["rounds"]["busy_ns"], 1_000_000);
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, timed, "the JSON reads back");
    }

    #[test]
    fn the_json_has_the_documented_fields() {
        let r = Report::build(metadata(), &[rank(0, 1000, 100), rank(1, 3000, 300)]);
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["schema"], SCHEMA);
        for k in [
            "hosts",
            "cpu",
            "cores",
            "cpus_allowed",
            "kernel",
            "device_selection",
            "backend",
            "transport",
            "ucx_tls_env",
            "mpi",
            "git",
            "date",
            "busy_threads_per_host",
            "note",
            "params",
        ] {
            assert!(v["metadata"].get(k).is_some(), "metadata.{k}");
        }
        for k in [
            "ops",
            "ops_per_s",
            "p50_ns",
            "p99_ns",
            "p999_ns",
            "mean_ns",
            "max_ns",
        ] {
            assert!(v["total"].get(k).is_some(), "total.{k}");
            assert!(
                v["runs"][0]["ranks"][0].get(k).is_some(),
                "runs[0].ranks[0].{k}"
            );
        }
        assert_eq!(v["runs"][0]["ranks"][1]["rank"], 1);
        assert_eq!(v["runs"][0]["ranks"][1]["host"], "h1");
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, r, "the JSON reads back");
    }

    /// The point the analysis report's parser is tested on
    /// (`report/tests/fixtures`, from a real run) is still what this
    /// crate writes: it reads back, and writes back the same fields. A
    /// change of the JSON fails here until the fixture (and the report's
    /// parser, and `SCHEMA`) follow.
    #[test]
    fn the_report_crates_fixture_is_this_schema() {
        let text = include_str!("../../report/tests/fixtures/benchkv-point.json");
        let fixture: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(fixture["schema"], SCHEMA);
        let r: Report = serde_json::from_value(fixture.clone()).expect("reads back");
        let again = serde_json::to_value(&r).unwrap();
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(&again), keys(&fixture));
        assert_eq!(keys(&again["metadata"]), keys(&fixture["metadata"]));
        assert_eq!(keys(&again["total"]), keys(&fixture["total"]));
    }

    fn floors(raw: bool) -> Floors {
        Floors {
            measured: "before the run".into(),
            cache_line_ns: 100.0,
            cache_line_between: "ranks 0 and 1 (processes) on cores 0 and 1".into(),
            canary_ns: 90.0,
            canary_between: "two threads of rank 0 on cores 0 and 1".into(),
            write_imm: raw.then(|| crate::floor::WriteImmFloor {
                device: "soft0".into(),
                selection: "soft:manual".into(),
                payload_bytes: 32,
                round_trips: 1000,
                round_trip_p50_ns: 500,
                round_trip_mean_ns: 550.0,
                depth: 64,
                round_trips_per_s: 400.0,
            }),
            write_imm_missing: (!raw).then(|| "rank 1: no device".into()),
        }
    }

    #[test]
    fn the_json_carries_the_floors_and_the_ratios_to_them() {
        // Half the requests of rank 0 and a quarter of rank 1's crossed
        // ranks: 3 of 8 in all.
        let mut ranks = [rank(0, 1000, 100), rank(1, 3000, 300)];
        ranks[0].daemons[0].local = 2;
        ranks[0].daemons[0].remote = 2;
        ranks[1].daemons[0].local = 1;
        ranks[1].daemons[0].flux = 2;
        ranks[1].daemons[0].remote = 1;
        let r = Report::build(metadata(), &ranks);
        assert_eq!(r.remote_share(), 3.0 / 8.0);
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for k in ["floors", "canary", "vs_floors"] {
            assert!(v[k].is_null(), "{k} before the floors are attached");
        }
        let r = r.with_floors(floors(true), Some(Canary::new(95.0, 300.0, &floors(true))));
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for k in [
            "measured",
            "cache_line_ns",
            "cache_line_between",
            "canary_ns",
            "canary_between",
            "write_imm",
            "write_imm_missing",
        ] {
            assert!(v["floors"].get(k).is_some(), "floors.{k}");
        }
        for k in [
            "device",
            "selection",
            "payload_bytes",
            "round_trips",
            "round_trip_p50_ns",
            "round_trip_mean_ns",
            "depth",
            "round_trips_per_s",
        ] {
            assert!(
                v["floors"]["write_imm"].get(k).is_some(),
                "floors.write_imm.{k}"
            );
        }
        assert_eq!(v["canary"]["slow"], true, "300 ns is over twice 90 ns");
        // 3/8 of 200 ops/s over 400 raw round trips/s; p50 of 3000 ns
        // (rank 1 has three quarters of the operations) over 500 ns.
        let q = &v["vs_floors"];
        assert_eq!(q["remote_ops_vs_raw_rate"], 200.0 * 3.0 / 8.0 / 400.0);
        let p50 = r.total.p50_ns as f64;
        assert_eq!(q["p50_vs_raw_round_trip"], p50 / 500.0);
        assert_eq!(q["p50_vs_cache_line"], p50 / 100.0);
        assert_eq!(q["ops_vs_cache_line_rate"], 200.0 * 100.0 / 1e9);
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, r, "the JSON reads back");
        let t = r.table();
        assert!(
            t.contains("floors (measured before the run): cache-line round trip 100 ns"),
            "{t}"
        );
        assert!(t.contains("remote ops/s ÷ raw WRITE_IMM rate 0.19×"), "{t}");
        assert!(t.contains("slow phase"), "{t}");
        // Without a device on a rank: the ratios to it are absent, said so.
        let r = Report::build(metadata(), &[rank(0, 1000, 100)]).with_floors(floors(false), None);
        let q = r.vs_floors.as_ref().unwrap();
        assert_eq!(q.remote_ops_vs_raw_rate, None);
        assert!(
            r.table()
                .contains("no raw WRITE_IMM floor: rank 1: no device")
        );
        assert!(r.table().contains("remote ops/s ÷ raw WRITE_IMM rate -"));
    }

    #[test]
    fn units() {
        assert_eq!(rate(1_234_567.0), "1.23 M");
        assert_eq!(rate(12_345.0), "12.3 k");
        assert_eq!(ns(12_345), "12.3 µs");
        assert_eq!(ns(999), "999 ns");
    }
}
