#!/usr/bin/env bash
# ipc fuzz targets (ipc/fuzz/, cargo-fuzz + libFuzzer): what the server reads
# from clients (a client's rings and control words, its hello and the bytes
# on its connection) and the connection protocol's parsers.
#
#   scripts/fuzz-ipc.sh replay            replay the committed seed corpus (seconds)
#   scripts/fuzz-ipc.sh run [SECONDS]     fuzz each target for SECONDS (default 60), starting
#                                         from the seeds; new inputs go to
#                                         ipc/fuzz/target/corpus/<target>/ (copy the good
#                                         ones to ipc/fuzz/corpus/<target>/ to keep them)
#
# cargo-fuzz needs nightly flags; on the pinned stable toolchain they are
# enabled with RUSTC_BOOTSTRAP=1. Builds go to ipc/fuzz/target.
source "$(dirname "$0")/common.sh"

IPC_FUZZ_TARGETS=(server_reads wire)

# The pinned cargo-fuzz and the C++ compiler libFuzzer needs, as
# scripts/fuzz.sh gets them (common.sh).
ipc_fuzz_ensure_cargo_fuzz() {
    ensure_cargo_fuzz
}

# ipc_fuzz TARGET ARGS...: cargo fuzz run in ipc/fuzz; libFuzzer writes new
# inputs to its first corpus directory (a scratch one) and reads the seeds
# from the second.
ipc_fuzz() {
    local target="$1"
    shift
    mkdir -p "ipc/fuzz/target/corpus/$target"
    (cd ipc/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" \
        "target/corpus/$target" "corpus/$target" -- "$@")
}

ipc_fuzz_main() {
    local mode="${1:-replay}"
    ipc_fuzz_ensure_cargo_fuzz
    case "$mode" in
        replay)
            for t in "${IPC_FUZZ_TARGETS[@]}"; do
                echo "== ipc fuzz replay: $t"
                ipc_fuzz "$t" -runs=0
            done
            ;;
        run)
            local secs="${2:-60}"
            for t in "${IPC_FUZZ_TARGETS[@]}"; do
                echo "== ipc fuzz: $t for ${secs}s"
                ipc_fuzz "$t" -max_total_time="$secs"
            done
            ;;
        *)
            echo "usage: scripts/fuzz-ipc.sh replay | run [SECONDS]" >&2
            exit 2
            ;;
    esac
}

ipc_fuzz_main "$@"
