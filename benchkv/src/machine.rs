//! The machine and source tree a run is reported with.

/// This host's name.
pub fn host() -> String {
    benchutil::host_name()
}

/// The CPU model (first `model name` of `/proc/cpuinfo`).
pub fn cpu() -> String {
    benchutil::cpu_model()
}

/// The kernel release.
pub fn kernel() -> String {
    benchutil::kernel_release()
}

/// CPUs this process may run on (its affinity: `mpirun` binds each rank
/// to one core by default).
pub fn cpus_allowed() -> usize {
    benchutil::allowed_cpus().len()
}

/// CPUs online on this host.
pub fn cpus_online() -> usize {
    // SAFETY: sysconf reads a system constant; no memory is involved.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// `git describe --always --dirty` of the tree this binary was built
/// from (recorded by build.rs at build time), or `unknown` (not a git
/// checkout, or no git).
pub fn git() -> String {
    env!("BENCHKV_GIT").to_string()
}

/// An id for names this run creates on the host (ipc segments, the
/// floor's file): this process's pid and the clock.
pub(crate) fn unique_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (u64::from(std::process::id()) << 32) ^ nanos
}
