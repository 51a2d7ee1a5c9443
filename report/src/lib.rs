//! `bench-report`: one run of every layer's benchmarks, turned into the
//! dated analysis report under `docs/analysis/`.
//!
//! `scripts/bench.sh` runs each layer's suite (each leaves its figures as
//! JSON in `target/bench-summary/`, see `benchutil::Medians::write_report`),
//! `scripts/callgrind.sh` (instructions per operation) and the benchkv
//! sweep, then `bench-report render`, which
//!
//! 1. gathers all of it into one [`input::Run`] ([`input::collect`]),
//! 2. derives the theoretical limits, the benchkv critical path and the
//!    cross-layer table from the measured figures ([`derive`]),
//! 3. renders `report.md`, the SVG plots and `figures.json` ([`render`]),
//!    and saves the run beside them as `run.json`.
//!
//! `bench-report check DIR` ([`check`]) renders `run.json` again and
//! requires the files to match it exactly, and every section to be there
//! and filled (or to carry its one-line reason): the proof that every
//! number in a report came from its run.
//!
//! ```
//! let md = "## Executive summary\n\nNot available: nothing ran in this example.\n";
//! let problems = report::check::check_markdown(md, false);
//! assert!(problems.iter().any(|p| p.contains("sections are")));
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod check;
pub mod derive;
pub mod format;
pub mod input;
pub mod plot;
pub mod render;

use std::path::{Path, PathBuf};

/// Writes the report of `run` into `out/<date>` (`<date>-quick` for a
/// quick run): `report.md`, `figures.json`, `run.json` and the SVGs.
/// Returns the path of `report.md`.
pub fn write(run: &input::Run, out: &Path) -> std::io::Result<PathBuf> {
    let r = render::render(run);
    let quick = run.suites.iter().any(|s| s.quick);
    let name = format!("{}{}", render::date(run), if quick { "-quick" } else { "" });
    let dir = out.join(name);
    std::fs::create_dir_all(&dir)?;
    // Plots of an earlier run of the same day must not linger beside this
    // one's report.
    for e in std::fs::read_dir(&dir)?.flatten() {
        if e.path().extension().is_some_and(|x| x == "svg") {
            std::fs::remove_file(e.path())?;
        }
    }
    std::fs::write(dir.join("report.md"), &r.markdown)?;
    std::fs::write(dir.join("figures.json"), pretty(&r.figures))?;
    std::fs::write(dir.join("run.json"), pretty(run))?;
    for (file, svg) in &r.plots {
        std::fs::write(dir.join(file), svg)?;
    }
    Ok(dir.join("report.md"))
}

/// Pretty JSON, ending in a newline.
fn pretty(v: &impl serde::Serialize) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("report data serialises");
    s.push('\n');
    s
}
