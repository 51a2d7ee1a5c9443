#!/usr/bin/env bash
# The main job: every layer's criterion suite with its floor and peers, the
# benchkv sweep (copyrpc against UCX active messages under mpirun), then the
# summary tables (also left in target/bench-summary/).
# Extra arguments go to criterion, e.g. `scripts/bench.sh pingpong`.
source "$(dirname "$0")/common.sh"

rm -rf target/bench-summary
echo "== ipc (cargo bench -p ipc)"
cargo bench -p ipc --bench ipc -- "$@"
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
echo "== mlx5 and copyrpc instructions (scripts/callgrind.sh)"
"$(dirname "$0")/callgrind.sh"
echo
echo "== benchkv: copyrpc against UCX-AM, two ranks (scripts/benchkv.sh)"
"$(dirname "$0")/benchkv.sh"

echo
echo "== summary ($(date -u +%Y-%m-%dT%H:%MZ), git $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
for f in target/bench-summary/*.md; do
    [ -e "$f" ] || continue
    echo
    cat "$f"
done
