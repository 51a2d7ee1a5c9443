//! What one run left behind, gathered into one [`Run`]: every suite's JSON
//! (`target/bench-summary/<suite>.json`, written by
//! `benchutil::Medians::write_report`), the callgrind counts
//! (`instr.tsv`, written by `scripts/callgrind.sh`), the benchkv sweep's
//! points (`benchkv/point-*.json`) and what `scripts/bench.sh` found out
//! about `perf c2c` (`c2c.txt`).
//!
//! The report is a pure function of a [`Run`] ([`crate::render`]), and the
//! [`Run`] is saved beside it (`run.json`), so `bench-report check` can
//! render it again and find every number of the report in it.

use std::path::{Path, PathBuf};

use benchutil::{Metadata, SuiteRecord};
use serde::{Deserialize, Serialize};

/// The schema of `run.json`; bumped when a field changes meaning.
pub const SCHEMA: &str = "bench-report/1";

/// The suites `scripts/bench.sh` runs, in report order (`ucx`: the
/// UCX-AM same-host peer, `peers/`).
pub const SUITES: [&str; 5] = ["ipc", "ucx", "inproc", "mlx5", "copyrpc"];

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// [`SCHEMA`].
    pub schema: String,
    /// The machine and software of the run, collected when the report was
    /// assembled (each suite also carries its own).
    pub metadata: Metadata,
    /// Every suite's summary (the suites that ran).
    pub suites: Vec<SuiteRecord>,
    /// Suites that left no JSON, with the reason.
    pub missing_suites: Vec<(String, String)>,
    /// The callgrind counts, one row per hot path.
    pub instr: Vec<InstrRow>,
    /// Why there are none, when there are none.
    pub instr_missing: Option<String>,
    /// The benchkv sweep, one entry per point.
    pub benchkv: Vec<KvPoint>,
    /// Why there are none, when there are none.
    pub benchkv_missing: Option<String>,
    /// What `perf c2c` said, or why it could not run.
    pub c2c: C2c,
}

/// Instructions per operation of one hot path, from callgrind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstrRow {
    /// The layer (`mlx5`, `copyrpc`, ...).
    pub suite: String,
    /// The operation counted.
    pub operation: String,
    /// Instructions per operation: (Ir(large) − Ir(small)) ÷ (large − small).
    pub per_op: f64,
    /// The operation counts of the two runs.
    pub counts: (u64, u64),
    /// Total Ir of the two runs.
    pub ir: (u64, u64),
    /// The functions with the most instructions of their own (self Ir) in
    /// the larger run, as `callgrind_annotate` lists them: (Ir, function).
    pub top: Vec<(u64, String)>,
}

/// One point of the benchkv sweep (fields of benchkv's report JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvPoint {
    /// `copyrpc`, `ucx-am:tcp`, `ucx-am:shm`, ...
    pub backend: String,
    /// What each rank's daemons used (device or UCX transports).
    pub transport: Vec<String>,
    /// Client threads (or processes) per rank.
    pub clients: u32,
    /// Requests in flight per client.
    pub depth: u32,
    /// Daemon threads per rank.
    pub daemons: u32,
    /// Whether clients were processes (ipc between processes) rather than
    /// threads.
    pub client_procs: bool,
    /// Ranks (hosts or processes).
    pub ranks: u32,
    /// Total operations per second of each run.
    pub run_ops_per_s: Vec<f64>,
    /// All runs merged: median, 99th and 99.9th percentile latency, ns.
    pub p50_ns: u64,
    /// 99th percentile, ns.
    pub p99_ns: u64,
    /// 99.9th percentile, ns.
    pub p999_ns: u64,
    /// Client requests served on their own daemon's shard.
    pub local: u64,
    /// Client requests forwarded to another daemon through Flux.
    pub flux: u64,
    /// Client requests forwarded over the network.
    pub remote: u64,
    /// benchkv's own remark (oversubscription).
    pub note: Option<String>,
    /// benchkv's metadata line: MPI library, device selection, git.
    pub mpi: String,
    /// `MLX5_DEVICE` as benchkv saw it.
    pub device_selection: String,
    /// Every parameter of the point, by name, as benchkv lists them.
    pub params: Vec<(String, String)>,
}

/// `perf c2c`: its report's first lines, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct C2c {
    /// Whether `perf c2c record` ran.
    pub available: bool,
    /// The reason it did not, or the command it ran.
    pub what: String,
    /// The head of `perf c2c report --stdio` (Shared Data Cache Line
    /// Table), when it ran.
    pub lines: Vec<String>,
}

/// An input that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// A file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not what its writer writes.
    #[error("parse {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn read(path: &Path) -> Result<String, InputError> {
    std::fs::read_to_string(path).map_err(|source| InputError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_err(path: &Path, reason: impl ToString) -> InputError {
    InputError::Parse {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Gathers the run left in `dir` (`target/bench-summary`). A missing
/// suite, callgrind table or sweep is recorded with its reason; a file
/// that exists but does not parse is an error.
pub fn collect(dir: &Path) -> Result<Run, InputError> {
    let mut suites = Vec::new();
    let mut missing_suites = Vec::new();
    for s in SUITES {
        let path = dir.join(format!("{s}.json"));
        if !path.exists() {
            missing_suites.push((
                s.to_string(),
                format!(
                    "{} was not written (the suite did not run or failed)",
                    path.display()
                ),
            ));
            continue;
        }
        let rec: SuiteRecord =
            serde_json::from_str(&read(&path)?).map_err(|e| parse_err(&path, e))?;
        suites.push(rec);
    }
    let instr_path = dir.join("instr.tsv");
    let (instr, instr_missing) = if instr_path.exists() {
        (
            parse_instr(&read(&instr_path)?).map_err(|e| parse_err(&instr_path, e))?,
            None,
        )
    } else {
        (
            Vec::new(),
            Some(format!(
                "{} was not written (scripts/callgrind.sh did not run or failed)",
                instr_path.display()
            )),
        )
    };
    let kv_dir = dir.join("benchkv");
    let mut benchkv = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&kv_dir) {
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("point-") && n.ends_with(".json"))
            })
            .collect();
        paths.sort();
        for p in paths {
            let v: serde_json::Value =
                serde_json::from_str(&read(&p)?).map_err(|e| parse_err(&p, e))?;
            benchkv.push(kv_point(&v).map_err(|e| parse_err(&p, e))?);
        }
    }
    let benchkv_missing = benchkv.is_empty().then(|| {
        format!(
            "no point-*.json in {} (scripts/benchkv.sh did not run or failed)",
            kv_dir.display()
        )
    });
    let c2c_path = dir.join("c2c.txt");
    let c2c = if c2c_path.exists() {
        parse_c2c(&read(&c2c_path)?)
    } else {
        C2c {
            available: false,
            what: format!(
                "{} was not written (scripts/bench.sh did not probe perf)",
                c2c_path.display()
            ),
            lines: Vec::new(),
        }
    };
    Ok(Run {
        schema: SCHEMA.to_string(),
        metadata: Metadata::collect(),
        suites,
        missing_suites,
        instr,
        instr_missing,
        benchkv,
        benchkv_missing,
        c2c,
    })
}

/// Parses `instr.tsv`: `row SUITE OPERATION N_SMALL N_LARGE IR_SMALL
/// IR_LARGE` lines, each followed by its `top IR FUNCTION` lines, fields
/// separated by tabs.
pub fn parse_instr(text: &str) -> Result<Vec<InstrRow>, String> {
    let mut rows: Vec<InstrRow> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        let num = |i: usize| -> Result<u64, String> {
            f.get(i)
                .and_then(|x| x.trim().parse().ok())
                .ok_or_else(|| format!("line {}: field {} is not a count: {line:?}", n + 1, i + 1))
        };
        match f.first().copied() {
            Some("row") if f.len() == 7 => {
                let (ns, nl, is, il) = (num(3)?, num(4)?, num(5)?, num(6)?);
                // Equal instruction counts: the toggle matched nothing (a
                // renamed function), not an operation that costs nothing.
                if nl <= ns || il <= is {
                    return Err(format!("line {}: counts do not grow: {line:?}", n + 1));
                }
                rows.push(InstrRow {
                    suite: f[1].to_string(),
                    operation: f[2].to_string(),
                    per_op: (il - is) as f64 / (nl - ns) as f64,
                    counts: (ns, nl),
                    ir: (is, il),
                    top: Vec::new(),
                });
            }
            Some("top") if f.len() == 3 => {
                let ir = num(1)?;
                rows.last_mut()
                    .ok_or_else(|| format!("line {}: a top line before any row", n + 1))?
                    .top
                    .push((ir, f[2].to_string()));
            }
            Some("") | None => {}
            _ => return Err(format!("line {}: not a row or top line: {line:?}", n + 1)),
        }
    }
    Ok(rows)
}

/// Parses `c2c.txt`: `available: yes|no`, `what: ...`, then the report's
/// lines.
pub fn parse_c2c(text: &str) -> C2c {
    let mut lines = text.lines();
    let available = lines.next().is_some_and(|l| l.trim() == "available: yes");
    let what = lines
        .next()
        .and_then(|l| l.strip_prefix("what: "))
        .unwrap_or("c2c.txt has no `what:` line")
        .to_string();
    C2c {
        available,
        what,
        lines: lines.map(str::to_string).collect(),
    }
}

/// The `schema` of the benchkv point JSON this report reads.
pub const BENCHKV_SCHEMA: &str = "benchkv/3";

/// The fields the report uses from one benchkv point's JSON (another
/// schema, a field missing, or a run that failed its checks is an error:
/// nothing is guessed).
pub fn kv_point(v: &serde_json::Value) -> Result<KvPoint, String> {
    if v["schema"].as_str() != Some(BENCHKV_SCHEMA) {
        return Err(format!(
            "schema {} is not {BENCHKV_SCHEMA}, the one this report reads",
            v["schema"]
        ));
    }
    let md = &v["metadata"];
    let param = |name: &str| -> Result<String, String> {
        md["params"]
            .as_array()
            .and_then(|ps| {
                ps.iter().find_map(|p| {
                    (p[0].as_str() == Some(name)).then(|| p[1].as_str().map(str::to_string))
                })
            })
            .flatten()
            .ok_or_else(|| format!("metadata.params has no {name}"))
    };
    let num = |name: &str| -> Result<u32, String> {
        param(name)?
            .parse()
            .map_err(|e| format!("param {name}: {e}"))
    };
    let u = |x: &serde_json::Value, what: &str| {
        x.as_u64().ok_or_else(|| format!("{what} is not a count"))
    };
    let strs = |x: &serde_json::Value, what: &str| -> Result<Vec<String>, String> {
        x.as_array()
            .ok_or_else(|| format!("no {what}"))?
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{what}: not text"))
            })
            .collect()
    };
    // A run that failed its checks wrote its JSON for inspection; its
    // figures measured a broken run.
    let (mismatches, bad) = (
        u(&v["mismatches"], "mismatches")?,
        u(&v["bad_status"], "bad_status")?,
    );
    if mismatches > 0 || bad > 0 {
        return Err(format!(
            "a failed run ({mismatches} verify mismatch(es), {bad} bad status(es)): not a measurement"
        ));
    }
    for run in v["runs"].as_array().ok_or("no runs")? {
        for rank in run["ranks"].as_array().ok_or("runs: no ranks")? {
            if u(&rank["ops"], "runs.ranks.ops")? == 0 {
                return Err(format!(
                    "a failed run (rank {} completed no operation in run {}): not a measurement",
                    rank["rank"], run["run"]
                ));
            }
        }
    }
    let total = &v["total"];
    let (mut local, mut flux, mut remote) = (0, 0, 0);
    for rank in v["daemons"].as_array().ok_or("no daemons")? {
        for d in rank.as_array().ok_or("daemons: not a list per rank")? {
            local += u(&d["local"], "daemons.local")?;
            flux += u(&d["flux"], "daemons.flux")?;
            remote += u(&d["remote"], "daemons.remote")?;
        }
    }
    Ok(KvPoint {
        backend: md["backend"]
            .as_str()
            .ok_or("no metadata.backend")?
            .to_string(),
        transport: strs(&md["transport"], "metadata.transport")?,
        clients: num("clients")?,
        depth: num("depth")?,
        daemons: num("daemons")?,
        client_procs: param("client_procs")? == "true",
        ranks: md["hosts"].as_array().ok_or("no metadata.hosts")?.len() as u32,
        run_ops_per_s: v["run_ops_per_s"]
            .as_array()
            .ok_or("no run_ops_per_s")?
            .iter()
            .map(|x| x.as_f64().ok_or("run_ops_per_s: not a number"))
            .collect::<Result<_, _>>()?,
        p50_ns: u(&total["p50_ns"], "total.p50_ns")?,
        p99_ns: u(&total["p99_ns"], "total.p99_ns")?,
        p999_ns: u(&total["p999_ns"], "total.p999_ns")?,
        local,
        flux,
        remote,
        note: md["note"].as_str().map(str::to_string),
        mpi: md["mpi"]
            .as_str()
            .ok_or("no metadata.mpi")?
            .trim_end_matches('\0')
            .to_string(),
        device_selection: md["device_selection"]
            .as_str()
            .ok_or("no metadata.device_selection")?
            .to_string(),
        params: md["params"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
    })
}
