//! The interleaved summary: every figure of a bench, repeated in rounds
//! (A B C, A B C, … rather than A A A, B B B), each round bracketed by a
//! floor canary, rounds taken in a slow phase of the host dropped, and the
//! median of the rest reported.
//!
//! Why: on the shared two-core machines this workspace is measured on, the
//! host has phases lasting seconds in which the cache-line floor jumps from
//! about 75 ns to 350–430 ns. Interleaving puts every figure into every
//! phase alike, so ratios taken between figures of one round stay honest,
//! and the canary tells which rounds to distrust (DESIGN.md, decision 12).
//!
//! [`run`] only measures; each bench builds its own table from the
//! [`Medians`] (ratios to its floor and peers), then hands the text to
//! [`write_report`].

use std::time::Duration;

use crate::affinity::allowed_cpus;

/// A round is dropped when its canary exceeds this multiple of the best
/// canary of the run.
pub const SLOW_FACTOR: f64 = 2.0;

/// The environment knobs every bench honours, named `<PREFIX>_ROUNDS`,
/// `<PREFIX>_VERBOSE`, `<PREFIX>_SKIP_CRITERION` and `<PREFIX>_SKIP_SUMMARY`
/// (for example `IPC_BENCH_ROUNDS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knobs {
    /// Summary rounds (`_ROUNDS`, at least 1).
    pub rounds: usize,
    /// Print each figure's name as it is measured (`_VERBOSE` set).
    pub verbose: bool,
    /// Skip the criterion groups (`_SKIP_CRITERION` set).
    pub skip_criterion: bool,
    /// Skip the summary (`_SKIP_SUMMARY` set).
    pub skip_summary: bool,
}

impl Knobs {
    /// Reads the knobs of `prefix` (such as `"IPC_BENCH"`); `rounds` is
    /// `default_rounds` unless `<PREFIX>_ROUNDS` holds a number.
    pub fn from_env(prefix: &str, default_rounds: usize) -> Self {
        let set = |name: &str| std::env::var_os(format!("{prefix}_{name}")).is_some();
        Self {
            rounds: std::env::var(format!("{prefix}_ROUNDS"))
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(default_rounds)
                .max(1),
            verbose: set("VERBOSE"),
            skip_criterion: set("SKIP_CRITERION"),
            skip_summary: set("SKIP_SUMMARY"),
        }
    }
}

/// What a figure's time means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The time of one operation (a round trip): report nanoseconds.
    Latency,
    /// `iters` messages moved in the measured time: report messages (or
    /// calls) per second; the time per operation is the inverse rate.
    Throughput,
}

/// One figure of the summary: a closure that performs `iters` operations
/// and returns how long they took.
pub struct Item<'a> {
    id: String,
    iters: u64,
    kind: Kind,
    note: Option<String>,
    run: Box<dyn FnMut(u64) -> Duration + 'a>,
}

impl<'a> Item<'a> {
    /// A figure of `kind`, named `id` (criterion's `group/function` name by
    /// convention), measured as `run(iters)` once per round.
    pub fn new(
        id: impl Into<String>,
        kind: Kind,
        iters: u64,
        run: impl FnMut(u64) -> Duration + 'a,
    ) -> Self {
        Self {
            id: id.into(),
            iters: iters.max(1),
            kind,
            note: None,
            run: Box::new(run),
        }
    }

    /// A [`Kind::Latency`] figure.
    pub fn latency(
        id: impl Into<String>,
        iters: u64,
        run: impl FnMut(u64) -> Duration + 'a,
    ) -> Self {
        Self::new(id, Kind::Latency, iters, run)
    }

    /// A [`Kind::Throughput`] figure.
    pub fn throughput(
        id: impl Into<String>,
        iters: u64,
        run: impl FnMut(u64) -> Duration + 'a,
    ) -> Self {
        Self::new(id, Kind::Throughput, iters, run)
    }

    /// Attaches a remark for the table (an oversubscription warning, how a
    /// peer is driven); `None` leaves it without.
    pub fn note(mut self, note: Option<String>) -> Self {
        self.note = note;
        self
    }
}

/// One figure's result.
#[derive(Debug, Clone)]
pub struct Figure {
    /// The item's id.
    pub id: String,
    /// The item's kind.
    pub kind: Kind,
    /// Operations per round.
    pub iters: u64,
    /// The item's note.
    pub note: Option<String>,
    /// Median over the kept rounds of the nanoseconds per operation.
    pub ns: f64,
    /// Nanoseconds per operation of every round, dropped ones included.
    pub samples: Vec<f64>,
}

impl Figure {
    /// Operations per second at the median (`1e9 / ns`).
    pub fn per_second(&self) -> f64 {
        1e9 / self.ns
    }
}

/// What [`run`] measured.
#[derive(Debug, Clone)]
pub struct Medians {
    /// Every item's figure, in the order given.
    pub figures: Vec<Figure>,
    /// Per round, the worse of the canaries before and after it (ns).
    pub canaries: Vec<f64>,
    /// Per round, whether it counts (its canary was within
    /// [`SLOW_FACTOR`] of the best).
    pub kept: Vec<bool>,
    /// Whether every round was slow, so none was dropped after all.
    pub all_slow: bool,
}

impl Medians {
    /// The figure named `id`.
    pub fn get(&self, id: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.id == id)
    }

    /// Median nanoseconds per operation of the figure named `id`.
    ///
    /// # Panics
    ///
    /// If there is none: a bench's table names only its own items.
    pub fn ns(&self, id: &str) -> f64 {
        self.get(id)
            .unwrap_or_else(|| panic!("no summary figure named {id}"))
            .ns
    }

    /// Rounds measured.
    pub fn rounds(&self) -> usize {
        self.canaries.len()
    }

    /// Rounds dropped as slow-phase.
    pub fn dropped(&self) -> usize {
        self.kept.iter().filter(|&&k| !k).count()
    }

    /// The table's first line: `"<name> summary: median of K interleaved
    /// rounds (D dropped as slow-phase); <machine>"` and a blank line.
    pub fn preamble(&self, name: &str) -> String {
        format!(
            "{name} summary: median of {} interleaved rounds ({} dropped as slow-phase{}); {}\n\n",
            self.rounds() - self.dropped(),
            self.dropped(),
            if self.all_slow {
                ", all slow: none dropped"
            } else {
                ""
            },
            machine()
        )
    }

    /// The canaries rounded to whole nanoseconds, one per round.
    pub fn canaries_ns(&self) -> Vec<u64> {
        self.canaries.iter().map(|c| c.round() as u64).collect()
    }
}

/// Measures every item once per round, in the order given, for
/// `knobs.rounds` rounds; `canary()` (nanoseconds, such as
/// [`canary_ns`](crate::canary_ns)) runs before and after each round.
/// A round whose worse canary exceeds [`SLOW_FACTOR`] times the best round's
/// is dropped, unless every round would be. Progress goes to stderr.
pub fn run(knobs: &Knobs, items: Vec<Item<'_>>, mut canary: impl FnMut() -> f64) -> Medians {
    let mut items = items;
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(knobs.rounds); items.len()];
    let mut canaries = Vec::with_capacity(knobs.rounds);
    for r in 0..knobs.rounds {
        let before = canary();
        for (it, s) in items.iter_mut().zip(&mut samples) {
            if knobs.verbose {
                eprintln!("  {} x{}", it.id, it.iters);
            }
            let d = (it.run)(it.iters);
            s.push(d.as_nanos() as f64 / it.iters as f64);
        }
        let after = canary();
        eprintln!(
            "summary round {}/{}: canary {before:.0} ns before, {after:.0} ns after",
            r + 1,
            knobs.rounds
        );
        canaries.push(before.max(after));
    }
    let best = canaries.iter().copied().fold(f64::INFINITY, f64::min);
    let mut kept: Vec<bool> = canaries.iter().map(|&c| c <= SLOW_FACTOR * best).collect();
    let all_slow = !kept.iter().any(|&k| k);
    if all_slow {
        kept.iter_mut().for_each(|k| *k = true);
    }
    let figures = items
        .into_iter()
        .zip(samples)
        .map(|(it, samples)| {
            let counted: Vec<f64> = samples
                .iter()
                .zip(&kept)
                .filter(|(_, k)| **k)
                .map(|(s, _)| *s)
                .collect();
            Figure {
                id: it.id,
                kind: it.kind,
                iters: it.iters,
                note: it.note,
                ns: median(&counted),
                samples,
            }
        })
        .collect();
    Medians {
        figures,
        canaries,
        kept,
        all_slow,
    }
}

/// Median of `xs` (NaN when empty).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// The machine in one line: "Intel(R) Xeon(R) Processor, 2 CPUs usable,
/// kernel 6.1.0, host vm" and the like.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown CPU");
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    format!(
        "{model}, {} CPUs usable, kernel {}, host {}",
        allowed_cpus().len(),
        read("/proc/sys/kernel/osrelease").trim(),
        read("/proc/sys/kernel/hostname").trim()
    )
}

/// "met" or "NOT met", for a table's targets line.
pub fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// Prints `text` (after a blank line) and writes it to
/// `target/bench-summary/<name>.md` in the workspace, where `scripts/bench.sh`
/// collects every bench's table. A failure to write is reported on stderr;
/// the printed table is the result either way.
pub fn write_report(name: &str, text: &str) {
    println!("\n{text}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-summary");
    let path = dir.join(format!("{name}.md"));
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
        eprintln!("could not write {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn rounds_in_a_slow_phase_are_dropped_from_the_median() {
        let knobs = Knobs {
            rounds: 4,
            verbose: false,
            skip_criterion: false,
            skip_summary: false,
        };
        // Round 3 (index 2) is slow: its canary and its sample are 10×.
        // Two canaries per round, before and after.
        let canaries = [100.0, 100.0, 110.0, 100.0, 1000.0, 100.0, 100.0, 100.0];
        let mut c = canaries.iter().copied();
        let mut round = 0;
        let times = [10u64, 12, 100, 11];
        let items = vec![Item::latency("a", 1, |_| {
            round += 1;
            Duration::from_nanos(times[round - 1])
        })];
        let m = run(&knobs, items, || c.next().unwrap());
        assert_eq!(m.kept, [true, true, false, true]);
        assert_eq!(m.dropped(), 1);
        assert!(!m.all_slow);
        assert_eq!(m.ns("a"), 11.0);
        assert_eq!(m.get("a").unwrap().samples, [10.0, 12.0, 100.0, 11.0]);
    }

    #[test]
    fn items_are_interleaved_round_by_round() {
        let knobs = Knobs {
            rounds: 2,
            verbose: false,
            skip_criterion: false,
            skip_summary: false,
        };
        let order = std::cell::RefCell::new(Vec::new());
        let items = vec![
            Item::latency("a", 1, |_| {
                order.borrow_mut().push('a');
                Duration::from_nanos(1)
            }),
            Item::throughput("b", 4, |n| {
                order.borrow_mut().push('b');
                Duration::from_nanos(n * 2)
            }),
        ];
        let m = run(&knobs, items, || 1.0);
        assert_eq!(*order.borrow(), ['a', 'b', 'a', 'b']);
        assert_eq!(m.ns("b"), 2.0);
        assert_eq!(m.get("b").unwrap().per_second(), 5e8);
        assert_eq!(m.get("b").unwrap().kind, Kind::Throughput);
    }
}
