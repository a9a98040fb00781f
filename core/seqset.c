/* Sets of sequence numbers (canopy/seqset.h). */
#include <stdlib.h>
#include <string.h>

#include "canopy/seqset.h"

bool cn_seqset_has(const cn_seqset *s, int32_t seq)
{
    if (seq < s->watermark)
        return true;
    uint32_t lo = 0, hi = s->n_above;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (s->above[mid] < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->n_above && s->above[lo] == seq;
}

int cn_seqset_add(cn_seqset *s, int32_t seq, uint32_t max_above)
{
    if (cn_seqset_has(s, seq))
        return 0;
    if (seq == s->watermark) {
        s->watermark++;
        uint32_t absorbed = 0;
        while (absorbed < s->n_above && s->above[absorbed] == s->watermark) {
            s->watermark++;
            absorbed++;
        }
        if (absorbed) {
            memmove(s->above, s->above + absorbed, (s->n_above - absorbed) * sizeof *s->above);
            s->n_above -= absorbed;
        }
        return 0;
    }
    if (max_above && s->n_above >= max_above)
        return -1;
    if (s->n_above == s->cap_above) {
        uint32_t cap = s->cap_above ? s->cap_above * 2 : 8;
        int32_t *grown = realloc(s->above, cap * sizeof *grown);
        if (!grown)
            return -1;
        s->above = grown;
        s->cap_above = cap;
    }
    /* Added in order mostly, so the insertion point is found from the end. */
    uint32_t pos = s->n_above;
    while (pos > 0 && s->above[pos - 1] > seq)
        pos--;
    memmove(s->above + pos + 1, s->above + pos, (s->n_above - pos) * sizeof *s->above);
    s->above[pos] = seq;
    s->n_above++;
    return 0;
}

void cn_seqset_clear(cn_seqset *s)
{
    free(s->above);
    memset(s, 0, sizeof *s);
}
