/* glibc's allocation API, checked against libpymalloc_preload under
 * LD_PRELOAD: every entry point with free and realloc, every alignment
 * from 1 B to 64 KiB for each aligned entry point, errno and edge cases,
 * and threads allocating and freeing each other's blocks. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures;
/* Sizes the compiler cannot see (it would warn about them, or fold calls). */
static volatile size_t huge = SIZE_MAX;
static volatile size_t over = PTRDIFF_MAX + (size_t)1;
#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c); failures++; } } while (0)

void *reallocarray(void *, size_t, size_t);
void *pvalloc(size_t);
void *valloc(size_t);
void *memalign(size_t, size_t);

static void fill_check(unsigned char *p, size_t n, unsigned char v) {
    memset(p, v, n);
    for (size_t i = 0; i < n; i += 4093) CHECK(p[i] == v);
    if (n) CHECK(p[n - 1] == v);
}

/* A block from any entry point must be freeable and reallocatable. */
static void use_block(void *p, size_t n, size_t align) {
    CHECK(p != NULL);
    if (!p) return;
    if ((uintptr_t)p % align != 0) {
        fprintf(stderr, "misaligned: %zu-byte block at %p, alignment %zu\n", n, p, align);
        failures++;
    }
    CHECK(malloc_usable_size(p) >= n);
    fill_check(p, n, 0x5a);
    unsigned char *q = realloc(p, n + 1000);
    CHECK(q != NULL);
    for (size_t i = 0; i < n; i += 997) CHECK(q[i] == 0x5a);
    free(q);
}

struct shared { void *blocks[1000]; };

static void *producer(void *arg) {
    struct shared *s = arg;
    for (int i = 0; i < 1000; i++) {
        s->blocks[i] = malloc((size_t)(i * 37) % 5000 + 1);
        memset(s->blocks[i], i & 0xff, (size_t)(i * 37) % 5000 + 1);
    }
    return NULL;
}

static void *consumer(void *arg) {
    struct shared *s = arg;
    for (int i = 0; i < 1000; i++) {
        unsigned char *b = s->blocks[i];
        CHECK(b[0] == (i & 0xff));
        free(b);
    }
    return NULL;
}

int main(void) {
    /* Is the library in place? Its usable size of a 1-byte block is 16
     * (glibc's is 24). */
    void *probe = malloc(1);
    CHECK(malloc_usable_size(probe) == 16);
    free(probe);

    /* malloc / free / realloc basics. */
    void *a = malloc(0), *b = malloc(0);
    CHECK(a && b && a != b);
    free(a); free(b);
    free(NULL);
    for (size_t n = 1; n < (8u << 20); n = n * 3 + 1) use_block(malloc(n), n, 16);
    errno = 0;
    CHECK(malloc(huge) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(malloc(over) == NULL && errno == ENOMEM);

    /* calloc: zeroed, overflow. */
    unsigned char *c = calloc(1000, 33);
    for (int i = 0; i < 33000; i++) if (c[i]) { CHECK(!"calloc zeroed"); break; }
    use_block(c, 33000, 16);
    errno = 0;
    CHECK(calloc(huge / 2, 3) == NULL && errno == ENOMEM);

    /* realloc: NULL allocates; 0 frees and returns NULL (glibc); failure
     * keeps the block. */
    void *r = realloc(NULL, 100);
    CHECK(r != NULL);
    memset(r, 7, 100);
    errno = 0;
    CHECK(realloc(r, huge) == NULL && errno == ENOMEM);
    CHECK(((unsigned char *)r)[99] == 7);
    CHECK(realloc(r, 0) == NULL);

    /* reallocarray. */
    void *ra = reallocarray(NULL, 10, 10);
    use_block(ra, 100, 16);
    void *rb = malloc(8);
    errno = 0;
    CHECK(reallocarray(rb, huge / 2, 3) == NULL && errno == ENOMEM);
    free(rb);

    /* Every alignment from 1 B to 64 KiB, each aligned entry point. */
    for (size_t align = 1; align <= 65536; align *= 2) {
        size_t sizes[] = {0, 1, align, 3 * align + 5, 100000};
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
            size_t n = sizes[k];
            void *p = NULL;
            int rc = posix_memalign(&p, align, n);
            if (align % sizeof(void *) == 0) {
                CHECK(rc == 0);
                use_block(p, n, align);
            } else {
                CHECK(rc == EINVAL);
            }
            use_block(aligned_alloc(align, n ? n : 1), n ? n : 1, align);
            use_block(memalign(align, n), n, align);
        }
    }
    void *bad = (void *)1;
    CHECK(posix_memalign(&bad, 24, 10) == EINVAL && bad == (void *)1);
    errno = 0;
    CHECK(aligned_alloc(24, 48) == NULL && errno == EINVAL);
    void *m3 = memalign(24, 48); /* rounded up to 32 */
    use_block(m3, 48, 32);

    /* valloc, pvalloc: page-aligned; pvalloc rounds the size up. */
    long page = sysconf(_SC_PAGESIZE);
    use_block(valloc(100), 100, (size_t)page);
    void *pv = pvalloc(1);
    CHECK(malloc_usable_size(pv) >= (size_t)page);
    use_block(pv, (size_t)page, (size_t)page);
    use_block(pvalloc(0), 1, (size_t)page);
    /* cfree: gone from glibc's link-time API; the library exports it. */
    void (*cfree_fn)(void *) = (void (*)(void *))dlsym(RTLD_DEFAULT, "cfree");
    CHECK(cfree_fn != NULL);
    if (cfree_fn) cfree_fn(malloc(10));
    CHECK(malloc_usable_size(NULL) == 0);

    /* Threads: one allocates, another frees. */
    for (int round = 0; round < 20; round++) {
        struct shared s;
        pthread_t p, q;
        pthread_create(&p, NULL, producer, &s);
        pthread_join(p, NULL);
        pthread_create(&q, NULL, consumer, &s);
        pthread_join(q, NULL);
    }

    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("all malloc checks passed under the preloaded library\n");
    return 0;
}
