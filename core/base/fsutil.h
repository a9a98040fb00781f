/* File system helpers shared by the collector's core and plugins. Dependency free: libc only. */
#ifndef CANOPY_BASE_FSUTIL_H
#define CANOPY_BASE_FSUTIL_H

#include <sys/types.h>

/* mkdir -p: creates path and its missing parents with `mode`. 0, or -1 with errno set. */
int cn_mkdirs(const char *path, mode_t mode);

#endif
