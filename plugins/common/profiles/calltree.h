/*
 * A merged call tree: every stack added is walked root first, and each frame
 * becomes a node under its parent (a node is a code signature under a given
 * path), as SkyWalking's stack-tree analysis builds it. Each node counts
 * the snapshots that pass through it (count) and that end in it (self), and
 * keeps SkyWalking's duration: over runs of consecutive sequences of one
 * segment in which the node is on the stack, the time of the run's last
 * snapshot minus the time of its first.
 *
 * The number of nodes is bounded. A stack that needs a node past the limit
 * is cut there: its remaining frames are counted in one "[truncated]" child
 * of the deepest node it reached, so counts still add up.
 *
 * Not thread safe: a tree belongs to one thread at a time (cn_profiles
 * serialises access to the shared trees; a clone can be read anywhere).
 *
 * Renderers (folded stacks, gzipped pprof, interactive SVG flame graph) write
 * a tree to a FILE; they never change it.
 */
#ifndef CN_PLUGINS_CALLTREE_H
#define CN_PLUGINS_CALLTREE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define CN_CALLTREE_NONE UINT32_MAX
/* Signature of the node that absorbs stacks cut by the node limit. */
#define CN_CALLTREE_TRUNCATED "[truncated: node limit reached]"
/* Signature of the node that counts snapshots with no frames. */
#define CN_CALLTREE_EMPTY "[no frames]"

typedef struct cn_calltree cn_calltree;

typedef struct cn_calltree_node {
    uint32_t parent;       /* CN_CALLTREE_NONE for a root frame */
    uint32_t first_child;  /* CN_CALLTREE_NONE when a leaf; newest child first */
    uint32_t next_sibling; /* CN_CALLTREE_NONE at the end */
    uint32_t sig;          /* index into the signature table */
    uint32_t depth;        /* 0 for a root frame */
    int64_t count;         /* snapshots whose stack passes through this node */
    int64_t self;          /* snapshots whose stack ends here */
    int64_t duration_ms;   /* SkyWalking's duration (see above) */
    /*
     * Raw: time between consecutive snapshots of a segment whose deepest
     * shared node is this one. Adding a snapshot touches only this and self
     * of one node each; count and duration_ms are the sums over the subtree,
     * settled when the nodes are read (cn_calltree_nodes).
     */
    int64_t shared_ms;
} cn_calltree_node;

/*
 * Per-segment state the caller keeps between cn_calltree_add calls, so that
 * durations can follow a segment across chunks. Zero-initialise it; free
 * with cn_calltree_run_clear. A run belongs to one tree.
 */
typedef struct cn_calltree_run {
    bool valid;
    int32_t last_seq;
    int64_t last_time_ms;
    uint32_t *path; /* node ids of the last snapshot, root first */
    uint32_t *sigs; /* its signatures, so the next snapshot reuses the shared prefix without lookups */
    uint32_t n_path, cap_path;
} cn_calltree_run;

void cn_calltree_run_clear(cn_calltree_run *r);
/* Empties the run for another segment (of any tree), keeping its buffers. */
void cn_calltree_run_reset(cn_calltree_run *r);

/* max_nodes: most nodes, not counting a small reserve for "[truncated]" nodes. */
cn_calltree *cn_calltree_new(size_t max_nodes);
/*
 * The same, with room for `presize` nodes at first (cn_calltree_new takes
 * 32768, for a few long-lived, large trees). Many short-lived small trees
 * want a small one: each child added to a fresh large table faults in a new
 * page of it.
 */
cn_calltree *cn_calltree_new_presized(size_t max_nodes, size_t presize);
void cn_calltree_free(cn_calltree *t);

/* Index of a code signature in the tree's table, added when new; CN_CALLTREE_NONE at the limit or out of memory. */
uint32_t cn_calltree_intern(cn_calltree *t, const char *sig);
/*
 * The same for a signature whose cn_string_key is known (a batch's
 * string_keys): sig is read only when the signature is new to the tree.
 */
uint32_t cn_calltree_intern_key(cn_calltree *t, uint64_t key, const char *sig);
/* The signature with that key, or CN_CALLTREE_NONE: for callers to whom finding sig costs a cache miss. */
uint32_t cn_calltree_find_key(const cn_calltree *t, uint64_t key);

/*
 * Adds one snapshot: sigs are interned signatures, root first (n may be 0).
 * run is the snapshot's segment state (NULL: no durations). Snapshots of a
 * segment should come in sequence order; one that comes late (a sequence at
 * or below the last one) is counted but does not extend a run.
 * Returns 0, or -1 when the stack was cut by the node limit (still counted).
 */
int cn_calltree_add(cn_calltree *t, const uint32_t *sigs, size_t n, cn_calltree_run *run, int32_t seq,
                    int64_t time_ms);

/* A read-only deep copy (cannot be added to), for rendering outside a lock. NULL when out of memory. */
cn_calltree *cn_calltree_clone(const cn_calltree *t);

size_t cn_calltree_node_count(const cn_calltree *t);
/* The nodes, indexed by id; a parent's id is always below its children's. Settles count and duration_ms. */
const cn_calltree_node *cn_calltree_nodes(const cn_calltree *t);
/* First root node, or CN_CALLTREE_NONE; roots are linked through next_sibling. */
uint32_t cn_calltree_first_root(const cn_calltree *t);
const char *cn_calltree_sig(const cn_calltree *t, uint32_t sig);
size_t cn_calltree_sig_count(const cn_calltree *t);
/* Snapshots added (the sum of every node's self). */
int64_t cn_calltree_samples(const cn_calltree *t);
/* Snapshots cut by the node limit. */
int64_t cn_calltree_truncated(const cn_calltree *t);
/* Bytes held, roughly (for metrics). */
size_t cn_calltree_bytes(const cn_calltree *t);

/*
 * Splits a SkyWalking signature "<filename>.<function>: <lineno>" into its
 * parts (pointers into sig, with lengths). Returns false when sig does not
 * have that shape; then *func is the whole signature and the rest is empty.
 */
bool cn_signature_parse(const char *sig, const char **file, size_t *file_len, const char **func, size_t *func_len,
                        int64_t *line);

/* ---- renderers ------------------------------------------------------------ */

/* Descriptive facts renderers may show or embed. All optional. */
typedef struct cn_profile_meta {
    const char *task_id;
    const char *service;
    const char *endpoint;
    int64_t start_ms, end_ms; /* epoch ms of the first and last snapshot; 0 when unknown */
    int64_t period_ms;        /* dump_period, 0 when unknown */
    int64_t agents;           /* distinct agent instances; -1 when unknown */
} cn_profile_meta;

/*
 * Brendan Gregg's folded stacks: one "root;...;leaf count" line per distinct
 * stack with snapshots ending there. ';' and line breaks inside a signature
 * become ':' and ' '. The counts add up to cn_calltree_samples. Returns 0,
 * or -1 on a write error.
 */
int cn_calltree_write_folded(const cn_calltree *t, FILE *out);

/*
 * pprof profile.proto, gzipped. Sample types: samples/count (the default) and
 * wall/milliseconds (SkyWalking's durations, minus the children's). Function
 * names and file names go into the function table, line numbers into the
 * lines. Returns 0, or -1 on a write error or out of memory.
 */
int cn_calltree_write_pprof(const cn_calltree *t, const cn_profile_meta *meta, FILE *out);

/* What the second sample type (wall) of a pprof holds. */
typedef enum cn_pprof_wall {
    CN_PPROF_WALL_DURATION_MS = 0, /* SkyWalking's durations minus the children's, in ms (the files) */
    CN_PPROF_WALL_DURATION_NS,     /* the same in ns: wall time where snapshots are taken at switches */
    CN_PPROF_WALL_SAMPLES_NS,      /* snapshots ending in a node x period_ns: time-proportional sampling */
} cn_pprof_wall;

typedef struct cn_pprof_style {
    cn_pprof_wall wall;
    int64_t period_ns; /* CN_PPROF_WALL_SAMPLES_NS: what one snapshot weighs */
} cn_pprof_style;

/*
 * cn_calltree_write_pprof with the wall sample type chosen: samples/count,
 * then wall/milliseconds or wall/nanoseconds, period type wall in the same
 * unit (period: meta->period_ms). With meta->start_ms and end_ms the profile's
 * time_nanos and duration_nanos give its time range.
 */
int cn_calltree_write_pprof_styled(const cn_calltree *t, const cn_profile_meta *meta, const cn_pprof_style *style,
                                   FILE *out);

/*
 * A self-contained interactive SVG flame graph (root at the bottom): hover
 * for details, click to zoom, search by regular expression. width is in
 * pixels (0: 1200). Frames narrower than 0.1 px are left out.
 */
int cn_calltree_write_svg(const cn_calltree *t, const cn_profile_meta *meta, int width, FILE *out);

#endif
