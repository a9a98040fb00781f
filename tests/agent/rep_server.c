/* The scripted REP server of the agent tests (see rep_server.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>

#include "rep_server.h"

void ts_url(char *buf, size_t cap, const char *tag)
{
    snprintf(buf, cap, "ipc:///tmp/cn-agent-test-%d-%s.ipc", (int)getpid(), tag);
}

static uint32_t digest(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 16777619u;
    return h;
}

static void record(ts_server *s, const Canopy__V1__Request *req, const void *data, size_t len)
{
    ts_record r;
    memset(&r, 0, sizeof(r));
    r.body = req ? (int)req->body_case : -1;
    r.digest = digest(data, len);
    r.len = len;
    if (req && req->agent) {
        r.session = req->agent->session;
        r.pid = req->agent->pid;
        snprintf(r.instance, sizeof(r.instance), "%s", req->agent->instance);
    }
    if (req && req->body_case == CANOPY__V1__REQUEST__BODY_BATCH) {
        r.batch_seq = req->batch->batch_seq;
        const Canopy__V1__SnapshotBatch *b = req->batch;
        r.n_snapshots = b->n_snapshots;
        r.n_strings = b->n_strings;
        if (b->n_snapshots) {
            const Canopy__V1__Snapshot *sn = b->snapshots[0];
            if (sn->task < b->n_strings)
                snprintf(r.first_task, sizeof(r.first_task), "%s", b->strings[sn->task]);
            if (sn->segment < b->n_strings)
                snprintf(r.first_segment, sizeof(r.first_segment), "%s", b->strings[sn->segment]);
            r.first_sequence = sn->sequence;
            size_t off = 0;
            for (size_t i = 0; i < sn->n_frames && off < sizeof(r.first_frames); i++) {
                const char *f = sn->frames[i] < b->n_strings ? b->strings[sn->frames[i]] : "?";
                off += (size_t)snprintf(r.first_frames + off, sizeof(r.first_frames) - off, "%s%s",
                                        i ? "|" : "", f);
            }
        }
    } else if (req && req->body_case == CANOPY__V1__REQUEST__BODY_TASK_FINISH) {
        snprintf(r.task_id, sizeof(r.task_id), "%s", req->task_finish->task_id);
    } else if (req && req->body_case == CANOPY__V1__REQUEST__BODY_COMMAND_QUERY) {
        r.last_command_time = req->command_query->last_command_time;
    }
    if (s->n_rec < TS_MAX_RECORDS)
        s->rec[s->n_rec++] = r;
}

static void add_arg(Canopy__V1__KeyStringValuePair *kv, const char *k, const char *v)
{
    canopy__v1__key_string_value_pair__init(kv);
    kv->key = (char *)k;
    kv->value = (char *)v;
}

/* Encodes the reply for one request, following the script. */
static int make_reply(ts_server *s, const Canopy__V1__Request *req, nng_msg **out)
{
    Canopy__V1__Reply rep = CANOPY__V1__REPLY__INIT;
    enum { NA = 9 };
    Canopy__V1__Command cmds[8], *cptr[8];
    Canopy__V1__KeyStringValuePair kvs[8][NA], *kptr[8][NA];
    char vals[8][NA][64];

    if (!req) {
        rep.reason = CANOPY__V1__REASON__REASON_MALFORMED;
    } else if (s->overload_first > 0) {
        s->overload_first--;
        rep.reason = CANOPY__V1__REASON__REASON_OVERLOADED;
        rep.retryable = 1;
    } else if (s->reject_reason && req->body_case == CANOPY__V1__REQUEST__BODY_BATCH) {
        rep.reason = (Canopy__V1__Reason)s->reject_reason;
    } else if (req->body_case == CANOPY__V1__REQUEST__BODY_COMMAND_QUERY) {
        int n = s->n_commands > 8 ? 8 : s->n_commands;
        for (int i = 0; i < n; i++) {
            const char *keys[NA] = {"SerialNumber", "TaskId", "EndpointName", "Duration",
                                    "MinDurationThreshold", "DumpPeriod", "MaxSamplingCount",
                                    "StartTime", "CreateTime"};
            int64_t create = s->command_create_base + i;
            snprintf(vals[i][0], 64, "serial-%d", i);
            snprintf(vals[i][1], 64, "task-%d", i);
            snprintf(vals[i][2], 64, "/checkout/%d", i);
            snprintf(vals[i][3], 64, "%d", 5);
            snprintf(vals[i][4], 64, "%d", 10);
            snprintf(vals[i][5], 64, "%d", 20);
            snprintf(vals[i][6], 64, "%d", 3);
            snprintf(vals[i][7], 64, "%lld", (long long)create);
            snprintf(vals[i][8], 64, "%lld", (long long)create);
            for (int k = 0; k < NA; k++) {
                add_arg(&kvs[i][k], keys[k], vals[i][k]);
                kptr[i][k] = &kvs[i][k];
            }
            canopy__v1__command__init(&cmds[i]);
            cmds[i].command = "ProfileTaskQuery";
            cmds[i].n_args = NA;
            cmds[i].args = kptr[i];
            cptr[i] = &cmds[i];
        }
        rep.n_commands = (size_t)n;
        rep.commands = cptr;
    }
    if (req && req->body_case == CANOPY__V1__REQUEST__BODY_BATCH)
        rep.batch_seq = req->batch->batch_seq;
    size_t n = canopy__v1__reply__get_packed_size(&rep);
    if (nng_msg_alloc(out, n) != 0)
        return -1;
    canopy__v1__reply__pack(&rep, nng_msg_body(*out));
    return 0;
}

static void *serve(void *arg)
{
    ts_server *s = arg;
    while (!s->stop) {
        nng_msg *m = NULL;
        int rv = nng_recvmsg(s->sock, &m, 0);
        if (rv == NNG_ETIMEDOUT)
            continue;
        if (rv != 0)
            break;
        Canopy__V1__Request *req =
            canopy__v1__request__unpack(NULL, nng_msg_len(m), nng_msg_body(m));
        pthread_mutex_lock(&s->mu);
        record(s, req, nng_msg_body(m), nng_msg_len(m));
        bool drop = s->drop_first > 0;
        if (drop)
            s->drop_first--;
        nng_msg *reply = NULL;
        if (!drop && make_reply(s, req, &reply) == 0)
            s->replies++;
        pthread_mutex_unlock(&s->mu);
        if (req)
            canopy__v1__request__free_unpacked(req, NULL);
        nng_msg_free(m);
        /* A dropped request is simply never answered: REP forgets it when
         * the next receive starts. */
        if (reply && nng_sendmsg(s->sock, reply, 0) != 0)
            nng_msg_free(reply);
    }
    return NULL;
}

int ts_server_start(ts_server *s, const char *url)
{
    pthread_mutex_init(&s->mu, NULL);
    if (nng_rep0_open(&s->sock) != 0)
        return -1;
    nng_socket_set_ms(s->sock, NNG_OPT_RECVTIMEO, 50);
    if (nng_listen(s->sock, url, NULL, 0) != 0) {
        nng_close(s->sock);
        return -1;
    }
    s->stop = false;
    if (pthread_create(&s->thread, NULL, serve, s) != 0) {
        nng_close(s->sock);
        return -1;
    }
    return 0;
}

void ts_server_stop(ts_server *s)
{
    s->stop = true;
    pthread_join(s->thread, NULL);
    nng_close(s->sock);
    pthread_mutex_destroy(&s->mu);
}

size_t ts_server_records(ts_server *s, ts_record *out, size_t cap)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->n_rec < cap ? s->n_rec : cap;
    memcpy(out, s->rec, n * sizeof(*out));
    n = s->n_rec;
    pthread_mutex_unlock(&s->mu);
    return n;
}
