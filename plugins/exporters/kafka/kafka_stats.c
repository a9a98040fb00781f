/*
 * librdkafka's statistics (a JSON document every stats_interval, on the
 * poller thread) as canopy gauges on /metrics. The counters of delivered and
 * failed messages come from the delivery reports instead (kafka_produce.c):
 * they are exact, and the statistics only sample.
 */
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "kafka.h"

void kafka_stats_metrics(kafka_ctx *k)
{
    const char *l = cn_component_labels(k->self);
    k->m_queued_msgs = cn_gauge("canopy_kafka_queued_messages",
                                "Messages in librdkafka's queue, produced and not yet reported (msg_cnt)", l);
    k->m_queued_bytes = cn_gauge("canopy_kafka_queued_bytes", "Bytes of those messages (msg_size)", l);
    k->m_in_flight_msgs = cn_gauge("canopy_kafka_in_flight_messages",
                                   "Messages sent to the brokers and not yet answered, over all brokers", l);
    k->m_tx_bytes = cn_gauge("canopy_kafka_sent_bytes",
                             "Request bytes written to the brokers since the producer was built: on the wire, "
                             "compressed (tx_bytes)", l);
    k->m_tx_msgs = cn_gauge("canopy_kafka_sent_messages",
                            "Messages sent to the brokers since the producer was built, resends included "
                            "(txmsgs): past the delivered count, retriable errors librdkafka fixed itself", l);
}

static int64_t json_int(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : 0;
}

static kafka_broker_metrics *broker_metrics(kafka_ctx *k, const char *name)
{
    for (size_t i = 0; i < k->n_brokers_m; i++) {
        if (strcmp(k->brokers_m[i].name, name) == 0)
            return &k->brokers_m[i];
    }
    if (k->n_brokers_m == KAFKA_MAX_BROKER_METRICS)
        return NULL; /* a cluster this large is summed in the totals only */
    kafka_broker_metrics *b = &k->brokers_m[k->n_brokers_m++];
    snprintf(b->name, sizeof b->name, "%s", name);
    char labels[384];
    /* Broker names are host:port/id: no quote or backslash to escape. */
    snprintf(labels, sizeof labels, "%s,broker=\"%s\"", cn_component_labels(k->self), b->name);
    b->up = cn_gauge("canopy_kafka_broker_up", "1 while librdkafka's connection to the broker is UP", labels);
    b->rtt_us = cn_gauge("canopy_kafka_broker_rtt_microseconds",
                         "Average request round trip to the broker over the last statistics window", labels);
    b->in_flight = cn_gauge("canopy_kafka_broker_in_flight_requests",
                            "Requests sent to the broker and not yet answered (outbuf + waitresp)", labels);
    return b;
}

int kafka_stats(rd_kafka_t *rk, char *json, size_t json_len, void *opaque)
{
    kafka_ctx *k = opaque;
    json_t *root = json_loadb(json, json_len, 0, NULL);
    if (!root)
        return 0; /* 0: librdkafka frees json */
    cn_metric_set(k->m_queued_msgs, json_int(root, "msg_cnt"));
    cn_metric_set(k->m_queued_bytes, json_int(root, "msg_size"));
    cn_metric_set(k->m_tx_bytes, json_int(root, "tx_bytes"));
    int64_t in_flight = 0;
    const char *name;
    json_t *b;
    json_object_foreach(json_object_get(root, "brokers"), name, b)
    {
        /* The bootstrap entries (id -1) are replaced by the real brokers once known. */
        if (json_int(b, "nodeid") < 0)
            continue;
        int64_t waiting = json_int(b, "waitresp_msg_cnt") + json_int(b, "outbuf_msg_cnt");
        in_flight += waiting;
        kafka_broker_metrics *m = broker_metrics(k, name);
        if (!m)
            continue;
        json_t *state = json_object_get(b, "state");
        cn_metric_set(m->up, json_is_string(state) && strcmp(json_string_value(state), "UP") == 0);
        cn_metric_set(m->rtt_us, json_int(json_object_get(b, "rtt"), "avg"));
        cn_metric_set(m->in_flight, json_int(b, "waitresp_cnt") + json_int(b, "outbuf_cnt"));
    }
    cn_metric_set(k->m_in_flight_msgs, in_flight);
    cn_metric_set(k->m_tx_msgs, json_int(root, "txmsgs"));
    json_decref(root);
    CN_UNUSED(rk);
    return 0;
}
