/*
 * A bump allocator. A decoded batch lives in one arena so that it is freed in
 * one go and its strings are never copied one by one.
 */
#include <stdlib.h>

#include "canopy/batch.h"

typedef struct arena_block {
    struct arena_block *next;
    size_t size, used;
    max_align_t data[];
} arena_block;

struct cn_arena {
    arena_block *head;
    size_t next_size;
    size_t total;
};

static arena_block *block_new(size_t size)
{
    arena_block *b = malloc(sizeof *b + size);
    if (!b)
        return NULL;
    b->next = NULL;
    b->size = size;
    b->used = 0;
    return b;
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
        b = block_new(want);
        if (!b)
            return NULL;
        b->next = a->head;
        a->head = b;
        a->total += sizeof *b + want;
        /* Grow geometrically so a large batch needs few blocks. */
        if (a->next_size < (1u << 20))
            a->next_size *= 2;
    }
    void *p = (char *)b->data + b->used;
    b->used += size;
    return p;
}

void cn_arena_shrink_last(cn_arena *a, void *p, size_t old_size, size_t new_size)
{
    const size_t align = sizeof(max_align_t);
    old_size = (old_size + align - 1) & ~(align - 1);
    new_size = (new_size + align - 1) & ~(align - 1);
    arena_block *b = a->head;
    /* Only the newest allocation can give its tail back. */
    if (b && new_size <= old_size && (char *)p + old_size == (char *)b->data + b->used)
        b->used -= old_size - new_size;
}

size_t cn_arena_bytes(const cn_arena *a) { return a->total; }

void cn_arena_free(cn_arena *a)
{
    if (!a)
        return;
    arena_block *b = a->head;
    while (b) {
        arena_block *next = b->next;
        free(b);
        b = next;
    }
    free(a);
}
