//! Busy loops: a stall guard for measured ones ([`SpinLimit`]), and a
//! wait that still works when the partner shares the core ([`Patience`]).

use std::time::{Duration, Instant};

/// Polls between two looks at the clock.
const EVERY: u32 = 1024;

/// A limit on how long a measured busy loop may spin, which reads the
/// clock only every 1024 calls: a clock read per spin would be part of
/// every round trip the loop measures (tens of nanoseconds on a VM). The
/// limit counts from the first look, 1024 calls after creation, so a loop
/// that ends sooner never reads the clock.
#[derive(Debug)]
pub struct SpinLimit {
    limit: Duration,
    spins: u32,
    until: Option<Instant>,
}

impl SpinLimit {
    /// A limit of `limit`.
    pub fn new(limit: Duration) -> SpinLimit {
        SpinLimit {
            limit,
            spins: 0,
            until: None,
        }
    }

    /// Counts one spin; true once the limit has passed (seen at the next
    /// look at the clock).
    #[inline]
    pub fn passed(&mut self) -> bool {
        self.spins = self.spins.wrapping_add(1);
        if !self.spins.is_multiple_of(EVERY) {
            return false;
        }
        let now = Instant::now();
        now >= *self.until.get_or_insert(now + self.limit)
    }
}

/// Waits of a spinning loop that must also work when its partner shares
/// its core (a process that mpirun bound to one CPU, a one-CPU machine):
/// [`Patience::wait`] spins ([`std::hint::spin_loop`]) for its first
/// [`PATIENCE`] calls, far longer than a partner on another core takes to
/// answer, then gives the core away (`sched_yield`) at every call, so a
/// partner on the same core runs instead of waiting for a time slice.
#[derive(Debug)]
pub struct Patience {
    spins: u32,
    limit: u32,
}

/// Spins before [`Patience`] starts yielding.
pub const PATIENCE: u32 = 256;

impl Default for Patience {
    fn default() -> Patience {
        Patience::new()
    }
}

impl Patience {
    /// A fresh wait: [`PATIENCE`] spins, then yields.
    pub fn new() -> Patience {
        Patience::spinning(PATIENCE)
    }

    /// A fresh wait that spins `limit` times before it yields: 0 when
    /// the partner is known to share this thread's CPU (spinning cannot
    /// help it run).
    pub fn spinning(limit: u32) -> Patience {
        Patience { spins: 0, limit }
    }

    /// One turn of the wait.
    #[inline]
    pub fn wait(&mut self) {
        if self.spins < self.limit {
            self.spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }

    /// Whether the wait has started yielding.
    pub fn yielding(&self) -> bool {
        self.spins >= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patience_spins_then_yields() {
        let mut p = Patience::new();
        for _ in 0..PATIENCE {
            assert!(!p.yielding());
            p.wait();
        }
        assert!(p.yielding());
        p.wait();
        assert!(p.yielding());
        assert!(Patience::spinning(0).yielding(), "no spin at all");
    }

    #[test]
    fn two_threads_on_one_cpu_bounce_a_line_in_reasonable_time() {
        // Both ends of the floor pinned to one CPU: a pure spin would hand
        // the line over once per time slice (20 000 trips: minutes).
        let cpu = crate::allowed_cpus()[0];
        let b = std::sync::Arc::new(crate::Bounce::new());
        let server = {
            let b = b.clone();
            std::thread::spawn(move || {
                crate::pin(cpu);
                crate::floor_server(&b, u64::MAX);
            })
        };
        crate::pin(cpu);
        let t = Instant::now();
        crate::floor_client(&b, 20_000, 0);
        // Release: the stop value, as floor_threads publishes it.
        b.ping.store(u64::MAX, std::sync::atomic::Ordering::Release);
        server.join().unwrap();
        crate::unpin(&crate::allowed_cpus());
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{:?} for 20 000 trips on one CPU",
            t.elapsed()
        );
    }

    #[test]
    fn the_clock_is_read_every_1024_spins_and_the_limit_is_seen() {
        let mut l = SpinLimit::new(Duration::ZERO);
        for _ in 0..EVERY - 1 {
            assert!(!l.passed());
        }
        assert!(l.until.is_none(), "no look at the clock before 1024 spins");
        assert!(l.passed(), "a zero limit has passed at the first look");
        let mut l = SpinLimit::new(Duration::from_secs(3600));
        for _ in 0..4 * EVERY {
            assert!(!l.passed());
        }
        assert!(l.until.is_some());
    }
}
