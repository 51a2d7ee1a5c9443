//! Hardware and software counters around each figure, through
//! `perf_event_open` (the `perf-event2` crate), where the kernel allows them.
//!
//! Each counter counts this process in user mode and inherits into the
//! threads and processes it starts afterwards, so a figure's counts include
//! its server thread or helper process (their counts join the parent's when
//! they exit, which every figure's run waits for). A figure's counts cover
//! its whole `run(iters)` call, set-up included, divided by `iters`.
//!
//! Many virtual machines expose no hardware counters (`perf_event_open`
//! fails with ENOENT or EOPNOTSUPP for cycles); software counters (task
//! clock, context switches, page faults) usually still open. Each counter
//! that does not open is left out with its reason, which the summary's JSON
//! carries, so a report says why instead of leaving a blank
//! (DESIGN.md, decision 13).

use std::collections::BTreeMap;

use perf_event::events::{Cache, CacheId, CacheOp, CacheResult, Event, Hardware, Software};
use perf_event::{Builder, Counter};
use serde::{Deserialize, Serialize};

/// The counters a figure is measured with, by the name the JSON gives them.
fn wanted() -> Vec<(&'static str, Builder<'static>)> {
    fn b(e: impl Event + 'static) -> Builder<'static> {
        let mut b = Builder::new(e);
        b.inherit(true).enabled(false);
        b
    }
    let llc_read_misses = Cache {
        which: CacheId::LL,
        operation: CacheOp::READ,
        result: CacheResult::MISS,
    };
    vec![
        ("cycles", b(Hardware::CPU_CYCLES)),
        ("instructions", b(Hardware::INSTRUCTIONS)),
        ("cache_references", b(Hardware::CACHE_REFERENCES)),
        ("cache_misses", b(Hardware::CACHE_MISSES)),
        ("llc_read_misses", b(llc_read_misses)),
        ("task_clock_ns", b(Software::TASK_CLOCK)),
        ("context_switches", b(Software::CONTEXT_SWITCHES)),
        ("page_faults", b(Software::PAGE_FAULTS)),
    ]
}

/// The names of the hardware counters among [`wanted`]'s.
pub const HARDWARE: [&str; 5] = [
    "cycles",
    "instructions",
    "cache_references",
    "cache_misses",
    "llc_read_misses",
];

/// Which counters opened, and why the others did not.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Availability {
    /// Counters that opened.
    pub opened: Vec<String>,
    /// Counters that did not, with the error (`perf_event_open(cycles):
    /// No such file or directory (os error 2)` and the like).
    pub missing: Vec<(String, String)>,
    /// `/proc/sys/kernel/perf_event_paranoid`, when readable.
    pub paranoid: Option<String>,
}

impl Availability {
    /// Whether every hardware counter opened.
    pub fn hardware(&self) -> bool {
        HARDWARE.iter().all(|h| self.opened.iter().any(|o| o == h))
    }
}

/// Counters opened for this process.
pub struct Counters {
    open: Vec<(&'static str, Counter)>,
    /// Each counter's value at [`Counters::start`].
    at_start: Vec<u64>,
    availability: Availability,
}

impl Counters {
    /// Opens every counter the kernel allows; never fails (what did not open
    /// is in [`Counters::availability`]).
    pub fn open() -> Self {
        let mut open = Vec::new();
        let mut availability = Availability {
            paranoid: std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
                .ok()
                .map(|s| s.trim().to_string()),
            ..Availability::default()
        };
        for (name, builder) in wanted() {
            match builder.build() {
                Ok(c) => {
                    availability.opened.push(name.to_string());
                    open.push((name, c));
                }
                Err(e) => availability
                    .missing
                    .push((name.to_string(), format!("perf_event_open({name}): {e}"))),
            }
        }
        Self {
            at_start: vec![0; open.len()],
            open,
            availability,
        }
    }

    /// Which counters opened.
    pub fn availability(&self) -> &Availability {
        &self.availability
    }

    /// Starts every open counter and notes where it stands.
    ///
    /// Counts are differences of two reads rather than counts since a
    /// reset: a reset clears the process's own count but not what its
    /// exited threads and children added, which an inherited counter keeps.
    pub fn start(&mut self) {
        for ((_, c), s) in self.open.iter_mut().zip(&mut self.at_start) {
            // A counter that cannot be enabled or read counts nothing here;
            // `stop` then reports zero for it, which the summary drops.
            let _ = c.enable();
            *s = c.read().unwrap_or(0);
        }
    }

    /// Stops every open counter and returns the counts since
    /// [`start`](Self::start).
    pub fn stop(&mut self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for ((name, c), s) in self.open.iter_mut().zip(&self.at_start) {
            let _ = c.disable();
            if let Ok(v) = c.read() {
                out.insert(name.to_string(), v.saturating_sub(*s));
            }
        }
        out
    }
}
