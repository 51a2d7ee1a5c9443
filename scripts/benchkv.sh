#!/usr/bin/env bash
# benchkv on this machine: a two-rank sweep under mpirun of copyrpc (on the
# software device) against UCX active messages over tcp and over shared
# memory, each labelled with its transport, every point reported against
# the floors measured in the same run (cache-line round trip between the
# ranks' cores, raw WRITE_IMM between the ranks on the same device). Prints
# the table and the plot's path; the JSON of every point, sweep.csv,
# sweep.svg and sweep.md go to target/bench-summary/benchkv/.
#
# Arguments replace the default matrix and timing (they go to
# `benchkv sweep`), e.g. `scripts/benchkv.sh --clients 1 --depths 8 --duration 5`.

# What building and running benchkv needs, each named with the Debian
# package that provides it. Checked before cargo runs: without Open MPI the
# build stops in the mpi crate's own build script (rsmpi's mpi-sys), which
# lists what it probed but not what to install, before benchkv's build
# script could say so.
benchkv_missing() {
    local missing=()
    command -v mpicc >/dev/null 2>&1 \
        || missing+=("mpicc, Open MPI's headers and library (libopenmpi-dev)")
    command -v mpirun >/dev/null 2>&1 \
        || missing+=("mpirun, which launches the ranks (openmpi-bin)")
    if ! command -v pkg-config >/dev/null 2>&1; then
        missing+=("pkg-config, which finds UCX (pkg-config)")
    elif ! pkg-config --exists ucx 2>/dev/null; then
        missing+=("UCX with its headers, found through ucx.pc (libucx-dev)")
    fi
    if ! compgen -G "/usr/lib/llvm-*/lib/libclang*.so*" >/dev/null \
        && ! compgen -G "/usr/lib/*/libclang*.so*" >/dev/null \
        && [ -z "${LIBCLANG_PATH:-}" ]; then
        missing+=("libclang, which bindgen needs for the MPI and UCX bindings (libclang-dev)")
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        echo "benchkv cannot be built or run here; missing:" >&2
        printf '  - %s\n' "${missing[@]}" >&2
        echo "On Debian or Ubuntu: apt-get install libopenmpi-dev openmpi-bin libucx-dev libclang-dev pkg-config" >&2
        echo "Elsewhere: install Open MPI (mpicc, mpirun), UCX 1.11 or later with ucx.pc on PKG_CONFIG_PATH, and libclang (or set LIBCLANG_PATH)." >&2
        return 1
    fi
}

# common.sh installs the missing Debian packages where apt-get exists;
# elsewhere say what is missing before it tries.
if ! command -v apt-get >/dev/null 2>&1; then
    benchkv_missing || exit 1
fi
source "$(dirname "$0")/common.sh"
benchkv_missing || exit 1

cargo build --release -q -p benchkv

ARGS=("$@")
if [ ${#ARGS[@]} -eq 0 ]; then
    ARGS=(--clients 1,2 --depths 1,8,32 --warmup 0.5 --duration 2)
fi
# The results go to target/bench-summary/benchkv unless the arguments name
# a directory (--out DIR); the backends are the sweep's default (all three)
# unless they name theirs.
OUT=target/bench-summary/benchkv
OUT_ARGS=(--out "$OUT")
for ((i = 0; i < ${#ARGS[@]}; i++)); do
    case "${ARGS[$i]}" in
        --out) OUT="${ARGS[$((i + 1))]:-}"; OUT_ARGS=() ;;
        --out=*) OUT="${ARGS[$i]#--out=}"; OUT_ARGS=() ;;
    esac
done
mkdir -p "$OUT"
# Both ranks on this host, each bound to CPUs of its own (half the
# host's logical CPUs each, hardware threads counted as CPUs), as two nodes
# would be: left free to use every core, the scheduler placed the ranks'
# busy threads differently from run to run and the low-depth points moved
# with it. On a one-CPU host both share it. copyrpc's software device is
# stepped by its daemon.
CPUS="$(nproc)"
if [ "$CPUS" -ge 2 ]; then
    PLACE=(--use-hwthread-cpus --map-by "slot:PE=$((CPUS / 2))" --bind-to hwthread)
else
    PLACE=(--oversubscribe --bind-to none)
fi
MLX5_DEVICE=soft:manual mpirun -n 2 "${PLACE[@]}" \
    target/release/benchkv sweep "${OUT_ARGS[@]}" "${ARGS[@]}"
mkdir -p target/bench-summary
cp "$OUT/sweep.md" target/bench-summary/benchkv.md
