/*
 * Private to the kafka exporter: the one context struct shared by its files
 * (kafka.c: options, check, start, destroy; kafka_produce.c: export with
 * delivery-report accounting and flush; kafka_stats.c: librdkafka's
 * statistics as canopy metrics).
 */
#ifndef CN_KAFKA_H
#define CN_KAFKA_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "canopy/plugin.h"
#include "jsonl/jsonl.h"
#include "skywalking/sw_snapshot.h"

enum kafka_format { KAFKA_FORMAT_SKYWALKING = 0, KAFKA_FORMAT_JSONL };

/* What became of one message of the chunk being exported. */
enum kafka_msg_state {
    KAFKA_MSG_TODO = 0,  /* not produced in this attempt yet, or to be produced again */
    KAFKA_MSG_IN_FLIGHT, /* handed to librdkafka, no delivery report yet */
    KAFKA_MSG_DELIVERED, /* the brokers acknowledged it (acks as configured) */
    KAFKA_MSG_GIVEN_UP,  /* failed with an error no retry can fix; counted */
};

#define KAFKA_MAX_BROKER_METRICS 64

typedef struct kafka_broker_metrics {
    char name[128];      /* librdkafka's "host:port/id" */
    cn_metric *up;       /* 1 while librdkafka's state is UP */
    cn_metric *rtt_us;   /* average round trip over the last stats window */
    cn_metric *in_flight;/* requests sent, not answered */
} kafka_broker_metrics;

typedef struct kafka_ctx {
    /* ---- options, filled by the core from the config map ---- */
    cn_strlist brokers;
    char *topic;
    char *namespace_;
    int format;
    int compression;
    int64_t timeout_ms;
    int64_t max_queued_messages;
    int64_t max_queued_bytes;
    int64_t stats_interval_ms;
    cn_strlist producer; /* key, value, ...: librdkafka properties, unchanged */

    /* ---- runtime ---- */
    cn_component *self;
    const char *id;      /* component id, for logs */
    char *full_topic;    /* namespace-topic, as the OAP's kafka-fetcher names it */
    rd_kafka_t *rk;
    rd_kafka_topic_t *rkt;
    atomic_bool interrupted; /* shutdown ran out of time (cb_interrupt) */
    atomic_bool fatal;       /* librdkafka raised a fatal error: the producer must be rebuilt */

    /* librdkafka's callbacks run on the poller thread; `lock` guards the states. */
    pthread_t poller;
    bool poller_started;
    atomic_bool poller_stop;
    pthread_mutex_t lock;
    pthread_cond_t reported; /* a delivery report arrived */
    bool sync_ok;

    /*
     * The chunk being exported, one state per message. A retry of the same
     * chunk (same id) produces only what is not delivered, so the brokers see
     * each snapshot once unless a delivery report itself was lost.
     */
    uint64_t chunk_id;
    uint32_t generation; /* tags messages, so late reports of an older chunk are told apart */
    uint8_t *states;
    size_t states_cap;
    size_t n_states;
    size_t in_flight;    /* of the current chunk */
    rd_kafka_resp_err_t last_error;

    cn_sw_snapshot_encoder snap_enc; /* format skywalking */
    json_cache *json;                /* format jsonl: the chunk's strings, JSON-encoded once */
    cn_jsonl_buf line;

    /* Metrics kept by the exporter itself. */
    cn_metric *m_delivered;
    cn_metric *m_delivered_bytes;
    cn_metric *m_failed;
    cn_metric *m_failed_bytes;
    cn_metric *m_given_up;
    cn_metric *m_queue_full;
    cn_metric *m_continuous;
    cn_metric *m_chunks_retry;
    cn_metric *m_fatal;
    /* Metrics from librdkafka's statistics (kafka_stats.c). */
    cn_metric *m_queued_msgs;
    cn_metric *m_queued_bytes;
    cn_metric *m_in_flight_msgs;
    cn_metric *m_tx_bytes;
    cn_metric *m_tx_msgs;
    kafka_broker_metrics brokers_m[KAFKA_MAX_BROKER_METRICS];
    size_t n_brokers_m;

    cn_ratelimit rl_fail;
    cn_ratelimit rl_retry;
    cn_ratelimit rl_full;
} kafka_ctx;

/* ---- kafka.c ---- */
/* Builds the producer (and its poller thread); kafka_producer_close undoes it. */
int kafka_producer_open(kafka_ctx *k);
void kafka_producer_close(kafka_ctx *k);

/* ---- kafka_produce.c ---- */
void kafka_delivery_report(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque);
cn_status kafka_export(void *ctx, const cn_chunk *chunk);
void kafka_flush(void *ctx);
bool kafka_error_is_permanent(rd_kafka_resp_err_t err);

/* ---- kafka_stats.c ---- */
/* librdkafka's stats_cb: parses the JSON and sets the metrics. */
int kafka_stats(rd_kafka_t *rk, char *json, size_t json_len, void *opaque);
void kafka_stats_metrics(kafka_ctx *k);

#endif
