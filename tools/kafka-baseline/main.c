/*
 * canopy-kafka-baseline: the transport baseline of the Kafka benchmark. Reads
 * every record of a topic (canopy's output: encoded ThreadSnapshots and their
 * keys) into memory, untimed, then produces the very same records to another
 * topic with a plain librdkafka producer and the settings canopy uses (acks=all,
 * idempotence, the given compression), and times it until every delivery
 * report is in. What canopy does on top (nng, merge, encoding, accounting) is
 * the difference.
 *
 * Last line: messages=<n> seconds=<s> rate=<messages/s> wire_bytes=<request bytes sent>
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

typedef struct record {
    void *key, *value;
    size_t key_len, value_len;
} record;

typedef struct run {
    size_t delivered, failed;
    int64_t wire_bytes;
} run;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void usage(FILE *out)
{
    fputs("usage: canopy-kafka-baseline --brokers LIST --from TOPIC --to TOPIC [--count N] [--compression C]\n"
          "Reads N records (default: until the topic is idle for 3 s) of topic FROM, then produces them\n"
          "to topic TO with acks=all, idempotence and compression C (default lz4), timed until every\n"
          "delivery report is in. Prints messages=, seconds=, rate= and wire_bytes=.\n",
          out);
}

static int set(rd_kafka_conf_t *conf, const char *k, const char *v)
{
    char err[256];
    if (rd_kafka_conf_set(conf, k, v, err, sizeof err) != RD_KAFKA_CONF_OK) {
        fprintf(stderr, "canopy-kafka-baseline: %s=%s: %s\n", k, v, err);
        return -1;
    }
    return 0;
}

static record *read_topic(const char *brokers, const char *topic, size_t want, size_t *n_out)
{
    char err[256];
    /* A group of its own per topic: no rebalance waits on the member that read another topic. */
    char group[512];
    snprintf(group, sizeof group, "canopy-kafka-baseline-%s", topic);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (set(conf, "bootstrap.servers", brokers) || set(conf, "group.id", group) ||
        set(conf, "auto.offset.reset", "earliest") || set(conf, "enable.auto.commit", "false")) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "canopy-kafka-baseline: %s\n", err);
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *subs = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(subs, topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_subscribe(rk, subs);
    rd_kafka_topic_partition_list_destroy(subs);
    size_t n = 0, cap = 1024;
    record *recs = malloc(cap * sizeof *recs);
    double last = now_s();
    /* Until `want` records came, or the topic was idle for 3 s (10 s with `want`: a short read is an error). */
    double idle = want ? 10.0 : 3.0;
    while (recs && (!want || n < want) && now_s() - last < idle) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
        if (!m)
            continue;
        if (!m->err) {
            if (n == cap) {
                record *grown = realloc(recs, 2 * cap * sizeof *recs);
                if (!grown) {
                    rd_kafka_message_destroy(m);
                    break;
                }
                recs = grown;
                cap *= 2;
            }
            record *r = &recs[n];
            r->key_len = m->key_len;
            r->value_len = m->len;
            r->key = malloc(m->key_len + 1);
            r->value = malloc(m->len + 1);
            if (!r->key || !r->value) {
                free(r->key);
                free(r->value);
                rd_kafka_message_destroy(m);
                break;
            }
            memcpy(r->key, m->key, m->key_len);
            memcpy(r->value, m->payload, m->len);
            n++;
            last = now_s();
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    *n_out = n;
    return recs;
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    run *r = opaque;
    if (m->err)
        r->failed++;
    else
        r->delivered++;
    (void)rk;
}

static int on_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    /* The top-level "tx_bytes": request bytes written to the brokers' sockets. */
    run *r = opaque;
    const char *p = strstr(json, "\"tx_bytes\":");
    if (p)
        r->wire_bytes = strtoll(p + 11, NULL, 10);
    (void)rk;
    (void)len;
    return 0;
}

int main(int argc, char **argv)
{
    const char *brokers = NULL, *from = NULL, *to = NULL, *compression = "lz4";
    size_t count = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (i + 1 < argc && !strcmp(argv[i], "--brokers")) {
            brokers = argv[++i];
        } else if (i + 1 < argc && !strcmp(argv[i], "--from")) {
            from = argv[++i];
        } else if (i + 1 < argc && !strcmp(argv[i], "--to")) {
            to = argv[++i];
        } else if (i + 1 < argc && !strcmp(argv[i], "--count")) {
            count = (size_t)strtoull(argv[++i], NULL, 10);
        } else if (i + 1 < argc && !strcmp(argv[i], "--compression")) {
            compression = argv[++i];
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (!brokers || !from || !to) {
        usage(stderr);
        return 2;
    }
    size_t n = 0;
    record *recs = read_topic(brokers, from, count, &n);
    if (!recs || n == 0 || (count && n < count)) {
        fprintf(stderr, "canopy-kafka-baseline: read %zu records of %s, wanted %zu\n", n, from, count);
        free(recs);
        return 1;
    }

    run r = {0};
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (set(conf, "bootstrap.servers", brokers) || set(conf, "acks", "all") ||
        set(conf, "enable.idempotence", "true") || set(conf, "compression.type", compression) ||
        set(conf, "queue.buffering.max.messages", "100000") || set(conf, "statistics.interval.ms", "100")) {
        rd_kafka_conf_destroy(conf);
        return 2;
    }
    rd_kafka_conf_set_opaque(conf, &r);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_stats_cb(conf, on_stats);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "canopy-kafka-baseline: %s\n", err);
        rd_kafka_conf_destroy(conf);
        return 1;
    }
    double t0 = now_s();
    for (size_t i = 0; i < n; i++) {
        for (;;) {
            rd_kafka_resp_err_t e =
                rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(to), RD_KAFKA_V_KEY(recs[i].key, recs[i].key_len),
                                  RD_KAFKA_V_VALUE(recs[i].value, recs[i].value_len), RD_KAFKA_V_END);
            if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
                break;
            if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
                fprintf(stderr, "canopy-kafka-baseline: produce: %s\n", rd_kafka_err2str(e));
                return 1;
            }
            rd_kafka_poll(rk, 10);
        }
        rd_kafka_poll(rk, 0);
    }
    while (r.delivered + r.failed < n)
        rd_kafka_poll(rk, 10);
    double seconds = now_s() - t0;
    /* One more statistics round, so wire_bytes covers the last requests. */
    double until = now_s() + 0.3;
    while (now_s() < until)
        rd_kafka_poll(rk, 50);
    printf("messages=%zu failed=%zu seconds=%.3f rate=%.0f wire_bytes=%" PRId64 "\n", r.delivered, r.failed,
           seconds, (double)r.delivered / seconds, r.wire_bytes);
    rd_kafka_destroy(rk);
    for (size_t i = 0; i < n; i++) {
        free(recs[i].key);
        free(recs[i].value);
    }
    free(recs);
    return r.failed ? 1 : 0;
}
