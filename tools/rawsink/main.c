/*
 * canopy-rawsink: an nng REP server with N contexts that answers every
 * request with one fixed, pre-encoded OK Reply and never decodes the
 * request. loadgen -> rawsink is the benchmark's raw transport rate, the
 * ceiling for loadgen -> collector. Counts messages and bytes and prints a
 * summary line on SIGINT or SIGTERM.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>

#include "canopy/v1/canopy.pb-c.h"

typedef struct rs_sink rs_sink;

typedef struct rs_ctx {
    rs_sink *sink;
    nng_ctx ctx;
    nng_aio *aio;
    bool sending;
} rs_ctx;

struct rs_sink {
    nng_socket sock;
    rs_ctx *ctxs;
    int n_ctxs;
    uint8_t *reply;
    size_t reply_len;
    atomic_uint_fast64_t messages, bytes, errors;
};

static void ctx_cb(void *arg)
{
    rs_ctx *c = arg;
    rs_sink *s = c->sink;
    int rv = nng_aio_result(c->aio);
    if (rv == NNG_ECLOSED || rv == NNG_ECANCELED) {
        if (c->sending) /* a failed send leaves the message with us */
            nng_msg_free(nng_aio_get_msg(c->aio));
        return;
    }
    if (c->sending) {
        if (rv != 0) {
            nng_msg_free(nng_aio_get_msg(c->aio));
            atomic_fetch_add(&s->errors, 1);
        }
        c->sending = false;
        nng_ctx_recv(c->ctx, c->aio);
        return;
    }
    if (rv != 0) {
        atomic_fetch_add(&s->errors, 1);
        nng_ctx_recv(c->ctx, c->aio);
        return;
    }
    nng_msg *m = nng_aio_get_msg(c->aio);
    atomic_fetch_add(&s->messages, 1);
    atomic_fetch_add(&s->bytes, nng_msg_len(m));
    /* Reuse the request's message for the reply: no allocation per request. */
    nng_msg_clear(m);
    if (nng_msg_append(m, s->reply, s->reply_len) != 0) {
        nng_msg_free(m);
        atomic_fetch_add(&s->errors, 1);
        nng_ctx_recv(c->ctx, c->aio);
        return;
    }
    nng_aio_set_msg(c->aio, m);
    c->sending = true;
    nng_ctx_send(c->ctx, c->aio);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: canopy-rawsink --url URL [--contexts N] [--max-size BYTES]\n"
            "\n"
            "Raw nng REP server: answers every request with a fixed OK canopy.v1.Reply\n"
            "without decoding it. Prints a summary line on SIGINT or SIGTERM:\n"
            "  messages=<n> bytes=<n> errors=<n> seconds=<s> rate=<messages/s> mbps=<MB/s>\n"
            "\n"
            "  --url URL          listen URL (required), e.g. ipc:///tmp/canopy.ipc\n"
            "  --contexts N       REP contexts, requests handled at once (default 64)\n"
            "  --max-size BYTES   largest request accepted (default 16777216)\n"
            "  --help             this text\n");
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The one destroy path. */
static void sink_destroy(rs_sink *s)
{
    /* Stop the aios first: nng 1.5 can panic when a socket is closed under
     * pending context operations. A stopped aio refuses re-arming. */
    for (int i = 0; s->ctxs && i < s->n_ctxs; i++)
        if (s->ctxs[i].aio)
            nng_aio_stop(s->ctxs[i].aio);
    nng_close(s->sock);
    for (int i = 0; s->ctxs && i < s->n_ctxs; i++)
        if (s->ctxs[i].aio)
            nng_aio_free(s->ctxs[i].aio);
    free(s->ctxs);
    free(s->reply);
}

int main(int argc, char **argv)
{
    static const struct option longs[] = {
        {"url", required_argument, NULL, 'u'},
        {"contexts", required_argument, NULL, 'c'},
        {"max-size", required_argument, NULL, 'm'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *url = NULL;
    long contexts = 64, max_size = 16L << 20;
    int ch;
    while ((ch = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        char *end = NULL;
        switch (ch) {
        case 'u': url = optarg; break;
        case 'c':
            contexts = strtol(optarg, &end, 10);
            if (*end || contexts < 1 || contexts > 4096) {
                fprintf(stderr, "canopy-rawsink: --contexts: expected 1..4096\n");
                return 2;
            }
            break;
        case 'm':
            max_size = strtol(optarg, &end, 10);
            if (*end || max_size < 0) {
                fprintf(stderr, "canopy-rawsink: --max-size: expected bytes >= 0\n");
                return 2;
            }
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!url || optind < argc) {
        usage(stderr);
        return 2;
    }

    /* Block the signals before nng makes its threads, so they inherit the
     * mask and only sigwait() below sees SIGINT/SIGTERM. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    rs_sink s = {.n_ctxs = (int)contexts};
    Canopy__V1__Reply ok = CANOPY__V1__REPLY__INIT;
    ok.reason = CANOPY__V1__REASON__REASON_OK;
    s.reply_len = canopy__v1__reply__get_packed_size(&ok);
    s.reply = malloc(s.reply_len ? s.reply_len : 1);
    s.ctxs = calloc((size_t)s.n_ctxs, sizeof(*s.ctxs));
    if (!s.reply || !s.ctxs) {
        fprintf(stderr, "canopy-rawsink: out of memory\n");
        free(s.reply);
        free(s.ctxs);
        return 1;
    }
    canopy__v1__reply__pack(&ok, s.reply);

    int rv = nng_rep0_open(&s.sock);
    if (rv != 0) {
        fprintf(stderr, "canopy-rawsink: rep socket: %s\n", nng_strerror(rv));
        free(s.reply);
        free(s.ctxs);
        return 1;
    }
    nng_socket_set_size(s.sock, NNG_OPT_RECVMAXSZ, (size_t)max_size);
    for (int i = 0; i < s.n_ctxs && rv == 0; i++) {
        s.ctxs[i].sink = &s;
        rv = nng_ctx_open(&s.ctxs[i].ctx, s.sock);
        if (rv == 0)
            rv = nng_aio_alloc(&s.ctxs[i].aio, ctx_cb, &s.ctxs[i]);
    }
    if (rv == 0 && (rv = nng_listen(s.sock, url, NULL, 0)) != 0)
        fprintf(stderr, "canopy-rawsink: listen %s: %s\n", url, nng_strerror(rv));
    else if (rv != 0)
        fprintf(stderr, "canopy-rawsink: contexts: %s\n", nng_strerror(rv));
    if (rv != 0) {
        sink_destroy(&s);
        return 1;
    }
    for (int i = 0; i < s.n_ctxs; i++)
        nng_ctx_recv(s.ctxs[i].ctx, s.ctxs[i].aio);
    fprintf(stderr, "canopy-rawsink: listening on %s with %d contexts\n", url, s.n_ctxs);

    double t0 = now_s();
    int sig = 0;
    while (sigwait(&sigs, &sig) != 0)
        ;
    double secs = now_s() - t0;
    uint64_t msgs = atomic_load(&s.messages), bytes = atomic_load(&s.bytes);
    sink_destroy(&s);
    printf("messages=%" PRIu64 " bytes=%" PRIu64 " errors=%" PRIu64 " seconds=%.3f rate=%.1f mbps=%.2f\n",
           msgs, bytes, (uint64_t)atomic_load(&s.errors), secs, secs > 0 ? (double)msgs / secs : 0.0,
           secs > 0 ? (double)bytes / secs / 1e6 : 0.0);
    fflush(stdout);
    return 0;
}
