/*
 * canopy-fake-agent: a scripted stand-in for one agent process, for the
 * SkyWalking task-proxy tests. It speaks canopy.v1 over nng REQ like the
 * real agent, without Python or gunicorn:
 *
 *   - polls for commands every --interval-ms, sending the largest CreateTime
 *     seen as last_command_time, as SkyWalking agents do;
 *   - for each new ProfileTaskQuery, sends --snapshots snapshots of one
 *     segment (sequences dense from 0) for that task, then a finish report;
 *   - prints one line per event, and a summary line at the end:
 *       task id=<id> create=<ms> endpoint=<e> duration=<min>
 *       done polls=<n> tasks=<n> snapshots=<n> finished=<n>
 *
 * Usage: canopy-fake-agent --url URL --service S --instance I
 *          [--polls N] [--interval-ms MS] [--snapshots K] [--depth D]
 *          [--no-finish] [--wait-tasks N]
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "canopy/v1/canopy.pb-c.h"

typedef struct opts {
    const char *url, *service, *instance;
    long polls, interval_ms, snapshots, depth, wait_tasks;
    int finish;
} opts;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* One request/reply exchange, resent on timeout as the real agent does. */
static Canopy__V1__Reply *exchange(nng_socket s, Canopy__V1__Request *req)
{
    size_t len = canopy__v1__request__get_packed_size(req);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return NULL;
    canopy__v1__request__pack(req, buf);
    for (int attempt = 0; attempt < 20; attempt++) {
        int rv = nng_send(s, buf, len, 0);
        if (rv != 0) {
            sleep_ms(200);
            continue;
        }
        void *rbuf = NULL;
        size_t rlen = 0;
        rv = nng_recv(s, &rbuf, &rlen, NNG_FLAG_ALLOC);
        if (rv != 0) {
            fprintf(stderr, "fake-agent: recv: %s; resending\n", nng_strerror(rv));
            continue;
        }
        Canopy__V1__Reply *rep = canopy__v1__reply__unpack(NULL, rlen, rbuf);
        nng_free(rbuf, rlen);
        if (rep && rep->retryable) {
            canopy__v1__reply__free_unpacked(rep, NULL);
            sleep_ms(200);
            continue;
        }
        free(buf);
        return rep;
    }
    free(buf);
    return NULL;
}

static const char *arg(const Canopy__V1__Command *c, const char *key)
{
    for (size_t i = 0; i < c->n_args; i++)
        if (strcmp(c->args[i]->key, key) == 0)
            return c->args[i]->value;
    return "";
}

int main(int argc, char **argv)
{
    opts o = {.polls = 10, .interval_ms = 500, .snapshots = 5, .depth = 4, .finish = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            printf("usage: %s --url URL --service S --instance I [--polls N] [--interval-ms MS]\n"
                   "          [--snapshots K] [--depth D] [--no-finish] [--wait-tasks N]\n"
                   "Polls canopy for tasks like an agent; for each task sends K snapshots of one\n"
                   "segment (sequences 0..K-1), then reports the task finished. Stops after N\n"
                   "polls, or as soon as --wait-tasks tasks were handled.\n", argv[0]);
            return 0;
        }
        if (strcmp(a, "--no-finish") == 0) {
            o.finish = 0;
            continue;
        }
        if (!v) {
            fprintf(stderr, "fake-agent: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (strcmp(a, "--url") == 0) o.url = v;
        else if (strcmp(a, "--service") == 0) o.service = v;
        else if (strcmp(a, "--instance") == 0) o.instance = v;
        else if (strcmp(a, "--polls") == 0) o.polls = atol(v);
        else if (strcmp(a, "--interval-ms") == 0) o.interval_ms = atol(v);
        else if (strcmp(a, "--snapshots") == 0) o.snapshots = atol(v);
        else if (strcmp(a, "--depth") == 0) o.depth = atol(v);
        else if (strcmp(a, "--wait-tasks") == 0) o.wait_tasks = atol(v);
        else {
            fprintf(stderr, "fake-agent: unknown option %s\n", a);
            return 2;
        }
    }
    if (!o.url || !o.service || !o.instance || o.depth < 1) {
        fprintf(stderr, "fake-agent: --url, --service and --instance are required (see --help)\n");
        return 2;
    }

    nng_socket s;
    int rv = nng_req0_open(&s);
    if (rv == 0)
        rv = nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 3000);
    if (rv == 0)
        rv = nng_socket_set_ms(s, NNG_OPT_REQ_RESENDTIME, 0);
    if (rv == 0)
        rv = nng_dial(s, o.url, NULL, NNG_FLAG_NONBLOCK);
    if (rv != 0) {
        fprintf(stderr, "fake-agent: nng: %s\n", nng_strerror(rv));
        return 1;
    }

    char host[256] = "localhost";
    gethostname(host, sizeof host - 1);
    Canopy__V1__AgentIdentity id = CANOPY__V1__AGENT_IDENTITY__INIT;
    id.service = (char *)o.service;
    id.instance = (char *)o.instance;
    id.host = host;
    id.pid = (uint32_t)getpid();
    id.agent_version = "fake-0";
    id.session = ((uint64_t)now_ms() << 20) ^ (uint64_t)getpid();

    int64_t last = 0;
    uint64_t batch_seq = 0;
    long polls = 0, tasks = 0, snaps = 0, finished = 0;
    char **seen = NULL;
    size_t n_seen = 0;
    for (long p = 0; p < o.polls; p++) {
        if (p)
            sleep_ms(o.interval_ms);
        Canopy__V1__Request req = CANOPY__V1__REQUEST__INIT;
        Canopy__V1__CommandQuery q = CANOPY__V1__COMMAND_QUERY__INIT;
        req.protocol_version = 1;
        req.agent = &id;
        req.body_case = CANOPY__V1__REQUEST__BODY_COMMAND_QUERY;
        q.last_command_time = last;
        req.command_query = &q;
        Canopy__V1__Reply *rep = exchange(s, &req);
        polls++;
        if (!rep) {
            fprintf(stderr, "fake-agent: no reply to a command query\n");
            continue;
        }
        for (size_t i = 0; i < rep->n_commands; i++) {
            const Canopy__V1__Command *c = rep->commands[i];
            if (strcmp(c->command, "ProfileTaskQuery") != 0)
                continue;
            const char *tid = arg(c, "TaskId");
            int64_t created = atoll(arg(c, "CreateTime"));
            if (created > last)
                last = created;
            int dup = 0;
            for (size_t k = 0; k < n_seen; k++)
                dup |= strcmp(seen[k], tid) == 0;
            if (dup)
                continue;
            char **ns = realloc(seen, (n_seen + 1) * sizeof *ns);
            if (!ns || !(ns[n_seen] = strdup(tid))) {
                fprintf(stderr, "fake-agent: out of memory\n");
                return 1;
            }
            seen = ns;
            n_seen++;
            tasks++;
            printf("task id=%s create=%lld endpoint=%s duration=%s\n", tid, (long long)created,
                   arg(c, "EndpointName"), arg(c, "Duration"));
            fflush(stdout);

            if (o.snapshots > 0) {
                /* strings: 0 task, 1 segment, 2.. frames */
                size_t n_str = 2 + (size_t)o.depth;
                char **strs = calloc(n_str, sizeof *strs);
                char (*names)[64] = calloc((size_t)o.depth, sizeof *names);
                char segbuf[160];
                if (!strs || !names) {
                    fprintf(stderr, "fake-agent: out of memory\n");
                    return 1;
                }
                snprintf(segbuf, sizeof segbuf, "%s.%s.seg", o.instance, tid);
                strs[0] = (char *)tid;
                strs[1] = segbuf;
                for (long d = 0; d < o.depth; d++) {
                    snprintf(names[d], sizeof names[d], "/srv/app.py.handler_%ld: %ld", d, 10 + d);
                    strs[2 + d] = names[d];
                }
                uint32_t *frames = calloc((size_t)o.depth, sizeof *frames);
                for (long d = 0; d < o.depth; d++)
                    frames[d] = (uint32_t)(2 + d);
                Canopy__V1__Snapshot *sv = calloc((size_t)o.snapshots, sizeof *sv);
                Canopy__V1__Snapshot **sp = calloc((size_t)o.snapshots, sizeof *sp);
                if (!strs || !frames || !sv || !sp) {
                    fprintf(stderr, "fake-agent: out of memory\n");
                    return 1;
                }
                int64_t t0 = now_ms();
                for (long k = 0; k < o.snapshots; k++) {
                    canopy__v1__snapshot__init(&sv[k]);
                    sv[k].task = 0;
                    sv[k].segment = 1;
                    sv[k].time_ms = t0 + k * 10;
                    sv[k].sequence = (int32_t)k;
                    sv[k].n_frames = (size_t)o.depth;
                    sv[k].frames = frames;
                    sp[k] = &sv[k];
                }
                Canopy__V1__SnapshotBatch b = CANOPY__V1__SNAPSHOT_BATCH__INIT;
                b.batch_seq = batch_seq++;
                b.n_strings = n_str;
                b.strings = strs;
                b.n_snapshots = (size_t)o.snapshots;
                b.snapshots = sp;
                Canopy__V1__Request br = CANOPY__V1__REQUEST__INIT;
                br.protocol_version = 1;
                br.agent = &id;
                br.body_case = CANOPY__V1__REQUEST__BODY_BATCH;
                br.batch = &b;
                Canopy__V1__Reply *brep = exchange(s, &br);
                if (brep && (brep->reason == CANOPY__V1__REASON__REASON_OK ||
                             brep->reason == CANOPY__V1__REASON__REASON_DUPLICATE))
                    snaps += o.snapshots;
                else
                    fprintf(stderr, "fake-agent: batch refused: %s\n", brep ? brep->detail : "no reply");
                if (brep)
                    canopy__v1__reply__free_unpacked(brep, NULL);
                free(names);
                free(strs);
                free(frames);
                free(sv);
                free(sp);
            }
            if (o.finish) {
                Canopy__V1__Request fr = CANOPY__V1__REQUEST__INIT;
                Canopy__V1__TaskFinishReport f = CANOPY__V1__TASK_FINISH_REPORT__INIT;
                fr.protocol_version = 1;
                fr.agent = &id;
                fr.body_case = CANOPY__V1__REQUEST__BODY_TASK_FINISH;
                f.task_id = (char *)tid;
                fr.task_finish = &f;
                Canopy__V1__Reply *frep = exchange(s, &fr);
                if (frep && frep->reason == CANOPY__V1__REASON__REASON_OK)
                    finished++;
                else
                    fprintf(stderr, "fake-agent: finish report refused\n");
                if (frep)
                    canopy__v1__reply__free_unpacked(frep, NULL);
            }
        }
        canopy__v1__reply__free_unpacked(rep, NULL);
        if (o.wait_tasks > 0 && tasks >= o.wait_tasks)
            break;
    }
    printf("done polls=%ld tasks=%ld snapshots=%ld finished=%ld\n", polls, tasks, snaps, finished);
    for (size_t k = 0; k < n_seen; k++)
        free(seen[k]);
    free(seen);
    nng_close(s);
    return 0;
}
