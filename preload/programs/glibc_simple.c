/* In the spirit of glibc's benchtests/bench-malloc-simple: one thread,
 * small sizes (16-256 B), malloc+free in batches (allocate N pointers,
 * then free all N) and as back-to-back pairs. Deterministic; prints a
 * checksum of what it wrote into the blocks.
 *
 *   glibc_simple [scale=1]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static const size_t sizes[] = {16, 32, 48, 64, 96, 128, 192, 256};
#define NSIZES (sizeof sizes / sizeof sizes[0])
static const int batches[] = {25, 100, 400, 1600};
#define NBATCHES (sizeof batches / sizeof batches[0])
#define MAXBATCH 1600

static void *ptrs[MAXBATCH];

static void oom(void) {
    fputs("glibc_simple: out of memory\n", stderr);
    exit(1);
}

int main(int argc, char **argv) {
    long scale = argc > 1 ? atol(argv[1]) : 1;
    uint64_t sum = 0;
    for (size_t s = 0; s < NSIZES; s++) {
        size_t size = sizes[s];
        /* Batches: N allocations of the size, then N frees (in
         * allocation order), repeated so each batch size does the same
         * number of operations. */
        for (size_t b = 0; b < NBATCHES; b++) {
            int n = batches[b];
            long reps = scale * 640000L / n;
            for (long r = 0; r < reps; r++) {
                for (int i = 0; i < n; i++) {
                    unsigned char *p = malloc(size);
                    if (!p) oom();
                    p[0] = (unsigned char)i;
                    p[size - 1] = (unsigned char)r;
                    ptrs[i] = p;
                }
                for (int i = 0; i < n; i++) {
                    unsigned char *p = ptrs[i];
                    sum += p[0] + p[size - 1];
                    free(p);
                }
            }
        }
        /* Pairs: malloc immediately followed by free. */
        for (long r = 0; r < scale * 1000000L; r++) {
            unsigned char *p = malloc(size);
            if (!p) oom();
            p[0] = (unsigned char)r;
            sum += p[0];
            free(p);
        }
    }
    printf("glibc_simple checksum %llu\n", (unsigned long long)sum);
    return 0;
}
