//! The progress line rank 0 prints on stderr while a run goes: elapsed
//! time, operations so far (this rank's clients, warm-up included) and the
//! rate since the last line. On a terminal it is rewritten in place a few
//! times a second; otherwise one line per second.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// The progress line of one run.
pub struct Progress {
    label: String,
    tty: bool,
    enabled: bool,
    start: Instant,
    last: Instant,
    last_ops: u64,
    printed: bool,
}

impl Progress {
    /// Starts the line for `label` (`run 1/3`); `enabled` is false on the
    /// ranks other than 0.
    pub fn new(label: String, enabled: bool) -> Progress {
        let now = Instant::now();
        Progress {
            label,
            tty: std::io::stderr().is_terminal(),
            enabled,
            start: now,
            last: now,
            last_ops: 0,
            printed: false,
        }
    }

    /// Updates the line if it is due, with `ops` completed so far.
    pub fn tick(&mut self, ops: u64) {
        if !self.enabled {
            return;
        }
        let every = if self.tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(1)
        };
        let now = Instant::now();
        let dt = now.duration_since(self.last);
        if dt < every {
            return;
        }
        let rate = (ops - self.last_ops) as f64 / dt.as_secs_f64();
        let line = format!(
            "benchkv {}: {:.1} s, {} ops (rank 0), {}ops/s",
            self.label,
            now.duration_since(self.start).as_secs_f64(),
            ops,
            crate::report::rate(rate)
        );
        // One write per line, so that mpirun does not interleave it with
        // another rank's output. A progress line that cannot be written is
        // not worth failing for.
        let text = if self.tty {
            format!("\r\x1b[2K{line}")
        } else {
            format!("{line}\n")
        };
        let _ = std::io::stderr().write_all(text.as_bytes());
        self.printed = true;
        self.last = now;
        self.last_ops = ops;
    }

    /// Ends the line (a newline after an in-place line).
    pub fn finish(&mut self) {
        if self.enabled && self.tty && self.printed {
            eprintln!();
        }
    }
}
