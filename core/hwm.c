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
#include "hwm.h"
#include "spool.h"

/* Marks untouched this long are dropped when the log is compacted. */
#define HWM_KEEP_MS (3600 * 1000)
#define HWM_COMPACT_BYTES (8u << 20)

typedef struct mark {
    int32_t seq;
    int64_t updated_ms;
} mark;

struct cn_hwm {
    char *path;
    char *name;
    int fd;
    bool fsync_each;
    cn_dict *marks; /* "task\x1fsegment" -> mark */
    uint64_t log_bytes;
    char *buf;
    size_t buf_len, buf_cap;
};

/* Log record: u32 payload length, u32 crc, payload = key bytes + int32 seq. */

static int buf_add(cn_hwm *h, const void *p, size_t n)
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

static int add_record(cn_hwm *h, const char *key, int32_t seq)
{
    size_t klen = strlen(key);
    uint32_t len = (uint32_t)(klen + 4);
    char payload[1024];
    if (klen + 4 > sizeof payload)
        return 0; /* absurd ids were refused by the receiver's limits */
    memcpy(payload, key, klen);
    memcpy(payload + klen, &seq, 4);
    uint32_t crc = cn_crc32(payload, len);
    return buf_add(h, &len, 4) | buf_add(h, &crc, 4) | buf_add(h, payload, len);
}

static int set_mark(cn_hwm *h, const char *key, int32_t seq, int64_t now)
{
    mark *m = cn_dict_get(h->marks, key);
    if (!m) {
        if (!(m = malloc(sizeof *m)) || cn_dict_put(h->marks, key, m) != 0) {
            free(m);
            return -1;
        }
        m->seq = -1;
    }
    if (seq > m->seq)
        m->seq = seq;
    m->updated_ms = now;
    return 0;
}

static void load(cn_hwm *h)
{
    struct stat st;
    if (fstat(h->fd, &st) != 0)
        return;
    uint64_t off = 0, size = (uint64_t)st.st_size;
    char payload[1024 + 8];
    int64_t now = cn_now_ms();
    while (off + 8 <= size) {
        uint32_t hdr[2];
        if (pread(h->fd, hdr, 8, (off_t)off) != 8 || hdr[0] < 5 || hdr[0] > sizeof payload || off + 8 + hdr[0] > size)
            break;
        if (pread(h->fd, payload, hdr[0], (off_t)(off + 8)) != (ssize_t)hdr[0] || cn_crc32(payload, hdr[0]) != hdr[1])
            break;
        int32_t seq;
        memcpy(&seq, payload + hdr[0] - 4, 4);
        payload[hdr[0] - 4] = '\0';
        set_mark(h, payload, seq, now);
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

cn_hwm *cn_hwm_open(const char *path, bool fsync_each, const char *name)
{
    cn_hwm *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->path = strdup(path);
    h->name = strdup(name);
    h->fsync_each = fsync_each;
    h->marks = cn_dict_new(1024);
    h->fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (!h->path || !h->name || !h->marks || h->fd < 0) {
        cn_error(name, "cannot open %s: %s", path, strerror(errno));
        cn_hwm_close(h);
        return NULL;
    }
    load(h);
    return h;
}

void cn_hwm_close(cn_hwm *h)
{
    if (!h)
        return;
    if (h->fd >= 0)
        close(h->fd);
    cn_dict_free(h->marks, free);
    free(h->buf);
    free(h->path);
    free(h->name);
    free(h);
}

static void make_key(const cn_snap_ref *r, char *key, size_t len)
{
    snprintf(key, len, "%s\x1f%s", cn_ref_task(r), cn_ref_segment(r));
}

size_t cn_hwm_filter(cn_hwm *h, cn_chunk *chunk)
{
    size_t kept = 0, dropped = 0;
    char key[1024];
    for (size_t i = 0; i < chunk->n; i++) {
        const cn_snap_ref *r = &chunk->refs[i];
        if (r->batch->replayed) {
            make_key(r, key, sizeof key);
            const mark *m = cn_dict_get(h->marks, key);
            if (m && r->snap->sequence <= m->seq) {
                dropped++;
                continue;
            }
        }
        chunk->refs[kept++] = *r;
    }
    chunk->n = kept;
    return dropped;
}

/* Rewrites the log from memory, forgetting marks untouched for an hour. */
static void compact(cn_hwm *h, int64_t now)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", h->path);
    h->buf_len = 0;
    size_t pos = 0;
    const char *key;
    void *value;
    while (cn_dict_next(h->marks, &pos, &key, &value)) {
        const mark *m = value;
        if (now - m->updated_ms < HWM_KEEP_MS && add_record(h, key, m->seq) != 0)
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
}

void cn_hwm_commit(cn_hwm *h, const cn_chunk *chunk)
{
    int64_t now = cn_now_ms();
    char key[1024];
    h->buf_len = 0;
    /* One record per segment run: merge_by_task hands refs on grouped by segment, ascending. */
    for (size_t i = 0; i < chunk->n; i++) {
        const cn_snap_ref *r = &chunk->refs[i];
        if (i + 1 < chunk->n) {
            const cn_snap_ref *next = &chunk->refs[i + 1];
            if (strcmp(cn_ref_segment(next), cn_ref_segment(r)) == 0 && strcmp(cn_ref_task(next), cn_ref_task(r)) == 0)
                continue;
        }
        make_key(r, key, sizeof key);
        if (set_mark(h, key, r->snap->sequence, now) == 0)
            add_record(h, key, ((mark *)cn_dict_get(h->marks, key))->seq);
    }
    if (h->buf_len && write(h->fd, h->buf, h->buf_len) == (ssize_t)h->buf_len) {
        h->log_bytes += h->buf_len;
        if (h->fsync_each)
            fdatasync(h->fd);
    }
    h->buf_len = 0;
    if (h->log_bytes > HWM_COMPACT_BYTES)
        compact(h, now);
}

void cn_hwm_seed(cn_hwm *h, const char *task, const char *segment, int32_t seq)
{
    char key[1024];
    snprintf(key, sizeof key, "%s\x1f%s", task, segment);
    const mark *m = cn_dict_get(h->marks, key);
    if (m && m->seq >= seq)
        return;
    if (set_mark(h, key, seq, cn_now_ms()) == 0 && add_record(h, key, seq) == 0 &&
        write(h->fd, h->buf, h->buf_len) == (ssize_t)h->buf_len)
        h->log_bytes += h->buf_len;
    h->buf_len = 0;
}
