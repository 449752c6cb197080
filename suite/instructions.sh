#!/usr/bin/env bash
# Instructions per alloc+free pair under callgrind, for each allocator, its
# `GlobalAlloc::alloc`/`dealloc` called directly in a loop (monomorphised, no
# dispatch, no Rust shims). Counts are taken at two loop lengths and
# differenced, so start-up cancels. `bump` (a trivial bump allocator) gives
# the loop's own cost; "net" subtracts it. "total" runs with nothing else
# live in the size class (each free empties the page or pool); "steady" with
# 100 other blocks of the size live. snmalloc is left out: it cannot
# start under valgrind. rpmalloc runs under it (its pthread_create and
# start-up constructor run for every allocator alike, and cancel).
#
#   suite/instructions.sh [size=32]        (honours CARGO_TARGET_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-32}
main=$(cargo bench -p pymalloc-suite --bench workloads --no-run 2>&1 \
    | sed -n 's/.*Executable .*(\(.*workloads-[0-9a-f]*\))$/\1/p' | head -1)
[ -n "$main" ] || { echo "instructions.sh: no workloads binary built" >&2; exit 1; }
v2_target=${CARGO_TARGET_DIR:-target}/mimalloc-v2
cargo build --release --quiet --manifest-path suite/mimalloc-v2/Cargo.toml --target-dir "$v2_target"
v2=$v2_target/release/pymalloc-bench-mimalloc-v2
n1=100000; n2=300000
count() { # binary allocator n   (honours LIVE)
    PYMALLOC_BENCH_LIVE=${LIVE:-0} PYMALLOC_BENCH_ALLOC=$2 valgrind --tool=callgrind --callgrind-out-file=/dev/null "$1" pairs "$size" "$3" 2>&1 \
        | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
per_pair() { # binary allocator
    local c1 c2
    c1=$(count "$1" "$2" $n1); c2=$(count "$1" "$2" $n2)
    python3 -c "print(round(($c2 - $c1) / ($n2 - $n1), 1))"
}
floor=$(per_pair "$main" bump)
printf '%-12s %8s %8s %8s %8s   (%s-byte pairs; loop floor %s)\n' \
    allocator total net steady 'net' "$size" "$floor"
for a in pymalloc system mimalloc mimalloc-v2 jemalloc rpmalloc; do
    bin=$main; [ "$a" = mimalloc-v2 ] && bin=$v2
    total=$(LIVE=0 per_pair "$bin" "$a")
    steady=$(LIVE=100 per_pair "$bin" "$a")
    printf '%-12s %8s %8s %8s %8s\n' "$a" "$total" "$(python3 -c "print(round($total - $floor, 1))")" \
        "$steady" "$(python3 -c "print(round($steady - $floor, 1))")"
done
