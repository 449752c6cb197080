#!/usr/bin/env bash
# Instructions per C malloc(size)+free pair under callgrind, through each
# allocator as a real program sees it (PLT call, the library's exported
# malloc and free): glibc (no preload), pymalloc (libpymalloc_preload.so),
# Debian's mimalloc and jemalloc under LD_PRELOAD. A tiny C loop (the
# pointer passed through a volatile so the pair is not optimised out) is
# counted at two loop lengths and differenced, so start-up cancels. "floor"
# is the same loop with no malloc/free (its own cost; "net" subtracts it).
# "total" runs with nothing else live in the size class; "steady" with 100
# other blocks of the size allocated before the loop and still live.
#
#   preload/instructions.sh [size=32]     (honours CARGO_TARGET_DIR and
#                                          PYMALLOC_PRELOAD_LIB)
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-32}
command -v valgrind >/dev/null || { echo "instructions.sh: apt-get install valgrind" >&2; exit 1; }
target=${CARGO_TARGET_DIR:-target}
lib=${PYMALLOC_PRELOAD_LIB:-}
if [ -z "$lib" ]; then
    cargo build --release --quiet -p pymalloc-preload
    lib=$(realpath "$target/release/libpymalloc_preload.so")
fi
mkdir -p "$target/programs"
bin="$target/programs/malloc_pairs"
cat > "$target/programs/malloc_pairs.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
static void *volatile sink;
static char dummy[1];
int main(int argc, char **argv) { /* size pairs live [none] */
    size_t size = (size_t)atol(argv[1]);
    long n = atol(argv[2]), live = atol(argv[3]);
    int none = argc > 4;
    for (long i = 0; i < live; i++) {
        void *p = malloc(size); /* leaked: stays live through the loop */
        if (!p) return 1;
        sink = p;
    }
    for (long i = 0; i < n; i++) {
        if (none) {
            sink = dummy;
            (void)sink;
        } else {
            sink = malloc(size);
            free(sink);
        }
    }
    return 0;
}
C
cc -std=c11 -O2 -Wall -Wextra -Werror "$target/programs/malloc_pairs.c" -o "$bin"
n1=100000; n2=300000
count() { # preload-lib(or "") n live [none]
    local pre=$1; shift
    env ${pre:+LD_PRELOAD="$pre"} valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        "$bin" "$size" "$@" 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
per_pair() { # preload-lib(or "") live [none]
    local pre=$1 live=$2 c1 c2; shift 2
    c1=$(count "$pre" $n1 "$live" "$@"); c2=$(count "$pre" $n2 "$live" "$@")
    python3 -c "print(round(($c2 - $c1) / ($n2 - $n1), 1))"
}
floor=$(per_pair "" 0 none)
printf '%-10s %8s %8s %8s %8s   (%s-byte C malloc+free pairs; loop floor %s)\n' \
    allocator total net steady net "$size" "$floor"
for a in glibc pymalloc mimalloc jemalloc; do
    case $a in
        glibc) pre= ;;
        pymalloc) pre=$lib ;;
        mimalloc) pre=/usr/lib/x86_64-linux-gnu/libmimalloc.so.2 ;;
        jemalloc) pre=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 ;;
    esac
    if [ -n "$pre" ] && [ ! -e "$pre" ]; then
        printf '%-10s missing: %s\n' "$a" "$pre"; continue
    fi
    total=$(per_pair "$pre" 0); steady=$(per_pair "$pre" 100)
    printf '%-10s %8s %8s %8s %8s\n' "$a" "$total" "$(python3 -c "print(round($total - $floor, 1))")" \
        "$steady" "$(python3 -c "print(round($steady - $floor, 1))")"
done
