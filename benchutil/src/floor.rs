//! The cache-line floor: the round trip of one cache line between the two
//! cores of [`core_pair`], the physical limit for any shared-memory round
//! trip on this machine.
//!
//! One side stores a sequence number into `ping`, the other sees it and
//! stores it into `pong`, 128 bytes away (two lines, so the adjacent-line
//! prefetcher does not pair them). Nothing else happens, so every queue's
//! ping-pong is compared with it as a ratio ("1.2× the floor"). Measured
//! between threads ([`floor_threads`]) and between processes
//! ([`floor_processes`]); the two should agree.
//!
//! Both ends spin, and yield once a wait outlasts [`crate::PATIENCE`]
//! spins, or at once when [`floor_threads`] finds both on one CPU (a
//! process bound to one core): the figure is then the cost of handing the
//! line over through the scheduler, not a time slice per trip.
//!
//! It is also the summary's canary ([`canary_ns`]): a short floor before
//! and after each round reveals a slow phase of the host.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memmap2::MmapMut;

use crate::affinity::{core_pair, pin};
use crate::helper::{Helper, unique};
use crate::spin::{PATIENCE, Patience};

/// Role name of the helper process that serves [`floor_processes`].
pub(crate) const ROLE: &str = "floor";

/// Round trips done before the timed ones.
const WARM_UP: u64 = 1000;

/// Value of `ping` that tells the server to return.
const STOP: u64 = u64::MAX;

/// Two sequence words 128 bytes apart (one line pair each).
#[repr(C, align(128))]
pub struct Bounce {
    /// Written by the client, read by the server.
    pub ping: AtomicU64,
    _pad: [u8; 120],
    /// Written by the server, read by the client.
    pub pong: AtomicU64,
}

impl Bounce {
    /// Both words zero.
    pub const fn new() -> Self {
        Self {
            ping: AtomicU64::new(0),
            _pad: [0; 120],
            pong: AtomicU64::new(0),
        }
    }
}

impl Default for Bounce {
    fn default() -> Self {
        Self::new()
    }
}

/// Client side of the floor: round trips `start + 1 ..= start + iters`
/// of the ping word to the pong word and back. Returns the elapsed time.
pub fn floor_client(b: &Bounce, iters: u64, start: u64) -> Duration {
    client(b, iters, start, PATIENCE)
}

/// [`floor_client`], spinning `spins` times per wait before yielding.
fn client(b: &Bounce, iters: u64, start: u64, spins: u32) -> Duration {
    let t0 = Instant::now();
    for i in start + 1..=start + iters {
        // Release/Acquire: the pair every queue protocol of the workspace
        // uses to hand over a value.
        b.ping.store(i, Ordering::Release);
        let mut p = Patience::spinning(spins);
        while b.pong.load(Ordering::Acquire) != i {
            p.wait();
        }
    }
    t0.elapsed()
}

/// Server side of the floor: echoes `ping` into `pong` until it echoed
/// `stop`.
pub fn floor_server(b: &Bounce, stop: u64) {
    server(b, stop, PATIENCE);
}

/// [`floor_server`], spinning `spins` times per wait before yielding.
fn server(b: &Bounce, stop: u64, spins: u32) {
    let mut last = 0;
    let mut p = Patience::spinning(spins);
    loop {
        let v = b.ping.load(Ordering::Acquire);
        if v != last {
            last = v;
            b.pong.store(v, Ordering::Release);
            if v == stop {
                return;
            }
            p = Patience::spinning(spins);
        }
        p.wait();
    }
}

/// `iters` floor round trips between this thread and a server thread,
/// pinned to the two cores of [`core_pair`] (this thread stays pinned).
pub fn floor_threads(iters: u64) -> Duration {
    let (c0, c1) = core_pair();
    // Sharing one CPU, the partner runs only when this thread yields.
    let spins = if c0 == c1 { 0 } else { PATIENCE };
    let b = std::sync::Arc::new(Bounce::new());
    let srv = {
        let b = b.clone();
        std::thread::spawn(move || {
            pin(c1);
            server(&b, STOP, spins);
        })
    };
    pin(c0);
    client(&b, WARM_UP, 0, spins);
    let d = client(&b, iters, WARM_UP, spins);
    b.ping.store(STOP, Ordering::Release);
    srv.join().expect("floor server thread");
    d
}

/// A [`Bounce`] in a file of /dev/shm that two processes map.
struct SharedBounce {
    map: MmapMut,
}

impl SharedBounce {
    fn map(path: &str, create: bool) -> Self {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)
            .unwrap_or_else(|e| panic!("open floor file {path}: {e}"));
        f.set_len(size_of::<Bounce>() as u64)
            .expect("size floor file");
        // SAFETY: the file exists only for this measurement; the other
        // process accesses it only through the atomics of `Bounce`.
        let map = unsafe { MmapMut::map_mut(&f) }.expect("mmap floor file");
        Self { map }
    }

    fn bounce(&self) -> &Bounce {
        // SAFETY: the mapping is page-aligned (so 128-aligned) and at least
        // size_of::<Bounce>() bytes; Bounce is atomics and padding, valid for
        // any bits (a new file is zeros); it lives as long as `self.map`.
        unsafe { &*self.map.as_ptr().cast::<Bounce>() }
    }
}

/// `iters` floor round trips between this thread and a helper process,
/// pinned to the two cores of [`core_pair`] (this thread stays pinned). The
/// bench's `main` must start with [`as_helper`](crate::as_helper).
pub fn floor_processes(iters: u64) -> Duration {
    let path = format!("/dev/shm/{}", unique("benchutil-floor"));
    let shared = SharedBounce::map(&path, true);
    let b = shared.bounce();
    let (c0, c1) = core_pair();
    let helper = Helper::start(ROLE, &[path.clone(), c1.to_string()]);
    pin(c0);
    floor_client(b, WARM_UP, 0);
    let d = floor_client(b, iters, WARM_UP);
    b.ping.store(STOP, Ordering::Release);
    helper.finish();
    let _ = std::fs::remove_file(&path);
    d
}

/// Role body of the helper of [`floor_processes`]: `PATH CORE`.
pub(crate) fn floor_role(args: &[String]) {
    let shared = SharedBounce::map(&args[0], false);
    pin(args[1].parse().expect("floor role: core number"));
    println!("ready");
    floor_server(shared.bounce(), STOP);
}

/// Trips of one canary measurement.
pub const CANARY_TRIPS: u64 = 20_000;

/// The summary's canary: nanoseconds per trip of a short
/// [`floor_threads`] ([`CANARY_TRIPS`] trips, a few milliseconds).
pub fn canary_ns() -> f64 {
    floor_threads(CANARY_TRIPS).as_nanos() as f64 / CANARY_TRIPS as f64
}
