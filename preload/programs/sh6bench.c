/* In the spirit of MicroQuill's SmartHeap sh6bench: each of T threads
 * (argv[1], default 2) runs rounds that allocate a batch of blocks of
 * varying sizes (mostly 8-256 B, one in 32 of 256 B - 4 KiB) and then free
 * the whole batch, in LIFO order, then FIFO, then random order, in turn.
 * Each thread has its own PRNG with a fixed seed; prints a checksum of the
 * stamps written into (and checked in) every block.
 *
 *   sh6bench [threads=2] [rounds per thread=2400]
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH 3000

struct thread {
    int id;
    uint64_t sum;
};

static long rounds;

static uint64_t next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void oom(void) {
    fputs("sh6bench: out of memory\n", stderr);
    exit(1);
}

static void *worker(void *arg) {
    struct thread *th = arg;
    uint64_t rng = 0xD1B54A32D192ED03ULL * (uint64_t)(th->id + 1), sum = 0;
    unsigned char **block = malloc(BATCH * sizeof *block);
    uint32_t *size = malloc(BATCH * sizeof *size);
    uint32_t *order = malloc(BATCH * sizeof *order);
    if (!block || !size || !order) oom();
    for (long r = 0; r < rounds; r++) {
        for (uint32_t i = 0; i < BATCH; i++) {
            uint64_t x = next(&rng);
            uint32_t n = (x & 31) == 0 ? 256 + (uint32_t)((x >> 8) % 3841)
                                       : 8 + (uint32_t)((x >> 8) % 249);
            unsigned char *p = malloc(n);
            if (!p) oom();
            uint32_t stamp = i ^ (uint32_t)r;
            memcpy(p, &n, 4);
            memcpy(p + n - 4, &stamp, 4);
            block[i] = p;
            size[i] = n;
        }
        switch (r % 3) {
        case 0: /* LIFO */
            for (uint32_t i = 0; i < BATCH; i++) order[i] = BATCH - 1 - i;
            break;
        case 1: /* FIFO */
            for (uint32_t i = 0; i < BATCH; i++) order[i] = i;
            break;
        default: /* random: Fisher-Yates */
            for (uint32_t i = 0; i < BATCH; i++) order[i] = i;
            for (uint32_t i = BATCH - 1; i > 0; i--) {
                uint32_t j = (uint32_t)(next(&rng) % (i + 1)), t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
        }
        for (uint32_t k = 0; k < BATCH; k++) {
            uint32_t i = order[k], n, stamp;
            unsigned char *p = block[i];
            memcpy(&n, p, 4);
            memcpy(&stamp, p + size[i] - 4, 4);
            if (n != size[i] || stamp != (i ^ (uint32_t)r)) {
                fputs("sh6bench: block contents corrupted\n", stderr);
                abort();
            }
            sum = sum * 31 + n + stamp;
            free(p);
        }
    }
    free(block);
    free(size);
    free(order);
    th->sum = sum;
    return NULL;
}

int main(int argc, char **argv) {
    int nthreads = argc > 1 ? atoi(argv[1]) : 2;
    rounds = argc > 2 ? atol(argv[2]) : 2400;
    if (nthreads < 1) nthreads = 1;
    struct thread *th = calloc((size_t)nthreads, sizeof *th);
    pthread_t *tids = calloc((size_t)nthreads, sizeof *tids);
    if (!th || !tids) oom();
    for (int t = 0; t < nthreads; t++) {
        th[t].id = t;
        if (pthread_create(&tids[t], NULL, worker, &th[t])) {
            fputs("sh6bench: pthread_create failed\n", stderr);
            return 1;
        }
    }
    uint64_t sum = 0;
    for (int t = 0; t < nthreads; t++) {
        pthread_join(tids[t], NULL);
        sum = sum * 1000003 + th[t].sum;
    }
    free(th);
    free(tids);
    printf("sh6bench threads %d rounds %ld checksum %llu\n", nthreads, rounds,
           (unsigned long long)sum);
    return 0;
}
