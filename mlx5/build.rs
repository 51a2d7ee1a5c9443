//! Tells the golden-byte and layout tests which target to compile their C
//! programs for (the `cc` crate needs it and cargo sets it only here).
fn main() {
    println!(
        "cargo:rustc-env=MLX5_BUILD_TARGET={}",
        std::env::var("TARGET").expect("cargo sets TARGET")
    );
    println!("cargo:rerun-if-changed=build.rs");
}
