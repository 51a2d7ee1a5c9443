#!/usr/bin/env bash
# The whole test suite: formatting, lints, every test, the loom models, and
# a replay of the ipc fuzz targets' seed corpus.
# Works from a clean clone on a fresh Debian machine.
source "$(dirname "$0")/common.sh"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test"
cargo test --workspace

echo "== mlx5 examples (software device)"
MLX5_DEVICE=soft cargo run -q -p mlx5 --example verbs_tour >/dev/null
MLX5_DEVICE=soft cargo run -q -p mlx5 --example pingpong -- 2000

echo "== loom models (ipc)"
# A separate target dir: --cfg ipc_loom rebuilds everything.
RUSTFLAGS="--cfg ipc_loom" CARGO_TARGET_DIR="$ROOT/target/loom" \
    cargo test -p ipc --lib --release loom

echo "== ipc fuzz targets: replay the seed corpus (scripts/fuzz-ipc.sh)"
"$ROOT/scripts/fuzz-ipc.sh" replay

echo "== loom models (inproc)"
RUSTFLAGS="--cfg inproc_loom" CARGO_TARGET_DIR="$ROOT/target/loom" \
    cargo test -p inproc --lib --release loom

echo "all tests passed"
