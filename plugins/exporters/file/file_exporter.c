/*
 * Exporter `file`, format jsonl: appends each snapshot as one JSON line to
 * <directory>/<taskId>.jsonl with the keys taskId, traceSegmentId, time,
 * sequence, stack.codeSignatures (root first), service and serviceInstance.
 *
 * Lines are formatted into a buffer and written with write(2), so a failed
 * write (disk full) leaves an exact count of bytes that reached the file. A
 * retried chunk is formatted again, deterministically, and the bytes already
 * written are skipped: a retry never duplicates or tears a line.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <dirent.h>
#include <jansson.h>
#include <unistd.h>

#include "canopy/dict.h"
#include "canopy/plugin.h"
#include "fsutil.h"
#include "jsonl/jsonl.h"

enum { FSYNC_NEVER, FSYNC_INTERVAL, FSYNC_ALWAYS };
static const char *const fsync_choices[] = {"never", "interval", "always", NULL};
static const char *const format_choices[] = {"jsonl", NULL};

/* Bytes gathered for one file before they are written. */
#define WRITE_CHUNK (1u << 20)

typedef struct open_file {
    int fd;
    int64_t last_used_ms;
    bool unsynced;
} open_file;

typedef struct file_ctx {
    /* options */
    char *directory;
    int format;
    int fsync_policy;
    int64_t fsync_interval;
    int64_t max_open_files;
    int dir_mode;
    /* runtime */
    cn_component *self;
    cn_dict *files; /* file name -> open_file */
    json_cache *json;
    cn_jsonl_buf out; /* lines waiting for write(2) */
    uint64_t retry_chunk; /* id of a chunk partly written, or 0 */
    uint64_t committed;   /* its bytes already in the files */
    int64_t next_sync_ms;
    cn_metric *lines, *bytes, *write_errors;
    cn_ratelimit error_log;
} file_ctx;

static const cn_option file_options[] = {
    {CN_OPT_STR, "directory", NULL, offsetof(file_ctx, directory),
     "Where <taskId>.jsonl files are written; created if missing.", .required = true},
    {CN_OPT_ENUM, "format", "jsonl", offsetof(file_ctx, format), "File format: jsonl (one snapshot per line).",
     .choices = format_choices},
    {CN_OPT_ENUM, "fsync", "interval", offsetof(file_ctx, fsync_policy),
     "never: leave it to the OS; interval: fsync every fsync_interval; always: fsync after every chunk.",
     .choices = fsync_choices},
    {CN_OPT_DURATION, "fsync_interval", "1s", offsetof(file_ctx, fsync_interval),
     "How often written files are fsynced with fsync: interval.", .min = 10, .max = 3600 * 1000},
    {CN_OPT_INT, "max_open_files", "64", offsetof(file_ctx, max_open_files),
     "Files kept open at once; the least recently used is closed first.", .min = 1, .max = 65536},
    {CN_OPT_MODE, "directory_mode", "0755", offsetof(file_ctx, dir_mode), "Mode of directories created."},
    CN_OPT_END};

static int file_check(void *ctx, cn_component *self, cn_diag *d)
{
    file_ctx *f = ctx;
    if (f->directory && !f->directory[0]) {
        cn_diag_error(d, cn_options_node(cn_component_node(self), "directory"), "directory must not be empty");
        return -1;
    }
    return 0;
}

static void flush_all(file_ctx *f, bool sync)
{
    size_t pos = 0;
    void *value;
    while (cn_dict_next(f->files, &pos, NULL, &value)) {
        open_file *of = value;
        if (sync && of->unsynced) {
            fsync(of->fd);
            of->unsynced = false;
        }
    }
}

static void for_each_jsonl(file_ctx *f, void (*fn)(file_ctx *, const char *, void *), void *arg);
static void cut_one(file_ctx *f, const char *path, void *arg);

static int file_start(void *ctx, cn_component *self)
{
    file_ctx *f = ctx;
    f->self = self;
    if (cn_mkdirs(f->directory, f->dir_mode) != 0) {
        cn_error(cn_component_id(self), "cannot create directory %s: %s", f->directory, strerror(errno));
        return -1;
    }
    if (!(f->files = cn_dict_new(16)) || !(f->json = json_cache_new()))
        return -1;
    const char *l = cn_component_labels(self);
    f->lines = cn_counter("canopy_file_lines_total", "Snapshot lines written.", l);
    f->bytes = cn_counter("canopy_file_bytes_total", "Bytes written.", l);
    f->write_errors = cn_counter("canopy_file_write_errors_total", "Failed writes (the chunk is retried).", l);
    f->error_log.interval_ms = 10000;
    f->next_sync_ms = cn_mono_ms() + f->fsync_interval;
    for_each_jsonl(f, cut_one, NULL);
    cn_info(cn_component_id(self), "writing <taskId>.jsonl files to %s", f->directory);
    return 0;
}

/* A task id becomes a file name: anything outside [A-Za-z0-9._-] is replaced, so
 * an id can never point outside the directory. */
static void file_name_for(const char *task, char *out, size_t len)
{
    size_t n = 0;
    for (const char *p = task; *p && n + 7 < len; p++) {
        char ch = *p;
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
                  ch == '_' || (ch == '.' && n > 0);
        out[n++] = ok ? ch : '_';
    }
    if (n == 0)
        out[n++] = '_';
    memcpy(out + n, ".jsonl", 7);
}

static void close_file(file_ctx *f, const char *name)
{
    open_file *of = cn_dict_remove(f->files, name);
    if (!of)
        return;
    if (f->fsync_policy != FSYNC_NEVER && of->unsynced)
        fsync(of->fd);
    close(of->fd);
    free(of);
}

static void close_least_recent(file_ctx *f)
{
    size_t pos = 0;
    const char *key, *oldest = NULL;
    void *value;
    int64_t oldest_ms = INT64_MAX;
    while (cn_dict_next(f->files, &pos, &key, &value)) {
        open_file *of = value;
        if (of->last_used_ms < oldest_ms) {
            oldest_ms = of->last_used_ms;
            oldest = key;
        }
    }
    if (oldest) {
        char copy[512];
        snprintf(copy, sizeof copy, "%s", oldest);
        close_file(f, copy);
    }
}

static open_file *file_for_task(file_ctx *f, const char *task, int64_t now)
{
    char name[320];
    file_name_for(task, name, sizeof name);
    open_file *of = cn_dict_get(f->files, name);
    if (of) {
        of->last_used_ms = now;
        return of;
    }
    if ((int64_t)cn_dict_size(f->files) >= f->max_open_files)
        close_least_recent(f);
    char path[4096 + 320];
    snprintf(path, sizeof path, "%s/%s", f->directory, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        cn_log_limited(&f->error_log, CN_LOG_ERROR, cn_component_id(f->self), "cannot open %s: %s", path,
                       strerror(errno));
        return NULL;
    }
    of = calloc(1, sizeof *of);
    if (!of || cn_dict_put(f->files, name, of) != 0) {
        free(of);
        close(fd);
        return NULL;
    }
    of->fd = fd;
    of->last_used_ms = now;
    return of;
}

/*
 * Writes f->out to the file, skipping the part of the chunk's output already
 * written by an earlier attempt. *produced counts the chunk's output so far.
 */
static int write_out(file_ctx *f, open_file *of, const char *task, uint64_t *produced, uint64_t skip)
{
    uint64_t start = *produced;
    size_t off = skip > start ? (size_t)(skip - start < f->out.len ? skip - start : f->out.len) : 0;
    *produced += f->out.len;
    while (off < f->out.len) {
        ssize_t n = write(of->fd, f->out.data + off, f->out.len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            cn_metric_inc(f->write_errors);
            cn_log_limited(&f->error_log, CN_LOG_ERROR, cn_component_id(f->self),
                           "write to %s for task %s failed: %s; retrying", f->directory, task,
                           n < 0 ? strerror(errno) : "no progress");
            f->committed = start + off;
            f->out.len = 0;
            return -1;
        }
        off += (size_t)n;
        cn_metric_add(f->bytes, n);
    }
    of->unsynced = true;
    f->out.len = 0;
    return 0;
}

static cn_status file_export(void *ctx, const cn_chunk *chunk)
{
    file_ctx *f = ctx;
    if (chunk->n == 0)
        return CN_OK;
    if (json_cache_begin(f->json, chunk) != 0)
        return CN_RETRY;
    uint64_t skip = f->retry_chunk == chunk->id ? f->committed : 0;
    f->retry_chunk = chunk->id;
    f->committed = skip;
    uint64_t produced = 0;
    int64_t now = cn_mono_ms();
    const char *task = NULL;
    open_file *of = NULL;
    f->out.len = 0;
    for (size_t i = 0; i < chunk->n; i++) {
        const cn_snap_ref *r = &chunk->refs[i];
        const char *t = cn_ref_task(r);
        if (!task || (t != task && strcmp(t, task) != 0)) {
            if (of && write_out(f, of, task, &produced, skip) != 0)
                return CN_RETRY;
            task = t;
            if (!(of = file_for_task(f, task, now))) {
                cn_metric_inc(f->write_errors);
                f->committed = produced > skip ? produced : skip;
                return CN_RETRY;
            }
        }
        if (cn_jsonl_line(f->json, r, &f->out) != 0) {
            f->committed = produced > skip ? produced : skip;
            f->out.len = 0;
            return CN_RETRY;
        }
        if (f->out.len >= WRITE_CHUNK && write_out(f, of, task, &produced, skip) != 0)
            return CN_RETRY;
    }
    if (of && write_out(f, of, task, &produced, skip) != 0)
        return CN_RETRY;
    f->retry_chunk = 0;
    f->committed = 0;
    cn_metric_add(f->lines, (int64_t)chunk->n);
    if (f->fsync_policy == FSYNC_ALWAYS)
        flush_all(f, true);
    return CN_OK;
}


/* ---- crash recovery -------------------------------------------------------------- */

/* Cuts a partial last line left by a crash in the middle of a write. */
static void cut_torn_tail(file_ctx *f, const char *path)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return;
    off_t size = lseek(fd, 0, SEEK_END);
    char last;
    if (size > 0 && pread(fd, &last, 1, size - 1) == 1 && last != '\n') {
        char buf[65536];
        off_t end = size, keep = 0;
        while (end > 0 && keep == 0) {
            off_t start = end > (off_t)sizeof buf ? end - (off_t)sizeof buf : 0;
            ssize_t n = pread(fd, buf, (size_t)(end - start), start);
            if (n <= 0)
                break;
            for (ssize_t i = n - 1; i >= 0; i--)
                if (buf[i] == '\n') {
                    keep = start + i + 1;
                    break;
                }
            end = start;
        }
        if (ftruncate(fd, keep) == 0)
            cn_warn(cn_component_id(f->self), "%s: cut a torn last line of %lld bytes (a crash interrupted a write)",
                    path, (long long)(size - keep));
    }
    close(fd);
}

static void for_each_jsonl(file_ctx *f, void (*fn)(file_ctx *, const char *, void *), void *arg)
{
    DIR *d = opendir(f->directory);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n > 6 && strcmp(e->d_name + n - 6, ".jsonl") == 0) {
            char path[4096 + 320];
            snprintf(path, sizeof path, "%s/%s", f->directory, e->d_name);
            fn(f, path, arg);
        }
    }
    closedir(d);
}

static void cut_one(file_ctx *f, const char *path, void *arg)
{
    CN_UNUSED(arg);
    cut_torn_tail(f, path);
}

typedef struct recover_arg {
    void (*seen)(void *, const char *, const char *, int32_t);
    void *seen_arg;
    size_t lines;
} recover_arg;

/* Decodes the JSON string that starts at p (a '"'); returns a new string or NULL. */
static char *json_token(const char *p, const char **end)
{
    const char *q = p + 1;
    while (*q && *q != '"')
        q += *q == '\\' && q[1] ? 2 : 1;
    if (*q != '"')
        return NULL;
    *end = q + 1;
    json_t *j = json_loadb(p, (size_t)(q + 1 - p), JSON_DECODE_ANY, NULL);
    char *s = j && json_is_string(j) ? strdup(json_string_value(j)) : NULL;
    json_decref(j);
    return s;
}

/* Reports every (task, segment, sequence) in one file. Lines are ours, so the
 * keys come in a known order. */
static void recover_one(file_ctx *f, const char *path, void *arg)
{
    recover_arg *ra = arg;
    FILE *fp = fopen(path, "r");
    if (!fp)
        return;
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, fp) > 0) {
        const char *end;
        if (strncmp(line, "{\"taskId\":\"", 11) != 0)
            continue;
        char *task = json_token(line + 10, &end);
        char *segment = task && strncmp(end, ",\"traceSegmentId\":\"", 19) == 0 ? json_token(end + 18, &end) : NULL;
        const char *seqp = segment ? strstr(end, ",\"sequence\":") : NULL;
        if (seqp) {
            ra->seen(ra->seen_arg, task, segment, (int32_t)strtol(seqp + 12, NULL, 10));
            ra->lines++;
        }
        free(task);
        free(segment);
    }
    free(line);
    fclose(fp);
    CN_UNUSED(f);
}

static void file_recover(void *ctx, void (*seen)(void *, const char *, const char *, int32_t), void *arg)
{
    file_ctx *f = ctx;
    recover_arg ra = {seen, arg, 0};
    for_each_jsonl(f, recover_one, &ra);
    cn_info(cn_component_id(f->self), "found %zu lines already written in %s", ra.lines, f->directory);
}

static void file_tick(void *ctx, int64_t now)
{
    file_ctx *f = ctx;
    if (f->fsync_policy != FSYNC_INTERVAL || now < f->next_sync_ms)
        return;
    f->next_sync_ms = now + f->fsync_interval;
    flush_all(f, true);
}

static void file_flush(void *ctx)
{
    file_ctx *f = ctx;
    if (f->files)
        flush_all(f, f->fsync_policy != FSYNC_NEVER);
}

static void file_destroy(void *ctx)
{
    file_ctx *f = ctx;
    if (f->files) {
        size_t pos = 0;
        void *value;
        while (cn_dict_next(f->files, &pos, NULL, &value)) {
            open_file *of = value;
            close(of->fd);
            free(of);
        }
        cn_dict_free(f->files, NULL);
    }
    json_cache_free(f->json);
    free(f->out.data);
}

const cn_exporter_plugin cn_exporter_file = {
    .base =
        {
            .kind = CN_EXPORTER,
            .type = "file",
            .description = "Writes <directory>/<taskId>.jsonl, one snapshot per line.",
            .ctx_size = sizeof(file_ctx),
            .options = file_options,
            .cb_check = file_check,
            .cb_start = file_start,
            .cb_destroy = file_destroy,
        },
    .cb_export = file_export,
    .cb_tick = file_tick,
    .cb_flush = file_flush,
    .cb_recover = file_recover,
};
