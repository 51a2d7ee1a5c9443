//! Where a cross-process message's time goes: time-stamp-counter events
//! at the steps of the software device's send and receive paths, recorded
//! in both processes of a ping-pong and matched up afterwards.
//!
//! Recording needs the `trace` feature (off by default; without it
//! [`ev`] is empty and compiles away) and `MLX5_TRACE=PREFIX` in the
//! environment: each thread that records keeps its first [`CAPACITY`]
//! events and then writes them to `PREFIX.PID` (one `TSC ID` line per
//! event). `scripts/trace-pingpong.sh` runs the mlx5 bench's cross-process
//! ping-pong so, and [`one_way`] (the `trace_oneway` example) reads the two
//! files back: the median time of each step of a message from one process
//! to the other. The counter must be invariant and shared by the cores
//! (x86-64 with `constant_tsc`), as on the machines this ran on; events
//! cost a counter read and a push each, which the figures include.

/// A step of the device's paths (the number is what the files record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Ev {
    /// A full pass starts (the quiet check found something).
    PassStart = 1,
    /// The pass's receive phase handled frames.
    Received = 2,
    /// A CQE was written.
    Cqe = 3,
    /// An application's CQ poll returned completions.
    Polled = 4,
    /// An application rang a send doorbell.
    Doorbell = 5,
    /// A shared-memory link published what the pass wrote.
    Published = 6,
    /// The pass holds the fabric's lock (its setup is done).
    Locked = 8,
    /// The pass's receive phase is over (frames or not).
    ReceiveDone = 9,
    /// The pass executed its QPs' WQEs.
    QpsDone = 10,
    /// A link's bytes were copied out of its ring or socket.
    Filled = 12,
}

/// Events a thread keeps before it writes them out.
pub const CAPACITY: usize = 1 << 20;

/// Records `e` (with the `trace` feature and `MLX5_TRACE` set).
#[cfg(all(feature = "trace", target_arch = "x86_64"))]
#[inline]
pub fn ev(e: Ev) {
    use std::cell::RefCell;
    use std::sync::OnceLock;
    static PREFIX: OnceLock<Option<String>> = OnceLock::new();
    thread_local! {
        static BUF: RefCell<(Vec<(u64, u8)>, bool)> = const { RefCell::new((Vec::new(), false)) };
    }
    let Some(prefix) = PREFIX.get_or_init(|| std::env::var("MLX5_TRACE").ok()) else {
        return;
    };
    // SAFETY: `rdtsc` reads a counter; it has no preconditions.
    let t = unsafe { std::arch::x86_64::_rdtsc() };
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        if b.1 {
            return;
        }
        if b.0.capacity() == 0 {
            b.0.reserve_exact(CAPACITY);
        }
        b.0.push((t, e as u8));
        if b.0.len() == CAPACITY {
            b.1 = true;
            let mut text = String::with_capacity(CAPACITY * 16);
            for (t, id) in &b.0 {
                use std::fmt::Write as _;
                // Writing into a String cannot fail.
                let _ = writeln!(text, "{t} {id}");
            }
            let path = format!("{prefix}.{}", std::process::id());
            if let Err(err) = std::fs::write(&path, text) {
                eprintln!("mlx5 trace: writing {path}: {err}");
            }
            b.0 = Vec::new();
        }
    });
}

/// Records `e` (with the `trace` feature and `MLX5_TRACE` set).
#[cfg(not(all(feature = "trace", target_arch = "x86_64")))]
#[inline(always)]
pub fn ev(_e: Ev) {}

/// One process's events, by kind, each list in counter order.
#[derive(Debug, Default)]
pub struct Events {
    by: std::collections::HashMap<u8, Vec<u64>>,
}

impl Events {
    /// Parses a file's `TSC ID` lines.
    pub fn parse(text: &str) -> Result<Events, String> {
        let mut e = Events::default();
        for (n, line) in text.lines().enumerate() {
            let bad = || format!("line {}: not `TSC ID`: {line:?}", n + 1);
            let (t, id) = line.split_once(' ').ok_or_else(bad)?;
            let t: u64 = t.parse().map_err(|_| bad())?;
            let id: u8 = id.parse().map_err(|_| bad())?;
            e.by.entry(id).or_default().push(t);
        }
        for v in e.by.values_mut() {
            v.sort_unstable();
        }
        Ok(e)
    }

    fn of(&self, e: Ev) -> &[u64] {
        self.by.get(&(e as u8)).map_or(&[], Vec::as_slice)
    }

    /// The first event `e` after `t`.
    fn next(&self, e: Ev, t: u64) -> Option<u64> {
        let v = self.of(e);
        v.get(v.partition_point(|&x| x <= t)).copied()
    }

    /// The last event `e` before `t`.
    fn prev(&self, e: Ev, t: u64) -> Option<u64> {
        let v = self.of(e);
        v.partition_point(|&x| x < t).checked_sub(1).map(|i| v[i])
    }
}

/// The steps of a message from the sender's publication to the receiver's
/// publication of its answer, in order (what [`one_way`] times).
pub const STEPS: [&str; 12] = [
    "published -> receiver's pass starts",
    "pass start -> locked (setup)",
    "locked -> record copied out",
    "copied -> CQE written",
    "CQE -> receive phase over",
    "receive over -> app's poll returns",
    "poll -> doorbell (the app posts)",
    "doorbell -> send pass starts",
    "send pass start -> locked",
    "locked -> receive phase over",
    "receive over -> WQEs executed",
    "executed -> published",
];

/// For each message `from` published (a [`Ev::Published`]), the time of
/// each of [`STEPS`] on the way to the answer `to` published, in counter
/// ticks; messages whose steps are not all there, not in order, or take
/// over `max` ticks in all are left out (another message's events
/// interleaved). Returns the steps' medians and how many messages.
pub fn one_way(from: &Events, to: &Events, max: u64) -> ([u64; 12], usize) {
    let mut cols: Vec<Vec<u64>> = vec![Vec::new(); STEPS.len()];
    for &t0 in from.of(Ev::Published) {
        let received = to.next(Ev::Received, t0);
        let pass = to.prev(Ev::PassStart, received.unwrap_or(0));
        let locked = pass.and_then(|t| to.next(Ev::Locked, t));
        let filled = locked.and_then(|t| to.next(Ev::Filled, t));
        let cqe = received.and_then(|t| to.prev(Ev::Cqe, t));
        let polled = received.and_then(|t| to.next(Ev::Polled, t));
        let rung = polled.and_then(|t| to.next(Ev::Doorbell, t));
        let spass = rung.and_then(|t| to.next(Ev::PassStart, t));
        let slocked = spass.and_then(|t| to.next(Ev::Locked, t));
        let sreceived = slocked.and_then(|t| to.next(Ev::ReceiveDone, t));
        let executed = sreceived.and_then(|t| to.next(Ev::QpsDone, t));
        let published = executed.and_then(|t| to.next(Ev::Published, t));
        let path = [
            Some(t0),
            pass,
            locked,
            filled,
            cqe,
            received,
            polled,
            rung,
            spass,
            slocked,
            sreceived,
            executed,
            published,
        ];
        let Some(path) = path.into_iter().collect::<Option<Vec<u64>>>() else {
            continue;
        };
        if path.windows(2).any(|w| w[1] < w[0]) || path[path.len() - 1] - t0 > max {
            continue;
        }
        for (c, w) in cols.iter_mut().zip(path.windows(2)) {
            c.push(w[1] - w[0]);
        }
    }
    let n = cols[0].len();
    let mut med = [0u64; 12];
    for (m, c) in med.iter_mut().zip(cols.iter_mut()) {
        c.sort_unstable();
        *m = c.get(c.len() / 2).copied().unwrap_or(0);
    }
    (med, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two processes' events for messages from A to B, every step 10
    /// ticks apart but the CQE (written inside the receive phase) and
    /// another message's stray events: each step's median comes out, the
    /// stray ones leave it alone, and a message cut short is left out.
    #[test]
    fn one_way_times_each_step_of_a_message() {
        let mut a = String::new();
        let mut b = String::new();
        for k in 0..5u64 {
            let t = 1000 * (k + 1);
            a.push_str(&format!("{t} 6\n"));
            // B: pass start, locked, filled, CQE, received, polled,
            // doorbell, pass start, locked, receive done, QPs done,
            // published.
            for (dt, id) in [
                (10, 1),
                (30, 8),
                (60, 12),
                (100, 3),
                (150, 2),
                (210, 4),
                (280, 5),
                (360, 1),
                (450, 8),
                (550, 9),
                (660, 10),
                (780, 6),
            ] {
                b.push_str(&format!("{} {id}\n", t + dt));
            }
            // The receive phase of the send pass saw nothing: no `2`.
            b.push_str(&format!("{} 9\n", t + 155));
        }
        // A message whose answer never went out.
        a.push_str("9000 6\n");
        b.push_str("9010 1\n9020 8\n9030 12\n9040 3\n9050 2\n");
        let (a, b) = (Events::parse(&a).unwrap(), Events::parse(&b).unwrap());
        let (med, n) = one_way(&a, &b, 10_000);
        assert_eq!(n, 5);
        assert_eq!(med, [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120]);
        assert!(Events::parse("12 x\n").is_err());
        assert!(Events::parse("12\n").is_err());
    }
}
