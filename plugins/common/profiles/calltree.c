/*
 * The merged call tree (see profiles/calltree.h). Nodes live in one array;
 * a child is found by an open-addressing table keyed by (parent, signature),
 * so adding a snapshot costs one integer hash probe per frame. Signatures are
 * interned once per tree into an arena.
 */
#include <stdlib.h>
#include <string.h>

#include "canopy/batch.h"
#include "canopy/string_key.h"
#include "profiles/calltree.h"

/* Room for "[truncated]" nodes past max_nodes, so a cut stack still lands under its deepest frame. */
#define RESERVE(max) ((max) / 16 + 16)
/*
 * A new tree takes room for up to this many nodes at once (or max_nodes and
 * the reserve, when fewer): growing by doubling copied the node array and
 * rehashed the child table several times while a task's tree filled, about
 * half of what adding a snapshot cost. Big blocks come from mmap, so pages a
 * small tree never touches cost no memory.
 */
#define PRESIZE_NODES 32768

/*
 * A child table slot: (parent + 1, signature) -> node + 1, where node1 0 is
 * empty. Key and value side by side: with them in two arrays, each probe of
 * a table bigger than the cache missed twice (key, then value).
 */
typedef struct child_slot {
    uint32_t parent1, sig, node1;
} child_slot;

struct cn_calltree {
    size_t max_nodes;
    bool frozen; /* a clone: read only */
    cn_calltree_node *nodes;
    size_t n_nodes, cap_nodes;
    uint32_t first_root;
    child_slot *table; /* the child table */
    size_t cap_table;  /* power of two */
    /* signatures */
    /* signature index: open addressing of (string key, id + 1); 0 ids are empty */
    uint64_t *sig_key;
    uint32_t *sig_slot;
    size_t cap_sig_index;
    uint32_t *sig_len;
    char **sigs;
    size_t n_sigs, cap_sigs;
    size_t sig_bytes;
    cn_arena *arena;
    uint32_t truncated_sig;
    int64_t samples, truncated;
    bool stale; /* count and duration_ms need settling */
    uint32_t *scratch; /* the path of the snapshot being added */
    size_t cap_scratch;
};

/* In a run's sigs: the frame where the stack was cut, which no signature equals. */
#define SIG_CUT (UINT32_MAX - 1)

void cn_calltree_run_clear(cn_calltree_run *r)
{
    free(r->path);
    free(r->sigs);
    memset(r, 0, sizeof *r);
}

void cn_calltree_run_reset(cn_calltree_run *r)
{
    r->valid = false;
    r->last_seq = 0;
    r->last_time_ms = 0;
    r->n_path = 0;
}

cn_calltree *cn_calltree_new(size_t max_nodes) { return cn_calltree_new_presized(max_nodes, PRESIZE_NODES); }

cn_calltree *cn_calltree_new_presized(size_t max_nodes, size_t presize)
{
    cn_calltree *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->max_nodes = max_nodes ? max_nodes : 1;
    t->first_root = CN_CALLTREE_NONE;
    t->truncated_sig = CN_CALLTREE_NONE;
    size_t want = t->max_nodes + RESERVE(t->max_nodes);
    if (presize < 16)
        presize = 16;
    t->cap_nodes = want < presize ? want : presize;
    t->cap_table = 256;
    while (t->cap_table < 2 * t->cap_nodes)
        t->cap_table *= 2;
    t->nodes = malloc(t->cap_nodes * sizeof *t->nodes);
    t->table = calloc(t->cap_table, sizeof *t->table);
    t->cap_sig_index = 256;
    t->sig_key = malloc(t->cap_sig_index * sizeof *t->sig_key);
    t->sig_slot = calloc(t->cap_sig_index, sizeof *t->sig_slot);
    t->arena = cn_arena_new(16 * 1024);
    if (!t->nodes || !t->table || !t->sig_key || !t->sig_slot || !t->arena) {
        cn_calltree_free(t);
        return NULL;
    }
    return t;
}

void cn_calltree_free(cn_calltree *t)
{
    if (!t)
        return;
    free(t->nodes);
    free(t->table);
    free(t->sig_key);
    free(t->sig_slot);
    free(t->sig_len);
    free(t->sigs);
    cn_arena_free(t->arena);
    free(t->scratch);
    free(t);
}

static uint32_t sig_add(cn_calltree *t, const char *sig, size_t len)
{
    if (t->n_sigs == t->cap_sigs) {
        size_t cap = t->cap_sigs ? t->cap_sigs * 2 : 256;
        char **grown = realloc(t->sigs, cap * sizeof *grown);
        if (!grown)
            return CN_CALLTREE_NONE;
        t->sigs = grown;
        uint32_t *lens = realloc(t->sig_len, cap * sizeof *lens);
        if (!lens)
            return CN_CALLTREE_NONE;
        t->sig_len = lens;
        t->cap_sigs = cap;
    }
    char *copy = cn_arena_alloc(t->arena, len + 1);
    if (!copy)
        return CN_CALLTREE_NONE;
    memcpy(copy, sig, len);
    copy[len] = '\0';
    t->sigs[t->n_sigs] = copy;
    t->sig_len[t->n_sigs] = (uint32_t)len;
    t->sig_bytes += len + 1;
    return (uint32_t)t->n_sigs++;
}

static int sig_index_grow(cn_calltree *t)
{
    size_t cap = t->cap_sig_index * 2;
    uint64_t *hashes = malloc(cap * sizeof *hashes);
    uint32_t *slots = calloc(cap, sizeof *slots);
    if (!hashes || !slots) {
        free(hashes);
        free(slots);
        return -1;
    }
    for (size_t i = 0; i < t->cap_sig_index; i++) {
        if (!t->sig_slot[i])
            continue;
        size_t j = (size_t)t->sig_key[i] & (cap - 1);
        while (slots[j])
            j = (j + 1) & (cap - 1);
        slots[j] = t->sig_slot[i];
        hashes[j] = t->sig_key[i];
    }
    free(t->sig_key);
    free(t->sig_slot);
    t->sig_key = hashes;
    t->sig_slot = slots;
    t->cap_sig_index = cap;
    return 0;
}

uint32_t cn_calltree_intern(cn_calltree *t, const char *sig)
{
    return cn_calltree_intern_key(t, cn_string_key(sig, strlen(sig)), sig);
}

uint32_t cn_calltree_find_key(const cn_calltree *t, uint64_t key)
{
    size_t mask = t->cap_sig_index - 1;
    for (size_t i = (size_t)key & mask; t->sig_slot[i]; i = (i + 1) & mask)
        if (t->sig_key[i] == key)
            return t->sig_slot[i] - 1;
    return CN_CALLTREE_NONE;
}

uint32_t cn_calltree_intern_key(cn_calltree *t, uint64_t key, const char *sig)
{
    if (t->frozen)
        return CN_CALLTREE_NONE;
    /* The key stands for the string (canopy/string_key.h): sig is read only when it is new. */
    uint32_t id = cn_calltree_find_key(t, key);
    if (id != CN_CALLTREE_NONE)
        return id;
    /* A signature only matters as a node; there are never more distinct ones than nodes. */
    if (t->n_sigs >= t->max_nodes + RESERVE(t->max_nodes) || t->n_sigs >= UINT32_MAX - 2)
        return CN_CALLTREE_NONE;
    if ((t->n_sigs + 1) * 2 > t->cap_sig_index && sig_index_grow(t) != 0)
        return CN_CALLTREE_NONE;
    size_t mask = t->cap_sig_index - 1, i = (size_t)key & mask;
    while (t->sig_slot[i])
        i = (i + 1) & mask;
    if ((id = sig_add(t, sig, strlen(sig))) == CN_CALLTREE_NONE)
        return id;
    t->sig_slot[i] = id + 1;
    t->sig_key[i] = key;
    return id;
}

/* A full 64-bit mix of (parent + 1, sig): both must reach the low bits used. */
static inline size_t child_slot_index(uint32_t parent1, uint32_t sig, size_t mask)
{
    uint64_t key = (uint64_t)parent1 << 32 | sig;
    key ^= key >> 31;
    key *= 0x7FB5D329728EA185ULL;
    key ^= key >> 27;
    key *= 0x81DADEF4BC2DD44DULL;
    key ^= key >> 33;
    return (size_t)key & mask;
}

static int table_grow(cn_calltree *t)
{
    size_t cap = t->cap_table * 2;
    child_slot *table = calloc(cap, sizeof *table);
    if (!table)
        return -1;
    for (size_t i = 0; i < t->cap_table; i++) {
        const child_slot *s = &t->table[i];
        if (!s->node1)
            continue;
        size_t j = child_slot_index(s->parent1, s->sig, cap - 1);
        while (table[j].node1)
            j = (j + 1) & (cap - 1);
        table[j] = *s;
    }
    free(t->table);
    t->table = table;
    t->cap_table = cap;
    return 0;
}

/* The child of parent with signature sig, created when missing and allowed (limit = most nodes). */
static uint32_t child_get(cn_calltree *t, uint32_t parent, uint32_t sig, size_t limit)
{
    uint32_t parent1 = parent + 1u; /* CN_CALLTREE_NONE (a root) wraps to 0 */
    size_t mask = t->cap_table - 1, i = child_slot_index(parent1, sig, mask);
    for (; t->table[i].node1; i = (i + 1) & mask)
        if (t->table[i].parent1 == parent1 && t->table[i].sig == sig)
            return t->table[i].node1 - 1;
    if (t->n_nodes >= limit)
        return CN_CALLTREE_NONE;
    if ((t->n_nodes + 1) * 2 > t->cap_table) {
        if (table_grow(t) != 0)
            return CN_CALLTREE_NONE;
        mask = t->cap_table - 1;
        i = child_slot_index(parent1, sig, mask);
        while (t->table[i].node1)
            i = (i + 1) & mask;
    }
    if (t->n_nodes == t->cap_nodes) {
        size_t cap = t->cap_nodes ? t->cap_nodes * 2 : 256;
        cn_calltree_node *grown = realloc(t->nodes, cap * sizeof *grown);
        if (!grown)
            return CN_CALLTREE_NONE;
        t->nodes = grown;
        t->cap_nodes = cap;
    }
    uint32_t id = (uint32_t)t->n_nodes++;
    cn_calltree_node *n = &t->nodes[id];
    *n = (cn_calltree_node){.parent = parent, .first_child = CN_CALLTREE_NONE, .sig = sig};
    if (parent == CN_CALLTREE_NONE) {
        n->next_sibling = t->first_root;
        t->first_root = id;
    } else {
        n->depth = t->nodes[parent].depth + 1;
        n->next_sibling = t->nodes[parent].first_child;
        t->nodes[parent].first_child = id;
    }
    t->table[i] = (child_slot){parent1, sig, id + 1};
    return id;
}

/* Where a stack cut at `parent` goes: its "[truncated]" child, or parent itself past the reserve. */
static uint32_t truncated_node(cn_calltree *t, uint32_t parent)
{
    if (t->truncated_sig == CN_CALLTREE_NONE) {
        uint32_t s = sig_add(t, CN_CALLTREE_TRUNCATED, strlen(CN_CALLTREE_TRUNCATED));
        /* Not in sig_index: an agent frame with the same text stays a different signature. */
        if (s == CN_CALLTREE_NONE)
            return parent;
        t->truncated_sig = s;
    }
    uint32_t n = child_get(t, parent, t->truncated_sig, t->max_nodes + RESERVE(t->max_nodes));
    return n != CN_CALLTREE_NONE ? n : parent;
}

int cn_calltree_add(cn_calltree *t, const uint32_t *sigs, size_t n, cn_calltree_run *run, int32_t seq,
                    int64_t time_ms)
{
    if (t->frozen)
        return -1;
    uint32_t empty_sig;
    if (n == 0) {
        /* Counted like any snapshot, so totals match what was received. */
        empty_sig = cn_calltree_intern(t, CN_CALLTREE_EMPTY);
        sigs = &empty_sig;
        n = 1;
    }
    if (n > t->cap_scratch) {
        uint32_t *grown = realloc(t->scratch, n * sizeof *grown);
        if (!grown)
            return -1;
        t->scratch = grown;
        t->cap_scratch = n;
    }
    t->stale = true;
    /* Consecutive snapshots of a segment mostly share their outer frames: the shared prefix of
     * signatures is the same nodes (a node stands for its whole path), taken from the run's last
     * path; only the frames after it are looked up, and only they are written back to the run. */
    size_t reused = 0;
    const uint32_t *rpath = NULL;
    if (run && run->n_path) {
        const uint32_t *rsigs = run->sigs;
        size_t lim = n < run->n_path ? n : run->n_path;
        while (reused < lim && sigs[reused] == rsigs[reused])
            reused++;
        rpath = run->path;
    }
    uint32_t *scratch = t->scratch; /* nodes at depth >= reused */
    size_t depth = reused;
    uint32_t parent = reused ? rpath[reused - 1] : CN_CALLTREE_NONE;
    int rc = 0;
    for (size_t i = reused; i < n; i++) {
        uint32_t node = sigs[i] == CN_CALLTREE_NONE ? CN_CALLTREE_NONE : child_get(t, parent, sigs[i], t->max_nodes);
        if (node == CN_CALLTREE_NONE) {
            node = truncated_node(t, parent);
            rc = -1;
            if (node != CN_CALLTREE_NONE)
                scratch[depth++] = node;
            break; /* past every limit at the root: counted in samples and truncated only */
        }
        scratch[depth++] = node;
        parent = node;
    }
    t->samples++;
    if (rc != 0 || depth == 0) {
        t->truncated++;
        rc = -1;
    }
    if (depth == 0)
        return rc;
    uint32_t leaf = depth > reused ? scratch[depth - 1] : rpath[depth - 1];
    t->nodes[leaf].self++;
    /* SkyWalking's duration: a node's runs are the consecutive snapshots it is on. With this
     * snapshot's predecessor, every node down to the deepest shared one continues its run by the
     * gap; noting the gap at that node alone is enough, as durations are summed over subtrees. */
    if (run && run->valid && seq == run->last_seq + 1) {
        size_t shared = reused;
        while (shared < depth && shared < run->n_path && scratch[shared] == rpath[shared])
            shared++; /* a "[truncated]" node reached again */
        int64_t dt = time_ms - run->last_time_ms;
        if (shared > 0 && dt > 0) /* clocks stepping back never make a negative duration */
            t->nodes[shared > reused ? scratch[shared - 1] : rpath[shared - 1]].shared_ms += dt;
    }
    if (run && (!run->valid || seq > run->last_seq)) {
        if (depth > run->cap_path) {
            /* realloc keeps the reused prefix in place */
            uint32_t *path = realloc(run->path, depth * sizeof *path);
            if (path)
                run->path = path;
            uint32_t *rsigs = path ? realloc(run->sigs, depth * sizeof *rsigs) : NULL;
            if (rsigs)
                run->sigs = rsigs;
            if (!path || !rsigs) {
                run->valid = false; /* the next snapshot starts a new run */
                run->n_path = 0;
                return rc;
            }
            run->cap_path = (uint32_t)depth;
        }
        if (depth > reused) {
            memcpy(run->path + reused, scratch + reused, (depth - reused) * sizeof *run->path);
            memcpy(run->sigs + reused, sigs + reused, (depth - reused) * sizeof *run->sigs);
        }
        if (rc != 0)
            run->sigs[depth - 1] = SIG_CUT; /* the "[truncated]" node stands for no one signature */
        run->n_path = (uint32_t)depth;
        run->valid = true;
        run->last_seq = seq;
        run->last_time_ms = time_ms;
    }
    return rc;
}

/* count and duration_ms as sums over each subtree; children always come after their parent. */
static void settle(cn_calltree *t)
{
    if (!t->stale)
        return;
    for (size_t i = 0; i < t->n_nodes; i++) {
        t->nodes[i].count = t->nodes[i].self;
        t->nodes[i].duration_ms = t->nodes[i].shared_ms;
    }
    for (size_t i = t->n_nodes; i-- > 0;) {
        uint32_t p = t->nodes[i].parent;
        if (p != CN_CALLTREE_NONE) {
            t->nodes[p].count += t->nodes[i].count;
            t->nodes[p].duration_ms += t->nodes[i].duration_ms;
        }
    }
    t->stale = false;
}

cn_calltree *cn_calltree_clone(const cn_calltree *t)
{
    cn_calltree *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->frozen = true;
    c->max_nodes = t->max_nodes;
    c->first_root = t->first_root;
    c->truncated_sig = t->truncated_sig;
    c->samples = t->samples;
    c->truncated = t->truncated;
    c->n_nodes = c->cap_nodes = t->n_nodes;
    c->n_sigs = c->cap_sigs = t->n_sigs;
    c->sig_bytes = t->sig_bytes;
    c->nodes = malloc((t->n_nodes ? t->n_nodes : 1) * sizeof *c->nodes);
    c->sigs = malloc((t->n_sigs ? t->n_sigs : 1) * sizeof *c->sigs);
    c->sig_len = malloc((t->n_sigs ? t->n_sigs : 1) * sizeof *c->sig_len);
    /* One block for every string: a clone is short-lived and read once. */
    c->arena = cn_arena_new(t->sig_bytes + 64);
    if (!c->nodes || !c->sigs || !c->sig_len || !c->arena) {
        cn_calltree_free(c);
        return NULL;
    }
    if (t->n_sigs)
        memcpy(c->sig_len, t->sig_len, t->n_sigs * sizeof *c->sig_len);
    if (t->n_nodes)
        memcpy(c->nodes, t->nodes, t->n_nodes * sizeof *c->nodes);
    c->stale = true;
    settle(c);
    for (size_t i = 0; i < t->n_sigs; i++) {
        size_t len = t->sig_len[i];
        if (!(c->sigs[i] = cn_arena_alloc(c->arena, len + 1))) {
            cn_calltree_free(c);
            return NULL;
        }
        memcpy(c->sigs[i], t->sigs[i], len + 1);
    }
    return c;
}

size_t cn_calltree_node_count(const cn_calltree *t) { return t->n_nodes; }
const cn_calltree_node *cn_calltree_nodes(const cn_calltree *t)
{
    /* Settling only fills derived fields: reading stays logically const. */
    settle((cn_calltree *)t);
    return t->nodes;
}
uint32_t cn_calltree_first_root(const cn_calltree *t) { return t->first_root; }
const char *cn_calltree_sig(const cn_calltree *t, uint32_t sig) { return sig < t->n_sigs ? t->sigs[sig] : "?"; }
size_t cn_calltree_sig_count(const cn_calltree *t) { return t->n_sigs; }
int64_t cn_calltree_samples(const cn_calltree *t) { return t->samples; }
int64_t cn_calltree_truncated(const cn_calltree *t) { return t->truncated; }

size_t cn_calltree_bytes(const cn_calltree *t)
{
    return sizeof *t + t->cap_nodes * sizeof *t->nodes + t->cap_table * sizeof *t->table +
           t->cap_sigs * (sizeof *t->sigs + sizeof *t->sig_len) +
           t->cap_sig_index * (sizeof *t->sig_key + sizeof *t->sig_slot) + t->sig_bytes + t->n_sigs * 16;
}

bool cn_signature_parse(const char *sig, const char **file, size_t *file_len, const char **func, size_t *func_len,
                        int64_t *line)
{
    /* "<filename>.<function>: <lineno>": the line number follows the last ": ", and the
     * function name (a Python identifier, or <module>, <lambda>...) follows the last '.'
     * before it; file names have dots of their own. */
    const char *colon = NULL;
    for (const char *p = strstr(sig, ": "); p; p = strstr(p + 1, ": "))
        colon = p;
    *file = sig + strlen(sig);
    *file_len = 0;
    *func = sig;
    *func_len = strlen(sig);
    *line = 0;
    if (!colon)
        return false;
    const char *num = colon + 2;
    int64_t v = 0;
    const char *p = num;
    if (*p == '-')
        p++;
    if (!*p)
        return false;
    for (; *p; p++) {
        if (*p < '0' || *p > '9' || v > (INT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (*p - '0');
    }
    const char *dot = NULL;
    for (const char *q = sig; q < colon; q++)
        if (*q == '.')
            dot = q;
    if (!dot || dot == sig || dot + 1 == colon)
        return false;
    *file = sig;
    *file_len = (size_t)(dot - sig);
    *func = dot + 1;
    *func_len = (size_t)(colon - dot - 1);
    *line = num[0] == '-' ? -v : v;
    return true;
}
