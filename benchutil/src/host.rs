//! What the reports say about the machine: its name, CPU model and kernel,
//! read the same way by every suite and by benchkv.

/// The CPU model (the first `model name` of `/proc/cpuinfo`), or
/// `unknown CPU`.
pub fn cpu_model() -> String {
    model_in(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
}

/// This host's name, or `unknown`.
pub fn host_name() -> String {
    trimmed(std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
}

/// The kernel release, or `unknown`.
pub fn kernel_release() -> String {
    trimmed(std::fs::read_to_string("/proc/sys/kernel/osrelease").ok())
}

/// The first `model name` of a `/proc/cpuinfo` text.
fn model_in(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .unwrap_or("unknown CPU")
        .to_string()
}

/// A file's text trimmed, or `unknown` when missing or blank.
fn trimmed(text: Option<String>) -> String {
    text.map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_model_name_is_the_cpu_model() {
        let x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n\
                   processor\t: 1\nmodel name\t: Other\n";
        assert_eq!(model_in(x86), "Intel(R) Xeon(R) Processor");
        // Some architectures have no `model name` line.
        assert_eq!(
            model_in("processor\t: 0\nBogoMIPS\t: 50.00\n"),
            "unknown CPU"
        );
        assert_eq!(model_in("model name\t:   \n"), "unknown CPU");
    }

    #[test]
    fn missing_or_blank_files_read_as_unknown() {
        assert_eq!(trimmed(Some(" vm\n".into())), "vm");
        assert_eq!(trimmed(Some("\n".into())), "unknown");
        assert_eq!(trimmed(None), "unknown");
        // On Linux the kernel release starts with its major number.
        assert!(kernel_release().starts_with(|c: char| c.is_ascii_digit()));
    }
}
