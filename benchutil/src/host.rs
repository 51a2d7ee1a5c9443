//! What the reports say about the machine: its name, CPU model and kernel,
//! read the same way by every suite and by benchkv.

/// The CPU model (the first `model name` of `/proc/cpuinfo`), or
/// `unknown CPU`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// This host's name, or `unknown`.
pub fn host_name() -> String {
    read_trim("/proc/sys/kernel/hostname")
}

/// The kernel release, or `unknown`.
pub fn kernel_release() -> String {
    read_trim("/proc/sys/kernel/osrelease")
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_is_described() {
        assert!(!cpu_model().is_empty());
        assert!(!host_name().is_empty());
        // Linux: a release such as 6.1.0-13-amd64.
        assert!(kernel_release().chars().next().unwrap().is_ascii_digit());
    }
}
