//! The workspace's shared benchmark harness.
//!
//! Every layer's criterion suite (`ipc`, `inproc`, …) measures the same way,
//! because an absolute number on a noisy two-core machine means little
//! alone (DESIGN.md, decision 12). This crate holds what they share:
//!
//! * **pinning** ([`core_pair`], [`pin`]): both sides of every two-party
//!   figure run on the same two cores, read once at start-up;
//! * **the floor** ([`floor_threads`], [`floor_processes`]): the cache-line
//!   round trip between those two cores, measured in the same run, which
//!   every shared-memory round trip is reported against as a ratio;
//! * **helper processes** ([`Helper`], [`as_helper`]): the bench binary
//!   re-executed with a role to play the other side of a cross-process
//!   figure;
//! * **the interleaved summary** ([`summary::run`]): every figure measured
//!   round by round (A B A B, not A A B B), a floor canary before and after
//!   each round, rounds taken in a slow phase of the host dropped, and the
//!   median of each figure returned for the bench to turn into its own
//!   table and ratios ([`Medians::write_report`], which also leaves every
//!   figure, its spread, its declared ratios and the run's metadata as JSON
//!   for `bench-report`);
//! * **counters** ([`counters`]): hardware and software counters per
//!   figure through `perf_event_open`, where the kernel allows them.
//!
//! A bench's `main` looks like this:
//!
//! ```no_run
//! use benchutil::{Item, Knobs, as_helper, canary_ns, floor_threads, summary};
//!
//! if as_helper(|role, _args| panic!("unknown bench role {role}")) {
//!     return; // this process was the other side of someone's measurement
//! }
//! let knobs = Knobs::from_env("MY_BENCH", 7);
//! // ... criterion groups unless knobs.skip_criterion ...
//! let items = vec![
//!     Item::latency("floor/threads", 200_000, floor_threads),
//!     // Item::latency("pingpong/mine", 200_000, my_pingpong),
//! ];
//! let mut m = summary::run(&knobs, items, canary_ns);
//! // let vs_floor = m.ratio("pingpong/mine", "floor/threads", "floor");
//! let text = format!(
//!     "{}floor/threads: {:.0} ns\n",
//!     m.preamble("my"),
//!     m.ns("floor/threads")
//! );
//! m.write_report("my", &text); // target/bench-summary/my.md and my.json
//! ```
//!
//! Linux only (`sched_setaffinity`, `/dev/shm`, `/proc`).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

mod affinity;
pub mod counters;
mod floor;
mod helper;
mod host;
mod spin;
pub mod summary;

pub use affinity::{allowed_cpus, core_pair, pin, unpin};
pub use floor::{
    Bounce, CANARY_TRIPS, canary_ns, floor_client, floor_processes, floor_server, floor_threads,
};
pub use helper::{Helper, ROLE_VAR, as_helper, mono_ns, unique};
pub use host::{cpu_model, host_name, kernel_release};
pub use spin::{PATIENCE, Patience, SpinLimit};
pub use summary::{
    Figure, FigureRecord, Item, Kind, Knobs, Medians, Metadata, Ratio, SuiteRecord, machine,
    median, summary_dir, verdict, write_report,
};

/// Criterion with the settings every suite of this workspace uses: short
/// (10 samples, 0.5 s warm-up, 2 s measurement) so all layers' suites run in
/// minutes, since the interleaved summary, not criterion, produces the
/// reported figures. Command-line arguments (filters) still apply.
pub fn criterion() -> criterion::Criterion {
    criterion::Criterion::default()
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
        .configure_from_args()
}

/// A figure both criterion and the interleaved summary measure, with the
/// same closure (shared: each calls it in turn), as the mlx5 and copyrpc
/// suites declare theirs.
pub struct SharedFigure {
    /// Criterion's `group/function` name, and the summary's.
    pub id: String,
    /// What its time means.
    pub kind: Kind,
    /// Operations per summary round.
    pub iters: u64,
    /// Performs `n` operations and returns how long they took.
    pub run: std::rc::Rc<std::cell::RefCell<dyn FnMut(u64) -> std::time::Duration>>,
}

/// Runs `figures` as criterion benchmarks (unless `knobs.skip_criterion`),
/// then through [`summary::run`] with [`canary_ns`] as the canary; `None`
/// when `knobs.skip_summary`.
pub fn criterion_then_summary<'a>(
    knobs: &Knobs,
    figures: impl IntoIterator<Item = &'a SharedFigure> + Clone,
) -> Option<Medians> {
    if !knobs.skip_criterion {
        let mut c = criterion();
        for f in figures.clone() {
            let run = f.run.clone();
            c.bench_function(&f.id, |b| b.iter_custom(|n| (run.borrow_mut())(n)));
        }
        c.final_summary();
    }
    if knobs.skip_summary {
        return None;
    }
    let items = figures
        .into_iter()
        .map(|f| {
            let run = f.run.clone();
            Item::new(f.id.clone(), f.kind, f.iters, move |n| {
                (run.borrow_mut())(n)
            })
        })
        .collect();
    Some(summary::run(knobs, items, canary_ns))
}
