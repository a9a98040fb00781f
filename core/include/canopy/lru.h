/*
 * An intrusive least-recently-seen list: the element embeds a cn_lru_link and
 * the list only links them, so touching, unlinking and finding the oldest all
 * cost O(1) and nothing is allocated. Owners that remember many small things
 * (merge_by_task's segments, the live call trees' segments) forget the oldest
 * first by walking from `oldest`.
 *
 *     typedef struct seg { cn_lru_link lru; ... } seg;
 *     cn_lru_touch(&task->lru, &s->lru);                    // seen now
 *     seg *old = CN_LRU_ENTRY(task->lru.oldest, seg, lru);  // NULL when empty
 */
#ifndef CANOPY_LRU_H
#define CANOPY_LRU_H

#include <stddef.h>

typedef struct cn_lru_link {
    struct cn_lru_link *older, *newer;
} cn_lru_link;

typedef struct cn_lru {
    cn_lru_link *oldest, *newest;
} cn_lru;

/* The element holding link l (NULL for a NULL link). */
#define CN_LRU_ENTRY(l, type, member) ((l) ? (type *)(void *)((char *)(l) - offsetof(type, member)) : (type *)NULL)

static inline void cn_lru_unlink(cn_lru *lru, cn_lru_link *l)
{
    if (l->older)
        l->older->newer = l->newer;
    else
        lru->oldest = l->newer;
    if (l->newer)
        l->newer->older = l->older;
    else
        lru->newest = l->older;
    l->older = l->newer = NULL;
}

/* Appends l, which is on no list, as the most recently seen. */
static inline void cn_lru_push(cn_lru *lru, cn_lru_link *l)
{
    l->older = lru->newest;
    l->newer = NULL;
    if (lru->newest)
        lru->newest->newer = l;
    else
        lru->oldest = l;
    lru->newest = l;
}

/* Marks l, already on the list, as seen now. */
static inline void cn_lru_touch(cn_lru *lru, cn_lru_link *l)
{
    if (lru->newest == l)
        return;
    cn_lru_unlink(lru, l);
    cn_lru_push(lru, l);
}

#endif
