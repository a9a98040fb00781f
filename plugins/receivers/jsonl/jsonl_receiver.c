/*
 * Receiver `jsonl`: takes in snapshot files in the file exporter's jsonl form
 * (one snapshot per line: taskId, traceSegmentId, time, sequence,
 * stack.codeSignatures, service, serviceInstance) from a directory. Use it to
 * send a capture written by one collector (or kept from an outage) through
 * another's pipelines, to a SkyWalking OAP or any other exporter.
 *
 * A file is read whole, in batches per (service, instance), each handed to
 * the pipelines like any receiver's; once every batch of it was accepted it
 * is renamed to <name>.done (or deleted). A batch the pipelines refuse
 * (retryable: full, shutting down) is offered again at the next poll. After a
 * crash a file not yet marked done is read again from the start; the copies
 * of what was accepted before are duplicates that merge_by_task and durable
 * exporters drop by (segment, sequence).
 */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "canopy/dict.h"
#include "canopy/plugin.h"

static const char *const after_choices[] = {"rename", "delete", NULL};
enum { AFTER_RENAME = 0, AFTER_DELETE };

/* The files of one directory poll, by name. */
#define MAX_FILES_PER_POLL 1024

typedef struct jsonl_receiver {
    /* options */
    char *directory;
    int64_t poll_interval;
    int64_t batch_size;
    int after;
    int64_t max_line_length;
    /* runtime */
    cn_component *self;
    pthread_t thread;
    bool thread_started;
    atomic_bool stopping;
    uint64_t next_batch_seq;
    cn_metric *files, *batches, *snapshots, *bad_lines, *refused;
    cn_ratelimit bad_log, refuse_log;
} jsonl_receiver;

static const cn_option jsonl_options[] = {
    {CN_OPT_STR, "directory", NULL, offsetof(jsonl_receiver, directory),
     "Directory to take *.jsonl snapshot files from (the file exporter's jsonl form).", .required = true},
    {CN_OPT_DURATION, "poll_interval", "1s", offsetof(jsonl_receiver, poll_interval),
     "How often the directory is looked at for new files.", .min = 10, .max = 3600 * 1000},
    {CN_OPT_INT, "batch_size", "256", offsetof(jsonl_receiver, batch_size),
     "Snapshots per batch handed to the pipelines.", .min = 1, .max = 100000},
    {CN_OPT_ENUM, "after", "rename", offsetof(jsonl_receiver, after),
     "What happens to a file once every snapshot in it was accepted: rename (to <name>.done) or delete.",
     .choices = after_choices},
    {CN_OPT_SIZE, "max_line_length", "1MiB", offsetof(jsonl_receiver, max_line_length),
     "Longest line read; longer lines are skipped and counted.", .min = 256, .max = 1 << 30},
    CN_OPT_END};

static int jsonl_check(void *ctx, cn_component *self, cn_diag *d)
{
    jsonl_receiver *rx = ctx;
    if (access(rx->directory, R_OK | W_OK | X_OK) != 0) {
        cn_diag_error(d, cn_options_node(cn_component_node(self), "directory"), "directory: cannot use %s: %s",
                      rx->directory, strerror(errno));
        return -1;
    }
    return 0;
}

/* Batches being built for one file, one per (service, instance). */
typedef struct file_batches {
    cn_dict *by_agent; /* "service\x1finstance" -> cn_batch_builder */
    cn_batch **ready;  /* finished batches, in the order they filled */
    size_t n_ready, cap_ready;
} file_batches;

static int ready_push(jsonl_receiver *rx, file_batches *fb, cn_batch_builder *b)
{
    if (fb->n_ready == fb->cap_ready) {
        size_t cap = fb->cap_ready ? fb->cap_ready * 2 : 16;
        cn_batch **grown = realloc(fb->ready, cap * sizeof *grown);
        if (!grown) {
            cn_batch_builder_free(b);
            return -1;
        }
        fb->ready = grown;
        fb->cap_ready = cap;
    }
    cn_batch *batch = cn_batch_builder_finish(b, ++rx->next_batch_seq);
    if (!batch)
        return -1;
    fb->ready[fb->n_ready++] = batch;
    return 0;
}

static void file_batches_free(file_batches *fb)
{
    size_t pos = 0;
    void *v;
    while (fb->by_agent && cn_dict_next(fb->by_agent, &pos, NULL, &v))
        cn_batch_builder_free(v);
    cn_dict_free(fb->by_agent, NULL);
    for (size_t i = 0; i < fb->n_ready; i++)
        cn_batch_unref(fb->ready[i]);
    free(fb->ready);
}

/* Adds one line's snapshot. Returns 0, 1 for a malformed line (skipped), -1 when out of memory. */
static int add_line(jsonl_receiver *rx, file_batches *fb, const char *line)
{
    json_error_t err;
    json_t *j = json_loads(line, JSON_REJECT_DUPLICATES, &err);
    const char *task = json_string_value(json_object_get(j, "taskId"));
    const char *segment = json_string_value(json_object_get(j, "traceSegmentId"));
    const char *service = json_string_value(json_object_get(j, "service"));
    const char *instance = json_string_value(json_object_get(j, "serviceInstance"));
    json_t *time = json_object_get(j, "time"), *seq = json_object_get(j, "sequence");
    json_t *sigs = json_object_get(json_object_get(j, "stack"), "codeSignatures");
    if (!task || !segment || !service || !instance || !json_is_integer(time) || !json_is_integer(seq) ||
        !json_is_array(sigs) || json_integer_value(seq) < 0 || json_integer_value(seq) > INT32_MAX) {
        json_decref(j);
        return 1;
    }
    char key[1024];
    snprintf(key, sizeof key, "%s\x1f%s", service, instance);
    cn_batch_builder *b = cn_dict_get(fb->by_agent, key);
    if (!b && (!(b = cn_batch_builder_new(service, instance)) || cn_dict_put(fb->by_agent, key, b) != 0)) {
        cn_batch_builder_free(b);
        json_decref(j);
        return -1;
    }
    size_t n = json_array_size(sigs);
    uint32_t *frames = malloc((n ? n : 1) * sizeof *frames), ti, si;
    int rc = frames && cn_batch_builder_string(b, task, &ti) == 0 && cn_batch_builder_string(b, segment, &si) == 0
                 ? 0
                 : -1;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        const char *sig = json_string_value(json_array_get(sigs, i));
        rc = !sig ? 1 : cn_batch_builder_string(b, sig, &frames[i]);
    }
    if (rc == 0)
        rc = cn_batch_builder_add(b, ti, si, (int32_t)json_integer_value(seq), json_integer_value(time), frames, n);
    free(frames);
    json_decref(j);
    if (rc == 0 && (int64_t)cn_batch_builder_count(b) >= rx->batch_size) {
        cn_dict_remove(fb->by_agent, key);
        rc = ready_push(rx, fb, b);
    }
    return rc;
}

/* Reads a file into batches. Returns 0, or -1 (logged) when it cannot be read or memory ran out. */
static int read_file(jsonl_receiver *rx, const char *path, file_batches *fb)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        cn_log_limited(&rx->bad_log, CN_LOG_WARN, cn_component_id(rx->self), "cannot read %s: %s", path,
                       strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int rc = 0;
    int64_t bad = 0;
    while (rc == 0 && (len = getline(&line, &cap, f)) >= 0) {
        if (len == 0 || (len == 1 && line[0] == '\n'))
            continue;
        int r = len > rx->max_line_length ? 1 : add_line(rx, fb, line);
        if (r > 0)
            bad++;
        else
            rc = r;
    }
    free(line);
    fclose(f);
    /* What is left of each agent's builder is a last, smaller batch. */
    size_t pos = 0;
    void *v;
    while (cn_dict_next(fb->by_agent, &pos, NULL, &v)) {
        if (rc == 0 && cn_batch_builder_count(v) > 0)
            rc = ready_push(rx, fb, v); /* takes the builder */
        else
            cn_batch_builder_free(v);
    }
    cn_dict_free(fb->by_agent, NULL);
    fb->by_agent = NULL;
    if (bad) {
        cn_metric_add(rx->bad_lines, bad);
        cn_log_limited(&rx->bad_log, CN_LOG_WARN, cn_component_id(rx->self),
                       "%s: skipped %lld malformed or overlong lines", path, (long long)bad);
    }
    if (rc != 0)
        cn_error(cn_component_id(rx->self), "out of memory reading %s; tried again at the next poll", path);
    return rc;
}

/* Offers a file's batches; true when all were accepted. */
static bool submit_file(jsonl_receiver *rx, const char *path)
{
    file_batches fb = {0};
    if (!(fb.by_agent = cn_dict_new(8)) || read_file(rx, path, &fb) != 0) {
        file_batches_free(&fb);
        return false;
    }
    size_t accepted = 0;
    for (; accepted < fb.n_ready && !atomic_load(&rx->stopping); accepted++) {
        cn_batch *b = fb.ready[accepted];
        cn_submit_result r = cn_receiver_submit(rx->self, b);
        if (r != CN_SUBMIT_OK) {
            cn_metric_inc(rx->refused);
            cn_log_limited(&rx->refuse_log, CN_LOG_INFO, cn_component_id(rx->self),
                           "the pipelines refused a batch of %s (%s); offered again at the next poll", path,
                           r == CN_SUBMIT_MEMORY_LIMIT ? "memory_limit" : r == CN_SUBMIT_SHUTTING_DOWN
                                                                              ? "shutting down"
                                                                              : "a queue or log is full");
            break;
        }
        cn_metric_inc(rx->batches);
        cn_metric_add(rx->snapshots, (int64_t)b->n_snapshots);
    }
    bool all = accepted == fb.n_ready;
    file_batches_free(&fb);
    return all;
}

static void finish_file(jsonl_receiver *rx, const char *path)
{
    char done[4300];
    snprintf(done, sizeof done, "%s.done", path);
    int rc = rx->after == AFTER_DELETE ? unlink(path) : rename(path, done);
    if (rc != 0)
        cn_error(cn_component_id(rx->self), "cannot %s %s: %s; it will be read again",
                 rx->after == AFTER_DELETE ? "delete" : "rename", path, strerror(errno));
    cn_metric_inc(rx->files);
}

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* One look at the directory: its *.jsonl files, oldest name first. */
static void poll_directory(jsonl_receiver *rx)
{
    DIR *dir = opendir(rx->directory);
    if (!dir)
        return;
    char *names[MAX_FILES_PER_POLL];
    size_t n = 0;
    struct dirent *e;
    while (n < MAX_FILES_PER_POLL && (e = readdir(dir))) {
        size_t len = strlen(e->d_name);
        if (len > 6 && strcmp(e->d_name + len - 6, ".jsonl") == 0 && (names[n] = strdup(e->d_name)))
            n++;
    }
    closedir(dir);
    qsort(names, n, sizeof *names, cmp_names);
    for (size_t i = 0; i < n; i++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/%s", rx->directory, names[i]);
        if (!atomic_load(&rx->stopping) && submit_file(rx, path))
            finish_file(rx, path);
        free(names[i]);
    }
}

static void *poll_main(void *arg)
{
    jsonl_receiver *rx = arg;
    while (!atomic_load(&rx->stopping)) {
        poll_directory(rx);
        for (int64_t slept = 0; slept < rx->poll_interval && !atomic_load(&rx->stopping); slept += 10) {
            struct timespec ts = {0, 10 * 1000000};
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

static int jsonl_start(void *ctx, cn_component *self)
{
    jsonl_receiver *rx = ctx;
    rx->self = self;
    const char *l = cn_component_labels(self);
    rx->files = cn_counter("canopy_jsonl_files_total", "Files taken in whole.", l);
    rx->batches = cn_counter("canopy_receiver_accepted_batches_total", "Batches accepted into the pipelines.", l);
    rx->snapshots = cn_counter("canopy_receiver_accepted_snapshots_total", "Snapshots accepted into the pipelines.", l);
    rx->bad_lines = cn_counter("canopy_jsonl_bad_lines_total", "Lines skipped: malformed, or over max_line_length.", l);
    rx->refused = cn_counter("canopy_jsonl_refused_batches_total",
                             "Batches the pipelines refused (retryable); offered again at the next poll.", l);
    rx->bad_log.interval_ms = 10000;
    rx->refuse_log.interval_ms = 10000;
    /* Batch numbers only need to differ within a run: receivers of this kind are not deduplicated by them. */
    rx->next_batch_seq = (uint64_t)cn_now_ms() << 16;
    if (pthread_create(&rx->thread, NULL, poll_main, rx) != 0)
        return -1;
    rx->thread_started = true;
    cn_info(cn_component_id(self), "taking *.jsonl files from %s every %lld ms", rx->directory,
            (long long)rx->poll_interval);
    return 0;
}

static void jsonl_stop(void *ctx)
{
    jsonl_receiver *rx = ctx;
    atomic_store(&rx->stopping, true);
    if (rx->thread_started) {
        pthread_join(rx->thread, NULL);
        rx->thread_started = false;
    }
}

static void jsonl_destroy(void *ctx) { jsonl_stop(ctx); }

const cn_plugin cn_receiver_jsonl = {
    .kind = CN_RECEIVER,
    .type = "jsonl",
    .description = "Snapshot files in the file exporter's jsonl form, taken from a directory.",
    .ctx_size = sizeof(jsonl_receiver),
    .options = jsonl_options,
    .cb_check = jsonl_check,
    .cb_start = jsonl_start,
    .cb_stop = jsonl_stop,
    .cb_destroy = jsonl_destroy,
};
