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

#[cfg(test)]
mod tests {
    /// The revision build.rs recorded names the checkout's HEAD (the
    /// build script reruns when HEAD moves), and says `-dirty` whenever
    /// a source of a crate benchkv is built from, or a workspace file that
    /// changes the build, differs from HEAD (it
    /// reruns when one changes); `unknown` only where git cannot name
    /// HEAD.
    #[test]
    fn the_recorded_revision_is_the_head_this_was_built_from() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .arg("--no-optional-locks")
                .arg("-C")
                .arg(root)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let recorded = super::git();
        let Some(head) = git(&["rev-parse", "HEAD"]) else {
            assert_eq!(recorded, "unknown");
            return;
        };
        let described = recorded.strip_suffix("-dirty").unwrap_or(&recorded);
        // `TAG-N-gHASH` once a tag is reachable (a bare tag on it: then
        // only the tag's commit is checked, below).
        let hash = described.rsplit_once("-g").map_or(described, |(_, h)| h);
        let hash = git(&["rev-parse", "--verify", "-q", &format!("{hash}^{{commit}}")])
            .unwrap_or_else(|| hash.to_string());
        assert!(
            head.starts_with(&hash),
            "recorded {recorded}, HEAD is {head}"
        );
        let mut args = vec!["status", "--porcelain", "--untracked-files=no", "--"];
        args.extend(env!("BENCHKV_BUILT_FROM").split(','));
        let changed = git(&args).expect("git status");
        assert!(
            changed.is_empty() || recorded.ends_with("-dirty"),
            "recorded {recorded} although these differ from HEAD: {changed}"
        );
    }
}
