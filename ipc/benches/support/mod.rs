//! Shared machinery of the ipc benchmarks: core pinning, child processes
//! that play the other side of a measurement, the cache-line floor, and the
//! Unix-socket peer.

#![allow(dead_code)]

pub mod iox;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memmap2::MmapMut;

/// Environment variable that turns the bench binary into a helper process.
pub const ROLE_VAR: &str = "IPC_BENCH_ROLE";

/// The CPUs this process could run on when it started (read once, before
/// any thread pinned itself), in order.
pub fn allowed_cpus() -> Vec<usize> {
    static CPUS: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
    CPUS.get_or_init(read_affinity).clone()
}

fn read_affinity() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// The two cores a measurement uses: (client side, server side).
pub fn core_pair() -> (usize, usize) {
    let cpus = allowed_cpus();
    (cpus[0], *cpus.get(1).unwrap_or(&cpus[0]))
}

/// Pins the calling thread to `cpu`.
pub fn pin(cpu: usize) {
    // SAFETY: as above; sched_setaffinity(0) applies to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Undoes `pin`: any allowed CPU.
pub fn unpin(cpus: &[usize]) {
    // SAFETY: as above.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// CLOCK_MONOTONIC in nanoseconds: comparable across processes on one host.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A helper process: this bench binary re-executed with a role.
pub struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<std::process::ChildStdout>,
}

impl Helper {
    /// Starts `role` with `args` and waits for it to print `ready`.
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
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut h = Self { child, stdin, out };
        let line = h.line();
        assert_eq!(line.trim(), "ready", "helper {role} said {line:?}");
        h
    }

    /// Next line of the helper's stdout.
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
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").expect("write to helper");
        stdin.flush().unwrap();
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

/// A unique name for a segment, socket or service of one measurement.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::AtomicU32;
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Two sequence words 128 bytes apart (one line pair each).
#[repr(C, align(128))]
pub struct Bounce {
    pub ping: AtomicU64,
    _pad: [u8; 120],
    pub pong: AtomicU64,
}

/// Client side of the floor: `iters` round trips of the ping word to the
/// pong word and back. Returns the elapsed time.
pub fn floor_client(b: &Bounce, iters: u64, start: u64) -> Duration {
    let t0 = Instant::now();
    for i in start + 1..=start + iters {
        // Release/Acquire: the same pair the ipc slot protocol uses.
        b.ping.store(i, Ordering::Release);
        while b.pong.load(Ordering::Acquire) != i {
            std::hint::spin_loop();
        }
    }
    t0.elapsed()
}

/// Server side of the floor: echo ping into pong until `stop` is seen.
pub fn floor_server(b: &Bounce, stop: u64) {
    let mut last = 0;
    loop {
        let v = b.ping.load(Ordering::Acquire);
        if v != last {
            last = v;
            b.pong.store(v, Ordering::Release);
            if v == stop {
                return;
            }
        }
        std::hint::spin_loop();
    }
}

/// The floor between two threads pinned to the two cores.
pub fn floor_threads(iters: u64) -> Duration {
    let (c0, c1) = core_pair();
    let b: &'static Bounce = Box::leak(Box::new(Bounce {
        ping: AtomicU64::new(0),
        _pad: [0; 120],
        pong: AtomicU64::new(0),
    }));
    let warm = 1000;
    let stop = u64::MAX;
    let t = std::thread::spawn(move || {
        pin(c1);
        floor_server(b, stop);
    });
    pin(c0);
    floor_client(b, warm, 0);
    let d = floor_client(b, iters, warm);
    b.ping.store(stop, Ordering::Release);
    t.join().unwrap();
    d
}

/// Maps a shared file of one `Bounce`.
pub fn map_bounce(path: &str, create: bool) -> MmapMut {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
        .expect("open floor file");
    f.set_len(size_of::<Bounce>() as u64).unwrap();
    // SAFETY: the file is ours for the benchmark; the other process only
    // accesses it through atomics.
    unsafe { MmapMut::map_mut(&f).expect("mmap floor file") }
}

pub fn as_bounce(m: &MmapMut) -> &Bounce {
    // SAFETY: page-aligned mapping of at least size_of::<Bounce>() bytes;
    // Bounce is atomics and padding, valid for any bits.
    unsafe { &*m.as_ptr().cast::<Bounce>() }
}

/// The floor between two processes pinned to the two cores.
pub fn floor_processes(iters: u64) -> Duration {
    let path = format!("/dev/shm/{}", unique("ipc-bench-floor"));
    let map = map_bounce(&path, true);
    let b = as_bounce(&map);
    let (c0, c1) = core_pair();
    let helper = Helper::start("floor", &[path.clone(), c1.to_string()]);
    pin(c0);
    let warm = 1000;
    floor_client(b, warm, 0);
    let d = floor_client(b, iters, warm);
    b.ping.store(u64::MAX, Ordering::Release);
    helper.finish();
    let _ = std::fs::remove_file(&path);
    d
}

/// Role body of `floor`.
pub fn floor_role(args: &[String]) {
    let map = map_bounce(&args[0], false);
    pin(args[1].parse().unwrap());
    println!("ready");
    floor_server(as_bounce(&map), u64::MAX);
}

/// 16-byte echo over a Unix stream socket between two pinned processes.
pub fn uds_round_trips(iters: u64) -> Duration {
    let path = format!("/tmp/{}.sock", unique("ipc-bench-uds"));
    let (c0, c1) = core_pair();
    let helper = Helper::start("uds", &[path.clone(), c1.to_string()]);
    pin(c0);
    let mut s = UnixStream::connect(&path).expect("connect uds peer");
    let mut buf = [0u8; 16];
    let mut trip = |i: u64| {
        buf[..8].copy_from_slice(&i.to_le_bytes());
        s.write_all(&buf).unwrap();
        s.read_exact(&mut buf).unwrap();
        assert_eq!(u64::from_le_bytes(buf[..8].try_into().unwrap()), i + 1);
    };
    for i in 0..100 {
        trip(i);
    }
    let t0 = Instant::now();
    for i in 0..iters {
        trip(i);
    }
    let d = t0.elapsed();
    drop(s);
    helper.finish();
    let _ = std::fs::remove_file(&path);
    d
}

/// Role body of `uds`: echo `x + 1` for each 16-byte message until EOF.
pub fn uds_role(args: &[String]) {
    let _ = std::fs::remove_file(&args[0]);
    let listener = UnixListener::bind(&args[0]).expect("bind uds");
    pin(args[1].parse().unwrap());
    println!("ready");
    let (mut s, _) = listener.accept().expect("accept");
    let mut buf = [0u8; 16];
    while s.read_exact(&mut buf).is_ok() {
        let x = u64::from_le_bytes(buf[..8].try_into().unwrap()) + 1;
        buf[..8].copy_from_slice(&x.to_le_bytes());
        if s.write_all(&buf).is_err() {
            break;
        }
    }
}

/// Median of a slice (sorted copy).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
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

/// "Intel(R) Xeon(R) Processor, 2 CPUs" and the like.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown CPU");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!(
        "{model}, {} CPUs usable, kernel {}, host {}",
        allowed_cpus().len(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        host.trim()
    )
}
