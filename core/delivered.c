#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "canopy/common.h"
#include "canopy/dict.h"
#include "canopy/log.h"
#include "canopy/seqset.h"
#include "delivered.h"
#include "spool.h"

/* Marks untouched this long are forgotten (log and memory) when the log is
 * compacted: a replay only ever covers the last few minutes of data. */
#define DELIVERED_KEEP_MS (3600 * 1000)
/* Compaction runs when the log doubles past its size after the last one (at
 * least 8 MiB), and every 10 minutes so old marks leave memory. */
#define DELIVERED_COMPACT_BYTES (8u << 20)
#define DELIVERED_COMPACT_EVERY_MS (600 * 1000)
/* Sequences remembered above a segment's watermark; a gap that never fills
 * would otherwise grow the set for ever. */
#define DELIVERED_MAX_ABOVE 65536

typedef struct mark {
    cn_delivery_pos until; /* positions past which the mark protects nothing */
    cn_seqset delivered;
    int64_t updated_ms;
} mark;

struct cn_delivered {
    char *path;
    char *name;
    int fd;
    bool fsync_each;
    cn_dict *marks; /* "task\x1fsegment" -> mark */
    uint64_t log_bytes;
    char *buf;
    size_t buf_len, buf_cap;
    cn_ratelimit log;
    uint64_t compact_at;      /* log size that triggers the next compaction */
    int64_t last_compact_ms;
    cn_delivery_pos until;    /* `until` given to marks added now */
};

/* ---- delivered sets ---------------------------------------------------------- */

static void mark_free(void *p)
{
    mark *m = p;
    cn_seqset_clear(&m->delivered);
    free(m);
}

static mark *mark_get(cn_delivered *h, const char *key, bool create)
{
    mark *m = cn_dict_get(h->marks, key);
    if (m || !create)
        return m;
    if (!(m = calloc(1, sizeof *m)) || cn_dict_put(h->marks, key, m) != 0) {
        free(m);
        return NULL;
    }
    return m;
}

static void add_range(cn_delivered *h, const char *key, int32_t first, int32_t last, int64_t now)
{
    mark *m = mark_get(h, key, true);
    if (!m)
        return;
    m->updated_ms = now;
    if (h->until.spool > m->until.spool)
        m->until.spool = h->until.spool;
    if (h->until.intake > m->until.intake)
        m->until.intake = h->until.intake;
    for (int32_t q = first; q <= last && q >= first; q++)
        if (cn_seqset_add(&m->delivered, q, DELIVERED_MAX_ABOVE) != 0) {
            cn_log_limited(&h->log, CN_LOG_WARN, h->name,
                           "delivery log: segment %s has too many sequences out of order; a replay after a crash "
                           "may repeat some of them",
                           key);
            return;
        }
}

/* ---- the log: records (u32 length, u32 crc, key bytes, int32 first, int32 last) ---- */

static int buf_add(cn_delivered *h, const void *p, size_t n)
{
    if (h->buf_len + n > h->buf_cap) {
        size_t cap = h->buf_cap ? h->buf_cap * 2 : 4096;
        while (cap < h->buf_len + n)
            cap *= 2;
        char *grown = realloc(h->buf, cap);
        if (!grown)
            return -1;
        h->buf = grown;
        h->buf_cap = cap;
    }
    memcpy(h->buf + h->buf_len, p, n);
    h->buf_len += n;
    return 0;
}

static int log_range(cn_delivered *h, const char *key, int32_t first, int32_t last)
{
    size_t klen = strlen(key);
    char payload[1024];
    if (klen + 8 > sizeof payload)
        return 0; /* ids that long were refused by the receiver's limits */
    memcpy(payload, key, klen);
    memcpy(payload + klen, &first, 4);
    memcpy(payload + klen + 4, &last, 4);
    uint32_t len = (uint32_t)(klen + 8), crc = cn_crc32(payload, len);
    return buf_add(h, &len, 4) | buf_add(h, &crc, 4) | buf_add(h, payload, len);
}

static void load(cn_delivered *h)
{
    struct stat st;
    if (fstat(h->fd, &st) != 0)
        return;
    uint64_t off = 0, size = (uint64_t)st.st_size;
    char payload[1024 + 8];
    int64_t now = cn_now_ms();
    while (off + 8 <= size) {
        uint32_t hdr[2];
        if (pread(h->fd, hdr, 8, (off_t)off) != 8 || hdr[0] < 9 || hdr[0] > sizeof payload || off + 8 + hdr[0] > size)
            break;
        if (pread(h->fd, payload, hdr[0], (off_t)(off + 8)) != (ssize_t)hdr[0] || cn_crc32(payload, hdr[0]) != hdr[1])
            break;
        int32_t first, last;
        memcpy(&first, payload + hdr[0] - 8, 4);
        memcpy(&last, payload + hdr[0] - 4, 4);
        payload[hdr[0] - 8] = '\0';
        add_range(h, payload, first, last, now);
        off += 8 + hdr[0];
    }
    if (off < size) {
        cn_warn(h->name, "%s: torn tail of %llu bytes cut (a crash interrupted a write)", h->path,
                (unsigned long long)(size - off));
        if (ftruncate(h->fd, (off_t)off) != 0)
            cn_warn(h->name, "%s: cannot cut the torn tail: %s", h->path, strerror(errno));
    }
    h->log_bytes = off;
}

cn_delivered *cn_delivered_open(const char *path, bool fsync_each, const char *name, cn_delivery_pos replay_end)
{
    cn_delivered *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->path = strdup(path);
    h->name = strdup(name);
    h->fsync_each = fsync_each;
    h->marks = cn_dict_new(1024);
    h->log.interval_ms = 10000;
    h->compact_at = DELIVERED_COMPACT_BYTES;
    h->last_compact_ms = cn_now_ms();
    h->until = replay_end;
    h->fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (!h->path || !h->name || !h->marks || h->fd < 0) {
        cn_error(name, "cannot open %s: %s", path, strerror(errno));
        cn_delivered_close(h);
        return NULL;
    }
    load(h);
    return h;
}

void cn_delivered_close(cn_delivered *h)
{
    if (!h)
        return;
    if (h->fd >= 0)
        close(h->fd);
    cn_dict_free(h->marks, mark_free);
    free(h->buf);
    free(h->path);
    free(h->name);
    free(h);
}

static void make_key(const cn_snap_ref *r, char *key, size_t len)
{
    snprintf(key, len, "%s\x1f%s", cn_ref_task(r), cn_ref_segment(r));
}

size_t cn_delivered_filter(cn_delivered *h, cn_chunk *chunk)
{
    size_t kept = 0, dropped = 0;
    char key[1024];
    const mark *m = NULL;
    const char *task = NULL, *segment = NULL;
    /* Every ref is checked, not only replayed ones: an agent's resend of a batch
     * that was delivered just before a crash (its ack lost) comes back as new
     * data. Refs come grouped by segment, so a lookup serves a whole run. */
    for (size_t i = 0; i < chunk->n; i++) {
        const cn_snap_ref *r = &chunk->refs[i];
        const char *t = cn_ref_task(r), *sg = cn_ref_segment(r);
        if (!segment || (sg != segment && strcmp(sg, segment) != 0) || (t != task && strcmp(t, task) != 0)) {
            make_key(r, key, sizeof key);
            m = mark_get(h, key, false);
            task = t;
            segment = sg;
        }
        if (m && cn_seqset_has(&m->delivered, r->snap->sequence)) {
            dropped++;
            continue;
        }
        chunk->refs[kept++] = *r;
    }
    chunk->n = kept;
    return dropped;
}

/* Removes (and frees) the marks `gone` picks. Keys are collected first: the
 * dict must not change while it is iterated. */
static void forget_marks(cn_delivered *h, bool (*gone)(const mark *, const void *), const void *arg)
{
    size_t pos = 0, n = 0, cap = 0;
    const char *key;
    void *value;
    char **keys = NULL;
    while (cn_dict_next(h->marks, &pos, &key, &value)) {
        if (!gone(value, arg))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 256;
            char **grown = realloc(keys, cap * sizeof *grown);
            if (!grown)
                break;
            keys = grown;
        }
        if (!(keys[n] = strdup(key)))
            break;
        n++;
    }
    for (size_t i = 0; i < n; i++) {
        mark_free(cn_dict_remove(h->marks, keys[i]));
        free(keys[i]);
    }
    free(keys);
}

/* Untouched for DELIVERED_KEEP_MS. */
static bool mark_stale(const mark *m, const void *now) { return *(const int64_t *)now - m->updated_ms >= DELIVERED_KEEP_MS; }

/* Every record holding it is below the saved cursor: never replayed. */
static bool mark_passed(const mark *m, const void *cursor)
{
    const cn_delivery_pos *c = cursor;
    return m->until.spool <= c->spool && m->until.intake <= c->intake;
}

/* Rewrites the log from memory, forgetting marks untouched for an hour. */
static void compact(cn_delivered *h, int64_t now)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", h->path);
    h->last_compact_ms = now;
    h->buf_len = 0;
    /* Forget stale marks first, in memory too. */
    forget_marks(h, mark_stale, &now);
    size_t pos = 0;
    const char *key;
    void *value;
    while (cn_dict_next(h->marks, &pos, &key, &value)) {
        const mark *m = value;
        const cn_seqset *d = &m->delivered;
        int rc = d->watermark > 0 ? log_range(h, key, 0, d->watermark - 1) : 0;
        for (uint32_t i = 0; i < d->n_above && rc == 0; i++)
            rc = log_range(h, key, d->above[i], d->above[i]);
        if (rc != 0)
            return;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return;
    if (write(fd, h->buf, h->buf_len) == (ssize_t)h->buf_len && fdatasync(fd) == 0 && rename(tmp, h->path) == 0) {
        close(h->fd);
        h->fd = fd;
        h->log_bytes = h->buf_len;
        lseek(fd, 0, SEEK_END);
    } else {
        close(fd);
        unlink(tmp);
    }
    h->buf_len = 0;
    /* Live marks alone may exceed the base threshold: wait for the log to double. */
    h->compact_at = h->log_bytes * 2 > DELIVERED_COMPACT_BYTES ? h->log_bytes * 2 : DELIVERED_COMPACT_BYTES;
}

void cn_delivered_commit(cn_delivered *h, const cn_chunk *chunk, cn_delivery_pos until)
{
    int64_t now = cn_now_ms();
    h->until = until;
    char key[1024];
    h->buf_len = 0;
    /* merge_by_task hands refs on grouped by segment and ascending: log runs as ranges. */
    size_t i = 0;
    while (i < chunk->n) {
        const cn_snap_ref *r = &chunk->refs[i];
        int32_t first = r->snap->sequence, last = first;
        size_t j = i + 1;
        while (j < chunk->n && chunk->refs[j].snap->sequence == last + 1 &&
               strcmp(cn_ref_segment(&chunk->refs[j]), cn_ref_segment(r)) == 0 &&
               strcmp(cn_ref_task(&chunk->refs[j]), cn_ref_task(r)) == 0) {
            last++;
            j++;
        }
        make_key(r, key, sizeof key);
        add_range(h, key, first, last, now);
        log_range(h, key, first, last);
        i = j;
    }
    if (h->buf_len && write(h->fd, h->buf, h->buf_len) == (ssize_t)h->buf_len) {
        h->log_bytes += h->buf_len;
        if (h->fsync_each)
            fdatasync(h->fd);
    }
    h->buf_len = 0;
    if (h->log_bytes > h->compact_at || now - h->last_compact_ms > DELIVERED_COMPACT_EVERY_MS)
        compact(h, now);
}

void cn_delivered_seed(cn_delivered *h, const char *task, const char *segment, int32_t seq)
{
    char key[1024];
    snprintf(key, sizeof key, "%s\x1f%s", task, segment);
    add_range(h, key, seq, seq, cn_now_ms());
}

void cn_delivered_prune(cn_delivered *h, cn_delivery_pos saved) { forget_marks(h, mark_passed, &saved); }
