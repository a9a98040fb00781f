/*
 * Exporter `kafka`: merged snapshots to a Kafka topic, on librdkafka, in the
 * form SkyWalking's OAP reads from its kafka-fetcher: one serialized
 * skywalking.v3.ThreadSnapshot per record, key taskId + sequence (as the Java
 * agent's KafkaProfileSnapshotSender writes it), topic skywalking-profilings
 * with the fetcher's namespace prefixed ("<namespace>-<topic>").
 *
 * This file: options, check, the producer's life cycle, destroy. Export and
 * delivery reports are in kafka_produce.c, statistics in kafka_stats.c.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kafka.h"

static const char *const format_choices[] = {"skywalking", "jsonl", NULL};
/* librdkafka's own names for compression.type. */
static const char *const compression_choices[] = {"none", "gzip", "lz4", "zstd", "snappy", NULL};

static const cn_option kafka_options[] = {
    {.type = CN_OPT_STRLIST, .name = "brokers", .offset = offsetof(kafka_ctx, brokers), .required = true,
     .description = "Bootstrap brokers as host:port; librdkafka learns the rest of the cluster from them."},
    {.type = CN_OPT_STR, .name = "topic", .default_value = "skywalking-profilings",
     .offset = offsetof(kafka_ctx, topic),
     .description = "Topic of the snapshots; the OAP's kafka-fetcher reads skywalking-profilings "
                    "(its topicNameOfProfiling)."},
    {.type = CN_OPT_STR, .name = "namespace", .offset = offsetof(kafka_ctx, namespace_),
     .description = "The kafka-fetcher's namespace: when set, the topic is <namespace>-<topic>, exactly "
                    "as the OAP and SkyWalking's agents join them."},
    {.type = CN_OPT_ENUM, .name = "format", .default_value = "skywalking", .offset = offsetof(kafka_ctx, format),
     .choices = format_choices,
     .description = "skywalking: each record is one serialized skywalking.v3.ThreadSnapshot, key "
                    "taskId+sequence, as the OAP's kafka-fetcher reads them; jsonl: each record is the file "
                    "exporter's JSON line of the snapshot (without the newline), key taskId."},
    {.type = CN_OPT_ENUM, .name = "compression", .default_value = "lz4", .offset = offsetof(kafka_ctx, compression),
     .choices = compression_choices,
     .description = "Compression of each produced batch (librdkafka's compression.type); docs/performance.md "
                    "has the bytes per snapshot of each."},
    {.type = CN_OPT_DURATION, .name = "timeout", .default_value = "30s", .offset = offsetof(kafka_ctx, timeout_ms),
     .min = 1000, .max = 3600 * 1000,
     .description = "How long a snapshot may wait for the brokers' acknowledgement (librdkafka's "
                    "message.timeout.ms). Past it the export fails and the chunk is retried; only the "
                    "snapshots without an acknowledgement are sent again."},
    {.type = CN_OPT_INT, .name = "max_queued_messages", .default_value = "100000",
     .offset = offsetof(kafka_ctx, max_queued_messages), .min = 1, .max = 10000000,
     .description = "Bound of librdkafka's own queue, in messages (queue.buffering.max.messages). When "
                    "full, the export waits for room and counts it in canopy_kafka_queue_full_total."},
    {.type = CN_OPT_SIZE, .name = "max_queued_bytes", .default_value = "64MiB",
     .offset = offsetof(kafka_ctx, max_queued_bytes), .min = 1 << 20, .max = 2047LL << 20,
     .description = "Bound of librdkafka's own queue, in bytes (queue.buffering.max.kbytes)."},
    {.type = CN_OPT_DURATION, .name = "stats_interval", .default_value = "5s",
     .offset = offsetof(kafka_ctx, stats_interval_ms), .min = 100, .max = 3600 * 1000,
     .description = "How often librdkafka's statistics refresh the canopy_kafka_* gauges on /metrics."},
    {.type = CN_OPT_STRMAP, .name = "producer", .offset = offsetof(kafka_ctx, producer),
     .description = "Any other librdkafka producer property, passed unchanged (security.protocol, sasl.*, "
                    "ssl.*, linger.ms, ...); it overrides canopy's own settings (acks=all and "
                    "enable.idempotence=true by default). An unknown property or a bad value is a "
                    "config error with librdkafka's message."},
    CN_OPT_END,
};

/* ---- configuration -------------------------------------------------------- */

/* Kafka's rule for topic names: 1..249 of [A-Za-z0-9._-]. */
static const char *topic_problem(const char *t)
{
    size_t n = strlen(t);
    if (n == 0)
        return "is empty";
    if (n > 249)
        return "is longer than Kafka's 249 characters";
    if (strcmp(t, ".") == 0 || strcmp(t, "..") == 0)
        return "is not a valid topic name";
    for (const char *p = t; *p; p++) {
        if (!isalnum((unsigned char)*p) && *p != '.' && *p != '_' && *p != '-')
            return "has a character outside Kafka's [A-Za-z0-9._-]";
    }
    return NULL;
}

/* The OAP's join: a blank namespace leaves the topic as it is. */
static char *join_topic(const char *namespace_, const char *topic)
{
    bool blank = true;
    for (const char *p = namespace_; p && *p; p++)
        blank = blank && isspace((unsigned char)*p);
    size_t len = (blank ? 0 : strlen(namespace_) + 1) + strlen(topic) + 1;
    char *out = malloc(len);
    if (out)
        snprintf(out, len, "%s%s%s", blank ? "" : namespace_, blank ? "" : "-", topic);
    return out;
}

/* A problem with the producer's settings: a config error at `at` (validate), or a log line (run). */
static void CN_PRINTF(4, 5) conf_problem(const kafka_ctx *k, cn_diag *d, const cn_node *at, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (d)
        cn_diag_error(d, at, "%s", msg);
    else
        cn_error(k->id, "%s", msg);
}

/* "a:1,b:2": librdkafka's bootstrap.servers. */
static char *join_brokers(const cn_strlist *brokers)
{
    size_t len = 1;
    for (size_t i = 0; i < brokers->n; i++)
        len += strlen(brokers->v[i]) + 1;
    char *out = malloc(len);
    if (!out)
        return NULL;
    out[0] = '\0';
    for (size_t i = 0; i < brokers->n; i++) {
        if (i)
            strcat(out, ",");
        strcat(out, brokers->v[i]);
    }
    return out;
}

/*
 * The producer's configuration, the same for `validate` and `run`: canopy's
 * settings first, then the `producer:` map over them. With d, problems are
 * config errors at their place in the file; without, they are logged.
 */
static rd_kafka_conf_t *build_conf(kafka_ctx *k, cn_component *self, cn_diag *d)
{
    const cn_node *node = cn_component_node(self);
    const cn_node *pnode = cn_node_get(node, "producer");
    char err[512], timeout[32], max_msgs[32], max_kb[32], stats[32];
    char *servers = join_brokers(&k->brokers);
    rd_kafka_conf_t *conf = servers ? rd_kafka_conf_new() : NULL;
    if (!conf) {
        conf_problem(k, d, node, "out of memory");
        free(servers);
        return NULL;
    }
    snprintf(timeout, sizeof timeout, "%lld", (long long)k->timeout_ms);
    snprintf(max_msgs, sizeof max_msgs, "%lld", (long long)k->max_queued_messages);
    snprintf(max_kb, sizeof max_kb, "%lld", (long long)(k->max_queued_bytes / 1024));
    snprintf(stats, sizeof stats, "%lld", (long long)k->stats_interval_ms);
    const struct {
        const char *key, *value;
    } ours[] = {
        {"bootstrap.servers", servers},
        {"client.id", "canopy"},
        /* Delivery as docs/kafka.md promises: every in-sync replica, no duplicates from librdkafka's retries. */
        {"acks", "all"},
        {"enable.idempotence", "true"},
        {"compression.type", compression_choices[k->compression]},
        {"message.timeout.ms", timeout},
        {"queue.buffering.max.messages", max_msgs},
        {"queue.buffering.max.kbytes", max_kb},
        {"statistics.interval.ms", stats},
    };
    bool bad = false;
    for (size_t i = 0; i < CN_ARRAY_LEN(ours) && !bad; i++) {
        if (rd_kafka_conf_set(conf, ours[i].key, ours[i].value, err, sizeof err) != RD_KAFKA_CONF_OK) {
            conf_problem(k, d, node, "exporter %s: librdkafka refused %s=%s: %s", k->id, ours[i].key,
                         ours[i].value, err);
            bad = true;
        }
    }
    bool ours_ok = !bad;
    for (size_t i = 0; i + 1 < k->producer.n && ours_ok; i += 2) { /* every bad property, not only the first */
        const char *key = k->producer.v[i], *value = k->producer.v[i + 1];
        /* i / 2 is the pair's place in the map, as set_strmap copied them in order. */
        const cn_node *at = pnode && pnode->kind == CN_NODE_MAP && i / 2 < pnode->n ? pnode->keys[i / 2] : node;
        /* Set through canopy's own options, so the docs and the logs stay true. */
        if (strcmp(key, "bootstrap.servers") == 0 || strcmp(key, "metadata.broker.list") == 0)
            conf_problem(k, d, at, "producer.%s: set `brokers` instead", key);
        else if (strcmp(key, "statistics.interval.ms") == 0)
            conf_problem(k, d, at, "producer.%s: set `stats_interval` instead", key);
        else if (rd_kafka_conf_set(conf, key, value, err, sizeof err) != RD_KAFKA_CONF_OK)
            conf_problem(k, d, at, "producer.%s: %s", key, err);
        else
            continue;
        bad = true;
    }
    /*
     * librdkafka checks this combination only when the producer is created;
     * say it at validate time, where the user set acks.
     */
    char idem[16] = "", acks[16] = "";
    size_t idem_len = sizeof idem, acks_len = sizeof acks;
    if (!bad && rd_kafka_conf_get(conf, "enable.idempotence", idem, &idem_len) == RD_KAFKA_CONF_OK &&
        rd_kafka_conf_get(conf, "acks", acks, &acks_len) == RD_KAFKA_CONF_OK && strcmp(idem, "true") == 0 &&
        strcmp(acks, "-1") != 0 && strcmp(acks, "all") != 0) {
        const cn_node *at = cn_node_get(pnode, "acks");
        conf_problem(k, d, at ? at : node,
                     "producer.acks: %s needs enable.idempotence: \"false\" (canopy turns the idempotent "
                     "producer on by default)", acks);
        bad = true;
    }
    free(servers);
    if (bad) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    return conf;
}

static int kafka_check(void *vctx, cn_component *self, cn_diag *d)
{
    kafka_ctx *k = vctx;
    const cn_node *node = cn_component_node(self);
    size_t before = d->n_errors;
    k->id = cn_component_id(self);

    const cn_node *bnode = cn_options_node(node, "brokers");
    if (k->brokers.n == 0)
        cn_diag_error(d, bnode ? bnode : node, "exporter %s: brokers lists no Kafka broker", k->id);
    for (size_t i = 0; i < k->brokers.n; i++) {
        const char *b = k->brokers.v[i], *colon = strrchr(b, ':');
        char *end = NULL;
        long port = colon ? strtol(colon + 1, &end, 10) : 0;
        if (!colon || colon == b || !end || *end || port < 1 || port > 65535 || strchr(b, ',') ||
            strchr(b, ' ')) {
            const cn_node *at = bnode;
            if (bnode && bnode->kind == CN_NODE_SEQ && i < bnode->n)
                at = bnode->items[i];
            cn_diag_error(d, at ? at : node, "broker \"%s\" is not host:port (Kafka's port is usually 9092)", b);
        }
    }
    char *full = join_topic(k->namespace_, k->topic ? k->topic : "");
    const char *why = full ? topic_problem(full) : "cannot be built: out of memory";
    if (why) {
        const cn_node *at = cn_node_get(node, "namespace") && k->topic && !topic_problem(k->topic)
                                ? cn_options_node(node, "namespace")
                                : cn_options_node(node, "topic");
        cn_diag_error(d, at, "topic \"%s\" %s", full ? full : "", why);
    }
    free(full);
    /* librdkafka judges every property itself, with its own words. */
    rd_kafka_conf_t *conf = build_conf(k, self, d);
    if (conf)
        rd_kafka_conf_destroy(conf);
    return d->n_errors == before ? 0 : -1;
}

/* ---- the producer ---------------------------------------------------------- */

static void kafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    kafka_ctx *k = rd_kafka_opaque(rk);
    /* syslog levels: 0..3 errors, 4 warning, 5..6 info, 7 debug. */
    cn_log_level lvl = level <= 3 ? CN_LOG_ERROR : level == 4 ? CN_LOG_WARN : level <= 6 ? CN_LOG_INFO : CN_LOG_DEBUG;
    cn_log(lvl, k ? k->id : "kafka", "librdkafka %s: %s", fac, buf);
}

static void kafka_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    kafka_ctx *k = opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, why, sizeof why);
        cn_error(k->id, "librdkafka fatal error %s: %s; the producer will be rebuilt and undelivered "
                        "snapshots sent again",
                 rd_kafka_err2name(orig), why);
        cn_metric_inc(k->m_fatal);
        atomic_store(&k->fatal, true);
        return;
    }
    /* Transport errors repeat every reconnect; the delivery outcome is what counts. */
    cn_log_limited(&k->rl_retry, CN_LOG_WARN, k->id, "librdkafka: %s: %s",
                   rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

/* librdkafka's callbacks (delivery reports, statistics, errors) run here. */
static void *poller_main(void *arg)
{
    kafka_ctx *k = arg;
    while (!atomic_load(&k->poller_stop))
        rd_kafka_poll(k->rk, 100);
    return NULL;
}

int kafka_producer_open(kafka_ctx *k)
{
    rd_kafka_conf_t *conf = build_conf(k, k->self, NULL);
    if (!conf)
        return -1;
    rd_kafka_conf_set_opaque(conf, k);
    rd_kafka_conf_set_dr_msg_cb(conf, kafka_delivery_report);
    rd_kafka_conf_set_stats_cb(conf, kafka_stats);
    rd_kafka_conf_set_error_cb(conf, kafka_error);
    rd_kafka_conf_set_log_cb(conf, kafka_log);
    char err[512];
    k->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!k->rk) {
        rd_kafka_conf_destroy(conf); /* owned by rd_kafka_new only on success */
        cn_error(k->id, "cannot create the Kafka producer: %s", err);
        return -1;
    }
    if (!(k->rkt = rd_kafka_topic_new(k->rk, k->full_topic, NULL))) {
        cn_error(k->id, "cannot use topic %s: %s", k->full_topic, rd_kafka_err2str(rd_kafka_last_error()));
        return -1;
    }
    atomic_store(&k->fatal, false);
    atomic_store(&k->poller_stop, false);
    if (pthread_create(&k->poller, NULL, poller_main, k) != 0) {
        cn_error(k->id, "cannot start the Kafka poller thread");
        return -1;
    }
    k->poller_started = true;
    return 0;
}

void kafka_producer_close(kafka_ctx *k)
{
    if (k->poller_started) {
        atomic_store(&k->poller_stop, true);
        pthread_join(k->poller, NULL);
        k->poller_started = false;
    }
    if (k->rkt) {
        rd_kafka_topic_destroy(k->rkt);
        k->rkt = NULL;
    }
    if (k->rk) {
        /* Whatever is still queued was not acknowledged: the spool or a retry has it. */
        rd_kafka_purge(k->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_poll(k->rk, 0); /* serves the purged messages' reports, which free them */
        rd_kafka_destroy(k->rk);
        k->rk = NULL;
    }
}

static void make_metrics(kafka_ctx *k)
{
    const char *l = cn_component_labels(k->self);
    k->m_delivered = cn_counter("canopy_kafka_messages_delivered_total",
                                "Snapshots the brokers acknowledged (a successful delivery report)", l);
    k->m_delivered_bytes = cn_counter("canopy_kafka_bytes_delivered_total",
                                      "Value bytes of the acknowledged snapshots, before compression", l);
    k->m_failed = cn_counter("canopy_kafka_messages_failed_total",
                             "Delivery reports with an error (the snapshot is sent again unless the "
                             "error is permanent)", l);
    k->m_failed_bytes = cn_counter("canopy_kafka_bytes_failed_total",
                                   "Value bytes of the snapshots whose delivery report had an error", l);
    k->m_given_up = cn_counter("canopy_kafka_messages_dropped_total",
                               "Snapshots dropped after an error no retry can fix (e.g. too large, not authorized)", l);
    k->m_queue_full = cn_counter("canopy_kafka_queue_full_total",
                                 "Times librdkafka's queue (max_queued_messages, max_queued_bytes) was full "
                                 "and the export waited for room", l);
    k->m_continuous = cn_counter("canopy_kafka_snapshots_continuous_total",
                                 "Snapshots of continuous tasks left out of format skywalking: the OAP's tasks end", l);
    k->m_chunks_retry = cn_counter("canopy_kafka_chunks_retried_total",
                                   "Exports handed back for retry because a snapshot was not acknowledged", l);
    k->m_fatal = cn_counter("canopy_kafka_fatal_errors_total",
                            "librdkafka fatal errors (the producer is rebuilt)", l);
    kafka_stats_metrics(k);
}

static int kafka_start(void *vctx, cn_component *self)
{
    kafka_ctx *k = vctx;
    k->self = self;
    k->id = cn_component_id(self);
    k->rl_fail.interval_ms = 10000;
    k->rl_retry.interval_ms = 10000;
    k->rl_full.interval_ms = 10000;
    make_metrics(k);
    if (pthread_mutex_init(&k->lock, NULL) != 0)
        return -1;
    if (pthread_cond_init(&k->reported, NULL) != 0) {
        pthread_mutex_destroy(&k->lock);
        return -1;
    }
    k->sync_ok = true;
    if (k->format == KAFKA_FORMAT_JSONL && !(k->json = json_cache_new())) {
        cn_error(k->id, "out of memory");
        return -1;
    }
    if (!(k->full_topic = join_topic(k->namespace_, k->topic))) {
        cn_error(k->id, "out of memory");
        return -1;
    }
    if (kafka_producer_open(k) != 0)
        return -1;
    /* What librdkafka will do, after `producer:` had its say. */
    char acks[16] = "?", idem[16] = "?", codec[16] = "?";
    size_t acks_len = sizeof acks, idem_len = sizeof idem, codec_len = sizeof codec;
    const rd_kafka_conf_t *conf = rd_kafka_conf(k->rk);
    rd_kafka_conf_get(conf, "acks", acks, &acks_len);
    rd_kafka_conf_get(conf, "enable.idempotence", idem, &idem_len);
    rd_kafka_conf_get(conf, "compression.codec", codec, &codec_len);
    cn_info(k->id, "producing %s records to topic %s on %s (acks=%s, idempotent=%s, compression %s, timeout %lld ms)",
            format_choices[k->format], k->full_topic, k->brokers.v[0], strcmp(acks, "-1") == 0 ? "all" : acks, idem,
            codec, (long long)k->timeout_ms);
    return 0;
}

/* Shutdown ran out of time: an export or flush waiting on the brokers stops waiting. */
static void kafka_interrupt(void *vctx)
{
    kafka_ctx *k = vctx;
    atomic_store(&k->interrupted, true);
    if (k->sync_ok) {
        pthread_mutex_lock(&k->lock);
        pthread_cond_broadcast(&k->reported);
        pthread_mutex_unlock(&k->lock);
    }
}

static void kafka_destroy(void *vctx)
{
    kafka_ctx *k = vctx;
    /* Partly started contexts come here too: every step checks what exists. */
    kafka_producer_close(k);
    free(k->full_topic);
    k->full_topic = NULL;
    free(k->states);
    k->states = NULL;
    cn_sw_snapshot_encoder_free(&k->snap_enc);
    json_cache_free(k->json);
    k->json = NULL;
    free(k->line.data);
    k->line.data = NULL;
    if (k->sync_ok) {
        pthread_cond_destroy(&k->reported);
        pthread_mutex_destroy(&k->lock);
        k->sync_ok = false;
    }
    /* The options themselves are freed by the core (cn_options_free). */
}

const cn_exporter_plugin cn_exporter_kafka = {
    .base =
        {
            .kind = CN_EXPORTER,
            .type = "kafka",
            .description = "Sends snapshots to a Kafka topic as SkyWalking's OAP kafka-fetcher reads them "
                           "(docs/kafka.md).",
            .ctx_size = sizeof(kafka_ctx),
            .options = kafka_options,
            .cb_check = kafka_check,
            .cb_start = kafka_start,
            .cb_destroy = kafka_destroy,
        },
    .cb_export = kafka_export,
    .cb_flush = kafka_flush,
    .cb_interrupt = kafka_interrupt,
};
