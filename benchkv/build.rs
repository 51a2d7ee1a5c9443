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

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
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
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("ucx.rs"))
        .expect("writing the UCX bindings");
}
