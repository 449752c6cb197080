/* pymalloc::trace from C: PyMem blocks traced to this file's lines,
 * PyTraceMalloc_Track / _Untrack, the top sites printed. Built with -g so
 * that lines resolve. */
#include "pymem.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #c); exit(1); } } while (0)

int main(void) {
    size_t current = 0, peak = 0;
    CHECK(PyTraceMalloc_Track(7, 0x1000, 10) == -2);
    CHECK(pymalloc_trace_start(0, 0) == -1);
    CHECK(pymalloc_trace_start(4, 0) == 0);
    void *blocks[100];
    for (int i = 0; i < 100; i++) {
        blocks[i] = PyMem_Malloc(1000); /* LEAK_LINE */
    }
    pymalloc_trace_get_traced_memory(&current, &peak);
    CHECK(current >= 100 * 1000 && peak >= current);
    CHECK(PyTraceMalloc_Track(7, 0x1000, 4096) == 0);
    size_t with_tracked;
    pymalloc_trace_get_traced_memory(&with_tracked, NULL);
    CHECK(with_tracked == current + 4096);
    CHECK(PyTraceMalloc_Untrack(7, 0x1000) == 0);
    CHECK(pymalloc_trace_print_top(3) >= 1);
    CHECK(pymalloc_trace_write_folded("/dev/null") == 0);
    for (int i = 0; i < 100; i++) {
        PyMem_Free(blocks[i]);
    }
    pymalloc_trace_get_traced_memory(&current, NULL);
    CHECK(current == 0);
    pymalloc_trace_stop();
    CHECK(PyTraceMalloc_Untrack(7, 0x1000) == -2);
    printf("trace from C ok\n");
    return 0;
}
