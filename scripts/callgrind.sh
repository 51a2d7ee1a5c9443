#!/usr/bin/env bash
# Instructions the mlx5 data path costs per posted WQE and per polled CQE
# (and, below, copyrpc's instructions per RPC, ipc's per call and
# inproc's per message of each transport),
# counted by callgrind in the `instr` example (mlx5/examples/instr.rs):
# only the calls of `post_batch`, `poll_batch` and `poll_recv_batch` are
# counted, at two batch sizes, so fixed costs (the doorbell, a poll's
# set-up) cancel: per op = (Ir(LARGE) - Ir(SMALL)) / (LARGE - SMALL).
# The software device's own work is not counted.
#
#   scripts/callgrind.sh [SMALL LARGE]     (default 1000 5000)
#
# Leaves the tables in target/bench-summary/mlx5-instr.md and
# copyrpc-instr.md and prints them; every row, with the five functions of
# most self Ir in its larger run (callgrind_annotate), also goes to
# target/bench-summary/instr.tsv for bench-report.
source "$(dirname "$0")/common.sh"

ensure_apt valgrind

SMALL="${1:-1000}"
LARGE="${2:-5000}"
if [ $# -gt 2 ] || ! [[ "$SMALL" =~ ^[1-9][0-9]{0,7}$ && "$LARGE" =~ ^[1-9][0-9]{0,7}$ ]] \
    || [ "$SMALL" -ge "$LARGE" ]; then
    echo "usage: scripts/callgrind.sh [SMALL LARGE]  (batch sizes, 1 <= SMALL < LARGE)" >&2
    exit 2
fi

# The workspace's release profile keeps line tables (debug = 1), which is
# what callgrind_annotate needs, and release builds keep their symbols, which
# is what --toggle-collect matches: no profile override, so this shares
# target/release with everyone else's builds instead of rebuilding it.
echo "== cargo build --release -p mlx5 --example instr" >&2
cargo build --release -p mlx5 --example instr
BIN="${CARGO_TARGET_DIR:-target}/release/examples/instr"
[ -x "$BIN" ] || { echo "callgrind.sh: $BIN was not built" >&2; exit 1; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

VG_OPTS=(--tool=callgrind --collect-atstart=no)

# ir FUNCTION N OP: instructions executed inside FUNCTION (and its callees)
# over one run of `instr N OP`.
ir() {
    local fn="$1" n="$2" op="$3"
    local out="$WORK/callgrind.out.$op.$fn.$n" log="$WORK/log.$op.$fn.$n"
    if ! valgrind "${VG_OPTS[@]}" --toggle-collect="*$fn*" --callgrind-out-file="$out" \
        --log-file="$log" "$BIN" "$n" "$op" >>"$log.stdout" 2>&1; then
        echo "callgrind.sh: valgrind $BIN $n $op (toggle $fn) failed:" >&2
        cat "$log.stdout" "$log" >&2
        exit 1
    fi
    local total
    total="$(awk '/^summary:/ {print $2; exit}' "$out")"
    [ -n "$total" ] || total="$(awk '/^totals:/ {print $2; exit}' "$out")"
    if ! [[ "$total" =~ ^[0-9]+$ ]]; then
        echo "callgrind.sh: no summary/totals line in $out" >&2
        exit 1
    fi
    echo "$total"
}

mkdir -p target/bench-summary
TSV=target/bench-summary/instr.tsv
: >"$TSV"
# tsv SUITE LABEL SMALL_IR LARGE_IR OUT: the row for bench-report, then the
# five functions with the most self Ir in callgrind output OUT.
tsv() {
    local suite="$1" label="$2" small="$3" large="$4" out="$5"
    printf 'row\t%s\t%s\t%s\t%s\t%s\t%s\n' "$suite" "$label" "$SMALL" "$LARGE" "$small" "$large" >>"$TSV"
    # awk reads to the end (no early exit): under pipefail a SIGPIPE of
    # callgrind_annotate would fail the script.
    callgrind_annotate "$out" | awk '
        done { next }
        /file:function/ { table = 1; next }
        table && /^-+$/ { next }
        table && /^[[:space:]]*$/ { if (n) done = 1; next }
        table && /^[[:space:]]*[0-9,]+ / {
            ir = $1; gsub(",", "", ir)
            fn = $0; sub(/^[[:space:]]*[0-9,]+ +(\([^)]*\) +)?/, "", fn)
            printf "top\t%s\t%s\n", ir, fn
            if (++n == 5) done = 1
        }' >>"$TSV"
}

# per_op SMALL_IR LARGE_IR: instructions per operation, the difference of
# the two counts over the difference of their operation counts.
per_op() {
    awk -v a="$1" -v b="$2" -v n="$SMALL" -v m="$LARGE" \
        'BEGIN { printf "%.1f", (b - a) / (m - n) }'
}

ROWS=()
# row LABEL FUNCTION OP: one table row from runs at SMALL and LARGE.
row() {
    local label="$1" fn="$2" op="$3" small large
    echo "== $label: $fn, instr N $op, N = $SMALL and $LARGE" >&2
    small="$(ir "$fn" "$SMALL" "$op")"
    large="$(ir "$fn" "$LARGE" "$op")"
    tsv mlx5 "$label" "$small" "$large" "$WORK/callgrind.out.$op.$fn.$LARGE"
    if [ "$large" -le "$small" ] || [ "$small" -eq 0 ]; then
        echo "callgrind.sh: $fn counted $small then $large instructions:" \
            "--toggle-collect matched nothing, or the batch does not scale" >&2
        exit 1
    fi
    local per fixed
    per="$(per_op "$small" "$large")"
    fixed="$(awk -v a="$small" -v p="$per" -v n="$SMALL" 'BEGIN { printf "%.0f", a - p * n }')"
    ROWS+=("| $label | $per | $fixed | $small | $large |")
}

row "post (Write inline 8 B, signaled)" post_batch write
row "poll (send CQE)" poll_batch write
row "post (WriteImm SGE)" post_batch writeimm
row "poll (recv CQE)" poll_recv_batch writeimm

MODEL="$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)"
HASH="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD -- 2>/dev/null || HASH="$HASH (with uncommitted changes)"

REPORT=target/bench-summary/mlx5-instr.md
{
    echo "mlx5 instructions per operation (callgrind Ir; per op = (Ir(N=$LARGE) - Ir(N=$SMALL)) / $((LARGE - SMALL)); software device's work not counted)"
    echo
    echo "| operation | instructions / op | fixed per batch | Ir (N=$SMALL) | Ir (N=$LARGE) |"
    echo "|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "machine: $(uname -m), ${MODEL:-unknown CPU}; $(valgrind --version); git $HASH"
    echo "command: scripts/callgrind.sh $SMALL $LARGE, i.e. for (FN, OP) in (post_batch, write) (poll_batch, write) (post_batch, writeimm) (poll_recv_batch, writeimm) and N in $SMALL $LARGE:" \
        "\`valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*FN*' $BIN N OP\`, total Ir from the callgrind.out summary line"
} >"$REPORT"

echo
cat "$REPORT"

# copyrpc: instructions per RPC (caller and responder together: copyrpc and
# the mlx5 post/poll it does, not the software device), from
# copyrpc/examples/rpc_instr.rs at two RPC counts, per RPC = the difference
# divided by the difference of the counts.
echo "== cargo build --release -p copyrpc --example rpc_instr" >&2
cargo build --release -p copyrpc --example rpc_instr
CBIN="${CARGO_TARGET_DIR:-target}/release/examples/rpc_instr"
[ -x "$CBIN" ] || { echo "callgrind.sh: $CBIN was not built" >&2; exit 1; }
BIN="$CBIN"
CROWS=()
for shape in depth1 8x256; do
    echo "== copyrpc $shape: measured_*, N = $SMALL and $LARGE" >&2
    small="$(ir measured_ "$SMALL" "$shape")"
    large="$(ir measured_ "$LARGE" "$shape")"
    tsv copyrpc "RPC of 32 bytes, $shape" "$small" "$large" "$WORK/callgrind.out.$shape.measured_.$LARGE"
    per="$(per_op "$small" "$large")"
    CROWS+=("| $shape | $per | $small | $large |")
done
CREPORT=target/bench-summary/copyrpc-instr.md
{
    echo "copyrpc instructions per RPC of 32 bytes (callgrind Ir, caller and responder together, software device's work not counted; per RPC = (Ir(N=$LARGE) - Ir(N=$SMALL)) / $((LARGE - SMALL)))"
    echo
    echo "| shape | instructions / RPC | Ir (N=$SMALL) | Ir (N=$LARGE) |"
    echo "|---|---|---|---|"
    printf '%s\n' "${CROWS[@]}"
    echo
    echo "machine: $(uname -m), ${MODEL:-unknown CPU}; $(valgrind --version); git $HASH"
    echo "command: scripts/callgrind.sh $SMALL $LARGE, i.e. for SHAPE in depth1 8x256 and N in $SMALL $LARGE:" \
        "\`valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured_*' $CBIN N SHAPE\`"
} >"$CREPORT"
echo
cat "$CREPORT"

# ipc: instructions per call (client and server on one thread,
# ipc/examples/call_instr.rs); inproc: per message of each transport (send
# and receive on one thread, inproc/examples/queue_instr.rs). Both count
# everything inside their `measured_*` functions.
echo "== cargo build --release -p ipc --example call_instr -p inproc --example queue_instr" >&2
cargo build --release -p ipc --example call_instr -p inproc --example queue_instr
SROWS=()
# shm_row SUITE EXAMPLE OP LABEL: one row of the shared-memory table.
shm_row() {
    local suite="$1" example="$2" op="$3" label="$4" small large per
    BIN="${CARGO_TARGET_DIR:-target}/release/examples/$example"
    [ -x "$BIN" ] || { echo "callgrind.sh: $BIN was not built" >&2; exit 1; }
    echo "== $suite $label: measured_*, N = $SMALL and $LARGE" >&2
    small="$(ir measured_ "$SMALL" "$op")"
    large="$(ir measured_ "$LARGE" "$op")"
    per="$(per_op "$small" "$large")"
    tsv "$suite" "$label" "$small" "$large" "$WORK/callgrind.out.$op.measured_.$LARGE"
    SROWS+=("| $suite | $label | $per | $small | $large |")
}
shm_row ipc call_instr call "call, 16 bytes each way (client and server)"
for t in onesided fastforward lamport; do
    shm_row inproc queue_instr "$t" "message of 8 bytes through $t (send and receive)"
done
SREPORT=target/bench-summary/shm-instr.md
{
    echo "ipc and inproc instructions per operation (callgrind Ir, both ends on one thread; per op = (Ir(N=$LARGE) - Ir(N=$SMALL)) / $((LARGE - SMALL)))"
    echo
    echo "| crate | operation | instructions / op | Ir (N=$SMALL) | Ir (N=$LARGE) |"
    echo "|---|---|---|---|---|"
    printf '%s\n' "${SROWS[@]}"
    echo
    echo "machine: $(uname -m), ${MODEL:-unknown CPU}; $(valgrind --version); git $HASH"
    echo "command: scripts/callgrind.sh $SMALL $LARGE: \`valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured_*' target/release/examples/{call_instr N, queue_instr N TRANSPORT}\`"
} >"$SREPORT"
echo
cat "$SREPORT"
