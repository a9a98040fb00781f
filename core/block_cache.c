/*
 * The cache behind large arena blocks (see block_cache.h): one LIFO list per
 * size in pages, under one lock (a few thousand batches a second).
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#include "block_cache.h"

/* Sizes cached, in pages; a larger block is mapped and unmapped each time. */
#define MAX_PAGES 1024
/* A block may be this many pages larger than asked: batches of one agent vary by a page or two. */
#define SLACK_PAGES 2

typedef struct free_block {
    struct free_block *next;
} free_block;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static free_block *by_pages[MAX_PAGES + 1];
static size_t cached_bytes, cache_limit = 32u << 20;

static size_t page_size(void)
{
    long page = sysconf(_SC_PAGESIZE); /* read from the aux vector: cheap enough per block */
    return page > 0 ? (size_t)page : 4096;
}

void cn_block_cache_limit(size_t bytes)
{
    pthread_mutex_lock(&lock);
    cache_limit = bytes;
    pthread_mutex_unlock(&lock);
}

void *cn_block_get(size_t size, size_t *real)
{
    size_t page = page_size(), pages = (size + page - 1) / page;
    if (pages <= MAX_PAGES) {
        pthread_mutex_lock(&lock);
        for (size_t n = pages; n <= pages + SLACK_PAGES && n <= MAX_PAGES; n++) {
            free_block *b = by_pages[n];
            if (b) {
                by_pages[n] = b->next;
                cached_bytes -= n * page;
                pthread_mutex_unlock(&lock);
                *real = n * page;
                return b;
            }
        }
        pthread_mutex_unlock(&lock);
    }
    void *p = mmap(NULL, pages * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    *real = pages * page;
    return p;
}

void cn_block_put(void *block, size_t real)
{
    size_t pages = real / page_size();
    if (pages <= MAX_PAGES) {
        pthread_mutex_lock(&lock);
        bool keep = cached_bytes + real <= cache_limit;
        if (keep) {
            free_block *b = block;
            b->next = by_pages[pages];
            by_pages[pages] = b;
            cached_bytes += real;
        }
        pthread_mutex_unlock(&lock);
        if (keep)
            return;
    }
    munmap(block, real);
}
