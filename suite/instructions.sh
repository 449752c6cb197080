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
# `--secure` adds pymalloc-hardened and mimalloc-secure (the workloads
# built with the suite's `secure` feature, as `run.py --secure` does);
# `--trace` adds pymalloc-trace-off (pymalloc built with its `trace`
# feature, tracing off).
#
#   suite/instructions.sh [--secure] [--trace] [size=32]   (honours CARGO_TARGET_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
secure=; trace=
while [ "${1:-}" = --secure ] || [ "${1:-}" = --trace ]; do
    [ "$1" = --secure ] && secure=1
    [ "$1" = --trace ] && trace=1
    shift
done
size=${1:-32}
main=$(cargo bench -p pymalloc-suite --bench workloads --no-run 2>&1 \
    | sed -n 's/.*Executable .*(\(.*workloads-[0-9a-f]*\))$/\1/p' | head -1)
[ -n "$main" ] || { echo "instructions.sh: no workloads binary built" >&2; exit 1; }
if [ -n "$secure" ]; then
    sec=$(CXXFLAGS="${CXXFLAGS:--DNDEBUG} -DSNMALLOC_CHECK_CLIENT" cargo bench -p pymalloc-suite \
        --bench workloads --features secure --target-dir "${CARGO_TARGET_DIR:-target}/secure" --no-run 2>&1 \
        | sed -n 's/.*Executable .*(\(.*workloads-[0-9a-f]*\))$/\1/p' | head -1)
    [ -n "$sec" ] || { echo "instructions.sh: no secure workloads binary built" >&2; exit 1; }
fi
if [ -n "$trace" ]; then
    traced=$(cargo bench -p pymalloc-suite --bench workloads --features pymalloc/trace \
        --target-dir "${CARGO_TARGET_DIR:-target}/trace" --no-run 2>&1 \
        | sed -n 's/.*Executable .*(\(.*workloads-[0-9a-f]*\))$/\1/p' | head -1)
    [ -n "$traced" ] || { echo "instructions.sh: no traced workloads binary built" >&2; exit 1; }
fi
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
printf '%-18s %8s %8s %8s %8s   (%s-byte pairs; loop floor %s)\n' \
    allocator total net steady 'net' "$size" "$floor"
allocators="pymalloc system mimalloc mimalloc-v2 jemalloc rpmalloc"
[ -n "$secure" ] && allocators="$allocators pymalloc-hardened mimalloc-secure"
[ -n "$trace" ] && allocators="$allocators pymalloc-trace-off"
for a in $allocators; do
    bin=$main; name=$a
    case $a in
        mimalloc-v2) bin=$v2 ;;
        pymalloc-hardened | mimalloc-secure) bin=$sec; name=${a%%-*} ;;
        pymalloc-trace-off) bin=$traced; name=pymalloc ;;
    esac
    total=$(LIVE=0 per_pair "$bin" "$name")
    steady=$(LIVE=100 per_pair "$bin" "$name")
    printf '%-18s %8s %8s %8s %8s\n' "$a" "$total" "$(python3 -c "print(round($total - $floor, 1))")" \
        "$steady" "$(python3 -c "print(round($steady - $floor, 1))")"
done
