#define _DEFAULT_SOURCE
/* fork() while other threads allocate and free: each child allocates,
 * frees and exits 0 (no lock left held by a thread that does not exist in
 * the child). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile int stop;

static void *churn(void *arg) {
    unsigned seed = (unsigned)(size_t)arg;
    void *slots[64] = {0};
    while (!stop) {
        seed = seed * 1103515245u + 12345u;
        int i = (seed >> 8) % 64;
        free(slots[i]);
        size_t n = (seed >> 4) % 3 == 0 ? (seed % 200000) : (seed % 512);
        slots[i] = malloc(n + 1);
        memset(slots[i], 1, n + 1);
    }
    for (int i = 0; i < 64; i++) free(slots[i]);
    return NULL;
}

int main(void) {
    pthread_t t[4];
    for (long i = 0; i < 4; i++) pthread_create(&t[i], NULL, churn, (void *)(i + 1));
    for (int k = 0; k < 50; k++) {
        usleep(2000);
        pid_t pid = fork();
        if (pid == 0) {
            for (int i = 0; i < 1000; i++) {
                char *p = malloc((size_t)(i * 97) % 70000 + 1);
                p[0] = 1;
                free(p);
            }
            _exit(0);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "child %d failed: status %d\n", k, status);
            return 1;
        }
    }
    stop = 1;
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    printf("50 forks from a 4-thread process: every child allocated and exited cleanly\n");
    return 0;
}
