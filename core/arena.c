/*
 * A bump allocator. A decoded batch lives in one arena so that it is freed in
 * one go and its strings are never copied one by one.
 */
#include <stdbool.h>
#include <stdlib.h>

#include "block_cache.h"
#include "canopy/batch.h"

typedef struct arena_block {
    struct arena_block *next;
    size_t size, used;
    size_t mapped; /* bytes of a block from the block cache; 0 when from malloc */
    max_align_t data[];
} arena_block;

/* Under AddressSanitizer every block comes from malloc, so that a batch used
 * after its last reference is still reported. */
#if defined(__SANITIZE_ADDRESS__)
#define USE_BLOCK_CACHE false
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define USE_BLOCK_CACHE false
#endif
#endif
#ifndef USE_BLOCK_CACHE
#define USE_BLOCK_CACHE true
#endif

struct cn_arena {
    arena_block *head;
    size_t next_size;
    size_t total;
};

/* A block with room for `size` bytes; *bytes is what it takes from the system. */
static arena_block *block_new(size_t size, size_t *bytes)
{
    arena_block *b;
    size_t mapped = 0;
    if (USE_BLOCK_CACHE && sizeof *b + size >= CN_BLOCK_CACHE_MIN) {
        if (!(b = cn_block_get(sizeof *b + size, &mapped)))
            return NULL;
        size = mapped - sizeof *b; /* the rest of the last page is the arena's too */
    } else if (!(b = malloc(sizeof *b + size))) {
        return NULL;
    }
    b->next = NULL;
    b->size = size;
    b->used = 0;
    b->mapped = mapped;
    *bytes = sizeof *b + size;
    return b;
}

static void block_free(arena_block *b)
{
    if (b->mapped)
        cn_block_put(b, b->mapped);
    else
        free(b);
}

cn_arena *cn_arena_new(size_t first_block)
{
    cn_arena *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->next_size = first_block < 256 ? 256 : first_block;
    return a;
}

void *cn_arena_alloc(cn_arena *a, size_t size)
{
    const size_t align = sizeof(max_align_t);
    size = (size + align - 1) & ~(align - 1);
    arena_block *b = a->head;
    if (!b || b->size - b->used < size) {
        size_t want = a->next_size;
        while (want < size)
            want *= 2;
        size_t bytes;
        if (!(b = block_new(want, &bytes)))
            return NULL;
        b->next = a->head;
        a->head = b;
        a->total += bytes;
        /* Grow geometrically so a large batch needs few blocks. */
        if (a->next_size < (1u << 20))
            a->next_size *= 2;
    }
    void *p = (char *)b->data + b->used;
    b->used += size;
    return p;
}

int cn_arena_reserve(cn_arena *a, size_t size)
{
    arena_block *b = a->head;
    if (b && b->size - b->used >= size)
        return 0;
    /* Exactly the size asked for: a caller that counted its bytes wants no slack. */
    size_t bytes;
    if (!(b = block_new(size, &bytes)))
        return -1;
    b->next = a->head;
    a->head = b;
    a->total += bytes;
    return 0;
}

size_t cn_arena_bytes(const cn_arena *a) { return a->total; }

void cn_arena_free(cn_arena *a)
{
    if (!a)
        return;
    arena_block *b = a->head;
    while (b) {
        arena_block *next = b->next;
        block_free(b);
        b = next;
    }
    free(a);
}
