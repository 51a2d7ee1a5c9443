//! Fuzz harnesses for the two inputs of the mlx5 software device that come
//! from outside the process:
//!
//! * [`wqe`]: the send-queue bytes the device executes (a poster may write
//!   anything into its send queue, `Qp::post_raw` lets it);
//! * [`frame`]: the frames another "device" sends over a link socket.
//!
//! The harnesses live in this library so that the libFuzzer binaries in
//! `fuzz_targets/` are one line each, and so that `examples/seeds.rs` can
//! write the committed seed corpus from the same encoders the harnesses
//! decode with (and run every seed through them once, without libFuzzer).
//!
//! Run them with `scripts/fuzz.sh [wqe|frame] [seconds]`.

pub mod frame;
pub mod input;
pub mod wqe;
