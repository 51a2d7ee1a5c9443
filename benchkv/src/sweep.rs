//! `benchkv sweep`: a matrix of backends × clients × queue depths, one full
//! run per point (daemons, network and clients set up afresh), the backends
//! interleaved (A B C A B C) so that a slow phase of the host does not fall
//! on one of them. Rank 0 writes each point's JSON, then `sweep.csv` (one
//! row per point) and `sweep.svg` (throughput and p99 latency against the
//! queue depth, a line per backend and client count), and `sweep.md`, the
//! printed summary.
//!
//! The floors ([`crate::floor`]: cache-line round trip between the ranks'
//! cores, raw WRITE_IMM between the ranks on the copyrpc device) are
//! measured once per sweep, before the first point, and every point is
//! reported against them; rank 0's canary is taken before and after every
//! point, and a point taken in a slow phase of the host is marked.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::cli::SweepArgs;
use crate::error::Error;
use crate::floor::{self, Canary, Floors, WriteImmFloor};
use crate::mpi_boot::Mpi;
use crate::node;
use crate::params::Params;
use crate::report::{Report, floors_line, ns, rate, times};

/// One point of the sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Backend with its transport option (`ucx-am:tcp`).
    pub backend: String,
    /// The transport line of rank 0's daemons.
    pub transport: String,
    /// Clients per rank.
    pub clients: usize,
    /// Queue depth per client.
    pub depth: usize,
    /// All ranks, ops/s.
    pub ops_per_s: f64,
    /// Median latency, ns.
    pub p50_ns: u64,
    /// 99th percentile, ns.
    pub p99_ns: u64,
    /// 99.9th percentile, ns.
    pub p999_ns: u64,
    /// The ops/s that crossed ranks (the daemons' remote share) ÷ raw
    /// WRITE_IMM round trips per second.
    pub remote_ops_vs_raw_rate: Option<f64>,
    /// p50 ÷ raw WRITE_IMM round trip.
    pub p50_vs_raw_round_trip: Option<f64>,
    /// p99 ÷ raw WRITE_IMM round trip.
    pub p99_vs_raw_round_trip: Option<f64>,
    /// p50 ÷ cache-line round trip.
    pub p50_vs_cache_line: Option<f64>,
    /// Rank 0's canary before and after the point.
    pub canary: Option<Canary>,
    /// The point's note (busy threads outnumber cores, ...).
    pub note: Option<String>,
    /// The point's JSON file.
    pub json: PathBuf,
}

impl Row {
    fn of(p: &Params, r: &Report, json: PathBuf) -> Row {
        let q = r.vs_floors.as_ref();
        Row {
            remote_ops_vs_raw_rate: q.and_then(|q| q.remote_ops_vs_raw_rate),
            p50_vs_raw_round_trip: q.and_then(|q| q.p50_vs_raw_round_trip),
            p99_vs_raw_round_trip: q.and_then(|q| q.p99_vs_raw_round_trip),
            p50_vs_cache_line: q.map(|q| q.p50_vs_cache_line),
            canary: r.canary,
            note: r.metadata.note.clone(),
            backend: p.backend.to_string(),
            transport: r.metadata.transport.first().cloned().unwrap_or_default(),
            clients: p.clients,
            depth: p.depth,
            ops_per_s: r.total.ops_per_s,
            p50_ns: r.total.p50_ns,
            p99_ns: r.total.p99_ns,
            p999_ns: r.total.p999_ns,
            json,
        }
    }
}

/// Runs the sweep on every rank; rank 0 writes and prints the results.
pub fn run(mpi: &Mpi, args: &SweepArgs) -> Result<(), Error> {
    let points = args.points()?;
    for p in &points {
        // Which point of the matrix, since the lists give `--depths 1,0`
        // but the check speaks of one point's `--depth 0`.
        p.check(mpi.size() as usize).map_err(|e| match e {
            Error::Params(m) => Error::Params(format!(
                "the sweep's point {} clients {} depth {}: {m}",
                p.backend, p.clients, p.depth
            )),
            e => e,
        })?;
    }
    let out = &args.out;
    mpi.rank0_check(|| {
        std::fs::create_dir_all(out).map_err(|source| Error::Io {
            op: "creating the sweep directory",
            path: out.clone(),
            source,
        })?;
        let removed = clear_earlier(out)?;
        if removed > 0 {
            println!(
                "removed {removed} file(s) of an earlier sweep from {}",
                out.display()
            );
        }
        Ok(())
    })?;
    // Collectives, like the canaries: every rank takes part.
    let floors = floor::measure(mpi, "once per sweep, before the first point")?;
    let mut rows = Vec::new();
    for (i, p) in points.iter().enumerate() {
        let before = floor::canary(mpi, "canary before a point")?;
        let report = node::run(mpi, p)?;
        let after = floor::canary(mpi, "canary after a point")?;
        // Rank 0 alone sees the verdict: it tells the others whether to go
        // on, so that every rank stops at the same point.
        let mut failure = None;
        if let (Some(r), Some(floors)) = (report, &floors) {
            let canary = before.zip(after).map(|(b, a)| Canary::new(b, a, floors));
            let r = r.with_floors(floors.clone(), canary);
            let name = format!(
                "point-{:02}-{}-c{}-q{}.json",
                i + 1,
                p.backend.to_string().replace([':', ','], "-"),
                p.clients,
                p.depth
            );
            let path = out.join(name);
            write(
                &path,
                &serde_json::to_vec_pretty(&r).expect("a report serialises"),
            )?;
            let row = Row::of(p, &r, path);
            println!(
                "point {}/{}: {} clients {} depth {}: {} ops/s (remote ones {} the raw WRITE_IMM rate), p50 {} ({} the raw round trip), p99 {}, p99.9 {}{}",
                i + 1,
                points.len(),
                row.backend,
                row.clients,
                row.depth,
                rate(row.ops_per_s),
                times(row.remote_ops_vs_raw_rate),
                ns(row.p50_ns),
                times(row.p50_vs_raw_round_trip),
                ns(row.p99_ns),
                ns(row.p999_ns),
                if row.canary.is_some_and(|c| c.slow) {
                    "; slow phase (canary)"
                } else {
                    ""
                }
            );
            failure = r.failure();
            rows.push((row, r));
        }
        if mpi.broadcast_u64(u64::from(failure.is_some())) != 0 {
            return Err(failure.unwrap_or(Error::SweepStopped { point: i + 1 }));
        }
    }
    if mpi.rank() != 0 {
        return Ok(());
    }
    let (rows, reports): (Vec<Row>, Vec<Report>) = rows.into_iter().unzip();
    let csv = out.join("sweep.csv");
    write(&csv, csv_text(&rows).as_bytes())?;
    let svg = out.join("sweep.svg");
    plot(&svg, &rows, floors.as_ref()).map_err(|reason| Error::Plot {
        path: svg.clone(),
        reason,
    })?;
    let text = summary(&rows, reports.first(), floors.as_ref(), &csv, &svg);
    print!("{text}");
    write(&out.join("sweep.md"), text.as_bytes())
}

/// Whether `name` has the form of a sweep's point file:
/// `point-NN-BACKEND-cN-qN.json`.
fn is_point_file(name: &str) -> bool {
    let Some(mid) = name
        .strip_prefix("point-")
        .and_then(|n| n.strip_suffix(".json"))
    else {
        return false;
    };
    let parts: Vec<&str> = mid.split('-').collect();
    let num = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    parts.len() >= 4
        && num(parts[0])
        && parts[parts.len() - 2].strip_prefix('c').is_some_and(num)
        && parts[parts.len() - 1].strip_prefix('q').is_some_and(num)
}

/// Removes what an earlier sweep wrote into `out` (its points, CSV, plot
/// and summary), so that the directory holds this sweep's files only: a
/// smaller or failed sweep would otherwise leave older points beside its
/// own, which the analysis report reads as one sweep. Other files stay.
pub fn clear_earlier(out: &Path) -> Result<usize, Error> {
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { op, path, source }
    };
    let mut removed = 0;
    for entry in std::fs::read_dir(out).map_err(io("reading the sweep directory", out))? {
        let entry = entry.map_err(io("reading the sweep directory", out))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = is_point_file(&name) || ["sweep.csv", "sweep.svg", "sweep.md"].contains(&&*name);
        if ours && entry.file_type().is_ok_and(|t| t.is_file()) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(io("removing an earlier sweep's file", &path))?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, bytes).map_err(|source| Error::Io {
        op: "writing",
        path: path.to_path_buf(),
        source,
    })
}

/// A CSV field, quoted when it needs to be.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The rows as CSV, with a header line.
pub fn csv_text(rows: &[Row]) -> String {
    let mut s = String::from(CSV_HEADER);
    s.push('\n');
    let ratio = |x: Option<f64>| x.map_or(String::new(), |x| format!("{x:.4}"));
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{:.0},{},{},{},{},{},{},{},{},{},{},{},{}",
            field(&r.backend),
            field(&r.transport),
            r.clients,
            r.depth,
            r.ops_per_s,
            r.p50_ns,
            r.p99_ns,
            r.p999_ns,
            ratio(r.remote_ops_vs_raw_rate),
            ratio(r.p50_vs_raw_round_trip),
            ratio(r.p99_vs_raw_round_trip),
            ratio(r.p50_vs_cache_line),
            r.canary
                .map_or(String::new(), |c| format!("{:.0}", c.before_ns)),
            r.canary
                .map_or(String::new(), |c| format!("{:.0}", c.after_ns)),
            r.canary.map_or(String::new(), |c| c.slow.to_string()),
            field(r.note.as_deref().unwrap_or("")),
            field(&r.json.display().to_string())
        );
    }
    s
}

/// The CSV's header line: the ratios are the point's total figures (for
/// the raw rate, the ops that crossed ranks) over the sweep's floors
/// (empty when there is no such floor).
pub const CSV_HEADER: &str = "backend,transport,clients,depth,ops_per_s,p50_ns,p99_ns,p999_ns,remote_ops_vs_raw_rate,p50_vs_raw_round_trip,p99_vs_raw_round_trip,p50_vs_cache_line,canary_before_ns,canary_after_ns,slow_phase,note,json";

/// The printed summary: the machine once, a table of the points, the
/// files.
fn summary(
    rows: &[Row],
    first: Option<&Report>,
    floors: Option<&Floors>,
    csv: &Path,
    svg: &Path,
) -> String {
    let mut s = String::new();
    if let Some(r) = first {
        let m = &r.metadata;
        let _ = writeln!(
            s,
            "\nbenchkv sweep: {} rank(s) on {}; {}, {} CPUs, kernel {}; {}; git {}; {}",
            m.hosts.len(),
            m.hosts.join(", "),
            m.cpu,
            m.cores,
            m.kernel,
            m.mpi,
            m.git,
            m.date
        );
        let params: Vec<String> = m
            .params
            .iter()
            // The idle policy may differ by point: the notes say it.
            .filter(|(k, _)| !matches!(k.as_str(), "backend" | "clients" | "depth" | "idle_yield"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(s, "every point: {}", params.join(" "));
    }
    if let Some(f) = floors {
        let _ = writeln!(s, "{}", floors_line(f));
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| backend | transport | clients | depth | ops/s | remote ÷ raw rate | p50 | ÷ raw RTT | ÷ line | p99 | ÷ raw RTT | p99.9 | canary |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let canary = r.canary.map_or("-".into(), |c| {
            format!(
                "{:.0}/{:.0} ns{}",
                c.before_ns,
                c.after_ns,
                if c.slow { " slow" } else { "" }
            )
        });
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.backend,
            r.transport,
            r.clients,
            r.depth,
            rate(r.ops_per_s),
            times(r.remote_ops_vs_raw_rate),
            ns(r.p50_ns),
            times(r.p50_vs_raw_round_trip),
            times(r.p50_vs_cache_line),
            ns(r.p99_ns),
            times(r.p99_vs_raw_round_trip),
            ns(r.p999_ns),
            canary
        );
    }
    let _ = writeln!(
        s,
        "\nremote ÷ raw rate: the ops/s that crossed ranks (the daemons' remote share) over the raw WRITE_IMM round trips per second; ÷ raw RTT: latency over the raw WRITE_IMM round trip (p50); ÷ line: p50 over the cache-line round trip; canary: rank 0's cache-line canary before/after the point (slow: over {}× the floors' one).",
        floor::SLOW_FACTOR
    );
    let mut notes: Vec<(usize, &str)> = Vec::new();
    for r in rows {
        if let Some(n) = r.note.as_deref()
            && !notes.iter().any(|(_, m)| *m == n)
        {
            notes.push((r.clients, n));
        }
    }
    for (clients, n) in notes {
        let _ = writeln!(s, "note ({clients} client(s) per rank): {n}");
    }
    let _ = writeln!(s, "\nCSV: {}\nplot: {}", csv.display(), svg.display());
    s
}

/// Lines of one backend and client count: (depth, value) points in depth
/// order.
fn series(rows: &[Row], value: impl Fn(&Row) -> f64) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut out: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in rows {
        let name = format!("{} ×{} clients", r.backend, r.clients);
        let pt = (r.depth as f64, value(r));
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push(pt),
            None => out.push((name, vec![pt])),
        }
    }
    for (_, v) in &mut out {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// Throughput and p99 latency against the queue depth, side by side, with
/// the raw WRITE_IMM floor of the same sweep as a black line on each
/// (its pipelined rate; its ping-pong round trip).
pub fn plot(path: &Path, rows: &[Row], floors: Option<&Floors>) -> Result<(), String> {
    let root = SVGBackend::new(path, (1280, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(640);
    let max_depth = rows.iter().map(|r| r.depth).max().unwrap_or(1).max(2) as f64;
    /// A panel: title, y axis, the value plotted, its floor.
    type Panel = (
        &'static str,
        &'static str,
        fn(&Row) -> f64,
        fn(&WriteImmFloor) -> (f64, String),
    );
    let panels: [Panel; 2] = [
        (
            "throughput, all ranks",
            "operations per second",
            |r| r.ops_per_s,
            |w| {
                (
                    w.round_trips_per_s,
                    format!(
                        "raw WRITE_IMM rate, {} in flight (floor of the remote ops)",
                        w.depth
                    ),
                )
            },
        ),
        (
            "p99 latency",
            "microseconds",
            |r| r.p99_ns as f64 / 1000.0,
            |w| {
                (
                    w.round_trip_p50_ns as f64 / 1000.0,
                    "raw WRITE_IMM round trip, p50 (floor)".into(),
                )
            },
        ),
    ];
    let raw = floors.and_then(|f| f.write_imm.as_ref());
    for (area, (title, ylabel, value, floor)) in [left, right].into_iter().zip(panels) {
        let lines = series(rows, value);
        let floor = raw.map(floor);
        let ymax = lines
            .iter()
            .flat_map(|(_, v)| v.iter().map(|p| p.1))
            .chain(floor.as_ref().map(|f| f.0))
            .fold(0.0f64, f64::max)
            * 1.15
            + 1e-9;
        let mut chart = ChartBuilder::on(&area)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d((1.0..max_depth * 1.2).log_scale(), 0.0..ymax)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("queue depth per client")
            .y_desc(ylabel)
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (name, pts)) in lines.into_iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(|e| e.to_string())?;
        }
        if let Some((y, name)) = floor {
            chart
                .draw_series(LineSeries::new(
                    [(1.0, y), (max_depth * 1.2, y)],
                    BLACK.stroke_width(1),
                ))
                .map_err(|e| e.to_string())?
                .label(name)
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(backend: &str, clients: usize, depth: usize, ops: f64) -> Row {
        Row {
            backend: backend.into(),
            transport: "UCX 1.13.1, UCX_TLS=tcp, peer failure detection on".into(),
            clients,
            depth,
            ops_per_s: ops,
            p50_ns: 1000,
            p99_ns: 5000,
            p999_ns: 9000,
            remote_ops_vs_raw_rate: Some(0.5),
            p50_vs_raw_round_trip: Some(2.0),
            p99_vs_raw_round_trip: None,
            p50_vs_cache_line: Some(12.5),
            canary: Some(Canary {
                before_ns: 80.0,
                after_ns: 400.0,
                slow: true,
            }),
            note: Some(format!(
                "{} busy threads on 2 cores: threads outnumber cores",
                2 * (1 + clients)
            )),
            json: PathBuf::from("p.json"),
        }
    }

    #[test]
    fn csv_quotes_fields_with_commas() {
        let t = csv_text(&[row("ucx-am:tcp", 1, 8, 1234.4)]);
        let mut lines = t.lines();
        assert_eq!(lines.next().unwrap(), CSV_HEADER);
        assert_eq!(
            lines.next().unwrap(),
            "ucx-am:tcp,\"UCX 1.13.1, UCX_TLS=tcp, peer failure detection on\",1,8,1234,1000,5000,9000,0.5000,2.0000,,12.5000,80,400,true,4 busy threads on 2 cores: threads outnumber cores,p.json"
        );
        assert_eq!(
            CSV_HEADER.split(',').count(),
            t.lines()
                .nth(1)
                .unwrap()
                .replace(
                    "\"UCX 1.13.1, UCX_TLS=tcp, peer failure detection on\"",
                    "x"
                )
                .split(',')
                .count(),
            "a field per column"
        );
    }

    #[test]
    fn the_summary_shows_the_floors_ratios_canaries_and_notes() {
        let floors = Floors {
            measured: "once per sweep, before the first point".into(),
            cache_line_ns: 80.0,
            cache_line_between: "ranks 0 and 1 (processes) on cores 0 and 1".into(),
            canary_ns: 90.0,
            canary_between: "two threads of rank 0 on cores 0 and 1".into(),
            write_imm: None,
            write_imm_missing: Some("rank 1: no device".into()),
        };
        let rows = [row("copyrpc", 1, 8, 2.0), row("copyrpc", 2, 8, 3.0)];
        let s = summary(
            &rows,
            None,
            Some(&floors),
            Path::new("c.csv"),
            Path::new("p.svg"),
        );
        assert!(s.contains("floors (measured once per sweep, before the first point): cache-line round trip 80 ns"), "{s}");
        assert!(s.contains("| remote ÷ raw rate |"), "{s}");
        assert!(
            s.contains("| 0.50× | 1.0 µs | 2.00× | 12.5× | 5.0 µs | - |"),
            "{s}"
        );
        assert!(s.contains("80/400 ns slow"), "{s}");
        assert!(
            s.contains(
                "note (1 client(s) per rank): 4 busy threads on 2 cores: threads outnumber cores"
            ),
            "{s}"
        );
        assert!(
            s.contains("note (2 client(s) per rank): 6 busy threads"),
            "{s}"
        );
    }

    #[test]
    fn series_group_by_backend_and_clients_in_depth_order() {
        let rows = [
            row("copyrpc", 1, 8, 2.0),
            row("copyrpc", 1, 1, 1.0),
            row("ucx-am:tcp", 1, 1, 3.0),
            row("copyrpc", 2, 1, 4.0),
        ];
        let s = series(&rows, |r| r.ops_per_s);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].1, vec![(1.0, 1.0), (8.0, 2.0)]);
    }

    #[test]
    fn an_earlier_sweeps_files_are_removed_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("benchkv-clear-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ours = [
            "point-01-copyrpc-c1-q1.json",
            "point-07-ucx-am-shm-c2-q8.json",
            "sweep.csv",
            "sweep.svg",
            "sweep.md",
        ];
        let others = [
            "notes.md",
            "point-01.txt",
            "run.json",
            "point-cloud.json",
            "point-01-x-c1.json",
        ];
        for f in ours.iter().chain(&others) {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        assert_eq!(clear_earlier(&dir).unwrap(), ours.len());
        let mut left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "notes.md",
                "point-01-x-c1.json",
                "point-01.txt",
                "point-cloud.json",
                "run.json"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_plot_is_an_svg_with_every_series() {
        let dir = std::env::temp_dir().join(format!("benchkv-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.svg");
        plot(
            &path,
            &[
                row("copyrpc", 1, 1, 10.0),
                row("copyrpc", 1, 8, 20.0),
                row("ucx-am:tcp", 1, 1, 5.0),
            ],
            Some(&Floors {
                measured: "once per sweep, before the first point".into(),
                cache_line_ns: 80.0,
                cache_line_between: "ranks 0 and 1".into(),
                canary_ns: 90.0,
                canary_between: "two threads of rank 0 on cores 0 and 1".into(),
                write_imm: Some(WriteImmFloor {
                    device: "soft1".into(),
                    selection: "soft:manual".into(),
                    payload_bytes: 32,
                    round_trips: 10,
                    round_trip_p50_ns: 7000,
                    round_trip_mean_ns: 7100.0,
                    depth: 64,
                    round_trips_per_s: 50.0,
                }),
                write_imm_missing: None,
            }),
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.contains("copyrpc ×1 clients"));
        assert!(svg.contains("ucx-am:tcp ×1 clients"));
        assert!(svg.contains("p99 latency"));
        assert!(svg.contains("raw WRITE_IMM rate, 64 in flight (floor of the remote ops)"));
        assert!(svg.contains("raw WRITE_IMM round trip, p50 (floor)"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
