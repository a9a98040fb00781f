/*
 * Persistent spool; see spool.h for the file layout and guarantees.
 * One mutex guards the spool; appends come from the receiver's threads, reads
 * and completions from the exporter's worker, syncs from the flusher thread.
 * With fsync: always, appends commit in groups: each writes its record under the
 * lock, then one of them runs a single fdatasync, with the lock released, for every
 * record written so far, while the others wait for it (cn_spool_append).
 *
 * The files themselves (record framing, segment scans, the cursor file) are in
 * spool_files.c. What is left here is one thing at some 900 lines: the queue's
 * state under that one lock (segments, reader, completion ring, group commit,
 * cursor saves). Every function below reads or moves the same fields, and
 * their invariants (synced_seq <= next_seq, cursor <= read_seq, a rotation
 * waits for the last segment's sync) only hold when read together.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "canopy/log.h"
#include "canopy/metrics.h"
#include "fsutil.h"
#include "spool.h"
#include "spool_files.h"

typedef struct segment {
    uint64_t first_seq;
    uint64_t end_seq; /* one past the last record */
    uint64_t bytes;   /* valid bytes */
    uint64_t snapshots;
} segment;

/* A record the reader returned and the exporter has not finished with. */
typedef struct slot {
    uint32_t snapshots; /* kept to count what a drop_oldest takes */
    uint8_t done;
} slot;

/* An fsync: always append waiting for an fdatasync that covers its record. It
 * lives on the appender's stack; it is only touched under the lock. */
enum { WAIT_PENDING, WAIT_DURABLE, WAIT_FAILED };
typedef struct sync_waiter {
    uint64_t seq;
    int state;
    int err; /* errno of the failed fdatasync */
    struct sync_waiter *next;
} sync_waiter;

struct cn_spool {
    cn_spool_options o;
    char *name;
    pthread_mutex_t lock;
    pthread_cond_t readable;
    segment *segs;
    size_t n_segs, cap_segs;
    int write_fd;
    uint64_t next_seq;
    uint64_t total_bytes;
    /* reader */
    int read_fd;
    size_t read_seg;
    uint64_t read_seq;
    uint64_t read_off;
    uint64_t read_snapshots; /* snapshots of the reader's segment's records below read_seq */
    /* completion: a slot for each record of [cursor, read_seq) in a ring */
    uint64_t cursor;
    slot *ring;
    size_t ring_cap;
    bool cursor_dirty;
    uint64_t replay_end;
    bool unsynced;
    bool closed;
    bool reader_parked; /* write-ahead use: the replay is read; the reader stays idle */
    /* fsync: always. Records [synced_seq, next_seq) are written but not yet proven
     * durable: they are all in the last segment, from byte synced_off on (a rotation
     * waits for them), and the reader does not see them, so when their fdatasync
     * fails they can still be cut off and refused. */
    uint64_t synced_seq;
    uint64_t synced_off;
    uint64_t synced_snapshots; /* the last segment's snapshots below synced_off */
    bool syncing;              /* an append is in fdatasync (lock released) for the others */
    pthread_cond_t synced;     /* signalled when that fdatasync ends */
    sync_waiter *waiters, *waiters_tail; /* appends waiting for durability, in seq order */
    bool cut_pending;          /* the last segment's file holds bytes past its `bytes`: cut before writing */
    /* cursor saves */
    pthread_mutex_t save_lock; /* one save at a time: they share cursor.tmp, and saved_cursor follows the renames */
    uint64_t saved_cursor;     /* the cursor a restart would read (guarded by lock) */
    pthread_t flusher;
    bool flusher_started;
    bool stop_flusher;
    pthread_cond_t flusher_wake;
    cn_metric *m_bytes, *m_pending, *m_records, *m_dropped_records, *m_dropped_snapshots, *m_full, *m_errors,
        *m_corrupt;
    cn_ratelimit log;
    /* Failed cursor saves are retried at every sync: with their own limit they
     * cannot crowd the refusals' lines out of `log` while a disk is full. */
    cn_ratelimit cursor_log;
};

/* ---- helpers ---------------------------------------------------------------- */

static void seg_path(const cn_spool *s, uint64_t first_seq, char *out, size_t len)
{
    cn_spool_segment_path(s->o.directory, first_seq, out, len);
}

static int seg_push(cn_spool *s, uint64_t first_seq)
{
    if (s->n_segs == s->cap_segs) {
        size_t cap = s->cap_segs ? s->cap_segs * 2 : 16;
        segment *grown = realloc(s->segs, cap * sizeof *grown);
        if (!grown)
            return -1;
        s->segs = grown;
        s->cap_segs = cap;
    }
    s->segs[s->n_segs++] = (segment){first_seq, first_seq, 0, 0};
    return 0;
}

static void update_gauges(cn_spool *s)
{
    cn_metric_set(s->m_bytes, (int64_t)s->total_bytes);
    cn_metric_set(s->m_pending, (int64_t)(s->next_seq - s->cursor));
}

/* ---- recovery ---------------------------------------------------------------- */

static int list_segments(cn_spool *s)
{
    uint64_t *first_seqs;
    size_t n;
    if (cn_spool_list_segments(s->o.directory, &first_seqs, &n) != 0)
        return -1;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = seg_push(s, first_seqs[i]);
    free(first_seqs);
    return rc;
}

/* Validates a segment's records; cuts a torn tail of the last segment. */
static int scan_segment(cn_spool *s, size_t i)
{
    segment *g = &s->segs[i];
    char path[4200];
    seg_path(s, g->first_seq, path, sizeof path);
    bool last = i + 1 == s->n_segs;
    cn_spool_segment_scan scan;
    if (cn_spool_scan_segment(path, g->first_seq, last, &scan) != 0)
        return -1;
    int cut_error = errno;
    if (scan.bytes < scan.size) {
        cn_metric_inc(s->m_corrupt);
        cn_warn(s->name, "spool %s: %s record at offset %" PRIu64 " (%" PRIu64 " bytes after it %s)", path,
                last ? "torn or corrupt tail" : "corrupt", scan.bytes, scan.size - scan.bytes,
                last ? "cut off; a crash interrupted that write" : "skipped");
        if (cut_error)
            cn_warn(s->name, "spool %s: cannot cut the torn tail: %s", path, strerror(cut_error));
    }
    g->bytes = scan.bytes;
    g->end_seq = scan.end_seq;
    g->snapshots = scan.snapshots;
    s->total_bytes += scan.bytes;
    return 0;
}

static void read_cursor(cn_spool *s)
{
    s->cursor = s->n_segs ? s->segs[0].first_seq : 0;
    uint64_t saved;
    int found = cn_spool_read_cursor(s->o.directory, &saved);
    if (found > 0)
        s->cursor = saved;
    else if (found < 0)
        cn_warn(s->name, "spool %s: cursor file unreadable; replaying from the oldest record", s->o.directory);
}

/* Saves the cursor. Returns true once a restart would read it: the caller may
 * then forget what only protected records below it (delivery marks). */
static bool write_cursor(cn_spool *s, uint64_t cursor)
{
    /* With fsync: always the rename itself must be durable too: a power loss that
     * brought the old cursor back would replay records whose marks are forgotten. */
    int err = cn_spool_write_cursor(s->o.directory, cursor, s->o.fsync != CN_SPOOL_FSYNC_NEVER,
                                    s->o.fsync == CN_SPOOL_FSYNC_ALWAYS);
    if (err)
        cn_log_limited(&s->cursor_log, CN_LOG_WARN, s->name, "spool %s: cannot save the cursor: %s",
                       s->o.directory, strerror(err));
    return err == 0;
}

static int open_segment_for_append(cn_spool *s)
{
    segment *g = &s->segs[s->n_segs - 1];
    char path[4200];
    seg_path(s, g->first_seq, path, sizeof path);
    s->write_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (s->write_fd < 0)
        return -1;
    /* fsync: always acks a record once its file is synced; POSIX wants the
     * directory synced too before a new file's name survives a power loss. */
    if (s->o.fsync == CN_SPOOL_FSYNC_ALWAYS && cn_spool_sync_directory(s->o.directory) != 0) {
        close(s->write_fd);
        s->write_fd = -1;
        return -1;
    }
    return 0;
}

static int reader_open(cn_spool *s, size_t seg)
{
    if (s->read_fd >= 0)
        close(s->read_fd);
    char path[4200];
    seg_path(s, s->segs[seg].first_seq, path, sizeof path);
    s->read_fd = open(path, O_RDONLY | O_CLOEXEC);
    s->read_seg = seg;
    s->read_off = 0;
    s->read_seq = s->segs[seg].first_seq;
    s->read_snapshots = 0;
    return s->read_fd < 0 ? -1 : 0;
}

/* Deletes leading segments that hold nothing at or after the cursor. */
static void delete_committed_segments(cn_spool *s)
{
    size_t n = 0;
    while (n + 1 < s->n_segs && s->segs[n].end_seq <= s->cursor && s->read_seg > n)
        n++;
    for (size_t i = 0; i < n; i++) {
        char path[4200];
        seg_path(s, s->segs[i].first_seq, path, sizeof path);
        unlink(path);
        s->total_bytes -= s->segs[i].bytes;
    }
    if (n) {
        memmove(s->segs, s->segs + n, (s->n_segs - n) * sizeof *s->segs);
        s->n_segs -= n;
        s->read_seg -= n;
    }
}

static slot *ring_at(cn_spool *s, uint64_t seq) { return &s->ring[seq & (s->ring_cap - 1)]; }

static int ring_reserve(cn_spool *s, uint64_t window)
{
    if (window < s->ring_cap)
        return 0;
    size_t cap = s->ring_cap ? s->ring_cap : 1024;
    while (cap <= window)
        cap *= 2;
    slot *ring = calloc(cap, sizeof *ring);
    if (!ring)
        return -1;
    for (uint64_t q = s->cursor; q < s->read_seq && s->ring_cap; q++)
        ring[q & (cap - 1)] = *ring_at(s, q);
    free(s->ring);
    s->ring = ring;
    s->ring_cap = cap;
    return 0;
}

/* Records below it may be read. With fsync: always only records proven durable:
 * a record whose fdatasync fails is cut off and its batch refused (the agent
 * resends it), so the exporter must not have delivered it already. */
static uint64_t readable_end(const cn_spool *s)
{
    return s->o.fsync == CN_SPOOL_FSYNC_ALWAYS ? s->synced_seq : s->next_seq;
}

static void *flusher_main(void *arg);

cn_spool *cn_spool_open(const cn_spool_options *opts, const char *name, const char *labels)
{
    cn_spool *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->o = *opts;
    s->o.directory = strdup(opts->directory);
    s->name = strdup(name);
    s->write_fd = s->read_fd = -1;
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->save_lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&s->readable, &attr);
    pthread_cond_init(&s->flusher_wake, &attr);
    pthread_cond_init(&s->synced, &attr);
    pthread_condattr_destroy(&attr);
    s->m_bytes = cn_gauge("canopy_spool_bytes", "Bytes in the exporter's spool.", labels);
    s->m_pending = cn_gauge("canopy_spool_pending_records", "Records in the spool not yet exported.", labels);
    s->m_records = cn_counter("canopy_spool_records_total", "Records appended to the spool.", labels);
    s->m_dropped_records = cn_counter("canopy_spool_dropped_records_total",
                                      "Records dropped by when_full: drop_oldest.", labels);
    s->m_dropped_snapshots = cn_counter("canopy_spool_dropped_snapshots_total",
                                        "Snapshots dropped by when_full: drop_oldest.", labels);
    s->m_full = cn_counter("canopy_spool_full_refusals_total",
                           "Batches refused (retryable) because the spool was full or could not be written.", labels);
    s->m_errors = cn_counter("canopy_spool_write_errors_total", "Failed spool writes (disk full, I/O error).", labels);
    s->m_corrupt = cn_counter("canopy_spool_corrupt_records_total",
                              "Torn or corrupt records found (and skipped) when the spool was opened.", labels);
    s->log.interval_ms = 10000;
    s->cursor_log.interval_ms = 10000;
    if (!s->o.directory || !s->name || cn_mkdirs(s->o.directory, 0750) != 0 || list_segments(s) != 0) {
        cn_error(name, "spool %s: cannot open: %s", opts->directory, strerror(errno));
        cn_spool_close(s);
        return NULL;
    }
    for (size_t i = 0; i < s->n_segs; i++) {
        if (scan_segment(s, i) != 0) {
            cn_error(name, "spool %s: cannot read a segment: %s", opts->directory, strerror(errno));
            cn_spool_close(s);
            return NULL;
        }
    }
    s->next_seq = s->n_segs ? s->segs[s->n_segs - 1].end_seq : 0;
    read_cursor(s);
    if (s->n_segs && s->cursor < s->segs[0].first_seq)
        s->cursor = s->segs[0].first_seq; /* the oldest records were dropped */
    if (s->cursor > s->next_seq)
        s->cursor = s->next_seq;
    s->replay_end = s->next_seq;
    if (s->n_segs == 0 && seg_push(s, s->next_seq) != 0) {
        cn_spool_close(s);
        return NULL;
    }
    /* Position the reader on the cursor. */
    size_t seg = 0;
    while (seg + 1 < s->n_segs && s->segs[seg + 1].first_seq <= s->cursor)
        seg++;
    if (open_segment_for_append(s) != 0 || reader_open(s, seg) != 0) {
        cn_error(name, "spool %s: cannot open segment files: %s", opts->directory, strerror(errno));
        cn_spool_close(s);
        return NULL;
    }
    cn_spool_record_header h;
    long long n;
    while (s->read_seq < s->cursor &&
           (n = cn_spool_read_record(s->read_fd, s->read_off, s->segs[seg].bytes, &h, NULL)) > 0) {
        s->read_off += (uint64_t)n;
        s->read_seq++;
        s->read_snapshots += h.n_snapshots;
    }
    s->cursor = s->read_seq;
    /* Where a restart would start again: the cursor file, adjusted the same way. */
    s->saved_cursor = s->cursor;
    delete_committed_segments(s);
    /* Everything found on disk counts as durable: the scan only kept whole records. */
    s->synced_seq = s->next_seq;
    s->synced_off = s->segs[s->n_segs - 1].bytes;
    s->synced_snapshots = s->segs[s->n_segs - 1].snapshots;
    if (ring_reserve(s, 1) != 0) {
        cn_spool_close(s);
        return NULL;
    }
    update_gauges(s);
    if (s->next_seq > s->cursor)
        cn_info(name, "spool %s: %" PRIu64 " records (%" PRIu64 " bytes) from before the restart will be replayed",
                s->o.directory, s->next_seq - s->cursor, s->total_bytes);
    if (pthread_create(&s->flusher, NULL, flusher_main, s) == 0)
        s->flusher_started = true;
    return s;
}

/* ---- append --------------------------------------------------------------------- */

/* Drops the oldest segment that is not being written. Caller holds the lock. */
static bool drop_oldest_segment(cn_spool *s)
{
    if (s->n_segs < 2)
        return false;
    segment g = s->segs[0];
    char path[4200];
    seg_path(s, g.first_seq, path, sizeof path);
    unlink(path);
    /* Counted: what the segment holds that the exporter has not delivered. Records
     * below the cursor, or done, were delivered. Records it has read and not finished
     * are counted too: they are delivered from memory if the collector keeps running,
     * but nothing replays them after a stop or a crash any more, so the counters may
     * exceed what goes missing, never fall short of it. */
    uint64_t lost_records = 0, lost_snapshots = 0;
    uint64_t read_end = s->read_seq < g.end_seq ? s->read_seq : g.end_seq;
    for (uint64_t q = s->cursor > g.first_seq ? s->cursor : g.first_seq; q < read_end; q++)
        if (!ring_at(s, q)->done) {
            lost_records++;
            lost_snapshots += ring_at(s, q)->snapshots;
        }
    if (s->read_seg == 0 && s->read_seq < g.end_seq) {
        /* Not read yet: the segment's snapshots minus those of the records read. */
        lost_records += g.end_seq - s->read_seq;
        lost_snapshots += g.snapshots > s->read_snapshots ? g.snapshots - s->read_snapshots : 0;
    }
    cn_metric_add(s->m_dropped_records, (int64_t)lost_records);
    cn_metric_add(s->m_dropped_snapshots, (int64_t)lost_snapshots);
    cn_log_limited(&s->log, CN_LOG_WARN, s->name,
                   "spool %s is full: dropped its oldest %" PRIu64 " records (%" PRIu64 " snapshots) per "
                   "when_full: drop_oldest",
                   s->o.directory, lost_records, lost_snapshots);
    s->total_bytes -= g.bytes;
    memmove(s->segs, s->segs + 1, (s->n_segs - 1) * sizeof *s->segs);
    s->n_segs--;
    if (s->cursor < s->segs[0].first_seq) {
        /* Records still being exported from the dropped segment complete as usual; the
         * cursor simply no longer waits for them. */
        for (uint64_t q = s->cursor; q < s->segs[0].first_seq && q < s->read_seq; q++)
            *ring_at(s, q) = (slot){0, 0};
        s->cursor = s->segs[0].first_seq;
        s->cursor_dirty = true;
    }
    if (s->read_seg == 0) {
        reader_open(s, 0);
    } else {
        s->read_seg--;
    }
    if (s->read_seq < s->cursor) {
        s->read_seq = s->cursor;
    }
    return true;
}

/* Starts a new segment file. The new file is created first: when that fails (no
 * inode, disk full) the spool keeps its current segment and stays usable. */
static int rotate(cn_spool *s)
{
    char path[4200];
    seg_path(s, s->next_seq, path, sizeof path);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0)
        return -1;
    /* With fsync: always the new file's name must be durable before a record in
     * it is acked (once per segment, so cheap). */
    if (s->o.fsync == CN_SPOOL_FSYNC_ALWAYS && cn_spool_sync_directory(s->o.directory) != 0) {
        close(fd);
        unlink(path);
        return -1;
    }
    if (seg_push(s, s->next_seq) != 0) {
        close(fd);
        unlink(path);
        return -1;
    }
    /* fsync: always needs no flush here: the rotation waited until every record of
     * the segment was proven durable. */
    if (s->o.fsync == CN_SPOOL_FSYNC_INTERVAL && fdatasync(s->write_fd) != 0)
        cn_log_limited(&s->log, CN_LOG_ERROR, s->name,
                       "spool %s: fdatasync failed: %s; batches acked in the last fsync_interval may not survive a "
                       "power loss", s->o.directory, strerror(errno));
    close(s->write_fd);
    s->write_fd = fd;
    s->synced_off = 0;
    s->synced_snapshots = 0;
    return 0;
}

/* fsync: always, after an fdatasync failed. No record written since the last
 * successful one can be called durable (after a failed writeback Linux may report
 * the next fdatasync clean with the data lost), so every waiting append fails and
 * the records are cut from the file: left there, the file and the accounting would
 * disagree and later records be lost (tests/chaos/spool_repro_fsync_eio.py). The
 * reader never saw them. Caller holds the lock. */
static void cut_unsynced(cn_spool *s, int err)
{
    segment *g = &s->segs[s->n_segs - 1];
    if (ftruncate(s->write_fd, (off_t)s->synced_off) != 0)
        s->cut_pending = true; /* the next append cuts them before it writes */
    s->total_bytes -= g->bytes - s->synced_off;
    g->bytes = s->synced_off;
    g->end_seq = s->next_seq = s->synced_seq;
    g->snapshots = s->synced_snapshots;
    for (sync_waiter *w = s->waiters, *next; w; w = next) {
        next = w->next;
        w->err = err;
        w->state = WAIT_FAILED;
    }
    s->waiters = s->waiters_tail = NULL;
    update_gauges(s);
}

/* fsync: always. One fdatasync for every record written so far (at least one
 * waits: synced_seq < next_seq), run with the lock released so that other appends
 * write theirs meanwhile and share the next one, instead of queueing behind the
 * disk one by one. The fd stays open: only a rotation or close closes it, and a
 * rotation waits until nothing is left to sync. Caller holds the lock; it is
 * released and taken again. */
static void group_sync(cn_spool *s)
{
    const segment *g = &s->segs[s->n_segs - 1];
    uint64_t target = s->next_seq, target_off = g->bytes, target_snapshots = g->snapshots;
    int fd = s->write_fd;
    s->syncing = true;
    pthread_mutex_unlock(&s->lock);
    int rc = fdatasync(fd);
    int err = errno;
    pthread_mutex_lock(&s->lock);
    s->syncing = false;
    if (rc == 0) {
        s->synced_seq = target;
        s->synced_off = target_off;
        s->synced_snapshots = target_snapshots;
        while (s->waiters && s->waiters->seq < target) {
            sync_waiter *w = s->waiters;
            s->waiters = w->next;
            w->state = WAIT_DURABLE;
        }
        if (!s->waiters)
            s->waiters_tail = NULL;
        pthread_cond_signal(&s->readable);
    } else {
        cut_unsynced(s, err);
    }
    pthread_cond_broadcast(&s->synced);
}

/* Waits for the fdatasync in flight or, when none is, runs one. Caller holds the lock. */
static void wait_or_sync(cn_spool *s)
{
    if (s->syncing)
        pthread_cond_wait(&s->synced, &s->lock);
    else
        group_sync(s);
}

cn_spool_result cn_spool_append(cn_spool *s, const void *data, size_t len, uint32_t n_snapshots)
{
    uint64_t seq;
    return cn_spool_append_at(s, data, len, n_snapshots, &seq);
}

cn_spool_result cn_spool_append_at(cn_spool *s, const void *data, size_t len, uint32_t n_snapshots, uint64_t *seq)
{
    cn_spool_record_header h = {CN_SPOOL_RECORD_MAGIC, (uint32_t)len, 0, n_snapshots, 0};
    uint64_t rec = sizeof h + len;
    bool always = s->o.fsync == CN_SPOOL_FSYNC_ALWAYS;
    const char *failed = "write";
    pthread_mutex_lock(&s->lock);
    cn_spool_result result = CN_SPOOL_OK;
    segment *g;
    for (;;) {
        if (s->cut_pending) {
            /* Bytes the accounting does not count are still in the file; appended after
             * them, this record would be where nobody looks for it. */
            if (ftruncate(s->write_fd, (off_t)s->segs[s->n_segs - 1].bytes) != 0) {
                result = CN_SPOOL_IO;
                goto io_error;
            }
            s->cut_pending = false;
        }
        while (s->total_bytes + rec > (uint64_t)s->o.max_size) {
            if (s->o.when_full != CN_SPOOL_DROP_OLDEST || !drop_oldest_segment(s)) {
                cn_metric_inc(s->m_full);
                cn_log_limited(&s->log, CN_LOG_WARN, s->name,
                               "spool %s is full (%" PRIu64 " of %lld bytes): refusing batches until the exporter "
                               "catches up; agents will resend",
                               s->o.directory, s->total_bytes, (long long)s->o.max_size);
                result = CN_SPOOL_FULL;
                goto out;
            }
        }
        g = &s->segs[s->n_segs - 1];
        if (g->bytes == 0 || g->bytes + rec <= (uint64_t)s->o.segment_size)
            break;
        if (always && s->synced_seq < s->next_seq) {
            /* Rotating closes the segment's file: first its records must be proven
             * durable (or cut), and no fdatasync may still run on it. The lock is
             * released meanwhile: look at everything again. */
            wait_or_sync(s);
            continue;
        }
        if (rotate(s) != 0) {
            result = CN_SPOOL_IO;
            goto io_error;
        }
        g = &s->segs[s->n_segs - 1];
        break;
    }
    h.seq = s->next_seq;
    *seq = h.seq;
    h.crc = cn_spool_record_crc(&h, data);
    for (int attempt = 0;; attempt++) {
        struct iovec iov[2] = {{&h, sizeof h}, {(void *)data, len}};
        ssize_t n = writev(s->write_fd, iov, 2);
        if (n == (ssize_t)rec)
            break;
        int err = n < 0 ? errno : ENOSPC;
        /* Remove a partial record so the file stays a clean sequence of records. */
        if (n > 0 && ftruncate(s->write_fd, (off_t)g->bytes) != 0) {
            err = errno;
            s->cut_pending = true;
        }
        /* Not while uncut bytes remain: appended after them, the record would be
         * where nobody looks for it. */
        if (err == ENOSPC && !s->cut_pending && s->o.when_full == CN_SPOOL_DROP_OLDEST && attempt < 4 &&
            drop_oldest_segment(s)) {
            g = &s->segs[s->n_segs - 1];
            continue;
        }
        errno = err;
        result = CN_SPOOL_IO;
        goto io_error;
    }
    g->bytes += rec;
    g->end_seq = ++s->next_seq;
    g->snapshots += n_snapshots;
    s->total_bytes += rec;
    s->unsynced = true;
    update_gauges(s);
    if (always) {
        /* Acked only once an fdatasync that began after the write returned 0: wait
         * for one, or run it for every record written so far (group commit). */
        sync_waiter me = {h.seq, WAIT_PENDING, 0, NULL};
        if (s->waiters_tail)
            s->waiters_tail->next = &me;
        else
            s->waiters = &me;
        s->waiters_tail = &me;
        while (me.state == WAIT_PENDING)
            wait_or_sync(s);
        if (me.state == WAIT_FAILED) {
            errno = me.err;
            failed = "fdatasync";
            result = CN_SPOOL_IO;
            goto io_error;
        }
    } else {
        pthread_cond_signal(&s->readable);
    }
    cn_metric_inc(s->m_records);
    goto out;
io_error:
    if (errno == ENOSPC)
        result = CN_SPOOL_NO_SPACE;
    cn_metric_inc(s->m_errors);
    cn_metric_inc(s->m_full);
    cn_log_limited(&s->log, CN_LOG_ERROR, s->name,
                   "spool %s: %s failed: %s; refusing batches (agents will resend) until it can be written",
                   s->o.directory, failed, strerror(errno));
out:
    pthread_mutex_unlock(&s->lock);
    return result;
}

bool cn_spool_make_room(cn_spool *s)
{
    if (s->o.when_full != CN_SPOOL_DROP_OLDEST)
        return false;
    pthread_mutex_lock(&s->lock);
    /* Not while uncut bytes remain in the segment being written (see the append). */
    bool dropped = !s->cut_pending && drop_oldest_segment(s);
    if (dropped)
        update_gauges(s);
    pthread_mutex_unlock(&s->lock);
    return dropped;
}

/* ---- read and complete ------------------------------------------------------------- */

int cn_spool_read(cn_spool *s, uint64_t *seq, void **data, size_t *len, int64_t timeout_ms)
{
    struct timespec deadline = cn_deadline_after(CLOCK_MONOTONIC, timeout_ms);
    pthread_mutex_lock(&s->lock);
    int rc = 0;
    for (;;) {
        if (s->closed) {
            rc = -1;
            break;
        }
        if (s->read_seq < readable_end(s)) {
            segment *g = &s->segs[s->read_seg];
            if (s->read_off >= g->bytes || s->read_seq >= g->end_seq) {
                if (s->read_seg + 1 >= s->n_segs)
                    break; /* not possible while read_seq < next_seq; be safe */
                reader_open(s, s->read_seg + 1);
                continue;
            }
            cn_spool_record_header h;
            void *buf = NULL;
            long long n = cn_spool_read_record(s->read_fd, s->read_off, g->bytes, &h, &buf);
            if (n <= 0 || h.seq != s->read_seq) {
                free(buf);
                /* Checked at open; only a middle segment's damaged tail can get here. Skip it. */
                cn_log_limited(&s->log, CN_LOG_WARN, s->name, "spool %s: skipping a damaged record at seq %" PRIu64,
                               s->o.directory, s->read_seq);
                g->bytes = s->read_off;
                uint64_t skip_to =
                    s->read_seg + 1 < s->n_segs ? s->segs[s->read_seg + 1].first_seq : readable_end(s);
                if (ring_reserve(s, skip_to - s->cursor + 1) == 0)
                    for (uint64_t q = s->read_seq; q < skip_to; q++)
                        *ring_at(s, q) = (slot){0, 1};
                s->read_seq = skip_to;
                continue;
            }
            if (ring_reserve(s, s->read_seq - s->cursor + 1) != 0) {
                free(buf);
                break;
            }
            *ring_at(s, s->read_seq) = (slot){h.n_snapshots, 0};
            *seq = s->read_seq++;
            s->read_off += (uint64_t)n;
            s->read_snapshots += h.n_snapshots;
            *data = buf;
            *len = h.len;
            rc = 1;
            break;
        }
        if (pthread_cond_timedwait(&s->readable, &s->lock, &deadline) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

void cn_spool_done(cn_spool *s, uint64_t seq)
{
    pthread_mutex_lock(&s->lock);
    if (seq >= s->cursor && seq < s->read_seq) {
        ring_at(s, seq)->done = 1;
        uint64_t before = s->cursor;
        while (s->cursor < s->read_seq && ring_at(s, s->cursor)->done) {
            *ring_at(s, s->cursor) = (slot){0, 0};
            s->cursor++;
        }
        if (s->cursor != before) {
            s->cursor_dirty = true;
            delete_committed_segments(s);
            update_gauges(s);
        }
    }
    pthread_mutex_unlock(&s->lock);
}

void cn_spool_park_reader(cn_spool *s)
{
    pthread_mutex_lock(&s->lock);
    s->reader_parked = true;
    pthread_mutex_unlock(&s->lock);
}

void cn_spool_set_cursor(cn_spool *s, uint64_t seq)
{
    pthread_mutex_lock(&s->lock);
    if (seq > s->next_seq)
        seq = s->next_seq;
    if (seq > s->cursor) {
        s->cursor = seq;
        s->cursor_dirty = true;
        /* An idle reader must not pin old segments: it sits on the newest one. */
        if (s->reader_parked && s->read_seg + 1 < s->n_segs)
            reader_open(s, s->n_segs - 1);
        delete_committed_segments(s);
        update_gauges(s);
    }
    pthread_mutex_unlock(&s->lock);
}

uint64_t cn_spool_replay_end(const cn_spool *s) { return s->replay_end; }

uint64_t cn_spool_cursor(cn_spool *s)
{
    pthread_mutex_lock(&s->lock);
    uint64_t c = s->cursor;
    pthread_mutex_unlock(&s->lock);
    return c;
}

uint64_t cn_spool_saved_cursor(cn_spool *s)
{
    pthread_mutex_lock(&s->lock);
    uint64_t c = s->saved_cursor;
    pthread_mutex_unlock(&s->lock);
    return c;
}

uint64_t cn_spool_read_position(cn_spool *s)
{
    pthread_mutex_lock(&s->lock);
    uint64_t r = s->read_seq;
    pthread_mutex_unlock(&s->lock);
    return r;
}

bool cn_spool_has_replay(cn_spool *s)
{
    pthread_mutex_lock(&s->lock);
    bool pending = s->cursor < s->replay_end;
    pthread_mutex_unlock(&s->lock);
    return pending;
}

void cn_spool_sync(cn_spool *s)
{
    pthread_mutex_lock(&s->save_lock);
    pthread_mutex_lock(&s->lock);
    int fd = -1;
    if (s->unsynced && s->o.fsync == CN_SPOOL_FSYNC_INTERVAL) {
        /* A duplicate: a rotation may close write_fd while this fsyncs unlocked. */
        fd = dup(s->write_fd);
        s->unsynced = fd < 0; /* out of descriptors: try again at the next sync */
    } else {
        s->unsynced = false;
    }
    bool save = s->cursor_dirty;
    uint64_t cursor = s->cursor;
    s->cursor_dirty = false;
    pthread_mutex_unlock(&s->lock);
    /* fsync outside the lock so appends are not held up by the disk. */
    if (fd >= 0) {
        if (fdatasync(fd) != 0)
            cn_log_limited(&s->log, CN_LOG_ERROR, s->name,
                           "spool %s: fdatasync failed: %s; batches acked in the last fsync_interval may not "
                           "survive a power loss", s->o.directory, strerror(errno));
        close(fd);
    }
    if (save) {
        bool ok = write_cursor(s, cursor);
        pthread_mutex_lock(&s->lock);
        if (ok)
            s->saved_cursor = cursor; /* the cursor never moves back, nor do saves overlap */
        else
            s->cursor_dirty = true; /* try again at the next sync */
        pthread_mutex_unlock(&s->lock);
    }
    pthread_mutex_unlock(&s->save_lock);
}

void cn_spool_wake(cn_spool *s)
{
    pthread_mutex_lock(&s->lock);
    pthread_cond_broadcast(&s->readable);
    pthread_mutex_unlock(&s->lock);
}

static void *flusher_main(void *arg)
{
    cn_spool *s = arg;
    int64_t interval = s->o.fsync == CN_SPOOL_FSYNC_INTERVAL ? s->o.fsync_interval : 1000;
    pthread_mutex_lock(&s->lock);
    while (!s->stop_flusher) {
        struct timespec ts = cn_deadline_after(CLOCK_MONOTONIC, interval);
        pthread_cond_timedwait(&s->flusher_wake, &s->lock, &ts);
        if (s->stop_flusher)
            break;
        pthread_mutex_unlock(&s->lock);
        cn_spool_sync(s);
        pthread_mutex_lock(&s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

void cn_spool_close(cn_spool *s)
{
    if (!s)
        return;
    if (s->flusher_started) {
        pthread_mutex_lock(&s->lock);
        s->stop_flusher = true;
        pthread_cond_signal(&s->flusher_wake);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->flusher, NULL);
    }
    pthread_mutex_lock(&s->lock);
    s->closed = true;
    pthread_cond_broadcast(&s->readable);
    pthread_mutex_unlock(&s->lock);
    if (s->write_fd >= 0) {
        if (s->o.fsync != CN_SPOOL_FSYNC_NEVER && fdatasync(s->write_fd) != 0)
            cn_error(s->name, "spool %s: fdatasync at close failed: %s", s->o.directory, strerror(errno));
        s->unsynced = false;
    }
    if (s->o.directory && s->n_segs)
        cn_spool_sync(s);
    if (s->write_fd >= 0)
        close(s->write_fd);
    if (s->read_fd >= 0)
        close(s->read_fd);
    pthread_cond_destroy(&s->readable);
    pthread_cond_destroy(&s->flusher_wake);
    pthread_cond_destroy(&s->synced);
    pthread_mutex_destroy(&s->lock);
    pthread_mutex_destroy(&s->save_lock);
    free(s->segs);
    free(s->ring);
    free(s->o.directory);
    free(s->name);
    free(s);
}
