//! scripts/benchkv.sh names what to install when Open MPI, UCX or
//! libclang is missing, before cargo or mpirun run (the mpi crate's own
//! build script would fail first, without naming a package).

use std::path::Path;
use std::process::{Command, Output};

/// Runs scripts/benchkv.sh with only `tools` (linked from /usr/bin) on its
/// PATH and `pkg_config_libdir` as pkg-config's whole search path.
fn script_with(tools: &[&str], pkg_config_libdir: &Path) -> Output {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let bin = std::env::temp_dir().join(format!(
        "benchkv-path-{}-{}",
        std::process::id(),
        tools.join("-")
    ));
    std::fs::create_dir_all(&bin).unwrap();
    for t in tools {
        let _ = std::os::unix::fs::symlink(Path::new("/usr/bin").join(t), bin.join(t));
    }
    let out = Command::new("/bin/bash")
        .arg(format!("{root}/scripts/benchkv.sh"))
        .env("PATH", &bin)
        .env("PKG_CONFIG_LIBDIR", pkg_config_libdir)
        .env_remove("PKG_CONFIG_PATH")
        .env_remove("LIBCLANG_PATH")
        .output()
        .expect("running bash");
    let _ = std::fs::remove_dir_all(&bin);
    out
}

#[test]
fn the_script_names_the_packages_when_mpi_and_ucx_are_missing() {
    // No mpicc, mpirun, pkg-config, apt-get or cargo on the PATH.
    let out = script_with(&[], Path::new("/nonexistent"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for needle in [
        "mpicc, Open MPI's headers and library (libopenmpi-dev)",
        "mpirun, which launches the ranks (openmpi-bin)",
        "pkg-config, which finds UCX (pkg-config)",
        "apt-get install libopenmpi-dev openmpi-bin libucx-dev libclang-dev",
    ] {
        assert!(err.contains(needle), "no {needle:?} in:\n{err}");
    }
    assert!(out.stdout.is_empty(), "nothing ran");
}

#[test]
fn the_script_names_libucx_dev_when_pkg_config_finds_no_ucx() {
    if !Path::new("/usr/bin/pkg-config").exists() {
        // The case above covers a machine without pkg-config.
        return;
    }
    let out = script_with(&["pkg-config"], Path::new("/nonexistent"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("UCX with its headers, found through ucx.pc (libucx-dev)"),
        "{err}"
    );
    assert!(!err.contains("pkg-config, which finds UCX"), "{err}");
}
