/* The simulated agent's snapshots (see workload.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "workload.h"

#define LG_POOL 256        /* distinct signatures an app has in hot code */
#define LG_SIG_MAX 128

static const char *files[] = {
    "/srv/app/views.py",
    "/srv/app/models.py",
    "/srv/app/services/cart.py",
    "/srv/app/services/payment.py",
    "/srv/app/services/inventory.py",
    "/srv/app/db/session.py",
    "/srv/app/templates/render.py",
    "/usr/lib/python3/dist-packages/sqlalchemy/orm/query.py",
    "/usr/lib/python3/dist-packages/sqlalchemy/engine/base.py",
    "/usr/lib/python3/dist-packages/jinja2/environment.py",
    "/usr/lib/python3/dist-packages/requests/sessions.py",
    "/usr/lib/python3/dist-packages/urllib3/connectionpool.py",
    "/usr/lib/python3/dist-packages/gevent/_socketcommon.py",
    "/usr/lib/python3/json/encoder.py",
};
static const char *funcs[] = {
    "get", "post", "all", "first", "execute", "_execute_context", "render", "dumps", "encode",
    "iterencode", "request", "send", "urlopen", "_make_request", "recv", "sendall", "query",
    "filter_by", "total", "apply_discount", "reserve", "charge", "authorize", "serialize",
    "validate", "load", "fetch", "commit", "flush", "__iter__", "__call__", "_wait", "wait",
};
/* The greenlet's outermost frames: the same for every request. */
static const char *roots[] = {
    "/usr/lib/python3/dist-packages/gevent/baseserver.py._handle: 34",
    "/usr/lib/python3/dist-packages/gunicorn/workers/ggevent.py.handle: 115",
    "/usr/lib/python3/dist-packages/gunicorn/workers/base_async.py.handle_request: 108",
    "/srv/app/wsgi.py.__call__: 21",
};
static const char *endpoints[] = {"checkout", "cart", "product", "search", "login", "orders", "profile", "health"};

#define LG_LEN(a) ((int)(sizeof(a) / sizeof((a)[0])))

typedef struct lg_segment {
    char id[160];
    int task;
    int endpoint;
    int next_seq;
    uint64_t salt;
} lg_segment;

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static void segment_open(lg_segment *s, const char *instance, int k, const lg_workload_config *c)
{
    snprintf(s->id, sizeof(s->id), "%s-seg-%d", instance, k);
    s->task = k % c->tasks;
    s->endpoint = (int)(mix(c->seed ^ (uint64_t)k) % (uint64_t)LG_LEN(endpoints));
    s->next_seq = 0;
    s->salt = mix(c->seed * 31 + (uint64_t)k);
}

/* Fills frames root first: fixed roots, the endpoint's view, then a call
 * path fixed per segment whose last frames move as the request runs. */
static void make_stack(char (*pool)[LG_SIG_MAX], char (*views)[LG_SIG_MAX], const lg_segment *s,
                       int depth, cn_str *out)
{
    for (int i = 0; i < depth; i++) {
        const char *sig;
        if (i < LG_LEN(roots)) {
            sig = roots[i];
        } else if (i == LG_LEN(roots)) {
            sig = views[s->endpoint];
        } else {
            uint64_t h = s->salt ^ (uint64_t)i * 0x100000001b3ULL;
            if (i >= depth - 3) /* the leaf moves every couple of samples */
                h ^= mix((uint64_t)(s->next_seq / 2));
            sig = pool[mix(h) % LG_POOL];
        }
        out[i] = (cn_str){sig, strlen(sig), NULL};
    }
}

void lg_batches_free(lg_batch *b, int n)
{
    if (!b)
        return;
    for (int i = 0; i < n; i++)
        free(b[i].bytes);
    free(b);
}

int lg_workload_build(const lg_workload_config *c, const cn_identity *id, int64_t start_ms,
                      lg_batch **out)
{
    char(*pool)[LG_SIG_MAX] = malloc(sizeof(char[LG_POOL][LG_SIG_MAX]));
    char(*views)[LG_SIG_MAX] = malloc(sizeof(char[LG_LEN(endpoints)][LG_SIG_MAX]));
    lg_batch *batches = NULL;
    lg_segment *segs = NULL;
    cn_str *frames = NULL;
    cn_builder *b = NULL;
    char task[32];
    int rv = -1, next_seg = 0;
    int64_t t = start_ms;
    if (!pool || !views)
        goto out;
    for (int i = 0; i < LG_POOL; i++) {
        uint64_t r = mix(c->seed + (uint64_t)i);
        snprintf(pool[i], LG_SIG_MAX, "%s.%s: %d", files[r % LG_LEN(files)],
                 funcs[(r >> 16) % LG_LEN(funcs)], (int)((r >> 32) % 700) + 1);
    }
    for (int i = 0; i < LG_LEN(endpoints); i++)
        snprintf(views[i], LG_SIG_MAX, "/srv/app/views.py.%s: %d", endpoints[i], 40 + 17 * i);

    int conc = c->concurrency > 0 ? c->concurrency : 1;
    batches = calloc((size_t)c->batches, sizeof(*batches));
    segs = calloc((size_t)conc, sizeof(*segs));
    frames = calloc((size_t)c->depth + 1, sizeof(*frames));
    b = cn_builder_new(NULL);
    if (!batches || !segs || !frames || !b)
        goto out;
    for (int i = 0; i < conc; i++)
        segment_open(&segs[i], id->instance, next_seg++, c);

    for (int bi = 0; bi < c->batches; bi++) {
        cn_builder_reset(b);
        for (int k = 0; k < c->batch_size; k++) {
            lg_segment *s = &segs[(bi * c->batch_size + k) % conc];
            make_stack(pool, views, s, c->depth, frames);
            snprintf(task, sizeof(task), "task-%d", s->task);
            cn_snapshot_in in = {.task = {task, strlen(task), NULL},
                                 .segment = {s->id, strlen(s->id), NULL},
                                 .time_ms = t++, .sequence = s->next_seq++,
                                 .frames = frames, .n_frames = (size_t)c->depth};
            if (cn_builder_add(b, &in) != 0)
                goto out;
            if (s->next_seq >= c->segment_len) /* request done: the next one starts */
                segment_open(s, id->instance, next_seg++, c);
        }
        lg_batch *lb = &batches[bi];
        lb->batch_seq = (uint64_t)bi;
        lb->snapshots = (size_t)c->batch_size;
        if (cn_builder_encode(b, id, lb->batch_seq, &lb->bytes, &lb->len) != 0)
            goto out;
    }
    rv = 0;
out:
    cn_builder_free(b);
    free(frames);
    free(segs);
    free(pool);
    free(views);
    if (rv == 0)
        *out = batches;
    else
        lg_batches_free(batches, c->batches);
    return rv;
}
