# Sourced by the entry-point scripts: installs what a fresh Debian machine
# lacks, then leaves the shell in the repository root.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Installs the given Debian packages if any is missing (one apt-get update).
ensure_apt() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing: ${missing[*]}" >&2
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
    fi
}

# The pinned toolchain (rust-toolchain.toml) with clippy and rustfmt.
ensure_toolchain() {
    if ! command -v cargo >/dev/null; then
        echo "cargo not found: install rustup (https://rustup.rs) first" >&2
        exit 1
    fi
    local installed
    installed="$(rustup component list --installed 2>/dev/null || true)"
    for c in clippy rustfmt; do
        grep -q "^$c" <<<"$installed" || rustup component add "$c"
    done
}

# What building and testing every crate needs: a C toolchain for crates that
# build C (iceoryx2's dependencies), pkg-config for -sys crates, and
# rdma-core's headers (mlx5's golden-byte and FFI layout tests compile C
# programs against infiniband/mlx5dv.h; nothing links rdma-core); for
# benchkv, Open MPI (the mpi crate binds and links it, mpirun launches the
# tests), UCX's headers and libclang (bindgen generates its UCX bindings).
ensure_apt gcc libc6-dev pkg-config libibverbs-dev \
    libopenmpi-dev openmpi-bin libucx-dev libclang-dev
ensure_toolchain

# cargo-fuzz (libFuzzer) for the fuzz targets in mlx5/fuzz, and the C++
# compiler libfuzzer-sys builds libFuzzer with. The sanitizer flags cargo
# fuzz passes are unstable options: RUSTC_BOOTSTRAP=1 allows them on the
# pinned stable toolchain (set by the callers, for cargo fuzz only).
CARGO_FUZZ_VERSION=0.13.2
ensure_cargo_fuzz() {
    ensure_apt g++
    if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
        echo "installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
        cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
    fi
}

# Open MPI refuses to run as root unless told; CI containers run as root.
if [ "$(id -u)" -eq 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
