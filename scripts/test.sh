#!/usr/bin/env bash
# The whole test suite: formatting, lints, every test, the loom models, a
# replay of the mlx5 and ipc fuzz targets' seeds, and the benchmark pipeline
# in quick mode (run, collect, render, check the report).
# Works from a clean clone on a fresh Debian machine.
source "$(dirname "$0")/common.sh"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
# The mlx5 trace feature's code (scripts/trace-pingpong.sh) too.
cargo clippy -p mlx5 --features trace --all-targets -- -D warnings

echo "== cargo test"
cargo test --workspace

echo "== inproc capacity limits, release build (no overflow checks there)"
cargo test -p inproc --release --test capacity

echo "== mlx5 examples (software device)"
MLX5_DEVICE=soft cargo run -q -p mlx5 --example verbs_tour >/dev/null
MLX5_DEVICE=soft cargo run -q -p mlx5 --example pingpong -- 2000

echo "== copyrpc example: two processes"
cargo build -q -p copyrpc --example rpc_pingpong
PP_DIR="$(mktemp -d)"
MLX5_DEVICE=soft:manual timeout 60 target/debug/examples/rpc_pingpong serve --dir "$PP_DIR" &
PP_SERVER=$!
MLX5_DEVICE=soft:manual timeout 60 target/debug/examples/rpc_pingpong call 2000 --dir "$PP_DIR"
wait "$PP_SERVER"
rm -rf "$PP_DIR"

echo "== loom models (ipc)"
# A separate target dir: --cfg ipc_loom rebuilds everything.
RUSTFLAGS="--cfg ipc_loom" CARGO_TARGET_DIR="$ROOT/target/loom" \
    cargo test -p ipc --lib --release loom

echo "== ipc fuzz targets: replay the seed corpus (scripts/fuzz-ipc.sh)"
"$ROOT/scripts/fuzz-ipc.sh" replay

echo "== loom models (inproc)"
RUSTFLAGS="--cfg inproc_loom" CARGO_TARGET_DIR="$ROOT/target/loom" \
    cargo test -p inproc --lib --release loom

echo "== loom models (mlx5 send and completion queues; the shared-memory link)"
RUSTFLAGS="--cfg mlx5_loom" CARGO_TARGET_DIR="$ROOT/target/loom" \
    cargo test -p mlx5 --test queue_model --release
# One model at a time: run side by side they spend most of their time in
# the kernel and take about twice as long as one after another.
RUSTFLAGS="--cfg mlx5_loom" CARGO_TARGET_DIR="$ROOT/target/loom" \
    cargo test -p mlx5 --lib --release shm::model -- --test-threads=1

echo "== fuzz targets (mlx5/fuzz): replay of the committed seeds"
# Each seed once, no fuzzing (scripts/fuzz.sh without --replay fuzzes).
scripts/fuzz.sh --replay

echo "== the mlx5 trace: a traced cross-process ping-pong, both processes' events matched (scripts/trace-pingpong.sh)"
"$ROOT/scripts/trace-pingpong.sh"

echo "== the benchmark pipeline, briefly (scripts/bench.sh --quick): every suite, callgrind,"
echo "   the benchkv sweep, the report, and bench-report check --strict on it"
"$ROOT/scripts/bench.sh" --quick

echo "all tests passed"
