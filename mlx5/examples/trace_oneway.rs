//! Reads the event files of a traced cross-process ping-pong (see
//! `mlx5::trace`; `scripts/trace-pingpong.sh` makes them) and prints the
//! median time of each step of a message from one process to the other,
//! both ways:
//!
//! ```sh
//! cargo run --release -p mlx5 --example trace_oneway -- TSC_GHZ FILE_A FILE_B
//! ```
//!
//! `TSC_GHZ`: the time-stamp counter's rate (ticks per ns), to print
//! nanoseconds.

use std::process::ExitCode;

use mlx5::trace::{Events, STEPS, one_way};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [ghz, a, b] = &args[..] else {
        eprintln!("usage: trace_oneway TSC_GHZ FILE_A FILE_B");
        return ExitCode::from(2);
    };
    let Ok(ghz) = ghz.parse::<f64>() else {
        eprintln!("trace_oneway: TSC_GHZ must be a number (ticks per ns): {ghz:?}");
        return ExitCode::from(2);
    };
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map_err(|e| format!("{p}: {e}"))
            .and_then(|t| Events::parse(&t).map_err(|e| format!("{p}: {e}")))
    };
    let (a, b) = match (read(a), read(b)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("trace_oneway: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A message and its answer take a few microseconds; one over 20 000
    // ticks had another message's events in between.
    let mut matched = true;
    for (name, from, to) in [("A -> B", &a, &b), ("B -> A", &b, &a)] {
        let (med, n) = one_way(from, to, 20_000);
        matched &= n > 0;
        println!("{name}: {n} messages, medians");
        for (step, t) in STEPS.iter().zip(med) {
            println!("  {step:<40} {:>6.0} ns", t as f64 / ghz);
        }
        let sum: u64 = med.iter().sum();
        println!(
            "  {:<40} {:>6.0} ns",
            "sum of the medians",
            sum as f64 / ghz
        );
    }
    if !matched {
        eprintln!("trace_oneway: no message matched in one direction (not a ping-pong's events?)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
