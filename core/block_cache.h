#ifndef CANOPY_BLOCK_CACHE_H
#define CANOPY_BLOCK_CACHE_H

#include <stddef.h>

/*
 * Large arena blocks (decoded batches) come from their own pages and go back
 * to a bounded cache when freed, not to malloc. In malloc's heaps a batch's
 * 55 KB blocks interleaved with the merge's and the trees' small allocations,
 * and what the batches freed stayed in the heaps as free space nothing else
 * could use: 11 to 25 MiB above the batches in flight, at a 16 MiB
 * memory_limit. Cached blocks keep their pages, so reuse costs no system call
 * and no page fault.
 */

/* Blocks smaller than this come from malloc. */
#define CN_BLOCK_CACHE_MIN (32 * 1024)

/* A block of at least `size` bytes; *real is its size (whole pages). NULL when out of memory. */
void *cn_block_get(size_t size, size_t *real);
/* Gives a block back: cached while the cache holds less than its limit, else unmapped. */
void cn_block_put(void *block, size_t real);
/* The most bytes the cache keeps (the service sets it to memory_limit, so that a
 * pipeline swinging between empty and full reuses its blocks). */
void cn_block_cache_limit(size_t bytes);

#endif
