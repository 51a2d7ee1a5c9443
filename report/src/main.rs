//! `bench-report render` and `bench-report check` (see the crate docs).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Turns one run of every layer's benchmarks into the dated analysis report")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Gathers target/bench-summary and writes OUT/<date>/report.md
    /// (OUT/<date>-quick/ for a quick run) with its plots, figures.json and
    /// run.json; prints the report's path.
    Render {
        /// Where the benches left their output.
        #[arg(long, default_value = "target/bench-summary")]
        input: PathBuf,
        /// The directory the dated report directory goes in.
        #[arg(long, default_value = "docs/analysis")]
        out: PathBuf,
    },
    /// Renders a report directory again from its own run.json (after a
    /// change of the renderer; the measurements stay what they were).
    Rerender {
        /// The report directory (holding run.json).
        dir: PathBuf,
    },
    /// Checks a report directory: every section there and filled (or with
    /// its reason), every number the rendering of its run.json.
    Check {
        /// The report directory (holding report.md and run.json).
        dir: PathBuf,
        /// Only machine-dependent data (hardware counters, perf c2c) and
        /// benchkv's instruction counts (never measured) may be missing.
        #[arg(long)]
        strict: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Render { input, out } => {
            let run = match report::input::collect(&input) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("bench-report: {e}");
                    return ExitCode::FAILURE;
                }
            };
            written(&run, &out)
        }
        Cmd::Rerender { dir } => {
            let run: report::input::Run = match std::fs::read_to_string(dir.join("run.json"))
                .map_err(|e| e.to_string())
                .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("bench-report: {}/run.json: {e}", dir.display());
                    return ExitCode::FAILURE;
                }
            };
            let out = dir.parent().unwrap_or(std::path::Path::new("."));
            written(&run, out)
        }
        Cmd::Check { dir, strict } => {
            let problems = report::check::check_dir(&dir, strict);
            if problems.is_empty() {
                println!("{}: complete, every number from its run", dir.display());
                ExitCode::SUCCESS
            } else {
                for p in &problems {
                    eprintln!("bench-report check: {p}");
                }
                ExitCode::FAILURE
            }
        }
    }
}

/// Writes the report of `run` under `out` and prints its path.
fn written(run: &report::input::Run, out: &std::path::Path) -> ExitCode {
    match report::write(run, out) {
        Ok(path) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-report: write into {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}
