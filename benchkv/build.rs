//! Generates the UCX bindings (UCP active messages) with bindgen against
//! the system's UCX headers, found through pkg-config (`ucx.pc`, Debian's
//! `libucx-dev`), and links libucp. Without them the build stops here with
//! what to install. No crates.io crate binds the system UCX: the existing
//! ones build their own, older copy.
//!
//! Open MPI is not checked here: cargo runs the build scripts of
//! dependencies first, and the mpi crate's (rsmpi's mpi-sys) fails
//! without Open MPI, listing what it probed but no package. So
//! scripts/benchkv.sh checks for mpicc, mpirun, UCX and libclang before
//! cargo runs and names the Debian packages (libopenmpi-dev openmpi-bin
//! libucx-dev libclang-dev).

//!
//! It also records the git revision of the tree the binary is built from
//! (`BENCHKV_GIT`, `git describe --always --dirty`): a report names the
//! build it measured, not whatever the checkout holds when it runs. So it
//! reruns when HEAD or the index moves or a source of the crates benchkv
//! is built from changes; the UCX bindings are then kept unless UCX
//! changed.

use std::path::{Path, PathBuf};

/// The workspace crates benchkv is built from (their sources decide
/// whether the build is `-dirty`).
const CRATES: [&str; 9] = [
    "benchkv",
    "benchutil",
    "copyrpc",
    "inproc",
    "ipc",
    "ipc-derive",
    "lazyclock",
    "mlx5",
    "shmcopy",
];

/// Files of the workspace root that change the build (watched, and checked
/// by the test that the recorded revision is dirty when they differ).
const WORKSPACE_FILES: [&str; 4] = [
    "Cargo.toml",
    "Cargo.lock",
    "rust-toolchain.toml",
    ".cargo/config.toml",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    git_revision();
    let ucx = match pkg_config::Config::new()
        .atleast_version("1.11")
        .probe("ucx")
    {
        Ok(lib) => lib,
        Err(e) => panic!(
            "\n\nbenchkv needs UCX (1.11 or later) with its headers for the ucx-am backend, found through pkg-config (ucx.pc): {e}\n\
             On Debian or Ubuntu: apt-get install libucx-dev (scripts/test.sh, scripts/bench.sh and scripts/benchkv.sh install it; benchkv also needs libopenmpi-dev openmpi-bin libclang-dev).\n\
             Elsewhere: install UCX and set PKG_CONFIG_PATH to the directory of its ucx.pc.\n\n"
        ),
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // The bindings of an earlier run of this script stay when UCX is the
    // same (this script reruns for the git revision too).
    let stamp = format!("{} {:?}", ucx.version, ucx.include_paths);
    let stamp_file = out.join("ucx.stamp");
    if out.join("ucx.rs").exists() && std::fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp)
    {
        return;
    }
    let bindings = bindgen::Builder::default()
        .header_contents("benchkv_ucx.h", "#include <ucp/api/ucp.h>\n")
        .clang_args(ucx.include_paths.iter().map(|p| format!("-I{}", p.display())))
        .allowlist_function("ucp_(init_version|cleanup|config_read|config_modify|config_release|get_version_string|worker_create|worker_destroy|worker_get_address|worker_release_address|worker_progress|worker_set_am_recv_handler|ep_create|ep_close_nbx|am_send_nbx|request_check_status|request_free)")
        .allowlist_function("ucs_status_string")
        .allowlist_var("UCP_API_(MAJOR|MINOR)")
        .allowlist_type("ucp_(params_field|feature|worker_params_field|ep_params_field|ep_close_flags_t|am_cb_flags|send_am_flags|op_attr_t|am_recv_attr_t|am_handler_param_field)")
        .allowlist_var("UCS_(OK|INPROGRESS|ERR_.*|THREAD_MODE_.*)")
        .prepend_enum_name(false)
        .derive_default(true)
        .layout_tests(true)
        .generate()
        .unwrap_or_else(|e| {
            panic!("\n\nbindgen could not read the UCX headers ({e}); it needs libclang (apt-get install libclang-dev)\n\n")
        });
    bindings
        .write_to_file(out.join("ucx.rs"))
        .expect("writing the UCX bindings");
    std::fs::write(stamp_file, stamp).expect("writing the UCX bindings' stamp");
}

/// Sets `BENCHKV_GIT` to `git describe --always --dirty --abbrev=12` of
/// the workspace, or `unknown` (no git, or not a checkout).
fn git_revision() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest.parent().unwrap_or(&manifest).to_path_buf();
    let watch = |p: &Path| {
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    };
    // The git directories as git names them (a worktree's HEAD and index
    // are not in the checkout's .git, which is then a file).
    let rev_parse = |what: &str| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(["rev-parse", "--path-format=absolute", what])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| PathBuf::from(s.trim()))
    };
    let git_dir = rev_parse("--git-dir").unwrap_or_else(|| root.join(".git"));
    let common = rev_parse("--git-common-dir").unwrap_or_else(|| git_dir.clone());
    for f in ["HEAD", "index"] {
        watch(&git_dir.join(f));
    }
    for f in ["refs", "packed-refs"] {
        watch(&common.join(f));
    }
    for c in CRATES {
        watch(&root.join(c).join("src"));
        watch(&root.join(c).join("Cargo.toml"));
    }
    // What else decides the binary: the workspace's profiles, the locked
    // dependency versions, the toolchain, cargo's configuration.
    for f in WORKSPACE_FILES {
        watch(&root.join(f));
    }
    let desc = std::process::Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BENCHKV_GIT={desc}");
    // For the test that checks the two agree.
    let paths: Vec<String> = CRATES
        .iter()
        .flat_map(|c| [format!("{c}/src"), format!("{c}/Cargo.toml")])
        .chain(WORKSPACE_FILES.iter().map(|f| f.to_string()))
        .collect();
    println!("cargo:rustc-env=BENCHKV_BUILT_FROM={}", paths.join(","));
}
