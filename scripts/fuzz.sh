#!/usr/bin/env bash
# Fuzzes the inputs of the mlx5 software device that come from outside the
# process, with cargo fuzz (libFuzzer and AddressSanitizer):
#
#   scripts/fuzz.sh                  both targets, 60 s each
#   scripts/fuzz.sh wqe 600          one target for 600 s
#   scripts/fuzz.sh --replay [T]     every committed seed once (test.sh),
#                                    after checking they are current
#
# Targets (mlx5/fuzz/src): `wqe`, the WQE bytes a poster writes into its
# send queue; `frame`, the frames a peer sends over a link socket.
# Committed seeds: mlx5/fuzz/seeds/<target> (written by
# `cargo run --manifest-path mlx5/fuzz/Cargo.toml --example seeds`).
# What a run finds beyond them goes to mlx5/fuzz/corpus/<target>, crashes
# to mlx5/fuzz/artifacts/<target>/ (neither is committed); replay one with
# `cargo run --manifest-path mlx5/fuzz/Cargo.toml --example replay -- wqe FILE`.
#
# Memory: at most 2 GiB resident, and no single allocation over 2 GiB
# (-rss_limit_mb, -malloc_limit_mb): a frame header must not make the
# device allocate what the peer never sends.
source "$(dirname "$0")/common.sh"
ensure_cargo_fuzz
export RUSTC_BOOTSTRAP=1

TARGETS=(wqe frame)
LIMITS=(-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048)

replay=0
if [ "${1:-}" = "--replay" ]; then
    replay=1
    shift
fi
if [ $# -gt 0 ]; then
    case "$1" in
        wqe | frame) TARGETS=("$1") ;;
        *) echo "unknown target $1 (wqe, frame)" >&2; exit 2 ;;
    esac
fi
SECONDS_EACH="${2:-60}"

cd "$ROOT/mlx5"
if [ "$replay" = 1 ]; then
    # Seeds written for an older wire format would only hit its first
    # check; the generator says whether the committed ones are current.
    cargo run --quiet --release --manifest-path fuzz/Cargo.toml --example seeds -- --check
fi
for t in "${TARGETS[@]}"; do
    if [ "$replay" = 1 ]; then
        echo "== fuzz $t: replay of fuzz/seeds/$t"
        cargo fuzz run "$t" "fuzz/seeds/$t" -- -runs=0 "${LIMITS[@]}"
    else
        echo "== fuzz $t for ${SECONDS_EACH}s"
        mkdir -p "fuzz/corpus/$t"
        cargo fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
            -max_total_time="$SECONDS_EACH" "${LIMITS[@]}"
    fi
done
