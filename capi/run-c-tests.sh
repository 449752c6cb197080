#!/usr/bin/env bash
# Builds libpymalloc_c and runs the C test program against the static and
# the shared library, then checks the debug hooks report a C overflow.
#
#   capi/run-c-tests.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p pymalloc-capi
out=target/c-tests
mkdir -p "$out"
cc=${CC:-cc}
flags="-std=c11 -O2 -Wall -Wextra -Werror -Icapi/include"
$cc $flags capi/tests/test_pymem.c target/release/libpymalloc_c.a -lpthread -ldl -lm -o "$out/test_pymem_static"
$cc $flags capi/tests/test_pymem.c -Ltarget/release -lpymalloc_c -lpthread \
    -Wl,-rpath,"$PWD/target/release" -o "$out/test_pymem_shared"
"$out/test_pymem_static"
"$out/test_pymem_shared"
# Debug hooks from C, through the environment: a write past the end is
# reported and aborts.
cat > "$out/overflow.c" <<'C'
#include "pymem.h"
int main(void) { char *p = PyMem_Malloc(10); p[10] = 'x'; PyMem_Free(p); return 0; }
C
$cc $flags "$out/overflow.c" target/release/libpymalloc_c.a -lpthread -ldl -lm -o "$out/overflow"
if PYMALLOC=debug "$out/overflow" 2> "$out/overflow.txt"; then
    echo "overflow was not detected" >&2; exit 1
fi
grep -q "bad trailing pad byte" "$out/overflow.txt"
grep -q "10 bytes originally requested" "$out/overflow.txt"
echo "debug hooks from C: overflow reported"
# PYMALLOC modes, as CPython's PYTHONMALLOC: each names itself; an unknown
# value is a fatal error naming the variable.
cat > "$out/modes.c" <<'C'
#include "pymem.h"
#include <stdio.h>
#include <string.h>
int main(void) {
    char *p = PyMem_Malloc(100);
    if (!p) return 2;
    memset(p, 7, 100);
    p = PyMem_Realloc(p, 5000);
    if (!p || p[99] != 7) return 3;
    PyMem_Free(p);
    const char *name = _PyMem_GetCurrentAllocatorName();
    printf("%s\n", name ? name : "(custom)");
    return 0;
}
C
$cc $flags "$out/modes.c" target/release/libpymalloc_c.a -lpthread -ldl -lm -o "$out/modes"
for mode in pymalloc debug pymalloc_debug malloc malloc_debug; do
    got=$(PYMALLOC=$mode "$out/modes")
    want=$mode; [ "$mode" = debug ] && want=pymalloc_debug
    [ "$got" = "$want" ] || { echo "PYMALLOC=$mode: allocator named '$got', expected '$want'" >&2; exit 1; }
done
[ "$(env -u PYMALLOC "$out/modes")" = pymalloc ]
if PYMALLOC=bogus "$out/modes" 2> "$out/modes.txt"; then
    echo "PYMALLOC=bogus was accepted" >&2; exit 1
fi
grep -q "PYMALLOC=bogus is not a known allocator" "$out/modes.txt"
echo "PYMALLOC modes from C: pymalloc, pymalloc_debug, malloc, malloc_debug; bad value refused"
# PYMALLOCSTATS, as CPython's PYTHONMALLOCSTATS: the statistics on each new
# arena and at exit, on standard error.
PYMALLOCSTATS=1 "$out/modes" > /dev/null 2> "$out/stats.txt"
[ "$(grep -c '^Total  *=' "$out/stats.txt")" -ge 2 ] || { cat "$out/stats.txt" >&2; exit 1; }
echo "PYMALLOCSTATS from C: reports on a new arena and at exit"
# tracemalloc from C (pymalloc::trace): PyMem blocks traced to the line
# that made them (built with -g), PyTraceMalloc_Track/_Untrack, the top
# sites printed; PYMALLOC_TRACE=N starts tracing from the environment.
$cc $flags -g capi/tests/test_trace.c target/release/libpymalloc_c.a -lpthread -ldl -lm -o "$out/test_trace"
"$out/test_trace" 2> "$out/trace.txt"
line=$(grep -n 'LEAK_LINE' capi/tests/test_trace.c | cut -d: -f1)
grep -q "test_trace.c:$line: size=97.7 KiB, count=100, average=1000 B" "$out/trace.txt" \
    || { cat "$out/trace.txt" >&2; echo "the leak's line was not reported" >&2; exit 1; }
echo "tracemalloc from C: the leaking line reported"
