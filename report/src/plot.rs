//! The report's SVG plots (plotters, rendered to strings so the report
//! stays a pure function of the run).
//!
//! Values span orders of magnitude (a cache-line floor of a few hundred
//! nanoseconds beside a Unix socket's tens of microseconds), so both axes
//! of values are log10, labelled in the figure's unit.

use std::collections::BTreeMap;

use benchutil::FigureRecord;
use plotters::prelude::*;

use crate::format;
use crate::input::KvPoint;

fn log(x: f64) -> f64 {
    x.max(1e-9).log10()
}

/// The range of log10 values spanning `xs`, padded a little.
fn log_range(xs: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = xs
        .filter(|x| x.is_finite() && *x > 0.0)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(log(x)), b.max(log(x)))
        });
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.08).max(0.05);
    lo - pad..hi + pad
}

/// One row per figure: a bar from min to max over the kept rounds, a dot
/// at the median; `refs` (a floor) as vertical lines.
pub fn ranges(title: &str, rows: &[&FigureRecord], refs: &[(&str, f64)]) -> String {
    let unit = rows.first().map_or("ns", |f| f.unit.as_str()).to_string();
    let n = rows.len() as i32;
    let mut svg = String::new();
    {
        let height = 90 + 22 * rows.len() as u32;
        let root = SVGBackend::with_string(&mut svg, (960, height.max(200))).into_drawing_area();
        let _ = root.fill(&WHITE);
        let xr = log_range(
            rows.iter()
                .flat_map(|f| [f.min, f.max])
                .chain(refs.iter().map(|r| r.1)),
        );
        let names: Vec<String> = rows.iter().map(|f| f.name.clone()).collect();
        let Ok(mut chart) = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(300)
            .build_cartesian_2d(xr, -1i32..n)
        else {
            return svg_error(title);
        };
        let unit_fmt = unit.clone();
        let _ = chart
            .configure_mesh()
            .y_labels((n + 2) as usize)
            .y_label_formatter(&|y| {
                usize::try_from(*y)
                    .ok()
                    .and_then(|i| names.get(i).cloned())
                    .unwrap_or_default()
            })
            .x_label_formatter(&|x| format::value(10f64.powf(*x), &unit_fmt))
            .x_desc(format!("{unit} (log scale)"))
            .draw();
        let _ = chart.draw_series(rows.iter().enumerate().map(|(i, f)| {
            PathElement::new(
                vec![(log(f.min), i as i32), (log(f.max), i as i32)],
                BLACK.stroke_width(3),
            )
        }));
        let _ = chart
            .draw_series(
                rows.iter()
                    .enumerate()
                    .map(|(i, f)| Circle::new((log(f.median), i as i32), 4, BLUE.filled())),
            )
            .map(|s| {
                s.label("median (bar: min to max)")
                    .legend(|(x, y)| Circle::new((x, y), 4, BLUE.filled()))
            });
        for (k, (name, v)) in refs.iter().enumerate() {
            let color = Palette99::pick(k + 1).to_rgba();
            let label = format!("{name} {}", format::ns(*v));
            let _ = chart
                .draw_series(LineSeries::new(
                    vec![(log(*v), -1), (log(*v), n)],
                    color.stroke_width(2),
                ))
                .map(|s| {
                    s.label(label)
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color))
                });
        }
        let _ = chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw();
        let _ = root.present();
    }
    svg
}

/// The benchkv sweep: throughput (left) and p99 latency (right) against
/// queue depth, one line per backend and client count.
pub fn sweep(points: &[KvPoint]) -> String {
    let mut series: BTreeMap<(String, u32), Vec<&KvPoint>> = BTreeMap::new();
    for p in points {
        series
            .entry((p.backend.clone(), p.clients))
            .or_default()
            .push(p);
    }
    for v in series.values_mut() {
        v.sort_by_key(|p| p.depth);
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 460)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let (left, right) = root.split_horizontally(550);
        let xr = log_range(points.iter().map(|p| f64::from(p.depth)));
        type Get = fn(&KvPoint) -> f64;
        let panels: [(&DrawingArea<_, _>, &str, &str, Get); 2] = [
            (&left, "throughput", "ops/s", |p| {
                crate::format::median(&p.run_ops_per_s)
            }),
            (&right, "p99 latency", "ns", |p| p.p99_ns as f64),
        ];
        for (area, what, unit, get) in panels {
            let yr = log_range(points.iter().map(get));
            let Ok(mut chart) = ChartBuilder::on(area)
                .caption(format!("benchkv {what} by queue depth"), ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(70)
                .build_cartesian_2d(xr.clone(), yr)
            else {
                return svg_error("benchkv sweep");
            };
            let _ = chart
                .configure_mesh()
                .x_label_formatter(&|x| format!("{:.0}", 10f64.powf(*x)))
                .y_label_formatter(&|y| format::value(10f64.powf(*y), unit))
                .x_desc("depth per client (log scale)")
                .y_desc(format!("{what} (log scale)"))
                .draw();
            for (k, ((backend, clients), ps)) in series.iter().enumerate() {
                let color = Palette99::pick(k).to_rgba();
                let pts: Vec<(f64, f64)> = ps
                    .iter()
                    .map(|p| (log(f64::from(p.depth)), log(get(p))))
                    .collect();
                let label = format!("{backend} ×{clients} clients");
                let _ = chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map(|s| {
                        s.label(label).legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 16, y)], color)
                        })
                    });
                let _ =
                    chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())));
            }
            let _ = chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw();
        }
        let _ = root.present();
    }
    svg
}

fn svg_error(title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"600\" height=\"40\"><text x=\"10\" \
         y=\"25\">{title}: the plot's ranges were empty</text></svg>"
    )
}
