//! The command line: `benchkv [run] [OPTIONS]` runs one configuration,
//! `benchkv sweep [OPTIONS]` a matrix of them. Every rank parses the same
//! arguments and refuses bad ones with the same message.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::error::Error;
use crate::params::{self, Backend, Dist, IdleYield, Params};

/// Two-node KV daemon benchmark, launched with mpirun: copyrpc against UCX
/// active messages.
#[derive(Debug, Parser)]
#[command(
    name = "benchkv",
    version,
    args_conflicts_with_subcommands = true,
    allow_negative_numbers = true
)]
pub struct Cli {
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `run` when no subcommand is given.
    #[command(flatten)]
    pub run: RunArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one configuration (the default).
    #[command(allow_negative_numbers = true)]
    Run(RunArgs),
    /// Run a matrix of backends × clients × queue depths; write the JSON of
    /// every point, a CSV of the rows and an SVG plot.
    #[command(allow_negative_numbers = true)]
    Sweep(SweepArgs),
    /// A client process (`--client-procs`), started by its rank, which
    /// passes its spec in the environment and talks to it on stdin and
    /// stdout.
    #[command(hide = true)]
    ClientProcess,
}

/// The workload, shared by `run` and `sweep`.
#[derive(Debug, Args, Clone)]
pub struct WorkloadArgs {
    /// Keys per rank.
    #[arg(long, default_value_t = 1024)]
    pub keys: u64,
    /// Fraction of GETs (0 to 1).
    #[arg(long, default_value_t = 0.5)]
    pub read_ratio: f64,
    /// Key distribution: uniform, zipf (θ = 0.99) or zipf:THETA.
    #[arg(long, default_value = "uniform")]
    pub dist: String,
    /// Bytes per value (8 to 4096).
    #[arg(long, default_value_t = 8)]
    pub value_size: usize,
    /// Seconds of warm-up before each measured run.
    #[arg(long, default_value = "1", value_parser = params::parse_seconds)]
    pub warmup: Duration,
    /// Seconds measured per run.
    #[arg(long, default_value = "5", value_parser = params::parse_seconds)]
    pub duration: Duration,
    /// Measured runs.
    #[arg(long, default_value_t = 1)]
    pub runs: u32,
    /// Seed of the clients' operation streams.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Check that every GET returns the last value PUT for its key (each
    /// client then uses keys of its own); a mismatch fails the run.
    #[arg(long)]
    pub verify: bool,
    /// Time every daemon round (two reads of the CPU's time-stamp counter
    /// each, counted in the times) and print what busy and idle rounds
    /// cost, and the network backend's part of it: where a daemon's time
    /// goes.
    #[arg(long)]
    pub round_costs: bool,
    /// Daemon threads per rank.
    #[arg(long, default_value_t = 1)]
    pub daemons: usize,
    /// Run the clients as processes of their own (the rank starts them),
    /// so that the ipc layer is crossed between processes.
    #[arg(long)]
    pub client_procs: bool,
    /// When an idle daemon or client yields its core: auto (at once when
    /// the busy threads of the ranks on a host outnumber its cores, else
    /// never), never, or after N empty rounds.
    #[arg(long, default_value = "auto")]
    pub idle_yield: String,
}

/// `benchkv run`.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Network between ranks: copyrpc, ucx-am, or ucx-am:TLS (ucx-am:tcp,
    /// ucx-am:shm) to set UCX's transports.
    #[arg(long, default_value = "copyrpc")]
    pub backend: String,
    /// Clients per rank.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Calls in flight per client.
    #[arg(long, default_value_t = 8)]
    pub depth: usize,
    /// The workload.
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Where rank 0 writes the JSON report.
    #[arg(long, default_value = "benchkv.json")]
    pub json: PathBuf,
}

/// `benchkv sweep`.
#[derive(Debug, Args, Clone)]
pub struct SweepArgs {
    /// Backends, comma-separated.
    #[arg(
        long,
        default_value = "copyrpc,ucx-am:tcp,ucx-am:shm",
        value_delimiter = ','
    )]
    pub backends: Vec<String>,
    /// Clients per rank, comma-separated.
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    pub clients: Vec<usize>,
    /// Queue depths, comma-separated.
    #[arg(long, default_value = "1,8,32", value_delimiter = ',')]
    pub depths: Vec<usize>,
    /// The workload of every point.
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Directory for the points' JSON, sweep.csv and sweep.svg.
    #[arg(long, default_value = "benchkv-sweep")]
    pub out: PathBuf,
}

impl WorkloadArgs {
    /// The parameters with this workload, `backend`, `clients` and
    /// `depth` (checked later, against the number of ranks).
    pub fn params(&self, backend: &str, clients: usize, depth: usize) -> Result<Params, Error> {
        Ok(Params {
            backend: Backend::parse(backend)?,
            daemons: self.daemons,
            clients,
            client_procs: self.client_procs,
            depth,
            keys: self.keys,
            read_ratio: self.read_ratio,
            dist: Dist::parse(&self.dist)?,
            value_size: self.value_size,
            warmup: self.warmup,
            duration: self.duration,
            runs: self.runs,
            seed: self.seed,
            verify: self.verify,
            idle_yield: IdleYield::parse(&self.idle_yield)?,
            round_costs: self.round_costs,
        })
    }
}

impl RunArgs {
    /// The run's parameters.
    pub fn params(&self) -> Result<Params, Error> {
        self.workload
            .params(&self.backend, self.clients, self.depth)
    }
}

impl SweepArgs {
    /// Every point's parameters, in the order they run: for each clients ×
    /// depth, every backend in turn (A B C A B C, so a slow phase of the
    /// host does not fall on one backend only).
    pub fn points(&self) -> Result<Vec<Params>, Error> {
        if self.backends.is_empty() || self.clients.is_empty() || self.depths.is_empty() {
            return Err(Error::Params(
                "a sweep needs at least one backend, client count and depth".into(),
            ));
        }
        let mut out = Vec::new();
        for &c in &self.clients {
            for &q in &self.depths {
                for b in &self.backends {
                    out.push(self.workload.params(b, c, q)?);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("benchkv").chain(args.iter().copied()))
    }

    #[test]
    fn run_is_the_default_command() {
        let cli = parse(&["--clients", "3", "--verify"]).unwrap();
        assert!(cli.command.is_none());
        let p = cli.run.params().unwrap();
        assert_eq!(p.clients, 3);
        assert!(p.verify);
        let cli = parse(&["run", "--backend", "ucx-am:tcp", "--duration", "0.5"]).unwrap();
        let Some(Command::Run(r)) = cli.command else {
            panic!("run")
        };
        let p = r.params().unwrap();
        assert_eq!(p.backend.to_string(), "ucx-am:tcp");
        assert_eq!(p.duration, Duration::from_millis(500));
    }

    #[test]
    fn unknown_flags_and_values_are_refused() {
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--depth", "x"]).is_err());
        assert!(parse(&["--duration", "-1"]).is_err());
        let cli = parse(&["--backend", "rdma"]).unwrap();
        assert!(
            cli.run
                .params()
                .unwrap_err()
                .to_string()
                .contains("unknown backend")
        );
        let cli = parse(&["--idle-yield", "0"]).unwrap();
        assert!(
            cli.run
                .params()
                .unwrap_err()
                .to_string()
                .contains("--idle-yield")
        );
        let cli = parse(&["--dist", "zipf:0"]).unwrap();
        assert!(cli.run.params().is_err());
    }

    #[test]
    fn a_sweep_interleaves_backends() {
        let cli = parse(&[
            "sweep",
            "--backends",
            "copyrpc,ucx-am:tcp",
            "--clients",
            "1,2",
            "--depths",
            "4",
        ])
        .unwrap();
        let Some(Command::Sweep(s)) = cli.command else {
            panic!("sweep")
        };
        let pts = s.points().unwrap();
        let names: Vec<String> = pts
            .iter()
            .map(|p| format!("{}/{}/{}", p.backend, p.clients, p.depth))
            .collect();
        assert_eq!(
            names,
            [
                "copyrpc/1/4",
                "ucx-am:tcp/1/4",
                "copyrpc/2/4",
                "ucx-am:tcp/2/4"
            ]
        );
    }
}
