/* The PyMem contracts, checked from C against libpymalloc_c. Each CHECK
 * failure prints the line and exits non-zero. Multi-threaded part: the
 * hooks are read by several threads while they allocate. */
#include "pymem.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
#define CHECK(cond) do { if (!(cond)) { \
    fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    failures++; } } while (0)

typedef void *(*malloc_fn)(size_t);
typedef void *(*calloc_fn)(size_t, size_t);
typedef void *(*realloc_fn)(void *, size_t);
typedef void (*free_fn)(void *);

struct domain {
    const char *name;
    malloc_fn malloc;
    calloc_fn calloc;
    realloc_fn realloc;
    free_fn free;
};

static void check_domain(const struct domain *d) {
    /* Zero bytes: distinct, non-NULL. */
    void *a = d->malloc(0), *b = d->malloc(0);
    CHECK(a != NULL && b != NULL && a != b);
    d->free(a);
    d->free(b);
    /* Alignment and contents across small, medium and huge sizes. */
    size_t sizes[] = {1, 15, 16, 100, 512, 513, 4000, 100000, 3u << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        unsigned char *p = d->malloc(n);
        CHECK(p != NULL && (uintptr_t)p % 16 == 0);
        memset(p, 0x5a, n);
        unsigned char *q = d->realloc(p, 2 * n + 1);
        CHECK(q != NULL);
        for (size_t j = 0; j < n; j++) if (q[j] != 0x5a) { CHECK(!"grow kept contents"); break; }
        unsigned char *r = d->realloc(q, n / 2 + 1);
        for (size_t j = 0; j <= n / 2; j++) if (r[j] != 0x5a) { CHECK(!"shrink kept prefix"); break; }
        void *z = d->realloc(r, 0); /* resizes, does not free */
        CHECK(z != NULL);
        d->free(z);
    }
    /* realloc(NULL, n) is malloc(n); failed realloc keeps the block. */
    unsigned char *p = d->realloc(NULL, 40);
    CHECK(p != NULL);
    memset(p, 7, 40);
    CHECK(d->realloc(p, SIZE_MAX) == NULL);
    CHECK(d->realloc(p, PY_SSIZE_T_MAX + (size_t)1) == NULL);
    for (int j = 0; j < 40; j++) CHECK(p[j] == 7);
    d->free(p);
    d->free(NULL);
    CHECK(d->malloc(PY_SSIZE_T_MAX + (size_t)1) == NULL);
    CHECK(d->malloc(SIZE_MAX) == NULL);
    /* calloc: zeroed, overflow is NULL. */
    unsigned char *c = d->calloc(100, 7);
    CHECK(c != NULL);
    for (int j = 0; j < 700; j++) if (c[j] != 0) { CHECK(!"calloc zeroed"); break; }
    d->free(c);
    CHECK(d->calloc(SIZE_MAX / 2, 3) == NULL);
    printf("%s domain: ok\n", d->name);
}

static void *macro_malloc(size_t n) { return PyMem_MALLOC(n); }
static void *macro_realloc(void *p, size_t n) { return PyMem_REALLOC(p, n); }
static void macro_free(void *p) { PyMem_FREE(p); }

/* A counting hook that wraps the Object domain. */
static PyMemAllocatorEx wrapped;
static volatile size_t hook_calls;
static pthread_mutex_t hook_lock = PTHREAD_MUTEX_INITIALIZER;
static void count(void) { pthread_mutex_lock(&hook_lock); hook_calls++; pthread_mutex_unlock(&hook_lock); }
static void *hook_malloc(void *ctx, size_t n) { CHECK(ctx == &wrapped); count(); return wrapped.malloc(wrapped.ctx, n); }
static void *hook_calloc(void *ctx, size_t a, size_t b) { (void)ctx; count(); return wrapped.calloc(wrapped.ctx, a, b); }
static void *hook_realloc(void *ctx, void *p, size_t n) { (void)ctx; count(); return wrapped.realloc(wrapped.ctx, p, n); }
static void hook_free(void *ctx, void *p) { (void)ctx; count(); wrapped.free(wrapped.ctx, p); }

static void *worker(void *arg) {
    (void)arg;
    for (size_t i = 0; i < 2000; i++) {
        void *p = PyObject_Malloc(i % 700);
        CHECK(p != NULL);
        void *q = PyMem_Malloc(i % 3000);
        PyObject_Free(p);
        PyMem_Free(q);
    }
    return NULL;
}

/* A Mem-domain hook over the default allocator, for the re-wrap test. */
static PyMemAllocatorEx mem_default;
static volatile size_t mem_hook_calls;
static void *mem_hook_malloc(void *ctx, size_t n) { (void)ctx; mem_hook_calls++; return mem_default.malloc(mem_default.ctx, n); }
static void *mem_hook_calloc(void *ctx, size_t a, size_t b) { (void)ctx; mem_hook_calls++; return mem_default.calloc(mem_default.ctx, a, b); }
static void *mem_hook_realloc(void *ctx, void *p, size_t n) { (void)ctx; mem_hook_calls++; return mem_default.realloc(mem_default.ctx, p, n); }
static void mem_hook_free(void *ctx, void *p) { (void)ctx; mem_hook_calls++; mem_default.free(mem_default.ctx, p); }

/* An arena allocator over the C library's malloc, at an odd alignment. */
static size_t arena_allocs, arena_frees, arena_bad_frees;
static void *arena_alloc(void *ctx, size_t size) {
    CHECK(ctx == &arena_allocs && size == PYMALLOC_ARENA_ALLOC_SIZE);
    char *p = malloc(size + 8);
    if (!p) return NULL;
    arena_allocs++;
    memcpy(p, &size, sizeof size);
    return p + 8;
}
static void arena_free(void *ctx, void *ptr, size_t size) {
    size_t was;
    (void)ctx;
    memcpy(&was, (char *)ptr - 8, sizeof was);
    if (was != size) arena_bad_frees++;
    arena_frees++;
    free((char *)ptr - 8);
}

int main(void) {
    const char *name = _PyMem_GetCurrentAllocatorName();
    CHECK(name != NULL && strcmp(name, "pymalloc") == 0);
    /* An unknown domain: every field NULL, as CPython. */
    PyMemAllocatorEx junk;
    memset(&junk, 0xAB, sizeof junk);
    PyMem_GetAllocator((PyMemAllocatorDomain)7, &junk);
    CHECK(junk.ctx == NULL && junk.malloc == NULL && junk.calloc == NULL
          && junk.realloc == NULL && junk.free == NULL);
    /* Allocated blocks and the statistics report, as CPython's. */
    ptrdiff_t blocks_before = _Py_GetAllocatedBlocks();
    void *b1 = PyObject_Malloc(24), *b2 = PyMem_Malloc(3000);
    CHECK(_Py_GetAllocatedBlocks() == blocks_before + 2);
    FILE *report = tmpfile();
    CHECK(report != NULL && _PyObject_DebugMallocStats(report) == 1);
    rewind(report);
    char line[256];
    int saw_total = 0, saw_alloc = 0;
    while (fgets(line, sizeof line, report)) {
        if (strncmp(line, "Total                              =", 36) == 0) saw_total = 1;
        if (strncmp(line, "# bytes in allocated blocks        =", 36) == 0) saw_alloc = 1;
    }
    fclose(report);
    CHECK(saw_total && saw_alloc);
    PyObject_Free(b1);
    PyMem_Free(b2);
    CHECK(_Py_GetAllocatedBlocks() == blocks_before);
    struct domain domains[] = {
        {"raw", PyMem_RawMalloc, PyMem_RawCalloc, PyMem_RawRealloc, PyMem_RawFree},
        {"mem", PyMem_Malloc, PyMem_Calloc, PyMem_Realloc, PyMem_Free},
        {"object", PyObject_Malloc, PyObject_Calloc, PyObject_Realloc, PyObject_Free},
        {"macro", macro_malloc, pymalloc_calloc, macro_realloc, macro_free},
    };
    for (size_t i = 0; i < sizeof domains / sizeof domains[0]; i++) check_domain(&domains[i]);

    /* Typed forms: overflow gives NULL, never a short block. */
    uint64_t *t = PyMem_New(uint64_t, 100);
    CHECK(t != NULL);
    for (int i = 0; i < 100; i++) t[i] = (uint64_t)i;
    CHECK(PyMem_New(uint64_t, SIZE_MAX / 4) == NULL);
    uint64_t *saved = t;
    PyMem_Resize(t, uint64_t, SIZE_MAX / 4); /* C semantics: t becomes NULL */
    CHECK(t == NULL);
    t = saved; /* the old block is still valid */
    CHECK(t[99] == 99);
    PyMem_Resize(t, uint64_t, 10000);
    CHECK(t != NULL && t[42] == 42);
    PyMem_Del(t);
    uint32_t *m = PyMem_NEW(uint32_t, 10);
    m[0] = 3;
    PyMem_RESIZE(m, uint32_t, 20);
    CHECK(m != NULL && m[0] == 3 && pymalloc_usable_size(m) >= 80);
    PyMem_DEL(m);
    printf("typed forms: ok\n");

    /* Hooks: wrap the Object domain, count every call, restore. */
    PyMemAllocatorEx hook = {&wrapped, hook_malloc, hook_calloc, hook_realloc, hook_free};
    PyMem_GetAllocator(PYMEM_DOMAIN_OBJ, &wrapped);
    PyMem_SetAllocator(PYMEM_DOMAIN_OBJ, &hook);
    void *o = PyObject_Malloc(10);
    o = PyObject_Realloc(o, 1000);
    void *oc = PyObject_Calloc(2, 2);
    PyObject_Free(o);
    PyObject_Free(oc);
    PyMem_Free(PyMem_Malloc(10)); /* another domain: not counted */
    CHECK(hook_calls == 5);
    /* Sizes no Py_ssize_t holds never reach a hook. */
    CHECK(PyObject_Malloc((size_t)PY_SSIZE_T_MAX + 1) == NULL);
    CHECK(PyObject_Calloc(SIZE_MAX / 2, 4) == NULL);
    void *keep = PyObject_Malloc(8);
    CHECK(PyObject_Realloc(keep, (size_t)PY_SSIZE_T_MAX + 1) == NULL);
    PyObject_Free(keep);
    CHECK(hook_calls == 7);
    CHECK(_PyMem_GetCurrentAllocatorName() == NULL); /* a custom hook */
    hook_calls = 5;
    pthread_t threads[4];
    for (int i = 0; i < 4; i++) pthread_create(&threads[i], NULL, worker, NULL);
    for (int i = 0; i < 4; i++) pthread_join(threads[i], NULL);
    CHECK(hook_calls == 5 + 4 * 2000 * 2);
    PyMem_SetAllocator(PYMEM_DOMAIN_OBJ, &wrapped);
    PyObject_Free(PyObject_Malloc(1));
    CHECK(hook_calls == 5 + 4 * 2000 * 2);
    PyMemAllocatorEx now;
    PyMem_GetAllocator(PYMEM_DOMAIN_OBJ, &now);
    CHECK(now.malloc == wrapped.malloc && now.ctx == wrapped.ctx);
    printf("hooks: ok\n");

    /* Arenas from an installed arena allocator, freed through it. */
    PyObjectArenaAllocator old_arenas, mine = {&arena_allocs, arena_alloc, arena_free};
    PyObject_GetArenaAllocator(&old_arenas);
    PyObject_SetArenaAllocator(&mine);
    enum { N = 60000 };
    static void *objs[N];
    for (int i = 0; i < N; i++) {
        objs[i] = PyObject_Malloc(200);
        CHECK(objs[i] != NULL);
        memset(objs[i], i & 0xff, 200);
    }
    CHECK(arena_allocs >= 2);
    for (int i = 0; i < N; i++) {
        CHECK(((unsigned char *)objs[i])[199] == (i & 0xff));
        PyObject_Free(objs[i]);
    }
    PyObject_SetArenaAllocator(&old_arenas);
    CHECK(arena_bad_frees == 0); /* any arena freed got its exact size */
    printf("arena allocator: %zu arenas allocated through it\n", arena_allocs);

    /* Debug hooks, then a new Mem allocator, then the debug hooks again:
     * they wrap the new allocator (CPython's documented behaviour). */
    PyMem_SetupDebugHooks();
    name = _PyMem_GetCurrentAllocatorName();
    CHECK(name != NULL && strcmp(name, "pymalloc_debug") == 0);
    PyMem_Free(PyMem_Malloc(3));
    PyMemAllocatorEx debug_mem;
    PyMem_GetAllocator(PYMEM_DOMAIN_MEM, &debug_mem);
    /* The new Mem allocator counts its calls and passes them to the raw
     * domain's current allocator. */
    PyMem_GetAllocator(PYMEM_DOMAIN_RAW, &mem_default);
    PyMemAllocatorEx mem_hook = {NULL, mem_hook_malloc, mem_hook_calloc, mem_hook_realloc, mem_hook_free};
    PyMem_SetAllocator(PYMEM_DOMAIN_MEM, &mem_hook);
    PyMem_SetupDebugHooks();
    PyMemAllocatorEx rewrapped;
    PyMem_GetAllocator(PYMEM_DOMAIN_MEM, &rewrapped);
    CHECK(rewrapped.malloc == debug_mem.malloc); /* the debug hooks again */
    CHECK(rewrapped.ctx != debug_mem.ctx);       /* ... over the new allocator */
    size_t before = mem_hook_calls;
    char *mb = PyMem_Malloc(10);
    CHECK(mb != NULL && mem_hook_calls == before + 1);
    memset(mb, 1, 10);
    PyMem_Free(mb);
    CHECK(mem_hook_calls == before + 2);
    CHECK(_PyMem_GetCurrentAllocatorName() == NULL);
    printf("debug hooks re-wrap: ok\n");

    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("all PyMem checks passed from C\n");
    return 0;
}
