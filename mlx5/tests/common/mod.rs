//! Shared by the integration tests: the C programs the golden-byte and
//! layout tests compare against, and the progress thread's CPU time.

#![allow(dead_code)]

pub mod pair;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The rdma-core header both C programs include.
const HEADER: &str = "/usr/include/infiniband/mlx5dv.h";

/// Compiles `tests/c/<name>.c` into an executable with the system C
/// compiler (found the way the `cc` crate finds it) and returns its path.
/// Panics with the fix when rdma-core's headers are missing: the tests must
/// not pass without them.
pub fn compile_c(name: &str) -> PathBuf {
    assert!(
        Path::new(HEADER).exists(),
        "{HEADER} not found: install Debian's libibverbs-dev (scripts/test.sh does)"
    );
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/c")
        .join(format!("{name}.c"));
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mlx5-c");
    std::fs::create_dir_all(&out_dir).expect("create C output dir");
    let exe = out_dir.join(name);
    let target = env!("MLX5_BUILD_TARGET");
    let compiler = cc::Build::new()
        .target(target)
        .host(target)
        .opt_level(1)
        .cargo_metadata(false)
        .warnings(true)
        .get_compiler();
    let status = compiler
        .to_command()
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .status()
        .unwrap_or_else(|e| panic!("running the C compiler for {}: {e}", src.display()));
    assert!(status.success(), "compiling {} failed", src.display());
    exe
}

/// Runs `exe` with `input` on stdin and returns its stdout.
pub fn run_c(exe: &Path, input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(exe)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(input.as_bytes())
        .expect("write C program input");
    let out = child.wait_with_output().expect("wait for C program");
    assert!(out.status.success(), "{} failed", exe.display());
    String::from_utf8(out.stdout).expect("C program prints ASCII")
}

/// utime + stime (clock ticks) of process `pid`'s device thread.
pub fn progress_thread_ticks(pid: u32) -> u64 {
    let mut total = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let p = t.unwrap().path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if comm.trim() == "mlx5-soft-progress" {
            let stat = std::fs::read_to_string(p.join("stat")).unwrap();
            let f: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap()
                .split_whitespace()
                .collect();
            total += f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        }
    }
    total
}
