#!/usr/bin/env bash
# Where a cross-process message's time goes: runs the mlx5 bench's
# cross-process ping-pong (criterion's pingpong/cross-shm, or the figure
# given) with the software device's trace events on (`--features trace`,
# see mlx5/src/trace.rs), both processes writing their first 2^20 events,
# then prints the median of each step of a message, both ways
# (examples/trace_oneway.rs). The events cost a counter read each, which
# the figures include. Needs an invariant TSC shared by the cores (x86-64).
#
#   scripts/trace-pingpong.sh [FIGURE]
source "$(dirname "$0")/common.sh"
FIGURE="${1:-pingpong/cross-shm}"
DIR="$(mktemp -d)"
trap 'rm -rf "$DIR"' EXIT
MLX5_TRACE="$DIR/ev" MLX5_BENCH_SKIP_SUMMARY=1 \
    cargo bench -q -p mlx5 --features trace -- "$FIGURE" --measurement-time 5 --warm-up-time 1
files=("$DIR"/ev.*)
if [ "${#files[@]}" -ne 2 ] || [ ! -e "${files[0]}" ]; then
    echo "trace-pingpong: expected two event files (this process and the peer's), found: ${files[*]}" >&2
    exit 1
fi
# The TSC's rate: the kernel's, as it logged it, else the CPU's nominal one.
ghz="$(awk '/tsc: Refined TSC clocksource calibration|tsc: Detected .* MHz/ {for (i=1;i<=NF;i++) if ($i=="MHz") {print $(i-1)/1000; exit}}' < <(dmesg 2>/dev/null) || true)"
if [ -z "$ghz" ]; then
    ghz="$(awk -F'@' '/model name/ {gsub(/GHz/, "", $2); print $2+0; exit}' /proc/cpuinfo)"
fi
if [ -z "$ghz" ] || [ "$ghz" = "0" ]; then
    echo "trace-pingpong: cannot tell the TSC's rate; pass it to the example yourself:" >&2
    echo "  cargo run --release -p mlx5 --example trace_oneway -- GHZ ${files[*]}" >&2
    exit 1
fi
echo "TSC at $ghz GHz; event files: ${files[*]}"
cargo run -q --release -p mlx5 --example trace_oneway -- "$ghz" "${files[0]}" "${files[1]}"
