//! `benchkv sweep`: a matrix of backends × clients × queue depths, one full
//! run per point (daemons, network and clients set up afresh), the backends
//! interleaved (A B C A B C) so that a slow phase of the host does not fall
//! on one of them. Rank 0 writes each point's JSON, then `sweep.csv` (one
//! row per point) and `sweep.svg` (throughput and p99 latency against the
//! queue depth, a line per backend and client count).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::cli::SweepArgs;
use crate::error::Error;
use crate::mpi_boot::Mpi;
use crate::node;
use crate::params::Params;
use crate::report::{Report, ns, rate};

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
    /// The point's JSON file.
    pub json: PathBuf,
}

impl Row {
    fn of(p: &Params, r: &Report, json: PathBuf) -> Row {
        Row {
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
        p.check(mpi.size() as usize)?;
    }
    let out = &args.out;
    if mpi.rank() == 0 {
        std::fs::create_dir_all(out).map_err(|source| Error::Io {
            op: "creating the sweep directory",
            path: out.clone(),
            source,
        })?;
    }
    let mut rows = Vec::new();
    for (i, p) in points.iter().enumerate() {
        let report = node::run(mpi, p)?;
        // Rank 0 alone sees the verdict: it tells the others whether to go
        // on, so that every rank stops at the same point.
        let mut failure = None;
        if let Some(r) = report {
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
                "point {}/{}: {} clients {} depth {}: {} ops/s, p50 {}, p99 {}, p99.9 {}",
                i + 1,
                points.len(),
                row.backend,
                row.clients,
                row.depth,
                rate(row.ops_per_s),
                ns(row.p50_ns),
                ns(row.p99_ns),
                ns(row.p999_ns)
            );
            if r.mismatches > 0 || r.bad_status > 0 {
                failure = Some(Error::Verify {
                    count: r.mismatches + r.bad_status,
                    first: r.examples.join("\n  "),
                });
            }
            rows.push((row, r));
        }
        if mpi.broadcast_u64(u64::from(failure.is_some())) != 0 {
            return Err(failure.unwrap_or_else(|| Error::Verify {
                count: 1,
                first: format!("rank 0 found mismatches at point {}", i + 1),
            }));
        }
    }
    if mpi.rank() != 0 {
        return Ok(());
    }
    let (rows, reports): (Vec<Row>, Vec<Report>) = rows.into_iter().unzip();
    let csv = out.join("sweep.csv");
    write(&csv, csv_text(&rows).as_bytes())?;
    let svg = out.join("sweep.svg");
    plot(&svg, &rows).map_err(|reason| Error::Plot {
        path: svg.clone(),
        reason,
    })?;
    let text = summary(&rows, reports.first(), &csv, &svg);
    print!("{text}");
    write(&out.join("sweep.md"), text.as_bytes())
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
    let mut s =
        String::from("backend,transport,clients,depth,ops_per_s,p50_ns,p99_ns,p999_ns,json\n");
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{:.0},{},{},{},{}",
            field(&r.backend),
            field(&r.transport),
            r.clients,
            r.depth,
            r.ops_per_s,
            r.p50_ns,
            r.p99_ns,
            r.p999_ns,
            field(&r.json.display().to_string())
        );
    }
    s
}

/// The printed summary: the machine once, a table of the points, the
/// files.
fn summary(rows: &[Row], first: Option<&Report>, csv: &Path, svg: &Path) -> String {
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
            .filter(|(k, _)| !matches!(k.as_str(), "backend" | "clients" | "depth"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(s, "every point: {}", params.join(" "));
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| backend | transport | clients | depth | ops/s | p50 | p99 | p99.9 |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.backend,
            r.transport,
            r.clients,
            r.depth,
            rate(r.ops_per_s),
            ns(r.p50_ns),
            ns(r.p99_ns),
            ns(r.p999_ns)
        );
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

/// Throughput and p99 latency against the queue depth, side by side.
pub fn plot(path: &Path, rows: &[Row]) -> Result<(), String> {
    let root = SVGBackend::new(path, (1280, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(640);
    let max_depth = rows.iter().map(|r| r.depth).max().unwrap_or(1).max(2) as f64;
    /// A panel: title, y axis, the value plotted.
    type Panel = (&'static str, &'static str, fn(&Row) -> f64);
    let panels: [Panel; 2] = [
        ("throughput, all ranks", "operations per second", |r| {
            r.ops_per_s
        }),
        ("p99 latency", "microseconds", |r| r.p99_ns as f64 / 1000.0),
    ];
    for (area, (title, ylabel, value)) in [left, right].into_iter().zip(panels) {
        let lines = series(rows, value);
        let ymax = lines
            .iter()
            .flat_map(|(_, v)| v.iter().map(|p| p.1))
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
            json: PathBuf::from("p.json"),
        }
    }

    #[test]
    fn csv_quotes_fields_with_commas() {
        let t = csv_text(&[row("ucx-am:tcp", 1, 8, 1234.4)]);
        let mut lines = t.lines();
        assert_eq!(
            lines.next().unwrap(),
            "backend,transport,clients,depth,ops_per_s,p50_ns,p99_ns,p999_ns,json"
        );
        assert_eq!(
            lines.next().unwrap(),
            "ucx-am:tcp,\"UCX 1.13.1, UCX_TLS=tcp, peer failure detection on\",1,8,1234,1000,5000,9000,p.json"
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
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.contains("copyrpc ×1 clients"));
        assert!(svg.contains("ucx-am:tcp ×1 clients"));
        assert!(svg.contains("p99 latency"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
