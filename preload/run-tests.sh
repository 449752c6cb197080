#!/usr/bin/env bash
# Builds libpymalloc_preload.so and proves it on real programs under
# LD_PRELOAD, each compared with its run on glibc:
#   * the C test of every entry point (alignments 1 B - 64 KiB, errno,
#     realloc/free of every kind of block, threads);
#   * fork() from a multi-threaded C program; a foreign pointer to free();
#   * sqlite3 on an allocation-heavy SQL script (output byte-identical);
#   * python3 with PYTHONMALLOC=malloc on an allocation-heavy script
#     (identical output) and on CPython's own test modules (same failures
#     as on glibc).
#
#   preload/run-tests.sh          # the CI selection
#   preload/run-tests.sh --long   # more of CPython's test suite
#   preload/run-tests.sh --peers  # also run the C test under Debian's
#                                 # mimalloc and jemalloc, listing what
#                                 # they get wrong (reported, not asserted)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v sqlite3 >/dev/null || apt-get install -y sqlite3 >/dev/null
cargo build --release -p pymalloc-preload
lib="$PWD/target/release/libpymalloc_preload.so"
out=target/preload
mkdir -p "$out"
flags="-std=c11 -O2 -fno-builtin -Wall -Wextra -Werror -Wno-use-after-free -pthread"
cc $flags preload/tests/test_malloc.c -o "$out/test_malloc" -ldl
cc $flags preload/tests/fork_threads.c -o "$out/fork_threads"
cc $flags preload/tests/foreign_free.c -o "$out/foreign_free"
cc $flags preload/tests/double_free.c -o "$out/double_free"

LD_PRELOAD="$lib" "$out/test_malloc"
if [ "${1:-}" = --peers ]; then
    for peer in /usr/lib/x86_64-linux-gnu/libmimalloc.so.2 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2; do
        [ -e "$peer" ] || { echo "$peer missing (apt-get install libmimalloc2.0 libjemalloc2)"; continue; }
        echo "== the same test under $peer:"
        LD_PRELOAD="$peer" timeout 60 "$out/test_malloc" 2>&1 | grep misaligned | head -5 || true
    done
fi
LD_PRELOAD="$lib" timeout 120 "$out/fork_threads"
if LD_PRELOAD="$lib" "$out/foreign_free" 2> "$out/foreign.txt"; then
    echo "a foreign pointer given to free() was not detected" >&2; exit 1
fi
grep -q "is not a live block of a pymalloc heap" "$out/foreign.txt"
echo "foreign pointer to free(): reported and aborted"

# Misuse caught before it corrupts anything: `expect_abort lib case text`.
expect_abort() {
    if LD_PRELOAD="$1" "$out/double_free" "$2" 2> "$out/$2.txt"; then
        echo "$2: not detected" >&2; exit 1
    fi
    grep -q "$3" "$out/$2.txt" || { cat "$out/$2.txt" >&2; exit 1; }
    echo "$2: reported and aborted ($(grep -o "$3" "$out/$2.txt"))"
}
expect_abort "$lib" double_small "small block 0x[0-9a-f]* (48 bytes) is already free (double free)"
expect_abort "$lib" double_medium "medium block 0x[0-9a-f]* ([0-9]* bytes) is already free (double free)"
# The `hardened` build: the C test of every entry point, and a write into
# a freed block caught when the allocator next follows its link.
cargo build --release -p pymalloc-preload --features hardened --target-dir target/hardened
hardened="$PWD/target/hardened/release/libpymalloc_preload.so"
LD_PRELOAD="$hardened" "$out/test_malloc" > /dev/null
echo "hardened: C test of every entry point passed"
expect_abort "$hardened" write_after_free "small block 0x[0-9a-f]* (48 bytes) was written after it was freed"

sqlite3 :memory: < preload/programs/workload.sql > "$out/sqlite.glibc"
LD_PRELOAD="$lib" sqlite3 :memory: < preload/programs/workload.sql > "$out/sqlite.pymalloc"
cmp "$out/sqlite.glibc" "$out/sqlite.pymalloc"
echo "sqlite3: identical output"

PYTHONMALLOC=malloc python3 preload/programs/alloc_heavy.py > "$out/py.glibc"
PYTHONMALLOC=malloc LD_PRELOAD="$lib" python3 preload/programs/alloc_heavy.py > "$out/py.pymalloc"
cmp "$out/py.glibc" "$out/py.pymalloc"
echo "python3 allocation-heavy script: identical output"

tests="test_dict test_list test_set test_json test_threading"
if [ "${1:-}" = --long ]; then
    tests="$tests test_collections test_re test_unicode test_bytes test_itertools test_functools \
        test_sort test_string test_tuple test_deque test_heapq test_bisect test_pickle test_struct"
fi
failing() { # env... -> sorted names of failing tests
    { env "$@" python3 -m test $tests -v 2>&1 || true; } \
        | sed -n 's/^\(FAIL\|ERROR\): \([a-z_0-9]*\) .*/\2/p' | sort
}
failing PYTHONMALLOC=malloc > "$out/cpython.glibc"
failing PYTHONMALLOC=malloc LD_PRELOAD="$lib" > "$out/cpython.pymalloc"
if ! cmp -s "$out/cpython.glibc" "$out/cpython.pymalloc"; then
    diff "$out/cpython.glibc" "$out/cpython.pymalloc" >&2 || true
    echo "CPython's tests fail differently under pymalloc" >&2; exit 1
fi
echo "python3 -m test $tests: same result as on glibc ($(wc -l < "$out/cpython.pymalloc") failing on both)"
