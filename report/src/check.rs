//! `bench-report check`: a report directory is complete and every number in
//! it came from its run.
//!
//! * The report is rendered again from `run.json` (what the pipeline
//!   gathered from the benches' own output); `report.md` and
//!   `figures.json` must be exactly that rendering, so no number in them
//!   was typed in or edited after the run. Commentary goes in a separate
//!   file (`commentary.md`), which is not re-rendered, but every figure it
//!   quotes must appear in `report.md` exactly as printed.
//! * Every section and subsection exists, in order, and none is empty: each
//!   holds content or a one-line reason starting with
//!   [`NOT_AVAILABLE`](crate::render::NOT_AVAILABLE).
//! * With `strict`, only the places whose data depends on the machine
//!   (hardware counters, `perf c2c`) and benchkv's "where the time goes"
//!   (benchkv is never run under callgrind) may consist of a reason alone; every other part must hold measured content (a table,
//!   a plot, a list of figures), beside which a reason may name what part
//!   of it is missing.

use std::path::Path;

use crate::input::Run;
use crate::render::{self, FiguresFile, LAYER_SUBSECTIONS, NOT_AVAILABLE, SECTIONS};

/// The layer sections (those with [`LAYER_SUBSECTIONS`]).
pub const LAYERS: [&str; 5] = [
    SECTIONS[1],
    SECTIONS[2],
    SECTIONS[3],
    SECTIONS[4],
    SECTIONS[5],
];

/// (section, subsection) pairs that may say [`NOT_AVAILABLE`] even in a
/// strict check: their data depends on what the machine offers.
pub const MAY_BE_UNAVAILABLE: [(&str, &str); 2] =
    [(SECTIONS[5], LAYER_SUBSECTIONS[2]), (SECTIONS[7], "")];

/// One section or subsection of a report: (section, subsection, body).
pub type Part = (String, String, String);

/// Splits Markdown into its `##` sections and `###` subsections.
pub fn parts(md: &str) -> Vec<Part> {
    let mut out: Vec<Part> = Vec::new();
    let (mut sec, mut sub) = (String::new(), String::new());
    let mut body = String::new();
    let flush = |sec: &str, sub: &str, body: &mut String, out: &mut Vec<Part>| {
        if !sec.is_empty() {
            out.push((sec.to_string(), sub.to_string(), std::mem::take(body)));
        }
        body.clear();
    };
    for line in md.lines() {
        if let Some(h) = line.strip_prefix("### ") {
            flush(&sec, &sub, &mut body, &mut out);
            sub = h.trim().to_string();
        } else if let Some(h) = line.strip_prefix("## ") {
            flush(&sec, &sub, &mut body, &mut out);
            sec = h.trim().to_string();
            sub.clear();
        } else {
            body.push_str(line);
            body.push('\n');
        }
    }
    flush(&sec, &sub, &mut body, &mut out);
    out
}

/// Checks the shape of a report's Markdown (see the module doc); returns
/// every problem found.
pub fn check_markdown(md: &str, strict: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let ps = parts(md);
    let sections: Vec<&str> = {
        let mut v: Vec<&str> = ps.iter().map(|p| p.0.as_str()).collect();
        v.dedup();
        v
    };
    if sections != SECTIONS {
        problems.push(format!("sections are {sections:?}, expected {SECTIONS:?}"));
    }
    for layer in LAYERS {
        let subs: Vec<&str> = ps
            .iter()
            .filter(|p| p.0 == layer && !p.1.is_empty())
            .map(|p| p.1.as_str())
            .collect();
        if subs != LAYER_SUBSECTIONS {
            problems.push(format!(
                "section {layer:?} has subsections {subs:?}, expected {LAYER_SUBSECTIONS:?}"
            ));
        }
    }
    for (sec, sub, body) in &ps {
        let is_layer_intro = sub.is_empty() && LAYERS.contains(&sec.as_str());
        let text = body.trim();
        let place = if sub.is_empty() {
            sec.clone()
        } else {
            format!("{sec} / {sub}")
        };
        if text.is_empty() && !is_layer_intro {
            problems.push(format!("{place} is empty"));
        }
        let only_reason = text.starts_with(NOT_AVAILABLE)
            && text.lines().filter(|l| !l.trim().is_empty()).count() == 1;
        if only_reason && text.len() <= NOT_AVAILABLE.len() + 10 {
            problems.push(format!("{place} says {NOT_AVAILABLE} without a reason"));
        }
        let measured = text
            .lines()
            .any(|l| l.starts_with('|') || l.starts_with("![") || l.starts_with("- "));
        if strict && text.contains(NOT_AVAILABLE) && !measured {
            let allowed = MAY_BE_UNAVAILABLE
                .iter()
                .any(|(s, ss)| s == sec && (ss.is_empty() || ss == sub))
                || is_hardware_only(text);
            if !allowed {
                problems.push(format!(
                    "{place} is not filled by measurement: {}",
                    text.lines()
                        .find(|l| l.contains(NOT_AVAILABLE))
                        .unwrap_or("")
                ));
            }
        }
        for bad in ["NaN", " inf ", "-inf"] {
            if text.contains(bad) {
                problems.push(format!("{place} contains {bad:?}"));
            }
        }
    }
    problems
}

/// The figures a text quotes: a number directly followed by `×`, or by a
/// space and a unit of time, rate or share (`8 × 256`, a shape, is none).
pub fn figures_in(text: &str) -> Vec<String> {
    const UNITS: [&str; 8] = ["ns", "µs", "ms", "GB/s", "M/s", "k/s", "%", "M calls/s"];
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let starts = b[i].is_ascii_digit()
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'.'));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < b.len()
            && (b[j].is_ascii_digit()
                || (b[j] == b'.' && b.get(j + 1).is_some_and(u8::is_ascii_digit)))
        {
            j += 1;
        }
        let rest = &text[j..];
        if rest.starts_with('×') {
            out.push(text[i..j + '×'.len_utf8()].to_string());
        } else if let Some(u) = rest.strip_prefix(' ').and_then(|r| {
            UNITS.iter().find(|u| {
                r.starts_with(*u) && !r[u.len()..].starts_with(|c: char| c.is_alphanumeric())
            })
        }) {
            out.push(format!("{} {u}", &text[i..j]));
        }
        i = j.max(i + 1);
    }
    out
}

/// Whether every reason in `text` is about hardware counters or a
/// machine-dependent tool.
fn is_hardware_only(text: &str) -> bool {
    text.lines()
        .filter(|l| l.contains(NOT_AVAILABLE))
        .all(|l| l.contains("counter") || l.contains("perf c2c"))
}

/// Checks the report directory `dir`; returns every problem found (empty:
/// the report is complete and came from its run).
pub fn check_dir(dir: &Path, strict: bool) -> Vec<String> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).map_err(|e| format!("read {f}: {e}"));
    let (md, run, figs) = match (read("report.md"), read("run.json"), read("figures.json")) {
        (Ok(m), Ok(r), Ok(f)) => (m, r, f),
        (m, r, f) => {
            return [m.err(), r.err(), f.err()].into_iter().flatten().collect();
        }
    };
    let run: Run = match serde_json::from_str(&run) {
        Ok(r) => r,
        Err(e) => return vec![format!("run.json: {e}")],
    };
    let figs: FiguresFile = match serde_json::from_str(&figs) {
        Ok(f) => f,
        Err(e) => return vec![format!("figures.json: {e}")],
    };
    let again = render::render(&run);
    let mut problems = check_markdown(&md, strict);
    if again.markdown != md {
        let line = again
            .markdown
            .lines()
            .zip(md.lines())
            .position(|(a, b)| a != b)
            .map_or(
                again.markdown.lines().count().min(md.lines().count()),
                |i| i,
            )
            + 1;
        problems.push(format!(
            "report.md is not the rendering of run.json (first difference at line {line}): \
             a number was edited or typed in"
        ));
    }
    if again.figures != figs {
        problems.push("figures.json is not the figures of run.json".into());
    }
    if let Ok(c) = std::fs::read_to_string(dir.join("commentary.md")) {
        for f in figures_in(&c) {
            if !md.contains(&f) {
                problems.push(format!(
                    "commentary.md quotes {f:?}, which report.md does not print: \
                     quote the report's figures as printed"
                ));
            }
        }
    }
    for (file, svg) in &again.plots {
        match std::fs::read_to_string(dir.join(file)) {
            Ok(s) if s == *svg => {}
            Ok(_) => problems.push(format!("{file} is not the plot of run.json")),
            Err(e) => problems.push(format!("{file}: {e}")),
        }
    }
    problems
}
