/*
 * One profile file per task for the folded, pprof and flamegraph exporters
 * (see cn_profile_files in profiles/profiles.h). The exporter's thread is the
 * only caller, so nothing here locks beyond what the private store does.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "canopy/dict.h"
#include "canopy/log.h"
#include "canopy/metrics.h"
#include "fsutil.h"
#include "profiles/profiles.h"

struct cn_profile_files {
    char *component, *directory, *suffix;
    int64_t interval_ms;
    cn_profile_render_fn render;
    void *render_arg;
    cn_task_registry *registry;
    cn_profiles *store;
    uint64_t last_chunk; /* the last chunk added: a retried chunk is not added twice */
    cn_dict *dirty;      /* tasks changed since their file was last written */
    int64_t next_write_ms;
    cn_metric *files, *errors;
    cn_ratelimit error_log;
};

void cn_profile_file_name(const char *task_id, const char *suffix, char *out, size_t len)
{
    size_t slen = strlen(suffix), n = 0;
    if (len < slen + 2) {
        if (len)
            out[0] = '\0';
        return;
    }
    for (const char *p = task_id; *p && n + slen + 1 < len; p++) {
        char ch = *p;
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
                  ch == '_' || (ch == '.' && n > 0);
        out[n++] = ok ? ch : '_';
    }
    if (n == 0)
        out[n++] = '_';
    memcpy(out + n, suffix, slen + 1);
}

cn_profile_files *cn_profile_files_new(const cn_profile_files_config *cfg)
{
    const char *comp = cfg->component ? cfg->component : "profiles";
    if (cn_mkdirs(cfg->directory, cfg->dir_mode ? cfg->dir_mode : 0755) != 0) {
        cn_error(comp, "cannot create directory %s: %s", cfg->directory, strerror(errno));
        return NULL;
    }
    cn_profile_files *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->component = strdup(comp);
    f->directory = strdup(cfg->directory);
    f->suffix = strdup(cfg->suffix);
    f->interval_ms = cfg->interval_ms;
    f->render = cfg->render;
    f->render_arg = cfg->render_arg;
    f->registry = cfg->registry;
    f->store = cn_profiles_new(&cfg->limits, cfg->labels);
    f->dirty = cn_dict_new(16);
    if (!f->component || !f->directory || !f->suffix || !f->store || !f->dirty) {
        cn_profile_files_free(f);
        return NULL;
    }
    const char *l = cfg->labels ? cfg->labels : "";
    f->files = cn_counter("canopy_profile_files_written_total", "Profile files written (task end or interval).", l);
    f->errors = cn_counter("canopy_profile_file_errors_total", "Profile files that could not be written (retried).", l);
    f->error_log.interval_ms = 10000;
    f->next_write_ms = cn_mono_ms() + f->interval_ms;
    return f;
}

void cn_profile_files_free(cn_profile_files *f)
{
    if (!f)
        return;
    cn_profiles_free(f->store);
    cn_dict_free(f->dirty, NULL);
    free(f->component);
    free(f->directory);
    free(f->suffix);
    free(f);
}

/* Renders the task to a temporary file, then renames it into place. 0: written, 1: no data, -1: failed. */
static int write_task(cn_profile_files *f, const char *task_id)
{
    cn_task_figures info;
    cn_calltree *tree = cn_profiles_clone(f->store, task_id, &info);
    if (!tree) {
        if (cn_profiles_info(f->store, task_id, &info) != 0)
            return 1; /* no snapshot ever came: nothing to write */
        cn_task_figures_clear(&info);
        return -1; /* out of memory: retried */
    }
    cn_task task = {0};
    bool known = f->registry && cn_tasks_get(f->registry, task_id, &task) == 0;
    cn_profile_meta meta = {.task_id = task_id,
                            .service = known ? task.service : info.service,
                            .endpoint = known ? task.endpoint : NULL,
                            .start_ms = info.first_ms,
                            .end_ms = info.last_ms,
                            .period_ms = known ? task.dump_period_ms : 0,
                            .agents = info.agents};
    char name[300], path[4096 + 320], tmp[4096 + 340];
    cn_profile_file_name(task_id, f->suffix, name, sizeof name);
    snprintf(path, sizeof path, "%s/%s", f->directory, name);
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp", f->directory, name);
    int rc = -1;
    const char *why = NULL;
    FILE *out = fopen(tmp, "we");
    if (!out) {
        why = strerror(errno);
    } else {
        rc = f->render(tree, &meta, f->render_arg, out);
        if (rc != 0)
            why = ferror(out) ? strerror(errno) : "out of memory";
        if (fflush(out) != 0 || fsync(fileno(out)) != 0) {
            rc = -1;
            why = strerror(errno);
        }
        if (fclose(out) != 0 && rc == 0) {
            rc = -1;
            why = strerror(errno);
        }
        if (rc == 0 && rename(tmp, path) != 0) {
            rc = -1;
            why = strerror(errno);
        }
        if (rc != 0)
            unlink(tmp);
    }
    if (rc == 0) {
        cn_metric_inc(f->files);
        cn_debug(f->component, "wrote %s (%lld snapshots)", path, (long long)info.snapshots);
    } else {
        cn_metric_inc(f->errors);
        cn_log_limited(&f->error_log, CN_LOG_ERROR, f->component, "cannot write %s: %s; will retry", path,
                       why ? why : "error");
    }
    if (known)
        cn_task_clear(&task);
    cn_task_figures_clear(&info);
    cn_calltree_free(tree);
    return rc;
}

static void mark_dirty(cn_profile_files *f, const char *task_id)
{
    if (!cn_dict_get(f->dirty, task_id))
        cn_dict_put(f->dirty, task_id, (void *)1); /* out of memory: written at its end anyway */
}

cn_status cn_profile_files_export(cn_profile_files *f, const cn_chunk *chunk)
{
    if (chunk->id != f->last_chunk) {
        cn_profiles_add_chunk(f->store, chunk);
        f->last_chunk = chunk->id;
        if (chunk->task_id) {
            if (chunk->n)
                mark_dirty(f, chunk->task_id);
        } else {
            const char *last = NULL;
            for (size_t i = 0; i < chunk->n; i++) {
                const char *t = cn_ref_task(&chunk->refs[i]);
                if (!last || (t != last && strcmp(t, last) != 0))
                    mark_dirty(f, t);
                last = t;
            }
        }
    }
    if (chunk->task_final && chunk->task_id) {
        int rc = write_task(f, chunk->task_id);
        if (rc < 0)
            return CN_RETRY;
        /* The ended task's tree stays (the store forgets ended tasks first when it needs room), so
         * snapshots that arrive late are added to it and its file is rewritten whole, never replaced
         * by a file of the late ones only. */
        cn_dict_remove(f->dirty, chunk->task_id);
        if (rc == 0)
            cn_info(f->component, "task %s ended: profile written to %s", chunk->task_id, f->directory);
    }
    return CN_OK;
}

/* Writes every dirty task; those that fail stay dirty. */
static void write_dirty(cn_profile_files *f)
{
    size_t n = cn_dict_size(f->dirty), k = 0, pos = 0;
    if (n == 0)
        return;
    char **ids = calloc(n, sizeof *ids);
    const char *key;
    if (!ids)
        return;
    while (k < n && cn_dict_next(f->dirty, &pos, &key, NULL))
        if ((ids[k] = strdup(key)))
            k++;
    for (size_t i = 0; i < k; i++) {
        if (write_task(f, ids[i]) >= 0)
            cn_dict_remove(f->dirty, ids[i]);
        free(ids[i]);
    }
    free(ids);
}

void cn_profile_files_tick(cn_profile_files *f, int64_t now)
{
    if (f->interval_ms <= 0 || now < f->next_write_ms)
        return;
    f->next_write_ms = now + f->interval_ms;
    write_dirty(f);
}

void cn_profile_files_flush(cn_profile_files *f) { write_dirty(f); }
