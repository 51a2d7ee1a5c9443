//! WQE bytes executed by the software device: see `mlx5_fuzz::wqe`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mlx5_fuzz::wqe::run(data));
