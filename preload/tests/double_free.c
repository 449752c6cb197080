#define _DEFAULT_SOURCE
/* Misuse the library must report (block address, size, what was wrong)
 * and abort on, before it corrupts anything. argv[1] names the case:
 *   double_small, double_medium: a block freed twice (glibc aborts too);
 *   write_after_free: a freed block's first word overwritten, then
 *     allocations of its size (caught by the `hardened` build only). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    if (!strcmp(argv[1], "double_small") || !strcmp(argv[1], "double_medium")) {
        size_t n = argv[1][7] == 's' ? 48 : 5000;
        char *p = malloc(n), *q = malloc(n);
        free(p);
        free(q);
        free(p);
        return 0;
    }
    if (!strcmp(argv[1], "write_after_free")) {
        static long target[8];
        void *blocks[4];
        for (int i = 0; i < 4; i++) blocks[i] = malloc(48);
        free(blocks[1]);
        *(volatile uintptr_t *)blocks[1] = (uintptr_t)&target[0];
        for (int i = 0; i < 4; i++) blocks[i] = malloc(48);
        return 0;
    }
    return 2;
}
