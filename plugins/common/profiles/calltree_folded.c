/* Folded stacks (Brendan Gregg's format), as flamegraph.pl, inferno and speedscope read it. */
#include <stdlib.h>
#include <string.h>

#include "profiles/calltree.h"

/* ';' separates frames and a line break ends the record: neither may appear inside one.
 * Written in runs between such characters: stacks are long and repeat their prefixes. */
static void put_frame(const char *s, FILE *out)
{
    for (;;) {
        size_t n = strcspn(s, ";\n\r");
        fwrite(s, 1, n, out);
        s += n;
        if (!*s)
            return;
        putc(*s == ';' ? ':' : ' ', out);
        s++;
    }
}

int cn_calltree_write_folded(const cn_calltree *t, FILE *out)
{
    const cn_calltree_node *nodes = cn_calltree_nodes(t);
    size_t n = cn_calltree_node_count(t);
    uint32_t *path = NULL;
    size_t cap = 0;
    for (size_t id = 0; id < n; id++) {
        if (nodes[id].self <= 0)
            continue;
        size_t depth = nodes[id].depth + 1;
        if (depth > cap) {
            uint32_t *grown = realloc(path, depth * sizeof *grown);
            if (!grown) {
                free(path);
                return -1;
            }
            path = grown;
            cap = depth;
        }
        size_t k = depth;
        for (uint32_t at = (uint32_t)id; at != CN_CALLTREE_NONE && k > 0; at = nodes[at].parent)
            path[--k] = at;
        for (size_t i = k; i < depth; i++) {
            if (i > k)
                putc(';', out);
            put_frame(cn_calltree_sig(t, nodes[path[i]].sig), out);
        }
        fprintf(out, " %lld\n", (long long)nodes[id].self);
    }
    free(path);
    return ferror(out) ? -1 : 0;
}
