//! `benchkv`: see the crate docs (`cargo doc -p benchkv`) and the README.

use std::io::Write;
use std::process::ExitCode;

use benchkv::cli::{Cli, Command, RunArgs};
use benchkv::floor::{self, Canary};
use benchkv::mpi_boot::Mpi;
use benchkv::{Error, clients, node, sweep};
use clap::Parser;

/// Writes `msg` to stderr in one write, so that the lines of two ranks
/// that mpirun forwards do not interleave.
fn say(msg: String) {
    // Nothing better to do if stderr is gone.
    let _ = std::io::stderr().write_all(msg.as_bytes());
}

/// The rank as the launcher tells it, before MPI is up (for messages).
fn launcher_rank() -> String {
    ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"]
        .iter()
        .find_map(|v| std::env::var(v).ok())
        .unwrap_or_else(|| "0".into())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            if e.use_stderr() {
                say(format!(
                    "benchkv (rank {}): {}",
                    launcher_rank(),
                    e.render()
                ));
            } else {
                print!("{}", e.render());
            }
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    match cli.command {
        // A client process of a rank: no MPI here.
        Some(Command::ClientProcess) => ExitCode::from(clients::process_main() as u8),
        Some(Command::Sweep(s)) => with_mpi(|mpi| sweep::run(mpi, &s)),
        Some(Command::Run(r)) => with_mpi(|mpi| run(mpi, &r)),
        None => with_mpi(|mpi| run(mpi, &cli.run)),
    }
}

/// Initialises MPI, runs `f` and exits as its result says.
fn with_mpi(f: impl FnOnce(&Mpi) -> Result<(), Error>) -> ExitCode {
    let mpi = match Mpi::init() {
        Ok(m) => m,
        Err(e) => {
            say(format!("benchkv (rank {}): error: {e}\n", launcher_rank()));
            return ExitCode::FAILURE;
        }
    };
    let rank = mpi.rank();
    match f(&mpi) {
        Ok(()) => {
            mpi.finalize();
            ExitCode::SUCCESS
        }
        // Every rank reaches these in the same state: finalise cleanly.
        Err(
            e @ (Error::Params(_)
            | Error::Verify { .. }
            | Error::BadStatus { .. }
            | Error::EmptyWindow { .. }
            | Error::SweepStopped { .. }),
        ) => {
            say(format!("benchkv (rank {rank}): error: {e}\n"));
            mpi.finalize();
            ExitCode::from(e.exit_code() as u8)
        }
        Err(e) => {
            say(format!("benchkv (rank {rank}): error: {e}\n"));
            // Not finalised: other ranks may be waiting in a collective
            // call; exiting lets mpirun end them.
            std::process::exit(e.exit_code());
        }
    }
}

fn run(mpi: &Mpi, args: &RunArgs) -> Result<(), Error> {
    let params = args.params()?;
    params.check(mpi.size() as usize)?;
    // Before any work: a run that cannot write its report is wasted.
    mpi.rank0_check(|| benchkv::report::check_output_path(&args.json))?;
    // The floors and canaries are collectives: every rank takes part.
    let floors = floor::measure(mpi, "before the run")?;
    let before = floor::canary(mpi, "canary before the run")?;
    let report = node::run(mpi, &params)?;
    let after = floor::canary(mpi, "canary after the run")?;
    let (Some(report), Some(floors)) = (report, floors) else {
        return Ok(());
    };
    let canary = before.zip(after).map(|(b, a)| Canary::new(b, a, &floors));
    let report = report.with_floors(floors, canary);
    print!("{}", report.table());
    let json = serde_json::to_vec_pretty(&report).expect("a report serialises");
    std::fs::write(&args.json, json).map_err(|source| Error::Io {
        op: "writing the JSON report",
        path: args.json.clone(),
        source,
    })?;
    println!("JSON: {}", args.json.display());
    match report.failure() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
