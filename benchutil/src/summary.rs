//! The interleaved summary: every figure of a bench, repeated in rounds
//! (A B C, A B C, … rather than A A A, B B B), each round bracketed by a
//! floor canary, rounds taken in a slow phase of the host dropped, and the
//! median of the rest reported.
//!
//! Why: on the shared two-core machines this workspace is measured on, the
//! host has phases lasting seconds in which the cache-line floor jumps to
//! several times its usual value (every report lists the canary of each
//! round). Interleaving puts every figure into every
//! phase alike, so ratios taken between figures of one round stay honest,
//! and the canary tells which rounds to distrust (DESIGN.md, decision 12).
//!
//! [`run`] only measures; each bench builds its own table from the
//! [`Medians`] (ratios to its floor and peers), declares the ratios it
//! reports ([`Medians::ratio`]), then hands the text to
//! [`Medians::write_report`], which writes the table and, beside it, the
//! JSON of every figure ([`SuiteRecord`]) that `bench-report` turns into
//! the analysis report.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::affinity::allowed_cpus;
use crate::counters::{Availability, Counters};

/// A round is dropped when its canary exceeds this multiple of the best
/// canary of the run, and the median canary too (see [`run`]).
pub const SLOW_FACTOR: f64 = 2.0;

/// Operations of a figure are divided by this in quick mode.
pub const QUICK_DIVISOR: u64 = 20;

/// The environment variable that puts every bench in quick mode
/// (`scripts/bench.sh --quick` sets it).
pub const QUICK_VAR: &str = "BENCH_QUICK";

/// The environment knobs every bench honours, named `<PREFIX>_ROUNDS`,
/// `<PREFIX>_VERBOSE`, `<PREFIX>_SKIP_CRITERION` and `<PREFIX>_SKIP_SUMMARY`
/// (for example `IPC_BENCH_ROUNDS`), and [`QUICK_VAR`], shared by all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knobs {
    /// Summary rounds (`_ROUNDS`, at least 1).
    pub rounds: usize,
    /// Print each figure's name as it is measured (`_VERBOSE` set).
    pub verbose: bool,
    /// Skip the criterion groups (`_SKIP_CRITERION` set).
    pub skip_criterion: bool,
    /// Skip the summary (`_SKIP_SUMMARY` set).
    pub skip_summary: bool,
    /// Quick mode ([`QUICK_VAR`] set): every figure does
    /// 1/[`QUICK_DIVISOR`] of its operations, so the whole pipeline can be
    /// checked in minutes. Its figures are noisier, and say so.
    pub quick: bool,
}

impl Knobs {
    /// Reads the knobs of `prefix` (such as `"IPC_BENCH"`); `rounds` is
    /// `default_rounds` unless `<PREFIX>_ROUNDS` holds a number.
    pub fn from_env(prefix: &str, default_rounds: usize) -> Self {
        let set = |name: &str| std::env::var_os(format!("{prefix}_{name}")).is_some();
        Self {
            rounds: std::env::var(format!("{prefix}_ROUNDS"))
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(default_rounds)
                .max(1),
            verbose: set("VERBOSE"),
            skip_criterion: set("SKIP_CRITERION"),
            skip_summary: set("SKIP_SUMMARY"),
            quick: std::env::var_os(QUICK_VAR).is_some(),
        }
    }
}

/// What a figure's time means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The time of one operation (a round trip): report nanoseconds.
    Latency,
    /// `iters` messages moved in the measured time: report messages (or
    /// calls) per second; the time per operation is the inverse rate.
    Throughput,
}

/// One figure of the summary: a closure that performs `iters` operations
/// and returns how long they took.
pub struct Item<'a> {
    id: String,
    iters: u64,
    kind: Kind,
    note: Option<String>,
    run: Box<dyn FnMut(u64) -> Duration + 'a>,
}

impl<'a> Item<'a> {
    /// A figure of `kind`, named `id` (criterion's `group/function` name by
    /// convention), measured as `run(iters)` once per round.
    pub fn new(
        id: impl Into<String>,
        kind: Kind,
        iters: u64,
        run: impl FnMut(u64) -> Duration + 'a,
    ) -> Self {
        Self {
            id: id.into(),
            iters: iters.max(1),
            kind,
            note: None,
            run: Box::new(run),
        }
    }

    /// A [`Kind::Latency`] figure.
    pub fn latency(
        id: impl Into<String>,
        iters: u64,
        run: impl FnMut(u64) -> Duration + 'a,
    ) -> Self {
        Self::new(id, Kind::Latency, iters, run)
    }

    /// A [`Kind::Throughput`] figure.
    pub fn throughput(
        id: impl Into<String>,
        iters: u64,
        run: impl FnMut(u64) -> Duration + 'a,
    ) -> Self {
        Self::new(id, Kind::Throughput, iters, run)
    }

    /// Attaches a remark for the table (an oversubscription warning, how a
    /// peer is driven); `None` leaves it without.
    pub fn note(mut self, note: Option<String>) -> Self {
        self.note = note;
        self
    }
}

/// One figure's result.
#[derive(Debug, Clone)]
pub struct Figure {
    /// The item's id.
    pub id: String,
    /// The item's kind.
    pub kind: Kind,
    /// Operations per round.
    pub iters: u64,
    /// The item's note.
    pub note: Option<String>,
    /// Median over the kept rounds of the nanoseconds per operation.
    pub ns: f64,
    /// Nanoseconds per operation of every round, dropped ones included.
    pub samples: Vec<f64>,
    /// Smallest and largest nanoseconds per operation over the kept rounds.
    pub range: (f64, f64),
    /// Counts per operation over the kept rounds, by counter name (empty
    /// when no counter opened; see [`Medians::counters`]).
    pub counters: BTreeMap<String, f64>,
}

impl Figure {
    /// Operations per second at the median (`1e9 / ns`).
    pub fn per_second(&self) -> f64 {
        1e9 / self.ns
    }
}

/// What [`run`] measured.
#[derive(Debug, Clone)]
pub struct Medians {
    /// Every item's figure, in the order given.
    pub figures: Vec<Figure>,
    /// Per round, the worse of the canaries before and after it (ns).
    pub canaries: Vec<f64>,
    /// Per round, whether it counts (its canary was within
    /// [`SLOW_FACTOR`] of the best, or at most the median; see [`run`]).
    pub kept: Vec<bool>,
    /// Which counters opened for this run, and why the others did not.
    pub counters: Availability,
    /// Quick mode (fewer operations per figure).
    pub quick: bool,
    /// The ratios the bench reports, declared with [`Medians::ratio`].
    pub ratios: Vec<Ratio>,
    /// Parameters the bench adds to its record's metadata
    /// ([`Medians::param`]).
    pub params: BTreeMap<String, String>,
}

/// A ratio a bench reports: its figure against another figure of the same
/// run (the floor, a peer, a lower layer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    /// The figure.
    pub figure: String,
    /// The figure it is compared with.
    pub against: String,
    /// What `against` is to `figure`: `floor`, `peer`, `baseline`.
    pub role: String,
    /// The figure's time per operation ÷ `against`'s (above 1: slower).
    pub time_ratio: f64,
}

impl Medians {
    /// The figure named `id`.
    pub fn get(&self, id: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.id == id)
    }

    /// Median nanoseconds per operation of the figure named `id`.
    ///
    /// # Panics
    ///
    /// If there is none: a bench's table names only its own items.
    pub fn ns(&self, id: &str) -> f64 {
        self.get(id)
            .unwrap_or_else(|| panic!("no summary figure named {id}"))
            .ns
    }

    /// Rounds measured.
    pub fn rounds(&self) -> usize {
        self.canaries.len()
    }

    /// Rounds dropped as slow-phase.
    pub fn dropped(&self) -> usize {
        self.kept.iter().filter(|&&k| !k).count()
    }

    /// The table's first line: `"<name> summary: median of K interleaved
    /// rounds (D dropped as slow-phase); <machine>"` and a blank line.
    pub fn preamble(&self, name: &str) -> String {
        format!(
            "{name} summary: median of {} interleaved rounds ({} dropped as slow-phase); {}\n\n",
            self.rounds() - self.dropped(),
            self.dropped(),
            machine()
        )
    }

    /// The canaries rounded to whole nanoseconds, one per round.
    pub fn canaries_ns(&self) -> Vec<u64> {
        self.canaries.iter().map(|c| c.round() as u64).collect()
    }

    /// Declares that the table reports `figure` against `against` (whose
    /// `role` is `floor`, `peer` or `baseline`), returning the figure's time
    /// per operation ÷ `against`'s. The JSON carries every declared ratio.
    ///
    /// # Panics
    ///
    /// If either figure is not in the summary.
    pub fn ratio(&mut self, figure: &str, against: &str, role: &str) -> f64 {
        let time_ratio = self.ns(figure) / self.ns(against);
        self.ratios.push(Ratio {
            figure: figure.to_string(),
            against: against.to_string(),
            role: role.to_string(),
            time_ratio,
        });
        time_ratio
    }

    /// Records `key = value` in the metadata of this suite's record (what
    /// the bench learned at run time, such as the device it opened).
    pub fn param(&mut self, key: &str, value: impl Into<String>) {
        self.params.insert(key.to_string(), value.into());
    }

    /// The machine-readable record of this summary as suite `name`.
    pub fn record(&self, name: &str) -> SuiteRecord {
        let mut metadata = Metadata::collect();
        metadata
            .params
            .extend(self.params.iter().map(|(k, v)| (k.clone(), v.clone())));
        let figures = self
            .figures
            .iter()
            .map(|f| FigureRecord::of(f, &self.ratios))
            .collect();
        SuiteRecord {
            suite: name.to_string(),
            metadata,
            rounds: self.rounds(),
            dropped: self.dropped(),
            all_slow: false,
            quick: self.quick,
            canaries_ns: self.canaries.clone(),
            kept: self.kept.clone(),
            counters: self.counters.clone(),
            figures,
        }
    }

    /// Prints `text` and writes it to `target/bench-summary/<name>.md`, and
    /// [`Medians::record`] to `<name>.json` beside it (see [`write_report`]).
    pub fn write_report(&self, name: &str, text: &str) {
        write_report(name, text);
        let json = serde_json::to_string_pretty(&self.record(name)).expect("a record serialises");
        write_summary_file(&format!("{name}.json"), &json);
    }
}

/// One figure in the JSON of a suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FigureRecord {
    /// The figure's id.
    pub name: String,
    /// Latency (one operation's time) or throughput (a rate).
    pub kind: Kind,
    /// `ns` for a latency, `ops/s` for a throughput.
    pub unit: String,
    /// Smallest over the kept rounds, in `unit`.
    pub min: f64,
    /// Median over the kept rounds, in `unit`.
    pub median: f64,
    /// Largest over the kept rounds, in `unit`.
    pub max: f64,
    /// Median nanoseconds per operation (the inverse rate of a throughput).
    pub ns_per_op: f64,
    /// Operations per round.
    pub iters: u64,
    /// Nanoseconds per operation of every round, dropped ones included.
    pub samples_ns: Vec<f64>,
    /// The bench's remark.
    pub note: Option<String>,
    /// The ratios the bench declared for this figure.
    pub ratios: Vec<Ratio>,
    /// Counts per operation, by counter (empty when none opened).
    pub counters: BTreeMap<String, f64>,
}

impl FigureRecord {
    fn of(f: &Figure, ratios: &[Ratio]) -> Self {
        let (lo, hi) = f.range;
        let (unit, min, median, max) = match f.kind {
            Kind::Latency => ("ns", lo, f.ns, hi),
            Kind::Throughput => ("ops/s", 1e9 / hi, 1e9 / f.ns, 1e9 / lo),
        };
        Self {
            name: f.id.clone(),
            kind: f.kind,
            unit: unit.to_string(),
            min,
            median,
            max,
            ns_per_op: f.ns,
            iters: f.iters,
            samples_ns: f.samples.clone(),
            note: f.note.clone(),
            ratios: ratios
                .iter()
                .filter(|r| r.figure == f.id)
                .cloned()
                .collect(),
            counters: f.counters.clone(),
        }
    }
}

/// The JSON a bench leaves in `target/bench-summary/<suite>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteRecord {
    /// The suite (`ipc`, `inproc`, `mlx5`, `copyrpc`, `ucx` for the same-host
    /// UCX-AM peer).
    pub suite: String,
    /// Where and how it ran.
    pub metadata: Metadata,
    /// Rounds measured.
    pub rounds: usize,
    /// Rounds dropped as slow-phase.
    pub dropped: usize,
    /// Whether every round was slow and none was dropped: the rule of runs
    /// before the median one (see [`keep_rounds`]), which keeps the rounds
    /// at or below the median canary, so always false since; kept so that
    /// earlier records read and render as they were.
    #[serde(default)]
    pub all_slow: bool,
    /// Quick mode.
    pub quick: bool,
    /// Per round, the worse canary (ns).
    pub canaries_ns: Vec<f64>,
    /// Per round, whether it counts.
    pub kept: Vec<bool>,
    /// Which counters opened, and why the others did not.
    pub counters: Availability,
    /// Every figure.
    pub figures: Vec<FigureRecord>,
}

/// The machine, software and settings of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Host name.
    pub host: String,
    /// CPU model.
    pub cpu: String,
    /// CPUs online.
    pub cores_online: usize,
    /// CPUs this process may run on.
    pub cpus_allowed: Vec<usize>,
    /// The two cores two-party figures use.
    pub core_pair: (usize, usize),
    /// Kernel release.
    pub kernel: String,
    /// `rustc -V` of the toolchain that runs in the workspace.
    pub toolchain: String,
    /// `git rev-parse --short HEAD`, with ` (with uncommitted changes)` if so.
    pub git: String,
    /// `MLX5_DEVICE` as set (`auto` when unset).
    pub device_selection: String,
    /// When it was collected (UTC, `YYYY-MM-DDTHH:MM:SSZ`).
    pub date: String,
    /// Every bench knob and harness constant in force, by name.
    pub params: BTreeMap<String, String>,
}

impl Metadata {
    /// This process's view of the machine, now.
    pub fn collect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let root = workspace_root();
        let cmd = |prog: &str, args: &[&str]| {
            std::process::Command::new(prog)
                .args(args)
                .current_dir(&root)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let mut git =
            cmd("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
        if cmd("git", &["diff", "--quiet", "HEAD", "--"]).is_none() && git != "unknown" {
            git.push_str(" (with uncommitted changes)");
        }
        let mut params = BTreeMap::new();
        for (k, v) in std::env::vars() {
            if k.ends_with("_BENCH_ROUNDS")
                || k.ends_with("_BENCH_SKIP_CRITERION")
                || k.ends_with("_BENCH_SKIP_SUMMARY")
                || k == QUICK_VAR
                || k.starts_with("UCX_")
            {
                params.insert(k, v);
            }
        }
        params.insert("slow_factor".into(), SLOW_FACTOR.to_string());
        params.insert("canary_trips".into(), crate::CANARY_TRIPS.to_string());
        params.insert("quick_divisor".into(), QUICK_DIVISOR.to_string());
        Self {
            host: crate::host_name(),
            cpu: crate::cpu_model(),
            cores_online: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .max(
                    cpuinfo
                        .lines()
                        .filter(|l| l.starts_with("processor"))
                        .count(),
                ),
            cpus_allowed: allowed_cpus(),
            core_pair: crate::core_pair(),
            kernel: crate::kernel_release(),
            toolchain: cmd("rustc", &["-V"]).unwrap_or_else(|| "unknown".into()),
            git,
            device_selection: std::env::var("MLX5_DEVICE").unwrap_or_else(|_| "auto".into()),
            date: utc_now(),
            params,
        }
    }
}

/// The current time, UTC, as `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// `secs` since the epoch as RFC 3339 UTC.
pub fn rfc3339(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The workspace root (benchutil's parent directory).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benchutil lives in the workspace")
        .to_path_buf()
}

/// `target/bench-summary` of the workspace, where every bench leaves its
/// table and JSON.
pub fn summary_dir() -> std::path::PathBuf {
    workspace_root().join("target/bench-summary")
}

fn write_summary_file(file: &str, text: &str) {
    let dir = summary_dir();
    let path = dir.join(file);
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
        eprintln!("could not write {}: {e}", path.display());
    }
}

/// Which rounds count, from each round's canary (see [`run`]): those
/// within [`SLOW_FACTOR`] of the best canary, and those at or below the
/// median one.
pub fn keep_rounds(canaries: &[f64]) -> Vec<bool> {
    let best = canaries.iter().copied().fold(f64::INFINITY, f64::min);
    let limit = (SLOW_FACTOR * best).max(median(canaries));
    let kept: Vec<bool> = canaries.iter().map(|&c| c <= limit).collect();
    if kept.contains(&true) {
        kept
    } else {
        // Only canaries that are no number (a broken canary): keep all.
        vec![true; canaries.len()]
    }
}

/// Measures every item once per round, in the order given, for
/// `knobs.rounds` rounds; `canary()` (nanoseconds, such as
/// [`canary_ns`](crate::canary_ns)) runs before and after each round.
/// A round whose worse canary exceeds [`SLOW_FACTOR`] times the best round's
/// and the median round's canary is dropped: never more than half the
/// rounds, so one round that read the canary far faster than the others
/// (the two vCPUs briefly on one physical core's two threads, say) does
/// not leave the figures resting on itself alone. Progress goes to stderr.
pub fn run(knobs: &Knobs, items: Vec<Item<'_>>, mut canary: impl FnMut() -> f64) -> Medians {
    let mut items = items;
    if knobs.quick {
        for it in &mut items {
            it.iters = (it.iters / QUICK_DIVISOR).max(1);
        }
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(knobs.rounds); items.len()];
    let mut counts: Vec<Vec<BTreeMap<String, u64>>> =
        vec![Vec::with_capacity(knobs.rounds); items.len()];
    let mut counters = Counters::open();
    let mut canaries = Vec::with_capacity(knobs.rounds);
    for r in 0..knobs.rounds {
        let before = canary();
        for ((it, s), c) in items.iter_mut().zip(&mut samples).zip(&mut counts) {
            if knobs.verbose {
                eprintln!("  {} x{}", it.id, it.iters);
            }
            counters.start();
            let d = (it.run)(it.iters);
            c.push(counters.stop());
            // No operation takes no time: a zero is a figure whose clock
            // was read in the wrong place, and its rate would be infinite.
            assert!(
                !d.is_zero(),
                "{}: {} operations measured as taking no time (its timing is broken)",
                it.id,
                it.iters
            );
            s.push(d.as_nanos() as f64 / it.iters as f64);
        }
        let after = canary();
        eprintln!(
            "summary round {}/{}: canary {before:.0} ns before, {after:.0} ns after",
            r + 1,
            knobs.rounds
        );
        canaries.push(before.max(after));
    }
    let kept = keep_rounds(&canaries);
    let figures = items
        .into_iter()
        .zip(samples)
        .zip(counts)
        .map(|((it, samples), counts)| {
            let counted: Vec<f64> = samples
                .iter()
                .zip(&kept)
                .filter(|(_, k)| **k)
                .map(|(s, _)| *s)
                .collect();
            let kept_counts: Vec<&BTreeMap<String, u64>> = counts
                .iter()
                .zip(&kept)
                .filter(|(_, k)| **k)
                .map(|(c, _)| c)
                .collect();
            Figure {
                range: (
                    counted.iter().copied().fold(f64::INFINITY, f64::min),
                    counted.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                ),
                counters: per_op(&kept_counts, it.iters),
                id: it.id,
                kind: it.kind,
                iters: it.iters,
                note: it.note,
                ns: median(&counted),
                samples,
            }
        })
        .collect();
    Medians {
        figures,
        canaries,
        kept,
        counters: counters.availability().clone(),
        quick: knobs.quick,
        ratios: Vec::new(),
        params: BTreeMap::new(),
    }
}

/// Counts per operation over `rounds` of `iters` operations each; a counter
/// that read zero in every round (it never ran) is left out.
fn per_op(rounds: &[&BTreeMap<String, u64>], iters: u64) -> BTreeMap<String, f64> {
    let mut sum: BTreeMap<String, u64> = BTreeMap::new();
    for r in rounds {
        for (k, v) in *r {
            *sum.entry(k.clone()).or_default() += v;
        }
    }
    let ops = (iters * rounds.len() as u64).max(1) as f64;
    sum.into_iter()
        .filter(|(_, v)| *v > 0)
        .map(|(k, v)| (k, v as f64 / ops))
        .collect()
}

/// Median of `xs` (NaN when empty).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// The machine in one line: "Intel(R) Xeon(R) Processor, 2 CPUs usable,
/// kernel 6.1.0, host vm" and the like.
pub fn machine() -> String {
    format!(
        "{}, {} CPUs usable, kernel {}, host {}",
        crate::cpu_model(),
        allowed_cpus().len(),
        crate::kernel_release(),
        crate::host_name()
    )
}

/// "met" or "NOT met", for a table's targets line.
pub fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// Prints `text` (after a blank line) and writes it to
/// `target/bench-summary/<name>.md` in the workspace, where `scripts/bench.sh`
/// collects every bench's table. A failure to write is reported on stderr;
/// the printed table is the result either way.
pub fn write_report(name: &str, text: &str) {
    println!("\n{text}");
    write_summary_file(&format!("{name}.md"), text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_over_rounds_per_operation_and_silent_ones_left_out() {
        let r1: BTreeMap<String, u64> = [
            ("instructions".to_string(), 1000),
            ("page_faults".to_string(), 0),
        ]
        .into();
        let r2: BTreeMap<String, u64> = [
            ("instructions".to_string(), 3000),
            ("page_faults".to_string(), 0),
        ]
        .into();
        let p = per_op(&[&r1, &r2], 100);
        assert_eq!(
            p.get("instructions"),
            Some(&20.0),
            "4000 over 2 x 100 operations"
        );
        assert!(!p.contains_key("page_faults"), "a counter that never ran");
        assert!(per_op(&[], 100).is_empty());
    }

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn rounds_in_a_slow_phase_are_dropped_from_the_median() {
        let knobs = Knobs {
            rounds: 4,
            verbose: false,
            skip_criterion: false,
            skip_summary: false,
            quick: false,
        };
        // Round 3 (index 2) is slow: its canary and its sample are 10×.
        // Two canaries per round, before and after.
        let canaries = [100.0, 100.0, 110.0, 100.0, 1000.0, 100.0, 100.0, 100.0];
        let mut c = canaries.iter().copied();
        let mut round = 0;
        let times = [10u64, 12, 100, 11];
        let items = vec![Item::latency("a", 1, |_| {
            round += 1;
            Duration::from_nanos(times[round - 1])
        })];
        let m = run(&knobs, items, || c.next().unwrap());
        assert_eq!(m.kept, [true, true, false, true]);
        assert_eq!(m.dropped(), 1);
        assert_eq!(m.ns("a"), 11.0);
        assert_eq!(m.get("a").unwrap().samples, [10.0, 12.0, 100.0, 11.0]);
    }

    /// One round whose canary read far below the others' (this run's
    /// mlx5 suite once read 39 ns among 393-599) no longer drops every
    /// other round: the rounds at or below the median canary always count.
    /// A slow minority is still dropped; rounds all alike are all kept.
    #[test]
    fn a_lone_fast_canary_does_not_drop_the_other_rounds() {
        assert_eq!(
            keep_rounds(&[393.0, 522.0, 39.0, 579.0, 565.0, 599.0, 466.0]),
            [true, true, true, false, false, false, true]
        );
        assert_eq!(
            keep_rounds(&[300.0, 310.0, 900.0, 295.0, 320.0]),
            [true, true, false, true, true]
        );
        assert_eq!(keep_rounds(&[500.0, 520.0, 510.0]), [true, true, true]);
        let kept = keep_rounds(&[10.0, 1000.0, 1100.0, 1200.0]);
        assert!(kept.iter().filter(|&&k| k).count() >= 2, "{kept:?}");
        assert_eq!(keep_rounds(&[f64::NAN, f64::NAN]), [true, true]);
    }

    #[test]
    fn items_are_interleaved_round_by_round() {
        let knobs = Knobs {
            rounds: 2,
            verbose: false,
            skip_criterion: false,
            skip_summary: false,
            quick: false,
        };
        let order = std::cell::RefCell::new(Vec::new());
        let items = vec![
            Item::latency("a", 1, |_| {
                order.borrow_mut().push('a');
                Duration::from_nanos(1)
            }),
            Item::throughput("b", 4, |n| {
                order.borrow_mut().push('b');
                Duration::from_nanos(n * 2)
            }),
        ];
        let m = run(&knobs, items, || 1.0);
        assert_eq!(*order.borrow(), ['a', 'b', 'a', 'b']);
        assert_eq!(m.ns("b"), 2.0);
        assert_eq!(m.get("b").unwrap().per_second(), 5e8);
        assert_eq!(m.get("b").unwrap().kind, Kind::Throughput);
    }

    #[test]
    fn the_record_gives_each_figure_its_spread_in_its_unit_and_its_declared_ratios() {
        let knobs = Knobs {
            rounds: 3,
            verbose: false,
            skip_criterion: false,
            skip_summary: false,
            quick: false,
        };
        let lat = std::cell::Cell::new(0usize);
        let thr = std::cell::Cell::new(0usize);
        let items = vec![
            Item::latency("floor", 1, |_| Duration::from_nanos(100)),
            Item::latency("pp", 1, |_| {
                lat.set(lat.get() + 1);
                Duration::from_nanos([150, 120, 130][lat.get() - 1])
            }),
            Item::throughput("tp", 10, |_| {
                thr.set(thr.get() + 1);
                Duration::from_nanos([100, 200, 400][thr.get() - 1])
            }),
        ];
        let mut m = run(&knobs, items, || 1.0);
        assert_eq!(m.ratio("pp", "floor", "floor"), 1.3);
        let r = m.record("t");
        let pp = &r.figures[1];
        assert_eq!(
            (pp.unit.as_str(), pp.min, pp.median, pp.max),
            ("ns", 120.0, 130.0, 150.0)
        );
        assert_eq!(pp.ratios.len(), 1);
        assert_eq!(pp.ratios[0].against, "floor");
        assert!(r.figures[0].ratios.is_empty());
        // 10, 20, 40 ns per message: 25, 50, 100 M msgs/s.
        let tp = &r.figures[2];
        assert_eq!(tp.unit, "ops/s");
        assert_eq!((tp.min, tp.median, tp.max), (2.5e7, 5e7, 1e8));
        assert_eq!(tp.ns_per_op, 20.0);
        let back: SuiteRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn quick_mode_divides_every_figures_operations() {
        let knobs = Knobs {
            rounds: 1,
            verbose: false,
            skip_criterion: false,
            skip_summary: false,
            quick: true,
        };
        let seen = std::cell::Cell::new(0);
        let items = vec![Item::latency("a", 200 * QUICK_DIVISOR, |n| {
            seen.set(n);
            Duration::from_nanos(n)
        })];
        let m = run(&knobs, items, || 1.0);
        assert_eq!(seen.get(), 200);
        assert!(m.quick);
    }
}
