#!/usr/bin/env bash
# benchkv on this machine: a two-rank sweep under mpirun of copyrpc (on the
# software device) against UCX active messages over tcp and over shared
# memory, each labelled with its transport. Prints the table and the plot's
# path; the JSON of every point, sweep.csv, sweep.svg and sweep.md go to
# target/bench-summary/benchkv/.
#
# Arguments replace the default matrix and timing (they go to
# `benchkv sweep`), e.g. `scripts/benchkv.sh --clients 1 --depths 8 --duration 5`.
source "$(dirname "$0")/common.sh"

cargo build --release -q -p benchkv

OUT=target/bench-summary/benchkv
mkdir -p "$OUT"
ARGS=("$@")
if [ ${#ARGS[@]} -eq 0 ]; then
    ARGS=(--clients 1,2 --depths 1,8,32 --warmup 0.5 --duration 2)
fi
# Both ranks on this host, free to use every core (mpirun would otherwise
# bind each rank to one); copyrpc's software device stepped by its daemon.
MLX5_DEVICE=soft:manual mpirun -n 2 --oversubscribe --bind-to none \
    target/release/benchkv sweep \
    --backends copyrpc,ucx-am:tcp,ucx-am:shm --out "$OUT" "${ARGS[@]}"
cp "$OUT/sweep.md" target/bench-summary/benchkv.md
