/*
 * canopy-kafka-mock: librdkafka's mock Kafka cluster (rdkafka_mock.h) as a
 * process, for canopy's Kafka tests and benchmark. It speaks the real Kafka
 * protocol on loopback, so canopy's producer and an independent consumer
 * (python3-confluent-kafka) both talk to it as to a real cluster.
 *
 * Prints `bootstrap=<host:port,...>` on stdout once listening, then reads one
 * command per line on stdin and answers `ok` or `error: ...`:
 *   topic NAME PARTITIONS     create a topic (replication factor 3)
 *   down ID | up ID           take broker ID (1..N, or -1 for all) down or up
 *   produce-errors N ERR...   fail the next N produce requests with the given
 *                             error names or codes, in turn (e.g. NOT_LEADER_FOR_PARTITION)
 *   quit                      (or end of input) stop
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define PRODUCE_API_KEY 0
#define MAX_ERRORS 64

static void usage(FILE *out)
{
    fputs("usage: canopy-kafka-mock [--brokers N]\n"
          "Runs librdkafka's mock Kafka cluster on loopback (3 brokers by default), prints\n"
          "bootstrap=<addresses>, then takes commands on stdin, one per line:\n"
          "  topic NAME PARTITIONS | down ID | up ID | produce-errors N ERR... | quit\n"
          "ID is a broker id (1..N) or -1 for all. ERR is a Kafka error name or code.\n",
          out);
}

/* A Kafka error by its name (with or without RD_KAFKA_RESP_ERR_) or number. */
static int parse_error(const char *text, rd_kafka_resp_err_t *out)
{
    char *end;
    long code = strtol(text, &end, 10);
    if (*text && !*end) {
        *out = (rd_kafka_resp_err_t)code;
        return 0;
    }
    const struct rd_kafka_err_desc *descs;
    size_t n;
    rd_kafka_get_err_descs(&descs, &n);
    const char *name = strncmp(text, "RD_KAFKA_RESP_ERR_", 18) == 0 ? text + 18 : text;
    for (size_t i = 0; i < n; i++) {
        if (descs[i].name && strcmp(descs[i].name, name) == 0) {
            *out = descs[i].code;
            return 0;
        }
    }
    return -1;
}

static void command(rd_kafka_mock_cluster_t *mc, char *line)
{
    char *argv[MAX_ERRORS + 3];
    int argc = 0;
    for (char *tok = strtok(line, " \t\r\n"); tok && argc < (int)(sizeof argv / sizeof *argv);
         tok = strtok(NULL, " \t\r\n"))
        argv[argc++] = tok;
    if (argc == 0)
        return;
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (strcmp(argv[0], "topic") == 0 && argc == 3) {
        err = rd_kafka_mock_topic_create(mc, argv[1], atoi(argv[2]), 3);
    } else if ((strcmp(argv[0], "down") == 0 || strcmp(argv[0], "up") == 0) && argc == 2) {
        int32_t id = (int32_t)atoi(argv[1]);
        err = argv[0][0] == 'd' ? rd_kafka_mock_broker_set_down(mc, id) : rd_kafka_mock_broker_set_up(mc, id);
    } else if (strcmp(argv[0], "produce-errors") == 0 && argc >= 3) {
        int n = atoi(argv[1]);
        rd_kafka_resp_err_t errs[MAX_ERRORS];
        if (n < 1 || n > MAX_ERRORS) {
            printf("error: N must be 1..%d\n", MAX_ERRORS);
            fflush(stdout);
            return;
        }
        for (int i = 0; i < n; i++) {
            if (parse_error(argv[2 + i % (argc - 2)], &errs[i]) != 0) {
                printf("error: unknown Kafka error %s\n", argv[2 + i % (argc - 2)]);
                fflush(stdout);
                return;
            }
        }
        rd_kafka_mock_push_request_errors_array(mc, PRODUCE_API_KEY, (size_t)n, errs);
    } else {
        printf("error: unknown command %s (try --help)\n", argv[0]);
        fflush(stdout);
        return;
    }
    if (err)
        printf("error: %s\n", rd_kafka_err2str(err));
    else
        printf("ok\n");
    fflush(stdout);
}

int main(int argc, char **argv)
{
    int brokers = 3;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--brokers") == 0 && i + 1 < argc) {
            brokers = atoi(argv[++i]);
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (brokers < 1 || brokers > 16) {
        fprintf(stderr, "canopy-kafka-mock: --brokers must be 1..16\n");
        return 2;
    }
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    /* The handle only hosts the cluster's threads; it never connects anywhere. */
    rd_kafka_conf_set(conf, "client.id", "canopy-kafka-mock", err, sizeof err);
    rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "canopy-kafka-mock: %s\n", err);
        rd_kafka_conf_destroy(conf);
        return 1;
    }
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, brokers);
    if (!mc) {
        fprintf(stderr, "canopy-kafka-mock: cannot create the mock cluster\n");
        rd_kafka_destroy(rk);
        return 1;
    }
    printf("bootstrap=%s\n", rd_kafka_mock_cluster_bootstraps(mc));
    fflush(stdout);
    char line[4096];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "quit", 4) == 0)
            break;
        command(mc, line);
    }
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return 0;
}
