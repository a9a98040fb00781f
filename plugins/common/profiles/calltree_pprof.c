/*
 * pprof renderer: the tree as a profile.proto (proto/pprof/profile.proto),
 * packed with protobuf-c and gzipped with zlib.
 *
 * Every node with snapshots ending in it (or a duration of its own) becomes
 * one Sample whose location_id lists the node's path leaf first. Locations
 * are per distinct code signature, and functions per distinct (function,
 * file), so `pprof -top` aggregates a function over all the places it runs.
 */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "profiles/calltree.h"
#include "canopy/dict.h"
#include "pprof/profile.pb-c.h"

typedef Perftools__Profiles__Profile pb_profile;
typedef Perftools__Profiles__Sample pb_sample;
typedef Perftools__Profiles__Location pb_location;
typedef Perftools__Profiles__Line pb_line;
typedef Perftools__Profiles__Function pb_function;
typedef Perftools__Profiles__ValueType pb_value_type;

typedef struct pprof_builder {
    cn_dict *strings; /* text -> index + 1 */
    char **table;
    size_t n_strings, cap_strings;
    cn_dict *functions; /* "name\0file" key -> id */
    pb_function *fn_store;
    pb_function **fns;
    size_t n_fns;
    bool oom;
} pprof_builder;

static int64_t str_index(pprof_builder *b, const char *s, size_t len)
{
    char stack_buf[512];
    char *key = len < sizeof stack_buf ? stack_buf : malloc(len + 1);
    if (!key) {
        b->oom = true;
        return 0;
    }
    memcpy(key, s, len);
    key[len] = '\0';
    int64_t idx = 0;
    void *v = cn_dict_get(b->strings, key);
    if (v) {
        idx = (int64_t)(uintptr_t)v - 1;
    } else if (b->n_strings < b->cap_strings && (b->table[b->n_strings] = strdup(key)) &&
               cn_dict_put(b->strings, key, (void *)(uintptr_t)(b->n_strings + 1)) == 0) {
        idx = (int64_t)b->n_strings++;
    } else {
        b->oom = true;
    }
    if (key != stack_buf)
        free(key);
    return idx;
}

static uint64_t function_id(pprof_builder *b, const char *sig)
{
    const char *file, *func;
    size_t file_len, func_len;
    int64_t line;
    cn_signature_parse(sig, &file, &file_len, &func, &func_len, &line);
    size_t klen = func_len + 1 + file_len;
    char *key = malloc(klen + 1);
    if (!key) {
        b->oom = true;
        return 0;
    }
    /* NUL would end the dict key early; a separator no signature holds keeps (func, file) apart. */
    memcpy(key, func, func_len);
    key[func_len] = '\x1f';
    memcpy(key + func_len + 1, file, file_len);
    key[klen] = '\0';
    void *v = cn_dict_get(b->functions, key);
    uint64_t id = (uint64_t)(uintptr_t)v;
    if (!v) {
        id = b->n_fns + 1;
        pb_function *f = &b->fn_store[b->n_fns];
        perftools__profiles__function__init(f);
        f->id = id;
        f->name = f->system_name = str_index(b, func, func_len);
        f->filename = str_index(b, file, file_len);
        if (cn_dict_put(b->functions, key, (void *)(uintptr_t)id) != 0)
            b->oom = true;
        b->fns[b->n_fns++] = f;
    }
    free(key);
    return id;
}

/* Gzips buf into out. */
static int write_gzip(const uint8_t *buf, size_t len, FILE *out)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    /* 15 + 16: a gzip wrapper, which is what `go tool pprof` and every other reader expect. */
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return -1;
    uint8_t chunk[64 * 1024];
    z.next_in = (Bytef *)buf;
    z.avail_in = (uInt)len;
    int rc, status = 0;
    do {
        z.next_out = chunk;
        z.avail_out = sizeof chunk;
        rc = deflate(&z, Z_FINISH);
        if (rc == Z_STREAM_ERROR) {
            status = -1;
            break;
        }
        size_t have = sizeof chunk - z.avail_out;
        if (have && fwrite(chunk, 1, have, out) != have) {
            status = -1;
            break;
        }
    } while (rc != Z_STREAM_END);
    deflateEnd(&z);
    return status;
}

int cn_calltree_write_pprof(const cn_calltree *t, const cn_profile_meta *meta, FILE *out)
{
    cn_pprof_style style = {.wall = CN_PPROF_WALL_DURATION_MS};
    return cn_calltree_write_pprof_styled(t, meta, &style, out);
}

/* A node's wall value in the style's unit. */
static int64_t wall_value(const cn_pprof_style *style, const cn_calltree_node *node, int64_t self_dur_ms)
{
    switch (style->wall) {
    case CN_PPROF_WALL_DURATION_NS:
        return self_dur_ms * 1000000;
    case CN_PPROF_WALL_SAMPLES_NS:
        return node->self * style->period_ns;
    default:
        return self_dur_ms;
    }
}

int cn_calltree_write_pprof_styled(const cn_calltree *t, const cn_profile_meta *meta, const cn_pprof_style *style,
                                   FILE *out)
{
    /* Durations count only when they are the wall value; a sampled wall is carried by snapshots alone. */
    bool by_duration = style->wall != CN_PPROF_WALL_SAMPLES_NS;
    bool nanos = style->wall != CN_PPROF_WALL_DURATION_MS;
    const cn_calltree_node *nodes = cn_calltree_nodes(t);
    size_t n = cn_calltree_node_count(t);
    /* Upper bounds: a location per signature used (at most one per node), a function per location,
     * two strings per function, plus a few fixed ones. */
    size_t n_sigs = cn_calltree_sig_count(t);
    size_t n_sig_max = (n < n_sigs ? n : n_sigs) + 1;
    pprof_builder b = {0};
    pb_profile prof;
    perftools__profiles__profile__init(&prof);
    pb_value_type types[2], period_type;
    pb_value_type *type_ptrs[2] = {&types[0], &types[1]};
    uint64_t *loc_of_sig = calloc(n_sigs + 1, sizeof *loc_of_sig); /* sig index -> location id */
    pb_location *loc_store = calloc(n_sig_max, sizeof *loc_store);
    pb_location **locs = calloc(n_sig_max, sizeof *locs);
    pb_line *line_store = calloc(n_sig_max, sizeof *line_store);
    pb_line **line_ptrs = calloc(n_sig_max, sizeof *line_ptrs);
    b.fn_store = calloc(n_sig_max, sizeof *b.fn_store);
    b.fns = calloc(n_sig_max, sizeof *b.fns);
    b.cap_strings = n_sig_max * 3 + 16;
    b.table = calloc(b.cap_strings, sizeof *b.table);
    b.strings = cn_dict_new(256);
    b.functions = cn_dict_new(256);
    pb_sample *sample_store = calloc(n ? n : 1, sizeof *sample_store);
    pb_sample **samples = calloc(n ? n : 1, sizeof *samples);
    uint64_t *loc_ids = NULL; /* every sample's path, sized below */
    int64_t *values = calloc((n ? n : 1) * 2, sizeof *values);
    int64_t *child_duration = calloc(n ? n : 1, sizeof *child_duration);
    uint8_t *packed = NULL;
    int status = -1;
    size_t loc_cap = 0, loc_used = 0, n_locs = 0, n_samples = 0;
    if (!loc_of_sig || !loc_store || !locs || !line_store || !line_ptrs || !b.fn_store || !b.fns || !b.table ||
        !b.strings || !b.functions || !sample_store || !samples || !values || !child_duration)
        goto out;
    str_index(&b, "", 0);

    /* Self durations: a node's duration minus its children's (SkyWalking's "excluding children"). */
    for (size_t id = 0; id < n; id++)
        if (nodes[id].parent != CN_CALLTREE_NONE)
            child_duration[nodes[id].parent] += nodes[id].duration_ms;

    for (size_t id = 0; id < n; id++)
        if (nodes[id].self > 0 || (by_duration && nodes[id].duration_ms > child_duration[id]))
            loc_cap += nodes[id].depth + 1;
    if (!(loc_ids = malloc((loc_cap ? loc_cap : 1) * sizeof *loc_ids)))
        goto out;

    for (size_t id = 0; id < n; id++) {
        int64_t self_dur = nodes[id].duration_ms - child_duration[id];
        if (self_dur < 0)
            self_dur = 0;
        if (nodes[id].self <= 0 && (!by_duration || self_dur <= 0))
            continue;
        if (loc_used + nodes[id].depth + 1 > loc_cap)
            goto out; /* cannot happen: sized by the first pass */
        pb_sample *s = &sample_store[n_samples];
        perftools__profiles__sample__init(s);
        s->location_id = loc_ids + loc_used;
        s->n_location_id = 0;
        for (uint32_t at = (uint32_t)id; at != CN_CALLTREE_NONE; at = nodes[at].parent) {
            uint32_t sig = nodes[at].sig;
            if (sig >= n_sigs)
                goto out;
            if (!loc_of_sig[sig]) {
                if (n_locs >= n_sig_max)
                    goto out;
                const char *text = cn_calltree_sig(t, sig);
                const char *file, *func;
                size_t file_len, func_len;
                int64_t line;
                cn_signature_parse(text, &file, &file_len, &func, &func_len, &line);
                pb_location *l = &loc_store[n_locs];
                perftools__profiles__location__init(l);
                pb_line *ln = &line_store[n_locs];
                perftools__profiles__line__init(ln);
                ln->function_id = function_id(&b, text);
                ln->line = line;
                line_ptrs[n_locs] = ln;
                l->id = n_locs + 1;
                l->n_line = 1;
                l->line = &line_ptrs[n_locs];
                locs[n_locs] = l;
                loc_of_sig[sig] = l->id;
                n_locs++;
            }
            s->location_id[s->n_location_id++] = loc_of_sig[sig];
        }
        loc_used += s->n_location_id;
        s->value = values + 2 * n_samples;
        s->value[0] = nodes[id].self;
        s->value[1] = wall_value(style, &nodes[id], self_dur);
        s->n_value = 2;
        samples[n_samples++] = s;
    }
    if (b.oom)
        goto out;

    perftools__profiles__value_type__init(&types[0]);
    perftools__profiles__value_type__init(&types[1]);
    perftools__profiles__value_type__init(&period_type);
    types[0].type = str_index(&b, "samples", 7);
    types[0].unit = str_index(&b, "count", 5);
    types[1].type = str_index(&b, "wall", 4);
    types[1].unit = nanos ? str_index(&b, "nanoseconds", 11) : str_index(&b, "milliseconds", 12);
    period_type.type = types[1].type;
    period_type.unit = types[1].unit;
    prof.n_sample_type = 2;
    prof.sample_type = type_ptrs;
    prof.default_sample_type = types[0].type;
    prof.period_type = &period_type;
    prof.period = meta && meta->period_ms > 0 ? meta->period_ms * (nanos ? 1000000 : 1) : 0;
    if (meta && meta->start_ms > 0) {
        prof.time_nanos = meta->start_ms * 1000000;
        if (meta->end_ms >= meta->start_ms)
            prof.duration_nanos = (meta->end_ms - meta->start_ms) * 1000000;
    }
    int64_t comments[1];
    if (meta && meta->task_id) {
        char text[512];
        int len = snprintf(text, sizeof text, "canopy task %s%s%s%s%s", meta->task_id,
                           meta->service ? " service " : "", meta->service ? meta->service : "",
                           meta->endpoint ? " endpoint " : "", meta->endpoint ? meta->endpoint : "");
        comments[0] = str_index(&b, text, len < (int)sizeof text ? (size_t)len : sizeof text - 1);
        prof.comment = comments;
        prof.n_comment = 1;
    }
    if (b.oom)
        goto out;
    prof.n_sample = n_samples;
    prof.sample = samples;
    prof.n_location = n_locs;
    prof.location = locs;
    prof.n_function = b.n_fns;
    prof.function = b.fns;
    prof.n_string_table = b.n_strings;
    prof.string_table = b.table;

    size_t len = perftools__profiles__profile__get_packed_size(&prof);
    if (!(packed = malloc(len ? len : 1)))
        goto out;
    perftools__profiles__profile__pack(&prof, packed);
    status = write_gzip(packed, len, out);
    if (status == 0 && ferror(out))
        status = -1;
out:
    free(packed);
    for (size_t i = 0; b.table && i < b.n_strings; i++)
        free(b.table[i]);
    free(b.table);
    cn_dict_free(b.strings, NULL);
    cn_dict_free(b.functions, NULL);
    free(b.fn_store);
    free(b.fns);
    free(loc_of_sig);
    free(loc_store);
    free(locs);
    free(line_store);
    free(line_ptrs);
    free(sample_store);
    free(samples);
    free(loc_ids);
    free(values);
    free(child_duration);
    return status;
}
