//! A stall guard for measured busy loops.

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

#[cfg(test)]
mod tests {
    use super::*;

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
