/* In the spirit of the Larson & Krishnan server benchmark: T threads
 * (argv[1], default 2) each work on an array of slots; a step frees a
 * random slot's block and mallocs a new block of random size (16-512 B)
 * into it. Every EPOCH steps all threads meet at a barrier and each
 * takes the slot array the next thread was working on, so many blocks
 * are freed by a thread other than the one that allocated them (with 2
 * threads, 46% of frees; counted and printed). Each array carries its own
 * PRNG state, so the work (and the checksum) does not depend on thread
 * scheduling.
 *
 *   larson [threads=2] [steps per thread=8000000]
 */
#define _POSIX_C_SOURCE 200809L /* pthread barriers */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 4096
#ifndef EPOCH
#define EPOCH 4096 /* steps between hand-overs; as many as there are slots */
#endif
#define MIN_SIZE 16
#define MAX_SIZE 512

struct array {
    uint64_t rng;
    uint64_t sum;
    uint64_t frees, remote; /* frees; of them, by another thread */
    unsigned char *slot[SLOTS];
    uint32_t size[SLOTS];
    int16_t owner[SLOTS]; /* allocating thread; -1: the main thread */
};

static int nthreads;
static long steps;
static struct array *arrays;
static pthread_barrier_t barrier;

static uint64_t next(uint64_t *s) { /* xorshift64* */
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static void oom(void) {
    fputs("larson: out of memory\n", stderr);
    exit(1);
}

static void fill(struct array *a, uint32_t i, int thread) {
    uint32_t size = MIN_SIZE + (uint32_t)(next(&a->rng) % (MAX_SIZE - MIN_SIZE + 1));
    unsigned char *p = malloc(size);
    if (!p) oom();
    /* Stamp the first and last 8 bytes; checked when the block is freed. */
    uint64_t tag = ((uint64_t)i << 32) | size;
    memcpy(p, &tag, 8);
    memcpy(p + size - 8, &tag, 8);
    a->slot[i] = p;
    a->size[i] = size;
    a->owner[i] = (int16_t)thread;
}

static void release(struct array *a, uint32_t i, int thread) {
    unsigned char *p = a->slot[i];
    uint64_t head, tail, want = ((uint64_t)i << 32) | a->size[i];
    memcpy(&head, p, 8);
    memcpy(&tail, p + a->size[i] - 8, 8);
    if (head != want || tail != want) {
        fputs("larson: block contents corrupted\n", stderr);
        abort();
    }
    a->sum += head ^ (tail >> 7);
    a->frees++;
    a->remote += a->owner[i] != thread;
    free(p);
}

static void *worker(void *arg) {
    int t = (int)(intptr_t)arg;
    for (long done = 0, epoch = 0; done < steps; epoch++) {
        /* Epoch e: thread t works on array (t + e) % T. */
        struct array *a = &arrays[(t + epoch) % nthreads];
        long n = steps - done < EPOCH ? steps - done : EPOCH;
        for (long k = 0; k < n; k++) {
            uint32_t i = (uint32_t)(next(&a->rng) % SLOTS);
            release(a, i, t);
            fill(a, i, t);
        }
        done += n;
        pthread_barrier_wait(&barrier);
    }
    return NULL;
}

int main(int argc, char **argv) {
    nthreads = argc > 1 ? atoi(argv[1]) : 2;
    steps = argc > 2 ? atol(argv[2]) : 8000000;
    if (nthreads < 1) nthreads = 1;
    arrays = calloc((size_t)nthreads, sizeof *arrays);
    if (!arrays) oom();
    for (int t = 0; t < nthreads; t++) {
        /* Each array is first filled by the main thread, so even the
         * initial blocks are freed remotely. */
        arrays[t].rng = 0x9E3779B97F4A7C15ULL * (uint64_t)(t + 1);
        for (uint32_t i = 0; i < SLOTS; i++) fill(&arrays[t], i, -1);
    }
    pthread_barrier_init(&barrier, NULL, (unsigned)nthreads);
    pthread_t *tids = malloc(sizeof *tids * (size_t)nthreads);
    if (!tids) oom();
    for (int t = 0; t < nthreads; t++)
        if (pthread_create(&tids[t], NULL, worker, (void *)(intptr_t)t)) {
            fputs("larson: pthread_create failed\n", stderr);
            return 1;
        }
    for (int t = 0; t < nthreads; t++) pthread_join(tids[t], NULL);
    uint64_t sum = 0, frees = 0, remote = 0;
    for (int t = 0; t < nthreads; t++) {
        for (uint32_t i = 0; i < SLOTS; i++) release(&arrays[t], i, -1);
        sum += arrays[t].sum;
        frees += arrays[t].frees;
        remote += arrays[t].remote;
    }
    pthread_barrier_destroy(&barrier);
    free(tids);
    free(arrays);
    printf("larson threads %d steps %ld: %llu frees, %llu by another thread; "
           "checksum %llu\n", nthreads, steps, (unsigned long long)frees,
           (unsigned long long)remote, (unsigned long long)sum);
    return 0;
}
