/*
 * Export with delivery-report accounting. A chunk counts as exported only when
 * every one of its snapshots has a successful delivery report: the brokers
 * acknowledged it (acks=all by default). Until then the core's retry policy
 * holds the chunk, and the spool keeps it across a crash.
 *
 * Each message carries (generation, index) as its opaque: the index names its
 * state in the chunk being exported, and the generation tells a late report of
 * an earlier chunk (one the core gave up on) from a report of this one.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kafka.h"

/* Extra wait past message.timeout.ms: librdkafka reports a timed-out message a little late. */
#define KAFKA_REPORT_SLACK_MS 5000
/* The longest the export sleeps at a time while librdkafka's queue is full. */
#define KAFKA_FULL_WAIT_MS 50

static void *opaque_of(uint32_t generation, size_t index)
{
    return (void *)(uintptr_t)(((uint64_t)generation << 32) | (uint64_t)index);
}

/* Errors that sending the same bytes again cannot fix. */
bool kafka_error_is_permanent(rd_kafka_resp_err_t err)
{
    switch (err) {
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
    case RD_KAFKA_RESP_ERR_INVALID_MSG:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
    case RD_KAFKA_RESP_ERR_INVALID_REQUIRED_ACKS:
    case RD_KAFKA_RESP_ERR_UNSUPPORTED_VERSION:
    case RD_KAFKA_RESP_ERR_UNSUPPORTED_FOR_MESSAGE_FORMAT:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
        return true;
    default:
        return false;
    }
}

/* On the poller thread. Counts every report; updates the state of the current chunk's. */
void kafka_delivery_report(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    kafka_ctx *k = opaque;
    uint64_t tag = (uint64_t)(uintptr_t)m->_private;
    uint32_t generation = (uint32_t)(tag >> 32);
    size_t index = (size_t)(tag & 0xffffffffu);
    bool permanent = m->err && kafka_error_is_permanent(m->err);
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        cn_metric_inc(k->m_delivered);
        cn_metric_add(k->m_delivered_bytes, (int64_t)m->len);
    } else {
        cn_metric_inc(k->m_failed);
        cn_metric_add(k->m_failed_bytes, (int64_t)m->len);
        if (permanent)
            cn_metric_inc(k->m_given_up);
    }
    pthread_mutex_lock(&k->lock);
    if (generation == k->generation && index < k->n_states && k->states[index] == KAFKA_MSG_IN_FLIGHT) {
        k->states[index] = m->err == RD_KAFKA_RESP_ERR_NO_ERROR ? KAFKA_MSG_DELIVERED
                           : permanent                          ? KAFKA_MSG_GIVEN_UP
                                                                : KAFKA_MSG_TODO;
        if (m->err)
            k->last_error = m->err;
        k->in_flight--;
        pthread_cond_broadcast(&k->reported);
    }
    pthread_mutex_unlock(&k->lock);
    CN_UNUSED(rk);
}

/* Resets the states for a new chunk, or keeps them for a retry of the same one. */
static int begin_chunk(kafka_ctx *k, const cn_chunk *chunk)
{
    int rc = 0;
    pthread_mutex_lock(&k->lock);
    if (k->chunk_id != chunk->id || k->n_states != chunk->n) {
        if (chunk->n > k->states_cap) {
            uint8_t *grown = realloc(k->states, chunk->n);
            if (!grown) {
                rc = -1;
                goto out;
            }
            k->states = grown;
            k->states_cap = chunk->n;
        }
        /* Reports still due for the previous chunk are counted, not tracked. */
        k->generation++;
        k->chunk_id = chunk->id;
        k->n_states = chunk->n;
        k->in_flight = 0;
        memset(k->states, KAFKA_MSG_TODO, chunk->n);
    }
    k->last_error = RD_KAFKA_RESP_ERR_NO_ERROR;
out:
    pthread_mutex_unlock(&k->lock);
    return rc;
}

/*
 * The record key: for ThreadSnapshots, taskId + sequence as plain
 * concatenation, as the Java agent's KafkaProfileSnapshotSender writes it;
 * for JSON lines, the task id.
 */
static int record_key(const kafka_ctx *k, const cn_snap_ref *r, char *buf, size_t len)
{
    int n = k->format == KAFKA_FORMAT_JSONL ? snprintf(buf, len, "%s", cn_ref_task(r))
                                            : snprintf(buf, len, "%s%d", cn_ref_task(r), r->snap->sequence);
    return n < 0 || (size_t)n >= len ? -1 : n;
}

/* The record value, in a buffer librdkafka frees (RD_KAFKA_MSG_F_FREE); NULL when out of memory. */
static uint8_t *record_value(kafka_ctx *k, const cn_snap_ref *r, size_t *len)
{
    uint8_t *value = NULL;
    if (k->format == KAFKA_FORMAT_JSONL) {
        k->line.len = 0;
        if (cn_jsonl_line(k->json, r, &k->line) != 0)
            return NULL;
        *len = k->line.len - 1; /* a record needs no line end */
        if ((value = malloc(*len)))
            memcpy(value, k->line.data, *len);
        return value;
    }
    *len = cn_sw_snapshot_prepare(&k->snap_enc, r);
    if (*len && (value = malloc(*len)))
        cn_sw_snapshot_pack(&k->snap_enc, value);
    return value;
}

static void wait_reports(kafka_ctx *k, int64_t deadline_ms, bool until_none_in_flight)
{
    pthread_mutex_lock(&k->lock);
    while ((until_none_in_flight ? k->in_flight > 0 : true) && !atomic_load(&k->interrupted) &&
           !atomic_load(&k->fatal)) {
        int64_t left = deadline_ms - cn_mono_ms();
        if (left <= 0)
            break;
        if (left > 100)
            left = 100; /* wakes up for the interrupt and fatal flags, which need no lock */
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += (long)(left % 1000) * 1000000L;
        until.tv_sec += left / 1000 + until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&k->reported, &k->lock, &until);
        if (!until_none_in_flight)
            break;
    }
    pthread_mutex_unlock(&k->lock);
}

/* Produces message i. Returns 0, 1 when librdkafka's queue is full, or -1 with *err set. */
static int produce_one(kafka_ctx *k, const cn_snap_ref *r, size_t i, rd_kafka_resp_err_t *err)
{
    char key[1024];
    int key_len = record_key(k, r, key, sizeof key);
    size_t len = 0;
    uint8_t *value = key_len < 0 ? NULL : record_value(k, r, &len);
    if (!value || key_len < 0) {
        free(value);
        *err = key_len < 0 ? RD_KAFKA_RESP_ERR__INVALID_ARG : RD_KAFKA_RESP_ERR__FAIL; /* out of memory */
        return -1;
    }
    pthread_mutex_lock(&k->lock);
    k->states[i] = KAFKA_MSG_IN_FLIGHT; /* before producing: the report may come at once */
    k->in_flight++;
    uint32_t generation = k->generation;
    pthread_mutex_unlock(&k->lock);
    /* librdkafka frees value once the message is done (RD_KAFKA_MSG_F_FREE). */
    if (rd_kafka_produce(k->rkt, RD_KAFKA_PARTITION_UA, RD_KAFKA_MSG_F_FREE, value, len, key, (size_t)key_len,
                         opaque_of(generation, i)) == 0)
        return 0;
    *err = rd_kafka_last_error();
    free(value);
    pthread_mutex_lock(&k->lock);
    k->states[i] = KAFKA_MSG_TODO;
    k->in_flight--;
    pthread_mutex_unlock(&k->lock);
    return *err == RD_KAFKA_RESP_ERR__QUEUE_FULL ? 1 : -1;
}

/* Rebuilds a producer that raised a fatal error; its unreported messages are sent again. */
static int recover_from_fatal(kafka_ctx *k)
{
    kafka_producer_close(k);
    pthread_mutex_lock(&k->lock);
    for (size_t i = 0; i < k->n_states; i++) {
        if (k->states[i] == KAFKA_MSG_IN_FLIGHT)
            k->states[i] = KAFKA_MSG_TODO;
    }
    k->in_flight = 0;
    k->generation++; /* reports purged from the old producer no longer count */
    pthread_mutex_unlock(&k->lock);
    if (kafka_producer_open(k) != 0)
        return -1;
    cn_info(k->id, "producer rebuilt after a fatal error; unacknowledged snapshots are sent again");
    return 0;
}

cn_status kafka_export(void *vctx, const cn_chunk *chunk)
{
    kafka_ctx *k = vctx;
    if (chunk->n == 0)
        return CN_OK;
    /* The skywalking format is for the OAP, whose tasks end: continuous tasks stay out, counted. */
    cn_continuous_filter skip = {.reg = cn_component_tasks(k->self)};
    bool for_oap = k->format == KAFKA_FORMAT_SKYWALKING;
    if (for_oap && chunk->task_id && cn_continuous_filter_skips(&skip, chunk->task_id)) {
        cn_metric_add(k->m_continuous, (int64_t)chunk->n);
        return CN_OK;
    }
    if (atomic_load(&k->fatal) || !k->rk) {
        if (recover_from_fatal(k) != 0)
            return CN_RETRY;
    }
    if (begin_chunk(k, chunk) != 0 || (k->json && json_cache_begin(k->json, chunk) != 0))
        return CN_RETRY;

    int64_t deadline = cn_mono_ms() + k->timeout_ms + KAFKA_REPORT_SLACK_MS;
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
    bool counted_full = false;
    for (size_t i = 0; i < chunk->n && !atomic_load(&k->interrupted) && !atomic_load(&k->fatal); i++) {
        bool continuous = for_oap && !chunk->task_id && cn_continuous_filter_skips(&skip, cn_ref_task(&chunk->refs[i]));
        pthread_mutex_lock(&k->lock);
        bool todo = k->states[i] == KAFKA_MSG_TODO;
        if (todo && continuous) {
            k->states[i] = KAFKA_MSG_DELIVERED; /* done with: a retry must not count it again */
            todo = false;
            cn_metric_inc(k->m_continuous);
        }
        pthread_mutex_unlock(&k->lock);
        if (!todo)
            continue; /* delivered, given up, or still in flight from the last attempt */
        int rc;
        while ((rc = produce_one(k, &chunk->refs[i], i, &err)) == 1 && cn_mono_ms() < deadline &&
               !atomic_load(&k->interrupted)) {
            /* Bounded queue: wait for room (the poller serves reports meanwhile), counted once per export. */
            if (!counted_full) {
                cn_metric_inc(k->m_queue_full);
                counted_full = true;
            }
            wait_reports(k, cn_mono_ms() + KAFKA_FULL_WAIT_MS, false);
        }
        if (rc == 1)
            break; /* still full at the deadline: the rest waits for the retry */
        if (rc < 0) {
            cn_log_limited(&k->rl_fail, CN_LOG_ERROR, k->id, "cannot produce a snapshot of task %s: %s",
                           cn_ref_task(&chunk->refs[i]), rd_kafka_err2str(err));
            break;
        }
    }
    if (counted_full)
        cn_log_limited(&k->rl_full, CN_LOG_WARN, k->id,
                       "librdkafka's queue was full (max_queued_messages %lld); the export waited for room",
                       (long long)k->max_queued_messages);
    wait_reports(k, deadline, true);

    size_t delivered = 0, given_up = 0, todo = 0, in_flight = 0;
    pthread_mutex_lock(&k->lock);
    for (size_t i = 0; i < chunk->n; i++) {
        delivered += k->states[i] == KAFKA_MSG_DELIVERED;
        given_up += k->states[i] == KAFKA_MSG_GIVEN_UP;
        todo += k->states[i] == KAFKA_MSG_TODO;
        in_flight += k->states[i] == KAFKA_MSG_IN_FLIGHT;
    }
    if (k->last_error)
        err = k->last_error;
    pthread_mutex_unlock(&k->lock);

    const char *task = chunk->task_id ? chunk->task_id : cn_ref_task(&chunk->refs[0]);
    if (todo + in_flight > 0) {
        /* Messages still in flight stay so: a retry of this chunk waits for them instead of resending. */
        if (!atomic_load(&k->interrupted))
            cn_metric_inc(k->m_chunks_retry);
        cn_log_limited(&k->rl_retry, CN_LOG_WARN, k->id,
                       "%zu of %zu snapshots of task %s not acknowledged yet (%s); they stay queued and "
                       "will be retried",
                       todo + in_flight, chunk->n, task,
                       err ? rd_kafka_err2str(err) : (atomic_load(&k->interrupted) ? "shutdown" : "timed out"));
        return CN_RETRY;
    }
    if (given_up > 0) {
        cn_log_limited(&k->rl_fail, CN_LOG_ERROR, k->id,
                       "%zu of %zu snapshots of task %s dropped: the brokers refused them for good (%s)", given_up,
                       chunk->n, task, rd_kafka_err2str(err));
        /*
         * CN_FAIL makes the core count the whole chunk as dropped. When part of
         * it is on the topic, that count would be wrong: the exact number is
         * canopy_kafka_messages_dropped_total, and the chunk is done.
         */
        return delivered == 0 ? CN_FAIL : CN_OK;
    }
    return CN_OK;
}

/* Shutdown: wait for everything queued in librdkafka, until shutdown_timeout interrupts. */
void kafka_flush(void *vctx)
{
    kafka_ctx *k = vctx;
    if (!k->rk)
        return;
    int64_t started = cn_mono_ms();
    while (rd_kafka_outq_len(k->rk) > 0 && !atomic_load(&k->interrupted) && !atomic_load(&k->fatal))
        rd_kafka_flush(k->rk, 100);
    int left = rd_kafka_outq_len(k->rk);
    if (left > 0)
        cn_warn(k->id, "%d messages were not acknowledged at shutdown; the spool (when configured) sends "
                       "them again at the next start",
                left);
    else
        cn_debug(k->id, "librdkafka's queue drained in %lld ms", (long long)(cn_mono_ms() - started));
}
