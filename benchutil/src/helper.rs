//! The other process of a cross-process figure: the bench binary itself,
//! re-executed with a role.
//!
//! [`Helper::start`] spawns `current_exe()` with [`ROLE_VAR`] set to the
//! role's name and the role's arguments on the command line, and waits for
//! the child to print `ready`. The child's `main` calls [`as_helper`] first
//! thing; that runs the role instead of the benchmarks. Stdin and stdout are
//! pipes, so the two sides can exchange lines ("go", results); closing stdin
//! ([`Helper::finish`]) is the child's cue to exit if its role waits for it.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::affinity::allowed_cpus;
use crate::floor;

/// Environment variable that turns a bench binary into a helper process; its
/// value is the role.
pub const ROLE_VAR: &str = "BENCHUTIL_ROLE";

/// Call first in a bench's `main`. Records the CPU set
/// ([`allowed_cpus`]) before anything pins a thread; then, if this process
/// was started by [`Helper::start`], runs its role and returns `true` (the
/// caller returns from `main`). Roles of this crate (the process floor's
/// `floor`) are handled here; any other role goes to `roles(role, args)`,
/// which should panic on a name it does not know.
pub fn as_helper(roles: impl FnOnce(&str, &[String])) -> bool {
    let _ = allowed_cpus();
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return false;
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    match role.as_str() {
        floor::ROLE => floor::floor_role(&args),
        other => roles(other, &args),
    }
    true
}

/// A helper process: this bench binary re-executed with a role. Dropping it
/// without [`finish`](Self::finish) kills the child.
pub struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
}

impl Helper {
    /// Starts `role` with `args` and waits for it to print `ready`.
    ///
    /// # Panics
    ///
    /// If the child cannot be spawned or says anything but `ready` first.
    pub fn start(role: &str, args: &[String]) -> Self {
        let exe = std::env::current_exe().expect("current_exe");
        let mut child = Command::new(exe)
            .env(ROLE_VAR, role)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bench helper");
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut h = Self { child, stdin, out };
        let line = h.line();
        assert_eq!(line.trim(), "ready", "helper {role} said {line:?}");
        h
    }

    /// Next line of the helper's stdout.
    ///
    /// # Panics
    ///
    /// If the helper exited (end of its stdout).
    pub fn line(&mut self) -> String {
        let mut s = String::new();
        self.out.read_line(&mut s).expect("read helper stdout");
        if s.is_empty() {
            panic!("bench helper exited early");
        }
        s
    }

    /// Sends a line to the helper's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("helper stdin open");
        writeln!(stdin, "{line}").expect("write to helper");
        stdin.flush().expect("flush helper stdin");
    }

    /// Closes stdin and waits for the helper to exit.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            drop(self.stdin.take());
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A name no other measurement of any process uses: `prefix-pid-n`, for a
/// segment, socket, file or service of one measurement.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// CLOCK_MONOTONIC in nanoseconds: unlike `Instant`, comparable across
/// processes on one host (a helper reports its start and end times).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
