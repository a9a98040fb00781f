/*
 * canopy-loadgen: N simulated agents sending acked batches to a collector.
 *
 * The parent forks the agents first and never starts nng itself (nng must
 * start after fork). Each agent builds and encodes all its batches, opens
 * its sender, reports READY and waits on a start barrier (a pipe the
 * parent closes once every agent is ready), so the timed phase is transport
 * plus collector only. Agents report progress and results over a pipe; the
 * parent's last stdout line is the contract:
 *   sent=<batches> acked=<batches> snapshots=<n> seconds=<s> rate=<snapshots/s>
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "canopy/agent.h"
#include "workload.h"

typedef struct lg_options {
    const char *url;
    const char *service;
    const char *dump_batch;
    const char *tls_ca, *tls_cert, *tls_key, *tls_server_name;
    int agents;
    lg_workload_config w;
    unsigned window;
    double timeout_s;
    uint32_t attempt_timeout_ms;
    bool quiet;
} lg_options;

enum { MSG_READY = 1, MSG_PROGRESS, MSG_DONE, MSG_FAILED };

/* One report from an agent; smaller than PIPE_BUF, so writes never interleave. */
typedef struct lg_report {
    int32_t type;
    int32_t agent;
    uint64_t sent, acked, resent, dropped, errors, snapshots;
} lg_report;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: canopy-loadgen --url URL --agents N --batches B --batch-size S --depth D --tasks T\n"
            "                      [options]\n"
            "\n"
            "Forks N simulated agents (fork first, then nng). Each pre-encodes B batches of S\n"
            "snapshots with D frames spread over T task ids, waits for a start barrier, then\n"
            "sends them over nng REQ with a window, resending until all are acked.\n"
            "The last stdout line reads:\n"
            "  sent=<batches> acked=<batches> snapshots=<n> seconds=<s> rate=<snapshots/s>\n"
            "\n"
            "options:\n"
            "  --url URL              collector nng URL (default %s)\n"
            "  --agents N             simulated agent processes (default 1)\n"
            "  --batches B            batches per agent (default 10)\n"
            "  --batch-size S         snapshots per batch (default 256)\n"
            "  --depth D              frames per snapshot (default 20)\n"
            "  --tasks T              task ids task-0..task-{T-1}, shared by all agents (default 1)\n"
            "  --segment-len L        snapshots per segment (default 16)\n"
            "  --concurrency C        segments open at once per agent (default 8)\n"
            "  --window W             requests in flight per agent (default 4)\n"
            "  --timeout SECONDS      give up the timed phase after this long (default 60)\n"
            "  --attempt-timeout MS   reply timeout before a resend (default 5000)\n"
            "  --service NAME         service name (default loadgen)\n"
            "  --seed N               workload seed (default 1)\n"
            "  --dump-batch FILE      write agent 0's first encoded Request to FILE and exit\n"
            "  --tls-ca FILE          tls+tcp:// URLs: CA (PEM) the collector's certificate must chain to\n"
            "  --tls-cert FILE        tls+tcp:// URLs: client certificate (PEM), for client_auth\n"
            "  --tls-key FILE         tls+tcp:// URLs: private key (PEM) of --tls-cert\n"
            "  --tls-server-name NAME name the collector's certificate must carry (default: the URL's host)\n"
            "  --quiet                no progress on stderr\n"
            "  --help                 this text\n",
            CN_AGENT_DEFAULT_URL);
}

static int parse_int(const char *name, const char *v, long min, long *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || x < min) {
        fprintf(stderr, "canopy-loadgen: %s: expected an integer >= %ld, got \"%s\"\n", name, min, v);
        return -1;
    }
    *out = x;
    return 0;
}

static int parse_args(int argc, char **argv, lg_options *o)
{
    static const struct option longs[] = {
        {"url", required_argument, NULL, 'u'},          {"agents", required_argument, NULL, 'n'},
        {"batches", required_argument, NULL, 'b'},      {"batch-size", required_argument, NULL, 's'},
        {"depth", required_argument, NULL, 'd'},        {"tasks", required_argument, NULL, 't'},
        {"segment-len", required_argument, NULL, 'L'},  {"concurrency", required_argument, NULL, 'C'},
        {"window", required_argument, NULL, 'w'},       {"timeout", required_argument, NULL, 'T'},
        {"attempt-timeout", required_argument, NULL, 'A'}, {"service", required_argument, NULL, 'S'},
        {"seed", required_argument, NULL, 'r'},         {"dump-batch", required_argument, NULL, 'D'},
        {"tls-ca", required_argument, NULL, 'c'},       {"tls-cert", required_argument, NULL, 'e'},
        {"tls-key", required_argument, NULL, 'k'},      {"tls-server-name", required_argument, NULL, 'N'},
        {"quiet", no_argument, NULL, 'q'},              {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *o = (lg_options){.url = CN_AGENT_DEFAULT_URL, .service = "loadgen", .agents = 1,
                      .w = {.batches = 10, .batch_size = 256, .depth = 20, .tasks = 1,
                            .segment_len = 16, .concurrency = 8, .seed = 1},
                      .window = 4, .timeout_s = 60, .attempt_timeout_ms = 5000};
    int c;
    long v;
    while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        int rv = 0;
        switch (c) {
        case 'u': o->url = optarg; break;
        case 'S': o->service = optarg; break;
        case 'D': o->dump_batch = optarg; break;
        case 'c': o->tls_ca = optarg; break;
        case 'e': o->tls_cert = optarg; break;
        case 'k': o->tls_key = optarg; break;
        case 'N': o->tls_server_name = optarg; break;
        case 'q': o->quiet = true; break;
        case 'h': usage(stdout); exit(0);
        case 'n': if ((rv = parse_int("--agents", optarg, 1, &v)) == 0) o->agents = (int)v; break;
        case 'b': if ((rv = parse_int("--batches", optarg, 1, &v)) == 0) o->w.batches = (int)v; break;
        case 's': if ((rv = parse_int("--batch-size", optarg, 1, &v)) == 0) o->w.batch_size = (int)v; break;
        case 'd': if ((rv = parse_int("--depth", optarg, 1, &v)) == 0) o->w.depth = (int)v; break;
        case 't': if ((rv = parse_int("--tasks", optarg, 1, &v)) == 0) o->w.tasks = (int)v; break;
        case 'L': if ((rv = parse_int("--segment-len", optarg, 1, &v)) == 0) o->w.segment_len = (int)v; break;
        case 'C': if ((rv = parse_int("--concurrency", optarg, 1, &v)) == 0) o->w.concurrency = (int)v; break;
        case 'w': if ((rv = parse_int("--window", optarg, 1, &v)) == 0) o->window = (unsigned)v; break;
        case 'A': if ((rv = parse_int("--attempt-timeout", optarg, 1, &v)) == 0) o->attempt_timeout_ms = (uint32_t)v; break;
        case 'r': if ((rv = parse_int("--seed", optarg, 0, &v)) == 0) o->w.seed = (uint64_t)v; break;
        case 'T': {
            char *end;
            o->timeout_s = strtod(optarg, &end);
            if (*end || o->timeout_s <= 0) {
                fprintf(stderr, "canopy-loadgen: --timeout: expected seconds > 0, got \"%s\"\n", optarg);
                rv = -1;
            }
            break;
        }
        default: usage(stderr); return -1;
        }
        if (rv != 0)
            return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "canopy-loadgen: unexpected argument \"%s\"\n", argv[optind]);
        return -1;
    }
    bool tls_url = strncmp(o->url, "tls+", 4) == 0;
    bool tls_opts = o->tls_ca || o->tls_cert || o->tls_key || o->tls_server_name;
    if (tls_opts && !tls_url) {
        fprintf(stderr, "canopy-loadgen: --tls-* options need a tls+tcp:// --url\n");
        return -1;
    }
    if (tls_url && !o->tls_ca) {
        fprintf(stderr, "canopy-loadgen: a tls+tcp:// --url needs --tls-ca (the CA that signed the collector's "
                        "certificate)\n");
        return -1;
    }
    if ((o->tls_cert == NULL) != (o->tls_key == NULL)) {
        fprintf(stderr, "canopy-loadgen: --tls-cert and --tls-key go together\n");
        return -1;
    }
    if (o->agents > 4096 || o->w.depth > 10000 || o->w.batch_size > 1000000) {
        fprintf(stderr, "canopy-loadgen: --agents <= 4096, --depth <= 10000, --batch-size <= 1000000\n");
        return -1;
    }
    return 0;
}

/* ---- one agent (a child process) ---- */

static void report(int fd, int type, int agent, const cn_send_stats *st, uint64_t per_batch)
{
    lg_report r = {.type = type, .agent = agent};
    if (st)
        r = (lg_report){.type = type, .agent = agent, .sent = st->batches_sent,
                        .acked = st->batches_acked, .resent = st->batches_resent,
                        .dropped = st->batches_dropped, .errors = st->errors,
                        .snapshots = st->batches_acked * per_batch};
    /* A short write to a pipe of < PIPE_BUF bytes does not happen. */
    if (write(fd, &r, sizeof(r)) != (ssize_t)sizeof(r))
        _exit(3);
}

static int agent_main(const lg_options *o, int index, int go_fd, int rep_fd)
{
    char host[256], instance[320];
    if (gethostname(host, sizeof(host)) != 0)
        snprintf(host, sizeof(host), "localhost");
    host[sizeof(host) - 1] = '\0';
    snprintf(instance, sizeof(instance), "loadgen-%d@%s", (int)getpid(), host);
    cn_identity id = {.service = o->service, .instance = instance, .host = host,
                      .pid = (uint32_t)getpid(), .agent_version = CN_AGENT_VERSION,
                      .session = cn_session_random()};
    lg_workload_config w = o->w;
    w.seed = o->w.seed * 1000003u + (uint64_t)index;
    lg_batch *batches = NULL;
    if (lg_workload_build(&w, &id, wall_ms(), &batches) != 0) {
        report(rep_fd, MSG_FAILED, index, NULL, 0);
        return 2;
    }
    size_t total = 0;
    for (int i = 0; i < w.batches; i++)
        total += batches[i].len;

    /* nng starts here, in the child, after the fork. */
    cn_sender_options so;
    cn_sender_options_init(&so);
    so.url = o->url;
    so.window = o->window;
    so.timeout_ms = o->attempt_timeout_ms;
    so.max_buffered_bytes = total + 1; /* everything is queued up front */
    so.tls_ca_file = o->tls_ca;
    so.tls_cert_file = o->tls_cert;
    so.tls_key_file = o->tls_key;
    so.tls_server_name = o->tls_server_name;
    cn_sender *s = NULL;
    int rv = cn_sender_new(&so, &s);
    if (rv != 0) {
        fprintf(stderr, "canopy-loadgen: agent %d: %s: %s\n", index, o->url, cn_agent_strerror(rv));
        report(rep_fd, MSG_FAILED, index, NULL, 0);
        lg_batches_free(batches, w.batches);
        return 2;
    }
    report(rep_fd, MSG_READY, index, NULL, 0);

    char c;
    while (read(go_fd, &c, 1) < 0 && errno == EINTR)
        ; /* EOF: the parent closed the barrier */

    for (int i = 0; i < w.batches; i++)
        if (cn_sender_submit(s, batches[i].bytes, batches[i].len, batches[i].batch_seq) != 0)
            break;
    /* The sender copied every batch; free ours so memory stays flat. */
    lg_batches_free(batches, w.batches);

    double deadline = now_s() + o->timeout_s;
    cn_send_stats st;
    for (;;) {
        double left = deadline - now_s();
        uint32_t slice = left <= 0 ? 0 : left < 0.5 ? (uint32_t)(left * 1000) : 500;
        int idle = cn_sender_wait_idle(s, slice) == 0;
        cn_sender_stats(s, &st);
        if (idle || left <= 0)
            break;
        report(rep_fd, MSG_PROGRESS, index, &st, (uint64_t)w.batch_size);
    }
    report(rep_fd, MSG_DONE, index, &st, (uint64_t)w.batch_size);
    bool ok = st.batches_acked == (uint64_t)w.batches;
    /* Exit without waiting for stragglers: the parent already has the result. */
    cn_sender_free(s);
    return ok ? 0 : 1;
}

/* ---- the parent ---- */

static int dump_batch(const lg_options *o)
{
    cn_identity id = {.service = o->service, .instance = "loadgen-0@dump", .host = "dump",
                      .pid = 0, .agent_version = CN_AGENT_VERSION, .session = 1};
    lg_workload_config w = o->w;
    w.batches = 1;
    lg_batch *b = NULL;
    if (lg_workload_build(&w, &id, 1700000000000LL, &b) != 0) {
        fprintf(stderr, "canopy-loadgen: out of memory\n");
        return 1;
    }
    FILE *f = fopen(o->dump_batch, "wb");
    int rv = 1;
    if (!f)
        fprintf(stderr, "canopy-loadgen: %s: %s\n", o->dump_batch, strerror(errno));
    else if (fwrite(b[0].bytes, 1, b[0].len, f) != b[0].len || fclose(f) != 0)
        fprintf(stderr, "canopy-loadgen: %s: write failed\n", o->dump_batch);
    else
        rv = 0;
    if (rv == 0 && !o->quiet)
        fprintf(stderr, "canopy-loadgen: wrote %zu bytes (%zu snapshots) to %s\n", b[0].len,
                b[0].snapshots, o->dump_batch);
    lg_batches_free(b, 1);
    return rv;
}

typedef struct lg_parent {
    lg_report *last;  /* latest report per agent */
    int ready, done, failed;
} lg_parent;

static void sum(const lg_parent *p, int n, lg_report *t)
{
    memset(t, 0, sizeof(*t));
    for (int i = 0; i < n; i++) {
        t->sent += p->last[i].sent;
        t->acked += p->last[i].acked;
        t->resent += p->last[i].resent;
        t->dropped += p->last[i].dropped;
        t->errors += p->last[i].errors;
        t->snapshots += p->last[i].snapshots;
    }
}

/* Reads reports until `until` agents reached the state, or the pipe ends. */
static int collect(lg_parent *p, const lg_options *o, int fd, bool wait_done, double t0)
{
    double next_progress = now_s() + 1.0;
    for (;;) {
        if (!wait_done && p->ready + p->failed >= o->agents)
            return 0;
        if (wait_done && p->done + p->failed >= o->agents)
            return 0;
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int n = poll(&pf, 1, 250);
        if (n < 0 && errno != EINTR)
            return -1;
        if (n > 0) {
            lg_report r;
            ssize_t got = read(fd, &r, sizeof(r));
            if (got == 0)
                return -1; /* every agent is gone */
            if (got != (ssize_t)sizeof(r) || r.agent < 0 || r.agent >= o->agents)
                continue;
            if (r.type == MSG_READY)
                p->ready++;
            else if (r.type == MSG_FAILED)
                p->failed++;
            else
                p->last[r.agent] = r;
            if (r.type == MSG_DONE)
                p->done++;
        }
        if (!o->quiet && now_s() >= next_progress) {
            next_progress += 1.0;
            if (!wait_done) {
                fprintf(stderr, "canopy-loadgen: building: %d/%d agents ready\n", p->ready, o->agents);
            } else {
                lg_report t;
                sum(p, o->agents, &t);
                fprintf(stderr,
                        "canopy-loadgen: t=%.1fs acked=%" PRIu64 "/%" PRIu64 " resent=%" PRIu64
                        " errors=%" PRIu64 " agents done=%d\n",
                        now_s() - t0, t.acked, (uint64_t)o->agents * (uint64_t)o->w.batches,
                        t.resent, t.errors, p->done);
            }
        }
    }
}

int main(int argc, char **argv)
{
    lg_options o;
    if (parse_args(argc, argv, &o) != 0)
        return 2;
    if (o.dump_batch)
        return dump_batch(&o);

    int go[2], rep[2];
    if (pipe(go) != 0 || pipe(rep) != 0) {
        perror("canopy-loadgen: pipe");
        return 2;
    }
    lg_parent p = {.last = calloc((size_t)o.agents, sizeof(lg_report))};
    pid_t *pids = calloc((size_t)o.agents, sizeof(pid_t));
    if (!p.last || !pids) {
        fprintf(stderr, "canopy-loadgen: out of memory\n");
        return 2;
    }
    fflush(NULL); /* children must not flush the parent's buffered output */
    int forked = 0;
    for (int i = 0; i < o.agents; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("canopy-loadgen: fork");
            break;
        }
        if (pid == 0) {
            close(go[1]);
            close(rep[0]);
            _exit(agent_main(&o, i, go[0], rep[1]));
        }
        pids[forked++] = pid;
    }
    close(go[0]);
    close(rep[1]);
    int rc = forked == o.agents ? 0 : 1;
    if (rc == 0 && !o.quiet)
        fprintf(stderr, "canopy-loadgen: %d agents building %d batches of %d snapshots x %d frames\n",
                o.agents, o.w.batches, o.w.batch_size, o.w.depth);
    if (rc == 0 && (collect(&p, &o, rep[0], false, 0) != 0 || p.failed))
        rc = 1;

    /* Start barrier: every agent is built and has its socket. */
    double t0 = now_s();
    close(go[1]);
    if (rc == 0 && !o.quiet)
        fprintf(stderr, "canopy-loadgen: started %d agents against %s\n", o.agents, o.url);
    if (rc == 0 && collect(&p, &o, rep[0], true, t0) != 0)
        rc = 1;
    double secs = now_s() - t0;

    for (int i = 0; i < forked; i++) {
        int status = 0;
        if (rc != 0)
            kill(pids[i], SIGTERM);
        while (waitpid(pids[i], &status, 0) < 0 && errno == EINTR)
            ;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            rc = 1;
    }
    lg_report t;
    sum(&p, o.agents, &t);
    if (t.acked != (uint64_t)o.agents * (uint64_t)o.w.batches)
        rc = 1;
    if (!o.quiet)
        fprintf(stderr, "canopy-loadgen: resent=%" PRIu64 " dropped=%" PRIu64 " errors=%" PRIu64 "\n",
                t.resent, t.dropped, t.errors);
    printf("sent=%" PRIu64 " acked=%" PRIu64 " snapshots=%" PRIu64 " seconds=%.3f rate=%.1f\n", t.sent,
           t.acked, t.snapshots, secs, secs > 0 ? (double)t.snapshots / secs : 0.0);
    fflush(stdout);
    free(p.last);
    free(pids);
    return rc;
}
