//! Frames on a link to the software device: see `mlx5_fuzz::frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mlx5_fuzz::frame::run(data));
