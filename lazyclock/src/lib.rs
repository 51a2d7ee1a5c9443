//! The clock of a polling loop: `Instant::now()`, unless the last instant
//! read is at most [`REUSE`] time-stamp-counter ticks old, in which case
//! that one again.
//!
//! A loop that polls for work checks deadlines on every turn: the software
//! device's passes (its links' deadlines and timers), copyrpc's polls (its
//! calls' timeouts). On x86-64 `Instant::now()` is `clock_gettime` in the
//! vDSO, whose ordered TSC read waits for every load before it, cache
//! misses included: a turn that has just read a line another core wrote
//! pays for the miss again in the clock read instead of overlapping it
//! with its work. On the 2-vCPU AMD EPYC VM this was written on,
//! copyrpc's `poll/idle-call-waiting` figure (`cargo bench -p copyrpc`: an
//! idle poll with a call in flight, whose deadline the poll and the
//! device's quiet pass each looked at) read 41 ns with clock reads (this
//! bench file built against git `bda4147`, before this crate) and 19–21 ns
//! with this, in interleaved runs. `rdtsc` alone is not ordered, and cheap
//! where a hypervisor does not trap it.
//!
//! The instant returned is never later than the true time and at most
//! `REUSE` ticks earlier: 4096 ticks, about 1–4 µs at the 1–4 GHz TSCs of
//! x86-64 CPUs ([`MAX_STALE`] bounds it for any TSC of 410 MHz or more).
//! A deadline compared with it is seen at most that much late, never
//! early. A deadline *formed* from it (`now() + d`) starts up to that much
//! early, so ends early unless `MAX_STALE` is added, as copyrpc's call
//! deadlines do; the software device's deadlines formed this way (a
//! link's ACK timeout since its last progress, its control-socket check)
//! are milliseconds, against which the microseconds do not matter, and
//! its RNR retry timers read the clock itself.
//!
//! The counter is used only where the CPU says it is invariant (it runs at
//! one rate in every power state, CPUID leaf 0x8000_0007, EDX bit 8):
//! there a delta below `REUSE` ticks is a short time whatever happened in
//! between (a sleep, a migration between cores whose counters the
//! hardware and firmware keep in step; a kernel that finds them out of
//! step stops trusting the TSC for its own clock, which this does not
//! notice, but then the error is the skew between cores). A delta that
//! went backwards reads as huge, so it reads the clock. Elsewhere, and on
//! other architectures, every call reads the clock.
//!
//! ```
//! use std::time::{Duration, Instant};
//!
//! let mut clock = lazyclock::LazyClock::default();
//! let deadline = Instant::now() + Duration::from_millis(1);
//! while clock.now() < deadline {
//!     // poll for work
//! }
//! assert!(Instant::now() >= deadline);
//! ```

#![deny(missing_docs)]

use std::time::Instant;

/// Ticks for which an instant read is reused.
pub const REUSE: u64 = 4096;

/// The most an instant from [`LazyClock::now`] is behind the true time:
/// [`REUSE`] ticks of a TSC of 410 MHz or faster (x86-64 CPUs with an
/// invariant TSC run it at their base frequency, above 1 GHz). A deadline
/// that must not pass early, set from a lazy instant, adds this.
pub const MAX_STALE: std::time::Duration = std::time::Duration::from_micros(10);

/// A clock for one polling loop (see the crate doc). `Default` has read
/// nothing yet.
#[derive(Debug, Default)]
pub struct LazyClock {
    /// The counter and the instant at the last clock read.
    last: Option<(u64, Instant)>,
}

impl LazyClock {
    /// Now, or the instant last read if that was at most [`REUSE`] ticks
    /// ago.
    #[inline]
    pub fn now(&mut self) -> Instant {
        self.now_at(ticks(), Instant::now)
    }

    /// [`LazyClock::now`] with the counter's reading `t` (`None`: no
    /// usable counter) and the clock `read`, read after the counter.
    #[inline]
    fn now_at(&mut self, t: Option<u64>, read: impl FnOnce() -> Instant) -> Instant {
        let Some(t) = t else {
            return read();
        };
        if let Some((at, i)) = self.last
            && t.wrapping_sub(at) <= REUSE
        {
            return i;
        }
        let i = read();
        self.last = Some((t, i));
        i
    }
}

/// The time-stamp counter where it is invariant; `None` elsewhere.
#[cfg(target_arch = "x86_64")]
#[inline]
fn ticks() -> Option<u64> {
    use std::sync::atomic::{AtomicU8, Ordering};
    // 0: not asked yet, 1: invariant, 2: not.
    static INVARIANT: AtomicU8 = AtomicU8::new(0);
    // Relaxed: a cached answer to a question with one answer per machine.
    let known = INVARIANT.load(Ordering::Relaxed);
    let invariant = if known == 0 {
        let yes = invariant_tsc();
        INVARIANT.store(if yes { 1 } else { 2 }, Ordering::Relaxed);
        yes
    } else {
        known == 1
    };
    // SAFETY: `rdtsc` is part of x86-64 (no CPU feature to check) and
    // reads a counter; it has no preconditions.
    invariant.then(|| unsafe { std::arch::x86_64::_rdtsc() })
}

/// Whether CPUID says the TSC is invariant.
#[cfg(target_arch = "x86_64")]
fn invariant_tsc() -> bool {
    use std::arch::x86_64::__cpuid;
    // CPUID exists on every x86-64 CPU; the extended leaf is read only if
    // the maximum extended leaf reaches it.
    let max = __cpuid(0x8000_0000).eax;
    max >= 0x8000_0007 && __cpuid(0x8000_0007).edx & (1 << 8) != 0
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn ticks() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The instant a lazy clock returns is never later than the true time
    /// and, after a pause far longer than `REUSE` ticks, is fresh again.
    #[test]
    fn never_ahead_and_fresh_after_a_pause() {
        let mut c = LazyClock::default();
        for _ in 0..10_000 {
            let before = Instant::now();
            let got = c.now();
            let after = Instant::now();
            assert!(got <= after);
            // At most REUSE ticks stale (MAX_STALE on this machine's TSC;
            // a preemption between the two reads can add to it).
            assert!(before.saturating_duration_since(got) < Duration::from_millis(1));
        }
        let first = c.now();
        std::thread::sleep(Duration::from_millis(5));
        let later = c.now();
        assert!(later.duration_since(first) >= Duration::from_millis(5));
    }

    /// With injected counter readings: reused up to exactly `REUSE` ticks
    /// after a read, read again one tick later, again when the counter
    /// went backwards, and every time without a counter.
    #[test]
    fn reuse_ends_after_reuse_ticks_and_when_the_counter_goes_back() {
        let base = Instant::now();
        let mut reads = 0u32;
        let mut clock = LazyClock::default();
        let mut at = |c: &mut LazyClock, t: Option<u64>| {
            c.now_at(t, || {
                reads += 1;
                base + Duration::from_nanos(u64::from(reads))
            })
        };
        let first = at(&mut clock, Some(1000));
        assert_eq!(at(&mut clock, Some(1000)), first);
        assert_eq!(at(&mut clock, Some(1000 + REUSE)), first);
        let second = at(&mut clock, Some(1001 + REUSE));
        assert!(second > first);
        assert_eq!(at(&mut clock, Some(1001 + REUSE + 7)), second);
        let third = at(&mut clock, Some(500));
        assert!(third > second, "a counter that went back reads the clock");
        let a = at(&mut clock, None);
        let b = at(&mut clock, None);
        assert!(b > a && a > third, "no counter: every call reads the clock");
    }

    /// Instants never go back, and calls a few ticks apart return the same
    /// one where the counter is used (the point of the cache).
    #[test]
    fn monotonic_and_reused_where_the_counter_is_invariant() {
        let mut c = LazyClock::default();
        let mut last = c.now();
        let mut reused = 0;
        for _ in 0..10_000 {
            let i = c.now();
            assert!(i >= last);
            reused += usize::from(i == last);
            last = i;
        }
        if ticks().is_some() {
            assert!(reused > 0, "an invariant TSC but no instant was reused");
        }
    }
}
