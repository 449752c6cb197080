#define _DEFAULT_SOURCE
/* Frees a pointer the heap never handed out: the library must report it
 * (address, what was wrong) and abort, not corrupt memory. */
#include <stdlib.h>
static long not_from_malloc[4];
int main(void) { free(&not_from_malloc[2]); return 0; }
