/* pymalloc: CPython's memory interface (PyMem_* / PyObject_*) backed by
 * pymalloc's layered private heap. Link with libpymalloc_c (.so or .a;
 * for the static library also -lpthread -ldl -lm).
 *
 * Contracts (every domain):
 *  - Malloc(n): n uninitialised bytes aligned to 16, or NULL. n == 0 gives
 *    a distinct non-NULL pointer. Sizes above PY_SSIZE_T_MAX give NULL.
 *  - Calloc(nelem, elsize): zeroed; NULL if the product overflows.
 *  - Realloc(p, n): keeps min(old, n) bytes; p == NULL is Malloc(n);
 *    n == 0 resizes (does not free) and returns non-NULL; on failure
 *    returns NULL and p stays valid.
 *  - Free(p): p == NULL is a no-op; no size is needed.
 *  A block must be resized and freed through the domain that made it.
 *  Environment: PYMALLOC=debug installs the debug hooks at the first call.
 */
#ifndef PYMALLOC_PYMEM_H
#define PYMALLOC_PYMEM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef PY_SSIZE_T_MAX
#define PY_SSIZE_T_MAX ((size_t)PTRDIFF_MAX)
#endif

/* Raw domain: layer 1 only, thread-safe. */
void *PyMem_RawMalloc(size_t size);
void *PyMem_RawCalloc(size_t nelem, size_t elsize);
void *PyMem_RawRealloc(void *ptr, size_t new_size);
void PyMem_RawFree(void *ptr);

/* Mem domain: general-purpose buffers (pools for <= 512 bytes). */
void *PyMem_Malloc(size_t size);
void *PyMem_Calloc(size_t nelem, size_t elsize);
void *PyMem_Realloc(void *ptr, size_t new_size);
void PyMem_Free(void *ptr);

/* Object domain. */
void *PyObject_Malloc(size_t size);
void *PyObject_Calloc(size_t nelem, size_t elsize);
void *PyObject_Realloc(void *ptr, size_t new_size);
void PyObject_Free(void *ptr);

/* Typed forms. As in CPython, PyMem_Resize assigns to p: on failure p
 * becomes NULL and the old block is lost unless saved first. Overflow of
 * n * sizeof(type) gives NULL, never a short block. */
#define PyMem_New(type, n) \
    (((size_t)(n) > PY_SSIZE_T_MAX / sizeof(type)) ? NULL \
     : ((type *)PyMem_Malloc((size_t)(n) * sizeof(type))))
#define PyMem_Resize(p, type, n) \
    ((p) = ((size_t)(n) > PY_SSIZE_T_MAX / sizeof(type)) ? NULL \
     : (type *)PyMem_Realloc((p), (size_t)(n) * sizeof(type)))
#define PyMem_Del(p) PyMem_Free(p)

/* The macro set: the direct path to pymalloc's default heap, bypassing the
 * allocator hooks (faster, not extensible). Do not mix its blocks with the
 * function set once hooks (debug hooks included) are installed. */
void *pymalloc_malloc(size_t size);
void *pymalloc_calloc(size_t nelem, size_t elsize);
void *pymalloc_realloc(void *ptr, size_t new_size);
void pymalloc_free(void *ptr);
size_t pymalloc_usable_size(void *ptr);
#define PyMem_MALLOC(n) pymalloc_malloc(n)
#define PyMem_REALLOC(p, n) pymalloc_realloc((p), (n))
#define PyMem_FREE(p) pymalloc_free(p)
#define PyMem_NEW(type, n) \
    (((size_t)(n) > PY_SSIZE_T_MAX / sizeof(type)) ? NULL \
     : ((type *)PyMem_MALLOC((size_t)(n) * sizeof(type))))
#define PyMem_RESIZE(p, type, n) \
    ((p) = ((size_t)(n) > PY_SSIZE_T_MAX / sizeof(type)) ? NULL \
     : (type *)PyMem_REALLOC((p), (size_t)(n) * sizeof(type)))
#define PyMem_DEL(p) PyMem_FREE(p)

/* Allocator hooks. */
typedef enum {
    PYMEM_DOMAIN_RAW = 0,
    PYMEM_DOMAIN_MEM = 1,
    PYMEM_DOMAIN_OBJ = 2
} PyMemAllocatorDomain;

typedef struct {
    void *ctx;
    void *(*malloc)(void *ctx, size_t size);
    void *(*calloc)(void *ctx, size_t nelem, size_t elsize);
    void *(*realloc)(void *ctx, void *ptr, size_t new_size);
    void (*free)(void *ctx, void *ptr);
} PyMemAllocatorEx;

void PyMem_GetAllocator(PyMemAllocatorDomain domain, PyMemAllocatorEx *allocator);
void PyMem_SetAllocator(PyMemAllocatorDomain domain, PyMemAllocatorEx *allocator);

/* Arena allocator of the PyObject/PyMem heap: each arena asks alloc for
 * PYMALLOC_ARENA_ALLOC_SIZE bytes of any alignment (room for one 1 MiB
 * aligned arena); free gets exactly what alloc returned. The functions must
 * not allocate from the PyMem heap. */
typedef struct {
    void *ctx;
    void *(*alloc)(void *ctx, size_t size);
    void (*free)(void *ctx, void *ptr, size_t size);
} PyObjectArenaAllocator;
#define PYMALLOC_ARENA_ALLOC_SIZE ((size_t)2 * 1024 * 1024)
void PyObject_GetArenaAllocator(PyObjectArenaAllocator *allocator);
void PyObject_SetArenaAllocator(PyObjectArenaAllocator *allocator);

/* Debug hooks (as PYTHONMALLOC=debug): guard bytes, fill patterns, reports
 * on standard error, then abort. */
/* Wraps each domain's current allocator with the debug hooks (again after
 * PyMem_SetAllocator installs a new one). */
void PyMem_SetupDebugHooks(void);
/* "pymalloc", "pymalloc_debug", "malloc" or "malloc_debug" (the modes of
 * the PYMALLOC environment variable), or NULL for custom allocators. */
const char *_PyMem_GetCurrentAllocatorName(void);
/* Live blocks of the PyMem heap (sys.getallocatedblocks()). */
ptrdiff_t _Py_GetAllocatedBlocks(void);
/* The PyMem heap's statistics in the format of sys._debugmallocstats();
 * returns 1. */
#include <stdio.h>
int _PyObject_DebugMallocStats(FILE *out);
size_t PyMem_DebugCheckAll(void);

/* tracemalloc (pymalloc::trace). Every pymalloc heap is traced while
 * tracing is on; PYMALLOC_TRACE=N starts it at the first allocation with N
 * frames (PYTHONTRACEMALLOC), PYMALLOC_TRACE_SAMPLE=BYTES samples instead.
 * Tracebacks name file:line only for code built with debug information. */
#define PYMALLOC_TRACE_MAX_FRAMES 96
/* CPython's: trace `size` bytes at `ptr` in `domain` (memory of another
 * allocator); 0 on success, -2 if tracing is off, -1 without memory. */
int PyTraceMalloc_Track(unsigned int domain, uintptr_t ptr, size_t size);
/* Forget that trace: 0, or -2 if tracing is off. */
int PyTraceMalloc_Untrack(unsigned int domain, uintptr_t ptr);
/* Start tracing with `nframe` frames (1..PYMALLOC_TRACE_MAX_FRAMES), every
 * allocation (sample_mean 0) or one per `sample_mean` bytes on average;
 * 0, or -1 for a bad `nframe`. */
int pymalloc_trace_start(int nframe, size_t sample_mean);
/* Stop tracing and forget every trace. */
void pymalloc_trace_stop(void);
/* Bytes traced now and at most; either pointer may be NULL. */
void pymalloc_trace_get_traced_memory(size_t *current, size_t *peak);
/* Snapshot; print the `limit` biggest file:line sites to stderr, as
 * Python's `for stat in top_stats[:limit]: print(stat)`. Returns the number
 * of lines printed. */
int pymalloc_trace_print_top(unsigned int limit);
/* Snapshot; write it as folded stacks (flame graph input) to `path`.
 * 0, or -1 on an I/O error. */
int pymalloc_trace_write_folded(const char *path);

#ifdef __cplusplus
}
#endif

#endif /* PYMALLOC_PYMEM_H */
