//! Which cores a measurement runs on.
//!
//! Every two-party figure (floor, ping-pong, producer/consumer) runs its two
//! sides on the same two cores, so figures taken in one run are comparable
//! and the floor measured there bounds them.

use std::sync::OnceLock;

/// The CPUs this process could run on when it first asked, in order.
///
/// Read once and remembered: call it (or [`crate::as_helper`]) at the top of
/// `main`, before any thread pins itself, or a pinned main thread would see
/// only its own core.
pub fn allowed_cpus() -> Vec<usize> {
    static CPUS: OnceLock<Vec<usize>> = OnceLock::new();
    CPUS.get_or_init(read_affinity).clone()
}

fn read_affinity() -> Vec<usize> {
    // core_affinity reads the calling thread's mask (sched_getaffinity).
    core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![0])
}

/// The two cores a measurement uses: (client / producer side, server /
/// consumer side). Both are the same core on a one-CPU machine.
pub fn core_pair() -> (usize, usize) {
    let cpus = allowed_cpus();
    (cpus[0], *cpus.get(1).unwrap_or(&cpus[0]))
}

/// Pins the calling thread to `cpu`.
///
/// # Panics
///
/// If the kernel refuses (a CPU outside this process's set): a figure taken
/// on the wrong core would be silently wrong.
pub fn pin(cpu: usize) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        panic!(
            "sched_setaffinity([{cpu}]): {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Undoes [`pin`]: the calling thread may run on any of `cpus` again.
///
/// Written against libc rather than core_affinity: core_affinity sets one
/// core at a time and has no call that restores a mask of several.
pub fn unpin(cpus: &[usize]) {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        assert!(c < libc::CPU_SETSIZE as usize, "CPU {c} out of range");
        // SAFETY: `c` is below CPU_SETSIZE (checked above).
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: a valid set of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        panic!(
            "sched_setaffinity({cpus:?}): {}",
            std::io::Error::last_os_error()
        );
    }
}
