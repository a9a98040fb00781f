/*
 * The durable intake (intake.h): a cn_spool used as a write-ahead log. The
 * spool's own completion tracking serves a reader that reads every record;
 * here records are read only after a restart, so which are done is tracked
 * here, in a ring of flags from the cursor on, and the spool is told the
 * cursor (cn_spool_set_cursor).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "canopy/log.h"
#include "durable.h"
#include "intake.h"

struct cn_intake {
    cn_spool *log;
    char *name;
    pthread_mutex_t lock;
    uint64_t cursor;   /* every record below it is done */
    uint64_t end;      /* one past the highest record registered */
    uint8_t *done;     /* ring: done[seq & (cap - 1)] for seq in [cursor, end) */
    size_t cap;
    atomic_bool frozen;
    /* Batches whose release still calls back here. A batch can outlive its
     * service by a moment (a receiver a reload kept drops its reference after
     * the hand-over), so the last of them frees a closed intake. */
    size_t tracked;
    bool closed;
};

static void intake_free(cn_intake *in)
{
    pthread_mutex_destroy(&in->lock);
    free(in->done);
    free(in->name);
    free(in);
}

cn_intake *cn_intake_open(const cn_spool_options *opts, const char *name, const char *labels)
{
    cn_intake *in = calloc(1, sizeof *in);
    if (!in)
        return NULL;
    pthread_mutex_init(&in->lock, NULL);
    if (!(in->name = strdup(name)) || !(in->log = cn_spool_open(opts, name, labels))) {
        cn_intake_close(in);
        return NULL;
    }
    in->cursor = cn_spool_cursor(in->log);
    in->end = cn_spool_replay_end(in->log);
    in->cap = 1024;
    while (in->cap < in->end - in->cursor + 1)
        in->cap *= 2;
    if (!(in->done = calloc(in->cap, 1))) {
        cn_intake_close(in);
        return NULL;
    }
    return in;
}

void cn_intake_close(cn_intake *in)
{
    if (!in)
        return;
    atomic_store(&in->frozen, true); /* nothing done from now on: it is replayed */
    cn_spool_close(in->log);
    pthread_mutex_lock(&in->lock);
    in->log = NULL;
    in->closed = true;
    bool last = in->tracked == 0;
    pthread_mutex_unlock(&in->lock);
    if (last)
        intake_free(in);
}

/* Makes room in the ring for seq. Caller holds the lock. */
static int ring_cover(cn_intake *in, uint64_t seq)
{
    if (seq - in->cursor < in->cap)
        return 0;
    size_t cap = in->cap * 2;
    while (seq - in->cursor >= cap)
        cap *= 2;
    uint8_t *ring = calloc(cap, 1);
    if (!ring)
        return -1;
    for (uint64_t q = in->cursor; q < in->end; q++)
        ring[q & (cap - 1)] = in->done[q & (in->cap - 1)];
    free(in->done);
    in->done = ring;
    in->cap = cap;
    return 0;
}

static void record_done(void *arg, uint64_t seq)
{
    cn_intake *in = arg;
    pthread_mutex_lock(&in->lock);
    in->tracked--;
    if (in->closed) {
        bool last = in->tracked == 0;
        pthread_mutex_unlock(&in->lock);
        if (last)
            intake_free(in);
        return;
    }
    uint64_t before = in->cursor;
    if (!atomic_load(&in->frozen) && seq >= in->cursor && seq < in->end) {
        in->done[seq & (in->cap - 1)] = 1;
        while (in->cursor < in->end && in->done[in->cursor & (in->cap - 1)]) {
            in->done[in->cursor & (in->cap - 1)] = 0;
            in->cursor++;
        }
    }
    uint64_t cursor = in->cursor;
    pthread_mutex_unlock(&in->lock);
    if (cursor != before)
        cn_spool_set_cursor(in->log, cursor);
}

/* Registers a record as not done yet; its batch's release marks it done. */
static int track(cn_intake *in, cn_batch *b, uint64_t seq)
{
    pthread_mutex_lock(&in->lock);
    int rc = ring_cover(in, seq);
    if (rc == 0) {
        in->done[seq & (in->cap - 1)] = 0;
        if (seq + 1 > in->end)
            in->end = seq + 1;
        in->tracked++;
    }
    pthread_mutex_unlock(&in->lock);
    if (rc == 0) {
        b->on_release = record_done;
        b->release_arg = in;
        b->release_token = seq;
    }
    return rc;
}

cn_spool_result cn_intake_append(cn_intake *in, cn_batch *b)
{
    size_t len;
    uint8_t *bytes = cn_durable_encode_batch(b, &len);
    if (!bytes)
        return CN_SPOOL_IO;
    uint64_t seq;
    cn_spool_result r = cn_spool_append_at(in->log, bytes, len, (uint32_t)b->n_snapshots, &seq);
    free(bytes);
    if (r == CN_SPOOL_OK && track(in, b, seq) != 0) {
        /* Untracked, the record could never be done and would hold the log for ever:
         * leave it to the replay after a restart, and refuse this batch (the agent
         * resends; the replay's copy is dropped as a duplicate downstream). */
        cn_error(in->name, "out of memory tracking intake record %llu", (unsigned long long)seq);
        return CN_SPOOL_IO;
    }
    return r;
}

size_t cn_intake_replay(cn_intake *in, void (*push)(void *arg, cn_batch *b), void *arg)
{
    size_t handed = 0;
    uint64_t replay_end = cn_spool_replay_end(in->log);
    for (;;) {
        uint64_t seq;
        void *data;
        size_t len;
        if (cn_spool_read_position(in->log) >= replay_end || cn_spool_read(in->log, &seq, &data, &len, 0) != 1)
            break;
        const char *why = NULL;
        cn_batch *b = cn_durable_decode_batch(data, len, &why);
        free(data);
        if (!b) {
            cn_warn(in->name, "intake record %llu cannot be replayed (%s); skipped", (unsigned long long)seq, why);
            pthread_mutex_lock(&in->lock);
            in->tracked++; /* as if a batch held it, so that record_done counts right */
            pthread_mutex_unlock(&in->lock);
            record_done(in, seq);
            continue;
        }
        b->replayed = true;
        if (track(in, b, seq) != 0) {
            cn_batch_unref(b); /* stays undone: replayed again at the next start */
            continue;
        }
        push(arg, b);
        handed++;
    }
    cn_spool_park_reader(in->log);
    if (handed)
        cn_info(in->name, "replayed %zu batches from the intake log", handed);
    return handed;
}

uint64_t cn_intake_end(cn_intake *in)
{
    pthread_mutex_lock(&in->lock);
    uint64_t end = in->end;
    pthread_mutex_unlock(&in->lock);
    return end;
}

uint64_t cn_intake_saved_cursor(cn_intake *in) { return cn_spool_saved_cursor(in->log); }
uint64_t cn_intake_replay_end(cn_intake *in) { return cn_spool_replay_end(in->log); }
void cn_intake_freeze(cn_intake *in) { atomic_store(&in->frozen, true); }
