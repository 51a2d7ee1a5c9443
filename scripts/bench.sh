#!/usr/bin/env bash
# The main job: every layer's criterion suite with its floor and peers, the
# callgrind instruction counts, the benchkv sweep (copyrpc against UCX
# active messages under mpirun), then the analysis report: a dated
# docs/analysis/<date>/report.md with its plots and figures.json
# (bench-report, report/), whose path is printed last. The suites' own
# tables stay in target/bench-summary/.
#
#   scripts/bench.sh [--quick] [--out DIR] [criterion filter ...]
#
# --quick runs every suite briefly (summary only, 3 rounds, 1/20 of each
# figure's operations; short callgrind counts; a two-depth benchkv sweep)
# and writes the report under target/analysis/<date>-quick/ unless --out
# says otherwise: the whole pipeline, run, collect, render, in a few
# minutes, for CI. Its numbers are not for comparison. Every run, full or
# quick, ends with bench-report check --strict on its report (a failed
# check stops the script before it prints the report's path).
source "$(dirname "$0")/common.sh"

QUICK=0
OUT=docs/analysis
OUT_SET=0
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1; shift ;;
        --out) OUT="$2"; OUT_SET=1; shift 2 ;;
        *) break ;;
    esac
done

CALLGRIND_ARGS=()
BENCHKV_ARGS=()
if [ "$QUICK" -eq 1 ]; then
    export BENCH_QUICK=1
    for p in IPC_BENCH PEERS_BENCH INPROC_BENCH MLX5_BENCH COPYRPC_BENCH; do
        export "${p}_ROUNDS=3" "${p}_SKIP_CRITERION=1"
    done
    CALLGRIND_ARGS=(100 500)
    BENCHKV_ARGS=(--clients 1 --depths 1,8 --warmup 0.2 --duration 0.5)
    [ "$OUT_SET" -eq 1 ] || OUT=target/analysis
fi

rm -rf target/bench-summary
echo "== ipc (cargo bench -p ipc)"
cargo bench -p ipc --bench ipc -- "$@"
echo
echo "== same-host peer: UCX active messages between two processes (peers/, ucx-am-pingpong)"
cargo build --release -q -p peers
target/release/ucx-am-pingpong
echo
echo "== inproc (cargo bench -p inproc)"
cargo bench -p inproc --bench inproc -- "$@"
echo
echo "== mlx5 (cargo bench -p mlx5)"
cargo bench -p mlx5 --bench mlx5 -- "$@"
echo
echo "== copyrpc (cargo bench -p copyrpc)"
cargo bench -p copyrpc --bench copyrpc -- "$@"
echo
echo "== instructions per operation (scripts/callgrind.sh ${CALLGRIND_ARGS[*]})"
"$(dirname "$0")/callgrind.sh" "${CALLGRIND_ARGS[@]}"
echo
echo "== benchkv: copyrpc against UCX-AM, two ranks (scripts/benchkv.sh ${BENCHKV_ARGS[*]})"
"$(dirname "$0")/benchkv.sh" "${BENCHKV_ARGS[@]}"

# Cache-line contention of the ipc ping-pong, where perf can record it;
# otherwise the one-line reason, which the report prints.
C2C=target/bench-summary/c2c.txt
echo
echo "== perf c2c (cache-line contention), where perf supports it"
if ! command -v perf >/dev/null; then
    printf 'available: no\nwhat: perf is not installed (Debian: linux-perf)\n' >"$C2C"
elif ! PERF_ERR="$(PROBE="$(mktemp)"; perf c2c record -o "$PROBE" -- true 2>&1 >/dev/null;
        rc=$?; rm -f "$PROBE"; exit $rc)"; then
    printf 'available: no\nwhat: %s fails here: %s\n' "$(perf --version) c2c record" \
        "$(tr '\n' ' ' <<<"$PERF_ERR" | cut -c1-200)" >"$C2C"
else
    IPC_BIN="$(cargo bench -p ipc --bench ipc --no-run 2>&1 \
        | grep -o 'target/[^ )]*/deps/ipc-[0-9a-f]*' | head -1)"
    DATA="$(mktemp)"
    if IPC_BENCH_SKIP_CRITERION=1 IPC_BENCH_ROUNDS=1 BENCH_QUICK=1 \
        perf c2c record -o "$DATA" -- "$IPC_BIN" --bench >/dev/null 2>&1; then
        {
            echo "available: yes"
            echo "what: perf c2c record -- $IPC_BIN (ipc summary, 1 round, quick), perf c2c report --stdio, Shared Data Cache Line Table"
            perf c2c report -i "$DATA" --stdio 2>/dev/null | sed -n '/Shared Data Cache Line Table/,/^$/p' | head -40
        } >"$C2C"
    else
        printf 'available: no\nwhat: perf c2c record of the ipc bench failed\n' >"$C2C"
    fi
    rm -f "$DATA"
fi
cat "$C2C"

echo
echo "== summary ($(date -u +%Y-%m-%dT%H:%MZ), git $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
for f in target/bench-summary/*.md; do
    [ -e "$f" ] || continue
    echo
    cat "$f"
done

echo
echo "== the report (bench-report render)"
cargo build --release -q -p report
REPORT="$(target/release/bench-report render --input target/bench-summary --out "$OUT")"
target/release/bench-report check --strict "$(dirname "$REPORT")"
echo "$REPORT"
